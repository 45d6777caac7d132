#!/usr/bin/env bash
# `make test`: the project's whole test suite, on a fresh machine or a warm one.
#
# Installs the test bed if missing, starts it, runs the format and lint checks and every
# test of the workspace against it, and stops the bed again, also when something fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "test bed: install"
testbed/bed.sh install

step "test bed: up"
trap 'step "test bed: down"; testbed/bed.sh down' EXIT
testbed/bed.sh up
testbed/bed.sh up # idempotent: a second up finds everything running and changes nothing
# shellcheck source=/dev/null
source target/testbed/env

step "shellcheck"
if command -v shellcheck >/dev/null; then
  shellcheck -x testbed/*.sh scripts/*.sh .ci/run
else
  echo "shellcheck not installed (apt-get install shellcheck); .ci/run installs it" >&2
  [[ -z ${CI:-} ]] || exit 1
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the binaries some tests start as processes)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked --no-fail-fast

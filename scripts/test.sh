#!/usr/bin/env bash
# `make test`: the project's whole test suite, on a fresh machine or a warm one.
#
# Installs the test bed if missing, starts it, runs the format and lint checks and every
# test of the workspace against it, and stops the bed again, also when something fails.
#
# The bed includes a Docker engine (testbed/docker.sh; it installs Debian's docker.io as
# root), kind with a locally built node image (testbed/kind.sh) and headless Chromium
# (testbed/browser.sh; Debian's chromium and chromium-driver), so the images are built from
# the Dockerfile and run, the user's flow runs on kind, and the controller's live view is
# opened in a real browser. Without them (SHOPSTREAM_TESTBED_COMPONENTS="kafka kube") those
# tests are not run, and this script says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SHOPSTREAM_TESTBED_COMPONENTS=${SHOPSTREAM_TESTBED_COMPONENTS:-kafka kube docker kind browser}

step() { printf '\n==> %s\n' "$*" >&2; }

step "test bed: install"
testbed/bed.sh install

step "test bed: up"
trap 'step "test bed: down"; testbed/bed.sh down' EXIT
testbed/bed.sh up
testbed/bed.sh up # idempotent: a second up finds everything running and changes nothing
# shellcheck source=/dev/null
source "$(testbed/bed.sh env)"

step "shellcheck"
if command -v shellcheck >/dev/null; then
  shellcheck -x testbed/*.sh scripts/*.sh .ci/run testbed/images/kafka/docker/run testbed/images/kafka/bin/*.sh \
    testbed/kind/docker-shim testbed/kind/entrypoint-unpriv testbed/kind/kindnetd
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

exclude=()
if [[ ${SHOPSTREAM_DOCKER:-} == 1 ]]; then
  step "images: docker build (the Dockerfile's four targets)"
  scripts/images.sh build
else
  echo "no Docker engine in the test bed: the image tests (crate shop-images) are NOT run" >&2
  exclude=(--exclude shop-images)
fi
if [[ -z ${KIND_NODE_IMAGE:-} ]]; then
  echo "no kind in the test bed: the flow on kind (crate shop-kind) is NOT run" >&2
  exclude+=(--exclude shop-kind)
fi

skip=()
if [[ -z ${SHOPSTREAM_CHROMEDRIVER:-} ]]; then
  echo "no browser in the test bed: the live view's browser test is NOT run" >&2
  skip=(-- --skip live_view_in_a_browser)
fi

step "cargo test"
cargo test --workspace "${exclude[@]}" --locked --no-fail-fast "${skip[@]}"

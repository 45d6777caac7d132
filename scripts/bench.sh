#!/usr/bin/env bash
# `make bench`: benchmarks that compare against a baseline measured in the same run, on
# the test bed's broker, with a release build. Writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SHOPSTREAM_TESTBED_COMPONENTS="kafka kube"
started_bed=false
if ! testbed/kafka.sh status >/dev/null 2>&1 || ! testbed/kube.sh status >/dev/null 2>&1; then
  testbed/bed.sh install
  testbed/bed.sh up
  started_bed=true
fi
trap '$started_bed && testbed/bed.sh down' EXIT
# shellcheck source=/dev/null
source "$(testbed/bed.sh env)"

# The benchmarks, and the binaries the controller benchmark starts as processes.
cargo build --release --quiet -p shop-bench -p shop-controller -p order-service \
  -p payment-service -p notification-service -p shopctl
target=${CARGO_TARGET_DIR:-$PWD/target}
report=$(mktemp)
{
  echo "# Benchmarks"
  echo
  echo "Made by \`make bench\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)); each table"
  echo "compares against a baseline measured in the same run on the same broker."
  echo
  "$target/release/shop-bench" --bootstrap-servers "127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}"
  echo
  "$target/release/control-latency" --bootstrap-servers "127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}" \
    --binaries "$target/release" --logs target/bench-logs
  echo
  "$target/release/service-memory" --bootstrap-servers "127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}" \
    --binaries "$target/release" --logs target/bench-logs
  echo
  "$target/release/controller-scale" --bootstrap-servers "127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}" \
    --binaries "$target/release" --logs target/bench-logs
  echo
  # Memory on kind: with the test bed's node image (and docker shim) when it has them.
  if testbed/kind.sh status >/dev/null 2>&1; then
    eval "$(testbed/kind.sh env)"
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 \
    && { command -v kind >/dev/null || [[ -n ${KIND_NODE_IMAGE:-} ]]; }; then
    scripts/kind-memory.sh
  else
    echo "## Memory on kind"
    echo
    echo "Not measured in this run: it needs Docker and kind (\`make testbed-kind\` on the test bed)."
  fi
} >"$report"
mv "$report" docs/benchmarks.md
cat docs/benchmarks.md

#!/usr/bin/env bash
# `make bench`: benchmarks that compare against a baseline measured in the same run, on
# the test bed's broker, with a release build. Writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SHOPSTREAM_TESTBED_COMPONENTS=kafka
started_kafka=false
if ! testbed/kafka.sh status >/dev/null 2>&1; then
  testbed/bed.sh install
  testbed/bed.sh up
  started_kafka=true
fi
trap '$started_kafka && testbed/bed.sh down' EXIT

cargo build --release --quiet -p shop-bench
target=${CARGO_TARGET_DIR:-$PWD/target}
report=$(mktemp)
{
  echo "# Benchmarks"
  echo
  echo "Made by \`make bench\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)); each table"
  echo "compares against a baseline measured in the same run on the same broker."
  echo
  "$target/release/shop-bench" --bootstrap-servers "127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}"
} >"$report"
mv "$report" docs/benchmarks.md
cat docs/benchmarks.md

#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, without Kubernetes.
#
# Starts the test bed's Kafka broker (installing it on first use), builds and starts
# order-service and payment-service in the background and notification-service in the
# foreground, so the notification lines stream to the terminal. Ctrl-C stops everything
# it started; a broker that was already running is left running.
#
# DEMO_ORDERS_PER_SECOND (default 5) and DEMO_FAILURE_RATIO (default 0.2) set the start
# values; change them live from another terminal with `shopctl set`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SHOPSTREAM_TESTBED_COMPONENTS=kafka
target=${CARGO_TARGET_DIR:-$PWD/target}
logs=$PWD/target/demo
mkdir -p "$logs"

started_kafka=false
if ! testbed/kafka.sh status >/dev/null 2>&1; then
  testbed/bed.sh install
  testbed/bed.sh up
  started_kafka=true
fi
if env_file=$(testbed/bed.sh env 2>/dev/null); then
  # shellcheck source=/dev/null
  source "$env_file"
else
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${SHOPSTREAM_KAFKA_PORT:-19092}
fi
export KAFKA_BOOTSTRAP_SERVERS PIPELINE=${PIPELINE:-demo}

echo "==> building the services" >&2
cargo build --quiet -p order-service -p payment-service -p notification-service -p shopctl

pids=()
stop() {
  trap - INT TERM EXIT
  echo >&2
  echo "==> stopping" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $started_kafka; then testbed/bed.sh down; fi
}
trap stop INT TERM EXIT

# Each service runs in its own session: Ctrl-C reaches only this script, which then stops
# every service once with SIGTERM, so each drains and exits cleanly.
setsid "$target/debug/order-service" --orders-per-second "${DEMO_ORDERS_PER_SECOND:-5}" \
  >"$logs/order-service.log" 2>&1 &
pids+=($!)
setsid "$target/debug/payment-service" --failure-ratio "${DEMO_FAILURE_RATIO:-0.2}" \
  >"$logs/payment-service.log" 2>&1 &
pids+=($!)

cat >&2 <<MSG
==> pipeline "demo" on Kafka $KAFKA_BOOTSTRAP_SERVERS; logs in $logs
    change it live from another terminal:
      $target/debug/shopctl --bootstrap-servers $KAFKA_BOOTSTRAP_SERVERS set --rate 20 --failure-ratio 0.5
      $target/debug/shopctl --bootstrap-servers $KAFKA_BOOTSTRAP_SERVERS status
    Ctrl-C stops everything.
MSG
setsid "$target/debug/notification-service" 2>"$logs/notification-service.log" &
pids+=($!)
wait "${pids[-1]}"

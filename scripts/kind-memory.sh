#!/usr/bin/env bash
# Memory of shopstream on kind, for `make bench`: prints a Markdown section.
#
# In one run: a bare kind node (the baseline), then the whole stack of `make up` (node,
# Kafka, controller, the default pipeline) with the pipeline paused and at 1,000 orders/s,
# and each service container's RSS at that rate. The node's memory is its container's
# usage (`docker stats`, which counts everything the node runs); a container's RSS is
# VmRSS of its process, read inside the node. Clusters are named shopstream-bench*, use
# their own kubeconfig under target/, and are deleted at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=shopstream-bench
DIR=$PWD/target/kind-bench
export KUBECONFIG=$DIR/kubeconfig
RATE=1000
SETTLE=${KIND_MEMORY_SETTLE_SECONDS:-60}
mkdir -p "$DIR"
BED_BIN=${SHOPSTREAM_CACHE:-$HOME/.cache/shopstream}/testbed/bin
[[ -d $BED_BIN ]] && PATH="$PATH:$BED_BIN"

log() { printf '[kind-memory] %s\n' "$*" >&2; }

cleanup() {
  kind delete cluster --name "$CLUSTER-idle" >/dev/null 2>&1 || true
  KIND_CLUSTER=$CLUSTER scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

# node_mib NODE: the node container's memory in MiB, the median of five samples 2 s apart.
node_mib() {
  local i samples=()
  for i in 1 2 3 4 5; do
    samples+=("$(docker stats --no-stream --format '{{.MemUsage}}' "$1" | awk '{
      v = $1; unit = v; gsub(/[0-9.]/, "", unit); gsub(/[A-Za-z]/, "", v)
      if (unit == "GiB") v *= 1024; else if (unit == "KiB") v /= 1024; else if (unit == "B") v /= 1048576
      printf "%.0f", v }')")
    [[ $i == 5 ]] || sleep 2
  done
  printf '%s\n' "${samples[@]}" | sort -n | sed -n 3p
}

# rss NODE CONTAINER: VmRSS in MiB of every container named CONTAINER on the node, one a line.
rss() {
  local node=$1 name=$2 id pid
  for id in $(docker exec "$node" crictl ps -q --name "^$name\$"); do
    pid=$(docker exec "$node" crictl inspect -o go-template --template '{{.info.pid}}' "$id")
    docker exec "$node" awk '/^VmRSS:/ {printf "%.1f\n", $2 / 1024}' "/proc/$pid/status"
  done
}

patch() {
  kubectl --context "kind-$CLUSTER" -n shopstream patch sp demo --type merge -p "$1" >/dev/null
  local generation
  generation=$(kubectl --context "kind-$CLUSTER" -n shopstream get sp demo -o jsonpath='{.metadata.generation}')
  kubectl --context "kind-$CLUSTER" -n shopstream wait sp/demo --timeout=180s \
    --for=jsonpath='{.status.observedGeneration}'="$generation" >/dev/null
  kubectl --context "kind-$CLUSTER" -n shopstream wait sp/demo --timeout=180s --for=condition=Applied >/dev/null
}

log "baseline: a bare kind node"
kind create cluster --name "$CLUSTER-idle" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 5m >&2
sleep "$SETTLE"
bare=$(node_mib "$CLUSTER-idle-control-plane")
kind delete cluster --name "$CLUSTER-idle" >&2

log "the stack: make up"
KIND_CLUSTER=$CLUSTER scripts/cluster.sh up >"$DIR/make-up.log" 2>&1 || { tail -n 30 "$DIR/make-up.log" >&2; exit 1; }
node=$CLUSTER-control-plane
patch '{"spec":{"paused":true}}'
sleep "$SETTLE"
paused=$(node_mib "$node")

log "the stack at $RATE orders/s"
patch "{\"spec\":{\"paused\":false,\"ordersPerSecond\":$RATE}}"
deadline=$((SECONDS + 300))
until observed=$(kubectl --context "kind-$CLUSTER" -n shopstream get sp demo -o jsonpath='{.status.measured.ordersPerSecond}') \
  && [[ -n $observed ]] && awk -v o="$observed" -v r="$RATE" 'BEGIN { exit !(o >= 0.9 * r && o <= 1.1 * r) }'; do
  ((SECONDS < deadline)) || { log "the rate did not reach $RATE/s (observed ${observed:-none})"; exit 1; }
  sleep 5
done
sleep "$SETTLE"
busy=$(node_mib "$node")
observed=$(kubectl --context "kind-$CLUSTER" -n shopstream get sp demo -o jsonpath='{.status.measured.ordersPerSecond}')

node_image=${KIND_NODE_IMAGE:-the default of kind}
cat <<EOF
## Memory on kind: the whole stack vs a bare kind node

Command: \`make bench\` (\`scripts/kind-memory.sh\`): one kind node (\`kind-config.yaml\`,
node image \`$node_image\`), the chart as \`make up\` installs it
(single-node Kafka with \`-Xmx384m\`, the controller, the default pipeline \`demo\`: 1 order-,
2 payment-, 1 notification-service replicas), ${SETTLE} s settling before each reading.
Node memory is the node container's usage (\`docker stats\`, median of 5 samples);
a service's RSS is its process's VmRSS.

| measurement | MiB |
|---|---:|
| bare kind node, idle (baseline) | $bare |
| whole stack, pipeline paused | $paused |
| whole stack at $RATE orders/s (observed $observed/s) | $busy |
| stack above the bare node, at $RATE orders/s | $((busy - bare)) |

| service container at $RATE orders/s | RSS MiB |
|---|---:|
EOF
for service in order-service payment-service notification-service shop-controller; do
  for value in $(rss "$node" "$service"); do echo "| $service | $value |"; done
done
echo

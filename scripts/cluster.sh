#!/usr/bin/env bash
# `make up` and `make down`: shopstream on a local kind cluster.
#
#   cluster.sh up     creates the kind cluster from kind-config.yaml (or reuses it), builds
#                     the four images, loads them into the cluster, installs the chart as
#                     release `shopstream` in namespace `shopstream` and waits until the
#                     default pipeline `demo` is Ready
#   cluster.sh down   deletes the cluster
#
# KIND_CLUSTER names the cluster (default shopstream), KIND_NODE_IMAGE overrides kind's node
# image. Like kind, it honours KUBECONFIG; it never writes into the test bed's API-server
# kubeconfig. kind, kubectl and helm are taken from PATH, else from the test bed
# (~/.cache/shopstream/testbed/bin) when it has them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${KIND_CLUSTER:-shopstream}
CONTEXT=kind-$CLUSTER
RELEASE=shopstream
NAMESPACE=shopstream
PIPELINE=demo
BED_BIN=${SHOPSTREAM_CACHE:-$HOME/.cache/shopstream}/testbed/bin

step() { printf '\n==> %s\n' "$*" >&2; }

prerequisites() {
  local missing=0 tool
  [[ -d $BED_BIN ]] && PATH="$PATH:$BED_BIN"
  for tool in docker kind kubectl helm; do
    if ! command -v "$tool" >/dev/null; then
      case $tool in
        docker) echo "missing: docker — install Docker Engine (https://docs.docker.com/engine/install/)" >&2 ;;
        kind) echo "missing: kind — install kind v0.30 or newer (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2 ;;
        kubectl) echo "missing: kubectl — install kubectl 1.34 (https://kubernetes.io/docs/tasks/tools/)" >&2 ;;
        helm) echo "missing: helm — install Helm 3 (https://helm.sh/docs/intro/install/)" >&2 ;;
      esac
      missing=1
    fi
  done
  if command -v docker >/dev/null && ! docker info >/dev/null 2>&1; then
    echo "docker: the Docker engine is not running, or this user may not use it" >&2
    missing=1
  fi
  ((missing == 0)) || exit 1
  # The test bed's kubeconfig belongs to its own API server: kind must not write into it.
  if [[ -n ${KUBECONFIG:-} && -n ${SHOPSTREAM_KUBECONFIG:-} && $KUBECONFIG == "$SHOPSTREAM_KUBECONFIG" ]]; then
    echo "KUBECONFIG names the test bed's API server; using ~/.kube/config for kind instead" >&2
    unset KUBECONFIG
  fi
}

up() {
  prerequisites
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    step "kind cluster $CLUSTER exists"
  else
    step "kind create cluster --name $CLUSTER"
    kind create cluster --config kind-config.yaml --name "$CLUSTER" \
      ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 5m
  fi

  step "images"
  scripts/images.sh build
  local images kafka_image
  mapfile -t images < <(scripts/images.sh list)
  # The chart's Kafka image: loaded when this machine has it, else the node pulls it.
  kafka_image=$(helm show values charts/shopstream | awk '
    /^kafka:/ {k=1} k && /repository:/ {r=$2} k && /tag:/ {gsub(/"/, "", $2); t=$2} k && r && t {print r ":" t; exit}')
  if [[ -n $kafka_image ]] && docker image inspect "$kafka_image" >/dev/null 2>&1; then
    images+=("$kafka_image")
  fi
  step "kind load docker-image ${images[*]}"
  kind load docker-image --name "$CLUSTER" "${images[@]}"

  step "helm upgrade --install $RELEASE charts/shopstream -n $NAMESPACE"
  local sets=()
  [[ -n ${IMAGE_REPOSITORY:-} ]] && sets+=(--set "image.repository=$IMAGE_REPOSITORY" --set "controller.image.repository=$IMAGE_REPOSITORY/shop-controller")
  [[ -n ${IMAGE_TAG:-} ]] && sets+=(--set "image.tag=$IMAGE_TAG")
  helm upgrade --install "$RELEASE" charts/shopstream --kube-context "$CONTEXT" \
    --namespace "$NAMESPACE" --create-namespace "${sets[@]}" --wait --timeout 10m

  step "waiting for ShopPipeline $PIPELINE to be Ready"
  kubectl --context "$CONTEXT" -n "$NAMESPACE" wait "shoppipeline/$PIPELINE" \
    --for=condition=Ready --timeout=5m
  kubectl --context "$CONTEXT" -n "$NAMESPACE" get shoppipelines

  cat >&2 <<NEXT

shopstream is up on kind cluster $CLUSTER (context $CONTEXT). Next:

  kubectl -n $NAMESPACE logs -f deploy/$PIPELINE-notification-service    # the ✅/❌ lines
  kubectl -n $NAMESPACE get sp                                           # RATE, FAILURE, OBSERVED, READY
  kubectl -n $NAMESPACE patch sp $PIPELINE --type merge -p '{"spec":{"ordersPerSecond":50,"paymentFailureRatio":0.5}}'
  helm test $RELEASE -n $NAMESPACE                                       # checks the failure ratio
  make down                                                              # deletes the cluster
NEXT
}

down() {
  [[ -d $BED_BIN ]] && PATH="$PATH:$BED_BIN"
  command -v kind >/dev/null || { echo "missing: kind" >&2; exit 1; }
  if [[ -n ${KUBECONFIG:-} && -n ${SHOPSTREAM_KUBECONFIG:-} && $KUBECONFIG == "$SHOPSTREAM_KUBECONFIG" ]]; then
    unset KUBECONFIG
  fi
  kind delete cluster --name "$CLUSTER"
}

case ${1:-} in
  up | down) "$1" ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

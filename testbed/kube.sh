#!/usr/bin/env bash
# Test-bed component: a real Kubernetes control plane.
#
# etcd + kube-apiserver (authentication and RBAC on) + kube-controller-manager +
# kube-scheduler, started by kwokctl's binary runtime from binaries built here from their
# Go modules, plus one kwok node so that Pods are scheduled and reported Running.
#
# Usage: kube.sh install|up|down|status
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=shopstream
NODE=kwok-node-0
KWOK_WORKDIR=$STATE/kwok
KUBECONFIG_FILE=$STATE/kubeconfig
LOG=$STATE/kube.log

install() {
  local v major minor ldflags=""
  v=$(cd "$TESTBED_DIR/go/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  major=${v#v}; major=${major%%.*}
  minor=${v#v"$major".}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  go_build_tools "$TESTBED_DIR/go/etcd"
  go_build_tools "$TESTBED_DIR/go/kubernetes" "$ldflags"
  go_build_tools "$TESTBED_DIR/go/kwok"
  go_build_tools "$TESTBED_DIR/go/helm"
}

kwokctl_() { KWOK_WORKDIR=$KWOK_WORKDIR kwokctl --name "$CLUSTER" "$@"; }

cluster_ready() { kubectl --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz; }

node_ready() {
  [[ $(kubectl --kubeconfig "$KUBECONFIG_FILE" get node "$NODE" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

up() {
  mkdir -p "$STATE"
  if [[ -f $KUBECONFIG_FILE ]] && cluster_ready >/dev/null 2>&1; then
    log "kube: already up"
    return 0
  fi
  # A stopped or half-started cluster of a previous run is removed first.
  kwokctl_ delete cluster >>"$LOG" 2>&1 || true
  log "kube: starting control plane"
  kwokctl_ create cluster \
    --runtime binary \
    --secure-port=true \
    --kube-authorization=true \
    --etcd-binary "$BIN/etcd" \
    --kube-apiserver-binary "$BIN/kube-apiserver" \
    --kube-controller-manager-binary "$BIN/kube-controller-manager" \
    --kube-scheduler-binary "$BIN/kube-scheduler" \
    --kwok-controller-binary "$BIN/kwok" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --wait 2m >>"$LOG" 2>&1 \
    || die kube "kwokctl create cluster failed" "$LOG"
  wait_until kube 60 "$LOG" cluster_ready
  kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f - >>"$LOG" 2>&1 <<YAML || die kube "creating node $NODE failed" "$LOG"
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: $NODE
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
YAML
  wait_until kube 60 "$LOG" node_ready
  log "kube: up (kubeconfig $KUBECONFIG_FILE)"
}

down() {
  local pidfile pidfiles=()
  if [[ -d $KWOK_WORKDIR ]]; then
    # kwokctl signals the components but does not wait for them to exit: keep their pids
    # and make sure each one is gone before reporting down.
    mkdir -p "$STATE/pids"
    for pidfile in "$KWOK_WORKDIR/clusters/$CLUSTER/pids/"*.pid; do
      [[ -f $pidfile ]] || continue
      cp "$pidfile" "$STATE/pids/kube-$(basename "$pidfile")"
      pidfiles+=("$STATE/pids/kube-$(basename "$pidfile")")
    done
    kwokctl_ delete cluster >>"$LOG" 2>&1 || log "kube: kwokctl delete failed, see $LOG"
    for pidfile in "${pidfiles[@]}"; do stop_pid kube "$pidfile"; done
  fi
  rm -f "$KUBECONFIG_FILE"
  log "kube: down"
}

status() {
  if [[ -f $KUBECONFIG_FILE ]] && cluster_ready >/dev/null 2>&1; then
    echo "kube: up ($(kubectl --kubeconfig "$KUBECONFIG_FILE" version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n1))"
  else
    echo "kube: down"
    return 1
  fi
}

case ${1:-} in
  install | up | down | status) "$1" ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac

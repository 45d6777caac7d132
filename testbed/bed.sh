#!/usr/bin/env bash
# The whole test bed: Kafka, the Kubernetes control plane and, when asked, a Docker engine
# with stand-ins for the public images (testbed/docker.sh), kind (testbed/kind.sh) and a
# headless browser (testbed/browser.sh).
#
#   bed.sh install   install every component into the cache (skips what is up to date)
#   bed.sh up        start every component and write the env file (idempotent)
#   bed.sh down      stop every component; no process is left behind
#   bed.sh status    one line per component; exit 1 when any is down
#   bed.sh env       print the env file's path (source it to use the bed); exit 1 when
#                    the bed is not up
#
# The bed's state (data, logs, pids, the env file) is in ~/.cache/shopstream/bed, not in the
# clone: one bed per machine, seen and stopped from any clone. install, up and down hold a
# lock (flock on bed.lock beside it), so two clones never start or stop it at once; the
# processes the bed starts do not inherit the lock.
#
# Components can be chosen with SHOPSTREAM_TESTBED_COMPONENTS (default "kafka kube"; `make
# test` and CI use "kafka kube docker kind browser"). docker comes after kafka (its Kafka stand-in is
# made from the broker's jars), kind after kube and docker (its node image is made from the
# bed's Kubernetes binaries by the bed's Docker engine).
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a COMPONENTS <<<"${SHOPSTREAM_TESTBED_COMPONENTS:-kafka kube}"

each() {
  local verb=$1 c rc=0
  for c in "${COMPONENTS[@]}"; do
    "$TESTBED_DIR/$c.sh" "$verb" 9>&- || rc=1
  done
  return $rc
}

# lock: holds $STATE.lock (fd 9) until this script exits, waiting for another clone's
# install, up or down to finish first.
lock() {
  local lockfile=$STATE.lock
  mkdir -p "$(dirname "$lockfile")"
  exec 9>>"$lockfile"
  if ! flock -n 9; then
    log "waiting for the test bed lock $lockfile (another install, up or down is running)"
    flock -w 3600 9 || die testbed "the lock $lockfile was not released within an hour"
  fi
}

write_env() {
  local kafka_port=${SHOPSTREAM_KAFKA_PORT:-19092} tmp
  tmp=$(mktemp "$STATE/env.XXXXXX")
  {
    echo "# Written by testbed/bed.sh up: source it to use the running test bed."
    echo "export SHOPSTREAM_KAFKA='127.0.0.1:$kafka_port'"
    echo "export KAFKA_BOOTSTRAP_SERVERS='127.0.0.1:$kafka_port'"
    if [[ " ${COMPONENTS[*]} " == *" kube "* ]]; then
      echo "export SHOPSTREAM_KUBECONFIG='$STATE/kubeconfig'"
      echo "export KUBECONFIG='$STATE/kubeconfig'"
    fi
    if [[ " ${COMPONENTS[*]} " == *" docker "* ]]; then
      # The legacy builder resolves FROM against the stand-ins and never asks a registry.
      echo "export SHOPSTREAM_DOCKER=1"
      echo "export DOCKER_BUILDKIT=0"
    fi
    echo "export SHOPSTREAM_TESTBED_BIN='$BIN'"
    echo "export PATH=\"$BIN:\$PATH\""
    if [[ " ${COMPONENTS[*]} " == *" kind "* ]]; then
      "$TESTBED_DIR/kind.sh" env
    fi
    if [[ " ${COMPONENTS[*]} " == *" browser "* ]]; then
      "$TESTBED_DIR/browser.sh" env
    fi
  } >"$tmp"
  mv "$tmp" "$STATE/env"
}

case ${1:-} in
  install) lock; each install ;;
  up)
    lock
    mkdir -p "$STATE"
    each up
    write_env
    log "up: source $STATE/env"
    ;;
  down)
    lock
    rm -f "$STATE/env"
    each down
    # Every component's command line names the state directory: nothing may be left.
    if leftover=$(pgrep -af -- "$STATE/" | grep -v -e "pgrep" -e "bed.sh"); then
      die testbed "processes left running after down:
$leftover"
    fi
    ;;
  status) each status ;;
  env)
    [[ -f $STATE/env ]] || die testbed "not up: run 'make testbed-up' (or testbed/bed.sh up)"
    echo "$STATE/env"
    ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac

# shellcheck shell=bash
# Shared helpers for the test-bed scripts. Sourced, never run.
#
# Two places matter:
#   CACHE  installed components, outside the clone and reused across runs
#          (${SHOPSTREAM_CACHE:-~/.cache/shopstream}/testbed)
#   STATE  the one running bed of this machine: data, logs, pids and the env file
#          (${SHOPSTREAM_CACHE:-~/.cache/shopstream}/bed). It lives outside the clone so
#          that every clone (and a `cargo clean`) sees the same bed and can stop it.

# shellcheck disable=SC2034 # used by the scripts that source this file
TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${SHOPSTREAM_CACHE:-$HOME/.cache/shopstream}/testbed
BIN=$CACHE/bin
# shellcheck disable=SC2034 # used by the scripts that source this file
STATE=${SHOPSTREAM_TESTBED_STATE:-${SHOPSTREAM_CACHE:-$HOME/.cache/shopstream}/bed}
export PATH="$BIN:$PATH"

log() { printf '[testbed] %s\n' "$*" >&2; }

# die COMPONENT MESSAGE [LOGFILE]: fail naming the component and the log to read.
die() {
  local component=$1 message=$2 logfile=${3:-}
  printf '[testbed] %s: %s\n' "$component" "$message" >&2
  if [[ -n $logfile && -f $logfile ]]; then
    printf '[testbed] %s: last lines of %s:\n' "$component" "$logfile" >&2
    tail -n 20 "$logfile" >&2
  fi
  exit 1
}

# stamp_of FILE...: a digest of the files that pin a component; a changed pin rebuilds it.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# up_to_date NAME DIGEST OUTPUT...: true when NAME was installed from DIGEST and every
# OUTPUT exists.
up_to_date() {
  local name=$1 digest=$2 out; shift 2
  [[ -f $CACHE/stamps/$name && $(<"$CACHE/stamps/$name") == "$digest" ]] || return 1
  for out in "$@"; do [[ -e $out ]] || return 1; done
}

mark_installed() { mkdir -p "$CACHE/stamps"; printf '%s\n' "$2" >"$CACHE/stamps/$1"; }

# go_build_tools MODULE_DIR LDFLAGS: builds every `tool` of a wrapper module into $BIN as a
# static binary, unless the module's go.mod/go.sum are unchanged since the last build.
go_build_tools() {
  local module=$1 ldflags=${2:-} name digest tools=() outs=() t
  name=go-$(basename "$module")
  mapfile -t tools < <(awk '/^tool \(/{b=1;next} b&&/^\)/{b=0} b{print $1} /^tool [^(]/{print $2}' "$module/go.mod")
  ((${#tools[@]})) || die "$name" "no tool directives in $module/go.mod"
  for t in "${tools[@]}"; do outs+=("$BIN/$(tool_binary_name "$t")"); done
  digest=$(stamp_of "$module/go.mod" "$module/go.sum" <(printf '%s' "$ldflags"))
  if up_to_date "$name" "$digest" "${outs[@]}"; then
    log "$name: up to date"
    return 0
  fi
  log "$name: building ${tools[*]}"
  mkdir -p "$BIN" "$CACHE/logs"
  for t in "${tools[@]}"; do
    local start=$SECONDS
    (cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" \
        -o "$BIN/$(tool_binary_name "$t")" "$t") >"$CACHE/logs/$name.log" 2>&1 \
      || die "$name" "go build $t failed" "$CACHE/logs/$name.log"
    log "$name: built $(tool_binary_name "$t") in $((SECONDS - start)) s"
  done
  mark_installed "$name" "$digest"
}

# tool_binary_name PACKAGE: the binary name a package builds to (etcd's server module is
# named after its version suffix, so it is named explicitly).
tool_binary_name() {
  case $1 in
    go.etcd.io/etcd/server/v3) echo etcd ;;
    *) basename "$1" ;;
  esac
}

# wait_until COMPONENT SECONDS LOGFILE COMMAND...: polls COMMAND until it succeeds.
wait_until() {
  local component=$1 timeout=$2 logfile=$3 deadline; shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$component" "not ready after ${timeout} s" "$logfile"
    sleep 0.5
  done
}

# pid_alive PIDFILE: true when the process recorded in PIDFILE is running.
pid_alive() { [[ -f $1 ]] && kill -0 "$(<"$1")" 2>/dev/null; }

# stop_pid COMPONENT PIDFILE: TERM, wait, then KILL; removes the pid file.
stop_pid() {
  local component=$1 pidfile=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$component: did not stop on TERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# engine_up: true when a Docker engine answers.
engine_up() { docker info >/dev/null 2>&1; }

# start_dockerd COMPONENT PIDFILE LOG: starts dockerd in the background, its pid in PIDFILE
# (so the bed can stop exactly the engine it started), and waits for it to answer.
start_dockerd() {
  local component=$1 pidfile=$2 logfile=$3
  command -v dockerd >/dev/null || die "$component" "dockerd not found: testbed/docker.sh install installs Debian's docker.io"
  mkdir -p "$(dirname "$pidfile")"
  log "$component: starting dockerd (log $logfile)"
  setsid nohup dockerd --pidfile "$pidfile" >"$logfile" 2>&1 </dev/null &
  wait_until "$component" 60 "$logfile" engine_up
}

# mirror: the Debian mirror of the machine's apt sources, for debootstrap.
mirror() {
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n $uri ]] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# apt_install COMPONENT PACKAGE...: installs Debian packages (as root) for a component,
# with the output in the cache's logs; without root, fails saying what to install.
apt_install() {
  local component=$1
  shift
  [[ $(id -u) == 0 ]] || die "$component" "missing $*: install them (apt-get install $*) or run as root"
  log "$component: apt-get install $*"
  mkdir -p "$CACHE/logs"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
    >"$CACHE/logs/$component-apt.log" 2>&1 || die "$component" "apt-get install failed" "$CACHE/logs/$component-apt.log"
}

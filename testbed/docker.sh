#!/usr/bin/env bash
# Test-bed component (optional): a Docker engine and stand-ins for the public images.
#
# The build machines have no container registry, so the public images that the project's
# Dockerfile and chart name are made here, under exactly those names, from Debian's
# packages and the toolchains the machine already has:
#
#   rust:1.95-bookworm                      debootstrap (build tools) + the host's Rust
#                                           1.95.0 in the official layout + the host's CAs
#   gcr.io/distroless/cc-debian12:nonroot   glibc, libgcc, libstdc++, CA certificates,
#                                           tzdata, user nonroot (65532); no shell
#   apache/kafka:<version>                  Debian's OpenJDK 17 + the bed's Kafka jars, in
#                                           the official image's layout (images/kafka/)
#
# Stand-ins exist only in the bed's engine; the Dockerfile and chart stay what users build
# and run. Each is rebuilt only when its pin changes (stamps in the cache) or it is gone.
#
# Usage: docker.sh install|up|down|status
#   install  installs docker.io and debootstrap from Debian when missing, builds the stand-ins
#   up       starts dockerd when none is running (down stops only a dockerd up started)
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=$STATE/docker
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
WORK=$CACHE/docker
# The legacy builder resolves FROM against local images and never asks a registry.
export DOCKER_BUILDKIT=0

RUST_IMAGE=rust:1.95-bookworm
RUST_TOOLCHAIN=1.95.0-x86_64-unknown-linux-gnu
RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
JRE_IMAGE=shopstream-testbed/kafka-jre:bookworm
JRE_PACKAGES=openjdk-17-jre-headless
RUST_PACKAGES=build-essential,pkg-config,ca-certificates,git,curl,zlib1g-dev,libssl-dev
RUNTIME_PACKAGES="base-files netbase tzdata libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates"
SUITE=bookworm

# The Kafka version of the bed's broker, from the pinned jar's name.
kafka_version() {
  local jar
  jar=$(find "$CACHE/kafka/libs" -name 'kafka_2.13-*.jar' ! -name '*-test*' 2>/dev/null | head -n1)
  [[ -n $jar ]] || die docker "no Kafka jars in $CACHE/kafka/libs: run 'testbed/kafka.sh install' first"
  jar=$(basename "$jar" .jar)
  echo "${jar#kafka_2.13-}"
}

start_engine() { start_dockerd docker "$PIDFILE" "$LOG"; }


install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v jq >/dev/null || missing+=(jq) # kind.sh's node image
  ((${#missing[@]})) || return 0
  apt_install docker "${missing[@]}"
}

# debootstrap SUITE minbase into $WORK/rootfs-NAME with extra packages, trimmed like the
# official slim images.
bootstrap() {
  local name=$1 include=$2 root=$WORK/rootfs-$1
  rm -rf "$root"
  debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$root" "$(mirror)" \
    >"$WORK/debootstrap-$name.log" 2>&1 || { tail -n 20 "$WORK/debootstrap-$name.log" >&2; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/tmp/*
}

build_rust() {
  local toolchain=${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$RUST_TOOLCHAIN root=$WORK/rootfs-rust
  local dest=$root/usr/local/rustup/toolchains/$RUST_TOOLCHAIN b
  mkdir -p "$dest/bin" "$root/usr/local/cargo/bin"
  cp -a "$toolchain/lib" "$dest/"
  for b in cargo rustc rustdoc; do
    cp -a "$toolchain/bin/$b" "$dest/bin/"
    ln -sf rustup "$root/usr/local/cargo/bin/$b"
  done
  cp "$(command -v rustup)" "$root/usr/local/cargo/bin/rustup"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$RUST_TOOLCHAIN" >"$root/usr/local/rustup/settings.toml"
  chmod -R a+w "$root/usr/local/rustup" "$root/usr/local/cargo"
  # Egress TLS on these machines is re-signed by a CA that only the host trusts: cargo in
  # the build image must trust it too. It goes into the stand-in, never the Dockerfile.
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$root" update-ca-certificates >"$WORK/update-ca.log" 2>&1
  tar -C "$root" -c . | docker import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUST_VERSION=1.95.0' --change 'CMD ["bash"]' - "$RUST_IMAGE" >/dev/null
}

# distroless/cc: the packages' files only (no dpkg, apt or shell), as distroless builds it.
build_runtime() {
  local root=$WORK/rootfs-runtime debs=$WORK/debs p
  rm -rf "$root" "$debs"
  mkdir -p "$root" "$debs"
  # shellcheck disable=SC2086 # a list of package names
  (cd "$debs" && apt-get download $RUNTIME_PACKAGES >"$WORK/apt-download.log" 2>&1) \
    || { apt-get update -qq && (cd "$debs" && apt-get download $RUNTIME_PACKAGES >"$WORK/apt-download.log" 2>&1); } \
    || die docker "apt-get download failed" "$WORK/apt-download.log"
  for p in "$debs"/*.deb; do dpkg-deb -x "$p" "$root"; done
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
  find "$root/usr/share/ca-certificates" -name '*.crt' -exec cat {} + >"$root/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' - "$RUNTIME_IMAGE" >/dev/null
}

build_jre() {
  tar -C "$WORK/rootfs-jre" -c . | docker import --change 'CMD ["bash"]' - "$JRE_IMAGE" >/dev/null
}

build_kafka() {
  local version=$1 context=$WORK/kafka-image
  rm -rf "$context"
  cp -a "$TESTBED_DIR/images/kafka" "$context"
  cp -a "$CACHE/kafka/libs" "$context/libs"
  docker build -q --build-arg KAFKA_VERSION="$version" -t "apache/kafka:$version" "$context" \
    >"$WORK/build-kafka.log" 2>&1 || die docker "building apache/kafka:$version failed" "$WORK/build-kafka.log"
}

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

# fresh STAMP DIGEST IMAGE: the stand-in was built from this pin and is still in the engine.
fresh() { up_to_date "$1" "$2" && image_present "$3"; }

install() {
  install_packages
  local started=false version rust_pin runtime_pin jre_pin kafka_pin jobs=()
  if ! engine_up; then
    start_engine
    started=true
  fi
  version=$(kafka_version)
  mkdir -p "$WORK"
  # A stand-in's pin: the code that builds it, its packages and what it copies in.
  rust_pin=$(stamp_of <(declare -f bootstrap build_rust; echo "$SUITE $RUST_PACKAGES $RUST_TOOLCHAIN"))
  runtime_pin=$(stamp_of <(declare -f build_runtime; echo "$RUNTIME_PACKAGES"))
  jre_pin=$(stamp_of <(declare -f bootstrap build_jre; echo "$SUITE $JRE_PACKAGES"))
  kafka_pin=$(stamp_of "$TESTBED_DIR/kafka/pom.xml" <(declare -f build_kafka; echo "$jre_pin") \
    <(find "$TESTBED_DIR/images/kafka" -type f -print0 | sort -z | xargs -0 cat))
  fresh docker-rust "$rust_pin" "$RUST_IMAGE" || jobs+=(rust)
  fresh docker-runtime "$runtime_pin" "$RUNTIME_IMAGE" || jobs+=(runtime)
  fresh docker-jre "$jre_pin" "$JRE_IMAGE" || jobs+=(jre)
  fresh docker-kafka "$kafka_pin" "apache/kafka:$version" || jobs+=(kafka)
  if ((${#jobs[@]} == 0)); then
    log "docker: stand-ins up to date"
  else
    log "docker: building stand-ins: ${jobs[*]}"
    [[ -d ${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$RUST_TOOLCHAIN ]] \
      || die docker "the host has no Rust toolchain $RUST_TOOLCHAIN to lay into $RUST_IMAGE"
    local start=$SECONDS pids=() job
    # The two debootstraps are network-bound: run them side by side.
    [[ " ${jobs[*]} " == *" rust "* ]] && {
      bootstrap rust "$RUST_PACKAGES" & pids+=($!)
    }
    [[ " ${jobs[*]} " == *" jre "* ]] && { bootstrap jre "$JRE_PACKAGES" & pids+=($!); }
    for job in "${pids[@]}"; do wait "$job" || die docker "debootstrap failed (logs in $WORK)"; done
    for job in "${jobs[@]}"; do
      case $job in
        rust) build_rust && mark_installed docker-rust "$rust_pin" ;;
        runtime) build_runtime && mark_installed docker-runtime "$runtime_pin" ;;
        jre) build_jre && mark_installed docker-jre "$jre_pin" ;;
        kafka) build_kafka "$version" && mark_installed docker-kafka "$kafka_pin" ;;
      esac
      log "docker: built stand-in $job"
    done
    rm -rf "$WORK"/rootfs-* "$WORK/debs" "$WORK/kafka-image"
    log "docker: stand-ins built in $((SECONDS - start)) s"
  fi
  if $started; then stop_pid docker "$PIDFILE"; fi
}

up() {
  if engine_up; then
    log "docker: engine already running"
    return 0
  fi
  command -v dockerd >/dev/null || die docker "not installed: run 'make testbed-docker' first"
  start_engine
  log "docker: up"
}

down() {
  # Only a dockerd this script started is stopped; a system engine is left alone.
  stop_pid docker "$PIDFILE"
  log "docker: down"
}

status() {
  if engine_up; then
    local version missing=() image
    version=$(kafka_version 2>/dev/null || echo "?")
    for image in "$RUST_IMAGE" "$RUNTIME_IMAGE" "apache/kafka:$version"; do
      image_present "$image" || missing+=("$image")
    done
    if ((${#missing[@]})); then
      echo "docker: up, stand-ins missing: ${missing[*]}"
      return 1
    fi
    echo "docker: up ($(docker version -f '{{.Server.Version}}'), stand-ins present)"
  else
    echo "docker: down"
    return 1
  fi
}

case ${1:-} in
  install | up | down | status) "$1" ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac

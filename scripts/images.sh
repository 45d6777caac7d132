#!/usr/bin/env bash
# The four images from the top-level Dockerfile.
#
#   images.sh build   builds shopstream's images, one target each, and prints their sizes
#   images.sh list    prints their names, one a line
#
# Names are <IMAGE_REPOSITORY>/<binary>:<IMAGE_TAG>, by default shopstream/<binary>:<crate
# version>: what the chart and the controller put into Pods. The workspace is compiled once
# (the Dockerfile's shared build stage); the second to fourth targets reuse its layers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BINARIES=(order-service payment-service notification-service shop-controller)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' crates/shop-controller/Cargo.toml | head -n1)
REPOSITORY=${IMAGE_REPOSITORY:-shopstream}
TAG=${IMAGE_TAG:-$VERSION}

names() { local b; for b in "${BINARIES[@]}"; do echo "$REPOSITORY/$b:$TAG"; done; }

build() {
  command -v docker >/dev/null || { echo "images: docker not found: install Docker (https://docs.docker.com/engine/install/)" >&2; exit 1; }
  docker info >/dev/null 2>&1 || { echo "images: the Docker engine is not running (start it, or run 'make testbed-docker')" >&2; exit 1; }
  local binary start=$SECONDS
  for binary in "${BINARIES[@]}"; do
    echo "==> docker build --target $binary -t $REPOSITORY/$binary:$TAG" >&2
    docker build --build-arg VERSION="$VERSION" --target "$binary" -t "$REPOSITORY/$binary:$TAG" . >&2
  done
  echo "==> built in $((SECONDS - start)) s:" >&2
  for binary in "${BINARIES[@]}"; do
    docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$REPOSITORY/$binary:$TAG" >&2
  done
}

case ${1:-} in
  build) build ;;
  list) names ;;
  *) echo "usage: $0 build|list" >&2; exit 2 ;;
esac

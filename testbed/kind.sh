#!/usr/bin/env bash
# Test-bed component (optional): kind, and a kind node image built without any registry.
#
# kind itself is unmodified (pinned in testbed/go/kind). `kind build node-image` pulls the
# control plane's images, so the node image is assembled here the way kind assembles it:
#
#   node base     debootstrap bookworm (systemd, containerd, runc, CNI plugins, iptables, ...)
#                 + kind's images/base/files from kind's module source, the entrypoint
#                 wrapper testbed/kind/entrypoint-unpriv, containerd with
#                 restrict_oom_score_adj (for nodes started without --privileged)
#   components    registry.k8s.io/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                 kube-proxy}:<version> from the bed's own binaries, etcd (the bed's etcd
#                 under the tag kubeadm asks for), coredns and pause built from their Go
#                 modules, kindnet-lite (testbed/kind/kindnetd) as the CNI
#   node          kubelet, kubeadm, kubectl, crictl (testbed/go/kubernetes-node, the same
#                 Kubernetes version as the bed), the component images imported into
#                 containerd; tagged $NODE_IMAGE
#
# No default StorageClass provisioner: local-path-provisioner is not built, so kind's
# fallback host-path StorageClass leaves PVCs Pending and the chart's Kafka keeps its data
# in an emptyDir (its default). On hosts whose processes lack CAP_SYS_RESOURCE,
# testbed/kind/docker-shim goes first on PATH (kind passes --privileged to docker).
#
# Usage: kind.sh install|up|down|status
#   install  builds kind, the binaries and the node image (only what a changed pin needs)
#   up       records the host's sysctls that a kind node's kubelet changes (down restores them)
#   down     deletes the bed's kind clusters (shopstream-e2e*), restores those sysctls
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export DOCKER_BUILDKIT=0 CGO_ENABLED=0
WORK=$CACHE/kind
SHIM_DIR=$CACHE/kind/shim
DIR=$STATE/kind
K8S_VERSION=$(cd "$TESTBED_DIR/go/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes 2>/dev/null || echo unknown)
KIND_VERSION=$(cd "$TESTBED_DIR/go/kind" && go list -m -f '{{.Version}}' sigs.k8s.io/kind 2>/dev/null || echo unknown)
NODE_IMAGE=shopstream-testbed/kind-node:$K8S_VERSION
# The image tags kubeadm $K8S_VERSION asks for (`kubeadm config images list`) and kind's
# containerd sandbox image.
ETCD_TAG=3.6.5-0
COREDNS_TAG=$(cd "$TESTBED_DIR/go/coredns" && go list -m -f '{{.Version}}' github.com/coredns/coredns 2>/dev/null || echo unknown)
PAUSE_TAGS=(3.10 3.10.1)
KINDNET_IMAGE=docker.io/shopstream-testbed/kindnet-lite:v1
NODE_PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,conntrack,ethtool,socat,iproute2,kmod,libseccomp2,pigz,procps,ca-certificates,ebtables,util-linux,mount,findutils,rsync,jq
NET_PACKAGES=iptables,nftables,conntrack,kmod,iproute2
# The machine-wide sysctls a kind node's kubelet and kube-proxy set (through the node's
# writable /proc/sys): recorded by up, restored by down.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max)

# Whether this host needs the shim: CAP_SYS_RESOURCE (bit 24) missing from the bounding set.
needs_shim() {
  local bnd
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (((16#$bnd >> 24 & 1) == 0))
}

kind_source() { echo "$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"; }

rootfs() {
  local name=$1 include=$2 root=$WORK/rootfs-$1
  rm -rf "$root"
  debootstrap --variant=minbase --include="$include" bookworm "$root" "$(mirror)" \
    >"$WORK/debootstrap-$name.log" 2>&1 || { tail -n 20 "$WORK/debootstrap-$name.log" >&2; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}

# kind's images/base/Dockerfile, applied to the debootstrapped tree.
node_base() {
  local r=$WORK/rootfs-node files p b
  files=$(kind_source)/images/base/files
  command install -m 0755 "$files"/usr/local/bin/* "$r/usr/local/bin/"
  mkdir -p "$r/kind/bin" "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" \
    "$r/etc/systemd/system/kubelet.service.d" "$r/etc/kubernetes/manifests" "$r/opt/cni/bin"
  command install -m 0644 "$files/kind/README.txt" "$r/kind/"
  command install -m 0755 "$files"/kind/bin/* "$r/kind/bin/"
  command install -m 0644 "$files/etc/crictl.yaml" "$r/etc/"
  command install -m 0644 "$files/etc/containerd/config.toml" "$r/etc/containerd/config.toml"
  command install -m 0644 "$files/etc/default/kubelet" "$r/etc/default/kubelet"
  command install -m 0644 "$files"/etc/sysctl.d/* "$r/etc/sysctl.d/"
  command install -m 0644 "$files"/etc/systemd/system/*.service "$files/etc/systemd/system/kubelet.slice" "$r/etc/systemd/system/"
  command install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
  find "$r/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
    "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
    "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  grep -q '^ReadKMsg=no' "$r/etc/systemd/journald.conf" || echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "$r" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  for p in host-local loopback ptp portmap bridge; do cp "$r/usr/lib/cni/$p" "$r/opt/cni/bin/"; done
  # kind's units run containerd from /usr/local/bin; Debian installs it in /usr/bin.
  for b in containerd ctr containerd-shim-runc-v2; do ln -sf "/usr/bin/$b" "$r/usr/local/bin/$b"; done
  chroot "$r" ctr oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >"$r/etc/containerd/cri-base.json"
  # Without CAP_SYS_RESOURCE a container may not get a lower oom_score_adj than containerd.
  sed -i 's/^  restrict_oom_score_adj = false/  restrict_oom_score_adj = true/' "$r/etc/containerd/config.toml"
  command install -m 0755 "$TESTBED_DIR/kind/entrypoint-unpriv" "$r/usr/local/bin/entrypoint-unpriv"
  tar -C "$r" -c . | docker import - shopstream-testbed/kind-base-raw:bookworm >/dev/null
  mkdir -p "$WORK/ctx/base"
  # docker 20.10's import refuses --change STOPSIGNAL: a small Dockerfile on top.
  printf '%s\n' 'FROM shopstream-testbed/kind-base-raw:bookworm' 'ENV container=docker' \
    'STOPSIGNAL SIGRTMIN+3' 'ENTRYPOINT ["/usr/local/bin/entrypoint-unpriv", "/sbin/init"]' >"$WORK/ctx/base/Dockerfile"
  docker build -q -t shopstream-testbed/kind-base:bookworm "$WORK/ctx/base" >"$WORK/build-base.log" 2>&1 || die kind "building the node base failed" "$WORK/build-base.log"
  tar -C "$WORK/rootfs-net" -c . | docker import - shopstream-testbed/debian-net:bookworm >/dev/null
}

# image TAG DOCKERFILE FILE...: builds TAG from DOCKERFILE text with FILEs in its context.
image() {
  local tag=$1 dockerfile=$2 ctx
  shift 2
  ctx=$WORK/ctx/image
  rm -rf "$ctx"
  mkdir -p "$ctx"
  printf '%b' "$dockerfile" >"$ctx/Dockerfile"
  cp -a "$@" "$ctx/"
  docker build -q -t "$tag" "$ctx" >"$WORK/build-image.log" 2>&1 || die kind "building $tag failed" "$WORK/build-image.log"
}

component_images() {
  local c empty=$WORK/ctx/tmp t
  mkdir -p "$empty" && chmod 1777 "$empty"
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    image "registry.k8s.io/$c:$K8S_VERSION" "FROM shopstream-testbed/debian-net:bookworm\nCOPY $c /usr/local/bin/$c\n" "$BIN/$c"
  done
  image "registry.k8s.io/etcd:$ETCD_TAG" 'FROM scratch\nCOPY etcd /usr/local/bin/etcd\nCOPY tmp /tmp\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' "$BIN/etcd" "$empty"
  image "registry.k8s.io/coredns/coredns:$COREDNS_TAG" 'FROM scratch\nCOPY coredns /coredns\nCOPY tmp /tmp\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n' "$BIN/coredns" "$empty"
  image "registry.k8s.io/pause:${PAUSE_TAGS[0]}" 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' "$WORK/bin/pause"
  for t in "${PAUSE_TAGS[@]:1}"; do docker tag "registry.k8s.io/pause:${PAUSE_TAGS[0]}" "registry.k8s.io/pause:$t"; done
  image "$KINDNET_IMAGE" 'FROM shopstream-testbed/debian-net:bookworm\nCOPY kubectl /usr/local/bin/kubectl\nCOPY kindnetd /bin/kindnetd\nCMD ["/bin/kindnetd"]\n' "$BIN/kubectl" "$TESTBED_DIR/kind/kindnetd"
}

# kind's own CNI manifest (kindnet) with the kindnet-lite image and room for kubectl.
cni_manifest() {
  python3 - "$(kind_source)/pkg/build/nodeimage/const_cni.go" "$KINDNET_IMAGE" <<'PY'
import sys
source = open(sys.argv[1]).read()
start = source.index('const defaultCNIManifest = `') + len('const defaultCNIManifest = `')
parts = source[start:].split('`')
manifest = parts[0] + sys.argv[2] + parts[2]
old = '          limits:\n            cpu: "100m"\n            memory: "50Mi"'
assert old in manifest, "kind's CNI manifest changed: update testbed/kind.sh"
sys.stdout.write(manifest.replace(old, '          limits:\n            cpu: "100m"\n            memory: "128Mi"'))
PY
}

node_image() {
  local images=() c=shopstream-kind-node-build-$$ b t component
  for component in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    images+=("registry.k8s.io/$component:$K8S_VERSION")
  done
  images+=("registry.k8s.io/etcd:$ETCD_TAG" "registry.k8s.io/coredns/coredns:$COREDNS_TAG" "$KINDNET_IMAGE")
  for t in "${PAUSE_TAGS[@]}"; do images+=("registry.k8s.io/pause:$t"); done
  cni_manifest >"$WORK/ctx/default-cni.yaml"
  docker rm -f "$c" >/dev/null 2>&1 || true
  docker run -d --name "$c" --entrypoint=sleep --security-opt seccomp=unconfined \
    shopstream-testbed/kind-base:bookworm infinity >/dev/null
  for b in kubeadm kubelet kubectl crictl; do docker cp "$BIN/$b" "$c:/usr/bin/$b"; done
  docker exec "$c" sh -c 'cd /usr/bin && chown root:root kubeadm kubelet kubectl crictl && chmod 0755 kubeadm kubelet kubectl crictl'
  docker exec "$c" sh -c "mkdir -p /kind/manifests && printf %s $K8S_VERSION >/kind/version"
  # No /kind/manifests/default-storage.yaml: kind falls back to a host-path StorageClass.
  docker cp "$WORK/ctx/default-cni.yaml" "$c:/kind/manifests/default-cni.yaml"
  docker exec "$c" bash -c 'nohup containerd >/dev/null 2>&1 &'
  docker exec "$c" bash -c 'for _ in $(seq 1 60); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.5; done; ctr version >/dev/null'
  docker save "${images[@]}" | docker exec -i "$c" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null
  docker exec "$c" bash -c 'kill $(pidof containerd); for _ in $(seq 1 40); do pidof containerd >/dev/null || break; sleep 0.5; done'
  docker exec "$c" bash -c 'rm -rf /tmp/* /var/log/*.log'
  docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint-unpriv", "/sbin/init" ]' "$c" "$NODE_IMAGE" >/dev/null
  docker rm -f "$c" >/dev/null
}

install() {
  local started=false digest start
  engine_up || {
    start_dockerd kind "$DIR/dockerd.pid" "$DIR/dockerd.log"
    started=true
  }
  command -v debootstrap >/dev/null || die kind "debootstrap not found: testbed/docker.sh install installs it"
  local node_version
  node_version=$(cd "$TESTBED_DIR/go/kubernetes-node" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ $node_version == "$K8S_VERSION" ]] \
    || die kind "testbed/go/kubernetes-node pins k8s.io/kubernetes $node_version, testbed/go/kubernetes $K8S_VERSION: pin both to the same version"
  go_build_tools "$TESTBED_DIR/go/kind"
  go_build_tools "$TESTBED_DIR/go/coredns"
  local v major minor ldflags="" pkg
  v=$K8S_VERSION; major=${v#v}; major=${major%%.*}; minor=${v#v"$major".}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  go_build_tools "$TESTBED_DIR/go/kubernetes-node" "$ldflags"
  mkdir -p "$WORK/bin" "$SHIM_DIR"
  command install -m 0755 "$TESTBED_DIR/kind/docker-shim" "$SHIM_DIR/docker"
  digest=$(stamp_of <(declare -f rootfs node_base image component_images cni_manifest node_image) \
    "$TESTBED_DIR/kind/entrypoint-unpriv" "$TESTBED_DIR/kind/kindnetd" "$TESTBED_DIR/go/pause/main.go" \
    "$TESTBED_DIR"/go/{kubernetes,kubernetes-node,kind,coredns,etcd}/go.sum \
    <(echo "$NODE_PACKAGES $NET_PACKAGES $ETCD_TAG ${PAUSE_TAGS[*]} $KINDNET_IMAGE"))
  if up_to_date kind-node "$digest" "$WORK/bin/pause" && docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    log "kind: node image $NODE_IMAGE up to date"
  else
    start=$SECONDS
    log "kind: building node image $NODE_IMAGE"
    (cd "$TESTBED_DIR/go/pause" && go build -trimpath -ldflags "-s -w" -o "$WORK/bin/pause" .) \
      || die kind "building pause failed"
    local pids=() pid
    rootfs node "$NODE_PACKAGES" & pids+=($!)
    rootfs net "$NET_PACKAGES" & pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid" || die kind "debootstrap failed (logs in $WORK)"; done
    node_base
    component_images
    node_image
    rm -rf "$WORK"/rootfs-* "$WORK/ctx"
    mark_installed kind-node "$digest"
    log "kind: node image built in $((SECONDS - start)) s"
  fi
  if $started; then stop_pid kind "$DIR/dockerd.pid"; fi
}

up() {
  command -v kind >/dev/null || die kind "not installed: run 'testbed/kind.sh install'"
  docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || die kind "node image $NODE_IMAGE missing: run 'testbed/kind.sh install'"
  mkdir -p "$DIR"
  if [[ ! -f $DIR/sysctls ]]; then
    local key
    for key in "${SYSCTLS[@]}"; do
      printf '%s=%s\n' "$key" "$(sysctl -n "$key" 2>/dev/null || echo)"
    done >"$DIR/sysctls"
  fi
  log "kind: up (node image $NODE_IMAGE)"
}

down() {
  local cluster key value
  if command -v kind >/dev/null; then
    for cluster in $(PATH="$SHIM_DIR:$PATH" kind get clusters 2>/dev/null | grep '^shopstream-e2e' || true); do
      log "kind: deleting cluster $cluster"
      PATH="$SHIM_DIR:$PATH" kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    done
  fi
  if [[ -f $DIR/sysctls ]]; then
    while IFS='=' read -r key value; do
      if [[ -n $value ]]; then sysctl -q -w "$key=$value" >/dev/null 2>&1 || true; fi
    done <"$DIR/sysctls"
    rm -f "$DIR/sysctls"
  fi
  log "kind: down"
}

status() {
  if command -v kind >/dev/null && docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    echo "kind: $(kind version 2>/dev/null | awk '{print $2}'), node image $NODE_IMAGE"
  else
    echo "kind: not installed"
    return 1
  fi
}

# env: lines for the bed's env file (bed.sh up).
env_lines() {
  echo "export KIND_NODE_IMAGE='$NODE_IMAGE'"
  if needs_shim; then
    echo "# This host lacks CAP_SYS_RESOURCE: kind's --privileged goes through the shim."
    echo "export PATH=\"$SHIM_DIR:\$PATH\""
  fi
}

case ${1:-} in
  install | up | down | status) "$1" ;;
  env) env_lines ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac

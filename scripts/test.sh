#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages), builds, and runs every
# test of the workspace, the privileged integration tests included. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh runs real containers and must run as root (sudo scripts/test.sh)" >&2
    exit 1
fi

packages=(
    # build
    build-essential pkg-config protobuf-compiler libprotobuf-dev libseccomp-dev
    # runtime tests: busybox rootfs, ps for `skiff-runc ps`, the cgroup v2 VM
    busybox-static procps qemu-system-x86 cpio kmod
    # peers the runtime is compared with and driven by: containerd's runc shim, podman (conmon),
    # umoci for the OCI test image, grpcio for the CRI client of the containerd tests
    runc crun containerd podman umoci python3-grpcio
    # networking tools used by tests (the kubelet's pod network and the proxy's rules run inside
    # network namespaces the tests make), nsenter, dig for the cluster DNS tests
    iproute2 iptables nftables conntrack util-linux bind9-dnsutils unbound curl
    # the kubelet's image tests: a real registry on loopback, images pushed with skopeo
    docker-registry skopeo openssl
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ -d controlplane/tests/python ] && ! python3 -c "import kubernetes" 2>/dev/null; then
    pip install --quiet kubernetes
fi

# Pods reaching each other through DNAT (hostPorts, Services) need bridged traffic to pass
# netfilter, as kubeadm's preflight checks demand.
modprobe br_netfilter 2>/dev/null || [ -d /proc/sys/net/bridge ] || {
    echo "the kernel module br_netfilter cannot be loaded; the kubelet and proxy tests need it" >&2
    exit 1
}

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast

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
    # the control plane on etcd (skiff-store's etcd backend and the API tests on it)
    etcd-server
    # `skiff install`'s units checked by systemd-analyze verify; examples/vagrant checked by
    # vagrant validate
    systemd vagrant
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
if [ -d controlplane/skiff/tests/python ] && ! python3 -c "import kubernetes" 2>/dev/null; then
    pip install --quiet kubernetes
fi

# Pods reaching each other through DNAT (hostPorts, Services) need bridged traffic to pass
# netfilter, as kubeadm's preflight checks demand.
modprobe br_netfilter 2>/dev/null || [ -d /proc/sys/net/bridge ] || {
    echo "the kernel module br_netfilter cannot be loaded; the kubelet and proxy tests need it" >&2
    exit 1
}

cargo build --workspace --all-targets
status=0
cargo test --workspace --no-fail-fast || status=$?
# A lean subset of the API server's tests again with the objects in etcd (every test server
# gets an etcd of its own); the whole suite runs on the embedded store above.
SKIFF_TEST_STORE=etcd cargo test -p skiff --no-fail-fast --test kubectl --test crash \
    --test kube_client --test watch_cache -- apply_get_patch_scale_delete \
    optimistic_concurrency_conflicts watch_sees_changes \
    status_subresource_cascading_delete_and_initial_events kill_9 \
    metadata_lists_watches_and_pages pod_watchers_by_node endpointslice_watchers \
    resource_version_0_lists a_stalled_watcher || status=$?
exit $status

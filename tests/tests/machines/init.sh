#!/bin/sh
# PID 1 of a machine of the two-VM cluster test (stage 2, chrooted into /r; see skiff-testvm).
# The kernel command line says which machine this is: skiff_role=server|agent, skiff_ip (its
# address on the private link), skiff_peer (the other machine's), and for the agent skiff_token
# (the server's join token).
# What the test reads is a `SKIFF-…` line on the serial console.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

say() { echo "SKIFF-$*"; }
fatal() {
	say "FAIL $*"
	poweroff -f
	sleep 10
}

mount -t proc proc /proc || fatal "mount proc"
mount -t sysfs sysfs /sys || fatal "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fatal "mount devtmpfs"
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run || fatal "mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fatal "mount /tmp"
# The node's files on a filesystem of their own (overlayfs wants xattrs on its upper layer).
mkdir -p /var/lib/skiff && mount -t tmpfs -o mode=755 tmpfs /var/lib/skiff || fatal "mount /var/lib/skiff"
# cgroup v2 only (the kernel has no v1 cpuset nor memory), mounted as systemd does.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup || fatal "mount cgroup2"
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
	echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || fatal "enabling $c"
done
# init and its children in a leaf of their own (no process in an inner cgroup with controllers).
mkdir -p /sys/fs/cgroup/init.scope && echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs
hostname "$skiff_role"
echo "127.0.0.1 localhost $skiff_role" > /etc/hosts
: > /etc/resolv.conf
# Modules come from /lib/modules (modules.dep made on the host); the kernel asks modprobe for the
# netfilter ones itself as iptables needs them.
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in virtio_net veth bridge br_netfilter overlay nf_conntrack nf_nat nf_tables nft_compat ip_tables iptable_nat iptable_filter; do
	modprobe "$m" || fatal "modprobe $m"
done
sysctl -qw net.ipv4.ip_forward=1

ip link set lo up
ip addr add "$skiff_ip/24" dev eth0 && ip link set eth0 up || fatal "eth0"
# A default route, as a machine has (a Service's ClusterIP is routed before it is translated,
# and the proxy needs a route to it): the other machine, the only one there is.
ip route add default via "$skiff_peer" || fatal "default route"
say "INFO $skiff_role up at $(cut -d' ' -f1 /proc/uptime)s: $(uname -r), eth0 $skiff_ip"

# Warnings and errors of the skiff process, as they come.
logs() {
	tail -F /tmp/$1.log 2>/dev/null | while read -r l; do
		case "$l" in *WARN* | *ERROR*) echo "SKIFF-LOG $1 $l" ;; esac
	done &
}

if [ "$skiff_role" = server ]; then
	# eth1: qemu's user network, restricted, through which the test reaches the API server.
	ip addr add 10.0.2.15/24 dev eth1 && ip link set eth1 up || fatal "eth1"
	dir=/var/lib/skiff/server
	skiff server --data-dir $dir --listen 0.0.0.0:6443 --advertise-address "$skiff_ip" \
		>/tmp/server.out 2>/tmp/server.log &
	server=$!
	logs server
	until grep -q '^join a node: ' /tmp/server.out; do
		kill -0 $server 2>/dev/null || fatal "skiff server exited: $(tail -5 /tmp/server.log | tr '\n' ' ')"
		sleep 1
	done
	say "JOIN $(sed -n 's/^join a node: //p' /tmp/server.out)"
	say "KUBECONFIG $(base64 -w 0 $dir/admin.kubeconfig)"
	# Requests to the test's Service from this machine, which has no proxy: the default route
	# takes them to the agent, whose proxy translates them. By the ClusterIP the test gives the
	# Service and by the NodePort on the agent's address; the first answer of each is printed.
	# (busybox wget segfaults on this kernel: nc.)
	probe() {
		while :; do
			out=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 "$2" "$3" 2>/dev/null | tr -d '\r')
			case "$out" in "HTTP/1."?" 200"*) break ;; esac
			sleep 2
		done
		say "HTTP $1 $(echo "$out" | sed '1,/^$/d' | tr '\n' ' ')"
	}
	probe clusterip 10.96.100.100 80 &
	probe nodeport "$skiff_peer" 30080 &
else
	# The image the test's pod runs, in the node's store before the node joins.
	skiff image build-busybox -o /tmp/busybox.tar busybox:latest >/tmp/image.log 2>&1 &&
		skiff image --data-dir /var/lib/skiff/agent import /tmp/busybox.tar >>/tmp/image.log 2>&1 ||
		fatal "loading busybox: $(tail -3 /tmp/image.log | tr '\n' ' ')"
	rm -f /tmp/busybox.tar
	skiff agent --server "https://$skiff_peer:6443" --token "$skiff_token" \
		--data-dir /var/lib/skiff/agent --node-name agent --node-ip "$skiff_ip" \
		'--kubelet-arg=--eviction-hard=memory.available<50Mi' >/tmp/agent.out 2>/tmp/agent.log &
	logs agent
fi
while :; do sleep 3600; done

#!/bin/sh
# PID 1 of a scenario VM (stage 2, chrooted into /r by stage 1; see scenario.rs).
# Sets up a cgroup-v2-only machine, runs /skiff/scenario.sh against the runtime in /skiff/bin, and
# powers off. Everything the harness reads is a `SKIFF-…` line on the serial console.
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root

fatal() {
	echo "SKIFF-CHECK fail vm/setup $*"
	echo "SKIFF-DONE 0 1"
	poweroff -f
	sleep 10
}

mount -t proc proc /proc || fatal "mount proc"
mount -t sysfs sysfs /sys || fatal "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fatal "mount devtmpfs"
mount -t tmpfs -o mode=755 tmpfs /run || fatal "mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fatal "mount /tmp"
# The only hierarchy (cmdline cgroup_no_v1=all), mounted as systemd does on v2-only nodes.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup || fatal "mount cgroup2"

CG=/sys/fs/cgroup
controllers=$(cat $CG/cgroup.controllers)
for c in cpuset cpu io memory hugetlb pids; do
	case " $controllers " in *" $c "*) ;; *) fatal "controller $c missing from cgroup.controllers ($controllers)" ;; esac
done
for c in $controllers; do
	echo "+$c" > $CG/cgroup.subtree_control || fatal "enabling $c in the root's cgroup.subtree_control"
done

# hugetlb limits are enforced by taking real pages: keep a few 2 MiB pages in the pool.
echo 8 > /proc/sys/vm/nr_hugepages
[ "$(cat /proc/sys/vm/nr_hugepages)" = 8 ] || fatal "could not reserve 8 hugepages ($(cat /proc/sys/vm/nr_hugepages))"

# The runtime is started from a cgroup of its own, as under a service manager: a relative
# cgroupsPath is resolved from there (runc: relative to the parent of its own cgroup).
mkdir -p $CG/harness/runner && echo $$ > $CG/harness/runner/cgroup.procs || fatal "moving init into /harness/runner"

# What the scenario relies on, as checks of their own.
mounts=$(grep -c ' cgroup' /proc/mounts)
v2=$(grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts)
if [ "$mounts" = 1 ] && [ "$v2" = 1 ] && ! mount -t cgroup -o memory none /mnt 2>/dev/null; then
	echo "SKIFF-CHECK ok vm/cgroup2-only cgroup2 on /sys/fs/cgroup, no v1 hierarchy (cgroup_no_v1=all)"
else
	echo "SKIFF-CHECK fail vm/cgroup2-only $(grep cgroup /proc/mounts | tr '\n' ' ')"
fi
echo "SKIFF-CHECK ok vm/controllers $(cat $CG/cgroup.subtree_control) enabled at the root"
echo "SKIFF-CHECK ok vm/hugepages $(cat /proc/sys/vm/nr_hugepages) x $(grep Hugepagesize /proc/meminfo | tr -s ' ' | cut -d' ' -f2-)"

runtime=$(ls /skiff/bin/* | head -1)
echo "SKIFF-INFO kernel $(uname -r), init at $(cut -d' ' -f1 /proc/uptime)s of uptime"
echo "SKIFF-INFO runtime $runtime: $("$runtime" --version 2>&1 | head -1)"

sh /skiff/scenario.sh "$runtime"

echo "SKIFF-INFO uptime $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
sleep 10

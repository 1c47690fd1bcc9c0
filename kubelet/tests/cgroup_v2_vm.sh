#!/bin/sh
# The kubelet's pod cgroups in the cgroup v2 VM (see cgroup_v2_vm.rs), run by skiff-testvm's
# scenario VM with the runtime as $1 and the kubelet's test binary in /skiff/tools. Prints
# `SKIFF-CHECK ok|fail <name> <detail>` for every check and `SKIFF-DONE <ok> <fail>` at the end.
RUNTIME=$1
ROOT=/run/skiff-vm-state
CG=/sys/fs/cgroup
BUNDLES=/tmp/bundles
NOK=0
NFAIL=0

ok() { NOK=$((NOK + 1)); echo "SKIFF-CHECK ok $1 $2"; }
fail() { NFAIL=$((NFAIL + 1)); echo "SKIFF-CHECK fail $1 $(printf '%s' "$2" | tr '\n' ' ' | cut -c1-600)"; }
expect_eq() { if [ "$3" = "$2" ]; then ok "$1" "$3"; else fail "$1" "want '$2' got '$3'"; fi; }
one_line() { tr '\n' ' ' | sed 's/ *$//'; }
rt() { timeout -s KILL 30 "$RUNTIME" --root "$ROOT" "$@"; }
state_field() { rt state "$1" 2>/dev/null | tr -d '\n' | grep -o "\"$2\": *\"\{0,1\}[^\",}]*" | head -1 | sed 's/.*: *"\{0,1\}//'; }
cgroup_of() { sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null; }
file_is() { # NAME CGDIR FILE WANT
	expect_eq "$1/$3" "$4" "$(one_line < "$CG$2/$3" 2>&1)"
}

# The kubelet's code: the pods' cgroups with their limits, and a bundle per container.
tool=$(ls /skiff/tools/* | head -1)
mkdir -p $BUNDLES
if SKIFF_VM_BUNDLES=$BUNDLES "$tool" --ignored --exact in_vm_pod_cgroups --nocapture --test-threads 1 > /tmp/kubelet.out 2>&1; then
	ok kubelet/pod-cgroups "$(grep -c 'SKIFF-POD' /tmp/kubelet.out) pods"
else
	fail kubelet/pod-cgroups "$(tail -c 600 /tmp/kubelet.out)"
fi

# The QoS tiers: controllers enabled down to the pods' parents, BestEffort's minimal weight.
for tier in /kubepods /kubepods/burstable /kubepods/besteffort; do
	file_is "tier$tier" "$tier" cgroup.subtree_control "cpu memory pids"
done
file_is tier/kubepods/besteffort /kubepods/besteffort cpu.weight 1
# Burstable's from its pods' requests: 250m → 256 shares → weight 10.
file_is tier/kubepods/burstable /kubepods/burstable cpu.weight 10
file_is tier/kubepods/burstable /kubepods/burstable memory.max max

# Per pod: cpu.weight cpu.max memory.max pids.max (the pod's cgroup, written by the kubelet, and
# the container's, by the runtime from the kubelet's config.json).
expect() {
	case $1 in
	guaranteed) echo "20|50000 100000|67108864|100" ;;
	burstable) echo "10|50000 100000|33554432|100" ;;
	besteffort) echo "1|max 100000|max|100" ;;
	esac
}
# (libtest prints `test … ` before the test's own output, on the same line.)
sed -n 's/.*\(SKIFF-POD \)/\1/p' /tmp/kubelet.out > /tmp/pods
while read -r _ name cgpath; do
	pod=${cgpath%/*}
	IFS='|' read -r weight max mem pids << EOF
$(expect "$name")
EOF
	file_is "$name/pod" "$pod" cpu.weight "$weight"
	file_is "$name/pod" "$pod" cpu.max "$max"
	file_is "$name/pod" "$pod" memory.max "$mem"
	file_is "$name/pod" "$pod" pids.max "$pids"
	err=/tmp/$name.err
	if rt create --bundle "$BUNDLES/$name" "$name" > /dev/null 2> "$err" < /dev/null && rt start "$name" 2>> "$err"; then
		ok "$name/started" ""
	else
		fail "$name/started" "$(tail -c 400 "$err")"
		continue
	fi
	pid=$(state_field "$name" pid)
	expect_eq "$name/process-cgroup" "$cgpath" "$(cgroup_of "$pid")"
	file_is "$name/container" "$cgpath" cpu.weight "$weight"
	file_is "$name/container" "$cgpath" cpu.max "$max"
	file_is "$name/container" "$cgpath" memory.max "$mem"
	file_is "$name/pod" "$pod" pids.current 1
	rt kill "$name" KILL 2>> "$err"
	n=0
	while [ $n -lt 100 ] && [ "$(state_field "$name" status)" != stopped ]; do sleep 0.1; n=$((n + 1)); done
	if rt delete "$name" 2>> "$err" && [ ! -d "$CG$cgpath" ]; then
		ok "$name/deleted" "container cgroup removed, pod cgroup kept"
	else
		fail "$name/deleted" "$(tail -c 400 "$err")"
	fi
done < /tmp/pods

echo "SKIFF-DONE $NOK $NFAIL"

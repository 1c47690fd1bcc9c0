#!/bin/sh
# The cgroup v2 checks, run inside the test VM against the runtime given as $1 through runc's
# command line. Each case is /skiff/cases/<id>/{config.json,expect} (written by vm/cases.rs, which
# documents the `expect` directives). Prints `SKIFF-CHECK ok|fail <case>/<check> <detail>` for every
# check and `SKIFF-DONE <ok> <fail>` at the end.
RUNTIME=$1
ROOT=/run/skiff-vm-state
CG=/sys/fs/cgroup
STEP_TIMEOUT=30
NOK=0
NFAIL=0

ok() { NOK=$((NOK + 1)); echo "SKIFF-CHECK ok $1 $2"; }
fail() { NFAIL=$((NFAIL + 1)); echo "SKIFF-CHECK fail $1 $(printf '%s' "$2" | tr '\n' ' ' | cut -c1-600)"; }
expect_eq() { if [ "$3" = "$2" ]; then ok "$1" "$3"; else fail "$1" "want '$2' got '$3'"; fi; }
one_line() { tr '\n' ' ' | sed 's/ *$//'; }
# The whole of a file (a runtime's stderr, say) into the serial log, for whoever reads it after a failure.
dump() { # LABEL FILE
	[ -s "$2" ] && head -c 8000 "$2" | sed "s|^|SKIFF-LOG $1: |"
	return 0
}

# The runtime, with a deadline per command so a hang costs one step, not the whole VM.
rt() { timeout -s KILL $STEP_TIMEOUT "$RUNTIME" --root "$ROOT" "$@"; }

# A field of a JSON object (pretty-printed or not), e.g. of `state`'s output.
json_field() { # JSON FIELD
	printf '%s' "$1" | tr -d '\n' | grep -o "\"$2\": *\"\{0,1\}[^\",}]*" | head -1 | sed 's/.*: *"\{0,1\}//'
}
state_field() { json_field "$(rt state "$1" 2>/dev/null)" "$2"; }
uptime() { cut -d' ' -f1 /proc/uptime; }

wait_status() { # ID STATUS
	local i=0
	while [ $i -lt 100 ]; do
		[ "$(state_field "$1" status)" = "$2" ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

wait_probe() { # FILE
	local i=0
	while [ $i -lt 300 ]; do
		grep -q '^PROBE-DONE' "$1" 2>/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# The container's cgroup as seen from outside (`0::/path` in /proc/PID/cgroup).
cgroup_of() { sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null; }

check_path() { # CASE CGROUP KIND WANT
	case "$3" in
	exact) expect_eq "$1/cgroup-path" "$4" "$2" ;;
	suffix)
		case "$2" in
		*"$4") ok "$1/cgroup-path" "$2 (ends with $4)" ;;
		*) fail "$1/cgroup-path" "want a path ending with '$4' got '$2'" ;;
		esac
		;;
	dedicated)
		if [ -n "$2" ] && [ "$2" != / ] && [ "$2" != "$(cgroup_of $$)" ]; then
			ok "$1/cgroup-path" "$2 (own cgroup)"
		else
			fail "$1/cgroup-path" "want a cgroup of the container's own got '$2'"
		fi
		;;
	esac
}

# The value of every `file` directive read from outside, in the container's cgroup directory.
check_outside() { # CASE EXPECT CGDIR
	local key name want
	while read -r key name want; do
		[ "$key" = file ] || continue
		expect_eq "$1/outside/$name" "$want" "$(cat "$3/$name" 2>&1 | one_line)"
	done < "$2"
}

# The same values as the container read them, its own view of its cgroup, and the extra checks it
# printed.
check_probe() { # CASE EXPECT OUT
	local key name want tag verdict detail
	while read -r key name want; do
		[ "$key" = file ] || continue
		expect_eq "$1/inside/$name" "$want" "$(sed -n "s|^IN $name ||p" "$3")"
	done < "$2"
	expect_eq "$1/inside/proc-self-cgroup" "0::/" "$(sed -n 's/^CGROUP //p' "$3")"
	while read -r tag verdict name detail; do
		[ "$tag" = CHECK ] || continue
		if [ "$verdict" = ok ]; then ok "$1/inside/$name" "$detail"; else fail "$1/inside/$name" "$detail"; fi
	done < "$3"
}

check_gone() { # CASE CGDIR
	if [ -n "$2" ] && [ "$2" != "$CG" ] && [ "$2" != "$CG/" ] && [ ! -e "$2" ]; then
		ok "$1/cgroup-removed" "$2"
	else
		fail "$1/cgroup-removed" "$2 still exists: $(ls "$2" 2>&1 | head -3 | one_line) procs: $(cat "$2/cgroup.procs" 2>&1 | one_line)"
	fi
	if rt state "$1" > /dev/null 2>&1; then fail "$1/state-after-delete" "state still succeeds"; else ok "$1/state-after-delete" "container unknown"; fi
}

# create → check from outside → start → check from inside → kill, delete (or delete --force) → gone.
run_detached() { # CASE
	local id dir out err fails_before kind want finish rc state pid cg cgdir sig
	id=$1
	dir=/skiff/cases/$id
	out=/tmp/$id.out
	err=/tmp/$id.err
	fails_before=$NFAIL
	kind=$(sed -n 's/^path \([a-z]*\).*/\1/p' "$dir/expect")
	want=$(sed -n 's/^path [a-z]* *//p' "$dir/expect")
	finish=$(sed -n 's/^finish //p' "$dir/expect")

	rt create --bundle "$dir" "$id" > "$out" 2> "$err" < /dev/null
	rc=$?
	if [ $rc -ne 0 ]; then
		fail "$id/create" "exit $rc: $(cat "$err")"
		dump "$id/create stderr" "$err"
		rt delete --force "$id" > /dev/null 2>&1
		return
	fi
	ok "$id/create" ""
	state=$(rt state "$id" 2>&1)
	expect_eq "$id/state-created" created "$(json_field "$state" status)"
	pid=$(json_field "$state" pid)
	if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then
		fail "$id/state-pid" "state pid '$pid' is not a live process"
		rt delete --force "$id" > /dev/null 2>&1
		return
	fi
	cg=$(cgroup_of "$pid")
	cgdir=$CG$cg
	check_path "$id" "$cg" "$kind" "$want"
	echo "SKIFF-INFO $id cgroup $cg"
	# Limits apply from `create` on, before the user's process runs.
	check_outside "$id" "$dir/expect" "$cgdir"

	if rt start "$id" > /dev/null 2>> "$err"; then ok "$id/start" ""; else fail "$id/start" "exit $?: $(cat "$err")"; fi
	if wait_probe "$out"; then
		ok "$id/probe-ran" ""
	else
		fail "$id/probe-ran" "no PROBE-DONE from the container in 30s; end of its output: $(tail -c 300 "$out" | one_line)"
	fi
	expect_eq "$id/state-running" running "$(state_field "$id" status)"
	check_probe "$id" "$dir/expect" "$out"

	case "$finish" in
	"kill "*)
		sig=${finish#kill }
		if rt kill "$id" "$sig" 2>> "$err"; then ok "$id/kill-$sig" ""; else fail "$id/kill-$sig" "$(cat "$err")"; fi
		if wait_status "$id" stopped; then ok "$id/state-stopped" ""; else fail "$id/state-stopped" "status '$(state_field "$id" status)' 10s after kill"; fi
		if rt delete "$id" 2>> "$err"; then ok "$id/delete" ""; else fail "$id/delete" "$(cat "$err")"; fi
		;;
	force)
		if rt delete --force "$id" 2>> "$err"; then ok "$id/delete-force" ""; else fail "$id/delete-force" "$(cat "$err")"; fi
		;;
	esac
	[ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/stat 2>/dev/null | cut -d' ' -f3)" != Z ] && fail "$id/process-gone" "pid $pid still alive after delete"
	check_gone "$id" "$cgdir"
	if [ $NFAIL -gt $fails_before ]; then
		dump "$id stderr" "$err"
		dump "$id container output" "$out"
	fi
}

# `run`: the exit code is the container's; the cgroup goes with it. The container waits for
# /tmp/run-shared/go (bind-mounted) so its cgroup can be checked from outside while it runs.
run_foreground() { # CASE
	local id dir out err code want runner pid cg
	id=$1
	dir=/skiff/cases/$id
	out=/tmp/$id.out
	err=/tmp/$id.err
	code=$(sed -n 's/^finish run //p' "$dir/expect")
	want=$(sed -n 's/^path [a-z]* *//p' "$dir/expect")
	mkdir -p /tmp/run-shared
	rm -f /tmp/run-shared/go
	rt run --bundle "$dir" "$id" > "$out" 2> "$err" < /dev/null &
	runner=$!
	if wait_probe "$out"; then ok "$id/probe-ran" ""; else fail "$id/probe-ran" "output: $(head -c 300 "$out")"; fi
	pid=$(state_field "$id" pid)
	cg=$(cgroup_of "$pid")
	expect_eq "$id/cgroup-path" "$want" "$cg"
	check_outside "$id" "$dir/expect" "$CG$cg"
	check_probe "$id" "$dir/expect" "$out"
	touch /tmp/run-shared/go
	wait $runner
	expect_eq "$id/run-exit-code" "$code" "$?"
	dump "$id/run stderr" "$err"
	check_gone "$id" "$CG$want"
}

# A create that must fail: non-zero, naming the problem, nothing left behind.
run_failing() { # CASE
	local id dir err word want rc
	id=$1
	dir=/skiff/cases/$id
	err=/tmp/$id.err
	word=$(sed -n 's/^finish fail //p' "$dir/expect")
	want=$(sed -n 's/^path [a-z]* *//p' "$dir/expect")
	rt create --bundle "$dir" "$id" > /dev/null 2> "$err" < /dev/null
	rc=$?
	if [ $rc -ne 0 ]; then
		ok "$id/create-refused" "exit $rc"
	else
		fail "$id/create-refused" "create succeeded"
		rt delete --force "$id" > /dev/null 2>&1
	fi
	if grep -q "$word" "$err"; then
		ok "$id/error-names-$word" "$(head -c 300 "$err" | one_line)"
	else
		fail "$id/error-names-$word" "stderr: $(head -c 300 "$err" | one_line)"
	fi
	check_gone "$id" "$CG$want"
}

for id in $(cat /skiff/cases/list); do
	echo "SKIFF-INFO case $id starts at $(uptime)s"
	before=$(sed -n 's/^before //p' "/skiff/cases/$id/expect")
	if [ -n "$before" ]; then
		if out=$(eval "$before" 2>&1); then ok "$id/before" "$before"; else fail "$id/before" "$before: $out"; fi
	fi
	case "$(sed -n 's/^finish \([a-z]*\).*/\1/p' "/skiff/cases/$id/expect")" in
	run) run_foreground "$id" ;;
	fail) run_failing "$id" ;;
	*) run_detached "$id" ;;
	esac
done

left=$(find $CG -mindepth 1 -type d | grep -v "^$CG/harness/runner$" | grep -v "^$CG/harness$" | grep -v "^$CG/skiff-abs$" | grep -v "^$CG/harness/skiff-rel$" | one_line)
echo "SKIFF-INFO cgroups left (parents the runtime created are allowed to stay): ${left:-none}"
echo "SKIFF-DONE $NOK $NFAIL"

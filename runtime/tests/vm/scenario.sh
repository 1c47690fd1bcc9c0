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

# Waits up to TENTHS tenths of a second until no process is left in a cgroup (cgroup.events
# "populated 0"; a killed process stays in cgroup.procs until it has exited). cgroupfs files
# have no size, so `[ -s cgroup.procs ]` is always false and cannot tell.
wait_unpopulated() { # CGDIR TENTHS
	local n=0
	while [ $n -lt "$2" ] && grep -qx 'populated 1' "$1/cgroup.events"; do sleep 0.1; n=$((n + 1)); done
	! grep -qx 'populated 1' "$1/cgroup.events"
}

# The runtime, with a deadline per command so a hang costs one step, not the whole VM.
rt() { timeout -s KILL $STEP_TIMEOUT "$RUNTIME" --root "$ROOT" "$@"; }

# A field of a JSON object (pretty-printed or not), e.g. of `state`'s output.
json_field() { # JSON FIELD
	printf '%s' "$1" | tr -d '\n' | grep -o "\"$2\": *\"\{0,1\}[^\",}]*" | head -1 | sed 's/.*: *"\{0,1\}//'
}
state_field() { json_field "$(rt state "$1" 2>/dev/null)" "$2"; }
# The scalar at PATH (keys joined by dots, array indexes as numbers) in a JSON document: a string
# without its quotes, a number, true/false/null; nothing when absent. For runc's nested `events`
# JSON, whatever the order of its keys.
json_get() { # JSON PATH
	printf '%s\n' "$1" | awk -v want="$2" '
	function path(p, j) { p = key[1]; for (j = 2; j <= d; j++) p = p "." key[j]; return p }
	{ s = s $0 "\n" }
	END {
		n = length(s); d = 0; iskey = 0
		for (i = 1; i <= n; i++) {
			c = substr(s, i, 1)
			if (c == "{") { d++; kind[d] = "o"; key[d] = ""; iskey = 1 }
			else if (c == "[") { d++; kind[d] = "a"; key[d] = 0; iskey = 0 }
			else if (c == "}" || c == "]") d--
			else if (c == ",") { if (kind[d] == "o") iskey = 1; else key[d]++ }
			else if (c == ":") iskey = 0
			else if (c == "\"") {
				v = ""
				for (i++; i <= n; i++) {
					c = substr(s, i, 1)
					if (c == "\\") { i++; v = v substr(s, i, 1); continue }
					if (c == "\"") break
					v = v c
				}
				if (kind[d] == "o" && iskey) key[d] = v
				else if (path() == want) { print v; exit }
			} else if (c !~ /[ \t\r\n]/) {
				v = c
				while (i < n && substr(s, i + 1, 1) !~ /[],} \t\r\n]/) { i++; v = v substr(s, i, 1) }
				if (path() == want) { print v; exit }
			}
		}
	}'
}
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
	local key name want tag verdict detail own
	while read -r key name want; do
		[ "$key" = file ] || continue
		expect_eq "$1/inside/$name" "$want" "$(sed -n "s|^IN $name ||p" "$3")"
	done < "$2"
	# Its own cgroup is "/" inside a cgroup namespace, the path the VM sees without one.
	own=$(sed -n 's/^inside-cgroup //p' "$2")
	expect_eq "$1/inside/proc-self-cgroup" "0::${own:-/}" "$(sed -n 's/^CGROUP //p' "$3")"
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
	live) "live_$(printf '%s' "$id" | tr - _)" "$id" "$cgdir" "$pid" "$err" ;;
	esac
	[ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/stat 2>/dev/null | cut -d' ' -f3)" != Z ] && fail "$id/process-gone" "pid $pid still alive after delete"
	check_gone "$id" "$cgdir"
	if [ $NFAIL -gt $fails_before ]; then
		dump "$id stderr" "$err"
		dump "$id container output" "$out"
	fi
}

# ---- live cases: exec, pause/resume, events, update on a running container (`finish live`) ----

# Not gone, and not a zombie waiting for its parent.
alive() { [ -d "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

expect_positive() { # NAME VALUE
	case "$2" in
	'' | *[!0-9]*) fail "$1" "want a number > 0 got '$2'" ;;
	*) if [ "$2" -gt 0 ]; then ok "$1" "$2"; else fail "$1" "want > 0 got '$2'"; fi ;;
	esac
}

# The last line of a runtime's stderr (its error message), for the detail of a check.
last_err() { tail -n 1 "$1" 2> /dev/null | cut -c1-300; }

# `kill ID SIG`, stopped, `delete`: the end of a live case that is still running.
live_finish() { # ID ERR
	if rt kill "$1" KILL 2>> "$2"; then ok "$1/kill-KILL" ""; else fail "$1/kill-KILL" "$(last_err "$2")"; fi
	if wait_status "$1" stopped; then ok "$1/state-stopped" ""; else fail "$1/state-stopped" "status '$(state_field "$1" status)' 10s after kill"; fi
	if rt delete "$1" 2>> "$2"; then ok "$1/delete" ""; else fail "$1/delete" "$(last_err "$2")"; fi
}

# One container, memory = memory+swap = 32 MiB, with an `events --interval 1s` stream running from
# the start: exec (its cgroup, inside and out; its exit code; --detach --pid-file; --process), an
# exec'd dd with a 64 MiB buffer OOM-killed and reported as an `oom` event, pause and resume
# (cgroup.freeze, cgroup.events) with exec refused while paused, kill --all of a paused container;
# the stream ends when the container is deleted.
live_exec_oom_pause() { # ID CGDIR INITPID ERR
	local id=$1 cgdir=$2 init=$3 err=$4 ev=/tmp/$1.events evpid i fails_before=$NFAIL
	timeout -s KILL 90 "$RUNTIME" --root "$ROOT" events --interval 1s "$id" > "$ev" 2>> "$err" < /dev/null &
	evpid=$!
	live_exec "$id" "$cgdir" "$init" "$err"
	live_oom "$id" "$cgdir" "$err" "$ev"
	live_pause "$id" "$cgdir" "$init" "$err"
	i=0
	while [ $i -lt 50 ] && alive $evpid; do sleep 0.1; i=$((i + 1)); done
	if alive $evpid; then
		fail "$id/events-ends-after-delete" "still running 5s after delete"
		kill -KILL $evpid
	fi
	wait $evpid
	i=$?
	[ $i != 137 ] && expect_eq "$id/events-ends-after-delete" 0 "$i"
	[ $NFAIL -gt "$fails_before" ] && dump "$id events" "$ev"
	return 0
}

live_exec() { # ID CGDIR INITPID ERR
	local id=$1 cgdir=$2 init=$3 err=$4 out rc
	out=$(rt exec "$id" sh -c 'cat /proc/self/cgroup; grep -qx "$$" /sys/fs/cgroup/cgroup.procs && echo in-cgroup.procs; exit 7' 2>> "$err" < /dev/null)
	rc=$?
	expect_eq "$id/exec-exit-code" 7 "$rc"
	expect_eq "$id/exec/inside-cgroup" "0::/ in-cgroup.procs" "$(printf '%s' "$out" | one_line)"

	rm -f "/tmp/$id.exec.pid"
	if rt exec --detach --pid-file "/tmp/$id.exec.pid" "$id" sleep 100000 > /dev/null 2>> "$err" < /dev/null; then
		ok "$id/exec-detach" ""
	else
		fail "$id/exec-detach" "exit $?: $(last_err "$err")"
	fi
	EXEC_PID=$(cat "/tmp/$id.exec.pid" 2> /dev/null)
	if [ -n "$EXEC_PID" ] && grep -qx "$EXEC_PID" "$cgdir/cgroup.procs"; then
		ok "$id/exec/outside-cgroup.procs" "pid $EXEC_PID in $cgdir/cgroup.procs"
	else
		fail "$id/exec/outside-cgroup.procs" "pid-file '$EXEC_PID', cgroup.procs: $(one_line < "$cgdir/cgroup.procs")"
	fi
	expect_eq "$id/exec/outside-cgroup" "$(cgroup_of "$init")" "$(cgroup_of "$EXEC_PID")"
	out=$(rt ps --format json "$id" 2>> "$err")
	if printf '%s' "$out" | grep -Eq "[[,]$EXEC_PID[],]"; then ok "$id/ps-lists-exec" "$out"; else fail "$id/ps-lists-exec" "pid $EXEC_PID not in '$out'"; fi

	printf '%s' '{"args":["sh","-c","echo $MARK; pwd; exit 3"],"env":["PATH=/bin","MARK=from-process-file"],"cwd":"/tmp","user":{"uid":0,"gid":0},"terminal":false}' > "/tmp/$id.process.json"
	out=$(rt exec --process "/tmp/$id.process.json" "$id" 2>> "$err" < /dev/null)
	rc=$?
	expect_eq "$id/exec-process-file-exit-code" 3 "$rc"
	expect_eq "$id/exec-process-file-output" "from-process-file /tmp" "$(printf '%s' "$out" | one_line)"
}

live_oom() { # ID CGDIR ERR EVENTS-FILE
	local id=$1 cgdir=$2 err=$3 ev=$4 i out rc line kills v
	i=0
	while [ $i -lt 100 ] && ! grep -q . "$ev"; do sleep 0.1; i=$((i + 1)); done
	line=$(head -n 1 "$ev")
	expect_eq "$id/events-first-is-stats" "stats $id" "$(json_get "$line" type) $(json_get "$line" id)"
	expect_eq "$id/events-stats/memory.usage.limit" $((32 << 20)) "$(json_get "$line" data.memory.usage.limit)"
	# memory+swap, as on v1 (memory.swap.max is 0 here).
	expect_eq "$id/events-stats/memory.swap.limit" $((32 << 20)) "$(json_get "$line" data.memory.swap.limit)"
	# No pids limit: runc leaves the field out (0, omitempty); 0 written out means the same.
	v=$(json_get "$line" data.pids.limit)
	expect_eq "$id/events-stats/pids.limit-none" 0 "${v:-0}"

	out=$(rt exec "$id" dd if=/dev/zero of=/dev/null bs=64M count=1 2>&1 < /dev/null)
	rc=$?
	if [ $rc = 137 ]; then ok "$id/exec-dd-oom-killed" "exit 137"; else fail "$id/exec-dd-oom-killed" "want exit 137 (SIGKILL) got $rc: $(printf '%s' "$out" | one_line | cut -c1-300)"; fi
	i=0
	while [ $i -lt 100 ] && ! grep -q '"type": *"oom"' "$ev"; do sleep 0.1; i=$((i + 1)); done
	line=$(grep '"type": *"oom"' "$ev" | head -n 1)
	expect_eq "$id/events-oom" "oom $id" "$(json_get "$line" type) $(json_get "$line" id)"
	kills=$(sed -n 's/^oom_kill //p' "$cgdir/memory.events")
	expect_positive "$id/outside/memory.events-oom_kill" "$kills"
	out=$(rt exec "$id" sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events 2>&1 < /dev/null)
	expect_eq "$id/inside/memory.events-oom_kill" "$kills" "$out"
	expect_eq "$id/state-running-after-oom" running "$(state_field "$id" status)"
}

live_pause() { # ID CGDIR INITPID ERR
	local id=$1 cgdir=$2 init=$3 err=$4 out rc n e
	# pause: frozen by the time the command returns.
	if rt pause "$id" 2>> "$err"; then ok "$id/pause" ""; else fail "$id/pause" "$(last_err "$err")"; fi
	expect_eq "$id/state-paused" paused "$(state_field "$id" status)"
	expect_eq "$id/paused/cgroup.freeze" 1 "$(cat "$cgdir/cgroup.freeze")"
	expect_eq "$id/paused/cgroup.events" "populated 1 frozen 1" "$(one_line < "$cgdir/cgroup.events")"
	n=$(wc -l < "$cgdir/cgroup.procs")
	out=$(rt exec "$id" true 2>&1 < /dev/null)
	rc=$?
	e=$(printf '%s' "$out" | tail -n 1 | cut -c1-300)
	if [ $rc -ne 0 ] && printf '%s' "$out" | grep -q paused; then
		ok "$id/exec-paused-refused" "exit $rc: $e"
	else
		fail "$id/exec-paused-refused" "want a failure naming 'paused' got exit $rc: $e"
	fi
	expect_eq "$id/exec-paused-no-new-process" "$n" "$(wc -l < "$cgdir/cgroup.procs")"
	expect_eq "$id/paused/still-frozen" "1 populated 1 frozen 1" "$(cat "$cgdir/cgroup.freeze" "$cgdir/cgroup.events" | one_line)"

	if rt resume "$id" 2>> "$err"; then ok "$id/resume" ""; else fail "$id/resume" "$(last_err "$err")"; fi
	expect_eq "$id/state-resumed" running "$(state_field "$id" status)"
	expect_eq "$id/resumed/cgroup.freeze" 0 "$(cat "$cgdir/cgroup.freeze")"
	expect_eq "$id/resumed/cgroup.events" "populated 1 frozen 0" "$(one_line < "$cgdir/cgroup.events")"
	out=$(rt exec "$id" cat /sys/fs/cgroup/cgroup.freeze /sys/fs/cgroup/cgroup.events 2>> "$err" < /dev/null)
	expect_eq "$id/resumed/inside-cgroup.freeze-events" "0 populated 1 frozen 0" "$(printf '%s' "$out" | one_line)"
	if alive "$EXEC_PID"; then ok "$id/resumed/exec-process-alive" "$EXEC_PID"; else fail "$id/resumed/exec-process-alive" "exec'd pid $EXEC_PID is gone"; fi

	# kill --all reaches every process of a paused container.
	if rt pause "$id" 2>> "$err"; then ok "$id/pause-again" ""; else fail "$id/pause-again" "$(last_err "$err")"; fi
	if rt kill --all "$id" KILL 2>> "$err"; then ok "$id/kill-all-paused" ""; else fail "$id/kill-all-paused" "$(last_err "$err")"; fi
	if wait_status "$id" stopped; then ok "$id/state-stopped" ""; else fail "$id/state-stopped" "status '$(state_field "$id" status)' 10s after kill --all"; fi
	wait_unpopulated "$cgdir" 50
	expect_eq "$id/killed/cgroup.procs-empty" "" "$(one_line < "$cgdir/cgroup.procs")"
	if alive "$init" || alive "$EXEC_PID"; then fail "$id/killed/processes-gone" "init $init or exec'd $EXEC_PID still alive"; else ok "$id/killed/processes-gone" "init $init, exec'd $EXEC_PID"; fi
	out=$(rt exec "$id" true 2>&1 < /dev/null)
	rc=$?
	if [ $rc -ne 0 ]; then ok "$id/exec-stopped-refused" "exit $rc: $(printf '%s' "$out" | tail -n 1 | cut -c1-200)"; else fail "$id/exec-stopped-refused" "exec into a stopped container succeeded"; fi
	if rt delete "$id" 2>> "$err"; then ok "$id/delete" ""; else fail "$id/delete" "$(last_err "$err")"; fi
}

# `events --stats` against the cgroup files (runc's format: memory.usage is memory.current and
# memory.max, memory.swap is memory+swap as on v1, cpu.usage.total is cpu.stat usage_usec in ns).
check_stats() { # ID CGDIR LABEL
	local id=$1 cgdir=$2 l=$1/stats-$3 json total usec mem swap
	local fails_before=$NFAIL
	json=$(rt events --stats "$id" 2> "/tmp/$id.e" < /dev/null) || fail "$l" "exit $?: $(last_err "/tmp/$id.e")"
	expect_eq "$l/type" stats "$(json_get "$json" type)"
	expect_eq "$l/id" "$id" "$(json_get "$json" id)"
	expect_positive "$l/memory.usage.usage" "$(json_get "$json" data.memory.usage.usage)"
	mem=$(cat "$cgdir/memory.max")
	swap=$(cat "$cgdir/memory.swap.max")
	expect_eq "$l/memory.usage.limit" "$mem" "$(json_get "$json" data.memory.usage.limit)"
	expect_eq "$l/memory.swap.limit" "$((mem + swap))" "$(json_get "$json" data.memory.swap.limit)"
	expect_eq "$l/pids.current" "$(cat "$cgdir/pids.current")" "$(json_get "$json" data.pids.current)"
	expect_eq "$l/pids.limit" "$(cat "$cgdir/pids.max")" "$(json_get "$json" data.pids.limit)"
	total=$(json_get "$json" data.cpu.usage.total)
	expect_positive "$l/cpu.usage.total" "$total"
	usec=$(sed -n 's/^usage_usec //p' "$cgdir/cpu.stat")
	if [ -n "$total" ] && [ $((total % 1000)) = 0 ] && [ $((total / 1000)) -le "$usec" ]; then
		ok "$l/cpu.usage.total-from-cpu.stat" "$total ns, usage_usec now $usec"
	else
		fail "$l/cpu.usage.total-from-cpu.stat" "want usage_usec (now $usec) x 1000 got '$total'"
	fi
	expect_eq "$l/hugetlb.2MB.failcnt" 0 "$(json_get "$json" data.hugetlb.2MB.failcnt)"
	[ $NFAIL -gt "$fails_before" ] && echo "SKIFF-LOG $l: $(printf '%s' "$json" | one_line | cut -c1-2000)"
	return 0
}

# What the eBPF device program of the stats-update case allows, as an exec'd process finds it (one
# line, after whatever the exec'd script printed before).
DEVICES_PROBE='
o() { ( exec 3<"$1" ) 2>&1 | sed "s/.*: //"; }
w() { ( exec 3>"$1" ) 2>&1 | sed "s/.*: //"; }
rm -f /tmp/sda /tmp/kmsg
mknod /tmp/sda b 8 0 && mknod /tmp/kmsg c 1 11 || exit 1
echo "DEVICES null-w=$(w /dev/null) sda-r=$(o /tmp/sda) sda-w=$(w /tmp/sda) kmsg-r=$(o /tmp/kmsg) kmsg-w=$(w /tmp/kmsg)"'
DEVICES_WANT="null-w= sda-r=Operation not permitted sda-w=Operation not permitted kmsg-r= kmsg-w=Operation not permitted"

# One exec after update N: the `after` files as the container reads them, and the device program
# still in force.
check_after_inside() { # ID N AFTER-FILE
	local out name want names
	names=$(cut -d' ' -f1 "$3" | one_line)
	# unquoted: one argument per file name
	out=$(rt exec "$1" sh -c 'for f; do printf "%s %s\n" "$f" "$(tr "\n" " " < /sys/fs/cgroup/$f | sed "s/ *$//")"; done'"$DEVICES_PROBE" probe $names 2>&1 < /dev/null)
	while read -r name want; do
		expect_eq "$1/update$2/inside/$name" "$want" "$(printf '%s\n' "$out" | sed -n "s|^$name ||p")"
	done < "$3"
	expect_eq "$1/update$2/devices" "$DEVICES_WANT" "$(printf '%s\n' "$out" | sed -n 's/^DEVICES //p')"
}

# events --stats, then every `update` of the expect file with its `after` files from outside and
# inside and the device program tried after each, then events --stats again.
live_stats_update() { # ID CGDIR INITPID ERR
	local id=$1 cgdir=$2 err=$4 key rest n=0 after=/tmp/$1.after kind args name want
	check_stats "$id" "$cgdir" created
	while read -r key rest <&3; do
		case "$key" in
		update)
			[ $n -gt 0 ] && check_after_inside "$id" $n "$after"
			n=$((n + 1))
			: > "$after"
			kind=${rest%% *}
			args=${rest#* }
			if [ "$kind" = resources ]; then
				printf '%s\n' "$args" > "/tmp/$id.resources$n.json"
				set -- --resources "/tmp/$id.resources$n.json"
			else
				# unquoted: the flags, one word each
				set -- $args
			fi
			if rt update "$@" "$id" 2> "/tmp/$id.e" < /dev/null; then
				ok "$id/update$n" "$rest"
			else
				fail "$id/update$n" "update $* $id: exit $?: $(last_err "/tmp/$id.e")"
			fi
			;;
		after)
			name=${rest%% *}
			want=${rest#* }
			expect_eq "$id/update$n/outside/$name" "$want" "$(cat "$cgdir/$name" 2>&1 | one_line)"
			printf '%s %s\n' "$name" "$want" >> "$after"
			;;
		esac
	done 3< "/skiff/cases/$id/expect"
	[ $n -gt 0 ] && check_after_inside "$id" $n "$after"
	check_stats "$id" "$cgdir" updated
	live_finish "$id" "$err"
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

# A loop spreading processes that ignore SIGTERM (`sleep` inherits the ignored signal), in a
# container without a pid namespace of its own: kill --all TERM stops the init and none of them,
# kill --all KILL (cgroup.kill) all of them, however many the loop made meanwhile.
live_fork_loop() { # ID CGDIR INITPID ERR
	local id=$1 cgdir=$2 init=$3 err=$4 n
	if rt exec --detach "$id" sh -c "trap '' TERM; while :; do sleep 1000 & done" > /dev/null 2>> "$err" < /dev/null; then
		ok "$id/exec-loop" ""
	else
		fail "$id/exec-loop" "$(last_err "$err")"
	fi
	n=0
	while [ $n -lt 100 ] && [ "$(wc -l < "$cgdir/cgroup.procs")" -lt 10 ]; do sleep 0.1; n=$((n + 1)); done
	n=$(wc -l < "$cgdir/cgroup.procs")
	if [ "$n" -ge 10 ]; then ok "$id/looping" "$n processes"; else fail "$id/looping" "$n processes in 10s"; fi
	if rt kill --all "$id" TERM 2>> "$err"; then ok "$id/kill-all-TERM" ""; else fail "$id/kill-all-TERM" "$(last_err "$err")"; fi
	if wait_status "$id" stopped; then ok "$id/TERM/init-stopped" ""; else fail "$id/TERM/init-stopped" "status '$(state_field "$id" status)' 10s after kill --all TERM"; fi
	n=$(wc -l < "$cgdir/cgroup.procs")
	if [ "$n" -gt 0 ]; then ok "$id/TERM/ignored-by-the-rest" "$n processes"; else fail "$id/TERM/ignored-by-the-rest" "cgroup.procs empty: they ignore TERM"; fi
	if rt kill --all "$id" KILL 2>> "$err"; then ok "$id/kill-all-KILL" ""; else fail "$id/kill-all-KILL" "$(last_err "$err")"; fi
	# Dozens of exits may take a while under emulation: up to 30 s.
	wait_unpopulated "$cgdir" 300
	expect_eq "$id/KILL/cgroup.procs-empty" "" "$(one_line < "$cgdir/cgroup.procs")"
	for n in $(head -n 3 "$cgdir/cgroup.procs"); do
		echo "SKIFF-LOG $id survivor $n: $(grep -E '^(Name|State|PPid|SigPnd|SigBlk|SigIgn)' "/proc/$n/status" | one_line)"
	done
	if alive "$init"; then fail "$id/KILL/init-gone" "init $init alive"; else ok "$id/KILL/init-gone" "$init"; fi
	if rt delete "$id" 2>> "$err"; then ok "$id/delete" ""; else fail "$id/delete" "$(last_err "$err")"; fi
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

#!/bin/sh
# hot-text.sh [BINARY] — regenerates runtime/hot-text.ld (run as root).
#
# skiff-runc's peak RSS is mostly its own code: each page of it touched maps the 64 KiB around
# it (the kernel's fault-around), and the ~270 KB of functions a container start runs lie
# scattered over the whole 2 MB text. runtime/build.rs links with this linker script, which
# puts these functions first (output section .text.hot, before .text), in the order they are
# first called, so that they share a few pages. This script traces which functions run
# (tools/fn-trace.c, ptrace breakpoints on every function entry) for run,
# create/start/state/kill/delete and exec of a busybox container.
# Every function has its own input section, .text.NAME, or .text.unlikely.NAME when cold; the
# ThinLTO suffix .llvm.N of NAME changes with any edit of its module: hence .text*.NAME*.
# Names that no longer exist match nothing: rerun this after larger changes.
#
# BINARY: a release build, default target/release/skiff-runc (cargo build --release -p
# skiff-runtime). Needs cc, nm and busybox-static.
set -eu
cd "$(dirname "$0")/../.."
BIN=$(readlink -f "${1:-target/release/skiff-runc}")
OUT=runtime/hot-text.ld
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "/bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cc -O2 -o "$WORK/fn-trace" runtime/tools/fn-trace.c
nm --defined-only "$BIN" | awk '$2 ~ /^[tTwW]$/ {print $1, $3}' | sort >"$WORK/symbols"

mkdir -p "$WORK/bundle/rootfs/bin" "$WORK/bundle/rootfs/proc" "$WORK/bundle/rootfs/dev"
cp /bin/busybox "$WORK/bundle/rootfs/bin/"
for applet in true sleep sh; do ln -s busybox "$WORK/bundle/rootfs/bin/$applet"; done
"$BIN" spec --bundle "$WORK/bundle"
# process.args on one line, then set_args replaces it.
sed -i -e 's/"terminal": true/"terminal": false/' -e '/"args": \[/,/\]/c\    "args": [],' \
  "$WORK/bundle/config.json"
set_args() { sed -i -e "s|\"args\": \[.*\],|\"args\": [$1],|" "$WORK/bundle/config.json"; }

# trace N COMMAND...: the functions skiff-runc COMMAND runs, to $WORK/trace.N
trace() {
  n=$1
  shift
  timeout 60 "$WORK/fn-trace" "$WORK/symbols" "$WORK/trace.$n" "$BIN" -- "$BIN" --root "$WORK/state" "$@" >/dev/null
}
set_args '"/bin/true"'
trace 1 run --bundle "$WORK/bundle" order-run
set_args '"/bin/sleep", "100"'
# create's init waits for start under create's tracer, which ends when it execs sleep.
trace 2 create --bundle "$WORK/bundle" order-create &
until "$BIN" --root "$WORK/state" state order-create 2>/dev/null | grep -q '"created"'; do
  sleep 0.1
done
trace 3 start order-create
wait
trace 4 state order-create
trace 5 kill order-create KILL
sleep 0.2
trace 6 delete order-create
"$BIN" --root "$WORK/state" run -d --bundle "$WORK/bundle" order-exec
trace 7 exec order-exec /bin/true
trace 8 delete --force order-exec

# First-call order over all traces, each function once with every alias of it (the traces
# name one symbol per address; the section may be named after another).
for i in 1 2 3 4 5 6 7 8; do cat "$WORK/trace.$i"; done | awk '!seen[$0]++' >"$WORK/called"
awk 'NR == FNR { addr[$2] = $1; names[$1] = names[$1] " " $2; next }
     { n = split(names[addr[$1]], a, " "); for (i = 1; i <= n; i++) print a[i] }' \
  "$WORK/symbols" "$WORK/called" | sed 's/\.llvm\.[0-9]*$//' | awk '!seen[$0]++' >"$WORK/order"
{
  echo "/* Made by tools/hot-text.sh: the functions a container start runs, in call order. */"
  echo "SECTIONS {"
  echo "  .text.hot : {"
  sed 's/.*/    *(.text*.&*)/' "$WORK/order"
  echo "  }"
  echo "} INSERT BEFORE .text;"
} >"$OUT"
echo "$OUT: $(wc -l <"$WORK/order") functions"

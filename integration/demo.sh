#!/usr/bin/env bash
# ferry's main job on an embedded default: a busybox-static container that prints a counter,
# run detached, inspected with state/ps/exec, paused and resumed, stopped and deleted.
# (Later issues extend it with checkpoint/restore.) Run as root: `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

FERRY=${FERRY:-$PWD/target/debug/ferry}
RIG=${RIG:-$PWD/target/debug/ferry-rig}
[ "$(id -u)" = 0 ] || { echo "demo: must run as root" >&2; exit 1; }
[ -x "$FERRY" ] || { echo "demo: $FERRY not built (make build)" >&2; exit 1; }

work=$(mktemp -d /tmp/ferry-demo.XXXXXX)
root=$work/state
id=ferry-demo-$$
ferry() { "$FERRY" --root "$root" "$@"; }
if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B= N=; fi
step() { printf '\n%s$ ferry %s%s\n' "$B" "$*" "$N"; ferry "$@"; }
cleanup() {
    ferry delete --force "$id" >/dev/null 2>&1 || true
    for d in /sys/fs/cgroup/*/ferry-it-"$id"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "== bundle: busybox-static rootfs + static workloads, in $work/bundle"
"$RIG" bundle "$work/bundle" --id "$id" -- counter /count 500 >/dev/null

printf '\n%s$ ferry run -d --bundle %s %s > counter.log%s\n' "$B" "$work/bundle" "$id" "$N"
ferry run -d --bundle "$work/bundle" "$id" >"$work/counter.log" 2>&1 </dev/null
sleep 1.6
echo "-- counter.log so far:"; cat "$work/counter.log"

step state "$id"; echo
step ps "$id"
step exec "$id" sh -c 'echo "inside: hostname=$(hostname) pid1=$(cat /proc/1/comm) count=$(cat /count)"'
step list

step pause "$id"
a=$(cat "$work/bundle/rootfs/count"); sleep 1.2; b=$(cat "$work/bundle/rootfs/count")
echo "paused: counter $a -> $b (frozen)"
[ "$a" = "$b" ] || { echo "demo: the counter moved while paused" >&2; exit 1; }
step resume "$id"
sleep 1.2; c=$(cat "$work/bundle/rootfs/count")
echo "resumed: counter $b -> $c"
[ "$c" -gt "$b" ] || { echo "demo: the counter did not continue after resume" >&2; exit 1; }

step kill "$id" TERM
for _ in $(seq 50); do
    ferry state "$id" | grep -q '"stopped"' && break
    sleep 0.1
done
step state "$id"; echo
echo "-- counter.log tail:"; tail -n 3 "$work/counter.log"
step delete "$id"
echo
echo "demo: ok"

#!/usr/bin/env bash
# ferry's main job on an embedded default: a busybox-static container that prints a counter,
# run detached, inspected with state/ps/exec, paused and resumed, stopped and deleted; then the
# engine on a plain process: the same counter checkpointed with `ferry criu dump`, inspected with
# `ferry image show`, restored with `ferry criu restore` and shown carrying on from where it
# stopped; and a whole container checkpointed with `ferry checkpoint` and brought back with
# `ferry restore`, counting on. Run as root: `make demo`.
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
hostpid=
cid=ferry-demo-cr-$$
cleanup() {
    [ -n "$hostpid" ] && kill -KILL "$hostpid" 2>/dev/null || true
    ferry delete --force "$id" >/dev/null 2>&1 || true
    ferry delete --force "$cid" >/dev/null 2>&1 || true
    for d in /sys/fs/cgroup/*/ferry-it-"$cid"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
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
echo "== checkpoint/restore of a process tree with ferry's own engine"
# its own session, as a daemon would be (a job of this shell would need --shell-job); started
# from a subshell so it is nobody's job here: init adopts it, as it adopts the restored one.
( setsid "$work/bundle/rootfs/bin/counter" "$work/host-count" 200 </dev/null >/dev/null 2>&1 &
  echo $! >"$work/counter.pid" )
hostpid=$(cat "$work/counter.pid")
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
sleep 1.1
printf '\n%s$ ferry criu dump -t %s -D %s%s\n' "$B" "$hostpid" "$work/images" "$N"
"$FERRY" criu dump -t "$hostpid" -D "$work/images"
at_dump=$(cat "$work/host-count")
alive "$hostpid" && { echo "demo: the dumped process still runs" >&2; exit 1; }
echo "dumped at count $at_dump; the process is gone (pid $hostpid)"
printf '\n%s$ ferry image show %s%s\n' "$B" "$work/images" "$N"
"$FERRY" image show "$work/images" | head -n 25
sleep 1
printf '\n%s$ ferry criu restore -D %s -d --pidfile restored.pid%s\n' "$B" "$work/images" "$N"
"$FERRY" criu restore -D "$work/images" -d --pidfile "$work/restored.pid"
restored=$(cat "$work/restored.pid")
[ "$restored" = "$hostpid" ] || { echo "demo: restored as pid $restored, not $hostpid" >&2; exit 1; }
sleep 1.1
now=$(cat "$work/host-count")
echo "restored as pid $restored: counter $at_dump -> $now"
[ "$now" -gt "$at_dump" ] || { echo "demo: the counter did not carry on" >&2; exit 1; }
kill -TERM "$hostpid"; hostpid=

echo
echo "== checkpoint/restore of a whole container"
"$RIG" bundle "$work/crbundle" --id "$cid" -- counter /count 200 >/dev/null
printf '\n%s$ ferry run -d --bundle %s %s%s\n' "$B" "$work/crbundle" "$cid" "$N"
# stdio /dev/null, as containerd's null IO gives it (caller pipes are not supported yet)
ferry run -d --bundle "$work/crbundle" "$cid" </dev/null >/dev/null 2>&1
sleep 1.1
step checkpoint --image-path "$work/ckpt" "$cid"
at_ckpt=$(cat "$work/crbundle/rootfs/count")
echo "checkpointed at count $at_ckpt"
if ferry state "$cid" >/dev/null 2>&1; then echo "demo: the container still exists" >&2; exit 1; fi
echo "the container is gone: $(ferry state "$cid" 2>&1 | tail -n 1)"
sleep 1
printf '\n%s$ ferry restore -d --image-path %s --bundle %s %s%s\n' "$B" "$work/ckpt" "$work/crbundle" "$cid" "$N"
ferry restore -d --image-path "$work/ckpt" --bundle "$work/crbundle" "$cid" </dev/null >/dev/null 2>&1
sleep 1.1
now=$(cat "$work/crbundle/rootfs/count")
echo "restored: counter $at_ckpt -> $now"
[ "$now" -gt "$at_ckpt" ] || { echo "demo: the restored container did not carry on" >&2; exit 1; }
step ps "$cid"
step delete --force "$cid"
echo
echo "demo: ok"

#!/usr/bin/env bash
# Container checkpoint/restore overhead (issue 7, point 5): what `ferry checkpoint` and
# `ferry restore` cost on top of the engine's own stages.
#
# A container runs memhog (../shared/bench/memhog.c, static) holding MIB MiB of touched
# anonymous memory. Each round: `ferry checkpoint` (images to /dev/shm, so the disk is not
# measured), then `ferry restore -d` of those images under the same id, then `delete --force`.
# Wall time is taken around each command (bash's EPOCHREALTIME: no fork in the measurement).
# The engine's time comes from its logs, which ferry writes at CRIU's -v3 like runc has CRIU
# write them (every line stamped with the time since the log was opened, at the engine's start):
#   checkpoint: dump.log from the start of its first stage to its last stamp (network lock,
#               freeze, namespaces, mounts, cgroups, tree dump, sync, kill, network unlock);
#   restore:    the stages of restore-resources.log (links, hostname, IPC, tmpfs contents,
#               cgroups, filled from outside before the tree) + the finisher's stages in
#               restore.log, which follow one another from the container's start: the init's
#               plan (its images read and files opened; the init's own stage lines fall inside
#               it and are not added again), every task waiting before rt_sigreturn (the tree
#               restored in place), their release, and the network unlock.
# Overhead = wall - engine, per round; printed as median and minimum. Beside the restore's
# figure the bench prints, measured on the machine in the same run, what one cgroup v1 move
# through cgroup.procs costs (integration/workloads/cgattach.c: the kernel's RCU grace period on
# the cgroup threadgroup lock), which every runc or libcontainer container start pays and
# ferry's own restore build avoids (its init joins each v1 hierarchy by writing "0" to `tasks`).
# Everything else — process start, state and config loading, descriptors.json, the
# container's build for a restore (state, cgroups, namespaces, rootfs, mounts, pivot_root), its
# removal after a checkpoint — is the runtime's. Each round checks that memhog verified its
# memory after the restore (pass counter moving, ok=1).
set -euo pipefail
cd "$(dirname "$0")/.."

FERRY=${FERRY:-$PWD/target/release/ferry}
RIG=${RIG:-$PWD/target/debug/ferry-rig}
MEMHOG_SRC=${MEMHOG_SRC:-$PWD/../shared/bench/memhog.c}
N=${N:-9}
MIB=${MIB:-16}
GOAL_MS=15
[ "$(id -u)" = 0 ] || { echo "bench: must run as root" >&2; exit 1; }
[ -x "$FERRY" ] || { echo "bench: $FERRY missing (cargo build --release -p ferry)" >&2; exit 1; }
[ -f "$MEMHOG_SRC" ] || { echo "bench: $MEMHOG_SRC missing (set MEMHOG_SRC)" >&2; exit 1; }

work=$(mktemp -d /tmp/ferry-crbench.XXXXXX)
shm=$(mktemp -d /dev/shm/ferry-crbench.XXXXXX)
root=$work/root
id=crbench-$$
cleanup() {
    "$FERRY" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
    for d in /sys/fs/cgroup/*/ferry-it-"$id"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null || true; done
    rm -rf "$work" "$shm"
}
trap cleanup EXIT

"$RIG" bundle "$work/bundle" --id "$id" -- memhog "$MIB" /tmp/status 200 100 >/dev/null
gcc -O2 -static -o "$work/bundle/rootfs/bin/memhog" "$MEMHOG_SRC"
gcc -O2 -o "$work/cgattach" integration/workloads/cgattach.c
status=$work/bundle/rootfs/tmp/status

us() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
# The engine's span in dump.log, in microseconds: from the start of its first stage (stamp
# minus duration; the log is opened a little earlier, by the runtime) to its last stamp.
dump_span_us() {
    awk 'match($0, /^\([0-9]+\.[0-9]+\)/) {
            s = substr($0, 2, RLENGTH - 2); split(s, p, "."); v = p[1] * 1000000 + p[2];
            if (v > m) m = v
            if (!first && match($0, /\(([0-9.]+) ms\)$/)) {
                first = v - substr($0, RSTART + 1, RLENGTH - 5) * 1000 }
         }
         END { if (m == 0) exit 1; printf "%d\n", m - first }' "$1"
}
# The sum of the "stage NAME: ... (N ms)" durations of a -v3 log whose names match the
# regular expression $2 (default: all), in microseconds.
stage_sum_us() {
    awk -v want="${2:-.}" 'match($0, /\(([0-9.]+) ms\)$/) && / stage / && $0 ~ want {
            s = substr($0, RSTART + 1, RLENGTH - 5); t += s * 1000 }
         END { printf "%d\n", t }' "$1"
}
pass_of() { sed -n 's/.*pass=\([0-9]*\).*ok=1.*/\1/p' "$status" 2>/dev/null || true; }
wait_pass_above() {
    local want=$1 i
    for i in $(seq 500); do
        local p; p=$(pass_of)
        [ -n "$p" ] && [ "$p" -gt "$want" ] && return 0
        grep -q CORRUPT "$status" 2>/dev/null && { echo "bench: memhog: $(cat "$status")" >&2; exit 1; }
        sleep 0.01
    done
    echo "bench: memhog pass stuck at '$(pass_of)' (wanted > $want): $(cat "$status" 2>/dev/null)" >&2
    exit 1
}

ck_wall=(); ck_eng=(); rs_wall=(); rs_eng=()
for i in $(seq "$N"); do
    rm -f "$status"
    "$FERRY" --root "$root" run -d --bundle "$work/bundle" "$id" </dev/null >/dev/null 2>&1
    wait_pass_above 0
    img=$shm/img-$i; ckw=$work/ck-$i; rsw=$work/rs-$i
    t0=$(us)
    "$FERRY" --root "$root" checkpoint --image-path "$img" --work-path "$ckw" "$id" \
        </dev/null >/dev/null 2>"$work/ck-$i.err" || { cat "$work/ck-$i.err" >&2; exit 1; }
    t1=$(us)
    ck_wall+=($((t1 - t0))); ck_eng+=("$(dump_span_us "$ckw/dump.log")")
    p=$(pass_of)
    t0=$(us)
    "$FERRY" --root "$root" restore -d --image-path "$img" --work-path "$rsw" \
        --bundle "$work/bundle" "$id" </dev/null >/dev/null 2>"$work/rs-$i.err" \
        || { cat "$work/rs-$i.err" "$rsw"/*.log >&2; exit 1; }
    t1=$(us)
    rs_wall+=($((t1 - t0)))
    rs_eng+=($(( $(stage_sum_us "$rsw/restore-resources.log") + $(stage_sum_us "$rsw/restore.log" 'in place|network unlock') )))
    # The restored memhog verifies its whole area every pass: a moving pass counter with ok=1.
    wait_pass_above "${p:-0}"
    "$FERRY" --root "$root" delete --force "$id" >/dev/null 2>&1
    rm -rf "$img"
done

# median and min (ms) of a list of microsecond values
summ() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %6.1f ms  min %6.1f ms", a[int((NR+1)/2)]/1000, a[1]/1000}'; }
diffs() { local -n w=$1 e=$2; local k; for k in "${!w[@]}"; do echo $(( w[k] - e[k] )); done; }
verdict() { awk -v m="$1" -v g="$GOAL_MS" 'BEGIN { print (m / 1000 <= g) ? "goal met" : "goal NOT met" }'; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The cgroup move on this machine, spaced like the restores above (about 200 ms apart), in a
# v1 hierarchy where the containers' cgroups are (none: cgroup v2 only, printed as 0).
cg_hier=$(for h in pids memory cpu; do [ -d /sys/fs/cgroup/$h ] && [ ! -e /sys/fs/cgroup/$h/cgroup.controllers ] && { echo /sys/fs/cgroup/$h; break; }; done)
if [ -n "$cg_hier" ]; then read -r cg_med cg_min < <("$work/cgattach" "$cg_hier" "$N" 200); else cg_med=0 cg_min=0; fi
mapfile -t ck_ov < <(diffs ck_wall ck_eng)
mapfile -t rs_ov < <(diffs rs_wall rs_eng)

echo "container checkpoint/restore overhead (issue 7): memhog $MIB MiB, images in /dev/shm,"
echo "$N rounds, $(basename "$(dirname "$FERRY")") build ($FERRY):"
printf '  checkpoint wall:     %s\n' "$(summ "${ck_wall[@]}")"
printf '             engine:   %s   (dump.log)\n' "$(summ "${ck_eng[@]}")"
printf '             runtime:  %s   goal <= %d ms: %s (runc adds ~70 ms to CRIU)\n' \
    "$(summ "${ck_ov[@]}")" "$GOAL_MS" "$(verdict "$(med "${ck_ov[@]}")")"
printf '  restore    wall:     %s\n' "$(summ "${rs_wall[@]}")"
printf '             engine:   %s   (restore-resources.log + restore.log)\n' "$(summ "${rs_eng[@]}")"
printf '             runtime:  %s   goal <= %d ms: %s (runc adds ~100 ms to CRIU)\n' \
    "$(summ "${rs_ov[@]}")" "$GOAL_MS" "$(verdict "$(med "${rs_ov[@]}")")"
printf '             (a cgroup v1 move through cgroup.procs, which runc and libcontainer pay on every start and\n'
printf '              ferry'"'"'s restore does not: median %.1f ms, min %.1f ms on this machine now%s)\n' \
    "$(awk -v v="$cg_med" 'BEGIN{print v/1000}')" "$(awk -v v="$cg_min" 'BEGIN{print v/1000}')" \
    "${cg_hier:+, $cg_hier}"

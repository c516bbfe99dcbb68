#!/usr/bin/env bash
# `make bench`: benchmarks of what exists today.
#
# - container lifecycle latency: `run -d` until the runtime returns, then `delete --force`,
#   for ferry and for Debian's runc, interleaved (so both see the same machine state), minimum
#   and median over N rounds.
# - engine: dump and restore throughput of memhog (../shared/bench/memhog.c) holding
#   16/256/1024/4096 MiB, images in /dev/shm, with ratios to the machine's own splice and read
#   bandwidth measured in the same run (cargo bench -p ferry-engine --bench dump|restore).
# - container checkpoint/restore overhead: what `ferry checkpoint`/`ferry restore` add to the
#   engine's own stages for a 16 MiB memhog container (integration/bench-cr-overhead.sh, release
#   build of ferry, median of 9 rounds; goal <= 15 ms each).
set -euo pipefail
cd "$(dirname "$0")/.."

FERRY=${FERRY:-$PWD/target/debug/ferry}
RIG=${RIG:-$PWD/target/debug/ferry-rig}
RUNC=${RUNC:-$(command -v runc || echo /usr/sbin/runc)}
N=${N:-10}
[ "$(id -u)" = 0 ] || { echo "bench: must run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/ferry-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$RIG" bundle "$work/bundle" --id bench-$$ -- sleep 1000 >/dev/null

now_us() { echo $(( $(date +%s%N) / 1000 )); }
declare -A runs
for i in $(seq "$N"); do
    for rt in ferry runc; do
        bin=$FERRY; [ "$rt" = runc ] && bin=$RUNC
        root=$work/root-$rt; id=bench-$rt-$i
        t0=$(now_us)
        "$bin" --root "$root" run -d --bundle "$work/bundle" "$id" >/dev/null 2>&1 </dev/null
        t1=$(now_us)
        "$bin" --root "$root" delete --force "$id" >/dev/null 2>&1
        t2=$(now_us)
        runs[$rt]+="$((t1 - t0)) $((t2 - t1))"$'\n'
    done
done
for d in /sys/fs/cgroup/*/ferry-it-bench-$$; do [ -d "$d" ] && rmdir "$d" 2>/dev/null || true; done

stats() { sort -n | awk '{a[NR]=$1} END {printf "min %6.1f ms  median %6.1f ms", a[1]/1000, a[int((NR+1)/2)]/1000}'; }
echo "container lifecycle latency, $N interleaved rounds (busybox bundle, sleep 1000):"
for rt in ferry runc; do
    printf '  %-5s run -d:          %s\n' "$rt" "$(printf '%s' "${runs[$rt]}" | awk '{print $1}' | stats)"
    printf '  %-5s delete --force:  %s\n' "$rt" "$(printf '%s' "${runs[$rt]}" | awk '{print $2}' | stats)"
done
echo
echo "engine: dump (cargo bench -p ferry-engine --bench dump)"
cargo bench -p ferry-engine --bench dump
echo
echo "engine: restore (cargo bench -p ferry-engine --bench restore)"
cargo bench -p ferry-engine --bench restore
echo
echo "container checkpoint/restore overhead (cargo build --release -p ferry, integration/bench-cr-overhead.sh)"
cargo build --release -p ferry --bins
RIG="$RIG" integration/bench-cr-overhead.sh

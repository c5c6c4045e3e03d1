#!/usr/bin/env bash
# bench/dedup-rounds.sh: the dedupdisk's unique writes on one fresh store,
# round by round, with where the CPU went. For A/B runs of a change (run it
# on two trees, alternating), where bench/run.sh's medians are too coarse.
#
#   bench/dedup-rounds.sh [ROUNDS]        (default 3)
#   TREE=/path/to/other/checkout DDARGS="memtable=16M" bench/dedup-rounds.sh
#   JITLOG=jit.log bench/dedup-rounds.sh 8   (LuaJIT's trace log; per round,
#                                             traces made and flushes so far)
#
# Each round: 5 s of 1 MiB sequential unique writes (qd8, fresh random
# buffers) over [768M, 1G) of a 1G store, then 5 s of 4K random unique
# writes (qd32) over the same range, as bench/run.sh's dedup group does.
# Round 1's 1 MiB writes fill fresh ids; later rounds rewrite blocks that
# the 4K writes scattered ("aged"). Per round it prints MiB/s, the server's
# CPU ticks (1/100 s) in the 1 MiB part, of them its Lua thread's, and the
# whole machine's idle share; then the 4K IOPS.
set -u
TREE=${TREE:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$TREE" || exit 1
dir=$(mktemp -d /var/tmp/usbd-rounds.XXXXXX)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
sock=$dir/s.sock
uri="nbd+unix:///?socket=$sock"
# shellcheck disable=SC2086  # DDARGS: more device arguments, split
./usbd-lua ${JITLOG:+--jit-log "$JITLOG"} devices/dedupdisk.lua -U "$sock" dir="$dir/store" size=1G ${DDARGS:-} \
    >"$dir/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do nbdinfo --can connect "$uri" 2>/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14 + $15}' "$1"; }
idle() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
fio_terse() { # RW BS QD: prints KiB/s and IOPS of the write side
    fio --name=r --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" --iodepth="$3" --refill_buffers \
        --randrepeat=0 --offset=768M --size=256M --runtime=5 --time_based=1 \
        --output-format=terse --terse-version=3 | awk -F';' 'NF > 40 {print $48, $49}'
}
for r in $(seq "${1:-3}"); do
    read -r i0 a0 < <(idle)
    t0=$(ticks /proc/$pid/stat); m0=$(ticks /proc/$pid/task/$pid/stat)
    read -r kib _ < <(fio_terse write 1M 8)
    read -r i1 a1 < <(idle)
    t1=$(ticks /proc/$pid/stat); m1=$(ticks /proc/$pid/task/$pid/stat)
    read -r _ iops < <(fio_terse randwrite 4k 32)
    jit=
    if [[ ${JITLOG:-} ]]; then
        jit=$(printf ' | traces %d, flushes %d' "$(grep -c '^\[TRACE *[0-9]' "$JITLOG")" "$(grep -c '^\[TRACE flush' "$JITLOG")")
    fi
    printf 'round %d: 1M %d MiB/s, server %d ticks (Lua thread %d), idle %d%% | 4K %d IOPS%s\n' \
        "$r" $((kib / 1024)) $((t1 - t0)) $((m1 - m0)) $((100 * (i1 - i0) / (a1 - a0))) "$iops" "$jit"
done

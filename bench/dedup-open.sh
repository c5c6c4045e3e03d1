#!/usr/bin/env bash
# bench/dedup-open.sh: how long the dedupdisk takes to open a store of
# SIZE of unique data after an unclean shutdown (kill -9 while writing,
# nothing flushed: the journal holds everything written since the last
# checkpoint), against opening it after a clean stop.
#
#   bench/dedup-open.sh [SIZE (8G)] [DIR (the temp dir)]
#
# Prints, for each case, the seconds from start to the first NBD
# connection accepted, and the server's recovery lines.
set -u
cd "$(dirname "$0")/.." || exit 1
SIZE=${1:-8G}
WORK=$(mktemp -d "${2:-${TMPDIR:-/tmp}}/usbd-open.XXXXXX")
trap 'kill -9 $PID 2>/dev/null; rm -rf "$WORK"' EXIT
STORE=$WORK/store SOCK=$WORK/s.sock URI="nbd+unix:///?socket=$WORK/s.sock"
bytes=$(numfmt --from=iec "$SIZE")

start() { # LOG: start the server; T: the seconds until it accepts a client
    local t0 t1
    rm -f "$SOCK"
    t0=$(date +%s.%N)
    ./usbd-lua -U "$SOCK" devices/dedupdisk.lua dir="$STORE" size=$((bytes + (1 << 30))) >"$1" 2>&1 &
    PID=$!
    until nbdinfo --can connect "$URI" 2>/dev/null; do
        kill -0 $PID 2>/dev/null || { echo "server died: $(cat "$1")"; exit 1; }
        sleep 0.05
    done
    t1=$(date +%s.%N)
    T=$(echo "$t1 - $t0" | bc)
}

start "$WORK/first.log"
echo "writing $SIZE of unique data (1 MiB, qd8), no flush"
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --refill_buffers \
    --size="$bytes" --fsync=0 --end_fsync=0 --output=/dev/null
kill -9 $PID; wait $PID 2>/dev/null
sync   # (the page cache to the disk: the check reads what kill -9 left)
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
start "$WORK/unclean.log"
echo "open after kill -9: $T s"
sed 's/^/  /' "$WORK/unclean.log" | grep -v "^  nbd+unix"
kill $PID; wait $PID 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
start "$WORK/clean.log"
echo "open after a clean stop: $T s"
kill $PID; wait $PID 2>/dev/null

#!/usr/bin/env bash
# Requests overlap: while one waits for a job (here a 50 ms sleep standing in
# for a slow disk), the server goes on with the others. Structural, not
# timed: examples/slowdisk.lua logs the most jobs that ran at once.
. "$(dirname "$0")/../lib.sh"

peak() { sed -n 's/.*at most \([0-9]*\) at once.*/\1/p' "$SERVER_LOG" | tail -n 1; }

# One request at a time: never more than one wait.
start_server seq -v examples/slowdisk.lua latency=50 -- ramdisk size=16M || { not_ok "server starts"; finish; exit 1; }
out=$(qemu-io -f raw "$URI" -c 'read 0 4k' -c 'write -P 1 4k 4k' -c 'read -P 1 4k 4k' -c 'read 8k 4k' 2>&1)
check "queue depth 1: the requests succeed" bash -c '[ $(grep -c "^read\|^wrote" <<<"$1") = 4 ]' _ "$out"
stop_server
p=$(peak)
check "queue depth 1: at most one job at a time (peak ${p:-none})" test "${p:-0}" = 1

# Sixteen in flight: the waits run side by side.
start_server par -v examples/slowdisk.lua latency=50 -- ramdisk size=16M || { not_ok "server starts"; finish; exit 1; }
fio --name=overlap --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=16 \
    --size=16M --number_ios=64 --output="$SCRATCH/fio.out" >/dev/null 2>&1
check "queue depth 16: fio's reads succeed" grep -q 'err= 0' "$SCRATCH/fio.out"
stop_server
p=$(peak)
check "queue depth 16: jobs overlap (peak ${p:-none} > 1)" test "${p:-0}" -gt 1

# --threads bounds how many blocking calls run at once.
start_server threads -v --threads 3 examples/slowdisk.lua latency=50 -- ramdisk size=16M || { not_ok "server starts"; finish; exit 1; }
fio --name=overlap --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=16 \
    --size=16M --number_ios=64 --output="$SCRATCH/fio3.out" >/dev/null 2>&1
check "--threads 3: fio's reads succeed" grep -q 'err= 0' "$SCRATCH/fio3.out"
stop_server
p=$(peak)
check "--threads 3: at most 3 jobs at once (peak ${p:-none})" test "${p:-0}" = 3

finish

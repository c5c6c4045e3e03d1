#!/usr/bin/env bash
# devices/dedupdisk.lua with real clients (qemu-io, nbdcopy, nbdinfo, fio):
# dedup of a copy, reuse of trimmed space, a 1 GiB trim's time, restarts and
# kill -9 (after a flush, and in the middle of unflushed writes), the store
# check (tools/dedup-fsck.lua) and --check.
. "$(dirname "$0")/../lib.sh"

STORE="$SCRATCH/store"
FSCK=(luajit "$TOP/tools/dedup-fsck.lua")
MiB=$((1 << 20))

start() { start_server dedup "$TOP/devices/dedupdisk.lua" dir="$STORE" "$@"; }
qio() { qemu-io -f raw "$URI" "$@" >"$SCRATCH/qio.log" 2>&1 || { cat "$SCRATCH/qio.log" | sed 's/^/# /'; return 1; }; }
# Bytes of the store: the block file and RocksDB's files (apparent: RocksDB
# preallocates its log).
store_bytes() { du -sb "$STORE" | cut -f1; }
# Bytes at [off, off+len) of the export, into a file.
fetch() { nbdcopy "$URI" "$SCRATCH/all.img" && dd if="$SCRATCH/all.img" of="$1" bs=1M skip=$(($2 / MiB)) count=$(($3 / MiB)) status=none; }
same() { cmp -s "$1" "$2"; }

head -c $((128 * MiB)) /dev/urandom >"$SCRATCH/a"
head -c $((128 * MiB)) /dev/urandom >"$SCRATCH/b"
head -c $((16 * MiB)) /dev/urandom >"$SCRATCH/c"

# Concurrent requests: the same new content from 24 requests in flight at
# once is stored once per content; overlapping writes in flight together
# apply in the order they were sent (nbdsh: libnbd sends in issue order;
# qemu's client may reorder its queue).
start_server dedup-conc "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/conc" size=64M || { not_ok "server starts"; finish; exit 1; }
cmds=()
for i in $(seq 0 7); do
    for p in 65 66 67; do cmds+=(-c "aio_write -q -P $p $(( (i * 3 + p - 65) * 1024 ))k 256k"); done
done
qio "${cmds[@]}" -c aio_flush
out=$(PATH=/usr/bin:$PATH nbdsh -u "$URI" -c '
M = 1 << 20
good = 0
for t in range(10):
    for p in (1, 2, 3, 4):
        h.aio_pwrite(bytes([p + t]) * M, 40 * M)
    h.aio_pwrite(bytes([5 + t]) * 5000, 41 * M + 100)
    h.aio_pwrite(bytes([6 + t]) * 5000, 41 * M + 2000)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    want = b"\0" * 100 + bytes([5 + t]) * 1900 + bytes([6 + t]) * 5000 + b"\0" * 100
    good += h.pread(M, 40 * M) == bytes([4 + t]) * M and h.pread(7100, 41 * M) == want
print(good)' 2>&1)
check "overlapping writes in flight together apply in order, 10 rounds of 6 ($out good)" test "$out" = 10
stop_server
out=$("${FSCK[@]}" "$SCRATCH/conc")
check "24 identical writes of 3 contents in flight at once: 3 unique blocks stored, 3 more from the last round ($out)" \
    bash -c '[[ $1 == *", 6 unique,"* ]]' _ "$out"

start size=1G || { not_ok "server starts"; finish; exit 1; }
check "nbdinfo: a 1 GiB export with trim and flush" \
    bash -c 'nbdinfo --json "$1" | grep -q "\"export-size\": 1073741824" && nbdinfo --can trim "$1" && nbdinfo --can flush "$1"' _ "$URI"

# The same 128 MiB at two offsets: the second copy costs almost nothing.
qio -c "write -s $SCRATCH/a 0 128M" -c flush
before=$(store_bytes)
qio -c "write -s $SCRATCH/a 512M 128M" -c flush
after=$(store_bytes)
growth=$((after - before))
check "the same 128 MiB at a second offset grows the store by $((growth / 1024)) KiB (< 5%: $((128 * MiB / 20 / 1024)) KiB)" \
    test "$growth" -lt $((128 * MiB / 20))
fetch "$SCRATCH/r0" 0 $((128 * MiB))
fetch "$SCRATCH/r1" $((512 * MiB)) $((128 * MiB))
check "both copies read back byte for byte" bash -c 'cmp -s "$1" "$2" && cmp -s "$1" "$3"' _ "$SCRATCH/a" "$SCRATCH/r0" "$SCRATCH/r1"

# Trim both copies, flush, write 128 MiB of new data: it reuses the space.
blocks_before=$(stat -c %s "$STORE/blocks")
start_ns=$(date +%s%N)
qio -c "discard 0 1G"
trim_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
check "a 1 GiB trim (256 MiB mapped, 128 MiB unique) takes ${trim_ms} ms, qemu-io's start included (< 2000 on a loaded 2-core CI machine)" test "$trim_ms" -lt 2000
qio -c flush
check "trimmed ranges read as zeroes" qemu-io -f raw "$URI" -c "read -P 0 0 1M" -c "read -P 0 600M 1M"
qio -c "write -s $SCRATCH/b 256M 128M" -c flush
blocks_after=$(stat -c %s "$STORE/blocks")
check "after trim and flush, 128 MiB of new data reuses the space (block file $((blocks_before / MiB)) -> $((blocks_after / MiB)) MiB)" \
    test "$blocks_after" -le $((blocks_before + 128 * MiB / 50))
qio -c "write -s $SCRATCH/c 900M 16M" -c flush

# A restart keeps everything.
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0
check "the store check is clean after a clean stop" "${FSCK[@]}" "$STORE"
start || { not_ok "server starts again"; finish; exit 1; }
fetch "$SCRATCH/r2" $((256 * MiB)) $((128 * MiB))
fetch "$SCRATCH/r3" $((900 * MiB)) $((16 * MiB))
check "data survives a restart byte for byte" bash -c 'cmp -s "$1" "$2" && cmp -s "$3" "$4"' _ "$SCRATCH/b" "$SCRATCH/r2" "$SCRATCH/c" "$SCRATCH/r3"

# kill -9 after a flush: nothing is lost.
qio -c "write -s $SCRATCH/c 64M 16M" -c "write -s $SCRATCH/c 80M 16M" -c flush
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "after kill -9 following a flush the store check finds no damage" bash -c '"$@"; [ $? -le 1 ]' _ "${FSCK[@]}" "$STORE"
start || { not_ok "server starts after kill -9"; finish; exit 1; }
fetch "$SCRATCH/r4" $((64 * MiB)) $((32 * MiB))
check "kill -9 after a flush: every flushed byte is there" bash -c 'cmp -s <(cat "$1" "$1") "$2"' _ "$SCRATCH/c" "$SCRATCH/r4"

# kill -9 in the middle of unflushed writes (duplicates, new data, trims).
fio --name=storm --ioengine=nbd --uri="$URI" --rw=randrw --bssplit=4k/40:64k/30:1m/30 --iodepth=16 \
    --offset=128M --size=128M --time_based --runtime=30 --dedupe_percentage=60 --trim_percentage=0 \
    >"$SCRATCH/fio.log" 2>&1 &
FIO=$!
sleep 3
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
wait "$FIO" 2>/dev/null
"${FSCK[@]}" "$STORE" >"$SCRATCH/fsck.log" 2>&1
rc=$?
sed 's/^/# /' "$SCRATCH/fsck.log" | tail -5
check "kill -9 mid-writes: the store check finds nothing worse than leaks (exit $rc)" test "$rc" -le 1
check "dedup-fsck --repair reclaims any leak" "${FSCK[@]}" "$STORE" --repair
check "then the store check is clean" "${FSCK[@]}" "$STORE"
start || { not_ok "server starts after kill -9 mid-writes"; finish; exit 1; }
fetch "$SCRATCH/r5" $((64 * MiB)) $((32 * MiB))
fetch "$SCRATCH/r6" $((256 * MiB)) $((128 * MiB))
check "kill -9 mid-writes: everything flushed before is intact" \
    bash -c 'cmp -s <(cat "$1" "$1") "$2" && cmp -s "$3" "$4"' _ "$SCRATCH/c" "$SCRATCH/r5" "$SCRATCH/b" "$SCRATCH/r6"
check "the store still serves writes after the crash" qemu-io -f raw "$URI" -c "write -P 9 130M 1M" -c "read -P 9 130M 1M"
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0
check "the store check is clean at the end" "${FSCK[@]}" "$STORE"

# Freed blocks come back without a flush: once enough are freed, a sync of
# RocksDB's log alone (in the background) makes their reuse safe. 64 MiB
# rewritten three times with new data, unflushed: 256 MiB in the file
# without it.
dd if="$SCRATCH/a" of="$SCRATCH/a2" bs=1M skip=64 count=64 status=none
dd if="$SCRATCH/b" of="$SCRATCH/b1" bs=1M count=64 status=none
dd if="$SCRATCH/b" of="$SCRATCH/b2" bs=1M skip=64 count=64 status=none
STORE="$SCRATCH/reuse"
start size=256M || { not_ok "server starts"; finish; exit 1; }
qio -c "write -s $SCRATCH/a 0 64M" -c flush
qio -c "write -s $SCRATCH/a2 0 64M" -c "write -s $SCRATCH/b1 0 64M" -c "write -s $SCRATCH/b2 0 64M"
blocks=$(stat -c %s "$STORE/blocks")
check "64 MiB rewritten 3 times without a flush: the block file is $((blocks / MiB)) MiB (< 200; 256 if nothing came back)" \
    test "$blocks" -lt $((200 * MiB))
fetch "$SCRATCH/r7" 0 $((64 * MiB))
check "the last rewrite reads back byte for byte" same "$SCRATCH/b2" "$SCRATCH/r7"
stop_server
check "the store check is clean after it" "${FSCK[@]}" "$STORE"
STORE="$SCRATCH/store"

# One-line errors: another block size, a foreign directory, a damaged store.
err=$("$USBD" -U "$SCRATCH/x.sock" "$TOP/devices/dedupdisk.lua" dir="$STORE" block=8K 2>&1)
check "another block size is a one-line error ($err)" bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"stores 4096-byte blocks"* ]]' _ "$err"
mkdir -p "$SCRATCH/foreign"; echo hello >"$SCRATCH/foreign/file"
err=$("$USBD" -U "$SCRATCH/x.sock" "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/foreign" size=1G 2>&1)
check "a foreign directory is a one-line error ($err)" bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"not a dedupdisk store"* ]]' _ "$err"
cp -r "$STORE" "$SCRATCH/damaged"
for f in "$SCRATCH/damaged"/MANIFEST-*; do printf 'garbage' | dd of="$f" bs=1 seek=20 conv=notrunc status=none; done
err=$("$USBD" -U "$SCRATCH/x.sock" "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/damaged" 2>&1)
check "a damaged store is a one-line error ($err)" bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"cannot open the store"* ]]' _ "$err"

# No room for the hash index (it is allocated whole when made): one line,
# rather than a SIGBUS at some later put.
mkdir -p "$SCRATCH/small"
if mount -t tmpfs -o size=16m tmpfs "$SCRATCH/small" 2>/dev/null; then
    err=$("$USBD" -U "$SCRATCH/x.sock" "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/small/store" size=1G 2>&1)
    umount "$SCRATCH/small"
    check "no room for the 64M hash index on a 16M file system is a one-line error ($err)" \
        bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"hash index"*"No space left on device"* ]]' _ "$err"
else
    echo "# no tmpfs mount here (not root?): the full-disk check is skipped"
fi

# The disk fills up in the middle of rewrites in flight: the server
# neither crashes nor stops (RocksDB's own LOG file, failing, used to abort
# the process at the next WAL sync), refuses writes from then on, and what
# the store holds is a consistent prefix: its check (of a copy, the full
# file system has no room for RocksDB to open it) finds no damage. (The
# batches decided after the failed write are not written: each holds the
# failed one's changes to records and counters.)
if mount -t tmpfs -o size=40m tmpfs "$SCRATCH/small" 2>/dev/null; then
    if start_server dedup-full "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/small/store" size=256M index=1M memtable=1M; then
        fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --refill_buffers \
            --size=16M --output=/dev/null >/dev/null 2>&1
        qio -c flush
        for pass in 1 2 3 4; do
            fio --name=rewrite --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=16 --refill_buffers \
                --randrepeat=0 --size=16M --output=/dev/null >/dev/null 2>&1 || break
        done
        stop_server
        check "a full disk under rewrites: the server logged the failure and refused writes" \
            grep -q "writes refused until restart" "$SERVER_LOG"
        check "and it exits without a crash (status $SERVER_STATUS)" test "$SERVER_STATUS" -lt 128
        cp -r "$SCRATCH/small/store" "$SCRATCH/full-copy"
        rc=0
        "${FSCK[@]}" "$SCRATCH/full-copy" >"$SCRATCH/full-fsck.log" 2>&1 || rc=$?
        sed 's/^/# /' "$SCRATCH/full-fsck.log" | tail -5
        check "and the store check of what it holds finds no damage (exit $rc; 1 is leaks)" test "$rc" -le 1
    else
        not_ok "a server on a 40M file system starts"
    fi
    umount "$SCRATCH/small"
fi

check "usbd-lua --check passes the dedupdisk" bash -c '"$1" --check "$2" dir="$3" size=64M >"$4" 2>&1' \
    _ "$USBD" "$TOP/devices/dedupdisk.lua" "$SCRATCH/checked" "$SCRATCH/check.log"
check "and its store check is clean" "${FSCK[@]}" "$SCRATCH/checked"

finish

#!/usr/bin/env bash
# devices/dedupdisk.lua compress= with real clients: text and an ext4 image
# take far less than raw, random data no more than raw plus a little,
# everything reads back, restart and kill -9 after a flush lose nothing,
# the store check is clean, and the space an ext4 image of /usr/share/doc
# takes is within 10% of the per-block ideal (tools/compress-ideal.lua).
. "$(dirname "$0")/../lib.sh"

STORE="$SCRATCH/store"
FSCK=(luajit "$TOP/tools/dedup-fsck.lua")
MiB=$((1 << 20))

start() { start_server dedupc "$TOP/devices/dedupdisk.lua" dir="$STORE" "$@"; }
qio() { qemu-io -f raw "$URI" "$@" >"$SCRATCH/qio.log" 2>&1 || { sed 's/^/# /' "$SCRATCH/qio.log"; return 1; }; }
fetch() { nbdcopy "$URI" "$SCRATCH/all.img" && dd if="$SCRATCH/all.img" of="$1" bs=1M skip=$(($2 / MiB)) count=$(($3 / MiB)) status=none; }
blocks_bytes() { stat -c %s "$1/blocks"; }
# The store check, its summary line as a TAP comment.
fsck_clean() { "${FSCK[@]}" "$1" >"$SCRATCH/fsck.out" 2>&1; local rc=$?; tail -1 "$SCRATCH/fsck.out" | sed 's/^/# /'; return $rc; }

# Text: uncompressed documentation, 32 MiB of it (repeated if need be).
find /usr/share/doc /usr/share/common-licenses -type f ! -name '*.gz' ! -name '*.bz2' ! -name '*.xz' \
    -size -2M 2>/dev/null | sort | xargs cat 2>/dev/null | head -c $((32 * MiB)) >"$SCRATCH/text"
while [ "$(stat -c %s "$SCRATCH/text")" -lt $((32 * MiB)) ]; do
    cat "$SCRATCH/text" "$SCRATCH/text" | head -c $((32 * MiB)) >"$SCRATCH/text2" && mv "$SCRATCH/text2" "$SCRATCH/text"
done
head -c $((32 * MiB)) /dev/urandom >"$SCRATCH/random"

start size=1G compress=lz4 || { not_ok "server starts"; finish; exit 1; }
qio -c "write -s $SCRATCH/text 0 32M" -c flush
text_bytes=$(blocks_bytes "$STORE")
check "32 MiB of text take $((text_bytes / 1024)) KiB with lz4, $((text_bytes * 100 / (32 * MiB)))% of raw (< 70%)" \
    test "$text_bytes" -lt $((32 * MiB * 7 / 10))
qio -c "write -s $SCRATCH/random 256M 32M" -c flush
random_bytes=$(( $(blocks_bytes "$STORE") - text_bytes ))
check "32 MiB of random data take $((random_bytes / 1024)) KiB (no more than raw plus 1%)" \
    test "$random_bytes" -le $((32 * MiB + 32 * MiB / 100))
fetch "$SCRATCH/r0" 0 $((32 * MiB))
fetch "$SCRATCH/r1" $((256 * MiB)) $((32 * MiB))
check "text and random data read back byte for byte" \
    bash -c 'cmp -s "$1" "$2" && cmp -s "$3" "$4"' _ "$SCRATCH/text" "$SCRATCH/r0" "$SCRATCH/random" "$SCRATCH/r1"
check "reads at odd offsets decompress the right bytes" \
    bash -c 'qemu-io -f raw "$1" -c "read -v 1000001 100" | head -1 | grep -q "^000f4241:"' _ "$URI"

# A restart keeps everything, and keeps the codec.
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0
check "the store check is clean after a clean stop" fsck_clean "$STORE"
start || { not_ok "server starts again"; finish; exit 1; }
fetch "$SCRATCH/r2" 0 $((32 * MiB))
check "text survives a restart byte for byte (the store remembers lz4)" cmp -s "$SCRATCH/text" "$SCRATCH/r2"

# kill -9 after a flush: nothing is lost. Overwrites free fragments too.
qio -c "write -s $SCRATCH/random 8M 8M" -c "write -s $SCRATCH/text 512M 32M" -c flush
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
"${FSCK[@]}" "$STORE" >"$SCRATCH/fsck.log" 2>&1
rc=$?
sed 's/^/# /' "$SCRATCH/fsck.log" | tail -3
check "after kill -9 following a flush the store check finds no damage (exit $rc)" test "$rc" -le 1
start || { not_ok "server starts after kill -9"; finish; exit 1; }
fetch "$SCRATCH/r3" 0 $((32 * MiB))
fetch "$SCRATCH/r4" $((512 * MiB)) $((32 * MiB))
check "kill -9 after a flush: every flushed byte is there" \
    bash -c 'cmp -s <(head -c 8M "$1"; head -c 8M "$2"; tail -c +16777217 "$1") "$3" && cmp -s "$1" "$4"' \
    _ "$SCRATCH/text" "$SCRATCH/random" "$SCRATCH/r3" "$SCRATCH/r4"
# kill -9 in the middle of unflushed writes (compressible, duplicates,
# overwrites that free fragments): nothing worse than leaks, flushed data intact.
fio --name=storm --ioengine=nbd --uri="$URI" --rw=randrw --bssplit=4k/40:64k/30:1m/30 --iodepth=16 \
    --offset=128M --size=128M --time_based --runtime=30 --dedupe_percentage=40 \
    --refill_buffers --buffer_compress_percentage=60 >"$SCRATCH/fio.log" 2>&1 &
FIO=$!
sleep 4
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
wait "$FIO" 2>/dev/null
"${FSCK[@]}" "$STORE" >"$SCRATCH/fsck.log" 2>&1
rc=$?
sed 's/^/# /' "$SCRATCH/fsck.log" | tail -3
check "kill -9 mid-writes: the store check finds nothing worse than leaks (exit $rc)" test "$rc" -le 1
check "dedup-fsck --repair reclaims any leak, then the check is clean" \
    bash -c '"$@" --repair >/dev/null && "$@" >/dev/null' _ "${FSCK[@]}" "$STORE"
start || { not_ok "server starts after kill -9 mid-writes"; finish; exit 1; }
fetch "$SCRATCH/r5" $((512 * MiB)) $((32 * MiB))
check "kill -9 mid-writes: everything flushed before is intact" cmp -s "$SCRATCH/text" "$SCRATCH/r5"
check "the store still serves writes after the crash" \
    bash -c 'qemu-io -f raw "$1" -c "write -P 9 130M 1M" -c "read -P 9 130M 1M" | grep -q "^read 1048576/1048576"' _ "$URI"
# Concurrent writes of fragments of many sizes: requests place fragments
# into the gaps of packed blocks that others opened and still write whole
# (gaps as zeroes), so they must write after those; fio verifies each block.
check "concurrent writes of mixed fragments read back as written (fio verify)" \
    fio --name=mixed --ioengine=nbd --uri="$URI" --rw=randwrite --bsrange=4k-64k --iodepth=16 \
    --offset=600M --size=48M --refill_buffers --buffer_compress_percentage=70 \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output="$SCRATCH/mixed.log"

check "usbd-lua --check passes a compressed store" bash -c '"$1" --check "$2" dir="$3" size=64M compress=zstd >"$4" 2>&1' \
    _ "$USBD" "$TOP/devices/dedupdisk.lua" "$SCRATCH/checked" "$SCRATCH/check.log"
stop_server
check "server exits 0" test "$SERVER_STATUS" = 0
check "the store check is clean at the end" fsck_clean "$STORE"

# Space efficiency on a real corpus: an ext4 image of /usr/share/doc,
# copied through nbdcopy into a fresh store, against the sum of each unique
# 4 KiB block compressed alone (the least a per-block scheme can store).
truncate -s 400M "$SCRATCH/doc.img"
if mkfs.ext4 -q -F -d /usr/share/doc "$SCRATCH/doc.img" >/dev/null 2>&1; then
    for codec in lz4 zstd; do
        start_server "doc-$codec" "$TOP/devices/dedupdisk.lua" dir="$SCRATCH/doc-$codec" size=400M compress=$codec \
            || { not_ok "server starts"; continue; }
        nbdcopy "$SCRATCH/doc.img" "$URI"
        nbdcopy "$URI" "$SCRATCH/doc-back.img"
        check "$codec: the ext4 image reads back byte for byte" cmp -s "$SCRATCH/doc.img" "$SCRATCH/doc-back.img"
        stop_server
        stored=$(blocks_bytes "$SCRATCH/doc-$codec")
        ideal=$(cd "$TOP" && luajit tools/compress-ideal.lua "$SCRATCH/doc.img" "$codec" | awk '/^ideal_bytes:/ {print $2}')
        raw=$(cd "$TOP" && luajit tools/compress-ideal.lua "$SCRATCH/doc.img" "$codec" | awk '/^raw_bytes:/ {print $2}')
        echo "# $codec: ext4 of /usr/share/doc: stored $stored bytes, ideal $ideal, unique raw $raw"
        check "$codec: the store takes $((stored * 1000 / ideal))/1000 of the per-block ideal (within 10%), $((stored * 100 / raw))% of raw" \
            test "$((stored * 100))" -le "$((ideal * 110))"
        check "$codec: its store check is clean" fsck_clean "$SCRATCH/doc-$codec"
    done
else
    not_ok "mkfs.ext4 -d builds an image of /usr/share/doc"
fi

finish

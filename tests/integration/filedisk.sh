#!/usr/bin/env bash
# devices/filedisk.lua with real clients: data reaches the file and survives
# a clean stop, a restart and kill -9 (once flushed); TRIM gives storage
# back; zeroes, unaligned requests, O_DIRECT. Everything runs twice: reads
# and writes through io_uring (the default), and through worker threads only
# (USBD_IO_URING=0).
. "$(dirname "$0")/../lib.sh"

# O_DIRECT needs a real file system: the scratch folder, unless it is tmpfs.
DISKS=$SCRATCH
if ! dd if=/dev/zero of="$DISKS/probe" bs=4096 count=1 oflag=direct 2>/dev/null; then
    DISKS=$(mktemp -d "$TOP/build/filedisk-test.XXXXXX")
    trap 'cleanup; rm -rf "$DISKS"' EXIT
fi
rm -f "$DISKS/probe"

qio() { qemu-io -f raw "$URI" "$@" 2>&1; }
no_failure() { ! grep -qi 'fail\|error' <<<"$1"; }
blocks() { stat -c %b "$1"; }  # 512-byte blocks the file takes

head -c 32M /dev/urandom >"$SCRATCH/data.bin"

suite() {  # MODE (io_uring or threads) DIRECT (true or false)
    local mode=$1 direct=$2 tag="[$1, direct=$2]"
    local img="$DISKS/disk-$1-$2.img"
    [ "$mode" = threads ] && export USBD_IO_URING=0 || unset USBD_IO_URING

    start_server "fd-$mode-$direct" -v devices/filedisk.lua path="$img" size=64M direct="$direct" ||
        { not_ok "$tag server starts"; return; }
    if [ "$mode" = io_uring ]; then
        qio -c 'read 0 4k' >/dev/null
        check "$tag reads and writes go through io_uring" grep -q 'through io_uring' "$SERVER_LOG"
    fi
    check "$tag a new file is sparse, of the size asked" \
        bash -c '[ $(stat -c %s "$1") = 67108864 ] && [ $(stat -c %b "$1") -lt 2048 ]' _ "$img"
    info=$(nbdinfo --json "$URI")
    check "$tag flush, trim and zero offered" \
        bash -c 'grep -q "\"can_flush\": true" <<<"$1" && grep -q "\"can_trim\": true" <<<"$1" && grep -q "\"can_zero\": true" <<<"$1"' _ "$info"
    [ "$direct" = true ] && check "$tag block size 4096" grep -q '"block_size_preferred": 4096' <<<"$info"

    # 32M through nbdcopy (4 connections, many requests in flight), then a
    # clean stop: it is all in the file.
    nbdcopy --connections=4 --requests=16 "$SCRATCH/data.bin" "$URI"
    stop_server
    check "$tag SIGTERM: exit 0" test "$SERVER_STATUS" = 0
    check "$tag after a clean stop the file holds what was written" cmp -n 33554432 "$SCRATCH/data.bin" "$img"
    check "$tag ... and zeroes after it" cmp -n 33554432 -i 33554432:0 "$img" /dev/zero

    # A restart serves it again, size from the file.
    start_server "fd2-$mode-$direct" devices/filedisk.lua path="$img" direct="$direct" ||
        { not_ok "$tag server restarts"; return; }
    check "$tag restart: the size comes from the file" bash -c '[ "$(nbdinfo --size "$1")" = 67108864 ]' _ "$URI"
    rm -f "$SCRATCH/back.bin"
    nbdcopy --requests=16 "$URI" "$SCRATCH/back.bin"
    check "$tag restart: the data is served again" cmp -n 33554432 "$SCRATCH/data.bin" "$SCRATCH/back.bin"

    # Unaligned and odd-sized requests (O_DIRECT or not), zeroes.
    local b=$((40 << 20))
    out=$(qio -c "write -P 0x5a $((b + 1)) 4097" -c "read -P 0x5a $((b + 1)) 4097" -c "read -P 0 $b 1" -c "read -P 0 $((b + 4098)) 511" \
              -c "write -P 0x11 $((b + 12345)) 777" -c "write -z $((b + 12400)) 100" -c "read -P 0x11 $((b + 12345)) 55" \
              -c "read -P 0 $((b + 12400)) 100" -c "read -P 0x11 $((b + 12500)) 622")
    check "$tag unaligned writes, zeroes in the middle, neighbours untouched" \
        bash -c '[ $(grep -c "^read" <<<"$1") = 6 ] && ! grep -qi "fail" <<<"$1"' _ "$out"

    # TRIM: the file takes less storage, and the range reads as zeroes.
    sync
    local before after
    before=$(blocks "$img")
    out=$(qio -c 'discard 0 16M' -c 'flush')
    sleep 0.1
    after=$(blocks "$img")
    # (give or take a block or two of extent tree the file system may add)
    check "$tag TRIM 16M: the file takes ~16M less ($before -> $after blocks)" test "$after" -le $((before - 30720))
    out=$(qio -c 'read -P 0 0 16M')
    check "$tag trimmed range reads as zeroes" bash -c '! grep -qi fail <<<"$1" && grep -q "^read 16777216/" <<<"$1"' _ "$out"
    check "$tag data after the trimmed range is intact" cmp -n $((16 << 20)) -i $((16 << 20)):$((16 << 20)) "$SCRATCH/data.bin" "$img"

    # kill -9 after a flush: every flushed write is in the file. One client
    # writes a pattern and flushes; another writes with nbdcopy --flush.
    out=$(qio -c 'write -P 0x77 48M 3M' -c 'write -P 0x78 51M 5000' -c 'flush')
    check "$tag qemu-io writes and flushes" no_failure "$out"
    head -c 4M /dev/urandom >"$SCRATCH/tail.bin"
    nbdcopy --flush "$SCRATCH/tail.bin" "$URI" || true  # a 4M file onto a 64M disk: writes the first 4M
    kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
    check "$tag kill -9: qemu-io's flushed writes are in the file" \
        cmp -n $((3 << 20)) -i $((48 << 20)):0 "$img" <(head -c 3M /dev/zero | tr '\0' '\167')
    check "$tag kill -9: ... its unaligned tail too" \
        cmp -n 5000 -i $((51 << 20)):0 "$img" <(head -c 5000 /dev/zero | tr '\0' '\170')
    check "$tag kill -9: nbdcopy --flush's data is in the file" cmp -n $((4 << 20)) "$SCRATCH/tail.bin" "$img"
}

for mode in io_uring threads; do
    for direct in false true; do
        suite "$mode" "$direct"
    done
done
unset USBD_IO_URING

# Start-up mistakes: one clear line each.
err=$("$USBD" -U "$SCRATCH/x.sock" devices/filedisk.lua path="$SCRATCH/absent.img" 2>&1 >/dev/null)
check "a missing file without size= says to give size=" grep -q 'size=' <<<"$err"
err=$("$USBD" -U "$SCRATCH/x.sock" devices/filedisk.lua 2>&1 >/dev/null)
check "no path= says to give path=" grep -q 'path=' <<<"$err"

finish

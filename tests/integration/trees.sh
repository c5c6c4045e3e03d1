#!/usr/bin/env bash
# Device trees served to real clients: the command line's [ ] groups and
# their mistakes; a mirror whose leg fails reads (every read still
# succeeds) or writes (the leg leaves service, the other keeps the data);
# a leg rebuilt online under fio --verify, after which the legs are the
# same bytes; a stripe and a concat round trip with nbdcopy and carry an
# ext4 that e2fsck finds clean.
. "$(dirname "$0")/../lib.sh"

need_tools nbdcopy qemu-io fio nbdfuse losetup mkfs.ext4 e2fsck fusermount3

# ---- the command line ------------------------------------------------------
# refused PATTERN ARGS...: the server exits 1 at once, with one line saying PATTERN.
refused() {
    local what=$1 pat=$2; shift 2
    local out rc
    out=$(cd "$SCRATCH" && timeout 20 "$USBD" -U "$SCRATCH/never.sock" "$@" 2>&1); rc=$?
    if [ "$rc" != 0 ] && [ "$(wc -l <<<"$out")" = 1 ] && grep -q -- "$pat" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what (exit $rc: $out)"
    fi
}
refused "a mirror of one device is one line naming the count" \
    "mirror stands on 2 or more devices, got 1" mirror [ filedisk path=one.img size=8M ]
check "... and opened nothing (no image made)" test ! -e "$SCRATCH/one.img"
refused "an unclosed group is one line" "a '\[' is not closed" mirror [ ramdisk size=1M ] [ ramdisk size=1M
refused "a group after a chain's device is refused where it goes wrong" "ramdisk does not stand on another device" \
    mirror [ ramdisk size=1M [ ramdisk size=1M ] ] [ ramdisk size=1M ]
check "--check passes a mirror, a stripe and a concat over filedisks" bash -c '
    cd "$1" && for top in "mirror" "stripe chunk=64K" "concat"; do
        "$2" --check $top [ filedisk path=c1.img size=8M ] [ filedisk path=c2.img size=4M ] >>check.log 2>&1 || exit 1
    done' _ "$SCRATCH" "$USBD"
help=$("$USBD" --help mirror 2>&1)
check "--help mirror shows the [ ] groups and resync=" bash -c \
    'grep -q "mirror \[/dev/nbdN\] \[KEY=VALUE ...\] \[ DEVICE" <<<"$1" && grep -q "^  resync" <<<"$1"' _ "$help"

# ---- a leg that fails reads ------------------------------------------------
start_server reads mirror [ faultdisk ops=read -- filedisk path="$SCRATCH/r1.img" size=64M ] \
    [ filedisk path="$SCRATCH/r2.img" size=64M ] || { not_ok "mirror starts"; finish; exit 1; }
out=$(qemu-io -f raw "$URI" -c 'write -P 0x5a 0 8M' -c 'read -P 0x5a 0 8M' -c 'read -P 0x5a 1M 1M' \
    -c 'read -P 0x5a 2M 4k' -c 'read -P 0x5a 3M 4k' 2>&1)
check "with one leg failing every read, every read succeeds" \
    bash -c '! grep -qi "fail\|error" <<<"$1" && [ "$(grep -c "^read" <<<"$1")" = 4 ]' _ "$out"
stop_server
check "... the statistics count the reads that went to the other leg" \
    bash -c 'n=$(sed -n "s/^ *read_fallbacks: //p" "$1"); [ "${n:-0}" -ge 2 ]' _ "$SERVER_LOG"
check "... and the leg stays in service" grep -q '^ *leg1: ok' "$SERVER_LOG"

# ---- a leg that fails writes -----------------------------------------------
start_server writes mirror [ faultdisk ops=write -- filedisk path="$SCRATCH/w1.img" size=64M ] \
    [ filedisk path="$SCRATCH/w2.img" size=64M ] || { not_ok "mirror starts"; finish; exit 1; }
out=$(qemu-io -f raw "$URI" -c 'write -P 0x61 4M 4M' -c 'flush' -c 'read -P 0x61 4M 4M' 2>&1)
check "with one leg failing writes, writes and reads succeed" bash -c '! grep -qi "fail\|error" <<<"$1"' _ "$out"
stop_server
check "... the leg is marked failed, with one log line" \
    bash -c '[ "$(grep -c "leg 1 failed a write" "$1")" = 1 ] && grep -q "^ *leg1: failed" "$1"' _ "$SERVER_LOG"
check "... and the other leg holds the data" \
    bash -c 'qemu-io -f raw "$1" -c "read -P 0x61 4M 4M" | grep -q "^read"' _ "$SCRATCH/w2.img"

# ---- a leg rebuilt online, under load -------------------------------------
head -c $((256 << 20)) /dev/urandom >"$SCRATCH/s1.img"
truncate -s 256M "$SCRATCH/s2.img"
# Leg 2 waits 10 ms a request, so that its rebuild (256 steps of 1 MiB,
# copied then compared) outlasts fio's start on any machine.
start_server resync mirror resync=2 [ filedisk path="$SCRATCH/s1.img" ] \
    [ slowdisk latency=10 -- filedisk path="$SCRATCH/s2.img" ] ||
    { not_ok "mirror starts with resync=2"; finish; exit 1; }
check "fio --verify while leg 2 is rebuilt: every block reads back as written" \
    fio --name=resync --ioengine=nbd --uri="$URI" --rw=randwrite --bsrange=4k-256k --iodepth=16 \
    --size=256M --io_size=96M --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
    --output="$SCRATCH/resync-fio.log"
for _ in $(seq 600); do grep -q "leg 2 rebuilt\|leg 2 failed" "$SERVER_LOG" && break; sleep 0.1; done
check "the rebuild started while fio ran, and ended compared equal" \
    bash -c 'grep -q "rebuilding leg 2" "$1" && grep -q "leg 2 rebuilt and compared equal" "$1"' _ "$SERVER_LOG"
stop_server
check "... the statistics say 0 mismatches and two legs in service" \
    bash -c 'grep -q "^ *resync_mismatches: 0" "$1" && grep -q "^ *legs_in_service: 2" "$1"' _ "$SERVER_LOG"
check "... and that fio's writes came during the rebuild" \
    bash -c 'n=$(sed -n "s/^ *writes_while_resyncing: //p" "$1"); [ "${n:-0}" -ge 100 ]' _ "$SERVER_LOG"
check "... and the two legs are the same bytes" cmp -s "$SCRATCH/s1.img" "$SCRATCH/s2.img"
check "... exit 0" test "$SERVER_STATUS" = 0

# ---- state=: a failed leg is remembered, and rebuilt at the next open -----
start_server state mirror state="$SCRATCH/m.state" [ faultdisk ops=write range=8M-9M -- filedisk path="$SCRATCH/t1.img" size=64M ] \
    [ filedisk path="$SCRATCH/t2.img" size=64M ] || { not_ok "mirror starts with state="; finish; exit 1; }
qemu-io -f raw "$URI" -c 'write -P 0x33 0 16M' >/dev/null 2>&1
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "a leg that failed a write is stale in the state file once the write is answered" \
    grep -q '^leg1 stale$' "$SCRATCH/m.state"
start_server state2 mirror state="$SCRATCH/m.state" [ filedisk path="$SCRATCH/t1.img" ] [ filedisk path="$SCRATCH/t2.img" ] ||
    { not_ok "mirror starts again"; finish; exit 1; }
for _ in $(seq 300); do grep -q "leg 1 rebuilt\|leg 1 failed" "$SERVER_LOG" && break; sleep 0.1; done
out=$(qemu-io -f raw "$URI" -c 'read -P 0x33 0 16M' 2>&1)
stop_server
check "... the next open rebuilds it without being told" grep -q "leg 1 rebuilt and compared equal" "$SERVER_LOG"
check "... the data reads back, and the legs are the same bytes" \
    bash -c 'grep -q "^read" <<<"$1" && cmp -s "$2" "$3"' _ "$out" "$SCRATCH/t1.img" "$SCRATCH/t2.img"
check "... and the state file says both are in service" \
    bash -c 'grep -q "^leg1 ok$" "$1" && grep -q "^leg2 ok$" "$1"' _ "$SCRATCH/m.state"

# ---- stripe and concat: round trip and ext4 ---------------------------------
head -c $((24 << 20)) /dev/urandom >"$SCRATCH/data"
for top in "stripe chunk=64K" "concat"; do
    name=${top%% *}
    start_server "$name" $top [ filedisk path="$SCRATCH/$name-1.img" size=96M ] \
        [ filedisk path="$SCRATCH/$name-2.img" size=64M ] || { not_ok "$name starts"; continue; }
    nbdcopy "$SCRATCH/data" "$URI" && nbdcopy "$URI" "$SCRATCH/$name.back"
    check "$name: nbdcopy in and out gives the same bytes" \
        cmp -s "$SCRATCH/data" <(head -c $((24 << 20)) "$SCRATCH/$name.back")
    blockdev_attach
    check "$name: mkfs.ext4 on it" mkfs.ext4 -q -F "$LOOP"
    mount -t ext4 "$LOOP" "$MNT" && cp "$SCRATCH/data" "$MNT/data" && umount "$MNT"
    check "$name: e2fsck -f finds the ext4 clean" bash -c 'e2fsck -fn "$1" >/dev/null 2>&1' _ "$LOOP"
    mount -t ext4 "$LOOP" "$MNT"
    check "$name: the file on it reads back" cmp -s "$SCRATCH/data" "$MNT/data"
    blockdev_detach
    stop_server
    check "$name: exit 0" test "$SERVER_STATUS" = 0
done
check "concat: the second device got the bytes past the first's end" \
    bash -c '! cmp -s "$1" <(head -c $((64 << 20)) /dev/zero)' _ "$SCRATCH/concat-2.img"
check "stripe: both devices got chunks" \
    bash -c '! cmp -s "$1" <(head -c $((64 << 20)) /dev/zero) && ! cmp -s "$2" <(head -c $((64 << 20)) /dev/zero)' \
    _ "$SCRATCH/stripe-1.img" "$SCRATCH/stripe-2.img"

finish

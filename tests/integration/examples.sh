#!/usr/bin/env bash
# The examples keep the contract, and do what they say.
. "$(dirname "$0")/../lib.sh"

# --check prints its own results: keep them out of this script's count.
contract() { "$USBD" --check "$@" >>"$SCRATCH/check.log" 2>&1 || { cat "$SCRATCH/check.log"; return 1; }; }
# Every example, stacked on the ramdisk and on the filedisk.
head -c 64 /dev/urandom >"$SCRATCH/disk.key"
declare -A LAYER=(
    [cowdisk]="examples/cowdisk.lua"
    [slowdisk]="examples/slowdisk.lua latency=1 all=true"
    [faultdisk]="examples/faultdisk.lua ops=read range=9G-10G"
    [cryptdisk]="examples/cryptdisk.lua keyfile=$SCRATCH/disk.key sector=512"
    [cryptdisk4k]="examples/cryptdisk.lua keyfile=$SCRATCH/disk.key sector=4096"
    [cachedisk]="examples/cachedisk.lua size=1M block=16K"
    [tracedisk]="examples/tracedisk.lua out=$SCRATCH/trace.log"
)
for name in cowdisk slowdisk faultdisk cryptdisk cryptdisk4k cachedisk tracedisk; do
    # shellcheck disable=SC2086
    check "--check passes $name on the ramdisk" contract ${LAYER[$name]} -- ramdisk size=8M
    rm -f "$SCRATCH/under.img"
    # shellcheck disable=SC2086
    check "--check passes $name on the filedisk, flush and close included" bash -c '
        "$1" --check "${@:3}" -- filedisk path="$2" size=8M >"$2.out" 2>&1 &&
        grep -q "^ok - flush returns" "$2.out" && grep -q "^ok - close returns" "$2.out" || { cat "$2.out"; false; }' \
        _ "$USBD" "$SCRATCH/under.img" ${LAYER[$name]}
done
check "tracedisk wrote a line per request" bash -c '[ $(grep -c " read \| write " "$1") -gt 50 ]' _ "$SCRATCH/trace.log"

# cowdisk over a filedisk: writes are served back, the base file is untouched.
head -c 16M /dev/urandom >"$SCRATCH/base.img"
sum=$(sha256sum <"$SCRATCH/base.img")
start_server cow examples/cowdisk.lua -- filedisk path="$SCRATCH/base.img" ||
    { not_ok "cowdisk starts over a filedisk"; finish; exit 1; }
out=$(qemu-io -f raw "$URI" -c 'write -P 0x42 12345 100000' -c 'read -P 0x42 12345 100000' 2>&1)
check "cowdisk: writes read back" bash -c '! grep -q "fail" <<<"$1" && grep -q "^read 100000/100000" <<<"$1"' _ "$out"
nbdcopy "$URI" "$SCRATCH/seen.img"
check "cowdisk: the rest reads as the base" bash -c 'cmp -s -n 12345 "$1" "$2" && cmp -s -i 112345 "$1" "$2"' _ "$SCRATCH/base.img" "$SCRATCH/seen.img"
stop_server
check "cowdisk: the base file is unchanged" test "$(sha256sum <"$SCRATCH/base.img")" = "$sum"

# Requests that wait interleave: over a base whose reads wait, eight 512-byte
# writes into one 4K block are in flight at once, and each first write of a
# block copies it from the base while the others run. (cowdisk once kept
# the last copy made and lost the writes in the others: the soak found it.)
start_server cowrace examples/cowdisk.lua -- slowdisk latency=5 -- ramdisk size=4M ||
    { not_ok "cowdisk starts over a slow base"; finish; exit 1; }
check "cowdisk: concurrent writes into one block all stay (fio --verify, 512-byte writes at qd16)" \
    fio --name=race --ioengine=nbd --uri="$URI" --rw=write --bs=512 --iodepth=16 --size=1M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output="$SCRATCH/race.out"
stop_server

finish

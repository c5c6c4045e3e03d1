#!/usr/bin/env bash
# The examples keep the contract, and do what they say.
. "$(dirname "$0")/../lib.sh"

# --check prints its own results: keep them out of this script's count.
contract() { "$USBD" --check "$@" >>"$SCRATCH/check.log" 2>&1 || { cat "$SCRATCH/check.log"; return 1; }; }
check "--check passes examples/cowdisk.lua" contract examples/cowdisk.lua size=8M
check "--check passes examples/slowdisk.lua" contract examples/slowdisk.lua size=8M latency=1
check "--check passes examples/faultdisk.lua outside its faults" contract examples/faultdisk.lua size=8M

# cowdisk over a filedisk: writes are served back, the base file is untouched.
head -c 16M /dev/urandom >"$SCRATCH/base.img"
sum=$(sha256sum <"$SCRATCH/base.img")
start_server cow examples/cowdisk.lua base=devices/filedisk.lua path="$SCRATCH/base.img" ||
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
cat >"$SCRATCH/slowbase.lua" <<'LUA'
return { open = function(a) return dofile("examples/slowdisk.lua").open({ size = a.size, latency = a.latency }) end }
LUA
start_server cowrace examples/cowdisk.lua base="$SCRATCH/slowbase.lua" latency=5 size=4M ||
    { not_ok "cowdisk starts over a slow base"; finish; exit 1; }
check "cowdisk: concurrent writes into one block all stay (fio --verify, 512-byte writes at qd16)" \
    fio --name=race --ioengine=nbd --uri="$URI" --rw=write --bs=512 --iodepth=16 --size=1M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output="$SCRATCH/race.out"
stop_server

finish

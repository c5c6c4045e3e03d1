#!/usr/bin/env bash
# The ramdisk with real NBD clients: nbdinfo, nbdcopy, qemu-io, qemu-img.
. "$(dirname "$0")/../lib.sh"

start_server ram devices/ramdisk.lua size=64M || { not_ok "server starts"; finish; exit 1; }

# nbdinfo: size and flags as the device offers them.
info=$(nbdinfo --json "$URI")
check "nbdinfo: size is 64M" grep -q '"export-size": 67108864' <<<"$info"
check "nbdinfo: writable" grep -q '"is_read_only": false' <<<"$info"
check "nbdinfo: trim offered (ramdisk has trim)" grep -q '"can_trim": true' <<<"$info"
check "nbdinfo: zero offered" grep -q '"can_zero": true' <<<"$info"
check "nbdinfo: no flush offered (ramdisk has no flush)" grep -q '"can_flush": false' <<<"$info"
check "nbdinfo: multi-conn" grep -q '"can_multi_conn": true' <<<"$info"
check "nbdinfo: preferred block size 4096" grep -q '"block_size_preferred": 4096' <<<"$info"
check "nbdinfo --list shows the export" bash -c 'nbdinfo --list "$1" | grep -q "^export=\"\":"' _ "$URI"

# nbdcopy: 48 MiB of random data out and back, byte for byte, over 4 connections.
head -c 48M /dev/urandom >"$SCRATCH/in.bin"
check "nbdcopy writes 48M (4 connections)" nbdcopy --connections=4 "$SCRATCH/in.bin" "$URI"
nbdcopy "$URI" "$SCRATCH/out.bin"
check "nbdcopy reads back the same bytes" cmp -n $((48 << 20)) "$SCRATCH/in.bin" "$SCRATCH/out.bin"
check "the rest of the disk is still zeroes" cmp -n $((16 << 20)) -i $((48 << 20)):0 "$SCRATCH/out.bin" /dev/zero

# qemu-io: unaligned and odd-sized requests, zeroes and discards.
qio() { qemu-io -f raw "$URI" "$@" 2>&1; }
# (above 48M, where nbdcopy wrote nothing)
b=$((50 << 20))
out=$(qio -c "write -P 0x5a $((b + 1)) 4097" -c "read -P 0x5a $((b + 1)) 4097" -c "read -P 0 $b 1" -c "read -P 0 $((b + 4098)) 511")
check "qemu-io: unaligned write reads back" grep -q '^read 4097/4097 bytes at offset 52428801' <<<"$out"
check "qemu-io: neighbours untouched" bash -c '! grep -q "Pattern verification failed" <<<"$1"' _ "$out"
out=$(qio -c 'write -P 0x11 12345 777' -c 'write -z 12400 100' -c 'read -P 0x11 12345 55' -c 'read -P 0 12400 100' -c 'read -P 0x11 12500 622')
check "qemu-io: odd-sized write, zeroes in its middle" bash -c '[ $(grep -c "^read" <<<"$1") = 3 ] && ! grep -q "verification failed" <<<"$1"' _ "$out"
out=$(qio -c 'write -P 0x22 1M 1M' -c 'discard 1M 512k' -c 'read -P 0 1M 512k' -c 'read -P 0x22 1536k 512k')
check "qemu-io: discard leaves zeroes, the rest stays" bash -c '! grep -qi "fail" <<<"$1" && [ $(grep -c "^read" <<<"$1") = 2 ]' _ "$out"
out=$(qio -c 'write -P 0x33 0 32M' -c 'read -P 0x33 0 32M')
check "qemu-io: a 32M request (the most qemu sends at once)" grep -q '^read 33554432/33554432' <<<"$out"
out=$(qio -c 'read 63M 2M')
check "qemu-io: a read past the end is refused" grep -qi 'fail\|invalid\|out of range' <<<"$out"

# qemu-img sees a raw disk of the right size, and converts to it.
check "qemu-img info: 64 MiB" bash -c 'qemu-img info --output=json "$1" | grep -q "\"virtual-size\": 67108864"' _ "$URI"
head -c 1M /dev/urandom >"$SCRATCH/small.raw"
qemu-img convert -n -f raw -O raw "$SCRATCH/small.raw" "$URI"
nbdcopy "$URI" "$SCRATCH/back.raw"
truncate -s 1M "$SCRATCH/back.raw"
check "qemu-img convert to the export, byte for byte" qemu-img compare -q -f raw -F raw "$SCRATCH/small.raw" "$SCRATCH/back.raw"

# Many clients at once, each on its own region.
pids=()
for i in 0 1 2 3 4 5 6 7; do
    qemu-io -f raw "$URI" -c "write -P $((i + 1)) $((i * 2))M 2M" -c "read -P $((i + 1)) $((i * 2))M 2M" >"$SCRATCH/c$i.out" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
check "8 clients at once, each reads its own data" bash -c '! grep -qi fail "$1"/c*.out && [ $(cat "$1"/c*.out | grep -c "^read") = 8 ]' _ "$SCRATCH"

stop_server
check "SIGTERM: exit status 0" test "$SERVER_STATUS" = 0
check "SIGTERM: the socket is removed" test ! -e "$SOCK"

# TCP on loopback.
port=$((20000 + RANDOM % 20000))
"$USBD" -p "$port" devices/ramdisk.lua size=1M >"$SCRATCH/tcp.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do nbdinfo --can connect "nbd://127.0.0.1:$port" 2>/dev/null && break; sleep 0.05; done
check "TCP: nbdinfo over nbd://127.0.0.1:$port" bash -c 'nbdinfo --size "nbd://127.0.0.1:$1" | grep -qx 1048576' _ "$port"
check "TCP: the URI is printed" grep -q "^nbd://127.0.0.1:$port/" "$SCRATCH/tcp.log"
stop_server
check "TCP: SIGINT-free SIGTERM exit 0" test "$SERVER_STATUS" = 0

finish

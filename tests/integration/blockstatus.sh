#!/usr/bin/env bash
# Block status (base:allocation) with real clients: nbdinfo --map and
# qemu-img map see a sparse filedisk's holes exactly; a device without
# extents() is all data; nbdcopy reads only what is allocated (counted by
# the device, tests/integration/devices/countdisk.lua); the server merges,
# clamps and bounds what a device reports, and turns a device's errors into
# the client's. Also, from the same issue: FLUSH and FUA succeed on a device
# without flush(), and a 48 MiB read and write each arrive as one request.
. "$(dirname "$0")/../lib.sh"

COUNTDISK=tests/integration/devices/countdisk.lua
PY=/usr/bin/python3      # Debian's, where python3-libnbd is
M=1048576

# nbdinfo --map as "offset length flags" lines.
map() { nbdinfo --map "$URI" | awk '{ print $1, $2, $3 }'; }
# A count the device wrote on close: count FILE NAME.
count() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }
# Run Python with libnbd connected to $URI as h (strict checks off, so it
# sends what the server did not offer).
nbdpy() {
    "$PY" - "$URI" <<PY
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
$1
PY
}

# ---- a sparse filedisk ------------------------------------------------------
img=$SCRATCH/sparse.img
truncate -s 16M "$img"
for at in 0 4 15; do
    dd if=/dev/urandom of="$img" bs=1M seek=$at count=1 conv=notrunc status=none
done
sync "$img"
start_server sparse devices/filedisk.lua path="$img" || { not_ok "filedisk server starts"; finish; exit; }
want="0 1048576 0
1048576 3145728 3
4194304 1048576 0
5242880 10485760 3
15728640 1048576 0"
got=$(map)
check "nbdinfo --map on a sparse filedisk lists its holes exactly" [ "$got" = "$want" ]
[ "$got" = "$want" ] || echo "# got: $got"
check "nbdinfo lists the base:allocation context" grep -q 'base:allocation' <<<"$(nbdinfo "$URI")"
qmap=$(qemu-img map --output=json -f raw "$URI" |
       "$PY" -c 'import json,sys; [print(e["start"], e["length"], 0 if e["data"] else 3 if e["zero"] else 1) for e in json.load(sys.stdin)]')
check "qemu-img map agrees" [ "$qmap" = "$want" ]
[ "$qmap" = "$want" ] || echo "# qemu-img map: $qmap"
qemu-io -f raw "$URI" -c 'discard 4M 1M' -c 'write -P 9 8M 4k' >/dev/null 2>&1
check "a trimmed range becomes a hole, a write becomes data" [ "$(map)" = "0 1048576 0
1048576 7340032 3
8388608 4096 0
8392704 7335936 3
15728640 1048576 0" ]
out=$(nbdpy '
for length in (8 * 2**20, 256 * 1024):
    got = []
    h.block_status(length, 512 * 1024, lambda ctx, off, e, err: got.append((ctx, list(e))), nbd.CMD_FLAG_REQ_ONE)
    print(got)')
check "REQ_ONE: one descriptor, clamped to the length asked" [ "$out" = "[('base:allocation', [524288, 0])]
[('base:allocation', [262144, 0])]" ]
stop_server

# ---- the ramdisk: never-written and trimmed ranges are holes -----------------
start_server ram devices/ramdisk.lua size=16M || { not_ok "ramdisk server starts"; finish; exit; }
check "nbdinfo --map on a new ramdisk: one hole" [ "$(map)" = "0 16777216 3" ]
qemu-io -f raw "$URI" -c 'write -P 7 1M 1M' -c 'write -P 8 8M 4k' >/dev/null 2>&1
want="0 1048576 3
1048576 1048576 0
2097152 6291456 3
8388608 65536 0
8454144 8323072 3"
got=$(map)
check "nbdinfo --map on a ramdisk lists what was written (in 64 KiB chunks) and the holes" [ "$got" = "$want" ]
[ "$got" = "$want" ] || echo "# got: $got"
qemu-io -f raw "$URI" -c 'discard 1M 1M' >/dev/null 2>&1
check "a trimmed ramdisk range is a hole again" [ "$(map)" = "0 8388608 3
8388608 65536 0
8454144 8323072 3" ]
stop_server

# ---- a device without extents(): all data ---------------------------------
start_server plain "$COUNTDISK" size=64M extents=none || { not_ok "countdisk starts"; finish; exit; }
check "nbdinfo --list on a device without extents" grep -q 'base:allocation' <<<"$(nbdinfo --list "$URI")"
check "nbdinfo --map on a device without extents: all data" [ "$(map)" = "0 67108864 0" ]
stop_server

# ---- what the server makes of what a device reports --------------------------
start_server split "$COUNTDISK" size=16M data=4M-5M extents=split
check "4 KiB pieces with equal flags are merged into runs" [ "$(map)" = "0 4194304 3
4194304 1048576 0
5242880 11534336 3" ]
stop_server

start_server frag "$COUNTDISK" size=64M extents=fragmented
out=$(nbdpy '
got = []
h.block_status(64 * 2**20, 0, lambda ctx, off, e, err: got.append(e))
e = got[0]
print(len(got), len(e) // 2, sum(e[0::2]), set(e[1::2]))')
check "a fragmented range is answered in part: 8192 descriptors, 4 MiB" [ "$out" = "1 8192 4194304 {0, 3}" ]
[ "$out" = "1 8192 4194304 {0, 3}" ] || echo "# got: $out"
totals=$(nbdinfo --map --totals "$URI" | awk '{ print $1, $3 }')
check "nbdinfo walks the whole fragmented device in parts (half data, half hole)" \
    [ "$totals" = "33554432 0
33554432 3" ]
stop_server

start_server errno "$COUNTDISK" size=16M extents=errno
out=$(nbdpy '
try:
    h.block_status(2**20, 0, lambda *a: 0)
    print("no error")
except nbd.Error as e:
    print(e.errno)
h.pread(4096, 0)
print("still serving")')
check "extents() raising usbd.E.NOSPC reaches the client as ENOSPC" [ "$out" = "ENOSPC
still serving" ]
stop_server
start_server garbage "$COUNTDISK" size=16M extents=garbage
out=$(nbdpy '
try:
    h.block_status(2**20, 0, lambda *a: 0)
    print("no error")
except nbd.Error as e:
    print(e.errno)
h.pread(4096, 0)
print("still serving")')
check "extents() returning nonsense: EIO, and serving goes on" [ "$out" = "EIO
still serving" ]
check "... with a line saying what was wrong" grep -q 'extents(pos, count): run 1 has length 0' "$SERVER_LOG"
stop_server

# ---- nbdcopy reads only what is allocated -----------------------------------
counts=$SCRATCH/nbdcopy.counts
start_server copy "$COUNTDISK" size=1G data=512M-513M count="$counts"
check "nbdcopy of a 1G device holding 1 MiB of data" nbdcopy "$URI" null:
stop_server
check "... read exactly the 1 MiB allocated (device served $(count "$counts" read_bytes) bytes)" \
    [ "$(count "$counts" read_bytes)" = $M ]

# ---- FLUSH and FUA on a device without flush() -------------------------------
start_server noflush "$COUNTDISK" size=64M data=0-1M
check "the block size advertised allows 64 MiB requests" \
    grep -q '"block_size_maximum": 67108864' <<<"$(nbdinfo --json "$URI")"
out=$(nbdpy '
print(h.can_flush(), h.can_fua())
h.flush()
h.pwrite(b"x" * 4096, 0, nbd.CMD_FLAG_FUA)
h.zero(4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 0) == b"x" * 4096
print("ok")')
check "FLUSH, and FUA on a write and on write_zeroes, succeed on a device without flush()" \
    [ "$out" = "False False
ok" ]
[ "$out" = "False False
ok" ] || echo "# got: $out"
stop_server

# ---- a 48 MiB read and a 48 MiB write, one request each ----------------------
counts=$SCRATCH/big.counts
start_server big "$COUNTDISK" size=128M data=0-64M count="$counts"
out=$(nbdpy '
data = bytes(range(256)) * (48 * 4096)
h.pwrite(data, 4096)
print(h.pread(len(data), 4096) == data)')
check "a 48 MiB write and read back succeed" [ "$out" = True ]
stop_server
check "... the read reached the device as one request of 48 MiB" \
    [ "$(count "$counts" reads) $(count "$counts" max_read)" = "1 50331648" ]
check "... the write too" [ "$(count "$counts" writes) $(count "$counts" max_write)" = "1 50331648" ]

finish

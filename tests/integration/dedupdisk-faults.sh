#!/usr/bin/env bash
# devices/dedupdisk.lua when things go wrong inside a request: a full disk,
# a damaged record met halfway through a decision with other writers
# queued behind it, and (verify=true) hash collisions and matches whose
# bytes are still in flight. Each failure must stop writes with one line,
# lose nothing acknowledged, and leave a store that reopens consistent.
. "$(dirname "$0")/../lib.sh"

FSCK=(luajit "$TOP/tools/dedup-fsck.lua")
PY=/usr/bin/python3   # Debian's, with the libnbd binding
MiB=$((1 << 20))

# ---- A full disk -----------------------------------------------------------
# The store on a 48 MiB tmpfs; 1 MiB unique writes (flushed every 4) until
# one fails. Every write answered before then must read back, before and
# after a restart with room again.
SMALL="$SCRATCH/small"
mkdir -p "$SMALL"
if mount -t tmpfs -o size=48M tmpfs "$SMALL" 2>/dev/null; then
    trap 'umount "$SMALL" 2>/dev/null; cleanup' EXIT
    start_server full "$TOP/devices/dedupdisk.lua" dir="$SMALL/store" size=256M memtable=2M index=1M ||
        { not_ok "server starts on the small disk"; finish; exit 1; }
    out=$("$PY" - "$URI" "$SCRATCH/acked" <<'EOF'
import nbd, os, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
M = 1 << 20
acked, failed = [], 0
for i in range(200):
    data = os.urandom(M)
    try:
        h.pwrite(data, i * M)
        if i % 4 == 3: h.flush()
    except nbd.Error:
        failed = i
        break
    acked.append(data)
with open(sys.argv[2], "wb") as f:
    for d in acked: f.write(d)
later = 0
try:
    h.pwrite(os.urandom(4096), 250 * M)
except nbd.Error:
    later = 1
good = all(h.pread(M, i * M) == d for i, d in enumerate(acked))
print(len(acked), failed, later, int(good))
EOF
)
    read -r nacked failed later good <<<"$out"
    check "the disk fills: a write fails after ${nacked:-?} MiB answered" test "${failed:-0}" -gt 0
    check "after it, writes are refused" test "${later:-0}" = 1
    check "everything answered reads back while the server runs" test "${good:-0}" = 1
    check "one log line says writes are refused ($(grep -c 'writes refused until restart' "$SERVER_LOG"))" \
        test "$(grep -c 'writes refused until restart' "$SERVER_LOG")" = 1
    grep 'refused' "$SERVER_LOG" | head -2 | sed 's/^/# /'
    kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
    mount -o remount,size=512M "$SMALL"
    start_server full2 "$TOP/devices/dedupdisk.lua" dir="$SMALL/store" index=1M ||
        { not_ok "the store opens again once there is room"; finish; exit 1; }
    check "every write answered before the disk filled is there after a restart" \
        bash -c 'nbdcopy "$1" - | head -c "$(stat -c %s "$2")" | cmp -s - "$2"' _ "$URI" "$SCRATCH/acked"
    check "the store takes writes again" \
        bash -c 'qemu-io -f raw "$1" -c "write -P 9 200M 1M" -c "read -P 9 200M 1M" | grep -q "^read 1048576/"' _ "$URI"
    stop_server
    out=$("${FSCK[@]}" "$SMALL/store" 2>&1)
    check "the store check is clean ($(tail -1 <<<"$out"))" test $? = 0
    umount "$SMALL"
    trap cleanup EXIT
else
    echo "# no tmpfs mount here (not root?): the full disk case is skipped"
fi

# ---- A damaged record met halfway through a decision ----------------------
# Logical block 1 names content 2, whose record is made to hold no
# reference. A write over block 1 adds its new content, then fails at the
# reference it drops; writes queued behind it on the metadata mutex must
# fail too, not decide on the half it left in memory.
STORE="$SCRATCH/damaged"
start_server damaged "$TOP/devices/dedupdisk.lua" dir="$STORE" size=64M || { not_ok "server starts"; finish; exit 1; }
qemu-io -f raw "$URI" -c "write -P 1 0 4k" -c "write -P 2 4k 4k" -c "write -P 3 8k 4k" -c flush >/dev/null
stop_server
luajit - "$TOP" "$STORE" <<'EOF'
local top, dir = arg[1], arg[2]
package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. package.path
local ffi, usbd = require "ffi", require "usbd"
local F = require "usbd.dedup.format"
local db = usbd.kv.open(dir, {})
local v = db:get(F.Rkey(0), 4096)
local rec = ffi.new("uint8_t[?]", #v)
ffi.copy(rec, v, #v)
ffi.cast(F.slot_ptr[false], rec)[2].refs = 0
local b = usbd.kv.batch()
b:put(F.Rkey(0), ffi.string(rec, #v))
db:write(b, true)
db:close()
EOF
"${FSCK[@]}" "$STORE" >"$SCRATCH/fsck-before" 2>&1
rc=$?
check "the store check sees the damage made (exit $rc: $(tail -1 "$SCRATCH/fsck-before"))" test "$rc" = 1
start_server damaged2 "$TOP/devices/dedupdisk.lua" dir="$STORE" || { not_ok "server starts"; finish; exit 1; }
out=$("$PY" - "$URI" <<'EOF'
import nbd, os, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
M = 1 << 20
res = {}
def done(name):
    def cb(err):
        res[name] = err.value
        return 0
    return cb
# Over block 1 first; then writers of new contents in other spans.
h.aio_pwrite(os.urandom(4096), 4096, completion=done("x"))
for i in range(4):
    h.aio_pwrite(os.urandom(65536), (8 + i) * M, completion=done("y%d" % i))
while h.aio_in_flight() > 0:
    h.poll(-1)
later = 0
try:
    h.pwrite(os.urandom(4096), 40 * M)
except nbd.Error:
    later = 1
print(int(res["x"] != 0), later, sum(1 for k in res if k != "x" and res[k] == 0))
EOF
)
read -r xfailed later yok <<<"$out"
check "the write that meets the damage fails" test "${xfailed:-0}" = 1
check "writes after it are refused" test "${later:-0}" = 1
check "one log line says so" test "$(grep -c 'writes refused until restart' "$SERVER_LOG")" = 1
grep 'refused' "$SERVER_LOG" | head -1 | sed 's/^/# /'
echo "# writes queued behind it that were answered: ${yok:-?} of 4"
stop_server
"${FSCK[@]}" "$STORE" >"$SCRATCH/fsck-after" 2>&1
check "the store holds only the damage it had: nothing half-decided was written" \
    bash -c 'diff <(sed "s|$3||" "$1") <(sed "s|$3||" "$2") | sed "s/^/# /"; cmp -s "$1" "$2"' \
    _ "$SCRATCH/fsck-before" "$SCRATCH/fsck-after" "$STORE"

# ---- verify=true: collisions, and matches still in flight -----------------
# USBD_DEDUP_TEST_HASH_BYTES=1 keeps one byte of each hash (tests only):
# random blocks collide all the time. Writes of 256 random blocks, each
# written three times by requests in flight together in different spans,
# must all read back, the store must keep serving, and its check (with the
# same hash) be clean.
for args in "" "compress=lz4"; do
    name="verify${args:+ $args}"
    dir="$SCRATCH/verify-${args%%=*}"
    USBD_DEDUP_TEST_HASH_BYTES=1 start_server verify "$TOP/devices/dedupdisk.lua" dir="$dir" size=64M verify=true $args ||
        { not_ok "$name: server starts"; continue; }
    out=$("$PY" - "$URI" <<'EOF'
import nbd, os, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
K, M = 4096, 1 << 20
half = os.urandom(K // 2)
blocks = [os.urandom(K // 2) + half for i in range(256)]   # compressible by half
rnd = random.Random(1)
want = {}
for copy in range(3):
    order = list(range(0, 256, 16))
    rnd.shuffle(order)
    for first in order:
        data = b"".join(blocks[first:first + 16])
        pos = copy * 4 * M + first * K
        h.aio_pwrite(data, pos)
        want[pos] = data
    while h.aio_in_flight() > 0:
        h.poll(-1)
h.flush()
print(int(all(h.pread(len(d), p) == d for p, d in want.items())))
EOF
)
    check "$name: 3 copies of 256 colliding blocks, written together, read back" test "$out" = 1
    n=$(grep -c "XXH3 collision" "$SERVER_LOG")
    check "$name: collisions were met and stored apart ($n logged)" test "$n" -gt 0
    check "$name: no write was refused and no damage reported" \
        bash -c '! grep -E "refused|damaged|does not decompress" "$1"' _ "$SERVER_LOG"
    stop_server
    out=$(USBD_DEDUP_TEST_HASH_BYTES=1 "${FSCK[@]}" "$dir" --verify-data 2>&1)
    check "$name: the store check with --verify-data is clean ($(tail -1 <<<"$out"))" test $? = 0
done

finish

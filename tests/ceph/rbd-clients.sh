#!/usr/bin/env bash
# devices/rbddisk.lua on a real single-node Ceph cluster (memstore): real NBD
# clients, --check, the soak, ext4, a stack over it, Ceph's own tools
# reading what usbd-lua wrote and the other way round, and the start-up
# errors a user meets.
. "$(dirname "$0")/lib.sh"
start_cluster memstore
qio() { qemu-io -f raw "$URI" "$@" 2>&1; }

# ---- Real clients ------------------------------------------------------
start_server rbd devices/rbddisk.lua "${RBD_ARGS[@]}" image=disk size=128M ||
    { not_ok "rbddisk serves a new image"; finish; exit 1; }
ok "rbddisk creates and serves a new 128M image"
check "rbd info: the image exists, 128 MiB, with the exclusive-lock feature" \
    bash -c 'rbd -c "$1" info disk | grep -q "size 128 MiB" && rbd -c "$1" info disk | grep -q exclusive-lock' _ "$CONF"
info=$(nbdinfo --json "$URI")
check "nbdinfo: size 128M" grep -q '"export-size": 134217728' <<<"$info"
check "nbdinfo: writable, trim, zero, flush" bash -c 'for k in is_read_only:false can_trim:true can_zero:true can_flush:true; do
    grep -q "\"${k%%:*}\": ${k#*:}" <<<"$1" || exit 1; done' _ "$info"
check "rbd status: usbd-lua watches the image" bash -c 'rbd -c "$1" status disk | grep -q "watcher="' _ "$CONF"

head -c 48M /dev/urandom >"$SCRATCH/in.bin"
check "nbdcopy writes 48M (4 connections)" nbdcopy --connections=4 --flush "$SCRATCH/in.bin" "$URI"
nbdcopy "$URI" "$SCRATCH/out.bin"
check "nbdcopy reads back the same bytes" cmp -n $((48 << 20)) "$SCRATCH/in.bin" "$SCRATCH/out.bin"
check "the rest of the image reads as zeroes" cmp -n $((80 << 20)) -i $((48 << 20)):0 "$SCRATCH/out.bin" /dev/zero

b=$((60 << 20))
out=$(qio -c "write -P 0x5a $((b + 1)) 4097" -c "read -P 0x5a $((b + 1)) 4097" -c "read -P 0 $b 1" -c "read -P 0 $((b + 4098)) 511")
check "qemu-io: an unaligned write reads back, its neighbours untouched" \
    bash -c 'grep -q "^read 4097/4097 bytes at offset 62914561" <<<"$1" && ! grep -q "verification failed" <<<"$1"' _ "$out"
out=$(qio -c 'write -P 0x11 70000123 777' -c 'write -z 70000200 100' -c 'read -P 0x11 70000123 77' -c 'read -P 0 70000200 100' -c 'read -P 0x11 70000300 600')
check "qemu-io: odd-sized write with zeroes in its middle" bash -c '[ $(grep -c "^read" <<<"$1") = 3 ] && ! grep -q "verification failed" <<<"$1"' _ "$out"
out=$(qio -c 'write -P 0x22 65M 6M' -c 'discard 65M 5000' -c 'discard 66M 4M' -c 'read -P 0 65M 5000' -c 'read -P 0x22 $((65 * 1048576 + 5000)) 1000' -c 'read -P 0 66M 4M' -c 'read -P 0x22 70M 1M')
check "qemu-io: discards (partial and whole objects) read as zeroes, the rest stays" \
    bash -c '! grep -qi "fail" <<<"$1" && [ $(grep -c "^read" <<<"$1") = 4 ]' _ "$out"
out=$(qio -c 'aio_write -P 0x44 72M 1M' -c 'aio_write -P 0x45 73M 1M' -c 'aio_write -P 0x46 74M 1M' -c 'aio_flush' -c 'read -P 0x44 72M 1M' -c 'read -P 0x45 73M 1M' -c 'read -P 0x46 74M 1M')
check "qemu-io: writes in flight together, flushed, read back" bash -c '! grep -qi "fail" <<<"$1" && [ $(grep -c "^read" <<<"$1") = 3 ]' _ "$out"

# The second server on the same image: one line, and quickly.
t0=$(date +%s%N)
out=$(timeout 60 "$USBD" -U "$SCRATCH/second.sock" devices/rbddisk.lua "${RBD_ARGS[@]}" image=disk 2>&1)
rc=$?; ms=$((($(date +%s%N) - t0) / 1000000))
check "a second server on the same image is refused in one line (${ms} ms): ${out}" \
    bash -c '[ "$1" = 1 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q "is in use: another client holds its exclusive lock" <<<"$2"' _ "$rc" "$out"
check "the first server still serves" bash -c 'qemu-io -f raw "$1" -c "read -P 0x44 72M 1M" | grep -q "^read"' _ "$URI"

# ---- rbd resize by another client: librbd tells the server -------------
wait_served() {  # until the server says it serves $1 bytes (15 s at most)
    for _ in $(seq 150); do grep -q "storage changed: serving $1 bytes" "$SERVER_LOG" && return; sleep 0.1; done
}
rbd -c "$CONF" resize --size 192M disk >/dev/null 2>&1
check "rbd resize while served: the image holds 192 MiB" bash -c 'rbd -c "$1" info disk | grep -q "size 192 MiB"' _ "$CONF"
wait_served 201326592
check "rbd resize, no signal: one line, the new size and the old" \
    grep -q "the device's storage changed: serving 201326592 bytes now (134217728 before)" "$SERVER_LOG"
check "rbd resize, no signal: new clients see 192 MiB" bash -c 'nbdinfo --size "$1" | grep -qx 201326592' _ "$URI"
out=$(qio -c 'write -P 0x77 190M 1M' -c 'read -P 0x77 190M 1M')
check "rbd resize, no signal: past the old end is written and read back" \
    bash -c '! grep -qi "fail" <<<"$1" && grep -q "^read 1048576" <<<"$1"' _ "$out"
kill -HUP "$SERVER_PID"
for _ in $(seq 100); do grep -q "SIGHUP: " "$SERVER_LOG" && break; sleep 0.1; done
check "SIGHUP after it: one line, the size unchanged" grep -q "SIGHUP: the device still holds 201326592 bytes" "$SERVER_LOG"
rbd -c "$CONF" resize --size 256M disk >/dev/null 2>&1
wait_served 268435456
check "rbd resize again: new clients see 256 MiB" bash -c 'nbdinfo --size "$1" | grep -qx 268435456' _ "$URI"
out=$(qio -c 'write -P 0x78 254M 1M' -c 'read -P 0x78 254M 1M' -c 'read -P 0x77 190M 1M')
check "rbd resize again: the new end is written and read back, the old data stays" \
    bash -c '! grep -qi "fail" <<<"$1" && [ $(grep -c "^read 1048576" <<<"$1") = 2 ]' _ "$out"
rbd -c "$CONF" resize --allow-shrink --size 160M disk >/dev/null 2>&1
wait_served 167772160
check "rbd resize --allow-shrink: new clients see 160 MiB" \
    bash -c 'nbdinfo --size "$1" | grep -qx 167772160' _ "$URI"

# ---- Many requests in flight, no thread per request ----------------------
stop_server
start_server inflight -v devices/rbddisk.lua "${RBD_ARGS[@]}" image=disk || not_ok "rbddisk -v serves"
threads_idle=$(ls /proc/"$SERVER_PID"/task | wc -l)
fio --name=qd32 --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --offset=100M --size=8M \
    --time_based --runtime=3 --norandommap >/dev/null 2>&1 &
sleep 1.5
threads_busy=$(ls /proc/"$SERVER_PID"/task | wc -l)
wait $!
stop_server
peak=$(grep -oE 'at most [0-9]+ requests were in flight' "$SERVER_LOG" | grep -oE '[0-9]+')
check "fio at queue depth 32: ${peak:-?} requests in flight in librbd at once" test "${peak:-0}" -ge 16
check "and no thread per request: $threads_idle threads idle, $threads_busy under load" test "$threads_busy" -le $((threads_idle + 2))
start_server rbd devices/rbddisk.lua "${RBD_ARGS[@]}" image=disk || not_ok "rbddisk serves again"

# ---- Ceph's own tools read what usbd-lua wrote -------------------------
qio -c flush >/dev/null
nbdcopy "$URI" "$SCRATCH/now.bin"
rbd_ export disk "$SCRATCH/export.bin" >/dev/null 2>&1
check "rbd export (while served) reads the 48M nbdcopy wrote, byte for byte" cmp -n $((48 << 20)) "$SCRATCH/in.bin" "$SCRATCH/export.bin"
check "rbd export reads the whole image as NBD does, qemu-io's writes included" cmp "$SCRATCH/now.bin" "$SCRATCH/export.bin"

stop_server
check "SIGTERM: the server exits 0" test "$SERVER_STATUS" = 0
check "SIGTERM: the exclusive lock is released (rbd lock ls is empty)" \
    bash -c '[ -z "$(rbd -c "$1" lock ls disk)" ]' _ "$CONF"

# ---- and usbd-lua serves what rbd import wrote --------------------------
head -c 20M /dev/urandom >"$SCRATCH/imp.bin"
head -c 3M /dev/zero >>"$SCRATCH/imp.bin"; head -c 1M /dev/urandom >>"$SCRATCH/imp.bin"
check "rbd import of a 24M file" bash -c 'rbd -c "$1" import "$2" imported >/dev/null 2>&1' _ "$CONF" "$SCRATCH/imp.bin"
rbd_ snap create imported@before >/dev/null 2>&1
start_server imp devices/rbddisk.lua "${RBD_ARGS[@]}" image=imported || not_ok "rbddisk serves the imported image"
nbdcopy "$URI" "$SCRATCH/imp-out.bin"
check "usbd-lua serves the imported image byte for byte" cmp "$SCRATCH/imp.bin" "$SCRATCH/imp-out.bin"
out=$(qio -c 'write -P 0x77 0 1M')
stop_server

# A snapshot: read-only, and as it was before the write above.
start_server snap devices/rbddisk.lua "${RBD_ARGS[@]}" image=imported snap=before || not_ok "rbddisk serves a snapshot"
check "nbdinfo: a snapshot is read-only" bash -c 'nbdinfo --json "$1" | grep -q "\"is_read_only\": true"' _ "$URI"
nbdcopy "$URI" "$SCRATCH/snap-out.bin"
check "the snapshot holds the imported bytes, not the later write" cmp "$SCRATCH/imp.bin" "$SCRATCH/snap-out.bin"
check "a write to the snapshot is refused" bash -c 'qemu-io -f raw "$1" -c "write 0 4k" 2>&1 | grep -qi "fail\|denied\|read-only"' _ "$URI"
stop_server

# ---- The contract, the soak, ext4, a stack -----------------------------
# (the cluster named by CEPH_CONF, not conf=)
out=$(CEPH_CONF="$CONF" "$USBD" --check devices/rbddisk.lua image=checked size=32M 2>&1)
check "CEPH_CONF=... usbd-lua --check devices/rbddisk.lua: $(tail -1 <<<"$out")" bash -c '[ "$(tail -1 <<<"$1")" != "" ] && ! grep -q "^not ok" <<<"$1" && grep -q "0 failed" <<<"$1"' _ "$out"

out=$(SOAK_SECONDS=${SOAK_SECONDS:-8} "$TOP/tests/soak/run.sh" devices/rbddisk.lua "${RBD_ARGS[@]}" image=soak size=64M 2>&1)
check "the soak on rbddisk: $(grep -oE '[0-9]+ mismatches' <<<"$out" | head -1), $(grep -oE '[0-9]+ bytes verified in all' <<<"$out")" \
    bash -c 'grep -q "^ok - rbddisk: .*connections" <<<"$1" && grep -q " 0 mismatches" <<<"$1" && grep -q "0 failed" <<<"$1"' _ "$out"
grep -E '^(not ok|ok)' <<<"$out" | sed 's/^/# soak: /'

# extents (block status, whole objects) straight from the device object
rbd_ create --size 8M nolock --image-feature layering >/dev/null 2>&1  # no object map, no lock
out=$(cd "$TOP" && luajit - "$CONF" <<'LUA' 2>&1
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local usbd = require "usbd"
local dev = dofile("devices/rbddisk.lua").open { conf = arg[1], image = "extents", size = "64M" }
local b = usbd.buffer(4096); b:fill(1)
dev:write_at(b, 20 * 2^20 + 5)  -- not flushed: extents must see it all the same
print(table.concat(dev:extents(0, 64 * 2^20), " "))
print(table.concat(dev:extents(21 * 2^20, 8 * 2^20), " "))
dev:close()
dev = dofile("devices/rbddisk.lua").open { conf = arg[1], image = "nolock", exclusive = "false" }
print(table.concat(dev:extents(0, 2^20), " "))
dev:close()
LUA
)
check "extents: a hole, the 4M object written, a hole ($(head -1 <<<"$out" | tr -d '\n'))" \
    test "$(head -1 <<<"$out")" = "$((20 << 20)) 3 $((4 << 20)) 0 $((40 << 20)) 3"
check "extents from inside an object: data to its end, then a hole, no further than asked" \
    test "$(sed -n 2p <<<"$out")" = "$((3 << 20)) 0 $((5 << 20)) 3"
check "extents without the fast-diff object map: all data, no object visited" \
    test "$(sed -n 3p <<<"$out")" = "$((1 << 20)) 0"

EXTRA_CLEANUP=blockdev_detach
start_server ext4 devices/rbddisk.lua "${RBD_ARGS[@]}" image=ext4 size=256M || not_ok "rbddisk serves the ext4 image"
blockdev_attach
check "ext4 on rbddisk: mkfs.ext4 and mount through nbdfuse and $LOOP" \
    bash -c 'mkfs.ext4 -q -F "$1" && mount -t ext4 "$1" "$2"' _ "$LOOP" "$MNT"
mkdir -p "$MNT/t/a" "$MNT/t/b"
for i in $(seq 100); do head -c $((RANDOM % 30000 + 1)) /dev/urandom >"$MNT/t/a/f$i"; done
for i in 1 2; do head -c $((i * 8))M /dev/urandom >"$MNT/t/b/big$i"; done
cp -r "$MNT/t/a" "$MNT/t/b/copy"; rm "$MNT/t/a/f1"*
(cd "$MNT" && find t -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
umount "$MNT"
check "ext4 on rbddisk: e2fsck -fn clean after $(wc -l <"$SCRATCH/sums") files" bash -c 'e2fsck -fn "$1" >"$2" 2>&1' _ "$LOOP" "$SCRATCH/fsck.log"
check "ext4 on rbddisk: every checksum matches after a remount" \
    bash -c 'mount -t ext4 "$1" "$2" && (cd "$2" && sha256sum --quiet -c "$3") && umount "$2"' _ "$LOOP" "$MNT" "$SCRATCH/sums"
blockdev_detach
stop_server
check "ext4 on rbddisk: the server exits 0" test "$SERVER_STATUS" = 0
rbd_ export ext4 "$SCRATCH/ext4.img" >/dev/null 2>&1
check "rbd export of the ext4 image: e2fsck clean there too" bash -c 'e2fsck -fn "$1" >/dev/null 2>&1' _ "$SCRATCH/ext4.img"

# A stack: the copy-on-write overlay in front of rbddisk leaves the image as it was.
before=$(rbd_ export imported - 2>/dev/null | sha256sum)
start_server cow cowdisk -- rbddisk "${RBD_ARGS[@]}" image=imported readonly=true ||
    not_ok "cowdisk over rbddisk serves"
out=$(qio -c 'write -P 0x66 1000 3M' -c 'read -P 0x66 1000 3M')
check "cowdisk over rbddisk: writes read back" bash -c '! grep -qi fail <<<"$1" && grep -q "^read 3145728" <<<"$1"' _ "$out"
stop_server
check "cowdisk over rbddisk: the image itself is unchanged" test "$(rbd_ export imported - 2>/dev/null | sha256sum)" = "$before"

# ---- Start-up errors: one line each -------------------------------------
# startup_error WHAT EXPECTED ARGS...: usbd-lua exits 1 with one line matching EXPECTED.
startup_error() {
    local what=$1 expected=$2; shift 2
    local out rc t0=$SECONDS
    out=$(timeout 60 "$USBD" -U "$SCRATCH/err.sock" devices/rbddisk.lua "$@" 2>&1)
    rc=$?
    check "$what ($((SECONDS - t0)) s): $out" \
        bash -c '[ "$1" = 1 ] && [ "$(wc -l <<<"$2")" = 1 ] && grep -q -- "$3" <<<"$2"' _ "$rc" "$out" "$expected"
}
startup_error "a missing pool" "pool nopool does not exist" "${RBD_ARGS[@]}" pool=nopool image=x size=1M
startup_error "a missing image" "image rbd/nothere does not exist (give size=SIZE" "${RBD_ARGS[@]}" image=nothere
startup_error "a missing snapshot" "snapshot gone does not exist" "${RBD_ARGS[@]}" image=imported snap=gone
startup_error "no image=" "rbddisk needs image=NAME" "${RBD_ARGS[@]}"
startup_error "a missing conf file" "cannot read the Ceph configuration" conf="$SCRATCH/none.conf" image=x
startup_error "an image without the exclusive-lock feature" "no exclusive-lock feature" "${RBD_ARGS[@]}" image=nolock
ceph -c "$CONF" auth get-or-create client.limited mon 'allow r' osd 'allow rwx pool=elsewhere' 2>/dev/null >>"$CEPH_DIR/keyring"
startup_error "a client without caps on the pool" "permission denied" "${RBD_ARGS[@]}" id=limited image=disk
startup_error "an unknown client" "permission denied" "${RBD_ARGS[@]}" id=nobody image=disk
sed "s/^mon host = .*/mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]/" "$CONF" >"$SCRATCH/unreachable.conf"
t0=$SECONDS
startup_error "an unreachable cluster, timeout=3" "cannot connect to the Ceph cluster" conf="$SCRATCH/unreachable.conf" image=disk timeout=3
check "the unreachable cluster is given up within 10 s" test $((SECONDS - t0)) -le 10

finish

#!/usr/bin/env bash
# devices/rbddisk.lua when Ceph fails under it (bluestore, so that data
# outlives the daemons): the OSD stopped while a client writes and started
# again; an I/O timeout reaching the client as an error while the server
# goes on; the whole cluster killed and started again.
. "$(dirname "$0")/lib.sh"
start_cluster bluestore
qio() { qemu-io -f raw "$URI" "$@" 2>&1; }
alive() { kill -0 "$SERVER_PID" 2>/dev/null; }

start_server faults devices/rbddisk.lua "${RBD_ARGS[@]}" image=f size=256M ||
    { not_ok "rbddisk serves"; finish; exit 1; }
out=$(qio -c 'write -P 0x11 0 32M' -c 'flush')
check "32M written and flushed before any fault" grep -q '^wrote 33554432/33554432' <<<"$out"

# ---- The OSD stops while a client writes, and comes back ----------------
fio --name=during --ioengine=nbd --uri="$URI" --rw=randwrite --bs=64k --iodepth=16 \
    --offset=64M --size=64M --time_based --runtime=6 --output="$SCRATCH/fio.out" >/dev/null 2>&1 &
FIO_PID=$!
EXTRA_CLEANUP='kill $FIO_PID 2>/dev/null'
sleep 2
"$CLUSTER" stop-osd "$CEPH_DIR"
check "the OSD is stopped while fio writes" bash -c '! pgrep -f "ceph-osd -c $1" >/dev/null' _ "$CONF"
sleep 6
check "with the OSD gone, the server is alive" alive
check "with the OSD gone, fio's requests wait (fio still running, past its 6 s)" kill -0 "$FIO_PID"
"$CLUSTER" start-osd "$CEPH_DIR"
t0=$SECONDS
wait "$FIO_PID"; rc=$?; EXTRA_CLEANUP=:
check "the OSD back: every request in flight completes, fio exits 0 after $((SECONDS - t0)) s (rc $rc; $(grep -oE 'IOPS=[^,]*' "$SCRATCH/fio.out"))" \
    bash -c '[ "$1" = 0 ] && ! grep -qi "error" "$2"' _ "$rc" "$SCRATCH/fio.out"
check "the server is still alive" alive
out=$(qio -c 'read -P 0x11 0 32M')
check "what was written and flushed before the stop is intact" bash -c 'grep -q "^read 33554432/33554432" <<<"$1" && ! grep -q "fail" <<<"$1"' _ "$out"
out=$(qio -c 'write -P 0x22 40M 4M' -c 'flush' -c 'read -P 0x22 40M 4M')
check "new writes after the OSD's return read back" bash -c '! grep -qi fail <<<"$1" && grep -q "^read 4194304" <<<"$1"' _ "$out"
stop_server
check "the server exits 0 afterwards" test "$SERVER_STATUS" = 0

# ---- io_timeout: an I/O error reaches the client, the server goes on ---
start_server timeouts devices/rbddisk.lua "${RBD_ARGS[@]}" image=f io_timeout=2 ||
    not_ok "rbddisk io_timeout=2 serves"
"$CLUSTER" stop-osd "$CEPH_DIR"
t0=$SECONDS
out=$(timeout 60 qemu-io -f raw "$URI" -c 'write -P 0x33 100M 1M' 2>&1)
check "OSD down, io_timeout=2: the write fails with an error after $((SECONDS - t0)) s: $(head -1 <<<"$out")" \
    bash -c 'grep -qi "failed" <<<"$1" && ! grep -q "^wrote" <<<"$1"' _ "$out"
check "io_timeout=2: the server is alive" alive
"$CLUSTER" start-osd "$CEPH_DIR"
ok=
for _ in $(seq 30); do  # until librbd has its OSD and its lock again
    out=$(timeout 60 qemu-io -f raw "$URI" -c 'write -P 0x33 100M 1M' -c 'flush' -c 'read -P 0x33 100M 1M' 2>&1)
    grep -q '^read 1048576' <<<"$out" && ! grep -qi fail <<<"$out" && { ok=1; break; }
    sleep 1
done
check "io_timeout=2: the OSD back, the same server writes and reads again" test -n "$ok"
check "io_timeout=2: the first 32M are intact" bash -c 'qemu-io -f raw "$1" -c "read -P 0x11 0 32M" 2>&1 | grep -q "^read 33554432"' _ "$URI"
stop_server
check "io_timeout=2: the server exits 0" test "$SERVER_STATUS" = 0

# ---- The server killed (-9): the next one takes the image's lock over ----
start_server killed devices/rbddisk.lua "${RBD_ARGS[@]}" image=f || not_ok "rbddisk serves again"
out=$(qio -c 'write -P 0x44 150M 1M' -c 'flush')
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
t0=$SECONDS
"$USBD" -U "$SCRATCH/next.sock" devices/rbddisk.lua "${RBD_ARGS[@]}" image=f >"$SCRATCH/next.log" 2>&1 &
SERVER_PID=$!; URI="nbd+unix:///?socket=$SCRATCH/next.sock"
until nbdinfo --can connect "$URI" 2>/dev/null || [ $((SECONDS - t0)) -gt 60 ] || ! kill -0 "$SERVER_PID" 2>/dev/null; do sleep 0.2; done
check "after kill -9 of the server, the next one takes the lock over ($((SECONDS - t0)) s: Ceph's watch timeout)" alive
check "and reads what the killed one acknowledged and flushed" \
    bash -c 'qemu-io -f raw "$1" -c "read -P 0x44 150M 1M" 2>&1 | grep -q "^read 1048576"' _ "$URI"
nbdcopy "$URI" "$SCRATCH/before.bin"
stop_server

# ---- The whole cluster killed (-9) and started again: bluestore keeps it
for d in osd.0 mon.a; do
    pid=$(cat "$CEPH_DIR/$d.pid") && grep -qF "$CONF" "/proc/$pid/cmdline" && kill -9 "$pid"
done
sleep 1
check "the cluster's daemons are gone" bash -c '! pgrep -f "ceph-(mon|osd) -c $1" >/dev/null' _ "$CONF"
t0=$SECONDS
check "the cluster starts again" "$CLUSTER" start "$CEPH_DIR"
echo "# restarted in $((SECONDS - t0)) s"
start_server again devices/rbddisk.lua "${RBD_ARGS[@]}" image=f || not_ok "rbddisk serves after the restart"
nbdcopy "$URI" "$SCRATCH/after.bin"
check "after kill -9 and a restart, the image is byte for byte what it was" cmp "$SCRATCH/before.bin" "$SCRATCH/after.bin"
stop_server
check "and the server exits 0" test "$SERVER_STATUS" = 0

finish

# Guest suite: src/server/kernel.c on its own, through tests/kernel/attach-test.c
# (a RAM disk served over the socketpair). Sourced by guest-all.sh after
# lib.sh; $1 is the attach-test binary.

suite_attach() {
    AT=$1
    D=/dev/nbd0
    if [ ! -x "$AT" ]; then not_ok "attach: attach-test was built ($AT)"; return; fi

    out=$("$AT" --find 2>&1)
    check "attach: kernel_find_free picks /dev/nbd0 on an idle driver" test "$out" = /dev/nbd0

    "$AT" $D 256M 2>/tmp/at0.log &
    P=$!
    if wait_until 30 attached $D; then
        ok "attach: $D attached"
    else
        not_ok "attach: $D attached"; note "$(cat /tmp/at0.log)"; kill -9 $P; return
    fi
    check "attach: /sys/block/nbd0/pid names a thread of the server" test -d "/proc/$P/task/$(nbd_pid $D)"
    check "attach: size 256M" test "$(blockdev --getsize64 $D)" = 268435456
    check "attach: logical block size 4096" test "$(blockdev --getss $D)" = 4096
    check "attach: TRIM advertised (discard_max_bytes > 0)" \
        test "$(cat /sys/block/nbd0/queue/discard_max_bytes)" -gt 0
    out=$("$AT" --find 2>&1)
    check "attach: kernel_find_free skips the busy nbd0" test "$out" = /dev/nbd1

    "$AT" $D 1M 2>/tmp/e.log; rc=$?
    check "attach: device in use: exit 1, one line naming pid $P" \
        sh -c "[ $rc = 1 ] && [ \$(wc -l </tmp/e.log) = 1 ] && grep -q 'already in use by process $P (attach-test)' /tmp/e.log"
    note "$(cat /tmp/e.log)"
    "$AT" /dev/nbd9 1M 2>/tmp/e.log; rc=$?
    check "attach: missing /dev/nbd9: one line 'no such device'" \
        sh -c "[ $rc = 1 ] && [ \$(wc -l </tmp/e.log) = 1 ] && grep -q 'no such device' /tmp/e.log && grep -q nbd3 /tmp/e.log"
    note "$(cat /tmp/e.log)"
    "$AT" /dev/null 1M 2>/tmp/e.log; rc=$?
    check "attach: /dev/null: one line 'not an nbd device'" \
        sh -c "[ $rc = 1 ] && [ \$(wc -l </tmp/e.log) = 1 ] && grep -q 'not an nbd device' /tmp/e.log"
    note "$(cat /tmp/e.log)"
    setpriv --reuid 65534 --regid 65534 --clear-groups "$AT" /dev/nbd1 1M 2>/tmp/e.log; rc=$?
    check "attach: not root: one line 'needs root'" \
        sh -c "[ $rc = 1 ] && [ \$(wc -l </tmp/e.log) = 1 ] && grep -q 'needs root' /tmp/e.log"
    note "$(cat /tmp/e.log)"
    "$AT" --bs 1000 /dev/nbd1 1M 2>/tmp/e.log; rc=$?
    check "attach: block size 1000: one line 'refused block size'" \
        sh -c "[ $rc = 1 ] && [ \$(wc -l </tmp/e.log) = 1 ] && grep -q 'refused block size' /tmp/e.log"
    note "$(cat /tmp/e.log)"
    check "attach: nbd1 left free after the refused attach" detached /dev/nbd1

    fs_cycle $D attach
    check "attach: blkdiscard (TRIM) on the whole device" blkdiscard $D
    check "attach: reads zeros after TRIM" \
        sh -c "[ \$(head -c 1048576 $D | tr -d '\\000' | wc -c) = 0 ]"

    kill -TERM $P
    wait_exit $P 60
    check "attach: SIGTERM: server exits 0" test "$EXIT_STATUS" = 0
    check "attach: $D detached (no pid, size 0)" wait_until 10 detached $D
    [ "$EXIT_STATUS" = 0 ] || note "$(cat /tmp/at0.log)"

    # Dirty data in a mounted filesystem reaches the server on SIGTERM.
    "$AT" --dump /tmp/dump.img $D 64M 2>/tmp/at1.log &
    P=$!
    check "attach: attach again for the dirty-data test" wait_until 30 attached $D
    mkdir -p /tmp/mnt-dirty
    mkfs.ext4 -q -F $D && mount -t ext4 $D /tmp/mnt-dirty &&
        head -c 3000000 /dev/urandom >/tmp/mnt-dirty/dirty &&
        sha256sum </tmp/mnt-dirty/dirty >/tmp/dirty.sum
    kill -TERM $P
    wait_exit $P 60
    check "attach: SIGTERM with a mounted, dirty filesystem: exit 0" test "$EXIT_STATUS" = 0
    timeout 30 umount /tmp/mnt-dirty 2>/dev/null || timeout 30 umount -l /tmp/mnt-dirty
    check "attach: $D detached after umount" wait_until 10 detached $D
    "$AT" --load /tmp/dump.img $D 64M 2>/tmp/at2.log &
    P=$!
    check "attach: attach the dumped disk" wait_until 30 attached $D
    check "attach: mount the dumped disk" mount -t ext4 $D /tmp/mnt-dirty
    check "attach: dirty file was written through before the disconnect" \
        sh -c "sha256sum </tmp/mnt-dirty/dirty | cmp -s - /tmp/dirty.sum"
    umount /tmp/mnt-dirty
    check "attach: e2fsck -fn clean" e2fsck -fn $D
    kill -INT $P
    wait_exit $P 60
    check "attach: SIGINT: server exits 0" test "$EXIT_STATUS" = 0
    rm -f /tmp/dump.img

    # Read-only flag reaches the kernel.
    "$AT" --ro /dev/nbd3 16M 2>/tmp/at3.log &
    P=$!
    check "attach: read-only attach of nbd3" wait_until 30 attached /dev/nbd3
    check "attach: nbd3 is read-only to the kernel" test "$(blockdev --getro /dev/nbd3)" = 1
    check "attach: writes to nbd3 fail" sh -c "! dd if=/dev/zero of=/dev/nbd3 bs=4096 count=1 oflag=direct 2>/dev/null"
    kill -TERM $P
    wait_exit $P 60
    check "attach: read-only server exits 0" test "$EXIT_STATUS" = 0

    # A server that ignores NBD_CMD_DISC is cut off after the grace period.
    "$AT" --ignore-disc /dev/nbd2 16M 2>/tmp/at4.log &
    P=$!
    check "attach: attach nbd2 with a server that ignores NBD_CMD_DISC" wait_until 30 attached /dev/nbd2
    kill -TERM $P
    wait_exit $P 40
    check "attach: ... it is disconnected anyway and exits 0" test "$EXIT_STATUS" = 0
    check "attach: ... with a message saying so" grep -q 'did not close the connection' /tmp/at4.log
    check "attach: nbd2 detached" wait_until 10 detached /dev/nbd2
    check "attach: all four devices free at the end" \
        sh -c "for d in 0 1 2 3; do [ ! -e /sys/block/nbd\$d/pid ] && [ \$(cat /sys/block/nbd\$d/size) = 0 ] || exit 1; done"
}

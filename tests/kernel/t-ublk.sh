# Guest suite: usbd-lua on /dev/ublkbN (the kernel's ublk driver, 6.12
# guest only: KERNEL=6.12 tests/kernel/run.sh ublk). Sourced by
# guest-all.sh after lib.sh and t-usbd.sh.

ublk_up() { [ -e "/sys/block/${1##*/}" ] && grep -q "as $1 (ublk" "$2"; }
ublk_gone() { [ ! -e "/sys/block/${1##*/}" ] && [ ! -e "/dev/ublkc${1##*/ublkb}" ]; }

# attach_ublk TAG DEV LOG ARG...: start usbd-lua and wait for the device.
attach_ublk() {
    _tag=$1 _dev=$2 _log=$3; shift 3
    start_usbd "$_log" "$@"
    if wait_until 60 ublk_up "$_dev" "$_log"; then
        ok "$_tag: usbd-lua $* serves $_dev"
        return 0
    fi
    not_ok "$_tag: usbd-lua $* serves $_dev"
    note "$(tail -n 20 "$_log")"
    kill -9 $U 2>/dev/null; wait $U 2>/dev/null
    return 1
}

# stop_ublk TAG DEV LOG: SIGTERM, exit 0, the device deleted.
stop_ublk() {
    kill -TERM $U
    wait_exit $U 60
    check "$1: SIGTERM: usbd-lua exits 0" test "$EXIT_STATUS" = 0
    [ "$EXIT_STATUS" = 0 ] || note "$(tail -n 20 "$3")"
    check "$1: $2 and its character device are deleted" wait_until 10 ublk_gone "$2"
}

suite_ublk() {
    if [ ! -e /dev/ublk-control ]; then
        expect_error ublk "no ublk driver" devices/ramdisk.lua /dev/ublkb0 size=16M
        skip "ublk: no ublk driver in this kernel (KERNEL=6.12 tests/kernel/run.sh ublk)"
        return
    fi
    D=/dev/ublkb0
    if attach_ublk ublk-ramdisk $D /tmp/ub-ram.log devices/ramdisk.lua $D size=256M; then
        check "ublk-ramdisk: size 256M" test "$(blockdev --getsize64 $D)" = 268435456
        check "ublk-ramdisk: a write reads back" sh -c "
            head -c 1048576 /dev/urandom >/tmp/ub.pat &&
            dd if=/tmp/ub.pat of=$D bs=64k seek=3 oflag=direct 2>/dev/null &&
            dd if=$D bs=64k skip=3 count=16 iflag=direct 2>/dev/null | cmp -s - /tmp/ub.pat"
        check "ublk-ramdisk: discard advertised" test "$(cat /sys/block/ublkb0/queue/discard_max_bytes)" -gt 0
        expect_error ublk-ramdisk "in use by process $U" devices/ramdisk.lua $D size=16M
        fs_cycle $D ublk-ramdisk
        stop_ublk ublk-ramdisk $D /tmp/ub-ram.log
    fi
    F=/tmp/ublk-file.img
    rm -f $F
    truncate -s 128M $F
    if attach_ublk ublk-filedisk $D /tmp/ub-file.log devices/filedisk.lua $D path=$F size=128M; then
        fs_cycle $D ublk-filedisk
        # This kernel's ublk cannot change a device's size: SIGHUP after
        # the file grew says so in one line and the device stays as it is.
        truncate -s 192M $F
        kill -HUP $U
        check "ublk-filedisk: SIGHUP: one line says ublk cannot resize here" \
            wait_until 10 grep -q "SIGHUP: still serving 134217728 bytes: .*cannot change a device's size" /tmp/ub-file.log
        check "ublk-filedisk: ... and $D keeps its size" test "$(cat /sys/block/${D##*/}/size)" = 262144
        stop_ublk ublk-filedisk $D /tmp/ub-file.log
        check "ublk-filedisk: the backing file holds a clean filesystem" e2fsck -fn $F
        truncate -s 128M $F  # as the tests below expect
    fi
    S=/tmp/ublk-dedup
    rm -rf $S
    if attach_ublk ublk-dedupdisk $D /tmp/ub-dedup.log devices/dedupdisk.lua $D dir=$S size=256M; then
        fs_cycle $D ublk-dedupdisk
        stop_ublk ublk-dedupdisk $D /tmp/ub-dedup.log
        check "ublk-dedupdisk: the store check is clean" luajit "$TOP/tools/dedup-fsck.lua" $S
    fi
    rm -rf $S

    # -r: read-only to the kernel.
    if attach_ublk ublk-ro $D /tmp/ub-ro.log -r devices/ramdisk.lua $D size=16M; then
        check "ublk-ro: read-only to the kernel" test "$(blockdev --getro $D)" = 1
        check "ublk-ro: writes fail" sh -c "! dd if=/dev/zero of=$D bs=4096 count=1 oflag=direct 2>/dev/null"
        stop_ublk ublk-ro $D /tmp/ub-ro.log
    fi

    # SIGTERM with a mounted, dirty filesystem: written back first.
    M=/tmp/mnt-ublk
    mkdir -p $M
    if attach_ublk ublk-term $D /tmp/ub-t1.log devices/filedisk.lua $D path=$F size=128M; then
        if mount -t ext4 $D $M; then
            head -c 3000000 /dev/urandom >$M/dirty
            sha256sum <$M/dirty >/tmp/ub-dirty.sum
        fi
        kill -TERM $U
        wait_exit $U 60
        check "ublk-term: SIGTERM with a mounted filesystem: exit 0 (status $EXIT_STATUS)" test "$EXIT_STATUS" = 0
        [ "$EXIT_STATUS" = 0 ] || note "$(tail -n 20 /tmp/ub-t1.log)"
        timeout 30 umount $M 2>/dev/null || timeout 30 umount -l $M
        check "ublk-term: the device is deleted once unmounted" wait_until 10 ublk_gone $D
        if attach_ublk ublk-term $D /tmp/ub-t2.log devices/filedisk.lua $D path=$F size=128M; then
            if mount -t ext4 $D $M; then
                check "ublk-term: unsynced data written back before the stop" \
                    sh -c "sha256sum <$M/dirty | cmp -s - /tmp/ub-dirty.sum"
                umount $M
            else
                not_ok "ublk-term: mount after SIGTERM"
            fi
            stop_ublk ublk-term $D /tmp/ub-t2.log
        fi
    fi

    # kill -9 during writes and reads: errors, no hang; a restart takes the
    # device number again, and what was synced before the kill is there.
    if attach_ublk ublk-kill $D /tmp/ub-k1.log devices/filedisk.lua $D path=$F size=128M; then
        mkfs.ext4 -q -F $D && mount -t ext4 $D $M && head -c 5000000 /dev/urandom >$M/kept &&
            sha256sum <$M/kept >/tmp/ub-kept.sum && sync && umount $M
        check "ublk-kill: a file written and synced" test -s /tmp/ub-kept.sum
        dd if=/dev/urandom of=$D bs=64k seek=1024 count=100000 oflag=direct 2>/dev/null &
        W=$!
        dd if=$D of=/dev/null bs=4k iflag=direct 2>/dev/null &
        R=$!
        sleep 2
        kill -9 $U
        wait $U 2>/dev/null
        wait_exit $W 60
        check "ublk-kill: the writer ends with an error, not a hang (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        wait_exit $R 60
        check "ublk-kill: the reader ends with an error, not a hang (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        check "ublk-kill: the block device goes away" wait_until 30 test ! -e /sys/block/ublkb0
        # The dead server's /dev/ublkc0 is still there: the restart must
        # delete it before it can add the device again.
        check "ublk-kill: the dead server's character device is left" test -e /dev/ublkc0
        if attach_ublk ublk-kill $D /tmp/ub-k2.log -v devices/filedisk.lua $D path=$F size=128M; then
            check "ublk-kill: the restart deleted the dead server's device" \
                grep -q 'deleting the device left by process' /tmp/ub-k2.log
            if mount -t ext4 $D $M; then
                check "ublk-kill: the synced file is intact after the restart" \
                    sh -c "sha256sum <$M/kept | cmp -s - /tmp/ub-kept.sum"
                umount $M
            else
                not_ok "ublk-kill: mount after the restart"
            fi
            stop_ublk ublk-kill $D /tmp/ub-k2.log
        fi
    fi

    # --ublk-recovery: a kill -9 during writes to a mounted filesystem, a
    # restart within the time: the device stays, the server takes it back,
    # the writes in flight are sent again, nothing fails.
    head -c 20000000 /dev/urandom >/tmp/ub-during.dat
    if attach_ublk ublk-recover $D /tmp/ub-r1.log --ublk-recovery 60 devices/filedisk.lua $D path=$F size=128M; then
        mkfs.ext4 -q -F $D && mount -t ext4 $D $M && head -c 5000000 /dev/urandom >$M/kept &&
            sha256sum <$M/kept >/tmp/ub-kept.sum && sync
        check "ublk-recover: a file written and synced" test -s /tmp/ub-kept.sum
        # One writer across the kill (its requests in flight, if any, are
        # sent again), one started after it (it must wait).
        dd if=/tmp/ub-during.dat of=$M/during bs=64k conv=fsync 2>/dev/null &
        W=$!
        sleep 1
        kill -9 $U
        wait $U 2>/dev/null
        dd if=/tmp/ub-during.dat of=$M/after bs=64k conv=fsync 2>/dev/null &
        A=$!
        sleep 2
        check "ublk-recover: the device stays after the kill -9" test -e /sys/block/ublkb0
        check "ublk-recover: a writer started after the kill waits, neither done nor failed" alive $A
        if attach_ublk ublk-recover $D /tmp/ub-r2.log -v --ublk-recovery 60 devices/filedisk.lua $D path=$F size=128M; then
            check "ublk-recover: the restart took the device back" grep -q "taken back from a server that died" /tmp/ub-r2.log
            wait_exit $W 120
            check "ublk-recover: the write across the kill succeeds (status $EXIT_STATUS)" test "$EXIT_STATUS" = 0
            wait_exit $A 120
            check "ublk-recover: the write that waited succeeds (status $EXIT_STATUS)" test "$EXIT_STATUS" = 0
            umount $M
            check "ublk-recover: the filesystem is clean" e2fsck -fn $D
            if mount -t ext4 $D $M; then
                check "ublk-recover: the file synced before the kill is intact" \
                    sh -c "sha256sum <$M/kept | cmp -s - /tmp/ub-kept.sum"
                check "ublk-recover: the file written across the kill is intact" cmp -s $M/during /tmp/ub-during.dat
                check "ublk-recover: the file that waited is intact" cmp -s $M/after /tmp/ub-during.dat
                umount $M
            else
                not_ok "ublk-recover: mount after the recovery"
            fi
            stop_ublk ublk-recover $D /tmp/ub-r2.log
        else
            kill -9 $W $A 2>/dev/null
            umount -l $M 2>/dev/null
        fi
    fi
    rm -f /tmp/ub-during.dat

    # A restart of another size cannot take the device back: one line says
    # so; and with no server for the time given, the watchdog deletes the
    # device: the reader that waited fails, nothing hangs.
    if attach_ublk ublk-recover-none $D /tmp/ub-r3.log --ublk-recovery 4 devices/ramdisk.lua $D size=64M; then
        kill -9 $U
        wait $U 2>/dev/null
        dd if=$D of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
        R=$!
        expect_error ublk-recover-none "cannot take back $D: it holds 67108864 bytes, the device 33554432" \
            --ublk-recovery 4 devices/ramdisk.lua $D size=32M
        wait_exit $R 60
        check "ublk-recover-none: the waiting reader fails once the time is up (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        check "ublk-recover-none: the watchdog deleted the device" wait_until 30 ublk_gone $D
    fi
    rm -f $F
}

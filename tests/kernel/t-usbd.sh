# Guest suites: the real usbd-lua on /dev/nbdN. Sourced by guest-all.sh
# after lib.sh, in $USBD_DIR (usbd-lua, lua/, devices/).

# start_usbd LOG ARG...: usbd-lua in the background, pid in U.
start_usbd() {
    _log=$1; shift
    "$USBD_DIR/usbd-lua" "$@" 2>"$_log" &
    U=$!
}

# stop_usbd TAG DEV LOG [mounted]: SIGTERM, exit 0 and detached (a mounted
# filesystem keeps the device's size until it is unmounted: then the caller
# checks that).
stop_usbd() {
    kill -TERM $U
    wait_exit $U 60
    check "$1: SIGTERM: usbd-lua exits 0" test "$EXIT_STATUS" = 0
    [ "$EXIT_STATUS" = 0 ] || note "$(tail -n 20 "$3")"
    [ "${4:-}" = mounted ] ||
        check "$1: $2 detached (no pid, size 0)" wait_until 10 detached "$2"
}

# attach_usbd TAG DEV LOG ARG...: start usbd-lua and wait for the device.
attach_usbd() {
    _tag=$1 _dev=$2 _log=$3; shift 3
    start_usbd "$_log" "$@"
    if wait_until 60 attached "$_dev"; then
        ok "$_tag: usbd-lua $* attached"
        return 0
    fi
    not_ok "$_tag: usbd-lua $* attached"
    note "$(tail -n 20 "$_log")"
    if alive $U; then
        note "usbd-lua is still running; its threads' kernel stacks:"
        for _t in /proc/$U/task/*; do
            note "$(cat $_t/comm) ${_t##*/}: $(tr '\n' ' ' <$_t/stack 2>/dev/null)"
        done
    else
        wait $U; note "usbd-lua exited with status $?"
    fi
    kill -9 $U 2>/dev/null; wait $U 2>/dev/null
    return 1
}

# expect_error TAG WORDS ARG...: usbd-lua ARG... fails at once with one
# line on stderr that says WORDS.
expect_error() {
    _tag=$1 _words=$2; shift 2
    timeout 60 "$USBD_DIR/usbd-lua" "$@" >/dev/null 2>/tmp/usbd-err.log; _rc=$?
    if [ $_rc != 0 ] && [ $_rc != 124 ] && one_line_error /tmp/usbd-err.log "$_words" &&
       grep -q '^usbd-lua: ' /tmp/usbd-err.log && ! grep -q 'usbd-lua: usbd-lua:' /tmp/usbd-err.log; then
        ok "$_tag: one-line error ($_words)"
    else
        not_ok "$_tag: one-line error ($_words) [exit $_rc]"
    fi
    note "$(head -n 5 /tmp/usbd-err.log)"
}

suite_ramdisk() {
    D=/dev/nbd0
    attach_usbd ramdisk $D /tmp/ramdisk.log devices/ramdisk.lua $D size=256M || return
    check "ramdisk: /sys/block/nbd0/pid names a thread of usbd-lua" test -d "/proc/$U/task/$(nbd_pid $D)"
    check "ramdisk: size 256M" test "$(blockdev --getsize64 $D)" = 268435456
    expect_error ramdisk "in use by process $U" devices/ramdisk.lua $D size=16M
    expect_error ramdisk "no such device" devices/ramdisk.lua /dev/nbd9 size=16M
    # No device named: the first free one (nbd0 is busy, so nbd1).
    _keep=$U
    if attach_usbd ramdisk /dev/nbd1 /tmp/ramdisk1.log devices/ramdisk.lua size=16M; then
        check "ramdisk: without a device, usbd-lua took the first free one" \
            test -d "/proc/$U/task/$(nbd_pid /dev/nbd1)"
        stop_usbd ramdisk /dev/nbd1 /tmp/ramdisk1.log
    fi
    # -r: the kernel sees a read-only device.
    if attach_usbd ramdisk /dev/nbd2 /tmp/ramdisk2.log -r devices/ramdisk.lua /dev/nbd2 size=16M; then
        check "ramdisk: -r: nbd2 is read-only to the kernel" test "$(blockdev --getro /dev/nbd2)" = 1
        check "ramdisk: -r: writes to nbd2 fail" \
            sh -c "! dd if=/dev/zero of=/dev/nbd2 bs=4096 count=1 oflag=direct 2>/dev/null"
        stop_usbd ramdisk /dev/nbd2 /tmp/ramdisk2.log
    fi
    # A disconnect from the kernel's side (what nbd-client -d does: the
    # NBD_DISCONNECT and NBD_CLEAR_SOCK ioctls, from another process) ends
    # usbd-lua cleanly too.
    if attach_usbd ramdisk /dev/nbd3 /tmp/ramdisk3.log devices/ramdisk.lua /dev/nbd3 size=16M; then
        luajit -e '
            local ffi = require "ffi"
            ffi.cdef "int open(const char *, int); int ioctl(int, unsigned long, ...);"
            local fd = ffi.C.open("/dev/nbd3", 2)
            assert(fd >= 0 and ffi.C.ioctl(fd, 0xab08) == 0)  -- NBD_DISCONNECT
            ffi.C.ioctl(fd, 0xab04)                           -- NBD_CLEAR_SOCK'
        wait_exit $U 60
        check "ramdisk: a kernel-side disconnect ends usbd-lua with exit 0" test "$EXIT_STATUS" = 0
        check "ramdisk: /dev/nbd3 detached" wait_until 10 detached /dev/nbd3
    fi
    # A device stuck in read_at: the first SIGTERM cannot finish; the second,
    # 1 s or more later, ends usbd-lua with status 1, ending the kernel's
    # connection first so that the reader gets an error instead of hanging,
    # and nbd3 is free.
    printf '%s\n' 'return { open = function() return {' \
        '  size = function() return 16777216 end,' \
        '  read_at = function(self, buf, pos) if pos >= 8388608 then while true do end end; buf:fill(0) end,' \
        '} end }' >/tmp/stuck.lua
    if attach_usbd stuck /dev/nbd3 /tmp/stuck.log /tmp/stuck.lua /dev/nbd3; then
        dd if=/dev/nbd3 of=/dev/null bs=4096 skip=3000 count=1 iflag=direct 2>/dev/null &
        _reader=$!
        sleep 1
        kill -TERM $U
        sleep 2   # a repeat sooner than 1 s after the first is ignored
        check "stuck: the first SIGTERM does not end usbd-lua" alive $U
        kill -TERM $U
        wait_exit $U 10
        check "stuck: the second SIGTERM ends usbd-lua with status 1" test "$EXIT_STATUS" = 1
        check "stuck: one line says the device did not return" grep -q 'did not return' /tmp/stuck.log
        check "stuck: /dev/nbd3 detached" wait_until 10 detached /dev/nbd3
        wait_exit $_reader 20
        check "stuck: the reader got an error, not a hang" sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
    fi
    U=$_keep
    fs_cycle $D ramdisk
    stop_usbd ramdisk $D /tmp/ramdisk.log
}

suite_filedisk() {
    FD=${1:-devices/filedisk.lua}
    if [ ! -f "$FD" ]; then
        skip "filedisk: $FD does not exist yet"
        return
    fi
    D=/dev/nbd1
    F=/tmp/filedisk.img
    rm -f $F
    truncate -s 128M $F
    attach_usbd filedisk $D /tmp/filedisk.log "$FD" $D path=$F size=128M || return
    check "filedisk: size 128M" test "$(blockdev --getsize64 $D)" = 134217728
    fs_cycle $D filedisk
    stop_usbd filedisk $D /tmp/filedisk.log
    check "filedisk: the backing file holds a clean filesystem" e2fsck -fn $F
    attach_usbd filedisk $D /tmp/filedisk2.log "$FD" $D path=$F size=128M || return
    fs_verify $D filedisk
    # SIGTERM with a mounted filesystem holding unsynced data: usbd-lua must
    # let the kernel write it back before disconnecting.
    mkdir -p /tmp/mnt-fd-dirty
    if mount -t ext4 $D /tmp/mnt-fd-dirty; then
        head -c 3000000 /dev/urandom >/tmp/mnt-fd-dirty/dirty
        sha256sum </tmp/mnt-fd-dirty/dirty >/tmp/fd-dirty.sum
    fi
    stop_usbd "filedisk (mounted, dirty)" $D /tmp/filedisk2.log mounted
    timeout 30 umount /tmp/mnt-fd-dirty 2>/dev/null || timeout 30 umount -l /tmp/mnt-fd-dirty
    check "filedisk: $D detached after umount" wait_until 10 detached $D
    attach_usbd filedisk $D /tmp/filedisk3.log "$FD" $D path=$F size=128M || return
    if mount -t ext4 $D /tmp/mnt-fd-dirty; then
        check "filedisk: unsynced data written back before the disconnect" \
            sh -c "sha256sum </tmp/mnt-fd-dirty/dirty | cmp -s - /tmp/fd-dirty.sum"
        umount /tmp/mnt-fd-dirty
    else
        not_ok "filedisk: mount after the dirty disconnect"
    fi
    check "filedisk: e2fsck -fn clean after journal replay" e2fsck -fn $D
    stop_usbd filedisk $D /tmp/filedisk3.log
    rm -f $F
}

# ext4 under the kernel on AES-XTS: examples/cryptdisk.lua over a filedisk
# on /dev/nbd2. The file below holds no plaintext, and is no filesystem.
suite_cryptdisk() {
    D=/dev/nbd2
    F=/tmp/cryptdisk.img
    K=/tmp/cryptdisk.key
    rm -f $F
    head -c 64 /dev/urandom >$K
    attach_usbd cryptdisk $D /tmp/cryptdisk.log examples/cryptdisk.lua $D keyfile=$K -- filedisk path=$F size=128M || return
    check "cryptdisk: size 128M" test "$(blockdev --getsize64 $D)" = 134217728
    fs_cycle $D cryptdisk
    mark="usbd-lua-kernel-plaintext-$$"
    mkdir -p /tmp/mnt-cryptdisk
    if mount -t ext4 $D /tmp/mnt-cryptdisk; then
        for i in $(seq 2000); do echo "$mark $i"; done >/tmp/mnt-cryptdisk/secret.txt
        umount /tmp/mnt-cryptdisk
    fi
    stop_usbd cryptdisk $D /tmp/cryptdisk.log
    check "cryptdisk: the backing file holds no plaintext of a file written through it" \
        sh -c "! grep -q -a '$mark' $F"
    check "cryptdisk: the backing file is no ext4 without the key" sh -c "! e2fsck -fn $F >/dev/null 2>&1"
    attach_usbd cryptdisk $D /tmp/cryptdisk2.log examples/cryptdisk.lua $D keyfile=$K -- filedisk path=$F || return
    fs_verify $D cryptdisk
    stop_usbd cryptdisk $D /tmp/cryptdisk2.log
    rm -f $F $K
}

# The dedupdisk under the kernel's driver: ext4, then a tree copied to a
# second directory costs the store far less than the copy.
suite_dedupdisk() {
    D=/dev/nbd2
    S=/tmp/dedup-store
    rm -rf $S
    attach_usbd dedupdisk $D /tmp/dedup.log devices/dedupdisk.lua $D dir=$S size=256M || return
    check "dedupdisk: size 256M" test "$(blockdev --getsize64 $D)" = 268435456
    fs_cycle $D dedupdisk
    M=/tmp/mnt-dedupdisk
    if mount -t ext4 $D $M; then
        mkdir -p $M/one
        i=0
        while [ $i -lt 40 ]; do head -c 250000 /dev/urandom >$M/one/f$i; i=$((i + 1)); done
        sync
        before=$(stat -c %s $S/blocks)
        cp -a $M/one $M/two
        sync
        after=$(stat -c %s $S/blocks)
        check "dedupdisk: a 10 MB tree copied grows the block file by $(((after - before) / 1024)) KiB (< 1 MiB)" \
            test $((after - before)) -lt 1048576
        check "dedupdisk: the copy reads back equal" diff -r $M/one $M/two
        umount $M
        check "dedupdisk: e2fsck -fn clean after the copy" e2fsck -fn $D
    else
        not_ok "dedupdisk: mount for the copy"
    fi
    stop_usbd dedupdisk $D /tmp/dedup.log
    check "dedupdisk: the store check is clean" luajit "$TOP/tools/dedup-fsck.lua" $S
    rm -rf $S
}

# Guest suite: usbd-lua on /dev/nbdN through the driver's netlink interface
# with several connections (--connections 4), and what happens when the
# server dies. Sourced by guest-all.sh after lib.sh and t-usbd.sh.

# hw_queues DEV: how many hardware queues the block layer gave DEV (the nbd
# driver makes one per connection).
hw_queues() { ls -d "/sys/block/${1##*/}/mq/"* 2>/dev/null | wc -l; }

# multi_fs TAG DEV LOG ARG...: attach with 4 connections, ext4 cycle, SIGTERM.
multi_fs() {
    _tag=$1 _dev=$2 _log=$3; shift 3
    attach_usbd "$_tag" "$_dev" "$_log" --connections 4 "$@" || return 1
    check "$_tag: the log says 4 connections through netlink" grep -q '(4 connections, netlink)' "$_log"
    # The block layer makes at most one queue per CPU, and the driver sends
    # a queue's requests on its connection: with fewer CPUs than
    # connections the rest stand by (taking over if one dies).
    _q=$(nproc); [ "$_q" -gt 4 ] && _q=4
    check "$_tag: $_dev has $_q hardware queue(s) (4 connections, $(nproc) CPU(s))" test "$(hw_queues "$_dev")" = "$_q"
    check "$_tag: usbd-lua serves 4 sockets" test "$(ls -l /proc/$U/fd | grep -c 'socket:')" -ge 4
    fs_cycle "$_dev" "$_tag"
    stop_usbd "$_tag" "$_dev" "$_log"
}

# writer DEV: direct writes over the whole device, in the background (W);
# reader DEV: direct 4 KiB reads over it, in the background (R).
writer() {
    dd if=/dev/urandom of="$1" bs=64k count=100000 oflag=direct 2>/tmp/writer.err &
    W=$!
}
reader() {
    dd if="$1" of=/dev/null bs=4k iflag=direct 2>/tmp/reader.err &
    R=$!
}

# sectors DEV: its size in 512-byte sectors, as the block layer has it.
sectors_are() { [ "$(cat "/sys/block/${1##*/}/size")" = "$2" ]; }

# resize_cycle TAG: a 64 MiB file on $D with ext4, grown to 128 MiB and
# SIGHUP; the file system grown online, filled past the old end, checked.
resize_cycle() {
    _f=/tmp/grow.img _m=/tmp/mnt-grow
    rm -f $_f
    truncate -s 64M $_f
    attach_usbd "resize-$1" $D /tmp/r.log --connections 4 devices/filedisk.lua $D path=$_f || return 1
    mkdir -p $_m
    if mkfs.ext4 -q -F $D && mount -t ext4 $D $_m; then
        truncate -s 128M $_f
        kill -HUP $U
        check "resize-$1: SIGHUP: $D grows to 128 MiB" wait_until 10 sectors_are $D 262144
        check "resize-$1: the log says so" grep -q "SIGHUP: serving 134217728 bytes now (67108864 before)" /tmp/r.log
        check "resize-$1: ext4 grows online (resize2fs)" resize2fs $D
        check "resize-$1: 90 MiB written into it, past the old end" \
            sh -c "dd if=/dev/urandom of=$_m/big bs=1M count=90 2>/dev/null && sync && sha256sum <$_m/big >/tmp/big.sum"
        umount $_m
        check "resize-$1: e2fsck -f clean after the resize" e2fsck -fn $D
        mount -t ext4 $D $_m && check "resize-$1: the file reads back" sh -c "sha256sum <$_m/big | cmp -s - /tmp/big.sum"
        umount $_m
    else
        not_ok "resize-$1: mkfs.ext4 and mount"
    fi
    stop_usbd "resize-$1" $D /tmp/r.log
    rm -f $_f
}

suite_multi() {
    # ext4 on three devices, four connections each.
    multi_fs multi-ramdisk /dev/nbd0 /tmp/m-ram.log devices/ramdisk.lua /dev/nbd0 size=256M
    F=/tmp/multi-file.img
    rm -f $F
    truncate -s 128M $F
    if multi_fs multi-filedisk /dev/nbd1 /tmp/m-file.log devices/filedisk.lua /dev/nbd1 path=$F size=128M; then
        check "multi-filedisk: the backing file holds a clean filesystem" e2fsck -fn $F
    fi
    S=/tmp/multi-dedup
    rm -rf $S
    multi_fs multi-dedupdisk /dev/nbd2 /tmp/m-dedup.log devices/dedupdisk.lua /dev/nbd2 dir=$S size=256M
    rm -rf $S

    # kill -9 during writes: the writer gets an error, readers get EIO at
    # once, nothing hangs, and the device is free again.
    D=/dev/nbd3
    if attach_usbd multi-kill $D /tmp/m-kill.log --connections 4 devices/ramdisk.lua $D size=256M; then
        writer $D
        reader $D
        sleep 2
        check "multi-kill: the writer and the reader are running" sh -c "kill -0 $W && kill -0 $R"
        kill -9 $U
        wait $U 2>/dev/null
        wait_exit $W 30
        check "multi-kill: the writer ends with an error, not a hang (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        wait_exit $R 30
        check "multi-kill: the reader ends with an error, not a hang (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        note "$(cat /tmp/writer.err /tmp/reader.err | grep -i error | head -n 2)"
        check "multi-kill: $D is let go (no pid, size 0)" wait_until 10 detached $D
        timeout 30 dd if=$D of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; rc=$?
        check "multi-kill: a reader after that returns at once (status $rc)" test $rc != 124
    fi

    # The same with one connection, where the driver would otherwise keep
    # requests in flight waiting forever.
    if attach_usbd one-kill $D /tmp/o-kill.log --connections 1 devices/ramdisk.lua $D size=256M; then
        check "one-kill: 1 connection through netlink" grep -q '(1 connection, netlink)' /tmp/o-kill.log
        writer $D
        sleep 2
        kill -9 $U
        wait $U 2>/dev/null
        wait_exit $W 30
        check "one-kill: the writer ends with an error, not a hang (status $EXIT_STATUS)" \
            sh -c "[ $EXIT_STATUS != 0 ] && [ $EXIT_STATUS != 255 ]"
        check "one-kill: $D is let go (no pid, size 0)" wait_until 10 detached $D
    fi

    # Data flushed before a kill -9 is there after a restart.
    F=/tmp/multi-kill.img
    M=/tmp/mnt-multi-kill
    rm -f $F
    truncate -s 128M $F
    mkdir -p $M
    if attach_usbd restart $D /tmp/r1.log --connections 4 devices/filedisk.lua $D path=$F size=128M; then
        mkfs.ext4 -q -F $D && mount -t ext4 $D $M && head -c 5000000 /dev/urandom >$M/kept &&
            sha256sum <$M/kept >/tmp/kept.sum && sync
        check "restart: a file written and synced" test -s /tmp/kept.sum
        head -c 3000000 /dev/urandom >$M/unsynced 2>/dev/null &
        sleep 1
        kill -9 $U
        wait $U 2>/dev/null
        timeout 30 umount $M 2>/dev/null || timeout 30 umount -l $M
        check "restart: $D is let go after the kill" wait_until 10 detached $D
        if attach_usbd restart $D /tmp/r2.log --connections 4 devices/filedisk.lua $D path=$F size=128M; then
            if mount -t ext4 $D $M; then
                check "restart: the synced file is intact" sh -c "sha256sum <$M/kept | cmp -s - /tmp/kept.sum"
                umount $M
            else
                not_ok "restart: mount after the restart"
            fi
            check "restart: e2fsck -fn clean after journal replay" e2fsck -fn $D
            stop_usbd restart $D /tmp/r2.log
        fi
    fi
    rm -f $F

    # SIGTERM with four connections and a mounted, dirty filesystem: written
    # back before the disconnect (the filedisk suite checks this with the
    # default connections).
    if attach_usbd multi-term $D /tmp/t1.log --connections 4 devices/filedisk.lua $D path=$F size=128M; then
        mkfs.ext4 -q -F $D && mount -t ext4 $D $M && head -c 3000000 /dev/urandom >$M/dirty &&
            sha256sum <$M/dirty >/tmp/dirty.sum
        stop_usbd multi-term $D /tmp/t1.log mounted
        timeout 30 umount $M 2>/dev/null || timeout 30 umount -l $M
        check "multi-term: $D detached after umount" wait_until 10 detached $D
        if attach_usbd multi-term $D /tmp/t2.log --connections 4 devices/filedisk.lua $D path=$F size=128M; then
            if mount -t ext4 $D $M; then
                check "multi-term: unsynced data written back before the disconnect" \
                    sh -c "sha256sum <$M/dirty | cmp -s - /tmp/dirty.sum"
                umount $M
            else
                not_ok "multi-term: mount after SIGTERM"
            fi
            stop_usbd multi-term $D /tmp/t2.log
        fi
    fi
    rm -f $F

    # A file grown while served: SIGHUP resizes the device, through netlink
    # (NBD_CMD_RECONFIGURE) and through the ioctls (NBD_SET_SIZE), and a
    # mounted ext4 grows into it.
    resize_cycle netlink
    export USBD_NBD_IOCTL=1
    resize_cycle ioctl
    unset USBD_NBD_IOCTL

    # The ioctl way in (kernels without the netlink interface): one
    # connection, and a kill -9 lets the device go too.
    export USBD_NBD_IOCTL=1
    attach_usbd ioctl $D /tmp/i.log --connections 4 devices/ramdisk.lua $D size=64M; _ok=$?
    unset USBD_NBD_IOCTL
    if [ $_ok = 0 ]; then
        check "ioctl: the log says 1 connection through ioctl" grep -q '(1 connection, ioctl)' /tmp/i.log
        check "ioctl: $D has 1 hardware queue" test "$(hw_queues $D)" = 1
        check "ioctl: mkfs.ext4 and e2fsck" sh -c "mkfs.ext4 -q -F $D && e2fsck -fn $D"
        kill -9 $U
        wait $U 2>/dev/null
        check "ioctl: $D is let go after kill -9" wait_until 10 detached $D
    fi
}

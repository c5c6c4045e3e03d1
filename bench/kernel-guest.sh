#!/bin/sh
# Runs in the qemu guest of bench/kernel.sh:  kernel-guest.sh TOP RUNTIME IODEPTH
[ "${USBD_IN_GUEST:-}" = 1 ] || { echo "kernel-guest.sh: run me through bench/kernel.sh" >&2; exit 2; }
TOP=$1 RUNTIME=$2 DEPTH=$3
cd "$TOP" || exit 2
dmesg -n 1 2>/dev/null
CPUS=$(nproc)
SIZE=256M
D=/dev/nbd0

# fio_iops DEV RW: IOPS of one timed run (one job per CPU).
fio_iops() {
    fio --name=b --filename="$1" --rw="$2" --bs=4k --direct=1 --ioengine=libaio \
        --iodepth="$DEPTH" --numjobs="$CPUS" --group_reporting --runtime="$RUNTIME" \
        --time_based --size=$SIZE --output-format=terse --terse-version=3 2>/dev/null |
        awk -F';' -v rw="$2" '{ print (rw == "randread") ? $8 : $49 }'
}

# wait_dev FILE: wait for /sys/block/FILE (nbd0/pid, or ublkb0).
wait_dev() {
    i=0
    while [ ! -e "/sys/block/$1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -e "/sys/block/$1" ] && sleep 0.5
}
wait_free() {
    i=0
    while [ -e /sys/block/nbd0/pid ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
}

# run NAME [DEV [SYSFILE]]: fill the device once, then random reads and writes.
run() {
    _d=${2:-$D}
    if ! wait_dev "${3:-nbd0/pid}"; then echo "# $1: the device did not come up"; return 1; fi
    dd if=/dev/zero of="$_d" bs=1M count=256 oflag=direct 2>/dev/null
    r=$(fio_iops "$_d" randread)
    w=$(fio_iops "$_d" randwrite)
    echo "$1 $r $w" >>/tmp/bench.res
    printf '%-28s %10s %10s\n' "$1" "$r" "$w"
}

: >/tmp/bench.res
echo "# $CPUS CPU(s), fio 4k, iodepth $DEPTH, $CPUS job(s), ${RUNTIME}s each; IOPS"
printf '%-28s %10s %10s\n' door randread randwrite

./usbd-lua --connections 1 devices/ramdisk.lua $D size=$SIZE 2>/tmp/u1.log &
U=$!
run usbd-nbd-1conn
kill -TERM $U; wait $U; wait_free

if [ "$CPUS" -gt 1 ]; then
    ./usbd-lua --connections "$CPUS" devices/ramdisk.lua $D size=$SIZE 2>/tmp/un.log &
    U=$!
    run "usbd-nbd-${CPUS}conn"
    kill -TERM $U; wait $U; wait_free
else
    echo "# one CPU: one hardware queue, so no N-connection line (BENCH_SMP=2 or more)"
fi

if [ -e /dev/ublk-control ]; then
    ./usbd-lua devices/ramdisk.lua /dev/ublkb0 size=$SIZE 2>/tmp/ub.log &
    U=$!
    run usbd-ublk /dev/ublkb0 ublkb0
    kill -TERM $U; wait $U
else
    echo "# no ublk in this kernel (KERNEL=6.12): no ublk line"
fi

if command -v nbdkit >/dev/null && command -v nbd-client >/dev/null; then
    nbdkit -f -U /tmp/nbdkit.sock memory $SIZE 2>/tmp/nbdkit.log &
    K=$!
    i=0; while [ ! -S /tmp/nbdkit.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if nbd-client -u /tmp/nbdkit.sock $D -b 4096 >/tmp/nbd-client.log 2>&1; then
        run nbdkit-nbd-client-1conn
        nbd-client -d $D >/dev/null 2>&1
        wait_free
    else
        echo "# nbd-client failed: $(cat /tmp/nbd-client.log)"
    fi
    kill $K; wait $K 2>/dev/null
else
    echo "# nbdkit or nbd-client missing: no nbdkit line"
fi

# Ratios.
awk -v n="usbd-nbd-${CPUS}conn" '
    { r[$1] = $2; w[$1] = $3 }
    function ratio(a, b, x) { return (x[b] > 0) ? sprintf("%.2f", x[a] / x[b]) : "-" }
    END {
        printf "# ratios (randread, randwrite):\n"
        if (n in r && n != "usbd-nbd-1conn")
            printf "#   %s / usbd-nbd-1conn: %s, %s\n", n, ratio(n, "usbd-nbd-1conn", r), ratio(n, "usbd-nbd-1conn", w)
        if ("usbd-ublk" in r)
            printf "#   usbd-ublk / usbd-nbd-1conn: %s, %s\n", ratio("usbd-ublk", "usbd-nbd-1conn", r), ratio("usbd-ublk", "usbd-nbd-1conn", w)
        if ("nbdkit-nbd-client-1conn" in r)
            printf "#   usbd-nbd-1conn / nbdkit-nbd-client-1conn: %s, %s\n", ratio("usbd-nbd-1conn", "nbdkit-nbd-client-1conn", r), ratio("usbd-nbd-1conn", "nbdkit-nbd-client-1conn", w)
    }' /tmp/bench.res

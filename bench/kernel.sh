#!/bin/sh
# bench/kernel.sh: the kernel's doors, side by side in one qemu guest boot
# (tests/kernel/guest.sh): fio 4 KiB random reads and writes on
#   - usbd-lua's ramdisk on /dev/nbdN with one connection,
#   - the same with one connection per guest CPU (netlink),
#   - the same through ublk (/dev/ublkb0; KERNEL=6.12),
#   - nbdkit's memory plugin attached with nbd-client (one connection),
# and the ratios between them. usbd-lua must be built (make).
#
#   flock /work/.bench.lock bench/kernel.sh
#   BENCH_SMP=4 BENCH_RUNTIME=20 KERNEL=6.12 bench/kernel.sh
#
# Environment: BENCH_SMP guest CPUs (default 2; the connections of the
# N-connection run), BENCH_RUNTIME seconds per fio run (default 10),
# BENCH_IODEPTH (default 32), KERNEL (6.1 or 6.12, see guest.sh).
# Under TCG the guest's CPUs are emulated: the figures compare the doors
# with each other, not with real hardware.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
[ -x "$top/usbd-lua" ] || { echo "bench/kernel.sh: build usbd-lua first (make)" >&2; exit 2; }
export USBD_GUEST_SMP=${BENCH_SMP:-2}
cd "$top"
exec "$top/tests/kernel/guest.sh" -t 1800 "$here/kernel-guest.sh" "$top" \
    "${BENCH_RUNTIME:-10}" "${BENCH_IODEPTH:-32}"

#!/bin/sh
# Guest script: the harness gives us the nbd driver with nbds_max=4.
# Run on the host as: tests/kernel/guest.sh tests/kernel/smoke.sh
[ "${USBD_IN_GUEST:-}" = 1 ] || { echo "smoke.sh: run me through tests/kernel/guest.sh" >&2; exit 2; }
for n in 0 1 2 3; do
    [ -b /dev/nbd$n ] && [ -d /sys/block/nbd$n ] || { echo "not ok - /dev/nbd$n missing"; exit 1; }
done
[ ! -e /sys/block/nbd4 ] || { echo "not ok - nbds_max=4 not applied"; exit 1; }
[ "$(cat /sys/block/nbd0/size)" = 0 ] && [ ! -e /sys/block/nbd0/pid ] ||
    { echo "not ok - nbd0 not free"; exit 1; }
echo "ok - kernel $(uname -r) has nbd0..nbd3, all free"

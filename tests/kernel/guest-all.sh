#!/bin/sh
# Runs in the qemu guest (tests/kernel/run.sh boots it through guest.sh):
#   guest-all.sh TOP ATTACH_TEST USBD_DIR [SUITE...]
# TOP is the project directory, ATTACH_TEST the attach-test binary, USBD_DIR
# a directory with usbd-lua, lua/ and devices/ (run.sh snapshots the build
# there, so a rebuild on the host during the run changes nothing). SUITEs:
# attach, ramdisk, filedisk, cryptdisk, dedupdisk, multi, ublk (default: all;
# ublk skips itself on a kernel without the driver); filedisk=SCRIPT runs the
# filedisk suite with another device script. Prints ok / not ok / skip lines;
# exits 1 if anything failed.
[ "${USBD_IN_GUEST:-}" = 1 ] || { echo "guest-all.sh: run me through tests/kernel/guest.sh" >&2; exit 2; }
TOP=$1 ATTACH_TEST=$2 USBD_DIR=$3
shift 3
here=$TOP/tests/kernel
. "$here/lib.sh"
. "$here/t-attach.sh"
. "$here/t-usbd.sh"
. "$here/t-multi.sh"
. "$here/t-ublk.sh"
cd "$USBD_DIR" 2>/dev/null || cd "$TOP" || exit 2
dmesg -n 1 2>/dev/null   # keep kernel messages off the console; shown on failure

suites=${*:-attach ramdisk filedisk cryptdisk dedupdisk multi ublk}
for s in $suites; do
    start=$(date +%s)
    case $s in
        attach) suite_attach "$ATTACH_TEST" ;;
        ramdisk|filedisk|filedisk=*|cryptdisk|dedupdisk|multi|ublk)
            # filedisk=SCRIPT: the filedisk suite with another script.
            if [ -x "$USBD_DIR/usbd-lua" ]; then "suite_${s%%=*}" "$(echo "$s" | sed -n 's/^[^=]*=//p')"
            else not_ok "$s: usbd-lua is built (run make on the host)"; fi ;;
        *) not_ok "unknown suite $s" ;;
    esac
    echo "# ${s%%=*}: $(($(date +%s) - start)) s"
done
if [ "$T_FAIL" != 0 ]; then
    echo "# kernel log (last 40 lines):"
    dmesg | tail -n 40 | sed 's/^/#   /'
fi
echo "# guest: $T_PASS passed, $T_FAIL failed, $T_SKIP skipped"
[ "$T_FAIL" = 0 ]

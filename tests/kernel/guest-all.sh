#!/bin/sh
# Runs in the qemu guest (tests/kernel/run.sh boots it through guest.sh):
#   guest-all.sh TOP ATTACH_TEST [SUITE...]
# TOP is the project directory, ATTACH_TEST the attach-test binary. SUITEs:
# attach, ramdisk, filedisk (default: all). Prints ok / not ok / skip lines;
# exits 1 if anything failed.
[ "${USBD_IN_GUEST:-}" = 1 ] || { echo "guest-all.sh: run me through tests/kernel/guest.sh" >&2; exit 2; }
TOP=$1 ATTACH_TEST=$2
shift 2
here=$TOP/tests/kernel
. "$here/lib.sh"
. "$here/t-attach.sh"
. "$here/t-usbd.sh"
cd "$TOP" || exit 2
dmesg -n 1 2>/dev/null   # keep kernel messages off the console; shown on failure

suites=${*:-attach ramdisk filedisk}
for s in $suites; do
    start=$(date +%s)
    case $s in
        attach) suite_attach "$ATTACH_TEST" ;;
        ramdisk|filedisk)
            if [ -x "$TOP/usbd-lua" ]; then "suite_$s"
            else not_ok "$s: $TOP/usbd-lua is built (run make on the host)"; fi ;;
        *) not_ok "unknown suite $s" ;;
    esac
    echo "# $s: $(($(date +%s) - start)) s"
done
if [ "$T_FAIL" != 0 ]; then
    echo "# kernel log (last 40 lines):"
    dmesg | tail -n 40 | sed 's/^/#   /'
fi
echo "# guest: $T_PASS passed, $T_FAIL failed, $T_SKIP skipped"
[ "$T_FAIL" = 0 ]

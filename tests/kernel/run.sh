#!/bin/sh
# The kernel nbd tests: builds tests/kernel/attach-test (src/server/kernel.c on its
# own), boots a qemu guest with the nbd driver (guest.sh) and runs
# guest-all.sh there: kernel.c alone, then usbd-lua with devices/ramdisk.lua
# and devices/filedisk.lua on /dev/nbdN. usbd-lua must be built first (make).
#
#   tests/kernel/run.sh [SUITE...]      (attach ramdisk filedisk cryptdisk dedupdisk multi; default all)
#   KERNEL=6.12 tests/kernel/run.sh ... the same under Debian 12's 6.12 kernel (guest.sh)
#
# Prints "ok - ..." / "not ok - ..." lines and ends with "N passed, N failed";
# exits 1 if anything failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# Per run, under the project (the guest sees the host's root, but mounts
# its own /tmp), so that runs side by side do not share anything.
mkdir -p "$top/.cache/kernel-test"
build=$(mktemp -d "$top/.cache/kernel-test/run.XXXXXX") || exit 1
cd "$top" || exit 1

log=$(mktemp)
trap 'rm -rf "$log" "$build"' EXIT
fail_extra=0
CC=${CC:-cc}
if ! $CC -O2 -g -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -pthread -I"$top/src/server" \
        -I"$top/src" -o "$build/attach-test" "$here/attach-test.c" "$top/src/server/kernel.c" \
        "$top/src/server/sockets.c" "$top/src/services/threads.c" 2>"$log"; then
    echo "not ok - build tests/kernel/attach-test with src/server/kernel.c"
    sed 's/^/#   /' "$log"
    fail_extra=1
    rm -f "$build/attach-test"
fi

# The guest reads the host's files live: test a snapshot of the build, so a
# make on the host during the run cannot swap the binary under the tests.
snap=$build/snapshot
rm -rf "$snap"
mkdir -p "$snap"
if [ -x "$top/usbd-lua" ]; then
    cp -a "$top/usbd-lua" "$top/lua" "$top/devices" "$top/examples" "$snap/"
    # The FFI's declarations, where lua/usbd/core/cdef.lua looks in a build tree.
    mkdir -p "$snap/build"
    cp -a "$top/build/cdef.h" "$snap/build/"
fi

"$here/guest.sh" -t "${USBD_KERNEL_TIMEOUT:-900}" "$here/guest-all.sh" "$top" "$build/attach-test" "$snap" "$@" >"$log" 2>&1 &
gpid=$!
# Show the guest's lines as they come.
tail -f "$log" --pid=$gpid 2>/dev/null | grep --line-buffered -v '^@@usbd-guest: ' &
tpid=$!
wait $gpid
grc=$?
sleep 0.2
kill $tpid 2>/dev/null
wait $tpid 2>/dev/null

passed=$(grep -c '^ok - ' "$log")
failed=$(grep -c '^not ok - ' "$log")
failed=$((failed + fail_extra))
if [ "$grc" != 0 ] && [ "$failed" = 0 ]; then
    echo "not ok - the guest ran to the end (guest.sh exit $grc)"
    failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

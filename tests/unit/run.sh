#!/usr/bin/env bash
# C unit tests (check) against the core objects, and the proof that the
# FFI cdefs agree with src/usbd.h. Prints TAP.
set -u
cd "$(dirname "$0")/../.."
CC=${CC:-cc}
BUILD=${BUILD:-build}
CFLAGS="-std=gnu11 -D_GNU_SOURCE -g -Wall -Wextra -Wno-unused-parameter -pthread $(pkg-config --cflags luajit check) ${EXTRA_CFLAGS:-}"
LIBS="$(pkg-config --libs check) $(make -s --no-print-directory print-ldlibs) -pthread ${EXTRA_LDFLAGS:-}"
objs=$(ls "$BUILD"/*.o | grep -v '/main.o$')
status=0

$CC $CFLAGS -o "$BUILD/unit-tests" tests/unit/main.c tests/unit/check_*.c $objs $LIBS || exit 1
CK_VERBOSITY=silent CK_TAP_LOG_FILE_NAME=- ${UNIT_WRAPPER:-} "$BUILD/unit-tests" || status=1

gen="$BUILD/cdef_agrees.c"
if luajit tests/unit/cdef_agrees.lua "$gen" && $CC -std=gnu11 -Werror -Isrc -c -o "$BUILD/cdef_agrees.o" "$gen"; then
    echo "ok - lua/usbd/cdef.lua agrees with src/usbd.h ($(grep -c . "$gen") declarations and assertions)"
else
    echo "not ok - lua/usbd/cdef.lua agrees with src/usbd.h"
    status=1
fi
exit $status

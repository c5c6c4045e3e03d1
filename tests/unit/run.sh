#!/usr/bin/env bash
# C unit tests (check) against the core objects, and the proof that the
# FFI declarations (build/cdef.h, made from src/usbd.h's headers) agree with
# the C compiler and the core. Prints TAP.
set -u
cd "$(dirname "$0")/../.."
CC=${CC:-cc}
BUILD=${BUILD:-build}
CFLAGS="-std=gnu11 -D_GNU_SOURCE -g -Wall -Wextra -Wno-unused-parameter -pthread -Isrc $(pkg-config --cflags luajit check) ${EXTRA_CFLAGS:-}"
LIBS="$(pkg-config --libs check) $(make -s --no-print-directory print-ldlibs) -pthread ${EXTRA_LDFLAGS:-}"
objs=$(ls "$BUILD"/*.o | grep -v '/main.o$')
status=0

$CC $CFLAGS -o "$BUILD/unit-tests" tests/unit/main.c tests/unit/check_*.c $objs $LIBS || exit 1
CK_VERBOSITY=silent CK_TAP_LOG_FILE_NAME=- ${UNIT_WRAPPER:-} "$BUILD/unit-tests" || status=1

gen="$BUILD/cdef_agrees.c"
if luajit tests/unit/cdef_agrees.lua "$gen" &&
    $CC $CFLAGS -Werror -o "$BUILD/cdef_agrees" "$gen" $objs $LIBS; then
    echo "ok - the FFI declarations agree with src/usbd.h and the core ($(grep -c . "$gen") declarations and assertions)"
else
    echo "not ok - the FFI declarations agree with src/usbd.h and the core"
    status=1
fi
exit $status

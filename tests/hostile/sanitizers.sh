#!/usr/bin/env bash
# The tests again, under sanitizers. Run through make:
#   make test-asan        ASan+UBSan: unit tests (BUILD=build-asan), the
#                         specs (build-asan/libusbd.so), then the hostile,
#                         soak and integration tests against
#                         build-asan/usbd-lua
#   make test-valgrind    the C unit tests, then the server against the
#                         hostile clients, under valgrind memcheck
# TAP-style output, ending with "N passed, N failed".
#
# What is and is not covered, honestly:
#  - Only our C is instrumented. LuaJIT is Debian's libluajit (not built with
#    ASan), so memory LuaJIT manages is invisible to ASan, and nothing of it
#    needs suppressing: LeakSanitizer stays on and the server must exit clean.
#  - ASan's quarantine and shadow memory make the server bigger, so the
#    hostile tests' RSS ceiling is raised (RSS_LIMIT_KB); the in-flight bound
#    of the slow-reader case is unchanged.
#  - The integration tests start $USBD_BIN (tests/lib.sh), here
#    build-asan/usbd-lua.
#  - The busted specs drive the C services from Lua (codec, hashindex, kv,
#    file ranges, ...): here a stock luajit loads build-asan/libusbd.so
#    (USBD_LIB) with clang's shared ASan runtime preloaded (LD_PRELOAD, so
#    the commands they start get it too). LeakSanitizer is off for them:
#    objects that only LuaJIT's heap points to look leaked to it, and at
#    exit LuaJIT unloads the library while a spec's worker threads still
#    wait in it, which its stop-the-world wakes (glibc then aborts: "The
#    futex facility returned an unexpected error code").
# LINK_LIBS: the libraries the core links with (make passes its LDLIBS).
set -u
cd "$(dirname "$0")/../.."
mode=${1:-asan}
. tests/suites.sh
# Instrumented servers start slowly (valgrind: 5-10 s on a loaded machine):
# tests/lib.sh's start_server waits this long for the socket to answer.
export SERVER_START_SECONDS=${SERVER_START_SECONDS:-60}

case $mode in
asan)
    SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    export USBD_BIN=$PWD/build-asan/usbd-lua
    [ -x "$USBD_BIN" ] || { echo "not ok - $USBD_BIN is not built (make build-asan/usbd-lua)"; exit 1; }
    suite "unit tests (check) with ASan+UBSan" \
        env BUILD=build-asan CC="${SAN_CC:-clang}" EXTRA_CFLAGS="$SAN" EXTRA_LDFLAGS="$SAN ${LINK_LIBS:-}" tests/unit/run.sh
    suite "specs (busted) with ASan+UBSan (build-asan/libusbd.so)" \
        env ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" USBD_LIB="$PWD/build-asan/libusbd.so" \
        LD_PRELOAD="$("${SAN_CC:-clang}" -print-file-name=libclang_rt.asan-x86_64.so)" \
        busted --lua=luajit -o TAP spec
    suite "hostile clients vs ASan+UBSan build" env RSS_LIMIT_KB=600000 tests/hostile/run.sh
    suite "soak vs ASan+UBSan build" env SOAK_SECONDS="${SOAK_SECONDS:-5}" tests/soak/run.sh
    # The integration tests run $USBD_BIN (tests/lib.sh).
    for t in tests/integration/*.sh tests/ceph/rbd-*.sh; do
        suite "$(basename "$(dirname "$t")"): $(basename "$t" .sh) vs ASan+UBSan build" "$t"
    done
    ;;
valgrind)
    command -v valgrind >/dev/null || { echo "not ok - valgrind is not installed"; exit 1; }
    # CK_FORK=no: every check test runs in the process valgrind watches.
    suite "unit tests (check) under valgrind" \
        env CK_FORK=no EXTRA_LDFLAGS="${LINK_LIBS:-}" UNIT_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --track-origins=yes" \
        tests/unit/run.sh
    # The whole server under memcheck, against the hostile clients. No
    # suppressions are needed (LuaJIT reports nothing here); slower, so the
    # memory and idle-CPU ceilings are raised, and vanish-busy's device holds
    # requests for 3 s, its idle CPU measured from 1.5 s after the hang-up
    # (serving the requests up to the device takes ~0.4 s of CPU here: with
    # the plain 1 s and 0.1 s that landed in the window, 28-44 ticks).
    wrap=$(mktemp /tmp/usbd-valgrind.XXXXXX)
    trap 'rm -f "$SUITES_OUT" "$wrap"' EXIT
    printf '#!/bin/sh\nexec valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect %s "$@"\n' \
        "$PWD/usbd-lua" >"$wrap"
    chmod +x "$wrap"
    suite "hostile clients vs usbd-lua under valgrind" \
        env USBD_BIN="$wrap" RSS_LIMIT_KB=600000 HOSTILE_IDLE_TICKS=40 HOSTILE_BUSY_DELAY=3 HOSTILE_SETTLE_MS=1500 \
        tests/hostile/run.sh
    ;;
*)
    echo "usage: $0 asan|valgrind" >&2
    exit 2
    ;;
esac
suites_end

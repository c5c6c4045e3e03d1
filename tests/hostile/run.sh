#!/usr/bin/env bash
# Hostile clients against usbd-lua: every case of tests/hostile/hostile.c,
# each against a running ramdisk server. After each case the server must
# still answer a new client (nbdinfo) and its memory must stay bounded.
#
#   tests/hostile/run.sh [CASE...]      (default: every case)
#   tests/hostile/run.sh --tls [CASE...]  the same over TLS: servers with
#   --tls=require --tls-psk, every case upgraded with NBD_OPT_STARTTLS
#   first, and the TLS cases (garbage after STARTTLS, handshakes cut off or
#   stalled, renegotiation)
#   USBD_BIN=path/to/usbd-lua tests/hostile/run.sh   (e.g. a sanitizer build,
#   or a script that execs valgrind on it; then raise RSS_LIMIT_KB and
#   HOSTILE_IDLE_TICKS, and for vanish-busy HOSTILE_BUSY_DELAY, slowdisk's
#   seconds per request (1), and HOSTILE_SETTLE_MS (tests/hostile/hostile.c))
. "$(dirname "$0")/../lib.sh"
USBD=${USBD_BIN:-$USBD}
HOSTILE="$SCRATCH/hostile"
TLS_ARGS=()
if [ "${1:-}" = --tls ]; then
    shift
    need_tools psktool
    psktool -u hostile -p "$SCRATCH/keys.psk" >/dev/null
    export HOSTILE_TLS_PSK="$SCRATCH/keys.psk"
    export URI_TLS="hostile@|&tls-psk-file=$SCRATCH/keys.psk"  # start_server's URI and nbdinfo
    TLS_ARGS=(--tls=require --tls-psk "$SCRATCH/keys.psk")
fi
# shellcheck disable=SC2046  # pkg-config's flags are words
${CC:-cc} -O1 -g -Wall -Wextra -o "$HOSTILE" "$TOP/tests/hostile/hostile.c" $(pkg-config --cflags --libs gnutls) || {
    echo "not ok - hostile: cannot build tests/hostile/hostile.c"; echo "0 passed, 1 failed"; exit 1; }

TIMEOUT=2
MAX_CONN=16
INFLIGHT_BYTES=$((8 << 20))
# Resident memory may grow by at most this since the server started (kB),
# after any case: the request buffers it caches (at most what the cases had
# in flight: 8 connections x --max-inflight-bytes) plus what the cases wrote
# (a few MiB). The ramdisk takes memory only for what is written, so reads
# of it cost nothing, whether or not the kernel has a shared zero page; and
# the baseline is taken with the device open, so only the server's own
# growth is measured.
RSS_LIMIT_KB=${RSS_LIMIT_KB:-131072}
# CPU ticks (1/100 s) an idle server may use in half a second.
IDLE_TICKS=${HOSTILE_IDLE_TICKS:-5}
LIMITS=(--handshake-timeout "$TIMEOUT" --max-connections "$MAX_CONN"
        --max-inflight 64 --max-inflight-bytes "$INFLIGHT_BYTES" "${TLS_ARGS[@]}")
export HOSTILE_TIMEOUT=$TIMEOUT HOSTILE_MAX_CONN=$MAX_CONN HOSTILE_INFLIGHT_BYTES=$INFLIGHT_BYTES

if [ $# -gt 0 ]; then CASES=("$@"); else mapfile -t CASES < <("$HOSTILE" -l | awk '{print $1}'); fi

# utime + stime of the server, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

run_case() {
    local name=$1 out rc
    out=$(HOSTILE_PID=$SERVER_PID timeout 120 "$HOSTILE" "$SOCK" "$name" 2>&1)
    rc=$?
    echo "$out"
    PASSED=$((PASSED + $(grep -c '^ok ' <<<"$out")))
    FAILED=$((FAILED + $(grep -c '^not ok ' <<<"$out")))
    [ "$rc" -le 1 ] || not_ok "$name: hostile exited with status $rc"
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        not_ok "$name: the server is still running"
        echo "# server log:"; sed 's/^/#   /' "$SERVER_LOG" | tail -20
        return 1
    fi
    local size
    size=$(timeout 10 nbdinfo --size "$URI" 2>&1)
    check "$name: the server still answers a new client" [ "$size" = 67108864 ]
    # Nothing left spinning: under 50 ms of CPU in the next half second.
    local t0 t1
    t0=$(cpu_ticks); sleep 0.5; t1=$(cpu_ticks)
    check "$name: the server is idle afterwards ($((t1 - t0)) ticks of CPU in 0.5 s)" [ $((t1 - t0)) -le "$IDLE_TICKS" ]
    local rss
    rss=$(rss_kb)
    check "$name: server memory bounded (VmRSS $RSS_START -> $rss kB: grew less than $RSS_LIMIT_KB kB)" \
        [ $((rss - RSS_START)) -lt "$RSS_LIMIT_KB" ]
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }

# start NAME ARGS...: a server, and its resident memory once it serves.
start() {
    start_server "$@" || return
    RSS_START=$(rss_kb)
}

start_rw() {
    start hostile "$TOP/devices/ramdisk.lua" "${LIMITS[@]}" size=64M || {
        not_ok "server starts"; finish; exit 1; }
}

# Cases that need a server of their own: NAME -> usbd-lua arguments.
declare -A SPECIAL=(
    [readonly]="$TOP/devices/ramdisk.lua -r ${LIMITS[*]} size=64M"
    [vanish-busy]="$TOP/tests/hostile/slowdisk.lua ${LIMITS[*]} size=64M delay=${HOSTILE_BUSY_DELAY:-1}"
)

start_rw
for c in "${CASES[@]}"; do
    if [ -n "${SPECIAL[$c]:-}" ]; then
        if [ "$c" = vanish-busy ] && [ ! -f "$TOP/lua/usbd/jobs.lua" ]; then
            echo "# $c skipped: needs usbd.jobs (lua/usbd/jobs.lua)"
            continue
        fi
        stop_server
        # shellcheck disable=SC2086
        start "hostile-$c" ${SPECIAL[$c]} || { not_ok "$c: its server starts"; start_rw; continue; }
        run_case "$c"
        stop_server
        check "$c: its server exits 0 on SIGTERM" [ "$SERVER_STATUS" = 0 ]
        start_rw
        continue
    fi
    run_case "$c" || start_rw
done
stop_server
check "server exits 0 on SIGTERM after every hostile case" [ "$SERVER_STATUS" = 0 ]
# Sanitizer or valgrind reports in any server's log.
REPORTS='AddressSanitizer|runtime error|LeakSanitizer|^==[0-9]+== '
if grep -qE "$REPORTS" "$SCRATCH"/*.log 2>/dev/null; then
    not_ok "sanitizer or valgrind reports in the server logs"
    grep -hE -A20 "$REPORTS" "$SCRATCH"/*.log | head -60 | sed 's/^/# /'
else
    ok "no sanitizer or valgrind reports in the server logs"
fi
finish

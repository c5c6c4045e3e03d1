#!/usr/bin/env bash
# Server operations: the request log (-v, -vv), --trace, statistics and
# SIGUSR1, usbd.now, a device that never returns, --pidfile, --run and
# --exit-last, with real clients (qemu-io, nbdinfo, nbdcopy, libnbd).
. "$(dirname "$0")/../lib.sh"

# libnbd's Python binding, as nbdsh uses it (the system's python3 has it).
PY=/usr/bin/python3
qio() { qemu-io -f raw "$URI" "$@" 2>&1; }
waitfor() {  # CONDITION...: up to 5 s
    for _ in $(seq 100); do "$@" && return 0; sleep 0.05; done
    return 1
}

# A device that fails on purpose: an errno error (ENODATA) reading 4096, a
# Lua error reading 8192, ENOSPC writing past 7M; with flush (so FUA is
# offered) and stats() that reads usbd.stats() and usbd.now().
cat >"$SCRATCH/faulty.lua" <<LUA
local usbd = require "usbd"
return { open = function(args)
    local ram = dofile("$TOP/devices/ramdisk.lua").open({ size = "8M" })
    local opened = usbd.now()
    local d = { reads = 0 }
    function d:size() return ram:size() end
    function d:read_at(buf, pos)
        self.reads = self.reads + 1
        if pos == 4096 then error(usbd.E.NODATA) end
        if pos == 8192 then error("planted bug") end
        ram:read_at(buf, pos)
    end
    function d:write_at(buf, pos)
        if pos >= 7 * 1048576 then error(usbd.E.NOSPC) end
        ram:write_at(buf, pos)
    end
    function d:trim(pos, len) ram:trim(pos, len) end
    function d:flush() end
    function d:stats()
        return { zz_reads = self.reads, served = usbd.stats().all.requests,
                 seconds = usbd.now() - opened, aa_kind = "faulty" }
    end
    return d
end }
LUA

# ---- -vv: one line per request, at reply time, with names --------------
start_server vv -vv "$SCRATCH/faulty.lua" || { not_ok "server starts"; finish; exit 1; }
qio -c 'read 4096 512' -c 'read 8192 512' -c 'write 7M 4k' -c 'write -f 0 4k' -c 'write -z 64k 64k' -c 'read 0 512' >/dev/null
# Requests the server refuses itself: past the end, DF, FAST_ZERO.
$PY - "$URI" <<'PYEOF' >/dev/null 2>&1
import sys, nbd
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1])
for args in ((512, 8 << 20), (512, 0, nbd.CMD_FLAG_DF)):
    try: h.pread(*args)
    except nbd.Error: pass
try: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)  # no write_zeroes of its own: not fast
except nbd.Error: pass
h.shutdown()
PYEOF
stop_server
vv=$(grep -E '^usbd-lua: [0-9]+\.[0-9]{6} [0-9]+ ' "$SERVER_LOG")
check "-vv: an errno error by name, with the wire error (EIO(ENODATA))" grep -q ' READ 4096 512 - EIO(ENODATA) ' <<<"$vv"
check "-vv: a Lua error is EIO on the line" grep -q ' READ 8192 512 - EIO ' <<<"$vv"
check "-vv: ... and its traceback is logged" grep -q 'READ offset 8192 length 512: device error, answered with EIO: .*planted bug' "$SERVER_LOG"
# qemu-io writes through (FUA on every write) once the export offers flush.
check "-vv: ENOSPC from the device" grep -q ' WRITE 7340032 4096 [A-Z_|-]* ENOSPC ' <<<"$vv"
check "-vv: FUA named" grep -q ' WRITE 0 4096 FUA OK ' <<<"$vv"
check "-vv: WRITE_ZEROES and NO_HOLE named" grep -Eq ' WRITE_ZEROES 65536 65536 ([A-Z_]+\|)?NO_HOLE(\|[A-Z_]+)? OK ' <<<"$vv"
check "-vv: a refusal by the server's checks shows the error sent (EINVAL)" grep -q ' READ 8388608 512 - EINVAL ' <<<"$vv"
check "-vv: DF named" grep -q ' READ 0 512 DF ' <<<"$vv"
check "-vv: FAST_ZERO named, refused with ENOTSUP" grep -q ' WRITE_ZEROES 0 4096 FAST_ZERO ENOTSUP ' <<<"$vv"
check "-vv: successes say OK with a latency" grep -Eq ' READ 0 512 - OK [0-9]+\.[0-9]$' <<<"$vv"
check "-vv: no parse-time lines with numbers for names" bash -c '! grep -q "request type" "$1"' _ "$SERVER_LOG"
check "-vv: an errno error is logged once" test "$(grep -c ENODATA "$SERVER_LOG")" = 1

# ---- -v: connections, errno errors by name, each once ---------------------
start_server v -v "$SCRATCH/faulty.lua" || not_ok "server starts (-v)"
qio -c 'read 4096 512' -c 'read 0 512' -c 'write 7M 4k' -c 'read 8192 512' >/dev/null
stop_server
check "-v: an errno error by name" grep -qx 'usbd-lua: READ offset 4096 length 512: ENODATA' "$SERVER_LOG"
check "-v: ENOSPC by name" grep -qx 'usbd-lua: WRITE offset 7340032 length 4096: ENOSPC' "$SERVER_LOG"
check "-v: a Lua error with its traceback, once" bash -c '[ $(grep -c "planted bug" "$1") = 1 ] && grep -q "stack traceback" "$1"' _ "$SERVER_LOG"
check "-v: each error once, no line for a success" bash -c '[ $(grep -c "offset" "$1") = 3 ]' _ "$SERVER_LOG"
check "-v: a line for each client connected (nbdinfo's probe, qemu-io)" test "$(grep -c "client connected" "$SERVER_LOG")" = 2

# ---- without -v: Lua errors with their traceback, nothing else per request --
start_server quiet "$SCRATCH/faulty.lua" || not_ok "server starts (no -v)"
qio -c 'read 4096 512' -c 'read 0 512' -c 'write 7M 4k' -c 'read 8192 512' >/dev/null
stop_server
check "no -v: a Lua error with its request, the EIO sent and its traceback" \
    bash -c 'grep -q "READ offset 8192 length 512: device error, answered with EIO: .*planted bug" "$1" &&
             grep -q "stack traceback" "$1"' _ "$SERVER_LOG"
check "no -v: no errno error (ENODATA, ENOSPC), no connection line" \
    bash -c '! grep -Eq "ENODATA|ENOSPC|client connected|client closed" "$1"' _ "$SERVER_LOG"

# ---- --profile: where the device's Lua spends its time ----------------------
# A device whose reads spend their time in a function of their own: it is
# the profile's top entry, with its hot lines.
cat >"$SCRATCH/busy.lua" <<LUA
local ram = dofile("$TOP/devices/ramdisk.lua")
local function busy_checksum(buf)
    local s = 0
    for _ = 1, 200 do
        for i = 0, buf.len - 1, 64 do s = (s + buf.ptr[i]) % 65521 end
    end
    return s
end
return { open = function(args)
    local d = ram.open({ size = "8M" })
    local read_at = d.read_at
    function d:read_at(buf, pos)
        read_at(self, buf, pos)
        busy_checksum(buf)
    end
    return d
end }
LUA
PROFILE="$SCRATCH/profile.txt"
start_server profile --profile "$PROFILE" "$SCRATCH/busy.lua" || not_ok "server starts (--profile)"
qemu-io -f raw "$URI" -c 'read 0 8M' -c 'read 0 8M' -c 'read 0 8M' >/dev/null 2>&1
stop_server
check "--profile: exits 0 and writes the profile" bash -c '[ "$1" = 0 ] && [ -s "$2" ]' _ "$SERVER_STATUS" "$PROFILE"
sed 's/^/# /' "$PROFILE" | head -6
top=$(grep -m1 '^ *[0-9]*%' "$PROFILE")
check "--profile: the device's hot function comes first ($top)" bash -c '[[ $1 == *busy.lua:busy_checksum* ]]' _ "$top"
check "--profile: and the lines in it where the time goes" grep -q -- '-- .*% *busy.lua:[0-9]' "$PROFILE"
err=$("$USBD" -U "$SCRATCH/p.sock" --profile /nonexistent/dir/p.txt "$TOP/devices/ramdisk.lua" size=1M 2>&1)
check "--profile to a path that cannot be written: one line saying so ($err)" \
    bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"--profile: cannot write"* ]]' _ "$err"

# LuaJIT's profiler asks for SIGPROF, which the kernel sends to whichever
# thread is running when the process's CPU timer expires. Its handler run
# on a thread other than the Lua thread can leave the VM spinning in the
# profiler's hook for good (LuaJIT issue 1460): the server stopped
# answering within seconds of 4 KiB random writes to a dedupdisk, whose
# RocksDB threads took SIGPROF. Every other thread must block it.
sigprof_takers() {  # PID: the threads other than PID's main one that take SIGPROF (27)
    local t
    for t in /proc/"$1"/task/*; do
        [ "${t##*/}" = "$1" ] && continue
        (( (0x$(awk '/^SigBlk/ { print $2 }' "$t/status") >> 26) & 1 )) || echo "$(cat "$t/comm")"
    done
}
start_server profile-load --profile "$SCRATCH/profile-load.txt" "$TOP/devices/dedupdisk.lua" \
    dir="$SCRATCH/profile-load.store" size=256M || not_ok "server starts (--profile, dedupdisk)"
fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --refill_buffers \
    --size=64M --time_based --runtime=5 >/dev/null 2>&1 &
FIO=$!
sleep 2
takers=$(sigprof_takers "$SERVER_PID" | sort | uniq -c | tr -s ' \n' ' ')
check "--profile: only the Lua thread takes SIGPROF (others taking it:${takers:- none})" test -z "$takers"
wait_secs=0
while kill -0 "$FIO" 2>/dev/null && [ $wait_secs -lt 30 ]; do sleep 1; wait_secs=$((wait_secs + 1)); done
kill "$FIO" 2>/dev/null; wait "$FIO" 2>/dev/null
check "--profile: 5 s of 4 KiB random writes to a dedupdisk end in time (${wait_secs} s more)" test "$wait_secs" -lt 30
timeout 30 bash -c 'kill -TERM "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.1; done' _ "$SERVER_PID"
stopped=$?
kill -KILL "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "--profile: the server then stops on SIGTERM and writes its profile" \
    bash -c '[ "$1" = 0 ] && [ -s "$2" ]' _ "$stopped" "$SCRATCH/profile-load.txt"

# ---- --jit-log: which traces LuaJIT compiles, and which it gives up --------
JITLOG="$SCRATCH/jit.txt"
start_server jitlog --jit-log "$JITLOG" "$SCRATCH/busy.lua" || not_ok "server starts (--jit-log)"
qemu-io -f raw "$URI" -c 'read 0 8M' -c 'read 0 8M' >/dev/null 2>&1
stop_server
check "--jit-log: exits 0" test "$SERVER_STATUS" = 0
grep -m3 'busy.lua' "$JITLOG" | sed 's/^/# /'
check "--jit-log: the device's hot loop compiled, named by its line" grep -q '^\[TRACE *[0-9]* busy.lua:[0-9]* loop\]' "$JITLOG"
err=$("$USBD" -U "$SCRATCH/p.sock" --jit-log /nonexistent/dir/j.txt "$TOP/devices/ramdisk.lua" size=1M 2>&1)
check "--jit-log to a path that cannot be written: one line saying so ($err)" \
    bash -c '[ $(wc -l <<<"$1") = 1 ] && [[ $1 == *"--jit-log: cannot write"* ]]' _ "$err"

# ---- --trace: a record per request, the fields documented ------------------
TRACE="$SCRATCH/trace"
start_server trace --trace "$TRACE" "$SCRATCH/faulty.lua" || not_ok "server starts (--trace)"
qio -c 'write -P 5 0 64k' -c 'read -P 5 0 64k' -c 'read 4096 512' -c 'write -f 64k 4k' -c 'flush' -c 'discard 1M 64k' >/dev/null
nbdcopy "$URI" - >/dev/null 2>&1   # a second connection: reads the 8M (the faulty block fails)
stop_server
check "--trace: every record has 8 fields" awk 'NF != 8 { exit 1 }' "$TRACE"
check "--trace: time, conn, numbers and latency are numbers" \
    awk '$1 !~ /^[0-9]+\.[0-9][0-9][0-9][0-9][0-9][0-9]$/ || $2 !~ /^[0-9]+$/ || $4 !~ /^[0-9]+$/ || $5 !~ /^[0-9]+$/ || $8 !~ /^[0-9.]+$/ { exit 1 }' "$TRACE"
# Connections are numbered in order (start_server's probe sent nothing).
conns=$(awk '{ print $2 }' "$TRACE" | sort -un | paste -sd' ')
check "--trace: two connections sent requests ($conns)" test "$(wc -w <<<"$conns")" = 2
first=${conns%% *}; second=${conns##* }
c1=$(awk -v c="$first" '$2 == c' "$TRACE")
# qemu-io: 2 WRITEs, 2 READs, 1 TRIM, and FLUSH for 'flush' and at exit.
check "--trace: qemu-io's connection: a record for each request it sent" \
    bash -c '[ $(grep -c " WRITE " <<<"$1") = 2 ] && [ $(grep -c " READ " <<<"$1") = 2 ] &&
             [ $(grep -c " TRIM 1048576 65536 - OK " <<<"$1") = 1 ] && [ $(grep -c " FLUSH 0 0 - OK " <<<"$1") -ge 1 ] &&
             [ $(wc -l <<<"$1") = $((5 + $(grep -c " FLUSH " <<<"$1"))) ] &&
             grep -q " WRITE 65536 4096 FUA OK " <<<"$1" && grep -q " READ 4096 512 - EIO(ENODATA) " <<<"$1"' _ "$c1"
c2=$(awk -v c="$second" '$2 == c && $3 == "READ" && $7 == "OK" { bytes += $5 } END { print bytes + 0 }' "$TRACE")
check "--trace: nbdcopy's connection read the whole device ($c2 bytes)" test "$c2" -ge 8388608
check "--trace: exit statistics count what the trace holds" \
    bash -c 'grep -q "^  all: $(wc -l <"$2") requests" "$1"' _ "$SERVER_LOG" "$TRACE"

# ---- SIGUSR1: the server's statistics, then the device's ------------------
start_server usr1 "$SCRATCH/faulty.lua" || not_ok "server starts (SIGUSR1)"
qio -c 'write -P 1 0 8k' -c 'read 0 4k' -c 'read 4096 512' >/dev/null
kill -USR1 "$SERVER_PID"
waitfor grep -q 'zz_reads' "$SERVER_LOG"
check "SIGUSR1: statistics by kind with percentiles" \
    grep -Eq '^  READ: 2 requests, 4096 bytes, 1 errors; latency p50 [0-9]+ us, p90 [0-9]+ us, p99 [0-9]+ us, max [0-9]+ us$' "$SERVER_LOG"
check "SIGUSR1: WRITE counted" grep -q '^  WRITE: 1 requests, 8192 bytes, 0 errors' "$SERVER_LOG"
check "SIGUSR1: memory: RSS, its anonymous part, the Lua heap, malloc's in use of held" \
    bash -c 'sed -n "s/^  memory: RSS \([0-9.]*\) MiB (\([0-9.]*\) anonymous), Lua heap \([0-9.]*\) MiB, malloc \([0-9.]*\) MiB in use of \([0-9.]*\) held$/\1 \2 \3 \4 \5/p" "$1" | head -1 |
        awk "NF == 5 && \$1 > 0 && \$2 <= \$1 && \$3 > 0 && \$3 < \$1 && \$4 > 0 && \$4 <= \$5 { ok = 1 } END { exit !ok }"' _ "$SERVER_LOG"
check "SIGUSR1: the device's stats(), sorted, one name: value each" \
    bash -c 'sed -n "/device statistics/,\$p" "$1" | grep "^  " | head -4 | cut -d: -f1 | tr -d " " | paste -sd, | grep -qx "aa_kind,seconds,served,zz_reads"' _ "$SERVER_LOG"
check "SIGUSR1: usbd.stats() seen from the device (served = all)" \
    bash -c 'n=$(sed -n "s/^  all: \([0-9]*\) requests.*/\1/p" "$1" | head -1); [ -n "$n" ] && grep -qx "  served: $n" "$1"' _ "$SERVER_LOG"
check "SIGUSR1: usbd.now() advanced since open" grep -Eq '^  seconds: (0\.[0-9]*[1-9]|[1-9])' "$SERVER_LOG"
check "SIGUSR1: the server goes on serving" bash -c 'qemu-io -f raw "$1" -c "read -P 1 0 4k" | grep -q "^read 4096"' _ "$URI"
stop_server
check "exit: statistics again, and exit 0" bash -c '[ $(grep -c "statistics after" "$1") = 2 ] && [ "$2" = 0 ]' _ "$SERVER_LOG" "$SERVER_STATUS"

# ---- A device that never returns: a second signal, 1 s on, ends it ---------
cat >"$SCRATCH/stuck.lua" <<'LUA'
return { open = function(args) return {
    size = function() return 1048576 end,
    read_at = function(self, buf, pos)
        io.open(args.marker, "w"):close()
        while true do end
    end,
} end }
LUA
PIDFILE="$SCRATCH/stuck.pid"
start_server stuck --pidfile "$PIDFILE" "$SCRATCH/stuck.lua" marker="$SCRATCH/stuck.in" || not_ok "server starts (stuck)"
check "--pidfile: written once serving, with the server's pid" test "$(cat "$PIDFILE" 2>/dev/null)" = "$SERVER_PID"
timeout 20 qemu-io -r -f raw "$URI" -c 'read 0 512' >/dev/null 2>&1 &
CLIENT=$!
waitfor test -e "$SCRATCH/stuck.in"
kill -TERM "$SERVER_PID"
sleep 2   # a repeat sooner than 1 s after the first is the same stop, ignored
check "stuck device: the first SIGTERM does not end the process" kill -0 "$SERVER_PID"
t0=$(date +%s%N)
kill -TERM "$SERVER_PID"
for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
wait "$SERVER_PID"; status=$?; SERVER_PID=
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "stuck device: the second SIGTERM ends it promptly (${ms} ms) with a non-zero status ($status)" \
    bash -c '[ "$1" -lt 3000 ] && [ "$2" -ne 0 ]' _ "$ms" "$status"
check "stuck device: one line says the device did not return" \
    bash -c '[ $(grep -c "did not return" "$1") = 1 ]' _ "$SERVER_LOG"
check "stuck device: the Unix socket is removed" test ! -e "$SOCK"
check "stuck device: the pid file is removed" test ! -e "$PIDFILE"
kill "$CLIENT" 2>/dev/null; wait "$CLIENT" 2>/dev/null

timeout 20 "$USBD" --check "$SCRATCH/stuck.lua" marker="$SCRATCH/check.in" >/dev/null 2>"$SCRATCH/check.log" &
CHECKER=$!
waitfor test -e "$SCRATCH/check.in"
kill -INT "$CHECKER"; wait "$CHECKER"; status=$?
check "--check stuck in a device: one SIGINT ends it (status $status) with one line" \
    bash -c '[ "$1" = 130 ] && [ $(wc -l <"$2") = 1 ] && grep -q "check stopped" "$2"' _ "$status" "$SCRATCH/check.log"

# ---- --pidfile on a normal exit ---------------------------------------------
start_server pid --pidfile "$SCRATCH/pid" devices/ramdisk.lua size=1M || not_ok "server starts (--pidfile)"
check "--pidfile: holds the pid" test "$(cat "$SCRATCH/pid")" = "$SERVER_PID"
stop_server
check "--pidfile: removed at exit" test ! -e "$SCRATCH/pid"

# ---- --run ---------------------------------------------------------------------
out=$("$USBD" --run 'nbdinfo --size "$uri"; echo "sock=$unixsocket nbd=$nbd port=$port."' devices/ramdisk.lua size=3M 2>"$SCRATCH/run.log"); status=$?
check "--run 'nbdinfo \$uri': the command reaches the device and exits 0" bash -c '[ "$1" = 0 ] && grep -qx 3145728 <<<"$2"' _ "$status" "$out"
sock=$(sed -n 's/^sock=\(.*\) nbd=.*/\1/p' <<<"$out")
check "--run: a private Unix socket, \$nbd = \$uri, no \$port" bash -c 'grep -q "^sock=/.* nbd=nbd+unix:///?socket=$2 port=\.$" <<<"$1"' _ "$out" "$sock"
check "--run: the private socket and its folder are gone" bash -c '[ -n "$1" ] && [ ! -e "$1" ] && [ ! -e "$(dirname "$1")" ]' _ "$sock"
"$USBD" --run 'nbdinfo "nbd+unix:///?socket=/nonexistent/socket"' devices/ramdisk.lua size=1M >/dev/null 2>&1; status=$?
nbdinfo "nbd+unix:///?socket=/nonexistent/socket" >/dev/null 2>&1; want=$?
check "--run: a failing command's status propagates ($status = nbdinfo's $want)" bash -c '[ "$1" -ne 0 ] && [ "$1" = "$2" ]' _ "$status" "$want"
"$USBD" --run 'exit 7' devices/ramdisk.lua size=1M >/dev/null 2>&1; status=$?
check "--run 'exit 7' exits 7" test "$status" = 7
out=$("$USBD" -U "$SCRATCH/run.sock" --run 'nbdcopy "$uri" - | wc -c' devices/ramdisk.lua size=2M 2>/dev/null); status=$?
check "--run with -U: serves there (nbdcopy read 2M)" bash -c '[ "$1" = 0 ] && [ "$2" = 2097152 ] && [ ! -e "$3" ]' _ "$status" "$out" "$SCRATCH/run.sock"
"$USBD" --run "sleep 30; touch '$SCRATCH/slept'" devices/ramdisk.lua size=1M >/dev/null 2>&1 &
RUNNER=$!
sleep 0.5
kill -TERM "$RUNNER"; wait "$RUNNER"; status=$?
check "--run: SIGTERM to the server ends the command too (status $status)" bash -c '[ "$1" = 143 ] && [ ! -e "$2" ]' _ "$status" "$SCRATCH/slept"
err=$("$USBD" --run true devices/ramdisk.lua /dev/nbd0 2>&1); status=$?
check "--run with /dev/nbdN: one line says what is wrong" bash -c '[ "$1" = 2 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q "exclude each other" <<<"$2"' _ "$status" "$err"
err=$("$USBD" --ublk-recovery 30 devices/ramdisk.lua /dev/nbd0 2>&1); status=$?
check "--ublk-recovery without /dev/ublkbN: one line says what is wrong" bash -c '[ "$1" = 2 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q "serve /dev/ublkbN" <<<"$2"' _ "$status" "$err"
err=$("$USBD" --ublk-recovery 0 devices/ramdisk.lua /dev/ublkb0 2>&1); status=$?
check "--ublk-recovery 0: one line says what is wrong" bash -c '[ "$1" = 2 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q -- "--ublk-recovery" <<<"$2"' _ "$status" "$err"

# ---- SIGHUP: the device's size asked again -----------------------------------
IMG="$SCRATCH/grow.img"
truncate -s 8M "$IMG"
start_server grow filedisk path="$IMG"
# A client connected before the resize keeps the size it was given.
$PY -c 'import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); print(h.get_size(), flush=True); time.sleep(1.5)
print(h.get_size()); h.shutdown()' "$URI" >"$SCRATCH/grow.before" &
EARLY=$!
sleep 0.5
truncate -s 16M "$IMG"
kill -HUP "$SERVER_PID"
waitfor grep -q "SIGHUP: serving" "$SERVER_LOG"
check "SIGHUP: a grown file is served whole to new clients" bash -c 'nbdinfo --size "$1" | grep -qx 16777216' _ "$URI"
check "SIGHUP: one line says so, with both sizes" grep -qx "usbd-lua: SIGHUP: serving 16777216 bytes now (8388608 before)" "$SERVER_LOG"
check "SIGHUP: the new end is written and read back" bash -c \
    'qemu-io -f raw -c "write -P 0x5a 15M 1M" -c "read -P 0x5a 15M 1M" "$1" 2>&1 | grep -c "^read 1048576" | grep -qx 1' _ "$URI"
wait "$EARLY"
check "SIGHUP: a client connected before keeps its size" bash -c '[ "$(cat "$1")" = "$(printf "8388608\n8388608")" ]' _ "$SCRATCH/grow.before"
truncate -s 20000000 "$IMG"
kill -HUP "$SERVER_PID"
waitfor grep -q "not whole" "$SERVER_LOG"
check "SIGHUP: a size of no whole blocks is refused in one line, the old size kept" bash -c \
    'grep -q "SIGHUP: the device holds 20000000 bytes now, not whole 4096-byte blocks: still serving 16777216" "$1" && nbdinfo --size "$2" | grep -qx 16777216' _ "$SERVER_LOG" "$URI"
# A client from before a shrink asks past the new end: the server refuses.
$PY -c 'import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(1)
try:
    h.pread(4096, 5 << 20); print("read")
except nbd.Error as e:
    print("refused", e.errnum)' "$URI" >"$SCRATCH/shrink.after" &
EARLY=$!
sleep 0.3
truncate -s 4M "$IMG"
kill -HUP "$SERVER_PID"
waitfor grep -q "serving 4194304 bytes now" "$SERVER_LOG"
wait "$EARLY"
check "SIGHUP: a shrunk file: new clients get its size" bash -c 'nbdinfo --size "$1" | grep -qx 4194304' _ "$URI"
check "SIGHUP: a shrunk file: past its end is refused ($(cat "$SCRATCH/shrink.after"))" grep -q "^refused" "$SCRATCH/shrink.after"
stop_server

# ---- --exit-last ---------------------------------------------------------------
SOCK="$SCRATCH/last.sock"; URI="nbd+unix:///?socket=$SOCK"
"$USBD" -U "$SOCK" --exit-last devices/ramdisk.lua size=1M >"$SCRATCH/last.log" 2>&1 &
SERVER_PID=$!
waitfor test -S "$SOCK"
# One client stays connected while another comes and goes.
$PY -c 'import sys, time, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(1.5); h.pread(512, 0); h.shutdown()' "$URI" &
HOLDER=$!
sleep 0.5
check "--exit-last: a second client is served" bash -c 'nbdinfo --size "$1" | grep -qx 1048576' _ "$URI"
sleep 0.3
check "--exit-last: still serving while a client remains" kill -0 "$SERVER_PID"
wait "$HOLDER"
for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    not_ok "--exit-last: exits once the last client has gone"
else
    wait "$SERVER_PID"; status=$?; SERVER_PID=
    check "--exit-last: exits 0 once the last client has gone, socket removed" bash -c '[ "$1" = 0 ] && [ ! -e "$2" ]' _ "$status" "$SOCK"
fi

finish

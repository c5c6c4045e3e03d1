#!/usr/bin/env bash
# Errors: device errors reach the client and the server keeps serving;
# read-only exports refuse writes; mistakes at start-up get one clear line.
. "$(dirname "$0")/../lib.sh"

qio() { qemu-io -f raw "$URI" "$@" 2>&1; }

# Two faults, two faultdisks; below them a layer that hides the ramdisk's
# trim and write_zeroes, so zeroes must go through write_at.
cat >"$SCRATCH/nozero.lua" <<'LUA'
local usbd = require "usbd"
local Nozero = usbd.transform()
Nozero.trim, Nozero.write_zeroes = false, false
return { transform = true, params = {}, open = function(_, base) return Nozero:wrap(base) end }
LUA
start_server fault examples/faultdisk.lua ops=read range=1M-2M error=lua \
    -- examples/faultdisk.lua ops=write range=7M-8M error=ENOSPC -- "$SCRATCH/nozero.lua" -- ramdisk size=8M ||
    { not_ok "server starts"; finish; exit 1; }
out=$(qio -c 'read 1M 4k')
check "a Lua error in read_at reaches the client as EIO" grep -q 'Input/output error' <<<"$out"
check "... and is logged with its traceback" grep -q 'injected read fault at 1048576' "$SERVER_LOG"
check "... which names the function that raised it" grep -q "in function 'raise'" "$SERVER_LOG"
check "... stack traceback in the log" grep -q 'stack traceback' "$SERVER_LOG"
out=$(qio -c 'write -P 7 0 4k' -c 'read -P 7 0 4k')
check "the next requests succeed" bash -c '[ $(grep -c "^wrote\|^read" <<<"$1") = 2 ]' _ "$out"
out=$(qio -c 'read 1M 4k' -c 'read 0 4k')
check "an error and a success on one connection" bash -c 'grep -q "Input/output error" <<<"$1" && grep -q "^read 4096/4096 bytes at offset 0" <<<"$1"' _ "$out"
out=$(qio -c 'write 7M 4k')
check "error(usbd.E.NOSPC) reaches the client as ENOSPC" grep -q 'No space left on device' <<<"$out"
check "the server is still up" kill -0 "$SERVER_PID"
# nozero.lua hid write_zeroes and trim: zeroes go through write_at.
out=$(qio -c 'write -P 9 2M 3M' -c 'write -z 2100000 2000000' -c 'read -P 9 2M 2848' -c 'read -P 0 2100000 2000000' -c 'read -P 9 4100000 1M')
check "write-zeroes falls back to writes of zeroes" bash -c '[ $(grep -c "^read" <<<"$1") = 3 ] && ! grep -q "failed" <<<"$1"' _ "$out"
stop_server
check "exit 0 after device errors" test "$SERVER_STATUS" = 0

start_server ro -r devices/ramdisk.lua size=1M || not_ok "read-only server starts"
check "-r: nbdinfo says read-only" bash -c 'nbdinfo --json "$1" | grep -q "\"is_read_only\": true"' _ "$URI"
# qemu honours the read-only flag and will not open the export for writing;
# the EPERM a write gets on the wire is tested by tests/hostile.
out=$(qemu-io -f raw "$URI" -c 'write 0 4k' 2>&1)
check "-r: qemu-io cannot open it for writing" grep -q 'Permission denied' <<<"$out"
out=$(qio -r -c 'read -P 0 0 4k')
check "-r: reads still work" grep -q '^read 4096/4096' <<<"$out"
stop_server

# Start-up mistakes: one line on stderr, a non-zero exit.
one_line_error() {  # DESCRIPTION PATTERN ARGS...
    local what=$1 pat=$2; shift 2
    local err rc
    err=$(timeout 10 "$USBD" "$@" 2>&1 >/dev/null); rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && grep -q -- "$pat" <<<"$err"; then
        ok "$what"
    else
        not_ok "$what (exit $rc: $err)"
    fi
}
printf 'return {' >"$SCRATCH/syntax.lua"
printf 'return {}' >"$SCRATCH/noopen.lua"
printf 'return { open = function() return { size = function() return 1 end } end }' >"$SCRATCH/noread.lua"
printf 'return { open = function() error("disk on fire") end }' >"$SCRATCH/openfails.lua"
one_line_error "no script" "no device script" -U "$SCRATCH/x.sock"
one_line_error "unknown option" "unknown option '--bogus'" --bogus devices/ramdisk.lua
one_line_error "argument without =" "'size' is not KEY=VALUE" -U "$SCRATCH/x.sock" devices/ramdisk.lua size
one_line_error "missing script file" "no device script" -U "$SCRATCH/x.sock" "$SCRATCH/none.lua"
one_line_error "syntax error in the script" "cannot load device script" -U "$SCRATCH/x.sock" "$SCRATCH/syntax.lua"
one_line_error "script without open" "open(args) function" -U "$SCRATCH/x.sock" "$SCRATCH/noopen.lua"
one_line_error "device without read_at" "no read_at() method" -U "$SCRATCH/x.sock" "$SCRATCH/noread.lua"
one_line_error "open raises" "open failed: .*disk on fire" -U "$SCRATCH/x.sock" "$SCRATCH/openfails.lua"
one_line_error "bad size argument: names the key and the forms" "size=lots: not a size; use bytes or a number with K, M, G, T or P" \
    -U "$SCRATCH/x.sock" devices/ramdisk.lua size=lots
one_line_error "bad size option: names the option and the forms" "--max-request=10Q: not a size; use bytes" \
    --max-request 10Q -U "$SCRATCH/x.sock" devices/ramdisk.lua
err=$(timeout 10 "$USBD" -U "$SCRATCH/x.sock" dedupdisk dir="$SCRATCH/nostore" size=1G cache=1.3K 2>&1)
check "a device's size key: no source position in its error ($err)" \
    bash -c 'grep -q "cache=1.3K: not a whole number of bytes" <<<"$1" && ! grep -q "\.lua:[0-9]" <<<"$1"' _ "$err"
one_line_error "a bad port" "port" -p 99999 devices/ramdisk.lua
if [ ! -e /sys/block/nbd0 ]; then
    one_line_error "no nbd driver: says what to do" "modprobe nbd" devices/ramdisk.lua
    one_line_error "no such /dev/nbdN" "nbd" devices/ramdisk.lua /dev/nbd0
fi

# Unix sockets: a stale one (server killed) is replaced, a live one refused.
start_server stale devices/ramdisk.lua size=1M
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "a killed server leaves its socket behind" test -S "$SCRATCH/stale.sock"
start_server stale devices/ramdisk.lua size=2M
check "a stale socket is replaced at start-up" bash -c 'nbdinfo --size "$1" | grep -qx 2097152' _ "$URI"
one_line_error "a live socket is an error" "already listening" -U "$SOCK" devices/ramdisk.lua size=1M
check "... and the live server is untouched" bash -c 'nbdinfo --size "$1" | grep -qx 2097152' _ "$URI"
stop_server

finish

#!/usr/bin/env bash
# Stacking devices: each layer gets its own arguments, mistakes that used to
# pass silently are one clear line, a stack three deep serves from another
# directory and offers what its bottom device can do, and ext4 on AES-XTS
# over a file leaves no plaintext in the file.
. "$(dirname "$0")/../lib.sh"

# mistake PATTERN ARGS...: --check refuses to open the stack, saying PATTERN.
mistake() {
    local what=$1 pat=$2; shift 2
    local out
    out=$(cd "$SCRATCH" && timeout 20 "$USBD" --check "$@" 2>&1); rc=$?
    if [ "$rc" = 1 ] && grep -q "^not ok - open.*$pat" <<<"$out" && ! grep -q "stack overflow" <<<"$out"; then
        ok "$what"
    else
        not_ok "$what (exit $rc: $out)"
    fi
}
head -c 64 /dev/urandom >"$SCRATCH/disk.key"
mistake "an unknown key is named" "unknown parameter 'sise' for ramdisk" ramdisk sise=1M
mistake "a repeated key is refused" "size= is given twice for ramdisk" ramdisk size=1M size=2M
mistake "a transform without a base says so" "cowdisk is a transform and needs a device below it" cowdisk
mistake "nothing goes below a device that is no transform" "ramdisk does not stand on another device" ramdisk -- filedisk path=x.img
mistake "the old flat base= is refused, saying where the base goes" "unknown parameters 'base', 'size' for faultdisk.*after" \
    faultdisk base=examples/slowdisk.lua size=8M
# Once: path= given to the whole stack silently ran the cipher over a ramdisk.
mistake "a path= the cipher would have ignored is refused" "unknown parameter.*'path'.* for cryptdisk" \
    tracedisk -- cryptdisk keyfile="$SCRATCH/disk.key" path="$SCRATCH/x.img" size=8M
check "... and no file was created" test ! -e "$SCRATCH/x.img"
mistake "a layer that is neither KEY=VALUE nor a device" "'filedsk' is not KEY=VALUE" cowdisk -- filedsk path=x
# A script that opens itself, and two that open each other.
mkdir -p "$SCRATCH/loops"
cat >"$SCRATCH/loops/selfish.lua" <<'LUA'
local usbd = require "usbd"
return { params = {}, open = function() return usbd.open_device("selfish.lua", {}) end }
LUA
cat >"$SCRATCH/loops/ping.lua" <<'LUA'
return { params = {}, open = function() return require("usbd").open_device("pong.lua") end }
LUA
cat >"$SCRATCH/loops/pong.lua" <<'LUA'
return { params = {}, open = function() return require("usbd").open_device("ping.lua") end }
LUA
mistake "a device opening itself is refused, not a stack overflow" "selfish opens itself.*selfish -> selfish" "$SCRATCH/loops/selfish.lua"
mistake "two devices opening each other too" "ping opens itself.*ping -> pong -> ping" "$SCRATCH/loops/ping.lua"

# A script finds the script it opens beside itself, from any directory.
mkdir -p "$SCRATCH/lib" "$SCRATCH/elsewhere"
cat >"$SCRATCH/lib/mirror.lua" <<'LUA'
-- Opens its helper by a path relative to itself.
local usbd = require "usbd"
return { params = { "size" }, open = function(args)
    return usbd.open_device("helper.lua", { size = args.size })
end }
LUA
cat >"$SCRATCH/lib/helper.lua" <<'LUA'
return { params = { "size" }, open = function(args) return require("usbd").open_device("ramdisk", args) end }
LUA
check "open_device resolves a script against the calling script's directory" \
    bash -c 'cd "$1" && "$2" --check ../lib/mirror.lua size=1M >"$1/out" 2>&1' _ "$SCRATCH/elsewhere" "$USBD"

# Three deep, started from another directory, by name.
cd "$SCRATCH/elsewhere"
start_server three tracedisk out="$SCRATCH/trace.log" -- cryptdisk keyfile="$SCRATCH/disk.key" \
    -- filedisk path="$SCRATCH/three.img" size=64M || { not_ok "a stack three deep starts"; finish; exit 1; }
cd "$TOP"
info=$(nbdinfo --json "$URI")
check "three deep: nbdinfo sees the filedisk's flush through it" grep -q '"can_flush": true' <<<"$info"
check "three deep: ... and its trim" grep -q '"can_trim": true' <<<"$info"
check "three deep: ... and FUA" grep -q '"can_fua": true' <<<"$info"
out=$(qemu-io -f raw "$URI" -c 'write -P 0x61 1M 1M' -c 'read -P 0x61 1M 1M' -c 'discard 1M 64k' -c 'read -P 0 1M 64k' -c 'flush' 2>&1)
check "three deep: writes, trims and flushes work" bash -c '! grep -q "fail\|error" <<<"$1" && [ $(grep -c "^read" <<<"$1") = 2 ]' _ "$out"
check "three deep: the tracer saw the trim and the flush" bash -c 'grep -q " trim " "$1" && grep -q " flush " "$1"' _ "$SCRATCH/trace.log"
stop_server
check "three deep: the file is 64M" test "$(stat -c %s "$SCRATCH/three.img")" = $((64 << 20))
check "three deep: it holds no plaintext" bash -c '! grep -q aaaaaaaaaaaaaaaa "$1"' _ "$SCRATCH/three.img"
check "three deep: exit 0" test "$SERVER_STATUS" = 0

# An error raised two layers down reaches the log with its own traceback,
# though tracedisk catches it (to trace it) and raises it again.
start_server deep tracedisk out="$SCRATCH/t2.log" -- faultdisk ops=read range=0-1M error=lua -- ramdisk size=8M ||
    { not_ok "tracedisk over faultdisk starts"; finish; exit 1; }
out=$(qemu-io -f raw "$URI" -c 'read 0 4k' 2>&1)
check "a fault below the tracer reaches the client as EIO" grep -q 'Input/output error' <<<"$out"
check "... logged with the faultdisk's frames, where it was raised" \
    bash -c 'grep -q "injected read fault at 0" "$1" && grep -q "faultdisk.lua:[0-9]*: in function .strike." "$1"' _ "$SERVER_LOG"
stop_server
check "... and the tracer traced it" grep -q ' read .* error ' "$SCRATCH/t2.log"

finish

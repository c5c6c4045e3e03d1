#!/usr/bin/env bash
# usbd-lua --check: the shipped devices keep the contract, devices that
# break it are caught, and the data a checked device holds is left as it was.
. "$(dirname "$0")/../lib.sh"

run_check() { "$USBD" --check "$@" >"$SCRATCH/check.out" 2>&1; }

check "--check passes devices/ramdisk.lua" run_check devices/ramdisk.lua size=32M
check "... with a total line" grep -q '^[0-9]* passed, 0 failed$' "$SCRATCH/check.out"
check "... having checked trim and write_zeroes" bash -c 'grep -q "^ok - trim" "$1" && grep -q "^ok - write_zeroes" "$1"' _ "$SCRATCH/check.out"

head -c 8M /dev/urandom >"$SCRATCH/disk.img"
sum=$(sha256sum <"$SCRATCH/disk.img")
check "--check passes devices/filedisk.lua" run_check devices/filedisk.lua path="$SCRATCH/disk.img"
check "... and flush" grep -q '^ok - flush returns' "$SCRATCH/check.out"
check "... and leaves the file's bytes as they were" test "$(sha256sum <"$SCRATCH/disk.img")" = "$sum"
check "... and its extents" grep -q '^ok - extents' "$SCRATCH/check.out"
check "--check passes devices/filedisk.lua direct=true" run_check devices/filedisk.lua path="$SCRATCH/disk.img" direct=true
check "-r --check: a read-only device passes the read checks" run_check -r devices/ramdisk.lua size=1M

# Devices that break the contract.
cat >"$SCRATCH/halfread.lua" <<'LUA'
-- Fills only the first half of what it is asked for.
return { open = function() return {
    size = function() return 1048576 end,
    read_at = function(self, buf, pos) buf:sub(0, math.floor(buf.len / 2)):fill(0) end,
} end }
LUA
cat >"$SCRATCH/spill.lua" <<'LUA'
-- A ramdisk whose writes spill one byte past their end.
local usbd = require "usbd"
local ram = dofile("devices/ramdisk.lua")
local spill = usbd.buffer(1)
spill:fill(0x5a)
return { open = function(args)
    local dev = ram.open(args)
    local write_at = dev.write_at
    function dev:write_at(buf, pos)
        write_at(self, buf, pos)
        if pos + buf.len < self:size() then self.store:write(spill, pos + buf.len) end
    end
    return dev
end }
LUA
cat >"$SCRATCH/lazytrim.lua" <<'LUA'
-- Trims by doing nothing: trimmed ranges keep their old bytes.
local ram = dofile("devices/ramdisk.lua")
return { open = function(args)
    local dev = ram.open(args)
    function dev:trim() end
    return dev
end }
LUA
cat >"$SCRATCH/allzero.lua" <<'LUA'
-- A filedisk that calls everything a hole of zeroes.
local filedisk = dofile("devices/filedisk.lua")
return { open = function(args)
    local dev = filedisk.open(args)
    function dev:extents(pos, count) return { count, 3 } end
    return dev
end }
LUA
expect_caught() {  # DESCRIPTION PATTERN SCRIPT ARGS...
    local what=$1 pat=$2; shift 2
    if ! run_check "$@" && grep -q "^not ok - $pat" "$SCRATCH/check.out"; then ok "$what"; else not_ok "$what"; cat "$SCRATCH/check.out"; fi
}
expect_caught "--check catches a read_at that leaves bytes unwritten" "read_at fills the whole buffer" "$SCRATCH/halfread.lua"
expect_caught "--check catches a write_at that touches its neighbours" "write_at stores its bytes and nothing else" "$SCRATCH/spill.lua" size=1M
expect_caught "--check catches a trim that does not zero" "trim: a trimmed range reads as zeroes" "$SCRATCH/lazytrim.lua" size=1M
expect_caught "--check reports a device that fails to open" "open(args)" devices/ramdisk.lua size=huge
expect_caught "--check reports a read_at that raises" "read_at fills" examples/faultdisk.lua ops=read range=0-8M error=lua -- ramdisk size=8M
check "... with the error it raised" grep -q 'injected read fault' "$SCRATCH/check.out"
expect_caught "--check catches extents that call data zero" "extents: runs from pos" "$SCRATCH/allzero.lua" path="$SCRATCH/disk.img"
expect_caught "--check catches extents that are not runs" "extents: runs from pos" \
    tests/integration/devices/countdisk.lua size=1M extents=garbage

finish

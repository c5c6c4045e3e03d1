#!/usr/bin/env bash
# usbd-lua --lua-path: what a device author's luajit and busted need to
# require "usbd" outside the repository, from the tree's usbd-lua and from
# an installed one. A device and its spec (docs/guide.md, Testing) live in a
# folder of their own, away from the tree.
. "$(dirname "$0")/../lib.sh"
need_tools busted luajit

AUTHOR="$SCRATCH/author"
mkdir -p "$AUTHOR/spec"
cat >"$AUTHOR/patterndisk.lua" <<'LUA'
local usbd = require "usbd"
local Disk = {}
Disk.__index = Disk
function Disk:size() return self.mem.len end
function Disk:read_at(buf, pos) buf:copy_from(self.mem:sub(pos, buf.len)) end
function Disk:write_at(buf, pos) self.mem:copy_from(buf, pos) end
return {
    params = { size = "the disk's size (default 64M)" },
    open = function(args)
        return setmetatable({ mem = usbd.buffer(usbd.size_arg(args, "size", "64M")) }, Disk)
    end,
}
LUA
cat >"$AUTHOR/spec/patterndisk_spec.lua" <<'LUA'
local usbd = require "usbd"
local conforms = require "usbd.conformance"

describe("patterndisk", function()
    it("keeps the contract", function()
        conforms(usbd.open_device("../patterndisk.lua", { size = "4M" }))
    end)
    it("reads its size key", function()
        assert.are.equal(1.5 * 2 ^ 20, usbd.open_device("../patterndisk.lua", { size = "1.5M" }):size())
    end)
end)
LUA
cd "$AUTHOR"

# The author's spec and a luajit line, with the environment BIN prints.
# WHERE names the case; ROOT is where BIN's paths must point.
author_runs() {  # WHERE BIN ROOT
    local where=$1 bin=$2 root=$3 env out
    env=$(env -u LUA_PATH -u USBD_LIB "$bin" --lua-path 2>&1)
    check "$where: --lua-path prints two shell lines into $root (${env//$'\n'/ })" \
        bash -c '[ $(wc -l <<<"$1") = 2 ] && grep -q "^export LUA_PATH='\''$2/[^;]*/?.lua;.*;;'\''$" <<<"$1" &&
                 grep -q "^export USBD_LIB='\''$2/.*/libusbd.so'\''$" <<<"$1"' _ "$env" "$root"
    out=$(env -u LUA_PATH -u USBD_LIB bash -c 'eval "$1" && busted --lua=luajit -o TAP spec' _ "$env" 2>&1)
    check "$where: the author's busted spec passes from $AUTHOR ($(grep -c '^ok' <<<"$out") ok)" \
        bash -c '[ $(grep -c "^ok" <<<"$1") = 2 ] && ! grep -q "^not ok" <<<"$1"' _ "$out"
    [ "$(grep -c '^ok' <<<"$out")" = 2 ] || sed 's/^/# /' <<<"$out" | head -20
    out=$(env -u LUA_PATH -u USBD_LIB bash -c 'eval "$1" && luajit -e "print(require(\"usbd\").parse_size(\"1.5G\"))"' _ "$env" 2>&1)
    check "$where: plain luajit requires usbd and calls its core ($out)" test "$out" = 1610612736
}

# Without it, the guide's spec fails as the reader would see it.
out=$(env -u LUA_PATH -u USBD_LIB busted --lua=luajit -o TAP spec 2>&1)
check "without --lua-path's environment: module 'usbd' not found" grep -q "module 'usbd' not found" <<<"$out"

author_runs "the tree" "$USBD" "$TOP"

root="$SCRATCH/root"
if make -s -C "$TOP" install DESTDIR="$root" PREFIX=/usr >/dev/null; then
    author_runs "installed" "$root/usr/bin/usbd-lua" "$root/usr"
    env=$("$root/usr/bin/usbd-lua" --lua-path)
    check "installed: nothing printed points into the tree" bash -c '! grep -qF "$2" <<<"$1"' _ "$env" "$TOP"
else
    not_ok "make install DESTDIR=... PREFIX=/usr"
fi

err=$("$USBD" --lua-path ramdisk 2>&1); status=$?
check "--lua-path with a device: one line, exit 2 ($err)" \
    bash -c '[ "$1" = 2 ] && [ $(wc -l <<<"$2") = 1 ] && grep -q "serves nothing" <<<"$2"' _ "$status" "$err"

finish

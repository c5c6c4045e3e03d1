-- Loading a device script and reading what it offers (the device contract
-- in DESIGN.md). Every failure is one line that says what to fix.
local ffi = require "ffi"

local M = {}

local function fail(fmt, ...)
    error(fmt:format(...), 0)
end

local function first_line(msg)
    return (tostring(msg):gsub("\n.*", ""))
end

-- Load script and call its open(args); returns the device object.
function M.open(script, args)
    local chunk, err = loadfile(script)
    if not chunk then
        fail("cannot load device script: %s", err)
    end
    local ok, mod = pcall(chunk)
    if not ok then
        fail("device script %s failed while loading: %s", script, first_line(mod))
    end
    if type(mod) ~= "table" or type(mod.open) ~= "function" then
        fail("%s must return a table with an open(args) function", script)
    end
    local dev
    ok, dev = pcall(mod.open, args)
    if not ok then
        fail("%s: open failed: %s", script, first_line(dev))
    end
    if type(dev) ~= "table" and type(dev) ~= "userdata" then
        fail("%s: open(args) must return the device object, got %s", script, type(dev))
    end
    for _, method in ipairs { "size", "read_at" } do
        if type(dev[method]) ~= "function" then
            fail("%s: the device has no %s() method, which every device needs", script, method)
        end
    end
    return dev
end

local function is_power_of_two(n)
    return n >= 1 and n == math.floor(n) and bit.band(n, n - 1) == 0
end

-- What the core needs to know to serve dev: a usbd_export.
function M.describe(script, dev, readonly)
    local size = dev:size()
    if type(size) ~= "number" or size < 0 or size ~= math.floor(size) then
        fail("%s: size() must return a whole number of bytes, got %s", script, tostring(size))
    end
    local block_size = dev.block_size and dev:block_size() or 512
    if type(block_size) ~= "number" or not is_power_of_two(block_size)
            or block_size < 512 or block_size > 65536 then
        fail("%s: block_size() must be a power of two from 512 to 65536, got %s", script, tostring(block_size))
    end
    local writable = dev.write_at ~= nil and not readonly
    return ffi.new("usbd_export", {
        size = size,
        block_size = block_size,
        can_write = writable,
        can_trim = writable and dev.trim ~= nil,
        can_zero = writable and dev.write_zeroes ~= nil,
        can_flush = dev.flush ~= nil,
        -- One device object serves every connection in this process, so a
        -- flush on any connection covers writes acknowledged on all.
        can_multi_conn = true,
    })
end

return M

-- usbd-lua --check SCRIPT [KEY=VALUE ...]: does the device keep the
-- contract? Calls its methods directly, the way the server would, and
-- compares what it returns with what it must return: reads fill the whole
-- buffer, writes read back at any alignment without touching their
-- neighbours, trimmed and zeroed ranges read as zeroes, extents are well
-- formed and what they call zero reads as zeroes, flush and close work.
-- Each case puts back the bytes it changed, so a device is left holding
-- what it held (unless a case fails half-way). Prints "ok -" /
-- "not ok -" lines and a total; the exit status says whether all passed.
local usbd = require "usbd"
local device = require "usbd.device"

local M = {}

local passed, failed = 0, 0
local quiet, failures = false, {}
local function result(good, what, why)
    if good then
        passed = passed + 1
        if not quiet then print("ok - " .. what) end
    else
        failed = failed + 1
        failures[#failures + 1] = what .. (why and (": " .. why) or "")
        print("not ok - " .. failures[#failures])
    end
end

-- Run fn; a Lua error fails the case instead of ending the run.
local function case(what, fn)
    local ok, err = xpcall(fn, debug.traceback)
    if not ok then result(false, what, "raised " .. tostring(err)) end
end

local function read(dev, pos, n, fill)
    local b = usbd.buffer(n)
    b:fill(fill or 0xee)
    dev:read_at(b, pos)
    return b:tostring()
end

local function write(dev, pos, s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    dev:write_at(b, pos)
end

-- Every random choice (ranges, bytes) comes from one seed, printed first:
-- --check --seed N replays a run exactly.
local function random_bytes(n)
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

local function seed_from(seed)
    seed = seed or (os.time() % 1000000)
    math.randomseed(seed)
    if not quiet then print("# seed " .. seed) end
    return seed
end

-- First difference between two strings, for messages.
local function first_diff(a, b)
    if #a ~= #b then return ("lengths %d and %d"):format(#a, #b) end
    for i = 1, #a do
        if a:byte(i) ~= b:byte(i) then
            return ("byte %d is 0x%02x, wanted 0x%02x"):format(i - 1, a:byte(i), b:byte(i))
        end
    end
end

-- Ranges to try: aligned and not, tiny and large, at both ends.
local function ranges(size)
    local out = {}
    local function add(pos, len)
        if pos >= 0 and len > 0 and pos + len <= size then out[#out + 1] = { pos, len } end
    end
    add(0, math.min(4096, size))
    add(size - math.min(4096, size), math.min(4096, size))
    add(size - 1, 1)
    add(1, math.min(513, size - 1))
    add(math.floor(size / 2) + 7, math.min(65536 + 3, size - math.floor(size / 2) - 7))
    add(math.floor(size / 3), math.min(1024 * 1024, size - math.floor(size / 3)))
    for _ = 1, 8 do
        local len = math.random(1, math.min(200000, size))
        add(math.random(0, size - len), len)
    end
    return out
end

-- The bytes around [pos, pos+len): one on each side where there is one.
local function around(size, pos, len)
    local lo = math.max(0, pos - 1)
    local hi = math.min(size, pos + len + 1)
    return lo, hi - lo, pos - lo
end

local function run(script, dev, readonly)
    local ok, ex = pcall(device.describe, script, dev, readonly)
    result(ok, "size() and block_size() describe a device", not ok and ex or nil)
    if not ok then return end
    local size = tonumber(ex.size)
    if not quiet then print(("# %s: %d bytes, block size %d, %s%s%s%s"):format(script, size, ex.block_size,
        ex.can_write ~= 0 and "write" or "read-only", ex.can_trim ~= 0 and ", trim" or "",
        ex.can_zero ~= 0 and ", write_zeroes" or "", ex.can_flush ~= 0 and ", flush" or "")) end
    if size == 0 then return end
    local tries = ranges(size)

    case("read_at fills the whole buffer, at any offset and length", function()
        for _, r in ipairs(tries) do
            local a, b = read(dev, r[1], r[2], 0xee), read(dev, r[1], r[2], 0x11)
            if a ~= b then
                return result(false, "read_at fills the whole buffer, at any offset and length",
                    ("read of %d bytes at %d left bytes unwritten (%s)"):format(r[2], r[1], first_diff(a, b)))
            end
        end
        result(true, "read_at fills the whole buffer, at any offset and length")
    end)

    -- extents(pos, count): { len, flags, ... } from pos; what is said to be
    -- ZERO must read as zeroes (runs past count are clamped by the server).
    local function extents_wrong(pos, len)
        local runs = dev:extents(pos, len)
        if type(runs) ~= "table" or #runs < 2 or #runs % 2 ~= 0 then
            return "returned " .. tostring(runs) .. ", not a { len, flags, ... } array"
        end
        local at, stop = pos, pos + len
        for i = 1, #runs, 2 do
            local l, f = runs[i], runs[i + 1]
            if type(l) ~= "number" or l < 1 or l % 1 ~= 0 then
                return ("run %d has length %s"):format((i + 1) / 2, tostring(l))
            elseif f ~= 0 and f ~= 1 and f ~= 2 and f ~= 3 then
                return ("run %d has flags %s"):format((i + 1) / 2, tostring(f))
            end
            local n = math.min(l, stop - at)
            if n <= 0 then break end
            if bit.band(f, usbd.ZERO) ~= 0 and read(dev, at, n) ~= string.rep("\0", n) then
                return ("run %d (%d bytes at %d) is usbd.ZERO but does not read as zeroes"):format((i + 1) / 2, n, at)
            end
            at = at + l
        end
    end
    if dev.extents then
        local what = "extents: runs from pos, well formed; what they call ZERO reads as zeroes"
        case(what, function()
            for _, r in ipairs(tries) do
                local why = extents_wrong(r[1], r[2])
                if why then
                    return result(false, what, ("extents(%d, %d): %s"):format(r[1], r[2], why))
                end
            end
            if ex.can_write ~= 0 then
                -- Freshly written bytes (none zero) must not be called zero.
                for _, r in ipairs(tries) do
                    local pos, len = r[1], math.min(r[2], 65536)
                    local before = read(dev, pos, len)
                    write(dev, pos, string.rep("\x5a", len))
                    local why = extents_wrong(pos, len)
                    write(dev, pos, before)
                    if why then
                        return result(false, what, ("after a write, extents(%d, %d): %s"):format(pos, len, why))
                    end
                end
            end
            result(true, what)
        end)
    end
    if ex.can_write == 0 then return end

    -- Change [pos, pos+len) with fn, check it reads as want and that the
    -- neighbours kept their bytes, then put the old bytes back.
    local function changes(what, fn, want)
        case(what, function()
            for _, r in ipairs(tries) do
                local pos, len = r[1], r[2]
                local lo, n, at = around(size, pos, len)
                local before = read(dev, lo, n)
                write(dev, pos, random_bytes(len))  -- something to change
                local data = want(len)
                fn(pos, len, data)
                local got = read(dev, lo, n)
                local expected = before:sub(1, at) .. data .. before:sub(at + len + 1)
                write(dev, lo, before)
                if got ~= expected then
                    return result(false, what, ("%d bytes at %d: %s"):format(len, pos, first_diff(got, expected)))
                end
            end
            result(true, what)
        end)
    end

    changes("write_at stores its bytes and nothing else, at any alignment",
        function(pos, _, data) write(dev, pos, data) end, random_bytes)
    local zeroes = function(len) return string.rep("\0", len) end
    if dev.trim then
        changes("trim: a trimmed range reads as zeroes, its neighbours keep theirs",
            function(pos, len) dev:trim(pos, len) end, zeroes)
    end
    if dev.write_zeroes then
        changes("write_zeroes: the range reads as zeroes, its neighbours keep theirs",
            function(pos, len) dev:write_zeroes(pos, len) end, zeroes)
    end
    if dev.flush then
        case("flush returns", function() dev:flush(); result(true, "flush returns") end)
    end
end

local function check_device(dev, name, opts)
    opts.seed = seed_from(opts.seed)
    run(name or "device", dev, opts.readonly)
    if dev.close then
        case("close returns", function() dev:close(); result(true, "close returns") end)
    end
end

-- Check an open device (closing it at the end): prints the cases, returns
-- how many passed and failed. For specs: lua/usbd/conformance.lua.
-- opts: readonly, seed (default: from the clock), quiet (print failures
-- only). Returns passed, failed, the failures' messages, and the seed.
function M.device(dev, name, opts)
    opts = opts or {}
    passed, failed, quiet, failures = 0, 0, opts.quiet or false, {}
    check_device(dev, name, opts)
    quiet = false
    return passed, failed, failures, opts.seed
end

-- Entry point from server.main: the command line's stack. Returns the
-- exit status.
function M.main(script, words, readonly, seed)
    local ok, dev = pcall(device.open_stack, script, words)
    if ok then
        result(true, "open(args) returns a device with size() and read_at()")
        check_device(dev, script, { readonly = readonly, seed = seed })
    else
        result(false, "open(args) returns a device with size() and read_at()", dev)
    end
    print(("%d passed, %d failed"):format(passed, failed))
    return failed == 0 and 0 or 1
end

return M

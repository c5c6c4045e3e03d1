-- The server's Lua half: take events from the C core, run each request in
-- a coroutine against the device, hand the result back. A request whose
-- device method waits on a C job (file I/O, RocksDB) parks its coroutine;
-- the others go on.
local ffi = require "ffi"
local C = require "usbd.core"
local usbd = require "usbd"
local bufs = require "usbd.buf"
local device = require "usbd.device"
local errors = require "usbd.errors"
local sched = require "usbd.core.sched"

local NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES = 0, 1, 3, 4, 6
local NBD_CMD_BLOCK_STATUS = 7
local FLAG_FUA, FLAG_NO_HOLE = 1, 2
local EIO = usbd.E.IO.errno
local extent_ptr = ffi.typeof("usbd_extent *")
local EXTENT_SIZE = ffi.sizeof("usbd_extent")

local M = {}

local function write_zeroes(dev, pos, count, flags)
    if dev.write_zeroes then
        return dev:write_zeroes(pos, count)
    end
    if dev.trim and bit.band(flags, FLAG_NO_HOLE) == 0 then
        return dev:trim(pos, count)  -- trimmed ranges read as zeroes
    end
    bufs.write_zeroes_with(function(zeroes, at) dev:write_at(zeroes, at) end, pos, count)
end

local function bad_extents(fmt, ...)
    error("extents(pos, count): " .. fmt:format(...), 0)
end

-- Fill the request's buffer with the runs the device reports for
-- [pos, pos+count) (contract: a flat { len, flags, len, flags, ... } from
-- pos on), clamped to count, neighbours with equal flags merged, and no
-- more descriptors than the buffer holds: a range too fragmented for one
-- reply is answered in part, and the client asks again from where it ends.
-- Returns how many descriptors there are.
local function block_status(dev, req, pos)
    local count, out = req.length, ffi.cast(extent_ptr, req.buf.ptr)
    local room = math.floor(req.buf.len / EXTENT_SIZE)
    if not dev.extents then
        out[0].length, out[0].flags = count, 0   -- nothing known: all data
        return 1
    end
    local runs = dev:extents(pos, count)
    if type(runs) ~= "table" or #runs < 2 or #runs % 2 ~= 0 then
        bad_extents("returned %s, not a table of { length, flags } pairs", tostring(runs))
    end
    local n, covered = 0, 0
    for i = 1, #runs, 2 do
        local len, flags = runs[i], runs[i + 1]
        if type(len) ~= "number" or len < 1 or len % 1 ~= 0 then
            bad_extents("run %d has length %s, not a whole number above 0", (i + 1) / 2, tostring(len))
        end
        if flags ~= 0 and flags ~= 1 and flags ~= 2 and flags ~= 3 then
            bad_extents("run %d has flags %s: use 0, usbd.HOLE, usbd.ZERO or both", (i + 1) / 2, tostring(flags))
        end
        len = math.min(len, count - covered)
        if n > 0 and out[n - 1].flags == flags then
            out[n - 1].length = out[n - 1].length + len
        elseif n < room then
            out[n].length, out[n].flags = len, flags
            n = n + 1
        else
            break
        end
        covered = covered + len
        if covered == count then break end
    end
    return n
end

local function run(dev, req, buf)
    local t, pos = req.type, tonumber(req.offset)
    if t == NBD_CMD_READ then
        dev:read_at(buf, pos)
        return
    elseif t == NBD_CMD_WRITE then
        dev:write_at(req.buf, pos)
    elseif t == NBD_CMD_TRIM then
        dev:trim(pos, req.length)
    elseif t == NBD_CMD_WRITE_ZEROES then
        write_zeroes(dev, pos, req.length, req.flags)
    elseif t == NBD_CMD_FLUSH then
        -- A device without flush() has nothing volatile: done at once.
        if dev.flush then dev:flush() end
        return
    elseif t == NBD_CMD_BLOCK_STATUS then
        return block_status(dev, req, pos)
    end
    if bit.band(req.flags, FLAG_FUA) ~= 0 and dev.flush then
        dev:flush()  -- durable before the reply
    end
end

-- A device error: an errno error passes through (the core logs it at -v);
-- anything else is a bug in the device: its message and traceback, which
-- the core logs at every verbosity, and EIO for the client.
local function to_errno(err)
    return errors.errno_of(err) or debug.traceback(tostring(err), 2)
end

-- The server's statistics, then the device's own (an optional stats()
-- returning name -> number or string), one "name: value" line each.
local function print_stats(dev)
    C.usbd_stats_print(collectgarbage("count") * 1024)
    if not dev.stats then return end
    local ok, t = pcall(dev.stats, dev)
    if not ok or type(t) ~= "table" then
        io.stderr:write("usbd-lua: the device's stats() failed: ", tostring(ok and "it returned no table" or t), "\n")
        return
    end
    local names = {}
    for name in pairs(t) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    io.stderr:write("usbd-lua: device statistics\n")
    for _, name in ipairs(names) do
        io.stderr:write("  ", tostring(name), ": ", tostring(t[name]), "\n")
    end
    io.stderr:flush()
end

-- SIGHUP, or the device saying its storage changed (usbd.size_changed:
-- an image resized by another client): ask the device its size again and
-- serve the new one to new clients and the kernel's device. cause starts
-- each line; an unchanged size is news only to the one who sent SIGHUP.
local function resize(dev, export, cause)
    local ok, size = pcall(dev.size, dev)
    local block = export.block_size
    local old = tonumber(export.size)
    if not ok or not device.whole_bytes(size) then
        usbd.log(0, "%s: the device's size() gave %s, not a whole number of bytes: "
            .. "still serving %d bytes", cause, tostring(size), old)
    elseif size == old then
        usbd.log(cause == "SIGHUP" and 0 or 1, "%s: the device still holds %d bytes", cause, size)
    elseif size % block ~= 0 then
        usbd.log(0, "%s: the device holds %d bytes now, not whole %d-byte blocks: "
            .. "still serving %d; grow it by whole blocks", cause, size, block, old)
    else
        local msg = ffi.new("char[512]")
        if C.usbd_serve_resize(size, msg, 512) ~= 0 then
            usbd.log(0, "%s: still serving %d bytes: %s", cause, old, ffi.string(msg))
        else
            export.size = size
            usbd.log(0, "%s: serving %d bytes now (%d before)", cause, size, old)
        end
    end
end

local function serve(dev, export)
    local events = ffi.new("usbd_event[64]")
    local replies = bufs.replies
    -- (not below a transform that reads into the buffer and then changes it)
    local lends = dev.lends_reads ~= false
    local handle = function(req)
        -- A READ's buffer may borrow (buf:borrow) while the device has it.
        local buf = req.buf
        local reading = lends and req.type == NBD_CMD_READ
        if reading then replies[buf] = req end
        local ok, result = xpcall(run, to_errno, dev, req, buf)
        if reading then replies[buf] = nil end
        if ok and req.type == NBD_CMD_BLOCK_STATUS then
            C.usbd_request_extents_done(req, result)
        elseif ok then
            C.usbd_request_done(req, 0)
        elseif type(result) == "number" then
            C.usbd_request_done(req, result)
        else
            C.usbd_request_failed(req, EIO, result)
        end
    end
    local resize_now = function(cause) resize(dev, export, cause) end
    local stopping = false
    sched.start_background()
    while not stopping or C.usbd_requests_pending() > 0 or sched.parked() > 0 do
        local n = C.usbd_serve_next(events, 64)
        for i = 0, n - 1 do
            local ev = events[i]
            local kind = ev.kind
            if kind == C.USBD_EV_REQUEST then
                sched.spawn(handle, ev.req)
            elseif kind == C.USBD_EV_JOB then
                sched.complete(ev.job)
            elseif kind == C.USBD_EV_STATS then
                sched.spawn(print_stats, dev)  -- stats() may wait, as a request may
            elseif kind == C.USBD_EV_RESIZE then
                sched.spawn(resize_now, "SIGHUP")  -- size() may wait too
            elseif kind == C.USBD_EV_SIZE_CHANGED then
                sched.spawn(resize_now, "the device's storage changed")
            else
                stopping = true
                sched.stop_background()
            end
        end
    end
end

-- One of LuaJIT's tools (module) for an option that writes to path: a path
-- that cannot be written, or the module missing, is one line naming the
-- option.
local function jit_tool(option, module, path)
    local f, err = io.open(path, "w")
    if not f then error(option .. ": cannot write " .. err, 0) end
    f:close()
    local ok, m = pcall(require, module)
    if not ok then error(option .. " needs LuaJIT's " .. module .. " module (Debian: libluajit-5.1-common)", 0) end
    return m
end

-- --profile FILE: LuaJIT's sampling profiler (jit.p) while serving, by
-- function and line, every millisecond of CPU, from the device's open to
-- the end of serving; FILE is written at exit.
local function start_profile(path)
    local p = jit_tool("--profile", "jit.p", path)
    p.start("Fli1", path)
    return p
end

-- --jit-log FILE: LuaJIT's trace log (jit.v) while serving: each trace
-- compiled, and each one abandoned with the reason (an NYI, a loop left
-- in a root trace), so a device's author sees which of its lines run
-- interpreted. Written as it goes.
local function start_jit_log(path)
    local v = jit_tool("--jit-log", "jit.v", path)
    v.on(path)
    return v
end

-- Entry point from luahost.c for usbd-lua --help DEVICE [words]: what
-- DEVICE takes, and each device named below it. Exit status 2, as for any
-- mistake on the command line, when a name finds no device; 1 when a
-- script is there but does not load.
function M.help(script, words)
    local ok, tree = pcall(device.parse_tree, script, words)
    local nodes = ok and device.nodes(tree) or {}
    local paths, seen = {}, {}
    for _, n in ipairs(nodes) do
        local path
        ok, path = pcall(device.resolve, n.spec, ".")
        if not ok then tree = path; break end
        if not seen[path] then  -- a device named twice in a tree is shown once
            seen[path] = true
            paths[#paths + 1] = path
        end
    end
    if not ok then
        io.stderr:write("usbd-lua: ", tostring(tree), "\n")
        return 2
    end
    local texts = {}
    for i, path in ipairs(paths) do
        local done, text = pcall(device.help, path)
        if not done then
            io.stderr:write("usbd-lua: ", tostring(text), "\n")
            return 1
        end
        texts[i] = text
    end
    io.write(table.concat(texts, "\n"))
    return 0
end

-- Room for LuaJIT's compiled code, for the server and every device in
-- it. LuaJIT's defaults (1000 traces, 512 KiB of machine code) suit one
-- script; the server and the dedupdisk filled them within seconds, and
-- each time they fill LuaJIT drops every trace and compiles afresh, in
-- some runs into a slower state (the dedupdisk's 1 MiB writes to
-- scattered blocks fell from 1.5-1.9 to 1.1 GiB/s: BENCHMARKS.md). Set
-- before any device is loaded.
local JIT_LIMITS = { "maxtrace=8000", "maxmcode=16384" }

function M.set_jit_limits()
    jit.opt.start(unpack(JIT_LIMITS))
end

-- Entry point from luahost.c. Returns the exit status.
function M.main(script, words, readonly, check, seed, profile, jit_log)
    M.set_jit_limits()
    if check then
        return require("usbd.server.check").main(script, words, readonly, seed)
    end
    local ok, err = pcall(function()
        local profiler = profile and start_profile(profile)
        local jit_logger = jit_log and start_jit_log(jit_log)
        local dev = device.open_stack(script, words)
        local export = device.describe(script, dev, readonly)
        local msg = ffi.new("char[512]")
        if C.usbd_serve_start(export, msg, 512) ~= 0 then
            if dev.close then pcall(dev.close, dev) end
            error(ffi.string(msg), 0)
        end
        serve(dev, export)
        if profiler then profiler.stop() end
        if jit_logger then jit_logger.off() end
        -- Stopping: everything acknowledged becomes durable, then let go.
        if dev.flush then dev:flush() end
        print_stats(dev)
        if dev.close then dev:close() end
    end)
    if not ok then
        io.stderr:write("usbd-lua: ", tostring(err), "\n")
        return 1
    end
    return 0
end

return M

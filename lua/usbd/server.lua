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
local sched = require "usbd.sched"

local NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES = 0, 1, 3, 4, 6
local FLAG_FUA, FLAG_NO_HOLE = 1, 2
local EIO = usbd.E.IO.errno

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

local function run(dev, req)
    local t, pos = req.type, tonumber(req.offset)
    if t == NBD_CMD_READ then
        dev:read_at(req.buf, pos)
        return
    elseif t == NBD_CMD_WRITE then
        dev:write_at(req.buf, pos)
    elseif t == NBD_CMD_TRIM then
        dev:trim(pos, req.length)
    elseif t == NBD_CMD_WRITE_ZEROES then
        write_zeroes(dev, pos, req.length, req.flags)
    elseif t == NBD_CMD_FLUSH then
        if dev.flush then dev:flush() end
        return
    end
    if bit.band(req.flags, FLAG_FUA) ~= 0 and dev.flush then
        dev:flush()  -- durable before the reply
    end
end

-- A device error: an errno error passes through; anything else is a bug in
-- the device, logged with its traceback, and EIO for the client.
local function to_errno(err)
    local errno = errors.errno_of(err)
    if errno then return errno end
    io.stderr:write("usbd-lua: device error, answered with EIO: ",
        debug.traceback(tostring(err), 2), "\n")
    return EIO
end

local function serve(dev)
    local events = ffi.new("usbd_event[64]")
    local handle = function(req)
        local ok, errno = xpcall(run, to_errno, dev, req)
        C.usbd_request_done(req, ok and 0 or errno)
    end
    local stopping = false
    while not stopping or C.usbd_requests_pending() > 0 or sched.parked() > 0 do
        local n = C.usbd_serve_next(events, 64)
        for i = 0, n - 1 do
            local ev = events[i]
            local kind = ev.kind
            if kind == C.USBD_EV_REQUEST then
                sched.spawn(handle, ev.req)
            elseif kind == C.USBD_EV_JOB then
                sched.complete(ev.job)
            else
                stopping = true
            end
        end
    end
end

-- Entry point from luahost.c. Returns the exit status.
function M.main(script, words, readonly, check, seed)
    if check then
        return require("usbd.check").main(script, words, readonly, seed)
    end
    local ok, err = pcall(function()
        local dev = device.open_stack(script, words)
        local export = device.describe(script, dev, readonly)
        local msg = ffi.new("char[512]")
        if C.usbd_serve_start(export, msg, 512) ~= 0 then
            if dev.close then pcall(dev.close, dev) end
            error(ffi.string(msg), 0)
        end
        serve(dev)
        -- Stopping: everything acknowledged becomes durable, then let go.
        if dev.flush then dev:flush() end
        if dev.close then dev:close() end
    end)
    if not ok then
        io.stderr:write("usbd-lua: ", tostring(err), "\n")
        return 1
    end
    return 0
end

return M

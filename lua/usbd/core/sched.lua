-- Coroutines for requests. Each request runs in a coroutine from a pool;
-- one that waits for a C job (sched.wait) is parked until the core
-- reports the job finished, and the loop goes on with other requests.
local ffi = require "ffi"

local M = {}

local IDLE = {}            -- what a coroutine yields when its work is done
local pool = {}            -- idle coroutines
local ours = setmetatable({}, { __mode = "k" })  -- every request coroutine
local parked = {}          -- job address -> coroutine waiting for it
local nparked = 0

local function body(fn, arg)
    while true do
        fn(arg)
        fn, arg = coroutine.yield(IDLE)
    end
end

local function resume(co, ...)
    local ok, what = coroutine.resume(co, ...)
    if not ok then
        -- fn catches device errors itself; this is a bug in the runtime.
        io.stderr:write("usbd-lua: internal error in a request coroutine: ",
            debug.traceback(co, tostring(what)), "\n")
    elseif what == IDLE then
        pool[#pool + 1] = co
    end
end

-- Run fn(arg) in a coroutine.
function M.spawn(fn, arg)
    local n = #pool
    local co = pool[n]
    if co then
        pool[n] = nil
    else
        co = coroutine.create(body)
        ours[co] = true
    end
    resume(co, fn, arg)
end

-- True when running in a request's coroutine, where wait() may park; false
-- in the main thread or in a coroutine of the device's own.
function M.in_request()
    local co = coroutine.running()
    return co ~= nil and ours[co] == true
end

-- (C types as values, not strings: outside compiled code LuaJIT parses a
-- type's string on every call, and this runs for every job)
local uintptr = ffi.typeof("uintptr_t")
local function key(job)
    return tonumber(ffi.cast(uintptr, job))
end

-- Park the running request until job finishes; returns what complete()
-- passes on. Only inside a request's coroutine.
function M.wait(job)
    local co = coroutine.running()
    if not ours[co] then
        error("usbd.core.sched.wait outside a request: use the blocking form", 2)
    end
    parked[key(job)] = co
    nparked = nparked + 1
    return coroutine.yield(job)
end

-- The core says job finished: resume whoever waits for it.
function M.complete(job)
    local k = key(job)
    local co = parked[k]
    if co then
        parked[k] = nil
        nparked = nparked - 1
        resume(co, job)
    end
end

function M.parked()
    return nparked
end

-- Background tasks (usbd.background): work a device starts that runs
-- beside the requests while the server serves (a mirror's resync). Before
-- serving starts they wait in a queue; the server starts them with
-- start_background() and, when it stops, sets stopping so that each can
-- end at its next step, then waits for them as for any parked request.
local queued = {}
local serving, stopping = false, false

function M.background(fn, arg)
    if serving then
        M.spawn(fn, arg)
    else
        queued[#queued + 1] = { fn, arg }
    end
end

function M.start_background()
    serving = true
    local q = queued
    queued = {}
    for _, task in ipairs(q) do M.spawn(task[1], task[2]) end
end

function M.stop_background()
    stopping = true
end

-- True once the server is stopping: a background task should end.
function M.stopping()
    return stopping
end

return M

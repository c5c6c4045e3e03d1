-- Several device calls at once inside one request, and work beside the
-- requests.
--
--   usbd.all { function() a:write_at(buf, pos) end,
--              function() b:write_at(buf, pos) end }   -- both at once; raises if any failed
--   local errs = usbd.all_settled { ... }              -- nil, or errs[i] for each call that failed
--   usbd.each(legs, write_leg, buf, pos)               -- write_leg(leg, buf, pos) for every leg at once
--   usbd.background(function() ... end)                -- beside the requests, while serving
--
-- Each call runs in a coroutine of its own, so while one waits for its
-- job (a file read, a RocksDB write) the others start theirs; the caller
-- goes on when the last has finished. Outside a request (open, specs)
-- nothing waits and the calls run one after the other.
--
-- usbd.each takes a function defined once and its arguments rather than
-- a closure per call: LuaJIT does not compile the making of a closure,
-- so a device's hot path that makes none per request stays compiled.
local ffi = require "ffi"
local sched = require "usbd.core.sched"
local errors = require "usbd.errors"
local token_t = ffi.typeof("char[1]")  -- what the caller waits on

local M = {}

local function failed(g, i, err)
    local errs = g.errs
    if not errs then
        errs = { failed = 0 }
        g.errs = errs
    end
    errs[i] = err
    errs.failed = errs.failed + 1
end

-- One call of a group, in its own coroutine: the last to end wakes the
-- caller.
local function one(call)
    local g, i = call[1], call[2]
    local ok, err = xpcall(g.fn, errors.keep_trace, g.items[i], g.a, g.b, g.c, g.d)
    if not ok then failed(g, i, err) end
    g.left = g.left - 1
    if g.left == 0 and g.waiting then sched.complete(g.token) end
end

-- fn(items[i], a, b, c, d) for every item at once; waits for all.
-- Returns nil when every one returned, else a table: errs[i] is call i's
-- error (with its traceback; an errno error as it is), errs.failed how
-- many.
function M.each_settled(items, fn, a, b, c, d)
    local n = #items
    local g = { items = items, fn = fn, a = a, b = b, c = c, d = d, left = n }
    if not sched.in_request() then
        for i = 1, n do
            local ok, err = xpcall(fn, errors.keep_trace, items[i], a, b, c, d)
            if not ok then failed(g, i, err) end
        end
        return g.errs
    end
    -- The others each in a coroutine; the last in this one, once they
    -- have started (one coroutine fewer to start and to wake).
    for i = 1, n - 1 do sched.spawn(one, { g, i }) end
    if n > 0 then
        local ok, err = xpcall(fn, errors.keep_trace, items[n], a, b, c, d)
        if not ok then failed(g, n, err) end
        g.left = g.left - 1
    end
    if g.left > 0 then
        g.waiting, g.token = true, token_t()
        sched.wait(g.token)
    end
    return g.errs
end

-- Raise for errs of n calls: the first failure's error when it is the
-- only one or an errno error (so a device's usbd.E.NOSPC reaches the
-- client as itself), else one message naming every failure.
local function raise(errs, n)
    if not errs then return end
    local first, lines = nil, {}
    for i = 1, n do
        if errs[i] ~= nil then
            first = first or errs[i]
            lines[#lines + 1] = ("call %d: %s"):format(i, tostring(errs[i]))
        end
    end
    if errs.failed == 1 or errors.errno_of(first) then error(first, 0) end
    error(("%d of %d calls failed:\n%s"):format(errs.failed, n, table.concat(lines, "\n")), 0)
end

-- As each_settled, but raises when any call failed (see raise).
function M.each(items, fn, a, b, c, d)
    raise(M.each_settled(items, fn, a, b, c, d), #items)
end

local function call(f) f() end

-- Every function of fns (a list) at once: each_settled over calls.
function M.all_settled(fns)
    return M.each_settled(fns, call)
end

function M.all(fns)
    M.each(fns, call)
end

-- Run fn(arg) beside the requests once the server serves (at once if it
-- already does); an error ends the task with one log line. The task
-- should look at usbd.stopping() between steps and end when it is true:
-- the server waits for it before closing the device.
function M.background(fn, arg)
    sched.background(function(a)
        local ok, err = xpcall(fn, errors.keep_trace, a)
        if not ok then
            io.stderr:write("usbd-lua: a background task failed: ", tostring(err), "\n")
        end
    end, arg)
end

M.stopping = sched.stopping

return M

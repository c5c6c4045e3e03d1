-- Several device calls at once inside one request, and work beside the
-- requests.
--
--   usbd.all { function() a:write_at(buf, pos) end,
--              function() b:write_at(buf, pos) end }   -- both at once; raises if any failed
--   local errs = usbd.all_settled { ... }              -- nil, or errs[i] for each call that failed
--   usbd.background(function() ... end)                -- beside the requests, while serving
--
-- Each call runs in a coroutine of its own, so while one waits for its
-- job (a file read, a RocksDB write) the others start theirs; the caller
-- goes on when the last has finished. Outside a request (open, specs)
-- nothing waits and the calls run one after the other.
local ffi = require "ffi"
local sched = require "usbd.core.sched"
local errors = require "usbd.errors"
local token_t = ffi.typeof("char[1]")  -- what the caller waits on

local M = {}

-- Run every function of fns (a list) at once and wait for all. Returns
-- nil when every one returned, else a table: errs[i] is call i's error
-- (with its traceback; an errno error as it is), errs.failed how many.
function M.all_settled(fns)
    local n = #fns
    local errs
    local function failed(i, err)
        errs = errs or { failed = 0 }
        errs[i] = err
        errs.failed = errs.failed + 1
    end
    if n == 1 or not sched.in_request() then
        for i = 1, n do
            local ok, err = xpcall(fns[i], errors.keep_trace)
            if not ok then failed(i, err) end
        end
        return errs
    end
    local left, waiting = n, nil
    local token = token_t()
    local function one(i)
        local ok, err = xpcall(fns[i], errors.keep_trace)
        if not ok then failed(i, err) end
        left = left - 1
        if left == 0 and waiting then sched.complete(token) end
    end
    for i = 1, n do sched.spawn(one, i) end
    if left > 0 then
        waiting = true
        sched.wait(token)
    end
    return errs
end

-- As all_settled, but raises when any call failed: the first failure's
-- error when it is the only one or an errno error (so a device's
-- usbd.E.NOSPC reaches the client as itself), else one message naming
-- every failure.
function M.all(fns)
    local errs = M.all_settled(fns)
    if not errs then return end
    local first, lines = nil, {}
    for i = 1, #fns do
        if errs[i] ~= nil then
            first = first or errs[i]
            lines[#lines + 1] = ("call %d: %s"):format(i, tostring(errs[i]))
        end
    end
    if errs.failed == 1 or errors.errno_of(first) then error(first, 0) end
    error(("%d of %d calls failed:\n%s"):format(errs.failed, #fns, table.concat(lines, "\n")), 0)
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

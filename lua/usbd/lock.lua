-- usbd.lock(): mutual exclusion by key between requests that wait. A
-- device whose update of a block reads, waits, then writes (a copy-on-write
-- copy, a cipher's read-modify-write of a partial sector) takes the
-- block's lock, so two requests into the same block take turns instead of
-- one undoing the other.
--
--   local locks = usbd.lock()
--   locks:run(block, function() ... end)   -- one at a time per block
--   locks:range(pos, len, function() ... end)  -- one at a time per byte
--
-- range() orders requests whose byte ranges overlap, in the order they
-- came, and lets those that do not run at once: a read-modify-write of
-- any length, with no lock per region.
--
-- Outside a request (open, --check, specs) nothing runs concurrently and a
-- lock is never contended.
local ffi = require "ffi"
local token_t = ffi.typeof("char[1]")  -- (a type, not a string: parsed once)
local sched = require "usbd.core.sched"
local errors = require "usbd.errors"

local Lock = {}
Lock.__index = Lock

function Lock:acquire(key)
    local queue = self.held[key]
    if not queue then
        self.held[key] = {}
        return
    end
    local token = token_t()  -- what this request waits on
    queue[#queue + 1] = token
    sched.wait(token)                 -- release() hands the lock over
end

function Lock:release(key)
    local queue = self.held[key]
    local next_one = table.remove(queue, 1)
    if next_one then
        sched.complete(next_one)
    else
        self.held[key] = nil
    end
end

-- fn(...) holding key's lock; errors pass on (with their traceback) after
-- the lock is let go.
function Lock:run(key, fn, ...)
    self:acquire(key)
    local ok, err = xpcall(fn, errors.keep_trace, ...)
    self:release(key)
    if not ok then error(err, 0) end
end

-- fn(...) holding the bytes [pos, pos+len) alone: it starts once every
-- earlier holder of an overlapping range has let go.
function Lock:range(pos, len, fn, ...)
    local me = { lo = pos, hi = pos + len, blockers = 0 }
    local active = self.ranges  -- held or waiting, in the order they came
    for i = 1, #active do
        local e = active[i]
        if e.lo < me.hi and me.lo < e.hi then
            me.blockers = me.blockers + 1
            e.waiters = e.waiters or {}
            e.waiters[#e.waiters + 1] = me
        end
    end
    active[#active + 1] = me
    if me.blockers > 0 then
        me.token = token_t()
        sched.wait(me.token)  -- the last blocker to let go wakes it
    end
    local ok, err = xpcall(fn, errors.keep_trace, ...)
    for i = 1, #active do
        if active[i] == me then table.remove(active, i); break end
    end
    for _, w in ipairs(me.waiters or {}) do
        w.blockers = w.blockers - 1
        if w.blockers == 0 then sched.complete(w.token) end
    end
    if not ok then error(err, 0) end
end

return function() return setmetatable({ held = {}, ranges = {} }, Lock) end

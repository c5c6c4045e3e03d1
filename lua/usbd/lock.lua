-- usbd.lock(): mutual exclusion by key between requests that wait. A
-- device whose update of a block reads, waits, then writes (a copy-on-write
-- copy, a cipher's read-modify-write of a partial sector) takes the
-- block's lock, so two requests into the same block take turns instead of
-- one undoing the other.
--
--   local locks = usbd.lock()
--   locks:run(block, function() ... end)   -- one at a time per block
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

return function() return setmetatable({ held = {} }, Lock) end

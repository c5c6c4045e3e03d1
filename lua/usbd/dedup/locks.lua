-- usbd.dedup.locks: who waits for whom in the dedupdisk's store.
--
-- A request takes a lock on the logical blocks it touches (Dedup:locked):
-- readers share; writers exclude, granted in arrival order, so writes to
-- one block are applied in order, and a read-modify-write of a partial
-- block sees no other change while it waits. Two writers also exclude each
-- other within a 256-block span, as an extent may cover blocks either
-- touches. The metadata decisions of one request (lookups, references,
-- allocation) are made under one mutex (meta_enter, meta_leave), handed
-- over in arrival order too. Both wait by parking the request on a token
-- until another wakes it; the other parts wait so too (park, wake, token).
--
-- Fields: locks (the granted and waiting ranges, in arrival order),
-- meta_busy and meta_queue (the mutex and its waiters), tick (entries into
-- the mutex: the clock by which the caches find their least recently used).
local ffi = require "ffi"
local usbd = require "usbd"
local sched = require "usbd.core.sched"
local F = require "usbd.dedup.format"

local CHUNK = F.CHUNK

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_locks()
    self.locks, self.meta_busy, self.meta_queue, self.tick = {}, false, {}, 0
end

-- ---- Waiting: a request parks on a token until another wakes it -------------

local function park(tok)
    if not sched.in_request() then
        error("dedupdisk: would wait outside a request", 2)
    end
    sched.wait(tok)
end
local function wake(tok) sched.complete(tok) end
local token = ffi.typeof("uint8_t[1]")  -- (a type, not a string: parsed once)

-- ---- Locks on logical blocks, granted in arrival order ----------------------

-- Readers conflict with writers on the blocks both touch; writers with
-- writers on the 256-block spans both touch (extents they would rewrite).
local function conflict(a, b)
    if a.write and b.write then return a.cfirst <= b.clast and b.cfirst <= a.clast end
    return (a.write or b.write) and a.first <= b.last and b.first <= a.last
end

function Dedup:lock(first, last, write)
    local e = { first = first, last = last, write = write, blockers = 0,
        cfirst = first - first % CHUNK, clast = last - last % CHUNK + CHUNK - 1 }
    local locks = self.locks
    for i = 1, #locks do
        if conflict(locks[i], e) then e.blockers = e.blockers + 1 end
    end
    locks[#locks + 1] = e
    if e.blockers > 0 then
        e.tok = token()
        park(e.tok)
    end
    return e
end

function Dedup:unlock(e)
    local locks, at = self.locks, nil
    for i = 1, #locks do
        if locks[i] == e then at = i break end
    end
    table.remove(locks, at)
    local ready, nready = nil, 0   -- woken after the scan: a woken request may lock
    for i = at, #locks do
        local o = locks[i]
        if conflict(o, e) then
            o.blockers = o.blockers - 1
            if o.blockers == 0 and o.tok then
                ready = ready or {}
                nready = nready + 1
                ready[nready] = o.tok
            end
        end
    end
    for i = 1, nready do wake(ready[i]) end
end

-- Run self:fn(pos, x) holding a lock on logical blocks [first, last].
-- (Methods and fixed arguments, not closures: LuaJIT compiles neither a
-- closure's creation nor varargs, and this runs for every request.)
function Dedup:locked(first, last, write, fn, pos, x)
    local e = self:lock(first, last, write)
    local ok, err = pcall(fn, self, pos, x)
    self:unlock(e)
    if not ok then error(err, 0) end
end

-- ---- The metadata mutex -----------------------------------------------------

function Dedup:meta_enter()
    if self.meta_busy then
        local tok = token()
        self.meta_queue[#self.meta_queue + 1] = tok
        park(tok)  -- the holder hands over: meta_busy stays true
    end
    self.meta_busy = true
    -- Fail-stop: once a decision has failed, memory holds its half, and
    -- nothing may be decided on it.
    if self.broken then
        self:meta_leave()
        error(usbd.E.IO, 0)
    end
    self.tick = self.tick + 1
    if self.rc_count > self.rc_max then self:evict() end
end

function Dedup:meta_leave()
    local q = self.meta_queue
    if #q > 0 then
        wake(table.remove(q, 1))
    else
        self.meta_busy = false
    end
end

return { methods = Dedup, park = park, wake = wake, token = token }

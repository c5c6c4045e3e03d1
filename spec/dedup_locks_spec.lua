-- usbd.dedup.locks: range locks on logical blocks and the metadata mutex,
-- taken by requests as the server runs them (usbd.sched's coroutines),
-- which park until they are woken.
local usbd = require "usbd"
local sched = require "usbd.core.sched"
local locks = require "usbd.dedup.locks"

local Locks = require("dedup_helper").class(locks)
function Locks:evict() self.evictions = self.evictions + 1 end   -- (usbd.dedup.records')

local function new_store()
    local s = setmetatable({ rc_count = 0, rc_max = 10, evictions = 0 }, Locks)
    s:init_locks()
    return s
end

-- A request that takes a lock on [first, last], says so in log, and holds
-- it until its gate is woken. Returns the gate.
local function locker(s, log, name, first, last, write)
    local gate = locks.token()
    sched.spawn(function()
        local e = s:lock(first, last, write)
        log[#log + 1] = name
        locks.park(gate)
        s:unlock(e)
    end)
    return gate
end

-- The same with the metadata mutex.
local function decider(s, log, name)
    local gate = locks.token()
    sched.spawn(function()
        s:meta_enter()
        log[#log + 1] = name
        locks.park(gate)
        s:meta_leave()
    end)
    return gate
end

describe("usbd.dedup.locks", function()
    it("grants conflicting writers in arrival order, and others at once", function()
        local s, log = new_store(), {}
        local a = locker(s, log, "a", 0, 3, true)
        local b = locker(s, log, "b", 2, 5, true)       -- overlaps a: waits
        local c = locker(s, log, "c", 300, 300, true)   -- another 256-block span
        local d = locker(s, log, "d", 5, 5, true)       -- overlaps b, arrived after it
        assert.are.same({ "a", "c" }, log)
        locks.wake(a)
        assert.are.same({ "a", "c", "b" }, log)
        locks.wake(b)
        assert.are.same({ "a", "c", "b", "d" }, log)
        locks.wake(c)
        locks.wake(d)
        assert.are.equal(0, #s.locks)
    end)

    it("makes writers within one 256-block span wait for each other, not readers", function()
        local s, log = new_store(), {}
        local w1 = locker(s, log, "w1", 0, 0, true)
        local w2 = locker(s, log, "w2", 255, 255, true)  -- other blocks, same span
        local r = locker(s, log, "r", 255, 255, false)    -- conflicts with w2 alone
        assert.are.same({ "w1" }, log)
        locks.wake(w1)
        assert.are.same({ "w1", "w2" }, log)
        locks.wake(w2)
        assert.are.same({ "w1", "w2", "r" }, log)
        locks.wake(r)
    end)

    it("lets readers share, and keeps a reader that came after a writer behind it", function()
        local s, log = new_store(), {}
        local r1 = locker(s, log, "r1", 0, 7, false)
        local r2 = locker(s, log, "r2", 4, 9, false)
        local w = locker(s, log, "w", 6, 6, true)          -- waits for both readers
        local r3 = locker(s, log, "r3", 0, 0, false)       -- not w's blocks: at once
        local r4 = locker(s, log, "r4", 6, 6, false)       -- w's block: after w
        assert.are.same({ "r1", "r2", "r3" }, log)
        locks.wake(r1)
        assert.are.same({ "r1", "r2", "r3" }, log)
        locks.wake(r2)
        assert.are.same({ "r1", "r2", "r3", "w" }, log)
        locks.wake(w)
        assert.are.same({ "r1", "r2", "r3", "w", "r4" }, log)
        locks.wake(r3)
        locks.wake(r4)
        assert.are.equal(0, #s.locks)
    end)

    it("runs a method holding the lock, and lets it go when the method fails", function()
        local s = new_store()
        local seen
        function s.probe(self, pos, x) seen = { self, pos, x, #self.locks } end
        s:locked(10, 12, true, s.probe, 7, "x")
        assert.are.same({ s, 7, "x", 1 }, seen)
        assert.has_error(function()
            s:locked(10, 12, true, function() error("failed", 0) end, 0, nil)
        end, "failed")
        assert.are.equal(0, #s.locks)
    end)

    it("refuses to wait outside a request", function()
        local ok, err = pcall(locks.park, locks.token())
        assert.is_false(ok)
        assert.matches("dedupdisk: would wait outside a request", err)
    end)

    it("hands the mutex over in arrival order, ticking the caches' clock", function()
        local s, log = new_store(), {}
        local m1 = decider(s, log, "m1")
        local m2 = decider(s, log, "m2")
        local m3 = decider(s, log, "m3")
        assert.are.same({ "m1" }, log)
        locks.wake(m1)
        assert.are.same({ "m1", "m2" }, log)
        assert.is_true(s.meta_busy)
        locks.wake(m2)
        locks.wake(m3)
        assert.are.same({ "m1", "m2", "m3" }, log)
        assert.is_false(s.meta_busy)
        assert.are.equal(3, s.tick)
    end)

    it("evicts records on entering when too many are cached", function()
        local s = new_store()
        s:meta_enter()
        s:meta_leave()
        assert.are.equal(0, s.evictions)
        s.rc_count = 11
        s:meta_enter()
        s:meta_leave()
        assert.are.equal(1, s.evictions)
    end)

    it("refuses a decision once the store is broken, and leaves the mutex free", function()
        local s = new_store()
        s.broken = "writing metadata"
        assert.has_error(function() s:meta_enter() end, usbd.E.IO)
        assert.is_false(s.meta_busy)
    end)
end)

-- usbd.dedup.commit: batches written in the order they were decided, in
-- groups; checkpoints that drop the journal lists; numbers freed reused
-- only once durable; fail-stop once a batch fails.
local usbd = require "usbd"
local journal = require "usbd.dedup.journal"
local d = require "dedup_helper"

local dir, scratch = require("device_helper").scratch("commit")
local K = d.K

-- A decision that puts key = value (a key of no store record's prefix),
-- queued.
local function decide(s, key, value)
    s:meta_enter()
    local st = s:new_stage()
    st.batch:put(key, value)
    s:enqueue(st)
    s:meta_leave()
    return st
end

describe("usbd.dedup.commit", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("writes batches in the order they were decided, a later one waiting for those before", function()
        local s = d.open(scratch())
        local a = decide(s, "Xa", "1")
        local b = decide(s, "Xb", "2")
        assert.is_true(a.seq < b.seq)
        b.ready = true                 -- its blocks are written first
        s:run_commits()
        assert.falsy(b.done)
        assert.is_nil(s.db:get("Xb"))
        s:commit(a)
        assert.is_true(a.done and b.done)
        assert.are.same({ "1", "2" }, { s.db:get("Xa"), s.db:get("Xb") })
        assert.are.equal(b.seq, s.committed)
        s:close_store()
    end)

    it("keeps a batch's records cached until it is written", function()
        local s = d.open(scratch())
        s:meta_enter()
        local st = s:new_stage()
        s:add_content(st, usbd.hash128("content"))
        s:enqueue(st)
        s:meta_leave()
        assert.are.equal(1, s.rc[0].pend)
        s.rc_max = 0
        s:evict()
        assert.truthy(s.rc[0])
        s:commit(st)
        assert.are.equal(0, s.rc[0].pend)
        s:evict()
        assert.is_nil(s.rc[0])
        s:close_store()
    end)

    it("drops at a checkpoint the journal lists of the batches written before it", function()
        local path = scratch()
        local s = d.open(path)
        d.store(s, 0, d.rnd(4 * K, 1))
        assert.are.equal(4, #journal.ids(s.db))
        assert.are.equal(4, s.journaled)
        s:checkpoint()
        assert.are.equal(0, #journal.ids(s.db))
        assert.are.equal(0, s.journaled)
        assert.are.equal(s.committed, s.forgotten)
        d.store(s, 8, d.rnd(2 * K, 2))
        assert.are.equal(2, #journal.ids(s.db))
        s:close_store()                -- a clean close: a checkpoint
        s = d.open(path)
        assert.are.equal(0, #journal.ids(s.db))
        s:close_store()
    end)

    it("reuses the ids a batch frees only once a sync of the WAL has made it durable", function()
        local s = d.open(scratch())
        d.store(s, 0, d.rnd(8 * K, 3))                 -- ids 1 .. 8
        d.store(s, 0, d.rnd(4 * K, 4))                 -- ids 9 .. 12; 1 .. 4 freed
        assert.are.equal(4, s.ids.limbo_count)
        d.store(s, 100, d.rnd(K, 5))
        assert.are.equal(13, d.id_of(s, 100))          -- not one of those freed
        s:release()
        assert.are.equal(0, s.ids.limbo_count)
        d.store(s, 101, d.rnd(K, 6))
        assert.are.equal(1, d.id_of(s, 101))
        s:close_store()
    end)

    it("writes no batch decided after one that failed, and refuses decisions", function()
        local s = d.open(scratch())
        local a = decide(s, "Xa", "1")
        local b = decide(s, "Xb", "2")
        local write_queued = s.db.write_queued
        s.db.write_queued = function() error("injected", 0) end
        assert.has_error(function() s:commit(a) end, "injected")
        s.db.write_queued = write_queued
        assert.are.equal("writing metadata", s.broken)
        assert.has_error(function() s:commit(b) end, usbd.E.IO)
        assert.is_nil(s.db:get("Xb"))
        assert.has_error(function() s:meta_enter() end, usbd.E.IO)
        s:close_store()
    end)

    -- Decide a and b, b's blocks written; break(s) makes the commit of a
    -- fail. Both fail, neither is written, and nothing stays queued.
    local function both_fail(brk, unbreak, why)
        local s = d.open(scratch())
        local a = decide(s, "Xa", "1")
        local b = decide(s, "Xb", "2")
        b.ready = true
        brk(s)
        assert.has_error(function() s:commit(a) end, usbd.E.IO)
        unbreak(s)
        assert.are.equal(why, s.broken)
        assert.is_true(b.done)
        assert.are.equal(usbd.E.IO, b.err)
        assert.are.same({}, { s.db:get("Xa"), s.db:get("Xb") })
        assert.are.equal(0, s.wq:drop())
        s:close_store()
    end

    it("fails the batches a failed write left in the queue, and writes none of them", function()
        -- A write that fails before taking any: both stay queued.
        local write_queued
        both_fail(function(s)
            write_queued = s.db.write_queued
            s.db.write_queued = function() return 0, usbd.E.IO end
        end, function(s) s.db.write_queued = write_queued end, "writing metadata")
    end)

    it("fails, unwritten, the batches it could not queue, and writes none after them", function()
        both_fail(function(s) s.wq.add = function() error(usbd.E.NOMEM, 0) end end,   -- out of memory
            function(s) s.wq.add = nil end, "queueing a batch")
    end)
end)

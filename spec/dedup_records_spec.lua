-- usbd.dedup.records: the record cache (loaded in one read, the least
-- recently used idle records evicted), references, and the index entries
-- a batch's freed contents leave, removed together.
local ffi = require "ffi"
local F = require "usbd.dedup.format"
local records = require "usbd.dedup.records"

local Records = require("dedup_helper").class(records)

-- A store with records alone: RocksDB holds the records in stored (group
-- -> bytes) and counts its reads; the index and the allocator say what
-- they were asked.
local function new_store(max, stored)
    local db = { reads = 0, stored = stored or {} }
    function db:multi_get(keys)
        self.reads = self.reads + 1
        local vals = {}
        for i, k in ipairs(keys) do vals[i] = self.stored[F.un64(k, 2)] end
        return vals
    end
    local index = { puts = {}, removed = {}, calls = 0 }
    function index:put(_, id) self.puts[#self.puts + 1] = id end
    function index:slots() return 1024 end
    function index:remove_many(_, ids, n)
        self.calls = self.calls + 1
        for i = 0, n - 1 do self.removed[#self.removed + 1] = tonumber(ids[i]) end
    end
    local ids = { last = 0 }
    function ids:take()
        self.last = self.last + 1
        return self.last, true
    end
    local s = setmetatable({ db = db, index = index, ids = ids, tick = 0, counters = { unique = 0 } }, Records)
    s:init_records(max, false)
    return s
end

local function new_stage() return { recs = {}, freed_ids = {}, freed_pbns = {}, frag_frees = {}, jids = {} } end

local function hash(i)
    local h = ffi.new("uint8_t[16]")
    h[0], h[1] = i % 256, math.floor(i / 256)
    return h
end

describe("usbd.dedup.records", function()
    it("loads the records a decision needs in one read, and keeps them cached", function()
        local s = new_store(16)
        s:load_records({ [0] = true, [3] = true, [5] = true })
        assert.are.equal(1, s.db.reads)
        assert.are.equal(3, s.rc_count)
        s:load_records({ [3] = true, [5] = true })
        local slot, r, g = s:slot(3 * 64 + 7)
        assert.are.equal(1, s.db.reads)
        assert.are.equal(3, g)
        assert.are.equal(s.rc[3], r)
        assert.are.equal(0, slot.refs)          -- absent from RocksDB: 64 free slots
        s:slot(9 * 64)
        assert.are.equal(2, s.db.reads)
    end)

    it("refuses a record of the wrong size in one line", function()
        local s = new_store(16, { [2] = "short" })
        assert.has_error(function() s:slot(2 * 64 + 1) end, "dedupdisk: record 2 is damaged (5 bytes)")
    end)

    it("evicts the least recently used idle records, never one a batch still stages", function()
        local s = new_store(8)
        for g = 0, 11 do
            s.tick = g
            s:slot(g * 64)
        end
        s.rc[0].pend = 1          -- the oldest, staged by a batch not yet written
        s.tick = 100
        s:slot(1 * 64)            -- used again, last
        s:evict()
        assert.is_true(s.rc_count <= 6, "cached: " .. s.rc_count)
        assert.truthy(s.rc[0], "a record a batch stages was evicted")
        assert.truthy(s.rc[1], "the record used last was evicted")
        local newest_gone, oldest_kept = -1, math.huge
        for g = 2, 11 do
            if s.rc[g] then oldest_kept = math.min(oldest_kept, g) else newest_gone = math.max(newest_gone, g) end
        end
        assert.is_true(newest_gone >= 2, "nothing was evicted")
        assert.is_true(newest_gone < oldest_kept, "a newer record went before an older one")
        local n = 0
        for _ in pairs(s.rc) do n = n + 1 end
        assert.are.equal(n, s.rc_count)
    end)

    it("keeps what the caller holds when it evicts a cache of its own", function()
        local cache = {}
        for g = 1, 10 do cache[g] = { pend = 0, tick = g } end
        local count = records.evict_oldest(cache, 10, 4, { [1] = true })
        assert.truthy(cache[1])
        assert.is_nil(cache[2])
        assert.truthy(cache[10])
        assert.is_true(count <= 3)
    end)

    it("counts references; the last one going frees the id and its index entry, with the batch's others", function()
        local s = new_store(16)
        local st = new_stage()
        local a = s:add_content(st, hash(1))
        local b = s:add_content(st, hash(2))
        assert.are.same({ 1, 2 }, { a, b })
        assert.are.equal(0, s.db.reads)       -- a new group's record: not in RocksDB, not read
        assert.are.same({ 1, 2 }, s.index.puts)
        assert.are.same({ 1, 2 }, st.jids)
        assert.are.equal(2, s.counters.unique)
        s:ref(st, a)
        assert.are.equal(2, s:slot(a).refs)
        s:add_content(st, hash(3), true)      -- apart: the index names another
        assert.are.same({ 1, 2 }, s.index.puts)

        local st2 = new_stage()
        s:unref(st2, a, 1)
        assert.are.same({}, st2.freed_ids)
        s:unref(st2, a, 1)
        s:unref(st2, b, 1)
        assert.are.same({ a, b }, st2.freed_ids)
        assert.are.equal(1, s.counters.unique)
        assert.truthy(st2.recs[0])
        assert.are.same({}, s.index.removed)   -- until the batch is queued
        s:index_removes()
        assert.are.same({ a, b }, s.index.removed)
        assert.are.equal(1, s.index.calls)
    end)

    it("says a mapping to an id holding no reference is damage", function()
        local s = new_store(16)
        local ok, err = pcall(s.unref, s, new_stage(), 70, 1)
        assert.is_false(ok)
        assert.matches("names id 70, whose record holds 0 references: store damaged", err)
    end)

    it("names an id as holding a content only while its record holds that content", function()
        local s = new_store(16)
        local st = new_stage()
        local id = s:add_content(st, hash(7))
        assert.are.equal(id, s:holding(id, hash(7)))
        assert.are.equal(0, s:holding(id, hash(8)))
        assert.are.equal(0, s:holding(0, hash(7)))
        s:unref(st, id, 1)
        assert.are.equal(0, s:holding(id, hash(7)))
    end)

    it("grows the batch's list of index removals past its first size", function()
        local s = new_store(1000)
        local st = new_stage()
        for i = 1, 300 do s:add_content(st, hash(i)) end
        for i = 1, 300 do s:unref(st, i, 1) end
        assert.is_true(s.rm_cap >= 300)
        s:index_removes()
        assert.are.equal(300, #s.index.removed)
        assert.are.equal(300, s.index.removed[300])
    end)
end)

-- usbd.dedup.packing (compress=): fragments placed into packed blocks,
-- their gaps written as zeroes, listed in P records; an emptied block
-- freed; freed gaps refilled only once durable; requests that place into
-- a block another still writes wait for it.
local usbd = require "usbd"
local sched = require "usbd.core.sched"
local F = require "usbd.dedup.format"
local packer = require "usbd.dedup.packer"
local d = require "dedup_helper"

local dir, scratch = require("device_helper").scratch("packing")
local K = d.K
local floor = math.floor

local function open() return d.open(scratch(), { compress = "lz4" }) end

-- Fragments of sizes placed as a decision places new contents' (the
-- second on right after the first): { pbn, off, size } each, and the
-- stage, queued. fill: the gaps to write as zeroes, from fill_ranges.
local function place(s, sizes, least)
    s:meta_enter()
    local st = s:new_stage()
    local placed = {}
    for i, size in ipairs(sizes) do
        local p, off = s:place(st, size, i > 1, least)
        packer.add(s.pg[floor(p / 64)].live[p], off, size)
        st.ptouch = st.ptouch or {}
        st.ptouch[floor(p / 64)] = true
        placed[i] = { p, off, size }
    end
    local fill = {}
    if st.fills then
        local ranges = usbd.file.ranges(8)
        for i = 0, s:fill_ranges(st, ranges, 0) - 1 do
            fill[#fill + 1] = { ranges[i].pos, ranges[i].len, ranges[i].at == usbd.file.ZEROES }
        end
    end
    s:enqueue(st)
    s:meta_leave()
    return placed, st, fill
end

local function commit(s, st)
    s:end_fills(st)
    s:commit(st)
end

-- The last references to fragments go, as unref lets them go.
local function free(s, placed)
    s:meta_enter()
    local st = s:new_stage()
    local f = st.frag_frees
    for _, x in ipairs(placed) do f[#f + 1], f[#f + 2], f[#f + 3] = x[1], x[2], x[3] end
    s:enqueue(st)
    s:meta_leave()
    s:commit(st)
    return st
end

local function P(s, g)
    local v = s.db:get(F.Pkey(g), 64 * 1024)
    return v and F.Pdecode(v, g)
end

describe("usbd.dedup.packing", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("packs fragments into a fresh block, writes its gaps as zeroes, and lists them in P", function()
        local s = open()
        local placed, st, fill = place(s, { 1000, 500 })
        local p = placed[1][1]
        assert.are.same({ { p, 0, 1000 }, { p, 1000, 500 } }, placed)
        assert.are.same({ p }, st.fills)
        assert.are.equal(st, s.filling[p])
        assert.are.same({ { (p - 1) * K + 1500, K - 1500, true } }, fill)
        commit(s, st)
        assert.is_nil(s.filling[p])
        assert.are.same({ 0, 1000, 1000, 500 }, P(s, floor(p / 64))[p])
        s:close_store()
    end)

    it("opens no block for a fragment no other of its request could join, but gives it a gap", function()
        local s = open()
        s:meta_enter()
        local st = s:new_stage()
        assert.is_nil(s:place(st, K / 2 + 1, false, K / 2))  -- (stored raw: alone in a block it saves nothing)
        assert.is_nil(st.fills)
        s:enqueue(st)
        s:meta_leave()
        commit(s, st)
        local placed, st2 = place(s, { 1000, K / 2 + 1 }, 1000)
        local p = placed[1][1]
        assert.are.same({ { p, 0, 1000 }, { p, 1000, K / 2 + 1 } }, placed)
        commit(s, st2)
        -- One that a smaller fragment of its request could join opens a block.
        local placed3, st3 = place(s, { K / 2 + 100, 900 }, 900)
        assert.are.same({ placed3[1][1], 0, K / 2 + 100 }, placed3[1])
        commit(s, st3)
        s:close_store()
    end)

    it("frees a packed block once its last fragment goes", function()
        local s = open()
        local placed, st = place(s, { 1000, 500 })
        commit(s, st)
        local p, free_before = placed[1][1], s.counters.pbns_free
        local freeing = free(s, placed)
        assert.are.same({ p }, freeing.freed_pbns)
        assert.are.equal(free_before + 1, s.counters.pbns_free)
        assert.is_nil(P(s, floor(p / 64)))
        s:close_store()
    end)

    it("refills the gaps of a block left half full only once the batch that freed them is durable", function()
        local s = open()
        local placed, st = place(s, { K / 2, K / 2 })     -- full: the packer closes it
        commit(s, st)
        local p = placed[1][1]
        free(s, { placed[1] })
        assert.are.equal(1, s.frag_pending[p])
        assert.are.same({}, s.refillable)
        local before, st2 = place(s, { K / 2, K / 2 })    -- not into p's gap yet
        commit(s, st2)
        assert.are_not.equal(p, before[1][1])
        s:release()
        assert.is_nil(s.frag_pending[p])
        assert.are.same({ p }, s.refillable)
        local after, st3 = place(s, { K / 2 })
        commit(s, st3)
        assert.are.same({ p, 0, K / 2 }, after[1])
        assert.are.same({ 0, K / 2, K / 2, K / 2 }, P(s, floor(p / 64))[p])
        s:close_store()
    end)

    it("makes a request that placed into another's fresh block wait until that one is written", function()
        local s = open()
        local first, st1 = place(s, { 1000 })
        local second, st2 = place(s, { 1000 })
        assert.are.equal(first[1][1], second[1][1])
        st2.after = { [st1] = true }       -- (decide notes it: s.filling says whose)
        local written = false
        sched.spawn(function()
            s:await_fills(st2)
            written = true
        end)
        assert.is_false(written)
        s:end_fills(st1)
        assert.is_true(written)
        commit(s, st1)
        commit(s, st2)
        s:close_store()
    end)

    it("keeps at most pg_max idle groups in memory, never one with an open block", function()
        local s = open()
        s.pg_max = 2
        local placed, st = place(s, { 100 })
        commit(s, st)
        local open_g = floor(placed[1][1] / 64)
        for g = open_g + 1, open_g + 5 do
            s.tick = s.tick + 1
            s:P_group(g * 64)
        end
        s:evict_P()
        assert.is_true(s.pg_count <= 2, "groups in memory: " .. s.pg_count)
        assert.truthy(s.pg[open_g])
        s:close_store()
    end)
end)

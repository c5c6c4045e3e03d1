-- usbd.dedup.map: extents staged and read back from RocksDB, cut at each
-- 256-block span, and the map cache that takes a written batch's edit.
local ffi = require "ffi"
local usbd = require "usbd"
local map = require "usbd.dedup.map"

local dir, scratch = require("device_helper").scratch("map")
local floor = math.floor

local Map = require("dedup_helper").class(map)

-- A store with the map alone, over a RocksDB of its own; scan_raw counts
-- the reads of the map.
local function new_store(chunks)
    local db = usbd.kv.open(scratch(), { create = true })
    local s = setmetatable({ db = db, scans = 0 }, Map)
    local scan_raw = db.scan_raw
    function db.scan_raw(...)
        s.scans = s.scans + 1
        if s.during_scan then s.during_scan() end
        return scan_raw(...)
    end
    s:init_map(chunks or 16)
    return s
end

-- Logical blocks [first, first + #ids) now hold ids (0: zeroes): staged,
-- written, and handed to the cache as a written batch is.
local function put(s, first, ids)
    local n = #ids
    local old, new = ffi.new("double[?]", n), ffi.new("double[?]", n)
    local exts = {}
    s:map_read(first, n, old, exts)
    for i = 1, n do new[i - 1] = ids[i] end
    local batch = usbd.kv.batch()
    local edit = s:map_write(batch, first, n, new, exts)
    s.db:write(batch, false)
    s:map_changed(floor(first / 256), floor((first + n - 1) / 256), edit)
    return edit
end

local function get(s, first, n)
    local old = ffi.new("double[?]", n)
    s:map_read(first, n, old)
    local t = {}
    for i = 1, n do t[i] = old[i - 1] end
    return t
end

local function range(a, b)
    local t = {}
    for i = a, b do t[#t + 1] = i end
    return t
end

local function extents(s, first, last)
    local t = {}
    for _, e in ipairs(s:extents_over(first, last)) do t[#t + 1] = { e.last, e.id, e.count } end
    return t
end

describe("usbd.dedup.map", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("stores consecutive ids as one extent, cut at each 256-block span", function()
        local s = new_store()
        put(s, 250, range(1001, 1010))
        assert.are.same({ { 255, 1001, 6 }, { 259, 1007, 4 } }, extents(s, 0, 511))
        assert.are.same(range(1001, 1010), get(s, 250, 10))
        assert.are.same({ 0, 0 }, get(s, 248, 2))
        s.db:close()
    end)

    it("rewrites part of an extent, keeping its head and tail as they were", function()
        local s = new_store()
        put(s, 0, range(1, 16))
        local edit = put(s, 4, { 50, 51 })
        assert.are.same({ 0, 15 }, { edit.lo, edit.hi })
        assert.are.same({ { 3, 1, 4 }, { 5, 50, 2 }, { 15, 7, 10 } }, extents(s, 0, 255))
        put(s, 8, { 0, 0 })
        assert.are.same({ { 3, 1, 4 }, { 5, 50, 2 }, { 7, 7, 2 }, { 15, 11, 6 } }, extents(s, 0, 255))
        assert.are.same({ 1, 2, 3, 4, 50, 51, 7, 8, 0, 0, 11 }, get(s, 0, 11))
        s.db:close()
    end)

    it("finds every block of a span cut into extents of one block, and its holes", function()
        local s = new_store()
        local ids = {}
        for i = 1, 256 do ids[i] = 2 * i + 1 end       -- no two consecutive: 256 extents
        put(s, 0, ids)
        local holes = {}
        for i = 1, 256 do holes[i] = i % 3 == 0 and 0 or 5 * i end
        put(s, 256, holes)                             -- extents with gaps between
        assert.are.equal(256, #extents(s, 0, 255))
        for _, first in ipairs({ 0, 1, 15, 16, 17, 31, 32, 33, 100, 239, 240, 254, 255 }) do
            for _, n in ipairs({ 1, 2, 17, 256 - first }) do
                n = math.min(n, 256 - first)
                local want = {}
                for i = first + 1, first + n do want[#want + 1] = ids[i] end
                assert.are.same(want, get(s, first, n))
                want = {}
                for i = first + 1, first + n do want[#want + 1] = holes[i] end
                assert.are.same(want, get(s, 256 + first, n))
            end
        end
        s.db:close()
    end)

    it("keeps a span's extents cached, edited by each written batch, read once", function()
        local s = new_store()
        put(s, 0, range(1, 16))
        assert.are.equal(1, s.scans)
        put(s, 4, { 50, 51 })
        put(s, 300, { 9 })
        assert.are.equal(2, s.scans)      -- the second span, once
        assert.are.same({ 1, 2, 3, 4, 50, 51, 7, 8 }, get(s, 0, 8))
        assert.are.equal(2, s.scans)
        -- The cache holds what RocksDB holds, three numbers an extent.
        local function cached()
            local t, list = {}, s.mc[0]
            for k = 1, #list, 3 do t[#t + 1] = { list[k], list[k + 1], list[k + 2] } end
            assert.are.equal(#t, list[0])      -- the count it keeps
            return t
        end
        assert.are.same(extents(s, 0, 255), cached())
        put(s, 2, { 0 })                         -- an extent more: the rest move up
        assert.are.same(extents(s, 0, 255), cached())
        put(s, 0, { 1, 2, 3 })                   -- two fewer: the rest move down
        assert.are.same(extents(s, 0, 255), cached())
        assert.are.same({ 1, 2, 3, 4, 50, 51, 7, 8 }, get(s, 0, 8))
        s.db:close()
    end)

    it("does not keep a span's extents read while a batch changed them", function()
        local s = new_store()
        put(s, 0, range(1, 4))
        s.mc, s.mc_count = {}, 0
        s.during_scan = function() s:map_changed(0, 0, nil) end   -- a batch written meanwhile
        assert.are.same({ 1, 2, 3, 4 }, get(s, 0, 4))              -- what RocksDB held: used
        s.during_scan = nil
        assert.is_nil(s.mc[0])                                     -- but not kept
        get(s, 0, 4)
        assert.truthy(s.mc[0])
        s.db:close()
    end)

    it("starts the cache over past map_cache entries (a span and its extents)", function()
        local s = new_store(4)
        for c = 0, 4 do get(s, c * 256, 1) end     -- unmapped spans: one entry each
        assert.are.equal(1, s.mc_count)
        assert.truthy(s.mc[4])
        assert.is_nil(s.mc[0])
        s.db:close()
    end)

    -- A span that random writes cut up costs its extents, not one entry:
    -- the cache stays bounded in memory whatever the writes did.
    it("counts a cut-up span by its extents, through edits", function()
        local s = new_store(14)
        local function count()
            local n = 0
            for _, list in pairs(s.mc) do n = n + #list / 3 + 1 end
            return n
        end
        put(s, 0, { 1, 0, 3, 0, 5, 0, 7, 0 })      -- 4 extents of one block
        s.mc, s.mc_count = {}, 0
        get(s, 0, 1)
        assert.are.equal(5, s.mc_count)
        put(s, 1, { 2 })                           -- a fifth (no merge across the edit)
        assert.are.equal(6, s.mc_count)
        put(s, 0, { 1, 2, 3 })                     -- rewritten as one: 3 extents
        assert.are.equal(4, s.mc_count)
        put(s, 256, { 9, 0, 11, 0, 13, 0, 15, 0, 17 })   -- span 1 cached with 5 extents
        assert.are.equal(count(), s.mc_count)
        assert.are.equal(10, s.mc_count)
        get(s, 512, 1)
        get(s, 768, 1)
        get(s, 1024, 1)
        get(s, 1280, 1)
        assert.are.equal(14, s.mc_count)
        get(s, 1536, 1)                            -- 15 > 14: over
        assert.are.equal(1, s.mc_count)
        assert.is_nil(s.mc[0])
        s.db:close()
    end)

    it("unmaps a range, keeping the parts of extents outside it", function()
        local s = new_store()
        put(s, 0, range(1, 16))
        local batch = usbd.kv.batch()
        local edit = s:map_unmap(batch, 4, 12, s:extents_over(4, 11))
        s.db:write(batch, false)
        assert.are.same({ { 3, 1, 4 }, { 15, 13, 4 } }, extents(s, 0, 255))
        assert.are.same({ 0, 15 }, { edit.lo, edit.hi })
        s:map_changed(0, 0, edit)
        assert.are.same({ 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 13, 14, 15, 16 }, get(s, 0, 16))
        s.db:close()
    end)

    it("unmaps many extents with one range delete", function()
        local s = new_store()
        for i = 0, 99 do put(s, 2 * i, { 1000 + 3 * i }) end
        local exts = s:extents_over(0, 255)
        assert.are.equal(100, #exts)
        local batch = usbd.kv.batch()
        s:map_unmap(batch, 0, 256, exts)
        assert.is_true(batch:count() < 10)
        s.db:write(batch, false)
        assert.are.same({}, extents(s, 0, 255))
        s.db:close()
    end)
end)

-- usbd.dedup.write: what a write decides (blocks that stay as they are,
-- duplicates, zeroes, new contents; verify=true comparing bytes), and
-- unmapping whole blocks in batches of at most 64K blocks.
local ffi = require "ffi"
local usbd = require "usbd"
local d = require "dedup_helper"

local dir, scratch = require("device_helper").scratch("write")
local K = d.K
local Z = string.rep("\0", K)

describe("usbd.dedup.write", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("writes nothing for blocks that already hold what is written", function()
        local s = d.open(scratch())
        local a = d.rnd(4 * K, 1)
        d.store(s, 0, a)
        local seq = s.seq
        d.store(s, 0, a)
        assert.are.equal(seq, s.seq)
        d.store(s, 1, a:sub(K + 1, 2 * K) .. d.rnd(K, 2))   -- one stays, one changes
        assert.are.equal(seq + 1, s.seq)
        s:close_store()
    end)

    it("shares duplicates, within one request and with what is stored, and counts them", function()
        local s = d.open(scratch())
        local a = d.rnd(K, 3)
        d.store(s, 0, a .. a .. a .. d.rnd(K, 4))
        assert.are.equal(2, s.counters.unique)
        assert.are.equal(4, s.counters.mapped)
        assert.are.equal(2, s.stats_hits)
        d.store(s, 10, a)
        assert.are.equal(3, s.stats_hits)
        assert.are.equal(d.id_of(s, 0), d.id_of(s, 10))
        assert.are.equal(3 + 1, s:slot(d.id_of(s, 0)).refs)
        s:close_store()
    end)

    it("stores blocks of zeroes as nothing", function()
        local s = d.open(scratch())
        d.store(s, 0, d.rnd(2 * K, 5))
        d.store(s, 0, Z .. Z .. Z)
        assert.are.equal(0, s.counters.mapped)
        assert.are.equal(0, s.counters.unique)
        assert.are.equal(2, s.stats_zero_writes)
        assert.are.same({}, s:extents_over(0, 255))
        s:close_store()
    end)

    it("with verify=true, stores apart a block whose hash matches a content with other bytes", function()
        local s = d.open(scratch(), { verify = true })
        local a, b = d.rnd(K, 6), d.rnd(K, 7)
        d.store(s, 0, a)
        -- Make a's content look like b's to the index and its record: a
        -- collision of hashes.
        local id = d.id_of(s, 0)
        local hb = ffi.new("uint8_t[16]")
        local buf = usbd.buffer(K)
        buf:copy_from(b)
        buf:block_hashes(K, hb)
        ffi.copy(s:slot(id).hash, hb, 16)
        s.index:put(hb, id)
        d.store(s, 1, b)
        assert.are.equal(1, s.stats_collisions)
        assert.are_not.equal(id, d.id_of(s, 1))
        assert.are.equal(a .. b, d.load(s, 0, 2))
        s:close_store()
    end)

    it("unmaps whole blocks, keeping the parts of extents outside, a batch per 64K blocks", function()
        local s = d.open(scratch(), { size = 2 ^ 30 })
        local a = d.rnd(8 * K, 8)
        d.store(s, 0, a)
        s:unmap(2, 6)
        assert.are.equal(a:sub(1, 2 * K) .. Z:rep(4) .. a:sub(6 * K + 1), d.load(s, 0, 8))
        assert.are.equal(4, s.counters.unique)
        assert.are.equal(4, s.counters.mapped)
        d.store(s, 70000, d.rnd(K, 9))
        d.store(s, 140000, d.rnd(K, 10))
        local seq = s.seq
        s:unmap(0, 2 ^ 30 / K)
        assert.are.equal(seq + 3, s.seq)   -- three of the four pieces map something
        assert.are.equal(0, s.counters.mapped)
        assert.are.equal(0, s.counters.unique)
        assert.are.equal(Z, d.load(s, 140000, 1))
        s:close_store()
    end)
end)

-- usbd.dedup.read: whole blocks read back, zeroes where nothing is
-- mapped; runs lent from the page cache (at most MAX_BORROWED pieces, the
-- rest read); with compress=, a sequential write's fragments read in one
-- range, and records read outside the mutex not cached.
local ffi = require "ffi"
local usbd = require "usbd"
local d = require "dedup_helper"

local dir, scratch = require("device_helper").scratch("read")
local K = d.K
local Z = string.rep("\0", K)

describe("usbd.dedup.read", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("reads the blocks stored, and zeroes where nothing is mapped", function()
        local s = d.open(scratch())
        local a = d.rnd(4 * K, 1)
        d.store(s, 2, a)
        assert.are.equal(Z .. Z .. a .. Z .. Z, d.load(s, 0, 8))
        assert.are.equal(a:sub(K + 1, 3 * K), d.load(s, 3, 2))
        s:close_store()
    end)

    it("lends runs of blocks to a read, at most MAX_BORROWED of them, and reads the rest", function()
        local s = d.open(scratch())
        if not s.map then
            pending("the block file cannot be mapped here")
            s:close_store()
            return
        end
        -- Blocks 0, 2, 4, ... hold contents, 1, 3, 5, ... nothing: each
        -- block is a run of its own.
        local n, want = 2 * usbd.MAX_BORROWED + 8, {}
        for i = 0, n - 1 do
            if i % 2 == 0 then
                want[i + 1] = d.rnd(K, 100 + i)
                d.store(s, i, want[i + 1])
            else
                want[i + 1] = Z
            end
        end
        s.file:sync()
        local old = ffi.new("double[?]", n)
        s:map_read(0, n, old)
        local buf = usbd.buffer(n * K)
        assert.are.equal(usbd.MAX_BORROWED, s:lend(buf, n, old))
        assert.are.equal(table.concat(want):sub(1, usbd.MAX_BORROWED * K), buf:sub(0, usbd.MAX_BORROWED * K):tostring())
        local whole = usbd.buffer(n * K)
        s:load(whole, 0, true)
        assert.are.equal(table.concat(want), whole:tostring())
        s:close_store()
    end)

    it("reads a sequential write's fragments in one range, and one block's fragment alone", function()
        local s = d.open(scratch(), { compress = "lz4" })
        local blocks = {}
        for i = 1, 16 do blocks[i] = d.text(i) end
        d.store(s, 0, table.concat(blocks))
        assert.is_true(s:slot(1).size > 0, "the blocks were not stored as fragments")
        local read_fragments, calls = s.read_fragments, {}
        s.read_fragments = function(self, data, n, ranges, nf, ...)
            calls[#calls + 1] = { nf, tonumber(ranges[0].len) }
            return read_fragments(self, data, n, ranges, nf, ...)
        end
        assert.are.equal(table.concat(blocks), d.load(s, 0, 16))
        assert.are.equal(1, #calls)
        assert.are.equal(1, calls[1][1])
        assert.are.equal(blocks[5] .. Z, d.load(s, 4, 1) .. d.load(s, 100, 1))
        assert.are.same({ 1, s:slot(d.id_of(s, 4)).size }, calls[2])
        assert.are.equal(2, #calls)
        s:close_store()
    end)

    it("reads records it does not hold without caching them (compress=)", function()
        local s = d.open(scratch(), { compress = "lz4" })
        d.store(s, 0, d.text(1) .. d.rnd(K, 2))
        s.rc, s.rc_count = {}, 0
        assert.are.equal(d.text(1) .. d.rnd(K, 2), d.load(s, 0, 2))
        assert.are.equal(0, s.rc_count)
        assert.is_nil(next(s.rc))
        s:close_store()
    end)
end)

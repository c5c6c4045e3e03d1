-- devices/dedupdisk.lua with compress=: fragments packed into shared
-- blocks, raw storage of what does not compress, per-fragment references,
-- freed gaps refilled only after a flush, the store check.
local ffi = require "ffi"
local h = require "device_helper"
local usbd = require "usbd"

local root = "build/spec-dedupc." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
os.execute("mkdir -p " .. root)
local n = 0
local function newdir() n = n + 1 return root .. "/s" .. n end

local SCRIPT = "devices/dedupdisk.lua"
local K = 4096

local function rnd(len, seed)
    math.randomseed(seed)
    local t = {}
    for i = 1, len do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

-- Text: each 4 KiB block different, each compresses to about a third.
local function text(len, seed)
    math.randomseed(seed)
    local words = { "block ", "device ", "the ", "kernel ", "nbd ", "write ", "read ", "flush ",
        "compress ", "fragment ", "store ", "lua\n" }
    local t, at = {}, 0
    while at < len do
        local w = words[math.random(#words)] .. (math.random(100) == 1 and tostring(math.random(1e6)) or "")
        t[#t + 1] = w
        at = at + #w
    end
    return table.concat(t):sub(1, len)
end

local function fsck(dir, repair)
    local tool = dofile("tools/dedup-fsck.lua")
    return tool.check(dir, { repair = repair })
end

local function clean(dir)
    local r = fsck(dir)
    assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
    assert.are.equal(0, r.leaks, table.concat(r.lines, "\n"))
    return r
end

describe("devices/dedupdisk.lua compress=", function()
    teardown(function() os.execute("rm -rf " .. root) end)

    for _, spec in ipairs({ "lz4", "zstd", "zstd:9" }) do
        it(spec .. ": text takes far less than raw, random no more, all reads back", function()
            local dir = newdir()
            local dev = h.open(SCRIPT, { dir = dir, size = "64M", compress = spec })
            local t = text(1024 * K, 1)
            local r = rnd(256 * K, 2)
            h.write(dev, 0, t)
            local s = dev:stats()
            assert.are.equal(spec == "zstd" and "zstd:3" or spec, s.dedup_compress)
            -- 1024 text blocks in a fraction of their space.
            local text_bytes = s.dedup_block_file_bytes
            assert.is_true(text_bytes < 1024 * K * 0.6, ("text took %d bytes of %d"):format(text_bytes, 1024 * K))
            assert.is_true(s.dedup_compression_ratio > 1.6, tostring(s.dedup_compression_ratio))
            -- Random data: raw, no more.
            h.write(dev, 8 * 2 ^ 20, r)
            s = dev:stats()
            assert.are.equal((1024 + 256) * K, s.dedup_unique_bytes)
            assert.is_true(s.dedup_block_file_bytes <= text_bytes + 256 * K + K,
                ("256 KiB of random data took %d bytes"):format(s.dedup_block_file_bytes - text_bytes))
            assert.are.equal(t, h.read(dev, 0, 1024 * K))
            assert.are.equal(r, h.read(dev, 8 * 2 ^ 20, 256 * K))
            -- Reads of single blocks, and unaligned ones, decompress only theirs.
            assert.are.equal(t:sub(5 * K + 1, 6 * K), h.read(dev, 5 * K, K))
            assert.are.equal(t:sub(3001, 3001 + 9000), h.read(dev, 3000, 9001))
            dev:close()
            clean(dir)
        end)
    end

    it("stores raw a request's fragments over half a block that none of it could join, unless a gap takes them", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M", compress = "lz4" })
        local function stored_size(lba)   -- its content's fragment bytes (0: raw)
            return dev:slot(require("dedup_helper").id_of(dev, lba)).size
        end
        -- Blocks of 2200 random bytes and zeroes: fragments of about 2.2 KiB,
        -- a block each whether raw or not: raw, then.
        local half = {}
        for i = 1, 64 do half[i] = rnd(2200, 100 + i) .. string.rep("\0", K - 2200) end
        h.write(dev, 0, table.concat(half))
        assert.are.equal(64 * K, dev:stats().dedup_stored_bytes)
        for lba = 0, 63 do assert.are.equal(0, stored_size(lba)) end
        -- A small fragment opens a block; the next large one takes its gap.
        local small = "a block that compresses well" .. string.rep("x", K - 28)
        h.write(dev, 64 * K, small .. rnd(2200, 99) .. string.rep("\0", K - 2200))
        assert.are.equal(65 * K, dev:stats().dedup_stored_bytes)
        assert.is_true(stored_size(65) > 2048)
        assert.are.equal(table.concat(half), h.read(dev, 0, 64 * K))
        assert.are.equal(small, h.read(dev, 64 * K, K))
        dev:close()
        clean(dir)
    end)

    it("packs at least 14 fragments into one 4 KiB block", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M", compress = "lz4" })
        local blocks = {}
        for i = 1, 28 do
            -- Distinct blocks that compress to under 200 bytes.
            blocks[i] = ("%08d"):format(i) .. string.rep(string.char(65 + i % 26), K - 8)
        end
        h.write(dev, 0, table.concat(blocks))
        local s = dev:stats()
        assert.are.equal(28 * K, s.dedup_unique_bytes)
        assert.are.equal(1, s.dedup_stored_bytes / K)    -- all 28 in one block
        assert.is_true(s.dedup_block_file_bytes <= K)
        assert.are.equal(28, s.dedup_compression_ratio)
        for i = 1, 28 do assert.are.equal(blocks[i], h.read(dev, (i - 1) * K, K)) end
        dev:close()
        clean(dir)
    end)

    it("keeps the live fragments of 64 packed blocks in one P record", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "64M", compress = "lz4" })
        local t = text(1024 * K, 12)
        h.write(dev, 0, t)
        local packed_blocks = dev:stats().dedup_stored_bytes / K
        dev:close()
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local keys, vals = db:scan("P", "Q", 64, 9, 64 * 1024)
        db:close()
        -- A sequential write: its packed blocks in few records, each whole.
        assert.is_true(packed_blocks > 200, tostring(packed_blocks))
        assert.is_true(#keys <= math.ceil(packed_blocks / F.PGROUP) + 1, ("%d records"):format(#keys))
        local fragments, blocks = 0, 0
        for i = 1, #keys do
            local g = F.un64(keys[i], 2)
            assert.are.equal(F.Pkey(g), keys[i])
            local lives = F.Pdecode(vals[i], g)
            assert.is_truthy(lives)
            assert.are.equal(vals[i], F.Pencode(lives, g))
            for pbn, live in pairs(lives) do
                assert.are.equal(g, math.floor(pbn / F.PGROUP))
                assert.are.same({}, require("usbd.dedup.packer").problems(live, K))
                fragments, blocks = fragments + #live / 2, blocks + 1
            end
        end
        assert.are.equal(packed_blocks, blocks)
        assert.are.equal(1024, fragments)   -- text: every block a fragment
        assert.is_nil(F.Pdecode("abc", 0))
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(t, h.read(dev, 0, 1024 * K))
        dev:close()
    end)

    it("dedups on the uncompressed content, counts references per fragment", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M", compress = "lz4" })
        local t = text(64 * K, 4)
        h.write(dev, 0, t)
        local stored = dev:stats().dedup_stored_bytes
        h.write(dev, 2 ^ 20, t)
        h.write(dev, 2 * 2 ^ 20, t:sub(1, 8 * K))
        local s = dev:stats()
        assert.are.equal(stored, s.dedup_stored_bytes)
        assert.are.equal((64 + 64 + 8) * K, s.dedup_logical_bytes)
        assert.are.equal(64 * K, s.dedup_unique_bytes)
        assert.is_true(s.dedup_combined_ratio > s.dedup_ratio)
        -- Drop two of three references to the first 8 blocks, all of the rest but one copy.
        dev:trim(0, 64 * K)
        dev:trim(2 * 2 ^ 20, 8 * K)
        s = dev:stats()
        assert.are.equal(64 * K, s.dedup_unique_bytes)
        assert.are.equal(t, h.read(dev, 2 ^ 20, 64 * K))
        dev:trim(2 ^ 20, 64 * K)
        s = dev:stats()
        assert.are.equal(0, s.dedup_unique_bytes)
        assert.are.equal(0, s.dedup_stored_bytes)          -- every packed block freed
        dev:close()
        clean(dir)
    end)

    it("refills freed gaps of packed blocks only after a flush, and compacts mostly free ones", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "64M", compress = "lz4" })
        local t = text(512 * K, 5)
        h.write(dev, 0, t)
        local full = dev:stats().dedup_block_file_bytes
        -- Overwrite three of every four blocks with new text: their
        -- fragments are freed, packed blocks left mostly free.
        local t2 = text(512 * K, 6)
        for i = 0, 127 do
            if i % 4 ~= 0 then h.write(dev, i * K, t2:sub(i * K + 1, (i + 1) * K)) end
        end
        local grown = dev:stats().dedup_block_file_bytes
        assert.is_true(grown > full)        -- no flush yet: freed gaps not reused
        dev:flush()
        -- After the flush, new text (about a third of what was freed)
        -- goes into freed blocks and the gaps of half-free packed ones.
        local t3 = text(64 * K, 7)
        h.write(dev, 16 * 2 ^ 20, t3)
        local s = dev:stats()
        assert.are.equal(grown, s.dedup_block_file_bytes,
            ("the file grew from %d to %d for data that fits in freed space"):format(grown, s.dedup_block_file_bytes))
        -- Everything still reads back.
        for i = 0, 127 do
            local want = i % 4 ~= 0 and t2:sub(i * K + 1, (i + 1) * K) or t:sub(i * K + 1, (i + 1) * K)
            assert.are.equal(want, h.read(dev, i * K, K), "block " .. i)
        end
        assert.are.equal(t3, h.read(dev, 16 * 2 ^ 20, 64 * K))
        dev:close()
        clean(dir)
    end)

    it("keeps a bounded number of idle P records' lists; a rewrite reads evicted ones back", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "64M", compress = "lz4" })
        dev.pg_max = 2   -- (records/8: 2048)
        -- 8 MiB of text (about 1000 packed blocks: 16 records) in 256 KiB
        -- writes (a record or two each), then over it again: the frees
        -- need every record back. At most: pg_max idle, those of the blocks open (8),
        -- those of the batch just written.
        local t, u = text(2048 * K, 5), text(2048 * K, 6)
        for _, s in ipairs({ t, u }) do
            for at = 0, #s - 1, 256 * K do
                h.write(dev, at, s:sub(at + 1, at + 256 * K))
                assert.is_true(dev.pg_count <= 2 + 8 + 2, tostring(dev.pg_count))
            end
        end
        assert.are.equal(u, h.read(dev, 0, #u))
        dev:close()
        clean(dir)
    end)

    it("keeps everything across a reopen, and records the codec", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "8M", compress = "zstd:5" })
        local t = text(96 * K, 8) .. rnd(32 * K, 9)
        h.write(dev, 0, t)
        dev:flush()
        dev:close()
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal("zstd:5", dev:stats().dedup_compress)
        assert.are.equal(t, h.read(dev, 0, 128 * K))
        h.write(dev, 200 * K, t)                       -- duplicates after reopen
        assert.are.equal(t, h.read(dev, 200 * K, 128 * K))
        dev:close()
        clean(dir)
        local function fails(args, pat)
            local ok, err = pcall(h.open, SCRIPT, args)
            assert.is_false(ok)
            assert.matches(pat, err)
            assert.is_nil(tostring(err):find("\n"))
        end
        fails({ dir = dir, compress = "lz4" }, "compressed with zstd:5, not compress=lz4")
        fails({ dir = newdir(), size = "1M", compress = "gzip" }, "unknown codec 'gzip'")
        local plain = newdir()
        h.open(SCRIPT, { dir = plain, size = "1M" }):close()
        fails({ dir = plain, compress = "lz4" }, "stores blocks uncompressed")
    end)

    it("the store check with --verify-data decompresses and rehashes every content", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "8M", compress = "lz4" })
        h.write(dev, 0, text(8 * K, 11) .. rnd(2 * K, 12))   -- 8 fragments, 2 raw blocks
        dev:close()
        local r = dofile("tools/dedup-fsck.lua").check(dir, { verify_data = true })
        local out = table.concat(r.lines, "\n")
        assert.are.equal(0, r.problems + r.leaks, out)
        assert.matches("verified the bytes of 10 contents: 0 bad", out, 1, true)
        -- A byte changed in the fragment of id 2 and in the raw block of id 10.
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local rec = db:get(F.Rkey(0), F.record_bytes(true))
        db:close()
        local slots = ffi.cast(F.slot_ptr[true], ffi.cast("const char *", rec))
        assert.is_true(slots[2].size > 0)
        assert.are.equal(0, slots[10].size)
        local f = io.open(dir .. "/blocks", "r+b")
        for _, at in ipairs({ (tonumber(slots[2].pbn) - 1) * K + slots[2].off + math.floor(slots[2].size / 2),
                tonumber(slots[10].pbn - 1) * K + 1000 }) do
            f:seek("set", at)
            local c = f:read(1)
            f:seek("set", at)
            f:write(string.char((c:byte() + 1) % 256))
        end
        f:close()
        r = dofile("tools/dedup-fsck.lua").check(dir, { verify_data = true })
        out = table.concat(r.lines, "\n")
        assert.are.equal(2, r.problems, out)
        assert.matches("damage: id 2: its stored bytes do not hash", out, 1, true)
        assert.matches("damage: id 10: its stored bytes do not hash", out, 1, true)
        assert.matches("verified the bytes of 10 contents: 2 bad", out, 1, true)
    end)

    it("the store check finds a leaked fragment and repairs it", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "8M", compress = "lz4" })
        local t = text(16 * K, 10)
        h.write(dev, 0, t)
        dev:flush()
        dev:close()
        clean(dir)
        -- Block 3 no longer mapped, its content's record unchanged (as a
        -- lost batch would leave it, reversed): the extent of blocks
        -- 0..15 becomes 0..2 and 4..15.
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local v = db:get(F.Lkey(15), 16)
        local e = ffi.cast(F.extent_ptr, ffi.cast("const char *", v))
        local id = tonumber(e.id)
        assert.are.equal(16, tonumber(e.count))
        local b = usbd.kv.batch()
        b:delete(F.Lkey(15))
        b:put(F.Lkey(2), F.le64s(id, 3))
        b:put(F.Lkey(15), F.le64s(id + 4, 12))
        db:write(b, true)
        db:close()
        local r = fsck(dir)
        local out = table.concat(r.lines, "\n")
        assert.are.equal(1, r.leaks, out)
        assert.matches("leak: id " .. (id + 3) .. " holds 1 references but nothing maps it", out, 1, true)
        assert.are.equal(1, r.problems, out)    -- the mapped counter disagrees too
        assert.matches("the counter mapped says 16; the store holds 15", out, 1, true)
        r = fsck(dir, true)
        assert.are.equal(0, r.unfixed, table.concat(r.lines, "\n"))
        r = clean(dir)
        assert.matches("15 logical blocks mapped, 15 unique", r.lines[#r.lines], 1, true)
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(15 * K, dev:stats().dedup_logical_bytes)
        assert.are.equal(15 * K, dev:stats().dedup_unique_bytes)
        assert.are.equal(t:sub(1, 3 * K) .. string.rep("\0", K) .. t:sub(4 * K + 1), h.read(dev, 0, 16 * K))
        h.write(dev, 3 * K, t:sub(3 * K + 1, 4 * K))   -- stored again, in freed room
        assert.are.equal(t, h.read(dev, 0, 16 * K))
        dev:close()
        clean(dir)
    end)
end)

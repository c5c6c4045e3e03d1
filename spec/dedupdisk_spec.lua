local ffi = require "ffi"
local h = require "device_helper"
local usbd = require "usbd"

local root = "build/spec-dedup." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
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

local function fsck(dir, repair)
    local tool = dofile("tools/dedup-fsck.lua")
    return tool.check(dir, { repair = repair })
end

-- The store check as a command: its exit status and output.
local function fsck_cli(dir, ...)
    local out = dir .. ".fsck"
    os.execute(("luajit tools/dedup-fsck.lua %s %s >%s 2>&1; echo $? >>%s.rc"):format(
        dir, table.concat({ ... }, " "), out, out))
    local f = io.open(out .. ".rc"); local rc = tonumber(f:read("*l")); f:close()
    os.remove(out .. ".rc")
    f = io.open(out); local text = f:read("*a"); f:close()
    return rc, text
end

describe("devices/dedupdisk.lua", function()
    teardown(function() os.execute("rm -rf " .. root) end)

    it("reads zeroes from a new store, stores nothing for them", function()
        local dev = h.open(SCRIPT, { dir = newdir(), size = "16M" })
        assert.are.equal(16 * 2 ^ 20, dev:size())
        assert.are.equal(4096, dev:block_size())
        assert.are.equal(string.rep("\0", 10000), h.read(dev, 777, 10000))
        h.write(dev, 0, string.rep("\0", 64 * K))
        local s = dev:stats()
        assert.are.equal(0, s.dedup_logical_bytes)
        assert.are.equal(0, s.dedup_unique_bytes)
        assert.are.equal(4096, s.dedup_zero_blocks)
        dev:close()
    end)

    it("stores identical blocks once, and counts references", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        local a = rnd(64 * K, 1)
        h.write(dev, 0, a)
        h.write(dev, 1024 * K, a)
        h.write(dev, 2048 * K, a:sub(1, 8 * K) .. a:sub(1, 8 * K))
        assert.are.equal(a, h.read(dev, 1024 * K, 64 * K))
        local s = dev:stats()
        assert.are.equal((64 + 64 + 16) * K, s.dedup_logical_bytes)
        assert.are.equal(64 * K, s.dedup_unique_bytes)
        assert.are.equal(2.25, s.dedup_ratio)
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
    end)

    it("overwrites, frees, and reuses freed blocks only after a flush", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        h.write(dev, 0, rnd(32 * K, 2))
        h.write(dev, 0, rnd(32 * K, 3))       -- the first 32 blocks are freed
        local s = dev:stats()
        assert.are.equal(32, s.dedup_free_blocks)
        h.write(dev, 64 * K, rnd(8 * K, 4))   -- no flush yet: the file grows
        assert.are.equal(72 * K, dev:stats().dedup_block_file_bytes)
        dev:flush()
        h.write(dev, 128 * K, rnd(8 * K, 5))  -- now reused
        s = dev:stats()
        assert.are.equal(72 * K, s.dedup_block_file_bytes)
        assert.are.equal(24, s.dedup_free_blocks)
        assert.are.equal(rnd(32 * K, 3), h.read(dev, 0, 32 * K))
        assert.are.equal(rnd(8 * K, 5), h.read(dev, 128 * K, 8 * K))
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
    end)

    it("sorts freed ids as table.sort does (its own merge sort, which the JIT compiles)", function()
        local F = dofile(SCRIPT).format
        math.randomseed(7)
        for _, count in ipairs({ 1, 2, 3, 7, 64, 255, 256, 1000 }) do
            local list, want = {}, {}
            for i = 1, count do list[i] = math.random(1, 300); want[i] = list[i] end
            table.sort(want)
            F.sort_numbers(list, count)
            assert.are.same(want, list)
        end
    end)

    it("reuses scattered freed ids only once durable, each once", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        local want = {}
        local function put(block, seed)
            want[block] = rnd(K, seed)
            h.write(dev, block * K, want[block])
        end
        for b = 0, 255 do put(b, b) end        -- ids 1..256
        for b = 255, 1, -2 do put(b, 1000 + b) end  -- scattered, out of order: 128 ids freed
        local s = dev:stats()
        assert.are.equal(128, s.dedup_free_blocks)
        assert.are.equal((256 + 128) * K, s.dedup_block_file_bytes)  -- none reused yet
        dev:close()
        -- Reopened, the free ids are found in the records (a refill), where
        -- 32 more freed since are not yet durable: those are passed over.
        dev = h.open(SCRIPT, { dir = dir })
        for b = 0, 62, 2 do
            dev:trim(b * K, K)
            want[b] = string.rep("\0", K)
        end
        for b = 512, 671 do put(b, b) end      -- 128 reused, then 32 new
        s = dev:stats()
        assert.are.equal(32, s.dedup_free_blocks)
        assert.are.equal((256 + 128 + 32) * K, s.dedup_block_file_bytes)
        for b, bytes in pairs(want) do assert.are.equal(bytes, h.read(dev, b * K, K)) end
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
    end)

    it("read-modify-writes unaligned writes, trims and zeroes", function()
        local dev = h.open(SCRIPT, { dir = newdir(), size = "1M" })
        local model = string.rep("\0", 2 ^ 20)
        local function put(pos, s)
            model = model:sub(1, pos) .. s .. model:sub(pos + #s + 1)
            h.write(dev, pos, s)
        end
        put(100, rnd(5000, 6))
        put(4095, "xy")
        put(3 * K, rnd(3 * K + 17, 7))
        put(2 ^ 20 - 3, "end")
        assert.are.equal(model, h.read(dev, 0, 2 ^ 20))
        dev:trim(10, 3 * K)
        model = model:sub(1, 10) .. string.rep("\0", 3 * K) .. model:sub(10 + 3 * K + 1)
        dev:write_zeroes(5 * K + 1, 2)
        model = model:sub(1, 5 * K + 1) .. "\0\0" .. model:sub(5 * K + 4)
        assert.are.equal(model, h.read(dev, 0, 2 ^ 20))
        assert.are.equal(model:sub(4000, 9000), h.read(dev, 3999, 5001))
        dev:close()
    end)

    it("trims a large range in one batch, with references right", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "64M" })
        local a = rnd(256 * K, 8)
        for i = 0, 15 do h.write(dev, i * 3 * 2 ^ 20, a) end   -- 16 copies
        h.write(dev, 60 * 2 ^ 20, rnd(64 * K, 9))
        assert.are.equal(320 * K, dev:stats().dedup_unique_bytes)
        local t = os.clock()
        dev:trim(0, 36 * 2 ^ 20)
        assert.is_true(os.clock() - t < 2)
        local s = dev:stats()
        assert.are.equal(320 * K, s.dedup_unique_bytes)  -- 4 copies still use a
        dev:trim(36 * 2 ^ 20, 12 * 2 ^ 20)
        s = dev:stats()
        assert.are.equal(64 * K, s.dedup_unique_bytes)
        assert.are.equal(256, s.dedup_free_blocks)
        assert.are.equal(string.rep("\0", 4096), h.read(dev, 50 * 2 ^ 20, 4096))
        assert.are.equal(rnd(64 * K, 9), h.read(dev, 60 * 2 ^ 20, 64 * K))
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
    end)

    it("reports mapped blocks as data, the rest as holes of zeroes", function()
        local dev = h.open(SCRIPT, { dir = newdir(), size = "1M" })
        h.write(dev, 8 * K, rnd(2 * K, 10))
        local e = dev:extents(0, 2 ^ 20)
        local HZ = usbd.HOLE + usbd.ZERO
        assert.are.same({ 8 * K, HZ, 2 * K, 0, 2 ^ 20 - 10 * K, HZ }, e)
        assert.are.same({ 100, 0, 4 * K, HZ }, dev:extents(10 * K - 100, 4 * K + 100))
        dev:close()
    end)

    it("keeps everything across a reopen; verify=true shares only equal bytes", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M", verify = "true" })
        h.write(dev, 0, rnd(16 * K, 11))
        h.write(dev, 16 * K, rnd(16 * K, 11))
        assert.are.equal(16 * K, dev:stats().dedup_unique_bytes)
        dev:flush()
        dev:close()
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(4 * 2 ^ 20, dev:size())
        assert.are.equal(rnd(16 * K, 11) .. rnd(16 * K, 11), h.read(dev, 0, 32 * K))
        assert.are.equal(32 * K, dev:stats().dedup_logical_bytes)
        dev:close()
    end)

    it("keeps references right with a tiny index cache (entries pushed out all the time)", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "8M", records = "2" })
        local a, c = rnd(32 * K, 12), rnd(32 * K, 13)
        for _ = 1, 3 do
            h.write(dev, 0, a)
            h.write(dev, 64 * K, a)
            h.write(dev, 128 * K, c)
            h.write(dev, 64 * K, c)
            dev:trim(0, 16 * K)
            dev:flush()
        end
        assert.are.equal(string.rep("\0", 16 * K) .. a:sub(16 * K + 1), h.read(dev, 0, 32 * K))
        assert.are.equal(c, h.read(dev, 64 * K, 32 * K))
        assert.are.equal(c, h.read(dev, 128 * K, 32 * K))
        assert.are.equal((16 + 32) * K, dev:stats().dedup_unique_bytes)
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("says once when the hash index fills, and keeps working", function()
        local dir = newdir()
        local logged = {}
        local log = usbd.log
        usbd.log = function(_, fmt, ...) logged[#logged + 1] = fmt:format(...) end
        local ok, err = pcall(function()
            local dev = h.open(SCRIPT, { dir = dir, size = "8M", index = "4K" })   -- 512 entries
            local data = rnd(600 * K, 14)
            for i = 0, 599, 40 do h.write(dev, i * K, data:sub(i * K + 1, (i + 40) * K)) end
            local s = dev:stats()
            assert.are.equal(512, s.dedup_index_entries)
            assert.is_true(s.dedup_index_used > 384 and s.dedup_index_used <= 512, s.dedup_index_used)
            assert.is_true(s.dedup_index_evictions > 0)
            assert.are.equal(1, #logged, table.concat(logged, "\n"))
            assert.matches("the hash index %(512 entries%) holds 384 contents, 75%% of its entries", logged[1])
            assert.matches("index=1M or more", logged[1])
            assert.are.equal(data, h.read(dev, 0, 600 * K))
            assert.are.equal(600 * K, s.dedup_unique_bytes)
            dev:flush()
            dev:close()
            -- Reopened larger: the index is rebuilt and holds every content.
            dev = h.open(SCRIPT, { dir = dir, index = "1M" })
            s = dev:stats()
            assert.are.equal(600, s.dedup_index_used)
            assert.are.equal(0, s.dedup_index_evictions)
            h.write(dev, 1024 * K, data:sub(1, 40 * K))
            assert.are.equal(600 * K, dev:stats().dedup_unique_bytes)
            dev:close()
        end)
        usbd.log = log
        assert(ok, err)
        assert.are.equal(1, #logged, table.concat(logged, "\n"))
        local r = fsck(dir)
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("keeps the record cache bounded; the records used last stay", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "64M", records = "8" })
        -- 64 blocks (one record's worth of contents), each its own.
        local function group(i)
            local t = {}
            for j = 1, 64 do
                local head = ("group %d block %d;"):format(i, j)
                t[j] = head .. string.rep("x", K - #head)
            end
            return table.concat(t)
        end
        local first = group(0):sub(1, K)
        h.write(dev, 0, first)                  -- content id 1: record 0
        for i = 1, 24 do                        -- 24 more records' worth of new contents
            h.write(dev, i * 256 * K, group(i))
            h.write(dev, 63 * 2 ^ 20, first)    -- a duplicate of id 1: record 0 is used again
            assert.is_true(dev.rc_count <= 8 + 8, "records cached: " .. dev.rc_count)
        end
        assert.is_truthy(dev.rc[0], "the record used all along was evicted")
        assert.is_nil(dev.rc[1], "a record unused since early on is still cached")
        for i = 1, 24, 7 do
            assert.is_true(group(i) == h.read(dev, i * 256 * K, 64 * K), "group " .. i .. " reads back wrong")
        end
        dev:close()
        local r = fsck(dir)
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("the store check finds a record with fewer references than mappings, and repairs it", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M" })
        local a = rnd(4 * K, 14)
        h.write(dev, 0, a)
        h.write(dev, 64 * K, a)               -- ids 1..4, two references each
        dev:close()
        local rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
        -- id 2 counts one reference: the next trim of both copies would
        -- free it while a block still maps it.
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local rec = ffi.new("uint8_t[?]", F.record_bytes(false))
        local v = db:get(F.Rkey(0), F.record_bytes(false))
        ffi.copy(rec, v, #v)
        local slots = ffi.cast(F.slot_ptr[false], rec)
        assert.are.equal(2, slots[2].refs)
        slots[2].refs = 1
        local b = usbd.kv.batch()
        b:put(F.Rkey(0), ffi.string(rec, #v))
        db:write(b, true)
        db:close()
        rc, out = fsck_cli(dir)
        assert.are.equal(1, rc, out)
        assert.matches("damage: id 2 holds 1 references; the map gives it 2", out, 1, true)
        assert.matches(": 8 logical blocks mapped, 4 unique, 0 free, 4 used in the file; 0 leaked, 1 damaged\n$", out)
        rc, out = fsck_cli(dir, "--repair")
        assert.are.equal(0, rc, out)
        assert.matches("repaired: 0 leaked are free again; 1 of 1 damaged fixed", out, 1, true)
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
        -- The repaired count holds: both copies trimmed, every id freed once.
        dev = h.open(SCRIPT, { dir = dir })
        dev:trim(0, 4 * K)
        assert.are.equal(a, h.read(dev, 64 * K, 4 * K))
        dev:trim(64 * K, 4 * K)
        assert.are.equal(4, dev:stats().dedup_free_blocks)
        dev:close()
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
        assert.matches(": 0 logical blocks mapped, 0 unique, 4 free, 4 used in the file; 0 leaked, 0 damaged\n$", out)
    end)

    it("the store check finds leaked ids (references nothing maps), and repair frees them for reuse", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M" })
        h.write(dev, 0, rnd(8 * K, 15))
        dev:close()
        -- Blocks 2..5 unmapped behind the records' back: ids 3..6 keep a
        -- reference nothing gives them (what a lost batch could leave).
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local e = db:get(F.Lkey(7), 16)
        assert.is_truthy(e)
        local b = usbd.kv.batch()
        b:delete(F.Lkey(7))
        b:put(F.Lkey(1), F.le64s(1, 2))
        b:put(F.Lkey(7), F.le64s(7, 2))
        local c = F.Cdecode(db:get("C"))
        c.mapped = 4
        F.put_C(b, c)
        db:write(b, true)
        db:close()
        local rc, out = fsck_cli(dir)
        assert.are.equal(1, rc, out)
        assert.matches("leak: id 3 holds 1 references but nothing maps it", out, 1, true)
        assert.matches(": 4 logical blocks mapped, 8 unique, 0 free, 8 used in the file; 4 leaked, 0 damaged\n$", out)
        rc, out = fsck_cli(dir, "--repair")
        assert.are.equal(0, rc, out)
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
        assert.matches(": 4 logical blocks mapped, 4 unique, 4 free, 8 used in the file; 0 leaked, 0 damaged\n$", out)
        -- The device reuses them: the file does not grow.
        dev = h.open(SCRIPT, { dir = dir })
        h.write(dev, 512 * K, rnd(4 * K, 16))
        assert.are.equal(8 * K, dev:stats().dedup_block_file_bytes)
        assert.are.equal(rnd(4 * K, 16), h.read(dev, 512 * K, 4 * K))
        dev:close()
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
    end)

    it("upgrades a format 2 store when it opens it (its free runs dropped; the records say what is free)", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M" })
        local data = rnd(16 * K, 18)
        h.write(dev, 0, data)
        dev:trim(4 * K, 4 * K)                 -- ids 5..8 free
        dev:close()
        -- As format 2 left it: its version, and a free run (F) of those ids.
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local meta = db:get("M", 256)
        local b = usbd.kv.batch()
        b:put("M", (meta:gsub("^usbd%-dedupdisk 3 ", "usbd-dedupdisk 2 ")))
        b:put("F" .. F.be64(5), F.le64s(4))
        db:write(b, true)
        db:close()
        local rc, out = fsck_cli(dir)
        assert.are.equal(2, rc, out)
        assert.matches("format 2: open it once with devices/dedupdisk.lua", out, 1, true)
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(data:sub(1, 4 * K) .. string.rep("\0", 4 * K) .. data:sub(8 * K + 1), h.read(dev, 0, 16 * K))
        assert.are.equal(4, dev:stats().dedup_free_blocks)
        h.write(dev, 512 * K, rnd(4 * K, 19))   -- into a freed id: the file does not grow
        assert.are.equal(16 * K, dev:stats().dedup_block_file_bytes)
        dev:close()
        db = usbd.kv.open(dir, {})
        assert.matches("^usbd%-dedupdisk 3 ", db:get("M", 256))
        assert.are.equal(0, #db:scan("F", "G", 10, 9, 8))
        db:close()
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
    end)

    it("the store check calls a free run (F, format 2) left in a format 3 store damage; repair drops it", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M" })
        h.write(dev, 0, rnd(8 * K, 20))
        dev:close()
        local F = dofile(SCRIPT).format
        local db = usbd.kv.open(dir, {})
        local b = usbd.kv.batch()
        b:put("F" .. F.be64(3), F.le64s(2))
        db:write(b, true)
        db:close()
        local rc, out = fsck_cli(dir)
        assert.are.equal(1, rc, out)
        assert.matches("damage: 1 free-run keys (F) of format 2 in a format 3 store", out, 1, true)
        rc, out = fsck_cli(dir, "--repair")
        assert.are.equal(0, rc, out)
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)
    end)

    it("the store check with --verify-data rehashes every content; a changed byte is damage", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "4M" })
        h.write(dev, 0, rnd(4 * K, 17))
        h.write(dev, 64 * K, rnd(4 * K, 17))
        dev:close()
        local rc, out = fsck_cli(dir, "--verify-data")
        assert.are.equal(0, rc, out)
        assert.matches("verified the bytes of 4 contents: 0 bad", out, 1, true)
        local f = io.open(dir .. "/blocks", "r+b")
        f:seek("set", 2 * K + 100)
        local c = f:read(1)
        f:seek("set", 2 * K + 100)
        f:write(string.char((c:byte() + 1) % 256))
        f:close()
        rc, out = fsck_cli(dir)
        assert.are.equal(0, rc, out)                -- the metadata alone is sound
        rc, out = fsck_cli(dir, "--verify-data")
        assert.are.equal(1, rc, out)
        assert.matches("damage: id 3: its stored bytes do not hash to its record's hash", out, 1, true)
        assert.matches("verified the bytes of 4 contents: 1 bad", out, 1, true)
    end)

    it("refuses another block size, a foreign directory, a missing size, in one line", function()
        local dir = newdir()
        h.open(SCRIPT, { dir = dir, size = "1M" }):close()
        local function fails(args, pat)
            local ok, err = pcall(h.open, SCRIPT, args)
            assert.is_false(ok)
            assert.matches(pat, err)
            assert.is_nil(tostring(err):find("\n"))
        end
        fails({ dir = dir, block = "8K" }, "stores 4096%-byte blocks")
        fails({ dir = dir, size = "2M" }, "holds a 1048576%-byte disk")
        fails({ dir = newdir() }, "holds no dedupdisk store")
        fails({ dir = "spec" , size = "1M" }, "is not a dedupdisk store")
        fails({}, "needs dir=")
        local other = newdir()
        local db = usbd.kv.open(other, { create = true })
        local b = usbd.kv.batch(); b:put("x", "y"); db:write(b, true); db:close()
        fails({ dir = other }, "not a dedupdisk store")
        local f = io.open(dir .. "/CURRENT", "w"); f:write("garbage\n"); f:close()
        fails({ dir = dir }, "cannot open the store")
    end)
end)

-- The dedupdisk after a crash: its journal of contents written since the
-- last flush (usbd.dedup.journal), what opening the store does with
-- contents that lost their bytes, and fail-stop on a failed decision.
local h = require "device_helper"
local usbd = require "usbd"
local journal = require "usbd.dedup.journal"
local rnd = require("dedup_helper").rnd

local root, newdir = h.scratch("journal")
local SCRIPT = "devices/dedupdisk.lua"
local K = 4096

-- A crash: the device lets go of everything without flushing or closing
-- cleanly (what kill -9 leaves: the file's pages and the WAL records).
local function crash(dev)
    if dev.map then dev.map:close() end
    dev.file:close()
    dev.db:close()
    dev.index:close()
end

-- The ids the store's journal lists, opened apart.
local function listed(dir)
    local db = usbd.kv.open(dir, {})
    local ids, lists = journal.ids(db)
    db:close()
    return ids, lists
end

-- Zero bytes [pos, pos + len) of a file: pages a power cut lost.
local function lose(path, pos, len)
    local f = assert(io.open(path, "r+b"))
    f:seek("set", pos)
    f:write(string.rep("\0", len))
    f:close()
end

local function fsck(dir, opts)
    return dofile("tools/dedup-fsck.lua").check(dir, opts or {})
end

describe("the dedupdisk after a crash", function()
    teardown(function() os.execute("rm -rf " .. root) end)

    it("lists the contents a write adds until a flush, and none after a clean close", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        h.write(dev, 0, rnd(4 * K, 1))
        h.write(dev, 64 * K, rnd(K, 1))          -- a duplicate adds nothing
        crash(dev)
        local ids, lists = listed(dir)
        assert.are.equal("1 2 3 4", table.concat(ids, " "))
        assert.are.equal(1, lists)
        dev = h.open(SCRIPT, { dir = dir })      -- checks them: all there
        h.write(dev, 128 * K, rnd(8 * K, 2))
        dev:flush()
        h.write(dev, 256 * K, rnd(4 * K, 3))
        dev:close()
        ids, lists = listed(dir)
        assert.are.same({}, ids)
        assert.are.equal(0, lists)
    end)

    it("keeps the lists of batches written while a flush syncs the file", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        h.write(dev, 0, rnd(2 * K, 5))                 -- ids 1, 2: covered by the flush
        local sync = dev.file.sync
        dev.file.sync = function(file)
            dev.file.sync = sync
            h.write(dev, 64 * K, rnd(K, 6))            -- id 3: written after the sync began
            return sync(file)
        end
        dev:flush()
        crash(dev)
        local ids = listed(dir)
        assert.are.equal("3", table.concat(ids, " "))
    end)

    it("gives up, after a crash, the contents whose bytes never reached the disk", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        local kept, lost = rnd(4 * K, 11), rnd(4 * K, 12)
        h.write(dev, 0, kept)                    -- ids 1..4
        dev:flush()
        h.write(dev, 64 * K, lost)               -- ids 5..8, not flushed
        h.write(dev, 32 * K, lost:sub(1, K))     -- shares id 5
        crash(dev)
        lose(dir .. "/blocks", 4 * K, K)          -- id 5's page never written
        local r = fsck(dir)
        assert.are.equal(1, r.problems, table.concat(r.lines, "\n"))
        assert.matches("content 5, written since the last flush, lost its bytes", table.concat(r.lines, "\n"), 1, true)

        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(kept, h.read(dev, 0, 4 * K))
        -- The blocks that named it read as zeroes (written after the flush);
        -- the others are intact.
        assert.are.equal(string.rep("\0", K), h.read(dev, 64 * K, K))
        assert.are.equal(string.rep("\0", K), h.read(dev, 32 * K, K))
        assert.are.equal(lost:sub(K + 1), h.read(dev, 65 * K, 3 * K))
        -- A later write of the same bytes stores them again.
        h.write(dev, 1024 * K, lost)
        dev:flush()
        assert.are.equal(lost, h.read(dev, 1024 * K, 4 * K))
        dev:close()
        r = fsck(dir, { verify_data = true })
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("opens a store whose block file lost its growth", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        local kept = rnd(8 * K, 21)
        h.write(dev, 0, kept)
        dev:flush()
        h.write(dev, 64 * K, rnd(32 * K, 22))
        crash(dev)
        os.execute(("truncate -s %d %s/blocks"):format(8 * K, dir))
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(kept, h.read(dev, 0, 8 * K))
        assert.are.equal(string.rep("\0", 32 * K), h.read(dev, 64 * K, 32 * K))
        h.write(dev, 64 * K, rnd(32 * K, 22))
        dev:close()
        local r = fsck(dir, { verify_data = true })
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("gives up a lost fragment of a compressed store", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M", compress = "lz4" })
        -- Blocks that compress to about a third: three to a packed block.
        local function block(i) return (rnd(K / 2, 50 + i) .. string.rep("z", K / 2)) end
        h.write(dev, 0, block(0))
        dev:flush()
        local blocks = {}
        for i = 1, 64 do blocks[i] = block(i) end
        h.write(dev, 64 * K, table.concat(blocks))
        crash(dev)
        -- Every packed block after the first lost.
        os.execute(("truncate -s %d %s/blocks"):format(K, dir))
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(block(0), h.read(dev, 0, K))
        local zero = 0
        for i = 1, 64 do
            local got = h.read(dev, (64 + i - 1) * K, K)
            if got == string.rep("\0", K) then zero = zero + 1 else assert.are.equal(blocks[i], got, "block " .. i) end
        end
        assert.is_true(zero >= 60, zero .. " blocks gave up")
        h.write(dev, 1024 * K, table.concat(blocks))
        assert.are.equal(table.concat(blocks), h.read(dev, 1024 * K, 64 * K))
        dev:close()
        local r = fsck(dir, { verify_data = true })
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
    end)

    it("stops writing after a decision fails partway, and the store stays as a crash leaves it", function()
        local dir = newdir()
        local dev = h.open(SCRIPT, { dir = dir, size = "16M" })
        local a = rnd(16 * K, 31)
        h.write(dev, 0, a)
        dev:flush()
        -- The second new content of the next write fails, after the first
        -- changed records and counters in memory.
        local add, calls = dev.add_content, 0
        dev.add_content = function(self, ...)
            calls = calls + 1
            if calls == 2 then error("injected", 0) end
            return add(self, ...)
        end
        assert.has_error(function() h.write(dev, 64 * K, rnd(8 * K, 32)) end)
        dev.add_content = add
        assert.truthy(dev.broken)
        assert.has_error(function() h.write(dev, 128 * K, rnd(4 * K, 33)) end)
        assert.are.equal(a, h.read(dev, 0, 16 * K))   -- reads go on
        crash(dev)
        local r = fsck(dir, { verify_data = true })
        assert.are.equal(0, r.problems + r.leaks, table.concat(r.lines, "\n"))
        dev = h.open(SCRIPT, { dir = dir })
        assert.are.equal(a, h.read(dev, 0, 16 * K))
        h.write(dev, 64 * K, rnd(8 * K, 32))
        dev:close()
    end)

    it("verify=true shares identical blocks of one request (the second matches bytes in flight)", function()
        local dev = h.open(SCRIPT, { dir = newdir(), size = "16M", verify = "true" })
        local a = rnd(4 * K, 41)
        h.write(dev, 0, a .. a)
        assert.falsy(dev.broken)
        assert.are.equal(a .. a, h.read(dev, 0, 8 * K))
        assert.are.equal(4 * K, dev:stats().dedup_unique_bytes)
        dev:close()
    end)
end)

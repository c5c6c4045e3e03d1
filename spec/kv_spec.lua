local usbd = require "usbd"
local ffi = require "ffi"
local jobs = require "usbd.jobs"

local dir = "build/spec-kv." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
os.execute("mkdir -p " .. dir)

describe("usbd.kv (RocksDB)", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("puts, gets, multi-gets, deletes and scans, across a reopen", function()
        local db = usbd.kv.open(dir .. "/a", { create = true, cache = 2 ^ 20 })
        local b = usbd.kv.batch()
        for i = 1, 100 do b:put(("k%03d"):format(i), "v" .. i) end
        b:put("z", "last")
        assert.are.equal(101, b:count())
        db:write(b, true)
        assert.are.equal("v7", db:get("k007"))
        assert.is_nil(db:get("nope"))
        local v = db:multi_get({ "k001", "x", "k100" })
        assert.are.same({ "v1", false, "v100" }, v)
        b = usbd.kv.batch()
        b:delete("k001")
        b:delete_range("k010", "k020")
        db:write(b)
        local keys, values = db:scan("k", "l", 1000)
        assert.are.equal(100 - 1 - 10, #keys)
        assert.are.equal("k002", keys[1])
        assert.are.equal("v2", values[1])
        keys = db:scan("k", nil, 5)
        assert.are.equal(5, #keys)
        db:sync()
        db:close()
        db = usbd.kv.open(dir .. "/a", {})
        assert.are.equal("last", db:get("z"))
        assert.is_nil(db:get("k015"))
        assert.is_true(db:disk_bytes() > 0)
        db:close()
    end)

    -- Enough writes through a 64 KiB memtable that RocksDB flushes and
    -- compacts while operands pile up: reads then apply operands over
    -- values in files, and flushes join operands (the partial merge).
    it("merges byte patches, through flushes, compactions and a reopen", function()
        local path = dir .. "/p"
        local db = usbd.kv.open(path, { create = true, write_buffer = 65536 })
        local want = { r = { string.rep("a", 1000):byte(1, -1) }, n = {} }
        local b, p = usbd.kv.batch(), usbd.kv.patches()
        b:put("r", string.rep("a", 1000))
        db:write(b)
        math.randomseed(7)
        local filler = string.rep("f", 1024)
        for i = 1, 3000 do
            b:clear()
            for _, key in ipairs({ "r", "n" }) do
                p:clear()
                for _ = 1, 3 do
                    local at, len = math.random(0, 1199), math.random(1, 8)
                    local bytes = ""
                    for j = 0, len - 1 do
                        local c = math.random(65, 90)
                        bytes = bytes .. string.char(c)
                        local t = want[key]
                        for k = #t + 1, at + j do t[k] = 0 end   -- grown with zeroes
                        t[at + j + 1] = c
                    end
                    p:add(at, bytes)
                end
                b:merge(key, p)
            end
            b:put(("f%05d"):format(i), filler)
            db:write(b)
        end
        local function check(d)
            local r, n = string.char(unpack(want.r)), string.char(unpack(want.n))
            assert.are.equal(r, d:get("r", 2048))
            assert.are.same({ r, n }, d:multi_get({ "r", "n" }, 2048))
            local keys, values = d:scan("n", "s", 10, 64, 2048)
            assert.are.same({ "n", "r" }, keys)
            assert.are.same({ n, r }, values)
        end
        check(db)
        assert.is_true(tonumber(db:property("rocksdb.num-files-at-level0"))
            + tonumber(db:property("rocksdb.num-files-at-level1")) > 0)
        db:close()
        db = usbd.kv.open(path, {})
        check(db)
        -- A malformed operand (a patch cut short) is refused: RocksDB would
        -- throw a C++ exception at its first read.
        b:clear()
        assert.has_error(function() b:merge("bad", "\1\0\0\0\9\0ab") end,
            "usbd.kv: a merge operand that is not a run of patches (see usbd.kv.patches)")
        b:merge("ok", "\1\0\0\0\2\0ab")
        assert.are.equal(1, b:count())
        db:write(b)
        assert.are.equal("\0ab", db:get("ok"))
        assert.has_error(function() p:add(-1, "x") end,
            "usbd.kv: a patch of 1 bytes at -1 (at most 65535 bytes, ending by 16 MiB)")
        db:close()
    end)

    it("writes several batches in order in one call", function()
        local db = usbd.kv.open(dir .. "/b", { create = true })
        local b1, b2 = usbd.kv.batch(), usbd.kv.batch()
        b1:put("x", "1"); b2:put("x", "2")
        db:write_all({ b1, b2 }, true)
        assert.are.equal("2", db:get("x"))
        db:close()
    end)

    -- write_all joins the batches into one: every kind of record keeps its
    -- place, later ones acting on what earlier ones wrote.
    it("joins puts, deletes, merges and range deletes in their order", function()
        local db = usbd.kv.open(dir .. "/j", { create = true })
        local b1, b2, b3 = usbd.kv.batch(), usbd.kv.batch(), usbd.kv.batch()
        b1:put("a", "1"); b1:put("b", "1"); b1:put("c", "1"); b1:put("m", "hello")
        b2:delete("a"); b2:put("b", "2")
        local p = usbd.kv.patches()
        p:add(0, "J", 1)
        b2:merge("m", p)
        b3:delete_range("b", "c"); b3:put("d", "3")
        db:write_all({ b1, b2, b3 }, false)
        assert.is_nil(db:get("a"))
        assert.is_nil(db:get("b"))
        assert.are.equal("1", db:get("c"))
        assert.are.equal("3", db:get("d"))
        assert.are.equal("Jello", db:get("m"))
        -- The batches are the caller's still, whole: written alone again.
        db:write(b1)
        assert.are.equal("1", db:get("a"))
        assert.are.equal("hello", db:get("m"))
        db:close()
    end)

    -- In one atomic write a record that a later put or delete of its key
    -- overwrites is never seen: it is left out (a commit group's batches
    -- each put the same record and counters). The memtable counts what
    -- went in.
    it("leaves out of a joined write the records that later ones overwrite", function()
        local db = usbd.kv.open(dir .. "/o", { create = true })
        local function entries() return tonumber(db:property("rocksdb.num-entries-active-mem-table")) end
        local before = entries()
        local bs = {}
        for i = 1, 10 do
            local b = usbd.kv.batch()
            b:put("counters", tostring(i))          -- 9 of these overwritten
            b:put("k" .. i, "v")                     -- kept, each its own key
            bs[i] = b
        end
        local p = usbd.kv.patches()
        p:add(0, "W", 1)
        bs[4]:put("m", "hello"); bs[5]:merge("m", p)   -- overwritten by the delete
        bs[6]:delete("m"); bs[7]:put("m", "world"); bs[8]:merge("m", p)  -- put, merge kept
        bs[9]:delete_range("k1", "k3")               -- kept, as what it covers
        db:write_all(bs, false)
        assert.are.equal("10", db:get("counters"))
        assert.are.equal("World", db:get("m"))
        assert.is_nil(db:get("k1")); assert.is_nil(db:get("k2"))
        assert.are.equal("v", db:get("k3"))
        -- counters once, k1..k10, m's put and merge, the range delete
        assert.are.equal(1 + 10 + 2 + 1, entries() - before)
        db:close()
    end)

    it("runs prepared jobs first in the same job; writes no batch when one fails", function()
        local db = usbd.kv.open(dir .. "/d", { create = true })
        local path = dir .. "/d.blocks"
        local file = usbd.file.open(path, { create = true })
        local data = usbd.buffer(8192)
        data:fill(0x5a)
        data:sub(4096, 4096):fill(0x33)
        local offsets = ffi.new("int64_t[2]", 4096, 0)  -- swapped in the file
        local b = usbd.kv.batch()
        b:put("x", "1")
        local job = file:pwrite_blocks_job(data, 4096, offsets)
        db:write_all({ b }, false, { job })
        jobs.put(job)
        assert.are.equal("1", db:get("x"))
        local back = usbd.buffer(8192)
        file:pread(back, 0)
        assert.are.equal(string.rep("3", 4096) .. string.rep("Z", 4096), back:tostring())
        -- /dev/full: the write fails (ENOSPC), and the batch is not written.
        local full = usbd.file.open("/dev/full")
        local b2 = usbd.kv.batch()
        b2:put("y", "2")
        local job2 = full:pwrite_blocks_job(data, 4096, offsets)
        local ok, err = pcall(db.write_all, db, { b2 }, false, { job2 })
        jobs.put(job2)
        assert.is_false(ok)
        assert.are.equal(usbd.E.NOSPC.errno, usbd.errno_of(err))
        assert.is_nil(db:get("y"))
        full:close()
        file:close()
        db:close()
    end)

    it("writes a queue's batches in order, each write taking all added before it", function()
        local db = usbd.kv.open(dir .. "/q", { create = true })
        local q = usbd.kv.queue()
        local b1, b2 = usbd.kv.batch(), usbd.kv.batch()
        b1:put("x", "1")
        b2:put("x", "2")
        b2:put("y", "3")
        q:add(b1)
        q:add(b2)
        assert.are.same({ 2 }, { db:write_queued(q) })
        assert.are.same({ "2", "3" }, { db:get("x"), db:get("y") })
        assert.are.same({ 0 }, { db:write_queued(q) })   -- nothing left
        b1:clear()
        b1:put("z", "4")
        q:add(b1)
        assert.are.same({ 1 }, { db:write_queued(q) })
        assert.are.equal("4", db:get("z"))
        db:close()
    end)

    it("writes none of a queued group when a job of it fails; a lane refuses the writes after it", function()
        local db = usbd.kv.open(dir .. "/qf", { create = true })
        local full = usbd.file.open("/dev/full")
        local data = usbd.buffer(4096)
        local offsets = ffi.new("int64_t[1]", 0)
        local q, lane = usbd.kv.queue(), jobs.lane()
        local b1, b2, b3 = usbd.kv.batch(), usbd.kv.batch(), usbd.kv.batch()
        b1:put("a", "1")
        b2:put("b", "2")
        b3:put("c", "3")
        local job = full:pwrite_blocks_job(data, 4096, offsets)
        q:add(b1)
        q:add(b2, job)
        local taken, err = db:write_queued(q, lane)
        jobs.put(job)
        assert.are.equal(2, taken)
        assert.are.equal(usbd.E.NOSPC, err)
        assert.is_nil(db:get("a"))
        q:add(b3)
        taken, err = db:write_queued(q, lane)   -- refused: takes nothing
        assert.are.equal(0, taken)
        assert.are.equal(usbd.E.NOSPC, err)
        assert.are.equal(1, q:drop())
        assert.are.equal(0, q:drop())
        assert.is_nil(db:get("c"))
        full:close()
        db:close()
    end)

    it("gives a one-line error for a store that is absent, or in use", function()
        local ok, err = pcall(usbd.kv.open, dir .. "/absent", {})
        assert.is_false(ok)
        assert.matches("cannot open the store", err)
        assert.is_nil(err:find("\n"))
        local db = usbd.kv.open(dir .. "/c", { create = true })
        ok, err = pcall(usbd.kv.open, dir .. "/c", {})
        assert.is_false(ok)
        assert.matches("lock", err)
        db:close()
    end)

    it("refuses scans of bad sizes with a one-line error; the jobs refuse missing arrays (EINVAL)", function()
        local db = usbd.kv.open(dir .. "/d", { create = true })
        assert.has_error(function() db:scan(nil) end, "usbd.kv: a scan from nil to nil: keys are strings")
        assert.has_error(function() db:scan("a", 5) end, "usbd.kv: a scan from a to 5: keys are strings")
        assert.has_error(function() db:scan("a", nil, -1) end, "usbd.kv: a scan of -1 keys of up to 64 bytes, values of up to 64")
        assert.has_error(function() db:scan_raw("a", nil, 10, 2 ^ 40, 8) end)
        assert.has_error(function() db:scan("a", nil, 10, 8, 0.5) end)
        assert.has_error(function() db:multi_get({ "a" }, -1) end, "usbd.kv: multi_get with values of up to -1 bytes")
        assert.are.equal(0, (db:scan_raw("a", nil, 0, 0, 0)))
        -- The C jobs themselves, as a caller through the FFI could use them.
        local C = require "usbd.core"
        local s = ffi.new("usbd_kv_scan")
        s.start, s.start_len, s.max, s.key_max, s.value_max = "a", 1, 4, 8, 8
        local job = ffi.new("usbd_job")
        job.run, job.ctx, job.ptr = C.usbd_job_kv_scan, db.handle, ffi.cast("uint8_t *", s)
        C.usbd_job_run(job)
        assert.are.equal(usbd.E.INVAL.errno, job.err)
        local m = ffi.new("usbd_kv_multi")
        m.n, m.value_max = 1, 8
        job.run, job.ptr, job.err = C.usbd_job_kv_multi_get, ffi.cast("uint8_t *", m), 0
        C.usbd_job_run(job)
        assert.are.equal(usbd.E.INVAL.errno, job.err)
        db:close()
    end)

    -- usbd.kv.open(nil) reached strdup(NULL) (a segfault); a nil key with a
    -- length was read from address 0; a property named nil reached RocksDB.
    it("refuses a nil directory, key or property name, and bad options, with a one-line error", function()
        assert.has_error(function() usbd.kv.open(nil, { create = true }) end, "usbd.kv.open wants a directory, not nil")
        assert.has_error(function() usbd.kv.open(dir .. "/e", { create = true, cache = -1 }) end,
            "usbd.kv.open: cache=-1 is not a whole number from 0")
        assert.has_error(function() usbd.kv.open(dir .. "/e", { create = true, bloom_bits = 2.5 }) end,
            "usbd.kv.open: bloom_bits=2.5 is not a whole number from 0")
        local C = require "usbd.core"
        local err = ffi.new("char[64]")
        assert.is_true(C.usbd_kv_open(nil, ffi.new("usbd_kv_options"), err, 64) == nil)
        assert.are.equal("Invalid argument", ffi.string(err))
        local b = usbd.kv.batch()
        assert.has_error(function() b:put(nil, "x", 5) end,
            "usbd.kv: a key is a string, or a pointer with its length (got nil, 5)")
        assert.has_error(function() b:put("k", nil) end,
            "usbd.kv: a value is a string, or a pointer with its length (got nil, nil)")
        assert.has_error(function() b:put("k", ffi.new("uint8_t[4]")) end)
        assert.has_error(function() b:put("k", "v", 2) end)  -- longer than the string
        assert.has_error(function() b:delete(nil) end)
        assert.has_error(function() b:delete_range("a", nil) end)
        assert.are.equal(0, b:count())
        b:put("k", ffi.cast("const uint8_t *", "value"), 1, 3)
        local db = usbd.kv.open(dir .. "/e", { create = true })
        db:write(b)
        assert.are.equal("val", db:get("k"))
        assert.has_error(function() db:property(nil) end, "usbd.kv: a property's name is a string, not nil")
        assert.is_string(db:property("rocksdb.estimate-num-keys"))
        db:close()
    end)

    it("refuses every call once closed, never handing RocksDB a freed store", function()
        local db = usbd.kv.open(dir .. "/closed", { create = true })
        db:close()
        require("device_helper").all_fail({
            get = function() db:get("k") end,
            multi_get = function() db:multi_get({ "k" }) end,
            scan = function() db:scan("a", "z", 10) end,
            write = function() db:write(usbd.kv.batch()) end,
            write_queued = function() db:write_queued(usbd.kv.queue()) end,
            sync = function() db:sync() end,
            disk_bytes = function() db:disk_bytes() end,
            property = function() db:property("rocksdb.estimate-num-keys") end,
        }, "kv_spec%.lua:%d+: usbd%.kv%(.-%) is closed$")
    end)

    it("hashes each block of a buffer in one call", function()
        local b = usbd.buffer(3 * 4096)
        b:sub(4096, 4096):fill(7)
        local h = b:block_hashes(4096)
        assert.are.equal(3, #h)
        assert.are.equal(h[1], h[3])
        assert.are_not.equal(h[1], h[2])
        assert.are.equal(b:sub(4096, 4096):hash128(), h[2])
    end)
end)

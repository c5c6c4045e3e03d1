-- usbd.dedup.store: one class from the parts' methods; a store opened,
-- closed cleanly and opened again; what it opened let go when opening
-- fails; contents given up after a crash; per-request buffers recycled.
local store = require "usbd.dedup.store"
local journal = require "usbd.dedup.journal"
local d = require "dedup_helper"

local dir, scratch = require("device_helper").scratch("store")
local K = d.K
local Z = string.rep("\0", K)

describe("usbd.dedup.store", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("makes a class of every part's methods, and refuses a name two parts define", function()
        local a, b = store.class(), store.class()
        assert.are_not.equal(a, b)             -- a device adds its own to its class
        assert.are.equal(a, a.__index)
        for _, name in ipairs({ "lock", "meta_enter", "slot", "unref", "map_read", "map_write", "place",
            "enqueue", "commit", "checkpoint", "load", "store", "unmap", "recover", "close_store" }) do
            assert.are.equal("function", type(a[name]), name)
            assert.are.equal(a[name], b[name])
        end
        local records = require("usbd.dedup.records").methods
        records.lock = function() end
        local ok, err = pcall(store.class)
        records.lock = nil
        assert.is_false(ok)
        assert.matches("two parts define lock", err)
    end)

    it("opens a new store, and opens it again with what it holds", function()
        local path = scratch()
        local s = d.open(path)
        assert.are.same({ 4096, 16 * 2 ^ 20, 4096 }, { s.block, s.bytes, s.blocks })
        local a = d.rnd(4 * K, 1)
        d.store(s, 8, a)
        s:close_store()
        s = d.open(path, { size = false })   -- (none: the store says)
        assert.are.equal(a, d.load(s, 8, 4))
        assert.are.same({ 4, 4 }, { s.counters.mapped, s.counters.unique })
        s:close_store()
    end)

    it("lets RocksDB go when the block file cannot be opened", function()
        local path = scratch()
        d.open(path):close_store()
        os.remove(path .. "/blocks")
        assert(os.execute("mkdir " .. path .. "/blocks"))    -- not a file
        assert.has_error(function() d.open(path) end)
        os.execute("rmdir " .. path .. "/blocks")
        local s = d.open(path)                            -- not "a server is using this store"
        s:close_store()
    end)

    it("gives up contents: the blocks naming them read as zeroes, and they are freed", function()
        local s = d.open(scratch())
        local a, b = d.rnd(K, 2), d.rnd(K, 3)
        d.store(s, 0, a .. b .. d.rnd(2 * K, 4))
        d.store(s, 10, b)
        local id = d.id_of(s, 1)
        local lost, given = s:give_up({ [id] = true })
        assert.are.same({ 2, 1 }, { lost, given })
        assert.are.equal(a .. Z, d.load(s, 0, 2))
        assert.are.equal(Z, d.load(s, 10, 1))
        assert.are.equal(3, s.counters.unique)
        assert.are.equal(0, s:slot(id).refs)
        s:close_store()
    end)

    it("checks at open the contents a crash left unsynced, and checkpoints", function()
        local path = scratch()
        local s = d.open(path)
        d.store(s, 0, d.rnd(4 * K, 5))
        s:shut()                                          -- a crash: no checkpoint
        s = d.open(path)
        assert.are.equal(0, #journal.ids(s.db))
        assert.are.equal(d.rnd(4 * K, 5), d.load(s, 0, 4))
        s:close_store()
    end)

    it("recycles per-request buffers", function()
        local s = d.open(scratch())
        local sb = s:scratch(2)
        assert.are.equal(2 * K, sb.len)
        s:unscratch(sb, 2)
        assert.are.equal(sb, s:scratch(2))
        local w = s:work(10)
        assert.are.equal(256, w.cap)
        s:unwork(w)
        assert.are.equal(w, s:work(100))
        assert.are.equal(300, s:work(300).cap)
        s:close_store()
    end)
end)

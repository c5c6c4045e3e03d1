-- usbd.dedup.store: the dedupdisk's store, one object made of parts.
--
--   local store = require "usbd.dedup.store"
--   local Class = store.class()          -- every part's methods; add yours
--   local st = store.open(dir, opts, Class)
--
-- Each part (a module of lua/usbd/dedup/) gives the object methods and
-- keeps fields of its own (its init_ method makes them); a part calls
-- another's through the object, and none requires this file:
--   locks    range locks on logical blocks, the metadata mutex, waiting
--   records  the record cache, references, the index's removals
--   map      extents, the map cache
--   packing  packed fragments and their P groups (compress=)
--   commit   batches, the commit queue, checkpoints: where durability is
--            decided
--   read     reading whole blocks: lent, read, decompressed
--   write    storing whole blocks (decide), unmapping them
-- beside alloc (the allocator of ids and physical blocks, an object of its
-- own), format (the store's format, shared with tools/dedup-fsck.lua),
-- journal (the contents not yet synced), packer and hashindex. This file
-- opens the store, recovers it after a crash, recycles the per-request
-- buffers, and closes it.
local ffi = require "ffi"
local usbd = require "usbd"
local F = require "usbd.dedup.format"
local journal = require "usbd.dedup.journal"
local hashindex = require "usbd.dedup.hashindex"
local alloc = require "usbd.dedup.alloc"
local parts = {
    require "usbd.dedup.locks",
    require "usbd.dedup.records",
    require "usbd.dedup.map",
    require "usbd.dedup.packing",
    require "usbd.dedup.commit",
    require "usbd.dedup.read",
    require "usbd.dedup.write",
}

local GROUP, un64_at, extent_ptr, sort_numbers = F.GROUP, F.un64_at, F.extent_ptr, F.sort_numbers

local M = {}
local Dedup = {}   -- this file's methods

-- A class for the store's objects: every part's methods and this file's,
-- each name given once, in one table (a method is one lookup away, in the
-- hot loops too).
function M.class()
    local class = {}
    class.__index = class
    local function take(methods)
        for name, fn in pairs(methods) do
            if class[name] then error("usbd.dedup.store: two parts define " .. name, 2) end
            class[name] = fn
        end
    end
    for _, part in ipairs(parts) do take(part.methods) end
    take(Dedup)
    return class
end

-- ---- Opening ----------------------------------------------------------------

-- Open the store in dir, creating it when absent (usbd.dedup.format's
-- open_store: opts.size, block, block_given, compress, cache, memtable),
-- with opts.index (the hash index's bytes), records, map_cache and verify;
-- recover what a crash left. Returns the object, of class (default: the
-- store's own). A store that cannot be opened is a one-line error.
function M.open(dir, opts, class)
    local db, s = F.open_store(dir, {
        size = opts.size, block = opts.block, block_given = opts.block_given, compress = opts.compress,
        cache = opts.cache, memtable = opts.memtable, upgrade = true,
    })
    local c = s.counters
    local compressed = s.compress ~= nil
    local ok, file = pcall(usbd.file.open, dir .. "/blocks", { create = true })
    if not ok then
        db:close()
        error(file, 0)
    end
    local ok2, index, fresh = pcall(hashindex.open, dir .. "/hashindex", opts.index)
    if not ok2 then
        file:close()
        db:close()
        error(index, 0)
    end
    if fresh and c.unique > 0 then F.rebuild_index(db, index, compressed) end
    -- Whatever the last run left (a crash: WAL records and file pages in
    -- the page cache) is made durable before any free block is reused.
    file:sync()
    db:sync()
    local self = setmetatable({
        dir = dir, db = db, file = file, index = index, block = s.block, bytes = s.size, blocks = s.size / s.block,
        counters = c, work_pool = {}, scratch_pool = {},
        -- compress=: the codec
        codec = compressed and usbd.codec.new(s.compress),
        -- Without compress=, reads lend the block file's page cache (not
        -- mappable: they copy, as with compress=).
        map = not compressed and file:map_or_nil() or nil,
    }, class or M.class())
    self:init_locks()
    self:init_records(opts.records, compressed)
    self:init_map(opts.map_cache)
    self:init_packing(s.block, opts.records)
    self:init_commit()
    self:init_write(opts.verify)
    self.ids = alloc.new(self, nil, c, "ids_free", "ids_next")
    self.pbns = compressed and alloc.new(self, "G", c, "pbns_free", "pbns_next") or self.ids
    self.ids.append_ok = not compressed   -- (st.want counts ids: whole blocks only without compress=)
    local ok3, err3 = pcall(self.recover, self, s)
    if not ok3 then
        self:shut()
        error(("%s: %s"):format(dir, tostring(err3)), 0)
    end
    return self
end

-- ---- Recovery: after a crash or a power cut ---------------------------------

-- The contents whose bytes may be missing (usbd.dedup.journal's lists, and
-- with a block file shorter than the store uses, every content past its
-- end) are rehashed; those that do not hold their bytes are given up: the
-- logical blocks naming them are unmapped (they read as zeroes; each was
-- written after the last completed flush, or its bytes would be durable)
-- and they are freed, so that no later write shares them. Then a
-- checkpoint: what remains is durable and the lists go. Costs a read of
-- the data written since the last flush (or checkpoint: at most
-- JOURNAL_BYTES of it, usbd.dedup.commit).
function Dedup:recover(s)
    local ids, lists = journal.ids(self.db)
    local b, c, compressed = self.block, self.counters, self.codec ~= nil
    local pnext = compressed and c.pbns_next or c.ids_next
    local used = pnext * b
    local size = self.file:size()
    if size < used then
        -- Growth of the file lost: contents past its end are checked too
        -- (they read as zeroes), and the file takes its size again.
        local seen = {}
        for _, id in ipairs(ids) do seen[id] = true end
        local rbytes, slot_t = self.rbytes, self.slot_t
        F.each(self.db, "R", rbytes, function(k, _, v, vl)
            if vl ~= rbytes then return end
            local g, slots = un64_at(k, 1), ffi.cast(slot_t, v)
            for j = 0, GROUP - 1 do
                local sl = slots[j]
                local p = compressed and tonumber(sl.pbn) or g * GROUP + j
                if sl.refs > 0 and p * b > size and not seen[g * GROUP + j] then
                    ids[#ids + 1] = g * GROUP + j
                end
            end
        end)
        sort_numbers(ids, #ids)
        self.file:truncate(used)
    end
    if #ids == 0 and lists == 0 then return end
    usbd.log(0, "dedupdisk: %s was not closed cleanly: checking the %d contents written since its last flush",
        self.dir, #ids)
    local t0 = usbd.now()
    local bad, checked = journal.verify(self.db, self.file, s, ids)
    local lost, given = 0, 0
    if next(bad) then lost, given = self:give_up(bad) end
    self:checkpoint()
    local forget = usbd.kv.batch()
    journal.forget(forget)
    self.db:write(forget, true)
    usbd.log(0, "dedupdisk: %s: %d contents checked in %.1f s%s", self.dir, checked, usbd.now() - t0,
        given == 0 and ": all hold their bytes"
        or (": %d had not reached the disk and were dropped; %d logical blocks written since the last flush read as zeroes")
            :format(given, lost))
end

-- Unmap every logical block naming an id in bad (a set) and free those ids.
-- Returns how many logical blocks, and how many ids.
function Dedup:give_up(bad)
    local runs = {}   -- logical blocks: first, stop, ...
    F.each(self.db, "L", 16, function(k, _, v)
        local last, e = un64_at(k, 1), ffi.cast(extent_ptr, v)
        local id, count = tonumber(e.id), tonumber(e.count)
        local e_first = last - count + 1
        for j = 0, count - 1 do
            if bad[id + j] then
                local n = #runs
                if n > 0 and runs[n] == e_first + j then
                    runs[n] = e_first + j + 1
                else
                    runs[n + 1], runs[n + 2] = e_first + j, e_first + j + 1
                end
            end
        end
    end)
    local lost = 0
    for i = 1, #runs, 2 do
        self:unmap(runs[i], runs[i + 1])
        lost = lost + runs[i + 1] - runs[i]
    end
    -- References nothing maps (leaked) go too: no content stays that a
    -- later write could share.
    local given = 0
    self:meta_enter()
    local st = self:new_stage()
    for id in pairs(bad) do
        local sl = self:slot(id)
        if sl.refs > 0 then self:unref(st, id, sl.refs) end
        given = given + 1
    end
    self:enqueue(st)
    self:meta_leave()
    self:commit(st)
    return lost, given
end

-- ---- Per-request arrays and scratch buffers, recycled -----------------------

function Dedup:work(n)
    local pool = self.work_pool
    for i = #pool, 1, -1 do
        if pool[i].cap >= n then return table.remove(pool, i) end
    end
    local cap = math.max(256, n)
    return { cap = cap, hashes = ffi.new("uint8_t[?]", 16 * cap), old = ffi.new("double[?]", cap),
        new = ffi.new("double[?]", cap), zero = ffi.new("uint8_t[?]", cap), offsets = ffi.new("int64_t[?]", cap),
        cand = ffi.new("uint64_t[?]", cap), inflight = {} }
end

function Dedup:unwork(w)
    if #self.work_pool < 64 then self.work_pool[#self.work_pool + 1] = w end
end

function Dedup:scratch(nblocks)
    local pool = self.scratch_pool[nblocks]
    local s = pool and table.remove(pool)
    return s or usbd.buffer(nblocks * self.block)
end

function Dedup:unscratch(s, nblocks)
    local pool = self.scratch_pool[nblocks]
    if not pool then
        pool = {}
        self.scratch_pool[nblocks] = pool
    end
    if #pool < 4 and nblocks <= 256 then pool[#pool + 1] = s end
end

-- ---- Closing ----------------------------------------------------------------

function Dedup:close_store()
    -- A clean close leaves no journal lists, durably (the last flush
    -- wrote their deletion without a sync): the next open checks nothing.
    if not self.broken then
        if self.committed > self.forgotten then pcall(self.checkpoint, self) end
        pcall(self.db.sync, self.db)
    end
    self:shut()
end

-- Let go of the block file (and its map), RocksDB and the hash index.
function Dedup:shut()
    if self.map then self.map:close() end
    self.file:close()
    self.db:close()
    self.index:close()
end

return M

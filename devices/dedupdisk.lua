-- dedupdisk.lua: a block device that stores each distinct block once.
-- Blocks are named by their XXH3-128 hash; a RocksDB store maps logical
-- blocks to physical ones and counts references, and the physical blocks
-- live in one file. An all-zero block is stored as nothing.
--
--   usbd-lua devices/dedupdisk.lua -U /tmp/dd.sock dir=/var/lib/dd size=100G
--
--   dir=DIR       the store: a RocksDB directory, with the block file
--                 DIR/blocks inside it. Created (with size=) when absent;
--                 its parent must exist.
--   size=SIZE     the disk's size, for a new store (a multiple of block).
--   block=4K      the block size, for a new store (512 to 64K, a power of
--                 two). An existing store keeps its own: another is an error.
--   verify=false  compare bytes before sharing a block whose hash matches.
--   cache=64M     RocksDB's block cache; memtable=64M its write buffer.
--   index_cache=65536  index entries (hash -> block, references) kept in
--                 memory once written, about 200 bytes each: a duplicate of
--                 a block written recently reads nothing from RocksDB.
--   compress=lz4|zstd[:LEVEL]   for a new store: unique blocks are stored
--                 compressed (recorded in the store; an existing store
--                 keeps its own). See "Compression" below.
--
-- The store (RocksDB keys; numbers are 8 bytes big-endian):
--   M            "usbd-dedupdisk 1 block=B size=S": what this store is
--   C            counters: mapped logical blocks, unique physical blocks,
--                free physical blocks, physical blocks ever used
--   L lba        -> pbn, hash (absent: the block reads as zeroes)
--   H hash       -> pbn, references: one physical block per content
--   F pbn        -> "" (a free physical block, reused before the file grows)
-- Physical block pbn (from 1) is at (pbn - 1) * block in DIR/blocks.
--
-- Compression (compress=). A unique block is compressed on its own (C,
-- usbd.codec; a large request on a worker thread). If that saves less than
-- an eighth it is stored raw, as above; otherwise its fragment shares a
-- packed physical block with others (usbd.packer: best fit, any offset,
-- none split, as many as fit: 14 of 292 bytes or less, VDO's most, always
-- do). Deduplication still keys on the uncompressed content's hash. Then
--   M            "... compress=SPEC"
--   L lba        -> pbn, hash, offset, size (size 0: a raw block)
--   H hash       -> pbn, references, offset, size: references per fragment
--   P pbn        -> the packed block's live fragments (offset, size each)
-- A read reads and decompresses only the fragments it needs. A fragment
-- whose last reference goes is dropped from P in the batch that frees it;
-- an empty packed block is freed like a raw one. A packed block left at
-- most half full is compacted in place: once the batches that freed its
-- fragments are durable, its gaps take new fragments. Live fragments never
-- move, so no map entry ever has to follow one, and a fragment is only
-- ever written into bytes no durable mapping names: the guarantees below
-- hold for fragments as for blocks.
--
-- Durability: what is durable when.
--   * A write first stores the blocks it adds to the file, then its
--     metadata changes (map, references, free list, counters) as ONE atomic
--     RocksDB batch, and then answers. Batches are written in the order
--     their changes were decided, so values computed in memory (references,
--     counters) are always written newest-last.
--   * FLUSH (and FUA) syncs the block file, then RocksDB's WAL: every
--     answered write is durable, data before the metadata that points at it.
--   * A block freed by a batch goes to the free list at once (F) but is
--     reused only after a flush has made that batch durable: before that, a
--     crash could bring back a mapping to it, and new bytes in it would be
--     someone else's data. (Many frees without a flush trigger one.)
--   * kill -9 at any moment: the file writes and WAL records already made
--     survive (the page cache keeps them); RocksDB recovers a prefix of the
--     batches, each whole; every mapping in that prefix points at data that
--     was written before it. Unflushed writes may be lost, never mixed up.
--     Physical blocks past the recovered "ever used" counter are garbage and
--     are overwritten when allocated; tools/dedup-fsck.lua reports leaks.
--   * Power loss between flushes: the OS may write the WAL before the data,
--     so a mapping written since the last flush could point at a block whose
--     bytes never reached the disk. Flushed data is safe;
--     `dedup-fsck --verify-data` finds such blocks by rehashing.
--
-- Collisions. XXH3-128 is not a cryptographic hash. For n distinct blocks
-- the chance that any two collide is about n^2 / 2^129: 1e-20 for 2^32
-- blocks (16 TiB of 4K blocks), far below the disk's own undetected error
-- rate. A collision crafted on purpose is feasible, though, so a store whose
-- writers are not trusted should say verify=true: on a hash match the block
-- is read back and compared (as VDO does) before it is shared, at the cost
-- of a read per duplicate block, and a write whose bytes differ from the
-- stored block with its hash fails with EIO and a log line rather than
-- share it. Default: verify=false.
--
-- Concurrency. A request takes a lock on the logical blocks it touches
-- (readers share; writers exclude, in arrival order, so writes to one block
-- are applied in order, and a read-modify-write of a partial block sees no
-- other change while it waits). The metadata decisions of one request
-- (lookups, references, allocation) are made under one mutex, in memory,
-- against RocksDB plus an overlay of the values staged by batches not yet
-- written, so two requests writing the same new block at once store it once.
-- Data writes, hashing and batch writes of different requests overlap.
local ffi = require "ffi"
local bit = require "bit"
local usbd = require "usbd"
local sched = require "usbd.sched"
local packer = require "usbd.packer"

local VERSION = 1
local READY_MAX = 8192       -- free blocks kept in memory, ready to reuse
local LIMBO_MAX = 65536      -- freed blocks awaiting a flush; more: flush
local SCAN_CHUNK = 65536     -- keys per scan of the map (trim, extents)
local REFILL_MAX = 4096      -- mostly free packed blocks kept, to refill

-- ---- Encoding -------------------------------------------------------------

local char, byte = string.char, string.byte
local band, rshift = bit.band, bit.rshift

local function be64(n)
    local hi, lo = math.floor(n / 4294967296), n % 4294967296
    return char(band(rshift(hi, 24), 255), band(rshift(hi, 16), 255), band(rshift(hi, 8), 255), band(hi, 255),
        band(rshift(lo, 24), 255), band(rshift(lo, 16), 255), band(rshift(lo, 8), 255), band(lo, 255))
end

local function un64(s, at)
    at = at or 1
    local a, b, c, d, e, f, g, h = byte(s, at, at + 7)
    return ((a * 256 + b) * 256 + c) * 256 * 4294967296 + d * 4294967296
        + ((e * 256 + f) * 256 + g) * 256 + h
end

-- The number at byte at of a uint8_t array (no string made).
local function un64_at(p, at)
    return ((p[at] * 256 + p[at + 1]) * 256 + p[at + 2]) * 256 * 4294967296 + p[at + 3] * 4294967296
        + ((p[at + 4] * 256 + p[at + 5]) * 256 + p[at + 6]) * 256 + p[at + 7]
end

-- The same into bytes p[at..at+7] (no string made).
local function put64(p, at, n)
    local hi, lo = math.floor(n / 4294967296), n % 4294967296
    p[at], p[at + 1] = band(rshift(hi, 24), 255), band(rshift(hi, 16), 255)
    p[at + 2], p[at + 3] = band(rshift(hi, 8), 255), band(hi, 255)
    p[at + 4], p[at + 5] = band(rshift(lo, 24), 255), band(rshift(lo, 16), 255)
    p[at + 6], p[at + 7] = band(rshift(lo, 8), 255), band(lo, 255)
end
local function put16(p, at, n) p[at], p[at + 1] = rshift(n, 8), band(n, 255) end

local function Lkey(lba) return "L" .. be64(lba) end
local function Hkey(hash) return "H" .. hash end
local function Fkey(pbn) return "F" .. be64(pbn) end

-- L lba -> pbn and the block's hash; H hash -> pbn and references.
-- With compression both also hold the fragment's offset and size (2 bytes
-- each; size 0: a raw block). P pbn -> a packed block's live fragments.
local function be16(n) return char(rshift(n, 8), band(n, 255)) end
local function un16(s, at) local a, b = byte(s, at, at + 1) return a * 256 + b end
local function Lvalue(pbn, hash, rec)
    local v = be64(pbn) .. hash
    if rec and rec.size then v = v .. be16(rec.off) .. be16(rec.size) end
    return v
end
-- The index value is made once per change of references: one string,
-- encoded in a reused buffer (strings are interned: each costs a lookup
-- in LuaJIT's string table, and freeing it later).
local vbytes = ffi.new("uint8_t[32]")
local function Hvalue(pbn, refs, rec)
    put64(vbytes, 0, pbn)
    put64(vbytes, 8, refs)
    if rec and rec.size then
        put16(vbytes, 16, rec.off)
        put16(vbytes, 18, rec.size)
        return ffi.string(vbytes, 20)
    end
    return ffi.string(vbytes, 16)
end
-- L lba -> Lvalue(pbn, hash, rec), straight into batch (no string made).
local lkey_bytes, lval_bytes = ffi.new("uint8_t[9]"), ffi.new("uint8_t[32]")
lkey_bytes[0] = byte("L")
local function put_L(batch, lba, pbn, hash, rec)
    put64(lkey_bytes, 1, lba)
    put64(lval_bytes, 0, pbn)
    ffi.copy(lval_bytes + 8, hash, 16)
    local len = 24
    if rec and rec.size then
        put16(lval_bytes, 24, rec.off)
        put16(lval_bytes, 26, rec.size)
        len = 28
    end
    batch:put(lkey_bytes, lval_bytes, 9, len)
end
local function delete_L(batch, lba)
    put64(lkey_bytes, 1, lba)
    batch:delete(lkey_bytes, 9)
end
local function Hdecode(v)
    local r = { pbn = un64(v, 1), refs = un64(v, 9) }
    if #v >= 20 then r.off, r.size = un16(v, 17), un16(v, 19) end
    return r
end
local function Pkey(pbn) return "P" .. be64(pbn) end

local function Cvalue(s)
    return be64(s.mapped) .. be64(s.unique) .. be64(s.free) .. be64(s.next)
end

local format = { be64 = be64, un64 = un64, Lkey = Lkey, Hkey = Hkey, Fkey = Fkey,
    Lvalue = Lvalue, Hvalue = Hvalue, Hdecode = Hdecode, Cvalue = Cvalue, VERSION = VERSION,
    Pkey = Pkey, un16 = un16 }

local function meta_string(block, size, compress)
    return ("usbd-dedupdisk %d block=%d size=%d"):format(VERSION, block, size)
        .. (compress and " compress=" .. compress or "")
end
-- version, block, size, and the codec's spec (nil: not compressed).
local function parse_meta(s)
    local v, block, size, rest = s:match("^usbd%-dedupdisk (%d+) block=(%d+) size=(%d+)(.*)$")
    local compress = rest and rest:match("^ compress=(%S+)$")
    if rest and rest ~= "" and not compress then return nil end
    return tonumber(v), tonumber(block), tonumber(size), compress
end
format.parse_meta = parse_meta

-- ---- Waiting: a request parks on a token until another wakes it ------------

local function park(tok)
    if not sched.in_request() then
        error("dedupdisk: would wait outside a request", 2)
    end
    sched.wait(tok)
end
local function wake(tok) sched.complete(tok) end
local function token() return ffi.new("uint8_t[1]") end

local Dedup = {}
Dedup.__index = Dedup

-- ---- Locks on logical blocks, granted in arrival order ----------------------

function Dedup:lock(first, last, write)
    local e = { first = first, last = last, write = write, blockers = 0 }
    local locks = self.locks
    for i = 1, #locks do
        local o = locks[i]
        if o.first <= last and first <= o.last and (write or o.write) then
            e.blockers = e.blockers + 1
        end
    end
    locks[#locks + 1] = e
    if e.blockers > 0 then
        e.tok = token()
        park(e.tok)
    end
    return e
end

function Dedup:unlock(e)
    local locks, at = self.locks, nil
    for i = 1, #locks do
        if locks[i] == e then at = i break end
    end
    table.remove(locks, at)
    local ready = {}
    for i = at, #locks do
        local o = locks[i]
        if o.first <= e.last and e.first <= o.last and (e.write or o.write) then
            o.blockers = o.blockers - 1
            if o.blockers == 0 and o.tok then ready[#ready + 1] = o.tok end
        end
    end
    for i = 1, #ready do wake(ready[i]) end
end

-- Run fn(...) holding a lock on logical blocks [first, last].
function Dedup:locked(first, last, write, fn, ...)
    local e = self:lock(first, last, write)
    local ok, err = pcall(fn, ...)
    self:unlock(e)
    if not ok then error(err, 0) end
end

-- ---- The metadata mutex, the overlay, the commit queue ----------------------

function Dedup:meta_enter()
    if self.meta_busy then
        local tok = token()
        self.meta_queue[#self.meta_queue + 1] = tok
        park(tok)  -- the holder hands over: meta_busy stays true
    end
    self.meta_busy = true
    -- Batches written since the last holder: their overlay entries may go
    -- now, when no lookup of ours is in flight (a lookup that started before
    -- a batch was written could miss it; one that starts now cannot).
    local done = self.written_keys
    if #done > 0 then
        self.written_keys = {}
        self.epoch = self.epoch + 1
        local over, cleaned, log = self.over, self.cleaned, self.cleaned_log
        for i = 1, #done do
            local key = done[i]
            local o = over[key]
            o.pend = o.pend - 1
            if o.pend == 0 then
                if byte(key, 1) == 72 and self.cache_max > 0 then
                    -- An index entry stays, written, as a cache (every
                    -- change to the index goes through here, so it is
                    -- never stale), until it is pushed out below.
                    local t = self.clean_tail + 1
                    self.clean_tail, self.clean_fifo[t] = t, key
                    o.clean, self.clean_count = t, self.clean_count + 1
                else
                    over[key] = nil
                end
                -- A read that began before now may have missed this write.
                cleaned[key] = self.epoch
                local tail = self.cleaned_tail + 1
                self.cleaned_tail = tail
                log[tail], self.cleaned_epochs[tail] = key, self.epoch
            end
        end
    end
    -- The cache of index entries: the oldest written ones go first.
    local fifo = self.clean_fifo
    while self.clean_count > self.cache_max do
        local h = self.clean_head
        local key = fifo[h]
        fifo[h], self.clean_head = nil, h + 1
        local o = self.over[key]
        if o and o.clean == h then
            self.over[key] = nil
            self.clean_count = self.clean_count - 1
        end
    end
    -- Forget what no read in flight can have missed.
    local oldest = self.epoch
    for _, e in pairs(self.reading) do
        if e < oldest then oldest = e end
    end
    local log, epochs, head, tail = self.cleaned_log, self.cleaned_epochs, self.cleaned_head, self.cleaned_tail
    while head <= tail and epochs[head] <= oldest do
        if self.cleaned[log[head]] == epochs[head] then self.cleaned[log[head]] = nil end
        log[head], epochs[head] = nil, nil
        head = head + 1
    end
    if head > tail then
        self.cleaned_log, self.cleaned_epochs, head, self.cleaned_tail = {}, {}, 1, 0
    end
    self.cleaned_head = head
end

function Dedup:meta_leave()
    local q = self.meta_queue
    if #q > 0 then
        wake(table.remove(q, 1))
    else
        self.meta_busy = false
    end
end

-- The staged value of key (false: deleted), or nil when RocksDB has it.
function Dedup:staged(key)
    local o = self.over[key]
    if o then return o.v end
end

-- A batch's point changes are kept by key (the last one wins, as it
-- would in the batch) and go to RocksDB's batch sorted, when it is queued:
-- RocksDB inserts a sorted run into its memtable far faster than keys in
-- random order (each insert starts from where the last one went), and
-- inserting is most of what a write costs it. A range delete goes to the
-- batch at once, before the point changes (unmap stages none in its range),
-- and so do a write's map changes (already in order, one per block).
local function put(st, key, v)
    local ops = st.ops
    if ops[key] == nil then st.order[#st.order + 1] = key end
    ops[key] = v
end

local function seal(st)
    local order, ops, batch = st.order, st.ops, st.batch
    table.sort(order)
    for i = 1, #order do
        local key = order[i]
        local v = ops[key]
        if v then batch:put(key, v) else batch:delete(key) end
    end
end

-- A batch being built: its changes go to RocksDB's batch and the overlay.
local function stage(self, st, key, v)
    put(st, key, v)
    local o = self.over[key]
    if o then
        if o.clean then
            o.clean, self.clean_count = nil, self.clean_count - 1
        end
        o.v, o.pend = v, o.pend + 1
    else
        self.over[key] = { v = v, pend = 1 }
    end
    st.keys[#st.keys + 1] = key
end

function Dedup:new_stage()
    return { batch = usbd.kv.batch(), ops = {}, order = {}, keys = {}, freed = {}, frag_frees = {}, frag_freed = {}, refill = {} }
end

-- Queue a staged batch for writing (in the mutex: order = decision order).
function Dedup:enqueue(st)
    self:free_fragments(st)
    stage(self, st, "C", Cvalue(self))
    seal(st)
    self.seq = self.seq + 1
    st.seq = self.seq
    -- Gaps left in packed blocks: not refilled until this batch is durable.
    local refill = {}
    for i = 1, #st.refill do refill[st.refill[i]] = true end
    for i = 1, #st.frag_freed do
        local p = st.frag_freed[i]
        self.frag_pending[p] = (self.frag_pending[p] or 0) + 1
        self.frag_limbo[#self.frag_limbo + 1] = { p, st.seq, refill[p] }
    end
    for i = 1, #st.freed do
        self.limbo[#self.limbo + 1] = st.freed[i]
        self.limbo_seq[#self.limbo_seq + 1] = st.seq
        self.in_limbo[st.freed[i]] = true
    end
    self.cq[self.cq_tail] = st
    self.cq_tail = self.cq_tail + 1
end

-- Write the ready batches at the head of the queue, in order, in groups.
function Dedup:run_commits()
    self.committing = true
    while true do
        local group, batches, i = {}, {}, self.cq_head
        while self.cq[i] and self.cq[i].ready do
            group[#group + 1] = self.cq[i]
            batches[#batches + 1] = self.cq[i].batch
            i = i + 1
        end
        if #group == 0 then break end
        local ok, err = pcall(self.db.write_all, self.db, batches, false)
        local wakes = {}
        for j = 1, #group do
            local st = group[j]
            self.cq[self.cq_head] = nil
            self.cq_head = self.cq_head + 1
            st.done, st.err = true, not ok and err or nil
            local wk = self.written_keys
            for k = 1, #st.keys do wk[#wk + 1] = st.keys[k] end
            if ok then self.committed = st.seq end
            if st.tok then wakes[#wakes + 1] = st.tok end
        end
        if not ok then self:break_down("writing metadata", err) end
        for j = 1, #wakes do wake(wakes[j]) end
    end
    self.committing = false
end

-- The batch's data is in the file: write it (after those before it).
function Dedup:commit(st)
    st.ready = true
    if not self.committing then self:run_commits() end
    if not st.done then
        st.tok = token()
        park(st.tok)
    end
    if st.err then error(st.err, 0) end
    if #self.limbo > LIMBO_MAX or #self.frag_limbo > LIMBO_MAX then self:flush() end
end

-- After a failure between deciding and writing, memory and RocksDB may
-- disagree: refuse further writes (what RocksDB holds stays consistent).
function Dedup:break_down(what, err)
    if not self.broken then
        self.broken = what
        usbd.log(0, "dedupdisk: %s failed (%s): writes refused until restart", what, tostring(err))
    end
end

-- ---- Physical blocks: references and allocation ------------------------------

-- Index records for hashes (a set), from the overlay or in one multi-get:
-- into[hash] = { pbn, refs }, or nothing when the hash is not stored.
function Dedup:load_H(hashes, into)
    local keys, want = {}, {}
    for h in pairs(hashes) do
        if into[h] == nil then
            local v = self:staged(Hkey(h))
            if v then
                into[h] = Hdecode(v)
            elseif v == nil then
                keys[#keys + 1] = Hkey(h)
                want[#want + 1] = h
            else
                into[h] = false
            end
        end
    end
    for at = 1, #keys, SCAN_CHUNK do
        local part = {}
        for i = at, math.min(#keys, at + SCAN_CHUNK - 1) do part[#part + 1] = keys[i] end
        local vals = self.db:multi_get(part, self.hv)
        for i = 1, #part do
            local v = vals[i]
            into[want[at + i - 1]] = v and Hdecode(v) or false
        end
    end
end

-- Refill the in-memory free list from F keys that are durable and unclaimed.
function Dedup:refill()
    local wrapped = self.scan_from == 0
    while #self.ready == 0 do
        local keys = self.db:scan(Fkey(self.scan_from), "G", 1024, 9, 1)
        for i = 1, #keys do
            local p = un64(keys[i], 2)
            if not self.in_limbo[p] and not self.ready_set[p] and self:staged(keys[i]) == nil then
                self.ready[#self.ready + 1] = p
                self.ready_set[p] = true
            end
        end
        if #keys > 0 then self.scan_from = un64(keys[#keys], 2) + 1 end
        if #keys < 1024 then  -- the end of the free list
            if wrapped or #self.ready > 0 then
                if #self.ready == 0 then self.scan_from = 0 end
                return
            end
            self.scan_from, wrapped = 0, true
        end
    end
end

-- A physical block for new data: a durable free one, else a new one.
function Dedup:allocate(st)
    if #self.ready == 0 and self.free - #self.limbo > 0 then self:refill() end
    local p = table.remove(self.ready)
    if p then
        self.ready_set[p] = nil
        self.free = self.free - 1
        stage(self, st, Fkey(p), false)
        return p
    end
    self.next = self.next + 1
    return self.next
end

-- Change the references of the block holding hash h (rec: its index
-- record) by delta.
function Dedup:ref(st, h, rec, delta)
    rec.refs = rec.refs + delta
    local key = rec.key or Hkey(h)
    if rec.refs > 0 then
        stage(self, st, key, Hvalue(rec.pbn, rec.refs, rec))
        return
    end
    -- The last reference is gone: the block is free once this is durable.
    -- The index entry goes through the overlay (lookups must miss it at
    -- once); nothing reads a free-list entry before the block is allocated.
    stage(self, st, key, false)
    self.unique = self.unique - 1
    if rec.size and rec.size > 0 then
        -- A fragment: its packed block loses it (free_fragments, in bulk).
        st.frag_frees[#st.frag_frees + 1] = rec
        return
    end
    self:free_block(st, rec.pbn)
end

function Dedup:free_block(st, pbn)
    put(st, Fkey(pbn), "")
    st.freed[#st.freed + 1] = pbn
    self.free = self.free + 1
end

-- ---- Packed blocks (compress=) ------------------------------------------------

-- The live lists of packed blocks pbns (a set): the open ones' from memory,
-- the rest staged or in one multi-get. into[pbn] = list (nil: no record).
function Dedup:load_P(pbns, into)
    local keys, want = {}, {}
    for p in pairs(pbns) do
        local live = self.live[p]
        if live then
            into[p] = live
        else
            local v = self:staged(Pkey(p))
            if v then
                into[p] = packer.decode(v)
            elseif v == nil then
                keys[#keys + 1], want[#want + 1] = Pkey(p), p
            end
        end
    end
    if #keys > 0 then
        local vals = self.db:multi_get(keys, 4 * self.block)
        for i = 1, #keys do
            if vals[i] then into[want[i]] = packer.decode(vals[i]) end
        end
    end
end

-- The fragments this batch freed leave their packed blocks: an empty one
-- is freed; one left at most half full is refilled once this is durable.
function Dedup:free_fragments(st)
    local frees = st.frag_frees
    if #frees == 0 then return end
    local pbns, lives = {}, {}
    for i = 1, #frees do pbns[frees[i].pbn] = true end
    self:load_P(pbns, lives)
    local touched = {}
    for i = 1, #frees do
        local r = frees[i]
        local live = lives[r.pbn]
        local bytes = live and packer.remove(live, r.off, r.size)
        if not bytes then
            error(("dedupdisk: packed block %d does not list its fragment at %d: store damaged"):format(r.pbn, r.off), 0)
        end
        touched[r.pbn] = bytes
    end
    for p, bytes in pairs(touched) do
        local live = lives[p]
        if #live == 0 then
            stage(self, st, Pkey(p), false)
            self.pk:forget(p)
            self.live[p] = nil
            self.refill_set[p] = nil
            self:free_block(st, p)
        else
            stage(self, st, Pkey(p), packer.encode(live))
            st.frag_freed[#st.frag_freed + 1] = p
            if bytes <= self.block / 2 then st.refill[#st.refill + 1] = p end
        end
    end
end

-- Room for a fragment of size bytes: an open block's gap, else a durable
-- mostly free block's, else a whole free block. Returns pbn, off.
function Dedup:place(st, size, follow)
    local pk = self.pk
    while true do
        local pbn, off = pk:place(size, nil, follow)
        if pbn then return pbn, off end
        local p = table.remove(self.refillable)
        if not p then break end
        self.refill_set[p] = nil
        if not self.frag_pending[p] and not pk:is_open(p) then
            local lives = {}
            self:load_P({ [p] = true }, lives)
            if lives[p] then
                self.live[p] = lives[p]
                pk:reopen(p, lives[p])
                if not pk:is_open(p) then self.live[p] = nil end
            end
        end
    end
    return pk:place(size, function()
        local p = self:allocate(st)
        self.live[p] = {}
        return p
    end, follow)
end

-- verify=true: does block i of data hold the bytes of physical block p?
function Dedup:same_bytes(data, i, p, rec)
    local b = self.block
    local scratch = self:scratch(1)
    if rec and rec.size and rec.size > 0 then
        self:read_fragments(scratch, { [0] = rec }, 1)
    else
        local off = ffi.new("int64_t[1]", (p - 1) * b)
        self.file:pread_blocks(scratch, b, off)
    end
    local same = ffi.string(scratch.ptr, b) == ffi.string(data.ptr + (i - 1) * b, b)
    self:unscratch(scratch, 1)
    return same
end

-- ---- Storing whole blocks -------------------------------------------------------

-- Store data (whole blocks) as logical blocks from first on; the caller
-- holds the write lock on them.
function Dedup:store(data, first)
    if self.broken then error(usbd.E.IO, 0) end
    local b = self.block
    local n = data.len / b
    local hashes = data:block_hashes(b)

    -- Outside the mutex, so that requests wait for RocksDB side by side:
    -- the map (the range lock keeps it ours) and the index entries this
    -- write needs, as RocksDB has them now. In the mutex, the overlay
    -- overrides them, and any written and dropped from the overlay since
    -- this read began are read again.
    local pre = self:prefetch(data, first, n, hashes)
    if not pre then return end  -- nothing changes
    -- compress=: before the mutex too, and only when some block is new.
    local ok0, packed = pcall(self.compress_new, self, data, n, hashes, pre)
    if not ok0 then
        self.reading[pre] = nil
        error(packed, 0)
    end
    self:meta_enter()
    local ok, st, writes, frags = pcall(self.decide, self, data, first, n, hashes, pre, packed)
    self.reading[pre] = nil
    self:meta_leave()
    if not ok then
        if packed then packed:release() end
        if self.staging then
            self.staging = false
            self:break_down("deciding a write", st)
        end
        error(st, 0)
    end
    if not st then
        if packed then packed:release() end
        return  -- nothing changed
    end

    local ok2, err = pcall(function()
        if writes then self.file:pwrite_blocks(data, b, writes) end
        if frags then
            local ranges = usbd.file.ranges(#frags)
            for j = 1, #frags do
                local r, f = ranges[j - 1], frags[j]
                r.pos, r.at, r.len = f[1], f[2], f[3]
            end
            self.file:pwrite_ranges(packed.buf, ranges, #frags)
        end
    end)
    if packed then packed:release() end
    if not ok2 then
        self:break_down("writing blocks", err)
        st.ready, st.batch, st.keys = true, usbd.kv.batch(), {}  -- keep the order; write nothing
        if not self.committing then self:run_commits() end
        error(err, 0)
    end
    self:commit(st)
end

-- compress=: the request's blocks compressed, when any changed block's
-- content is not stored yet (else nil: a duplicate costs no compression).
function Dedup:compress_new(data, n, hashes, pre)
    if not self.codec then return nil end
    local zero = self.zero_hash
    for i = 1, n do
        local h = hashes[i]
        if pre.changed[i] and h ~= zero then
            local v = self:staged(Hkey(h))
            if v == false or (v == nil and not pre.db[h]) then
                return self.codec:compress(data, self.block)
            end
        end
    end
    return nil
end

-- Before the mutex: what changes, and the index entries RocksDB holds for
-- it (nil when nothing changes).
function Dedup:prefetch(data, first, n, hashes)
    local b, zero = self.block, self.zero_hash
    -- The map first: a block rewritten with what it holds (an OS installed
    -- over itself) costs this one lookup.
    local old_pbn, old_hash = self:map_range(first, n)
    local changed = {}
    local need, any = {}, false
    for i = 1, n do
        local v, h = old_pbn[i], hashes[i]
        -- The hash of zeroes says "zeroes"; the bytes confirm it.
        if h == zero and not data:sub((i - 1) * b, b):is_zero() then
            h = zero:sub(1, 15) .. char((byte(zero, 16) + 1) % 256)
            hashes[i] = h
        end
        if (v and old_hash[i] ~= h) or (not v and h ~= zero) then
            changed[i], any = true, true
            if h ~= zero then need[h] = true end
            if v then need[old_hash[i]] = true end
        end
    end
    if not any then return nil end
    -- need[h]: the index key of hash h (made once: a string costs LuaJIT
    -- a lookup in its string table each time it is made).
    for h in pairs(need) do need[h] = Hkey(h) end
    local pre = { old_pbn = old_pbn, old_hash = old_hash, changed = changed, need = need,
        epoch = self.epoch, db = {} }
    self.reading[pre] = pre.epoch
    local keys, want = {}, {}
    for h, key in pairs(need) do
        if self:staged(key) == nil then
            keys[#keys + 1], want[#want + 1] = key, h
        end
    end
    local ok, vals = pcall(self.db.multi_get, self.db, keys, self.hv)
    if not ok then
        self.reading[pre] = nil
        error(vals, 0)
    end
    for i = 1, #want do pre.db[want[i]] = vals[i] and Hdecode(vals[i]) or false end
    return pre
end

-- In the mutex: decide, stage. Returns the staged batch and the file
-- offsets to write (nil when none).
function Dedup:decide(data, first, n, hashes, pre, packed)
    local b, zero = self.block, self.zero_hash
    local old_pbn, old_hash, changed = pre.old_pbn, pre.old_hash, pre.changed
    local recs, again = {}, {}
    for h, key in pairs(pre.need) do
        local v = self:staged(key)
        if v ~= nil then
            recs[h] = v and Hdecode(v) or false
        elseif pre.db[h] ~= nil and (self.cleaned[key] or -1) <= pre.epoch then
            recs[h] = pre.db[h]
        else
            again[h] = true
        end
    end
    if next(again) then self:load_H(again, recs) end
    for h, key in pairs(pre.need) do
        if recs[h] then recs[h].key = key end
    end

    if self.verify then
        for i = 1, n do
            local rec = changed[i] and hashes[i] ~= zero and recs[hashes[i]]
            if rec and not self:same_bytes(data, i, rec.pbn, rec) then
                usbd.log(0, "dedupdisk: verify: logical block %d has the hash of physical block %d "
                    .. "but other bytes (an XXH3 collision): refused", first + i - 1, rec.pbn)
                self.stats_collisions = self.stats_collisions + 1
                error(usbd.E.IO, 0)
            end
        end
    end

    local st = self:new_stage()
    self.staging = true
    local writes, frags, packs
    -- References: additions before removals, so a block that one logical
    -- block leaves and another joins is never freed on the way.
    for i = 1, n do
        if changed[i] then
            local h, lba = hashes[i], first + i - 1
            if h == zero then
                delete_L(st.batch, lba)
                self.mapped = self.mapped - 1   -- it was mapped: it changed
                self.stats_zero_writes = self.stats_zero_writes + 1
            else
                local rec = recs[h]
                local size = not rec and packed and packed:size(i - 1) or 0
                if not rec and size > 0 then
                    -- A fragment, into a packed block (written after this).
                    local p, off = self:place(st, size, frags ~= nil)
                    rec = { pbn = p, refs = 0, off = off, size = size, key = pre.need[h] }
                    recs[h] = rec
                    self.unique = self.unique + 1
                    local live = self.live[p]   -- place() keeps it for open blocks
                    packer.add(live, off, size)
                    packs = packs or {}
                    packs[p] = live
                    frags = frags or {}
                    frags[#frags + 1] = { (p - 1) * b + off, packed.at[i - 1], size }
                elseif not rec then
                    local p = self:allocate(st)
                    rec = { pbn = p, refs = 0, key = pre.need[h] }
                    if self.codec then rec.off, rec.size = 0, 0 end  -- raw
                    recs[h] = rec
                    self.unique = self.unique + 1
                    writes = writes or ffi.new("int64_t[?]", n, -1)
                    writes[i - 1] = (p - 1) * b
                else
                    self.stats_hits = self.stats_hits + 1
                end
                self:ref(st, h, rec, 1)
                put_L(st.batch, lba, rec.pbn, h, rec)
                if not old_pbn[i] then self.mapped = self.mapped + 1 end
            end
        end
    end
    for i = 1, n do
        if changed[i] and old_pbn[i] then
            local h = old_hash[i]
            local rec = recs[h]
            if not rec or rec.pbn ~= old_pbn[i] then
                error(("dedupdisk: logical block %d maps to physical block %d, which the index does not hold: store damaged")
                    :format(first + i - 1, old_pbn[i]), 0)
            end
            self:ref(st, h, rec, -1)
        end
    end
    -- Each packed block this request added to: its list, once.
    for p, live in pairs(packs or {}) do stage(self, st, Pkey(p), packer.encode(live)) end
    self:enqueue(st)
    self.staging = false
    return st, writes, frags
end

-- ---- Scratch buffers (whole blocks), recycled -------------------------------

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

-- ---- Reading ------------------------------------------------------------------

-- The map's values for logical blocks [first, first+n): one scan of the
-- range (neighbouring keys cost RocksDB far less than a multi-get of them).
-- Returns pbns and hashes: [i] for block first+i-1, nil where it reads as
-- zeroes. (load does the same straight into file offsets.)
function Dedup:map_range(first, n)
    local lv = self.lv
    local count, kb, _, vb = self.db:scan_raw(Lkey(first), Lkey(first + n), n, 9, lv, true)
    local pbns, hashes = {}, {}
    for j = 0, count - 1 do
        local i = un64_at(kb, j * 9 + 1) - first + 1
        pbns[i] = un64_at(vb, j * lv)
        hashes[i] = ffi.string(vb + j * lv + 8, 16)
    end
    return pbns, hashes
end

-- Fill data (whole blocks) from logical blocks first on.
function Dedup:load(data, first)
    local b, lv = self.block, self.lv
    local n = data.len / b
    local offsets = ffi.new("int64_t[?]", n, -1)
    local count, kb, _, vb = self.db:scan_raw(Lkey(first), Lkey(first + n), n, 9, lv, true)
    local frags, raw = nil, count > 0 and lv == 24
    for j = 0, count - 1 do
        local i, v = un64_at(kb, j * 9 + 1) - first, j * lv
        local size = lv > 24 and vb[v + 26] * 256 + vb[v + 27] or 0
        if size == 0 then
            offsets[i], raw = (un64_at(vb, v) - 1) * b, true
        else
            frags = frags or {}
            frags[i] = { pbn = un64_at(vb, v), off = vb[v + 24] * 256 + vb[v + 25], size = size }
        end
    end
    if raw or not frags then
        self.file:pread_blocks(data, b, offsets)  -- zeroes where there is no raw block
    else
        for i = 0, n - 1 do
            if not frags[i] then ffi.fill(data.ptr + i * b, b) end
        end
    end
    if frags then self:read_fragments(data, frags, n) end
end

-- Read the fragments frags[i] (0-based: { pbn, off, size }) of n blocks
-- and decompress each into block i of data; only their bytes are read.
function Dedup:read_fragments(data, frags, n)
    local b = self.block
    local s = self:scratch(n)
    local at, sizes = ffi.new("uint64_t[?]", n), ffi.new("uint32_t[?]", n)
    local ranges = usbd.file.ranges(n)
    local nr, used = 0, 0
    for i = 0, n - 1 do
        local f = frags[i]
        if f then
            local r = ranges[nr]
            r.pos, r.at, r.len = (f.pbn - 1) * b + f.off, used, f.size
            at[i], sizes[i] = used, f.size
            nr, used = nr + 1, used + f.size
        end
    end
    local ok, err = pcall(function()
        self.file:pread_ranges(s, ranges, nr)
        self.codec:decompress_blocks(s.ptr, at, sizes, data, b)
    end)
    self:unscratch(s, n)
    if not ok then
        if err == usbd.E.IO then
            usbd.log(0, "dedupdisk: a stored fragment does not decompress: store damaged (run the store check)")
        end
        error(err, 0)
    end
end

function Dedup:size() return self.bytes end
function Dedup:block_size() return self.block end

-- Aligned reads go straight into buf; others through whole blocks.
function Dedup:read_at(buf, pos)
    local b, len = self.block, buf.len
    local first, last = math.floor(pos / b), math.floor((pos + len - 1) / b)
    self:locked(first, last, false, function()
        if pos % b == 0 and len % b == 0 then
            self:load(buf, first)
        else
            local n = last - first + 1
            local s = self:scratch(n)
            self:load(s:sub(0, n * b), first)
            buf:copy_from(s:sub(pos - first * b, len))
            self:unscratch(s, n)
        end
    end)
end

-- ---- Writing ------------------------------------------------------------------

-- Aligned writes are stored straight from buf; others read-modify-write
-- the blocks at their edges (under the lock, so nothing changes meanwhile).
function Dedup:write_at(buf, pos)
    local b, len = self.block, buf.len
    local first, last = math.floor(pos / b), math.floor((pos + len - 1) / b)
    self:locked(first, last, true, function()
        if pos % b == 0 and len % b == 0 then
            self:store(buf, first)
        else
            self:patch(first, last, function(s) s:copy_from(buf, pos - first * b) end)
        end
    end)
end

-- Read blocks [first, last] whose edges are partly changed, change them
-- with fill(scratch), store them.
function Dedup:patch(first, last, fill)
    local b, n = self.block, last - first + 1
    local s = self:scratch(n)
    local view = s:sub(0, n * b)
    self:load(view:sub(0, b), first)
    if n > 1 then self:load(view:sub((n - 1) * b, b), last) end
    fill(view)
    local ok, err = pcall(self.store, self, view, first)
    self:unscratch(s, n)
    if not ok then error(err, 0) end
end

-- Trim and write_zeroes: partial blocks at the edges are written with
-- zeroes; whole blocks are unmapped.
function Dedup:zero(pos, count)
    if self.broken then error(usbd.E.IO, 0) end
    local b = self.block
    local first, last = math.floor(pos / b), math.floor((pos + count - 1) / b)
    self:locked(first, last, true, function()
        local whole_first = math.ceil(pos / b)
        local whole_end = math.floor((pos + count) / b)   -- exclusive
        if whole_first >= whole_end then
            self:patch(first, last, function(s) ffi.fill(s.ptr + (pos - first * b), count) end)
            return
        end
        if pos % b ~= 0 then
            self:patch(first, first, function(s) ffi.fill(s.ptr + pos % b, b - pos % b) end)
        end
        if (pos + count) % b ~= 0 then
            self:patch(last, last, function(s) ffi.fill(s.ptr, (pos + count) % b) end)
        end
        self:unmap(whole_first, whole_end)
    end)
end

function Dedup:trim(pos, count) self:zero(pos, count) end
function Dedup:write_zeroes(pos, count) self:zero(pos, count) end

-- Unmap logical blocks [first, stop): one scan of the map finds what is
-- mapped (nothing to do for the rest), one multi-get the references of the
-- blocks it maps to, one batch (a range delete of the map) records it all.
function Dedup:unmap(first, stop)
    local nmapped, drops = 0, {}
    local lbas = {}
    local from = Lkey(first)
    local stop_key = Lkey(stop)
    while true do
        local lv = self.lv
        local count, kb, _, vb = self.db:scan_raw(from, stop_key, SCAN_CHUNK, 9, lv)
        for j = 0, count - 1 do
            local h = ffi.string(vb + j * lv + 8, 16)
            drops[h] = (drops[h] or 0) + 1
            if nmapped < 64 then lbas[#lbas + 1] = ffi.string(kb + j * 9, 9) end
            nmapped = nmapped + 1
        end
        if count < SCAN_CHUNK then break end
        from = Lkey(un64_at(kb, (count - 1) * 9 + 1) + 1)
    end
    if nmapped == 0 then return end

    self:meta_enter()
    local ok, st = pcall(function()
        local recs = {}
        self:load_H(drops, recs)
        local st = self:new_stage()
        self.staging = true
        if nmapped > 64 then
            st.batch:delete_range(Lkey(first), stop_key)
        else
            for i = 1, #lbas do put(st, lbas[i], false) end
        end
        self.mapped = self.mapped - nmapped
        for h, k in pairs(drops) do
            if not recs[h] then error("dedupdisk: a mapped block is missing from the index: store damaged", 0) end
            self:ref(st, h, recs[h], -k)
        end
        self:enqueue(st)
        self.staging = false
        return st
    end)
    self:meta_leave()
    if not ok then
        if self.staging then
            self.staging = false
            self:break_down("unmapping", st)
        end
        error(st, 0)
    end
    self:commit(st)
end

-- ---- Flush, extents, statistics, close --------------------------------------

-- Every answered write is committed; make the file, then the WAL, durable.
-- Blocks freed by batches now durable become reusable.
function Dedup:flush()
    local upto = self.committed
    self.file:sync()
    self.db:sync()
    local limbo, seqs = self.limbo, self.limbo_seq
    local keep, keep_seq = {}, {}
    for i = 1, #limbo do
        local p = limbo[i]
        if seqs[i] <= upto then
            self.in_limbo[p] = nil
            if #self.ready < READY_MAX and not self.ready_set[p] then
                self.ready[#self.ready + 1] = p
                self.ready_set[p] = true
            end
        else
            keep[#keep + 1], keep_seq[#keep_seq + 1] = p, seqs[i]
        end
    end
    self.limbo, self.limbo_seq = keep, keep_seq
    -- Gaps in packed blocks freed by durable batches: refillable now.
    local fkeep = {}
    for _, e in ipairs(self.frag_limbo) do
        local p, seq, refill = e[1], e[2], e[3]
        if seq <= upto then
            local left = self.frag_pending[p] - 1
            self.frag_pending[p] = left > 0 and left or nil
            if refill and not self.refill_set[p] and #self.refillable < REFILL_MAX then
                self.refillable[#self.refillable + 1] = p
                self.refill_set[p] = true
            end
        else
            fkeep[#fkeep + 1] = e
        end
    end
    self.frag_limbo = fkeep
    -- Live lists are kept for open packed blocks only.
    for p in pairs(self.live) do
        if not self.pk:is_open(p) then self.live[p] = nil end
    end
end

-- Runs from pos: mapped blocks are data, the rest holes that read as zeroes.
function Dedup:extents(pos, count)
    local b = self.block
    local first = math.floor(pos / b)
    local stop = math.min(math.ceil((pos + count) / b), first + SCAN_CHUNK)
    local keys = self.db:scan(Lkey(first), Lkey(stop), SCAN_CHUNK, 9, self.lv)
    local out = {}
    local at = first   -- next block to describe
    local function run(upto, flags)
        if upto <= at then return end
        local from = math.max(at * b, pos)
        local len = upto * b - from
        local n = #out
        if n > 0 and out[n] == flags then
            out[n - 1] = out[n - 1] + len
        else
            out[n + 1], out[n + 2] = len, flags
        end
        at = upto
    end
    local hole = usbd.HOLE + usbd.ZERO
    for i = 1, #keys do
        local lba = un64(keys[i], 2)
        run(lba, hole)
        run(lba + 1, 0)
    end
    run(stop, hole)
    return out
end

local function ratio(a, b)
    return b > 0 and math.floor(a / b * 100 + 0.5) / 100 or 1
end

function Dedup:stats()
    local b = self.block
    local in_use = self.next - self.free   -- physical blocks holding data
    local file_bytes = self.file:size()
    return {
        dedup_logical_bytes = self.mapped * b,
        dedup_unique_bytes = self.unique * b,
        dedup_zero_blocks = self.blocks - self.mapped,
        dedup_ratio = self.unique > 0 and math.floor(self.mapped / self.unique * 100 + 0.5) / 100 or 1,
        dedup_free_blocks = self.free,
        dedup_block_file_bytes = file_bytes,
        dedup_block_file_allocated = self.file:allocated(),
        dedup_metadata_bytes = self.db:disk_bytes() - file_bytes,
        dedup_hits = self.stats_hits,
        dedup_zero_writes = self.stats_zero_writes,
        dedup_verify_mismatches = self.stats_collisions,
        -- compress=: unique content against the physical blocks it takes
        dedup_compress = self.codec and self.codec.spec or "none",
        dedup_stored_bytes = in_use * b,
        dedup_compression_ratio = ratio(self.unique, in_use),
        dedup_combined_ratio = ratio(self.mapped, in_use),
    }
end

function Dedup:close()
    self.file:close()
    self.db:close()
end

-- ---- Opening ------------------------------------------------------------------

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

local function dir_is_empty(dir)
    local p = io.popen("ls -A '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    local out = p:read("*a")
    p:close()
    return out == ""
end

-- Open the store in dir (for the device and tools/dedup-fsck.lua): returns
-- db, block, size, counters. A damaged or foreign store is a one-line error.
local function open_store(dir, opts)
    local fresh = not exists(dir .. "/CURRENT")
    if fresh then
        if not opts.size then
            error(dir .. " holds no dedupdisk store: give size=SIZE to create one", 0)
        end
        if exists(dir) and not dir_is_empty(dir) then
            error(dir .. " is not a dedupdisk store (not empty, no RocksDB in it)", 0)
        end
    end
    local db = usbd.kv.open(dir, { create = fresh, cache = opts.cache, write_buffer = opts.memtable })
    local ok, err = pcall(function()
        local meta = db:get("M", 256)
        if not meta then
            local any = db:scan("", nil, 1)
            if #any > 0 or not fresh then
                error(dir .. " is not a dedupdisk store (a RocksDB without its record)", 0)
            end
            meta = meta_string(opts.block, opts.size, opts.compress)
            local b = usbd.kv.batch()
            b:put("M", meta)
            b:put("C", Cvalue({ mapped = 0, unique = 0, free = 0, next = 0 }))
            db:write(b, true)
        end
        local version, block, size, compress = parse_meta(meta)
        if not version then
            error(dir .. " is not a dedupdisk store (its record reads '" .. meta:sub(1, 40) .. "')", 0)
        end
        if version ~= VERSION then
            error(("%s is a dedupdisk store of version %d; this is version %d"):format(dir, version, VERSION), 0)
        end
        if opts.block_given and opts.block ~= block then
            error(("%s stores %d-byte blocks, not block=%d"):format(dir, block, opts.block), 0)
        end
        if opts.size and opts.size ~= size then
            error(("%s holds a %d-byte disk, not size=%d: leave size= out"):format(dir, size, opts.size), 0)
        end
        if opts.compress and opts.compress ~= compress then
            error(compress and ("%s stores blocks compressed with %s, not compress=%s"):format(dir, compress, opts.compress)
                or ("%s stores blocks uncompressed: leave compress= out"):format(dir), 0)
        end
        if compress and not pcall(usbd.codec.parse, compress) then
            error(("%s is compressed with '%s', which this build does not know"):format(dir, compress), 0)
        end
        local c = db:get("C")
        if not c or #c ~= 32 then error(dir .. ": the counters record is damaged", 0) end
        return { block = block, size = size, mapped = un64(c, 1), unique = un64(c, 9),
            free = un64(c, 17), next = un64(c, 25), compress = compress }
    end)
    if not ok then
        db:close()
        error(err, 0)
    end
    return db, err
end
format.open_store = open_store

local function open(args)
    local dir = args.dir
    if not dir or dir == "" then
        error("dedupdisk needs dir=DIR (and size=SIZE to create a store)", 0)
    end
    dir = dir:gsub("/+$", "")
    local block = usbd.parse_size(args.block or "4K")
    if block < 512 or block > 65536 or bit.band(block, block - 1) ~= 0 then
        error("block=" .. args.block .. ": a power of two from 512 to 64K", 0)
    end
    local size = args.size and usbd.parse_size(args.size)
    if size and (size <= 0 or size % block ~= 0) then
        error(("size=%s: a positive multiple of the block size (%d)"):format(args.size, block), 0)
    end
    local codec = args.compress and usbd.codec.new(args.compress)  -- a bad spec: its one-line error
    local db, s = open_store(dir, {
        size = size, block = block, block_given = args.block ~= nil, compress = codec and codec.spec,
        cache = usbd.parse_size(args.cache or "64M"), memtable = usbd.parse_size(args.memtable or "64M"),
    })
    local ok, file = pcall(usbd.file.open, dir .. "/blocks", { create = true })
    if not ok then
        db:close()
        error(file, 0)
    end
    -- A packed last block may end where its last fragment does.
    local used = s.compress and s.next > 0 and (s.next - 1) * s.block + 1 or s.next * s.block
    if file:size() < used then
        file:close()
        db:close()
        error(("%s is damaged: the block file holds %d bytes, the map uses %d"):format(
            dir, file:size(), s.next * s.block), 0)
    end
    -- Whatever the last run left (a crash: WAL records and file pages in
    -- the page cache) is made durable before any free block is reused.
    file:sync()
    db:sync()
    local zero = usbd.buffer(s.block)
    local self = setmetatable({
        dir = dir, db = db, file = file, block = s.block, bytes = s.size, blocks = s.size / s.block,
        verify = usbd.parse_bool(args, "verify", false),
        mapped = s.mapped, unique = s.unique, free = s.free, next = s.next,
        zero_hash = zero:hash128(),
        locks = {}, meta_busy = false, meta_queue = {}, over = {}, written_keys = {},
        epoch = 0, cleaned = {}, cleaned_log = {}, cleaned_epochs = {}, cleaned_head = 1, cleaned_tail = 0,
        reading = setmetatable({}, { __mode = "k" }),
        cache_max = tonumber(args.index_cache or 65536) or error("index_cache=" .. args.index_cache .. ": a number of entries", 0),
        clean_fifo = {}, clean_head = 1, clean_tail = 0, clean_count = 0,
        cq = {}, cq_head = 1, cq_tail = 1, committing = false, seq = 0, committed = 0,
        limbo = {}, limbo_seq = {}, in_limbo = {}, ready = {}, ready_set = {}, scan_from = 0,
        scratch_pool = {},
        stats_hits = 0, stats_zero_writes = 0, stats_collisions = 0,
        -- compress=: the codec, and what placing fragments needs
        codec = s.compress and usbd.codec.new(s.compress),
        lv = s.compress and 28 or 24, hv = s.compress and 20 or 16,   -- L and H value bytes
        pk = packer.new(s.block), live = {},
        refillable = {}, refill_set = {}, frag_pending = {}, frag_limbo = {},
    }, Dedup)
    return self
end

-- params: the keys open takes; any other is refused, naming it.
return {
    open = open,
    format = format,
    params = {
        dir = "the store's directory", size = "the disk's size, for a new store",
        block = "the block size, for a new store (default 4K)", verify = "compare bytes on a hash match (default false)",
        cache = "RocksDB's block cache (default 64M)", memtable = "RocksDB's write buffer (default 64M)",
        index_cache = "index entries kept in memory (default 65536)",
        compress = "lz4 or zstd[:LEVEL], for a new store: blocks stored compressed (default none)",
    },
}

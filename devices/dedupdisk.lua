-- dedupdisk.lua: a block device that stores each distinct block once.
-- Blocks are named by their XXH3-128 hash; a RocksDB store maps logical
-- blocks to stored contents and counts their references, and the blocks
-- live in one file. An all-zero block is stored as nothing.
--
--   usbd-lua devices/dedupdisk.lua -U /tmp/dd.sock dir=/var/lib/dd size=100G
--
--   dir=DIR       the store: a RocksDB directory, with the block file
--                 DIR/blocks and the hash index DIR/hashindex inside it.
--                 Created (with size=) when absent; its parent must exist.
--   size=SIZE     the disk's size, for a new store (a multiple of block).
--   block=4K      the block size, for a new store (512 to 64K, a power of
--                 two). An existing store keeps its own: another is an error.
--   verify=false  compare bytes before sharing a block whose hash matches.
--   index=64M     the hash index: 8 bytes per entry, in buckets of 8, so
--                 64M holds 8M. Up to 4M contents (16 GiB of 4K blocks)
--                 full buckets lose under 1% of them; beyond that more
--                 stop being found as duplicates (6M: 5%, logged once).
--   records=16384 content records kept in memory (64 contents each:
--                 1.3 KiB, 2 KiB with compress=); with compress= also
--                 records/8 P records' fragment lists (8-21 KiB each).
--   map_cache=524288  map entries kept in memory: a 256-block span's
--                 extents and one for the span, about 170 bytes each (a
--                 span written sequentially: 2; cut up by 4K writes: 257).
--   cache=64M     RocksDB's block cache; memtable=64M its write buffer.
--   compress=lz4|zstd[:LEVEL]   for a new store: unique blocks are stored
--                 compressed (recorded in the store; an existing store
--                 keeps its own). See "Compression" below.
--
-- The store (lua/usbd/dedup/: format.lua describes its format, version 3;
-- store.lua the parts it is made of). In RocksDB, the map is extents (a
-- run of logical blocks -> a run of content ids: a sequential write of 1
-- MiB is one entry), a record per 64 content ids holds each one's
-- references and hash (an id holding none is free: the records are the
-- free list), and counters say what is mapped, stored and free. Without
-- compress= an id is its physical block in DIR/blocks, so a sequential
-- write is one extent and one or two records, and a read needs the map
-- alone. The hash index (DIR/hashindex) finds a content by its hash. It
-- is advisory and bounded: a hit is used only when the record agrees (the
-- id holds references and that hash), so a stale, lost or full index
-- costs missed duplicates, never wrong data. It is not synced; when lost
-- or resized it is rebuilt from the records at open.
--
-- Memory: RAM is bounded by configuration, not by the data: the index
-- (index=, page cache the kernel may reclaim), the record cache
-- (records=), the map cache (map_cache=), RocksDB's cache and memtable.
-- On disk: per logical block an extent of 25 bytes shared by up to 256
-- blocks (a sequential write: 0.1 byte per block); per unique block 20
-- bytes of record (32 compressed) and an index entry.
--
-- Compression (compress=). A unique block is compressed on its own (C,
-- usbd.codec; a large request on a worker thread). If that saves less than
-- an eighth it is stored raw in a physical block of its own; otherwise its
-- fragment shares a packed physical block with others (usbd.dedup.packer:
-- best fit, any offset, none split, as many as fit: 14 of 292 bytes or
-- less, VDO's most, always do). Deduplication still keys on the
-- uncompressed content's hash. Ids then hold no data: their slot says
-- where it is (a physical block, and in a packed one an offset and a
-- size), and a P record per 64 packed blocks lists their live fragments
-- (lua/usbd/dedup/packing.lua places them).
-- A read reads and decompresses only the fragments it needs, in one job. A
-- fragment whose last reference goes is dropped from P in the batch that
-- frees it; an empty packed block is freed like a raw one. A packed block left at
-- most half full is compacted in place: once the batches that freed its
-- fragments are durable, its gaps take new fragments. Live fragments never
-- move, so no slot ever has to follow one, and a fragment is only ever
-- written into bytes no durable mapping names: the guarantees below hold
-- for fragments as for blocks. (A request writes the packed blocks it
-- opened whole, their gaps as zeroes: few large writes; one that places a
-- fragment into such a gap meanwhile writes it after that.)
--
-- Durability: what is durable when (lua/usbd/dedup/commit.lua decides
-- it). The model: after a crash or a power cut, what fsync/fdatasync made
-- durable survives, and of everything written since, any subset of pages
-- (and of file size changes) may be lost; RocksDB recovers a prefix of its
-- batches, each whole.
--   * A write first stores the blocks it adds to the file, then its
--     metadata changes (extents, records, counters, the journal list of
--     the contents it adds; compress=: free runs of physical blocks) as
--     ONE atomic RocksDB batch, and then answers. Batches are written in
--     the order their changes were decided, so values computed in memory
--     (records, counters) are always written newest-last; the batches
--     ready together go as one RocksDB write (a crash keeps all or none).
--   * FLUSH (and FUA) syncs the block file, then RocksDB's WAL: every
--     answered write is durable, its data before the metadata naming it.
--     Then the journal lists of the batches written before the file's
--     sync began are deleted: their bytes are on the disk.
--   * The journal (J seq, usbd.dedup.journal): so a batch can become
--     durable before its data (the OS writes the WAL's pages first, a
--     sync of the WAL alone, RocksDB flushing a memtable), and then its
--     records name contents whose bytes are not there, or are a freed
--     block's old bytes. Opening a store that still holds lists rehashes
--     the contents they name (and any past the end of a block file whose
--     growth was lost); the logical blocks naming one that lost its bytes
--     are unmapped (they read as zeroes: written after the last flush,
--     which is allowed to lose them) and it is freed, so no later write
--     shares it. One line says a check runs, one what it found. Its cost
--     is a read of the data written since the last flush; past 1 GiB of
--     new contents without a flush the device checkpoints on its own
--     (as a flush, in the background), which bounds it.
--   * Ids freed by a batch are free in its records at once (and physical
--     blocks, compress=, in its runs, G) but are reused only after a sync
--     of the WAL has made that batch durable: before that, a crash could
--     bring back a mapping to them, and new bytes there would be someone
--     else's data. (A flush does it; many frees without a flush trigger a
--     sync of the WAL alone, in a coroutine of its own that no request
--     waits for.)
--   * So after a crash or a power cut at any moment: the store opens;
--     every block answered before the last completed FLUSH (or with FUA)
--     reads back exactly; a block written after it reads its old content,
--     its new content, or zeroes, never another block's bytes; no content
--     a later write can share lacks its bytes. The worst left behind is
--     leaked blocks, which `dedup-fsck --repair` frees.
--   * Errors are fail-stop: a decision that fails (a damaged record, a
--     failed read, a bug) marks the store broken before another request
--     may decide, a failed data or batch write does the same, and no
--     batch decided after it is written: what RocksDB holds is what a
--     crash would have left. Writes are then refused (one log line);
--     reads go on.
--
-- Collisions. XXH3-128 is not a cryptographic hash. For n distinct blocks
-- the chance that any two collide is about n^2 / 2^129: 1e-20 for 2^32
-- blocks (16 TiB of 4K blocks), far below the disk's own undetected error
-- rate. A collision crafted on purpose is feasible, though, so a store whose
-- writers are not trusted should say verify=true: on a hash match the bytes
-- are compared (as VDO does) before they are shared: with the writer's
-- buffer while its request is in flight, else read back from the file, at
-- the cost of a read per duplicate block. Bytes that differ are stored as
-- a content of their own (the index keeps naming the first), logged (the
-- first ten) and counted (dedup_verify_mismatches). Default: verify=false.
--
-- Concurrency (lua/usbd/dedup/locks.lua). A request takes a lock on the
-- logical blocks it touches (readers share; writers exclude, in arrival
-- order, so writes to one block are applied in order, and a
-- read-modify-write of a partial block sees no other change while it
-- waits). Two writers also exclude each other within a 256-block span, as
-- an extent may cover blocks either touches; a reader reads the map from
-- one snapshot (RocksDB's, or the span's extents cached in memory and
-- edited once a batch that changes them is written), where every extent is
-- right for its blocks. The metadata decisions of one request (lookups,
-- references, allocation) are made under one mutex, in memory, on records
-- that stay cached while a batch that changes them is unwritten, so two
-- requests writing the same new block at once store it once. Data writes,
-- hashing, map reads and batch writes of different requests overlap.
--
-- Reads without copies. Without compress=, a read's blocks that are in the
-- page cache are not copied into its buffer: the reply is sent straight
-- from the block file's pages (usbd.file's map; lend, in
-- lua/usbd/dedup/read.lua). The read lock is held only while read_at runs,
-- so a reply may still be waiting to be sent when a write frees its
-- blocks; the ids stay in limbo until a sync of the WAL (release, in
-- lua/usbd/dedup/commit.lua), which settles such replies
-- (usbd.settle_borrowed copies what they have not sent) before the ids can
-- be reused and their blocks rewritten.
local bit = require "bit"
local ffi = require "ffi"
local usbd = require "usbd"
local store = require "usbd.dedup.store"
local format = require "usbd.dedup.format"

local floor = math.floor
local EXTENTS_MAX = 65536    -- blocks one extents answer describes at most

-- The device is a store (lua/usbd/dedup/store.lua) with the methods the
-- server calls: its class holds the store's methods, and these.
local Dedupdisk = store.class()

-- ---- Opening: the arguments -------------------------------------------------

local function open(args)
    local dir = args.dir
    if not dir or dir == "" then
        error("dedupdisk needs dir=DIR (and size=SIZE to create a store)", 0)
    end
    dir = dir:gsub("/+$", "")
    local block = usbd.size_arg(args, "block", "4K")
    if block < 512 or block > 65536 or bit.band(block, block - 1) ~= 0 then
        error("block=" .. args.block .. ": a power of two from 512 to 64K", 0)
    end
    local size = usbd.size_arg(args, "size")
    if size and (size <= 0 or size % block ~= 0) then
        error(("size=%s: a positive multiple of the block size (%d)"):format(args.size, block), 0)
    end
    local index_bytes = usbd.size_arg(args, "index", "64M")
    if index_bytes < 4096 then error("index=" .. args.index .. ": at least 4K", 0) end
    local map_cache = tonumber(args.map_cache or 524288)
    if not map_cache or map_cache < 1 then
        error("map_cache=" .. args.map_cache .. ": a number of map entries, at least 1", 0)
    end
    local records = tonumber(args.records or 16384)
    if not records or records < 1 then error("records=" .. args.records .. ": a number of records, at least 1", 0) end
    local codec = args.compress and usbd.codec.new(args.compress)  -- a bad spec: its one-line error
    return store.open(dir, {
        size = size, block = block, block_given = args.block ~= nil, compress = codec and codec.spec,
        cache = usbd.size_arg(args, "cache", "64M"), memtable = usbd.size_arg(args, "memtable", "64M"),
        index = index_bytes, records = records, map_cache = map_cache,
        verify = usbd.parse_bool(args, "verify", false),
    }, Dedupdisk)
end

function Dedupdisk:size() return self.bytes end
function Dedupdisk:block_size() return self.block end

-- ---- Reading ----------------------------------------------------------------

-- Aligned reads go straight into buf; others through whole blocks.
function Dedupdisk:read_at(buf, pos)
    local b = self.block
    self:locked(floor(pos / b), floor((pos + buf.len - 1) / b), false, self.read_locked, pos, buf)
end

function Dedupdisk:read_locked(pos, buf)
    local b, len = self.block, buf.len
    local first, last = floor(pos / b), floor((pos + len - 1) / b)
    if pos % b == 0 and len % b == 0 then
        self:load(buf, first, self.map ~= nil)
    else
        local n = last - first + 1
        local s = self:scratch(n)
        self:load(s:sub(0, n * b), first)
        buf:copy_from(s:sub(pos - first * b, len))
        self:unscratch(s, n)
    end
end

-- ---- Writing ----------------------------------------------------------------

-- Aligned writes are stored straight from buf; others read-modify-write
-- the blocks at their edges (under the lock, so nothing changes meanwhile).
function Dedupdisk:write_at(buf, pos)
    local b = self.block
    self:locked(floor(pos / b), floor((pos + buf.len - 1) / b), true, self.write_locked, pos, buf)
end

function Dedupdisk:write_locked(pos, buf)
    local b, len = self.block, buf.len
    local first, last = floor(pos / b), floor((pos + len - 1) / b)
    if pos % b == 0 and len % b == 0 then
        self:store(buf, first)
    else
        self:patch(first, last, function(s) s:copy_from(buf, pos - first * b) end)
    end
end

-- Read blocks [first, last] whose edges are partly changed, change them
-- with fill(scratch), store them.
function Dedupdisk:patch(first, last, fill)
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
function Dedupdisk:zero(pos, count)
    if self.broken then error(usbd.E.IO, 0) end
    local b = self.block
    self:locked(floor(pos / b), floor((pos + count - 1) / b), true, self.zero_locked, pos, count)
end

function Dedupdisk:zero_locked(pos, count)
    local b = self.block
    local first, last = floor(pos / b), floor((pos + count - 1) / b)
    local whole_first = math.ceil(pos / b)
    local whole_end = floor((pos + count) / b)   -- exclusive
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
end

function Dedupdisk:trim(pos, count) self:zero(pos, count) end
function Dedupdisk:write_zeroes(pos, count) self:zero(pos, count) end

-- ---- Flush, extents, statistics, close --------------------------------------

-- Every write answered before this is durable once it returns: a
-- checkpoint of the store (lua/usbd/dedup/commit.lua): the block file
-- synced, then the WAL. FUA is a write and then this, which the server
-- does.
function Dedupdisk:flush() self:checkpoint() end

-- Runs from pos: mapped blocks are data, the rest holes that read as zeroes.
function Dedupdisk:extents(pos, count)
    local b = self.block
    local first = floor(pos / b)
    local stop = math.min(math.ceil((pos + count) / b), first + EXTENTS_MAX)
    local out = {}
    local at = first   -- next block to describe
    local function run(upto, flags)
        upto = math.min(upto, stop)
        if upto <= at then return end
        local from = math.max(at * b, pos)
        local len = upto * b - from
        local k = #out
        if k > 0 and out[k] == flags then
            out[k - 1] = out[k - 1] + len
        else
            out[k + 1], out[k + 2] = len, flags
        end
        at = upto
    end
    local hole = usbd.HOLE + usbd.ZERO
    for _, e in ipairs(self:extents_over(first, stop - 1)) do
        run(e.last - e.count + 1, hole)
        run(e.last + 1, 0)
    end
    run(stop, hole)
    return out
end

local function ratio(a, b)
    return b > 0 and floor(a / b * 100 + 0.5) / 100 or 1
end

function Dedupdisk:stats()
    local b, c = self.block, self.counters
    local in_use = self.codec and c.pbns_next - c.pbns_free or c.unique   -- physical blocks holding data
    local file_bytes = self.file:size()
    return {
        dedup_logical_bytes = c.mapped * b,
        dedup_unique_bytes = c.unique * b,
        dedup_zero_blocks = self.blocks - c.mapped,
        dedup_ratio = ratio(c.mapped, c.unique),
        dedup_free_blocks = self.codec and c.pbns_free or c.ids_free,
        dedup_block_file_bytes = file_bytes,
        dedup_block_file_allocated = self.file:allocated(),
        dedup_metadata_bytes = self.db:disk_bytes() - file_bytes - self.index:bytes(),
        dedup_index_bytes = self.index:bytes(),
        dedup_index_entries = self.index:slots(),
        dedup_index_used = self.index:used(),
        dedup_index_evictions = self.index:evicted(),
        dedup_hits = self.stats_hits,
        dedup_zero_writes = self.stats_zero_writes,
        dedup_verify_mismatches = self.stats_collisions,
        -- compress=: unique content against the physical blocks it takes
        dedup_compress = self.codec and self.codec.spec or "none",
        dedup_stored_bytes = in_use * b,
        dedup_compression_ratio = ratio(c.unique, in_use),
        dedup_combined_ratio = ratio(c.mapped, in_use),
    }
end

-- The server flushes before it closes; a store closed without a flush (a
-- spec, the store check's repair) checkpoints first, and lets go of its
-- files.
function Dedupdisk:close() self:close_store() end

-- params: the keys open takes; any other is refused, naming it.
return {
    open = open,
    format = format,
    params = {
        dir = "the store's directory", size = "the disk's size, for a new store",
        block = "the block size, for a new store (default 4K)", verify = "compare bytes on a hash match (default false)",
        index = "the hash index's bytes, 8 per entry; 16 per unique block finds 99% (default 64M)",
        records = "content records kept in memory, 64 contents each (default 16384)",
        map_cache = "map entries kept in memory, a span's extents and one for the span (default 524288)",
        cache = "RocksDB's block cache (default 64M)", memtable = "RocksDB's write buffer (default 64M)",
        compress = "lz4 or zstd[:LEVEL], for a new store: blocks stored compressed (default none)",
    },
}

-- usbd.dedup.format: the dedupdisk's store format, shared by the store
-- (lua/usbd/dedup/store.lua) and tools/dedup-fsck.lua: keys and their
-- encodings, the M record, the counters, records' slots, P records,
-- opening a store and rebuilding its hash index.
--
-- The store (format 3). A stored content has an id (from 1); the contents
-- of ids g*64 .. g*64+63 are one record. Keys hold numbers big-endian (so
-- they sort), values little-endian.
--   M            "usbd-dedupdisk 3 block=B size=S": what this store is
--   C            counters: mapped logical blocks, unique contents, free
--                ids, ids ever used; free and ever used physical blocks
--                (compress= only)
--   L last       -> id, count: logical blocks last-count+1 .. last hold
--                contents id .. id+count-1 (an extent; none crosses a
--                multiple of 256 blocks). Absent: the blocks read as zeroes.
--   R g          -> 64 slots: references (u32) and hash (16 bytes) of ids
--                g*64 .. g*64+63; with compress= also where it is (u16
--                offset, u16 size: 0 raw; u64 physical block). 0
--                references: the id holds nothing, and is free.
-- The records are the free list of ids: a refill reads them, 64 at a
-- time, from where the last one stopped. (Format 2 kept free runs of ids
-- besides, F first -> count: a rewrite of scattered blocks wrote one per
-- block freed and taken. Opening a format 2 store drops them, in one
-- batch, and makes it format 3.)
-- Without compress= an id is its physical block: content id is at
-- (id - 1) * block in DIR/blocks, so a sequential write is one extent and
-- one or two records, and a read needs the map alone.
-- With compress= ids hold no data: their slot says where it is, and
--   G first      -> count: physical blocks first .. first+count-1 are free
--                (runs side by side may be records apart: the allocator
--                joins them in memory and rewrites them as one with the
--                next batch that takes physical blocks)
--   P g          -> the live fragments of packed blocks g*64 .. g*64+63
--                (physical block numbers), as u16s (little-endian): for
--                each such block that holds any, in increasing order, k
--                (its pbn - g*64), n, then n pairs offset, size sorted by
--                offset. Absent: none of the 64 holds a fragment. A raw
--                block is never listed. (A request filling 128 packed
--                blocks writes 2 or 3 records; Pkey(g), Pdecode, Pencode
--                and PGROUP give the store check these.)
-- The journal (J seq) is usbd.dedup.journal's. The hash index
-- (DIR/hashindex, usbd.dedup.hashindex) is not in RocksDB: advisory, it
-- is rebuilt from the records when lost (rebuild_index).
local ffi = require "ffi"
local bit = require "bit"
local usbd = require "usbd"

local VERSION = 3
local GROUP = 64             -- contents per record
local CHUNK = 256            -- no extent crosses a multiple of this
local PGROUP = 64            -- packed blocks per P record

if not pcall(ffi.typeof, "struct dedup_slot") then
    ffi.cdef [[
    struct dedup_slot { uint32_t refs; uint8_t hash[16]; };
    struct dedup_zslot { uint32_t refs; uint8_t hash[16]; uint16_t off, size; uint64_t pbn; };
    struct dedup_extent { uint64_t id, count; };
    ]]
end
local slot_ptr = { [false] = ffi.typeof("struct dedup_slot *"), [true] = ffi.typeof("struct dedup_zslot *") }
local u64p = ffi.typeof("uint64_t *")
local u8p = ffi.typeof("uint8_t *")
local extent_ptr = ffi.typeof("struct dedup_extent *")

-- ---- Encoding -------------------------------------------------------------

local char, byte = string.char, string.byte
local band, rshift = bit.band, bit.rshift
local floor = math.floor

local function be64(n)
    local hi, lo = floor(n / 4294967296), n % 4294967296
    return char(band(rshift(hi, 24), 255), band(rshift(hi, 16), 255), band(rshift(hi, 8), 255), band(hi, 255),
        band(rshift(lo, 24), 255), band(rshift(lo, 16), 255), band(rshift(lo, 8), 255), band(lo, 255))
end

local function un64(s, at)
    at = at or 1
    local a, b, c, d, e, f, g, h = byte(s, at, at + 7)
    return ((a * 256 + b) * 256 + c) * 256 * 4294967296 + d * 4294967296
        + ((e * 256 + f) * 256 + g) * 256 + h
end

-- The big-endian number at byte at of a uint8_t array (no string made).
local function un64_at(p, at)
    return ((p[at] * 256 + p[at + 1]) * 256 + p[at + 2]) * 256 * 4294967296 + p[at + 3] * 4294967296
        + ((p[at + 4] * 256 + p[at + 5]) * 256 + p[at + 6]) * 256 + p[at + 7]
end

-- The same into bytes p[at..at+7].
local function put64(p, at, n)
    local hi, lo = floor(n / 4294967296), n % 4294967296
    p[at], p[at + 1] = band(rshift(hi, 24), 255), band(rshift(hi, 16), 255)
    p[at + 2], p[at + 3] = band(rshift(hi, 8), 255), band(hi, 255)
    p[at + 4], p[at + 5] = band(rshift(lo, 24), 255), band(rshift(lo, 16), 255)
    p[at + 6], p[at + 7] = band(rshift(lo, 8), 255), band(lo, 255)
end

local function Lkey(lba) return "L" .. be64(lba) end
local function Rkey(g) return "R" .. be64(g) end
local function Pkey(pbn) return "P" .. be64(pbn) end

-- Little-endian u64s as a string (run lengths, counters).
local function le64s(...)
    local n = select("#", ...)
    local a = ffi.new("uint64_t[?]", n, ...)
    return ffi.string(a, 8 * n)
end
local function un_le64(s, i)
    local a = ffi.cast(u64p, ffi.cast("const char *", s))
    return tonumber(a[i or 0])
end

-- Are the 16 bytes at a and b the same? (two 8-byte loads each)
local function same16(a, b)
    local x, y = ffi.cast(u64p, a), ffi.cast(u64p, b)
    return x[0] == y[0] and x[1] == y[1]
end

-- L last -> id, count, straight into batch (no string made).
local lkey_bytes, lval = ffi.new("uint8_t[9]"), ffi.new("struct dedup_extent[1]")
lkey_bytes[0] = byte("L")
local function put_L(batch, last, id, count)
    put64(lkey_bytes, 1, last)
    lval[0].id, lval[0].count = id, count
    batch:put(lkey_bytes, ffi.cast(u8p, lval), 9, 16)
end
local function delete_L(batch, last)
    put64(lkey_bytes, 1, last)
    batch:delete(lkey_bytes, 9)
end

-- R g -> a record's bytes, and the counters, the same way.
local rkey_bytes, cval = ffi.new("uint8_t[9]"), ffi.new("uint64_t[6]")
rkey_bytes[0] = byte("R")
local function put_R(batch, g, buf, len)
    put64(rkey_bytes, 1, g)
    batch:put(rkey_bytes, buf, 9, len)
end
-- Counters: mapped, unique, free ids, ids used, free pbns, pbns used.
local function put_C(batch, c)
    cval[0], cval[1], cval[2], cval[3], cval[4], cval[5] =
        c.mapped, c.unique, c.ids_free, c.ids_next, c.pbns_free, c.pbns_next
    batch:put("C", ffi.cast(u8p, cval), 1, 48)
end

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

local COUNTERS = { "mapped", "unique", "ids_free", "ids_next", "pbns_free", "pbns_next" }
local function Cdecode(s)
    if not s or #s ~= 48 then return nil end
    local c = {}
    for i, name in ipairs(COUNTERS) do c[name] = un_le64(s, i - 1) end
    return c
end

local format = { VERSION = VERSION, GROUP = GROUP, CHUNK = CHUNK, PGROUP = PGROUP,
    be64 = be64, un64 = un64, un64_at = un64_at, put64 = put64, le64s = le64s, un_le64 = un_le64,
    same16 = same16, Lkey = Lkey, Rkey = Rkey, Pkey = Pkey, put_L = put_L, delete_L = delete_L,
    put_R = put_R, put_C = put_C, Cdecode = Cdecode, meta_string = meta_string, parse_meta = parse_meta,
    slot_ptr = slot_ptr, extent_ptr = extent_ptr }

function format.record_bytes(compressed)
    return GROUP * ffi.sizeof(compressed and "struct dedup_zslot" or "struct dedup_slot")
end

-- Sort list[1..n] of numbers. (table.sort calls back into the VM for
-- every comparison, which the JIT does not compile: sorting a scattered
-- rewrite's freed ids that way was 3% of its CPU. A merge, bottom up.)
local sort_scratch = {}
local function sort_numbers(list, n)
    local src, dst, width = list, sort_scratch, 1
    while width < n do
        for lo = 1, n, 2 * width do
            local mid, hi = math.min(lo + width, n + 1), math.min(lo + 2 * width, n + 1)
            local i, j = lo, mid
            for k = lo, hi - 1 do
                if j >= hi or (i < mid and src[i] <= src[j]) then
                    dst[k], i = src[i], i + 1
                else
                    dst[k], j = src[j], j + 1
                end
            end
        end
        src, dst, width = dst, src, 2 * width
    end
    if src ~= list then
        for k = 1, n do list[k] = src[k] end
    end
end
format.sort_numbers = sort_numbers

local u16p = ffi.typeof("uint16_t *")

-- The live lists a P record holds ({ [pbn] = list }), or nil when it is not
-- one (a damaged store).
function format.Pdecode(s, g)
    local words = #s / 2
    if words ~= floor(words) then return nil end
    local a = ffi.cast(u16p, ffi.cast("const char *", s))
    local lives, i = {}, 0
    while i < words do
        local k, cnt = i + 2 <= words and a[i], i + 2 <= words and a[i + 1]
        if not k or k >= PGROUP or cnt == 0 or i + 2 + 2 * cnt > words or lives[g * PGROUP + k] then
            return nil
        end
        local live = {}
        for j = 1, 2 * cnt do live[j] = a[i + 1 + j] end
        lives[g * PGROUP + k] = live
        i = i + 2 + 2 * cnt
    end
    return lives
end

-- The u16s of P record g from lives ({ [pbn] = list }): how many (0: the
-- record goes), and with a (room for them) written there.
function format.P_words(lives, g, a)
    local i, base = 0, g * PGROUP
    for k = 0, PGROUP - 1 do
        local live = lives[base + k]
        if live and #live > 0 then
            local cnt = #live
            if a then
                a[i], a[i + 1] = k, cnt / 2
                for j = 1, cnt do a[i + 1 + j] = live[j] end
            end
            i = i + 2 + cnt
        end
    end
    return i
end

-- P record g's value (nil: none, the key goes).
function format.Pencode(lives, g)
    local words = format.P_words(lives, g)
    if words == 0 then return nil end
    local a = ffi.new("uint16_t[?]", words)
    format.P_words(lives, g, a)
    return ffi.string(a, 2 * words)
end


function format.exists(path)
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
-- db and what the store is (block, size, compress, counters). A damaged or
-- foreign store is a one-line error.
local function open_store(dir, opts)
    local fresh = not format.exists(dir .. "/CURRENT")
    if fresh then
        if not opts.size then
            error(dir .. " holds no dedupdisk store: give size=SIZE to create one", 0)
        end
        if format.exists(dir) and not dir_is_empty(dir) then
            error(dir .. " is not a dedupdisk store (not empty, no RocksDB in it)", 0)
        end
    end
    local okdb, db = pcall(usbd.kv.open, dir, { create = fresh, cache = opts.cache, write_buffer = opts.memtable })
    if not okdb then
        if tostring(db):match("LOCK: Resource temporarily unavailable") then
            error(dir .. ": a server is using this store (stop it first)", 0)
        end
        error(db, 0)
    end
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
            put_C(b, { mapped = 0, unique = 0, ids_free = 0, ids_next = 0, pbns_free = 0, pbns_next = 0 })
            db:write(b, true)
        end
        local version, block, size, compress = parse_meta(meta)
        if not version then
            error(dir .. " is not a dedupdisk store (its record reads '" .. meta:sub(1, 40) .. "')", 0)
        end
        if version == 2 and opts.upgrade then
            -- Format 3 only drops the free runs of ids (F): the records
            -- say which ids are free. One atomic batch, synced.
            local b = usbd.kv.batch()
            b:delete_range("F", "G")
            meta = meta_string(block, size, compress)
            b:put("M", meta)
            db:write(b, true)
            usbd.log(1, "dedupdisk: %s: store format 2 upgraded to %d (free ids are read from the records)", dir, VERSION)
            version = VERSION
        end
        if version == 2 then
            error(("%s is a dedupdisk store of format 2: open it once with devices/dedupdisk.lua, which upgrades it to format %d")
                :format(dir, VERSION), 0)
        end
        if version ~= VERSION then
            error(("%s is a dedupdisk store of version %d; this is version %d (copy the disk's data out with the old version)")
                :format(dir, version, VERSION), 0)
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
        local c = Cdecode(db:get("C"))
        if not c then error(dir .. ": the counters record is damaged", 0) end
        return { block = block, size = size, compress = compress, counters = c }
    end)
    if not ok then
        db:close()
        error(err, 0)
    end
    return db, err
end
format.open_store = open_store

-- Every content's hash into the index (a new or lost index): one pass over
-- the records.
local function rebuild_index(db, index, compressed)
    local rbytes = format.record_bytes(compressed)
    local sp = slot_ptr[compressed]
    local from = "R"
    while true do
        local n, kb, _, vb = db:scan_raw(from, "S", 1024, 9, rbytes)
        for j = 0, n - 1 do
            local g = un64_at(kb, j * 9 + 1)
            local slots = ffi.cast(sp, vb + j * rbytes)
            for k = 0, GROUP - 1 do
                if slots[k].refs > 0 then index:put(slots[k].hash, g * GROUP + k) end
            end
        end
        if n < 1024 then return end
        from = Rkey(un64_at(kb, (n - 1) * 9 + 1) + 1)
    end
end
format.rebuild_index = rebuild_index

-- fn(key, key_len, value, value_len) (uint8_t pointers) for every key with
-- prefix, in order. A value longer than value_max is read again with room
-- for it, so an odd size is the caller's to report.
function format.each(db, prefix, value_max, fn)
    local from, stop, key_max = prefix, string.char(prefix:byte() + 1), 16
    while true do
        local page = math.max(16, math.min(65536, floor(4 * 2 ^ 20 / (key_max + value_max))))
        local ok, n, kb, kl, vb, vl = pcall(db.scan_raw, db, from, stop, page, key_max, value_max)
        if not ok then
            local len = tostring(n):match("a value of (%d+) bytes is longer")
            if not len or value_max >= 2 ^ 24 then error(n, 0) end
            value_max = math.max(tonumber(len), value_max * 2)
        else
            for i = 0, n - 1 do
                fn(kb + i * key_max, kl[i], vb + i * value_max, vl[i])
            end
            if n < page then return end
            from = ffi.string(kb + (n - 1) * key_max, kl[n - 1]) .. "\0"
        end
    end
end

-- XXH3-128 of each block of buf into out (16 bytes each). For tests
-- only, USBD_DEDUP_TEST_HASH_BYTES=k keeps the first k bytes of each hash
-- and zeroes the rest, so that different blocks collide as a crafted
-- collision would.
local weak = tonumber(os.getenv("USBD_DEDUP_TEST_HASH_BYTES") or "")
function format.block_hashes(buf, block, out)
    buf:block_hashes(block, out)
    if weak then
        for i = 0, buf.len / block - 1 do ffi.fill(out + 16 * i + weak, 16 - weak) end
    end
    return out
end

-- The hash of a block of zeroes (block bytes), made once per size.
local zero_hashes = {}
function format.zero_hash(block)
    local z = zero_hashes[block]
    if not z then
        z = format.block_hashes(usbd.buffer(block), block, ffi.new("uint8_t[16]"))
        zero_hashes[block] = z
    end
    return z
end

-- The hash each block of buf is stored under, into out (16 bytes a
-- block): its hash (block_hashes), but a block of other bytes that has
-- the hash of zeroes gets a bit of it flipped, so that only a block of
-- zeroes hashes to zero_hash. The device, the crash check and the store
-- check all hash contents this one way. Returns out.
function format.content_hashes(buf, block, out)
    format.block_hashes(buf, block, out)
    local z = format.zero_hash(block)
    for i = 0, buf.len / block - 1 do
        local h = out + 16 * i
        if same16(h, z) and not buf:sub(i * block, block):is_zero() then h[15] = bit.bxor(h[15], 1) end
    end
    return out
end

return format

-- usbd.dedup.records: the contents' records, cached, and their references.
--
-- Record g holds the slots of ids g*64 .. g*64+63 (usbd.dedup.format: a
-- reference count and a hash; compressed, also where the content is).
-- Records are read and changed only in the metadata mutex, through a cache
-- of at most records= of them: one staged by a batch not yet written stays
-- cached (RocksDB has an older value), so the next decision sees what the
-- last one decided; the others go, least recently used first. A content's
-- last reference going frees its id (and, compressed, where it was) in the
-- batch that drops it, and takes its hash out of the index with the
-- batch's other removals when the batch is queued.
--
-- Fields: rc (group -> { buf, slots, pend = batches staging it not yet
-- written, tick = last use }), rc_count, rc_max, rbytes and slot_t (a
-- record's size and slot type), rm_* (the index removals waiting for their
-- batch to be queued).
local ffi = require "ffi"
local usbd = require "usbd"
local F = require "usbd.dedup.format"

local GROUP, Rkey, same16 = F.GROUP, F.Rkey, F.same16
local floor = math.floor

-- The hash index finds a content only while its bucket of 8 has room: with
-- as many contents as 3/4 of its entries, about 5% of them are no longer
-- found (their duplicates are stored again), at as many as its entries
-- 14%. Said once per open, at 3/4; the statistics carry the rest.
local INDEX_FULL = 0.75

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_records(max, compressed)
    self.rc, self.rc_count, self.rc_max = {}, 0, max
    self.rbytes, self.slot_t = F.record_bytes(compressed), F.slot_ptr[compressed]
    self.rm_n, self.rm_cap = 0, 256
    self.rm_h, self.rm_ids = ffi.new("const uint8_t *[256]"), ffi.new("uint64_t[256]")
    self.index_full_at = math.ceil(INDEX_FULL * self.index:slots())
end

-- ---- The record cache -------------------------------------------------------

-- A cache of tick-stamped entries ({ pend = batches staging it not yet
-- written, tick = last use }) has grown past max: its least recently used
-- idle entries (pend 0, not in keep) go until count is 3/4 of max. The
-- oldest are found by counting their ticks in 64 ranges (a sort of up to
-- 16K entries with a Lua comparator held the mutex for tens of
-- milliseconds). Returns the new count.
local function evict_oldest(cache, count, max, keep)
    local lo, hi = math.huge, -math.huge
    for g, o in pairs(cache) do
        if o.pend == 0 and not (keep and keep[g]) then
            if o.tick < lo then lo = o.tick end
            if o.tick > hi then hi = o.tick end
        end
    end
    if lo > hi then return count end
    local width = (hi - lo + 1) / 64
    local counts = {}
    for k = 0, 64 do counts[k] = 0 end
    for g, o in pairs(cache) do
        if o.pend == 0 and not (keep and keep[g]) then
            local k = floor((o.tick - lo) / width)
            counts[k] = counts[k] + 1
        end
    end
    local want, cut, sum = count - floor(max * 3 / 4), 0, 0
    while cut < 64 and sum < want do
        sum = sum + counts[cut]
        cut = cut + 1
    end
    local limit = lo + cut * width   -- the idle ones older than this go
    for g, o in pairs(cache) do
        if o.pend == 0 and o.tick < limit and not (keep and keep[g]) then
            cache[g] = nil
            count = count - 1
        end
    end
    return count
end

-- Records are read and changed only in the mutex. One staged by a batch
-- not yet written stays cached (RocksDB has an older value); the others
-- go, least recently used first, when there are too many.
function Dedup:evict()
    self.rc_count = evict_oldest(self.rc, self.rc_count, self.rc_max)
end

-- Records of groups (a set), into the cache: those missing in one
-- multi-get (an absent record: 64 empty slots).
function Dedup:load_records(groups)
    local keys, want   -- (made only when one is missing: most writes find all cached)
    for g in pairs(groups) do
        if not self.rc[g] then
            if not keys then keys, want = {}, {} end
            keys[#keys + 1], want[#want + 1] = Rkey(g), g
        end
    end
    if not keys then return end
    local vals = self.db:multi_get(keys, self.rbytes)
    for i = 1, #want do
        local g = want[i]
        if not self.rc[g] then  -- (only the mutex's holder loads records)
            self:cache_record(g, vals[i])
        end
    end
end

-- Cache record g as stored (v: its bytes, nil: none yet, all slots free).
function Dedup:cache_record(g, v)
    local buf = ffi.new("uint8_t[?]", self.rbytes)
    if v then
        if #v ~= self.rbytes then error(("dedupdisk: record %d is damaged (%d bytes)"):format(g, #v), 0) end
        ffi.copy(buf, v, #v)
    end
    self.rc[g] = { buf = buf, slots = ffi.cast(self.slot_t, buf), pend = 0, tick = self.tick }
    self.rc_count = self.rc_count + 1
end

-- The slot of id, and its record (loaded if need be).
function Dedup:slot(id)
    local g = floor(id / GROUP)
    local r = self.rc[g]
    if not r then
        self:load_records({ [g] = true })
        r = self.rc[g]
    end
    r.tick = self.tick
    return r.slots + (id - g * GROUP), r, g
end

-- id when its record holds content h (16 bytes at a pointer), else 0: an
-- index entry gone stale (freed, or the id reused for other bytes).
function Dedup:holding(id, h)
    if id == 0 then return 0 end
    local s = self:slot(id)
    if s.refs == 0 or not same16(s.hash, h) then return 0 end
    return id
end

-- ---- Contents: references ---------------------------------------------------

-- A changed record goes into the batch when it is queued (its latest value).
local function touch(st, g, r) st.recs[g] = r end

-- One more reference to id (a new content or a duplicate).
function Dedup:ref(st, id)
    local s, r, g = self:slot(id)
    s.refs = s.refs + 1
    touch(st, g, r)
end

-- k fewer references to id; the last one gone frees it (and, compressed,
-- where it was).
function Dedup:unref(st, id, k)
    local s, r, g = self:slot(id)
    local left = s.refs - k
    if left < 0 or s.refs == 0 then
        error(("dedupdisk: a mapping names id %d, whose record holds %d references: store damaged (run the store check)")
            :format(id, s.refs), 0)
    end
    s.refs = left
    touch(st, g, r)
    if left > 0 then return end
    local c = self.counters
    c.unique = c.unique - 1
    self:index_remove(s.hash, id)
    st.freed_ids[#st.freed_ids + 1] = id
    if self.codec then
        if s.size > 0 then
            local f = st.frag_frees   -- flat: pbn, off, size (no table per fragment)
            local nf = #f
            f[nf + 1], f[nf + 2], f[nf + 3] = tonumber(s.pbn), s.off, s.size
        else
            st.freed_pbns[#st.freed_pbns + 1] = tonumber(s.pbn)
        end
    end
end

-- The index entry of a content whose last reference went, removed when
-- the batch is queued (index_removes), with the others of the batch: in
-- one call that prefetches (a rewrite of scattered blocks removes one per
-- block, each a cache miss). In the mutex; the slot's hash stays put, as
-- its record stays cached while the batch is unwritten.
function Dedup:index_remove(hash, id)
    local n = self.rm_n
    if n == self.rm_cap then
        local cap = 2 * n
        local h, ids = ffi.new("const uint8_t *[?]", cap), ffi.new("uint64_t[?]", cap)
        ffi.copy(h, self.rm_h, n * ffi.sizeof("const uint8_t *"))
        ffi.copy(ids, self.rm_ids, n * 8)
        self.rm_h, self.rm_ids, self.rm_cap = h, ids, cap
    end
    self.rm_h[n], self.rm_ids[n] = hash, id
    self.rm_n = n + 1
end

function Dedup:index_removes()
    if self.rm_n > 0 then
        self.index:remove_many(self.rm_h, self.rm_ids, self.rm_n)
        self.rm_n = 0
    end
end

-- A new content with hash h (16 bytes at a pointer): its id, one
-- reference, an index entry (apart: none, as the index names another
-- content with that hash), and a place in the batch's journal list.
function Dedup:add_content(st, h, apart)
    local id, new = self.ids:take(st)
    if new and (id == 1 or id % GROUP == 0) then
        -- The first id of its group ever used: its record is not in
        -- RocksDB (records and counters change in the same batches).
        self:cache_record(floor(id / GROUP), nil)
    end
    local s, r, g = self:slot(id)
    s.refs = 1
    ffi.copy(s.hash, h, 16)
    touch(st, g, r)
    if not apart then self.index:put(h, id) end
    self.counters.unique = self.counters.unique + 1
    if self.counters.unique >= self.index_full_at then self:index_filling() end
    st.jids[#st.jids + 1] = id
    return id, s
end

function Dedup:index_filling()
    self.index_full_at = math.huge
    local slots, unique = self.index:slots(), self.counters.unique
    local advice = math.ceil(32 * unique / 2 ^ 20)   -- 16 bytes a content, twice as many contents
    usbd.log(0, "dedupdisk: %s: the hash index (%d entries) holds %d contents, %d%% of its entries: "
        .. "duplicates of some are missed from now on; reopen with index=%dM or more to find them all",
        self.dir, slots, unique, floor(100 * unique / slots), advice)
end

return { methods = Dedup, evict_oldest = evict_oldest }

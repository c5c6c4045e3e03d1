-- usbd.dedup.read: reading whole blocks from the dedupdisk's store.
--
-- A read takes its blocks' ids from the map (usbd.dedup.map) and reads
-- their contents: without compress=, an id is its physical block, and a
-- run of blocks whose pages are all in the page cache is lent to the
-- reply rather than copied (lend); with it, each content's slot says
-- where it is, a raw block or a fragment, and only the fragments needed
-- are read and decompressed, in one job (load_compressed). Reads take
-- no mutex: a live content's place never changes.
local ffi = require "ffi"
local usbd = require "usbd"
local F = require "usbd.dedup.format"

local GROUP, Rkey = F.GROUP, F.Rkey
local floor = math.floor
local LEND_PIECES = usbd.MAX_BORROWED  -- lent runs per read; the rest is read
local zeroes, ZERO_CHUNK = usbd.zeroes, usbd.ZEROES_MAX

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

-- Fill data (whole blocks) from logical blocks first on; lend: data is a
-- READ's own buffer, to which cached blocks may be lent.
function Dedup:load(data, first, lend)
    local b = self.block
    local n = data.len / b
    local w = self:work(n)
    local ok, err = pcall(self.load_work, self, data, first, n, w, lend)
    self:unwork(w)
    if not ok then error(err, 0) end
end

function Dedup:load_work(data, first, n, w, lend)
    local b, old, offsets = self.block, w.old, w.offsets
    self:map_read(first, n, old)
    if self.codec then return self:load_compressed(data, n, w) end
    local from = lend and self:lend(data, n, old) or 0
    if from == n then return end
    for i = from, n - 1 do
        local id = old[i]
        offsets[i] = id ~= 0 and (id - 1) * b or -1
    end
    if from > 0 then data = data:sub(from * b) end
    self.file:pread_blocks(data, b, offsets + from)  -- zeroes where nothing is mapped
end

-- The zero-copy read (without compress=): each run of blocks whose ids
-- follow one another is one range of the block file; while its pages are
-- all in the page cache it is lent to the reply (usbd.file's map), which
-- the server then sends from there, and unmapped blocks borrow zeroes.
-- Returns how many blocks from the first were lent: the first run that is
-- not cached, and all after it, are read as before. An id whose last
-- reference goes while a reply still borrows its block is not written
-- again before Dedup:release (usbd.dedup.commit) has settled the replies.
function Dedup:lend(data, n, old)
    local b, map, i, pieces = self.block, self.map, 0, 0
    while i < n and pieces < LEND_PIECES do
        local id, j = old[i], i + 1
        if id == 0 then
            while j < n and old[j] == 0 and (j - i) * b < ZERO_CHUNK do j = j + 1 end
            data:borrow(i * b, zeroes((j - i) * b))
        else
            while j < n and old[j] == id + (j - i) do j = j + 1 end
            if not map:lend(data, i * b, (id - 1) * b, (j - i) * b) then break end
        end
        pieces, i = pieces + 1, j
    end
    return i
end

-- compress=: where the contents are, from their slots. Outside the mutex
-- a record is read from the cache or RocksDB but never cached: a live
-- content's place never changes, so either copy tells it right.
function Dedup:load_compressed(data, n, w)
    local b = self.block
    local old, offsets = w.old, w.offsets
    -- recs[g]: a cached record (held here: the cache may drop it while we
    -- wait), or one read for this request.
    local recs, keys, want = {}, nil, nil
    for i = 0, n - 1 do
        local id = old[i]
        if id ~= 0 then
            local g = floor(id / GROUP)
            if recs[g] == nil then
                local r = self.rc[g]
                recs[g] = r or false
                if not r then
                    keys, want = keys or {}, want or {}
                    keys[#keys + 1], want[#want + 1] = Rkey(g), g
                end
            end
        end
    end
    if keys then
        local vals = self.db:multi_get(keys, self.rbytes)
        for j = 1, #want do
            local v = vals[j]
            if not v or #v ~= self.rbytes then
                error(("dedupdisk: record %d is missing or damaged: store damaged (run the store check)"):format(want[j]), 0)
            end
            local buf = ffi.new("uint8_t[?]", self.rbytes)
            ffi.copy(buf, v, #v)
            recs[want[j]] = { buf = buf, slots = ffi.cast(self.slot_t, buf) }
        end
    end
    -- Fragments into w's arrays: block i's is sizes[i] bytes (0: none) at
    -- at[i] of the scratch buffer, read from ranges[0 .. nf-1]. A fragment
    -- that starts at most a block past the end of the one before extends
    -- that one's range over the gap (read, unused): the fragments of a
    -- sequential write, which fill packed block after packed block, are
    -- read in one call, not one per packed block. The scratch buffer (n
    -- blocks) holds it all: after block i, used <= (i + 1) * block.
    if not w.fat then
        w.franges, w.fat, w.fsizes = w.franges or usbd.file.ranges(3 * w.cap), ffi.new("uint64_t[?]", w.cap),
            ffi.new("uint32_t[?]", w.cap)
    end
    local ranges, at, sizes = w.franges, w.fat, w.fsizes
    local nf, used, raw, last_end = 0, 0, false, -1
    for i = 0, n - 1 do
        local id = old[i]
        offsets[i], sizes[i] = -1, 0
        if id ~= 0 then
            local g = floor(id / GROUP)
            local s = recs[g].slots + (id - g * GROUP)
            local size = s.size
            if size == 0 then
                offsets[i], raw = (tonumber(s.pbn) - 1) * b, true
            else
                local pos = (tonumber(s.pbn) - 1) * b + s.off
                local gap = pos - last_end
                if nf > 0 and gap >= 0 and gap <= b and used + gap + size <= (i + 1) * b then
                    local r = ranges[nf - 1]
                    r.len = r.len + gap + size
                    used = used + gap
                else
                    local r = ranges[nf]
                    r.pos, r.at, r.len = pos, used, size
                    nf = nf + 1
                end
                at[i], sizes[i] = used, size
                used, last_end = used + size, pos + size
            end
        end
    end
    if raw or nf == 0 then
        self.file:pread_blocks(data, b, offsets)  -- zeroes where there is no raw block
    else
        for i = 0, n - 1 do
            if sizes[i] == 0 then ffi.fill(data.ptr + i * b, b) end
        end
    end
    if nf > 0 then self:read_fragments(data, n, ranges, nf, at, sizes) end
end

-- Read nf fragments (ranges: where in the file, where in a scratch buffer
-- of n blocks) and decompress them: sizes[i] bytes at at[i] into block i
-- of data (sizes[i] 0: left as it is). Only their bytes are read, and
-- decompressed in the same job.
function Dedup:read_fragments(data, n, ranges, nf, at, sizes)
    local s = self:scratch(n)
    local ok, err = pcall(self.codec.read_blocks, self.codec, self.file, ranges, nf, s, at, sizes, data, self.block)
    self:unscratch(s, n)
    if not ok then
        if err == usbd.E.IO then
            usbd.log(0, "dedupdisk: a stored fragment does not decompress: store damaged (run the store check)")
        end
        error(err, 0)
    end
end

return { methods = Dedup }

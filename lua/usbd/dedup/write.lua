-- usbd.dedup.write: storing whole blocks in the dedupdisk's store, and
-- unmapping them.
--
-- A write hashes its blocks and reads the map over them (and, compress=,
-- compresses them when some block looks new) outside the mutex; then, in
-- the mutex, decides (decide): which blocks stay as they are, which share
-- a content the index names (its record agreeing; verify=true: its bytes
-- too), which are new contents (an id, and compress=, a raw physical block
-- or a fragment's place); it stages the references, the map and the
-- counters in one batch and queues it. Out of the mutex it writes the new
-- blocks to the file, then commits the batch (usbd.dedup.commit). Trim and
-- write_zeroes unmap whole blocks the same way (unmap).
--
-- Fields: verify, inflight (id -> its bytes in a request not yet ended,
-- verify=true), stats_hits, stats_zero_writes, stats_collisions.
local ffi = require "ffi"
local clear = require "table.clear"
local usbd = require "usbd"
local F = require "usbd.dedup.format"
local packer = require "usbd.dedup.packer"

local GROUP, CHUNK, PGROUP, same16 = F.GROUP, F.CHUNK, F.PGROUP, F.same16
local floor = math.floor
local PIECE = 65536          -- a trim's blocks per batch
local SMALL_WRITE = 65536    -- bytes of new blocks written in their batch's job

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_write(verify)
    self.verify = verify
    self.inflight, self.stats_hits, self.stats_zero_writes, self.stats_collisions = {}, 0, 0, 0
end

-- ---- Storing whole blocks ---------------------------------------------------

-- Store data (whole blocks) as logical blocks from first on; the caller
-- holds the write lock on them.
function Dedup:store(data, first)
    if self.broken then error(usbd.E.IO, 0) end
    local n = data.len / self.block
    local w = self:work(n)
    local ok, err = pcall(self.store_work, self, data, first, n, w)
    local inflight = w.inflight
    for k = 1, #inflight do self.inflight[inflight[k]] = nil end
    clear(inflight)
    self:unwork(w)
    if not ok then error(err, 0) end
end

function Dedup:store_work(data, first, n, w)
    local b = self.block
    local hashes, zero = F.content_hashes(data, b, w.hashes), w.zero
    local zh = F.zero_hash(b)
    for i = 0, n - 1 do
        zero[i] = same16(hashes + 16 * i, zh) and 1 or 0   -- (only zeroes hash so)
    end
    -- Outside the mutex, so that requests wait for RocksDB side by side:
    -- the map (the range lock keeps it ours) and, with compress=, the
    -- compression of the request when some block looks new.
    local exts = {}
    self:map_read(first, n, w.old, exts)
    local packed = self.codec and self:compress_new(data, n, w)
    self:meta_enter()
    local ok, st, writes, frags = pcall(self.decide, self, data, first, n, w, exts, packed)
    if not ok then
        -- Fail-stop, before the next request may decide (meta_leave wakes
        -- it at once): memory may hold half of this decision, or
        -- the store is damaged or failing (a record, a read).
        self:break_down("deciding a write", st)
    end
    self:meta_leave()
    if not ok then
        if packed then packed:release() end
        error(st, 0)
    end
    if not st then
        if packed then packed:release() end
        return  -- nothing changed
    end

    local ok2, err = pcall(self.write_new, self, data, w, st, writes, frags, packed)
    if st.fills then self:end_fills(st) end
    if packed then packed:release() end
    if not ok2 then
        self:break_down("writing blocks", err)
        st.ready, st.batch, st.recs, st.runs, st.pkeys = true, usbd.kv.batch(), {}, {}, {}  -- keep the order; write nothing
        self:run_commits()
        error(err, 0)
    end
    self:commit(st)
end

-- The new contents decide() chose: whole blocks to w.offsets, fragments
-- (compress=) to w.franges. A small write's blocks go in the job that
-- writes its batch (run_commits), not in one of their own: at 4 KiB the
-- hand-overs to a worker and back were most of a request's wait. A large
-- write's go now, beside the other requests' work.
function Dedup:write_new(data, w, st, writes, frags, packed)
    if writes and not self.codec and data.len <= SMALL_WRITE then
        st.data_job = self.file:pwrite_blocks_job(data, self.block, w.offsets)
    elseif writes then
        self.file:pwrite_blocks(data, self.block, w.offsets)
    end
    if frags then
        self:await_fills(st)
        self.file:pwrite_ranges(packed.buf, w.franges, frags)
    end
end

-- compress=: the request's blocks compressed, when some block looks new
-- (no index entry: a duplicate costs no compression).
function Dedup:compress_new(data, n, w)
    local zero, cand = w.zero, w.cand
    self.index:lookup(w.hashes, n, cand)
    for i = 0, n - 1 do
        if zero[i] == 0 and cand[i] == 0 then
            return self.codec:compress(data, self.block)
        end
    end
    return nil
end

-- The record groups a decision reads: one table reused, as only the
-- mutex's holder decides.
local decide_groups = {}

-- In the mutex: decide, stage. Returns the staged batch and whether blocks
-- go to the file at w.offsets, and how many fragments to write (nil when
-- none): w.franges[0 ..], from packed.buf.
function Dedup:decide(data, first, n, w, exts, packed)
    local b, c = self.block, self.counters
    local hashes, zero, old, new, offsets = w.hashes, w.zero, w.old, w.new, w.offsets
    -- The records of what the blocks hold now, in one read.
    local any = false
    clear(decide_groups)
    for i = 0, n - 1 do
        if old[i] ~= 0 then decide_groups[floor(old[i] / GROUP)] = true end
    end
    self:load_records(decide_groups)
    -- What changes: a block that stays as it is costs nothing more.
    for i = 0, n - 1 do
        local o = old[i]
        if zero[i] == 1 then
            new[i] = 0
        elseif o ~= 0 and same16(self:slot(o).hash, hashes + 16 * i) then
            new[i] = o
        else
            new[i] = -1
        end
        if new[i] ~= o then any = true end
    end
    if not any then return nil end
    -- Duplicates the index names: their records, in one read.
    clear(decide_groups)
    local cand = w.cand
    -- (compress=: compress_new looked them up too, outside the mutex, to
    -- know whether to compress; looked up again here, the candidates are
    -- current and the index's windows in the cache for the puts below)
    self.index:lookup(hashes, n, cand)
    for i = 0, n - 1 do
        if new[i] == -1 and cand[i] ~= 0 then decide_groups[floor(tonumber(cand[i]) / GROUP)] = true end
    end
    self:load_records(decide_groups)

    local st = self:new_stage()
    local writes, frags
    -- (compress=) The smallest new fragment, when there are several: a
    -- lone one may yet share its block with a later request's.
    local least, nfrag = b, 0
    for i = 0, n - 1 do
        offsets[i] = -1   -- only new contents go to the file
        if new[i] == -1 then
            st.want = (st.want or 0) + 1
            local size = packed and packed:size(i) or 0
            if size > 0 then
                nfrag = nfrag + 1
                if size < least then least = size end
            end
        end
    end
    if nfrag < 2 then least = 0 end
    -- References: additions before removals, so a content that one logical
    -- block leaves and another joins is never freed on the way.
    for i = 0, n - 1 do
        if new[i] == -1 then
            local h = hashes + 16 * i
            -- The lookup's candidate while it still holds this content (no
            -- second probe of the index); else the index as it is now (a
            -- block before this one in the request may have just added it).
            local id = self:holding(tonumber(cand[i]), h)
            if id == 0 then id = self:holding(self.index:get(h), h) end
            local apart = false
            if id ~= 0 and self.verify and not self:same_bytes(data, i, id, self:slot(id)) then
                -- A collision: both contents are kept, the index keeps
                -- naming the first.
                self.stats_collisions = self.stats_collisions + 1
                if self.stats_collisions <= 10 then
                    usbd.log(0, "dedupdisk: verify: logical block %d has the hash of content %d but other bytes "
                        .. "(an XXH3 collision): stored apart%s", first + i, id, self.stats_collisions < 10 and ""
                        or " (further ones are counted in dedup_verify_mismatches, not logged)")
                end
                id, apart = 0, true
            end
            if id ~= 0 then
                self:ref(st, id)
                self.stats_hits = self.stats_hits + 1
            else
                local s
                id, s = self:add_content(st, h, apart)
                if self.verify then
                    -- Until this request ends its bytes may not be in the
                    -- file yet: a later match compares with them here.
                    self.inflight[id] = data.ptr + i * b
                    w.inflight[#w.inflight + 1] = id
                end
                if not self.codec then
                    writes = true
                    offsets[i] = (id - 1) * b
                else
                    local size = packed and packed:size(i) or 0
                    local p, off
                    if size > 0 then p, off = self:place(st, size, frags ~= nil, least) end
                    if p then
                        -- A fragment, into a packed block (written after
                        -- this, from w.franges[0 .. frags-1]).
                        s.pbn, s.off, s.size = p, off, size
                        local filler = self.filling[p]
                        if filler and filler ~= st then
                            st.after = st.after or {}
                            st.after[filler] = true
                        end
                        packer.add(self.pg[floor(p / PGROUP)].live[p], off, size)
                        st.ptouch = st.ptouch or {}
                        st.ptouch[floor(p / PGROUP)] = true
                        if not w.franges then w.franges = usbd.file.ranges(3 * w.cap) end
                        local r = w.franges[frags or 0]
                        r.pos, r.at, r.len = (p - 1) * b + off, packed.at[i], size
                        frags = (frags or 0) + 1
                    else
                        p = self.pbns:take(st)
                        s.pbn, s.off, s.size = p, 0, 0
                        writes = true
                        offsets[i] = (p - 1) * b
                    end
                end
            end
            new[i] = id
            if old[i] == 0 then c.mapped = c.mapped + 1 end
        elseif new[i] == 0 and old[i] ~= 0 then
            c.mapped = c.mapped - 1
            self.stats_zero_writes = self.stats_zero_writes + 1
        end
    end
    for i = 0, n - 1 do
        if old[i] ~= 0 and new[i] ~= old[i] then self:unref(st, old[i], 1) end
    end
    if st.fills then frags = self:fill_ranges(st, w.franges, frags) end
    st.map_edit = self:map_write(st.batch, first, n, new, exts)
    st.map_chunks[1], st.map_chunks[2] = floor(first / CHUNK), floor((first + n - 1) / CHUNK)
    self:enqueue(st)
    return st, writes, frags
end

-- verify=true: does block i (from 0) of data hold the bytes of content s?
function Dedup:same_bytes(data, i, id, s)
    local b = self.block
    local p = self.inflight[id]
    if p then return ffi.string(p, b) == ffi.string(data.ptr + i * b, b) end
    local scratch = self:scratch(1)
    if self.codec and s.size > 0 then
        local ranges, at, sizes = usbd.file.ranges(1), ffi.new("uint64_t[1]"), ffi.new("uint32_t[1]", s.size)
        ranges[0].pos, ranges[0].at, ranges[0].len = (tonumber(s.pbn) - 1) * b + s.off, 0, s.size
        self:read_fragments(scratch, 1, ranges, 1, at, sizes)
    else
        local pbn = self.codec and tonumber(s.pbn) or id
        self.file:pread_blocks(scratch, b, ffi.new("int64_t[1]", (pbn - 1) * b))
    end
    local same = ffi.string(scratch.ptr, b) == ffi.string(data.ptr + i * b, b)
    self:unscratch(scratch, 1)
    return same
end

-- ---- Unmapping --------------------------------------------------------------

-- Unmap logical blocks [first, stop), at most PIECE in a batch.
function Dedup:unmap(first, stop)
    local at = first
    while at < stop do
        local to = math.min(stop, at - at % PIECE + PIECE)
        self:unmap_piece(at, to)
        at = to
    end
end

-- Unmap logical blocks [first, stop) (at most PIECE): one scan of the map
-- finds the extents there (nothing to do for the rest), one read their
-- records, one batch (a range delete of the map when it is long) records
-- it all. The parts of extents outside the range stay.
function Dedup:unmap_piece(first, stop)
    local exts = self:extents_over(first, stop - 1)
    if #exts == 0 then return end

    self:meta_enter()
    local ok, st = pcall(self.unmap_decide, self, first, stop, exts)
    if not ok then
        self:break_down("unmapping", st)
    end
    self:meta_leave()
    if not ok then error(st, 0) end
    self:commit(st)
end

-- In the mutex: the extents exts over [first, stop) go, and a reference
-- for each block they mapped there. Returns the staged batch.
function Dedup:unmap_decide(first, stop, exts)
    local last = stop - 1
    local groups = {}
    for _, e in ipairs(exts) do
        local e_first = e.last - e.count + 1
        local lo, hi = math.max(e_first, first), math.min(e.last, last)
        for id = e.id + (lo - e_first), e.id + (hi - e_first), GROUP do groups[floor(id / GROUP)] = true end
        groups[floor((e.id + (hi - e_first)) / GROUP)] = true
    end
    self:load_records(groups)
    local st = self:new_stage()
    st.map_chunks[1], st.map_chunks[2] = floor(first / CHUNK), floor(last / CHUNK)
    st.map_edit = self:map_unmap(st.batch, first, stop, exts)
    local c = self.counters
    for _, e in ipairs(exts) do
        local e_first = e.last - e.count + 1
        local lo, hi = math.max(e_first, first), math.min(e.last, last)
        for id = e.id + (lo - e_first), e.id + (hi - e_first) do self:unref(st, id, 1) end
        c.mapped = c.mapped - (hi - lo + 1)
    end
    self:enqueue(st)
    return st
end

return { methods = Dedup }

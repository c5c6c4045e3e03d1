-- usbd.dedup.map: the dedupdisk's map, logical blocks to content ids.
--
-- The map is extents, each L last -> id, count (usbd.dedup.format): logical
-- blocks last-count+1 .. last hold contents id .. id+count-1, and none
-- crosses a multiple of 256 blocks (a chunk). A request reads the extents
-- over its blocks (map_read) and stages the ones that replace them in its
-- batch (map_write, map_unmap). The map cache keeps the extents of
-- recently used chunks, so a read or a rewrite of one costs no RocksDB
-- read; a batch that changes a chunk edits it once written.
--
-- Fields: mc (chunk -> its extents, sorted, three numbers each: see
-- after), mc_count (its entries: see map_load), mc_max, mc_gen
-- (generations: a load raced by a write is not kept).
local ffi = require "ffi"
local F = require "usbd.dedup.format"

local CHUNK = F.CHUNK
local un64_at, Lkey, put_L, delete_L, extent_ptr = F.un64_at, F.Lkey, F.put_L, F.delete_L, F.extent_ptr
local floor = math.floor
local GEN_SLOTS = 4096

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_map(max)
    self.mc, self.mc_count, self.mc_max, self.mc_gen = {}, 0, max, {}
    for i = 0, GEN_SLOTS - 1 do self.mc_gen[i] = 0 end
end

-- A cached chunk is one flat array of numbers, three per extent in order:
-- list[3k-2], list[3k-1], list[3k] = the k-th extent's last, id, count,
-- and list[0] = how many extents. (A table per extent cost about 170
-- bytes and a pointer to chase per probe of the search; three numbers
-- cost 24. A chunk that random writes cut up holds 256 extents, and the
-- cache holds hundreds of thousands. #list, once edits have left nils at
-- its end, is a search each time: 5% of the Lua thread in 4 KiB writes.)
local function extents_in(list) return list[0] end

-- The first extent of a chunk's list that ends at or after lba
-- (extents_in(list) + 1 if none): by 16 extents, then one by one. (A
-- binary search branches on every probe, and LuaJIT made a side trace of
-- each way in every trace it was inlined in: half the server's traces.)
local function after(list, lba)
    local n, k = extents_in(list), 1
    while k + 16 <= n and list[3 * k + 46] < lba do k = k + 16 end
    while k <= n and list[3 * k - 2] < lba do k = k + 1 end
    return k
end

-- The extents over logical blocks [first, first+n): one scan from the
-- first key that can name them (an extent is keyed by its last block).
-- Fills old[i] with the id of block first+i (0: zeroes). With exts (a
-- write's), appends to it the extents that overlap as a flat list, three
-- numbers each (last, id, count), as the cache keeps them: no table per
-- extent for map_write. A read asks for none.
function Dedup:map_read(first, n, old, exts)
    local last = first + n - 1
    local c0, c1 = floor(first / CHUNK), floor(last / CHUNK)
    local lists = self.mc
    for c = c0, c1 do
        if not lists[c] then lists = self:map_load(c0, c1) break end
    end
    ffi.fill(old, 8 * n)
    local x = 0
    for c = c0, c1 do
        local list = lists[c]
        for k = after(list, first), extents_in(list) do
            local e_last, id, count = list[3 * k - 2], list[3 * k - 1], list[3 * k]
            local e_first = e_last - count + 1
            if e_first > last then break end
            if exts then
                exts[x + 1], exts[x + 2], exts[x + 3] = e_last, id, count
                x = x + 3
            end
            local lo, hi = math.max(e_first, first), math.min(e_last, last)
            for lba = lo, hi do old[lba - first] = id + (lba - e_first) end
        end
    end
end

-- The map cache: the extents of recently used 256-block spans (chunks),
-- so a read or a rewrite of one costs no RocksDB read. A batch that
-- changes a chunk's extents updates it once written (Dedup:written, in
-- usbd.dedup.commit); a load raced by such a write is used by its caller
-- (it is what RocksDB held when read) but not kept. Past map_cache
-- entries (a chunk's extents, and one for the chunk), the cache starts
-- over: counted so, not in chunks, as a chunk that random writes cut up
-- holds 256 extents where a sequential one holds 1.
local function entries(list) return extents_in(list) + 1 end

function Dedup:map_load(c0, c1)
    local gens, gen0 = self.mc_gen, {}
    for c = c0, c1 do gen0[c] = gens[c % GEN_SLOTS] end
    local lists = {}
    for c = c0, c1 do lists[c] = { [0] = 0 } end
    self:extents_over(c0 * CHUNK, (c1 + 1) * CHUNK - 1, true, function(e_last, id, count)
        local list = lists[floor(e_last / CHUNK)]
        local k = list[0]
        list[3 * k + 1], list[3 * k + 2], list[3 * k + 3], list[0] = e_last, id, count, k + 1
    end)
    local n = 0
    for c = c0, c1 do n = n + entries(lists[c]) end
    if self.mc_count + n > self.mc_max then
        self.mc, self.mc_count = {}, 0
    end
    local mc = self.mc
    for c = c0, c1 do
        if gens[c % GEN_SLOTS] == gen0[c] and not mc[c] then
            mc[c] = lists[c]
            self.mc_count = self.mc_count + entries(lists[c])
        end
    end
    return lists
end

-- A written batch changed the extents of chunks [c0, c1]: a cached chunk
-- takes the change (edit: map_write's or unmap's), or goes (none). The change
-- replaces every extent that ends within [edit.lo, edit.hi] (they are
-- one run of the sorted list) by those added there.
function Dedup:map_changed(c0, c1, edit)
    local mc, gens = self.mc, self.mc_gen
    for c = c0, c1 do
        local list = mc[c]
        if list and edit then
            local lo, hi = math.max(edit.lo, c * CHUNK), math.min(edit.hi, c * CHUNK + CHUNK - 1)
            local i0, i1 = after(list, lo), after(list, hi + 1)
            local added, new = edit.added, 0
            for k = 1, #added, 3 do
                if added[k] >= lo and added[k] <= hi then new = new + 1 end
            end
            local len, shift = 3 * list[0], new - (i1 - i0)
            if shift ~= 0 then
                table.move(list, 3 * i1 - 2, len, 3 * (i1 + shift) - 2)
                for j = len + 3 * shift + 1, len do list[j] = nil end
                list[0] = list[0] + shift
            end
            local at = 3 * i0 - 2
            for k = 1, #added, 3 do
                if added[k] >= lo and added[k] <= hi then
                    list[at], list[at + 1], list[at + 2] = added[k], added[k + 1], added[k + 2]
                    at = at + 3
                end
            end
            self.mc_count = self.mc_count + shift
        elseif list then
            mc[c] = nil
            self.mc_count = self.mc_count - entries(list)
        end
        gens[c % GEN_SLOTS] = gens[c % GEN_SLOTS] + 1
    end
end

-- The extents (each { last, id, count }, in order) over logical blocks
-- [first, last], from RocksDB: one scan from the first key that can name
-- them (an extent is keyed by its last block) to the end of last's span.
-- With each (last, id, count), each is passed to it instead, no table made.
function Dedup:extents_over(first, last, hot, each)
    local span_end = last - last % CHUNK + CHUNK
    local count, kb, _, vb = self.db:scan_raw(Lkey(first), Lkey(span_end), last - first + 2, 9, 16, hot)
    local ev = ffi.cast(extent_ptr, vb)
    local exts = not each and {} or nil
    for j = 0, count - 1 do
        local e_last, cnt = un64_at(kb, j * 9 + 1), tonumber(ev[j].count)
        if e_last - cnt + 1 > last then break end
        if each then
            each(e_last, tonumber(ev[j].id), cnt)
        else
            exts[#exts + 1] = { last = e_last, id = tonumber(ev[j].id), count = cnt }
        end
    end
    return exts
end

-- An extent into the batch and the map cache's flat list of those added
-- (three numbers each, as map_read's).
local function put_added(batch, added, last, id, count)
    put_L(batch, last, id, count)
    local x = #added
    added[x + 1], added[x + 2], added[x + 3] = last, id, count
end

-- Stage the map of blocks [first, first+n) as ids new[i] (0: zeroes),
-- rewriting the extents exts (map_read's) that overlapped them (their
-- parts outside stay as they were), in runs of consecutive ids within
-- 256-block spans. Returns the change, for the map cache: the blocks
-- [lo, hi] whose extents it rewrote, and the extents that now cover them.
function Dedup:map_write(batch, first, n, new, exts)
    local last = first + n - 1
    local lo, hi = first, last
    local head_id, tail_id, tail_first = 0, 0, 0  -- the extents running past either end
    local added = {}
    for k = 1, #exts, 3 do
        local e_last, e_id = exts[k], exts[k + 1]
        local e_first = e_last - exts[k + 2] + 1
        if e_first < first then lo, head_id = e_first, e_id end
        if e_last > last then hi, tail_id, tail_first = e_last, e_id, e_first end
        delete_L(batch, e_last)
    end
    local run_id, run_len = 0, 0
    for lba = lo, hi do
        local id
        if lba < first then
            id = head_id + (lba - lo)
        elseif lba > last then
            id = tail_id + (lba - tail_first)
        else
            id = new[lba - first]
        end
        if run_len > 0 and (id ~= run_id + run_len or lba % CHUNK == 0) then
            put_added(batch, added, lba - 1, run_id, run_len)
            run_len = 0
        end
        if id ~= 0 then
            if run_len == 0 then run_id = id end
            run_len = run_len + 1
        end
    end
    if run_len > 0 then put_added(batch, added, hi, run_id, run_len) end
    return { lo = lo, hi = hi, added = added }
end

-- Stage the unmapping of blocks [first, stop), over which the extents are
-- exts (extents_over's): the parts of extents outside the range stay; a
-- range delete of the map when there are many. Returns the change, for the
-- map cache.
function Dedup:map_unmap(batch, first, stop, exts)
    local last = stop - 1
    -- For the map cache: the extents over [edit.lo, edit.hi] are now
    -- the parts of the first and last that stay.
    local added = {}
    local edit = { lo = first, hi = last, added = added }
    if #exts > 64 then batch:delete_range(Lkey(first), Lkey(stop)) end
    for _, e in ipairs(exts) do
        local e_first = e.last - e.count + 1
        if #exts <= 64 or e.last >= stop then delete_L(batch, e.last) end
        if e_first < first then
            put_added(batch, added, first - 1, e.id, first - e_first)
            edit.lo = e_first
        end
        if e.last > last then
            put_added(batch, added, e.last, e.id + (stop - e_first), e.last - last)
            edit.hi = e.last
        end
    end
    return edit
end

return { methods = Dedup }

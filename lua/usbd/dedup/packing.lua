-- usbd.dedup.packing: where the dedupdisk's compressed fragments go
-- (compress=).
--
-- A unique block that compresses well enough is a fragment in a packed
-- physical block shared with others (usbd.dedup.packer places it: best
-- fit, any offset, none split). P record g lists the live fragments of
-- packed blocks g*64 .. g*64+63 (usbd.dedup.format). A fragment whose last
-- reference goes leaves its block's list in the batch that frees it
-- (free_fragments); an emptied packed block is freed like a raw one, and
-- one left at most half full takes new fragments into its gaps once the
-- batches that freed them are durable (frags_freed, frags_durable): live
-- fragments never move, and a fragment is only ever written into bytes no
-- durable mapping names. A request writes the packed blocks it opened
-- whole, their gaps as zeroes (fill_ranges); one that places a fragment
-- into such a gap meanwhile writes it after that (await_fills).
--
-- Fields: pk (the packer), pg, pg_count, pg_max (the groups in memory),
-- spare_lists, pbuf and pcap (reused buffers), filling (pbn -> the request
-- writing it whole), refillable and refill_set (durable mostly free
-- blocks), frag_pending and frag_limbo (gaps freed by batches not yet
-- durable).
local ffi = require "ffi"
local usbd = require "usbd"
local clear = require "table.clear"
local F = require "usbd.dedup.format"
local packer = require "usbd.dedup.packer"
local locks = require "usbd.dedup.locks"
local evict_oldest = require("usbd.dedup.records").evict_oldest

local PGROUP, Pkey, P_words, put64 = F.PGROUP, F.Pkey, F.P_words, F.put64
local park, wake, token = locks.park, locks.wake, locks.token
local u8p = ffi.typeof("uint8_t *")
local byte, floor = string.byte, math.floor
local REFILL_MAX = 4096      -- mostly free packed blocks kept, to refill

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_packing(block, records)
    self.pk, self.pg, self.pg_count, self.pg_max = packer.new(block), {}, 0, math.max(64, floor(records / 8))
    self.spare_lists, self.pbuf, self.pcap, self.filling = {}, nil, 0, {}
    self.refillable, self.refill_set, self.frag_pending, self.frag_limbo = {}, {}, {}, {}
end

-- ---- P groups: the live fragments of packed blocks --------------------------

-- In memory a group of packed blocks (P record g) is { live = { [pbn] =
-- its live list }, pend = batches staging it not yet written, tick = last
-- use }. It stays while pend > 0 (RocksDB has an older value) or one of its
-- blocks is open (the packer places into the list); of the others at most
-- pg_max (records/8) stay cached, least recently used going first, so that
-- a rewrite that frees fragments finds their lists without a read and a
-- decode.
local pkey_bytes = ffi.new("uint8_t[9]")
pkey_bytes[0] = byte("P")

-- The groups gs (a set) in memory: those not there in one multi-get.
function Dedup:load_P(gs)
    local keys, want
    for g in pairs(gs) do
        if not self.pg[g] then
            keys, want = keys or {}, want or {}
            keys[#keys + 1], want[#want + 1] = Pkey(g), g
        end
    end
    if not keys then return end
    -- Most records are small; the longest possible one is read only when
    -- one is longer than that.
    local ok, vals = pcall(self.db.multi_get, self.db, keys, PGROUP * 64 * 4 + PGROUP * 4)
    if not ok then vals = self.db:multi_get(keys, PGROUP * (4 + 4 * self.block)) end
    for i = 1, #want do
        local g = want[i]
        local lives = vals[i] and F.Pdecode(vals[i], g) or {}
        if vals[i] and not next(lives) then
            error(("dedupdisk: P record %d is damaged: store damaged (run the store check)"):format(g), 0)
        end
        self.pg[g] = { live = lives, pend = 0, tick = self.tick }
        self.pg_count = self.pg_count + 1
    end
end

-- The group of packed block p, in memory.
function Dedup:P_group(p)
    local g = floor(p / PGROUP)
    local o = self.pg[g]
    if not o then
        self:load_P({ [g] = true })
        o = self.pg[g]
    end
    o.tick = self.tick
    return o
end

-- Stage the groups this batch changed (the fragments it freed leave their
-- blocks first), each once, as it is now; drop the groups nobody needs.
function Dedup:stage_P(st)
    self:free_fragments(st)
    local touched = st.ptouch
    if not touched then return end
    for g in pairs(touched) do
        local o = self.pg[g]
        local words = P_words(o.live, g)
        put64(pkey_bytes, 1, g)
        if words == 0 then
            st.batch:delete(pkey_bytes, 9)
        else
            if self.pcap < words then
                self.pcap = words * 2
                self.pbuf = ffi.new("uint16_t[?]", self.pcap)
            end
            P_words(o.live, g, self.pbuf)
            st.batch:put(pkey_bytes, ffi.cast(u8p, self.pbuf), 9, 2 * words)
        end
        o.pend = o.pend + 1
        st.pkeys[#st.pkeys + 1] = g
    end
    if self.pg_count > self.pg_max then self:evict_P() end
end

-- Too many groups in memory: the least recently used idle ones go (not
-- those with an open block).
function Dedup:evict_P()
    local open = {}
    for i = 1, self.pk:open_count() do open[floor(self.pk:open_pbn(i) / PGROUP)] = true end
    self.pg_count = evict_oldest(self.pg, self.pg_count, self.pg_max, open)
end

-- The fragments this batch freed leave their packed blocks: an empty one
-- is freed; one left at most half full is refilled once this is durable.
local free_groups, free_seen, free_order = {}, {}, {}   -- reused: no garbage per batch
local SPARE_LISTS = 1024     -- emptied live lists kept for fresh blocks

function Dedup:free_fragments(st)
    local frees = st.frag_frees
    local nf = #frees
    if nf == 0 then return end
    clear(free_groups)
    for i = 1, nf, 3 do free_groups[floor(frees[i] / PGROUP)] = true end
    self:load_P(free_groups)
    local ptouch = st.ptouch or {}
    st.ptouch = ptouch
    clear(free_seen)
    local pg, order, n = self.pg, free_order, 0
    for i = 1, nf, 3 do
        local pbn, off = frees[i], frees[i + 1]
        local g = floor(pbn / PGROUP)
        local o = pg[g]
        o.tick = self.tick
        local live = o.live[pbn]
        if not (live and packer.remove(live, off, frees[i + 2])) then
            error(("dedupdisk: packed block %d does not list its fragment at %d: store damaged"):format(pbn, off), 0)
        end
        if not free_seen[pbn] then
            free_seen[pbn] = true
            n = n + 1
            order[n] = pbn
        end
        ptouch[g] = true
    end
    local spare = self.spare_lists
    for i = 1, n do
        local p = order[i]
        local lives = pg[floor(p / PGROUP)].live
        local live = lives[p]
        if #live == 0 then
            lives[p] = nil
            if #spare < SPARE_LISTS then spare[#spare + 1] = live end
            self.pk:forget(p)
            self.refill_set[p] = nil
            st.freed_pbns[#st.freed_pbns + 1] = p
        else
            st.frag_freed[#st.frag_freed + 1] = p
            local bytes = 0
            for j = 2, #live, 2 do bytes = bytes + live[j] end
            if bytes <= self.block / 2 then st.refill[#st.refill + 1] = p end
        end
    end
end

-- ---- Placing fragments ------------------------------------------------------

-- A whole free block for the packer (it calls this: no closure per place),
-- with an empty live list; a group never used is not read.
function Dedup:fresh()
    local was = self.counters.pbns_next
    local p = self.pbns:take(self.placing)
    local g = floor(p / PGROUP)
    if not self.pg[g] and g * PGROUP > was then
        self.pg[g] = { live = {}, pend = 0, tick = self.tick }
        self.pg_count = self.pg_count + 1
    end
    local spare = self.spare_lists
    local n = #spare
    local live = spare[n] or {}
    spare[n] = nil
    self:P_group(p).live[p] = live
    local st = self.placing
    st.fills = st.fills or {}
    st.fills[#st.fills + 1] = p
    self.filling[p] = st
    return p
end

-- Room for a fragment of size bytes: an open block's gap, else a durable
-- mostly free block's, else a whole free block. Returns pbn, off; nil
-- when the block is to be stored raw. least: the request's smallest
-- fragment (0 or nil: none known). A fragment that not even that one
-- could join in a block (over half a block, as is each of a request
-- whose blocks all compress to just over half) opens no block of its
-- own: it takes a gap an open block has, or is stored raw. Such data
-- (fio's half-compressible buffers: 2111-2118 of 4096 bytes) took a
-- block per fragment, saving nothing, with a decompression for every
-- read. (Raw for every fragment over half a block, mixed data lost the
-- gaps later requests fill: an ext4 image of /usr/share/doc took 4%
-- more.)
function Dedup:place(st, size, follow, least)
    local pk = self.pk
    while #self.refillable > 0 do
        local pbn, off = pk:place(size, nil, follow)
        if pbn then return pbn, off end
        local p = table.remove(self.refillable)
        self.refill_set[p] = nil
        if not self.frag_pending[p] and not pk:is_open(p) then
            local live = self:P_group(p).live[p]
            if live then pk:reopen(p, live) end
        end
    end
    if size + (least or 0) > self.block then return pk:place(size, nil, follow) end
    self.placing = st
    local pbn, off = pk:place(size, self, follow)
    self.placing = nil
    return pbn, off
end

-- The packed blocks a request opened (fresh) hold only its fragments when
-- it has decided: it writes them whole, their gaps as zeroes, so that its
-- fragments go to the file in a few large writes (pwritev), not one small
-- one per block, each of which the kernel would also fill out. Those gaps
-- stay open to others: a request that places a fragment there writes it
-- only after this request's write (await_fills). Returns the ranges' count.
function Dedup:fill_ranges(st, ranges, nr)
    local b = self.block
    for i = 1, #st.fills do
        local p = st.fills[i]
        local live, at = self.pg[floor(p / PGROUP)].live[p], 0
        for j = 1, #live + 2, 2 do
            local off = live[j] or b
            if off > at then
                local r = ranges[nr]
                r.pos, r.at, r.len = (p - 1) * b + at, usbd.file.ZEROES, off - at
                nr = nr + 1
            end
            if live[j] then at = off + live[j + 1] end
        end
    end
    return nr
end

-- Before writing its fragments: wait until the requests whose fresh blocks
-- this one placed into have written those (whole, gaps as zeroes).
function Dedup:await_fills(st)
    if not st.after then return end
    for filler in pairs(st.after) do
        if not filler.filled then
            local tok = token()
            filler.fill_waiters = filler.fill_waiters or {}
            filler.fill_waiters[#filler.fill_waiters + 1] = tok
            park(tok)
        end
    end
end

-- Its fresh blocks are written (or the write failed): others may write
-- into their gaps.
function Dedup:end_fills(st)
    if not st.fills then return end
    for i = 1, #st.fills do
        local p = st.fills[i]
        if self.filling[p] == st then self.filling[p] = nil end
    end
    st.filled = true
    local waiters = st.fill_waiters
    if waiters then
        for i = 1, #waiters do wake(waiters[i]) end
    end
end

-- ---- Gaps in packed blocks: in limbo until durable --------------------------

-- st is queued: the packed blocks whose fragments it freed take none into
-- their gaps until it is durable.
function Dedup:frags_freed(st)
    if #st.frag_freed == 0 then return end
    -- Gaps left in packed blocks: not refilled until this batch is durable.
    local refill = {}
    for i = 1, #st.refill do refill[st.refill[i]] = true end
    for i = 1, #st.frag_freed do
        local p = st.frag_freed[i]
        self.frag_pending[p] = (self.frag_pending[p] or 0) + 1
        self.frag_limbo[#self.frag_limbo + 1] = { p, st.seq, refill[p] }
    end
end

-- The batches up to seq upto are durable.
function Dedup:frags_durable(upto)
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
end

return { methods = Dedup }

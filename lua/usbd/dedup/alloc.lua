-- usbd.dedup.alloc: the dedupdisk's allocator of numbers from 1: content
-- ids, and with compress= physical blocks (without it an id is its
-- physical block). A number for new data comes from a free run, else is a
-- new one past every number used (the file grows). A number a batch frees
-- is free in that batch's records (or runs) at once, but waits in limbo
-- until a sync of the WAL has made that batch durable (durable(upto)):
-- before that a crash could bring back a mapping to it, and new bytes
-- there would be someone else's data.
--
--   local a = alloc.new(dev, prefix, counters, free_name, next_name)
--   local n, new = a:take(st)     -- new: past every number used before
--   a:settle(st)                  -- st's batch: the runs it took from
--   a:release(st, list)           -- numbers st (its seq set) frees, into limbo
--   a:durable(upto)               -- batches up to seq upto are durable
--   a.limbo_count                 -- numbers waiting in limbo
--
-- dev is the store (its db, records, written_gen); counters[free_name]
-- and counters[next_name] count the free numbers and the numbers ever used.
local ffi = require "ffi"
local clear = require "table.clear"
local F = require "usbd.dedup.format"

local GROUP = F.GROUP
local be64, un64, put64, un_le64, sort_numbers = F.be64, F.un64, F.put64, F.un_le64, F.sort_numbers
local u8p = ffi.typeof("uint8_t *")
local byte, floor = string.byte, math.floor
local band, bor, bnot, lshift = bit.band, bit.bor, bit.bnot, bit.lshift

-- Free runs (key prefix .. first -> count) first, else new numbers.
local Alloc = {}
Alloc.__index = Alloc
local run_count = ffi.new("uint64_t[1]")

-- prefix: the key of its runs (G), or nil for ids (format 3): their free
-- runs are not stored; a free id is one whose record slot holds no
-- reference, and refill finds them in the records. held: every number in
-- limbo, a bit each (both refills pass over them). As a Lua table, churned
-- by a few hundred numbers per 1 MiB rewrite, it cost 0.15-0.2 us per
-- number while tens of thousands waited, and 2-3 us once hundreds of
-- thousands did (a checkpoint's long sync); a bit costs a few ns.
local function new_alloc(dev, prefix, counters, free_name, next_name)
    return setmetatable({ dev = dev, prefix = prefix, prefix_byte = prefix and byte(prefix), c = counters,
        free_name = free_name, next_name = next_name,
        ready = {}, by_first = {}, limbo = {}, limbo_count = 0, held = nil, held_bytes = 0, pending = {},
        starts = {}, ends = {}, long = {}, stale = {}, grown = {}, scan_from = 0 }, Alloc)
end

-- Is number n in limbo? (Numbers may pass 2^32, where bit's operations wrap.)
function Alloc:is_held(n)
    local i = floor(n / 8)
    return i < self.held_bytes and band(self.held[i], lshift(1, n % 8)) ~= 0
end

-- Numbers first .. first+count-1 into limbo (on) or out of it.
function Alloc:hold(first, count, on)
    local last = first + count - 1
    if floor(last / 8) >= self.held_bytes then
        local size = math.max(2 * self.held_bytes, floor(last / 8) + 1, 4096)
        local bits = ffi.new("uint8_t[?]", size)
        if self.held then ffi.copy(bits, self.held, self.held_bytes) end
        self.held, self.held_bytes = bits, size
    end
    local bits = self.held
    if on then
        for n = first, last do
            local i = floor(n / 8)
            bits[i] = bor(bits[i], lshift(1, n % 8))
        end
    else
        for n = first, last do
            local i = floor(n / 8)
            bits[i] = band(bits[i], bnot(lshift(1, n % 8)))
        end
    end
end

-- A run this long is where a write of as many blocks or more goes first.
local LONG = 16

-- The ready runs: a list (take picks among its last few), and the long
-- ones also in a list of their own; each run knows its place in both (at,
-- long_at), so one leaves them at once.
local function enlist(list, r, field)
    list[#list + 1] = r
    r[field] = #list
end

local function delist(list, r, field)
    local last = list[#list]
    list[r[field]], last[field] = last, r[field]
    list[#list] = nil
    r[field] = nil
end

local function push(self, r)
    enlist(self.ready, r, "at")
    if r.count >= LONG then enlist(self.long, r, "long_at") end
end

local function unlink(self, r)
    delist(self.ready, r, "at")
    if r.long_at then delist(self.long, r, "long_at") end
    self.starts[r.first], self.ends[r.first + r.count] = nil, nil
end

-- A run becomes ready, and joins the ready runs beside it (starts and
-- ends find those): numbers freed by different batches (what a 1 MiB
-- rewrite freed, and the ids between that 4 KiB writes had freed before)
-- lie side by side, and kept apart, half the file's free ids sat in runs
-- of one or two that joined made runs of hundreds: a large write then
-- took a pwrite, an extent and often a record per block.
function Alloc:add_ready(r)
    local starts, ends, stored = self.starts, self.ends, self.prefix ~= nil
    local left = ends[r.first]
    if left then
        ends[r.first] = nil
        left.count = left.count + r.count
        if stored then self:absorbed(r, left) end
        r = left
    else
        push(self, r)
    end
    local right = starts[r.first + r.count]
    if right then
        unlink(self, right)
        r.count = r.count + right.count
        if stored then self:absorbed(right, r) end
    end
    starts[r.first] = r
    ends[r.first + r.count] = r
    if stored then self.by_first[r.first] = r end
    if r.count >= LONG and not r.long_at then enlist(self.long, r, "long_at") end
end

-- Stored runs (G) joined in memory: gone's record is to go (stale) and
-- into's to say its new length (grown). Both are staged by the next batch
-- that takes from this allocator (settle), before what it took: no batch
-- takes from a joined run without them, and until then the records name
-- the same free blocks as separate runs. A refill passes over stale keys.
function Alloc:absorbed(gone, into)
    self.by_first[gone.first] = nil
    self.stale[gone.first] = true
    self.grown[gone] = nil
    self.grown[into] = true
end

function Alloc:key(first) return self.prefix .. be64(first) end

-- Stage a run record (count 0: none) in st's batch, its key encoded in a
-- reused buffer (a rewrite of scattered blocks stages hundreds: as
-- strings, each was two for LuaJIT to intern and collect).
local fkey_bytes = ffi.new("uint8_t[9]")
function Alloc:stage(st, first, count)
    if not self.prefix then return end  -- (ids: the records say it)
    fkey_bytes[0] = self.prefix_byte
    put64(fkey_bytes, 1, first)
    if count > 0 then
        run_count[0] = count
        st.batch:put(fkey_bytes, ffi.cast(u8p, run_count), 9, 8)
    else
        st.batch:delete(fkey_bytes, 9)
    end
    self.pending[first] = (self.pending[first] or 0) + 1
    st.runs[#st.runs + 1], st.runs[#st.runs + 2] = self, first
end

-- Refill ready runs from durable run records nobody holds.
function Alloc:refill()
    if not self.prefix then return self:refill_from_records() end
    local wrapped = self.scan_from == 0
    local db, stop = self.dev.db, self.prefix:sub(1, 1):byte() + 1
    stop = string.char(stop)
    while #self.ready == 0 do
        -- A batch written while we read could make what we read stale (a
        -- run it took from, no longer pending): read again.
        local keys, vals, gen
        repeat
            gen = self.dev.written_gen
            keys, vals = db:scan(self:key(self.scan_from), stop, 1024, 9, 8)
        until gen == self.dev.written_gen
        for i = 1, #keys do
            local first = un64(keys[i], 2)
            if not self:is_held(first) and not self.by_first[first] and not self.pending[first]
                and not self.stale[first] then
                self:add_ready({ first = first, count = un_le64(vals[i]) })
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

-- Ids: refill ready runs from the records, a window of groups at a time
-- from where the last refill stopped: an id from 1 to ids_next whose slot
-- holds no reference and that no batch not yet durable freed (held: the
-- ids in limbo, one by one, as sorting the limbo's runs on every refill
-- cost 4K writes a fifth of their speed) is free. Records are read
-- through the cache, which holds what batches not yet written staged;
-- only the mutex's holder loads or changes records, a refill runs only
-- once every run handed out is used up (take), and it stops when runs
-- became ready while it read, so no id is handed out twice. A whole pass finding nothing stops the search until ids are
-- freed again (durable).
local REFILL_GROUPS = 64
function Alloc:refill_from_records()
    if self.dry then return end
    local dev, top = self.dev, self.c[self.next_name]
    local last_g = floor(top / GROUP)
    local passed, groups = 0, {}
    while passed <= last_g do
        if self.scan_from > last_g then self.scan_from = 0 end
        local g0 = self.scan_from
        local g1 = math.min(last_g, g0 + REFILL_GROUPS - 1)
        clear(groups)
        for g = g0, g1 do groups[g] = true end
        dev:load_records(groups)
        -- Reading records may wait, and a sync of the WAL meanwhile may
        -- have made freed ids ready (durable), no longer held: a scan now
        -- would list them a second time, and they would be handed out twice.
        if #self.ready > 0 then return end
        local run = nil
        for g = g0, g1 do
            local slots = dev.rc[g].slots
            dev.rc[g].tick = dev.tick
            for k = 0, GROUP - 1 do
                local id = g * GROUP + k
                local free = id >= 1 and id <= top and slots[k].refs == 0 and not self:is_held(id)
                if free and run and run.first + run.count == id then
                    run.count = run.count + 1
                elseif free then
                    if run then self:add_ready(run) end
                    run = { first = id, count = 1 }
                end
            end
        end
        if run then self:add_ready(run) end
        passed = passed + (g1 - g0 + 1)
        self.scan_from = g1 + 1
        if #self.ready > 0 then return end
    end
    self.dry = #self.ready == 0
end

-- A number for new data: from a durable free run, else a new one (and
-- then true).
function Alloc:take(st)
    local c = self.c
    local r = self.cur
    if not r or r.count == 0 then
        r = nil
        if not st.append then
            if #self.ready == 0 and c[self.free_name] - self.limbo_count > 0 then self:refill() end
            -- The longest of the last few runs, from the long ones for a
            -- large write: it then gets few runs (few pwrites and extents),
            -- and short runs stay for short writes. (A large write that
            -- took the last few runs of all took crumbs while hundreds of
            -- thousands of free ids lay in long runs further up the list.)
            local want = st.want or 0
            local ready = (want >= LONG and #self.long > 0) and self.long or self.ready
            local best = #ready
            for i = math.max(1, #ready - 15), #ready - 1 do
                if ready[i].count > ready[best].count then best = i end
            end
            r = ready[best]
            -- Only crumbs left (small writes freed them) for a large write:
            -- it appends instead, while at most half the blocks are free.
            if r and self.append_ok and r.count < LONG and want > r.count
                and 2 * c[self.free_name] < c[self.next_name] then
                r, st.append = nil, true
            elseif r then
                unlink(self, r)
            end
        end
        self.cur = r
        if not r then
            c[self.next_name] = c[self.next_name] + 1
            return c[self.next_name], true
        end
    end
    -- Its record changes once per batch (settle): remember what it was.
    -- (Runs of ids and of pbns are apart: each allocator settles its own.)
    st.took = st.took or {}
    st.took[self] = st.took[self] or {}
    local took = st.took[self]
    if not took[r] then took[r] = r.first end
    local n = r.first
    r.first, r.count = n + 1, r.count - 1
    c[self.free_name] = c[self.free_name] - 1
    return n
end

-- The runs this batch took from: their records as they are now.
function Alloc:settle(st)
    local took = st.took and st.took[self]
    if not took then return end
    if next(self.stale) then
        for first in pairs(self.stale) do self:stage(st, first, 0) end
        for r in pairs(self.grown) do
            if r.at then self:stage(st, r.first, r.count) end  -- (one taken: below)
        end
        clear(self.stale)
        clear(self.grown)
    end
    for r, was in pairs(took) do
        if self.by_first[was] == r then self.by_first[was] = nil end
        self:stage(st, was, 0)
        if r.count > 0 then
            self:stage(st, r.first, r.count)
            self.by_first[r.first] = r
        elseif self.cur == r then
            self.cur = nil
        end
    end
    st.took[self] = nil
end

-- Numbers this batch freed (a list): as runs, in limbo until durable.
-- A run keeps the batch's seq, not the batch: the limbo grows for as long
-- as a checkpoint's sync of the file runs (many seconds under a large
-- write-back), and a stage kept per freed run held its tables, several
-- hundred MiB after a few seconds of 4 KiB rewrites.
function Alloc:release(st, list)
    local n = #list
    if n == 0 then return end
    for i = 2, n do  -- (a sequential rewrite frees them in order: no sort)
        if list[i] < list[i - 1] then sort_numbers(list, n) break end
    end
    local c = self.c
    local i = 1
    while i <= n do
        local first, count = list[i], 1
        while i + count <= n and list[i + count] == first + count do count = count + 1 end
        self:stage(st, first, count)
        self.limbo[#self.limbo + 1] = { first = first, count = count, seq = st.seq }
        self:hold(first, count, true)
        self.limbo_count = self.limbo_count + count
        c[self.free_name] = c[self.free_name] + count
        i = i + count
    end
end

-- After a flush: runs freed by batches up to seq upto are ready.
function Alloc:durable(upto)
    local keep = {}
    if #self.limbo > 0 then self.dry = false end
    for _, r in ipairs(self.limbo) do
        if r.seq <= upto then
            self:hold(r.first, r.count, false)
            self.limbo_count = self.limbo_count - r.count
            r.seq = nil
            -- Every run, however many a long checkpoint let pile up: one
            -- dropped here is found again only by a refill's scan of the
            -- records, which at 32 GiB read hundreds of MiB of them for a
            -- few free ids (and the limbo held the run's table anyway).
            self:add_ready(r)
        else
            keep[#keep + 1] = r
        end
    end
    self.limbo = keep
end

return { new = new_alloc }

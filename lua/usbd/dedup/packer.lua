-- usbd.dedup.packer: where compressed fragments go in a store of fixed-size
-- physical blocks. Many fragments share one block, each whole inside it
-- (a read of one touches one block), at any byte offset: no slots, so a
-- 4 KiB block holds as many fragments as fit (VDO stops at 14).
--
--   local pk = packer.new(4096, { open = 8 })
--   local pbn, off = pk:place(size, fresh, follow)
--       -- room for size bytes: with follow, right after the last one if it
--       -- fits; else best fit among the open blocks' gaps, else
--       -- fresh() (a whole free block's number), which opens it; without
--       -- fresh, nil when no open block has room. fresh may be an object
--       -- with a method fresh (obj:fresh()): no closure per call.
--   pk:reopen(pbn, live)   -- a mostly free block: its gaps take fragments again
--   pk:forget(pbn)         -- the block was freed: place nothing more in it
--   pk:is_open(pbn), pk:open_count(), pk:open_pbn(i)  -- i-th open block
--
-- A packed block's live fragments are a flat sorted list
-- { off1, size1, off2, size2, ... }; packer.add and packer.remove change
-- one in place, packer.encode/decode turn it into the store's record (4
-- bytes per fragment) and back.
--
-- The caller's promise, which keeps placement crash-safe: the gaps of a
-- block it reopens hold nothing that a durable mapping still names (every
-- fragment freed there was freed by a batch that is durable). The packer
-- then only ever writes into bytes no mapping names; live fragments never
-- move, so the map never has to follow them.
local M = {}

local Packer = {}
Packer.__index = Packer

local DEFAULT_OPEN = 8

-- Gaps of a block from its live list: { off1, len1, ... } and their total.
local function gaps_of(block, live)
    local gaps, free, at = {}, 0, 0
    for i = 1, #live, 2 do
        local off, size = live[i], live[i + 1]
        if off > at then
            gaps[#gaps + 1], gaps[#gaps + 2] = at, off - at
            free = free + off - at
        end
        at = off + size
    end
    if block > at then
        gaps[#gaps + 1], gaps[#gaps + 2] = at, block - at
        free = free + block - at
    end
    return gaps, free
end

-- Open block i (in self.open) closes; its table is kept for the next.
function Packer:close_at(i)
    local open = self.open
    local b, n = open[i], #open
    for j = i, n - 1 do open[j] = open[j + 1] end
    open[n] = nil
    self.by_pbn[b.pbn] = nil
    if self.current == b then self.current = nil end
    self.spare = b
end

-- Open blocks beyond the limit close: the one with the least room first.
function Packer:trim_open()
    local open = self.open
    while #open > self.open_max do
        local at, least = 1, open[1].free
        for i = 2, #open do
            if open[i].free < least then at, least = i, open[i].free end
        end
        self:close_at(at)
    end
end

-- Open pbn with the gaps in gaps (nil: the whole block). A request that
-- fills block after block opens and closes one per fragment: the block
-- closed last lends its tables (no garbage per fragment).
function Packer:add_open(pbn, gaps, free)
    local b = self.spare
    self.spare = nil
    if not gaps then
        gaps = b and b.gaps or {}
        for i = #gaps, 3, -1 do gaps[i] = nil end
        gaps[1], gaps[2] = 0, self.block
    end
    if b then
        b.pbn, b.gaps, b.free, b.next_off = pbn, gaps, free, -1
    else
        b = { pbn = pbn, gaps = gaps, free = free, next_off = -1 }
    end
    self.open[#self.open + 1] = b
    self.by_pbn[pbn] = b
    self:trim_open()
    return b
end

-- Drop the pair at i of a flat list (no table.remove: it stops the JIT).
local function drop_pair(list, i)
    local n = #list
    for j = i, n - 2 do list[j] = list[j + 2] end
    list[n], list[n - 1] = nil, nil
end

-- Room for size bytes: returns pbn, off. With follow, right after the
-- fragment placed last when it fits there (the fragments of one request
-- then lie in order, written and read back with few calls); else best
-- fit: the smallest gap that holds it, so large gaps stay for large
-- fragments. fresh: a function, or an object whose :fresh() gives the
-- block (a method: no closure per call).
function Packer:place(size, fresh, follow)
    if size < 1 or size > self.block then
        error(("usbd.dedup.packer: a fragment of %d bytes in %d-byte blocks"):format(size, self.block), 2)
    end
    local best, best_i, best_len
    local cur = self.current
    if follow and cur and self.by_pbn[cur.pbn] == cur then
        local gaps = cur.gaps
        for i = 1, #gaps, 2 do
            if gaps[i] == cur.next_off and gaps[i + 1] >= size then
                best, best_i, best_len = cur, i, gaps[i + 1]
                break
            end
        end
    end
    if not best then
        local open = self.open
        for k = 1, #open do
            local b = open[k]
            if b.free >= size then
                local gaps = b.gaps
                for i = 1, #gaps, 2 do
                    local len = gaps[i + 1]
                    if len >= size and (not best or len < best_len) then
                        best, best_i, best_len = b, i, len
                    end
                end
            end
        end
    end
    if not best then
        if not fresh then return nil end
        local pbn
        if type(fresh) == "function" then pbn = fresh() else pbn = fresh:fresh() end
        best = self:add_open(pbn, nil, self.block)
        best_i, best_len = 1, self.block
    end
    local gaps = best.gaps
    local off = gaps[best_i]
    if best_len == size then
        drop_pair(gaps, best_i)
    else
        gaps[best_i], gaps[best_i + 1] = off + size, best_len - size
    end
    best.free = best.free - size
    best.next_off, self.current = off + size, best
    local pbn = best.pbn
    if best.free < self.min_gap or #gaps == 0 then self:forget(pbn) end
    return pbn, off
end

-- Open pbn again with the gaps its live fragments leave.
function Packer:reopen(pbn, live)
    if self.by_pbn[pbn] then return end
    local gaps, free = gaps_of(self.block, live)
    if free >= self.min_gap then self:add_open(pbn, gaps, free) end
end

function Packer:forget(pbn)
    local b = self.by_pbn[pbn]
    if not b then return end
    local open = self.open
    for i = 1, #open do
        if open[i] == b then return self:close_at(i) end
    end
end

function Packer:is_open(pbn) return self.by_pbn[pbn] ~= nil end
function Packer:open_count() return #self.open end
function Packer:open_pbn(i) return self.open[i].pbn end  -- i from 1 to open_count()

-- A packer for blocks of block bytes. opts.open: blocks kept open for
-- placing (8); opts.min_gap: a block with less room than this closes (32).
function M.new(block, opts)
    opts = opts or {}
    return setmetatable({
        block = block, open_max = opts.open or DEFAULT_OPEN, min_gap = opts.min_gap or 32,
        open = {}, by_pbn = {},
    }, Packer)
end

-- ---- Live lists ----------------------------------------------------------

-- Add fragment (off, size) to a sorted live list; returns its live bytes.
-- (Shifts by hand: table.insert with a position stops the JIT.)
function M.add(live, off, size)
    local n = #live
    local i = n + 1
    while i > 1 and live[i - 2] > off do
        live[i], live[i + 1] = live[i - 2], live[i - 1]
        i = i - 2
    end
    live[i], live[i + 1] = off, size
    local bytes = 0
    for j = 2, n + 2, 2 do bytes = bytes + live[j] end
    return bytes
end

-- Remove fragment (off, size); returns its live bytes, or nil when the
-- list does not hold it.
function M.remove(live, off, size)
    local found
    for i = 1, #live, 2 do
        if live[i] == off and live[i + 1] == size then found = i break end
    end
    if not found then return nil end
    drop_pair(live, found)
    local bytes = 0
    for j = 2, #live, 2 do bytes = bytes + live[j] end
    return bytes
end

local char, byte = string.char, string.byte

function M.encode(live)
    local out = {}
    for i = 1, #live, 2 do
        local off, size = live[i], live[i + 1]
        out[#out + 1] = char(math.floor(off / 256), off % 256, math.floor(size / 256), size % 256)
    end
    return table.concat(out)
end

-- The list a record holds, or nil when it is not one (a damaged store).
function M.decode(s)
    if #s % 4 ~= 0 then return nil end
    local live = {}
    for at = 1, #s, 4 do
        local a, b, c, d = byte(s, at, at + 3)
        live[#live + 1], live[#live + 2] = a * 256 + b, c * 256 + d
    end
    return live
end

-- Problems of a live list in a block of block bytes (fragments out of the
-- block, overlapping, out of order, empty): a list of strings, empty when
-- sound. For the store check.
function M.problems(live, block)
    local out, at = {}, 0
    for i = 1, #live, 2 do
        local off, size = live[i], live[i + 1]
        if size == 0 then
            out[#out + 1] = ("an empty fragment at %d"):format(off)
        elseif off < at then
            out[#out + 1] = ("the fragment at %d overlaps the one before it"):format(off)
        elseif off + size > block then
            out[#out + 1] = ("the fragment at %d (%d bytes) ends past the block"):format(off, size)
        end
        at = math.max(at, off + size)
    end
    return out
end

return M

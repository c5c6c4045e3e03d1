-- cachedisk.lua: a read cache as a block transform. Blocks read from the
-- device below stay in memory, up to a bound, and the least recently used
-- go first (the clock algorithm); writes go through to the device below
-- and update the blocks cached. Useful over a slow device: a network store,
-- slowdisk.
--
--   usbd-lua -U /tmp/c.sock cachedisk size=256M -- slowdisk latency=5 -- filedisk path=disk.img
--
--   size=SIZE     memory for cached blocks (default 64M)
--   block=SIZE    the unit cached (default 64K, a power of two from 4K)
--
-- stats(): cache_hits, cache_misses (with the server's statistics).
local usbd = require "usbd"

local Cachedisk = usbd.transform()

local function open(args, base)
    local block = usbd.size_arg(args, "block", "64K")
    if block < 4096 or bit.band(block, block - 1) ~= 0 then
        error("block= is a power of two from 4K, got " .. tostring(args.block), 0)
    end
    local slots = math.floor(usbd.size_arg(args, "size", "64M") / block)
    if slots < 1 then error("size= holds no block of " .. block .. " bytes", 0) end
    return Cachedisk:wrap(base, {
        block = block, bytes = base:size(), nslots = slots,
        slots = {},    -- i -> { n = block number, buf = data, used = recently read }
        where = {},    -- block number -> slot index
        hand = 1,      -- the clock's hand
        changes = 0,   -- bumped as each write, trim or zeroing starts and ends
        hits = 0, misses = 0,
    })
end

-- A slot for block n: a free one, or the first the clock finds unused
-- since it last passed.
function Cachedisk:evict_for(n)
    local i
    if #self.slots < self.nslots then
        i = #self.slots + 1
        self.slots[i] = { buf = usbd.buffer(self.block) }
    else
        while true do
            local s = self.slots[self.hand]
            i, self.hand = self.hand, self.hand % self.nslots + 1
            if not s.used then break end
            s.used = false
        end
        local old = self.slots[i].n
        if old then self.where[old] = nil end
    end
    local slot = self.slots[i]
    slot.n, slot.used = n, true
    self.where[n] = i
    return slot
end

-- Block n, read from below if it is not cached. While it is read, other
-- requests run; if any write, trim or zeroing started or ended meanwhile,
-- what was read may be stale, and it is not kept (simple, and never wrong).
function Cachedisk:fetch(n, len)
    local i = self.where[n]
    if i then
        self.hits = self.hits + 1
        local slot = self.slots[i]
        slot.used = true
        return slot.buf
    end
    self.misses = self.misses + 1
    local s = usbd.scratch.get(self.block)
    local changes = self.changes
    local ok, err = xpcall(self.base.read_at, usbd.keep_trace, self.base, s:sub(0, len), n * self.block)
    if not ok then
        usbd.scratch.put(s)
        error(err, 0)
    end
    if changes == self.changes and not self.where[n] then
        self:evict_for(n).buf:copy_from(s:sub(0, len))
    end
    return s, true
end

function Cachedisk:read_at(buf, pos)
    local done = 0
    while done < buf.len do
        local at = pos + done
        local n = math.floor(at / self.block)
        local len = math.min(self.block, self.bytes - n * self.block)
        local off = at - n * self.block
        local take = math.min(len - off, buf.len - done)
        local data, scratch = self:fetch(n, len)
        buf:sub(done, take):copy_from(data:sub(off, take))
        if scratch then usbd.scratch.put(data) end
        done = done + take
    end
end

-- Blocks [pos, pos+len) touch: fn(slot or nil, block number, offset in
-- the block, offset in the range, length).
function Cachedisk:each_cached(pos, len, fn)
    local n, last = math.floor(pos / self.block), math.floor((pos + len - 1) / self.block)
    for b = n, last do
        local i = self.where[b]
        if i then
            local start = math.max(pos, b * self.block)
            local stop = math.min(pos + len, (b + 1) * self.block)
            fn(self.slots[i], b, start - b * self.block, start - pos, stop - start)
        end
    end
end

-- Write through; then the cached blocks hold the new bytes.
function Cachedisk:write_at(buf, pos)
    self.changes = self.changes + 1
    self.base:write_at(buf, pos)
    self.changes = self.changes + 1
    self:each_cached(pos, buf.len, function(slot, _, off, from, len)
        slot.buf:sub(off, len):copy_from(buf:sub(from, len))
    end)
end

-- Cached blocks in a zeroed range are dropped.
function Cachedisk:drop(pos, len)
    self:each_cached(pos, len, function(slot, b)
        self.where[b] = nil
        slot.n, slot.used = nil, false
    end)
end

function Cachedisk:trim(pos, count)
    self.changes = self.changes + 1
    self:drop(pos, count)
    self.base:trim(pos, count)
    self.changes = self.changes + 1
    self:drop(pos, count)
end

function Cachedisk:write_zeroes(pos, count)
    self.changes = self.changes + 1
    self:drop(pos, count)
    self.base:write_zeroes(pos, count)
    self.changes = self.changes + 1
    self:drop(pos, count)
end

function Cachedisk:stats()
    return { cache_hits = self.hits, cache_misses = self.misses }
end

return {
    open = open,
    transform = true,
    params = { size = "memory for cached blocks (default 64M)", block = "the unit cached (default 64K)" },
}

-- For the specs of the dedupdisk's store (lua/usbd/dedup/): a store opened
-- without the device, and whole blocks stored and loaded as strings.
local usbd = require "usbd"
local store = require "usbd.dedup.store"

local M = { K = 4096 }

-- A store in a new folder under dir (made by device_helper.scratch):
-- 16 MiB of 4 KiB blocks unless opts say otherwise.
function M.open(path, opts)
    local o = { size = 16 * 2 ^ 20, block = 4096, index = 2 ^ 20, records = 64, map_cache = 16,
        cache = 8 * 2 ^ 20, memtable = 4 * 2 ^ 20 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return store.open(path, o)
end

-- A class of the given parts' methods alone (a spec of one part adds what
-- it needs of the others).
function M.class(...)
    local class = {}
    for _, part in ipairs({ ... }) do
        for name, fn in pairs(part.methods) do class[name] = fn end
    end
    class.__index = class
    return class
end

-- Store s (whole blocks) at logical block first; load n blocks from first.
function M.store(st, first, s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    st:store(b, first)
end

function M.load(st, first, n)
    local b = usbd.buffer(n * st.block)
    b:fill(0xee)   -- a load must fill all of it
    st:load(b, first)
    return b:tostring()
end

-- len random bytes, the same for the same seed.
function M.rnd(len, seed)
    math.randomseed(seed)
    local t = {}
    for i = 1, len do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

-- A block that compresses well and is its own (compress=).
function M.text(seed, block)
    block = block or M.K
    local line = ("block %d, a line that repeats. "):format(seed)
    return string.rep(line, math.ceil(block / #line)):sub(1, block)
end

-- The id logical block lba names (0: none).
function M.id_of(st, lba)
    local e = st:extents_over(lba, lba)[1]
    if not e or e.last - e.count + 1 > lba then return 0 end
    return e.id + (lba - (e.last - e.count + 1))
end

return M

-- usbd.sparse(size): zeroed memory for a device's bytes that takes memory
-- only for what is written (src/services/sparse.c keeps it in 64 KiB chunks).
--
--   local store = usbd.sparse(2^30)
--   store:write(buf, pos)          -- all of buf, at pos
--   store:read(buf, pos)           -- fills all of buf; unwritten bytes are zero
--   store:discard(pos, count)      -- zeroes; whole chunks give their memory back
--   store:extents(pos, count)      -- { len, flags, ... }: unwritten runs are
--                                  -- usbd.HOLE + usbd.ZERO, written ones 0
--   store:allocated()              -- bytes of memory holding data
--   store:size(), store:stats()
--
-- Reads of never-written or discarded ranges zero buf and touch no memory
-- of the store's, so reading a whole empty store costs nothing, even on
-- kernels without a shared zero page. Bytes move in one copy between buf
-- and the store. The memory is released when the store is collected.
local ffi = require "ffi"
local C = require "usbd.core"
local E = require "usbd.errors".E

local Sparse = {}
Sparse.__index = Sparse

local EINVAL = E.INVAL.errno

local function check(self, pos, count, what, level)
    if pos < 0 or count < 0 or pos + count > tonumber(C.usbd_sparse_size(self)) then
        error(("sparse:%s(%d bytes at %d) reaches outside a store of %d bytes")
            :format(what, count, pos, tonumber(C.usbd_sparse_size(self))), level or 3)
    end
end

-- C's answer: 0, or -errno. Running out of memory is running out of space.
local function must(rc, self, pos, count, what)
    if rc == 0 then return end
    if rc == -EINVAL then check(self, pos, count, what, 4) end
    error(E.NOSPC, 0)
end

function Sparse:size()
    return tonumber(C.usbd_sparse_size(self))
end

-- Fill all of buf with the bytes at pos.
function Sparse:read(buf, pos)
    must(C.usbd_sparse_read(self, buf.ptr, buf.nbytes, pos), self, pos, buf.len, "read")
end

-- Store all of buf at pos.
function Sparse:write(buf, pos)
    must(C.usbd_sparse_write(self, buf.ptr, buf.nbytes, pos), self, pos, buf.len, "write")
end

-- Zero count bytes at pos, freeing the chunks the range covers whole.
function Sparse:discard(pos, count)
    must(C.usbd_sparse_discard(self, pos, count), self, pos, count, "discard")
end

-- The runs of [pos, pos+count) as { len1, flags1, len2, flags2, ... } (at
-- most MAX_RUNS of them, so possibly less than count).
local MAX_RUNS = 1024
local runs = ffi.new("uint64_t[?]", 2 * MAX_RUNS)
function Sparse:extents(pos, count)
    check(self, pos, count, "extents")
    local n = C.usbd_sparse_extents(self, pos, count, runs, MAX_RUNS)
    local out = {}
    for i = 0, 2 * n - 1 do out[i + 1] = tonumber(runs[i]) end
    return out
end

local stats = ffi.new("usbd_sparse_stats")

-- Bytes of memory holding data.
function Sparse:allocated()
    C.usbd_sparse_get_stats(self, stats)
    return tonumber(stats.allocated)
end

-- Figures about the store's memory, as numbers: size, allocated, pooled
-- (freed chunks kept for reuse), mapped (address space), tables, chunk_size.
function Sparse:stats()
    C.usbd_sparse_get_stats(self, stats)
    local out = {}
    for _, k in ipairs { "size", "allocated", "pooled", "mapped", "tables", "chunk_size" } do
        out[k] = tonumber(stats[k])
    end
    return out
end

ffi.metatype("usbd_sparse", {
    __index = Sparse,
    __tostring = function(self)
        return ("usbd.sparse(%d bytes, %d allocated)"):format(self:size(), self:allocated())
    end,
})

-- A new store of size bytes, all zero.
return function(size)
    if type(size) ~= "number" or size < 0 or size ~= math.floor(size) then
        error("usbd.sparse(size) wants a byte count, got " .. tostring(size), 2)
    end
    local s = C.usbd_sparse_new(size)
    if s == nil then error("usbd.sparse: cannot make a store of " .. size .. " bytes", 2) end
    return ffi.gc(s, C.usbd_sparse_free)
end

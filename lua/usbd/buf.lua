-- buf: a view of bytes (ptr, len) with the helpers devices need. A view
-- never owns what it points at, except a buffer from usbd.buffer(n), whose
-- memory is released when it is collected; views of it (sub) do not keep it
-- alive, so keep the owner in the device object.
local ffi = require "ffi"
local C = require "usbd.core"

local Buf = {}
local new_view = ffi.typeof("usbd_buf")

local function check_range(self, offset, len, what)
    if offset < 0 or len < 0 or offset + len > tonumber(self.nbytes) then
        error(("%s(%d, %d) reaches outside a buffer of %d bytes")
            :format(what, offset, len, tonumber(self.nbytes)), 3)
    end
end

-- A view of len bytes from offset (default: to the end).
function Buf:sub(offset, len)
    len = len or tonumber(self.nbytes) - offset
    check_range(self, offset, len, "buf:sub")
    return new_view(self.ptr + offset, len)
end

-- Copy src (a buf or a Lua string) into this buffer at offset (default 0).
function Buf:copy_from(src, offset)
    offset = offset or 0
    local n = type(src) == "string" and #src or tonumber(src.nbytes)
    check_range(self, offset, n, "buf:copy_from")
    ffi.copy(self.ptr + offset, type(src) == "string" and src or src.ptr, n)
end

-- Set every byte to byte (default 0).
function Buf:fill(byte)
    ffi.fill(self.ptr, self.nbytes, byte or 0)
end

-- Zero the bytes, giving whole pages of a usbd.buffer back to the system.
function Buf:discard()
    C.usbd_mem_discard(self.ptr, self.nbytes)
end

function Buf:is_zero()
    return C.usbd_mem_is_zero(self.ptr, self.nbytes) ~= 0
end

-- Whether other (a buf of the same length) holds the same bytes.
function Buf:equals(other)
    return self.nbytes == other.nbytes and C.usbd_mem_equal(self.ptr, other.ptr, self.nbytes) ~= 0
end

-- XXH3 128-bit hash of the bytes, as a 16-byte string (a good table key).
local hash_out = ffi.new("uint8_t[16]")
function Buf:hash128()
    C.usbd_hash128(self.ptr, self.nbytes, hash_out)
    return ffi.string(hash_out, 16)
end

-- XXH3 128-bit hash of each block of block bytes (one C call for all):
-- an array of 16-byte strings; or, given out (a uint8_t array of 16 bytes
-- per block), the hashes there, no strings made (a hot path's way).
local block_hashes_out, block_hashes_cap = nil, 0
function Buf:block_hashes(block, out)
    if out then
        C.usbd_hash128_blocks(self.ptr, self.nbytes, block, out)
        return out
    end
    local n = math.ceil(tonumber(self.nbytes) / block)
    if n > block_hashes_cap then
        block_hashes_cap = math.max(n, 256)
        block_hashes_out = ffi.new("uint8_t[?]", 16 * block_hashes_cap)
    end
    C.usbd_hash128_blocks(self.ptr, self.nbytes, block, block_hashes_out)
    local hashes = {}
    for i = 0, n - 1 do hashes[i + 1] = ffi.string(block_hashes_out + 16 * i, 16) end
    return hashes
end

-- Borrowing (the zero-copy read path). The READ buffers being filled now,
-- each the buffer's view (the one the device got) -> its request; the
-- server registers and forgets them.
local replies = {}

-- The bytes at [at, at + #src) of this buffer are src's: when this is a
-- READ request's buffer, its reply sends them straight from src, which
-- must then stay unchanged until the reply is sent or settled
-- (usbd.settle_borrowed; usbd.file's map:lend sees to it for a file's
-- page cache). Otherwise, or when the reply holds as many borrowed pieces
-- as it can, they are copied here. Bytes of this buffer under a borrowed
-- piece are not sent. Returns true when borrowed.
function Buf:borrow(at, src)
    local n = tonumber(src.nbytes)
    check_range(self, at, n, "buf:borrow")
    local req = replies[self]
    local r = req and C.usbd_request_borrow(req, at, src.ptr, n) or -1
    if r == 1 then return true end
    if r == -1 then ffi.copy(self.ptr + at, src.ptr, n) end  -- (0: the core copied it)
    return false
end

-- The bytes as a Lua string: a copy, for tests and debugging.
function Buf:tostring()
    return ffi.string(self.ptr, self.nbytes)
end

local mt = {
    __index = function(self, key)
        if key == "len" then return tonumber(self.nbytes) end
        return Buf[key]
    end,
    __len = function(self) return tonumber(self.nbytes) end,
    __tostring = function(self) return ("usbd.buf(%d bytes)"):format(tonumber(self.nbytes)) end,
}
ffi.metatype("usbd_buf", mt)

-- A new zeroed buffer of n bytes that owns its memory.
local function owned_free(b)
    C.usbd_mem_free(b.ptr, b.nbytes)
end
local function buffer(n)
    if type(n) ~= "number" or n < 0 or n ~= math.floor(n) then
        error("usbd.buffer(n) wants a byte count, got " .. tostring(n), 2)
    end
    local ptr = C.usbd_mem_alloc(n)
    if ptr == nil then error("usbd.buffer: cannot allocate " .. n .. " bytes", 2) end
    return ffi.gc(new_view(ptr, n), owned_free)
end

-- Zeroes the slow way, for storage that cannot zero a range itself: calls
-- write(zeroes, pos) for each piece of [pos, pos+count), zeroes being a view
-- of one shared zeroed buffer that nobody writes into.
local ZERO_CHUNK = 1024 * 1024
local zero_source
-- A view of n (at most ZERO_CHUNK) zero bytes that nobody writes into:
-- to write from, or to borrow.
local function zeroes(n)
    if not zero_source then
        zero_source = buffer(ZERO_CHUNK)
        zero_source:fill(0)  -- its pages in now, once (a kernel may have no zero page)
    end
    return zero_source:sub(0, n)
end
local function write_zeroes_with(write, pos, count)
    while count > 0 do
        local n = math.min(count, ZERO_CHUNK)
        write(zeroes(n), pos)
        pos, count = pos + n, count - n
    end
end

-- Scratch memory a device needs for one request (a cipher's output, a
-- block being copied), recycled: a fresh buffer's pages fault in on first
-- touch, a recycled one's are ready. get(n) returns a buffer of at least n
-- bytes (a power of two, from 4 KiB), holding whatever was there; put(b)
-- gives it back. At most SCRATCH_KEEP bytes wait for reuse.
local SCRATCH_KEEP = 64 * 1024 * 1024
local scratch = { free = {}, kept = 0 }
function scratch.get(n)
    local size = 4096
    while size < n do size = size * 2 end
    local list = scratch.free[size]
    local b = list and list[#list]
    if b then
        list[#list] = nil
        scratch.kept = scratch.kept - size
        return b
    end
    return buffer(size)
end
function scratch.put(b)
    local size = tonumber(b.nbytes)
    if scratch.kept + size > SCRATCH_KEEP then return end  -- the collector frees it
    local list = scratch.free[size] or {}
    scratch.free[size] = list
    list[#list + 1] = b
    scratch.kept = scratch.kept + size
end

return { buffer = buffer, view = new_view, write_zeroes_with = write_zeroes_with, scratch = scratch,
    zeroes = zeroes, ZERO_CHUNK = ZERO_CHUNK, replies = replies }

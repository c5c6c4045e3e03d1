-- usbd.codec: blocks compressed each on its own (liblz4, libzstd), so any
-- one of them reads back alone; for devices that store less than they are
-- given (the dedupdisk's compress=).
--
--   local codec = usbd.codec.new("zstd:3")   -- "lz4" (fast), "zstd", "zstd:LEVEL"
--   codec.name, codec.level, codec.spec      -- "zstd", 3, "zstd:3"
--   local packed = codec:compress(buf, 4096) -- every 4 KiB block of buf
--   packed.n, packed.bytes                   -- blocks; bytes of all fragments
--   packed:size(i)                           -- block i's fragment (i from 0);
--                                            --   0: raw, store buf's block as is
--   packed:fragment(i)                       -- a view of it, to store
--   packed.buf, packed.at[i]                 -- all fragments (a buf), block
--                                            --   i's offset in it
--   packed:release()                         -- its memory, for the next compress
--   codec:decompress(fragment, block)        -- one fragment into one block (bufs)
--   codec:decompress_blocks(src, at, sizes, dst, block)
--       -- many: fragment i of sizes[i] bytes at src + at[i] into block i of
--       -- dst (buf); sizes[i] 0 leaves it. at, sizes: arrays from 0, as
--       -- packed.at and packed.sizes are (a read of a whole request)
--   codec:read_blocks(file, ranges, nr, scratch, at, sizes, dst, block)
--       -- the same, its fragments first read from file (usbd.file) into
--       -- scratch (a buf) from nr usbd_range (pos in the file, at in
--       -- scratch), all in one job: a read costs one hand-over, not two
--
-- A block is raw when compressing does not save at least an eighth of it
-- (compress's limit: block * 7/8 bytes by default). Large calls (INLINE_MAX
-- bytes and up) run on a worker thread (usbd.jobs) inside a request, so the
-- Lua thread goes on serving and both cores work; small ones cost less
-- than the hand-over and run on the spot. A damaged fragment raises
-- usbd.E.IO.
local ffi = require "ffi"
-- (C types as values: outside compiled code LuaJIT parses a type's string
-- on every call, about 0.3 us each)
local u8p, cu8p = ffi.typeof("uint8_t *"), ffi.typeof("const uint8_t *")
local C = require "usbd.core"
local bufs = require "usbd.buf"
local errors = require "usbd.errors"
local jobs = require "usbd.jobs"
local check_ranges = require("usbd.file").check_ranges
local E = errors.E

local M = {}

M.INLINE_MAX = 32 * 1024   -- bytes of blocks below which a call runs on the spot

local CODECS = { lz4 = C.USBD_CODEC_LZ4, zstd = C.USBD_CODEC_ZSTD }
local ZSTD_DEFAULT_LEVEL = 3

local by_errno = {}
for _, e in pairs(E) do by_errno[e.errno] = e end
local function raise(errno)
    error(by_errno[errno] or E.IO, 0)
end

-- "lz4", "zstd", "zstd:LEVEL" -> name, level. A one-line error otherwise.
function M.parse(spec)
    if type(spec) ~= "string" then
        error("a codec is lz4 or zstd[:LEVEL], got " .. tostring(spec), 2)
    end
    local name, level = spec:match("^(%w+):(.*)$")
    name = name or spec
    local id = CODECS[name]
    if not id then
        error(("unknown codec '%s': use lz4 or zstd[:LEVEL]"):format(spec), 2)
    end
    if level == nil then
        return name, name == "zstd" and ZSTD_DEFAULT_LEVEL or 0
    end
    if name == "lz4" then
        error(("'%s': lz4 takes no level (zstd:LEVEL does)"):format(spec), 2)
    end
    local n = tonumber(level)
    local lo, hi = C.usbd_codec_level_min(id), C.usbd_codec_level_max(id)
    if not n or n ~= math.floor(n) or n < lo or n > hi or not level:match("^%-?%d+$") then
        error(("'%s': the zstd level is a whole number from %d to %d"):format(spec, lo, hi), 2)
    end
    return name, n
end

local Codec = {}
Codec.__index = Codec

local BLOCK_MAX = 2 ^ 30   -- src/services/codec.c takes blocks of 1 byte to 1 GiB

-- A one-line error from who (for its caller) unless len bytes are whole
-- blocks of block bytes (a whole number: C would take 1.5 as 1, and
-- fill more per-block slots than were made).
local function check_blocks(who, len, block)
    if type(block) ~= "number" or block < 1 or block > BLOCK_MAX or block % 1 ~= 0 or len % block ~= 0 then
        error(("%s: %d bytes are not whole blocks of %s"):format(who, len, tostring(block)), 3)
    end
end

-- The per-block arrays of a decompress: none may be missing (C would
-- follow a NULL), and with the source's length known, each fragment lies
-- inside it.
local function check_fragments(who, n, at, sizes, src_len)
    if n > 0 and (at == nil or sizes == nil) then
        error(who .. ": no at or sizes array for the fragments", 3)
    end
    if src_len then
        for i = 0, n - 1 do
            local size = sizes[i]
            if size ~= 0 and (at[i] > src_len or size > src_len - at[i]) then
                error(("%s: fragment %d (%d bytes at %d) falls outside a scratch buffer of %d bytes")
                    :format(who, i, size, tonumber(at[i]), src_len), 3)
            end
        end
    end
end

local Packed = {}
Packed.__index = Packed

-- Packed results are recycled: a fresh 1 MiB output would cost its first
-- touch (256 page faults) on every request.
local free_packed = {}
local MAX_FREE = 8      -- at most 8 MiB kept for 1 MiB requests

local function packed_for(bytes, n)
    for i = #free_packed, 1, -1 do
        local p = free_packed[i]
        if p.room >= bytes and p.slots >= n then
            table.remove(free_packed, i)
            return p
        end
    end
    local room, slots = 4096, 1
    while room < bytes do room = room * 2 end
    while slots < n do slots = slots * 2 end
    local data = bufs.buffer(room)
    return setmetatable({
        data = data.ptr, buf = data, room = room, slots = slots,
        at = ffi.new("uint64_t[?]", slots), sizes = ffi.new("uint32_t[?]", slots),
        desc = ffi.new("usbd_codec_pack"), n = 0, bytes = 0,
    }, Packed)
end

-- Bytes of block i's fragment (i from 0); 0: raw.
function Packed:size(i)
    return self.sizes[i]
end

-- A view of block i's fragment (empty when raw).
function Packed:fragment(i)
    return bufs.view(self.data + self.at[i], self.sizes[i])
end

function Packed:release()
    if #free_packed < MAX_FREE then
        free_packed[#free_packed + 1] = self
    end
end

-- Run fn on desc: through a job when large, else here; raise on failure.
local function call(job_fn, run_fn, desc, bytes)
    local r
    if bytes >= M.INLINE_MAX then
        local job = jobs.get()
        job.run, job.ptr = job_fn, ffi.cast(u8p, desc)
        jobs.run(job)
        local err = job.err
        r = job.result
        jobs.put(job)
        if err ~= 0 then raise(err) end
    else
        r = run_fn(desc)
        if r < 0 then raise(-tonumber(r)) end
    end
    return tonumber(r)
end

-- Compress each block of buf (block bytes, buf.len a multiple of it); a
-- block that does not fit in limit bytes (default block * 7/8) is raw.
function Codec:compress(buf, block, limit)
    local len = buf.len
    check_blocks("codec:compress", len, block)
    if limit ~= nil and (type(limit) ~= "number" or limit < 1 or limit % 1 ~= 0) then
        error(("codec:compress: a limit of %s bytes"):format(tostring(limit)), 2)
    end
    limit = math.min(limit or block - math.floor(block / 8), block - 1)
    local n = len / block
    local p = packed_for(n * limit, n)
    local d = p.desc
    d.src, d.dst, d.at, d.sizes = buf.ptr, p.data, p.at, p.sizes
    d.len, d.dst_max, d.block, d.limit = len, p.room, block, limit
    d.codec, d.level = self.id, self.level
    p.n = n
    p.bytes = call(C.usbd_job_codec_pack, C.usbd_codec_pack_run, d, len)
    return p
end

local free_unpack = {}

-- Fragment i (sizes[i] bytes at src + at[i]) into block i of dst.
function Codec:decompress_blocks(src, at, sizes, dst, block)
    local len = dst.len
    check_blocks("codec:decompress_blocks", len, block)
    if src == nil and len > 0 then error("codec:decompress_blocks: no source of fragments", 2) end
    check_fragments("codec:decompress_blocks", len / block, at, sizes)
    local u = table.remove(free_unpack) or ffi.new("usbd_codec_unpack")
    u.src, u.at, u.sizes, u.dst = ffi.cast(cu8p, src), at, sizes, dst.ptr
    u.n, u.block, u.codec = len / block, block, self.id
    local ok, err = pcall(call, C.usbd_job_codec_unpack, C.usbd_codec_unpack_run, u, len)
    u.src, u.at, u.sizes, u.dst = nil, nil, nil, nil
    free_unpack[#free_unpack + 1] = u
    if not ok then error(err, 0) end
end

local free_read = {}

-- Read nr ranges of file into scratch, then decompress as decompress_blocks
-- does (src = scratch), in one job on a worker.
function Codec:read_blocks(file, ranges, nr, scratch, at, sizes, dst, block)
    local len = dst.len
    check_blocks("codec:read_blocks", len, block)
    check_ranges("codec:read_blocks", scratch, ranges, nr)
    check_fragments("codec:read_blocks", len / block, at, sizes, scratch.len)
    local d = table.remove(free_read) or ffi.new("usbd_codec_read")
    local u = d.unpack
    u.src, u.at, u.sizes, u.dst = scratch.ptr, at, sizes, dst.ptr
    u.n, u.block, u.codec = len / block, block, self.id
    d.ranges, d.nranges = ranges, nr
    local ok, err = pcall(file.run_job, file, C.usbd_job_codec_read, d)
    u.src, u.at, u.sizes, u.dst, d.ranges = nil, nil, nil, nil, nil
    free_read[#free_read + 1] = d
    if not ok then error(err, 0) end
end

-- One fragment (a buf) into one block (a buf, its whole length).
local one_at, one_size = ffi.new("uint64_t[1]"), ffi.new("uint32_t[1]")
function Codec:decompress(fragment, block)
    if fragment.len == 0 then
        error("codec:decompress: an empty fragment (a raw block needs none)", 2)
    end
    local at, size = one_at, one_size
    if block.len >= M.INLINE_MAX then  -- a job: the shared pair could be reused meanwhile
        at, size = ffi.new("uint64_t[1]"), ffi.new("uint32_t[1]")
    end
    at[0], size[0] = 0, fragment.len
    self:decompress_blocks(fragment.ptr, at, size, block, block.len)
end

function Codec:__tostring()
    return "usbd.codec(" .. self.spec .. ")"
end

-- A codec from its spec: "lz4" (the default), "zstd" (level 3), "zstd:LEVEL".
function M.new(spec)
    local name, level = M.parse(spec or "lz4")
    return setmetatable({
        name = name, level = level, id = CODECS[name],
        spec = name == "zstd" and ("zstd:" .. level) or name,
    }, Codec)
end

return M

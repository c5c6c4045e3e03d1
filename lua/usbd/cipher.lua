-- usbd.cipher: AES-XTS over sectors, as dm-crypt's aes-xts-plain64
-- (src/services/cipher.c, OpenSSL's libcrypto).
--
--   local xts = usbd.cipher.xts(key, 4096)   -- 64-byte key (string), sector size
--   xts:encrypt(src, dst, pos)  -- whole sectors of src into dst (same length) at pos
--   xts:decrypt(buf, pos)       -- in place; an all-zero sector stays zeroes
--   xts:decrypt_step(pos), xts:encrypt_step(pos)
--                               -- the same as steps (usbd.jobs) for the
--                               -- bytes of a read or write at pos, to run
--                               -- in its job (usbd.transform's read_below)
--
-- Large requests run on a worker thread (usbd.jobs): the request waits,
-- the server goes on, and the encryption uses another core. Small ones run
-- on the spot, where a job would cost more than the work.
local ffi = require "ffi"
local intptr_t = ffi.typeof("intptr_t")  -- (a type, not a string: parsed once)
local C = require "usbd.core"
local errors = require "usbd.errors"
local jobs = require "usbd.jobs"

local M = {}

-- At or above this many bytes a request's sectors go to a worker: a job's
-- round trip (wake a worker, wake the loop) costs ~10-20 us, what AES-XTS
-- does to ~32 KiB at 2-3 GB/s. USBD_CIPHER_JOB_MIN overrides it. (As
-- steps, whether the work goes to a worker is the I/O's: usbd.jobs.)
M.JOB_MIN = tonumber(os.getenv("USBD_CIPHER_JOB_MIN")) or 32 * 1024

local Xts = {}
Xts.__index = Xts

-- A cipher for key (64 bytes: two AES-256 keys) and sector_size (512 or
-- 4096). Raises a one-line error for a key or size it cannot use.
function M.xts(key, sector_size)
    sector_size = sector_size or 512
    if type(key) ~= "string" or #key ~= 64 then
        error("AES-256-XTS takes a 64-byte key (128 hex digits)", 2)
    end
    if sector_size ~= 512 and sector_size ~= 4096 then
        error("the sector size is 512 or 4096, got " .. tostring(sector_size), 2)
    end
    if key:sub(1, 32) == key:sub(33) then
        error("an XTS key's two halves must differ", 2)
    end
    local c = C.usbd_cipher_new(key, 64, sector_size)
    if c == nil then error("cannot set up AES-256-XTS", 2) end
    return setmetatable({ c = ffi.gc(c, C.usbd_cipher_free), sector = sector_size }, Xts)
end

local function run(self, enc, src, dst, pos)
    local len = tonumber(src.len)
    if len >= M.JOB_MIN then
        local job = jobs.get()
        job.run, job.ctx, job.ptr, job.len, job.pos = C.usbd_job_cipher, self.c, src.ptr, len, pos
        job.arg = dst and ffi.cast(intptr_t, dst.ptr) or 0
        job.fd = enc
        jobs.run(job)
        local err = job.err
        jobs.put(job)
        if err ~= 0 then error(errors.E.IO, 0) end
        return
    end
    if C.usbd_cipher_run(self.c, enc, src.ptr, dst and dst.ptr or src.ptr, len, pos) ~= 0 then
        error(errors.E.IO, 0)
    end
end

-- Encrypt src's sectors (src.len a multiple of the sector size, pos a
-- sector's start) into dst. src is left as it was.
function Xts:encrypt(src, dst, pos)
    assert(dst.len == src.len, "encrypt: dst and src differ in length")
    run(self, 1, src, dst, pos)
end

-- Decrypt buf's sectors in place.
function Xts:decrypt(buf, pos)
    run(self, 0, buf, nil, pos)
end

-- Steps for the sectors from pos on: the I/O that runs one gives it the
-- bytes (whole sectors). The cipher must outlive them.
local STEP = C.usbd_cipher_step
function Xts:decrypt_step(pos)
    return jobs.step(STEP, self.c, pos, 0, M.JOB_MIN)
end

function Xts:encrypt_step(pos)
    return jobs.step(STEP, self.c, pos, 1, M.JOB_MIN)
end

-- A key from hex digits (128 of them), or nil and why not.
function M.hex_key(hex)
    hex = hex:gsub("%s", "")
    if #hex ~= 128 or hex:find("[^%x]") then
        return nil, "a key is 128 hex digits (512 bits: AES-256-XTS's two keys)"
    end
    return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

return M

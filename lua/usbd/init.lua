-- require "usbd": what a device script may use.
local ffi = require "ffi"
local C = require "usbd.core"
local buf = require "usbd.buf"
local errors = require "usbd.errors"

local usbd = {
    version = ffi.string(C.usbd_version()),
    E = errors.E,            -- error(usbd.E.NOSPC)
    errno_of = errors.errno_of,
    buffer = buf.buffer,     -- usbd.buffer(n): zeroed memory a device owns
    file = require "usbd.file",  -- usbd.file.open(path, opts): I/O off the Lua thread
    jobs = require "usbd.jobs",  -- blocking C calls off the Lua thread
    kv = require "usbd.kv",      -- usbd.kv.open(dir, opts): RocksDB off the Lua thread
    -- extents(): flags of a run (NBD_STATE_HOLE, NBD_STATE_ZERO); 0 is data
    HOLE = 1,
    ZERO = 2,
}

-- "1G", "64k", "512", "4MiB" -> bytes. Raises a clear error otherwise.
function usbd.parse_size(s)
    if type(s) == "number" then return s end
    local n = C.usbd_parse_size(tostring(s))
    if n < 0 then
        error(("'%s' is not a size: use bytes or a K, M, G or T suffix, like 1G"):format(tostring(s)), 2)
    end
    return tonumber(n)
end

-- XXH3 128-bit hash of a Lua string (see buf:hash128 for buffers).
function usbd.hash128(s)
    return buf.view(ffi.cast("uint8_t *", s), #s):hash128()
end

-- Log a line to stderr; level 1 and above only with -v.
function usbd.log(level, fmt, ...)
    if level <= C.usbd_verbosity() then
        C.usbd_log(level, select("#", ...) > 0 and fmt:format(...) or fmt)
    end
end

return usbd

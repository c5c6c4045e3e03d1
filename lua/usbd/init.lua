-- require "usbd": what a device script may use.
local ffi = require "ffi"
local C = require "usbd.core"
local buf = require "usbd.buf"
local errors = require "usbd.errors"

local usbd = {
    version = ffi.string(C.usbd_version()),
    E = errors.E,            -- error(usbd.E.NOSPC)
    errno_of = errors.errno_of,
    keep_trace = errors.keep_trace,  -- xpcall(fn, usbd.keep_trace): re-raise keeping the traceback
    buffer = buf.buffer,     -- usbd.buffer(n): zeroed memory a device owns
    scratch = buf.scratch,   -- usbd.scratch.get(n)/put(b): recycled memory for one request
    sparse = require "usbd.sparse",  -- usbd.sparse(n): memory taken only when written
    file = require "usbd.file",  -- usbd.file.open(path, opts): I/O off the Lua thread
    jobs = require "usbd.jobs",  -- blocking C calls off the Lua thread
    kv = require "usbd.kv",      -- usbd.kv.open(dir, opts): RocksDB off the Lua thread
    rbd = require "usbd.rbd",    -- usbd.rbd.open{pool=, image=, ...}: Ceph RBD images
    codec = require "usbd.codec",  -- usbd.codec.new("lz4"): blocks compressed each alone
    -- Flags of a run that a device's extents(pos, count) reports
    -- (NBD_STATE_HOLE, NBD_STATE_ZERO of base:allocation); 0 is data.
    HOLE = 1,                -- not allocated
    ZERO = 2,                -- reads as zeroes
}

-- Stacking (docs/guide.md): usbd.open_device("filedisk", { path = "x.img" })
-- opens a shipped device by name, or a script by path (from the calling
-- script's directory first); usbd.transform() makes a device that stands
-- on another and passes through what it does not change.
usbd.open_device = require("usbd.device").open
usbd.exists = require("usbd.device").exists  -- usbd.exists(path): can it be opened for reading?
usbd.transform = require("usbd.transform").new
usbd.lock = require "usbd.lock"      -- usbd.lock(): one request at a time per key or byte range
-- Several calls at once in one request, and tasks beside the requests.
local parallel = require "usbd.parallel"
usbd.all = parallel.all                  -- usbd.all { fn, fn, ... }: at once; raises if any failed
usbd.all_settled = parallel.all_settled  -- the same, returning each call's error instead
usbd.each = parallel.each                -- usbd.each(items, fn, ...): fn(item, ...) for each, at once
usbd.each_settled = parallel.each_settled  -- the same, returning each call's error instead
usbd.pieces = require "usbd.pieces"      -- a request cut into pieces on several devices, at once
usbd.background = parallel.background    -- usbd.background(fn): beside the requests while serving
usbd.stopping = parallel.stopping        -- true once the server stops: a background task ends
usbd.cipher = require "usbd.cipher"  -- AES-XTS sectors, as dm-crypt

-- The zero-copy read path: a READ's buffer can borrow (buf:borrow) at most
-- MAX_BORROWED pieces (more are copied); usbd.zeroes(n) is n zero bytes
-- (n <= ZEROES_MAX) that nobody writes, to borrow or write from.
usbd.MAX_BORROWED = C.USBD_MAX_BORROWED
usbd.zeroes = buf.zeroes
usbd.ZEROES_MAX = buf.ZERO_CHUNK

-- Replies that borrow bytes (buf:borrow, a usbd.file map's lend) copy
-- what they have not sent yet into their own buffers: call it before
-- storage they may borrow from is written again (a store reusing a place).
function usbd.settle_borrowed()
    C.usbd_settle_borrowed()
end

-- A device whose storage can change size by itself (an image another
-- client resizes) calls usbd.size_changed(), from Lua or, being a C
-- function, from a library's thread (usbd.rbd's img:on_change): the
-- server asks its size() again, as on SIGHUP. Outside a server, nothing.
usbd.size_changed = C.usbd_serve_size_changed

-- The borrowing's counters: { borrowed_bytes, copied_bytes, settled_bytes,
-- settled_replies, settles, borrowing } (replies borrowing now).
function usbd.borrow_stats()
    local s = ffi.new("usbd_borrow_stats")
    C.usbd_borrow_get_stats(s)
    return { borrowed_bytes = tonumber(s.borrowed_bytes), copied_bytes = tonumber(s.copied_bytes),
        settled_bytes = tonumber(s.settled_bytes), settled_replies = tonumber(s.settled_replies),
        settles = tonumber(s.settles), borrowing = tonumber(s.borrowing) }
end

-- Sizes. Every SIZE, the server's options' and the devices' KEY=VALUE
-- pairs, goes through one parser, the core's (src/cli.h): bytes ("4096"),
-- or a number with K, M, G, T or P after it, 1024-based, in either case,
-- with B or iB after that optional ("64k", "1G", "1GB", "1GiB" are all
-- powers of 1024), and a decimal part when the bytes come out whole
-- ("1.5G", "0.5K"). usbd.parse_size(value, key) returns the bytes, or
-- raises a one-line error naming key= and the forms: "size=10Q: not a
-- size; use bytes or ...". Without key the error quotes the value alone.
-- A Lua number is taken as bytes if it is whole and not negative.
local size_err = ffi.new("char[?]", 512)
function usbd.parse_size(value, key)
    if type(value) == "number" and value >= 0 and value % 1 == 0 and value < 2 ^ 63 then
        return value
    end
    local s = tostring(value)
    local n = C.usbd_parse_size(s)
    if n < 0 then
        error(ffi.string(C.usbd_size_error(size_err, 512, key and tostring(key), s)), 0)
    end
    return tonumber(n)
end

-- A SIZE KEY=VALUE argument: args[key] in bytes, or default (a size, or
-- nil) when the key is absent; errors as usbd.parse_size's, naming key.
--   local size = usbd.size_arg(args, "size", "64M")
function usbd.size_arg(args, key, default)
    local v = args[key]
    if v == nil then v = default end
    if v == nil then return nil end
    return usbd.parse_size(v, key)
end

-- A yes/no KEY=VALUE argument: "true", "1", "yes", "on" or their opposites;
-- absent gives default (false if not given). Anything else is a one-line
-- error naming the key.
function usbd.parse_bool(args, key, default)
    local v = args[key]
    if v == nil then return default or false end
    local l = tostring(v):lower()
    if l == "true" or l == "1" or l == "yes" or l == "on" then return true end
    if l == "false" or l == "0" or l == "no" or l == "off" then return false end
    error(("%s=%s: say %s=true or %s=false"):format(key, tostring(v), key, key), 0)
end

-- XXH3 128-bit hash of a Lua string (see buf:hash128 for buffers).
function usbd.hash128(s)
    return buf.view(ffi.cast("uint8_t *", s), #s):hash128()
end

-- Monotonic seconds, a number: for timing inside a device.
function usbd.now()
    return C.usbd_now()
end

-- The server's statistics: { uptime = seconds, read = { requests, bytes,
-- errors, p50, p90, p99, max }, write = ..., all = ... }, latencies in
-- seconds; one entry per kind of request (read, write, flush, trim,
-- write_zeroes, block_status, cache, other) and all of them together.
function usbd.stats()
    local kinds = ffi.new("usbd_stats_kind[?]", C.USBD_STATS_KINDS)
    local t = { uptime = C.usbd_stats_get(kinds) }
    for i = 0, C.USBD_STATS_KINDS - 1 do
        local k = kinds[i]
        t[ffi.string(C.usbd_stats_kind_name(i)):lower()] = {
            requests = tonumber(k.requests), bytes = tonumber(k.bytes), errors = tonumber(k.errors),
            p50 = k.p50, p90 = k.p90, p99 = k.p99, max = k.max,
        }
    end
    return t
end

-- Log a line to stderr; level 1 and above only with -v.
function usbd.log(level, fmt, ...)
    if level <= C.usbd_verbosity() then
        C.usbd_log(level, select("#", ...) > 0 and fmt:format(...) or fmt)
    end
end

return usbd

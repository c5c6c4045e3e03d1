-- usbd.kv: a RocksDB key-value store, for devices that keep metadata
-- (dedupdisk). Keys and values are Lua strings.
--
--   local db = usbd.kv.open(dir, { create = true, cache = 64 * 2^20, bloom_bits = 10 })
--   db:get(key)                    -- the value, or nil
--   db:multi_get(keys)             -- values[i] for keys[i] (false: absent)
--   db:scan(first, stop, max)      -- keys and values in [first, stop), in order
--   local b = usbd.kv.batch()      -- b:put(k, v), b:delete(k), b:delete_range(a, z)
--   db:write(b, sync)              -- atomically; sync: the WAL durable too
--   db:write_all({b1, b2}, sync)   -- in order, joined into one atomic batch
--   db:write_all(bs, sync, before) -- prepared jobs first (file:pwrite_blocks_job)
--   db:write_all(bs, sync, before, lane)  -- in a usbd.jobs.lane's order
--   local q = usbd.kv.queue()      -- q:add(b, before): b handed over, in order
--   db:write_queued(q, lane)       -- every batch added so far, as one
--   db:sync()                      -- the WAL durable: every write so far
--   db:disk_bytes(), db:property(name), db:close()
--
-- Merges are byte patches, so a large value kept in memory is updated in
-- the store by writing only the bytes that changed (RocksDB's merge: a
-- read, a scan or a compaction applies them, in order, in C):
--   local p = usbd.kv.patches()    -- an operand, built in a reused buffer
--   p:add(offset, bytes, len)      -- len bytes (pointer or string) to go at
--                                  --   offset (the value grown with zeroes)
--   b:merge(key, p)                -- into a batch (copied); p:clear() to reuse
--   b:merge(key, operand, klen, vlen)  -- an operand as bytes (src/services/kv.h)
--
-- Inside a request each call runs on a worker thread (usbd.jobs) while only
-- that request waits; elsewhere on the spot. A RocksDB failure raises
-- usbd.E.IO (RocksDB's message goes to the log).
local ffi = require "ffi"
local C = require "usbd.core"
local errors = require "usbd.errors"
local jobs = require "usbd.jobs"
local E = errors.E

local M = {}

local DB = {}
DB.__index = DB

-- (C types as values: outside compiled code LuaJIT parses a type's string
-- on every call, about 0.3 us each)
local u8p, cu8p, batch_ptrs = ffi.typeof("uint8_t *"), ffi.typeof("const uint8_t *"), ffi.typeof("usbd_kv_batch *[?]")
local u8s, u32s, i32s = ffi.typeof("uint8_t[?]"), ffi.typeof("uint32_t[?]"), ffi.typeof("int32_t[?]")
local multi_t, scan_t = ffi.typeof("usbd_kv_multi"), ffi.typeof("usbd_kv_scan")

local by_errno = {}
for _, e in pairs(E) do by_errno[e.errno] = e end

-- Run job fn with descriptor ptr: its result, and its error (nil: none).
-- before: prepared jobs (usbd.jobs) run first, on the same worker; when
-- one fails, fn does not run.
local function call(self, fn, ptr, len, arg, before, lane)
    local handle = jobs.resource(self, "handle")
    local job = jobs.get()
    job.run, job.ctx, job.ptr, job.len, job.arg = fn, handle, ffi.cast(u8p, ptr), len or 0, arg or 0
    jobs.begin_call(self)
    local err
    if before and #before > 0 then
        local list = {}
        for i = 1, #before do list[i] = before[i] end
        list[#list + 1] = job
        err = jobs.run_sequence(list, lane)
    else
        jobs.run(job, lane)
        err = job.err
    end
    jobs.end_call(self)
    local result = job.result
    jobs.put(job)
    return result, err ~= 0 and (by_errno[err] or E.IO) or nil
end

-- The same, raising on failure.
local function run(self, fn, ptr, len, arg, before, lane)
    local result, err = call(self, fn, ptr, len, arg, before, lane)
    if err then error(err, 0) end
    return result
end

-- A count or size: a whole number from 0 to 2^31 - 1 (C keeps it in 32 bits).
local function whole(x)
    return type(x) == "number" and x >= 0 and x < 2 ^ 31 and x % 1 == 0
end

-- values[i] for keys[i]: a string, or false when absent. value_max (64)
-- bounds the bytes kept of each value; a longer one raises.
function DB:multi_get(keys, value_max)
    local n = #keys
    local values = {}
    if n == 0 then return values end
    value_max = value_max or 64
    if not whole(value_max) then
        error(("usbd.kv: multi_get with values of up to %s bytes"):format(tostring(value_max)), 2)
    end
    local packed = table.concat(keys)
    local lens = u32s(n)
    for i = 1, n do lens[i - 1] = #keys[i] end
    local out = u8s(n * value_max)
    local out_lens = i32s(n)
    local m = multi_t()
    m.keys, m.key_lens, m.values, m.value_lens = ffi.cast(cu8p, packed), lens, out, out_lens
    m.n, m.value_max = n, value_max
    run(self, C.usbd_job_kv_multi_get, m)
    for i = 1, n do
        local len = out_lens[i - 1]
        if len > value_max then
            error(("usbd.kv: a value of %d bytes is longer than %d"):format(len, value_max), 2)
        end
        values[i] = len >= 0 and ffi.string(out + (i - 1) * value_max, len)
    end
    local _ = packed  -- alive until here
    return values
end

function DB:get(key, value_max)
    return self:multi_get({ key }, value_max)[1] or nil
end

-- Up to max (default 4096) keys in [first, stop) (stop nil: to the end),
-- in order; returns keys, values (arrays of strings). Keys longer than
-- key_max (64) are skipped; values longer than value_max (64) raise. A
-- range of neighbouring keys costs less this way than by multi_get. hot:
-- keep what it reads in the block cache (for small scans on a hot path).
function DB:scan(first, stop, max, key_max, value_max, hot)
    max, key_max, value_max = max or 4096, key_max or 64, value_max or 64
    local n, kbuf, klens, vbuf, vlens = self:scan_raw(first, stop, max, key_max, value_max, hot)
    local keys, values = {}, {}
    for i = 0, n - 1 do
        keys[i + 1] = ffi.string(kbuf + i * key_max, klens[i])
        values[i + 1] = ffi.string(vbuf + i * value_max, vlens[i])
    end
    return keys, values
end

-- The same without making strings, for hot paths: returns n, then the key
-- slots (uint8_t[max * key_max]), their lengths, the value slots
-- (uint8_t[max * value_max]) and their lengths; entry i (from 0) is at
-- keys + i * key_max and values + i * value_max.
function DB:scan_raw(first, stop, max, key_max, value_max, hot)
    if type(first) ~= "string" or (stop ~= nil and type(stop) ~= "string") then
        error(("usbd.kv: a scan from %s to %s: keys are strings"):format(tostring(first), tostring(stop)), 2)
    elseif not (whole(max) and whole(key_max) and whole(value_max)) then
        error(("usbd.kv: a scan of %s keys of up to %s bytes, values of up to %s"):format(
            tostring(max), tostring(key_max), tostring(value_max)), 2)
    end
    local s = scan_t()
    s.start, s.start_len = ffi.cast(cu8p, first), #first
    if stop then s["end"], s.end_len = ffi.cast(cu8p, stop), #stop end
    local kbuf = u8s(max * key_max)
    local klens = u32s(max)
    local vbuf = u8s(max * value_max)
    local vlens = i32s(max)
    s.max, s.key_max, s.value_max, s.fill_cache = max, key_max, value_max, hot and 1 or 0
    s.keys, s.key_lens, s.values, s.value_lens = kbuf, klens, vbuf, vlens
    run(self, C.usbd_job_kv_scan, s)
    local n = s.n
    for i = 0, n - 1 do
        if vlens[i] > value_max then
            error(("usbd.kv: a value of %d bytes is longer than %d"):format(vlens[i], value_max), 2)
        end
    end
    local _ = first .. (stop or "")  -- alive until here
    return n, kbuf, klens, vbuf, vlens
end

-- Write batches in order, each atomically, in one job; sync: the WAL is
-- synced after the last. before: prepared jobs run first in the same job
-- (usbd.file's pwrite_blocks_job: the data the batches name, written with
-- no hand-over of its own); when one fails, no batch is written. lane
-- (usbd.jobs.lane): after what was submitted to it before, and not at
-- all once that failed.
function DB:write_all(batches, sync, before, lane)
    local n = #batches
    if n == 0 then
        if sync then self:sync() end
        return
    end
    local arr = batch_ptrs(n)
    for i = 1, n do arr[i - 1] = batches[i].handle end
    run(self, C.usbd_job_kv_write, arr, n, sync and 1 or 0, before, lane)
end

-- Take every batch added to write queue q so far (usbd.kv.queue) and write
-- them in order as one atomic batch, after the jobs added with them; not
-- sync. With a lane (one write of q at a time), a write that waits behind
-- another takes what was added meanwhile: groups form as the store gets
-- to them. Returns how many it took and, when it failed (none written),
-- the error; a lane whose write failed refuses the next (none taken).
function DB:write_queued(q, lane)
    local taken, err = call(self, C.usbd_job_kv_write_queued, q.handle, 0, 0, nil, lane)
    return tonumber(taken), err
end

function DB:write(batch, sync)
    self:write_all({ batch }, sync)
end

-- Every write so far is durable once this returns.
function DB:sync()
    run(self, C.usbd_job_kv_sync, nil)
end

-- Bytes of the files in the store's directory.
function DB:disk_bytes()
    local n = C.usbd_kv_disk_bytes(jobs.resource(self, "handle"))
    return n >= 0 and tonumber(n) or 0
end

local prop = ffi.new("char[256]")
function DB:property(name)
    if type(name) ~= "string" then error("usbd.kv: a property's name is a string, not " .. tostring(name), 2) end
    local n = C.usbd_kv_property(jobs.resource(self, "handle"), name, prop, 256)
    return n >= 0 and ffi.string(prop) or nil
end

-- Close; with calls still running, once they have finished.
function DB:close()
    jobs.close_when_idle(self, "handle", C.usbd_kv_close)
end

function DB:__tostring()
    return ("usbd.kv(%s)"):format(self.path)
end

-- Open the store in directory path. opts: create (make it if absent),
-- cache (block cache bytes, default 8 MiB), bloom_bits (default 10),
-- write_buffer (memtable bytes). Raises a one-line error.
function M.open(path, opts)
    opts = opts or {}
    if type(path) ~= "string" or path == "" then
        error("usbd.kv.open wants a directory, not " .. tostring(path), 2)
    end
    for _, k in ipairs({ "cache", "write_buffer", "bloom_bits" }) do
        local v = opts[k]
        if v ~= nil and not (type(v) == "number" and v >= 0 and v % 1 == 0) then
            error(("usbd.kv.open: %s=%s is not a whole number from 0"):format(k, tostring(v)), 2)
        end
    end
    local o = ffi.new("usbd_kv_options")
    o.cache_bytes = opts.cache or 8 * 2 ^ 20
    o.write_buffer_bytes = opts.write_buffer or 0
    o.bloom_bits = opts.bloom_bits or 10
    o.create = opts.create and 1 or 0
    local err = ffi.new("char[512]")
    local h = C.usbd_kv_open(path, o, err, 512)
    if h == nil then
        error(("cannot open the store %s: %s"):format(path, ffi.string(err)), 0)
    end
    return setmetatable({ path = path, handle = ffi.gc(h, C.usbd_kv_close), busy = 0 }, DB)
end

local Batch = {}
Batch.__index = Batch

-- k and v are strings, or bytes (uint8_t pointers) with their lengths:
-- a hot caller encodes into a reused buffer and makes no string.
local function bytes(x, len, what)
    local str = type(x) == "string"
    if str and len == nil then return #x end
    if x == nil or not (type(len) == "number" and len >= 0 and len % 1 == 0) or (str and len > #x) then
        error(("usbd.kv: a %s is a string, or a pointer with its length (got %s, %s)")
            :format(what, tostring(x), tostring(len)), 3)
    end
    return len
end
function Batch:put(k, v, klen, vlen)
    C.usbd_kv_batch_put(self.handle, k, bytes(k, klen, "key"), v, bytes(v, vlen, "value"))
end
local Patches = {}
Patches.__index = Patches

-- v: an operand (string, or pointer with vlen), or a usbd.kv.patches().
function Batch:merge(k, v, klen, vlen)
    if getmetatable(v) == Patches then v, vlen = v.buf, v.len end
    if C.usbd_kv_batch_merge(self.handle, k, bytes(k, klen, "key"), v, bytes(v, vlen, "value")) ~= 0 then
        error("usbd.kv: a merge operand that is not a run of patches (see usbd.kv.patches)", 2)
    end
end
function Batch:delete(k, klen)
    C.usbd_kv_batch_delete(self.handle, k, bytes(k, klen, "key"))
end
-- Every key in [first, stop).
function Batch:delete_range(first, stop)
    C.usbd_kv_batch_delete_range(self.handle, first, bytes(first, nil, "key"), stop, bytes(stop, nil, "key"))
end
function Batch:count() return C.usbd_kv_batch_count(self.handle) end
function Batch:clear() C.usbd_kv_batch_clear(self.handle) end

-- A patches operand, built in place: each add appends one patch (a u32
-- offset, a u16 length, little-endian, then the bytes).
local PATCH_MAX = 65535

function Patches:add(offset, src, len)
    len = len or #src
    if not (type(offset) == "number" and offset >= 0 and offset % 1 == 0 and offset + len <= 2 ^ 24)
        or not (len >= 0 and len <= PATCH_MAX and len % 1 == 0) then
        error(("usbd.kv: a patch of %s bytes at %s (at most %d bytes, ending by 16 MiB)")
            :format(tostring(len), tostring(offset), PATCH_MAX), 2)
    end
    local n, need = self.len, self.len + 6 + len
    if need > self.cap then
        local cap = math.max(need, 2 * self.cap)
        local buf = u8s(cap)
        ffi.copy(buf, self.buf, n)
        self.buf, self.cap = buf, cap
    end
    local p = self.buf + n
    p[0], p[1], p[2], p[3] = offset % 256, math.floor(offset / 256) % 256, math.floor(offset / 65536) % 256, 0
    p[4], p[5] = len % 256, math.floor(len / 256)
    ffi.copy(p + 6, src, len)
    self.len = need
end

function Patches:clear() self.len = 0 end

function M.patches()
    return setmetatable({ buf = u8s(256), cap = 256, len = 0 }, Patches)
end

-- An empty write batch; its memory goes with it.
function M.batch()
    local h = C.usbd_kv_batch_new()
    if h == nil then error("usbd.kv.batch: out of memory", 2) end
    return setmetatable({ handle = ffi.gc(h, C.usbd_kv_batch_free) }, Batch)
end

local Queue = {}
Queue.__index = Queue

-- Hand batch over (before: a prepared job to run first, or nil); both stay
-- the caller's, untouched, until a write has taken and written them.
function Queue:add(batch, before)
    if C.usbd_kv_queue_add(self.handle, batch.handle, before) ~= 0 then error(E.NOMEM, 0) end
end

-- Forget the batches no write has taken (after one failed): how many.
function Queue:drop()
    return tonumber(C.usbd_kv_queue_drop(self.handle))
end

-- An empty write queue (see DB:write_queued).
function M.queue()
    local h = C.usbd_kv_queue_new()
    if h == nil then error("usbd.kv.queue: out of memory", 2) end
    return setmetatable({ handle = ffi.gc(h, C.usbd_kv_queue_free) }, Queue)
end

return M

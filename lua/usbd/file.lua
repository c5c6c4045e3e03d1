-- usbd.file: a file (or block device) a device stores its bytes in, read
-- and written without stalling the server.
--
--   local f = usbd.file.open("disk.img", { create = true, size = 2^30, direct = true })
--   f:pwrite(buf, pos)        -- all of buf, at pos
--   f:pread(buf, pos)         -- fills all of buf; past the end, zeroes
--   f:pread(buf, pos, after)  -- and then the step after (usbd.jobs) over
--                             -- buf, in the same job
--   f:pwrite(buf, pos, before) -- writes what the step before makes of buf
--                             -- (into scratch memory: buf stays as it
--                             -- was), the step and the write in one job
--   f:sync()                  -- fdatasync: what was written is durable
--   f:punch_hole(pos, len)    -- deallocate; reads as zeroes afterwards
--   f:zero_range(pos, len)    -- zeroes, storage kept
--   f:extents(pos, len)       -- { len, flags, ... }: data (0) and holes
--   f:pread_ranges(buf, ranges, n), f:pwrite_ranges(buf, ranges, n)
--                             -- n usbd_range: scattered byte ranges, one job;
--                             -- a write sorts them, joins file neighbours in
--                             -- one pwritev, and writes len zeroes (<= 64K)
--                             -- for a range whose at is usbd.file.ZEROES
--   f:size(), f:truncate(n), f:allocated(), f:close()
--   f:run_job(run, desc)      -- another service's job on this file (its
--                             -- fd): e.g. usbd.codec's read_blocks
--   local m = f:map()         -- the file mapped, to lend its page cache
--                             -- (f:map_or_nil(): nil where it cannot be):
--   m:lend(buf, at, pos, len) -- a READ's reply sends [pos, pos+len) of the
--                             -- file as buf's bytes at at straight from the
--                             -- page cache (no copy into buf), if all of it
--                             -- is cached now: true; else false, nothing done
--                             -- (read it the usual way)
--   m:read_step(buf, pos, after) -- the same for a read with a step: buf
--                             -- gets what the step makes of the cached
--                             -- bytes, read from the page cache (no pread)
--
-- Inside a request each call runs on a worker thread (usbd.jobs) while that
-- request waits and the others go on; elsewhere (open(args), specs) it runs
-- on the spot. Data moves straight between the file and buf: no copies in
-- Lua. A failure raises an errno error (usbd.E.NOSPC, ...), which the client
-- receives as such. The descriptors close when the object is collected, or
-- at f:close().
local ffi = require "ffi"
-- (C types as values: outside compiled code LuaJIT parses a type's string
-- on every call, about 0.3 us each)
local uintptr_t, u8p = ffi.typeof("uintptr_t"), ffi.typeof("uint8_t *")
local C = require "usbd.core"
local bufs = require "usbd.buf"
local errors = require "usbd.errors"
local E = errors.E
local jobs = require "usbd.jobs"

local M = {}

local File = {}
File.__index = File

local PREAD, PWRITE, FDATASYNC = C.usbd_job_pread, C.usbd_job_pwrite, C.usbd_job_fdatasync
local PUNCH_HOLE, ZERO_RANGE, ALLOCATE = C.usbd_job_punch_hole, C.usbd_job_zero_range, C.usbd_job_allocate
local TRUNCATE, EXTENTS = C.usbd_job_truncate, C.usbd_job_extents
local PREAD_BLOCKS, PWRITE_BLOCKS = C.usbd_job_pread_blocks, C.usbd_job_pwrite_blocks

local EINVAL, ENOSYS, EOPNOTSUPP = E.INVAL.errno, E.NOSYS.errno, E.NOTSUP.errno

-- errno number -> the usbd.E error the client should see; EIO for the rest.
local by_errno = {}
for _, e in pairs(E) do by_errno[e.errno] = e end
local function raise(errno)
    error(by_errno[errno] or E.IO, 0)
end

local function strerror(errno)
    return ffi.string(C.usbd_strerror(errno))
end

-- O_DIRECT wants the position, the length and the memory aligned. 4096
-- covers every device's logical block size; request buffers are pages.
local ALIGN = 4096
local function aligned(ptr, len, pos)
    return pos % ALIGN == 0 and len % ALIGN == 0
        and tonumber(ffi.cast(uintptr_t, ptr)) % ALIGN == 0
end

-- Descriptor i of an open file (fds[1]: without O_DIRECT); for a closed
-- one, usbd.jobs.resource's error.
local function fd_of(self, i)
    return jobs.resource(self, "fds")[i]
end

-- Run one job on fd (fd_of's); returns errno (0 for success) and the job's result.
local function submit(self, run, fd, ptr, len, pos, arg, ctx)
    local job = jobs.get()
    job.run, job.fd, job.ptr, job.len, job.pos, job.arg = run, fd, ptr, len, pos, arg or 0
    job.ctx = ctx
    jobs.begin_call(self)
    jobs.run(job)
    jobs.end_call(self)
    local err, result = job.err, job.result
    jobs.put(job)
    return err, result
end

local function must(err, result)
    if err ~= 0 then raise(err) end
    return result
end

-- A read or write (run) and a step over its bytes as one job (usbd.jobs'
-- run_with_step): the step over [ptr, ptr+len) after a read, or from src
-- into ptr before a write. Returns errno (0 for success).
local function submit_step(self, run, fd, ptr, len, pos, step, src, step_first)
    local job = jobs.get()
    job.run, job.fd, job.ptr, job.len, job.pos = run, fd, ptr, len, pos
    jobs.begin_call(self)
    local err = jobs.run_with_step(job, step, src, ptr, len, step_first)
    jobs.end_call(self)
    jobs.put(job)
    return err
end

local function writable(self)
    if self.readonly then raise(E.ROFS.errno) end
end

-- With direct, I/O that is not aligned goes through a second descriptor
-- without O_DIRECT, so the kernel's page cache does the read-modify-write
-- of the blocks it touches, under its own page locks: two unaligned writes
-- into one block, at once on two workers, cannot undo each other as a
-- read-modify-write of our own would. The kernel keeps both views coherent
-- (an O_DIRECT read or write first writes back and drops cached pages in
-- its range), and fdatasync on either descriptor covers the whole file.
local function fd_for(self, ptr, len, pos)
    return fd_of(self, (self.direct and not aligned(ptr, len, pos)) and 1 or 0)
end

-- Fill all of buf with the bytes at pos; beyond the end of the file,
-- zeroes. Then the step after (usbd.jobs) over buf, if given, on the same
-- worker; not if the read failed.
function File:pread(buf, pos, after)
    local len = buf.len
    if len == 0 then return end
    local fd = fd_for(self, buf.ptr, len, pos)
    if after then
        must(submit_step(self, PREAD, fd, buf.ptr, len, pos, after, buf.ptr, false))
    else
        must(submit(self, PREAD, fd, buf.ptr, len, pos))
    end
end

-- Write all of buf at pos (short writes are retried until done). With a
-- step before, write what it makes of buf instead: it runs from buf into
-- scratch memory, then that is written, on the same worker.
function File:pwrite(buf, pos, before)
    writable(self)
    local len = buf.len
    if len == 0 then return end
    if before then
        local s = bufs.scratch.get(len)
        local err = submit_step(self, PWRITE, fd_for(self, s.ptr, len, pos), s.ptr, len, pos,
            before, buf.ptr, true)
        bufs.scratch.put(s)
        must(err)
    else
        must(submit(self, PWRITE, fd_for(self, buf.ptr, len, pos), buf.ptr, len, pos))
    end
end

-- Scattered blocks, for block stores: buf holds whole blocks of block
-- bytes; offsets[i] (an int64_t array, from 0) is the file offset of the
-- i-th, or -1: a read zeroes that block, a write skips it. One job moves
-- them all (neighbours in the file in one call). Blocks that are one run
-- in the file (a fresh write appended, a sequential read, a single block)
-- move in one plain pread or pwrite, which io_uring can take without
-- waking a worker.
local function one_run(offsets, n, block)
    local at = tonumber(offsets[0])
    if at < 0 then return nil end
    for i = 1, n - 1 do
        if tonumber(offsets[i]) ~= at + i * block then return nil end
    end
    return at
end

-- (level: error()'s, as its caller would give it)
local function check_blocks(buf, block, offsets, level)
    local len = buf.len
    if type(block) ~= "number" or block < 1 or block % 1 ~= 0 or len % block ~= 0 or offsets == nil then
        error(("usbd.file: %d bytes are not whole blocks of %s with their offsets"):format(len, tostring(block)), level + 1)
    end
end

local function blocks(self, run, buf, block, offsets)
    local len = buf.len
    check_blocks(buf, block, offsets, 3)
    if len == 0 then return end
    local fd = fd_of(self, 0)
    local at = one_run(offsets, len / block, block)
    if at then
        return must(submit(self, run == PREAD_BLOCKS and PREAD or PWRITE,
            fd_for(self, buf.ptr, len, at), buf.ptr, len, at))
    end
    local job = jobs.get()
    job.run, job.fd, job.ptr, job.len, job.arg = run, fd, buf.ptr, len, block
    job.ctx = offsets
    jobs.begin_call(self)
    jobs.run(job)
    jobs.end_call(self)
    local err = job.err
    jobs.put(job)
    must(err, 0)
end

function File:pread_blocks(buf, block, offsets)
    blocks(self, PREAD_BLOCKS, buf, block, offsets)
end

function File:pwrite_blocks(buf, block, offsets)
    writable(self)
    blocks(self, PWRITE_BLOCKS, buf, block, offsets)
end

-- pwrite_blocks as a prepared job (usbd.jobs), for the caller to run where
-- it saves a hand-over (db:write_all(batches, sync, { job }): data, then
-- the metadata naming it, on one worker) and give back (jobs.put). buf and
-- offsets must live until it has run, and the file stay open.
function File:pwrite_blocks_job(buf, block, offsets)
    writable(self)
    check_blocks(buf, block, offsets, 2)
    local fd = fd_of(self, 0)
    local job = jobs.get()
    job.run, job.fd, job.ptr, job.len, job.arg = PWRITE_BLOCKS, fd, buf.ptr, buf.len, block
    job.ctx = offsets
    return job
end

-- fdatasync: everything written before this call is durable when it returns.
function File:sync()
    must(submit(self, FDATASYNC, fd_of(self, 0), nil, 0, 0))
end

local function unsupported(err)
    return err == EOPNOTSUPP or err == ENOSYS
end

-- Zeroes, the slow way: writes from a shared buffer of zeroes.
local function write_zeroes(self, pos, len)
    bufs.write_zeroes_with(function(zeroes, at) self:pwrite(zeroes, at) end, pos, len)
end

-- Make [pos, pos+len) read as zeroes, keeping its storage allocated.
-- fallocate's ZERO_RANGE where the file system has it; else a hole punched
-- and allocated again; else zeroes written.
function File:zero_range(pos, len)
    writable(self)
    if len <= 0 then return end
    -- (each call asks for the descriptor: another request may close the
    -- file while one waits)
    if self.can_zero_range then
        local err = submit(self, ZERO_RANGE, fd_of(self, 0), nil, len, pos)
        if err == 0 then return end
        if unsupported(err) then
            self.can_zero_range = false
        elseif err ~= EINVAL then   -- EINVAL: not for this range; fall back
            raise(err)
        end
    end
    if self.can_punch_hole then
        local err = submit(self, PUNCH_HOLE, fd_of(self, 0), nil, len, pos)
        if err == 0 then
            submit(self, ALLOCATE, fd_of(self, 0), nil, len, pos)  -- best effort: zeroes either way
            return
        end
        if unsupported(err) then
            self.can_punch_hole = false
        elseif err ~= EINVAL then
            raise(err)
        end
    end
    write_zeroes(self, pos, len)
end

-- Deallocate [pos, pos+len): the file takes less storage and the range
-- reads as zeroes. Where holes cannot be punched, zeroes are written.
function File:punch_hole(pos, len)
    writable(self)
    if len <= 0 then return end
    if self.can_punch_hole then
        local err = submit(self, PUNCH_HOLE, fd_of(self, 0), nil, len, pos)
        if err == 0 then return end
        if unsupported(err) then
            self.can_punch_hole = false
        elseif err ~= EINVAL then
            raise(err)
        end
    end
    self:zero_range(pos, len)
end

-- Runs of [pos, pos+len) (len at most 4 GiB - 1), as a device's extents()
-- reports them: { len1, flags1, len2, flags2, ... } from pos on, holes as
-- usbd.HOLE + usbd.ZERO (1 + 2), data as 0. They may cover less than len
-- (a fragmented file gives its first MAX_RUNS runs); the caller asks again
-- from where they end. SEEK_DATA/SEEK_HOLE on a worker thread; a file
-- system that cannot tell reports data.
local MAX_RUNS = 1024
local runs_type = ffi.typeof("usbd_extent[?]")
local free_runs = {}   -- output arrays, reused: a job writes into one
function File:extents(pos, len)
    local fd = fd_of(self, 0)
    local out = table.remove(free_runs) or runs_type(MAX_RUNS)
    local err, n = submit(self, EXTENTS, fd, ffi.cast(u8p, out), len, pos, MAX_RUNS)
    local list = {}
    if err == 0 then
        for i = 0, tonumber(n) - 1 do
            list[2 * i + 1], list[2 * i + 2] = out[i].length, out[i].flags
        end
    end
    free_runs[#free_runs + 1] = out
    must(err, n)
    return list
end

-- Scattered byte ranges in one job (a store's fragments): ranges is an
-- array (from 0) of n usbd_range { pos = in the file, at = in buf, len }.
local PREAD_RANGES, PWRITE_RANGES = C.usbd_job_pread_ranges, C.usbd_job_pwrite_ranges
local range_array = ffi.typeof("usbd_range[?]")
M.ranges = function(n) return range_array(n) end  -- an array for them
M.ZEROES = 0xffffffffffffffffULL             -- at: write zeroes (USBD_RANGE_ZEROES)

local RANGE_BYTES = ffi.sizeof("usbd_range")
local POS_MAX = 2 ^ 63   -- a range ends before it (an off_t)

-- A one-line error from who (for its caller) unless n ranges of the array
-- ranges lie in buf and in a file: n a whole number, no more than the
-- array holds (when the FFI knows its size: a usbd_range[?], not a
-- pointer), each range inside buf (writing: or at ZEROES, at most 64 KiB).
-- usbd.codec's read_blocks checks its ranges with it too.
function M.check_ranges(who, buf, ranges, n, writing)
    if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or (n > 0 and ranges == nil) then
        error(("%s: %s ranges"):format(who, tostring(n)), 3)
    end
    local bytes = n > 0 and ffi.sizeof(ranges)
    if bytes and bytes % RANGE_BYTES == 0 and n > bytes / RANGE_BYTES then
        error(("%s: %d ranges of an array of %d"):format(who, n, bytes / RANGE_BYTES), 3)
    end
    for i = 0, n - 1 do
        local r = ranges[i]
        local zeroes = writing and r.at == M.ZEROES
        if r.pos < 0 or r.pos + r.len >= POS_MAX or (zeroes and r.len > 65536)
            or (not zeroes and (r.at > buf.len or r.len > buf.len - r.at)) then
            error(("%s: range %d (%d bytes at %d) falls outside a buffer of %d bytes or the file")
                :format(who, i, tonumber(r.len), tonumber(r.at), buf.len), 3)
        end
    end
end
local check_ranges = M.check_ranges

function File:pread_ranges(buf, ranges, n)
    check_ranges("usbd.file", buf, ranges, n)
    if n == 0 then return end
    must(submit(self, PREAD_RANGES, fd_of(self, 0), buf.ptr, 0, 0, n, ranges))
end

function File:pwrite_ranges(buf, ranges, n)
    writable(self)
    check_ranges("usbd.file", buf, ranges, n, true)
    if n == 0 then return end
    must(submit(self, PWRITE_RANGES, fd_of(self, 0), buf.ptr, 0, 0, n, ranges))
end

-- A job of another service that works on this file: run (a C job
-- function) with fd set and ptr = desc, its descriptor. Raises its errno.
function File:run_job(run, desc)
    must(submit(self, run, fd_of(self, 0), ffi.cast(u8p, desc), 0, 0))
end

-- The size in bytes (a block device's too).
function File:size()
    local n = C.usbd_file_size(fd_of(self, 0))
    if n < 0 then raise(-tonumber(n)) end
    return tonumber(n)
end

-- Bytes of storage the file takes (less than its size when sparse).
function File:allocated()
    local n = C.usbd_file_allocated(fd_of(self, 0))
    if n < 0 then raise(-tonumber(n)) end
    return tonumber(n)
end

-- Set the size to n bytes: growing leaves a hole, shrinking drops the tail.
function File:truncate(n)
    writable(self)
    must(submit(self, TRUNCATE, fd_of(self, 0), nil, 0, n))
end

-- The zero-copy read path: a read-only shared mapping of the file, whose
-- pages a reply borrows (buf:borrow) instead of a pread copying them into
-- its buffer; the socket's sendmsg makes the one copy. Only pages already
-- in the page cache are lent: a fault on a cold page would wait for the
-- disk inside the server's send, holding up every connection. A store that
-- writes again where a reply may still borrow from must call
-- usbd.settle_borrowed() first (a file written in place, like filedisk's,
-- may instead send a reply bytes written after the read was answered: as
-- with any read that overlaps a write in flight, either is allowed).
local Map = {}
Map.__index = Map

-- buf filled with what the step after makes of the file's bytes at pos,
-- read straight from the page cache, if all of them are there now: true;
-- else false, nothing done. No read to wait for: the step runs on the spot
-- below its job_min (or usbd.jobs.SPOT_MAX), else as a job of its own.
function Map:read_step(buf, pos, after)
    local len = buf.len
    local src = C.usbd_filemap_resident(jobs.resource(self, "map"), pos, len)
    if src == nil then return false end
    must(jobs.run_step(after, src, buf.ptr, len, math.max(jobs.SPOT_MAX, tonumber(after.job_min))))
    return true
end

function Map:lend(buf, at, pos, len)
    local src = C.usbd_filemap_resident(jobs.resource(self, "map"), pos, len)
    if src == nil then return false end
    buf:borrow(at, bufs.view(ffi.cast(u8p, src), len))
    return true
end

-- Replies still borrowing are settled first.
function Map:close()
    if self.map then
        C.usbd_filemap_close(ffi.gc(self.map, nil))
        self.map = nil
    end
end

function Map:__tostring()
    return ("usbd.file(%s):map()"):format(self.path)
end

function File:map()
    local fd = fd_of(self, 0)
    local msg = ffi.new("char[256]")
    local m = C.usbd_filemap_open(fd, msg, 256)
    if m == nil then error(("%s: %s"):format(self.path, ffi.string(msg)), 2) end
    return setmetatable({ map = ffi.gc(m, C.usbd_filemap_close), path = self.path }, Map)
end

-- The map, or nil where the file cannot be mapped: then read it as usual.
function File:map_or_nil()
    local ok, m = pcall(self.map, self)
    return ok and m or nil
end

local function close_fds(fds)
    C.usbd_file_close(fds[0])
    if fds[1] ~= fds[0] then C.usbd_file_close(fds[1]) end
end

-- Close the file; with calls still running, once they have finished.
function File:close()
    jobs.close_when_idle(self, "fds", close_fds)
end

function File:__tostring()
    return ("usbd.file(%s%s)"):format(self.path, self.direct and ", direct" or "")
end

local function open_fd(path, flags, what)
    local fd = C.usbd_file_open(path, flags)
    if fd < 0 then
        local err = -fd
        if err == EINVAL and bit.band(flags, C.USBD_FILE_DIRECT) ~= 0 then
            error(("cannot open %s with direct=true: its file system does not do O_DIRECT (tmpfs?)")
                :format(path), 0)
        end
        error(("cannot open %s%s: %s"):format(path, what, strerror(err)), 0)
    end
    return fd
end

-- Open path. opts (all optional):
--   create = true     create the file if it does not exist
--   size = n          make it at least n bytes (a new file is all hole)
--   direct = true     O_DIRECT: bypass the page cache
--   readonly = true   open for reading only; writes raise EROFS
-- Raises a one-line error that names the file.
function M.open(path, opts)
    opts = opts or {}
    if type(path) ~= "string" or path == "" then
        error("usbd.file.open wants a path", 2)
    end
    local base = opts.readonly and C.USBD_FILE_READONLY or 0
    local create = opts.create and C.USBD_FILE_CREATE or 0
    local fd = open_fd(path, base + create + (opts.direct and C.USBD_FILE_DIRECT or 0), "")
    local fds = ffi.gc(ffi.new("int32_t[2]", fd, fd), close_fds)
    if opts.direct then
        local ok, other = pcall(open_fd, path, base, " a second time")
        if not ok then
            close_fds(ffi.gc(fds, nil))
            error(other, 0)
        end
        fds[1] = other
    end
    local self = setmetatable({
        path = path,
        direct = opts.direct and true or false,
        readonly = opts.readonly and true or false,
        fds = fds,              -- [0] for everything, [1] unaligned I/O under direct
        busy = 0,               -- calls running
        can_zero_range = true,  -- until the file system says otherwise
        can_punch_hole = true,
    }, File)
    if opts.size and self:size() < opts.size then
        local ok, err = pcall(self.truncate, self, opts.size)
        if not ok then
            self:close()
            local errno = errors.errno_of(err)
            error(("cannot grow %s to %d bytes: %s"):format(path, opts.size,
                errno and strerror(errno) or tostring(err)), 0)
        end
    end
    return self
end

return M

-- Jobs: a blocking C call run off the Lua thread (src/services/jobs.c: a pool of
-- worker threads, and io_uring for reads and writes) while the request that
-- needs it waits, and only that request. The building block of usbd.file,
-- and of anything else that blocks (RocksDB). job.run must be a C function
-- (C.usbd_job_*, or one from another C library): it runs on another thread,
-- where Lua cannot.
--
--   local job = jobs.get()
--   job.run, job.fd, job.ptr, job.len, job.pos = C.usbd_job_pread, fd, buf.ptr, buf.len, pos
--   jobs.run(job)           -- returns once job.run has returned
--   local err = job.err     -- 0 or an errno
--   jobs.put(job)
--
-- Inside a request (a coroutine of sched.lua) jobs.run parks the request
-- until a worker has run the job; outside one (open(args), close(), specs)
-- it runs the job on the spot.
--
-- Steps (usbd_step, src/services/jobs.h): C work over the bytes of a read
-- or a write (a cipher's), made by a service (xts:decrypt_step(pos)), that
-- the I/O's own job runs on its worker right after the read or right
-- before the write: one hand-over for both, not two.
--   jobs.run_with_step(job, step, src, dst, len, step_first)
--                           -- job and the step as one hand-over (below)
--   jobs.run_step(step, src, dst, len)  -- the step alone
-- Each returns 0 or the errno of what failed.
local ffi = require "ffi"
local C = require "usbd.core"
local sched = require "usbd.core.sched"

local M = {}

local new_job = ffi.typeof("usbd_job")
-- (C types as values, not strings: outside compiled code, as around a
-- request's waits, LuaJIT parses a type's string on every call)
local voidp, u8p, job_ptrs = ffi.typeof("void *"), ffi.typeof("uint8_t *"), ffi.typeof("usbd_job *[?]")
local intptr_t, new_step = ffi.typeof("intptr_t"), ffi.typeof("usbd_step")
local free = {}     -- finished jobs, for reuse
local inline_only   -- the pool could not start: run everything on the spot

-- A call of owner's (a usbd.file, usbd.kv or usbd.rbd object) begins and
-- ends around the jobs it waits for: owner.busy counts those running, and
-- the last to end closes an owner closed meanwhile (close_when_idle).
function M.begin_call(owner)
    owner.busy = owner.busy + 1
end

function M.end_call(owner)
    local busy = owner.busy - 1
    owner.busy = busy
    if busy == 0 and owner.closing then owner:close() end
end

-- owner[field] while owner is open; once it is closed, the error every
-- call of a closed object of a service (usbd.file and its map, usbd.kv,
-- usbd.rbd, the dedupdisk's hash index) gives, never its C call with a
-- freed handle, at the line that called into lua/usbd/.
local ours = "@" .. debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") .. "/"
function M.resource(owner, field)
    local r = owner[field]
    if r ~= nil then return r end
    local level = 2   -- (as error() counts: 1 is here)
    while true do
        local info = debug.getinfo(level, "S")
        if not info then level = 1 break end
        if info.what ~= "C" and info.source:sub(1, #ours) ~= ours then break end
        level = level + 1
    end
    error(tostring(owner) .. " is closed", level)
end

-- Release the C resource owner[field] (its ffi.gc finaliser taken off,
-- then release(resource)), or, while owner.busy calls of its are still
-- running, mark it closing: the last of them to finish closes it. The close
-- of usbd.file, usbd.kv and usbd.rbd objects.
function M.close_when_idle(owner, field, release)
    if owner.busy > 0 then
        owner.closing = true
        return
    end
    local resource = owner[field]
    if resource then
        owner[field] = nil
        ffi.gc(resource, nil)
        release(resource)
    end
end

-- A cleared job, from the free list if there is one.
function M.get()
    local n = #free
    local job = free[n]
    if job then
        free[n] = nil
        ffi.fill(job, ffi.sizeof(new_job))
        return job
    end
    return new_job()
end

-- Give back a finished job.
function M.put(job)
    free[#free + 1] = job
end

-- Run job to completion; only the running request waits. lane (from
-- M.lane): after the jobs submitted to it before, and not at all after
-- one of those failed (its errno in job.err).
function M.run(job, lane)
    if sched.in_request() and not inline_only then
        local rc = lane and C.usbd_lane_submit(lane.handle, job) or C.usbd_job_submit(job)
        if rc == 0 then
            sched.wait(ffi.cast(voidp, job))  -- the address the loop reports
            return job
        end
        inline_only = true
        io.stderr:write("usbd-lua: no worker threads (", ffi.string(C.usbd_strerror(-rc)),
            "): blocking calls now stall every request\n")
    end
    if lane then
        C.usbd_lane_run(lane.handle, job)
        return job
    end
    C.usbd_job_run(job)
    return job
end

-- Run prepared jobs (a list) in order as one job: one hand-over to a
-- worker for all of them, for work where each waits for the one before
-- anyway. Stops at the first that fails; returns its errno (0: none
-- failed). Each job's own err says which.
-- job -> its array, kept alive while it runs: written, never read (an
-- anchor for the garbage collector).
local sequences = {} -- luacheck: ignore 241
function M.run_sequence(list, lane)
    local n = #list
    local arr = job_ptrs(n)
    for i = 1, n do arr[i - 1] = list[i] end
    local job = M.get()
    job.run, job.ptr, job.len = C.usbd_job_sequence, ffi.cast(u8p, arr), n
    sequences[job] = arr
    M.run(job, lane)
    sequences[job] = nil
    local err = job.err
    M.put(job)
    return err
end

-- A step: run (a C function of the usbd_step shape, e.g.
-- C.usbd_cipher_step) with its ctx, pos and arg; job_min (bytes, default 0)
-- is where its work starts to cost more than a hand-over. The caller keeps
-- it (and what ctx points at) alive while it runs.
function M.step(run, ctx, pos, arg, job_min)
    return new_step(run, ctx, pos or 0, arg or 0, job_min or 0)
end

local function step_job(step, src, dst, len)
    local job = M.get()
    job.run, job.ctx, job.ptr, job.len = C.usbd_job_step, step, dst, len
    job.arg = src == dst and 0 or ffi.cast(intptr_t, src)
    return job
end

-- Run step over len bytes from src into dst (pointers; src may be dst):
-- on the spot below spot bytes (default: its job_min), else as a job.
-- 0 or the errno.
function M.run_step(step, src, dst, len, spot)
    if len < (spot or tonumber(step.job_min)) then
        return -C.usbd_step_run(step, src, dst, len)
    end
    local job = step_job(step, src, dst, len)
    M.run(job)
    local err = job.err
    M.put(job)
    return err
end

-- Where the bytes are in memory already (a file's page cache), a step that
-- runs as a job adds a hand-over the read itself does not have, but runs
-- beside the Lua thread instead of holding it up. Such a step runs on the
-- spot up to this many bytes or its job_min, whichever is larger. 0 by
-- default: on two cores shared with the client, 256 KiB cached reads of a
-- cryptdisk went 1.09x faster with the cipher on a worker, in three runs
-- of seven rounds each (BENCHMARKS.md). USBD_SPOT_MAX overrides it.
M.SPOT_MAX = tonumber(os.getenv("USBD_SPOT_MAX")) or 0

-- Arrays of two jobs for run_with_step's sequences, reused (each is held
-- by its caller while the sequence runs).
local free_pairs = {}

-- Run job (I/O into or out of dst) and step (len bytes from src into dst)
-- as one hand-over: both on one worker, the step right after job (a read
-- into dst) or, with step_first, right before it (a write of dst), and the
-- second not at all once the first has failed. A step below its job_min
-- bytes runs on the spot instead, with job going its usual way (io_uring
-- for a read or write): the hand-over then is job's alone. Returns 0 or
-- the errno of the one that failed.
function M.run_with_step(job, step, src, dst, len, step_first)
    if len < tonumber(step.job_min) then
        if step_first then
            local err = -C.usbd_step_run(step, src, dst, len)
            if err ~= 0 then return err end
        end
        M.run(job)
        if job.err ~= 0 or step_first then return job.err end
        return -C.usbd_step_run(step, src, dst, len)
    end
    local sj = step_job(step, src, dst, len)
    local pair = table.remove(free_pairs) or job_ptrs(2)
    if step_first then pair[0], pair[1] = sj, job else pair[0], pair[1] = job, sj end
    local seq = M.get()
    seq.run, seq.ptr, seq.len = C.usbd_job_sequence, ffi.cast(u8p, pair), 2
    M.run(seq)
    local err = seq.err
    M.put(seq)
    M.put(sj)
    free_pairs[#free_pairs + 1] = pair
    return err
end

-- A lane: jobs run through it (M.run(job, lane), run_sequence(list,
-- lane)) run one after another in the order submitted, the next starting
-- on the worker as the last returns, without waiting for the loop to see
-- it; once one fails, every later one fails with its errno unrun. So a
-- request can queue writes that must land in order behind one still
-- running. Freed (ffi.gc) once unreachable: keep it while jobs use it.
function M.lane()
    local h = C.usbd_lane_new()
    if h == nil then error("usbd.jobs.lane: out of memory", 2) end
    return { handle = ffi.gc(h, C.usbd_lane_free) }
end

-- Run job through start, a C function that starts it elsewhere and has the
-- loop hand it back once done, from a library's own threads (usbd_rbd_submit:
-- librbd's aio): no worker waits for it. Outside a request, job.run (the
-- same work, blocking) runs it on the spot.
function M.run_started(job, start)
    if sched.in_request() then
        local rc = start(job)
        if rc == 0 then
            sched.wait(ffi.cast(voidp, job))
        else
            job.err = -rc
        end
        return job
    end
    C.usbd_job_run(job)
    return job
end

-- Wait seconds off the Lua thread: the request sleeps, the others go on.
-- For tests and examples (a slow disk, a remote store).
function M.sleep(seconds)
    local job = M.get()
    job.run = C.usbd_job_sleep
    job.arg = math.floor(seconds * 1e6 + 0.5)
    M.run(job)
    M.put(job)
end

-- Ask for n worker threads (default 16, or USBD_JOB_THREADS). The pool
-- only grows; returns how many there are.
function M.threads(n)
    local rc = C.usbd_jobs_start(n or 0)
    if rc < 0 then
        error("cannot start worker threads: " .. ffi.string(C.usbd_strerror(-rc)), 2)
    end
    return rc
end

-- The pool's counters: submitted, finished, threads, queued, running, and
-- peak (most jobs running at once; reset_peak starts counting afresh).
local stats = ffi.new("usbd_jobs_stats")
function M.stats(reset_peak)
    C.usbd_jobs_get_stats(stats, reset_peak and 1 or 0)
    return {
        submitted = tonumber(stats.submitted), finished = tonumber(stats.finished),
        threads = stats.threads, queued = stats.queued, running = stats.running,
        peak = stats.peak,
    }
end

return M

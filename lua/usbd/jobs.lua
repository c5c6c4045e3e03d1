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
local ffi = require "ffi"
local C = require "usbd.core"
local sched = require "usbd.core.sched"

local M = {}

local new_job = ffi.typeof("usbd_job")
-- (C types as values, not strings: outside compiled code, as around a
-- request's waits, LuaJIT parses a type's string on every call)
local voidp, u8p, job_ptrs = ffi.typeof("void *"), ffi.typeof("uint8_t *"), ffi.typeof("usbd_job *[?]")
local free = {}     -- finished jobs, for reuse
local inline_only   -- the pool could not start: run everything on the spot

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

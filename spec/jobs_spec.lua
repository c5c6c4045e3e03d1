-- usbd.jobs: the worker pool (src/services/jobs.c). Specs run without the server's
-- loop, so jobs.run happens on the spot; the pool itself is driven directly.
local ffi = require "ffi"
local C = require "usbd.core"
local jobs = require "usbd.jobs"

local function now()
    return os.clock()  -- CPU time: waiting in a job costs none
end

-- Wait (politely) until cond() holds; false after about 10 s.
local function eventually(cond)
    local pause = ffi.new("usbd_job")
    pause.run, pause.arg = C.usbd_job_sleep, 2000
    for _ = 1, 5000 do
        if cond() then return true end
        C.usbd_job_run(pause)
    end
    return cond()
end

describe("usbd.jobs", function()
    it("runs a job on the spot outside a request", function()
        local before = jobs.stats().submitted
        local t0 = now()
        jobs.sleep(0.05)
        assert.is_true(now() - t0 < 0.04)  -- slept, did not spin
        assert.are.equal(before, jobs.stats().submitted)  -- the pool was not involved
    end)

    it("runs submitted jobs on several workers at once", function()
        assert.is_true(jobs.threads(8) >= 8)
        jobs.stats(true)
        local base = jobs.stats().finished
        -- The jobs, kept alive until the pool is done with them: never read.
        local held = {} -- luacheck: ignore 241
        for i = 1, 8 do
            local job = ffi.new("usbd_job")
            job.run, job.arg = C.usbd_job_sleep, 200000  -- 0.2 s each
            held[i] = job  -- must live until the pool is done with it
            assert.are.equal(0, C.usbd_job_submit(job))
        end
        assert.is_true(eventually(function() return jobs.stats().finished >= base + 8 end))
        local s = jobs.stats()
        -- Structural, not timed: eight sleepers were asleep together.
        assert.is_true(s.peak > 1, "at most " .. s.peak .. " job(s) ran at once")
        assert.are.equal(0, s.running)
        assert.are.equal(0, s.queued)
    end)

    it("runs C functions only, and reports an errno through job.err", function()
        local job = jobs.get()
        job.run, job.fd = C.usbd_job_fdatasync, -1
        jobs.run(job)
        assert.are.equal(9, job.err)  -- EBADF
        jobs.put(job)
    end)

    it("runs a sequence of jobs in order as one, stopping at the first that fails", function()
        local usbd = require "usbd"
        local path = os.tmpname()
        local file = usbd.file.open(path, { create = true })
        local function put(s, at)  -- a prepared write of s's bytes at block at
            local b = usbd.buffer(#s)
            b:copy_from(s)
            return file:pwrite_blocks_job(b, #s, ffi.new("int64_t[1]", at * #s)), b
        end
        local a, keep_a = put("ab", 0)
        local b, keep_b = put("cd", 1)
        assert.are.equal(0, jobs.run_sequence({ b, a }))
        local bad = jobs.get()
        bad.run, bad.fd = C.usbd_job_fdatasync, -1
        local c, keep_c = put("xy", 0)
        local never, keep_n = put("zz", 0)
        assert.are.equal(9, jobs.run_sequence({ c, bad, never }))  -- EBADF, from the second
        assert.are.equal(9, bad.err)
        assert.are.equal(0, c.err)
        file:close()
        local f = io.open(path); local got = f:read("*a"); f:close()
        os.remove(path)
        assert.are.equal("xycd", got)  -- the first ran, the one after the failure did not
        for _, j in ipairs({ a, b, c, bad, never }) do jobs.put(j) end
        local _ = { keep_a, keep_b, keep_c, keep_n }
    end)

    it("runs jobs through a lane; after one fails, the later ones fail unrun", function()
        local usbd = require "usbd"
        local path = os.tmpname()
        local file = usbd.file.open(path, { create = true })
        local keep = {}
        local function put(s, at)
            local b = usbd.buffer(#s)
            b:copy_from(s)
            keep[#keep + 1] = b
            return file:pwrite_blocks_job(b, #s, ffi.new("int64_t[1]", at * #s))
        end
        local lane = jobs.lane()
        local a = jobs.run(put("ab", 0), lane)
        assert.are.equal(0, jobs.run_sequence({ put("cd", 1) }, lane))
        local bad = jobs.get()
        bad.run, bad.fd = C.usbd_job_fdatasync, -1
        assert.are.equal(9, jobs.run(bad, lane).err)             -- EBADF
        local after = jobs.run(put("zz", 0), lane)
        assert.are.equal(9, after.err)                           -- unrun
        assert.are.equal(9, jobs.run_sequence({ put("yy", 1) }, lane))
        local other = jobs.run(put("ok", 2), jobs.lane())        -- another lane goes on
        assert.are.equal(0, other.err)
        file:close()
        local f = io.open(path); local got = f:read("*a"); f:close()
        os.remove(path)
        assert.are.equal("abcdok", got)
        for _, j in ipairs({ a, bad, after, other }) do jobs.put(j) end
    end)

    it("blocks every signal in its worker threads", function()
        jobs.threads(8)
        local pid = io.open("/proc/self/stat"):read("*n")  -- io.popen's would be ls's
        local checked = 0
        local ls = io.popen("ls /proc/" .. pid .. "/task")
        for tid in ls:lines() do
            local f = io.open("/proc/" .. pid .. "/task/" .. tid .. "/comm")
            local status = io.open("/proc/" .. pid .. "/task/" .. tid .. "/status")
            if f and status then
                local text = status:read("*a")
                status:close()
                f:close()
                local blk = text:match("SigBlk:%s*(%x+)")
                -- Not the main thread (busted's), whose mask is its own.
                if tonumber(tid) ~= pid and blk then
                    local mask = tonumber(blk:sub(-8), 16)
                    -- SIGINT is 2, SIGTERM 15: bits 1 and 14.
                    if bit.band(mask, 2) ~= 0 and bit.band(mask, 0x4000) ~= 0 then
                        checked = checked + 1
                    end
                end
            end
        end
        ls:close()
        assert.is_true(checked >= 8, checked .. " threads block SIGINT and SIGTERM")
    end)

    it("stops when idle and starts again on the next job", function()
        C.usbd_jobs_stop()
        assert.are.equal(0, jobs.stats().threads)
        local base = jobs.stats().finished
        local job = ffi.new("usbd_job")
        job.run, job.arg = C.usbd_job_sleep, 1000
        assert.are.equal(0, C.usbd_job_submit(job))
        assert.is_true(eventually(function() return jobs.stats().finished > base end))
        assert.is_true(jobs.stats().threads > 0)
        assert.is_false(jobs.stats().io_uring == 1)  -- no loop here, so no ring
    end)
end)

describe("usbd.jobs.begin_call and end_call", function()
    -- A call waiting for its job when its object is closed (a request
    -- closing a file another is reading): here begun by hand, as specs
    -- have no loop to wait in.
    it("leave a closed object open until the last call running ends", function()
        local usbd = require "usbd"
        local path = os.tmpname()
        local f = usbd.file.open(path, { size = 4096 })
        jobs.begin_call(f)
        jobs.begin_call(f)
        f:close()
        assert.is_not_nil(f.fds)       -- still open: two calls run
        jobs.end_call(f)
        assert.is_not_nil(f.fds)       -- one does
        jobs.end_call(f)
        assert.is_nil(f.fds)           -- the last has closed it
        assert.are.equal(0, f.busy)
        local ok, err = pcall(f.pread, f, usbd.buffer(512), 0)
        assert.is_false(ok)
        assert.matches("is closed", err)
        os.remove(path)
    end)
end)

describe("usbd.core.sched.in_request", function()
    local sched = require "usbd.core.sched"
    it("is true only inside a request's coroutine", function()
        assert.is_false(sched.in_request())
        local inside, in_own
        sched.spawn(function()
            inside = sched.in_request()
            local co = coroutine.create(function() in_own = sched.in_request() end)
            coroutine.resume(co)
        end)
        assert.is_true(inside)
        assert.is_false(in_own)
    end)
end)

-- Steps (usbd.jobs): C work over the bytes of a read or write, run in the
-- I/O's own job; usbd.file and the filedisk take them, usbd.transform
-- passes them down or runs them on their own.
local ffi = require "ffi"
local usbd = require "usbd"
local jobs = require "usbd.jobs"
local C = require "usbd.core"
local h = require "device_helper"

local KEY = ("00112233445566778899aabbccddeeff"):rep(2) .. ("ffeeddccbbaa99887766554433221100"):rep(2)
local dir, newpath = h.scratch("steps", ".img")

-- A step in Lua (an FFI callback: specs run every job on the Lua thread,
-- where a callback may run) that adds 1 to each byte and counts its runs.
local step_fn = ffi.typeof("int (*)(const usbd_step *, const uint8_t *, uint8_t *, uint64_t)")
local function counting_step(job_min, fail)
    local counter = { runs = 0 }
    counter.cb = ffi.cast(step_fn, function(_, src, dst, len)
        counter.runs = counter.runs + 1
        if fail then return -5 end
        for i = 0, tonumber(len) - 1 do dst[i] = (src[i] + 1) % 256 end
        return 0
    end)
    counter.step = jobs.step(counter.cb, nil, 0, 0, job_min)
    return counter
end

local function file_with(text)
    local path = newpath()
    local f = io.open(path, "wb"); f:write(text); f:close()
    return path
end

-- Close f's descriptor under it: its reads fail with EBADF from now on.
local function break_file(f)
    local fds = f.fds
    C.usbd_file_close(fds[0])
    if fds[1] == fds[0] then fds[1] = -1 end
    fds[0] = -1
end

local function job_on(run, fd, buf)
    local job = jobs.get()
    job.run, job.fd, job.ptr, job.len, job.pos = run, fd, buf.ptr, buf.len, 0
    return job
end

-- Steps as jobs on the Lua thread (callbacks) want the JIT off around them.
setup(function() jit.off(); jit.flush() end)
teardown(function() jit.on(); os.execute("rm -rf " .. dir) end)

describe("usbd.jobs.run_with_step", function()
    for _, job_min in ipairs { 0, 1e9 } do
        local how = job_min == 0 and "in one job" or "on the spot"
        it("runs the step once, after the read, " .. how, function()
            local f = usbd.file.open(file_with("abc"))
            local c = counting_step(job_min)
            local buf = usbd.buffer(3)
            local job = job_on(C.usbd_job_pread, f.fds[0], buf)
            assert.are.equal(0, jobs.run_with_step(job, c.step, buf.ptr, buf.ptr, 3))
            assert.are.equal(1, c.runs)
            assert.are.equal("bcd", buf:tostring())
            f:close()
        end)

        it("skips the step when the read fails, " .. how, function()
            local c = counting_step(job_min)
            local buf = usbd.buffer(3)
            buf:fill(0x41)
            local job = job_on(C.usbd_job_pread, -1, buf)
            assert.are.equal(9, jobs.run_with_step(job, c.step, buf.ptr, buf.ptr, 3))  -- EBADF
            assert.are.equal(0, c.runs)
            assert.are.equal("AAA", buf:tostring())
        end)

        it("runs the step first with step_first, and no write once it fails, " .. how, function()
            local path = file_with("xyz")
            local f = usbd.file.open(path)
            local src, out = usbd.buffer(3), usbd.buffer(3)
            src:copy_from("abc")
            local c = counting_step(job_min)
            assert.are.equal(0, jobs.run_with_step(job_on(C.usbd_job_pwrite, f.fds[0], out), c.step, src.ptr, out.ptr, 3, true))
            assert.are.equal(1, c.runs)
            assert.are.equal("abc", src:tostring())
            local bad = counting_step(job_min, true)
            src:copy_from("ABC")
            assert.are.equal(5, jobs.run_with_step(job_on(C.usbd_job_pwrite, f.fds[0], out), bad.step, src.ptr, out.ptr, 3, true))
            f:close()
            local r = io.open(path, "rb"); local text = r:read("*a"); r:close()
            assert.are.equal("bcd", text)
        end)
    end
end)

describe("usbd.file with steps", function()
    it("decrypts what it reads and encrypts what it writes, leaving buf as it was", function()
        local xts = usbd.cipher.xts(usbd.cipher.hex_key(KEY), 4096)
        local f = usbd.file.open(newpath(), { create = true, size = 65536 })
        local plain = usbd.buffer(65536)
        for i = 0, 65535 do plain.ptr[i] = i % 251 end
        f:pwrite(plain, 0, xts:encrypt_step(0))
        assert.are.equal(0, plain.ptr[251])
        local raw, back = usbd.buffer(65536), usbd.buffer(65536)
        f:pread(raw, 0)
        assert.are_not.equal(plain:tostring(), raw:tostring())
        f:pread(back, 0, xts:decrypt_step(0))
        assert.is_true(back:tostring() == plain:tostring())
        f:close()
    end)

    it("raises EIO when the read fails, and leaves buf to the failed read", function()
        local xts = usbd.cipher.xts(usbd.cipher.hex_key(KEY), 4096)
        local f = usbd.file.open(newpath(), { create = true, size = 65536 })
        local buf = usbd.buffer(65536)
        buf:fill(0x41)
        break_file(f)
        local ok, err = pcall(f.pread, f, buf, 0, xts:decrypt_step(0))
        f:close()
        assert.is_false(ok)
        assert.are.equal(usbd.E.IO, err)
        assert.is_true(buf:tostring() == ("A"):rep(65536))
    end)
end)

describe("steps through usbd.transform", function()
    local function filedisk(args)
        args = args or {}
        args.path, args.size = args.path or newpath(), args.size or "1M"
        return usbd.open_device("filedisk", args)
    end
    local function crypt(base, sector)
        return usbd.open_device("cryptdisk", { key = KEY, sector = sector }, base)
    end

    -- jobs.run's calls while fn runs (the jobs' run functions).
    local function jobs_run_by(fn)
        local seen, real = {}, jobs.run
        jobs.run = function(job, lane)
            seen[#seen + 1] = job.run
            return real(job, lane)
        end
        local ok, err = pcall(fn)
        jobs.run = real
        assert(ok, err)
        return seen
    end

    it("passes takes_steps through where read_at and write_at pass through", function()
        local base = filedisk()
        assert.is_true(base.takes_steps)
        assert.is_true(usbd.transform():wrap(base).takes_steps)
        local Own = usbd.transform()
        function Own:read_at(buf, pos) self.base:read_at(buf, pos) end
        assert.is_false(Own:wrap(base).takes_steps)
        Own.takes_steps = true
        assert.is_true(Own:wrap(base).takes_steps)
        assert.is_false(usbd.transform():wrap(usbd.open_device("ramdisk", { size = "1M" })).takes_steps)
        assert.is_false(crypt(base).takes_steps)
    end)

    for _, direct in ipairs { false, true } do
        it("reads and writes a cryptdisk over the filedisk in one job each" .. (direct and ", direct" or ""), function()
            local dev = crypt(filedisk { direct = tostring(direct) })
            local text = ("0123456789abcdef"):rep(4096)  -- 64 KiB: at least the cipher's job_min
            assert.are.same({ C.usbd_job_sequence }, jobs_run_by(function() h.write(dev, 65536, text) end))
            local back
            local seen = jobs_run_by(function() back = h.read(dev, 65536, #text) end)
            assert.is_true(back == text)
            -- from the page cache: no pread, the step (job_min or more) on a
            -- worker straight from the cache
            assert.are.same(direct and { C.usbd_job_sequence } or { C.usbd_job_step }, seen)
        end)
    end

    it("stores the same ciphertext over a base without steps, and reads it back", function()
        local path = newpath()
        local Plain = usbd.transform()   -- its own read_at and write_at: no steps
        function Plain:read_at(buf, pos) self.base:read_at(buf, pos) end
        function Plain:write_at(buf, pos) self.base:write_at(buf, pos) end
        local stepless = crypt(Plain:wrap(filedisk { path = path }))
        local text = ("stepless "):rep(8000)
        h.write(stepless, 12288, text)
        local seen = jobs_run_by(function() h.read(stepless, 12288, #text) end)
        assert.are.equal(C.usbd_job_step, seen[#seen])   -- the step on its own
        local direct = crypt(filedisk { path = path })
        assert.is_true(h.read(direct, 12288, #text) == text)
        h.write(direct, 0, text)
        assert.is_true(h.read(stepless, 0, #text) == text)
    end)

    it("raises EIO from a failed read below, the step skipped", function()
        local base = filedisk { direct = "true" }
        local dev = crypt(base)
        h.write(dev, 0, ("z"):rep(65536))
        break_file(base.file)
        local buf = usbd.buffer(65536)
        buf:fill(0x41)
        local ok, err = pcall(dev.read_at, dev, buf, 0)
        dev:close()
        assert.is_false(ok)
        assert.are.equal(usbd.E.IO, err)
        assert.is_true(buf:tostring() == ("A"):rep(65536))
    end)

    for _, sector in ipairs { "512", "4096" } do
        it("reads and writes parts of sectors right, " .. sector .. "-byte sectors", function()
            local dev = crypt(filedisk { size = "256K" }, sector)
            local model = ("\0"):rep(262144)
            math.randomseed(7)
            for _ = 1, 200 do
                local pos = math.random(0, 262144 - 1)
                local len = math.random(1, math.min(70000, 262144 - pos))
                if math.random() < 0.5 then
                    local s = string.char(math.random(0, 255)):rep(len)
                    h.write(dev, pos, s)
                    model = model:sub(1, pos) .. s .. model:sub(pos + len + 1)
                else
                    assert.is_true(h.read(dev, pos, len) == model:sub(pos + 1, pos + len))
                end
            end
            assert.is_true(h.read(dev, 0, 262144) == model)
        end)
    end
end)

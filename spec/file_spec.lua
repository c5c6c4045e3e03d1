-- usbd.file, outside a request: every call runs on the spot. (Inside one it
-- runs in the pool; tests/integration/filedisk.sh covers that path.)
local ffi = require "ffi"
local usbd = require "usbd"
local E = usbd.E

local dir, scratch = require("device_helper").scratch("file", ".img")

local function bytes_of(s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    return b
end

local function read(f, pos, len)
    local b = usbd.buffer(len)
    b:fill(0xee)
    f:pread(b, pos)
    return b:tostring()
end

local pid = io.open("/proc/self/stat"):read("*n")  -- ours (io.popen's would be ls's)

local function errno_of(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    return usbd.errno_of(err), err
end

-- Whether this file system does O_DIRECT at all.
local direct_ok = pcall(function()
    usbd.file.open(scratch(), { create = true, direct = true }):close()
end)

describe("usbd.file", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("creates a sparse file of the size asked", function()
        local f = usbd.file.open(scratch(), { create = true, size = 64 * 2 ^ 20 })
        assert.are.equal(64 * 2 ^ 20, f:size())
        assert.is_true(f:allocated() < 2 ^ 20)
        f:close()
    end)

    it("writes and reads back at any alignment", function()
        local f = usbd.file.open(scratch(), { create = true, size = 2 ^ 20 })
        f:pwrite(bytes_of("hello"), 1)
        f:pwrite(bytes_of(string.rep("z", 10000)), 4093)
        assert.are.equal("\0hello\0", read(f, 0, 7))
        assert.are.equal("y" .. string.rep("z", 10000) .. "\0", "y" .. read(f, 4093, 10001))
        f:close()
    end)

    it("reads zeroes past the end of the file", function()
        local path = scratch()
        local f = usbd.file.open(path, { create = true })
        f:pwrite(bytes_of("abc"), 0)
        assert.are.equal(3, f:size())
        assert.are.equal("abc" .. string.rep("\0", 8189), read(f, 0, 8192))
        assert.are.equal(string.rep("\0", 100), read(f, 50000, 100))
        f:close()
    end)

    it("punches holes that read as zeroes and give the storage back", function()
        local f = usbd.file.open(scratch(), { create = true, size = 8 * 2 ^ 20 })
        local data = usbd.buffer(8 * 2 ^ 20)
        data:fill(0x5a)
        f:pwrite(data, 0)
        f:sync()
        local full = f:allocated()
        assert.is_true(full >= 8 * 2 ^ 20)
        f:punch_hole(2 ^ 20, 4 * 2 ^ 20)
        assert.is_true(f:allocated() <= full - 4 * 2 ^ 20)
        assert.are.equal(string.rep("\0", 4 * 2 ^ 20), read(f, 2 ^ 20, 4 * 2 ^ 20))
        assert.are.equal("ZZ", read(f, 2 ^ 20 - 1, 1) .. read(f, 5 * 2 ^ 20, 1))
        assert.are.equal(8 * 2 ^ 20, f:size())  -- the size stays
        f:close()
    end)

    it("reports its data and holes as extents", function()
        local M = 2 ^ 20
        local f = usbd.file.open(scratch(), { create = true, size = 8 * M })
        local data = usbd.buffer(M)
        data:fill(0x5a)
        f:pwrite(data, 2 * M)
        f:pwrite(data, 7 * M)
        local HZ = usbd.HOLE + usbd.ZERO
        assert.are.same({ 2 * M, HZ, M, 0, 4 * M, HZ, M, 0 }, f:extents(0, 8 * M))
        -- from inside a run, clamped to the length asked
        assert.are.same({ M / 2, 0, M / 2, HZ }, f:extents(2.5 * M, M))
        assert.are.same({ 100, HZ }, f:extents(4 * M, 100))
        f:punch_hole(2 * M, M)
        assert.are.same({ 7 * M, HZ, M, 0 }, f:extents(0, 8 * M))
        f:close()
    end)

    it("zeroes a range, odd ends included", function()
        local f = usbd.file.open(scratch(), { create = true, size = 2 ^ 20 })
        f:pwrite(bytes_of(string.rep("x", 300000)), 0)
        f:zero_range(10, 200000)
        assert.are.equal("x" .. string.rep("\0", 200000) .. "x", read(f, 9, 200002))
        f:close()
    end)

    it("truncates and grows", function()
        local f = usbd.file.open(scratch(), { create = true, size = 10000 })
        f:pwrite(bytes_of("keep"), 0)
        f:truncate(2)
        assert.are.equal(2, f:size())
        f:truncate(5000)
        assert.are.equal("ke\0\0", read(f, 0, 4))
        f:close()
    end)

    it("grows an existing file to size, never shrinks it", function()
        local path = scratch()
        usbd.file.open(path, { create = true, size = 8192 }):close()
        assert.are.equal(65536, usbd.file.open(path, { size = 65536 }):size())
        assert.are.equal(65536, usbd.file.open(path, { size = 4096 }):size())
    end)

    it("says which file it cannot open, and why", function()
        local ok, err = pcall(usbd.file.open, dir .. "/none.img")
        assert.is_false(ok)
        assert.matches("none.img", err)
        assert.matches("No such file", err)
    end)

    it("raises errno errors the client can receive", function()
        -- /dev/full: every write fails with ENOSPC.
        local full = usbd.file.open("/dev/full")
        assert.are.equal(E.NOSPC.errno, errno_of(function() full:pwrite(bytes_of("x"), 0) end))
        full:close()
        local ro = usbd.file.open(scratch(), { create = true })
        ro:close()
        ro = usbd.file.open(ro.path, { readonly = true })
        assert.are.equal(E.ROFS.errno, errno_of(function() ro:pwrite(bytes_of("x"), 0) end))
        assert.are.equal(E.ROFS.errno, errno_of(function() ro:punch_hole(0, 1) end))
        ro:close()
    end)

    it("refuses use after close", function()
        local f = usbd.file.open(scratch(), { create = true })
        f:close()
        f:close()  -- twice is fine
        assert.has_error(function() f:pread(usbd.buffer(1), 0) end)
    end)

    it("closes its descriptors when collected", function()
        -- What each of our descriptors points at, by number.
        local function target(fd)
            local p = io.popen("readlink /proc/" .. pid .. "/fd/" .. fd .. " 2>/dev/null")
            local t = p:read("*a")
            p:close()
            return t
        end
        local files, fds = {}, {}
        for i = 1, 10 do
            files[i] = usbd.file.open(scratch(), { create = true, direct = direct_ok })
            fds[#fds + 1] = { files[i].fds[0], files[i].path }
            fds[#fds + 1] = { files[i].fds[1], files[i].path }
        end
        for _, fd in ipairs(fds) do
            assert.matches(fd[2]:match("[^/]+$"), target(fd[1]), 1, true)
        end
        -- Dropped for the collector, never read again.
        files = nil -- luacheck: ignore 311
        collectgarbage()
        collectgarbage()
        for _, fd in ipairs(fds) do
            assert.is_nil(target(fd[1]):find(fd[2]:match("[^/]+$"), 1, true))
        end
    end)

    describe("with direct=true", function()
        local it_direct = direct_ok and it or pending

        it_direct("reads and writes aligned blocks, straight", function()
            local f = usbd.file.open(scratch(), { create = true, size = 2 ^ 20, direct = true })
            assert.is_true(f.direct)
            local b = usbd.buffer(8192)
            b:fill(0x41)
            f:pwrite(b, 4096)
            assert.are.equal(string.rep("A", 8192), read(f, 4096, 8192))
            f:close()
        end)

        it_direct("serves any alignment: unaligned I/O goes through the page cache", function()
            local f = usbd.file.open(scratch(), { create = true, size = 2 ^ 20, direct = true })
            local b = usbd.buffer(8192)
            b:fill(0x41)
            f:pwrite(b, 0)
            f:pwrite(bytes_of("hello"), 4094)            -- across a block boundary
            f:pwrite(b:sub(1, 100), 10000)                -- unaligned memory too
            assert.are.equal("AAhelloAA", read(f, 4092, 9))
            -- An aligned read after an unaligned write sees it.
            local whole = usbd.buffer(16384)
            f:pread(whole, 0)
            assert.are.equal("hello", whole:sub(4094, 5):tostring())
            assert.are.equal(string.rep("A", 100), whole:sub(10000, 100):tostring())
            f:zero_range(1, 4094)
            f:punch_hole(8190, 1)
            assert.are.equal("A" .. string.rep("\0", 4094) .. "ell", read(f, 0, 4098))
            assert.are.equal("A\0A", read(f, 8189, 3))
            f:sync()
            f:close()
        end)

        it_direct("reads a file whose size is not a whole block", function()
            local path = scratch()
            local f = usbd.file.open(path, { create = true })
            f:pwrite(bytes_of(string.rep("q", 5000)), 0)
            f:close()
            f = usbd.file.open(path, { direct = true })
            assert.are.equal(string.rep("q", 5000) .. string.rep("\0", 3192), read(f, 0, 8192))
            f:close()
        end)
    end)

    it("lends nothing from a closed map", function()
        local f = usbd.file.open(scratch(), { create = true, size = 65536 })
        local m = f:map()
        m:close()
        local b = usbd.buffer(4096)
        local ok, err = pcall(m.lend, m, b, 0, 0, 4096)
        assert.is_false(ok)
        assert.matches("file_spec%.lua:%d+: usbd%.file%(.-%):map%(%) is closed$", tostring(err))
        f:close()
    end)

    it("refuses every call once closed, with one error naming the caller's line", function()
        local f = usbd.file.open(scratch(), { create = true, size = 65536 })
        f:close()
        local b, offs, ranges = usbd.buffer(4096), ffi.new("int64_t[1]"), usbd.file.ranges(1)
        ranges[0].pos, ranges[0].at, ranges[0].len = 0, 0, 512
        require("device_helper").all_fail({
            pread = function() f:pread(b, 0) end,
            pwrite = function() f:pwrite(b, 0) end,
            pread_blocks = function() f:pread_blocks(b, 4096, offs) end,
            pwrite_blocks = function() f:pwrite_blocks(b, 4096, offs) end,
            pwrite_blocks_job = function() f:pwrite_blocks_job(b, 4096, offs) end,
            sync = function() f:sync() end,
            zero_range = function() f:zero_range(0, 4096) end,
            punch_hole = function() f:punch_hole(0, 4096) end,
            extents = function() f:extents(0, 4096) end,
            pread_ranges = function() f:pread_ranges(b, ranges, 1) end,
            pwrite_ranges = function() f:pwrite_ranges(b, ranges, 1) end,
            size = function() f:size() end,
            allocated = function() f:allocated() end,
            truncate = function() f:truncate(0) end,
            map = function() f:map() end,
        }, "file_spec%.lua:%d+: usbd%.file%(.-%) is closed$")
    end)
end)

describe("usbd.file map", function()
    setup(function() os.execute("mkdir -p " .. dir) end)
    teardown(function() os.execute("rm -rf " .. dir) end)
    it("lends cached bytes inside the file; outside a request, lending copies", function()
        local path = scratch()
        local f = usbd.file.open(path, { create = true })
        local data = ("0123456789abcdef"):rep(1024)   -- 16 KiB, just written: cached
        f:pwrite(bytes_of(data), 0)
        local m = f:map()
        local b = usbd.buffer(8192)
        assert.is_true(m:lend(b, 100, 50, 4000))
        assert.equal(data:sub(51, 4050), b:sub(100, 4000):tostring())
        assert.is_false(m:lend(b, 0, 16 * 1024 - 10, 20))   -- past the end: nothing done
        assert.equal(("\0"):rep(100), b:sub(0, 100):tostring())
        assert.has_error(function() m:lend(b, 8000, 0, 4096) end)  -- past the buffer
        m:close()
        f:close()
    end)

    it("buf:borrow copies into a buffer that is no request's; zeroes are zeroes", function()
        local b = usbd.buffer(64)
        b:fill(0x55)
        assert.is_false(b:borrow(8, usbd.zeroes(16)))
        assert.equal(("\85"):rep(8) .. ("\0"):rep(16) .. ("\85"):rep(40), b:tostring())
        assert.is_true(usbd.zeroes(usbd.ZEROES_MAX):is_zero())
    end)
end)

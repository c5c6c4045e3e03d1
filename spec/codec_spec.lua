-- usbd.codec: specs, outside the server's loop (calls run on the spot), and
-- one large call driven through the worker pool as a request would.
local ffi = require "ffi"
local usbd = require "usbd"
local C = require "usbd.core"
local codec = require "usbd.codec"
local jobs = require "usbd.jobs"
local sched = require "usbd.core.sched"

local BS = 4096

local function text(n, seed)
    local words = { "block ", "device ", "the ", "kernel ", "nbd ", "write ", "read ", "lua\n" }
    local out, len = {}, 0
    math.randomseed(seed or 1)
    while len < n do
        local w = words[math.random(#words)]
        out[#out + 1] = w
        len = len + #w
    end
    return table.concat(out):sub(1, n)
end

local function random_bytes(n, seed)
    math.randomseed(seed or 2)
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

local function buffer_of(s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    return b
end

-- Every block of src read back from packed (raw ones copied as they are).
local function read_back(c, packed, src)
    local out = usbd.buffer(src.len)
    c:decompress_blocks(packed.data, packed.at, packed.sizes, out, BS)
    for i = 0, packed.n - 1 do
        if packed:size(i) == 0 then
            out:sub(i * BS, BS):copy_from(src:sub(i * BS, BS))
        end
    end
    return out:tostring()
end

describe("usbd.codec", function()
    it("parses lz4, zstd and zstd:LEVEL, and says what is wrong otherwise", function()
        assert.are.equal("lz4", codec.new().spec)
        assert.are.equal("lz4", codec.new("lz4").spec)
        assert.are.equal("zstd:3", codec.new("zstd").spec)
        local z = codec.new("zstd:19")
        assert.are.equal("zstd", z.name)
        assert.are.equal(19, z.level)
        assert.are.equal("zstd:-5", codec.new("zstd:-5").spec)
        assert.are.equal("usbd.codec(zstd:19)", tostring(z))
        assert.has_error(function() codec.new("gzip") end,
            "unknown codec 'gzip': use lz4 or zstd[:LEVEL]")
        assert.has_error(function() codec.new("lz4:3") end, "'lz4:3': lz4 takes no level (zstd:LEVEL does)")
        for _, bad in ipairs({ "zstd:", "zstd:x", "zstd:99", "zstd:1.5", "zstd:3 " }) do
            local ok, err = pcall(codec.new, bad)
            assert.is_false(ok)
            assert.truthy(err:match("the zstd level is a whole number from %-%d+ to %d+$"), err)
        end
    end)

    for _, spec in ipairs({ "lz4", "zstd", "zstd:1", "zstd:12" }) do
        it(spec .. ": text shrinks, random stays raw, every block reads back", function()
            local c = codec.new(spec)
            local parts = {}
            for i = 1, 12 do
                parts[i] = i % 4 == 0 and random_bytes(BS, i) or text(BS, i)
            end
            local src = buffer_of(table.concat(parts))
            local packed = c:compress(src, BS)
            assert.are.equal(12, packed.n)
            local sum = 0
            for i = 0, 11 do
                local size = packed:size(i)
                if (i + 1) % 4 == 0 then
                    assert.are.equal(0, size)
                else
                    assert.is_true(size > 0 and size < BS * 0.6, "block " .. i .. ": " .. size)
                    assert.are.equal(size, packed:fragment(i).len)
                end
                sum = sum + size
            end
            assert.are.equal(sum, packed.bytes)
            assert.are.equal(src:tostring(), read_back(c, packed, src))
            -- One fragment alone, from a copy of it.
            local frag = buffer_of(packed:fragment(4):tostring())
            local block = usbd.buffer(BS)
            c:decompress(frag, block)
            assert.are.equal(parts[5], block:tostring())
            packed:release()
        end)
    end

    it("stores raw what does not save an eighth, or the limit given", function()
        local c = codec.new("lz4")
        local half = text(BS / 2, 5) .. random_bytes(BS / 2, 6)
        local src = buffer_of(half)
        local packed = c:compress(src, BS)
        local size = packed:size(0)
        assert.is_true(size > BS / 2 and size <= BS - BS / 8, "size " .. size)
        packed:release()
        packed = c:compress(src, BS, BS / 2)
        assert.are.equal(0, packed:size(0))
        assert.are.equal(0, packed.bytes)
        packed:release()
    end)

    it("recycles packed results", function()
        local c = codec.new("lz4")
        local src = buffer_of(text(8 * BS, 9))
        local a = c:compress(src, BS)
        a:release()
        local b = c:compress(src, BS)
        assert.are.equal(a, b)
        local other = c:compress(src, BS)  -- b is still out: another one
        assert.are_not.equal(b, other)
        b:release()
        other:release()
    end)

    it("raises usbd.E.IO on a damaged fragment and errors on bad arguments", function()
        for _, spec in ipairs({ "lz4", "zstd" }) do
            local c = codec.new(spec)
            local packed = c:compress(buffer_of(text(BS, 3)), BS)
            local frag = buffer_of(packed:fragment(0):tostring())
            packed:release()
            local block = usbd.buffer(BS)
            local ok, err = pcall(c.decompress, c, frag:sub(0, frag.len - 3), block)
            assert.is_false(ok)
            assert.are.equal(usbd.E.IO, err)
            ok, err = pcall(c.decompress, c, frag, usbd.buffer(BS / 2))  -- wrong size
            assert.is_false(ok)
            assert.are.equal(usbd.E.IO, err)
        end
        local c = codec.new("lz4")
        assert.has_error(function() c:compress(usbd.buffer(BS + 1), BS) end,
            "codec:compress: 4097 bytes are not whole blocks of 4096")
        assert.has_error(function() c:decompress(usbd.buffer(0), usbd.buffer(BS)) end,
            "codec:decompress: an empty fragment (a raw block needs none)")
    end)

    -- Each of these reached C as a wrong block count, a NULL or a fragment
    -- outside the scratch buffer (a crash: heap overflow, wild read).
    it("refuses blocks, counts and fragments C would overrun, with a one-line error", function()
        local c = codec.new("lz4")
        for _, bad in ipairs({ 0, 1.5, -4096, 2 ^ 31 }) do
            assert.has_error(function() c:compress(usbd.buffer(3), bad) end,
                ("codec:compress: 3 bytes are not whole blocks of %s"):format(tostring(bad)))
        end
        assert.has_error(function() c:compress(usbd.buffer(BS), BS, 0) end, "codec:compress: a limit of 0 bytes")
        assert.has_error(function() c:compress(usbd.buffer(BS), BS, 100.5) end, "codec:compress: a limit of 100.5 bytes")
        local at, sizes = ffi.new("uint64_t[2]"), ffi.new("uint32_t[2]", 10, 10)
        local out = usbd.buffer(2 * BS)
        assert.has_error(function() c:decompress_blocks(nil, at, sizes, out, BS) end,
            "codec:decompress_blocks: no source of fragments")
        assert.has_error(function() c:decompress_blocks(usbd.buffer(20).ptr, nil, sizes, out, BS) end,
            "codec:decompress_blocks: no at or sizes array for the fragments")
        assert.has_error(function() c:decompress_blocks(usbd.buffer(20).ptr, at, sizes, out, 1.5) end)

        local dir = "build/spec-codec-bad." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
        os.execute("mkdir -p " .. dir)
        local f = usbd.file.open(dir .. "/frags", { create = true, size = 65536 })
        local ranges, scratch = usbd.file.ranges(1), usbd.buffer(BS)
        ranges[0].pos, ranges[0].at, ranges[0].len = 0, 0, 20
        at[1] = 10
        assert.has_error(function() c:read_blocks(f, ranges, -1, scratch, at, sizes, out, BS) end,
            "codec:read_blocks: -1 ranges")
        assert.has_error(function() c:read_blocks(f, ranges, 1e6, scratch, at, sizes, out, BS) end,
            "codec:read_blocks: 1000000 ranges of an array of 1")
        assert.has_error(function() c:read_blocks(f, ranges, 1, scratch, nil, sizes, out, BS) end,
            "codec:read_blocks: no at or sizes array for the fragments")
        at[1] = BS - 5
        assert.has_error(function() c:read_blocks(f, ranges, 1, scratch, at, sizes, out, BS) end,
            "codec:read_blocks: fragment 1 (10 bytes at 4091) falls outside a scratch buffer of 4096 bytes")
        at[1] = 1e12
        assert.has_error(function() c:read_blocks(f, ranges, 1, scratch, at, sizes, out, BS) end,
            "codec:read_blocks: fragment 1 (10 bytes at 1000000000000) falls outside a scratch buffer of 4096 bytes")
        f:close()
        os.execute("rm -rf " .. dir)
    end)

    it("reads fragments from a file and decompresses them in one call", function()
        local dir = "build/spec-codec." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
        os.execute("mkdir -p " .. dir)
        local f = usbd.file.open(dir .. "/frags", { create = true, size = 1024 * 1024 })
        local c = codec.new("lz4")
        local src = buffer_of(text(8 * BS, 21))
        local p = c:compress(src, BS)
        -- Fragments scattered in the file, block 5 left out (its block
        -- stays as it was), read back into a scratch buffer in another order.
        local ranges = usbd.file.ranges(8)
        local at, sizes = ffi.new("uint64_t[8]"), ffi.new("uint32_t[8]")
        local nr, used = 0, 0
        for i = 7, 0, -1 do
            if i ~= 5 then
                local pos = 100000 + i * 3001
                f:pwrite(p:fragment(i), pos)
                local r = ranges[nr]
                r.pos, r.at, r.len = pos, used, p:size(i)
                at[i], sizes[i] = used, p:size(i)
                nr, used = nr + 1, used + p:size(i)
            end
        end
        local out, scratch = usbd.buffer(8 * BS), usbd.buffer(8 * BS)
        out:sub(5 * BS, BS):copy_from(string.rep("x", BS))
        c:read_blocks(f, ranges, nr, scratch, at, sizes, out, BS)
        for i = 0, 7 do
            local want = i == 5 and string.rep("x", BS) or src:sub(i * BS, BS):tostring()
            assert.are.equal(want, out:sub(i * BS, BS):tostring(), "block " .. i)
        end
        -- A range pointing at other bytes: not a fragment, usbd.E.IO.
        ranges[0].pos = 0
        local ok, err = pcall(c.read_blocks, c, f, ranges, nr, scratch, at, sizes, out, BS)
        assert.is_false(ok)
        assert.are.equal(usbd.E.IO, err)
        assert.has_error(function() c:read_blocks(f, ranges, nr, usbd.buffer(16), at, sizes, out, BS) end)
        p:release()
        f:close()
        os.execute("rm -rf " .. dir)
    end)

    it("in a request, a large call runs on a worker while the request waits", function()
        jobs.threads(2)
        local c = codec.new("zstd:3")
        local src = buffer_of(text(64 * BS, 11))
        local before = jobs.stats().submitted
        local result, parked_job
        -- A request as the server runs one: parks at the job, and sched's
        -- wait yields the job's address to whoever resumed it.
        local real_wait = sched.wait
        sched.wait = function(job)
            parked_job = job
            return real_wait(job)
        end
        sched.spawn(function()
            local p = c:compress(src, BS)
            result = { n = p.n, bytes = p.bytes, back = read_back(c, p, src) }
            p:release()
        end)
        -- What the loop does: when the worker is done, hand the job back.
        local pause = ffi.new("usbd_job")
        pause.run, pause.arg = C.usbd_job_sleep, 1000
        for _ = 1, 10000 do
            if result then break end
            if parked_job and jobs.stats().finished >= jobs.stats().submitted then
                local job = parked_job
                parked_job = nil
                sched.complete(job)
            else
                C.usbd_job_run(pause)
            end
        end
        sched.wait = real_wait
        assert.is_truthy(result, "the request never finished")
        assert.are.equal(before + 2, jobs.stats().submitted)  -- compress and decompress
        assert.are.equal(64, result.n)
        assert.is_true(result.bytes < 16 * BS)
        assert.are.equal(src:tostring(), result.back)
    end)
end)

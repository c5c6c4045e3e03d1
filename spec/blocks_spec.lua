-- usbd.file's scattered byte ranges (src/services/blocks.c), on the spot.
local ffi = require "ffi"
local usbd = require "usbd"
local file = require "usbd.file"

local dir = "build/spec-blocks." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
os.execute("mkdir -p " .. dir)

local function ranges_of(list)
    local r = file.ranges(#list)
    for i, t in ipairs(list) do
        r[i - 1].pos, r[i - 1].at, r[i - 1].len = t[1], t[2], t[3]
    end
    return r, #list
end

describe("usbd.file ranges", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("writes and reads scattered ranges, neighbours or not, past the end as zeroes", function()
        local f = file.open(dir .. "/a", { create = true })
        local src = usbd.buffer(300)
        src:copy_from(("abcdefghij"):rep(30))
        -- 100 bytes at 5000, then 50 + 50 that are neighbours in both, then one back at 10.
        f:pwrite_ranges(src, ranges_of({ { 5000, 0, 100 }, { 8000, 100, 50 }, { 8050, 150, 50 }, { 10, 200, 100 } }))
        assert.are.equal(8100, f:size())
        local back = usbd.buffer(400)
        back:fill(0xee)
        f:pread_ranges(back, ranges_of({ { 10, 0, 100 }, { 5000, 100, 100 }, { 8000, 200, 100 }, { 9000, 300, 100 } }))
        local s = back:tostring()
        assert.are.equal(src:tostring():sub(201, 300), s:sub(1, 100))
        assert.are.equal(src:tostring():sub(1, 100), s:sub(101, 200))
        assert.are.equal(src:tostring():sub(101, 200), s:sub(201, 300))
        assert.are.equal(("\0"):rep(100), s:sub(301, 400))  -- past the end
        f:close()
    end)

    it("refuses ranges outside the buffer, errors as errnos", function()
        local f = file.open(dir .. "/b", { create = true })
        local b = usbd.buffer(10)
        assert.has_error(function() f:pwrite_ranges(b, ranges_of({ { 0, 5, 6 } })) end)
        local ro = file.open(dir .. "/b", { readonly = true })
        local ok, err = pcall(ro.pwrite_ranges, ro, b, ranges_of({ { 0, 0, 5 } }))
        assert.is_false(ok)
        assert.are.equal(usbd.E.ROFS, err)
        ro:close()
        f:close()
        assert.has_error(function() f:pread_ranges(b, ranges_of({ { 0, 0, 5 } })) end)
    end)

    it("writes file neighbours apart in the buffer in one call, zeroes where asked, in any order", function()
        local f = file.open(dir .. "/z", { create = true })
        local init = usbd.buffer(20000)
        init:fill(0x77)
        f:pwrite(init, 0)
        local src = usbd.buffer(300)
        src:copy_from(("0123456789"):rep(30))
        -- [100, 150) from 200, zeroes [150, 4096), [4096, 4196) from 0; given out of order.
        local r, n = ranges_of({ { 4096, 0, 100 }, { 150, 0, 3946 }, { 100, 200, 50 } })
        r[1].at = file.ZEROES
        f:pwrite_ranges(src, r, n)
        local back = usbd.buffer(4300)
        f:pread(back, 0)
        local s = back:tostring()
        assert.are.equal(("\x77"):rep(100), s:sub(1, 100))
        assert.are.equal(src:tostring():sub(201, 250), s:sub(101, 150))
        assert.are.equal(("\0"):rep(3946), s:sub(151, 4096))
        assert.are.equal(src:tostring():sub(1, 100), s:sub(4097, 4196))
        assert.are.equal(("\x77"):rep(104), s:sub(4197, 4300))
        -- Zeroes are for writes, and at most 64 KiB; a read refuses them.
        r, n = ranges_of({ { 0, 0, 70000 } })
        r[0].at = file.ZEROES
        assert.has_error(function() f:pwrite_ranges(src, r, n) end)
        r[0].len = 10
        assert.has_error(function() f:pread_ranges(back, r, n) end)
        f:close()
    end)

    -- Each of these reached C as a huge count, a NULL or an offset past
    -- 2^63 (a crash, or a read of whatever followed the array).
    it("refuses counts that are not whole, beyond the array, and ranges past 2^63", function()
        local f = file.open(dir .. "/c", { create = true })
        local b = usbd.buffer(100)
        local r = ranges_of({ { 0, 0, 10 } })
        assert.has_error(function() f:pread_ranges(b, r, -1) end, "usbd.file: -1 ranges")
        assert.has_error(function() f:pwrite_ranges(b, r, 1.5) end, "usbd.file: 1.5 ranges")
        assert.has_error(function() f:pread_ranges(b, r, 1e7) end, "usbd.file: 10000000 ranges of an array of 1")
        assert.has_error(function() f:pread_ranges(b, nil, 1) end, "usbd.file: 1 ranges")
        r[0].pos = 2 ^ 63 - 5
        assert.has_error(function() f:pread_ranges(b, r, 1) end)
        assert.has_error(function() f:pwrite_ranges(b, r, 1) end)
        f:pread_ranges(b, r, 0)  -- nothing to do: fine
        -- Scattered blocks: whole blocks of a whole number of bytes, with offsets.
        local offsets = ffi.new("int64_t[2]", 0, 4096)
        local two = usbd.buffer(8192)
        for _, bad in ipairs({ 0, 1.5, -4096, 3000 }) do
            assert.has_error(function() f:pread_blocks(two, bad, offsets) end,
                ("usbd.file: 8192 bytes are not whole blocks of %s with their offsets"):format(tostring(bad)))
        end
        assert.has_error(function() f:pwrite_blocks(two, 4096, nil) end)
        f:pwrite_blocks(two, 4096, offsets)
        f:close()
    end)
end)

-- The dedupdisk's map is extents (runs of logical blocks on runs of ids,
-- none across a multiple of 256 blocks): random writes of many sizes,
-- trims and frees that split and join them, ids reused after a sync of
-- the WAL, all checked block by block against a model, and by the store
-- check.
local h = require "device_helper"
local usbd = require "usbd"
local ffi = require "ffi"
local bit = require "bit"

local root = "build/spec-dedup-ext." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
os.execute("mkdir -p " .. root)
local SCRIPT = "devices/dedupdisk.lua"
local K = 4096

-- Fast pseudo-random bytes (xorshift), a few contents repeated on purpose.
local state = ffi.new("uint32_t[1]", 2463534242)
local function fill(buf, len, pool)
    local p = ffi.cast("uint32_t *", buf.ptr)
    for blk = 0, len / K - 1 do
        local seed = pool and math.random(1, pool) or nil
        if seed then state[0] = seed * 2654435761 end
        for i = blk * 1024, blk * 1024 + 1023 do
            local x = state[0]
            x = bit.bxor(x, bit.lshift(x, 13)); x = bit.bxor(x, bit.rshift(x, 17)); x = bit.bxor(x, bit.lshift(x, 5))
            state[0] = x
            p[i] = x
        end
    end
end

describe("devices/dedupdisk.lua extents", function()
    teardown(function() os.execute("rm -rf " .. root) end)

    it("reads back what random writes, trims and reuse leave, and checks clean", function()
        local dir = root .. "/s"
        local dev = h.open(SCRIPT, { dir = dir, size = "8M" })
        local nblocks = 2048
        local want = {}    -- block -> its bytes (nil: zeroes)
        math.randomseed(11)
        local buf = usbd.buffer(512 * K)
        for _ = 1, 300 do
            local len = ({ 1, 3, 16, 64, 255, 256, 300, 512 })[math.random(1, 8)] * K
            local off = math.random(0, nblocks - len / K) * K
            fill(buf, len, math.random() < 0.5 and 8 or nil)
            local view = buf:sub(0, len)
            dev:write_at(view, off)
            for b = 0, len / K - 1 do want[off / K + b] = ffi.string(buf.ptr + b * K, K) end
            local r = math.random()
            if r < 0.1 then
                local tlen = math.random(1, 700) * K
                local toff = math.random(0, nblocks - tlen / K) * K
                dev:trim(toff, tlen)
                for b = toff / K, (toff + tlen) / K - 1 do want[b] = nil end
            elseif r < 0.2 then
                dev:release()           -- freed ids become reusable
            elseif r < 0.25 then
                dev:flush()
            end
        end
        local zero = string.rep("\0", K)
        for b = 0, nblocks - 1 do
            local got = h.read(dev, b * K, K)
            if got ~= (want[b] or zero) then error("block " .. b .. " reads wrong") end
        end
        -- The holes extents() reports are exactly the unmapped blocks.
        local e, at = dev:extents(0, nblocks * K), 0
        for j = 1, #e, 2 do
            for b = at / K, (at + e[j]) / K - 1 do
                assert.are.equal(e[j + 1] ~= 0, want[b] == nil, "block " .. b)
            end
            at = at + e[j]
        end
        dev:close()
        local r = dofile("tools/dedup-fsck.lua").check(dir, {})
        assert.are.equal(0, r.problems, table.concat(r.lines, "\n"))
        assert.are.equal(0, r.leaks, table.concat(r.lines, "\n"))
    end)
end)

-- compress-ideal: how small a per-block compressed store of FILE can be.
--
--   luajit tools/compress-ideal.lua FILE [lz4|zstd[:LEVEL]] [BLOCK]
--
-- Reads FILE in blocks (4K), skips all-zero blocks and repeats (a dedup
-- store keeps those as nothing, or once), compresses each unique block on
-- its own, and prints, as name: value lines:
--   ideal_bytes    the sum of min(compressed size, block): the least any
--                  per-block scheme can store (the goal's yardstick)
--   packed_bytes   what usbd.dedup.packer's placement needs, in whole
--                  blocks, with raw storage of blocks that save less than
--                  an eighth
--   packed_over_ideal
-- Run from the repository (it loads lua/ and build/libusbd.so).
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local usbd = require "usbd"
local packer = require "usbd.dedup.packer"

local path, spec, block = arg[1], arg[2] or "lz4", usbd.parse_size(arg[3] or "4K")
if not path then
    io.stderr:write("usage: luajit tools/compress-ideal.lua FILE [lz4|zstd[:LEVEL]] [BLOCK]\n")
    os.exit(2)
end
local f = assert(io.open(path, "rb"))
local codec = usbd.codec.new(spec)
local CHUNK = 256 * block
local buf = usbd.buffer(CHUNK)
local seen = {}
local stats = { blocks = 0, zero_blocks = 0, duplicate_blocks = 0, unique_blocks = 0, raw_blocks = 0,
    ideal_bytes = 0, fragment_bytes = 0 }
local pk, next_pbn = packer.new(block), 0
local function fresh() next_pbn = next_pbn + 1 return next_pbn end
-- The ideal counts each block's own compressed size, even above the limit.
local loose = block - 1
while true do
    local s = f:read(CHUNK)
    if not s then break end
    local n = math.floor(#s / block)
    if n == 0 then break end
    local view = buf:sub(0, n * block)
    view:copy_from(s:sub(1, n * block))
    local hashes = {}
    for i = 0, n - 1 do hashes[i] = view:sub(i * block, block):hash128() end
    local tight = codec:compress(view, block)
    local all = codec:compress(view, block, loose)
    for i = 0, n - 1 do
        stats.blocks = stats.blocks + 1
        local one = view:sub(i * block, block)
        if one:is_zero() then
            stats.zero_blocks = stats.zero_blocks + 1
        elseif seen[hashes[i]] then
            stats.duplicate_blocks = stats.duplicate_blocks + 1
        else
            seen[hashes[i]] = true
            stats.unique_blocks = stats.unique_blocks + 1
            local c = all:size(i)
            stats.ideal_bytes = stats.ideal_bytes + (c > 0 and c or block)
            local size = tight:size(i)
            if size == 0 then
                stats.raw_blocks = stats.raw_blocks + 1
                next_pbn = next_pbn + 1
            else
                stats.fragment_bytes = stats.fragment_bytes + size
                pk:place(size, fresh)
            end
        end
    end
    tight:release()
    all:release()
end
f:close()
stats.packed_bytes = next_pbn * block
stats.raw_bytes = stats.unique_blocks * block
stats.packed_over_ideal = stats.ideal_bytes > 0 and stats.packed_bytes / stats.ideal_bytes or 1
stats.codec = codec.spec
local names = {}
for k in pairs(stats) do names[#names + 1] = k end
table.sort(names)
for _, k in ipairs(names) do
    local v = stats[k]
    print(("%s: %s"):format(k, type(v) == "number" and v ~= math.floor(v) and ("%.4f"):format(v) or tostring(v)))
end

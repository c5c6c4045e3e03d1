-- cowdisk.lua: a copy-on-write snapshot as a block transform. Reads come
-- from a base device until a block is written; writes go to an overlay kept
-- in memory, so the base is never changed. Throw the overlay away (stop the
-- server) and the base is as it was: try a mkfs or an upgrade on a copy
-- that costs only the blocks it changes.
--
--   usbd-lua examples/cowdisk.lua -U /tmp/cow.sock base=devices/filedisk.lua path=disk.img
--
--   base=SCRIPT   the device underneath (default devices/ramdisk.lua), opened
--                 with the same arguments; it is only ever read
local usbd = require "usbd"

local BLOCK = 4096

local Cowdisk = {}
Cowdisk.__index = Cowdisk

local function open(args)
    local base = dofile(args.base or "devices/ramdisk.lua").open(args)
    return setmetatable({ base = base, blocks = {} }, Cowdisk)
end

function Cowdisk:size() return self.base:size() end
function Cowdisk:block_size() return BLOCK end

-- Visit the blocks [pos, pos+len) touches: fn(block number, offset in the
-- block, offset in the request, length).
local function each_block(pos, len, fn)
    local done = 0
    while done < len do
        local n, at = math.floor((pos + done) / BLOCK), (pos + done) % BLOCK
        local take = math.min(BLOCK - at, len - done)
        fn(n, at, done, take)
        done = done + take
    end
end

function Cowdisk:read_at(buf, pos)
    each_block(pos, buf.len, function(n, at, done, take)
        local block = self.blocks[n]
        if block then
            buf:sub(done, take):copy_from(block:sub(at, take))
        else
            self.base:read_at(buf:sub(done, take), pos + done)
        end
    end)
end

-- The first write to a block copies it from the base; then it is ours.
-- Reading the base may wait (a filedisk base does), and while this request
-- waits others run: one may have copied the same block meanwhile, for a
-- write to another part of it. Keep its copy, which has that write.
function Cowdisk:write_at(buf, pos)
    each_block(pos, buf.len, function(n, at, done, take)
        local block = self.blocks[n]
        if not block then
            local copy = usbd.buffer(math.min(BLOCK, self:size() - n * BLOCK))
            self.base:read_at(copy, n * BLOCK)
            block = self.blocks[n] or copy
            self.blocks[n] = block
        end
        block:copy_from(buf:sub(done, take), at)
    end)
end

-- Nothing to flush or close: the overlay lives and dies with the server.

return { open = open }

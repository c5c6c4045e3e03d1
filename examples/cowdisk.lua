-- cowdisk.lua: a copy-on-write snapshot as a block transform. Reads come
-- from the device below until a block is written; writes go to an overlay
-- file, so the device below is never changed. Stop the server and the base
-- is as it was: try a mkfs or an upgrade on a copy that costs only the
-- blocks it changes.
--
--   usbd-lua -U /tmp/cow.sock cowdisk -- filedisk path=disk.img
--   usbd-lua -U /tmp/cow.sock cowdisk overlay=/var/tmp/changes.img -- filedisk path=disk.img
--
--   overlay=FILE  where changed blocks go: a sparse file as large as the
--                 device, holding each changed block at its own offset
--                 (default: a temporary file, deleted at once, so it goes
--                 away with the server). Memory holds only a bitmap: one
--                 bit per 4 KiB block, 32 KiB per GiB of device.
--
-- Trim and write_zeroes punch holes in the overlay (the storage goes back)
-- and mark the blocks as the overlay's: they read as zeroes, whatever the
-- base holds. The base's extents would not describe the overlay's blocks,
-- so none are offered.
local usbd = require "usbd"

local BLOCK = 4096

local Cowdisk = usbd.transform { adds = { "write_at", "trim", "write_zeroes", "flush" } }
Cowdisk.extents = false

local function open(args, base)
    local size = base:size()
    local path, temporary = args.overlay, false
    if not path then
        path, temporary = os.tmpname(), true
    end
    local overlay = usbd.file.open(path, { create = true, size = size })
    if temporary then os.remove(path) end  -- the open file lives on, unnamed
    if overlay:size() ~= size then
        overlay:close()
        error(("overlay=%s holds %d bytes, the device below %d: give a new file"):format(path, overlay:size(), size), 0)
    end
    local nblocks = math.ceil(size / BLOCK)
    return Cowdisk:wrap(base, {
        overlay = overlay, bytes = size,
        bits = usbd.buffer(math.ceil(nblocks / 8)),  -- 1: the block is the overlay's
        copying = usbd.lock(),
    })
end

function Cowdisk:size() return self.bytes end
function Cowdisk:block_size() return BLOCK end

function Cowdisk:ours(n)
    return bit.band(self.bits.ptr[bit.rshift(n, 3)], bit.lshift(1, bit.band(n, 7))) ~= 0
end

function Cowdisk:mark(first, last)  -- blocks first..last are the overlay's
    for n = first, last do
        local i = bit.rshift(n, 3)
        self.bits.ptr[i] = bit.bor(self.bits.ptr[i], bit.lshift(1, bit.band(n, 7)))
    end
end

-- Reads: each run of blocks from where it lives.
function Cowdisk:read_at(buf, pos)
    local done, len = 0, buf.len
    while done < len do
        local at = pos + done
        local n = math.floor(at / BLOCK)
        local mine = self:ours(n)
        local stop = math.min(len, (n + 1) * BLOCK - pos)
        while stop < len and self:ours(math.floor((pos + stop) / BLOCK)) == mine do
            stop = math.min(len, stop + BLOCK)
        end
        local part = buf:sub(done, stop - done)
        if mine then self.overlay:pread(part, at) else self.base:read_at(part, at) end
        done = stop
    end
end

-- Block n into the overlay, once. Reading the base waits, and meanwhile
-- other requests run: one may be copying the same block for a write to
-- another part of it. The lock makes the second wait for the first's copy
-- (which then holds the first's write) instead of copying over it.
function Cowdisk:copy_up(n)
    if self:ours(n) then return end
    self.copying:run(n, function()
        if self:ours(n) then return end
        local len = math.min(BLOCK, self.bytes - n * BLOCK)
        local s = usbd.scratch.get(len)
        local block = s:sub(0, len)
        self.base:read_at(block, n * BLOCK)
        self.overlay:pwrite(block, n * BLOCK)
        usbd.scratch.put(s)
        self:mark(n, n)
    end)
end

-- The blocks a range only partly covers are copied up first; then the
-- whole range is the overlay's.
function Cowdisk:cover(pos, len)
    local first, last = math.floor(pos / BLOCK), math.floor((pos + len - 1) / BLOCK)
    if pos % BLOCK ~= 0 then self:copy_up(first) end
    if (pos + len) % BLOCK ~= 0 and (pos + len) ~= self.bytes then self:copy_up(last) end
    return first, last
end

function Cowdisk:write_at(buf, pos)
    local first, last = self:cover(pos, buf.len)
    self.overlay:pwrite(buf, pos)
    self:mark(first, last)
end

function Cowdisk:trim(pos, count)
    local first, last = self:cover(pos, count)
    self.overlay:punch_hole(pos, count)
    self:mark(first, last)
end
Cowdisk.write_zeroes = Cowdisk.trim

-- What was written is in the overlay.
function Cowdisk:flush()
    self.overlay:sync()
end

-- The base's close follows (usbd.transform).
function Cowdisk:close()
    self.overlay:close()
end

return {
    open = open,
    transform = true,
    params = { overlay = "the file changed blocks go to (default: a temporary one)" },
}

-- filedisk.lua: a block device stored in a file (or on a block device).
-- The device to read after ramdisk.lua: the same methods, with the bytes in
-- a file, and requests that wait for the disk without holding up the others.
--
--   usbd-lua devices/filedisk.lua -U /tmp/disk.sock path=disk.img size=10G
--   usbd-lua devices/filedisk.lua /dev/nbd0 path=disk.img direct=true
--
--   path=FILE     where the bytes live. Created if absent, sparse: a new
--                 10G disk takes no space until it is written.
--   size=SIZE     the disk's size: needed to create the file. For a file
--                 that exists, its own size unless given; a larger size
--                 grows it (a smaller one is refused, to lose nothing).
--                 The file may grow while served: SIGHUP to the server
--                 serves its new size (docs/operations.md, "Resizing").
--   direct=true   O_DIRECT: reads and writes bypass the page cache and go
--                 to the disk, like a real block device's.
--
-- Every method below is one call on a usbd.file. Inside a request such a
-- call runs on a worker thread while this request waits; the server goes on
-- with the others, so a client with 16 requests in flight has 16 disk
-- operations in flight. Data moves straight between the file and the
-- request's buffer; and a read whose bytes are all in the page cache is
-- not copied at all before the server sends it (usbd.file's map).
local usbd = require "usbd"

local Filedisk = {}
Filedisk.__index = Filedisk

local function open(args)
    local path = args.path
    if not path or path == "" then
        error("filedisk needs path=FILE (and size=SIZE to create it)", 0)
    end
    local size = usbd.size_arg(args, "size")
    if not size and not usbd.exists(path) then
        error(path .. " does not exist: give size=SIZE to create it", 0)
    end
    local direct = usbd.parse_bool(args, "direct")
    -- Runs before serving starts, outside any request: each call is done
    -- on the spot.
    local file = usbd.file.open(path, { create = size ~= nil, size = size, direct = direct })
    local bytes = file:size()
    if size and bytes > size then
        file:close()
        error(("%s holds %d bytes, more than size=%s: leave size= out to serve all of it")
            :format(path, bytes, args.size), 0)
    end
    -- Without direct, reads lend the page cache to the reply (where the
    -- file can be mapped). A reply still waiting to be sent then carries
    -- what the file holds when it goes: a write answered meanwhile may be
    -- in it, as it may be in any read that overlaps a write in flight.
    local map = not direct and file:map_or_nil() or nil
    -- O_DIRECT moves whole 4096-byte blocks; clients that keep to them
    -- skip a trip through the page cache (usbd.file still serves any
    -- alignment). The page cache prefers pages too, when the size allows.
    local block = (direct or bytes % 4096 == 0) and 4096 or 512
    return setmetatable({ file = file, map = map, block = block, direct = direct }, Filedisk)
end

-- The file's size now: grow the file (truncate -s, lvextend) and send the
-- server SIGHUP, and the disk grows with it.
function Filedisk:size()
    return self.file:size()
end

function Filedisk:block_size()
    return self.block
end

-- Reads fill all of buf: the file's bytes, lent to the reply from the
-- page cache when they are all there, else read into the reply itself.
-- A transform above may give a step (after: a cipher's decryption) to run
-- over the bytes in the same job as the read (usbd.transform's
-- read_below); then cached bytes go through the step straight from the
-- page cache into buf.
Filedisk.takes_steps = true
function Filedisk:read_at(buf, pos, after)
    if after then
        if self.map and self.map:read_step(buf, pos, after) then return end
        return self.file:pread(buf, pos, after)
    end
    if self.map and self.map:lend(buf, 0, pos, buf.len) then return end
    self.file:pread(buf, pos)
end

-- Writes store all of buf, straight from the request's payload (or what
-- a transform's step before makes of it). The reply goes once the write
-- has reached the file.
function Filedisk:write_at(buf, pos, before)
    self.file:pwrite(buf, pos, before)
end

-- Trim gives the storage back: a hole reads as zeroes.
function Filedisk:trim(pos, count)
    self.file:punch_hole(pos, count)
end

-- Zeroes without sending them: fallocate's zero range.
function Filedisk:write_zeroes(pos, count)
    self.file:zero_range(pos, count)
end

-- Which ranges hold data and which are holes (never written, or trimmed):
-- the file system knows, and clients such as nbdcopy and qemu-img skip the
-- holes. Holes read as zeroes; a file system that cannot tell says data.
function Filedisk:extents(pos, count)
    return self.file:extents(pos, count)
end

-- Flush makes every write already answered durable: fdatasync runs after
-- their writes have returned. (Writes still in flight need not be covered;
-- FUA is a write followed by this, which the server does.)
function Filedisk:flush()
    self.file:sync()
end

-- The server flushes before it closes; closing lets go of the file.
function Filedisk:close()
    if self.map then self.map:close() end
    self.file:close()
end

return {
    open = open,
    params = { path = "the file", size = "the disk's size", direct = "O_DIRECT (true/false)" },
}

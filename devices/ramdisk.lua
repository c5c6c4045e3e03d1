-- ramdisk.lua: a block device kept in memory. The smallest complete device,
-- and the one to read first when writing your own.
--
--   usbd-lua devices/ramdisk.lua -U /tmp/ram.sock size=1G
--
-- A device script returns a table with open(args). open receives the
-- KEY=VALUE arguments of the command line as strings and returns the device
-- object, whose methods the server calls for each request.
local usbd = require "usbd"

local Ramdisk = {}
Ramdisk.__index = Ramdisk

local function open(args)
    local size = usbd.size_arg(args, "size", "1G")
    return setmetatable({
        -- Sparse memory: a range takes memory only once written, and gives
        -- it back when discarded; reading unwritten ranges costs nothing.
        store = usbd.sparse(size),
    }, Ramdisk)
end

-- Required: the size in bytes.
function Ramdisk:size()
    return self.store:size()
end

-- Optional (default 512): the block size clients should prefer.
function Ramdisk:block_size()
    return 4096
end

-- Required: fill all of buf with the bytes at pos. buf is a view of the
-- reply the client will receive; the server has already checked that
-- pos + buf.len is inside the device.
function Ramdisk:read_at(buf, pos)
    self.store:read(buf, pos)
end

-- Optional (without it the device is read-only): store all of buf at pos.
function Ramdisk:write_at(buf, pos)
    self.store:write(buf, pos)
end

-- Optional (without it clients cannot discard): forget count bytes at pos.
-- Reads of a trimmed range must return zeroes; the memory goes back.
function Ramdisk:trim(pos, count)
    self.store:discard(pos, count)
end

-- Optional (without it the server writes zeroes through write_at).
function Ramdisk:write_zeroes(pos, count)
    self.store:discard(pos, count)
end

-- Optional (without it the whole device is reported as data): what
-- [pos, pos+count) holds, as runs { len1, flags1, len2, flags2, ... }
-- from pos. Never-written and discarded runs are usbd.HOLE + usbd.ZERO,
-- the rest 0 (data). The runs may stop short of count.
function Ramdisk:extents(pos, count)
    return self.store:extents(pos, count)
end

-- Optional: figures printed with the server's statistics (SIGUSR1, exit).
function Ramdisk:stats()
    local s = self.store:stats()
    return { allocated_bytes = s.allocated, pooled_bytes = s.pooled }
end

-- A ramdisk has nothing to flush, and close has nothing to release that the
-- garbage collector will not: both are left out. To fail a request, raise an
-- errno error, e.g. error(usbd.E.NOSPC); any other error reaches the client
-- as EIO and is logged with its traceback.

-- params: the keys open takes; any other is refused, naming it.
return { open = open, params = { size = "the disk's size (default 1G)" } }

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
    local size = usbd.parse_size(args.size or "1G")
    return setmetatable({
        -- Zeroed memory that costs nothing until written: a 1G ramdisk
        -- uses only what has been stored in it.
        store = usbd.buffer(size),
    }, Ramdisk)
end

-- Required: the size in bytes.
function Ramdisk:size()
    return self.store.len
end

-- Optional (default 512): the block size clients should prefer.
function Ramdisk:block_size()
    return 4096
end

-- Required: fill all of buf with the bytes at pos. buf is a view of the
-- reply the client will receive; the server has already checked that
-- pos + buf.len is inside the device.
function Ramdisk:read_at(buf, pos)
    buf:copy_from(self.store:sub(pos, buf.len))
end

-- Optional (without it the device is read-only): store all of buf at pos.
function Ramdisk:write_at(buf, pos)
    self.store:copy_from(buf, pos)
end

-- Optional (without it clients cannot discard): forget count bytes at pos.
-- Reads of a trimmed range must return zeroes; discard gives whole pages
-- back to the system.
function Ramdisk:trim(pos, count)
    self.store:sub(pos, count):discard()
end

-- Optional (without it the server writes zeroes through write_at).
function Ramdisk:write_zeroes(pos, count)
    self.store:sub(pos, count):discard()
end

-- A ramdisk has nothing to flush, and close has nothing to release that the
-- garbage collector will not: both are left out. To fail a request, raise an
-- errno error, e.g. error(usbd.E.NOSPC); any other error reaches the client
-- as EIO and is logged with its traceback.

-- params: the keys open takes; any other is refused, naming it.
return { open = open, params = { size = "the disk's size (default 1G)" } }

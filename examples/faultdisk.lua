-- faultdisk.lua: fault injection as a block transform. Wraps another device
-- and fails chosen ranges, to see how a filesystem or a client copes.
--
--   usbd-lua examples/faultdisk.lua -U /tmp/f.sock size=64M bad=1M-2M full=60M-64M
--
--   base=SCRIPT   the device underneath (default devices/ramdisk.lua); the
--                 other arguments are handed on to it
--   bad=A-B       reads touching [A, B) fail with a Lua error: the client
--                 sees EIO, the error and its traceback go to the log
--   full=A-B      writes touching [A, B) fail with ENOSPC
local usbd = require "usbd"

local Faultdisk = {}
Faultdisk.__index = Faultdisk

local function range(spec)
    if not spec then return nil end
    local a, b = spec:match("^([^-]+)-([^-]+)$")
    if not a then error("a range looks like 1M-2M, got '" .. spec .. "'") end
    return { first = usbd.parse_size(a), last = usbd.parse_size(b) }
end

local function touches(r, pos, len)
    return r ~= nil and pos < r.last and pos + len > r.first
end

local function open(args)
    local base = dofile(args.base or "devices/ramdisk.lua").open(args)
    return setmetatable({ base = base, bad = range(args.bad), full = range(args.full) }, Faultdisk)
end

function Faultdisk:size() return self.base:size() end

function Faultdisk:read_at(buf, pos)
    if touches(self.bad, pos, buf.len) then
        error(("injected read fault at %d"):format(pos))
    end
    self.base:read_at(buf, pos)
end

function Faultdisk:write_at(buf, pos)
    if touches(self.full, pos, buf.len) then
        error(usbd.E.NOSPC)
    end
    self.base:write_at(buf, pos)
end

return { open = open }

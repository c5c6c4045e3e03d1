-- slowdisk.lua: latency as a block transform. Wraps another device and
-- makes every read and write wait first, the way a disk across a network
-- would, to watch requests overlap: the wait runs off the Lua thread
-- (usbd.jobs.sleep), so a client with 16 requests in flight waits once, not
-- 16 times.
--
--   usbd-lua -v examples/slowdisk.lua -U /tmp/s.sock size=64M latency=20
--
--   base=SCRIPT   the device underneath (default devices/ramdisk.lua); the
--                 other arguments are handed on to it
--   latency=MS    milliseconds each read and write waits (default 10)
--
-- At close it logs (with -v) how many waits ran at once at most.
local usbd = require "usbd"

local Slowdisk = {}
Slowdisk.__index = Slowdisk

local function open(args)
    local base = dofile(args.base or "devices/ramdisk.lua").open(args)
    local latency = tonumber(args.latency or "10")
    if not latency or latency < 0 then
        error("latency=MS wants milliseconds, got " .. tostring(args.latency), 0)
    end
    usbd.jobs.stats(true)  -- count from here
    return setmetatable({ base = base, latency = latency / 1000 }, Slowdisk)
end

function Slowdisk:size() return self.base:size() end
function Slowdisk:block_size() return self.base.block_size and self.base:block_size() or 512 end

-- This request sleeps; the server goes on with the others meanwhile.
function Slowdisk:read_at(buf, pos)
    usbd.jobs.sleep(self.latency)
    self.base:read_at(buf, pos)
end

function Slowdisk:write_at(buf, pos)
    usbd.jobs.sleep(self.latency)
    self.base:write_at(buf, pos)
end

function Slowdisk:close()
    local s = usbd.jobs.stats()
    usbd.log(1, "slowdisk: %d waits, at most %d at once", s.finished, s.peak)
    if self.base.close then self.base:close() end
end

return { open = open }

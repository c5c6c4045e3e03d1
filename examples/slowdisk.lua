-- slowdisk.lua: latency as a block transform. Every request waits first,
-- the way a disk across a network would, to watch requests overlap: the
-- wait runs off the Lua thread (usbd.jobs.sleep), so a client with 16
-- requests in flight waits once, not 16 times. Everything else - flush,
-- trim, close - is the device below's (usbd.transform passes it through).
--
--   usbd-lua -v -U /tmp/s.sock slowdisk latency=20 -- ramdisk size=64M
--
--   latency=MS    milliseconds each read and write waits (default 10)
--   all=true      trims, zeroes and flushes wait too (default: only reads
--                 and writes)
--
-- At close it logs (with -v) how many waits ran at once at most.
local usbd = require "usbd"

local Slowdisk = usbd.transform()
Slowdisk.lends = true  -- its read_at only passes buf down: reads may lend the page cache

local function open(args, base)
    local latency = tonumber(args.latency or "10")
    if not latency or latency < 0 then
        error("latency=MS wants milliseconds, got " .. tostring(args.latency), 0)
    end
    if args.all and args.all ~= "true" and args.all ~= "false" then
        error("all=true or all=false, got " .. args.all, 0)
    end
    usbd.jobs.stats(true)  -- count from here
    return Slowdisk:wrap(base, { latency = latency / 1000, all = usbd.parse_bool(args, "all") })
end

-- This request sleeps; the server goes on with the others meanwhile.
function Slowdisk:read_at(buf, pos)
    usbd.jobs.sleep(self.latency)
    self.base:read_at(buf, pos)
end

function Slowdisk:write_at(buf, pos)
    usbd.jobs.sleep(self.latency)
    self.base:write_at(buf, pos)
end

function Slowdisk:trim(pos, count)
    if self.all then usbd.jobs.sleep(self.latency) end
    self.base:trim(pos, count)
end

function Slowdisk:write_zeroes(pos, count)
    if self.all then usbd.jobs.sleep(self.latency) end
    self.base:write_zeroes(pos, count)
end

function Slowdisk:flush()
    if self.all then usbd.jobs.sleep(self.latency) end
    self.base:flush()
end

-- The base's close follows (usbd.transform).
function Slowdisk:close()
    local s = usbd.jobs.stats()
    usbd.log(1, "slowdisk: %d waits, at most %d at once", s.finished, s.peak)
end

return {
    open = open,
    transform = true,
    params = { latency = "milliseconds per read and write (default 10)", all = "trims, zeroes, flushes wait too" },
}

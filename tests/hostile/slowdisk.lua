-- slowdisk.lua: a ramdisk whose every request first waits delay seconds
-- (default 1) off the Lua thread, as a slow disk or a remote store would.
-- tests/hostile/run.sh serves it to see what the server does with a client
-- that vanishes while requests are still with the device.
local usbd = require "usbd"
local jobs = require "usbd.jobs"
local ramdisk = dofile((debug.getinfo(1, "S").source:sub(2):gsub("tests/hostile/slowdisk.lua$", "devices/ramdisk.lua")))

local function open(args)
    local dev = ramdisk.open(args)
    local delay = tonumber(args.delay or "1")
    for _, m in ipairs { "read_at", "write_at", "trim", "write_zeroes" } do
        local f = dev[m]
        dev[m] = function(self, ...)
            jobs.sleep(delay)
            return f(self, ...)
        end
    end
    return dev
end

return { open = open }

-- Calls a device the way the server does, for specs: read/write strings.
local usbd = require "usbd"
local M = {}

function M.open(script, args)
    return dofile(script).open(args or {})
end

function M.write(dev, pos, s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    dev:write_at(b, pos)
end

function M.read(dev, pos, n)
    local b = usbd.buffer(n)
    b:fill(0xee)  -- a device must fill all of it
    dev:read_at(b, pos)
    return b:tostring()
end

return M

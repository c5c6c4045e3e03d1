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

-- Each of calls (name -> function) fails, with an error that matches
-- pattern: what a closed object of a service does.
function M.all_fail(calls, pattern)
    local assert = require "luassert"
    for name, call in pairs(calls) do
        local ok, err = pcall(call)
        assert.is_false(ok, name)
        assert.matches(pattern, tostring(err), nil, false, name)
    end
end

-- A scratch folder beside the build (a real file system: O_DIRECT does not
-- work on tmpfs, and /tmp may be one): its path, and a function giving a
-- new path in it on each call (name .. n .. suffix).
function M.scratch(name, suffix)
    local dir = ("build/spec-%s.%d.%d"):format(name, os.time(), math.random(1e6))
    os.execute("mkdir -p " .. dir)
    local n = 0
    return dir, function()
        n = n + 1
        return ("%s/%s%d%s"):format(dir, name, n, suffix or "")
    end
end

return M

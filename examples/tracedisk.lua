-- tracedisk.lua: a request tracer as a block transform. Each request that
-- reaches it becomes one line in a file: when it started (seconds since
-- open), what it was, where, how long, how it ended. Everything passes
-- through to the device below, errors included.
--
--   usbd-lua -U /tmp/t.sock tracedisk out=/tmp/trace.log -- filedisk path=disk.img
--
--   out=FILE      where the lines go (default: stderr)
--
--   # start     op     offset    length  result  usec
--   0.001234    read   0         4096    ok      21.5
--   0.001301    write  1048576   65536   ENOSPC  3.2
--
-- (usbd-lua --trace FILE traces at the server, with the connection and the
-- flags; this one traces one layer of a stack, e.g. what a cache below
-- asks of the disk.)
local usbd = require "usbd"

local Tracedisk = usbd.transform()
Tracedisk.lends = true  -- its read_at only passes buf down: reads may lend the page cache

local now = usbd.now  -- seconds on a monotonic clock

local function open(args, base)
    local out = io.stderr
    if args.out and args.out ~= "-" then
        local f, err = io.open(args.out, "w")
        if not f then error("out=: " .. err, 0) end
        out = f
    end
    out:write("# start     op     offset    length  result  usec\n")
    return Tracedisk:wrap(base, { out = out, t0 = now() })
end

-- Run the base's method, write the line, pass on its error if any.
local function traced(self, op, pos, len, method, ...)
    local start = now()
    local ok, err = xpcall(method, usbd.keep_trace, self.base, ...)
    local done = now()
    local result = ok and "ok" or (usbd.errno_of(err) and tostring(err) or "error")
    self.out:write(("%.6f  %-6s %-9d %-7d %-7s %.1f\n"):format(start - self.t0, op, pos, len,
        result, (done - start) * 1e6))
    if not ok then error(err, 0) end
end

function Tracedisk:read_at(buf, pos) traced(self, "read", pos, buf.len, self.base.read_at, buf, pos) end
function Tracedisk:write_at(buf, pos) traced(self, "write", pos, buf.len, self.base.write_at, buf, pos) end
function Tracedisk:trim(pos, count) traced(self, "trim", pos, count, self.base.trim, pos, count) end
function Tracedisk:write_zeroes(pos, count) traced(self, "zero", pos, count, self.base.write_zeroes, pos, count) end
function Tracedisk:flush()
    traced(self, "flush", 0, 0, self.base.flush)
    self.out:flush()
end

-- The base's close follows (usbd.transform).
function Tracedisk:close()
    if self.out ~= io.stderr then self.out:close() else self.out:flush() end
end

return {
    open = open,
    transform = true,
    params = { out = "the trace file (default: stderr)" },
}

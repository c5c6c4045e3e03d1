-- countdisk.lua: a test device that counts what it serves, for tests that
-- must prove what a client asked for (bytes read, one request or two).
--
--   size=SIZE       the disk (default 1G)
--   data=A-B        the range that holds data, in memory (default none):
--                   reads elsewhere are zeroes, writes elsewhere ENOSPC
--   count=FILE      on close, the counts go there, "name value" a line:
--                   reads, read_bytes, max_read, writes, write_bytes,
--                   max_write, extents (calls)
--   extents=MODE    exact (default): data=A-B is data, the rest a hole;
--                   none: no extents() method at all; split: the same runs
--                   cut in 4 KiB pieces (the server merges them);
--                   fragmented: 512 bytes data, 512 hole, and so on;
--                   errno: raises usbd.E.NOSPC; garbage: returns nonsense
-- No flush(): nothing it holds is volatile.
local usbd = require "usbd"

local Countdisk = {}
Countdisk.__index = Countdisk

local function open(args)
    local size = usbd.size_arg(args, "size", "1G")
    local from, to = 0, 0
    if args.data then
        local a, b = args.data:match("^(%w+)-(%w+)$")
        if not a then error("data=A-B, like data=512M-513M", 0) end
        from, to = usbd.parse_size(a), usbd.parse_size(b)
    end
    local self = setmetatable({
        bytes = size, from = from, to = to,
        mem = to > from and usbd.buffer(to - from) or nil,
        count_path = args.count, mode = args.extents or "exact",
        counts = { reads = 0, read_bytes = 0, max_read = 0, writes = 0, write_bytes = 0,
                   max_write = 0, extents = 0 },
    }, Countdisk)
    if self.mode == "none" then
        -- The same device, without the method.
        local plain = {}
        for k, v in pairs(Countdisk) do plain[k] = v end
        plain.extents, plain.__index = nil, plain
        setmetatable(self, plain)
    end
    return self
end

function Countdisk:size()
    return self.bytes
end

-- The part of [pos, pos+len) inside the data range, as offsets.
function Countdisk:overlap(pos, len)
    local lo, hi = math.max(pos, self.from), math.min(pos + len, self.to)
    if lo < hi then return lo, hi end
end

function Countdisk:read_at(buf, pos)
    local c = self.counts
    c.reads, c.read_bytes, c.max_read = c.reads + 1, c.read_bytes + buf.len, math.max(c.max_read, buf.len)
    buf:fill(0)
    local lo, hi = self:overlap(pos, buf.len)
    if lo then
        buf:sub(lo - pos, hi - lo):copy_from(self.mem:sub(lo - self.from, hi - lo))
    end
end

function Countdisk:write_at(buf, pos)
    local c = self.counts
    c.writes, c.write_bytes, c.max_write = c.writes + 1, c.write_bytes + buf.len, math.max(c.max_write, buf.len)
    if pos < self.from or pos + buf.len > self.to then
        error(usbd.E.NOSPC)
    end
    self.mem:copy_from(buf, pos - self.from)
end

local HZ = usbd.HOLE + usbd.ZERO

-- Runs of [pos, pos+count): a hole, the data range, a hole.
function Countdisk:runs(pos, count)
    local runs, at, stop = {}, pos, pos + count
    local function add(to, flags)
        if to > at then
            runs[#runs + 1], runs[#runs + 2] = to - at, flags
            at = to
        end
    end
    if self.to > self.from then
        add(math.min(math.max(self.from, at), stop), HZ)
        add(math.min(math.max(self.to, at), stop), 0)
    end
    add(stop, HZ)
    return runs
end

function Countdisk:extents(pos, count)
    self.counts.extents = self.counts.extents + 1
    local mode = self.mode
    if mode == "errno" then error(usbd.E.NOSPC) end
    if mode == "garbage" then return { 0, 9 } end
    if mode == "fragmented" then
        local runs = {}
        for i = 0, math.ceil(count / 512) - 1 do
            runs[2 * i + 1], runs[2 * i + 2] = 512, (i % 2 == 0) and 0 or HZ
        end
        return runs
    end
    local runs = self:runs(pos, count)
    if mode == "split" then
        local pieces = {}
        for i = 1, #runs, 2 do
            local left = runs[i]
            while left > 0 do
                local piece = math.min(left, 4096)
                pieces[#pieces + 1], pieces[#pieces + 2] = piece, runs[i + 1]
                left = left - piece
            end
        end
        runs = pieces
    end
    return runs
end

function Countdisk:close()
    if not self.count_path then return end
    local f = assert(io.open(self.count_path, "w"))
    for _, k in ipairs { "reads", "read_bytes", "max_read", "writes", "write_bytes", "max_write", "extents" } do
        f:write(k, " ", tostring(self.counts[k]), "\n")
    end
    f:close()
end

return { open = open }

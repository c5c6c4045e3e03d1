-- stripe.lua: RAID-0 over two or more devices: the disk is cut into
-- chunks dealt to the devices in turn, so a request that spans several
-- chunks runs on several devices at once.
--
--   usbd-lua -U /tmp/s.sock stripe chunk=512K [ filedisk path=a.img size=5G ] [ filedisk path=b.img size=5G ]
--
--   chunk=SIZE  the bytes each device takes in turn: a power of two, at
--               least the largest block size below (default 512K, as
--               mdadm's)
--
-- The size is the smallest device's, to whole chunks, times their number.
-- No redundancy: a device that fails takes every chunk on it.
local usbd = require "usbd"

local Stripe = usbd.transform()
Stripe.lends = true  -- read_at passes the buffer down, untouched

local function open(args, legs)
    local chunk = usbd.size_arg(args, "chunk", "512K")
    local m = Stripe:wrap(legs, { chunk = chunk })
    if chunk < m:block_size() or bit.band(chunk, chunk - 1) ~= 0 then
        error(("chunk=%s: a power of two of at least %d bytes (the block size below)")
            :format(args.chunk, m:block_size()), 0)
    end
    local smallest = math.huge
    for _, leg in ipairs(legs) do smallest = math.min(smallest, leg:size()) end
    m.per_leg = smallest - smallest % chunk
    return m
end

function Stripe:size()
    return self.per_leg * #self.bases
end

-- call(leg, leg_pos, offset, len) for each chunk piece of [pos, pos+len),
-- all at once; offset is the piece's place within the request.
local function pieces(self, pos, len, call)
    local calls, n = {}, #self.bases
    local offset = 0
    while offset < len do
        local at = pos + offset
        local c = math.floor(at / self.chunk)
        local within = at - c * self.chunk
        local piece = math.min(self.chunk - within, len - offset)
        local leg = self.bases[c % n + 1]
        local leg_pos = math.floor(c / n) * self.chunk + within
        local o = offset
        calls[#calls + 1] = function() call(leg, leg_pos, o, piece) end
        offset = offset + piece
    end
    usbd.all(calls)
end

function Stripe:read_at(buf, pos)
    if buf.len <= self.chunk - pos % self.chunk then  -- one chunk: the buffer as it is
        local c = math.floor(pos / self.chunk)
        local n = #self.bases
        return self.bases[c % n + 1]:read_at(buf, math.floor(c / n) * self.chunk + pos % self.chunk)
    end
    pieces(self, pos, buf.len, function(leg, at, o, len) leg:read_at(buf:sub(o, len), at) end)
end

function Stripe:write_at(buf, pos)
    pieces(self, pos, buf.len, function(leg, at, o, len) leg:write_at(buf:sub(o, len), at) end)
end

function Stripe:trim(pos, count)
    pieces(self, pos, count, function(leg, at, _, len) leg:trim(at, len) end)
end

function Stripe:write_zeroes(pos, count)
    pieces(self, pos, count, function(leg, at, _, len) leg:write_zeroes(at, len) end)
end

return {
    open = open,
    bases = { min = 2 },
    params = { chunk = "the bytes each device takes in turn (default 512K)" },
}

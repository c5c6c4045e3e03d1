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

-- fn(leg, leg_pos, offset, len, arg) for the piece of [pos, pos+len) on
-- each leg, all at once (usbd.pieces).
local function pieces(self, pos, len, fn, arg)
    local n, chunk = #self.bases, self.chunk
    local c = math.floor(pos / chunk)
    local within = pos - c * chunk
    if len <= chunk - within then  -- the common case: one chunk
        return fn(self.bases[c % n + 1], math.floor(c / n) * chunk + within, 0, len, arg)
    end
    local list, offset = {}, 0
    while offset < len do
        local at = pos + offset
        c = math.floor(at / chunk)
        within = at - c * chunk
        local piece = math.min(chunk - within, len - offset)
        list[#list + 1] = { self.bases[c % n + 1], math.floor(c / n) * chunk + within, offset, piece }
        offset = offset + piece
    end
    usbd.pieces.run(list, fn, arg)
end

local P = usbd.pieces
function Stripe:read_at(buf, pos) pieces(self, pos, buf.len, P.read, buf) end
function Stripe:write_at(buf, pos) pieces(self, pos, buf.len, P.write, buf) end
function Stripe:trim(pos, count) pieces(self, pos, count, P.trim) end
function Stripe:write_zeroes(pos, count) pieces(self, pos, count, P.write_zeroes) end

return {
    open = open,
    bases = { min = 2 },
    params = { chunk = "the bytes each device takes in turn (default 512K)" },
}

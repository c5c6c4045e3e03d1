-- concat.lua: devices end to end (a linear volume): the first device's
-- bytes, then the second's, and so on; their sizes may differ.
--
--   usbd-lua -U /tmp/c.sock concat [ filedisk path=a.img size=1G ] [ filedisk path=b.img size=3G ]
--
-- A request across a boundary goes to both devices at once. Each device
-- should hold whole blocks of the largest block size below, so that no
-- block straddles two devices.
local usbd = require "usbd"

local Concat = usbd.transform()
Concat.lends = true  -- read_at passes the buffer down, untouched

local function open(_, parts)
    local c = Concat:wrap(parts, { starts = {}, sizes = {}, total = 0 })
    local block = c:block_size()
    for i, part in ipairs(parts) do
        local size = part:size()
        if size % block ~= 0 then
            error(("device %d holds %d bytes, not whole %d-byte blocks: a block would straddle two devices")
                :format(i, size, block), 0)
        end
        c.starts[i], c.sizes[i] = c.total, size
        c.total = c.total + size
    end
    return c
end

function Concat:size()
    return self.total
end

-- The device holding byte pos: its index (binary search over the starts).
local function part_at(self, pos)
    local lo, hi = 1, #self.starts
    while lo < hi do
        local mid = math.floor((lo + hi + 1) / 2)
        if self.starts[mid] <= pos then lo = mid else hi = mid - 1 end
    end
    return lo
end

-- fn(part, part_pos, offset, len, arg) for the piece of [pos, pos+len) on
-- each device, all at once (usbd.pieces).
local function pieces(self, pos, len, fn, arg)
    local i = part_at(self, pos)
    local part = self.bases[i]
    local start = self.starts[i]
    if pos + len <= start + self.sizes[i] then  -- the common case: one device
        return fn(part, pos - start, 0, len, arg)
    end
    local list, offset = {}, 0
    while offset < len do
        part, start = self.bases[i], self.starts[i]
        local at = pos + offset
        local piece = math.min(start + self.sizes[i] - at, len - offset)
        list[#list + 1] = { part, at - start, offset, piece }
        offset = offset + piece
        i = i + 1
    end
    usbd.pieces.run(list, fn, arg)
end

local P = usbd.pieces
function Concat:read_at(buf, pos) pieces(self, pos, buf.len, P.read, buf) end
function Concat:write_at(buf, pos) pieces(self, pos, buf.len, P.write, buf) end
function Concat:trim(pos, count) pieces(self, pos, count, P.trim) end
function Concat:write_zeroes(pos, count) pieces(self, pos, count, P.write_zeroes) end

-- Each device's runs, one after the other; where a device answers for
-- less than its part, so does the concat (the client asks again).
function Concat:extents(pos, count)
    local out, i, done = {}, part_at(self, pos), 0
    while done < count and self.bases[i] do
        local part, start = self.bases[i], self.starts[i]
        local at = pos + done
        local len = math.min(start + self.sizes[i] - at, count - done)
        local runs, covered = part:extents(at - start, len), 0
        for k = 1, #runs, 2 do
            local n = math.min(runs[k], len - covered)
            out[#out + 1], out[#out + 2] = n, runs[k + 1]
            covered = covered + n
            if covered == len then break end
        end
        done = done + covered
        if covered < len then break end
        i = i + 1
    end
    return out
end

return {
    open = open,
    bases = { min = 1 },
    params = {},
}

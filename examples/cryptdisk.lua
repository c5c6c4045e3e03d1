-- cryptdisk.lua: encryption as a block transform, AES-256-XTS per sector
-- with the sector number as tweak: dm-crypt's aes-xts-plain64, through
-- OpenSSL (usbd.cipher). The device below holds only ciphertext.
--
--   head -c 64 /dev/urandom >disk.key
--   usbd-lua -U /tmp/c.sock cryptdisk keyfile=disk.key -- filedisk path=disk.img size=10G
--
--   keyfile=FILE  the key: 64 bytes, or 128 hex digits
--   key=HEX       the key as 128 hex digits (visible in ps: prefer keyfile)
--   sector=N      512 or 4096; default 4096 where the device below takes
--                 4 KiB blocks (as cryptsetup's LUKS2 chooses), else 512.
--                 4096 is twice as fast: XTS restarts at every sector.
--
-- The same image opens with dm-crypt: cryptsetup open --type plain
-- -c aes-xts-plain64 -s 512 --key-file disk.key [--sector-size 4096].
--
-- Trim. Storage trimmed below reads as zeroes, and zeroes decrypt to
-- noise: passed down as it is, a trim would make the range read as
-- garbage. usbd.cipher decrypts an all-zero sector to zeroes, so whole
-- sectors are trimmed below (the storage is given back) and read as
-- zeroes; the parts of sectors at a trim's ends are written as encrypted
-- zeroes. The price, as with dm-crypt's allow_discards: the device below
-- shows which sectors are unused.
--
-- write_at must leave buf as it was (the layer above may still use it), so
-- ciphertext goes to scratch memory (write_below sees to it); reads
-- decrypt in place.
local usbd = require "usbd"

local Cryptdisk = usbd.transform()

local function read_key(args)
    if args.key and args.keyfile then
        error("give key= or keyfile=, not both", 0)
    end
    local text = args.key
    if args.keyfile then
        local f, err = io.open(args.keyfile, "rb")
        if not f then error("keyfile: " .. err, 0) end
        text = f:read("*a")
        f:close()
        if #text == 64 then return text end  -- raw bytes
    end
    if not text then
        error("cryptdisk needs keyfile=FILE (64 bytes; head -c 64 /dev/urandom) or key=HEX", 0)
    end
    local key, why = usbd.cipher.hex_key(text)
    if not key then error((args.keyfile and "keyfile " or "key=") .. ": " .. why, 0) end
    return key
end

local function open(args, base)
    local below = base.block_size and base:block_size() or 512
    local sector = usbd.size_arg(args, "sector", (below >= 4096 and base:size() % 4096 == 0) and 4096 or 512)
    local ok, xts = pcall(usbd.cipher.xts, read_key(args), sector)
    if not ok then error(xts, 0) end
    if base:size() % sector ~= 0 then
        error(("the device below holds %d bytes, not whole %d-byte sectors"):format(base:size(), sector), 0)
    end
    return Cryptdisk:wrap(base, { xts = xts, sector = sector, rmw = usbd.lock() })
end

function Cryptdisk:block_size()
    local below = self.base.block_size and self.base:block_size() or 512
    return math.max(below, self.sector)
end

-- The whole sectors around [pos, pos+len).
local function sectors(self, pos, len)
    local first = pos - pos % self.sector
    local last = pos + len + (self.sector - (pos + len) % self.sector) % self.sector
    return first, last - first
end

-- Decryption is a step of the base's read and encryption one of its write
-- (read_below, write_below): over a filedisk each request is one job, the
-- I/O and the cipher together.
function Cryptdisk:read_at(buf, pos)
    local first, n = sectors(self, pos, buf.len)
    if first == pos and n == buf.len then
        return self:read_below(buf, pos, self.xts:decrypt_step(pos))
    end
    local s = usbd.scratch.get(n)
    local whole = s:sub(0, n)
    self:read_below(whole, first, self.xts:decrypt_step(first))
    buf:copy_from(whole:sub(pos - first, buf.len))
    usbd.scratch.put(s)
end

-- Sectors only partly written: read, decrypt, change, encrypt, write back,
-- one request at a time (two writes into one sector would undo each other
-- across the read's wait).
local function read_modify_write(self, buf, pos)
    local first, n = sectors(self, pos, buf.len)
    self.rmw:run("sectors", function()
        local s = usbd.scratch.get(n)
        local whole = s:sub(0, n)
        self:read_below(whole, first, self.xts:decrypt_step(first))
        whole:copy_from(buf, pos - first)
        self:write_below(whole, first, self.xts:encrypt_step(first))
        usbd.scratch.put(s)
    end)
end

function Cryptdisk:write_at(buf, pos)
    local first, n = sectors(self, pos, buf.len)
    if first ~= pos or n ~= buf.len then
        return read_modify_write(self, buf, pos)
    end
    self:write_below(buf, pos, self.xts:encrypt_step(pos))
end

-- Whole sectors go down as zeroes (method: the base's trim or
-- write_zeroes), which read back as zeroes; the ends of partial sectors are
-- written as encrypted zeroes.
local function zero(self, pos, count, method)
    local inner = pos + (self.sector - pos % self.sector) % self.sector
    local inner_end = (pos + count) - (pos + count) % self.sector
    if inner_end <= inner then
        return self:write_at(usbd.buffer(count), pos)
    end
    if inner > pos then self:write_at(usbd.buffer(inner - pos), pos) end
    self.base[method](self.base, inner, inner_end - inner)
    if pos + count > inner_end then self:write_at(usbd.buffer(pos + count - inner_end), inner_end) end
end

function Cryptdisk:trim(pos, count) zero(self, pos, count, "trim") end
function Cryptdisk:write_zeroes(pos, count) zero(self, pos, count, "write_zeroes") end

-- Runs below that read as zeroes (or holes) read as zeroes here too, but
-- only whole sectors: a run's partial sectors at either end are data.
function Cryptdisk:extents(pos, count)
    local below = self.base:extents(pos, count)
    local out, at = {}, pos
    for i = 1, #below, 2 do
        local len, flags = below[i], below[i + 1]
        local lo, hi = at, at + len
        if flags ~= 0 then
            local a = lo + (self.sector - lo % self.sector) % self.sector
            local b = hi - hi % self.sector
            if b > a then
                if a > lo then out[#out + 1] = a - lo; out[#out + 1] = 0 end
                out[#out + 1] = b - a; out[#out + 1] = flags
                if hi > b then out[#out + 1] = hi - b; out[#out + 1] = 0 end
            else
                out[#out + 1] = len; out[#out + 1] = 0
            end
        else
            out[#out + 1] = len; out[#out + 1] = 0
        end
        at = hi
    end
    return out
end

return {
    open = open,
    transform = true,
    params = {
        keyfile = "the key: 64 bytes, or 128 hex digits",
        key = "the key as 128 hex digits",
        sector = "512 or 4096 (default: 4096 over a device of 4K blocks)",
    },
}

-- nbdkit-ramdisk.lua: a RAM disk for nbdkit's Lua plugin, the baseline that
-- bench/run.sh sets usbd-lua's devices/ramdisk.lua against.
--
--   nbdkit lua bench/nbdkit-ramdisk.lua size=1G [blocksize=4k]
--
-- The disk is a table of Lua strings of blocksize bytes, indexed by block
-- number; a block never written is absent and reads as zeros.  Lua strings
-- are immutable, so a write that covers part of a block builds the block
-- anew from the old one's head and tail around the new bytes (one
-- concatenation, one allocation); a write that covers whole blocks stores
-- slices of the payload, or the payload itself when it is exactly one block.
-- A read inside one block is one string.sub (or the block itself); a read
-- across blocks is a table.concat of the pieces.  This is the ordinary way to
-- keep bytes in plain Lua, written to be fast, not to be beaten.
--
-- Block size: 4 KiB by default.  Measured on the bench's jobs, 64 KiB blocks
-- read and write 256 KiB sequentially about as fast (within this machine's
-- noise; perhaps 20% faster) but do 4 KiB random writes 3-4x slower (each
-- copies a whole 64 KiB block), so 4 KiB is the stronger baseline overall.
--
-- The plugin runs under nbdkit's lua plugin, which is hard-wired to the
-- serialize_all_requests thread model (see nbdkit-lua-plugin(3)).

local BS = 4096
local size = 1024 * 1024 * 1024

local sub, concat = string.sub, table.concat
local floor = math.floor
local zero_block

local blocks = {}

local function parse_size(s)
  local n, suffix = s:match("^%s*(%d+)%s*([kKmMgGtT]?)[iI]?[bB]?%s*$")
  if not n then error("size: cannot parse '" .. s .. "'") end
  local mult = ({ [""] = 1, k = 2^10, m = 2^20, g = 2^30, t = 2^40 })[suffix:lower()]
  return floor(tonumber(n) * mult)
end

function config(key, value)
  if key == "size" then
    size = parse_size(value)
  elseif key == "blocksize" then
    BS = parse_size(value)
  else
    error("unknown parameter '" .. key .. "' (size=SIZE, blocksize=SIZE)")
  end
end

function config_complete()
  zero_block = string.rep("\0", BS)
end

function open(readonly)
  return 1
end

function get_size(h)
  return size
end

function can_write(h)
  return true
end

function pread(h, count, offset)
  local b = offset // BS
  local o = offset % BS
  -- Fast path: the whole read lies in one block.
  if o + count <= BS then
    local blk = blocks[b] or zero_block
    if o == 0 and count == BS then return blk end
    return sub(blk, o + 1, o + count)
  end
  local parts, n = {}, 0
  while count > 0 do
    local len = BS - o
    if len > count then len = count end
    local blk = blocks[b] or zero_block
    n = n + 1
    if o == 0 and len == BS then
      parts[n] = blk
    else
      parts[n] = sub(blk, o + 1, o + len)
    end
    count = count - len
    b = b + 1
    o = 0
  end
  return concat(parts)
end

function pwrite(h, buf, offset)
  local count = #buf
  local b = offset // BS
  local o = offset % BS
  local p = 1                     -- next byte of buf to store
  while count > 0 do
    local len = BS - o
    if len > count then len = count end
    if len == BS then
      -- A whole block: keep the payload itself when it is exactly one block.
      blocks[b] = (#buf == BS) and buf or sub(buf, p, p + BS - 1)
    else
      local blk = blocks[b] or zero_block
      blocks[b] = sub(blk, 1, o) .. sub(buf, p, p + len - 1) .. sub(blk, o + len + 1)
    end
    p = p + len
    count = count - len
    b = b + 1
    o = 0
  end
end

-- Nothing is volatile beyond the process, so flush has nothing to do;
-- advertising it keeps the NBD features in line with nbdkit's memory plugin.
function can_flush(h)
  return true
end

function flush(h)
end

function can_trim(h)
  return true
end

function trim(h, count, offset)
  -- Drop whole blocks; zero the covered part of partial ones.
  local b = offset // BS
  local o = offset % BS
  while count > 0 do
    local len = BS - o
    if len > count then len = count end
    if len == BS then
      blocks[b] = nil
    elseif blocks[b] then
      local blk = blocks[b]
      blocks[b] = sub(blk, 1, o) .. sub(zero_block, 1, len) .. sub(blk, o + len + 1)
    end
    count = count - len
    b = b + 1
    o = 0
  end
end

function zero(h, count, offset, may_trim)
  trim(h, count, offset)
end

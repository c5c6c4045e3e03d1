-- A request cut into pieces on several devices (a stripe's chunks, a
-- concat's parts), run at once. A piece is { device, pos on it, offset
-- in the request, length }; the device's part is a function fn(device,
-- pos, offset, len, arg) defined once (no closure per request: LuaJIT
-- compiles the path), one of those below or the device's own.
--
--   usbd.pieces.run(list, usbd.pieces.write, buf)
local parallel = require "usbd.parallel"

local M = {}

local function run_piece(p, fn, arg) fn(p[1], p[2], p[3], p[4], arg) end

-- fn(device, pos, offset, len, arg) for every piece of list at once;
-- raises as usbd.all does.
function M.run(list, fn, arg)
    parallel.each(list, run_piece, fn, arg)
end

-- The request's buffer as it is when the piece is all of it (a read into
-- it may then lend the page cache to the reply), else its piece.
local function part(buf, o, len)
    if len == buf.len then return buf end
    return buf:sub(o, len)
end

function M.read(dev, at, o, len, buf) dev:read_at(part(buf, o, len), at) end
function M.write(dev, at, o, len, buf) dev:write_at(part(buf, o, len), at) end
function M.trim(dev, at, _, len) dev:trim(at, len) end
function M.write_zeroes(dev, at, _, len) dev:write_zeroes(at, len) end

return M

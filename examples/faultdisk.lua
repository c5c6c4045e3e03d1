-- faultdisk.lua: fault injection as a block transform (like dm-flakey and
-- nbdkit's error filter), to see how a filesystem or a client copes.
-- Requests that match every condition given fail; the rest, and every
-- method of the device below (flush, trim, close), pass through.
--
--   usbd-lua -U /tmp/f.sock faultdisk ops=read range=1M-2M -- filedisk path=disk.img
--   usbd-lua -U /tmp/f.sock faultdisk ops=write every=10 error=ENOSPC -- ramdisk size=64M
--
--   ops=LIST      which requests may fail: read, write, trim, zero, flush,
--                 comma-separated (default read,write)
--   range=A-B,... only requests touching [A, B) (default: anywhere);
--                 flush has no range and ignores this
--   every=N       only every Nth matching request (the Nth, 2Nth, ...)
--   rate=P        only a fraction P of them (0.25, or 25%), at random
--   seed=N        the random sequence for rate (default: from the clock)
--   error=NAME    the errno the client sees: EIO (default), ENOSPC, EPERM...;
--                 error=lua raises a plain Lua error instead, which the
--                 server logs with its traceback and answers with EIO
--
-- Two kinds of fault at once: stack two faultdisks.
local usbd = require "usbd"

local Faultdisk = usbd.transform()

local OPS = { read = true, write = true, trim = true, zero = true, flush = true }

local function ranges(spec)
    if not spec then return nil end
    local out = {}
    for part in spec:gmatch("[^,]+") do
        local a, b = part:match("^([^-]+)-([^-]+)$")
        if not a then error("a range looks like 1M-2M, got '" .. part .. "'", 0) end
        local ok, first, last = pcall(function() return usbd.parse_size(a), usbd.parse_size(b) end)
        if not ok then error("range=" .. part .. ": " .. first, 0) end
        out[#out + 1] = { first = first, last = last }
    end
    return out
end

local function open(args, base)
    local ops = {}
    for op in (args.ops or "read,write"):gmatch("[^,]+") do
        if not OPS[op] then error("ops=: '" .. op .. "' is not one of read, write, trim, zero, flush", 0) end
        ops[op] = true
    end
    local rate = args.rate
    if rate then
        local pct = rate:match("^(.-)%%$")
        rate = pct and tonumber(pct) and tonumber(pct) / 100 or tonumber(rate)
        if not rate or rate < 0 or rate > 1 then error("rate= wants 0 to 1 or a percentage, got " .. args.rate, 0) end
    end
    local every = args.every and tonumber(args.every)
    if args.every and (not every or every < 1 or every % 1 ~= 0) then
        error("every= wants a whole number from 1, got " .. args.every, 0)
    end
    local err = args.error or "EIO"
    local raise
    if err == "lua" then
        raise = function(op, pos) error(("injected %s fault at %d"):format(op, pos)) end
    else
        local e = usbd.E[err:gsub("^E", "")]  -- raises for an unknown name
        raise = function() error(e) end
    end
    local seed = tonumber(args.seed or os.time())
    return Faultdisk:wrap(base, {
        ops = ops, ranges = ranges(args.range), every = every, rate = rate,
        raise = raise, seen = 0, failed = 0,
        -- Its own generator: a seed replays the same faults.
        random = seed and (function()
            local x = seed % 2147483647
            if x <= 0 then x = x + 2147483646 end
            return function() x = x * 16807 % 2147483647; return x / 2147483647 end
        end)(),
    })
end

-- Does this request fail? Counts the ones that match.
function Faultdisk:strike(op, pos, len)
    if not self.ops[op] then return end
    if self.ranges and pos then
        local hit = false
        for _, r in ipairs(self.ranges) do
            if pos < r.last and pos + len > r.first then hit = true; break end
        end
        if not hit then return end
    end
    self.seen = self.seen + 1
    if self.every and self.seen % self.every ~= 0 then return end
    if self.rate and self.random() >= self.rate then return end
    self.failed = self.failed + 1
    self.raise(op, pos or 0)
end

function Faultdisk:read_at(buf, pos)
    self:strike("read", pos, buf.len)
    self.base:read_at(buf, pos)
end

function Faultdisk:write_at(buf, pos)
    self:strike("write", pos, buf.len)
    self.base:write_at(buf, pos)
end

function Faultdisk:trim(pos, count)
    self:strike("trim", pos, count)
    self.base:trim(pos, count)
end

function Faultdisk:write_zeroes(pos, count)
    self:strike("zero", pos, count)
    self.base:write_zeroes(pos, count)
end

function Faultdisk:flush()
    self:strike("flush")
    self.base:flush()
end

function Faultdisk:stats()
    return { faultdisk_matched = self.seen, faultdisk_failed = self.failed }
end

return {
    open = open,
    transform = true,
    params = {
        ops = "read,write,trim,zero,flush (default read,write)",
        range = "A-B[,C-D...]: only requests touching these",
        every = "only every Nth matching request",
        rate = "only this fraction of them, at random",
        seed = "the random sequence for rate",
        error = "EIO (default), ENOSPC, ... or lua",
    },
}

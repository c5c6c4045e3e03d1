-- usbd.transform: a device that stands on another (its base) and changes
-- some of what it does. Define only the methods you change; every other
-- method of the device contract that the base has passes through to it,
-- and one the base lacks stays missing, so the server offers exactly what
-- the stack can do (a faultdisk over a filedisk keeps its flush and trim;
-- over a ramdisk it has no flush).
--
--   local Slowdisk = usbd.transform()
--   function Slowdisk:read_at(buf, pos)
--       usbd.jobs.sleep(self.latency)
--       self.base:read_at(buf, pos)
--   end
--   return { transform = true, params = { "latency" }, open = function(args, base)
--       return Slowdisk:wrap(base, { latency = tonumber(args.latency or "10") / 1000 })
--   end }
--
-- A request method you define (write_at, trim, write_zeroes, flush,
-- extents) is offered only if the base has it too (a cipher's trim means
-- nothing over a base that cannot trim); name the ones you
-- provide on your own in adds: usbd.transform { adds = { "write_at" } }
-- (a copy-on-write overlay writes over a read-only base). Set a method to
-- false to hide the base's (Class.extents = false).
--
-- Reads below a read_at you define fill the buffer (no page cache lent to
-- the reply, buf:borrow), so yours may look at it and change it; a
-- read_at that does neither, only passes buf down, may say
-- Class.lends = true to keep the zero-copy read path.
--
-- Work in C over the bytes (a cipher's) goes with the base's I/O as a step
-- (usbd.jobs): self:read_below(buf, pos, after) reads through the base and
-- runs after over buf; self:write_below(buf, pos, before) writes what
-- before makes of buf (buf stays as it was). Over a base that takes steps
-- (takes_steps: the filedisk, and a transform over one that leaves
-- read_at and write_at to it) the step runs in the I/O's own job, one
-- hand-over; over any other, on its own after the read or before the
-- write. A transform whose read_at(buf, pos, after) and write_at(buf, pos,
-- before) run steps given to them may say Class.takes_steps = true.
--
-- close: yours runs first (if you define one), then the base's: never
-- close the base yourself. stats: the base's, then yours over them.
--
-- Errors raised below reach the server untouched, with their traceback.
--
-- Over several devices (a mirror, a stripe): Class:wrap(bases, fields),
-- bases a list, sets obj.bases. Nothing passes through (which device
-- would it go to?): define size, read_at and what else you offer. A
-- request method you define is offered only if every base has it (or
-- adds names it). Given for you: block_size (the largest of the bases'),
-- flush (every base's at once, when you define none), close (yours, then
-- every base's) and stats (yours, then each base's as "N.name").
local bufs = require "usbd.buf"
local errors = require "usbd.errors"
local jobs = require "usbd.jobs"

local M = {}
local parallel = require "usbd.parallel"

-- The device contract's methods (docs/api.md).
local CONTRACT = { "size", "block_size", "read_at", "write_at", "trim", "write_zeroes",
    "flush", "close", "extents", "stats" }
-- What the base must be able to do for a transform's own method to be
-- offered (its close, stats and block_size are its own business).
local NEEDS_BASE = { write_at = true, trim = true, write_zeroes = true, flush = true, extents = true }

local Class = {}
Class.__index = Class

-- A device over the list bases (see the header).
local function wrap_many(self, bases, fields)
    local obj = fields or {}
    obj.bases = bases
    local offered = {}
    for k, v in pairs(self) do
        if type(k) == "string" and k ~= "adds" and k ~= "__index" then offered[k] = v end
    end
    local function every(name)
        for _, b in ipairs(bases) do
            if b[name] == nil then return false end
        end
        return true
    end
    for name in pairs(NEEDS_BASE) do
        local mine = rawget(self, name)
        if mine and not self.adds[name] and not every(name) then offered[name] = nil end
    end
    if rawget(self, "block_size") == nil then
        offered.block_size = function()
            local most = 512
            for _, b in ipairs(bases) do
                most = math.max(most, b.block_size and b:block_size() or 512)
            end
            return most
        end
    end
    if rawget(self, "flush") == nil and every("flush") then
        offered.flush = function()
            local calls = {}
            for i, b in ipairs(bases) do calls[i] = function() b:flush() end end
            parallel.all(calls)
        end
    end
    local own_close = rawget(self, "close")
    offered.close = function(o)
        local errs = {}
        if own_close then
            local ok, err = pcall(own_close, o)
            if not ok then errs[#errs + 1] = err end
        end
        for _, b in ipairs(bases) do
            if b.close then
                local ok, err = pcall(b.close, b)
                if not ok then errs[#errs + 1] = err end
            end
        end
        if #errs > 0 then error(errs[1], 0) end
    end
    local own_stats = rawget(self, "stats")
    offered.stats = function(o)
        local t = {}
        for i, b in ipairs(bases) do
            if b.stats then
                for k, v in pairs(b:stats() or {}) do t[i .. "." .. k] = v end
            end
        end
        for k, v in pairs(own_stats and own_stats(o) or {}) do t[k] = v end
        return t
    end
    local lends = rawget(self, "lends") == true
    for _, b in ipairs(bases) do lends = lends and b.lends_reads ~= false end
    obj.lends_reads = lends
    offered.__index = offered
    return setmetatable(obj, offered)
end

local function must(err)
    if err ~= 0 then error(errors.of_errno(err), 0) end
end

local function read_below(self, buf, pos, after)
    local base = self.base
    if base.takes_steps then return base:read_at(buf, pos, after) end
    base:read_at(buf, pos)
    must(jobs.run_step(after, buf.ptr, buf.ptr, buf.len))
end

local function write_below(self, buf, pos, before)
    local base = self.base
    if base.takes_steps then return base:write_at(buf, pos, before) end
    local len = buf.len
    local s = bufs.scratch.get(len)
    local out = s:sub(0, len)
    must(jobs.run_step(before, buf.ptr, out.ptr, len))
    base:write_at(out, pos)
    bufs.scratch.put(s)
end

-- The object for base: fields (a table, default {}) with .base set, and
-- the methods this stack offers. base may be a list (wrap_many).
function Class:wrap(base, fields)
    if type(base) == "table" and getmetatable(base) == nil and base.read_at == nil then
        return wrap_many(self, base, fields)
    end
    local obj = fields or {}
    obj.base = base
    local offered = {}
    for k, v in pairs(self) do
        if type(k) == "string" and k ~= "adds" and k ~= "__index" then offered[k] = v end
    end
    for _, name in ipairs(CONTRACT) do
        local mine, below = rawget(self, name), base[name]
        if mine == false or (mine and below == nil and NEEDS_BASE[name] and not self.adds[name]) then
            offered[name] = nil
        elseif mine == nil and below ~= nil then
            offered[name] = function(_, ...) return below(base, ...) end
        end
    end
    local own_close, base_close = offered.close ~= nil and rawget(self, "close"), base.close
    if own_close and base_close then
        offered.close = function(o)
            own_close(o)
            return base_close(base)
        end
    end
    local own_stats, base_stats = rawget(self, "stats"), base.stats
    if own_stats and base_stats then
        offered.stats = function(o)
            local t = base_stats(base) or {}
            for k, v in pairs(own_stats(o) or {}) do t[k] = v end
            return t
        end
    end
    -- A read may lend the page cache to the reply (buf:borrow) instead of
    -- filling the buffer: fine where read_at passes through, wrong below
    -- a read_at of ours that looks at or changes the buffer after the
    -- base's read (a cipher). Ours may say it does neither (lends = true).
    local own_read = rawget(self, "read_at")
    obj.lends_reads = base.lends_reads ~= false and (not own_read or rawget(self, "lends") == true)
    -- Steps pass through where the base's read_at and write_at do.
    obj.takes_steps = rawget(self, "takes_steps") == true
        or (base.takes_steps == true and not own_read and not rawget(self, "write_at"))
    offered.read_below = offered.read_below or read_below
    offered.write_below = offered.write_below or write_below
    offered.__index = offered
    return setmetatable(obj, offered)
end

-- A new transform class; opts.adds lists methods it offers over a base
-- that lacks them.
function M.new(opts)
    local adds = {}
    for _, name in ipairs(opts and opts.adds or {}) do adds[name] = true end
    return setmetatable({ adds = adds }, Class)
end

return M

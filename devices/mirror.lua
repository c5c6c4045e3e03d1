-- mirror.lua: RAID-1 over two or more devices (its legs): every write,
-- trim and flush goes to all legs at once, each read to one of them.
--
--   usbd-lua -U /tmp/m.sock mirror [ filedisk path=a.img size=10G ] [ filedisk path=b.img size=10G ]
--   usbd-lua -U /tmp/m.sock mirror resync=2 [ filedisk path=a.img ] [ filedisk path=b.img ]
--
--   resync=N  leg N (1 is the first) holds stale data: it is rebuilt
--             from the others while the mirror serves, then compared
--             with them, and read only once both are done.
--   state=FILE  where the mirror keeps which legs are out of service,
--             across restarts: a leg it names is rebuilt at the next open.
--             Written and synced before a request that took a leg out
--             of service is answered.
--
-- The size is the smallest leg's. Reads take turns among the legs in
-- service; one that fails is tried on the next leg (read_fallbacks). A
-- leg that fails a write, a trim or a flush is marked failed: one log
-- line, no more I/O to it, the request succeeds on the others. It is
-- stale from then on. The legs keep no metadata (each is a plain image of
-- the disk): state=FILE remembers which legs are stale; without it, fix
-- the leg and restart with resync=N, or a restart would read it.
--
-- During a resync, the copy of each step and the writes into it take
-- turns on the step's bytes (usbd.lock's range), so no write lands on
-- the rebuilt leg between the copy's read and its write.
local usbd = require "usbd"

local Mirror = usbd.transform()
Mirror.lends = true  -- read_at passes the buffer down, untouched

local STEP = 1024 * 1024  -- the resync's copy and compare unit
local STATE_BYTES = 512   -- the state file: one sector, written whole
local STATE_MAGIC = "usbd-lua mirror state 1"

-- The legs' states in the state file: nil where there is none yet.
local function load_state(file, nlegs, path)
    local b = usbd.buffer(STATE_BYTES)
    file:pread(b, 0)
    local text = b:tostring():match("^[^%z]*")
    if text == "" then return nil end
    local lines = {}
    for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
    if lines[1] ~= STATE_MAGIC then
        error(("state=%s is not a mirror's state file (it does not begin %q)"):format(path, STATE_MAGIC), 0)
    end
    local states = {}
    for i = 2, #lines do
        local n, st = lines[i]:match("^leg(%d+) (%a+)$")
        if not n or (st ~= "ok" and st ~= "stale") then
            error(("state=%s: line %d is not 'legN ok|stale': %s"):format(path, i, lines[i]), 0)
        end
        states[tonumber(n)] = st
    end
    if #states ~= nlegs then
        error(("state=%s describes %d legs, the mirror has %d: give each its own state file")
            :format(path, #states, nlegs), 0)
    end
    return states
end

-- Write the legs' states and sync them (a failed leg is stale: it needs a
-- resync before it is read again).
local function save_state(self)
    if not self.state_file then return end
    self.state_lock:run("state", function()
        local lines = { STATE_MAGIC }
        for i, st in ipairs(self.state) do
            lines[#lines + 1] = ("leg%d %s"):format(i, st == "ok" and "ok" or "stale")
        end
        local b = self.state_buf
        b:fill(0)
        b:copy_from(table.concat(lines, "\n") .. "\n")
        self.state_file:pwrite(b, 0)
        self.state_file:sync()
    end)
end

local function open(args, legs)
    local size = math.huge
    for _, leg in ipairs(legs) do size = math.min(size, leg:size()) end
    local m = Mirror:wrap(legs, {
        mirror_size = size,
        state = {},          -- per leg: "ok", "stale" (resyncing) or "failed"
        turn = 0,
        read_fallbacks = 0,
        read_errors = {},    -- per leg: how many reads failed
        ranges = usbd.lock(),
        resynced_bytes = 0,
        resync_mismatches = 0,
        writes_while_resyncing = 0,
    })
    for i in ipairs(legs) do m.state[i], m.read_errors[i] = "ok", 0 end
    if args.state then
        m.state_file = usbd.file.open(args.state, { create = true })
        m.state_buf, m.state_lock = usbd.buffer(STATE_BYTES), usbd.lock()
        for i, st in pairs(load_state(m.state_file, #legs, args.state) or {}) do m.state[i] = st end
    end
    if args.resync then
        local n = tonumber(args.resync)
        if not n or n ~= math.floor(n) or not legs[n] then
            error(("resync=%s: name a leg by its place, 1 to %d"):format(args.resync, #legs), 0)
        end
        m.state[n] = "stale"
    end
    local stale = {}
    for i, st in ipairs(m.state) do
        if st == "stale" then stale[#stale + 1] = i end
    end
    if #stale == #legs then
        error("every leg is stale: none holds the disk to rebuild the others from", 0)
    end
    save_state(m)
    if #stale > 0 then
        m.resyncing = true
        usbd.background(function()
            for _, n in ipairs(stale) do m:resync(n) end
            m.resyncing = nil
        end)
    end
    return m
end

function Mirror:size()
    return self.mirror_size
end

-- The legs in service ("ok"), by index.
local function in_service(self)
    local out = {}
    for i, st in ipairs(self.state) do
        if st == "ok" then out[#out + 1] = i end
    end
    return out
end

local function fail_leg(self, i, what, err)
    if self.state[i] == "failed" then return end
    local was = self.state[i]
    self.state[i] = "failed"
    usbd.log(0, "mirror: leg %d failed a %s and is out of service%s: %s", i, what,
        was == "stale" and " (its resync stops)"
            or self.state_file and "; the state file says so, and the next open rebuilds it"
            or "; restart with resync=" .. i .. " once it is fixed",
        tostring(err):gsub("\n.*", ""))
    save_state(self)
end

-- The legs take turns; one that fails is tried on the next. (A base that
-- lends the page cache to the reply does so last, once nothing can fail:
-- the contract of buf:borrow, which lets the mirror pass the buffer down.)
function Mirror:read_at(buf, pos)
    local n, last = #self.bases, nil
    self.turn = self.turn % n + 1
    for k = 0, n - 1 do
        local i = (self.turn + k - 1) % n + 1
        if self.state[i] == "ok" then
            local leg = self.bases[i]
            local ok, err = pcall(leg.read_at, leg, buf, pos)
            if ok then return end
            last = err
            self.read_errors[i] = self.read_errors[i] + 1
            self.read_fallbacks = self.read_fallbacks + 1
            if self.read_errors[i] == 1 then
                usbd.log(0, "mirror: leg %d failed a read at %d, read from another leg: %s", i, pos,
                    tostring(err):gsub("\n.*", ""))
            end
        end
    end
    error(last or usbd.E.IO, 0)
end

-- fn(leg, a, b) on every leg that takes writes ("ok" or "stale"), at
-- once; a leg that fails is out of service. Fails only when no leg in
-- service took it. (fn is one of the functions below, not a closure made
-- per request: the request's path stays compiled.)
local function each_leg(self, what, fn, a, b)
    local idx, legs = {}, {}
    for i, st in ipairs(self.state) do
        if st ~= "failed" then
            idx[#idx + 1] = i
            legs[#legs + 1] = self.bases[i]
        end
    end
    local errs = usbd.each_settled(legs, fn, a, b)
    if not errs then return end
    local first
    for k, i in ipairs(idx) do
        if errs[k] ~= nil then
            first = first or errs[k]
            fail_leg(self, i, what, errs[k])
        end
    end
    if #in_service(self) == 0 then error(first, 0) end
end

local function write_leg(leg, buf, pos) leg:write_at(buf, pos) end
local function trim_leg(leg, pos, count) leg:trim(pos, count) end
local function zero_leg(leg, pos, count) leg:write_zeroes(pos, count) end
local function flush_leg(leg) leg:flush() end

-- what on every leg, as each_leg; while a leg is rebuilt, requests and
-- the copy take turns per byte range.
local function to_legs(self, what, fn, pos, len, a, b)
    if self.resyncing then
        self.writes_while_resyncing = self.writes_while_resyncing + 1
        return self.ranges:range(pos, len, each_leg, self, what, fn, a, b)
    end
    each_leg(self, what, fn, a, b)
end

function Mirror:write_at(buf, pos)
    to_legs(self, "write", write_leg, pos, buf.len, buf, pos)
end

function Mirror:trim(pos, count)
    to_legs(self, "trim", trim_leg, pos, count, pos, count)
end

function Mirror:write_zeroes(pos, count)
    to_legs(self, "write_zeroes", zero_leg, pos, count, pos, count)
end

function Mirror:flush()
    each_leg(self, "flush", flush_leg)
end

-- Rebuild leg n from a leg in service, STEP by STEP, then compare the two;
-- n is in service only once both passes are done and equal.
function Mirror:resync(n)
    local target = self.bases[n]
    local a, b = usbd.buffer(STEP), usbd.buffer(STEP)
    local function source()
        local legs = in_service(self)
        if #legs == 0 then error("no leg in service to copy from", 0) end
        return self.bases[legs[1]]
    end
    local function pass(fn)
        for pos = 0, self.mirror_size - 1, STEP do
            if usbd.stopping() or self.state[n] ~= "stale" then return false end
            local len = math.min(STEP, self.mirror_size - pos)
            self.ranges:range(pos, len, fn, pos, len)
        end
        return true
    end
    usbd.log(0, "mirror: rebuilding leg %d (%d bytes) while serving", n, self.mirror_size)
    local ok, err = pcall(function()
        local copied = pass(function(pos, len)
            local src = a:sub(0, len)
            source():read_at(src, pos)
            target:write_at(src, pos)
            self.resynced_bytes = self.resynced_bytes + len
        end)
        if not copied then return end
        if target.flush then target:flush() end
        local mismatches = 0
        local compared = pass(function(pos, len)
            source():read_at(a:sub(0, len), pos)
            target:read_at(b:sub(0, len), pos)
            if not a:sub(0, len):equals(b:sub(0, len)) then mismatches = mismatches + 1 end
        end)
        if not compared then return end
        self.resync_mismatches = mismatches
        if mismatches > 0 then
            fail_leg(self, n, "resync's compare", ("%d of its 1 MiB steps differ"):format(mismatches))
            return
        end
        self.state[n] = "ok"
        save_state(self)
        usbd.log(0, "mirror: leg %d rebuilt and compared equal: in service", n)
    end)
    if not ok then fail_leg(self, n, "resync", err) end
    if self.state[n] == "stale" then
        usbd.log(0, "mirror: the resync of leg %d stopped before its end%s", n,
            self.state_file and "; the next open goes on with it" or ": restart with resync=" .. n)
    end
end

function Mirror:stats()
    local t = { read_fallbacks = self.read_fallbacks, legs_in_service = #in_service(self),
        resynced_bytes = self.resynced_bytes, resync_mismatches = self.resync_mismatches,
        writes_while_resyncing = self.writes_while_resyncing }
    for i, st in ipairs(self.state) do t["leg" .. i] = st end
    return t
end

return {
    open = open,
    bases = { min = 2 },
    params = {
        resync = "N: leg N is stale; rebuild it from the others while serving, then compare",
        state = "FILE: which legs are out of service, kept across restarts (rebuilt at the next open)",
    },
}

-- Device trees: the command line's [ ] groups, devices over several
-- devices (mirror, stripe, concat), usbd.all and range locks.
local usbd = require "usbd"
local sched = require "usbd.core.sched"
local device = require "usbd.device"
local h = require "device_helper"
local conforms = require "usbd.conformance"

local function ram(size) return usbd.open_device("ramdisk", { size = size or "1M" }) end

-- A request that runs fn as the server would, in a coroutine of its own.
local function request(fn)
    local done = {}
    sched.spawn(function()
        local ok, err = pcall(fn)
        done.ok, done.err, done.finished = ok, err, true
    end)
    return done
end

local function gate() return require("ffi").new("char[1]") end

describe("the command line's tree", function()
    local function shape(node)
        local t = { node.spec }
        for k, v in pairs(node.args) do t[#t + 1] = k .. "=" .. v end
        table.sort(t, function(a, b) return a == node.spec or (b ~= node.spec and a < b) end)
        for _, b in ipairs(node.bases) do t[#t + 1] = shape(b) end
        return t
    end

    it("reads a chain as before, each device with its own keys", function()
        local tree = device.parse_tree("tracedisk", { "out=t", "--", "cryptdisk", "key=k", "filedisk", "path=x", "size=1M" })
        assert.are.same({ "tracedisk", "out=t", { "cryptdisk", "key=k", { "filedisk", "path=x", "size=1M" } } },
            shape(tree))
    end)

    it("reads [ ] groups as devices side by side, each a stack or a tree", function()
        local tree = device.parse_tree("mirror", { "resync=2", "--",
            "[", "filedisk", "path=a", "]",
            "[", "faultdisk", "ops=read", "--", "stripe", "[", "ramdisk", "]", "[", "ramdisk", "size=2M", "]", "]" })
        assert.are.same({ "mirror", "resync=2",
            { "filedisk", "path=a" },
            { "faultdisk", "ops=read", { "stripe", { "ramdisk" }, { "ramdisk", "size=2M" } } } }, shape(tree))
    end)

    it("says in one line what is wrong with a group", function()
        local function err(words)
            local ok, e = pcall(device.parse_tree, "mirror", words)
            assert.is_false(ok)
            assert.is_nil(tostring(e):find("\n"))
            return e
        end
        assert.matches("a '%[' is not closed", err { "[", "ramdisk" })
        assert.matches("a '%]' closes no '%['", err { "ramdisk", "]" })
        assert.matches("starts with a device's name, got ']'", err { "[", "]" })
        assert.matches("starts with a device's name, got 'size=1M'", err { "[", "size=1M", "]" })
        assert.matches("'size=1M' after the %[ %] groups of mirror", err { "[", "ramdisk", "]", "size=1M" })
        assert.matches("'ramdisk' after the %[ %] groups of mirror", err { "[", "ramdisk", "]", "ramdisk" })
        assert.matches("size= is given twice for ramdisk", err { "[", "ramdisk", "size=1M", "size=2M", "]" })
    end)

    it("refuses a wrong count of devices below, before opening any", function()
        local made = os.tmpname()
        os.remove(made)
        assert.has_error(function()
            device.open_stack("mirror", { "[", "filedisk", "path=" .. made, "size=1M", "]" })
        end, "mirror stands on 2 or more devices, got 1: usbd-lua mirror KEY=VALUE... "
            .. "[ DEVICE KEY=VALUE... ] [ DEVICE KEY=VALUE... ]")
        assert.is_false(usbd.exists(made))
        assert.has_error(function() device.open_stack("ramdisk", { "[", "ramdisk", "]" }) end,
            "ramdisk does not stand on another device: ramdisk cannot go below it")
        assert.has_error(function() device.open_stack("cryptdisk", { "key=00", "[", "ramdisk", "]", "[", "ramdisk", "]" }) end)
        assert.has_error(function() usbd.open_device("stripe", {}, ram()) end,
            "stripe stands on 2 or more devices, got 1: usbd-lua stripe KEY=VALUE... "
            .. "[ DEVICE KEY=VALUE... ] [ DEVICE KEY=VALUE... ]")
    end)

    it("opens a tree three levels deep and serves through it", function()
        local dev = device.open_stack("mirror", {
            "[", "stripe", "chunk=4K", "[", "ramdisk", "size=1M", "]", "[", "concat", "[", "ramdisk", "size=256K", "]",
            "[", "ramdisk", "size=768K", "]", "]", "]",
            "[", "cowdisk", "--", "ramdisk", "size=2M", "]" })
        assert.are.equal(2 * 1024 * 1024, dev:size())
        conforms(dev)
    end)

    it("closes every device of the tree once, and merges their statistics", function()
        local closed = {}
        local function leg(name)
            local d = ram()
            d.close = function() closed[#closed + 1] = name end
            d.stats = function() return { name = name } end
            return d
        end
        local dev = usbd.open_device("mirror", {}, { leg("a"), leg("b") })
        local st = dev:stats()
        assert.are.equal("a", st["1.name"])
        assert.are.equal("b", st["2.name"])
        assert.are.equal("ok", st.leg2)
        dev:close()
        assert.are.same({ "a", "b" }, closed)
    end)
end)

describe("usbd.all", function()
    it("starts every call before any ends, and goes on after the last", function()
        local log, gates = {}, { gate(), gate(), gate() }
        local calls = {}
        for i = 1, 3 do
            calls[i] = function()
                log[#log + 1] = "start " .. i
                sched.wait(gates[i])
                log[#log + 1] = "end " .. i
            end
        end
        local r = request(function() usbd.all(calls); log[#log + 1] = "after" end)
        assert.are.same({ "start 1", "start 2", "start 3" }, log)
        sched.complete(gates[2])
        sched.complete(gates[3])
        assert.is_nil(r.finished)
        sched.complete(gates[1])
        assert.are.same({ "start 1", "start 2", "start 3", "end 2", "end 3", "end 1", "after" }, log)
        assert.is_true(r.ok)
    end)

    it("gives every error, and raises them all", function()
        local errs
        local r = request(function()
            errs = usbd.all_settled { function() error("first", 0) end, function() end,
                function() error(usbd.E.NOSPC) end }
        end)
        assert.is_true(r.ok)
        assert.are.equal(2, errs.failed)
        assert.matches("first", errs[1])
        assert.is_nil(errs[2])
        assert.are.equal(usbd.E.NOSPC, errs[3])
        assert.is_nil(usbd.all_settled { function() end, function() end })
        local ok, e = pcall(usbd.all, { function() error("a", 0) end, function() error("b", 0) end })
        assert.is_false(ok)
        assert.matches("2 of 2 calls failed:\ncall 1: a.*\ncall 2: b", e)
        ok, e = pcall(usbd.all, { function() end, function() error(usbd.E.NOSPC) end })
        assert.is_false(ok)
        assert.are.equal(usbd.E.NOSPC, e)  -- the errno reaches the client as itself
    end)
end)

describe("usbd.each", function()
    it("calls fn(item, ...) for every item at once, with every error", function()
        local log, gates = {}, { gate(), gate() }
        local function step(item, tag, n)
            log[#log + 1] = ("start %s %s %d"):format(item, tag, n)
            sched.wait(gates[item])
            if item == 2 then error(usbd.E.NOSPC) end
            log[#log + 1] = "end " .. item
        end
        local errs
        local r = request(function() errs = usbd.each_settled({ 1, 2 }, step, "x", 7) end)
        assert.are.same({ "start 1 x 7", "start 2 x 7" }, log)
        sched.complete(gates[2])
        assert.is_nil(r.finished)
        sched.complete(gates[1])
        assert.is_true(r.ok)
        assert.are.equal(1, errs.failed)
        assert.is_nil(errs[1])
        assert.are.equal(usbd.E.NOSPC, errs[2])
        local ok, e = pcall(usbd.each, { 1, 2 }, function(i) if i == 2 then error(usbd.E.NOSPC) end end)
        assert.is_false(ok)
        assert.are.equal(usbd.E.NOSPC, e)
        assert.is_nil(usbd.each_settled({ "a", "b" }, function() end))
    end)
end)

describe("usbd.lock's ranges", function()
    it("orders overlapping ranges as they came, and lets others run at once", function()
        local locks, log = usbd.lock(), {}
        local function holder(name, pos, len)
            local g = gate()
            request(function()
                locks:range(pos, len, function()
                    log[#log + 1] = name
                    sched.wait(g)
                end)
            end)
            return g
        end
        local a = holder("a", 0, 100)
        local b = holder("b", 50, 100)     -- overlaps a
        local c = holder("c", 150, 10)     -- touches b's end, not b: at once
        local d = holder("d", 140, 5)      -- overlaps b only, came after it
        local e = holder("e", 1000, 1)
        assert.are.same({ "a", "c", "e" }, log)
        sched.complete(c)
        assert.are.same({ "a", "c", "e" }, log)  -- b still waits for a
        sched.complete(a)
        assert.are.same({ "a", "c", "e", "b" }, log)
        sched.complete(b)
        assert.are.same({ "a", "c", "e", "b", "d" }, log)
        sched.complete(d)
        sched.complete(e)
        assert.are.equal(0, #locks.ranges)
    end)

    it("lets go of the range when fn fails", function()
        local locks = usbd.lock()
        local ok, err = pcall(locks.range, locks, 0, 10, function() error("no", 0) end)
        assert.is_false(ok)
        assert.matches("^no", err)
        assert.are.equal(0, #locks.ranges)
    end)
end)

describe("mirror", function()
    it("keeps the contract on ramdisks and on filedisks, flush included", function()
        conforms(usbd.open_device("mirror", {}, { ram(), ram("2M"), ram() }))
        local dir, path = h.scratch("mirror", ".img")
        conforms(usbd.open_device("mirror", {}, {
            usbd.open_device("filedisk", { path = path(), size = "1M" }),
            usbd.open_device("filedisk", { path = path(), size = "1M" }) }))
        os.execute("rm -rf " .. dir)
    end)

    it("writes every leg, and reads them in turns", function()
        local a, b = ram(), ram()
        local m = usbd.open_device("mirror", {}, { a, b })
        h.write(m, 4096, "both")
        assert.are.equal("both", h.read(a, 4096, 4))
        assert.are.equal("both", h.read(b, 4096, 4))
        local reads = { 0, 0 }
        for i, leg in ipairs { a, b } do
            local read = leg.read_at
            leg.read_at = function(...) reads[i] = reads[i] + 1; return read(...) end
        end
        for _ = 1, 10 do h.read(m, 0, 512) end
        assert.are.same({ 5, 5 }, reads)
    end)

    it("reads from another leg when one fails, and counts it", function()
        local a = ram()
        local m = usbd.open_device("mirror", {}, { usbd.open_device("faultdisk", { ops = "read" }, a), ram() })
        h.write(m, 0, "data")
        for _ = 1, 6 do assert.are.equal("data", h.read(m, 0, 4)) end
        local st = m:stats()
        assert.are.equal(3, st.read_fallbacks)
        assert.are.equal("ok", st.leg1)  -- a failed read leaves the leg in service
    end)

    it("takes a leg that fails a write out of service, keeping the data on the other", function()
        local b = ram()
        local m = usbd.open_device("mirror", {}, { usbd.open_device("faultdisk", { ops = "write" }, ram()), b })
        h.write(m, 8192, "kept")
        local st = m:stats()
        assert.are.equal("failed", st.leg1)
        assert.are.equal(1, st.legs_in_service)
        assert.are.equal("kept", h.read(b, 8192, 4))
        for _ = 1, 4 do assert.are.equal("kept", h.read(m, 8192, 4)) end  -- never from leg 1
        local all = usbd.open_device("mirror", {}, {
            usbd.open_device("faultdisk", { ops = "write" }, ram()),
            usbd.open_device("faultdisk", { ops = "write", error = "ENOSPC" }, ram()) })
        local ok, err = pcall(h.write, all, 0, "x")
        assert.is_false(ok)  -- no leg took it: the write fails
        assert.is_not_nil(err)
    end)

    it("rebuilds a stale leg from the others, compares it, then reads it", function()
        local a, b = ram(), ram()
        h.write(a, 0, ("A"):rep(4096))
        h.write(a, 1024 * 1024 - 5, "tail!")
        local m = usbd.open_device("mirror", { resync = "2" }, { a, b })
        assert.are.equal("stale", m:stats().leg2)
        m:resync(2)
        local st = m:stats()
        assert.are.equal("ok", st.leg2)
        assert.are.equal(0, st.resync_mismatches)
        assert.are.equal(1024 * 1024, st.resynced_bytes)
        assert.are.equal(("A"):rep(4096), h.read(b, 0, 4096))
        assert.are.equal("tail!", h.read(b, 1024 * 1024 - 5, 5))
    end)

    it("keeps which legs are stale in state=, and rebuilds them at the next open", function()
        local dir, path = h.scratch("mirror-state", ".state")
        local state = path()
        local function file_text()
            local f = assert(io.open(state, "rb"))
            local t = f:read("*a"):match("^[^%z]*")
            f:close()
            return t
        end
        local a, b = ram(), ram()
        local m = usbd.open_device("mirror", { state = state },
            { usbd.open_device("faultdisk", { ops = "write" }, a), b })
        assert.are.equal("usbd-lua mirror state 1\nleg1 ok\nleg2 ok\n", file_text())
        h.write(m, 0, "new")
        assert.are.equal("usbd-lua mirror state 1\nleg1 stale\nleg2 ok\n", file_text())
        -- Restarted (the fault fixed): leg 1 is not read until it is rebuilt.
        local again = usbd.open_device("mirror", { state = state }, { a, b })
        assert.are.equal("stale", again:stats().leg1)
        for _ = 1, 4 do assert.are.equal("new", h.read(again, 0, 3)) end
        again:resync(1)
        assert.are.equal("ok", again:stats().leg1)
        assert.are.equal("new", h.read(a, 0, 3))
        assert.are.equal("usbd-lua mirror state 1\nleg1 ok\nleg2 ok\n", file_text())
        assert.error_matches(function() usbd.open_device("mirror", { state = state }, { ram(), ram(), ram() }) end,
            "describes 2 legs, the mirror has 3")
        local f = assert(io.open(state, "wb"))
        f:write("usbd-lua mirror state 1\nleg1 stale\nleg2 stale\n")
        f:close()
        assert.error_matches(function() usbd.open_device("mirror", { state = state }, { a, b }) end,
            "every leg is stale")
        os.execute("rm -rf " .. dir)
    end)

    it("refuses resync= naming no leg", function()
        assert.error_matches(function() usbd.open_device("mirror", { resync = "3" }, { ram(), ram() }) end,
            "resync=3: name a leg by its place, 1 to 2$")
    end)
end)

describe("stripe", function()
    it("keeps the contract, chunks small and large", function()
        conforms(usbd.open_device("stripe", { chunk = "4K" }, { ram(), ram(), ram() }))
        conforms(usbd.open_device("stripe", {}, { ram("2M"), ram("1M") }))
    end)

    it("deals the chunks to the devices in turn", function()
        local a, b = ram(), ram()
        local s = usbd.open_device("stripe", { chunk = "4K" }, { a, b })
        assert.are.equal(2 * 1024 * 1024, s:size())
        h.write(s, 0, ("0"):rep(4096) .. ("1"):rep(4096) .. ("2"):rep(4096))
        assert.are.equal(("0"):rep(4096) .. ("2"):rep(4096), h.read(a, 0, 8192))
        assert.are.equal(("1"):rep(4096), h.read(b, 0, 4096))
    end)

    it("refuses a chunk that is not a power of two", function()
        assert.has_error(function() usbd.open_device("stripe", { chunk = "3K" }, { ram(), ram() }) end)
    end)
end)

describe("concat", function()
    it("keeps the contract over devices of different sizes", function()
        conforms(usbd.open_device("concat", {}, { ram("256K"), ram("1M"), ram("64K") }))
    end)

    it("puts the devices end to end", function()
        local a, b = ram("64K"), ram("1M")
        local c = usbd.open_device("concat", {}, { a, b })
        assert.are.equal(64 * 1024 + 1024 * 1024, c:size())
        h.write(c, 64 * 1024 - 2, "abcd")
        assert.are.equal("ab", h.read(a, 64 * 1024 - 2, 2))
        assert.are.equal("cd", h.read(b, 0, 2))
        local runs = c:extents(0, c:size())
        local total = 0
        for i = 1, #runs, 2 do total = total + runs[i] end
        assert.are.equal(c:size(), total)
    end)
end)

-- Opening devices on devices: names and paths, declared keys, layers from
-- the command line, loops, and usbd.transform's pass-through.
local usbd = require "usbd"
local device = require "usbd.device"
local conforms = require "usbd.conformance"

local function ram(size) return usbd.open_device("ramdisk", { size = size or "1M" }) end

describe("usbd.open_device", function()
    it("opens a shipped device by name, and a script by path", function()
        assert.are.equal(2 ^ 20, ram():size())
        assert.are.equal(4096, usbd.open_device("devices/ramdisk.lua", { size = "4K" }):size())
    end)

    it("refuses unknown keys, naming them and the device", function()
        assert.has_error(function() usbd.open_device("ramdisk", { sise = "1M" }) end,
            "unknown parameter 'sise' for ramdisk (it takes size)")
    end)

    it("refuses a transform without a base, and a base under a device that takes none", function()
        assert.error_matches(function() usbd.open_device("cowdisk", {}) end, "needs a device below it")
        assert.error_matches(function() usbd.open_device("ramdisk", {}, ram()) end, "does not stand on another device")
    end)

    it("names what it tried for a device that does not exist", function()
        assert.error_matches(function() usbd.open_device("nosuchdisk") end,
            "no device 'nosuchdisk': tried .*devices/nosuchdisk.lua")
    end)
end)

describe("command line layers", function()
    it("refuses a key given twice to one layer, but not to two", function()
        assert.has_error(function() device.parse_tree("ramdisk", { "size=1M", "size=2M" }) end,
            "size= is given twice for ramdisk")
        assert.has_no.errors(function() device.parse_tree("slowdisk", { "latency=1", "--", "slowdisk", "latency=2" }) end)
    end)

    it("opens the stack bottom first and serves through it", function()
        local dev = device.open_stack("slowdisk", { "latency=0", "--", "cowdisk", "--", "ramdisk", "size=1M" })
        conforms(dev)
    end)
end)

describe("usbd.transform", function()
    local base = {
        size = function() return 4096 end,
        read_at = function(_, buf) buf:fill(7) end,
        write_at = function() end,
        flush = function(self) self.flushed = true end,
        close = function(self) self.closed = true end,
    }

    it("passes through exactly what the base has", function()
        local T = usbd.transform()
        function T:read_at(buf, pos) self.base:read_at(buf, pos); buf:sub(0, 1):fill(1) end
        local dev = T:wrap(base)
        assert.is_function(dev.write_at)
        assert.is_function(dev.flush)
        assert.is_nil(dev.trim)
        assert.is_nil(dev.write_zeroes)
        dev:flush()
        assert.is_true(base.flushed)
    end)

    it("drops a request method of its own the base cannot do, unless it adds it", function()
        local T = usbd.transform()
        function T:trim() end
        assert.is_nil(T:wrap(base).trim)
        local A = usbd.transform { adds = { "trim" } }
        function A:trim() end
        assert.is_function(A:wrap(base).trim)
    end)

    it("hides a method set to false", function()
        local T = usbd.transform()
        T.flush = false
        assert.is_nil(T:wrap(base).flush)
    end)

    it("closes itself, then the base", function()
        local order = {}
        local b = { size = base.size, read_at = base.read_at, close = function() order[#order + 1] = "base" end }
        local T = usbd.transform()
        function T:close() order[#order + 1] = "mine" end
        T:wrap(b):close()
        assert.are.same({ "mine", "base" }, order)
    end)

    it("merges its stats over the base's", function()
        local b = { size = base.size, read_at = base.read_at, stats = function() return { a = 1, b = 2 } end }
        local T = usbd.transform()
        function T:stats() return { b = 3 } end
        assert.are.same({ a = 1, b = 3 }, T:wrap(b):stats())
    end)
end)

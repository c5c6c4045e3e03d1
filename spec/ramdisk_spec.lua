local h = require "device_helper"
local usbd = require "usbd"

describe("devices/ramdisk.lua", function()
    local dev
    before_each(function() dev = h.open("devices/ramdisk.lua", { size = "8M" }) end)

    it("has the size it was given, 1G by default", function()
        assert.are.equal(8 * 2 ^ 20, dev:size())
        assert.are.equal(2 ^ 30, h.open("devices/ramdisk.lua"):size())
        assert.are.equal(4096, dev:block_size())
    end)

    it("starts as zeroes", function()
        assert.are.equal(string.rep("\0", 4096), h.read(dev, 12345, 4096))
    end)

    it("reads back what was written, at any alignment", function()
        h.write(dev, 1, "hello")
        h.write(dev, 8 * 2 ^ 20 - 3, "end")
        assert.are.equal("\0hello\0", h.read(dev, 0, 7))
        assert.are.equal("end", h.read(dev, 8 * 2 ^ 20 - 3, 3))
    end)

    it("trim and write_zeroes leave zeroes and nothing else", function()
        h.write(dev, 0, string.rep("x", 300000))
        dev:trim(10, 200000)
        assert.are.equal("x" .. string.rep("\0", 200000) .. "x", h.read(dev, 9, 200002))
        dev:write_zeroes(0, 5)
        assert.are.equal(string.rep("\0", 5) .. "xxxxx", h.read(dev, 0, 5) .. h.read(dev, 5, 5))
    end)

    it("takes memory only for what is written, and trims give it back", function()
        local big = h.open("devices/ramdisk.lua", { size = "1G" })
        h.read(big, 0, 4 * 2 ^ 20)
        assert.are.equal(0, big:stats().allocated_bytes)
        h.write(big, 2 ^ 29, string.rep("d", 2 ^ 20))
        assert.are.equal(2 ^ 20, big:stats().allocated_bytes)
        big:trim(2 ^ 29, 2 ^ 20)
        assert.are.equal(0, big:stats().allocated_bytes)
    end)

    it("reports unwritten ranges as holes that read as zeroes", function()
        local HZ = usbd.HOLE + usbd.ZERO
        assert.are.same({ 8 * 2 ^ 20, HZ }, dev:extents(0, 8 * 2 ^ 20))
        h.write(dev, 4096, "data")
        local e = dev:extents(0, 8 * 2 ^ 20)
        assert.are.equal(0, e[2])
        assert.is_true(e[1] > 4096)
        assert.are.equal(HZ, e[4])
        assert.are.equal(8 * 2 ^ 20, e[1] + e[3])
        dev:write_zeroes(0, 8 * 2 ^ 20)
        assert.are.same({ 8 * 2 ^ 20, HZ }, dev:extents(0, 8 * 2 ^ 20))
    end)

    it("refuses a malformed size", function()
        assert.has_error(function() h.open("devices/ramdisk.lua", { size = "huge" }) end)
    end)
end)

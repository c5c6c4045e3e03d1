local h = require "device_helper"

local dir = "build/spec-filedisk." .. tostring(os.time()) .. "." .. tostring(math.random(1e6))
os.execute("mkdir -p " .. dir)
local function path(name) return dir .. "/" .. name end

local function file_size(p)
    local f = assert(io.open(p, "rb"))
    local n = f:seek("end")
    f:close()
    return n
end

local function opens(args)
    return pcall(h.open, "devices/filedisk.lua", args)
end

describe("devices/filedisk.lua", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("creates a sparse file of size=, and reads zeroes from it", function()
        local dev = h.open("devices/filedisk.lua", { path = path("new.img"), size = "16M" })
        assert.are.equal(16 * 2 ^ 20, dev:size())
        assert.are.equal(16 * 2 ^ 20, file_size(path("new.img")))
        assert.are.equal(string.rep("\0", 4096), h.read(dev, 12345, 4096))
        assert.is_true(dev.file:allocated() < 2 ^ 20)
        dev:close()
    end)

    it("stores in the file, and serves it again after a reopen", function()
        local p = path("keep.img")
        local dev = h.open("devices/filedisk.lua", { path = p, size = "1M" })
        h.write(dev, 1, "hello")
        h.write(dev, 2 ^ 20 - 3, "end")
        dev:flush()
        dev:close()
        local f = io.open(p, "rb")
        assert.are.equal("\0hello", f:read(6))
        f:close()
        dev = h.open("devices/filedisk.lua", { path = p })  -- size from the file
        assert.are.equal(2 ^ 20, dev:size())
        assert.are.equal("\0hello\0", h.read(dev, 0, 7))
        assert.are.equal("end", h.read(dev, 2 ^ 20 - 3, 3))
        dev:close()
    end)

    it("trims to holes and zeroes ranges", function()
        local dev = h.open("devices/filedisk.lua", { path = path("trim.img"), size = "8M" })
        h.write(dev, 0, string.rep("x", 4 * 2 ^ 20))
        dev:flush()
        local before = dev.file:allocated()
        dev:trim(2 ^ 20, 2 * 2 ^ 20)
        assert.is_true(dev.file:allocated() <= before - 2 * 2 ^ 20)
        assert.are.equal("x" .. string.rep("\0", 2 * 2 ^ 20) .. "x", h.read(dev, 2 ^ 20 - 1, 2 * 2 ^ 20 + 2))
        dev:write_zeroes(10, 5)
        assert.are.equal("x" .. string.rep("\0", 5) .. "x", h.read(dev, 9, 7))
        dev:close()
    end)

    it("grows a file to a larger size=, refuses a smaller one", function()
        local p = path("grow.img")
        h.open("devices/filedisk.lua", { path = p, size = "1M" }):close()
        local dev = h.open("devices/filedisk.lua", { path = p, size = "2M" })
        assert.are.equal(2 * 2 ^ 20, dev:size())
        dev:close()
        local ok, err = opens { path = p, size = "1M" }
        assert.is_false(ok)
        assert.matches("leave size= out", err)
        assert.are.equal(2 * 2 ^ 20, file_size(p))  -- untouched
    end)

    it("says what is missing", function()
        local ok, err = opens {}
        assert.is_false(ok)
        assert.matches("path=", err)
        ok, err = opens { path = path("absent.img") }
        assert.is_false(ok)
        assert.matches("size=", err)
        ok, err = opens { path = path("x.img"), size = "1M", direct = "maybe" }
        assert.is_false(ok)
        assert.matches("direct=true", err)
    end)

    it("with direct=true: 4096-byte blocks, any alignment served", function()
        local ok, dev = opens { path = path("direct.img"), size = "4M", direct = "true" }
        if not ok then
            pending("no O_DIRECT here: " .. tostring(dev))
            return
        end
        assert.are.equal(4096, dev:block_size())
        h.write(dev, 4096, string.rep("a", 8192))
        h.write(dev, 5000, "unaligned")
        assert.are.equal("aunaligneda", h.read(dev, 4999, 11))
        dev:trim(8192, 4096)
        assert.are.equal("a" .. string.rep("\0", 4096) .. "\0", h.read(dev, 8191, 4098))
        dev:flush()
        dev:close()
    end)
end)

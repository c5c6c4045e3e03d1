-- Sizes: the one parser every SIZE goes through (src/cli.c's, through
-- usbd.parse_size and usbd.size_arg), and the devices' keys that use it.
local usbd = require "usbd"

describe("usbd.parse_size", function()
    it("reads suffixes, each 1024 times the one before, B and iB optional", function()
        assert.are.equal(1024, usbd.parse_size("1K"))
        assert.are.equal(1024, usbd.parse_size("1KB"))
        assert.are.equal(256 * 1024 * 1024, usbd.parse_size("256M"))
        for _, s in ipairs { "1G", "1g", "1GB", "1GiB" } do
            assert.are.equal(2 ^ 30, usbd.parse_size(s))
        end
        assert.are.equal(4096, usbd.parse_size(4096))
        assert.are.equal(4096, usbd.parse_size("4096"))
    end)
    it("takes a decimal part that comes to whole bytes", function()
        assert.are.equal(1.5 * 2 ^ 30, usbd.parse_size("1.5G"))
        assert.are.equal(512, usbd.parse_size("0.5K"))
    end)
    it("says what is wrong in one line, naming the key, with no source position", function()
        assert.has_error(function() usbd.parse_size("10Q", "size") end,
            "size=10Q: not a size; use bytes or a number with K, M, G, T or P (1024-based,"
            .. " B or iB after it optional), like size=1G or size=1.5G")
        local ok, err = pcall(usbd.parse_size, "1.3K", "cache")
        assert.is_false(ok)
        assert.matches("^cache=1%.3K: not a whole number of bytes; use bytes", err)
        assert.has_error(function() usbd.parse_size("lots") end,
            "'lots': not a size; use bytes or a number with K, M, G, T or P (1024-based,"
            .. " B or iB after it optional), like 1G or 1.5G")
    end)
    it("refuses numbers that are not whole bytes", function()
        assert.has_error(function() usbd.parse_size(-1, "size") end)
        assert.has_error(function() usbd.parse_size(1.5, "size") end)
    end)
end)

describe("usbd.size_arg", function()
    it("reads the key, or the default when it is absent", function()
        assert.are.equal(2 ^ 30, usbd.size_arg({ size = "1G" }, "size", "64M"))
        assert.are.equal(64 * 2 ^ 20, usbd.size_arg({}, "size", "64M"))
        assert.are.equal(512, usbd.size_arg({}, "sector", 512))
        assert.is_nil(usbd.size_arg({}, "size"))
    end)
    it("names the key in its error", function()
        local ok, err = pcall(usbd.size_arg, { index = "big" }, "index", "64M")
        assert.is_false(ok)
        assert.matches("^index=big: not a size; ", err)
    end)
end)

describe("the devices' size keys", function()
    -- Each shipped device and example that takes a SIZE key reads it with
    -- usbd.size_arg: the same forms, and an error naming the key.
    local device = require "usbd.device"
    local tmp = os.tmpname()
    os.remove(tmp)
    local cases = {
        { "ramdisk", { size = "1.5M" }, "size" },
        { "filedisk", { path = tmp .. ".img", size = "1.5M" }, "size" },
        { "dedupdisk", { dir = tmp .. ".store", size = "1.5M", cache = "1.5M" }, "cache" },
        { "dedupdisk", { dir = tmp .. ".store2", size = "1.5M", index = "0.5M" }, "index" },
    }
    teardown(function()
        os.remove(tmp .. ".img")
        os.execute("rm -rf '" .. tmp .. ".store' '" .. tmp .. ".store2'")
    end)
    for _, c in ipairs(cases) do
        local name, args, key = c[1], c[2], c[3]
        it(name .. " takes " .. key .. "=" .. args[key] .. " and names " .. key .. "= in its error", function()
            local dev = device.open_stack(name, (function()
                local w = {}
                for k, v in pairs(args) do w[#w + 1] = k .. "=" .. v end
                return w
            end)())
            if key == "size" then assert.are.equal(1.5 * 2 ^ 20, dev:size()) end
            if dev.close then dev:close() end
            local bad = {}
            for k, v in pairs(args) do bad[#bad + 1] = k .. "=" .. (k == key and "10Q" or v) end
            local ok, err = pcall(device.open_stack, name, bad)
            assert.is_false(ok)
            assert.matches(key .. "=10Q: not a size; use bytes", err, 1, true)
            assert.is_nil(err:match("%.lua:%d+:"))
        end)
    end
end)

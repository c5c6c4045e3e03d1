-- Loading device scripts: what is refused, and what the core is told.
local device = require "usbd.device"

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local function script(name, text)
    local path = dir .. "/" .. name
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

describe("usbd.device", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("says whether a path can be opened (usbd.exists)", function()
        assert.are.equal(device.exists, require("usbd").exists)
        assert.is_true(device.exists(script("there.lua", "")))
        assert.is_false(device.exists(dir .. "/not-there.lua"))
    end)

    it("describes the ramdisk's capabilities", function()
        local dev = device.open("devices/ramdisk.lua", { size = "1M" })
        local ex = device.describe("ramdisk", dev, false)
        assert.are.equal(2 ^ 20, tonumber(ex.size))
        assert.are.equal(4096, ex.block_size)
        assert.are.equal(1, ex.can_write)
        assert.are.equal(1, ex.can_trim)
        assert.are.equal(1, ex.can_zero)
        assert.are.equal(0, ex.can_flush)
        local ro = device.describe("ramdisk", dev, true)
        assert.are.equal(0, ro.can_write)
        assert.are.equal(0, ro.can_trim)
    end)

    it("treats a device without write_at as read-only, 512-byte blocks", function()
        local p = script("ro.lua", [[
            return { open = function() return {
                size = function() return 4096 end,
                read_at = function(self, buf) buf:fill(1) end } end }]])
        local ex = device.describe(p, device.open(p, {}), false)
        assert.are.equal(0, ex.can_write)
        assert.are.equal(512, ex.block_size)
    end)

    local refusals = {
        { "syntax.lua", "return {", "cannot load device script" },
        { "raises.lua", "error('boom')", "failed while loading: .*boom" },
        { "noopen.lua", "return {}", "must return a table with an open%(args%) function" },
        { "openfails.lua", "return { open = function() error('no disk') end }", "open failed: .*no disk" },
        { "nosize.lua", "return { open = function() return { read_at = function() end } end }",
          "has no size%(%) method" },
        { "noread.lua", "return { open = function() return { size = function() return 1 end } end }",
          "has no read_at%(%) method" },
    }
    for _, case in ipairs(refusals) do
        it("refuses " .. case[1] .. " in one line", function()
            local p = script(case[1], case[2])
            local ok, err = pcall(device.open, p, {})
            assert.is_false(ok)
            assert.matches(case[3], err)
            assert.is_nil(err:find("\n"))
        end)
    end

    it("refuses a bad size or block size", function()
        local p = script("badsize.lua", [[
            return { open = function(a) return {
                size = function() return tonumber(a.size) or a.size end,
                block_size = function() return tonumber(a.bs) end,
                read_at = function() end } end }]])
        assert.has_error(function() device.describe(p, device.open(p, { size = "-1", bs = "512" })) end)
        assert.has_error(function() device.describe(p, device.open(p, { size = "x", bs = "512" })) end)
        assert.has_error(function() device.describe(p, device.open(p, { size = "4096", bs = "1000" })) end)
        assert.has_no.errors(function() device.describe(p, device.open(p, { size = "4096", bs = "4096" })) end)
    end)
end)

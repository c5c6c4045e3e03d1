-- The example transforms: each keeps the contract on the ramdisk and on the
-- filedisk, and does what it says.
local usbd = require "usbd"
local h = require "device_helper"
local conforms = require "usbd.conformance"

local function ram(size) return usbd.open_device("ramdisk", { size = size or "1M" }) end
local function file(size)
    local path = os.tmpname()
    os.remove(path)
    local dev = usbd.open_device("filedisk", { path = path, size = size or "1M" })
    return dev, path
end

describe("every example", function()
    local layers = {
        { "cowdisk", {} },
        { "slowdisk", { latency = "0", all = "true" } },
        { "faultdisk", { ops = "read", range = "2M-3M" } },
        { "cachedisk", { size = "64K", block = "8K" } },
        { "tracedisk", { out = "/dev/null" } },
    }
    for _, l in ipairs(layers) do
        it(l[1] .. " keeps the contract on the ramdisk and the filedisk (flush and close too)", function()
            conforms(usbd.open_device(l[1], l[2], ram()))
            local base, path = file()
            local dev = usbd.open_device(l[1], l[2], base)
            assert.is_function(dev.flush)
            assert.is_function(dev.trim)
            conforms(dev)
            os.remove(path)
        end)
    end
end)

describe("faultdisk", function()
    local function fault(args) return usbd.open_device("faultdisk", args, ram()) end
    local function fails(dev, fn)
        local ok, err = pcall(fn, dev)
        return not ok and (usbd.errno_of(err) and tostring(err) or "lua") or nil
    end

    it("fails reads in its ranges only", function()
        local dev = fault { range = "4K-8K,64K-65K" }
        assert.are.equal("EIO", fails(dev, function(d) h.read(d, 4095, 2) end))
        assert.are.equal("EIO", fails(dev, function(d) h.read(d, 65000, 1000) end))
        assert.is_nil(fails(dev, function(d) h.read(d, 8192, 4096) end))
    end)

    it("fails every Nth matching request, with the errno asked for", function()
        local dev = fault { ops = "write", every = "3", error = "ENOSPC" }
        local got = {}
        for i = 1, 6 do got[i] = fails(dev, function(d) h.write(d, 0, "x") end) or "ok" end
        assert.are.same({ "ok", "ok", "ENOSPC", "ok", "ok", "ENOSPC" }, got)
        assert.is_nil(fails(dev, function(d) h.read(d, 0, 1) end))  -- reads were not asked for
    end)

    it("fails a rate of them, the same ones for the same seed", function()
        local function run()
            local dev = fault { rate = "30%", seed = "42" }
            local n, pattern = 0, {}
            for i = 1, 1000 do
                pattern[i] = fails(dev, function(d) h.read(d, 0, 1) end) and 1 or 0
                n = n + pattern[i]
            end
            return n, table.concat(pattern)
        end
        local n, a = run()
        local _, b = run()
        assert.is_true(n > 220 and n < 380, "30% of 1000, got " .. n)
        assert.are.equal(a, b)
    end)

    it("fails flushes and trims when asked, and raises plain Lua errors for error=lua", function()
        local base, path = file()
        local dev = usbd.open_device("faultdisk", { ops = "flush,trim", error = "lua" }, base)
        assert.are.equal("lua", fails(dev, function(d) d:flush() end))
        assert.are.equal("lua", fails(dev, function(d) d:trim(0, 4096) end))
        assert.is_nil(fails(dev, function(d) h.write(d, 0, "ok") end))
        dev:close()
        os.remove(path)
    end)

    it("refuses what it does not understand", function()
        assert.error_matches(function() fault { ops = "reed" } end, "'reed' is not one of")
        assert.error_matches(function() fault { rate = "2" } end, "rate=")
        assert.error_matches(function() fault { error = "EBOGUS" } end, "no errno named")
    end)
end)

describe("cowdisk", function()
    it("leaves the base as it was; trim reads as zeroes over it", function()
        local base = ram()
        h.write(base, 0, ("b"):rep(20000))
        local dev = usbd.open_device("cowdisk", {}, base)
        h.write(dev, 100, ("c"):rep(5000))
        dev:trim(8192, 4096)
        assert.are.equal(("b"):rep(100) .. ("c"):rep(5000) .. ("b"):rep(3092) .. ("\0"):rep(4096) .. ("b"):rep(100),
            h.read(dev, 0, 12388))
        assert.are.equal(("b"):rep(20000), h.read(base, 0, 20000))
    end)

    it("keeps changed blocks in its overlay file, not in memory", function()
        local path = os.tmpname()
        os.remove(path)
        local dev = usbd.open_device("cowdisk", { overlay = path }, ram("4M"))
        h.write(dev, 0, ("z"):rep(2 ^ 20))
        local f = usbd.file.open(path)
        assert.are.equal(4 * 2 ^ 20, f:size())
        assert.is_true(f:allocated() >= 2 ^ 20)
        f:close()
        dev:close()
        os.remove(path)
    end)

    it("writes over a base that cannot", function()
        local T = usbd.transform()
        T.write_at, T.trim, T.write_zeroes = false, false, false
        local dev = usbd.open_device("cowdisk", {}, T:wrap(ram()))
        assert.is_function(dev.write_at)
        conforms(dev)
    end)
end)

describe("cachedisk", function()
    it("serves repeated reads from memory, bounded, and sees writes", function()
        local base = ram()
        local dev = usbd.open_device("cachedisk", { size = "32K", block = "8K" }, base)
        h.write(dev, 0, ("a"):rep(65536))
        for _ = 1, 3 do h.read(dev, 0, 8192) end
        local s = dev:stats()
        assert.are.equal(1, s.cache_misses)
        assert.are.equal(2, s.cache_hits)
        for b = 0, 7 do h.read(dev, b * 8192, 1) end  -- more blocks than fit
        assert.is_true(#dev.slots <= 4)
        h.write(dev, 8192 * 7, "new")
        assert.are.equal("new", h.read(dev, 8192 * 7, 3))
        h.write(base, 8192 * 7, "old")  -- behind its back: it still has its copy
        assert.are.equal("new", h.read(dev, 8192 * 7, 3))
    end)
end)

describe("tracedisk", function()
    it("writes one line per request", function()
        local out = os.tmpname()
        local dev = usbd.open_device("tracedisk", { out = out }, ram())
        h.write(dev, 512, "hi")
        h.read(dev, 512, 2)
        dev:trim(0, 4096)
        dev:close()
        local f = io.open(out)
        local text = f:read("*a")
        f:close()
        os.remove(out)
        assert.is_truthy(text:find("\n[%d.]+%s+write%s+512%s+2%s+ok"))
        assert.is_truthy(text:find("\n[%d.]+%s+read%s+512%s+2%s+ok"))
        assert.is_truthy(text:find("\n[%d.]+%s+trim%s+0%s+4096%s+ok"))
    end)
end)

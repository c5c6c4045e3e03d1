-- usbd.now() and usbd.stats(): the clock devices use, and the server's
-- statistics as a table (src/server/stats.c).
local usbd = require "usbd"

describe("usbd.now", function()
    it("is a number of seconds that advances", function()
        local t0 = usbd.now()
        assert.are.equal("number", type(t0))
        usbd.jobs.sleep(0.02)
        local t1 = usbd.now()
        assert.is_true(t1 - t0 >= 0.015 and t1 - t0 < 5)
    end)
end)

describe("usbd.stats", function()
    it("has every kind of request and their total", function()
        local s = usbd.stats()
        assert.are.equal("number", type(s.uptime))
        for _, kind in ipairs { "read", "write", "flush", "trim", "write_zeroes", "block_status", "cache", "other", "all" } do
            local k = s[kind]
            assert.is_table(k, kind)
            for _, field in ipairs { "requests", "bytes", "errors", "p50", "p90", "p99", "max" } do
                assert.are.equal("number", type(k[field]), kind .. "." .. field)
            end
        end
        assert.are.equal(0, s.all.requests)  -- nothing served here
    end)
end)

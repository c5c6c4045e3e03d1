-- The server's room for LuaJIT's compiled code (usbd.server.main): more
-- traces and machine code than LuaJIT's defaults hold, compiled without
-- LuaJIT throwing them all away (a flush) to make room.
local util = require "jit.util"
local server = require "usbd.server.main"

describe("the server's JIT limits", function()
    it("hold over 1500 traces and 1 MiB of machine code with no flush", function()
        server.set_jit_limits()
        local flushes, traces, bytes = 0, 0, 0
        local function on_trace(what, tr)
            if what == "flush" then
                flushes = flushes + 1
            elseif what == "stop" then
                traces, bytes = traces + 1, bytes + #util.tracemc(tr)
            end
        end
        -- 2000 functions, each a hot loop of 24 multiply-adds: a trace each.
        local body = {}
        for k = 1, 24 do body[k] = ("s%d = s%d * %d.5 + i"):format(k % 4, (k + 1) % 4, k) end
        local src = "local s0, s1, s2, s3 = 0, 0, 0, 0 for i = 1, 100 do " .. table.concat(body, " ")
            .. " end return s0 + s1 + s2 + s3 + %d"
        jit.attach(on_trace, "trace")
        for i = 1, 2000 do assert(load(src:format(i)))() end
        jit.attach(on_trace)
        -- Well past both of LuaJIT's defaults (1000 traces, 512 KiB), as
        -- a few loops may fail to compile.
        assert.is_true(traces > 1500)
        assert.is_true(bytes > 1024 * 1024)
        assert.are.equal(0, flushes)
    end)
end)

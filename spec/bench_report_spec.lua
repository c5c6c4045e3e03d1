-- bench/report.lua: the tables make bench prints, from run.sh's records.
-- (Run as make bench runs it: luajit, a log file, stdout.)

local function report(lines)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    local p = assert(io.popen("luajit bench/report.lua table " .. path))
    local out = p:read("*a")
    p:close()
    os.remove(path)
    return out
end

local function rec(...) return table.concat({ ... }, "\t") end

local head = {
    rec("group", "g", "a group"),
    rec("server", "g", "sub", "subject", "ok", "cmd"),
    rec("server", "g", "ref", "reference", "ok", "cmd"),
    rec("job", "g", "j", "a job"),
}

local function with(results)
    local t = {}
    for _, l in ipairs(head) do t[#t + 1] = l end
    for _, l in ipairs(results) do t[#t + 1] = l end
    return t
end

describe("bench/report.lua", function()
    it("shows each server's median CPU per request, and the subject's over the others'", function()
        local out = report(with {
            -- subject: 1.0 s and 1.4 s over 10000 requests (median 120 us),
            -- its Lua thread 4 s and 4.5 s of 5 s (85%); reference: 0.5 s
            -- and 0.7 s (60 us): twice as dear
            rec("result", "g", "j", "sub", "1", "100", "1000", "10000", "1.0", "4.0", "5"),
            rec("result", "g", "j", "sub", "2", "100", "1000", "10000", "1.4", "4.5", "5"),
            rec("result", "g", "j", "ref", "1", "200", "2000", "10000", "0.5", "-", "5"),
            rec("result", "g", "j", "ref", "2", "200", "2000", "10000", "0.7", "-", "5"),
        })
        assert.truthy(out:find("subject%s+100%s+1000%s+0%%%s+120us%s+85%%%s+2"), out)
        assert.truthy(out:find("reference%s+200%s+2000%s+0%%%s+60.0us%s+%-%s+2"), out)
        assert.truthy(out:find("ratio %(median%)"), out)
        assert.truthy(out:find("a job%s+0.50x"), out)
        assert.truthy(out:find("CPU per request%s+subject / reference\n%s+a job%s+2.00x"), out)
    end)

    it("leaves CPU out where it is unknown (a server not ours, an older log)", function()
        local out = report(with {
            rec("result", "g", "j", "sub", "1", "100", "1000", "10000", "-"),
            rec("result", "g", "j", "ref", "1", "200", "2000"),
        })
        assert.truthy(out:find("subject%s+100%s+1000%s+%-%s+%-%s+%-%s+1"), out)
        assert.truthy(out:find("a job%s+0.50x"), out)
        assert.falsy(out:find("CPU per request"), out)
    end)
end)

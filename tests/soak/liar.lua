-- liar.lua: a ramdisk that silently loses one write in 500 and "trims"
-- without zeroing once in 50. tests/soak/run.sh serves it to prove the soak
-- notices a device that lies; never use it for anything else.
local ramdisk = dofile((debug.getinfo(1, "S").source:sub(2):gsub("tests/soak/liar.lua$", "devices/ramdisk.lua")))

local function open(args)
    local dev = ramdisk.open(args)
    local n = 0
    local write_at, trim = dev.write_at, dev.trim
    function dev:write_at(buf, pos)
        n = n + 1
        if n % 500 ~= 0 then write_at(self, buf, pos) end
    end
    function dev:trim(pos, count)
        n = n + 1
        if n % 50 ~= 0 then trim(self, pos, count) end
    end
    return dev
end

return { open = open }

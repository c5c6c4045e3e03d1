-- For the specs of the dedupdisk's store (lua/usbd/dedup/).
local M = {}

-- A class of the given parts' methods alone (a spec of one part adds what
-- it needs of the others).
function M.class(...)
    local class = {}
    for _, part in ipairs({ ... }) do
        for name, fn in pairs(part.methods) do class[name] = fn end
    end
    class.__index = class
    return class
end

return M

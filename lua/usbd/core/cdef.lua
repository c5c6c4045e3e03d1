-- The FFI declarations of the C API. The build makes them from the public
-- headers (src/usbd.h and what it includes; tools/gen-cdef.lua), so the
-- headers are their one source: cdef.h beside this file where installed,
-- build/cdef.h in a source tree. tests/unit/cdef_agrees.lua checks that
-- LuaJIT lays their structs out as the C compiler does.
local ffi = require "ffi"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local tried = {}
for _, path in ipairs { here .. "/cdef.h", here .. "/../../../build/cdef.h" } do
    local f = io.open(path)
    if f then
        local text = f:read("*a")
        f:close()
        ffi.cdef(text)
        return
    end
    tried[#tried + 1] = path
end
error("usbd.core.cdef: the C API's declarations are missing (run make): none of " .. table.concat(tried, ", "), 0)

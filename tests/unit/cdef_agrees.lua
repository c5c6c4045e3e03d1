-- Proves lua/usbd/cdef.lua and src/usbd.h agree. Writes a C file that
-- includes usbd.h and then (1) declares every cdef function again, which a
-- C compiler rejects on any difference of type, (2) asserts every cdef
-- struct's size and field offsets as LuaJIT computed them, (3) asserts every
-- cdef enum value; and checks that each function of usbd.h is in the cdef.
-- usage: luajit tests/unit/cdef_agrees.lua OUT.c
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local ffi = require "ffi"

local function read(path)
    local f = assert(io.open(path))
    local s = f:read("*a")
    f:close()
    return s
end

-- The cdef text, as cdef.lua hands it to ffi.cdef.
local cdef_text
local real_cdef = ffi.cdef
ffi.cdef = function(s) cdef_text = (cdef_text or "") .. s; return real_cdef(s) end
require "usbd.cdef"
ffi.cdef = real_cdef

local out = { '#include <stddef.h>', '#include "usbd.h"', '' }
local function emit(s) out[#out + 1] = s end

-- (1) functions: every prototype, verbatim.
local cdef_funcs = {}
for proto in cdef_text:gmatch("\n([%w_][%w_ %*]-[%w_]+%s*%b()%s*);") do
    if not proto:match("^typedef") then
        emit(proto .. ";")
        cdef_funcs[proto:match("([%w_]+)%s*%(")] = true
    end
end

-- (2) structs: size and every field's offset.
for name, body in cdef_text:gmatch("typedef struct ([%w_]+) (%b{})") do
    emit(("_Static_assert(sizeof(%s) == %d, \"size of %s\");"):format(name, ffi.sizeof(name), name))
    for field in body:gmatch("([%w_]+);") do
        emit(("_Static_assert(offsetof(%s, %s) == %d, \"offset of %s.%s\");")
            :format(name, field, ffi.offsetof(name, field), name, field))
    end
end

-- (3) enum constants.
for body in cdef_text:gmatch("enum%s*(%b{})") do
    for const in body:gmatch("([%w_]+)%s*=") do
        emit(("_Static_assert(%s == %d, \"value of %s\");"):format(const, tonumber(ffi.C[const]), const))
    end
end

-- Every function the header declares must be in the cdef too.
local missing = {}
for name in read("src/usbd.h"):gmatch("\n[%w_][%w_ %*]-([%w_]+)%(") do
    if not cdef_funcs[name] then missing[#missing + 1] = name end
end
if #missing > 0 then
    io.stderr:write("in src/usbd.h but not in lua/usbd/cdef.lua: ", table.concat(missing, ", "), "\n")
    os.exit(1)
end

local f = assert(io.open(arg[1], "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()

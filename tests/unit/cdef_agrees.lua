-- Proves the FFI declarations (what lua/usbd/core/cdef.lua hands to ffi.cdef,
-- generated from src/usbd.h's headers by the build) agree with the C
-- compiler. Writes a C program that includes usbd.h and then (1) declares
-- every cdef function again, which a C compiler rejects on any difference
-- of type, and takes its address, which the linker rejects if the core does
-- not define it, (2) asserts every cdef struct's size and field offsets as
-- LuaJIT computed them, (3) asserts every cdef enum value.
-- usage: luajit tests/unit/cdef_agrees.lua OUT.c
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local ffi = require "ffi"

-- The cdef text, as cdef.lua hands it to ffi.cdef, without its comments.
local cdef_text
local real_cdef = ffi.cdef
ffi.cdef = function(s) cdef_text = (cdef_text or "") .. s; return real_cdef(s) end
require "usbd.core.cdef"
ffi.cdef = real_cdef
cdef_text = "\n" .. cdef_text:gsub("/%*.-%*/", "")

local out = { '#include <stddef.h>', '#include "usbd.h"', '' }
local function emit(s) out[#out + 1] = s end

-- (1) functions: every prototype, verbatim, and its address.
local funcs = {}
for proto in cdef_text:gmatch("\n([%w_][%w_ %*]-[%w_]+%s*%b()%s*);") do
    if not proto:match("^typedef") then
        emit(proto .. ";")
        funcs[#funcs + 1] = proto:match("([%w_]+)%s*%(")
    end
end
if #funcs == 0 then
    io.stderr:write("no functions in the cdef\n")
    os.exit(1)
end
emit("static void *const defined[] = {\n    (void *)" .. table.concat(funcs, ",\n    (void *)") .. "\n};")
emit("int main(void) { return defined[0] == NULL; }")

-- (2) structs: size and every field's offset.
for name, body in cdef_text:gmatch("typedef struct ([%w_]+) (%b{})") do
    emit(("_Static_assert(sizeof(%s) == %d, \"size of %s\");"):format(name, ffi.sizeof(name), name))
    for field in body:gmatch("([%w_]+)[%[%d%]]*;") do
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

local f = assert(io.open(arg[1], "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()

-- The C core's symbols. Inside usbd-lua they are the executable's own;
-- elsewhere (busted specs under plain luajit) they come from libusbd.so.
local ffi = require "ffi"
require "usbd.core.cdef"

if pcall(function() return ffi.C.usbd_version end) then
    return ffi.C
end

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
return ffi.load(os.getenv("USBD_LIB") or (here .. "/../../../build/libusbd.so"))

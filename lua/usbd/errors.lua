-- Errno errors a device raises: error(usbd.E.NOSPC). The client sees the
-- matching NBD error; any other Lua error reaches it as EIO.
local Errno = {}
Errno.__index = Errno
Errno.__tostring = function(e) return "E" .. e.name end

-- Linux errno numbers (the same on every architecture we run on).
local numbers = {
    PERM = 1, NOENT = 2, IO = 5, NXIO = 6, AGAIN = 11, NOMEM = 12, ACCES = 13,
    FAULT = 14, BUSY = 16, EXIST = 17, NODEV = 19, INVAL = 22, FBIG = 27,
    NOSPC = 28, ROFS = 30, RANGE = 34, NOSYS = 38, NODATA = 61, OVERFLOW = 75,
    BADMSG = 74, ILSEQ = 84, NOTSUP = 95, SHUTDOWN = 108, TIMEDOUT = 110,
    STALE = 116, DQUOT = 122, CANCELED = 125,
}

local E = {}
for name, errno in pairs(numbers) do
    E[name] = setmetatable({ name = name, errno = errno }, Errno)
end
setmetatable(E, {
    __index = function(_, name)
        error("usbd.E has no errno named '" .. tostring(name) .. "'", 2)
    end,
})

-- The errno number carried by err, or nil if err is not an errno error.
local function errno_of(err)
    if getmetatable(err) == Errno then return err.errno end
    return nil
end

-- The error for an errno number (from a C call): its usbd.E, or EIO for
-- one not listed there.
local by_number = {}
for _, e in pairs(E) do by_number[e.errno] = e end
local function of_errno(errno)
    return by_number[errno] or E.IO
end

-- For xpcall in a device that catches an error to re-raise it: an errno
-- error stays itself; any other gains the traceback of where it was raised,
-- so the log shows the base's frames, not only the re-raise's.
local function keep_trace(err)
    if errno_of(err) or (type(err) == "string" and err:find("\nstack traceback:", 1, true)) then
        return err
    end
    return debug.traceback(tostring(err), 2)
end

return { E = E, errno_of = errno_of, of_errno = of_errno, keep_trace = keep_trace }

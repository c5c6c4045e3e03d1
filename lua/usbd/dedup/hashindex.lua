-- usbd.dedup.hashindex: the dedupdisk's advisory table from 16-byte content
-- hashes (XXH3-128) to ids, in a file mapped shared: it survives a restart
-- and a kill -9 (the page cache keeps it) and is never synced, in bounded
-- memory.
--
--   local hashindex = require "usbd.dedup.hashindex"
--   local idx, fresh = hashindex.open(path, bytes)  -- room for about
--                          -- bytes of entries (8 each); fresh: made empty
--   idx:lookup(hashes, n, ids)  -- hashes: uint8_t* of 16*n bytes; ids:
--                               --   uint64_t[n] out, 0 where none
--   idx:get(hash)          -- the id, a Lua number; 0: none
--   idx:put(hash, id)      -- replaces hash's entry; may evict another's
--   idx:remove(hash, id)   -- only if hash's entry still holds id
--   idx:clear(), idx:slots(), idx:bytes() (the file's), idx:close()
--   idx:used()             -- entries not empty
--   idx:evicted()          -- puts since open that pushed another entry out
--
-- A hash is a uint8_t* or a 16-byte string. Advisory: an entry may be
-- missing (evicted when its bucket of 8 was full, or lost with the page
-- cache), stale, or another hash's (an entry keeps 24 bits of its hash),
-- so the caller checks every hit against its own records, and rebuilds
-- the table (clear, then put) when it comes back fresh. Ids are never 0;
-- above 2^40 - 1 they are not kept. Every call is in memory and runs on
-- the spot. The file closes when the object is collected, or at
-- idx:close().
local ffi = require "ffi"
local C = require "usbd.core"
local usbd = require "usbd"

local M = {}

local Index = {}
Index.__index = Index

local function handle(self) return usbd.jobs.resource(self, "handle") end

local function checked(hash)
    if type(hash) == "string" and #hash ~= 16 then
        error(("usbd.dedup.hashindex: a hash of %d bytes, not 16"):format(#hash), 3)
    elseif hash == nil then  -- nil, or a NULL pointer
        error("usbd.dedup.hashindex: no hash (nil)", 3)
    end
    return hash
end

-- n: a whole number; hashes and ids there (a string of hashes long enough).
function Index:lookup(hashes, n, ids)
    local h = handle(self)
    if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
        error(("usbd.dedup.hashindex: lookup of %s hashes"):format(tostring(n)), 2)
    elseif n > 0 and (hashes == nil or ids == nil or (type(hashes) == "string" and #hashes < 16 * n)) then
        error(("usbd.dedup.hashindex: lookup of %d hashes without %d bytes of hashes and an array for their ids")
            :format(n, 16 * n), 2)
    end
    C.usbd_hashindex_lookup(h, hashes, n, ids)
end

function Index:get(hash)
    return tonumber(C.usbd_hashindex_get(handle(self), checked(hash)))
end

function Index:put(hash, id)
    C.usbd_hashindex_put(handle(self), checked(hash), id)
end

function Index:remove(hash, id)
    C.usbd_hashindex_remove(handle(self), checked(hash), id)
end

-- n removes at once: hashes[i] (pointers to 16 bytes; NULL: none) and
-- ids[i], for i from 0 (their windows prefetched ahead: faster than n
-- removes one by one in a large table).
function Index:remove_many(hashes, ids, n)
    local h = handle(self)
    if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
        error(("usbd.dedup.hashindex: remove_many of %s entries"):format(tostring(n)), 2)
    elseif n > 0 and (hashes == nil or ids == nil) then
        error(("usbd.dedup.hashindex: remove_many of %d entries without arrays of hashes and ids"):format(n), 2)
    end
    C.usbd_hashindex_remove_many(h, hashes, ids, n)
end

function Index:clear() C.usbd_hashindex_clear(handle(self)) end

function Index:slots() return tonumber(C.usbd_hashindex_slots(handle(self))) end
function Index:used() return tonumber(C.usbd_hashindex_used(handle(self))) end
function Index:evicted() return tonumber(C.usbd_hashindex_evicted(handle(self))) end

function Index:bytes()
    return C.USBD_HASHINDEX_HEADER + self:slots() * C.USBD_HASHINDEX_ENTRY
end

function Index:__tostring()
    return ("usbd.dedup.hashindex(%s)"):format(self.path)
end

function Index:close()
    if self.handle then
        C.usbd_hashindex_close(ffi.gc(self.handle, nil))
        self.handle = nil
    end
end

-- Open (creating, or remaking at another size) the table file at path.
-- Returns the object and whether it starts empty. Raises a one-line error.
function M.open(path, bytes)
    local fresh, err = ffi.new("int[1]"), ffi.new("char[256]")
    local h = C.usbd_hashindex_open(path, bytes, fresh, err, 256)
    if h == nil then
        error(("cannot open the hash index %s: %s"):format(path, ffi.string(err)), 0)
    end
    return setmetatable({ path = path, handle = ffi.gc(h, C.usbd_hashindex_close) }, Index),
        fresh[0] == 1
end

return M

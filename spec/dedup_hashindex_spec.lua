-- usbd.dedup.hashindex: the Lua object over src/services/hashindex.c.
local ffi = require "ffi"
local usbd = require "usbd"
local hashindex = require "usbd.dedup.hashindex"

local dir, scratch = require("device_helper").scratch("hashindex")

-- A 16-byte hash as a string, as the dedupdisk's are (XXH3-128: an
-- entry keeps only part of its hash, so made-up hashes alike in those bytes
-- would share entries).
local function hash(i)
    return usbd.hash128(tostring(i))
end

describe("usbd.dedup.hashindex", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("takes hashes as 16-byte strings and as pointers", function()
        local idx, fresh = hashindex.open(scratch(), 1e6)
        assert.is_true(fresh)
        assert.equals(math.floor(1e6 / 64) * 8, idx:slots())
        assert.equals(64 + idx:slots() * 8, idx:bytes())
        local p = ffi.new("uint8_t[16]")
        ffi.copy(p, hash(1), 16)
        idx:put(hash(1), 10)
        assert.equals(10, idx:get(p))
        idx:put(p, 11)
        assert.equals(11, idx:get(hash(1)))
        assert.equals(0, idx:get(hash(2)))
        assert.has_error(function() idx:get("short") end, "usbd.dedup.hashindex: a hash of 5 bytes, not 16")
        idx:close()
    end)

    it("looks up many at once, removes only a matching id, clears", function()
        local idx = hashindex.open(scratch(), 1e6)
        local N = 1000
        local hashes = ffi.new("uint8_t[?]", 16 * N)
        for i = 0, N - 1 do
            ffi.copy(hashes + 16 * i, hash(i + 1), 16)
            idx:put(hash(i + 1), i + 100)
        end
        local ids = ffi.new("uint64_t[?]", N)
        idx:lookup(hashes, N, ids)
        for i = 0, N - 1 do assert.equals(i + 100, tonumber(ids[i])) end
        idx:remove(hash(1), 7)
        assert.equals(100, idx:get(hash(1)))
        idx:remove(hashes, 100)
        assert.equals(0, idx:get(hash(1)))
        idx:clear()
        idx:lookup(hashes, N, ids)
        for i = 0, N - 1 do assert.equals(0, tonumber(ids[i])) end
        idx:close()
        assert.has_error(function() idx:get(hash(2)) end)
    end)

    -- Each of these followed a NULL or ran past the arrays in C (a crash).
    it("removes many at once, each only with its own id; a NULL hash is none", function()
        local idx = hashindex.open(scratch(), 1e6)
        local n = 100
        local bytes = ffi.new("uint8_t[?]", 16 * n)
        local ptrs, ids = ffi.new("const uint8_t *[?]", n + 1), ffi.new("uint64_t[?]", n + 1)
        for i = 0, n - 1 do
            ffi.copy(bytes + 16 * i, hash(i + 1), 16)
            idx:put(hash(i + 1), i + 1)
            ptrs[i], ids[i] = bytes + 16 * i, i + 1
        end
        ids[7] = 999            -- not its id: stays
        ptrs[n], ids[n] = nil, 5  -- none
        idx:remove_many(ptrs, ids, n + 1)
        for i = 1, n do
            assert.equals(i == 8 and 8 or 0, idx:get(hash(i)))
        end
        assert.has_error(function() idx:remove_many(nil, ids, 2) end,
            "usbd.dedup.hashindex: remove_many of 2 entries without arrays of hashes and ids")
        assert.has_error(function() idx:remove_many(ptrs, ids, -1) end, "usbd.dedup.hashindex: remove_many of -1 entries")
        idx:close()
    end)

    it("refuses a nil hash and lookups of bad counts with a one-line error", function()
        local idx = hashindex.open(scratch(), 1e5)
        local ids = ffi.new("uint64_t[4]")
        for _, call in ipairs({
            function() return idx:get(nil) end,
            function() idx:put(nil, 5) end,
            function() idx:remove(ffi.cast("uint8_t *", nil), 5) end,
        }) do
            assert.has_error(call, "usbd.dedup.hashindex: no hash (nil)")
        end
        assert.has_error(function() idx:lookup(hash(1), -1, ids) end, "usbd.dedup.hashindex: lookup of -1 hashes")
        assert.has_error(function() idx:lookup(hash(1), 0.5, ids) end, "usbd.dedup.hashindex: lookup of 0.5 hashes")
        assert.has_error(function() idx:lookup(hash(1), 2, ids) end,
            "usbd.dedup.hashindex: lookup of 2 hashes without 32 bytes of hashes and an array for their ids")
        assert.has_error(function() idx:lookup(nil, 1, ids) end)
        assert.has_error(function() idx:lookup(hash(1), 1, nil) end)
        idx:put(hash(1), 9)
        idx:lookup(hash(1), 1, ids)
        assert.equals(9, tonumber(ids[0]))
        idx:lookup(nil, 0, nil)  -- nothing to do: fine
        idx:close()
    end)

    it("survives a kill -9 without a sync, and starts fresh at another size", function()
        local path = scratch()
        local child = ([[
            package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
            local ffi = require "ffi"
            local idx = require("usbd.dedup.hashindex").open(%q, 65536)
            idx:put(%q, 4242)
            ffi.cdef "int getpid(void); int kill(int pid, int sig);"
            ffi.C.kill(ffi.C.getpid(), 9)
        ]]):format(path, hash(5))
        local f = assert(io.open(dir .. "/child.lua", "w"))
        f:write(child)
        f:close()
        os.execute("luajit " .. dir .. "/child.lua 2>/dev/null")
        local idx, fresh = hashindex.open(path, 65536)
        assert.is_false(fresh)
        assert.equals(4242, idx:get(hash(5)))
        idx:close()
        idx, fresh = hashindex.open(path, 2 * 65536)
        assert.is_true(fresh)
        assert.equals(0, idx:get(hash(5)))
        idx:close()
    end)

    it("refuses every call once closed", function()
        local idx = hashindex.open(scratch(), 4096)
        idx:close()
        local ids = ffi.new("uint64_t[1]")
        require("device_helper").all_fail({
            get = function() idx:get(hash(1)) end,
            put = function() idx:put(hash(1), 1) end,
            remove = function() idx:remove(hash(1), 1) end,
            lookup = function() idx:lookup(hash(1), 1, ids) end,
            clear = function() idx:clear() end,
            used = function() idx:used() end,
        }, "hashindex_spec%.lua:%d+: usbd%.dedup%.hashindex%(.-%) is closed$")
    end)

    it("gives a one-line error for a path it cannot create", function()
        local file = scratch()
        io.open(file, "w"):close()
        local ok, err = pcall(hashindex.open, file .. "/idx", 4096)
        assert.is_false(ok)
        assert.equals(("cannot open the hash index %s/idx: Not a directory"):format(file), err)
    end)
end)

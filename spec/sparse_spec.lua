local usbd = require "usbd"

local function bytes(s)
    local b = usbd.buffer(#s)
    b:copy_from(s)
    return b
end

local function read(store, pos, n)
    local b = usbd.buffer(n)
    b:fill(0xee)
    store:read(b, pos)
    return b:tostring()
end

local CHUNK = 65536

describe("usbd.sparse", function()
    it("is zeroes until written, and reading takes no memory", function()
        local store = usbd.sparse(256 * 2 ^ 20)
        assert.are.equal(256 * 2 ^ 20, store:size())
        local b = usbd.buffer(8 * 2 ^ 20)
        for pos = 0, store:size() - b.len, b.len do
            b:fill(1)
            store:read(b, pos)
            assert.is_true(b:is_zero())
        end
        assert.are.equal(0, store:allocated())
        assert.are.equal(0, store:stats().mapped)
    end)

    it("reads back what was written across chunks, and nothing around it", function()
        local store = usbd.sparse(4 * 2 ^ 20)
        local data = ("0123456789abcdef"):rep(9000)  -- 144000 bytes: three chunks
        store:write(bytes(data), CHUNK - 7)
        assert.are.equal("\0" .. data .. "\0", read(store, CHUNK - 8, #data + 2))
        assert.are.equal(4 * CHUNK, store:allocated())
    end)

    it("discard zeroes the range and gives whole chunks back", function()
        local store = usbd.sparse(4 * 2 ^ 20)
        store:write(bytes(("x"):rep(4 * CHUNK)), 0)
        store:discard(100, 3 * CHUNK)
        assert.are.equal(2 * CHUNK, store:allocated())
        assert.are.equal("x" .. ("\0"):rep(3 * CHUNK) .. "x", read(store, 99, 3 * CHUNK + 2))
    end)

    it("lists extents as usbd.HOLE + usbd.ZERO and data", function()
        local store = usbd.sparse(2 ^ 30)
        local HZ = usbd.HOLE + usbd.ZERO
        assert.are.same({ 2 ^ 30, HZ }, store:extents(0, 2 ^ 30))
        store:write(bytes("a"), 5 * CHUNK + 1)
        assert.are.same({ 5 * CHUNK - 10, HZ, CHUNK, 0, 2 ^ 30 - 6 * CHUNK, HZ }, store:extents(10, 2 ^ 30 - 10))
        assert.are.same({ 3, 0 }, store:extents(5 * CHUNK, 3))
        store:discard(5 * CHUNK, CHUNK)
        assert.are.same({ 2 ^ 30, HZ }, store:extents(0, 2 ^ 30))
    end)

    it("refuses ranges outside, with a clear message", function()
        local store = usbd.sparse(1000)
        assert.has_error(function() store:write(bytes("ab"), 999) end,
            "sparse:write(2 bytes at 999) reaches outside a store of 1000 bytes")
        assert.has_error(function() store:read(usbd.buffer(1), 1000) end)
        assert.has_error(function() store:discard(-1, 2) end)
        assert.has_error(function() store:extents(0, 1001) end)
        assert.has_error(function() usbd.sparse(-1) end)
        assert.has_error(function() usbd.sparse("1G") end)
    end)

    it("says what it holds", function()
        local store = usbd.sparse(2 ^ 20)
        store:write(bytes("z"), 0)
        assert.are.equal("usbd.sparse(1048576 bytes, 65536 allocated)", tostring(store))
        local s = store:stats()
        assert.are.equal(65536, s.allocated)
        assert.are.equal(65536, s.chunk_size)
        assert.are.equal(2 ^ 20, s.size)
    end)
end)

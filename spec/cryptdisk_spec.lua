-- examples/cryptdisk.lua and usbd.cipher: AES-256-XTS as dm-crypt does it.
local usbd = require "usbd"
local h = require "device_helper"
local conforms = require "usbd.conformance"

local KEY = ("00112233445566778899aabbccddeeff"):rep(2) .. ("ffeeddccbbaa99887766554433221100"):rep(2)
local function ram() return usbd.open_device("ramdisk", { size = "1M" }) end
local function crypt(base, args)
    args = args or { key = KEY }
    return usbd.open_device("cryptdisk", args, base or ram())
end

describe("usbd.cipher", function()
    it("matches IEEE 1619 XTS-AES-256 vector 10 (data unit 0xff)", function()
        local key = usbd.cipher.hex_key("2718281828459045235360287471352662497757247093699959574966967627"
            .. "3141592653589793238462643383279502884197169399375105820974944592")
        local src, out = usbd.buffer(512), usbd.buffer(512)
        for i = 0, 511 do src.ptr[i] = i % 256 end
        usbd.cipher.xts(key, 512):encrypt(src, out, 0xff * 512)  -- tweak: pos in 512-byte units
        assert.are.equal("1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
            (out:tostring():sub(1, 32):gsub(".", function(c) return ("%02x"):format(c:byte()) end)))
    end)

    it("refuses short keys and equal halves", function()
        assert.has_error(function() usbd.cipher.xts("short") end)
        assert.has_error(function() usbd.cipher.xts(("k"):rep(64)) end, "an XTS key's two halves must differ")
    end)
end)

describe("cryptdisk", function()
    it("keeps the contract on the ramdisk, 512 and 4096-byte sectors", function()
        conforms(crypt(nil, { key = KEY, sector = "512" }))
        conforms(crypt(nil, { key = KEY, sector = "4096" }))
    end)

    it("takes 4096-byte sectors over a device of 4K blocks, 512 otherwise", function()
        assert.are.equal(4096, crypt().sector)
        local T = usbd.transform()
        T.block_size = false
        assert.are.equal(512, crypt(T:wrap(ram())).sector)
    end)

    it("keeps the contract on the filedisk, flush included", function()
        local path = os.tmpname()
        conforms(crypt(usbd.open_device("filedisk", { path = path, size = "1M" })))
        os.remove(path)
    end)

    it("stores only ciphertext, and reads back the plaintext", function()
        local base = ram()
        local dev = crypt(base)
        local text = ("secret "):rep(600)
        h.write(dev, 4096, text)
        assert.are.equal(text, h.read(dev, 4096, #text))
        assert.is_nil(h.read(base, 4096, #text):find("secret", 1, true))
    end)

    it("leaves write_at's buffer as it was", function()
        local dev = crypt()
        local b = usbd.buffer(65536)
        b:fill(0x41)
        dev:write_at(b, 0)
        assert.is_true(b:tostring() == ("A"):rep(65536))
    end)

    it("reads trimmed ranges as zeroes, and gives whole sectors back below", function()
        local base = ram()
        local dev = crypt(base, { key = KEY, sector = "512" })
        h.write(dev, 0, ("x"):rep(8192))
        dev:trim(100, 8000)
        assert.are.equal(("x"):rep(100) .. ("\0"):rep(8000) .. ("x"):rep(92), h.read(dev, 0, 8192))
        assert.are.equal(("\0"):rep(7168), h.read(base, 512, 7168))  -- sectors 1..14: trimmed below
    end)

    it("takes a key file, raw or hex, and says what is wrong with a bad one", function()
        local path = os.tmpname()
        local f = io.open(path, "wb"); f:write(usbd.cipher.hex_key(KEY)); f:close()
        assert.has_no.errors(function() crypt(nil, { keyfile = path }) end)
        f = io.open(path, "wb"); f:write(KEY .. "\n"); f:close()
        assert.has_no.errors(function() crypt(nil, { keyfile = path }) end)
        f = io.open(path, "wb"); f:write("short"); f:close()
        assert.error_matches(function() crypt(nil, { keyfile = path }) end, "128 hex digits")
        os.remove(path)
        assert.error_matches(function() crypt(nil, {}) end, "needs keyfile=FILE")
        assert.error_matches(function() crypt(nil, { key = KEY, sector = "1024" }) end, "512 or 4096")
    end)

    it("does not offer trim over a base that cannot trim", function()
        local T = usbd.transform()
        T.trim, T.write_zeroes = false, false
        local dev = crypt(T:wrap(ram()))
        assert.is_nil(dev.trim)
        assert.is_nil(dev.write_zeroes)
    end)
end)

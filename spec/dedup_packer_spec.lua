-- usbd.dedup.packer: fragments placed into shared blocks, gaps refilled,
-- and the live lists the store keeps.
local packer = require "usbd.dedup.packer"

local BS = 4096

local function counter()
    local n = 0
    return function() n = n + 1 return n end, function() return n end
end

describe("usbd.dedup.packer", function()
    it("puts at least 14 small fragments into one 4 KiB block, each whole", function()
        local pk = packer.new(BS)
        local fresh, used = counter()
        local places = {}
        for i = 1, 20 do
            local pbn, off = pk:place(200, fresh)
            places[i] = { pbn, off }
        end
        assert.are.equal(1, used())           -- 20 x 200 bytes: one block
        for i = 1, 20 do
            assert.are.equal(1, places[i][1])
            assert.is_true(places[i][2] + 200 <= BS)
            for j = 1, i - 1 do               -- no two overlap
                local a, b = places[i][2], places[j][2]
                assert.is_true(a + 200 <= b or b + 200 <= a)
            end
        end
    end)

    it("never splits a fragment across blocks and packs mixed sizes tightly", function()
        local pk = packer.new(BS)
        local fresh, used = counter()
        math.randomseed(7)
        local total, fill = 0, {}
        for _ = 1, 2000 do
            local size = math.random(100, 3500)
            local pbn, off = pk:place(size, fresh)
            assert.is_true(off >= 0 and off + size <= BS)
            fill[pbn] = (fill[pbn] or 0) + size
            assert.is_true(fill[pbn] <= BS)
            total = total + size
        end
        -- Best fit over 8 open blocks: little room lost.
        assert.is_true(used() * BS < total * 1.08, ("%d blocks for %d bytes"):format(used(), total))
    end)

    it("reuses a closed block's tables for the next one it opens, keeping every gap right", function()
        local pk = packer.new(BS, { open = 3 })
        local fresh = counter()
        local placed = {}   -- pbn -> { off1, size1, ... } as placed
        math.randomseed(11)
        for i = 1, 3000 do
            local size = math.random(1, 10) <= 7 and math.random(1500, 3000) or math.random(20, 600)
            local pbn, off = pk:place(size, fresh, i % 5 ~= 0)
            assert.is_true(off >= 0 and off + size <= BS)
            local list = placed[pbn] or {}
            for j = 1, #list, 2 do   -- overlaps nothing placed there before
                assert.is_true(off + size <= list[j] or list[j] + list[j + 1] <= off,
                    ("block %d: %d+%d over %d+%d"):format(pbn, off, size, list[j], list[j + 1]))
            end
            placed[pbn] = list
            packer.add(list, off, size)
            if i % 97 == 0 and pk:open_count() > 0 then pk:forget(pk:open_pbn(1)) end
            if i % 89 == 0 and pbn > 1 and not pk:is_open(pbn - 1) then
                -- an older block with a fragment gone comes back open
                local old = placed[pbn - 1]
                packer.remove(old, old[1], old[2])
                pk:reopen(pbn - 1, old)
            end
        end
    end)

    it("refills the gaps of a reopened block, and only those", function()
        local pk = packer.new(BS, { open = 1 })
        local fresh = counter()
        local live = {}
        for i = 0, 3 do packer.add(live, i * 1000, 1000) end  -- block 7: 4 x 1000
        assert.are.equal(3000, packer.remove(live, 1000, 1000))
        assert.are.equal(2000, packer.remove(live, 3000, 1000))
        assert.is_nil(packer.remove(live, 3000, 1000))
        pk:reopen(7, live)
        local pbn, off = pk:place(900, fresh)
        assert.are.same({ 7, 1000 }, { pbn, off })            -- the 1000-byte gap fits best
        pbn, off = pk:place(1096, fresh)
        assert.are.same({ 7, 3000 }, { pbn, off })            -- the tail
        pbn, off = pk:place(200, fresh)                        -- 100 left in the first gap
        assert.are.same({ 1, 0 }, { pbn, off })               -- a fresh block
        assert.is_false(pk:is_open(7))                         -- open = 1: 7 closed
    end)

    it("with follow, places right after the last fragment when it fits", function()
        local function setup()
            local pk = packer.new(BS)
            pk:reopen(9, { 1000, 1000 })                        -- gaps [0, 1000) and [2000, 4096)
            assert.are.same({ 9, 0 }, { pk:place(500) })         -- best fit
            assert.are.same({ 9, 2000 }, { pk:place(600, nil, true) })  -- 500 left at 500: too small
            return pk
        end
        assert.are.same({ 9, 2600 }, { setup():place(100, nil, true) })  -- follows
        assert.are.same({ 9, 500 }, { setup():place(100) })              -- best fit
        assert.is_nil(setup():place(3000))                                -- no room, no fresh
    end)

    it("forgets a freed block", function()
        local pk = packer.new(BS)
        local fresh = counter()
        local pbn = pk:place(100, fresh)
        assert.is_true(pk:is_open(pbn))
        pk:forget(pbn)
        assert.is_false(pk:is_open(pbn))
        local again = pk:place(100, fresh)
        assert.are_not.equal(pbn, again)
    end)

    it("encodes live lists and finds what is wrong with them", function()
        local live = {}
        packer.add(live, 3000, 96)
        packer.add(live, 0, 1500)
        packer.add(live, 1500, 1)
        assert.are.same({ 0, 1500, 1500, 1, 3000, 96 }, live)
        assert.are.same(live, packer.decode(packer.encode(live)))
        assert.are.equal(12, #packer.encode(live))
        assert.is_nil(packer.decode("abc"))
        assert.are.same({}, packer.problems(live, BS))
        assert.are.equal(1, #packer.problems({ 0, 100, 50, 100 }, BS))
        assert.are.equal(1, #packer.problems({ 4000, 200 }, BS))
        assert.are.equal(1, #packer.problems({ 10, 0 }, BS))
    end)

    it("refuses a fragment larger than a block", function()
        local pk = packer.new(BS)
        assert.has_error(function() pk:place(BS + 1, counter()) end)
    end)
end)

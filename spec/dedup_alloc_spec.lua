-- usbd.dedup.alloc: numbers handed out from free runs, else new; freed
-- ones kept in limbo until the batch that freed them is durable; ids found
-- free in the records, physical blocks in their run records (G).
local ffi = require "ffi"
local usbd = require "usbd"
local F = require "usbd.dedup.format"
local alloc = require "usbd.dedup.alloc"

local dir, scratch = require("device_helper").scratch("alloc")

-- A store with records alone (ids: a free id is one whose slot holds no
-- reference): refs[id] > 0 marks an id in use.
local function records_store()
    local dev = { rc = {}, tick = 0, loads = 0 }
    function dev:load_records(groups)
        for g in pairs(groups) do
            if not self.rc[g] then
                self.loads = self.loads + 1
                self.rc[g] = { slots = ffi.new("struct dedup_slot[64]"), pend = 0, tick = 0 }
            end
        end
    end
    function dev:set_refs(id, refs)
        local g = math.floor(id / 64)
        self:load_records({ [g] = true })
        self.rc[g].slots[id - g * 64].refs = refs
    end
    return dev
end

local function new_stage(seq)
    return { seq = seq, batch = usbd.kv.batch(), runs = {} }
end

local function takes(a, st, n)
    local t = {}
    for i = 1, n do t[i] = a:take(st) end
    return t
end

-- An ids allocator whose ids 1 to n are in use, and free(seq, list): the
-- batch seq frees list.
local function ids_in_use(n)
    local dev = records_store()
    local a = alloc.new(dev, nil, { ids_free = 0, ids_next = 0 }, "ids_free", "ids_next")
    for _, id in ipairs(takes(a, new_stage(), n)) do dev:set_refs(id, 1) end
    local function free(seq, list)
        for _, id in ipairs(list) do dev:set_refs(id, 0) end
        a:release(new_stage(seq), list)
    end
    return a, free
end

-- ALLOC_SEED replays a schedule that failed (its seed is in the message).
local function schedule_seed()
    return tonumber(os.getenv("ALLOC_SEED")) or os.time()
end

-- A random schedule of takes (of 1 to 40 numbers, a batch each), frees and
-- syncs against a model: no number is handed out while in use or in
-- limbo. hooks (each optional): taken(n, new, used, limbo) for each number
-- handed out, freeing(list) before a batch frees list, staged(st) once a
-- batch is staged. Returns the numbers in use.
local function random_schedule(a, seed, steps, hooks)
    math.randomseed(seed)
    local used, used_list, limbo = {}, {}, {}
    local seq, synced = 0, 0
    for _ = 1, steps do
        local op = math.random(3)
        if op == 1 then
            local st = new_stage()
            st.want = math.random(1, 40)
            for _ = 1, st.want do
                local n, new = a:take(st)
                assert(not used[n], ("seed %d: %d handed out while in use"):format(seed, n))
                assert(not limbo[n], ("seed %d: %d handed out while in limbo"):format(seed, n))
                if hooks.taken then hooks.taken(n, new, used, limbo) end
                used[n] = true
                used_list[#used_list + 1] = n
            end
            if hooks.staged then hooks.staged(st) end
        elseif op == 2 and #used_list > 0 then
            seq = seq + 1
            local list = {}
            for _ = 1, math.random(1, 30) do
                if #used_list == 0 then break end
                local i = math.random(#used_list)
                local n = used_list[i]
                used_list[i] = used_list[#used_list]
                used_list[#used_list] = nil
                used[n], limbo[n] = nil, seq
                list[#list + 1] = n
            end
            if hooks.freeing then hooks.freeing(list) end
            local st = new_stage(seq)
            a:release(st, list)
            if hooks.staged then hooks.staged(st) end
        elseif op == 3 and synced < seq then
            synced = math.random(synced + 1, seq)
            a:durable(synced)
            for n, s in pairs(limbo) do
                if s <= synced then limbo[n] = nil end
            end
        end
    end
    return used
end

describe("usbd.dedup.alloc", function()
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("hands out new numbers past every one used, and counts them", function()
        local c = { ids_free = 0, ids_next = 0 }
        local a = alloc.new(records_store(), nil, c, "ids_free", "ids_next")
        local n, new = a:take(new_stage())
        assert.are.same({ 1, true }, { n, new })
        assert.are.same({ 2, 3 }, takes(a, new_stage(), 2))
        assert.are.equal(3, c.ids_next)
    end)

    it("keeps freed ids in limbo until the batch that freed them is durable", function()
        local dev = records_store()
        local c = { ids_free = 0, ids_next = 0 }
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        for _, id in ipairs(takes(a, new_stage(), 8)) do dev:set_refs(id, 1) end
        local freeing = new_stage(5)
        for _, id in ipairs({ 5, 3, 4 }) do dev:set_refs(id, 0) end   -- free in the records at once
        a:release(freeing, { 5, 3, 4 })
        assert.are.equal(3, c.ids_free)
        assert.are.equal(3, a.limbo_count)
        assert.are.same({ 9 }, takes(a, new_stage(), 1))       -- not 3: in limbo
        a:durable(4)                                           -- an older batch
        assert.are.equal(3, a.limbo_count)
        assert.are.same({ 10 }, takes(a, new_stage(), 1))
        a:durable(5)
        assert.are.equal(0, a.limbo_count)
        assert.are.same({ 3, 4, 5, 11 }, takes(a, new_stage(), 4))
        assert.are.equal(0, c.ids_free)
        assert.are.equal(11, c.ids_next)
    end)

    -- The limbo grows for as long as a checkpoint's sync runs: it keeps
    -- the batch's number, never the stage and its tables.
    it("keeps in limbo the freeing batch's number, not the batch", function()
        local dev = records_store()
        local c = { ids_free = 0, ids_next = 0 }
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        for _, id in ipairs(takes(a, new_stage(), 4)) do dev:set_refs(id, 1) end
        local kept = setmetatable({}, { __mode = "k" })
        do
            local freeing = new_stage(7)
            kept[freeing] = true
            dev:set_refs(2, 0)
            a:release(freeing, { 2 })
        end
        collectgarbage()
        collectgarbage()
        assert.is_nil(next(kept))                           -- the stage is gone
        assert.are.equal(1, a.limbo_count)
        a:durable(6)
        assert.are.equal(1, a.limbo_count)                  -- its number still orders it
        a:durable(7)
        assert.are.equal(0, a.limbo_count)
        assert.are.same({ 2 }, takes(a, new_stage(), 1))
    end)

    -- A long checkpoint lets freed runs pile up in limbo: once durable,
    -- every one is ready, none left for a refill to find by reading
    -- records (at 32 GiB, hundreds of MiB of them).
    it("makes every run of a durable batch ready, however many", function()
        local dev = records_store()
        local c = { ids_free = 0, ids_next = 0 }
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        local ids = takes(a, new_stage(), 6000)
        for _, id in ipairs(ids) do dev:set_refs(id, 1) end
        local freed = {}
        for id = 2, 6000, 3 do freed[#freed + 1] = id; dev:set_refs(id, 0) end   -- 2000 runs of one
        a:release(new_stage(3), freed)
        a:durable(3)
        local loads = dev.loads
        local got = takes(a, new_stage(), #freed)
        table.sort(got)
        assert.are.same(freed, got)
        assert.are.equal(loads, dev.loads)                  -- no record read again
        assert.are.equal(6000, c.ids_next)
    end)

    -- Ids freed by different batches that lie side by side are one run
    -- once durable: a large write takes them in order (one pwrite, one
    -- extent), not as the crumbs each batch freed.
    it("joins the ready runs of ids that lie side by side", function()
        local a, free = ids_in_use(60)
        free(1, { 10, 11, 12, 13, 14, 30, 31, 32, 33, 34 })
        free(2, { 20, 21, 22, 23, 24 })
        free(3, { 15, 16, 17, 18, 19, 25, 26, 27, 28, 29 })
        a:durable(3)
        assert.are.equal(1, #a.ready)
        local want = {}
        for id = 10, 34 do want[#want + 1] = id end
        assert.are.same(want, takes(a, new_stage(), 25))
        assert.are.same({ 61 }, takes(a, new_stage(), 1))
    end)

    it("gives a large write a long run, wherever it lies in the list", function()
        local a, free = ids_in_use(200)
        local long = {}
        for id = 101, 140 do long[#long + 1] = id end
        free(1, long)
        local crumbs = {}
        for id = 2, 80, 2 do crumbs[#crumbs + 1] = id end  -- 40 runs of one, after it
        free(2, crumbs)
        a:durable(2)
        local st = new_stage()
        st.want = 40
        assert.are.same(long, takes(a, st, 40))
        local small = new_stage()
        small.want = 1
        local id = a:take(small)
        assert.are.equal(0, id % 2)                           -- a crumb
    end)

    -- Against a model: whatever the order of takes, frees and syncs, no id
    -- is handed out while in use or in limbo, and every free one that is
    -- durable is handed out before the file grows.
    it("hands out only free, durable ids while runs join (random schedule)", function()
        local dev = records_store()
        local c = { ids_free = 0, ids_next = 0 }
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        local seed = schedule_seed()
        random_schedule(a, seed, 400, {
            taken = function(id, new, used, limbo)
                if new then
                    local durable_free = 0
                    for k = 1, c.ids_next - 1 do
                        if not used[k] and not limbo[k] then durable_free = durable_free + 1 end
                    end
                    assert(durable_free == 0, ("seed %d: the file grew with %d ids free"):format(seed, durable_free))
                end
                dev:set_refs(id, 1)
            end,
            freeing = function(list)
                for _, id in ipairs(list) do dev:set_refs(id, 0) end
            end,
        })
    end)

    it("finds free ids in the records, passing over those in limbo", function()
        local dev = records_store()
        for id = 1, 200 do dev:set_refs(id, 1) end
        dev:set_refs(70, 0)
        dev:set_refs(71, 0)
        dev:set_refs(130, 0)
        local c = { ids_free = 2, ids_next = 200 }         -- as a store reopened
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        a:release(new_stage(9), { 130 })                   -- freed since: not durable
        assert.are.same({ 70, 71, 201 }, takes(a, new_stage(), 3))
        a:durable(9)
        assert.are.same({ 130 }, takes(a, new_stage(), 1))
    end)

    it("holds numbers in limbo a bit each, as its map of them grows", function()
        local a = alloc.new(records_store(), nil, { ids_free = 0, ids_next = 0 }, "ids_free", "ids_next")
        a:hold(7, 3, true)
        a:hold(40000, 2, true)                             -- past the first map: it grows, keeping 7-9
        a:hold(300000, 1, true)
        for _, n in ipairs({ 7, 8, 9, 40000, 40001, 300000 }) do assert.is_true(a:is_held(n), n) end
        for _, n in ipairs({ 6, 10, 39999, 40002, 299999, 300001, 2 ^ 40 }) do assert.is_false(a:is_held(n), n) end
        a:hold(8, 1, false)
        a:hold(300000, 1, false)
        assert.is_true(a:is_held(7) and a:is_held(9))
        assert.is_false(a:is_held(8) or a:is_held(300000))
    end)

    it("hands no id out twice when a sync of the WAL frees ids while a refill reads records", function()
        local dev = records_store()
        for id = 1, 200 do dev:set_refs(id, 1) end
        dev:set_refs(70, 0)
        dev:set_refs(71, 0)
        local c = { ids_free = 2, ids_next = 200 }
        local a = alloc.new(dev, nil, c, "ids_free", "ids_next")
        dev:set_refs(130, 0)
        a:release(new_stage(9), { 130 })
        dev.rc[1], dev.rc[2] = nil, nil                    -- evicted: the refill reads them
        -- The records' read waits; the WAL's sync ends meanwhile.
        local load, synced = dev.load_records, false
        function dev:load_records(groups)
            if not synced then
                synced = true
                a:durable(9)
            end
            for g in pairs(groups) do
                if not self.rc[g] then
                    load(self, { [g] = true })
                    for k = 0, 63 do
                        local id = g * 64 + k
                        if id >= 1 and id <= 200 and id ~= 70 and id ~= 71 and id ~= 130 then
                            self.rc[g].slots[k].refs = 1
                        end
                    end
                end
            end
        end
        local got, seen = {}, {}
        for _ = 1, 4 do
            local id = a:take(new_stage())
            assert.is_nil(seen[id], "id " .. id .. " handed out twice: " .. table.concat(got, " "))
            seen[id] = true
            got[#got + 1] = id
            dev:set_refs(id, 1)                            -- as add_content does
        end
        table.sort(got)
        assert.are.same({ 70, 71, 130, 201 }, got)
    end)

    -- Runs of physical blocks are records (G): a join in memory restages
    -- them in the next batch that takes, or a reopened store would find
    -- the joined run's old records and hand out blocks in use.
    local function g_store()
        local db = usbd.kv.open(scratch(), { create = true })
        local dev = { db = db, written_gen = 0 }
        -- The batch after settle, as the store writes it (commit.lua).
        function dev.commit(a, st)
            a:settle(st)
            db:write(st.batch, false)
            dev.written_gen = dev.written_gen + 1
            for i = 1, #st.runs, 2 do
                local al, first = st.runs[i], st.runs[i + 1]
                local left = al.pending[first] - 1
                al.pending[first] = left > 0 and left or nil
            end
        end
        function dev.runs()
            local keys, vals = db:scan("G", "H", 1000, 9, 8)
            local t = {}
            for i = 1, #keys do t[#t + 1] = { F.un64(keys[i], 2), F.un_le64(vals[i]) } end
            return t
        end
        return dev
    end

    it("joins runs of physical blocks and restages their records with the next batch that takes", function()
        local dev = g_store()
        local c = { pbns_free = 0, pbns_next = 0 }
        local a = alloc.new(dev, "G", c, "pbns_free", "pbns_next")
        dev.commit(a, (function() local st = new_stage(1); takes(a, st, 40); return st end)())
        local function free(seq, list)
            local st = new_stage(seq)
            a:release(st, list)
            dev.commit(a, st)
        end
        free(2, { 3, 4 })
        free(3, { 5, 6, 7 })
        free(4, { 22 })
        free(5, { 20, 21 })
        free(6, { 30, 31 })
        a:durable(6)
        assert.are.same({ { 3, 2 }, { 5, 3 }, { 20, 2 }, { 22, 1 }, { 30, 2 } }, dev.runs())
        local st = new_stage()
        st.want = 4
        assert.are.same({ 3, 4, 5, 6 }, takes(a, st, 4))
        dev.commit(a, st)
        assert.are.same({ { 7, 1 }, { 20, 3 }, { 30, 2 } }, dev.runs())

        -- Reopened: the records are the free blocks, each once.
        local c2 = { pbns_free = c.pbns_free, pbns_next = c.pbns_next }
        local b = alloc.new(dev, "G", c2, "pbns_free", "pbns_next")
        local got = takes(b, new_stage(), c2.pbns_free + 1)
        table.sort(got)
        assert.are.same({ 7, 20, 21, 22, 30, 31, 41 }, got)
        dev.db:close()
    end)

    it("keeps the records of physical blocks true through joins (random schedule, reopened)", function()
        local dev = g_store()
        local c = { pbns_free = 0, pbns_next = 0 }
        local a = alloc.new(dev, "G", c, "pbns_free", "pbns_next")
        local seed = schedule_seed()
        local used = random_schedule(a, seed, 300, { staged = function(st) dev.commit(a, st) end })
        -- Reopened with every batch written: exactly the free blocks.
        local c2 = { pbns_free = c.pbns_free, pbns_next = c.pbns_next }
        local b = alloc.new(dev, "G", c2, "pbns_free", "pbns_next")
        local free = {}
        for p = 1, c.pbns_next do
            if not used[p] then free[#free + 1] = p end
        end
        local got = takes(b, new_stage(), #free)
        table.sort(got)
        assert(#got == #free, ("seed %d: %d blocks handed out, %d free"):format(seed, #got, #free))
        for i = 1, #free do
            assert(got[i] == free[i], ("seed %d: reopened, handed out %d where %d was free"):format(seed, got[i], free[i]))
        end
        dev.db:close()
    end)

    it("stores free runs of physical blocks (G) with the batch that frees them, and finds them after a reopen", function()
        local db = usbd.kv.open(scratch(), { create = true })
        local dev = { db = db, written_gen = 0 }
        local c = { pbns_free = 0, pbns_next = 0 }
        local a = alloc.new(dev, "G", c, "pbns_free", "pbns_next")
        local st = new_stage(1)
        assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, takes(a, st, 8))
        a:settle(st)
        db:write(st.batch, false)
        local freeing = new_stage(2)
        a:release(freeing, { 6, 4, 5 })
        db:write(freeing.batch, false)
        local keys, vals = db:scan("G", "H", 10, 9, 8)
        assert.are.equal(1, #keys)
        assert.are.same({ 4, 3 }, { F.un64(keys[1], 2), F.un_le64(vals[1]) })

        -- Reopened: the run is read back, and a take moves its record on.
        local c2 = { pbns_free = 3, pbns_next = 8 }
        local b = alloc.new(dev, "G", c2, "pbns_free", "pbns_next")
        local st2 = new_stage(3)
        assert.are.same({ 4 }, takes(b, st2, 1))
        b:settle(st2)
        db:write(st2.batch, false)
        keys, vals = db:scan("G", "H", 10, 9, 8)
        assert.are.equal(1, #keys)
        assert.are.same({ 5, 2 }, { F.un64(keys[1], 2), F.un_le64(vals[1]) })
        assert.are.same({ 5, 6, 9 }, takes(b, new_stage(4), 3))
        assert.are.equal(0, c2.pbns_free)
        db:close()
    end)
end)

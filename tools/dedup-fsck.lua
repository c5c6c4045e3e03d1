-- dedup-fsck: check a dedupdisk store (devices/dedupdisk.lua), offline.
--
--   luajit tools/dedup-fsck.lua DIR [--repair] [--verify-data]
--
-- Counts every logical map entry's references and compares them with the
-- physical blocks' reference counts; checks that the hash index and the
-- free list agree with both, and the counters with all of it. Reports each
-- problem on a line of its own and a summary:
--   leaked blocks: physical blocks neither referenced nor free (what a crash
--     may leave); --repair puts them on the free list;
--   damage: anything else (a mapping to a block with no record, a wrong
--     reference count, a free block in use...); --repair fixes reference
--     counts, the index and the counters, and reports what it cannot fix.
--   --verify-data also rehashes every stored block against its record.
-- A compressed store (compress=) is checked fragment by fragment: each
-- indexed fragment must be listed by its packed block (P) where the map
-- says, lists must not overlap, a block is raw or packed, never both; a
-- listed fragment nothing indexes, or an indexed one nothing maps, is a
-- leak, and --repair drops it (an emptied packed block becomes free).
-- --verify-data decompresses every fragment and rehashes it.
-- Exit status: 0 clean (or repaired), 1 leaks left, 2 damage.
-- The store must not be in use (RocksDB's lock says so in one line).
-- Memory: a few dozen bytes per unique block (it holds the counts).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path
local ffi = require "ffi"
local usbd = require "usbd"
local F = dofile(here .. "/../devices/dedupdisk.lua").format
local packer = require "usbd.packer"
local un64, be64 = F.un64, F.be64

local M = {}

-- fn(key, value) for every key with prefix, in order.
local function each(db, prefix, key_max, value_max, fn)
    local from = prefix
    local stop = string.char(prefix:byte() + 1)
    while true do
        local keys, vals = db:scan(from, stop, 65536, key_max, value_max)
        for i = 1, #keys do fn(keys[i], vals[i]) end
        if #keys < 65536 then return end
        from = keys[#keys] .. "\0"
    end
end

function M.check(dir, opts)
    opts = opts or {}
    local lines, problems, leaks = {}, 0, 0
    local function say(fmt, ...) lines[#lines + 1] = fmt:format(...) end
    local function damage(fmt, ...) problems = problems + 1; say("damage: " .. fmt, ...) end

    local db, s = F.open_store(dir, {})
    local B, nblocks = s.block, s.size / s.block
    local lv, hv = s.compress and 28 or 24, s.compress and 20 or 16
    -- The map: references per hash, and the block each hash is in.
    local refs, pbn_of, frag_of, mapped = {}, {}, {}, 0
    each(db, "L", 9, lv, function(k, v)
        local lba, p, h = un64(k, 2), un64(v), v:sub(9, 24)
        mapped = mapped + 1
        if s.compress then
            local where = F.un16(v, 25) .. ":" .. F.un16(v, 27)
            if frag_of[h] and frag_of[h] ~= where then
                damage("logical block %d maps its hash to fragment %s, others to %s", lba, where, frag_of[h])
            end
            frag_of[h] = where
        end
        if lba >= nblocks then damage("logical block %d is past the end of the disk", lba) end
        if p < 1 or p > s.next then damage("logical block %d maps to physical block %d, outside 1..%d", lba, p, s.next) end
        if pbn_of[h] and pbn_of[h] ~= p then
            damage("logical block %d maps its hash to physical block %d, others to %d", lba, p, pbn_of[h])
        end
        pbn_of[h] = pbn_of[h] or p
        refs[h] = (refs[h] or 0) + 1
    end)

    -- The index: a record per stored hash, references as counted.
    local recs, owner, unique = {}, {}, 0
    local fixes = usbd.kv.batch()
    local unref = {}
    local frags = {}   -- packed pbn -> { ["off:size"] = hash } as the index says
    each(db, "H", 17, hv, function(k, v)
        local h, r = k:sub(2), F.Hdecode(v)
        unique = unique + 1
        recs[h] = r
        local counted = refs[h] or 0
        if r.pbn < 1 or r.pbn > s.next then damage("the index names physical block %d, outside 1..%d", r.pbn, s.next) end
        if r.size and r.size > 0 then
            local where = r.off .. ":" .. r.size
            frags[r.pbn] = frags[r.pbn] or {}
            if frags[r.pbn][where] then damage("physical block %d holds two hashes at %s", r.pbn, where) end
            frags[r.pbn][where] = h
            if owner[r.pbn] then damage("physical block %d is raw and packed", r.pbn) end
            if counted > 0 and frag_of[h] ~= where then
                damage("the map puts a fragment at %s of physical block %d, the index at %s", tostring(frag_of[h]), r.pbn, where)
            end
        else
            if owner[r.pbn] or frags[r.pbn] then damage("physical block %d holds two hashes", r.pbn) end
            owner[r.pbn] = h
        end
        if counted == 0 then
            leaks = leaks + 1
            unref[#unref + 1] = h
            say("leak: physical block %d is indexed (%d references) but not mapped", r.pbn, r.refs)
        elseif r.refs ~= counted then
            damage("physical block %d counts %d references; the map has %d", r.pbn, r.refs, counted)
            fixes:put(k, F.Hvalue(r.pbn, counted, r))
        end
        if counted > 0 and pbn_of[h] ~= r.pbn then
            damage("the map puts a hash in physical block %d, the index in %d", pbn_of[h], r.pbn)
        end
    end)
    for h, p in pairs(pbn_of) do
        if not recs[h] then damage("physical block %d is mapped but not indexed", p) end
    end

    -- Packed blocks: what each lists against what the index puts there.
    -- A listed fragment with no live index entry is a leak; the list kept
    -- by --repair holds only the referenced ones.
    local packed, pfix = {}, {}
    each(db, "P", 9, 4 * B, function(k, v)
        local p = un64(k, 2)
        packed[p] = true
        local live = packer.decode(v)
        if not live then damage("packed block %d: its record is damaged", p) return end
        for _, why in ipairs(packer.problems(live, B)) do damage("packed block %d: %s", p, why) end
        if owner[p] then damage("physical block %d is raw and packed", p) end
        local want, listed = frags[p] or {}, {}
        local keep = {}
        for i = 1, #live, 2 do
            local where = live[i] .. ":" .. live[i + 1]
            listed[where] = true
            local h = want[where]
            if not h then
                leaks = leaks + 1
                say("leak: packed block %d lists a fragment at %s that nothing indexes", p, where)
            elseif (refs[h] or 0) > 0 then
                packer.add(keep, live[i], live[i + 1])
            end
        end
        for where in pairs(want) do
            if not listed[where] then damage("packed block %d does not list its fragment at %s", p, where) end
        end
        if #keep ~= #live then pfix[p] = keep end
    end)
    for p, want in pairs(frags) do
        if not packed[p] then
            damage("physical block %d holds fragments but has no packed record", p)
            for where, h in pairs(want) do
                if (refs[h] or 0) > 0 then
                    local off, size = where:match("(%d+):(%d+)")
                    pfix[p] = pfix[p] or {}
                    packer.add(pfix[p], tonumber(off), tonumber(size))
                end
            end
        end
    end

    local free, nfree = {}, 0
    each(db, "F", 9, 1, function(k)
        local p = un64(k, 2)
        free[p], nfree = true, nfree + 1
        if owner[p] or packed[p] then damage("physical block %d is free and in use", p) end
        if p > s.next then damage("free block %d is past the last one used (%d)", p, s.next) end
    end)
    local lost = {}
    for p = 1, s.next do
        if not owner[p] and not packed[p] and not free[p] then lost[#lost + 1] = p end
    end
    if #lost > 0 then
        leaks = leaks + #lost
        say("leak: %d physical blocks neither used nor free (first: %d)", #lost, lost[1])
    end

    if opts.verify_data then
        local file = usbd.file.open(dir .. "/blocks", { readonly = true })
        local buf, frag = usbd.buffer(B), usbd.buffer(B)
        local codec = s.compress and usbd.codec.new(s.compress)
        local bad = 0
        for h, r in pairs(recs) do
            local ok = true
            if r.size and r.size > 0 then
                local piece = frag:sub(0, r.size)
                file:pread(piece, (r.pbn - 1) * B + r.off)
                ok = pcall(codec.decompress, codec, piece, buf)
            else
                file:pread(buf, (r.pbn - 1) * B)
            end
            if not ok or buf:hash128() ~= h then
                bad = bad + 1
                damage("physical block %d does not hold the bytes its hash names", r.pbn)
            end
        end
        file:close()
        say("verified the bytes of %d stored blocks: %d bad", unique, bad)
    end

    local c = { mapped = mapped, unique = unique, free = nfree, next = s.next }
    if s.mapped ~= mapped or s.unique ~= unique or s.free ~= nfree then
        damage("counters say %d mapped, %d unique, %d free; the store holds %d, %d, %d",
            s.mapped, s.unique, s.free, mapped, unique, nfree)
    end

    if opts.repair and (leaks > 0 or fixes:count() > 0 or problems > 0) then
        for _, h in ipairs(unref) do
            fixes:delete(F.Hkey(h))
            c.unique = c.unique - 1
            if not (recs[h].size and recs[h].size > 0) then   -- a fragment: its list is fixed below
                fixes:put(F.Fkey(recs[h].pbn), "")
                c.free = c.free + 1
            end
        end
        for p, keep in pairs(pfix) do
            if #keep == 0 then
                fixes:delete(F.Pkey(p))
                fixes:put(F.Fkey(p), "")
                c.free = c.free + 1
            else
                fixes:put(F.Pkey(p), packer.encode(keep))
            end
        end
        for _, p in ipairs(lost) do
            fixes:put(F.Fkey(p), "")
            c.free = c.free + 1
        end
        fixes:put("C", F.Cvalue(c))
        db:write(fixes, true)
        say("repaired: %d leaked blocks are free again; counters and references rewritten", leaks)
    end
    db:close()
    say("%s: %d logical blocks mapped, %d unique, %d free, %d used in the file; %d leaked, %d damaged",
        dir, mapped, unique, nfree, s.next, leaks, problems)
    return { problems = problems, leaks = leaks, lines = lines, repaired = opts.repair or false }
end

local function main(argv)
    local dir, opts = nil, {}
    for _, a in ipairs(argv) do
        if a == "--repair" then opts.repair = true
        elseif a == "--verify-data" then opts.verify_data = true
        elseif a:sub(1, 1) == "-" or dir then
            io.stderr:write("usage: luajit tools/dedup-fsck.lua DIR [--repair] [--verify-data]\n")
            os.exit(2)
        else dir = a end
    end
    if not dir then
        io.stderr:write("usage: luajit tools/dedup-fsck.lua DIR [--repair] [--verify-data]\n")
        os.exit(2)
    end
    local ok, r = pcall(M.check, dir:gsub("/+$", ""), opts)
    if not ok then
        io.stderr:write("dedup-fsck: ", tostring(r), "\n")
        os.exit(2)
    end
    for _, l in ipairs(r.lines) do print(l) end
    if r.problems > 0 and not r.repaired then os.exit(2) end
    if r.leaks > 0 and not r.repaired then os.exit(1) end
    os.exit(0)
end

if arg and arg[0] and arg[0]:match("dedup%-fsck%.lua$") then
    main(arg)
end
return M

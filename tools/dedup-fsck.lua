-- dedup-fsck: check a dedupdisk store (devices/dedupdisk.lua; format 3,
-- lua/usbd/dedup/format.lua), offline.
--
--   luajit tools/dedup-fsck.lua DIR [--repair] [--verify-data]
--
-- Counts the references the map's extents (L) give each id and compares
-- them with the ids' records (R), where an id holding no reference is
-- free; checks the counters (C) against all of it. Reports
-- each problem on a line of its own (at most 20 of a kind, then how many
-- more) and a summary:
--   leaks: a record counting more references than the map gives it;
--     --repair frees them (lowers the count; the last one gone frees the
--     id and where its content was);
--   damage: anything else (an extent outside the disk or overlapping
--     another, a mapped id whose record holds nothing, fewer references
--     than mappings, wrong counters...);
--     --repair raises counts to what the map gives, rewrites the counters
--     (and, compressed, the free runs of physical blocks), and reports what
--     it cannot fix.
-- A compressed store (compress=) is also checked block by block: each
-- live content is a raw physical block of its own or a fragment its
-- packed block lists (P, one record per 64 blocks); lists do not overlap; a block is raw, packed or
-- free (G), exactly one. A block that is none, or a listed fragment no
-- content names, is a leak: --repair frees it (drops the fragment; an
-- emptied packed block becomes free).
-- --verify-data rehashes every live content (decompressing fragments)
-- against its record.
-- --repair writes its fixes as one atomic batch, and deletes the hash
-- index (DIR/hashindex, advisory: the device rebuilds it from the records
-- when it next opens the store); the check itself does not read it.
-- A store not closed cleanly (a crash, a power cut) holds journal lists
-- of the contents written since its last flush (usbd.dedup.journal): their
-- bytes are rehashed, and one that lost them is damage, which opening the
-- store with the device, or --repair (which does just that first), drops.
-- Exit status: 0 clean (or all repaired), 1 leaks or damage found (or
-- left after --repair), 2 a wrong command line or a store that cannot be
-- opened (one in use by a server says so).
-- Memory: 5 bytes per id ever used (its count from the map, its state),
-- with compress= 1 byte per physical block and some 40 per live fragment.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path
local ffi = require "ffi"
local bit = require "bit"
local usbd = require "usbd"
local F = require "usbd.dedup.format"
local packer = require "usbd.dedup.packer"
local GROUP, CHUNK, PGROUP = F.GROUP, F.CHUNK, F.PGROUP
local be64, le64s = F.be64, F.le64s
local band, bor, bnot = bit.band, bit.bor, bit.bnot
local floor, min, max = math.floor, math.min, math.max

local M = {}

-- States: of an id, and (compress=) of a physical block.
local LIVE, FREE, DEAD = 1, 2, 4        -- DEAD: live, nothing maps it
local RAW, PACKED, PFREE = 1, 2, 4
local SHOWN = 20                        -- problem lines of one kind

-- The big-endian number in the 8 bytes at p.
local function un64p(p)
    return ((p[0] * 256 + p[1]) * 256 + p[2]) * 256 * 4294967296 + p[3] * 4294967296
        + ((p[4] * 256 + p[5]) * 256 + p[6]) * 256 + p[7]
end

local each = F.each
local journal = require "usbd.dedup.journal"

function M.check(dir, opts)
    opts = opts or {}
    local lines, problems, leaks, unfixed = {}, 0, 0, 0
    local seen, kinds = {}, {}   -- format -> problems of that kind; in order
    local function say(fmt, ...) lines[#lines + 1] = fmt:format(...) end
    local function note(kind, fmt, ...)
        fmt = kind .. ": " .. fmt
        local n = (seen[fmt] or 0) + 1
        seen[fmt] = n
        if n == 1 then kinds[#kinds + 1] = fmt end
        if n <= SHOWN then say(fmt, ...) end
    end
    -- fixable: --repair puts it right.
    local function damage(fixable, fmt, ...)
        problems = problems + 1
        if not fixable then unfixed = unfixed + 1 end
        note("damage", fmt, ...)
    end
    local function leak(n, fmt, ...)
        leaks = leaks + n
        note("leak", fmt, ...)
    end

    -- --repair: contents written since the last flush that lost their
    -- bytes (a crash, a power cut) are dropped as the device drops them
    -- when it opens the store: by opening it.
    if opts.repair then
        local db0 = F.open_store(dir, {})
        local _, lists = journal.ids(db0)
        db0:close()
        local ok, dev = pcall(dofile(here .. "/../devices/dedupdisk.lua").open, { dir = dir })
        if ok then
            dev:close()
            if lists > 0 then
                say("repaired: the contents written since the last flush were checked, those without their bytes dropped")
            end
        else
            say("the device cannot open the store (%s): repairing what the check finds", tostring(dev))
        end
    end

    local db, s = F.open_store(dir, {})
    local ok, r = pcall(function()
        local c = s.counters
        local B, nblocks, compressed = s.block, s.size / s.block, s.compress ~= nil
        local repair = opts.repair
        local fixes = usbd.kv.batch()
        local ids_next, pbns_next = c.ids_next, compressed and c.pbns_next or 0
        if ids_next > 2 ^ 40 or pbns_next > 2 ^ 40 then
            error(("%s: the counters record is damaged (%d ids, %d physical blocks used)")
                :format(dir, ids_next, pbns_next), 0)
        end
        local refc = ffi.new("uint32_t[?]", ids_next + 1)   -- references from the map
        local idst = ffi.new("uint8_t[?]", ids_next + 1)
        local pst = ffi.new("uint8_t[?]", pbns_next + 1)
        local frag = {}         -- pbn * 65536 + off -> size listed; -(size + 1) once named
        local empty = {}        -- packed blocks that list nothing
        local found = { mapped = 0, unique = 0, ids_free = 0, ids_next = ids_next,
            pbns_free = 0, pbns_next = c.pbns_next }

        -- The map: extents in order, each inside the disk and its chunk,
        -- none over the one before; references counted per id.
        local prev = -1
        each(db, "L", 16, function(k, kl, v, vl)
            if kl ~= 9 then damage(false, "a map key of %d bytes", kl) return end
            local last = un64p(k + 1)
            if vl ~= 16 then damage(false, "the extent ending at block %d holds %d bytes, not 16", last, vl) return end
            local e = ffi.cast(F.extent_ptr, v)
            local id, count = tonumber(e.id), tonumber(e.count)
            if count < 1 then damage(false, "the extent ending at block %d has %d blocks", last, count) return end
            local first = last - count + 1
            if first < 0 or last >= nblocks then
                damage(false, "the extent of blocks %d..%d reaches past the disk (%d blocks)", first, last, nblocks)
            elseif floor(first / CHUNK) ~= floor(last / CHUNK) then
                damage(false, "the extent of blocks %d..%d crosses a multiple of %d", first, last, CHUNK)
            end
            if first <= prev then
                damage(false, "the extent of blocks %d..%d overlaps the one before it (ending at %d)", first, last, prev)
            end
            prev = max(prev, last)
            found.mapped = found.mapped + count
            if id < 1 or id + count - 1 > ids_next then
                damage(false, "the extent of blocks %d..%d maps them to ids %d..%d, outside 1..%d",
                    first, last, id, id + count - 1, ids_next)
            end
            for i = max(id, 1), min(id + count - 1, ids_next) do refc[i] = refc[i] + 1 end
        end)

        -- Packed blocks: the fragments each lists.
        if compressed then
            each(db, "P", 4 * B, function(k, kl, v, vl)
                if kl ~= 9 then damage(false, "a packed block key of %d bytes", kl) return end
                local g = un64p(k + 1)
                local lives = F.Pdecode(ffi.string(v, vl), g)
                if not lives then
                    damage(false, "the record of packed blocks %d..%d is damaged (%d bytes)",
                        g * PGROUP, g * PGROUP + PGROUP - 1, vl)
                    return
                end
                for p, live in pairs(lives) do
                    if p < 1 or p > pbns_next then
                        damage(false, "packed block %d is outside 1..%d", p, pbns_next)
                    else
                        pst[p] = bor(pst[p], PACKED)
                        for _, why in ipairs(packer.problems(live, B)) do damage(false, "packed block %d: %s", p, why) end
                        if #live == 0 then empty[#empty + 1] = p end
                        for i = 1, #live, 2 do
                            if live[i + 1] > 0 then frag[p * 65536 + live[i]] = live[i + 1] end
                        end
                    end
                end
            end)
        end

        -- --verify-data: the bytes of each live content against its hash.
        local file, buf, piece, codec, verified, bad
        local hbuf = ffi.new("uint8_t[16]")
        if opts.verify_data then
            file = usbd.file.open(dir .. "/blocks", { readonly = true })
            buf, piece = usbd.buffer(B), usbd.buffer(B)
            codec = compressed and usbd.codec.new(s.compress)
            verified, bad = 0, 0
        end
        local function verify(id, sl)
            local ok2 = true
            if compressed and sl.size > 0 then
                local f = piece:sub(0, sl.size)
                file:pread(f, (tonumber(sl.pbn) - 1) * B + sl.off)
                ok2 = pcall(codec.decompress, codec, f, buf)
            else
                file:pread(buf, ((compressed and tonumber(sl.pbn) or id) - 1) * B)
            end
            local h = ffi.string(F.content_hashes(buf, B, hbuf), 16)
            verified = verified + 1
            if not ok2 or h ~= ffi.string(sl.hash, 16) then
                bad = bad + 1
                damage(false, "id %d: its stored bytes do not hash to its record's hash", id)
            end
        end

        -- Records: references against the map; with compress=, where
        -- each content is against the packed blocks' lists.
        local rbytes, slot_t = F.record_bytes(compressed), F.slot_ptr[compressed]
        local ndead, dead = 0, {}   -- live contents nothing maps; compress=: where, { pbn, off, size }
        each(db, "R", rbytes, function(k, kl, v, vl)
            if kl ~= 9 then damage(false, "a record key of %d bytes", kl) return end
            local g = un64p(k + 1)
            if vl ~= rbytes then
                damage(false, "the record of ids %d..%d holds %d bytes, not %d", g * GROUP, g * GROUP + GROUP - 1, vl, rbytes)
                return
            end
            local slots, copy = ffi.cast(slot_t, v), nil
            local function fix(j, refs)   -- the record, rewritten with slot j's refs
                if not repair then return end
                if not copy then
                    copy = ffi.new("uint8_t[?]", rbytes)
                    ffi.copy(copy, v, rbytes)
                end
                ffi.cast(slot_t, copy)[j].refs = refs
            end
            for j = 0, GROUP - 1 do
                local sl = slots[j]
                local refs, id = sl.refs, g * GROUP + j
                if refs > 0 then
                    if id < 1 or id > ids_next then
                        damage(false, "id %d holds %d references but is outside 1..%d", id, refs, ids_next)
                    else
                        found.unique = found.unique + 1
                        local n = refc[id]
                        idst[id] = bor(idst[id], LIVE)
                        if n == 0 then
                            idst[id] = bor(idst[id], DEAD)
                            ndead = ndead + 1
                            leak(1, "id %d holds %d references but nothing maps it", id, refs)
                            fix(j, 0)
                        elseif n < refs then
                            leak(1, "id %d holds %d references; the map gives it %d", id, refs, n)
                            fix(j, n)
                        elseif n > refs then
                            damage(true, "id %d holds %d references; the map gives it %d", id, refs, n)
                            fix(j, n)
                        end
                        local stored = true
                        if compressed then
                            stored = false
                            local p, off, size = tonumber(sl.pbn), sl.off, sl.size
                            if p < 1 or p > pbns_next then
                                damage(false, "id %d is in physical block %d, outside 1..%d", id, p, pbns_next)
                            elseif size == 0 then
                                if band(pst[p], RAW) ~= 0 then
                                    damage(false, "id %d is in raw physical block %d, which holds another content", id, p)
                                elseif band(pst[p], PACKED) ~= 0 then
                                    damage(false, "id %d is in raw physical block %d, which is packed", id, p)
                                else
                                    pst[p] = bor(pst[p], RAW)
                                    stored = true
                                    if n == 0 then dead[#dead + 1] = { p, 0, 0 } end
                                end
                            else
                                local key = p * 65536 + off
                                local listed = frag[key]
                                if not listed then
                                    damage(false,
                                        "id %d is a fragment at %d (%d bytes) of physical block %d, which does not list it",
                                        id, off, size, p)
                                elseif listed < 0 then
                                    damage(false, "id %d is a fragment at %d of physical block %d, as another id is", id, off, p)
                                elseif listed ~= size then
                                    damage(false,
                                        "id %d is a fragment at %d of physical block %d of %d bytes; the block lists %d",
                                        id, off, p, size, listed)
                                else
                                    frag[key] = -(size + 1)
                                    stored = true
                                    if n == 0 then dead[#dead + 1] = { p, off, size } end
                                end
                            end
                        end
                        if opts.verify_data and stored then verify(id, sl) end
                    end
                end
            end
            if copy then fixes:put(F.Rkey(g), ffi.string(copy, rbytes)) end
        end)
        if opts.verify_data then
            file:close()
            say("verified the bytes of %d contents: %d bad", verified, bad)
        end

        -- Free runs: of ids (F) and, with compress=, of physical blocks (G).
        local function runs(prefix, what, limit, st, mark, busy, total)
            each(db, prefix, 8, function(k, kl, v, vl)
                if kl ~= 9 or vl ~= 8 then
                    damage(true, "a free run (%s) with a key of %d bytes and a value of %d", what, kl, vl)
                    return
                end
                local first = un64p(k + 1)
                local count = tonumber(ffi.cast("uint64_t *", v)[0])
                local last = first + count - 1
                found[total] = found[total] + count
                if count < 1 then damage(true, "the free run of %s from %d counts %d", what, first, count) return end
                if first < 1 or last > limit then
                    damage(true, "the free run of %s %d..%d reaches outside 1..%d", what, first, last, limit)
                end
                local twice, used = 0, 0
                for i = max(first, 1), min(last, limit) do
                    if band(st[i], mark) ~= 0 then twice = twice + 1 end
                    if band(st[i], busy) ~= 0 then used = used + 1 end
                    st[i] = bor(st[i], mark)
                end
                if twice > 0 then damage(true, "the free run of %s %d..%d overlaps another (%d)", what, first, last, twice) end
                if used > 0 then damage(true, "the free run of %s %d..%d covers %d in use", what, first, last, used) end
            end)
        end
        -- Ids: free is holding no reference (format 3 stores no free runs
        -- of ids; format 2's F keys, left over, are damage).
        local stray = 0
        each(db, "F", 8, function() stray = stray + 1 end)
        if stray > 0 then damage(true, "%d free-run keys (F) of format 2 in a format 3 store", stray) end
        for id = 1, ids_next do
            if band(idst[id], LIVE) == 0 then
                idst[id] = bor(idst[id], FREE)
                found.ids_free = found.ids_free + 1
            end
        end
        -- Live ids: a mapped id holds a content.
        local function each_run(from, to, pred, fn)   -- fn(first, last) for runs where pred
            local start
            for i = from, to do
                if pred(i) then
                    start = start or i
                elseif start then
                    fn(start, i - 1)
                    start = nil
                end
            end
            if start then fn(start, to) end
        end
        for id = 1, ids_next do
            if refc[id] > 0 and band(idst[id], LIVE) == 0 then
                damage(false, "id %d is mapped %d times but holds no content", id, refc[id])
            end
        end

        local pfree_damaged, leaked_pbns = false, 0
        local left = {}   -- pbn -> { off, size, ... } to drop from its list
        if compressed then
            local before = problems
            runs("G", "physical blocks", pbns_next, pst, PFREE, RAW + PACKED, "pbns_free")
            pfree_damaged = problems > before
            each_run(1, pbns_next, function(i) return pst[i] == 0 end, function(a, b)
                leaked_pbns = leaked_pbns + (b - a + 1)
                if a == b then leak(1, "physical block %d is neither used nor free", a)
                else leak(b - a + 1, "physical blocks %d..%d are neither used nor free", a, b) end
            end)
            for _, p in ipairs(empty) do
                left[p] = {}
                leak(1, "packed block %d lists no fragment", p)
            end
            local keys = {}
            for key, size in pairs(frag) do
                if size >= 0 then keys[#keys + 1] = key end
            end
            table.sort(keys)
            for _, key in ipairs(keys) do
                local p, off = floor(key / 65536), key % 65536
                left[p] = left[p] or {}
                local l = left[p]
                l[#l + 1], l[#l + 2] = off, frag[key]
                leak(1, "packed block %d lists a fragment at %d (%d bytes) that no content names", p, off, frag[key])
            end
        end

        -- Counters.
        local names = compressed and { "mapped", "unique", "ids_free", "pbns_free" } or { "mapped", "unique", "ids_free" }
        for _, name in ipairs(names) do
            if c[name] ~= found[name] then
                damage(true, "the counter %s says %d; the store holds %d", name, c[name], found[name])
            end
        end
        local have = 0
        local fok, fsize = pcall(usbd.file.open, dir .. "/blocks", { readonly = true })
        if fok then
            have = fsize:size()
            fsize:close()
        end
        -- Contents written since the last flush (a crash left their
        -- journal lists): their bytes must be there.
        local jids, jlists = journal.ids(db)
        if jlists > 0 then
            local jfile = file or usbd.file.open(dir .. "/blocks", { readonly = true })
            local jbad, jchecked = journal.verify(db, jfile, s, jids)
            local ids = {}
            for id in pairs(jbad) do ids[#ids + 1] = id end
            table.sort(ids)
            for _, id in ipairs(ids) do
                damage(false, "content %d, written since the last flush, lost its bytes in a crash "
                    .. "(opening the store or --repair drops it)", id)
            end
            say("not closed cleanly: checked the bytes of the %d contents written since the last flush", jchecked)
            if jfile ~= file then jfile:close() end
        end

        local need = compressed and (pbns_next > 0 and (pbns_next - 1) * B + 1 or 0) or ids_next * B
        if have < need then
            damage(false, "the block file holds %d bytes; the store uses %d", have, need)
        end

        for _, fmt in ipairs(kinds) do
            if seen[fmt] > SHOWN then
                say("(and %d more like \"%s\")", seen[fmt] - SHOWN, (fmt:gsub("%%d", "N"):gsub("%%s", "S")))
            end
        end
        if repair and leaks + problems == 0 then
            os.remove(dir .. "/hashindex")
            say("repaired: nothing to repair (the hash index is rebuilt at the next open)")
        elseif repair then
            local new = { mapped = found.mapped, unique = found.unique, ids_free = 0, ids_next = ids_next,
                pbns_free = compressed and 0 or c.pbns_free, pbns_next = c.pbns_next }
            -- What the contents nothing maps held goes.
            new.unique = new.unique - ndead
            for _, d in ipairs(dead) do
                if d[3] == 0 then
                    pst[d[1]] = band(pst[d[1]], bnot(RAW))
                else
                    left[d[1]] = left[d[1]] or {}
                    local l = left[d[1]]
                    l[#l + 1], l[#l + 2] = d[2], d[3]
                end
            end
            -- Each P record that loses fragments, written again once.
            local groups = {}
            for p in pairs(left) do groups[floor(p / PGROUP)] = true end
            for g in pairs(groups) do
                local lives = F.Pdecode(db:get(F.Pkey(g), PGROUP * (4 + 4 * B)) or "", g) or {}
                for p = g * PGROUP, g * PGROUP + PGROUP - 1 do
                    local drop, live = left[p], lives[p]
                    if drop and live then
                        for i = 1, #drop, 2 do packer.remove(live, drop[i], drop[i + 1]) end
                        if #live == 0 then
                            lives[p] = nil
                            pst[p] = band(pst[p], bnot(PACKED))
                        end
                    end
                end
                local v = F.Pencode(lives, g)
                if v then fixes:put(F.Pkey(g), v) else fixes:delete(F.Pkey(g)) end
            end
            -- Free runs, written again whole when they change: every id
            -- nothing maps nor holds; every block neither raw nor packed.
            local function rewrite(prefix, stop, to, pred)
                fixes:delete_range(prefix, stop)
                local n = 0
                each_run(1, to, pred, function(a, b)
                    fixes:put(prefix .. be64(a), le64s(b - a + 1))
                    n = n + (b - a + 1)
                end)
                return n
            end
            -- Ids nothing maps are freed by their records' fixes above.
            if stray > 0 then fixes:delete_range("F", "G") end
            new.ids_free = found.ids_free + ndead
            if not compressed then
                -- (an id is its physical block: nothing more to free)
            elseif pfree_damaged or leaked_pbns > 0 or next(left) or ndead > 0 then
                new.pbns_free = rewrite("G", "H", pbns_next, function(i) return band(pst[i], RAW + PACKED) == 0 end)
            else
                new.pbns_free = found.pbns_free
            end
            F.put_C(fixes, new)
            db:write(fixes, true)
            os.remove(dir .. "/hashindex")
            say("repaired: %d leaked are free again; %d of %d damaged fixed%s", leaks, problems - unfixed, problems,
                unfixed > 0 and " (the rest cannot be)" or "")
        end

        say("%s: %d logical blocks mapped, %d unique, %d free, %d used in the file; %d leaked, %d damaged",
            dir, found.mapped, found.unique, compressed and found.pbns_free or found.ids_free,
            compressed and pbns_next or ids_next, leaks, problems)
        return { problems = problems, leaks = leaks, unfixed = unfixed, lines = lines, repaired = repair or false }
    end)
    db:close()
    if not ok then error(r, 0) end
    return r
end

local function main(argv)
    local dir, opts = nil, {}
    local usage = "usage: luajit tools/dedup-fsck.lua DIR [--repair] [--verify-data]\n"
    for _, a in ipairs(argv) do
        if a == "--repair" then opts.repair = true
        elseif a == "--verify-data" then opts.verify_data = true
        elseif a:sub(1, 1) == "-" or dir then
            io.stderr:write(usage)
            os.exit(2)
        else dir = a end
    end
    if not dir then
        io.stderr:write(usage)
        os.exit(2)
    end
    local ok, r = pcall(M.check, (dir:gsub("/+$", "")), opts)
    if not ok then
        io.stderr:write("dedup-fsck: ", tostring(r), "\n")
        os.exit(2)
    end
    for _, l in ipairs(r.lines) do print(l) end
    if r.repaired then os.exit(r.unfixed > 0 and 1 or 0) end
    os.exit((r.problems > 0 or r.leaks > 0) and 1 or 0)
end

if arg and arg[0] and arg[0]:match("dedup%-fsck%.lua$") then
    main(arg)
end
return M

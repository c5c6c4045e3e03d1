-- usbd.dedup.journal: which stored contents may not be on the disk yet.
--
-- A batch that gives new contents ids also lists those ids under its own
-- key, J seq (seq: its place in the commit order, from 1 at each open):
-- the list is durable exactly when the batch is. A checkpoint (a flush)
-- syncs the block file, then the WAL, and then deletes the lists of the
-- batches written before the file's sync began: their bytes are durable.
-- So after any crash or power cut, every content whose bytes may be
-- missing or torn is in a list that survived, and only those are: opening
-- the store rehashes them (verify) instead of the whole file. A list
-- costs one key of 16 bytes per run of ids in its batch.
local ffi = require "ffi"
local usbd = require "usbd"
local F = require "usbd.dedup.format"

local GROUP = F.GROUP
local floor = math.floor

local M = {}

local function Jkey(seq) return "J" .. F.be64(seq) end
M.Jkey = Jkey

-- Stage the list of ids (numbers, n of them, in any order) for the batch
-- with sequence seq: runs of consecutive ids, as little-endian u64 pairs.
-- (Its key and the runs from buffers kept here: no string made, no C type
-- parsed, on each write's batch.)
local u8p = ffi.typeof("uint8_t *")
local jkey_bytes = ffi.new("uint8_t[9]")
jkey_bytes[0] = string.byte("J")
local runs = ffi.new("uint64_t[?]", 512)
local runs_cap = 256
function M.put(batch, seq, ids, n)
    if n > runs_cap then
        runs_cap = 2 * n
        runs = ffi.new("uint64_t[?]", 2 * runs_cap)
    end
    local k, i = 0, 1
    while i <= n do
        local first, count = ids[i], 1
        while i + count <= n and ids[i + count] == first + count do count = count + 1 end
        runs[2 * k], runs[2 * k + 1] = first, count
        k, i = k + 1, i + count
    end
    F.put64(jkey_bytes, 1, seq)
    batch:put(jkey_bytes, ffi.cast(u8p, runs), 9, 16 * k)
end

-- Stage the deletion of the lists of batches 1 .. upto (nil: all).
function M.forget(batch, upto)
    batch:delete_range("J", upto and Jkey(upto + 1) or "K")
end

-- Every id the store's lists name (a sorted list without repeats), and
-- how many lists there were.
function M.ids(db)
    local seen, lists = {}, 0
    F.each(db, "J", 4096, function(_, _, v, vl)
        local list = ffi.cast("const uint64_t *", v)
        for r = 0, tonumber(vl) / 16 - 1 do
            local first = tonumber(list[2 * r])
            for id = first, first + tonumber(list[2 * r + 1]) - 1 do seen[id] = true end
        end
        lists = lists + 1
    end)
    local ids = {}
    for id in pairs(seen) do ids[#ids + 1] = id end
    F.sort_numbers(ids, #ids)
    return ids, lists
end

-- The ids among ids (a list) whose stored bytes do not hash to their
-- record's hash (a set), and how many held content. s: what the store is
-- (block, compress); file: its block file (read only). An id holding no
-- reference is free: nothing to check. A raw block past the end of the
-- file, a fragment that does not decompress: not its content.
local PASS = 256
function M.verify(db, file, s, ids)
    local b, compressed = s.block, s.compress ~= nil
    local codec = compressed and usbd.codec.new(s.compress)
    local rbytes, slot_t = F.record_bytes(compressed), F.slot_ptr[compressed]
    local file_size = file:size()
    local buf, frag = usbd.buffer(PASS * b), usbd.buffer(b)
    local hashes, offsets = ffi.new("uint8_t[?]", 16 * PASS), ffi.new("int64_t[?]", PASS)
    local bad, checked = {}, 0
    for at = 1, #ids, PASS do
        local pass = {}
        for i = at, math.min(#ids, at + PASS - 1) do pass[#pass + 1] = ids[i] end
        -- Their records, in one read.
        local keys, gi = {}, {}
        for _, id in ipairs(pass) do
            local g = floor(id / GROUP)
            if not gi[g] then
                keys[#keys + 1] = F.Rkey(g)
                gi[g] = #keys
            end
        end
        local vals = db:multi_get(keys, rbytes)
        -- Where each live one is: a whole block (raw), or a fragment.
        local live = {}
        for _, id in ipairs(pass) do
            local v = vals[gi[floor(id / GROUP)]]
            if v and #v == rbytes then
                local slot = ffi.cast(slot_t, ffi.cast("const char *", v)) + id % GROUP
                if slot.refs > 0 then
                    local e = { id = id, hash = ffi.string(slot.hash, 16) }
                    local p = compressed and tonumber(slot.pbn) or id
                    e.pos = (p - 1) * b + (compressed and slot.off or 0)
                    e.size = compressed and slot.size or 0
                    live[#live + 1] = e
                end
            end
        end
        checked = checked + #live
        -- The raw blocks of the pass in one read (those past the end: not
        -- there), hashed in one call; the fragments one by one.
        for i, e in ipairs(live) do
            offsets[i - 1] = (e.size == 0 and e.pos + b <= file_size) and e.pos or -1
            if e.size == 0 and e.pos + b > file_size then bad[e.id] = true end
        end
        local n = #live
        if n > 0 then
            local view = buf:sub(0, n * b)
            file:pread_blocks(view, b, offsets)
            for i, e in ipairs(live) do
                local block = buf:sub((i - 1) * b, b)
                if e.size > 0 then
                    local ok = e.pos + e.size <= file_size
                    if ok then
                        local f = frag:sub(0, e.size)
                        file:pread(f, e.pos)
                        ok = pcall(codec.decompress, codec, f, block)
                    end
                    if not ok then bad[e.id] = true end
                end
            end
            F.content_hashes(view, b, hashes)
            for i, e in ipairs(live) do
                if not bad[e.id] and ffi.string(hashes + 16 * (i - 1), 16) ~= e.hash then bad[e.id] = true end
            end
        end
    end
    return bad, checked
end

return M

-- usbd.dedup.commit: where the dedupdisk decides what is durable, and when.
--
-- A decision's metadata changes are staged in a batch (new_stage), queued
-- in the mutex in the order they were decided (enqueue), and written in
-- that order, in groups, on the store's lane (commit, run_commits); the
-- request is answered once its group is written. The rules (the header of
-- devices/dedupdisk.lua, "Durability", has the full text and the model):
--   * a batch is written after the blocks it adds are in the file, and
--     batches are written whole, in the order they were decided;
--   * a checkpoint (a flush) syncs the block file, then the WAL, then
--     drops the journal lists (usbd.dedup.journal) of the batches written
--     before the file's sync began: their bytes are on the disk;
--   * ids, physical blocks and gaps of packed blocks a batch frees are
--     reused only after a sync of the WAL has made that batch durable
--     (release);
--   * fail-stop: once a decision or a write has failed (break_down), no
--     batch decided after it is written, and writes are refused: RocksDB
--     holds what a crash would have left.
--
-- Fields: cq, cq_next, cq_done, cq_tail (the queue: stages by place, the
-- first not yet handed to the write queue, the first not yet written, the
-- next free place), wq (the write queue), wq_fresh (batches added since
-- the last write began), writes (the writes in flight), lane, seq (the
-- last stage queued), committed (the last written), written_gen (batches
-- written, for readers racing them), batch_pool, journaled (contents
-- listed since the last checkpoint), forgotten (the last seq whose journal
-- list is dropped), releasing (a checkpoint or a sync of the WAL runs
-- behind), broken (why writes are refused).
local usbd = require "usbd"
local sched = require "usbd.core.sched"
local jobs = require "usbd.jobs"
local F = require "usbd.dedup.format"
local journal = require "usbd.dedup.journal"
local locks = require "usbd.dedup.locks"

local put_R, put_C = F.put_R, F.put_C
local park, wake, token = locks.park, locks.wake, locks.token
local LIMBO_MAX = 16384      -- freed ids awaiting a WAL sync; more: sync it
local JOURNAL_BYTES = 2 ^ 30 -- new contents' bytes not yet synced; more: a checkpoint

local Dedup = {}   -- the store's methods (usbd.dedup.store gathers every part's)

function Dedup:init_commit()
    self.cq, self.cq_next, self.cq_done, self.cq_tail = {}, 1, 1, 1
    self.wq, self.wq_fresh, self.writes, self.lane = usbd.kv.queue(), false, {}, jobs.lane()
    self.seq, self.committed, self.written_gen, self.batch_pool = 0, 0, 0, {}
    self.journaled, self.forgotten = 0, 0
end

-- ---- Stages: batches in the making ------------------------------------------

-- A stage: the metadata changes of one decision (a request's), made in the
-- mutex, then queued (enqueue) and written (commit). Its batch takes them;
-- beside it, what the parts do once it is queued and once it is written:
--   recs          records it changed (usbd.dedup.records)
--   freed_ids, freed_pbns, runs, took   numbers it frees, free runs it
--                 stages and takes from (usbd.dedup.alloc)
--   jids          the contents it adds: its journal list
--   frag_frees, frag_freed, refill, ptouch, pkeys, fills, after
--                 fragments it frees, gaps it leaves, P groups it stages,
--                 packed blocks it fills (usbd.dedup.packing)
--   map_chunks, map_edit   the chunks whose extents it changes, and how
--                 (usbd.dedup.map)
--   data_job      a small write's blocks, written in its batch's job
-- Batches are recycled: each costs an allocation and a finaliser. A store
-- without compress= frees no physical blocks of its own and no fragments:
-- its stages share one empty list for those, which refuses writes.
local NONE = setmetatable({}, { __newindex = function()
    error("dedupdisk: a list of compress= written in a store without it", 2)
end })

function Dedup:new_stage()
    local batch = table.remove(self.batch_pool) or usbd.kv.batch()
    local c = self.codec
    return { batch = batch, recs = {}, freed_ids = {}, freed_pbns = c and {} or NONE, runs = {}, jids = {},
        frag_frees = c and {} or NONE, frag_freed = c and {} or NONE, refill = c and {} or NONE,
        pkeys = c and {} or NONE, map_chunks = {} }
end

-- Queue a staged batch for writing (in the mutex: order = decision order).
function Dedup:enqueue(st)
    -- Its place in the order first: the limbos keep it, not the stage.
    self.seq = self.seq + 1
    st.seq = self.seq
    self:index_removes()
    self:stage_P(st)
    self.ids:release(st, st.freed_ids)
    if self.pbns ~= self.ids then self.pbns:release(st, st.freed_pbns) end
    self.ids:settle(st)
    if self.pbns ~= self.ids then self.pbns:settle(st) end
    local batch = st.batch
    for g, r in pairs(st.recs) do
        put_R(batch, g, r.buf, self.rbytes)
        r.pend = r.pend + 1
    end
    put_C(batch, self.counters)
    local nj = #st.jids
    if nj > 0 then
        journal.put(batch, st.seq, st.jids, nj)
        self.journaled = self.journaled + nj
    end
    self:frags_freed(st)
    self.cq[self.cq_tail] = st
    self.cq_tail = self.cq_tail + 1
end

-- A batch is written: what it staged need no longer stay in memory.
function Dedup:written(st)
    local mch = st.map_chunks
    for i = 1, #mch, 2 do self:map_changed(mch[i], mch[i + 1], st.map_edit) end
    for _, r in pairs(st.recs) do r.pend = r.pend - 1 end
    for i = 1, #st.runs, 2 do
        local a, first = st.runs[i], st.runs[i + 1]
        local left = a.pending[first] - 1
        a.pending[first] = left > 0 and left or nil
    end
    for i = 1, #st.pkeys do
        local o = self.pg[st.pkeys[i]]
        o.pend = o.pend - 1
    end
end

-- ---- The commit queue: groups on the lane -----------------------------------

-- The ready batches at the head of the queue go, in order, to the store's
-- write queue (usbd.kv.queue), and writes of it run on the store's lane
-- (usbd.jobs.lane): one writing, one behind it. A write takes, when it
-- starts, every batch queued by then, so while one group is written the
-- next gathers all that becomes ready meanwhile, and starts as that one
-- returns, without waiting for this thread to see it. (Groups formed here
-- when a batch became ready held one batch behind a full one, then the
-- lane waited for this thread: idle a third of the time at 4 KiB.) Each
-- request is answered once its own group is written. Once one has failed
-- (broken), none after it is written: each was decided on the memory the
-- failed one changed (its records and counters hold those changes), so
-- writing it would store half of the failed batch, such as an id freed
-- while its mapping stays. The lane refuses the writes behind a failed one
-- and the batches they would have taken fail with it; broken stops the
-- rest.
local WRITES_IN_FLIGHT = 2
local write_queued

function Dedup:run_commits()
    local i = self.cq_next
    while not self.broken and self.cq[i] and self.cq[i].ready do
        local st = self.cq[i]
        -- (data_job: its blocks, written first; write_new)
        local ok, err = pcall(self.wq.add, self.wq, st.batch, st.data_job)
        if ok then
            i = i + 1
            self.cq_next, self.wq_fresh = i, true
        else
            self:break_down("queueing a batch", err)
        end
    end
    while self.wq_fresh and #self.writes < WRITES_IN_FLIGHT do
        self.wq_fresh = false
        local w = { dev = self }
        self.writes[#self.writes + 1] = w
        -- Each write waits in a coroutine of its own. (Outside the
        -- server, as in the specs, on the spot.)
        if sched.in_request() then sched.spawn(write_queued, w) else write_queued(w) end
    end
    if self.broken and #self.writes == 0 then
        -- Every batch handed over is done (cq_done = cq_next: a write
        -- takes all added before it starts): those ready after them fail.
        i = self.cq_next
        while self.cq[i] and self.cq[i].ready do i = i + 1 end
        local wakes = {}
        self:settle(self.cq_next, i, usbd.E.IO, wakes)
        self.cq_next, self.cq_done = i, i
        for j = 1, #wakes do wake(wakes[j]) end
    end
end

function write_queued(w)
    local self = w.dev
    local ok, taken, err = pcall(self.db.write_queued, self.db, self.wq, self.lane)
    if not ok then taken, err = 0, taken end  -- (raised before taking any)
    w.taken, w.err, w.finished = taken, err, true
    -- Writes end in order (the lane's), but are taken in order regardless.
    local wakes = {}
    while self.writes[1] and self.writes[1].finished do
        local h = table.remove(self.writes, 1)
        local first, stop = self.cq_done, self.cq_done + h.taken
        -- A failed write: the batches no write took fail with it.
        if h.err then stop = stop + self.wq:drop() end
        self.cq_done = stop
        local data = self:settle(first, stop, h.err, wakes)
        if h.err then self:break_down(data and "writing blocks and metadata" or "writing metadata", h.err) end
    end
    for j = 1, #wakes do wake(wakes[j]) end
    self:run_commits()
end

-- The batches at places [first, stop) are written (err nil) or have
-- failed: done. Returns whether any had blocks written with it.
function Dedup:settle(first, stop, err, wakes)
    local data = false
    for i = first, stop - 1 do
        local st = self.cq[i]
        self.cq[i] = nil
        st.done, st.err = true, err
        if not err then
            self.written_gen = self.written_gen + 1
            self:written(st)
            if #self.batch_pool < 64 then
                st.batch:clear()
                self.batch_pool[#self.batch_pool + 1] = st.batch
            end
            st.batch = nil
            self.committed = st.seq
        end
        if st.data_job then
            jobs.put(st.data_job)
            st.data_job, data = nil, true
        end
        if st.tok then wakes[#wakes + 1] = st.tok end
    end
    return data
end

-- The batch's data is in the file: write it (after those before it).
function Dedup:commit(st)
    st.ready = true
    self:run_commits()
    if not st.done then
        st.tok = token()
        park(st.tok)
    end
    if st.err then error(st.err, 0) end
    if self.releasing then return end
    -- Too much new data since the last checkpoint (opening after a crash
    -- rehashes it all), or too many ids waiting to be reused: a
    -- checkpoint, or a sync of the WAL alone. In a coroutine of its own:
    -- no request waits for it, and the requests that cross the limit
    -- meanwhile start no other. (Outside the server, as in the specs,
    -- there is no loop to resume it: on the spot.)
    local fn
    if self.journaled * self.block > JOURNAL_BYTES then
        fn = self.checkpoint_behind
    elseif self.ids.limbo_count > LIMBO_MAX or #self.frag_limbo > LIMBO_MAX
        or (self.pbns ~= self.ids and self.pbns.limbo_count > LIMBO_MAX) then
        fn = self.release_behind
    end
    if fn then
        self.releasing = true
        if sched.in_request() then sched.spawn(fn, self) else fn(self) end
    end
end

function Dedup:release_behind()
    local ok, err = pcall(self.release, self)
    self.releasing = false
    if not ok then self:break_down("syncing the log", err) end
end

function Dedup:checkpoint_behind()
    local ok, err = pcall(self.checkpoint, self)
    self.releasing = false
    if not ok then self:break_down("a checkpoint", err) end
end

-- After a failure between deciding and writing, memory and RocksDB may
-- disagree: refuse further writes (what RocksDB holds stays consistent).
function Dedup:break_down(what, err)
    -- Requests waiting to write into a failed request's fresh packed
    -- blocks go on (compress=).
    for _, st in pairs(self.filling or {}) do self:end_fills(st) end
    if not self.broken then
        self.broken = what
        usbd.log(0, "dedupdisk: %s failed (%s): writes refused until restart", what, tostring(err))
    end
end

-- ---- Checkpoints, and syncs of the WAL --------------------------------------

-- Every answered write is committed; make the file, then the WAL, durable.
-- The batches written before the file's sync began name only bytes it
-- made durable: their journal lists go (usbd.dedup.journal).
function Dedup:checkpoint()
    local upto, journaled = self.committed, self.journaled
    self.file:sync()
    self:release()
    self.journaled = self.journaled - journaled
    if upto > self.forgotten then
        local b = usbd.kv.batch()
        journal.forget(b, upto)
        self.db:write(b, false)
        self.forgotten = math.max(self.forgotten, upto)
    end
end

-- Make the WAL durable: ids and blocks freed by the batches in it become
-- reusable. (Reuse needs the freeing batch durable, not the data: without
-- a flush, many frees trigger this alone, a sync of a small log instead
-- of all the data written since the last flush.)
function Dedup:release()
    local upto = self.committed
    self.db:sync()
    -- Replies still sending blocks these ids held (lent by reads before
    -- the ids were freed) take their copies now: the blocks may be
    -- rewritten once the ids are reused.
    if self.map then usbd.settle_borrowed() end
    self.ids:durable(upto)
    if self.pbns ~= self.ids then self.pbns:durable(upto) end
    self:frags_durable(upto)
end

return { methods = Dedup }

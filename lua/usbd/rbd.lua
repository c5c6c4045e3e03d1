-- usbd.rbd: a Ceph RBD image, read and written without stalling the server.
--
--   local img = usbd.rbd.open { pool = "rbd", image = "disk", conf = "/etc/ceph/ceph.conf",
--                               id = "admin", create_size = 2^30 }
--   img:read(buf, pos)            -- fills all of buf
--   img:write(buf, pos)           -- all of buf, at pos
--   img:discard(pos, len)         -- reads as zeroes afterwards
--   img:write_zeroes(pos, len)
--   img:flush()                   -- what was written is durable
--   img:allocated(pos, len)       -- { offset, length, ... } of data, whole objects
--   img:fast_diff()               -- true if allocated() is cheap (object map)
--   img:size(), img:close()
--   img:on_change(fn)             -- fn() when the header changes (a resize elsewhere)
--   img.busy, img.peak            -- calls in flight now, and at most so far
--
-- Inside a request, reads, writes, discards, zeroes and flushes are librbd's
-- asynchronous calls: started from the loop, completed on librbd's threads,
-- and the request waits while the others go on (no worker thread per
-- request). Elsewhere (open(args), --check, specs) each runs on the spot.
-- Data moves straight between librbd and buf. A failure raises an errno
-- error (usbd.E.IO, ...), which the client receives as such. The image and
-- the connection close when the object is collected, or at img:close().
local ffi = require "ffi"
local u8p, u64s = ffi.typeof("uint8_t *"), ffi.typeof("uint64_t[?]")  -- (types, not strings: parsed once)
local C = require "usbd.core"
local errors = require "usbd.errors"
local jobs = require "usbd.jobs"
local E = errors.E

local M = {}

local Image = {}
Image.__index = Image

local RUN, SUBMIT = C.usbd_job_rbd, C.usbd_rbd_submit
local READ, WRITE, DISCARD = C.USBD_RBD_READ, C.USBD_RBD_WRITE, C.USBD_RBD_DISCARD
local WRITE_ZEROES, FLUSH, EXTENTS = C.USBD_RBD_WRITE_ZEROES, C.USBD_RBD_FLUSH, C.USBD_RBD_EXTENTS
local SIZE = C.USBD_RBD_SIZE

-- errno number -> the usbd.E error the client should see; EIO for the rest.
local by_errno = {}
for _, e in pairs(E) do by_errno[e.errno] = e end
local function raise(errno)
    error(by_errno[errno] or E.IO, 0)
end

-- Run op as a job (started in librbd, or with start nil on a worker);
-- raises its errno, else returns its result.
local function call(self, op, ptr, len, pos, start, cap)
    local handle = jobs.resource(self, "handle")
    local job = jobs.get()
    job.run, job.ctx, job.arg, job.ptr, job.len, job.pos = RUN, handle, op, ptr, len, pos
    job.fd = cap or 0
    jobs.begin_call(self)
    if self.busy > self.peak then self.peak = self.busy end
    if start then
        jobs.run_started(job, start)
    else
        jobs.run(job)  -- no aio form: a worker thread runs it
    end
    jobs.end_call(self)
    local err, result = job.err, job.result
    jobs.put(job)
    if err ~= 0 then raise(err) end
    return result
end

local function writable(self)
    if self.readonly then raise(E.ROFS.errno) end
end

-- Fill all of buf with the image's bytes at pos.
function Image:read(buf, pos)
    if buf.len > 0 then call(self, READ, buf.ptr, buf.len, pos, SUBMIT) end
end

-- Write all of buf at pos.
function Image:write(buf, pos)
    writable(self)
    if buf.len > 0 then call(self, WRITE, buf.ptr, buf.len, pos, SUBMIT) end
end

-- Discard [pos, pos+len): storage given back, reads as zeroes.
function Image:discard(pos, len)
    writable(self)
    if len > 0 then call(self, DISCARD, nil, len, pos, SUBMIT) end
end

-- Make [pos, pos+len) read as zeroes, without sending any.
function Image:write_zeroes(pos, len)
    writable(self)
    if len > 0 then call(self, WRITE_ZEROES, nil, len, pos, SUBMIT) end
end

-- Every write that has completed before this call is durable when it returns.
function Image:flush()
    call(self, FLUSH, nil, 0, 0, SUBMIT)
end

-- Where [pos, pos+len) holds data: a flat list { offset1, length1, ... } in
-- whole objects (4 MiB by default), from librbd's object map when the image
-- has one. At most max runs (default 256): the last one ends where the
-- answer stops being complete.
local runs_cap = 256
local spare_runs = {}  -- answer buffers, one per call in flight
function Image:allocated(pos, len, max)
    max = math.min(max or runs_cap, runs_cap)
    local runs = table.remove(spare_runs) or u64s(2 * runs_cap)
    local ok, n = pcall(call, self, EXTENTS, ffi.cast(u8p, runs), len, pos, nil, max)
    if not ok then
        spare_runs[#spare_runs + 1] = runs
        error(n, 0)
    end
    n = tonumber(n)
    local out = {}
    for i = 0, 2 * n - 1 do out[i + 1] = tonumber(runs[i]) end
    spare_runs[#spare_runs + 1] = runs
    return out, n == max
end

-- True if allocated() is cheap: the image has a valid fast-diff object map.
function Image:fast_diff()
    return self.handle ~= nil and C.usbd_rbd_fast_diff(self.handle) == 1
end

-- The size in bytes now: another client's resize shows (librbd may ask
-- the cluster, so inside a request this waits on a worker).
function Image:size()
    return tonumber(call(self, SIZE, nil, 0, 0))
end

-- Call fn when the image's header changes (another client's rbd resize, a
-- snapshot): from one of librbd's threads, so fn must be a C function that
-- any thread may call, like usbd.size_changed. Once per image.
function Image:on_change(fn)
    if type(fn) ~= "cdata" then
        error("usbd.rbd: on_change wants a C function (usbd.size_changed), not a " .. type(fn), 2)
    end
    local rc = C.usbd_rbd_watch(jobs.resource(self, "handle"), fn)
    if rc < 0 then raise(-rc) end
end

-- Close the image (releasing its lock) and the connection; with calls
-- still running, once they have finished.
function Image:close()
    jobs.close_when_idle(self, "handle", C.usbd_rbd_close)
end

function Image:__tostring()
    return ("usbd.rbd(%s%s)"):format(self.name, self.readonly and ", read-only" or "")
end

-- Open an image. opts:
--   pool, image          where it is (required)
--   snap = "name"        a snapshot of it, read-only
--   conf = "path"        ceph.conf (default: CEPH_CONF, then /etc/ceph/ceph.conf)
--   id = "name"          the client to connect as (default admin)
--   create_size = n      create the image with n bytes if it does not exist
--   timeout = s          seconds to reach the cluster before giving up (30)
--   io_timeout = s       seconds an I/O waits for the cluster (default: forever)
--   readonly = true      writes raise EROFS
--   exclusive = false    do not take the exclusive lock (default: a writer takes
--                        it, and a second writer on the same image is refused)
-- Raises a one-line error that says what to fix.
function M.open(opts)
    local pool, image = opts.pool, opts.image
    if type(pool) ~= "string" or pool == "" or type(image) ~= "string" or image == "" then
        error("usbd.rbd.open wants pool= and image=", 2)
    end
    local readonly = opts.readonly or (opts.snap ~= nil and opts.snap ~= "")
    local cfg = ffi.new("usbd_rbd_config", {
        conf = opts.conf, id = opts.id, pool = pool, image = image, snap = opts.snap,
        create_size = opts.create_size or 0,
        timeout = opts.timeout or 0, io_timeout = opts.io_timeout or 0,
        readonly = readonly and 1 or 0,
        exclusive = opts.exclusive == false and 0 or 1,
    })
    local msg = ffi.new("char[512]")
    local handle = C.usbd_rbd_open(cfg, msg, 512)
    if handle == nil then
        error(ffi.string(msg), 0)
    end
    local name = pool .. "/" .. image .. (opts.snap and opts.snap ~= "" and "@" .. opts.snap or "")
    return setmetatable({
        handle = ffi.gc(handle, C.usbd_rbd_close),
        name = name,
        readonly = readonly and true or false,
        busy = 0,   -- calls in flight
        peak = 0,   -- most calls in flight at once
    }, Image)
end

return M

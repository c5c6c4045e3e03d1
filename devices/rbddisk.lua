-- rbddisk.lua: a block device stored in Ceph, as an RBD image. What
-- rbd-nbd does, with any Lua device (a cipher, an overlay, a tracer) able to
-- stand in front of it.
--
--   usbd-lua -U /tmp/rbd.sock devices/rbddisk.lua image=disk size=10G
--   usbd-lua devices/rbddisk.lua /dev/nbd0 pool=vms image=disk conf=/etc/ceph/ceph.conf id=admin
--
--   pool=NAME       the pool (default rbd)
--   image=NAME      the image; created if absent when size= is given
--   size=SIZE       the size of a new image (an existing one keeps its own;
--                   after rbd resize, the new one is served by itself)
--   snap=NAME       serve a snapshot of the image, read-only
--   readonly=true   serve the image read-only (and take no lock)
--   conf=FILE       ceph.conf (default: $CEPH_CONF, then /etc/ceph/ceph.conf)
--   id=NAME         the cephx client (default admin; its keyring as conf says)
--   timeout=S       seconds to reach the cluster at start-up (default 30)
--   io_timeout=S    seconds an I/O may wait for the cluster before it fails
--                   (the client sees EIO; default: wait, as a disk would)
--   exclusive=false share the image with other writers (you keep them apart)
--
-- One writer: the server takes the image's exclusive lock (the image needs
-- the exclusive-lock feature, which rbd create gives by default) and keeps
-- it until it stops, so a second server on the same image fails at start-up
-- with "image ... is in use". Read-only ones (snap=, readonly=true) take no lock.
-- A server that dies without stopping (kill -9) holds the lock until Ceph
-- notices it is gone (the OSDs' watch timeout, 30 s by default): the next
-- server waits that long, then takes the lock over.
--
-- Every request is one asynchronous librbd call, started here and completed
-- on librbd's threads while this request waits; a client with 16 requests
-- in flight has 16 in flight in Ceph. Data moves straight between librbd
-- and the request's buffer.
local usbd = require "usbd"

local Rbddisk = {}
Rbddisk.__index = Rbddisk
local ReadonlyRbddisk = {}  -- filled in at the end: the reading half of Rbddisk
ReadonlyRbddisk.__index = ReadonlyRbddisk

local function seconds(args, key)
    local v = args[key]
    if v == nil then return nil end
    local n = tonumber(v)
    if not n or n <= 0 or n ~= math.floor(n) then
        error(("%s=%s: give whole seconds, like %s=10"):format(key, v, key), 0)
    end
    return n
end

local function open(args)
    if not args.image or args.image == "" then
        error("rbddisk needs image=NAME (and size=SIZE to create it)", 0)
    end
    local image = usbd.rbd.open {
        pool = args.pool or "rbd",
        image = args.image,
        snap = args.snap,
        conf = args.conf,
        id = args.id,
        create_size = usbd.size_arg(args, "size"),
        timeout = seconds(args, "timeout"),
        io_timeout = seconds(args, "io_timeout"),
        readonly = usbd.parse_bool(args, "readonly", false),
        exclusive = usbd.parse_bool(args, "exclusive", true),
    }
    -- An image resized elsewhere is served at its new size, unasked.
    if not args.snap then image:on_change(usbd.size_changed) end
    return setmetatable({ image = image, fast_diff = image:fast_diff() },
        image.readonly and ReadonlyRbddisk or Rbddisk)
end

-- The image's size now. After `rbd resize` by anyone, librbd tells the
-- image (on_change above) and the server asks again (docs/operations.md,
-- "Resizing"), as rbd-nbd does.
function Rbddisk:size()
    return self.image:size()
end

-- RBD stores 4 MiB objects; clients that write whole pages spare it
-- read-modify-writes of partial sectors.
function Rbddisk:block_size()
    return 4096
end

function Rbddisk:read_at(buf, pos)
    self.image:read(buf, pos)
end

function Rbddisk:write_at(buf, pos)
    self.image:write(buf, pos)
end

-- Trim is a discard: the objects' storage goes back to the cluster.
function Rbddisk:trim(pos, count)
    self.image:discard(pos, count)
end

function Rbddisk:write_zeroes(pos, count)
    self.image:write_zeroes(pos, count)
end

-- A real librbd flush: every write already answered is on the OSDs (and
-- out of librbd's cache) when it returns.
function Rbddisk:flush()
    self.image:flush()
end

-- Block status: data where objects exist, holes that read as zeroes where
-- none do, a whole object at a time. Only from the fast-diff object map
-- (rbd create's default): without it librbd would visit every object, so
-- the whole range is reported as data, as for a device without extents.
function Rbddisk:extents(pos, count)
    if not self.fast_diff then return { count, 0 } end
    local runs, partial = self.image:allocated(pos, count)
    local out, at, stop = {}, pos, pos + count
    local function run(to, flags)
        to = math.min(to, stop)
        if to > at then
            out[#out + 1] = to - at
            out[#out + 1] = flags
            at = to
        end
    end
    for i = 1, #runs, 2 do
        local off, len = runs[i], runs[i + 1]
        run(off, usbd.HOLE + usbd.ZERO)  -- up to the object: none there
        run(off + len, 0)
    end
    if not partial then run(stop, usbd.HOLE + usbd.ZERO) end
    if #out == 0 then run(stop, 0) end  -- nothing certain: say data
    return out
end

-- For the server's statistics (SIGUSR1, exit).
function Rbddisk:stats()
    return {
        ["rbd.image"] = self.image.name,
        ["rbd.in_flight"] = self.image.busy,
        ["rbd.in_flight_peak"] = self.image.peak,
    }
end

-- The server flushes before it closes; closing releases the lock.
function Rbddisk:close()
    usbd.log(1, "rbddisk %s: at most %d requests were in flight at once", self.image.name, self.image.peak)
    self.image:close()
end

-- A snapshot (or readonly=true) offers no writes at all.
for _, m in ipairs { "size", "block_size", "read_at", "extents", "stats", "close" } do
    ReadonlyRbddisk[m] = Rbddisk[m]
end

-- params: the keys open takes; any other is refused, naming it.
return {
    open = open,
    params = {
        pool = "the pool (default rbd)", image = "the image", snap = "a snapshot, served read-only",
        conf = "ceph.conf (default: $CEPH_CONF, then /etc/ceph/ceph.conf)", id = "the client id (default admin)",
        size = "create the image with this size when it does not exist",
        timeout = "seconds to connect (default 30)", io_timeout = "seconds an I/O may take before EIO",
        readonly = "serve read-only (true/false)", exclusive = "take the exclusive lock (default true)",
    },
}

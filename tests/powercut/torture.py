#!/usr/bin/python3
"""A crash torture for a deduplicating NBD export, with a model of what each
block may hold after the crash.

  torture.py load  URI --seed S --seconds T --state FILE
  torture.py check URI --state FILE
  torture.py reuse URI --state FILE

load drives the export from several connections with many requests in
flight: duplicates from a small pool of contents, unique contents, copies
of runs written elsewhere, large and small writes, unaligned writes, trims,
write_zeroes, FLUSH and FUA. Every choice comes from random.Random(S), and
from the same model the requests are the same whatever the timing (a
request waits for the blocks it touches to be idle rather than picking
others), so a round replays; only where the crash falls differs (and with
it the model the next round starts from).

The model, per 4 KiB block of the loaded region (the device's last
SCRATCH_BYTES are left to reuse): `stable`, the version the last FLUSH
covers (a write is covered by a flush if it completed before the flush was
issued; a FUA write covers itself when it completes), and `later`, every
version issued since (completed or not). No two requests in flight touch
one block, so each new version is determined. After a crash a block must
read `stable` if `later` is empty, else one of stable, later or zeroes.

A version is a description, not bytes: 4096 bytes as segments (length,
stream, position), where stream 0 is zeroes, -1-i pool content i, a
positive number a unique stream (its block k embeds "PCUT-U stream k"), a
hex string literal bytes. With its 16-byte BLAKE2b hash beside it, the
model stays small and any version can be made again.

The state is FILE (a JSON snapshot, replaced atomically) plus a journal of
the events since it (FILE.jN, named in the snapshot). An issue is written
to the journal before the request is sent, so a load killed at any moment
leaves a model that lists every version that may have reached the device;
completions and flushes follow it, at the latest with the next issue or
flush. check and reuse read both.

check reads the region, prints each violation, exits 1 on any, and folds
what it read into the model as the new stable state (keeping the versions
the round left in `later`, for reuse). reuse writes each of those and the
pool into the scratch region, flushes, reads them back and exits 1 on any
difference or refused write: a content whose record survived a crash
without its bytes would be shared by the new write and read back wrong.
"""
import argparse
import hashlib
import json
import os
import random
import select
import sys
import time

import nbd

BLOCK = 4096
POOL = 16                   # duplicate contents, the same in every round
SCRATCH_BYTES = 16 << 20    # the device's end, left free for reuse
CONNS = 4
DEPTH = 16                  # requests in flight per connection
SNAPSHOT_EVERY = 0.3        # seconds between snapshots (the journal bounds loss)
ZERO = bytes(BLOCK)
ZDESC = [[BLOCK, 0, 0]]


def digest(b):
    return hashlib.blake2b(b, digest_size=16).hexdigest()


ZHASH = digest(ZERO)

# ---- Contents ---------------------------------------------------------------


# Random bytes to cut bodies from: hashing each block's own would cost
# more than the rest of the load.
TABLE = hashlib.shake_128(b"powercut table").digest((1 << 20) + BLOCK)


def _body(head, tag):
    # The header makes the block unique; the body is cut from TABLE where
    # the header's hash says, in three kinds so that compress= packs some
    # and stores others raw: random, a quarter random, nearly all text.
    d = hashlib.blake2b(head, digest_size=8).digest()
    kind, at = d[0] % 10, int.from_bytes(d[1:5], "little") % (1 << 20)
    nrand = BLOCK - len(head) if kind < 4 else (1024 if kind < 7 else 48)
    fill = BLOCK - len(head) - nrand
    return head + TABLE[at:at + nrand] + (tag * (fill // len(tag) + 1))[:fill]


_gen_cache = {}


def gen_block(stream, k):
    """Block k of a stream: 4096 bytes no other (stream, k) has."""
    key = (stream, k)
    b = _gen_cache.get(key)
    if b is not None:
        return b
    if stream < 0:
        i = -stream - 1
        b = _body(b"PCUT-POOL %d\n" % i, b"pool %d " % i)
    else:
        b = _body(b"PCUT-U %d %d\n" % (stream, k), b"u%d.%d " % (stream, k))
    if len(_gen_cache) > 4096:
        _gen_cache.clear()
    _gen_cache[key] = b
    return b


def stream_bytes(stream, pos, n):
    if stream == 0:
        return bytes(n)
    if isinstance(stream, str):
        return bytes.fromhex(stream)[pos:pos + n]
    first, last = pos // BLOCK, (pos + n - 1) // BLOCK
    raw = b"".join(gen_block(stream, k) for k in range(first, last + 1))
    return raw[pos - first * BLOCK:pos - first * BLOCK + n]


def desc_bytes(desc):
    return b"".join(stream_bytes(s, p, n) for n, s, p in desc)


def merge(desc, off, n, stream, pos):
    """desc with bytes [off, off+n) replaced by the stream's from pos:
    its parts before, the new segment, its parts after; adjacent zeroes
    and contiguous pieces of one stream joined."""
    segs, at = [], 0
    for ln, s, p in desc:
        a, b = at, at + ln
        if a < off:
            segs.append([min(b, off) - a, s, p])
        at = b
    segs.append([n, stream, 0 if stream == 0 else pos])
    at = 0
    for ln, s, p in desc:
        a, b = at, at + ln
        if b > off + n:
            cut = max(a, off + n) - a
            segs.append([ln - cut, s, p if s == 0 else p + cut])
        at = b
    out = []
    for seg in segs:
        if out:
            last = out[-1]
            if last[1] == seg[1] and not isinstance(seg[1], str) and (seg[1] == 0 or last[2] + last[0] == seg[2]):
                last[0] += seg[0]
                continue
        out.append(list(seg))
    return out


def describe_desc(desc):
    parts = []
    for n, s, p in desc:
        if s == 0:
            what = "zeroes"
        elif isinstance(s, str):
            what = "literal bytes"
        elif s < 0:
            what = "pool %d" % (-s - 1)
        elif n == BLOCK and p % BLOCK == 0:
            what = "unique %d/%d" % (s, p // BLOCK)
        else:
            what = "stream %d@%d" % (s, p)
        parts.append(what if n == BLOCK else "%s x%d" % (what, n))
    return " + ".join(parts)


POOL_HASH = {digest(gen_block(-1 - i, 0)): i for i in range(POOL)}


def describe_bytes(b):
    """What a block read back is, as far as it can be told."""
    h = digest(b)
    if h == ZHASH:
        return "zeroes"
    if h in POOL_HASH:
        return "%s: pool %d" % (h[:12], POOL_HASH[h])
    tags = []
    at = b.find(b"PCUT-")
    while at >= 0 and len(tags) < 3:
        end = b.find(b"\n", at, at + 40)
        tags.append("%r at %d" % (b[at:end if end > 0 else at + 24].decode("ascii", "replace"), at))
        at = b.find(b"PCUT-", at + 5)
    nz = BLOCK - b.count(0)
    return "%s: %s%s" % (h[:12], ", ".join(tags) if tags else "no tag",
                         "" if nz == BLOCK else ", %d non-zero bytes" % nz)


# ---- The model and its state ----------------------------------------------


class Model:
    """Versions per block, changed only by events (live or replayed)."""

    def __init__(self, region, device):
        self.region, self.device = region, device
        self.stable = [[ZDESC, ZHASH] for _ in range(region)]
        self.later = {}       # block -> [[desc, hash, req, done clock or None]]
        self.inflight = {}    # req -> [blocks, fua]
        self.flushing = {}    # flush req -> clock at issue
        self.clock = 0
        self.next_req = 1
        self.next_stream = 1
        self.last_round = []  # [desc, hash]: what reuse writes
        self.gen = 0

    # Events --------------------------------------------------------------
    def issue(self, req, fua, items):
        self.clock += 1
        # The counters follow the journal too: a load killed between
        # snapshots must not make the next one reuse a request's number or a
        # unique stream.
        self.next_req = max(self.next_req, req + 1)
        blocks = []
        for blk, desc, h in items:
            self.later.setdefault(blk, []).append([desc, h, req, None])
            blocks.append(blk)
            for _, s, _ in desc:
                if isinstance(s, int) and s >= self.next_stream:
                    self.next_stream = s + 1
        self.inflight[req] = [blocks, fua]

    def complete(self, req, ok):
        self.clock += 1
        blocks, fua = self.inflight.pop(req)
        if not ok:
            return  # may or may not have reached the device: stays in later
        for blk in blocks:
            vs = self.later[blk]
            for i in range(len(vs) - 1, -1, -1):
                if vs[i][2] == req:
                    vs[i][3] = self.clock
                    if fua:
                        self._settle(blk, i)
                    break

    def issue_flush(self, req):
        self.clock += 1
        self.next_req = max(self.next_req, req + 1)
        self.flushing[req] = self.clock

    def complete_flush(self, req, ok):
        self.clock += 1
        at = self.flushing.pop(req)
        if not ok:
            return
        for blk in list(self.later):
            vs = self.later[blk]
            for i in range(len(vs) - 1, -1, -1):
                if vs[i][3] is not None and vs[i][3] < at:
                    self._settle(blk, i)
                    break

    def _settle(self, blk, i):
        vs = self.later[blk]
        self.stable[blk] = [vs[i][0], vs[i][1]]
        if i + 1 < len(vs):
            self.later[blk] = vs[i + 1:]
        else:
            del self.later[blk]

    def apply(self, ev):
        kind = ev[0]
        if kind == "w":
            self.issue(ev[1], ev[2], ev[3])
        elif kind == "c":
            self.complete(ev[1], ev[2])
        elif kind == "f":
            self.issue_flush(ev[1])
        elif kind == "F":
            self.complete_flush(ev[1], ev[2])

    # Queries -------------------------------------------------------------
    def latest(self, blk):
        vs = self.later.get(blk)
        return (vs[-1][0], vs[-1][1]) if vs else tuple(self.stable[blk])

    def allowed(self, blk):
        """[(role, desc, hash)] a block may read after a crash."""
        st = self.stable[blk]
        out = [("stable", st[0], st[1])]
        for desc, h, req, done in self.later.get(blk, ()):
            out.append(("later (request %d, %s)" % (req, "completed" if done else "not completed"), desc, h))
        if blk in self.later:
            out.append(("zeroes", ZDESC, ZHASH))
        return out

    # Persistence ---------------------------------------------------------
    def to_json(self):
        return {
            "format": 1, "region": self.region, "device": self.device,
            "clock": self.clock, "next_req": self.next_req, "next_stream": self.next_stream,
            "stable": self.stable, "later": {str(k): v for k, v in self.later.items()},
            "inflight": {str(k): v for k, v in self.inflight.items()},
            "flushing": {str(k): v for k, v in self.flushing.items()},
            "last_round": self.last_round, "gen": self.gen,
        }

    @classmethod
    def from_json(cls, j):
        m = cls(j["region"], j["device"])
        m.clock, m.next_req, m.next_stream = j["clock"], j["next_req"], j["next_stream"]
        m.stable = j["stable"]
        m.later = {int(k): v for k, v in j["later"].items()}
        m.inflight = {int(k): v for k, v in j["inflight"].items()}
        m.flushing = {int(k): v for k, v in j["flushing"].items()}
        m.last_round, m.gen = j["last_round"], j["gen"]
        return m


class State:
    """The model on disk: a snapshot replaced atomically, and a journal."""

    def __init__(self, path, model):
        self.path, self.model = path, model
        self.jfd = None
        self.pending = []

    def journal_name(self, gen):
        return "%s.j%d" % (self.path, gen)

    @classmethod
    def open(cls, path, device=None):
        if not os.path.exists(path):
            if device is None:
                sys.exit("%s: no such state" % path)
            region = (device - SCRATCH_BYTES) // BLOCK
            if region < 256:
                sys.exit("the device (%d bytes) is too small" % device)
            st = cls(path, Model(region, device // BLOCK))
            st.snapshot()
            return st
        with open(path) as f:
            m = Model.from_json(json.load(f))
        st = cls(path, m)
        replayed = 0
        try:
            with open(st.journal_name(m.gen), "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # cut short by a kill: its request was never sent
                    m.apply(json.loads(line))
                    replayed += 1
        except FileNotFoundError:
            pass
        st.replayed = replayed
        return st

    def event(self, ev):
        self.model.apply(ev)
        self.pending.append(json.dumps(ev, separators=(",", ":")))

    def sync_journal(self):
        """Write the events so far (before a request is sent, and after a
        flush completes): the load may be killed at any moment."""
        if self.pending:
            os.write(self.jfd, ("\n".join(self.pending) + "\n").encode())
            self.pending.clear()

    def snapshot(self):
        m = self.model
        old = self.jfd, self.journal_name(m.gen)
        m.gen += 1
        # The new journal exists (empty) before the snapshot naming it does.
        jfd = os.open(self.journal_name(m.gen), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(m.to_json(), f, separators=(",", ":"))
        os.rename(tmp, self.path)
        self.pending.clear()
        self.jfd = jfd
        if old[0] is not None:
            os.close(old[0])
        try:
            os.unlink(old[1])
        except FileNotFoundError:
            pass


# ---- Connections ------------------------------------------------------------


def connect(uri, n):
    hs = []
    for _ in range(n):
        h = nbd.NBD()
        h.connect_uri(uri)
        hs.append(h)
    return hs


def pump(hs, timeout):
    """One wait on every connection's socket, then let libnbd move.
    Returns False when a connection has failed (the server is gone)."""
    p = select.poll()
    byfd = {}
    for h in hs:
        d = h.aio_get_direction()
        ev = (select.POLLIN if d & nbd.AIO_DIRECTION_READ else 0) | (select.POLLOUT if d & nbd.AIO_DIRECTION_WRITE else 0)
        if ev:
            fd = h.aio_get_fd()
            byfd[fd] = h
            p.register(fd, ev)
    try:
        for fd, ev in p.poll(int(timeout * 1000)):
            h = byfd[fd]
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            if ev & select.POLLOUT:
                h.aio_notify_write()
    except nbd.Error as e:
        print("load: connection failed: %s" % e, flush=True)
        return False
    return True


# ---- load -------------------------------------------------------------------


# What the load sends, and how often: a flush every 25 requests or so, so
# that a crash finds both flushed and unflushed writes.
KINDS = ["pool", "small", "large", "copy", "unaligned", "trim", "zero", "flush"]
WEIGHTS = [20, 15, 10, 15, 12, 6, 6, 4]


class Load:
    def __init__(self, st, rng, hs):
        self.st, self.m, self.rng, self.hs = st, st.model, rng, hs
        self.busy = set()              # blocks of requests in flight
        self.per_conn = [0] * len(hs)
        self.done = []                 # (req, ok) from completion callbacks
        self.cache = {}                # block -> bytes of its latest version
        self.seq = 0                   # requests made, picks the connection
        self.counts = {}
        self.failed = 0                # requests the server answered with an error
        # What the export offers (a dedupdisk: all); the rest is not sent.
        h = hs[0]
        self.can = {"fua": h.can_fua(), "flush": h.can_flush(), "trim": h.can_trim(), "zero": h.can_zero()}
        self.weights = [w if self.can.get(k, True) else 0 for k, w in zip(KINDS, WEIGHTS)]

    def bytes_of(self, blk):
        b = self.cache.get(blk)
        if b is None:
            b = desc_bytes(self.m.latest(blk)[0])
            self.cache[blk] = b
        return b

    def new_stream(self):
        s = self.m.next_stream
        self.m.next_stream += 1
        return s

    # Making requests (deterministic: rng and the model's issued versions).
    def make(self):
        r, region = self.rng, self.m.region
        self.seq += 1
        conn = self.seq % len(self.hs)
        kind = r.choices(KINDS, self.weights)[0]
        fua = kind != "flush" and r.random() < 0.1 and self.can["fua"]
        if kind == "flush":
            return {"kind": kind, "conn": conn, "blocks": []}
        if kind == "pool":
            n = r.choice([1, 1, 2, 4, 8, 16])
            start = r.randrange(region - n + 1)
            same = r.random() < 0.3
            first = r.randrange(POOL)
            descs = [[[BLOCK, -1 - (first if same else r.randrange(POOL)), 0]] for _ in range(n)]
            return self._aligned(kind, conn, fua, start, descs)
        if kind == "small":
            s = self.new_stream()
            return self._aligned(kind, conn, fua, r.randrange(region), [[[BLOCK, s, 0]]])
        if kind == "large":
            n = r.choice([16, 32, 64, 128, 256, 256])
            start = r.randrange(region // 256) * 256 if n == 256 else r.randrange(region - n + 1)
            s = self.new_stream()
            return self._aligned(kind, conn, fua, start, [[[BLOCK, s, k * BLOCK]] for k in range(n)])
        if kind == "copy":
            n = r.choice([1, 8, 64, 256, 256, 256])
            if n == 256:
                src, dst = (r.randrange(region // 256) * 256 for _ in range(2))
            else:
                src, dst = r.randrange(region - n + 1), r.randrange(region - n + 1)
            descs = [self.m.latest(src + i)[0] for i in range(n)]
            req = self._aligned(kind, conn, fua, dst, descs, src)
            return req
        if kind == "unaligned":
            return self._unaligned(conn, fua)
        # trim or zero: whole blocks, or 512-byte edges inside partial blocks
        n = r.choice([1, 4, 32, 256])
        start = r.randrange(region - n + 1)
        off, ln = start * BLOCK, n * BLOCK
        if r.random() < 0.3:
            off += 512 * r.randrange(1, 8)
            ln = max(512, ln - 512 * r.randrange(1, 16))
            ln = min(ln, region * BLOCK - off)
        return self._ranged(kind, conn, fua, off, ln, 0, 0)

    def _aligned(self, kind, conn, fua, start, descs, src=None):
        items, data = [], []
        for i, d in enumerate(descs):
            b = self.cache.get(src + i) if src is not None else None
            if b is None:
                b = desc_bytes(d)
            items.append([start + i, d, digest(b)])
            data.append(b)
        return {"kind": kind, "conn": conn, "fua": fua, "off": start * BLOCK, "items": items,
                "data": b"".join(data), "blocks": [it[0] for it in items], "bytes": data}

    def _unaligned(self, conn, fua):
        r, region = self.rng, self.m.region
        if r.random() < 0.5:
            off = 512 * r.randrange(region * 8 - 16)
            ln = 512 * r.randrange(1, 17)
        else:
            off = r.randrange(region * BLOCK - 70000)
            ln = r.randrange(1, 65537)
        return self._ranged("unaligned", conn, fua, off, ln, self.new_stream(), 0)

    def _ranged(self, kind, conn, fua, off, ln, stream, pos0):
        """A write of stream bytes (0: zeroes) at [off, off+ln): each block
        touched becomes its latest version with those bytes merged in."""
        items, news = [], []
        for blk in range(off // BLOCK, (off + ln - 1) // BLOCK + 1):
            a, b = max(off, blk * BLOCK), min(off + ln, (blk + 1) * BLOCK)
            pos = pos0 + a - off
            if a == blk * BLOCK and b - a == BLOCK:
                desc = [[BLOCK, stream, 0 if stream == 0 else pos]]
                nb = stream_bytes(stream, pos, BLOCK)
            else:
                desc = merge(self.m.latest(blk)[0], a - blk * BLOCK, b - a, stream, pos)
                old = self.bytes_of(blk)
                nb = old[:a - blk * BLOCK] + stream_bytes(stream, pos, b - a) + old[b - blk * BLOCK:]
            items.append([blk, desc, digest(nb)])
            news.append(nb)
        req = {"kind": kind, "conn": conn, "fua": fua, "off": off, "len": ln, "items": items,
               "blocks": [it[0] for it in items], "bytes": news}
        if kind == "unaligned":
            req["data"] = stream_bytes(stream, pos0, ln)
        return req

    # Sending ---------------------------------------------------------------
    def ready(self, req):
        return self.per_conn[req["conn"]] < DEPTH and not any(b in self.busy for b in req["blocks"])

    def send(self, req):
        m, st = self.m, self.st
        rid = m.next_req
        m.next_req += 1
        kind = req["kind"]
        if kind == "flush":
            st.event(["f", rid])
        else:
            st.event(["w", rid, req["fua"], req["items"]])
            for blk, b in zip(req["blocks"], req["bytes"]):
                self.cache[blk] = b
            self.busy.update(req["blocks"])
        st.sync_journal()  # the issue is on disk before the request leaves
        c = req["conn"]
        self.per_conn[c] += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        h = self.hs[c]
        flags = nbd.CMD_FLAG_FUA if req.get("fua") else 0

        def cb(err, rid=rid, req=req):
            self.done.append((rid, req, err.value))
            return 1
        if kind == "flush":
            h.aio_flush(completion=cb)
        elif kind == "trim":
            h.aio_trim(req["len"], req["off"], completion=cb, flags=flags)
        elif kind == "zero":
            h.aio_zero(req["len"], req["off"], completion=cb, flags=flags)
        else:
            h.aio_pwrite(req["data"], req["off"], completion=cb, flags=flags)

    def reap(self):
        failed = 0
        for rid, req, err in self.done:
            self.per_conn[req["conn"]] -= 1
            if req["kind"] == "flush":
                self.st.event(["F", rid, err == 0])
                self.st.sync_journal()  # a completed flush is on disk at once
            else:
                self.st.event(["c", rid, err == 0])
                self.busy.difference_update(req["blocks"])
            if err:
                failed += 1
                self.failed += 1
                if self.failed <= 10:
                    print("load: request %d (%s) failed: %s" % (rid, req["kind"], os.strerror(err)), flush=True)
        self.done.clear()
        return failed

    def in_flight(self):
        return sum(self.per_conn)


def cmd_load(a):
    hs = connect(a.uri, CONNS)
    size = hs[0].get_size()
    st = State.open(a.state, size)
    m = st.model
    if m.device != size // BLOCK:
        sys.exit("the state is for a %d-block device, this one has %d" % (m.device, size // BLOCK))
    # A request still in flight when the last load was killed never completes
    # (its versions stay in later).
    m.inflight.clear()
    m.flushing.clear()
    st.snapshot()  # fold any journal replayed, start a fresh one
    load = Load(st, random.Random(a.seed), hs)
    start = time.monotonic()
    deadline = start + a.seconds
    next_snap = start + SNAPSHOT_EVERY
    next_note = start + 1
    req, alive = None, True
    while alive and time.monotonic() < deadline:
        if req is None:
            req = load.make()
        if load.ready(req):
            try:
                load.send(req)
            except nbd.Error as e:  # the handle is dead: the server is gone
                print("load: connection failed: %s" % e, flush=True)
                break
            req = None
            continue
        # A request that fails stays in later; the load goes on, as the
        # model still holds. Only a lost connection ends it.
        alive = pump(hs, min(0.05, max(0, deadline - time.monotonic())))
        load.reap()
        if time.monotonic() >= next_snap:
            st.sync_journal()
            st.snapshot()
            next_snap = time.monotonic() + SNAPSHOT_EVERY
        if time.monotonic() >= next_note:
            # Progress, as the load usually ends killed.
            print("load: %.0f s, %d requests (%d failed), %d in flight, %d blocks with unflushed versions" % (
                time.monotonic() - start, sum(load.counts.values()), load.failed, load.in_flight(), len(m.later)),
                flush=True)
            next_note += 1
    while alive and load.in_flight():
        alive = pump(hs, 1.0)
        load.reap()
    st.sync_journal()
    st.snapshot()
    print("load: %d requests in %.1f s (%s), %d failed, %d blocks with unflushed versions" % (
        sum(load.counts.values()), time.monotonic() - start,
        ", ".join("%s %d" % kv for kv in sorted(load.counts.items())), load.failed, len(m.later)))
    return 3 if not alive else (4 if load.failed else 0)


# ---- check ------------------------------------------------------------------


def read_blocks(h, first, n):
    """Blocks first .. first+n-1, 1 MiB per request, 8 in flight. A block
    that cannot be read (a 1 MiB read failed, then its own) is None."""
    out = [None] * n
    step = 256
    chunks = list(range(0, n, step))
    bufs = {}
    failed = []
    while chunks or bufs:
        while chunks and len(bufs) < 8:
            i = chunks.pop(0)
            k = min(step, n - i)
            buf = nbd.Buffer(k * BLOCK)
            bufs[h.aio_pread(buf, (first + i) * BLOCK)] = (i, k, buf)
        h.poll(-1)
        for cookie in list(bufs):
            try:
                if not h.aio_command_completed(cookie):
                    continue
            except nbd.Error:
                failed.append(bufs.pop(cookie)[:2])
                continue
            i, k, buf = bufs.pop(cookie)
            b = bytes(buf.to_bytearray())
            for j in range(k):
                out[i + j] = b[j * BLOCK:(j + 1) * BLOCK]
    for i, k in failed:
        for j in range(i, i + k):
            try:
                out[j] = h.pread(BLOCK, (first + j) * BLOCK)
            except nbd.Error:
                pass
    return out


UNREADABLE = "unreadable"   # the hash folded in for a block that failed to read


def cmd_check(a):
    st = State.open(a.state)
    m = st.model
    h = connect(a.uri, 1)[0]
    data = read_blocks(h, 0, m.region)
    violations = 0
    tally = {"exact": 0, "stable": 0, "later": 0, "zeroes": 0}
    round_versions = {}
    # Where else each version is, to say whose data a wrong block holds.
    where = {}
    for blk in range(m.region):
        where.setdefault(m.stable[blk][1], []).append("block %d's stable version" % blk)
        for desc, hh, req, _ in m.later.get(blk, ()):
            where.setdefault(hh, []).append("block %d's version from request %d" % (blk, req))
    for desc, hh in m.last_round:
        where.setdefault(hh, []).append("a content of the round before")
    for blk in range(m.region):
        b = data[blk]
        got = digest(b) if b is not None else UNREADABLE
        allowed = m.allowed(blk)
        for desc, hh, _, _ in m.later.get(blk, ()):
            if hh != ZHASH:
                round_versions.setdefault(hh, desc)
        match = next((al for al in allowed if al[2] == got), None)
        if match is None:
            violations += 1
            if violations <= 40:
                print("VIOLATION block %d (byte %d): read %s" % (
                    blk, blk * BLOCK, describe_bytes(b) if b is not None else "nothing: the read failed (EIO)"))
                if got in where:
                    print("    which is %s" % ", ".join(where[got][:4]))
                for role, desc, hh in allowed:
                    print("    allowed %s: %s %s" % (role, hh[:12], describe_desc(desc)))
            # What it holds now is the stable version from here on (its
            # bytes, or for an unreadable block a hash no read matches).
            m.stable[blk] = [[[BLOCK, b.hex(), 0]] if b is not None else ZDESC, got]
        else:
            role = match[0].split(" ")[0]
            tally["exact" if blk not in m.later else role] += 1
            m.stable[blk] = [match[1], match[2]]
    if violations > 40:
        print("... %d violations in all" % violations)
    pool = [[[[BLOCK, -1 - i, 0]], digest(gen_block(-1 - i, 0))] for i in range(POOL)]
    m.last_round = pool + [[d, hh] for hh, d in round_versions.items() if hh not in POOL_HASH]
    unsettled = len(m.later)
    m.later.clear()
    m.inflight.clear()
    m.flushing.clear()
    st.snapshot()
    print("check: %d blocks (journal: %d events replayed); %d had no unflushed version; of %d that had: "
          "%d read the flushed one, %d a later one, %d zeroes; %d violations" % (
              m.region, st.replayed, tally["exact"], unsettled, tally["stable"], tally["later"],
              tally["zeroes"], violations))
    return 1 if violations else 0


# ---- reuse ------------------------------------------------------------------


def cmd_reuse(a):
    st = State.open(a.state)
    m = st.model
    h = connect(a.uri, 1)[0]
    contents = m.last_round
    room = m.device - m.region
    # Three passes at most: a round whose writes kept failing leaves tens
    # of thousands of versions; a sample (the pool always in) keeps the
    # round's time bounded.
    if len(contents) > 3 * room:
        total = len(contents)
        contents = contents[:POOL] + random.Random(0).sample(contents[POOL:], 3 * room - POOL)
        print("reuse: %d of the round's %d contents, a sample" % (len(contents), total))
    bad = refused = 0
    for at in range(0, len(contents), room):
        part = contents[at:at + room]
        blobs = [desc_bytes(d) for d, _ in part]
        ok = [True] * len(part)
        # 1 MiB requests, as copies are; a refused one is retried block by
        # block to name the contents refused.
        for i in range(0, len(part), 256):
            k = min(256, len(part) - i)
            try:
                h.pwrite(b"".join(blobs[i:i + k]), (m.region + i) * BLOCK)
            except nbd.Error:
                for j in range(i, i + k):
                    try:
                        h.pwrite(blobs[j], (m.region + j) * BLOCK)
                    except nbd.Error as e:
                        ok[j] = False
                        refused += 1
                        if refused <= 20:
                            print("REFUSED write of %s (%s): %s" % (part[j][1][:12], describe_desc(part[j][0]), e))
        if h.can_flush():
            h.flush()
        back = read_blocks(h, m.region, len(part))
        for j, (d, hh) in enumerate(part):
            if ok[j] and (back[j] is None or digest(back[j]) != hh):
                bad += 1
                if bad <= 40:
                    print("REUSE MISMATCH: wrote %s (%s) at block %d, read %s" % (
                        hh[:12], describe_desc(d), m.region + j,
                        describe_bytes(back[j]) if back[j] is not None else "nothing: the read failed (EIO)"))
    print("reuse: %d contents written again (%d of them the pool): %d read back wrong, %d writes refused" % (
        len(contents), POOL, bad, refused))
    return 1 if bad or refused else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["load", "check", "reuse"])
    p.add_argument("uri")
    p.add_argument("--state", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=3600)
    a = p.parse_args()
    sys.exit({"load": cmd_load, "check": cmd_check, "reuse": cmd_reuse}[a.mode](a))


if __name__ == "__main__":
    main()

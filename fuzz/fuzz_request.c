/* libFuzzer target: the transmission phase (src/server/transmission.c), unmodified,
 * on one end of a socketpair. This file stands in for loop.c (the loop_*
 * hooks) and for the device, and plays the client on the other end.
 *
 * Input: two bytes of setup, then the request stream exactly as a client
 * would send it after negotiation.
 *   byte 0 bit 0: structured replies       bit 1: read-only export
 *          bit 2: the device can trim      bit 3: the device can flush
 *                 (and it has write_zeroes unless bit 3 is set, bit 2 not)
 *          bits 4-5: how the device completes: 0 all at once in order,
 *                    1 all at once newest first, 2 one per turn, 3 with
 *                    errors for some
 *          bit 6: tiny socket buffers (replies go out in many pieces)
 *          bit 7: the client reads replies only every fourth turn
 *   byte 1 bits 0-1: --max-inflight 1, 2, 8, 64
 *          bits 2-3: --max-inflight-bytes 4 KiB, 64 KiB, 256 KiB, 4 MiB
 *          bits 4-5: export size 1 MiB, 0, 1 MiB + 511, 2^64 - 512
 *          bit 6: the client vanishes (closes, unread replies and all) two
 *                 turns after it has sent everything
 *          bit 7: a slow device: it holds each request for 100 turns
 *   byte 2 bit 0: the server stops (SIGTERM: conn_close_all) at turn
 *                 (bits 1-6)
 *          bit 7: no metadata context (otherwise, with structured replies,
 *                 base:allocation is selected and BLOCK_STATUS served)
 *
 * The harness parses the stream itself (the model) and rewrites each
 * request's cookie to its index so that every reply can be matched. It
 * checks, and aborts if not:
 *   - the device sees only requests inside the export, nothing that writes
 *     on a read-only export, and a WRITE's payload byte for byte;
 *   - the device never holds more than --max-inflight requests or much more
 *     than --max-inflight-bytes (the server stops reading instead);
 *   - every reply is well-formed, answers a request that was sent, only once,
 *     and a READ's data (a BLOCK_STATUS's descriptors) is what the device put
 *     in the buffer;
 *   - unless the stream was broken (bad magic), every complete request before
 *     EOF/DISC/an oversize WRITE is answered;
 *   - the connection always makes progress, never busy-loops (events that
 *     change nothing, turn after turn), and is freed in the end (leaks are
 *     LeakSanitizer's). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/server/nbd.h"
#include "../src/server/server.h"

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "fuzz_request: " __VA_ARGS__); \
                                              fprintf(stderr, "\n"); abort(); } } while (0)

struct export_info export;  /* start.c's, which is not linked */

/* ---- the model: what the client sent ---------------------------------- */

struct mreq {
    uint16_t type, flags;
    uint64_t offset;
    uint32_t length;
    size_t payload;      /* WRITE: where its payload starts in the stream */
    bool replied;
};

static struct mreq *reqs;
static size_t nreqs, capreqs;
static bool stream_broken;  /* bad magic: queued replies may be dropped */

static void model_parse(uint8_t *s, size_t len)
{
    size_t pos = 0;
    nreqs = 0;
    stream_broken = false;
    while (len - pos >= NBD_REQUEST_SIZE) {
        uint8_t *p = s + pos;
        if (be32(p) != NBD_REQUEST_MAGIC) {
            stream_broken = true;
            return;
        }
        put64(p + 8, nreqs);  /* cookie := index */
        struct mreq m = { .flags = be16(p + 4), .type = be16(p + 6), .offset = be64(p + 16), .length = be32(p + 24) };
        pos += NBD_REQUEST_SIZE;
        if (m.type == NBD_CMD_DISC)
            return;
        if (m.type == NBD_CMD_WRITE) {
            if (m.length > export.max_request)
                return;  /* cannot be framed: the server closes */
            if (m.length > len - pos)
                return;  /* cut short: never answered */
            m.payload = pos;
            pos += m.length;
        }
        if (nreqs == capreqs) {
            capreqs = capreqs * 2 + 64;
            reqs = realloc(reqs, capreqs * sizeof *reqs);
        }
        reqs[nreqs++] = m;
    }
}

/* ---- the device, and loop.c's hooks ----------------------------------- */

static uint32_t watched;
static bool registered;        /* in the (stand-in) epoll set */
static bool gone;
static bool slow;              /* the device sits on requests */
static unsigned slow_turns;
static struct request **dev;   /* requests the device holds */
static size_t ndev, capdev;
static uint64_t dev_bytes;
static const uint8_t *stream;  /* for checking WRITE payloads */
static unsigned policy;
static bool readonly;
static bool meta;              /* a metadata context was negotiated */

void loop_watch(struct conn *c, int fd, uint32_t events) { watched = events; registered = true; }
void loop_unwatch(int fd) { watched = 0; registered = false; }
void loop_conn_gone(struct conn *c) { gone = true; }
void loop_request_finished(void) { }
/* Every request here comes from a connection; none is a ublk one. */
void ublk_request_done(struct request *r, int err) { abort(); }

static uint8_t pattern(uint64_t offset, size_t i)
{
    uint64_t x = offset + i;
    return (uint8_t)(x ^ (x >> 8) ^ (x >> 17) ^ 0x5a);
}

void loop_request_ready(struct request *r)
{
    usbd_request *q = &r->pub;
    CHECK(r->cookie < nreqs, "the device got a request with cookie %llu, never sent",
          (unsigned long long)r->cookie);
    const struct mreq *m = &reqs[r->cookie];
    CHECK(q->type == m->type && q->flags == m->flags && q->offset == m->offset && q->length == m->length,
          "request %llu reached the device altered", (unsigned long long)r->cookie);
    switch (q->type) {
    case NBD_CMD_READ: case NBD_CMD_WRITE: case NBD_CMD_TRIM: case NBD_CMD_WRITE_ZEROES:
        CHECK(q->length > 0 && q->offset <= export.dev.size && q->length <= export.dev.size - q->offset,
              "the device got %u bytes at %llu, outside the export", q->length, (unsigned long long)q->offset);
        CHECK(q->type == NBD_CMD_READ || !readonly, "the device got a write on a read-only export");
        break;
    case NBD_CMD_FLUSH:
        break;
    case NBD_CMD_BLOCK_STATUS:
        CHECK(meta, "the device got BLOCK_STATUS without a metadata context");
        CHECK(q->length > 0 && q->offset <= export.dev.size && q->length <= export.dev.size - q->offset,
              "the device got block status of %u bytes at %llu, outside the export", q->length,
              (unsigned long long)q->offset);
        CHECK(q->buf.ptr && q->buf.nbytes == request_max_extents(q->flags, q->length) * sizeof(usbd_extent),
              "room for %zu bytes of descriptors", q->buf.nbytes);
        break;
    default:
        CHECK(false, "the device got command %u", q->type);
    }
    if (q->type == NBD_CMD_READ || q->type == NBD_CMD_WRITE)
        CHECK(q->buf.ptr && q->buf.nbytes == q->length, "payload buffer of %zu for %u bytes", q->buf.nbytes, q->length);
    if (q->type == NBD_CMD_WRITE)
        CHECK(memcmp(q->buf.ptr, stream + m->payload, q->length) == 0, "WRITE payload corrupted");
    if (ndev == capdev) {
        capdev = capdev * 2 + 16;
        dev = realloc(dev, capdev * sizeof *dev);
    }
    dev[ndev++] = r;
    dev_bytes += q->buf.nbytes;
    CHECK(ndev <= config.max_inflight, "the device holds %zu requests, over --max-inflight %u", ndev,
          config.max_inflight);
    CHECK(dev_bytes <= config.max_inflight_bytes + export.max_request,
          "the device holds %llu bytes, over --max-inflight-bytes", (unsigned long long)dev_bytes);
}

/* The device's answer to a BLOCK_STATUS, a function of the request so the
 * client's side can check it: n runs of equal length, flags 0 to 3. */
static uint32_t device_extents(uint64_t cookie, uint16_t flags, uint32_t length, usbd_extent *out)
{
    uint32_t n = 1 + (uint32_t)(cookie % 7), cap = request_max_extents(flags, length);
    if (n > cap)
        n = cap;
    uint32_t each = length / (n + (uint32_t)(cookie % 2));  /* sometimes short of length */
    if (each == 0)
        each = 1;
    for (uint32_t i = 0; i < n; i++)
        out[i] = (usbd_extent){ each, (i + (uint32_t)cookie) & 3 };
    return n;
}

/* Memory the device lends to READ replies (usbd_request_borrow): freed
 * once usbd_settle_borrowed has run; a reply that still sent from it would
 * read freed memory (ASan's sendmsg check) or garbage (the pattern check). */
#define MAX_LENT 64
static uint8_t *lent[MAX_LENT];
static size_t nlent;

static void lent_release(void)
{
    usbd_settle_borrowed();
    for (size_t i = 0; i < nlent; i++)
        free(lent[i]);
    nlent = 0;
}

/* Every other piece of the reply lent from memory of our own, the buffer
 * under it left as garbage (some pieces more than the core holds). */
static void device_lend(usbd_request *q, uint64_t cookie)
{
    if (nlent == MAX_LENT || (cookie & 8))
        lent_release();
    uint8_t *m = malloc(q->length);
    lent[nlent++] = m;
    uint32_t pieces = 1 + (uint32_t)((cookie >> 4) % (2 * USBD_MAX_BORROWED + 8));
    uint32_t each = q->length / pieces ? q->length / pieces : 1;
    for (uint32_t at = 0, k = 0; at < q->length; at += each, k++) {
        uint32_t len = q->length - at < each ? q->length - at : each;
        if (k % 2 == 0) {
            for (uint32_t i = at; i < at + len; i++)
                m[i] = pattern(q->offset, i);
            memset(q->buf.ptr + at, 0xee, len);
            CHECK(usbd_request_borrow(q, at, m + at, len) >= 0, "borrowing %u bytes at %u", len, at);
        } else {
            for (uint32_t i = at; i < at + len; i++)
                q->buf.ptr[i] = pattern(q->offset, i);
        }
    }
}

static void device_complete(struct request *r, bool inject)
{
    usbd_request *q = &r->pub;
    if (q->type == NBD_CMD_READ && r->cookie % 4 == 3)
        device_lend(q, r->cookie);
    else if (q->type == NBD_CMD_READ)
        for (size_t i = 0; i < q->length; i++)
            q->buf.ptr[i] = pattern(q->offset, i);
    dev_bytes -= q->buf.nbytes;
    if (q->type == NBD_CMD_BLOCK_STATUS && !(inject && r->cookie % 3 == 1)) {
        usbd_extent *e = (usbd_extent *)q->buf.ptr;
        uint32_t n = device_extents(r->cookie, q->flags, q->length, e);
        if (inject && r->cookie % 3 == 2) {
            /* What the core must refuse (EIO): none, a zero-length run, too much. */
            static const uint32_t bad[] = { 0, 1, 2 };
            switch (bad[(r->cookie / 3) % 3]) {
            case 0: n = 0; break;
            case 1: e[0].length = 0; break;
            case 2: e[0].length = q->length + 1; break;
            }
        }
        usbd_request_extents_done(q, n);
        return;
    }
    /* Every errno the core maps, some it does not (EIO), and negatives. */
    static const int errs[] = { EIO, ENOSPC, EPERM, EROFS, EACCES, ENOMEM, EINVAL, EDQUOT, EFBIG,
                                EOVERFLOW, ENOTSUP, ESHUTDOWN, EBADF, -ENOSPC, 9999 };
    int err = inject && (r->cookie % 3 == 1) ? errs[(r->cookie / 3) % (sizeof errs / sizeof *errs)] : 0;
    usbd_request_done(q, err);
}

static bool device_run(void)
{
    if (!ndev)
        return false;
    if (slow && ++slow_turns % 100 != 0)
        return false;
    switch (policy) {
    case 0: case 3:
        for (size_t i = 0; i < ndev; i++)
            device_complete(dev[i], policy == 3);
        ndev = 0;
        break;
    case 1:
        while (ndev)
            device_complete(dev[--ndev], false);
        break;
    case 2:
        device_complete(dev[0], false);
        memmove(dev, dev + 1, --ndev * sizeof *dev);
        break;
    }
    return true;
}

/* ---- the client's side: replies --------------------------------------- */

static uint8_t *in;
static size_t inlen, incap, replies;

static bool valid_error(uint32_t e)
{
    return e == NBD_EPERM || e == NBD_EIO || e == NBD_ENOMEM || e == NBD_EINVAL || e == NBD_ENOSPC ||
           e == NBD_EOVERFLOW || e == NBD_ENOTSUP || e == NBD_ESHUTDOWN;
}

static struct mreq *replied_to(uint64_t cookie)
{
    CHECK(cookie < nreqs, "reply with cookie %llu, which was never sent", (unsigned long long)cookie);
    struct mreq *m = &reqs[cookie];
    CHECK(!m->replied, "second reply to request %llu", (unsigned long long)cookie);
    m->replied = true;
    replies++;
    return m;
}

static void check_data(const struct mreq *m, const uint8_t *d)
{
    for (size_t i = 0; i < m->length; i++)
        CHECK(d[i] == pattern(m->offset, i), "READ reply data differs at byte %zu of %u", i, m->length);
}

/* Take whole replies off the front of what arrived. */
static void parse_replies(bool structured)
{
    size_t pos = 0;
    for (;;) {
        const uint8_t *p = in + pos;
        size_t avail = inlen - pos;
        if (avail < 4)
            break;
        uint32_t magic = be32(p);
        if (magic == NBD_SIMPLE_REPLY_MAGIC) {
            if (avail < 16)
                break;
            uint32_t err = be32(p + 4);
            uint64_t cookie = be64(p + 8);
            CHECK(cookie < nreqs, "simple reply with unknown cookie %llu", (unsigned long long)cookie);
            const struct mreq *m = &reqs[cookie];
            bool data = m->type == NBD_CMD_READ && err == 0;
            CHECK(!(structured && m->type == NBD_CMD_READ), "simple reply to a READ with structured replies on");
            CHECK(!(m->type == NBD_CMD_BLOCK_STATUS && err == 0), "BLOCK_STATUS succeeded in a simple reply");
            if (data && avail < 16 + (size_t)m->length)
                break;
            replied_to(cookie);
            CHECK(err == 0 || valid_error(err), "error %u is not an NBD error", err);
            if (data)
                check_data(m, p + 16);
            pos += 16 + (data ? m->length : 0);
        } else if (magic == NBD_STRUCTURED_REPLY_MAGIC) {
            if (avail < 20)
                break;
            uint16_t flags = be16(p + 4), type = be16(p + 6);
            uint64_t cookie = be64(p + 8);
            uint32_t len = be32(p + 16);
            CHECK(structured, "structured reply without negotiating it");
            CHECK(flags == NBD_REPLY_FLAG_DONE, "chunk flags 0x%x", flags);
            CHECK(cookie < nreqs && (reqs[cookie].type == NBD_CMD_READ || reqs[cookie].type == NBD_CMD_BLOCK_STATUS),
                  "structured reply to a request that is neither READ nor BLOCK_STATUS");
            const struct mreq *m = &reqs[cookie];
            if (type == NBD_REPLY_TYPE_OFFSET_DATA)
                CHECK(m->type == NBD_CMD_READ && len == 8 + m->length, "OFFSET_DATA of %u for a READ of %u", len, m->length);
            else if (type == NBD_REPLY_TYPE_BLOCK_STATUS)
                CHECK(m->type == NBD_CMD_BLOCK_STATUS && meta && len >= 12 && (len - 4) % 8 == 0,
                      "BLOCK_STATUS chunk of %u bytes", len);
            else
                CHECK(type == NBD_REPLY_TYPE_ERROR && len >= 6, "chunk type %u length %u", type, len);
            if (avail < 20 + (size_t)len)
                break;
            replied_to(cookie);
            if (type == NBD_REPLY_TYPE_OFFSET_DATA) {
                CHECK(be64(p + 20) == m->offset, "OFFSET_DATA at the wrong offset");
                check_data(m, p + 28);
            } else if (type == NBD_REPLY_TYPE_BLOCK_STATUS) {
                static usbd_extent want[8];
                uint32_t n = device_extents(cookie, m->flags, m->length, want), got = (len - 4) / 8;
                CHECK(be32(p + 20) == 1, "BLOCK_STATUS for context %u", be32(p + 20));
                CHECK(got == n, "%u descriptors, the device gave %u", got, n);
                for (uint32_t i = 0; i < n; i++)
                    CHECK(be32(p + 24 + 8 * i) == want[i].length && be32(p + 28 + 8 * i) == want[i].flags,
                          "descriptor %u differs from the device's", i);
            } else {
                CHECK(valid_error(be32(p + 20)), "error %u is not an NBD error", be32(p + 20));
                CHECK(be16(p + 24) == len - 6, "error message length");
            }
            pos += 20 + len;
        } else {
            CHECK(false, "reply with bad magic 0x%08x", magic);
        }
    }
    memmove(in, in + pos, inlen - pos);
    inlen -= pos;
}

static bool client_read(int fd, bool structured)
{
    bool any = false;
    for (;;) {
        if (incap - inlen < 65536) {
            incap = incap * 2 + 65536;
            in = realloc(in, incap);
        }
        ssize_t n = recv(fd, in + inlen, incap - inlen, MSG_DONTWAIT);
        if (n <= 0)
            break;
        inlen += (size_t)n;
        any = true;
    }
    if (any)
        parse_replies(structured);
    return any;
}

/* ---- one run ---------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cli_defaults(&config);
    config.verbose = -1;
    config.max_request = 128u << 10;
    export.max_request = config.max_request;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3 || size > (4u << 20))
        return 0;
    uint8_t setup = data[0], setup2 = data[1], setup3 = data[2];
    bool stop = setup3 & 1;
    unsigned stop_turn = (setup3 >> 1) & 0x3f;
    bool structured = setup & 1, tiny = setup & 0x40, lazy = setup & 0x80;
    readonly = setup & 2;
    meta = structured && !(setup3 & 0x80);
    policy = (setup >> 4) & 3;
    static const uint32_t inflight[] = { 1, 2, 8, 64 };
    static const uint64_t inflight_bytes[] = { 4096, 64u << 10, 256u << 10, 4u << 20 };
    static const uint64_t sizes[] = { 1u << 20, 0, (1u << 20) + 511, UINT64_MAX - 511 };
    config.max_inflight = inflight[setup2 & 3];
    config.max_inflight_bytes = inflight_bytes[(setup2 >> 2) & 3];
    bool vanish = setup2 & 0x40;
    slow = setup2 & 0x80;
    slow_turns = 0;
    export.dev = (usbd_export){ .size = sizes[(setup2 >> 4) & 3], .block_size = 512, .can_write = 1,
                                .can_trim = (setup >> 2) & 1, .can_zero = (setup & 0x0c) != 0x08,
                                .can_flush = (setup >> 3) & 1, .can_multi_conn = 1 };
    export.tflags = export_flags(&export.dev, readonly);

    size_t slen = size - 3;
    uint8_t *s = malloc(slen ? slen : 1);
    memcpy(s, data + 3, slen);
    model_parse(s, slen);
    stream = s;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    if (tiny) {
        int small = 4096;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    gone = false;
    ndev = 0;
    dev_bytes = 0;
    inlen = 0;
    replies = 0;
    struct conn *c = conn_new(sv[0], (struct negotiated){ .structured = structured, .meta_context = meta }, false);
    CHECK(c, "conn_new failed");

    size_t sent = 0;
    bool shut = false;
    int client = sv[1];
    unsigned idle_events = 0, vanish_turns = 0;
    for (unsigned turn = 0; !gone; turn++) {
        bool progress = false, event = false;
        short revents = 0;
        if (client >= 0 && sent < slen) {
            /* In pieces, so the server also sees a stream that pauses. */
            size_t piece = slen - sent, cap = tiny ? 777 : 65536;
            if (piece > cap)
                piece = cap;
            ssize_t n = send(client, s + sent, piece, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                sent += (size_t)n;
                progress = true;
            } else if (n < 0 && errno != EAGAIN) {
                sent = slen;  /* the server hung up */
            }
        }
        if (client >= 0 && sent == slen && vanish) {
            if (++vanish_turns > 2) {
                close(client);  /* gone, without reading a thing more */
                client = -1;
            }
            progress = true;  /* the client is counting down: not a stall */
        } else if (client >= 0 && sent == slen && !shut && !vanish) {
            shutdown(client, SHUT_WR);
            shut = progress = true;
        }
        bool reading = client >= 0 && (!lazy || turn % 4 == 0);
        if (reading)
            progress |= client_read(client, structured);
        /* Wait only when nothing else can move; then the server must. */
        int timeout = progress || ndev || (client >= 0 && !reading) ? 0 : 2000;
        if (registered) {
            struct pollfd pfd = { .fd = sv[0], .events = (short)watched };
            if (poll(&pfd, 1, timeout) > 0) {
                revents = pfd.revents;
                conn_on_event(c, (uint32_t)revents);
                event = true;
            }
        }
        if (stop && turn == stop_turn) {
            conn_close_all();  /* what loop.c does on SIGTERM */
            event = true;
        }
        bool ran = device_run();
        conn_flush_dirty();
        conn_reap();
        /* An event that moves nothing the client or device can see is fine
         * once; turn after turn it is the loop spinning. */
        idle_events = event && !progress && !ran ? idle_events + 1 : 0;
        CHECK(idle_events < 50, "busy loop: events 0x%x keep coming and nothing moves (watched 0x%x, "
              "%zu with the device)", revents, watched, ndev);
        if (!progress && !event && !ran && timeout == 2000) {
            fprintf(stderr, "fuzz_request: stalled: watched 0x%x, %zu with the device, %zu replies of %zu\n",
                    watched, ndev, replies, nreqs);
            abort();
        }
    }
    lent_release();
    CHECK(!registered, "the connection was freed but its fd is still watched");
    if (client < 0) {
        free(s);
        return 0;
    }
    /* The server closed its end: take the rest. */
    for (;;) {
        struct pollfd pfd = { .fd = client, .events = POLLIN };
        CHECK(poll(&pfd, 1, 2000) > 0, "the server's end is freed but not closed");
        if (!client_read(client, structured)) {
            char b;
            if (recv(client, &b, 1, MSG_DONTWAIT) == 0)
                break;
        }
    }
    CHECK(inlen == 0, "%zu bytes of a reply cut short", inlen);
    CHECK(ndev == 0, "the connection was freed while the device held %zu requests", ndev);
    if (!stream_broken && !stop)
        CHECK(replies == nreqs, "%zu of %zu requests answered", replies, nreqs);
    close(client);
    free(s);
    return 0;
}

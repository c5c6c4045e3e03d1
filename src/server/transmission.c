/* The transmission phase: reading requests off a connection, checking
 * them, and sending replies. Non-blocking, driven by loop.c.
 *
 * A WRITE's payload is received straight into the buffer the device will
 * see, and a READ's reply is sent straight from the buffer the device
 * filled, or from memory the device lent for it (borrow.c). Small
 * requests arrive through a staging buffer so that one recv() can carry
 * many of them. */
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "buffer.h"
#include "config.h"
#include "nbd.h"
#include "reqlog.h"
#include "server.h"
#include "services/services.h"
#include "sockets.h"
#include "stats.h"
#include "tls.h"
#include "ublk.h"

#define RBUF_SIZE (64u * 1024)
#define DIRECT_RECV_MIN (16u * 1024) /* payload left that is worth a recv of its own */
#define MAX_IOV 128

struct conn {
    int fd;
    struct tls *tls;     /* TLS: every byte goes through it; NULL: plain */
    uint64_t id;         /* 1, 2, ...: in the request log and the trace */
    bool structured;
    uint32_t meta_context; /* base:allocation's id, 0 if not selected */
    bool kernel;
    bool read_closed;    /* no more requests: DISC, EOF, error or shutdown */
    bool failed;         /* the socket is unusable: replies are dropped */
    bool paused;         /* over the in-flight limits: not reading */
    bool want_write;     /* replies wait for the socket to drain */
    bool dirty;          /* in the dirty list */
    bool reaping;        /* in the reap list */
    uint32_t watched;    /* epoll events registered */
    uint32_t inflight;   /* requests parsed and not yet answered */
    uint64_t inflight_bytes;
    struct request *reading;  /* WRITE whose payload is arriving */
    struct request *out_head, *out_tail;
    struct conn *next_dirty, *next_reap;
    size_t rstart, rend;
    uint8_t rbuf[RBUF_SIZE];
};

static struct conn *dirty_list, *reap_list;
static struct conn **all_conns;
static size_t nall, capall;
static uint64_t last_conn_id;

bool conn_is_kernel(const struct conn *c)
{
    return c->kernel;
}

static void update_events(struct conn *c)
{
    uint32_t want = 0;
    if (!c->failed) {
        if (!c->read_closed && !c->paused)
            want |= EPOLLIN;
        if (c->want_write)
            want |= EPOLLOUT;
    }
    if (want != c->watched) {
        loop_watch(c, c->fd, want);
        c->watched = want;
    }
}

static void check_done(struct conn *c)
{
    if (c->read_closed && c->inflight == 0 && !c->reaping) {
        c->reaping = true;
        c->next_reap = reap_list;
        reap_list = c;
    }
}

static void conn_read(struct conn *c);

struct conn *conn_new(int fd, struct negotiated neg, bool kernel)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c || (nall == capall && !(all_conns = realloc(all_conns, (capall = capall * 2 + 8) * sizeof *all_conns)))) {
        free(c);
        tls_close(neg.tls);
        close(fd);
        return NULL;
    }
    c->tls = neg.tls;
    all_conns[nall++] = c;
    c->fd = fd;
    c->id = ++last_conn_id;
    c->structured = neg.structured;
    c->meta_context = neg.meta_context;
    c->kernel = kernel;
    set_nonblocking(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on Unix sockets */
    loop_watch(c, fd, EPOLLIN);
    c->watched = EPOLLIN;
    /* Requests sent with the last option may sit decrypted in the
     * session already, where no socket event will tell of them. */
    if (c->tls && tls_pending(c->tls))
        conn_read(c);
    return c;
}

static struct request *request_new(struct conn *c)
{
    struct request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->conn = c;
    c->inflight++;
    return r;
}

static size_t read_data_sent(struct borrowing *b)
{
    struct request *r = (struct request *)((char *)b - offsetof(struct request, borrow));
    return r->sent > r->hdrlen ? r->sent - r->hdrlen : 0;
}

static bool request_alloc_buf(struct request *r, size_t len)
{
    r->pub.buf.ptr = buffer_get(len);
    if (!r->pub.buf.ptr)
        return false;
    r->pub.buf.nbytes = len;
    r->buflen = len;
    r->conn->inflight_bytes += len;
    if (r->pub.type == NBD_CMD_READ) {
        r->borrow.buf = r->pub.buf.ptr;
        r->borrow.len = (uint32_t)len;
        r->borrow.data_sent = read_data_sent;
    }
    return true;
}

/* The request is answered (or will never be): give back what it holds. */
static void request_finish(struct request *r)
{
    struct conn *c = r->conn;
    borrow_drop(&r->borrow);
    if (r->pub.buf.ptr) {
        buffer_put(r->pub.buf.ptr, r->buflen);
        c->inflight_bytes -= r->buflen;
    }
    c->inflight--;
    free(r);
    check_done(c);
}

/* What follows the header: a READ's data, or BLOCK_STATUS's descriptors,
 * both sent straight from the request's buffer. */
static size_t reply_data_len(const struct request *r)
{
    if (r->error)
        return 0;
    if (r->pub.type == NBD_CMD_READ)
        return r->pub.length;
    if (r->pub.type == NBD_CMD_BLOCK_STATUS)
        return (size_t)r->nextents * sizeof(usbd_extent);
    return 0;
}

static size_t reply_len(const struct request *r)
{
    return r->hdrlen + reply_data_len(r);
}

static void build_reply(struct conn *c, struct request *r)
{
    uint8_t *p = r->hdr;
    if (c->structured && (r->pub.type == NBD_CMD_READ || r->pub.type == NBD_CMD_BLOCK_STATUS)) {
        p = put32(p, NBD_STRUCTURED_REPLY_MAGIC);
        p = put16(p, NBD_REPLY_FLAG_DONE);
        if (r->error == 0 && r->pub.type == NBD_CMD_READ) {
            p = put16(p, NBD_REPLY_TYPE_OFFSET_DATA);
            p = put64(p, r->cookie);
            p = put32(p, 8 + r->pub.length);
            p = put64(p, r->pub.offset);
        } else if (r->error == 0) {
            /* One chunk for the one context: its id, then the descriptors. */
            p = put16(p, NBD_REPLY_TYPE_BLOCK_STATUS);
            p = put64(p, r->cookie);
            p = put32(p, 4 + (uint32_t)reply_data_len(r));
            p = put32(p, c->meta_context);
        } else {
            p = put16(p, NBD_REPLY_TYPE_ERROR);
            p = put64(p, r->cookie);
            p = put32(p, 6);
            p = put32(p, r->error);
            p = put16(p, 0);  /* no message */
        }
    } else {
        p = put32(p, NBD_SIMPLE_REPLY_MAGIC);
        p = put32(p, r->error);
        p = put64(p, r->cookie);
    }
    r->hdrlen = (uint8_t)(p - r->hdr);
}

static void queue_reply(struct conn *c, struct request *r)
{
    reqlog_reply(c->id, r);
    if (c->failed) {
        request_finish(r);
        return;
    }
    build_reply(c, r);
    r->next = NULL;
    if (c->out_tail)
        c->out_tail->next = r;
    else
        c->out_head = r;
    c->out_tail = r;
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = dirty_list;
        dirty_list = c;
    }
}

int usbd_request_borrow(usbd_request *pub, uint64_t at, const uint8_t *src, uint64_t len)
{
    struct request *r = (struct request *)pub;
    if (pub->type != NBD_CMD_READ)
        return -1;
    if (!r->conn) {
        /* ublk: the driver copies the reply out of the buffer. */
        if (at > pub->length || len > pub->length - at)
            return -1;
        memcpy(pub->buf.ptr + at, src, len);
        return 0;
    }
    return borrow_add(&r->borrow, at, src, len);
}

void usbd_request_done(usbd_request *pub, int err)
{
    struct request *r = (struct request *)pub;
    loop_request_finished();
    if (!r->conn) {   /* a ublk request */
        ublk_request_done(r, err);
        return;
    }
    r->dev_errno = err < 0 ? -err : err;
    r->error = nbd_error_from_errno(r->dev_errno);
    queue_reply(r->conn, r);
}

/* Lua filled n extents into the request's buffer: check them against what
 * the protocol allows, and turn them into wire order where they lie. */
void usbd_request_extents_done(usbd_request *pub, uint32_t n)
{
    struct request *r = (struct request *)pub;
    usbd_extent *ext = (usbd_extent *)pub->buf.ptr;
    uint64_t total = 0;
    bool ok = pub->type == NBD_CMD_BLOCK_STATUS && n >= 1 && n <= pub->buf.nbytes / sizeof *ext;
    for (uint32_t i = 0; ok && i < n; i++) {
        ok = ext[i].length > 0;
        total += ext[i].length;
    }
    if (!ok || total > pub->length) {
        log_msg(0, "block status of %u extents covering %llu bytes, for %u bytes asked: EIO",
                n, (unsigned long long)total, pub->length);
        usbd_request_done(pub, EIO);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        usbd_extent e = ext[i];
        put32(put32((uint8_t *)&ext[i], e.length), e.flags);
    }
    r->nextents = n;
    usbd_request_done(pub, 0);
}

void usbd_request_failed(usbd_request *pub, int err, const char *why)
{
    struct request *r = (struct request *)pub;
    reqlog_failure(r, err < 0 ? -err : err, why);
    r->failure_logged = true;
    usbd_request_done(pub, err);
}

/* The socket is beyond use: drop everything not yet in the device's hands. */
static void conn_fail(struct conn *c)
{
    c->failed = true;
    c->read_closed = true;
    if (c->reading) {
        struct request *r = c->reading;
        c->reading = NULL;
        request_finish(r);
    }
    while (c->out_head) {
        struct request *r = c->out_head;
        c->out_head = r->next;
        request_finish(r);
    }
    c->out_tail = NULL;
    /* Out of the epoll set altogether: registered with no events, the fd
     * would still report HUP and ERR on every wait. */
    loop_unwatch(c->fd);
    c->watched = 0;
    check_done(c);
}

static void close_reading(struct conn *c)
{
    c->read_closed = true;
    if (c->reading) {
        struct request *r = c->reading;
        c->reading = NULL;
        request_finish(r);
    }
    update_events(c);
    check_done(c);
}

static bool over_limits(const struct conn *c)
{
    return c->inflight >= config.max_inflight || c->inflight_bytes >= config.max_inflight_bytes;
}

/* A request is complete: to the device, or straight back with its error. */
static void request_complete(struct conn *c, struct request *r)
{
    if (r->error)
        queue_reply(c, r);
    else
        loop_request_ready(r);
}

/* Parse what the staging buffer holds. False when reading must stop. */
static bool conn_parse(struct conn *c)
{
    for (;;) {
        size_t avail = c->rend - c->rstart;
        struct request *r = c->reading;
        if (r) {
            size_t take = r->pub.length - r->got;
            if (take > avail)
                take = avail;
            memcpy(r->pub.buf.ptr + r->got, c->rbuf + c->rstart, take);
            r->got += take;
            c->rstart += take;
            if (r->got < r->pub.length)
                return true;
            c->reading = NULL;
            request_complete(c, r);
            continue;
        }
        if (c->read_closed)
            return false;
        if (over_limits(c)) {
            c->paused = true;
            update_events(c);
            return false;
        }
        if (avail < NBD_REQUEST_SIZE)
            return true;

        const uint8_t *p = c->rbuf + c->rstart;
        c->rstart += NBD_REQUEST_SIZE;
        if (be32(p) != NBD_REQUEST_MAGIC) {
            /* Read no further, but finish the replies already due: failing
             * the conn here would cut a reply short on a live socket. */
            log_msg(1, "bad request magic 0x%08x: closing the connection", be32(p));
            close_reading(c);
            return false;
        }
        uint16_t flags = be16(p + 4), type = be16(p + 6);
        uint64_t offset = be64(p + 16);
        uint32_t length = be32(p + 24);
        if (type == NBD_CMD_DISC) {
            close_reading(c);
            return false;
        }
        if (!request_framing_ok(&export, type, length)) {
            log_msg(1, "write of %u bytes exceeds --max-request: closing the connection", length);
            close_reading(c);
            return false;
        }
        r = request_new(c);
        if (!r) {
            conn_fail(c);
            return false;
        }
        r->started_ns = stats_now_ns();
        r->cookie = be64(p + 8);
        r->pub.offset = offset;
        r->pub.length = length;
        r->pub.type = type;
        r->pub.flags = flags;
        r->error = request_check(&export, type, flags, offset, length, c->structured, c->meta_context != 0);
        if (type == NBD_CMD_WRITE) {
            /* Even a refused write's payload must be read to stay in step. */
            if (!request_alloc_buf(r, length)) {
                request_finish(r);
                conn_fail(c);
                return false;
            }
            c->reading = r;
            continue;
        }
        if (type == NBD_CMD_READ && r->error == 0 && !request_alloc_buf(r, length))
            r->error = NBD_ENOMEM;
        if (type == NBD_CMD_BLOCK_STATUS && r->error == 0 &&
            !request_alloc_buf(r, request_max_extents(flags, length) * sizeof(usbd_extent)))
            r->error = NBD_ENOMEM;
        request_complete(c, r);
    }
}

/* recv(2), through TLS where the client upgraded. */
static ssize_t conn_recv(struct conn *c, void *buf, size_t len)
{
    return c->tls ? tls_recv(c->tls, buf, len) : recv(c->fd, buf, len, 0);
}

static void conn_read(struct conn *c)
{
    for (;;) {
        if (!conn_parse(c))
            return;
        ssize_t n;
        struct request *r = c->reading;
        if (r && r->pub.length - r->got >= DIRECT_RECV_MIN) {
            /* conn_parse emptied the staging buffer into the payload. */
            n = conn_recv(c, r->pub.buf.ptr + r->got, r->pub.length - r->got);
            if (n > 0) {
                r->got += (size_t)n;
                continue;
            }
        } else {
            if (c->rstart == c->rend) {
                c->rstart = c->rend = 0;
            } else if (c->rstart > RBUF_SIZE / 2) {
                memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
                c->rend -= c->rstart;
                c->rstart = 0;
            }
            n = conn_recv(c, c->rbuf + c->rend, RBUF_SIZE - c->rend);
            if (n > 0) {
                c->rend += (size_t)n;
                continue;
            }
        }
        if (n == 0) {
            log_msg(1, "client closed the connection");
            close_reading(c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            log_msg(1, "receiving: %s: closing the connection", strerror(errno));
            conn_fail(c);
        }
        return;
    }
}

void conn_flush(struct conn *c)
{
    while (c->out_head && !c->failed) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        for (struct request *r = c->out_head; r && n + 2 <= MAX_IOV; r = r->next) {
            size_t sent = r->sent;
            if (sent < r->hdrlen) {
                iov[n].iov_base = r->hdr + sent;
                iov[n++].iov_len = r->hdrlen - sent;
                sent = r->hdrlen;
            }
            size_t total = reply_len(r);
            if (sent < total && r->borrow.n > 0 && reply_data_len(r) > 0) {
                size_t covered;
                n += borrow_iov(&r->borrow, sent - r->hdrlen, total - r->hdrlen, iov + n, MAX_IOV - n, &covered);
                if (covered < total - sent)
                    break;  /* the iovec is full: the rest of it next time */
            } else if (sent < total) {
                iov[n].iov_base = r->pub.buf.ptr + (sent - r->hdrlen);
                iov[n++].iov_len = total - sent;
            }
        }
        /* Plain: one sendmsg, the kernel copying from the buffers (and
         * borrowed pages) straight into the socket. TLS: each piece
         * encrypted from where it lies into GnuTLS's record, then sent. */
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t sent = c->tls ? tls_sendv(c->tls, iov, n) : sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->want_write = true;
                update_events(c);
                return;
            }
            log_msg(1, "sending: %s: closing the connection", strerror(errno));
            conn_fail(c);
            return;
        }
        size_t left = (size_t)sent;
        while (c->out_head) {
            struct request *r = c->out_head;
            size_t need = reply_len(r) - r->sent;
            if (left < need) {
                r->sent += left;
                break;
            }
            left -= need;
            c->out_head = r->next;
            if (!c->out_head)
                c->out_tail = NULL;
            request_finish(r);
        }
    }
    if (c->want_write) {
        c->want_write = false;
        update_events(c);
    }
    if (c->paused && !over_limits(c)) {
        c->paused = false;
        update_events(c);
        conn_read(c);
    }
}

void conn_on_event(struct conn *c, uint32_t events)
{
    if (events & EPOLLOUT)
        conn_flush(c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (c->read_closed || c->paused) {
            /* Not reading: only a dead socket matters. HUP (shut both
             * ways) means no reply can reach the client any more; and
             * epoll reports HUP and ERR even unasked, so leaving the conn
             * as it is would spin the loop until the device is done. */
            if (events & (EPOLLERR | EPOLLHUP))
                conn_fail(c);
        } else {
            conn_read(c);
        }
    }
}

void conn_stop_reading(struct conn *c)
{
    if (!c->read_closed)
        close_reading(c);
}

void conn_flush_dirty(void)
{
    while (dirty_list) {
        struct conn *c = dirty_list;
        dirty_list = c->next_dirty;
        c->dirty = false;
        conn_flush(c);
    }
}

static void conn_free(struct conn *c)
{
    loop_unwatch(c->fd);
    tls_close(c->tls);
    close(c->fd);
    for (size_t i = 0; i < nall; i++)
        if (all_conns[i] == c) {
            all_conns[i] = all_conns[--nall];
            break;
        }
    loop_conn_gone(c);
    free(c);
}

void conn_reap(void)
{
    while (reap_list) {
        struct conn *c = reap_list;
        reap_list = c->next_reap;
        if (c->dirty) {
            /* Unreachable: a dirty conn has replies, so inflight > 0. */
            continue;
        }
        conn_free(c);
    }
}

void conn_close_all(void)
{
    for (size_t i = 0; i < nall; i++)
        conn_stop_reading(all_conns[i]);
}

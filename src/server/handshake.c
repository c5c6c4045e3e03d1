/* Fixed newstyle negotiation (the NBD protocol document, "Newstyle
 * negotiation" and "Option types"). It runs on a thread of its own per
 * connection with blocking I/O and an overall deadline, so a slow or hostile
 * client never holds up the event loop. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "handshake.h"
#include "nbd.h"
#include "services/services.h"
#include "tls.h"

#define MAX_OPTION_LEN 65536u   /* a name of 4096 plus info requests fits */
#define MAX_OPTIONS 1024        /* options one client may send */

struct session {
    int fd;
    struct tls *tls;        /* after NBD_OPT_STARTTLS: every byte goes through it */
    struct timespec deadline;
    const struct export_info *ex;
    bool no_zeroes;
    bool structured;
    uint32_t meta_context;  /* the selected context's id; 0 for none */
};

/* The one metadata context offered, under the id this server gives it. */
#define BASE_ALLOCATION_ID 1u

static int ms_left(const struct session *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (s->deadline.tv_sec - now.tv_sec) * 1000LL + (s->deadline.tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms > 1000000 ? 1000000 : (int)ms;
}

/* Wait for the socket until the deadline: false when it passed. */
static bool wait_fd(struct session *s, short events, const char *why)
{
    for (;;) {
        struct pollfd pfd = { .fd = s->fd, .events = events };
        int left = ms_left(s);
        int ready = left ? poll(&pfd, 1, left) : 0;
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0) {
            log_msg(1, "handshake: %s, closing", why);
            return false;
        }
        return true;
    }
}

/* Through TLS: the record layer, waiting as the session asks. */
static int tls_recv_all(struct session *s, uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = tls_recv(s->tls, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0 || errno != EAGAIN)
            return -1;
        if (!tls_pending(s->tls) &&
            !wait_fd(s, tls_wants_write(s->tls) ? POLLOUT : POLLIN, "client took too long"))
            return -1;
    }
    return 0;
}

static int tls_send_all(struct session *s, const uint8_t *p, size_t len)
{
    while (len) {
        struct iovec iov = { (void *)p, len };
        ssize_t n = tls_sendv(s->tls, &iov, 1);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0 || errno != EAGAIN)
            return -1;
        if (!wait_fd(s, tls_wants_write(s->tls) ? POLLOUT : POLLIN, "client does not read its replies"))
            return -1;
    }
    return 0;
}

static int recv_all(struct session *s, void *buf, size_t len)
{
    if (s->tls)
        return tls_recv_all(s, buf, len);
    uint8_t *p = buf;
    while (len) {
        struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
        int left = ms_left(s);
        int ready = left ? poll(&pfd, 1, left) : 0;
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0) {
            log_msg(1, "handshake: client took too long, closing");
            return -1;
        }
        ssize_t n = recv(s->fd, p, len, 0);
        if (n <= 0) {
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The deadline holds for sending too: a client that never reads its
 * replies must not keep this thread (and its connection slot) forever. */
static int send_all(struct session *s, const void *buf, size_t len)
{
    if (s->tls)
        return tls_send_all(s, buf, len);
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(s->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd pfd = { .fd = s->fd, .events = POLLOUT };
                int left = ms_left(s);
                int ready = left ? poll(&pfd, 1, left) : 0;
                if (ready < 0 && errno == EINTR)
                    continue;
                if (ready <= 0) {
                    log_msg(1, "handshake: client does not read its replies, closing");
                    return -1;
                }
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int reply(struct session *s, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t hdr[20], *p = hdr;
    p = put64(p, NBD_REP_MAGIC);
    p = put32(p, opt);
    p = put32(p, type);
    put32(p, len);
    if (send_all(s, hdr, sizeof hdr) < 0)
        return -1;
    return len ? send_all(s, data, len) : 0;
}

static int reply_error(struct session *s, uint32_t opt, uint32_t type, const char *msg)
{
    return reply(s, opt, type, msg, (uint32_t)strlen(msg));
}

/* NBD_OPT_INFO and NBD_OPT_GO: name, then a list of info requests. */
static int info_or_go(struct session *s, uint32_t opt, const uint8_t *data, uint32_t len, bool *go)
{
    const struct export_info *ex = s->ex;
    *go = false;
    if (len < 6)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "option data too short");
    uint32_t namelen = be32(data);
    if (namelen > len - 6)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "export name overruns the option");
    uint16_t nreqs = be16(data + 4 + namelen);
    if (6 + namelen + 2u * nreqs != len)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "info request list does not match the option length");

    bool want_name = false;
    for (uint16_t i = 0; i < nreqs; i++)
        if (be16(data + 6 + namelen + 2u * i) == NBD_INFO_NAME)
            want_name = true;

    uint8_t info[14], *p;
    p = put16(info, NBD_INFO_EXPORT);
    p = put64(p, export_size(ex));
    put16(p, ex->tflags);
    if (reply(s, opt, NBD_REP_INFO, info, 12) < 0)
        return -1;

    /* Any alignment is served; block_size is the preferred size. */
    p = put16(info, NBD_INFO_BLOCK_SIZE);
    p = put32(p, 1);
    p = put32(p, ex->dev.block_size);
    put32(p, ex->max_request);
    if (reply(s, opt, NBD_REP_INFO, info, 14) < 0)
        return -1;

    if (want_name) {
        uint8_t *nm = malloc(2 + namelen);
        if (!nm)
            return -1;
        put16(nm, NBD_INFO_NAME);
        memcpy(nm + 2, data + 4, namelen);
        int rc = reply(s, opt, NBD_REP_INFO, nm, 2 + namelen);
        free(nm);
        if (rc < 0)
            return -1;
    }
    if (reply(s, opt, NBD_REP_ACK, NULL, 0) < 0)
        return -1;
    *go = opt == NBD_OPT_GO;
    return 0;
}

static bool is_string(const uint8_t *p, uint32_t len, const char *s)
{
    return len == strlen(s) && memcmp(p, s, len) == 0;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT ("Metadata
 * querying"): an export name (any name is this export), then queries.
 * base:allocation is the one context there is; LIST lists it for no queries
 * or a "base:" query, SET selects it when asked by name, and queries for
 * anything else are ignored, as the protocol asks. */
static int meta_context(struct session *s, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set)
        s->meta_context = 0;  /* a SET replaces the selection, even one that fails */
    if (set && !s->structured)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "metadata contexts need structured replies first");
    if (len < 8)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "option data too short");
    uint32_t namelen = be32(data);
    if (namelen > len - 8)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "export name overruns the option");
    uint32_t pos = 4 + namelen, nqueries = be32(data + pos);
    pos += 4;
    bool found = !set && nqueries == 0;
    for (uint32_t i = 0; i < nqueries; i++) {
        if (len - pos < 4)
            return reply_error(s, opt, NBD_REP_ERR_INVALID, "query list overruns the option");
        uint32_t qlen = be32(data + pos);
        pos += 4;
        if (qlen > len - pos)
            return reply_error(s, opt, NBD_REP_ERR_INVALID, "query overruns the option");
        if (is_string(data + pos, qlen, NBD_META_BASE_ALLOCATION) || (!set && is_string(data + pos, qlen, "base:")))
            found = true;
        pos += qlen;
    }
    if (pos != len)
        return reply_error(s, opt, NBD_REP_ERR_INVALID, "bytes after the last query");
    if (found) {
        /* LIST's ids mean nothing: the protocol reserves 0 for them. */
        uint8_t ctx[4 + sizeof NBD_META_BASE_ALLOCATION - 1];
        put32(ctx, set ? BASE_ALLOCATION_ID : 0);
        memcpy(ctx + 4, NBD_META_BASE_ALLOCATION, sizeof NBD_META_BASE_ALLOCATION - 1);
        if (reply(s, opt, NBD_REP_META_CONTEXT, ctx, sizeof ctx) < 0)
            return -1;
        if (set)
            s->meta_context = BASE_ALLOCATION_ID;
    }
    return reply(s, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS ("TLS support"): ACK, then the TLS handshake; from
 * there on every byte goes through the session. What was negotiated
 * before it, in the clear, is forgotten. */
static int starttls(struct session *s, uint32_t len)
{
    if (!tls_offered())
        return reply_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, "TLS is not enabled on this server (--tls)");
    if (s->tls)
        return reply_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is already in use");
    if (len)
        return reply_error(s, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    if (reply(s, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0) < 0)
        return -1;
    s->tls = tls_handshake(s->fd, &s->deadline);
    if (!s->tls)
        return -1;
    s->structured = false;
    s->meta_context = 0;
    return 0;
}

/* Returns 1 when transmission starts, 0 to read the next option, -1 to close. */
static int option(struct session *s, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool go;
    if (opt == NBD_OPT_STARTTLS)
        return starttls(s, len);
    /* --tls=require: nothing but STARTTLS and ABORT in the clear. */
    if (!s->tls && tls_required() && opt != NBD_OPT_ABORT) {
        if (opt == NBD_OPT_EXPORT_NAME) {
            log_msg(1, "handshake: NBD_OPT_EXPORT_NAME without TLS, which --tls=require wants: closing");
            return -1;  /* it cannot be answered with an error */
        }
        return reply_error(s, opt, NBD_REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first");
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: {
        /* No reply on error is possible here; any name selects the export. */
        uint8_t r[10 + 124] = { 0 };
        put16(put64(r, export_size(s->ex)), s->ex->tflags);
        return send_all(s, r, s->no_zeroes ? 10 : sizeof r) < 0 ? -1 : 1;
    }
    case NBD_OPT_GO:
    case NBD_OPT_INFO:
        if (info_or_go(s, opt, data, len, &go) < 0)
            return -1;
        return go ? 1 : 0;
    case NBD_OPT_LIST: {
        if (len)
            return reply_error(s, opt, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        uint8_t server[4] = { 0 };  /* one export, named "" */
        if (reply(s, opt, NBD_REP_SERVER, server, 4) < 0)
            return -1;
        return reply(s, opt, NBD_REP_ACK, NULL, 0);
    }
    case NBD_OPT_STRUCTURED_REPLY:
        if (len)
            return reply_error(s, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        s->structured = true;
        return reply(s, opt, NBD_REP_ACK, NULL, 0);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return meta_context(s, opt, data, len);
    case NBD_OPT_ABORT:
        reply(s, opt, NBD_REP_ACK, NULL, 0);
        return -1;
    default:
        return reply_error(s, opt, NBD_REP_ERR_UNSUP, "option not supported");
    }
}

int handshake(int fd, const struct export_info *ex, unsigned timeout_s, struct negotiated *out)
{
    struct session s = { .fd = fd, .ex = ex };
    clock_gettime(CLOCK_MONOTONIC, &s.deadline);
    s.deadline.tv_sec += timeout_s;

    uint8_t hello[18], *p = hello;
    p = put64(p, NBD_MAGIC);
    p = put64(p, NBD_IHAVEOPT);
    put16(p, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (send_all(&s, hello, sizeof hello) < 0)
        return -1;

    uint8_t cflags[4];
    if (recv_all(&s, cflags, 4) < 0)
        return -1;
    uint32_t flags = be32(cflags);
    if (flags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        log_msg(1, "handshake: unknown client flags 0x%x, closing", flags);
        return -1;
    }
    s.no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;

    uint8_t *data = malloc(MAX_OPTION_LEN);
    if (!data)
        return -1;
    int rc = -1;
    for (int n = 0; n < MAX_OPTIONS; n++) {
        uint8_t hdr[16];
        if (recv_all(&s, hdr, sizeof hdr) < 0)
            break;
        if (be64(hdr) != NBD_IHAVEOPT) {
            log_msg(1, "handshake: bad option magic, closing");
            break;
        }
        uint32_t opt = be32(hdr + 8), len = be32(hdr + 12);
        if (len > MAX_OPTION_LEN) {
            /* Skipping gigabytes to stay in step is not worth it: say why, close. */
            if (opt != NBD_OPT_EXPORT_NAME)
                reply_error(&s, opt, NBD_REP_ERR_TOO_BIG, "option too large");
            log_msg(1, "handshake: option %u of %u bytes is too large, closing", opt, len);
            break;
        }
        if (recv_all(&s, data, len) < 0)
            break;
        int r = option(&s, opt, data, len);
        if (r < 0)
            break;
        if (r == 1) {
            out->structured = s.structured;
            out->meta_context = s.meta_context;
            out->tls = s.tls;
            rc = 0;
            break;
        }
    }
    free(data);
    if (rc < 0)
        tls_close(s.tls);
    return rc;
}

/* hostile: an NBD client that misbehaves on purpose.
 *
 *   hostile SOCKET CASE        run one case against usbd-lua on SOCKET
 *   hostile -l                 list the cases
 *
 * Each case sends what a broken or malicious client would and checks that
 * the server answers as the NBD protocol prescribes (the exact error where
 * there is one) or hangs up where it must. Every assertion prints a TAP
 * line ("ok - CASE: what" / "not ok - CASE: what"); the exit status is 1 if
 * any failed. Nothing here blocks forever: every wait has a deadline.
 *
 * Environment: HOSTILE_TLS_PSK (a psktool file: every case over TLS, as
 * the transport section says, and the tls-* cases), HOSTILE_PID (the server's pid, for cases that watch its
 * memory or threads), HOSTILE_TIMEOUT (the server's --handshake-timeout),
 * HOSTILE_MAX_CONN (--max-connections), HOSTILE_INFLIGHT_BYTES
 * (--max-inflight-bytes), HOSTILE_IDLE_TICKS (CPU ticks an idle server may
 * use in 0.7 s; default 7, more under valgrind). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "../../src/server/nbd.h"

static const char *sock_path;
static const char *case_name;
static int failures;
static uint64_t export_size;
static uint16_t export_flags;
static uint32_t max_block;

#define WAIT_MS 10000   /* the longest any single answer may take */

/* ---- results ---------------------------------------------------------- */

static void result(bool pass, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - %s: ", pass ? "ok" : "not ok", case_name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!pass)
        failures++;
}

static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# %s: ", case_name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static long env_long(const char *name, long def)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : def;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A line of /proc/PID/status, as a number (kB for VmRSS, a count for Threads). */
static long proc_status(const char *key)
{
    long pid = env_long("HOSTILE_PID", 0);
    if (!pid)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* utime + stime of the server, in clock ticks (-1 if unknown). */
static long proc_cpu_ticks(void)
{
    long pid = env_long("HOSTILE_PID", 0);
    if (!pid)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* After "pid (comm)": state is field 3; utime and stime are 14 and 15. */
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (long)(ut + st);
}

/* ---- wire ------------------------------------------------------------- */

static uint8_t *w64(uint8_t *p, uint64_t v) { for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; } return p + 8; }
static uint8_t *w32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v; return p + 4; }
static uint8_t *w16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; return p + 2; }
static uint64_t r64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static uint32_t r32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint16_t r16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* ---- transport: plain, or TLS (HOSTILE_TLS_PSK) ------------------------
 *
 * With HOSTILE_TLS_PSK=FILE (a psktool file; its first line's user and
 * key), every connection is upgraded as it is made: greeting, client flags
 * and NBD_OPT_STARTTLS in the clear, then the TLS handshake. The cases
 * then run unchanged over TLS: the greeting is replayed to them from
 * memory, the client flags they send are dropped (they went before the
 * upgrade), and every other byte goes through the session. */
struct xconn {
    gnutls_session_t s;
    uint8_t replay[18];
    size_t replay_pos, swallow;
};
static struct xconn *xc[65536];
static gnutls_psk_client_credentials_t psk_cred;
static const char *tls_priority = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";

static bool tls_mode(void)
{
    const char *f = getenv("HOSTILE_TLS_PSK");
    return f && *f;
}

static struct xconn *xget(int fd)
{
    return fd >= 0 && fd < 65536 ? xc[fd] : NULL;
}

static ssize_t tls_result(ssize_t rc)
{
    if (rc >= 0)
        return rc;
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        errno = EAGAIN;
        return -1;
    }
    if (rc == GNUTLS_E_PREMATURE_TERMINATION)
        return 0;
    errno = ECONNRESET;
    return -1;
}

static ssize_t xrecv(int fd, void *buf, size_t len, int flags)
{
    struct xconn *x = xget(fd);
    if (!x)
        return recv(fd, buf, len, flags);
    if (x->replay_pos < sizeof x->replay) {
        size_t n = sizeof x->replay - x->replay_pos;
        n = n < len ? n : len;
        memcpy(buf, x->replay + x->replay_pos, n);
        x->replay_pos += n;
        return (ssize_t)n;
    }
    return tls_result(gnutls_record_recv(x->s, buf, len));
}

static ssize_t xsend(int fd, const void *buf, size_t len, int flags)
{
    struct xconn *x = xget(fd);
    if (!x)
        return send(fd, buf, len, flags);
    size_t skip = x->swallow < len ? x->swallow : len;
    x->swallow -= skip;
    if (skip == len)
        return (ssize_t)len;
    ssize_t rc = tls_result(gnutls_record_send(x->s, (const uint8_t *)buf + skip, len - skip));
    if (rc < 0)
        return skip ? (ssize_t)skip : -1;
    return (ssize_t)skip + rc;
}

static int xclose(int fd)
{
    struct xconn *x = xget(fd);
    if (x) {
        gnutls_deinit(x->s);
        free(x);
        xc[fd] = NULL;
    }
    return close(fd);
}

/* Over TLS, no half-close: a close_notify (gnutls_bye) would end the
 * client's own session for reading too, and the socket's half-close could
 * cut a record still pending in the session (a send that met a full
 * socket), which ends a TLS connection, replies and all, where a cut
 * request in the clear does not. */
static int xshutdown(int fd, int how)
{
    return xget(fd) ? 0 : shutdown(fd, how);
}

/* Bytes readable without waiting for the socket. */
static bool xpending(int fd)
{
    struct xconn *x = xget(fd);
    return x && (x->replay_pos < sizeof x->replay || gnutls_record_check_pending(x->s) > 0);
}

static int connect_plain(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int recv_exact(int fd, void *buf, size_t len);
static int send_exact(int fd, const void *buf, size_t len);

static int load_psk(void)
{
    if (psk_cred)
        return 0;
    FILE *f = fopen(getenv("HOSTILE_TLS_PSK"), "r");
    char line[512];
    if (!f || !fgets(line, sizeof line, f)) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    char *colon = strchr(line, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    gnutls_datum_t key = { (unsigned char *)colon + 1, (unsigned)strlen(colon + 1) };
    if (gnutls_psk_allocate_client_credentials(&psk_cred) < 0 ||
        gnutls_psk_set_client_credentials(psk_cred, line, &key, GNUTLS_PSK_KEY_HEX) < 0)
        return -1;
    return 0;
}

/* Greeting, flags and NBD_OPT_STARTTLS in the clear, up to its ACK: 0. */
static int starttls_clear(int fd)
{
    uint8_t hello[18], f[4], opt[16], rep[20];
    if (recv_exact(fd, hello, sizeof hello) < 0)
        return -1;
    w32(f, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    w32(w32(w64(opt, NBD_IHAVEOPT), NBD_OPT_STARTTLS), 0);
    if (send_exact(fd, f, 4) < 0 || send_exact(fd, opt, 16) < 0 || recv_exact(fd, rep, 20) < 0)
        return -1;
    return r32(rep + 12) == NBD_REP_ACK ? 0 : -1;
}

/* A client session on fd (made non-blocking). */
static gnutls_session_t tls_session(int fd, const char *priority)
{
    gnutls_session_t s;
    if (load_psk() < 0 || gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL) < 0)
        return NULL;
    if (gnutls_priority_set_direct(s, priority, NULL) < 0 ||
        gnutls_credentials_set(s, GNUTLS_CRD_PSK, psk_cred) < 0) {
        gnutls_deinit(s);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    gnutls_transport_set_int(s, fd);
    return s;
}

/* Run (or resume) the TLS handshake for up to ms: 0 done, -1 failed, -2
 * timed out. */
static int last_tls_error;

static int tls_handshake_for(gnutls_session_t s, int fd, int ms)
{
    double deadline = now_s() + ms / 1000.0;
    for (;;) {
        int rc = gnutls_handshake(s);
        if (rc == 0)
            return 0;
        if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED && gnutls_error_is_fatal(rc)) {
            last_tls_error = rc;
            return -1;
        }
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0)
            return -2;
        struct pollfd p = { .fd = fd, .events = gnutls_record_get_direction(s) ? POLLOUT : POLLIN };
        poll(&p, 1, left);
    }
}

static int connect_raw(void)
{
    int fd = connect_plain();
    if (fd < 0 || !tls_mode())
        return fd;
    gnutls_session_t s = NULL;
    if (starttls_clear(fd) < 0 || !(s = tls_session(fd, tls_priority)) ||
        tls_handshake_for(s, fd, WAIT_MS) != 0) {
        if (s)
            gnutls_deinit(s);
        close(fd);
        return -1;
    }
    struct xconn *x = calloc(1, sizeof *x);
    x->s = s;
    w16(w64(w64(x->replay, NBD_MAGIC), NBD_IHAVEOPT), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    x->swallow = 4;
    xc[fd] = x;
    return fd;
}

/* Wait up to ms for fd to be readable (or closed). */
static bool wait_readable(int fd, int ms)
{
    if (xpending(fd))
        return true;
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    while ((r = poll(&p, 1, ms)) < 0 && errno == EINTR)
        ;
    return r > 0;
}

/* Read exactly len bytes within WAIT_MS. 0 on success, -1 on EOF/error,
 * -2 on timeout. */
static int recv_exact(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    double deadline = now_s() + WAIT_MS / 1000.0;
    while (len) {
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || !wait_readable(fd, left))
            return -2;
        ssize_t n = xrecv(fd, p, len, 0);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_exact(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    double deadline = now_s() + WAIT_MS / 1000.0;
    while (len) {
        ssize_t n = xsend(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = { .fd = fd, .events = POLLOUT };
                int left = (int)((deadline - now_s()) * 1000);
                if (left <= 0 || poll(&pf, 1, left) <= 0)
                    return -2;
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Does the server hang up within ms? Whatever it sends first is read and
 * dropped; *got says how much that was. */
static bool closes_within(int fd, int ms, size_t *got)
{
    double deadline = now_s() + ms / 1000.0;
    uint8_t buf[65536];
    size_t total = 0;
    for (;;) {
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || !wait_readable(fd, left)) {
            if (got)
                *got = total;
            return false;
        }
        ssize_t n = xrecv(fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            if (got)
                *got = total;
            return true;  /* EOF or ECONNRESET: gone */
        }
        total += (size_t)n;
    }
}

/* ---- negotiation ------------------------------------------------------ */

static int send_option(int fd, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t hdr[16];
    w32(w32(w64(hdr, NBD_IHAVEOPT), opt), len);
    if (send_exact(fd, hdr, sizeof hdr) < 0)
        return -1;
    return len ? send_exact(fd, data, len) : 0;
}

/* One option reply: its type, and its data (up to cap bytes) in data.
 * Returns the data length, or -1. */
static long recv_option_reply(int fd, uint32_t want_opt, uint32_t *type, uint8_t *data, size_t cap)
{
    uint8_t hdr[20];
    if (recv_exact(fd, hdr, sizeof hdr) < 0)
        return -1;
    if (r64(hdr) != NBD_REP_MAGIC || r32(hdr + 8) != want_opt)
        return -1;
    *type = r32(hdr + 12);
    uint32_t len = r32(hdr + 16);
    uint8_t sink[4096];
    for (uint32_t got = 0; got < len;) {
        size_t n = len - got;
        uint8_t *dst = got < cap ? data + got : sink;
        size_t room = got < cap ? cap - got : sizeof sink;
        if (n > room)
            n = room;
        if (recv_exact(fd, dst, n) < 0)
            return -1;
        got += (uint32_t)n;
    }
    return len;
}

/* Read the greeting and send client flags. */
static int greet(int fd, uint32_t cflags)
{
    uint8_t hello[18];
    if (recv_exact(fd, hello, sizeof hello) < 0)
        return -1;
    if (r64(hello) != NBD_MAGIC || r64(hello + 8) != NBD_IHAVEOPT)
        return -1;
    uint8_t f[4];
    w32(f, cflags);
    return send_exact(fd, f, 4);
}

/* NBD_OPT_GO with an empty name and no info requests; reads the replies up
 * to the ACK. Returns 0, or -1 with a reason in *why. */
static int opt_go(int fd, const char **why)
{
    uint8_t go[6] = { 0 };
    if (send_option(fd, NBD_OPT_GO, go, sizeof go) < 0)
        return *why = "sending NBD_OPT_GO", -1;
    for (;;) {
        uint32_t type;
        uint8_t data[256];
        long len = recv_option_reply(fd, NBD_OPT_GO, &type, data, sizeof data);
        if (len < 0)
            return *why = "no reply to NBD_OPT_GO", -1;
        if (type == NBD_REP_ACK)
            return 0;
        if (type != NBD_REP_INFO)
            return *why = "NBD_OPT_GO refused", -1;
        if (len >= 12 && r16(data) == NBD_INFO_EXPORT) {
            export_size = r64(data + 2);
            export_flags = r16(data + 10);
        } else if (len >= 14 && r16(data) == NBD_INFO_BLOCK_SIZE) {
            max_block = r32(data + 10);
        }
    }
}

/* A connection in the transmission phase, or -1 (reported as a failure). */
static int connect_nbd(bool structured)
{
    const char *why = "connecting";
    int fd = connect_raw();
    if (fd >= 0 && greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) < 0)
        why = "greeting";
    else if (fd >= 0) {
        uint32_t type;
        uint8_t d[16];
        if (structured && (send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0 ||
                           recv_option_reply(fd, NBD_OPT_STRUCTURED_REPLY, &type, d, sizeof d) < 0 ||
                           type != NBD_REP_ACK))
            why = "NBD_OPT_STRUCTURED_REPLY";
        else if (opt_go(fd, &why) == 0)
            return fd;
    }
    result(false, "negotiation failed (%s)", why);
    if (fd >= 0)
        xclose(fd);
    return -1;
}

/* ---- transmission ----------------------------------------------------- */

static const char *cmd_name(uint16_t t)
{
    switch (t) {
    case NBD_CMD_READ: return "READ";
    case NBD_CMD_WRITE: return "WRITE";
    case NBD_CMD_DISC: return "DISC";
    case NBD_CMD_FLUSH: return "FLUSH";
    case NBD_CMD_TRIM: return "TRIM";
    case NBD_CMD_CACHE: return "CACHE";
    case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
    case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
    default: return "cmd";
    }
}

static int send_request(int fd, uint16_t flags, uint16_t type, uint64_t cookie,
                        uint64_t offset, uint32_t length)
{
    uint8_t r[28];
    w32(w64(w64(w16(w16(w32(r, NBD_REQUEST_MAGIC), flags), type), cookie), offset), length);
    return send_exact(fd, r, sizeof r);
}

static int send_pattern(int fd, size_t len, uint8_t seed)
{
    uint8_t buf[65536];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(seed + i * 7);
    while (len) {
        size_t n = len < sizeof buf ? len : sizeof buf;
        if (send_exact(fd, buf, n) < 0)
            return -1;
        len -= n;
    }
    return 0;
}

/* A reply: its cookie and error; a successful READ's data goes to data
 * (datalen bytes expected, the request's length). -1: no (valid) reply. */
static int recv_reply(int fd, uint64_t *cookie, uint32_t *err, uint8_t *data, size_t datalen)
{
    uint8_t m[4];
    if (recv_exact(fd, m, 4) < 0)
        return -1;
    if (r32(m) == NBD_SIMPLE_REPLY_MAGIC) {
        uint8_t h[12];
        if (recv_exact(fd, h, 12) < 0)
            return -1;
        *err = r32(h);
        *cookie = r64(h + 4);
        if (*err == 0 && datalen) {
            if (data)
                return recv_exact(fd, data, datalen);
            uint8_t sink[65536];
            while (datalen) {
                size_t n = datalen < sizeof sink ? datalen : sizeof sink;
                if (recv_exact(fd, sink, n) < 0)
                    return -1;
                datalen -= n;
            }
        }
        return 0;
    }
    if (r32(m) != NBD_STRUCTURED_REPLY_MAGIC)
        return -1;
    uint8_t h[16];
    if (recv_exact(fd, h, 16) < 0)
        return -1;
    uint16_t type = r16(h + 2);
    uint32_t len = r32(h + 12);
    *cookie = r64(h + 4);
    if (!(r16(h) & NBD_REPLY_FLAG_DONE))
        return -1;  /* this server sends one chunk per reply */
    if (type == NBD_REPLY_TYPE_ERROR) {
        uint8_t e[6 + 256];
        if (len < 6 || len > sizeof e || recv_exact(fd, e, len) < 0)
            return -1;
        *err = r32(e);
        return 0;
    }
    if (type != NBD_REPLY_TYPE_OFFSET_DATA || len != 8 + datalen)
        return -1;
    uint8_t off[8];
    if (recv_exact(fd, off, 8) < 0)
        return -1;
    *err = 0;
    if (data)
        return recv_exact(fd, data, datalen);
    uint8_t sink[65536];
    while (datalen) {
        size_t n = datalen < sizeof sink ? datalen : sizeof sink;
        if (recv_exact(fd, sink, n) < 0)
            return -1;
        datalen -= n;
    }
    return 0;
}

static uint64_t next_cookie = 0x1000;

/* Send one request (with a payload of length bytes for WRITE) and check the
 * reply carries want_err. Returns true if it did. */
static bool expect(int fd, uint16_t flags, uint16_t type, uint64_t offset, uint32_t length,
                   uint32_t want_err, const char *what)
{
    uint64_t cookie = next_cookie++, got_cookie = 0;
    uint32_t err = 0;
    bool sent = send_request(fd, flags, type, cookie, offset, length) == 0 &&
                (type != NBD_CMD_WRITE || send_pattern(fd, length, (uint8_t)cookie) == 0);
    bool pass = sent && recv_reply(fd, &got_cookie, &err, NULL, type == NBD_CMD_READ ? length : 0) == 0 &&
                got_cookie == cookie && err == want_err;
    if (!sent)
        result(false, "%s (%s flags 0x%x offset %llu length %u): sending failed", what,
               cmd_name(type), flags, (unsigned long long)offset, length);
    else if (got_cookie != cookie)
        result(false, "%s (%s offset %llu length %u): no reply with our cookie", what,
               cmd_name(type), (unsigned long long)offset, length);
    else
        result(pass, "%s (%s flags 0x%x offset %llu length %u) -> error %u, want %u", what,
               cmd_name(type), flags, (unsigned long long)offset, length, err, want_err);
    return pass;
}

/* The connection still works: a small write and read back. */
static void still_in_step(int fd, const char *after)
{
    uint64_t c1 = next_cookie++, c2 = next_cookie++, gc = 0;
    uint32_t err = 1;
    uint8_t want[4096], got[4096];
    for (size_t i = 0; i < sizeof want; i++)
        want[i] = (uint8_t)(c1 + i * 7);
    bool writable = !(export_flags & NBD_FLAG_READ_ONLY);
    bool pass = true;
    if (writable)
        pass = send_request(fd, 0, NBD_CMD_WRITE, c1, 8192, 4096) == 0 &&
               send_exact(fd, want, sizeof want) == 0 &&
               recv_reply(fd, &gc, &err, NULL, 0) == 0 && gc == c1 && err == 0;
    pass = pass && send_request(fd, 0, NBD_CMD_READ, c2, 8192, 4096) == 0 &&
           recv_reply(fd, &gc, &err, got, sizeof got) == 0 && gc == c2 && err == 0 &&
           (!writable || memcmp(want, got, sizeof got) == 0);
    result(pass, "connection still in step after %s (write+read back)", after);
}

static void disconnect(int fd)
{
    send_request(fd, 0, NBD_CMD_DISC, 0, 0, 0);
    xclose(fd);
}

/* ---- cases: negotiation ----------------------------------------------- */

static void case_garbage_first(void)
{
    /* Random bytes before even reading the greeting. */
    int fd = connect_raw();
    uint8_t junk[4096];
    srand(1);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rand();
    junk[0] = 0xff;  /* client flags with unknown bits */
    send_exact(fd, junk, sizeof junk);
    result(closes_within(fd, 3000, NULL), "4 KiB of garbage before the handshake: server hangs up");
    xclose(fd);

    /* Text, as from a confused HTTP client. */
    fd = connect_raw();
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    send_exact(fd, get, strlen(get));
    result(closes_within(fd, 3000, NULL), "an HTTP request instead of NBD: server hangs up");
    xclose(fd);
}

static void case_bad_client_flags(void)
{
    int fd = connect_raw();
    greet(fd, 0xfffffffc | NBD_FLAG_C_FIXED_NEWSTYLE);
    result(closes_within(fd, 3000, NULL), "unknown client flags: server hangs up");
    xclose(fd);
}

static void case_bad_option_magic(void)
{
    int fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t hdr[16];
    w32(w32(w64(hdr, 0x49484156454f5055ull /* IHAVEOPU */), NBD_OPT_GO), 0);
    send_exact(fd, hdr, sizeof hdr);
    size_t got = 0;
    result(closes_within(fd, 3000, &got) && got == 0, "bad option magic: server hangs up without a reply");
    xclose(fd);

    /* A valid option first, then a bad magic: still closed. */
    fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_option(fd, NBD_OPT_LIST, NULL, 0);
    w32(w32(w64(hdr, 0), NBD_OPT_GO), 0);
    send_exact(fd, hdr, sizeof hdr);
    result(closes_within(fd, 3000, &got), "bad option magic after NBD_OPT_LIST: server hangs up");
    xclose(fd);
}

static void case_option_4g(void)
{
    uint32_t opts[] = { NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, 0x7777 };
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
        int fd = connect_raw();
        greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
        uint8_t hdr[16];
        w32(w32(w64(hdr, NBD_IHAVEOPT), opts[i]), 0xffffffffu);
        send_exact(fd, hdr, sizeof hdr);
        send_pattern(fd, 4096, 1);  /* the start of the "data" */
        uint32_t type = 0;
        uint8_t d[256];
        long len = recv_option_reply(fd, opts[i], &type, d, sizeof d);
        result(len >= 0 && type == NBD_REP_ERR_TOO_BIG,
               "option %u of 4 GiB: NBD_REP_ERR_TOO_BIG (got 0x%x)", opts[i], type);
        result(closes_within(fd, 3000, NULL), "option %u of 4 GiB: then the server hangs up", opts[i]);
        xclose(fd);
    }
    /* NBD_OPT_EXPORT_NAME cannot be answered with an error: just closed. */
    int fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    uint8_t hdr[16];
    w32(w32(w64(hdr, NBD_IHAVEOPT), NBD_OPT_EXPORT_NAME), 0xffffffffu);
    send_exact(fd, hdr, sizeof hdr);
    size_t got = 0;
    result(closes_within(fd, 3000, &got) && got == 0, "NBD_OPT_EXPORT_NAME of 4 GiB: closed without a reply");
    xclose(fd);
    /* Just over the option limit, but announced only. */
    fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    w32(w32(w64(hdr, NBD_IHAVEOPT), NBD_OPT_INFO), 65537);
    send_exact(fd, hdr, sizeof hdr);
    uint32_t type = 0;
    uint8_t d[64];
    long len = recv_option_reply(fd, NBD_OPT_INFO, &type, d, sizeof d);
    result(len >= 0 && type == NBD_REP_ERR_TOO_BIG, "option of 64 KiB + 1: NBD_REP_ERR_TOO_BIG");
    xclose(fd);
}

/* NBD_OPT_GO / NBD_OPT_INFO whose lengths disagree: each is refused with
 * NBD_REP_ERR_INVALID and the negotiation goes on. */
static void case_go_inconsistent(void)
{
    struct { const char *what; uint8_t data[64]; uint32_t len; } bad[] = {
        { "no data at all", { 0 }, 0 },
        { "5 bytes", { 0 }, 5 },
        { "name length 0xffffffff", { 0xff, 0xff, 0xff, 0xff, 0, 0 }, 6 },
        { "name length past the option", { 0, 0, 0, 40, 'a', 'b', 0, 0 }, 8 },
        { "name length one too many", { 0, 0, 0, 3, 'a', 'b', 0, 0 }, 8 },
        { "3 info requests announced, 1 sent", { 0, 0, 0, 0, 0, 3, 0, 1 }, 8 },
        { "0 info requests announced, 2 sent", { 0, 0, 0, 0, 0, 0, 0, 1, 0, 3 }, 10 },
        { "65535 info requests announced", { 0, 0, 0, 0, 0xff, 0xff, 0, 1 }, 8 },
        { "an odd byte after the requests", { 0, 0, 0, 0, 0, 1, 0, 1, 9 }, 9 },
    };
    uint32_t opts[] = { NBD_OPT_GO, NBD_OPT_INFO };
    for (size_t o = 0; o < 2; o++) {
        int fd = connect_raw();
        greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            send_option(fd, opts[o], bad[i].data, bad[i].len);
            uint32_t type = 0;
            uint8_t d[256];
            long len = recv_option_reply(fd, opts[o], &type, d, sizeof d);
            result(len >= 0 && type == NBD_REP_ERR_INVALID, "%s with %s: NBD_REP_ERR_INVALID (got 0x%x)",
                   opts[o] == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO", bad[i].what, type);
        }
        /* Still in step: a proper GO now works. */
        const char *why = "";
        bool go = opt_go(fd, &why) == 0;
        result(go, "a valid NBD_OPT_GO after 9 broken ones succeeds%s%s", go ? "" : ": ", go ? "" : why);
        if (go) {
            still_in_step(fd, "broken options");
            disconnect(fd);
        } else {
            xclose(fd);
        }
    }
    /* A name of 4096 with NBD_INFO_NAME: echoed back. */
    int fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    static uint8_t big[4 + 4096 + 2 + 2];
    w32(big, 4096);
    memset(big + 4, 'n', 4096);
    w16(w16(big + 4 + 4096, 1), NBD_INFO_NAME);
    send_option(fd, NBD_OPT_INFO, big, sizeof big);
    bool name_ok = false, acked = false;
    for (int i = 0; i < 6 && !acked; i++) {
        uint32_t type;
        static uint8_t d[8192];
        long len = recv_option_reply(fd, NBD_OPT_INFO, &type, d, sizeof d);
        if (len < 0)
            break;
        if (type == NBD_REP_INFO && len == 2 + 4096 && r16(d) == NBD_INFO_NAME && d[2] == 'n' && d[len - 1] == 'n')
            name_ok = true;
        acked = type == NBD_REP_ACK;
    }
    result(name_ok && acked, "NBD_OPT_INFO with a 4096-byte name and NBD_INFO_NAME: name echoed, ACK");
    xclose(fd);
}

static void case_unknown_options(void)
{
    int fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    uint32_t opts[] = { 0, NBD_OPT_STARTTLS, 4, NBD_OPT_EXTENDED_HEADERS, 12, 0x7fffffff, 0xffffffff };
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
        uint8_t d[100];
        memset(d, 0xee, sizeof d);
        send_option(fd, opts[i], d, (uint32_t)(i * 10));
        uint32_t type = 0;
        long len = recv_option_reply(fd, opts[i], &type, d, sizeof d);
        /* Over TLS, STARTTLS is known, and refused: TLS is on already. */
        uint32_t want = tls_mode() && opts[i] == NBD_OPT_STARTTLS ? NBD_REP_ERR_INVALID : NBD_REP_ERR_UNSUP;
        result(len >= 0 && type == want, "option %u with %zu bytes: %s (got 0x%x)",
               opts[i], i * 10, want == NBD_REP_ERR_UNSUP ? "NBD_REP_ERR_UNSUP" : "NBD_REP_ERR_INVALID", type);
    }
    /* Options that take no data, given some; metadata options given garbage. */
    uint32_t nodata[] = { NBD_OPT_LIST, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT };
    for (size_t i = 0; i < 3; i++) {
        uint8_t d[16] = { 1 };
        send_option(fd, nodata[i], d, 3);
        uint32_t type = 0;
        long len = recv_option_reply(fd, nodata[i], &type, d, sizeof d);
        result(len >= 0 && type == NBD_REP_ERR_INVALID, "option %u with data it does not take: NBD_REP_ERR_INVALID",
               nodata[i]);
    }
    const char *why = "";
    bool go = opt_go(fd, &why) == 0;
    result(go, "NBD_OPT_GO after 10 refused options succeeds");
    if (go) {
        still_in_step(fd, "refused options");
        disconnect(fd);
    } else {
        xclose(fd);
    }
}

static void case_option_flood(void)
{
    /* More options than any client needs: cut off at some point, never served forever. */
    int fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    int answered = 0;
    for (int i = 0; i < 5000; i++) {
        if (send_option(fd, 0x5555, NULL, 0) < 0)
            break;
        uint32_t type;
        uint8_t d[64];
        if (recv_option_reply(fd, 0x5555, &type, d, sizeof d) < 0)
            break;
        answered++;
    }
    note("%d options answered", answered);
    result(answered < 5000 && closes_within(fd, 3000, NULL), "5000 options in one negotiation: cut off (after %d)", answered);
    xclose(fd);
}

/* Stalls: the deadline is for the whole negotiation. */
static void case_handshake_stall(void)
{
    long t = env_long("HOSTILE_TIMEOUT", 2);
    struct { const char *what; int stage; } stalls[] = {
        { "silent after connecting", 0 },
        { "silent after the client flags", 1 },
        { "half an option header", 2 },
        { "an option's data cut short", 3 },
        { "one byte every 300 ms (slowloris)", 4 },
    };
    for (size_t i = 0; i < sizeof stalls / sizeof *stalls; i++) {
        int fd = connect_raw();
        double t0 = now_s();
        if (stalls[i].stage >= 1)
            greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
        if (stalls[i].stage == 2) {
            uint8_t hdr[16];
            w64(hdr, NBD_IHAVEOPT);
            send_exact(fd, hdr, 7);
        } else if (stalls[i].stage == 3) {
            uint8_t d[10] = { 0 };
            uint8_t hdr[16];
            w32(w32(w64(hdr, NBD_IHAVEOPT), NBD_OPT_GO), 100);
            send_exact(fd, hdr, 16);
            send_exact(fd, d, sizeof d);
        }
        bool closed;
        if (stalls[i].stage == 4) {
            uint8_t opt[16 + 6] = { 0 };
            w32(w32(w64(opt, NBD_IHAVEOPT), NBD_OPT_INFO), 6);
            closed = false;
            for (int k = 0; k < 1000 && !closed; k++) {
                if (xsend(fd, opt + k % sizeof opt, 1, MSG_NOSIGNAL) != 1) {
                    closed = true;
                    break;
                }
                closed = closes_within(fd, 300, NULL);
                if (now_s() - t0 > t + 5)
                    break;
            }
        } else {
            closed = closes_within(fd, (int)(t + 5) * 1000, NULL);
        }
        double took = now_s() - t0;
        result(closed && took > t - 0.5 && took < t + 3, "handshake %s: closed after %.1f s (timeout %ld s)",
               stalls[i].what, took, t);
        xclose(fd);
    }
}

/* A client that sends options and never reads the replies: the deadline
 * must hold while the server is blocked sending, too. */
static void case_handshake_no_read(void)
{
    long t = env_long("HOSTILE_TIMEOUT", 2);
    long base_threads = proc_status("Threads");
    int fd = connect_raw();
    /* 1024 NBD_OPT_INFO with a 4 KiB name and NBD_INFO_NAME: ~4 MiB of replies. */
    static uint8_t opt[16 + 4 + 4096 + 4];
    w32(w32(w64(opt, NBD_IHAVEOPT), NBD_OPT_INFO), 4 + 4096 + 4);
    w32(opt + 16, 4096);
    memset(opt + 20, 'x', 4096);
    w16(w16(opt + 20 + 4096, 1), NBD_INFO_NAME);
    uint8_t f[4];
    w32(f, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_exact(fd, f, 4);
    int sent = 0;
    double t0 = now_s();
    for (; sent < 1000 && now_s() - t0 < 1.0; sent++) {
        /* Never read: once both socket buffers are full, sending stalls. */
        const uint8_t *p = opt;
        size_t len = sizeof opt;
        while (len) {
            ssize_t n = xsend(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                p += n;
                len -= (size_t)n;
            } else if (n < 0 && errno == EAGAIN) {
                struct pollfd pf = { .fd = fd, .events = POLLOUT };
                if (poll(&pf, 1, 100) <= 0 && now_s() - t0 > 1.0)
                    break;
            } else {
                break;
            }
        }
        if (len)
            break;
    }
    note("%d options sent before the server stopped taking them", sent);
    /* Wait out the deadline without reading, then look at the server. */
    sleep_ms((int)(t * 1000 + 1500));
    long threads = proc_status("Threads");
    if (base_threads > 0)
        result(threads <= base_threads, "client that never reads negotiation replies: handshake thread gone "
               "after the timeout (threads %ld, before %ld)", threads, base_threads);
    size_t got = 0;
    result(closes_within(fd, 1000, &got), "client that never reads negotiation replies: connection closed "
           "by the deadline (%zu bytes of replies were waiting)", got);
    xclose(fd);
}

/* Everything in one send: client flags, NBD_OPT_GO and the first
 * requests, before any reply has been read. The handshake thread must take
 * exactly the negotiation and leave the requests for the transmission phase. */
static void case_go_pipelined(void)
{
    for (int s = 0; s < 2; s++) {
        int fd = connect_raw();
        uint8_t hello[18];
        if (fd < 0 || recv_exact(fd, hello, sizeof hello) < 0) {
            result(false, "greeting");
            return;
        }
        uint8_t all[4 + 16 + 16 + 6 + 3 * 28], *p = all;
        p = w32(p, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        if (s)
            p = w32(w32(w64(p, NBD_IHAVEOPT), NBD_OPT_STRUCTURED_REPLY), 0);
        p = w32(w32(w64(p, NBD_IHAVEOPT), NBD_OPT_GO), 6);
        memset(p, 0, 6);
        p += 6;
        for (int i = 0; i < 3; i++)
            p = w32(w64(w64(w16(w16(w32(p, NBD_REQUEST_MAGIC), 0), NBD_CMD_READ), 500 + i), (uint64_t)i * 512), 512);
        send_exact(fd, all, (size_t)(p - all));
        if (s) {
            uint32_t type = 0;
            uint8_t d[16];
            recv_option_reply(fd, NBD_OPT_STRUCTURED_REPLY, &type, d, sizeof d);
        }
        bool acked = false;
        for (int i = 0; i < 5 && !acked; i++) {
            uint32_t type = 0;
            uint8_t d[64];
            if (recv_option_reply(fd, NBD_OPT_GO, &type, d, sizeof d) < 0)
                break;
            acked = type == NBD_REP_ACK;
        }
        int replies = 0;
        for (int i = 0; i < 3 && acked; i++) {
            uint64_t c = 0;
            uint32_t err = 1;
            if (recv_reply(fd, &c, &err, NULL, 512) == 0 && c == 500u + i && err == 0)
                replies++;
        }
        result(acked && replies == 3, "flags, %sNBD_OPT_GO and 3 reads in one send: negotiated, %d of 3 reads answered",
               s ? "NBD_OPT_STRUCTURED_REPLY, " : "", replies);
        disconnect(fd);
    }
}

/* ---- cases: transmission ---------------------------------------------- */

static void case_read_past_end(void)
{
    for (int s = 0; s < 2; s++) {
        int fd = connect_nbd(s);
        if (fd < 0)
            return;
        uint64_t sz = export_size;
        expect(fd, 0, NBD_CMD_READ, sz - 4096, 4096, 0, "read of the last block");
        expect(fd, 0, NBD_CMD_READ, sz - 4096, 8192, NBD_EINVAL, "read across the end");
        expect(fd, 0, NBD_CMD_READ, sz, 1, NBD_EINVAL, "read at the end");
        expect(fd, 0, NBD_CMD_READ, sz + 1, 1, NBD_EINVAL, "read one past the end");
        expect(fd, 0, NBD_CMD_READ, 1ull << 63, 4096, NBD_EINVAL, "read at 2^63");
        expect(fd, 0, NBD_CMD_READ, UINT64_MAX - 511, 1024, NBD_EINVAL, "read whose end wraps past 2^64");
        expect(fd, 0, NBD_CMD_READ, UINT64_MAX, 1, NBD_EINVAL, "read at 2^64-1");
        expect(fd, 0, NBD_CMD_TRIM, sz - 4096, 8192, NBD_EINVAL, "trim across the end");
        expect(fd, 0, NBD_CMD_TRIM, 1ull << 63, 4096, NBD_EINVAL, "trim at 2^63");
        still_in_step(fd, s ? "reads past the end (structured)" : "reads past the end");
        disconnect(fd);
    }
}

static void case_write_past_end(void)
{
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    uint64_t sz = export_size;
    /* Make the last 4 KiB known, then check a refused write left it alone. */
    expect(fd, 0, NBD_CMD_WRITE_ZEROES, sz - 4096, 4096, 0, "zero the last block");
    expect(fd, 0, NBD_CMD_WRITE, sz - 4096, 8192, NBD_ENOSPC, "write across the end");
    expect(fd, 0, NBD_CMD_WRITE, sz, 512, NBD_ENOSPC, "write at the end");
    expect(fd, 0, NBD_CMD_WRITE, 1ull << 63, 65536, NBD_ENOSPC, "write at 2^63");
    expect(fd, 0, NBD_CMD_WRITE, UINT64_MAX - 511, 1024, NBD_ENOSPC, "write whose end wraps past 2^64");
    expect(fd, 0, NBD_CMD_WRITE_ZEROES, sz - 4096, 8192, NBD_ENOSPC, "write_zeroes across the end");
    expect(fd, 0, NBD_CMD_WRITE_ZEROES, 1ull << 63, 4096, NBD_ENOSPC, "write_zeroes at 2^63");
    uint8_t last[4096], zero[4096] = { 0 };
    uint64_t c = next_cookie++, gc = 0;
    uint32_t err = 1;
    bool pass = send_request(fd, 0, NBD_CMD_READ, c, sz - 4096, 4096) == 0 &&
                recv_reply(fd, &gc, &err, last, sizeof last) == 0 && err == 0 && memcmp(last, zero, 4096) == 0;
    result(pass, "the refused write across the end changed nothing");
    still_in_step(fd, "writes past the end");
    disconnect(fd);
}

static void case_huge_lengths(void)
{
    for (int s = 0; s < 2; s++) {
        int fd = connect_nbd(s);
        if (fd < 0)
            return;
        uint32_t over = s ? NBD_EOVERFLOW : NBD_EINVAL;
        expect(fd, 0, NBD_CMD_READ, 0, 0xffffffffu, over, s ? "read of 4 GiB - 1, structured: EOVERFLOW"
                                                             : "read of 4 GiB - 1");
        expect(fd, 0, NBD_CMD_READ, 0, max_block + 1, over, "read one byte over the maximum block size");
        expect(fd, 0, NBD_CMD_READ, 0, max_block, 0, "read of exactly the maximum block size");
        expect(fd, 0, NBD_CMD_READ, 0, 0, NBD_EINVAL, "read of 0 bytes");
        expect(fd, 0, NBD_CMD_TRIM, 0, 0xffffffffu, NBD_EINVAL, "trim of 4 GiB - 1 (past the end)");
        expect(fd, 0, NBD_CMD_WRITE_ZEROES, 0, 0xffffffffu, NBD_ENOSPC, "write_zeroes of 4 GiB - 1 (past the end)");
        still_in_step(fd, "huge lengths");
        disconnect(fd);
    }
    /* A WRITE whose payload cannot be accepted: the stream cannot be framed
     * any more, so the connection must close. */
    uint32_t lens[] = { 0xffffffffu, 1u << 30, max_block + 1 };
    for (size_t i = 0; i < 3; i++) {
        int fd = connect_nbd(false);
        if (fd < 0)
            return;
        send_request(fd, 0, NBD_CMD_WRITE, 7, 0, lens[i]);
        send_pattern(fd, 65536, 3);
        size_t got = 0;
        result(closes_within(fd, 3000, &got), "write of %u bytes (over the maximum): connection closed", lens[i]);
        xclose(fd);
    }
}

static void case_write_then_hang_up(void)
{
    /* Announce a big write, send a little, vanish. Over and over: the
     * buffers those writes took must come back. */
    long rss0 = proc_status("VmRSS");
    int probe = connect_nbd(false);  /* learns the maximum block size */
    if (probe < 0)
        return;
    disconnect(probe);
    uint32_t lens[] = { 1u << 30, max_block, max_block / 2 };
    for (size_t i = 0; i < 3; i++) {
        for (int k = 0; k < 20; k++) {
            int fd = connect_nbd(false);
            if (fd < 0)
                return;
            send_request(fd, 0, NBD_CMD_WRITE, 9, 0, lens[i]);
            send_pattern(fd, 65536, 5);
            xclose(fd);
        }
        result(true, "20 writes announcing %u bytes, 64 KiB sent, then hang-up", lens[i]);
    }
    sleep_ms(300);
    long rss1 = proc_status("VmRSS");
    if (rss0 > 0)
        result(rss1 - rss0 < 64 * 1024, "memory after 60 abandoned writes: %ld kB -> %ld kB", rss0, rss1);
}

static void case_unknown_commands(void)
{
    for (int s = 0; s < 2; s++) {
        int fd = connect_nbd(s);
        if (fd < 0)
            return;
        uint16_t types[] = { NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS, 8, 9, 0x100, 0xffff };
        for (size_t i = 0; i < sizeof types / sizeof *types; i++)
            expect(fd, 0, types[i], 0, 4096, NBD_EINVAL, "unknown or unadvertised command");
        bool fua = export_flags & NBD_FLAG_SEND_FUA;
        expect(fd, 0x8000, NBD_CMD_READ, 0, 4096, NBD_EINVAL, "read with an unknown flag");
        expect(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 4096, NBD_EINVAL, "read with DF, not advertised");
        expect(fd, NBD_CMD_FLAG_FUA, NBD_CMD_READ, 0, 4096, NBD_EINVAL, "read with FUA");
        expect(fd, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_READ, 0, 4096, NBD_EINVAL, "read with REQ_ONE");
        expect(fd, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE, 0, 4096, NBD_EINVAL, "write with NO_HOLE");
        expect(fd, 0x4000, NBD_CMD_WRITE, 0, 4096, NBD_EINVAL, "write with an unknown flag (payload still read)");
        /* FUA is accepted whether advertised or not (nothing volatile without flush()). */
        expect(fd, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 0, 4096, 0,
               fua ? "write with FUA, advertised" : "write with FUA, not advertised");
        expect(fd, 0x20, NBD_CMD_WRITE_ZEROES, 0, 4096, NBD_EINVAL, "write_zeroes with an unknown flag");
        expect(fd, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_TRIM, 0, 4096, NBD_EINVAL, "trim with NO_HOLE");
        expect(fd, 0xffff, NBD_CMD_FLUSH, 0, 0, NBD_EINVAL, "flush with every flag");
        expect(fd, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 0, 4096,
               (export_flags & NBD_FLAG_SEND_FAST_ZERO) ? 0 : NBD_EINVAL, "write_zeroes with FAST_ZERO");
        still_in_step(fd, "unknown commands and flags");
        disconnect(fd);
    }
}

static void case_readonly(void)
{
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    result(export_flags & NBD_FLAG_READ_ONLY, "the export is advertised read-only");
    expect(fd, 0, NBD_CMD_WRITE, 0, 4096, NBD_EPERM, "write to a read-only export");
    expect(fd, 0, NBD_CMD_WRITE, 1ull << 63, 4096, NBD_EPERM, "write at 2^63 to a read-only export");
    expect(fd, 0, NBD_CMD_WRITE_ZEROES, 0, 4096, NBD_EPERM, "write_zeroes to a read-only export");
    expect(fd, 0, NBD_CMD_TRIM, 0, 4096, NBD_EPERM, "trim of a read-only export");
    expect(fd, 0, NBD_CMD_READ, 0, 4096, 0, "read of a read-only export");
    still_in_step(fd, "refused writes");
    disconnect(fd);
}

static void case_bad_request_magic(void)
{
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    uint8_t r[28] = { 0 };
    w32(r, 0x25609514);
    send_exact(fd, r, sizeof r);
    size_t got = 0;
    result(closes_within(fd, 3000, &got) && got == 0, "bad request magic: closed without a reply");
    xclose(fd);

    /* Good requests, then a bad one, replies not read yet: the good ones
     * are answered in full (never a reply cut short), then closed. */
    fd = connect_nbd(false);
    if (fd < 0)
        return;
    send_request(fd, 0, NBD_CMD_READ, 1, 0, 1u << 20);
    send_request(fd, 0, NBD_CMD_READ, 2, 0, 1u << 20);
    send_exact(fd, "this is not an NBD request!!", 28);
    sleep_ms(200);
    int whole = 0;
    for (int i = 1; i <= 2; i++) {
        uint64_t c = 0;
        uint32_t err = 1;
        if (recv_reply(fd, &c, &err, NULL, 1u << 20) == 0 && c == (uint64_t)i && err == 0)
            whole++;
    }
    result(whole == 2 && closes_within(fd, 3000, &got) && got == 0,
           "bad request magic after two 1 MiB reads: both answered in full, then closed");
    xclose(fd);
}

static void case_half_request(void)
{
    size_t cuts[] = { 1, 4, 14, 27 };
    for (size_t i = 0; i < 4; i++) {
        int fd = connect_nbd(false);
        if (fd < 0)
            return;
        uint8_t r[28];
        w32(w64(w64(w16(w16(w32(r, NBD_REQUEST_MAGIC), 0), NBD_CMD_READ), 1), 0), 4096);
        send_exact(fd, r, cuts[i]);
        xclose(fd);
        result(true, "%zu bytes of a request, then hang-up", cuts[i]);
    }
    /* Half a request, silence, then the rest: served. */
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    uint8_t r[28];
    w32(w64(w64(w16(w16(w32(r, NBD_REQUEST_MAGIC), 0), NBD_CMD_READ), 42), 0), 512);
    send_exact(fd, r, 13);
    sleep_ms(500);
    send_exact(fd, r + 13, 15);
    uint64_t c = 0;
    uint32_t err = 1;
    result(recv_reply(fd, &c, &err, NULL, 512) == 0 && c == 42 && err == 0,
           "a request in two halves 500 ms apart is served");
    disconnect(fd);
}

static void case_pipeline_hang_up(void)
{
    /* A thousand requests at once, then gone before any reply is read. */
    for (int kind = 0; kind < 3; kind++) {
        int fd = connect_nbd(kind == 2);
        if (fd < 0)
            return;
        static uint8_t batch[1000 * (28 + 4096)];
        uint8_t *p = batch;
        for (int i = 0; i < 1000; i++) {
            uint16_t type = kind == 1 ? NBD_CMD_WRITE : NBD_CMD_READ;
            p = w32(w64(w64(w16(w16(w32(p, NBD_REQUEST_MAGIC), 0), type), i), (uint64_t)i * 4096), 4096);
            if (type == NBD_CMD_WRITE) {
                memset(p, i, 4096);
                p += 4096;
            }
        }
        int rc = send_exact(fd, batch, (size_t)(p - batch));
        xclose(fd);
        result(rc == 0, "1000 pipelined %s%s, then hang-up", kind == 1 ? "writes" : "reads",
               kind == 2 ? " (structured)" : "");
    }
    /* The same, then DISC: every reply must arrive before the server closes. */
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    static uint8_t batch[1000 * 28];
    uint8_t *p = batch;
    for (int i = 0; i < 1000; i++)
        p = w32(w64(w64(w16(w16(w32(p, NBD_REQUEST_MAGIC), 0), NBD_CMD_READ), i), (uint64_t)i * 512), 512);
    send_exact(fd, batch, sizeof batch);
    send_request(fd, 0, NBD_CMD_DISC, 0, 0, 0);
    send_request(fd, 0, NBD_CMD_READ, 5000, 0, 512);  /* after DISC: ignored */
    int replies = 0;
    uint64_t c;
    uint32_t err;
    while (replies < 1001 && recv_reply(fd, &c, &err, NULL, 512) == 0 && err == 0 && c < 1000)
        replies++;
    size_t got = 0;
    result(replies == 1000 && closes_within(fd, 3000, &got) && got == 0,
           "1000 pipelined reads then DISC: %d replies, then closed", replies);
    xclose(fd);
}

/* A client that sends and never reads: the server must stop reading once
 * the connection's in-flight limits are reached, so its memory stays put. */
static void case_slow_reader(void)
{
    long limit = env_long("HOSTILE_INFLIGHT_BYTES", 8 << 20);
    long rss0 = proc_status("VmRSS");
    for (int kind = 0; kind < 2; kind++) {
        int fd = connect_nbd(false);
        if (fd < 0)
            return;
        uint32_t len = kind == 0 ? (1u << 20) : 4096;
        uint16_t type = NBD_CMD_READ;
        int sent = 0;
        double t0 = now_s(), last = t0;
        uint8_t r[28];
        /* Keep sending until the socket has stayed full for a second. */
        while (now_s() - last < 1.0 && now_s() - t0 < 20) {
            w32(w64(w64(w16(w16(w32(r, NBD_REQUEST_MAGIC), 0), type), sent), (uint64_t)(sent % 64) * len), len);
            size_t off = 0;
            while (off < sizeof r && now_s() - last < 1.0) {
                ssize_t n = xsend(fd, r + off, sizeof r - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) {
                    off += (size_t)n;
                    last = now_s();
                } else if (n < 0 && errno == EAGAIN) {
                    struct pollfd pf = { .fd = fd, .events = POLLOUT };
                    poll(&pf, 1, 100);
                } else {
                    break;
                }
            }
            if (off < sizeof r)
                break;
            sent++;
        }
        long rss1 = proc_status("VmRSS");
        note("%d reads of %u bytes sent before the server stopped reading; RSS %ld kB -> %ld kB",
             sent, len, rss0, rss1);
        result(now_s() - t0 < 20, "never reading %u-byte read replies: the server stops reading requests",
               len);
        if (rss0 > 0)
            result((rss1 - rss0) * 1024 < limit + (8l << 20),
                   "memory while stalled stays under --max-inflight-bytes + 8 MiB (grew %ld kB)", rss1 - rss0);
        /* Now read everything: the server resumes and answers all of them. */
        int replies = 0;
        uint64_t c;
        uint32_t err;
        xshutdown(fd, SHUT_WR);
        while (replies < sent && recv_reply(fd, &c, &err, NULL, len) == 0 && err == 0)
            replies++;
        result(replies == sent, "reading at last: all %d replies arrive (%d did)", sent, replies);
        xclose(fd);
    }
}

/* Many slow readers at once: the limits are per connection, so the server
 * may hold up to connections x --max-inflight-bytes, and no more. */
static void case_slow_readers(void)
{
    long limit = env_long("HOSTILE_INFLIGHT_BYTES", 8 << 20);
    int n = 8;
    long rss0 = proc_status("VmRSS");
    int fds[8];
    int sent[8] = { 0 };
    for (int k = 0; k < n; k++) {
        fds[k] = connect_nbd(false);
        if (fds[k] < 0)
            return;
        fcntl(fds[k], F_SETFL, O_NONBLOCK);
    }
    /* Round-robin 1 MiB reads into every connection until all are full. */
    double last = now_s(), t0 = last;
    while (now_s() - last < 1.0 && now_s() - t0 < 30) {
        for (int k = 0; k < n; k++) {
            uint8_t r[28];
            w32(w64(w64(w16(w16(w32(r, NBD_REQUEST_MAGIC), 0), NBD_CMD_READ), sent[k]), 0), 1u << 20);
            if (xsend(fds[k], r, sizeof r, MSG_NOSIGNAL) == (ssize_t)sizeof r) {
                sent[k]++;
                last = now_s();
            }
        }
        sleep_ms(1);
    }
    sleep_ms(300);
    long rss1 = proc_status("VmRSS");
    int total = 0;
    for (int k = 0; k < n; k++)
        total += sent[k];
    note("%d connections, %d reads of 1 MiB sent before the server stopped reading; RSS %ld kB -> %ld kB",
         n, total, rss0, rss1);
    if (rss0 > 0)
        result((rss1 - rss0) * 1024 < n * (limit + (2l << 20)) + (8l << 20),
               "%d connections that never read: memory grows by at most %d x --max-inflight-bytes "
               "(grew %ld kB)", n, n, rss1 - rss0);
    for (int k = 0; k < n; k++)
        xclose(fds[k]);
}

/* More clients than --max-connections, all at once. */
static void case_connection_flood(void)
{
    long maxc = env_long("HOSTILE_MAX_CONN", 16);
    long t = env_long("HOSTILE_TIMEOUT", 2);
    int n = (int)maxc * 4;
    int *fds = calloc((size_t)n, sizeof *fds);
    /* Take every slot with a connection in transmission. */
    int held = 0;
    for (int i = 0; i < maxc; i++) {
        fds[i] = connect_raw();
        const char *why;
        if (fds[i] >= 0 && greet(fds[i], NBD_FLAG_C_FIXED_NEWSTYLE) == 0 && opt_go(fds[i], &why) == 0)
            held++;
    }
    result(held == maxc, "%d connections (--max-connections) all negotiate", held);
    sleep_ms(200);
    int refused = 0;
    for (int i = (int)maxc; i < n; i++) {
        fds[i] = connect_raw();
        size_t got = 0;
        if (fds[i] < 0 || (closes_within(fds[i], 2000, &got) && got == 0))
            refused++;
    }
    result(refused == n - maxc, "%d connections beyond the limit: all closed without a greeting (%d)",
           n - (int)maxc, refused);
    /* The held ones still work. */
    int working = 0;
    for (int i = 0; i < maxc; i++) {
        uint64_t c = 0;
        uint32_t err = 1;
        if (send_request(fds[i], 0, NBD_CMD_READ, 77, 0, 512) == 0 &&
            recv_reply(fds[i], &c, &err, NULL, 512) == 0 && c == 77 && err == 0)
            working++;
    }
    result(working == maxc, "the %d admitted connections still serve (%d)", (int)maxc, working);
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            xclose(fds[i]);
    /* Slots come back: the same again, this time as stalled handshakes,
     * which must be cut off by the handshake timeout. */
    sleep_ms(300);
    for (int i = 0; i < n; i++)
        fds[i] = connect_raw();
    sleep_ms((int)(t * 1000 + 1500));
    int after = connect_raw();
    const char *why = "";
    bool admitted = after >= 0 && greet(after, NBD_FLAG_C_FIXED_NEWSTYLE) == 0 && opt_go(after, &why) == 0;
    result(admitted, "%d stalled handshakes: once the timeout passed, a new client is admitted", n);
    if (after >= 0)
        xclose(after);
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            xclose(fds[i]);
    free(fds);
}

/* Clients that vanish while the device still holds their requests (run
 * against tests/hostile/slowdisk.lua, where each request takes a second).
 * The server must neither spin meanwhile nor forget the writes. CPU is
 * measured for 0.7 s from HOSTILE_SETTLE_MS (100) after the hang-up: under
 * valgrind, serving the requests up to the device takes ~0.4 s of CPU, so
 * there the device is slower (run.sh's HOSTILE_BUSY_DELAY) and the
 * measurement starts once that is done. */
static void case_vanish_busy(void)
{
    for (int kind = 0; kind < 3; kind++) {
        int fd = connect_nbd(false);
        if (fd < 0)
            return;
        const char *what;
        if (kind == 0) {
            what = "4 reads, DISC, hang-up";
            for (int i = 0; i < 4; i++)
                send_request(fd, 0, NBD_CMD_READ, i, (uint64_t)i * 4096, 4096);
            send_request(fd, 0, NBD_CMD_DISC, 0, 0, 0);
        } else if (kind == 1) {
            what = "more reads than --max-inflight, hang-up";
            for (int i = 0; i < 100; i++)
                send_request(fd, 0, NBD_CMD_READ, i, 0, 512);
        } else {
            what = "4 writes, DISC, hang-up";
            for (int i = 0; i < 4; i++) {
                send_request(fd, 0, NBD_CMD_WRITE, i, (1u << 20) + (uint64_t)i * 4096, 4096);
                uint8_t b[4096];
                memset(b, 0xa0 + i, sizeof b);
                send_exact(fd, b, sizeof b);
            }
            send_request(fd, 0, NBD_CMD_DISC, 0, 0, 0);
        }
        sleep_ms(100);
        xclose(fd);
        sleep_ms((int)env_long("HOSTILE_SETTLE_MS", 100));
        long t0 = proc_cpu_ticks();
        sleep_ms(700);
        long t1 = proc_cpu_ticks();
        if (t0 >= 0)
            result(t1 - t0 <= env_long("HOSTILE_IDLE_TICKS", 7),
                   "%s while the device is busy: the server idles (%ld ticks of CPU in 0.7 s)", what, t1 - t0);
    }
    /* The writes were acknowledged to no one, but the client sent them
     * before DISC: they must happen. Unacknowledged, they are ordered with
     * nothing another connection does, so look until they show (the slow
     * device has a backlog of the reads above to get through first). */
    int fd = connect_nbd(false);
    if (fd < 0)
        return;
    bool all = false;
    for (int tries = 0; tries < 6 && !all; tries++) {
        all = true;
        sleep_ms(500);
        for (int i = 0; i < 4; i++) {
            uint8_t b[4096] = { 0 };
            uint64_t c = 0;
            uint32_t err = 1;
            int rc = send_request(fd, 0, NBD_CMD_READ, 100 + i, (1u << 20) + (uint64_t)i * 4096, 4096);
            if (rc == 0)
                rc = recv_reply(fd, &c, &err, b, sizeof b);
            if (rc < 0 || err) {
                note("read back %d: rc %d, error %u", i, rc, err);
                tries = 6;
            }
            if (rc < 0 || err || b[0] != 0xa0 + i || b[4095] != 0xa0 + i)
                all = false;
        }
    }
    result(all, "writes sent before DISC and hang-up were all applied");
    disconnect(fd);
}

static long proc_fd_count(void)
{
    long pid = env_long("HOSTILE_PID", 0);
    if (!pid)
        return -1;
    char cmd[96];
    snprintf(cmd, sizeof cmd, "ls /proc/%ld/fd 2>/dev/null | wc -l", pid);
    FILE *p = popen(cmd, "r");
    long n = -1;
    if (p) {
        if (fscanf(p, "%ld", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

/* Connection churn: hundreds of short lives of every kind. Nothing may
 * stay behind: no fd, no thread, no connection slot. */
static void case_churn(void)
{
    long fds0 = proc_fd_count(), thr0 = proc_status("Threads");
    int kinds[4] = { 0 };
    for (int i = 0; i < 600; i++) {
        int fd = connect_raw();
        if (fd < 0)
            continue;
        switch (i % 4) {
        case 0:  /* connect, hang up */
            break;
        case 1:  /* greeting read, flags, hang up */
            greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
            break;
        case 2: {  /* negotiate, one read, DISC */
            const char *why;
            if (greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE) == 0 && opt_go(fd, &why) == 0) {
                uint64_t c;
                uint32_t err;
                send_request(fd, 0, NBD_CMD_READ, 1, 0, 512);
                recv_reply(fd, &c, &err, NULL, 512);
                send_request(fd, 0, NBD_CMD_DISC, 0, 0, 0);
            }
            break;
        }
        case 3: {  /* NBD_OPT_ABORT */
            uint32_t type;
            uint8_t d[16];
            greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
            send_option(fd, NBD_OPT_ABORT, NULL, 0);
            recv_option_reply(fd, NBD_OPT_ABORT, &type, d, sizeof d);
            break;
        }
        }
        kinds[i % 4]++;
        xclose(fd);
    }
    sleep_ms(500);
    long fds1 = proc_fd_count(), thr1 = proc_status("Threads");
    note("%d+%d+%d+%d short connections; fds %ld -> %ld, threads %ld -> %ld",
         kinds[0], kinds[1], kinds[2], kinds[3], fds0, fds1, thr0, thr1);
    if (fds0 > 0)
        result(fds1 <= fds0, "600 short connections of 4 kinds leave no fd behind (%ld -> %ld)", fds0, fds1);
    if (thr0 > 0)
        result(thr1 <= thr0, "... and no thread (%ld -> %ld)", thr0, thr1);
}

/* ---- cases: block status ---------------------------------------------- */

/* A metadata option: name "" and the queries given; returns the reply type
 * it ended with, and in *id and *nctx the context id and how many
 * NBD_REP_META_CONTEXT came (each must name base:allocation). */
static uint32_t meta_option(int fd, uint32_t opt, const char *const *queries, int nq, uint32_t *id, int *nctx)
{
    uint8_t d[1024], *p = w32(w32(d, 0), (uint32_t)nq);
    for (int i = 0; i < nq; i++) {
        size_t ql = strlen(queries[i]);
        p = w32(p, (uint32_t)ql);
        memcpy(p, queries[i], ql);
        p += ql;
    }
    *nctx = 0;
    if (send_option(fd, opt, d, (uint32_t)(p - d)) < 0)
        return 0;
    for (;;) {
        uint32_t type = 0;
        uint8_t r[256];
        long len = recv_option_reply(fd, opt, &type, r, sizeof r);
        if (len < 0)
            return 0;
        if (type != NBD_REP_META_CONTEXT)
            return type;
        (*nctx)++;
        if (len == 4 + 15 && memcmp(r + 4, "base:allocation", 15) == 0)
            *id = r32(r);
        else
            *nctx += 1000;  /* a context that is not ours: counted as wrong */
    }
}

/* A raw metadata option with data as given: the reply type. */
static uint32_t raw_option(int fd, uint32_t opt, const uint8_t *d, uint32_t len)
{
    uint32_t type = 0;
    uint8_t r[256];
    if (send_option(fd, opt, d, len) < 0 || recv_option_reply(fd, opt, &type, r, sizeof r) < 0)
        return 0;
    return type;
}

/* One reply to BLOCK_STATUS: 0 with the descriptors (up to cap pairs into
 * ext, *n of them), or the error of an error chunk in *err; -1 if the reply
 * is not a well-formed structured one. */
static int recv_block_status(int fd, uint64_t cookie, uint32_t want_id, uint32_t *err,
                             uint32_t *ext, uint32_t cap, uint32_t *n)
{
    uint8_t h[20];
    if (recv_exact(fd, h, 20) < 0 || r32(h) != NBD_STRUCTURED_REPLY_MAGIC || r64(h + 8) != cookie ||
        !(r16(h + 4) & NBD_REPLY_FLAG_DONE))
        return -1;
    uint16_t type = r16(h + 6);
    uint32_t len = r32(h + 16);
    static uint8_t body[1 << 20];
    if (len > sizeof body || recv_exact(fd, body, len) < 0)
        return -1;
    *err = 0;
    *n = 0;
    if (type == NBD_REPLY_TYPE_ERROR) {
        *err = len >= 6 ? r32(body) : 0;
        return len >= 6 ? 0 : -1;
    }
    if (type != NBD_REPLY_TYPE_BLOCK_STATUS || len < 12 || (len - 4) % 8 || r32(body) != want_id)
        return -1;
    *n = (len - 4) / 8;
    for (uint32_t i = 0; i < *n && i < cap; i++) {
        ext[2 * i] = r32(body + 4 + 8 * i);
        ext[2 * i + 1] = r32(body + 8 + 8 * i);
    }
    return 0;
}

static void expect_block_status_error(int fd, uint32_t id, uint16_t flags, uint64_t offset, uint32_t length,
                                      const char *what)
{
    uint64_t c = next_cookie++;
    uint32_t err = 0, ext[2], n = 0;
    bool pass = send_request(fd, flags, NBD_CMD_BLOCK_STATUS, c, offset, length) == 0 &&
                recv_block_status(fd, c, id, &err, ext, 1, &n) == 0 && err == NBD_EINVAL;
    result(pass, "%s (BLOCK_STATUS flags 0x%x offset %llu length %u) -> EINVAL (got %u)", what, flags,
           (unsigned long long)offset, length, err);
}

static void case_block_status(void)
{
    /* Negotiation. */
    int fd = connect_raw();
    if (fd < 0 || greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) < 0) {
        result(false, "connecting");
        if (fd >= 0)
            xclose(fd);
        return;
    }
    const char *base_alloc[] = { "base:allocation" }, *base[] = { "base:" },
               *others[] = { "qemu:dirty-bitmap:x", "base:nothing", "x-y:z", "" };
    uint32_t id = 0, type;
    int nctx;
    type = meta_option(fd, NBD_OPT_SET_META_CONTEXT, base_alloc, 1, &id, &nctx);
    result(type == NBD_REP_ERR_INVALID && nctx == 0, "SET_META_CONTEXT before structured replies: NBD_REP_ERR_INVALID");
    uint8_t d[64];
    bool sr = send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) == 0 &&
              recv_option_reply(fd, NBD_OPT_STRUCTURED_REPLY, &type, d, sizeof d) == 0 && type == NBD_REP_ACK;
    result(sr, "structured replies negotiated");
    type = meta_option(fd, NBD_OPT_LIST_META_CONTEXT, NULL, 0, &id, &nctx);
    result(type == NBD_REP_ACK && nctx == 1, "LIST_META_CONTEXT with no queries lists base:allocation");
    type = meta_option(fd, NBD_OPT_LIST_META_CONTEXT, base, 1, &id, &nctx);
    result(type == NBD_REP_ACK && nctx == 1, "LIST_META_CONTEXT \"base:\" lists base:allocation");
    type = meta_option(fd, NBD_OPT_LIST_META_CONTEXT, others, 4, &id, &nctx);
    result(type == NBD_REP_ACK && nctx == 0, "LIST_META_CONTEXT of unknown contexts: none, no error");
    type = meta_option(fd, NBD_OPT_SET_META_CONTEXT, base, 1, &id, &nctx);
    result(type == NBD_REP_ACK && nctx == 0, "SET_META_CONTEXT \"base:\" selects nothing");
    /* Malformed: queries that overrun, a count of 2^32-1, a name that overruns, trailing bytes. */
    w32(w32(w32(d, 0), 3), 5);
    result(raw_option(fd, NBD_OPT_SET_META_CONTEXT, d, 12) == NBD_REP_ERR_INVALID, "a query overrunning the option: INVALID");
    w32(w32(d, 0), 0xffffffffu);
    result(raw_option(fd, NBD_OPT_LIST_META_CONTEXT, d, 8) == NBD_REP_ERR_INVALID, "2^32-1 queries in 8 bytes: INVALID");
    w32(w32(d, 0xfffffff0u), 0);
    result(raw_option(fd, NBD_OPT_SET_META_CONTEXT, d, 8) == NBD_REP_ERR_INVALID, "an export name overrunning: INVALID");
    memset(d, 0, sizeof d);
    result(raw_option(fd, NBD_OPT_SET_META_CONTEXT, d, 20) == NBD_REP_ERR_INVALID, "bytes after the queries: INVALID");
    const char *mixed[] = { "x-a:b", "base:allocation", "base:allocation" };
    type = meta_option(fd, NBD_OPT_SET_META_CONTEXT, mixed, 3, &id, &nctx);
    result(type == NBD_REP_ACK && nctx == 1 && id != 0, "SET_META_CONTEXT selects base:allocation once (id %u)", id);
    const char *why = "";
    if (opt_go(fd, &why) < 0) {
        result(false, "NBD_OPT_GO (%s)", why);
        xclose(fd);
        return;
    }

    /* Transmission. */
    uint64_t sz = export_size;
    static uint32_t ext[2 * 16384];
    uint32_t err = 0, n = 0;
    uint64_t c = next_cookie++;
    bool pass = send_request(fd, 0, NBD_CMD_BLOCK_STATUS, c, 4096, (uint32_t)(sz - 4096)) == 0 &&
                recv_block_status(fd, c, id, &err, ext, 16384, &n) == 0 && err == 0 && n >= 1;
    uint64_t total = 0;
    for (uint32_t i = 0; pass && i < n; i++) {
        pass = ext[2 * i] > 0 && (ext[2 * i + 1] & ~3u) == 0;
        total += ext[2 * i];
    }
    result(pass && total <= sz - 4096, "BLOCK_STATUS of the export: %u descriptors, nonzero, covering %llu bytes",
           n, (unsigned long long)total);
    c = next_cookie++;
    pass = send_request(fd, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, c, 0, 1000) == 0 &&
           recv_block_status(fd, c, id, &err, ext, 16384, &n) == 0 && err == 0 && n == 1 && ext[0] >= 1 &&
           ext[0] <= 1000;
    result(pass, "REQ_ONE: one descriptor within the length");
    expect_block_status_error(fd, id, 0, sz, 1, "block status at the end");
    expect_block_status_error(fd, id, 0, sz - 512, 1024, "block status across the end");
    expect_block_status_error(fd, id, 0, 1ull << 63, 512, "block status at 2^63");
    expect_block_status_error(fd, id, 0, UINT64_MAX - 511, 1024, "block status wrapping past 2^64");
    expect_block_status_error(fd, id, 0, 0, 0xffffffffu, "block status of 4 GiB - 1 (past the end)");
    expect_block_status_error(fd, id, 0, 0, 0, "block status of 0 bytes");
    expect_block_status_error(fd, id, NBD_CMD_FLAG_FUA, 0, 512, "block status with FUA");
    expect_block_status_error(fd, id, 0x8000, 0, 512, "block status with an unknown flag");
    /* Many at once, then gone with the replies unread. */
    for (int i = 0; i < 500; i++)
        send_request(fd, i % 2 ? NBD_CMD_FLAG_REQ_ONE : 0, NBD_CMD_BLOCK_STATUS, next_cookie++,
                     (uint64_t)i * 4096 % sz, 65536);
    xclose(fd);
    result(true, "500 pipelined BLOCK_STATUS, then hang-up");

    /* A second SET that selects nothing replaces the first. */
    fd = connect_raw();
    greet(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    recv_option_reply(fd, NBD_OPT_STRUCTURED_REPLY, &type, d, sizeof d);
    meta_option(fd, NBD_OPT_SET_META_CONTEXT, base_alloc, 1, &id, &nctx);
    meta_option(fd, NBD_OPT_SET_META_CONTEXT, others, 4, &id, &nctx);
    if (opt_go(fd, &why) < 0) {
        result(false, "NBD_OPT_GO (%s)", why);
        xclose(fd);
        return;
    }
    expect(fd, 0, NBD_CMD_BLOCK_STATUS, 0, 4096, NBD_EINVAL, "block status after a SET that selected nothing");
    still_in_step(fd, "block status refused");
    disconnect(fd);
}

/* ---- cases: TLS itself (HOSTILE_TLS_PSK) ------------------------------ */

/* After the ACK to NBD_OPT_STARTTLS, what a client sends instead of a good
 * handshake. Each must cost its connection only (run.sh then checks the
 * server serves). */
static void case_tls_garbage(void)
{
    const char *kinds[] = { "random bytes", "a TLS record header announcing 16 KiB, then zeroes",
                            "NBD options in the clear" };
    for (int k = 0; k < 3; k++) {
        int fd = connect_plain();
        if (fd < 0 || starttls_clear(fd) < 0) {
            result(false, "STARTTLS acknowledged");
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint8_t junk[4096];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (uint8_t)(i * 131 + 7);
        if (k == 1) {
            memset(junk, 0, sizeof junk);
            junk[0] = 0x16, junk[1] = 3, junk[2] = 1, junk[3] = 0x40, junk[4] = 0;
        } else if (k == 2) {
            uint8_t *p = junk;
            for (int i = 0; i < 100; i++)
                p = w32(w32(w64(p, NBD_IHAVEOPT), NBD_OPT_LIST), 0);
        }
        send_exact(fd, junk, k == 2 ? 1600 : sizeof junk);
        size_t got = 0;
        bool closed = closes_within(fd, (int)(env_long("HOSTILE_TIMEOUT", 2) + 3) * 1000, &got);
        result(closed, "%s after STARTTLS: the connection is closed (%zu bytes came back, a TLS alert at most)",
               kinds[k], got);
        result(got < 64, "... and nothing in the clear came back (%zu bytes)", got);
        close(fd);
    }
}

/* A real handshake begun (ClientHello sent), then the client hangs up,
 * or says nothing more. */
static void case_tls_abort(void)
{
    for (int k = 0; k < 20; k++) {
        int fd = connect_plain();
        gnutls_session_t s = NULL;
        if (fd < 0 || starttls_clear(fd) < 0 || !(s = tls_session(fd, tls_priority))) {
            result(false, "STARTTLS and a session");
            if (fd >= 0)
                close(fd);
            return;
        }
        gnutls_handshake(s);  /* the ClientHello leaves; no waiting */
        if (k % 2)
            sleep_ms(20);     /* the server's reply on its way, or there */
        gnutls_deinit(s);
        close(fd);
    }
    result(true, "20 TLS handshakes cut off after the ClientHello");
}

static void case_tls_stall(void)
{
    long t = env_long("HOSTILE_TIMEOUT", 2);
    for (int k = 0; k < 2; k++) {
        int fd = connect_plain();
        gnutls_session_t s = NULL;
        if (fd < 0 || starttls_clear(fd) < 0 || !(s = tls_session(fd, tls_priority))) {
            result(false, "STARTTLS and a session");
            if (fd >= 0)
                close(fd);
            return;
        }
        double t0 = now_s();
        if (k == 0)
            gnutls_handshake(s);  /* ClientHello, then silence */
        /* k == 1: silent from the ACK on */
        bool closed = closes_within(fd, (int)(t + 5) * 1000, NULL);
        double took = now_s() - t0;
        result(closed && took < t + 3, "TLS handshake %s: closed after %.1f s (--handshake-timeout %ld s)",
               k ? "never begun" : "stalled after the ClientHello", took, t);
        gnutls_deinit(s);
        close(fd);
    }
}

/* TLS 1.2's renegotiation, asked by the client after NBD_OPT_GO: the
 * server ends the connection. TLS 1.3's key update is no renegotiation:
 * the connection serves on. */
static void case_tls_renegotiate(void)
{
    const char *tls12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:+ECDHE-PSK:+DHE-PSK:+PSK";
    for (int k = 0; k < 2; k++) {
        int fd = connect_plain();
        gnutls_session_t s = NULL;
        if (fd < 0 || starttls_clear(fd) < 0 || !(s = tls_session(fd, k == 0 ? tls12 : tls_priority)) ||
            tls_handshake_for(s, fd, WAIT_MS) != 0) {
            result(false, "TLS %s handshake", k == 0 ? "1.2" : "default");
            if (s)
                gnutls_deinit(s);
            if (fd >= 0)
                close(fd);
            return;
        }
        struct xconn *x = calloc(1, sizeof *x);
        x->s = s;
        x->replay_pos = sizeof x->replay;  /* no greeting to replay */
        xc[fd] = x;
        const char *why = "";
        if (opt_go(fd, &why) < 0) {
            result(false, "NBD_OPT_GO over TLS (%s)", why);
            xclose(fd);
            continue;
        }
        if (k == 0) {
            /* -1: the handshake failed, the server having hung up; -2: no
             * answer, and then the connection must still end. */
            int rc = tls_handshake_for(s, fd, 3000);
            bool ended = rc == -1 || (rc == -2 && closes_within(fd, 3000, NULL));
            result(ended, "a TLS 1.2 renegotiation: the server ends the connection (%s)",
                   rc == 0 ? "it renegotiated" : rc == -1 ? gnutls_strerror(last_tls_error) : ended ? "it hung up late" : "it stays open");
        } else {
            int rc = gnutls_session_key_update(s, GNUTLS_KU_PEER);
            uint64_t c = 0;
            uint32_t err = 1;
            bool served = (rc == 0 || rc == GNUTLS_E_AGAIN) && send_request(fd, 0, NBD_CMD_READ, 9, 0, 512) == 0 &&
                          recv_reply(fd, &c, &err, NULL, 512) == 0 && err == 0 && c == 9;
            result(served, "a TLS 1.3 key update: the connection still serves");
        }
        xclose(fd);
    }
}

/* ---- main ------------------------------------------------------------- */

/* tls: 0 any mode, 1 TLS mode only, -1 plain only (they are about the
 * greeting and client flags, which come before the upgrade). */
static const struct { const char *name; void (*fn)(void); const char *what; int tls; } cases[] = {
    { "garbage-first", case_garbage_first, "garbage before the handshake", -1 },
    { "bad-client-flags", case_bad_client_flags, "unknown client flags", -1 },
    { "bad-option-magic", case_bad_option_magic, "bad option magic" , 0 },
    { "option-4g", case_option_4g, "an option length of 4 GiB" , 0 },
    { "go-inconsistent", case_go_inconsistent, "NBD_OPT_GO/INFO with inconsistent lengths" , 0 },
    { "unknown-options", case_unknown_options, "unknown options, options with stray data" , 0 },
    { "option-flood", case_option_flood, "thousands of options" , 0 },
    { "handshake-stall", case_handshake_stall, "negotiation that stalls" , 0 },
    { "handshake-no-read", case_handshake_no_read, "negotiation replies never read" , 0 },
    { "go-pipelined", case_go_pipelined, "negotiation and requests in one send" , 0 },
    { "read-past-end", case_read_past_end, "reads past the end, at 2^63, wrapping" , 0 },
    { "write-past-end", case_write_past_end, "writes past the end, at 2^63, wrapping" , 0 },
    { "huge-lengths", case_huge_lengths, "length 0xffffffff and other oversize requests" , 0 },
    { "write-hang-up", case_write_then_hang_up, "a write announcing 1 GiB, 64 KiB sent, hang-up" , 0 },
    { "unknown-commands", case_unknown_commands, "unknown commands and flags" , 0 },
    { "readonly", case_readonly, "writes to a read-only export (run with -r)" , 0 },
    { "bad-request-magic", case_bad_request_magic, "bad request magic" , 0 },
    { "half-request", case_half_request, "half a request, then hang-up" , 0 },
    { "pipeline-hang-up", case_pipeline_hang_up, "1000 pipelined requests, then hang-up" , 0 },
    { "slow-reader", case_slow_reader, "a client that never reads replies" , 0 },
    { "slow-readers", case_slow_readers, "8 clients that never read, at once" , 0 },
    { "churn", case_churn, "600 short connections of every kind" , 0 },
    { "connection-flood", case_connection_flood, "more connections than --max-connections" , 0 },
    { "block-status", case_block_status, "metadata contexts, BLOCK_STATUS right and wrong" , 0 },
    { "vanish-busy", case_vanish_busy, "hang-up while the device is busy (run against slowdisk.lua)" , 0 },
    { "tls-garbage", case_tls_garbage, "garbage after STARTTLS instead of a TLS handshake", 1 },
    { "tls-abort", case_tls_abort, "TLS handshakes cut off after the ClientHello", 1 },
    { "tls-stall", case_tls_stall, "a TLS handshake that stalls past --handshake-timeout", 1 },
    { "tls-renegotiate", case_tls_renegotiate, "TLS 1.2 renegotiation, TLS 1.3 key update", 1 },
};

int main(int argc, char **argv)
{
    size_t ncases = sizeof cases / sizeof *cases;
    if (argc == 2 && strcmp(argv[1], "-l") == 0) {
        for (size_t i = 0; i < ncases; i++)
            if (cases[i].tls == 0 || cases[i].tls == (tls_mode() ? 1 : -1))
                printf("%-20s %s\n", cases[i].name, cases[i].what);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: [HOSTILE_TLS_PSK=FILE] hostile SOCKET CASE | hostile -l\n");
        return 2;
    }
    sock_path = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < ncases; i++)
        if (strcmp(argv[2], cases[i].name) == 0) {
            case_name = cases[i].name;
            if (cases[i].tls == 1 && !tls_mode()) {
                fprintf(stderr, "hostile: %s needs HOSTILE_TLS_PSK (a server with --tls)\n", argv[2]);
                return 2;
            }
            cases[i].fn();
            return failures ? 1 : 0;
        }
    fprintf(stderr, "hostile: no case '%s' (hostile -l lists them)\n", argv[2]);
    return 2;
}

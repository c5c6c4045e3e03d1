/* libFuzzer target: the real handshake() (src/server/handshake.c) on one end of a
 * socketpair, the fuzz input written by a client thread to the other end.
 *
 * The input is exactly what a client sends after connecting: client flags,
 * then options. The client thread also reads everything the server says,
 * and the harness checks it is well-formed: the greeting, then option
 * replies with the right magic and echoed option numbers, and, only when
 * handshake() reports success, the export data that ends negotiation.
 * Anything else aborts, and libFuzzer keeps the input. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/server/handshake.h"
#include "../src/server/nbd.h"

static struct export_info ex;

struct peer {
    int fd;
    const uint8_t *in;
    size_t inlen;
    uint8_t *out;       /* everything the server sent */
    size_t outlen, outcap;
};

static void *peer_thread(void *p)
{
    struct peer *pr = p;
    size_t sent = 0;
    bool shut = false;
    fcntl(pr->fd, F_SETFL, O_NONBLOCK);
    for (;;) {
        if (!shut && sent == pr->inlen) {
            shutdown(pr->fd, SHUT_WR);
            shut = true;
        }
        struct pollfd pfd = { .fd = pr->fd, .events = POLLIN | (shut ? 0 : POLLOUT) };
        if (poll(&pfd, 1, 5000) <= 0) {
            fprintf(stderr, "fuzz_handshake: the server neither reads nor writes for 5 s\n");
            abort();
        }
        if (pfd.revents & POLLOUT) {
            ssize_t n = send(pr->fd, pr->in + sent, pr->inlen - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
            else if (n < 0 && errno != EAGAIN)
                sent = pr->inlen;  /* the server hung up: stop sending */
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (pr->outcap - pr->outlen < 65536) {
                pr->outcap = pr->outcap * 2 + 65536;
                pr->out = realloc(pr->out, pr->outcap);
            }
            ssize_t n = recv(pr->fd, pr->out + pr->outlen, pr->outcap - pr->outlen, 0);
            if (n > 0)
                pr->outlen += (size_t)n;
            else if (n == 0 || errno != EAGAIN)
                break;  /* the server closed its end */
        }
    }
    return NULL;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "fuzz_handshake: " __VA_ARGS__); \
                                              fprintf(stderr, "\n"); abort(); } } while (0)

/* The options the client sent, in order, to match replies against. */
static size_t client_options(const uint8_t *in, size_t len, uint32_t *opts, size_t max)
{
    size_t n = 0, pos = 4;
    while (n < max && pos + 16 <= len && rd64(in + pos) == NBD_IHAVEOPT) {
        opts[n++] = rd32(in + pos + 8);
        uint32_t olen = rd32(in + pos + 12);
        if (olen > len - pos - 16)
            break;
        pos += 16 + olen;
    }
    return n;
}

static void check_output(const struct peer *pr, int rc, const struct negotiated *neg)
{
    const uint8_t *o = pr->out;
    size_t len = pr->outlen, pos = 18;
    CHECK(len >= 18 && rd64(o) == NBD_MAGIC && rd64(o + 8) == NBD_IHAVEOPT, "bad greeting");
    static uint32_t opts[2048];
    size_t nopts = client_options(pr->in, pr->inlen, opts, 2048), k = 0;
    bool no_zeroes = pr->inlen >= 4 && (rd32(pr->in) & NBD_FLAG_C_NO_ZEROES);
    bool ended = false, structured = false, final = true;
    uint32_t meta = 0;  /* the context SET selected, as the replies say */
    while (pos < len) {
        if (len - pos >= 8 && rd64(o + pos) == NBD_REP_MAGIC) {
            CHECK(len - pos >= 20, "truncated option reply header");
            uint32_t opt = rd32(o + pos + 8), type = rd32(o + pos + 12), rlen = rd32(o + pos + 16);
            CHECK(rlen <= len - pos - 20, "option reply longer than what was sent");
            /* Replies to one option are grouped, ending with an ACK or an
             * error; each belongs to an option sent. */
            if (final) {
                while (k < nopts && opts[k] != opt)
                    k++;
                CHECK(k < nopts, "reply to option %u, which the client did not send (or out of order)", opt);
                k++;
                if (opt == NBD_OPT_SET_META_CONTEXT)
                    meta = 0;  /* a SET replaces the selection, even when it fails */
            }
            CHECK(opt == opts[k - 1], "reply to option %u in the middle of option %u's", opt, opts[k - 1]);
            final = type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR);
            if (type == NBD_REP_INFO) {
                CHECK(rlen >= 2, "empty NBD_REP_INFO");
                uint16_t info = rd16(o + pos + 20);
                if (info == NBD_INFO_EXPORT) {
                    CHECK(rlen == 12 && rd64(o + pos + 22) == ex.dev.size && rd16(o + pos + 30) == ex.tflags,
                          "bad NBD_INFO_EXPORT");
                } else if (info == NBD_INFO_BLOCK_SIZE) {
                    CHECK(rlen == 14, "bad NBD_INFO_BLOCK_SIZE");
                    uint32_t mn = rd32(o + pos + 22), pref = rd32(o + pos + 26), mx = rd32(o + pos + 30);
                    CHECK(mn >= 1 && mn <= pref && pref <= mx && mx == ex.max_request, "inconsistent block sizes");
                }
            } else if (type == NBD_REP_ACK) {
                CHECK(rlen == 0, "NBD_REP_ACK with data");
                if (opt == NBD_OPT_STRUCTURED_REPLY)
                    structured = true;
            } else if (type == NBD_REP_META_CONTEXT) {
                CHECK(opt == NBD_OPT_SET_META_CONTEXT || opt == NBD_OPT_LIST_META_CONTEXT,
                      "NBD_REP_META_CONTEXT to option %u", opt);
                CHECK(rlen == 4 + 15 && memcmp(o + pos + 24, "base:allocation", 15) == 0, "a context not offered");
                if (opt == NBD_OPT_SET_META_CONTEXT) {
                    CHECK(structured, "a context selected without structured replies");
                    CHECK(rd32(o + pos + 20) != 0 && meta == 0, "context id 0, or selected twice");
                    meta = rd32(o + pos + 20);
                } else {
                    CHECK(rd32(o + pos + 20) == 0, "LIST_META_CONTEXT with an id");
                }
            } else if (type & NBD_REP_FLAG_ERROR) {
                CHECK(type == NBD_REP_ERR_UNSUP || type == NBD_REP_ERR_INVALID || type == NBD_REP_ERR_TOO_BIG ||
                      type == NBD_REP_ERR_POLICY || type == NBD_REP_ERR_PLATFORM,
                      "unexpected error reply 0x%x", type);
            } else {
                CHECK(type == NBD_REP_SERVER && opt == NBD_OPT_LIST, "reply type %u to option %u", type, opt);
            }
            pos += 20 + rlen;
            continue;
        }
        /* NBD_OPT_EXPORT_NAME's answer: size, flags, maybe 124 zeroes; the end. */
        size_t want = no_zeroes ? 10 : 134;
        CHECK(len - pos == want, "%zu bytes that are neither an option reply nor an export (%zu)", len - pos, want);
        CHECK(rd64(o + pos) == ex.dev.size && rd16(o + pos + 8) == ex.tflags, "bad NBD_OPT_EXPORT_NAME reply");
        for (size_t i = 10; i < want; i++)
            CHECK(o[pos + i] == 0, "nonzero padding");
        ended = true;
        pos = len;
    }
    if (ended)
        CHECK(rc == 0, "export data sent, but handshake() failed");
    if (rc == 0) {
        CHECK(neg->structured == structured, "structured replies: server says %d, replies say %d",
              neg->structured, structured);
        CHECK(neg->meta_context == meta, "metadata context: server says %u, replies say %u",
              neg->meta_context, meta);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    cli_defaults(&config);
    config.verbose = -1;  /* quiet */
    ex.dev = (usbd_export){ .size = 64u << 20, .block_size = 4096, .can_write = 1, .can_trim = 1,
                            .can_zero = 1, .can_flush = 1, .can_multi_conn = 1 };
    ex.tflags = export_flags(&ex.dev, false);
    ex.max_request = 32u << 20;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    struct peer pr = { .fd = sv[1], .in = data, .inlen = size };
    pthread_t t;
    if (pthread_create(&t, NULL, peer_thread, &pr) != 0)
        abort();
    struct negotiated neg = { 0 };
    int rc = handshake(sv[0], &ex, 5, &neg);
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
    check_output(&pr, rc, &neg);
    free(pr.out);
    return 0;
}

/* soak: random I/O against an NBD export, checked against a model.
 *
 *   soak URI SECONDS CONNECTIONS [SEED]
 *
 * Each connection (a thread with its own libnbd handle) owns a disjoint
 * region of the export and a byte-for-byte model of it, seeded by reading
 * the region first (so a persistent device may hold anything). It keeps up
 * to QD requests in flight (libnbd's async API), never two that overlap, so
 * the order the server finishes them in cannot matter: writes (some with
 * FUA), reads, trims, write_zeroes (some with NO_HOLE or FAST_ZERO) and
 * flushes, at any byte alignment, of 1 byte to 1 MiB. Every read is
 * compared with the model when it completes, and the whole region is read
 * back at the end. Any difference is a failure.
 *
 * Prints one line per connection and a total:
 *   soak: N ops, W bytes written, V bytes verified, M mismatches, E errors
 * Exit status 0 only with no mismatches and no unexpected errors. */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QD 8
#define MAX_LEN (1u << 20)

static const char *uri;
static double seconds;
static uint64_t export_size;
static bool can_trim, can_zero, can_flush, can_fua, can_fast_zero;
/* SOAK_POOL=N: write data drawn from N 4 KiB blocks of content, each 4 KiB
 * block of the disk written with one of them (at its own offsets), so a
 * deduplicating device keeps finding, sharing and freeing the same blocks. */
static int pool_blocks;
static uint8_t *pool;

struct slot {
    int64_t cookie;      /* 0: free */
    int op;
    uint64_t off, len;   /* relative to the region */
    uint32_t flags;
    uint8_t *buf;
};

struct worker {
    int id;
    pthread_t thread;
    uint64_t base, size;     /* the region */
    uint8_t *model;
    uint64_t rng;
    struct nbd_handle *h;
    struct slot slots[QD];
    uint64_t ops, written, verified, mismatches, errors;
    char msg[256];
};

enum { OP_READ, OP_WRITE, OP_TRIM, OP_ZERO, OP_FLUSH };
static const char *op_names[] = { "read", "write", "trim", "zero", "flush" };

static uint64_t rnd(struct worker *w)
{
    /* xorshift64* */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 2685821657736338717ull;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(struct worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct worker *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (!w->msg[0])
        vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
}

static void compare(struct worker *w, uint64_t off, const uint8_t *got, uint64_t len)
{
    w->verified += len;
    if (memcmp(got, w->model + off, len) == 0)
        return;
    uint64_t i = 0;
    while (got[i] == w->model[off + i])
        i++;
    w->mismatches++;
    fail(w, "mismatch at export offset %" PRIu64 " (read of %" PRIu64 " at %" PRIu64 "): got 0x%02x, want 0x%02x",
         w->base + off + i, len, w->base + off, got[i], w->model[off + i]);
}

static bool overlaps(const struct worker *w, uint64_t off, uint64_t len)
{
    for (int i = 0; i < QD; i++) {
        const struct slot *s = &w->slots[i];
        if (s->cookie && s->op != OP_FLUSH && off < s->off + s->len && s->off < off + len)
            return true;
    }
    return false;
}

/* A random range in the region: small ones mostly, any alignment. */
static void pick_range(struct worker *w, uint64_t *off, uint64_t *len)
{
    uint64_t r = rnd(w);
    uint64_t max = (r & 3) == 0 ? MAX_LEN : (r & 3) == 1 ? 65536 : 8192;
    if (max > w->size)
        max = w->size;
    *len = 1 + rnd(w) % max;
    bool aligned = rnd(w) & 1;
    if (aligned && *len >= 512)
        *len &= ~511ull;
    *off = rnd(w) % (w->size - *len + 1);
    if (aligned)
        *off &= ~511ull;
}

static void finish(struct worker *w, struct slot *s, int err)
{
    w->ops++;
    if (err) {
        /* FAST_ZERO may be refused (ENOTSUP): then nothing changed. */
        if (!(s->op == OP_ZERO && (s->flags & LIBNBD_CMD_FLAG_FAST_ZERO) && err == ENOTSUP)) {
            w->errors++;
            fail(w, "%s of %" PRIu64 " at %" PRIu64 " failed: %s", op_names[s->op], s->len, w->base + s->off,
                 strerror(err));
        }
    } else {
        switch (s->op) {
        case OP_READ:
            compare(w, s->off, s->buf, s->len);
            break;
        case OP_WRITE:
            memcpy(w->model + s->off, s->buf, s->len);
            w->written += s->len;
            break;
        case OP_TRIM:  /* the device contract: trimmed ranges read as zeroes */
        case OP_ZERO:
            memset(w->model + s->off, 0, s->len);
            break;
        }
    }
    free(s->buf);
    s->buf = NULL;
    s->cookie = 0;
}

static bool submit(struct worker *w, struct slot *s)
{
    uint64_t r = rnd(w) % 100;
    int op = r < 40 ? OP_WRITE : r < 80 ? OP_READ : r < 88 ? OP_ZERO : r < 96 ? OP_TRIM : OP_FLUSH;
    if ((op == OP_TRIM && !can_trim) || (op == OP_ZERO && !can_zero) || (op == OP_FLUSH && !can_flush))
        op = OP_READ;
    uint64_t off = 0, len = 0;
    if (op != OP_FLUSH) {
        for (int tries = 0;; tries++) {
            pick_range(w, &off, &len);
            if (!overlaps(w, off, len))
                break;
            if (tries == 20)
                return false;
        }
    }
    s->op = op;
    s->off = off;
    s->len = len;
    s->flags = 0;
    s->buf = NULL;
    uint64_t at = w->base + off;
    switch (op) {
    case OP_READ:
        s->buf = malloc(len);
        s->cookie = nbd_aio_pread(w->h, s->buf, len, at, NBD_NULL_COMPLETION, 0);
        break;
    case OP_WRITE:
        s->buf = malloc(len);
        for (uint64_t i = 0; i < len; i += 8) {
            uint64_t v = rnd(w);
            memcpy(s->buf + i, &v, len - i < 8 ? len - i : 8);
        }
        if (pool_blocks) {
            for (uint64_t i = 0; i < len;) {
                uint64_t in = (at + i) % 4096, n = 4096 - in < len - i ? 4096 - in : len - i;
                memcpy(s->buf + i, pool + (rnd(w) % (uint64_t)pool_blocks) * 4096 + in, n);
                i += n;
            }
        }
        if (rnd(w) % 8 == 0)
            memset(s->buf, 0, len);  /* zero-filled writes too */
        if (can_fua && rnd(w) % 4 == 0)
            s->flags = LIBNBD_CMD_FLAG_FUA;
        s->cookie = nbd_aio_pwrite(w->h, s->buf, len, at, NBD_NULL_COMPLETION, s->flags);
        break;
    case OP_TRIM:
        s->cookie = nbd_aio_trim(w->h, len, at, NBD_NULL_COMPLETION, 0);
        break;
    case OP_ZERO:
        r = rnd(w) % 4;
        s->flags = r == 1 ? LIBNBD_CMD_FLAG_NO_HOLE : (r == 2 && can_fast_zero) ? LIBNBD_CMD_FLAG_FAST_ZERO : 0;
        s->cookie = nbd_aio_zero(w->h, len, at, NBD_NULL_COMPLETION, s->flags);
        break;
    case OP_FLUSH:
        s->cookie = nbd_aio_flush(w->h, NBD_NULL_COMPLETION, 0);
        break;
    }
    if (s->cookie < 0) {
        fail(w, "submitting %s: %s", op_names[op], nbd_get_error());
        w->errors++;
        free(s->buf);
        s->buf = NULL;
        s->cookie = 0;
        return false;
    }
    return true;
}

/* Reap what has completed; wait for something if nothing has. */
static void reap(struct worker *w, bool wait)
{
    for (;;) {
        bool any = false;
        for (int i = 0; i < QD; i++) {
            struct slot *s = &w->slots[i];
            if (!s->cookie)
                continue;
            int rc = nbd_aio_command_completed(w->h, (uint64_t)s->cookie);
            if (rc == 0)
                continue;
            finish(w, s, rc < 0 ? (nbd_get_errno() ? nbd_get_errno() : EIO) : 0);
            any = true;
        }
        if (any || !wait || nbd_aio_in_flight(w->h) == 0)
            return;
        if (nbd_poll(w->h, 5000) <= 0) {
            fail(w, "no reply within 5 s (%d in flight)", nbd_aio_in_flight(w->h));
            w->errors++;
            return;
        }
    }
}

/* Read the whole region: at the start to seed the model, at the end to check it. */
static void sweep(struct worker *w, bool check)
{
    uint8_t *buf = malloc(MAX_LEN);
    for (uint64_t off = 0; off < w->size; off += MAX_LEN) {
        uint64_t len = w->size - off < MAX_LEN ? w->size - off : MAX_LEN;
        if (nbd_pread(w->h, buf, len, w->base + off, 0) < 0) {
            fail(w, "sweep read at %" PRIu64 ": %s", w->base + off, nbd_get_error());
            w->errors++;
            break;
        }
        if (check)
            compare(w, off, buf, len);
        else
            memcpy(w->model + off, buf, len);
    }
    free(buf);
}

static void *run(void *p)
{
    struct worker *w = p;
    w->h = nbd_create();
    if (!w->h || nbd_connect_uri(w->h, uri) < 0) {
        fail(w, "connecting: %s", nbd_get_error());
        w->errors++;
        return NULL;
    }
    w->model = malloc(w->size);
    sweep(w, false);
    double end = now_s() + seconds;
    while (now_s() < end && !w->msg[0]) {
        for (int i = 0; i < QD; i++)
            if (!w->slots[i].cookie && rnd(w) % 4 != 0)
                submit(w, &w->slots[i]);
        reap(w, true);
    }
    while (nbd_aio_in_flight(w->h) > 0 && !w->errors)
        reap(w, true);
    reap(w, false);
    if (!w->errors)
        sweep(w, true);
    if (nbd_shutdown(w->h, 0) < 0)
        fail(w, "shutdown: %s", nbd_get_error());
    nbd_close(w->h);
    free(w->model);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: soak URI SECONDS CONNECTIONS [SEED]\n");
        return 2;
    }
    uri = argv[1];
    seconds = atof(argv[2]);
    int n = atoi(argv[3]);
    uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 0) : (uint64_t)time(NULL);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0) {
        fprintf(stderr, "soak: %s\n", nbd_get_error());
        return 1;
    }
    export_size = (uint64_t)nbd_get_size(h);
    if (nbd_is_read_only(h) == 1) {
        fprintf(stderr, "soak: the export is read-only\n");
        return 1;
    }
    can_trim = nbd_can_trim(h) == 1;
    can_zero = nbd_can_zero(h) == 1;
    can_flush = nbd_can_flush(h) == 1;
    can_fua = nbd_can_fua(h) == 1;
    can_fast_zero = nbd_can_fast_zero(h) == 1;
    nbd_shutdown(h, 0);
    nbd_close(h);
    printf("# soak: %s, %" PRIu64 " bytes, %d connections, %.0f s, seed %" PRIu64
           " (trim %d, zero %d, flush %d, fua %d, fast zero %d)\n",
           uri, export_size, n, seconds, seed, can_trim, can_zero, can_flush, can_fua, can_fast_zero);

    const char *pool_env = getenv("SOAK_POOL");
    pool_blocks = pool_env ? atoi(pool_env) : 0;
    if (pool_blocks > 0) {
        pool = malloc((size_t)pool_blocks * 4096);
        uint64_t x = seed;
        /* SOAK_POOL_MIXED=1: every other pool block compresses (runs of
         * 32 equal bytes), the rest are random: a compressing store keeps
         * packing, sharing and freeing fragments and raw blocks. */
        const char *mixed = getenv("SOAK_POOL_MIXED");
        bool compressible = mixed && atoi(mixed) > 0;
        for (size_t i = 0; i < (size_t)pool_blocks * 4096; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            pool[i] = compressible && (i / 4096) % 2 && i % 32 ? pool[i - 1] : (uint8_t)(x >> 56);
        }
        printf("# soak: write data from a pool of %d blocks%s\n", pool_blocks,
               compressible ? ", half of them compressible" : "");
    }
    struct worker *ws = calloc((size_t)n, sizeof *ws);
    uint64_t region = export_size / (uint64_t)n & ~4095ull;
    if (region > (256u << 20))
        region = 256u << 20;  /* the model lives in memory */
    for (int i = 0; i < n; i++) {
        ws[i].id = i;
        ws[i].base = (uint64_t)i * region;
        ws[i].size = region;
        ws[i].rng = seed * 0x9e3779b97f4a7c15ull + (uint64_t)i + 1;
        pthread_create(&ws[i].thread, NULL, run, &ws[i]);
    }
    uint64_t ops = 0, written = 0, verified = 0, mismatches = 0, errors = 0;
    for (int i = 0; i < n; i++) {
        struct worker *w = &ws[i];
        pthread_join(w->thread, NULL);
        printf("# connection %d [%" PRIu64 ", +%" PRIu64 "): %" PRIu64 " ops, %" PRIu64 " written, %" PRIu64
               " verified%s%s\n", i, w->base, w->size, w->ops, w->written, w->verified,
               w->msg[0] ? ": " : "", w->msg);
        ops += w->ops;
        written += w->written;
        verified += w->verified;
        mismatches += w->mismatches;
        errors += w->errors;
    }
    printf("soak: %" PRIu64 " ops, %" PRIu64 " bytes written, %" PRIu64 " bytes verified, %" PRIu64
           " mismatches, %" PRIu64 " errors\n", ops, written, verified, mismatches, errors);
    free(ws);
    return mismatches || errors ? 1 : 0;
}

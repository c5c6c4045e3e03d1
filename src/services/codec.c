/* codec.c: block compression for devices (liblz4, libzstd).
 *
 * A device compresses the blocks of a request in one call: each block on its
 * own (so any one of them can be read back alone), the results back to back
 * in one output, with each block's size and place. A block whose result
 * would not be smaller than the caller's limit is reported as raw (size 0)
 * and left where it is: the caller stores it from its own buffer. Reading
 * decompresses whichever fragments a request needs, each into its block.
 *
 * Both run on the calling thread or as jobs (usbd_job_codec_pack/unpack) on
 * a worker, where a large request pays for the hand-over. Each thread keeps
 * its own compression state (LZ4's table, zstd's contexts), made on first
 * use and kept: allocating and first touching them per call would cost more
 * than compressing a 4 KiB block (no zero page on this kernel). */
#include <errno.h>
#include <lz4.h>
#include <pthread.h>
#include <stdlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "codec.h"

/* ---- Per-thread state, freed when the thread ends ---------------------- */

struct codec_state {
    LZ4_stream_t *lz4;
    ZSTD_CCtx *zc;
    ZSTD_DCtx *zd;
};

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void state_free(void *p)
{
    struct codec_state *s = p;
    free(s->lz4);
    ZSTD_freeCCtx(s->zc);
    ZSTD_freeDCtx(s->zd);
    free(s);
}

static void state_key_make(void)
{
    pthread_key_create(&state_key, state_free);
}

static struct codec_state *state(void)
{
    pthread_once(&state_once, state_key_make);
    struct codec_state *s = pthread_getspecific(state_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(state_key, s)) {
            free(s);
            return NULL;
        }
    }
    return s;
}

/* ---- One block ----------------------------------------------------------- */

/* Compress n bytes into at most cap; the size, 0 when it does not fit, or
 * -errno. */
static int64_t compress_one(struct codec_state *s, int codec, int level,
                            const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
    if (codec == USBD_CODEC_LZ4) {
        if (!s->lz4 && !(s->lz4 = malloc(sizeof *s->lz4)))
            return -ENOMEM;
        /* Each block stands alone. The one-shot call clears the 16 KiB
         * table every time, yet runs about a third faster on 4 KiB blocks
         * than a fast reset and a streaming call: below 64 KiB it indexes
         * with 16-bit offsets, which the streaming call never does. (The
         * call doing both is not exported by liblz4.) 0: it did not fit. */
        return LZ4_compress_fast_extState(s->lz4, (const char *)src, (char *)dst, (int)n, (int)cap, 1);
    }
    if (!s->zc && !(s->zc = ZSTD_createCCtx()))
        return -ENOMEM;
    size_t r = ZSTD_compressCCtx(s->zc, dst, cap, src, n, level);
    if (ZSTD_isError(r)) {
        if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
            return 0;
        return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
    }
    return (int64_t)r;
}

/* Decompress a fragment into exactly n bytes; 0, or -EIO (damaged). */
static int decompress_one(struct codec_state *s, int codec,
                          const uint8_t *src, size_t len, uint8_t *dst, size_t n)
{
    if (codec == USBD_CODEC_LZ4) {
        int r = LZ4_decompress_safe((const char *)src, (char *)dst, (int)len, (int)n);
        return r == (int)n ? 0 : -EIO;
    }
    if (!s->zd && !(s->zd = ZSTD_createDCtx()))
        return -ENOMEM;
    size_t r = ZSTD_decompressDCtx(s->zd, dst, n, src, len);
    return !ZSTD_isError(r) && r == n ? 0 : -EIO;
}

/* ---- Whole requests ------------------------------------------------------ */

static int valid(int codec, uint32_t block)
{
    return (codec == USBD_CODEC_LZ4 || codec == USBD_CODEC_ZSTD) && block > 0 && block <= (1u << 30);
}

int64_t usbd_codec_pack_run(usbd_codec_pack *p)
{
    if (!valid(p->codec, p->block) || p->len % p->block ||
        (p->len && (!p->src || !p->at || !p->sizes || (p->dst_max && !p->dst))))
        return -EINVAL;
    struct codec_state *s = state();
    if (!s)
        return -ENOMEM;
    uint64_t n = p->len / p->block, used = 0;
    uint32_t limit = p->limit && p->limit < p->block ? p->limit : p->block - 1;
    for (uint64_t i = 0; i < n; i++) {
        p->at[i] = used;
        p->sizes[i] = 0;
        uint64_t room = p->dst_max - used;
        if (room == 0)
            continue;  /* only a caller's too-small dst_max gets here: raw */
        int64_t r = compress_one(s, p->codec, p->level, p->src + i * p->block, p->block,
                                 p->dst + used, room < limit ? room : limit);
        if (r < 0)
            return r;
        p->sizes[i] = (uint32_t)r;
        used += (uint64_t)r;
    }
    return (int64_t)used;
}

int usbd_codec_unpack_run(usbd_codec_unpack *u)
{
    if (!valid(u->codec, u->block) || (u->n && (!u->at || !u->sizes || !u->dst)))
        return -EINVAL;
    struct codec_state *s = state();
    if (!s)
        return -ENOMEM;
    for (uint32_t i = 0; i < u->n; i++) {
        if (u->sizes[i] == 0)
            continue;
        if (!u->src)
            return -EINVAL;
        int r = decompress_one(s, u->codec, u->src + u->at[i], u->sizes[i],
                               u->dst + (uint64_t)i * u->block, u->block);
        if (r < 0)
            return r;
    }
    return 0;
}

void usbd_job_codec_pack(usbd_job *job)
{
    int64_t r = usbd_codec_pack_run((usbd_codec_pack *)job->ptr);
    if (r < 0)
        job->err = (int32_t)-r;
    else
        job->result = r;
}

void usbd_job_codec_unpack(usbd_job *job)
{
    int r = usbd_codec_unpack_run((usbd_codec_unpack *)job->ptr);
    if (r < 0)
        job->err = -r;
}

/* A compressed store's read: its fragments from the file, then each into
 * its block, in one job (one hand-over to a worker, not two). */
int usbd_codec_read_run(int fd, usbd_codec_read *r)
{
    int64_t got = usbd_pread_ranges_run(fd, (uint8_t *)r->unpack.src, r->ranges, r->nranges);
    if (got < 0)
        return (int)got;
    return usbd_codec_unpack_run(&r->unpack);
}

void usbd_job_codec_read(usbd_job *job)
{
    int r = usbd_codec_read_run(job->fd, (usbd_codec_read *)job->ptr);
    if (r < 0)
        job->err = -r;
}

/* LZ4 has no levels here (its acceleration trades ratio away, the wrong
 * way for storage): 0 and 0. */
int usbd_codec_level_min(int codec)
{
    return codec == USBD_CODEC_ZSTD ? ZSTD_minCLevel() : 0;
}

int usbd_codec_level_max(int codec)
{
    return codec == USBD_CODEC_ZSTD ? ZSTD_maxCLevel() : 0;
}

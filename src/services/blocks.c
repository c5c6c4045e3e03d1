/* blocks.c: a request's scattered pieces moved between its buffer and a
 * file, in one job: fixed-size blocks (a block store's whole request) and
 * byte ranges (compressed fragments at any offset of any physical block).
 * Pieces that are neighbours in the file and in the buffer move in one
 * call; each call is usbd_job_pread/pwrite's (all of it, zeroes past the
 * end of the file).
 *
 * Blocks: fd, ptr/len the buffer (len a multiple of arg), arg the block
 * size, ctx an int64_t per block: its offset in the file, or -1 (a read
 * fills the block with zeroes, a write skips it).
 *
 * Ranges: fd, ptr the buffer, ctx an array of arg usbd_range (pos in the
 * file, at in the buffer, len). result: bytes moved. A write sorts them by
 * pos (in place) and writes neighbours in the file with one pwritev, even
 * when apart in the buffer; at USBD_RANGE_ZEROES writes len zeroes (up to
 * 64 KiB: a gap in a block). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "blocks.h"
#include "file.h"

static int move(int fd, uint8_t *ptr, uint64_t len, int64_t pos, bool reading)
{
    usbd_job io = { .fd = fd, .ptr = ptr, .len = len, .pos = (uint64_t)pos };
    if (reading)
        usbd_job_pread(&io);
    else
        usbd_job_pwrite(&io);
    return io.err;
}

static void blocks(usbd_job *job, bool reading)
{
    const int64_t *at = job->ctx;
    uint64_t bs = (uint64_t)job->arg;
    if (bs == 0 || bs > INT64_MAX || job->len % bs || (job->len && (!job->ptr || !at))) {
        job->err = EINVAL;
        return;
    }
    uint64_t n = job->len / bs;
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i + 1;
        if (at[i] < 0) {
            while (j < n && at[j] < 0)
                j++;
            if (reading)
                memset(job->ptr + i * bs, 0, (j - i) * bs);
        } else {
            /* (at[j - 1] + bs would overflow near INT64_MAX: no neighbour there) */
            while (j < n && at[j - 1] <= INT64_MAX - (int64_t)bs && at[j] == at[j - 1] + (int64_t)bs)
                j++;
            int err = move(job->fd, job->ptr + i * bs, (j - i) * bs, at[i], reading);
            if (err) {
                job->err = err;
                return;
            }
        }
        i = j;
    }
    job->result = (int64_t)job->len;
}

void usbd_job_pread_blocks(usbd_job *job) { blocks(job, true); }
void usbd_job_pwrite_blocks(usbd_job *job) { blocks(job, false); }

/* A range of the file: it starts at 0 or after, and ends by INT64_MAX. */
static bool in_file(const usbd_range *r)
{
    return r->pos >= 0 && r->len <= (uint64_t)(INT64_MAX - r->pos);
}

static int64_t ranges(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n, bool reading)
{
    if (n && (!ptr || !r))
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (!in_file(&r[i]))
            return -EINVAL;
    uint64_t moved = 0;
    for (uint64_t i = 0; i < n;) {
        uint64_t len = r[i].len, j = i + 1;
        /* (each range ends by INT64_MAX, so pos + len cannot overflow) */
        while (j < n && r[j].pos == r[i].pos + (int64_t)len && r[j].at == r[i].at + len)
            len += r[j++].len;
        int err = move(fd, ptr + r[i].at, len, r[i].pos, reading);
        if (err)
            return -err;
        moved += len;
        i = j;
    }
    return (int64_t)moved;
}

int64_t usbd_pread_ranges_run(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n)
{
    return ranges(fd, ptr, r, n, true);
}

/* A range's at that means "write zeroes" (usbd.h; a macro cannot be there,
 * where ffi.cdef reads it: Lua spells it usbd.file.ZEROES). */
#define USBD_RANGE_ZEROES UINT64_MAX

static const uint8_t zeroes[65536];
#define IOV_BATCH 256

static int by_pos(const void *a, const void *b)
{
    int64_t x = ((const usbd_range *)a)->pos, y = ((const usbd_range *)b)->pos;
    return x < y ? -1 : x > y;
}

/* All of iov at pos; 0 or an errno. */
static int pwritev_all(int fd, struct iovec *iov, int cnt, int64_t pos)
{
    while (cnt > 0) {
        ssize_t w = pwritev(fd, iov, cnt, pos);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        pos += w;
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static int64_t write_ranges(int fd, uint8_t *ptr, usbd_range *r, uint64_t n)
{
    if (n && !r)
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++)
        if (!in_file(&r[i]) || (r[i].at == USBD_RANGE_ZEROES ? r[i].len > sizeof zeroes : !ptr))
            return -EINVAL;
    for (uint64_t i = 1; i < n; i++)
        if (r[i].pos < r[i - 1].pos) {
            qsort(r, n, sizeof *r, by_pos);
            break;
        }
    struct iovec iov[IOV_BATCH];
    uint64_t moved = 0;
    for (uint64_t i = 0; i < n;) {
        int64_t pos = r[i].pos, end = pos;
        int k = 0;
        while (i < n && k < IOV_BATCH && r[i].pos == end) {
            uint8_t *base = r[i].at == USBD_RANGE_ZEROES ? (uint8_t *)zeroes : ptr + r[i].at;
            if (k > 0 && (uint8_t *)iov[k - 1].iov_base + iov[k - 1].iov_len == base && base != zeroes) {
                iov[k - 1].iov_len += r[i].len;
            } else {
                iov[k].iov_base = base;
                iov[k].iov_len = r[i].len;
                k++;
            }
            end += (int64_t)r[i].len;
            i++;
        }
        int err = pwritev_all(fd, iov, k, pos);
        if (err)
            return -err;
        moved += (uint64_t)(end - pos);
    }
    return (int64_t)moved;
}

static void ranges_job(usbd_job *job, bool reading)
{
    int64_t r = reading ? ranges(job->fd, job->ptr, job->ctx, (uint64_t)job->arg, true)
                        : write_ranges(job->fd, job->ptr, job->ctx, (uint64_t)job->arg);
    if (r < 0)
        job->err = (int32_t)-r;
    else
        job->result = r;
}

void usbd_job_pread_ranges(usbd_job *job) { ranges_job(job, true); }
void usbd_job_pwrite_ranges(usbd_job *job) { ranges_job(job, false); }

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
 * file, at in the buffer, len). result: bytes moved. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "usbd.h"

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
    uint64_t bs = (uint64_t)job->arg, n = job->len / bs;
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i + 1;
        if (at[i] < 0) {
            while (j < n && at[j] < 0)
                j++;
            if (reading)
                memset(job->ptr + i * bs, 0, (j - i) * bs);
        } else {
            while (j < n && at[j] == at[j - 1] + (int64_t)bs)
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

static int64_t ranges(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n, bool reading)
{
    uint64_t moved = 0;
    for (uint64_t i = 0; i < n;) {
        if (r[i].pos < 0)
            return -EINVAL;
        uint64_t len = r[i].len, j = i + 1;
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

static void ranges_job(usbd_job *job, bool reading)
{
    int64_t r = ranges(job->fd, job->ptr, job->ctx, (uint64_t)job->arg, reading);
    if (r < 0)
        job->err = (int32_t)-r;
    else
        job->result = r;
}

void usbd_job_pread_ranges(usbd_job *job) { ranges_job(job, true); }
void usbd_job_pwrite_ranges(usbd_job *job) { ranges_job(job, false); }

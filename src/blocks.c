/* blocks.c: fixed-size blocks moved between a buffer and scattered places
 * in a file, in one job (a block store's read or write of a whole request).
 *
 * job: fd, ptr/len the buffer (len a multiple of arg), arg the block size,
 * ctx an int64_t per block: its offset in the file, or -1 (a read fills the
 * block with zeroes, a write skips it). Runs of blocks that are neighbours
 * in the file too move in one pread/pwrite. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "usbd.h"

static int move(int fd, uint8_t *ptr, size_t len, int64_t pos, bool reading)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = reading ? pread(fd, ptr + done, len - done, pos + (off_t)done)
                            : pwrite(fd, ptr + done, len - done, pos + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0) {
            if (!reading)
                return EIO;
            memset(ptr + done, 0, len - done);  /* past the end of the file */
            break;
        }
        done += (size_t)n;
    }
    return 0;
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

/* ranges.c: byte ranges moved between a buffer and scattered places in a
 * file, in one job: the compressed fragments of a request, which lie at any
 * offset in any physical block of a store.
 *
 * job: fd, ptr the buffer, ctx an array of arg usbd_range (pos in the file,
 * at in the buffer, len). Ranges that are neighbours both in the file and in
 * the buffer move in one pread/pwrite. A read past the end of the file
 * fills zeroes. result: bytes moved. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "usbd.h"

static int move(int fd, uint8_t *ptr, uint64_t len, int64_t pos, bool reading)
{
    uint64_t done = 0;
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
            memset(ptr + done, 0, len - done);
            break;
        }
        done += (uint64_t)n;
    }
    return 0;
}

static void ranges(usbd_job *job, bool reading)
{
    const usbd_range *r = job->ctx;
    uint64_t n = (uint64_t)job->arg, moved = 0;
    for (uint64_t i = 0; i < n;) {
        if (r[i].pos < 0) {
            job->err = EINVAL;
            return;
        }
        uint64_t len = r[i].len, j = i + 1;
        while (j < n && r[j].pos == r[i].pos + (int64_t)len && r[j].at == r[i].at + len)
            len += r[j++].len;
        int err = move(job->fd, job->ptr + r[i].at, len, r[i].pos, reading);
        if (err) {
            job->err = err;
            return;
        }
        moved += len;
        i = j;
    }
    job->result = (int64_t)moved;
}

void usbd_job_pread_ranges(usbd_job *job) { ranges(job, true); }
void usbd_job_pwrite_ranges(usbd_job *job) { ranges(job, false); }

/* file.c: files for devices (usbd.file): open, close, sizes, and the run
 * functions of jobs on them (services/jobs.c runs them off the Lua thread).
 *
 * pread and pwrite move all of a buffer however many calls it takes (a read
 * past the end of the file gives zeroes); the fallocate jobs keep the size;
 * extents finds the data and holes of a range. The job machinery runs small
 * reads and writes, and any on a file opened with O_DIRECT, through io_uring
 * instead of a worker: it asks file_is_direct, since a buffered copy that
 * large would otherwise run on the loop's thread. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* O_DIRECT, fallocate */
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "file.h"
#include "services.h"

#define MAX_DIRECT_FD 65536

/* The fds usbd_file_open opened with O_DIRECT. Only the Lua thread opens,
 * closes and submits, so only it reads or writes this. */
static uint64_t direct_fds[MAX_DIRECT_FD / 64];

bool file_is_direct(int fd)
{
    return fd >= 0 && fd < MAX_DIRECT_FD && (direct_fds[fd / 64] >> (fd % 64) & 1);
}

int usbd_file_open(const char *path, int flags)
{
    int oflags = O_CLOEXEC | ((flags & USBD_FILE_READONLY) ? O_RDONLY : O_RDWR);
    if (flags & USBD_FILE_CREATE)
        oflags |= O_CREAT;
    if (flags & USBD_FILE_DIRECT)
        oflags |= O_DIRECT;
    int fd = open(path, oflags, 0644);
    if (fd < 0)
        return -errno;
    if ((flags & USBD_FILE_DIRECT) && fd < MAX_DIRECT_FD)
        direct_fds[fd / 64] |= (uint64_t)1 << (fd % 64);
    return fd;
}

int usbd_file_close(int fd)
{
    if (fd >= 0 && fd < MAX_DIRECT_FD)
        direct_fds[fd / 64] &= ~((uint64_t)1 << (fd % 64));
    return close(fd) == 0 ? 0 : -errno;
}

/* lseek rather than fstat: it also gives a block device's size. */
int64_t usbd_file_size(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    return end >= 0 ? (int64_t)end : -errno;
}

int64_t usbd_file_allocated(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_blocks * 512 : -errno;
}

const char *usbd_strerror(int err)
{
    return strerror(err);
}

/* Read all of len (from arg: what is done already); past the end of the
 * file, zeroes. */
void usbd_job_pread(usbd_job *job)
{
    uint64_t done = (uint64_t)job->arg;
    while (done < job->len) {
        ssize_t n = pread(job->fd, job->ptr + done, job->len - done, (off_t)(job->pos + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            job->err = errno;
            return;
        }
        if (n == 0)
            break;
        done += (uint64_t)n;
        /* A short read means the end of the file, except on the odd file
         * system that returns less for no reason: look before going on
         * (and under O_DIRECT a read from the ragged end would fail). */
        if (done < job->len && (int64_t)(job->pos + done) >= usbd_file_size(job->fd))
            break;
    }
    memset(job->ptr + done, 0, job->len - done);
    job->result = (int64_t)done;
}

/* Write all of len (from arg), however many calls that takes. */
void usbd_job_pwrite(usbd_job *job)
{
    uint64_t done = (uint64_t)job->arg;
    while (done < job->len) {
        ssize_t n = pwrite(job->fd, job->ptr + done, job->len - done, (off_t)(job->pos + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            job->err = n < 0 ? errno : EIO;
            return;
        }
        done += (uint64_t)n;
    }
    job->result = (int64_t)done;
}

void usbd_job_fdatasync(usbd_job *job)
{
    if (fdatasync(job->fd) < 0)
        job->err = errno;
}

static void falloc(usbd_job *job, int mode)
{
    int rc;
    do
        rc = fallocate(job->fd, mode, (off_t)job->pos, (off_t)job->len);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        job->err = errno;
}

void usbd_job_punch_hole(usbd_job *job)
{
    falloc(job, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
}

void usbd_job_zero_range(usbd_job *job)
{
    falloc(job, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
}

void usbd_job_allocate(usbd_job *job)
{
    falloc(job, FALLOC_FL_KEEP_SIZE);
}

void usbd_job_truncate(usbd_job *job)
{
    int rc;
    do
        rc = ftruncate(job->fd, (off_t)job->pos);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        job->err = errno;
}

void usbd_job_sleep(usbd_job *job)
{
    struct timespec ts = { .tv_sec = job->arg / 1000000, .tv_nsec = (job->arg % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The data and holes of [pos, pos+len), as runs, up to arg of them. A file
 * system that cannot tell (no SEEK_DATA) has only data; past the end of the
 * file is a hole, as pread reads zeroes there. lseek moves the shared file
 * offset, which nothing else here uses (pread and pwrite take their own). */
void usbd_job_extents(usbd_job *job)
{
    usbd_extent *out = (usbd_extent *)job->ptr;
    int64_t max = job->arg, n = 0;
    uint64_t pos = job->pos, end = job->pos + job->len;
    while (pos < end && n < max) {
        off_t data = lseek(job->fd, (off_t)pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            data = (off_t)end;            /* only a hole from here to the end */
        } else if (data < 0 && (errno == EINVAL || errno == ENOTSUP)) {
            data = (off_t)pos;            /* cannot tell: data */
        } else if (data < 0) {
            job->err = errno;
            return;
        }
        uint64_t d = (uint64_t)data < end ? (uint64_t)data : end;
        if (d > pos) {
            out[n++] = (usbd_extent){ (uint32_t)(d - pos), USBD_EXTENT_HOLE | USBD_EXTENT_ZERO };
            pos = d;
            continue;
        }
        off_t hole = lseek(job->fd, (off_t)pos, SEEK_HOLE);
        if (hole < 0 && (errno == ENXIO || errno == EINVAL || errno == ENOTSUP))
            hole = (off_t)end;
        else if (hole < 0) {
            job->err = errno;
            return;
        }
        uint64_t h = (uint64_t)hole < end ? (uint64_t)hole : end;
        if (h <= pos)
            h = end;  /* a file that changed under us: call the rest data */
        out[n++] = (usbd_extent){ (uint32_t)(h - pos), 0 };
        pos = h;
    }
    job->result = n;
}

/* Files for devices (file.c; Lua: usbd.file). */
#ifndef USBD_FILE_H
#define USBD_FILE_H

#include <stdint.h>

#include "types.h"

/* Run functions for files: fd, and ptr/len/pos as pread(2) and pwrite(2)
 * take them. pread fills all of len, with zeroes past the end of the file;
 * pwrite writes all of it; both start arg bytes in (0: at the start).
 * punch_hole, zero_range and allocate are fallocate(2) on [pos, pos+len)
 * keeping the size; truncate sets the size to pos. sleep waits arg
 * microseconds (for tests and examples). */
void usbd_job_pread(usbd_job *job);
void usbd_job_pwrite(usbd_job *job);
void usbd_job_fdatasync(usbd_job *job);
void usbd_job_punch_hole(usbd_job *job);
void usbd_job_zero_range(usbd_job *job);
void usbd_job_allocate(usbd_job *job);
void usbd_job_truncate(usbd_job *job);
void usbd_job_sleep(usbd_job *job);

enum {
    USBD_FILE_CREATE = 1,    /* create it if absent */
    USBD_FILE_DIRECT = 2,    /* O_DIRECT: bypass the page cache */
    USBD_FILE_READONLY = 4
};

/* Files, on the calling thread: each returns -errno on failure. */
int usbd_file_open(const char *path, int flags);  /* an fd */
int usbd_file_close(int fd);
int64_t usbd_file_size(int fd);       /* bytes; a block device's too */
int64_t usbd_file_allocated(int fd);  /* bytes of storage it takes */
const char *usbd_strerror(int err);

/* Fill ptr (an usbd_extent array of arg entries) with the data and holes
 * of [pos, pos+len) by SEEK_DATA/SEEK_HOLE; result is how many were filled
 * (they may cover less than len). Holes are HOLE|ZERO. */
void usbd_job_extents(usbd_job *job);

#endif

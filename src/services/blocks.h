/* A request's scattered pieces moved between its buffer and a file in one
 * job (blocks.c; Lua: usbd.file). */
#ifndef USBD_BLOCKS_H
#define USBD_BLOCKS_H

#include <stdint.h>

#include "types.h"

/* Blocks: fd, ptr/len a buffer of whole blocks, arg the block size, ctx an
 * int64_t per block: its offset in the file, or -1 (read: zeroes; write:
 * skipped). Neighbouring blocks move in one call. */
void usbd_job_pread_blocks(usbd_job *job);
void usbd_job_pwrite_blocks(usbd_job *job);

/* Byte ranges between a buffer and scattered places in a file: a store's
 * fragments. Jobs: fd, ptr the buffer, ctx an array of arg ranges;
 * neighbours in both move in one call; a read past the end gives zeroes. */
typedef struct usbd_range {
    int64_t pos;            /* in the file */
    uint64_t at;            /* in the buffer */
    uint64_t len;
} usbd_range;

void usbd_job_pread_ranges(usbd_job *job);
void usbd_job_pwrite_ranges(usbd_job *job);
/* usbd_job_pwrite_ranges: a range whose at is UINT64_MAX (all ones; Lua:
 * usbd.file.ZEROES) writes len zeroes (at most 64 KiB); the ranges are
 * sorted by pos, and neighbours in the file go in one pwritev. */

/* Scattered ranges read into ptr (as usbd_job_pread_ranges): bytes read, or
 * -errno. */
int64_t usbd_pread_ranges_run(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n);

#endif

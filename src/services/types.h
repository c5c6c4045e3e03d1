/* The shapes the C API's parts hand each other: a view of bytes, a job (a
 * blocking call for jobs.c to run), a run of data or a hole. */
#ifndef USBD_TYPES_H
#define USBD_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* A view of bytes: a request's payload, a slice of one, or memory a device
 * owns. Never a copy. Lua reads the length as buf.len, a plain number (a
 * 64-bit field would reach Lua as boxed cdata). */
typedef struct usbd_buf {
    uint8_t *ptr;
    size_t nbytes;
} usbd_buf;

/* A job names a C function (run) and its arguments, for the job machinery
 * to run off the Lua thread (jobs.h). run is called on a worker thread: it
 * must be C, never a Lua callback. The job's memory, and whatever it
 * points at, must stay valid until it is handed back. The services' run
 * functions (usbd_job_*) say what each field means to them. */
typedef struct usbd_job {
    void (*run)(struct usbd_job *job);
    void *ctx;          /* for run: a handle it works on (a RocksDB, ...) */
    uint8_t *ptr;       /* bytes to read into or write from */
    uint64_t len;
    uint64_t pos;
    int64_t arg;        /* one more argument, for run to interpret */
    int64_t result;     /* set by run: bytes moved, or what it returns */
    int32_t fd;
    int32_t err;        /* set by run: 0, or an errno */
    struct usbd_job *next;  /* the pool's: leave it alone */
    struct usbd_lane *lane; /* the lane it was submitted to: leave it alone */
} usbd_job;

/* A run of a device's data or holes, as a BLOCK_STATUS reply carries them
 * (server/serve.h) and a file's extents job finds them (file.h). */
typedef struct usbd_extent {
    uint32_t length;
    uint32_t flags;     /* USBD_EXTENT_HOLE | USBD_EXTENT_ZERO, or 0: data */
} usbd_extent;

enum {
    USBD_EXTENT_HOLE = 1,     /* NBD_STATE_HOLE: not allocated */
    USBD_EXTENT_ZERO = 2      /* NBD_STATE_ZERO: reads as zeroes */
};

#endif

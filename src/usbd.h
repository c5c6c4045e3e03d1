/* usbd.h: the C API that Lua sees through the FFI.
 *
 * lua/usbd/cdef.lua declares the same things for ffi.cdef; tests/unit/
 * check_cdef.sh proves the two agree. Keep this file free of macros and
 * includes the FFI cannot parse: plain typedefs, enums and prototypes. */
#ifndef USBD_H
#define USBD_H

#include <stddef.h>
#include <stdint.h>

/* A view of bytes: a request's payload, a slice of one, or memory a device
 * owns. Never a copy. Lua reads the length as buf.len, a plain number (a
 * 64-bit field would reach Lua as boxed cdata). */
typedef struct usbd_buf {
    uint8_t *ptr;
    size_t nbytes;
} usbd_buf;

/* One NBD request on its way through the device. The core owns it: valid
 * from the event that hands it to Lua until usbd_request_done. */
typedef struct usbd_request {
    uint64_t offset;
    uint32_t length;
    uint16_t type;   /* NBD_CMD_* */
    uint16_t flags;  /* NBD_CMD_FLAG_* */
    usbd_buf buf;    /* READ: to fill; WRITE: the payload; else empty */
} usbd_request;

enum {
    USBD_EV_REQUEST = 1, /* req is a request for the device */
    USBD_EV_JOB = 2,     /* job finished off the Lua thread */
    USBD_EV_STOP = 3     /* SIGINT/SIGTERM, or the kernel disconnected */
};

typedef struct usbd_event {
    int32_t kind;
    int32_t _pad;
    usbd_request *req;
    void *job;
} usbd_event;

/* What the device offers, from which the core derives NBD flags. */
typedef struct usbd_export {
    uint64_t size;
    uint32_t block_size;
    uint8_t can_write;
    uint8_t can_trim;
    uint8_t can_zero;        /* has a write_zeroes of its own: fast zero */
    uint8_t can_flush;
    uint8_t can_multi_conn;
} usbd_export;

/* Serving. Start listening (or attach to the kernel) for ex; returns 0, or
 * -1 with a one-line message in err. */
int usbd_serve_start(const usbd_export *ex, char *err, size_t errlen);
/* Block until something happens; fill up to max events, return how many. */
int usbd_serve_next(usbd_event *events, int max);
/* Finish a request: err 0, or a host errno (mapped to NBD's on the wire). */
void usbd_request_done(usbd_request *req, int err);
/* Requests handed to Lua and not yet done. */
int usbd_requests_pending(void);

/* Memory. Zeroed, page-aligned; large regions are mapped lazily. */
uint8_t *usbd_mem_alloc(size_t len);
void usbd_mem_free(uint8_t *ptr, size_t len);
/* Zero [ptr, ptr+len), giving whole pages back to the system. */
void usbd_mem_discard(uint8_t *ptr, size_t len);
int usbd_mem_is_zero(const uint8_t *ptr, size_t len);

/* "1G", "64k", "4096" -> bytes; -1 if malformed or too large. */
int64_t usbd_parse_size(const char *s);

/* xxHash XXH3 128-bit of the bytes, into out[16] (big-endian, canonical). */
void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out);

/* Logging to stderr; level 0 always, 1 only with -v. */
void usbd_log(int level, const char *msg);
int usbd_verbosity(void);

const char *usbd_version(void);

#endif

/* Serving: what the server offers Lua, its other half (lua/usbd/server/main.lua
 * drives it): starting, the events, finishing requests, block status,
 * statistics and borrowed replies (start.c, loop.c, transmission.c,
 * stats.c, borrow.c). */
#ifndef USBD_SERVE_H
#define USBD_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "services/types.h"

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

/* ---- Block status (NBD_CMD_BLOCK_STATUS, base:allocation) ----
 *
 * A BLOCK_STATUS request reaches Lua with buf holding room for
 * buf.nbytes / sizeof(usbd_extent) extents (services/types.h: at least 1,
 * at most USBD_MAX_EXTENTS; 1 with NBD_CMD_FLAG_REQ_ONE). Lua writes the
 * runs from the request's offset on, in host byte order, and hands them
 * back with usbd_request_extents_done; the core turns them into the reply
 * in place. They must cover at least 1 byte and at most the request's
 * length, each run nonzero; otherwise the client gets EIO. An error is
 * usbd_request_done. */
enum {
    USBD_MAX_EXTENTS = 8192   /* per reply: a fragmented range gets a prefix */
};

void usbd_request_extents_done(usbd_request *req, uint32_t n);

/* ---- Statistics, the clock, failed requests (stats.c, reqlog.c) ---- */

/* An event: SIGUSR1 arrived; print the statistics (the server's, then the
 * device's stats()). */
enum { USBD_EV_STATS = 4 };

/* An event: SIGHUP arrived; ask the device its size again and, if it
 * changed, call usbd_serve_resize. */
enum { USBD_EV_RESIZE = 5 };

/* The device now holds size bytes (a multiple of its block size): requests
 * are checked against it, new clients are offered it, and a kernel device
 * served (/dev/nbdN) is resized. Clients connected before keep the size
 * they were given (NBD has no way to tell them). Returns 0, or -1 with a
 * one-line message in err (ublk on a kernel that cannot resize, the
 * kernel's refusal): the size stays as it was. */
int usbd_serve_resize(uint64_t size, char *err, size_t errlen);

/* The device's storage may have changed size by itself (an image resized
 * by another client): the loop hands Lua a USBD_EV_SIZE_CHANGED event, and
 * Lua asks the device its size again, as on SIGHUP. Safe from any thread
 * (a service's callback on a thread of its library). */
void usbd_serve_size_changed(void);
enum { USBD_EV_SIZE_CHANGED = 6 };

/* Kinds of request, in this order: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES,
 * BLOCK_STATUS, CACHE, other; the last entry sums them all. */
enum { USBD_STATS_KINDS = 9 };

typedef struct usbd_stats_kind {
    uint64_t requests;
    uint64_t bytes;      /* of the requests that succeeded */
    uint64_t errors;     /* requests answered with an error */
    double p50;          /* latency percentiles and maximum, in seconds */
    double p90;
    double p99;
    double max;
} usbd_stats_kind;

/* Fill out[USBD_STATS_KINDS]; returns the seconds since serving started. */
double usbd_stats_get(usbd_stats_kind *out);
/* "READ", ..., "all". */
const char *usbd_stats_kind_name(int kind);
/* The server's statistics to stderr; lua_heap: the Lua heap's bytes (its
 * collector's count), for the line on memory. */
void usbd_stats_print(double lua_heap);
/* Monotonic seconds. */
double usbd_now(void);
/* Finish a request that failed with a Lua error: why (its message and
 * traceback) is logged at every verbosity, then as usbd_request_done. */
void usbd_request_failed(usbd_request *req, int err, const char *why);

/* ---- Borrowed replies: the zero-copy read path (borrow.c,
 * transmission.c; Lua: buf:borrow, usbd.settle_borrowed) ---- */

/* While a READ is with the device, it may declare that [at, at+len) of the
 * reply is len bytes at src, memory it does not own (a file mapping), to
 * be sent from there: no copy into the request's buffer. src must stay
 * mapped and unchanged until the reply is sent or settled. Returns 1 if
 * borrowed; 0 if the request holds USBD_MAX_BORROWED segments already, and
 * the bytes were copied into its buffer instead; -1 if the range falls
 * outside the reply or the request is no READ. */
enum { USBD_MAX_BORROWED = 32 };
int usbd_request_borrow(usbd_request *req, uint64_t at, const uint8_t *src, uint64_t len);
/* Every reply still queued, partly sent or being filled that borrows: the
 * part not yet sent is copied into its own buffer, and it borrows no more.
 * Call before storage a reply may borrow from is written again. */
void usbd_settle_borrowed(void);

typedef struct usbd_borrow_stats {
    uint64_t borrowed_bytes;    /* declared borrowed */
    uint64_t copied_bytes;      /* copied instead: no segment left */
    uint64_t settled_bytes;     /* copied by settling */
    uint64_t settled_replies;
    uint64_t settles;           /* calls to usbd_settle_borrowed */
    uint64_t borrowing;         /* replies borrowing now */
} usbd_borrow_stats;
void usbd_borrow_get_stats(usbd_borrow_stats *out);

#endif

/* Internal: connections, requests and the event loop that joins them. */
#ifndef USBD_SERVER_H
#define USBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "borrow.h"
#include "handshake.h"
#include "request.h"
#include "serve.h"

struct conn;

/* A request from parse to reply. pub comes first so that the usbd_request
 * pointer Lua holds is also a pointer to this. */
struct request {
    usbd_request pub;
    uint64_t cookie;
    struct conn *conn;
    struct request *next;   /* in the ready queue or a reply queue */
    size_t buflen;          /* bytes of pub.buf.ptr allocated */
    size_t got;             /* WRITE payload bytes received */
    size_t sent;            /* reply bytes sent (header then data) */
    uint32_t error;         /* NBD error, 0 for success */
    uint32_t nextents;      /* BLOCK_STATUS: descriptors in buf to send */
    int32_t dev_errno;      /* the errno the device failed it with, or 0 */
    bool failure_logged;    /* a Lua error, logged with its traceback */
    uint64_t started_ns;    /* when its header arrived (for the latency) */
    uint8_t hdrlen;
    uint8_t hdr[32];        /* reply header, built when done */
    struct borrowing borrow;  /* READ: reply bytes lent by the device */
};

struct export_info;
extern struct export_info export;  /* start.c: what is served (its size may change: export_size) */

/* loop.c */
/* Set up the loop (its epoll set, the eventfd other threads wake it with)
 * and register with the job machinery where finished jobs go. 0, or -1 with
 * a one-line message in err. */
int loop_start(char *err, size_t errlen);
/* Accept clients on fd from now on; a Unix socket's file is removed at exit. */
void loop_listen(int fd, bool unix_socket);
struct kernel_attach;
/* Serve the kernel's connections of the attachment k of path (/dev/nbdN)
 * on fds[0..n-1]; the kernel is gone when all of them have closed. */
void loop_add_kernel(struct kernel_attach *k, const char *path, const int *fds, unsigned n);
void loop_add_conn(int fd, struct negotiated neg, bool kernel);
/* Serve the ublk device path, whose queues' ring is fd (ublk.c). */
void loop_add_ublk(int fd, const char *path);
/* ublk.c: every command of the device has ended; nothing more will come. */
void loop_ublk_gone(void);
void loop_request_ready(struct request *r);     /* hand to Lua */
void loop_request_finished(void);               /* Lua is done with one */
void loop_watch(struct conn *c, int fd, uint32_t events);
void loop_unwatch(int fd);
void loop_conn_gone(struct conn *c);            /* closed and freed */
void loop_shutdown(void);                       /* after the device closed */
/* Any thread (process.c's signal thread): ask the loop for something. */
enum { LOOP_POST_STOP = 1, LOOP_POST_STATS = 2, LOOP_POST_RUN_ENDED = 4, LOOP_POST_RESIZE = 8,
       LOOP_POST_SIZE_CHANGED = 16 };
void loop_post(int what);
/* The Lua thread: the device holds size bytes now; tell the kernel's
 * device, if one is served (nbd: kernel_resize). 0, or -1 with err. */
int loop_resize_kernel(uint64_t size, char *err, size_t errlen);
/* Any thread, the Lua thread being stuck: remove the Unix socket, and end
 * the kernel's connection so that its requests fail instead of hanging. */
void loop_abort(void);

/* transmission.c */
struct conn *conn_new(int fd, struct negotiated neg, bool kernel);
void conn_on_event(struct conn *c, uint32_t events);
void conn_flush(struct conn *c);                /* send queued replies */
void conn_flush_dirty(void);                    /* every conn with replies queued */
void conn_reap(void);                           /* free the conns that are finished */
void conn_stop_reading(struct conn *c);         /* server shutting down */
bool conn_is_kernel(const struct conn *c);
void conn_close_all(void);

#endif

/* Serving a device through the kernel's ublk driver (/dev/ublkbN).
 *
 * The driver hands requests to user space through io_uring commands on
 * /dev/ublkcN: each tag of each queue has a FETCH_REQ in flight, whose
 * completion is a request (its descriptor in a table mapped from the
 * driver); the answer goes back with COMMIT_AND_FETCH_REQ, which fetches
 * the tag's next request in the same command. Each tag has a buffer of its
 * own, given with every command: the driver copies a WRITE's data into it
 * before handing the request over, and a READ's data out of it once it is
 * committed. That buffer is the request's usbd_buf, so read_at and
 * write_at work on it directly.
 *
 * Everything here runs on the loop (Lua) thread, except the control
 * commands that wait for the block layer (START_DEV reads the partition
 * table, STOP_DEV writes back), which run on threads of their own while
 * the loop serves. */
#ifndef USBD_UBLK_H
#define USBD_UBLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct request;

/* Whether path names a ublk block device (/dev/ublkbN). */
bool ublk_path(const char *path);

/* Add /dev/ublkbN (path) for the export (start.c's `export`) with queues
 * hardware queues, start serving it from the loop, and start the device
 * (on a thread: the loop answers the partition scan). 0, or -1 with a
 * one-line message in err. */
int ublk_start(const char *path, unsigned queues, char *err, size_t errlen);

/* The loop: the ublk ring has completions (a tag for epoll). */
void ublk_on_event(void);
/* The loop, each turn: send the commits queued since the last. */
void ublk_flush(void);
/* Lua finished a ublk request. */
void ublk_request_done(struct request *r, int err);
/* Begin a clean stop (write-back, then STOP_DEV), without blocking. */
void ublk_stop(void);
/* After serving: close the queues and delete the device. */
void ublk_shutdown(void);
/* Any thread, the Lua thread being stuck: fail what is queued and stop
 * the device so that nothing waits on it. */
void ublk_abort(void);

#endif

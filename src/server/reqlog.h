/* The request log (-v, -vv) and the trace (--trace FILE): src/server/reqlog.c. */
#ifndef USBD_REQLOG_H
#define USBD_REQLOG_H

#include <stddef.h>
#include <stdint.h>

struct request;

/* Serving starts: open the trace file (if any). 0, or -1 with err. */
int reqlog_open(const char *trace_path, char *err, size_t errlen);
/* A request is answered (its error is the one that goes on the wire):
 * count it, and log or trace it when asked to. */
void reqlog_reply(uint64_t conn_id, const struct request *r);
/* A request failed with a Lua error: log why, whatever the verbosity. */
void reqlog_failure(const struct request *r, int err, const char *why);
/* Write out what is buffered: once per turn of the loop, and at exit. */
void reqlog_flush(void);
/* The same, from another thread while the loop may be stuck: skips a
 * stream someone holds. */
void reqlog_flush_if_free(void);
void reqlog_close(void);

#endif

/* Statistics of the requests served: counts, bytes, errors and a latency
 * histogram per kind of request (src/server/stats.c). */
#ifndef USBD_STATS_H
#define USBD_STATS_H

#include <stdint.h>

/* Monotonic clock, nanoseconds. */
uint64_t stats_now_ns(void);
/* One request answered: its NBD type, length, wire error and latency. */
/* Serving starts: count from zero. */
void stats_start(void);
void stats_record(uint16_t type, uint32_t length, uint32_t error, uint64_t latency_ns);

#endif

/* Internal: what jobs.c and the event loop share (usbd.h has the API). */
#ifndef USBD_JOBS_H
#define USBD_JOBS_H

/* loop.c: the eventfd the loop watches for finished jobs (-1 before
 * serving). jobs.c registers it with its io_uring, so that a finished read
 * or write wakes the loop directly. */
int loop_wake_fd(void);

/* jobs.c: on the loop's thread, when that eventfd fired: hand each job the
 * io_uring has finished to deliver (which queues it as a USBD_EV_JOB). */
void jobs_reap(void (*deliver)(void *job));

#endif

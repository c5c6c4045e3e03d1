/* Jobs: blocking calls run off the Lua thread (jobs.c).
 *
 * usbd_job_submit hands a job (types.h) to the worker pool (reads and
 * writes to io_uring, when there is one); once run has returned, the loop
 * hands the job back as a USBD_EV_JOB event (sched.lua resumes whoever
 * waits for it). Submit from the thread that runs Lua only. */
#ifndef USBD_JOBS_H
#define USBD_JOBS_H

#include <stdint.h>

#include "types.h"

typedef struct usbd_jobs_stats {
    uint64_t submitted;
    uint64_t finished;
    int32_t threads;
    int32_t queued;
    int32_t running;
    int32_t peak;       /* most jobs running at once (since the last reset) */
    int32_t io_uring;   /* 1: reads and writes go through io_uring */
    int32_t _pad;
} usbd_jobs_stats;

/* Start (or grow to) n worker threads; n 0 means USBD_JOB_THREADS from the
 * environment, else 16. Returns how many run, or -errno. Optional: the first
 * submit starts the pool. */
int usbd_jobs_start(int n);
/* Queue job; 0, or -errno if no worker thread could be started. */
int usbd_job_submit(usbd_job *job);
/* Run job here and now, on the calling thread. */
void usbd_job_run(usbd_job *job);
/* ptr: an array of len jobs, run in order on one thread; the first that
 * fails stops the rest (err: its errno). result: how many succeeded. */
void usbd_job_sequence(usbd_job *job);
/* A lane: jobs submitted to it run one after another, in the order
 * submitted, each as soon as the one before has returned, on the worker
 * that ran that one (no trip through the queue, none back to the loop in
 * between). Once one fails, every later one fails with its errno without
 * running. For writes that must land in order, where the next is ready
 * before the last returns (a store's group commits). Free it only when no
 * job of it is in flight. */
typedef struct usbd_lane usbd_lane;
usbd_lane *usbd_lane_new(void);
void usbd_lane_free(usbd_lane *lane);
/* Queue job on lane; 0, or -errno if no worker thread could be started. */
int usbd_lane_submit(usbd_lane *lane, usbd_job *job);
/* Run job here and now, as the lane would (nothing of it in flight). */
void usbd_lane_run(usbd_lane *lane, usbd_job *job);
/* Let every queued job finish, then end the worker threads. */
void usbd_jobs_stop(void);
void usbd_jobs_get_stats(usbd_jobs_stats *out, int reset_peak);

#endif

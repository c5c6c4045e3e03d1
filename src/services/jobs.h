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
/* A step: C work over the bytes of one read or write (a cipher's), that the
 * read's or write's own job can run on its worker right after the read or
 * right before the write, so the request is handed over once, not twice.
 * run turns len bytes at src into dst (src itself, or another buffer of
 * len bytes) and returns 0 or -errno; it must be C, as a job's run. The
 * fields other than run are its own (the services say what they mean).
 * job_min is the maker's advice: below this many bytes the work costs
 * less than a hand-over, so run it where the caller is (lua/usbd/jobs.lua
 * follows it). */
typedef struct usbd_step {
    int (*run)(const struct usbd_step *step, const uint8_t *src, uint8_t *dst, uint64_t len);
    void *ctx;
    uint64_t pos;
    int64_t arg;
    uint64_t job_min;
} usbd_step;
/* Run step over len bytes from src into dst: 0 or -errno. */
int usbd_step_run(const usbd_step *step, const uint8_t *src, uint8_t *dst, uint64_t len);
/* As a job: ctx the step; len bytes from the address in arg (0: ptr) into
 * ptr. */
void usbd_job_step(usbd_job *job);
/* Let every queued job finish, then end the worker threads. */
void usbd_jobs_stop(void);
void usbd_jobs_get_stats(usbd_jobs_stats *out, int reset_peak);

#endif

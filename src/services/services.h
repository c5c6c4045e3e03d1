/* What C files get from the services beyond the API that Lua sees
 * (usbd.h): the parts no device may call. */
#ifndef USBD_SERVICES_H
#define USBD_SERVICES_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>

#include "types.h"

/* ---- log.c ---- */

/* level 0: always (errors); 1: -v; 2: -vv. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- jobs.c: how finished jobs reach whoever serves ----
 *
 * The server registers, when it starts, deliver(ctx, job), which hands a
 * finished job to Lua (as a USBD_EV_JOB event); any thread may call it (a
 * worker, librbd's, the server's own). wake_fd is an eventfd the server
 * watches, which the ring signals when reads and writes finish (-1: none,
 * and no ring); the server then calls jobs_reap. Before that, as in the
 * specs, Lua runs its jobs on the spot and a finished one goes nowhere. */
typedef void jobs_deliver_fn(void *ctx, usbd_job *job);
void jobs_attach(jobs_deliver_fn *deliver, void *ctx, int wake_fd);
/* On the server's thread, when wake_fd fired: deliver each read and write
 * the ring has finished (deliver: the server's own, needing no wakeup). */
void jobs_reap(jobs_deliver_fn *deliver, void *ctx);
/* A job run by other means than the pool (librbd's aio) has finished:
 * hand it to the server as a worker would. */
void jobs_finished(usbd_job *job);

/* ---- threads.c: signals stay with the Lua thread and the signal thread ----
 *
 * Block every signal in the calling thread (old: the mask before), and
 * put the mask back; start fn(arg) in a thread that blocks every signal.
 * Use them around any call that may start a library's threads. */
void signals_block_all(sigset_t *old);
void signals_restore(const sigset_t *old);
int thread_start(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);

/* ---- file.c ---- */

/* fd was opened by usbd_file_open with O_DIRECT (the ring takes its reads
 * and writes of any size: no copy runs on the loop's thread). */
bool file_is_direct(int fd);

#endif

/* jobs.c: blocking calls off the Lua thread.
 *
 * A job (usbd_job) names a C function and its arguments. usbd_job_submit
 * hands it to a fixed pool of worker threads; a worker calls job->run(job)
 * and gives the job back to whoever serves: the event loop registers, when
 * it starts, where finished jobs go (jobs_attach, services.h), turns each
 * into a USBD_EV_JOB event, and the request waiting for it goes on
 * (sched.lua). So the services know nothing of the server above them.
 * The run functions are the services' (file.c's for files, kv.c's for
 * RocksDB, ...): any blocking call only needs a C function of that shape.
 *
 * Reads and writes (usbd_job_pread/pwrite) take a shorter way when they
 * can: io_uring, submitted from the loop's thread and reaped by it (the
 * ring signals the eventfd the loop registered, and the loop calls
 * jobs_reap). No thread runs them, so no thread has to be woken: a 4k read
 * costs the loop one wakeup instead of three (worker, worker again when the
 * disk answers, loop).
 *
 * Why both. The pool is the one mechanism that runs ANY blocking call
 * (fdatasync, fallocate, RocksDB), so it has to exist. io_uring earns its
 * place on the hot path, measured on this 2-CPU VM (virtio disk, kernel
 * 6.18, other work running), 4k random reads of an uncached 1 GiB file, IOPS:
 *
 *                                              qd1      qd16
 *   from C, one thread waiting on an eventfd:
 *     pool of 16 threads                     9-11k    28-34k  (0.6 CPU at qd16)
 *     io_uring                               15-17k   51-52k  (0.2 CPU)
 *   end to end, bench/run.sh (BENCH_GROUPS=file, medians of 3 interleaved
 *   rounds), filedisk direct=true:
 *     io_uring (the default)                 9.7k     29.8k
 *     pool only (USBD_IO_URING=0)            6.2k     13.4k
 *     nbdkit file cache=none, for scale      8.4k     11.7k
 *   and from the page cache (no direct), qd16: pool 25-28k, io_uring 51-61k.
 *
 * A buffered write that io_uring completes at once copies on the loop's
 * thread; above RING_COPY_MAX bytes such copies go to a worker, which has a
 * CPU of its own. Anything io_uring cannot finish (a short read, EAGAIN)
 * continues in the pool. Without io_uring (an old kernel, a seccomp filter,
 * USBD_IO_URING=0, or no loop as in the specs) everything uses the pool.
 *
 * The pool starts on the first job (USBD_JOB_THREADS threads, default 16;
 * usbd_jobs_start may ask for more) and blocks every signal in its threads:
 * SIGINT, SIGTERM and the rest are for the thread the process keeps for
 * them, never a worker's. usbd_jobs_stop waits for the ring and the queue
 * to run dry and joins the threads; the loop calls it at shutdown before
 * any request buffer is freed, so no job outlives the memory it points at.
 *
 * Ordering. Jobs may finish in any order: a FLUSH's fdatasync can run next
 * to WRITEs still in flight. That is what NBD asks: a flush covers the
 * writes whose replies were sent before it, and a WRITE is only answered
 * once its write has completed (the data is in the page cache, or with
 * O_DIRECT at the device), so an fdatasync that starts after that makes it
 * durable. Writes still in flight when the flush arrives need not be covered. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <liburing.h>

#include "config.h"
#include "file.h"
#include "jobs.h"
#include "services.h"

#define DEFAULT_THREADS 16
#define MAX_THREADS 256
#define RING_ENTRIES 256            /* submission queue; completions twice that */
#define RING_MAX_INFLIGHT 512       /* never more than the completion queue holds */
#define RING_COPY_MAX (256u << 10)  /* buffered I/O larger than this: a worker copies */
#define RING_LEN_MAX (1u << 30)     /* io_uring takes 32-bit lengths */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;  /* queued, or stopping */
static usbd_job *head, *tail;
static pthread_t threads[MAX_THREADS];
static int nthreads, queued, running, peak;
static bool stopping;
static uint64_t submitted, finished;

/* Where finished jobs go (jobs_attach): written once by the server's
 * thread, read by every thread that finishes a job. The pointer is
 * published after the fields, so a worker that is running meanwhile sees
 * all of them or none. */
struct host {
    jobs_deliver_fn *deliver;
    void *ctx;
    int wake_fd;
};
static struct host attached;
static _Atomic(const struct host *) host;

/* The ring: only the loop's thread (the Lua thread) touches it. */
static struct io_uring ring;
static int ring_state;      /* 0 not tried, 1 in use, -1 unavailable */
static int ring_inflight;   /* submitted to it, not yet reaped */

/* ---- Lanes ------------------------------------------------------------ */

struct usbd_lane {
    pthread_mutex_t lock;
    usbd_job *head, *tail;  /* submitted, waiting for the one running */
    bool busy;              /* one of its jobs is queued or running */
    int err;                /* the errno of the first that failed */
};

usbd_lane *usbd_lane_new(void)
{
    usbd_lane *lane = calloc(1, sizeof *lane);
    if (lane)
        pthread_mutex_init(&lane->lock, NULL);
    return lane;
}

void usbd_lane_free(usbd_lane *lane)
{
    if (!lane)
        return;
    pthread_mutex_destroy(&lane->lock);
    free(lane);
}

/* Run a job of a lane, unless one before it failed. Only the thread
 * holding the lane's turn (busy) calls this, so err needs no lock. */
static void lane_step(usbd_lane *lane, usbd_job *job)
{
    if (lane->err)
        job->err = lane->err;
    else
        job->run(job);
    if (job->err && !lane->err)
        lane->err = job->err;
}

/* job of lane has run: the lane's next job, or NULL (the lane is idle). */
static usbd_job *lane_next(usbd_lane *lane)
{
    pthread_mutex_lock(&lane->lock);
    usbd_job *next = lane->head;
    if (next) {
        lane->head = next->next;
        if (!lane->head)
            lane->tail = NULL;
        next->next = NULL;
    } else {
        lane->busy = false;
    }
    pthread_mutex_unlock(&lane->lock);
    return next;
}

/* ---- The pool -------------------------------------------------------- */

static void *worker(void *unused)
{
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head && !stopping)
            pthread_cond_wait(&work, &lock);
        if (!head)
            break;  /* stopping, and the queue has run dry */
        usbd_job *job = head;
        head = job->next;
        if (!head)
            tail = NULL;
        queued--;
        if (++running > peak)
            peak = running;
        pthread_mutex_unlock(&lock);

        job->next = NULL;
        usbd_lane *lane = job->lane;
        /* The job, then (a lane's) each job queued behind it, at once. */
        for (bool first = true; job; first = false) {
            if (lane)
                lane_step(lane, job);
            else
                job->run(job);
            /* Read before the hand-over, after which the job is Lua's
             * (and may be submitted again). */
            usbd_job *then = lane ? lane_next(lane) : NULL;
            pthread_mutex_lock(&lock);
            if (first)
                running--;  /* before the hand-over: Lua may submit the next at once */
            finished++;
            pthread_mutex_unlock(&lock);
            jobs_finished(job);  /* from here on the job is Lua's again */
            job = then;
        }
        pthread_mutex_lock(&lock);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int default_threads(void)
{
    if (config.job_threads)
        return (int)config.job_threads;  /* --threads */
    const char *env = getenv("USBD_JOB_THREADS");
    int n = env ? atoi(env) : 0;
    return n > 0 ? n : DEFAULT_THREADS;
}

/* With lock held: grow the pool to n threads. */
static int grow(int n)
{
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    int rc = 0;
    while (nthreads < n) {
        if ((rc = thread_start(&threads[nthreads], NULL, worker, NULL)) != 0)
            break;
        nthreads++;
    }
    return nthreads > 0 ? nthreads : -rc;
}

int usbd_jobs_start(int n)
{
    pthread_mutex_lock(&lock);
    int rc = grow(n > 0 ? n : (nthreads ? nthreads : default_threads()));
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Queue job for a worker; count it unless the ring has (a continuation). */
static int enqueue(usbd_job *job, bool count)
{
    pthread_mutex_lock(&lock);
    if (nthreads == 0) {
        int rc = grow(default_threads());
        if (rc < 0) {
            pthread_mutex_unlock(&lock);
            return rc;
        }
    }
    job->next = NULL;
    if (tail)
        tail->next = job;
    else
        head = job;
    tail = job;
    queued++;
    if (count)
        submitted++;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* ---- The ring -------------------------------------------------------- */

static bool ring_ready(void)
{
    if (ring_state == 0) {
        ring_state = -1;
        const char *env = getenv("USBD_IO_URING");
        const struct host *h = atomic_load(&host);
        int wakefd = h ? h->wake_fd : -1;
        if ((env && strcmp(env, "0") == 0) || wakefd < 0)
            return false;  /* not wanted; or no loop to reap it (specs) */
        int rc = io_uring_queue_init(RING_ENTRIES, &ring, 0);
        if (rc == 0 && (rc = io_uring_register_eventfd(&ring, wakefd)) != 0)
            io_uring_queue_exit(&ring);
        if (rc != 0) {
            log_msg(1, "io_uring unavailable (%s): reads and writes go to worker threads", strerror(-rc));
            return false;
        }
        ring_state = 1;
        log_msg(1, "reads and writes go through io_uring");
    }
    return ring_state == 1;
}

/* The ring's jobs count in the pool's statistics too. */
static void ring_started(void)
{
    pthread_mutex_lock(&lock);
    submitted++;
    if (++running > peak)
        peak = running;
    pthread_mutex_unlock(&lock);
}

static void ring_ended(bool finished_here)
{
    pthread_mutex_lock(&lock);
    running--;
    if (finished_here)
        finished++;
    pthread_mutex_unlock(&lock);
}

/* Whether the ring takes job now. */
static bool ring_takes(const usbd_job *job)
{
    if (job->run != usbd_job_pread && job->run != usbd_job_pwrite)
        return false;
    uint64_t done = (uint64_t)job->arg, left = job->len - done;
    return left <= RING_LEN_MAX && (left <= RING_COPY_MAX || file_is_direct(job->fd)) &&
           ring_inflight < RING_MAX_INFLIGHT && ring_ready();
}

/* Submit a read or write to the ring; false to leave it to the pool. */
static bool ring_submit(usbd_job *job)
{
    if (!ring_takes(job))
        return false;
    bool rd = job->run == usbd_job_pread;
    uint64_t done = (uint64_t)job->arg, left = job->len - done;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe)
        return false;
    if (rd)
        io_uring_prep_read(sqe, job->fd, job->ptr + done, (unsigned)left, job->pos + done);
    else
        io_uring_prep_write(sqe, job->fd, job->ptr + done, (unsigned)left, job->pos + done);
    io_uring_sqe_set_data(sqe, job);
    ring_inflight++;
    ring_started();
    int rc;
    while ((rc = io_uring_submit(&ring)) == -EINTR)
        ;
    if (rc < 0) {
        /* The entry stays queued: have the loop come back and submit it. */
        uint64_t one = 1;
        ssize_t w = write(atomic_load(&host)->wake_fd, &one, sizeof one);
        (void)w;
    }
    return true;
}

void jobs_reap(jobs_deliver_fn *deliver, void *ctx)
{
    if (ring_state != 1)
        return;
    if (io_uring_sq_ready(&ring))
        io_uring_submit(&ring);  /* one that failed to go earlier */
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(&ring, &cqe) == 0) {
        usbd_job *job = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&ring, cqe);
        ring_inflight--;
        if (res > 0)
            job->arg += res;
        uint64_t done = (uint64_t)job->arg;
        if (res < 0 && res != -EAGAIN && res != -EINTR) {
            job->err = -res;
        } else if (res == 0 && job->run == usbd_job_pread) {
            memset(job->ptr + done, 0, job->len - done);  /* the end of the file */
            job->result = (int64_t)done;
        } else if (done < job->len) {
            /* Short, or try again: a worker does the rest (and counts it). */
            if (enqueue(job, false) == 0) {
                ring_ended(false);
                continue;
            }
            job->err = EAGAIN;
        } else {
            job->result = (int64_t)done;
        }
        ring_ended(true);
        deliver(ctx, job);
    }
}

static void ring_stop(void)
{
    if (ring_state != 1)
        return;
    const struct host *h = atomic_load(&host);  /* the ring runs only with one */
    while (ring_inflight > 0) {
        struct io_uring_cqe *cqe;
        int rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
            break;
        if (io_uring_peek_cqe(&ring, &cqe) == 0)
            jobs_reap(h->deliver, h->ctx);
    }
    io_uring_queue_exit(&ring);
    ring_state = 0;
}

/* ---- Jobs ------------------------------------------------------------ */

void jobs_attach(jobs_deliver_fn *deliver, void *ctx, int wake_fd)
{
    attached = (struct host){ deliver, ctx, wake_fd };
    atomic_store(&host, &attached);
}

void jobs_finished(usbd_job *job)
{
    const struct host *h = atomic_load(&host);
    if (h)
        h->deliver(h->ctx, job);
}

int usbd_job_submit(usbd_job *job)
{
    job->err = 0;
    job->next = NULL;
    job->lane = NULL;
    if (ring_submit(job))
        return 0;
    return enqueue(job, true);
}

void usbd_job_run(usbd_job *job)
{
    job->err = 0;
    job->run(job);
}

int usbd_lane_submit(usbd_lane *lane, usbd_job *job)
{
    job->err = 0;
    job->next = NULL;
    job->lane = lane;
    pthread_mutex_lock(&lane->lock);
    if (lane->busy) {   /* the worker running its turn runs this one after */
        if (lane->tail)
            lane->tail->next = job;
        else
            lane->head = job;
        lane->tail = job;
        pthread_mutex_unlock(&lane->lock);
        pthread_mutex_lock(&lock);
        submitted++;
        pthread_mutex_unlock(&lock);
        return 0;
    }
    lane->busy = true;
    pthread_mutex_unlock(&lane->lock);
    int rc = enqueue(job, true);
    if (rc < 0) {
        pthread_mutex_lock(&lane->lock);
        lane->busy = false;
        pthread_mutex_unlock(&lane->lock);
    }
    return rc;
}

void usbd_lane_run(usbd_lane *lane, usbd_job *job)
{
    job->err = 0;
    lane_step(lane, job);
}

/* One hand-over for jobs that must run one after another (a store's data,
 * then the metadata that names it): each waits for the one before anyway,
 * and every hand-over costs the loop a wakeup and the job a trip through
 * the queue. */
void usbd_job_sequence(usbd_job *job)
{
    usbd_job **jobs = (usbd_job **)job->ptr;
    job->result = 0;
    if (job->len && !jobs) {
        job->err = EINVAL;
        return;
    }
    for (uint64_t i = 0; i < job->len; i++) {
        if (!jobs[i]) {
            job->err = EINVAL;
            return;
        }
        usbd_job_run(jobs[i]);
        if (jobs[i]->err) {
            job->err = jobs[i]->err;
            return;
        }
        job->result = (int64_t)i + 1;
    }
}

int usbd_step_run(const usbd_step *step, const uint8_t *src, uint8_t *dst, uint64_t len)
{
    if (!step || !step->run || !src || !dst)
        return -EINVAL;
    return step->run(step, src, dst, len);
}

void usbd_job_step(usbd_job *job)
{
    const uint8_t *src = job->arg ? (const uint8_t *)(uintptr_t)job->arg : job->ptr;
    int rc = usbd_step_run(job->ctx, src, job->ptr, job->len);
    job->err = rc < 0 ? -rc : 0;
}

void usbd_jobs_stop(void)
{
    ring_stop();  /* first: what it has not finished continues in the pool */
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_broadcast(&work);
    int n = nthreads;
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    pthread_mutex_lock(&lock);
    nthreads = 0;
    stopping = false;
    pthread_mutex_unlock(&lock);
}

void usbd_jobs_get_stats(usbd_jobs_stats *out, int reset_peak)
{
    pthread_mutex_lock(&lock);
    *out = (usbd_jobs_stats){
        .submitted = submitted, .finished = finished,
        .threads = nthreads, .queued = queued, .running = running, .peak = peak,
        .io_uring = ring_state == 1,
    };
    if (reset_peak)
        peak = running;
    pthread_mutex_unlock(&lock);
}

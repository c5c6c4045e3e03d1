/* The event loop: listening sockets, finished handshakes, finished jobs,
 * what the signal thread posts (process.c) and connections, all in one
 * epoll set, turned into events for the Lua side (usbd_serve_next). Only
 * the thread running Lua calls in here, except loop_post, loop_abort, the
 * handshake threads and the threads that finish jobs (through what the loop
 * registers with the job machinery, jobs_attach), which go through a locked
 * queue, atomics and an eventfd. start.c starts it, and hands it the
 * listening sockets or the kernel's connection. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access.h"
#include "config.h"
#include "handshake.h"
#include "kernel.h"
#include "reqlog.h"
#include "sockets.h"
#include "server.h"
#include "services/jobs.h"
#include "services/services.h"
#include "tls.h"
#include "ublk.h"

static int epfd = -1;
static atomic_int wakefd = -1;
static int listen_fds[2] = { -1, -1 };
static atomic_bool unix_bound;  /* we made config.unix_path: remove it at exit */
static char tag_listen, tag_wake, tag_ublk;  /* epoll data for non-conns */
static bool ublk_on;             /* serving /dev/ublkbN */

static struct request *ready_head, *ready_tail;
static int ready_count, in_lua;
static bool stop_pending, stopping, stats_pending, resize_pending, size_changed_pending;
static atomic_int posted;        /* LOOP_POST_* from other threads */
static bool ever_connected;      /* --exit-last: a client has come */

/* kernel_lock: loop_abort, from another thread, must not use it while
 * loop_shutdown frees it. */
static pthread_mutex_t kernel_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kernel_attach *kernel;
static bool kernel_disconnecting;
static char kernel_path[64];
static unsigned kernel_conns;    /* the kernel's connections still open */

/* Handed over from other threads under lock. */
struct handed_conn { int fd; struct negotiated neg; };
static pthread_mutex_t handover_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handed_conn *handed;
static size_t nhanded, caphanded;
static void **jobs;
static size_t njobs, capjobs;
static void **jobs_out;          /* jobs taken from the queue, not yet delivered */
static size_t njobs_out, jobs_out_pos, capjobs_out;

static atomic_uint nconns;       /* handshaking or transmitting */

static void wake(void)
{
    uint64_t one = 1;
    int fd = atomic_load(&wakefd);
    if (fd >= 0) {
        ssize_t rc = write(fd, &one, sizeof one);
        (void)rc;
    }
}

void loop_post(int what)
{
    atomic_fetch_or(&posted, what);
    wake();  /* before serving starts, usbd_serve_start looks */
}

static void watch(void *tag, int fd, uint32_t events, int op)
{
    struct epoll_event ev = { .events = events, .data.ptr = tag };
    if (epoll_ctl(epfd, op, fd, &ev) < 0 && op == EPOLL_CTL_MOD && errno == ENOENT)
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

void loop_watch(struct conn *c, int fd, uint32_t events)
{
    watch(c, fd, events, EPOLL_CTL_MOD);
}

void loop_unwatch(int fd)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

void loop_add_conn(int fd, struct negotiated neg, bool kernel_side)
{
    if (!conn_new(fd, neg, kernel_side) && !kernel_side)
        atomic_fetch_sub(&nconns, 1);
}

void loop_conn_gone(struct conn *c)
{
    if (conn_is_kernel(c)) {
        /* One of several may end alone (the driver gave up on it, and
         * resends its requests on the others); the last one is the end. */
        if (kernel_conns > 0)
            kernel_conns--;
        log_msg(1, "the kernel closed a connection of %s (%u left)", kernel_path, kernel_conns);
        if (kernel_conns == 0)
            stop_pending = true;  /* nothing else will ever connect */
    } else {
        atomic_fetch_sub(&nconns, 1);
    }
}

void loop_request_ready(struct request *r)
{
    r->next = NULL;
    if (ready_tail)
        ready_tail->next = r;
    else
        ready_head = r;
    ready_tail = r;
    ready_count++;
}

void loop_request_finished(void)
{
    in_lua--;
}

int usbd_requests_pending(void)
{
    return in_lua + ready_count;
}

/* Queue a finished job for delivery; the caller wakes the loop if needed. */
static void queue_job(void *unused, usbd_job *job)
{
    pthread_mutex_lock(&handover_lock);
    if (njobs == capjobs) {
        capjobs = capjobs * 2 + 64;
        void **grown = realloc(jobs, capjobs * sizeof *jobs);
        if (!grown)
            abort();  /* a finished job must never be lost */
        jobs = grown;
    }
    jobs[njobs++] = job;
    pthread_mutex_unlock(&handover_lock);
}

/* Any thread: a job finished; hand it to Lua as USBD_EV_JOB. */
static void post_job(void *unused, usbd_job *job)
{
    queue_job(unused, job);
    wake();
}

struct handshake_arg { int fd; };

static void *handshake_thread(void *p)
{
    int fd = ((struct handshake_arg *)p)->fd;
    free(p);
    struct negotiated neg = { 0 };
    if (handshake(fd, &export, config.handshake_timeout, &neg) < 0) {
        close(fd);
        atomic_fetch_sub(&nconns, 1);
        wake();  /* --exit-last may be waiting for this */
        return NULL;
    }
    pthread_mutex_lock(&handover_lock);
    struct handed_conn *grown = nhanded == caphanded
        ? realloc(handed, (caphanded = caphanded * 2 + 8) * sizeof *handed) : handed;
    if (grown) {
        handed = grown;
        handed[nhanded++] = (struct handed_conn){ fd, neg };
    }
    pthread_mutex_unlock(&handover_lock);
    if (!grown) {
        tls_close(neg.tls);
        close(fd);
        atomic_fetch_sub(&nconns, 1);
    }
    wake();
    return NULL;
}

static void accept_clients(int lfd)
{
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t peerlen = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &peerlen, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_msg(0, "accept: %s", strerror(errno));
            return;
        }
        /* --allow and --deny: before a byte is sent, or a thread started. */
        if (!access_check_peer((struct sockaddr *)&peer, peerlen)) {
            close(fd);
            continue;
        }
        if (stopping || atomic_load(&nconns) >= config.max_connections) {
            log_msg(1, "refusing a client: %u connections already (--max-connections)", atomic_load(&nconns));
            close(fd);
            continue;
        }
        if (peer.ss_family == AF_UNIX)
            widen_unix_send_buffer(fd);
        atomic_fetch_add(&nconns, 1);
        ever_connected = true;
        struct handshake_arg *arg = malloc(sizeof *arg);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (!arg || (arg->fd = fd, thread_start(&t, &attr, handshake_thread, arg)) != 0) {
            free(arg);
            close(fd);
            atomic_fetch_sub(&nconns, 1);
        }
        pthread_attr_destroy(&attr);
    }
}

static void take_handovers(void)
{
    uint64_t n;
    ssize_t rc = read(atomic_load(&wakefd), &n, sizeof n);
    (void)rc;
    jobs_reap(queue_job, NULL);  /* reads and writes io_uring has finished */
    pthread_mutex_lock(&handover_lock);
    struct handed_conn local[64];
    size_t nlocal = 0;
    while (nhanded && nlocal < 64)
        local[nlocal++] = handed[--nhanded];
    bool more = nhanded > 0;
    /* Move finished jobs to the delivery queue. */
    if (njobs) {
        if (njobs_out + njobs > capjobs_out) {  /* no room at the end: compact, grow */
            size_t live = njobs_out - jobs_out_pos;
            if (live)  /* jobs_out is NULL until the first grow */
                memmove(jobs_out, jobs_out + jobs_out_pos, live * sizeof *jobs_out);
            njobs_out = live;
            jobs_out_pos = 0;
            if (live + njobs > capjobs_out) {
                capjobs_out = (live + njobs) * 2;
                void **grown = realloc(jobs_out, capjobs_out * sizeof *jobs_out);
                if (!grown)
                    abort();
                jobs_out = grown;
            }
        }
        memcpy(jobs_out + njobs_out, jobs, njobs * sizeof *jobs);
        njobs_out += njobs;
        njobs = 0;
    }
    pthread_mutex_unlock(&handover_lock);
    if (more)
        wake();
    for (size_t i = 0; i < nlocal; i++) {
        if (stopping) {
            tls_close(local[i].neg.tls);
            close(local[i].fd);
            atomic_fetch_sub(&nconns, 1);
            continue;
        }
        log_msg(1, "client connected%s%s%s", local[i].neg.tls ? " (TLS)" : "",
                local[i].neg.structured ? " (structured replies)" : "",
                local[i].neg.meta_context ? " (block status)" : "");
        loop_add_conn(local[i].fd, local[i].neg, false);
    }
}

static void request_stop(void)
{
    if (ublk_on && !kernel_disconnecting) {
        /* Write back, then STOP_DEV; the end of the commands is the stop. */
        kernel_disconnecting = true;
        ublk_stop();
    } else if (kernel && !kernel_disconnecting) {
        /* Let the kernel write back and hang up; the conn's end is the stop. */
        kernel_disconnecting = true;
        kernel_disconnect(kernel);
    } else {
        stop_pending = true;
    }
}

/* What other threads asked for (process.c). */
static void take_posted(void)
{
    int what = atomic_exchange(&posted, 0);
    if (what & LOOP_POST_STOP) {
        log_msg(1, "signal: stopping");
        request_stop();
    }
    if (what & LOOP_POST_RUN_ENDED) {
        log_msg(1, "the --run command has ended: stopping");
        request_stop();
    }
    if (what & LOOP_POST_STATS)
        stats_pending = true;
    if (what & LOOP_POST_RESIZE)
        resize_pending = true;
    if (what & LOOP_POST_SIZE_CHANGED)
        size_changed_pending = true;
}

static void begin_stopping(void)
{
    stopping = true;
    for (int i = 0; i < 2; i++)
        if (listen_fds[i] >= 0) {
            loop_unwatch(listen_fds[i]);
            close(listen_fds[i]);
            listen_fds[i] = -1;
        }
    /* Requests already read are still served; no new ones are read. */
    conn_close_all();
}

int usbd_serve_next(usbd_event *events, int max)
{
    int n = 0;
    for (;;) {
        conn_flush_dirty();
        if (ublk_on)
            ublk_flush();
        conn_reap();
        reqlog_flush();
        if (atomic_load(&posted))
            take_posted();
        if (config.exit_last && ever_connected && !stopping && !stop_pending &&
            atomic_load(&nconns) == 0) {
            log_msg(1, "the last client has gone: stopping (--exit-last)");
            stop_pending = true;
        }
        if (stats_pending && n < max) {
            stats_pending = false;
            events[n++] = (usbd_event){ .kind = USBD_EV_STATS };
        }
        if (resize_pending && !stopping && n < max) {
            resize_pending = false;
            events[n++] = (usbd_event){ .kind = USBD_EV_RESIZE };
        }
        if (size_changed_pending && !stopping && n < max) {
            size_changed_pending = false;
            events[n++] = (usbd_event){ .kind = USBD_EV_SIZE_CHANGED };
        }
        if (stop_pending && n < max) {
            stop_pending = false;
            begin_stopping();
            events[n++] = (usbd_event){ .kind = USBD_EV_STOP };
        }
        /* Finished jobs before new requests: a finished job lets waiting
         * requests end and a store's lane take its next group (a
         * dedupdisk's 4 KiB writes waited up to 64 new requests' decisions
         * for their group's end to be seen). */
        while (n < max && jobs_out_pos < njobs_out)
            events[n++] = (usbd_event){ .kind = USBD_EV_JOB, .job = jobs_out[jobs_out_pos++] };
        while (n < max && ready_head) {
            struct request *r = ready_head;
            ready_head = r->next;
            if (!ready_head)
                ready_tail = NULL;
            ready_count--;
            in_lua++;
            events[n++] = (usbd_event){ .kind = USBD_EV_REQUEST, .req = &r->pub };
        }
        if (n > 0)
            return n;

        struct epoll_event evs[64];
        int k = epoll_wait(epfd, evs, 64, -1);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            log_msg(0, "epoll_wait: %s", strerror(errno));
            abort();
        }
        for (int i = 0; i < k; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &tag_listen) {
                for (int j = 0; j < 2; j++)
                    if (listen_fds[j] >= 0)
                        accept_clients(listen_fds[j]);
            } else if (tag == &tag_wake) {
                take_handovers();
            } else if (tag == &tag_ublk) {
                ublk_on_event();
            } else {
                conn_on_event(tag, evs[i].events);
            }
        }
    }
}

int loop_start(char *err, size_t errlen)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epfd < 0 || wfd < 0) {
        snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
        return -1;
    }
    watch(&tag_wake, wfd, EPOLLIN, EPOLL_CTL_ADD);
    atomic_store(&wakefd, wfd);
    jobs_attach(post_job, NULL, wfd);
    return 0;
}

void loop_listen(int fd, bool unix_socket)
{
    listen_fds[unix_socket ? 0 : 1] = fd;
    if (unix_socket)
        atomic_store(&unix_bound, true);
    watch(&tag_listen, fd, EPOLLIN, EPOLL_CTL_ADD);
}

void loop_add_kernel(struct kernel_attach *k, const char *path, const int *fds, unsigned n)
{
    snprintf(kernel_path, sizeof kernel_path, "%s", path);
    pthread_mutex_lock(&kernel_lock);
    kernel = k;
    pthread_mutex_unlock(&kernel_lock);
    for (unsigned i = 0; i < n; i++)
        if (conn_new(fds[i], (struct negotiated){ 0 }, true))
            kernel_conns++;
    if (kernel_conns == 0)
        stop_pending = true;
}

int loop_resize_kernel(uint64_t size, char *err, size_t errlen)
{
    if (ublk_on) {
        snprintf(err, errlen, "%s: this kernel's ublk driver cannot change a device's size "
                 "(later kernels offer UBLK_F_UPDATE_SIZE): restart the server to serve the new size",
                 kernel_path);
        return -1;
    }
    pthread_mutex_lock(&kernel_lock);
    int rc = kernel ? kernel_resize(kernel, size, err, errlen) : 0;
    pthread_mutex_unlock(&kernel_lock);
    return rc;
}

void loop_add_ublk(int fd, const char *path)
{
    snprintf(kernel_path, sizeof kernel_path, "%s", path);
    ublk_on = true;
    watch(&tag_ublk, fd, EPOLLIN, EPOLL_CTL_ADD);
}

void loop_ublk_gone(void)
{
    log_msg(1, "the kernel ended %s", kernel_path);
    stop_pending = true;
}

void loop_shutdown(void)
{
    /* The device has closed: send what replies can still go, then let go.
     * First let every job finish: one may still point into a request's
     * buffer (only if Lua stopped early; server.lua waits for them). */
    usbd_jobs_stop();
    conn_flush_dirty();
    conn_close_all();
    conn_reap();
    pthread_mutex_lock(&kernel_lock);
    struct kernel_attach *k = kernel;
    kernel = NULL;
    pthread_mutex_unlock(&kernel_lock);
    if (k)
        kernel_detach(k);
    if (ublk_on) {
        ublk_flush();
        ublk_shutdown();
    }
    if (listen_fds[0] >= 0) {
        close(listen_fds[0]);
        listen_fds[0] = -1;
    }
    if (atomic_exchange(&unix_bound, false))
        unlink(config.unix_path);
    reqlog_close();
}

void loop_abort(void)
{
    if (atomic_exchange(&unix_bound, false))
        unlink(config.unix_path);
    /* The kernel's requests can never be answered now: end its connection,
     * so that they fail with EIO and /dev/nbdN is left free, rather than
     * leave whatever uses the device hanging. */
    pthread_mutex_lock(&kernel_lock);
    if (kernel)
        kernel_abort(kernel, 2000);
    pthread_mutex_unlock(&kernel_lock);
    if (ublk_on)
        ublk_abort();
}

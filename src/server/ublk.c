/* Serving through the kernel's ublk driver (/dev/ublkbN): see ublk.h.
 *
 * The commands are encoded as ioctl numbers ('u', UBLK_CMD_*), which every
 * ublk driver since 6.0 with legacy opcodes, and every one since 6.3
 * without, accepts. Control commands go to /dev/ublk-control on a small
 * ring of their own per call (128-byte entries, as the driver requires);
 * the queues' commands go to /dev/ublkcN on one ring that the loop polls
 * through epoll. One task issues every queue's commands (the driver wants
 * one per queue; here it is the same for all): the loop thread.
 *
 * --ublk-recovery S: the device is added with the driver's user recovery
 * (requests handed to a server that dies are sent again to the next), so
 * a dead server's device waits, quiesced, with its requests held. A
 * server restarted on it takes it back (START_USER_RECOVERY, the queues'
 * fetches, END_USER_RECOVERY instead of ADD_DEV, SET_PARAMS, START_DEV).
 * So that nothing waits forever, a watchdog process (kernel.h) deletes
 * the device when no server has taken it back S seconds after the death:
 * what waited then fails with EIO. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ublk.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/ublk_cmd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "kernel.h"
#include "nbd.h"
#include "reqlog.h"
#include "server.h"
#include "services/services.h"
#include "stats.h"

#ifndef UBLK_F_CMD_IOCTL_ENCODE
#define UBLK_F_CMD_IOCTL_ENCODE (1ULL << 6)
#endif
#define CTRL_OP(nr) ((nr) == DEL_DEV_ASYNC ? _IOR('u', nr, struct ublksrv_ctrl_cmd) \
                                       : _IOWR('u', nr, struct ublksrv_ctrl_cmd))
/* 6.9+: delete without waiting for the last user of the disk (a mounted
 * filesystem) to let go. */
#define DEL_DEV_ASYNC 0x14
#define IO_OP(nr) _IOWR('u', nr, struct ublksrv_io_cmd)

#define DEPTH 128                 /* tags per queue */
#define BUF_BYTES (512u << 10)    /* largest request: the tag's buffer */
#define MAX_QUEUES 16

struct ublk_tag {
    struct request req;   /* first: the usbd_request Lua holds points here */
    uint16_t q, tag;
    uint8_t *buf;
    bool dead;            /* the driver ended this tag's commands */
};

static struct {
    bool on;
    int id;
    char path[64], name[32];
    int cfd;
    unsigned nq;
    struct io_uring ring;
    bool ring_up;
    struct ublksrv_io_desc *iod[MAX_QUEUES];
    size_t iod_len;
    struct ublk_tag *tags;
    unsigned live;        /* commands in flight */
    unsigned with_lua;    /* requests Lua has */
    bool gone;            /* every tag dead: told the loop */
    bool recovering;      /* taking back a dead server's device */
    struct kernel_watchdog watch;   /* --ublk-recovery: deletes it if we die */
    pthread_t start_thread, stop_thread;
    bool start_started, stop_started;
    atomic_bool started;  /* START_DEV succeeded */
} U = { .cfd = -1, .watch = { .fd = -1 } };

bool ublk_path(const char *path)
{
    return strncmp(path, "/dev/ublkb", 10) == 0 && isdigit((unsigned char)path[10]);
}

/* One control command: 0 or a negative errno. */
static int ctrl(unsigned nr, struct ublksrv_ctrl_cmd *c)
{
    int fd = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct io_uring ring;
    struct io_uring_params p = { .flags = IORING_SETUP_SQE128 };
    int rc = io_uring_queue_init_params(4, &ring, &p);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    /* A 128-byte entry: the compiler only knows the 64-byte struct. */
    void *raw = sqe;
    __asm__("" : "+r"(raw));
    memset(raw, 0, 2 * sizeof *sqe);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = CTRL_OP(nr);
    memcpy(sqe->cmd, c, sizeof *c);
    struct io_uring_cqe *cqe;
    rc = io_uring_submit_and_wait(&ring, 1);
    if (rc >= 0) {
        do
            rc = io_uring_wait_cqe(&ring, &cqe);
        while (rc == -EINTR);
        if (rc == 0) {
            rc = cqe->res;
            io_uring_cqe_seen(&ring, cqe);
        }
    }
    io_uring_queue_exit(&ring);
    close(fd);
    return rc;
}

static int ctrl_simple(unsigned nr, int id, uint64_t data0)
{
    struct ublksrv_ctrl_cmd c = { .dev_id = (uint32_t)id, .queue_id = (uint16_t)-1 };
    c.data[0] = data0;
    return ctrl(nr, &c);
}

static int get_info(int id, struct ublksrv_ctrl_dev_info *info)
{
    memset(info, 0, sizeof *info);
    struct ublksrv_ctrl_cmd c = { .dev_id = (uint32_t)id, .queue_id = (uint16_t)-1,
                                  .addr = (uint64_t)(uintptr_t)info, .len = sizeof *info };
    return ctrl(UBLK_CMD_GET_DEV_INFO, &c);
}

static int add_dev(unsigned nq)
{
    struct ublksrv_ctrl_dev_info info = {
        .nr_hw_queues = (uint16_t)nq,
        .queue_depth = DEPTH,
        .max_io_buf_bytes = BUF_BYTES,
        .dev_id = (uint32_t)U.id,
        .ublksrv_pid = getpid(),
        .flags = UBLK_F_CMD_IOCTL_ENCODE |
                 (config.ublk_recovery ? UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE : 0),
    };
    struct ublksrv_ctrl_cmd c = { .dev_id = (uint32_t)U.id, .queue_id = (uint16_t)-1,
                                  .addr = (uint64_t)(uintptr_t)&info, .len = sizeof info };
    return ctrl(UBLK_CMD_ADD_DEV, &c);
}

static unsigned shift_of(uint32_t v)
{
    unsigned s = 0;
    while ((1u << (s + 1)) <= v)
        s++;
    return s;
}

static int set_params(void)
{
    const usbd_export *d = &export.dev;
    bool writable = !(export.tflags & NBD_FLAG_READ_ONLY);
    uint32_t bs = d->block_size ? d->block_size : 512;
    long page = sysconf(_SC_PAGESIZE);
    if (bs > (uint32_t)page)
        bs = (uint32_t)page;   /* preferred, not a minimum: the core serves any alignment */
    struct ublk_params p = { .len = sizeof p, .types = UBLK_PARAM_TYPE_BASIC };
    p.basic.attrs = (writable ? 0 : UBLK_ATTR_READ_ONLY) |
                    (d->can_flush ? UBLK_ATTR_VOLATILE_CACHE : 0) |
                    (d->can_flush && writable ? UBLK_ATTR_FUA : 0);
    p.basic.logical_bs_shift = 9;
    p.basic.physical_bs_shift = (uint8_t)shift_of(bs);
    p.basic.io_min_shift = (uint8_t)shift_of(bs);
    p.basic.io_opt_shift = (uint8_t)shift_of(bs);
    p.basic.max_sectors = BUF_BYTES >> 9;
    p.basic.dev_sectors = d->size >> 9;
    if (writable) {
        p.types |= UBLK_PARAM_TYPE_DISCARD;
        p.discard.discard_granularity = bs;
        p.discard.max_discard_sectors = d->can_trim ? UINT32_MAX >> 9 : 0;
        p.discard.max_write_zeroes_sectors = UINT32_MAX >> 9;
        p.discard.max_discard_segments = 1;
    }
    struct ublksrv_ctrl_cmd c = { .dev_id = (uint32_t)U.id, .queue_id = (uint16_t)-1,
                                  .addr = (uint64_t)(uintptr_t)&p, .len = sizeof p };
    return ctrl(UBLK_CMD_SET_PARAMS, &c);
}

/* Queue a FETCH (first) or COMMIT_AND_FETCH (result) for t. */
static void queue_cmd(struct ublk_tag *t, bool commit, int result)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&U.ring);
    if (!sqe) {
        io_uring_submit(&U.ring);
        sqe = io_uring_get_sqe(&U.ring);
        if (!sqe) {
            log_msg(0, "%s: the ublk ring is full", U.path);
            abort();
        }
    }
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = U.cfd;
    sqe->cmd_op = commit ? IO_OP(UBLK_IO_COMMIT_AND_FETCH_REQ) : IO_OP(UBLK_IO_FETCH_REQ);
    sqe->user_data = (uint64_t)(t - U.tags);
    struct ublksrv_io_cmd io = { .q_id = t->q, .tag = t->tag, .result = result,
                                 .addr = (uint64_t)(uintptr_t)t->buf };
    memcpy(sqe->cmd, &io, sizeof io);
    U.live++;
}

static void *start_main(void *arg)
{
    (void)arg;
    unsigned cmd = U.recovering ? UBLK_CMD_END_USER_RECOVERY : UBLK_CMD_START_DEV;
    int rc = ctrl_simple(cmd, U.id, (uint64_t)getpid());
    if (rc < 0) {
        fprintf(stderr, "usbd-lua: %s: the kernel would not start the device "
                "(%s: %s)\n", U.path, U.recovering ? "END_USER_RECOVERY" : "START_DEV", strerror(-rc));
        loop_post(LOOP_POST_STOP);
        return NULL;
    }
    atomic_store(&U.started, true);
    fprintf(stderr, "usbd-lua: serving %s as %s (ublk, %u queue%s%s)\n", config.script,
            U.path, U.nq, U.nq == 1 ? "" : "s", U.recovering ? ", taken back from a server that died" : "");
    return NULL;
}

static void *stop_main(void *arg)
{
    (void)arg;
    if (U.start_started)
        pthread_join(U.start_thread, NULL);
    U.start_started = false;
    if (atomic_load(&U.started)) {
        kernel_sync_mounts(U.name);
        int fd = open(U.path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    /* Ends the disk, then every command of ours with UBLK_IO_RES_ABORT. */
    int rc = ctrl_simple(UBLK_CMD_STOP_DEV, U.id, 0);
    if (rc < 0)
        fprintf(stderr, "usbd-lua: %s: STOP_DEV: %s\n", U.path, strerror(-rc));
    return NULL;
}

/* Delete the device; DEL_DEV waits until the disk's last user (a
 * filesystem still mounted) lets go: the asynchronous one where the kernel
 * has it. 0 or a negative errno. */
static int delete_dev(void)
{
    int rc = ctrl_simple(DEL_DEV_ASYNC, U.id, 0);
    if (rc == -EOPNOTSUPP || rc == -EINVAL || rc == -ENOTTY)
        rc = ctrl_simple(UBLK_CMD_DEL_DEV, U.id, 0);
    return rc;
}

/* A device of this id left by a server that died: delete it (one that
 * waits for a server to take it back, --ublk-recovery's, is stopped first:
 * what it holds fails with EIO). */
static bool clear_stale(void)
{
    struct ublksrv_ctrl_dev_info info;
    if (get_info(U.id, &info) < 0)
        return false;
    if (info.ublksrv_pid > 0 && kill(info.ublksrv_pid, 0) == 0)
        return false;   /* its server lives */
    log_msg(1, "%s: deleting the device left by process %d", U.path, info.ublksrv_pid);
    if (info.state != UBLK_S_DEV_DEAD)
        ctrl_simple(UBLK_CMD_STOP_DEV, U.id, 0);
    return delete_dev() == 0;
}

static int get_params(int id, struct ublk_params *p)
{
    memset(p, 0, sizeof *p);
    p->len = sizeof *p;
    struct ublksrv_ctrl_cmd c = { .dev_id = (uint32_t)id, .queue_id = (uint16_t)-1,
                                  .addr = (uint64_t)(uintptr_t)p, .len = sizeof *p };
    return ctrl(UBLK_CMD_GET_PARAMS, &c);
}

/* --ublk-recovery: a device of this id that a dead server left to be taken
 * back. 1: START_USER_RECOVERY done, U.nq its queues; 0: none to take
 * back; -1: one that cannot be (err says why). */
static int take_back(char *err, size_t errlen)
{
    struct ublksrv_ctrl_dev_info info;
    if (get_info(U.id, &info) < 0 || !(info.flags & UBLK_F_USER_RECOVERY))
        return 0;
    if (info.ublksrv_pid > 0 && kill(info.ublksrv_pid, 0) == 0)
        return 0;   /* its server lives: ADD_DEV says so */
    /* The driver quiesces it once the dead server's commands are cancelled,
     * just after the death. */
    for (int i = 0; i < 300 && info.state == UBLK_S_DEV_LIVE; i++) {
        usleep(10000);
        if (get_info(U.id, &info) < 0)
            return 0;
    }
    if (info.state != UBLK_S_DEV_QUIESCED) {
        log_msg(1, "%s: the device left by process %d is not waiting to be taken back (state %d)",
                U.path, info.ublksrv_pid, info.state);
        return 0;
    }
    struct ublk_params p;
    int rc = get_params(U.id, &p);
    if (rc < 0 || p.basic.dev_sectors != export.dev.size >> 9 || info.queue_depth != DEPTH ||
        info.max_io_buf_bytes != BUF_BYTES) {
        snprintf(err, errlen, "cannot take back %s: it holds %llu bytes, the device %llu: serve the same "
                 "size, or leave out --ublk-recovery to delete it and add it afresh", U.path,
                 rc < 0 ? 0ULL : (unsigned long long)p.basic.dev_sectors << 9,
                 (unsigned long long)export.dev.size);
        return -1;
    }
    if ((rc = ctrl_simple(UBLK_CMD_START_USER_RECOVERY, U.id, 0)) < 0) {
        snprintf(err, errlen, "cannot take back %s from process %d (START_USER_RECOVERY: %s)", U.path,
                 info.ublksrv_pid, strerror(-rc));
        return -1;
    }
    U.nq = info.nr_hw_queues;
    log_msg(1, "%s: taking back the device of process %d, which died", U.path, info.ublksrv_pid);
    return 1;
}

/* The watchdog's work once this process has died: wait up to
 * --ublk-recovery seconds for another server to take the device back,
 * else delete it (what waits fails with EIO). */
static void ublk_gone_for_good(void *arg)
{
    pid_t dead = *(pid_t *)arg;
    struct ublksrv_ctrl_dev_info info;
    for (unsigned ms = 0; ms < config.ublk_recovery * 1000u; ms += 100) {
        if (get_info(U.id, &info) < 0)
            return;   /* deleted meanwhile */
        if (info.state == UBLK_S_DEV_LIVE && info.ublksrv_pid != dead)
            return;   /* taken back */
        struct timespec t = { 0, 100 * 1000 * 1000 };
        nanosleep(&t, NULL);
    }
    ctrl_simple(UBLK_CMD_STOP_DEV, U.id, 0);
    delete_dev();
}

static void release(void)
{
    if (U.ring_up) {
        loop_unwatch(U.ring.ring_fd);
        io_uring_queue_exit(&U.ring);
        U.ring_up = false;
    }
    for (unsigned q = 0; q < MAX_QUEUES; q++)
        if (U.iod[q]) {
            munmap(U.iod[q], U.iod_len);
            U.iod[q] = NULL;
        }
    if (U.cfd >= 0) {
        close(U.cfd);
        U.cfd = -1;
    }
    if (U.tags) {
        for (unsigned i = 0; i < U.nq * DEPTH; i++)
            free(U.tags[i].buf);
        free(U.tags);
        U.tags = NULL;
    }
}

int ublk_start(const char *path, unsigned queues, char *err, size_t errlen)
{
    snprintf(U.path, sizeof U.path, "%s", path);
    snprintf(U.name, sizeof U.name, "%s", path + 5);
    U.id = atoi(path + 10);
    if (geteuid() != 0) {
        snprintf(err, errlen, "serving %s needs root: run as root, or serve with -U PATH / -p PORT instead", path);
        return -1;
    }
    if (access("/dev/ublk-control", F_OK) != 0) {
        snprintf(err, errlen, "no ublk driver in this kernel: run 'modprobe ublk_drv' (as root; Linux 6.0 "
                 "or later), or attach to /dev/nbdN instead");
        return -1;
    }
    long cpus = sysconf(_SC_NPROCESSORS_CONF);
    U.nq = queues < 1 ? 1 : queues;
    if (cpus > 0 && U.nq > (unsigned)cpus)
        U.nq = (unsigned)cpus;
    if (U.nq > MAX_QUEUES)
        U.nq = MAX_QUEUES;

    int rc = config.ublk_recovery ? take_back(err, errlen) : 0;
    if (rc < 0)
        return -1;
    U.recovering = rc == 1;
    if (!U.recovering) {
        rc = add_dev(U.nq);
        if (rc == -EEXIST && clear_stale())
            rc = add_dev(U.nq);
    }
    if (rc < 0) {
        struct ublksrv_ctrl_dev_info info;
        if (rc == -EEXIST && get_info(U.id, &info) == 0)
            snprintf(err, errlen, "%s is already in use by process %d: pick another /dev/ublkbN, "
                     "or stop that process first", path, info.ublksrv_pid);
        else
            snprintf(err, errlen, "%s: the kernel would not add the device (ADD_DEV: %s)", path, strerror(-rc));
        return -1;
    }
    U.on = true;
    /* The watchdog, forked before the character device and the ring are
     * opened and mapped: a copy of those in it would keep the driver from
     * seeing the server gone. */
    static pid_t self;
    self = getpid();
    if (config.ublk_recovery && kernel_watchdog_start(&U.watch, -1, ublk_gone_for_good, &self) < 0)
        log_msg(0, "%s: cannot start the process that deletes the device if the server dies and "
                "none takes it back (%s): a kill -9 leaves it waiting", path, strerror(errno));
    if (!U.recovering && (rc = set_params()) < 0) {
        snprintf(err, errlen, "%s: the kernel refused the device's parameters (SET_PARAMS: %s; "
                 "size %llu)", path, strerror(-rc), (unsigned long long)export.dev.size);
        goto fail;
    }
    char cpath[64];
    snprintf(cpath, sizeof cpath, "/dev/ublkc%d", U.id);
    for (int i = 0; i < 5000 && (U.cfd = open(cpath, O_RDWR | O_CLOEXEC)) < 0 && errno == ENOENT; i++)
        usleep(1000);
    if (U.cfd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", cpath, strerror(errno));
        goto fail;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t max_len = ((size_t)UBLK_MAX_QUEUE_DEPTH * sizeof(struct ublksrv_io_desc) + (size_t)page - 1) &
                     ~((size_t)page - 1);
    U.iod_len = (DEPTH * sizeof(struct ublksrv_io_desc) + (size_t)page - 1) & ~((size_t)page - 1);
    for (unsigned q = 0; q < U.nq; q++) {
        void *m = mmap(NULL, U.iod_len, PROT_READ, MAP_SHARED | MAP_POPULATE, U.cfd,
                       (off_t)(UBLKSRV_CMD_BUF_OFFSET + q * max_len));
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "%s: cannot map queue %u's descriptors: %s", cpath, q, strerror(errno));
            goto fail;
        }
        U.iod[q] = m;
    }
    U.tags = calloc((size_t)U.nq * DEPTH, sizeof *U.tags);
    if (!U.tags) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    for (unsigned q = 0; q < U.nq; q++)
        for (unsigned i = 0; i < DEPTH; i++) {
            struct ublk_tag *t = &U.tags[q * DEPTH + i];
            t->q = (uint16_t)q;
            t->tag = (uint16_t)i;
            if (posix_memalign((void **)&t->buf, (size_t)page, BUF_BYTES) != 0) {
                t->buf = NULL;
                snprintf(err, errlen, "%s: out of memory", path);
                goto fail;
            }
        }
    unsigned entries = 1;
    while (entries < U.nq * DEPTH && entries < 4096)
        entries <<= 1;
    if ((rc = io_uring_queue_init(entries, &U.ring, 0)) < 0) {
        snprintf(err, errlen, "%s: io_uring: %s", path, strerror(-rc));
        goto fail;
    }
    U.ring_up = true;
    for (unsigned i = 0; i < U.nq * DEPTH; i++)
        queue_cmd(&U.tags[i], false, -1);
    if ((rc = io_uring_submit(&U.ring)) < 0) {
        snprintf(err, errlen, "%s: FETCH_REQ: %s", path, strerror(-rc));
        goto fail;
    }
    loop_add_ublk(U.ring.ring_fd, path);
    /* START_DEV waits for the fetches, then adds the disk, which reads its
     * partition table: the loop must be serving by then. */
    if ((rc = thread_start(&U.start_thread, NULL, start_main, NULL)) != 0) {
        snprintf(err, errlen, "%s: cannot start a thread: %s", path, strerror(rc));
        goto fail;
    }
    U.start_started = true;
    return 0;
fail:
    kernel_watchdog_stop(&U.watch);
    release();
    ctrl_simple(UBLK_CMD_DEL_DEV, U.id, 0);
    U.on = false;
    return -1;
}

static void check_gone(void)
{
    if (!U.gone && U.live == 0 && U.with_lua == 0) {
        U.gone = true;
        loop_ublk_gone();
    }
}

void ublk_on_event(void)
{
    if (!U.ring_up)
        return;
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&U.ring, head, cqe) {
        n++;
        U.live--;
        struct ublk_tag *t = &U.tags[cqe->user_data];
        if (cqe->res != UBLK_IO_RES_OK) {
            /* UBLK_IO_RES_ABORT: the device is stopping; anything else an
             * error of ours. Either way, this tag is done. */
            if (cqe->res != UBLK_IO_RES_ABORT)
                log_msg(0, "%s: queue %u tag %u: %s", U.path, t->q, t->tag, strerror(-cqe->res));
            t->dead = true;
            continue;
        }
        const struct ublksrv_io_desc *d = &U.iod[t->q][t->tag];
        struct request *r = &t->req;
        uint32_t op = d->op_flags & 0xff, fl = d->op_flags >> 8;
        memset(r, 0, sizeof *r);
        r->pub.offset = d->start_sector << 9;
        r->pub.length = d->nr_sectors << 9;
        int bad = 0;
        switch (op) {
        case UBLK_IO_OP_READ: r->pub.type = NBD_CMD_READ; break;
        case UBLK_IO_OP_WRITE:
            r->pub.type = NBD_CMD_WRITE;
            if (fl & UBLK_IO_F_FUA)
                r->pub.flags |= NBD_CMD_FLAG_FUA;
            break;
        case UBLK_IO_OP_FLUSH: r->pub.type = NBD_CMD_FLUSH; r->pub.offset = 0; r->pub.length = 0; break;
        case UBLK_IO_OP_DISCARD: r->pub.type = NBD_CMD_TRIM; break;
        case UBLK_IO_OP_WRITE_ZEROES:
            r->pub.type = NBD_CMD_WRITE_ZEROES;
            if (fl & UBLK_IO_F_NOUNMAP)
                r->pub.flags |= NBD_CMD_FLAG_NO_HOLE;
            break;
        default: bad = -EOPNOTSUPP; break;
        }
        if (!bad && (r->pub.type == NBD_CMD_READ || r->pub.type == NBD_CMD_WRITE)) {
            if (r->pub.length > BUF_BYTES)
                bad = -EIO;
            r->pub.buf.ptr = t->buf;
            r->pub.buf.nbytes = r->pub.length;
        }
        uint64_t size = export_size(&export);
        if (!bad && r->pub.type != NBD_CMD_FLUSH &&
            (r->pub.offset > size || r->pub.length > size - r->pub.offset))
            bad = -ENOSPC;
        if (bad) {
            queue_cmd(t, true, bad);
            continue;
        }
        r->started_ns = stats_now_ns();
        U.with_lua++;
        loop_request_ready(r);
    }
    io_uring_cq_advance(&U.ring, n);
    check_gone();
}

void ublk_flush(void)
{
    if (U.ring_up && io_uring_sq_ready(&U.ring))
        io_uring_submit(&U.ring);
}

void ublk_request_done(struct request *r, int err)
{
    struct ublk_tag *t = (struct ublk_tag *)r;
    U.with_lua--;
    r->dev_errno = err < 0 ? -err : err;
    r->error = nbd_error_from_errno(r->dev_errno);
    reqlog_reply(0, r);
    int res = 0;
    if (r->dev_errno)
        res = -r->dev_errno;
    else if (r->pub.type == NBD_CMD_READ || r->pub.type == NBD_CMD_WRITE)
        res = (int)r->pub.length;
    if (t->dead || U.gone) {
        check_gone();
        return;
    }
    queue_cmd(t, true, res);
}

void ublk_stop(void)
{
    if (!U.on || U.stop_started)
        return;
    if (thread_start(&U.stop_thread, NULL, stop_main, NULL) == 0)
        U.stop_started = true;
    else
        ctrl_simple(UBLK_CMD_STOP_DEV, U.id, 0);
}

void ublk_shutdown(void)
{
    if (!U.on)
        return;
    if (U.stop_started)
        pthread_join(U.stop_thread, NULL);
    if (U.start_started)
        pthread_join(U.start_thread, NULL);
    kernel_watchdog_stop(&U.watch);
    release();
    int rc = delete_dev();
    if (rc < 0 && rc != -ENODEV)
        fprintf(stderr, "usbd-lua: %s: DEL_DEV: %s\n", U.path, strerror(-rc));
    U.on = false;
}

void ublk_abort(void)
{
    /* Nothing to do from here: the process exits next, the driver sees its
     * commands cancelled and fails what is queued with EIO. */
}

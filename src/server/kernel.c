/* Attaching a device to the Linux kernel's nbd driver (/dev/nbdN).
 *
 * Two ways in. The driver's generic-netlink interface (family "nbd",
 * NBD_CMD_CONNECT) is the first choice: it takes several sockets per
 * device, so the kernel spreads requests over several connections (one per
 * hardware queue), and the call returns once the device is up. The old
 * ioctls (NBD_SET_SOCK, NBD_DO_IT) are the fallback on a kernel without the
 * netlink family: one socket, and NBD_DO_IT blocks the calling thread for
 * the whole life of the device, hence the doit thread below. The netlink
 * client is a few raw sendmsg/recv calls on a NETLINK_GENERIC socket, no
 * library.
 *
 * What differs once attached:
 *   - ioctls: the device belongs to the NBD_DO_IT call. If the process
 *     dies, the call returns, the kernel fails what is queued with EIO and
 *     frees the device.
 *   - netlink: the device outlives the process that configured it (the
 *     driver keeps a reference until NBD_CMD_DISCONNECT or NBD_CLEAR_SOCK).
 *     A dead server would leave it bound, and with one connection and no
 *     timeout the requests in flight would wait forever. So a small
 *     watchdog process (a fork, see start_watchdog) holds the read end of a
 *     pipe whose write end only this process has: when the process is gone
 *     without standing the watchdog down, it sends NBD_CMD_DISCONNECT, which
 *     shuts the sockets, fails every queued request with EIO and lets the
 *     device go.
 *
 * Threads (all with every signal blocked, so SIGINT/SIGTERM reach the
 * event loop: a signal landing in NBD_DO_IT would make the kernel tear the
 * device down on the spot, dirty pages and all):
 *   - doit (ioctls only): ioctl(NBD_DO_IT) until the connection ends, then
 *                 NBD_CLEAR_QUE and NBD_CLEAR_SOCK;
 *   - disconnect: started by kernel_disconnect(): write back what is dirty
 *                 (filesystems mounted from the device, then the device's
 *                 own page cache), then NBD_DISCONNECT, which makes the
 *                 kernel send NBD_CMD_DISC on every connection; the server
 *                 answers that by closing its end. With ioctls NBD_DO_IT
 *                 then returns; with netlink kernel_detach() releases the
 *                 device (NBD_CMD_DISCONNECT) once every connection is
 *                 closed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* syncfs */
#endif
#include "kernel.h"
#include "sockets.h"
#include "services/services.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long a disconnect waits for the server to close its end after
 * NBD_CMD_DISC before shutting the socket down itself (the NBD protocol
 * says the server closes; this only keeps a broken server from hanging
 * the exit forever). */
#define DISC_GRACE_S 10
/* How long kernel_attach waits for NBD_DO_IT to bring the device up. */
#define START_WAIT_MS 10000

struct kernel_attach {
    char path[PATH_MAX];
    char name[32];           /* "nbd0": the name under /sys/block */
    int dev_fd;              /* /dev/nbdN, for the ioctls and fsync (ioctls only) */
    int kernel_sock[KERNEL_MAX_CONNECTIONS]; /* our copies of the kernel's ends */
    unsigned nsock;

    bool netlink;
    int family;              /* the nbd generic-netlink family's id */
    uint32_t index;          /* N of /dev/nbdN */
    long owner;              /* what /sys/block/nbdN/pid said once attached */
    uint32_t block_size;
    struct kernel_watchdog watch;   /* netlink: frees the device if we die */

    pthread_mutex_t lock;
    pthread_cond_t cond;     /* signalled when doit_done becomes true */
    pthread_t doit_thread;
    bool doit_done;
    int doit_errno;          /* errno of NBD_DO_IT, 0 if it returned 0 */
    pthread_t disc_thread;
    bool disc_started;
    bool detaching;
};

/* Messages for err: one line, no "usbd-lua: " prefix (the caller adds it),
 * saying what is wrong and what to do about it. */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Read a small sysfs file into buf (newline stripped). Returns 0, or -1
 * with errno set. */
static int read_sys(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return 0;
}

/* "nbd12" -> 12; anything else (partitions like "nbd0p1" included) -> -1. */
static long nbd_index(const char *name)
{
    if (strncmp(name, "nbd", 3) != 0 || !isdigit((unsigned char)name[3]))
        return -1;
    char *end;
    long n = strtol(name + 3, &end, 10);
    return *end == '\0' ? n : -1;
}

/* The nbd devices the driver has: how many, and the highest index. */
static int count_nbd(long *max_index)
{
    DIR *d = opendir("/sys/block");
    int count = 0;
    *max_index = -1;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long n = nbd_index(e->d_name);
        if (n < 0)
            continue;
        count++;
        if (n > *max_index)
            *max_index = n;
    }
    closedir(d);
    return count;
}

/* The pid file names the thread that sits in NBD_DO_IT; say which process
 * that is (its thread-group id, and its name when we can read it). */
static void describe_owner(long tid, char *out, size_t len)
{
    char path[64], buf[4096], comm[64] = "";
    long tgid = tid;
    snprintf(path, sizeof path, "/proc/%ld/status", tid);
    if (read_sys(path, buf, sizeof buf) == 0) {
        const char *t = strstr(buf, "\nTgid:");
        if (t)
            tgid = strtol(t + 6, NULL, 10);
    }
    snprintf(path, sizeof path, "/proc/%ld/comm", tgid);
    if (read_sys(path, comm, sizeof comm) == 0 && comm[0])
        snprintf(out, len, "%ld (%s)", tgid, comm);
    else
        snprintf(out, len, "%ld", tgid);
}

static const char no_driver_msg[] =
    "no nbd driver in this kernel: run 'modprobe nbd' (as root), "
    "or serve with -U PATH / -p PORT instead";

/* In use: a process sits in NBD_DO_IT (the pid file exists), or someone has
 * configured a size without starting yet. Fills pid (0 if none). */
static bool nbd_busy(const char *name, long *pid)
{
    char path[64], buf[64];
    *pid = 0;
    snprintf(path, sizeof path, "/sys/block/%s/pid", name);
    if (read_sys(path, buf, sizeof buf) == 0) {
        *pid = strtol(buf, NULL, 10);
        return true;
    }
    if (errno != ENOENT)
        return true;   /* exists but unreadable: assume taken */
    snprintf(path, sizeof path, "/sys/block/%s/size", name);
    if (read_sys(path, buf, sizeof buf) == 0 && strtoull(buf, NULL, 10) != 0)
        return true;
    return false;
}

int kernel_find_free(char *path, size_t pathlen, char *err, size_t errlen)
{
    long max_index;
    int count = count_nbd(&max_index);
    if (count == 0) {
        set_err(err, errlen, "%s", no_driver_msg);
        return -1;
    }
    for (long n = 0; n <= max_index; n++) {
        char name[32], dir[64];
        long pid;
        struct stat st;
        snprintf(name, sizeof name, "nbd%ld", n);
        snprintf(dir, sizeof dir, "/sys/block/%s", name);
        if (stat(dir, &st) != 0 || nbd_busy(name, &pid))
            continue;
        if ((size_t)snprintf(path, pathlen, "/dev/%s", name) >= pathlen) {
            set_err(err, errlen, "path buffer too small for /dev/%s", name);
            return -1;
        }
        return 0;
    }
    set_err(err, errlen,
            "all %d nbd devices are in use: disconnect one, or reload "
            "the driver with more (rmmod nbd; modprobe nbd nbds_max=%d)",
            count, count * 2);
    return -1;
}

/* Which /sys/block entry is the block device st? Fills name ("nbd0",
 * "sda", "nbd0p1", ...). Returns 0, or -1 if it is not a known block
 * device. */
static int block_name(const struct stat *st, char *name, size_t len)
{
    char link[128], target[PATH_MAX];
    snprintf(link, sizeof link, "/sys/dev/block/%u:%u",
             major(st->st_rdev), minor(st->st_rdev));
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0)
        return -1;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    size_t blen = strlen(base);
    if (blen >= len)
        return -1;
    memcpy(name, base, blen + 1);
    return 0;
}

/* Decode the octal escapes (\040 for a space...) of a mountinfo field. */
static void unescape_mount(char *s)
{
    char *o = s;
    for (char *p = s; *p; ) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' &&
            p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
            *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 4;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
}

/* syncfs() every filesystem mounted from the device or one of its
 * partitions: their dirty data is in their own page caches, which an
 * fsync of the block device does not reach. */
void kernel_sync_mounts(const char *name)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    size_t nlen = strlen(name);
    while (getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mountpoint ... */
        unsigned maj, min;
        char mnt[PATH_MAX];
        if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &maj, &min, mnt) != 3)
            continue;
        struct stat st = { .st_rdev = makedev(maj, min) };
        char dev[64];
        if (block_name(&st, dev, sizeof dev) != 0)
            continue;
        /* nbd0 itself, or nbd0p1, nbd0p2... */
        if (strncmp(dev, name, nlen) != 0 ||
            (dev[nlen] != '\0' && !(dev[nlen] == 'p' && isdigit((unsigned char)dev[nlen + 1]))))
            continue;
        unescape_mount(mnt);
        int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            syncfs(fd);
            close(fd);
        }
    }
    free(line);
    fclose(f);
}

static void *doit_main(void *arg)
{
    struct kernel_attach *k = arg;
    int e = 0;
    if (ioctl(k->dev_fd, NBD_DO_IT) < 0)
        e = errno;
    /* Kernels since 4.x do most of this themselves when NBD_DO_IT returns;
     * older ones need it, and it is harmless on a device that is done. */
    ioctl(k->dev_fd, NBD_CLEAR_QUE);
    ioctl(k->dev_fd, NBD_CLEAR_SOCK);
    pthread_mutex_lock(&k->lock);
    k->doit_done = true;
    k->doit_errno = e;
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

static void nl_disconnect(struct kernel_attach *k);
static void shutdown_kernel_socks(struct kernel_attach *k);

static void *disc_main(void *arg)
{
    struct kernel_attach *k = arg;

    pthread_mutex_lock(&k->lock);
    bool skip = k->doit_done || k->detaching;
    pthread_mutex_unlock(&k->lock);
    if (!skip) {
        kernel_sync_mounts(k->name);
        /* With netlink nothing of ours holds the device open (an open
         * right after the connect would read the partition table from the
         * thread that serves it): open it here, while the loop serves. */
        int fd = k->netlink ? open(k->path, O_RDWR | O_CLOEXEC) : k->dev_fd;
        if (fd >= 0) {
            fsync(fd);
            /* NBD_CMD_DISC on every connection; each is closed by the
             * server once its requests are answered. (The netlink
             * NBD_CMD_DISCONNECT would shut the sockets down at once.) */
            ioctl(fd, NBD_DISCONNECT);
            if (fd != k->dev_fd)
                close(fd);
        } else {
            nl_disconnect(k);
        }
    }

    /* The server should now get NBD_CMD_DISC, finish what is in flight and
     * close its end. If it does not, end the connection ourselves. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += DISC_GRACE_S;
    pthread_mutex_lock(&k->lock);
    while (!k->doit_done && !k->detaching) {
        if (pthread_cond_timedwait(&k->cond, &k->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool stuck = !k->doit_done && !k->detaching;
    pthread_mutex_unlock(&k->lock);
    if (stuck) {
        fprintf(stderr, "usbd-lua: %s: the server did not close the connection "
                "%d s after NBD_CMD_DISC; closing it\n", k->path, DISC_GRACE_S);
        shutdown_kernel_socks(k);
    }
    return NULL;
}

static void shutdown_kernel_socks(struct kernel_attach *k)
{
    for (unsigned i = 0; i < k->nsock; i++)
        if (k->kernel_sock[i] >= 0)
            shutdown(k->kernel_sock[i], SHUT_RDWR);
}

static void free_attach(struct kernel_attach *k)
{
    if (k->dev_fd >= 0)
        close(k->dev_fd);
    for (unsigned i = 0; i < k->nsock; i++)
        if (k->kernel_sock[i] >= 0)
            close(k->kernel_sock[i]);
    if (k->watch.fd >= 0)
        close(k->watch.fd);   /* without a byte: the watchdog frees the device */
    pthread_cond_destroy(&k->cond);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

/* Explain an ENOENT on path: no driver at all, or no such device number. */
static void no_such_device(const char *path, char *err, size_t errlen)
{
    long max_index;
    int count = count_nbd(&max_index);
    if (count == 0)
        set_err(err, errlen, "%s", no_driver_msg);
    else
        set_err(err, errlen,
                "%s: no such device: this kernel has /dev/nbd0 to "
                "/dev/nbd%ld; use one of those (or reload the driver with "
                "more: rmmod nbd; modprobe nbd nbds_max=N)",
                path, max_index);
}

/* May path be attached for a device of size bytes: we are root, it is a
 * whole nbd device and nobody uses it. Its name under /sys/block into name. */
static int check_device(const char *path, uint64_t size, char *name, size_t namelen,
                        char *err, size_t errlen)
{
    if (geteuid() != 0) {
        set_err(err, errlen, "attaching %s to the kernel needs root: "
                "run as root, or serve with -U PATH / -p PORT instead", path);
        return -1;
    }

    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            no_such_device(path, err, errlen);
        else
            set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISBLK(st.st_mode) || block_name(&st, name, namelen) != 0 ||
        nbd_index(name) < 0) {
        set_err(err, errlen, "%s is not an nbd device: give a "
                "whole nbd device such as /dev/nbd0 (ls /sys/block | grep nbd)",
                path);
        return -1;
    }

    long pid;
    if (nbd_busy(name, &pid)) {
        if (pid > 0) {
            char owner[96];
            describe_owner(pid, owner, sizeof owner);
            set_err(err, errlen, "%s is already in use by process "
                    "%s: pick another /dev/nbdN, or stop that process first",
                    path, owner);
        }
        else
            set_err(err, errlen, "%s is being set up by another "
                    "process: pick another /dev/nbdN, or wait and retry", path);
        return -1;
    }

    if (size > (uint64_t)INT64_MAX) {
        set_err(err, errlen, "%s: a size of %llu bytes is more than "
                "the kernel can address: give a smaller size", path,
                (unsigned long long)size);
        return -1;
    }
    return 0;
}

/* A handle for path, nothing open yet. */
static struct kernel_attach *new_attach(const char *path, const char *name)
{
    struct kernel_attach *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    snprintf(k->path, sizeof k->path, "%s", path);
    snprintf(k->name, sizeof k->name, "%s", name);
    k->dev_fd = -1;
    for (unsigned i = 0; i < KERNEL_MAX_CONNECTIONS; i++)
        k->kernel_sock[i] = -1;
    k->watch.fd = -1;
    k->family = -1;
    pthread_mutex_init(&k->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cond, &ca);
    pthread_condattr_destroy(&ca);
    return k;
}

/* Open the device, and the socketpair: sv[0] the kernel's end (kept in k
 * too), sv[1] the server's. */
static int open_device(struct kernel_attach *k, int sv[2], char *err, size_t errlen)
{
    const char *path = k->path;
    k->dev_fd = open(path, O_RDWR | O_CLOEXEC);
    if (k->dev_fd < 0) {
        int e = errno;
        if (e == ENXIO || e == ENODEV || e == ENOENT)
            no_such_device(path, err, errlen);
        else
            set_err(err, errlen, "cannot open %s: %s", path, strerror(e));
        return -1;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        set_err(err, errlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    widen_unix_send_buffer(sv[0]);  /* the kernel's requests, with their data */
    widen_unix_send_buffer(sv[1]);  /* our replies */
    k->kernel_sock[0] = sv[0];
    k->nsock = 1;
    return 0;
}

/* Tell the driver the device's block size, size, transmission flags and
 * timeout, then hand it its end of the socketpair. */
/* NBD_SET_SIZE (ioctls only); -1 with errno. */
static int set_size(struct kernel_attach *k, uint64_t size, uint32_t block_size)
{
#if ULONG_MAX < UINT64_MAX
    /* 32-bit: NBD_SET_SIZE's argument cannot hold a large size. */
    if (size > (uint64_t)ULONG_MAX)
        return ioctl(k->dev_fd, NBD_SET_SIZE_BLOCKS, (unsigned long)(size / block_size));
#endif
    (void)block_size;
    return ioctl(k->dev_fd, NBD_SET_SIZE, (unsigned long)size);
}

static int configure(struct kernel_attach *k, uint64_t size, uint32_t block_size,
                     uint16_t tflags, unsigned timeout_s, char *err, size_t errlen)
{
    const char *path = k->path;
    /* Clear what a previous user may have left (we checked it is free). */
    ioctl(k->dev_fd, NBD_CLEAR_SOCK);

    if (ioctl(k->dev_fd, NBD_SET_BLKSIZE, (unsigned long)block_size) < 0) {
        set_err(err, errlen, "%s: the kernel refused block size %u "
                "(%s): use a power of two from 512 to the page size (4096)",
                path, block_size, strerror(errno));
        return -1;
    }
    if (set_size(k, size, block_size) < 0) {
        set_err(err, errlen, "%s: the kernel refused a size of %llu "
                "bytes with block size %u (%s): give a smaller size, a multiple "
                "of the block size", path, (unsigned long long)size, block_size,
                strerror(errno));
        return -1;
    }
    if (ioctl(k->dev_fd, NBD_SET_FLAGS, (unsigned long)tflags) < 0) {
        set_err(err, errlen, "%s: the kernel refused transmission "
                "flags 0x%x (%s)", path, tflags, strerror(errno));
        return -1;
    }
    if (timeout_s > 0 &&
        ioctl(k->dev_fd, NBD_SET_TIMEOUT, (unsigned long)timeout_s) < 0) {
        set_err(err, errlen, "%s: the kernel refused a timeout of "
                "%u s (%s)", path, timeout_s, strerror(errno));
        return -1;
    }
    if (ioctl(k->dev_fd, NBD_SET_SOCK, (unsigned long)k->kernel_sock[0]) < 0) {
        int e = errno;
        if (e == EBUSY)
            set_err(err, errlen, "%s is being set up by another "
                    "process: pick another /dev/nbdN, or wait and retry", path);
        else
            set_err(err, errlen, "%s: NBD_SET_SOCK failed (%s)",
                    path, strerror(e));
        return -1;
    }
    return 0;
}

/* Start the NBD_DO_IT thread and wait for the device to come up. */
static int start_doit(struct kernel_attach *k, char *err, size_t errlen)
{
    const char *path = k->path;
    int rc;
    if ((rc = thread_start(&k->doit_thread, NULL, doit_main, k)) != 0) {
        set_err(err, errlen, "%s: cannot start a thread (%s)",
                path, strerror(rc));
        ioctl(k->dev_fd, NBD_CLEAR_SOCK);
        return -1;
    }

    /* NBD_DO_IT creates /sys/block/nbdN/pid once the device is up, before
     * any I/O; it fails at once if it cannot start. Wait for either, so
     * the caller gets a synchronous answer. */
    for (int waited = 0; waited < START_WAIT_MS; waited++) {
        char pidpath[64];
        struct stat pst;
        pthread_mutex_lock(&k->lock);
        bool done = k->doit_done;
        int e = k->doit_errno;
        pthread_mutex_unlock(&k->lock);
        if (done) {
            pthread_join(k->doit_thread, NULL);
            set_err(err, errlen, "%s: the kernel would not start "
                    "the device (NBD_DO_IT: %s)", path, strerror(e ? e : EIO));
            return -1;
        }
        snprintf(pidpath, sizeof pidpath, "/sys/block/%s/pid", k->name);
        if (stat(pidpath, &pst) == 0)
            break;
        usleep(1000);
    }
    return 0;
}

/* --- generic netlink ------------------------------------------------------
 * A request is a netlink header, a generic-netlink header and attributes;
 * the kernel answers with zero or more messages and an NLMSG_ERROR whose
 * error is 0 (the ack) or a negative errno. One socket per request, so that
 * any thread (and the watchdog) may ask without sharing one. */

struct nlmsg {
    size_t len;
    uint8_t buf[1024] __attribute__((aligned(NLMSG_ALIGNTO)));
};

static void nl_begin(struct nlmsg *m, uint16_t type, uint8_t cmd, uint8_t version)
{
    memset(m, 0, sizeof *m);
    struct nlmsghdr *h = (struct nlmsghdr *)m->buf;
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    h->nlmsg_seq = 1;
    struct genlmsghdr *g = (struct genlmsghdr *)(m->buf + NLMSG_HDRLEN);
    g->cmd = cmd;
    g->version = version;
    m->len = NLMSG_HDRLEN + GENL_HDRLEN;
}

/* Append an attribute; returns its offset (for nl_end_nest). */
static size_t nl_put(struct nlmsg *m, uint16_t type, const void *data, size_t len)
{
    size_t at = m->len;
    struct nlattr *a = (struct nlattr *)(m->buf + at);
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    if (len)
        memcpy(m->buf + at + NLA_HDRLEN, data, len);
    m->len = at + NLA_ALIGN(NLA_HDRLEN + len);
    return at;
}

static void nl_put_u32(struct nlmsg *m, uint16_t type, uint32_t v) { nl_put(m, type, &v, sizeof v); }
static void nl_put_u64(struct nlmsg *m, uint16_t type, uint64_t v) { nl_put(m, type, &v, sizeof v); }

/* A nested attribute: nl_put(m, type, NULL, 0), then what goes in, then this. */
static void nl_end_nest(struct nlmsg *m, size_t at)
{
    ((struct nlattr *)(m->buf + at))->nla_len = (uint16_t)(m->len - at);
}

static void nl_finish(struct nlmsg *m)
{
    ((struct nlmsghdr *)m->buf)->nlmsg_len = (uint32_t)m->len;
}

static int nl_socket(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0)
        return -1;
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send m on fd and wait for the kernel's ack. The first other message of
 * the answer is copied into reply (if given, up to replylen bytes).
 * Returns 0, or a negative errno. Async-signal-safe (the watchdog uses it
 * after fork). */
static int nl_talk(int fd, const struct nlmsg *m, void *reply, size_t replylen)
{
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    ssize_t n;
    do
        n = sendto(fd, m->buf, m->len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    uint8_t buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
    bool copied = false;
    for (;;) {
        do
            n = recv(fd, buf, sizeof buf, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return -errno;
        size_t left = (size_t)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != 1)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                return e->error;
            }
            if (reply && !copied) {
                size_t len = h->nlmsg_len < replylen ? h->nlmsg_len : replylen;
                memcpy(reply, h, len);
                copied = true;
            }
        }
    }
}

/* The id of the "nbd" generic-netlink family, or -1 (no driver loaded, or
 * one without netlink: then the ioctls are the way in). */
static int nl_family(void)
{
    int fd = nl_socket();
    if (fd < 0)
        return -1;
    struct nlmsg m;
    nl_begin(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
    nl_put(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof NBD_GENL_FAMILY_NAME);
    nl_finish(&m);
    uint8_t reply[4096] __attribute__((aligned(NLMSG_ALIGNTO))) = { 0 };
    int rc = nl_talk(fd, &m, reply, sizeof reply);
    close(fd);
    if (rc < 0)
        return -1;
    const struct nlmsghdr *h = (const struct nlmsghdr *)reply;
    if (h->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN || h->nlmsg_len > sizeof reply)
        return -1;
    size_t off = NLMSG_HDRLEN + GENL_HDRLEN;
    while (off + NLA_HDRLEN <= h->nlmsg_len) {
        const struct nlattr *a = (const struct nlattr *)(reply + off);
        if (a->nla_len < NLA_HDRLEN || off + a->nla_len > h->nlmsg_len)
            break;
        if ((a->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_FAMILY_ID && a->nla_len >= NLA_HDRLEN + 2) {
            uint16_t id;
            memcpy(&id, reply + off + NLA_HDRLEN, sizeof id);
            return id;
        }
        off += NLA_ALIGN(a->nla_len);
    }
    return -1;
}

static void nl_disconnect_msg(const struct kernel_attach *k, struct nlmsg *m)
{
    nl_begin(m, (uint16_t)k->family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
    nl_put_u32(m, NBD_ATTR_INDEX, k->index);
    nl_finish(m);
}

/* What /sys/block/nbdN/pid says, 0 if nothing. Async-signal-safe. */
static long owner_of(const char *name)
{
    char path[64] = "/sys/block/", buf[32];
    size_t n = strlen(path);
    for (const char *p = name; *p && n < sizeof path - 5; )
        path[n++] = *p++;
    memcpy(path + n, "/pid", 5);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    long v = 0;
    for (ssize_t i = 0; i < got && buf[i] >= '0' && buf[i] <= '9'; i++)
        v = v * 10 + (buf[i] - '0');
    return v;
}

/* Let the device go (NBD_CMD_DISCONNECT): shut every socket, fail what is
 * queued, drop the driver's reference. Only while the device is still the
 * one we attached (its pid file names our thread), so that a device some
 * other server has taken since is left alone. */
static void nl_disconnect(struct kernel_attach *k)
{
    if (!k->netlink || owner_of(k->name) != k->owner)
        return;
    int fd = nl_socket();
    if (fd < 0)
        return;
    struct nlmsg m;
    nl_disconnect_msg(k, &m);
    nl_talk(fd, &m, NULL, 0);
    close(fd);
}

/* fd moved above 0, 1 and 2 (which a watchdog points at /dev/null). */
static int above_stdio(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

/* Close every descriptor from `from` on except the n in keep (ascending,
 * each at least from). */
static void close_all_but(unsigned from, const int *keep, int n)
{
    for (int i = 0; i < n; i++) {
        if ((unsigned)keep[i] > from && close_range(from, (unsigned)keep[i] - 1, 0) != 0)
            for (unsigned fd = from; fd < (unsigned)keep[i]; fd++)
                close((int)fd);
        from = (unsigned)keep[i] + 1;
    }
    if (close_range(from, ~0u, 0) != 0)
        for (unsigned fd = from; fd < 4096; fd++)
            close((int)fd);
}

/* A watchdog's process. It keeps only stderr, the pipe's read end rd and
 * keep_fd, and calls nothing but system calls (the fork of a process with
 * threads may have copied a lock mid-use). */
static void watchdog_main(int rd, int keep_fd, void (*gone)(void *), void *arg)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd <= 1 && null >= 0; fd++)
        dup2(null, fd);
    int keep[2] = { rd, keep_fd }, n = keep_fd >= 0 ? 2 : 1;  /* both > 2: above_stdio */
    if (n == 2 && keep[1] < keep[0]) {
        keep[0] = keep_fd;
        keep[1] = rd;
    }
    close_all_but(3, keep, n);
    struct sigaction ign = { .sa_handler = SIG_IGN };
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGTERM, &ign, NULL);
    sigaction(SIGHUP, &ign, NULL);
    sigaction(SIGUSR1, &ign, NULL);
    char c;
    ssize_t got;
    do
        got = read(rd, &c, 1);
    while (got < 0 && errno == EINTR);
    /* A byte: the server has let the device go itself. End of file: the
     * server died. */
    if (got == 0)
        gone(arg);
    _exit(0);
}

int kernel_watchdog_start(struct kernel_watchdog *w, int keep_fd, void (*gone)(void *), void *arg)
{
    int p[2];
    w->fd = -1;
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    p[0] = above_stdio(p[0]);
    p[1] = above_stdio(p[1]);
    if (p[0] < 0 || p[1] < 0) {
        if (p[0] >= 0)
            close(p[0]);
        if (p[1] >= 0)
            close(p[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0)
        watchdog_main(p[0], keep_fd, gone, arg);
    close(p[0]);
    if (pid < 0) {
        close(p[1]);
        return -1;
    }
    w->fd = p[1];
    w->pid = pid;
    return 0;
}

void kernel_watchdog_stop(struct kernel_watchdog *w)
{
    if (w->fd < 0)
        return;
    char c = 1;
    ssize_t n = write(w->fd, &c, 1);
    (void)n;
    close(w->fd);
    w->fd = -1;
    while (waitpid(w->pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* The nbd watchdog's work (see the top of the file): NBD_CMD_DISCONNECT,
 * if the device is still the one the server configured. */
struct nbd_gone {
    int nl;
    struct nlmsg m;
    const char *name;
    long owner;
};

static void nbd_gone(void *arg)
{
    const struct nbd_gone *g = arg;
    if (owner_of(g->name) == g->owner)
        nl_talk(g->nl, &g->m, NULL, 0);
}

static int start_watchdog(struct kernel_attach *k)
{
    struct nbd_gone g = { .nl = above_stdio(nl_socket()), .name = k->name, .owner = k->owner };
    if (g.nl < 0)
        return -1;
    nl_disconnect_msg(k, &g.m);
    int rc = kernel_watchdog_start(&k->watch, g.nl, nbd_gone, &g);
    int e = errno;
    close(g.nl);
    errno = e;
    return rc;
}

/* NBD_CMD_CONNECT with n socketpairs: the kernel's ends go in the message
 * (the driver takes its own references), ours into server_fds. */
static int nl_connect(struct kernel_attach *k, unsigned n, uint64_t size, uint32_t block_size,
                      uint16_t tflags, unsigned timeout_s, int *server_fds,
                      char *err, size_t errlen)
{
    const char *path = k->path;
    for (unsigned i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            set_err(err, errlen, "socketpair: %s", strerror(errno));
            goto fail;
        }
        widen_unix_send_buffer(sv[0]);
        widen_unix_send_buffer(sv[1]);
        k->kernel_sock[k->nsock++] = sv[0];
        server_fds[i] = sv[1];
    }
    struct nlmsg m;
    nl_begin(&m, (uint16_t)k->family, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    nl_put_u32(&m, NBD_ATTR_INDEX, k->index);
    nl_put_u64(&m, NBD_ATTR_SIZE_BYTES, size);
    nl_put_u64(&m, NBD_ATTR_BLOCK_SIZE_BYTES, block_size);
    nl_put_u64(&m, NBD_ATTR_SERVER_FLAGS, tflags);
    if (timeout_s)
        nl_put_u64(&m, NBD_ATTR_TIMEOUT, timeout_s);
    /* No dead-connection timeout: a connection of ours only dies with the
     * server, and then requests must fail at once, not wait for a
     * reconnect that will not come. */
    size_t socks = nl_put(&m, NBD_ATTR_SOCKETS, NULL, 0);
    for (unsigned i = 0; i < n; i++) {
        size_t item = nl_put(&m, NBD_SOCK_ITEM, NULL, 0);
        nl_put_u32(&m, NBD_SOCK_FD, (uint32_t)k->kernel_sock[i]);
        nl_end_nest(&m, item);
    }
    nl_end_nest(&m, socks);
    nl_finish(&m);

    int fd = nl_socket();
    int rc = fd < 0 ? -errno : nl_talk(fd, &m, NULL, 0);
    if (fd >= 0)
        close(fd);
    if (rc < 0) {
        if (rc == -EBUSY)
            set_err(err, errlen, "%s is being set up by another "
                    "process: pick another /dev/nbdN, or wait and retry", path);
        else
            set_err(err, errlen, "%s: the kernel refused the device "
                    "(NBD_CMD_CONNECT: %s; size %llu, block size %u): see dmesg",
                    path, strerror(-rc), (unsigned long long)size, block_size);
        goto fail;
    }
    k->owner = owner_of(k->name);
    return 0;
fail:
    for (unsigned i = 0; i < k->nsock; i++) {
        close(k->kernel_sock[i]);
        close(server_fds[i]);
        k->kernel_sock[i] = -1;
    }
    k->nsock = 0;
    return -1;
}

struct kernel_attach *kernel_attach(const char *path, uint64_t size,
                                    uint32_t block_size, uint16_t tflags,
                                    unsigned timeout_s, unsigned connections,
                                    int *server_fds, unsigned *nfds,
                                    char *err, size_t errlen)
{
    char name[32];
    if (check_device(path, size, name, sizeof name, err, errlen) < 0)
        return NULL;
    if (block_size == 0)
        block_size = 512;
    struct kernel_attach *k = new_attach(path, name);
    if (!k) {
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    k->block_size = block_size;
    k->family = connections ? nl_family() : -1;
    if (k->family >= 0) {
        unsigned n = connections;
        if (!(tflags & NBD_FLAG_CAN_MULTI_CONN))
            n = 1;   /* the driver refuses several without it */
        if (n > KERNEL_MAX_CONNECTIONS)
            n = KERNEL_MAX_CONNECTIONS;
        k->netlink = true;
        k->index = (uint32_t)nbd_index(name);
        if (nl_connect(k, n, size, block_size, tflags, timeout_s, server_fds, err, errlen) < 0) {
            free_attach(k);
            return NULL;
        }
        if (start_watchdog(k) < 0) {
            int e = errno;
            for (unsigned i = 0; i < n; i++)
                close(server_fds[i]);
            nl_disconnect(k);
            set_err(err, errlen, "%s: cannot start the process that frees the "
                    "device if the server dies (%s)", path, strerror(e));
            free_attach(k);
            return NULL;
        }
        *nfds = n;
        return k;
    }
    int sv[2] = { -1, -1 };
    if (open_device(k, sv, err, errlen) < 0 ||
        configure(k, size, block_size, tflags, timeout_s, err, errlen) < 0 ||
        start_doit(k, err, errlen) < 0) {
        if (sv[1] >= 0)
            close(sv[1]);
        free_attach(k);
        return NULL;
    }
    server_fds[0] = sv[1];
    *nfds = 1;
    return k;
}

int kernel_resize(struct kernel_attach *k, uint64_t size, char *err, size_t errlen)
{
    int rc;
    if (k->netlink) {
        int fd = nl_socket();
        if (fd < 0) {
            rc = -errno;
        } else {
            struct nlmsg m;
            nl_begin(&m, (uint16_t)k->family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
            nl_put_u32(&m, NBD_ATTR_INDEX, k->index);
            nl_put_u64(&m, NBD_ATTR_SIZE_BYTES, size);
            nl_finish(&m);
            rc = nl_talk(fd, &m, NULL, 0);
            close(fd);
        }
    } else {
        rc = set_size(k, size, k->block_size) < 0 ? -errno : 0;
    }
    if (rc < 0) {
        set_err(err, errlen, "%s: the kernel refused the new size of %llu bytes (%s %s): "
                "see dmesg", k->path, (unsigned long long)size,
                k->netlink ? "NBD_CMD_RECONFIGURE:" : "NBD_SET_SIZE:", strerror(-rc));
        return -1;
    }
    return 0;
}

int kernel_is_netlink(const struct kernel_attach *k)
{
    return k->netlink;
}

void kernel_disconnect(struct kernel_attach *k)
{
    if (!k)
        return;
    pthread_mutex_lock(&k->lock);
    bool start = !k->disc_started && !k->doit_done && !k->detaching;
    if (start)
        k->disc_started = true;
    pthread_mutex_unlock(&k->lock);
    if (!start)
        return;
    if (thread_start(&k->disc_thread, NULL, disc_main, k) != 0) {
        /* No thread: disconnect from here rather than not at all, without
         * the write-back. NBD_DISCONNECT only sends NBD_CMD_DISC: it may wait
         * for room in the socket, never for a reply; netlink's
         * NBD_CMD_DISCONNECT shuts the sockets down. */
        pthread_mutex_lock(&k->lock);
        k->disc_started = false;
        pthread_mutex_unlock(&k->lock);
        if (k->netlink)
            nl_disconnect(k);
        else
            ioctl(k->dev_fd, NBD_DISCONNECT);
    }
}

void kernel_detach(struct kernel_attach *k)
{
    if (!k)
        return;
    pthread_mutex_lock(&k->lock);
    k->detaching = true;
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);

    /* The served ends are closed by now, so the kernel's receive side sees
     * the end of the stream; shutting our copies of the kernel's ends down
     * makes sure of it even if the caller still holds the other ends, and
     * turns a write-back still running in the disconnect thread into
     * errors instead of a hang. */
    shutdown_kernel_socks(k);
    if (!k->netlink)
        pthread_join(k->doit_thread, NULL);
    if (k->disc_started)
        pthread_join(k->disc_thread, NULL);
    if (k->netlink) {
        nl_disconnect(k);
        kernel_watchdog_stop(&k->watch);
    }
    free_attach(k);
}

void kernel_abort(struct kernel_attach *k, unsigned wait_ms)
{
    shutdown_kernel_socks(k);
    if (k->netlink) {
        /* Fails what is queued with EIO and lets the device go; waits for
         * the kernel's receive work, which ends with the sockets. */
        nl_disconnect(k);
        return;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&k->lock);
    while (!k->doit_done)
        if (pthread_cond_timedwait(&k->cond, &k->lock, &deadline) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&k->lock);
}

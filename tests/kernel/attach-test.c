/* A minimal server for src/server/kernel.c alone: attaches a RAM disk to /dev/nbdN
 * with kernel_attach() and serves the kernel over the socketpair in the
 * transmission phase (simple replies), the way the core does. SIGINT or
 * SIGTERM: kernel_disconnect(), keep serving until NBD_CMD_DISC, close,
 * kernel_detach(), exit 0. Lets tests/kernel check the attach code before
 * (and apart from) the rest of usbd-lua.
 *
 *   attach-test [--find] [--ignore-disc] [--bs N] [--timeout S] [--ro]
 *               [--load FILE] [--dump FILE] DEVICE SIZE
 *
 * --find          print the device kernel_find_free() picks and exit
 * --ignore-disc   do not close on NBD_CMD_DISC (exercises the grace timeout)
 * --load FILE     start from FILE's contents instead of zeros
 * --dump FILE     write the disk to FILE after detaching
 * SIZE takes a K, M or G suffix. Errors: the message from kernel.c on stderr,
 * exit 1. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kernel.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define REQ_MAGIC   0x25609513u
#define REPLY_MAGIC 0x67446698u
enum { CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM };
#define FLAG_HAS_FLAGS  (1u << 0)
#define FLAG_READ_ONLY  (1u << 1)
#define FLAG_SEND_FLUSH (1u << 2)
#define FLAG_SEND_FUA   (1u << 3)
#define FLAG_SEND_TRIM  (1u << 5)

static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    switch (*end) {
    case 'K': case 'k': v <<= 10; break;
    case 'M': case 'm': v <<= 20; break;
    case 'G': case 'g': v <<= 30; break;
    default: break;
    }
    return v;
}

int main(int argc, char **argv)
{
    bool find = false, ignore_disc = false, ro = false;
    uint32_t bs = 4096;
    unsigned timeout_s = 0;
    const char *load = NULL, *dump = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--find")) find = true;
        else if (!strcmp(argv[i], "--ignore-disc")) ignore_disc = true;
        else if (!strcmp(argv[i], "--ro")) ro = true;
        else if (!strcmp(argv[i], "--load") && i + 1 < argc) load = argv[++i];
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i];
        else if (!strcmp(argv[i], "--bs") && i + 1 < argc) bs = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) timeout_s = (unsigned)atoi(argv[++i]);
        else { fprintf(stderr, "attach-test: unknown option %s\n", argv[i]); return 2; }
    }
    char err[512];
    if (find) {
        char path[64];
        if (kernel_find_free(path, sizeof path, err, sizeof err) != 0) {
            fprintf(stderr, "usbd-lua: %s\n", err);
            return 1;
        }
        printf("%s\n", path);
        return 0;
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: attach-test [options] DEVICE SIZE\n");
        return 2;
    }
    const char *dev = argv[i];
    uint64_t size = parse_size(argv[i + 1]);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

    uint8_t *disk = calloc(1, size ? size : 1);
    if (!disk) {
        fprintf(stderr, "attach-test: cannot allocate %llu bytes\n", (unsigned long long)size);
        return 1;
    }
    if (load) {
        FILE *f = fopen(load, "rb");
        if (!f || fread(disk, 1, size, f) == 0) {
            fprintf(stderr, "attach-test: cannot load %s\n", load);
            return 1;
        }
        fclose(f);
    }
    uint16_t tflags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM;
    if (ro)
        tflags |= FLAG_READ_ONLY;
    int fd;
    unsigned nfd;
    /* connections 0: the ioctl way in, which usbd-lua only takes where the
     * kernel has no netlink interface for nbd (the suites test the other). */
    struct kernel_attach *k = kernel_attach(dev, size, bs, tflags, timeout_s, 0, &fd, &nfd,
                                            err, sizeof err);
    if (!k) {
        fprintf(stderr, "usbd-lua: %s\n", err);
        return 1;
    }
    fprintf(stderr, "attach-test: serving %s\n", dev);

    size_t bufcap = 1 << 20;
    uint8_t *payload = malloc(bufcap);
    bool disconnecting = false;
    int status = 0;
    for (;;) {
        struct pollfd p[2] = { { fd, POLLIN, 0 }, { sfd, POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == sizeof si && !disconnecting) {
                disconnecting = true;
                fprintf(stderr, "attach-test: signal %u, disconnecting\n", si.ssi_signo);
                kernel_disconnect(k);
            }
        }
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        uint8_t h[28];
        if (read_full(fd, h, sizeof h) != 0)
            break;   /* the kernel closed its end */
        uint32_t magic, type, len;
        uint64_t handle, off;
        memcpy(&magic, h, 4);
        memcpy(&type, h + 4, 4);
        memcpy(&handle, h + 8, 8);
        memcpy(&off, h + 16, 8);
        memcpy(&len, h + 24, 4);
        magic = be32toh(magic);
        type = be32toh(type);
        off = be64toh(off);
        len = be32toh(len);
        if (magic != REQ_MAGIC) {
            fprintf(stderr, "attach-test: bad request magic 0x%x\n", magic);
            status = 1;
            break;
        }
        uint16_t cmd = (uint16_t)(type & 0xffff);
        if (cmd == CMD_DISC) {
            if (ignore_disc) {
                fprintf(stderr, "attach-test: ignoring NBD_CMD_DISC\n");
                continue;
            }
            break;
        }
        uint32_t error = 0;
        if ((cmd == CMD_READ || cmd == CMD_WRITE) && len > bufcap) {
            bufcap = len;
            payload = realloc(payload, bufcap);
        }
        bool in_range = off <= size && len <= size - off;
        if (cmd == CMD_WRITE) {
            if (read_full(fd, payload, len) != 0)
                break;
            if (!in_range) error = EINVAL;
            else if (ro) error = EROFS;
            else memcpy(disk + off, payload, len);
        } else if (cmd == CMD_READ) {
            if (!in_range) error = EINVAL;
            else memcpy(payload, disk + off, len);
        } else if (cmd == CMD_TRIM) {
            if (!in_range) error = EINVAL;
            else if (ro) error = EROFS;
            else memset(disk + off, 0, len);
        } else if (cmd != CMD_FLUSH) {
            error = EINVAL;
        }
        uint8_t r[16];
        uint32_t rm = htobe32(REPLY_MAGIC), re = htobe32(error);
        memcpy(r, &rm, 4);
        memcpy(r + 4, &re, 4);
        memcpy(r + 8, &handle, 8);
        if (write_full(fd, r, sizeof r) != 0)
            break;
        if (cmd == CMD_READ && error == 0 && write_full(fd, payload, len) != 0)
            break;
    }
    close(fd);
    kernel_detach(k);
    fprintf(stderr, "attach-test: detached %s\n", dev);
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(disk, 1, size, f) != size || fclose(f) != 0) {
            fprintf(stderr, "attach-test: cannot dump to %s\n", dump);
            status = 1;
        }
    }
    free(payload);
    free(disk);
    return status;
}

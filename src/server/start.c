/* start.c: starting to serve (usbd_serve_start, which Lua calls once the
 * device is open): the export's flags, the event loop, then either the
 * listening sockets, whose NBD URIs are printed, or the kernel's /dev/nbdN;
 * last the process's part, which waits for a server that answers (the pid
 * file, the --run command). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "kernel.h"
#include "process.h"
#include "reqlog.h"
#include "server.h"
#include "services/services.h"
#include "sockets.h"
#include "ublk.h"

struct export_info export;

static int start_kernel(char *err, size_t errlen)
{
    char path[64];
    if (config.nbd_device && ublk_path(config.nbd_device)) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned queues = config.connections ? config.connections : cores < 1 ? 1 : (unsigned)cores;
        if (ublk_start(config.nbd_device, queues, err, errlen) < 0)
            return -1;
        return process_serving(NULL, err, errlen);
    }
    if (config.nbd_device) {
        snprintf(path, sizeof path, "%s", config.nbd_device);
    } else if (kernel_find_free(path, sizeof path, err, errlen) < 0) {
        return -1;
    }
    /* --connections, by default one per core: the driver gives each
     * connection its own hardware queue. USBD_NBD_IOCTL=1 takes the ioctl
     * way in, as on a kernel without the netlink interface (for tests). */
    unsigned want = config.connections;
    if (want == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        want = cores < 1 ? 1 : cores > KERNEL_MAX_CONNECTIONS ? KERNEL_MAX_CONNECTIONS : (unsigned)cores;
    }
    const char *ioctl_only = getenv("USBD_NBD_IOCTL");
    if (ioctl_only && strcmp(ioctl_only, "1") == 0)
        want = 0;
    int fds[KERNEL_MAX_CONNECTIONS];
    unsigned n = 0;
    struct kernel_attach *k = kernel_attach(path, export.dev.size, export.dev.block_size,
                                            export.tflags, 0, want, fds, &n, err, errlen);
    if (!k)
        return -1;
    loop_add_kernel(k, path, fds, n);
    if (want > n && config.connections > n)
        log_msg(0, "%s: %u connection%s, not %u: %s", path, n, n == 1 ? "" : "s", want,
                kernel_is_netlink(k) ? "the device is not safe for several" : "no netlink interface for nbd in this kernel");
    fprintf(stderr, "usbd-lua: serving %s as %s (%u connection%s, %s)\n", config.script, path,
            n, n == 1 ? "" : "s", kernel_is_netlink(k) ? "netlink" : "ioctl");
    return process_serving(NULL, err, errlen);
}

void usbd_serve_size_changed(void)
{
    loop_post(LOOP_POST_SIZE_CHANGED);
}

int usbd_serve_resize(uint64_t size, char *err, size_t errlen)
{
    uint64_t old = export_size(&export);
    if (size == old)
        return 0;
    /* Growing, the new end is valid before the kernel sends requests
     * there; shrinking, after it has stopped. */
    if (size > old)
        __atomic_store_n(&export.dev.size, size, __ATOMIC_RELAXED);
    if (loop_resize_kernel(size, err, errlen) < 0) {
        __atomic_store_n(&export.dev.size, old, __ATOMIC_RELAXED);
        return -1;
    }
    __atomic_store_n(&export.dev.size, size, __ATOMIC_RELAXED);
    return 0;
}

int usbd_serve_start(const usbd_export *ex, char *err, size_t errlen)
{
    export.dev = *ex;
    export.tflags = export_flags(ex, config.readonly);
    export.max_request = config.max_request;

    if (loop_start(err, errlen) < 0 || reqlog_open(config.trace_path, err, errlen) < 0)
        return -1;

    if (!config.unix_path && !config.port)
        return start_kernel(err, errlen);
    char unix_uri[4200] = "", tcp_uri[128] = "";
    /* nbds: TLS; a client adds its credentials (tls-psk-file=, ...). */
    const char *scheme = config.tls == USBD_TLS_REQUIRE ? "nbds" : "nbd";
    if (config.unix_path) {
        int fd = listen_unix(config.unix_path, config.socket_mode, config.socket_gid, err, errlen);
        if (fd < 0)
            return -1;
        loop_listen(fd, true);
        snprintf(unix_uri, sizeof unix_uri, "%s+unix:///?socket=%s", scheme, config.unix_path);
    }
    if (config.port) {
        int fd = listen_tcp(config.ip, config.port, err, errlen);
        if (fd < 0)
            return -1;
        loop_listen(fd, false);
        bool v6 = strchr(config.ip, ':') != NULL;
        snprintf(tcp_uri, sizeof tcp_uri, "%s://%s%s%s:%s/", scheme, v6 ? "[" : "", config.ip, v6 ? "]" : "", config.port);
    }
    if (!config.run) {  /* under --run, stdout is the command's */
        if (unix_uri[0])
            printf("%s\n", unix_uri);
        if (tcp_uri[0])
            printf("%s\n", tcp_uri);
        fflush(stdout);
    }
    return process_serving(unix_uri[0] ? unix_uri : tcp_uri, err, errlen);
}

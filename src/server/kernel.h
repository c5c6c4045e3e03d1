/* Attaching a device to the Linux kernel's nbd driver (/dev/nbdN).
 *
 * The core serves one end of each socketpair exactly like a network client
 * that has finished the handshake. The kernel gets the other ends either
 * through the driver's generic-netlink interface (NBD_CMD_CONNECT, one or
 * several connections), or through the old ioctls (NBD_SET_SOCK, one
 * connection, a thread of ours in NBD_DO_IT until disconnect). */
#ifndef USBD_KERNEL_H
#define USBD_KERNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kernel_attach;

/* A watchdog: a forked process that calls gone(arg) once this process has
 * died without kernel_watchdog_stop (a kill -9), so that a kernel device
 * it served is not left waiting for it. It keeps stderr and keep_fd (-1:
 * none; above 2); gone must use only system calls. */
struct kernel_watchdog {
    int fd;      /* write end of its pipe, or -1 */
    pid_t pid;
};
int kernel_watchdog_start(struct kernel_watchdog *w, int keep_fd, void (*gone)(void *), void *arg);
/* Stand it down (nothing happens) and reap it; no-op when not started. */
void kernel_watchdog_stop(struct kernel_watchdog *w);

/* Find the first /dev/nbdN the driver has and nothing uses. Returns 0 and
 * fills path, or -1 with a one-line, actionable message in err. */
int kernel_find_free(char *path, size_t pathlen, char *err, size_t errlen);

/* Most connections kernel_attach makes. */
#define KERNEL_MAX_CONNECTIONS 64

/* Configure path for a device of size bytes with the transmission flags
 * tflags and hand the kernel its sockets. connections >= 1: through netlink
 * (NBD_CMD_CONNECT) with that many connections (one unless tflags has
 * NBD_FLAG_CAN_MULTI_CONN), or, on a kernel without the nbd netlink family,
 * through the ioctls with one; connections == 0: the ioctls, always.
 * On success returns the handle and stores in server_fds (room for
 * max(connections, 1)) the sockets the core must serve (transmission phase,
 * no handshake), their number in *nfds. On failure returns NULL with a
 * one-line message in err that says what to do (no driver, no such device,
 * in use, not root, size refused). */
struct kernel_attach *kernel_attach(const char *path, uint64_t size,
                                    uint32_t block_size, uint16_t tflags,
                                    unsigned timeout_s, unsigned connections,
                                    int *server_fds, unsigned *nfds,
                                    char *err, size_t errlen);

/* The device now holds size bytes: tell the kernel (NBD_CMD_RECONFIGURE
 * through netlink, NBD_SET_SIZE through the ioctls). 0, or -1 with a
 * one-line message in err. */
int kernel_resize(struct kernel_attach *k, uint64_t size, char *err, size_t errlen);

/* Whether k was attached through netlink (else through the ioctls). */
int kernel_is_netlink(const struct kernel_attach *k);

/* syncfs() every filesystem mounted from the block device name ("nbd0",
 * "ublkb0") or one of its partitions. */
void kernel_sync_mounts(const char *name);

/* Begin a clean disconnect without blocking the caller: write back the
 * block device's dirty pages, then NBD_DISCONNECT. The core keeps serving
 * each connection until the kernel's NBD_CMD_DISC on it, then closes its
 * end; the kernel waits for that close (and gives up on its own after a
 * while). */
void kernel_disconnect(struct kernel_attach *k);

/* The server cannot answer any more (its device is stuck): end the
 * connection so the kernel fails what is queued with EIO instead of hanging,
 * and wait up to wait_ms for NBD_DO_IT to return and clear the device.
 * Safe from any thread; k stays allocated. */
void kernel_abort(struct kernel_attach *k, unsigned wait_ms);

/* After the served sockets have closed: join the NBD_DO_IT thread (ioctls)
 * or release the device (netlink: NBD_CMD_DISCONNECT), clear the sockets,
 * close the device and free k. */
void kernel_detach(struct kernel_attach *k);

#endif

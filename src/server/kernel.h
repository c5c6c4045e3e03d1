/* Attaching a device to the Linux kernel's nbd driver (/dev/nbdN).
 *
 * The core serves one end of a socketpair exactly like a network client
 * that has finished the handshake; the kernel gets the other end through
 * NBD_SET_SOCK and a thread of ours sits in NBD_DO_IT until disconnect. */
#ifndef USBD_KERNEL_H
#define USBD_KERNEL_H

#include <stddef.h>
#include <stdint.h>

struct kernel_attach;

/* Find the first /dev/nbdN the driver has and nothing uses. Returns 0 and
 * fills path, or -1 with a one-line, actionable message in err. */
int kernel_find_free(char *path, size_t pathlen, char *err, size_t errlen);

/* Configure path for a device of size bytes (NBD_SET_BLKSIZE, NBD_SET_SIZE,
 * NBD_SET_FLAGS with the transmission flags tflags, NBD_SET_TIMEOUT, NBD_SET_SOCK)
 * and start the NBD_DO_IT thread. On success returns the handle and stores
 * in *server_fd the socket the core must serve (transmission phase, no
 * handshake). On failure returns NULL with a one-line message in err that
 * says what to do (no driver, no such device, in use, not root, size refused). */
struct kernel_attach *kernel_attach(const char *path, uint64_t size,
                                    uint32_t block_size, uint16_t tflags,
                                    unsigned timeout_s, int *server_fd,
                                    char *err, size_t errlen);

/* Begin a clean disconnect without blocking the caller: write back the
 * block device's dirty pages, then NBD_DISCONNECT. The core keeps serving
 * until the kernel's NBD_CMD_DISC, then closes its end; the kernel waits
 * for that close (and gives up on its own after a while). */
void kernel_disconnect(struct kernel_attach *k);

/* The server cannot answer any more (its device is stuck): end the
 * connection so the kernel fails what is queued with EIO instead of hanging,
 * and wait up to wait_ms for NBD_DO_IT to return and clear the device.
 * Safe from any thread; k stays allocated. */
void kernel_abort(struct kernel_attach *k, unsigned wait_ms);

/* After the served socket has closed: join the NBD_DO_IT thread, clear the
 * socket, close the device and free k. */
void kernel_detach(struct kernel_attach *k);

#endif

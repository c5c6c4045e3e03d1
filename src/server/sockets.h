/* Listening sockets. */
#ifndef USBD_SOCKETS_H
#define USBD_SOCKETS_H
#include <stddef.h>
#include <stdint.h>

/* Listen on a Unix socket. A socket file that nothing answers on (left by a
 * killed server) is replaced; a live one is an error. mode (>= 0) sets the
 * file's permissions and gid (>= 0) its group, before any client can
 * connect; -1 leaves them as the umask and the process make them. -1 with
 * err on failure. */
int listen_unix(const char *path, int mode, int64_t gid, char *err, size_t errlen);
/* Listen on TCP ip:port (numeric address, v4 or v6). */
int listen_tcp(const char *ip, const char *port, char *err, size_t errlen);
/* Make fd non-blocking and close-on-exec. */
int set_nonblocking(int fd);
/* A larger send buffer for a Unix stream socket (not TCP, which sizes its
 * own). */
void widen_unix_send_buffer(int fd);

#endif

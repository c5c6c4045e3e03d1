/* Listening sockets. */
#ifndef USBD_SOCKETS_H
#define USBD_SOCKETS_H
#include <stddef.h>

/* Listen on a Unix socket. A socket file that nothing answers on (left by a
 * killed server) is replaced; a live one is an error. -1 with err on failure. */
int listen_unix(const char *path, char *err, size_t errlen);
/* Listen on TCP ip:port (numeric address, v4 or v6). */
int listen_tcp(const char *ip, const char *port, char *err, size_t errlen);
/* Make fd non-blocking and close-on-exec. */
int set_nonblocking(int fd);

#endif

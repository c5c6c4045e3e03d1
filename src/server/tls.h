/* TLS for network clients (GnuTLS): the credentials --tls-certificates or
 * --tls-psk name, the server's side of a handshake after NBD_OPT_STARTTLS,
 * and the record layer the transmission phase reads and writes through.
 * One session is used by one thread at a time: the handshake's thread,
 * then the loop's. */
#ifndef USBD_TLS_H
#define USBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

struct tls;

/* Load the credentials the configuration names; with --tls off, nothing.
 * 0, or -1 with a one-line message in err. Once, before serving. */
int tls_setup(char *err, size_t errlen);
/* TLS is offered (--tls on or require). */
bool tls_offered(void);
/* TLS is required: no export without it (--tls require). */
bool tls_required(void);

/* The server's side of the handshake on fd (made non-blocking), which
 * must end by deadline (CLOCK_MONOTONIC). The session, or NULL when the
 * client failed, aborted or stalled (logged with -v). */
struct tls *tls_handshake(int fd, const struct timespec *deadline);

/* Non-blocking, as recv(2) and sendmsg(2): bytes, 0 for the client's end,
 * or -1 with errno (EAGAIN: try again once the socket is ready; any other:
 * the session is beyond use, e.g. EPROTO for a renegotiation).
 *
 * tls_sendv encrypts from the iovec's memory, a record at a time, and
 * returns what is on its way. After EAGAIN, or a count short of the total,
 * the next call must begin with the bytes not yet counted: the record that
 * holds them is encrypted already and goes out first (GnuTLS's rule), so
 * the memory they came from is free once tls_sendv has seen it. */
ssize_t tls_recv(struct tls *t, void *buf, size_t len);
ssize_t tls_sendv(struct tls *t, const struct iovec *iov, int n);
/* Bytes already decrypted and not yet read: no socket event will come for
 * them. */
bool tls_pending(struct tls *t);
/* After EAGAIN: the session waits for the socket to take bytes, not to
 * give them. */
bool tls_wants_write(struct tls *t);

/* Send the end of the session if the socket takes it now, and free it
 * (the caller closes the fd). NULL is ignored. */
void tls_close(struct tls *t);

#endif

/* Fixed newstyle negotiation, up to the start of transmission. */
#ifndef USBD_HANDSHAKE_H
#define USBD_HANDSHAKE_H

#include <stdbool.h>
#include <stdint.h>
#include "request.h"

struct tls;

struct negotiated {
    bool structured;        /* NBD_OPT_STRUCTURED_REPLY was agreed */
    uint32_t meta_context;  /* base:allocation's id, if selected; else 0 */
    struct tls *tls;        /* the TLS session after NBD_OPT_STARTTLS, or NULL */
};

/* Negotiate with the client on blocking socket fd, giving it timeout_s
 * seconds in all, the TLS handshake included. Returns 0 when transmission
 * starts (out->tls holds the session if the client upgraded), -1 when the
 * client aborted, timed out or broke the protocol (the caller closes fd;
 * any session is freed). */
int handshake(int fd, const struct export_info *ex, unsigned timeout_s, struct negotiated *out);

#endif

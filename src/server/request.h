/* Checking a request before the device sees it, and errno on the wire.
 * Pure functions: no sockets, no Lua, so the unit tests reach every rule. */
#ifndef USBD_REQUEST_H
#define USBD_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "serve.h"

/* The export as negotiated: what the device offers and the NBD flags
 * derived from it. Immutable once serving starts. */
struct export_info {
    usbd_export dev;       /* dev.size changes on a resize: read it with export_size */
    uint16_t tflags;       /* NBD transmission flags */
    uint32_t max_request;  /* largest READ/WRITE payload */
};

/* The size now: the Lua thread may change it (usbd_serve_resize) while
 * other threads check requests against it. */
static inline uint64_t export_size(const struct export_info *ex)
{
    return __atomic_load_n(&ex->dev.size, __ATOMIC_RELAXED);
}

/* Derive the transmission flags from what the device offers. */
uint16_t export_flags(const usbd_export *dev, bool readonly);

/* 0 if the device may run this request; otherwise the NBD error to reply
 * with. structured and meta_context say what the connection negotiated
 * (BLOCK_STATUS needs a metadata context). A WRITE whose payload is too
 * large to accept must not be framed at all: request_check_framing says so
 * first. */
uint32_t request_check(const struct export_info *ex, uint16_t type, uint16_t flags,
                       uint64_t offset, uint32_t length, bool structured, bool meta_context);

/* How many block status descriptors a reply to BLOCK_STATUS may carry:
 * one with REQ_ONE, never more than bytes asked about, nor USBD_MAX_EXTENTS. */
uint32_t request_max_extents(uint16_t flags, uint32_t length);

/* False when the request's payload cannot be accepted: the connection must
 * close, since the stream can no longer be framed. */
bool request_framing_ok(const struct export_info *ex, uint16_t type, uint32_t length);

/* Host errno -> NBD wire error. */
uint32_t nbd_error_from_errno(int err);

static inline uint64_t be64(const uint8_t *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | p[7];
}
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint8_t *put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
    return p + 8;
}
static inline uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
    return p + 4;
}
static inline uint8_t *put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v;
    return p + 2;
}

#endif

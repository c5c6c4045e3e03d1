/* Borrowed reply segments: a READ's reply whose bytes partly come from
 * memory the device lends (a mapping of its file's page cache) instead of
 * the request's own buffer. Used by the event-loop thread only. */
#ifndef USBD_BORROW_H
#define USBD_BORROW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "serve.h"

struct borrowed {
    const uint8_t *src;
    uint32_t at;            /* where in the reply's data */
    uint32_t len;
};

/* Embedded in a request: its segments, sorted by at, never overlapping,
 * and its place in the list of replies that borrow (for settling). */
struct borrowing {
    uint8_t *buf;           /* the request's own buffer */
    uint32_t len;           /* its data bytes */
    uint32_t n;
    size_t (*data_sent)(struct borrowing *b);  /* reply data bytes already sent */
    struct borrowing *prev, *next;
    struct borrowed seg[USBD_MAX_BORROWED];
};

/* Declare that [at, at+len) of b's data is src's bytes. 1: borrowed; 0: no
 * room for another segment (or it overlaps one), so the bytes were copied
 * into the buffer instead; -1: outside the data, nothing done. */
int borrow_add(struct borrowing *b, uint64_t at, const uint8_t *src, uint64_t len);

/* iovecs for the data bytes [from, to): buffer and borrowed pieces in
 * order, at most max. Returns how many; *bytes says how much they cover
 * (less than to - from when max was too few). */
int borrow_iov(const struct borrowing *b, size_t from, size_t to, struct iovec *iov, int max, size_t *bytes);

/* Copy the bytes not yet sent of each segment into the buffer and forget
 * them: from now on the reply is the buffer alone. */
void borrow_settle(struct borrowing *b);

/* Forget the segments without copying (the reply is sent or dropped). */
void borrow_drop(struct borrowing *b);

/* Settle every reply that still borrows. */
void borrow_settle_all(void);

#endif

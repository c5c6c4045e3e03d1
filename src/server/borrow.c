/* Borrowed reply segments (see borrow.h). A READ's reply is sent by one
 * sendmsg from an iovec that mixes the request's buffer with memory the
 * device lent; plain sendmsg on TCP and Unix sockets copies the bytes it
 * reports sent into the socket's own buffers before it returns (no
 * MSG_ZEROCOPY, no splice), so only the bytes not yet sent can still change
 * under us. A store that is about to write where a reply may still borrow
 * from settles first: those bytes are copied into the reply's own buffer. */
#include <string.h>

#include "borrow.h"

static struct borrowing *lenders;   /* replies that borrow, newest first */
static usbd_borrow_stats counters;

static void link_in(struct borrowing *b)
{
    b->prev = NULL;
    b->next = lenders;
    if (lenders)
        lenders->prev = b;
    lenders = b;
}

static void unlink_out(struct borrowing *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        lenders = b->next;
    if (b->next)
        b->next->prev = b->prev;
    b->prev = b->next = NULL;
}

/* Copy the segments' bytes from data offset sent on into the buffer. */
static uint64_t copy_back(struct borrowing *b, size_t sent)
{
    uint64_t copied = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        const struct borrowed *s = &b->seg[i];
        size_t end = (size_t)s->at + s->len;
        if (end <= sent)
            continue;
        size_t start = s->at > sent ? s->at : sent;
        memcpy(b->buf + start, s->src + (start - s->at), end - start);
        copied += end - start;
    }
    return copied;
}

void borrow_drop(struct borrowing *b)
{
    if (b->n == 0)
        return;
    b->n = 0;
    unlink_out(b);
}

void borrow_settle(struct borrowing *b)
{
    if (b->n == 0)
        return;
    counters.settled_bytes += copy_back(b, b->data_sent ? b->data_sent(b) : 0);
    counters.settled_replies++;
    borrow_drop(b);
}

void borrow_settle_all(void)
{
    counters.settles++;
    while (lenders)
        borrow_settle(lenders);
}

int borrow_add(struct borrowing *b, uint64_t at, const uint8_t *src, uint64_t len)
{
    if (at > b->len || len > b->len - at || !b->buf)
        return -1;
    if (len == 0)
        return 1;
    uint32_t n = b->n;
    struct borrowed *last = n ? &b->seg[n - 1] : NULL;
    if (last && last->at + last->len == at && last->src + last->len == src) {
        last->len += (uint32_t)len;     /* the run goes on: one segment */
        counters.borrowed_bytes += len;
        return 1;
    }
    /* Where it goes: segments are kept sorted; one that overlaps an earlier
     * declaration replaces it, so those are settled into the buffer first. */
    uint32_t i = n;
    while (i > 0 && b->seg[i - 1].at >= at + len)
        i--;
    if (i > 0 && b->seg[i - 1].at + b->seg[i - 1].len > at) {
        copy_back(b, 0);
        borrow_drop(b);
        n = i = 0;
    }
    if (n == USBD_MAX_BORROWED) {
        memcpy(b->buf + at, src, len);
        counters.copied_bytes += len;
        return 0;
    }
    memmove(&b->seg[i + 1], &b->seg[i], (n - i) * sizeof b->seg[0]);
    b->seg[i] = (struct borrowed){ .src = src, .at = (uint32_t)at, .len = (uint32_t)len };
    b->n = n + 1;
    if (n == 0)
        link_in(b);
    counters.borrowed_bytes += len;
    return 1;
}

int borrow_iov(const struct borrowing *b, size_t from, size_t to, struct iovec *iov, int max, size_t *bytes)
{
    int k = 0;
    size_t pos = from;
    for (uint32_t i = 0; i < b->n && pos < to && k < max; i++) {
        const struct borrowed *s = &b->seg[i];
        size_t end = (size_t)s->at + s->len;
        if (end <= pos)
            continue;
        if (s->at > pos) {
            size_t stop = s->at < to ? s->at : to;
            iov[k++] = (struct iovec){ b->buf + pos, stop - pos };
            pos = stop;
            if (pos == to || k == max)
                break;
        }
        size_t stop = end < to ? end : to;
        iov[k++] = (struct iovec){ (void *)(s->src + (pos - s->at)), stop - pos };
        pos = stop;
    }
    if (pos < to && k < max) {
        iov[k++] = (struct iovec){ b->buf + pos, to - pos };
        pos = to;
    }
    *bytes = pos - from;
    return k;
}

/* ---- The C API (usbd.h) ---- */

void usbd_settle_borrowed(void)
{
    borrow_settle_all();
}

void usbd_borrow_get_stats(usbd_borrow_stats *out)
{
    *out = counters;
    out->borrowing = 0;
    for (struct borrowing *b = lenders; b; b = b->next)
        out->borrowing++;
}

/* Sparse memory (sparse.c; Lua: usbd.sparse): a zeroed store of size
 * bytes that takes memory only for what is written, in chunks, and gives
 * it back when a range is discarded; reads of unwritten ranges zero the
 * caller's buffer without touching the store. Read, write and discard
 * return 0, or -EINVAL (outside the store) or -ENOMEM. */
#ifndef USBD_SPARSE_H
#define USBD_SPARSE_H

#include <stddef.h>
#include <stdint.h>

typedef struct usbd_sparse usbd_sparse;

typedef struct usbd_sparse_stats {
    uint64_t size;
    uint64_t allocated;   /* bytes of chunks holding data */
    uint64_t pooled;      /* bytes of freed chunks kept for reuse */
    uint64_t mapped;      /* address space reserved for chunks */
    uint64_t tables;      /* bytes of the chunk tables */
    uint64_t chunk_size;
} usbd_sparse_stats;

enum {
    USBD_SPARSE_HOLE = 1,    /* as NBD_STATE_HOLE */
    USBD_SPARSE_ZERO = 2     /* as NBD_STATE_ZERO */
};

usbd_sparse *usbd_sparse_new(uint64_t size);  /* NULL if it cannot be had */
void usbd_sparse_free(usbd_sparse *s);
uint64_t usbd_sparse_size(const usbd_sparse *s);
int usbd_sparse_read(usbd_sparse *s, uint8_t *dst, size_t len, uint64_t pos);
int usbd_sparse_write(usbd_sparse *s, const uint8_t *src, size_t len, uint64_t pos);
/* Zero [pos, pos+len): whole chunks are freed, the ends cleared. */
int usbd_sparse_discard(usbd_sparse *s, uint64_t pos, uint64_t len);
/* Runs from pos, at most max: out[2k] bytes with flags out[2k+1] (0 data,
 * or HOLE|ZERO). Returns how many, covering at least 1 byte; or -EINVAL. */
int usbd_sparse_extents(usbd_sparse *s, uint64_t pos, uint64_t len, uint64_t *out, int max);
void usbd_sparse_get_stats(const usbd_sparse *s, usbd_sparse_stats *out);

#endif

/* Request payload buffers (buffer_*): page-aligned, recycled by size class
 * (buffer.h). Devices' own memory is usbd_mem_* (services/mem.c). */
#include <stdint.h>
#include <stdlib.h>

#include "buffer.h"

#define PAGE 4096u

/* Size classes: powers of two from 4 KiB up; larger than the top class is
 * allocated and freed directly. */
#define MIN_SHIFT 12
#define NCLASSES 14                 /* 4 KiB .. 32 MiB */
#define MAX_CACHED (256u << 20)     /* bytes the free lists may hold */

struct free_buf { struct free_buf *next; };
static struct free_buf *free_lists[NCLASSES];
static size_t cached;

static int size_class(size_t len)
{
    int c = 0;
    while (c < NCLASSES && ((size_t)1 << (c + MIN_SHIFT)) < len)
        c++;
    return c;  /* NCLASSES: too large to cache */
}

uint8_t *buffer_get(size_t len)
{
    int c = size_class(len);
    if (c < NCLASSES && free_lists[c]) {
        struct free_buf *b = free_lists[c];
        free_lists[c] = b->next;
        cached -= (size_t)1 << (c + MIN_SHIFT);
        return (uint8_t *)b;
    }
    size_t alloc = c < NCLASSES ? (size_t)1 << (c + MIN_SHIFT) : len;
    void *p;
    if (posix_memalign(&p, PAGE, alloc ? alloc : 1))
        return NULL;
    return p;
}

void buffer_put(uint8_t *ptr, size_t len)
{
    if (!ptr)
        return;
    int c = size_class(len);
    size_t sz = (size_t)1 << (c + MIN_SHIFT);
    if (c >= NCLASSES || cached + sz > MAX_CACHED) {
        free(ptr);
        return;
    }
    struct free_buf *b = (struct free_buf *)ptr;
    b->next = free_lists[c];
    free_lists[c] = b;
    cached += sz;
}

/* For the unit tests (tests/unit/hooks.h): bytes held in the free lists. */
size_t buffer_cached(void)
{
    return cached;
}

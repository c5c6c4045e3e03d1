/* Memory for devices (usbd_mem_*) and for request payloads (buffer_*). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "buffer.h"
#include "usbd.h"

#define PAGE 4096u
/* Regions at least this large are mapped: zero pages cost nothing until
 * written, and discard can give them back. */
#define MAP_THRESHOLD (1u << 20)

uint8_t *usbd_mem_alloc(size_t len)
{
    if (len == 0)
        len = 1;
    if (len >= MAP_THRESHOLD) {
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    void *p;
    if (posix_memalign(&p, PAGE, len))
        return NULL;
    memset(p, 0, len);
    return p;
}

void usbd_mem_free(uint8_t *ptr, size_t len)
{
    if (!ptr)
        return;
    if (len == 0)
        len = 1;
    if (len >= MAP_THRESHOLD)
        munmap(ptr, len);
    else
        free(ptr);
}

void usbd_mem_discard(uint8_t *ptr, size_t len)
{
    /* Whole pages inside the range go back to the system and read as zero
     * afterwards (private anonymous memory); the ragged ends are cleared. */
    uintptr_t start = (uintptr_t)ptr, end = start + len;
    uintptr_t first = (start + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    uintptr_t last = end & ~(uintptr_t)(PAGE - 1);
    if (len >= 16 * PAGE && last > first &&
        madvise((void *)first, last - first, MADV_DONTNEED) == 0) {
        memset(ptr, 0, first - start);
        memset((void *)last, 0, end - last);
        return;
    }
    memset(ptr, 0, len);
}

int usbd_mem_is_zero(const uint8_t *ptr, size_t len)
{
    /* Check the head byte by byte, then compare the rest with itself shifted
     * by 16 bytes: memcmp is vectorised and we touch each byte once or twice. */
    size_t head = len < 16 ? len : 16;
    for (size_t i = 0; i < head; i++)
        if (ptr[i])
            return 0;
    return len <= 16 || memcmp(ptr, ptr + 16, len - 16) == 0;
}

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

size_t buffer_cached(void)
{
    return cached;
}

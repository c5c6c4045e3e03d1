/* Memory for devices (usbd_mem_*): zeroed and page-aligned; large regions
 * are mapped, so that untouched pages cost nothing and discard gives them
 * back. Request payloads have their own recycled buffers (server/buffer.c). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mem.h"

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

int usbd_mem_equal(const uint8_t *a, const uint8_t *b, size_t len)
{
    return memcmp(a, b, len) == 0;
}

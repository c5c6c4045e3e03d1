/* A read-only shared mapping of a file, whose page cache replies borrow
 * (see borrow.c). The mapping reserves address space well past the file's
 * size, so a growing file (a block store that appends) seldom needs a new
 * one; when it does, the old one stays until close, since replies may
 * still point into it. Touching a page past the end of the file raises
 * SIGBUS: resident() hands out only ranges inside the size it last saw. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "borrow.h"
#include "filemap.h"

#define PAGE 4096u
#define MIN_RESERVE (64ull << 30)   /* address space, not memory */
#define MAX_OLD 8

struct usbd_filemap {
    int fd;
    uint8_t *base;
    uint64_t reserved;      /* bytes of address space at base */
    uint64_t size;          /* the file's size, as last seen */
    unsigned char *vec;     /* mincore's answer */
    size_t veclen;
    int nold;
    struct { uint8_t *base; uint64_t len; } old[MAX_OLD];
};

static uint64_t file_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Map at least need bytes (a generous reserve, halved while the system
 * refuses so much address space). */
static int map_reserve(usbd_filemap *m, uint64_t need)
{
    uint64_t want = need * 4 > MIN_RESERVE ? need * 4 : MIN_RESERVE;
    need = (need + PAGE - 1) / PAGE * PAGE;
    if (need == 0)
        need = PAGE;
    for (uint64_t len = want; len >= need; len /= 2) {
        if (len < need * 2)
            len = need;
        void *p = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_NORESERVE, m->fd, 0);
        if (p != MAP_FAILED) {
            if (m->base) {
                if (m->nold == MAX_OLD) {   /* the oldest: settle what may borrow from it */
                    usbd_settle_borrowed();
                    munmap(m->old[0].base, m->old[0].len);
                    memmove(&m->old[0], &m->old[1], (MAX_OLD - 1) * sizeof m->old[0]);
                    m->nold--;
                }
                m->old[m->nold].base = m->base;
                m->old[m->nold++].len = m->reserved;
            }
            m->base = p;
            m->reserved = len;
            return 0;
        }
        if (len == need)
            break;
    }
    return -errno;
}

usbd_filemap *usbd_filemap_open(int fd, char *err, size_t errlen)
{
    usbd_filemap *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "cannot map the file: out of memory");
        return NULL;
    }
    m->fd = dup(fd);
    int e = m->fd < 0 ? -errno : 0;
    if (e == 0) {
        m->size = file_size(m->fd);
        e = map_reserve(m, m->size);
    }
    if (e) {
        snprintf(err, errlen, "cannot map the file: %s", strerror(-e));
        if (m->fd >= 0)
            close(m->fd);
        free(m);
        return NULL;
    }
    return m;
}

void usbd_filemap_close(usbd_filemap *m)
{
    if (!m)
        return;
    usbd_settle_borrowed();
    munmap(m->base, m->reserved);
    for (int i = 0; i < m->nold; i++)
        munmap(m->old[i].base, m->old[i].len);
    close(m->fd);
    free(m->vec);
    free(m);
}

const uint8_t *usbd_filemap_resident(usbd_filemap *m, uint64_t pos, uint64_t len)
{
    if (len == 0 || pos + len < pos)
        return NULL;
    if (pos + len > m->size) {
        m->size = file_size(m->fd);
        if (pos + len > m->size)
            return NULL;
    }
    if (pos + len > m->reserved && map_reserve(m, m->size) != 0)
        return NULL;
    uint64_t first = pos / PAGE * PAGE;
    size_t pages = (size_t)((pos + len - first + PAGE - 1) / PAGE);
    if (pages > m->veclen) {
        unsigned char *v = realloc(m->vec, pages);
        if (!v)
            return NULL;
        m->vec = v;
        m->veclen = pages;
    }
    if (mincore(m->base + first, pages * PAGE, m->vec) != 0)
        return NULL;
    for (size_t i = 0; i < pages; i++)
        if (!(m->vec[i] & 1))
            return NULL;
    return m->base + pos;
}

/* hashindex.c: an advisory table from content hashes to ids (the dedupdisk's
 * hot index), in a file mapped MAP_SHARED.
 *
 * The page cache keeps what was written across a restart and a kill -9, so
 * the table survives them without ever being synced. It is advisory: an
 * entry may be missing or stale (a power loss, a torn put, an eviction), and
 * the caller checks every hit against its own records. So nothing here has
 * to be crash-consistent, and a full window simply loses an entry.
 *
 * Open addressing: a hash's home slot comes from its first 8 bytes (the hash
 * is uniformly random), and it may live in any of the WINDOW slots from
 * there (wrapping). Lookups search the whole window: removals leave holes.
 * An id of 0 marks an empty slot.
 *
 * Every put lands on a random page, and a write fault on a page of a sparse
 * file costs the file system a block allocation (~10 us, a quarter of a
 * unique write's Lua thread on a fresh store). So a new table is allocated
 * in full and its pages mapped writable at once (MADV_POPULATE_WRITE), and
 * a reopened one is mapped in (MADV_POPULATE_READ): after that a put faults
 * only when writeback has just cleaned its page. Where populating fails
 * (an old kernel) the table works fault by fault; a disk without room for
 * the new table fails the open. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* fallocate */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "usbd.h"

#define WINDOW 16
#define MIN_SLOTS 64
static const char MAGIC[8] = "usbdhix1";

struct slot {
    uint8_t hash[16];
    uint64_t id;
};

struct header {
    char magic[8];
    uint64_t slots;
};

struct usbd_hashindex {
    int fd;
    uint8_t *map;           /* the whole file: header, then the slots */
    size_t size;
    struct slot *slot;
    uint64_t slots;
};

_Static_assert(sizeof(struct slot) == USBD_HASHINDEX_ENTRY, "entry size");
_Static_assert(sizeof(struct header) <= USBD_HASHINDEX_HEADER, "header size");

usbd_hashindex *usbd_hashindex_open(const char *path, uint64_t bytes, int *fresh, char *err, size_t errlen)
{
    uint64_t slots = bytes / USBD_HASHINDEX_ENTRY;
    if (slots < MIN_SLOTS)
        slots = MIN_SLOTS;
    if (slots > (UINT64_MAX >> 2) / USBD_HASHINDEX_ENTRY) {
        snprintf(err, errlen, "%s", strerror(EFBIG));
        return NULL;
    }
    uint64_t size = USBD_HASHINDEX_HEADER + slots * USBD_HASHINDEX_ENTRY;
    usbd_hashindex *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errlen, "%s", strerror(ENOMEM));
        return NULL;
    }
    x->map = MAP_FAILED;
    x->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    struct stat st;
    if (x->fd < 0 || fstat(x->fd, &st) < 0)
        goto fail;
    x->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, x->fd, 0);
    if (x->map == MAP_FAILED)
        goto fail;
    x->size = size;
    x->slot = (struct slot *)(x->map + USBD_HASHINDEX_HEADER);
    x->slots = slots;

    /* The header is read only when the size matches: past the file's end
     * the mapping's pages fault (SIGBUS). */
    struct header *h = (struct header *)x->map;
    *fresh = !((uint64_t)st.st_size == size && !memcmp(h->magic, MAGIC, sizeof MAGIC) && h->slots == slots);
    if (*fresh) {
        /* Truncating to 0 first drops every old byte: the table starts as
         * one hole of zeroes (all slots empty). */
        if (ftruncate(x->fd, 0) < 0 || ftruncate(x->fd, (off_t)size) < 0)
            goto fail;
        /* Its blocks now: a put never meets a full disk (SIGBUS). */
        if (fallocate(x->fd, 0, 0, (off_t)size) < 0 && errno == ENOSPC)
            goto fail;
        (void)!madvise(x->map, size, MADV_POPULATE_WRITE);
        h->slots = slots;
        memcpy(h->magic, MAGIC, sizeof MAGIC);
    } else {
        (void)!madvise(x->map, size, MADV_POPULATE_READ);
    }
    return x;

fail:
    snprintf(err, errlen, "%s", strerror(errno));
    usbd_hashindex_close(x);
    return NULL;
}

void usbd_hashindex_close(usbd_hashindex *x)
{
    if (!x)
        return;
    if (x->map != MAP_FAILED)
        munmap(x->map, x->size);
    if (x->fd >= 0)
        close(x->fd);
    free(x);
}

uint64_t usbd_hashindex_slots(const usbd_hashindex *x)
{
    return x->slots;
}

static uint64_t home(const usbd_hashindex *x, const uint8_t *hash)
{
    uint64_t h;
    memcpy(&h, hash, sizeof h);
    return h % x->slots;
}

/* The slot holding hash, or NULL. */
static struct slot *find(const usbd_hashindex *x, const uint8_t *hash)
{
    uint64_t i = home(x, hash);
    for (int k = 0; k < WINDOW; k++, i = i + 1 == x->slots ? 0 : i + 1) {
        struct slot *s = &x->slot[i];
        if (s->id && !memcmp(s->hash, hash, sizeof s->hash))
            return s;
    }
    return NULL;
}

/* A NULL hash (a nil from Lua) is nobody's: get finds nothing, put and
 * remove change nothing, and lookup without hashes or ids does nothing. */
uint64_t usbd_hashindex_get(const usbd_hashindex *x, const uint8_t *hash)
{
    if (!hash)
        return 0;
    const struct slot *s = find(x, hash);
    return s ? s->id : 0;
}

/* Many at once (lookup, remove_many): every window is asked of the memory
 * AHEAD entries before it is used, so their cache misses overlap instead
 * of coming one after another (a table far larger than the caches misses
 * on nearly every access). */
enum { AHEAD = 16 };

static void prefetch_window(const usbd_hashindex *x, const uint8_t *hash)
{
    uint64_t h = home(x, hash);
    const uint8_t *p = (const uint8_t *)&x->slot[h];
    size_t bytes = h + WINDOW <= x->slots ? WINDOW * sizeof(struct slot) : (x->slots - h) * sizeof(struct slot);
    for (size_t at = 0; at < bytes; at += 64)
        __builtin_prefetch(p + at);
}

void usbd_hashindex_lookup(const usbd_hashindex *x, const uint8_t *hashes, size_t n, uint64_t *ids)
{
    if (!hashes || !ids)
        return;
    for (size_t i = 0; i < n + AHEAD; i++) {
        if (i < n)
            prefetch_window(x, hashes + 16 * i);
        if (i >= AHEAD)
            ids[i - AHEAD] = usbd_hashindex_get(x, hashes + 16 * (i - AHEAD));
    }
}

/* (a rewrite of scattered blocks removes a hash per block) */
void usbd_hashindex_remove_many(usbd_hashindex *x, const uint8_t *const *hashes, const uint64_t *ids, size_t n)
{
    if (!hashes || !ids)
        return;
    for (size_t i = 0; i < n + AHEAD; i++) {
        if (i < n && hashes[i])
            prefetch_window(x, hashes[i]);
        if (i >= AHEAD)
            usbd_hashindex_remove(x, hashes[i - AHEAD], ids[i - AHEAD]);
    }
}

void usbd_hashindex_put(usbd_hashindex *x, const uint8_t *hash, uint64_t id)
{
    if (!id || !hash)
        return;     /* 0 marks an empty slot: no entry holds it */
    struct slot *s = find(x, hash);
    uint64_t h = home(x, hash), i = h;
    for (int k = 0; !s && k < WINDOW; k++, i = i + 1 == x->slots ? 0 : i + 1)
        if (!x->slot[i].id)
            s = &x->slot[i];
    if (!s)
        s = &x->slot[h];    /* the window is full: evict its home entry */
    memcpy(s->hash, hash, sizeof s->hash);
    s->id = id;
}

void usbd_hashindex_remove(usbd_hashindex *x, const uint8_t *hash, uint64_t id)
{
    if (!hash)
        return;
    struct slot *s = find(x, hash);
    if (s && s->id == id)
        memset(s, 0, sizeof *s);
}

void usbd_hashindex_clear(usbd_hashindex *x)
{
    /* Zeroing the slots' whole pages in the file system keeps their blocks
     * (as at open) and writes nothing; they are then mapped writable again.
     * The part of the first page after the header, and any file system
     * that cannot zero a range, take a memset. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t first = (USBD_HASHINDEX_HEADER + page - 1) / page * page;
    if (first > x->size)
        first = x->size;
    memset(x->map + USBD_HASHINDEX_HEADER, 0, first - USBD_HASHINDEX_HEADER);
    if (first == x->size)
        return;
    if (fallocate(x->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)first, (off_t)(x->size - first)) == 0)
        (void)!madvise(x->map + first, x->size - first, MADV_POPULATE_WRITE);
    else
        memset(x->map + first, 0, x->size - first);
}

/* hashindex.c: an advisory table from content hashes to ids (the dedupdisk's
 * hot index), in a file mapped MAP_SHARED.
 *
 * The page cache keeps what was written across a restart and a kill -9, so
 * the table survives them without ever being synced. It is advisory: an
 * entry may be missing or stale (a power loss, an eviction), or belong to
 * another hash (see tags below), and the caller checks every hit against
 * its own records. So nothing here has to be crash-consistent, and a full
 * bucket simply loses an entry.
 *
 * Buckets of one cache line: a hash's home bucket (8 entries, 64 bytes,
 * aligned) comes from its first 8 bytes (the hash is uniformly random), and
 * its entry lives there or nowhere. An entry is one u64: the id (40 bits)
 * and a tag of 24 more bits of the hash. So a lookup, hit or miss, reads
 * one line: in a table far larger than the caches that is one miss, where
 * 24-byte entries in a 16-slot window read six or seven (18% of a unique
 * write's Lua thread went there). A lookup of a hash that shares its home
 * bucket and tag with another entry (about 1 in 2^21 per miss in a full
 * bucket) answers that entry's id: the caller's check rejects it. An entry
 * of 0 is empty.
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

#include "hashindex.h"

#define BUCKET USBD_HASHINDEX_BUCKET
#define MIN_BUCKETS 8
#define ID_BITS 40
#define ID_MASK ((UINT64_C(1) << ID_BITS) - 1)
static const char MAGIC[8] = "usbdhix2";   /* 1: 24-byte entries, remade */

struct header {
    char magic[8];
    uint64_t slots;
};

struct usbd_hashindex {
    int fd;
    uint8_t *map;           /* the whole file: header, then the buckets */
    size_t size;
    uint64_t *entry;
    uint64_t buckets;
    uint64_t used;          /* entries not empty (counted at open) */
    uint64_t evicted;       /* puts that pushed another entry out, since open */
};

_Static_assert(sizeof(uint64_t) == USBD_HASHINDEX_ENTRY, "entry size");
_Static_assert(BUCKET * USBD_HASHINDEX_ENTRY == 64, "a bucket is a cache line");
_Static_assert(USBD_HASHINDEX_HEADER % 64 == 0, "buckets start on a line");
_Static_assert(sizeof(struct header) <= USBD_HASHINDEX_HEADER, "header size");

usbd_hashindex *usbd_hashindex_open(const char *path, uint64_t bytes, int *fresh, char *err, size_t errlen)
{
    uint64_t buckets = bytes / (BUCKET * USBD_HASHINDEX_ENTRY);
    if (buckets < MIN_BUCKETS)
        buckets = MIN_BUCKETS;
    uint64_t slots = buckets * BUCKET;
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
    x->entry = (uint64_t *)(x->map + USBD_HASHINDEX_HEADER);
    x->buckets = buckets;

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
        for (uint64_t i = 0; i < slots; i++)
            x->used += x->entry[i] != 0;
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
    return x->buckets * BUCKET;
}

uint64_t usbd_hashindex_used(const usbd_hashindex *x)
{
    return x->used;
}

uint64_t usbd_hashindex_evicted(const usbd_hashindex *x)
{
    return x->evicted;
}

/* The first entry of hash's bucket. */
static uint64_t *bucket(const usbd_hashindex *x, const uint8_t *hash)
{
    uint64_t h;
    memcpy(&h, hash, sizeof h);
    return &x->entry[h % x->buckets * BUCKET];
}

/* Bytes 8-10 of the hash, where an entry keeps them. */
static uint64_t tag(const uint8_t *hash)
{
    return ((uint64_t)hash[8] | (uint64_t)hash[9] << 8 | (uint64_t)hash[10] << 16) << ID_BITS;
}

/* The entry holding hash's tag in its bucket, or NULL. */
static uint64_t *find(const usbd_hashindex *x, const uint8_t *hash)
{
    uint64_t *b = bucket(x, hash), t = tag(hash);
    for (int k = 0; k < BUCKET; k++)
        if (b[k] && (b[k] & ~ID_MASK) == t)
            return &b[k];
    return NULL;
}

/* A NULL hash (a nil from Lua) is nobody's: get finds nothing, put and
 * remove change nothing, and lookup without hashes or ids does nothing. */
uint64_t usbd_hashindex_get(const usbd_hashindex *x, const uint8_t *hash)
{
    if (!hash)
        return 0;
    const uint64_t *e = find(x, hash);
    return e ? *e & ID_MASK : 0;
}

/* Many at once (lookup, remove_many): every bucket is asked of the memory
 * AHEAD entries before it is used, so their cache misses overlap instead
 * of coming one after another. */
enum { AHEAD = 16 };

void usbd_hashindex_lookup(const usbd_hashindex *x, const uint8_t *hashes, size_t n, uint64_t *ids)
{
    if (!hashes || !ids)
        return;
    for (size_t i = 0; i < n + AHEAD; i++) {
        if (i < n)
            __builtin_prefetch(bucket(x, hashes + 16 * i));
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
            __builtin_prefetch(bucket(x, hashes[i]));
        if (i >= AHEAD)
            usbd_hashindex_remove(x, hashes[i - AHEAD], ids[i - AHEAD]);
    }
}

void usbd_hashindex_put(usbd_hashindex *x, const uint8_t *hash, uint64_t id)
{
    if (!id || id > ID_MASK || !hash)
        return;     /* 0 marks an empty entry; beyond 40 bits: not kept */
    uint64_t *e = find(x, hash), *b = bucket(x, hash), t = tag(hash);
    for (int k = 0; !e && k < BUCKET; k++)
        if (!b[k]) {
            e = &b[k];
            x->used++;
        }
    if (!e) {
        e = &b[(t >> ID_BITS) % BUCKET];    /* the bucket is full: evict one */
        x->evicted++;
    }
    *e = t | id;
}

void usbd_hashindex_remove(usbd_hashindex *x, const uint8_t *hash, uint64_t id)
{
    if (!hash)
        return;
    uint64_t *e = find(x, hash);
    if (e && (*e & ID_MASK) == id) {
        *e = 0;
        x->used--;
    }
}

void usbd_hashindex_clear(usbd_hashindex *x)
{
    /* Zeroing the slots' whole pages in the file system keeps their blocks
     * (as at open) and writes nothing; they are then mapped writable again.
     * The part of the first page after the header, and any file system
     * that cannot zero a range, take a memset. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t first = (USBD_HASHINDEX_HEADER + page - 1) / page * page;
    x->used = 0;
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

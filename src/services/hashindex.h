/* An advisory table from 16-byte content hashes (XXH3-128) to ids, in a
 * file mapped MAP_SHARED: it survives a restart and a kill -9 (the page
 * cache keeps it) and is never synced. An entry may be missing or stale,
 * or another hash's: the caller validates every hit. Ids above 2^40 - 1 are
 * not kept. All calls run on the calling thread (hashindex.c; Lua:
 * usbd.dedup.hashindex). */
#ifndef USBD_HASHINDEX_H
#define USBD_HASHINDEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct usbd_hashindex usbd_hashindex;
enum {
    USBD_HASHINDEX_HEADER = 64,     /* bytes before the first entry */
    USBD_HASHINDEX_ENTRY = 8,       /* u64: id (40 bits), 24 bits of the hash */
    USBD_HASHINDEX_BUCKET = 8       /* entries a hash may be in: 64 bytes */
};
/* Open (creating or resizing) the table file at path with room for about
 * bytes of entries (at least 64). A file absent, of another size or with a
 * bad header is made empty and *fresh set to 1, else 0. NULL with an
 * errno-style message in err on failure. */
usbd_hashindex *usbd_hashindex_open(const char *path, uint64_t bytes, int *fresh, char *err, size_t errlen);
void usbd_hashindex_close(usbd_hashindex *x);           /* munmap + close, no msync */
uint64_t usbd_hashindex_slots(const usbd_hashindex *x);
/* Entries not empty; puts since open that evicted another entry (a full
 * bucket: that content's duplicates are no longer found). */
uint64_t usbd_hashindex_used(const usbd_hashindex *x);
uint64_t usbd_hashindex_evicted(const usbd_hashindex *x);
/* ids[i] = the id stored for hashes + 16*i, or 0 (ids are never 0). */
void usbd_hashindex_lookup(const usbd_hashindex *x, const uint8_t *hashes, size_t n, uint64_t *ids);
uint64_t usbd_hashindex_get(const usbd_hashindex *x, const uint8_t *hash);
/* hash -> id (replacing its entry, else an empty one in its bucket, else
 * evicting one of the bucket's). */
void usbd_hashindex_put(usbd_hashindex *x, const uint8_t *hash, uint64_t id);
/* Drop hash's entry if it holds id (an entry since re-pointed stays). */
void usbd_hashindex_remove(usbd_hashindex *x, const uint8_t *hash, uint64_t id);
/* Removes of n entries (hashes[i], ids[i]; a NULL hash: none), buckets
 * prefetched ahead as lookup does. */
void usbd_hashindex_remove_many(usbd_hashindex *x, const uint8_t *const *hashes, const uint64_t *ids, size_t n);
/* Empty it (the caller rebuilds it). */
void usbd_hashindex_clear(usbd_hashindex *x);

#endif

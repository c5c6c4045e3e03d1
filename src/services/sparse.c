/* Sparse memory (usbd_sparse_*): a device's bytes kept in 64 KiB chunks
 * that exist only once written.
 *
 * A two-level table maps a chunk's index to its memory: the top level has
 * one pointer per 64 MiB, each second-level table one per chunk, created
 * when its first chunk is. A chunk that was never written, or was
 * discarded whole, has no memory: reads of it zero the caller's buffer and
 * touch nothing of ours, which matters on kernels without a shared zero
 * page, where merely reading never-written anonymous memory allocates it.
 * Data moves in one memcpy between the caller's buffer and the chunk.
 *
 * Chunk memory is carved from large private mappings (slabs), so a big
 * store does not need one mapping per chunk (the kernel allows ~65k). A
 * freed chunk goes back to the system (MADV_DONTNEED) and its address onto
 * a list for reuse, reading as zeroes until written; a few freed chunks
 * are instead kept resident, because writing into fresh memory costs a
 * page fault per 4 KiB. Used from the Lua thread only. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mem.h"
#include "sparse.h"

#define CHUNK_SHIFT 16
#define CHUNK ((uint64_t)1 << CHUNK_SHIFT)        /* 64 KiB */
#define TABLE_SHIFT 10
#define TABLE_N ((uint64_t)1 << TABLE_SHIFT)      /* chunks per table: 64 MiB */
#define SLAB ((size_t)32 << 20)                   /* chunk memory mapped at a time */
#define WARM_MAX 64                               /* freed chunks kept resident: 4 MiB */

struct table {
    uint32_t used;               /* chunks present: the table goes when 0 */
    uint8_t *chunk[TABLE_N];
};

struct usbd_sparse {
    uint64_t size;
    uint64_t ntables;
    struct table **tables;
    uint64_t tables_used;        /* tables that exist */
    uint64_t chunks;             /* chunks holding data */
    /* Chunk memory. */
    uint8_t **slabs;
    size_t nslabs, slabs_cap;
    size_t slab_used;            /* bytes handed out of the newest slab */
    uint8_t **cold;              /* freed, given back: addresses only */
    size_t ncold, cold_cap;
    uint8_t *warm[WARM_MAX];     /* freed, still resident, not zeroed */
    size_t nwarm;
};

usbd_sparse *usbd_sparse_new(uint64_t size)
{
    if (size > ((uint64_t)1 << 62))
        return NULL;
    usbd_sparse *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->size = size;
    s->ntables = (size + (CHUNK << TABLE_SHIFT) - 1) >> (CHUNK_SHIFT + TABLE_SHIFT);
    /* calloc maps a large top level lazily: it costs only what is used. */
    s->tables = calloc(s->ntables ? s->ntables : 1, sizeof *s->tables);
    if (!s->tables) {
        free(s);
        return NULL;
    }
    return s;
}

void usbd_sparse_free(usbd_sparse *s)
{
    if (!s)
        return;
    for (uint64_t t = 0, left = s->tables_used; left && t < s->ntables; t++)
        if (s->tables[t]) {
            free(s->tables[t]);
            left--;
        }
    free(s->tables);
    for (size_t i = 0; i < s->nslabs; i++)
        munmap(s->slabs[i], SLAB);
    free(s->slabs);
    free(s->cold);
    free(s);
}

/* Memory for one chunk; *dirty says it holds old bytes (else it reads as
 * zeroes). NULL if none can be had. */
static uint8_t *chunk_get(usbd_sparse *s, bool *dirty)
{
    *dirty = false;
    if (s->nwarm) {
        *dirty = true;
        return s->warm[--s->nwarm];
    }
    if (s->ncold)
        return s->cold[--s->ncold];
    if (s->nslabs == 0 || s->slab_used == SLAB) {
        if (s->nslabs == s->slabs_cap) {
            size_t cap = s->slabs_cap ? 2 * s->slabs_cap : 16;
            uint8_t **n = realloc(s->slabs, cap * sizeof *n);
            if (!n)
                return NULL;
            s->slabs = n;
            s->slabs_cap = cap;
        }
        void *p = mmap(NULL, SLAB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        /* Transparent huge pages would make a 4 KiB write cost 2 MiB and
         * keep freed chunks resident. */
        madvise(p, SLAB, MADV_NOHUGEPAGE);
        s->slabs[s->nslabs++] = p;
        s->slab_used = 0;
    }
    uint8_t *c = s->slabs[s->nslabs - 1] + s->slab_used;
    s->slab_used += CHUNK;
    return c;
}

static int chunk_put(usbd_sparse *s, uint8_t *c)
{
    if (s->nwarm < WARM_MAX) {
        s->warm[s->nwarm++] = c;
        return 0;
    }
    if (s->ncold == s->cold_cap) {
        size_t cap = s->cold_cap ? 2 * s->cold_cap : 256;
        uint8_t **n = realloc(s->cold, cap * sizeof *n);
        if (!n)
            return -ENOMEM;  /* the chunk stays where it was */
        s->cold = n;
        s->cold_cap = cap;
    }
    madvise(c, CHUNK, MADV_DONTNEED);
    s->cold[s->ncold++] = c;
    return 0;
}

/* The slot of chunk i, or NULL if its table does not exist (and create is
 * false, or it cannot be made). */
static uint8_t **slot(usbd_sparse *s, uint64_t i, bool create)
{
    struct table **t = &s->tables[i >> TABLE_SHIFT];
    if (!*t) {
        if (!create || !(*t = calloc(1, sizeof **t)))
            return NULL;
        s->tables_used++;
    }
    return &(*t)->chunk[i & (TABLE_N - 1)];
}

/* A table whose last chunk went is freed. */
static void table_check(usbd_sparse *s, uint64_t i)
{
    struct table **t = &s->tables[i >> TABLE_SHIFT];
    if ((*t)->used == 0) {
        free(*t);
        *t = NULL;
        s->tables_used--;
    }
}

/* Forget chunk i (its slot is *sl): its memory, and its table if emptied. */
static void drop(usbd_sparse *s, uint64_t i, uint8_t **sl)
{
    if (chunk_put(s, *sl) < 0) {
        memset(*sl, 0, CHUNK);  /* cannot free it: keep it, zeroed */
        return;
    }
    *sl = NULL;
    s->chunks--;
    s->tables[i >> TABLE_SHIFT]->used--;
    table_check(s, i);
}

static bool in_range(const usbd_sparse *s, uint64_t pos, uint64_t len)
{
    return pos <= s->size && len <= s->size - pos;
}

uint64_t usbd_sparse_size(const usbd_sparse *s)
{
    return s->size;
}

int usbd_sparse_read(usbd_sparse *s, uint8_t *dst, size_t len, uint64_t pos)
{
    if (!in_range(s, pos, len))
        return -EINVAL;
    while (len) {
        uint64_t i = pos >> CHUNK_SHIFT, off = pos & (CHUNK - 1);
        size_t n = CHUNK - off < len ? CHUNK - off : len;
        uint8_t **sl = slot(s, i, false);
        if (sl && *sl)
            memcpy(dst, *sl + off, n);
        else
            memset(dst, 0, n);
        dst += n, pos += n, len -= n;
    }
    return 0;
}

int usbd_sparse_write(usbd_sparse *s, const uint8_t *src, size_t len, uint64_t pos)
{
    if (!in_range(s, pos, len))
        return -EINVAL;
    while (len) {
        uint64_t i = pos >> CHUNK_SHIFT, off = pos & (CHUNK - 1);
        size_t n = CHUNK - off < len ? CHUNK - off : len;
        uint8_t **sl = slot(s, i, false);
        if (sl && *sl) {
            if (n == CHUNK && usbd_mem_is_zero(src, n))
                drop(s, i, sl);          /* a whole chunk of zeroes: a hole */
            else
                memcpy(*sl + off, src, n);
        } else if (!usbd_mem_is_zero(src, n)) {
            /* Zeroes need no memory: a hole already reads as them. */
            if (!(sl = slot(s, i, true)))
                return -ENOMEM;
            bool dirty;
            uint8_t *c = chunk_get(s, &dirty);
            if (!c) {
                table_check(s, i);
                return -ENOMEM;
            }
            if (dirty) {
                memset(c, 0, off);
                memset(c + off + n, 0, CHUNK - off - n);
            }
            memcpy(c + off, src, n);
            *sl = c;
            s->chunks++;
            s->tables[i >> TABLE_SHIFT]->used++;
        }
        src += n, pos += n, len -= n;
    }
    return 0;
}

int usbd_sparse_discard(usbd_sparse *s, uint64_t pos, uint64_t len)
{
    if (!in_range(s, pos, len))
        return -EINVAL;
    while (len) {
        uint64_t i = pos >> CHUNK_SHIFT, off = pos & (CHUNK - 1);
        uint64_t n = CHUNK - off < len ? CHUNK - off : len;
        if (!s->tables[i >> TABLE_SHIFT]) {
            /* A whole table's range is a hole: skip to its end. */
            uint64_t end = ((i >> TABLE_SHIFT) + 1) << (TABLE_SHIFT + CHUNK_SHIFT);
            n = end - pos < len ? end - pos : len;
        } else {
            uint8_t **sl = slot(s, i, false);
            if (*sl) {
                if (n == CHUNK)
                    drop(s, i, sl);
                else
                    memset(*sl + off, 0, n);
            }
        }
        pos += n, len -= n;
    }
    return 0;
}

int usbd_sparse_extents(usbd_sparse *s, uint64_t pos, uint64_t len, uint64_t *out, int max)
{
    if (!in_range(s, pos, len) || max < 1)
        return -EINVAL;
    int runs = 0;
    while (len) {
        uint64_t i = pos >> CHUNK_SHIFT, off = pos & (CHUNK - 1);
        uint64_t n;
        uint64_t flags;
        if (!s->tables[i >> TABLE_SHIFT]) {
            uint64_t end = ((i >> TABLE_SHIFT) + 1) << (TABLE_SHIFT + CHUNK_SHIFT);
            n = end - pos;
            flags = USBD_SPARSE_HOLE | USBD_SPARSE_ZERO;
        } else {
            n = CHUNK - off;
            flags = s->tables[i >> TABLE_SHIFT]->chunk[i & (TABLE_N - 1)]
                        ? 0 : USBD_SPARSE_HOLE | USBD_SPARSE_ZERO;
        }
        if (n > len)
            n = len;
        if (runs && out[2 * runs - 1] == flags) {
            out[2 * runs - 2] += n;
        } else {
            if (runs == max)
                break;
            out[2 * runs] = n;
            out[2 * runs + 1] = flags;
            runs++;
        }
        pos += n, len -= n;
    }
    return runs;
}

void usbd_sparse_get_stats(const usbd_sparse *s, usbd_sparse_stats *out)
{
    out->size = s->size;
    out->allocated = s->chunks * CHUNK;
    out->pooled = s->nwarm * CHUNK;
    out->mapped = s->nslabs * SLAB;
    out->tables = s->tables_used * sizeof(struct table) + s->ntables * sizeof *s->tables;
    out->chunk_size = CHUNK;
}

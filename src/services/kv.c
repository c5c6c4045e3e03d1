/* kv.c: a RocksDB key-value store for devices (dedupdisk's metadata).
 *
 * Opening and closing run on the calling thread (a device's open and
 * close); reads, scans, writes and WAL syncs are jobs (usbd_job_kv_*), run
 * off the Lua thread like file I/O, so only the calling request waits.
 * A RocksDB error fails the job with EIO and logs RocksDB's message. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rocksdb/c.h>
#include <xxhash.h>

#include "jobs.h"
#include "kv.h"
#include "services.h"

struct usbd_kv {
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf;  /* the default one, for batched multi-get */
    rocksdb_options_t *options;
    rocksdb_block_based_table_options_t *table;
    rocksdb_cache_t *cache;
    rocksdb_filterpolicy_t *bloom;  /* owned by table once set */
    rocksdb_readoptions_t *read;
    rocksdb_writeoptions_t *write, *write_sync;
    char *path;
    /* A write failed: RocksDB's log may be in error, and syncing it then
     * aborts the process (an assertion in RocksDB's log writer), so syncs
     * fail with EIO until the store is opened again. */
    _Atomic bool write_failed;
};

struct usbd_kv_batch {
    rocksdb_writebatch_t *wb;
};

/* ---- Patches: every store's merge operator ---------------------------
 * An operand is a run of patches, each a u32 offset and a u16 length
 * (little-endian) and that many bytes, written over the value at the
 * offset (the value grown with zeroes to reach it; no value: an empty
 * one). So a caller that keeps a large value in memory and changes a few
 * of its bytes writes those alone. (The dedupdisk tried it for its 1.3 KiB
 * records and kept whole puts: its cost is per key, not per byte; see
 * BENCHMARKS.md.) Operands in order combine by joining them. A malformed
 * operand is refused when it is added to a batch: RocksDB answers a merge
 * that fails by throwing a C++ exception, which would end the process on a
 * worker thread. */
enum { PATCH_HEAD = 6, PATCH_VALUE_MAX = 1 << 24 };

static uint32_t le32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static size_t le16(const char *p)
{
    return (unsigned char)p[0] | (size_t)(unsigned char)p[1] << 8;
}

static bool valid_patches(const char *op, size_t oplen)
{
    while (oplen > 0) {
        if (oplen < PATCH_HEAD)
            return false;
        size_t at = le32(op), n = le16(op + 4);
        if (n > oplen - PATCH_HEAD || at + n > PATCH_VALUE_MAX)
            return false;
        op += PATCH_HEAD + n;
        oplen -= PATCH_HEAD + n;
    }
    return true;
}

/* Apply operand op (valid) to the value in *v (*len bytes, *cap
 * allocated); false: out of memory. */
static bool apply_patches(char **v, size_t *len, size_t *cap, const char *op, size_t oplen)
{
    while (oplen > 0) {
        size_t at = le32(op), n = le16(op + 4);
        op += PATCH_HEAD;
        oplen -= PATCH_HEAD;
        if (at + n > *cap) {
            size_t cap2 = *cap * 2 > at + n ? *cap * 2 : at + n;
            char *v2 = realloc(*v, cap2);
            if (!v2)
                return false;
            *v = v2;
            *cap = cap2;
        }
        if (at + n > *len) {
            memset(*v + *len, 0, at + n - *len);
            *len = at + n;
        }
        memcpy(*v + at, op, n);
        op += n;
        oplen -= n;
    }
    return true;
}

static char *patches_full_merge(void *state, const char *key, size_t klen, const char *old, size_t oldlen,
                                const char *const *ops, const size_t *oplens, int nops,
                                unsigned char *success, size_t *newlen)
{
    (void)state; (void)key; (void)klen;
    size_t len = old ? oldlen : 0, cap = len > 64 ? len : 64;
    char *v = malloc(cap);
    *success = 0;
    if (!v)
        return NULL;
    if (len)
        memcpy(v, old, len);
    for (int i = 0; i < nops; i++) {
        if (!apply_patches(&v, &len, &cap, ops[i], oplens[i])) {
            free(v);
            return NULL;
        }
    }
    *success = 1;
    *newlen = len;
    return v;
}

static char *patches_partial_merge(void *state, const char *key, size_t klen,
                                   const char *const *ops, const size_t *oplens, int nops,
                                   unsigned char *success, size_t *newlen)
{
    (void)state; (void)key; (void)klen;
    size_t len = 0;
    for (int i = 0; i < nops; i++)
        len += oplens[i];
    char *v = malloc(len ? len : 1);
    *success = 0;
    if (!v)
        return NULL;
    len = 0;
    for (int i = 0; i < nops; i++) {
        memcpy(v + len, ops[i], oplens[i]);
        len += oplens[i];
    }
    *success = 1;
    *newlen = len;
    return v;
}

static void patches_free(void *state, const char *v, size_t len)
{
    (void)state; (void)len;
    free((char *)v);
}

static void patches_destroy(void *state) { (void)state; }
static const char *patches_name(void *state) { (void)state; return "usbd.patches"; }

/* RocksDB's message, logged; the job fails with EIO. */
static int failed(const char *what, char *msg)
{
    log_msg(0, "rocksdb %s: %s", what, msg);
    rocksdb_free(msg);
    return EIO;
}

static usbd_kv *open_store(const char *path, const usbd_kv_options *opts, char *err, size_t errlen)
{
    if (!path || !opts) {
        snprintf(err, errlen, "%s", strerror(EINVAL));
        return NULL;
    }
    usbd_kv *kv = calloc(1, sizeof *kv);
    if (!kv || !(kv->path = strdup(path))) {
        free(kv);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kv->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(kv->options, opts->create ? 1 : 0);
    rocksdb_options_set_paranoid_checks(kv->options, 1);
    /* After a crash, recover the WAL up to its first damaged record: a
     * prefix of the writes, never a write without those before it. */
    rocksdb_options_set_wal_recovery_mode(kv->options, 2 /* kPointInTimeRecovery */);
    rocksdb_options_increase_parallelism(kv->options, 2);
    /* RocksDB's own LOG file: its header only. Once a write to that file
     * has failed (a full disk), the next one aborts the process (an
     * assertion in RocksDB's file writer, which Debian builds with), and
     * errors are logged at the moment they happen; they reach our log
     * through each call's status anyway. */
    rocksdb_options_set_info_log_level(kv->options, 5 /* HEADER_LEVEL */);
    /* Always: a store with merges in it, opened without their operator,
     * reads their keys as absent. (The options own it from here.) */
    rocksdb_options_set_merge_operator(kv->options,
            rocksdb_mergeoperator_create(NULL, patches_destroy, patches_full_merge, patches_partial_merge,
                                         patches_free, patches_name));
    if (opts->write_buffer_bytes)
        rocksdb_options_set_write_buffer_size(kv->options, opts->write_buffer_bytes);
    rocksdb_options_set_max_open_files(kv->options, opts->max_open_files > 0 ? opts->max_open_files : 256);
    /* A bloom filter on the memtable too: lookups of absent keys (a new
     * block's hash) skip its skiplist. */
    if (opts->bloom_bits > 0) {
        rocksdb_options_set_memtable_prefix_bloom_size_ratio(kv->options, 0.05);
        rocksdb_options_set_memtable_whole_key_filtering(kv->options, 1);
    }

    kv->table = rocksdb_block_based_options_create();
    kv->cache = rocksdb_cache_create_lru(opts->cache_bytes ? opts->cache_bytes : (8u << 20));
    rocksdb_block_based_options_set_block_cache(kv->table, kv->cache);
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(kv->table, 1);
    rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(kv->table, 1);
    if (opts->bloom_bits > 0) {
        kv->bloom = rocksdb_filterpolicy_create_bloom_full(opts->bloom_bits);
        rocksdb_block_based_options_set_filter_policy(kv->table, kv->bloom);
    }
    rocksdb_options_set_block_based_table_factory(kv->options, kv->table);

    kv->read = rocksdb_readoptions_create();
    kv->write = rocksdb_writeoptions_create();
    kv->write_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(kv->write_sync, 1);

    char *msg = NULL;
    const char *cf_names[1] = { "default" };
    const rocksdb_options_t *cf_opts[1] = { kv->options };
    kv->db = rocksdb_open_column_families(kv->options, path, 1, cf_names, cf_opts, &kv->cf, &msg);
    if (!kv->db) {
        snprintf(err, errlen, "%s", msg ? msg : "cannot open");
        rocksdb_free(msg);
        usbd_kv_close(kv);
        return NULL;
    }
    return kv;
}

/* RocksDB starts its threads (its default Env's) in here: they take no
 * signals (threads.c). */
usbd_kv *usbd_kv_open(const char *path, const usbd_kv_options *opts, char *err, size_t errlen)
{
    sigset_t old;
    signals_block_all(&old);
    usbd_kv *kv = open_store(path, opts, err, errlen);
    signals_restore(&old);
    return kv;
}

/* Did RocksDB fail a write, or work of its own (a flush of the memtable,
 * a compaction: a full disk)? */
static bool had_errors(usbd_kv *kv)
{
    if (kv->write_failed)
        return true;
    char *v = rocksdb_property_value(kv->db, "rocksdb.background-errors");
    bool bad = v && strtoull(v, NULL, 10) > 0;
    free(v);
    return bad;
}

void usbd_kv_close(usbd_kv *kv)
{
    if (!kv)
        return;
    if (kv->db && had_errors(kv)) {
        /* Closing then syncs files RocksDB saw fail, which aborts the
         * process (an assertion in its file writer). Left open, nothing
         * is lost: the next open recovers from the log. */
        log_msg(0, "rocksdb %s: not closed after an I/O error (the next open recovers it)", kv->path);
        return;
    }
    if (kv->cf)
        rocksdb_column_family_handle_destroy(kv->cf);
    if (kv->db)
        rocksdb_close(kv->db);
    if (kv->read)
        rocksdb_readoptions_destroy(kv->read);
    if (kv->write)
        rocksdb_writeoptions_destroy(kv->write);
    if (kv->write_sync)
        rocksdb_writeoptions_destroy(kv->write_sync);
    rocksdb_options_destroy(kv->options);
    rocksdb_block_based_options_destroy(kv->table);  /* and the bloom policy */
    rocksdb_cache_destroy(kv->cache);
    free(kv->path);
    free(kv);
}

int64_t usbd_kv_disk_bytes(usbd_kv *kv)
{
    DIR *d = opendir(kv->path);
    if (!d)
        return -errno;
    int64_t total = 0;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", kv->path, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            total += (int64_t)st.st_size;
    }
    closedir(d);
    return total;
}

int usbd_kv_property(usbd_kv *kv, const char *name, char *out, size_t outlen)
{
    if (!name)
        return -1;
    char *v = rocksdb_property_value(kv->db, name);
    if (!v)
        return -1;
    int n = snprintf(out, outlen, "%s", v);
    rocksdb_free(v);
    return n;
}

/* ---- Write batches: built on the Lua thread, written by a job -------- */

usbd_kv_batch *usbd_kv_batch_new(void)
{
    usbd_kv_batch *b = malloc(sizeof *b);
    if (b)
        b->wb = rocksdb_writebatch_create();
    return b;
}

void usbd_kv_batch_free(usbd_kv_batch *b)
{
    if (b) {
        rocksdb_writebatch_destroy(b->wb);
        free(b);
    }
}

void usbd_kv_batch_clear(usbd_kv_batch *b) { rocksdb_writebatch_clear(b->wb); }
int usbd_kv_batch_count(usbd_kv_batch *b) { return rocksdb_writebatch_count(b->wb); }

void usbd_kv_batch_put(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    rocksdb_writebatch_put(b->wb, (const char *)key, klen, (const char *)val, vlen);
}

int usbd_kv_batch_merge(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    if (!valid_patches((const char *)val, vlen))
        return -EINVAL;
    rocksdb_writebatch_merge(b->wb, (const char *)key, klen, (const char *)val, vlen);
    return 0;
}

void usbd_kv_batch_delete(usbd_kv_batch *b, const uint8_t *key, size_t klen)
{
    rocksdb_writebatch_delete(b->wb, (const char *)key, klen);
}

void usbd_kv_batch_delete_range(usbd_kv_batch *b, const uint8_t *start, size_t slen,
                                const uint8_t *end, size_t elen)
{
    rocksdb_writebatch_delete_range(b->wb, (const char *)start, slen, (const char *)end, elen);
}

/* ---- Jobs ------------------------------------------------------------- */

/* RocksDB counts every key comparison in a thread-local perf context by
 * default; reaching it from a shared library costs a TLS lookup per
 * comparison, a large part of inserting into the memtable. The level is
 * per thread: each job sets it on the worker it runs on (one store). */
static void no_perf_counts(void) { rocksdb_set_perf_level(1 /* kDisable */); }

/* ctx: the store; ptr: a usbd_kv_multi. RocksDB's batched MultiGet: one
 * pass over the memtables and files for all the keys. */
void usbd_job_kv_multi_get(usbd_job *job)
{
    no_perf_counts();
    usbd_kv *kv = job->ctx;
    usbd_kv_multi *m = (usbd_kv_multi *)job->ptr;
    size_t n = m->n;
    if (n == 0)
        return;
    if (!m->keys || !m->key_lens || !m->value_lens || (m->value_max && !m->values)) {
        job->err = EINVAL;
        return;
    }
    const uint8_t *k = m->keys;
    const char **keys = malloc(n * sizeof *keys);
    size_t *klens = malloc(n * sizeof *klens);
    rocksdb_pinnableslice_t **vals = calloc(n, sizeof *vals);
    char **errs = calloc(n, sizeof *errs);
    if (!keys || !klens || !vals || !errs) {
        job->err = ENOMEM;
    } else {
        for (size_t i = 0; i < n; i++) {
            keys[i] = (const char *)k;
            klens[i] = m->key_lens[i];
            k += m->key_lens[i];
        }
        rocksdb_batched_multi_get_cf(kv->db, kv->read, kv->cf, n, keys, klens, vals, errs, false);
        for (size_t i = 0; i < n; i++) {
            m->value_lens[i] = -1;
            if (errs[i]) {
                if (!job->err)
                    job->err = failed("multi_get", errs[i]);
                else
                    rocksdb_free(errs[i]);
            } else if (vals[i]) {
                size_t vlen;
                const char *v = rocksdb_pinnableslice_value(vals[i], &vlen);
                if (v) {
                    memcpy(m->values + i * m->value_max, v, vlen < m->value_max ? vlen : m->value_max);
                    m->value_lens[i] = (int32_t)vlen;
                }
            }
            if (vals[i])
                rocksdb_pinnableslice_destroy(vals[i]);
        }
        job->result = (int64_t)n;
    }
    free(keys); free(klens); free(vals); free(errs);
}

/* ctx: the store; ptr: a usbd_kv_scan. Keys in [start, end) in order, at
 * most max of them; keys longer than key_max are skipped. */
void usbd_job_kv_scan(usbd_job *job)
{
    no_perf_counts();
    usbd_kv *kv = job->ctx;
    usbd_kv_scan *s = (usbd_kv_scan *)job->ptr;
    s->n = 0;
    if ((s->start_len && !s->start) || (s->end_len && !s->end) ||
        (s->max && (!s->key_lens || !s->value_lens || (s->key_max && !s->keys) || (s->value_max && !s->values)))) {
        job->err = EINVAL;
        return;
    }
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(ro, s->fill_cache ? 1 : 0);
    if (s->end_len)
        rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)s->end, s->end_len);
    rocksdb_iterator_t *it = rocksdb_create_iterator(kv->db, ro);
    uint32_t n = 0;
    for (rocksdb_iter_seek(it, (const char *)s->start, s->start_len);
         n < s->max && rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *key = rocksdb_iter_key(it, &klen);
        if (klen > s->key_max)
            continue;
        const char *val = rocksdb_iter_value(it, &vlen);
        memcpy(s->keys + (size_t)n * s->key_max, key, klen);
        s->key_lens[n] = (uint32_t)klen;
        memcpy(s->values + (size_t)n * s->value_max, val, vlen < s->value_max ? vlen : s->value_max);
        s->value_lens[n] = (int32_t)vlen;
        n++;
    }
    s->n = n;
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    if (msg)
        job->err = failed("scan", msg);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    job->result = n;
}

/* A batch's bytes (RocksDB's WriteBatch format, the one its WAL holds): a
 * header of a sequence number (8 bytes) and a count of records (4, little
 * endian), then the records, each a kind (a byte) and a key, and for a
 * put, a merge or a range delete a value (or the range's end): each a
 * varint32 length and its bytes. Batches in order are one batch whose
 * header counts them all, followed by each one's records. */
enum { BATCH_HEADER = 12 };
enum { REC_DELETE = 0x0, REC_PUT = 0x1, REC_MERGE = 0x2, REC_DELETE_RANGE = 0xF };

struct record {
    const uint8_t *at, *key;
    uint32_t len, klen;
    uint8_t kind;
};

static const uint8_t *varint32(const uint8_t *p, const uint8_t *end, uint32_t *v)
{
    uint32_t r = 0;
    for (int shift = 0; shift <= 28 && p < end; shift += 7) {
        uint8_t b = *p++;
        r |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return p;
        }
    }
    return NULL;
}

/* The records of [p, end) appended to recs[*n .. cap-1]; false at a kind
 * these stores never write (column families, single deletes,
 * transactions), bytes that do not parse, or more records than cap. */
static bool parse_records(const uint8_t *p, const uint8_t *end, struct record *recs, size_t *n, size_t cap)
{
    while (p < end) {
        if (*n == cap)
            return false;
        struct record *r = &recs[(*n)++];
        r->at = p;
        r->kind = *p++;
        if (r->kind != REC_DELETE && r->kind != REC_PUT && r->kind != REC_MERGE &&
            r->kind != REC_DELETE_RANGE)
            return false;
        if (!(p = varint32(p, end, &r->klen)) || (size_t)(end - p) < r->klen)
            return false;
        r->key = p;
        p += r->klen;
        if (r->kind != REC_DELETE) {
            uint32_t vlen;
            if (!(p = varint32(p, end, &vlen)) || (size_t)(end - p) < vlen)
                return false;
            p += vlen;
        }
        r->len = (uint32_t)(p - r->at);
    }
    return true;
}

/* Mark (kept[i] = false) each record that a later put or delete of the same
 * key in recs makes void: in one atomic batch it would be overwritten
 * before anyone could read it. (A commit group's batches each put the
 * record of the ids they took, the same one while ids run in order, and
 * the counters: at 4 KiB writes, a third of the group's bytes.) Range
 * deletes stay, as do the records they cover. */
static bool drop_overwritten(const struct record *recs, size_t n, bool *kept)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    const struct record **seen = calloc(cap, sizeof *seen);  /* keys written later */
    if (!seen)
        return false;
    for (size_t i = n; i-- > 0;) {
        const struct record *r = &recs[i];
        kept[i] = true;
        if (r->kind == REC_DELETE_RANGE)
            continue;
        size_t slot = XXH3_64bits(r->key, r->klen) & (cap - 1);
        for (; seen[slot]; slot = (slot + 1) & (cap - 1)) {
            if (seen[slot]->klen == r->klen && memcmp(seen[slot]->key, r->key, r->klen) == 0) {
                kept[i] = false;
                break;
            }
        }
        if (kept[i] && r->kind != REC_MERGE)
            seen[slot] = r;
    }
    free(seen);
    return true;
}

/* batches[0..n-1] as one batch, without the records a later one
 * overwrites; or NULL (out of memory). Bytes that do not parse are joined
 * whole. */
static rocksdb_writebatch_t *joined(usbd_kv_batch **batches, uint64_t n)
{
    size_t total = BATCH_HEADER, counted = 0;
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        rocksdb_writebatch_data(batches[i]->wb, &len);
        total += len - BATCH_HEADER;
        counted += (size_t)rocksdb_writebatch_count(batches[i]->wb);
    }
    size_t nrec = 0;   /* the headers count them: room for as many */
    struct record *recs = malloc((counted + 1) * sizeof *recs);
    bool *kept = malloc(counted + 1);
    uint8_t *rep = malloc(total);
    bool parsed = recs && kept;
    for (uint64_t i = 0; parsed && i < n; i++) {
        size_t len;
        const uint8_t *data = (const uint8_t *)rocksdb_writebatch_data(batches[i]->wb, &len);
        parsed = parse_records(data + BATCH_HEADER, data + len, recs, &nrec, counted);
    }
    parsed = parsed && nrec == counted && drop_overwritten(recs, nrec, kept);
    rocksdb_writebatch_t *wb = NULL;
    if (rep) {
        uint32_t count = 0;
        size_t at = BATCH_HEADER;
        if (parsed) {
            for (size_t i = 0; i < nrec; i++) {
                if (!kept[i])
                    continue;
                memcpy(rep + at, recs[i].at, recs[i].len);
                at += recs[i].len;
                count++;
            }
        } else {
            for (uint64_t i = 0; i < n; i++) {
                size_t len;
                const char *data = rocksdb_writebatch_data(batches[i]->wb, &len);
                memcpy(rep + at, data + BATCH_HEADER, len - BATCH_HEADER);
                at += len - BATCH_HEADER;
            }
            count = (uint32_t)counted;
        }
        memset(rep, 0, 8);
        for (int k = 0; k < 4; k++)
            rep[8 + k] = (uint8_t)(count >> (8 * k));
        wb = rocksdb_writebatch_create_from((const char *)rep, at);
    }
    free(rep);
    free(kept);
    free(recs);
    return wb;
}

/* batches[0..n-1] written in order, as one (atomic: a crash keeps all of
 * them or none; one WAL record and one trip through RocksDB's write path
 * instead of n); sync: the WAL synced with it. 0 or an errno. */
static int write_batches(usbd_kv *kv, usbd_kv_batch **batches, uint64_t n, bool sync)
{
    if (n == 0)
        return 0;
    rocksdb_writebatch_t *wb = n == 1 ? batches[0]->wb : joined(batches, n);
    if (!wb)
        return ENOMEM;
    char *msg = NULL;
    rocksdb_write(kv->db, sync ? kv->write_sync : kv->write, wb, &msg);
    if (wb != batches[0]->wb)
        rocksdb_writebatch_destroy(wb);
    if (msg) {
        kv->write_failed = true;
        return failed("write", msg);
    }
    return 0;
}

/* ctx: the store; ptr: an array of len batches, written in order, as one;
 * arg 1: the WAL synced with it. */
void usbd_job_kv_write(usbd_job *job)
{
    no_perf_counts();
    job->err = write_batches(job->ctx, (usbd_kv_batch **)job->ptr, job->len, job->arg != 0);
    if (!job->err)
        job->result = (int64_t)job->len;
}

/* ---- Write queues -------------------------------------------------------
 * Batches handed over in order, each with a job to run before it (its
 * data) or none, and written in groups formed when a write job gets to
 * them: a group takes everything queued while the write before it ran,
 * not what had been queued when it was submitted. One write at a time
 * (on a lane). Two arrays take turns: the writer empties one while the
 * queue fills the other. */
struct usbd_kv_queue {
    pthread_mutex_t lock;
    usbd_kv_batch **batches;
    usbd_job **before;
    size_t n, cap;
    usbd_kv_batch **spare_batches;  /* the writer's, between its writes */
    usbd_job **spare_before;
    size_t spare_cap;
};

usbd_kv_queue *usbd_kv_queue_new(void)
{
    usbd_kv_queue *q = calloc(1, sizeof *q);
    if (q)
        pthread_mutex_init(&q->lock, NULL);
    return q;
}

void usbd_kv_queue_free(usbd_kv_queue *q)
{
    if (!q)
        return;
    pthread_mutex_destroy(&q->lock);
    free(q->batches);
    free(q->before);
    free(q->spare_batches);
    free(q->spare_before);
    free(q);
}

int usbd_kv_queue_add(usbd_kv_queue *q, usbd_kv_batch *batch, usbd_job *before)
{
    pthread_mutex_lock(&q->lock);
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        usbd_kv_batch **b = realloc(q->batches, cap * sizeof *b);
        if (b)
            q->batches = b;
        usbd_job **j = b ? realloc(q->before, cap * sizeof *j) : NULL;
        if (!j) {
            pthread_mutex_unlock(&q->lock);
            return -ENOMEM;
        }
        q->before = j;
        q->cap = cap;
    }
    q->batches[q->n] = batch;
    q->before[q->n] = before;
    q->n++;
    pthread_mutex_unlock(&q->lock);
    return 0;
}

uint64_t usbd_kv_queue_drop(usbd_kv_queue *q)
{
    pthread_mutex_lock(&q->lock);
    uint64_t n = q->n;
    q->n = 0;
    pthread_mutex_unlock(&q->lock);
    return n;
}

/* ctx: the store; ptr: a queue. Takes every batch queued so far (result:
 * how many, failed or not), runs their jobs in order, then writes them as
 * one; when a job fails, no batch is written. */
void usbd_job_kv_write_queued(usbd_job *job)
{
    no_perf_counts();
    usbd_kv_queue *q = (usbd_kv_queue *)job->ptr;
    pthread_mutex_lock(&q->lock);
    usbd_kv_batch **batches = q->batches;
    usbd_job **before = q->before;
    size_t n = q->n, cap = q->cap;
    q->batches = q->spare_batches;
    q->before = q->spare_before;
    q->cap = q->spare_cap;
    q->n = 0;
    q->spare_batches = NULL;
    q->spare_before = NULL;
    q->spare_cap = 0;
    pthread_mutex_unlock(&q->lock);

    job->result = (int64_t)n;
    for (size_t i = 0; i < n && !job->err; i++) {
        if (before[i]) {
            usbd_job_run(before[i]);
            job->err = before[i]->err;
        }
    }
    if (!job->err)
        job->err = write_batches(job->ctx, batches, n, false);

    pthread_mutex_lock(&q->lock);  /* (writes take turns: the spare is free) */
    q->spare_batches = batches;
    q->spare_before = before;
    q->spare_cap = cap;
    pthread_mutex_unlock(&q->lock);
}

/* ctx: the store. Everything written so far is durable in the WAL. */
void usbd_job_kv_sync(usbd_job *job)
{
    usbd_kv *kv = job->ctx;
    if (kv->write_failed) {
        log_msg(0, "rocksdb WAL sync: refused, a write to this store failed (reopen it)");
        job->err = EIO;
        return;
    }
    char *msg = NULL;
    rocksdb_flush_wal(kv->db, 1, &msg);
    if (msg)
        job->err = failed("WAL sync", msg);
}

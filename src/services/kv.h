/* A RocksDB store for devices (kv.c; Lua: usbd.kv). Open and close on the
 * calling thread; the rest are jobs with ctx = the store. A RocksDB error
 * fails a job with EIO and its message is logged. */
#ifndef USBD_KV_H
#define USBD_KV_H

#include <stddef.h>
#include <stdint.h>

#include "types.h"

typedef struct usbd_kv usbd_kv;
typedef struct usbd_kv_batch usbd_kv_batch;

typedef struct usbd_kv_options {
    uint64_t cache_bytes;         /* block cache (LRU); 0: 8 MiB */
    uint64_t write_buffer_bytes;  /* one memtable; 0: RocksDB's 64 MiB */
    int32_t bloom_bits;           /* bloom filter bits per key; 0: none */
    int32_t create;               /* create the store when absent */
    int32_t max_open_files;       /* 0: 256 */
    int32_t _pad;
} usbd_kv_options;

/* NULL with RocksDB's message in err when it cannot be opened. */
usbd_kv *usbd_kv_open(const char *path, const usbd_kv_options *opts, char *err, size_t errlen);
void usbd_kv_close(usbd_kv *kv);
/* Bytes of the files in the store's directory, or -errno. */
int64_t usbd_kv_disk_bytes(usbd_kv *kv);
/* A RocksDB property ("rocksdb.estimate-num-keys") into out; its length, or -1. */
int usbd_kv_property(usbd_kv *kv, const char *name, char *out, size_t outlen);

usbd_kv_batch *usbd_kv_batch_new(void);
void usbd_kv_batch_free(usbd_kv_batch *b);
void usbd_kv_batch_clear(usbd_kv_batch *b);
int usbd_kv_batch_count(usbd_kv_batch *b);
void usbd_kv_batch_put(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
/* A merge operand for key: a run of patches, each a u32 offset and a u16
 * length (little-endian) and that many bytes, written over the value there
 * (grown with zeroes to reach; no value: an empty one), ending by 16 MiB.
 * A malformed one is not added: -EINVAL, else 0. */
int usbd_kv_batch_merge(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
void usbd_kv_batch_delete(usbd_kv_batch *b, const uint8_t *key, size_t klen);
void usbd_kv_batch_delete_range(usbd_kv_batch *b, const uint8_t *start, size_t slen,
                                const uint8_t *end, size_t elen);

/* n keys back to back (key_lens[i] bytes each); each value into a slot of
 * value_max bytes at values + i * value_max, its full length in
 * value_lens[i] (-1: absent). */
typedef struct usbd_kv_multi {
    const uint8_t *keys;
    const uint32_t *key_lens;
    uint8_t *values;
    int32_t *value_lens;
    uint32_t n;
    uint32_t value_max;
} usbd_kv_multi;

/* Keys in [start, end) in order (end_len 0: to the last), at most max;
 * keys longer than key_max are skipped. Out: n, and keys/values in slots of
 * key_max/value_max bytes with their lengths. fill_cache 0: a long scan
 * that must not evict the working set from the block cache. */
typedef struct usbd_kv_scan {
    const uint8_t *start;
    const uint8_t *end;
    uint32_t start_len;
    uint32_t end_len;
    uint32_t max;
    uint32_t n;
    uint32_t key_max;
    uint32_t value_max;
    uint8_t *keys;
    uint32_t *key_lens;
    uint8_t *values;
    int32_t *value_lens;
    int32_t fill_cache;
    int32_t _pad;
} usbd_kv_scan;

/* ptr: a usbd_kv_multi. */
void usbd_job_kv_multi_get(usbd_job *job);
/* ptr: a usbd_kv_scan. */
void usbd_job_kv_scan(usbd_job *job);
/* ptr: an array of len batches, written in order as one atomic batch;
 * arg 1: the WAL is synced with it. */
void usbd_job_kv_write(usbd_job *job);
/* A write queue: batches (each with a job to run first, or NULL) handed
 * over in order and written in groups, each formed when its write job
 * starts: everything queued by then. Writes of one queue run one at a
 * time (on a lane). add: 0 or -ENOMEM; drop: forgets the batches no
 * write has taken (after a failed one), returning how many. */
typedef struct usbd_kv_queue usbd_kv_queue;
usbd_kv_queue *usbd_kv_queue_new(void);
void usbd_kv_queue_free(usbd_kv_queue *q);
int usbd_kv_queue_add(usbd_kv_queue *q, usbd_kv_batch *batch, usbd_job *before);
uint64_t usbd_kv_queue_drop(usbd_kv_queue *q);
/* ctx: the store; ptr: a queue. Takes every batch queued so far (result:
 * how many), runs their jobs in order, then writes the batches as one
 * atomic batch; when a job fails, none is written. */
void usbd_job_kv_write_queued(usbd_job *job);
/* The WAL synced: every write so far is durable. */
void usbd_job_kv_sync(usbd_job *job);

#endif

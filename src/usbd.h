/* usbd.h: the C API that Lua sees through the FFI.
 *
 * lua/usbd/cdef.lua declares the same things for ffi.cdef; tests/unit/
 * check_cdef.sh proves the two agree. Keep this file free of macros and
 * includes the FFI cannot parse: plain typedefs, enums and prototypes. */
#ifndef USBD_H
#define USBD_H

#include <stddef.h>
#include <stdint.h>

/* A view of bytes: a request's payload, a slice of one, or memory a device
 * owns. Never a copy. Lua reads the length as buf.len, a plain number (a
 * 64-bit field would reach Lua as boxed cdata). */
typedef struct usbd_buf {
    uint8_t *ptr;
    size_t nbytes;
} usbd_buf;

/* One NBD request on its way through the device. The core owns it: valid
 * from the event that hands it to Lua until usbd_request_done. */
typedef struct usbd_request {
    uint64_t offset;
    uint32_t length;
    uint16_t type;   /* NBD_CMD_* */
    uint16_t flags;  /* NBD_CMD_FLAG_* */
    usbd_buf buf;    /* READ: to fill; WRITE: the payload; else empty */
} usbd_request;

enum {
    USBD_EV_REQUEST = 1, /* req is a request for the device */
    USBD_EV_JOB = 2,     /* job finished off the Lua thread */
    USBD_EV_STOP = 3     /* SIGINT/SIGTERM, or the kernel disconnected */
};

typedef struct usbd_event {
    int32_t kind;
    int32_t _pad;
    usbd_request *req;
    void *job;
} usbd_event;

/* What the device offers, from which the core derives NBD flags. */
typedef struct usbd_export {
    uint64_t size;
    uint32_t block_size;
    uint8_t can_write;
    uint8_t can_trim;
    uint8_t can_zero;        /* has a write_zeroes of its own: fast zero */
    uint8_t can_flush;
    uint8_t can_multi_conn;
} usbd_export;

/* Serving. Start listening (or attach to the kernel) for ex; returns 0, or
 * -1 with a one-line message in err. */
int usbd_serve_start(const usbd_export *ex, char *err, size_t errlen);
/* Block until something happens; fill up to max events, return how many. */
int usbd_serve_next(usbd_event *events, int max);
/* Finish a request: err 0, or a host errno (mapped to NBD's on the wire). */
void usbd_request_done(usbd_request *req, int err);
/* Requests handed to Lua and not yet done. */
int usbd_requests_pending(void);

/* Memory. Zeroed, page-aligned; large regions are mapped lazily. */
uint8_t *usbd_mem_alloc(size_t len);
void usbd_mem_free(uint8_t *ptr, size_t len);
/* Zero [ptr, ptr+len), giving whole pages back to the system. */
void usbd_mem_discard(uint8_t *ptr, size_t len);
int usbd_mem_is_zero(const uint8_t *ptr, size_t len);

/* "1G", "64k", "4096" -> bytes; -1 if malformed or too large. */
int64_t usbd_parse_size(const char *s);

/* xxHash XXH3 128-bit of the bytes, into out[16] (big-endian, canonical). */
void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out);

/* Logging to stderr; level 0 always, 1 only with -v. */
void usbd_log(int level, const char *msg);
int usbd_verbosity(void);

const char *usbd_version(void);

/* Jobs: blocking calls run off the Lua thread (src/jobs.c).
 *
 * A job names a C function (run) and its arguments. usbd_job_submit hands
 * it to the worker pool (reads and writes to io_uring, when there is one);
 * once run has returned, the loop hands the job back as a USBD_EV_JOB event
 * (sched.lua resumes whoever waits for it). run is called on a worker
 * thread: it must be C, never a Lua callback. The job's memory, and whatever
 * it points at, must stay valid until that event. Submit from the thread
 * that runs Lua only. */
typedef struct usbd_job {
    void (*run)(struct usbd_job *job);
    void *ctx;          /* for run: a handle it works on (a RocksDB, ...) */
    uint8_t *ptr;       /* bytes to read into or write from */
    uint64_t len;
    uint64_t pos;
    int64_t arg;        /* one more argument, for run to interpret */
    int64_t result;     /* set by run: bytes moved, or what it returns */
    int32_t fd;
    int32_t err;        /* set by run: 0, or an errno */
    struct usbd_job *next;  /* the pool's: leave it alone */
    struct usbd_lane *lane; /* the lane it was submitted to: leave it alone */
} usbd_job;

typedef struct usbd_jobs_stats {
    uint64_t submitted;
    uint64_t finished;
    int32_t threads;
    int32_t queued;
    int32_t running;
    int32_t peak;       /* most jobs running at once (since the last reset) */
    int32_t io_uring;   /* 1: reads and writes go through io_uring */
    int32_t _pad;
} usbd_jobs_stats;

/* Start (or grow to) n worker threads; n 0 means USBD_JOB_THREADS from the
 * environment, else 16. Returns how many run, or -errno. Optional: the first
 * submit starts the pool. */
int usbd_jobs_start(int n);
/* Queue job; 0, or -errno if no worker thread could be started. */
int usbd_job_submit(usbd_job *job);
/* Run job here and now, on the calling thread. */
void usbd_job_run(usbd_job *job);
/* ptr: an array of len jobs, run in order on one thread; the first that
 * fails stops the rest (err: its errno). result: how many succeeded. */
void usbd_job_sequence(usbd_job *job);
/* A lane: jobs submitted to it run one after another, in the order
 * submitted, each as soon as the one before has returned, on the worker
 * that ran that one (no trip through the queue, none back to the loop in
 * between). Once one fails, every later one fails with its errno without
 * running. For writes that must land in order, where the next is ready
 * before the last returns (a store's group commits). Free it only when no
 * job of it is in flight. */
typedef struct usbd_lane usbd_lane;
usbd_lane *usbd_lane_new(void);
void usbd_lane_free(usbd_lane *lane);
/* Queue job on lane; 0, or -errno if no worker thread could be started. */
int usbd_lane_submit(usbd_lane *lane, usbd_job *job);
/* Run job here and now, as the lane would (nothing of it in flight). */
void usbd_lane_run(usbd_lane *lane, usbd_job *job);
/* Let every queued job finish, then end the worker threads. */
void usbd_jobs_stop(void);
void usbd_jobs_get_stats(usbd_jobs_stats *out, int reset_peak);

/* Run functions for files: fd, and ptr/len/pos as pread(2) and pwrite(2)
 * take them. pread fills all of len, with zeroes past the end of the file;
 * pwrite writes all of it; both start arg bytes in (0: at the start). punch_hole, zero_range and allocate are
 * fallocate(2) on [pos, pos+len) keeping the size; truncate sets the size
 * to pos. sleep waits arg microseconds (for tests and examples). */
void usbd_job_pread(usbd_job *job);
void usbd_job_pwrite(usbd_job *job);
void usbd_job_fdatasync(usbd_job *job);
void usbd_job_punch_hole(usbd_job *job);
void usbd_job_zero_range(usbd_job *job);
void usbd_job_allocate(usbd_job *job);
void usbd_job_truncate(usbd_job *job);
void usbd_job_sleep(usbd_job *job);

enum {
    USBD_FILE_CREATE = 1,    /* create it if absent */
    USBD_FILE_DIRECT = 2,    /* O_DIRECT: bypass the page cache */
    USBD_FILE_READONLY = 4
};

/* Files, on the calling thread: each returns -errno on failure. */
int usbd_file_open(const char *path, int flags);  /* an fd */
int usbd_file_close(int fd);
int64_t usbd_file_size(int fd);       /* bytes; a block device's too */
int64_t usbd_file_allocated(int fd);  /* bytes of storage it takes */
const char *usbd_strerror(int err);

/* ---- Block status (NBD_CMD_BLOCK_STATUS, base:allocation) ----
 *
 * A BLOCK_STATUS request reaches Lua with buf holding room for
 * buf.nbytes / sizeof(usbd_extent) extents (at least 1, at most
 * USBD_MAX_EXTENTS; 1 with NBD_CMD_FLAG_REQ_ONE). Lua writes the runs from
 * the request's offset on, in host byte order, and hands them back with
 * usbd_request_extents_done; the core turns them into the reply in place.
 * They must cover at least 1 byte and at most the request's length, each
 * run nonzero; otherwise the client gets EIO. An error is usbd_request_done. */
typedef struct usbd_extent {
    uint32_t length;
    uint32_t flags;     /* USBD_EXTENT_HOLE | USBD_EXTENT_ZERO, or 0: data */
} usbd_extent;

enum {
    USBD_EXTENT_HOLE = 1,     /* NBD_STATE_HOLE: not allocated */
    USBD_EXTENT_ZERO = 2,     /* NBD_STATE_ZERO: reads as zeroes */
    USBD_MAX_EXTENTS = 8192   /* per reply: a fragmented range gets a prefix */
};

void usbd_request_extents_done(usbd_request *req, uint32_t n);

/* Files: fill ptr (an usbd_extent array of arg entries) with the data and
 * holes of [pos, pos+len) by SEEK_DATA/SEEK_HOLE; result is how many were
 * filled (they may cover less than len). Holes are HOLE|ZERO. */
void usbd_job_extents(usbd_job *job);
/* ---- Server operations: statistics, the clock, failed requests
 * (src/stats.c, src/reqlog.c) ---- */

/* An event: SIGUSR1 arrived; print the statistics (the server's, then the
 * device's stats()). */
enum { USBD_EV_STATS = 4 };

/* Kinds of request, in this order: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES,
 * BLOCK_STATUS, CACHE, other; the last entry sums them all. */
enum { USBD_STATS_KINDS = 9 };

typedef struct usbd_stats_kind {
    uint64_t requests;
    uint64_t bytes;      /* of the requests that succeeded */
    uint64_t errors;     /* requests answered with an error */
    double p50;          /* latency percentiles and maximum, in seconds */
    double p90;
    double p99;
    double max;
} usbd_stats_kind;

/* Fill out[USBD_STATS_KINDS]; returns the seconds since serving started. */
double usbd_stats_get(usbd_stats_kind *out);
/* "READ", ..., "all". */
const char *usbd_stats_kind_name(int kind);
/* The server's statistics to stderr. */
void usbd_stats_print(void);
/* Monotonic seconds. */
double usbd_now(void);
/* Finish a request that failed with a Lua error: why (its message and
 * traceback) is logged at every verbosity, then as usbd_request_done. */
void usbd_request_failed(usbd_request *req, int err, const char *why);
/* ---- RBD: Ceph RBD images through librbd (src/rbd.c) ---------------- */

typedef struct usbd_rbd usbd_rbd;  /* a connection, a pool and an open image */

typedef struct usbd_rbd_config {
    const char *conf;      /* ceph.conf; NULL: CEPH_CONF, else /etc/ceph */
    const char *id;        /* client id; NULL: admin */
    const char *pool;
    const char *image;
    const char *snap;      /* NULL: the image itself; else read-only */
    uint64_t create_size;  /* > 0: create the image if it does not exist */
    int32_t timeout;       /* seconds to reach the cluster (0: 30) */
    int32_t io_timeout;    /* seconds an I/O may wait for OSDs (0: forever) */
    uint8_t readonly;
    uint8_t exclusive;     /* take the exclusive lock: one writer */
    uint8_t _pad[6];
} usbd_rbd_config;

/* Connect and open; NULL with a one-line message in err on failure. */
usbd_rbd *usbd_rbd_open(const usbd_rbd_config *cfg, char *err, size_t errlen);
void usbd_rbd_close(usbd_rbd *r);
int64_t usbd_rbd_size(usbd_rbd *r);  /* bytes, or -errno */
/* 1 if the image has a valid fast-diff object map: finding its allocated
 * objects is then cheap (no object is visited). */
int usbd_rbd_fast_diff(usbd_rbd *r);

/* A job on an image: ctx the usbd_rbd, arg the operation, ptr/len/pos as
 * for files. EXTENTS finds the allocated data in [pos, pos+len): ptr has
 * room for fd (offset, length) pairs of uint64_t; result is how many. */
enum {
    USBD_RBD_READ = 1,
    USBD_RBD_WRITE = 2,
    USBD_RBD_DISCARD = 3,
    USBD_RBD_WRITE_ZEROES = 4,
    USBD_RBD_FLUSH = 5,
    USBD_RBD_EXTENTS = 6
};
/* Start the job in librbd (not EXTENTS); when done, the loop hands it back
 * as a USBD_EV_JOB event. 0, or -errno if it could not start. */
int usbd_rbd_submit(usbd_job *job);
/* The same, blocking, as a job's run function (EXTENTS too). */
void usbd_job_rbd(usbd_job *job);
/* ---- cipher.c: AES-XTS sectors (dm-crypt's aes-xts-plain64) ---- */
typedef struct usbd_cipher usbd_cipher;
/* key: 64 bytes (two AES-256 keys); sector_size 512 or 4096. NULL if not. */
usbd_cipher *usbd_cipher_new(const uint8_t *key, uint32_t keylen, uint32_t sector_size);
void usbd_cipher_free(usbd_cipher *c);
/* enc 1 encrypts, 0 decrypts; whole sectors; out may be in. 0 or -errno. */
int usbd_cipher_run(usbd_cipher *c, int enc, const uint8_t *in, uint8_t *out,
                    uint64_t len, uint64_t pos);
void usbd_job_cipher(usbd_job *job);

/* Sparse memory (src/sparse.c): a zeroed store of size bytes that takes
 * memory only for what is written, in chunks, and gives it back when a
 * range is discarded; reads of unwritten ranges zero the caller's buffer
 * without touching the store. Read, write and discard return 0, or
 * -EINVAL (outside the store) or -ENOMEM. */
typedef struct usbd_sparse usbd_sparse;

typedef struct usbd_sparse_stats {
    uint64_t size;
    uint64_t allocated;   /* bytes of chunks holding data */
    uint64_t pooled;      /* bytes of freed chunks kept for reuse */
    uint64_t mapped;      /* address space reserved for chunks */
    uint64_t tables;      /* bytes of the chunk tables */
    uint64_t chunk_size;
} usbd_sparse_stats;

enum {
    USBD_SPARSE_HOLE = 1,    /* as NBD_STATE_HOLE */
    USBD_SPARSE_ZERO = 2     /* as NBD_STATE_ZERO */
};

usbd_sparse *usbd_sparse_new(uint64_t size);  /* NULL if it cannot be had */
void usbd_sparse_free(usbd_sparse *s);
uint64_t usbd_sparse_size(const usbd_sparse *s);
int usbd_sparse_read(usbd_sparse *s, uint8_t *dst, size_t len, uint64_t pos);
int usbd_sparse_write(usbd_sparse *s, const uint8_t *src, size_t len, uint64_t pos);
/* Zero [pos, pos+len): whole chunks are freed, the ends cleared. */
int usbd_sparse_discard(usbd_sparse *s, uint64_t pos, uint64_t len);
/* Runs from pos, at most max: out[2k] bytes with flags out[2k+1] (0 data,
 * or HOLE|ZERO). Returns how many, covering at least 1 byte; or -EINVAL. */
int usbd_sparse_extents(usbd_sparse *s, uint64_t pos, uint64_t len, uint64_t *out, int max);
void usbd_sparse_get_stats(const usbd_sparse *s, usbd_sparse_stats *out);
/* ---- dedupdisk's services: block hashes, block scatter/gather, RocksDB ----
 * (src/hash.c, src/blocks.c, src/kv.c; Lua: usbd.kv, usbd.file) */

/* XXH3-128 of each block of block bytes: out[16 * i] for the i-th. */
void usbd_hash128_blocks(const uint8_t *ptr, size_t len, size_t block, uint8_t *out);

/* Jobs: fd, ptr/len a buffer of whole blocks, arg the block size, ctx an
 * int64_t per block: its offset in the file, or -1 (read: zeroes; write:
 * skipped). Neighbouring blocks move in one call. */
void usbd_job_pread_blocks(usbd_job *job);
void usbd_job_pwrite_blocks(usbd_job *job);

/* A RocksDB store (src/kv.c). Open and close on the calling thread; the
 * rest are jobs with ctx = the store. A RocksDB error fails a job with EIO
 * and its message is logged. */
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
/* ptr: an array of len batches, written in order, each atomically; arg 1:
 * the WAL is synced with the last. */
void usbd_job_kv_write(usbd_job *job);
/* The WAL synced: every write so far is durable. */
void usbd_job_kv_sync(usbd_job *job);

/* ---- Compression: the codec service (src/codec.c; Lua: usbd.codec) ----
 *
 * Each block of a buffer is compressed on its own, so any one can be read
 * back alone. Calls run on the calling thread (the _run forms) or as jobs
 * (ptr: the descriptor). */
enum {
    USBD_CODEC_LZ4 = 1,     /* liblz4: fast */
    USBD_CODEC_ZSTD = 2     /* libzstd, at a level */
};

/* Compress the len / block blocks of src (len a multiple of block) into dst
 * back to back: block i's fragment is sizes[i] bytes at dst + at[i]. A
 * block that does not compress to at most limit bytes (0, or limit >=
 * block: block - 1) gets size 0, nothing in dst: it is raw. dst_max: dst's
 * room (len / block * limit is always enough). Returns the bytes of dst
 * used, or -errno (EINVAL: bad arguments; ENOMEM). */
typedef struct usbd_codec_pack {
    const uint8_t *src;
    uint8_t *dst;
    uint64_t *at;           /* out: per block */
    uint32_t *sizes;        /* out: per block; 0 raw */
    uint64_t len;
    uint64_t dst_max;
    uint32_t block;
    uint32_t limit;
    int32_t codec;
    int32_t level;          /* zstd's; lz4 has none */
} usbd_codec_pack;

/* Decompress n fragments, the i-th of sizes[i] bytes at src + at[i], into
 * exactly block bytes at dst + i * block; sizes[i] 0 skips block i.
 * Returns 0, or -errno (EIO: a fragment is damaged or of another size). */
typedef struct usbd_codec_unpack {
    const uint8_t *src;
    const uint64_t *at;
    const uint32_t *sizes;
    uint8_t *dst;
    uint32_t n;
    uint32_t block;
    int32_t codec;
    int32_t _pad;
} usbd_codec_unpack;

int64_t usbd_codec_pack_run(usbd_codec_pack *p);
int usbd_codec_unpack_run(usbd_codec_unpack *u);
/* Jobs: ptr a usbd_codec_pack (result: bytes used) or usbd_codec_unpack. */
void usbd_job_codec_pack(usbd_job *job);
void usbd_job_codec_unpack(usbd_job *job);
/* The levels a codec takes (lz4: 0 and 0, it has none). */
int usbd_codec_level_min(int codec);
int usbd_codec_level_max(int codec);

/* Byte ranges between a buffer and scattered places in a file (src/blocks.c):
 * a store's fragments. Jobs: fd, ptr the buffer, ctx an array of arg ranges;
 * neighbours in both move in one call; a read past the end gives zeroes. */
typedef struct usbd_range {
    int64_t pos;            /* in the file */
    uint64_t at;            /* in the buffer */
    uint64_t len;
} usbd_range;

void usbd_job_pread_ranges(usbd_job *job);
void usbd_job_pwrite_ranges(usbd_job *job);

/* ---- usbd.dedup.hashindex (src/hashindex.c) ------------------------------
 * An advisory table from 16-byte content hashes (XXH3-128) to ids, in a
 * file mapped MAP_SHARED: it survives a restart and a kill -9 (the page
 * cache keeps it) and is never synced. An entry may be missing or stale,
 * or another hash's: the caller validates every hit. Ids above 2^40 - 1 are
 * not kept. All calls run on the calling thread. */
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

/* ---- Compressed reads in one job (src/codec.c, src/blocks.c; Lua:
 * usbd.codec's read_blocks) ------------------------------------------------ */
/* Scattered ranges read into ptr (as usbd_job_pread_ranges): bytes read, or
 * -errno. */
int64_t usbd_pread_ranges_run(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n);
/* Read the nranges fragments (pos in the file, at in unpack.src) from fd,
 * then decompress them as usbd_codec_unpack_run does. 0, or -errno. */
typedef struct usbd_codec_read {
    usbd_codec_unpack unpack;
    const usbd_range *ranges;
    uint64_t nranges;
} usbd_codec_read;
int usbd_codec_read_run(int fd, usbd_codec_read *r);
/* Job: fd, ptr a usbd_codec_read. */
void usbd_job_codec_read(usbd_job *job);
/* usbd_job_pwrite_ranges: a range whose at is this writes len zeroes (at
 * most 64 KiB); the ranges are sorted by pos, and neighbours in the file
 * go in one pwritev. */
#define USBD_RANGE_ZEROES UINT64_MAX  /* Lua: usbd.file.ZEROES */

/* ---- Borrowed replies and file mappings: the zero-copy read path
 * (src/borrow.c, src/transmission.c, src/filemap.c; Lua: buf:borrow,
 * usbd.settle_borrowed, usbd.file's map) ---- */

/* While a READ is with the device, it may declare that [at, at+len) of the
 * reply is len bytes at src, memory it does not own (a file mapping), to
 * be sent from there: no copy into the request's buffer. src must stay
 * mapped and unchanged until the reply is sent or settled. Returns 1 if
 * borrowed; 0 if the request holds USBD_MAX_BORROWED segments already, and
 * the bytes were copied into its buffer instead; -1 if the range falls
 * outside the reply or the request is no READ. */
enum { USBD_MAX_BORROWED = 32 };
int usbd_request_borrow(usbd_request *req, uint64_t at, const uint8_t *src, uint64_t len);
/* Every reply still queued, partly sent or being filled that borrows: the
 * part not yet sent is copied into its own buffer, and it borrows no more.
 * Call before storage a reply may borrow from is written again. */
void usbd_settle_borrowed(void);

typedef struct usbd_borrow_stats {
    uint64_t borrowed_bytes;    /* declared borrowed */
    uint64_t copied_bytes;      /* copied instead: no segment left */
    uint64_t settled_bytes;     /* copied by settling */
    uint64_t settled_replies;
    uint64_t settles;           /* calls to usbd_settle_borrowed */
    uint64_t borrowing;         /* replies borrowing now */
} usbd_borrow_stats;
void usbd_borrow_get_stats(usbd_borrow_stats *out);

/* A read-only shared mapping of a file, for lending its page cache to
 * replies. Address space is reserved beyond the file's size (it may grow);
 * bytes past its end are never handed out. */
typedef struct usbd_filemap usbd_filemap;
/* fd is duplicated (the caller keeps its own). NULL with a message in err. */
usbd_filemap *usbd_filemap_open(int fd, char *err, size_t errlen);
/* Settles borrowed replies first, then unmaps. */
void usbd_filemap_close(usbd_filemap *m);
/* [pos, pos+len) in memory if all of it is inside the file and in the page
 * cache now (mincore), else NULL: a page fault there would wait for the
 * disk on the thread that sends. */
const uint8_t *usbd_filemap_resident(usbd_filemap *m, uint64_t pos, uint64_t len);

#endif

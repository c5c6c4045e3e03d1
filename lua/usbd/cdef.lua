-- The FFI declarations of src/usbd.h, kept in step with it (tests/unit/
-- check_cdef.sh compiles these against the header and compares layouts).
local ffi = require "ffi"

ffi.cdef [[
typedef struct usbd_buf {
    uint8_t *ptr;
    size_t nbytes;
} usbd_buf;

typedef struct usbd_request {
    uint64_t offset;
    uint32_t length;
    uint16_t type;
    uint16_t flags;
    usbd_buf buf;
} usbd_request;

enum {
    USBD_EV_REQUEST = 1,
    USBD_EV_JOB = 2,
    USBD_EV_STOP = 3
};

typedef struct usbd_event {
    int32_t kind;
    int32_t _pad;
    usbd_request *req;
    void *job;
} usbd_event;

typedef struct usbd_export {
    uint64_t size;
    uint32_t block_size;
    uint8_t can_write;
    uint8_t can_trim;
    uint8_t can_zero;
    uint8_t can_flush;
    uint8_t can_multi_conn;
} usbd_export;

int usbd_serve_start(const usbd_export *ex, char *err, size_t errlen);
int usbd_serve_next(usbd_event *events, int max);
void usbd_request_done(usbd_request *req, int err);
int usbd_requests_pending(void);

uint8_t *usbd_mem_alloc(size_t len);
void usbd_mem_free(uint8_t *ptr, size_t len);
void usbd_mem_discard(uint8_t *ptr, size_t len);
int usbd_mem_is_zero(const uint8_t *ptr, size_t len);

int64_t usbd_parse_size(const char *s);

void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out);

void usbd_log(int level, const char *msg);
int usbd_verbosity(void);

const char *usbd_version(void);

typedef struct usbd_job {
    void (*run)(struct usbd_job *job);
    void *ctx;
    uint8_t *ptr;
    uint64_t len;
    uint64_t pos;
    int64_t arg;
    int64_t result;
    int32_t fd;
    int32_t err;
    struct usbd_job *next;
    struct usbd_lane *lane;
} usbd_job;

typedef struct usbd_jobs_stats {
    uint64_t submitted;
    uint64_t finished;
    int32_t threads;
    int32_t queued;
    int32_t running;
    int32_t peak;
    int32_t io_uring;
    int32_t _pad;
} usbd_jobs_stats;

int usbd_jobs_start(int n);
int usbd_job_submit(usbd_job *job);
void usbd_job_run(usbd_job *job);
void usbd_job_sequence(usbd_job *job);
typedef struct usbd_lane usbd_lane;
usbd_lane *usbd_lane_new(void);
void usbd_lane_free(usbd_lane *lane);
int usbd_lane_submit(usbd_lane *lane, usbd_job *job);
void usbd_lane_run(usbd_lane *lane, usbd_job *job);
void usbd_jobs_stop(void);
void usbd_jobs_get_stats(usbd_jobs_stats *out, int reset_peak);

void usbd_job_pread(usbd_job *job);
void usbd_job_pwrite(usbd_job *job);
void usbd_job_fdatasync(usbd_job *job);
void usbd_job_punch_hole(usbd_job *job);
void usbd_job_zero_range(usbd_job *job);
void usbd_job_allocate(usbd_job *job);
void usbd_job_truncate(usbd_job *job);
void usbd_job_sleep(usbd_job *job);

enum {
    USBD_FILE_CREATE = 1,
    USBD_FILE_DIRECT = 2,
    USBD_FILE_READONLY = 4
};

int usbd_file_open(const char *path, int flags);
int usbd_file_close(int fd);
int64_t usbd_file_size(int fd);
int64_t usbd_file_allocated(int fd);
const char *usbd_strerror(int err);
/* Block status (the protocol's section of src/usbd.h) */
typedef struct usbd_extent {
    uint32_t length;
    uint32_t flags;
} usbd_extent;

enum {
    USBD_EXTENT_HOLE = 1,
    USBD_EXTENT_ZERO = 2,
    USBD_MAX_EXTENTS = 8192
};

void usbd_request_extents_done(usbd_request *req, uint32_t n);
void usbd_job_extents(usbd_job *job);

/* ---- Server operations: statistics, the clock, failed requests ---- */
enum { USBD_EV_STATS = 4 };
enum { USBD_STATS_KINDS = 9 };

typedef struct usbd_stats_kind {
    uint64_t requests;
    uint64_t bytes;
    uint64_t errors;
    double p50;
    double p90;
    double p99;
    double max;
} usbd_stats_kind;

double usbd_stats_get(usbd_stats_kind *out);
const char *usbd_stats_kind_name(int kind);
void usbd_stats_print(void);
double usbd_now(void);
void usbd_request_failed(usbd_request *req, int err, const char *why);

/* ---- RBD (src/rbd.c) ---- */
typedef struct usbd_rbd usbd_rbd;

typedef struct usbd_rbd_config {
    const char *conf;
    const char *id;
    const char *pool;
    const char *image;
    const char *snap;
    uint64_t create_size;
    int32_t timeout;
    int32_t io_timeout;
    uint8_t readonly;
    uint8_t exclusive;
    uint8_t _pad[6];
} usbd_rbd_config;

usbd_rbd *usbd_rbd_open(const usbd_rbd_config *cfg, char *err, size_t errlen);
void usbd_rbd_close(usbd_rbd *r);
int64_t usbd_rbd_size(usbd_rbd *r);
int usbd_rbd_fast_diff(usbd_rbd *r);

enum {
    USBD_RBD_READ = 1,
    USBD_RBD_WRITE = 2,
    USBD_RBD_DISCARD = 3,
    USBD_RBD_WRITE_ZEROES = 4,
    USBD_RBD_FLUSH = 5,
    USBD_RBD_EXTENTS = 6
};

int usbd_rbd_submit(usbd_job *job);
void usbd_job_rbd(usbd_job *job);

/* cipher.c: AES-XTS sectors */
typedef struct usbd_cipher usbd_cipher;
usbd_cipher *usbd_cipher_new(const uint8_t *key, uint32_t keylen, uint32_t sector_size);
void usbd_cipher_free(usbd_cipher *c);
int usbd_cipher_run(usbd_cipher *c, int enc, const uint8_t *in, uint8_t *out,
                    uint64_t len, uint64_t pos);
void usbd_job_cipher(usbd_job *job);

typedef struct usbd_sparse usbd_sparse;

typedef struct usbd_sparse_stats {
    uint64_t size;
    uint64_t allocated;
    uint64_t pooled;
    uint64_t mapped;
    uint64_t tables;
    uint64_t chunk_size;
} usbd_sparse_stats;

enum {
    USBD_SPARSE_HOLE = 1,
    USBD_SPARSE_ZERO = 2
};

usbd_sparse *usbd_sparse_new(uint64_t size);
void usbd_sparse_free(usbd_sparse *s);
uint64_t usbd_sparse_size(const usbd_sparse *s);
int usbd_sparse_read(usbd_sparse *s, uint8_t *dst, size_t len, uint64_t pos);
int usbd_sparse_write(usbd_sparse *s, const uint8_t *src, size_t len, uint64_t pos);
int usbd_sparse_discard(usbd_sparse *s, uint64_t pos, uint64_t len);
int usbd_sparse_extents(usbd_sparse *s, uint64_t pos, uint64_t len, uint64_t *out, int max);
void usbd_sparse_get_stats(const usbd_sparse *s, usbd_sparse_stats *out);

void usbd_hash128_blocks(const uint8_t *ptr, size_t len, size_t block, uint8_t *out);
void usbd_job_pread_blocks(usbd_job *job);
void usbd_job_pwrite_blocks(usbd_job *job);
typedef struct usbd_kv usbd_kv;
typedef struct usbd_kv_batch usbd_kv_batch;
typedef struct usbd_kv_options {
    uint64_t cache_bytes;
    uint64_t write_buffer_bytes;
    int32_t bloom_bits;
    int32_t create;
    int32_t max_open_files;
    int32_t _pad;
} usbd_kv_options;
usbd_kv *usbd_kv_open(const char *path, const usbd_kv_options *opts, char *err, size_t errlen);
void usbd_kv_close(usbd_kv *kv);
int64_t usbd_kv_disk_bytes(usbd_kv *kv);
int usbd_kv_property(usbd_kv *kv, const char *name, char *out, size_t outlen);
usbd_kv_batch *usbd_kv_batch_new(void);
void usbd_kv_batch_free(usbd_kv_batch *b);
void usbd_kv_batch_clear(usbd_kv_batch *b);
int usbd_kv_batch_count(usbd_kv_batch *b);
void usbd_kv_batch_put(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
int usbd_kv_batch_merge(usbd_kv_batch *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
void usbd_kv_batch_delete(usbd_kv_batch *b, const uint8_t *key, size_t klen);
void usbd_kv_batch_delete_range(usbd_kv_batch *b, const uint8_t *start, size_t slen,
                                const uint8_t *end, size_t elen);
typedef struct usbd_kv_multi {
    const uint8_t *keys;
    const uint32_t *key_lens;
    uint8_t *values;
    int32_t *value_lens;
    uint32_t n;
    uint32_t value_max;
} usbd_kv_multi;
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
void usbd_job_kv_multi_get(usbd_job *job);
void usbd_job_kv_scan(usbd_job *job);
void usbd_job_kv_write(usbd_job *job);
void usbd_job_kv_sync(usbd_job *job);

/* ---- Compression: the codec service (src/codec.c) ---- */
enum {
    USBD_CODEC_LZ4 = 1,
    USBD_CODEC_ZSTD = 2
};

typedef struct usbd_codec_pack {
    const uint8_t *src;
    uint8_t *dst;
    uint64_t *at;
    uint32_t *sizes;
    uint64_t len;
    uint64_t dst_max;
    uint32_t block;
    uint32_t limit;
    int32_t codec;
    int32_t level;
} usbd_codec_pack;

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
void usbd_job_codec_pack(usbd_job *job);
void usbd_job_codec_unpack(usbd_job *job);
int usbd_codec_level_min(int codec);
int usbd_codec_level_max(int codec);

typedef struct usbd_range {
    int64_t pos;
    uint64_t at;
    uint64_t len;
} usbd_range;

void usbd_job_pread_ranges(usbd_job *job);
void usbd_job_pwrite_ranges(usbd_job *job);

/* ---- usbd.dedup.hashindex (src/hashindex.c) ---- */
typedef struct usbd_hashindex usbd_hashindex;
enum {
    USBD_HASHINDEX_HEADER = 64,
    USBD_HASHINDEX_ENTRY = 8,
    USBD_HASHINDEX_BUCKET = 8
};
usbd_hashindex *usbd_hashindex_open(const char *path, uint64_t bytes, int *fresh, char *err, size_t errlen);
void usbd_hashindex_close(usbd_hashindex *x);
uint64_t usbd_hashindex_slots(const usbd_hashindex *x);
void usbd_hashindex_lookup(const usbd_hashindex *x, const uint8_t *hashes, size_t n, uint64_t *ids);
uint64_t usbd_hashindex_get(const usbd_hashindex *x, const uint8_t *hash);
void usbd_hashindex_put(usbd_hashindex *x, const uint8_t *hash, uint64_t id);
void usbd_hashindex_remove(usbd_hashindex *x, const uint8_t *hash, uint64_t id);
void usbd_hashindex_remove_many(usbd_hashindex *x, const uint8_t *const *hashes, const uint64_t *ids, size_t n);
void usbd_hashindex_clear(usbd_hashindex *x);

/* ---- Compressed reads in one job (src/codec.c, src/blocks.c) ---- */
int64_t usbd_pread_ranges_run(int fd, uint8_t *ptr, const usbd_range *r, uint64_t n);
typedef struct usbd_codec_read {
    usbd_codec_unpack unpack;
    const usbd_range *ranges;
    uint64_t nranges;
} usbd_codec_read;
int usbd_codec_read_run(int fd, usbd_codec_read *r);
void usbd_job_codec_read(usbd_job *job);
/* ---- Borrowed replies and file mappings (src/borrow.c, src/filemap.c) ---- */
enum { USBD_MAX_BORROWED = 32 };
int usbd_request_borrow(usbd_request *req, uint64_t at, const uint8_t *src, uint64_t len);
void usbd_settle_borrowed(void);
typedef struct usbd_borrow_stats {
    uint64_t borrowed_bytes;
    uint64_t copied_bytes;
    uint64_t settled_bytes;
    uint64_t settled_replies;
    uint64_t settles;
    uint64_t borrowing;
} usbd_borrow_stats;
void usbd_borrow_get_stats(usbd_borrow_stats *out);
typedef struct usbd_filemap usbd_filemap;
usbd_filemap *usbd_filemap_open(int fd, char *err, size_t errlen);
void usbd_filemap_close(usbd_filemap *m);
const uint8_t *usbd_filemap_resident(usbd_filemap *m, uint64_t pos, uint64_t len);
]]

/* Compression: the codec service (codec.c; Lua: usbd.codec).
 *
 * Each block of a buffer is compressed on its own, so any one can be read
 * back alone. Calls run on the calling thread (the _run forms) or as jobs
 * (ptr: the descriptor). */
#ifndef USBD_CODEC_H
#define USBD_CODEC_H

#include <stdint.h>

#include "blocks.h"
#include "types.h"

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

/* A compressed store's read in one job (Lua: usbd.codec's read_blocks):
 * read the nranges fragments (pos in the file, at in unpack.src) from fd
 * (blocks.h), then decompress them as usbd_codec_unpack_run does. 0, or
 * -errno. */
typedef struct usbd_codec_read {
    usbd_codec_unpack unpack;
    const usbd_range *ranges;
    uint64_t nranges;
} usbd_codec_read;
int usbd_codec_read_run(int fd, usbd_codec_read *r);
/* Job: fd, ptr a usbd_codec_read. */
void usbd_job_codec_read(usbd_job *job);

#endif

/* Content hashes for devices (dedup keys, checksums): xxHash's XXH3. */
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's entry that picks the widest vector unit at run time (AVX2
 * where there is one: twice the speed of the SSE2 build's default). */
#include <xxh_x86dispatch.h>
#define XXH3_128 XXH3_128bits_dispatch
#else
#define XXH3_128 XXH3_128bits
#endif

#include "hash.h"

void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out)
{
    XXH128_hash_t h = XXH3_128(ptr, len);
    XXH128_canonicalFromHash((XXH128_canonical_t *)out, h);
}

/* One hash per block: out[16 * i] for the i-th block of block bytes (a
 * shorter last block is hashed as it is). */
void usbd_hash128_blocks(const uint8_t *ptr, size_t len, size_t block, uint8_t *out)
{
    for (size_t at = 0, i = 0; at < len; at += block, i++) {
        size_t n = len - at < block ? len - at : block;
        usbd_hash128(ptr + at, n, out + 16 * i);
    }
}

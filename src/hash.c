/* Content hashes for devices (dedup keys, checksums): xxHash's XXH3. */
#include <xxhash.h>

#include "usbd.h"

void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out)
{
    XXH128_hash_t h = XXH3_128bits(ptr, len);
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

/* Content hashes for devices (dedup keys, checksums): xxHash's XXH3. */
#include <xxhash.h>

#include "usbd.h"

void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out)
{
    XXH128_hash_t h = XXH3_128bits(ptr, len);
    XXH128_canonicalFromHash((XXH128_canonical_t *)out, h);
}

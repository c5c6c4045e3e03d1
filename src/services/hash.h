/* Content hashes (hash.c): xxHash's XXH3-128. */
#ifndef USBD_HASH_H
#define USBD_HASH_H

#include <stddef.h>
#include <stdint.h>

/* XXH3 128-bit of the bytes, into out[16] (big-endian, canonical). */
void usbd_hash128(const uint8_t *ptr, size_t len, uint8_t *out);
/* XXH3-128 of each block of block bytes: out[16 * i] for the i-th. */
void usbd_hash128_blocks(const uint8_t *ptr, size_t len, size_t block, uint8_t *out);

#endif

/* AES-XTS sectors, as dm-crypt's aes-xts-plain64 (cipher.c; Lua:
 * usbd.cipher). */
#ifndef USBD_CIPHER_H
#define USBD_CIPHER_H

#include <stdint.h>

#include "jobs.h"
#include "types.h"

typedef struct usbd_cipher usbd_cipher;
/* key: 64 bytes (two AES-256 keys); sector_size 512 or 4096. NULL if not. */
usbd_cipher *usbd_cipher_new(const uint8_t *key, uint32_t keylen, uint32_t sector_size);
void usbd_cipher_free(usbd_cipher *c);
/* enc 1 encrypts, 0 decrypts; whole sectors; out may be in. 0 or -errno. */
int usbd_cipher_run(usbd_cipher *c, int enc, const uint8_t *in, uint8_t *out,
                    uint64_t len, uint64_t pos);
void usbd_job_cipher(usbd_job *job);
/* As a step (jobs.h): ctx the cipher, pos where the bytes start on the
 * device, arg 1 to encrypt, 0 to decrypt. */
int usbd_cipher_step(const usbd_step *step, const uint8_t *src, uint8_t *dst, uint64_t len);

#endif

/* cipher.c: AES-XTS over sectors, as dm-crypt's aes-xts-plain64, through
 * OpenSSL's libcrypto (EVP aes-256-xts).
 *
 * Each sector is one XTS data unit whose tweak is its number in 512-byte
 * units, little-endian (plain64; dm-crypt counts 512-byte units for larger
 * sectors too unless told iv_large_sectors), so an image written here opens
 * with cryptsetup --type plain -c aes-xts-plain64 -s 512 --sector-size N.
 *
 * One rule beyond dm-crypt: a sector whose ciphertext is all zeroes
 * decrypts to zeroes. Trimmed and never-written storage reads as zeroes
 * below, and so reads as zeroes above: the transform can pass trim down
 * (giving the storage back) and its extents stay true. The cost is what
 * dm-crypt's allow_discards costs: which sectors are unused shows. (A real
 * sector encrypting to 4096 zero bits has probability 2^-4096.)
 *
 * usbd_job_cipher runs as a job (lua/usbd/cipher.lua sends large requests
 * to the worker pool, so encryption uses the other core while the Lua
 * thread serves), and usbd_cipher_step as a step that a read's or write's
 * own job runs beside its I/O (jobs.h). A context per thread, rekeyed when it meets another
 * cipher, keeps the key schedule out of the per-request cost; it is freed
 * when its thread ends (a worker pool that shrinks or stops). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cipher.h"

struct usbd_cipher {
    uint64_t id;           /* which key a thread's context holds */
    uint32_t sector_size;
    uint8_t key[64];
};

static atomic_uint_fast64_t next_id = 1;

usbd_cipher *usbd_cipher_new(const uint8_t *key, uint32_t keylen, uint32_t sector_size)
{
    if (keylen != 64 || (sector_size != 512 && sector_size != 4096))
        return NULL;
    /* XTS refuses a key whose two halves are equal (OpenSSL checks it too). */
    if (memcmp(key, key + 32, 32) == 0)
        return NULL;
    usbd_cipher *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->id = atomic_fetch_add(&next_id, 1);
    c->sector_size = sector_size;
    memcpy(c->key, key, 64);
    return c;
}

void usbd_cipher_free(usbd_cipher *c)
{
    if (c) {
        memset(c->key, 0, sizeof c->key);
        free(c);
    }
}

static _Thread_local EVP_CIPHER_CTX *ctx;
static _Thread_local uint64_t ctx_id;
static _Thread_local int ctx_enc = -1;

/* A thread-local pointer alone would lose the context when its thread
 * ends: the key's destructor frees it. */
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void ctx_free(void *p)
{
    EVP_CIPHER_CTX_free(p);
}

static void ctx_key_make(void)
{
    pthread_key_create(&ctx_key, ctx_free);
}

static int all_zero(const uint8_t *p, size_t n)
{
    return p[0] == 0 && memcmp(p, p + 1, n - 1) == 0;
}

/* Encrypt (enc=1) or decrypt len bytes from in to out (which may be in),
 * starting at byte pos of the device; pos and len are whole sectors.
 * Returns 0 or a negative errno. */
int usbd_cipher_run(usbd_cipher *c, int enc, const uint8_t *in, uint8_t *out,
                    uint64_t len, uint64_t pos)
{
    uint32_t ss = c->sector_size;
    if (pos % ss || len % ss)
        return -EINVAL;
    if (!ctx) {
        pthread_once(&ctx_once, ctx_key_make);
        EVP_CIPHER_CTX *fresh = EVP_CIPHER_CTX_new();
        if (!fresh || pthread_setspecific(ctx_key, fresh)) {
            EVP_CIPHER_CTX_free(fresh);
            return -ENOMEM;
        }
        ctx = fresh;
    }
    if (ctx_id != c->id || ctx_enc != enc) {
        if (!EVP_CipherInit_ex(ctx, EVP_aes_256_xts(), NULL, c->key, NULL, enc))
            return -EIO;
        ctx_id = c->id;
        ctx_enc = enc;
    }
    for (uint64_t at = 0; at < len; at += ss) {
        const uint8_t *src = in + at;
        uint8_t *dst = out + at;
        if (!enc && all_zero(src, ss)) {
            if (dst != src)
                memset(dst, 0, ss);
            continue;
        }
        uint8_t iv[16] = { 0 };
        uint64_t tweak = (pos + at) / 512;
        for (int i = 0; i < 8; i++)
            iv[i] = (uint8_t)(tweak >> (8 * i));
        int n = 0;
        if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) ||
            !EVP_CipherUpdate(ctx, dst, &n, src, (int)ss) || n != (int)ss)
            return -EIO;
    }
    return 0;
}

/* As a job: ctx the cipher; ptr, len and pos the sectors; arg the address
 * to write them to (0: in place); fd 1 to encrypt, 0 to decrypt. */
void usbd_job_cipher(usbd_job *job)
{
    uint8_t *out = job->arg ? (uint8_t *)(uintptr_t)job->arg : job->ptr;
    int rc = usbd_cipher_run(job->ctx, job->fd, job->ptr, out, job->len, job->pos);
    job->err = rc < 0 ? -rc : 0;
}

int usbd_cipher_step(const usbd_step *step, const uint8_t *src, uint8_t *dst, uint64_t len)
{
    return usbd_cipher_run(step->ctx, step->arg != 0, src, dst, len, step->pos);
}

/* AES-XTS sectors (src/services/cipher.c): round trips on threads that come and go,
 * as a worker pool's do. Under make test-valgrind and make test-asan, a
 * context a thread kept and did not free when it ended is a leak. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/usbd.h"

#define SECTORS 16

static void make_key(uint8_t *key, unsigned seed)
{
    for (int i = 0; i < 64; i++)
        key[i] = (uint8_t)(seed * 31 + (unsigned)i * 7 + 1);
}

/* Encrypt, check the ciphertext is not the text, decrypt, compare. */
static void *round_trip(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    uint8_t key[64], text[SECTORS * 512], sealed[SECTORS * 512], back[SECTORS * 512];
    make_key(key, seed);
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = (uint8_t)(i * seed + 3);
    usbd_cipher *c = usbd_cipher_new(key, 64, 512);
    if (!c)
        return (void *)1;
    void *bad = NULL;
    if (usbd_cipher_run(c, 1, text, sealed, sizeof text, 4096) != 0 || !memcmp(sealed, text, sizeof text) ||
        usbd_cipher_run(c, 0, sealed, back, sizeof back, 4096) != 0 || memcmp(back, text, sizeof text))
        bad = (void *)1;
    usbd_cipher_free(c);
    return bad;
}

START_TEST(threads_that_end_round_trip_and_free_their_context)
{
    for (int round = 0; round < 3; round++) {
        pthread_t t[4];
        for (int k = 0; k < 4; k++)
            ck_assert_int_eq(pthread_create(&t[k], NULL, round_trip, (void *)(uintptr_t)(round * 4 + k + 1)), 0);
        for (int k = 0; k < 4; k++) {
            void *bad;
            pthread_join(t[k], &bad);
            ck_assert_ptr_null(bad);
        }
    }
    ck_assert_ptr_null(round_trip((void *)99));  /* and on this thread */
}
END_TEST

START_TEST(zero_sectors_read_as_zeroes_and_bad_arguments_are_refused)
{
    uint8_t key[64], zero[1024] = { 0 }, out[1024];
    make_key(key, 5);
    usbd_cipher *c = usbd_cipher_new(key, 64, 512);
    ck_assert_ptr_nonnull(c);
    memset(out, 0xee, sizeof out);
    ck_assert_int_eq(usbd_cipher_run(c, 0, zero, out, sizeof out, 0), 0);
    ck_assert_mem_eq(out, zero, sizeof out);
    ck_assert_int_eq(usbd_cipher_run(c, 1, zero, out, 500, 0), -EINVAL);
    ck_assert_int_eq(usbd_cipher_run(c, 1, zero, out, 512, 100), -EINVAL);
    usbd_cipher_free(c);
    ck_assert_ptr_null(usbd_cipher_new(key, 32, 512));
    ck_assert_ptr_null(usbd_cipher_new(key, 64, 1024));
    memcpy(key + 32, key, 32);  /* XTS refuses equal halves */
    ck_assert_ptr_null(usbd_cipher_new(key, 64, 512));
}
END_TEST

Suite *cipher_suite(void)
{
    Suite *s = suite_create("cipher");
    TCase *tc = tcase_create("xts");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, threads_that_end_round_trip_and_free_their_context);
    tcase_add_test(tc, zero_sectors_read_as_zeroes_and_bad_arguments_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

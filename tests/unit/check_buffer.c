/* Memory helpers and the request buffer pool. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "../../src/server/buffer.h"
#include "../../src/usbd.h"
#include "hooks.h"

START_TEST(mem_alloc_is_zeroed_and_aligned)
{
    size_t sizes[] = { 1, 4096, 100000, 3 << 20 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        uint8_t *p = usbd_mem_alloc(sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % 4096, 0);
        ck_assert(usbd_mem_is_zero(p, sizes[i]));
        memset(p, 0xaa, sizes[i]);
        usbd_mem_free(p, sizes[i]);
    }
}
END_TEST

START_TEST(is_zero_sees_every_byte)
{
    uint8_t buf[1000] = { 0 };
    ck_assert(usbd_mem_is_zero(buf, sizeof buf));
    ck_assert(usbd_mem_is_zero(buf, 0));
    for (size_t i = 0; i < sizeof buf; i += 37) {
        buf[i] = 1;
        ck_assert(!usbd_mem_is_zero(buf, sizeof buf));
        ck_assert(usbd_mem_is_zero(buf, i));
        buf[i] = 0;
    }
    buf[999] = 1;
    ck_assert(!usbd_mem_is_zero(buf, sizeof buf));
}
END_TEST

START_TEST(discard_zeroes_exactly_the_range)
{
    size_t n = 4 << 20;
    uint8_t *p = usbd_mem_alloc(n);
    memset(p, 0x5a, n);
    /* Ragged ends on both sides of whole pages. */
    usbd_mem_discard(p + 100, n - 300);
    ck_assert(usbd_mem_is_zero(p + 100, n - 300));
    ck_assert_uint_eq(p[99], 0x5a);
    ck_assert_uint_eq(p[n - 200], 0x5a);
    ck_assert_uint_eq(p[n - 1], 0x5a);
    /* A small range is cleared in place. */
    memset(p, 0x5a, 64);
    usbd_mem_discard(p + 1, 10);
    ck_assert_uint_eq(p[0], 0x5a);
    ck_assert(usbd_mem_is_zero(p + 1, 10));
    ck_assert_uint_eq(p[11], 0x5a);
    usbd_mem_free(p, n);
}
END_TEST

START_TEST(pool_recycles_by_size_class)
{
    uint8_t *a = buffer_get(5000);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq((uintptr_t)a % 4096, 0);
    size_t before = buffer_cached();
    buffer_put(a, 5000);
    ck_assert_uint_eq(buffer_cached(), before + 8192);
    uint8_t *b = buffer_get(8192);  /* same class: the same memory */
    ck_assert_ptr_eq(a, b);
    ck_assert_uint_eq(buffer_cached(), before);
    buffer_put(b, 8192);
    uint8_t *big = buffer_get(64u << 20);  /* beyond the classes: not cached */
    ck_assert_ptr_nonnull(big);
    buffer_put(big, 64u << 20);
    ck_assert_uint_eq(buffer_cached(), before + 8192);
}
END_TEST

START_TEST(hash_is_xxh3_128)
{
    uint8_t out[16], again[16];
    usbd_hash128((const uint8_t *)"usbd", 4, out);
    usbd_hash128((const uint8_t *)"usbd", 4, again);
    ck_assert_mem_eq(out, again, 16);
    usbd_hash128((const uint8_t *)"usbe", 4, again);
    ck_assert(memcmp(out, again, 16) != 0);
    /* XXH3_128bits of the empty input, canonical form. */
    static const uint8_t empty[16] = { 0x99, 0xaa, 0x06, 0xd3, 0x01, 0x47, 0x98, 0xd8,
                                       0x60, 0x01, 0xc3, 0x24, 0x46, 0x8d, 0x49, 0x7f };
    usbd_hash128((const uint8_t *)"", 0, out);
    ck_assert_mem_eq(out, empty, 16);
}
END_TEST

Suite *buffer_suite(void)
{
    Suite *s = suite_create("buffer");
    TCase *tc = tcase_create("memory");
    tcase_add_test(tc, mem_alloc_is_zeroed_and_aligned);
    tcase_add_test(tc, is_zero_sees_every_byte);
    tcase_add_test(tc, discard_zeroes_exactly_the_range);
    tcase_add_test(tc, pool_recycles_by_size_class);
    tcase_add_test(tc, hash_is_xxh3_128);
    suite_add_tcase(s, tc);
    return s;
}

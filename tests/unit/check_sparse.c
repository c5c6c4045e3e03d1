/* The sparse memory store (src/services/sparse.c). */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/usbd.h"

#define KiB 1024ull
#define MiB (1024 * KiB)
#define CHUNK (64 * KiB)

static usbd_sparse_stats stats_of(usbd_sparse *s)
{
    usbd_sparse_stats st;
    usbd_sparse_get_stats(s, &st);
    return st;
}

/* This process's resident memory, in bytes. */
static long long rss(void)
{
    long long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fscanf(f, "%lld %lld", &pages, &resident), 2);
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7 + (i >> 9));
}

START_TEST(starts_as_zeroes_and_reading_takes_no_memory)
{
    usbd_sparse *s = usbd_sparse_new(1ull << 30);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(usbd_sparse_size(s), 1ull << 30);
    size_t n = 4 * MiB;
    uint8_t *buf = malloc(n);
    for (uint64_t pos = 0; pos < (1ull << 30); pos += n) {
        memset(buf, 0xee, n);
        ck_assert_int_eq(usbd_sparse_read(s, buf, n, pos), 0);
        ck_assert(usbd_mem_is_zero(buf, n));
    }
    usbd_sparse_stats st = stats_of(s);
    ck_assert_uint_eq(st.allocated, 0);
    ck_assert_uint_eq(st.mapped, 0);   /* not one chunk of memory exists */
    ck_assert_uint_eq(st.chunk_size, CHUNK);
    free(buf);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(writes_read_back_at_odd_offsets_across_chunks)
{
    usbd_sparse *s = usbd_sparse_new(300 * MiB);
    size_t n = 3 * CHUNK + 12345;
    uint8_t *w = malloc(n), *r = malloc(n + 2);
    fill(w, n, 1);
    /* Across a chunk boundary and across a 64 MiB table boundary. */
    uint64_t spots[] = { CHUNK - 1, 64 * MiB - CHUNK - 3, 300 * MiB - n };
    for (size_t k = 0; k < 3; k++) {
        ck_assert_int_eq(usbd_sparse_write(s, w, n, spots[k]), 0);
        memset(r, 0xee, n + 2);
        ck_assert_int_eq(usbd_sparse_read(s, r, n, spots[k]), 0);
        ck_assert_mem_eq(r, w, n);
    }
    /* The neighbours are untouched zeroes. */
    ck_assert_int_eq(usbd_sparse_read(s, r, 1, CHUNK - 2), 0);
    ck_assert_uint_eq(r[0], 0);
    ck_assert_int_eq(usbd_sparse_read(s, r, 1, CHUNK - 1 + n), 0);
    ck_assert_uint_eq(r[0], 0);
    /* Five chunks each for the first two, four for the last (it ends the store). */
    ck_assert_uint_eq(stats_of(s).allocated, 14 * CHUNK);
    free(w);
    free(r);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(zeroes_written_take_no_memory)
{
    usbd_sparse *s = usbd_sparse_new(16 * MiB);
    uint8_t *z = calloc(1, 2 * MiB), *r = malloc(CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, z, 2 * MiB, 100), 0);
    ck_assert_uint_eq(stats_of(s).allocated, 0);
    /* A whole chunk of zeroes over data makes it a hole again. */
    memset(r, 9, CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, r, CHUNK, 4 * CHUNK), 0);
    ck_assert_uint_eq(stats_of(s).allocated, CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, z, CHUNK, 4 * CHUNK), 0);
    ck_assert_uint_eq(stats_of(s).allocated, 0);
    ck_assert_int_eq(usbd_sparse_read(s, r, CHUNK, 4 * CHUNK), 0);
    ck_assert(usbd_mem_is_zero(r, CHUNK));
    /* Part of a chunk with data: the zeroes are stored. */
    memset(r, 9, CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, r, CHUNK, 0), 0);
    ck_assert_int_eq(usbd_sparse_write(s, z, 10, 5), 0);
    ck_assert_int_eq(usbd_sparse_read(s, r, 16, 0), 0);
    ck_assert_uint_eq(r[4], 9);
    ck_assert(usbd_mem_is_zero(r + 5, 10));
    ck_assert_uint_eq(r[15], 9);
    free(z);
    free(r);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(discard_zeroes_exactly_and_frees_whole_chunks)
{
    usbd_sparse *s = usbd_sparse_new(128 * MiB);
    size_t n = 10 * CHUNK;
    uint8_t *w = malloc(n), *r = malloc(n);
    memset(w, 0x5a, n);
    ck_assert_int_eq(usbd_sparse_write(s, w, n, 0), 0);
    ck_assert_uint_eq(stats_of(s).allocated, n);
    /* From the middle of chunk 1 to the middle of chunk 8: 6 whole chunks go. */
    ck_assert_int_eq(usbd_sparse_discard(s, CHUNK + 100, 7 * CHUNK), 0);
    ck_assert_uint_eq(stats_of(s).allocated, 4 * CHUNK);
    ck_assert_int_eq(usbd_sparse_read(s, r, n, 0), 0);
    ck_assert_uint_eq(r[CHUNK + 99], 0x5a);
    ck_assert(usbd_mem_is_zero(r + CHUNK + 100, 7 * CHUNK));
    ck_assert_uint_eq(r[8 * CHUNK + 100], 0x5a);
    ck_assert_uint_eq(r[n - 1], 0x5a);
    /* Discarding holes, and far past any data, is fine; and everything goes. */
    ck_assert_int_eq(usbd_sparse_discard(s, 0, 128 * MiB), 0);
    usbd_sparse_stats st = stats_of(s);
    ck_assert_uint_eq(st.allocated, 0);
    ck_assert_uint_eq(st.tables, 2 * sizeof(void *));  /* the top level only */
    ck_assert_int_eq(usbd_sparse_read(s, r, n, 0), 0);
    ck_assert(usbd_mem_is_zero(r, n));
    free(w);
    free(r);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(reused_chunks_hold_no_old_bytes)
{
    /* A freed chunk is kept for reuse with its old bytes; a new small write
     * into it must still read zeroes around what it wrote. */
    usbd_sparse *s = usbd_sparse_new(64 * MiB);
    uint8_t *w = malloc(CHUNK), *r = malloc(CHUNK);
    memset(w, 0xff, CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, w, CHUNK, 0), 0);
    ck_assert_int_eq(usbd_sparse_discard(s, 0, CHUNK), 0);
    ck_assert_uint_eq(stats_of(s).pooled, CHUNK);
    ck_assert_int_eq(usbd_sparse_write(s, (const uint8_t *)"abc", 3, 5 * CHUNK + 1000), 0);
    ck_assert_uint_eq(stats_of(s).pooled, 0);
    ck_assert_int_eq(usbd_sparse_read(s, r, CHUNK, 5 * CHUNK), 0);
    ck_assert(usbd_mem_is_zero(r, 1000));
    ck_assert_mem_eq(r + 1000, "abc", 3);
    ck_assert(usbd_mem_is_zero(r + 1003, CHUNK - 1003));
    free(w);
    free(r);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(discarded_memory_goes_back_to_the_system)
{
    size_t n = 96 * MiB;
    usbd_sparse *s = usbd_sparse_new(n);
    uint8_t *w = malloc(MiB);
    memset(w, 0x33, MiB);
    long long before = rss();
    for (uint64_t pos = 0; pos < n; pos += MiB)
        ck_assert_int_eq(usbd_sparse_write(s, w, MiB, pos), 0);
    long long written = rss();
    ck_assert_msg(written - before > (long long)(90 * MiB), "RSS grew %lld bytes writing 96 MiB",
                  written - before);
    ck_assert_int_eq(usbd_sparse_discard(s, 0, n), 0);
    long long trimmed = rss();
    /* What stays: the pool of freed chunks kept for reuse (4 MiB at most). */
    ck_assert_msg(trimmed - before < (long long)(6 * MiB), "RSS %lld bytes over the start after the discard",
                  trimmed - before);
    ck_assert_uint_le(stats_of(s).pooled, 4 * MiB);
    /* Writing again reuses the address space instead of mapping more. */
    uint64_t mapped = stats_of(s).mapped;
    for (uint64_t pos = 0; pos < n; pos += MiB)
        ck_assert_int_eq(usbd_sparse_write(s, w, MiB, pos), 0);
    ck_assert_uint_eq(stats_of(s).mapped, mapped);
    free(w);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(extents_list_runs_of_data_and_holes)
{
    usbd_sparse *s = usbd_sparse_new(200 * MiB);
    uint64_t out[16];
    ck_assert_int_eq(usbd_sparse_extents(s, 0, 200 * MiB, out, 8), 1);
    ck_assert_uint_eq(out[0], 200 * MiB);
    ck_assert_uint_eq(out[1], USBD_SPARSE_HOLE | USBD_SPARSE_ZERO);
    /* Data in chunks 2 and 3, and in the chunk holding 100 MiB + 5. */
    uint8_t one = 1;
    ck_assert_int_eq(usbd_sparse_write(s, &one, 1, 2 * CHUNK), 0);
    ck_assert_int_eq(usbd_sparse_write(s, &one, 1, 3 * CHUNK + 9), 0);
    ck_assert_int_eq(usbd_sparse_write(s, &one, 1, 100 * MiB + 5), 0);
    ck_assert_int_eq(usbd_sparse_extents(s, 10, 200 * MiB - 10, out, 8), 5);
    uint64_t want[] = { 2 * CHUNK - 10, 3, 2 * CHUNK, 0, 100 * MiB - 4 * CHUNK, 3, CHUNK, 0,
                        100 * MiB - CHUNK, 3 };
    ck_assert_mem_eq(out, want, sizeof want);
    /* At most max runs; the first may end inside a chunk. */
    ck_assert_int_eq(usbd_sparse_extents(s, 100 * MiB, 100 * MiB, out, 8), 2);
    ck_assert_uint_eq(out[0], CHUNK);
    ck_assert_uint_eq(out[2], 100 * MiB - CHUNK);
    ck_assert_int_eq(usbd_sparse_extents(s, 0, 200 * MiB, out, 2), 2);
    ck_assert_uint_eq(out[0] + out[2], 4 * CHUNK);
    /* Within one chunk; and out of range. */
    ck_assert_int_eq(usbd_sparse_extents(s, 2 * CHUNK + 7, 5, out, 8), 1);
    ck_assert_uint_eq(out[0], 5);
    ck_assert_uint_eq(out[1], 0);
    ck_assert_int_eq(usbd_sparse_extents(s, 200 * MiB - 1, 2, out, 8), -EINVAL);
    usbd_sparse_free(s);
}
END_TEST

START_TEST(refuses_ranges_outside)
{
    usbd_sparse *s = usbd_sparse_new(1 * MiB);
    uint8_t b[16] = { 1 };
    ck_assert_int_eq(usbd_sparse_read(s, b, 16, MiB - 15), -EINVAL);
    ck_assert_int_eq(usbd_sparse_write(s, b, 16, MiB - 15), -EINVAL);
    ck_assert_int_eq(usbd_sparse_discard(s, MiB, 1), -EINVAL);
    ck_assert_int_eq(usbd_sparse_write(s, b, 16, UINT64_MAX - 3), -EINVAL);
    ck_assert_int_eq(usbd_sparse_write(s, b, 16, MiB - 16), 0);
    ck_assert_int_eq(usbd_sparse_discard(s, MiB, 0), 0);
    ck_assert_ptr_null(usbd_sparse_new(UINT64_MAX));
    usbd_sparse_free(s);
    /* A terabyte store costs its top-level table, 8 bytes per 64 MiB. */
    s = usbd_sparse_new(1ull << 40);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(stats_of(s).tables, 16384 * sizeof(void *));
    ck_assert_int_eq(usbd_sparse_write(s, b, 16, (1ull << 40) - 16), 0);
    ck_assert_int_eq(usbd_sparse_discard(s, 0, 1ull << 40), 0);
    ck_assert_uint_eq(stats_of(s).allocated, 0);
    usbd_sparse_free(s);
}
END_TEST

Suite *sparse_suite(void)
{
    Suite *s = suite_create("sparse");
    TCase *tc = tcase_create("store");
    tcase_add_test(tc, starts_as_zeroes_and_reading_takes_no_memory);
    tcase_add_test(tc, writes_read_back_at_odd_offsets_across_chunks);
    tcase_add_test(tc, zeroes_written_take_no_memory);
    tcase_add_test(tc, discard_zeroes_exactly_and_frees_whole_chunks);
    tcase_add_test(tc, reused_chunks_hold_no_old_bytes);
    tcase_add_test(tc, discarded_memory_goes_back_to_the_system);
    tcase_add_test(tc, extents_list_runs_of_data_and_holes);
    tcase_add_test(tc, refuses_ranges_outside);
    suite_add_tcase(s, tc);
    return s;
}

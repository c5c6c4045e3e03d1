/* The codec service (src/services/codec.c): blocks compressed each alone, raw when
 * they do not compress, fragments read back alone. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/usbd.h"

#define BS 4096
#define NB 16

static const int codecs[] = { USBD_CODEC_LZ4, USBD_CODEC_ZSTD };

/* Text-like bytes: compress well. seed makes each block differ. */
static void fill_text(uint8_t *p, size_t n, unsigned seed)
{
    static const char *words[] = { "block ", "device ", "the ", "kernel ", "nbd ", "write ",
                                   "read ", "flush ", "lua ", "store\n" };
    size_t at = 0;
    while (at < n) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 10];
        size_t k = strlen(w);
        memcpy(p + at, w, at + k <= n ? k : n - at);
        at += k;
    }
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        p[i] = (uint8_t)seed;
    }
}

struct run {
    uint8_t src[NB * BS], dst[NB * BS], back[NB * BS];
    uint64_t at[NB];
    uint32_t sizes[NB];
    usbd_codec_pack pack;
    usbd_codec_unpack unpack;
};

static struct run *run_new(int codec, int level)
{
    struct run *r = calloc(1, sizeof *r);
    r->pack = (usbd_codec_pack){ .src = r->src, .dst = r->dst, .at = r->at, .sizes = r->sizes,
                                 .len = sizeof r->src, .dst_max = sizeof r->dst, .block = BS,
                                 .limit = BS - BS / 8, .codec = codec, .level = level };
    r->unpack = (usbd_codec_unpack){ .src = r->dst, .at = r->at, .sizes = r->sizes, .dst = r->back,
                                     .n = NB, .block = BS, .codec = codec };
    return r;
}

/* Every compressed block reads back; raw ones are left alone. */
static void assert_round_trip(struct run *r)
{
    memset(r->back, 0xee, sizeof r->back);
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), 0);
    for (int i = 0; i < NB; i++) {
        if (r->sizes[i])
            ck_assert_mem_eq(r->back + i * BS, r->src + i * BS, BS);
        else
            ck_assert_uint_eq(r->back[i * BS], 0xee);
    }
}

START_TEST(text_packs_back_to_back_and_reads_back)
{
    struct run *r = run_new(codecs[_i], 3);
    for (int i = 0; i < NB; i++)
        fill_text(r->src + i * BS, BS, (unsigned)i);
    int64_t used = usbd_codec_pack_run(&r->pack);
    ck_assert_int_gt(used, 0);
    ck_assert_int_lt(used, NB * BS / 2);  /* text: well under half */
    uint64_t at = 0;
    for (int i = 0; i < NB; i++) {
        ck_assert_uint_gt(r->sizes[i], 0);
        ck_assert_uint_le(r->sizes[i], BS - BS / 8);
        ck_assert_uint_eq(r->at[i], at);  /* back to back, in order */
        at += r->sizes[i];
    }
    ck_assert_uint_eq(at, (uint64_t)used);
    assert_round_trip(r);
    free(r);
}
END_TEST

START_TEST(random_blocks_are_raw)
{
    struct run *r = run_new(codecs[_i], 3);
    fill_random(r->src, sizeof r->src, 42);
    for (int i = 1; i < NB; i += 3)  /* some text among them */
        fill_text(r->src + i * BS, BS, (unsigned)i);
    int64_t used = usbd_codec_pack_run(&r->pack);
    uint64_t sum = 0;
    for (int i = 0; i < NB; i++) {
        if (i % 3 == 1)
            ck_assert_uint_gt(r->sizes[i], 0);
        else
            ck_assert_uint_eq(r->sizes[i], 0);  /* raw: nothing in dst */
        sum += r->sizes[i];
    }
    ck_assert_uint_eq(sum, (uint64_t)used);
    assert_round_trip(r);
    free(r);
}
END_TEST

START_TEST(limit_decides_raw)
{
    /* Half text, half random: compresses to a bit over half a block. */
    struct run *r = run_new(codecs[_i], 3);
    for (int i = 0; i < NB; i++) {
        fill_text(r->src + i * BS, BS / 2, (unsigned)i);
        fill_random(r->src + i * BS + BS / 2, BS / 2, (uint64_t)i + 1);
    }
    r->pack.limit = BS / 2;  /* not enough */
    ck_assert_int_eq(usbd_codec_pack_run(&r->pack), 0);
    for (int i = 0; i < NB; i++)
        ck_assert_uint_eq(r->sizes[i], 0);
    r->pack.limit = 0;  /* 0: anything smaller than the block */
    ck_assert_int_gt(usbd_codec_pack_run(&r->pack), 0);
    for (int i = 0; i < NB; i++) {
        ck_assert_uint_gt(r->sizes[i], BS / 2);
        ck_assert_uint_lt(r->sizes[i], BS);
    }
    assert_round_trip(r);
    /* Output room runs out: the rest are raw, nothing written past it. */
    r->pack.limit = BS - 1;
    r->pack.dst_max = 3 * BS;
    memset(r->dst, 0x77, sizeof r->dst);
    int64_t used = usbd_codec_pack_run(&r->pack);
    ck_assert_int_le(used, 3 * BS);
    ck_assert_uint_eq(r->dst[3 * BS], 0x77);
    ck_assert_uint_eq(r->sizes[NB - 1], 0);
    assert_round_trip(r);
    free(r);
}
END_TEST

START_TEST(one_fragment_alone)
{
    struct run *r = run_new(codecs[_i], 3);
    for (int i = 0; i < NB; i++)
        fill_text(r->src + i * BS, BS, (unsigned)i * 7);
    ck_assert_int_gt(usbd_codec_pack_run(&r->pack), 0);
    /* Block 9 only, from a copy of its fragment alone. */
    uint8_t frag[BS], block[BS];
    memcpy(frag, r->dst + r->at[9], r->sizes[9]);
    uint64_t at = 0;
    uint32_t size = r->sizes[9];
    usbd_codec_unpack u = { .src = frag, .at = &at, .sizes = &size, .dst = block, .n = 1,
                            .block = BS, .codec = codecs[_i] };
    ck_assert_int_eq(usbd_codec_unpack_run(&u), 0);
    ck_assert_mem_eq(block, r->src + 9 * BS, BS);
    free(r);
}
END_TEST

START_TEST(damage_is_eio)
{
    struct run *r = run_new(codecs[_i], 3);
    for (int i = 0; i < NB; i++)
        fill_text(r->src + i * BS, BS, (unsigned)i);
    ck_assert_int_gt(usbd_codec_pack_run(&r->pack), 0);
    uint32_t size = r->sizes[0];
    r->sizes[0] = size - 5;  /* cut short */
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), -EIO);
    r->sizes[0] = size;
    r->unpack.block = BS / 2;  /* a fragment of another size */
    r->unpack.n = 1;
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), -EIO);
    r->unpack.block = BS;
    fill_random(r->dst + r->at[0], size, 7);  /* garbage */
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), -EIO);
    r->unpack.codec = codecs[_i] == USBD_CODEC_LZ4 ? USBD_CODEC_ZSTD : USBD_CODEC_LZ4;
    r->unpack.src = r->dst + r->at[1] - r->at[0];  /* block 1 read as the other codec */
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), -EIO);
    free(r);
}
END_TEST

START_TEST(bad_arguments)
{
    struct run *r = run_new(USBD_CODEC_LZ4, 0);
    r->pack.len = BS + 1;
    ck_assert_int_eq(usbd_codec_pack_run(&r->pack), -EINVAL);
    r->pack.len = BS;
    r->pack.codec = 0;
    ck_assert_int_eq(usbd_codec_pack_run(&r->pack), -EINVAL);
    r->pack.codec = USBD_CODEC_LZ4;
    r->pack.block = 0;
    ck_assert_int_eq(usbd_codec_pack_run(&r->pack), -EINVAL);
    r->unpack.codec = 3;
    ck_assert_int_eq(usbd_codec_unpack_run(&r->unpack), -EINVAL);
    ck_assert_int_eq(usbd_codec_level_min(USBD_CODEC_LZ4), 0);
    ck_assert_int_eq(usbd_codec_level_max(USBD_CODEC_LZ4), 0);
    ck_assert_int_lt(usbd_codec_level_min(USBD_CODEC_ZSTD), 0);
    ck_assert_int_ge(usbd_codec_level_max(USBD_CODEC_ZSTD), 19);
    free(r);
}
END_TEST

/* A missing array (a nil from Lua) is EINVAL, never a crash; with nothing
 * to do, none is needed. */
START_TEST(null_arrays_are_einval)
{
    struct run *r = run_new(USBD_CODEC_LZ4, 0);
    for (int i = 0; i < NB; i++)
        fill_text(r->src + i * BS, BS, (unsigned)i);
    usbd_codec_pack p = r->pack;
    p.src = NULL;
    ck_assert_int_eq(usbd_codec_pack_run(&p), -EINVAL);
    p = r->pack, p.at = NULL;
    ck_assert_int_eq(usbd_codec_pack_run(&p), -EINVAL);
    p = r->pack, p.sizes = NULL;
    ck_assert_int_eq(usbd_codec_pack_run(&p), -EINVAL);
    p = r->pack, p.dst = NULL;
    ck_assert_int_eq(usbd_codec_pack_run(&p), -EINVAL);
    p.dst_max = 0;  /* no room: every block raw, dst never touched */
    ck_assert_int_eq(usbd_codec_pack_run(&p), 0);
    p = (usbd_codec_pack){ .block = BS, .codec = USBD_CODEC_LZ4 };
    ck_assert_int_eq(usbd_codec_pack_run(&p), 0);

    ck_assert_int_gt(usbd_codec_pack_run(&r->pack), 0);
    usbd_codec_unpack u = r->unpack;
    u.src = NULL;
    ck_assert_int_eq(usbd_codec_unpack_run(&u), -EINVAL);
    u = r->unpack, u.at = NULL;
    ck_assert_int_eq(usbd_codec_unpack_run(&u), -EINVAL);
    u = r->unpack, u.sizes = NULL;
    ck_assert_int_eq(usbd_codec_unpack_run(&u), -EINVAL);
    u = r->unpack, u.dst = NULL;
    ck_assert_int_eq(usbd_codec_unpack_run(&u), -EINVAL);
    u = (usbd_codec_unpack){ .block = BS, .codec = USBD_CODEC_LZ4 };
    ck_assert_int_eq(usbd_codec_unpack_run(&u), 0);

    usbd_codec_read rd = { .unpack = r->unpack, .ranges = NULL, .nranges = 3 };
    ck_assert_int_eq(usbd_codec_read_run(-1, &rd), -EINVAL);
    free(r);
}
END_TEST

START_TEST(zstd_levels_trade_size)
{
    struct run *fast = run_new(USBD_CODEC_ZSTD, 1), *best = run_new(USBD_CODEC_ZSTD, 19);
    for (int i = 0; i < NB; i++) {
        fill_text(fast->src + i * BS, BS, (unsigned)i);
        fill_text(best->src + i * BS, BS, (unsigned)i);
    }
    int64_t a = usbd_codec_pack_run(&fast->pack), b = usbd_codec_pack_run(&best->pack);
    ck_assert_int_gt(b, 0);
    ck_assert_int_le(b, a);
    assert_round_trip(best);
    free(fast);
    free(best);
}
END_TEST

START_TEST(jobs_report_result_and_errno)
{
    struct run *r = run_new(codecs[_i], 3);
    for (int i = 0; i < NB; i++)
        fill_text(r->src + i * BS, BS, (unsigned)i);
    usbd_job job = { .run = usbd_job_codec_pack, .ptr = (uint8_t *)&r->pack };
    usbd_job_run(&job);
    ck_assert_int_eq(job.err, 0);
    ck_assert_int_gt(job.result, 0);
    usbd_job back = { .run = usbd_job_codec_unpack, .ptr = (uint8_t *)&r->unpack };
    usbd_job_run(&back);
    ck_assert_int_eq(back.err, 0);
    ck_assert_mem_eq(r->back, r->src, sizeof r->src);
    r->sizes[3] -= 1;
    back.err = 0;
    usbd_job_run(&back);
    ck_assert_int_eq(back.err, EIO);
    r->pack.block = 3;
    usbd_job_run(&job);
    ck_assert_int_eq(job.err, EINVAL);
    free(r);
}
END_TEST

/* Threads keep their own state: four at once, each its own data. */
static void *pack_and_check(void *p)
{
    struct run *r = p;
    for (int round = 0; round < 50; round++) {
        if (usbd_codec_pack_run(&r->pack) <= 0 || usbd_codec_unpack_run(&r->unpack) != 0 ||
            memcmp(r->back, r->src, sizeof r->src) != 0)
            return (void *)1;
    }
    return NULL;
}

START_TEST(threads_do_not_share_state)
{
    pthread_t t[4];
    struct run *r[4];
    for (int k = 0; k < 4; k++) {
        r[k] = run_new(codecs[k % 2], 3);
        for (int i = 0; i < NB; i++)
            fill_text(r[k]->src + i * BS, BS, (unsigned)(k * 100 + i));
        ck_assert_int_eq(pthread_create(&t[k], NULL, pack_and_check, r[k]), 0);
    }
    for (int k = 0; k < 4; k++) {
        void *bad;
        pthread_join(t[k], &bad);
        ck_assert_ptr_null(bad);
        free(r[k]);
    }
}
END_TEST

Suite *codec_suite(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("codec");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, text_packs_back_to_back_and_reads_back, 0, 2);
    tcase_add_loop_test(tc, random_blocks_are_raw, 0, 2);
    tcase_add_loop_test(tc, limit_decides_raw, 0, 2);
    tcase_add_loop_test(tc, one_fragment_alone, 0, 2);
    tcase_add_loop_test(tc, damage_is_eio, 0, 2);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, null_arrays_are_einval);
    tcase_add_test(tc, zstd_levels_trade_size);
    tcase_add_loop_test(tc, jobs_report_result_and_errno, 0, 2);
    tcase_add_test(tc, threads_do_not_share_state);
    suite_add_tcase(s, tc);
    return s;
}

/* Statistics (src/server/stats.c): counts by kind and latency percentiles. */
#include <check.h>
#include <math.h>

#include "../../src/server/nbd.h"
#include "../../src/server/stats.h"
#include "../../src/usbd.h"

/* Within the histogram's precision: 1/8 of the value. */
static void near(double got, double want)
{
    ck_assert_msg(fabs(got - want) <= want / 8, "got %g, want %g", got, want);
}

START_TEST(counts_by_kind)
{
    usbd_stats_kind s[USBD_STATS_KINDS];
    stats_start();
    stats_record(NBD_CMD_READ, 4096, 0, 1000);
    stats_record(NBD_CMD_READ, 512, 5, 1000);       /* an error: no bytes */
    stats_record(NBD_CMD_WRITE, 65536, 0, 1000);
    stats_record(NBD_CMD_BLOCK_STATUS, 1 << 20, 0, 1000);
    stats_record(42, 0, 22, 1000);                  /* an unknown command */
    usbd_stats_get(s);
    ck_assert_str_eq(usbd_stats_kind_name(0), "READ");
    ck_assert_str_eq(usbd_stats_kind_name(USBD_STATS_KINDS - 1), "all");
    ck_assert_ptr_null(usbd_stats_kind_name(USBD_STATS_KINDS));
    ck_assert_uint_eq(s[0].requests, 2);
    ck_assert_uint_eq(s[0].bytes, 4096);
    ck_assert_uint_eq(s[0].errors, 1);
    ck_assert_uint_eq(s[1].bytes, 65536);
    ck_assert_uint_eq(s[5].requests, 1);            /* BLOCK_STATUS */
    ck_assert_uint_eq(s[7].errors, 1);              /* other */
    ck_assert_uint_eq(s[8].requests, 5);
    ck_assert_uint_eq(s[8].errors, 2);
    ck_assert_uint_eq(s[8].bytes, 4096 + 65536 + (1 << 20));
}
END_TEST

START_TEST(percentiles)
{
    usbd_stats_kind s[USBD_STATS_KINDS];
    stats_start();
    /* 1 us to 1000 us, one request each, plus one slow write. */
    for (int i = 1; i <= 1000; i++)
        stats_record(NBD_CMD_READ, 4096, 0, (uint64_t)i * 1000);
    stats_record(NBD_CMD_WRITE, 4096, 0, 2500000000u);
    usbd_stats_get(s);
    near(s[0].p50, 500e-6);
    near(s[0].p90, 900e-6);
    near(s[0].p99, 990e-6);
    ck_assert(s[0].max == 1000e-6);
    ck_assert(s[0].p99 <= s[0].max);
    ck_assert(s[1].max == 2.5);                     /* exact, and past 2^31 ns */
    near(s[1].p50, 2.5);
    near(s[8].p50, 500e-6);                         /* all: both kinds */
    ck_assert(s[8].max == 2.5);
    stats_start();
    usbd_stats_get(s);
    ck_assert_uint_eq(s[8].requests, 0);
    ck_assert(s[8].p50 == 0 && s[8].max == 0);
}
END_TEST

Suite *stats_suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_add_test(tc, counts_by_kind);
    tcase_add_test(tc, percentiles);
    suite_add_tcase(s, tc);
    return s;
}

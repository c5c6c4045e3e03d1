/* Scattered blocks and byte ranges between a buffer and a file
 * (src/services/blocks.c): arguments that would divide by zero, overflow a file
 * offset or follow a NULL are EINVAL. (The data paths: spec/blocks_spec.lua
 * and spec/file_spec.lua.) */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/usbd.h"

static char path[64];
static int fd = -1;

static void open_file(void)
{
    snprintf(path, sizeof path, "build/unit-blocks.%d", (int)getpid());
    fd = usbd_file_open(path, USBD_FILE_CREATE);
    ck_assert_int_ge(fd, 0);
}

static void close_file(void)
{
    usbd_file_close(fd);
    unlink(path);
}

static int32_t blocks_job(void (*run)(usbd_job *), uint8_t *buf, uint64_t len, uint64_t bs, int64_t *at)
{
    usbd_job job = { .run = run, .fd = fd, .ptr = buf, .len = len, .arg = bs, .ctx = at };
    usbd_job_run(&job);
    return job.err;
}

START_TEST(blocks_of_zero_bytes_or_no_offsets_are_einval)
{
    uint8_t buf[1024] = { 0 };
    int64_t at[2] = { 0, 512 };
    ck_assert_int_eq(blocks_job(usbd_job_pread_blocks, buf, sizeof buf, 0, at), EINVAL);
    ck_assert_int_eq(blocks_job(usbd_job_pwrite_blocks, buf, sizeof buf, 0, at), EINVAL);
    ck_assert_int_eq(blocks_job(usbd_job_pread_blocks, buf, 1000, 512, at), EINVAL);
    ck_assert_int_eq(blocks_job(usbd_job_pread_blocks, buf, sizeof buf, 512, NULL), EINVAL);
    ck_assert_int_eq(blocks_job(usbd_job_pread_blocks, NULL, sizeof buf, 512, at), EINVAL);
    ck_assert_int_eq(blocks_job(usbd_job_pwrite_blocks, buf, sizeof buf, 512, at), 0);
    ck_assert_int_eq(blocks_job(usbd_job_pread_blocks, buf, sizeof buf, 512, at), 0);
}
END_TEST

/* Offsets at the top of the file's range: no neighbour past INT64_MAX
 * (UBSan: no signed overflow), and the kernel's refusal comes back. */
START_TEST(blocks_at_the_last_offsets_do_not_overflow)
{
    uint8_t buf[1024] = { 0 };
    int64_t at[2] = { INT64_MAX - 100, INT64_MAX - 10 };
    ck_assert_int_ne(blocks_job(usbd_job_pread_blocks, buf, sizeof buf, 512, at), 0);
    ck_assert_int_ne(blocks_job(usbd_job_pwrite_blocks, buf, sizeof buf, 512, at), 0);
}
END_TEST

static int32_t ranges_job(void (*run)(usbd_job *), uint8_t *buf, usbd_range *r, uint64_t n)
{
    usbd_job job = { .run = run, .fd = fd, .ptr = buf, .arg = n, .ctx = r };
    usbd_job_run(&job);
    return job.err;
}

START_TEST(ranges_past_int64_max_or_without_arrays_are_einval)
{
    uint8_t buf[256] = { 0 };
    usbd_range ok[2] = { { .pos = 0, .at = 0, .len = 100 }, { .pos = 100, .at = 100, .len = 100 } };
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, buf, ok, 2), 0);
    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, buf, ok, 2), 0);
    ck_assert_int_eq(usbd_pread_ranges_run(fd, buf, ok, 2), 200);

    usbd_range past[2] = { { .pos = INT64_MAX - 50, .at = 0, .len = 100 }, { .pos = INT64_MAX - 5, .at = 100, .len = 1 } };
    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, buf, past, 2), EINVAL);
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, buf, past, 2), EINVAL);
    usbd_range negative = { .pos = -1, .at = 0, .len = 1 };
    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, buf, &negative, 1), EINVAL);
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, buf, &negative, 1), EINVAL);

    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, buf, NULL, 2), EINVAL);
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, buf, NULL, 2), EINVAL);
    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, NULL, ok, 2), EINVAL);
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, NULL, ok, 2), EINVAL);
    usbd_range zeroes = { .pos = 0, .at = UINT64_MAX, .len = 100 };  /* at: write zeroes */
    ck_assert_int_eq(ranges_job(usbd_job_pwrite_ranges, NULL, &zeroes, 1), 0);  /* needs no buffer */
    ck_assert_int_eq(ranges_job(usbd_job_pread_ranges, buf, NULL, 0), 0);
}
END_TEST

Suite *blocks_suite(void)
{
    Suite *s = suite_create("blocks");
    TCase *tc = tcase_create("blocks");
    tcase_add_checked_fixture(tc, open_file, close_file);
    tcase_add_test(tc, blocks_of_zero_bytes_or_no_offsets_are_einval);
    tcase_add_test(tc, blocks_at_the_last_offsets_do_not_overflow);
    tcase_add_test(tc, ranges_past_int64_max_or_without_arrays_are_einval);
    suite_add_tcase(s, tc);
    return s;
}

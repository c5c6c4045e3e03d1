/* Lanes (src/services/jobs.c): jobs in submission order, one at a time, on the
 * real worker pool; after a failure the rest fail without running. Steps:
 * a step's job reads from arg's address (or in place), and a sequence of a
 * failing read and a step never runs the step. */
#include <check.h>
#include <errno.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "../../src/usbd.h"

enum { N = 24 };

static atomic_int order[N], ran, inside, overlapped;

/* arg: its index; len: microseconds to take; pos: an errno to fail with. */
static void step(usbd_job *job)
{
    if (atomic_fetch_add(&inside, 1) != 0)
        atomic_store(&overlapped, 1);
    usleep((useconds_t)job->len);
    order[atomic_fetch_add(&ran, 1)] = (int)job->arg;
    atomic_fetch_sub(&inside, 1);
    job->err = (int32_t)job->pos;
}

/* Until the pool has handed back `want` more jobs than at `base`. */
static void wait_finished(uint64_t base, uint64_t want)
{
    usbd_jobs_stats st;
    for (int i = 0; i < 5000; i++) {
        usbd_jobs_get_stats(&st, 0);
        if (st.finished >= base + want)
            return;
        usleep(1000);
    }
    ck_abort_msg("the lane's jobs did not finish");
}

static uint64_t finished_now(void)
{
    usbd_jobs_stats st;
    usbd_jobs_get_stats(&st, 0);
    return st.finished;
}

static void reset(void)
{
    atomic_store(&ran, 0);
    atomic_store(&inside, 0);
    atomic_store(&overlapped, 0);
}

START_TEST(in_order_one_at_a_time)
{
    static usbd_job jobs[N];
    usbd_lane *lane = usbd_lane_new();
    ck_assert_ptr_nonnull(lane);
    ck_assert_int_gt(usbd_jobs_start(4), 0);
    reset();
    uint64_t base = finished_now();
    for (int i = 0; i < N; i++) {
        jobs[i] = (usbd_job){ .run = step, .arg = i, .len = (i % 3) * 300 };
        ck_assert_int_eq(usbd_lane_submit(lane, &jobs[i]), 0);
    }
    wait_finished(base, N);
    ck_assert_int_eq(atomic_load(&ran), N);
    ck_assert_int_eq(atomic_load(&overlapped), 0);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(order[i], i);
        ck_assert_int_eq(jobs[i].err, 0);
    }
    usbd_lane_free(lane);
}
END_TEST

START_TEST(after_a_failure_the_rest_fail_unrun)
{
    static usbd_job jobs[N];
    usbd_lane *lane = usbd_lane_new(), *other = usbd_lane_new();
    reset();
    uint64_t base = finished_now();
    for (int i = 0; i < 10; i++) {
        jobs[i] = (usbd_job){ .run = step, .arg = i, .len = 200, .pos = i == 3 ? EIO : 0 };
        ck_assert_int_eq(usbd_lane_submit(lane, &jobs[i]), 0);
    }
    wait_finished(base, 10);
    ck_assert_int_eq(atomic_load(&ran), 4);     /* 0..3 ran; 4..9 did not */
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(jobs[i].err, i < 3 ? 0 : EIO);
    /* Later submissions fail too, on the spot as through the pool. */
    usbd_job late = { .run = step, .arg = 99 };
    usbd_lane_run(lane, &late);
    ck_assert_int_eq(late.err, EIO);
    base = finished_now();
    ck_assert_int_eq(usbd_lane_submit(lane, &late), 0);
    wait_finished(base, 1);
    ck_assert_int_eq(late.err, EIO);
    ck_assert_int_eq(atomic_load(&ran), 4);
    /* Another lane is not touched. */
    usbd_job fine = { .run = step, .arg = 7 };
    base = finished_now();
    ck_assert_int_eq(usbd_lane_submit(other, &fine), 0);
    wait_finished(base, 1);
    ck_assert_int_eq(fine.err, 0);
    ck_assert_int_eq(atomic_load(&ran), 5);
    usbd_lane_free(lane);
    usbd_lane_free(other);
}
END_TEST

/* A step that adds arg to each byte; pos counts its runs. */
static int add_step(const usbd_step *st, const uint8_t *src, uint8_t *dst, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++)
        dst[i] = (uint8_t)(src[i] + st->arg);
    ((usbd_step *)st)->pos++;
    return 0;
}

START_TEST(a_step_job_reads_from_arg_or_in_place)
{
    usbd_step st = { .run = add_step, .arg = 2 };
    uint8_t src[3] = { 1, 2, 3 }, dst[3] = { 0 };
    usbd_job job = { .run = usbd_job_step, .ctx = &st, .ptr = dst, .len = 3, .arg = (int64_t)(uintptr_t)src };
    usbd_job_run(&job);
    ck_assert_int_eq(job.err, 0);
    ck_assert_int_eq(dst[0], 3);
    ck_assert_int_eq(dst[2], 5);
    ck_assert_int_eq(src[0], 1);
    job.arg = 0;  /* in place */
    usbd_job_run(&job);
    ck_assert_int_eq(dst[0], 5);
    ck_assert_int_eq((int)st.pos, 2);
    ck_assert_int_eq(usbd_step_run(NULL, src, dst, 3), -EINVAL);
}
END_TEST

START_TEST(a_failed_read_skips_the_step)
{
    usbd_step st = { .run = add_step, .arg = 1 };
    uint8_t buf[8] = { 9 };
    usbd_job rd = { .run = usbd_job_pread, .fd = -1, .ptr = buf, .len = sizeof buf };
    usbd_job then = { .run = usbd_job_step, .ctx = &st, .ptr = buf, .len = sizeof buf };
    usbd_job *list[2] = { &rd, &then };
    usbd_job seq = { .run = usbd_job_sequence, .ptr = (uint8_t *)list, .len = 2 };
    usbd_job_run(&seq);
    ck_assert_int_eq(seq.err, EBADF);
    ck_assert_int_eq((int)seq.result, 0);
    ck_assert_int_eq((int)st.pos, 0);
    ck_assert_int_eq(buf[0], 9);
}
END_TEST

Suite *jobs_suite(void)
{
    Suite *s = suite_create("jobs");
    TCase *tc = tcase_create("lane");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, in_order_one_at_a_time);
    tcase_add_test(tc, after_a_failure_the_rest_fail_unrun);
    suite_add_tcase(s, tc);
    TCase *steps = tcase_create("step");
    tcase_add_test(steps, a_step_job_reads_from_arg_or_in_place);
    tcase_add_test(steps, a_failed_read_skips_the_step);
    suite_add_tcase(s, steps);
    return s;
}

/* Borrowed reply segments (src/server/borrow.c) and the file mapping that lends
 * its page cache (src/server/filemap.c). */
#include <check.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/server/borrow.h"
#include "../../src/usbd.h"

#define LEN 4096

static uint8_t buf[LEN], src[LEN];
static size_t sent_now;
static size_t fake_sent(struct borrowing *b) { return sent_now; }

static struct borrowing *fresh(void)
{
    static struct borrowing b;
    borrow_drop(&b);
    memset(&b, 0, sizeof b);
    b.buf = buf;
    b.len = LEN;
    b.data_sent = fake_sent;
    memset(buf, 'b', LEN);
    for (int i = 0; i < LEN; i++)
        src[i] = (uint8_t)i;
    sent_now = 0;
    return &b;
}

/* What the iovecs of [from, to) hold, gathered into out. */
static size_t gather(const struct borrowing *b, size_t from, size_t to, uint8_t *out, int max, int *niov)
{
    struct iovec iov[2 * USBD_MAX_BORROWED + 2];
    size_t bytes;
    *niov = borrow_iov(b, from, to, iov, max, &bytes);
    size_t at = 0;
    for (int i = 0; i < *niov; i++) {
        memcpy(out + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    ck_assert_uint_eq(at, bytes);
    return bytes;
}

START_TEST(segments_mix_with_the_buffer_in_order)
{
    struct borrowing *b = fresh();
    ck_assert_int_eq(borrow_add(b, 1000, src + 1000, 100), 1);
    ck_assert_int_eq(borrow_add(b, 100, src + 100, 50), 1);    /* before the first: sorted */
    ck_assert_int_eq(borrow_add(b, 1100, src + 1100, 200), 1); /* the run goes on: merged */
    ck_assert_uint_eq(b->n, 2);
    uint8_t out[LEN];
    int niov;
    ck_assert_uint_eq(gather(b, 0, LEN, out, 64, &niov), LEN);
    ck_assert_int_eq(niov, 5);
    for (int i = 0; i < LEN; i++) {
        bool lent = (i >= 100 && i < 150) || (i >= 1000 && i < 1300);
        ck_assert_uint_eq(out[i], lent ? (uint8_t)i : 'b');
    }
    /* From the middle of a segment, and an iovec too short for it all. */
    ck_assert_uint_eq(gather(b, 120, LEN, out, 64, &niov), LEN - 120);
    ck_assert_uint_eq(out[0], 120);
    ck_assert_uint_eq(gather(b, 120, LEN, out, 2, &niov), 1000 - 120);
    ck_assert_int_eq(niov, 2);
    borrow_drop(b);
}
END_TEST

START_TEST(out_of_segments_copies_instead)
{
    struct borrowing *b = fresh();
    for (int i = 0; i < USBD_MAX_BORROWED; i++)
        ck_assert_int_eq(borrow_add(b, (size_t)i * 64, src + i * 64, 32), 1);
    usbd_borrow_stats before, after;
    usbd_borrow_get_stats(&before);
    ck_assert_int_eq(borrow_add(b, 3000, src + 3000, 10), 0);
    usbd_borrow_get_stats(&after);
    ck_assert_uint_eq(after.copied_bytes - before.copied_bytes, 10);
    ck_assert(memcmp(buf + 3000, src + 3000, 10) == 0);
    ck_assert_uint_eq(b->n, USBD_MAX_BORROWED);
    ck_assert_int_eq(borrow_add(b, LEN - 10, src, 11), -1);   /* past the end */
    uint8_t out[LEN];
    int niov;
    ck_assert_uint_eq(gather(b, 0, LEN, out, 2 * USBD_MAX_BORROWED + 2, &niov), LEN);
    for (int i = 0; i < LEN; i++) {
        bool lent = i < USBD_MAX_BORROWED * 64 && i % 64 < 32;
        ck_assert_uint_eq(out[i], lent || (i >= 3000 && i < 3010) ? (uint8_t)i : 'b');
    }
    borrow_drop(b);
}
END_TEST

START_TEST(an_overlapping_declaration_wins)
{
    struct borrowing *b = fresh();
    static uint8_t other[LEN];
    memset(other, 'o', LEN);
    ck_assert_int_eq(borrow_add(b, 0, src, 200), 1);
    ck_assert_int_eq(borrow_add(b, 100, other, 50), 1);
    uint8_t out[LEN];
    int niov;
    gather(b, 0, LEN, out, 64, &niov);
    for (int i = 0; i < 200; i++)
        ck_assert_uint_eq(out[i], i >= 100 && i < 150 ? 'o' : (uint8_t)i);
    borrow_drop(b);
}
END_TEST

START_TEST(settling_copies_what_is_unsent)
{
    struct borrowing *b = fresh();
    ck_assert_int_eq(borrow_add(b, 0, src, 1000), 1);
    ck_assert_int_eq(borrow_add(b, 2000, src + 2000, 1000), 1);
    sent_now = 500;   /* half the first segment is on its way already */
    usbd_borrow_stats before, after;
    usbd_borrow_get_stats(&before);
    ck_assert_uint_eq(before.borrowing, 1);
    usbd_settle_borrowed();
    usbd_borrow_get_stats(&after);
    ck_assert_uint_eq(after.borrowing, 0);
    ck_assert_uint_eq(b->n, 0);
    ck_assert_uint_eq(after.settled_bytes - before.settled_bytes, 1500);
    memset(src, 0xee, LEN);   /* the lender reuses its memory: the reply must not care */
    uint8_t out[LEN];
    int niov;
    ck_assert_uint_eq(gather(b, 500, LEN, out, 64, &niov), LEN - 500);
    ck_assert_int_eq(niov, 1);
    for (int i = 500; i < LEN; i++) {
        bool lent = i < 1000 || (i >= 2000 && i < 3000);
        ck_assert_uint_eq(out[i - 500], lent ? (uint8_t)i : 'b');
    }
}
END_TEST

START_TEST(filemap_lends_only_cached_bytes_inside_the_file)
{
    char path[] = "/tmp/usbd-filemap-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    static uint8_t data[3 * 4096 + 100];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    ck_assert_int_eq(pwrite(fd, data, sizeof data, 0), (ssize_t)sizeof data);
    char err[128];
    usbd_filemap *m = usbd_filemap_open(fd, err, sizeof err);
    ck_assert_ptr_nonnull(m);
    const uint8_t *p = usbd_filemap_resident(m, 100, sizeof data - 100);  /* just written: cached */
    ck_assert_ptr_nonnull(p);
    ck_assert(memcmp(p, data + 100, sizeof data - 100) == 0);
    ck_assert_ptr_null(usbd_filemap_resident(m, 0, sizeof data + 1));     /* past the end */
    ck_assert_ptr_null(usbd_filemap_resident(m, 1ull << 40, 4096));
    /* The file grows: the mapping follows. */
    ck_assert_int_eq(pwrite(fd, data, 4096, 1 << 20), 4096);
    p = usbd_filemap_resident(m, 1 << 20, 4096);
    ck_assert_ptr_nonnull(p);
    ck_assert(memcmp(p, data, 4096) == 0);
    /* A hole never read is not in the page cache. */
    ck_assert_ptr_null(usbd_filemap_resident(m, 512 * 1024, 4096));
    usbd_filemap_close(m);
    close(fd);
}
END_TEST

Suite *borrow_suite(void)
{
    Suite *s = suite_create("borrow");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, segments_mix_with_the_buffer_in_order);
    tcase_add_test(tc, out_of_segments_copies_instead);
    tcase_add_test(tc, an_overlapping_declaration_wins);
    tcase_add_test(tc, settling_copies_what_is_unsent);
    tcase_add_test(tc, filemap_lends_only_cached_bytes_inside_the_file);
    suite_add_tcase(s, tc);
    return s;
}

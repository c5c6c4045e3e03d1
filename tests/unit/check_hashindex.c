/* The advisory hash -> id table (src/services/hashindex.c). */
#include <check.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/usbd.h"

static char path[64];

static void make_path(void)
{
    snprintf(path, sizeof path, "build/unit-hashindex.%d", (int)getpid());
    unlink(path);
}

static void drop_path(void)
{
    unlink(path);
}

static usbd_hashindex *open_fresh(uint64_t bytes, int want_fresh)
{
    char err[256] = "";
    int fresh = -1;
    usbd_hashindex *x = usbd_hashindex_open(path, bytes, &fresh, err, sizeof err);
    ck_assert_msg(x != NULL, "open %s: %s", path, err);
    ck_assert_int_eq(fresh, want_fresh);
    return x;
}

/* A random hash (XXH3-128 output is uniform), with home bucket `home` when
 * home is not -1. */
static void random_hash(uint8_t *h, uint64_t slots, int64_t home)
{
    uint64_t buckets = slots / USBD_HASHINDEX_BUCKET;
    for (int i = 0; i < 16; i++)
        h[i] = (uint8_t)random();
    if (home >= 0) {
        uint64_t v;
        memcpy(&v, h, 8);
        v = v / buckets * buckets + (uint64_t)home;
        memcpy(h, &v, 8);
    }
}

/* n random hashes with home bucket home into h, put with ids first_id on. */
static void fill_bucket(usbd_hashindex *x, uint8_t (*h)[16], int n, int64_t home, uint64_t first_id)
{
    uint64_t slots = usbd_hashindex_slots(x);
    for (int i = 0; i < n; i++) {
        random_hash(h[i], slots, home);
        usbd_hashindex_put(x, h[i], first_id + (uint64_t)i);
    }
}

START_TEST(put_then_get_and_lookup_round_trip)
{
    srandom(1);
    usbd_hashindex *x = open_fresh(1 << 20, 1);
    uint64_t slots = usbd_hashindex_slots(x);
    ck_assert_uint_eq(slots, (1 << 20) / USBD_HASHINDEX_ENTRY);
    enum { N = 20000 };   /* 1.2 a bucket: any bucket overflowing, 1 run in 11 */
    uint8_t *h = malloc(16 * N);
    uint64_t ids[N];
    for (int i = 0; i < N; i++) {
        random_hash(h + 16 * i, slots, -1);
        usbd_hashindex_put(x, h + 16 * i, 1000 + i);
    }
    usbd_hashindex_lookup(x, h, N, ids);
    int found = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(ids[i] == 0 || ids[i] == (uint64_t)(1000 + i));
        found += ids[i] != 0;
        ck_assert_uint_eq(usbd_hashindex_get(x, h + 16 * i), ids[i]);
    }
    ck_assert_int_ge(found, N - 10);
    /* A put of a present hash replaces its entry. */
    usbd_hashindex_put(x, h, 7);
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 7);
    uint8_t absent[16];
    random_hash(absent, slots, -1);
    ck_assert_uint_eq(usbd_hashindex_get(x, absent), 0);
    free(h);
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

START_TEST(remove_only_when_the_id_matches)
{
    srandom(2);
    usbd_hashindex *x = open_fresh(0, 1);
    ck_assert_uint_eq(usbd_hashindex_slots(x), 64);   /* the least */
    uint8_t a[16], b[16];
    random_hash(a, 64, 5);
    random_hash(b, 64, 5);   /* b after a in a's bucket */
    usbd_hashindex_put(x, a, 11);
    usbd_hashindex_put(x, b, 22);
    usbd_hashindex_remove(x, a, 12);   /* re-pointed since: stays */
    ck_assert_uint_eq(usbd_hashindex_get(x, a), 11);
    usbd_hashindex_remove(x, a, 11);
    ck_assert_uint_eq(usbd_hashindex_get(x, a), 0);
    /* The hole a left does not hide b behind it. */
    ck_assert_uint_eq(usbd_hashindex_get(x, b), 22);
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

START_TEST(a_full_bucket_evicts_one_and_keeps_the_newest)
{
    srandom(3);
    usbd_hashindex *x = open_fresh(0, 1);
    uint64_t slots = usbd_hashindex_slots(x);
    enum { N = USBD_HASHINDEX_BUCKET + 1 };
    uint8_t h[N][16];
    /* The last bucket: nothing past it is touched. */
    fill_bucket(x, h, N, (int64_t)(slots / USBD_HASHINDEX_BUCKET - 1), 100);
    int found = 0;
    for (int i = 0; i < N; i++) {
        uint64_t id = usbd_hashindex_get(x, h[i]);
        ck_assert(id == 0 || id == (uint64_t)(100 + i));
        found += id != 0;
    }
    ck_assert_int_eq(found, USBD_HASHINDEX_BUCKET);
    ck_assert_uint_eq(usbd_hashindex_get(x, h[N - 1]), 100 + N - 1);   /* the newest stays */
    /* Every other bucket is still empty. */
    uint8_t other[16];
    for (int b = 0; b + 1 < (int)(slots / USBD_HASHINDEX_BUCKET); b++) {
        random_hash(other, slots, b);
        ck_assert_uint_eq(usbd_hashindex_get(x, other), 0);
    }
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

/* used counts entries not empty through puts, removes, a clear and a
 * reopen; evicted counts the puts a full bucket cost another entry. */
START_TEST(used_and_evicted_count_what_the_table_holds)
{
    srandom(6);
    usbd_hashindex *x = open_fresh(0, 1);
    uint64_t slots = usbd_hashindex_slots(x);
    enum { N = USBD_HASHINDEX_BUCKET + 3 };
    uint8_t h[N][16];
    fill_bucket(x, h, N, 2, 100);
    ck_assert_uint_eq(usbd_hashindex_used(x), USBD_HASHINDEX_BUCKET);
    ck_assert_uint_eq(usbd_hashindex_evicted(x), 3);
    usbd_hashindex_put(x, h[N - 1], 7);        /* a present hash: replaced */
    ck_assert_uint_eq(usbd_hashindex_used(x), USBD_HASHINDEX_BUCKET);
    ck_assert_uint_eq(usbd_hashindex_evicted(x), 3);
    usbd_hashindex_remove(x, h[N - 1], 8);     /* another id: stays */
    ck_assert_uint_eq(usbd_hashindex_used(x), USBD_HASHINDEX_BUCKET);
    usbd_hashindex_remove(x, h[N - 1], 7);
    ck_assert_uint_eq(usbd_hashindex_used(x), USBD_HASHINDEX_BUCKET - 1);
    uint8_t other[16];
    random_hash(other, slots, 5);
    usbd_hashindex_put(x, other, 9);
    usbd_hashindex_close(x);

    x = open_fresh(0, 0);                      /* counted again at open */
    ck_assert_uint_eq(usbd_hashindex_used(x), USBD_HASHINDEX_BUCKET);
    ck_assert_uint_eq(usbd_hashindex_evicted(x), 0);
    usbd_hashindex_clear(x);
    ck_assert_uint_eq(usbd_hashindex_used(x), 0);
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

/* What docs/devices/dedupdisk.md promises for sizing index=: with as many
 * contents as half the entries about 99% of them are found, with 3/4 about
 * 95%, with as many as the entries about 86%. */
static double found_at_load(double load)
{
    usbd_hashindex *x = open_fresh(1 << 20, 1);
    uint64_t slots = usbd_hashindex_slots(x), n = (uint64_t)(load * (double)slots), found = 0;
    uint8_t *h = malloc(16 * n);
    for (uint64_t i = 0; i < n; i++) {
        random_hash(h + 16 * i, slots, -1);
        usbd_hashindex_put(x, h + 16 * i, i + 1);
    }
    for (uint64_t i = 0; i < n; i++)
        found += usbd_hashindex_get(x, h + 16 * i) == i + 1;
    free(h);
    usbd_hashindex_close(x);
    drop_path();
    return (double)found / (double)n;
}

START_TEST(contents_found_as_the_table_fills)
{
    srandom(7);
    double half = found_at_load(0.5), three_quarters = found_at_load(0.75), full = found_at_load(1.0);
    ck_assert_msg(half > 0.985, "at 1/2: %.4f found", half);
    ck_assert_msg(three_quarters > 0.93 && three_quarters < 0.96, "at 3/4: %.4f found", three_quarters);
    ck_assert_msg(full > 0.84 && full < 0.88, "full: %.4f found", full);
}
END_TEST

/* An entry keeps 24 bits of its hash: another hash with the same home
 * bucket and those bits is answered with its id (the caller's check of
 * every hit is what rejects it), and a put of it replaces the entry. Ids
 * past 40 bits are not kept. */
START_TEST(a_tag_twin_shares_the_entry_and_big_ids_are_not_kept)
{
    srandom(5);
    usbd_hashindex *x = open_fresh(4096, 1);
    uint64_t slots = usbd_hashindex_slots(x);
    uint8_t a[16], twin[16], other[16];
    random_hash(a, slots, 3);
    memcpy(twin, a, 16);
    twin[15] ^= 0xff;           /* outside the home's bytes and the tag */
    memcpy(other, a, 16);
    other[9] ^= 1;              /* inside the tag */
    usbd_hashindex_put(x, a, 31);
    ck_assert_uint_eq(usbd_hashindex_get(x, twin), 31);
    ck_assert_uint_eq(usbd_hashindex_get(x, other), 0);
    usbd_hashindex_put(x, twin, 32);
    ck_assert_uint_eq(usbd_hashindex_get(x, a), 32);
    usbd_hashindex_put(x, other, (uint64_t)1 << 40);
    ck_assert_uint_eq(usbd_hashindex_get(x, other), 0);
    usbd_hashindex_put(x, other, ((uint64_t)1 << 40) - 1);
    ck_assert_uint_eq(usbd_hashindex_get(x, other), ((uint64_t)1 << 40) - 1);
    ck_assert_uint_eq(usbd_hashindex_get(x, a), 32);
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

START_TEST(reopening_keeps_entries_and_another_size_starts_empty)
{
    srandom(4);
    usbd_hashindex *x = open_fresh(64 * 1024, 1);
    uint8_t h[16];
    random_hash(h, 1, -1);
    usbd_hashindex_put(x, h, 42);
    usbd_hashindex_close(x);   /* no msync: the page cache has it */

    x = open_fresh(64 * 1024 + 1, 0);   /* the same number of slots */
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 42);
    usbd_hashindex_clear(x);
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 0);
    usbd_hashindex_put(x, h, 43);
    usbd_hashindex_close(x);

    x = open_fresh(128 * 1024, 1);
    ck_assert_uint_eq(usbd_hashindex_slots(x), 128 * 1024 / USBD_HASHINDEX_ENTRY);
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 0);
    usbd_hashindex_put(x, h, 44);
    usbd_hashindex_close(x);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_size, USBD_HASHINDEX_HEADER + 128 * 1024 / USBD_HASHINDEX_ENTRY * USBD_HASHINDEX_ENTRY);

    /* A damaged header: remade empty at the same size. */
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "X", 1, 0), 1);
    close(fd);
    x = open_fresh(128 * 1024, 1);
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 0);
    usbd_hashindex_close(x);
    drop_path();
}
END_TEST

/* A NULL hash or array (a nil from Lua) finds and changes nothing. */
START_TEST(null_hashes_are_nobodys)
{
    usbd_hashindex *x = open_fresh(4096, 1);
    uint8_t h[16];
    uint64_t ids[2] = { 7, 7 };
    random_hash(h, usbd_hashindex_slots(x), -1);
    usbd_hashindex_put(x, h, 5);
    usbd_hashindex_put(x, NULL, 6);
    usbd_hashindex_remove(x, NULL, 5);
    ck_assert_uint_eq(usbd_hashindex_get(x, NULL), 0);
    ck_assert_uint_eq(usbd_hashindex_get(x, h), 5);
    usbd_hashindex_lookup(x, NULL, 2, ids);
    usbd_hashindex_lookup(x, h, 1, NULL);
    ck_assert_uint_eq(ids[0], 7);
    usbd_hashindex_lookup(x, h, 1, ids);
    ck_assert_uint_eq(ids[0], 5);
    usbd_hashindex_close(x);
}
END_TEST

START_TEST(a_bad_path_is_an_error_message)
{
    char err[256] = "";
    int fresh = -1;
    ck_assert_ptr_null(usbd_hashindex_open("/nonexistent/dir/idx", 4096, &fresh, err, sizeof err));
    ck_assert_str_eq(err, "No such file or directory");
}
END_TEST

Suite *hashindex_suite(void)
{
    Suite *s = suite_create("hashindex");
    TCase *tc = tcase_create("table");
    tcase_add_checked_fixture(tc, make_path, drop_path);
    tcase_add_test(tc, put_then_get_and_lookup_round_trip);
    tcase_add_test(tc, remove_only_when_the_id_matches);
    tcase_add_test(tc, a_full_bucket_evicts_one_and_keeps_the_newest);
    tcase_add_test(tc, used_and_evicted_count_what_the_table_holds);
    tcase_add_test(tc, contents_found_as_the_table_fills);
    tcase_add_test(tc, a_tag_twin_shares_the_entry_and_big_ids_are_not_kept);
    tcase_add_test(tc, reopening_keeps_entries_and_another_size_starts_empty);
    tcase_add_test(tc, null_hashes_are_nobodys);
    tcase_add_test(tc, a_bad_path_is_an_error_message);
    suite_add_tcase(s, tc);
    return s;
}

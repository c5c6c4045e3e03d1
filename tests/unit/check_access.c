/* The allow and deny lists and the refusals' log (server/access.c). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "../../src/server/access.h"

static struct access_list allow, deny;
static char err[256];

static void teardown(void)
{
    access_list_free(&allow);
    access_list_free(&deny);
}

static struct access_addr addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        ck_assert_int_eq(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
        len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        ck_assert_int_eq(inet_pton(AF_INET, text, &s4->sin_addr), 1);
        len = sizeof *s4;
    }
    struct access_addr a;
    ck_assert(access_addr_from((struct sockaddr *)&ss, len, &a));
    return a;
}

static bool permitted(const char *text)
{
    struct access_addr a = addr(text);
    return access_permitted(&allow, &deny, &a);
}

START_TEST(empty_lists_admit_everyone)
{
    ck_assert(permitted("192.0.2.1"));
    ck_assert(permitted("2001:db8::1"));
}
END_TEST

START_TEST(ipv4_prefixes)
{
    ck_assert_int_eq(access_list_add(&allow, "192.0.2.0/24,10.1.2.3", "--allow", err, sizeof err), 0);
    ck_assert(permitted("192.0.2.0"));
    ck_assert(permitted("192.0.2.255"));
    ck_assert(!permitted("192.0.3.0"));
    ck_assert(permitted("10.1.2.3"));      /* no prefix: the one address */
    ck_assert(!permitted("10.1.2.4"));
    ck_assert(!permitted("2001:db8::1"));  /* no IPv6 entry */
}
END_TEST

START_TEST(odd_prefixes_and_host_bits)
{
    /* /20 cuts a byte; the host bits given (.7) are ignored. */
    ck_assert_int_eq(access_list_add(&allow, "172.16.7.7/20", "--allow", err, sizeof err), 0);
    ck_assert(permitted("172.16.0.1"));
    ck_assert(permitted("172.16.15.255"));
    ck_assert(!permitted("172.16.16.0"));
    ck_assert_int_eq(access_list_add(&deny, "0.0.0.0/0", "--deny", err, sizeof err), 0);
    ck_assert(!permitted("172.16.0.1"));
    ck_assert(permitted("2001:db8::1") == false);  /* allow has no IPv6 */
}
END_TEST

START_TEST(ipv6_prefixes)
{
    ck_assert_int_eq(access_list_add(&allow, "2001:db8::/33,::1", "--allow", err, sizeof err), 0);
    ck_assert(permitted("2001:db8::1"));
    ck_assert(permitted("2001:db8:7fff:ffff::1"));
    ck_assert(!permitted("2001:db8:8000::1"));
    ck_assert(permitted("::1"));
    ck_assert(!permitted("::2"));
    ck_assert(!permitted("192.0.2.1"));
}
END_TEST

START_TEST(mapped_ipv4_is_ipv4)
{
    /* An IPv4 client on an IPv6 socket arrives as ::ffff:a.b.c.d. */
    ck_assert_int_eq(access_list_add(&allow, "127.0.0.0/8", "--allow", err, sizeof err), 0);
    ck_assert(permitted("::ffff:127.0.0.1"));
    ck_assert(!permitted("::ffff:128.0.0.1"));
    /* And a mapped entry is the IPv4 one. */
    ck_assert_int_eq(access_list_add(&deny, "::ffff:127.0.0.2/128", "--deny", err, sizeof err), 0);
    ck_assert(!permitted("127.0.0.2"));
    ck_assert(permitted("127.0.0.3"));
}
END_TEST

START_TEST(deny_wins)
{
    ck_assert_int_eq(access_list_add(&allow, "10.0.0.0/8", "--allow", err, sizeof err), 0);
    ck_assert_int_eq(access_list_add(&deny, "10.9.0.0/16", "--deny", err, sizeof err), 0);
    ck_assert(permitted("10.8.1.1"));
    ck_assert(!permitted("10.9.1.1"));
    /* deny alone: everyone else is admitted. */
    access_list_free(&allow);
    ck_assert(permitted("192.0.2.1"));
    ck_assert(!permitted("10.9.0.0"));
}
END_TEST

START_TEST(bad_entries_are_one_line_errors)
{
    const char *bad[] = { "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/-1",
                          "host.example", "", "10.0.0.1,", ",10.0.0.1", "1.2.3", "::ffff:1.2.3.4/95" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        ck_assert_msg(access_list_add(&allow, bad[i], "--allow", err, sizeof err) < 0, "'%s' parsed", bad[i]);
        ck_assert_msg(strncmp(err, "--allow '", 9) == 0 && !strchr(err, '\n'), "'%s': %s", bad[i], err);
    }
}
END_TEST

START_TEST(unix_peers_are_not_filtered)
{
    struct sockaddr sa = { .sa_family = AF_UNIX };
    struct access_addr a;
    ck_assert(!access_addr_from(&sa, sizeof sa, &a));
}
END_TEST

START_TEST(refusals_logged_once_per_address)
{
    static struct access_log lg;
    memset(&lg, 0, sizeof lg);
    struct access_addr a = addr("192.0.2.1"), b = addr("192.0.2.2");
    uint64_t held = 99;
    ck_assert(access_log_refusal(&lg, &a, 1000, &held));
    ck_assert_uint_eq(held, 0);
    for (int i = 0; i < 1000; i++)
        ck_assert(!access_log_refusal(&lg, &a, 1000 + i * 0.01, &held));
    ck_assert(access_log_refusal(&lg, &b, 1011, &held));
    ck_assert_uint_eq(held, 1000);  /* said with the next line */
    /* A window later, the address is logged again. */
    ck_assert(access_log_refusal(&lg, &a, 1000 + ACCESS_LOG_WINDOW, &held));
}
END_TEST

START_TEST(a_scan_writes_a_few_lines)
{
    static struct access_log lg;
    memset(&lg, 0, sizeof lg);
    int lines = 0;
    uint64_t held;
    for (int i = 0; i < 65536; i++) {  /* 192.0.0.0-192.0.255.255 within 59 s */
        char text[32];
        snprintf(text, sizeof text, "192.0.%d.%d", i >> 8, i & 255);
        struct access_addr a = addr(text);
        lines += access_log_refusal(&lg, &a, 5000 + i * (59.0 / 65536), &held);
    }
    ck_assert_int_eq(lines, ACCESS_LOG_BURST);
}
END_TEST

Suite *access_suite(void)
{
    Suite *s = suite_create("access");
    TCase *tc = tcase_create("access");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, empty_lists_admit_everyone);
    tcase_add_test(tc, ipv4_prefixes);
    tcase_add_test(tc, odd_prefixes_and_host_bits);
    tcase_add_test(tc, ipv6_prefixes);
    tcase_add_test(tc, mapped_ipv4_is_ipv4);
    tcase_add_test(tc, deny_wins);
    tcase_add_test(tc, bad_entries_are_one_line_errors);
    tcase_add_test(tc, unix_peers_are_not_filtered);
    tcase_add_test(tc, refusals_logged_once_per_address);
    tcase_add_test(tc, a_scan_writes_a_few_lines);
    suite_add_tcase(s, tc);
    return s;
}

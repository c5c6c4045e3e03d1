/* The command line and size parsing. */
#include <check.h>
#include <string.h>

#include "../../src/config.h"
#include "../../src/usbd.h"

static struct usbd_config cfg;
static char err[512];

static int parse(int argc, char **argv)
{
    cli_defaults(&cfg);
    err[0] = '\0';
    return cli_parse(&cfg, argc, argv, err, sizeof err);
}

START_TEST(sizes)
{
    ck_assert_int_eq(usbd_parse_size("4096"), 4096);
    ck_assert_int_eq(usbd_parse_size("64k"), 65536);
    ck_assert_int_eq(usbd_parse_size("1G"), INT64_C(1) << 30);
    ck_assert_int_eq(usbd_parse_size("1GiB"), INT64_C(1) << 30);
    ck_assert_int_eq(usbd_parse_size("2T"), INT64_C(2) << 40);
    ck_assert_int_eq(usbd_parse_size("512B"), 512);
    ck_assert_int_eq(usbd_parse_size(""), -1);
    ck_assert_int_eq(usbd_parse_size("-1"), -1);
    ck_assert_int_eq(usbd_parse_size("1X"), -1);
    ck_assert_int_eq(usbd_parse_size("G"), -1);
    ck_assert_int_eq(usbd_parse_size("1G1"), -1);
    ck_assert_int_eq(usbd_parse_size("99999999999999999999"), -1);
    ck_assert_int_eq(usbd_parse_size("9000000P"), -1);  /* overflows int64 */
}
END_TEST

/* One rule for every suffix: 1024-based, any case, B or iB optional. */
START_TEST(size_suffixes_are_1024_based)
{
    const char *gib[] = { "1G", "1g", "1GB", "1gb", "1GiB", "1gib", "1Gi" };
    for (size_t i = 0; i < sizeof gib / sizeof *gib; i++)
        ck_assert_int_eq(usbd_parse_size(gib[i]), INT64_C(1) << 30);
    ck_assert_int_eq(usbd_parse_size("1KB"), 1024);
    ck_assert_int_eq(usbd_parse_size("3M"), 3 << 20);
    ck_assert_int_eq(usbd_parse_size("1P"), INT64_C(1) << 50);
    ck_assert_int_eq(usbd_parse_size("0"), 0);
    ck_assert_int_eq(usbd_parse_size("1iB"), -1);  /* iB needs a K, M, G, T or P */
    ck_assert_int_eq(usbd_parse_size("1 G"), -1);
    ck_assert_int_eq(usbd_parse_size("+1G"), -1);
    ck_assert_int_eq(usbd_parse_size("1e9"), -1);
    ck_assert_int_eq(usbd_parse_size("0x100"), -1);
    ck_assert_int_eq(usbd_parse_size("1GG"), -1);
    ck_assert_int_eq(usbd_parse_size(NULL), -1);
}
END_TEST

/* A decimal part, when the bytes come out whole. */
START_TEST(size_fractions)
{
    ck_assert_int_eq(usbd_parse_size("1.5G"), INT64_C(3) << 29);
    ck_assert_int_eq(usbd_parse_size("1.5GiB"), INT64_C(3) << 29);
    ck_assert_int_eq(usbd_parse_size("0.5K"), 512);
    ck_assert_int_eq(usbd_parse_size("0.25k"), 256);
    ck_assert_int_eq(usbd_parse_size("2.0"), 2);
    ck_assert_int_eq(usbd_parse_size("1.000000000000000000000000M"), 1 << 20);  /* zeros past 18 digits */
    ck_assert_int_eq(usbd_parse_size("0.0009765625M"), 1024);
    ck_assert_int_eq(usbd_parse_size("1.3K"), -1);     /* 1331.2 bytes */
    ck_assert_int_eq(usbd_parse_size("1.5"), -1);      /* half a byte */
    ck_assert_int_eq(usbd_parse_size("1.0000000000000000001P"), -1);
    ck_assert_int_eq(usbd_parse_size(".5G"), -1);
    ck_assert_int_eq(usbd_parse_size("1.G"), -1);
    ck_assert_int_eq(usbd_parse_size("1.5.0G"), -1);
    /* At the edge of int64: 2^63 - 1 is a size, 2^63 and 8192P are not. */
    ck_assert_int_eq(usbd_parse_size("9223372036854775807"), INT64_MAX);
    ck_assert_int_eq(usbd_parse_size("9223372036854775808"), -1);
    ck_assert_int_eq(usbd_parse_size("8191P"), INT64_C(8191) << 50);
    ck_assert_int_eq(usbd_parse_size("8191.5P"), (INT64_C(16383) << 49));
    ck_assert_int_eq(usbd_parse_size("8192P"), -1);
    ck_assert_int_eq(usbd_parse_size("8191.9999999999999999P"), -1);
}
END_TEST

/* The error: one line, naming the key and the forms, saying what is wrong. */
START_TEST(size_errors)
{
    char msg[512];
    ck_assert_str_eq(usbd_size_error(msg, sizeof msg, "size", "10Q"),
                     "size=10Q: not a size; use bytes or a number with K, M, G, T or P (1024-based,"
                     " B or iB after it optional), like size=1G or size=1.5G");
    usbd_size_error(msg, sizeof msg, "cache", "1.3K");
    ck_assert_msg(strncmp(msg, "cache=1.3K: not a whole number of bytes; use bytes", 50) == 0, "%s", msg);
    ck_assert(strstr(msg, "like cache=1G"));
    usbd_size_error(msg, sizeof msg, "size", "8192P");
    ck_assert_str_eq(msg, "size=8192P: too large; a size is less than 8192P (2^63 bytes)");
    usbd_size_error(msg, sizeof msg, NULL, "lots");
    ck_assert_msg(strncmp(msg, "'lots': not a size; use bytes", 29) == 0, "%s", msg);
    ck_assert(strstr(msg, "like 1G or 1.5G"));
    ck_assert(strchr(msg, '\n') == NULL);
    /* The server's options say it the same way, and their bounds as sizes. */
    char *bad[] = { "usbd-lua", "--max-inflight-bytes", "10Q", "d.lua", NULL };
    ck_assert_int_eq(parse(4, bad), -1);
    ck_assert_msg(strncmp(err, "--max-inflight-bytes=10Q: not a size; use bytes", 47) == 0, "%s", err);
    char *small[] = { "usbd-lua", "--max-request", "1.5K", "d.lua", NULL };
    ck_assert_int_eq(parse(4, small), -1);
    ck_assert_str_eq(err, "--max-request=1.5K: want a size from 4K to 1G");
    char *frac[] = { "usbd-lua", "--max-request", "1.5M", "d.lua", NULL };
    ck_assert_int_eq(parse(4, frac), 0);
    ck_assert_uint_eq(cfg.max_request, 3u << 19);
}
END_TEST

START_TEST(full_command_line)
{
    char *argv[] = { "usbd-lua", "-r", "devices/ramdisk.lua", "-U", "/tmp/s", "-v", "size=1G", "x=a=b", NULL };
    ck_assert_int_eq(parse(8, argv), 0);
    ck_assert_str_eq(cfg.script, "devices/ramdisk.lua");
    ck_assert_str_eq(cfg.unix_path, "/tmp/s");
    ck_assert(cfg.readonly);
    ck_assert_int_eq(cfg.verbose, 1);
    ck_assert_int_eq(cfg.nargs, 2);
    ck_assert_ptr_null(cfg.nbd_device);
}
END_TEST

START_TEST(kernel_device)
{
    char *argv[] = { "usbd-lua", "d.lua", "/dev/nbd1", "size=1M", NULL };
    ck_assert_int_eq(parse(4, argv), 0);
    ck_assert_str_eq(cfg.nbd_device, "/dev/nbd1");
    ck_assert_int_eq(cfg.nargs, 1);
    /* Defaults: 64 MiB requests, as nbdkit takes (clients send 42 MB reads). */
    ck_assert_uint_eq(cfg.max_request, 64u << 20);
}
END_TEST

START_TEST(tcp_and_limits)
{
    char *argv[] = { "usbd-lua", "-p", "10809", "-i", "::1", "--max-request", "1M",
                     "--max-connections", "3", "--threads", "4", "d.lua", NULL };
    ck_assert_int_eq(parse(12, argv), 0);
    ck_assert_uint_eq(cfg.job_threads, 4);
    ck_assert_str_eq(cfg.port, "10809");
    ck_assert_str_eq(cfg.ip, "::1");
    ck_assert_uint_eq(cfg.max_request, 1u << 20);
    ck_assert_uint_eq(cfg.max_connections, 3);
}
END_TEST

START_TEST(mistakes_get_one_line)
{
    char *none[] = { "usbd-lua", NULL };
    ck_assert_int_eq(parse(1, none), -1);
    ck_assert(strstr(err, "no device script"));
    /* Words without '=' name the devices below (lua/usbd/device.lua checks them). */
    char *layers[] = { "usbd-lua", "t.lua", "out=x", "--", "filedisk", "path=y", NULL };
    ck_assert_int_eq(parse(6, layers), 0);
    ck_assert_int_eq(cfg.nargs, 3);
    ck_assert_str_eq(cfg.args[1], "filedisk");
    char *seed[] = { "usbd-lua", "--seed", "7", "d.lua", NULL };
    ck_assert_int_eq(parse(4, seed), -1);
    ck_assert(strstr(err, "--check"));
    char *badopt[] = { "usbd-lua", "--frobnicate", "d.lua", NULL };
    ck_assert_int_eq(parse(3, badopt), -1);
    ck_assert(strstr(err, "--frobnicate"));
    char *noval[] = { "usbd-lua", "d.lua", "-U", NULL };
    ck_assert_int_eq(parse(3, noval), -1);
    ck_assert(strstr(err, "needs a value"));
    char *badport[] = { "usbd-lua", "-p", "http", "d.lua", NULL };
    ck_assert_int_eq(parse(4, badport), -1);
    ck_assert(strstr(err, "--port"));
    char *both[] = { "usbd-lua", "-U", "/tmp/s", "d.lua", "/dev/nbd0", NULL };
    ck_assert_int_eq(parse(5, both), -1);
    char *badlimit[] = { "usbd-lua", "--max-request", "12", "d.lua", NULL };
    ck_assert_int_eq(parse(4, badlimit), -1);
    ck_assert(strchr(err, '\n') == NULL);
    char *checkserve[] = { "usbd-lua", "--check", "-U", "/tmp/s", "d.lua", NULL };
    ck_assert_int_eq(parse(5, checkserve), -1);
    ck_assert(strstr(err, "--check"));
    char *badthreads[] = { "usbd-lua", "--threads", "0", "d.lua", NULL };
    ck_assert_int_eq(parse(4, badthreads), -1);
    ck_assert(strstr(err, "--threads"));
}
END_TEST

START_TEST(server_operations)
{
    char *argv[] = { "usbd-lua", "--trace", "/tmp/t", "--pidfile", "/tmp/p", "--run", "nbdinfo $uri",
                     "--exit-last", "d.lua", NULL };
    ck_assert_int_eq(parse(9, argv), 0);
    ck_assert_str_eq(cfg.trace_path, "/tmp/t");
    ck_assert_str_eq(cfg.pidfile, "/tmp/p");
    ck_assert_str_eq(cfg.run, "nbdinfo $uri");
    ck_assert(cfg.exit_last);
    char *run_kernel[] = { "usbd-lua", "--run", "true", "d.lua", "/dev/nbd0", NULL };
    ck_assert_int_eq(parse(5, run_kernel), -1);
    ck_assert(strstr(err, "--run and /dev/nbd0"));
    char *last_kernel[] = { "usbd-lua", "--exit-last", "d.lua", NULL };
    ck_assert_int_eq(parse(3, last_kernel), -1);
    ck_assert(strstr(err, "--exit-last"));
    char *check_trace[] = { "usbd-lua", "--check", "--trace", "/tmp/t", "d.lua", NULL };
    ck_assert_int_eq(parse(5, check_trace), -1);
    ck_assert(strstr(err, "--check"));
    char *empty[] = { "usbd-lua", "--pidfile", "", "-U", "/tmp/s", "d.lua", NULL };
    ck_assert_int_eq(parse(6, empty), -1);
    ck_assert(strstr(err, "--pidfile needs a value"));
}
END_TEST

/* --help DEVICE: the device and the words after it go to luahost, which
 * describes them; nothing else about the command line is checked. */
START_TEST(help_for_a_device)
{
    char *argv[] = { "usbd-lua", "--help", "cryptdisk", "--", "filedisk", NULL };
    ck_assert_int_eq(parse(5, argv), 0);
    ck_assert(cfg.help);
    ck_assert_str_eq(cfg.script, "cryptdisk");
    ck_assert_int_ge(cfg.nargs, 1);  /* getopt may take the "--" */
    ck_assert_str_eq(cfg.args[cfg.nargs - 1], "filedisk");

    char *after[] = { "usbd-lua", "--seed", "3", "ramdisk", "-h", "/dev/nbd1", "size=1G", NULL };
    ck_assert_int_eq(parse(7, after), 0);
    ck_assert(cfg.help);
    ck_assert_str_eq(cfg.script, "ramdisk");
    ck_assert_str_eq(cfg.nbd_device, "/dev/nbd1");
    ck_assert_int_eq(cfg.nargs, 1);
}
END_TEST

Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, sizes);
    tcase_add_test(tc, size_suffixes_are_1024_based);
    tcase_add_test(tc, size_fractions);
    tcase_add_test(tc, size_errors);
    tcase_add_test(tc, full_command_line);
    tcase_add_test(tc, kernel_device);
    tcase_add_test(tc, tcp_and_limits);
    tcase_add_test(tc, mistakes_get_one_line);
    tcase_add_test(tc, server_operations);
    tcase_add_test(tc, help_for_a_device);
    suite_add_tcase(s, tc);
    return s;
}

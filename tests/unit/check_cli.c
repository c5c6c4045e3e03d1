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
    tcase_add_test(tc, full_command_line);
    tcase_add_test(tc, kernel_device);
    tcase_add_test(tc, tcp_and_limits);
    tcase_add_test(tc, mistakes_get_one_line);
    tcase_add_test(tc, server_operations);
    tcase_add_test(tc, help_for_a_device);
    suite_add_tcase(s, tc);
    return s;
}

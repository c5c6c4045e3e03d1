/* Request validation and the errno mapping: every rule in request.c. */
#include <check.h>
#include <errno.h>

#include "../../src/server/nbd.h"
#include "../../src/server/request.h"

static struct export_info ex;

static void setup(void)
{
    usbd_export dev = { .size = 1 << 20, .block_size = 4096, .can_write = 1,
                        .can_trim = 1, .can_zero = 1, .can_flush = 1, .can_multi_conn = 1 };
    ex.dev = dev;
    ex.tflags = export_flags(&dev, false);
    ex.max_request = 32 << 20;
}

START_TEST(flags_follow_the_device)
{
    ck_assert_uint_eq(ex.tflags & NBD_FLAG_READ_ONLY, 0);
    ck_assert(ex.tflags & NBD_FLAG_SEND_TRIM);
    ck_assert(ex.tflags & NBD_FLAG_SEND_FLUSH);
    ck_assert(ex.tflags & NBD_FLAG_SEND_FUA);
    ck_assert(ex.tflags & NBD_FLAG_SEND_FAST_ZERO);
    usbd_export ro = ex.dev;
    ro.can_write = 0;
    uint16_t f = export_flags(&ro, false);
    ck_assert(f & NBD_FLAG_READ_ONLY);
    ck_assert_uint_eq(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FUA), 0);
    f = export_flags(&ex.dev, true);  /* -r on a writable device */
    ck_assert(f & NBD_FLAG_READ_ONLY);
    usbd_export plain = { .size = 1, .block_size = 512, .can_write = 1 };
    f = export_flags(&plain, false);
    ck_assert_uint_eq(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA), 0);
    ck_assert(f & NBD_FLAG_SEND_WRITE_ZEROES);
}
END_TEST

START_TEST(in_range_requests_pass)
{
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 0, 4096, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, (1 << 20) - 1, 1, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 512, 512, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_FLUSH, 0, 0, 0, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_TRIM, 0, 0, 1 << 20, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES,
                                    NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 1 << 20, false, false), 0);
}
END_TEST

START_TEST(past_the_end)
{
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 1 << 20, 1, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, 0, (1 << 20) - 1, 2, false, false), NBD_ENOSPC);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES, 0, 1 << 20, 1, false, false), NBD_ENOSPC);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_TRIM, 0, 1 << 21, 1, false, false), NBD_EINVAL);
    /* offset + length would wrap around 2^64 */
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, UINT64_MAX - 10, 4096, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, UINT64_C(1) << 63, 4096, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, 0, UINT64_C(1) << 63, 4096, false, false), NBD_ENOSPC);
}
END_TEST

START_TEST(lengths)
{
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 0, 0, false, false), NBD_EINVAL);
    ex.dev.size = UINT64_C(1) << 40;
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 0, 0xffffffffu, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 0, 0xffffffffu, true, false), NBD_EOVERFLOW);
    /* No payload, so no limit: a 4 GiB trim is fine. */
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_TRIM, 0, 0, 0xffffffffu, false, false), 0);
    ck_assert(request_framing_ok(&ex, NBD_CMD_WRITE, 32 << 20));
    ck_assert(!request_framing_ok(&ex, NBD_CMD_WRITE, (32 << 20) + 1));
    ck_assert(request_framing_ok(&ex, NBD_CMD_READ, 0xffffffffu));
}
END_TEST

START_TEST(unknown_commands_and_flags)
{
    ck_assert_uint_eq(request_check(&ex, 99, 0, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_CACHE, 0, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, true, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, 0x8000, 0, 512, false, false), NBD_EINVAL);
}
END_TEST

START_TEST(read_only_refuses_writes)
{
    ex.tflags = export_flags(&ex.dev, true);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, 0, 0, 512, false, false), NBD_EPERM);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_TRIM, 0, 0, 512, false, false), NBD_EPERM);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES, 0, 0, 512, false, false), NBD_EPERM);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_READ, 0, 0, 512, false, false), 0);
}
END_TEST

START_TEST(missing_capabilities)
{
    ex.dev.can_trim = 0;
    ex.dev.can_zero = 0;
    ex.dev.can_flush = 0;
    ex.tflags = export_flags(&ex.dev, false);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_TRIM, 0, 0, 512, false, false), NBD_EINVAL);
    /* FUA and FLUSH are not offered without a flush, but accepted: clients
     * send them regardless, and there is nothing volatile to lose. */
    ck_assert_uint_eq(ex.tflags & (NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 512, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_FLUSH, 0, 0, 0, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FUA, 0, 512, false, false), 0);
    /* Zeroes still work through writes, but never fast. */
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES, 0, 0, 512, false, false), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 512, false, false), NBD_ENOTSUP);
}
END_TEST

START_TEST(block_status)
{
    /* Only with a metadata context, which needs structured replies. */
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, false, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, true, false), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, false, true), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, true, true), 0);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 1 << 20, true, true), 0);
    /* Checked like a read: range, length, flags; but no payload, no limit. */
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 0, true, true), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, (1 << 20) - 1, 2, true, true), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, UINT64_MAX - 10, 512, true, true), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FUA, 0, 512, true, true), NBD_EINVAL);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_DF, 0, 512, true, true), NBD_EINVAL);
    ex.dev.size = UINT64_C(1) << 40;
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 0xffffffffu, true, true), 0);
    /* A read-only export still answers it. */
    ex.tflags = export_flags(&ex.dev, true);
    ck_assert_uint_eq(request_check(&ex, NBD_CMD_BLOCK_STATUS, 0, 0, 512, true, true), 0);
    /* Descriptors a reply may carry. */
    ck_assert_uint_eq(request_max_extents(NBD_CMD_FLAG_REQ_ONE, 1 << 30), 1);
    ck_assert_uint_eq(request_max_extents(0, 3), 3);
    ck_assert_uint_eq(request_max_extents(0, 0xffffffffu), USBD_MAX_EXTENTS);
}
END_TEST

START_TEST(errno_on_the_wire)
{
    ck_assert_uint_eq(nbd_error_from_errno(0), 0);
    ck_assert_uint_eq(nbd_error_from_errno(EROFS), NBD_EPERM);
    ck_assert_uint_eq(nbd_error_from_errno(EPERM), NBD_EPERM);
    ck_assert_uint_eq(nbd_error_from_errno(ENOSPC), NBD_ENOSPC);
    ck_assert_uint_eq(nbd_error_from_errno(EDQUOT), NBD_ENOSPC);
    ck_assert_uint_eq(nbd_error_from_errno(ENOMEM), NBD_ENOMEM);
    ck_assert_uint_eq(nbd_error_from_errno(EOPNOTSUPP), NBD_ENOTSUP);
    ck_assert_uint_eq(nbd_error_from_errno(EOVERFLOW), NBD_EOVERFLOW);
    ck_assert_uint_eq(nbd_error_from_errno(ENOENT), NBD_EIO);
    ck_assert_uint_eq(nbd_error_from_errno(12345), NBD_EIO);
}
END_TEST

Suite *request_suite(void)
{
    Suite *s = suite_create("request");
    TCase *tc = tcase_create("check");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, flags_follow_the_device);
    tcase_add_test(tc, in_range_requests_pass);
    tcase_add_test(tc, past_the_end);
    tcase_add_test(tc, lengths);
    tcase_add_test(tc, unknown_commands_and_flags);
    tcase_add_test(tc, read_only_refuses_writes);
    tcase_add_test(tc, missing_capabilities);
    tcase_add_test(tc, block_status);
    tcase_add_test(tc, errno_on_the_wire);
    suite_add_tcase(s, tc);
    return s;
}

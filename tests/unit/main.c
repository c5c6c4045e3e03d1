/* Runs every unit suite; results as TAP on stdout (CK_TAP_LOG_FILE_NAME). */
#include <check.h>
#include <stdlib.h>

Suite *request_suite(void);
Suite *cli_suite(void);
Suite *buffer_suite(void);
Suite *stats_suite(void);
Suite *sparse_suite(void);
Suite *codec_suite(void);
Suite *hashindex_suite(void);
Suite *borrow_suite(void);
Suite *cipher_suite(void);
Suite *blocks_suite(void);
Suite *jobs_suite(void);
Suite *access_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(request_suite());
    srunner_add_suite(sr, cli_suite());
    srunner_add_suite(sr, buffer_suite());
    srunner_add_suite(sr, stats_suite());
    srunner_add_suite(sr, sparse_suite());
    srunner_add_suite(sr, codec_suite());
    srunner_add_suite(sr, hashindex_suite());
    srunner_add_suite(sr, borrow_suite());
    srunner_add_suite(sr, cipher_suite());
    srunner_add_suite(sr, blocks_suite());
    srunner_add_suite(sr, jobs_suite());
    srunner_add_suite(sr, access_suite());
    srunner_run_all(sr, CK_ENV);  /* CK_VERBOSITY picks */
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

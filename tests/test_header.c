/* The public header stands alone (it is included first, before any other
 * header) and every public macro expands to what the contract says. */
#include "ringbus.h"

#include "test_util.h"

#include <string.h>

static void version_macros_match_rbus_version(void **state)
{
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", RBUS_VERSION_MAJOR, RBUS_VERSION_MINOR,
             RBUS_VERSION_PATCH);
    assert_string_equal(rbus_version(), want);
    assert_string_equal(rbus_version(), "0.1.0");
}

static void constants_have_their_contract_values(void **state)
{
    (void)state;
    assert_int_equal(RBUS_DUPLICATE, 1);
    assert_true(RBUS_DEDUP_OFF == UINT32_MAX);
    assert_int_equal(RBUS_BLOCK, 0);
    assert_int_equal(RBUS_DROP_OLDEST, 1);
    assert_int_equal(RBUS_DROP_NEWEST, 2);
    assert_true(RBUS_MAX_CAPACITY == (UINT32_C(1) << 30));
    assert_int_equal(RBUS_MAX_TOPIC_LEN, 255);
    assert_int_equal(RBUS_MAX_KEY_LEN, 255);
    assert_true(RBUS_MAX_PAYLOAD_LIMIT >= 65536u);
    /* The contract caps the default spin at 100 us. */
    assert_true(RBUS_DEFAULT_SPIN_NS > 0 && RBUS_DEFAULT_SPIN_NS <= 100000);
    assert_true(RBUS_MAX_SPIN_NS >= RBUS_DEFAULT_SPIN_NS);
}

static void zeroed_options_equal_initialised_defaults(void **state)
{
    (void)state;
    rbus_sub_opts zero, init;
    memset(&zero, 0, sizeof zero);
    rbus_sub_opts_init(&init);
    assert_memory_equal(&zero, &init, sizeof zero);
    rbus_config cfg;
    rbus_config_init(&cfg);
    rbus_test_assert_config_defaults(&cfg);
}

static void error_detail_is_empty_before_any_failure(void **state)
{
    (void)state;
    /* Nothing has failed on this thread yet: "", never NULL. */
    const char *d = rbus_last_error_detail();
    assert_non_null(d);
    assert_string_equal(d, "");
    assert_rbus_rc(rbus_create(NULL, NULL), -EINVAL);
    assert_string_equal(rbus_last_error_detail(), "rbus_create: out is NULL");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_macros_match_rbus_version),
        cmocka_unit_test(constants_have_their_contract_values),
        cmocka_unit_test(zeroed_options_equal_initialised_defaults),
        cmocka_unit_test(error_detail_is_empty_before_any_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

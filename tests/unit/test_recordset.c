/*
 * test_recordset.c - sl_record_set_t keeps its own copies of records.
 */
#include "testutil.h"

#include <errno.h>
#include <string.h>

static void test_records_are_copies_in_order(void **state)
{
    (void)state;
    sl_record_set_t set = {0};
    char key[8] = "k1", value[8] = "v1";
    sl_header_t h = {(const uint8_t *)"h", 1, (const uint8_t *)"x", 1};
    sl_record_t r = tu_record(key, value, 7);
    r.headers = &h;
    r.header_count = 1;
    assert_int_equal(sl_record_set_add(&set, &r), 0);
    sl_record_t tomb = tu_record(NULL, NULL, 8);
    assert_int_equal(sl_record_set_add(&set, &tomb), 0);
    strcpy(key, "zz"); /* the set does not see changes to the source */
    strcpy(value, "zz");
    sl_record_t *all = sl_record_set_array(&set);
    assert_int_equal(set.count, 2);
    assert_memory_equal(all[0].key, "k1", 2);
    assert_memory_equal(all[0].value, "v1", 2);
    assert_int_equal(all[0].timestamp, 7);
    assert_int_equal(all[0].header_count, 1);
    assert_memory_equal(all[0].headers[0].value, "x", 1);
    assert_int_equal(all[1].key_len, -1);
    assert_int_equal(all[1].value_len, -1);
    assert_true(sl_record_set_array(&set) == all); /* taking it twice is harmless */
    sl_record_set_reset(&set);
    assert_int_equal(set.count, 0);
    r = tu_record("again", "v", 9);
    assert_int_equal(sl_record_set_add(&set, &r), 0);
    assert_memory_equal(sl_record_set_array(&set)[0].key, "again", 5);
    sl_record_set_free(&set);
}

static void test_out_of_memory_leaves_the_set_as_it_was(void **state)
{
    (void)state;
    sl_record_set_t set = {0};
    sl_record_t r = tu_record("key", "value", 1);
    assert_int_equal(sl_record_set_add(&set, &r), 0);
    size_t bytes = set.bytes_len;
    static char big[100000];
    sl_record_t huge = tu_record("k", NULL, 2);
    huge.value = (const uint8_t *)big;
    huge.value_len = sizeof big;
    sl_alloc_fail_after(0);
    int rc = sl_record_set_add(&set, &huge);
    sl_alloc_fail_after(-1);
    assert_int_equal(rc, -ENOMEM);
    assert_int_equal(set.count, 1);
    assert_int_equal(set.bytes_len, bytes);
    assert_memory_equal(sl_record_set_array(&set)[0].value, "value", 5);
    sl_record_set_free(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_are_copies_in_order),
        cmocka_unit_test(test_out_of_memory_leaves_the_set_as_it_was),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

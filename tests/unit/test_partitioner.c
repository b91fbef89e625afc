/*
 * test_partitioner.c - Kafka's murmur2 and default partitioner, against the
 * values in Kafka's own UtilsTest (and akka's Murmur2Spec, from the same).
 */
#include "testutil.h"

#include <string.h>

static void test_murmur2_matches_kafka(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        int32_t hash;
    } cases[] = {
        {"21", -973932308},
        {"foobar", -790332482},
        {"a-little-bit-long-string", -985981536},
        {"a-little-bit-longer-string", -1486304829},
        {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
        {"abc", 479470107},
        {"1", -1993445489},
        {"12345", -1188365604},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        assert_int_equal(sl_murmur2(cases[i].key, strlen(cases[i].key)), cases[i].hash);
}

static void test_partition_is_positive_hash_modulo_count(void **state)
{
    (void)state;
    /* murmur2("21") = -973932308: masked 1173551340 */
    assert_int_equal(sl_partition_for_key("21", 2, 10), 0);
    assert_int_equal(sl_partition_for_key("21", 2, 7), 1173551340 % 7);
    /* murmur2("abc") = 479470107, already positive */
    assert_int_equal(sl_partition_for_key("abc", 3, 12), 479470107 % 12);
    for (int n = 1; n < 50; n++)
        assert_true(sl_partition_for_key("any key", 7, n) < n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_murmur2_matches_kafka),
        cmocka_unit_test(test_partition_is_positive_hash_modulo_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_hll.c - xxHash64 against the reference implementation's outputs;
 * HyperLogLog estimates within their error bound (fixed seeds), idempotent
 * adds, order-independent and associative merges, sparse and dense
 * encodings, rejection of damaged encodings, out-of-memory paths.
 */
#include "testutil.h"

#include "ops/hll.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: a bijection of the counter, so values from one seed are
 * distinct and the test is the same on every run. */
static uint64_t next_value(uint64_t *seed)
{
    uint64_t z = (*seed += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void add_values(sl_hll_t *h, uint64_t seed, long n)
{
    for (long i = 0; i < n; i++) {
        uint64_t v = next_value(&seed);
        assert_int_equal(sl_hll_add(h, &v, sizeof v), 0);
    }
}

static double relative_error(uint64_t seed, long n)
{
    sl_hll_t h;
    sl_hll_init(&h);
    add_values(&h, seed, n);
    double error = (sl_hll_estimate(&h) - (double)n) / (double)n;
    sl_hll_clear(&h);
    return error;
}

/* Encodes h into a fresh buffer; *n its size. */
static uint8_t *encode(const sl_hll_t *h, size_t *n)
{
    *n = sl_hll_encoded_size(h);
    uint8_t *out = malloc(*n);
    sl_hll_encode(h, out);
    return out;
}

static void assert_same_sketch(const sl_hll_t *a, const sl_hll_t *b)
{
    size_t na, nb;
    uint8_t *ea = encode(a, &na), *eb = encode(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(ea, eb, na);
    free(ea);
    free(eb);
}

static void test_hash_matches_reference_xxh64(void **state)
{
    (void)state;
    /* Outputs of libxxhash 0.8.1's XXH64 for these inputs. */
    static const struct {
        size_t len;
        uint64_t seed0, seed_prime;
    } cases[] = {
        {0, 0xef46db3751d8e999ULL, 0x6ec6d05f61c7e7a7ULL},
        {1, 0xd24ec4f1a98c6e5bULL, 0x727c10e0d238e188ULL},
        {3, 0x44bc2cf5ad770999ULL, 0xa7cb2aac405e36c7ULL},
        {14, 0x066ed728fceeb3beULL, 0xd35e8898f3fb053bULL},
        {62, 0xf952c619a1bc1e05ULL, 0xe09392f1face4169ULL},
        {100, 0x6ac1e58032166597ULL, 0x00278bda0ee3f586ULL},
    };
    const char *texts[] = {"", "a", "abc", "message digest",
                           "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"};
    uint8_t bytes[100];
    for (int i = 0; i < 100; i++)
        bytes[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const void *data = i < 5 ? (const void *)texts[i] : bytes;
        assert_int_equal(sl_hash64(data, cases[i].len, 0), cases[i].seed0);
        assert_int_equal(sl_hash64(data, cases[i].len, 0x9E3779B185EBCA87ULL), cases[i].seed_prime);
    }
}

static void test_empty_sketch_estimates_zero(void **state)
{
    (void)state;
    sl_hll_t h;
    sl_hll_init(&h);
    assert_true(sl_hll_estimate(&h) == 0);
    assert_int_equal(sl_hll_encoded_size(&h), 4);
}

static void test_small_counts_are_nearly_exact(void **state)
{
    (void)state;
    assert_true(fabs(relative_error(1, 10)) * 10 < 0.5); /* rounds to 10 */
    assert_true(fabs(relative_error(2, 1000)) < 0.02);
    for (uint64_t seed = 0; seed < 20; seed++)
        assert_true(fabs(relative_error(100 + seed, 1000)) < 0.02);
}

static void test_large_counts_within_two_percent(void **state)
{
    (void)state;
    assert_true(fabs(relative_error(3, 100000)) < 0.02);
    assert_true(fabs(relative_error(4, 1000000)) < 0.02);
}

/* Around 2.5 m = 40960, where the classic estimator switches from linear
 * counting and is biased: the mean error over many sketches stays small. */
static void test_no_bias_around_the_small_range_switch(void **state)
{
    (void)state;
    for (long n = 30000; n <= 60000; n += 10000) {
        double sum = 0, sum_abs = 0;
        for (uint64_t seed = 0; seed < 16; seed++) {
            double e = relative_error(seed * 7919 + (uint64_t)n, n);
            sum += e;
            sum_abs += fabs(e);
        }
        assert_true(fabs(sum / 16) < 0.005);
        assert_true(sum_abs / 16 < 0.012); /* ~0.8 standard error 0.81% */
    }
}

static void test_adding_a_value_twice_changes_nothing(void **state)
{
    (void)state;
    sl_hll_t once, twice;
    sl_hll_init(&once);
    sl_hll_init(&twice);
    add_values(&once, 9, 5000);
    add_values(&twice, 9, 5000);
    add_values(&twice, 9, 5000);
    assert_same_sketch(&once, &twice);
    sl_hll_clear(&once);
    sl_hll_clear(&twice);
}

static void test_sketch_turns_dense_past_the_sparse_limit(void **state)
{
    (void)state;
    sl_hll_t h;
    sl_hll_init(&h);
    uint64_t seed = 5;
    while (!sl_hll_is_dense(&h)) {
        assert_true(sl_hll_encoded_size(&h) <= 4 + 3 * SL_HLL_SPARSE_MAX);
        uint64_t v = next_value(&seed);
        assert_int_equal(sl_hll_add(&h, &v, sizeof v), 0);
    }
    assert_int_equal(sl_hll_encoded_size(&h), SL_HLL_DENSE_BYTES);
    assert_int_equal(SL_HLL_DENSE_BYTES, 12290);
    sl_hll_clear(&h);
}

/* (a + b) + c, a + (b + c), c + b + a and one sketch of everything are the
 * same registers, for sparse and dense mixes. */
static void test_merge_is_associative_and_order_free(void **state)
{
    (void)state;
    const long sizes[][3] = {{10, 20, 30}, {2000, 2000, 10}, {50000, 5, 3000}};
    for (int k = 0; k < 3; k++) {
        sl_hll_t part[3], left, right, reverse, all;
        sl_hll_init(&left), sl_hll_init(&right), sl_hll_init(&reverse), sl_hll_init(&all);
        for (int i = 0; i < 3; i++) {
            sl_hll_init(&part[i]);
            add_values(&part[i], 1000 * (uint64_t)i + (uint64_t)k, sizes[k][i]);
            add_values(&all, 1000 * (uint64_t)i + (uint64_t)k, sizes[k][i]);
        }
        assert_int_equal(sl_hll_copy(&left, &part[0]), 0);
        assert_int_equal(sl_hll_merge(&left, &part[1]), 0);
        assert_int_equal(sl_hll_merge(&left, &part[2]), 0);
        assert_int_equal(sl_hll_copy(&right, &part[1]), 0);
        assert_int_equal(sl_hll_merge(&right, &part[2]), 0);
        sl_hll_t first;
        sl_hll_init(&first);
        assert_int_equal(sl_hll_copy(&first, &part[0]), 0);
        assert_int_equal(sl_hll_merge(&first, &right), 0);
        for (int i = 2; i >= 0; i--)
            assert_int_equal(sl_hll_merge(&reverse, &part[i]), 0);
        assert_same_sketch(&left, &first);
        assert_same_sketch(&left, &reverse);
        assert_same_sketch(&left, &all);
        for (int i = 0; i < 3; i++)
            sl_hll_clear(&part[i]);
        sl_hll_clear(&left), sl_hll_clear(&right), sl_hll_clear(&reverse);
        sl_hll_clear(&all), sl_hll_clear(&first);
    }
}

static void test_encoding_round_trips_sparse_and_dense(void **state)
{
    (void)state;
    const long sizes[] = {0, 1, 100, 3000, 100000};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        sl_hll_t h, back;
        sl_hll_init(&h);
        sl_hll_init(&back);
        add_values(&h, 77 + k, sizes[k]);
        size_t n;
        uint8_t *bytes = encode(&h, &n);
        assert_int_equal(sl_hll_decode(&back, bytes, n), 0);
        assert_int_equal(sl_hll_is_dense(&back), sl_hll_is_dense(&h));
        assert_true(sl_hll_estimate(&back) == sl_hll_estimate(&h));
        assert_same_sketch(&h, &back);
        free(bytes);
        sl_hll_clear(&h);
        sl_hll_clear(&back);
    }
}

static void assert_corrupt(const uint8_t *bytes, size_t n, const char *detail)
{
    sl_hll_t h;
    sl_hll_init(&h);
    uint64_t v = 1;
    assert_int_equal(sl_hll_add(&h, &v, 8), 0);
    double before = sl_hll_estimate(&h);
    assert_int_equal(sl_hll_decode(&h, bytes, n), SL_ECORRUPT);
    assert_non_null(strstr(sl_error_detail(), detail));
    assert_true(sl_hll_estimate(&h) == before); /* unchanged */
    sl_hll_clear(&h);
}

static void test_damaged_encodings_are_rejected(void **state)
{
    (void)state;
    sl_hll_t h;
    sl_hll_init(&h);
    add_values(&h, 3, 10);
    size_t n;
    uint8_t *sparse = encode(&h, &n);
    for (size_t cut = 0; cut < n; cut++)
        assert_int_equal(sl_hll_decode(&h, sparse, cut), SL_ECORRUPT);
    uint8_t bad[64];
    memcpy(bad, sparse, n);
    bad[0] = 12;
    assert_corrupt(bad, n, "precision");
    memcpy(bad, sparse, n), bad[1] = 7;
    assert_corrupt(bad, n, "representation");
    memcpy(bad, sparse, n), bad[4] &= 0xc0; /* rank 0 */
    assert_corrupt(bad, n, "rank");
    memcpy(bad, sparse, n), memcpy(bad + 7, sparse + 4, 3); /* entry 1 = entry 0 */
    assert_corrupt(bad, n, "order");
    memcpy(bad, sparse, n), bad[6] |= 0xf0; /* register index over 2^14 */
    assert_corrupt(bad, n, "register");
    memcpy(bad, sparse, n), bad[2] = 11;
    assert_corrupt(bad, n, "need");
    free(sparse);
    add_values(&h, 4, 20000);
    uint8_t *dense = encode(&h, &n);
    assert_int_equal(n, SL_HLL_DENSE_BYTES);
    assert_corrupt(dense, n - 1, "dense");
    dense[2] |= 0x3f; /* register 0 = 63 */
    assert_corrupt(dense, n, "register 0");
    free(dense);
    sl_hll_clear(&h);
}

/* Random damage never crashes, and whatever decodes re-encodes to itself. */
static void test_decoder_survives_random_damage(void **state)
{
    (void)state;
    uint64_t seed = 42;
    sl_hll_t sources[2], h;
    sl_hll_init(&sources[0]), sl_hll_init(&sources[1]), sl_hll_init(&h);
    add_values(&sources[0], 1, 200);
    add_values(&sources[1], 2, 30000);
    for (int round = 0; round < 4000; round++) {
        size_t n;
        uint8_t *bytes = encode(&sources[round % 2], &n);
        int flips = 1 + (int)(next_value(&seed) % 4);
        for (int f = 0; f < flips; f++)
            bytes[next_value(&seed) % n] ^= (uint8_t)(1 + next_value(&seed) % 255);
        size_t len = next_value(&seed) % 8 == 0 ? next_value(&seed) % (n + 1) : n;
        int rc = sl_hll_decode(&h, bytes, len);
        assert_true(rc == 0 || rc == SL_ECORRUPT);
        if (rc == 0) {
            size_t m;
            uint8_t *again = encode(&h, &m);
            assert_int_equal(m, len);
            assert_memory_equal(again, bytes, m);
            free(again);
            assert_true(isfinite(sl_hll_estimate(&h)));
        }
        free(bytes);
    }
    sl_hll_clear(&sources[0]), sl_hll_clear(&sources[1]), sl_hll_clear(&h);
}

static void test_out_of_memory_leaves_sketch_unchanged(void **state)
{
    (void)state;
    sl_hll_t h, other;
    sl_hll_init(&h);
    sl_hll_init(&other);
    add_values(&h, 8, SL_HLL_SPARSE_MAX - 1);
    add_values(&other, 9, 3000);
    size_t n;
    uint8_t *before = encode(&h, &n);
    /* Adds until one needs memory (growing the array, or turning dense). */
    uint64_t seed = 10;
    int failed = 0;
    for (int i = 0; i < 10000 && !failed; i++) {
        uint64_t v = next_value(&seed);
        sl_alloc_fail_after(0);
        int rc = sl_hll_add(&h, &v, 8);
        sl_alloc_fail_after(-1);
        if (rc == -ENOMEM) {
            failed = 1;
            break;
        }
        assert_int_equal(rc, 0);
        free(before);
        before = encode(&h, &n);
    }
    assert_true(failed);
    size_t m;
    uint8_t *after = encode(&h, &m);
    assert_int_equal(m, n);
    assert_memory_equal(after, before, n);
    free(after);
    sl_alloc_fail_after(0);
    assert_int_equal(sl_hll_merge(&h, &other), -ENOMEM);
    sl_alloc_fail_after(-1);
    after = encode(&h, &m);
    assert_memory_equal(after, before, n);
    free(after);
    sl_alloc_fail_after(0);
    assert_int_equal(sl_hll_decode(&h, before, n), -ENOMEM);
    sl_alloc_fail_after(-1);
    free(before);
    sl_hll_clear(&h);
    sl_hll_clear(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_matches_reference_xxh64),
        cmocka_unit_test(test_empty_sketch_estimates_zero),
        cmocka_unit_test(test_small_counts_are_nearly_exact),
        cmocka_unit_test(test_large_counts_within_two_percent),
        cmocka_unit_test(test_no_bias_around_the_small_range_switch),
        cmocka_unit_test(test_adding_a_value_twice_changes_nothing),
        cmocka_unit_test(test_sketch_turns_dense_past_the_sparse_limit),
        cmocka_unit_test(test_merge_is_associative_and_order_free),
        cmocka_unit_test(test_encoding_round_trips_sparse_and_dense),
        cmocka_unit_test(test_damaged_encodings_are_rejected),
        cmocka_unit_test(test_decoder_survives_random_damage),
        cmocka_unit_test(test_out_of_memory_leaves_sketch_unchanged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

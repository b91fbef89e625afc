/*
 * test_aggregate.c - aggregate sets: definitions, each aggregate against a
 * reference over random inputs (fixed seeds), integer exactness and
 * overflow, empty results, JSON, refused inputs, merges (associative, equal
 * to one state fed everything), encode/decode round trips, damaged and
 * random bytes, reducers, JSON numbers, out-of-memory paths.
 */
#include "testutil.h"

#include "ops/aggregate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t next_random(uint64_t *seed)
{
    uint64_t z = (*seed += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int64_t random_between(uint64_t *seed, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(next_random(seed) % (uint64_t)(hi - lo + 1));
}

static sl_agg_input_t number_input(sl_number_t n)
{
    return (sl_agg_input_t){SL_AGG_NUMBER, n, NULL, 0};
}

static sl_agg_input_t int_input(int64_t i)
{
    return number_input(sl_number_int(i));
}

static sl_agg_input_t double_input(double d)
{
    return number_input(sl_number_double(d));
}

static sl_agg_input_t string_input(const char *s)
{
    return (sl_agg_input_t){SL_AGG_BYTES, sl_number_int(0), s, strlen(s)};
}

static const sl_agg_input_t none = {SL_AGG_NONE, {0}, NULL, 0};

/* A set from "name:kind" pairs; source "x" for every kind but count. */
static sl_aggset_t *make_set(const char *const *names, const sl_agg_kind_t *kinds, int n)
{
    sl_aggset_t *set;
    assert_int_equal(sl_aggset_new(&set), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(
            sl_aggset_add(set, names[i], kinds[i], kinds[i] == SL_AGG_COUNT ? NULL : "x"), i);
    return set;
}

/* The full set used by most tests: one member of each built-in kind. */
enum { N_ALL = 7 };
static const char *const all_names[N_ALL] = {"n",    "total",  "low",  "high",
                                             "mean", "latest", "users"};
static const sl_agg_kind_t all_kinds[N_ALL] = {
    SL_AGG_COUNT, SL_AGG_SUM, SL_AGG_MIN, SL_AGG_MAX, SL_AGG_AVG, SL_AGG_LAST, SL_AGG_DISTINCT};

static sl_aggstate_t *new_state(const sl_aggset_t *set)
{
    sl_aggstate_t *st;
    assert_int_equal(sl_aggstate_new(set, &st), 0);
    return st;
}

static uint8_t *encode(const sl_aggstate_t *st, size_t *n)
{
    *n = sl_aggstate_encoded_size(st);
    uint8_t *out = malloc(*n);
    sl_aggstate_encode(st, out);
    return out;
}

static void assert_same_state(const sl_aggstate_t *a, const sl_aggstate_t *b)
{
    size_t na, nb;
    uint8_t *ea = encode(a, &na), *eb = encode(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(ea, eb, na);
    free(ea);
    free(eb);
}

/* The JSON of a state, in a static buffer. */
static const char *json_of(const sl_aggstate_t *st)
{
    static char text[4096];
    sl_buf_t buf = {0};
    assert_int_equal(sl_aggstate_json(st, &buf), 0);
    assert_true(buf.len < sizeof text);
    memcpy(text, buf.data, buf.len);
    text[buf.len] = '\0';
    sl_buf_free(&buf);
    return text;
}

static long double as_long_double(sl_number_t n)
{
    return n.is_double ? (long double)n.d : (long double)n.i;
}

/* ---- definitions ------------------------------------------------------ */

static void test_set_definitions_are_checked(void **state)
{
    (void)state;
    sl_aggset_t *set;
    assert_int_equal(sl_aggset_new(&set), 0);
    assert_int_equal(sl_aggset_add(set, "clicks", SL_AGG_COUNT, NULL), 0);
    assert_int_equal(sl_aggset_add(set, "spend", SL_AGG_SUM, "price"), 1);
    assert_int_equal(sl_aggset_add(set, "clicks", SL_AGG_MAX, "x"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "\"clicks\" is defined twice"));
    assert_int_equal(sl_aggset_add(set, "", SL_AGG_MAX, "x"), SL_EINVALID);
    assert_int_equal(sl_aggset_add(set, NULL, SL_AGG_MAX, "x"), SL_EINVALID);
    assert_int_equal(sl_aggset_add(set, "a\nb", SL_AGG_MAX, "x"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "control characters"));
    assert_int_equal(sl_aggset_add(set, "bad\xff", SL_AGG_MAX, "x"), SL_EINVALID);
    assert_int_equal(sl_aggset_add(set, "\xc3(", SL_AGG_MAX, "x"), SL_EINVALID);
    assert_int_equal(sl_aggset_add(set, "caf\xc3\xa9", SL_AGG_MAX, "x"), 2);
    assert_int_equal(sl_aggset_add(set, "odd", (sl_agg_kind_t)99, "x"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "unknown kind"));
    char long_name[SL_AGG_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_int_equal(sl_aggset_add(set, long_name, SL_AGG_MAX, "x"), SL_EINVALID);
    assert_int_equal(sl_aggset_add(set, "long source", SL_AGG_MAX, long_name), SL_EINVALID);
    long_name[SL_AGG_NAME_MAX] = '\0';
    assert_int_equal(sl_aggset_add(set, long_name, SL_AGG_MAX, long_name), 3);
    assert_int_equal(sl_aggset_count(set), 4);
    assert_string_equal(sl_aggset_name(set, 1), "spend");
    assert_int_equal(sl_aggset_kind(set, 1), SL_AGG_SUM);
    assert_string_equal(sl_aggset_source(set, 1), "price");
    assert_null(sl_aggset_source(set, 0));
    for (int i = 4; i < SL_AGGSET_MAX; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%d", i);
        assert_int_equal(sl_aggset_add(set, name, SL_AGG_COUNT, NULL), i);
    }
    assert_int_equal(sl_aggset_add(set, "one too many", SL_AGG_COUNT, NULL), SL_EINVALID);
    sl_aggset_free(set);
}

/* ---- against a reference ---------------------------------------------- */

typedef struct record {
    sl_agg_input_t x; /* value for the numeric members */
    int64_t user;     /* value for distinct */
    int64_t time;
} record_t;

/* Random records: x an integer (or a double when doubles is set) or
 * missing; times with many ties. */
static record_t *random_records(uint64_t *seed, int n, bool doubles)
{
    record_t *r = calloc((size_t)n, sizeof *r);
    for (int i = 0; i < n; i++) {
        int64_t kind = random_between(seed, 0, 9);
        if (kind == 0)
            r[i].x = none;
        else if (doubles && kind <= 3)
            r[i].x = double_input((double)random_between(seed, -1000000, 1000000) / 1024.0);
        else
            r[i].x = int_input(random_between(seed, -1000000, 1000000));
        r[i].user = random_between(seed, 0, 2999);
        r[i].time = random_between(seed, 0, n / 4);
    }
    return r;
}

static void add_record(sl_aggstate_t *st, const record_t *r)
{
    sl_agg_input_t in[N_ALL] = {none, r->x, r->x, r->x, r->x, r->x, int_input(r->user)};
    assert_int_equal(sl_aggstate_add(st, in, r->time), 0);
}

typedef struct reference {
    int64_t count, values;
    __int128 int_sum;
    long double sum;
    bool any_double;
    long double low, high, latest;
    int64_t latest_time;
    int distinct;
} reference_t;

static reference_t compute_reference(const record_t *r, int n)
{
    reference_t ref = {0};
    ref.latest_time = INT64_MIN;
    static bool seen[3000];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < n; i++) {
        ref.count++;
        ref.distinct += !seen[r[i].user];
        seen[r[i].user] = true;
        if (r[i].x.type == SL_AGG_NONE)
            continue;
        long double v = as_long_double(r[i].x.number);
        ref.low = ref.values == 0 || v < ref.low ? v : ref.low;
        ref.high = ref.values == 0 || v > ref.high ? v : ref.high;
        if (r[i].time >= ref.latest_time) {
            ref.latest_time = r[i].time;
            ref.latest = v;
        }
        ref.values++;
        ref.sum += v;
        ref.any_double |= r[i].x.number.is_double;
        if (!r[i].x.number.is_double)
            ref.int_sum += r[i].x.number.i;
    }
    return ref;
}

static void assert_matches_reference(const sl_aggstate_t *st, const reference_t *ref)
{
    sl_agg_result_t r = sl_aggstate_result(st, 0);
    assert_int_equal(r.type, SL_AGG_RESULT_NUMBER);
    assert_false(r.number.is_double);
    assert_int_equal(r.number.i, ref->count);
    r = sl_aggstate_result(st, 1);
    assert_int_equal(r.number.is_double, ref->any_double);
    if (!ref->any_double)
        assert_true(r.number.i == (int64_t)ref->int_sum);
    else
        assert_true(fabsl(as_long_double(r.number) - ref->sum) < 1e-6);
    assert_true(as_long_double(sl_aggstate_result(st, 2).number) == ref->low);
    assert_true(as_long_double(sl_aggstate_result(st, 3).number) == ref->high);
    r = sl_aggstate_result(st, 4);
    assert_true(r.number.is_double);
    assert_true(fabsl(r.number.d - ref->sum / ref->values) < 1e-9);
    assert_true(as_long_double(sl_aggstate_result(st, 5).number) == ref->latest);
    int64_t distinct = sl_aggstate_result(st, 6).number.i;
    assert_true(llabs(distinct - ref->distinct) <= ref->distinct / 50);
}

static void test_each_aggregate_matches_a_reference(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL);
    uint64_t seed = 2024;
    for (int round = 0; round < 20; round++) {
        int n = (int)random_between(&seed, 1, 5000);
        record_t *records = random_records(&seed, n, round % 2 == 1);
        sl_aggstate_t *st = new_state(set);
        for (int i = 0; i < n; i++)
            add_record(st, &records[i]);
        reference_t ref = compute_reference(records, n);
        if (ref.values > 0)
            assert_matches_reference(st, &ref);
        sl_aggstate_free(st);
        free(records);
    }
    sl_aggset_free(set);
}

/* ---- numbers ---------------------------------------------------------- */

static void test_integer_sums_stay_exact_until_overflow(void **state)
{
    (void)state;
    sl_aggset_t *set =
        make_set((const char *[]){"s", "a"}, (sl_agg_kind_t[]){SL_AGG_SUM, SL_AGG_AVG}, 2);
    sl_aggstate_t *st = new_state(set);
    const int64_t big = (int64_t)1 << 53;
    sl_agg_input_t in[2] = {int_input(big), int_input(big)};
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    in[0] = in[1] = int_input(1);
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    sl_agg_result_t r = sl_aggstate_result(st, 0);
    assert_false(r.number.is_double);
    assert_int_equal(r.number.i, big + 1); /* not representable as a double */
    in[0] = in[1] = int_input(INT64_MAX);
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    r = sl_aggstate_result(st, 0);
    assert_true(r.number.is_double);
    assert_true(r.number.d == (double)(big + 1) + (double)INT64_MAX);
    /* a double makes a sum of small integers a double */
    sl_aggstate_reset(st);
    in[0] = in[1] = int_input(2);
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    in[0] = in[1] = double_input(0.5);
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    assert_string_equal(json_of(st), "{\"s\":2.5,\"a\":1.25}");
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

static void test_min_and_max_compare_integers_and_doubles_exactly(void **state)
{
    (void)state;
    sl_aggset_t *set =
        make_set((const char *[]){"lo", "hi"}, (sl_agg_kind_t[]){SL_AGG_MIN, SL_AGG_MAX}, 2);
    sl_aggstate_t *st = new_state(set);
    const int64_t big = ((int64_t)1 << 53) + 1;
    sl_agg_input_t in[2] = {double_input(9007199254740992.0), double_input(9007199254740992.0)};
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    in[0] = in[1] = int_input(big); /* (double)big == 2^53, but big > 2^53 */
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    assert_true(sl_aggstate_result(st, 0).number.is_double);
    assert_false(sl_aggstate_result(st, 1).number.is_double);
    assert_int_equal(sl_aggstate_result(st, 1).number.i, big);
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

static void test_number_compare_matches_long_double(void **state)
{
    (void)state;
    uint64_t seed = 3;
    const double edges[] = {9223372036854775808.0,
                            -9223372036854775808.0,
                            0.5,
                            -0.5,
                            0.0,
                            -0.0,
                            9007199254740993.0,
                            1e300,
                            -1e300};
    const int64_t ints[] = {INT64_MAX, INT64_MIN, 0, 1, -1, ((int64_t)1 << 53) + 1};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++)
        for (size_t j = 0; j < sizeof ints / sizeof *ints; j++) {
            long double a = ints[j], b = edges[i];
            int expected = a < b ? -1 : a > b;
            assert_int_equal(sl_number_compare(sl_number_int(ints[j]), sl_number_double(edges[i])),
                             expected);
            assert_int_equal(sl_number_compare(sl_number_double(edges[i]), sl_number_int(ints[j])),
                             -expected);
        }
    for (int k = 0; k < 100000; k++) {
        int64_t i = (int64_t)next_random(&seed) >> random_between(&seed, 0, 63);
        double d = (double)((int64_t)next_random(&seed) >> random_between(&seed, 0, 63));
        if (k % 3 == 0)
            d += 0.5;
        if (k % 5 == 0)
            d = (double)i;
        long double a = i, b = d;
        assert_int_equal(sl_number_compare(sl_number_int(i), sl_number_double(d)),
                         a < b ? -1 : a > b);
    }
}

static void test_json_numbers_parse_as_integer_or_double(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool is_double;
        int64_t i;
        double d;
    } good[] = {
        {"0", false, 0, 0},
        {"-0", false, 0, 0},
        {"123", false, 123, 0},
        {"-9223372036854775808", false, INT64_MIN, 0},
        {"9223372036854775807", false, INT64_MAX, 0},
        {"9223372036854775808", true, 0, 9223372036854775808.0},
        {"1.5", true, 0, 1.5},
        {"-0.25", true, 0, -0.25},
        {"1e3", true, 0, 1000.0},
        {"2E-2", true, 0, 0.02},
        {"1.0", true, 0, 1.0},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        sl_number_t n;
        assert_int_equal(sl_number_parse(good[i].text, strlen(good[i].text), &n), 0);
        assert_int_equal(n.is_double, good[i].is_double);
        if (n.is_double)
            assert_true(n.d == good[i].d);
        else
            assert_int_equal(n.i, good[i].i);
    }
    const char *bad[] = {"",    "-",   "01", "1.",   ".5",  "+1",       "1e",    "1e+",
                         "--1", "abc", "1 ", "0x10", "NaN", "Infinity", "1e400", "-1e400"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sl_number_t n;
        assert_int_equal(sl_number_parse(bad[i], strlen(bad[i]), &n), SL_EINVALID);
    }
    /* parse stops at n: "12" of "123" */
    sl_number_t n;
    assert_int_equal(sl_number_parse("123", 2, &n), 0);
    assert_int_equal(n.i, 12);
}

/* ---- results and JSON ------------------------------------------------- */

static void test_empty_results_are_zero_or_null(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL);
    sl_aggstate_t *st = new_state(set);
    assert_string_equal(json_of(st), "{\"n\":0,\"total\":0,\"low\":null,\"high\":null,"
                                     "\"mean\":null,\"latest\":null,\"users\":0}");
    /* records without the field count, and change nothing else */
    sl_agg_input_t in[N_ALL] = {none, none, none, none, none, none, none};
    assert_int_equal(sl_aggstate_add(st, in, 5), 0);
    assert_string_equal(json_of(st), "{\"n\":1,\"total\":0,\"low\":null,\"high\":null,"
                                     "\"mean\":null,\"latest\":null,\"users\":0}");
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

static void test_results_render_as_json(void **state)
{
    (void)state;
    sl_aggset_t *set =
        make_set((const char *[]){"clicks", "spend", "say \"hi\"\\", "avg"},
                 (sl_agg_kind_t[]){SL_AGG_COUNT, SL_AGG_SUM, SL_AGG_MAX, SL_AGG_AVG}, 4);
    sl_aggstate_t *st = new_state(set);
    const double prices[] = {2.5, 10, 0.1};
    for (int i = 0; i < 3; i++) {
        sl_agg_input_t p = double_input(prices[i]);
        sl_agg_input_t in[4] = {none, p, p, p};
        assert_int_equal(sl_aggstate_add(st, in, i), 0);
    }
    assert_string_equal(json_of(st), "{\"clicks\":3,\"spend\":12.6,\"say \\\"hi\\\"\\\\\":10,"
                                     "\"avg\":4.2}");
    sl_buf_t buf = {0};
    assert_int_equal(sl_number_json(sl_number_double(1.0 / 3), &buf), 0);
    assert_int_equal(buf.len, 18); /* 16 digits read back as 1/3 */
    assert_memory_equal(buf.data, "0.3333333333333333", 18);
    buf.len = 0;
    assert_int_equal(sl_number_json(sl_number_double(0.1 + 0.2), &buf), 0);
    assert_int_equal(buf.len, 19); /* needs all 17 */
    assert_memory_equal(buf.data, "0.30000000000000004", 19);
    buf.len = 0;
    assert_int_equal(sl_number_json(sl_number_double(1e300), &buf), 0);
    assert_memory_equal(buf.data, "1e+300", 6);
    buf.len = 0;
    assert_int_equal(sl_number_json(sl_number_int(INT64_MIN), &buf), 0);
    assert_memory_equal(buf.data, "-9223372036854775808", 20);
    sl_buf_free(&buf);
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

static void test_last_keeps_greatest_time_and_later_arrival_on_ties(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set((const char *[]){"last"}, (sl_agg_kind_t[]){SL_AGG_LAST}, 1);
    sl_aggstate_t *st = new_state(set), *other = new_state(set);
    const int64_t values[][2] = {{10, 1}, {5, 2}, {10, 3}, {9, 4}};
    for (int i = 0; i < 4; i++) {
        sl_agg_input_t in = int_input(values[i][1]);
        assert_int_equal(sl_aggstate_add(st, &in, values[i][0]), 0);
    }
    assert_int_equal(sl_aggstate_result(st, 0).number.i, 3);
    /* merge: on equal times the merged-in state counts as later */
    sl_agg_input_t in = int_input(7);
    assert_int_equal(sl_aggstate_add(other, &in, 10), 0);
    assert_int_equal(sl_aggstate_merge(st, other), 0);
    assert_int_equal(sl_aggstate_result(st, 0).number.i, 7);
    in = int_input(8);
    sl_aggstate_reset(other);
    assert_int_equal(sl_aggstate_add(other, &in, 9), 0);
    assert_int_equal(sl_aggstate_merge(st, other), 0);
    assert_int_equal(sl_aggstate_result(st, 0).number.i, 7);
    sl_aggstate_free(st);
    sl_aggstate_free(other);
    sl_aggset_free(set);
}

static void test_distinct_tells_types_apart(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set((const char *[]){"d"}, (sl_agg_kind_t[]){SL_AGG_DISTINCT}, 1);
    sl_aggstate_t *st = new_state(set);
    const sl_agg_input_t values[] = {int_input(3),       double_input(3.0), string_input("3"),
                                     string_input("3"),  double_input(3.5), int_input(-3),
                                     double_input(-0.0), int_input(0),      string_input("")};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++)
        assert_int_equal(sl_aggstate_add(st, &values[i], 0), 0);
    /* 3 (= 3.0), "3", 3.5, -3, 0 (= -0.0), "" */
    assert_int_equal(sl_aggstate_result(st, 0).number.i, 6);
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

/* ---- refused inputs ---------------------------------------------------- */

static void assert_refused(sl_aggstate_t *st, const sl_agg_input_t *in, const char *why)
{
    size_t n;
    uint8_t *before = encode(st, &n);
    assert_int_equal(sl_aggstate_add(st, in, 1), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), why));
    size_t m;
    uint8_t *after = encode(st, &m);
    assert_int_equal(m, n);
    assert_memory_equal(after, before, n);
    free(before);
    free(after);
}

static void test_bad_inputs_are_refused_and_change_nothing(void **state)
{
    (void)state;
    sl_aggset_t *set;
    assert_int_equal(sl_aggset_new(&set), 0);
    assert_int_equal(sl_aggset_add(set, "n", SL_AGG_COUNT, NULL), 0);
    assert_int_equal(sl_aggset_add(set, "spend", SL_AGG_SUM, "price"), 1);
    assert_int_equal(sl_aggset_add(set, "u", SL_AGG_DISTINCT, "user"), 2);
    sl_aggstate_t *st = new_state(set);
    sl_agg_input_t in[3] = {none, int_input(5), string_input("ann")};
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    in[1] = string_input("12");
    assert_refused(st, in, "aggregate \"spend\" (sum of price): the value is not a number");
    in[1] = double_input(NAN);
    assert_refused(st, in, "not a finite number");
    in[1] = double_input(INFINITY);
    assert_refused(st, in, "not a finite number");
    in[1] = int_input(1);
    in[2] = double_input(-INFINITY);
    in[2].type = SL_AGG_NUMBER;
    assert_refused(st, in, "\"u\" (distinct of user)");
    in[2] = none;
    in[1] = double_input(1.7e308);
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    assert_refused(st, in, "the sum overflows a double");
    in[1].type = (sl_agg_input_type_t)9;
    assert_refused(st, in, "unknown input type");
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

/* ---- merging ---------------------------------------------------------- */

static sl_aggstate_t *state_of(const sl_aggset_t *set, const record_t *r, int from, int to)
{
    sl_aggstate_t *st = new_state(set);
    for (int i = from; i < to; i++)
        add_record(st, &r[i]);
    return st;
}

/* (A + B) + C, A + (B + C) and one state fed A, B, C in order agree: byte
 * for byte with integers, within rounding with doubles. */
static void test_merge_is_associative_and_equals_one_state(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL);
    uint64_t seed = 77;
    for (int round = 0; round < 30; round++) {
        bool doubles = round % 3 == 2;
        int n = (int)random_between(&seed, 0, 3000);
        record_t *r = random_records(&seed, n, doubles);
        int cut1 = (int)random_between(&seed, 0, n), cut2 = (int)random_between(&seed, cut1, n);
        sl_aggstate_t *a = state_of(set, r, 0, cut1), *b = state_of(set, r, cut1, cut2);
        sl_aggstate_t *c = state_of(set, r, cut2, n), *all = state_of(set, r, 0, n);
        sl_aggstate_t *left = new_state(set), *right = new_state(set);
        assert_int_equal(sl_aggstate_copy(left, a), 0);
        assert_int_equal(sl_aggstate_merge(left, b), 0);
        assert_int_equal(sl_aggstate_merge(left, c), 0);
        assert_int_equal(sl_aggstate_copy(right, b), 0);
        assert_int_equal(sl_aggstate_merge(right, c), 0);
        assert_int_equal(sl_aggstate_merge(a, right), 0);
        if (!doubles) {
            assert_same_state(left, a);
            assert_same_state(left, all);
        } else {
            for (int i = 0; i < N_ALL; i++) {
                sl_agg_result_t x = sl_aggstate_result(left, i), y = sl_aggstate_result(a, i),
                                z = sl_aggstate_result(all, i);
                assert_int_equal(x.type, z.type);
                assert_true(fabsl(as_long_double(x.number) - as_long_double(z.number)) < 1e-6);
                assert_true(fabsl(as_long_double(y.number) - as_long_double(z.number)) < 1e-6);
            }
        }
        sl_aggstate_free(a), sl_aggstate_free(b), sl_aggstate_free(c), sl_aggstate_free(all);
        sl_aggstate_free(left), sl_aggstate_free(right);
        free(r);
    }
    sl_aggset_free(set);
}

static void test_merge_overflow_is_refused(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set((const char *[]){"s"}, (sl_agg_kind_t[]){SL_AGG_SUM}, 1);
    sl_aggstate_t *a = new_state(set), *b = new_state(set);
    sl_agg_input_t in = double_input(1.5e308);
    assert_int_equal(sl_aggstate_add(a, &in, 0), 0);
    assert_int_equal(sl_aggstate_add(b, &in, 0), 0);
    assert_int_equal(sl_aggstate_merge(a, b), SL_EINVALID);
    assert_true(sl_aggstate_result(a, 0).number.d == 1.5e308);
    sl_aggstate_free(a);
    sl_aggstate_free(b);
    sl_aggset_free(set);
}

/* ---- reducers --------------------------------------------------------- */

static void test_reduce_values_are_kept_and_rendered_verbatim(void **state)
{
    (void)state;
    sl_aggset_t *set =
        make_set((const char *[]){"n", "r"}, (sl_agg_kind_t[]){SL_AGG_COUNT, SL_AGG_REDUCE}, 2);
    sl_aggstate_t *st = new_state(set), *other = new_state(set), *back = new_state(set);
    assert_string_equal(json_of(st), "{\"n\":0,\"r\":null}");
    assert_int_equal(sl_aggstate_set_reduce(st, 0, "1", 1), SL_EINVALID);
    assert_int_equal(sl_aggstate_set_reduce(st, 2, "1", 1), SL_EINVALID);
    assert_int_equal(sl_aggstate_set_reduce(st, 1, "x", SL_AGG_REDUCE_MAX + 1), SL_EINVALID);
    assert_int_equal(sl_aggstate_set_reduce(st, 1, "{\"a\":[1,2]}", 11), 0);
    sl_agg_input_t in[2] = {none, int_input(4)};
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    assert_string_equal(json_of(st), "{\"n\":1,\"r\":{\"a\":[1,2]}}");
    size_t n;
    uint8_t *bytes = encode(st, &n);
    assert_int_equal(sl_aggstate_decode(back, bytes, n), 0);
    assert_string_equal(json_of(back), "{\"n\":1,\"r\":{\"a\":[1,2]}}");
    free(bytes);
    /* merging an unset reducer takes the set one; two set ones cannot merge */
    assert_int_equal(sl_aggstate_merge(other, st), 0);
    assert_string_equal(json_of(other), "{\"n\":1,\"r\":{\"a\":[1,2]}}");
    assert_int_equal(sl_aggstate_merge(other, st), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "cannot be merged"));
    assert_string_equal(json_of(other), "{\"n\":1,\"r\":{\"a\":[1,2]}}");
    assert_int_equal(sl_aggstate_set_reduce(st, 1, NULL, 0), 0);
    assert_string_equal(json_of(st), "{\"n\":1,\"r\":null}");
    sl_aggstate_free(st), sl_aggstate_free(other), sl_aggstate_free(back);
    sl_aggset_free(set);
}

/* ---- encoding --------------------------------------------------------- */

static void test_encoding_round_trips(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL);
    uint64_t seed = 5;
    const int sizes[] = {0, 1, 2, 100, 20000};
    for (int k = 0; k < 5; k++) {
        record_t *r = random_records(&seed, sizes[k], k % 2 == 1);
        if (sizes[k] == 20000)
            for (int i = 0; i < sizes[k]; i++)
                r[i].user = i; /* a dense sketch */
        sl_aggstate_t *st = state_of(set, r, 0, sizes[k]), *back = new_state(set);
        size_t n;
        uint8_t *bytes = encode(st, &n);
        assert_int_equal(sl_aggstate_decode(back, bytes, n), 0);
        assert_same_state(st, back);
        char expected[4096];
        strcpy(expected, json_of(st));
        assert_string_equal(json_of(back), expected);
        free(bytes);
        free(r);
        sl_aggstate_free(st);
        sl_aggstate_free(back);
    }
    sl_aggset_free(set);
}

/* The layout of version 2 (varints), and a state written by version 1
 * (fixed-width fields, 43 bytes) read back the same and rewritten as 2. */
static void test_count_sum_avg_state_layout_and_version_1(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set((const char *[]){"n", "s", "a"},
                                (sl_agg_kind_t[]){SL_AGG_COUNT, SL_AGG_SUM, SL_AGG_AVG}, 3);
    sl_aggstate_t *st = new_state(set), *back = new_state(set);
    sl_agg_input_t in[3] = {none, int_input(258), int_input(258)};
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    size_t n;
    uint8_t *bytes = encode(st, &n);
    assert_int_equal(n, 17);
    /* layout: version, count, fingerprint, then kind + payload each */
    assert_int_equal(bytes[0], 2);
    assert_int_equal(bytes[1], 3);
    const uint8_t members[] = {SL_AGG_COUNT, 1,                    /* 1 record */
                               SL_AGG_SUM,   0, 0x84, 0x04,        /* integer, zigzag 258 */
                               SL_AGG_AVG,   1, 0,    0x84, 0x04}; /* 1 value, sum 258 */
    assert_memory_equal(bytes + 6, members, sizeof members);
    uint8_t v1[43] = {1, 3};
    memcpy(v1 + 2, bytes + 2, 4); /* the fingerprint */
    const uint8_t count[] = {SL_AGG_COUNT, 1, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t sum[] = {SL_AGG_SUM, 0, 2, 1, 0, 0, 0, 0, 0, 0};
    const uint8_t avg[] = {SL_AGG_AVG, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0};
    memcpy(v1 + 6, count, 9);
    memcpy(v1 + 15, sum, 10);
    memcpy(v1 + 25, avg, 18);
    assert_int_equal(sl_aggstate_decode(back, v1, sizeof v1), 0);
    char *want = strdup(json_of(st));
    assert_string_equal(json_of(back), want);
    size_t m;
    uint8_t *again = encode(back, &m);
    assert_int_equal(m, n);
    assert_memory_equal(again, bytes, n);
    free(want);
    free(again);
    free(bytes);
    sl_aggstate_free(st);
    sl_aggstate_free(back);
    sl_aggset_free(set);
}

/* Decoding must fail with SL_ECORRUPT, naming why, and change nothing. */
static void assert_corrupt(const sl_aggset_t *set, const uint8_t *bytes, size_t n, const char *why)
{
    sl_aggstate_t *st = new_state(set);
    sl_agg_input_t in[N_ALL] = {none,         int_input(1), int_input(1), int_input(1),
                                int_input(1), int_input(1), int_input(1)};
    assert_int_equal(sl_aggstate_add(st, in, 1), 0);
    char before[4096];
    strcpy(before, json_of(st));
    assert_int_equal(sl_aggstate_decode(st, bytes, n), SL_ECORRUPT);
    if (why)
        assert_non_null(strstr(sl_error_detail(), why));
    assert_string_equal(json_of(st), before);
    sl_aggstate_free(st);
}

/* Offsets of the member payloads in the encoding of the full set's empty
 * state (after each member's kind byte): count 0 (one varint byte), sum
 * integer 0 (tag, varint), min and max empty (tag), avg (count, tag,
 * varint), last empty (tag), distinct (length 4, the empty sketch). */
enum {
    AT_COUNT = 7,
    AT_SUM = 9,
    AT_MIN = 12,
    AT_MAX = 14,
    AT_AVG = 16,
    AT_LAST = 20,
    AT_DISTINCT = 22
};

/* bytes = the 6-byte header of a one-member state of set, then kind and
 * payload (n bytes); returns the length. */
static size_t one_member(const sl_aggset_t *set, sl_agg_kind_t kind, const uint8_t *payload,
                         size_t n, uint8_t *bytes)
{
    sl_aggstate_t *st = new_state(set);
    size_t len;
    uint8_t *good = encode(st, &len);
    memcpy(bytes, good, 6);
    bytes[6] = (uint8_t)kind;
    memcpy(bytes + 7, payload, n);
    free(good);
    sl_aggstate_free(st);
    return 7 + n;
}

static void test_damaged_encodings_are_rejected(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL);
    sl_aggstate_t *empty = new_state(set);
    size_t n;
    uint8_t *good = encode(empty, &n);
    assert_int_equal(n, AT_DISTINCT + 1 + 4);
    uint8_t bad[256];
    for (size_t cut = 0; cut < n; cut++)
        assert_corrupt(set, good, cut, NULL);
#define DAMAGE(offset, value, why)                                                                 \
    do {                                                                                           \
        memcpy(bad, good, n);                                                                      \
        bad[offset] = (uint8_t)(value);                                                            \
        assert_corrupt(set, bad, n, why);                                                          \
    } while (0)
    DAMAGE(0, 3, "unknown version 3");
    DAMAGE(0, 0, "unknown version 0");
    DAMAGE(1, 6, "6 members, the set has 7");
    DAMAGE(2, good[2] ^ 1, "another aggregate definition");
    DAMAGE(AT_COUNT - 1, SL_AGG_SUM, "kind differs");
    DAMAGE(AT_SUM, 2, "bad number tag");
    DAMAGE(AT_MAX, 3, "bad number tag");
    DAMAGE(AT_AVG + 2, 2, "average of nothing"); /* the sum's varint: 1 */
    DAMAGE(AT_DISTINCT, 5, "truncated");
    DAMAGE(AT_DISTINCT + 1, 13, "precision");
    /* trailing bytes */
    memcpy(bad, good, n);
    bad[n] = 0;
    assert_corrupt(set, bad, n + 1, "trailing bytes");
    /* a state of another set with the same kinds and another name */
    const char *names[N_ALL] = {"n", "total", "low", "high", "mean", "latest", "visitors"};
    sl_aggset_t *renamed = make_set(names, all_kinds, N_ALL);
    assert_corrupt(renamed, good, n, "another aggregate definition");
    sl_aggset_free(renamed);
#undef DAMAGE
    /* varints: shortest form only, at most 64 bits, a count below 2^63 */
    sl_aggset_t *counts = make_set((const char *[]){"n"}, (sl_agg_kind_t[]){SL_AGG_COUNT}, 1);
    static const struct {
        uint8_t payload[11];
        size_t n;
        const char *why;
    } varints[] = {
        {{0x80, 0x00}, 2, "shortest form"},
        {{0x81, 0x80, 0x00}, 3, "shortest form"},
        {{0x80}, 1, "truncated"},
        {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, 10, "over 64 bits"},
        {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00}, 11, "over 64 bits"},
        {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 10, "count over"},
    };
    for (size_t i = 0; i < sizeof varints / sizeof varints[0]; i++) {
        size_t len = one_member(counts, SL_AGG_COUNT, varints[i].payload, varints[i].n, bad);
        assert_corrupt(counts, bad, len, varints[i].why);
    }
    sl_aggset_free(counts);
    /* a NaN double in a sum */
    sl_aggset_t *sums = make_set((const char *[]){"s"}, (sl_agg_kind_t[]){SL_AGG_SUM}, 1);
    const uint8_t nan[] = {1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_corrupt(sums, bad, one_member(sums, SL_AGG_SUM, nan, sizeof nan, bad), "not finite");
    sl_aggset_free(sums);
    /* a distinct sketch's length over the limit */
    sl_aggset_t *distinct = make_set((const char *[]){"d"}, (sl_agg_kind_t[]){SL_AGG_DISTINCT}, 1);
    const uint8_t huge[] = {0xff, 0xff, 0x7f};
    assert_corrupt(distinct, bad, one_member(distinct, SL_AGG_DISTINCT, huge, sizeof huge, bad),
                   "length over the limit");
    sl_aggset_free(distinct);
    free(good);
    sl_aggstate_free(empty);
    sl_aggset_free(set);
}

/* Random damage to valid encodings: decode never crashes, returns 0 or
 * SL_ECORRUPT, and whatever it accepts re-encodes to the same bytes. */
/* A set without distinct or reduce members (the first N_ALL - 1 kinds)
 * decodes its members alone: damaged states are accepted only when they
 * read back to the same bytes, refused as SL_ECORRUPT otherwise, and a
 * refused one leaves the state as the last accepted decode made it. */
static void test_decoder_of_plain_sets_survives_random_damage(void **state)
{
    (void)state;
    sl_aggset_t *set = make_set(all_names, all_kinds, N_ALL - 1);
    uint64_t seed = 37;
    sl_aggstate_t *sources[3], *st = new_state(set);
    for (int s = 0; s < 3; s++) {
        record_t *r = random_records(&seed, s * 40, s == 2);
        sources[s] = new_state(set);
        for (int i = 0; i < s * 40; i++) {
            sl_agg_input_t in[N_ALL - 1] = {none, r[i].x, r[i].x, r[i].x, r[i].x, r[i].x};
            assert_int_equal(sl_aggstate_add(sources[s], in, r[i].time), 0);
        }
        free(r);
    }
    int accepted = 0, refused = 0;
    size_t last_len = 0;
    uint8_t *last = NULL;
    for (int round = 0; round < 20000; round++) {
        size_t n;
        uint8_t *bytes = encode(sources[round % 3], &n);
        if (round % 5) { /* every fifth state undamaged */
            int flips = 1 + (int)random_between(&seed, 0, 3);
            for (int f = 0; f < flips; f++)
                bytes[next_random(&seed) % n] ^= (uint8_t)random_between(&seed, 1, 255);
            if (random_between(&seed, 0, 7) == 0)
                n = (size_t)random_between(&seed, 0, (int64_t)n);
        }
        int rc = sl_aggstate_decode(st, bytes, n);
        assert_true(rc == 0 || rc == SL_ECORRUPT);
        size_t m;
        uint8_t *again = encode(st, &m);
        if (rc == 0) {
            assert_int_equal(m, n);
            assert_memory_equal(again, bytes, m);
            free(last);
            last = bytes, last_len = n, bytes = NULL;
            accepted++;
        } else if (last) {
            assert_int_equal(m, last_len);
            assert_memory_equal(again, last, m);
            refused++;
        }
        free(again);
        free(bytes);
    }
    assert_true(accepted > 4000 && refused > 1000);
    free(last);
    for (int s = 0; s < 3; s++)
        sl_aggstate_free(sources[s]);
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

static void test_decoder_survives_random_damage(void **state)
{
    (void)state;
    sl_aggset_t *set;
    assert_int_equal(sl_aggset_new(&set), 0);
    for (int i = 0; i < N_ALL; i++)
        assert_int_equal(sl_aggset_add(set, all_names[i], all_kinds[i], "x"), i);
    assert_int_equal(sl_aggset_add(set, "r", SL_AGG_REDUCE, "fn"), N_ALL);
    uint64_t seed = 31;
    sl_aggstate_t *sources[3];
    for (int s = 0; s < 3; s++) {
        record_t *r = random_records(&seed, s * 40, s == 2);
        sl_agg_input_t in[N_ALL + 1];
        sources[s] = new_state(set);
        for (int i = 0; i < s * 40; i++) {
            for (int k = 1; k < N_ALL - 1; k++)
                in[k] = r[i].x;
            in[0] = in[N_ALL] = none;
            in[N_ALL - 1] = int_input(r[i].user);
            assert_int_equal(sl_aggstate_add(sources[s], in, r[i].time), 0);
        }
        if (s > 0)
            assert_int_equal(sl_aggstate_set_reduce(sources[s], N_ALL, "[1,2,3]", 7), 0);
        free(r);
    }
    sl_aggstate_t *st = new_state(set);
    int accepted = 0;
    for (int round = 0; round < 20000; round++) {
        size_t n;
        uint8_t *bytes = encode(sources[round % 3], &n);
        int flips = 1 + (int)random_between(&seed, 0, 3);
        for (int f = 0; f < flips; f++)
            bytes[next_random(&seed) % n] ^= (uint8_t)random_between(&seed, 1, 255);
        size_t len =
            random_between(&seed, 0, 7) == 0 ? (size_t)random_between(&seed, 0, (int64_t)n) : n;
        int rc = sl_aggstate_decode(st, bytes, len);
        assert_true(rc == 0 || rc == SL_ECORRUPT);
        if (rc == 0) {
            size_t m;
            uint8_t *again = encode(st, &m);
            assert_int_equal(m, len);
            assert_memory_equal(again, bytes, m);
            free(again);
            json_of(st);
            accepted++;
        }
        free(bytes);
    }
    assert_true(accepted > 0); /* damage inside values is accepted */
    for (int s = 0; s < 3; s++)
        sl_aggstate_free(sources[s]);
    sl_aggstate_free(st);
    sl_aggset_free(set);
}

/* ---- memory ----------------------------------------------------------- */

static void test_out_of_memory_paths_return_enomem(void **state)
{
    (void)state;
    sl_aggset_t *set;
    sl_aggstate_t *st;
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggset_new(&set), -ENOMEM);
    sl_alloc_fail_after(-1);
    assert_int_equal(sl_aggset_new(&set), 0);
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggset_add(set, "n", SL_AGG_COUNT, NULL), -ENOMEM);
    sl_alloc_fail_after(1);
    assert_int_equal(sl_aggset_add(set, "d", SL_AGG_DISTINCT, "user"), -ENOMEM);
    sl_alloc_fail_after(-1);
    assert_int_equal(sl_aggset_count(set), 0);
    assert_int_equal(sl_aggset_add(set, "n", SL_AGG_COUNT, NULL), 0);
    assert_int_equal(sl_aggset_add(set, "d", SL_AGG_DISTINCT, "user"), 1);
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggstate_new(set, &st), -ENOMEM);
    sl_alloc_fail_after(-1);
    st = new_state(set);
    /* The first distinct value needs memory: nothing changes. */
    sl_agg_input_t in[2] = {none, string_input("ann")};
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggstate_add(st, in, 0), -ENOMEM);
    sl_alloc_fail_after(-1);
    assert_string_equal(json_of(st), "{\"n\":0,\"d\":0}");
    assert_int_equal(sl_aggstate_add(st, in, 0), 0);
    size_t n;
    uint8_t *bytes = encode(st, &n);
    sl_aggstate_t *other = new_state(set);
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggstate_decode(other, bytes, n), -ENOMEM);
    assert_int_equal(sl_aggstate_copy(other, st), -ENOMEM);
    assert_int_equal(sl_aggstate_merge(other, st), -ENOMEM);
    sl_alloc_fail_after(-1);
    assert_string_equal(json_of(other), "{\"n\":0,\"d\":0}");
    sl_buf_t buf = {0};
    sl_alloc_fail_after(0);
    assert_int_equal(sl_aggstate_json(st, &buf), -ENOMEM);
    sl_alloc_fail_after(-1);
    sl_buf_free(&buf);
    free(bytes);
    sl_aggstate_free(st);
    sl_aggstate_free(other);
    sl_aggset_free(set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_definitions_are_checked),
        cmocka_unit_test(test_each_aggregate_matches_a_reference),
        cmocka_unit_test(test_integer_sums_stay_exact_until_overflow),
        cmocka_unit_test(test_min_and_max_compare_integers_and_doubles_exactly),
        cmocka_unit_test(test_number_compare_matches_long_double),
        cmocka_unit_test(test_json_numbers_parse_as_integer_or_double),
        cmocka_unit_test(test_empty_results_are_zero_or_null),
        cmocka_unit_test(test_results_render_as_json),
        cmocka_unit_test(test_last_keeps_greatest_time_and_later_arrival_on_ties),
        cmocka_unit_test(test_distinct_tells_types_apart),
        cmocka_unit_test(test_bad_inputs_are_refused_and_change_nothing),
        cmocka_unit_test(test_merge_is_associative_and_equals_one_state),
        cmocka_unit_test(test_merge_overflow_is_refused),
        cmocka_unit_test(test_reduce_values_are_kept_and_rendered_verbatim),
        cmocka_unit_test(test_encoding_round_trips),
        cmocka_unit_test(test_count_sum_avg_state_layout_and_version_1),
        cmocka_unit_test(test_damaged_encodings_are_rejected),
        cmocka_unit_test(test_decoder_survives_random_damage),
        cmocka_unit_test(test_decoder_of_plain_sets_survives_random_damage),
        cmocka_unit_test(test_out_of_memory_paths_return_enomem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

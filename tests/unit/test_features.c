/*
 * test_features.c - feature views: the :features() sink in the DSL (the op
 * it makes, every misuse a file:line error, DAG equality), vectors from
 * buckets (which buckets each range covers at AS OF and live ends, merged
 * results, defaults, JSON and float32), and the FEATURES exit writing one
 * vector per changed key at a flush. Also the aggregate under them behind a
 * repartition: windows committed past a held stream time are found again
 * after a restart.
 */
#include "testutil.h"

#include "ops/features.h"
#include "storage/state.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER "local s = require('sluice')\n"
#define MINUTE 60000

/* A view over 1-minute buckets with three members and ranges 1m, 3m, 10m
 * (written out of order, as a script may). */
static const char view_script[] = HEADER
    "s.pipeline{name = 'p'}\n"
    "s.stream('in')\n"
    "  :window(s.tumbling('1m'))\n"
    "  :aggregate{n = s.count(), total = s.sum('v'), low = s.min('v'), store = 'st'}\n"
    "  :features('view', {ranges = {'3m', '1m', 600000}, defaults = {low = -1, n_3m = 7}})\n";

typedef struct fixture {
    sl_vm_t *vm;
    sl_dag_t *dag;
    const sl_op_t *agg, *fop;
} fixture_t;

static fixture_t compile_view(const char *script)
{
    fixture_t f = {0};
    assert_int_equal(sl_vm_new(NULL, &f.vm), 0);
    int rc = sl_vm_compile(f.vm, "p.lua", script, strlen(script), &f.dag);
    if (rc)
        fail_msg("compile failed: %s", sl_error_detail());
    for (int i = 0; i < f.dag->op_count; i++) {
        if (f.dag->ops[i].kind == SL_OP_AGGREGATE && !f.agg)
            f.agg = &f.dag->ops[i];
        if (f.dag->ops[i].kind == SL_OP_FEATURES && !f.fop)
            f.fop = &f.dag->ops[i];
    }
    return f;
}

static void release(fixture_t *f)
{
    sl_dag_free(f->dag);
    sl_vm_free(f->vm);
}

static void expect_error(const char *script, const char *message)
{
    sl_vm_t *vm;
    sl_dag_t *dag = NULL;
    assert_int_equal(sl_vm_new(NULL, &vm), 0);
    assert_int_equal(sl_vm_compile(vm, "script.lua", script, strlen(script), &dag), SL_EINVALID);
    assert_null(dag);
    if (!strstr(sl_error_detail(), message))
        fail_msg("error \"%s\" lacks \"%s\"", sl_error_detail(), message);
    sl_vm_free(vm);
}

/* ---- the DSL ---------------------------------------------------------------- */

static void test_features_compiles_to_a_sink_op(void **state)
{
    (void)state;
    fixture_t f = compile_view(view_script);
    assert_int_equal(f.dag->op_count, 3);
    const sl_op_t *op = f.fop;
    assert_int_equal(op->kind, SL_OP_FEATURES);
    assert_int_equal(op->input_count, 1);
    assert_int_equal(op->inputs[0].op, f.agg->id);
    assert_string_equal(op->where, "p.lua:6");
    assert_string_equal(op->view, "view");
    assert_int_equal(op->range_count, 3);
    assert_int_equal(op->ranges[0], 3 * MINUTE);
    assert_int_equal(op->ranges[1], MINUTE);
    assert_int_equal(op->ranges[2], 10 * MINUTE);
    assert_string_equal(op->range_names[0], "3m");  /* as written */
    assert_string_equal(op->range_names[2], "10m"); /* an integer, in its largest unit */
    assert_int_equal(op->feature_count, 9);
    /* members sorted: low, n, total; a member default, and a feature's */
    for (int k = 0; k < 3; k++) {
        assert_int_equal(op->has_default[k], 1);
        assert_true(op->defaults[k] == -1);
    }
    assert_int_equal(op->has_default[3], 1); /* n_3m */
    assert_true(op->defaults[3] == 7);
    for (int k = 4; k < 9; k++)
        assert_int_equal(op->has_default[k], 0);
    assert_string_equal(sl_op_kind_name(op->kind), "features");
    release(&f);
}

static void test_feature_default_wins_over_its_member(void **state)
{
    (void)state;
    fixture_t f = compile_view(
        HEADER "s.stream('in'):window(s.tumbling('1m')):aggregate{n = s.count()}\n"
               "  :features('v', {ranges = {'1m', '2m'}, defaults = {n_2m = 5, n = 1}})\n");
    assert_true(f.fop->defaults[0] == 1);
    assert_true(f.fop->defaults[1] == 5);
    release(&f);
}

static void test_features_is_a_sink(void **state)
{
    (void)state;
    expect_error(HEADER "s.stream('in'):window(s.tumbling('1m')):aggregate{n = s.count()}\n"
                        "  :features('v', {ranges = {'1m'}}):to('out')\n",
                 "script.lua:3: 'to' after :features(): a sink ends its stream");
    /* a pipeline whose only sink is a view compiles */
    fixture_t f =
        compile_view(HEADER "s.stream('in'):window(s.tumbling('1m'))"
                            ":aggregate{n = s.count()}:features('v', {ranges = {'1m'}})\n");
    release(&f);
}

static void test_features_needs_a_tumbling_aggregate(void **state)
{
    (void)state;
    expect_error(HEADER "s.stream('in'):features('v', {ranges = {'1m'}})\n",
                 "script.lua:2: features follows a windowed :aggregate{...} directly, but this "
                 "stream comes from :stream()");
    expect_error(HEADER "s.stream('in'):key_by('u'):aggregate{n = s.count()}\n"
                        ":features('v', {ranges = {'1m'}})\n",
                 "features needs buckets: put :window(s.tumbling(\"1m\")) before the :aggregate{}");
    expect_error(HEADER "s.stream('in'):window(s.hopping('2m', '1m')):aggregate{n = s.count()}\n"
                        ":features('v', {ranges = {'2m'}})\n",
                 "features needs tumbling windows as buckets");
    expect_error(HEADER "s.stream('in'):window(s.session('1m')):aggregate{n = s.count()}\n"
                        ":features('v', {ranges = {'2m'}})\n",
                 "session windows (they vary in length)");
    expect_error(HEADER "s.stream('in'):window(s.tumbling('1m'))\n"
                        ":aggregate{r = s.reduce(0, function(a, r) return a end)}\n"
                        ":features('v', {ranges = {'2m'}})\n",
                 "script.lua:4: features: member 'r' of the aggregate at script.lua:3 is an "
                 "s.reduce()");
}

#define AGG                                                                                        \
    HEADER "s.stream('in'):window(s.tumbling('1m')):aggregate{n = s.count(), v = s.max('v')}\n"

static void test_features_ranges_are_checked(void **state)
{
    (void)state;
    expect_error(AGG ":features('v')\n", "script.lua:3: features needs its ranges");
    expect_error(AGG ":features('v', {})\n", "features needs ranges, a list of durations");
    expect_error(AGG ":features('v', {ranges = {}})\n",
                 "features ranges must be a list of durations");
    expect_error(AGG ":features('v', {ranges = {'1m', x = '2m'}})\n",
                 "features ranges must be a list of durations");
    expect_error(AGG ":features('v', {ranges = {'90s'}})\n",
                 "features range '90s' is not a whole number of the aggregate's 1m buckets");
    expect_error(AGG ":features('v', {ranges = {'30s'}})\n",
                 "features range '30s' is not a whole number");
    expect_error(AGG ":features('v', {ranges = {'2d'}})\n",
                 "features range '2d' is longer than the aggregate's retention 1d");
    expect_error(AGG ":features('v', {ranges = {'1h', '60m'}})\n",
                 "features ranges '1h' and '60m' are the same range");
    expect_error(AGG ":features('v', {ranges = {'1x'}})\n", "features range 1");
    expect_error(AGG ":features('v', {ranges = {true}})\n", "features range 1 must be a duration");
    expect_error(AGG ":features('v', {ranges = {'1m', '2m', '3m', '4m', '5m', '6m', '7m', '8m', "
                     "'9m', '10m', '11m', '12m', '13m', '14m', '15m', '16m', '17m'}})\n",
                 "features has 17 ranges (at most 16)");
    expect_error(AGG ":features('v', {ranges = {'1m'}, range = 1})\n", "range");
}

static void test_features_names_and_defaults_are_checked(void **state)
{
    (void)state;
    expect_error(AGG ":features(nil, {ranges = {'1m'}})\n",
                 "features expects the view's name first, got nil");
    expect_error(AGG ":features('a b', {ranges = {'1m'}})\n", "features view (it names its topic)");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = 3})\n",
                 "features defaults must be a table of name = number, got 3");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = {zz = 1, nope = 2, n = 0}})\n",
                 "features defaults: 'nope' is neither a member of the aggregate at script.lua:2 "
                 "nor one of its features (<member>_<range>, such as n_1m)");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = {n_2m = 1}})\n",
                 "'n_2m' is neither a member");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = {n = 'x'}})\n",
                 "features default 'n' must be a finite number, got");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = {n = 0/0}})\n",
                 "features default 'n' must be a finite number");
    expect_error(AGG ":features('v', {ranges = {'1m'}, defaults = {[1] = 0}})\n",
                 "features defaults: names must be strings");
    expect_error(AGG ":features('v', {ranges = {'1m'}}, 3)\n", "too many arguments");
}

static void test_feature_names_are_unique_in_a_view(void **state)
{
    (void)state;
    expect_error(HEADER "local a = s.stream('in'):window(s.tumbling('1m'))\n"
                        "  :aggregate{n = s.count(), store = 'a'}\n"
                        "local b = s.stream('in2'):window(s.tumbling('1m'))\n"
                        "  :aggregate{n = s.count(), store = 'b'}\n"
                        "a:features('v', {ranges = {'1m', '5m'}})\n"
                        "b:features('v', {ranges = {'5m'}})\n",
                 "script.lua:7: features: view 'v' already has a feature 'n_5m' (from "
                 "script.lua:6)");
    /* other names, or another view, are fine */
    fixture_t f = compile_view(HEADER "local a = s.stream('in'):window(s.tumbling('1m'))\n"
                                      "  :aggregate{n = s.count(), store = 'a'}\n"
                                      "local b = s.stream('in2'):window(s.tumbling('1m'))\n"
                                      "  :aggregate{n = s.count(), store = 'b'}\n"
                                      "a:features('v', {ranges = {'1m'}})\n"
                                      "b:features('v', {ranges = {'5m'}})\n"
                                      "b:features('w', {ranges = {'1m'}})\n");
    release(&f);
}

static void test_view_topic_read_by_the_pipeline_is_a_cycle(void **state)
{
    (void)state;
    expect_error(HEADER "s.stream('in'):window(s.tumbling('1m')):aggregate{n = s.count()}\n"
                        "  :features('in', {ranges = {'1m'}})\n",
                 "script.lua:3: features('in') writes its vectors to topic 'in', which this "
                 "pipeline reads (a cycle)");
}

static void test_dag_equal_compares_features(void **state)
{
    (void)state;
    static const char *const variants[] = {
        AGG ":features('v', {ranges = {'1m', '2m'}, defaults = {n = 1}})\n",
        AGG ":features('w', {ranges = {'1m', '2m'}, defaults = {n = 1}})\n",
        AGG ":features('v', {ranges = {'2m', '1m'}, defaults = {n = 1}})\n",
        AGG ":features('v', {ranges = {'1m', '120s'}, defaults = {n = 1}})\n",
        AGG ":features('v', {ranges = {'1m', '2m'}, defaults = {n = 2}})\n",
        AGG ":features('v', {ranges = {'1m', '2m'}, defaults = {v = 1}})\n",
        AGG ":features('v', {ranges = {'1m', '2m'}})\n",
    };
    size_t n = sizeof variants / sizeof *variants;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            fixture_t a = compile_view(variants[i]), b = compile_view(variants[j]);
            assert_int_equal(sl_dag_equal(a.dag, b.dag), i == j);
            release(&a);
            release(&b);
        }
}

/* ---- vectors from buckets ------------------------------------------------------ */

/* A bucket's encoded state: one record per value in vs (NAN: no v). */
static size_t bucket(const fixture_t *f, const double *vs, int n, int64_t ts, uint8_t *out)
{
    sl_aggset_t *set;
    sl_aggstate_t *st;
    sl_agg_input_t in[3] = {{0}};
    assert_int_equal(sl_aggregate_set(f->agg, &set), 0);
    assert_int_equal(sl_aggstate_new(set, &st), 0);
    for (int i = 0; i < n; i++) {
        for (int m = 0; m < 3; m++)
            in[m] = isnan(vs[i]) ? (sl_agg_input_t){.type = SL_AGG_NONE}
                                 : (sl_agg_input_t){.type = SL_AGG_NUMBER,
                                                    .number = sl_number_int((int64_t)vs[i])};
        assert_int_equal(sl_aggstate_add(st, in, ts), 0);
    }
    size_t len = sl_aggstate_encoded_size(st);
    sl_aggstate_encode(st, out);
    sl_aggstate_free(st);
    sl_aggset_free(set);
    return len;
}

typedef struct given {
    int64_t start;
    double vs[4];
    int n;
} given_t;

/* Computes the vector ending at end from the given buckets (start order),
 * returning its JSON. */
static char *vector_at(const fixture_t *f, sl_features_calc_t *c, const given_t *g, int count,
                       int64_t end)
{
    uint8_t state[256];
    int64_t from, to;
    sl_buf_t json = {0};
    sl_features_begin(c, end, &from, &to);
    assert_int_equal(from, end - 10 * MINUTE);
    assert_int_equal(to, end - MINUTE);
    for (int i = 0; i < count; i++) {
        size_t len = bucket(f, g[i].vs, g[i].n, g[i].start + 1, state);
        assert_int_equal(sl_features_add(c, g[i].start, state, len), 0);
    }
    assert_int_equal(sl_features_compute(c), 0);
    assert_int_equal(sl_features_json(c, &json), 0);
    assert_int_equal(sl_buf_append(&json, "", 1), 0);
    return (char *)json.data;
}

static void test_end_of_as_of_and_live_queries(void **state)
{
    (void)state;
    /* AS OF: the buckets complete at t; live: the one holding t counts too */
    assert_int_equal(sl_features_end(600000, MINUTE, 1), 600000);
    assert_int_equal(sl_features_end(600001, MINUTE, 1), 600000);
    assert_int_equal(sl_features_end(659999, MINUTE, 1), 600000);
    assert_int_equal(sl_features_end(600000, MINUTE, 0), 660000);
    assert_int_equal(sl_features_end(659999, MINUTE, 0), 660000);
    assert_int_equal(sl_features_end(0, MINUTE, 1), 0);
    assert_int_equal(sl_features_end(-1, MINUTE, 1), -MINUTE);
    assert_int_equal(sl_features_end(-MINUTE, MINUTE, 1), -MINUTE);
    assert_int_equal(sl_features_end(-1, MINUTE, 0), 0);
}

static void test_ranges_merge_the_buckets_they_cover(void **state)
{
    (void)state;
    fixture_t f = compile_view(view_script);
    sl_features_calc_t *c;
    assert_int_equal(sl_features_calc_new(f.agg, f.fop, &c), 0);
    assert_int_equal(sl_features_count(c), 9);
    assert_string_equal(sl_features_name(c, 0), "low_3m");
    assert_string_equal(sl_features_name(c, 5), "n_10m");
    assert_int_equal(sl_features_range(c, 5), 10 * MINUTE);
    assert_int_equal(sl_features_bucket(c), MINUTE);
    /* end 20m: 1m covers [19m, 20m), 3m [17m, 20m), 10m [10m, 20m) */
    const given_t g[] = {
        {9 * MINUTE, {100}, 1},      /* before every range */
        {10 * MINUTE, {4, 6}, 2},    /* 10m only */
        {17 * MINUTE, {2}, 1},       /* 3m and 10m */
        {19 * MINUTE, {5, 1, 3}, 3}, /* all */
        {20 * MINUTE, {1000}, 1},    /* at the end: not yet (AS OF 20m) */
    };
    char *json = vector_at(&f, c, g, 5, 20 * MINUTE);
    assert_string_equal(json, "{\"low_3m\":1,\"low_1m\":1,\"low_10m\":1,"
                              "\"n_3m\":4,\"n_1m\":3,\"n_10m\":6,"
                              "\"total_3m\":11,\"total_1m\":9,\"total_10m\":21}");
    assert_int_equal(sl_features_found(c), 1);
    free(json);
    sl_features_calc_free(c);
    release(&f);
}

static void test_empty_ranges_take_their_defaults(void **state)
{
    (void)state;
    fixture_t f = compile_view(view_script);
    sl_features_calc_t *c;
    assert_int_equal(sl_features_calc_new(f.agg, f.fop, &c), 0);
    /* only an old bucket: the 1m and 3m ranges are empty */
    const given_t g[] = {{12 * MINUTE, {8}, 1}};
    char *json = vector_at(&f, c, g, 1, 20 * MINUTE);
    assert_string_equal(json, "{\"low_3m\":-1,\"low_1m\":-1,\"low_10m\":8,"
                              "\"n_3m\":7,\"n_1m\":0,\"n_10m\":1,"
                              "\"total_3m\":0,\"total_1m\":0,\"total_10m\":8}");
    free(json);
    /* no bucket at all: not found, every range empty */
    json = vector_at(&f, c, g, 0, 20 * MINUTE);
    assert_int_equal(sl_features_found(c), 0);
    assert_string_equal(json, "{\"low_3m\":-1,\"low_1m\":-1,\"low_10m\":-1,"
                              "\"n_3m\":7,\"n_1m\":0,\"n_10m\":0,"
                              "\"total_3m\":0,\"total_1m\":0,\"total_10m\":0}");
    free(json);
    sl_features_calc_free(c);
    release(&f);
}

static void test_null_results_without_defaults_are_null(void **state)
{
    (void)state;
    fixture_t f =
        compile_view(HEADER "s.stream('in'):window(s.tumbling('1m'))\n"
                            ":aggregate{n = s.count(), total = s.sum('v'), low = s.min('v')}\n"
                            ":features('v', {ranges = {'1m', '10m'}})\n");
    sl_features_calc_t *c;
    assert_int_equal(sl_features_calc_new(f.agg, f.fop, &c), 0);
    assert_int_equal(sl_features_any_default(c), 0);
    /* a record without v: low stays null over its range; and 2.5 as a value */
    uint8_t a[256], b[256];
    int64_t from, to;
    double none[] = {NAN}, some[] = {3};
    size_t la = bucket(&f, none, 1, 19 * MINUTE, a), lb = bucket(&f, some, 1, 15 * MINUTE, b);
    sl_features_begin(c, 20 * MINUTE, &from, &to);
    assert_int_equal(sl_features_add(c, 15 * MINUTE, b, lb), 0);
    assert_int_equal(sl_features_add(c, 19 * MINUTE, a, la), 0);
    assert_int_equal(sl_features_add(c, 20 * MINUTE, a, la), 0); /* outside [from, to]: ignored */
    assert_int_equal(sl_features_compute(c), 0);
    sl_buf_t json = {0};
    assert_int_equal(sl_features_json(c, &json), 0);
    assert_int_equal(sl_buf_append(&json, "", 1), 0);
    assert_string_equal((char *)json.data, "{\"low_1m\":null,\"low_10m\":3,\"n_1m\":1,\"n_10m\":2,"
                                           "\"total_1m\":0,\"total_10m\":3}");
    assert_true(isnan(sl_features_f32(sl_features_value(c, 0))));
    assert_true(sl_features_f32(sl_features_value(c, 1)) == 3.0f);
    sl_buf_free(&json);
    sl_features_calc_free(c);
    release(&f);
}

static void test_values_write_as_json_and_float32(void **state)
{
    (void)state;
    sl_buf_t out = {0};
    sl_agg_result_t null = {.type = SL_AGG_NULL};
    sl_agg_result_t half = {.type = SL_AGG_RESULT_NUMBER, .number = sl_number_double(0.1)};
    sl_agg_result_t big = {.type = SL_AGG_RESULT_NUMBER, .number = sl_number_int(1 << 30)};
    assert_int_equal(sl_features_json_value(null, &out), 0);
    assert_int_equal(sl_features_json_value(half, &out), 0);
    assert_int_equal(sl_buf_append(&out, ",", 1), 0);
    assert_int_equal(sl_features_json_value(big, &out), 0);
    assert_int_equal(sl_buf_json_string("a\"b\n", 4, &out), 0);
    assert_int_equal(sl_buf_append(&out, "", 1), 0);
    assert_string_equal((char *)out.data, "null0.1,1073741824\"a\\\"b\\u000a\"");
    assert_true(sl_features_f32(half) == 0.1f);
    assert_true(sl_features_f32(big) == 1073741824.0f);
    sl_buf_free(&out);
}

static void test_bucket_of_another_definition_is_corrupt(void **state)
{
    (void)state;
    fixture_t f = compile_view(view_script);
    fixture_t other = compile_view(HEADER "s.stream('in'):window(s.tumbling('1m'))\n"
                                          ":aggregate{n = s.count(), total = s.sum('w'), low = "
                                          "s.min('v')}:features('v', {ranges = {'1m'}})\n");
    sl_features_calc_t *c;
    uint8_t state_bytes[256];
    int64_t from, to;
    double vs[] = {1};
    assert_int_equal(sl_features_calc_new(f.agg, f.fop, &c), 0);
    size_t len = bucket(&other, vs, 1, 19 * MINUTE, state_bytes); /* sum of another field */
    sl_features_begin(c, 20 * MINUTE, &from, &to);
    assert_int_equal(sl_features_add(c, 19 * MINUTE, state_bytes, len), 0);
    assert_int_equal(sl_features_compute(c), SL_ECORRUPT);
    assert_non_null(strstr(sl_error_detail(), "another aggregate definition"));
    sl_features_calc_free(c);
    release(&other);
    release(&f);
}

/* ---- the FEATURES exit ----------------------------------------------------------- */

typedef struct emitted {
    char key[8][16];
    char value[8][512];
    int64_t ts[8];
    int exit_op[8];
    int count;
} emitted_t;

static int collect(void *arg, const sl_op_t *exit, const sl_record_t *rec)
{
    emitted_t *e = arg;
    assert_true(e->count < 8);
    e->exit_op[e->count] = exit->id;
    snprintf(e->key[e->count], 16, "%.*s", (int)rec->key_len, (const char *)rec->key);
    if (rec->value_len < 0)
        snprintf(e->value[e->count], 512, "(tombstone)");
    else
        snprintf(e->value[e->count], 512, "%.*s", (int)rec->value_len, (const char *)rec->value);
    e->ts[e->count++] = rec->timestamp;
    return 0;
}

static int no_failure(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why)
{
    (void)arg;
    (void)op;
    (void)input;
    fail_msg("failed: %s", why);
    return 1;
}

static void test_exit_writes_each_changed_key_once_per_flush(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st;
    sl_store_t *store;
    sl_exec_t *x;
    sl_exec_task_t *task;
    fixture_t f = compile_view(view_script);
    assert_int_equal(sl_state_open(dir, NULL, &st), 0);
    assert_int_equal(sl_store_open(st, "p", "st", SL_STORE_WINDOW, &store), 0);
    assert_int_equal(sl_exec_new(f.dag, &x), 0);
    sl_store_t *stores[3] = {NULL, store, NULL};
    int64_t times[3] = {INT64_MIN, INT64_MIN, INT64_MIN};
    assert_int_equal(sl_exec_task_new(x, stores, times, 0, 1, &task), 0);
    /* key a in two buckets, key b in one; stream time ends at 19m30s */
    sl_record_t recs[] = {
        tu_record("a", "{\"v\":4}", 17 * MINUTE + 5),
        tu_record("b", "{\"v\":9}", 18 * MINUTE),
        tu_record("a", "{\"v\":2}", 19 * MINUTE + 30000),
    };
    emitted_t e = {0};
    sl_exec_output_t out = {collect, no_failure, &e};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_exec_set_task(x, task);
    assert_int_equal(sl_exec_batch(x, 0, &origin, recs, 3, &out, NULL), 0);
    assert_int_equal(e.count, 0); /* vectors go at the flush */
    sl_exec_reset(x);
    assert_int_equal(sl_exec_task_flush(x, task, &out), 0);
    assert_int_equal(e.count, 2);
    assert_string_equal(e.key[0], "a");
    assert_int_equal(e.exit_op[0], f.fop->id);
    assert_int_equal(e.ts[0], 19 * MINUTE + 30000);
    /* live at 19m30s: the buckets up to the one holding it */
    assert_string_equal(e.value[0], "{\"key\":\"a\",\"ts\":1170000,\"features\":{"
                                    "\"low_3m\":2,\"low_1m\":2,\"low_10m\":2,"
                                    "\"n_3m\":2,\"n_1m\":1,\"n_10m\":2,"
                                    "\"total_3m\":6,\"total_1m\":2,\"total_10m\":6}}");
    assert_string_equal(e.key[1], "b");
    assert_non_null(strstr(e.value[1], "\"n_3m\":1,\"n_1m\":0,\"n_10m\":1"));
    assert_non_null(strstr(e.value[1], "\"low_1m\":-1")); /* the default of an empty range */
    sl_exec_reset(x);
    sl_exec_task_free(task);
    sl_exec_free(x);
    sl_store_close(store);
    sl_state_close(st);
    release(&f);
    tu_rmdir(dir);
}

static void test_exit_writes_a_key_once_when_its_closed_windows_interleave(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st;
    sl_store_t *store;
    sl_exec_t *x;
    sl_exec_task_t *task;
    fixture_t f =
        compile_view(HEADER "s.pipeline{name = 'p'}\n"
                            "s.stream('in'):window(s.tumbling('1m'))\n"
                            "  :aggregate{n = s.count(), emit = 'on_close', store = 'st'}\n"
                            "  :features('v', {ranges = {'5m'}})\n");
    assert_int_equal(sl_state_open(dir, NULL, &st), 0);
    assert_int_equal(sl_store_open(st, "p", "st", SL_STORE_WINDOW, &store), 0);
    assert_int_equal(sl_exec_new(f.dag, &x), 0);
    sl_store_t *stores[3] = {NULL, store, NULL};
    int64_t times[3] = {INT64_MIN, INT64_MIN, INT64_MIN};
    assert_int_equal(sl_exec_task_new(x, stores, times, 0, 1, &task), 0);
    /* windows close in the order a@1m, b@1m, a@2m once c moves time to 10m */
    sl_record_t recs[] = {
        tu_record("a", "{}", MINUTE + 1),
        tu_record("b", "{}", MINUTE + 2),
        tu_record("a", "{}", 2 * MINUTE + 3),
        tu_record("c", "{}", 10 * MINUTE),
    };
    emitted_t e = {0};
    sl_exec_output_t out = {collect, no_failure, &e};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_exec_set_task(x, task);
    assert_int_equal(sl_exec_batch(x, 0, &origin, recs, 4, &out, NULL), 0);
    sl_exec_reset(x);
    assert_int_equal(sl_exec_task_flush(x, task, &out), 0);
    assert_int_equal(e.count, 2);
    assert_string_equal(e.key[0], "a");
    assert_string_equal(e.key[1], "b");
    /* live at 10m: [6m, 11m) holds none of a's windows, and the view has no
     * default: no vector (FEATURES answers nil), a tombstone */
    assert_string_equal(e.value[0], "(tombstone)");
    assert_int_equal(e.ts[0], 10 * MINUTE);
    sl_exec_reset(x); /* a later commit writes a again */
    sl_record_t more = tu_record("a", "{}", 10 * MINUTE + 5);
    assert_int_equal(sl_exec_batch(x, 0, &origin, &more, 1, &out, NULL), 0);
    sl_record_t later = tu_record("c", "{}", 20 * MINUTE);
    assert_int_equal(sl_exec_batch(x, 0, &origin, &later, 1, &out, NULL), 0);
    sl_exec_reset(x);
    assert_int_equal(sl_exec_task_flush(x, task, &out), 0);
    assert_int_equal(e.count, 4); /* a, then c's 10m window */
    assert_string_equal(e.key[2], "a");
    assert_string_equal(e.key[3], "c");
    sl_exec_reset(x);
    sl_exec_task_free(task);
    sl_exec_free(x);
    sl_store_close(store);
    sl_state_close(st);
    release(&f);
    tu_rmdir(dir);
}

/* Behind a repartition topic the stream time is held at the slowest upstream
 * task (sl_exec_task_bound), so a commit can store windows that start after
 * the stream time it records. A restarted task, its cache empty, must find
 * them in the store rather than start them anew. */
static void test_windows_past_a_held_stream_time_survive_a_restart(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log;
    sl_state_t *st;
    sl_store_t *store;
    sl_commit_t *commit;
    sl_topic_t *topic;
    sl_topic_config_t cfg;
    sl_exec_t *x;
    fixture_t f = compile_view(HEADER "s.pipeline{name = 'p'}\n"
                                      "s.stream('in'):window(s.tumbling('1m'))\n"
                                      "  :aggregate{n = s.count(), store = 'st'}:to('out')\n");
    assert_int_equal(sl_log_open(dir, NULL, &log), 0);
    assert_int_equal(sl_state_open(dir, NULL, &st), 0);
    assert_int_equal(sl_log_attach_state(log, st), 0);
    assert_int_equal(sl_store_open(st, "p", "st", SL_STORE_WINDOW, &store), 0);
    sl_changelog_topic_config(&cfg, 1, "p");
    assert_int_equal(sl_log_create_topic(log, sl_store_changelog_topic(store), &cfg, &topic), 0);
    assert_int_equal(sl_commit_new(st, &commit), 0);
    assert_int_equal(sl_exec_new(f.dag, &x), 0);
    sl_store_t *stores[3] = {NULL, store, NULL};
    int64_t times[3] = {INT64_MIN, INT64_MIN, INT64_MIN};
    emitted_t e = {0};
    sl_exec_output_t out = {collect, no_failure, &e};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    for (int run = 0; run < 2; run++) { /* the second run is the restarted task */
        sl_exec_task_t *task;
        assert_int_equal(sl_exec_task_new(x, stores, times, 0, 1, &task), 0);
        sl_exec_task_bound(task, 5 * MINUTE, 5 * MINUTE); /* the slowest upstream task */
        sl_record_t rec = tu_record("a", "{}", 10 * MINUTE + run);
        sl_exec_set_task(x, task);
        assert_int_equal(sl_exec_batch(x, 0, &origin, &rec, 1, &out, NULL), 0);
        sl_exec_reset(x);
        assert_int_equal(sl_exec_task_flush(x, task, &out), 0);
        sl_exec_reset(x);
        assert_int_equal(sl_commit_begin(commit), 0);
        sl_commit_flush_all(commit); /* the task stops: its state all in LMDB */
        assert_int_equal(sl_commit_store(commit, sl_exec_task_cache(task, f.agg->id),
                                         sl_topic_partition(topic, 0)),
                         0);
        assert_int_equal(sl_commit_end(commit), 0);
        sl_exec_task_committed(task);
        times[f.agg->id] = sl_exec_task_stream_time(task, f.agg->id);
        assert_int_equal(times[f.agg->id], 5 * MINUTE); /* held: the window starts at 10m */
        sl_exec_task_free(task);
    }
    assert_int_equal(e.count, 2);
    assert_non_null(strstr(e.value[0], "\"n\":1"));
    assert_non_null(strstr(e.value[1], "\"n\":2")); /* not a new window of 1 */
    sl_exec_free(x);
    sl_commit_free(commit);
    sl_store_close(store);
    sl_log_close(log);
    sl_state_close(st);
    release(&f);
    tu_rmdir(dir);
}

/* ---- the vector cache ----------------------------------------------------------- */

enum { JSON = 0, F32 = 1 }; /* formats, to the cache only numbers */

static const char *cached_vector(sl_vector_cache_t *c, size_t txn, const char *key, int format,
                                 const int64_t *ends, int n)
{
    static char text[8192];
    const void *v;
    size_t len;
    int hit = sl_vector_cache_get(c, txn, key, strlen(key), format, ends, n, &v, &len);
    if (hit == 0)
        return "miss";
    if (hit == 2)
        return "absent";
    snprintf(text, sizeof text, "%.*s", (int)len, (const char *)v);
    return text;
}

static void keep(sl_vector_cache_t *c, size_t txn, const char *key, int format, const int64_t *ends,
                 int n, const char *vector)
{
    assert_int_equal(sl_vector_cache_put(c, txn, key, strlen(key), format, ends, n, vector,
                                         vector ? strlen(vector) : 0, vector == NULL),
                     0);
}

/* A vector is answered only in the snapshot, for the ends and in the
 * format it was computed for; another snapshot empties the cache. */
static void test_vector_cache_answers_only_its_snapshot_and_buckets(void **state)
{
    (void)state;
    sl_vector_cache_t *c;
    int64_t ends[2] = {MINUTE, 2 * MINUTE}, later[2] = {MINUTE, 3 * MINUTE};
    assert_int_equal(sl_vector_cache_new(1 << 20, &c), 0);
    assert_string_equal(cached_vector(c, 7, "a", JSON, ends, 2), "miss");
    keep(c, 7, "a", JSON, ends, 2, "{\"n\":1}");
    keep(c, 7, "a", F32, ends, 2, "\x01\x02");
    keep(c, 7, "gone", JSON, ends, 2, NULL);
    assert_string_equal(cached_vector(c, 7, "a", JSON, ends, 2), "{\"n\":1}");
    assert_string_equal(cached_vector(c, 7, "a", F32, ends, 2), "\x01\x02");
    assert_string_equal(cached_vector(c, 7, "gone", JSON, ends, 2), "absent");
    assert_string_equal(cached_vector(c, 7, "gone", F32, ends, 2), "miss");
    assert_string_equal(cached_vector(c, 7, "b", JSON, ends, 2), "miss");
    assert_string_equal(cached_vector(c, 7, "a", JSON, later, 2), "miss"); /* next bucket */
    assert_string_equal(cached_vector(c, 7, "a", JSON, ends, 1), "miss");
    keep(c, 7, "a", JSON, later, 2, "{\"n\":2}"); /* replaces */
    assert_string_equal(cached_vector(c, 7, "a", JSON, later, 2), "{\"n\":2}");
    assert_string_equal(cached_vector(c, 7, "a", JSON, ends, 2), "miss");
    assert_int_equal(sl_vector_cache_count(c), 3);
    assert_string_equal(cached_vector(c, 8, "a", F32, ends, 2), "miss"); /* a commit */
    assert_int_equal(sl_vector_cache_count(c), 0);
    assert_string_equal(cached_vector(c, 7, "a", F32, ends, 2), "miss");
    sl_vector_cache_free(c);
}

/* Many keys: the table grows and every one is found; at the byte limit
 * the cache empties and goes on; a vector over the limit is never kept. */
static void test_vector_cache_grows_and_empties_at_its_limit(void **state)
{
    (void)state;
    sl_vector_cache_t *c;
    int64_t end = MINUTE;
    char key[32], vector[32];
    assert_int_equal(sl_vector_cache_new(1 << 20, &c), 0);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(vector, sizeof vector, "{\"i\":%d}", i);
        keep(c, 1, key, JSON, &end, 1, vector);
    }
    assert_int_equal(sl_vector_cache_count(c), 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(vector, sizeof vector, "{\"i\":%d}", i);
        assert_string_equal(cached_vector(c, 1, key, JSON, &end, 1), vector);
    }
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    int emptied = 0;
    size_t before = sl_vector_cache_count(c);
    for (int i = 0; i < 400 && !emptied; i++) {
        snprintf(key, sizeof key, "big%d", i);
        keep(c, 1, key, JSON, &end, 1, big);
        emptied = sl_vector_cache_count(c) < before;
        before = sl_vector_cache_count(c);
    }
    assert_true(emptied); /* 1 MiB holds fewer than 400 vectors of 4 KiB beside the rest */
    assert_string_equal(cached_vector(c, 1, key, JSON, &end, 1), big);
    assert_string_equal(cached_vector(c, 1, "k0", JSON, &end, 1), "miss");
    sl_vector_cache_free(c);
    assert_int_equal(sl_vector_cache_new(100, &c), 0);
    keep(c, 1, "k", JSON, &end, 1, big); /* over the limit by itself */
    assert_int_equal(sl_vector_cache_count(c), 0);
    assert_string_equal(cached_vector(c, 1, "k", JSON, &end, 1), "miss");
    sl_vector_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_compiles_to_a_sink_op),
        cmocka_unit_test(test_feature_default_wins_over_its_member),
        cmocka_unit_test(test_features_is_a_sink),
        cmocka_unit_test(test_features_needs_a_tumbling_aggregate),
        cmocka_unit_test(test_features_ranges_are_checked),
        cmocka_unit_test(test_features_names_and_defaults_are_checked),
        cmocka_unit_test(test_feature_names_are_unique_in_a_view),
        cmocka_unit_test(test_view_topic_read_by_the_pipeline_is_a_cycle),
        cmocka_unit_test(test_dag_equal_compares_features),
        cmocka_unit_test(test_end_of_as_of_and_live_queries),
        cmocka_unit_test(test_ranges_merge_the_buckets_they_cover),
        cmocka_unit_test(test_empty_ranges_take_their_defaults),
        cmocka_unit_test(test_null_results_without_defaults_are_null),
        cmocka_unit_test(test_values_write_as_json_and_float32),
        cmocka_unit_test(test_bucket_of_another_definition_is_corrupt),
        cmocka_unit_test(test_exit_writes_each_changed_key_once_per_flush),
        cmocka_unit_test(test_exit_writes_a_key_once_when_its_closed_windows_interleave),
        cmocka_unit_test(test_windows_past_a_held_stream_time_survive_a_restart),
        cmocka_unit_test(test_vector_cache_answers_only_its_snapshot_and_buckets),
        cmocka_unit_test(test_vector_cache_grows_and_empties_at_its_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

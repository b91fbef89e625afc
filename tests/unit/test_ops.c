/*
 * test_ops.c - running pipeline stages over batches: operators in order,
 * stage exits and entries (TO, KEY_BY, ROUTE), failures with skip and
 * stop, fan-out, counters.
 */
#include "testutil.h"

#include "ops/ops.h"
#include "storage/state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct collected {
    int exit_op[64];
    char key[64][32];
    char value[64][160];
    int64_t ts[64];
    int count;
    int failures;
    char why[256];
    int stop_on_failure;
} collected_t;

static int collect(void *arg, const sl_op_t *exit, const sl_record_t *rec)
{
    collected_t *c = arg;
    assert_true(c->count < 64);
    c->exit_op[c->count] = exit->id;
    snprintf(c->key[c->count], 32, "%.*s", rec->key_len > 0 ? rec->key_len : 0,
             rec->key_len > 0 ? (const char *)rec->key : "");
    snprintf(c->value[c->count], sizeof c->value[0], "%.*s",
             rec->value_len > 0 ? rec->value_len : 0,
             rec->value_len > 0 ? (const char *)rec->value : "");
    c->ts[c->count++] = rec->timestamp;
    return 0;
}

static int on_failure(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why)
{
    collected_t *c = arg;
    (void)op;
    (void)input;
    c->failures++;
    snprintf(c->why, sizeof c->why, "%s", why);
    return c->stop_on_failure;
}

typedef struct fixture {
    sl_vm_t *vm;
    sl_dag_t *dag;
    sl_exec_t *exec;
} fixture_t;

static fixture_t compile(const char *script)
{
    fixture_t f;
    assert_int_equal(sl_vm_new(NULL, &f.vm), 0);
    int rc = sl_vm_compile(f.vm, "p.lua", script, strlen(script), &f.dag);
    if (rc)
        fprintf(stderr, "compile: %s\n", sl_error_detail());
    assert_int_equal(rc, 0);
    assert_int_equal(sl_exec_new(f.dag, &f.exec), 0);
    return f;
}

static void release(fixture_t *f)
{
    sl_exec_free(f->exec);
    sl_dag_free(f->dag);
    sl_vm_free(f->vm);
}

/* Runs JSON values (keys k0, k1, ...) into the stage at entry. */
static int run_values(fixture_t *f, int entry, const char *const *values, size_t n, collected_t *c,
                      size_t *done)
{
    sl_record_t recs[16];
    char keys[16][24];
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        recs[i] = tu_record(keys[i], values[i], 1000 + (int64_t)i);
        recs[i].offset = (int64_t)i;
    }
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_exec_output_t out = {collect, on_failure, c};
    return sl_exec_batch(f->exec, entry, &origin, recs, n, &out, done);
}

static void test_filter_and_map_reach_the_sink(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in')\n"
                          "  :filter(function(r) return r.value.n % 2 == 0 end)\n"
                          "  :map(function(r) return {n2 = r.value.n * 2} end)\n"
                          "  :to('out')\n");
    static const char *const values[] = {"{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":4}"};
    collected_t c = {0};
    size_t done;
    assert_int_equal(run_values(&f, 0, values, 4, &c, &done), 0);
    assert_int_equal(done, 4);
    assert_int_equal(c.count, 2);
    assert_string_equal(c.value[0], "{\"n2\":4}");
    assert_string_equal(c.value[1], "{\"n2\":8}");
    assert_string_equal(c.key[1], "k3"); /* a map returning a value keeps the key */
    assert_int_equal(f.dag->ops[c.exit_op[0]].kind, SL_OP_TO);
    assert_int_equal(sl_exec_stats(f.exec, 1)->records_in, 4);
    assert_int_equal(sl_exec_stats(f.exec, 1)->records_out, 2);
    assert_int_equal(sl_exec_stats(f.exec, 3)->records_out, 2);
    sl_exec_reset(f.exec);
    release(&f);
}

static void test_flat_map_branch_and_merge(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "local parts = s.stream('in')\n"
                          "  :flat_map(function(r) return r.value.items end)\n"
                          "  :branch{big = function(r) return r.value > 10 end,\n"
                          "          small = function(r) return r.value <= 10 end}\n"
                          "parts.big:map(function(r) return 'big ' .. r.value end):to('big')\n"
                          "s.merge(parts.small):to('small')\n");
    static const char *const values[] = {"{\"items\":[5,50]}", "{\"items\":[]}",
                                         "{\"items\":[11]}"};
    collected_t c = {0};
    assert_int_equal(run_values(&f, 0, values, 3, &c, NULL), 0);
    assert_int_equal(c.count, 3);
    assert_string_equal(c.value[0], "5");
    assert_string_equal(f.dag->ops[c.exit_op[0]].topic, "small");
    assert_string_equal(c.value[1], "big 50");
    assert_string_equal(f.dag->ops[c.exit_op[1]].topic, "big");
    assert_string_equal(c.value[2], "big 11");
    assert_int_equal(sl_exec_stats(f.exec, 1)->records_out, 3); /* flat_map outputs */
    sl_exec_reset(f.exec);
    release(&f);
}

/* KEY_BY ends the first stage (its records go to a repartition topic) and
 * starts the next one, without running its function again. */
static void test_key_by_ends_a_stage_and_starts_the_next(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in')\n"
                          "  :key_by('user')\n"
                          "  :map(function(r) return {user = r.value.user, seen = true} end)\n"
                          "  :to('out')\n");
    int entries[4];
    assert_int_equal(sl_exec_entries(f.exec, entries, 4), 2);
    assert_int_equal(f.dag->ops[entries[1]].kind, SL_OP_KEY_BY);
    static const char *const values[] = {"{\"user\":\"ann\"}", "{\"user\":7}"};
    collected_t first = {0}, second = {0};
    assert_int_equal(run_values(&f, entries[0], values, 2, &first, NULL), 0);
    assert_int_equal(first.count, 2);
    assert_int_equal(first.exit_op[0], entries[1]);
    assert_string_equal(first.key[0], "ann");
    assert_string_equal(first.key[1], "7");
    sl_exec_reset(f.exec);
    assert_int_equal(run_values(&f, entries[1], values, 2, &second, NULL), 0);
    assert_int_equal(second.count, 2);
    assert_string_equal(f.dag->ops[second.exit_op[0]].topic, "out");
    assert_int_equal(sl_exec_stats(f.exec, entries[1])->records_in, 2);
    assert_int_equal(sl_exec_stats(f.exec, entries[1])->records_out, 2); /* not 4 */
    assert_non_null(strstr(second.value[0], "\"seen\":true"));
    sl_exec_reset(f.exec);
    release(&f);
}

/* A KEY_BY writes only the fields the next stage reads (lua/project.c);
 * that stage fails a record that keeps fewer, naming both lists. */
static void test_key_by_writes_what_the_next_stage_reads_and_it_checks(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in')\n"
                          "  :key_by('user')\n"
                          "  :map(function(r) return {user = r.value.user, n = r.value.n} end)\n"
                          "  :to('out')\n");
    int entries[4];
    assert_int_equal(sl_exec_entries(f.exec, entries, 4), 2);
    static const char *const values[] = {"{\"user\":\"ann\",\"n\":1,\"pad\":\"xxxx\"}"};
    collected_t first = {0}, second = {0};
    assert_int_equal(run_values(&f, entries[0], values, 1, &first, NULL), 0);
    assert_string_equal(first.value[0], "{\"\":\"\\u0000n,user,\",\"n\":1,\"user\":\"ann\"}");
    sl_exec_reset(f.exec);
    const char *const read_back[] = {first.value[0], "{\"\":\"\\u0000user,\",\"user\":\"bob\"}",
                                     "{\"user\":\"cy\",\"n\":3}"};
    assert_int_equal(run_values(&f, entries[1], read_back, 3, &second, NULL), 0);
    assert_int_equal(second.count, 2);
    assert_string_equal(second.value[0], "{\"user\":\"ann\",\"n\":1}");
    assert_string_equal(second.value[1], "{\"user\":\"cy\",\"n\":3}");
    assert_int_equal(second.failures, 1);
    assert_non_null(strstr(second.why, "keeps only the fields 'user,'"));
    assert_non_null(strstr(second.why, "this version reads 'n,user,'"));
    sl_exec_reset(f.exec);
    release(&f);
}

static const char failing_script[] = "local s = require('sluice')\n"
                                     "s.stream('in')\n"
                                     "  :map(function(r)\n"
                                     "     if r.value.bad then error('bad record') end\n"
                                     "     return r.value end)\n"
                                     "  :to('out')\n";

static void test_failure_with_skip_goes_on(void **state)
{
    (void)state;
    fixture_t f = compile(failing_script);
    static const char *const values[] = {"{\"a\":1}", "{\"bad\":true}", "{\"a\":3}"};
    collected_t c = {0};
    size_t done;
    assert_int_equal(run_values(&f, 0, values, 3, &c, &done), 0);
    assert_int_equal(done, 3);
    assert_int_equal(c.count, 2);
    assert_int_equal(c.failures, 1);
    assert_non_null(strstr(c.why, "map (p.lua:3)"));
    assert_non_null(strstr(c.why, "bad record"));
    assert_int_equal(sl_exec_stats(f.exec, 1)->errors, 1);
    sl_exec_reset(f.exec);
    release(&f);
}

static void test_failure_with_stop_stops_at_that_record(void **state)
{
    (void)state;
    fixture_t f = compile(failing_script);
    static const char *const values[] = {"{\"a\":1}", "{\"bad\":true}", "{\"a\":3}"};
    collected_t c = {.stop_on_failure = 7};
    size_t done;
    assert_int_equal(run_values(&f, 0, values, 3, &c, &done), 7);
    assert_int_equal(done, 1); /* only the first record was handled */
    assert_int_equal(c.count, 1);
    sl_exec_reset(f.exec);
    release(&f);
}

static void test_invalid_json_fails_at_the_source(void **state)
{
    (void)state;
    fixture_t f = compile(failing_script);
    static const char *const values[] = {"{not json", "{\"a\":2}"};
    collected_t c = {0};
    assert_int_equal(run_values(&f, 0, values, 2, &c, NULL), 0);
    assert_int_equal(c.failures, 1);
    assert_int_equal(sl_exec_stats(f.exec, 0)->errors, 1);
    assert_int_equal(c.count, 1);
    sl_exec_reset(f.exec);
    release(&f);
}

/* One stream feeding two operators: a failure on one path leaves the
 * other path's output in place. */
static void test_fan_out_paths_fail_independently(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "local src = s.stream('in')\n"
                          "src:map(function(r) error('always') end):to('a')\n"
                          "src:map(function(r) return r.value end):to('b')\n");
    static const char *const values[] = {"{\"x\":1}"};
    collected_t c = {0};
    assert_int_equal(run_values(&f, 0, values, 1, &c, NULL), 0);
    assert_int_equal(c.failures, 1);
    assert_int_equal(c.count, 1);
    assert_string_equal(f.dag->ops[c.exit_op[0]].topic, "b");
    sl_exec_reset(f.exec);
    release(&f);
}

static void test_timestamp_extractor_sets_the_time(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in', {timestamp = function(r) return r.value.at end})\n"
                          "  :to('out')\n");
    static const char *const values[] = {"{\"at\":123456}"};
    collected_t c = {0};
    assert_int_equal(run_values(&f, 0, values, 1, &c, NULL), 0);
    assert_int_equal(c.count, 1);
    assert_int_equal(c.ts[0], 123456);
    assert_int_equal(sl_exec_batch(f.exec, 1, NULL, NULL, 0, NULL, NULL), SL_EINVALID);
    sl_exec_reset(f.exec);
    release(&f);
}

/* What a ROUTE exit emitted: the messages as sl_exec_route() shows them,
 * and the failures. */
typedef struct routed {
    sl_exec_t *exec;
    char key[8][32], payload[8][64], headers[8][64];
    int priority[8];
    int count;
    int failures;
    char why[256];
} routed_t;

static int collect_route(void *arg, const sl_op_t *exit, const sl_record_t *rec)
{
    routed_t *r = arg;
    const sl_vm_route_t *m = sl_exec_route(r->exec);
    assert_int_equal(exit->kind, SL_OP_ROUTE);
    assert_true(r->count < 8);
    snprintf(r->key[r->count], 32, "%.*s", (int)m->key_len, m->key);
    snprintf(r->payload[r->count], 64, "%.*s", (int)rec->value_len, (const char *)rec->value);
    r->priority[r->count] = m->priority;
    for (uint32_t i = 0; i < m->header_count; i++) {
        size_t at = strlen(r->headers[r->count]);
        snprintf(r->headers[r->count] + at, 64 - at, "%.*s=%.*s;", (int)m->headers[i].name_len,
                 (const char *)m->headers[i].name,
                 m->headers[i].value_len > 0 ? (int)m->headers[i].value_len : 0,
                 m->headers[i].value_len > 0 ? (const char *)m->headers[i].value : "");
    }
    r->count++;
    return 0;
}

static int route_failure(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why)
{
    routed_t *r = arg;
    (void)op;
    (void)input;
    r->failures++;
    snprintf(r->why, sizeof r->why, "%s", why);
    return 0;
}

static void run_route(fixture_t *f, const sl_record_t *recs, size_t n, int json, routed_t *r)
{
    sl_vm_origin_t origin = {"in", 0, json, 0};
    sl_exec_output_t out = {collect_route, route_failure, r};
    r->exec = f->exec;
    assert_int_equal(sl_exec_batch(f->exec, 0, &origin, recs, n, &out, NULL), 0);
}

static void test_route_exit_emits_the_message(void **state)
{
    (void)state;
    fixture_t f =
        compile("local s = require('sluice')\n"
                "local a = s.stream('in')\n"
                "a:route('e', {key = 'kind', priority = function(r) return r.value.p end,\n"
                "              headers = function(r) return {kind = r.value.kind} end})\n"
                "a:map(function(r) return {key = r.key, value = r.value,\n"
                "                          headers = {h = 'x'}} end):route('e')\n");
    const char *value = "{\"kind\":\"a.b\",\"p\":3}";
    sl_record_t rec = tu_record(NULL, value, 5);
    routed_t r = {0};
    run_route(&f, &rec, 1, 1, &r);
    assert_int_equal(r.failures, 0);
    assert_int_equal(r.count, 2);
    assert_string_equal(r.key[0], "a.b");
    assert_int_equal(r.priority[0], 3);
    assert_string_equal(r.headers[0], "kind=a.b;");
    assert_string_equal(r.payload[0], value); /* the payload is the record's value */
    assert_string_equal(r.key[1], "");        /* a null record key routes with "" */
    assert_int_equal(r.priority[1], 0);
    assert_string_equal(r.headers[1], "h=x;"); /* the record's headers go along */
    assert_int_equal(sl_exec_stats(f.exec, 1)->records_out, 1);
    sl_exec_reset(f.exec);
    release(&f);
}

static void test_route_exit_fails_a_record_it_cannot_send(void **state)
{
    (void)state;
    char long_key[300];
    memset(long_key, 'k', 256);
    long_key[256] = 0;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in'):route('e')\n");
    sl_record_t recs[3] = {tu_record(long_key, "1", 1), tu_record("ok", NULL, 2),
                           tu_record("ok", "2", 3)};
    routed_t r = {0};
    run_route(&f, recs, 1, 0, &r);
    assert_int_equal(r.failures, 1);
    assert_string_equal(r.why, "route (p.lua:2): the record's key of 256 bytes is over the 255 "
                               "bytes of a routing key (give the option key)");
    run_route(&f, recs + 1, 1, 0, &r);
    assert_int_equal(r.failures, 2);
    assert_string_equal(r.why, "route (p.lua:2): the record has no value (a tombstone), and a "
                               "message needs a payload");
    assert_int_equal(sl_exec_stats(f.exec, 1)->errors, 2);
    run_route(&f, recs + 2, 1, 0, &r);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.key[0], "ok");
    assert_string_equal(r.payload[0], "2");
    sl_exec_reset(f.exec);
    release(&f);
}

/* ---- stateful ops ------------------------------------------------------- */

/* A task of a fixture's DAG with a store for each stateful op, in a new
 * state directory. */
typedef struct stateful {
    char *dir;
    sl_state_t *st;
    sl_store_t *stores[16];
    sl_exec_task_t *task;
} stateful_t;

static const sl_op_t *find_op(const fixture_t *f, sl_op_kind_t kind)
{
    for (int i = 0; i < f->dag->op_count; i++)
        if (f->dag->ops[i].kind == kind)
            return &f->dag->ops[i];
    fail_msg("no op of kind %d", (int)kind);
    return NULL;
}

static void stateful_open(fixture_t *f, stateful_t *s)
{
    int64_t times[16];
    assert_true(f->dag->op_count <= 16);
    memset(s, 0, sizeof *s);
    s->dir = tu_mkdtemp();
    assert_int_equal(sl_state_open(s->dir, NULL, &s->st), 0);
    for (int i = 0; i < 16; i++)
        times[i] = INT64_MIN;
    for (int i = 0; i < f->dag->op_count; i++) {
        const sl_op_t *op = &f->dag->ops[i];
        char name[16];
        snprintf(name, sizeof name, "s%d", i);
        if (op->kind == SL_OP_JOIN || op->kind == SL_OP_AGGREGATE)
            assert_int_equal(sl_store_open(s->st, "p", name,
                                           op->kind == SL_OP_JOIN || op->window_kind
                                               ? SL_STORE_WINDOW
                                               : SL_STORE_KV,
                                           &s->stores[i]),
                             0);
    }
    assert_int_equal(sl_exec_task_new(f->exec, s->stores, times, 0, 1, &s->task), 0);
    sl_exec_set_task(f->exec, s->task);
}

static void stateful_close(fixture_t *f, stateful_t *s)
{
    sl_exec_reset(f->exec);
    sl_exec_task_free(s->task);
    for (int i = 0; i < 16; i++)
        sl_store_close(s->stores[i]);
    sl_state_close(s->st);
    tu_rmdir(s->dir);
}

/* The stateful ops flush in DAG order: an outer join's unjoined record,
 * emitted when the flush finds its window closed, reaches the aggregate
 * after the join before that aggregate flushes, so the aggregate's result
 * leaves in the same flush (the same commit), not one commit later. */
static void test_a_join_flushes_before_the_aggregate_it_feeds(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('l'):join(s.stream('r'), function(a, b) return {x = 1} end,\n"
                          "  {within = '100ms', grace = '50ms', type = 'outer'})\n"
                          "  :aggregate{n = s.count()}:to('out')\n");
    const sl_op_t *join = find_op(&f, SL_OP_JOIN);
    assert_true(join->id < find_op(&f, SL_OP_AGGREGATE)->id);
    stateful_t st;
    stateful_open(&f, &st);
    collected_t c = {0};
    sl_exec_output_t out = {collect, on_failure, &c};
    sl_vm_origin_t left = {"l", 0, 1, 0}, right = {"r", 0, 1, 0};
    sl_record_t d = tu_record("d", "{}", 900), clock = tu_record("z", "{}", 10001);
    assert_int_equal(sl_exec_batch(f.exec, join->inputs[0].op, &left, &d, 1, &out, NULL), 0);
    assert_int_equal(sl_exec_batch(f.exec, join->inputs[1].op, &right, &clock, 1, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(c.count, 0); /* d waits for its window to close; results go at the flush */
    assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
    assert_int_equal(c.failures, 0);
    assert_int_equal(c.count, 1); /* the clock's window is still open */
    assert_string_equal(c.key[0], "d");
    assert_string_equal(c.value[0], "{\"key\":\"d\",\"values\":{\"n\":1}}");
    stateful_close(&f, &st);
    release(&f);
}

/* emit = "on_update": a flush gives each window changed since the last
 * flush once, with its latest value, in the order the windows first
 * changed; the next flush gives only what changed after. */
static void test_updated_windows_come_out_once_per_flush(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in'):window(s.tumbling('10s'))\n"
                          "  :aggregate{n = s.count()}:to('out')\n");
    stateful_t st;
    stateful_open(&f, &st);
    collected_t c = {0};
    sl_exec_output_t out = {collect, on_failure, &c};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_record_t recs[] = {tu_record("b", "{}", 1000), tu_record("a", "{}", 1000),
                          tu_record("a", "{}", 2000), tu_record("b", "{}", 3000),
                          tu_record("a", "{}", 3000), tu_record("a", "{}", 9999),
                          tu_record("a", "{}", 10000)};
    assert_int_equal(sl_exec_batch(f.exec, 0, &origin, recs, 7, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
    assert_int_equal(c.failures, 0);
    assert_int_equal(c.count, 3);
    assert_string_equal(c.value[0], "{\"key\":\"b\",\"window_start\":0,\"window_end\":10000,"
                                    "\"values\":{\"n\":2}}");
    assert_string_equal(c.value[1], "{\"key\":\"a\",\"window_start\":0,\"window_end\":10000,"
                                    "\"values\":{\"n\":4}}");
    assert_string_equal(c.value[2], "{\"key\":\"a\",\"window_start\":10000,"
                                    "\"window_end\":20000,\"values\":{\"n\":1}}");
    sl_exec_reset(f.exec);
    sl_record_t later = tu_record("b", "{}", 11000);
    assert_int_equal(sl_exec_batch(f.exec, 0, &origin, &later, 1, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
    assert_int_equal(c.count, 4); /* only b's new window */
    assert_string_equal(c.value[3], "{\"key\":\"b\",\"window_start\":10000,"
                                    "\"window_end\":20000,\"values\":{\"n\":1}}");
    stateful_close(&f, &st);
    release(&f);
}

/* A window committed to the store and then dropped from the task's cache
 * (emptied after a commit, as when it outgrows its budget) is read back
 * from the store: each record adds to it. (The aggregate asks only its
 * cache for windows it knows were never stored without passing through
 * it; emptying the cache must end that.) */
static void test_a_window_dropped_from_the_cache_is_read_from_the_store(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('in'):window(s.tumbling('10s'))\n"
                          "  :aggregate{n = s.count()}:to('out')\n");
    stateful_t st;
    stateful_open(&f, &st);
    collected_t c = {0};
    sl_exec_output_t out = {collect, on_failure, &c};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_cache_t *cache = sl_exec_task_cache(st.task, find_op(&f, SL_OP_AGGREGATE)->id);
    for (int round = 0; round < 3; round++) {
        sl_record_t rec = tu_record("a", "{}", 1000 + round);
        MDB_txn *txn;
        assert_int_equal(sl_exec_batch(f.exec, 0, &origin, &rec, 1, &out, NULL), 0);
        sl_exec_reset(f.exec);
        assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
        sl_exec_reset(f.exec);
        assert_int_equal(sl_state_begin(st.st, 1, &txn), 0);
        assert_int_equal(sl_cache_flush(cache, txn, 1, &(int){0}), 0);
        assert_int_equal(sl_state_commit(txn), 0);
        sl_exec_task_committed(st.task);
        sl_cache_clear(cache);
    }
    assert_int_equal(c.failures, 0);
    assert_int_equal(c.count, 3);
    assert_string_equal(c.value[2], "{\"key\":\"a\",\"window_start\":0,\"window_end\":10000,"
                                    "\"values\":{\"n\":3}}");
    stateful_close(&f, &st);
    release(&f);
}

/* A stream-stream join's buffered record, committed to the store and then
 * dropped from the task's cache (emptied after a commit), is still found
 * by a later record of the other side: the join reads the store again
 * (it asks only its cache for entries it knows were never stored without
 * passing through it; emptying the cache must end that). */
static void test_a_buffered_record_dropped_from_the_cache_still_joins(void **state)
{
    (void)state;
    fixture_t f = compile("local s = require('sluice')\n"
                          "s.stream('l'):join(s.stream('r'), function(a, b)\n"
                          "    return {l = a.value.v, r = b.value.v} end, {within = '1s'})\n"
                          "  :to('out')\n");
    const sl_op_t *join = find_op(&f, SL_OP_JOIN);
    stateful_t st;
    stateful_open(&f, &st);
    collected_t c = {0};
    sl_exec_output_t out = {collect, on_failure, &c};
    sl_vm_origin_t left = {"l", 0, 1, 0}, right = {"r", 0, 1, 0};
    sl_cache_t *cache = sl_exec_task_cache(st.task, join->id);
    sl_record_t l = tu_record("k", "{\"v\":1}", 1000), r = tu_record("k", "{\"v\":2}", 1500);
    MDB_txn *txn;
    assert_int_equal(sl_exec_batch(f.exec, join->inputs[0].op, &left, &l, 1, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
    assert_int_equal(sl_state_begin(st.st, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(cache, txn, 1, &(int){0}), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    sl_exec_task_committed(st.task);
    sl_cache_clear(cache);
    assert_int_equal(sl_exec_batch(f.exec, join->inputs[1].op, &right, &r, 1, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(c.failures, 0);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.value[0], "{\"l\":1,\"r\":2}");
    stateful_close(&f, &st);
    release(&f);
}

/* Members reading fields: each gets its own field, and several members of
 * one field (read once) all see it. */
static void test_aggregate_members_read_their_own_fields(void **state)
{
    (void)state;
    fixture_t f =
        compile("local s = require('sluice')\n"
                "s.stream('in'):window(s.tumbling('10s'))\n"
                "  :aggregate{n = s.count(), a = s.sum('x'), b = s.max('y'),\n"
                "             c = s.avg('x'), d = s.min('y'), e = s.last('x')}:to('out')\n");
    stateful_t st;
    stateful_open(&f, &st);
    collected_t c = {0};
    sl_exec_output_t out = {collect, on_failure, &c};
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    sl_record_t recs[2] = {tu_record("k", "{\"x\":1,\"y\":10}", 1000),
                           tu_record("k", "{\"x\":3,\"y\":-5}", 2000)};
    assert_int_equal(sl_exec_batch(f.exec, 0, &origin, recs, 2, &out, NULL), 0);
    sl_exec_reset(f.exec);
    assert_int_equal(sl_exec_task_flush(f.exec, st.task, &out), 0);
    assert_int_equal(c.failures, 0);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.value[0], "{\"key\":\"k\",\"window_start\":0,\"window_end\":10000,"
                                    "\"values\":{\"a\":4,\"b\":10,\"c\":2,\"d\":-5,\"e\":3,"
                                    "\"n\":2}}");
    stateful_close(&f, &st);
    release(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_and_map_reach_the_sink),
        cmocka_unit_test(test_flat_map_branch_and_merge),
        cmocka_unit_test(test_key_by_ends_a_stage_and_starts_the_next),
        cmocka_unit_test(test_key_by_writes_what_the_next_stage_reads_and_it_checks),
        cmocka_unit_test(test_failure_with_skip_goes_on),
        cmocka_unit_test(test_failure_with_stop_stops_at_that_record),
        cmocka_unit_test(test_invalid_json_fails_at_the_source),
        cmocka_unit_test(test_fan_out_paths_fail_independently),
        cmocka_unit_test(test_timestamp_extractor_sets_the_time),
        cmocka_unit_test(test_route_exit_emits_the_message),
        cmocka_unit_test(test_route_exit_fails_a_record_it_cannot_send),
        cmocka_unit_test(test_a_join_flushes_before_the_aggregate_it_feeds),
        cmocka_unit_test(test_updated_windows_come_out_once_per_flush),
        cmocka_unit_test(test_a_window_dropped_from_the_cache_is_read_from_the_store),
        cmocka_unit_test(test_aggregate_members_read_their_own_fields),
        cmocka_unit_test(test_a_buffered_record_dropped_from_the_cache_still_joins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

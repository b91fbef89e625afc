/*
 * test_lua_dsl.c - the pipeline DSL: scripts compile into the expected ops
 * (windows and aggregates included), every validation error names its
 * file:line, DAGs are deterministic, and DAGs release their functions.
 * Includes lua/vm.h to look a DAG's function references up in its VM, and
 * the operators' headers to check that the numbers the runtime maps from
 * one to the other agree.
 */
#include "testutil.h"

#include "lua/vm.h"
#include "ops/aggregate.h"
#include "ops/window.h"

#include <stdio.h>
#include <string.h>

#define HEADER "local s = require('sluice')\n"

static int setup(void **state)
{
    sl_vm_t *vm;
    assert_int_equal(sl_vm_new(NULL, &vm), 0);
    *state = vm;
    return 0;
}

static int teardown(void **state)
{
    sl_vm_free(*state);
    return 0;
}

static sl_dag_t *compile(sl_vm_t *vm, const char *script)
{
    sl_dag_t *dag = NULL;
    int rc = sl_vm_compile(vm, "script.lua", script, strlen(script), &dag);
    if (rc)
        fail_msg("compile failed: %s", sl_error_detail());
    return dag;
}

static void expect_error(void **state, const char *script, const char *message)
{
    sl_dag_t *dag = NULL;
    assert_int_equal(sl_vm_compile(*state, "script.lua", script, strlen(script), &dag),
                     SL_EINVALID);
    assert_null(dag);
    assert_string_equal(sl_error_detail(), message);
}

static void expect_op(const sl_op_t *op, sl_op_kind_t kind, int input, int port, const char *where)
{
    assert_int_equal(op->kind, kind);
    if (input < 0) {
        assert_int_equal(op->input_count, 0);
    } else {
        assert_int_equal(op->input_count, 1);
        assert_int_equal(op->inputs[0].op, input);
        assert_int_equal(op->inputs[0].port, port);
    }
    assert_string_equal(op->where, where);
}

/* The stateless part of DESIGN.md section 5's example, plus branch/merge. */
static const char design_example[] =
    HEADER "s.pipeline{name = 'clicks_pipeline', on_error = 'dead_letter'}\n"
           "local clicks = s.stream('clicks', {partitions = 4})\n"
           "clicks\n"
           "  :filter(function(r) return r.value.kind == 'click' end)\n"
           "  :key_by(function(r) return r.value.user end)\n"
           "  :to('clicks_by_user', {create = true, partitions = 4})\n"
           "local parts = clicks\n"
           "  :filter(function(r) return r.value.amount > 1000 end)\n"
           "  :branch{us = function(r) return r.value.region == 'us' end,\n"
           "          eu = function(r) return r.value.region == 'eu' end}\n"
           "s.merge(parts.eu, parts.us)\n"
           "  :map(function(r) return {alert = r.value.user} end)\n"
           "  :peek(function(r) end)\n"
           "  :to('alerts')\n";

static void test_design_example_compiles_to_expected_ops(void **state)
{
    sl_dag_t *dag = compile(*state, design_example);
    assert_string_equal(dag->name, "clicks_pipeline");
    assert_int_equal(dag->on_error, SL_ON_ERROR_DEAD_LETTER);
    assert_int_equal(dag->processing, SL_PROCESSING_DEFAULT);
    assert_int_equal(dag->op_count, 10);
    const sl_op_t *ops = dag->ops;
    expect_op(&ops[0], SL_OP_SOURCE, -1, 0, "script.lua:3");
    assert_string_equal(ops[0].topic, "clicks");
    assert_int_equal(ops[0].partitions, 4);
    assert_int_equal(ops[0].format, SL_FORMAT_TOPIC);
    assert_int_equal(ops[0].fn, SL_NO_FUNCTION);
    expect_op(&ops[1], SL_OP_FILTER, 0, 0, "script.lua:5");
    expect_op(&ops[2], SL_OP_KEY_BY, 1, 0, "script.lua:6");
    assert_null(ops[2].field);
    assert_int_not_equal(ops[2].fn, SL_NO_FUNCTION);
    expect_op(&ops[3], SL_OP_TO, 2, 0, "script.lua:7");
    assert_string_equal(ops[3].topic, "clicks_by_user");
    assert_true(ops[3].create);
    assert_int_equal(ops[3].partitions, 4);
    expect_op(&ops[4], SL_OP_FILTER, 0, 0, "script.lua:9");
    expect_op(&ops[5], SL_OP_BRANCH, 4, 0, "script.lua:10");
    expect_op(&ops[7], SL_OP_MAP, 6, 0, "script.lua:13");
    expect_op(&ops[8], SL_OP_PEEK, 7, 0, "script.lua:14");
    expect_op(&ops[9], SL_OP_TO, 8, 0, "script.lua:15");
    assert_string_equal(ops[9].topic, "alerts");
    assert_false(ops[9].create);
    sl_dag_free(dag);
}

static void test_branch_names_are_sorted_and_merge_reads_their_ports(void **state)
{
    sl_dag_t *dag = compile(*state, design_example);
    const sl_op_t *branch = &dag->ops[5], *merge = &dag->ops[6];
    assert_int_equal(branch->branch_count, 2);
    assert_string_equal(branch->branch_names[0], "eu");
    assert_string_equal(branch->branch_names[1], "us");
    assert_int_not_equal(branch->branch_fns[0], branch->branch_fns[1]);
    assert_int_equal(merge->kind, SL_OP_MERGE);
    assert_int_equal(merge->input_count, 2);
    assert_int_equal(merge->inputs[0].op, 5);
    assert_int_equal(merge->inputs[0].port, 0); /* parts.eu */
    assert_int_equal(merge->inputs[1].op, 5);
    assert_int_equal(merge->inputs[1].port, 1); /* parts.us */
    sl_dag_free(dag);
}

static void test_defaults_when_the_script_sets_no_options(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):to('b')\n");
    assert_null(dag->name);
    assert_int_equal(dag->on_error, SL_ON_ERROR_STOP);
    assert_int_equal(dag->op_count, 2);
    assert_int_equal(dag->ops[0].partitions, 0);
    assert_int_equal(dag->ops[1].create, 0);
    sl_dag_free(dag);
}

static void test_stream_format_timestamp_and_key_field_are_recorded(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a', {format = 'raw', timestamp = function(r) "
                                           "return 1 end}):key_by('user'):to('b')\n"
                                           "s.stream('c', {format = 'json'}):to('d')\n");
    assert_int_equal(dag->ops[0].format, SL_FORMAT_RAW);
    assert_int_not_equal(dag->ops[0].fn, SL_NO_FUNCTION);
    assert_string_equal(dag->ops[1].field, "user");
    assert_int_equal(dag->ops[1].fn, SL_NO_FUNCTION);
    assert_int_equal(dag->ops[3].format, SL_FORMAT_JSON);
    sl_dag_free(dag);
}

static void test_unknown_stream_option_names_the_line(void **state)
{
    expect_error(state, HEADER "\nlocal x = s.stream('t', {partitons = 4})\n",
                 "script.lua:3: unknown option 'partitons' for stream (expected partitions, "
                 "format, timestamp)");
}

static void test_unknown_option_reported_is_the_smallest_name(void **state)
{
    expect_error(state, HEADER "s.stream('a'):to('b', {zz = 1, create = true, aa = 2})\n",
                 "script.lua:2: unknown option 'aa' for to (expected create, partitions)");
}

static void test_unknown_pipeline_option_is_an_error(void **state)
{
    expect_error(state, HEADER "s.pipeline{nmae = 'x'}\n",
                 "script.lua:2: unknown option 'nmae' for pipeline (expected name, on_error, "
                 "processing, commit_interval, flush_interval)");
}

static void test_bad_on_error_is_an_error(void **state)
{
    expect_error(state, HEADER "s.pipeline{on_error = 'ignore'}\n",
                 "script.lua:2: option 'on_error' for pipeline must be one of stop, skip, "
                 "dead_letter, got 'ignore'");
}

static void test_commit_interval_is_recorded_and_checked(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):to('b')\n");
    assert_int_equal(dag->commit_interval, SL_COMMIT_INTERVAL_DEFAULT);
    sl_dag_t *other = compile(*state, HEADER "s.pipeline{commit_interval = '2s'}\n"
                                             "s.stream('a'):to('b')\n");
    assert_int_equal(other->commit_interval, 2000);
    assert_false(sl_dag_equal(dag, other));
    sl_dag_free(dag);
    sl_dag_free(other);
    expect_error(state, HEADER "s.pipeline{commit_interval = '2h'}\ns.stream('a'):to('b')\n",
                 "script.lua:2: commit_interval must be 1 ms to 1 h, got 7200000 ms");
}

static void test_flush_interval_is_recorded_and_checked(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):to('b')\n");
    assert_int_equal(dag->flush_interval, SL_FLUSH_INTERVAL_DEFAULT);
    sl_dag_t *other = compile(*state, HEADER "s.pipeline{flush_interval = 0}\n"
                                             "s.stream('a'):to('b')\n");
    assert_int_equal(other->flush_interval, 0);
    assert_false(sl_dag_equal(dag, other));
    sl_dag_free(dag);
    sl_dag_free(other);
    expect_error(state, HEADER "s.pipeline{flush_interval = '2h'}\ns.stream('a'):to('b')\n",
                 "script.lua:2: flush_interval must be 0 to 1 h, got 7200000 ms");
}

static void test_processing_mode_is_recorded(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.pipeline{processing = 'exactly_once'}\n"
                                           "s.stream('a'):to('b')\n");
    assert_int_equal(dag->processing, SL_PROCESSING_EXACTLY_ONCE);
    sl_dag_free(dag);
    dag = compile(*state, HEADER "s.pipeline{processing = 'at_least_once'}\n"
                                 "s.stream('a'):to('b')\n");
    assert_int_equal(dag->processing, SL_PROCESSING_AT_LEAST_ONCE);
    sl_dag_free(dag);
    dag = compile(*state, HEADER "s.pipeline{name = 'x'}\ns.stream('a'):to('b')\n");
    assert_int_equal(dag->processing, SL_PROCESSING_DEFAULT);
    sl_dag_free(dag);
    dag = compile(*state, HEADER "s.stream('a'):to('b')\n");
    assert_int_equal(dag->processing, SL_PROCESSING_DEFAULT);
    sl_dag_free(dag);
    expect_error(state, HEADER "s.pipeline{processing = 'twice'}\n",
                 "script.lua:2: option 'processing' for pipeline must be one of at_least_once, "
                 "exactly_once, got 'twice'");
}

static void test_pipeline_options_twice_is_an_error(void **state)
{
    expect_error(state, HEADER "s.pipeline{name = 'a'}\ns.pipeline{name = 'b'}\n",
                 "script.lua:3: pipeline options are set twice (first at script.lua:2)");
}

static void test_bad_pipeline_name_is_an_error(void **state)
{
    expect_error(state, HEADER "s.pipeline{name = 'a.b'}\n",
                 "script.lua:2: pipeline name 'a.b' must be 1 to 128 letters, digits, '_' or '-'");
}

static void test_wrong_option_type_is_an_error(void **state)
{
    expect_error(state, HEADER "s.stream('a', {partitions = -1}):to('b')\n",
                 "script.lua:2: option 'partitions' for stream must be a positive integer, got -1");
    expect_error(state, HEADER "s.stream('a', {format = 'xml'}):to('b')\n",
                 "script.lua:2: option 'format' for stream must be one of json, raw, got 'xml'");
    expect_error(state, HEADER "s.stream('a', {timestamp = 3}):to('b')\n",
                 "script.lua:2: option 'timestamp' for stream must be a function, got 3");
    expect_error(state, HEADER "s.stream('a'):to('b', {create = 'yes'})\n",
                 "script.lua:2: option 'create' for to must be true or false, got 'yes'");
}

static void test_options_must_be_a_table(void **state)
{
    expect_error(state, HEADER "s.stream('a', 4):to('b')\n",
                 "script.lua:2: options for stream must be a table, got 4");
}

static void test_operator_argument_types_are_checked(void **state)
{
    expect_error(state, HEADER "s.stream('a'):filter(42):to('b')\n",
                 "script.lua:2: filter expects a function, got 42");
    expect_error(state, HEADER "s.stream('a'):key_by({}):to('b')\n",
                 "script.lua:2: key_by expects a function or a field name, got a table");
    expect_error(state, HEADER "s.stream('a'):branch{big = true}\n",
                 "script.lua:2: branch 'big' must be a function, got true");
    expect_error(state, HEADER "s.stream('a'):branch{}\n",
                 "script.lua:2: branch needs at least one name = predicate");
}

static void test_method_called_with_a_dot_is_an_error(void **state)
{
    expect_error(state, HEADER "local a = s.stream('a')\na.map(function(r) return r end)\n",
                 "script.lua:3: map must be called on a stream as stream:map(...), got a function");
}

static void test_topic_names_are_checked(void **state)
{
    expect_error(state, HEADER "s.stream(42):to('b')\n",
                 "script.lua:2: stream expects a topic name, got 42");
    expect_error(state, HEADER "s.stream('a'):to('no space')\n",
                 "script.lua:2: to: topic name 'no space' has ' ': use only letters, digits, "
                 "'.', '_', '-'");
}

static void test_operator_after_a_sink_names_the_line(void **state)
{
    expect_error(state,
                 HEADER "local out = s.stream('a'):to('b')\n\nout:map(function(r) return r end)\n",
                 "script.lua:4: 'map' after :to(): a sink ends its stream");
}

static void test_unknown_operator_is_an_error(void **state)
{
    expect_error(state, HEADER "s.stream('a'):zip(1):to('b')\n",
                 "script.lua:2: streams have no operator 'zip' (they have filter, map, "
                 "flat_map, key_by, branch, peek, window, aggregate, join, to, route, features)");
    expect_error(state, HEADER "s.sliding('1m')\n",
                 "script.lua:2: sluice has no 'sliding' (it has pipeline, stream, table, merge, "
                 "null, tumbling, hopping, session, count, sum, min, max, avg, last, distinct, "
                 "reduce, exchange, queue, bind)");
}

static void test_script_without_a_sink_is_an_error(void **state)
{
    expect_error(state, HEADER,
                 "script.lua: the pipeline has no sink: end a stream with :to(topic), "
                 ":route(exchange) or :aggregate{...}");
}

/* An aggregate's store is an output of its own: queried, not sent on. */
static void test_aggregate_may_end_a_pipeline(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):window(s.tumbling('1m'))"
                                           ":aggregate{n = s.count()}\n"
                                           "s.stream('b'):aggregate{n = s.count()}\n");
    assert_int_equal(dag->op_count, 4);
    assert_int_equal(dag->ops[1].kind, SL_OP_AGGREGATE);
    assert_int_equal(dag->ops[3].kind, SL_OP_AGGREGATE);
    sl_dag_free(dag);
    expect_error(state, HEADER "s.stream('a'):window(s.tumbling('1m'))\n",
                 "script.lua:2: the windowed stream from :window() is never aggregated: follow "
                 "it with :aggregate{...}");
}

static void test_stream_never_used_is_an_error(void **state)
{
    expect_error(state,
                 HEADER "local a = s.stream('a')\na:to('b')\na:map(function(r) return r end)\n",
                 "script.lua:4: the stream from map is never used: end it with :to(topic) or "
                 ":route(exchange)");
}

static void test_unused_branch_output_is_allowed(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "local b = s.stream('a'):branch{x = function() return "
                                           "true end, y = function() return false end}\n"
                                           "b.x:to('b')\n");
    assert_int_equal(dag->op_count, 3);
    sl_dag_free(dag);
}

static void test_merge_of_nothing_is_an_error(void **state)
{
    expect_error(state, HEADER "s.merge():to('b')\n",
                 "script.lua:2: merge needs at least one stream");
}

static void test_merge_arguments_are_checked(void **state)
{
    expect_error(state, HEADER "local a = s.stream('a')\ns.merge(a, 'b'):to('c')\n",
                 "script.lua:3: merge argument 2 is not a stream, got 'b'");
    expect_error(state, HEADER "local a = s.stream('a')\ns.merge(a, a):to('c')\n",
                 "script.lua:3: merge argument 2 repeats argument 1");
    expect_error(state, HEADER "local a = s.stream('a')\ns.merge(a, a:to('x')):to('c')\n",
                 "script.lua:3: merge argument 2 is not a stream, got the sink of :to()");
}

static void test_topic_read_twice_is_an_error(void **state)
{
    expect_error(state, HEADER "s.stream('a'):to('b')\ns.stream('a'):to('c')\n",
                 "script.lua:3: topic 'a' is already read by the stream at script.lua:2: use "
                 "that one");
    expect_error(state, HEADER "s.table('a')\ns.stream('a'):to('c')\n",
                 "script.lua:3: topic 'a' is already read by the table at script.lua:2: use "
                 "that one");
}

static void test_sink_into_an_input_topic_is_a_cycle(void **state)
{
    expect_error(state, HEADER "s.stream('a'):map(function(r) return r end):to('a')\n",
                 "script.lua:2: to('a') writes a topic this pipeline reads (a cycle)");
}

static void test_partitions_without_create_is_an_error(void **state)
{
    expect_error(state, HEADER "s.stream('a'):to('b', {partitions = 3})\n",
                 "script.lua:2: option 'partitions' for to needs create = true");
}

static void test_lua_syntax_error_names_the_line(void **state)
{
    expect_error(state, HEADER "local x = = 1\n", "script.lua:2: unexpected symbol near '='");
}

static void test_lua_runtime_error_names_the_line(void **state)
{
    expect_error(state, HEADER "\nnope()\n",
                 "script.lua:3: attempt to call a nil value (global 'nope')");
    expect_error(state, "error({})\n", "script.lua: (error object is a table value)");
}

static void test_dsl_error_caught_by_the_script_still_fails(void **state)
{
    expect_error(state, HEADER "pcall(s.stream, 'a', {bad = 1})\ns.stream('b'):to('c')\n",
                 "script.lua: unknown option 'bad' for stream (expected partitions, format, "
                 "timestamp)");
}

static void test_same_script_gives_equal_dags_in_every_vm(void **state)
{
    sl_vm_t *other;
    assert_int_equal(sl_vm_new(NULL, &other), 0);
    sl_dag_t *a = compile(*state, design_example);
    sl_dag_t *b = compile(*state, design_example);
    sl_dag_t *c = compile(other, design_example);
    assert_true(sl_dag_equal(a, b));
    assert_true(sl_dag_equal(a, c));
    assert_int_not_equal(a->ops[1].fn, b->ops[1].fn); /* each DAG owns its functions */
    sl_dag_free(a);
    sl_dag_free(b);
    sl_dag_free(c);
    sl_vm_free(other);
}

static void test_different_scripts_give_unequal_dags(void **state)
{
    sl_dag_t *a = compile(*state, HEADER "s.stream('a'):to('b')\n");
    sl_dag_t *b = compile(*state, HEADER "s.stream('a'):to('c')\n");
    sl_dag_t *c = compile(*state, HEADER "s.stream('a', {partitions = 2}):to('b')\n");
    assert_false(sl_dag_equal(a, b));
    assert_false(sl_dag_equal(a, c));
    sl_dag_free(a);
    sl_dag_free(b);
    sl_dag_free(c);
}

static void test_freed_dags_release_their_lua_memory(void **state)
{
    sl_vm_t *vm = *state;
    size_t most = 0;
    for (int i = 0; i < 2000; i++) {
        sl_dag_free(compile(vm, design_example));
        if (i == 100)
            most = 4 * sl_vm_memory(vm);
    }
    assert_true(sl_vm_memory(vm) < most);
}

/* ---- windows and aggregates ------------------------------------------ */

/* As expect_error, for a message that starts with prefix. */
static void expect_error_start(void **state, const char *script, const char *prefix)
{
    sl_dag_t *dag = NULL;
    assert_int_equal(sl_vm_compile(*state, "script.lua", script, strlen(script), &dag),
                     SL_EINVALID);
    assert_null(dag);
    if (strncmp(sl_error_detail(), prefix, strlen(prefix)) != 0)
        fail_msg("error '%s' does not start with '%s'", sl_error_detail(), prefix);
}

static void expect_window(const sl_op_t *op, int kind, int64_t size, int64_t advance, int64_t gap,
                          int64_t grace)
{
    assert_int_equal(op->kind, SL_OP_AGGREGATE);
    assert_int_equal(op->window_kind, kind);
    assert_int_equal(op->window_size, size);
    assert_int_equal(op->window_advance, advance);
    assert_int_equal(op->window_gap, gap);
    assert_int_equal(op->window_grace, grace);
}

static void test_tumbling_window_compiles_to_aggregate_fields(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a')\n"
                                           "  :key_by('user')\n"
                                           "  :window(s.tumbling('1m', {grace = '10s'}))\n"
                                           "  :aggregate{n = s.count()}\n"
                                           "  :to('b')\n");
    assert_int_equal(dag->op_count, 4);
    expect_op(&dag->ops[2], SL_OP_AGGREGATE, 1, 0, "script.lua:5");
    expect_window(&dag->ops[2], SL_OP_WINDOW_TUMBLING, 60000, 60000, 0, 10000);
    assert_int_equal(dag->ops[2].fn, SL_NO_FUNCTION);
    assert_null(dag->ops[2].topic);
    expect_op(&dag->ops[3], SL_OP_TO, 2, 0, "script.lua:6");
    assert_string_equal(sl_op_kind_name(SL_OP_AGGREGATE), "aggregate");
    sl_dag_free(dag);
}

static void test_hopping_and_session_windows_compile_to_their_fields(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER
                            "local a = s.stream('a')\n"
                            "a:window(s.hopping('10m', '1m', {grace = 500})):aggregate{n = "
                            "s.count()}:to('b')\n"
                            "a:window(s.session('30s')):aggregate{n = s.count()}:to('c')\n"
                            "a:window(s.hopping(1000, 1000)):aggregate{n = s.count()}:to('d')\n");
    expect_window(&dag->ops[1], SL_OP_WINDOW_HOPPING, 600000, 60000, 0, 500);
    expect_window(&dag->ops[3], SL_OP_WINDOW_SESSION, 0, 0, 30000, 0);
    expect_window(&dag->ops[5], SL_OP_WINDOW_HOPPING, 1000, 1000, 0, 0);
    sl_dag_free(dag);
}

static void test_durations_are_text_or_integers_of_ms(void **state)
{
    static const struct {
        const char *duration;
        int64_t ms;
    } cases[] = {
        {"'500ms'", 500},
        {"'10s'", 10000},
        {"'1m'", 60000},
        {"'1h'", 3600000},
        {"'1d'", 86400000},
        {"'250'", 250},
        {"1500", 1500},
        {"2.0", 2},
        {"3 * 1000", 3000},
        {"'7d'", 604800000},
        {"10000000000000", SL_DURATION_MAX},
    };
    char script[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(script, sizeof script,
                 HEADER "s.stream('a'):window(s.session(%s)):aggregate{n = s.count()}:to('b')\n",
                 cases[i].duration);
        sl_dag_t *dag = compile(*state, script);
        assert_int_equal(dag->ops[1].window_gap, cases[i].ms);
        sl_dag_free(dag);
    }
}

static void test_aggregate_without_window_keeps_running_totals(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):aggregate{n = s.count()}:to('b')\n");
    const sl_op_t *op = &dag->ops[1];
    expect_op(op, SL_OP_AGGREGATE, 0, 0, "script.lua:2");
    expect_window(op, SL_OP_WINDOW_NONE, 0, 0, 0, 0);
    assert_int_equal(op->emit, SL_EMIT_ON_UPDATE);
    assert_int_equal(op->retention, 0);
    assert_null(op->late_topic);
    assert_string_equal(op->store, "aggregate1");
    sl_dag_free(dag);
}

static void expect_member(const sl_agg_spec_t *a, const char *name, int kind, const char *field,
                          int has_fn, const char *init)
{
    assert_string_equal(a->name, name);
    assert_int_equal(a->kind, kind);
    if (field)
        assert_string_equal(a->field, field);
    else
        assert_null(a->field);
    assert_int_equal(a->fn != SL_NO_FUNCTION, has_fn);
    if (init)
        assert_string_equal(a->init, init);
    else
        assert_null(a->init);
}

static const char every_member[] = HEADER
    "s.stream('a'):aggregate{\n"
    "  n = s.count(), total = s.sum('price'), low = s.min(function(r) return r.value.p end),\n"
    "  high = s.max('price'), mean = s.avg('price'), latest = s.last('price'),\n"
    "  users = s.distinct(function(r) return r.value.user end),\n"
    "  Kinds = s.reduce({seen = 0}, function(acc, r) acc.seen = acc.seen + 1 return acc end),\n"
    "  first = s.reduce(s.null, function(acc, r) return acc end),\n"
    "  ids = s.distinct('user'),\n"
    "}:to('b')\n";

static void test_every_member_kind_compiles_sorted_by_name(void **state)
{
    sl_dag_t *dag = compile(*state, every_member);
    const sl_op_t *op = &dag->ops[1];
    assert_int_equal(op->agg_count, 10);
    expect_member(&op->aggs[0], "Kinds", SL_OP_AGG_REDUCE, NULL, 1, "{\"seen\":0}");
    expect_member(&op->aggs[1], "first", SL_OP_AGG_REDUCE, NULL, 1, "null");
    expect_member(&op->aggs[2], "high", SL_OP_AGG_MAX, "price", 0, NULL);
    expect_member(&op->aggs[3], "ids", SL_OP_AGG_DISTINCT, "user", 0, NULL);
    expect_member(&op->aggs[4], "latest", SL_OP_AGG_LAST, "price", 0, NULL);
    expect_member(&op->aggs[5], "low", SL_OP_AGG_MIN, NULL, 1, NULL);
    expect_member(&op->aggs[6], "mean", SL_OP_AGG_AVG, "price", 0, NULL);
    expect_member(&op->aggs[7], "n", SL_OP_AGG_COUNT, NULL, 0, NULL);
    expect_member(&op->aggs[8], "total", SL_OP_AGG_SUM, "price", 0, NULL);
    expect_member(&op->aggs[9], "users", SL_OP_AGG_DISTINCT, NULL, 1, NULL);
    sl_dag_free(dag);
}

static void test_kinds_and_limits_equal_the_operators(void **state)
{
    (void)state;
    assert_int_equal(SL_OP_WINDOW_TUMBLING, SL_WINDOW_TUMBLING);
    assert_int_equal(SL_OP_WINDOW_HOPPING, SL_WINDOW_HOPPING);
    assert_int_equal(SL_OP_WINDOW_SESSION, SL_WINDOW_SESSION);
    assert_int_equal(SL_OP_AGG_COUNT, SL_AGG_COUNT);
    assert_int_equal(SL_OP_AGG_SUM, SL_AGG_SUM);
    assert_int_equal(SL_OP_AGG_MIN, SL_AGG_MIN);
    assert_int_equal(SL_OP_AGG_MAX, SL_AGG_MAX);
    assert_int_equal(SL_OP_AGG_AVG, SL_AGG_AVG);
    assert_int_equal(SL_OP_AGG_LAST, SL_AGG_LAST);
    assert_int_equal(SL_OP_AGG_DISTINCT, SL_AGG_DISTINCT);
    assert_int_equal(SL_OP_AGG_REDUCE, SL_AGG_REDUCE);
    assert_int_equal(SL_OP_WINDOW_MAX_OVERLAP, SL_WINDOW_MAX_OVERLAP);
    assert_int_equal(SL_OP_AGG_MEMBERS_MAX, SL_AGGSET_MAX);
    assert_int_equal(SL_OP_AGG_NAME_MAX, SL_AGG_NAME_MAX);
    assert_int_equal(SL_OP_AGG_FIELD_MAX, SL_AGG_SOURCE_MAX);
    assert_int_equal(SL_OP_REDUCE_INIT_MAX, SL_AGG_REDUCE_MAX);
}

static void test_reduce_initial_values_are_encoded_as_json(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "local f = function(acc, r) return acc end\n"
                                           "s.stream('a'):aggregate{a = s.reduce(0, f), b = "
                                           "s.reduce('x\"y', f), c = s.reduce({1, 2, 3}, f), d = "
                                           "s.reduce(true, f), e = s.reduce(2.5, f)}:to('b')\n");
    const sl_op_t *op = &dag->ops[1];
    assert_string_equal(op->aggs[0].init, "0");
    assert_string_equal(op->aggs[1].init, "\"x\\\"y\"");
    assert_string_equal(op->aggs[2].init, "[1,2,3]");
    assert_string_equal(op->aggs[3].init, "true");
    assert_string_equal(op->aggs[4].init, "2.5");
    sl_dag_free(dag);
}

/* Pushes the registry function ref of the compiled DAG's VM, checking it
 * is one. */
static void push_function(sl_vm_t *vm, int ref)
{
    assert_int_not_equal(ref, SL_NO_FUNCTION);
    assert_int_equal(lua_rawgeti(vm->L, LUA_REGISTRYINDEX, ref), LUA_TFUNCTION);
}

static void test_extractors_and_reducers_are_registered_functions(void **state)
{
    sl_vm_t *vm = *state;
    sl_dag_t *dag =
        compile(vm, HEADER "s.stream('a'):aggregate{\n"
                           "  top = s.max(function(r) return r * 2 end),\n"
                           "  acc = s.reduce(10, function(acc, r) return acc + r end),\n"
                           "}:to('b')\n");
    const sl_op_t *op = &dag->ops[1];
    lua_State *L = vm->L;
    push_function(vm, op->aggs[1].fn); /* top */
    lua_pushinteger(L, 21);
    assert_int_equal(lua_pcall(L, 1, 1, 0), LUA_OK);
    assert_int_equal(lua_tointeger(L, -1), 42);
    push_function(vm, op->aggs[0].fn); /* acc */
    lua_pushinteger(L, 10);
    lua_pushinteger(L, 5);
    assert_int_equal(lua_pcall(L, 2, 1, 0), LUA_OK);
    assert_int_equal(lua_tointeger(L, -1), 15);
    lua_settop(L, 0);
    sl_dag_free(dag);
}

static void test_aggregate_options_are_recorded(void **state)
{
    sl_dag_t *dag =
        compile(*state, HEADER "s.stream('a')\n"
                               "  :window(s.tumbling('1m'))\n"
                               "  :aggregate{n = s.count(), emit = 'on_close', "
                               "retention = '7d', late = 'late.a', store = 'Per-user_1'}\n"
                               "  :to('b')\n");
    const sl_op_t *op = &dag->ops[1];
    assert_int_equal(op->agg_count, 1);
    assert_int_equal(op->emit, SL_EMIT_ON_CLOSE);
    assert_int_equal(op->retention, 7 * 86400000LL);
    assert_string_equal(op->late_topic, "late.a");
    assert_string_equal(op->store, "Per-user_1");
    sl_dag_free(dag);
    dag = compile(*state, HEADER "s.stream('a'):window(s.tumbling('1m')):aggregate{n = s.count(), "
                                 "emit = 'on_update'}:to('b')\n");
    assert_int_equal(dag->ops[1].emit, SL_EMIT_ON_UPDATE);
    assert_int_equal(dag->ops[1].retention, SL_OP_RETENTION_DEFAULT);
    assert_null(dag->ops[1].late_topic);
    sl_dag_free(dag);
}

static void test_retention_is_at_least_what_a_window_stays_open(void **state)
{
    sl_dag_t *dag =
        compile(*state, HEADER "local a = s.stream('a')\n"
                               "a:window(s.tumbling('2d', {grace = '1h'})):aggregate{n = "
                               "s.count()}:to('b')\n"
                               "a:window(s.hopping('1h', '1m', {grace = '5m'})):aggregate{n = "
                               "s.count(), retention = 0}:to('c')\n"
                               "a:window(s.session('3d', {grace = 7})):aggregate{n = s.count(), "
                               "retention = '1d'}:to('d')\n"
                               "a:window(s.session('1s')):aggregate{n = s.count(), retention = "
                               "'1h'}:to('e')\n");
    assert_int_equal(dag->ops[1].retention, 2 * 86400000LL + 3600000);
    assert_int_equal(dag->ops[3].retention, 3600000 + 300000);
    assert_int_equal(dag->ops[5].retention, 3 * 86400000LL + 7);
    assert_int_equal(dag->ops[7].retention, 3600000);
    sl_dag_free(dag);
}

static void test_default_store_names_follow_op_ids(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "local a = s.stream('a')\n"
                                           "a:aggregate{n = s.count()}:to('b')\n"
                                           "a:window(s.tumbling(10)):aggregate{n = s.count(), "
                                           "store = 'aggregate1x'}:to('c')\n"
                                           "a:window(s.tumbling(10)):aggregate{n = s.count()}"
                                           ":to('d')\n");
    assert_string_equal(dag->ops[1].store, "aggregate1");
    assert_string_equal(dag->ops[3].store, "aggregate1x");
    assert_string_equal(dag->ops[5].store, "aggregate5");
    sl_dag_free(dag);
}

static void test_aggregate_results_are_a_stream_like_any_other(void **state)
{
    sl_dag_t *dag =
        compile(*state, HEADER "local w = s.stream('a'):window(s.tumbling('1m'))\n"
                               "local totals = w:aggregate{n = s.count()}\n"
                               "local parts = totals:filter(function(r) return true end)\n"
                               "  :branch{x = function(r) return true end}\n"
                               "s.merge(parts.x, w:aggregate{m = s.sum('v'), store = 'm'})\n"
                               "  :key_by('key'):map(function(r) return r end):to('b')\n");
    assert_int_equal(dag->op_count, 9);
    expect_op(&dag->ops[1], SL_OP_AGGREGATE, 0, 0, "script.lua:3");
    expect_op(&dag->ops[2], SL_OP_FILTER, 1, 0, "script.lua:4");
    expect_op(&dag->ops[4], SL_OP_AGGREGATE, 0, 0, "script.lua:6");
    assert_int_equal(dag->ops[5].kind, SL_OP_MERGE);
    assert_int_equal(dag->ops[5].inputs[1].op, 4);
    sl_dag_free(dag);
}

static void test_operator_after_window_is_an_error(void **state)
{
    expect_error(state,
                 HEADER "local w = s.stream('a'):window(s.tumbling('1m'))\n\n"
                        "w:map(function(r) return r end):to('b')\n",
                 "script.lua:4: 'map' after :window(): a windowed stream has only :aggregate{...}");
    expect_error(state, HEADER "s.stream('a'):window(s.tumbling('1m')):to('b')\n",
                 "script.lua:2: 'to' after :window(): a windowed stream has only :aggregate{...}");
    expect_error(state, HEADER "s.stream('a'):window(s.tumbling('1m')):window(s.tumbling('1m'))\n",
                 "script.lua:2: 'window' after :window(): a windowed stream has only "
                 ":aggregate{...}");
    expect_error(state,
                 HEADER "local a = s.stream('a')\nlocal w = a:window(s.tumbling(1))\n"
                        "a.filter(w, function() end):to('b')\n",
                 "script.lua:4: 'filter' after :window(): a windowed stream has only "
                 ":aggregate{...}");
}

static void test_window_never_aggregated_is_an_error(void **state)
{
    expect_error(state,
                 HEADER "local a = s.stream('a')\na:to('b')\n"
                        "local w = a\n  :window(s.session('1m'))\n",
                 "script.lua:5: the windowed stream from :window() is never aggregated: follow "
                 "it with :aggregate{...}");
}

static void test_window_arguments_are_checked(void **state)
{
    expect_error(state, HEADER "s.stream('a'):window('1m'):aggregate{n = s.count()}:to('b')\n",
                 "script.lua:2: window expects s.tumbling(...), s.hopping(...) or "
                 "s.session(...), got '1m'");
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling('1m'), {grace = '1s'})"
                        ":aggregate{n = s.count()}:to('b')\n",
                 "script.lua:2: window takes only the window: its options go in the spec, as in "
                 "s.tumbling('1m', {grace = '10s'})");
    expect_error(state,
                 HEADER "local w = s.stream('a'):window(s.tumbling('1m'))\ns.merge(w):to('b')\n",
                 "script.lua:3: merge argument 1 is a windowed stream: aggregate it first");
    expect_error(state, HEADER "s.stream('a'):window(s.count()):aggregate{n = s.count()}\n",
                 "script.lua:2: window expects s.tumbling(...), s.hopping(...) or "
                 "s.session(...), got a userdata");
}

static void test_window_specs_check_their_options(void **state)
{
    expect_error(state, HEADER "local w = s.tumbling('1m', {grase = '1s'})\n",
                 "script.lua:2: unknown option 'grase' for tumbling (expected grace)");
    expect_error(state, HEADER "local w = s.session('1m', '1s')\n",
                 "script.lua:2: options for session must be a table, got '1s'");
    expect_error(state, HEADER "local w = s.tumbling('1m', {}, 3)\n",
                 "script.lua:2: too many arguments: write s.tumbling(size, {grace = d})");
    expect_error(state, HEADER "local w = s.hopping('1m', '1s', {grace = -1})\n",
                 "script.lua:2: option 'grace' for hopping must be 0 to 10000000000000 ms, got -1");
    expect_error(state, HEADER "local w = s.hopping('1m', '1s', {grace = '1.5s'})\n",
                 "script.lua:2: option 'grace' for hopping: duration \"1.5s\": fractions are not "
                 "supported (write 1500ms, not 1.5s) (write an integer and a unit: 500ms, 10s, "
                 "5m, 1h, 1d; a bare integer is milliseconds)");
}

static void test_bad_durations_name_the_line(void **state)
{
    expect_error(state, HEADER "\nlocal w = s.tumbling('1x')\n",
                 "script.lua:3: tumbling size: duration \"1x\": unknown unit (write an integer "
                 "and a unit: 500ms, 10s, 5m, 1h, 1d; a bare integer is milliseconds)");
    expect_error(state,
                 HEADER "s.stream('a')\n  :key_by('k')\n  :window(s.hopping('1m',\n '1y'))\n",
                 "script.lua:4: hopping advance: duration \"1y\": unknown unit (write an integer "
                 "and a unit: 500ms, 10s, 5m, 1h, 1d; a bare integer is milliseconds)");
    expect_error(state, HEADER "local w = s.tumbling(true)\n",
                 "script.lua:2: tumbling size must be a duration such as '500ms', '10s', '1m', "
                 "'1h', '1d' or an integer of ms, got true");
    expect_error(state, HEADER "local w = s.tumbling()\n",
                 "script.lua:2: tumbling size must be a duration such as '500ms', '10s', '1m', "
                 "'1h', '1d' or an integer of ms, got nil");
    expect_error(state, HEADER "local w = s.session(1.5)\n",
                 "script.lua:2: session gap must be a duration such as '500ms', '10s', '1m', "
                 "'1h', '1d' or an integer of ms, got 1.5");
    expect_error(state, HEADER "local w = s.session(-5)\n",
                 "script.lua:2: session gap must be 0 to 10000000000000 ms, got -5");
    expect_error(state, HEADER "local w = s.session(10000000000001)\n",
                 "script.lua:2: session gap must be 0 to 10000000000000 ms, got 10000000000001");
    expect_error(state, HEADER "local w = s.tumbling('10s\\0')\n",
                 "script.lua:2: tumbling size: a duration cannot hold a NUL byte");
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling(1)):aggregate{n = s.count(), retention "
                        "= '1 d'}:to('b')\n",
                 "script.lua:2: option 'retention' for aggregate: duration \"1 d\": unknown unit "
                 "(write an integer and a unit: 500ms, 10s, 5m, 1h, 1d; a bare integer is "
                 "milliseconds)");
}

static void test_window_sizes_are_checked(void **state)
{
    expect_error(state, HEADER "local w = s.tumbling(0)\n",
                 "script.lua:2: tumbling size must be at least 1 ms, got 0");
    expect_error(state, HEADER "local w = s.session('0s')\n",
                 "script.lua:2: session gap must be at least 1 ms, got 0");
    expect_error(state, HEADER "local w = s.hopping('1m', 0)\n",
                 "script.lua:2: hopping advance must be at least 1 ms, got 0");
    expect_error(state, HEADER "local w = s.hopping('1m', '2m')\n",
                 "script.lua:2: hopping advance 120000 ms is over the size 60000 ms: times "
                 "between windows would belong to none");
    expect_error(state, HEADER "local w = s.hopping(1025, 1)\n",
                 "script.lua:2: hopping size 1025 ms / advance 1 ms puts each record in 1025 "
                 "windows (at most 1024)");
    expect_error(state, HEADER "local w = s.hopping('1m', 58)\n",
                 "script.lua:2: hopping size 60000 ms / advance 58 ms puts each record in 1035 "
                 "windows (at most 1024)");
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):window(s.hopping(1024, 1)):aggregate{n "
                                           "= s.count()}:to('b')\n");
    assert_int_equal(dag->ops[1].window_advance, 1);
    sl_dag_free(dag);
}

static void test_window_options_need_a_window(void **state)
{
    expect_error(state,
                 HEADER "s.stream('a'):aggregate{n = s.count(), emit = 'on_close'}:to('b')\n",
                 "script.lua:2: emit = 'on_close' needs a window: running totals never close "
                 "(put :window(...) before :aggregate)");
    expect_error(state, HEADER "s.stream('a'):aggregate{n = s.count(), retention = '1d'}:to('b')\n",
                 "script.lua:2: option 'retention' for aggregate needs a window: running totals "
                 "are kept, not expired");
    expect_error(state, HEADER "s.stream('a'):aggregate{n = s.count(), late = 'x'}:to('b')\n",
                 "script.lua:2: option 'late' for aggregate needs a window: without a window no "
                 "record is late");
}

static void test_aggregate_options_are_checked(void **state)
{
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling(1)):aggregate{n = s.count(), emit = "
                        "'always'}:to('b')\n",
                 "script.lua:2: option 'emit' for aggregate must be one of on_update, on_close, "
                 "got 'always'");
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling(1)):aggregate{n = s.count(), late = "
                        "'no space'}:to('b')\n",
                 "script.lua:2: option 'late' for aggregate: topic name 'no space' has ' ': use "
                 "only letters, digits, '.', '_', '-'");
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling(1)):aggregate{n = s.count(), late = "
                        "4}:to('b')\n",
                 "script.lua:2: option 'late' for aggregate expects a topic name, got 4");
    expect_error(state, HEADER "s.stream('a'):aggregate{n = s.count(), store = 'a.b'}:to('b')\n",
                 "script.lua:2: option 'store' for aggregate must be 1 to 64 letters, digits, "
                 "'_' or '-', got 'a.b'");
    expect_error(state, HEADER "s.stream('a'):aggregate{n = s.count(), store = ''}:to('b')\n",
                 "script.lua:2: option 'store' for aggregate must be 1 to 64 letters, digits, "
                 "'_' or '-', got ''");
    expect_error_start(state,
                       HEADER "s.stream('a'):aggregate{n = s.count(), store = string.rep('x', "
                              "65)}:to('b')\n",
                       "script.lua:2: option 'store' for aggregate must be 1 to 64 letters, "
                       "digits, '_' or '-', got 'xxxxxxxxxx");
    expect_error(state, HEADER "s.stream('a'):aggregate{emit = s.count(), n = s.count()}:to('b')\n",
                 "script.lua:2: 'emit' is an option of aggregate, not a member name: rename the "
                 "member");
    expect_error(state, HEADER "s.stream('a'):aggregate({n = s.count()}, {store = 'x'}):to('b')\n",
                 "script.lua:2: aggregate takes one table: its options go in it");
}

static void test_store_names_are_unique(void **state)
{
    expect_error(state,
                 HEADER "local a = s.stream('a')\n"
                        "a:aggregate{n = s.count(), store = 'x'}:to('b')\n"
                        "a:aggregate{n = s.count(), store = 'x'}:to('c')\n",
                 "script.lua:4: store 'x' is already used by the aggregate at script.lua:3");
    expect_error(state,
                 HEADER "local a = s.stream('a')\n"
                        "a:aggregate{n = s.count()}:to('b')\n"
                        "a:aggregate{n = s.count(), store = 'aggregate1'}:to('c')\n",
                 "script.lua:4: store 'aggregate1' is already used by the aggregate at "
                 "script.lua:3");
    expect_error(state,
                 HEADER "local a = s.stream('a')\n"
                        "a:aggregate{n = s.count(), store = 'aggregate3'}:to('b')\n"
                        "a:aggregate{n = s.count()}:to('c')\n",
                 "script.lua:4: store 'aggregate3' (this aggregate's default name) is already "
                 "used by the aggregate at script.lua:3: give this one store = \"...\"");
}

static void test_late_topic_read_by_the_pipeline_is_a_cycle(void **state)
{
    expect_error(state,
                 HEADER "s.stream('a'):window(s.tumbling(1)):aggregate{n = s.count(), late = "
                        "'a'}:to('b')\n",
                 "script.lua:2: late = 'a' writes a topic this pipeline reads (a cycle)");
}

static void test_aggregate_members_are_checked(void **state)
{
    expect_error(state, HEADER "s.stream('a'):aggregate(s.count()):to('b')\n",
                 "script.lua:2: aggregate expects a table of name = member, such as {n = "
                 "s.count()}, got a userdata");
    expect_error(state, HEADER "s.stream('a'):aggregate{}:to('b')\n",
                 "script.lua:2: aggregate needs at least one member, such as {n = s.count()}");
    expect_error(state, HEADER "s.stream('a'):aggregate{emit = 'on_update'}:to('b')\n",
                 "script.lua:2: aggregate needs at least one member, such as {n = s.count()}");
    expect_error(state, HEADER "s.stream('a'):aggregate{s.count()}:to('b')\n",
                 "script.lua:2: aggregate: member names must be strings, got the key 1");
    expect_error(state, HEADER "s.stream('a'):aggregate{b = s.count(), a = 3, c = 'x'}:to('b')\n",
                 "script.lua:2: aggregate member 'a' must be s.count(), s.sum(f), s.min(f), "
                 "s.max(f), s.avg(f), s.last(f), s.distinct(f) or s.reduce(init, fn), got 3");
    expect_error(state, HEADER "s.stream('a'):aggregate{n = s.count}:to('b')\n",
                 "script.lua:2: aggregate member 'n' must be s.count(), s.sum(f), s.min(f), "
                 "s.max(f), s.avg(f), s.last(f), s.distinct(f) or s.reduce(init, fn), got a "
                 "function");
    expect_error(state, HEADER "s.stream('a'):aggregate{[''] = s.count()}:to('b')\n",
                 "script.lua:2: aggregate: member names must be 1 to 255 bytes without NUL, "
                 "got ''");
    expect_error(state,
                 HEADER "local t = {}\nfor i = 1, 65 do t['m' .. i] = s.count() end\n"
                        "s.stream('a'):aggregate(t):to('b')\n",
                 "script.lua:4: aggregate has 65 members (at most 64)");
    expect_error_start(state,
                       HEADER "s.stream('a'):aggregate{[string.rep('x', 256)] = s.count()}"
                              ":to('b')\n",
                       "script.lua:2: aggregate: member names must be 1 to 255 bytes without "
                       "NUL, got 'xxxxxxxxxx");
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):aggregate{[string.rep('x', 255)] = "
                                           "s.count()}:to('b')\n");
    assert_int_equal(strlen(dag->ops[1].aggs[0].name), 255);
    sl_dag_free(dag);
}

static void test_member_arguments_are_checked(void **state)
{
    expect_error(state, HEADER "local m = s.count('x')\n",
                 "script.lua:2: count takes no arguments: it counts records");
    expect_error(state, HEADER "local m = s.sum()\n",
                 "script.lua:2: sum expects a field name or a function, got nil");
    expect_error(state, HEADER "local m = s.avg({})\n",
                 "script.lua:2: avg expects a field name or a function, got a table");
    expect_error(state, HEADER "local m = s.min('a', 'b')\n",
                 "script.lua:2: min takes one argument, a field name or a function");
    expect_error(state, HEADER "local m = s.distinct('')\n",
                 "script.lua:2: distinct: a field name must be 1 to 255 bytes without NUL, got 0 "
                 "bytes");
    expect_error(state, HEADER "local m = s.last('a\\0b')\n",
                 "script.lua:2: last: a field name must be 1 to 255 bytes without NUL, got 3 "
                 "bytes");
    expect_error(state, HEADER "local m = s.reduce(function(acc, r) return acc end)\n",
                 "script.lua:2: reduce expects a function(acc, r) after the initial value, got "
                 "nil");
    expect_error(state, HEADER "local m = s.reduce(nil, function(acc, r) return acc end)\n",
                 "script.lua:2: reduce needs an initial value: s.reduce(init, function(acc, r) "
                 "... end) (s.null for null)");
    expect_error(state, HEADER "local m = s.reduce({f = print}, function(acc, r) return acc end)\n",
                 "script.lua:2: reduce: the initial value cannot be written as JSON (Cannot "
                 "serialise function: type not supported)");
    expect_error(state, HEADER "local m = s.reduce(0, function() end, 1)\n",
                 "script.lua:2: too many arguments: write s.reduce(init, function(acc, r) ... "
                 "end)");
}

static void test_reduce_uses_the_json_module_as_created(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "local json = require('json')\n"
                                           "json.encode = function() return 'not json' end\n"
                                           "s.stream('a'):aggregate{r = s.reduce({1}, "
                                           "function(a) return a end)}:to('b')\n");
    assert_string_equal(dag->ops[1].aggs[0].init, "[1]");
    sl_dag_free(dag);
}

static void test_members_can_be_shared_between_aggregates(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "local total = s.sum(function(r) return 1 end)\n"
                                           "local a = s.stream('a')\n"
                                           "a:aggregate{t = total, u = total}:to('b')\n"
                                           "a:aggregate{t = total, store = 'x'}:to('c')\n");
    const sl_op_t *x = &dag->ops[1], *y = &dag->ops[3];
    assert_int_not_equal(x->aggs[0].fn, x->aggs[1].fn); /* each member owns a reference */
    assert_int_not_equal(x->aggs[0].fn, y->aggs[0].fn);
    sl_dag_free(dag);
}

static void test_lookalikes_of_dsl_values_are_refused(void **state)
{
    expect_error(state,
                 HEADER "local fake = setmetatable({}, {__metatable = 'sluice.window'})\n"
                        "s.stream('a'):window(fake):aggregate{n = s.count()}:to('b')\n",
                 "script.lua:3: window expects s.tumbling(...), s.hopping(...) or "
                 "s.session(...), got a table");
    expect_error(state,
                 HEADER "local fake = setmetatable({}, {__metatable = getmetatable(s.count())})\n"
                        "s.stream('a'):aggregate{n = fake}:to('b')\n",
                 "script.lua:3: aggregate member 'n' must be s.count(), s.sum(f), s.min(f), "
                 "s.max(f), s.avg(f), s.last(f), s.distinct(f) or s.reduce(init, fn), got a "
                 "table");
}

/* ---- tables and joins ------------------------------------------------- */

static void test_joins_compile_to_join_ops(void **state)
{
    sl_dag_t *dag =
        compile(*state, HEADER "local u = s.table('users', {store = 'people'})\n"
                               "local c = s.stream('clicks')\n"
                               "c:join(u, function(r, v) return v end):to('x')\n"
                               "c:join(s.stream('views'), function(a, b) return a end,\n"
                               "  {within = '5m', grace = '10s', type = 'outer'})\n"
                               "  :to('y')\n"
                               "u:join(s.table('scores'), function(a, b) return a end,\n"
                               "  {type = 'left'}):stream():to('z')\n");
    assert_int_equal(dag->op_count, 11);
    const sl_op_t *ops = dag->ops;
    expect_op(&ops[0], SL_OP_TABLE, -1, 0, "script.lua:2");
    assert_string_equal(ops[0].topic, "users");
    assert_string_equal(ops[0].store, "people");
    assert_int_equal(ops[2].kind, SL_OP_JOIN);
    assert_int_equal(ops[2].join_kind, SL_JOIN_STREAM_TABLE);
    assert_int_equal(ops[2].join_type, SL_JOIN_INNER);
    assert_int_equal(ops[2].input_count, 2);
    assert_int_equal(ops[2].inputs[0].op, 1);
    assert_int_equal(ops[2].inputs[1].op, 0);
    assert_null(ops[2].store);
    assert_int_not_equal(ops[2].fn, SL_NO_FUNCTION);
    const sl_op_t *ss = &ops[5];
    assert_int_equal(ss->join_kind, SL_JOIN_STREAM_STREAM);
    assert_int_equal(ss->join_type, SL_JOIN_OUTER);
    assert_int_equal(ss->join_within, 300000);
    assert_int_equal(ss->window_grace, 10000);
    assert_string_equal(ss->store, "join5");
    assert_int_equal(ss->inputs[0].op, 1);
    assert_int_equal(ss->inputs[1].op, 4);
    const sl_op_t *tt = &ops[8];
    assert_int_equal(tt->join_kind, SL_JOIN_TABLE_TABLE);
    assert_int_equal(tt->join_type, SL_JOIN_LEFT);
    assert_string_equal(tt->store, "join8");
    assert_string_equal(ops[7].store, "table7");
    expect_op(&ops[9], SL_OP_MERGE, 8, 0, "script.lua:9");
    sl_dag_free(dag);
}

static void test_a_table_alone_is_a_pipeline(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.table('users')\n");
    assert_int_equal(dag->op_count, 1);
    assert_int_equal(dag->ops[0].kind, SL_OP_TABLE);
    sl_dag_free(dag);
}

static void test_join_errors_name_the_line(void **state)
{
#define F "function(a, b) return a end"
    expect_error(state, HEADER "s.table('u'):map(" F ")\n",
                 "script.lua:2: 'map' on a table: a table has :join, :to and :stream (call "
                 ":stream() for its changes as a stream)");
    expect_error(state, HEADER "s.stream('c'):stream()\n",
                 "script.lua:2: 'stream' on a stream: only tables have :stream()");
    expect_error(state, HEADER "local t = s.table('u')\ns.stream('c').map(t, " F "):to('x')\n",
                 "script.lua:3: 'map' on a table: a table has :join, :to and :stream (call "
                 ":stream() for its changes as a stream)");
    expect_error(state, HEADER "s.table('u'):join(s.stream('c'), " F ")\n",
                 "script.lua:2: a table joins only a table: to enrich a stream with this table, "
                 "call stream:join(table, fn)");
    expect_error(state, HEADER "local c = s.stream('c')\nc:join(c, " F ", {within = 1}):to('x')\n",
                 "script.lua:3: a join of a stream with itself: join two different streams");
    expect_error(state, HEADER "s.stream('c'):join(s.stream('d'), " F "):to('x')\n",
                 "script.lua:2: a stream-stream join needs option 'within': how far apart in "
                 "event time two records may be and still join (e.g. within = \"5m\")");
    expect_error(state,
                 HEADER "s.stream('c'):join(s.table('u'), " F ", {type = 'outer'}):to('x')\n",
                 "script.lua:2: option 'type' for stream-table join must be one of inner, left, "
                 "got 'outer'");
    expect_error(state, HEADER "s.stream('c'):join(s.table('u'), " F ", {within = '1m'}):to('x')\n",
                 "script.lua:2: unknown option 'within' for stream-table join (expected type)");
    expect_error(state, HEADER "s.stream('c'):join(s.table('u'), 3):to('x')\n",
                 "script.lua:2: join expects a function (the joiner) as its second argument, "
                 "got 3");
    expect_error(state, HEADER "s.stream('c'):join(7, " F "):to('x')\n",
                 "script.lua:2: join expects a stream or a table to join with, got 7");
    expect_error(state, HEADER "local t = s.table('u')\ns.merge(t):to('x')\n",
                 "script.lua:3: merge argument 1 is a table: merge its :stream()");
    expect_error(state, HEADER "s.table('u', {store = 'x'})\ns.table('v', {store = 'x'})\n",
                 "script.lua:3: store 'x' is already used by the table at script.lua:2");
#undef F
}

static void test_join_sides_must_keep_their_keys(void **state)
{
#define F "function(a, b) return a end"
    expect_error(
        state, HEADER "s.stream('c'):map(" F "):filter(" F "):join(s.table('u'), " F "):to('x')\n",
        "script.lua:2: the left side of this join comes through the map at "
        "script.lua:2, which may change the key: a join needs both sides partitioned "
        "by the join key, so re-key that side with :key_by(...) after the map");
    expect_error(state,
                 HEADER "local v = s.stream('v'):flat_map(" F ")\n"
                        "s.stream('c'):join(v, " F ", {within = 1}):to('x')\n",
                 "script.lua:3: the right side of this join comes through the flat_map at "
                 "script.lua:2, which may change the key: a join needs both sides partitioned "
                 "by the join key, so re-key that side with :key_by(...) after the flat_map");
    sl_dag_t *dag = compile(*state, HEADER "s.stream('c'):map(" F "):key_by('user')\n"
                                           "  :join(s.table('u'), " F "):to('x')\n");
    assert_int_equal(dag->ops[4].kind, SL_OP_JOIN);
    sl_dag_free(dag);
#undef F
}

/* Compiles base with one change and expects a different DAG. */
static void expect_unequal(sl_vm_t *vm, const sl_dag_t *base, const char *script)
{
    sl_dag_t *other = compile(vm, script);
    if (sl_dag_equal(base, other))
        fail_msg("equal DAGs for: %s", script);
    sl_dag_free(other);
}

#define AGG_SCRIPT(window, members, options)                                                       \
    HEADER "s.stream('a'):window(" window "):aggregate{" members options "}:to('b')\n"

static void test_dag_equal_compares_windows_and_aggregates(void **state)
{
    sl_vm_t *vm = *state, *other;
    const char *base_script =
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'");
    sl_dag_t *base = compile(vm, base_script);
    assert_int_equal(sl_vm_new(NULL, &other), 0);
    sl_dag_t *same = compile(other, base_script);
    assert_true(sl_dag_equal(base, same));
    sl_dag_free(same);
    sl_vm_free(other);
    static const char *const changes[] = {
        AGG_SCRIPT("s.tumbling('1m', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('2m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '20s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 6})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l2'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l', retention = '2d'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l', store = 's'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('w'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum(function() end), r = s.reduce(0, function(a) "
                   "return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.avg('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), u = s.sum('v'), r = s.reduce(0, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})",
                   "n = s.count(), t = s.sum('v'), r = s.reduce(1, function(a) return a end)",
                   ", emit = 'on_close', late = 'l'"),
        AGG_SCRIPT("s.hopping('1m', '10s', {grace = 5})", "n = s.count(), t = s.sum('v')",
                   ", emit = 'on_close', late = 'l'"),
        HEADER "s.stream('a'):aggregate{n = s.count(), t = s.sum('v'), r = s.reduce(0, "
               "function(a) return a end)}:to('b')\n",
    };
    for (size_t i = 0; i < sizeof changes / sizeof *changes; i++)
        expect_unequal(vm, base, changes[i]);
    sl_dag_free(base);
}

static void test_freed_aggregate_dags_release_their_lua_memory(void **state)
{
    sl_vm_t *vm = *state;
    size_t most = 0;
    for (int i = 0; i < 2000; i++) {
        sl_dag_free(compile(vm, every_member));
        if (i == 100)
            most = 4 * sl_vm_memory(vm);
    }
    assert_true(sl_vm_memory(vm) < most);
}

/* ---- work queues ----------------------------------------------------------- */

static const char route_example[] =
    HEADER "s.pipeline{processing = 'exactly_once'}\n"
           "local e = s.exchange('tasks', 'topic')\n"
           "local q = s.queue('fraud', {maxpriority = 9, ttl = '1h', maxlen = 1000,\n"
           "                            overflow = 'reject-publish', maxdeliveries = 3,\n"
           "                            deadletter = 'fraud-dead', lease = '5s'})\n"
           "s.queue('fraud-dead')\n"
           "s.bind(e, q, 'fraud.#')\n"
           "s.exchange('by-headers', 'headers')\n"
           "s.bind('by-headers', 'fraud', nil, {['x-match'] = 'any', b = 2, a = 'x'})\n"
           "local pay = s.stream('payments')\n"
           "pay:route(e, {key = function(r) return 'fraud.' .. r.value.region end,\n"
           "              priority = function(r) return 1 end,\n"
           "              headers = function(r) return {user = r.value.user} end})\n"
           "pay:route('', {key = 'queue'})\n"
           "pay:route('by-headers')\n";

static void test_declarations_are_recorded_in_script_order(void **state)
{
    sl_dag_t *dag = compile(*state, route_example);
    assert_int_equal(dag->declaration_count, 6);
    const sl_declaration_t *d = dag->declarations;
    assert_int_equal(d[0].kind, SL_DECLARE_EXCHANGE);
    assert_string_equal(d[0].name, "tasks");
    assert_int_equal(d[0].exchange_type, SL_EXCHANGE_TOPIC);
    assert_string_equal(d[0].where, "script.lua:3");
    assert_int_equal(d[1].kind, SL_DECLARE_QUEUE);
    assert_string_equal(d[1].name, "fraud");
    assert_string_equal(d[1].where, "script.lua:4");
    const sl_queue_options_t *o = &d[1].queue_options;
    assert_int_equal(o->max_priority, 9);
    assert_int_equal(o->ttl_ms, 3600000);
    assert_int_equal(o->max_length, 1000);
    assert_int_equal(o->overflow, SL_OVERFLOW_REJECT_PUBLISH);
    assert_int_equal(o->max_deliveries, 3);
    assert_string_equal(o->dead_letter, "fraud-dead");
    assert_int_equal(o->lease_ms, 5000);
    sl_queue_options_t defaults;
    sl_queue_options_default(&defaults);
    assert_int_equal(o->segment_bytes, defaults.segment_bytes);
    o = &d[2].queue_options; /* every default */
    assert_int_equal(o->max_priority, 0);
    assert_int_equal(o->ttl_ms, -1);
    assert_int_equal(o->max_length, -1);
    assert_int_equal(o->overflow, SL_OVERFLOW_DROP_HEAD);
    assert_int_equal(o->max_deliveries, 0);
    assert_string_equal(o->dead_letter, "");
    assert_int_equal(o->lease_ms, defaults.lease_ms);
    assert_int_equal(d[3].kind, SL_DECLARE_BIND);
    assert_string_equal(d[3].name, "tasks");
    assert_string_equal(d[3].queue, "fraud");
    assert_string_equal(d[3].pattern, "fraud.#");
    assert_int_equal(d[3].pattern_len, 7);
    assert_int_equal(d[3].arg_count, 0);
    assert_int_equal(d[5].kind, SL_DECLARE_BIND);
    assert_string_equal(d[5].pattern, "");
    assert_int_equal(d[5].arg_count, 3); /* sorted by name; integers as decimal text */
    assert_string_equal((const char *)d[5].args[0].name, "a");
    assert_string_equal((const char *)d[5].args[0].value, "x");
    assert_string_equal((const char *)d[5].args[1].name, "b");
    assert_string_equal((const char *)d[5].args[1].value, "2");
    assert_int_equal(d[5].args[1].value_len, 1);
    assert_string_equal((const char *)d[5].args[2].name, "x-match");
    assert_string_equal((const char *)d[5].args[2].value, "any");
    sl_dag_free(dag);
}

static void test_route_compiles_to_a_sink_op(void **state)
{
    sl_dag_t *dag = compile(*state, route_example);
    assert_int_equal(dag->op_count, 4);
    const sl_op_t *a = &dag->ops[1], *b = &dag->ops[2], *c = &dag->ops[3];
    expect_op(a, SL_OP_ROUTE, 0, 0, "script.lua:12");
    assert_string_equal(sl_op_kind_name(SL_OP_ROUTE), "route");
    assert_string_equal(a->exchange, "tasks");
    assert_null(a->route_key_field);
    assert_int_not_equal(a->route_key_fn, SL_NO_FUNCTION);
    assert_int_not_equal(a->route_priority_fn, SL_NO_FUNCTION);
    assert_int_not_equal(a->route_headers_fn, SL_NO_FUNCTION);
    assert_int_equal(a->fn, SL_NO_FUNCTION);
    expect_op(b, SL_OP_ROUTE, 0, 0, "script.lua:15");
    assert_string_equal(b->exchange, "");
    assert_string_equal(b->route_key_field, "queue");
    assert_int_equal(b->route_key_fn, SL_NO_FUNCTION);
    assert_int_equal(b->route_priority_fn, SL_NO_FUNCTION);
    assert_int_equal(b->route_headers_fn, SL_NO_FUNCTION);
    assert_string_equal(c->exchange, "by-headers");
    assert_null(c->route_key_field);
    assert_int_equal(c->route_key_fn, SL_NO_FUNCTION);
    /* other ops have no routing functions */
    assert_int_equal(dag->ops[0].route_key_fn, SL_NO_FUNCTION);
    assert_int_equal(dag->ops[0].route_priority_fn, SL_NO_FUNCTION);
    assert_int_equal(dag->ops[0].route_headers_fn, SL_NO_FUNCTION);
    assert_null(dag->ops[0].exchange);
    sl_dag_free(dag);
}

static void test_route_is_a_sink(void **state)
{
    sl_dag_t *dag = compile(*state, HEADER "s.stream('a'):route('e')\n");
    assert_int_equal(dag->op_count, 2);
    sl_dag_free(dag);
    expect_error(state, HEADER "local out = s.stream('a'):route('e')\nout:map(function() end)\n",
                 "script.lua:3: 'map' after :route(): a sink ends its stream");
    expect_error(state, HEADER "s.stream('a'):route('e'):to('b')\n",
                 "script.lua:2: 'to' after :route(): a sink ends its stream");
    expect_error(state, HEADER "local a = s.stream('a')\ns.merge(a, a:route('e')):to('c')\n",
                 "script.lua:3: merge argument 2 is not a stream, got the sink of :route()");
    expect_error(state, HEADER "s.exchange('e', 'direct')\n",
                 "script.lua: the pipeline has no sink: end a stream with :to(topic), "
                 ":route(exchange) or :aggregate{...}");
    expect_error(state, HEADER "s.stream('a'):window(s.tumbling('1m')):route('e')\n",
                 "script.lua:2: 'route' after :window(): a windowed stream has only "
                 ":aggregate{...}");
}

static void test_route_arguments_are_checked(void **state)
{
    expect_error(state, HEADER "s.stream('a'):route()\n",
                 "script.lua:2: route expects an exchange name ('' for the default exchange), "
                 "got nil");
    expect_error(state, HEADER "s.stream('a'):route('bad name')\n",
                 "script.lua:2: route: exchange name 'bad name' may only hold [A-Za-z0-9._-]");
    expect_error(state, HEADER "s.stream('a'):route('e', {key = 1})\n",
                 "script.lua:2: option 'key' for route must be a field name or a function, got "
                 "1");
    expect_error(state, HEADER "s.stream('a'):route('e', {key = ''})\n",
                 "script.lua:2: route: a key field name must be 1 to 255 bytes without NUL, got "
                 "0 bytes");
    expect_error(state, HEADER "s.stream('a'):route('e', {priority = 5})\n",
                 "script.lua:2: option 'priority' for route must be a function, got 5");
    expect_error(state, HEADER "s.stream('a'):route('e', {headers = {}})\n",
                 "script.lua:2: option 'headers' for route must be a function, got a table");
    expect_error(state, HEADER "s.stream('a'):route('e', {keys = 'k'})\n",
                 "script.lua:2: unknown option 'keys' for route (expected headers, key, "
                 "priority)");
    expect_error(state, HEADER "s.stream('a'):route('e', {}, 3)\n",
                 "script.lua:2: too many arguments: write stream:route(exchange, {key =, "
                 "priority =, headers =})");
}

static void test_exchange_declarations_are_checked(void **state)
{
    expect_error(state, HEADER "s.exchange('e')\n",
                 "script.lua:2: exchange 'e' needs a type: 'direct', 'topic', 'fanout' or "
                 "'headers', got nil");
    expect_error(state, HEADER "s.exchange('e', 'fan')\n",
                 "script.lua:2: exchange 'e': exchange type must be direct, topic, fanout or "
                 "headers (not 'fan')");
    expect_error(state, HEADER "s.exchange(7, 'topic')\n",
                 "script.lua:2: exchange expects an exchange name, got 7");
    expect_error(state, HEADER "s.exchange('', 'topic')\n",
                 "script.lua:2: exchange: exchange name must be 1 to 200 characters");
    expect_error(state, HEADER "s.exchange('e', 'topic')\n\ns.exchange('e', 'topic')\n",
                 "script.lua:4: exchange 'e' is already declared at script.lua:2");
    expect_error(state, HEADER "s.exchange('e', 'topic', {})\n",
                 "script.lua:2: too many arguments: write s.exchange(name, 'direct' | 'topic' | "
                 "'fanout' | 'headers')");
}

static void test_queue_declarations_are_checked(void **state)
{
    expect_error(state, HEADER "s.queue('q', {maxpriority = 10})\n",
                 "script.lua:2: option 'maxpriority' for queue must be an integer 0 to 9, got "
                 "10");
    expect_error(state, HEADER "s.queue('q', {maxlen = -1})\n",
                 "script.lua:2: option 'maxlen' for queue must be an integer 0 to "
                 "9223372036854775807, got -1");
    expect_error(state, HEADER "s.queue('q', {maxdeliveries = 0})\n",
                 "script.lua:2: option 'maxdeliveries' for queue must be an integer 1 to "
                 "2147483647, got 0");
    expect_error(state, HEADER "s.queue('q', {ttl = '1y'})\n",
                 "script.lua:2: option 'ttl' for queue: duration \"1y\": unknown unit (write an "
                 "integer and a unit: 500ms, 10s, 5m, 1h, 1d; a bare integer is "
                 "milliseconds)");
    expect_error(state, HEADER "s.queue('q', {lease = 0})\n",
                 "script.lua:2: option 'lease' for queue must be at least 1 ms, got 0");
    expect_error(state, HEADER "s.queue('q', {overflow = 'drop'})\n",
                 "script.lua:2: option 'overflow' for queue must be one of drop-head, "
                 "reject-publish, got 'drop'");
    expect_error(state, HEADER "s.queue('q', {deadletter = 'q'})\n",
                 "script.lua:2: queue 'q' cannot be its own dead-letter queue");
    expect_error(state, HEADER "s.queue('q', {deadletter = 'a b'})\n",
                 "script.lua:2: option 'deadletter' for queue: queue name 'a b' may only hold "
                 "[A-Za-z0-9._-]");
    expect_error(state, HEADER "s.queue('q', {max_priority = 1})\n",
                 "script.lua:2: unknown option 'max_priority' for queue (expected deadletter, "
                 "lease, maxdeliveries, maxlen, maxpriority, overflow, ttl)");
    expect_error(state, HEADER "s.queue('q')\ns.queue('q', {maxlen = 1})\n",
                 "script.lua:3: queue 'q' is already declared at script.lua:2");
}

static void test_binding_declarations_are_checked(void **state)
{
    char long_pattern[300];
    expect_error(state, HEADER "s.bind('e')\n", "script.lua:2: bind expects a queue name, got nil");
    expect_error(state, HEADER "s.bind('e', 'q', 5)\n",
                 "script.lua:2: bind: the pattern must be a string, got 5");
    snprintf(long_pattern, sizeof long_pattern, HEADER "s.bind('e', 'q', string.rep('a', 256))\n");
    expect_error(state, long_pattern, "script.lua:2: bind: the pattern is 256 bytes (at most 255)");
    expect_error(state, HEADER "s.bind('e', 'q', '', 'x')\n",
                 "script.lua:2: bind: arguments must be a table of name = value, got 'x'");
    expect_error(state, HEADER "s.bind('e', 'q', '', {[1] = 'x'})\n",
                 "script.lua:2: bind: argument names must be strings, got 1");
    expect_error(state, HEADER "s.bind('e', 'q', '', {a = true})\n",
                 "script.lua:2: bind: argument values must be strings or integers, got true");
    expect_error(state,
                 HEADER "s.exchange('h', 'headers')\ns.bind('h', 'q', '', {['x-match'] = "
                        "'some'})\n",
                 "script.lua:3: bind to headers exchange 'h': x-match must be all, any, "
                 "all-with-x or any-with-x");
    expect_error(state, HEADER "s.bind('e', 'q', 'a.*')\ns.bind('e', 'q', 'a.*')\n",
                 "script.lua:3: this binding of 'q' to 'e' is already declared at script.lua:2");
    /* the same queue with another pattern, or arguments, is another binding */
    sl_dag_t *dag = compile(*state, HEADER "s.bind('e', 'q', 'a.*')\ns.bind('e', 'q', 'b.*')\n"
                                           "s.bind('e', 'q', 'a.*', {x = '1'})\n"
                                           "s.stream('a'):route('e')\n");
    assert_int_equal(dag->declaration_count, 3);
    sl_dag_free(dag);
}

static void test_declarations_return_their_names(void **state)
{
    expect_error(state,
                 HEADER "s.stream('a'):route('e')\n"
                        "error(s.exchange('x', 'direct') .. ' and ' .. s.queue('y'))\n",
                 "script.lua:3: x and y");
}

static void test_dag_equal_compares_routes_and_declarations(void **state)
{
    sl_vm_t *vm = *state, *other;
    sl_dag_t *base = compile(vm, route_example);
    assert_int_equal(sl_vm_new(NULL, &other), 0);
    sl_dag_t *same = compile(other, route_example);
    assert_true(sl_dag_equal(base, same));
    sl_dag_free(same);
    sl_vm_free(other);
    static const char *const from[] = {
        "'tasks', 'topic'",
        "maxpriority = 9",
        "ttl = '1h'",
        "maxlen = 1000",
        "'reject-publish'",
        "maxdeliveries = 3",
        "'fraud-dead'",
        "lease = '5s'",
        "'fraud.#'",
        "b = 2",
        "'x-match'",
        "pay:route(e, {key = function(r)",
        "priority = function(r) return 1 end,",
        "{key = 'queue'}",
        "pay:route('by-headers')\n",
    };
    static const char *const to[] = {
        "'tasks', 'direct'",
        "maxpriority = 8",
        "ttl = '2h'",
        "maxlen = 1001",
        "'drop-head'",
        "maxdeliveries = 4",
        "'fraud-other'",
        "lease = '6s'",
        "'fraud.*'",
        "b = 3",
        "'y-match'",
        "pay:route('tasks2', {key = function(r)",
        "",
        "{key = 'queue2'}",
        "pay:route('by-headers', {key = 'k'})\n",
    };
    for (size_t i = 0; i < sizeof from / sizeof *from; i++) {
        char script[2048];
        const char *at = strstr(route_example, from[i]);
        assert_non_null(at);
        snprintf(script, sizeof script, "%.*s%s%s", (int)(at - route_example), route_example, to[i],
                 at + strlen(from[i]));
        expect_unequal(vm, base, script);
    }
    sl_dag_free(base);
}

static void test_freed_route_dags_release_their_lua_memory(void **state)
{
    sl_vm_t *vm = *state;
    size_t most = 0;
    for (int i = 0; i < 2000; i++) {
        sl_dag_free(compile(vm, route_example));
        if (i == 100)
            most = 4 * sl_vm_memory(vm);
    }
    assert_true(sl_vm_memory(vm) < most);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_design_example_compiles_to_expected_ops),
        T(test_branch_names_are_sorted_and_merge_reads_their_ports),
        T(test_defaults_when_the_script_sets_no_options),
        T(test_stream_format_timestamp_and_key_field_are_recorded),
        T(test_unknown_stream_option_names_the_line),
        T(test_unknown_option_reported_is_the_smallest_name),
        T(test_unknown_pipeline_option_is_an_error),
        T(test_bad_on_error_is_an_error),
        T(test_commit_interval_is_recorded_and_checked),
        T(test_flush_interval_is_recorded_and_checked),
        T(test_processing_mode_is_recorded),
        T(test_pipeline_options_twice_is_an_error),
        T(test_bad_pipeline_name_is_an_error),
        T(test_wrong_option_type_is_an_error),
        T(test_options_must_be_a_table),
        T(test_operator_argument_types_are_checked),
        T(test_method_called_with_a_dot_is_an_error),
        T(test_topic_names_are_checked),
        T(test_operator_after_a_sink_names_the_line),
        T(test_unknown_operator_is_an_error),
        T(test_joins_compile_to_join_ops),
        T(test_a_table_alone_is_a_pipeline),
        T(test_join_errors_name_the_line),
        T(test_join_sides_must_keep_their_keys),
        T(test_script_without_a_sink_is_an_error),
        T(test_aggregate_may_end_a_pipeline),
        T(test_stream_never_used_is_an_error),
        T(test_unused_branch_output_is_allowed),
        T(test_merge_of_nothing_is_an_error),
        T(test_merge_arguments_are_checked),
        T(test_topic_read_twice_is_an_error),
        T(test_sink_into_an_input_topic_is_a_cycle),
        T(test_partitions_without_create_is_an_error),
        T(test_lua_syntax_error_names_the_line),
        T(test_lua_runtime_error_names_the_line),
        T(test_dsl_error_caught_by_the_script_still_fails),
        T(test_same_script_gives_equal_dags_in_every_vm),
        T(test_different_scripts_give_unequal_dags),
        T(test_freed_dags_release_their_lua_memory),
        T(test_tumbling_window_compiles_to_aggregate_fields),
        T(test_hopping_and_session_windows_compile_to_their_fields),
        T(test_durations_are_text_or_integers_of_ms),
        T(test_aggregate_without_window_keeps_running_totals),
        T(test_every_member_kind_compiles_sorted_by_name),
        T(test_kinds_and_limits_equal_the_operators),
        T(test_reduce_initial_values_are_encoded_as_json),
        T(test_extractors_and_reducers_are_registered_functions),
        T(test_aggregate_options_are_recorded),
        T(test_retention_is_at_least_what_a_window_stays_open),
        T(test_default_store_names_follow_op_ids),
        T(test_aggregate_results_are_a_stream_like_any_other),
        T(test_operator_after_window_is_an_error),
        T(test_window_never_aggregated_is_an_error),
        T(test_window_arguments_are_checked),
        T(test_window_specs_check_their_options),
        T(test_bad_durations_name_the_line),
        T(test_window_sizes_are_checked),
        T(test_window_options_need_a_window),
        T(test_aggregate_options_are_checked),
        T(test_store_names_are_unique),
        T(test_late_topic_read_by_the_pipeline_is_a_cycle),
        T(test_aggregate_members_are_checked),
        T(test_member_arguments_are_checked),
        T(test_reduce_uses_the_json_module_as_created),
        T(test_members_can_be_shared_between_aggregates),
        T(test_lookalikes_of_dsl_values_are_refused),
        T(test_dag_equal_compares_windows_and_aggregates),
        T(test_freed_aggregate_dags_release_their_lua_memory),
        T(test_declarations_are_recorded_in_script_order),
        T(test_route_compiles_to_a_sink_op),
        T(test_route_is_a_sink),
        T(test_route_arguments_are_checked),
        T(test_exchange_declarations_are_checked),
        T(test_queue_declarations_are_checked),
        T(test_binding_declarations_are_checked),
        T(test_declarations_return_their_names),
        T(test_dag_equal_compares_routes_and_declarations),
        T(test_freed_route_dags_release_their_lua_memory),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

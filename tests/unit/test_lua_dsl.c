/*
 * test_lua_dsl.c - the pipeline DSL: scripts compile into the expected ops,
 * every validation error names its file:line, DAGs are deterministic, and
 * DAGs release their functions.
 */
#include "testutil.h"

#include "lua/lua.h"

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
    assert_int_equal(dag->processing, SL_PROCESSING_AT_LEAST_ONCE);
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
                 "processing)");
}

static void test_bad_on_error_is_an_error(void **state)
{
    expect_error(state, HEADER "s.pipeline{on_error = 'ignore'}\n",
                 "script.lua:2: option 'on_error' for pipeline must be one of stop, skip, "
                 "dead_letter, got 'ignore'");
}

static void test_exactly_once_is_refused_until_state_exists(void **state)
{
    expect_error(state, HEADER "s.pipeline{processing = 'exactly_once'}\n",
                 "script.lua:2: processing 'exactly_once' is not available yet: pipelines run "
                 "at_least_once until pipeline state exists");
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
    expect_error(state, HEADER "s.stream('a'):window(1):to('b')\n",
                 "script.lua:2: streams have no operator 'window' (they have filter, map, "
                 "flat_map, key_by, branch, peek, to)");
    expect_error(state, HEADER "s.tumbling('1m')\n",
                 "script.lua:2: sluice has no 'tumbling' (it has pipeline, stream, merge, null)");
}

static void test_script_without_a_sink_is_an_error(void **state)
{
    expect_error(state, HEADER,
                 "script.lua: the pipeline has no sink: end a stream with :to(topic)");
}

static void test_stream_never_used_is_an_error(void **state)
{
    expect_error(state,
                 HEADER "local a = s.stream('a')\na:to('b')\na:map(function(r) return r end)\n",
                 "script.lua:4: the stream from map is never used: end it with :to(topic)");
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
                 "script.lua:3: stream 'a' is already declared at script.lua:2: use that stream");
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
        T(test_exactly_once_is_refused_until_state_exists),
        T(test_pipeline_options_twice_is_an_error),
        T(test_bad_pipeline_name_is_an_error),
        T(test_wrong_option_type_is_an_error),
        T(test_options_must_be_a_table),
        T(test_operator_argument_types_are_checked),
        T(test_method_called_with_a_dot_is_an_error),
        T(test_topic_names_are_checked),
        T(test_operator_after_a_sink_names_the_line),
        T(test_unknown_operator_is_an_error),
        T(test_script_without_a_sink_is_an_error),
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
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

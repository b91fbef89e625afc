/*
 * test_projection.c - which fields of r.value the ops after a key_by read
 * (lua/compile.c, from native.c's reading of the functions), the records
 * a key_by writes with only those (lua/project.c), and the check that a
 * reader finds every field it reads in them.
 */
#include "testutil.h"

#include "lua/lua.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER "local s = require('sluice')\n"

typedef struct fixture {
    sl_vm_t *vm;
    sl_dag_t *dag;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_int_equal(sl_vm_new(NULL, &f->vm), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    sl_dag_free(f->dag);
    sl_vm_free(f->vm);
    free(f);
    return 0;
}

/* Compiles HEADER + script; its n-th op of kind. */
static const sl_op_t *compile_op(fixture_t *f, const char *script, sl_op_kind_t kind, int n)
{
    char source[4096];
    sl_dag_free(f->dag);
    f->dag = NULL;
    snprintf(source, sizeof source, HEADER "%s", script);
    if (sl_vm_compile(f->vm, "p.lua", source, strlen(source), &f->dag) != 0)
        fail_msg("%s", sl_error_detail());
    for (int i = 0; i < f->dag->op_count; i++)
        if (f->dag->ops[i].kind == kind && n-- == 0)
            return &f->dag->ops[i];
    fail_msg("no %s op", sl_op_kind_name(kind));
    return NULL;
}

/* The keep of the script's key_by: "a,b," or NULL. */
static void expect_keep(fixture_t *f, const char *after_key_by, const char *want)
{
    char script[2048];
    snprintf(script, sizeof script, "local k = s.stream('in'):key_by('user')\n%s\n", after_key_by);
    const sl_op_t *op = compile_op(f, script, SL_OP_KEY_BY, 0);
    if (!want && op->keep)
        fail_msg("%s: keeps '%s', expected the whole value", after_key_by, op->keep);
    if (want && (!op->keep || strcmp(op->keep, want) != 0))
        fail_msg("%s: keeps %s, expected '%s'", after_key_by, op->keep ? op->keep : "all", want);
}

static void test_a_join_after_a_key_by_keeps_what_its_function_reads(void **state)
{
    fixture_t *f = *state;
    const sl_op_t *join =
        compile_op(f,
                   "local auctions = s.stream('auction'):key_by('seller')\n"
                   "s.stream('person'):join(auctions, function(p, a)\n"
                   "  return {id = p.value.id, name = p.value.name, reserve = a.value.reserve,\n"
                   "          person_ts = p.ts, auction_ts = a.ts, seller = a.key}\n"
                   "end, {within = '10s'}):to('out')\n",
                   SL_OP_JOIN, 0);
    assert_string_equal(join->join_reads[0], "id,name,");
    assert_string_equal(join->join_reads[1], "reserve,");
    assert_string_equal(f->dag->ops[join->inputs[1].op].keep, "reserve,");
}

static void test_the_fields_of_every_reader_are_kept(void **state)
{
    fixture_t *f = *state;
    /* a filter passes its records on: its fields and its successors' */
    expect_keep(f,
                "k:filter(function(r) return r.value.kind == 'buy' end)\n"
                "  :window(s.tumbling('1m')):aggregate{n = s.count(), total = s.sum('price'),\n"
                "    top = s.max('price')}\n",
                "kind,price,");
    /* two readers of the key_by, through a merge */
    expect_keep(f,
                "local a = k:filter(function(r) return r.value.z > 1 end)\n"
                "local b = k:map(function(r) return {a = r.value.a, k = r.key, t = r.ts} end)\n"
                "s.merge(a, b):aggregate{n = s.count()}\n",
                "a,z,");
    /* a count reads nothing */
    expect_keep(f, "k:aggregate{n = s.count()}\n", "");
    /* a local holding the value, both arms of a condition, nested fields */
    expect_keep(f,
                "k:map(function(r)\n"
                "  local v = r.value\n"
                "  if v.x > 1 then return {a = v.a.deep} else return {b = v.b, c = v.c} end\n"
                "end):to('out')\n",
                "a,b,c,x,");
    expect_keep(
        f, "k:filter(function(r) return r.value.n and r.value.n > 2 end):aggregate{n = s.count()}",
        "n,");
}

static void test_a_reader_that_may_see_the_whole_value_keeps_it(void **state)
{
    fixture_t *f = *state;
    static const char *const cases[] = {
        "k:to('out')",
        "k:filter(function(r) return r.value.x end):to('out')",
        "k:map(function(r) return {v = r.value} end):to('out')",
        "k:map(function(r) return r.value end):to('out')",
        "k:map(function(r) return {n = #r.value} end):to('out')",
        "k:map(function(r) return {h = r.headers} end):to('out')",
        "k:map(function(r) return {u = string.upper(r.value.u)} end):to('out')",
        "k:map(function(r) return {v = r.value['a,b']} end):to('out')",
        "k:map(function(r) return {v = r.value[''] } end):to('out')",
        "k:map(function(r) return {same = r.value == r.value} end):to('out')",
        "k:flat_map(function(r) return {r} end):to('out')",
        "k:peek(function(r) end):aggregate{n = s.count()}",
        "k:aggregate{total = s.sum(function(r) return r.value.p end)}",
        "k:aggregate{n = s.count()}\nk:to('copy')",
        "k:key_by('other'):aggregate{n = s.count()}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_keep(f, cases[i], NULL);
}

/* A map summing fields f1..fn: the names it reads, or too many to list. */
static void expect_sum_of_fields(fixture_t *f, int n, int kept)
{
    char script[4096], want[1024];
    int at = snprintf(script, sizeof script, "k:map(function(r) return {s = 0");
    size_t w = 0;
    for (int i = 1; i <= n; i++)
        at += snprintf(script + at, sizeof script - (size_t)at, " + r.value.f%02d", i);
    snprintf(script + at, sizeof script - (size_t)at, "} end):to('out')");
    for (int i = 1; i <= n; i++)
        w += (size_t)snprintf(want + w, sizeof want - w, "f%02d,", i);
    expect_keep(f, script, kept ? want : NULL);
}

static void test_a_list_holds_at_most_the_maximum_of_names(void **state)
{
    fixture_t *f = *state;
    expect_sum_of_fields(f, SL_OP_KEEP_MAX, 1);
    expect_sum_of_fields(f, SL_OP_KEEP_MAX + 1, 0);
}

static void test_dead_letters_keep_whole_values(void **state)
{
    fixture_t *f = *state;
    const sl_op_t *op = compile_op(f,
                                   "s.pipeline{on_error = 'dead_letter'}\n"
                                   "s.stream('in'):key_by('user'):aggregate{n = s.count()}\n",
                                   SL_OP_KEY_BY, 0);
    assert_null(op->keep);
}

/* Loads value (JSON when json) as a record of in/0 into a slot. */
static int load(fixture_t *f, const char *value, int json)
{
    sl_record_t rec = tu_record("k", value, 1000);
    sl_vm_origin_t origin = {"in", 0, json, 0};
    int slot = -1;
    if (sl_vm_record_load(f->vm, &rec, &origin, &slot) != 0)
        fail_msg("%s", sl_error_detail());
    return slot;
}

static void expect_projected(const sl_record_t *rec, const char *want)
{
    if (rec->value_len != (int32_t)strlen(want) || memcmp(rec->value, want, strlen(want)) != 0)
        fail_msg("value %.*s, expected %s", (int)rec->value_len, rec->value, want);
}

static void test_a_projection_keeps_the_last_of_each_kept_member(void **state)
{
    fixture_t *f = *state;
    sl_record_t rec;
    int slot = load(f,
                    "{\"seller\": \"ann\", \"reserve\": 120, \"junk\": [1, 2], "
                    "\"obj\": {\"x\": \"a\\\"b\"}, \"seller\": \"bob\", \"n\": null}",
                    1);
    assert_int_equal(sl_vm_record_project(f->vm, slot, "absent,n,obj,reserve,seller,", &rec), 0);
    expect_projected(&rec, "{\"\":\"\\u0000absent,n,obj,reserve,seller,\",\"n\":null,"
                           "\"obj\":{\"x\": \"a\\\"b\"},\"reserve\":120,\"seller\":\"bob\"}");
    assert_int_equal(rec.key_len, 1);
    assert_int_equal(rec.timestamp, 1000);
    /* the projection is JSON whose fields read as the original's */
    const sl_op_t *map = compile_op(
        f,
        "s.stream('in'):map(function(r) return {s = r.value.seller, r = r.value.reserve} end)"
        ":to('out')",
        SL_OP_MAP, 0);
    int projected = -1, out = -1;
    sl_record_t again = rec;
    again.key = (const uint8_t *)"k";
    sl_vm_origin_t origin = {"in", 0, 1, 0};
    assert_int_equal(sl_vm_record_load(f->vm, &again, &origin, &projected), 0);
    assert_int_equal(sl_vm_call_map(f->vm, map, projected, &out), 0);
    assert_int_equal(sl_vm_record_get(f->vm, out, &rec), 0);
    expect_projected(&rec, "{\"s\":\"bob\",\"r\":120}");
}

static void test_only_plain_json_objects_are_projected(void **state)
{
    fixture_t *f = *state;
    sl_record_t rec;
    static const char *const whole[] = {"[1, 2]", "\"text\"", "{\"a\\u0062\": 1, \"b\": 2}"};
    for (size_t i = 0; i < sizeof whole / sizeof *whole; i++)
        assert_int_equal(sl_vm_record_project(f->vm, load(f, whole[i], 1), "b,", &rec), 1);
    assert_int_equal(sl_vm_record_project(f->vm, load(f, "{\"b\": 1}", 0), "b,", &rec), 1);
    assert_int_equal(sl_vm_record_project(f->vm, load(f, "{\"b\": 1}", 1), NULL, &rec), 1);
    assert_int_equal(sl_vm_record_project(f->vm, load(f, "{\"b\": 1}", 1), "", &rec), 0);
    expect_projected(&rec, "{\"\":\"\\u0000\"}");
    /* a list longer than compile.c makes: whole, never a marker naming more
     * fields than it wrote */
    char list[1024] = "";
    for (int i = 0; i <= SL_OP_KEEP_MAX; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "f%d,", i);
    assert_int_equal(sl_vm_record_project(f->vm, load(f, "{\"f0\": 1, \"f32\": 2}", 1), list, &rec),
                     1);
}

static void test_readers_find_their_fields_or_say_which_are_kept(void **state)
{
    (void)state;
    const char *kept = NULL;
    size_t len = 0;
    const char *projected = "{\"\":\"\\u0000ab,c,\",\"ab\":1,\"c\":2}";
    const uint8_t *v = (const uint8_t *)projected;
    int32_t n = (int32_t)strlen(projected);
    assert_int_equal(sl_vm_value_keeps(v, n, "ab,c,", &kept, &len), 1);
    assert_int_equal(sl_vm_value_keeps(v, n, "c,", &kept, &len), 1);
    assert_int_equal(sl_vm_value_keeps(v, n, "", &kept, &len), 1);
    assert_int_equal(sl_vm_value_keeps(v, n, "a,", &kept, &len), 0); /* a prefix is not a name */
    assert_int_equal((int)len, 5);
    assert_memory_equal(kept, "ab,c,", 5);
    assert_int_equal(sl_vm_value_keeps(v, n, "b,", &kept, &len), 0);
    assert_int_equal(sl_vm_value_keeps(v, n, "ab,d,", &kept, &len), 0);
    assert_int_equal(sl_vm_value_keeps(v, n, NULL, &kept, &len), 0); /* reads any field */
    const char *whole = "{\"\":\"not a marker\",\"a\":1}";
    assert_int_equal(
        sl_vm_value_keeps((const uint8_t *)whole, (int32_t)strlen(whole), "zz,", &kept, &len), 1);
    assert_int_equal(sl_vm_value_keeps((const uint8_t *)"{}", 2, NULL, &kept, &len), 1);
    /* a marker cut short keeps nothing */
    assert_int_equal(sl_vm_value_keeps(v, 12, "ab,", &kept, &len), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_join_after_a_key_by_keeps_what_its_function_reads,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_fields_of_every_reader_are_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_reader_that_may_see_the_whole_value_keeps_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_list_holds_at_most_the_maximum_of_names, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dead_letters_keep_whole_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_projection_keeps_the_last_of_each_kept_member, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_only_plain_json_objects_are_projected, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_readers_find_their_fields_or_say_which_are_kept, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

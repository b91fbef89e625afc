/*
 * test_lua_calls.c - records in and out of Lua and the user-function
 * calls: what a function sees, what each operator makes of its results,
 * how errors are reported, and that the VM keeps working after any of them.
 */
#include "testutil.h"

#include "lua/lua.h"
#include "lua/vm.h"

#include <errno.h>
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

/* Compiles HEADER + script and returns its first op of kind. */
static const sl_op_t *op_of(void **state, const char *script, sl_op_kind_t kind)
{
    fixture_t *f = *state;
    char source[4096];
    snprintf(source, sizeof source, HEADER "%s", script);
    if (sl_vm_compile(f->vm, "script.lua", source, strlen(source), &f->dag) != 0)
        fail_msg("%s", sl_error_detail());
    for (int i = 0; i < f->dag->op_count; i++)
        if (f->dag->ops[i].kind == kind)
            return &f->dag->ops[i];
    fail_msg("no %s op", sl_op_kind_name(kind));
    return NULL;
}

static sl_vm_t *vm_of(void **state)
{
    return ((fixture_t *)*state)->vm;
}

static const sl_header_t test_headers[] = {
    {(const uint8_t *)"trace", 5, (const uint8_t *)"t1", 2},
    {(const uint8_t *)"empty", 5, NULL, -1},
};

/* Loads a record from clicks/2 at offset 17, ts 1000, with test_headers. */
static int load(void **state, const char *key, const char *value, int json)
{
    sl_record_t rec = tu_record(key, value, 1000);
    sl_vm_origin_t origin = {"clicks", 2, json, 0};
    int slot = -1;
    rec.offset = 17;
    rec.headers = test_headers;
    rec.header_count = 2;
    if (sl_vm_record_load(vm_of(state), &rec, &origin, &slot) != 0)
        fail_msg("%s", sl_error_detail());
    return slot;
}

static void expect_bytes(const uint8_t *data, int32_t len, const char *want)
{
    if (!want) {
        assert_int_equal(len, -1);
        return;
    }
    assert_int_equal(len, (int32_t)strlen(want));
    assert_memory_equal(data, want, strlen(want));
}

static sl_record_t get(void **state, int slot)
{
    sl_record_t out;
    if (sl_vm_record_get(vm_of(state), slot, &out) != 0)
        fail_msg("%s", sl_error_detail());
    return out;
}

static void expect_written_value(void **state, int slot, const char *value)
{
    sl_record_t out = get(state, slot);
    expect_bytes(out.value, out.value_len, value);
}

static void expect_written_key(void **state, int slot, const char *key)
{
    sl_record_t out = get(state, slot);
    expect_bytes(out.key, out.key_len, key);
}

static int filter(void **state, const sl_op_t *op, int slot)
{
    int keep = -1;
    if (sl_vm_call_filter(vm_of(state), op, slot, &keep) != 0)
        fail_msg("%s", sl_error_detail());
    return keep;
}

static int map(void **state, const sl_op_t *op, int slot)
{
    int out = -1;
    if (sl_vm_call_map(vm_of(state), op, slot, &out) != 0)
        fail_msg("%s", sl_error_detail());
    return out;
}

static int key(void **state, const sl_op_t *op, int slot)
{
    int out = -1;
    if (sl_vm_call_key(vm_of(state), op, slot, &out) != 0)
        fail_msg("%s", sl_error_detail());
    return out;
}

static void expect_map_error(void **state, const sl_op_t *op, int slot, const char *message)
{
    int out = -1;
    assert_int_equal(sl_vm_call_map(vm_of(state), op, slot, &out), SL_EINVALID);
    assert_string_equal(sl_error_detail(), message);
}

#define SUBJECT "{\"user\": \"ann\",  \"n\": 3}"

/* ---- records into Lua ----------------------------------------------------- */

static void test_loaded_record_is_a_table_with_every_field(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):filter(function(r)\n"
              "  return r.key == 'k1' and r.value.user == 'ann' and r.value.n == 3\n"
              "    and r.ts == 1000 and r.headers.trace == 't1'\n"
              "    and r.headers.empty == s.null and r.topic == 'clicks'\n"
              "    and r.partition == 2 and r.offset == 17\n"
              "end):to('out')\n",
              SL_OP_FILTER);
    assert_int_equal(filter(state, op, load(state, "k1", SUBJECT, 1)), 1);
    assert_int_equal(filter(state, op, load(state, "k2", SUBJECT, 1)), 0);
}

static void test_json_integers_become_lua_integers(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):filter(function(r)\n"
              "  local v = r.value\n"
              "  return math.type(v.n) == 'integer' and math.type(v.f) == 'float'\n"
              "    and math.type(v.big) == 'float' and math.type(v.list[1]) == 'integer'\n"
              "    and math.type(v.list[2].m) == 'integer' and 'user:' .. v.n == 'user:3'\n"
              "end):to('out')\n",
              SL_OP_FILTER);
    int slot =
        load(state, "k", "{\"n\": 3, \"f\": 1.5, \"big\": 1e20, \"list\": [7, {\"m\": 2.0}]}", 1);
    assert_int_equal(filter(state, op, slot), 1);
}

static void test_raw_value_is_a_string(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):filter(function(r) return r.value == '{not json' end):to('out')\n",
        SL_OP_FILTER);
    assert_int_equal(filter(state, op, load(state, "k", "{not json", 0)), 1);
}

static void test_null_key_and_tombstone_are_nil(void **state)
{
    const sl_op_t *op = op_of(
        state,
        "s.stream('in'):filter(function(r) return r.key == nil and r.value == nil end):to('out')\n",
        SL_OP_FILTER);
    int slot = load(state, NULL, NULL, 1);
    assert_int_equal(filter(state, op, slot), 1);
    sl_record_t out = get(state, slot);
    expect_bytes(out.key, out.key_len, NULL);
    expect_bytes(out.value, out.value_len, NULL);
}

static void test_loaded_record_round_trips_byte_for_byte(void **state)
{
    int slot = load(state, "k1", SUBJECT, 1);
    sl_record_t out = get(state, slot);
    expect_bytes(out.key, out.key_len, "k1");
    expect_bytes(out.value, out.value_len, SUBJECT);
    assert_int_equal(out.timestamp, 1000);
    assert_int_equal(out.offset, 17);
    assert_int_equal(out.header_count, 2);
    expect_bytes(out.headers[0].name, out.headers[0].name_len, "trace");
    expect_bytes(out.headers[0].value, out.headers[0].value_len, "t1");
    expect_bytes(out.headers[1].value, out.headers[1].value_len, NULL);
}

static void test_invalid_json_is_an_error_for_that_record(void **state)
{
    sl_record_t rec = tu_record("k", "{\"a\":", 1000);
    sl_vm_origin_t origin = {"clicks", 2, 1, 0};
    int slot = -1;
    rec.offset = 5;
    assert_int_equal(sl_vm_record_load(vm_of(state), &rec, &origin, &slot), SL_EINVALID);
    assert_string_equal(sl_error_detail(), "topic clicks partition 2 offset 5: invalid JSON value: "
                                           "the text ends inside a value");
    assert_int_equal(slot, -1);
    load(state, "k", "{\"a\": 1}", 1);
}

/* A borrowed record's slot points at the caller's bytes (the value the
 * stage's functions read, and the bytes an exit writes unchanged); a
 * loaded one at a copy of them, so the caller may reuse its buffer. */
static void test_borrowed_records_are_not_copied(void **state)
{
    sl_vm_t *vm = vm_of(state);
    char value[] = "{\"a\": 1}";
    sl_record_t rec = tu_record("k", value, 1000), got;
    for (int borrowed = 0; borrowed <= 1; borrowed++) {
        sl_vm_origin_t origin = {"clicks", 2, 1, borrowed};
        int slot = -1;
        sl_vm_batch_reset(vm);
        assert_int_equal(sl_vm_record_load(vm, &rec, &origin, &slot), 0);
        assert_int_equal(sl_vm_record_get(vm, slot, &got), 0);
        assert_int_equal(got.value_len, rec.value_len);
        assert_memory_equal(got.value, value, (size_t)got.value_len);
        assert_int_equal(got.value == rec.value, borrowed);
        assert_int_equal(got.key == rec.key, borrowed);
    }
}

/* jsmn only tokenizes: everything RFC 8259 refuses must still be refused. */
static void test_every_kind_of_invalid_json_is_refused(void **state)
{
    static const char *const bad[] = {
        "",
        "   ",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "[1,]",
        "[1 2]",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":nulls}",
        "\"\\u12\"",
        "\"a\x01\"",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00x\"}",
        "\"\\ud800\\u0041\"",
        "1 2",
        "{} {}",
        "{\"a\":1}x",
        "{a:1}",
        "[1]]",
        "{\"a\":[1}",
        "{\"a\":1e}",
        "{\"a\":+1}",
        "[,1]",
        "{,\"a\":1}",
        "{\"a\"::1}",
        "{\"a\":1 \"b\":2}",
        "[\"a\":1]",
        "{\"a\"}",
        "\"\\x\"",
        "[1,,2]",
        "{\"a\":.5}",
        "-",
        "--1",
        "1e5.5",
        "[true false]",
        "{\"a\":1}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sl_record_t rec = tu_record("k", bad[i], 1000);
        sl_vm_origin_t origin = {"clicks", 2, 1, 0};
        int slot = -1;
        if (sl_vm_record_load(vm_of(state), &rec, &origin, &slot) != SL_EINVALID)
            fail_msg("accepted invalid JSON <%s>", bad[i]);
        assert_non_null(strstr(sl_error_detail(), "invalid JSON value: "));
        assert_int_equal(slot, -1);
    }
    /* deeper than 1000 levels */
    static char deep[2 * 1001 + 1];
    memset(deep, '[', 1001);
    memset(deep + 1001, ']', 1001);
    sl_record_t rec = tu_record("k", deep, 1);
    sl_vm_origin_t origin = {"clicks", 2, 1, 0};
    int slot = -1;
    assert_int_equal(sl_vm_record_load(vm_of(state), &rec, &origin, &slot), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "nested deeper than 1000 levels"));
}

/* Strings are checked many bytes at a time: a control character is
 * refused at every position of a long string, and UTF-8 bytes, escapes and
 * 0x7f anywhere in it are fine. */
static void test_long_strings_are_checked_at_every_position(void **state)
{
    char text[64];
    for (int at = 0; at < 40; at++) {
        for (int kind = 0; kind < 4; kind++) {
            memset(text, 0, sizeof text);
            memcpy(text, "{\"s\":\"", 6);
            memset(text + 6, 'a', 40);
            memcpy(text + 46, "\"}", 2);
            static const char *const put[] = {"\x1f", "\xc3\xa9", "\\n", "\x7f"};
            if (at + strlen(put[kind]) > 40)
                continue;
            memcpy(text + 6 + at, put[kind], strlen(put[kind]));
            sl_record_t rec = tu_record("k", text, 1000);
            sl_vm_origin_t origin = {"clicks", 2, 1, 0};
            int slot = -1, rc = sl_vm_record_load(vm_of(state), &rec, &origin, &slot);
            if (kind == 0) {
                assert_int_equal(rc, SL_EINVALID);
                assert_non_null(strstr(sl_error_detail(), "control character in a string"));
                char where[32];
                snprintf(where, sizeof where, "at byte %d", 7 + at);
                assert_non_null(strstr(sl_error_detail(), where));
            } else if (rc != 0) {
                fail_msg("refused <%s>: %s", text, sl_error_detail());
            }
        }
    }
}

/* ---- the fast tokenizer against the slow one -------------------------------- */

typedef struct gen {
    uint64_t seed;
    char *text;
    size_t len, cap;
} gen_t;

static uint32_t gen_next(gen_t *g)
{
    g->seed ^= g->seed << 13;
    g->seed ^= g->seed >> 7;
    g->seed ^= g->seed << 17;
    return (uint32_t)(g->seed >> 11);
}

static void gen_put(gen_t *g, const char *s)
{
    size_t n = strlen(s);
    assert_true(g->len + n < g->cap);
    memcpy(g->text + g->len, s, n);
    g->len += n;
}

static void gen_space(gen_t *g)
{
    static const char *const spaces[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    gen_put(g, spaces[gen_next(g) % 7]);
}

static void gen_string(gen_t *g)
{
    static const char *const pieces[] = {"a",
                                         "Zq",
                                         " ",
                                         "\xc3\xa9",
                                         "\xe2\x82\xac",
                                         "\xf0\x9f\x98\x80",
                                         "\\n",
                                         "\\\"",
                                         "\\\\",
                                         "\\/",
                                         "\\b\\f\\r\\t",
                                         "\\u00e9",
                                         "\\ud83d\\ude00",
                                         "\x7f",
                                         "0123456789abcdef"};
    int n = (int)(gen_next(g) % 8 == 0 ? gen_next(g) % 60 : gen_next(g) % 8);
    gen_put(g, "\"");
    for (int i = 0; i < n; i++)
        gen_put(g, pieces[gen_next(g) % 15]);
    gen_put(g, "\"");
}

static void gen_value(gen_t *g, int depth)
{
    static const char *const scalars[] = {"0",      "-0",    "7",
                                          "-123",   "45.67", "1e10",
                                          "2.5E-3", "1E+2",  "12345678901234567890123",
                                          "true",   "false", "null"};
    unsigned kind = gen_next(g) % 8;
    gen_space(g);
    if (kind < 2 && depth < 6) {
        int n = (int)(gen_next(g) % 5);
        gen_put(g, "{");
        for (int i = 0; i < n; i++) {
            if (i)
                gen_put(g, ",");
            gen_space(g);
            gen_string(g);
            gen_space(g);
            gen_put(g, ":");
            gen_value(g, depth + 1);
        }
        gen_space(g);
        gen_put(g, "}");
    } else if (kind < 4 && depth < 6) {
        int n = (int)(gen_next(g) % 5);
        gen_put(g, "[");
        for (int i = 0; i < n; i++) {
            if (i)
                gen_put(g, ",");
            gen_value(g, depth + 1);
        }
        gen_space(g);
        gen_put(g, "]");
    } else if (kind < 6) {
        gen_string(g);
    } else {
        gen_put(g, scalars[gen_next(g) % 12]);
    }
    gen_space(g);
}

/* Replaces, inserts or deletes a byte, or doubles a slice, at random. */
static void gen_mutate(gen_t *g)
{
    static const char bytes[] = "{}[]:,\"\\ 01e.-+tnu\x01\x1f\x7f\xff\xc3";
    size_t at = g->len ? gen_next(g) % g->len : 0;
    char b = bytes[gen_next(g) % (sizeof bytes - 1)];
    switch (gen_next(g) % 4) {
    case 0:
        if (g->len)
            g->text[at] = b;
        break;
    case 1:
        memmove(g->text + at + 1, g->text + at, g->len - at);
        g->text[at] = b;
        g->len++;
        break;
    case 2:
        if (g->len) {
            memmove(g->text + at, g->text + at + 1, g->len - at - 1);
            g->len--;
        }
        break;
    default: {
        size_t n = (g->len - at) % 9;
        memmove(g->text + at + n, g->text + at, g->len - at);
        g->len += n;
        break;
    }
    }
}

/* Both ways over one text: a text the fast way takes, the slow way takes
 * with the same tokens. Returns whether the fast way took it. */
static int tokenize_both(sl_vm_t *vm, const char *text, size_t len)
{
    int fast_doc = -1, slow_doc = -1;
    sl_vm_batch_reset(vm);
    int slow = sl_json_tokenize_slow(vm, text, (int32_t)len, &slow_doc);
    size_t slow_end = vm->jtok_count;
    int fast = sl_json_tokenize_fast(vm, text, (int32_t)len, &fast_doc);
    assert_true(fast == 0 || fast == 1);
    if (fast)
        return 0;
    if (slow != 0)
        fail_msg("the fast way took <%.*s>, the slow one says %s", (int)len, text,
                 sl_error_detail());
    const sl_jtok_t *a = vm->jtoks + vm->docs[slow_doc].first;
    const sl_jtok_t *b = vm->jtoks + vm->docs[fast_doc].first;
    assert_int_equal(vm->jtok_count - slow_end, slow_end - (size_t)vm->docs[slow_doc].first);
    for (size_t i = 0; i < slow_end - (size_t)vm->docs[slow_doc].first; i++)
        if (a[i].start != b[i].start || a[i].end != b[i].end || a[i].size != b[i].size ||
            a[i].next != b[i].next || a[i].type != b[i].type || a[i].escaped != b[i].escaped)
            fail_msg("token %zu of <%.*s> differs", i, (int)len, text);
    return 1;
}

/* Random JSON texts (nested, escaped, UTF-8, every kind of number and
 * space) and mutants of them: every valid text with a container or string
 * at its root goes the fast way with jsmn's tokens, and no mutant the slow
 * way refuses gets through the fast one. */
static void test_the_fast_tokenizer_agrees_with_the_slow_one(void **state)
{
    static char text[1 << 16];
    gen_t g = {.seed = 0x9e3779b97f4a7c15ull, .text = text, .cap = sizeof text - 64};
    int fast_mutants = 0;
    for (int i = 0; i < 20000; i++) {
        g.len = 0;
        gen_value(&g, 0);
        char first = text[strspn(text, " \t\r\n")];
        int tried = tokenize_both(vm_of(state), text, g.len);
        if ((first == '{' || first == '[' || first == '"') && !tried)
            fail_msg("the fast way did not take <%.*s>", (int)g.len, text);
        for (int m = 0; m < 3; m++) {
            gen_mutate(&g);
            fast_mutants += tokenize_both(vm_of(state), text, g.len);
        }
    }
    assert_true(fast_mutants > 1000); /* mutants that stay valid: compared too */
    static const char *const bad[] = {"[\"abc\"\"def\"]", "[\"abc\"x]",     "{\"a\":\"b\\\"}",
                                      "[\"a\\\\\"\"]",    "[1 2]",          "{\"a\":1 \"b\":2}",
                                      "[\"\\ud800\"]",    "{\"a\":\"\\q\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(tokenize_both(vm_of(state), bad[i], strlen(bad[i])), 0);
}

/* Long texts: the scanner grows past its first 64 KiB for a 200 KiB text,
 * and a text over its 1 MiB limit goes the slow way, with the same tokens
 * and both accepted. */
static void test_long_json_texts_are_tokenized_either_way(void **state)
{
    for (size_t len = 200 << 10; len <= (3 << 20); len *= 15) {
        char *text = malloc(len + 1);
        assert_non_null(text);
        size_t at = 0;
        text[at++] = '[';
        while (at + 40 < len)
            at += (size_t)sprintf(text + at, "{\"k\":\"%010zu\",\"n\":%zu},", at, at);
        text[at - 1] = ']';
        int fast_doc = -1;
        sl_vm_batch_reset(vm_of(state));
        assert_int_equal(sl_json_tokenize_fast(vm_of(state), text, (int32_t)(at), &fast_doc),
                         len > (1 << 20) ? 1 : 0);
        assert_true(tokenize_both(vm_of(state), text, at) == (len <= (1 << 20)));
        int doc = -1;
        assert_int_equal(sl_json_tokenize(vm_of(state), text, (int32_t)at, &doc), 0);
        free(text);
    }
}

static void test_valid_json_of_every_shape_reads_back(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):map(function(r) return json.encode({v = r.value}) end):to('out')\n"
              "json = require('json')\n",
              SL_OP_MAP);
    static const char *const cases[][2] = {
        {"  {\"a\" : 1 }  ", "{\"v\":{\"a\":1}}"},
        {"[]", "{\"v\":{}}"},
        {"{}", "{\"v\":{}}"},
        {"42", "{\"v\":42}"},
        {"-0.5e+3", "{\"v\":-500}"},
        {"2.5E-1", "{\"v\":0.25}"},
        {"\"str\"", "{\"v\":\"str\"}"},
        {"true", "{\"v\":true}"},
        {"null", "{\"v\":null}"},
        {"[1, [2, {\"x\": null}], \"y\"]", "{\"v\":[1,[2,{\"x\":null}],\"y\"]}"},
        {"{\"s\":\"\\ud83d\\ude00\\u00e9\\n\\\"\\\\\\/\\t\"}",
         "{\"v\":{\"s\":\"\xf0\x9f\x98\x80\xc3\xa9\\n\\\"\\\\\\/\\t\"}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int slot = map(state, op, load(state, "k", cases[i][0], 1));
        sl_record_t out = get(state, slot);
        if ((size_t)out.value_len != strlen(cases[i][1]) ||
            memcmp(out.value, cases[i][1], strlen(cases[i][1])) != 0)
            fail_msg("<%s> read back as <%.*s>, want <%s>", cases[i][0], (int)out.value_len,
                     (const char *)out.value, cases[i][1]);
    }
}

/* r and r.value fill in on demand; every way of looking at them sees all. */
static void test_lazy_records_behave_like_tables(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "local json = require('json')\n"
              "s.stream('in'):filter(function(r)\n"
              "  local v = r.value\n"
              "  assert(getmetatable(r) == false and getmetatable(v) == false, 'metatable')\n"
              "  assert(v.dup == 2, 'last duplicate wins')\n"
              "  assert(v['k\\\"q'] == 'escaped key', 'escaped key')\n"
              "  assert(v.missing == nil and v[1] == nil, 'absent')\n"
              "  local n = 0\n"
              "  for k in pairs(v) do n = n + 1 end\n"
              "  assert(n == 4, 'pairs sees every field: ' .. n)\n"
              "  local fields = 0\n"
              "  for k in pairs(r) do fields = fields + 1 end\n"
              "  assert(fields == 7, 'pairs over r: ' .. fields)\n"
              "  return true\n"
              "end):to('out')\n",
              SL_OP_FILTER);
    assert_int_equal(filter(state, op,
                            load(state, "k",
                                 "{\"dup\":1,\"a\":{\"b\":[1,2]},\"k\\\"q\":\"escaped key\","
                                 "\"dup\":2,\"z\":null}",
                                 1)),
                     1);
}

static void test_setting_an_unread_field_to_nil_sticks(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):map(function(r)\n"
                              "  local v = r.value\n"
                              "  v.a = nil\n"
                              "  v.c = 3\n"
                              "  assert(v.a == nil and #v == 0)\n"
                              "  local names = {}\n"
                              "  for k in pairs(v) do names[#names + 1] = k end\n"
                              "  table.sort(names)\n"
                              "  return table.concat(names, ',')\n"
                              "end):to('out')\n",
                              SL_OP_MAP);
    expect_written_value(state, map(state, op, load(state, "k", "{\"a\":1,\"b\":2}", 1)), "b,c");
}

/* A record kept in a global past its batch: what was read stays, what was
 * not is an error that says why, not a read of freed memory. */
static void test_records_kept_past_their_batch_fail_clearly(void **state)
{
    const sl_op_t *op = op_of(state,
                              "kept = nil\n"
                              "s.stream('in'):filter(function(r)\n"
                              "  if kept then\n"
                              "    assert(kept.value.seen == 1 and kept.key == 'k1')\n"
                              "    if r.key == 'k2' then return kept.value.unseen == 2 end\n"
                              "    return kept.offset ~= nil\n"
                              "  end\n"
                              "  kept = r\n"
                              "  return r.value.seen == 1 and r.key == 'k1' and r[0] == nil and\n"
                              "         r.value[0] == nil\n"
                              "end):to('out')\n",
                              SL_OP_FILTER);
    assert_int_equal(filter(state, op, load(state, "k1", "{\"seen\":1,\"unseen\":2}", 1)), 1);
    for (int batch = 0; batch < 3; batch++) { /* the value, then the record, twice */
        sl_vm_batch_reset(vm_of(state));
        int keep = -1;
        int slot = load(state, batch == 0 ? "k2" : "k3", "{\"seen\":5}", 1);
        assert_int_equal(sl_vm_call_filter(vm_of(state), op, slot, &keep), SL_EINVALID);
        assert_non_null(strstr(sl_error_detail(), "was kept after its batch ended"));
    }
}

/* ---- filters answered without Lua ------------------------------------------ */

/* The FILTER ops of dag, in order. */
static const sl_op_t *nth_filter(const sl_dag_t *dag, int n)
{
    for (int i = 0; i < dag->op_count; i++)
        if (dag->ops[i].kind == SL_OP_FILTER && n-- == 0)
            return &dag->ops[i];
    fail_msg("no filter %d", n);
    return NULL;
}

/* A twin of a function that Lua must run: it reads a global (an upvalue,
 * which native.c does not take). */
#define LUA_RUNS "local _ = next "

/* `return r.value.f == K` (~=, and <, <=, >, >= a small integer) is
 * answered from the tokens: for every condition and record below, the same
 * answer (or the same error) as the same test written so that Lua must
 * run it, and answered without Lua (no table built) for the objects
 * without escapes (whose field is a number, for an order). */
static void test_simple_filters_answer_as_lua_does(void **state)
{
    static const char *const conditions[] = {
        "kind == 'click'", "kind ~= 'click'", "n == 10",    "n ~= 10",   "n == -5",   "n == 300",
        "n == 2.5",        "n == 1e20",       "kind == ''", "n ~= 2.5",  "n == 10.0", "n >= 10",
        "n > 5",           "n < -3",          "n <= 0",     "n >= 10.0", "n > -3"};
    static const char *const values[] = {"{\"kind\":\"click\",\"n\":10}",
                                         "{\"kind\":\"view\",\"n\":10.0}",
                                         "{\"kind\":\"clicks\",\"n\":1e1}",
                                         "{\"n\":-5,\"kind\":\"\"}",
                                         "{\"kind\":null,\"n\":null}",
                                         "{\"kind\":true,\"n\":false}",
                                         "{\"kind\":{\"a\":1},\"n\":[10]}",
                                         "{\"kind\":\"cl\\u0069ck\",\"n\":300}",
                                         "{\"k\\u0069nd\":\"click\",\"n\":300.0}",
                                         "{\"kind\":\"click\",\"kind\":\"view\"}",
                                         "{\"kind\":\"view\",\"kind\":\"click\"}",
                                         "{\"n\":2.5}",
                                         "{\"n\":1e20}",
                                         "{\"n\":100000000000000000000}",
                                         "{\"n\":2.50}",
                                         "{}",
                                         "[1,2]",
                                         "\"click\"",
                                         "{\"n\":9.5}",
                                         "{\"n\":\"10\"}",
                                         "{\"n\":-3.5}",
                                         "{\"n\":5.0000001}",
                                         "{\"n\":-3}",
                                         "{\"n\":0}",
                                         "10",
                                         "{\"n\":-0,\"kind\":\"click\"}"};
    fixture_t *f = *state;
    for (size_t c = 0; c < sizeof conditions / sizeof *conditions; c++) {
        char source[512];
        snprintf(source, sizeof source,
                 HEADER "s.stream('in'):filter(function(r) return r.value.%s end)\n"
                        "  :filter(function(r) " LUA_RUNS "return r.value.%s end):to('out')\n",
                 conditions[c], conditions[c]);
        sl_dag_t *dag = NULL;
        if (sl_vm_compile(f->vm, "script.lua", source, strlen(source), &dag) != 0)
            fail_msg("%s", sl_error_detail());
        const sl_op_t *native = nth_filter(dag, 0), *lua = nth_filter(dag, 1);
        if (!native->native || lua->native)
            fail_msg("<%s>: recognised %d, its twin %d", conditions[c], native->native != NULL,
                     lua->native != NULL);
        int answered = 0;
        for (size_t v = 0; v < sizeof values / sizeof *values; v++) {
            sl_vm_batch_reset(f->vm);
            int a = load(state, "k", values[v], 1), b = load(state, "k", values[v], 1);
            int keep_a = -1, keep_b = -1;
            int rc_a = sl_vm_call_filter(f->vm, native, a, &keep_a);
            int rc_b = sl_vm_call_filter(f->vm, lua, b, &keep_b);
            if (rc_a != rc_b || keep_a != keep_b)
                fail_msg("<%s> on %s: %d/%d natively, %d/%d in Lua", conditions[c], values[v], rc_a,
                         keep_a, rc_b, keep_b);
            answered += !f->vm->slots[a].has_table;
        }
        assert_true(answered >= 14); /* objects without escapes (a number, to order) */
        sl_dag_free(dag);
    }
}

/* The KEY_BY ops of dag, in order. */
static const sl_op_t *nth_key_by(const sl_dag_t *dag, int n)
{
    for (int i = 0; i < dag->op_count; i++)
        if (dag->ops[i].kind == SL_OP_KEY_BY && n-- == 0)
            return &dag->ops[i];
    fail_msg("no key_by %d", n);
    return NULL;
}

/* key_by(function(r) return r.value.f end) and key_by("f") give every
 * record the key (or an error) the same function written so that Lua must
 * run it gives, and read strings and numbers of plain objects without
 * building a table or calling Lua. */
static void test_simple_key_functions_key_as_lua_does(void **state)
{
    static const char *const values[] = {"{\"user\":\"u1\"}",
                                         "{\"user\":\"u\\u0031\"}",
                                         "{\"us\\u0065r\":\"u1\"}",
                                         "{\"user\":42}",
                                         "{\"user\":4.5}",
                                         "{\"user\":10.0}",
                                         "{\"user\":-0.0}",
                                         "{\"user\":1e400}",
                                         "{\"user\":1.5e300}",
                                         "{\"user\":123456789012345678901}",
                                         "{\"user\":-9223372036854775808}",
                                         "{\"user\":-0}",
                                         "{\"user\":0}",
                                         "{\"user\":-123456789012345678}",
                                         "{\"user\":1234567890123456789}",
                                         "{\"user\":12e2}",
                                         "{\"user\":null}",
                                         "{}",
                                         "{\"user\":true}",
                                         "{\"user\":{\"a\":1}}",
                                         "{\"user\":[1]}",
                                         "{\"user\":\"a\",\"user\":\"b\"}",
                                         "[\"user\"]",
                                         "\"user\"",
                                         "7",
                                         "{\"user\":\"\"}"};
    fixture_t *f = *state;
    const char *source = HEADER "local c = s.stream('in')\n"
                                "c:key_by(function(r) return r.value.user end):to('a')\n"
                                "c:key_by('user'):to('b')\n"
                                "c:key_by(function(r) " LUA_RUNS "return r.value.user end)"
                                ":to('c')\n";
    sl_dag_t *dag = NULL;
    if (sl_vm_compile(f->vm, "script.lua", source, strlen(source), &dag) != 0)
        fail_msg("%s", sl_error_detail());
    const sl_op_t *natives[2] = {nth_key_by(dag, 0), nth_key_by(dag, 1)}, *lua = nth_key_by(dag, 2);
    assert_non_null(natives[0]->native_key);
    assert_string_equal(natives[0]->native_key, "user");
    assert_null(lua->native_key);
    for (int n = 0; n < 2; n++) {
        int answered = 0;
        for (size_t v = 0; v < sizeof values / sizeof *values; v++) {
            sl_vm_batch_reset(f->vm);
            int a = load(state, "k", values[v], 1), b = load(state, "k", values[v], 1);
            int out_a = -1, out_b = -1, slots = f->vm->slot_count;
            int rc_a = sl_vm_call_key(f->vm, natives[n], a, &out_a);
            int rc_b = sl_vm_call_key(f->vm, lua, b, &out_b);
            if (rc_a != rc_b)
                fail_msg("%s: %d natively, %d in Lua", values[v], rc_a, rc_b);
            if (rc_a) /* Lua ran, and raised */
                continue;
            const sl_record_t *ka = &f->vm->slots[out_a].record, *kb = &f->vm->slots[out_b].record;
            if (ka->key_len != kb->key_len || memcmp(ka->key, kb->key, (size_t)ka->key_len) != 0)
                fail_msg("%s: key %.*s natively, %.*s in Lua", values[v], (int)ka->key_len,
                         (const char *)ka->key, (int)kb->key_len, (const char *)kb->key);
            assert_memory_equal(f->vm->slots[out_a].record.value, f->vm->slots[a].record.value,
                                (size_t)f->vm->slots[a].record.value_len);
            answered += !f->vm->slots[a].has_table && out_a == slots; /* no Lua value made */
        }
        assert_true(answered >= 9); /* strings and numbers of plain objects */
    }
    sl_dag_free(dag);
}

/* A flat JSON object's members as sorted "key:value" lines, for comparing
 * outputs whose key order may differ; any other text as it is. */
static void members_of(sl_vm_t *vm, const uint8_t *text, int32_t len, char *out, size_t size)
{
    int doc = -1;
    char lines[16][128];
    int n = 0;
    if (len < 0 || sl_json_tokenize(vm, (const char *)text, len, &doc) != 0 ||
        vm->jtoks[vm->docs[doc].first].type != SL_JTOK_OBJECT) {
        snprintf(out, size, "%.*s", (int)len, (const char *)text); /* compared as it is */
        return;
    }
    const sl_jtok_t *base = vm->jtoks + vm->docs[doc].first;
    for (int i = 0, child = 1; i < base[0].size && n < 16; i++, n++) {
        const sl_jtok_t *k = &base[child], *v = &base[child + 1];
        snprintf(lines[n], sizeof lines[n], "%.*s:%d:%.*s", (int)(k->end - k->start),
                 (const char *)text + k->start, v->type, (int)(v->end - v->start),
                 (const char *)text + v->start);
        child = v->next;
    }
    qsort(lines, (size_t)n, sizeof lines[0], (int (*)(const void *, const void *))strcmp);
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s\n", lines[i]);
}

/* A slot holding tokens it did not get from the tokenizer (a native map's
 * or join's output) holds what the tokenizer makes of its value. */
static void expect_tokens_as_tokenized(sl_vm_t *vm, int slot)
{
    const sl_slot_t *s = &vm->slots[slot];
    int doc = -1;
    if (s->doc < 0)
        return;
    size_t before = vm->jtok_count;
    assert_int_equal(sl_json_tokenize(vm, (const char *)s->record.value, s->record.value_len, &doc),
                     0);
    const sl_jtok_t *a = vm->jtoks + vm->docs[s->doc].first, *b = vm->jtoks + vm->docs[doc].first;
    assert_int_equal(a[0].next, (int32_t)(vm->jtok_count - before));
    for (int32_t i = 0; i < a[0].next; i++)
        if (a[i].start != b[i].start || a[i].end != b[i].end || a[i].size != b[i].size ||
            a[i].next != b[i].next || a[i].type != b[i].type || a[i].escaped != b[i].escaped)
            fail_msg("token %d of %.*s differs", (int)i, (int)s->record.value_len,
                     (const char *)s->record.value);
}

/* The outputs of the same function run natively (rc_a, slot a) and in
 * Lua (rc_b, slot b) agree: both failed, or the same members, headers,
 * timestamp and key. */
static void expect_same_output(sl_vm_t *vm, const char *what, int rc_a, int a, int rc_b, int b)
{
    sl_record_t ra, rb;
    if (rc_a == 0)
        rc_a = sl_vm_record_get(vm, a, &ra);
    if (rc_b == 0)
        rc_b = sl_vm_record_get(vm, b, &rb);
    if (rc_a != rc_b)
        fail_msg("%s: %d natively, %d in Lua (%s)", what, rc_a, rc_b, sl_error_detail());
    if (rc_a)
        return;
    expect_tokens_as_tokenized(vm, a);
    char members_a[2048], members_b[2048];
    members_of(vm, ra.value, ra.value_len, members_a, sizeof members_a);
    members_of(vm, rb.value, rb.value_len, members_b, sizeof members_b);
    if (strcmp(members_a, members_b) != 0)
        fail_msg("%s: natively %.*s, in Lua %.*s", what, (int)ra.value_len, ra.value,
                 (int)rb.value_len, rb.value);
    assert_int_equal(ra.header_count, rb.header_count);
    for (uint32_t h = 0; h < ra.header_count; h++) {
        assert_int_equal(ra.headers[h].name_len, rb.headers[h].name_len);
        assert_memory_equal(ra.headers[h].name, rb.headers[h].name, (size_t)ra.headers[h].name_len);
    }
    assert_int_equal(ra.timestamp, rb.timestamp);
    assert_int_equal(ra.key_len, rb.key_len);
    if (ra.key_len > 0)
        assert_memory_equal(ra.key, rb.key, (size_t)ra.key_len);
}

/* The ops of kind in dag, in order, into ops (at most max); their count. */
static int ops_of_kind(const sl_dag_t *dag, sl_op_kind_t kind, const sl_op_t **ops, int max)
{
    int n = 0;
    for (int i = 0; i < dag->op_count && n < max; i++)
        if (dag->ops[i].kind == kind)
            ops[n++] = &dag->ops[i];
    return n;
}

/* Compiles source, whose first two ops of kind are a function and its twin
 * that Lua must run, into ops; fails unless native.c took the function and
 * not its twin. The caller frees the DAG. */
static sl_dag_t *compile_twins(sl_vm_t *vm, const char *source, sl_op_kind_t kind, const char *what,
                               const sl_op_t *ops[2])
{
    sl_dag_t *dag = NULL;
    if (sl_vm_compile(vm, "script.lua", source, strlen(source), &dag) != 0)
        fail_msg("%s", sl_error_detail());
    assert_int_equal(ops_of_kind(dag, kind, ops, 2), 2);
    if (!ops[0]->native || ops[1]->native)
        fail_msg("<%s>: recognised %d, its twin %d", what, ops[0]->native != NULL,
                 ops[1]->native != NULL);
    return dag;
}

/* Records of every kind of value the functions below read. */
static const char *const native_values[] = {
    "{\"user\":\"ann\",\"price\":12.5,\"flag\":true,\"n\":10,\"m\":3,\"kind\":\"click\"}",
    "{\"user\":\"ann\",\"n\":-7,\"m\":-7.0,\"kind\":\"view\"}",
    "{\"user\":null,\"price\":10.0,\"flag\":false,\"n\":0,\"m\":0}",
    "{\"price\":1e2,\"n\":9007199254740993,\"m\":9007199254740992.0}",
    "{\"price\":-0.0,\"n\":-9223372036854775808,\"m\":-1}",
    "{\"price\":0.1,\"user\":\"\",\"n\":3.5,\"m\":2}",
    "{\"price\":123456789012345678,\"n\":7,\"m\":-2}",
    "{\"price\":-0.25,\"n\":-1.5,\"m\":-1}",
    "{\"price\":1.5e300,\"n\":1e308,\"m\":1e308}",
    "{\"price\":1e400,\"n\":5,\"m\":0.0}",
    "{\"price\":-2.5e-7,\"n\":\"10\",\"m\":\"3\"}",
    "{\"user\":\"a\\u00e9\",\"kind\":\"cl\\u0069ck\"}",
    "{\"user\":\"x\x7fy\"}",
    "{\"user\":{\"a\":1},\"nested\":{\"x\":1,\"y\":{\"z\":\"deep\"}}}",
    "{\"user\":[1],\"nested\":{\"x\":2,\"x\":1}}",
    "{\"nested\":{\"\\u0078\":1},\"flag\":null}",
    "{\"us\\u0065r\":\"ann\"}",
    "{\"user\":\"a\",\"user\":\"b\",\"kind\":\"a\",\"other\":\"a\"}",
    "{\"user\":\"caf\xc3\xa9\",\"n\":null,\"m\":null}",
    "{\"n\":true,\"m\":false,\"kind\":5,\"other\":5.0}",
    "{}",
    "[1]",
    "\"str\"",
    "42"};

/* Filters of the straight-line kind (and, or, not, arithmetic, nested
 * fields, record fields) give, for every record above, the same answer or
 * error as their twins that Lua runs; most plain records are answered
 * without a table. */
static void test_straight_line_filters_answer_as_lua_does(void **state)
{
    static const char *const conditions[] = {
        "r.value.n > 1 and r.value.kind == 'click'",
        "r.value.kind == 'a' or r.value.kind == 'click' or r.value.n == 0",
        "not r.value.flag",
        "r.value.flag",
        "r.value.flag == nil",
        "r.value.user ~= nil",
        "r.value.n // 10 == 1",
        "r.value.n // r.value.m == 3",
        "r.value.m // 2 == -4 or r.value.n // -2 == -2",
        "r.value.m % 2 == 1 or r.value.n % -2 == -0.5",
        "r.value.n % -2 == -1.5 or r.value.n % r.value.m == -0.5",
        "r.value.n % 3 == 1",
        "r.value.n % r.value.m > 0",
        "r.value.n / 4 > 2",
        "r.value.n * 2 + 1 >= 21",
        "-r.value.n < 0",
        "r.value.n ^ 2 > 50",
        "r.value.n - 0.5 <= 9.5",
        "r.value.n - r.value.m == 7",
        "r.value.n == r.value.m",
        "r.value.n < r.value.m",
        "r.value.n <= r.value.m",
        "r.value.kind < 'm'",
        "r.value.kind == r.value.other",
        "r.value.nested ~= nil and r.value.nested.x == 1",
        "r.value.nested and r.value.nested.y.z == 'deep'",
        "#r.value.kind == 5",
        "(r.value.n or 0) > 3",
        "r.ts > 500 and r.key == 'k' and r.partition == 2 and r.offset == 17",
        "r.headers ~= nil",
        "r.value.n == 9007199254740993",
        "r.value.n < 9007199254740993",
        "r.value.n // 0 == 1",
        "r.value.n % 0 == 1",
        "r.value.n + 1 > r.value.n",
        "r.value.n * 3 == r.value.n + r.value.n + r.value.n",
        "r.value"};
    fixture_t *f = *state;
    int answered = 0, total = 0;
    for (size_t c = 0; c < sizeof conditions / sizeof *conditions; c++) {
        char source[1024];
        snprintf(source, sizeof source,
                 HEADER "s.stream('in'):filter(function(r) return %s end)\n"
                        "  :filter(function(r) " LUA_RUNS "return %s end):to('out')\n",
                 conditions[c], conditions[c]);
        const sl_op_t *ops[2];
        sl_dag_t *dag = compile_twins(f->vm, source, SL_OP_FILTER, conditions[c], ops);
        for (size_t v = 0; v < sizeof native_values / sizeof *native_values; v++) {
            sl_vm_batch_reset(f->vm);
            int a = load(state, "k", native_values[v], 1),
                b = load(state, "k", native_values[v], 1);
            int keep_a = -1, keep_b = -1;
            int rc_a = sl_vm_call_filter(f->vm, ops[0], a, &keep_a);
            int rc_b = sl_vm_call_filter(f->vm, ops[1], b, &keep_b);
            if (rc_a != rc_b || keep_a != keep_b)
                fail_msg("<%s> on %s: %d/%d natively, %d/%d in Lua", conditions[c],
                         native_values[v], rc_a, keep_a, rc_b, keep_b);
            answered += !f->vm->slots[a].has_table;
            total++;
        }
        sl_dag_free(dag);
    }
    assert_true(answered * 3 > total); /* the rest: errors, escapes, not objects */
}

/* Map functions of the straight-line kind write, for every record above,
 * the members (or the error) their twins that Lua runs write, and the
 * same key, timestamp and headers; tables Lua reads as records, and
 * values the encoder escapes, are left to Lua. */
static void test_straight_line_maps_write_what_lua_writes(void **state)
{
    static const char *const bodies[] = {
        "return {u = r.value.user, p = r.value.price, f = r.value.flag}",
        "return {total = r.value.price * 2, label = 'fixed', ts = r.ts, k = r.key}",
        "return {value = r.value.user}",
        "return {value = r.value.user, ts = r.ts}",
        "return {a = r.value.n, a = r.value.user}",
        "return {x = r.value.nested and r.value.nested.x, n = r.value.n // 2, big = r.value.n > 8}",
        "local t = {n = r.value.n} if r.value.flag then t.flag = 1 else t.f = 0 end return t",
        "local t = {u = r.value.user, n = 1} t.n = nil t.m = t.u return t",
        "return {obj = r.value.nested}",
        "return {s = 'a\"b', n = r.value.n}",
        "return {s = 'plain', d = r.value.n / r.value.m}",
        "return {}",
        "return {both = r.value.user and r.value.kind or 'none'}"};
    fixture_t *f = *state;
    int answered = 0, total = 0;
    for (size_t c = 0; c < sizeof bodies / sizeof *bodies; c++) {
        char source[1024];
        snprintf(source, sizeof source,
                 HEADER "s.stream('in'):map(function(r) %s end)\n"
                        "  :map(function(r) " LUA_RUNS "%s end):to('out')\n",
                 bodies[c], bodies[c]);
        const sl_op_t *ops[2];
        sl_dag_t *dag = compile_twins(f->vm, source, SL_OP_MAP, bodies[c], ops);
        for (size_t v = 0; v < sizeof native_values / sizeof *native_values; v++) {
            char what[512];
            snprintf(what, sizeof what, "<%s> on %s", bodies[c], native_values[v]);
            sl_vm_batch_reset(f->vm);
            int a = load(state, "k", native_values[v], 1),
                b = load(state, "k", native_values[v], 1);
            int out_a = -1, out_b = -1;
            int rc_a = sl_vm_call_map(f->vm, ops[0], a, &out_a);
            int rc_b = sl_vm_call_map(f->vm, ops[1], b, &out_b);
            expect_same_output(f->vm, what, rc_a, out_a, rc_b, out_b);
            answered += !f->vm->slots[a].has_table;
            total++;
        }
        sl_dag_free(dag);
    }
    assert_true(answered * 4 > total); /* the rest: errors, escapes, not objects */
}

/* Outputs about as long as the native writer takes (1 KiB) are written
 * whole, by it or by Lua, never past its buffer (ASan watches). */
static void test_native_outputs_at_the_length_limit(void **state)
{
    fixture_t *f = *state;
    const char *source =
        HEADER "s.stream('in'):map(function(r) return {s = r.value.s} end)\n"
               "  :map(function(r) " LUA_RUNS "return {s = r.value.s} end):to('out')\n";
    const sl_op_t *ops[2];
    sl_dag_t *dag = compile_twins(f->vm, source, SL_OP_MAP, "a long map", ops);
    for (int n = 1000; n < 1030; n++) {
        char value[1100], what[64];
        snprintf(value, sizeof value, "{\"s\":\"%0*d\"}", n, 7);
        snprintf(what, sizeof what, "a string of %d bytes", n);
        sl_vm_batch_reset(f->vm);
        int a = load(state, "k", value, 1), b = load(state, "k", value, 1);
        int out_a = -1, out_b = -1;
        int rc_a = sl_vm_call_map(f->vm, ops[0], a, &out_a);
        int rc_b = sl_vm_call_map(f->vm, ops[1], b, &out_b);
        expect_same_output(f->vm, what, rc_a, out_a, rc_b, out_b);
    }
    sl_dag_free(dag);
}

/* Join functions of the straight-line kind, stream-table (the table side
 * is a value) and stream-stream (both records), write what their twins
 * that Lua runs write, for every pair of the records above and for a
 * missing side (left joins: nil). */
static void test_straight_line_join_functions_write_what_lua_writes(void **state)
{
    static const char *const bodies[] = {
        "return {name = b.user, n = b.n, id = a.value.n, ts = a.ts}",
        "return {x = a.value.user, y = b and b.value.user, d = b and b.ts - a.ts}",
        "if b == nil then return {alone = a.value.n} end return {n = a.value.n + b.value.m}"};
    static const char *const kinds[] = {"t", "v", "v"};
    fixture_t *f = *state;
    int answered = 0;
    for (size_t c = 0; c < sizeof bodies / sizeof *bodies; c++) {
        char source[1024];
        snprintf(source, sizeof source,
                 HEADER
                 "local v = s.stream('views')\n"
                 "local c = s.stream('clicks')\n"
                 "c:join(%s, function(a, b) %s end, {type = 'left', within = '5s'}):to('x')\n"
                 "c:join(%s, function(a, b) " LUA_RUNS
                 "%s end, {type = 'left', within = '5s'}):to('y')\n",
                 kinds[c], bodies[c], kinds[c], bodies[c]);
        if (c == 0) /* a table: no window */
            snprintf(source, sizeof source,
                     HEADER "local t = s.table('people')\n"
                            "local c = s.stream('clicks')\n"
                            "c:join(t, function(a, b) %s end, {type = 'left'}):to('x')\n"
                            "c:join(t, function(a, b) " LUA_RUNS
                            "%s end, {type = 'left'}):to('y')\n",
                     bodies[c], bodies[c]);
        const sl_op_t *ops[2];
        sl_dag_t *dag = compile_twins(f->vm, source, SL_OP_JOIN, bodies[c], ops);
        size_t n = sizeof native_values / sizeof *native_values;
        for (size_t v = 0; v < n; v++)
            for (size_t w = 0; w <= n; w++) { /* w == n: no partner */
                char what[512];
                snprintf(what, sizeof what, "<%s> on %s and %s", bodies[c], native_values[v],
                         w < n ? native_values[w] : "nil");
                sl_vm_batch_reset(f->vm);
                int a = load(state, "k", native_values[v], 1);
                int p = w < n ? load(state, "k", native_values[w], 1) : -1;
                int b = load(state, "k", native_values[v], 1);
                int q = w < n ? load(state, "k", native_values[w], 1) : -1;
                int out_a = -1, out_b = -1;
                int rc_a = sl_vm_call_join(f->vm, ops[0], a, a, p, &out_a);
                int rc_b = sl_vm_call_join(f->vm, ops[1], b, b, q, &out_b);
                expect_same_output(f->vm, what, rc_a, out_a, rc_b, out_b);
                answered += rc_a == 0 && !f->vm->slots[a].has_table;
            }
        sl_dag_free(dag);
    }
    assert_true(answered > 100);
}

/* An earlier op that changed r.value decides: the filter reads the table. */
static void test_a_filter_sees_what_an_earlier_op_changed(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):peek(function(r) r.value.kind = 'click' end)\n"
              "  :filter(function(r) return r.value.kind == 'click' end):to('out')\n",
              SL_OP_PEEK);
    const sl_op_t *check = nth_filter(((fixture_t *)*state)->dag, 0);
    assert_non_null(check->native);
    int slot = load(state, "k", "{\"kind\":\"view\"}", 1);
    assert_int_equal(sl_vm_call_peek(vm_of(state), op, slot), 0);
    assert_int_equal(filter(state, check, slot), 1);
}

/* The same for a key function: the key is the changed field. */
static void test_a_key_function_sees_what_an_earlier_op_changed(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):peek(function(r) r.value.user = 'changed' end)\n"
                              "  :key_by(function(r) return r.value.user end):to('out')\n",
                              SL_OP_PEEK);
    const sl_op_t *keyed = nth_key_by(((fixture_t *)*state)->dag, 0);
    assert_non_null(keyed->native_key);
    int slot = load(state, "k", "{\"user\":\"u1\"}", 1);
    assert_int_equal(sl_vm_call_peek(vm_of(state), op, slot), 0);
    expect_written_key(state, key(state, keyed, slot), "changed");
}

/* ---- map ---------------------------------------------------------------- */

static void test_map_value_keeps_key_ts_and_headers(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):map(function(r) return {user = r.value.user} end):to('out')\n",
              SL_OP_MAP);
    sl_record_t out = get(state, map(state, op, load(state, "k1", SUBJECT, 1)));
    expect_bytes(out.value, out.value_len, "{\"user\":\"ann\"}");
    expect_bytes(out.key, out.key_len, "k1");
    assert_int_equal(out.timestamp, 1000);
    assert_int_equal(out.header_count, 2);
    expect_bytes(out.headers[0].name, out.headers[0].name_len, "empty"); /* sorted by name */
    expect_bytes(out.headers[0].value, out.headers[0].value_len, NULL);
    expect_bytes(out.headers[1].value, out.headers[1].value_len, "t1");
}

static void test_map_string_passes_through_and_numbers_are_json(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):map(function(r)\n"
                              "  if r.key == 'text' then return 'plain text' end\n"
                              "  return r.value.n * 2\n"
                              "end):to('out')\n",
                              SL_OP_MAP);
    expect_written_value(state, map(state, op, load(state, "text", SUBJECT, 1)), "plain text");
    expect_written_value(state, map(state, op, load(state, "number", SUBJECT, 1)), "6");
}

static void test_map_record_table_sets_every_field(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):map(function(r)\n"
              "  return {key = 7, value = {a = 1}, ts = 5, headers = {b = 'x', a = 2}}\n"
              "end):to('out')\n",
              SL_OP_MAP);
    sl_record_t out = get(state, map(state, op, load(state, "k1", SUBJECT, 1)));
    expect_bytes(out.key, out.key_len, "7");
    expect_bytes(out.value, out.value_len, "{\"a\":1}");
    assert_int_equal(out.timestamp, 5);
    assert_int_equal(out.header_count, 2);
    expect_bytes(out.headers[0].name, out.headers[0].name_len, "a");
    expect_bytes(out.headers[0].value, out.headers[0].value_len, "2");
    expect_bytes(out.headers[1].value, out.headers[1].value_len, "x");
}

static void test_map_record_table_fields_default(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) return {value = 'v'} end):to('out')\n", SL_OP_MAP);
    sl_record_t out = get(state, map(state, op, load(state, "k1", SUBJECT, 1)));
    expect_bytes(out.key, out.key_len, NULL);
    expect_bytes(out.value, out.value_len, "v");
    assert_int_equal(out.timestamp, 1000);
    assert_int_equal(out.header_count, 0);
}

/* A table is a record table when all its keys are record fields and key
 * or value is one of them; any other table is a value. */
static void test_map_record_tables_are_told_by_their_keys(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):map(function(r)\n"
              "  if r.key == 'origin' then\n"
              "    return {value = 'v', topic = 'x', partition = 3, offset = 9, headers = {}}\n"
              "  end\n"
              "  if r.key == 'near' then return {valu = 1} end\n"
              "  if r.key == 'ts' then return {ts = 5} end\n"
              "  return {key = 'k', offsets = 1}\n"
              "end):to('out')\n",
              SL_OP_MAP);
    expect_written_value(state, map(state, op, load(state, "origin", SUBJECT, 1)), "v");
    expect_written_value(state, map(state, op, load(state, "near", SUBJECT, 1)), "{\"valu\":1}");
    expect_written_value(state, map(state, op, load(state, "ts", SUBJECT, 1)), "{\"ts\":5}");
    int slot = map(state, op, load(state, "other", SUBJECT, 1));
    sl_record_t out = get(state, slot);
    expect_bytes(out.key, out.key_len, "other");
    assert_non_null(memmem(out.value, (size_t)out.value_len, "\"offsets\":1", 11));
}

static void test_map_returning_changed_r_writes_the_change(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) r.value.n = 4 return r end):to('out')\n", SL_OP_MAP);
    int slot = map(state, op, load(state, "k1", "{\"n\": 3}", 1));
    expect_written_value(state, slot, "{\"n\":4}");
    expect_written_key(state, slot, "k1");
}

static void test_map_keeps_a_tombstone_a_tombstone(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):map(function(r) return r end):to('out')\n", SL_OP_MAP);
    sl_record_t out = get(state, map(state, op, load(state, "k1", NULL, 1)));
    expect_bytes(out.key, out.key_len, "k1");
    expect_bytes(out.value, out.value_len, NULL);
}

static void test_map_returning_nil_is_an_error(void **state)
{
    const sl_op_t *op = op_of(state, "s.stream('in'):map(function(r) end):to('out')\n", SL_OP_MAP);
    expect_map_error(state, op, load(state, "k", SUBJECT, 1),
                     "map (script.lua:2): returned nil (return a value, or a record table {key = "
                     "k, value = v})");
}

static void test_map_returning_a_function_is_an_error(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):map(function(r) return print end):to('out')\n", SL_OP_MAP);
    expect_map_error(state, op, load(state, "k", SUBJECT, 1),
                     "map (script.lua:2): returned a function, which cannot be a record value");
}

static void test_bad_record_table_fields_are_errors(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):map(function(r)\n"
                              "  if r.key == 'key' then return {key = true, value = 1} end\n"
                              "  if r.key == 'ts' then return {value = 1, ts = 'x'} end\n"
                              "  return {value = 1, headers = {h = {}}}\n"
                              "end):to('out')\n",
                              SL_OP_MAP);
    expect_map_error(state, op, load(state, "key", SUBJECT, 1),
                     "map (script.lua:2): the record key must be a string or a number, got true");
    expect_map_error(state, op, load(state, "ts", SUBJECT, 1),
                     "map (script.lua:2): the record ts must be an integer number of ms, got 'x'");
    expect_map_error(state, op, load(state, "headers", SUBJECT, 1),
                     "map (script.lua:2): a record header value must be a string or a number, "
                     "got a table");
}

static void test_value_that_cannot_be_encoded_fails_on_get(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) return {f = print} end):to('out')\n", SL_OP_MAP);
    int slot = map(state, op, load(state, "k", SUBJECT, 1));
    sl_record_t out;
    assert_int_equal(sl_vm_record_get(vm_of(state), slot, &out), SL_EINVALID);
    assert_string_equal(sl_error_detail(), "map (script.lua:2): cannot write the record: a "
                                           "function cannot be written as JSON");
}

/* What a sink writes for each kind of Lua value (encode.c). */
static void test_values_are_written_as_json_exactly(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "local cases = {\n"
              "  ['12.5'] = 12.5, ['0.1'] = 0.1, ['-0.05'] = -0.05,\n"
              "  ['third'] = 1 / 3, ['1e20'] = 1e20, ['1e-7'] = 1e-7,\n"
              "  ['3.0'] = 3.0, ['big'] = 2^53 + 2, ['neg'] = -42,\n"
              "  ['str'] = {s = 'a\"b\\\\c\\n\\1/\\127'}, ['list'] = {1, 's', true},\n"
              "  ['holes'] = {1, nil, 3}, ['empty'] = {}, ['null'] = {s.null},\n"
              "  ['numkey'] = {[1.5] = 'x'}, ['nested'] = {a = {b = {false}}},\n"
              "  ['mixed'] = {1, 2, x = 'y'},\n"
              "}\n"
              "s.stream('in'):map(function(r) return {v = cases[r.key]} end)"
              ":to('out')\n",
              SL_OP_MAP);
    static const char *const cases[][2] = {
        {"12.5", "{\"v\":12.5}"},
        {"0.1", "{\"v\":0.1}"},
        {"-0.05", "{\"v\":-0.05}"},
        {"third", "{\"v\":0.3333333333333333}"},
        {"1e20", "{\"v\":1e+20}"},
        {"1e-7", "{\"v\":1e-07}"},
        {"3.0", "{\"v\":3}"},
        {"big", "{\"v\":9007199254740994}"},
        {"neg", "{\"v\":-42}"},
        {"str", "{\"v\":{\"s\":\"a\\\"b\\\\c\\n\\u0001/\\u007f\"}}"},
        {"list", "{\"v\":[1,\"s\",true]}"},
        {"holes", "{\"v\":[1,null,3]}"},
        {"empty", "{\"v\":{}}"},
        {"null", "{\"v\":[null]}"},
        {"numkey", "{\"v\":{\"1.5\":\"x\"}}"},
        {"nested", "{\"v\":{\"a\":{\"b\":[false]}}}"},
        {"mixed", "{\"v\":{\"1\":1,\"2\":2,\"x\":\"y\"}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sl_record_t out = get(state, map(state, op, load(state, cases[i][0], SUBJECT, 1)));
        if ((size_t)out.value_len != strlen(cases[i][1]) ||
            memcmp(out.value, cases[i][1], strlen(cases[i][1])) != 0)
            fail_msg("%s written as <%.*s>, want <%s>", cases[i][0], (int)out.value_len,
                     (const char *)out.value, cases[i][1]);
    }
}

static void test_values_json_cannot_hold_are_refused(void **state)
{
    const sl_op_t *op = op_of(state,
                              "local deep = {}\n"
                              "local t = deep\n"
                              "for i = 1, 1100 do t[1] = {} t = t[1] end\n"
                              "local cases = {nan = {0/0}, inf = {math.huge},\n"
                              "  sparse = {[1] = 1, [100] = 2}, deep = deep,\n"
                              "  badkey = {[true] = 1}}\n"
                              "s.stream('in'):map(function(r) return cases[r.key] end)"
                              ":to('out')\n",
                              SL_OP_MAP);
    static const char *const cases[][2] = {
        {"nan", "have no JSON text"},
        {"inf", "have no JSON text"},
        {"sparse", "excessively sparse array"},
        {"deep", "nested deeper than 1000 levels"},
        {"badkey", "a table key must be a string or a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sl_record_t out;
        int slot = map(state, op, load(state, cases[i][0], SUBJECT, 1));
        assert_int_equal(sl_vm_record_get(vm_of(state), slot, &out), SL_EINVALID);
        if (!strstr(sl_error_detail(), cases[i][1]))
            fail_msg("%s: %s", cases[i][0], sl_error_detail());
    }
}

/* ---- flat_map --------------------------------------------------------------- */

static void test_flat_map_makes_one_record_per_item(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):flat_map(function(r)\n"
                              "  if r.key == 'none' then return {} end\n"
                              "  return {r.value.n, {key = 'b', value = 'x'}, 'z'}\n"
                              "end):to('out')\n",
                              SL_OP_FLAT_MAP);
    int first = -1, count = -1;
    int slot = load(state, "k1", SUBJECT, 1);
    assert_int_equal(sl_vm_call_flat_map(vm_of(state), op, slot, &first, &count), 0);
    assert_int_equal(count, 3);
    expect_written_value(state, first, "3");
    expect_written_key(state, first, "k1");
    expect_written_value(state, first + 1, "x");
    expect_written_key(state, first + 1, "b");
    expect_written_value(state, first + 2, "z");
    assert_int_equal(
        sl_vm_call_flat_map(vm_of(state), op, load(state, "none", SUBJECT, 1), &first, &count), 0);
    assert_int_equal(count, 0);
}

static void test_flat_map_must_return_a_list(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):flat_map(function(r)\n"
                              "  if r.key == 'map' then return {a = 1} end\n"
                              "end):to('out')\n",
                              SL_OP_FLAT_MAP);
    int first, count;
    assert_int_equal(
        sl_vm_call_flat_map(vm_of(state), op, load(state, "map", SUBJECT, 1), &first, &count),
        SL_EINVALID);
    assert_string_equal(sl_error_detail(), "flat_map (script.lua:2): returned a table that is not "
                                           "a list (return {} for none)");
    assert_int_equal(
        sl_vm_call_flat_map(vm_of(state), op, load(state, "nil", SUBJECT, 1), &first, &count),
        SL_EINVALID);
    assert_string_equal(sl_error_detail(), "flat_map (script.lua:2): returned nil (return a list "
                                           "of values or records, {} for none)");
}

/* ---- key_by ------------------------------------------------------------------ */

static void test_key_by_function_rekeys_and_keeps_the_value_bytes(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):key_by(function(r) return r.value.user end):to('out')\n",
              SL_OP_KEY_BY);
    sl_record_t out = get(state, key(state, op, load(state, "k1", SUBJECT, 1)));
    expect_bytes(out.key, out.key_len, "ann");
    expect_bytes(out.value, out.value_len, SUBJECT);
    assert_int_equal(out.timestamp, 1000);
    assert_int_equal(out.header_count, 2);
}

static void test_number_keys_become_decimal_text(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):key_by(function(r) return r.value.k end):to('out')\n", SL_OP_KEY_BY);
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 3}", 1)), "3");
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": -7.0}", 1)), "-7");
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 1.5}", 1)), "1.5");
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 0.1}", 1)), "0.1");
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 9007199254740993}", 1)),
                       "9007199254740993"); /* integers are read exactly, not through a double */
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 12345678901234567890}", 1)),
                       "1.2345678901234567e+19");
    expect_written_key(state, key(state, op, load(state, "x", "{\"k\": 1e20}", 1)), "1e+20");
}

static void test_key_by_field_reads_the_value(void **state)
{
    const sl_op_t *op = op_of(state, "s.stream('in'):key_by('user'):to('out')\n", SL_OP_KEY_BY);
    int out = -1;
    expect_written_key(state, key(state, op, load(state, "k1", SUBJECT, 1)), "ann");
    assert_int_equal(sl_vm_call_key(vm_of(state), op, load(state, "k", "{\"n\": 1}", 1), &out),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(),
                        "key_by (script.lua:2): the value has no field 'user' (or it is null)");
    assert_int_equal(sl_vm_call_key(vm_of(state), op, load(state, "k", "\"text\"", 1), &out),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(),
                        "key_by (script.lua:2): the value is 'text', not a JSON object with the "
                        "field 'user'");
}

static void test_key_by_nil_is_an_error(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):key_by(function(r) return r.value.nope end):to('out')\n",
              SL_OP_KEY_BY);
    int out = -1;
    assert_int_equal(sl_vm_call_key(vm_of(state), op, load(state, "k", SUBJECT, 1), &out),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(), "key_by (script.lua:2): no key: got nil");
}

/* ---- branch, peek, timestamp ------------------------------------------------------ */

static void test_branch_picks_the_first_match_in_name_order(void **state)
{
    const sl_op_t *op = op_of(state,
                              "local b = s.stream('in'):branch{\n"
                              "  small = function(r) return r.value.n < 10 end,\n"
                              "  big = function(r) return r.value.n > 100 end,\n"
                              "  any = function(r) return r.value.n == 7 end}\n"
                              "b.big:to('out')\n",
                              SL_OP_BRANCH);
    int branch = -2;
    assert_int_equal(
        sl_vm_call_branch(vm_of(state), op, load(state, "k", "{\"n\": 3}", 1), &branch), 0);
    assert_int_equal(branch, 2); /* any, big, small */
    assert_int_equal(
        sl_vm_call_branch(vm_of(state), op, load(state, "k", "{\"n\": 7}", 1), &branch), 0);
    assert_int_equal(branch, 0);
    assert_int_equal(
        sl_vm_call_branch(vm_of(state), op, load(state, "k", "{\"n\": 500}", 1), &branch), 0);
    assert_int_equal(branch, 1);
    assert_int_equal(
        sl_vm_call_branch(vm_of(state), op, load(state, "k", "{\"n\": 50}", 1), &branch), 0);
    assert_int_equal(branch, -1);
}

static void test_branch_error_names_the_branch(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):branch{big = function(r) error('bad') end}.big:to('out')\n",
              SL_OP_BRANCH);
    int branch;
    assert_int_equal(sl_vm_call_branch(vm_of(state), op, load(state, "k", SUBJECT, 1), &branch),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(), "branch 'big' (script.lua:2): script.lua:2: bad");
}

static void test_peek_runs_for_its_side_effects(void **state)
{
    const sl_op_t *peek = op_of(state,
                                "s.stream('in')\n"
                                "  :peek(function(r) seen = (seen or 0) + r.value.n end)\n"
                                "  :filter(function(r) return seen == 6 end):to('out')\n",
                                SL_OP_PEEK);
    const sl_op_t *check = peek + 1;
    int slot = load(state, "k", SUBJECT, 1);
    assert_int_equal(sl_vm_call_peek(vm_of(state), peek, slot), 0);
    assert_int_equal(filter(state, check, slot), 0);
    assert_int_equal(sl_vm_call_peek(vm_of(state), peek, slot), 0);
    assert_int_equal(filter(state, check, slot), 1);
}

static void test_timestamp_function_sets_the_event_time(void **state)
{
    const sl_op_t *source =
        op_of(state,
              "s.stream('in', {timestamp = function(r) return r.value.at end})\n"
              "  :filter(function(r) return r.ts == 1234 end):to('out')\n",
              SL_OP_SOURCE);
    int64_t ts = 0;
    int slot = load(state, "k", "{\"at\": 1234}", 1);
    assert_int_equal(sl_vm_call_timestamp(vm_of(state), source, slot, &ts), 0);
    assert_int_equal(ts, 1234);
    assert_int_equal(get(state, slot).timestamp, 1234);
    assert_int_equal(filter(state, source + 1, slot), 1);
    slot = load(state, "k", "{\"at\": \"noon\"}", 1);
    assert_int_equal(sl_vm_call_timestamp(vm_of(state), source, slot, &ts), SL_EINVALID);
    assert_string_equal(sl_error_detail(), "timestamp (script.lua:2): the timestamp must be an "
                                           "integer number of ms, got 'noon'");
}

/* ---- errors and limits --------------------------------------------------------------- */

static void test_user_error_names_the_op_and_the_message(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in')\n"
                              "  :map(function(r)\n"
                              "    return r.value.missing.field\n"
                              "  end):to('out')\n",
                              SL_OP_MAP);
    expect_map_error(state, op, load(state, "k", SUBJECT, 1),
                     "map (script.lua:3): script.lua:4: attempt to index a nil value (field "
                     "'missing')");
}

static void test_runaway_function_hits_the_limit_and_the_vm_goes_on(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):filter(function(r)\n"
                              "  if r.value.n == 0 then while true do end end\n"
                              "  return true\n"
                              "end):to('out')\n",
                              SL_OP_FILTER);
    int keep = -1;
    assert_int_equal(sl_vm_call_filter(vm_of(state), op, load(state, "k", "{\"n\": 0}", 1), &keep),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(), "filter (script.lua:2): script.lua:3: instruction limit "
                                           "exceeded (10000000 instructions)");
    assert_int_equal(filter(state, op, load(state, "k", "{\"n\": 1}", 1)), 1);
}

static void test_memory_hog_hits_the_cap_and_the_vm_goes_on(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):map(function(r)\n"
                              "  if r.value.n == 0 then return string.rep('x', 1e9) end\n"
                              "  return r\n"
                              "end):to('out')\n",
                              SL_OP_MAP);
    expect_map_error(state, op, load(state, "k", "{\"n\": 0}", 1),
                     "map (script.lua:2): script.lua:3: memory limit exceeded (67108864 bytes)");
    expect_written_value(state, map(state, op, load(state, "k", "{\"n\": 1}", 1)), "{\"n\":1}");
}

static void test_dsl_is_refused_while_records_flow(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) return s.stream('x') end):to('out')\n", SL_OP_MAP);
    expect_map_error(state, op, load(state, "k", SUBJECT, 1),
                     "map (script.lua:2): script.lua:2: the sluice DSL works only while the script "
                     "is compiled");
}

static void test_batch_reset_frees_every_slot(void **state)
{
    for (int i = 0; i < 3000; i++)
        assert_int_equal(load(state, "k", SUBJECT, 1), i);
    sl_vm_batch_reset(vm_of(state));
    assert_int_equal(load(state, "k", SUBJECT, 1), 0);
    expect_written_value(state, 0, SUBJECT);
}

/* A reset lets go of the Lua values the batch's slots held (the records
 * made and their tables): after a full collection their memory is free. */
static void test_batch_reset_lets_the_batchs_values_go(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):map(function(r) return {s = string.rep('x', 20000)} end):to('out')\n",
              SL_OP_MAP);
    sl_vm_t *vm = vm_of(state);
    lua_gc(vm->L, LUA_GCCOLLECT);
    size_t before = sl_vm_memory(vm);
    for (int i = 0; i < 200; i++) {
        int loaded = load(state, "k", SUBJECT, 1);
        sl_slot_push(vm->L, vm, loaded); /* r as a table too */
        lua_pop(vm->L, 1);
        map(state, op, loaded);
    }
    lua_gc(vm->L, LUA_GCCOLLECT);
    assert_true(sl_vm_memory(vm) > before + 200 * 20000); /* held by the batch */
    sl_vm_batch_reset(vm);
    lua_gc(vm->L, LUA_GCCOLLECT);
    assert_true(sl_vm_memory(vm) < before + (1 << 20));
}

static void test_warm_batches_keep_memory_flat(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) return {n = r.value.n} end):to('out')\n", SL_OP_MAP);
    size_t after_first = 0;
    for (int batch = 0; batch < 50; batch++) {
        for (int i = 0; i < 1000; i++)
            get(state, map(state, op, load(state, "k", SUBJECT, 1)));
        sl_vm_batch_reset(vm_of(state));
        if (batch == 0)
            after_first = sl_vm_memory(vm_of(state));
    }
    assert_true(sl_vm_memory(vm_of(state)) < 2 * after_first + (1 << 20));
}

/* Fails every allocation from the nth on during load, map and get: each
 * step fails with -ENOMEM or works, and the VM works afterwards. The value
 * is raw: lua-cjson 2.1 leaks its buffer when the process runs out of
 * memory inside decode (json.c), which the sanitizer build would report. */
static void test_out_of_memory_during_calls_is_enomem(void **state)
{
    const sl_op_t *op = op_of(
        state, "s.stream('in'):map(function(r) return {u = r.value} end):to('out')\n", SL_OP_MAP);
    sl_vm_t *vm = vm_of(state);
    for (long n = 0; n < 200; n++) {
        sl_record_t rec = tu_record("k", "ann", 1), out;
        sl_vm_origin_t origin = {"clicks", 0, 0, 0};
        int slot, made;
        sl_alloc_fail_after(n);
        int rc = sl_vm_record_load(vm, &rec, &origin, &slot);
        if (rc == 0)
            rc = sl_vm_call_map(vm, op, slot, &made);
        if (rc == 0)
            rc = sl_vm_record_get(vm, made, &out);
        sl_alloc_fail_after(-1);
        if (rc != 0 && rc != -ENOMEM)
            fail_msg("allocation %ld: %s", n, sl_error_detail());
        sl_vm_batch_reset(vm);
    }
    expect_written_value(state, map(state, op, load(state, "k", "ann", 0)), "{\"u\":\"ann\"}");
}

/* A small value that decodes into more than the cap allows: loading only
 * checks the text; the function that reads the value fails on the cap,
 * nothing leaks (the sanitizer build checks), and the VM goes on. */
static void test_record_decoding_past_the_cap_is_an_error(void **state)
{
    (void)state;
    sl_vm_t *vm;
    sl_dag_t *dag;
    sl_vm_limits_t limits = {.memory_bytes = 4 << 20};
    static char value[300002];
    static const char script[] = HEADER "s.stream('in'):filter(function(r) return #r.value > 0 end)"
                                        ":to('out')\n";
    sl_vm_origin_t origin = {"clicks", 2, 1, 0};
    int slot = -1, keep = -1;
    assert_int_equal(sl_vm_new(&limits, &vm), 0);
    assert_int_equal(sl_vm_compile(vm, "script.lua", script, strlen(script), &dag), 0);
    const sl_op_t *filter_op = &dag->ops[1];
    value[0] = '[';
    for (int i = 0; i < 99999; i++)
        memcpy(value + 1 + 3 * i, "[],", 3);
    memcpy(value + 1 + 3 * 99999, "[]]", 3);
    sl_record_t rec = tu_record("k", value, 1);
    rec.offset = 17;
    assert_int_equal(sl_vm_record_load(vm, &rec, &origin, &slot), 0);
    assert_int_equal(sl_vm_call_filter(vm, filter_op, slot, &keep), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "memory limit exceeded (4194304 bytes)"));
    sl_vm_batch_reset(vm);
    rec = tu_record("k", "[[], []]", 1);
    assert_int_equal(sl_vm_record_load(vm, &rec, &origin, &slot), 0);
    assert_int_equal(sl_vm_call_filter(vm, filter_op, slot, &keep), 0);
    assert_int_equal(keep, 1);
    sl_dag_free(dag);
    sl_vm_free(vm);
}

static void test_value_with_a_huge_encoding_is_refused(void **state)
{
    const sl_op_t *op = op_of(state,
                              "s.stream('in'):map(function(r)\n"
                              "  local big, list = string.rep('x', 1e6), {}\n"
                              "  for i = 1, 100 do list[i] = big end\n"
                              "  return list\n"
                              "end):to('out')\n",
                              SL_OP_MAP);
    sl_record_t out;
    int slot = map(state, op, load(state, "k", SUBJECT, 1));
    assert_int_equal(sl_vm_record_get(vm_of(state), slot, &out), SL_EINVALID);
    assert_string_equal(sl_error_detail(), "map (script.lua:2): cannot write the record: the "
                                           "value's JSON text is over 67108864 bytes");
}

/* ---- route ------------------------------------------------------------------------ */

static sl_vm_route_t route(void **state, const sl_op_t *op, int slot)
{
    sl_vm_route_t out;
    if (sl_vm_call_route(vm_of(state), op, slot, &out) != 0)
        fail_msg("%s", sl_error_detail());
    return out;
}

static void expect_header(const sl_header_t *h, const char *name, const char *value)
{
    expect_bytes(h->name, h->name_len, name);
    expect_bytes(h->value, h->value_len, value);
}

static void test_route_functions_make_key_priority_and_sorted_headers(void **state)
{
    const sl_op_t *op =
        op_of(state,
              "s.stream('in'):route('e', {key = function(r) return 'task.' .. r.value.user end,\n"
              "  priority = function(r) return r.value.n * 2 end,\n"
              "  headers = function(r) return {zone = 'eu', n = r.value.n, user = r.value.user,\n"
              "                                big = 2.0} end})\n",
              SL_OP_ROUTE);
    sl_vm_route_t m = route(state, op, load(state, "k1", SUBJECT, 1));
    assert_true(m.has_key);
    expect_bytes((const uint8_t *)m.key, (int32_t)m.key_len, "task.ann");
    assert_int_equal(m.priority, 6);
    assert_true(m.has_headers);
    assert_int_equal(m.header_count, 4);
    expect_header(&m.headers[0], "big", "2"); /* integral numbers are integers */
    expect_header(&m.headers[1], "n", "3");
    expect_header(&m.headers[2], "user", "ann");
    expect_header(&m.headers[3], "zone", "eu");
}

static void test_route_key_field_reads_the_value(void **state)
{
    const sl_op_t *op = op_of(state, "s.stream('in'):route('', {key = 'n'})\n", SL_OP_ROUTE);
    sl_vm_route_t m = route(state, op, load(state, "k1", SUBJECT, 1));
    expect_bytes((const uint8_t *)m.key, (int32_t)m.key_len, "3");
    assert_false(m.has_headers);
    assert_int_equal(m.priority, 0);
    assert_int_equal(sl_vm_call_route(vm_of(state), op, load(state, "k", "{\"m\": 1}", 1), &m),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(),
                        "route (script.lua:2): the value has no field 'n' (or it is null)");
}

static void test_route_without_options_leaves_the_record_its_key_and_headers(void **state)
{
    const sl_op_t *op = op_of(state, "s.stream('in'):route('e')\n", SL_OP_ROUTE);
    sl_vm_route_t m = route(state, op, load(state, "k1", SUBJECT, 1));
    assert_false(m.has_key);
    assert_false(m.has_headers);
    assert_int_equal(m.priority, 0);
}

/* Expects the route call on a record of SUBJECT to fail with message. */
static void expect_route_error(void **state, const char *options, const char *message)
{
    char script[512];
    sl_vm_route_t m;
    snprintf(script, sizeof script, "s.stream('in'):route('e', {%s})\n", options);
    const sl_op_t *op = op_of(state, script, SL_OP_ROUTE);
    assert_int_equal(sl_vm_call_route(vm_of(state), op, load(state, "k", SUBJECT, 1), &m),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(), message);
    sl_dag_free(((fixture_t *)*state)->dag);
    ((fixture_t *)*state)->dag = NULL;
    /* the VM goes on */
    op = op_of(state, "s.stream('in'):route('e', {key = 'user'})\n", SL_OP_ROUTE);
    m = route(state, op, load(state, "k", SUBJECT, 1));
    expect_bytes((const uint8_t *)m.key, (int32_t)m.key_len, "ann");
    sl_dag_free(((fixture_t *)*state)->dag);
    ((fixture_t *)*state)->dag = NULL;
}

static void test_bad_routing_results_are_errors_naming_the_option(void **state)
{
    expect_route_error(state, "key = function(r) return nil end",
                       "route (script.lua:2): key: returned nil (return the routing key: a "
                       "string or an integer)");
    expect_route_error(state, "key = function(r) return 1.5 end",
                       "route (script.lua:2): key: the routing key must be a string or an "
                       "integer, got 1.5");
    expect_route_error(state, "key = function(r) return string.rep('w', 256) end",
                       "route (script.lua:2): key: the routing key is 256 bytes (at most 255)");
    expect_route_error(state, "priority = function(r) return 256 end",
                       "route (script.lua:2): priority: returned 256 (return an integer 0 to "
                       "255)");
    expect_route_error(state, "priority = function(r) return -1 end",
                       "route (script.lua:2): priority: returned -1 (return an integer 0 to "
                       "255)");
    expect_route_error(state, "priority = function(r) return '3' end",
                       "route (script.lua:2): priority: returned '3' (return an integer 0 to "
                       "255)");
    expect_route_error(state, "priority = function(r) end",
                       "route (script.lua:2): priority: returned nil (return an integer 0 to "
                       "255)");
    expect_route_error(state, "headers = function(r) return 'h' end",
                       "route (script.lua:2): headers: returned 'h' (return a table of name = "
                       "value, {} for none)");
    expect_route_error(state, "headers = function(r) return {'a'} end",
                       "route (script.lua:2): headers: names must be non-empty strings, got 1");
    expect_route_error(state, "headers = function(r) return {[''] = 'a'} end",
                       "route (script.lua:2): headers: names must be non-empty strings, got ''");
    expect_route_error(state, "headers = function(r) return {a = {}} end",
                       "route (script.lua:2): headers: a value must be a string or an integer, "
                       "got a table");
    expect_route_error(state,
                       "headers = function(r) local h = {} for i = 1, 65 do h['h' .. i] = 'v' "
                       "end return h end",
                       "route (script.lua:2): headers: returned 65 headers (at most 64)");
    expect_route_error(state, "key = function(r) return r.nope.x end",
                       "route (script.lua:2): script.lua:2: attempt to index a nil value (field "
                       "'nope')");
}

static void test_route_headers_may_be_the_record_headers(void **state)
{
    const sl_op_t *op =
        op_of(state, "s.stream('in'):route('e', {headers = function(r) return r.headers end})\n",
              SL_OP_ROUTE);
    sl_vm_route_t m = route(state, op, load(state, "k1", SUBJECT, 1));
    assert_int_equal(m.header_count, 2); /* sorted, the null value kept */
    expect_header(&m.headers[0], "empty", NULL);
    expect_header(&m.headers[1], "trace", "t1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_loaded_record_is_a_table_with_every_field),
        T(test_json_integers_become_lua_integers),
        T(test_raw_value_is_a_string),
        T(test_null_key_and_tombstone_are_nil),
        T(test_loaded_record_round_trips_byte_for_byte),
        T(test_invalid_json_is_an_error_for_that_record),
        T(test_borrowed_records_are_not_copied),
        T(test_every_kind_of_invalid_json_is_refused),
        T(test_values_are_written_as_json_exactly),
        T(test_values_json_cannot_hold_are_refused),
        T(test_valid_json_of_every_shape_reads_back),
        T(test_lazy_records_behave_like_tables),
        T(test_setting_an_unread_field_to_nil_sticks),
        T(test_records_kept_past_their_batch_fail_clearly),
        T(test_simple_filters_answer_as_lua_does),
        T(test_simple_key_functions_key_as_lua_does),
        T(test_straight_line_filters_answer_as_lua_does),
        T(test_straight_line_maps_write_what_lua_writes),
        T(test_straight_line_join_functions_write_what_lua_writes),
        T(test_native_outputs_at_the_length_limit),
        T(test_a_filter_sees_what_an_earlier_op_changed),
        T(test_a_key_function_sees_what_an_earlier_op_changed),
        T(test_map_value_keeps_key_ts_and_headers),
        T(test_map_string_passes_through_and_numbers_are_json),
        T(test_map_record_table_sets_every_field),
        T(test_map_record_table_fields_default),
        T(test_map_record_tables_are_told_by_their_keys),
        T(test_map_returning_changed_r_writes_the_change),
        T(test_map_keeps_a_tombstone_a_tombstone),
        T(test_map_returning_nil_is_an_error),
        T(test_map_returning_a_function_is_an_error),
        T(test_bad_record_table_fields_are_errors),
        T(test_value_that_cannot_be_encoded_fails_on_get),
        T(test_flat_map_makes_one_record_per_item),
        T(test_flat_map_must_return_a_list),
        T(test_key_by_function_rekeys_and_keeps_the_value_bytes),
        T(test_number_keys_become_decimal_text),
        T(test_key_by_field_reads_the_value),
        T(test_key_by_nil_is_an_error),
        T(test_branch_picks_the_first_match_in_name_order),
        T(test_branch_error_names_the_branch),
        T(test_peek_runs_for_its_side_effects),
        T(test_timestamp_function_sets_the_event_time),
        T(test_user_error_names_the_op_and_the_message),
        T(test_runaway_function_hits_the_limit_and_the_vm_goes_on),
        T(test_memory_hog_hits_the_cap_and_the_vm_goes_on),
        T(test_dsl_is_refused_while_records_flow),
        T(test_batch_reset_frees_every_slot),
        T(test_long_strings_are_checked_at_every_position),
        T(test_the_fast_tokenizer_agrees_with_the_slow_one),
        T(test_long_json_texts_are_tokenized_either_way),
        T(test_batch_reset_lets_the_batchs_values_go),
        T(test_warm_batches_keep_memory_flat),
        T(test_out_of_memory_during_calls_is_enomem),
        T(test_record_decoding_past_the_cap_is_an_error),
        T(test_value_with_a_huge_encoding_is_refused),
        T(test_route_functions_make_key_priority_and_sorted_headers),
        T(test_route_key_field_reads_the_value),
        T(test_route_without_options_leaves_the_record_its_key_and_headers),
        T(test_bad_routing_results_are_errors_naming_the_option),
        T(test_route_headers_may_be_the_record_headers),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

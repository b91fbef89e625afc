/*
 * fuzz_native.c - libFuzzer target: user functions run without Lua
 * (lua/native.c) against the same functions run by Lua.
 *
 * Input layout (a raw 0x00 byte is never part of valid JSON, so it
 * separates without loss):
 *
 *   value [0x00 partner [0x00 key]]
 *
 *   value    the record value every function runs on
 *   partner  the join partner's value (absent, or not valid JSON: the
 *            value is its own partner)
 *   key      the records' key bytes, any bytes (absent: "k"); a single
 *            0x00 byte stands for a null key
 *
 * Every record is loaded as the unit tests load one (topic clicks,
 * partition 2, offset 17, ts 1000, two headers, a JSON origin); a value
 * that is not valid JSON is skipped.
 *
 * One VM compiles one script holding, for each function below, the
 * function and its twin: the same body after `local _ = next`, which
 * reads a global, so native.c does not take it and Lua runs it. Each
 * function runs on its own loads of the values (so one side's table never
 * shows to the other), and every op's answer must equal its twin's: the
 * same return code; for filters the same keep; for maps and joins the same
 * JSON members (object key order aside, at every depth), key, ts and
 * headers, and a record made natively with its tokens must have the ones
 * the tokenizer makes of its bytes; for key_by the same key and value
 * bytes. Each map and filter also runs (natively and in Lua) on the
 * value projected to the fields the function reads (lua/project.c: what a
 * key_by writes and a join buffers), which must be JSON and give the same
 * answer as the whole value. Anything else aborts, naming the function
 * and the bytes.
 *
 * The batch is reset after each input; then the VM's Lua memory after a
 * full collection, and its arena, must stay below fixed ceilings: what
 * one input leaves behind must not add up over a run.
 */
#include "lua/vm.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define INPUT_MAX     (64 << 10)          /* longer inputs are skipped */
#define LUA_SLACK     ((size_t)256 << 10) /* Lua bytes an input may leave over the start */
#define ARENA_CEILING ((size_t)16 << 20)
#define SCRIPT_MAX    (32 << 10)
#define LUA_RUNS      "local _ = next "

/* Filters: the function's body. */
static const char *const filters[] = {
    "return r.value.n > 1 and r.value.kind == 'click'",
    "return r.value.kind == 'a' or r.value.kind == 'click' or r.value.n == 0",
    "return not r.value.flag",
    "return r.value.flag == nil or r.value.user ~= nil",
    "return r.value.n // 10 == 1 or r.value.n // r.value.m == -3",
    "return r.value.m % 2 == 1 or r.value.n % -2 == -0.5 or r.value.n % r.value.m > 0",
    "return r.value.n / 4 > 2.5 or r.value.n / r.value.m <= -1",
    "return r.value.n * 2 + 1 >= 21 and r.value.n - r.value.m ~= 7",
    "return -r.value.n < 0 or -r.value.price == 0",
    "return r.value.n ^ 2 > 50 or r.value.m ^ 0.5 < 3",
    "return r.value.n == r.value.m or r.value.n ~= r.value.price",
    "return r.value.n < r.value.m or r.value.price <= r.value.n",
    "return r.value.kind < 'm' or r.value.user >= r.value.kind",
    "return r.value.kind == r.value.other or r.value.user == r.value.kind",
    "return r.value.nested ~= nil and r.value.nested.x == 1",
    "return r.value.nested and r.value.nested.y.z == 'deep'",
    "return #r.value.kind == 5 or #r.value.user > 3",
    "return (r.value.n or 0) > 3 and (r.value.m or r.value.price) ~= nil",
    "return r.ts > 500 and r.key == 'k' and r.partition == 2 and r.offset == 17",
    "return r.value.n == 9007199254740993 or r.value.price == 1e300 or r.value.m == -0.0",
    "return r.value.n + 1 > r.value.n and r.value.n - r.value.n == 0",
    "return r.value",
    "return r.value.n >= -3 and r.value.n <= 200 and r.value.m > -1.5 and r.value.m < 1e15",
    "return r.value.n * 3 == r.value.n + r.value.n + r.value.n",
    "return r.value.price // 0.5 == 3 or r.value.price % 0 ~= r.value.price",
    "return r.value.n // 0 == 1 or r.value.n % 0 == 1",
    "return r.value.user == 'ann' and not (r.value.price > 10)",
    "return #r.key + r.ts - r.offset * 2 == 967 or r.key == r.value.user",
    "return r.value.nested.x == r.value.n",
    "return r.headers ~= nil and r.topic == 'clicks'",
    "return r.value.n == 3 or r.value.n == 3.0 or r.value.n == 1e20 or r.value.n == 'x'",
    "return r.value.n > 127 or r.value.n < -128 or r.value.n >= 65536.5",
    "return r.value.n, r.value.m",
    "if r.value.flag then return true end",
    "if r.value.n == nil then return false end local n = r.value.n local m = n return m > 2",
    "local x, y if r.value.kind then x = r.value.kind else y = r.value.n end return x or y",
};

/* Maps: the function's body. */
static const char *const maps[] = {
    "return {u = r.value.user, p = r.value.price, f = r.value.flag}",
    "return {total = r.value.price * 2, label = 'fixed', ts = r.ts, k = r.key}",
    "return {value = r.value.user}",
    "return {value = r.value.user, ts = r.ts}",
    "return {a = r.value.n, a = r.value.user}",
    "return {x = r.value.nested and r.value.nested.x, n = r.value.n // 2, big = r.value.n > 8}",
    "local t = {n = r.value.n} if r.value.flag then t.flag = 1 else t.f = 0 end return t",
    "local t = {u = r.value.user, n = 1} t.n = nil t.m = t.u return t",
    "local t = {} t.a = 1 t.b = r.value.kind t.a = nil t.c = r.value.n t.a = 3 return t",
    "return {obj = r.value.nested, y = r.value.nested.y}",
    "return {s = 'a\"b', n = r.value.n, e = ''}",
    "return {d = r.value.n / r.value.m, e = r.value.n % r.value.m, q = r.value.n // r.value.m}",
    "return {p = r.value.m ^ 2, u = -r.value.n, e = r.value.n % -2, f = r.value.n % 2.5}",
    "return {neg = -r.value.price, q = r.value.price // -3, h = r.value.price ^ 0.5}",
    "return {}",
    "return {both = r.value.user and r.value.kind or 'none', len = #r.value.kind}",
    "return {key = r.value.user, ts = r.value.n}",
    "return {value = r.value, partition = r.partition, offset = r.offset}",
    "return r.value.n",
    ("return {a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8, i = 9, j = 10, k = 11,\n"
     "        l = 12, m = 13, n = 14, o = 15, p = r.value.n, q = r.value.user}"),
    "return {t = true, f = false, z = 0, m = -0.0, h = 0.1, big = 1e300, none = r.value.n == nil}",
    "local t = {a = r.value.n} local u = {b = 1} return t",
    "local u, k = r.value.user, r.value.kind return {u = u, k = k, uk = u == k, v = u ~= nil}",
};

/* Key functions: the native op's argument of :key_by(), by function or
 * field name; the twin is `function(r) LUA_RUNS return r.value.<field> end`. */
static const struct {
    const char *by, *field;
} keys[] = {
    {"function(r) return r.value.user end", "user"},
    {"'user'", "user"},
    {"function(r) return r.value.n end", "n"},
    {"'n'", "n"},
};

/* Join functions of (a, b), by the join they are in: stream-table (b: the
 * table's value; a left join), stream-stream (b: the other record; an
 * outer join, so either side may be nil) and table-table (both values; a
 * left join). */
enum { STREAM_TABLE, STREAM_STREAM, TABLE_TABLE };
static const char *const join_calls[][2] = {
    [STREAM_TABLE] = {"c:join(t, function(a, b) ", " end, {type = 'left'})"},
    [STREAM_STREAM] = {"c:join(v, function(a, b) ", " end, {type = 'outer', within = '5s'})"},
    [TABLE_TABLE] = {"t:join(u, function(a, b) ", " end, {type = 'left'})"},
};
static const struct {
    int kind;
    const char *body;
} joins[] = {
    {STREAM_TABLE, "return {name = b.user, n = b.n, id = a.value.n, ts = a.ts, k = a.key}"},
    {STREAM_TABLE, ("if b == nil then return {alone = a.value.n} end\n"
                    "return {n = a.value.n + b.m, s = b.user, same = b.kind == a.value.kind}")},
    {STREAM_TABLE, "return {x = b and b.n or a.value.n, y = not b}"},
    {STREAM_TABLE, "return {y = not b, n = a.value.n}"},
    {STREAM_TABLE, "local x = b or a.value.n return {x = x}"},
    {STREAM_STREAM, ("return {x = a.value.user, y = b and b.value.user, d = b and b.ts - a.ts,\n"
                     "        p = b and b.partition}")},
    {STREAM_STREAM, ("if a == nil then return {only = b.value.n} end\n"
                     "return {sum = a.value.n + (b and b.value.m or 0), k = b and b.key}")},
    {TABLE_TABLE, "return {x = a.n, y = b.m, same = a.user == b.user, k = a.kind}"},
};

#define COUNT(a) (sizeof(a) / sizeof *(a))

/* The ops of one kind, in script order: native, twin, native, twin... */
typedef struct ops {
    const sl_op_t *filters[2 * COUNT(filters)];
    const sl_op_t *maps[2 * COUNT(maps)];
    const sl_op_t *keys[2 * COUNT(keys)];
    const sl_op_t *joins[2 * COUNT(joins)];
} ops_t;

typedef struct piece {
    const uint8_t *data;
    size_t len;
} piece_t;

/* One input, split: the values the functions run on (1 or 2) and the key
 * (NULL data: a null key). */
typedef struct input {
    piece_t values[2];
    int count;
    piece_t key;
} input_t;

static sl_vm_t *vm;
static sl_dag_t *dag;
static ops_t ops;
static size_t lua_ceiling;
static const input_t *current; /* for messages */

static const sl_header_t headers[] = {
    {(const uint8_t *)"trace", 5, (const uint8_t *)"t1", 2},
    {(const uint8_t *)"empty", 5, NULL, -1},
};

/* ---- the script ------------------------------------------------------------ */

typedef struct script {
    char text[SCRIPT_MAX];
    size_t len;
    int sinks;
} script_t;

/* Appends head, body and tail (an op's call) and a sink; a twin's body
 * comes after LUA_RUNS. */
static void script_put(script_t *s, const char *head, int twin, const char *body, const char *tail)
{
    int n = snprintf(s->text + s->len, sizeof s->text - s->len, "%s%s%s%s:to('o%d')\n", head,
                     twin ? LUA_RUNS : "", body, tail, s->sinks++);
    CHECK(n > 0 && (size_t)n < sizeof s->text - s->len);
    s->len += (size_t)n;
}

/* Each function, then its twin that Lua runs. */
static void script_write(script_t *s)
{
    char body[64];
    s->len = (size_t)snprintf(s->text, sizeof s->text,
                              "local s = require('sluice')\nlocal c = s.stream('in')\n"
                              "local v = s.stream('views')\nlocal t = s.table('people')\n"
                              "local u = s.table('scores')\n");
    for (int twin = 0; twin < 2 * (int)COUNT(filters); twin++)
        script_put(s, "c:filter(function(r) ", twin % 2, filters[twin / 2], " end)");
    for (int twin = 0; twin < 2 * (int)COUNT(maps); twin++)
        script_put(s, "c:map(function(r) ", twin % 2, maps[twin / 2], " end)");
    for (size_t i = 0; i < COUNT(keys); i++) {
        snprintf(body, sizeof body, "return r.value.%s", keys[i].field);
        script_put(s, "c:key_by(", 0, keys[i].by, ")");
        script_put(s, "c:key_by(function(r) ", 1, body, " end)");
    }
    for (int twin = 0; twin < 2 * (int)COUNT(joins); twin++) {
        const char *const *call = join_calls[joins[twin / 2].kind];
        script_put(s, call[0], twin % 2, joins[twin / 2].body, call[1]);
    }
}

/* The ops of kind in script order into out; their count must be n. */
static void collect(sl_op_kind_t kind, const sl_op_t **out, size_t n)
{
    size_t found = 0;
    for (int i = 0; i < dag->op_count; i++)
        if (dag->ops[i].kind == kind) {
            CHECK(found < n);
            out[found++] = &dag->ops[i];
        }
    CHECK(found == n);
}

/* Every function is taken by native.c (or read by field), no twin is. */
static void check_recognised(void)
{
    for (size_t i = 0; i < 2 * COUNT(filters); i++)
        CHECK((ops.filters[i]->native != NULL) == (i % 2 == 0));
    for (size_t i = 0; i < 2 * COUNT(maps); i++)
        CHECK((ops.maps[i]->native != NULL) == (i % 2 == 0));
    for (size_t i = 0; i < 2 * COUNT(keys); i++)
        CHECK((ops.keys[i]->native_key || ops.keys[i]->field) == (i % 2 == 0));
    for (size_t i = 0; i < COUNT(ops.joins); i++)
        CHECK((ops.joins[i]->native != NULL) == (i % 2 == 0));
}

/* The native ops do answer: a plain record is kept, and mapped, without
 * building its table (else every check below would compare Lua with Lua). */
static void check_native_answers(void)
{
    static const char value[] = "{\"n\":10,\"m\":3,\"kind\":\"click\",\"user\":\"ann\"}";
    sl_record_t rec = {.key = (const uint8_t *)"k", .key_len = 1, .timestamp = 1000};
    sl_vm_origin_t origin = {"clicks", 2, 1, 0};
    int slot = -1, keep = -1, out = -1;
    rec.value = (const uint8_t *)value;
    rec.value_len = (int32_t)strlen(value);
    CHECK(sl_vm_record_load(vm, &rec, &origin, &slot) == 0);
    CHECK(sl_vm_call_filter(vm, ops.filters[0], slot, &keep) == 0 && keep == 1);
    CHECK(sl_vm_call_map(vm, ops.maps[0], slot, &out) == 0);
    CHECK(!vm->slots[slot].has_table && vm->slots[out].kind == SL_SLOT_LOADED);
    sl_vm_batch_reset(vm);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static script_t script;
    CHECK(sl_vm_new(NULL, &vm) == 0);
    script_write(&script);
    if (sl_vm_compile(vm, "fuzz.lua", script.text, script.len, &dag) != 0) {
        fprintf(stderr, "%s\n", sl_error_detail());
        abort();
    }
    collect(SL_OP_FILTER, ops.filters, COUNT(ops.filters));
    collect(SL_OP_MAP, ops.maps, COUNT(ops.maps));
    collect(SL_OP_KEY_BY, ops.keys, COUNT(ops.keys));
    collect(SL_OP_JOIN, ops.joins, COUNT(ops.joins));
    check_recognised();
    check_native_answers();
    lua_gc(vm->L, LUA_GCCOLLECT);
    lua_ceiling = sl_vm_memory(vm) + LUA_SLACK;
    return 0;
}

/* ---- reporting ----------------------------------------------------------------- */

static void print_bytes(const char *name, const uint8_t *data, size_t len)
{
    fprintf(stderr, "  %s: \"", name);
    for (size_t i = 0; i < len; i++)
        if (data[i] >= 0x20 && data[i] < 0x7f && data[i] != '"' && data[i] != '\\')
            fputc(data[i], stderr);
        else
            fprintf(stderr, "\\x%02x", data[i]);
    fprintf(stderr, "\"\n");
}

/* Aborts: native and Lua answered function `body` differently. */
static void disagree(const char *kind, const char *body, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void disagree(const char *kind, const char *body, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "native and Lua disagree: %s <%s>\n", kind, body);
    for (int v = 0; v < current->count; v++)
        print_bytes(v ? "partner" : "value", current->values[v].data, current->values[v].len);
    if (current->key.data)
        print_bytes("key", current->key.data, current->key.len);
    else
        fprintf(stderr, "  key: null\n");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- comparing outputs ------------------------------------------------------------ */

typedef struct text {
    char *data;
    size_t len, cap;
} text_t;

static void text_put(text_t *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->data = realloc(t->data, t->cap);
        CHECK(t->data);
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

static int by_text(const void *a, const void *b)
{
    const text_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int order = memcmp(x->data, y->data, n);
    return order ? order : (x->len > y->len) - (x->len < y->len);
}

static void canonical(const sl_jtok_t *base, const char *json, int at, text_t *out);

/* An object's members as "key:value" texts, sorted, so order is no matter. */
static void canonical_object(const sl_jtok_t *base, const char *json, int at, text_t *out)
{
    int n = base[at].size, child = at + 1;
    text_t *members = calloc((size_t)(n ? n : 1), sizeof *members);
    CHECK(members);
    for (int i = 0; i < n; i++) {
        const sl_jtok_t *key = &base[child];
        text_put(&members[i], json + key->start, (size_t)(key->end - key->start));
        text_put(&members[i], ":", 1);
        canonical(base, json, child + 1, &members[i]);
        child = base[child + 1].next;
    }
    qsort(members, (size_t)n, sizeof *members, by_text);
    text_put(out, "{", 1);
    for (int i = 0; i < n; i++) {
        text_put(out, members[i].data, members[i].len);
        text_put(out, ",", 1);
        free(members[i].data);
    }
    text_put(out, "}", 1);
    free(members);
}

/* The JSON value at token `at` as text in which objects' members are
 * sorted; scalars as they were written. */
static void canonical(const sl_jtok_t *base, const char *json, int at, text_t *out)
{
    const sl_jtok_t *t = &base[at];
    if (t->type == SL_JTOK_OBJECT) {
        canonical_object(base, json, at, out);
    } else if (t->type == SL_JTOK_ARRAY) {
        text_put(out, "[", 1);
        for (int i = 0, child = at + 1; i < t->size; i++, child = base[child].next) {
            canonical(base, json, child, out);
            text_put(out, ",", 1);
        }
        text_put(out, "]", 1);
    } else {
        text_put(out, t->type == SL_JTOK_STRING ? "\"" : "#", 1);
        text_put(out, json + t->start, (size_t)(t->end - t->start));
    }
}

/* A written value as canonical text: JSON with sorted members, anything
 * else as its bytes (tagged, so the two never meet). */
static void value_text(const sl_record_t *r, text_t *out)
{
    int doc = -1;
    if (r->value_len < 0) {
        text_put(out, "tombstone", 9);
    } else if (sl_json_tokenize(vm, (const char *)r->value, r->value_len, &doc) == 0) {
        canonical(vm->jtoks + vm->docs[doc].first, vm->docs[doc].text, 0, out);
    } else {
        text_put(out, "raw:", 4);
        text_put(out, (const char *)r->value, (size_t)r->value_len);
    }
}

static int same_bytes(const uint8_t *a, int32_t a_len, const uint8_t *b, int32_t b_len)
{
    return a_len == b_len && (a_len <= 0 || memcmp(a, b, (size_t)a_len) == 0);
}

static int same_headers(const sl_record_t *a, const sl_record_t *b)
{
    if (a->header_count != b->header_count)
        return 0;
    for (uint32_t h = 0; h < a->header_count; h++)
        if (!same_bytes(a->headers[h].name, a->headers[h].name_len, b->headers[h].name,
                        b->headers[h].name_len) ||
            !same_bytes(a->headers[h].value, a->headers[h].value_len, b->headers[h].value,
                        b->headers[h].value_len))
            return 0;
    return 1;
}

/* A record made with its tokens (a document: what later ops read without
 * Lua) has the tokens sl_json_tokenize makes of its bytes. */
static void expect_own_tokens(const char *kind, const char *body, int slot)
{
    const sl_slot_t *s = &vm->slots[slot];
    int doc = s->doc, again = -1;
    if (s->kind != SL_SLOT_LOADED || doc < 0)
        return;
    if (sl_json_tokenize(vm, (const char *)s->record.value, s->record.value_len, &again) != 0)
        disagree(kind, body, "its output %.*s is not valid JSON", (int)s->record.value_len,
                 s->record.value);
    const sl_jtok_t *made = vm->jtoks + vm->docs[doc].first;
    const sl_jtok_t *want = vm->jtoks + vm->docs[again].first;
    for (int32_t i = 0; i < want[0].next; i++)
        if (made[i].start != want[i].start || made[i].end != want[i].end ||
            made[i].size != want[i].size || made[i].next != want[i].next ||
            made[i].type != want[i].type || made[i].escaped != want[i].escaped)
            disagree(kind, body, "token %d of its output %.*s is not the tokenizer's", (int)i,
                     (int)s->record.value_len, s->record.value);
}

/* The records two ops made (rc_a: native, slot a; rc_b: Lua, slot b) are
 * the same: both failed, or the same members, key, ts and headers. */
static void expect_same_output(const char *kind, const char *body, int rc_a, int a, int rc_b, int b)
{
    sl_record_t ra, rb;
    text_t ta = {0}, tb = {0};
    rc_a = rc_a ? rc_a : sl_vm_record_get(vm, a, &ra);
    rc_b = rc_b ? rc_b : sl_vm_record_get(vm, b, &rb);
    if (rc_a != rc_b)
        disagree(kind, body, "return code %d natively, %d in Lua (%s)", rc_a, rc_b,
                 sl_error_detail());
    if (rc_a)
        return;
    expect_own_tokens(kind, body, a);
    value_text(&ra, &ta);
    value_text(&rb, &tb);
    if (by_text(&ta, &tb) != 0)
        disagree(kind, body, "natively %.*s\nin Lua   %.*s", (int)ra.value_len, ra.value,
                 (int)rb.value_len, rb.value);
    if (!same_bytes(ra.key, ra.key_len, rb.key, rb.key_len) || ra.timestamp != rb.timestamp ||
        !same_headers(&ra, &rb))
        disagree(kind, body, "key, ts or headers differ");
    free(ta.data);
    free(tb.data);
}

/* ---- running the functions --------------------------------------------------------- */

/* Loads value as a record of the input; 0, or the load's error. */
static int load(const piece_t *value, int *slot)
{
    sl_record_t rec = {.offset = 17, .timestamp = 1000, .headers = headers, .header_count = 2};
    sl_vm_origin_t origin = {"clicks", 2, 1, 0};
    rec.key = current->key.data;
    rec.key_len = current->key.data ? (int32_t)current->key.len : -1;
    rec.value = value->data;
    rec.value_len = (int32_t)value->len;
    return sl_vm_record_load(vm, &rec, &origin, slot);
}

/* Loads a value known to load. */
static int loaded(const piece_t *value)
{
    int slot = -1;
    CHECK(load(value, &slot) == 0);
    return slot;
}

static void check_filters(const piece_t *value)
{
    for (size_t i = 0; i < COUNT(filters); i++) {
        int keep_a = -1, keep_b = -1;
        int rc_a = sl_vm_call_filter(vm, ops.filters[2 * i], loaded(value), &keep_a);
        int rc_b = sl_vm_call_filter(vm, ops.filters[2 * i + 1], loaded(value), &keep_b);
        if (rc_a != rc_b || (rc_a == 0 && keep_a != keep_b))
            disagree("filter", filters[i], "%d/keep %d natively, %d/keep %d in Lua", rc_a, keep_a,
                     rc_b, keep_b);
    }
}

static void check_maps(const piece_t *value)
{
    for (size_t i = 0; i < COUNT(maps); i++) {
        int out_a = -1, out_b = -1;
        int rc_a = sl_vm_call_map(vm, ops.maps[2 * i], loaded(value), &out_a);
        int rc_b = sl_vm_call_map(vm, ops.maps[2 * i + 1], loaded(value), &out_b);
        expect_same_output("map", maps[i], rc_a, out_a, rc_b, out_b);
    }
}

/* The list of the fields op's function reads ("a,b,"), as compile.c
 * writes a key_by's keep; 0 if it may read any. */
static int reads_list(const sl_op_t *op, char *list, size_t size)
{
    const char *names[SL_OP_KEEP_MAX];
    size_t lens[SL_OP_KEEP_MAX], at = 0;
    int count = sl_native_reads(op->native, 0, names, lens, SL_OP_KEEP_MAX);
    for (int i = 0; i < count; i++) {
        if (lens[i] == 0 || memchr(names[i], ',', lens[i]) || !sl_json_plain(names[i], lens[i]) ||
            at + lens[i] + 2 > size)
            return 0;
        memcpy(list + at, names[i], lens[i]);
        at += lens[i];
        list[at++] = ',';
    }
    list[at] = '\0';
    return count >= 0;
}

/* A value projected to the fields a function reads (lua/project.c, what a
 * key_by writes and a join buffers) is JSON, says it keeps them, and the
 * function (natively and in Lua) answers on it as on the whole value. */
static void check_projected(const piece_t *value)
{
    char list[1024];
    for (size_t i = 0; i < COUNT(maps) + COUNT(filters); i++) {
        int is_map = i < COUNT(maps);
        const sl_op_t *native = is_map ? ops.maps[2 * i] : ops.filters[2 * (i - COUNT(maps))];
        const sl_op_t *lua = is_map ? ops.maps[2 * i + 1] : ops.filters[2 * (i - COUNT(maps)) + 1];
        const char *body = is_map ? maps[i] : filters[i - COUNT(maps)];
        sl_record_t rec;
        const char *kept;
        size_t kept_len;
        int projected = -1;
        if (!reads_list(native, list, sizeof list))
            continue;
        int rc = sl_vm_record_project(vm, loaded(value), list, &rec);
        CHECK(rc == 0 || rc == 1);
        if (rc == 1)
            continue;
        piece_t p = {rec.value, (size_t)rec.value_len};
        if (load(&p, &projected) != 0)
            disagree("projection", body, "%.*s is not JSON", (int)rec.value_len, rec.value);
        CHECK(sl_vm_value_keeps(rec.value, rec.value_len, list, &kept, &kept_len) == 1);
        for (int twin = 0; twin < 2; twin++) {
            const sl_op_t *op = twin ? lua : native;
            if (is_map) {
                int out_a = -1, out_b = -1;
                int rc_a = sl_vm_call_map(vm, op, loaded(value), &out_a);
                int rc_b = sl_vm_call_map(vm, op, loaded(&p), &out_b);
                expect_same_output("map on its projection", body, rc_a, out_a, rc_b, out_b);
            } else {
                int keep_a = -1, keep_b = -1;
                int rc_a = sl_vm_call_filter(vm, op, loaded(value), &keep_a);
                int rc_b = sl_vm_call_filter(vm, op, loaded(&p), &keep_b);
                if (rc_a != rc_b || (rc_a == 0 && keep_a != keep_b))
                    disagree("filter on its projection", body,
                             "%d/keep %d whole, %d/keep %d on %.*s", rc_a, keep_a, rc_b, keep_b,
                             (int)rec.value_len, rec.value);
            }
        }
    }
}

static void check_keys(const piece_t *value)
{
    for (size_t i = 0; i < COUNT(keys); i++) {
        int out_a = -1, out_b = -1;
        sl_record_t ra, rb;
        int rc_a = sl_vm_call_key(vm, ops.keys[2 * i], loaded(value), &out_a);
        int rc_b = sl_vm_call_key(vm, ops.keys[2 * i + 1], loaded(value), &out_b);
        if (rc_a != rc_b)
            disagree("key_by", keys[i].by, "%d natively, %d in Lua (%s)", rc_a, rc_b,
                     sl_error_detail());
        if (rc_a)
            continue;
        CHECK(sl_vm_record_get(vm, out_a, &ra) == 0 && sl_vm_record_get(vm, out_b, &rb) == 0);
        if (!same_bytes(ra.key, ra.key_len, rb.key, rb.key_len))
            disagree("key_by", keys[i].by, "key %.*s natively, %.*s in Lua", (int)ra.key_len,
                     ra.key, (int)rb.key_len, rb.key);
        if (!same_bytes(ra.value, ra.value_len, rb.value, rb.value_len))
            disagree("key_by", keys[i].by, "the value bytes differ");
    }
}

/* One join call, natively and in Lua: base and left take `left` (NULL:
 * base takes `right` and left is nil), right takes `right` (NULL: nil). */
static void check_join(size_t j, const char *body, const piece_t *left, const piece_t *right)
{
    int out[2] = {-1, -1}, rc[2];
    for (int twin = 0; twin < 2; twin++) {
        int l = left ? loaded(left) : -1, r = right ? loaded(right) : -1;
        rc[twin] =
            sl_vm_call_join(vm, ops.joins[2 * j + (size_t)twin], left ? l : r, l, r, &out[twin]);
    }
    expect_same_output("join", body, rc[0], out[0], rc[1], out[1]);
}

/* Every join function on (a, b) and (a, nil); an outer join also on
 * (nil, b). */
static void check_joins(const piece_t *a, const piece_t *b)
{
    for (size_t i = 0; i < COUNT(joins); i++) {
        check_join(i, joins[i].body, a, b);
        check_join(i, joins[i].body, a, NULL);
        if (joins[i].kind == STREAM_STREAM)
            check_join(i, joins[i].body, NULL, b);
    }
}

/* ---- the input ------------------------------------------------------------------------ */

/* Splits data at its first two 0x00 bytes (see the top of the file). */
static void split(const uint8_t *data, size_t size, input_t *in)
{
    static const uint8_t default_key[] = "k";
    const uint8_t *end = data + size, *cut = memchr(data, 0, size);
    memset(in, 0, sizeof *in);
    in->key.data = default_key;
    in->key.len = 1;
    in->values[0].data = data;
    in->values[0].len = cut ? (size_t)(cut - data) : size;
    in->count = 1;
    if (!cut)
        return;
    const uint8_t *partner = cut + 1, *cut2 = memchr(partner, 0, (size_t)(end - partner));
    in->values[1].data = partner;
    in->values[1].len = cut2 ? (size_t)(cut2 - partner) : (size_t)(end - partner);
    in->count = 2;
    if (cut2) {
        in->key.data = cut2 + 1;
        in->key.len = (size_t)(end - cut2 - 1);
        if (in->key.len == 1 && in->key.data[0] == 0)
            in->key.data = NULL;
    }
}

/* What one input may leave behind: nothing that adds up. */
static void check_bounded(void)
{
    CHECK(vm->slot_count == 0 && vm->doc_count == 0 && vm->jtok_count == 0);
    lua_gc(vm->L, LUA_GCCOLLECT);
    if (sl_vm_memory(vm) > lua_ceiling) {
        fprintf(stderr, "Lua memory %zu bytes after a batch, over %zu\n", sl_vm_memory(vm),
                lua_ceiling);
        abort();
    }
    CHECK(vm->arena.total <= ARENA_CEILING);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in;
    int slot;
    if (size > INPUT_MAX)
        return 0;
    split(data, size, &in);
    current = &in;
    if (in.count == 2 && load(&in.values[1], &slot) != 0)
        in.count = 1; /* an invalid partner: the value is its own */
    if (load(&in.values[0], &slot) == 0) {
        for (int v = 0; v < in.count; v++) {
            check_filters(&in.values[v]);
            check_maps(&in.values[v]);
            check_projected(&in.values[v]);
            check_keys(&in.values[v]);
        }
        check_joins(&in.values[0], &in.values[in.count - 1]);
    }
    sl_vm_batch_reset(vm);
    check_bounded();
    return 0;
}

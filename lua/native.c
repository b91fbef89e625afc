/*
 * native.c - filters of one common shape, run on the tokens without Lua.
 *
 * A filter such as
 *
 *     :filter(function(r) return r.value.kind == "click" end)
 *     :filter(function(r) return r.value.amount >= 100 end)
 *
 * costs, through Lua, two tables (r and r.value), a metamethod call for the
 * field and a protected call: most of a record's time in a filter -> map
 * pipeline. Its answer depends on one field of the value and a constant,
 * so it is recognised when the script is compiled, from the function's
 * bytecode (lua_dump, stripped), and answered from the record's tokens.
 * Comparisons are == and ~= with a string or number constant, and <, <=,
 * >, >= with an integer Lua writes into the instruction (-127 to 128).
 *
 * A map function `return {k1 = r.value.f1, ..., kn = r.value.fn}` (1 to 8
 * fields; NEWTABLE, EXTRAARG, then GETFIELD, GETFIELD, SETFIELD per field,
 * RETURN1, RETURN0) writes its JSON object from the tokens, where every
 * field is absent, null, a boolean, a number or a string without escapes
 * or DEL (which the encoder would escape); the keys (no two alike, none a
 * record field's name, none needing an escape) in the order the script
 * names them, each value as encode.c writes it. Object key order is not
 * defined (docs/lua.md), so only the order differs from Lua's output.
 *
 * A key_by function `return r.value.<field>` is recognised the same way
 * (GETFIELD, GETFIELD, RETURN1, RETURN0); call.c then reads the field from
 * the tokens as r.value.<field> would give it, where that is a string or a
 * number, and runs the function otherwise (its errors included).
 *
 * The shape, exactly (Lua 5.4's code for it; any other code, a different
 * Lua version or dump format, upvalues or globals: not recognised):
 *
 *     GETFIELD   1 0 K"value"     r.value
 *     GETFIELD   1 1 K<field>     .field
 *     EQK 1 K<c> k | EQI 1 sB k   == or ~= a constant (string or number)
 *     | LTI, LEI, GTI, GEI 1 sB k  <, <=, >, >= an integer
 *     JMP        +1
 *     LFALSESKIP 1
 *     LOADTRUE   1
 *     RETURN1    1
 *     RETURN0
 *
 * The native answer is given only where it is Lua's for certain: a record
 * read from the log whose value is a JSON object, no table built for it
 * yet (an earlier op could have changed r.value), the field's key and a
 * string field's text without escapes. Everything else runs the function.
 * Lua's == is mirrored: strings by bytes, numbers by value across integers
 * and floats, a string never equal to a number, absent and null fields
 * equal to nothing. An order comparison is answered only for a number
 * field: on anything else Lua raises, so Lua runs.
 *
 * Dump format (lundump.c, 5.4): a header (signature, version 0x54, format
 * 0, LUAC_DATA, the sizes of Instruction, lua_Integer and lua_Number, then
 * LUAC_INT and LUAC_NUM as this build writes them), the number of
 * upvalues, then the function: source, line defined, last line, parameter
 * count, vararg flag, stack size, the code (a count, then 4-byte
 * instructions), the constants (a count, then per constant its type tag
 * and value). Counts and sizes are 7-bit groups, most significant first,
 * the last byte marked with 0x80.
 */
#include "lua/vm.h"
#include "storage/buf.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Lua 5.4 opcodes and constant tags used here (lopcodes.h, lobject.h). */
enum {
    OP_GETFIELD = 14,
    OP_SETFIELD = 18,
    OP_NEWTABLE = 19,
    OP_EXTRAARG = 82,
    OP_JMP = 56,
    OP_EQK = 60,
    OP_EQI = 61,
    OP_LTI = 62,
    OP_LEI = 63,
    OP_GTI = 64,
    OP_GEI = 65,
    OP_LFALSESKIP = 6,
    OP_LOADTRUE = 7,
    OP_RETURN0 = 71,
    OP_RETURN1 = 72
};
enum { TAG_INTEGER = 0x03, TAG_FLOAT = 0x13, TAG_SHORT_STRING = 0x04, TAG_LONG_STRING = 0x14 };

#define OFFSET_SC      127                               /* EQI's signed B */
#define OFFSET_SJ      16777215                          /* JMP's signed jump: (1 << 24) - 1 */
#define RETURN_R1      (OP_RETURN1 | 1u << 7 | 2u << 16) /* return register 1 */
#define CODE_LENGTH    8                                 /* instructions of the shape */
#define CONSTANTS_MAX  20 /* a map of MAP_FIELDS_MAX fields: 2 per field and "value" */
#define MAP_FIELDS_MAX 8
#define MAP_TEXT_MAX   1024 /* longer outputs: Lua writes them */

struct sl_native_map {
    int count;
    char *keys[MAP_FIELDS_MAX], *fields[MAP_FIELDS_MAX];
};

struct sl_native_filter {
    char *field;
    int compare; /* OP_EQK (for EQK and EQI), OP_LTI, OP_LEI, OP_GTI, OP_GEI */
    int want;    /* the instruction's k: keep when the comparison is this */
    int type;    /* SL_VM_VALUE_STRING or SL_VM_VALUE_NUMBER */
    char *bytes; /* a string constant */
    size_t len;
    int is_integer;
    int64_t integer;
    double number;
};

/* ---- reading the dump ------------------------------------------------------ */

typedef struct dump {
    sl_buf_t bytes;
    int failed;
} dump_t;

static int write_dump(lua_State *L, const void *p, size_t n, void *ud)
{
    (void)L;
    dump_t *d = ud;
    if (sl_buf_append(&d->bytes, p, n))
        d->failed = 1;
    return d->failed;
}

typedef struct reader {
    const uint8_t *at, *end;
    int bad;
} reader_t;

static uint8_t read_byte(reader_t *r)
{
    if (r->at >= r->end) {
        r->bad = 1;
        return 0;
    }
    return *r->at++;
}

static size_t read_size(reader_t *r)
{
    size_t x = 0;
    uint8_t b;
    do {
        b = read_byte(r);
        if (x >> 56)
            r->bad = 1;
        x = (x << 7) | (b & 0x7f);
    } while (!r->bad && !(b & 0x80));
    return x;
}

static const uint8_t *read_bytes(reader_t *r, size_t n)
{
    if ((size_t)(r->end - r->at) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->at;
    r->at += n;
    return p;
}

/* The header this Lua build writes: anything else is not read. */
static int header_matches(reader_t *r)
{
    uint8_t expected[31] = {0x1b, 'L',  'u',  'a',  0x54, 0, 0x19, 0x93,
                            '\r', '\n', 0x1a, '\n', 4,    8, 8};
    lua_Integer check_int = 0x5678;
    lua_Number check_num = 370.5;
    if (sizeof(lua_Integer) != 8 || sizeof(lua_Number) != 8)
        return 0;
    memcpy(expected + 15, &check_int, 8);
    memcpy(expected + 23, &check_num, 8);
    const uint8_t *h = read_bytes(r, sizeof expected);
    return h && memcmp(h, expected, sizeof expected) == 0;
}

typedef struct constant {
    int tag;
    const uint8_t *bytes; /* strings */
    size_t len;
    int64_t integer;
    double number;
} constant_t;

static void read_constant(reader_t *r, constant_t *k)
{
    k->tag = read_byte(r);
    if (k->tag == TAG_INTEGER || k->tag == TAG_FLOAT) {
        const uint8_t *p = read_bytes(r, 8);
        if (p && k->tag == TAG_INTEGER)
            memcpy(&k->integer, p, 8);
        else if (p)
            memcpy(&k->number, p, 8);
    } else if (k->tag == TAG_SHORT_STRING || k->tag == TAG_LONG_STRING) {
        size_t n = read_size(r);
        k->len = n ? n - 1 : 0;
        k->bytes = n ? read_bytes(r, n - 1) : NULL;
        if (!k->bytes)
            r->bad = 1;
    } else {
        r->bad = 1; /* nil, booleans: not in the shape */
    }
}

/* The function's code and constants; 0 if it is not a one-parameter,
 * no-upvalue function of n instructions. */
static int read_function(reader_t *r, uint32_t *code, size_t n, constant_t *k, size_t *nk)
{
    if (!header_matches(r) || read_byte(r) != 0) /* upvalues */
        return 0;
    size_t source = read_size(r);
    if (source)
        read_bytes(r, source - 1);
    read_size(r);                               /* line defined */
    read_size(r);                               /* last line */
    if (read_byte(r) != 1 || read_byte(r) != 0) /* one parameter, not vararg */
        return 0;
    read_byte(r); /* stack size */
    if (read_size(r) != n)
        return 0;
    const uint8_t *p = read_bytes(r, 4 * n);
    if (!p)
        return 0;
    memcpy(code, p, 4 * n);
    *nk = read_size(r);
    if (*nk > CONSTANTS_MAX)
        return 0;
    for (size_t i = 0; i < *nk && !r->bad; i++)
        read_constant(r, &k[i]);
    return !r->bad && read_size(r) == 0; /* the upvalues' descriptions */
}

/* ---- the shape ------------------------------------------------------------- */

static unsigned op_of(uint32_t i)
{
    return i & 0x7f;
}

static unsigned a_of(uint32_t i)
{
    return (i >> 7) & 0xff;
}

static unsigned k_of(uint32_t i)
{
    return (i >> 15) & 1;
}

static unsigned b_of(uint32_t i)
{
    return (i >> 16) & 0xff;
}

static unsigned c_of(uint32_t i)
{
    return (i >> 24) & 0xff;
}

static const constant_t *string_constant(const constant_t *k, size_t nk, unsigned index)
{
    if (index >= nk || (k[index].tag != TAG_SHORT_STRING && k[index].tag != TAG_LONG_STRING))
        return NULL;
    return &k[index];
}

/* A string constant as a C string (sl_malloc'd), or NULL. */
static char *copy_constant(const constant_t *k)
{
    char *s = sl_malloc(k->len + 1);
    if (s) {
        memcpy(s, k->bytes, k->len);
        s[k->len] = '\0';
    }
    return s;
}

/* Do the first two instructions read r.value.<field> into register 1? */
static int reads_a_value_field(const uint32_t *code)
{
    return op_of(code[0]) == OP_GETFIELD && a_of(code[0]) == 1 && b_of(code[0]) == 0 &&
           op_of(code[1]) == OP_GETFIELD && a_of(code[1]) == 1 && b_of(code[1]) == 1;
}

/* The field of r.value.<field> read by reads_a_value_field's code: NULL if
 * the first name is not "value" or the field's holds a zero byte. */
static const constant_t *value_field(const uint32_t *code, const constant_t *k, size_t nk)
{
    const constant_t *value = string_constant(k, nk, c_of(code[0]));
    const constant_t *field = string_constant(k, nk, c_of(code[1]));
    if (!value || value->len != 5 || memcmp(value->bytes, "value", 5) != 0 || !field ||
        memchr(field->bytes, '\0', field->len))
        return NULL;
    return field;
}

/* Is code the shape's, up to the field and the comparison? */
static int code_matches(const uint32_t code[CODE_LENGTH])
{
    return reads_a_value_field(code) && op_of(code[2]) >= OP_EQK && op_of(code[2]) <= OP_GEI &&
           a_of(code[2]) == 1 && code[3] == (OP_JMP | (uint32_t)(OFFSET_SJ + 1) << 7) &&
           code[4] == (OP_LFALSESKIP | 1u << 7) && code[5] == (OP_LOADTRUE | 1u << 7) &&
           code[6] == RETURN_R1 && op_of(code[7]) == OP_RETURN0;
}

/* The constant compared with, into f; 0 if not a string or number. */
static int set_constant(sl_native_filter_t *f, uint32_t eq, const constant_t *k, size_t nk)
{
    if (op_of(eq) != OP_EQK) { /* an immediate (C: written as a float, 1.0: same order) */
        f->type = SL_VM_VALUE_NUMBER;
        f->is_integer = 1;
        f->integer = (int64_t)b_of(eq) - OFFSET_SC;
        return 1;
    }
    unsigned index = b_of(eq);
    if (index >= nk)
        return 0;
    if (k[index].tag == TAG_INTEGER || k[index].tag == TAG_FLOAT) {
        f->type = SL_VM_VALUE_NUMBER;
        f->is_integer = k[index].tag == TAG_INTEGER;
        f->integer = k[index].integer;
        f->number = k[index].number;
        return 1;
    }
    f->type = SL_VM_VALUE_STRING;
    f->len = k[index].len;
    f->bytes = copy_constant(&k[index]);
    return f->bytes != NULL;
}

static sl_native_filter_t *recognise(const uint8_t *dump, size_t len)
{
    reader_t r = {dump, dump + len, 0};
    uint32_t code[CODE_LENGTH];
    constant_t k[CONSTANTS_MAX] = {{0}};
    size_t nk = 0;
    if (!read_function(&r, code, CODE_LENGTH, k, &nk) || !code_matches(code))
        return NULL;
    const constant_t *field = value_field(code, k, nk);
    if (!field)
        return NULL;
    sl_native_filter_t *f = sl_calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->compare = op_of(code[2]) == OP_EQI ? OP_EQK : (int)op_of(code[2]);
    f->want = (int)k_of(code[2]);
    f->field = copy_constant(field);
    if (!f->field || !set_constant(f, code[2], k, nk)) {
        sl_native_filter_free(f);
        return NULL;
    }
    return f;
}

/* The stripped dump of the function at idx into d; 0 if there is none. */
static int dump_function(lua_State *L, int idx, dump_t *d)
{
    lua_pushvalue(L, idx);
    int rc = lua_dump(L, write_dump, d, 1);
    lua_pop(L, 1);
    return rc == 0 && !d->failed;
}

sl_native_filter_t *sl_native_filter_compile(lua_State *L, int idx)
{
    dump_t d = {0};
    sl_native_filter_t *f = dump_function(L, idx, &d) ? recognise(d.bytes.data, d.bytes.len) : NULL;
    sl_buf_free(&d.bytes);
    return f;
}

/* A key_by function `return r.value.<field>`: GETFIELD, GETFIELD, RETURN1,
 * RETURN0. */
char *sl_native_key_compile(lua_State *L, int idx)
{
    dump_t d = {0};
    uint32_t code[4];
    constant_t k[CONSTANTS_MAX] = {{0}};
    size_t nk = 0;
    const constant_t *field = NULL;
    if (dump_function(L, idx, &d)) {
        reader_t r = {d.bytes.data, d.bytes.data + d.bytes.len, 0};
        if (read_function(&r, code, 4, k, &nk) && reads_a_value_field(code) &&
            code[2] == RETURN_R1 && op_of(code[3]) == OP_RETURN0)
            field = value_field(code, k, nk);
    }
    char *name = field ? copy_constant(field) : NULL;
    sl_buf_free(&d.bytes);
    return name;
}

void sl_native_filter_free(sl_native_filter_t *f)
{
    if (!f)
        return;
    sl_free(f->field);
    sl_free(f->bytes);
    sl_free(f);
}

/* ---- running it ------------------------------------------------------------ */

/* Lua's == between an integer and a float: equal when the float is that
 * integer exactly. */
static int integer_equals_float(int64_t i, double d)
{
    return d >= -9223372036854775808.0 && d < 9223372036854775808.0 && floor(d) == d &&
           (int64_t)d == i;
}

static int numbers_equal(const sl_vm_value_t *v, const sl_native_filter_t *f)
{
    if (v->is_integer && f->is_integer)
        return v->integer == f->integer;
    if (v->is_integer)
        return integer_equals_float(v->integer, f->number);
    if (f->is_integer)
        return integer_equals_float(f->integer, v->number);
    return v->number == f->number;
}

/* The order of a number and an integer constant, as Lua's LTI and
 * friends compute it (the constant is small, so exact as a double). */
static int order_holds(const sl_vm_value_t *v, const sl_native_filter_t *f)
{
    double x = v->is_integer ? 0 : v->number, y = (double)f->integer;
    switch (f->compare) {
    case OP_LTI:
        return v->is_integer ? v->integer < f->integer : x < y;
    case OP_LEI:
        return v->is_integer ? v->integer <= f->integer : x <= y;
    case OP_GTI:
        return v->is_integer ? v->integer > f->integer : x > y;
    default:
        return v->is_integer ? v->integer >= f->integer : x >= y;
    }
}

int sl_native_filter_run(sl_vm_t *vm, const sl_native_filter_t *f, int slot, int *keep)
{
    int doc = sl_lazy_object_doc(vm, slot);
    sl_vm_value_t v;
    if (doc < 0 || sl_lazy_field(vm, doc, f->field, &v))
        return 1;
    int holds = 0;
    if (f->compare != OP_EQK) {
        if (v.type != SL_VM_VALUE_NUMBER)
            return 1; /* Lua raises: attempt to compare */
        holds = order_holds(&v, f);
    } else if (v.type == SL_VM_VALUE_STRING && f->type == SL_VM_VALUE_STRING) {
        holds = v.len == f->len && memcmp(v.bytes, f->bytes, f->len) == 0;
    } else if (v.type == SL_VM_VALUE_NUMBER && f->type == SL_VM_VALUE_NUMBER) {
        holds = numbers_equal(&v, f);
    }
    *keep = holds == f->want;
    return 0;
}

/* ---- maps ------------------------------------------------------------------ */

void sl_native_map_free(sl_native_map_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->count; i++) {
        sl_free(m->keys[i]);
        sl_free(m->fields[i]);
    }
    sl_free(m);
}

/* A key the native map may write as it is: plain bytes, not a record
 * field's name (a table of those is a record table), not seen before. */
static int plain_key(const sl_native_map_t *m, const constant_t *key)
{
    if (sl_is_record_field((const char *)key->bytes, key->len))
        return 0;
    for (size_t i = 0; i < key->len; i++)
        if (key->bytes[i] < 0x20 || key->bytes[i] == '"' || key->bytes[i] == '\\' ||
            key->bytes[i] == 0x7f)
            return 0;
    for (int i = 0; i < m->count; i++)
        if (strlen(m->keys[i]) == key->len && memcmp(m->keys[i], key->bytes, key->len) == 0)
            return 0;
    return 1;
}

/* Field i's three instructions at code: r.value.<field> into register 2,
 * then table[<key>] = it. */
static int add_map_field(sl_native_map_t *m, const uint32_t *code, const constant_t *k, size_t nk)
{
    if (op_of(code[0]) != OP_GETFIELD || a_of(code[0]) != 2 || b_of(code[0]) != 0 ||
        op_of(code[1]) != OP_GETFIELD || a_of(code[1]) != 2 || b_of(code[1]) != 2 ||
        op_of(code[2]) != OP_SETFIELD || a_of(code[2]) != 1 || k_of(code[2]) || c_of(code[2]) != 2)
        return 0;
    const constant_t *value = string_constant(k, nk, c_of(code[0]));
    const constant_t *field = string_constant(k, nk, c_of(code[1]));
    const constant_t *key = string_constant(k, nk, b_of(code[2]));
    if (!value || value->len != 5 || memcmp(value->bytes, "value", 5) != 0 || !field ||
        memchr(field->bytes, '\0', field->len) || !key || !plain_key(m, key))
        return 0;
    m->keys[m->count] = copy_constant(key);
    m->fields[m->count] = copy_constant(field);
    m->count++;
    return m->keys[m->count - 1] && m->fields[m->count - 1];
}

sl_native_map_t *sl_native_map_compile(lua_State *L, int idx)
{
    dump_t d = {0};
    uint32_t code[4 + 3 * MAP_FIELDS_MAX];
    constant_t k[CONSTANTS_MAX] = {{0}};
    size_t nk = 0;
    sl_native_map_t *m = NULL;
    if (!dump_function(L, idx, &d))
        goto done;
    for (int n = 1; n <= MAP_FIELDS_MAX && !m; n++) {
        reader_t r = {d.bytes.data, d.bytes.data + d.bytes.len, 0};
        size_t length = 4 + 3 * (size_t)n;
        if (!read_function(&r, code, length, k, &nk))
            continue;
        if (op_of(code[0]) != OP_NEWTABLE || a_of(code[0]) != 1 || op_of(code[1]) != OP_EXTRAARG ||
            code[length - 2] != RETURN_R1 || op_of(code[length - 1]) != OP_RETURN0 ||
            !(m = sl_calloc(1, sizeof *m)))
            goto done;
        for (int i = 0; i < n; i++)
            if (!add_map_field(m, code + 2 + 3 * i, k, nk)) {
                sl_native_map_free(m);
                m = NULL;
                goto done;
            }
    }
done:
    sl_buf_free(&d.bytes);
    return m;
}

/* Appends token t's value as encode.c writes it; 0, or -1 where only Lua
 * can (objects, arrays, escapes, DEL, no room). */
static int put_token(char *out, size_t *at, const char *text, const sl_jtok_t *t)
{
    char number[SL_JSON_NUMBER_TEXT_MAX];
    const char *s = number;
    size_t n = 0, quotes = 0;
    switch (t->type) {
    case SL_JTOK_STRING:
        s = text + t->start;
        n = (size_t)(t->end - t->start);
        if (t->escaped || memchr(s, 0x7f, n))
            return -1;
        quotes = 2;
        break;
    case SL_JTOK_NUMBER: {
        sl_vm_value_t v;
        if (sl_token_number(text, t, &v) || (!v.is_integer && !isfinite(v.number)))
            return -1;
        n = sl_json_number_text(v.is_integer, v.integer, v.number, number);
        break;
    }
    case SL_JTOK_TRUE:
        s = "true", n = 4;
        break;
    case SL_JTOK_FALSE:
        s = "false", n = 5;
        break;
    case SL_JTOK_NULL:
        s = "null", n = 4;
        break;
    default:
        return -1;
    }
    if (*at + n + quotes > MAP_TEXT_MAX)
        return -1;
    if (quotes)
        out[(*at)++] = '"';
    memcpy(out + *at, s, n);
    *at += n;
    if (quotes)
        out[(*at)++] = '"';
    return 0;
}

int sl_native_map_run(sl_vm_t *vm, const sl_native_map_t *m, int slot, const uint8_t **value,
                      int32_t *len)
{
    int doc = sl_lazy_object_doc(vm, slot);
    char out[MAP_TEXT_MAX];
    size_t at = 0;
    if (doc < 0)
        return 1;
    const sl_jtok_t *base = vm->jtoks + vm->docs[doc].first;
    out[at++] = '{';
    for (int i = 0; i < m->count; i++) {
        int token = sl_lazy_find_plain(vm, doc, m->fields[i]);
        if (token == -2)
            return 1;
        if (token < 0)
            continue; /* nil: absent from the table */
        size_t key = strlen(m->keys[i]);
        if (at + key + 4 > MAP_TEXT_MAX)
            return 1;
        if (at > 1)
            out[at++] = ',';
        out[at++] = '"';
        memcpy(out + at, m->keys[i], key);
        at += key;
        out[at++] = '"';
        out[at++] = ':';
        if (put_token(out, &at, vm->docs[doc].text, &base[token]))
            return 1;
    }
    if (at + 1 > MAP_TEXT_MAX)
        return 1;
    out[at++] = '}';
    uint8_t *copy = sl_arena_copy(&vm->arena, out, at);
    if (!copy)
        return 1;
    *value = copy;
    *len = (int32_t)at;
    return 0;
}

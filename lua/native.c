/*
 * native.c - user functions of the straight-line kind, run on the tokens
 * without Lua.
 *
 * A filter such as `function(r) return r.value.kind == "click" end`, a map
 * `function(r) return {user = r.value.user, n = r.value.n * 2} end` or a
 * join function `function(a, p) return {name = p.name, id = a.value.id} end`
 * costs, through Lua, a table per record and per value, a metamethod call
 * per field read and a protected call: most of a record's time in the
 * pipelines of the benches. Their answers depend on fields of the values
 * and constants only, so they are recognised when the script is compiled,
 * from the function's bytecode (lua_dump, stripped), and run here by a
 * small interpreter of the same instructions over the records' tokens.
 *
 * What is recognised (checked once, at compile time): a function of one
 * or two parameters (not vararg), no upvalues (so no globals), no nested
 * functions, at most STACK_MAX registers, whose every instruction is one
 * of: MOVE, LOADI, LOADF, LOADK, LOADFALSE, LFALSESKIP, LOADTRUE, LOADNIL,
 * GETFIELD, SETFIELD, NEWTABLE (+ EXTRAARG), the arithmetic of numbers
 * (+ - * / // % ^ and unary -, their K and immediate forms, each followed
 * by its MMBIN), NOT, LEN, JMP forward only, EQ, LT, LE, EQK, EQI, LTI,
 * LEI, GTI, GEI, TEST, TESTSET, RETURN (one value), RETURN0, RETURN1. With
 * forward jumps only, it ends within its length.
 *
 * Running it: registers hold values (nval_t): nil, JSON null, booleans,
 * integers, floats, strings (bytes of a token or a constant), a record (a
 * slot), a value (a join's table side: a slot's r.value), a JSON object (a
 * document's token), other JSON (arrays), and the one table the function
 * builds. The interpreter gives up (returns 1, and Lua runs the function
 * from the start; nothing it did is seen) at anything whose answer is not
 * certainly Lua's:
 *   - r.value of a record that is not a JSON object read from the log with
 *     no table built for it yet (an earlier op could have changed it); r.ts
 *     and r.key of such a record only; any other record field;
 *   - a key with escapes in an object searched, a string with escapes read;
 *   - arithmetic on anything but numbers (Lua coerces strings), integer
 *     division or modulo by zero (Lua raises), order of anything but
 *     numbers (strings compare by locale), equality of two tables;
 *   - indexing anything but a record, a JSON object or the function's
 *     table (Lua raises, or reads string methods);
 *   - a second table, more than FIELDS_MAX fields in it.
 * Lua's rules are mirrored exactly elsewhere: integer arithmetic wraps,
 * floor division and modulo round toward minus infinity, / and ^ are
 * float, == compares numbers by value across integers and floats, a string
 * never equals a number, JSON null (a light userdata in Lua) is true and
 * equals only null.
 *
 * Results: a filter keeps the record when the result is true (not nil or
 * false). A map or join function's result must be its table: its JSON
 * object is written from the fields, in the order first set (object key
 * order is not defined: docs/lua.md), where each is null, a boolean, a
 * finite number (encode.c's own number text) or a string without bytes the
 * encoder escapes, the names need no escape and not all are record field
 * names (Lua would read that table as a record); else Lua writes it.
 *
 * A key_by function `return r.value.<field>` (GETFIELD, GETFIELD, RETURN1,
 * RETURN0) is recognised by its shape; call.c reads the field from the
 * tokens where it is a string or a number, and runs the function else.
 *
 * Dump format (lundump.c, 5.4): a header (signature, version 0x54, format
 * 0, LUAC_DATA, the sizes of Instruction, lua_Integer and lua_Number, then
 * LUAC_INT and LUAC_NUM as this build writes them), the number of
 * upvalues, then the function: source, line defined, last line, parameter
 * count, vararg flag, stack size, the code (a count, then 4-byte
 * instructions), the constants (a count, then per constant its type tag
 * and value), the upvalues and the nested functions (a count each). Counts
 * and sizes are 7-bit groups, most significant first, the last byte marked
 * with 0x80. Instructions (lopcodes.h): op in bits 0-6, A 7-14, k 15, B
 * 16-23, C 24-31; Bx 15-31 (sBx: minus 65535); sJ 7-31 (minus 16777215);
 * sB and sC: minus 127.
 */
#include "lua/vm.h"
#include "storage/buf.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Lua 5.4 opcodes (lopcodes.h) and constant tags (lobject.h). */
enum {
    OP_MOVE = 0,
    OP_LOADI = 1,
    OP_LOADF = 2,
    OP_LOADK = 3,
    OP_LOADFALSE = 5,
    OP_LFALSESKIP = 6,
    OP_LOADTRUE = 7,
    OP_LOADNIL = 8,
    OP_GETFIELD = 14,
    OP_SETFIELD = 18,
    OP_NEWTABLE = 19,
    OP_ADDI = 21,
    OP_ADDK = 22,
    OP_IDIVK = 28,
    OP_ADD = 34,
    OP_IDIV = 40,
    OP_MMBIN = 46,
    OP_MMBINK = 48,
    OP_UNM = 49,
    OP_NOT = 51,
    OP_LEN = 52,
    OP_JMP = 56,
    OP_EQ = 57,
    OP_LT = 58,
    OP_LE = 59,
    OP_EQK = 60,
    OP_EQI = 61,
    OP_LTI = 62,
    OP_LEI = 63,
    OP_GTI = 64,
    OP_GEI = 65,
    OP_TEST = 66,
    OP_TESTSET = 67,
    OP_RETURN = 70,
    OP_RETURN0 = 71,
    OP_RETURN1 = 72,
    OP_EXTRAARG = 82
};
/* The arithmetic, in the order of ADD..IDIV and of ADDK..IDIVK. */
enum { ARITH_ADD, ARITH_SUB, ARITH_MUL, ARITH_MOD, ARITH_POW, ARITH_DIV, ARITH_IDIV };
enum {
    TAG_NIL = 0x00,
    TAG_FALSE = 0x01,
    TAG_TRUE = 0x11,
    TAG_INTEGER = 0x03,
    TAG_FLOAT = 0x13,
    TAG_SHORT_STRING = 0x04,
    TAG_LONG_STRING = 0x14
};

#define OFFSET_SC     127                               /* sB, sC */
#define OFFSET_SBX    65535                             /* sBx */
#define OFFSET_SJ     16777215                          /* sJ: (1 << 24) - 1 */
#define RETURN_R1     (OP_RETURN1 | 1u << 7 | 2u << 16) /* return register 1 */
#define CODE_MAX      256
#define CONSTANTS_MAX 64
#define STACK_MAX     32
#define FIELDS_MAX    16
#define TEXT_MAX      1024 /* longer outputs: Lua writes them */

/* A register's value. */
typedef enum {
    V_NIL,
    V_NULL,
    V_FALSE,
    V_TRUE,
    V_INT,
    V_FLT,
    V_STR,
    V_RECORD, /* a record: slot */
    V_VALUE,  /* a join's table side, r.value of slot */
    V_OBJECT, /* a JSON object: doc, token */
    V_JSON,   /* other JSON containers (arrays) */
    V_TABLE   /* the table the function builds */
} vtype_t;

typedef struct nval {
    uint8_t type;  /* vtype_t */
    uint8_t plain; /* V_STR: written in JSON as it is */
    int32_t slot, doc, token;
    int64_t i;
    double d;
    const char *s;
    size_t len;
} nval_t;

struct sl_native {
    int params, stack;
    size_t count, nk;
    uint32_t code[CODE_MAX];
    nval_t k[CONSTANTS_MAX]; /* strings point into strings */
    char *strings;
};

/* The table a run builds: its fields, in the order first set. */
typedef struct table {
    int made, count;
    const nval_t *names[FIELDS_MAX];
    nval_t values[FIELDS_MAX];
} table_t;

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

/* Reads one constant into *k; a string's bytes go to *strings (grown). */
static void read_constant(reader_t *r, nval_t *k, sl_buf_t *strings)
{
    const uint8_t *p;
    size_t n;
    memset(k, 0, sizeof *k);
    switch (read_byte(r)) {
    case TAG_NIL:
        k->type = V_NIL;
        break;
    case TAG_FALSE:
        k->type = V_FALSE;
        break;
    case TAG_TRUE:
        k->type = V_TRUE;
        break;
    case TAG_INTEGER:
    case TAG_FLOAT:
        k->type = r->at[-1] == TAG_INTEGER ? V_INT : V_FLT;
        if ((p = read_bytes(r, 8)))
            memcpy(k->type == V_INT ? (void *)&k->i : (void *)&k->d, p, 8);
        break;
    case TAG_SHORT_STRING:
    case TAG_LONG_STRING:
        n = read_size(r);
        k->type = V_STR;
        k->len = n ? n - 1 : 0;
        k->token = (int32_t)strings->len; /* its offset, until the strings are final */
        if (!n || !(p = read_bytes(r, n - 1)) || sl_buf_append(strings, p, n - 1))
            r->bad = 1;
        break;
    default:
        r->bad = 1;
    }
}

/* The function of the dump into n (code, constants, sizes); 0 if it is not
 * a function of `params` parameters, not vararg, without upvalues or
 * nested functions, within the limits. */
static int read_function(reader_t *r, sl_native_t *n, int params)
{
    sl_buf_t strings = {0};
    if (!header_matches(r) || read_byte(r) != 0) /* upvalues */
        return 0;
    size_t source = read_size(r);
    if (source)
        read_bytes(r, source - 1);
    read_size(r); /* line defined */
    read_size(r); /* last line */
    if (read_byte(r) != params || read_byte(r) != 0)
        return 0;
    n->params = params;
    n->stack = read_byte(r);
    n->count = read_size(r);
    const uint8_t *code = n->count <= CODE_MAX ? read_bytes(r, 4 * n->count) : NULL;
    if (!code || n->stack > STACK_MAX || n->stack < params)
        return 0;
    memcpy(n->code, code, 4 * n->count);
    n->nk = read_size(r);
    for (size_t i = 0; i < n->nk && i < CONSTANTS_MAX && !r->bad; i++)
        read_constant(r, &n->k[i], &strings);
    int ok = n->nk <= CONSTANTS_MAX && !r->bad && read_size(r) == 0 && read_size(r) == 0;
    n->strings = ok ? sl_malloc(strings.len + 1) : NULL;
    if (n->strings) {
        if (strings.len)
            memcpy(n->strings, strings.data, strings.len);
        for (size_t i = 0; i < n->nk; i++)
            if (n->k[i].type == V_STR) {
                n->k[i].s = n->strings + n->k[i].token;
                n->k[i].plain = (uint8_t)sl_json_plain(n->k[i].s, n->k[i].len);
            }
    }
    sl_buf_free(&strings);
    return n->strings != NULL;
}

/* The stripped dump of the function at idx into d; 0 if there is none. */
static int dump_function(lua_State *L, int idx, dump_t *d)
{
    lua_pushvalue(L, idx);
    int rc = lua_dump(L, write_dump, d, 1);
    lua_pop(L, 1);
    return rc == 0 && !d->failed;
}

/* ---- instructions ---------------------------------------------------------- */

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

static unsigned bx_of(uint32_t i)
{
    return i >> 15;
}

static int32_t sj_of(uint32_t i)
{
    return (int32_t)(i >> 7) - OFFSET_SJ;
}

static int is_arith(unsigned op)
{
    return (op >= OP_ADDI && op <= OP_IDIVK) || (op >= OP_ADD && op <= OP_IDIV);
}

static int is_compare(unsigned op)
{
    return op >= OP_EQ && op <= OP_GEI;
}

/* Operand checks of instruction i: registers within the stack, constants
 * within the constants, B and C as each op reads them. */
static int operands_fit(const sl_native_t *n, uint32_t i)
{
    unsigned op = op_of(i), b = b_of(i), c = c_of(i), stack = (unsigned)n->stack;
    int b_reg = op == OP_MOVE || op == OP_GETFIELD || op == OP_NOT || op == OP_LEN ||
                op == OP_UNM || op == OP_TESTSET || (op >= OP_ADDI && op <= OP_IDIV) ||
                op == OP_EQ || op == OP_LT || op == OP_LE;
    int c_reg = (op >= OP_ADD && op <= OP_IDIV) || (op == OP_SETFIELD && !k_of(i));
    int b_k = op == OP_SETFIELD || op == OP_EQK;
    int c_k =
        op == OP_GETFIELD || (op >= OP_ADDK && op <= OP_IDIVK) || (op == OP_SETFIELD && k_of(i));
    int a_reg = op != OP_JMP && op != OP_RETURN0;
    if ((a_reg && a_of(i) >= stack) || (b_reg && b >= stack) || (c_reg && c >= stack) ||
        (b_k && b >= n->nk) || (c_k && c >= n->nk) || (op == OP_LOADK && bx_of(i) >= n->nk))
        return 0;
    if (op == OP_LOADNIL && a_of(i) + b >= stack)
        return 0;
    /* field names are string constants */
    return !((op == OP_GETFIELD && n->k[c].type != V_STR) ||
             (op == OP_SETFIELD && n->k[b].type != V_STR));
}

/* Is every instruction one the interpreter runs, every jump forward and
 * within the code, every companion instruction where it must be? */
static int code_runs(const sl_native_t *n)
{
    for (size_t pc = 0; pc < n->count; pc++) {
        uint32_t i = n->code[pc];
        unsigned op = op_of(i);
        uint32_t next = pc + 1 < n->count ? n->code[pc + 1] : 0;
        int known = op <= OP_LOADNIL || op == OP_GETFIELD || op == OP_SETFIELD ||
                    op == OP_NEWTABLE || is_arith(op) || op == OP_UNM || op == OP_NOT ||
                    op == OP_LEN || op == OP_JMP || is_compare(op) || op == OP_TEST ||
                    op == OP_TESTSET || (op >= OP_RETURN && op <= OP_RETURN1);
        if (!known || op == 4 /* LOADKX */ || !operands_fit(n, i))
            return 0;
        if (pc + 1 == n->count && op != OP_RETURN0 && op != OP_RETURN1 && op != OP_RETURN)
            return 0;
        if ((op == OP_NEWTABLE && op_of(next) != OP_EXTRAARG) ||
            (is_arith(op) && (op_of(next) < OP_MMBIN || op_of(next) > OP_MMBINK)) ||
            ((is_compare(op) || op == OP_TEST || op == OP_TESTSET) && op_of(next) != OP_JMP) ||
            (op == OP_JMP && (sj_of(i) < 0 || pc + 1 + (size_t)sj_of(i) >= n->count)))
            return 0;
        if (op == OP_NEWTABLE || is_arith(op))
            pc++; /* EXTRAARG, MMBIN: never run (jumps do not land there) */
    }
    return n->count > 0;
}

sl_native_t *sl_native_compile(lua_State *L, int idx, int params)
{
    dump_t d = {0};
    sl_native_t *n = sl_calloc(1, sizeof *n);
    if (n && dump_function(L, idx, &d)) {
        reader_t r = {d.bytes.data, d.bytes.data + d.bytes.len, 0};
        if (!read_function(&r, n, params) || !code_runs(n)) {
            sl_native_free(n);
            n = NULL;
        }
    } else {
        sl_native_free(n);
        n = NULL;
    }
    sl_buf_free(&d.bytes);
    return n;
}

void sl_native_free(sl_native_t *n)
{
    if (!n)
        return;
    sl_free(n->strings);
    sl_free(n);
}

/* ---- values ----------------------------------------------------------------- */

#define GIVE_UP 1 /* only Lua answers this: the caller runs the function */

/* The value of token in doc, read as Lua reads it; GIVE_UP for strings
 * with escapes and numbers Lua would not read the same. */
static int token_value(sl_vm_t *vm, int doc, int token, nval_t *out)
{
    const sl_jtok_t *t = vm->jtoks + vm->docs[doc].first + token;
    const char *text = vm->docs[doc].text;
    sl_vm_value_t v;
    memset(out, 0, sizeof *out);
    switch (t->type) {
    case SL_JTOK_STRING:
        if (t->escaped)
            return GIVE_UP;
        out->type = V_STR;
        out->s = text + t->start;
        out->len = (size_t)(t->end - t->start);
        out->plain = !memchr(out->s, 0x7f, out->len); /* JSON has no other bytes to escape */
        return 0;
    case SL_JTOK_NUMBER:
        if (sl_token_number(text, t, &v))
            return GIVE_UP;
        out->type = v.is_integer ? V_INT : V_FLT;
        out->i = v.integer;
        out->d = v.number;
        return 0;
    case SL_JTOK_OBJECT:
        out->type = V_OBJECT;
        out->doc = doc;
        out->token = token;
        return 0;
    default:
        out->type = t->type == SL_JTOK_TRUE    ? V_TRUE
                    : t->type == SL_JTOK_FALSE ? V_FALSE
                    : t->type == SL_JTOK_NULL  ? V_NULL
                                               : V_JSON;
        return 0;
    }
}

/* object[name] of a JSON object. */
static int member(sl_vm_t *vm, int doc, int object, const nval_t *name, nval_t *out)
{
    int token = sl_lazy_find_member(vm, doc, object, name->s, name->len);
    if (token == -2)
        return GIVE_UP;
    if (token < 0) {
        memset(out, 0, sizeof *out); /* V_NIL */
        return 0;
    }
    return token_value(vm, doc, token, out);
}

/* A field of a record (value, key, ts, partition, offset) of a record read
 * from the log with no table built, as lazy.c gives it. */
static int record_field(sl_vm_t *vm, int slot, const nval_t *name, nval_t *out)
{
    int doc = sl_lazy_object_doc(vm, slot);
    const sl_record_t *rec = &vm->slots[slot].record;
    if (doc < 0)
        return GIVE_UP;
    memset(out, 0, sizeof *out);
    if (name->len == 5 && memcmp(name->s, "value", 5) == 0) {
        out->type = V_OBJECT;
        out->doc = doc;
    } else if (name->len == 2 && memcmp(name->s, "ts", 2) == 0) {
        out->type = V_INT;
        out->i = rec->timestamp;
    } else if (name->len == 3 && memcmp(name->s, "key", 3) == 0) {
        if (rec->key_len >= 0) {
            out->type = V_STR;
            out->s = (const char *)rec->key;
            out->len = (size_t)rec->key_len;
            out->plain = (uint8_t)sl_json_plain(out->s, out->len);
        }
    } else if (name->len == 9 && memcmp(name->s, "partition", 9) == 0) {
        out->type = V_INT;
        out->i = vm->slots[slot].partition;
    } else if (name->len == 6 && memcmp(name->s, "offset", 6) == 0) {
        out->type = V_INT;
        out->i = rec->offset;
    } else {
        return GIVE_UP;
    }
    return 0;
}

static int table_find(const table_t *t, const nval_t *name)
{
    for (int f = 0; f < t->count; f++)
        if (t->names[f]->len == name->len && memcmp(t->names[f]->s, name->s, name->len) == 0)
            return f;
    return -1;
}

static int get_field(sl_vm_t *vm, const table_t *t, const nval_t *from, const nval_t *name,
                     nval_t *out)
{
    int f, doc;
    switch (from->type) {
    case V_RECORD:
        return record_field(vm, from->slot, name, out);
    case V_VALUE:
        if ((doc = sl_lazy_object_doc(vm, from->slot)) < 0)
            return GIVE_UP;
        return member(vm, doc, 0, name, out);
    case V_OBJECT:
        return member(vm, from->doc, from->token, name, out);
    case V_TABLE:
        f = table_find(t, name);
        if (f < 0)
            memset(out, 0, sizeof *out);
        else
            *out = t->values[f];
        return 0;
    default:
        return GIVE_UP; /* Lua raises, or reads a string method */
    }
}

/* table[name] = v: set, replaced, or (nil) removed. */
static int set_field(table_t *t, const nval_t *name, const nval_t *v)
{
    int f = table_find(t, name);
    if (f >= 0 && v->type == V_NIL) {
        t->count--;
        memmove(t->names + f, t->names + f + 1, (size_t)(t->count - f) * sizeof *t->names);
        memmove(t->values + f, t->values + f + 1, (size_t)(t->count - f) * sizeof *t->values);
    } else if (f >= 0) {
        t->values[f] = *v;
    } else if (v->type != V_NIL) {
        if (t->count == FIELDS_MAX || v->type == V_TABLE)
            return GIVE_UP; /* a table in itself: Lua writes (or refuses) it */
        t->names[t->count] = name;
        t->values[t->count++] = *v;
    }
    return 0;
}

/* Lua's truth of v: 1, 0, or -1 where it is not known here. */
static int truth(const nval_t *v)
{
    if (v->type == V_VALUE)
        return -1; /* a table side's value: could be false */
    return v->type != V_NIL && v->type != V_FALSE;
}

static int is_number(const nval_t *v)
{
    return v->type == V_INT || v->type == V_FLT;
}

static int is_table_like(const nval_t *v)
{
    return v->type >= V_RECORD;
}

static double as_float(const nval_t *v)
{
    return v->type == V_INT ? (double)v->i : v->d;
}

/* Lua's == between an integer and a float: equal when the float is that
 * integer exactly. */
static int integer_equals_float(int64_t i, double d)
{
    return d >= -9223372036854775808.0 && d < 9223372036854775808.0 && floor(d) == d &&
           (int64_t)d == i;
}

/* Lua's x == y: 1, 0, or -1 for two tables (identity: not known here). */
static int equal(const nval_t *x, const nval_t *y)
{
    if (is_number(x) && is_number(y)) {
        if (x->type == V_INT && y->type == V_INT)
            return x->i == y->i;
        if (x->type == V_FLT && y->type == V_FLT)
            return x->d == y->d;
        return x->type == V_INT ? integer_equals_float(x->i, y->d)
                                : integer_equals_float(y->i, x->d);
    }
    if (x->type == V_VALUE || y->type == V_VALUE || (is_table_like(x) && is_table_like(y)))
        return -1; /* a table side's value, unread; identity of tables */
    if (x->type != y->type)
        return 0;
    if (x->type == V_STR)
        return x->len == y->len && memcmp(x->s, y->s, x->len) == 0;
    return 1; /* nil, null, false, true */
}

/* Lua's x < y (strict) or x <= y of two numbers: 1, 0, or -1 for anything
 * else (Lua raises, or compares strings by locale) and for integers a
 * float cannot hold exactly against floats. */
static int less(const nval_t *x, const nval_t *y, int or_equal)
{
    if (!is_number(x) || !is_number(y))
        return -1;
    if (x->type == V_INT && y->type == V_INT)
        return or_equal ? x->i <= y->i : x->i < y->i;
    const int64_t exact = (int64_t)1 << 53;
    if ((x->type == V_INT && (x->i > exact || x->i < -exact)) ||
        (y->type == V_INT && (y->i > exact || y->i < -exact)))
        return -1;
    double a = as_float(x), b = as_float(y);
    return or_equal ? a <= b : a < b;
}

static nval_t integer(int64_t i)
{
    nval_t v = {.type = V_INT, .i = i};
    return v;
}

static nval_t number(double d)
{
    nval_t v = {.type = V_FLT, .d = d};
    return v;
}

/* luaV_idiv and luaV_mod: floor division and modulo of integers (n not 0). */
static int64_t integer_floor_div(int64_t m, int64_t n)
{
    if (n == -1)
        return (int64_t)(0u - (uint64_t)m);
    int64_t q = m / n;
    return ((m ^ n) < 0 && m % n != 0) ? q - 1 : q;
}

static int64_t integer_mod(int64_t m, int64_t n)
{
    if (n == -1)
        return 0;
    int64_t r = m % n;
    return (r != 0 && (r ^ n) < 0) ? r + n : r;
}

static double float_mod(double a, double b)
{
    double m = fmod(a, b);
    return ((m > 0) ? b < 0 : (m < 0 && b > 0)) ? m + b : m; /* luai_nummod */
}

/* x <arith> y as Lua computes it, into *out; GIVE_UP for non-numbers and
 * integer division by zero. */
static int arith(int what, const nval_t *x, const nval_t *y, nval_t *out)
{
    if (!is_number(x) || !is_number(y))
        return GIVE_UP;
    if (x->type == V_INT && y->type == V_INT && what != ARITH_DIV && what != ARITH_POW) {
        uint64_t a = (uint64_t)x->i, b = (uint64_t)y->i;
        if ((what == ARITH_IDIV || what == ARITH_MOD) && y->i == 0)
            return GIVE_UP; /* Lua raises */
        *out = integer(what == ARITH_ADD   ? (int64_t)(a + b)
                       : what == ARITH_SUB ? (int64_t)(a - b)
                       : what == ARITH_MUL ? (int64_t)(a * b)
                       : what == ARITH_MOD ? integer_mod(x->i, y->i)
                                           : integer_floor_div(x->i, y->i));
        return 0;
    }
    double a = as_float(x), b = as_float(y);
    switch (what) {
    case ARITH_ADD:
        *out = number(a + b);
        break;
    case ARITH_SUB:
        *out = number(a - b);
        break;
    case ARITH_MUL:
        *out = number(a * b);
        break;
    case ARITH_MOD:
        *out = number(float_mod(a, b));
        break;
    case ARITH_POW:
        *out = number(b == 2 ? a * a : pow(a, b));
        break;
    case ARITH_DIV:
        *out = number(a / b);
        break;
    default:
        *out = number(floor(a / b));
    }
    return 0;
}

/* ---- the interpreter -------------------------------------------------------- */

typedef struct run {
    sl_vm_t *vm;
    const sl_native_t *n;
    nval_t r[STACK_MAX];
    table_t table;
} run_t;

/* The condition of compare instruction i: 1, 0, or -1 (give up). */
static int condition(run_t *x, uint32_t i)
{
    const nval_t *a = &x->r[a_of(i)];
    nval_t im = integer((int64_t)b_of(i) - OFFSET_SC);
    switch (op_of(i)) {
    case OP_EQ:
        return equal(a, &x->r[b_of(i)]);
    case OP_LT:
        return less(a, &x->r[b_of(i)], 0);
    case OP_LE:
        return less(a, &x->r[b_of(i)], 1);
    case OP_EQK:
        return equal(a, &x->n->k[b_of(i)]);
    case OP_EQI:
        return is_number(a) ? equal(a, &im) : 0;
    case OP_LTI:
        return less(a, &im, 0);
    case OP_LEI:
        return less(a, &im, 1);
    case OP_GTI:
        return less(&im, a, 0);
    default:
        return less(&im, a, 1);
    }
}

/* Arithmetic instruction i into its register. */
static int run_arith(run_t *x, uint32_t i)
{
    unsigned op = op_of(i);
    const nval_t *b = &x->r[b_of(i)];
    nval_t im = integer((int64_t)c_of(i) - OFFSET_SC);
    if (op == OP_ADDI)
        return arith(ARITH_ADD, b, &im, &x->r[a_of(i)]);
    if (op >= OP_ADDK && op <= OP_IDIVK)
        return arith((int)(op - OP_ADDK), b, &x->n->k[c_of(i)], &x->r[a_of(i)]);
    return arith((int)(op - OP_ADD), b, &x->r[c_of(i)], &x->r[a_of(i)]);
}

/* Runs the instructions from pc to a return: 0 with the result in *out,
 * or GIVE_UP. One switch over the opcodes, as lvm.c's. */
static int interpret(run_t *x, nval_t *out)
{
    const sl_native_t *n = x->n;
    nval_t *r = x->r;
    for (size_t pc = 0; pc < n->count; pc++) {
        uint32_t i = n->code[pc];
        unsigned a = a_of(i), op = op_of(i);
        int cond;
        switch (op) {
        case OP_MOVE:
            r[a] = r[b_of(i)];
            break;
        case OP_LOADI:
            r[a] = integer((int64_t)bx_of(i) - OFFSET_SBX);
            break;
        case OP_LOADF:
            r[a] = number((double)((int64_t)bx_of(i) - OFFSET_SBX));
            break;
        case OP_LOADK:
            r[a] = n->k[bx_of(i)];
            break;
        case OP_LOADFALSE:
        case OP_LFALSESKIP:
            memset(&r[a], 0, sizeof r[a]);
            r[a].type = V_FALSE;
            pc += op == OP_LFALSESKIP;
            break;
        case OP_LOADTRUE:
            memset(&r[a], 0, sizeof r[a]);
            r[a].type = V_TRUE;
            break;
        case OP_LOADNIL:
            memset(&r[a], 0, (b_of(i) + 1) * sizeof r[a]);
            break;
        case OP_GETFIELD:
            if (get_field(x->vm, &x->table, &r[b_of(i)], &n->k[c_of(i)], &r[a]))
                return GIVE_UP;
            break;
        case OP_SETFIELD:
            if (r[a].type != V_TABLE ||
                set_field(&x->table, &n->k[b_of(i)], k_of(i) ? &n->k[c_of(i)] : &r[c_of(i)]))
                return GIVE_UP;
            break;
        case OP_NEWTABLE:
            if (x->table.made++)
                return GIVE_UP; /* a second table */
            memset(&r[a], 0, sizeof r[a]);
            r[a].type = V_TABLE;
            pc++; /* EXTRAARG */
            break;
        case OP_UNM:
            if (!is_number(&r[b_of(i)]))
                return GIVE_UP;
            r[a] = r[b_of(i)].type == V_INT ? integer((int64_t)(0u - (uint64_t)r[b_of(i)].i))
                                            : number(-r[b_of(i)].d);
            break;
        case OP_NOT:
            if ((cond = truth(&r[b_of(i)])) < 0)
                return GIVE_UP;
            memset(&r[a], 0, sizeof r[a]);
            r[a].type = cond ? V_FALSE : V_TRUE;
            break;
        case OP_LEN:
            if (r[b_of(i)].type != V_STR)
                return GIVE_UP;
            r[a] = integer((int64_t)r[b_of(i)].len);
            break;
        case OP_JMP:
            pc += (size_t)sj_of(i);
            break;
        case OP_TEST:
            if ((cond = truth(&r[a])) < 0)
                return GIVE_UP;
            pc += cond != (int)k_of(i); /* skips the jump */
            break;
        case OP_TESTSET:
            if ((cond = truth(&r[b_of(i)])) < 0)
                return GIVE_UP;
            if (cond != (int)k_of(i))
                pc++;
            else
                r[a] = r[b_of(i)];
            break;
        case OP_RETURN:
            if (b_of(i) != 2)
                return GIVE_UP; /* none, or several */
            /* fall through */
        case OP_RETURN1:
            *out = r[a];
            return 0;
        case OP_RETURN0:
            memset(out, 0, sizeof *out);
            return 0;
        default:
            if (is_arith(op)) {
                if (run_arith(x, i))
                    return GIVE_UP;
                pc++; /* MMBIN: the metamethod Lua calls for non-numbers */
            } else if (!is_compare(op) || (cond = condition(x, i)) < 0) {
                return GIVE_UP;
            } else {
                pc += cond != (int)k_of(i); /* skips the jump */
            }
        }
    }
    return GIVE_UP;
}

/* Runs n with its parameters' values; 0 with the result, or GIVE_UP. */
static int run(run_t *x, sl_vm_t *vm, const sl_native_t *n, const nval_t *args, nval_t *out)
{
    x->vm = vm;
    x->n = n;
    x->table.made = x->table.count = 0;
    memset(x->r, 0, (size_t)n->stack * sizeof x->r[0]);
    memcpy(x->r, args, (size_t)n->params * sizeof *args);
    return interpret(x, out);
}

int sl_native_filter_run(sl_vm_t *vm, const sl_native_t *n, int slot, int *keep)
{
    run_t x;
    nval_t arg = {.type = V_RECORD, .slot = slot}, result;
    if (run(&x, vm, n, &arg, &result))
        return GIVE_UP;
    int holds = truth(&result);
    if (holds < 0)
        return GIVE_UP;
    *keep = holds;
    return 0;
}

/* ---- writing the table ------------------------------------------------------ */

/* The text of the table's JSON object and its tokens, as jsontok.c would
 * make them: the object (its keys counted, next past its last token), then
 * per field its key (size 1) and its value, strings without their quotes. */
typedef struct writer {
    char text[TEXT_MAX];
    size_t at;
    sl_jtok_t tokens[1 + 2 * FIELDS_MAX];
    int count;
} writer_t;

/* Appends n bytes, quoted or not, as a token of type (size: 1 for a key);
 * -1 unless the text, its quotes and two more bytes (a separator, the
 * closing brace) fit. */
static int put(writer_t *w, const char *s, size_t n, int quoted, uint8_t type, int32_t size)
{
    if (w->at + n + 4 > TEXT_MAX)
        return -1;
    if (quoted)
        w->text[w->at++] = '"';
    w->tokens[w->count] = (sl_jtok_t){.start = (int32_t)w->at,
                                      .end = (int32_t)(w->at + n),
                                      .size = size,
                                      .next = w->count + 1,
                                      .type = type};
    w->count++;
    memcpy(w->text + w->at, s, n);
    w->at += n;
    if (quoted)
        w->text[w->at++] = '"';
    return 0;
}

/* Appends v as encode.c writes it; -1 where only Lua can. */
static int put_value(writer_t *w, const nval_t *v)
{
    char text[SL_JSON_NUMBER_TEXT_MAX];
    switch (v->type) {
    case V_NULL:
        return put(w, "null", 4, 0, SL_JTOK_NULL, 0);
    case V_TRUE:
        return put(w, "true", 4, 0, SL_JTOK_TRUE, 0);
    case V_FALSE:
        return put(w, "false", 5, 0, SL_JTOK_FALSE, 0);
    case V_INT:
        return put(w, text, sl_json_number_text(1, v->i, 0, text), 0, SL_JTOK_NUMBER, 0);
    case V_FLT:
        if (!isfinite(v->d))
            return -1; /* Lua raises */
        return put(w, text, sl_json_number_text(0, 0, v->d, text), 0, SL_JTOK_NUMBER, 0);
    case V_STR:
        return v->plain ? put(w, v->s, v->len, 1, SL_JTOK_STRING, 0) : -1;
    default:
        return -1;
    }
}

/* The JSON object of t into w; -1 where only Lua can write it. */
static int write_table(const table_t *t, writer_t *w)
{
    int values = 0;
    w->tokens[0] = (sl_jtok_t){.size = t->count, .type = SL_JTOK_OBJECT};
    w->text[0] = '{';
    w->at = w->count = 1;
    for (int f = 0; f < t->count; f++) {
        const nval_t *name = t->names[f];
        values += !sl_is_record_field(name->s, name->len);
        if (f > 0)
            w->text[w->at++] = ','; /* each put leaves room for two bytes */
        if (!name->plain || put(w, name->s, name->len, 1, SL_JTOK_STRING, 1))
            return -1;
        w->text[w->at++] = ':';
        if (put_value(w, &t->values[f]))
            return -1;
    }
    w->text[w->at++] = '}';
    w->tokens[0].end = (int32_t)w->at;
    w->tokens[0].next = w->count;
    return values > 0 ? 0 : -1; /* record field names only: a record table */
}

int sl_native_value_run(sl_vm_t *vm, const sl_native_t *n, const int slots[2], const int values[2],
                        const uint8_t **value, int32_t *len, int *doc)
{
    run_t x;
    writer_t w;
    nval_t args[2] = {{0}}, result;
    for (int p = 0; p < n->params && p < 2; p++)
        if (slots[p] >= 0) {
            args[p].type = values[p] ? V_VALUE : V_RECORD;
            args[p].slot = slots[p];
        }
    if (run(&x, vm, n, args, &result) || result.type != V_TABLE || write_table(&x.table, &w))
        return GIVE_UP;
    uint8_t *copy = sl_arena_copy(&vm->arena, w.text, w.at);
    if (!copy || sl_json_add_doc(vm, (const char *)copy, w.tokens, w.count, doc))
        return GIVE_UP;
    *value = copy;
    *len = (int32_t)w.at;
    return 0;
}

/* ---- key functions ----------------------------------------------------------- */

/* A key_by function `return r.value.<field>`: GETFIELD, GETFIELD, RETURN1,
 * RETURN0. */
char *sl_native_key_compile(lua_State *L, int idx)
{
    sl_native_t *n = sl_native_compile(L, idx, 1);
    char *name = NULL;
    if (n && n->count == 4 && op_of(n->code[0]) == OP_GETFIELD && a_of(n->code[0]) == 1 &&
        b_of(n->code[0]) == 0 && op_of(n->code[1]) == OP_GETFIELD && a_of(n->code[1]) == 1 &&
        b_of(n->code[1]) == 1 && n->code[2] == RETURN_R1 && op_of(n->code[3]) == OP_RETURN0) {
        const nval_t *value = &n->k[c_of(n->code[0])], *field = &n->k[c_of(n->code[1])];
        if (value->len == 5 && memcmp(value->s, "value", 5) == 0 &&
            !memchr(field->s, '\0', field->len) && (name = sl_malloc(field->len + 1))) {
            memcpy(name, field->s, field->len);
            name[field->len] = '\0';
        }
    }
    sl_native_free(n);
    return name;
}

/* ---- fields read ------------------------------------------------------------ */

/* What a register may hold, for sl_native_reads: bits of a set. */
enum {
    HOLDS_OTHER = 1,  /* anything but the parameter and its value */
    HOLDS_RECORD = 2, /* the parameter, a record */
    HOLDS_VALUE = 4   /* its r.value */
};

typedef struct reads {
    const sl_native_t *n;
    uint8_t at[CODE_MAX][STACK_MAX]; /* per instruction: what each register may hold */
    uint8_t reached[CODE_MAX];
    const char **names;
    size_t *lens;
    int count, max;
} reads_t;

/* Merges the registers r into instruction pc's. */
static void flow(reads_t *s, size_t pc, const uint8_t *r)
{
    if (pc >= s->n->count)
        return;
    for (int i = 0; i < s->n->stack; i++)
        s->at[pc][i] |= r[i];
    s->reached[pc] = 1;
}

/* Notes field k of the value as read; 0, or -1 past the maximum. */
static int note_field(reads_t *s, const nval_t *k)
{
    for (int i = 0; i < s->count; i++)
        if (s->lens[i] == k->len && memcmp(s->names[i], k->s, k->len) == 0)
            return 0;
    if (s->count == s->max)
        return -1;
    s->names[s->count] = k->s;
    s->lens[s->count++] = k->len;
    return 0;
}

/* GETFIELD from a register holding `from`: what the target may hold, or
 * -1 when the read is not of a field of the value (or of key, ts,
 * partition, offset of the record). */
static int field_read(reads_t *s, uint8_t from, const nval_t *k)
{
    static const char *const record_fields[] = {"key", "ts", "partition", "offset"};
    int holds = from & HOLDS_OTHER;
    if ((from & HOLDS_VALUE) && note_field(s, k))
        return -1;
    if (from & HOLDS_VALUE)
        holds |= HOLDS_OTHER;
    if (from & HOLDS_RECORD) {
        if (k->len == 5 && memcmp(k->s, "value", 5) == 0) {
            holds |= HOLDS_VALUE;
        } else {
            int known = 0;
            for (size_t f = 0; f < sizeof record_fields / sizeof *record_fields; f++)
                known |= strlen(record_fields[f]) == k->len &&
                         memcmp(record_fields[f], k->s, k->len) == 0;
            if (!known)
                return -1;
            holds |= HOLDS_OTHER;
        }
    }
    return holds;
}

/* Follows instruction pc: 0, or -1 if the parameter (or its value) may
 * be used otherwise than by reading its fields or testing its truth. */
static int reads_step(reads_t *s, size_t pc)
{
    const sl_native_t *n = s->n;
    uint32_t i = n->code[pc];
    unsigned op = op_of(i), a = a_of(i), b = b_of(i), c = c_of(i);
    uint8_t r[STACK_MAX], param = HOLDS_RECORD | HOLDS_VALUE;
    memcpy(r, s->at[pc], sizeof r);
    size_t next = pc + 1;
    switch (op) {
    case OP_MOVE:
        r[a] = r[b];
        break;
    case OP_GETFIELD: {
        int holds = field_read(s, r[b], &n->k[c]);
        if (holds < 0)
            return -1;
        r[a] = (uint8_t)holds;
        break;
    }
    case OP_SETFIELD:
        if ((r[a] & param) || (!k_of(i) && (r[c] & param)))
            return -1; /* into the parameter, or the parameter into the table */
        break;
    case OP_LOADNIL:
        for (unsigned k = 0; k <= b; k++)
            r[a + k] = HOLDS_OTHER;
        break;
    case OP_LFALSESKIP:
        r[a] = HOLDS_OTHER;
        flow(s, pc + 2, r);
        return 0;
    case OP_NEWTABLE:
        r[a] = HOLDS_OTHER;
        next = pc + 2;
        break;
    case OP_NOT:
        r[a] = HOLDS_OTHER;
        break;
    case OP_JMP:
        flow(s, pc + 1 + (size_t)sj_of(i), r);
        return 0;
    case OP_TEST:
        flow(s, pc + 1, r);
        flow(s, pc + 2, r);
        return 0;
    case OP_TESTSET:
        flow(s, pc + 2, r); /* no jump: A unchanged */
        r[a] = r[b];
        flow(s, pc + 1, r);
        return 0;
    case OP_RETURN:
        return b == 2 && !(r[a] & param) ? 0 : -1;
    case OP_RETURN1:
        return r[a] & param ? -1 : 0;
    case OP_RETURN0:
        return 0;
    default:
        if (is_arith(op)) {
            if ((r[b] & param) || (op >= OP_ADD && op <= OP_IDIV && (r[c] & param)))
                return -1;
            next = pc + 2; /* MMBIN */
        } else if (is_compare(op)) {
            if ((r[a] & param) || ((op == OP_EQ || op == OP_LT || op == OP_LE) && (r[b] & param)))
                return -1;
            flow(s, pc + 1, r);
            flow(s, pc + 2, r);
            return 0;
        } else if ((op == OP_UNM || op == OP_LEN) && (r[b] & param)) {
            return -1;
        }
        r[a] = HOLDS_OTHER; /* LOADI, LOADF, LOADK, LOADFALSE, LOADTRUE, arithmetic, UNM, LEN */
    }
    flow(s, next, r);
    return 0;
}

int sl_native_reads(const sl_native_t *n, int param, const char **names, size_t *lens, int max)
{
    reads_t *s = sl_calloc(1, sizeof *s);
    if (!s || param < 0 || param >= n->params) {
        sl_free(s);
        return -1;
    }
    s->n = n;
    s->names = names;
    s->lens = lens;
    s->max = max;
    uint8_t r[STACK_MAX];
    for (int k = 0; k < n->stack; k++)
        r[k] = HOLDS_OTHER;
    r[param] = HOLDS_RECORD;
    flow(s, 0, r);
    int rc = 0;
    for (size_t pc = 0; rc == 0 && pc < n->count; pc++)
        if (s->reached[pc])
            rc = reads_step(s, pc);
    int count = rc ? -1 : s->count;
    sl_free(s);
    return count;
}

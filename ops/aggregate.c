/*
 * aggregate.c - aggregate sets, their states, encoding and results (the
 * rules and the byte layout are in aggregate.h).
 *
 * A state is one allocation: the set pointer and one slot per member. A
 * slot has a small fixed part (member_t: count, number, time), a sketch
 * (used by distinct members) and a buffer (used by reduce members).
 *
 * Changes are made in two steps so that a failure leaves the state as it
 * was: first every member's new fixed part is computed into a scratch
 * array and everything that can fail (checks, allocations) is done, then
 * the results are installed, which cannot fail. The one exception is
 * distinct members on -ENOMEM (see aggregate.h): sketch adds and merges
 * are idempotent, so a partial one is harmless on retry.
 */
#include "ops/aggregate.h"
#include "ops/hll.h"
#include "storage/buf.h"
#include "storage/dtoa.h"
#include "storage/storage.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_BYTES 6
#define NUMBER_BYTES 9
#define COUNT_LIMIT  ((uint64_t)INT64_MAX)

typedef struct member_def {
    char *name;
    char *source; /* NULL if none */
    sl_agg_kind_t kind;
    sl_buf_t label; /* "name": as results write it, made once */
} member_def_t;

struct sl_aggset {
    member_def_t members[SL_AGGSET_MAX];
    int count;
    int sketches_or_reduced; /* has a distinct or reduce member: state beyond member_t */
    uint64_t fingerprint;
};

/* A member's fixed state. count: count: records; avg: values; min, max,
 * last: 1 when holding a value. value: sum, avg: the sum; min, max, last:
 * the value. time: last: the value's event time. */
typedef struct member {
    uint64_t count;
    sl_number_t value;
    int64_t time;
} member_t;

typedef struct slot {
    member_t m;
    sl_hll_t sketch;
    sl_buf_t reduced;
} slot_t;

struct sl_aggstate {
    const sl_aggset_t *set;
    slot_t slots[];
};

/* ---- numbers --------------------------------------------------------- */

static double to_double(sl_number_t n)
{
    return n.is_double ? n.d : (double)n.i;
}

/* Compares integer i with finite double d exactly. */
static int compare_int_double(int64_t i, double d)
{
    if (d >= 9223372036854775808.0) /* 2^63 */
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    int64_t whole = (int64_t)d; /* toward zero, exact in this range */
    if (i != whole)
        return i < whole ? -1 : 1;
    double fraction = d - (double)whole;
    return fraction > 0 ? -1 : fraction < 0;
}

int sl_number_compare(sl_number_t a, sl_number_t b)
{
    if (!a.is_double && !b.is_double)
        return a.i < b.i ? -1 : a.i > b.i;
    if (a.is_double && b.is_double)
        return a.d < b.d ? -1 : a.d > b.d;
    if (!a.is_double)
        return compare_int_double(a.i, b.d);
    return -compare_int_double(b.i, a.d);
}

/* a + b, an integer while exact; 0, or -1 if the double overflows. */
static int number_add(sl_number_t a, sl_number_t b, sl_number_t *out)
{
    int64_t sum;
    if (!a.is_double && !b.is_double && !__builtin_add_overflow(a.i, b.i, &sum)) {
        *out = sl_number_int(sum);
        return 0;
    }
    *out = sl_number_double(to_double(a) + to_double(b));
    return isfinite(out->d) ? 0 : -1;
}

/* Checks the JSON number grammar; *integral when no fraction or exponent. */
static bool json_number_syntax(const char *p, const char *end, bool *integral)
{
    if (p < end && *p == '-')
        p++;
    if (p == end || *p < '0' || *p > '9')
        return false;
    if (*p++ != '0')
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    *integral = true;
    if (p < end && *p == '.') {
        const char *digits = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits)
            return false;
        *integral = false;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-'))
            p++;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits)
            return false;
        *integral = false;
    }
    return p == end;
}

/* Reads an integral JSON number; false if it does not fit int64. */
static bool parse_int64(const char *p, const char *end, int64_t *out)
{
    bool negative = *p == '-';
    uint64_t v = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (p += negative; p < end; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (v > (limit - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

int sl_number_parse(const char *text, size_t n, sl_number_t *out)
{
    char copy[512];
    bool integral;
    if (!json_number_syntax(text, text + n, &integral))
        return sl_error_set(SL_EINVALID, "\"%.*s\" is not a JSON number", n > 64 ? 64 : (int)n,
                            text);
    int64_t i;
    if (integral && parse_int64(text, text + n, &i)) {
        *out = sl_number_int(i);
        return 0;
    }
    double d;
    if (sl_decimal_double(text, n, &d)) {
        *out = sl_number_double(d);
        return 0;
    }
    if (n >= sizeof copy)
        return sl_error_set(SL_EINVALID, "number \"%.32s...\" is over %zu characters", text,
                            sizeof copy - 1);
    memcpy(copy, text, n);
    copy[n] = '\0';
    d = strtod(copy, NULL);
    if (!isfinite(d))
        return sl_error_set(SL_EINVALID, "number %.64s is out of the range of a double", copy);
    *out = sl_number_double(d);
    return 0;
}

int sl_number_json(sl_number_t number, sl_buf_t *out)
{
    char text[SL_DOUBLE_TEXT_MAX], *end = text + sizeof text;
    if (!number.is_double) { /* most results are counts */
        char *start = sl_int64_digits(end, number.i);
        return sl_buf_append(out, start, (size_t)(end - start));
    }
    return sl_buf_append(out, text, (size_t)sl_double_text(number.d, text));
}

/* ---- sets ------------------------------------------------------------ */

static const char *const kind_names[] = {
    [SL_AGG_COUNT] = "count",       [SL_AGG_SUM] = "sum",       [SL_AGG_MIN] = "min",
    [SL_AGG_MAX] = "max",           [SL_AGG_AVG] = "avg",       [SL_AGG_LAST] = "last",
    [SL_AGG_DISTINCT] = "distinct", [SL_AGG_REDUCE] = "reduce",
};

const char *sl_agg_kind_name(sl_agg_kind_t kind)
{
    return kind_names[kind];
}

static bool valid_kind(int kind)
{
    return kind >= SL_AGG_COUNT && kind <= SL_AGG_REDUCE;
}

int sl_aggset_new(sl_aggset_t **out)
{
    sl_aggset_t *set = sl_calloc(1, sizeof *set);
    if (!set)
        return -ENOMEM;
    *out = set;
    return 0;
}

void sl_aggset_free(sl_aggset_t *set)
{
    if (!set)
        return;
    for (int i = 0; i < set->count; i++) {
        sl_free(set->members[i].name);
        sl_free(set->members[i].source);
        sl_buf_free(&set->members[i].label);
    }
    sl_free(set);
}

/* Length of the valid UTF-8 sequence at p (no control characters), or 0. */
static size_t utf8_char(const uint8_t *p)
{
    if (*p < 0x20 || *p == 0x7f)
        return 0;
    if (*p < 0x80)
        return 1;
    size_t n = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : *p >= 0xc2 ? 2 : 0;
    if (n == 0 || *p > 0xf4)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

static int check_name(const sl_aggset_t *set, const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > SL_AGG_NAME_MAX)
        return sl_error_set(SL_EINVALID, "aggregate: a name must be 1 to %d bytes",
                            SL_AGG_NAME_MAX);
    for (const uint8_t *p = (const uint8_t *)name; *p;) {
        size_t n = utf8_char(p);
        if (n == 0)
            return sl_error_set(SL_EINVALID,
                                "aggregate \"%.64s\": a name must be UTF-8 text without control "
                                "characters",
                                name);
        p += n;
    }
    for (int i = 0; i < set->count; i++)
        if (strcmp(set->members[i].name, name) == 0)
            return sl_error_set(SL_EINVALID, "aggregate \"%.64s\" is defined twice", name);
    return 0;
}

static int check_member(const sl_aggset_t *set, const char *name, int kind, const char *source)
{
    if (set->count == SL_AGGSET_MAX)
        return sl_error_set(SL_EINVALID, "aggregate: more than %d aggregates in one set",
                            SL_AGGSET_MAX);
    int rc = check_name(set, name);
    if (rc)
        return rc;
    if (!valid_kind(kind))
        return sl_error_set(SL_EINVALID, "aggregate \"%.64s\": unknown kind %d", name, kind);
    if (source && strlen(source) > SL_AGG_SOURCE_MAX)
        return sl_error_set(SL_EINVALID, "aggregate \"%.64s\": source is over %d bytes", name,
                            SL_AGG_SOURCE_MAX);
    return 0;
}

/* Chains the member's kind, name and source into the fingerprint. */
static uint64_t fingerprint_member(uint64_t seed, const member_def_t *def)
{
    uint8_t kind = (uint8_t)def->kind;
    const char *source = def->source ? def->source : "";
    seed = sl_hash64(&kind, 1, seed);
    seed = sl_hash64(def->name, strlen(def->name) + 1, seed);
    return sl_hash64(source, strlen(source) + 1, seed);
}

int sl_aggset_add(sl_aggset_t *set, const char *name, sl_agg_kind_t kind, const char *source)
{
    int rc = check_member(set, name, (int)kind, source);
    if (rc)
        return rc;
    member_def_t def = {sl_strdup(name), source ? sl_strdup(source) : NULL, kind, {0}};
    if (!def.name || (source && !def.source) ||
        sl_buf_json_string(name, strlen(name), &def.label) || sl_buf_append(&def.label, ":", 1)) {
        sl_free(def.name);
        sl_free(def.source);
        sl_buf_free(&def.label);
        return -ENOMEM;
    }
    set->fingerprint = fingerprint_member(set->fingerprint, &def);
    set->members[set->count] = def;
    set->sketches_or_reduced |= kind == SL_AGG_DISTINCT || kind == SL_AGG_REDUCE;
    return set->count++;
}

int sl_aggset_count(const sl_aggset_t *set)
{
    return set->count;
}

const char *sl_aggset_name(const sl_aggset_t *set, int i)
{
    return set->members[i].name;
}

sl_agg_kind_t sl_aggset_kind(const sl_aggset_t *set, int i)
{
    return set->members[i].kind;
}

const char *sl_aggset_source(const sl_aggset_t *set, int i)
{
    return set->members[i].source;
}

/* ---- states ---------------------------------------------------------- */

int sl_aggstate_new(const sl_aggset_t *set, sl_aggstate_t **out)
{
    sl_aggstate_t *state = sl_calloc(1, sizeof *state + (size_t)set->count * sizeof(slot_t));
    if (!state)
        return -ENOMEM;
    state->set = set;
    *out = state;
    return 0;
}

void sl_aggstate_free(sl_aggstate_t *state)
{
    if (!state)
        return;
    for (int i = 0; i < state->set->count; i++) {
        sl_hll_clear(&state->slots[i].sketch);
        sl_buf_free(&state->slots[i].reduced);
    }
    sl_free(state);
}

void sl_aggstate_reset(sl_aggstate_t *state)
{
    for (int i = 0; i < state->set->count; i++) {
        state->slots[i].m = (member_t){0};
        sl_hll_clear(&state->slots[i].sketch);
        state->slots[i].reduced.len = 0;
    }
}

static int member_error(const sl_aggstate_t *state, int i, const char *what)
{
    const member_def_t *def = &state->set->members[i];
    return sl_error_set(SL_EINVALID, "aggregate \"%.64s\" (%s of %.64s): %s", def->name,
                        kind_names[def->kind], def->source ? def->source : "records", what);
}

static bool is_numeric(sl_agg_kind_t kind)
{
    return kind == SL_AGG_SUM || kind == SL_AGG_MIN || kind == SL_AGG_MAX || kind == SL_AGG_AVG ||
           kind == SL_AGG_LAST;
}

/* Checks member i's input for one record. */
static int check_input(const sl_aggstate_t *state, int i, const sl_agg_input_t *in)
{
    sl_agg_kind_t kind = state->set->members[i].kind;
    if (kind == SL_AGG_COUNT || kind == SL_AGG_REDUCE || in->type == SL_AGG_NONE)
        return 0;
    if (in->type == SL_AGG_BYTES)
        return kind == SL_AGG_DISTINCT ? 0 : member_error(state, i, "the value is not a number");
    if (in->type != SL_AGG_NUMBER)
        return member_error(state, i, "unknown input type");
    if (in->number.is_double && !isfinite(in->number.d))
        return member_error(state, i, "the value is not a finite number");
    return 0;
}

/* Takes value into a min (sign -1) or max (sign 1) member. */
static member_t extreme(member_t m, sl_number_t value, int sign)
{
    if (m.count == 0 || sl_number_compare(value, m.value) * sign > 0)
        return (member_t){1, value, 0};
    return m;
}

/* Takes (value, time) into a last member; ties go to the newcomer. */
static member_t latest(member_t m, sl_number_t value, int64_t time)
{
    if (m.count == 0 || time >= m.time)
        return (member_t){1, value, time};
    return m;
}

/* next->count = count + more, or -1 past COUNT_LIMIT. */
static int counted(uint64_t count, uint64_t more, member_t *next)
{
    if (count > COUNT_LIMIT - more)
        return -1;
    next->count = count + more;
    return 0;
}

/* Member i's fixed part after one record; 0 or an error. */
static int step(const sl_aggstate_t *state, int i, const sl_agg_input_t *in, int64_t time,
                member_t *next)
{
    member_t m = state->slots[i].m;
    sl_agg_kind_t kind = state->set->members[i].kind;
    *next = m;
    if (kind == SL_AGG_COUNT)
        return counted(m.count, 1, next) ? member_error(state, i, "the count overflows") : 0;
    if (!is_numeric(kind) || in->type != SL_AGG_NUMBER)
        return 0;
    if (kind == SL_AGG_MIN || kind == SL_AGG_MAX)
        *next = extreme(m, in->number, kind == SL_AGG_MIN ? -1 : 1);
    else if (kind == SL_AGG_LAST)
        *next = latest(m, in->number, time);
    else if (number_add(m.value, in->number, &next->value) != 0)
        return member_error(state, i, "the sum overflows a double");
    else if (kind == SL_AGG_AVG && counted(m.count, 1, next) != 0)
        return member_error(state, i, "the count overflows");
    return 0;
}

/* Adds a distinct member's input to its sketch, hashed with its type. */
static int add_distinct(sl_hll_t *sketch, const sl_agg_input_t *in)
{
    enum { SEED_STRING = 1, SEED_INTEGER = 2, SEED_DOUBLE = 3 };
    if (in->type == SL_AGG_BYTES)
        return sl_hll_add_hash(sketch, sl_hash64(in->bytes, in->len, SEED_STRING));
    uint8_t bytes[8];
    uint64_t bits;
    int64_t whole = 0;
    double d = in->number.d;
    bool integral =
        !in->number.is_double || (d >= -9223372036854775808.0 && d < 9223372036854775808.0 &&
                                  (double)(whole = (int64_t)d) == d);
    if (!in->number.is_double)
        whole = in->number.i;
    if (integral)
        bits = (uint64_t)whole;
    else
        memcpy(&bits, &d, 8);
    for (int i = 0; i < 8; i++)
        bytes[i] = (uint8_t)(bits >> (8 * i));
    return sl_hll_add_hash(sketch, sl_hash64(bytes, 8, integral ? SEED_INTEGER : SEED_DOUBLE));
}

int sl_aggstate_add(sl_aggstate_t *state, const sl_agg_input_t *inputs, int64_t event_time)
{
    member_t next[SL_AGGSET_MAX];
    int n = state->set->count;
    for (int i = 0; i < n; i++) {
        int rc = check_input(state, i, &inputs[i]);
        if (rc == 0)
            rc = step(state, i, &inputs[i], event_time, &next[i]);
        if (rc)
            return rc;
    }
    for (int i = 0; i < n; i++)
        if (state->set->members[i].kind == SL_AGG_DISTINCT && inputs[i].type != SL_AGG_NONE)
            if (add_distinct(&state->slots[i].sketch, &inputs[i]) != 0)
                return -ENOMEM;
    for (int i = 0; i < n; i++)
        state->slots[i].m = next[i];
    return 0;
}

int sl_aggstate_set_reduce(sl_aggstate_t *state, int i, const void *json, size_t n)
{
    if (i < 0 || i >= state->set->count || state->set->members[i].kind != SL_AGG_REDUCE)
        return sl_error_set(SL_EINVALID, "aggregate: member %d is not a reducer", i);
    if (n > SL_AGG_REDUCE_MAX)
        return member_error(state, i, "the reduced value is over 1 MiB of JSON");
    sl_buf_t *buf = &state->slots[i].reduced;
    if (sl_buf_reserve(buf, n > buf->len ? n - buf->len : 0) != 0)
        return -ENOMEM;
    buf->len = 0;
    return sl_buf_append(buf, json, n);
}

/* Member i of src folded into member i of dst: the fixed part into *next. */
static int merge_member(const sl_aggstate_t *dst, const sl_aggstate_t *src, int i, member_t *next)
{
    member_t a = dst->slots[i].m, b = src->slots[i].m;
    sl_agg_kind_t kind = dst->set->members[i].kind;
    *next = a;
    if (kind == SL_AGG_COUNT || kind == SL_AGG_AVG)
        if (counted(a.count, b.count, next) != 0)
            return member_error(dst, i, "the count overflows");
    if ((kind == SL_AGG_SUM || kind == SL_AGG_AVG) &&
        number_add(a.value, b.value, &next->value) != 0)
        return member_error(dst, i, "the sum overflows a double");
    if ((kind == SL_AGG_MIN || kind == SL_AGG_MAX) && b.count)
        *next = extreme(a, b.value, kind == SL_AGG_MIN ? -1 : 1);
    if (kind == SL_AGG_LAST && b.count)
        *next = latest(a, b.value, b.time);
    if (kind == SL_AGG_REDUCE && dst->slots[i].reduced.len && src->slots[i].reduced.len)
        return member_error(dst, i, "a reducer's results cannot be merged (no merge function)");
    return 0;
}

/* Makes room for src's reduce values in dst, so installing them cannot fail. */
static int reserve_reduced(sl_aggstate_t *dst, const sl_aggstate_t *src, bool replace)
{
    for (int i = 0; i < dst->set->count; i++) {
        sl_buf_t *buf = &dst->slots[i].reduced;
        size_t need = src->slots[i].reduced.len;
        if ((replace || buf->len == 0) && need > buf->len)
            if (sl_buf_reserve(buf, need - buf->len) != 0)
                return -ENOMEM;
    }
    return 0;
}

static void install_reduced(sl_buf_t *dst, const sl_buf_t *src)
{
    if (src->len)
        memcpy(dst->data, src->data, src->len);
    dst->len = src->len;
}

int sl_aggstate_merge(sl_aggstate_t *dst, const sl_aggstate_t *src)
{
    member_t next[SL_AGGSET_MAX];
    int n = dst->set->count;
    for (int i = 0; i < n; i++) {
        int rc = merge_member(dst, src, i, &next[i]);
        if (rc)
            return rc;
    }
    if (reserve_reduced(dst, src, false) != 0)
        return -ENOMEM;
    for (int i = 0; i < n; i++)
        if (dst->set->members[i].kind == SL_AGG_DISTINCT &&
            sl_hll_merge(&dst->slots[i].sketch, &src->slots[i].sketch) != 0)
            return -ENOMEM;
    for (int i = 0; i < n; i++) {
        dst->slots[i].m = next[i];
        if (dst->slots[i].reduced.len == 0)
            install_reduced(&dst->slots[i].reduced, &src->slots[i].reduced);
    }
    return 0;
}

/* Installs the sketches in `sketches` for the distinct members of state,
 * clearing what they replace. */
static void install_sketches(sl_aggstate_t *state, sl_hll_t *sketches)
{
    for (int i = 0; i < state->set->count; i++)
        if (state->set->members[i].kind == SL_AGG_DISTINCT) {
            sl_hll_clear(&state->slots[i].sketch);
            state->slots[i].sketch = sketches[i];
        }
}

static void clear_sketches(sl_hll_t *sketches, int n)
{
    for (int i = 0; i < n; i++)
        sl_hll_clear(&sketches[i]);
}

int sl_aggstate_copy(sl_aggstate_t *dst, const sl_aggstate_t *src)
{
    sl_hll_t sketches[SL_AGGSET_MAX];
    int n = dst->set->count;
    for (int i = 0; i < n; i++)
        sl_hll_init(&sketches[i]);
    for (int i = 0; i < n; i++)
        if (dst->set->members[i].kind == SL_AGG_DISTINCT &&
            sl_hll_copy(&sketches[i], &src->slots[i].sketch) != 0)
            goto fail;
    if (reserve_reduced(dst, src, true) != 0)
        goto fail;
    install_sketches(dst, sketches);
    for (int i = 0; i < n; i++) {
        dst->slots[i].m = src->slots[i].m;
        install_reduced(&dst->slots[i].reduced, &src->slots[i].reduced);
    }
    return 0;
fail:
    clear_sketches(sketches, n);
    return -ENOMEM;
}

/* ---- encoding -------------------------------------------------------- */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t number_bits(sl_number_t n)
{
    uint64_t bits;
    if (!n.is_double)
        return (uint64_t)n.i;
    memcpy(&bits, &n.d, 8);
    return bits;
}

static uint8_t *put_uvarint(uint8_t *p, uint64_t v)
{
    return p + sl_put_uvarint(p, v);
}

/* A number with tag 0 integer / 1 double; an optional one with 0 empty /
 * 1 integer / 2 double; then a zigzag varint or the double's 8 bytes
 * (nothing when empty). */
static uint8_t *put_number(uint8_t *p, sl_number_t n, bool optional, bool present)
{
    *p++ = !present ? 0 : (uint8_t)(n.is_double + optional);
    if (!present)
        return p;
    if (!n.is_double)
        return put_uvarint(p, sl_zigzag(n.i));
    put_le64(p, number_bits(n));
    return p + 8;
}

static size_t number_size(sl_number_t n, bool present)
{
    return 1 + (!present ? 0 : n.is_double ? 8 : sl_uvarint_size(sl_zigzag(n.i)));
}

static size_t payload_size(const slot_t *slot, sl_agg_kind_t kind)
{
    const member_t *m = &slot->m;
    switch (kind) {
    case SL_AGG_COUNT:
        return sl_uvarint_size(m->count);
    case SL_AGG_SUM:
        return number_size(m->value, true);
    case SL_AGG_MIN:
    case SL_AGG_MAX:
        return number_size(m->value, m->count > 0);
    case SL_AGG_AVG:
        return sl_uvarint_size(m->count) + number_size(m->value, true);
    case SL_AGG_LAST:
        return number_size(m->value, m->count > 0) +
               (m->count > 0 ? sl_uvarint_size(sl_zigzag(m->time)) : 0);
    case SL_AGG_DISTINCT:
        return sl_uvarint_size(sl_hll_encoded_size(&slot->sketch)) +
               sl_hll_encoded_size(&slot->sketch);
    case SL_AGG_REDUCE:
        return sl_uvarint_size(slot->reduced.len) + slot->reduced.len;
    }
    return 0;
}

size_t sl_aggstate_encoded_size(const sl_aggstate_t *state)
{
    size_t n = HEADER_BYTES;
    for (int i = 0; i < state->set->count; i++)
        n += 1 + payload_size(&state->slots[i], state->set->members[i].kind);
    return n;
}

static uint8_t *encode_member(const slot_t *slot, sl_agg_kind_t kind, uint8_t *p)
{
    const member_t *m = &slot->m;
    *p++ = (uint8_t)kind;
    switch (kind) {
    case SL_AGG_COUNT:
        return put_uvarint(p, m->count);
    case SL_AGG_SUM:
        return put_number(p, m->value, false, true);
    case SL_AGG_MIN:
    case SL_AGG_MAX:
        return put_number(p, m->value, true, m->count > 0);
    case SL_AGG_AVG:
        return put_number(put_uvarint(p, m->count), m->value, false, true);
    case SL_AGG_LAST:
        p = put_number(p, m->value, true, m->count > 0);
        return m->count ? put_uvarint(p, sl_zigzag(m->time)) : p;
    case SL_AGG_DISTINCT:
        p = put_uvarint(p, sl_hll_encoded_size(&slot->sketch));
        sl_hll_encode(&slot->sketch, p);
        return p + sl_hll_encoded_size(&slot->sketch);
    case SL_AGG_REDUCE:
        p = put_uvarint(p, slot->reduced.len);
        if (slot->reduced.len)
            memcpy(p, slot->reduced.data, slot->reduced.len);
        return p + slot->reduced.len;
    }
    return p;
}

void sl_aggstate_encode(const sl_aggstate_t *state, uint8_t *out)
{
    out[0] = SL_AGGSTATE_VERSION;
    out[1] = (uint8_t)state->set->count;
    put_le32(out + 2, (uint32_t)state->set->fingerprint);
    uint8_t *p = out + HEADER_BYTES;
    for (int i = 0; i < state->set->count; i++)
        p = encode_member(&state->slots[i], state->set->members[i].kind, p);
}

/* Where decoding stands: the bytes left and the member being read. */
typedef struct reader {
    const uint8_t *p;
    const uint8_t *end;
    const sl_aggset_t *set;
    int member;
    int version; /* 1: fixed-width fields; 2: varints (as encoded now) */
} reader_t;

static int corrupt(const reader_t *r, const char *what)
{
    return sl_error_set(SL_ECORRUPT, "aggregate state, member %d (\"%.64s\"): %s", r->member,
                        r->set->members[r->member].name, what);
}

/* The next n bytes, or NULL (with the detail set) if fewer are left. */
static const uint8_t *take(reader_t *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        corrupt(r, "truncated");
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    return p;
}

/* An unsigned LEB128 varint in its shortest form, at most 64 bits. */
static int read_uvarint(reader_t *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        const uint8_t *p = take(r, 1);
        if (!p)
            return SL_ECORRUPT;
        if (shift == 63 && *p > 1)
            return corrupt(r, "a varint over 64 bits");
        v |= (uint64_t)(*p & 0x7f) << shift;
        if (!(*p & 0x80)) {
            if (*p == 0 && shift > 0)
                return corrupt(r, "a varint not in its shortest form");
            *out = v;
            return 0;
        }
    }
    return SL_ECORRUPT; /* not reached: the tenth byte ends it or is refused */
}

/* Version 2: tag, then a zigzag varint or 8 bytes of double (nothing when
 * empty). */
static int read_number_v2(reader_t *r, bool optional, sl_number_t *n, bool *present)
{
    const uint8_t *p = take(r, 1);
    uint64_t u;
    if (!p)
        return SL_ECORRUPT;
    int tag = p[0] - optional;
    *present = !(optional && p[0] == 0);
    if (!*present)
        return 0;
    if (tag != 0 && tag != 1)
        return corrupt(r, "bad number tag");
    if (tag == 0) {
        int rc = read_uvarint(r, &u);
        *n = sl_number_int(sl_unzigzag(u));
        return rc;
    }
    if (!(p = take(r, 8)))
        return SL_ECORRUPT;
    u = get_le64(p);
    *n = sl_number_double(0);
    memcpy(&n->d, &u, 8);
    return isfinite(n->d) ? 0 : corrupt(r, "a double is not finite");
}

/* Reads a number (optional: may be empty); *present says which. */
static int read_number(reader_t *r, bool optional, sl_number_t *n, bool *present)
{
    if (r->version >= 2)
        return read_number_v2(r, optional, n, present);
    const uint8_t *p = take(r, NUMBER_BYTES);
    if (!p)
        return SL_ECORRUPT;
    int tag = p[0] - optional, bits_zero = get_le64(p + 1) == 0;
    *present = !(optional && p[0] == 0);
    if (!*present)
        return bits_zero ? 0 : corrupt(r, "an empty value has non-zero bytes");
    if (tag != 0 && tag != 1)
        return corrupt(r, "bad number tag");
    uint64_t bits = get_le64(p + 1);
    if (tag == 0) {
        *n = sl_number_int((int64_t)bits);
        return 0;
    }
    *n = sl_number_double(0);
    memcpy(&n->d, &bits, 8);
    return isfinite(n->d) ? 0 : corrupt(r, "a double is not finite");
}

static int read_count(reader_t *r, uint64_t *count)
{
    if (r->version >= 2) {
        int rc = read_uvarint(r, count);
        if (rc)
            return rc;
    } else {
        const uint8_t *p = take(r, 8);
        if (!p)
            return SL_ECORRUPT;
        *count = get_le64(p);
    }
    return *count > COUNT_LIMIT ? corrupt(r, "count over 2^63 - 1") : 0;
}

static int read_avg(reader_t *r, member_t *m)
{
    bool present;
    int rc = read_count(r, &m->count);
    if (rc == 0)
        rc = read_number(r, false, &m->value, &present);
    if (rc == 0 && m->count == 0 && (m->value.is_double || m->value.i != 0))
        rc = corrupt(r, "an average of nothing has a non-zero sum");
    return rc;
}

static int read_last(reader_t *r, member_t *m)
{
    bool present;
    int rc = read_number(r, true, &m->value, &present);
    if (rc)
        return rc;
    m->count = present;
    if (r->version >= 2) { /* the time only when there is a value */
        uint64_t u = 0;
        rc = present ? read_uvarint(r, &u) : 0;
        m->time = sl_unzigzag(u);
        return rc;
    }
    const uint8_t *p = take(r, 8);
    if (!p)
        return SL_ECORRUPT;
    m->time = (int64_t)get_le64(p);
    return present || m->time == 0 ? 0 : corrupt(r, "an empty last has a time");
}

/* Reads a length (version 1: uint32; 2: varint) and that many bytes. */
static int read_blob(reader_t *r, size_t max, const uint8_t **data, size_t *len)
{
    if (r->version >= 2) {
        uint64_t n;
        int rc = read_uvarint(r, &n);
        if (rc)
            return rc;
        *len = n > max ? max + 1 : (size_t)n;
    } else {
        const uint8_t *p = take(r, 4);
        if (!p)
            return SL_ECORRUPT;
        *len = get_le32(p);
    }
    if (*len > max)
        return corrupt(r, "length over the limit");
    *data = take(r, *len);
    return *data ? 0 : SL_ECORRUPT;
}

/* Reads member r->member's payload into *m, a sketch or a reduce value. */
static int read_member(reader_t *r, sl_agg_kind_t kind, member_t *m, sl_hll_t *sketch,
                       const uint8_t **reduced, size_t *reduced_len)
{
    bool present;
    const uint8_t *data = NULL;
    size_t len = 0;
    int rc;
    *m = (member_t){0};
    switch (kind) {
    case SL_AGG_COUNT:
        return read_count(r, &m->count);
    case SL_AGG_SUM:
        return read_number(r, false, &m->value, &present);
    case SL_AGG_MIN:
    case SL_AGG_MAX:
        rc = read_number(r, true, &m->value, &present);
        m->count = present;
        return rc;
    case SL_AGG_AVG:
        return read_avg(r, m);
    case SL_AGG_LAST:
        return read_last(r, m);
    case SL_AGG_DISTINCT:
        rc = read_blob(r, SL_HLL_DENSE_BYTES, &data, &len);
        return rc ? rc : sl_hll_decode(sketch, data, len);
    case SL_AGG_REDUCE:
        return read_blob(r, SL_AGG_REDUCE_MAX, reduced, reduced_len);
    }
    return corrupt(r, "unknown kind");
}

static int read_header(reader_t *r)
{
    const sl_aggset_t *set = r->set;
    if (r->end - r->p < HEADER_BYTES)
        return sl_error_set(SL_ECORRUPT, "aggregate state: truncated header");
    if (r->p[0] != SL_AGGSTATE_VERSION && r->p[0] != 1) /* 1: read, written as 2 next time */
        return sl_error_set(SL_ECORRUPT, "aggregate state: unknown version %u", r->p[0]);
    r->version = r->p[0];
    if (r->p[1] != set->count)
        return sl_error_set(SL_ECORRUPT, "aggregate state: %u members, the set has %d", r->p[1],
                            set->count);
    if (get_le32(r->p + 2) != (uint32_t)set->fingerprint)
        return sl_error_set(SL_ECORRUPT,
                            "aggregate state: written for another aggregate definition");
    r->p += HEADER_BYTES;
    return 0;
}

/* Decoded parts waiting to be installed. */
typedef struct decoded {
    member_t members[SL_AGGSET_MAX];
    sl_hll_t sketches[SL_AGGSET_MAX];
    sl_buf_t reduced[SL_AGGSET_MAX]; /* views into the input, not owned */
} decoded_t;

static int read_members(reader_t *r, decoded_t *d)
{
    for (r->member = 0; r->member < r->set->count; r->member++) {
        sl_agg_kind_t kind = r->set->members[r->member].kind;
        const uint8_t *kind_byte = take(r, 1), *reduced = NULL;
        size_t reduced_len = 0;
        int rc = kind_byte ? 0 : SL_ECORRUPT;
        if (rc == 0 && *kind_byte != kind)
            rc = corrupt(r, "kind differs from the set's");
        if (rc == 0)
            rc = read_member(r, kind, &d->members[r->member], &d->sketches[r->member], &reduced,
                             &reduced_len);
        if (rc)
            return rc;
        d->reduced[r->member] = (sl_buf_t){(uint8_t *)reduced, reduced_len, reduced_len};
    }
    return r->p == r->end ? 0 : sl_error_set(SL_ECORRUPT, "aggregate state: trailing bytes");
}

/* Room for the decoded reduce values in state. */
static int reserve_decoded(sl_aggstate_t *state, const decoded_t *d)
{
    for (int i = 0; i < state->set->count; i++) {
        sl_buf_t *buf = &state->slots[i].reduced;
        if (d->reduced[i].len > buf->len && sl_buf_reserve(buf, d->reduced[i].len - buf->len))
            return -ENOMEM;
    }
    return 0;
}

int sl_aggstate_decode(sl_aggstate_t *state, const uint8_t *data, size_t n)
{
    decoded_t d;
    int count = state->set->count;
    reader_t r = {data, data + n, state->set, 0, 0};
    if (!state->set->sketches_or_reduced) { /* counts, sums, averages...: members alone */
        int rc = read_header(&r);
        if (rc == 0)
            rc = read_members(&r, &d);
        for (int i = 0; rc == 0 && i < count; i++)
            state->slots[i].m = d.members[i];
        return rc;
    }
    for (int i = 0; i < count; i++)
        sl_hll_init(&d.sketches[i]);
    int rc = read_header(&r);
    if (rc == 0)
        rc = read_members(&r, &d);
    if (rc == 0)
        rc = reserve_decoded(state, &d);
    if (rc) {
        clear_sketches(d.sketches, count);
        return rc;
    }
    install_sketches(state, d.sketches);
    for (int i = 0; i < count; i++) {
        state->slots[i].m = d.members[i];
        install_reduced(&state->slots[i].reduced, &d.reduced[i]);
    }
    return 0;
}

/* ---- results --------------------------------------------------------- */

static sl_agg_result_t number_result(sl_number_t n)
{
    return (sl_agg_result_t){SL_AGG_RESULT_NUMBER, n, NULL, 0};
}

sl_agg_result_t sl_aggstate_result(const sl_aggstate_t *state, int i)
{
    const slot_t *slot = &state->slots[i];
    const member_t *m = &slot->m;
    sl_agg_result_t null = {SL_AGG_NULL, sl_number_int(0), NULL, 0};
    switch (state->set->members[i].kind) {
    case SL_AGG_COUNT:
        return number_result(sl_number_int((int64_t)m->count));
    case SL_AGG_SUM:
        return number_result(m->value);
    case SL_AGG_MIN:
    case SL_AGG_MAX:
    case SL_AGG_LAST:
        return m->count ? number_result(m->value) : null;
    case SL_AGG_AVG:
        return m->count ? number_result(sl_number_double(to_double(m->value) / (double)m->count))
                        : null;
    case SL_AGG_DISTINCT:
        return number_result(sl_number_int(llround(sl_hll_estimate(&slot->sketch))));
    case SL_AGG_REDUCE:
        if (!slot->reduced.len)
            return null;
        return (sl_agg_result_t){SL_AGG_JSON, sl_number_int(0), (const char *)slot->reduced.data,
                                 slot->reduced.len};
    }
    return null;
}

static int json_result(sl_agg_result_t result, sl_buf_t *out)
{
    if (result.type == SL_AGG_NULL)
        return sl_buf_append(out, "null", 4);
    if (result.type == SL_AGG_JSON)
        return sl_buf_append(out, result.json, result.json_len);
    return sl_number_json(result.number, out);
}

int sl_aggstate_json(const sl_aggstate_t *state, sl_buf_t *out)
{
    int rc = sl_buf_append(out, "{", 1);
    for (int i = 0; rc == 0 && i < state->set->count; i++) {
        const sl_buf_t *label = &state->set->members[i].label;
        if (i > 0)
            rc = sl_buf_append(out, ",", 1);
        if (rc == 0)
            rc = sl_buf_append(out, label->data, label->len);
        if (rc == 0)
            rc = json_result(sl_aggstate_result(state, i), out);
    }
    return rc ? rc : sl_buf_append(out, "}", 1);
}

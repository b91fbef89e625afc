/*
 * encode.c - Lua values as JSON text, for records on their way out.
 *
 * Output values are written here rather than by lua-cjson because cjson
 * costs more than the rest of a small map together (its numbers go through
 * snprintf with 14 digits, losing precision, and its value must be measured
 * first because it aborts the process when its buffer cannot grow). This
 * writer grows a buffer owned by the VM up to the VM's memory cap and raises
 * a Lua error past it, so nothing leaks and nothing aborts.
 *
 * The mapping is cjson's, so that scripts see no difference between
 * json.encode() and what a sink writes:
 *
 *   nil, json.null    null
 *   booleans          true, false
 *   integers          decimal digits; floats with an integral value in int64
 *                     range too ("3", not "3.0")
 *   other floats      the shortest text that reads back as the same double
 *                     (a short decimal such as 12.5 without any printf);
 *                     NaN and infinities are refused
 *   strings           as they are, with ", \ and control characters escaped
 *   tables            an array when every key is an integer >= 1 (missing
 *                     items are null; a table more than half holes with a
 *                     largest index over 10 is refused as cjson does), an
 *                     object otherwise (number keys become their text); an
 *                     empty table is {}; lazy tables are filled in first
 *
 * Nesting deeper than 1000 levels, functions, threads and userdata are
 * refused with a sentence naming what was wrong.
 */
#include "lua/vm.h"
#include "storage/dtoa.h"

#include <lua5.4/lauxlib.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 1000

typedef struct writer {
    lua_State *L;
    sl_vm_t *vm;
    size_t len;
} writer_t;

static char *reserve(writer_t *w, size_t more)
{
    sl_vm_t *vm = w->vm;
    size_t want = w->len + more;
    if (want > vm->out_capacity) {
        if (want > vm->limits.memory_bytes)
            sl_vm_raise(w->L, "the value's JSON text is over %zu bytes", vm->limits.memory_bytes);
        size_t capacity = vm->out_capacity ? vm->out_capacity : 4096;
        while (capacity < want)
            capacity *= 2;
        vm->out = sl_vm_need(w->L, sl_realloc(vm->out, capacity));
        vm->out_capacity = capacity;
    }
    return vm->out + w->len;
}

static void put(writer_t *w, const char *s, size_t n)
{
    memcpy(reserve(w, n), s, n);
    w->len += n;
}

static void put_char(writer_t *w, char ch)
{
    *reserve(w, 1) = ch;
    w->len++;
}

/* d = m / 10^k with m an integer below 2^53 and 1 <= k <= 6 (the smallest
 * such k): m's digits with the point put in are the shortest text that
 * reads back as d, since m / 10^k and strtod() both round the same exact
 * quotient. Writes it into text and returns its length; 0 when d is not
 * such a number. */
static size_t short_decimal(double d, char *text)
{
    static const double scale[] = {1e1, 1e2, 1e3, 1e4, 1e5, 1e6};
    for (int k = 1; k <= 6; k++) {
        double m = d * scale[k - 1];
        if (fabs(m) >= 9007199254740992.0 || m != floor(m) || m / scale[k - 1] != d)
            continue;
        char buf[SL_INT64_TEXT_MAX], *end = buf + sizeof buf;
        char *s = sl_int64_digits(end, (int64_t)fabs(m)); /* below 2^53 */
        int nd = (int)(end - s), n = 0;
        if (d < 0)
            text[n++] = '-';
        if (nd <= k) {
            text[n++] = '0';
            text[n++] = '.';
            for (int z = nd; z < k; z++)
                text[n++] = '0';
            memcpy(text + n, s, (size_t)nd);
            n += nd;
        } else {
            memcpy(text + n, s, (size_t)(nd - k));
            n += nd - k;
            text[n++] = '.';
            memcpy(text + n, s + nd - k, (size_t)k);
            n += k;
        }
        return (size_t)n;
    }
    return 0;
}

size_t sl_json_number_text(int is_integer, int64_t integer, double d, char *text)
{
    lua_Integer whole;
    if (!is_integer && sl_json_integral(d, &whole)) {
        is_integer = 1;
        integer = whole;
    }
    if (is_integer) {
        char buf[SL_INT64_TEXT_MAX], *end = buf + sizeof buf;
        char *s = sl_int64_digits(end, integer);
        memcpy(text, s, (size_t)(end - s));
        return (size_t)(end - s);
    }
    size_t n = short_decimal(d, text);
    return n ? n : (size_t)sl_double_text(d, text);
}

static void put_number(writer_t *w, int idx)
{
    lua_State *L = w->L;
    char text[SL_JSON_NUMBER_TEXT_MAX];
    if (lua_isinteger(L, idx)) {
        put(w, text, sl_json_number_text(1, lua_tointeger(L, idx), 0, text));
        return;
    }
    double d = lua_tonumber(L, idx);
    if (!isfinite(d))
        sl_vm_raise(L, "%g cannot be written as JSON (NaN and infinities have no JSON text)", d);
    put(w, text, sl_json_number_text(0, 0, d, text));
}

/* Does put_string write ch as it is? */
static int plain_char(unsigned char ch)
{
    return ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f;
}

int sl_json_plain(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!plain_char((unsigned char)s[i]))
            return 0;
    return 1;
}

static void put_string(writer_t *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put_char(w, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (plain_char(ch))
            continue;
        put(w, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
        switch (ch) {
        case '"':
            put(w, "\\\"", 2);
            break;
        case '\\':
            put(w, "\\\\", 2);
            break;
        case '\n':
            put(w, "\\n", 2);
            break;
        case '\r':
            put(w, "\\r", 2);
            break;
        case '\t':
            put(w, "\\t", 2);
            break;
        case '\b':
            put(w, "\\b", 2);
            break;
        case '\f':
            put(w, "\\f", 2);
            break;
        default:
            put(w, esc, 6);
            break;
        }
    }
    put(w, s + run, n - run);
    put_char(w, '"');
}

static void put_value(writer_t *w, int idx, int depth);

/* The largest index if every key of the table at idx is an integer >= 1,
 * else -1; *count = the number of keys. */
static lua_Integer array_extent(lua_State *L, int idx, lua_Integer *count)
{
    lua_Integer max = 0, n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        if (max >= 0 && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            if (lua_tointeger(L, -1) > max)
                max = lua_tointeger(L, -1);
        } else {
            max = -1;
        }
    }
    *count = n;
    return max;
}

static void put_key(writer_t *w, int idx)
{
    lua_State *L = w->L;
    char text[64];
    size_t n;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, idx, &n);
        put_string(w, s, n);
    } else if (lua_type(L, idx) == LUA_TNUMBER) {
        put_char(w, '"');
        put_number(w, idx);
        put_char(w, '"');
    } else {
        sl_vm_raise(L, "a table key must be a string or a number to be written as JSON, got %s",
                    sl_vm_describe(L, idx, text, sizeof text));
    }
}

/* Writes the table at idx as an object; lua_next has pushed its first key
 * and value. */
static void put_object(writer_t *w, int idx, int depth)
{
    lua_State *L = w->L;
    put_char(w, '{');
    for (;;) {
        put_key(w, lua_gettop(L) - 1);
        put_char(w, ':');
        put_value(w, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (!lua_next(L, idx))
            break;
        put_char(w, ',');
    }
    put_char(w, '}');
}

static void put_table(writer_t *w, int idx, int depth)
{
    lua_State *L = w->L;
    lua_Integer count, max;
    if (depth >= MAX_DEPTH)
        sl_vm_raise(L, "the value is nested deeper than %d levels", MAX_DEPTH);
    luaL_checkstack(L, 4, "JSON nested too deep");
    sl_lazy_materialize(L, w->vm, idx);
    int top = lua_gettop(L);
    lua_pushnil(L);
    if (!lua_next(L, idx)) {
        put(w, "{}", 2);
        return;
    }
    if (lua_type(L, -2) == LUA_TSTRING) { /* not an array: no need to look at every key first */
        put_object(w, idx, depth);
        return;
    }
    lua_settop(L, top);
    max = array_extent(L, idx, &count);
    if (max > 0) {
        if (max > 2 * count && max > 10)
            sl_vm_raise(L,
                        "an excessively sparse array (largest index %lld, %lld items) cannot "
                        "be written as JSON",
                        (long long)max, (long long)count);
        put_char(w, '[');
        for (lua_Integer i = 1; i <= max; i++) {
            if (i > 1)
                put_char(w, ',');
            lua_rawgeti(L, idx, i);
            put_value(w, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        put_char(w, ']');
    } else {
        lua_pushnil(L);
        lua_next(L, idx); /* there is a first key: the table is not empty */
        put_object(w, idx, depth);
    }
}

static void put_value(writer_t *w, int idx, int depth)
{
    lua_State *L = w->L;
    size_t n;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        put(w, "null", 4);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            put(w, "true", 4);
        else
            put(w, "false", 5);
        break;
    case LUA_TNUMBER:
        put_number(w, idx);
        break;
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, idx, &n);
        put_string(w, s, n);
        break;
    }
    case LUA_TTABLE:
        put_table(w, idx, depth);
        break;
    case LUA_TLIGHTUSERDATA:
        if (!lua_touserdata(L, idx)) {
            put(w, "null", 4);
            break;
        }
        /* fall through */
    default:
        sl_vm_raise(L, "a %s cannot be written as JSON", luaL_typename(L, idx));
    }
}

void sl_json_write(lua_State *L, sl_vm_t *vm, int idx, const uint8_t **out, int32_t *len)
{
    writer_t w = {L, vm, 0};
    put_value(&w, lua_absindex(L, idx), 0);
    if (w.len > INT32_MAX)
        sl_vm_raise(L, "the value's JSON text is over 2 GiB");
    *out = sl_vm_need(L, sl_arena_copy(&vm->arena, vm->out, w.len ? w.len : 1));
    *len = (int32_t)w.len;
}

/*
 * options.c - checking what a script passes to the DSL.
 *
 * Every check reports through sl_dsl_error(), which prefixes the caller's
 * chunk:line. Strings are checked with their Lua length, so a NUL byte
 * cannot cut a name short. Option tables are read by name with raw access (no
 * metamethods run), and the only iteration over one, looking for unknown
 * names, reports the smallest unknown name, so that the message does not
 * depend on Lua's per-VM hash order.
 */
#include "lua/options.h"

#include <lua5.4/lauxlib.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

_Noreturn void sl_dsl_error(lua_State *L, sl_builder_t *b, const char *fmt, ...)
{
    char where[SL_WHERE_MAX], text[380];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    sl_dsl_where(L, b, where);
    if (!b->error[0])
        snprintf(b->error, sizeof b->error, "%s: %s", where, text);
    sl_vm_raise(L, "%s: %s", where, text);
}

static int listed(const char *name, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(name, *names) == 0)
            return 1;
    return 0;
}

static const char *joined(const char *const *names, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; names[i] && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%s", i ? ", " : "", names[i]);
    return out;
}

void sl_dsl_check_options(lua_State *L, sl_builder_t *b, int idx, const char *what,
                          const char *const *names)
{
    char text[64], expected[128];
    const char *unknown = NULL;
    if (lua_isnoneornil(L, idx))
        return;
    if (!lua_istable(L, idx))
        sl_dsl_error(L, b, "options for %s must be a table, got %s", what,
                     sl_vm_describe(L, idx, text, sizeof text));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sl_dsl_error(L, b, "options for %s must be named, got the key %s", what,
                         sl_vm_describe(L, -1, text, sizeof text));
        const char *name = lua_tostring(L, -1);
        if (!listed(name, names) && (!unknown || strcmp(name, unknown) < 0))
            unknown = name;
    }
    if (unknown)
        sl_dsl_error(L, b, "unknown option '%s' for %s (expected %s)", unknown, what,
                     joined(names, expected, sizeof expected));
}

int sl_dsl_option(lua_State *L, int idx, const char *name)
{
    if (!lua_istable(L, idx)) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_pushstring(L, name);
    return lua_rawget(L, idx);
}

/* Raises "option 'name' for what must be <must>, got <value at top>". */
_Noreturn static void option_error(lua_State *L, sl_builder_t *b, const char *what,
                                   const char *name, const char *must)
{
    char text[64];
    sl_dsl_error(L, b, "option '%s' for %s must be %s, got %s", name, what, must,
                 sl_vm_describe(L, -1, text, sizeof text));
}

int32_t sl_dsl_option_count(lua_State *L, sl_builder_t *b, int idx, const char *what,
                            const char *name)
{
    lua_Integer n = 0;
    if (sl_dsl_option(L, idx, name) != LUA_TNIL) {
        int number = lua_type(L, -1) == LUA_TNUMBER;
        if (!number || !sl_json_integral(lua_tonumber(L, -1), &n) || n < 1 || n > INT32_MAX)
            option_error(L, b, what, name, "a positive integer");
    }
    lua_pop(L, 1);
    return (int32_t)n;
}

int sl_dsl_option_choice(lua_State *L, sl_builder_t *b, int idx, const char *what, const char *name,
                         const char *const *choices, int absent)
{
    char must[160], list[128];
    int choice = absent;
    if (sl_dsl_option(L, idx, name) != LUA_TNIL) {
        for (choice = 0; choices[choice]; choice++)
            if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), choices[choice]) == 0)
                break;
        if (!choices[choice]) {
            snprintf(must, sizeof must, "one of %s", joined(choices, list, sizeof list));
            option_error(L, b, what, name, must);
        }
    }
    lua_pop(L, 1);
    return choice;
}

int sl_dsl_option_boolean(lua_State *L, sl_builder_t *b, int idx, const char *what,
                          const char *name)
{
    int type = sl_dsl_option(L, idx, name);
    if (type != LUA_TNIL && type != LUA_TBOOLEAN)
        option_error(L, b, what, name, "true or false");
    int value = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return value;
}

int sl_dsl_option_function(lua_State *L, sl_builder_t *b, int idx, const char *what,
                           const char *name)
{
    int type = sl_dsl_option(L, idx, name);
    if (type != LUA_TNIL && type != LUA_TFUNCTION)
        option_error(L, b, what, name, "a function");
    lua_pop(L, 1);
    return type == LUA_TFUNCTION;
}

int sl_dsl_ref(lua_State *L, int idx)
{
    lua_pushvalue(L, idx);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

const char *sl_dsl_check_topic(lua_State *L, sl_builder_t *b, int idx, const char *what)
{
    char text[64];
    if (lua_type(L, idx) != LUA_TSTRING)
        sl_dsl_error(L, b, "%s expects a topic name, got %s", what,
                     sl_vm_describe(L, idx, text, sizeof text));
    const char *topic = lua_tostring(L, idx);
    if (strlen(topic) != lua_rawlen(L, idx))
        sl_dsl_error(L, b, "%s: a topic name cannot hold a NUL byte", what);
    if (sl_topic_name_check(topic) != 0)
        sl_dsl_error(L, b, "%s: %s", what, sl_error_detail());
    return topic;
}

int sl_dsl_name_ok(lua_State *L, int idx, size_t max)
{
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING)
        return 0;
    const char *name = lua_tolstring(L, idx, &n);
    int ok = n >= 1 && n <= max;
    for (size_t i = 0; ok && i < n; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
             (name[i] >= '0' && name[i] <= '9') || name[i] == '_' || name[i] == '-';
    return ok;
}

/* A duration given as a string. */
static int64_t duration_text(lua_State *L, sl_builder_t *b, int idx, const char *what)
{
    size_t n;
    int64_t ms = 0;
    const char *text = lua_tolstring(L, idx, &n);
    if (strlen(text) != n)
        sl_dsl_error(L, b, "%s: a duration cannot hold a NUL byte", what);
    if (sl_duration_parse(text, &ms) != 0)
        sl_dsl_error(L, b, "%s: %s", what, sl_error_detail());
    return ms;
}

int64_t sl_dsl_duration(lua_State *L, sl_builder_t *b, int idx, const char *what)
{
    char text[64];
    lua_Integer ms = 0;
    int integral = 0;
    if (lua_type(L, idx) == LUA_TSTRING)
        return duration_text(L, b, idx, what);
    if (lua_isinteger(L, idx)) {
        ms = lua_tointeger(L, idx);
        integral = 1;
    } else if (lua_type(L, idx) == LUA_TNUMBER) {
        integral = sl_json_integral(lua_tonumber(L, idx), &ms);
    }
    if (!integral)
        sl_dsl_error(L, b,
                     "%s must be a duration such as '500ms', '10s', '1m', '1h', '1d' or an "
                     "integer of ms, got %s",
                     what, sl_vm_describe(L, idx, text, sizeof text));
    if (ms < 0 || ms > SL_DURATION_MAX)
        sl_dsl_error(L, b, "%s must be 0 to %lld ms, got %lld", what, (long long)SL_DURATION_MAX,
                     (long long)ms);
    return ms;
}

int64_t sl_dsl_option_duration(lua_State *L, sl_builder_t *b, int idx, const char *what,
                               const char *name, int64_t absent)
{
    char label[96];
    int64_t ms = absent;
    if (sl_dsl_option(L, idx, name) != LUA_TNIL) {
        snprintf(label, sizeof label, "option '%s' for %s", name, what);
        ms = sl_dsl_duration(L, b, lua_gettop(L), label);
    }
    lua_pop(L, 1);
    return ms;
}

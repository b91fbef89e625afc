/*
 * json.c - the scripts' json module: lua-cjson 2.1, made safe for the
 * sandbox.
 *
 * Records do not go through cjson (jsontok.c and lazy.c read them, encode.c
 * writes them). Each script gets its own cjson instance
 * (sl_json_push_script_module), so nothing a script changes in its module
 * reaches another script or the records.
 *
 * Three defects of lua-cjson 2.1 are worked around here:
 *
 *   1. decode mallocs a buffer the size of its input and frees it only on
 *      success or on its own syntax errors; a Lua memory error inside it
 *      unwinds past the buffer and leaks it. So the memory cap is lifted
 *      while cjson decodes and checked right after it returns. What cjson
 *      allocates is bounded by its input: at most about 26 bytes per input
 *      byte (measured on nested empty arrays, the worst shape), so records
 *      (bounded by the log's record limit) and script inputs (at most
 *      memory_bytes / 32) overshoot the cap briefly and by a bounded amount.
 *      The sandbox refuses __gc metamethods, so no script code can run and
 *      allocate while the cap is lifted. A real out-of-memory inside decode
 *      still leaks that buffer; the fix is a decoder that holds no malloc'd
 *      state across Lua calls.
 *   2. encode aborts the process (die) when its buffer cannot grow, and a
 *      table naming one big string many times is a tiny Lua value with a
 *      huge encoding. So values are measured first (an upper bound of the
 *      encoded size) and refused past memory_bytes.
 *   3. Its settings for nesting depth and buffer reuse let a script make
 *      the C recursion overflow the stack or make memory errors leak: the
 *      scripts' module keeps only encode, decode, null and the harmless
 *      number and sparse-array settings.
 *
 * lua-cjson 2.1 also reads every JSON number as a float. After decoding,
 * floats with an integral value in int64 range become integers, so that Lua
 * 5.4 prints 42 rather than 42.0. cjson refuses nesting deeper than 1000,
 * which bounds the recursion here.
 */
#include "lua/vm.h"

#include <lua5.4/lauxlib.h>
#include <lua5.4/lua-cjson.h>

#include <math.h>

#define DECODE_BYTES_PER_INPUT_BYTE 32
#define MAX_DEPTH                   1000

static void push_cjson(lua_State *L)
{
    lua_pushcfunction(L, luaopen_cjson);
    lua_call(L, 0, 1);
}

int sl_json_integral(double v, lua_Integer *out)
{
    if (v != floor(v) || v < -9223372036854775808.0 || v >= 9223372036854775808.0)
        return 0;
    *out = (lua_Integer)v;
    return 1;
}

/* Replaces the value at idx by an equal integer if it is an integral float;
 * returns 1 if it was replaced. */
static int integer_in_place(lua_State *L, int idx)
{
    lua_Integer integer;
    if (lua_type(L, idx) != LUA_TNUMBER || lua_isinteger(L, idx) ||
        !sl_json_integral(lua_tonumber(L, idx), &integer))
        return 0;
    lua_pushinteger(L, integer);
    lua_replace(L, idx);
    return 1;
}

/* Replaces integral floats in the table at idx and the tables inside it. */
static void integers_in_table(lua_State *L, int idx)
{
    luaL_checkstack(L, 4, "JSON nested too deep");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            integers_in_table(L, lua_gettop(L));
        } else if (integer_in_place(L, lua_gettop(L))) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, idx); /* leaves the key for lua_next */
            continue;
        }
        lua_pop(L, 1);
    }
}

/* Calls the decode function below the string at the top with the cap
 * lifted (see 1. above); leaves the value, integers made integers. */
static void decode_top(lua_State *L, sl_vm_t *vm)
{
    vm->cap_lifted++;
    int status = lua_pcall(L, 1, 1, 0);
    vm->cap_lifted--;
    if (status == LUA_ERRMEM)
        vm->out_of_memory = 1;
    if (status != LUA_OK)
        lua_error(L);
    if (vm->memory_in_use > vm->limits.memory_bytes) {
        lua_pop(L, 1);
        sl_vm_memory_exceeded(L);
    }
    if (lua_type(L, -1) == LUA_TTABLE)
        integers_in_table(L, lua_gettop(L));
    else
        integer_in_place(L, lua_gettop(L));
}

/* Adds to *bound an upper bound of the JSON text of the value at idx,
 * stopping once it passes limit. Functions and the like add nothing (cjson
 * refuses them), as do levels past cjson's depth limit. */
static void measure(lua_State *L, int idx, int depth, size_t limit, size_t *bound)
{
    int top = lua_gettop(L);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        *bound += 6 * lua_rawlen(L, idx) + 3; /* every byte as \u00XX, quotes, comma */
        break;
    case LUA_TTABLE:
        sl_lazy_materialize(L, sl_vm_of(L), idx); /* cjson reads tables raw */
        *bound += 2;
        luaL_checkstack(L, 3, "JSON nested too deep");
        lua_pushnil(L);
        while (depth < MAX_DEPTH && *bound <= limit && lua_next(L, idx)) {
            measure(L, top + 1, depth + 1, limit, bound);
            measure(L, top + 2, depth + 1, limit, bound);
            lua_pop(L, 1);
        }
        lua_settop(L, top);
        break;
    default:
        *bound += 32; /* numbers, booleans, null */
    }
}

/* Calls the encode function below the value at the top, after measuring
 * the value (see 2. above); leaves the text. A refusal names the running
 * script line when where is set. */
static void encode_top(lua_State *L, sl_vm_t *vm, int where)
{
    size_t bound = 0, limit = vm->limits.memory_bytes;
    measure(L, lua_gettop(L), 0, limit, &bound);
    if (bound > limit && where)
        luaL_error(L, "the value's JSON text could exceed %I bytes", (lua_Integer)limit);
    if (bound > limit)
        sl_vm_raise(L, "the value's JSON text could exceed %zu bytes", limit);
    lua_call(L, 1, 1);
}

/* json.decode(text) for scripts: upvalue 1 is cjson's decode. */
static int script_decode(lua_State *L)
{
    sl_vm_t *vm = sl_vm_of(L);
    size_t len, most = vm->limits.memory_bytes / DECODE_BYTES_PER_INPUT_BYTE;
    luaL_checklstring(L, 1, &len);
    if (len > most)
        return luaL_error(L, "json.decode: input of %I bytes is over the sandbox's %I",
                          (lua_Integer)len, (lua_Integer)most);
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    decode_top(L, vm);
    return 1;
}

/* json.encode(value) for scripts: upvalue 1 is cjson's encode. */
static int script_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    encode_top(L, sl_vm_of(L), 1);
    return 1;
}

/* Sets table[name] = fn with cjson's function of that name as upvalue. */
static void wrap(lua_State *L, int cjson, int table, const char *name, lua_CFunction fn)
{
    lua_getfield(L, cjson, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, table, name);
}

void sl_json_push_script_module(lua_State *L)
{
    static const char *const kept[] = {
        "null",
        "encode_number_precision",
        "encode_sparse_array",
        "encode_invalid_numbers",
        "decode_invalid_numbers",
        "_NAME",
        "_VERSION",
        NULL,
    };
    push_cjson(L);
    int cjson = lua_gettop(L);
    lua_newtable(L);
    int module = lua_gettop(L);
    for (const char *const *name = kept; *name; name++) {
        lua_getfield(L, cjson, *name);
        lua_setfield(L, module, *name);
    }
    wrap(L, cjson, module, "decode", script_decode);
    wrap(L, cjson, module, "encode", script_encode);
    lua_remove(L, cjson);
}

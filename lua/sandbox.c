/*
 * sandbox.c - the globals a pipeline script sees.
 *
 * Once per VM, sl_sandbox_init() opens the safe standard libraries and
 * fills a template table: the allowed base functions, sandboxed
 * replacements (print, pcall, xpcall, collectgarbage, and setmetatable,
 * which refuses __gc), and the libraries
 * string (minus dump), table, math, utf8 and a three-function os. The real
 * global table, io, package, debug and the full os are never reachable from
 * a script. The shared string table loses dump, and the string metatable
 * gets __metatable = false, so getmetatable("") cannot hand out the string
 * table that every script's ("x"):upper() shares.
 *
 * Per script, sl_sandbox_push_env() copies the template one level deep (a
 * script that redefines string.format changes only its own copy) and adds
 * the closures bound to that script: _G, load (text only, these globals by
 * default) and require (sluice and its own lua-cjson instance).
 *
 * Why pcall is replaced: the instruction hook raises an ordinary error, and
 * `while true do pcall(spin) end` would catch it forever. The sandbox's
 * pcall and xpcall re-raise any error once the VM's budget is exhausted.
 */
#include "lua/vm.h"

#include <lua5.4/lauxlib.h>
#include <lua5.4/lualib.h>

#include <string.h>

static const char *const base_names[] = {
    "assert", "error",  "getmetatable", "ipairs",   "next",     "pairs", "rawequal", "rawget",
    "rawlen", "rawset", "select",       "tonumber", "tostring", "type",  "_VERSION", NULL,
};

static const char *const os_names[] = {"time", "clock", "date", NULL};

static int sandbox_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer line;
    luaL_buffinit(L, &line);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&line, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&line);
    }
    luaL_pushresult(&line);
    sl_report(SL_INFO, "lua", "%s", lua_tostring(L, -1));
    return 0;
}

/* Results of a pcall that ran with `extra` values below the callee: true
 * and its results, or false and the error, unless the budget is spent. */
static int finish_pcall(lua_State *L, int status, int extra)
{
    if (status == LUA_OK)
        return lua_gettop(L) - extra;
    if (sl_vm_of(L)->exhausted)
        return lua_error(L);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
}

static int sandbox_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    return finish_pcall(L, lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0), 0);
}

static int sandbox_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    return finish_pcall(L, lua_pcall(L, n - 2, LUA_MULTRET, 2), 2);
}

/* setmetatable without finalizers: a __gc would run whenever the collector
 * gets to it, in another pipeline's call, inside a cjson decode with the
 * memory cap lifted (see json.c), or while the VM closes. */
static int sandbox_setmetatable(lua_State *L)
{
    lua_pushliteral(L, "__gc");
    if (lua_istable(L, 2) && lua_rawget(L, 2) != LUA_TNIL)
        return luaL_error(L, "setmetatable: __gc (finalizers) is not allowed in the sandbox");
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

static int sandbox_collectgarbage(lua_State *L)
{
    const char *option = luaL_optstring(L, 1, "collect");
    if (strcmp(option, "count") != 0)
        return luaL_error(L, "collectgarbage('%s') is not allowed in the sandbox (only 'count')",
                          option);
    lua_pushnumber(L, lua_gc(L, LUA_GCCOUNT) + lua_gc(L, LUA_GCCOUNTB) / 1024.0);
    return 1;
}

/* load(chunk [, chunkname [, mode [, env]]]) with mode forced to "t" and
 * env defaulting to the script's globals (upvalue 2), not the VM's. */
static int sandbox_load(lua_State *L)
{
    int has_env = !lua_isnone(L, 4);
    lua_settop(L, 4);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushliteral(L, "t");
    lua_pushvalue(L, has_env ? 4 : lua_upvalueindex(2));
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L) - 4;
}

static int sandbox_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (strcmp(name, "sluice") == 0)
        lua_pushvalue(L, lua_upvalueindex(1));
    else if (strcmp(name, "json") == 0 || strcmp(name, "cjson") == 0)
        lua_pushvalue(L, lua_upvalueindex(2));
    else
        return luaL_error(L, "module '%s' is not available in the sandbox (only sluice, json)",
                          name);
    return 1;
}

/* Copies the fields named in names from the table at from into the table
 * on top of the stack. */
static void copy_fields(lua_State *L, int from, const char *const *names)
{
    for (; *names; names++) {
        lua_getfield(L, from, *names);
        lua_setfield(L, -2, *names);
    }
}

/* Opens a library and stores it (a table at the top) in the template. */
static void add_library(lua_State *L, int template, const char *name, lua_CFunction open)
{
    luaL_requiref(L, name, open, 0);
    lua_setfield(L, template, name);
}

static void add_os(lua_State *L, int template)
{
    luaL_requiref(L, "os", luaopen_os, 0);
    lua_newtable(L);
    copy_fields(L, lua_gettop(L) - 1, os_names);
    lua_setfield(L, template, "os");
    lua_pop(L, 1);
}

static void add_replacements(lua_State *L, int template)
{
    static const luaL_Reg replacements[] = {
        {"print", sandbox_print},
        {"pcall", sandbox_pcall},
        {"xpcall", sandbox_xpcall},
        {"collectgarbage", sandbox_collectgarbage},
        {NULL, NULL},
    };
    lua_pushvalue(L, template);
    luaL_setfuncs(L, replacements, 0);
    lua_pop(L, 1);
}

/* string.dump goes from the shared table itself, or ("").dump would still
 * produce bytecode through the string methods. */
static void harden_strings(lua_State *L, int string)
{
    lua_pushnil(L);
    lua_setfield(L, string, "dump");
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
}

void sl_sandbox_init(lua_State *L, sl_vm_t *vm)
{
    luaL_requiref(L, "_G", luaopen_base, 1);
    int globals = lua_gettop(L);
    lua_getfield(L, globals, "load");
    vm->load_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    int template = lua_gettop(L);
    copy_fields(L, globals, base_names);
    add_library(L, template, "string", luaopen_string);
    lua_getfield(L, template, "string");
    harden_strings(L, lua_gettop(L));
    lua_pop(L, 1);
    add_library(L, template, "table", luaopen_table);
    add_library(L, template, "math", luaopen_math);
    add_library(L, template, "utf8", luaopen_utf8);
    add_os(L, template);
    add_replacements(L, template);
    lua_getfield(L, globals, "setmetatable");
    lua_pushcclosure(L, sandbox_setmetatable, 1);
    lua_setfield(L, template, "setmetatable");
    lua_pushvalue(L, template);
    vm->template_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 2);
}

/* Pushes a copy of the table at idx (raw fields, one level). */
static void push_table_copy(lua_State *L, int idx)
{
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* Copies every template field into the table on top, library tables copied
 * too. */
static void fill_from_template(lua_State *L, sl_vm_t *vm)
{
    int env = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->template_ref);
    int template = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, template)) {
        if (lua_istable(L, -1)) {
            push_table_copy(L, lua_gettop(L));
            lua_replace(L, -2);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, env);
    }
    lua_pop(L, 1);
}

void sl_sandbox_push_env(lua_State *L, sl_vm_t *vm, int module, int json)
{
    module = lua_absindex(L, module);
    json = lua_absindex(L, json);
    lua_newtable(L);
    int env = lua_gettop(L);
    fill_from_template(L, vm);
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->load_ref);
    lua_pushvalue(L, env);
    lua_pushcclosure(L, sandbox_load, 2);
    lua_setfield(L, env, "load");
    lua_pushvalue(L, module);
    lua_pushvalue(L, json);
    lua_pushcclosure(L, sandbox_require, 2);
    lua_setfield(L, env, "require");
}

/*
 * vm.c - the VM's lifecycle and the two limits that keep a script contained.
 *
 * Memory: the lua_Alloc below counts the bytes Lua has in use and refuses
 * any growth past limits.memory_bytes. Lua turns the refusal into a memory
 * error (after an emergency collection), which unwinds the call at hand
 * only; shrinking never fails, as Lua requires. Lua calls no message handler
 * for memory errors, so the allocator notes the script's line itself when
 * it first refuses.
 *
 * Instructions: a count hook runs every HOOK_STEP VM instructions and adds
 * them up since the last budget reset; past limits.instructions it raises
 * "chunk:line: instruction limit exceeded" and keeps raising at every step
 * until the next reset, so a script that catches the error (the sandbox's
 * pcall re-raises it anyway) cannot keep running. The hook is installed
 * once for the life of the VM; resetting the budget is two stores.
 *
 * sl_vm_protect() is the one door into Lua: it resets the budget, runs a C
 * function under lua_pcall and turns the outcome into a sluice error code.
 */
#include "lua/jsonscan.h"
#include "lua/vm.h"

#include <lua5.4/lauxlib.h>

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_STEP 1000

_Static_assert(SL_NO_FUNCTION == LUA_NOREF, "SL_NO_FUNCTION must be LUA_NOREF");

sl_vm_t *sl_vm_of(lua_State *L)
{
    return *(sl_vm_t **)lua_getextraspace(L);
}

/* Writes "chunk:line: " of the innermost Lua function running, or "". Reads
 * only debug information, so it is safe from inside the allocator. */
static void running_where(lua_State *L, char *out, size_t size)
{
    lua_Debug ar;
    out[0] = '\0';
    for (int level = 0; L && lua_getstack(L, level, &ar); level++)
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            snprintf(out, size, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
}

/* Small blocks (tables, short strings, closures: most of what records
 * make) come from per-VM free lists by size class, carved from chunks that
 * live as long as the VM; larger ones from sl_realloc. Which is which
 * follows from the size alone, which Lua always passes back. */
static int small_class(size_t n)
{
    return (int)((n - 1) / SL_VM_SMALL_STEP);
}

static void *small_alloc(sl_vm_t *vm, size_t n)
{
    int c = small_class(n);
    sl_small_block_t *b = vm->small_free[c];
    if (b) {
        vm->small_free[c] = b->next;
        return b;
    }
    size_t size = (size_t)(c + 1) * SL_VM_SMALL_STEP;
    if ((size_t)(vm->chunk_end - vm->chunk_at) < size) {
        char *chunk = sl_malloc(SL_VM_CHUNK_BYTES);
        if (!chunk)
            return NULL;
        *(char **)chunk = vm->chunks;
        vm->chunks = chunk;
        vm->chunk_at = chunk + SL_VM_SMALL_STEP;
        vm->chunk_end = chunk + SL_VM_CHUNK_BYTES;
    }
    void *p = vm->chunk_at;
    vm->chunk_at += size;
    return p;
}

static void release(sl_vm_t *vm, void *p, size_t n)
{
    if (n > SL_VM_SMALL_MAX) {
        sl_free(p);
        return;
    }
    sl_small_block_t *b = p;
    int c = small_class(n);
    b->next = vm->small_free[c];
    vm->small_free[c] = b;
}

static void *resize(sl_vm_t *vm, void *ptr, size_t old, size_t nsize)
{
    if (ptr && old > SL_VM_SMALL_MAX && nsize > SL_VM_SMALL_MAX)
        return sl_realloc(ptr, nsize);
    if (ptr && old <= SL_VM_SMALL_MAX && nsize <= SL_VM_SMALL_MAX &&
        small_class(old) == small_class(nsize))
        return ptr;
    void *block = nsize <= SL_VM_SMALL_MAX ? small_alloc(vm, nsize) : sl_malloc(nsize);
    if (block && ptr) {
        memcpy(block, ptr, old < nsize ? old : nsize);
        release(vm, ptr, old);
    }
    return block;
}

static void free_chunks(sl_vm_t *vm)
{
    while (vm->chunks) {
        char *next = *(char **)vm->chunks;
        sl_free(vm->chunks);
        vm->chunks = next;
    }
}

static void *allocate(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sl_vm_t *vm = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        if (ptr)
            release(vm, ptr, old);
        vm->memory_in_use -= old;
        return NULL;
    }
    if (nsize > old && !vm->cap_lifted &&
        vm->memory_in_use - old + nsize > vm->limits.memory_bytes) {
        if (!vm->memory_refused)
            running_where(vm->L, vm->memory_where, sizeof vm->memory_where);
        vm->memory_refused = 1;
        return NULL;
    }
    void *block = resize(vm, ptr, old, nsize);
    if (!block)
        return NULL; /* Lua 5.4 copes with any failure, shrinking included */
    vm->memory_in_use = vm->memory_in_use - old + nsize;
    return block;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    sl_vm_t *vm = sl_vm_of(L);
    vm->instructions += HOOK_STEP;
    if (vm->instructions <= vm->limits.instructions)
        return;
    if (!vm->exhausted) {
        lua_getinfo(L, "Sl", ar);
        snprintf(vm->limit_message, sizeof vm->limit_message,
                 "%s:%d: instruction limit exceeded (%llu instructions)", ar->short_src,
                 ar->currentline, (unsigned long long)vm->limits.instructions);
        vm->exhausted = 1;
    }
    lua_pushstring(L, vm->limit_message);
    lua_error(L);
}

void sl_vm_budget_reset(sl_vm_t *vm)
{
    vm->instructions = 0;
    vm->exhausted = 0;
}

_Noreturn void sl_vm_memory_exceeded(lua_State *L)
{
    sl_vm_t *vm = sl_vm_of(L);
    if (!vm->over_cap && !vm->memory_refused)
        running_where(L, vm->memory_where, sizeof vm->memory_where);
    vm->over_cap = 1;
    sl_vm_raise(L, "memory limit exceeded");
}

void *sl_vm_need(lua_State *L, void *p)
{
    if (!p) {
        sl_vm_of(L)->out_of_memory = 1;
        luaL_error(L, "out of memory");
    }
    return p;
}

_Noreturn void sl_vm_raise(lua_State *L, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    lua_pushstring(L, text);
    lua_error(L);
    abort(); /* lua_error does not return */
}

const char *sl_vm_describe(lua_State *L, int idx, char *out, size_t size)
{
    lua_Integer integer;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        snprintf(out, size, "'%s'", lua_tostring(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(out, size, "%lld", (long long)lua_tointeger(L, idx));
        else if (sl_json_integral(lua_tonumber(L, idx), &integer))
            snprintf(out, size, "%lld", (long long)integer);
        else
            snprintf(out, size, "%.14g", lua_tonumber(L, idx));
        break;
    case LUA_TBOOLEAN:
        snprintf(out, size, "%s", lua_toboolean(L, idx) ? "true" : "false");
        break;
    case LUA_TNIL:
    case LUA_TNONE:
        snprintf(out, size, "nil");
        break;
    default:
        snprintf(out, size, "a %s", luaL_typename(L, idx));
    }
    return out;
}

/* Copies the error object at the top of the stack into vm->message. */
static void copy_error_text(sl_vm_t *vm)
{
    lua_State *L = vm->L;
    if (lua_type(vm->L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
        snprintf(vm->message, sizeof vm->message, "%s", lua_tostring(L, -1));
    else
        snprintf(vm->message, sizeof vm->message, "(error object is a %s value)",
                 luaL_typename(L, -1));
}

static int classify_error(sl_vm_t *vm, int status)
{
    if (vm->out_of_memory || (status == LUA_ERRMEM && !vm->memory_refused)) {
        snprintf(vm->message, sizeof vm->message, "out of memory");
        return -ENOMEM;
    }
    vm->limit_hit = vm->exhausted || status == LUA_ERRMEM || vm->over_cap;
    if (vm->exhausted)
        snprintf(vm->message, sizeof vm->message, "%s", vm->limit_message);
    else if (status == LUA_ERRMEM || vm->over_cap)
        snprintf(vm->message, sizeof vm->message, "%smemory limit exceeded (%zu bytes)",
                 vm->memory_where, vm->limits.memory_bytes);
    else
        copy_error_text(vm);
    return SL_EINVALID;
}

int sl_vm_protect(sl_vm_t *vm, lua_CFunction fn, void *ctx)
{
    lua_State *L = vm->L;
    assert(lua_gettop(L) == 0);
    sl_vm_budget_reset(vm);
    vm->memory_refused = 0;
    vm->memory_where[0] = '\0';
    vm->out_of_memory = 0;
    vm->limit_hit = 0;
    vm->over_cap = 0;
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ctx);
    int status = lua_pcall(L, 1, 0, 0);
    int rc = status == LUA_OK ? 0 : classify_error(vm, status);
    lua_settop(L, 0);
    return rc;
}

static int open_protected(lua_State *L)
{
    sl_vm_t *vm = lua_touserdata(L, 1);
    sl_sandbox_init(L, vm);
    sl_lazy_init(L, vm);
    lua_newtable(L);
    vm->batch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static void set_limits(sl_vm_t *vm, const sl_vm_limits_t *limits)
{
    vm->limits.memory_bytes = SL_VM_DEFAULT_MEMORY;
    vm->limits.instructions = SL_VM_DEFAULT_INSTRUCTIONS;
    if (limits && limits->memory_bytes)
        vm->limits.memory_bytes = limits->memory_bytes;
    if (limits && limits->instructions)
        vm->limits.instructions = limits->instructions;
}

int sl_vm_new(const sl_vm_limits_t *limits, sl_vm_t **out)
{
    sl_vm_t *vm = sl_calloc(1, sizeof *vm);
    if (!vm)
        return sl_error_set(-ENOMEM, "out of memory creating a Lua VM");
    set_limits(vm, limits);
    vm->L = lua_newstate(allocate, vm);
    if (!vm->L) {
        free_chunks(vm);
        sl_free(vm);
        return sl_error_set(-ENOMEM, "cannot create a Lua state (memory limit or out of memory)");
    }
    *(sl_vm_t **)lua_getextraspace(vm->L) = vm;
    /* Incremental collection, a cycle each time the heap has grown to four
     * times what the last one left (pause 400). Not generational: a
     * batch's record tables stay referenced from the batch table until the
     * batch ends, so they outlive young collections, get promoted and wait
     * for a major one; each young collection then costs more than it
     * frees (pipeline_bench: 8.5% of the instructions in the collector
     * generational, 4.9% like this). Memory stays under the VM's cap
     * either way: a refused allocation makes Lua collect in full first. */
    lua_gc(vm->L, LUA_GCINC, 400, 0);
    lua_sethook(vm->L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    if (sl_vm_protect(vm, open_protected, vm) != 0) {
        sl_error_set(-ENOMEM, "cannot prepare a Lua VM: %s", vm->message);
        sl_vm_free(vm);
        return -ENOMEM;
    }
    *out = vm;
    return 0;
}

void sl_vm_free(sl_vm_t *vm)
{
    if (!vm)
        return;
    assert(vm->dag_count == 0);
    lua_close(vm->L);
    free_chunks(vm);
    sl_free(vm->slots);
    sl_jsonscan_free(vm->jsonscan);
    sl_free(vm->lazy);
    sl_free(vm->jsmn);
    sl_free(vm->jtoks);
    sl_free(vm->docs);
    sl_free(vm->out);
    sl_arena_free(&vm->arena);
    sl_free(vm);
}

size_t sl_vm_memory(const sl_vm_t *vm)
{
    return vm->memory_in_use;
}

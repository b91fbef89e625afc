/*
 * vm.h - the inside of an sl_vm_t, shared by the files of the lua module.
 *
 * Lua state layout. The VM pointer sits in the lua_State's extra space, so
 * hooks and C functions find it from L alone. The registry holds, by
 * reference: the sandbox template (what every script's globals are copied
 * from), the base library's load, the runtime's own lua-cjson decode and
 * encode (scripts get separate instances), and the batch table, slot + 1 ->
 * record table. Every other Lua value the runtime keeps is reachable from
 * one of those, or from the references of a compiled DAG.
 *
 * Rule for every file here: any Lua API call that can allocate or raise runs
 * inside sl_vm_protect(), so a Lua error never unwinds a C frame that owns
 * memory. Memory touched from protected code belongs to the VM (slots,
 * arena) or to a caller frame outside the protected call (the DSL builder).
 */
#ifndef SL_LUA_VM_H
#define SL_LUA_VM_H

#include <lua5.4/lua.h>

#include "lua/arena.h"
#include "lua/lua.h"

/* A record in the batch: bytes valid when has_bytes, else encoded from the
 * Lua table on demand; producer names the op that made it, for messages. */
typedef struct sl_slot {
    sl_record_t record;
    int has_bytes;
    const sl_op_t *producer;
} sl_slot_t;

struct sl_vm {
    lua_State *L;
    sl_vm_limits_t limits;
    size_t memory_in_use;
    int memory_refused;    /* the cap refused an allocation since the budget reset */
    uint64_t instructions; /* run since the budget reset */
    int exhausted;         /* the instruction limit was hit since the budget reset */
    int out_of_memory;     /* C code in a protected call ran out of memory */
    int limit_hit;         /* the last protected call failed on a limit */
    int cap_lifted;        /* inside a cjson decode: the cap is checked after it */
    int over_cap;          /* a memory limit error raised by sl_vm_memory_exceeded */
    char limit_message[SL_WHERE_MAX + 64]; /* "chunk:line: instruction limit exceeded" */
    char memory_where[SL_WHERE_MAX];       /* "chunk:line: " of the first refusal */
    char message[512];                     /* the text of the last Lua error */
    int template_ref;
    int load_ref;
    int json_decode_ref;
    int json_encode_ref;
    int batch_ref;
    sl_slot_t *slots;
    int slot_count;
    int slot_capacity;
    sl_arena_t arena;
    int dag_count;                /* DAGs compiled here and not yet freed */
    struct sl_builder *compiling; /* the compile in progress, or NULL */
    uint64_t compile_serial;      /* numbers each compile, for the DSL's tokens */
};

/* The VM that owns L. */
sl_vm_t *sl_vm_of(lua_State *L);

/* Starts a new instruction budget and clears the limit flags. */
void sl_vm_budget_reset(sl_vm_t *vm);

/* Runs fn(L) with ctx as a light userdata argument under lua_pcall, then
 * empties the stack. Returns 0; SL_EINVALID with the error text in
 * vm->message; -ENOMEM if the process (not the cap) ran out of memory. */
int sl_vm_protect(sl_vm_t *vm, lua_CFunction fn, void *ctx);

/* Raises a Lua error whose message is the printf-style text (no position
 * prefix: callers add the one they mean). Never returns. */
_Noreturn void sl_vm_raise(lua_State *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Raises the memory limit error (for checks made after the fact). */
_Noreturn void sl_vm_memory_exceeded(lua_State *L);

/* The value at idx for a message: 'text', 42, true, nil, a table. */
const char *sl_vm_describe(lua_State *L, int idx, char *out, size_t size);

/* Returns p, or raises an error that sl_vm_protect() turns into -ENOMEM
 * when p is NULL: how protected code reports a failed sl_malloc. */
void *sl_vm_need(lua_State *L, void *p);

/* sandbox.c: fills the template and hardens shared metatables (once per VM);
 * pushes a fresh global table for one script whose require serves the
 * values at module and json. */
void sl_sandbox_init(lua_State *L, sl_vm_t *vm);
void sl_sandbox_push_env(lua_State *L, sl_vm_t *vm, int module, int json);

/* json.c: the runtime's lua-cjson instance; decode pushes the value of
 * text (raising on invalid JSON), encode replaces the value at the top by
 * its JSON text (raising when it cannot be encoded); push_script_module
 * pushes the json module of one script; integral gives the int64 equal to
 * v, if any. */
void sl_json_init(lua_State *L, sl_vm_t *vm);
void sl_json_push_script_module(lua_State *L);
int sl_json_integral(double v, lua_Integer *out);
void sl_json_decode(lua_State *L, sl_vm_t *vm, const char *text, size_t len);
void sl_json_encode(lua_State *L, sl_vm_t *vm);

/* record.c, for call.c. sl_slot_new pops the record table at the top into
 * a new slot made by producer; sl_slot_push pushes a slot's table. The
 * push_ functions make a new slot from the result of a user function:
 * push_result from a map result (a value or a record table) at result for
 * the input table at input, push_keyed from a key at key. set_timestamp
 * stores the timestamp at result as the slot's ts. All raise on bad types. */
int sl_slot_new(lua_State *L, sl_vm_t *vm, const sl_op_t *producer);
void sl_slot_push(lua_State *L, sl_vm_t *vm, int slot);
void sl_record_push_result(lua_State *L, sl_vm_t *vm, int input, int result,
                           const sl_op_t *producer, int *slot);
void sl_record_push_keyed(lua_State *L, sl_vm_t *vm, int input, int input_slot, int key,
                          const sl_op_t *producer, int *slot);
void sl_record_set_timestamp(lua_State *L, sl_vm_t *vm, int slot, int result);

#endif

/*
 * vm.h - the inside of an sl_vm_t, shared by the files of the lua module.
 *
 * Lua state layout. The VM pointer sits in the lua_State's extra space, so
 * hooks and C functions find it from L alone. The registry holds, by
 * reference: the sandbox template (what every script's globals are copied
 * from), the base library's load, the metatables of lazy records and
 * JSON objects, and the batch table (per slot: its value or table at
 * 2 * slot + 1, its record table r at 2 * slot + 2). Every other Lua value
 * the runtime keeps is reachable from one of those, or from the references
 * of a compiled DAG.
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

/*
 * A record in the batch (record.c). Three kinds, by where its truth is:
 *
 *   LOADED  read from the log (or re-keyed from such a record): the bytes
 *           in record are the truth; doc is its checked JSON value (-1 for
 *           raw values and tombstones)
 *   VALUE   a map's value: record has the key, ts and headers it keeps, the
 *           Lua value (batch table, 2 * slot + 1) is the value
 *   TABLE   a map's record table (batch table, 2 * slot + 1) is the truth
 *
 * record always holds the key, ts, headers and offset a function reading
 * r sees for LOADED and VALUE; has_bytes says its value (and all of it) is
 * what goes out. The record table r handed to functions is built on first
 * use (lazy.c) and kept at 2 * slot + 2.
 */
typedef enum { SL_SLOT_LOADED, SL_SLOT_VALUE, SL_SLOT_TABLE } sl_slot_kind_t;

typedef struct sl_slot {
    sl_record_t record;
    int has_bytes;
    sl_slot_kind_t kind;
    int doc;
    int has_table; /* r is built */
    const char *topic;
    int32_t partition;
    const sl_op_t *producer;
} sl_slot_t;

/*
 * Tokens (jsontok.c): a loaded JSON value, tokenized and checked. Token
 * indices are relative to the document's first; next is the index just
 * past a token's subtree (for a key: its value); strings span their text
 * without quotes. Documents and tokens live until the batch ends.
 */
enum {
    SL_JTOK_OBJECT = 1,
    SL_JTOK_ARRAY,
    SL_JTOK_STRING,
    SL_JTOK_NUMBER,
    SL_JTOK_TRUE,
    SL_JTOK_FALSE,
    SL_JTOK_NULL
};

typedef struct sl_jtok {
    int32_t start, end;
    int32_t size; /* objects: keys; arrays: items */
    int32_t next;
    uint8_t type;
    uint8_t escaped; /* a string with a backslash */
} sl_jtok_t;

typedef struct sl_jdoc {
    const char *text;
    int32_t first; /* in vm->jtoks */
} sl_jdoc_t;

/* A lazy table of the batch (lazy.c): by its address, what it reads from. */
typedef struct sl_lazy_entry {
    const void *table;
    uint32_t generation; /* the batch's; other batches' entries are empty */
    int32_t index;       /* a slot (record tables) or a document (values) */
} sl_lazy_entry_t;

/* The small-block allocator of a VM (vm.c). */
#define SL_VM_SMALL_STEP  16
#define SL_VM_SMALL_MAX   256
#define SL_VM_CHUNK_BYTES (64 << 10)
typedef struct sl_small_block {
    struct sl_small_block *next;
} sl_small_block_t;

struct sl_vm {
    lua_State *L;
    sl_vm_limits_t limits;
    size_t memory_in_use;
    sl_small_block_t *small_free[SL_VM_SMALL_MAX / SL_VM_SMALL_STEP];
    char *chunks; /* each begins with the next one's address */
    char *chunk_at, *chunk_end;
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
    int batch_ref;
    sl_slot_t *slots;
    int slot_count;
    int slot_capacity;
    sl_arena_t arena;
    uint32_t generation;   /* of the batch: counts sl_vm_batch_reset() calls */
    sl_lazy_entry_t *lazy; /* open addressing, a power of two in size */
    size_t lazy_capacity, lazy_count;
    struct sl_jsonscan *jsonscan; /* simdjson's scanner, made on first use */
    void *jsmn;                   /* jsmn's tokens, scratch for one value */
    size_t jsmn_capacity;
    sl_jtok_t *jtoks; /* checked tokens of the batch's documents */
    size_t jtok_count, jtok_capacity;
    sl_jdoc_t *docs;
    size_t doc_count, doc_capacity;
    char *out; /* encode.c's buffer for the JSON text being written */
    size_t out_capacity;
    int doc_mt_ref;               /* metatable of lazy JSON objects */
    int record_mt_ref;            /* metatable of lazy records */
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

/* json.c: push_script_module pushes the json module of one script (its own
 * lua-cjson instance); integral gives the int64 equal to v, if any. */
void sl_json_push_script_module(lua_State *L);
int sl_json_integral(double v, lua_Integer *out);

/* encode.c: writes the value at idx as JSON text into the arena (*out,
 * *len); raises with a sentence when it cannot be written. */
void sl_json_write(lua_State *L, sl_vm_t *vm, int idx, const uint8_t **out, int32_t *len);

/* encode.c: does sl_json_write write the string s (n bytes) between its
 * quotes as it is, escaping nothing? */
int sl_json_plain(const char *s, size_t n);

/* encode.c: the JSON text sl_json_write gives a number (an integer, or a
 * finite double d) into text; returns its length. */
#define SL_JSON_NUMBER_TEXT_MAX 48
size_t sl_json_number_text(int is_integer, int64_t integer, double d, char *text);

/* jsontok.c: tokenizes and checks len bytes of JSON at text (which must
 * stay valid until the batch ends) into a new document *doc. Returns 0;
 * SL_EINVALID with "what at byte N" in sl_error_detail(); -ENOMEM. */
int sl_json_tokenize(sl_vm_t *vm, const char *text, int32_t len, int *doc);

/* jsontok.c: a new document *doc of text whose tokens the caller made, as
 * sl_json_tokenize would make them (copied); 0 or -ENOMEM. */
int sl_json_add_doc(sl_vm_t *vm, const char *text, const sl_jtok_t *tokens, int count, int *doc);

/* The two ways sl_json_tokenize takes, apart (for tests): the fast one
 * returns 0 (a document), 1 (the text is not proven valid, nothing made)
 * or -ENOMEM; the slow one answers as sl_json_tokenize does. Both make the
 * same tokens for a text the fast one takes. */
int sl_json_tokenize_fast(sl_vm_t *vm, const char *text, int32_t len, int *doc);
int sl_json_tokenize_slow(sl_vm_t *vm, const char *text, int32_t len, int *doc);

/* native.c: compile recognises the function at idx, of `params` (1 or 2)
 * parameters, when native.c can run it (no calls, loops, globals or
 * upvalues) and returns its native form (sl_native_free frees it), else
 * NULL; never raises.
 * filter_run answers a filter for slot into *keep; value_run runs a map
 * (slots {slot, -1}) or join function (the sides' slots, -1 for nil;
 * values[p]: parameter p is the slot's r.value, not the record) and writes
 * the JSON object of the table it returns into the batch arena, with its
 * tokens as the document *doc. Both
 * return 0, or 1 where only Lua gives the answer (the caller runs the
 * function: nothing was changed). */
sl_native_t *sl_native_compile(lua_State *L, int idx, int params);
void sl_native_free(sl_native_t *n);
int sl_native_filter_run(sl_vm_t *vm, const sl_native_t *n, int slot, int *keep);
int sl_native_value_run(sl_vm_t *vm, const sl_native_t *n, const int slots[2], const int values[2],
                        const uint8_t **value, int32_t *len, int *doc);

/* native.c: the top-level fields of r.value that n reads of its parameter
 * `param`, a record: their count, each
 * name (names[i], lens[i] bytes, in n's constants) once, at most max;
 * -1 when it may read more: the parameter or its value is returned,
 * stored, compared or counted, a record field other than value, key, ts,
 * partition and offset is read, or more than max names are. */
int sl_native_reads(const sl_native_t *n, int param, const char **names, size_t *lens, int max);
/* lazy.c: the number of a checked number token (as Lua reads it: an
 * integer when integral and in range); 0, or -ENOMEM. */
int sl_token_number(const char *text, const sl_jtok_t *t, sl_vm_value_t *out);

/* record.c: a new LOADED slot like input_slot but for its JSON value
 * (value, len: in the batch arena; doc: its tokens), made by producer; 0,
 * or -ENOMEM with nothing made. */
int sl_record_derive_json(sl_vm_t *vm, int input_slot, const sl_op_t *producer,
                          const uint8_t *value, int32_t len, int doc, int *slot);

/* record.c: a new LOADED slot like input_slot (LOADED, no table built) but
 * keyed key (key_len bytes that live as long as the batch), made by
 * producer; 0, or -ENOMEM with nothing made. */
int sl_record_derive_keyed(sl_vm_t *vm, int input_slot, const sl_op_t *producer, const uint8_t *key,
                           int32_t key_len, int *slot);

/* native.c: the field of a key_by function that is `return r.value.<field>`
 * (sl_malloc'd, the caller frees it), else NULL (never raises). */
char *sl_native_key_compile(lua_State *L, int idx);

/* lazy.c: init makes the metatables; push_value pushes a document's value
 * (a lazy table for an object); push_record pushes a new lazy record table
 * for slot (the caller sets its value); find returns the token of the
 * value of name in an object document (the last, if repeated), -1 if
 * none, and push_found pushes it; materialize fills in a lazy table at idx
 * (anything else is left alone); is_record tells a lazy record table. */
void sl_lazy_init(lua_State *L, sl_vm_t *vm);
void sl_lazy_push_value(lua_State *L, sl_vm_t *vm, int doc);
/* Pushes len bytes as a string, or json.null for len < 0 (lazy.c). */
void sl_push_bytes(lua_State *L, const uint8_t *data, int32_t len);
void sl_lazy_push_record(lua_State *L, sl_vm_t *vm, int slot);
int sl_lazy_find(lua_State *L, sl_vm_t *vm, int doc, const char *name, size_t len);
void sl_lazy_push_found(lua_State *L, sl_vm_t *vm, int doc, int token);
void sl_lazy_materialize(lua_State *L, sl_vm_t *vm, int idx);
int sl_lazy_is_record(lua_State *L, sl_vm_t *vm, int idx);

/* lazy.c, for stateful operators: field reads r.value[name] of an object
 * document straight from its tokens (0), or returns -1 when it takes Lua
 * (escapes, long numbers); push_json pushes the whole value of a JSON text
 * (raising on invalid JSON). */
int sl_lazy_field(sl_vm_t *vm, int doc, const char *name, sl_vm_value_t *out);

/* lazy.c, for reading fields without Lua: object_doc is the document of a
 * slot whose r.value is exactly its tokens' JSON object (read from the log,
 * no table built that an op could have changed), else -1; find_plain is
 * the value token of name in an object document (the last, if repeated),
 * -1 if none, -2 if a key has escapes (only Lua compares those);
 * find_member is the same in the object at token `object` of doc, for a
 * name of len bytes. */
int sl_lazy_object_doc(const sl_vm_t *vm, int slot);
int sl_lazy_find_plain(const sl_vm_t *vm, int doc, const char *name);
int sl_lazy_find_member(const sl_vm_t *vm, int doc, int object, const char *name, size_t len);

/* record.c: the text a number keys a record by (integers and integral
 * floats in decimal, others in shortest form) into text, SL_DOUBLE_TEXT_MAX
 * bytes (storage/dtoa.h); 0 for a NaN or an infinity, which key nothing. */
int sl_number_key_text(int is_integer, int64_t integer, double d, char *text);

/* record.c: is name one of a record table's fields (key, value, ts, ...)? */
int sl_is_record_field(const char *name, size_t len);
void sl_lazy_push_json(lua_State *L, sl_vm_t *vm, const char *text, size_t len);

/* record.c, for call.c. sl_slot_push pushes the record table r of a slot
 * (building it on first use). The push_ functions make a new slot from the
 * result of a user function on input_slot: push_result from a map result
 * (a value or a record table) at result, given r at input; push_keyed from
 * a key at key. set_timestamp stores the timestamp at result as the slot's
 * ts. All raise on bad types. */
void sl_slot_push(lua_State *L, sl_vm_t *vm, int slot);
void sl_record_push_result(lua_State *L, sl_vm_t *vm, int input, int input_slot, int result,
                           const sl_op_t *producer, int *slot);
void sl_record_push_keyed(lua_State *L, sl_vm_t *vm, int input_slot, int key,
                          const sl_op_t *producer, int *slot);
void sl_record_set_timestamp(lua_State *L, sl_vm_t *vm, int slot, int result);

#endif

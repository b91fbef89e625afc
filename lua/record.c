/*
 * record.c - records between bytes and Lua, held in slots.
 *
 * A slot is one record of the batch (see vm.h for its three kinds). The
 * rules that make one decode per record possible:
 *
 *   load        bytes copied to the arena, JSON tokenized and checked;
 *               no Lua yet                                    LOADED
 *   r           built on first use by a function (lazy.c), then shared by
 *               every op the record reaches
 *   key_by      the input with a new key: LOADED stays LOADED (bytes kept),
 *               VALUE stays VALUE (value shared)
 *   map         a value: VALUE, keeping the input's key, ts, headers;
 *               a record table: TABLE, converted to a canonical table
 *   get         LOADED: the bytes; VALUE: the value encoded (strings as
 *               they are) with the kept key, ts and headers; TABLE: the
 *               table encoded
 *
 * A canonical table has key a string or absent, ts an integer, headers a
 * table name -> string or json.null, topic/partition/offset from the input:
 * map results are converted when made, so that a type error is reported by
 * the map that made it, and later functions see the same shapes a loaded
 * record has. Encoding still converts defensively, since any function may
 * have changed a table since.
 */
#include "lua/vm.h"
#include "storage/dtoa.h"

#include <lua5.4/lauxlib.h>

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- slots ---------------------------------------------------------------- */

/* A new slot (zeroed but for doc = -1); -ENOMEM. Needs no Lua. */
static int add_slot(sl_vm_t *vm, const sl_op_t *producer)
{
    if (vm->slot_count == vm->slot_capacity) {
        int capacity = vm->slot_capacity ? 2 * vm->slot_capacity : 1024;
        sl_slot_t *grown = sl_realloc(vm->slots, (size_t)capacity * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        vm->slots = grown;
        vm->slot_capacity = capacity;
    }
    sl_slot_t *slot = &vm->slots[vm->slot_count];
    memset(slot, 0, sizeof *slot);
    slot->doc = -1;
    slot->producer = producer;
    return vm->slot_count++;
}

/* batch[index] = the value at the top (popped). */
static void batch_set(lua_State *L, sl_vm_t *vm, int index)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->batch_ref);
    lua_insert(L, -2);
    lua_rawseti(L, -2, index);
    lua_pop(L, 1);
}

static void batch_push(lua_State *L, sl_vm_t *vm, int index)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->batch_ref);
    lua_rawgeti(L, -1, index);
    lua_remove(L, -2);
}

#define VALUE_AT(slot) (2 * (slot) + 1) /* VALUE: the value; TABLE: the table */
#define TABLE_AT(slot) (2 * (slot) + 2) /* LOADED, VALUE: r once built */

void sl_slot_push(lua_State *L, sl_vm_t *vm, int slot)
{
    sl_slot_t *s = &vm->slots[slot];
    if (s->kind == SL_SLOT_TABLE) {
        batch_push(L, vm, VALUE_AT(slot));
        return;
    }
    if (s->has_table) {
        batch_push(L, vm, TABLE_AT(slot));
        return;
    }
    sl_lazy_push_record(L, vm, slot);
    if (s->kind == SL_SLOT_VALUE)
        batch_push(L, vm, VALUE_AT(slot));
    else if (s->doc >= 0)
        sl_lazy_push_value(L, vm, s->doc);
    else if (s->record.value_len >= 0)
        sl_push_bytes(L, s->record.value, s->record.value_len);
    else
        lua_pushnil(L); /* a tombstone: r.value is nil */
    lua_pushliteral(L, "value");
    lua_insert(L, -2);
    lua_rawset(L, -3); /* not through __newindex */
    lua_pushvalue(L, -1);
    batch_set(L, vm, TABLE_AT(slot));
    s->has_table = 1;
}

void sl_vm_batch_reset(sl_vm_t *vm)
{
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->batch_ref);
    for (int i = vm->slot_count - 1; i >= 0; i--) { /* only what slots put there */
        const sl_slot_t *s = &vm->slots[i];
        if (s->has_table) {
            lua_pushnil(L);
            lua_rawseti(L, -2, TABLE_AT(i));
        }
        if (s->kind != SL_SLOT_LOADED) {
            lua_pushnil(L);
            lua_rawseti(L, -2, VALUE_AT(i));
        }
    }
    lua_pop(L, 1);
    vm->slot_count = 0;
    vm->jtok_count = 0;
    vm->doc_count = 0;
    vm->lazy_count = 0;
    if (++vm->generation == 0 && vm->lazy) /* after 2^32 batches: old entries must not revive */
        memset(vm->lazy, 0, vm->lazy_capacity * sizeof *vm->lazy);
    sl_arena_reset(&vm->arena);
}

/* ---- conversions ------------------------------------------------------------ */

static const void *arena_copy(lua_State *L, sl_vm_t *vm, const void *data, int32_t len)
{
    return len < 0 ? NULL : sl_vm_need(L, sl_arena_copy(&vm->arena, data, (size_t)len));
}

int sl_number_key_text(int is_integer, int64_t integer, double d, char *text)
{
    lua_Integer whole;
    if (is_integer || sl_json_integral(d, &whole))
        snprintf(text, SL_DOUBLE_TEXT_MAX, "%lld", (long long)(is_integer ? integer : whole));
    else if (!isfinite(d))
        return 0;
    else
        sl_double_text(d, text);
    return 1;
}

/* Pushes the shortest decimal text that reads back as the number at idx;
 * integral values print as integers. */
static void push_number_text(lua_State *L, int idx)
{
    char text[SL_DOUBLE_TEXT_MAX];
    double v = lua_tonumber(L, idx);
    if (!sl_number_key_text(lua_isinteger(L, idx), lua_tointeger(L, idx), v, text))
        sl_vm_raise(L, "%g is not a finite number", v);
    lua_pushstring(L, text);
}

/* Pushes the bytes a key or header value at idx stands for and returns 1,
 * or returns 0 (nothing pushed) for nil and json.null. */
static int push_text(lua_State *L, int idx, const char *what)
{
    char text[64];
    int type = lua_type(L, idx);
    if (type == LUA_TNIL || (type == LUA_TLIGHTUSERDATA && !lua_touserdata(L, idx)))
        return 0;
    if (type == LUA_TSTRING)
        lua_pushvalue(L, idx);
    else if (type == LUA_TNUMBER)
        push_number_text(L, idx);
    else
        sl_vm_raise(L, "%s must be a string or a number, got %s", what,
                    sl_vm_describe(L, idx, text, sizeof text));
    return 1;
}

static int64_t to_timestamp(lua_State *L, int idx, const char *what)
{
    char text[64];
    lua_Integer ms = 0;
    if (lua_isinteger(L, idx))
        return lua_tointeger(L, idx);
    if (lua_type(L, idx) != LUA_TNUMBER || !sl_json_integral(lua_tonumber(L, idx), &ms))
        sl_vm_raise(L, "%s must be an integer number of ms, got %s", what,
                    sl_vm_describe(L, idx, text, sizeof text));
    return ms;
}

/* Pushes t[name] without metamethods; returns its type. */
static int raw_field(lua_State *L, int t, const char *name)
{
    lua_pushstring(L, name);
    return lua_rawget(L, t);
}

/* t[name] = the value at the top (popped), without metamethods. */
static void set_raw_field(lua_State *L, int t, const char *name)
{
    lua_pushstring(L, name);
    lua_insert(L, -2);
    lua_rawset(L, t);
}

/* ---- bytes in --------------------------------------------------------------- */

static int copy_bytes(sl_vm_t *vm, const uint8_t **data, int32_t len)
{
    if (len < 0 || !*data) {
        *data = NULL;
        return 0;
    }
    *data = sl_arena_copy(&vm->arena, *data, (size_t)len);
    return *data ? 0 : -ENOMEM;
}

/* Copies rec's bytes into the arena (no Lua involved). */
static int copy_record(sl_vm_t *vm, const sl_record_t *in, sl_record_t *out)
{
    *out = *in;
    if (copy_bytes(vm, &out->key, in->key_len) || copy_bytes(vm, &out->value, in->value_len))
        return -ENOMEM;
    if (!in->header_count)
        return 0;
    sl_header_t *headers = sl_arena_alloc(&vm->arena, in->header_count * sizeof *headers);
    if (!headers)
        return -ENOMEM;
    for (uint32_t i = 0; i < in->header_count; i++) {
        headers[i] = in->headers[i];
        if (copy_bytes(vm, &headers[i].name, in->headers[i].name_len) ||
            copy_bytes(vm, &headers[i].value, in->headers[i].value_len))
            return -ENOMEM;
    }
    out->headers = headers;
    return 0;
}

int sl_vm_record_load(sl_vm_t *vm, const sl_record_t *rec, const sl_vm_origin_t *origin, int *slot)
{
    int index = add_slot(vm, NULL), rc;
    if (index < 0)
        return index;
    sl_slot_t *s = &vm->slots[index];
    s->kind = SL_SLOT_LOADED;
    s->has_bytes = 1;
    s->topic = origin->topic;
    s->partition = origin->partition;
    if (origin->borrowed)
        s->record = *rec;
    else if ((rc = copy_record(vm, rec, &s->record))) {
        vm->slot_count--;
        return rc;
    }
    if (origin->json && rec->value_len >= 0) {
        rc = sl_json_tokenize(vm, (const char *)s->record.value, s->record.value_len, &s->doc);
        if (rc) {
            vm->slot_count--;
            if (rc == -ENOMEM)
                return rc;
            return sl_error_set(rc, "topic %s partition %d offset %lld: invalid JSON value: %s",
                                origin->topic ? origin->topic : "?", (int)origin->partition,
                                (long long)rec->offset, sl_error_detail());
        }
    }
    *slot = index;
    return 0;
}

/* ---- Lua -> bytes ---------------------------------------------------------------- */

static int by_header_name(const void *a, const void *b)
{
    const sl_header_t *x = a, *y = b;
    int n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int order = memcmp(x->name, y->name, (size_t)n);
    return order ? order : x->name_len - y->name_len;
}

static void header_from_pair(lua_State *L, sl_vm_t *vm, sl_header_t *h)
{
    size_t len;
    if (lua_type(L, -2) != LUA_TSTRING)
        sl_vm_raise(L, "header names must be strings");
    const char *name = lua_tolstring(L, -2, &len);
    h->name = arena_copy(L, vm, name, (int32_t)len);
    h->name_len = (int32_t)len;
    h->value = NULL;
    h->value_len = -1;
    if (push_text(L, lua_gettop(L), "a header value")) {
        const char *value = lua_tolstring(L, -1, &len);
        h->value = arena_copy(L, vm, value, (int32_t)len);
        h->value_len = (int32_t)len;
        lua_pop(L, 1);
    }
}

/* The headers table at idx as an array in the arena, sorted by name. */
static void encode_headers(lua_State *L, sl_vm_t *vm, int idx, sl_record_t *out)
{
    uint32_t count = 0, i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
    }
    sl_header_t *headers = sl_vm_need(L, sl_arena_alloc(&vm->arena, count * sizeof *headers));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        header_from_pair(L, vm, &headers[i++]);
        lua_pop(L, 1);
    }
    qsort(headers, count, sizeof *headers, by_header_name);
    out->headers = headers;
    out->header_count = count;
}

/* Copies the string at the top (popped) into the arena as *data, *len. */
static void take_string(lua_State *L, sl_vm_t *vm, const uint8_t **data, int32_t *len)
{
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    *data = arena_copy(L, vm, s, (int32_t)n);
    *len = (int32_t)n;
    lua_pop(L, 1);
}

static void encode_value(lua_State *L, sl_vm_t *vm, int t, sl_record_t *out)
{
    out->value = NULL;
    out->value_len = -1;
    int type = raw_field(L, t, "value");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (type != LUA_TSTRING) {
        sl_json_write(L, vm, -1, &out->value, &out->value_len);
        lua_pop(L, 1);
        return;
    }
    take_string(L, vm, &out->value, &out->value_len);
}

/* The headers a VALUE slot keeps from its input, as a Lua table would
 * write them: sorted by name, a repeated name keeping its last value.
 * 0, or -ENOMEM with rec unchanged. */
static int sorted_headers(sl_vm_t *vm, sl_record_t *rec)
{
    uint32_t n = rec->header_count, kept = 0;
    if (n < 2)
        return 0;
    sl_header_t *h = sl_arena_alloc(&vm->arena, n * sizeof *h);
    if (!h)
        return -ENOMEM;
    memcpy(h, rec->headers, n * sizeof *h);
    for (uint32_t i = 1; i < n; i++) /* insertion sort: stable, and n is small */
        for (uint32_t j = i; j > 0 && by_header_name(&h[j - 1], &h[j]) > 0; j--) {
            sl_header_t swap = h[j];
            h[j] = h[j - 1];
            h[j - 1] = swap;
        }
    for (uint32_t i = 0; i < n; i++) {
        if (i + 1 < n && by_header_name(&h[i], &h[i + 1]) == 0)
            continue;
        h[kept++] = h[i];
    }
    rec->headers = h;
    rec->header_count = kept;
    return 0;
}

static void sort_headers(lua_State *L, sl_vm_t *vm, sl_record_t *rec)
{
    if (sorted_headers(vm, rec))
        sl_vm_need(L, NULL);
}

static void encode_value_slot(lua_State *L, sl_vm_t *vm, int slot)
{
    sl_record_t out = vm->slots[slot].record;
    sort_headers(L, vm, &out);
    batch_push(L, vm, VALUE_AT(slot));
    if (lua_type(L, -1) == LUA_TSTRING)
        take_string(L, vm, &out.value, &out.value_len);
    else
        sl_json_write(L, vm, -1, &out.value, &out.value_len);
    vm->slots[slot].record = out;
    vm->slots[slot].has_bytes = 1;
}

static int encode_protected(lua_State *L)
{
    const int *slot = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    sl_record_t out = {.key_len = -1, .offset = -1};
    if (vm->slots[*slot].kind == SL_SLOT_VALUE) {
        encode_value_slot(L, vm, *slot);
        return 0;
    }
    sl_slot_push(L, vm, *slot);
    int t = lua_gettop(L);
    raw_field(L, t, "key");
    if (push_text(L, t + 1, "the key"))
        take_string(L, vm, &out.key, &out.key_len);
    lua_settop(L, t);
    encode_value(L, vm, t, &out);
    raw_field(L, t, "ts");
    out.timestamp = to_timestamp(L, -1, "ts");
    if (raw_field(L, t, "offset") == LUA_TNUMBER && lua_isinteger(L, -1))
        out.offset = lua_tointeger(L, -1);
    if (raw_field(L, t, "headers") == LUA_TTABLE)
        encode_headers(L, vm, lua_gettop(L), &out);
    vm->slots[*slot].record = out;
    vm->slots[*slot].has_bytes = 1;
    return 0;
}

int sl_vm_record_get(sl_vm_t *vm, int slot, sl_record_t *out)
{
    assert(slot >= 0 && slot < vm->slot_count);
    if (!vm->slots[slot].has_bytes) {
        int rc = sl_vm_protect(vm, encode_protected, &slot);
        const sl_op_t *producer = vm->slots[slot].producer;
        if (rc)
            return sl_error_set(rc, "%s (%s): cannot write the record: %s",
                                producer ? sl_op_kind_name(producer->kind) : "record",
                                producer ? producer->where : "?", vm->message);
    }
    *out = vm->slots[slot].record;
    return 0;
}

/* ---- results of user functions -> new slots ----------------------------------- */

int sl_is_record_field(const char *name, size_t len)
{
    switch (len) { /* by length first: most tables a map returns are values */
    case 2:
        return memcmp(name, "ts", 2) == 0;
    case 3:
        return memcmp(name, "key", 3) == 0;
    case 5:
        return memcmp(name, "value", 5) == 0 || memcmp(name, "topic", 5) == 0;
    case 6:
        return memcmp(name, "offset", 6) == 0;
    case 7:
        return memcmp(name, "headers", 7) == 0;
    case 9:
        return memcmp(name, "partition", 9) == 0;
    }
    return 0;
}

/* Is the value at idx a record table (see "Records in Lua" in lua.h)? */
static int is_record_table(lua_State *L, int idx)
{
    int has_key_or_value = 0;
    if (!lua_istable(L, idx))
        return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t len;
        lua_pop(L, 1);
        const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (!name || !sl_is_record_field(name, len)) {
            lua_pop(L, 1);
            return 0;
        }
        has_key_or_value |= len == 3 || (len == 5 && name[0] == 'v'); /* key, value */
    }
    return has_key_or_value;
}

static void check_value(lua_State *L, int idx, const char *what)
{
    int type = lua_type(L, idx);
    if (type == LUA_TFUNCTION || type == LUA_TTHREAD || type == LUA_TUSERDATA)
        sl_vm_raise(L, "%s a %s, which cannot be a record value", what, lua_typename(L, type));
}

/* to[name] = from[name] for each name; from may be a lazy record. */
static void copy_fields(lua_State *L, int from, int to, const char *const *names)
{
    for (; *names; names++) {
        lua_getfield(L, from, *names);
        set_raw_field(L, to, *names);
    }
}

/* A canonical copy of the headers table at idx, pushed. */
static void push_canonical_headers(lua_State *L, int idx)
{
    char text[64];
    if (!lua_istable(L, idx))
        sl_vm_raise(L, "record headers must be a table of name = string, got %s",
                    sl_vm_describe(L, idx, text, sizeof text));
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            sl_vm_raise(L, "record header names must be strings, got %s",
                        sl_vm_describe(L, -2, text, sizeof text));
        if (!push_text(L, lua_gettop(L), "a record header value"))
            lua_pushlightuserdata(L, NULL);
        lua_pushvalue(L, -3);
        lua_insert(L, -2);
        lua_rawset(L, -5);
        lua_pop(L, 1);
    }
}

/* Fills out (a new table) from the record table at result. */
static void fill_from_record_table(lua_State *L, int input, int result, int out)
{
    raw_field(L, result, "key");
    if (push_text(L, lua_gettop(L), "the record key"))
        set_raw_field(L, out, "key");
    lua_pop(L, 1);
    raw_field(L, result, "value");
    check_value(L, -1, "returned a record whose value is");
    set_raw_field(L, out, "value");
    if (raw_field(L, result, "ts") == LUA_TNIL) {
        lua_pop(L, 1);
        lua_getfield(L, input, "ts");
    }
    lua_pushinteger(L, to_timestamp(L, -1, "the record ts"));
    set_raw_field(L, out, "ts");
    lua_pop(L, 1);
    if (raw_field(L, result, "headers") == LUA_TNIL)
        lua_newtable(L);
    else
        push_canonical_headers(L, lua_gettop(L));
    set_raw_field(L, out, "headers");
    lua_pop(L, 1);
}

/* A new slot made by producer as a copy of input_slot (its C side: kind,
 * key, ts, headers, origin), no table built for it yet; or -ENOMEM. */
static int copy_slot(sl_vm_t *vm, int input_slot, const sl_op_t *producer)
{
    int made = add_slot(vm, producer);
    if (made < 0)
        return made;
    sl_slot_t *m = &vm->slots[made];
    *m = vm->slots[input_slot];
    m->has_table = 0;
    m->producer = producer;
    return made;
}

/* A new slot of kind made by producer from input_slot, for the caller to
 * finish; the input's C side (key, ts, headers, origin) is kept. */
static int derived_slot(lua_State *L, sl_vm_t *vm, int input_slot, sl_slot_kind_t kind,
                        const sl_op_t *producer)
{
    int made = copy_slot(vm, input_slot, producer);
    if (made < 0)
        sl_vm_need(L, NULL);
    vm->slots[made].kind = kind;
    return made;
}

int sl_record_derive_keyed(sl_vm_t *vm, int input_slot, const sl_op_t *producer, const uint8_t *key,
                           int32_t key_len, int *slot)
{
    assert(vm->slots[input_slot].kind == SL_SLOT_LOADED && !vm->slots[input_slot].has_table);
    int made = copy_slot(vm, input_slot, producer);
    if (made < 0)
        return made;
    sl_slot_t *m = &vm->slots[made];
    m->record.key = key;
    m->record.key_len = key_len;
    *slot = made;
    return 0;
}

int sl_record_derive_json(sl_vm_t *vm, int input_slot, const sl_op_t *producer,
                          const uint8_t *value, int32_t len, int doc, int *slot)
{
    int made = copy_slot(vm, input_slot, producer);
    if (made < 0)
        return made;
    sl_slot_t *m = &vm->slots[made];
    m->has_bytes = 1;
    m->doc = doc;
    m->record.value = value;
    m->record.value_len = len;
    if (sorted_headers(vm, &m->record)) { /* as a map's output writes them */
        vm->slot_count--;
        return -ENOMEM;
    }
    *slot = made;
    return 0;
}

void sl_record_push_result(lua_State *L, sl_vm_t *vm, int input, int input_slot, int result,
                           const sl_op_t *producer, int *slot)
{
    static const char *const origin[] = {"topic", "partition", "offset", NULL};
    static const char *const kept[] = {"key", "ts", "headers", NULL};
    if (lua_isnil(L, result))
        sl_vm_raise(L, "returned nil (return a value, or a record table {key = k, value = v})");
    check_value(L, result, "returned");
    int lazy_record = sl_lazy_is_record(L, vm, result);
    if (lazy_record)
        sl_lazy_materialize(L, vm, result); /* `return r`: all its fields, as changed */
    int record = lazy_record || is_record_table(L, result);
    if (!record && vm->slots[input_slot].kind != SL_SLOT_TABLE) {
        int made = derived_slot(L, vm, input_slot, SL_SLOT_VALUE, producer);
        vm->slots[made].has_bytes = 0;
        vm->slots[made].doc = -1;
        vm->slots[made].record.value = NULL;
        vm->slots[made].record.value_len = -1;
        lua_pushvalue(L, result);
        batch_set(L, vm, VALUE_AT(made));
        *slot = made;
        return;
    }
    lua_createtable(L, 0, 7);
    int out = lua_gettop(L);
    copy_fields(L, input, out, origin);
    if (record) {
        fill_from_record_table(L, input, result, out);
    } else {
        copy_fields(L, input, out, kept);
        lua_pushvalue(L, result);
        set_raw_field(L, out, "value");
    }
    int made = derived_slot(L, vm, input_slot, SL_SLOT_TABLE, producer);
    vm->slots[made].has_bytes = 0;
    vm->slots[made].doc = -1;
    batch_set(L, vm, VALUE_AT(made));
    *slot = made;
}

/* Pushes a copy of the table at idx (raw fields, one level). */
static void push_table_copy(lua_State *L, int idx)
{
    lua_createtable(L, 0, 7);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

void sl_record_push_keyed(lua_State *L, sl_vm_t *vm, int input_slot, int key,
                          const sl_op_t *producer, int *slot)
{
    char text[64];
    size_t len;
    if (!push_text(L, key, "the key"))
        sl_vm_raise(L, "no key: got %s", sl_vm_describe(L, key, text, sizeof text));
    int text_at = lua_gettop(L);
    const char *bytes = lua_tolstring(L, text_at, &len);
    sl_slot_kind_t kind = vm->slots[input_slot].kind;
    int made = derived_slot(L, vm, input_slot, kind, producer);
    vm->slots[made].record.key = arena_copy(L, vm, bytes, (int32_t)len);
    vm->slots[made].record.key_len = (int32_t)len;
    if (kind == SL_SLOT_VALUE) {
        batch_push(L, vm, VALUE_AT(input_slot));
        batch_set(L, vm, VALUE_AT(made));
    } else if (kind == SL_SLOT_TABLE) {
        sl_slot_push(L, vm, input_slot);
        push_table_copy(L, lua_gettop(L));
        lua_pushvalue(L, text_at);
        set_raw_field(L, lua_gettop(L) - 1, "key");
        batch_set(L, vm, VALUE_AT(made));
    }
    *slot = made;
}

void sl_record_set_timestamp(lua_State *L, sl_vm_t *vm, int slot, int result)
{
    sl_slot_t *s = &vm->slots[slot];
    int64_t ts = to_timestamp(L, result, "the timestamp");
    s->record.timestamp = ts;
    if (s->kind != SL_SLOT_TABLE && !s->has_table)
        return;
    sl_slot_push(L, vm, slot);
    lua_pushinteger(L, ts);
    set_raw_field(L, lua_gettop(L) - 1, "ts");
    lua_pop(L, 1);
}

int sl_vm_record_meta(sl_vm_t *vm, int slot, sl_record_t *out)
{
    assert(slot >= 0 && slot < vm->slot_count);
    const sl_slot_t *s = &vm->slots[slot];
    if (s->kind == SL_SLOT_TABLE)
        return sl_vm_record_get(vm, slot, out);
    *out = s->record;
    return 0;
}

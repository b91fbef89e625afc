/*
 * call.c - running an op's user function on a record.
 *
 * Each sl_vm_call_* runs one protected C function (sl_vm_protect) that
 * pushes the function and the slot's record table, calls it with a fresh
 * instruction budget and turns the result into the caller's output: a
 * truth value, a branch index, or new slots. Errors of any kind unwind to
 * sl_vm_protect, which leaves the VM as it was before the call, and come
 * back as "<kind> (<where>): <message>".
 *
 * ROUTE runs up to three functions in one protected call (the routing key,
 * the priority, the headers) and turns their results into bytes in the
 * batch arena, headers sorted by name, so that a message is the same
 * whichever VM made it (a Lua table's order is not).
 */
#include "lua/vm.h"
#include "storage/dtoa.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

typedef struct call {
    const sl_op_t *op;
    int slot;
    int sides[2]; /* JOIN: the slots of fn's arguments, -1 for nil */
    int branch;   /* BRANCH: the predicate being tried, then the answer */
    int keep;     /* FILTER */
    int out_slot; /* MAP, KEY_BY; FLAT_MAP: the first */
    int count;    /* FLAT_MAP */
    int64_t ts;   /* SOURCE */
} call_t;

/* Calls fn(record of slot) with a fresh budget; leaves one result on top. */
static void call_user(lua_State *L, sl_vm_t *vm, int fn, int slot)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    sl_slot_push(L, vm, slot);
    sl_vm_budget_reset(vm);
    lua_call(L, 1, 1);
}

static int run(sl_vm_t *vm, call_t *call, lua_CFunction body)
{
    const sl_op_t *op = call->op;
    assert(call->slot >= 0 && call->slot < vm->slot_count);
    int rc = sl_vm_protect(vm, body, call);
    if (rc == 0)
        return 0;
    if (op->kind == SL_OP_BRANCH)
        return sl_error_set(rc, "branch '%s' (%s): %s", op->branch_names[call->branch], op->where,
                            vm->message);
    return sl_error_set(rc, "%s (%s): %s",
                        op->kind == SL_OP_SOURCE ? "timestamp" : sl_op_kind_name(op->kind),
                        op->where, vm->message);
}

static int timestamp_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    call_user(L, vm, call->op->fn, call->slot);
    sl_record_set_timestamp(L, vm, call->slot, lua_gettop(L));
    call->ts = vm->slots[call->slot].record.timestamp;
    return 0;
}

int sl_vm_call_timestamp(sl_vm_t *vm, const sl_op_t *op, int slot, int64_t *ts)
{
    assert(op->kind == SL_OP_SOURCE && op->fn != SL_NO_FUNCTION);
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, timestamp_body);
    if (rc == 0)
        *ts = call.ts;
    return rc;
}

static int filter_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    call_user(L, sl_vm_of(L), call->op->fn, call->slot);
    call->keep = lua_toboolean(L, -1);
    return 0;
}

int sl_vm_call_filter(sl_vm_t *vm, const sl_op_t *op, int slot, int *keep)
{
    assert(op->kind == SL_OP_FILTER);
    assert(slot >= 0 && slot < vm->slot_count);
    if (op->native && sl_native_filter_run(vm, op->native, slot, keep) == 0)
        return 0;
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, filter_body);
    if (rc == 0)
        *keep = call.keep;
    return rc;
}

static int map_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    sl_slot_push(L, vm, call->slot);
    call_user(L, vm, call->op->fn, call->slot);
    sl_record_push_result(L, vm, 2, call->slot, 3, call->op, &call->out_slot);
    return 0;
}

/* A map's or join's output without Lua (sl_native_value_run on slots and
 * values), keeping base's key, ts and headers: 0 with *out_slot, or 1
 * where Lua must run the function. */
static int native_value(sl_vm_t *vm, const sl_op_t *op, int base, const int slots[2],
                        const int values[2], int *out_slot)
{
    const uint8_t *value;
    int32_t len;
    int doc;
    if (!op->native || sl_lazy_object_doc(vm, base) < 0) /* base's C side: as loaded */
        return 1;
    return sl_native_value_run(vm, op->native, slots, values, &value, &len, &doc) == 0 &&
                   sl_record_derive_json(vm, base, op, value, len, doc, out_slot) == 0
               ? 0
               : 1;
}

int sl_vm_call_map(sl_vm_t *vm, const sl_op_t *op, int slot, int *out_slot)
{
    assert(op->kind == SL_OP_MAP);
    const int slots[2] = {slot, -1}, values[2] = {0, 0};
    if (native_value(vm, op, slot, slots, values, out_slot) == 0)
        return 0;
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, map_body);
    if (rc == 0)
        *out_slot = call.out_slot;
    return rc;
}

/* The list at idx: its length; an error for anything but a list. */
static int list_length(lua_State *L, int idx)
{
    char text[64];
    if (!lua_istable(L, idx))
        sl_vm_raise(L, "returned %s (return a list of values or records, {} for none)",
                    sl_vm_describe(L, idx, text, sizeof text));
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    lua_pushnil(L);
    if (n == 0 && lua_next(L, idx))
        sl_vm_raise(L, "returned a table that is not a list (return {} for none)");
    lua_settop(L, idx);
    if (n > INT32_MAX / 2)
        sl_vm_raise(L, "returned a list of %lld items", (long long)n);
    return (int)n;
}

static int flat_map_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    sl_slot_push(L, vm, call->slot);
    call_user(L, vm, call->op->fn, call->slot);
    int n = list_length(L, 3), slot;
    call->out_slot = vm->slot_count;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        sl_record_push_result(L, vm, 2, call->slot, 4, call->op, &slot);
        lua_settop(L, 3);
    }
    call->count = n;
    return 0;
}

int sl_vm_call_flat_map(sl_vm_t *vm, const sl_op_t *op, int slot, int *first_slot, int *count)
{
    assert(op->kind == SL_OP_FLAT_MAP);
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, flat_map_body);
    if (rc == 0) {
        *first_slot = call.out_slot;
        *count = call.count;
    }
    return rc;
}

/* Pushes r.value[field] of the record in slot: straight from the tokens
 * of a loaded JSON object, without building r. */
static void push_field(lua_State *L, sl_vm_t *vm, int slot, const char *field)
{
    char text[64];
    int doc = sl_lazy_object_doc(vm, slot);
    if (doc >= 0) {
        int token = sl_lazy_find(L, vm, doc, field, strlen(field));
        if (token < 0)
            lua_pushnil(L);
        else
            sl_lazy_push_found(L, vm, doc, token);
    } else {
        sl_slot_push(L, vm, slot);
        if (lua_getfield(L, -1, "value") != LUA_TTABLE)
            sl_vm_raise(L, "the value is %s, not a JSON object with the field '%s'",
                        sl_vm_describe(L, -1, text, sizeof text), field);
        lua_getfield(L, -1, field);
    }
    int type = lua_type(L, -1);
    if (type == LUA_TNIL || (type == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1)))
        sl_vm_raise(L, "the value has no field '%s' (or it is null)", field);
}

/* Is the number text s (n bytes) an integer Lua reads as one and writes
 * back as the same text: digits, perhaps a minus, not -0, at most 18
 * digits (so within int64)? */
static int plain_integer(const char *s, int32_t n)
{
    int32_t i = n > 0 && s[0] == '-';
    if (n - i < 1 || n - i > 18 || (i && s[1] == '0'))
        return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Keys the record in slot by r.value[field] without Lua, where that is a
 * string without escapes or a number of a loaded JSON object (the key text
 * Lua would make); 0 with the new slot, or 1 anywhere else. */
static int native_key(sl_vm_t *vm, const sl_op_t *op, const char *field, int slot, int *out_slot)
{
    char number[SL_DOUBLE_TEXT_MAX];
    const uint8_t *key;
    sl_vm_value_t v;
    int32_t len;
    int doc = sl_lazy_object_doc(vm, slot);
    int token = doc < 0 ? -1 : sl_lazy_find_plain(vm, doc, field);
    if (token < 0)
        return 1;
    const sl_jtok_t *t = vm->jtoks + vm->docs[doc].first + token;
    const char *text = vm->docs[doc].text;
    if (t->type == SL_JTOK_STRING && !t->escaped) {
        key = (const uint8_t *)text + t->start; /* lives as long as the batch */
        len = t->end - t->start;
    } else if (t->type == SL_JTOK_NUMBER && plain_integer(text + t->start, t->end - t->start)) {
        key = (const uint8_t *)text + t->start; /* its text is the one Lua writes */
        len = t->end - t->start;
    } else if (t->type == SL_JTOK_NUMBER && sl_token_number(text, t, &v) == 0 &&
               sl_number_key_text(v.is_integer, v.integer, v.number, number)) {
        len = (int32_t)strlen(number);
        if (!(key = sl_arena_copy(&vm->arena, number, (size_t)len)))
            return 1;
    } else {
        return 1;
    }
    return sl_record_derive_keyed(vm, slot, op, key, len, out_slot) == 0 ? 0 : 1;
}

static int key_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    const sl_op_t *op = call->op;
    if (op->field)
        push_field(L, vm, call->slot, op->field);
    else
        call_user(L, vm, op->fn, call->slot);
    sl_record_push_keyed(L, vm, call->slot, lua_gettop(L), op, &call->out_slot);
    return 0;
}

int sl_vm_call_key(sl_vm_t *vm, const sl_op_t *op, int slot, int *out_slot)
{
    assert(op->kind == SL_OP_KEY_BY);
    const char *field = op->field ? op->field : op->native_key;
    if (field && native_key(vm, op, field, slot, out_slot) == 0)
        return 0;
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, key_body);
    if (rc == 0)
        *out_slot = call.out_slot;
    return rc;
}

static int branch_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    for (call->branch = 0; call->branch < call->op->branch_count; call->branch++) {
        call_user(L, vm, call->op->branch_fns[call->branch], call->slot);
        if (lua_toboolean(L, -1))
            return 0;
        lua_pop(L, 1);
    }
    call->branch = -1;
    return 0;
}

int sl_vm_call_branch(sl_vm_t *vm, const sl_op_t *op, int slot, int *branch)
{
    assert(op->kind == SL_OP_BRANCH);
    call_t call = {.op = op, .slot = slot};
    int rc = run(vm, &call, branch_body);
    if (rc == 0)
        *branch = call.branch;
    return rc;
}

static int peek_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    call_user(L, sl_vm_of(L), call->op->fn, call->slot);
    return 0;
}

int sl_vm_call_peek(sl_vm_t *vm, const sl_op_t *op, int slot)
{
    assert(op->kind == SL_OP_PEEK);
    call_t call = {.op = op, .slot = slot};
    return run(vm, &call, peek_body);
}

/* Pushes a join's argument: the record of slot, its value (values), or
 * nil for -1. */
static void push_side(lua_State *L, sl_vm_t *vm, int slot, int values)
{
    if (slot < 0) {
        lua_pushnil(L);
        return;
    }
    sl_slot_push(L, vm, slot);
    if (values) {
        lua_getfield(L, -1, "value");
        lua_remove(L, -2);
    }
}

static int join_body(lua_State *L)
{
    call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    const sl_op_t *op = call->op;
    sl_slot_push(L, vm, call->slot); /* 2: the base record */
    lua_rawgeti(L, LUA_REGISTRYINDEX, op->fn);
    push_side(L, vm, call->sides[0], op->join_kind == SL_JOIN_TABLE_TABLE);
    push_side(L, vm, call->sides[1], op->join_kind != SL_JOIN_STREAM_STREAM);
    sl_vm_budget_reset(vm);
    lua_call(L, 2, 1); /* 3: the result */
    if (lua_isnil(L, 3) && op->join_kind == SL_JOIN_TABLE_TABLE) {
        lua_createtable(L, 0, 2); /* nil deletes the key: a tombstone */
        lua_getfield(L, 2, "key");
        lua_setfield(L, -2, "key");
        lua_getfield(L, 2, "ts");
        lua_setfield(L, -2, "ts");
        lua_replace(L, 3);
    }
    sl_record_push_result(L, vm, 2, call->slot, 3, op, &call->out_slot);
    return 0;
}

int sl_vm_call_join(sl_vm_t *vm, const sl_op_t *op, int base, int left, int right, int *out_slot)
{
    assert(op->kind == SL_OP_JOIN && base >= 0);
    const int slots[2] = {left, right};
    const int values[2] = {op->join_kind == SL_JOIN_TABLE_TABLE,
                           op->join_kind != SL_JOIN_STREAM_STREAM};
    if (native_value(vm, op, base, slots, values, out_slot) == 0)
        return 0;
    call_t call = {.op = op, .slot = base, .sides = {left, right}};
    int rc = run(vm, &call, join_body);
    if (rc == 0)
        *out_slot = call.out_slot;
    return rc;
}

/* ---- values for stateful operators ------------------------------------------ */

/* Copies the Lua string at idx into the arena as out's bytes. */
static void take_bytes(lua_State *L, sl_vm_t *vm, int idx, sl_vm_value_t *out)
{
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    out->bytes = sl_vm_need(L, sl_arena_copy(&vm->arena, s, len ? len : 1));
    out->len = len;
}

/* Classifies the Lua value at idx. */
static void classify(lua_State *L, sl_vm_t *vm, int idx, sl_vm_value_t *out)
{
    lua_Integer integer;
    memset(out, 0, sizeof *out);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        out->type = SL_VM_VALUE_NONE;
        break;
    case LUA_TLIGHTUSERDATA:
        out->type = lua_touserdata(L, idx) ? SL_VM_VALUE_OTHER : SL_VM_VALUE_NONE;
        break;
    case LUA_TNUMBER:
        out->type = SL_VM_VALUE_NUMBER;
        if (lua_isinteger(L, idx)) {
            out->is_integer = 1;
            out->integer = lua_tointeger(L, idx);
        } else if (sl_json_integral(lua_tonumber(L, idx), &integer)) {
            out->is_integer = 1;
            out->integer = integer;
        } else {
            out->number = lua_tonumber(L, idx);
        }
        break;
    case LUA_TSTRING:
        out->type = SL_VM_VALUE_STRING;
        take_bytes(L, vm, idx, out);
        break;
    default:
        out->type = SL_VM_VALUE_OTHER;
    }
}

typedef struct value_call {
    const sl_op_t *op;
    int slot;
    int fn;
    const char *field;
    sl_vm_value_t *out;
    const char *acc; /* reduce: the accumulator's JSON text */
    size_t acc_len;
    const uint8_t *json; /* reduce: the new accumulator */
    int32_t json_len;
} value_call_t;

static int field_body(lua_State *L)
{
    value_call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    sl_slot_push(L, vm, call->slot);
    if (lua_getfield(L, -1, "value") != LUA_TTABLE)
        lua_pushnil(L);
    else
        lua_getfield(L, -1, call->field);
    classify(L, vm, lua_gettop(L), call->out);
    return 0;
}

int sl_vm_field(sl_vm_t *vm, const sl_op_t *op, int slot, const char *field, sl_vm_value_t *out)
{
    int doc = sl_lazy_object_doc(vm, slot);
    if (doc >= 0 && sl_lazy_field(vm, doc, field, out) == 0)
        return 0;
    value_call_t call = {.op = op, .slot = slot, .field = field, .out = out};
    int rc = sl_vm_protect(vm, field_body, &call);
    return rc ? sl_error_set(rc, "%s (%s): field '%s': %s", sl_op_kind_name(op->kind), op->where,
                             field, vm->message)
              : 0;
}

static int value_body(lua_State *L)
{
    value_call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    call_user(L, vm, call->fn, call->slot);
    classify(L, vm, lua_gettop(L), call->out);
    return 0;
}

int sl_vm_call_value(sl_vm_t *vm, const sl_op_t *op, int fn, int slot, sl_vm_value_t *out)
{
    value_call_t call = {.op = op, .slot = slot, .fn = fn, .out = out};
    int rc = sl_vm_protect(vm, value_body, &call);
    return rc ? sl_error_set(rc, "%s (%s): %s", sl_op_kind_name(op->kind), op->where, vm->message)
              : 0;
}

static int reduce_body(lua_State *L)
{
    value_call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, call->fn);
    sl_lazy_push_json(L, vm, call->acc, call->acc_len);
    sl_slot_push(L, vm, call->slot);
    sl_vm_budget_reset(vm);
    lua_call(L, 2, 1);
    if (lua_isnil(L, -1))
        sl_vm_raise(L, "the reducer returned nil (return the new accumulated value)");
    sl_json_write(L, vm, -1, &call->json, &call->json_len);
    return 0;
}

int sl_vm_call_reduce(sl_vm_t *vm, const sl_op_t *op, int fn, const char *acc, size_t acc_len,
                      int slot, const uint8_t **out, int32_t *out_len)
{
    value_call_t call = {.op = op, .slot = slot, .fn = fn, .acc = acc, .acc_len = acc_len};
    int rc = sl_vm_protect(vm, reduce_body, &call);
    if (rc)
        return sl_error_set(rc, "%s (%s): reduce: %s", sl_op_kind_name(op->kind), op->where,
                            vm->message);
    *out = call.json;
    *out_len = call.json_len;
    return 0;
}

/* ---- routing ---------------------------------------------------------------------- */

typedef struct route_call {
    const sl_op_t *op;
    int slot;
    sl_vm_route_t *out;
} route_call_t;

/* The text the value at idx stands for, copied into the arena: a string
 * as it is, an integer in decimal; anything else raises naming what. */
static const char *route_text(lua_State *L, sl_vm_t *vm, int idx, const char *what, size_t *len)
{
    char text[64];
    lua_Integer n = 0;
    int type = lua_type(L, idx);
    if (type == LUA_TNUMBER &&
        (lua_isinteger(L, idx) || sl_json_integral(lua_tonumber(L, idx), &n)))
        lua_pushfstring(L, "%I", lua_isinteger(L, idx) ? lua_tointeger(L, idx) : n);
    else if (type == LUA_TSTRING)
        lua_pushvalue(L, idx);
    else
        sl_vm_raise(L, "%s must be a string or an integer, got %s", what,
                    sl_vm_describe(L, idx, text, sizeof text));
    const char *s = lua_tolstring(L, -1, len);
    const char *copy = sl_vm_need(L, sl_arena_copy(&vm->arena, s, *len ? *len : 1));
    lua_pop(L, 1);
    return copy;
}

static void route_key(lua_State *L, sl_vm_t *vm, const route_call_t *call)
{
    const sl_op_t *op = call->op;
    if (op->route_key_field)
        push_field(L, vm, call->slot, op->route_key_field);
    else
        call_user(L, vm, op->route_key_fn, call->slot);
    if (lua_isnil(L, -1))
        sl_vm_raise(L, "key: returned nil (return the routing key: a string or an integer)");
    call->out->key = route_text(L, vm, -1, "key: the routing key", &call->out->key_len);
    if (call->out->key_len > SL_ROUTING_KEY_MAX)
        sl_vm_raise(L, "key: the routing key is %zu bytes (at most %d)", call->out->key_len,
                    SL_ROUTING_KEY_MAX);
    call->out->has_key = 1;
    lua_pop(L, 1);
}

static void route_priority(lua_State *L, sl_vm_t *vm, const route_call_t *call)
{
    char text[64];
    lua_Integer n = -1;
    call_user(L, vm, call->op->route_priority_fn, call->slot);
    if (lua_isinteger(L, -1))
        n = lua_tointeger(L, -1);
    else if (lua_type(L, -1) != LUA_TNUMBER || !sl_json_integral(lua_tonumber(L, -1), &n))
        n = -1;
    if (n < 0 || n > 255)
        sl_vm_raise(L, "priority: returned %s (return an integer 0 to 255)",
                    sl_vm_describe(L, -1, text, sizeof text));
    call->out->priority = (int32_t)n;
    lua_pop(L, 1);
}

static int by_header_name(const void *a, const void *b)
{
    const sl_header_t *x = a, *y = b;
    int n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int order = memcmp(x->name, y->name, (size_t)n);
    return order ? order : x->name_len - y->name_len;
}

/* One header from the pair at -2 (name), -1 (value) of a lua_next walk. */
static void route_header(lua_State *L, sl_vm_t *vm, sl_header_t *h)
{
    char text[64];
    size_t len;
    if (lua_type(L, -2) != LUA_TSTRING || lua_rawlen(L, -2) == 0)
        sl_vm_raise(L, "headers: names must be non-empty strings, got %s",
                    sl_vm_describe(L, -2, text, sizeof text));
    const char *name = lua_tolstring(L, -2, &len);
    h->name = sl_vm_need(L, sl_arena_copy(&vm->arena, name, len));
    h->name_len = (int32_t)len;
    if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1)) {
        h->value = NULL; /* json.null: a null header value */
        h->value_len = -1;
        return;
    }
    h->value = (const uint8_t *)route_text(L, vm, -1, "headers: a value", &len);
    h->value_len = (int32_t)len;
}

static void route_headers(lua_State *L, sl_vm_t *vm, const route_call_t *call)
{
    char text[64];
    uint32_t count = 0;
    call_user(L, vm, call->op->route_headers_fn, call->slot);
    int t = lua_gettop(L);
    if (!lua_istable(L, t))
        sl_vm_raise(L, "headers: returned %s (return a table of name = value, {} for none)",
                    sl_vm_describe(L, t, text, sizeof text));
    sl_lazy_materialize(L, vm, t);
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1))
        count++;
    if (count > SL_DECLARE_ARGS_MAX)
        sl_vm_raise(L, "headers: returned %u headers (at most %d)", count, SL_DECLARE_ARGS_MAX);
    sl_header_t *headers =
        sl_vm_need(L, sl_arena_alloc(&vm->arena, (count ? count : 1) * sizeof *headers));
    count = 0;
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1))
        route_header(L, vm, &headers[count++]);
    qsort(headers, count, sizeof *headers, by_header_name);
    call->out->headers = headers;
    call->out->header_count = count;
    call->out->has_headers = 1;
    lua_settop(L, t - 1);
}

static int route_body(lua_State *L)
{
    route_call_t *call = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    const sl_op_t *op = call->op;
    if (op->route_key_field || op->route_key_fn != SL_NO_FUNCTION)
        route_key(L, vm, call);
    if (op->route_priority_fn != SL_NO_FUNCTION)
        route_priority(L, vm, call);
    if (op->route_headers_fn != SL_NO_FUNCTION)
        route_headers(L, vm, call);
    return 0;
}

int sl_vm_call_route(sl_vm_t *vm, const sl_op_t *op, int slot, sl_vm_route_t *out)
{
    assert(op->kind == SL_OP_ROUTE && slot >= 0 && slot < vm->slot_count);
    route_call_t call = {.op = op, .slot = slot, .out = out};
    memset(out, 0, sizeof *out);
    int rc = sl_vm_protect(vm, route_body, &call);
    return rc ? sl_error_set(rc, "route (%s): %s", op->where, vm->message) : 0;
}

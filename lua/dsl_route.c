/*
 * dsl_route.c - work queues in the DSL (DESIGN.md section 9): the
 * declarations s.exchange(), s.queue() and s.bind(), and the sink
 * :route(exchange, {key =, priority =, headers =}) (lua.h has the rules).
 *
 * Declarations add no op. Each one is appended to dag->declarations, in
 * script order, for the runtime to apply before the pipeline starts,
 * idempotently, as EXCHANGE DECLARE, QUEUE DECLARE and BIND do. What can
 * be checked without the node is checked here, with the storage module's
 * own checks so that a script says what the commands would: names, an
 * exchange type, queue options, a binding's pattern and arguments (against
 * the type of an exchange the script declared before), and a name or
 * binding declared twice. Whether a declaration agrees with what the node
 * already has is the runtime's to find out.
 *
 * Binding arguments come from a Lua table, whose order differs between
 * VMs, so they are sorted by name: every worker's DAG must be the same.
 * A declaration is counted in the DAG as soon as it is appended (zeroed),
 * so an error while it is being filled in leaves nothing sl_dag_free()
 * cannot free.
 */
#include "lua/options.h"

#include <stdlib.h>
#include <string.h>

#define FIELD_MAX 255 /* bytes in a routing key field name */

/* ---- checks ------------------------------------------------------------- */

/* The exchange or queue name (kind) at idx, as the registry checks names;
 * what names the DSL call. */
static const char *check_name(lua_State *L, sl_builder_t *b, int idx, const char *what,
                              const char *kind)
{
    char text[64];
    if (lua_type(L, idx) != LUA_TSTRING)
        sl_dsl_error(L, b, "%s expects %s %s name, got %s", what, kind[0] == 'e' ? "an" : "a", kind,
                     sl_vm_describe(L, idx, text, sizeof text));
    const char *name = lua_tostring(L, idx);
    if (strlen(name) != lua_rawlen(L, idx))
        sl_dsl_error(L, b, "%s: %s name cannot hold a NUL byte", what, kind);
    if (sl_queue_name_check(kind, name))
        sl_dsl_error(L, b, "%s: %s", what, sl_error_detail());
    return name;
}

static void check_arguments(lua_State *L, sl_builder_t *b, int most, const char *usage)
{
    if (lua_gettop(L) > most)
        sl_dsl_error(L, b, "too many arguments: write %s", usage);
}

/* An integer option in min..max; absent when not given. */
static int64_t option_integer(lua_State *L, sl_builder_t *b, int idx, const char *what,
                              const char *name, int64_t min, int64_t max, int64_t absent)
{
    char text[64];
    lua_Integer n = absent;
    if (sl_dsl_option(L, idx, name) != LUA_TNIL &&
        (lua_type(L, -1) != LUA_TNUMBER || !sl_json_integral(lua_tonumber(L, -1), &n) || n < min ||
         n > max))
        sl_dsl_error(L, b, "option '%s' for %s must be an integer %lld to %lld, got %s", name, what,
                     (long long)min, (long long)max, sl_vm_describe(L, -1, text, sizeof text));
    lua_pop(L, 1);
    return n;
}

/* The declaration of kind named name, or NULL. */
static const sl_declaration_t *declared(const sl_builder_t *b, sl_declare_kind_t kind,
                                        const char *name)
{
    for (int i = 0; i < b->dag->declaration_count; i++) {
        const sl_declaration_t *d = &b->dag->declarations[i];
        if (d->kind == kind && d->name && strcmp(d->name, name) == 0)
            return d;
    }
    return NULL;
}

/* Appends a zeroed declaration (already counted), where set to the call's
 * line. */
static sl_declaration_t *declaration_append(lua_State *L, sl_builder_t *b, sl_declare_kind_t kind)
{
    sl_dag_t *dag = b->dag;
    if (dag->declaration_count == b->declaration_capacity) {
        int capacity = b->declaration_capacity ? 2 * b->declaration_capacity : 8;
        dag->declarations = sl_vm_need(
            L, sl_realloc(dag->declarations, (size_t)capacity * sizeof *dag->declarations));
        b->declaration_capacity = capacity;
    }
    sl_declaration_t *d = &dag->declarations[dag->declaration_count++];
    memset(d, 0, sizeof *d);
    d->kind = kind;
    sl_queue_options_default(&d->queue_options);
    sl_dsl_where(L, b, d->where);
    return d;
}

/* ---- s.exchange ---------------------------------------------------------- */

/* s.exchange(name, type) -> name */
static int dsl_exchange(lua_State *L)
{
    char text[64];
    sl_exchange_type_t type;
    sl_builder_t *b = sl_dsl_enter(L);
    check_arguments(L, b, 2, "s.exchange(name, 'direct' | 'topic' | 'fanout' | 'headers')");
    const char *name = check_name(L, b, 1, "exchange", "exchange");
    if (lua_type(L, 2) != LUA_TSTRING)
        sl_dsl_error(L, b,
                     "exchange '%s' needs a type: 'direct', 'topic', 'fanout' or 'headers', got %s",
                     name, sl_vm_describe(L, 2, text, sizeof text));
    if (sl_exchange_type_parse(lua_tostring(L, 2), lua_rawlen(L, 2), &type))
        sl_dsl_error(L, b, "exchange '%s': %s", name, sl_error_detail());
    const sl_declaration_t *before = declared(b, SL_DECLARE_EXCHANGE, name);
    if (before)
        sl_dsl_error(L, b, "exchange '%s' is already declared at %s", name, before->where);
    sl_declaration_t *d = declaration_append(L, b, SL_DECLARE_EXCHANGE);
    d->name = sl_vm_need(L, sl_strdup(name));
    d->exchange_type = type;
    lua_settop(L, 1);
    return sl_dsl_leave(b, 1);
}

/* ---- s.queue ---------------------------------------------------------------- */

static const char *const queue_option_names[] = {
    "deadletter", "lease", "maxdeliveries", "maxlen", "maxpriority", "overflow", "ttl", NULL};

/* The option deadletter of queue name: "" when absent. */
static const char *dead_letter(lua_State *L, sl_builder_t *b, const char *name)
{
    if (sl_dsl_option(L, 2, "deadletter") == LUA_TNIL) {
        lua_pop(L, 1);
        return "";
    }
    const char *to = check_name(L, b, lua_gettop(L), "option 'deadletter' for queue", "queue");
    if (strcmp(to, name) == 0)
        sl_dsl_error(L, b, "queue '%s' cannot be its own dead-letter queue", name);
    return to; /* stays on the stack */
}

/* The options table at 2 of queue name into o. */
static void queue_options(lua_State *L, sl_builder_t *b, const char *name, sl_queue_options_t *o)
{
    static const char *const overflows[] = {"drop-head", "reject-publish", NULL};
    sl_dsl_check_options(L, b, 2, "queue", queue_option_names);
    o->max_priority =
        (int32_t)option_integer(L, b, 2, "queue", "maxpriority", 0, SL_QUEUE_PRIORITY_MAX, 0);
    o->ttl_ms = sl_dsl_option_duration(L, b, 2, "queue", "ttl", -1);
    o->max_length = option_integer(L, b, 2, "queue", "maxlen", 0, INT64_MAX, -1);
    o->overflow = (sl_overflow_t)sl_dsl_option_choice(L, b, 2, "queue", "overflow", overflows, 0);
    o->max_deliveries = (int32_t)option_integer(L, b, 2, "queue", "maxdeliveries", 1, INT32_MAX, 0);
    o->lease_ms = sl_dsl_option_duration(L, b, 2, "queue", "lease", o->lease_ms);
    if (o->lease_ms < 1)
        sl_dsl_error(L, b, "option 'lease' for queue must be at least 1 ms, got 0");
    snprintf(o->dead_letter, sizeof o->dead_letter, "%s", dead_letter(L, b, name));
}

/* s.queue(name, {maxpriority =, ttl =, maxlen =, overflow =, maxdeliveries =,
 * deadletter =, lease =}) -> name */
static int dsl_queue(lua_State *L)
{
    sl_queue_options_t o;
    sl_builder_t *b = sl_dsl_enter(L);
    check_arguments(L, b, 2, "s.queue(name, {options})");
    const char *name = check_name(L, b, 1, "queue", "queue");
    sl_queue_options_default(&o);
    queue_options(L, b, name, &o);
    const sl_declaration_t *before = declared(b, SL_DECLARE_QUEUE, name);
    if (before)
        sl_dsl_error(L, b, "queue '%s' is already declared at %s", name, before->where);
    sl_declaration_t *d = declaration_append(L, b, SL_DECLARE_QUEUE);
    d->name = sl_vm_need(L, sl_strdup(name));
    d->queue_options = o;
    lua_settop(L, 1);
    return sl_dsl_leave(b, 1);
}

/* ---- s.bind -------------------------------------------------------------------- */

/* The text of a binding argument's name (key) or value at idx: a string,
 * or an integer in decimal; pushed. */
static void push_argument_text(lua_State *L, sl_builder_t *b, int idx, const char *part)
{
    char text[64];
    lua_Integer n;
    if (lua_type(L, idx) == LUA_TSTRING)
        lua_pushvalue(L, idx);
    else if (part[0] == 'v' && lua_type(L, idx) == LUA_TNUMBER &&
             sl_json_integral(lua_tonumber(L, idx), &n))
        lua_pushfstring(L, "%I", n);
    else
        sl_dsl_error(L, b, "bind: argument %ss must be %s, got %s", part,
                     part[0] == 'v' ? "strings or integers" : "strings",
                     sl_vm_describe(L, idx, text, sizeof text));
    if (part[0] == 'n' && lua_rawlen(L, -1) == 0)
        sl_dsl_error(L, b, "bind: argument names cannot be empty");
}

/* An sl_malloc'd NUL-terminated copy of the string at the top (popped). */
static const uint8_t *take_text(lua_State *L, int32_t *len)
{
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    char *copy = sl_vm_need(L, sl_malloc(n + 1));
    memcpy(copy, s, n + 1);
    *len = (int32_t)n;
    lua_pop(L, 1);
    return (const uint8_t *)copy;
}

static int by_name(const void *a, const void *b)
{
    const sl_header_t *x = a, *y = b;
    int n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int order = memcmp(x->name, y->name, (size_t)n);
    return order ? order : x->name_len - y->name_len;
}

/* The arguments table at 4 into d, sorted by name. */
static void binding_args(lua_State *L, sl_builder_t *b, sl_declaration_t *d)
{
    char text[64];
    uint32_t count = 0;
    if (lua_isnoneornil(L, 4))
        return;
    if (!lua_istable(L, 4))
        sl_dsl_error(L, b, "bind: arguments must be a table of name = value, got %s",
                     sl_vm_describe(L, 4, text, sizeof text));
    for (lua_pushnil(L); lua_next(L, 4); lua_pop(L, 1))
        count++;
    if (count > SL_DECLARE_ARGS_MAX)
        sl_dsl_error(L, b, "bind: %u arguments (at most %d)", count, SL_DECLARE_ARGS_MAX);
    d->args = sl_vm_need(L, sl_calloc(count ? count : 1, sizeof *d->args));
    for (lua_pushnil(L); lua_next(L, 4); lua_pop(L, 1)) {
        sl_header_t *a = &d->args[d->arg_count++];
        push_argument_text(L, b, -2, "name");
        a->name = take_text(L, &a->name_len);
        push_argument_text(L, b, -1, "value");
        a->value = take_text(L, &a->value_len);
    }
    qsort(d->args, d->arg_count, sizeof *d->args, by_name);
}

static int same_binding(const sl_declaration_t *a, const sl_declaration_t *b)
{
    if (strcmp(a->name, b->name) || strcmp(a->queue, b->queue) ||
        a->pattern_len != b->pattern_len || memcmp(a->pattern, b->pattern, a->pattern_len) ||
        a->arg_count != b->arg_count)
        return 0;
    for (uint32_t i = 0; i < a->arg_count; i++)
        if (by_name(&a->args[i], &b->args[i]) || a->args[i].value_len != b->args[i].value_len ||
            memcmp(a->args[i].value, b->args[i].value, (size_t)a->args[i].value_len))
            return 0;
    return 1;
}

/* Checks d (the last declaration) against the exchange's declaration in
 * the script, if any, and earlier bindings. */
static void check_binding(lua_State *L, sl_builder_t *b, const sl_declaration_t *d)
{
    const sl_declaration_t *e = declared(b, SL_DECLARE_EXCHANGE, d->name);
    if (e && sl_exchange_binding_check(e->exchange_type, d->pattern_len, d->args, d->arg_count))
        sl_dsl_error(L, b, "bind to %s exchange '%s': %s", sl_exchange_type_name(e->exchange_type),
                     d->name, sl_error_detail());
    for (int i = 0; i < b->dag->declaration_count - 1; i++) {
        const sl_declaration_t *o = &b->dag->declarations[i];
        if (o->kind == SL_DECLARE_BIND && same_binding(o, d))
            sl_dsl_error(L, b, "this binding of '%s' to '%s' is already declared at %s", d->queue,
                         d->name, o->where);
    }
}

/* s.bind(exchange, queue, pattern, {name = value, ...}) */
static int dsl_bind(lua_State *L)
{
    char text[64];
    size_t pattern_len = 0;
    sl_builder_t *b = sl_dsl_enter(L);
    check_arguments(L, b, 4, "s.bind(exchange, queue, pattern, {arguments})");
    const char *exchange = check_name(L, b, 1, "bind", "exchange");
    const char *queue = check_name(L, b, 2, "bind", "queue");
    if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TSTRING)
        sl_dsl_error(L, b, "bind: the pattern must be a string, got %s",
                     sl_vm_describe(L, 3, text, sizeof text));
    const char *pattern = lua_isnoneornil(L, 3) ? "" : lua_tolstring(L, 3, &pattern_len);
    if (pattern_len > SL_ROUTING_KEY_MAX)
        sl_dsl_error(L, b, "bind: the pattern is %zu bytes (at most %d)", pattern_len,
                     SL_ROUTING_KEY_MAX);
    sl_declaration_t *d = declaration_append(L, b, SL_DECLARE_BIND);
    d->name = sl_vm_need(L, sl_strdup(exchange));
    d->queue = sl_vm_need(L, sl_strdup(queue));
    d->pattern = sl_vm_need(L, sl_malloc(pattern_len + 1));
    memcpy(d->pattern, pattern, pattern_len + 1);
    d->pattern_len = pattern_len;
    binding_args(L, b, d);
    check_binding(L, b, d);
    return sl_dsl_leave(b, 0);
}

/* ---- :route ------------------------------------------------------------------ */

/* The key option at 3: a field name (copied into op) or a function. */
static void route_key(lua_State *L, sl_builder_t *b, sl_op_t *op)
{
    char text[64];
    size_t n;
    int type = sl_dsl_option(L, 3, "key");
    if (type == LUA_TFUNCTION) {
        op->route_key_fn = luaL_ref(L, LUA_REGISTRYINDEX);
        return;
    }
    if (type == LUA_TSTRING) {
        const char *field = lua_tolstring(L, -1, &n);
        if (n < 1 || n > FIELD_MAX || strlen(field) != n)
            sl_dsl_error(L, b,
                         "route: a key field name must be 1 to %d bytes without NUL, got "
                         "%zu bytes",
                         FIELD_MAX, n);
        op->route_key_field = sl_vm_need(L, sl_strdup(field));
    } else if (type != LUA_TNIL) {
        sl_dsl_error(L, b, "option 'key' for route must be a field name or a function, got %s",
                     sl_vm_describe(L, -1, text, sizeof text));
    }
    lua_pop(L, 1);
}

/* A function option at 3: its reference, or SL_NO_FUNCTION. */
static int route_function(lua_State *L, sl_builder_t *b, const char *name)
{
    if (!sl_dsl_option_function(L, b, 3, "route", name))
        return SL_NO_FUNCTION;
    sl_dsl_option(L, 3, name);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* stream:route(exchange, {key =, priority =, headers =}) */
static int stream_route(lua_State *L)
{
    static const char *const names[] = {"headers", "key", "priority", NULL};
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    sl_dsl_stream_t *self = sl_dsl_check_self(L, b, "route", 0);
    check_arguments(L, b, 3, "stream:route(exchange, {key =, priority =, headers =})");
    if (lua_type(L, 2) != LUA_TSTRING)
        sl_dsl_error(L, b, "route expects an exchange name ('' for the default exchange), got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    const char *exchange = lua_rawlen(L, 2) ? check_name(L, b, 2, "route", "exchange") : "";
    sl_dsl_check_options(L, b, 3, "route", names);
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_ROUTE, &input, 1);
    op->exchange = sl_vm_need(L, sl_strdup(exchange));
    route_key(L, b, op);
    op->route_priority_fn = route_function(L, b, "priority");
    op->route_headers_fn = route_function(L, b, "headers");
    sl_dsl_push_stream(L, op->id, 0, SL_DSL_SINK_ROUTE);
    return sl_dsl_leave(b, 1);
}

const luaL_Reg sl_dsl_route_functions[] = {
    {"exchange", dsl_exchange},
    {"queue", dsl_queue},
    {"bind", dsl_bind},
    {NULL, NULL},
};

const luaL_Reg sl_dsl_route_methods[] = {
    {"route", stream_route},
    {NULL, NULL},
};

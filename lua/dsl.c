/*
 * dsl.c - require("sluice"): the functions a pipeline script builds its
 * DAG with.
 *
 * A stream is a full userdata {op, port, sink} with a per-compile metatable;
 * its methods are closures over two upvalues, the compile's token and that
 * metatable (which is how a stream argument is recognised). Each DSL call
 * checks everything first, then appends one op to the builder's DAG, so op
 * ids follow the order of the DSL calls: the only source of the DAG's shape
 * is the script's control flow (see "Determinism" in lua.h).
 *
 * A sink is a stream userdata with sink set (by :to(), :route() or
 * :features()); its __index refuses every operator, which is how
 * "x:to('t'):map(f)" is caught on the right line. A windowed stream (from
 * :window(), see dsl_aggregate.c) is refused the same way every operator
 * but :aggregate.
 *
 * Lines of chained calls: Lua 5.4 reports every call of a chain spread over
 * several lines at the line where the chain starts, but the lookup of
 * ":filter" (OP_SELF, which runs __index) carries its own line. So __index
 * notes that line in the stream, and the method, finding it in its self,
 * uses it for the op's where and its error messages.
 */
#include "lua/options.h"

#include <lua5.4/lauxlib.h>

#include <stdlib.h>
#include <string.h>

#define TOKEN       SL_DSL_TOKEN
#define STREAM_META SL_DSL_STREAM_META
#define METHODS     lua_upvalueindex(3)

typedef sl_dsl_stream_t stream_t;

static const char operator_list[] = "filter, map, flat_map, key_by, branch, peek, window, "
                                    "aggregate, join, to, route, features";

static void caller_where(lua_State *L, const sl_builder_t *b, char *out)
{
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(out, SL_WHERE_MAX, "%s:%d", ar.short_src, ar.currentline);
    else
        snprintf(out, SL_WHERE_MAX, "%s", b->chunkname);
}

void sl_dsl_where(lua_State *L, const sl_builder_t *b, char *out)
{
    if (b->call_where[0])
        memcpy(out, b->call_where, SL_WHERE_MAX);
    else
        caller_where(L, b, out);
}

sl_builder_t *sl_dsl_builder(lua_State *L)
{
    sl_vm_t *vm = sl_vm_of(L);
    const uint64_t *token = lua_touserdata(L, TOKEN);
    if (!vm->compiling || vm->compiling->serial != *token)
        luaL_error(L, "the sluice DSL works only while the script is compiled");
    return vm->compiling;
}

sl_builder_t *sl_dsl_enter(lua_State *L)
{
    sl_builder_t *b = sl_dsl_builder(L);
    if (b->busy)
        sl_dsl_error(L, b, "the sluice DSL call at %s failed and its error was caught",
                     b->busy_where);
    b->busy = 1;
    b->call_where[0] = '\0';
    sl_dsl_where(L, b, b->busy_where);
    return b;
}

int sl_dsl_leave(sl_builder_t *b, int results)
{
    b->busy = 0;
    b->call_where[0] = '\0';
    return results;
}

stream_t *sl_dsl_to_stream(lua_State *L, int idx)
{
    stream_t *s = lua_touserdata(L, idx);
    if (!s || !lua_getmetatable(L, idx))
        return NULL;
    int ours = lua_rawequal(L, -1, STREAM_META);
    lua_pop(L, 1);
    return ours ? s : NULL;
}

stream_t *sl_dsl_push_stream(lua_State *L, int op, int port, int sink)
{
    stream_t *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->op = op;
    s->port = port;
    s->sink = sink;
    lua_pushvalue(L, STREAM_META);
    lua_setmetatable(L, -2);
    return s;
}

const char *sl_dsl_sink_name(int sink)
{
    if (sink == SL_DSL_SINK_FEATURES)
        return ":features()";
    return sink == SL_DSL_SINK_ROUTE ? ":route()" : ":to()";
}

/* Raises unless method (quoted as `what` in the message) may follow s: no
 * method after a sink, only those ok allows on a windowed stream or a
 * table (sl_dsl_check_self's flags). */
static void check_method(lua_State *L, sl_builder_t *b, const stream_t *s, const char *what, int ok)
{
    if (s->sink)
        sl_dsl_error(L, b, "%s after %s: a sink ends its stream", what, sl_dsl_sink_name(s->sink));
    if (s->window && !(ok & SL_DSL_WINDOWED_OK))
        sl_dsl_error(L, b, "%s after :window(): a windowed stream has only :aggregate{...}", what);
    if (s->table && !(ok & SL_DSL_TABLE_OK))
        sl_dsl_error(L, b,
                     "%s on a table: a table has :join, :to and :stream (call :stream() for its "
                     "changes as a stream)",
                     what);
}

stream_t *sl_dsl_check_self(lua_State *L, sl_builder_t *b, const char *method, int ok)
{
    char text[64];
    stream_t *self = sl_dsl_to_stream(L, 1);
    if (!self)
        sl_dsl_error(L, b, "%s must be called on a stream as stream:%s(...), got %s", method,
                     method, sl_vm_describe(L, 1, text, sizeof text));
    memcpy(b->call_where, self->where, SL_WHERE_MAX);
    self->where[0] = '\0';
    snprintf(text, sizeof text, "'%s'", method);
    check_method(L, b, self, text, ok);
    return self;
}

/* Everything op_append allocates belongs to the DAG before the op is
 * counted, so an error here leaves nothing behind. */
sl_op_t *sl_dsl_op_append(lua_State *L, sl_builder_t *b, sl_op_kind_t kind,
                          const sl_op_input_t *inputs, int input_count)
{
    sl_dag_t *dag = b->dag;
    if (dag->op_count == b->op_capacity) {
        int capacity = b->op_capacity ? 2 * b->op_capacity : 8;
        dag->ops = sl_vm_need(L, sl_realloc(dag->ops, (size_t)capacity * sizeof *dag->ops));
        b->op_capacity = capacity;
    }
    sl_op_input_t *copy = sl_vm_need(L, sl_calloc((size_t)input_count, sizeof *copy));
    for (int i = 0; i < input_count; i++)
        copy[i] = inputs[i];
    sl_op_t *op = &dag->ops[dag->op_count];
    memset(op, 0, sizeof *op);
    op->id = dag->op_count++;
    op->kind = kind;
    op->inputs = copy;
    op->input_count = input_count;
    op->fn = SL_NO_FUNCTION;
    op->route_key_fn = op->route_priority_fn = op->route_headers_fn = SL_NO_FUNCTION;
    op->format = SL_FORMAT_TOPIC;
    sl_dsl_where(L, b, op->where);
    return op;
}

/* stream:filter(fn), :map(fn), :flat_map(fn), :peek(fn) */
static int function_op(lua_State *L, sl_op_kind_t kind)
{
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    const char *name = sl_op_kind_name(kind);
    stream_t *self = sl_dsl_check_self(L, b, name, 0);
    if (!lua_isfunction(L, 2))
        sl_dsl_error(L, b, "%s expects a function, got %s", name,
                     sl_vm_describe(L, 2, text, sizeof text));
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, kind, &input, 1);
    op->fn = sl_dsl_ref(L, 2);
    if (kind == SL_OP_FILTER || kind == SL_OP_MAP)
        op->native = sl_native_compile(L, 2, 1);
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

static int stream_filter(lua_State *L)
{
    return function_op(L, SL_OP_FILTER);
}

static int stream_map(lua_State *L)
{
    return function_op(L, SL_OP_MAP);
}

static int stream_flat_map(lua_State *L)
{
    return function_op(L, SL_OP_FLAT_MAP);
}

static int stream_peek(lua_State *L)
{
    return function_op(L, SL_OP_PEEK);
}

/* stream:key_by(fn | "field") */
static int stream_key_by(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    stream_t *self = sl_dsl_check_self(L, b, "key_by", 0);
    int by_field = lua_type(L, 2) == LUA_TSTRING && lua_rawlen(L, 2) > 0;
    if (!by_field && !lua_isfunction(L, 2))
        sl_dsl_error(L, b, "key_by expects a function or a field name, got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_KEY_BY, &input, 1);
    if (by_field) {
        op->field = sl_vm_need(L, sl_strdup(lua_tostring(L, 2)));
    } else {
        op->fn = sl_dsl_ref(L, 2);
        op->native_key = sl_native_key_compile(L, 2);
    }
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

/* stream:to(topic, {create =, partitions =}) */
static int stream_to(lua_State *L)
{
    static const char *const names[] = {"create", "partitions", NULL};
    sl_builder_t *b = sl_dsl_enter(L);
    stream_t *self = sl_dsl_check_self(L, b, "to", SL_DSL_TABLE_OK);
    const char *topic = sl_dsl_check_topic(L, b, 2, "to");
    sl_dsl_check_options(L, b, 3, "to", names);
    int create = sl_dsl_option_boolean(L, b, 3, "to", "create");
    int32_t partitions = sl_dsl_option_count(L, b, 3, "to", "partitions");
    if (partitions && !create)
        sl_dsl_error(L, b, "option 'partitions' for to needs create = true");
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_TO, &input, 1);
    op->topic = sl_vm_need(L, sl_strdup(topic));
    op->create = create;
    op->partitions = partitions;
    sl_dsl_push_stream(L, op->id, 0, SL_DSL_SINK_TO);
    return sl_dsl_leave(b, 1);
}

/* Checks a branch table: string keys, function values, at least one. */
static int check_branches(lua_State *L, sl_builder_t *b)
{
    char text[64];
    int count = 0;
    if (!lua_istable(L, 2))
        sl_dsl_error(L, b, "branch expects a table of name = predicate, got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_rawlen(L, -2) == 0)
            sl_dsl_error(L, b, "branch names must be non-empty strings, got %s",
                         sl_vm_describe(L, -2, text, sizeof text));
        if (!lua_isfunction(L, -1))
            sl_dsl_error(L, b, "branch '%s' must be a function, got %s", lua_tostring(L, -2),
                         sl_vm_describe(L, -1, text, sizeof text));
        lua_pop(L, 1);
        count++;
    }
    if (count == 0)
        sl_dsl_error(L, b, "branch needs at least one name = predicate");
    return count;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fills a BRANCH op with the names of the table at 2, sorted, and their
 * predicates. */
static void fill_branches(lua_State *L, sl_op_t *op, int count)
{
    op->branch_names = sl_vm_need(L, sl_calloc((size_t)count, sizeof *op->branch_names));
    op->branch_fns = sl_vm_need(L, sl_calloc((size_t)count, sizeof *op->branch_fns));
    for (int i = 0; i < count; i++)
        op->branch_fns[i] = SL_NO_FUNCTION;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pop(L, 1);
        op->branch_names[op->branch_count] = sl_vm_need(L, sl_strdup(lua_tostring(L, -1)));
        op->branch_count++;
    }
    qsort(op->branch_names, (size_t)count, sizeof *op->branch_names, by_name);
    for (int i = 0; i < count; i++) {
        lua_pushstring(L, op->branch_names[i]);
        lua_rawget(L, 2);
        op->branch_fns[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

/* stream:branch{name = predicate, ...} -> {name = stream, ...} */
static int stream_branch(lua_State *L)
{
    sl_builder_t *b = sl_dsl_enter(L);
    stream_t *self = sl_dsl_check_self(L, b, "branch", 0);
    int count = check_branches(L, b);
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_BRANCH, &input, 1);
    fill_branches(L, op, count);
    lua_createtable(L, 0, count);
    for (int i = 0; i < count; i++) {
        sl_dsl_push_stream(L, op->id, i, 0);
        lua_setfield(L, -2, op->branch_names[i]);
    }
    return sl_dsl_leave(b, 1);
}

/* s.merge(a, b, ...) */
static int dsl_merge(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    int n = lua_gettop(L);
    if (n == 0)
        sl_dsl_error(L, b, "merge needs at least one stream");
    sl_op_input_t *inputs = lua_newuserdatauv(L, (size_t)n * sizeof *inputs, 0);
    for (int i = 0; i < n; i++) {
        stream_t *s = sl_dsl_to_stream(L, i + 1);
        if (s && s->sink)
            sl_dsl_error(L, b, "merge argument %d is not a stream, got the sink of %s", i + 1,
                         sl_dsl_sink_name(s->sink));
        if (!s)
            sl_dsl_error(L, b, "merge argument %d is not a stream, got %s", i + 1,
                         sl_vm_describe(L, i + 1, text, sizeof text));
        if (s->window)
            sl_dsl_error(L, b, "merge argument %d is a windowed stream: aggregate it first", i + 1);
        if (s->table)
            sl_dsl_error(L, b, "merge argument %d is a table: merge its :stream()", i + 1);
        inputs[i] = (sl_op_input_t){s->op, s->port};
        for (int j = 0; j < i; j++)
            if (inputs[j].op == s->op && inputs[j].port == s->port)
                sl_dsl_error(L, b, "merge argument %d repeats argument %d", i + 1, j + 1);
    }
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_MERGE, inputs, n);
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

const sl_op_t *sl_dsl_source_of(const sl_dag_t *dag, const char *topic)
{
    for (int i = 0; i < dag->op_count; i++)
        if ((dag->ops[i].kind == SL_OP_SOURCE || dag->ops[i].kind == SL_OP_TABLE) &&
            strcmp(dag->ops[i].topic, topic) == 0)
            return &dag->ops[i];
    return NULL;
}

void sl_dsl_check_source_unique(lua_State *L, sl_builder_t *b, const char *topic)
{
    const sl_op_t *op = sl_dsl_source_of(b->dag, topic);
    if (op)
        sl_dsl_error(L, b, "topic '%s' is already read by the %s at %s: use that one", topic,
                     sl_op_kind_name(op->kind), op->where);
}

const char *sl_dsl_store_option(lua_State *L, sl_builder_t *b, int idx, const char *what,
                                const char *prefix)
{
    char text[64];
    int type = sl_dsl_option(L, idx, "store");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushfstring(L, "%s%d", prefix, b->dag->op_count);
    } else if (!sl_dsl_name_ok(L, -1, SL_OP_STORE_NAME_MAX)) {
        sl_dsl_error(L, b,
                     "option 'store' for %s must be 1 to %d letters, digits, '_' or '-', got %s",
                     what, SL_OP_STORE_NAME_MAX, sl_vm_describe(L, -1, text, sizeof text));
    }
    const char *store = lua_tostring(L, -1);
    for (int i = 0; i < b->dag->op_count; i++) {
        const sl_op_t *op = &b->dag->ops[i];
        if (!op->store || strcmp(op->store, store) != 0)
            continue;
        if (type == LUA_TNIL)
            sl_dsl_error(L, b,
                         "store '%s' (this %s's default name) is already used by the %s at %s: "
                         "give this one store = \"...\"",
                         store, what, sl_op_kind_name(op->kind), op->where);
        sl_dsl_error(L, b, "store '%s' is already used by the %s at %s", store,
                     sl_op_kind_name(op->kind), op->where);
    }
    return store;
}

/* s.stream(topic, {partitions =, format =, timestamp =}) */
int sl_dsl_format_option(lua_State *L, sl_builder_t *b, int idx, const char *what)
{
    static const char *const formats[] = {"json", "raw", NULL};
    int format = sl_dsl_option_choice(L, b, idx, what, "format", formats, SL_FORMAT_TOPIC);
    return format == 0 ? SL_FORMAT_JSON : format == 1 ? SL_FORMAT_RAW : SL_FORMAT_TOPIC;
}

static int dsl_stream(lua_State *L)
{
    static const char *const names[] = {"partitions", "format", "timestamp", NULL};
    sl_builder_t *b = sl_dsl_enter(L);
    const char *topic = sl_dsl_check_topic(L, b, 1, "stream");
    sl_dsl_check_source_unique(L, b, topic);
    sl_dsl_check_options(L, b, 2, "stream", names);
    int32_t partitions = sl_dsl_option_count(L, b, 2, "stream", "partitions");
    int format = sl_dsl_format_option(L, b, 2, "stream");
    int has_timestamp = sl_dsl_option_function(L, b, 2, "stream", "timestamp");
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_SOURCE, NULL, 0);
    op->topic = sl_vm_need(L, sl_strdup(topic));
    op->partitions = partitions;
    op->format = format;
    if (has_timestamp) {
        sl_dsl_option(L, 2, "timestamp");
        op->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

/* The pipeline's name (checked) or NULL; the string stays on the stack. */
static const char *pipeline_name(lua_State *L, sl_builder_t *b)
{
    char text[64];
    int type = sl_dsl_option(L, 1, "name");
    if (type == LUA_TNIL)
        return NULL;
    if (type != LUA_TSTRING)
        sl_dsl_error(L, b, "option 'name' for pipeline must be a string, got %s",
                     sl_vm_describe(L, -1, text, sizeof text));
    if (!sl_dsl_name_ok(L, -1, 128))
        sl_dsl_error(L, b, "pipeline name '%s' must be 1 to 128 letters, digits, '_' or '-'",
                     lua_tostring(L, -1));
    return lua_tostring(L, -1);
}

static sl_processing_t processing(lua_State *L, sl_builder_t *b)
{
    static const char *const modes[] = {"at_least_once", "exactly_once", NULL};
    static const sl_processing_t values[] = {SL_PROCESSING_AT_LEAST_ONCE,
                                             SL_PROCESSING_EXACTLY_ONCE};
    int mode = sl_dsl_option_choice(L, b, 1, "pipeline", "processing", modes, -1);
    return mode < 0 ? SL_PROCESSING_DEFAULT : values[mode];
}

/* s.pipeline{name =, on_error =, processing =, commit_interval =, flush_interval =} */
static int dsl_pipeline(lua_State *L)
{
    static const char *const names[] = {
        "name", "on_error", "processing", "commit_interval", "flush_interval", NULL};
    static const char *const policies[] = {"stop", "skip", "dead_letter", NULL};
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    if (!lua_istable(L, 1))
        sl_dsl_error(L, b, "pipeline expects a table of options, got %s",
                     sl_vm_describe(L, 1, text, sizeof text));
    if (b->pipeline_where[0])
        sl_dsl_error(L, b, "pipeline options are set twice (first at %s)", b->pipeline_where);
    sl_dsl_check_options(L, b, 1, "pipeline", names);
    const char *name = pipeline_name(L, b);
    int policy = sl_dsl_option_choice(L, b, 1, "pipeline", "on_error", policies, 0);
    sl_processing_t mode = processing(L, b);
    int64_t interval =
        sl_dsl_option_duration(L, b, 1, "pipeline", "commit_interval", SL_COMMIT_INTERVAL_DEFAULT);
    if (interval < 1 || interval > SL_COMMIT_INTERVAL_MAX)
        sl_dsl_error(L, b, "commit_interval must be 1 ms to 1 h, got %lld ms", (long long)interval);
    b->dag->commit_interval = interval;
    interval =
        sl_dsl_option_duration(L, b, 1, "pipeline", "flush_interval", SL_FLUSH_INTERVAL_DEFAULT);
    if (interval < 0 || interval > SL_FLUSH_INTERVAL_MAX)
        sl_dsl_error(L, b, "flush_interval must be 0 to 1 h, got %lld ms", (long long)interval);
    b->dag->flush_interval = interval;
    if (name)
        b->dag->name = sl_vm_need(L, sl_strdup(name));
    b->dag->on_error = (sl_on_error_t)policy;
    b->dag->processing = mode;
    sl_dsl_where(L, b, b->pipeline_where);
    return sl_dsl_leave(b, 0);
}

/* __index of streams: the operators, or an error naming the line. */
static int stream_index(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_builder(L);
    stream_t *s = lua_touserdata(L, 1);
    sl_vm_describe(L, 2, text, sizeof text);
    const char *name = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
    int ok =
        (strcmp(name, "aggregate") == 0 ? SL_DSL_WINDOWED_OK : 0) |
        (!strcmp(name, "join") || !strcmp(name, "to") || !strcmp(name, "stream") ? SL_DSL_TABLE_OK
                                                                                 : 0);
    check_method(L, b, s, text, ok);
    if (!s->table && strcmp(name, "stream") == 0)
        sl_dsl_error(L, b, "%s on a stream: only tables have :stream()", text);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, METHODS) == LUA_TNIL)
        sl_dsl_error(L, b, "streams have no operator %s (they have %s)", text, operator_list);
    caller_where(L, b, s->where);
    return 1;
}

/* __index of the module: unknown names are errors, not nil. */
static int module_index(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_builder(L);
    sl_dsl_error(L, b,
                 "sluice has no %s (it has pipeline, stream, table, merge, null, tumbling, "
                 "hopping, session, count, sum, min, max, avg, last, distinct, reduce, exchange, "
                 "queue, bind)",
                 sl_vm_describe(L, 2, text, sizeof text));
}

/* Sets the functions in fns into the table at the top as closures over
 * the token and stream metatable at idx token, token + 1. */
static void set_closures(lua_State *L, const luaL_Reg *fns, int token)
{
    for (; fns->name; fns++) {
        lua_pushvalue(L, token);
        lua_pushvalue(L, token + 1);
        lua_pushcclosure(L, fns->func, 2);
        lua_setfield(L, -2, fns->name);
    }
}

static void push_stream_metatable(lua_State *L, int token)
{
    static const luaL_Reg methods[] = {
        {"filter", stream_filter},
        {"map", stream_map},
        {"flat_map", stream_flat_map},
        {"key_by", stream_key_by},
        {"branch", stream_branch},
        {"peek", stream_peek},
        {"to", stream_to},
        {NULL, NULL},
    };
    lua_newtable(L);
    set_closures(L, methods, token);
    set_closures(L, sl_dsl_aggregate_methods, token);
    set_closures(L, sl_dsl_route_methods, token);
    set_closures(L, sl_dsl_features_methods, token);
    set_closures(L, sl_dsl_join_methods, token);
    lua_pushvalue(L, token);
    lua_pushvalue(L, token + 1);
    lua_rotate(L, -3, 2);
    lua_pushcclosure(L, stream_index, 3);
    lua_setfield(L, token + 1, "__index");
    lua_pushliteral(L, "sluice.stream");
    lua_setfield(L, token + 1, "__metatable");
}

/* Sets a new metatable named name as user value n of the token at idx. */
static void set_value_metatable(lua_State *L, int token, int n, const char *name)
{
    lua_newtable(L);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
    lua_setiuservalue(L, token, n);
}

void sl_dsl_push_module(lua_State *L, sl_builder_t *b, int encode)
{
    static const luaL_Reg functions[] = {
        {"pipeline", dsl_pipeline}, {"stream", dsl_stream}, {"merge", dsl_merge}, {NULL, NULL}};
    uint64_t *token = lua_newuserdatauv(L, sizeof *token, SL_DSL_USER_VALUES);
    *token = b->serial;
    int at = lua_gettop(L);
    lua_pushvalue(L, encode);
    lua_setiuservalue(L, at, SL_DSL_ENCODE);
    set_value_metatable(L, at, SL_DSL_WINDOW_META, "sluice.window");
    set_value_metatable(L, at, SL_DSL_MEMBER_META, "sluice.aggregate member");
    lua_newtable(L);
    push_stream_metatable(L, at);
    lua_newtable(L);
    set_closures(L, functions, at);
    set_closures(L, sl_dsl_aggregate_functions, at);
    set_closures(L, sl_dsl_route_functions, at);
    set_closures(L, sl_dsl_join_functions, at);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_newtable(L);
    lua_pushvalue(L, at);
    lua_pushvalue(L, at + 1);
    lua_pushcclosure(L, module_index, 2);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_replace(L, at);
    lua_settop(L, at);
}

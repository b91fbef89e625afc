/*
 * compile.c - from a script to a DAG, and the DAG's lifecycle.
 *
 * sl_vm_compile() runs one protected call: build the script's sluice
 * module, json module and globals, load the text (never bytecode), run it
 * under the instruction budget, then check the whole DAG (every window is
 * aggregated, a sink exists, every stream is used, no sink or late topic
 * writes a topic the pipeline reads). The
 * builder, and the DAG in it, belong to sl_vm_compile()'s frame, so an
 * error anywhere just frees them; registry references taken for the user
 * functions are released by the same code that frees a finished DAG.
 */
#include "lua/dsl.h"

#include <lua5.4/lauxlib.h>

#include <errno.h>
#include <string.h>

typedef struct compile {
    sl_builder_t *builder;
    const char *source;
    size_t len;
} compile_t;

static const char *const kind_names[] = {
    "stream", "filter", "map",       "flat_map", "key_by",   "branch", "merge",
    "peek",   "to",     "aggregate", "route",    "features", "table",  "join",
};

const char *sl_op_kind_name(sl_op_kind_t kind)
{
    return kind_names[kind];
}

int sl_op_kind_is_entry(sl_op_kind_t kind)
{
    return kind == SL_OP_SOURCE || kind == SL_OP_KEY_BY || kind == SL_OP_TABLE;
}

static void check_windows_aggregated(lua_State *L, const sl_builder_t *b)
{
    for (int i = 0; i < b->window_count; i++)
        if (!b->windows[i].aggregated)
            sl_vm_raise(L,
                        "%s: the windowed stream from :window() is never aggregated: follow it "
                        "with :aggregate{...}",
                        b->windows[i].where);
}

static int is_sink(const sl_op_t *op)
{
    return op->kind == SL_OP_TO || op->kind == SL_OP_ROUTE || op->kind == SL_OP_FEATURES;
}

/* A table or an aggregate is an output too: a store queried over RESP. */
static int is_store(const sl_op_t *op)
{
    return op->kind == SL_OP_TABLE || op->kind == SL_OP_AGGREGATE ||
           (op->kind == SL_OP_JOIN && op->join_kind == SL_JOIN_TABLE_TABLE);
}

static void check_has_sink(lua_State *L, const sl_builder_t *b)
{
    for (int i = 0; i < b->dag->op_count; i++)
        if (is_sink(&b->dag->ops[i]) || is_store(&b->dag->ops[i]))
            return;
    sl_vm_raise(L,
                "%s: the pipeline has no sink: end a stream with :to(topic), "
                ":route(exchange) or :aggregate{...}",
                b->chunkname);
}

/* Every op but a sink or a branch (whose outputs may go unused on purpose)
 * must feed another op. */
static void check_all_used(lua_State *L, const sl_builder_t *b)
{
    const sl_dag_t *dag = b->dag;
    unsigned char *used = lua_newuserdatauv(L, (size_t)dag->op_count + 1, 0);
    memset(used, 0, (size_t)dag->op_count);
    for (int i = 0; i < dag->op_count; i++)
        for (int j = 0; j < dag->ops[i].input_count; j++)
            used[dag->ops[i].inputs[j].op] = 1;
    for (int i = 0; i < dag->op_count; i++) {
        const sl_op_t *op = &dag->ops[i];
        if (!used[i] && !is_sink(op) && op->kind != SL_OP_BRANCH && !is_store(op))
            sl_vm_raise(L,
                        "%s: the stream from %s is never used: end it with :to(topic) or "
                        ":route(exchange)",
                        op->where, sl_op_kind_name(op->kind));
    }
    lua_pop(L, 1);
}

/* A sink or late topic writing a topic the pipeline reads would feed its
 * own output back in through the log. */
static void check_no_cycle(lua_State *L, const sl_builder_t *b)
{
    const sl_dag_t *dag = b->dag;
    for (int i = 0; i < dag->op_count; i++) {
        const sl_op_t *op = &dag->ops[i];
        if (op->kind == SL_OP_TO && sl_dsl_source_of(dag, op->topic))
            sl_vm_raise(L, "%s: to('%s') writes a topic this pipeline reads (a cycle)", op->where,
                        op->topic);
        if (op->kind == SL_OP_FEATURES && sl_dsl_source_of(dag, op->view))
            sl_vm_raise(L,
                        "%s: features('%s') writes its vectors to topic '%s', which this "
                        "pipeline reads (a cycle)",
                        op->where, op->view, op->view);
        if (op->late_topic && sl_dsl_source_of(dag, op->late_topic))
            sl_vm_raise(L, "%s: late = '%s' writes a topic this pipeline reads (a cycle)",
                        op->where, op->late_topic);
    }
}

/* ---- projections --------------------------------------------------------- *
 *
 * Which top-level fields of r.value the ops after a point can read: a set
 * of names, or "any". Only functions run without Lua (native.c) and field
 * names say which; a sink, a route, a Lua function, a dead-letter topic or
 * a late topic can see the whole value. A set is written as each name
 * followed by ',', in byte order (names holding ',' or bytes JSON escapes,
 * and the empty name, make it "any").
 */
typedef struct reads_set {
    int any;
    int count;
    const char *names[SL_OP_KEEP_MAX];
    size_t lens[SL_OP_KEEP_MAX];
} reads_set_t;

static void reads_add(reads_set_t *r, const char *name, size_t len)
{
    if (r->any)
        return;
    if (len == 0 || memchr(name, ',', len) || !sl_json_plain(name, len)) {
        r->any = 1;
        return;
    }
    for (int i = 0; i < r->count; i++)
        if (r->lens[i] == len && memcmp(r->names[i], name, len) == 0)
            return;
    if (r->count == SL_OP_KEEP_MAX) {
        r->any = 1;
        return;
    }
    r->names[r->count] = name;
    r->lens[r->count++] = len;
}

/* The fields function n reads of its parameter p, into r. */
static void reads_native(reads_set_t *r, const sl_native_t *n, int p)
{
    const char *names[SL_OP_KEEP_MAX];
    size_t lens[SL_OP_KEEP_MAX];
    int count = n ? sl_native_reads(n, p, names, lens, SL_OP_KEEP_MAX) : -1;
    if (count < 0)
        r->any = 1;
    for (int i = 0; i < count; i++)
        reads_add(r, names[i], lens[i]);
}

static void reads_of_output(const sl_dag_t *dag, int op, int port, reads_set_t *r);

/* What op reads of the records coming in at its input `input`, and what
 * the ops after it read of them when it passes them on. */
static void reads_of_input(const sl_dag_t *dag, const sl_op_t *op, int input, reads_set_t *r)
{
    switch (op->kind) {
    case SL_OP_FILTER:
        reads_native(r, op->native, 0);
        reads_of_output(dag, op->id, 0, r);
        break;
    case SL_OP_MAP:
        reads_native(r, op->native, 0);
        break;
    case SL_OP_MERGE:
        reads_of_output(dag, op->id, 0, r);
        break;
    case SL_OP_AGGREGATE:
        r->any |= op->late_topic != NULL;
        for (int i = 0; i < op->agg_count; i++) {
            if (op->aggs[i].fn != SL_NO_FUNCTION)
                r->any = 1;
            else if (op->aggs[i].field)
                reads_add(r, op->aggs[i].field, strlen(op->aggs[i].field));
        }
        break;
    case SL_OP_JOIN:
        if (op->join_kind == SL_JOIN_TABLE_TABLE)
            r->any = 1;
        else
            reads_native(r, op->native, input);
        break;
    default: /* sinks, key_by, branch, peek, flat_map: the whole value */
        r->any = 1;
    }
}

static void reads_of_output(const sl_dag_t *dag, int op, int port, reads_set_t *r)
{
    for (int i = op + 1; i < dag->op_count && !r->any; i++)
        for (int k = 0; k < dag->ops[i].input_count; k++)
            if (dag->ops[i].inputs[k].op == op && dag->ops[i].inputs[k].port == port)
                reads_of_input(dag, &dag->ops[i], k, r);
}

/* Byte order of names a and b of the set. */
static int name_before(const reads_set_t *r, int a, int b)
{
    size_t n = r->lens[a] < r->lens[b] ? r->lens[a] : r->lens[b];
    int c = memcmp(r->names[a], r->names[b], n);
    return c < 0 || (c == 0 && r->lens[a] < r->lens[b]);
}

/* The set as text ("a,b,"), NULL for any; raises on no memory. */
static char *reads_text(lua_State *L, const reads_set_t *r)
{
    if (r->any)
        return NULL;
    int order[SL_OP_KEEP_MAX];
    size_t total = 1;
    for (int i = 0; i < r->count; i++) { /* insertion sort: a few names */
        int at = i;
        while (at > 0 && name_before(r, i, order[at - 1])) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = i;
        total += r->lens[i] + 1;
    }
    char *text = sl_vm_need(L, sl_malloc(total)), *at = text;
    for (int i = 0; i < r->count; i++) {
        memcpy(at, r->names[order[i]], r->lens[order[i]]);
        at += r->lens[order[i]];
        *at++ = ',';
    }
    *at = '\0';
    return text;
}

/* Sets each key_by's keep and each stream-stream join's join_reads. */
static void find_projections(lua_State *L, sl_dag_t *dag)
{
    for (int i = 0; i < dag->op_count; i++) {
        sl_op_t *op = &dag->ops[i];
        reads_set_t r = {.any = dag->on_error == SL_ON_ERROR_DEAD_LETTER};
        if (op->kind == SL_OP_KEY_BY) {
            reads_of_output(dag, op->id, 0, &r);
            op->keep = reads_text(L, &r);
        } else if (op->kind == SL_OP_JOIN && op->join_kind == SL_JOIN_STREAM_STREAM) {
            for (int side = 0; side < 2; side++) { /* what its buffer keeps */
                reads_set_t s = {0};
                reads_native(&s, op->native, side);
                op->join_reads[side] = reads_text(L, &s);
            }
        }
    }
}

static int compile_protected(lua_State *L)
{
    compile_t *c = lua_touserdata(L, 1);
    sl_vm_t *vm = sl_vm_of(L);
    sl_json_push_script_module(L);
    lua_getfield(L, 2, "encode");
    sl_dsl_push_module(L, c->builder, 3);
    lua_replace(L, 3);
    lua_insert(L, 2);
    sl_sandbox_push_env(L, vm, 2, 3);
    const char *chunkname = lua_pushfstring(L, "=%s", c->builder->chunkname);
    if (luaL_loadbufferx(L, c->source, c->len, chunkname, "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, 4);
    lua_setupvalue(L, -2, 1);
    sl_vm_budget_reset(vm);
    lua_call(L, 0, 0);
    if (c->builder->error[0] || c->builder->busy)
        return 0;
    check_windows_aggregated(L, c->builder);
    check_has_sink(L, c->builder);
    check_all_used(L, c->builder);
    check_no_cycle(L, c->builder);
    find_projections(L, c->builder->dag);
    return 0;
}

/* The detail for a failed compile; every message starts with the chunk
 * name. A DSL error the script caught still wins. */
static int compile_failed(const sl_builder_t *b, int rc)
{
    const char *chunk = b->chunkname, *message = b->vm->message;
    size_t n = strlen(chunk);
    if (b->error[0])
        return sl_error_set(SL_EINVALID, "%s", b->error);
    if (rc == -ENOMEM)
        return sl_error_set(rc, "%s: out of memory", chunk);
    if (rc == 0)
        return sl_error_set(SL_EINVALID,
                            "%s: a sluice DSL call failed and the script caught "
                            "the error",
                            b->busy_where);
    if (strncmp(message, chunk, n) == 0 && message[n] == ':')
        return sl_error_set(SL_EINVALID, "%s", message);
    return sl_error_set(SL_EINVALID, "%s: %s", chunk, message);
}

int sl_vm_compile(sl_vm_t *vm, const char *chunkname, const char *source, size_t len,
                  sl_dag_t **out)
{
    sl_builder_t b = {.vm = vm, .chunkname = chunkname, .serial = ++vm->compile_serial};
    b.dag = sl_calloc(1, sizeof *b.dag);
    if (!b.dag)
        return sl_error_set(-ENOMEM, "%s: out of memory", chunkname);
    b.dag->vm = vm;
    b.dag->processing = SL_PROCESSING_DEFAULT;
    b.dag->commit_interval = SL_COMMIT_INTERVAL_DEFAULT;
    b.dag->flush_interval = SL_FLUSH_INTERVAL_DEFAULT;
    vm->dag_count++;
    compile_t c = {&b, source, len};
    vm->compiling = &b;
    int rc = sl_vm_protect(vm, compile_protected, &c);
    vm->compiling = NULL;
    sl_free(b.windows);
    if (rc || b.error[0] || b.busy) {
        rc = compile_failed(&b, rc);
        sl_dag_free(b.dag);
        return rc;
    }
    *out = b.dag;
    return 0;
}

static void release(sl_vm_t *vm, int fn)
{
    luaL_unref(vm->L, LUA_REGISTRYINDEX, fn);
}

static void op_release(sl_vm_t *vm, sl_op_t *op)
{
    release(vm, op->fn);
    for (int i = 0; i < op->agg_count; i++) {
        release(vm, op->aggs[i].fn);
        sl_free(op->aggs[i].name);
        sl_free(op->aggs[i].field);
        sl_free(op->aggs[i].init);
    }
    sl_free(op->aggs);
    sl_free(op->late_topic);
    sl_free(op->store);
    for (int i = 0; i < op->branch_count; i++) {
        release(vm, op->branch_fns[i]);
        sl_free(op->branch_names[i]);
    }
    sl_free(op->branch_names);
    sl_free(op->branch_fns);
    sl_free(op->inputs);
    sl_free(op->topic);
    sl_free(op->field);
    sl_native_free(op->native);
    sl_free(op->native_key);
    sl_free(op->keep);
    sl_free(op->join_reads[0]);
    sl_free(op->join_reads[1]);
    sl_free(op->exchange);
    sl_free(op->route_key_field);
    release(vm, op->route_key_fn);
    release(vm, op->route_priority_fn);
    release(vm, op->route_headers_fn);
    sl_free(op->view);
    sl_free(op->ranges);
    for (int i = 0; op->range_names && i < op->range_count; i++)
        sl_free(op->range_names[i]);
    sl_free(op->range_names);
    sl_free(op->has_default);
    sl_free(op->defaults);
}

static void declaration_free(sl_declaration_t *d)
{
    for (uint32_t i = 0; d->args && i < d->arg_count; i++) {
        sl_free((void *)d->args[i].name);
        sl_free((void *)d->args[i].value);
    }
    sl_free(d->args);
    sl_free(d->name);
    sl_free(d->queue);
    sl_free(d->pattern);
}

void sl_dag_free(sl_dag_t *dag)
{
    if (!dag)
        return;
    for (int i = 0; i < dag->op_count; i++)
        op_release(dag->vm, &dag->ops[i]);
    for (int i = 0; i < dag->declaration_count; i++)
        declaration_free(&dag->declarations[i]);
    sl_free(dag->declarations);
    dag->vm->dag_count--;
    sl_free(dag->ops);
    sl_free(dag->name);
    sl_free(dag);
}

static int same_string(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static int same_branches(const sl_op_t *a, const sl_op_t *b)
{
    if (a->branch_count != b->branch_count)
        return 0;
    for (int i = 0; i < a->branch_count; i++)
        if (strcmp(a->branch_names[i], b->branch_names[i]) != 0)
            return 0;
    return 1;
}

static int same_aggs(const sl_op_t *a, const sl_op_t *b)
{
    if (a->agg_count != b->agg_count)
        return 0;
    for (int i = 0; i < a->agg_count; i++) {
        const sl_agg_spec_t *x = &a->aggs[i], *y = &b->aggs[i];
        if (x->kind != y->kind || strcmp(x->name, y->name) != 0 ||
            !same_string(x->field, y->field) || !same_string(x->init, y->init) ||
            (x->fn == SL_NO_FUNCTION) != (y->fn == SL_NO_FUNCTION))
            return 0;
    }
    return 1;
}

/* The window and options of an AGGREGATE (all 0 or NULL on other ops). */
static int same_aggregate(const sl_op_t *a, const sl_op_t *b)
{
    return a->window_kind == b->window_kind && a->window_size == b->window_size &&
           a->window_advance == b->window_advance && a->window_gap == b->window_gap &&
           a->window_grace == b->window_grace && a->emit == b->emit &&
           a->retention == b->retention && same_string(a->late_topic, b->late_topic) &&
           same_string(a->store, b->store) && same_aggs(a, b);
}

static int same_function(int a, int b)
{
    return (a == SL_NO_FUNCTION) == (b == SL_NO_FUNCTION);
}

/* The exchange and routing options of a ROUTE (NULL and none elsewhere). */
static int same_route(const sl_op_t *a, const sl_op_t *b)
{
    return same_string(a->exchange, b->exchange) &&
           same_string(a->route_key_field, b->route_key_field) &&
           same_function(a->route_key_fn, b->route_key_fn) &&
           same_function(a->route_priority_fn, b->route_priority_fn) &&
           same_function(a->route_headers_fn, b->route_headers_fn);
}

/* The view, ranges and defaults of a FEATURES (NULL and none elsewhere). */
static int same_features(const sl_op_t *a, const sl_op_t *b)
{
    if (!same_string(a->view, b->view) || a->range_count != b->range_count)
        return 0;
    for (int i = 0; i < a->range_count; i++)
        if (a->ranges[i] != b->ranges[i] || strcmp(a->range_names[i], b->range_names[i]) != 0)
            return 0;
    if (a->feature_count != b->feature_count || !a->has_default != !b->has_default)
        return 0;
    for (int k = 0; a->has_default && k < a->feature_count; k++)
        if (a->has_default[k] != b->has_default[k] || a->defaults[k] != b->defaults[k])
            return 0;
    return 1;
}

static int same_op(const sl_op_t *a, const sl_op_t *b)
{
    if (a->kind != b->kind || a->input_count != b->input_count ||
        (a->fn == SL_NO_FUNCTION) != (b->fn == SL_NO_FUNCTION) || a->partitions != b->partitions ||
        a->format != b->format || a->create != b->create || strcmp(a->where, b->where) != 0 ||
        a->join_kind != b->join_kind || a->join_type != b->join_type ||
        a->join_within != b->join_within)
        return 0;
    for (int i = 0; i < a->input_count; i++)
        if (a->inputs[i].op != b->inputs[i].op || a->inputs[i].port != b->inputs[i].port)
            return 0;
    return same_string(a->topic, b->topic) && same_string(a->field, b->field) &&
           same_branches(a, b) && same_aggregate(a, b) && same_route(a, b) && same_features(a, b);
}

static int same_bytes(const uint8_t *a, int32_t a_len, const uint8_t *b, int32_t b_len)
{
    return a_len == b_len && (a_len <= 0 || memcmp(a, b, (size_t)a_len) == 0);
}

static int same_queue_options(const sl_queue_options_t *a, const sl_queue_options_t *b)
{
    return a->max_priority == b->max_priority && a->ttl_ms == b->ttl_ms &&
           a->max_length == b->max_length && a->overflow == b->overflow &&
           a->max_deliveries == b->max_deliveries && a->lease_ms == b->lease_ms &&
           a->segment_bytes == b->segment_bytes && strcmp(a->dead_letter, b->dead_letter) == 0;
}

static int same_declaration(const sl_declaration_t *a, const sl_declaration_t *b)
{
    if (a->kind != b->kind || strcmp(a->where, b->where) != 0 || !same_string(a->name, b->name) ||
        a->exchange_type != b->exchange_type ||
        !same_queue_options(&a->queue_options, &b->queue_options) ||
        !same_string(a->queue, b->queue) || !same_string(a->pattern, b->pattern) ||
        a->arg_count != b->arg_count)
        return 0;
    for (uint32_t i = 0; i < a->arg_count; i++)
        if (!same_bytes(a->args[i].name, a->args[i].name_len, b->args[i].name,
                        b->args[i].name_len) ||
            !same_bytes(a->args[i].value, a->args[i].value_len, b->args[i].value,
                        b->args[i].value_len))
            return 0;
    return 1;
}

int sl_dag_equal(const sl_dag_t *a, const sl_dag_t *b)
{
    if (!same_string(a->name, b->name) || a->on_error != b->on_error ||
        a->processing != b->processing || a->commit_interval != b->commit_interval ||
        a->flush_interval != b->flush_interval || a->op_count != b->op_count ||
        a->declaration_count != b->declaration_count)
        return 0;
    for (int i = 0; i < a->op_count; i++)
        if (!same_op(&a->ops[i], &b->ops[i]))
            return 0;
    for (int i = 0; i < a->declaration_count; i++)
        if (!same_declaration(&a->declarations[i], &b->declarations[i]))
            return 0;
    return 1;
}

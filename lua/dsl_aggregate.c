/*
 * dsl_aggregate.c - windows and aggregates in the DSL: s.tumbling(),
 * s.hopping(), s.session(), the members s.count() ... s.reduce(), and the
 * stream methods :window(spec) and :aggregate{...} (lua.h has the rules).
 *
 * Window specs and members are small full userdata with per-compile
 * metatables (user values of the token, see dsl.h), so only values this
 * compile made are accepted. A member keeps where its values come from in
 * user value 1: the field name or the function (for reduce, the reducer);
 * a reducer's initial value is encoded to JSON when s.reduce() runs and
 * kept as text in user value 2, so a value that cannot be encoded is
 * reported on the line that gave it.
 *
 * :window() adds no op. It returns a windowed stream that carries the spec
 * to :aggregate, which writes it into the AGGREGATE op, and it notes the
 * call in the builder so that compile.c can report a window that was never
 * aggregated.
 *
 * :aggregate{} reads its table in two passes so that nothing depends on
 * Lua's per-VM hash order: first the member names (every key but the four
 * options) are collected, sorted in byte order and checked in that order;
 * then the options are read by name. Members keep that sorted order in the
 * op.
 */
#include "lua/options.h"

#include <stdlib.h>
#include <string.h>

#define TOKEN SL_DSL_TOKEN

typedef sl_dsl_window_spec_t window_spec_t;

typedef struct member {
    int kind; /* SL_OP_AGG_* */
} member_t;

/* By SL_OP_AGG_* kind. */
static const char *const member_kinds[] = {
    NULL, "count", "sum", "min", "max", "avg", "last", "distinct", "reduce",
};

static const char *const option_names[] = {"emit", "late", "retention", "store", NULL};

static const char member_list[] = "s.count(), s.sum(f), s.min(f), s.max(f), s.avg(f), s.last(f), "
                                  "s.distinct(f) or s.reduce(init, fn)";

/* The value at idx if it is a userdata with user value n of the token as
 * its metatable, else NULL. */
static void *to_value(lua_State *L, int idx, int n)
{
    void *p = lua_touserdata(L, idx);
    if (!p || !lua_getmetatable(L, idx))
        return NULL;
    lua_getiuservalue(L, TOKEN, n);
    int ours = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return ours ? p : NULL;
}

/* Pushes a new userdata of size bytes with nuv user values and the token's
 * metatable n. */
static void *push_value(lua_State *L, size_t size, int nuv, int n)
{
    void *p = lua_newuserdatauv(L, size, nuv);
    memset(p, 0, size);
    lua_getiuservalue(L, TOKEN, n);
    lua_setmetatable(L, -2);
    return p;
}

/* ---- window specs ------------------------------------------------------ */

/* The grace option of the spec constructor what, its options at idx. */
static int64_t grace(lua_State *L, sl_builder_t *b, int idx, const char *what)
{
    static const char *const names[] = {"grace", NULL};
    sl_dsl_check_options(L, b, idx, what, names);
    return sl_dsl_option_duration(L, b, idx, what, "grace", 0);
}

/* A size, advance or gap at idx: a duration of at least 1 ms. */
static int64_t length(lua_State *L, sl_builder_t *b, int idx, const char *what, const char *name)
{
    char label[64];
    snprintf(label, sizeof label, "%s %s", what, name);
    int64_t ms = sl_dsl_duration(L, b, idx, label);
    if (ms < 1)
        sl_dsl_error(L, b, "%s must be at least 1 ms, got 0", label);
    return ms;
}

static void check_arguments(lua_State *L, sl_builder_t *b, int most, const char *usage)
{
    if (lua_gettop(L) > most)
        sl_dsl_error(L, b, "too many arguments: write %s", usage);
}

static void push_window(lua_State *L, window_spec_t spec)
{
    window_spec_t *w = push_value(L, sizeof *w, 0, SL_DSL_WINDOW_META);
    *w = spec;
}

/* s.tumbling(size, {grace =}) */
static int dsl_tumbling(lua_State *L)
{
    sl_builder_t *b = sl_dsl_builder(L);
    check_arguments(L, b, 2, "s.tumbling(size, {grace = d})");
    int64_t size = length(L, b, 1, "tumbling", "size");
    int64_t g = grace(L, b, 2, "tumbling");
    push_window(L, (window_spec_t){SL_OP_WINDOW_TUMBLING, size, size, 0, g});
    return 1;
}

/* s.hopping(size, advance, {grace =}) */
static int dsl_hopping(lua_State *L)
{
    sl_builder_t *b = sl_dsl_builder(L);
    check_arguments(L, b, 3, "s.hopping(size, advance, {grace = d})");
    int64_t size = length(L, b, 1, "hopping", "size");
    int64_t advance = length(L, b, 2, "hopping", "advance");
    int64_t g = grace(L, b, 3, "hopping");
    if (advance > size)
        sl_dsl_error(L, b,
                     "hopping advance %lld ms is over the size %lld ms: times between windows "
                     "would belong to none",
                     (long long)advance, (long long)size);
    if ((size + advance - 1) / advance > SL_OP_WINDOW_MAX_OVERLAP)
        sl_dsl_error(L, b,
                     "hopping size %lld ms / advance %lld ms puts each record in %lld windows "
                     "(at most %d)",
                     (long long)size, (long long)advance,
                     (long long)((size + advance - 1) / advance), SL_OP_WINDOW_MAX_OVERLAP);
    push_window(L, (window_spec_t){SL_OP_WINDOW_HOPPING, size, advance, 0, g});
    return 1;
}

/* s.session(gap, {grace =}) */
static int dsl_session(lua_State *L)
{
    sl_builder_t *b = sl_dsl_builder(L);
    check_arguments(L, b, 2, "s.session(gap, {grace = d})");
    int64_t gap = length(L, b, 1, "session", "gap");
    int64_t g = grace(L, b, 2, "session");
    push_window(L, (window_spec_t){SL_OP_WINDOW_SESSION, 0, 0, gap, g});
    return 1;
}

/* ---- members ----------------------------------------------------------- */

/* s.count() */
static int dsl_count(lua_State *L)
{
    sl_builder_t *b = sl_dsl_builder(L);
    if (lua_gettop(L) > 0)
        sl_dsl_error(L, b, "count takes no arguments: it counts records");
    member_t *m = push_value(L, sizeof *m, 2, SL_DSL_MEMBER_META);
    m->kind = SL_OP_AGG_COUNT;
    return 1;
}

/* The field name at idx for member kind name: 1 to SL_OP_AGG_FIELD_MAX
 * bytes, no NUL. */
static void check_field(lua_State *L, sl_builder_t *b, int idx, const char *name)
{
    size_t n;
    const char *field = lua_tolstring(L, idx, &n);
    if (n < 1 || n > SL_OP_AGG_FIELD_MAX || strlen(field) != n)
        sl_dsl_error(L, b, "%s: a field name must be 1 to %d bytes without NUL, got %zu bytes",
                     name, SL_OP_AGG_FIELD_MAX, n);
}

/* s.sum(f), s.min(f), s.max(f), s.avg(f), s.last(f), s.distinct(f) */
static int value_member(lua_State *L, int kind)
{
    char text[64];
    sl_builder_t *b = sl_dsl_builder(L);
    const char *name = member_kinds[kind];
    if (lua_gettop(L) > 1)
        sl_dsl_error(L, b, "%s takes one argument, a field name or a function", name);
    if (lua_type(L, 1) == LUA_TSTRING)
        check_field(L, b, 1, name);
    else if (!lua_isfunction(L, 1))
        sl_dsl_error(L, b, "%s expects a field name or a function, got %s", name,
                     sl_vm_describe(L, 1, text, sizeof text));
    member_t *m = push_value(L, sizeof *m, 2, SL_DSL_MEMBER_META);
    m->kind = kind;
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static int dsl_sum(lua_State *L)
{
    return value_member(L, SL_OP_AGG_SUM);
}

static int dsl_min(lua_State *L)
{
    return value_member(L, SL_OP_AGG_MIN);
}

static int dsl_max(lua_State *L)
{
    return value_member(L, SL_OP_AGG_MAX);
}

static int dsl_avg(lua_State *L)
{
    return value_member(L, SL_OP_AGG_AVG);
}

static int dsl_last(lua_State *L)
{
    return value_member(L, SL_OP_AGG_LAST);
}

static int dsl_distinct(lua_State *L)
{
    return value_member(L, SL_OP_AGG_DISTINCT);
}

/* Pushes the JSON text of the value at idx, written by the script's
 * json.encode (as created, whatever the script did to its module). */
static void encode_init(lua_State *L, sl_builder_t *b, int idx)
{
    lua_getiuservalue(L, TOKEN, SL_DSL_ENCODE);
    lua_pushvalue(L, idx);
    int status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_ERRMEM || sl_vm_of(L)->over_cap)
        lua_error(L);
    if (status != LUA_OK || lua_type(L, -1) != LUA_TSTRING)
        sl_dsl_error(L, b, "reduce: the initial value cannot be written as JSON (%s)",
                     status == LUA_OK || lua_type(L, -1) != LUA_TSTRING ? "no text"
                                                                        : lua_tostring(L, -1));
    if (lua_rawlen(L, -1) > SL_OP_REDUCE_INIT_MAX)
        sl_dsl_error(L, b, "reduce: the initial value's JSON is %zu bytes (at most %d)",
                     (size_t)lua_rawlen(L, -1), SL_OP_REDUCE_INIT_MAX);
}

/* s.reduce(init, fn) */
static int dsl_reduce(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_builder(L);
    check_arguments(L, b, 2, "s.reduce(init, function(acc, r) ... end)");
    if (lua_isnoneornil(L, 1))
        sl_dsl_error(L, b,
                     "reduce needs an initial value: s.reduce(init, function(acc, r) ... end) "
                     "(s.null for null)");
    if (!lua_isfunction(L, 2))
        sl_dsl_error(L, b, "reduce expects a function(acc, r) after the initial value, got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    encode_init(L, b, 1);
    member_t *m = push_value(L, sizeof *m, 2, SL_DSL_MEMBER_META);
    m->kind = SL_OP_AGG_REDUCE;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 2);
    return 1;
}

/* ---- :window(spec) ----------------------------------------------------- */

/* Notes a :window() call made at the call's line; returns its index. */
static int note_window(lua_State *L, sl_builder_t *b)
{
    if (b->window_count == b->window_capacity) {
        int capacity = b->window_capacity ? 2 * b->window_capacity : 4;
        b->windows = sl_vm_need(L, sl_realloc(b->windows, (size_t)capacity * sizeof *b->windows));
        b->window_capacity = capacity;
    }
    sl_dsl_window_t *w = &b->windows[b->window_count];
    sl_dsl_where(L, b, w->where);
    w->aggregated = 0;
    return b->window_count++;
}

/* stream:window(spec) */
static int stream_window(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    sl_dsl_stream_t *self = sl_dsl_check_self(L, b, "window", 0);
    const window_spec_t *spec = to_value(L, 2, SL_DSL_WINDOW_META);
    if (!spec)
        sl_dsl_error(L, b,
                     "window expects s.tumbling(...), s.hopping(...) or s.session(...), got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    if (lua_gettop(L) > 2)
        sl_dsl_error(L, b,
                     "window takes only the window: its options go in the spec, as in "
                     "s.tumbling('1m', {grace = '10s'})");
    int index = note_window(L, b);
    sl_dsl_stream_t *out = sl_dsl_push_stream(L, self->op, self->port, 0);
    out->window = index + 1;
    out->spec = *spec;
    return sl_dsl_leave(b, 1);
}

/* ---- :aggregate{...} --------------------------------------------------- */

typedef struct options {
    int emit;
    int64_t retention;
    const char *late;  /* NULL if none; on the stack */
    const char *store; /* on the stack */
} options_t;

static int is_option(const char *name)
{
    for (const char *const *o = option_names; *o; o++)
        if (strcmp(name, *o) == 0)
            return 1;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Counts the members of the table at 2 (every key but an option), checking
 * that every key is a string and every member name 1 to SL_OP_AGG_NAME_MAX
 * bytes without NUL. */
static int count_members(lua_State *L, sl_builder_t *b)
{
    char text[64];
    int count = 0;
    if (!lua_istable(L, 2))
        sl_dsl_error(L, b,
                     "aggregate expects a table of name = member, such as {n = s.count()}, "
                     "got %s",
                     sl_vm_describe(L, 2, text, sizeof text));
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sl_dsl_error(L, b, "aggregate: member names must be strings, got the key %s",
                         sl_vm_describe(L, -1, text, sizeof text));
        if (is_option(lua_tostring(L, -1)))
            continue;
        size_t n = lua_rawlen(L, -1);
        if (n < 1 || n > SL_OP_AGG_NAME_MAX || strlen(lua_tostring(L, -1)) != n)
            sl_dsl_error(L, b, "aggregate: member names must be 1 to %d bytes without NUL, got %s",
                         SL_OP_AGG_NAME_MAX, sl_vm_describe(L, -1, text, sizeof text));
        count++;
    }
    if (count == 0)
        sl_dsl_error(L, b, "aggregate needs at least one member, such as {n = s.count()}");
    if (count > SL_OP_AGG_MEMBERS_MAX)
        sl_dsl_error(L, b, "aggregate has %d members (at most %d)", count, SL_OP_AGG_MEMBERS_MAX);
    return count;
}

/* Checks that member `name` of the table at 2 is a member. */
static void check_member(lua_State *L, sl_builder_t *b, const char *name)
{
    char text[64];
    lua_pushstring(L, name);
    lua_rawget(L, 2);
    if (!to_value(L, -1, SL_DSL_MEMBER_META))
        sl_dsl_error(L, b, "aggregate member '%s' must be %s, got %s", name, member_list,
                     sl_vm_describe(L, -1, text, sizeof text));
    lua_pop(L, 1);
}

/* The member names of the table at 2, checked and sorted, in an array left
 * on the stack (the names are the table's keys, alive while it is). */
static const char **member_names(lua_State *L, sl_builder_t *b, int *count)
{
    int n = count_members(L, b), at = 0;
    const char **names = lua_newuserdatauv(L, (size_t)n * sizeof *names, 0);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        lua_pop(L, 1);
        if (!is_option(lua_tostring(L, -1)))
            names[at++] = lua_tostring(L, -1);
    }
    qsort(names, (size_t)n, sizeof *names, by_name);
    for (int i = 0; i < n; i++)
        check_member(L, b, names[i]);
    *count = n;
    return names;
}

/* Pushes option name of the aggregate table; refuses a member there. */
static int option(lua_State *L, sl_builder_t *b, const char *name)
{
    int type = sl_dsl_option(L, 2, name);
    if (to_value(L, -1, SL_DSL_MEMBER_META))
        sl_dsl_error(L, b, "'%s' is an option of aggregate, not a member name: rename the member",
                     name);
    return type;
}

/* Raises "option 'name' for aggregate needs a window" when given. */
static void window_only(lua_State *L, sl_builder_t *b, const char *name, const char *why)
{
    if (option(L, b, name) != LUA_TNIL)
        sl_dsl_error(L, b, "option '%s' for aggregate needs a window: %s", name, why);
    lua_pop(L, 1);
}

/* The retention of a windowed aggregate: the script's or the default,
 * raised to the span a window is open for. */
static int64_t retention(lua_State *L, sl_builder_t *b, const window_spec_t *w)
{
    option(L, b, "retention");
    lua_pop(L, 1);
    int64_t ms = sl_dsl_option_duration(L, b, 2, "aggregate", "retention", SL_OP_RETENTION_DEFAULT);
    int64_t open = (w->kind == SL_OP_WINDOW_SESSION ? w->gap : w->size) + w->grace;
    return ms < open ? open : ms;
}

/* The late topic of a windowed aggregate, left on the stack; NULL if none. */
static const char *late_topic(lua_State *L, sl_builder_t *b)
{
    if (option(L, b, "late") == LUA_TNIL)
        return NULL;
    return sl_dsl_check_topic(L, b, lua_gettop(L), "option 'late' for aggregate");
}

/* Reads the options of the table at 2 for a stream with window w. */
static void read_options(lua_State *L, sl_builder_t *b, const window_spec_t *w, options_t *o)
{
    static const char *const emits[] = {"on_update", "on_close", NULL};
    option(L, b, "emit");
    lua_pop(L, 1);
    o->emit = sl_dsl_option_choice(L, b, 2, "aggregate", "emit", emits, SL_EMIT_ON_UPDATE);
    if (w->kind == SL_OP_WINDOW_NONE) {
        if (o->emit == SL_EMIT_ON_CLOSE)
            sl_dsl_error(L, b,
                         "emit = 'on_close' needs a window: running totals never close (put "
                         ":window(...) before :aggregate)");
        window_only(L, b, "retention", "running totals are kept, not expired");
        window_only(L, b, "late", "without a window no record is late");
        o->retention = 0;
        o->late = NULL;
    } else {
        o->retention = retention(L, b, w);
        o->late = late_topic(L, b);
    }
    o->store = sl_dsl_store_option(L, b, 2, "aggregate", "aggregate");
}

/* Fills member i of op from the member userdata at idx. */
static void fill_member(lua_State *L, sl_agg_spec_t *a, const char *name, int idx)
{
    const member_t *m = lua_touserdata(L, idx);
    a->kind = m->kind;
    a->name = sl_vm_need(L, sl_strdup(name));
    if (lua_getiuservalue(L, idx, 1) == LUA_TSTRING)
        a->field = sl_vm_need(L, sl_strdup(lua_tostring(L, -1)));
    else if (lua_isfunction(L, -1))
        a->fn = sl_dsl_ref(L, -1);
    if (lua_getiuservalue(L, idx, 2) == LUA_TSTRING)
        a->init = sl_vm_need(L, sl_strdup(lua_tostring(L, -1)));
}

/* Fills op's members from the table at 2, in the order of names. */
static void fill_members(lua_State *L, sl_op_t *op, const char **names, int count)
{
    op->aggs = sl_vm_need(L, sl_calloc((size_t)count, sizeof *op->aggs));
    for (int i = 0; i < count; i++)
        op->aggs[i].fn = SL_NO_FUNCTION;
    op->agg_count = count;
    for (int i = 0; i < count; i++) {
        int top = lua_gettop(L);
        lua_pushstring(L, names[i]);
        lua_rawget(L, 2);
        fill_member(L, &op->aggs[i], names[i], top + 1);
        lua_settop(L, top);
    }
}

static void set_window(sl_op_t *op, const window_spec_t *w)
{
    op->window_kind = w->kind;
    op->window_size = w->size;
    op->window_advance = w->advance;
    op->window_gap = w->gap;
    op->window_grace = w->grace;
}

/* stream:aggregate{name = member, ..., emit =, retention =, late =, store =} */
static int stream_aggregate(lua_State *L)
{
    int count;
    options_t o;
    sl_builder_t *b = sl_dsl_enter(L);
    sl_dsl_stream_t *self = sl_dsl_check_self(L, b, "aggregate", SL_DSL_WINDOWED_OK);
    if (lua_gettop(L) > 2)
        sl_dsl_error(L, b, "aggregate takes one table: its options go in it");
    const char **names = member_names(L, b, &count);
    read_options(L, b, &self->spec, &o);
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_AGGREGATE, &input, 1);
    set_window(op, &self->spec);
    op->emit = o.emit;
    op->retention = o.retention;
    op->store = sl_vm_need(L, sl_strdup(o.store));
    if (o.late)
        op->late_topic = sl_vm_need(L, sl_strdup(o.late));
    fill_members(L, op, names, count);
    if (self->window)
        b->windows[self->window - 1].aggregated = 1;
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

const luaL_Reg sl_dsl_aggregate_functions[] = {
    {"tumbling", dsl_tumbling}, {"hopping", dsl_hopping}, {"session", dsl_session},
    {"count", dsl_count},       {"sum", dsl_sum},         {"min", dsl_min},
    {"max", dsl_max},           {"avg", dsl_avg},         {"last", dsl_last},
    {"distinct", dsl_distinct}, {"reduce", dsl_reduce},   {NULL, NULL},
};

const luaL_Reg sl_dsl_aggregate_methods[] = {
    {"window", stream_window},
    {"aggregate", stream_aggregate},
    {NULL, NULL},
};

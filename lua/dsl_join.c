/*
 * dsl_join.c - tables and joins in the DSL: s.table(), :join(), and a
 * table's :stream().
 *
 * A table is a stream userdata with `table` set: s.table() makes one (a
 * TABLE op, an entry like a SOURCE, with a kv store), and so does a join
 * of two tables. Its __index (dsl.c) offers only :join, :to and :stream.
 *
 * :join() decides its kind from its two operands: stream + table, stream
 * + stream (windowed, `within`), table + table. Both inputs must reach
 * the join with every key still in the partition its topic put it in:
 * walking up from each input, only ops that keep the key may stand
 * between the join and the input's entry (a SOURCE, TABLE, KEY_BY or
 * another JOIN); a :map or :flat_map may have changed the key, so the
 * script is told to :key_by() after it. Equal partition counts are the
 * runtime's check (it knows the topics).
 */
#include "lua/options.h"

#include <lua5.4/lauxlib.h>

#include <string.h>

typedef sl_dsl_stream_t stream_t;

static const char *const table_options[] = {"partitions", "format", "store", NULL};

/* s.table(topic, {partitions =, format =, store =}) */
static int dsl_table(lua_State *L)
{
    sl_builder_t *b = sl_dsl_enter(L);
    const char *topic = sl_dsl_check_topic(L, b, 1, "table");
    sl_dsl_check_source_unique(L, b, topic);
    sl_dsl_check_options(L, b, 2, "table", table_options);
    int32_t partitions = sl_dsl_option_count(L, b, 2, "table", "partitions");
    int format = sl_dsl_format_option(L, b, 2, "table");
    const char *store = sl_dsl_store_option(L, b, 2, "table", "table");
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_TABLE, NULL, 0);
    op->topic = sl_vm_need(L, sl_strdup(topic));
    op->store = sl_vm_need(L, sl_strdup(store));
    op->partitions = partitions;
    op->format = format;
    stream_t *s = sl_dsl_push_stream(L, op->id, 0, 0);
    s->table = 1;
    return sl_dsl_leave(b, 1);
}

/* table:stream(): the table's changes as a stream (a one-input MERGE). */
static int table_stream(lua_State *L)
{
    sl_builder_t *b = sl_dsl_enter(L);
    stream_t *self = sl_dsl_check_self(L, b, "stream", SL_DSL_TABLE_OK);
    if (!self->table)
        sl_dsl_error(L, b, "stream() is a table's: this is already a stream");
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_MERGE, &input, 1);
    sl_dsl_push_stream(L, op->id, 0, 0);
    return sl_dsl_leave(b, 1);
}

/* Raises unless every record reaching (op, port) is still keyed as its
 * entry's topic partitioned it. side: "left" or "right", for the message. */
static void check_keyed(lua_State *L, sl_builder_t *b, int op_id, const char *side)
{
    const sl_op_t *op = &b->dag->ops[op_id];
    switch (op->kind) {
    case SL_OP_MAP:
    case SL_OP_FLAT_MAP:
        sl_dsl_error(L, b,
                     "the %s side of this join comes through the %s at %s, which may change the "
                     "key: a join needs both sides partitioned by the join key, so re-key that "
                     "side with :key_by(...) after the %s",
                     side, sl_op_kind_name(op->kind), op->where, sl_op_kind_name(op->kind));
    case SL_OP_FILTER:
    case SL_OP_PEEK:
    case SL_OP_BRANCH:
    case SL_OP_MERGE:
    case SL_OP_AGGREGATE:
        for (int i = 0; i < op->input_count; i++)
            check_keyed(L, b, op->inputs[i].op, side); /* inputs come earlier: it ends */
        return;
    default: /* SOURCE, TABLE, KEY_BY, JOIN: keyed as their partitions */
        return;
    }
}

/* The join's kind from its operands; raises for a stream on a table. */
static int join_kind(lua_State *L, sl_builder_t *b, const stream_t *self, const stream_t *other)
{
    if (self->table && !other->table)
        sl_dsl_error(L, b,
                     "a table joins only a table: to enrich a stream with this table, call "
                     "stream:join(table, fn)");
    if (self->table)
        return SL_JOIN_TABLE_TABLE;
    return other->table ? SL_JOIN_STREAM_TABLE : SL_JOIN_STREAM_STREAM;
}

static const char *join_what(int kind)
{
    return kind == SL_JOIN_STREAM_TABLE    ? "stream-table join"
           : kind == SL_JOIN_STREAM_STREAM ? "stream-stream join"
                                           : "table-table join";
}

/* What the options of a join say, read before its op is appended. */
typedef struct join_options {
    int type;
    int64_t within, grace;
    const char *store; /* on the stack; NULL for a stream-table join */
} join_options_t;

/* Reads the options at 4 for a join of kind. */
static void join_options(lua_State *L, sl_builder_t *b, int kind, join_options_t *op)
{
    static const char *const st_names[] = {"type", NULL};
    static const char *const ss_names[] = {"within", "grace", "type", "store", NULL};
    static const char *const tt_names[] = {"type", "store", NULL};
    static const char *const two_types[] = {"inner", "left", NULL};
    static const char *const three_types[] = {"inner", "left", "outer", NULL};
    const char *what = join_what(kind);
    sl_dsl_check_options(L, b, 4, what,
                         kind == SL_JOIN_STREAM_TABLE    ? st_names
                         : kind == SL_JOIN_STREAM_STREAM ? ss_names
                                                         : tt_names);
    op->store = NULL;
    op->type = sl_dsl_option_choice(L, b, 4, what, "type",
                                    kind == SL_JOIN_STREAM_STREAM ? three_types : two_types,
                                    SL_JOIN_INNER);
    if (kind == SL_JOIN_STREAM_STREAM) {
        op->within = sl_dsl_option_duration(L, b, 4, what, "within", -1);
        if (op->within < 0)
            sl_dsl_error(L, b,
                         "a stream-stream join needs option 'within': how far apart in event "
                         "time two records may be and still join (e.g. within = \"5m\")");
        op->grace = sl_dsl_option_duration(L, b, 4, what, "grace", 0);
        if (op->within > SL_DURATION_MAX / 4 || op->grace > SL_DURATION_MAX / 4)
            sl_dsl_error(L, b, "within and grace of a join may be at most %lld ms each",
                         (long long)(SL_DURATION_MAX / 4));
    }
    if (kind != SL_JOIN_STREAM_TABLE)
        op->store = sl_dsl_store_option(L, b, 4, "join", "join");
}

/* stream:join(table, fn, {type =})
 * stream:join(stream, fn, {within =, grace =, type =, store =})
 * table:join(table, fn, {type =, store =}) */
static int stream_join(lua_State *L)
{
    char text[64];
    sl_builder_t *b = sl_dsl_enter(L);
    stream_t *self = sl_dsl_check_self(L, b, "join", SL_DSL_TABLE_OK);
    stream_t *other = sl_dsl_to_stream(L, 2);
    if (!other || other->sink || other->window)
        sl_dsl_error(L, b, "join expects a stream or a table to join with, got %s",
                     !other        ? sl_vm_describe(L, 2, text, sizeof text)
                     : other->sink ? "a sink"
                                   : "a windowed stream");
    if (other->op == self->op && other->port == self->port)
        sl_dsl_error(L, b, "a join of a stream with itself: join two different streams");
    if (!lua_isfunction(L, 3))
        sl_dsl_error(L, b, "join expects a function (the joiner) as its second argument, got %s",
                     sl_vm_describe(L, 3, text, sizeof text));
    if (!lua_isnoneornil(L, 4) && !lua_istable(L, 4))
        sl_dsl_error(L, b, "join expects a table of options as its third argument, got %s",
                     sl_vm_describe(L, 4, text, sizeof text));
    int kind = join_kind(L, b, self, other);
    check_keyed(L, b, self->op, "left");
    check_keyed(L, b, other->op, "right");
    sl_op_input_t inputs[2] = {{self->op, self->port}, {other->op, other->port}};
    join_options_t o = {0};
    lua_settop(L, 4);
    join_options(L, b, kind, &o);
    char *store = o.store ? sl_vm_need(L, sl_strdup(o.store)) : NULL;
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_JOIN, inputs, 2);
    op->store = store;
    op->join_kind = kind;
    op->join_type = o.type;
    op->join_within = o.within;
    op->window_grace = o.grace;
    op->fn = sl_dsl_ref(L, 3);
    op->native = sl_native_compile(L, 3, 2);
    stream_t *s = sl_dsl_push_stream(L, op->id, 0, 0);
    s->table = kind == SL_JOIN_TABLE_TABLE;
    return sl_dsl_leave(b, 1);
}

const luaL_Reg sl_dsl_join_functions[] = {
    {"table", dsl_table},
    {NULL, NULL},
};

const luaL_Reg sl_dsl_join_methods[] = {
    {"join", stream_join},
    {"stream", table_stream},
    {NULL, NULL},
};

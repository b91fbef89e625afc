/*
 * dsl.h - the DAG under construction while a script is compiled, and what
 * dsl.c shares with dsl_aggregate.c (windows and aggregates).
 *
 * The builder lives in sl_vm_compile()'s frame, outside the protected call
 * that runs the script, and is reachable from Lua only through
 * vm->compiling: the DSL's closures hold a token (the compile's serial
 * number) and find the builder by checking it against vm->compiling, so a
 * user function that calls the DSL after its compile ended gets an error,
 * never a dangling pointer.
 *
 * Errors raised by the DSL are sticky: the first one is kept in error[] and
 * fails the compile even if the script catches it, and busy stays set when
 * a DSL call is interrupted (out of memory), so a half-built op can never
 * end up in a DAG.
 *
 * Every DSL closure has two upvalues: the token (a full userdata holding
 * the serial, whose user values are listed below) and the compile's stream
 * metatable. Values the DSL hands out are full userdata with per-compile
 * metatables, which is how the DSL recognises its own values.
 */
#ifndef SL_LUA_DSL_H
#define SL_LUA_DSL_H

#include "lua/vm.h"

#include <lua5.4/lauxlib.h>

#define SL_DSL_TOKEN       lua_upvalueindex(1)
#define SL_DSL_STREAM_META lua_upvalueindex(2)

/* The token's user values. */
enum {
    SL_DSL_ENCODE = 1,      /* the script's json.encode, as created */
    SL_DSL_WINDOW_META = 2, /* metatable of window specs */
    SL_DSL_MEMBER_META = 3, /* metatable of aggregate members */
    SL_DSL_USER_VALUES = 3
};

/* A :window() call, until aggregated. */
typedef struct sl_dsl_window {
    char where[SL_WHERE_MAX];
    int aggregated;
} sl_dsl_window_t;

typedef struct sl_builder {
    sl_vm_t *vm;
    const char *chunkname;
    uint64_t serial;
    sl_dag_t *dag;
    int op_capacity;
    char pipeline_where[SL_WHERE_MAX]; /* where s.pipeline{} ran; "" before */
    int busy;                          /* inside a DSL call */
    char busy_where[SL_WHERE_MAX];     /* where that call was made */
    char call_where[SL_WHERE_MAX];     /* the running method's line, from __index */
    char error[512];                   /* the first DSL error, "" if none */
    sl_dsl_window_t *windows;          /* every :window() call, in order (sl_malloc) */
    int window_count, window_capacity;
    int declaration_capacity; /* of dag->declarations */
} sl_builder_t;

/* A window spec from s.tumbling(), s.hopping() or s.session(), in ms;
 * kind SL_OP_WINDOW_* (NONE for a stream without a window). */
typedef struct sl_dsl_window_spec {
    int kind;
    int64_t size, advance, gap, grace;
} sl_dsl_window_spec_t;

/* What a sink stream came from (sl_dsl_stream_t.sink). */
enum { SL_DSL_SINK_TO = 1, SL_DSL_SINK_ROUTE = 2, SL_DSL_SINK_FEATURES = 3 };

/* A stream as a script holds it. A windowed stream (window > 0, the index
 * of its :window() call in the builder plus one) accepts only :aggregate;
 * a sink (sink: SL_DSL_SINK_*) accepts nothing. */
typedef struct sl_dsl_stream {
    int op;
    int port;
    int sink;
    int window;
    int table; /* a table (s.table() or a table-table join): :join, :to, :stream only */
    sl_dsl_window_spec_t spec;
    char where[SL_WHERE_MAX]; /* of the last ":method" lookup, until used */
} sl_dsl_stream_t;

/* Pushes the table require("sluice") returns for this compile; encode is
 * the stack index of the script's json.encode. */
void sl_dsl_push_module(lua_State *L, sl_builder_t *b, int encode);

/* Writes "chunk:line" of the DSL call running: the line of its ":method"
 * (see dsl.c) or of the Lua code calling it, else the chunk name. */
void sl_dsl_where(lua_State *L, const sl_builder_t *b, char *out);

/* The builder of the compile the running closure belongs to; raises an
 * error if that compile has ended. */
sl_builder_t *sl_dsl_builder(lua_State *L);

/* Brackets a DSL call that may change the DAG (see "sticky" above):
 * enter returns the builder, leave returns results. */
sl_builder_t *sl_dsl_enter(lua_State *L);
int sl_dsl_leave(sl_builder_t *b, int results);

/* What sl_dsl_check_self accepts besides plain streams. */
enum { SL_DSL_WINDOWED_OK = 1, SL_DSL_TABLE_OK = 2 };

/* The stream a method is called on (argument 1): not a sink, not windowed
 * unless ok has SL_DSL_WINDOWED_OK, not a table unless it has
 * SL_DSL_TABLE_OK. Makes its ":method" line the call's. */
sl_dsl_stream_t *sl_dsl_check_self(lua_State *L, sl_builder_t *b, const char *method, int ok);

/* The DSL stream (or table) at idx, or NULL for any other value. */
sl_dsl_stream_t *sl_dsl_to_stream(lua_State *L, int idx);

/* Option 'format' of the table at idx (for `what`): SL_FORMAT_JSON,
 * SL_FORMAT_RAW, or SL_FORMAT_TOPIC when absent; raises for another. */
int sl_dsl_format_option(lua_State *L, sl_builder_t *b, int idx, const char *what);

/* The s.stream() or s.table() of dag reading topic, or NULL. */
const sl_op_t *sl_dsl_source_of(const sl_dag_t *dag, const char *topic);

/* Raises if an earlier s.stream() or s.table() reads topic. */
void sl_dsl_check_source_unique(lua_State *L, sl_builder_t *b, const char *topic);

/* The store name from option 'store' of the table at idx (for `what`),
 * left on the stack: the script's, checked, or "<prefix><op id>" when
 * absent; raises if an earlier op has a store of that name. */
const char *sl_dsl_store_option(lua_State *L, sl_builder_t *b, int idx, const char *what,
                                const char *prefix);

/* Appends an op reading from inputs, with where set to the call's line. */
sl_op_t *sl_dsl_op_append(lua_State *L, sl_builder_t *b, sl_op_kind_t kind,
                          const sl_op_input_t *inputs, int input_count);

/* Pushes a new stream reading (op, port) and returns it; sink is 0 or
 * SL_DSL_SINK_*. */
sl_dsl_stream_t *sl_dsl_push_stream(lua_State *L, int op, int port, int sink);

/* ":to()", ":route()" or ":features()", for messages about what follows
 * a sink. */
const char *sl_dsl_sink_name(int sink);

/* dsl_aggregate.c: the module's window and member constructors, and the
 * streams' window and aggregate methods. */
extern const luaL_Reg sl_dsl_aggregate_functions[];
extern const luaL_Reg sl_dsl_aggregate_methods[];

/* dsl_route.c: the module's declarations s.exchange(), s.queue(),
 * s.bind(), and the streams' :route() sink. */
extern const luaL_Reg sl_dsl_route_functions[];
extern const luaL_Reg sl_dsl_route_methods[];

/* dsl_features.c: the streams' :features() sink. */
extern const luaL_Reg sl_dsl_features_methods[];

/* dsl_join.c: the module's s.table(), and :join() and :stream(). */
extern const luaL_Reg sl_dsl_join_functions[];
extern const luaL_Reg sl_dsl_join_methods[];

#endif

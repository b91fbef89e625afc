/*
 * dsl.h - the DAG under construction while a script is compiled.
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
 */
#ifndef SL_LUA_DSL_H
#define SL_LUA_DSL_H

#include "lua/vm.h"

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
} sl_builder_t;

/* Pushes the table require("sluice") returns for this compile. */
void sl_dsl_push_module(lua_State *L, sl_builder_t *b);

/* Writes "chunk:line" of the DSL call running: the line of its ":method"
 * (see dsl.c) or of the Lua code calling it, else the chunk name. */
void sl_dsl_where(lua_State *L, const sl_builder_t *b, char *out);

#endif

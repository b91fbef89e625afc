/*
 * options.h - the DSL's argument and option checks (options.c).
 *
 * idx arguments are absolute stack indexes. Every function that checks
 * raises a sticky DSL error (see dsl.h) naming the caller's chunk:line, the
 * DSL call (what) and the option (name).
 */
#ifndef SL_LUA_OPTIONS_H
#define SL_LUA_OPTIONS_H

#include "lua/dsl.h"

/* Records (first time only) and raises "chunk:line: <text>". */
_Noreturn void sl_dsl_error(lua_State *L, sl_builder_t *b, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Accepts nil or a table whose keys are all in names (NULL-terminated). */
void sl_dsl_check_options(lua_State *L, sl_builder_t *b, int idx, const char *what,
                          const char *const *names);

/* Pushes options[name], raw (nil when idx holds no table); returns its type. */
int sl_dsl_option(lua_State *L, int idx, const char *name);

/* A positive int32 option; 0 when absent. */
int32_t sl_dsl_option_count(lua_State *L, sl_builder_t *b, int idx, const char *what,
                            const char *name);

/* The index in choices (NULL-terminated) of a string option; absent when
 * the option is not given. */
int sl_dsl_option_choice(lua_State *L, sl_builder_t *b, int idx, const char *what, const char *name,
                         const char *const *choices, int absent);

/* A boolean option; 0 when absent. */
int sl_dsl_option_boolean(lua_State *L, sl_builder_t *b, int idx, const char *what,
                          const char *name);

/* 1 if a function option is given, 0 if absent. */
int sl_dsl_option_function(lua_State *L, sl_builder_t *b, int idx, const char *what,
                           const char *name);

/* A registry reference to the value at idx. */
int sl_dsl_ref(lua_State *L, int idx);

/* The topic name at idx, checked as the log checks topic names. */
const char *sl_dsl_check_topic(lua_State *L, sl_builder_t *b, int idx, const char *what);

/* 1 if the value at idx is a string of 1 to max bytes of [A-Za-z0-9_-]
 * (pipeline and store names), else 0. Raises nothing. */
int sl_dsl_name_ok(lua_State *L, int idx, size_t max);

/*
 * The duration at idx in ms: a string sl_duration_parse() reads ("10s"), or
 * an integer (a Lua integer or an integral float) of ms, in
 * 0..SL_DURATION_MAX. Messages start with what ("tumbling size").
 */
int64_t sl_dsl_duration(lua_State *L, sl_builder_t *b, int idx, const char *what);

/* A duration option, as sl_dsl_duration; absent when not given. */
int64_t sl_dsl_option_duration(lua_State *L, sl_builder_t *b, int idx, const char *what,
                               const char *name, int64_t absent);

#endif

/*
 * dsl_features.c - feature views in the DSL (DESIGN.md section 8): the
 * sink :features(view, {ranges =, defaults =}) right after a tumbling
 * :aggregate{} (lua.h has the rules).
 *
 * The op keeps what the node needs to answer queries and write vectors
 * without the script: the view's name, the ranges in ms and as written
 * (feature names are "<member>_<range>", so "24h" stays "24h" and is not
 * turned into "1d"; a range given as an integer of ms is written in the
 * largest unit that divides it), and one default slot per feature.
 *
 * Everything but the defaults' values is checked before the op is appended
 * (a script that fails to compile leaves no op anyway). The defaults table is
 * read in two passes so that nothing depends on Lua's per-VM hash order: a
 * feature's own default wins over its member's whatever order pairs()
 * gives, and of several unknown names the first in byte order is the one
 * reported.
 */
#include "lua/options.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RANGE_TEXT_MAX 32 /* "10000000000000ms" and a NUL fit */

/* What :features() has read, on the C stack until the op is made. */
typedef struct spec {
    const sl_op_t *aggregate;
    int range_count;
    int64_t ranges[SL_OP_FEATURE_RANGES_MAX];
    char range_names[SL_OP_FEATURE_RANGES_MAX][RANGE_TEXT_MAX];
} spec_t;

static const char usage[] =
    "stream:features(view, {ranges = {\"5m\", \"1h\"}, defaults = {name = number}})";

/* ms in the largest unit that divides it: 300000 -> "5m". */
static void duration_text(int64_t ms, char *out)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (ms % units[i].ms == 0) {
            snprintf(out, RANGE_TEXT_MAX, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    snprintf(out, RANGE_TEXT_MAX, "%lldms", (long long)ms);
}

/* ---- the aggregate --------------------------------------------------------- */

/* The AGGREGATE op self reads, checked to be one whose buckets make
 * trailing ranges: tumbling windows and members that merge. */
static const sl_op_t *check_aggregate(lua_State *L, sl_builder_t *b, const sl_dsl_stream_t *self)
{
    const sl_op_t *op = &b->dag->ops[self->op];
    if (op->kind != SL_OP_AGGREGATE)
        sl_dsl_error(L, b,
                     "features follows a windowed :aggregate{...} directly, but this stream "
                     "comes from :%s()",
                     sl_op_kind_name(op->kind));
    if (op->window_kind == SL_OP_WINDOW_NONE)
        sl_dsl_error(L, b,
                     "features needs buckets: put :window(s.tumbling(\"1m\")) before the "
                     ":aggregate{} at %s (running totals have none)",
                     op->where);
    if (op->window_kind != SL_OP_WINDOW_TUMBLING)
        sl_dsl_error(L, b,
                     "features needs tumbling windows as buckets, and the aggregate at %s has %s "
                     "windows (%s)",
                     op->where, op->window_kind == SL_OP_WINDOW_HOPPING ? "hopping" : "session",
                     op->window_kind == SL_OP_WINDOW_HOPPING ? "they overlap"
                                                             : "they vary in length");
    for (int i = 0; i < op->agg_count; i++)
        if (op->aggs[i].kind == SL_OP_AGG_REDUCE)
            sl_dsl_error(L, b,
                         "features: member '%s' of the aggregate at %s is an s.reduce(), whose "
                         "buckets cannot be merged into ranges; aggregate it elsewhere",
                         op->aggs[i].name, op->where);
    return op;
}

/* ---- ranges ------------------------------------------------------------------ */

/* Range i (1-based) of the list at the top of the stack. */
static void read_range(lua_State *L, sl_builder_t *b, spec_t *s, int i)
{
    char label[64], bucket[RANGE_TEXT_MAX], keep[RANGE_TEXT_MAX];
    const sl_op_t *agg = s->aggregate;
    int at = s->range_count;
    snprintf(label, sizeof label, "features range %d", i);
    int64_t ms = sl_dsl_duration(L, b, lua_gettop(L), label);
    if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) >= RANGE_TEXT_MAX)
        sl_dsl_error(L, b, "%s is written in %zu characters (at most %d)", label,
                     (size_t)lua_rawlen(L, -1), RANGE_TEXT_MAX - 1);
    if (lua_type(L, -1) == LUA_TSTRING)
        snprintf(s->range_names[at], RANGE_TEXT_MAX, "%s", lua_tostring(L, -1));
    else
        duration_text(ms, s->range_names[at]);
    duration_text(agg->window_size, bucket);
    duration_text(agg->retention, keep);
    if (ms < agg->window_size || ms % agg->window_size != 0)
        sl_dsl_error(L, b,
                     "features range '%s' is not a whole number of the aggregate's %s buckets "
                     "(ranges are made of whole windows)",
                     s->range_names[at], bucket);
    if (ms > agg->retention)
        sl_dsl_error(L, b,
                     "features range '%s' is longer than the aggregate's retention %s, so its "
                     "oldest buckets would be gone: give the aggregate retention = \"%s\"",
                     s->range_names[at], keep, s->range_names[at]);
    for (int j = 0; j < at; j++)
        if (s->ranges[j] == ms)
            sl_dsl_error(L, b, "features ranges '%s' and '%s' are the same range",
                         s->range_names[j], s->range_names[at]);
    s->ranges[at] = ms;
    s->range_count++;
}

/* options.ranges: a list of 1 to SL_OP_FEATURE_RANGES_MAX durations. */
static void read_ranges(lua_State *L, sl_builder_t *b, spec_t *s)
{
    char text[64];
    if (sl_dsl_option(L, 3, "ranges") != LUA_TTABLE)
        sl_dsl_error(L, b,
                     "features needs ranges, a list of durations such as {\"5m\", \"1h\"}, "
                     "got %s: write %s",
                     sl_vm_describe(L, -1, text, sizeof text), usage);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1), keys = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        keys++;
    }
    if (n < 1 || keys != n)
        sl_dsl_error(L, b, "features ranges must be a list of durations such as {\"5m\", \"1h\"}");
    if (n > SL_OP_FEATURE_RANGES_MAX)
        sl_dsl_error(L, b, "features has %lld ranges (at most %d)", (long long)n,
                     SL_OP_FEATURE_RANGES_MAX);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        read_range(L, b, s, (int)i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* ---- names and defaults ---------------------------------------------------------- */

/* 1 if name is "<member>_<range k>" of member m. */
static int is_feature(const spec_t *s, const char *name, int m, int k)
{
    const char *member = s->aggregate->aggs[m].name;
    size_t n = strlen(member);
    return strncmp(name, member, n) == 0 && name[n] == '_' &&
           strcmp(name + n + 1, s->range_names[k]) == 0;
}

/* The feature index name has, or -1. */
static int feature_index(const spec_t *s, const char *name)
{
    for (int m = 0; m < s->aggregate->agg_count; m++)
        for (int k = 0; k < s->range_count; k++)
            if (is_feature(s, name, m, k))
                return m * s->range_count + k;
    return -1;
}

static int member_index(const spec_t *s, const char *name)
{
    for (int m = 0; m < s->aggregate->agg_count; m++)
        if (strcmp(s->aggregate->aggs[m].name, name) == 0)
            return m;
    return -1;
}

/* The defaults table's value at the top of the stack, named name. */
static double default_value(lua_State *L, sl_builder_t *b, const char *name)
{
    char text[64];
    if (lua_type(L, -1) != LUA_TNUMBER || !isfinite(lua_tonumber(L, -1)))
        sl_dsl_error(L, b, "features default '%s' must be a finite number, got %s", name,
                     sl_vm_describe(L, -1, text, sizeof text));
    return lua_tonumber(L, -1);
}

/* Pass one: every key a string naming a member or a feature; the first
 * unknown one in byte order is reported. */
static void check_default_names(lua_State *L, sl_builder_t *b, const spec_t *s, int idx)
{
    char text[64];
    const char *unknown = NULL;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sl_dsl_error(L, b, "features defaults: names must be strings, got the key %s",
                         sl_vm_describe(L, -1, text, sizeof text));
        const char *name = lua_tostring(L, -1);
        if (member_index(s, name) < 0 && feature_index(s, name) < 0 &&
            (!unknown || strcmp(name, unknown) < 0))
            unknown = name;
    }
    if (unknown)
        sl_dsl_error(L, b,
                     "features defaults: '%s' is neither a member of the aggregate at %s nor one "
                     "of its features (<member>_<range>, such as %s_%s)",
                     unknown, s->aggregate->where, s->aggregate->aggs[0].name, s->range_names[0]);
}

/* Features first .. first + count - 1 of op default to v. */
static void set_defaults(sl_op_t *op, int first, int count, double v)
{
    for (int j = first; j < first + count; j++) {
        op->has_default[j] = 1;
        op->defaults[j] = v;
    }
}

/* options.defaults into op: members' first, then features' own. */
static void read_defaults(lua_State *L, sl_builder_t *b, const spec_t *s, sl_op_t *op)
{
    int type = sl_dsl_option(L, 3, "defaults"), idx = lua_gettop(L);
    char text[64];
    if (type == LUA_TNIL)
        return;
    if (type != LUA_TTABLE)
        sl_dsl_error(L, b, "features defaults must be a table of name = number, got %s",
                     sl_vm_describe(L, -1, text, sizeof text));
    check_default_names(L, b, s, idx);
    for (int pass = 0; pass < 2; pass++) { /* a feature's own default wins */
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            const char *name = lua_tostring(L, -2);
            int m = member_index(s, name), k = feature_index(s, name);
            if (pass == 0 && m >= 0)
                set_defaults(op, m * s->range_count, s->range_count, default_value(L, b, name));
            else if (pass == 1 && k >= 0)
                set_defaults(op, k, 1, default_value(L, b, name));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* Raises if an earlier :features() of the same view has one of spec's
 * feature names (a name is one column of the view). */
static void check_names_unique(lua_State *L, sl_builder_t *b, const char *view, const spec_t *s)
{
    for (int i = 0; i < b->dag->op_count; i++) {
        const sl_op_t *op = &b->dag->ops[i];
        if (op->kind != SL_OP_FEATURES || strcmp(op->view, view) != 0)
            continue;
        const sl_op_t *agg = &b->dag->ops[op->inputs[0].op];
        for (int m = 0; m < agg->agg_count; m++)
            for (int k = 0; k < op->range_count; k++) {
                char name[SL_OP_AGG_NAME_MAX + RANGE_TEXT_MAX + 2];
                snprintf(name, sizeof name, "%s_%s", agg->aggs[m].name, op->range_names[k]);
                if (feature_index(s, name) >= 0)
                    sl_dsl_error(L, b,
                                 "features: view '%s' already has a feature '%s' (from %s): "
                                 "rename the member or use another view",
                                 view, name, op->where);
            }
    }
}

/* ---- the op ---------------------------------------------------------------------- */

static void fill_op(lua_State *L, sl_op_t *op, const char *view, const spec_t *s)
{
    op->view = sl_vm_need(L, sl_strdup(view));
    op->ranges = sl_vm_need(L, sl_calloc((size_t)s->range_count, sizeof *op->ranges));
    op->range_names = sl_vm_need(L, sl_calloc((size_t)s->range_count, sizeof *op->range_names));
    op->range_count = s->range_count;
    for (int k = 0; k < s->range_count; k++) {
        op->ranges[k] = s->ranges[k];
        op->range_names[k] = sl_vm_need(L, sl_strdup(s->range_names[k]));
    }
    op->feature_count = s->aggregate->agg_count * s->range_count;
    op->has_default = sl_vm_need(L, sl_calloc((size_t)op->feature_count, 1));
    op->defaults = sl_vm_need(L, sl_calloc((size_t)op->feature_count, sizeof *op->defaults));
}

/* stream:features(view, {ranges =, defaults =}) */
static int stream_features(lua_State *L)
{
    static const char *const names[] = {"defaults", "ranges", NULL};
    char text[64];
    spec_t s = {0};
    sl_builder_t *b = sl_dsl_enter(L);
    sl_dsl_stream_t *self = sl_dsl_check_self(L, b, "features", 0);
    if (lua_gettop(L) > 3)
        sl_dsl_error(L, b, "too many arguments: write %s", usage);
    s.aggregate = check_aggregate(L, b, self);
    if (lua_type(L, 2) != LUA_TSTRING)
        sl_dsl_error(L, b, "features expects the view's name first, got %s: write %s",
                     sl_vm_describe(L, 2, text, sizeof text), usage);
    const char *view = sl_dsl_check_topic(L, b, 2, "features view (it names its topic)");
    if (lua_rawlen(L, 2) > SL_OP_VIEW_NAME_MAX)
        sl_dsl_error(L, b, "features view name is %zu bytes (at most %d)", (size_t)lua_rawlen(L, 2),
                     SL_OP_VIEW_NAME_MAX);
    if (!lua_istable(L, 3))
        sl_dsl_error(L, b, "features needs its ranges: write %s", usage);
    sl_dsl_check_options(L, b, 3, "features", names);
    read_ranges(L, b, &s);
    check_names_unique(L, b, view, &s);
    sl_op_input_t input = {self->op, self->port};
    sl_op_t *op = sl_dsl_op_append(L, b, SL_OP_FEATURES, &input, 1);
    fill_op(L, op, view, &s);
    read_defaults(L, b, &s, op);
    sl_dsl_push_stream(L, op->id, 0, SL_DSL_SINK_FEATURES);
    return sl_dsl_leave(b, 1);
}

const luaL_Reg sl_dsl_features_methods[] = {
    {"features", stream_features},
    {NULL, NULL},
};

/*
 * store_views.c - the renderer of the node's state queries (GET, WINDOWS,
 * SCAN; queries.h, sl_store_renderer_t) over the running pipelines.
 *
 * An AGGREGATE op's store "<pipeline>.<store>" holds encoded aggregate
 * states (ops/aggregate.h). The encoding has the members' kinds and a
 * fingerprint of the set, but not the members' names: those, and the
 * window's size, are in the op. A session window's value is the end of
 * the session (be64) followed by the state. A view is made per query: under the
 * manager's lock the running pipeline named by the store's first part is
 * found, then its AGGREGATE op whose store has the second part, and what
 * rendering needs is copied out of it (an aggregate set built as the op's
 * own, and the window), so that the pipeline may be replaced or stopped
 * while the view is in use. A value that does not decode with that set (a
 * pipeline replaced by one with other members, whose store still holds
 * the old states) is SL_ECORRUPT: the query then shows it as stored.
 */
#include "runtime/store_views.h"

#include "ops/aggregate.h"
#include "runtime/pipeline_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct view {
    sl_aggset_t *set;
    sl_aggstate_t *state;
    int64_t window_size; /* tumbling, hopping: end = start + size; else 0 */
    int session;         /* session windows: values are be64(end) + the state */
} view_t;

/* The AGGREGATE op of a running pipeline that owns store; lock held. */
static const sl_op_t *find_op(sl_pipelines_t *m, const char *store)
{
    for (int i = 0; i < m->count; i++) {
        const pipeline_t *pl = m->list[i];
        size_t n = strlen(pl->name);
        if (strncmp(store, pl->name, n) || store[n] != '.' || !pl->dag)
            continue;
        for (int j = 0; j < pl->dag->op_count; j++) {
            const sl_op_t *op = &pl->dag->ops[j];
            if (op->kind == SL_OP_AGGREGATE && op->store && !strcmp(op->store, store + n + 1))
                return op;
        }
    }
    return NULL;
}

/* The op's aggregate set, built as the operator builds it (aggregator.c),
 * so that the fingerprints agree. */
static int make_set(const sl_op_t *op, sl_aggset_t **out)
{
    char source[SL_AGG_SOURCE_MAX + 1];
    int rc = sl_aggset_new(out);
    for (int i = 0; rc == 0 && i < op->agg_count; i++) {
        const sl_agg_spec_t *m = &op->aggs[i];
        if (m->field)
            snprintf(source, sizeof source, "%s", m->field);
        else if (m->kind == SL_OP_AGG_COUNT)
            source[0] = '\0';
        else
            snprintf(source, sizeof source, "function %s", m->name);
        int index = sl_aggset_add(*out, m->name, (sl_agg_kind_t)m->kind, source[0] ? source : NULL);
        rc = index < 0 ? index : 0;
    }
    return rc;
}

static void close_view(void *arg)
{
    view_t *v = arg;
    if (!v)
        return;
    sl_aggstate_free(v->state);
    sl_aggset_free(v->set);
    sl_free(v);
}

/* Copies what rendering needs out of op; lock held. */
static int make_view(const sl_op_t *op, view_t **out)
{
    view_t *v = sl_calloc(1, sizeof *v);
    if (!v)
        return -ENOMEM;
    int rc = make_set(op, &v->set);
    if (rc == 0)
        rc = sl_aggstate_new(v->set, &v->state);
    if (op->window_kind == SL_OP_WINDOW_TUMBLING || op->window_kind == SL_OP_WINDOW_HOPPING)
        v->window_size = op->window_size;
    v->session = op->window_kind == SL_OP_WINDOW_SESSION;
    if (rc) {
        close_view(v);
        return rc;
    }
    *out = v;
    return 0;
}

static int open_view(void *arg, const char *store, void **out)
{
    sl_pipelines_t *m = arg;
    view_t *v = NULL;
    pthread_mutex_lock(&m->lock);
    const sl_op_t *op = find_op(m, store);
    int rc = op ? make_view(op, &v) : SL_ENOTFOUND;
    pthread_mutex_unlock(&m->lock);
    *out = v;
    return rc;
}

/* A session's value starts with the big-endian end of the session (the
 * time of its last record), as aggregator.c writes it. */
static int render_value(void *arg, const void *value, size_t len, int64_t window_start,
                        int64_t *window_end, sl_buf_t *out)
{
    view_t *v = arg;
    const uint8_t *bytes = value;
    if (v->window_size && window_start <= INT64_MAX - v->window_size)
        *window_end = window_start + v->window_size;
    if (v->session && len < 8)
        return SL_ECORRUPT;
    if (v->session) {
        *window_end = (int64_t)sl_get_be64(bytes);
        bytes += 8;
        len -= 8;
    }
    int rc = sl_aggstate_decode(v->state, bytes, len);
    return rc ? rc : sl_aggstate_json(v->state, out);
}

const sl_store_renderer_t sl_store_views = {open_view, render_value, close_view};

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
    sl_op_t window; /* the op's window fields only, for sl_aggregate_split */
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
    int rc = sl_aggregate_set(op, &v->set);
    if (rc == 0)
        rc = sl_aggstate_new(v->set, &v->state);
    v->window.window_kind = op->window_kind; /* the op may go with its pipeline */
    v->window.window_size = op->window_size;
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

static int render_value(void *arg, const void *value, size_t len, int64_t window_start,
                        int64_t *window_end, sl_buf_t *out)
{
    view_t *v = arg;
    const uint8_t *state;
    size_t state_len;
    int64_t end;
    int rc = sl_aggregate_split(&v->window, value, len, window_start, &state, &state_len, &end);
    if (rc == 0 && end != INT64_MIN)
        *window_end = end;
    if (rc == 0)
        rc = sl_aggstate_decode(v->state, state, state_len);
    return rc ? rc : sl_aggstate_json(v->state, out);
}

const sl_store_renderer_t sl_store_views = {open_view, render_value, close_view};

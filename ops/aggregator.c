/*
 * aggregator.c - the AGGREGATE operator: per-task state, windows, results.
 *
 * One task runs every record of its partition through the pipeline's
 * AGGREGATE ops in order. For each op the task keeps (agg_t):
 *
 *   cache      the write cache over the op's store (kv without a window,
 *              window store with one); its changes reach LMDB and the
 *              changelog at the runtime's commit
 *   watermark  stream time (the largest event time seen) - grace; the
 *              runtime commits the stream time with the input offsets, so a
 *              restarted task judges lateness as the one before it did
 *   changes    for emit = "on_update", the cache's: each window changed
 *              since the last flush is taken once (sl_cache_take_changed),
 *              in the order they first changed since the last commit
 *   closer     the open windows in close order, for emit = "on_close";
 *              rebuilt from the store when the task starts
 *
 * Per record: the key (a record without one is an error: aggregate a keyed
 * stream), the event time (ts), each member's input (a field read from the
 * tokens, or a Lua function), then for each window the record falls in that
 * is still open: read the state (cache, then LMDB), fold the record in,
 * write it back. A record whose windows are all closed is late: counted,
 * and sent to the late topic when the script names one.
 *
 * sl_exec_task_flush, which the runtime calls before each commit, turns
 * what is owed into result records and runs them through the op's
 * downstream ops: the changed windows (on_update) or the windows the
 * watermark closed (on_close); then it expires windows past retention.
 * Results: key = the key, value = {"key": k, "window_start": s,
 * "window_end": e, "values": {...}} ("window_*" only with a window).
 */
#include "ops/aggregate.h"
#include "ops/features.h"
#include "ops/ops_internal.h"
#include "ops/window.h"
#include "storage/buf.h"

#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define EXPIRE_BATCH 10000 /* windows expired per flush, at most */

typedef struct agg {
    const sl_op_t *op;
    sl_cache_t *cache;
    sl_aggset_t *set;
    sl_aggstate_t *state;
    sl_window_spec_t spec;
    int windowed;         /* a window store: tumbling, hopping or session */
    int session;          /* session windows: values are be64(last) + the state */
    sl_aggstate_t *other; /* sessions: a merged session's state */
    sl_session_t *sessions;
    size_t session_count, session_cap;
    sl_watermark_t wm;
    int unread; /* no op reads the results: the store is the only output */
    sl_window_closer_t *closer;
    sl_buf_t result; /* a result's JSON */
    /* Tumbling and hopping windows: the results' ',"window_start":..,
     * "window_end":..' text of the window starting at window_text_start
     * (a commit's results share a few windows); empty: none yet. */
    sl_buf_t window_text;
    int64_t window_text_start;
    uint8_t *scratch;
    size_t scratch_cap;
    sl_agg_input_t *inputs;
    int *read_by; /* per member: an earlier member reading its field, or -1 */
    uint64_t late;
    int full;             /* the cache said "commit now" */
    sl_cache_span_t span; /* windows: what the cache holds all of */
} agg_t;

struct sl_exec_task {
    agg_t *aggs;
    int count;
    sl_join_t **joins; /* TABLE ops and JOIN ops with a store (join.c) */
    int join_count;
    int32_t partition;
    int partitions;
};

/* By id: during a replace, one worker runs tasks another worker made, and
 * user functions must then come from the running worker's op. */
static agg_t *agg_of(sl_exec_task_t *t, const sl_op_t *op)
{
    for (int i = 0; t && i < t->count; i++)
        if (t->aggs[i].op->id == op->id)
            return &t->aggs[i];
    return NULL;
}

/* ---- setup ------------------------------------------------------------------- */

int sl_aggregate_set(const sl_op_t *op, sl_aggset_t **out)
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

int sl_aggregate_split(const sl_op_t *op, const void *value, size_t len, int64_t window_start,
                       const uint8_t **state, size_t *state_len, int64_t *window_end)
{
    *state = value;
    *state_len = len;
    *window_end = INT64_MIN;
    if (op->window_kind == SL_OP_WINDOW_SESSION) {
        if (len < 8)
            return sl_error_set(SL_ECORRUPT, "a stored session of %zu bytes", len);
        *window_end = (int64_t)sl_get_be64(value);
        *state += 8;
        *state_len -= 8;
    } else if (op->window_kind && window_start <= INT64_MAX - op->window_size) {
        *window_end = window_start + op->window_size;
    }
    return 0;
}

static int make_spec(const sl_op_t *op, agg_t *a)
{
    switch (op->window_kind) {
    case SL_OP_WINDOW_NONE:
        sl_watermark_init(&a->wm, 0);
        return 0;
    case SL_OP_WINDOW_TUMBLING:
        a->windowed = 1;
        return sl_window_tumbling(op->window_size, op->window_grace, &a->spec);
    case SL_OP_WINDOW_HOPPING:
        a->windowed = 1;
        return sl_window_hopping(op->window_size, op->window_advance, op->window_grace, &a->spec);
    default:
        a->windowed = a->session = 1;
        return sl_window_session(op->window_gap, op->window_grace, &a->spec);
    }
}

/* Whether a stored window is of this task's partition (expiry, rebuilds). */
static int owns(void *arg, const void *store_key, size_t len)
{
    const sl_exec_task_t *t = arg;
    size_t key_len;
    int64_t start;
    if (t->partitions <= 0 || sl_store_window_split(store_key, len, &key_len, &start))
        return 1;
    return sl_partition_for_key(store_key, key_len, t->partitions) == t->partition;
}

typedef struct rebuild {
    agg_t *a;
    sl_exec_task_t *t;
    int rc;
} rebuild_t;

/* Puts a stored window of this task, still open at the committed
 * watermark, back into the close queue (on_close results not yet owed). */
static int rebuild_one(void *arg, const void *store_key, size_t len, const void *value,
                       size_t value_len)
{
    rebuild_t *r = arg;
    size_t key_len;
    int64_t start;
    (void)value, (void)value_len;
    if (sl_store_window_split(store_key, len, &key_len, &start) || !owns(r->t, store_key, len))
        return 0;
    int64_t close = start + r->a->spec.size;
    if (r->a->session) {
        if (value_len < 8)
            return 0;
        sl_session_t session = {start, (int64_t)sl_get_be64(value)};
        close = sl_session_close_time(&r->a->spec, &session);
    }
    if (sl_window_is_closed(close, sl_watermark_get(&r->a->wm)))
        return 0;
    r->rc = sl_window_closer_add(r->a->closer, store_key, key_len, start, close);
    return r->rc ? 1 : 0;
}

static int rebuild_closer(sl_exec_task_t *t, agg_t *a)
{
    rebuild_t r = {a, t, 0};
    int rc = sl_store_foreach_committed(sl_cache_store(a->cache), rebuild_one, &r);
    return r.rc ? r.rc : rc < 0 ? rc : 0;
}

/* An earlier member that reads the same field as member i (sum and avg of
 * one field: read once), or -1. */
static int read_before(const sl_op_t *op, int i)
{
    const sl_agg_spec_t *m = &op->aggs[i];
    if (!m->field || m->kind == SL_OP_AGG_COUNT || m->kind == SL_OP_AGG_REDUCE)
        return -1;
    for (int j = 0; j < i; j++) {
        const sl_agg_spec_t *e = &op->aggs[j];
        if (e->field && e->kind != SL_OP_AGG_COUNT && e->kind != SL_OP_AGG_REDUCE &&
            strcmp(e->field, m->field) == 0)
            return j;
    }
    return -1;
}

static int agg_init(sl_exec_task_t *t, agg_t *a, const sl_exec_t *x, const sl_op_t *op,
                    sl_store_t *store, int64_t stream_time)
{
    a->op = op;
    a->unread = !sl_exec_op_read(x, op->id);
    int rc = sl_aggregate_set(op, &a->set);
    if (rc == 0)
        rc = sl_aggstate_new(a->set, &a->state);
    if (rc == 0)
        rc = sl_aggstate_new(a->set, &a->other);
    if (rc == 0)
        rc = make_spec(op, a);
    if (rc == 0 && a->windowed)
        sl_watermark_init(&a->wm, a->spec.grace);
    sl_watermark_restore(&a->wm, stream_time);
    if (rc == 0)
        rc = sl_cache_span_init(&a->span, store);
    if (rc == 0 && (rc = sl_cache_new(store, 0, &a->cache)) == 0)
        sl_cache_set_owner(a->cache, owns, t);
    if (rc == 0 && (!(a->inputs = sl_calloc((size_t)op->agg_count, sizeof *a->inputs)) ||
                    !(a->read_by = sl_calloc((size_t)op->agg_count, sizeof *a->read_by))))
        rc = -ENOMEM;
    for (int i = 0; rc == 0 && i < op->agg_count; i++)
        a->read_by[i] = read_before(op, i);
    if (rc == 0 && a->windowed && op->emit == SL_EMIT_ON_CLOSE && !a->unread) {
        rc = sl_window_closer_new(&a->closer);
        if (rc == 0)
            rc = rebuild_closer(t, a);
    }
    return rc;
}

static void agg_free(agg_t *a)
{
    sl_cache_free(a->cache);
    sl_aggstate_free(a->state); /* states before the set they belong to */
    sl_aggstate_free(a->other);
    sl_aggset_free(a->set);
    sl_window_closer_free(a->closer);
    sl_free(a->sessions);
    sl_buf_free(&a->result);
    sl_buf_free(&a->window_text);
    sl_free(a->scratch);
    sl_free(a->inputs);
    sl_free(a->read_by);
}

/* TABLE ops, and JOIN ops but stream-table ones, keep state in a store. */
static int has_join_state(const sl_op_t *op)
{
    return op->kind == SL_OP_TABLE ||
           (op->kind == SL_OP_JOIN && op->join_kind != SL_JOIN_STREAM_TABLE);
}

int sl_exec_task_new(sl_exec_t *x, sl_store_t *const *stores, const int64_t *stream_times,
                     int32_t partition, int partitions, sl_exec_task_t **out)
{
    const sl_dag_t *dag = sl_exec_dag(x);
    sl_exec_task_t *t = sl_calloc(1, sizeof *t);
    int rc = t ? 0 : -ENOMEM;
    for (int i = 0; rc == 0 && i < dag->op_count; i++) { /* the ops given a store */
        t->count += dag->ops[i].kind == SL_OP_AGGREGATE && stores[i];
        t->join_count += has_join_state(&dag->ops[i]) && stores[i];
    }
    if (rc == 0 && t->count && !(t->aggs = sl_calloc((size_t)t->count, sizeof *t->aggs)))
        rc = -ENOMEM;
    if (rc == 0 && t->join_count &&
        !(t->joins = sl_calloc((size_t)t->join_count, sizeof *t->joins)))
        rc = -ENOMEM;
    if (t)
        t->join_count = 0;
    for (int i = 0; rc == 0 && i < dag->op_count; i++) {
        const sl_op_t *op = &dag->ops[i];
        if (!has_join_state(op) || !stores[i])
            continue;
        rc = sl_join_new(op, stores[i], stream_times[i], partition, partitions,
                         &t->joins[t->join_count]);
        if (rc)
            break;
        int two = op->kind == SL_OP_JOIN;
        sl_join_set_json(t->joins[t->join_count++], sl_exec_op_json(x, i),
                         sl_exec_op_json(x, two ? op->inputs[0].op : i),
                         sl_exec_op_json(x, two ? op->inputs[1].op : i));
    }
    if (t) {
        t->partition = partition;
        t->partitions = partitions;
        t->count = 0;
    }
    for (int i = 0; rc == 0 && i < dag->op_count; i++) {
        if (dag->ops[i].kind == SL_OP_AGGREGATE && stores[i])
            rc = agg_init(t, &t->aggs[t->count++], x, &dag->ops[i], stores[i], stream_times[i]);
    }
    for (int i = 0; rc == 0 && i < dag->op_count; i++) {
        sl_cache_t *cache = sl_exec_task_cache(t, i);
        if (cache)
            sl_cache_set_flush_interval(cache, dag->flush_interval);
    }
    if (rc) {
        sl_exec_task_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void sl_exec_task_free(sl_exec_task_t *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->count; i++)
        agg_free(&t->aggs[i]);
    for (int i = 0; i < t->join_count; i++)
        sl_join_free(t->joins[i]);
    sl_free(t->aggs);
    sl_free(t->joins);
    sl_free(t);
}

sl_join_t *sl_exec_task_join(sl_exec_task_t *t, int op)
{
    for (int i = 0; t && i < t->join_count; i++)
        if (sl_join_op(t->joins[i])->id == op)
            return t->joins[i];
    return NULL;
}

sl_cache_t *sl_exec_task_cache(sl_exec_task_t *t, int op)
{
    for (int i = 0; i < t->count; i++)
        if (t->aggs[i].op->id == op)
            return t->aggs[i].cache;
    sl_join_t *j = sl_exec_task_join(t, op);
    return j ? sl_join_cache(j) : NULL;
}

int64_t sl_exec_task_stream_time(sl_exec_task_t *t, int op)
{
    for (int i = 0; i < t->count; i++)
        if (t->aggs[i].op->id == op)
            return t->aggs[i].wm.stream_time;
    sl_join_t *j = sl_exec_task_join(t, op);
    return j ? sl_join_stream_time(j) : SL_WATERMARK_NONE;
}

void sl_exec_task_bound(sl_exec_task_t *t, int64_t bound, int64_t floor)
{
    for (int i = 0; i < t->count; i++)
        sl_watermark_bound(&t->aggs[i].wm, bound, floor);
    for (int i = 0; i < t->join_count; i++)
        sl_join_bound(t->joins[i], bound, floor);
}

uint64_t sl_exec_task_late(sl_exec_task_t *t, int op)
{
    for (int i = 0; i < t->count; i++)
        if (t->aggs[i].op->id == op)
            return __atomic_load_n(&t->aggs[i].late, __ATOMIC_RELAXED); /* from /metrics */
    sl_join_t *j = sl_exec_task_join(t, op);
    return j ? sl_join_late(j) : 0;
}

void sl_exec_task_committed(sl_exec_task_t *t)
{
    for (int i = 0; i < t->count; i++) {
        sl_cache_committed(t->aggs[i].cache);
        sl_cache_span_committed(&t->aggs[i].span);
        t->aggs[i].full = 0;
    }
    for (int i = 0; i < t->join_count; i++)
        sl_join_committed(t->joins[i]);
}

int sl_exec_task_full(const sl_exec_task_t *t)
{
    for (int i = 0; t && i < t->count; i++)
        if (t->aggs[i].full)
            return 1;
    for (int i = 0; t && i < t->join_count; i++)
        if (sl_join_full(t->joins[i]))
            return 1;
    return 0;
}

/* ---- records in ------------------------------------------------------------- */

static int member_input(sl_vm_t *vm, const sl_op_t *op, const sl_agg_spec_t *m, int slot,
                        sl_agg_input_t *in)
{
    sl_vm_value_t v;
    int rc = 0;
    memset(in, 0, sizeof *in);
    if (m->kind == SL_OP_AGG_COUNT || m->kind == SL_OP_AGG_REDUCE)
        return 0;
    if (m->field)
        rc = sl_vm_field(vm, op, slot, m->field, &v);
    else
        rc = sl_vm_call_value(vm, op, m->fn, slot, &v);
    if (rc)
        return rc;
    if (v.type == SL_VM_VALUE_NUMBER) {
        in->type = SL_AGG_NUMBER;
        in->number = v.is_integer ? sl_number_int(v.integer) : sl_number_double(v.number);
    } else if (v.type == SL_VM_VALUE_STRING) {
        in->type = SL_AGG_BYTES;
        in->bytes = v.bytes;
        in->len = v.len;
    }
    return 0;
}

/* Reduce members: one step of each reducer with this window's acc. */
static int run_reducers(agg_t *a, const sl_op_t *op, sl_vm_t *vm, int slot)
{
    for (int i = 0; i < op->agg_count; i++) {
        const sl_agg_spec_t *m = &op->aggs[i];
        if (m->kind != SL_OP_AGG_REDUCE)
            continue;
        sl_agg_result_t cur = sl_aggstate_result(a->state, i);
        const char *acc = cur.type == SL_AGG_JSON ? cur.json : m->init;
        size_t len = cur.type == SL_AGG_JSON ? cur.json_len : strlen(m->init);
        const uint8_t *json;
        int32_t json_len;
        int rc = sl_vm_call_reduce(vm, op, m->fn, acc, len, slot, &json, &json_len);
        if (rc == 0)
            rc = sl_aggstate_set_reduce(a->state, i, json, (size_t)json_len);
        if (rc)
            return rc;
    }
    return 0;
}

/* Folds the record into the state of (key, start) (start 0 without a
 * window). */
static int update(agg_t *a, const sl_op_t *op, sl_vm_t *vm, int slot, const sl_record_t *meta,
                  int64_t start)
{
    const void *value;
    size_t value_len;
    int rc, found;
    if (!a->windowed)
        found = sl_cache_get(a->cache, meta->key, (size_t)meta->key_len, &value, &value_len);
    else if (sl_cache_span_holds(&a->span, a->cache, start)) /* not cached: not stored either */
        found = sl_cache_window_get_cached(a->cache, meta->key, (size_t)meta->key_len, start,
                                           &value, &value_len);
    else
        found = sl_cache_window_get(a->cache, meta->key, (size_t)meta->key_len, start, &value,
                                    &value_len);
    if (found < 0)
        return found;
    if (found)
        rc = sl_aggstate_decode(a->state, value, value_len);
    else
        sl_aggstate_reset(a->state), rc = 0;
    if (rc == 0)
        rc = sl_aggstate_add(a->state, a->inputs, meta->timestamp);
    if (rc == 0)
        rc = run_reducers(a, op, vm, slot);
    size_t n = sl_aggstate_encoded_size(a->state);
    if (rc == 0)
        rc = sl_array_reserve((void **)&a->scratch, &a->scratch_cap, n, 1) ? -ENOMEM : 0;
    if (rc)
        return sl_error_set(rc, "aggregate (%s): %s", a->op->where, sl_error_detail());
    sl_aggstate_encode(a->state, a->scratch);
    rc = a->windowed
             ? sl_cache_window_put(a->cache, meta->key, (size_t)meta->key_len, start, a->scratch, n)
             : sl_cache_put(a->cache, meta->key, (size_t)meta->key_len, a->scratch, n);
    if (rc < 0)
        return rc;
    if (!found && a->closer) {
        int r = sl_window_closer_add(a->closer, meta->key, (size_t)meta->key_len, start,
                                     start + a->spec.size);
        if (r)
            return r;
    }
    return 0;
}

/* Collects a key's stored sessions (those starting up to t + gap). */
static int collect_session(void *arg, int64_t first, const void *value, size_t value_len)
{
    agg_t *a = arg;
    if (value_len < 8)
        return sl_error_set(SL_ECORRUPT, "aggregate (%s): a stored session is %zu bytes",
                            a->op->where, value_len);
    if (sl_array_reserve((void **)&a->sessions, &a->session_cap, a->session_count + 2,
                         sizeof *a->sessions))
        return -ENOMEM;
    a->sessions[a->session_count++] = (sl_session_t){first, (int64_t)sl_get_be64(value)};
    return 0;
}

/* Session windows: the record joins, starts or bridges sessions of its key
 * (sl_session_place); absorbed sessions are merged into the new one and
 * deleted. */
static int update_session(agg_t *a, const sl_op_t *op, sl_vm_t *vm, int slot,
                          const sl_record_t *meta, int *late)
{
    const uint8_t *key = meta->key;
    size_t key_len = (size_t)meta->key_len;
    sl_session_placement_t place;
    int64_t t = meta->timestamp;
    a->session_count = 0;
    int rc =
        sl_cache_windows(a->cache, key, key_len, SL_TIME_MIN, t + a->spec.gap, collect_session, a);
    if (rc == 0)
        rc = sl_session_place(&a->spec, sl_watermark_get(&a->wm), a->sessions, a->session_count, t,
                              &place);
    if (rc)
        return rc < 0
                   ? rc
                   : sl_error_set(SL_EINVALID, "aggregate (%s): %s", op->where, sl_error_detail());
    if (place.late) {
        *late = 1;
        return 0;
    }
    sl_aggstate_reset(a->state);
    if ((rc = sl_aggstate_add(a->state, a->inputs, t)))
        return sl_error_set(rc, "aggregate (%s): %s", op->where, sl_error_detail());
    for (size_t i = place.first; i < place.first + place.count; i++) {
        const void *value;
        size_t value_len;
        int64_t first = a->sessions[i].first;
        int found = sl_cache_window_get(a->cache, key, key_len, first, &value, &value_len);
        if (found < 0)
            return found;
        if (found &&
            (rc = sl_aggstate_decode(a->other, (const uint8_t *)value + 8, value_len - 8)) == 0)
            rc = sl_aggstate_merge(a->state, a->other);
        if (rc == 0 && first != place.session.first)
            rc = sl_cache_window_delete(a->cache, key, key_len, first);
        if (rc < 0 || (rc && rc != 1))
            return sl_error_set(rc, "aggregate (%s): %s", op->where, sl_error_detail());
        if (a->closer && first != place.session.first)
            sl_window_closer_remove(a->closer, key, key_len, first);
    }
    if ((rc = run_reducers(a, op, vm, slot)))
        return rc;
    size_t n = sl_aggstate_encoded_size(a->state);
    if (sl_array_reserve((void **)&a->scratch, &a->scratch_cap, n + 8, 1))
        return -ENOMEM;
    sl_put_be64(a->scratch, (uint64_t)place.session.last);
    sl_aggstate_encode(a->state, a->scratch + 8);
    rc = sl_cache_window_put(a->cache, key, key_len, place.session.first, a->scratch, n + 8);
    if (rc < 0)
        return rc;
    a->full |= rc == 1;
    if (a->closer && (rc = sl_window_closer_add(a->closer, key, key_len, place.session.first,
                                                sl_session_close_time(&a->spec, &place.session))))
        return rc;
    return 0;
}

int sl_aggregator_record(sl_exec_task_t *t, const sl_op_t *op, sl_vm_t *vm, int slot, int *late)
{
    agg_t *a = agg_of(t, op);
    sl_record_t meta;
    *late = 0;
    if (!a)
        return sl_error_set(SL_EINVALID, "aggregate (%s): the runtime gave no state", op->where);
    int rc = sl_vm_record_meta(vm, slot, &meta);
    if (rc)
        return rc;
    if (meta.key_len < 0)
        return sl_error_set(SL_EINVALID,
                            "aggregate (%s): the record has no key (aggregates are per key: "
                            "key_by first)",
                            op->where);
    for (int i = 0; i < op->agg_count; i++) {
        if (a->read_by[i] >= 0)
            a->inputs[i] = a->inputs[a->read_by[i]];
        else if ((rc = member_input(vm, op, &op->aggs[i], slot, &a->inputs[i])))
            return rc;
    }
    sl_watermark_observe(&a->wm, meta.timestamp);
    if (!a->windowed)
        return update(a, op, vm, slot, &meta, 0);
    if (a->session) {
        rc = update_session(a, op, vm, slot, &meta, late);
        __atomic_fetch_add(&a->late, (uint64_t)*late, __ATOMIC_RELAXED);
        return rc;
    }
    sl_window_t windows[SL_OP_WINDOW_MAX_OVERLAP];
    int n = sl_window_assign(&a->spec, meta.timestamp, windows, SL_OP_WINDOW_MAX_OVERLAP), open = 0;
    if (n < 0)
        return sl_error_set(n, "aggregate (%s): %s", op->where, sl_error_detail());
    int64_t wm = sl_watermark_get(&a->wm);
    for (int i = 0; i < n; i++) {
        if (sl_window_is_closed(windows[i].end, wm))
            continue;
        open++;
        if ((rc = update(a, op, vm, slot, &meta, windows[i].start)))
            return rc;
    }
    if (open == 0) {
        __atomic_fetch_add(&a->late, 1, __ATOMIC_RELAXED);
        *late = 1;
    }
    return 0;
}

uint64_t sl_aggregator_prefetch(sl_exec_task_t *t, const sl_op_t *op, const sl_record_t *r)
{
    agg_t *a = agg_of(t, op);
    sl_window_t windows[SL_OP_WINDOW_MAX_OVERLAP];
    if (!a || a->session || r->key_len < 0)
        return 0;
    if (!a->windowed) /* running totals: the key's entry */
        return sl_cache_key_prefetch(a->cache, r->key, (size_t)r->key_len);
    if (sl_window_assign(&a->spec, r->timestamp, windows, SL_OP_WINDOW_MAX_OVERLAP) < 1)
        return 0;
    /* the oldest window: a hopping window's others are a miss each anyway */
    return sl_cache_window_prefetch(a->cache, r->key, (size_t)r->key_len, windows[0].start);
}

void sl_aggregator_prefetch_stage(sl_exec_task_t *t, const sl_op_t *op, uint64_t hash, int stage)
{
    agg_t *a = agg_of(t, op);
    if (a && hash)
        sl_cache_prefetch(a->cache, hash, stage);
}

/* ---- results out -------------------------------------------------------------- */

/* Appends ',"window_start":start,"window_end":end' to out. */
static int window_text(int64_t start, int64_t end, sl_buf_t *out)
{
    int rc;
    if ((rc = sl_buf_append(out, ",\"window_start\":", 16)) ||
        (rc = sl_number_json(sl_number_int(start), out)) ||
        (rc = sl_buf_append(out, ",\"window_end\":", 14)))
        return rc;
    return sl_number_json(sl_number_int(end), out);
}

/* The same for a result: a fixed window's from the text kept for the last
 * start (a session's end is its own). */
static int window_json(agg_t *a, int64_t start, int64_t end, sl_buf_t *json)
{
    sl_buf_t *w = &a->window_text;
    if (a->session)
        return window_text(start, end, json);
    if (!w->len || a->window_text_start != start) {
        w->len = 0;
        int rc = window_text(start, end, w);
        if (rc) {
            w->len = 0;
            return rc;
        }
        a->window_text_start = start;
    }
    return sl_buf_append(json, w->data, w->len);
}

/* The result of (key, start) from its state (value), through the op's
 * downstream ops. */
static int emit_result(sl_exec_t *x, agg_t *a, const uint8_t *key, size_t key_len, int64_t start,
                       const void *value, size_t value_len, const sl_exec_output_t *out)
{
    int64_t end = start + a->spec.size;
    if (a->session) {
        if (value_len < 8)
            return sl_error_set(SL_ECORRUPT, "aggregate (%s): a stored session is %zu bytes",
                                a->op->where, value_len);
        end = (int64_t)sl_get_be64(value); /* a session's end is its last record's time */
        value = (const uint8_t *)value + 8;
        value_len -= 8;
    }
    sl_buf_t *json = &a->result;
    json->len = 0;
    int rc = sl_aggstate_decode(a->state, value, value_len);
    if (rc == 0)
        rc = sl_buf_append(json, "{\"key\":", 7);
    if (rc == 0)
        rc = sl_buf_json_string(key, key_len, json);
    if (rc == 0 && a->windowed)
        rc = window_json(a, start, end, json);
    if (rc == 0)
        rc = sl_buf_append(json, ",\"values\":", 10);
    if (rc == 0)
        rc = sl_aggstate_json(a->state, json);
    if (rc == 0)
        rc = sl_buf_append(json, "}", 1);
    int64_t ts = a->wm.stream_time == SL_WATERMARK_NONE ? 0 : a->wm.stream_time;
    if (a->windowed && ts > end - !a->session)
        ts = end - !a->session;
    sl_record_t rec = {.key = key,
                       .key_len = (int32_t)key_len,
                       .value = (const uint8_t *)json->data,
                       .value_len = (int32_t)json->len,
                       .timestamp = ts,
                       .offset = -1};
    return rc ? rc : sl_exec_deliver(x, a->op->id, &rec, out);
}

typedef struct taking {
    sl_exec_t *x;
    agg_t *a;
    const sl_exec_output_t *out;
} taking_t;

/* One changed window's result (sl_cache_take_changed); a deleted one (a
 * session merged into another, a window expired) owes none. */
static int take_change(void *arg, const sl_record_t *change)
{
    taking_t *t = arg;
    size_t key_len = (size_t)change->key_len;
    int64_t start = 0;
    if (!change->value)
        return 0;
    int rc = t->a->windowed ? sl_store_window_split(change->key, key_len, &key_len, &start) : 0;
    return rc ? rc
              : emit_result(t->x, t->a, change->key, key_len, start, change->value,
                            (size_t)change->value_len, t->out);
}

/* The windows changed since the last flush: their results, each once, in
 * the order they first changed since the last commit. */
static int flush_updates(sl_exec_t *x, agg_t *a, const sl_exec_output_t *out)
{
    taking_t t = {x, a, out};
    if (a->op->emit != SL_EMIT_ON_UPDATE || a->unread)
        return 0;
    return sl_cache_take_changed(a->cache, take_change, &t);
}

static int flush_closed(sl_exec_t *x, agg_t *a, const sl_exec_output_t *out)
{
    sl_window_closed_t closed;
    int rc = 0;
    while (rc == 0 && sl_window_closer_pop(a->closer, sl_watermark_get(&a->wm), &closed)) {
        const void *value;
        size_t value_len;
        int found = sl_cache_window_get(a->cache, closed.key, closed.key_len, closed.start, &value,
                                        &value_len); /* 0: expired meanwhile, nothing owed */
        rc = found <= 0 ? found
                        : emit_result(x, a, closed.key, closed.key_len, closed.start, value,
                                      value_len, out);
    }
    return rc;
}

static int flush_aggregate(sl_exec_t *x, agg_t *a, const sl_exec_output_t *out)
{
    sl_cache_span_flushed(&a->span, a->wm.seen);
    int rc = a->closer ? flush_closed(x, a, out) : flush_updates(x, a, out);
    int64_t wm = sl_watermark_get(&a->wm);
    if (rc == 0 && a->windowed && wm != SL_WATERMARK_NONE && wm - a->op->retention > SL_TIME_MIN)
        rc = sl_cache_expire(a->cache, sl_window_kept_from(wm, a->op->retention, a->spec.size),
                             EXPIRE_BATCH, NULL);
    return rc;
}

/* The aggregates and joins flush in op order, which is the DAG's (an op's
 * inputs have smaller ids): what one emits downstream reaches the next
 * before that one flushes, so a join's unjoined records count in a later
 * aggregate's results of the same commit. */
int sl_exec_task_flush(sl_exec_t *x, sl_exec_task_t *t, const sl_exec_output_t *out)
{
    int rc = 0, i = 0, j = 0;
    sl_exec_set_task(x, t); /* ops downstream (FEATURES) read this task's state */
    while (rc == 0 && t && (i < t->count || j < t->join_count)) {
        if (j == t->join_count || (i < t->count && t->aggs[i].op->id < sl_join_op(t->joins[j])->id))
            rc = flush_aggregate(x, &t->aggs[i++], out);
        else
            rc = sl_join_flush(x, t->joins[j++], sl_exec_dag(x)->vm, out);
    }
    return rc;
}

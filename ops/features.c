/*
 * features.c - feature vectors from an aggregate's buckets (features.h),
 * and the FEATURES exit that writes each changed vector at commit.
 *
 * A calculator keeps the buckets of one key as they are walked (in start
 * order, their encoded states copied into one buffer, since neither LMDB
 * cursors nor caches keep values alive), then merges them newest first:
 *
 *   ranges sorted by length: r_1 < r_2 < ... (order[])
 *   for each bucket, newest first:
 *       while the bucket starts before E - r_i: results of r_i := acc; i++
 *       acc := acc merged with the bucket
 *   the ranges not passed: results := acc
 *
 * The FEATURES exit (sl_features_emit) runs when an aggregate's results
 * are flushed before a commit: each result record names a key whose
 * buckets changed. The vector is computed from the task's cache (what the
 * commit will write) at the task's stream time, written as {"key": k,
 * "ts": stream time, "features": {...}} and loaded into the VM as a record
 * for the exit to emit. A flush hands over every changed window of a key
 * (and, for emit = "on_close", closed windows in close order, keys mixed),
 * so the exit keeps a set of the keys it wrote and skips repeats until the
 * stage is reset: one vector per key and commit.
 */
#include "ops/features.h"
#include "ops/hll.h"
#include "ops/ops_internal.h"
#include "ops/window.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    int64_t start;
    size_t at, len; /* its state in bytes */
} bucket_t;

struct sl_features_calc {
    int members, ranges, count;
    int64_t bucket_size;
    int64_t range_ms[SL_OP_FEATURE_RANGES_MAX];
    int order[SL_OP_FEATURE_RANGES_MAX]; /* range indexes, shortest first */
    sl_aggset_t *set;
    sl_aggstate_t *acc, *one;
    int64_t end, from, to;
    bucket_t *buckets;
    size_t bucket_count, bucket_cap;
    sl_buf_t bytes;
    sl_agg_result_t *results; /* count of each: */
    char **names;             /* "clicks_5m" */
    sl_buf_t keys;            /* "\"clicks_5m\":" of each feature, in order */
    size_t *key_ends;         /* where each ends in keys */
    unsigned char *has_default;
    double *defaults;
    unsigned char empty[SL_OP_FEATURE_RANGES_MAX]; /* range had no bucket */
    int found;
};

/* ---- the calculator ---------------------------------------------------------- */

static void sort_ranges(sl_features_calc_t *c)
{
    for (int i = 0; i < c->ranges; i++) {
        int j = i;
        for (; j > 0 && c->range_ms[c->order[j - 1]] > c->range_ms[i]; j--)
            c->order[j] = c->order[j - 1];
        c->order[j] = i;
    }
}

/* Feature k's name, and its JSON key for sl_features_json. */
static int name_feature(sl_features_calc_t *c, const sl_op_t *agg, const sl_op_t *fop, int k)
{
    char name[SL_OP_AGG_NAME_MAX + 64];
    int n = snprintf(name, sizeof name, "%s_%s", agg->aggs[k / c->ranges].name,
                     fop->range_names[k % c->ranges]);
    if (!(c->names[k] = sl_strdup(name)))
        return -ENOMEM;
    int rc = sl_buf_json_string(name, (size_t)n, &c->keys);
    if (rc == 0)
        rc = sl_buf_append(&c->keys, ":", 1);
    c->key_ends[k] = c->keys.len;
    return rc;
}

/* What the calculator keeps of the ops: names and defaults. */
static int copy_features(sl_features_calc_t *c, const sl_op_t *agg, const sl_op_t *fop)
{
    size_t n = (size_t)c->count;
    c->results = sl_calloc(n, sizeof *c->results);
    c->names = sl_calloc(n, sizeof *c->names);
    c->key_ends = sl_calloc(n, sizeof *c->key_ends);
    c->has_default = sl_calloc(n, 1);
    c->defaults = sl_calloc(n, sizeof *c->defaults);
    if (!c->results || !c->names || !c->key_ends || !c->has_default || !c->defaults)
        return -ENOMEM;
    memcpy(c->has_default, fop->has_default, n);
    memcpy(c->defaults, fop->defaults, n * sizeof *c->defaults);
    for (int k = 0; k < c->count; k++)
        if (name_feature(c, agg, fop, k))
            return -ENOMEM;
    return 0;
}

int sl_features_calc_new(const sl_op_t *agg, const sl_op_t *fop, sl_features_calc_t **out)
{
    if (agg->kind != SL_OP_AGGREGATE || agg->window_kind != SL_OP_WINDOW_TUMBLING ||
        fop->kind != SL_OP_FEATURES || fop->range_count < 1 ||
        fop->range_count > SL_OP_FEATURE_RANGES_MAX ||
        fop->feature_count != agg->agg_count * fop->range_count)
        return sl_error_set(SL_EINVALID, "features: not a view over a tumbling aggregate");
    sl_features_calc_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->members = agg->agg_count;
    c->ranges = fop->range_count;
    c->count = fop->feature_count;
    c->bucket_size = agg->window_size;
    memcpy(c->range_ms, fop->ranges, (size_t)c->ranges * sizeof *c->range_ms);
    sort_ranges(c);
    int rc = sl_aggregate_set(agg, &c->set);
    if (rc == 0)
        rc = sl_aggstate_new(c->set, &c->acc);
    if (rc == 0)
        rc = sl_aggstate_new(c->set, &c->one);
    if (rc == 0)
        rc = copy_features(c, agg, fop);
    if (rc) {
        sl_features_calc_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void sl_features_calc_free(sl_features_calc_t *c)
{
    if (!c)
        return;
    sl_aggstate_free(c->acc);
    sl_aggstate_free(c->one);
    sl_aggset_free(c->set);
    sl_free(c->buckets);
    sl_buf_free(&c->bytes);
    sl_free(c->results);
    for (int k = 0; c->names && k < c->count; k++)
        sl_free(c->names[k]);
    sl_free(c->names);
    sl_buf_free(&c->keys);
    sl_free(c->key_ends);
    sl_free(c->has_default);
    sl_free(c->defaults);
    sl_free(c);
}

int64_t sl_features_end(int64_t t, int64_t bucket, int as_of)
{
    return sl_floor_div(t, bucket) * bucket + (as_of ? 0 : bucket);
}

void sl_features_begin(sl_features_calc_t *c, int64_t end, int64_t *from, int64_t *to)
{
    c->end = end;
    c->from = end - c->range_ms[c->order[c->ranges - 1]];
    c->to = end - c->bucket_size;
    c->bucket_count = 0;
    c->bytes.len = 0;
    *from = c->from;
    *to = c->to;
}

int sl_features_add(void *arg, int64_t window_start, const void *value, size_t value_len)
{
    sl_features_calc_t *c = arg;
    if (window_start < c->from || window_start > c->to)
        return 0;
    if (sl_array_reserve((void **)&c->buckets, &c->bucket_cap, c->bucket_count + 1,
                         sizeof *c->buckets))
        return -ENOMEM;
    c->buckets[c->bucket_count++] = (bucket_t){window_start, c->bytes.len, value_len};
    return sl_buf_append(&c->bytes, value, value_len);
}

/* Range j's results are what acc holds now. */
static void snapshot(sl_features_calc_t *c, int j, int merged)
{
    c->empty[j] = merged == 0;
    for (int m = 0; m < c->members; m++)
        c->results[m * c->ranges + j] = sl_aggstate_result(c->acc, m);
}

static int merge_bucket(sl_features_calc_t *c, const bucket_t *b)
{
    const uint8_t *state = (const uint8_t *)c->bytes.data + b->at;
    int rc = sl_aggstate_decode(c->one, state, b->len);
    if (rc == SL_ECORRUPT)
        return sl_error_set(rc,
                            "the bucket starting at %lld holds a state of another aggregate "
                            "definition (%s)",
                            (long long)b->start, sl_error_detail());
    return rc ? rc : sl_aggstate_merge(c->acc, c->one);
}

int sl_features_compute(sl_features_calc_t *c)
{
    int next = 0, merged = 0, rc = 0;
    sl_aggstate_reset(c->acc);
    for (size_t i = c->bucket_count; i-- > 0 && next < c->ranges && rc == 0;) {
        const bucket_t *b = &c->buckets[i];
        while (next < c->ranges && b->start < c->end - c->range_ms[c->order[next]])
            snapshot(c, c->order[next++], merged);
        if (next < c->ranges && (rc = merge_bucket(c, b)) == 0)
            merged++;
    }
    while (rc == 0 && next < c->ranges)
        snapshot(c, c->order[next++], merged);
    c->found = rc == 0 && merged > 0;
    return rc;
}

int sl_features_found(const sl_features_calc_t *c)
{
    return c->found;
}

int sl_features_count(const sl_features_calc_t *c)
{
    return c->count;
}

/* A default as a number: an integer when it is one (and exact). */
static sl_number_t default_number(double d)
{
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        return sl_number_int((int64_t)d);
    return sl_number_double(d);
}

sl_agg_result_t sl_features_value(const sl_features_calc_t *c, int k)
{
    sl_agg_result_t v = c->results[k];
    int range = k % c->ranges;
    if (c->has_default[k] && (c->empty[range] || v.type != SL_AGG_RESULT_NUMBER))
        sl_features_default(c, k, &v);
    return v;
}

/* ---- writing values ---------------------------------------------------------- */

int sl_features_json_value(sl_agg_result_t v, sl_buf_t *out)
{
    if (v.type != SL_AGG_RESULT_NUMBER)
        return sl_buf_append(out, "null", 4);
    return sl_number_json(v.number, out);
}

float sl_features_f32(sl_agg_result_t v)
{
    if (v.type != SL_AGG_RESULT_NUMBER)
        return NAN;
    return v.number.is_double ? (float)v.number.d : (float)v.number.i;
}

int sl_features_json_member(const sl_features_calc_t *c, int k, sl_buf_t *out)
{
    size_t at = k ? c->key_ends[k - 1] : 0;
    int rc = sl_buf_append(out, (const char *)c->keys.data + at, c->key_ends[k] - at);
    return rc ? rc : sl_features_json_value(sl_features_value(c, k), out);
}

int sl_features_json(const sl_features_calc_t *c, sl_buf_t *out)
{
    int rc = sl_buf_append(out, "{", 1);
    for (int k = 0; rc == 0 && k < c->count; k++) {
        if (k > 0)
            rc = sl_buf_append(out, ",", 1);
        if (rc == 0)
            rc = sl_features_json_member(c, k, out);
    }
    return rc ? rc : sl_buf_append(out, "}", 1);
}

const char *sl_features_name(const sl_features_calc_t *c, int k)
{
    return c->names[k];
}

int sl_features_member(const sl_features_calc_t *c, int k)
{
    return k / c->ranges;
}

int64_t sl_features_range(const sl_features_calc_t *c, int k)
{
    return c->range_ms[k % c->ranges];
}

int64_t sl_features_bucket(const sl_features_calc_t *c)
{
    return c->bucket_size;
}

const sl_aggset_t *sl_features_set(const sl_features_calc_t *c)
{
    return c->set;
}

int sl_features_default(const sl_features_calc_t *c, int k, sl_agg_result_t *value)
{
    *value =
        (sl_agg_result_t){.type = SL_AGG_RESULT_NUMBER, .number = default_number(c->defaults[k])};
    return c->has_default[k];
}

int sl_features_any_default(const sl_features_calc_t *c)
{
    for (int k = 0; k < c->count; k++)
        if (c->has_default[k])
            return 1;
    return 0;
}

/* ---- the FEATURES exit ------------------------------------------------------------- */

/* The keys written since the stage was last reset: their bytes one after
 * the other, and an open-addressing table of (place in spans) + 1. */
typedef struct written {
    sl_buf_t bytes;
    struct span {
        size_t at, len;
    } * spans;
    size_t count, span_cap;
    uint32_t *slots; /* slot_cap of them, a power of two; 0: empty */
    size_t slot_cap;
} written_t;

typedef struct emitter {
    sl_features_calc_t *calc; /* NULL until the op first runs */
    written_t written;
    sl_buf_t json;
} emitter_t;

/* The slot of key: the one holding it, or the empty one it would go to. */
static uint32_t *slot_of(const written_t *w, const uint8_t *key, size_t len)
{
    size_t mask = w->slot_cap - 1, i = (size_t)sl_hash64(key, len, 0) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t *slot = &w->slots[i];
        const struct span *sp = *slot ? &w->spans[*slot - 1] : NULL;
        if (!sp || (sp->len == len && memcmp(w->bytes.data + sp->at, key, len) == 0))
            return slot;
    }
}

/* Doubles the table (at least 64 slots) and puts every key back. */
static int grow_slots(written_t *w)
{
    size_t cap = w->slot_cap ? 2 * w->slot_cap : 64;
    uint32_t *slots = sl_calloc(cap, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    sl_free(w->slots);
    w->slots = slots;
    w->slot_cap = cap;
    for (size_t i = 0; i < w->count; i++)
        *slot_of(w, w->bytes.data + w->spans[i].at, w->spans[i].len) = (uint32_t)i + 1;
    return 0;
}

/* 1 if key was written since the reset; else notes it and returns 0;
 * -ENOMEM. */
static int written_check(written_t *w, const uint8_t *key, size_t len)
{
    if (2 * (w->count + 1) > w->slot_cap && grow_slots(w))
        return -ENOMEM;
    uint32_t *slot = slot_of(w, key, len);
    if (*slot)
        return 1;
    if (sl_array_reserve((void **)&w->spans, &w->span_cap, w->count + 1, sizeof *w->spans) ||
        sl_buf_append(&w->bytes, key, len))
        return -ENOMEM;
    w->spans[w->count++] = (struct span){w->bytes.len - len, len};
    *slot = (uint32_t)w->count;
    return 0;
}

static void written_reset(written_t *w)
{
    if (w->count)
        memset(w->slots, 0, w->slot_cap * sizeof *w->slots);
    w->count = 0;
    w->bytes.len = 0;
}

static void written_free(written_t *w)
{
    sl_buf_free(&w->bytes);
    sl_free(w->spans);
    sl_free(w->slots);
}

struct sl_features_emitters {
    emitter_t *by_op; /* per op id of the DAG */
    int count;
};

static emitter_t *emitter_for(sl_features_emitters_t **ep, const sl_dag_t *dag, const sl_op_t *op)
{
    sl_features_emitters_t *e = *ep;
    if (!e) {
        if (!(e = sl_calloc(1, sizeof *e)) ||
            !(e->by_op = sl_calloc((size_t)dag->op_count, sizeof *e->by_op))) {
            sl_free(e);
            return NULL;
        }
        e->count = dag->op_count;
        *ep = e;
    }
    emitter_t *m = &e->by_op[op->id];
    if (!m->calc && sl_features_calc_new(&dag->ops[op->inputs[0].op], op, &m->calc))
        return NULL;
    return m;
}

/* {"key": k, "ts": ts, "features": {...}} of the computed vector. */
static int vector_json(emitter_t *m, const sl_record_t *meta, int64_t ts)
{
    char number[32];
    int n = snprintf(number, sizeof number, ",\"ts\":%lld,\"features\":", (long long)ts);
    m->json.len = 0;
    int rc = sl_buf_append(&m->json, "{\"key\":", 7);
    if (rc == 0)
        rc = sl_buf_json_string(meta->key, (size_t)meta->key_len, &m->json);
    if (rc == 0)
        rc = sl_buf_append(&m->json, number, (size_t)n);
    if (rc == 0)
        rc = sl_features_json(m->calc, &m->json);
    return rc ? rc : sl_buf_append(&m->json, "}", 1);
}

/* The vector of meta's key at the task's stream time, from its cache. */
static int compute_vector(emitter_t *m, sl_exec_task_t *t, const sl_op_t *agg,
                          const sl_record_t *meta, int64_t *ts)
{
    int64_t from, to;
    sl_cache_t *cache = t ? sl_exec_task_cache(t, agg->id) : NULL;
    if (!cache)
        return sl_error_set(SL_EINVALID, "the runtime gave the aggregate no state");
    *ts = sl_exec_task_stream_time(t, agg->id);
    if (*ts == INT64_MIN)
        *ts = meta->timestamp;
    sl_features_begin(m->calc, sl_features_end(*ts, agg->window_size, 0), &from, &to);
    int rc = sl_cache_windows(cache, meta->key, (size_t)meta->key_len, from, to, sl_features_add,
                              m->calc);
    return rc ? rc : sl_features_compute(m->calc);
}

int sl_features_emit(sl_features_emitters_t **ep, const sl_dag_t *dag, sl_exec_task_t *t,
                     const sl_op_t *op, sl_vm_t *vm, int slot, int *out_slot)
{
    sl_record_t meta, rec = {.offset = -1};
    int64_t ts = 0; /* set by compute_vector; -O3 cannot see it */
    emitter_t *m = emitter_for(ep, dag, op);
    int rc = m ? sl_vm_record_meta(vm, slot, &meta) : -ENOMEM;
    *out_slot = -1;
    if (rc == 0 && meta.key_len >= 0)
        rc = written_check(&m->written, meta.key, (size_t)meta.key_len);
    if (rc || meta.key_len < 0)
        return rc < 0 ? rc : 0; /* 1: written already */
    if ((rc = compute_vector(m, t, &dag->ops[op->inputs[0].op], &meta, &ts)) == 0)
        rc = vector_json(m, &meta, ts);
    if (rc)
        return rc == -ENOMEM ? rc
                             : sl_error_set(rc, "features (%s): %s", op->where, sl_error_detail());
    rec.key = meta.key;
    rec.key_len = meta.key_len;
    rec.value = (const uint8_t *)m->json.data;
    rec.value_len = (int32_t)m->json.len;
    if (!sl_features_found(m->calc) && !sl_features_any_default(m->calc))
        rec.value = NULL, rec.value_len = -1; /* no vector: FEATURES answers nil */
    rec.timestamp = ts;
    sl_vm_origin_t origin = {op->view, -1, 0, 0}; /* an exit only reads its bytes */
    return sl_vm_record_load(vm, &rec, &origin, out_slot);
}

void sl_features_emitters_reset(sl_features_emitters_t *e)
{
    for (int i = 0; e && i < e->count; i++)
        written_reset(&e->by_op[i].written);
}

void sl_features_emitters_free(sl_features_emitters_t *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->count; i++) {
        sl_features_calc_free(e->by_op[i].calc);
        written_free(&e->by_op[i].written);
        sl_buf_free(&e->by_op[i].json);
    }
    sl_free(e->by_op);
    sl_free(e);
}

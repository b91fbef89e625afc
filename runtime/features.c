/*
 * features.c - the registry of feature views and their answers to
 * FEATURES, MFEATURES and FEATURES.SCHEMA (features.h; queries.h,
 * sl_feature_views_t).
 *
 * A contribution (part_t) is one :features() sink of one running pipeline:
 * a handle of its aggregate's store of its own (stores are never dropped,
 * so the handle outlives a replaced or stopped pipeline safely), a
 * calculator (ops/features.h) holding copies of the names, ranges and
 * defaults, and what the retention check needs. A view (view_t) is built
 * from the contributions that name it, every time the set changes: its
 * columns in schema order and their FEATURES.SCHEMA rows.
 * Queries take the registry's lock from open to close, so a view never
 * changes under a query (PIPELINE SUBMIT and STOP run on the server's
 * thread anyway; the lock also covers `sluice run`'s submit at start).
 *
 * A vector is computed per contribution from the store's windows of the
 * key, read in the caller's transaction, so the whole vector is one
 * committed state. Before that, the contribution's retention is checked:
 * the aggregate deletes windows that start before
 *
 *     stream time - grace - retention - window size + 1
 *
 * (ops/aggregator.c), the stream time being its task's (the key's
 * partition's), committed in the `offsets` database with the stores
 * (group sl_pipeline_time_group(), topic = the store's name). A
 * vector whose widest range starts before that point would silently miss
 * windows, so it is refused with a message saying so.
 *
 * Live vectors (not AS OF) are kept in the view's vector cache
 * (ops/features.h) for the next query of the same key in the same snapshot
 * and bucket: a hot key is answered without reading its windows again.
 */
#include "runtime/features.h"
#include "runtime/pipeline.h"

#include "ops/features.h"
#include "ops/window.h"
#include "storage/offsets.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VECTOR_CACHE_BYTES ((size_t)64 << 20) /* per view, unless set */
#define VECTOR_CACHE_PARTS 16                 /* views with more parts compute every vector */

/* One :features() sink of one pipeline. */
typedef struct part {
    struct sl_features *registry;
    char *pipeline;
    char *view;
    int serial; /* registration order: ties in the schema */
    sl_store_t *store;
    sl_features_calc_t *calc;
    int32_t partitions; /* of the store's changelog: a key's task */
    int64_t widest, retention, grace;
    char time_group[SL_GROUP_NAME_MAX + 1]; /* its stream times': */
    char time_store[SL_TOPIC_NAME_MAX + 1]; /* their "topic" */
    char **default_json;                    /* per feature; NULL where none */
    struct stream_time *times;              /* per partition, as last read */
} part_t;

/* A partition's stream time as of one committed state: the snapshot's
 * transaction id says whether it is still the one a query reads. */
struct stream_time {
    size_t txn; /* SIZE_MAX: never read */
    int found;
    int64_t value;
};

/* A column of a view: feature k of a part. */
typedef struct column {
    part_t *part;
    int k;
} column_t;

typedef struct view {
    struct sl_features *registry;
    char *name;
    part_t **parts;
    int part_count;
    column_t *columns;
    sl_feature_info_t *infos;
    int count;
    int any_default;
    sl_vector_cache_t *cache; /* live vectors of the snapshot last read */
} view_t;

struct sl_features {
    pthread_mutex_t lock;
    sl_state_t *state;
    sl_log_t *log;
    part_t **parts;
    int part_count;
    int serial;
    view_t **views;
    int view_count;
    size_t cache_bytes;                    /* each view's vector cache; 0: none */
    atomic_llong cache_hits, cache_misses; /* live vectors answered from it, computed */
};

/* ---- contributions ----------------------------------------------------------- */

static void part_free(part_t *p)
{
    if (!p)
        return;
    for (int k = 0; p->default_json && p->calc && k < sl_features_count(p->calc); k++)
        sl_free(p->default_json[k]);
    sl_free(p->default_json);
    sl_features_calc_free(p->calc);
    sl_free(p->times);
    sl_store_close(p->store);
    sl_free(p->pipeline);
    sl_free(p->view);
    sl_free(p);
}

/* The defaults as JSON text, as vectors write them. */
static int default_texts(part_t *p)
{
    int n = sl_features_count(p->calc);
    sl_agg_result_t v;
    if (!(p->default_json = sl_calloc((size_t)n, sizeof *p->default_json)))
        return -ENOMEM;
    for (int k = 0; k < n; k++) {
        sl_buf_t text = {0};
        if (!sl_features_default(p->calc, k, &v))
            continue;
        int rc = sl_features_json_value(v, &text);
        if (rc == 0)
            rc = sl_buf_append(&text, "", 1);
        if (rc) {
            sl_buf_free(&text);
            return rc;
        }
        p->default_json[k] = (char *)text.data;
    }
    return 0;
}

static int part_setup(sl_features_t *f, part_t *p, const sl_op_t *agg, const sl_op_t *fop)
{
    char store[SL_TOPIC_NAME_MAX + 1];
    snprintf(store, sizeof store, "%s.%s", p->pipeline, agg->store);
    int rc = sl_store_open_existing(f->state, store, &p->store);
    if (rc == 0)
        rc = sl_features_calc_new(agg, fop, &p->calc);
    if (rc == 0)
        rc = default_texts(p);
    if (rc)
        return rc;
    sl_topic_t *t = sl_log_topic(f->log, sl_store_changelog_topic(p->store));
    p->partitions = t ? sl_topic_config(t)->partitions : 1;
    if (!(p->times = sl_calloc((size_t)p->partitions, sizeof *p->times)))
        return -ENOMEM;
    for (int32_t i = 0; i < p->partitions; i++)
        p->times[i].txn = SIZE_MAX;
    p->retention = agg->retention;
    p->grace = agg->window_grace;
    for (int k = 0; k < fop->range_count; k++)
        if (fop->ranges[k] > p->widest)
            p->widest = fop->ranges[k];
    sl_pipeline_time_group(p->pipeline, p->time_group, sizeof p->time_group);
    snprintf(p->time_store, sizeof p->time_store, "%s", store);
    return 0;
}

static int part_new(sl_features_t *f, const char *pipeline, const sl_dag_t *dag, const sl_op_t *fop,
                    part_t **out)
{
    part_t *p = sl_calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->registry = f;
    p->pipeline = sl_strdup(pipeline);
    p->view = sl_strdup(fop->view);
    int rc = p->pipeline && p->view ? part_setup(f, p, &dag->ops[fop->inputs[0].op], fop) : -ENOMEM;
    if (rc) {
        part_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* ---- views -------------------------------------------------------------------- */

static void view_free(view_t *v)
{
    if (!v)
        return;
    sl_free(v->name);
    sl_free(v->parts);
    sl_free(v->columns);
    sl_free(v->infos);
    sl_vector_cache_free(v->cache);
    sl_free(v);
}

static const char *member_name(const column_t *c)
{
    const sl_features_calc_t *calc = c->part->calc;
    return sl_aggset_name(sl_features_set(calc), sl_features_member(calc, c->k));
}

/* Schema order: member name, then the contribution, then the feature's
 * place in it (its member's ranges in the script's order). */
static int by_schema(const void *pa, const void *pb)
{
    const column_t *a = pa, *b = pb;
    int order = strcmp(member_name(a), member_name(b));
    if (order)
        return order;
    if (a->part != b->part)
        return a->part->serial < b->part->serial ? -1 : 1;
    return (a->k > b->k) - (a->k < b->k);
}

static const char *type_of(sl_agg_kind_t kind)
{
    if (kind == SL_AGG_COUNT || kind == SL_AGG_DISTINCT)
        return "integer";
    return kind == SL_AGG_AVG ? "float" : "number";
}

static sl_feature_info_t info_of(const column_t *c)
{
    const sl_features_calc_t *calc = c->part->calc;
    int member = sl_features_member(calc, c->k);
    sl_agg_kind_t kind = sl_aggset_kind(sl_features_set(calc), member);
    return (sl_feature_info_t){
        sl_features_name(calc, c->k),  type_of(kind),
        sl_agg_kind_name(kind),        sl_aggset_name(sl_features_set(calc), member),
        sl_features_range(calc, c->k), sl_features_bucket(calc),
        c->part->default_json[c->k],   c->part->pipeline};
}

/* Columns and their rows, once the parts are in. */
static int view_columns(view_t *v)
{
    int at = 0;
    for (int i = 0; i < v->part_count; i++)
        v->count += sl_features_count(v->parts[i]->calc);
    v->columns = sl_calloc((size_t)v->count, sizeof *v->columns);
    v->infos = sl_calloc((size_t)v->count, sizeof *v->infos);
    if (!v->columns || !v->infos)
        return -ENOMEM;
    for (int i = 0; i < v->part_count; i++) {
        v->any_default |= sl_features_any_default(v->parts[i]->calc);
        for (int k = 0; k < sl_features_count(v->parts[i]->calc); k++)
            v->columns[at++] = (column_t){v->parts[i], k};
    }
    qsort(v->columns, (size_t)v->count, sizeof *v->columns, by_schema);
    for (int i = 0; i < v->count; i++)
        v->infos[i] = info_of(&v->columns[i]);
    return 0;
}

/* The view named by parts[first]'s view: every part of that name. */
static int view_new(part_t **parts, int count, int first, view_t **out)
{
    view_t *v = sl_calloc(1, sizeof *v);
    if (v)
        v->registry = parts[first]->registry;
    int rc = v && (v->name = sl_strdup(parts[first]->view)) &&
                     (v->parts = sl_calloc((size_t)count, sizeof *v->parts))
                 ? 0
                 : -ENOMEM;
    for (int i = first; rc == 0 && i < count; i++)
        if (!strcmp(parts[i]->view, v->name))
            v->parts[v->part_count++] = parts[i];
    if (rc == 0)
        rc = view_columns(v);
    if (rc == 0 && v->registry->cache_bytes)
        rc = sl_vector_cache_new(v->registry->cache_bytes, &v->cache);
    if (rc) {
        view_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

static void views_free(view_t **views, int count)
{
    for (int i = 0; i < count; i++)
        view_free(views[i]);
    sl_free(views);
}

/* 1 if an earlier part than i names the same view. */
static int seen_view(part_t **parts, int i)
{
    for (int j = 0; j < i; j++)
        if (!strcmp(parts[j]->view, parts[i]->view))
            return 1;
    return 0;
}

/* The views of parts, built anew. */
static int views_build(part_t **parts, int count, view_t ***out, int *view_count)
{
    view_t **views = sl_calloc((size_t)(count ? count : 1), sizeof *views);
    int n = 0, rc = views ? 0 : -ENOMEM;
    for (int i = 0; rc == 0 && i < count; i++)
        if (!seen_view(parts, i))
            rc = view_new(parts, count, i, &views[n++]);
    if (rc) {
        views_free(views, n);
        return rc;
    }
    *out = views;
    *view_count = n;
    return 0;
}

/* ---- the registry ------------------------------------------------------------- */

int sl_features_new(sl_state_t *state, sl_log_t *log, sl_features_t **out)
{
    sl_features_t *f = sl_calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    MDB_dbi offsets; /* made now if new: queries read it in their transactions */
    int rc = sl_state_database(state, SL_OFFSETS_DATABASE, &offsets);
    if (rc) {
        sl_free(f);
        return rc;
    }
    pthread_mutex_init(&f->lock, NULL);
    f->state = state;
    f->log = log;
    f->cache_bytes = VECTOR_CACHE_BYTES;
    *out = f;
    return 0;
}

void sl_features_cache_counts(sl_features_t *f, long long *hits, long long *misses)
{
    *hits = atomic_load(&f->cache_hits);
    *misses = atomic_load(&f->cache_misses);
}

void sl_features_set_cache_bytes(sl_features_t *f, size_t bytes)
{
    pthread_mutex_lock(&f->lock);
    f->cache_bytes = bytes;
    for (int i = 0; i < f->view_count; i++) {
        view_t *v = f->views[i];
        sl_vector_cache_free(v->cache);
        v->cache = NULL; /* stays so when no cache can be made: every vector computed */
        if (bytes)
            (void)sl_vector_cache_new(bytes, &v->cache);
    }
    pthread_mutex_unlock(&f->lock);
}

void sl_features_free(sl_features_t *f)
{
    if (!f)
        return;
    views_free(f->views, f->view_count);
    for (int i = 0; i < f->part_count; i++)
        part_free(f->parts[i]);
    sl_free(f->parts);
    pthread_mutex_destroy(&f->lock);
    sl_free(f);
}

/* A feature of fresh (made of fop) that another pipeline's part of its
 * view has; lock held. */
static int collision(sl_features_t *f, const char *pipeline, const sl_op_t *fop,
                     const part_t *fresh)
{
    for (int i = 0; i < f->part_count; i++) {
        const part_t *p = f->parts[i];
        if (strcmp(p->view, fop->view) || !strcmp(p->pipeline, pipeline))
            continue;
        for (int k = 0; k < sl_features_count(fresh->calc); k++) {
            const char *name = sl_features_name(fresh->calc, k);
            for (int j = 0; j < sl_features_count(p->calc); j++)
                if (!strcmp(name, sl_features_name(p->calc, j)))
                    return sl_error_set(SL_EINVALID,
                                        "%s: view '%s' already has a feature '%s', from pipeline "
                                        "'%s': rename the member or use another view",
                                        fop->where, fop->view, name, p->pipeline);
        }
    }
    return 0;
}

/* fresh[]: the parts made of dag's FEATURES ops, in op order. */
static int check_locked(sl_features_t *f, const char *pipeline, const sl_dag_t *dag,
                        part_t *const *fresh)
{
    int rc = 0, n = 0;
    for (int i = 0; rc == 0 && i < dag->op_count; i++)
        if (dag->ops[i].kind == SL_OP_FEATURES)
            rc = collision(f, pipeline, &dag->ops[i], fresh[n++]);
    return rc;
}

/* The parts list with pipeline's replaced by fresh ones (in *fresh). */
static int replace_parts(sl_features_t *f, const char *pipeline, part_t **fresh, int fresh_count,
                         part_t ***out, int *count)
{
    part_t **parts = sl_calloc((size_t)(f->part_count + fresh_count + 1), sizeof *parts);
    int n = 0;
    if (!parts)
        return -ENOMEM;
    for (int i = 0; i < f->part_count; i++)
        if (strcmp(f->parts[i]->pipeline, pipeline))
            parts[n++] = f->parts[i];
    for (int i = 0; i < fresh_count; i++)
        parts[n++] = fresh[i];
    *out = parts;
    *count = n;
    return 0;
}

/* Swaps in parts (and their views), freeing pipeline's old parts. */
static int install(sl_features_t *f, const char *pipeline, part_t **fresh, int fresh_count)
{
    part_t **parts;
    view_t **views;
    int count, view_count;
    int rc = replace_parts(f, pipeline, fresh, fresh_count, &parts, &count);
    if (rc == 0 && (rc = views_build(parts, count, &views, &view_count)))
        sl_free(parts);
    if (rc)
        return rc;
    for (int i = 0; i < f->part_count; i++)
        if (!strcmp(f->parts[i]->pipeline, pipeline))
            part_free(f->parts[i]);
    sl_free(f->parts);
    views_free(f->views, f->view_count);
    f->parts = parts;
    f->part_count = count;
    f->views = views;
    f->view_count = view_count;
    return 0;
}

int sl_features_register(sl_features_t *f, const char *pipeline, const sl_dag_t *dag)
{
    part_t **fresh = sl_calloc((size_t)dag->op_count, sizeof *fresh);
    int n = 0, rc = fresh ? 0 : -ENOMEM;
    for (int i = 0; rc == 0 && i < dag->op_count; i++)
        if (dag->ops[i].kind == SL_OP_FEATURES)
            rc = part_new(f, pipeline, dag, &dag->ops[i], &fresh[n++]);
    n -= rc != 0; /* the failed one was not made */
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < n; i++)
        fresh[i]->serial = ++f->serial;
    if (rc == 0 && (rc = check_locked(f, pipeline, dag, fresh)) == 0)
        rc = install(f, pipeline, fresh, n);
    pthread_mutex_unlock(&f->lock);
    for (int i = 0; rc && i < n; i++)
        part_free(fresh[i]);
    sl_free(fresh);
    return rc;
}

void sl_features_unregister(sl_features_t *f, const char *pipeline)
{
    pthread_mutex_lock(&f->lock);
    if (install(f, pipeline, NULL, 0))
        sl_report(SL_ERROR, "features", "out of memory dropping pipeline %s's views: they stay",
                  pipeline);
    pthread_mutex_unlock(&f->lock);
}

/* ---- queries ------------------------------------------------------------------ */

static int open_view(void *arg, const char *name, void **out)
{
    sl_features_t *f = arg;
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->view_count; i++)
        if (!strcmp(f->views[i]->name, name)) {
            *out = f->views[i];
            return 0; /* locked until close_view */
        }
    pthread_mutex_unlock(&f->lock);
    return sl_error_set(SL_ENOTFOUND,
                        "no feature view '%s' (views are made by :features() in "
                        "a running pipeline)",
                        name);
}

static void begin_view(void *arg, MDB_txn *txn)
{
    view_t *v = arg;
    for (int i = 0; i < v->part_count; i++) /* one committed state for all of them */
        sl_store_view_take(v->parts[i]->store, txn);
}

static void close_view(void *arg)
{
    view_t *v = arg;
    for (int i = 0; i < v->part_count; i++) /* the query's reads are over */
        sl_store_read_done(v->parts[i]->store);
    pthread_mutex_unlock(&v->registry->lock);
}

/* The committed stream time of partition in txn's state, read once per
 * committed state. 0 and *found; a failure reading it (a damaged entry
 * included). */
static int stream_time(const part_t *p, MDB_txn *txn, int32_t partition, int *found, int64_t *value)
{
    struct stream_time *st = &p->times[partition];
    if (st->txn != mdb_txn_id(txn)) {
        int64_t t = 0;
        int rc = sl_offsets_get_txn(p->registry->state, txn, p->time_group, p->time_store,
                                    partition, &t);
        if (rc && rc != SL_ENOTFOUND)
            return rc;
        st->found = rc == 0;
        st->value = t;
        st->txn = mdb_txn_id(txn);
    }
    *found = st->found;
    *value = st->value;
    return 0;
}

/* Refuses an end whose widest range starts before the windows the store
 * still surely has (see the top of the file). */
static int check_retention(const part_t *p, MDB_txn *txn, const void *key, size_t key_len,
                           int64_t end, int64_t t, int as_of)
{
    int32_t partition = sl_partition_for_key(key, key_len, p->partitions);
    int64_t stream_time_ms;
    int found, rc = stream_time(p, txn, partition, &found, &stream_time_ms);
    if (rc || !found)
        return rc; /* no stream time committed: nothing expired */
    int64_t kept =
        sl_window_kept_from(stream_time_ms - p->grace, p->retention, sl_features_bucket(p->calc));
    if (end - p->widest >= kept)
        return 0;
    return sl_error_set(SL_EINVALID,
                        "%s %lld: view '%s' needs the windows of store '%s' from %lld on, and it "
                        "keeps them only from %lld on (retention %lld ms behind the stream time "
                        "%lld of the key's partition %d): ask for a later time, or raise the "
                        "aggregate's retention",
                        as_of ? "AS OF" : "now", (long long)t, p->view, sl_store_name(p->store),
                        (long long)(end - p->widest), (long long)kept, (long long)p->retention,
                        (long long)stream_time_ms, (int)partition);
}

/* The part's features for key at t, into its calculator. */
static int part_compute(const part_t *p, MDB_txn *txn, const void *key, size_t key_len, int64_t t,
                        int as_of)
{
    int64_t from, to, end = sl_features_end(t, sl_features_bucket(p->calc), as_of);
    int rc = check_retention(p, txn, key, key_len, end, t, as_of);
    if (rc)
        return rc;
    sl_features_begin(p->calc, end, &from, &to);
    rc = sl_store_windows(p->store, txn, key, key_len, from, to, sl_features_add, p->calc);
    if (rc == 0)
        rc = sl_features_compute(p->calc);
    if (rc == SL_ECORRUPT)
        return sl_error_set(rc, "view '%s', store '%s': %s", p->view, sl_store_name(p->store),
                            sl_error_detail());
    return rc;
}

static int write_json(const view_t *v, sl_buf_t *out)
{
    int rc = sl_buf_append(out, "{", 1);
    for (int i = 0; rc == 0 && i < v->count; i++) {
        const column_t *c = &v->columns[i];
        if (i > 0)
            rc = sl_buf_append(out, ",", 1);
        if (rc == 0)
            rc = sl_features_json_member(c->part->calc, c->k, out);
    }
    return rc ? rc : sl_buf_append(out, "}", 1);
}

/* Little-endian float32s, in schema order. */
static int write_f32(const view_t *v, sl_buf_t *out)
{
    int rc = sl_buf_reserve(out, (size_t)v->count * 4);
    for (int i = 0; rc == 0 && i < v->count; i++) {
        const column_t *c = &v->columns[i];
        float f = sl_features_f32(sl_features_value(c->part->calc, c->k));
        uint32_t bits;
        memcpy(&bits, &f, 4);
        uint8_t le[4] = {(uint8_t)bits, (uint8_t)(bits >> 8), (uint8_t)(bits >> 16),
                         (uint8_t)(bits >> 24)};
        rc = sl_buf_append(out, le, 4);
    }
    return rc;
}

/* The vector of key at t, computed. */
static int compute_vector(view_t *v, MDB_txn *txn, const void *key, size_t key_len, int64_t t,
                          int as_of, int format, sl_buf_t *out)
{
    int found = 0;
    for (int i = 0; i < v->part_count; i++) {
        int rc = part_compute(v->parts[i], txn, key, key_len, t, as_of);
        if (rc)
            return rc;
        found |= sl_features_found(v->parts[i]->calc);
    }
    if (!found && !v->any_default)
        return SL_ENOTFOUND;
    return format == SL_FEATURES_F32 ? write_f32(v, out) : write_json(v, out);
}

/* A live vector comes from the view's cache when it was computed in this
 * snapshot for the same buckets (features.h, "Vector cache"). */
static int view_vector(void *arg, MDB_txn *txn, const void *key, size_t key_len, int64_t t,
                       int as_of, int format, sl_buf_t *out)
{
    view_t *v = arg;
    int64_t ends[VECTOR_CACHE_PARTS];
    const void *cached;
    size_t len, before = out->len, id = mdb_txn_id(txn);
    if (as_of || !v->cache || v->part_count > VECTOR_CACHE_PARTS)
        return compute_vector(v, txn, key, key_len, t, as_of, format, out);
    for (int i = 0; i < v->part_count; i++)
        ends[i] = sl_features_end(t, sl_features_bucket(v->parts[i]->calc), 0);
    int hit =
        sl_vector_cache_get(v->cache, id, key, key_len, format, ends, v->part_count, &cached, &len);
    atomic_fetch_add(hit ? &v->registry->cache_hits : &v->registry->cache_misses, 1);
    if (hit)
        return hit == 2 ? SL_ENOTFOUND : sl_buf_append(out, cached, len);
    int rc = compute_vector(v, txn, key, key_len, t, 0, format, out);
    if (rc == 0 || rc == SL_ENOTFOUND) { /* a cache that cannot grow is only slower */
        (void)sl_vector_cache_put(v->cache, id, key, key_len, format, ends, v->part_count,
                                  rc ? NULL : out->data + before, rc ? 0 : out->len - before,
                                  rc == SL_ENOTFOUND);
    }
    return rc;
}

static int view_schema(void *arg, const sl_feature_info_t **features, size_t *count)
{
    view_t *v = arg;
    *features = v->infos;
    *count = (size_t)v->count;
    return 0;
}

const sl_feature_views_t sl_feature_views = {open_view, begin_view, view_vector, view_schema,
                                             close_view};

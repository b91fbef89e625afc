/*
 * cmd_pipeline.c - the PIPELINE command, added to the node's RESP server:
 *
 *   PIPELINE SUBMIT name source   compile, check, start or replace -> OK
 *   PIPELINE LIST                 -> [[name, state, error], ...]
 *   PIPELINE DESCRIBE name        -> [name, n, state, s, error, e, ops, [[id,
 *                                    kind, where, in, out, errors], ...], tasks,
 *                                    [[topic, partition, committed, end, lag], ...],
 *                                    stores, [[store, changelog, partition, flushed,
 *                                    end, behind], ...]]
 *   PIPELINE STOP name            stop and forget -> OK
 */
#include "runtime/features.h"
#include "runtime/pipeline_internal.h"

#include <event2/buffer.h>

#include <stdio.h>
#include <string.h>
#include <strings.h>

static int word_is(const sl_resp_arg_t *a, const char *word)
{
    return a->len == strlen(word) && !strncasecmp(a->data, word, a->len);
}

static int copy_name(const sl_resp_arg_t *a, char *out, size_t size)
{
    if (a->len == 0 || a->len >= size || memchr(a->data, 0, a->len))
        return -1;
    memcpy(out, a->data, a->len);
    out[a->len] = 0;
    return 0;
}

static int fail(sl_reply_t *r, const char *text)
{
    sl_reply_error(r, "%s", text);
    return 1;
}

static void reply_state(sl_reply_t *r, pipeline_t *pl)
{
    char error[512];
    int failed = pipeline_failed(pl, error, sizeof error);
    sl_reply_cstr(r, failed ? "failed" : "running");
    sl_reply_cstr(r, failed ? error : "");
}

static int list(sl_pipelines_t *m, sl_reply_t *r)
{
    pthread_mutex_lock(&m->lock);
    sl_reply_array(r, (size_t)m->count);
    for (int i = 0; i < m->count; i++) {
        sl_reply_array(r, 3);
        sl_reply_cstr(r, m->list[i]->name);
        reply_state(r, m->list[i]);
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* An op's counters summed over the pipeline's workers. */
static sl_op_stats_t op_stats(const pipeline_t *pl, int op)
{
    sl_op_stats_t sum = {0, 0, 0};
    for (int w = 0; w < pl->worker_count; w++) {
        const sl_op_stats_t *st = sl_exec_stats(pl->workers[w].exec, op);
        sum.records_in += st->records_in;
        sum.records_out += st->records_out;
        sum.errors += st->errors;
    }
    return sum;
}

static void reply_ops(sl_reply_t *r, pipeline_t *pl)
{
    sl_reply_array(r, (size_t)pl->dag->op_count);
    for (int i = 0; i < pl->dag->op_count; i++) {
        const sl_op_t *op = &pl->dag->ops[i];
        sl_op_stats_t sum = op_stats(pl, i), *st = &sum;
        sl_reply_array(r, 6);
        sl_reply_int(r, i);
        sl_reply_cstr(r, sl_op_kind_name(op->kind));
        sl_reply_cstr(r, op->where);
        sl_reply_int(r, (int64_t)st->records_in);
        sl_reply_int(r, (int64_t)st->records_out);
        sl_reply_int(r, (int64_t)st->errors);
    }
}

static void reply_tasks(sl_reply_t *r, pipeline_t *pl)
{
    sl_reply_array(r, (size_t)pl->task_count);
    for (int i = 0; i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        int32_t part = sl_partition_id(t->partition);
        int64_t committed = -1, end = sl_partition_end_offset(t->partition);
        if (offsets_log_committed(pl, "in", t->topic, part, &committed))
            committed = -1;
        int64_t from = committed >= 0 ? committed : sl_partition_start_offset(t->partition);
        sl_reply_array(r, 5);
        sl_reply_cstr(r, t->topic);
        sl_reply_int(r, part);
        sl_reply_int(r, committed);
        sl_reply_int(r, end);
        sl_reply_int(r, end > from ? end - from : 0);
    }
}

typedef struct store_row {
    const char *store, *changelog;
    int32_t partition;
    int64_t flushed, end;
} store_row_t;

/* The rows of op's store, one per partition of its changelog: the offset
 * up to which LMDB holds the store (its checkpoint) and the changelog's
 * committed end. A table kept from its compacted source topic has that
 * topic as changelog, committed as far as the pipeline has read it. */
static int store_rows(pipeline_t *pl, int op, store_row_t **rows, size_t *n, size_t *cap)
{
    sl_store_t *s = pl->stores[op];
    sl_topic_t *source = pipeline_changelog_source(pl, op);
    sl_topic_t *topic = source ? source : sl_log_topic(pl->log, sl_store_changelog_topic(s));
    for (int32_t part = 0; topic && part < sl_topic_config(topic)->partitions; part++) {
        sl_partition_t *p = sl_topic_partition(topic, part);
        int64_t flushed, end = sl_partition_end_offset(p);
        if (source && offsets_log_committed(pl, "in", sl_topic_name(source), part, &end))
            end = sl_partition_start_offset(p);
        int rc = sl_store_checkpoint_read(s, part, &flushed);
        if (rc == SL_ENOTFOUND)
            flushed = sl_partition_start_offset(p);
        else if (rc)
            return rc;
        if (sl_array_reserve((void **)rows, cap, *n + 1, sizeof **rows))
            return -ENOMEM;
        (*rows)[(*n)++] = (store_row_t){sl_store_name(s), sl_topic_name(topic), part, flushed, end};
    }
    return 0;
}

/* [[store, changelog, partition, flushed, end, behind], ...]: behind is
 * what a node killed now would restore from the changelog at its next
 * start (the commits since the store's last flush into LMDB). */
static void reply_stores(sl_reply_t *r, pipeline_t *pl)
{
    store_row_t *rows = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int op = 0; rc == 0 && pl->stores && op < pl->dag->op_count; op++) /* none: stateless */
        if (pl->stores[op])
            rc = store_rows(pl, op, &rows, &n, &cap);
    if (rc) { /* the rest of DESCRIBE stands: this part says why it does not */
        sl_reply_error(r, "ERR reading the stores' checkpoints: %s", sl_error_detail());
        n = 0;
    } else {
        sl_reply_array(r, n);
    }
    for (size_t i = 0; i < n; i++) {
        sl_reply_array(r, 6);
        sl_reply_cstr(r, rows[i].store);
        sl_reply_cstr(r, rows[i].changelog);
        sl_reply_int(r, rows[i].partition);
        sl_reply_int(r, rows[i].flushed);
        sl_reply_int(r, rows[i].end);
        sl_reply_int(r, rows[i].end > rows[i].flushed ? rows[i].end - rows[i].flushed : 0);
    }
    sl_free(rows);
}

static int describe(sl_pipelines_t *m, const char *name, sl_reply_t *r)
{
    pthread_mutex_lock(&m->lock);
    pipeline_t *pl = NULL;
    for (int i = 0; i < m->count && !pl; i++)
        if (!strcmp(m->list[i]->name, name))
            pl = m->list[i];
    if (pl) {
        sl_reply_array(r, 12);
        sl_reply_cstr(r, "name");
        sl_reply_cstr(r, pl->name);
        sl_reply_cstr(r, "state");
        char error[512];
        int failed = pipeline_failed(pl, error, sizeof error);
        sl_reply_cstr(r, failed ? "failed" : "running");
        sl_reply_cstr(r, "error");
        sl_reply_cstr(r, failed ? error : "");
        sl_reply_cstr(r, "ops");
        reply_ops(r, pl);
        sl_reply_cstr(r, "tasks");
        reply_tasks(r, pl);
        sl_reply_cstr(r, "stores");
        reply_stores(r, pl);
    }
    pthread_mutex_unlock(&m->lock);
    return pl ? 0 : fail(r, "NOTFOUND no such pipeline");
}

int sl_pipelines_command(void *arg, size_t argc, const sl_resp_arg_t *argv, sl_reply_t *r)
{
    sl_pipelines_t *m = arg;
    char name[160];
    if (argc == 2 && word_is(&argv[1], "LIST"))
        return list(m, r);
    if (argc < 3 || copy_name(&argv[2], name, sizeof name))
        return fail(r, "usage: PIPELINE SUBMIT name source | LIST | DESCRIBE name | STOP name");
    if (argc == 4 && word_is(&argv[1], "SUBMIT")) {
        if (sl_pipelines_submit(m, name, argv[3].data, argv[3].len))
            return fail(r, sl_error_detail());
        sl_reply_simple(r, "OK");
        return 0;
    }
    if (argc == 3 && word_is(&argv[1], "DESCRIBE"))
        return describe(m, name, r);
    if (argc == 3 && word_is(&argv[1], "STOP")) {
        if (sl_pipelines_stop(m, name))
            return fail(r, sl_error_detail());
        sl_reply_simple(r, "OK");
        return 0;
    }
    return fail(r, "usage: PIPELINE SUBMIT name source | LIST | DESCRIBE name | STOP name");
}

/* ---- /metrics ---------------------------------------------------------- */

typedef uint64_t (*op_value_fn)(const sl_op_stats_t *st);

static uint64_t op_in(const sl_op_stats_t *st)
{
    return st->records_in;
}

static uint64_t op_out(const sl_op_stats_t *st)
{
    return st->records_out;
}

static uint64_t op_errors(const sl_op_stats_t *st)
{
    return st->errors;
}

static uint64_t op_value_sum(const pipeline_t *pl, int op, op_value_fn value)
{
    sl_op_stats_t sum = op_stats(pl, op);
    return value(&sum);
}

/* Pipeline and topic names are [A-Za-z0-9._-] and op kinds are words, so
 * no label value needs escaping here. */
static void op_family(sl_pipelines_t *m, struct evbuffer *out, const char *name, const char *help,
                      op_value_fn value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (int i = 0; i < m->count; i++) {
        pipeline_t *pl = m->list[i];
        for (int k = 0; k < pl->dag->op_count; k++)
            evbuffer_add_printf(out, "%s{pipeline=\"%s\",op=\"%d\",kind=\"%s\"} %llu\n", name,
                                pl->name, k, sl_op_kind_name(pl->dag->ops[k].kind),
                                (unsigned long long)op_value_sum(pl, k, value));
    }
}

static void task_family(sl_pipelines_t *m, struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP sluice_pipeline_lag Records of a task's partition not yet "
                             "committed.\n# TYPE sluice_pipeline_lag gauge\n");
    for (int i = 0; i < m->count; i++) {
        pipeline_t *pl = m->list[i];
        for (int k = 0; k < pl->task_count; k++) {
            task_t *t = &pl->tasks[k];
            int64_t end = sl_partition_end_offset(t->partition), committed;
            int32_t part = sl_partition_id(t->partition);
            if (offsets_log_committed(pl, "in", t->topic, part, &committed))
                committed = sl_partition_start_offset(t->partition);
            evbuffer_add_printf(
                out,
                "sluice_pipeline_lag{pipeline=\"%s\",topic=\"%s\",partition=\"%d\"} "
                "%lld\n",
                pl->name, t->topic, part, (long long)(end > committed ? end - committed : 0));
        }
    }
}

static void late_family(sl_pipelines_t *m, struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP sluice_pipeline_late_records_total Records an aggregate "
                             "found too late for every window they belong to, or a "
                             "stream-stream join found older than its stream time minus grace.\n"
                             "# TYPE sluice_pipeline_late_records_total counter\n");
    for (int i = 0; i < m->count; i++) {
        pipeline_t *pl = m->list[i];
        for (int k = 0; k < pl->dag->op_count; k++) {
            uint64_t late = 0;
            const sl_op_t *op = &pl->dag->ops[k];
            if (op->kind != SL_OP_AGGREGATE &&
                !(op->kind == SL_OP_JOIN && op->join_kind == SL_JOIN_STREAM_STREAM))
                continue;
            for (int t = 0; t < pl->task_count; t++)
                if (pl->tasks[t].state)
                    late += sl_exec_task_late(pl->tasks[t].state, k);
            evbuffer_add_printf(out,
                                "sluice_pipeline_late_records_total{pipeline=\"%s\",op=\"%d\"} "
                                "%llu\n",
                                pl->name, k, (unsigned long long)late);
        }
    }
}

void sl_pipelines_metrics(void *arg, struct evbuffer *out)
{
    sl_pipelines_t *m = arg;
    char error[8];
    pthread_mutex_lock(&m->lock);
    op_family(m, out, "sluice_pipeline_op_records_in_total", "Records an operator was given.",
              op_in);
    op_family(m, out, "sluice_pipeline_op_records_out_total", "Records an operator passed on.",
              op_out);
    op_family(m, out, "sluice_pipeline_op_errors_total",
              "Records an operator failed on (handled by on_error).", op_errors);
    task_family(m, out);
    late_family(m, out);
    evbuffer_add_printf(out,
                        "# HELP sluice_pipeline_restore_records_total Changelog records restored "
                        "into state stores since the node started.\n"
                        "# TYPE sluice_pipeline_restore_records_total counter\n"
                        "sluice_pipeline_restore_records_total %lld\n"
                        "# HELP sluice_pipeline_restoring State stores being restored now.\n"
                        "# TYPE sluice_pipeline_restoring gauge\n"
                        "sluice_pipeline_restoring %d\n",
                        (long long)atomic_load(&m->restore_records), atomic_load(&m->restoring));
    long long hits, misses;
    sl_features_cache_counts(m->features, &hits, &misses);
    evbuffer_add_printf(out,
                        "# HELP sluice_features_cache_hits_total Live feature vectors answered "
                        "from a view's vector cache.\n"
                        "# TYPE sluice_features_cache_hits_total counter\n"
                        "sluice_features_cache_hits_total %lld\n"
                        "# HELP sluice_features_cache_misses_total Live feature vectors computed "
                        "(and kept) with the vector cache on.\n"
                        "# TYPE sluice_features_cache_misses_total counter\n"
                        "sluice_features_cache_misses_total %lld\n",
                        hits, misses);
    evbuffer_add_printf(out, "# HELP sluice_pipeline_failed 1 if the pipeline stopped on an "
                             "error.\n# TYPE sluice_pipeline_failed gauge\n");
    for (int i = 0; i < m->count; i++)
        evbuffer_add_printf(out, "sluice_pipeline_failed{pipeline=\"%s\"} %d\n", m->list[i]->name,
                            pipeline_failed(m->list[i], error, sizeof error));
    pthread_mutex_unlock(&m->lock);
}

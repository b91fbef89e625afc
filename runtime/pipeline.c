/*
 * pipeline.c - one running pipeline: its setup (topics, tasks, offsets) and
 * its thread (read a batch, run it, append the outputs durably, commit).
 *
 * The batch loop, per task: copy up to BATCH records from the task's reader
 * into the batch arena (the reader's pointers only live until its next
 * call), run them through the task's stage, group what the exits emit by
 * target partition (pointers into the VM's arena, valid until the stage is
 * reset), append each group as one batch, wait until durable, and only then
 * commit the input offset: at-least-once.
 */
#include "runtime/pipeline_internal.h"
#include "storage/offsets.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define BATCH 1024

/* How long a group may wait for its feeders (task_t.feeders) before its
 * other inputs go on anyway (a feeder that never settles: input that keeps
 * coming faster than it is read). */
#define FEEDER_WAIT_MS 2000

/* Reads up to BATCH records of the task into the batch. */
static int batch_read(task_t *t, sl_record_set_t *b)
{
    sl_record_t rec;
    int rc = 0;
    sl_record_set_reset(b);
    if (!t->reader && (rc = sl_reader_open(t->partition, t->position, &t->reader)))
        return rc;
    while (b->count < BATCH && (rc = sl_reader_next(t->reader, &rec)) == 1)
        if ((rc = sl_record_set_add(b, &rec)))
            return rc;
    return rc < 0 ? rc : 0;
}

/* ---- outputs -------------------------------------------------------------- */

void sl_pipeline_time_group(const char *pipeline, char *out, size_t size)
{
    snprintf(out, size, "pipeline.%s.stream-time", pipeline);
}

void pipeline_repartition_topic(const pipeline_t *pl, int op, char *out, size_t size)
{
    snprintf(out, size, "%s.repartition.%d", pl->name, op);
}

/* The name of the topic an exit writes: its sink, or its repartition topic. */
static void exit_topic(const pipeline_t *pl, const sl_op_t *op, char *out, size_t size)
{
    if (op->kind == SL_OP_TO)
        snprintf(out, size, "%s", op->topic);
    else if (op->kind == SL_OP_AGGREGATE)
        snprintf(out, size, "%s", op->late_topic ? op->late_topic : "");
    else if (op->kind == SL_OP_FEATURES) /* the view's vectors */
        snprintf(out, size, "%s", op->view);
    else
        pipeline_repartition_topic(pl, op->id, out, size);
}

static out_group_t *group_for(worker_t *w, sl_partition_t *p)
{
    for (int i = 0; i < w->out_count; i++)
        if (w->outs[i].partition == p)
            return &w->outs[i];
    size_t cap = (size_t)w->out_cap;
    if (sl_array_reserve((void **)&w->outs, &cap, (size_t)w->out_count + 1, sizeof *w->outs))
        return NULL;
    w->out_cap = (int)cap;
    out_group_t *g = &w->outs[w->out_count++];
    *g = (out_group_t){.partition = p};
    sl_partition_ref(p);
    return g;
}

/* The partitions of exit's topic (exit NULL: the dead-letter topic), looked
 * up once per batch and referenced, so a TOPIC DELETE meanwhile makes the
 * appends fail instead of freeing them under the worker. */
static int route_for(worker_t *w, const sl_op_t *exit, route_t **out)
{
    char name[SL_TOPIC_NAME_MAX + 64];
    for (int i = 0; i < w->route_count; i++)
        if (w->routes[i].exit == exit) {
            *out = &w->routes[i];
            return 0;
        }
    if (exit)
        exit_topic(w->pl, exit, name, sizeof name);
    else
        snprintf(name, sizeof name, "%s.dlq", w->pl->name);
    sl_topic_t *t = sl_log_topic(w->pl->log, name);
    if (!t)
        return sl_error_set(SL_ENOTFOUND, "pipeline %s: topic %s is gone", w->pl->name, name);
    size_t cap = (size_t)w->route_cap;
    int32_t n = sl_topic_config(t)->partitions;
    sl_partition_t **parts = sl_calloc((size_t)n, sizeof *parts);
    if (!parts || sl_array_reserve((void **)&w->routes, &cap, (size_t)w->route_count + 1,
                                   sizeof *w->routes)) {
        sl_free(parts);
        return -ENOMEM;
    }
    w->route_cap = (int)cap;
    for (int32_t i = 0; i < n; i++) {
        parts[i] = sl_topic_partition(t, i);
        sl_partition_ref(parts[i]);
    }
    route_t *r = &w->routes[w->route_count++];
    *r = (route_t){exit, parts, n, (size_t)sl_topic_config(t)->max_batch_bytes};
    *out = r;
    return 0;
}

static void drop_routes(worker_t *w)
{
    for (int i = 0; i < w->route_count; i++) {
        for (int32_t k = 0; k < w->routes[i].count; k++)
            sl_partition_unref(w->routes[i].partitions[k]);
        sl_free(w->routes[i].partitions);
    }
    w->route_count = 0;
}

/* Queues rec for exit's topic: keyed records to Kafka's partition for the
 * key, null-key records to one partition per batch, in turn. */
static int queue_record(worker_t *w, const sl_op_t *exit, const sl_record_t *rec)
{
    route_t *r;
    int rc = route_for(w, exit, &r);
    if (rc)
        return rc;
    if (sl_record_batch_bytes(rec) > r->max_record) /* this record's error, not the pipeline's */
        return sl_error_set(SL_ETOOBIG,
                            "%s: a record of %zu bytes is over topic %s's max.batch.bytes %zu",
                            exit ? exit->where : "dead letter", sl_record_batch_bytes(rec),
                            sl_partition_topic_name(r->partitions[0]), r->max_record);
    int32_t part = rec->key_len >= 0
                       ? sl_partition_for_key(rec->key, (size_t)rec->key_len, r->count)
                       : (int32_t)(w->round_robin % (uint32_t)r->count);
    out_group_t *g = group_for(w, r->partitions[part]);
    if (!g || sl_array_reserve((void **)&g->recs, &g->cap, g->count + 1, sizeof *g->recs))
        return -ENOMEM;
    g->recs[g->count++] = *rec;
    if (exit && exit->kind == SL_OP_KEY_BY) /* exit NULL: a dead letter */
        frontiers_wrote(w->pl, w->current, rec->timestamp);
    return 0;
}

static int on_emit(void *arg, const sl_op_t *exit, const sl_record_t *rec)
{
    if (exit->kind == SL_OP_ROUTE)
        return route_hold(arg, exit, rec); /* route.c */
    return queue_record(arg, exit, rec);
}

/* A dead letter: the input record with headers saying what went wrong. */
static int dead_letter(worker_t *w, const sl_record_t *input, const char *why)
{
    dead_letter_t *d = sl_calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->next = w->dead;
    w->dead = d;
    snprintf(d->error, sizeof d->error, "%s", why);
    snprintf(d->topic, sizeof d->topic, "%s", w->current->topic);
    snprintf(d->partition, sizeof d->partition, "%d", sl_partition_id(w->current->partition));
    snprintf(d->offset, sizeof d->offset, "%lld", (long long)input->offset);
    static const char *const names[] = {"error", "source.topic", "source.partition",
                                        "source.offset"};
    const char *values[] = {d->error, d->topic, d->partition, d->offset};
    for (int i = 0; i < 4; i++)
        d->headers[i] = (sl_header_t){(const uint8_t *)names[i], (int32_t)strlen(names[i]),
                                      (const uint8_t *)values[i], (int32_t)strlen(values[i])};
    sl_record_t rec = *input;
    rec.headers = d->headers;
    rec.header_count = 4;
    return queue_record(w, NULL, &rec);
}

static int on_failed(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why)
{
    worker_t *w = arg;
    sl_report(SL_WARN, "pipeline", "%s: %s/%d offset %lld: %s", w->pl->name, w->current->topic,
              sl_partition_id(w->current->partition), (long long)input->offset, why);
    (void)op;
    if (w->dag->on_error == SL_ON_ERROR_SKIP)
        return 0;
    if (w->dag->on_error == SL_ON_ERROR_DEAD_LETTER)
        return dead_letter(w, input, why);
    pthread_mutex_lock(&w->pl->lock);
    snprintf(w->pl->error, sizeof w->pl->error, "%s/%d offset %lld: %s", w->current->topic,
             sl_partition_id(w->current->partition), (long long)input->offset, why);
    pthread_mutex_unlock(&w->pl->lock);
    return SL_EINVALID;
}

/* Remembers that p must be durable up to end before the next commit. */
static int pend(worker_t *w, sl_partition_t *p, int64_t end)
{
    for (int i = 0; i < w->pending_count; i++)
        if (w->pending[i].partition == p) {
            w->pending[i].count = (size_t)end;
            return 0;
        }
    size_t cap = (size_t)w->pending_cap;
    if (sl_array_reserve((void **)&w->pending, &cap, (size_t)w->pending_count + 1,
                         sizeof *w->pending))
        return -ENOMEM;
    w->pending_cap = (int)cap;
    sl_partition_ref(p);
    w->pending[w->pending_count++] = (out_group_t){.partition = p, .count = (size_t)end};
    return 0;
}

/* Exactly-once: copies a group's records until the commit appends them. */
static int hold(worker_t *w, const out_group_t *g)
{
    held_t *h = NULL;
    for (int i = 0; i < w->held_count && !h; i++)
        if (w->held[i].partition == g->partition)
            h = &w->held[i];
    if (!h) {
        size_t cap = (size_t)w->held_cap;
        if (sl_array_reserve((void **)&w->held, &cap, (size_t)w->held_count + 1, sizeof *w->held))
            return -ENOMEM;
        w->held_cap = (int)cap;
        h = &w->held[w->held_count++];
        if (w->held_count > w->held_made) { /* else the last commit's set, emptied */
            h->records = (sl_record_set_t){0};
            w->held_made = w->held_count;
        }
        h->partition = g->partition;
        sl_partition_ref(g->partition);
    }
    for (size_t i = 0; i < g->count; i++) {
        if (sl_record_set_add(&h->records, &g->recs[i]))
            return -ENOMEM;
        w->held_bytes += (size_t)(g->recs[i].key_len > 0 ? g->recs[i].key_len : 0) +
                         (size_t)(g->recs[i].value_len > 0 ? g->recs[i].value_len : 0) + 64;
    }
    return 0;
}

/* A frontier marker (frontiers.c) after the records held for p. */
static int hold_marker(worker_t *w, sl_partition_t *p, const sl_record_t *marker)
{
    out_group_t g = {.partition = p, .recs = (sl_record_t *)marker, .count = 1};
    return hold(w, &g);
}

/* At-least-once: a frontier marker appended now, awaited by the commit. */
static int append_marker(worker_t *w, sl_partition_t *p, const sl_record_t *marker)
{
    int64_t first;
    int rc = sl_partition_append_nowait(p, marker, 1, &first);
    if (rc == SL_EDELETED)
        rc = sl_error_set(rc, "pipeline %s: topic %s is gone", w->pl->name,
                          sl_partition_topic_name(p));
    return rc ? rc : pend(w, p, first + 1);
}

/* Appends every group (one batch per partition) without waiting: the
 * commit waits, so batches overlap with their fsyncs. Exactly-once
 * pipelines hold them for the commit instead. */
static int flush_outputs(worker_t *w)
{
    int rc = 0;
    for (int i = 0; rc == 0 && w->pl->exactly_once && i < w->out_count; i++)
        rc = hold(w, &w->outs[i]);
    for (int i = 0; rc == 0 && !w->pl->exactly_once && i < w->out_count; i++) {
        int64_t end;
        out_group_t *g = &w->outs[i];
        rc = sl_partition_append_split(g->partition, g->recs, g->count, NULL, &end);
        if (rc == SL_EDELETED)
            rc = sl_error_set(rc, "pipeline %s: topic %s is gone", w->pl->name,
                              sl_partition_topic_name(g->partition));
        if (rc == 0)
            rc = pend(w, g->partition, end);
    }
    drop_routes(w);
    for (int i = 0; i < w->out_count; i++) {
        sl_partition_unref(w->outs[i].partition);
        sl_free(w->outs[i].recs);
    }
    w->out_count = 0;
    while (w->dead) {
        dead_letter_t *d = w->dead;
        w->dead = d->next;
        sl_free(d);
    }
    return rc;
}

/* ---- the loop -------------------------------------------------------------- */

static void set_failed(pipeline_t *pl, const char *why)
{
    pthread_mutex_lock(&pl->lock);
    pl->failed = 1;
    atomic_store(&pl->failed_flag, 1);
    if (!pl->error[0])
        snprintf(pl->error, sizeof pl->error, "%s", why);
    pthread_mutex_unlock(&pl->lock);
    sl_report(SL_ERROR, "pipeline", "%s stopped: %s", pl->name, pl->error);
}

int pipeline_failed(pipeline_t *pl, char *error, size_t size)
{
    pthread_mutex_lock(&pl->lock);
    int failed = pl->failed;
    snprintf(error, size, "%s", pl->error);
    pthread_mutex_unlock(&pl->lock);
    return failed;
}

#define HELD_BYTES_MAX (32 << 20) /* exactly-once: commit early past this much output */
#define HELD_KEPT_MAX  (16 << 20) /* a partition's held bytes kept for reuse, at most */

/* Appends a held partition's records (sl_commit_append splits them into
 * batches the topic accepts). */
static int append_held(sl_commit_t *c, held_t *h)
{
    int rc =
        sl_commit_append(c, h->partition, sl_record_set_array(&h->records), h->records.count, NULL);
    if (rc == SL_EDELETED)
        rc = sl_error_set(rc, "topic %s is gone", sl_partition_topic_name(h->partition));
    return rc;
}

/* Forgets the held records; their sets keep their memory for the next
 * commit's (growing them again each commit cost a copy of everything held
 * and fresh pages), unless free_sets. */
static void drop_held(worker_t *w, int free_sets)
{
    for (int i = 0; i < w->held_count; i++)
        sl_partition_unref(w->held[i].partition);
    for (int i = 0; i < w->held_made; i++) {
        if (free_sets || w->held[i].records.bytes_cap > HELD_KEPT_MAX)
            sl_record_set_free(&w->held[i].records); /* a set of memory's worth goes */
        else
            sl_record_set_reset(&w->held[i].records);
    }
    if (free_sets)
        w->held_made = 0;
    w->held_count = 0;
    w->held_bytes = 0;
}

/* Runs what the stateful ops of w's tasks owe (aggregate results, unjoined
 * records) through their downstream ops, into the held outputs. */
static int flush_states(worker_t *w)
{
    pipeline_t *pl = w->pl;
    sl_exec_output_t out = {on_emit, on_failed, w};
    int rc = 0;
    for (int i = 0; rc == 0 && i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        if (!t->state || !pipeline_runs(w, t))
            continue;
        w->current = t;
        w->round_robin++;
        rc = sl_exec_task_flush(w->exec, t->state, &out);
        int r = flush_outputs(w);
        sl_exec_reset(w->exec);
        if (rc == 0)
            rc = r;
    }
    return rc;
}

/* Whether a cache of t has changes to commit: to the changelog, or into
 * LMDB (its flush is due, or flush_all and it has any). */
static int states_dirty(const pipeline_t *pl, task_t *t, int flush_all)
{
    for (int op = 0; t->state && op < pl->dag->op_count; op++) {
        sl_cache_t *cache = sl_exec_task_cache(t->state, op);
        if (cache &&
            (sl_cache_dirty_count(cache) ||
             (flush_all ? sl_cache_unflushed_count(cache) > 0 : sl_cache_flush_due(cache))))
            return 1;
    }
    return 0;
}

/* Whether w's tasks hold state LMDB lacks (a flush to come): what a
 * flush-all commit would write (dirty entries are unflushed too). */
static int states_unflushed(worker_t *w)
{
    pipeline_t *pl = w->pl;
    for (int i = 0; i < pl->task_count; i++)
        if (pipeline_runs(w, &pl->tasks[i]) && states_dirty(pl, &pl->tasks[i], 1))
            return 1;
    return 0;
}

sl_topic_t *pipeline_changelog_source(const pipeline_t *pl, int op)
{
    const sl_op_t *o = &pl->dag->ops[op];
    sl_topic_t *t = o->kind == SL_OP_TABLE ? sl_log_topic(pl->log, o->topic) : NULL;
    return t && sl_topic_config(t)->cleanup == SL_CLEANUP_COMPACT ? t : NULL;
}

/* Its partition part, or NULL when the store has a changelog of its own. */
static sl_partition_t *source_changelog(const pipeline_t *pl, int op, int32_t part)
{
    sl_topic_t *t = pipeline_changelog_source(pl, op);
    return t ? sl_topic_partition(t, part) : NULL;
}

/* A task's caches (to their changelog partitions) and stream times. */
static int commit_states(worker_t *w, task_t *t)
{
    pipeline_t *pl = w->pl;
    int32_t part = sl_partition_id(t->partition);
    for (int op = 0; t->state && op < pl->dag->op_count; op++) {
        sl_cache_t *cache = sl_exec_task_cache(t->state, op);
        if (!cache)
            continue;
        task_t *source = source_changelog(pl, op, part) ? groups_task(pl, t, op) : NULL;
        if (source) { /* checkpoint = the input offset this commit records */
            int rc = sl_commit_store_at(w->committer, cache, part,
                                        source->uncommitted >= 0 ? source->uncommitted
                                                                 : source->position);
            if (rc)
                return rc;
            continue;
        }
        sl_topic_t *topic = sl_log_topic(pl->log, sl_store_changelog_topic(pl->stores[op]));
        sl_partition_t *changelog = topic ? sl_topic_partition(topic, part) : NULL;
        if (!changelog)
            return sl_error_set(SL_ENOTFOUND, "pipeline %s: changelog %s/%d is gone", pl->name,
                                sl_store_changelog_topic(pl->stores[op]), part);
        int rc = sl_commit_store(w->committer, cache, changelog);
        int64_t stream_time = sl_exec_task_stream_time(t->state, op);
        if (rc == 0 && stream_time != INT64_MIN && stream_time >= 0)
            rc = sl_commit_offset(w->committer, pl->time_group, sl_store_name(pl->stores[op]), part,
                                  stream_time);
        if (rc)
            return rc;
    }
    return 0;
}

/* Exactly-once (DESIGN.md section 7): the held outputs and the input
 * offsets of w's tasks in one commit; readers see the outputs once it is
 * durable. flush_all: every state change goes into LMDB now, whatever the
 * flush interval (the worker is idle or stopping). */
static int commit_exactly_once(worker_t *w, int flush_all)
{
    pipeline_t *pl = w->pl;
    int rc = flush_states(w);
    if (rc == 0)
        rc = frontiers_markers(w, hold_marker);
    int any = w->held_count > 0 || route_pending(w);
    for (int i = 0; !any && i < pl->task_count; i++)
        any = pipeline_runs(w, &pl->tasks[i]) &&
              (pl->tasks[i].uncommitted >= 0 || states_dirty(pl, &pl->tasks[i], flush_all));
    if (rc || !any)
        return rc;
    rc = sl_commit_begin(w->committer);
    if (flush_all)
        sl_commit_flush_all(w->committer);
    for (int i = 0; rc == 0 && i < w->held_count; i++)
        rc = append_held(w->committer, &w->held[i]);
    for (int i = 0; rc == 0 && i < pl->task_count; i++)
        if (pipeline_runs(w, &pl->tasks[i]))
            rc = commit_states(w, &pl->tasks[i]);
    if (rc == 0)
        rc = offsets_log_append(pl, w->committer, w);
    for (int i = 0; rc == 0 && i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        if (pipeline_runs(w, t) && t->uncommitted >= 0)
            rc = sl_commit_offset(w->committer, pl->group, t->topic, sl_partition_id(t->partition),
                                  t->uncommitted);
    }
    if (rc == 0) /* messages for queues, into the same transaction */
        rc = route_commit(w, sl_commit_txn(w->committer));
    if (rc) {
        sl_commit_abort(w->committer);
        rc = sl_error_set(rc, "pipeline %s: commit failed: %s", pl->name, sl_error_detail());
        route_finish(w, 0);
        return rc;
    }
    rc = sl_commit_end(w->committer);
    if (rc)
        rc = sl_error_set(rc, "pipeline %s: commit failed: %s", pl->name, sl_error_detail());
    route_finish(w, rc == 0);
    if (rc)
        return rc;
    drop_held(w, 0);
    for (int i = 0; i < pl->task_count; i++) {
        if (!pipeline_runs(w, &pl->tasks[i]))
            continue;
        pl->tasks[i].uncommitted = -1;
        pipeline_task_show(&pl->tasks[i]);
        if (pl->tasks[i].state)
            sl_exec_task_committed(pl->tasks[i].state);
    }
    if (pl->has_feeders) /* a group may wait for these tasks to settle */
        sl_pipelines_notify(pl->manager);
    return 0;
}

/* Commits w's tasks: waits until every output appended since the last
 * commit is durable, then records their input offsets in LMDB. Nothing is
 * committed if an output failed. flush_all as for commit_exactly_once(). */
static int commit(worker_t *w, int flush_all)
{
    pipeline_t *pl = w->pl;
    int rc = 0;
    if (pl->exactly_once) {
        rc = commit_exactly_once(w, flush_all);
        w->committed_ms = sl_monotonic_ms();
        return rc;
    }
    rc = frontiers_markers(w, append_marker);
    for (int i = 0; i < w->pending_count; i++) {
        int r =
            sl_partition_await_durable(w->pending[i].partition, (int64_t)w->pending[i].count, -1);
        if (r && !rc)
            rc = r;
        sl_partition_unref(w->pending[i].partition);
    }
    w->pending_count = 0;
    for (int i = 0; rc == 0 && i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        int32_t part = sl_partition_id(t->partition);
        if (t->uncommitted < 0 || !pipeline_runs(w, t))
            continue;
        rc = sl_offsets_commit(pl->state, pl->group, t->topic, &part, &t->uncommitted, 1);
        if (rc == 0)
            t->uncommitted = -1;
        pipeline_task_show(t);
    }
    w->committed_ms = sl_monotonic_ms();
    return rc;
}

/* Runs count records of task t's stage (t->ran_to: the position after
 * them, applied once their outputs are out); 0 or what stopped it. */
static int run_records(worker_t *w, task_t *t, const sl_record_t *recs, size_t count, size_t *done)
{
    /* the records stay in the task's set until the batch's end (end_batch
     * resets the stage before the next read): borrowed, not copied */
    sl_vm_origin_t origin = {t->topic, sl_partition_id(t->partition), t->json, 1};
    sl_exec_output_t out = {on_emit, on_failed, w};
    int stopped = 0;
    w->current = t;
    *done = 0;
    while (*done < count && !stopped) {
        size_t n = 0, ran = 0;
        if (t->producer_count) { /* a repartition topic: frontier markers among the records */
            while (*done < count && frontiers_is_marker(&recs[*done]))
                frontiers_apply(w->pl, t, &recs[(*done)++]);
            while (*done + n < count && !frontiers_is_marker(&recs[*done + n]))
                n++;
        } else {
            n = count;
        }
        if (n)
            stopped = sl_exec_batch(w->exec, t->entry, &origin, recs + *done, n, &out, &ran);
        *done += ran;
    }
    if (*done > 0)
        t->ran_to = recs[*done - 1].offset + 1;
    return stopped;
}

/* Ends a batch of lead's tasks (lead alone, or its group): their outputs
 * out, the stage reset, their positions advanced, then a commit when one
 * is due. Returns 0, what stopped the batch, or an error. */
static int end_batch(worker_t *w, task_t *lead, int stopped)
{
    pipeline_t *pl = w->pl;
    int rc = flush_outputs(w), n = lead->member_count ? lead->member_count : 1;
    sl_exec_reset(w->exec);
    for (int i = 0; rc == 0 && i < n; i++) {
        task_t *t = lead->member_count ? &pl->tasks[lead->members[i]] : lead;
        if (t->ran_to < 0)
            continue;
        t->position = t->uncommitted = t->ran_to;
        t->ran_to = -1;
        pipeline_task_show(t);
    }
    if (rc == 0 && (stopped || sl_monotonic_ms() - w->committed_ms >= w->dag->commit_interval ||
                    w->held_bytes >= HELD_BYTES_MAX || sl_exec_task_full(lead->state)))
        rc = commit(w, 0);
    return rc == 0 ? stopped : rc;
}

/* One batch of one task: 1 if records were processed, 0 if none were
 * waiting, or an error that stops the pipeline. */
static int step(worker_t *w, task_t *t)
{
    sl_record_set_t *b = &w->batch;
    size_t done = 0;
    int rc = batch_read(t, b);
    if (rc || b->count == 0)
        return rc;
    w->round_robin++;
    sl_exec_set_task(w->exec, t->state);
    rc = end_batch(w, t, run_records(w, t, sl_record_set_array(b), b->count, &done));
    return rc < 0 ? rc : 1;
}

/* A member's next record to run, or NULL when its records are used up. */
static const sl_record_t *member_head(task_t *m)
{
    return m->in_at < m->in.count ? &sl_record_set_array(&m->in)[m->in_at] : NULL;
}

/* 1 if member m has no records waiting while a feeder of its topic has
 * records to read or to commit. */
static int waits_for_feeders(pipeline_t *pl, task_t *m)
{
    for (int i = 0; !member_head(m) && i < m->feeder_count; i++) {
        task_t *f = &pl->tasks[m->feeders[i]];
        if (atomic_load(&f->shown_uncommitted) ||
            atomic_load(&f->shown_position) < sl_partition_end_offset(f->partition))
            return 1;
    }
    return 0;
}

/* One batch of a group of co-partitioned tasks (led by lead): each member
 * reads what is waiting, then records run in event-time order across the
 * members (ties: the earlier entry), until BATCH ran or a member that had
 * records runs out (the next batch reads more, so the order holds while
 * every input has records waiting). Returns as step(). */
static int step_group(worker_t *w, task_t *lead, int keyed_only)
{
    pipeline_t *pl = w->pl;
    size_t ran = 0;
    int rc = 0, stopped = 0;
    for (int i = 0; rc == 0 && i < lead->member_count; i++) {
        task_t *m = &pl->tasks[lead->members[i]];
        if (keyed_only && w->dag->ops[m->entry].kind != SL_OP_KEY_BY)
            continue;
        if (!member_head(m)) {
            m->in_at = 0;
            rc = batch_read(m, &m->in);
        }
    }
    if (rc)
        return rc;
    int waiting = 0;
    for (int i = 0; !keyed_only && i < lead->member_count; i++)
        waiting |= waits_for_feeders(pl, &pl->tasks[lead->members[i]]);
    if (!waiting)
        lead->waiting_since = 0;
    else if (!lead->waiting_since)
        lead->waiting_since = sl_monotonic_ms();
    if (waiting && sl_monotonic_ms() - lead->waiting_since < FEEDER_WAIT_MS)
        return 0; /* a commit of the feeders wakes this worker */
    sl_exec_set_task(w->exec, lead->state);
    w->round_robin++;
    while (ran < BATCH && !stopped) {
        int fi = -1, ni = -1; /* the members with the earliest head, and the runner-up */
        const sl_record_t *head = NULL, *next = NULL;
        for (int i = 0; i < lead->member_count; i++) {
            task_t *m = &pl->tasks[lead->members[i]];
            const sl_record_t *h =
                keyed_only && w->dag->ops[m->entry].kind != SL_OP_KEY_BY ? NULL : member_head(m);
            if (h && (!head || h->timestamp < head->timestamp)) {
                ni = fi, next = head;
                fi = i, head = h;
            } else if (h && (!next || h->timestamp < next->timestamp)) {
                ni = i, next = h;
            }
        }
        if (fi < 0)
            break;
        task_t *first = &pl->tasks[lead->members[fi]];
        const sl_record_t *recs = sl_record_set_array(&first->in) + first->in_at;
        size_t n = 1, left = first->in.count - first->in_at; /* first's records before next's */
        while (n < left && ran + n < BATCH &&
               (!next || recs[n].timestamp < next->timestamp ||
                (recs[n].timestamp == next->timestamp && fi < ni)))
            n++;
        size_t done = 0;
        stopped = run_records(w, first, recs, n, &done);
        first->in_at += done;
        ran += n;
        if (!member_head(first))
            break; /* read more before going on */
    }
    rc = end_batch(w, lead, stopped);
    return rc < 0 ? rc : ran > 0;
}

/* Waits for a notify: data became visible somewhere, or a stop. The seq
 * was read before the tasks were scanned, so no notify is missed; the
 * minute's timeout is only a safety net (an idle pipeline uses no CPU),
 * unless the state has a flush to come: then the flush interval. */
static void wait_for_input(worker_t *w, uint64_t seen)
{
    pipeline_t *pl = w->pl;
    sl_pipelines_t *m = pl->manager;
    struct timespec ts;
    int64_t ms = states_unflushed(w) ? w->dag->flush_interval + 1 : 60000;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&m->wake_lock);
    while (m->wake_seq == seen && !atomic_load(&pl->stop) && !atomic_load(&pl->failed_flag))
        if (pthread_cond_timedwait(&m->wake, &m->wake_lock, &ts))
            break;
    pthread_mutex_unlock(&m->wake_lock);
}

/* Runs w's tasks once (when draining, only the keyed stages' ones): 1 if
 * any had records, 0 if none, or a stopping error. */
static int pass(worker_t *w, int keyed_only)
{
    pipeline_t *pl = w->pl;
    int progress = 0;
    for (int i = 0; i < pl->task_count && !atomic_load(&pl->stop); i++) {
        task_t *t = &pl->tasks[i];
        if (!pipeline_runs(w, t) || t->lead != i)
            continue; /* another worker's, or its lead runs it */
        if (keyed_only && !t->member_count && w->dag->ops[t->entry].kind != SL_OP_KEY_BY)
            continue;
        int rc = t->member_count ? step_group(w, t, keyed_only) : step(w, t);
        if (rc < 0)
            return rc;
        progress |= rc > 0;
    }
    return progress;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    pipeline_t *pl = w->pl;
    while (!atomic_load(&pl->stop) && !atomic_load(&pl->failed_flag)) {
        pthread_mutex_lock(&pl->manager->wake_lock);
        uint64_t seen = pl->manager->wake_seq;
        pthread_mutex_unlock(&pl->manager->wake_lock);
        int rc = pass(w, 0);
        if (rc == 0)
            rc = commit(w, 0); /* idle: commit now */
        if (rc < 0) {
            set_failed(pl, sl_error_detail());
            sl_pipelines_notify(pl->manager); /* the other workers stop too */
            break;
        }
        if (rc == 0)
            wait_for_input(w, seen);
    }
    if (commit(w, 1)) /* stopping: what was done */
        set_failed(pl, sl_error_detail());
    return NULL;
}

int pipeline_start(pipeline_t *pl)
{
    for (int i = 0; i < pl->worker_count; i++) {
        worker_t *w = &pl->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc)
            return sl_error_set(-rc, "cannot start pipeline %s: %s", pl->name, strerror(rc));
        w->running = 1;
    }
    return 0;
}

static void stop_workers(pipeline_t *pl)
{
    atomic_store(&pl->stop, 1);
    sl_pipelines_notify(pl->manager);
    for (int i = 0; i < pl->worker_count; i++)
        if (pl->workers[i].running) {
            pthread_join(pl->workers[i].thread, NULL);
            pl->workers[i].running = 0;
        }
}

/* ---- setup ------------------------------------------------------------------ */

/* Creates topic name unless it exists; partitions for a new one, which is
 * transactional when the pipeline writes it exactly once (output = 1), or
 * compacted when a table reads it (output = 0, compact = 1: the topic then
 * serves as the table's changelog). */
static int ensure_topic_as(pipeline_t *pl, const char *name, int32_t partitions, int output,
                           int compact)
{
    sl_topic_config_t cfg;
    if (sl_log_topic(pl->log, name))
        return 0;
    sl_topic_config_default(&cfg);
    cfg.partitions = partitions > 0 ? partitions : 1;
    cfg.transactional = output && pl->exactly_once;
    if (compact)
        cfg.cleanup = SL_CLEANUP_COMPACT;
    snprintf(cfg.owner, sizeof cfg.owner, "%s", pl->name);
    int rc = sl_log_create_topic(pl->log, name, &cfg, NULL);
    return rc == SL_EEXISTS ? 0 : rc;
}

static int ensure_topic(pipeline_t *pl, const char *name, int32_t partitions, int output)
{
    return ensure_topic_as(pl, name, partitions, output, 0);
}

/* Checks the sources and the widest source partition count. */
static int check_sources(pipeline_t *pl, int32_t *widest)
{
    *widest = 1;
    for (int i = 0; i < pl->dag->op_count; i++) {
        const sl_op_t *op = &pl->dag->ops[i];
        int source = op->kind == SL_OP_SOURCE || op->kind == SL_OP_TABLE;
        sl_topic_t *t = source ? sl_log_topic(pl->log, op->topic) : NULL;
        if (!source)
            continue;
        if (!t && op->partitions > 0) { /* the script declares its shape: create it */
            int rc = ensure_topic_as(pl, op->topic, op->partitions, 0, op->kind == SL_OP_TABLE);
            if (rc)
                return rc;
            t = sl_log_topic(pl->log, op->topic);
        }
        if (!t)
            return sl_error_set(SL_EINVALID,
                                "%s: no topic '%s' to read (create it first, or give "
                                "{partitions = N} to have the pipeline create it)",
                                op->where, op->topic);
        int32_t n = sl_topic_config(t)->partitions;
        if (op->partitions && op->partitions != n)
            return sl_error_set(SL_EINVALID,
                                "%s: topic '%s' has %d partitions, the script "
                                "expects %d",
                                op->where, op->topic, n, op->partitions);
        if (n > *widest)
            *widest = n;
    }
    return 0;
}

/* A pipeline writes topics of its own kind only: exactly-once ones
 * transactional topics (producers' topics cannot take its commits),
 * at-least-once ones ordinary topics (its appends would stay invisible past
 * a transactional topic's committed end). */
static int check_output(pipeline_t *pl, const sl_op_t *op)
{
    char name[SL_TOPIC_NAME_MAX + 64];
    if ((op->kind == SL_OP_AGGREGATE || op->kind == SL_OP_TABLE || op->kind == SL_OP_JOIN) &&
        !pl->exactly_once)
        return sl_error_set(SL_EINVALID,
                            "%s: %ss keep state, which needs processing = \"exactly_once\"",
                            op->where, sl_op_kind_name(op->kind));
    if (op->kind != SL_OP_TO && op->kind != SL_OP_KEY_BY && op->kind != SL_OP_FEATURES &&
        !(op->kind == SL_OP_AGGREGATE && op->late_topic))
        return 0;
    exit_topic(pl, op, name, sizeof name);
    sl_topic_t *t = sl_log_topic(pl->log, name);
    if (!t || !sl_topic_config(t)->transactional == !pl->exactly_once)
        return 0;
    if (!pl->exactly_once)
        return sl_error_set(SL_EINVALID,
                            "%s: topic '%s' is transactional (written by an exactly-once "
                            "pipeline's commits), so an at-least-once pipeline cannot write it: "
                            "set processing = \"exactly_once\" or write another topic",
                            op->where, name);
    return sl_error_set(SL_EINVALID,
                        "%s: topic '%s' is not transactional, so an exactly-once pipeline cannot "
                        "write it (producers may): let the pipeline create it ({create = true} on "
                        "a topic that does not exist yet), create it with TOPIC CREATE %s "
                        "TRANSACTIONAL, or set processing = \"at_least_once\"",
                        op->where, name, name);
}

/* Sinks must exist (or be created when the script says so); repartition
 * and dead-letter topics are the pipeline's own and made here. */
static int prepare_topics(pipeline_t *pl, int32_t widest)
{
    char name[SL_TOPIC_NAME_MAX + 64];
    int rc = 0;
    for (int i = 0; rc == 0 && i < pl->dag->op_count; i++) /* before creating anything */
        rc = check_output(pl, &pl->dag->ops[i]);
    for (int i = 0; rc == 0 && i < pl->dag->op_count; i++) {
        const sl_op_t *op = &pl->dag->ops[i];
        if (op->kind == SL_OP_TO && !sl_log_topic(pl->log, op->topic) && !op->create)
            rc = sl_error_set(SL_EINVALID,
                              "%s: no topic '%s' to write (create it, or pass "
                              "{create = true})",
                              op->where, op->topic);
        else if (op->kind == SL_OP_TO)
            rc = ensure_topic(pl, op->topic, op->partitions, 1);
        else if (op->kind == SL_OP_KEY_BY) {
            pipeline_repartition_topic(pl, op->id, name, sizeof name);
            rc = ensure_topic(pl, name, widest, 1);
        } else if (op->kind == SL_OP_FEATURES)
            rc = ensure_topic(pl, op->view, widest, 1);
    }
    snprintf(name, sizeof name, "%s.dlq", pl->name);
    if (rc == 0 && pl->dag->on_error == SL_ON_ERROR_DEAD_LETTER)
        rc = ensure_topic(pl, name, 1, 1);
    return rc;
}

static int add_task(pipeline_t *pl, int entry, sl_topic_t *t, int32_t i, int json)
{
    task_t *task = &pl->tasks[pl->task_count];
    int64_t committed;
    *task = (task_t){.entry = entry, .json = json, .uncommitted = -1, .ran_to = -1};
    task->topic = sl_strdup(sl_topic_name(t));
    if (!task->topic)
        return -ENOMEM;
    task->partition = sl_topic_partition(t, i);
    sl_partition_ref(task->partition);
    pl->task_count++;
    int rc = offsets_log_committed(pl, "in", task->topic, i, &committed);
    if (rc == SL_ENOTFOUND)
        committed = sl_partition_start_offset(task->partition);
    else if (rc)
        return rc;
    task->position = committed;
    pipeline_task_show(task);
    return 0;
}

/* 1 if every source reads JSON: then repartitioned records are JSON too. */
static int sources_json(const pipeline_t *pl)
{
    for (int i = 0; i < pl->dag->op_count; i++) {
        const sl_op_t *op = &pl->dag->ops[i];
        int source = op->kind == SL_OP_SOURCE || op->kind == SL_OP_TABLE;
        sl_topic_t *t = source ? sl_log_topic(pl->log, op->topic) : NULL;
        int format = !t                              ? SL_FORMAT_JSON
                     : op->format == SL_FORMAT_TOPIC ? (int)sl_topic_config(t)->format
                                                     : op->format;
        if (format == SL_FORMAT_RAW)
            return 0;
    }
    return 1;
}

sl_topic_t *pipeline_entry_topic(const pipeline_t *pl, const sl_op_t *op, int *json)
{
    char name[SL_TOPIC_NAME_MAX + 64];
    exit_topic(pl, op, name, sizeof name);
    int source = op->kind == SL_OP_SOURCE || op->kind == SL_OP_TABLE;
    sl_topic_t *t = sl_log_topic(pl->log, source ? op->topic : name);
    *json = sources_json(pl);
    if (t && source)
        *json = (op->format == SL_FORMAT_TOPIC ? (int)sl_topic_config(t)->format : op->format) ==
                SL_FORMAT_JSON;
    return t;
}

static int build_tasks(pipeline_t *pl)
{
    int entries[64], n = sl_exec_entries(pl->exec, entries, 64), total = 0, json;
    if (n > 64)
        return sl_error_set(SL_EINVALID, "pipeline %s has more than 64 stages", pl->name);
    for (int i = 0; i < n; i++) {
        sl_topic_t *t = pipeline_entry_topic(pl, &pl->dag->ops[entries[i]], &json);
        total += t ? sl_topic_config(t)->partitions : 0;
    }
    pl->tasks = sl_calloc((size_t)(total ? total : 1), sizeof *pl->tasks);
    if (!pl->tasks)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        sl_topic_t *t = pipeline_entry_topic(pl, &pl->dag->ops[entries[i]], &json);
        for (int32_t p = 0; t && p < sl_topic_config(t)->partitions; p++) {
            int rc = add_task(pl, entries[i], t, p, json);
            if (rc)
                return rc;
        }
    }
    int rc = groups_build(pl);
    return rc ? rc : frontiers_find(pl);
}

static int compile_worker(pipeline_t *pl, worker_t *w)
{
    char chunk[160];
    snprintf(chunk, sizeof chunk, "%s.lua", pl->name);
    int rc = sl_vm_new(NULL, &w->vm);
    if (rc == 0)
        rc = sl_vm_compile(w->vm, chunk, pl->source, pl->len, &w->dag);
    if (rc == 0 && w->dag->name && strcmp(w->dag->name, pl->name))
        rc = sl_error_set(SL_EINVALID, "%s: the script names itself '%s' but is submitted as '%s'",
                          chunk, w->dag->name, pl->name);
    if (rc == 0 && w->index > 0 && !sl_dag_equal(w->dag, pl->workers[0].dag))
        rc = sl_error_set(SL_EINVALID,
                          "%s: the script builds a different pipeline each time it "
                          "runs (math.random, os.time or pairs() order?)",
                          chunk);
    if (rc == 0)
        rc = sl_exec_new(w->dag, &w->exec);
    if (rc == 0)
        rc = sl_commit_new(pl->state, &w->committer);
    if (rc == 0 && w->index == 0)
        pl->exactly_once = w->dag->processing != SL_PROCESSING_AT_LEAST_ONCE;
    return rc;
}

/* Compiles the script in worker 0's VM (the shape for the setup). */
static int compile(pipeline_t *pl, int max_workers)
{
    pl->workers = sl_calloc((size_t)max_workers, sizeof *pl->workers);
    if (!pl->workers)
        return -ENOMEM;
    pl->workers[0].pl = pl;
    pl->worker_count = 1;
    int rc = compile_worker(pl, &pl->workers[0]);
    pl->dag = pl->workers[0].dag;
    pl->exec = pl->workers[0].exec;
    return rc;
}

/* The other workers, one VM each: as many as lead tasks, up to
 * max_workers; then the tasks are dealt out to them. */
static int compile_more(pipeline_t *pl, int max_workers)
{
    int leads = 0;
    for (int i = 0; i < pl->task_count; i++)
        leads += pl->tasks[i].lead == i;
    int want = leads < max_workers ? leads : max_workers;
    while (pl->worker_count < want) {
        worker_t *w = &pl->workers[pl->worker_count];
        w->pl = pl;
        w->index = pl->worker_count++;
        int rc = compile_worker(pl, w);
        if (rc)
            return rc;
    }
    groups_assign_workers(pl);
    return 0;
}

/* ---- state ------------------------------------------------------------------- */

typedef struct restore_watch {
    sl_pipelines_t *m;
    int64_t records; /* counted into m so far */
} restore_watch_t;

static void report_restore(void *arg, const sl_restore_progress_t *p)
{
    restore_watch_t *watch = arg;
    atomic_fetch_add(&watch->m->restore_records, (long long)(p->records - watch->records));
    watch->records = p->records;
    sl_report(SL_INFO, "pipeline",
              "restoring %s partition %d: %lld of %lld changelog records (%lld entries, %.1f s)",
              p->store, (int)p->partition, (long long)(p->position - p->from),
              (long long)(p->to - p->from), (long long)p->entries, p->seconds);
}

/* 1 if op keeps state in a store: an aggregate, a table, a join but a
 * stream-table one. */
static int has_store(const sl_op_t *op)
{
    return op->kind == SL_OP_AGGREGATE || op->kind == SL_OP_TABLE ||
           (op->kind == SL_OP_JOIN && op->join_kind != SL_JOIN_STREAM_TABLE);
}

/* Opens the store of op (has_store) and makes its changelog topic. */
static int open_store(pipeline_t *pl, const sl_op_t *op, int32_t widest)
{
    sl_topic_config_t cfg;
    int window = (op->kind == SL_OP_AGGREGATE && op->window_kind) ||
                 (op->kind == SL_OP_JOIN && op->join_kind == SL_JOIN_STREAM_STREAM);
    int rc = sl_store_open(pl->state, pl->name, op->store, window ? SL_STORE_WINDOW : SL_STORE_KV,
                           &pl->stores[op->id]);
    const char *changelog = rc ? NULL : sl_store_changelog_topic(pl->stores[op->id]);
    if (rc == 0 && !source_changelog(pl, op->id, 0) && !sl_log_topic(pl->log, changelog)) {
        sl_changelog_topic_config(&cfg, widest, pl->name);
        rc = sl_log_create_topic(pl->log, changelog, &cfg, NULL);
        rc = rc == SL_EEXISTS ? 0 : rc;
    }
    if (rc == 0 && op->late_topic)
        rc = ensure_topic(pl, op->late_topic, 1, 1);
    return rc;
}

/* Restores what lead task t's stores miss from their changelogs. */
static int restore_task(pipeline_t *pl, task_t *t)
{
    int32_t part = sl_partition_id(t->partition);
    sl_store_t **stores = sl_calloc((size_t)pl->dag->op_count, sizeof *stores);
    int rc = stores ? groups_stores(pl, t, stores) : -ENOMEM; /* t's stage's only */
    for (int op = 0; rc == 0 && op < pl->dag->op_count; op++) {
        int64_t from;
        if (!stores[op])
            continue;
        sl_topic_t *topic = sl_log_topic(pl->log, sl_store_changelog_topic(pl->stores[op]));
        sl_partition_t *changelog = topic ? sl_topic_partition(topic, part) : NULL;
        restore_watch_t watch = {pl->manager, 0};
        sl_restore_options_t opts = {.progress = report_restore, .progress_arg = &watch, .to = -1};
        sl_partition_t *own = source_changelog(pl, op, part);
        task_t *source = own ? groups_task(pl, t, op) : NULL;
        if (source) { /* the table's own topic, up to what the table committed */
            changelog = own;
            opts.source = 1;
            opts.to = source->position;
        }
        if (changelog &&
            (rc = sl_store_restore_needed(pl->stores[op], changelog, opts.to, &from)) == 1) {
            atomic_fetch_add(&pl->manager->restoring, 1);
            rc = sl_store_restore(pl->stores[op], changelog, &opts, NULL);
            atomic_fetch_sub(&pl->manager->restoring, 1);
        }
    }
    sl_free(stores);
    return rc;
}

/* Restoring the lead tasks' stores on several threads: while one writes
 * a batch (LMDB has one writer), the others read, sort and reduce theirs.
 * (window_bench, 10 M records: 2.43 s on one thread, 1.73 s on two.) */
typedef struct restorer {
    pipeline_t *pl;
    atomic_int next; /* the next task to take */
    pthread_mutex_t lock;
    int rc; /* the first failure, and its message */
    char detail[512];
} restorer_t;

static void *restore_thread(void *arg)
{
    restorer_t *r = arg;
    int i;
    while ((i = atomic_fetch_add(&r->next, 1)) < r->pl->task_count) {
        pthread_mutex_lock(&r->lock);
        int failed = r->rc;
        pthread_mutex_unlock(&r->lock);
        if (failed)
            break;
        int rc = r->pl->tasks[i].lead == i ? restore_task(r->pl, &r->pl->tasks[i]) : 0;
        pthread_mutex_lock(&r->lock);
        if (rc && !r->rc) {
            r->rc = rc;
            snprintf(r->detail, sizeof r->detail, "%s", sl_error_detail());
        }
        pthread_mutex_unlock(&r->lock);
    }
    return NULL;
}

/* Restores every lead task's stores, on as many threads as the pipeline
 * has workers (this one among them). */
static int restore_tasks(pipeline_t *pl)
{
    restorer_t r = {.pl = pl};
    int extra = 0, want = pl->worker_count < pl->task_count ? pl->worker_count : pl->task_count;
    pthread_t *threads = want > 1 ? sl_calloc((size_t)want, sizeof *threads) : NULL;
    pthread_mutex_init(&r.lock, NULL);
    atomic_init(&r.next, 0);
    while (threads && extra + 1 < want &&
           pthread_create(&threads[extra], NULL, restore_thread, &r) == 0)
        extra++; /* fewer threads (or none) when the system has none to give */
    restore_thread(&r);
    for (int i = 0; i < extra; i++)
        pthread_join(threads[i], NULL);
    sl_free(threads);
    pthread_mutex_destroy(&r.lock);
    return r.rc ? sl_error_set(r.rc, "%s", r.detail) : 0;
}

/* Makes lead task t's state (on the worker that runs it) once its stores
 * are restored. */
static int open_task_state(pipeline_t *pl, task_t *t, int32_t widest)
{
    int32_t part = sl_partition_id(t->partition);
    int64_t *times = sl_calloc((size_t)pl->dag->op_count, sizeof *times);
    sl_store_t **stores = sl_calloc((size_t)pl->dag->op_count, sizeof *stores);
    int rc = times && stores ? groups_stores(pl, t, stores) : -ENOMEM; /* t's stage's only */
    for (int op = 0; rc == 0 && op < pl->dag->op_count; op++) {
        times[op] = INT64_MIN;
        if (!stores[op])
            continue;
        int r = offsets_log_committed(pl, "time", sl_store_name(pl->stores[op]), part, &times[op]);
        rc = r == SL_ENOTFOUND ? 0 : r;
    }
    if (rc == 0)
        rc = sl_exec_task_new(pl->workers[t->worker].exec, stores, times, part, widest, &t->state);
    if (rc == 0) /* behind a repartition: held until its writers say how far they are */
        frontiers_bound(pl, t);
    sl_free(times);
    sl_free(stores);
    return rc;
}

static int prepare_state(pipeline_t *pl, int32_t widest)
{
    int any = 0, rc = 0;
    for (int i = 0; i < pl->dag->op_count; i++)
        any |= has_store(&pl->dag->ops[i]);
    if (!any)
        return 0;
    sl_pipeline_time_group(pl->name, pl->time_group, sizeof pl->time_group);
    if (!(pl->stores = sl_calloc((size_t)pl->dag->op_count, sizeof *pl->stores)))
        return -ENOMEM;
    for (int i = 0; rc == 0 && i < pl->dag->op_count; i++)
        if (has_store(&pl->dag->ops[i]))
            rc = open_store(pl, &pl->dag->ops[i], widest);
    if (rc == 0)
        rc = restore_tasks(pl);
    for (int i = 0; rc == 0 && i < pl->task_count; i++)
        if (pl->tasks[i].lead == i) /* members share their lead's */
            rc = open_task_state(pl, &pl->tasks[i], widest);
    return rc;
}

int pipeline_prepare(sl_pipelines_t *m, const char *name, const char *source, size_t len,
                     pipeline_t **out)
{
    pipeline_t *pl = sl_calloc(1, sizeof *pl);
    int32_t widest;
    if (!pl)
        return -ENOMEM;
    pthread_mutex_init(&pl->lock, NULL);
    pl->manager = m;
    pl->log = m->log;
    pl->state = m->state;
    pl->name = sl_strdup(name);
    pl->source = sl_malloc(len + 1);
    int rc = pl->name && pl->source ? 0 : -ENOMEM;
    if (rc == 0) {
        memcpy(pl->source, source, len);
        pl->source[len] = 0;
        pl->len = len;
        snprintf(pl->group, sizeof pl->group, "pipeline.%s", name);
        rc = compile(pl, m->workers);
    }
    if (rc == 0 && (rc = route_prepare(pl)) == 0 && (rc = check_sources(pl, &widest)) == 0 &&
        (rc = prepare_topics(pl, widest)) == 0 && (rc = offsets_log_open(pl)) == 0 &&
        (rc = build_tasks(pl)) == 0 && (rc = compile_more(pl, m->workers)) == 0)
        rc = prepare_state(pl, widest);
    if (rc) {
        pipeline_free(pl);
        return rc;
    }
    *out = pl;
    return 0;
}

void pipeline_drain_and_free(pipeline_t *pl)
{
    char error[512];
    int was_running = pl->worker_count > 0 && pl->workers[0].running;
    stop_workers(pl);
    /* the workers are gone: worker 0's VM drains on this thread */
    atomic_store(&pl->stop, 0);
    atomic_store(&pl->draining, 1);
    pl->workers[0].all_tasks = 1;
    while (was_running && !pipeline_failed(pl, error, sizeof error)) {
        int rc = pass(&pl->workers[0], 1); /* every keyed task */
        if (rc < 0)
            set_failed(pl, sl_error_detail());
        if (rc <= 0)
            break;
    }
    if (was_running && commit(&pl->workers[0], 1))
        set_failed(pl, sl_error_detail());
    pipeline_free(pl);
}

static void worker_free(worker_t *w)
{
    route_free(w);
    for (int i = 0; i < w->pending_count; i++)
        sl_partition_unref(w->pending[i].partition);
    sl_free(w->pending);
    sl_record_set_free(&w->batch);
    sl_free(w->outs);
    drop_routes(w);
    sl_free(w->routes);
    drop_held(w, 1);
    sl_free(w->held);
    sl_commit_free(w->committer);
    sl_exec_free(w->exec);
    sl_dag_free(w->dag);
    if (w->vm)
        sl_vm_free(w->vm);
}

void pipeline_free(pipeline_t *pl)
{
    stop_workers(pl);
    for (int i = 0; i < pl->task_count; i++) {
        sl_reader_close(pl->tasks[i].reader);
        sl_partition_unref(pl->tasks[i].partition);
        sl_free(pl->tasks[i].topic);
        sl_exec_task_free(pl->tasks[i].state);
        sl_free(pl->tasks[i].members);
        frontiers_free(&pl->tasks[i]);
        sl_record_set_free(&pl->tasks[i].in);
    }
    sl_free(pl->tasks);
    for (int i = 0; pl->stores && i < pl->dag->op_count; i++)
        sl_store_close(pl->stores[i]);
    sl_free(pl->stores);
    offsets_log_free(pl);
    for (int i = 0; pl->workers && i < pl->worker_count; i++)
        worker_free(&pl->workers[i]);
    sl_free(pl->workers);
    pthread_mutex_destroy(&pl->lock);
    sl_free(pl->name);
    sl_free(pl->source);
    sl_free(pl);
}

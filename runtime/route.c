/*
 * route.c - the :route() sink of a pipeline (DESIGN.md sections 7 and 9):
 * messages held by each worker until its commit, then routed and enqueued
 * inside the commit's LMDB transaction, so that each one is enqueued
 * exactly once, together with the outputs, state and input offsets of the
 * records it came from.
 *
 * During a batch, what a ROUTE exit emits (the record's value as the
 * payload, and sl_exec_route's routing key, priority and headers) is copied
 * into the worker's held messages. At the commit (commit_exactly_once in
 * pipeline.c, which holds the node's commit lock and write transaction):
 *
 *   1. route_commit publishes each held message into the worker's queue
 *      batch (sl_queue_batch_publish: through its exchange's bindings, one
 *      copy staged per queue reached), then sl_queue_batch_write appends
 *      the copies to the queues' logs, waits until they are durable and
 *      writes their ends (lso) and the queues' delivery state into the
 *      commit's transaction;
 *   2. sl_commit_end commits that transaction with the pipeline's own
 *      outputs, state and offsets;
 *   3. route_finish makes the messages ready (sl_queue_batch_finish with
 *      committed = 1), or, when the commit failed, cuts the appends and
 *      keeps the held messages.
 *
 * A crash before 2's LMDB commit leaves the queue logs beyond their lso,
 * which the node cuts when it restarts (queue logs are transactional),
 * and the inputs uncommitted, so the records are processed and routed
 * again; a crash after it finds messages and offsets committed together.
 * Either way each routed message is in each queue it reaches once.
 *
 * The queue registry stays locked from 1's write to 3 (see storage.h), so
 * nothing delivers a message that might still be undone.
 *
 * A message no binding routes is counted on its exchange
 * (sluice_exchange_unroutable_total) and dropped; a queue that refuses one
 * (full with OVERFLOW reject-publish) counts it as rejected. Neither stops
 * the pipeline. An exchange deleted while the pipeline runs does.
 */
#include "runtime/pipeline_internal.h"

#include <errno.h>
#include <string.h>

/* Where a held message goes: its ROUTE op's exchange, its priority. */
typedef struct held_message {
    const sl_op_t *op;
    int32_t priority;
} held_message_t;

struct route_sink {
    sl_record_set_t messages; /* key: routing key, value: payload, headers */
    held_message_t *held;     /* held[i] goes with messages.records[i] */
    size_t held_cap;
    sl_queue_batch_t *batch;
    int staged; /* the batch may hold something of the commit in progress */
};

/* ---- setup ------------------------------------------------------------------- */

/* 1 if the exchange exists ("" always does). */
static int find_exchange(void *arg, const char *name, sl_exchange_type_t type, int64_t unroutable)
{
    (void)type;
    (void)unroutable;
    return strcmp(name, arg) == 0;
}

static int apply(sl_queues_t *qs, const sl_declaration_t *d)
{
    switch (d->kind) {
    case SL_DECLARE_EXCHANGE:
        return sl_queues_declare_exchange(qs, d->name, d->exchange_type);
    case SL_DECLARE_QUEUE:
        return sl_queues_declare_queue(qs, d->name, &d->queue_options);
    case SL_DECLARE_BIND:
        return sl_queues_bind(qs, d->name, d->queue, d->pattern, d->pattern_len, d->args,
                              d->arg_count);
    }
    return 0;
}

/* Applies the script's declarations, exchanges and queues before the
 * bindings between them, each as its command would. */
static int apply_declarations(pipeline_t *pl, sl_queues_t *qs)
{
    static const sl_declare_kind_t order[] = {SL_DECLARE_EXCHANGE, SL_DECLARE_QUEUE,
                                              SL_DECLARE_BIND};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < pl->dag->declaration_count; i++) {
            const sl_declaration_t *d = &pl->dag->declarations[i];
            int rc = d->kind == order[k] ? apply(qs, d) : 0;
            if (rc)
                return sl_error_set(rc == -ENOMEM ? rc : SL_EINVALID, "%s: %s", d->where,
                                    sl_error_detail());
        }
    return 0;
}

static int check_route(pipeline_t *pl, sl_queues_t *qs, const sl_op_t *op)
{
    if (!pl->exactly_once)
        return sl_error_set(SL_EINVALID,
                            "%s: :route() enqueues its messages exactly once through the "
                            "pipeline's commits, which needs processing = \"exactly_once\" "
                            "(s.pipeline{processing = \"exactly_once\"})",
                            op->where);
    if (!sl_queues_foreach_exchange(qs, find_exchange, op->exchange))
        return sl_error_set(SL_EINVALID,
                            "%s: no exchange '%s' (declare it with s.exchange('%s', type) or "
                            "EXCHANGE DECLARE)",
                            op->where, op->exchange, op->exchange);
    return 0;
}

int route_prepare(pipeline_t *pl)
{
    sl_queues_t *qs = pl->manager->queues;
    const sl_op_t *first = NULL;
    int rc = 0;
    for (int i = 0; i < pl->dag->op_count && !first; i++)
        if (pl->dag->ops[i].kind == SL_OP_ROUTE)
            first = &pl->dag->ops[i];
    if (!first && pl->dag->declaration_count == 0)
        return 0;
    if (!qs)
        return sl_error_set(SL_EINVALID, "%s: this node runs no work queues",
                            first ? first->where : pl->dag->declarations[0].where);
    if (first && !pl->exactly_once) /* before declaring anything */
        return check_route(pl, qs, first);
    if ((rc = apply_declarations(pl, qs)))
        return rc;
    for (int i = 0; rc == 0 && i < pl->dag->op_count; i++)
        if (pl->dag->ops[i].kind == SL_OP_ROUTE)
            rc = check_route(pl, qs, &pl->dag->ops[i]);
    return rc;
}

/* ---- holding ------------------------------------------------------------------- */

static route_sink_t *sink_of(worker_t *w)
{
    if (w->router)
        return w->router;
    route_sink_t *r = sl_calloc(1, sizeof *r);
    if (!r || sl_queue_batch_new(w->pl->manager->queues, &r->batch)) {
        sl_free(r);
        return NULL;
    }
    return w->router = r;
}

int route_hold(worker_t *w, const sl_op_t *op, const sl_record_t *rec)
{
    route_sink_t *r = sink_of(w);
    const sl_vm_route_t *m = sl_exec_route(w->exec);
    if (!r ||
        sl_array_reserve((void **)&r->held, &r->held_cap, r->messages.count + 1, sizeof *r->held))
        return sl_error_set(-ENOMEM, "pipeline %s: out of memory holding messages", w->pl->name);
    sl_record_t message = {.timestamp = rec->timestamp,
                           .key = (const uint8_t *)m->key,
                           .key_len = (int32_t)m->key_len,
                           .value = rec->value,
                           .value_len = rec->value_len,
                           .headers = m->headers,
                           .header_count = m->header_count};
    if (sl_record_set_add(&r->messages, &message))
        return sl_error_set(-ENOMEM, "pipeline %s: out of memory holding messages", w->pl->name);
    r->held[r->messages.count - 1] = (held_message_t){op, m->priority};
    w->held_bytes += m->key_len + (size_t)rec->value_len + 64; /* commits early when large */
    return 0;
}

int route_pending(const worker_t *w)
{
    return w->router && w->router->messages.count > 0;
}

/* ---- committing ------------------------------------------------------------------ */

/* Stages one held message in the batch. */
static int publish(worker_t *w, const sl_record_t *rec, const held_message_t *h)
{
    sl_queue_message_t m = {.routing_key = rec->key_len > 0 ? (const char *)rec->key : "",
                            .routing_key_len = (size_t)rec->key_len,
                            .payload = rec->value_len > 0 ? rec->value : (const uint8_t *)"",
                            .payload_len = rec->value_len,
                            .headers = rec->headers,
                            .header_count = rec->header_count,
                            .priority = h->priority,
                            .ttl_ms = -1};
    int rc = sl_queue_batch_publish(w->router->batch, h->op->exchange, &m);
    if (rc >= 0 || rc == -ENOBUFS) /* unroutable, or refused by a full queue: counted there */
        return 0;
    if (rc == SL_ENOTFOUND)
        return sl_error_set(rc, "%s: exchange '%s' is gone (deleted while the pipeline ran)",
                            h->op->where, h->op->exchange);
    return rc;
}

int route_commit(worker_t *w, MDB_txn *txn)
{
    route_sink_t *r = w->router;
    int rc = 0;
    if (!r || r->messages.count == 0)
        return 0;
    const sl_record_t *messages = sl_record_set_array(&r->messages);
    r->staged = 1;
    for (size_t i = 0; rc == 0 && i < r->messages.count; i++)
        rc = publish(w, &messages[i], &r->held[i]);
    if (rc == 0 && !sl_queue_batch_empty(r->batch))
        rc = sl_queue_batch_write(r->batch, txn);
    return rc;
}

void route_finish(worker_t *w, int committed)
{
    route_sink_t *r = w->router;
    if (!r || !r->staged)
        return;
    sl_queue_batch_finish(r->batch, committed);
    r->staged = 0;
    if (committed)
        sl_record_set_reset(&r->messages);
}

void route_free(worker_t *w)
{
    route_sink_t *r = w->router;
    if (!r)
        return;
    sl_queue_batch_free(r->batch);
    sl_record_set_free(&r->messages);
    sl_free(r->held);
    sl_free(r);
    w->router = NULL;
}

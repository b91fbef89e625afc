/*
 * queue_batch.c - staging queue changes and committing them together
 * (group commit): publishes, acks, nacks, dead letters, delivery counts.
 *
 * Staging takes effect in memory at once where that is safe: an acked or
 * rejected message leaves its consumer and becomes PENDING, so nobody
 * delivers it again; a published message is only copied into the batch,
 * one group of records per (queue, level), and becomes ready only once
 * committed. A commit then goes, under the node's commit lock and its LMDB
 * write transaction (DESIGN.md section 7):
 *
 *   1. drop-head: a queue with a length limit that its staged messages
 *      would overflow gives up its oldest ready messages, lowest priority
 *      first, and then the oldest staged ones;
 *   2. every PENDING message of the batch becomes COMMITTING;
 *   3. dead letters (nacked, expired, over their deliveries, dropped) are
 *      copied into their dead-letter queue's groups, with headers saying
 *      why;
 *   4. each group is appended (in batches of about 1 MiB, well below the
 *      log's largest), and every appended partition is awaited durable
 *      (one fsync each, shared by everything staged);
 *   5. into the transaction: each new end as the partition's lso, each
 *      level's ack floor and cursor, the ack chunks that changed, delivery
 *      counts.
 *
 * After the transaction commits, finish makes the appended records visible
 * and ready and the COMMITTING messages done; after a failure it truncates
 * what was appended and makes them ready again. The registry stays locked
 * from write to finish, so nothing can deliver a message in between.
 */
#include "storage/queue.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

enum { CHANGE_ACK, CHANGE_DEAD, CHANGE_COUNT, CHANGE_VOID };

/* Records staged for one level of one queue. */
typedef struct group {
    uint32_t slot;
    uint64_t id;
    int level;
    sl_record_set_t records; /* published, in order */
    size_t dropped;          /* leading records given up by drop-head */
    sl_record_set_t letters; /* dead letters arriving */
    int64_t first, count;    /* what was appended */
} group_t;

/* A staged change of one message. */
typedef struct change {
    int64_t offset;
    uint64_t id;
    uint32_t slot;
    uint8_t level, kind;
    const char *reason; /* CHANGE_DEAD: static text */
} change_t;

/* An ack chunk to rewrite. */
typedef struct chunk_ref {
    sl_queue_t *queue;
    int level;
    int64_t chunk;
} chunk_ref_t;

struct sl_queue_batch {
    sl_queues_t *qs;
    group_t *groups; /* [0, group_count) in use; [0, group_ready) initialised */
    size_t group_count, group_ready, group_cap;
    change_t *changes;
    size_t change_count, change_cap;
    sl_queue_t **targets; /* routing scratch */
    size_t targets_cap;
    sl_record_t *append; /* one append's records */
    size_t append_cap;
    sl_header_t *headers; /* one dead letter's headers */
    size_t headers_cap;
    chunk_ref_t *chunks;
    size_t chunk_count, chunk_cap;
    int written; /* between write and finish: the registry is locked */
    int64_t now;
};

int sl_queue_batch_new(sl_queues_t *qs, sl_queue_batch_t **out)
{
    sl_queue_batch_t *b = sl_calloc(1, sizeof *b);
    if (!b)
        return sl_error_set(-ENOMEM, "queues: out of memory");
    b->qs = qs;
    *out = b;
    return 0;
}

int sl_queue_batch_empty(const sl_queue_batch_t *b)
{
    return b->group_count == 0 && b->change_count == 0;
}

void sl_queue_batch_free(sl_queue_batch_t *b)
{
    if (!b)
        return;
    if (!sl_queue_batch_empty(b))
        sl_queue_batch_finish(b, 0);
    for (size_t i = 0; i < b->group_ready; i++) {
        sl_record_set_free(&b->groups[i].records);
        sl_record_set_free(&b->groups[i].letters);
    }
    sl_free(b->groups);
    sl_free(b->changes);
    sl_free(b->targets);
    sl_free(b->append);
    sl_free(b->headers);
    sl_free(b->chunks);
    sl_free(b);
}

/* ---- staging --------------------------------------------------------------- */

static group_t *group_for(sl_queue_batch_t *b, const sl_queue_t *q, int level)
{
    for (size_t i = 0; i < b->group_count; i++)
        if (b->groups[i].id == q->id && b->groups[i].level == level)
            return &b->groups[i];
    if (sl_array_reserve((void **)&b->groups, &b->group_cap, b->group_count + 1, sizeof *b->groups))
        return NULL;
    group_t *g = &b->groups[b->group_count];
    if (b->group_count == b->group_ready) {
        memset(g, 0, sizeof *g);
        b->group_ready++;
    }
    g->slot = q->slot;
    g->id = q->id;
    g->level = level;
    b->group_count++;
    return g;
}

/* Messages of q staged in b that will be appended. */
static int64_t staged(const sl_queue_batch_t *b, const sl_queue_t *q)
{
    int64_t n = 0;
    for (size_t i = 0; i < b->group_count; i++)
        if (b->groups[i].id == q->id)
            n += (int64_t)(b->groups[i].records.count - b->groups[i].dropped +
                           b->groups[i].letters.count);
    return n;
}

static int64_t ready(const sl_queue_t *q)
{
    int64_t n = 0;
    for (int i = 0; i < q->levels; i++)
        n += q->level[i].ready;
    return n;
}

/* 1 if one more message would overflow a reject-publish queue. */
static int full(const sl_queue_batch_t *b, const sl_queue_t *q)
{
    return q->options.overflow == SL_OVERFLOW_REJECT_PUBLISH && q->options.max_length >= 0 &&
           ready(q) + staged(b, q) >= q->options.max_length;
}

/* When a message arriving now expires: the shorter of the queue's TTL and
 * its own (ttl_ms < 0: none); 0 never. */
static int64_t expiry(const sl_queue_t *q, int64_t ttl_ms, int64_t now)
{
    int64_t ttl = q->options.ttl_ms;
    if (ttl_ms >= 0 && (ttl < 0 || ttl_ms < ttl))
        ttl = ttl_ms;
    return ttl < 0 ? 0 : now + ttl > 0 ? now + ttl : 1;
}

/* Stages a record for level of q: key = be64 expiry, routing key. */
static int stage_record(sl_queue_batch_t *b, sl_record_set_t *into, int64_t expires,
                        const char *key, size_t key_len, sl_record_t *r)
{
    uint8_t full_key[8 + SL_ROUTING_KEY_MAX];
    sl_queue_put_be(full_key, (uint64_t)expires, 8);
    if (key_len)
        memcpy(full_key + 8, key, key_len);
    r->timestamp = b->now;
    r->key = full_key;
    r->key_len = (int32_t)(8 + key_len);
    return sl_record_set_add(into, r) ? sl_error_set(-ENOMEM, "queues: out of memory staging") : 0;
}

static int stage_message(sl_queue_batch_t *b, sl_queue_t *q, const sl_queue_message_t *m)
{
    int level = m->priority < 0 ? 0 : m->priority > q->levels - 1 ? q->levels - 1 : m->priority;
    group_t *g = group_for(b, q, level);
    sl_record_t r = {.value = m->payload,
                     .value_len = m->payload_len,
                     .headers = m->headers,
                     .header_count = m->header_count};
    if (!g)
        return sl_error_set(-ENOMEM, "queues: out of memory staging");
    return stage_record(b, &g->records, expiry(q, m->ttl_ms, b->now), m->routing_key,
                        m->routing_key_len, &r);
}

static int add_target(sl_queue_batch_t *b, size_t *n, sl_queue_t *q)
{
    for (size_t i = 0; i < *n; i++)
        if (b->targets[i] == q)
            return 0; /* several bindings to one queue store it once */
    if (sl_array_reserve((void **)&b->targets, &b->targets_cap, *n + 1, sizeof *b->targets))
        return -ENOMEM;
    b->targets[(*n)++] = q;
    return 0;
}

/* The queues m reaches through exchange, into b->targets; returns their
 * number or an error. */
static int route(sl_queue_batch_t *b, const char *exchange, const sl_queue_message_t *m)
{
    sl_queues_t *qs = b->qs;
    size_t n = 0;
    char name[SL_QUEUE_NAME_MAX + 1];
    if (!exchange[0]) {
        size_t len = m->routing_key_len;
        sl_queue_t *q = NULL;
        if (len && len <= SL_QUEUE_NAME_MAX && !memchr(m->routing_key, 0, len)) {
            memcpy(name, m->routing_key, len);
            name[len] = 0;
            q = sl_queues_find(qs, name);
        }
        if (q && add_target(b, &n, q))
            return -ENOMEM;
        qs->default_unroutable += !q;
        return (int)n;
    }
    for (size_t i = 0; i < qs->exchange_count; i++) {
        sl_exchange_t *e = qs->exchanges[i];
        if (strcmp(e->name, exchange))
            continue;
        for (size_t j = 0; j < e->binding_count; j++) {
            const sl_binding_t *bd = e->bindings[j];
            if (sl_exchange_binding_matches(e->type, bd->pattern, bd->pattern_len, bd->args,
                                            bd->nargs, m->routing_key, m->routing_key_len,
                                            m->headers, m->header_count) &&
                add_target(b, &n, bd->queue))
                return -ENOMEM;
        }
        e->unroutable += n == 0;
        return (int)n;
    }
    return sl_error_set(SL_ENOTFOUND, "no exchange %s", exchange);
}

static int check_message(const sl_queue_message_t *m)
{
    if (m->routing_key_len > SL_ROUTING_KEY_MAX)
        return sl_error_set(SL_EINVALID, "routing key of %zu bytes is over %d bytes",
                            m->routing_key_len, SL_ROUTING_KEY_MAX);
    if (m->payload_len < 0)
        return sl_error_set(SL_EINVALID, "a message payload cannot be null");
    return 0;
}

int sl_queue_batch_publish(sl_queue_batch_t *b, const char *exchange, const sl_queue_message_t *m)
{
    sl_queues_t *qs = b->qs;
    int rc = check_message(m);
    if (rc)
        return rc;
    pthread_mutex_lock(&qs->lock);
    b->now = sl_log_now(qs->log);
    int n = route(b, exchange, m);
    for (int i = 0; i < n; i++)
        if (full(b, b->targets[i])) {
            sl_queue_t *q = b->targets[i];
            q->counters.rejected++;
            n = sl_error_set(-ENOBUFS,
                             "queue %s is full (MAXLEN %lld, OVERFLOW reject-publish); the "
                             "message was not stored",
                             q->name, (long long)q->options.max_length);
        }
    for (int i = 0; i < n && rc == 0; i++)
        rc = stage_message(b, b->targets[i], m);
    pthread_mutex_unlock(&qs->lock);
    return rc ? rc : n;
}

static int push_change(sl_queue_batch_t *b, const sl_queue_t *q, int level, int64_t offset,
                       int kind, const char *reason)
{
    if (sl_array_reserve((void **)&b->changes, &b->change_cap, b->change_count + 1,
                         sizeof *b->changes))
        return sl_error_set(-ENOMEM, "queues: out of memory staging");
    b->changes[b->change_count++] =
        (change_t){offset, q->id, q->slot, (uint8_t)level, (uint8_t)kind, reason};
    return 0;
}

int sl_queue_batch_stage_done(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t offset,
                              const char *reason)
{
    return push_change(b, q, level, offset, reason ? CHANGE_DEAD : CHANGE_ACK, reason);
}

int sl_queue_batch_stage_count(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t offset)
{
    return push_change(b, q, level, offset, CHANGE_COUNT, NULL);
}

/* The in-flight message a tag names in q, or NULL. */
static sl_qmsg_t *tagged(sl_queue_t *q, uint64_t tag, int *level, int64_t *offset)
{
    *level = (int)(tag & 0xf);
    *offset = (int64_t)(tag >> 12);
    if (*level >= q->levels || tag >> 63)
        return NULL;
    sl_qmsg_t *m = sl_queue_msg(&q->level[*level], *offset);
    if (!m || m->state != SL_QMSG_IN_FLIGHT || (m->deliveries & 0xff) != ((tag >> 4) & 0xff))
        return NULL;
    return m;
}

/* Ends the delivery a tag names: ack (kind CHANGE_ACK), reject
 * (CHANGE_DEAD) or requeue (CHANGE_COUNT). */
static int end_tagged(sl_queue_batch_t *b, const char *queue, uint64_t tag, int kind)
{
    sl_queues_t *qs = b->qs;
    int level, rc = 1;
    int64_t offset;
    pthread_mutex_lock(&qs->lock);
    sl_queue_t *q = sl_queues_find(qs, queue);
    sl_qmsg_t *m = q ? tagged(q, tag, &level, &offset) : NULL;
    if (!q)
        rc = sl_error_set(SL_ENOTFOUND, "no queue %s", queue);
    else if (!m)
        rc = 0;
    else if (kind == CHANGE_COUNT) {
        sl_queue_end_delivery(qs, q, m);
        sl_queue_requeue(qs, b, q, level, offset);
    } else if ((rc = push_change(b, q, level, offset, kind,
                                 kind == CHANGE_DEAD ? "rejected" : NULL)) == 0) {
        sl_queue_end_delivery(qs, q, m);
        m->state = SL_QMSG_PENDING;
        rc = 1;
    }
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

int sl_queue_batch_ack(sl_queue_batch_t *b, const char *queue, uint64_t tag)
{
    return end_tagged(b, queue, tag, CHANGE_ACK);
}

int sl_queue_batch_nack(sl_queue_batch_t *b, const char *queue, uint64_t tag, int requeue)
{
    return end_tagged(b, queue, tag, requeue ? CHANGE_COUNT : CHANGE_DEAD);
}

/* ---- writing ------------------------------------------------------------------ */

/* Step 1 for one queue: gives up the oldest messages, lowest priority
 * first, ready ones before staged ones, until it fits its length. */
static int drop_head(sl_queue_batch_t *b, sl_queue_t *q)
{
    int64_t excess = ready(q) + staged(b, q) - q->options.max_length, offset;
    for (int i = 0; i < q->levels && excess > 0; i++) {
        sl_qlevel_t *l = &q->level[i];
        while (excess > 0 && (offset = sl_queue_peek(l)) >= 0) {
            if (push_change(b, q, i, offset, CHANGE_DEAD, "maxlen"))
                return -ENOMEM;
            sl_queue_take(l, offset, SL_QMSG_PENDING);
            excess--;
        }
        group_t *g = group_for(b, q, i);
        if (!g)
            return sl_error_set(-ENOMEM, "queues: out of memory");
        size_t n = g->records.count - g->dropped;
        size_t drop = (int64_t)n < excess ? n : (size_t)excess;
        g->dropped += drop;
        excess -= (int64_t)drop;
    }
    return 0;
}

static int drop_heads(sl_queue_batch_t *b)
{
    for (size_t i = 0; i < b->group_count; i++) {
        sl_queue_t *q = sl_queues_at(b->qs, b->groups[i].slot, b->groups[i].id);
        if (q && q->options.max_length >= 0 && q->options.overflow == SL_OVERFLOW_DROP_HEAD &&
            ready(q) + staged(b, q) > q->options.max_length && drop_head(b, q))
            return -ENOMEM;
    }
    return 0;
}

/* Step 2: PENDING -> COMMITTING; a change whose message went away (its
 * queue deleted) is void. */
static void mark_committing(sl_queue_batch_t *b)
{
    for (size_t i = 0; i < b->change_count; i++) {
        change_t *c = &b->changes[i];
        sl_queue_t *q = sl_queues_at(b->qs, c->slot, c->id);
        sl_qmsg_t *m = q ? sl_queue_msg(&q->level[c->level], c->offset) : NULL;
        if (!m)
            c->kind = CHANGE_VOID;
        else if (c->kind != CHANGE_COUNT && m->state == SL_QMSG_PENDING)
            m->state = SL_QMSG_COMMITTING;
        else if (c->kind != CHANGE_COUNT)
            c->kind = CHANGE_VOID;
    }
}

static int is_death_header(const sl_header_t *h)
{
    static const char *const names[] = {"x-death-reason", "x-original-queue", "x-delivery-count"};
    for (int i = 0; i < 3; i++)
        if (h->name_len == (int32_t)strlen(names[i]) &&
            !memcmp(h->name, names[i], (size_t)h->name_len))
            return 1;
    return 0;
}

static sl_header_t text_header(const char *name, const char *value)
{
    return (sl_header_t){(const uint8_t *)name, (int32_t)strlen(name), (const uint8_t *)value,
                         (int32_t)strlen(value)};
}

/* Step 3 for one message: a copy of rec into q's dead-letter queue, its
 * headers saying why. Dropped if there is no such queue or it is a full
 * reject-publish one. */
static int dead_letter(sl_queue_batch_t *b, sl_queue_t *q, int level, const sl_record_t *rec,
                       int deliveries, const char *reason)
{
    sl_queue_t *to =
        q->options.dead_letter[0] ? sl_queues_find(b->qs, q->options.dead_letter) : NULL;
    if (!to || full(b, to))
        return 0;
    char count[16];
    snprintf(count, sizeof count, "%d", deliveries);
    if (sl_array_reserve((void **)&b->headers, &b->headers_cap, rec->header_count + 3,
                         sizeof *b->headers))
        return sl_error_set(-ENOMEM, "queues: out of memory dead-lettering");
    uint32_t n = 0;
    for (uint32_t i = 0; i < rec->header_count; i++)
        if (!is_death_header(&rec->headers[i]))
            b->headers[n++] = rec->headers[i];
    b->headers[n++] = text_header("x-death-reason", reason);
    b->headers[n++] = text_header("x-original-queue", q->name);
    b->headers[n++] = text_header("x-delivery-count", count);
    int into = level < to->levels ? level : to->levels - 1;
    group_t *g = group_for(b, to, into);
    sl_record_t r = {
        .value = rec->value, .value_len = rec->value_len, .headers = b->headers, .header_count = n};
    if (!g)
        return sl_error_set(-ENOMEM, "queues: out of memory dead-lettering");
    return stage_record(b, &g->letters, expiry(to, -1, b->now),
                        rec->key_len > 8 ? (const char *)rec->key + 8 : "",
                        rec->key_len > 8 ? (size_t)rec->key_len - 8 : 0, &r);
}

/* Step 3: dead letters of done messages, then of dropped staged ones. */
static int dead_letters(sl_queue_batch_t *b)
{
    sl_record_t rec;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->change_count; i++) {
        change_t *c = &b->changes[i];
        sl_queue_t *q = c->kind == CHANGE_DEAD ? sl_queues_at(b->qs, c->slot, c->id) : NULL;
        if (!q || !q->options.dead_letter[0])
            continue;
        int deliveries = sl_queue_msg(&q->level[c->level], c->offset)->deliveries;
        if ((rc = sl_queue_read(q, c->level, c->offset, &rec)) == 0)
            rc = dead_letter(b, q, c->level, &rec, deliveries, c->reason);
    }
    for (size_t i = 0; rc == 0 && i < b->group_count; i++) {
        sl_queue_t *q = sl_queues_at(b->qs, b->groups[i].slot, b->groups[i].id);
        size_t dropped = b->groups[i].dropped;
        int level = b->groups[i].level;
        if (!q || !dropped)
            continue;
        sl_record_t *records = sl_record_set_array(&b->groups[i].records);
        for (size_t j = 0; rc == 0 && j < dropped; j++) /* groups may move meanwhile */
            rc = dead_letter(b, q, level, &records[j], 0, "maxlen");
    }
    return rc;
}

/* The records group g appends: its kept published ones, then letters. */
static int gather(sl_queue_batch_t *b, group_t *g, size_t *n)
{
    size_t kept = g->records.count - g->dropped;
    *n = kept + g->letters.count;
    if (sl_array_reserve((void **)&b->append, &b->append_cap, *n ? *n : 1, sizeof *b->append))
        return sl_error_set(-ENOMEM, "queues: out of memory appending");
    if (kept)
        memcpy(b->append, sl_record_set_array(&g->records) + g->dropped, kept * sizeof *b->append);
    if (g->letters.count)
        memcpy(b->append + kept, sl_record_set_array(&g->letters),
               g->letters.count * sizeof *b->append);
    return 0;
}

/* The most bytes of records appended as one batch: far below a queue
 * log's max.batch.bytes, however much a group holds. */
#define APPEND_CHUNK_BYTES (1 << 20)

static size_t record_bytes(const sl_record_t *r)
{
    size_t n = 64 + (size_t)(r->key_len > 0 ? r->key_len : 0) +
               (size_t)(r->value_len > 0 ? r->value_len : 0);
    for (uint32_t i = 0; i < r->header_count; i++)
        n += 16 + (size_t)(r->headers[i].name_len > 0 ? r->headers[i].name_len : 0) +
             (size_t)(r->headers[i].value_len > 0 ? r->headers[i].value_len : 0);
    return n;
}

/* Step 4 for one group: batches of at most about APPEND_CHUNK_BYTES at the
 * level's committed end; g->first and g->count grow with each, so that a
 * failure midway is undone like a whole one. */
static int append_group(sl_queue_batch_t *b, group_t *g)
{
    sl_queue_t *q = sl_queues_at(b->qs, g->slot, g->id);
    size_t n, from = 0;
    int64_t first;
    int rc = q ? gather(b, g, &n) : 0;
    if (!q || rc || n == 0)
        return rc;
    sl_qlevel_t *l = &q->level[g->level];
    if (sl_partition_written_end(l->partition) != l->end) {
        sl_report(SL_WARN, "queues", "queue %s level %d: dropping records past its committed end",
                  q->name, g->level);
        if ((rc = sl_partition_truncate(l->partition, l->end)))
            return rc;
    }
    while (from < n) {
        size_t to = from, bytes = 0;
        while (to < n && (to == from || bytes < APPEND_CHUNK_BYTES))
            bytes += record_bytes(&b->append[to++]);
        if ((rc = sl_partition_append_nowait(l->partition, b->append + from, to - from, &first)))
            return rc;
        if (from == 0)
            g->first = first;
        g->count += (int64_t)(to - from);
        from = to;
    }
    return 0;
}

static int append_groups(sl_queue_batch_t *b, MDB_txn *txn)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->group_count; i++)
        rc = append_group(b, &b->groups[i]);
    for (size_t i = 0; rc == 0 && i < b->group_count; i++) {
        group_t *g = &b->groups[i];
        sl_queue_t *q = g->count ? sl_queues_at(b->qs, g->slot, g->id) : NULL;
        if (!q)
            continue;
        sl_partition_t *p = q->level[g->level].partition;
        if ((rc = sl_partition_await_durable(p, g->first + g->count, -1)) == 0)
            rc = sl_lso_put(b->qs->state, txn, p, g->first + g->count);
    }
    return rc;
}

/* ---- step 5: delivery state ------------------------------------------------------ */

static int done_or_committing(const sl_qmsg_t *m)
{
    return m->state == SL_QMSG_DONE || m->state == SL_QMSG_COMMITTING;
}

/* The floor the level will have once the batch commits. */
static int64_t floor_after(sl_qlevel_t *l)
{
    int64_t floor = l->floor;
    while (floor < l->end && done_or_committing(sl_queue_msg(l, floor)))
        floor++;
    return floor;
}

static int touch_chunk(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t chunk)
{
    for (size_t i = b->chunk_count; i-- > 0;)
        if (b->chunks[i].queue == q && b->chunks[i].level == level && b->chunks[i].chunk == chunk)
            return 0;
    if (sl_array_reserve((void **)&b->chunks, &b->chunk_cap, b->chunk_count + 1, sizeof *b->chunks))
        return sl_error_set(-ENOMEM, "queues: out of memory");
    b->chunks[b->chunk_count++] = (chunk_ref_t){q, level, chunk};
    return 0;
}

/* Writes a level's floor and cursor if they moved, and deletes the ack
 * chunks wholly below the new floor. */
static int write_marks(sl_queue_batch_t *b, MDB_txn *txn, sl_queue_t *q, int level)
{
    sl_qlevel_t *l = &q->level[level];
    uint8_t key[SL_QUEUE_KEY_MAX], value[16];
    l->written_floor = floor_after(l);
    l->written_cursor = l->cursor > l->written_floor ? l->cursor : l->written_floor;
    if (l->written_floor == l->stored_floor && l->written_cursor == l->stored_cursor)
        return 0;
    sl_queue_put_be(value, (uint64_t)l->written_floor, 8);
    sl_queue_put_be(value + 8, (uint64_t)l->written_cursor, 8);
    int rc = sl_queue_put(b->qs, txn, key, sl_queue_key(key, 'L', q->name, level, -1), value, 16);
    int64_t from = l->stored_floor < l->floor ? l->stored_floor : l->floor;
    for (int64_t c = from / SL_ACK_CHUNK; rc == 0 && c < l->written_floor / SL_ACK_CHUNK; c++)
        rc = sl_queue_put(b->qs, txn, key, sl_queue_key(key, 'A', q->name, level, c), NULL, 0);
    if (rc == 0 && l->written_floor != l->floor)
        rc = touch_chunk(b, q, level, l->written_floor / SL_ACK_CHUNK);
    return rc;
}

/* Rewrites one ack chunk from the messages' states (deleted if empty). */
static int write_chunk(sl_queue_batch_t *b, MDB_txn *txn, const chunk_ref_t *c)
{
    sl_qlevel_t *l = &c->queue->level[c->level];
    uint8_t key[SL_QUEUE_KEY_MAX], bits[SL_ACK_CHUNK / 8] = {0};
    int any = 0;
    for (int i = 0; i < SL_ACK_CHUNK; i++) {
        int64_t offset = c->chunk * SL_ACK_CHUNK + i;
        sl_qmsg_t *m = offset >= l->written_floor ? sl_queue_msg(l, offset) : NULL;
        if (m && done_or_committing(m)) {
            bits[i / 8] |= (uint8_t)(1u << (i % 8));
            any = 1;
        }
    }
    size_t len = sl_queue_key(key, 'A', c->queue->name, c->level, c->chunk);
    return sl_queue_put(b->qs, txn, key, len, any ? bits : NULL, sizeof bits);
}

/* A message's 'D' entry: written for a requeue, deleted once done. */
static int write_count(sl_queue_batch_t *b, MDB_txn *txn, const change_t *c)
{
    sl_queue_t *q = sl_queues_at(b->qs, c->slot, c->id);
    sl_qmsg_t *m = sl_queue_msg(&q->level[c->level], c->offset);
    uint8_t key[SL_QUEUE_KEY_MAX], value[4];
    size_t len = sl_queue_key(key, 'D', q->name, c->level, c->offset);
    if (done_or_committing(m))
        return m->flags & SL_QMSG_COUNT_STORED ? sl_queue_put(b->qs, txn, key, len, NULL, 0) : 0;
    if (c->kind != CHANGE_COUNT)
        return 0;
    sl_queue_put_be(value, m->deliveries, 4);
    return sl_queue_put(b->qs, txn, key, len, value, sizeof value);
}

static int write_state(sl_queue_batch_t *b, MDB_txn *txn)
{
    sl_queues_t *qs = b->qs;
    int rc = 0;
    b->chunk_count = 0;
    for (size_t i = 0; rc == 0 && i < b->change_count; i++) {
        change_t *c = &b->changes[i];
        if (c->kind == CHANGE_VOID)
            continue;
        rc = write_count(b, txn, c);
        if (rc == 0 && c->kind != CHANGE_COUNT)
            rc = touch_chunk(b, sl_queues_at(qs, c->slot, c->id), c->level,
                             c->offset / SL_ACK_CHUNK);
    }
    for (size_t i = 0; rc == 0 && i < qs->queue_slots; i++)
        for (int j = 0; rc == 0 && qs->queues[i] && j < qs->queues[i]->levels; j++)
            rc = write_marks(b, txn, qs->queues[i], j);
    for (size_t i = 0; rc == 0 && i < b->chunk_count; i++)
        rc = write_chunk(b, txn, &b->chunks[i]);
    return rc;
}

int sl_queue_batch_write(sl_queue_batch_t *b, MDB_txn *txn)
{
    pthread_mutex_lock(&b->qs->lock);
    b->written = 1;
    b->now = sl_log_now(b->qs->log);
    int rc = drop_heads(b);
    mark_committing(b);
    if (rc == 0)
        rc = dead_letters(b);
    if (rc == 0)
        rc = append_groups(b, txn);
    if (rc == 0)
        rc = write_state(b, txn);
    return rc;
}

/* ---- finishing ------------------------------------------------------------------ */

static void count_done(sl_queue_t *q, const change_t *c)
{
    if (c->kind == CHANGE_ACK) {
        q->counters.acked++;
        return;
    }
    q->counters.dead_lettered++;
    q->counters.expired += !strcmp(c->reason, "expired");
    q->counters.dropped += !strcmp(c->reason, "maxlen");
}

/* The committed batch takes effect in memory. */
static void apply(sl_queue_batch_t *b)
{
    sl_queues_t *qs = b->qs;
    for (size_t i = 0; i < b->group_count; i++) {
        group_t *g = &b->groups[i];
        sl_queue_t *q = sl_queues_at(qs, g->slot, g->id);
        size_t n;
        if (q) { /* dropped ones were accepted, then dead-lettered at once */
            q->counters.published += (int64_t)g->dropped;
            q->counters.dropped += (int64_t)g->dropped;
            q->counters.dead_lettered += (int64_t)g->dropped;
        }
        if (!q || !g->count)
            continue;
        sl_qlevel_t *l = &q->level[g->level];
        sl_partition_set_visible_end(l->partition, g->first + g->count);
        if (gather(b, g, &n) || sl_queue_add_messages(l, b->append, n))
            sl_report(SL_ERROR, "queues", "queue %s: %s (its new messages show after a restart)",
                      q->name, sl_error_detail());
        q->counters.published += g->count;
    }
    for (size_t i = 0; i < b->change_count; i++) {
        change_t *c = &b->changes[i];
        sl_queue_t *q = c->kind != CHANGE_VOID ? sl_queues_at(qs, c->slot, c->id) : NULL;
        sl_qmsg_t *m = q ? sl_queue_msg(&q->level[c->level], c->offset) : NULL;
        if (m && c->kind == CHANGE_COUNT && !done_or_committing(m))
            m->flags |= SL_QMSG_COUNT_STORED;
        if (!m || c->kind == CHANGE_COUNT)
            continue;
        m->state = SL_QMSG_DONE;
        m->flags &= (uint8_t)~SL_QMSG_COUNT_STORED;
        count_done(q, c);
    }
    for (size_t i = 0; i < qs->queue_slots; i++)
        for (int j = 0; qs->queues[i] && j < qs->queues[i]->levels; j++) {
            sl_qlevel_t *l = &qs->queues[i]->level[j];
            l->stored_floor = l->written_floor;
            l->stored_cursor = l->written_cursor;
            if (sl_queue_advance_floor(l))
                sl_queue_reclaim(l);
        }
}

/* The failed (or abandoned) batch leaves no trace: appends are truncated,
 * its messages are ready again. */
static void undo(sl_queue_batch_t *b)
{
    sl_queues_t *qs = b->qs;
    for (size_t i = 0; i < b->group_count; i++) {
        group_t *g = &b->groups[i];
        sl_queue_t *q = g->count ? sl_queues_at(qs, g->slot, g->id) : NULL;
        if (q && sl_partition_truncate(q->level[g->level].partition, q->level[g->level].end))
            sl_report(SL_ERROR, "queues", "queue %s: cannot cut an uncommitted append: %s", q->name,
                      sl_error_detail());
    }
    for (size_t i = 0; i < b->change_count; i++) {
        change_t *c = &b->changes[i];
        sl_queue_t *q = c->kind != CHANGE_COUNT ? sl_queues_at(qs, c->slot, c->id) : NULL;
        sl_qmsg_t *m = q ? sl_queue_msg(&q->level[c->level], c->offset) : NULL;
        if (m && (m->state == SL_QMSG_PENDING || m->state == SL_QMSG_COMMITTING))
            sl_queue_make_ready(&q->level[c->level], c->offset);
    }
}

/* A partition of a queue the batch published to, referenced; NULL if none.
 * Lock held. */
static sl_partition_t *published_partition(sl_queue_batch_t *b)
{
    for (size_t i = 0; i < b->group_count; i++) {
        const group_t *g = &b->groups[i];
        sl_queue_t *q = g->count ? sl_queues_at(b->qs, g->slot, g->id) : NULL;
        if (q) {
            sl_partition_ref(q->level[g->level].partition);
            return q->level[g->level].partition;
        }
    }
    return NULL;
}

void sl_queue_batch_finish(sl_queue_batch_t *b, int committed)
{
    sl_partition_t *announce = NULL;
    if (!b->written)
        pthread_mutex_lock(&b->qs->lock);
    if (committed) {
        apply(b);
        announce = published_partition(b);
    } else {
        undo(b);
    }
    for (size_t i = 0; i < b->group_count; i++) {
        group_t *g = &b->groups[i];
        sl_record_set_reset(&g->records);
        sl_record_set_reset(&g->letters);
        g->dropped = 0;
        g->first = g->count = 0;
    }
    b->group_count = b->change_count = 0;
    b->written = 0;
    pthread_mutex_unlock(&b->qs->lock);
    if (announce) {
        /* The commit already announced the queue's partitions, but waiting
         * consumers saw no ready message then: the messages became ready
         * only now. Wake them again. */
        sl_partition_announce(announce);
        sl_partition_unref(announce);
    }
}

int sl_queue_batch_commit(sl_queue_batch_t *b)
{
    sl_state_t *st = b->qs->state;
    MDB_txn *txn;
    char detail[512];
    if (sl_queue_batch_empty(b))
        return 0;
    sl_state_lock_commits(st);
    int rc = sl_state_begin(st, 1, &txn);
    if (rc == 0) {
        rc = sl_queue_batch_write(b, txn);
        if (rc == 0)
            rc = sl_state_commit(txn);
        else
            mdb_txn_abort(txn);
    }
    snprintf(detail, sizeof detail, "%s", sl_error_detail());
    sl_queue_batch_finish(b, rc == 0);
    sl_state_unlock_commits(st);
    return rc ? sl_error_set(rc, "%s", detail) : 0;
}

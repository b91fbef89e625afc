/*
 * queue.c - one queue's messages: the ready set of each priority level,
 * deliveries, their leases and consumers, expiry, recovery and stats.
 *
 * A level keeps one sl_qmsg_t per offset from its ack floor to its
 * committed end. Its ready set, in delivery order, is the union of two
 * sources: the offsets at or past the cursor (never delivered; taken in
 * offset order) and a min-heap of offsets below the cursor that became
 * ready again. The next message is the smaller of the heap's top and the
 * first ready offset at or past the cursor. Invariant: every ready message
 * below the cursor is in the heap. The heap may also hold offsets that are
 * no longer ready; they are dropped when they reach its top, checked
 * against the message's state, so no state change ever has to search the
 * heap. A duplicate entry is harmless for the same reason: taking a
 * message makes every other entry for it stale.
 *
 * Leases and consumers' lists of deliveries are kept the same lazy way:
 * an entry names (queue slot and id, level, offset, delivery count) and is
 * live only while that message is in flight with that count. They are
 * rebuilt without their stale entries when those outnumber the live ones.
 */
#include "storage/queue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sl_qmsg_t *sl_queue_msg(sl_qlevel_t *l, int64_t offset)
{
    if (offset < l->floor || offset >= l->end)
        return NULL;
    return &l->msgs[l->first + (size_t)(offset - l->floor)];
}

/* ---- the requeued heap -------------------------------------------------- */

static void heap_swap(int64_t *h, size_t a, size_t b)
{
    int64_t t = h[a];
    h[a] = h[b];
    h[b] = t;
}

static int heap_push(sl_qlevel_t *l, int64_t offset)
{
    if (sl_array_reserve((void **)&l->requeued, &l->requeued_cap, l->requeued_count + 1,
                         sizeof *l->requeued))
        return -ENOMEM;
    int64_t *h = l->requeued;
    size_t i = l->requeued_count++;
    h[i] = offset;
    while (i > 0 && h[(i - 1) / 2] > h[i]) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    return 0;
}

static void heap_pop(sl_qlevel_t *l)
{
    int64_t *h = l->requeued;
    size_t n = --l->requeued_count, i = 0;
    h[0] = h[n];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (h[i] <= h[c])
            break;
        heap_swap(h, i, c);
        i = c;
    }
}

/* ---- the ready set ------------------------------------------------------ */

void sl_queue_make_ready(sl_qlevel_t *l, int64_t offset)
{
    sl_qmsg_t *m = sl_queue_msg(l, offset);
    m->state = SL_QMSG_READY;
    l->ready++;
    if (offset < l->cursor && heap_push(l, offset))
        l->cursor = offset; /* out of memory: scan from there again instead */
}

int64_t sl_queue_peek(sl_qlevel_t *l)
{
    sl_qmsg_t *m;
    while (l->requeued_count &&
           (!(m = sl_queue_msg(l, l->requeued[0])) || m->state != SL_QMSG_READY))
        heap_pop(l);
    while (l->cursor < l->end && sl_queue_msg(l, l->cursor)->state != SL_QMSG_READY)
        l->cursor++;
    int64_t fresh = l->cursor < l->end ? l->cursor : -1;
    if (!l->requeued_count)
        return fresh;
    return fresh >= 0 && fresh < l->requeued[0] ? fresh : l->requeued[0];
}

void sl_queue_take(sl_qlevel_t *l, int64_t offset, int state)
{
    if (l->requeued_count && l->requeued[0] == offset)
        heap_pop(l);
    else if (offset == l->cursor)
        l->cursor++;
    sl_queue_msg(l, offset)->state = (uint8_t)state;
    l->ready--;
}

int64_t sl_queue_record_expiry(const sl_record_t *r)
{
    return r->key_len >= 8 ? (int64_t)sl_queue_get_be(r->key, 8) : 0;
}

/* Room for n more messages after end, moving them to the front first. */
static int reserve_messages(sl_qlevel_t *l, size_t n)
{
    size_t used = (size_t)(l->end - l->floor);
    if (l->first + used + n <= l->cap)
        return 0;
    if (l->first) {
        memmove(l->msgs, l->msgs + l->first, used * sizeof *l->msgs);
        l->first = 0;
    }
    return sl_array_reserve((void **)&l->msgs, &l->cap, used + n, sizeof *l->msgs);
}

int sl_queue_add_messages(sl_qlevel_t *l, const sl_record_t *records, size_t n)
{
    if (reserve_messages(l, n))
        return sl_error_set(-ENOMEM, "queues: out of memory adding messages");
    sl_qmsg_t *m = l->msgs + l->first + (size_t)(l->end - l->floor);
    for (size_t i = 0; i < n; i++)
        m[i] = (sl_qmsg_t){.timestamp = records[i].timestamp,
                           .expires_at = sl_queue_record_expiry(&records[i]),
                           .state = SL_QMSG_READY};
    l->end += (int64_t)n;
    l->ready += (int64_t)n;
    return 0;
}

int sl_queue_advance_floor(sl_qlevel_t *l)
{
    int64_t from = l->floor;
    while (l->floor < l->end && l->msgs[l->first].state == SL_QMSG_DONE) {
        l->floor++;
        l->first++;
    }
    if (l->floor == l->end)
        l->first = 0; /* empty: start over at the front */
    if (l->cursor < l->floor)
        l->cursor = l->floor;
    return l->floor != from;
}

/*
 * Deletes the closed segments whose every offset is below the floor, the
 * oldest first, as retention does (retention.c) but by offset: under the
 * partition's maintenance lock, with the segment list changed under its
 * short lock and the files unlinked outside it. Readers that still hold a
 * deleted segment keep reading their open file.
 */
void sl_queue_reclaim(sl_qlevel_t *l)
{
    sl_partition_t *p = l->partition;
    sl_segment_t *gone[64];
    int32_t n = 0;
    pthread_mutex_lock(&p->maintenance_lock);
    pthread_mutex_lock(&p->lock);
    while (!p->deleted && n < 64 && n < p->segment_count - 1 &&
           p->segments[n]->end_offset <= l->floor)
        n++;
    memcpy(gone, p->segments, (size_t)n * sizeof *gone);
    memmove(p->segments, p->segments + n, (size_t)(p->segment_count - n) * sizeof *gone);
    p->segment_count -= n;
    pthread_mutex_unlock(&p->lock);
    for (int32_t i = 0; i < n; i++) {
        sl_segment_unlink(gone[i]);
        sl_segment_unref(gone[i]);
    }
    pthread_mutex_unlock(&p->maintenance_lock);
}

/* ---- consumers and leases ----------------------------------------------- */

int sl_queues_consumer_open(sl_queues_t *qs, sl_queue_consumer_t **out)
{
    sl_queue_consumer_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return sl_error_set(-ENOMEM, "queues: out of memory adding a consumer");
    pthread_mutex_lock(&qs->lock);
    size_t slot = 0;
    while (slot < qs->consumer_slots && qs->consumers[slot])
        slot++;
    int rc = slot < qs->consumer_slots
                 ? 0
                 : sl_array_reserve((void **)&qs->consumers, &qs->consumer_cap, slot + 1,
                                    sizeof *qs->consumers);
    if (rc == 0) {
        qs->consumer_slots += slot == qs->consumer_slots;
        qs->consumers[slot] = c;
        c->slot = (uint32_t)slot;
    }
    pthread_mutex_unlock(&qs->lock);
    if (rc) {
        sl_free(c);
        return sl_error_set(-ENOMEM, "queues: out of memory adding a consumer");
    }
    *out = c;
    return 0;
}

/* The message a held delivery or lease names, if that delivery is live. */
static sl_qmsg_t *live(sl_queues_t *qs, const sl_held_t *h, sl_queue_t **q)
{
    *q = sl_queues_at(qs, h->queue_slot, h->queue_id);
    sl_qmsg_t *m = *q ? sl_queue_msg(&(*q)->level[h->level], h->offset) : NULL;
    return m && m->state == SL_QMSG_IN_FLIGHT && m->deliveries == h->deliveries ? m : NULL;
}

void sl_queue_end_delivery(sl_queues_t *qs, sl_queue_t *q, const sl_qmsg_t *m)
{
    sl_queue_consumer_t *c = m->consumer < qs->consumer_slots ? qs->consumers[m->consumer] : NULL;
    if (c)
        c->in_flight--;
    q->in_flight--;
    qs->in_flight--;
}

void sl_queues_consumer_close(sl_queues_t *qs, sl_queue_consumer_t *c, sl_queue_batch_t *b)
{
    if (!c)
        return;
    pthread_mutex_lock(&qs->lock);
    for (size_t i = 0; i < c->held_count; i++) {
        sl_queue_t *q;
        sl_qmsg_t *m = live(qs, &c->held[i], &q);
        if (!m || m->consumer != c->slot)
            continue;
        sl_queue_end_delivery(qs, q, m);
        sl_queue_requeue(qs, b, q, c->held[i].level, c->held[i].offset);
    }
    qs->consumers[c->slot] = NULL;
    pthread_mutex_unlock(&qs->lock);
    sl_free(c->held);
    sl_free(c);
}

void sl_queues_consumer_set_prefetch(sl_queues_t *qs, sl_queue_consumer_t *c, int64_t prefetch)
{
    pthread_mutex_lock(&qs->lock);
    c->prefetch = prefetch > 0 ? prefetch : 0;
    pthread_mutex_unlock(&qs->lock);
}

static int64_t room(const sl_queue_consumer_t *c)
{
    if (!c->prefetch)
        return INT64_MAX;
    return c->prefetch > c->in_flight ? c->prefetch - c->in_flight : 0;
}

int64_t sl_queues_consumer_room(sl_queues_t *qs, const sl_queue_consumer_t *c)
{
    pthread_mutex_lock(&qs->lock);
    int64_t n = room(c);
    pthread_mutex_unlock(&qs->lock);
    return n;
}

/* Drops a consumer's stale deliveries once they outnumber the live ones. */
static void compact_held(sl_queues_t *qs, sl_queue_consumer_t *c)
{
    if (c->held_count < 64 || c->held_count < 2 * (size_t)c->in_flight)
        return;
    size_t kept = 0;
    sl_queue_t *q;
    for (size_t i = 0; i < c->held_count; i++) {
        sl_qmsg_t *m = live(qs, &c->held[i], &q);
        if (m && m->consumer == c->slot)
            c->held[kept++] = c->held[i];
    }
    c->held_count = kept;
}

static void lease_swap(sl_lease_t *h, size_t a, size_t b)
{
    sl_lease_t t = h[a];
    h[a] = h[b];
    h[b] = t;
}

static void lease_up(sl_lease_t *h, size_t i)
{
    while (i > 0 && h[(i - 1) / 2].deadline > h[i].deadline) {
        lease_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void lease_down(sl_lease_t *h, size_t n, size_t i)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && h[c + 1].deadline < h[c].deadline)
            c++;
        if (h[i].deadline <= h[c].deadline)
            return;
        lease_swap(h, i, c);
        i = c;
    }
}

static void lease_pop(sl_queues_t *qs)
{
    qs->leases[0] = qs->leases[--qs->lease_count];
    lease_down(qs->leases, qs->lease_count, 0);
}

/* Drops stale leases once they outnumber the live ones, and re-heaps. */
static void compact_leases(sl_queues_t *qs)
{
    if (qs->lease_count < 1024 || qs->lease_count < 2 * (size_t)qs->in_flight)
        return;
    size_t kept = 0;
    sl_queue_t *q;
    for (size_t i = 0; i < qs->lease_count; i++)
        if (live(qs, &qs->leases[i].delivery, &q))
            qs->leases[kept++] = qs->leases[i];
    qs->lease_count = kept;
    for (size_t i = kept / 2 + 1; i-- > 0;)
        lease_down(qs->leases, kept, i);
}

/* Room for one more held delivery and lease. */
static int reserve_delivery(sl_queues_t *qs, sl_queue_consumer_t *c)
{
    compact_held(qs, c);
    compact_leases(qs);
    if (sl_array_reserve((void **)&c->held, &c->held_cap, c->held_count + 1, sizeof *c->held) ||
        sl_array_reserve((void **)&qs->leases, &qs->lease_cap, qs->lease_count + 1,
                         sizeof *qs->leases))
        return sl_error_set(-ENOMEM, "queues: out of memory delivering");
    return 0;
}

/* ---- delivering ----------------------------------------------------------- */

int sl_queue_read(sl_queue_t *q, int level, int64_t offset, sl_record_t *rec)
{
    sl_qlevel_t *l = &q->level[level];
    int rc = 0;
    if (!l->reader)
        rc = sl_reader_open(l->partition, offset, &l->reader);
    else if (sl_reader_position(l->reader) != offset)
        rc = sl_reader_seek(l->reader, offset);
    if (rc == 0)
        rc = sl_reader_next(l->reader, rec);
    if (rc == 1 && rec->offset == offset)
        return 0;
    if (l->reader)
        sl_reader_seek(l->reader, offset); /* start clean next time */
    return rc < 0 ? rc
                  : sl_error_set(SL_ECORRUPT, "queue %s: message %d/%lld is missing from its log",
                                 q->name, level, (long long)offset);
}

/* The highest level with a ready message, and that message's offset. */
static int next_ready(sl_queue_t *q, int64_t *offset)
{
    for (int i = q->levels - 1; i >= 0; i--)
        if ((*offset = sl_queue_peek(&q->level[i])) >= 0)
            return i;
    return -1;
}

static void describe(const sl_queue_t *q, int level, int64_t offset, const sl_qmsg_t *m,
                     const sl_record_t *rec, sl_queue_delivery_t *d)
{
    (void)q;
    *d = (sl_queue_delivery_t){
        .tag = sl_queue_tag(level, offset, m->deliveries),
        .priority = level,
        .deliveries = m->deliveries,
        .timestamp = rec->timestamp,
        .routing_key = rec->key_len > 8 ? (const char *)rec->key + 8 : "",
        .routing_key_len = rec->key_len > 8 ? (size_t)rec->key_len - 8 : 0,
        .payload = rec->value,
        .payload_len = rec->value_len > 0 ? rec->value_len : 0,
        .headers = rec->headers,
        .header_count = rec->header_count,
    };
}

/* Hands one ready message to c. */
static int deliver(sl_queues_t *qs, sl_queue_t *q, int level, int64_t offset,
                   sl_queue_consumer_t *c, int64_t deadline, sl_queue_deliver_fn fn, void *arg)
{
    sl_record_t rec;
    sl_queue_delivery_t d;
    sl_qlevel_t *l = &q->level[level];
    int rc = sl_queue_read(q, level, offset, &rec);
    if (rc || (rc = reserve_delivery(qs, c)))
        return rc;
    sl_qmsg_t *m = sl_queue_msg(l, offset);
    sl_queue_take(l, offset, SL_QMSG_IN_FLIGHT);
    m->deliveries += m->deliveries < UINT16_MAX;
    m->consumer = c->slot;
    sl_held_t h = {offset, q->id, q->slot, m->deliveries, (uint8_t)level};
    c->held[c->held_count++] = h;
    qs->leases[qs->lease_count] = (sl_lease_t){deadline, h};
    lease_up(qs->leases, qs->lease_count++);
    c->in_flight++;
    q->in_flight++;
    qs->in_flight++;
    q->counters.delivered++;
    q->counters.redelivered += m->deliveries > 1;
    describe(q, level, offset, m, &rec, &d);
    fn(arg, &d);
    return 0;
}

/* Dead-letters an expired ready message (peeked at the head) into b. */
static int expire_message(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t offset)
{
    sl_qlevel_t *l = &q->level[level];
    sl_queue_take(l, offset, SL_QMSG_PENDING);
    if (sl_queue_batch_stage_done(b, q, level, offset, "expired")) {
        sl_queue_make_ready(l, offset);
        return -ENOMEM;
    }
    return 0;
}

int sl_queue_pop(sl_queues_t *qs, sl_queue_batch_t *b, const char *queue, sl_queue_consumer_t *c,
                 int64_t max, int64_t lease_ms, sl_queue_deliver_fn fn, void *arg)
{
    int64_t offset, n = 0;
    int rc = 0, level;
    pthread_mutex_lock(&qs->lock);
    sl_queue_t *q = sl_queues_find(qs, queue);
    if (!q) {
        pthread_mutex_unlock(&qs->lock);
        return sl_error_set(SL_ENOTFOUND, "no queue %s", queue);
    }
    int64_t now = sl_log_now(qs->log), limit = room(c);
    int64_t deadline = now + (lease_ms > 0 ? lease_ms : q->options.lease_ms);
    while (rc == 0 && n < max && n < limit && (level = next_ready(q, &offset)) >= 0) {
        int64_t expires = sl_queue_msg(&q->level[level], offset)->expires_at;
        if (expires && expires <= now)
            rc = expire_message(b, q, level, offset);
        else if ((rc = deliver(qs, q, level, offset, c, deadline, fn, arg)) == 0)
            n++;
    }
    pthread_mutex_unlock(&qs->lock);
    return n || rc == 0 ? (int)n : rc;
}

int64_t sl_queue_ready(sl_queues_t *qs, const char *queue)
{
    pthread_mutex_lock(&qs->lock);
    sl_queue_t *q = sl_queues_find(qs, queue);
    int64_t n = q ? 0 : -1;
    for (int i = 0; q && i < q->levels; i++)
        n += q->level[i].ready;
    pthread_mutex_unlock(&qs->lock);
    return n;
}

void sl_queue_requeue(sl_queues_t *qs, sl_queue_batch_t *b, sl_queue_t *q, int level,
                      int64_t offset)
{
    sl_qlevel_t *l = &q->level[level];
    sl_qmsg_t *m = sl_queue_msg(l, offset);
    (void)qs;
    if (q->options.max_deliveries > 0 && m->deliveries >= q->options.max_deliveries) {
        m->state = SL_QMSG_PENDING;
        if (sl_queue_batch_stage_done(b, q, level, offset, "maxdeliveries") == 0)
            return;
    }
    sl_queue_make_ready(l, offset);
    sl_queue_batch_stage_count(b, q, level, offset); /* if it fails, the count stays lower */
}

/* ---- time ------------------------------------------------------------------ */

static void expire_leases(sl_queues_t *qs, sl_queue_batch_t *b, int64_t now)
{
    while (qs->lease_count && qs->leases[0].deadline <= now) {
        sl_held_t h = qs->leases[0].delivery;
        sl_queue_t *q;
        lease_pop(qs);
        sl_qmsg_t *m = live(qs, &h, &q);
        if (!m)
            continue;
        sl_queue_end_delivery(qs, q, m);
        sl_queue_requeue(qs, b, q, h.level, h.offset);
    }
}

/* Dead-letters the expired messages at the head of each level; returns
 * when the next head expires. */
static int64_t expire_heads(sl_queue_batch_t *b, sl_queue_t *q, int64_t now)
{
    int64_t next = INT64_MAX, offset;
    for (int i = 0; i < q->levels; i++) {
        while ((offset = sl_queue_peek(&q->level[i])) >= 0) {
            int64_t expires = sl_queue_msg(&q->level[i], offset)->expires_at;
            if (!expires || expires > now) {
                next = expires && expires < next ? expires : next;
                break;
            }
            if (expire_message(b, q, i, offset))
                return now; /* out of memory: try again soon */
        }
    }
    return next;
}

/* Dead-letters the oldest ready messages, lowest priority first, while the
 * queue holds more than its length (dead letters arriving can do that). */
static void trim(sl_queue_batch_t *b, sl_queue_t *q)
{
    int64_t ready = 0, offset;
    for (int i = 0; i < q->levels; i++)
        ready += q->level[i].ready;
    if (q->options.max_length < 0 || q->options.overflow != SL_OVERFLOW_DROP_HEAD)
        return;
    for (int i = 0; i < q->levels && ready > q->options.max_length; i++) {
        sl_qlevel_t *l = &q->level[i];
        while (ready > q->options.max_length && (offset = sl_queue_peek(l)) >= 0) {
            sl_queue_take(l, offset, SL_QMSG_PENDING);
            if (sl_queue_batch_stage_done(b, q, i, offset, "maxlen")) {
                sl_queue_make_ready(l, offset);
                return;
            }
            ready--;
        }
    }
}

int64_t sl_queues_expire(sl_queues_t *qs, sl_queue_batch_t *b)
{
    pthread_mutex_lock(&qs->lock);
    int64_t now = sl_log_now(qs->log), next = INT64_MAX;
    expire_leases(qs, b, now);
    for (size_t i = 0; i < qs->queue_slots; i++) {
        sl_queue_t *q = qs->queues[i];
        if (!q)
            continue;
        int64_t at = expire_heads(b, q, now);
        next = at < next ? at : next;
        trim(b, q);
    }
    if (qs->lease_count && qs->leases[0].deadline < next)
        next = qs->leases[0].deadline;
    pthread_mutex_unlock(&qs->lock);
    return next;
}

int64_t sl_queues_next_lease(sl_queues_t *qs)
{
    pthread_mutex_lock(&qs->lock);
    int64_t at = qs->lease_count ? qs->leases[0].deadline : INT64_MAX;
    pthread_mutex_unlock(&qs->lock);
    return at;
}

/* ---- recovery --------------------------------------------------------------- */

/* Reads the level's 'L' entry into floor and cursor (left as they are if
 * there is none). */
static int read_marks(sl_queues_t *qs, MDB_txn *txn, const sl_queue_t *q, int level, int64_t *floor,
                      int64_t *cursor)
{
    uint8_t key[SL_QUEUE_KEY_MAX];
    MDB_val k = {sl_queue_key(key, 'L', q->name, level, -1), key}, v;
    int rc = mdb_get(txn, qs->dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return sl_state_error(rc, "reading a queue's marks");
    if (v.mv_size != 16)
        return sl_error_set(SL_ECORRUPT, "queue %s: level %d's marks are malformed", q->name,
                            level);
    *floor = (int64_t)sl_queue_get_be(v.mv_data, 8);
    *cursor = (int64_t)sl_queue_get_be((const uint8_t *)v.mv_data + 8, 8);
    return 0;
}

/* Reads the level's messages from its log into memory, all ready. */
static int read_messages(sl_queue_t *q, sl_qlevel_t *l, int64_t end)
{
    sl_reader_t *r;
    sl_record_t rec;
    int rc = sl_reader_open(l->partition, l->floor, &r);
    if (rc)
        return rc;
    sl_reader_set_limit(r, end);
    while (rc == 0 && (rc = sl_reader_next(r, &rec)) == 1) {
        if (rec.offset != l->end)
            rc = sl_error_set(SL_ECORRUPT, "queue %s: offset %lld is missing from its log", q->name,
                              (long long)l->end);
        else
            rc = sl_queue_add_messages(l, &rec, 1);
    }
    sl_reader_close(r);
    if (rc == 0 && l->end != end)
        rc = sl_error_set(SL_ECORRUPT, "queue %s: its log ends at %lld, not %lld", q->name,
                          (long long)l->end, (long long)end);
    return rc;
}

/* Walks the entries of one kind for a level: fn gets the be64 after the
 * level and the value. */
static int walk_level(sl_queues_t *qs, MDB_txn *txn, const sl_queue_t *q, char kind, int level,
                      int (*fn)(sl_qlevel_t *, int64_t, const MDB_val *), sl_qlevel_t *l)
{
    uint8_t prefix[SL_QUEUE_KEY_MAX];
    size_t len = sl_queue_key(prefix, kind, q->name, level, -1);
    MDB_cursor *cur;
    MDB_val k = {len, prefix}, v;
    int rc = mdb_cursor_open(txn, qs->dbi, &cur);
    if (rc)
        return sl_state_error(rc, "opening a cursor");
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == len + 8 && !memcmp(k.mv_data, prefix, len)) {
        if ((rc = fn(l, (int64_t)sl_queue_get_be((const uint8_t *)k.mv_data + len, 8), &v)))
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc > 0 ? sl_state_error(rc, "reading acks") : rc;
}

static int apply_chunk(sl_qlevel_t *l, int64_t chunk, const MDB_val *v)
{
    const uint8_t *bits = v->mv_data;
    if (v->mv_size != SL_ACK_CHUNK / 8)
        return sl_error_set(SL_ECORRUPT, "queues: an ack chunk of %zu bytes", v->mv_size);
    for (int i = 0; i < SL_ACK_CHUNK; i++) {
        sl_qmsg_t *m = sl_queue_msg(l, chunk * SL_ACK_CHUNK + i);
        if (m && (bits[i / 8] >> (i % 8) & 1) && m->state != SL_QMSG_DONE) {
            m->state = SL_QMSG_DONE;
            l->ready--;
        }
    }
    return 0;
}

static int apply_count(sl_qlevel_t *l, int64_t offset, const MDB_val *v)
{
    sl_qmsg_t *m = sl_queue_msg(l, offset);
    if (v->mv_size != 4)
        return sl_error_set(SL_ECORRUPT, "queues: a delivery count of %zu bytes", v->mv_size);
    if (m) {
        uint32_t n = (uint32_t)sl_queue_get_be(v->mv_data, 4);
        m->deliveries = n > UINT16_MAX ? UINT16_MAX : (uint16_t)n;
        m->flags |= SL_QMSG_COUNT_STORED;
    }
    return 0;
}

/* Messages below the cursor were delivered once at least; the ready ones
 * among them go into the heap. */
static int settle_delivered(sl_qlevel_t *l)
{
    for (int64_t o = l->floor; o < l->cursor; o++) {
        sl_qmsg_t *m = sl_queue_msg(l, o);
        if (m->state == SL_QMSG_DONE)
            continue;
        if (!m->deliveries)
            m->deliveries = 1;
        if (heap_push(l, o))
            return sl_error_set(-ENOMEM, "queues: out of memory recovering");
    }
    return 0;
}

static int recover_level(sl_queues_t *qs, MDB_txn *txn, sl_queue_t *q, int level)
{
    sl_qlevel_t *l = &q->level[level];
    int64_t start = sl_partition_start_offset(l->partition);
    int64_t end = sl_partition_end_offset(l->partition), floor = start, cursor = start;
    int rc = read_marks(qs, txn, q, level, &floor, &cursor);
    if (rc)
        return rc;
    l->stored_floor = floor;
    l->stored_cursor = cursor;
    floor = floor < start ? start : floor > end ? end : floor;
    l->floor = l->end = floor;
    l->cursor = cursor < floor ? floor : cursor > end ? end : cursor;
    if ((rc = read_messages(q, l, end)) ||
        (rc = walk_level(qs, txn, q, 'A', level, apply_chunk, l)) ||
        (rc = walk_level(qs, txn, q, 'D', level, apply_count, l)) || (rc = settle_delivered(l)))
        return rc;
    sl_queue_advance_floor(l);
    return 0;
}

int sl_queue_recover(sl_queues_t *qs, sl_queue_t *q)
{
    char topic[SL_TOPIC_NAME_MAX + 1];
    MDB_txn *txn = NULL;
    snprintf(topic, sizeof topic, "%s%s", SL_QUEUE_TOPIC, q->name);
    sl_topic_t *t = sl_log_topic(qs->log, topic);
    q->levels = q->options.max_priority + 1;
    if (!t || sl_topic_config(t)->partitions != q->levels)
        return sl_error_set(SL_ECORRUPT, "queue %s: its log %s is missing or has %d partitions",
                            q->name, topic, t ? sl_topic_config(t)->partitions : 0);
    for (int i = 0; i < q->levels; i++) {
        q->level[i].partition = sl_topic_partition(t, i);
        sl_partition_ref(q->level[i].partition);
    }
    int rc = sl_state_begin(qs->state, 0, &txn);
    for (int i = 0; rc == 0 && i < q->levels; i++)
        rc = recover_level(qs, txn, q, i);
    if (txn)
        mdb_txn_abort(txn);
    return rc;
}

void sl_queue_release(sl_queues_t *qs, sl_queue_t *q)
{
    for (int i = 0; i < q->levels; i++) {
        sl_qlevel_t *l = &q->level[i];
        for (int64_t o = l->floor; o < l->end; o++) {
            sl_qmsg_t *m = sl_queue_msg(l, o);
            if (m->state == SL_QMSG_IN_FLIGHT)
                sl_queue_end_delivery(qs, q, m);
        }
        if (l->reader)
            sl_reader_close(l->reader);
        if (l->partition)
            sl_partition_unref(l->partition);
        sl_free(l->msgs);
        sl_free(l->requeued);
        memset(l, 0, sizeof *l);
    }
}

/* ---- stats ------------------------------------------------------------------- */

static void fill_stats(sl_queue_t *q, int64_t now, sl_queue_stats_t *out)
{
    const sl_qcounters_t *c = &q->counters;
    int64_t oldest = INT64_MAX, offset;
    *out = (sl_queue_stats_t){.in_flight = q->in_flight,
                              .published = c->published,
                              .delivered = c->delivered,
                              .redelivered = c->redelivered,
                              .acked = c->acked,
                              .dead_lettered = c->dead_lettered,
                              .expired = c->expired,
                              .dropped = c->dropped,
                              .rejected = c->rejected,
                              .publish_rate = q->rates[0],
                              .deliver_rate = q->rates[1],
                              .redeliver_rate = q->rates[2],
                              .ack_rate = q->rates[3],
                              .dead_letter_rate = q->rates[4],
                              .priorities = q->levels};
    for (int i = 0; i < q->levels; i++) {
        sl_qlevel_t *l = &q->level[i];
        out->ready += l->ready;
        out->bytes += sl_partition_size_bytes(l->partition);
        if ((offset = sl_queue_peek(l)) >= 0 && sl_queue_msg(l, offset)->timestamp < oldest)
            oldest = sl_queue_msg(l, offset)->timestamp;
    }
    out->oldest_ready_age_ms = oldest == INT64_MAX || oldest > now ? 0 : now - oldest;
}

int sl_queue_stats(sl_queues_t *qs, const char *queue, sl_queue_stats_t *out)
{
    pthread_mutex_lock(&qs->lock);
    sl_queue_t *q = sl_queues_find(qs, queue);
    if (q)
        fill_stats(q, sl_log_now(qs->log), out);
    pthread_mutex_unlock(&qs->lock);
    return q ? 0 : sl_error_set(SL_ENOTFOUND, "no queue %s", queue);
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(sl_queue_t *const *)a)->name, (*(sl_queue_t *const *)b)->name);
}

int sl_queues_foreach_queue(sl_queues_t *qs,
                            int (*fn)(void *arg, const char *name, const sl_queue_stats_t *st),
                            void *arg)
{
    sl_queue_stats_t st;
    int rc = 0;
    pthread_mutex_lock(&qs->lock);
    sl_queue_t **sorted = sl_malloc((qs->queue_slots ? qs->queue_slots : 1) * sizeof *sorted);
    size_t n = 0;
    for (size_t i = 0; sorted && i < qs->queue_slots; i++)
        if (qs->queues[i])
            sorted[n++] = qs->queues[i];
    if (sorted)
        qsort(sorted, n, sizeof *sorted, by_name);
    int64_t now = sl_log_now(qs->log);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        fill_stats(sorted[i], now, &st);
        rc = fn(arg, sorted[i]->name, &st);
    }
    pthread_mutex_unlock(&qs->lock);
    sl_free(sorted);
    return sorted ? rc : -ENOMEM;
}

/* Rates as exponentially weighted averages with a time constant of about
 * 10 s: each tick moves a rate towards the last interval's rate by
 * dt / (dt + 10 s). */
void sl_queues_tick(sl_queues_t *qs)
{
    pthread_mutex_lock(&qs->lock);
    int64_t now = sl_log_now(qs->log), dt = now - qs->last_tick_ms;
    if (dt > 0) {
        double weight = (double)dt / ((double)dt + 10000.0);
        for (size_t i = 0; i < qs->queue_slots; i++) {
            sl_queue_t *q = qs->queues[i];
            if (!q)
                continue;
            const sl_qcounters_t *a = &q->counters, *b = &q->counted;
            int64_t moved[5] = {a->published - b->published, a->delivered - b->delivered,
                                a->redelivered - b->redelivered, a->acked - b->acked,
                                a->dead_lettered - b->dead_lettered};
            for (int k = 0; k < 5; k++)
                q->rates[k] += weight * ((double)moved[k] * 1000.0 / (double)dt - q->rates[k]);
            q->counted = q->counters;
        }
        qs->last_tick_ms = now;
    }
    pthread_mutex_unlock(&qs->lock);
}

/*
 * qstage.c - the server's side of the work queues: one group commit per
 * event-loop round, blocked QPOPs served in the order they blocked,
 * leases and TTLs on a timer, consumers that disconnect, and the queues'
 * metrics.
 *
 * The round: QPUBLISH, ACK and NACK stage their changes in the server's
 * one sl_queue_batch_t and leave a staged hold in their connection's reply
 * chain (as PRODUCE does, stage.c). The flush event has a lower priority
 * than socket events, so it runs once the loop has read every ready
 * connection; it commits the whole batch (one LMDB transaction, one fsync
 * per queue partition touched) and only then writes each staged reply:
 * the publisher's confirm, the ack's count, or the commit's error.
 *
 * Waiters: a QPOP ... BLOCK that finds nothing joins a FIFO of waiters and
 * blocks its connection. When messages become ready (after a commit, a
 * lease expiry, a consumer leaving) the FIFO is walked in order and each
 * waiter whose queue has messages is run again, so the consumer that has
 * waited longest is served first. A blocked QPOP run again for any other
 * reason (the server retries blocked commands whenever a partition's data
 * becomes visible) only checks its deadline, so it never jumps the queue.
 */
#include "queries/server.h"

#include <errno.h>
#include <string.h>

/* What a connection that uses queues has. */
typedef struct sl_queue_client {
    sl_conn_t *conn;
    sl_queue_consumer_t *consumer;
    struct sl_queue_client *prev, *next; /* in the waiters' FIFO */
    int waiting;
    char queue[SL_QUEUE_NAME_MAX + 1]; /* what its blocked QPOP waits for */
} sl_queue_client_t;

/* A reply written at the commit. */
typedef struct pending {
    sl_hold_t *hold;
    int64_t value;
} pending_t;

struct sl_qstage {
    sl_server_t *server;
    sl_queues_t *queues;
    sl_queue_batch_t *batch;
    pending_t *pending;
    size_t pending_count, pending_cap;
    struct event *flush; /* the commit, after this round's I/O */
    struct event *timer; /* leases and TTLs */
    struct event *tick;  /* rates, every second */
    int64_t timer_at;    /* log clock, ms; INT64_MAX: not armed */
    sl_queue_client_t *head, *tail;
    const sl_conn_t *serving; /* the waiter run by serve_waiters() now */
};

static void on_flush(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void on_tick(evutil_socket_t fd, short what, void *arg);

int sl_server_set_queues(sl_server_t *s, sl_queues_t *queues)
{
    sl_qstage_t *q = sl_calloc(1, sizeof *q);
    struct timeval second = {1, 0};
    if (!q)
        return sl_error_set(-ENOMEM, "out of memory starting the queues");
    q->server = s;
    q->queues = queues;
    q->timer_at = INT64_MAX;
    q->flush = event_new(s->base, -1, 0, on_flush, q);
    q->timer = evtimer_new(s->base, on_timer, q);
    q->tick = event_new(s->base, -1, EV_PERSIST, on_tick, q);
    s->qstage = q;
    if (!q->flush || !q->timer || !q->tick || sl_queue_batch_new(queues, &q->batch)) {
        sl_qstage_free(s);
        return sl_error_set(-ENOMEM, "out of memory starting the queues");
    }
    event_priority_set(q->flush, 1);
    event_priority_set(q->timer, 0);
    event_priority_set(q->tick, 0);
    evtimer_add(q->tick, &second);
    event_active(q->timer, EV_TIMEOUT, 0); /* leases and TTLs due since the last run */
    return 0;
}

sl_queues_t *sl_qstage_queues(sl_request_t *req)
{
    sl_qstage_t *q = req->server->qstage;
    if (!q)
        sl_request_error(req, "work queues are not enabled on this server");
    return q ? q->queues : NULL;
}

sl_queue_batch_t *sl_qstage_batch(sl_server_t *s)
{
    return s->qstage->batch;
}

/* ---- the commit ----------------------------------------------------------- */

int sl_qstage_reply(sl_request_t *req, int64_t value)
{
    sl_qstage_t *q = req->server->qstage;
    if (sl_array_reserve((void **)&q->pending, &q->pending_cap, q->pending_count + 1,
                         sizeof *q->pending))
        return -ENOMEM;
    sl_hold_t *h = sl_conn_hold(req->conn, 1);
    if (!h)
        return -ENOMEM;
    h->staged = 1;
    q->pending[q->pending_count++] = (pending_t){h, value};
    event_active(q->flush, EV_TIMEOUT, 0);
    return 0;
}

void sl_qstage_schedule(sl_server_t *s)
{
    if (s->qstage && !sl_queue_batch_empty(s->qstage->batch))
        event_active(s->qstage->flush, EV_TIMEOUT, 0);
}

/* Writes every staged reply: its value, or the commit's error. */
static void answer(sl_qstage_t *q, int rc, const char *error)
{
    for (size_t i = 0; i < q->pending_count; i++) {
        sl_hold_t *h = q->pending[i].hold;
        sl_reply_t r = {h->reply, 0};
        h->staged = 0;
        if (h->orphaned)
            sl_free_hold(h);
        else if (rc)
            sl_reply_error(&r, "queue commit failed, nothing of it happened: %s", error);
        else
            sl_reply_int(&r, q->pending[i].value);
    }
    q->pending_count = 0;
}

/* Commits the round's batch and answers its replies. */
static void commit(sl_qstage_t *q)
{
    char error[512] = "";
    int rc = sl_queue_batch_commit(q->batch);
    if (rc)
        snprintf(error, sizeof error, "%s", sl_error_detail());
    if (rc)
        sl_report(SL_ERROR, "queues", "commit failed: %s", error);
    answer(q, rc, error);
}

static void arm_timer(sl_qstage_t *q, int64_t at)
{
    int64_t wait = at - sl_log_now(q->server->log);
    if (at == INT64_MAX) {
        evtimer_del(q->timer);
        q->timer_at = at;
        return;
    }
    wait = wait < 0 ? 0 : wait > 3600000 ? 3600000 : wait;
    struct timeval tv = {wait / 1000, (wait % 1000) * 1000};
    evtimer_add(q->timer, &tv);
    q->timer_at = at;
}

void sl_qstage_lease(sl_server_t *s, int64_t deadline)
{
    if (s->qstage && deadline < s->qstage->timer_at)
        arm_timer(s->qstage, deadline);
}

static void serve_waiters(sl_qstage_t *q);

/* Commits, then stages what time made due (expiries, trims) and commits
 * that too, a bounded number of times; serves the waiters. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    sl_qstage_t *q = arg;
    sl_server_t *s = q->server;
    (void)fd;
    (void)what;
    for (int round = 0; round < 4; round++) {
        commit(q);
        arm_timer(q, sl_queues_expire(q->queues, q->batch));
        if (sl_queue_batch_empty(q->batch))
            break;
    }
    sl_server_release_all(s);
    serve_waiters(q);
    if (!sl_queue_batch_empty(q->batch) || q->pending_count)
        event_active(q->flush, EV_TIMEOUT, 0);
    if (s->shutting_down)
        event_active(s->wake, EV_READ, 0); /* lets the shutdown see no reply is left */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    sl_qstage_t *q = arg;
    (void)fd;
    (void)what;
    q->timer_at = INT64_MAX;
    arm_timer(q, sl_queues_expire(q->queues, q->batch));
    if (!sl_queue_batch_empty(q->batch))
        event_active(q->flush, EV_TIMEOUT, 0);
    serve_waiters(q); /* leases that ran out made messages ready */
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sl_queues_tick(((sl_qstage_t *)arg)->queues);
}

/* ---- clients and waiters ---------------------------------------------------- */

static sl_queue_client_t *client_of(sl_conn_t *c)
{
    sl_queue_client_t *cl = c->queue_client;
    if (cl)
        return cl;
    cl = sl_calloc(1, sizeof *cl);
    if (!cl || sl_queues_consumer_open(c->server->qstage->queues, &cl->consumer)) {
        sl_free(cl);
        return NULL;
    }
    cl->conn = c;
    c->queue_client = cl;
    return cl;
}

sl_queue_consumer_t *sl_qstage_consumer(sl_request_t *req)
{
    sl_queue_client_t *cl = client_of(req->conn);
    return cl ? cl->consumer : NULL;
}

void sl_qstage_wait(sl_request_t *req, const char *queue)
{
    sl_qstage_t *q = req->server->qstage;
    sl_queue_client_t *cl = req->conn->queue_client;
    if (!cl || cl->waiting)
        return;
    snprintf(cl->queue, sizeof cl->queue, "%s", queue);
    cl->waiting = 1;
    cl->prev = q->tail;
    cl->next = NULL;
    if (q->tail)
        q->tail->next = cl;
    else
        q->head = cl;
    q->tail = cl;
}

void sl_qstage_unwait(sl_conn_t *c)
{
    sl_queue_client_t *cl = c->queue_client;
    sl_qstage_t *q = c->server->qstage;
    if (!cl || !cl->waiting)
        return;
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        q->head = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    else
        q->tail = cl->prev;
    cl->prev = cl->next = NULL;
    cl->waiting = 0;
}

int64_t sl_qstage_waiting(sl_server_t *s, const char *queue)
{
    int64_t n = 0;
    for (sl_queue_client_t *cl = s->qstage ? s->qstage->head : NULL; cl; cl = cl->next)
        n += !strcmp(cl->queue, queue);
    return n;
}

int sl_qstage_serving(const sl_conn_t *c)
{
    return c->server->qstage && c->server->qstage->serving == c;
}

/* Runs each waiter whose queue has messages ready for it, oldest first. */
static void serve_waiters(sl_qstage_t *q)
{
    for (sl_queue_client_t *cl = q->head, *next; cl; cl = next) {
        next = cl->next;
        if (sl_queue_ready(q->queues, cl->queue) <= 0 ||
            sl_queues_consumer_room(q->queues, cl->consumer) <= 0)
            continue;
        q->serving = cl->conn;
        sl_conn_wake(cl->conn); /* may free cl; never another waiter */
        q->serving = NULL;
    }
}

void sl_qstage_serve(sl_server_t *s)
{
    if (s->qstage)
        serve_waiters(s->qstage);
}

void sl_qstage_conn_closed(sl_conn_t *c)
{
    sl_queue_client_t *cl = c->queue_client;
    sl_qstage_t *q = c->server->qstage;
    if (!cl)
        return;
    sl_qstage_unwait(c);
    if (q) {
        sl_queues_consumer_close(q->queues, cl->consumer, q->batch);
        if (!sl_queue_batch_empty(q->batch))
            event_active(q->flush, EV_TIMEOUT, 0); /* commits, then serves the waiters */
    }
    c->queue_client = NULL;
    sl_free(cl);
}

void sl_qstage_free(sl_server_t *s)
{
    sl_qstage_t *q = s->qstage;
    if (!q)
        return;
    if (q->batch) {
        commit(q); /* what the last round staged; the replies go nowhere */
        sl_queue_batch_free(q->batch);
    }
    if (q->flush)
        event_free(q->flush);
    if (q->timer)
        event_free(q->timer);
    if (q->tick)
        event_free(q->tick);
    sl_free(q->pending);
    sl_free(q);
    s->qstage = NULL;
}

/* ---- metrics ------------------------------------------------------------------ */

typedef struct queue_family {
    struct evbuffer *out;
    const char *name;
    int which;
} queue_family_t;

static void escaped(struct evbuffer *out, const char *value)
{
    for (const char *p = value; *p; p++) /* names are [A-Za-z0-9._-]: nothing to escape */
        evbuffer_add(out, p, 1);
}

static int queue_sample(void *arg, const char *name, const sl_queue_stats_t *st)
{
    queue_family_t *f = arg;
    int64_t v[] = {st->ready,       st->in_flight, st->published,     st->delivered,
                   st->redelivered, st->acked,     st->dead_lettered, st->expired,
                   st->dropped,     st->rejected,  st->bytes};
    evbuffer_add_printf(f->out, "%s{queue=\"", f->name);
    escaped(f->out, name);
    if (f->which < 0)
        evbuffer_add_printf(f->out, "\"} %.3f\n", (double)st->oldest_ready_age_ms / 1000.0);
    else
        evbuffer_add_printf(f->out, "\"} %lld\n", (long long)v[f->which]);
    return 0;
}

static int exchange_sample(void *arg, const char *name, sl_exchange_type_t type, int64_t unroutable)
{
    struct evbuffer *out = arg;
    evbuffer_add_printf(out, "sluice_exchange_unroutable_total{exchange=\"");
    escaped(out, name);
    evbuffer_add_printf(out, "\",type=\"%s\"} %lld\n", sl_exchange_type_name(type),
                        (long long)unroutable);
    return 0;
}

void sl_qstage_metrics(sl_server_t *s, struct evbuffer *out)
{
    static const char *const families[][3] = {
        {"sluice_queue_ready", "gauge", "Messages ready for delivery."},
        {"sluice_queue_in_flight", "gauge", "Messages delivered and not yet acknowledged."},
        {"sluice_queue_published_total", "counter", "Messages stored in the queue."},
        {"sluice_queue_delivered_total", "counter", "Deliveries, redeliveries included."},
        {"sluice_queue_redelivered_total", "counter", "Deliveries of a message delivered before."},
        {"sluice_queue_acked_total", "counter", "Messages acknowledged."},
        {"sluice_queue_dead_lettered_total", "counter",
         "Messages that left without an ack (rejected, expired, over their deliveries or the "
         "length)."},
        {"sluice_queue_expired_total", "counter", "Messages dead-lettered by their TTL."},
        {"sluice_queue_dropped_total", "counter", "Messages dead-lettered by the max length."},
        {"sluice_queue_rejected_total", "counter", "Publishes refused by a full queue."},
        {"sluice_queue_bytes", "gauge", "Bytes of the queue's log."},
    };
    if (!s->qstage)
        return;
    for (int i = 0; i < (int)(sizeof families / sizeof *families); i++) {
        queue_family_t f = {out, families[i][0], i};
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[i][0], families[i][2],
                            families[i][0], families[i][1]);
        sl_queues_foreach_queue(s->qstage->queues, queue_sample, &f);
    }
    queue_family_t age = {out, "sluice_queue_oldest_ready_age_seconds", -1};
    evbuffer_add_printf(out, "# HELP %s Age of the oldest ready message.\n# TYPE %s gauge\n",
                        age.name, age.name);
    sl_queues_foreach_queue(s->qstage->queues, queue_sample, &age);
    evbuffer_add_printf(out, "# HELP sluice_exchange_unroutable_total Messages published to the "
                             "exchange that reached no queue.\n"
                             "# TYPE sluice_exchange_unroutable_total counter\n");
    sl_queues_foreach_exchange(s->qstage->queues, exchange_sample, out);
}

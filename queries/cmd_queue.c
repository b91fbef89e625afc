/*
 * cmd_queue.c - work-queue commands: QUEUE DECLARE | DELETE | STATS |
 * PREFETCH | LIST, QPUBLISH, QPOP, ACK and NACK.
 *
 * QPUBLISH, ACK and NACK stage their changes and reply once the round's
 * group commit has made them durable (qstage.c); QPOP replies at once, or
 * blocks until messages arrive for it.
 */
#include "queries/server.h"

#include <stdio.h>
#include <string.h>

/* ---- QUEUE ----------------------------------------------------------------- */

/* Parses QUEUE DECLARE's options from argv[3] on into o. */
static int declare_options(sl_request_t *req, sl_queue_options_t *o)
{
    for (size_t i = 3; i < req->argc; i += 2) {
        const sl_resp_arg_t *word = &req->argv[i], *value = &req->argv[i + 1];
        int64_t v;
        if (i + 1 >= req->argc)
            return -1;
        if (sl_arg_is(word, "MAXPRIORITY") && !sl_arg_int(value, 0, SL_QUEUE_PRIORITY_MAX, &v))
            o->max_priority = (int32_t)v;
        else if (sl_arg_is(word, "TTL") && !sl_arg_int(value, 0, INT64_MAX / 4, &v))
            o->ttl_ms = v;
        else if (sl_arg_is(word, "MAXLEN") && !sl_arg_int(value, 0, INT64_MAX, &v))
            o->max_length = v;
        else if (sl_arg_is(word, "OVERFLOW") && sl_arg_is(value, "drop-head"))
            o->overflow = SL_OVERFLOW_DROP_HEAD;
        else if (sl_arg_is(word, "OVERFLOW") && sl_arg_is(value, "reject-publish"))
            o->overflow = SL_OVERFLOW_REJECT_PUBLISH;
        else if (sl_arg_is(word, "MAXDELIVERIES") && !sl_arg_int(value, 1, INT32_MAX, &v))
            o->max_deliveries = (int32_t)v;
        else if (sl_arg_is(word, "LEASE") && !sl_arg_int(value, 1, INT64_MAX / 4, &v))
            o->lease_ms = v;
        else if (!sl_arg_is(word, "DEADLETTER") ||
                 sl_arg_name(value, o->dead_letter, sizeof o->dead_letter))
            return -1;
    }
    return 0;
}

/* QUEUE DECLARE name [MAXPRIORITY n] [TTL ms] [MAXLEN n] [OVERFLOW
 * drop-head|reject-publish] [MAXDELIVERIES n] [DEADLETTER queue] [LEASE ms] */
static int queue_declare(sl_request_t *req, sl_queues_t *qs, const char *name)
{
    sl_queue_options_t o;
    sl_queue_options_default(&o);
    if (declare_options(req, &o))
        return sl_request_error(req, "syntax error: QUEUE DECLARE name [MAXPRIORITY 0-9] [TTL "
                                     "ms] [MAXLEN n] [OVERFLOW drop-head|reject-publish] "
                                     "[MAXDELIVERIES n] [DEADLETTER queue] [LEASE ms]");
    int rc = sl_queues_declare_queue(qs, name, &o);
    if (rc)
        return sl_queue_error(req, rc);
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

static void stat_int(sl_reply_t *r, const char *name, int64_t v)
{
    sl_reply_cstr(r, name);
    sl_reply_int(r, v);
}

static void stat_rate(sl_reply_t *r, const char *name, double v)
{
    char text[32];
    sl_reply_cstr(r, name);
    sl_reply_bulk(r, text, (size_t)snprintf(text, sizeof text, "%.2f", v));
}

/* QUEUE STATS name -> map of numbers (rates per second as text) */
static int queue_stats(sl_request_t *req, sl_queues_t *qs, const char *name)
{
    sl_queue_stats_t st;
    sl_reply_t *r = &req->reply;
    int rc = sl_queue_stats(qs, name, &st);
    if (rc)
        return sl_queue_error(req, rc);
    sl_reply_map(r, 19);
    stat_int(r, "ready", st.ready);
    stat_int(r, "in_flight", st.in_flight);
    stat_int(r, "waiting", sl_qstage_waiting(req->server, name));
    stat_int(r, "published", st.published);
    stat_int(r, "delivered", st.delivered);
    stat_int(r, "redelivered", st.redelivered);
    stat_int(r, "acked", st.acked);
    stat_int(r, "dead_lettered", st.dead_lettered);
    stat_int(r, "expired", st.expired);
    stat_int(r, "dropped", st.dropped);
    stat_int(r, "rejected", st.rejected);
    stat_rate(r, "publish_rate", st.publish_rate);
    stat_rate(r, "deliver_rate", st.deliver_rate);
    stat_rate(r, "redeliver_rate", st.redeliver_rate);
    stat_rate(r, "ack_rate", st.ack_rate);
    stat_rate(r, "dead_letter_rate", st.dead_letter_rate);
    stat_int(r, "oldest_ready_age_ms", st.oldest_ready_age_ms);
    stat_int(r, "bytes", st.bytes);
    stat_int(r, "priorities", st.priorities);
    return SL_DONE;
}

typedef struct listing {
    sl_reply_t reply;
    size_t count;
} listing_t;

static int list_queue(void *arg, const char *name, const sl_queue_stats_t *st)
{
    listing_t *l = arg;
    (void)st;
    sl_reply_cstr(&l->reply, name);
    l->count++;
    return 0;
}

/* QUEUE LIST -> [name, ...] */
static int queue_list(sl_request_t *req, sl_queues_t *qs)
{
    listing_t l = {{req->server->scratch, req->conn->resp3}, 0};
    evbuffer_drain(l.reply.out, evbuffer_get_length(l.reply.out));
    sl_queues_foreach_queue(qs, list_queue, &l);
    sl_reply_array(&req->reply, l.count);
    evbuffer_add_buffer(req->reply.out, l.reply.out);
    return SL_DONE;
}

/* QUEUE PREFETCH n: this connection holds at most n deliveries (0: no
 * limit). */
static int queue_prefetch(sl_request_t *req, sl_queues_t *qs)
{
    int64_t n;
    sl_queue_consumer_t *c = sl_qstage_consumer(req);
    if (req->argc != 3 || sl_arg_int(&req->argv[2], 0, INT32_MAX, &n))
        return sl_request_error(req, "syntax error: QUEUE PREFETCH n (0: no limit)");
    if (!c)
        return sl_request_error(req, "out of memory");
    sl_queues_consumer_set_prefetch(qs, c, n);
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

int sl_cmd_queue(sl_request_t *req)
{
    char name[SL_QUEUE_NAME_MAX + 1];
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs)
        return SL_DONE;
    if (sl_arg_is(&req->argv[1], "LIST") && req->argc == 2)
        return queue_list(req, qs);
    if (sl_arg_is(&req->argv[1], "PREFETCH"))
        return queue_prefetch(req, qs);
    if (req->argc < 3)
        return sl_request_error(req, "syntax error: QUEUE DECLARE | DELETE | STATS name, QUEUE "
                                     "PREFETCH n, QUEUE LIST");
    if (sl_queue_name_arg(req, &req->argv[2], "queue", name))
        return SL_DONE;
    if (sl_arg_is(&req->argv[1], "DECLARE"))
        return queue_declare(req, qs, name);
    if (sl_arg_is(&req->argv[1], "STATS") && req->argc == 3)
        return queue_stats(req, qs, name);
    if (sl_arg_is(&req->argv[1], "DELETE") && req->argc == 3) {
        int rc = sl_queues_delete_queue(qs, name);
        if (rc)
            return sl_queue_error(req, rc);
        sl_reply_simple(&req->reply, "OK");
        return SL_DONE;
    }
    return sl_request_error(req, "syntax error: QUEUE DECLARE | DELETE | STATS name, QUEUE "
                                 "PREFETCH n, QUEUE LIST");
}

/* ---- QPUBLISH -------------------------------------------------------------- */

#define MAX_HEADERS 64

typedef struct publish_args {
    char exchange[SL_QUEUE_NAME_MAX + 1];
    sl_queue_message_t message;
    sl_header_t headers[MAX_HEADERS];
    int mandatory;
} publish_args_t;

static int publish_options(sl_request_t *req, publish_args_t *a)
{
    sl_queue_message_t *m = &a->message;
    for (size_t i = 4; i < req->argc; i++) {
        const sl_resp_arg_t *w = &req->argv[i];
        int64_t v;
        if (sl_arg_is(w, "MANDATORY")) {
            a->mandatory = 1;
        } else if (sl_arg_is(w, "PRIORITY") && i + 1 < req->argc &&
                   !sl_arg_int(&req->argv[i + 1], 0, 255, &v)) {
            m->priority = (int32_t)v;
            i++;
        } else if (sl_arg_is(w, "TTL") && i + 1 < req->argc &&
                   !sl_arg_int(&req->argv[i + 1], 0, INT64_MAX / 4, &v)) {
            m->ttl_ms = v;
            i++;
        } else if (sl_arg_is(w, "HEADER") && i + 2 < req->argc && m->header_count < MAX_HEADERS) {
            a->headers[m->header_count++] = (sl_header_t){
                (const uint8_t *)req->argv[i + 1].data, (int32_t)req->argv[i + 1].len,
                (const uint8_t *)req->argv[i + 2].data, (int32_t)req->argv[i + 2].len};
            i += 2;
        } else {
            return -1;
        }
    }
    return 0;
}

static int parse_publish(sl_request_t *req, publish_args_t *a)
{
    const sl_resp_arg_t *key = &req->argv[2], *payload = &req->argv[3];
    size_t max = req->server->options.max_value_bytes;
    a->message = (sl_queue_message_t){
        key->data, key->len, (const uint8_t *)payload->data, (int32_t)payload->len, a->headers, 0,
        0,         -1};
    a->mandatory = 0;
    if (sl_queue_name_arg(req, &req->argv[1], "exchange", a->exchange))
        return SL_DONE;
    if (key->len > SL_ROUTING_KEY_MAX)
        return sl_request_error(req, "routing key of %zu bytes is over %d bytes", key->len,
                                SL_ROUTING_KEY_MAX);
    if (payload->len > max)
        return sl_request_error(req,
                                "payload of %zu bytes is over the limit of %zu bytes "
                                "(--max-value-bytes)",
                                payload->len, max);
    if (publish_options(req, a))
        return sl_request_error(req, "syntax error: QPUBLISH exchange routing-key payload "
                                     "[PRIORITY 0-255] [HEADER name value]... [TTL ms] "
                                     "[MANDATORY] (up to 64 headers)");
    return -1;
}

/* QPUBLISH exchange routing-key payload [PRIORITY p] [HEADER k v]... [TTL ms]
 * [MANDATORY] -> the number of queues it is stored in, once it is durable
 * in all of them ("" is the default exchange: the queue named by the
 * routing key). */
int sl_cmd_qpublish(sl_request_t *req)
{
    publish_args_t a;
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs || parse_publish(req, &a) == SL_DONE)
        return SL_DONE;
    int n = sl_queue_batch_publish(sl_qstage_batch(req->server), a.exchange, &a.message);
    if (n < 0)
        return sl_queue_error(req, n);
    if (n == 0 && a.mandatory)
        return sl_request_error(
            req,
            "unroutable: no queue bound to exchange '%s' matches routing "
            "key '%.*s' (MANDATORY)",
            a.exchange, (int)(a.message.routing_key_len < 100 ? a.message.routing_key_len : 100),
            a.message.routing_key);
    if (n == 0) {
        sl_reply_int(&req->reply, 0);
        return SL_DONE;
    }
    if (sl_qstage_reply(req, n))
        return sl_request_error(req, "out of memory");
    return SL_DONE;
}

/* ---- QPOP ------------------------------------------------------------------ */

typedef struct pop_args {
    char queue[SL_QUEUE_NAME_MAX + 1];
    int64_t count, block_ms, lease_ms;
} pop_args_t;

static int parse_pop(sl_request_t *req, pop_args_t *a)
{
    a->count = 1;
    a->block_ms = -1;
    a->lease_ms = 0;
    if (sl_queue_name_arg(req, &req->argv[1], "queue", a->queue))
        return SL_DONE;
    for (size_t i = 2; i < req->argc; i += 2) {
        const sl_resp_arg_t *w = &req->argv[i];
        int64_t *into = sl_arg_is(w, "COUNT")   ? &a->count
                        : sl_arg_is(w, "BLOCK") ? &a->block_ms
                        : sl_arg_is(w, "LEASE") ? &a->lease_ms
                                                : NULL;
        if (!into || i + 1 >= req->argc ||
            sl_arg_int(&req->argv[i + 1], into != &a->block_ms,
                       into == &a->count ? 100000 : INT32_MAX, into))
            return sl_request_error(req, "syntax error: QPOP queue [COUNT n (1-100000)] [BLOCK "
                                         "ms (0 = forever)] [LEASE ms]");
    }
    return -1;
}

static void put_delivery(void *arg, const sl_queue_delivery_t *d)
{
    sl_reply_t *r = arg;
    sl_reply_array(r, 5);
    sl_reply_int(r, (int64_t)d->tag);
    sl_reply_bulk(r, d->payload, (size_t)d->payload_len);
    sl_reply_int(r, d->deliveries);
    sl_reply_int(r, d->priority);
    sl_reply_array(r, 2 * (size_t)d->header_count);
    for (uint32_t i = 0; i < d->header_count; i++) {
        sl_reply_bulk(r, d->headers[i].name, (size_t)d->headers[i].name_len);
        sl_reply_bulk_or_null(r, d->headers[i].value, d->headers[i].value_len);
    }
}

/* A QPOP that found nothing: waits (BLOCK) or replies an empty array. */
static int wait_or_empty(sl_request_t *req, const pop_args_t *a)
{
    int outcome = sl_block_or_empty(req, a->block_ms);
    if (outcome == SL_BLOCKED)
        sl_qstage_wait(req, a->queue);
    else
        sl_qstage_unwait(req->conn);
    return outcome;
}

/* QPOP queue [COUNT n] [BLOCK ms] [LEASE ms]
 * -> [[tag, payload, delivery_count, priority, [header name, value, ...]], ...] */
int sl_cmd_qpop(sl_request_t *req)
{
    pop_args_t a;
    sl_server_t *s = req->server;
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs || parse_pop(req, &a) == SL_DONE)
        return SL_DONE;
    sl_conn_t *c = req->conn;
    sl_queue_consumer_t *consumer = sl_qstage_consumer(req);
    if (!consumer)
        return sl_request_error(req, "out of memory");
    int over = c->block_deadline_ms >= 0 && sl_now_ms() >= c->block_deadline_ms;
    if (req->retry && !sl_qstage_serving(c) && !over && !s->shutting_down)
        return wait_or_empty(req, &a); /* woken for another reason: keep its place */
    sl_reply_t r = {s->scratch, c->resp3};
    evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
    int n = sl_queue_pop(qs, sl_qstage_batch(s), a.queue, consumer, a.count, a.lease_ms,
                         put_delivery, &r);
    sl_qstage_schedule(s); /* expired messages met on the way are dead-lettered */
    if (n < 0) {
        sl_qstage_unwait(c);
        return sl_queue_error(req, n);
    }
    if (n == 0)
        return wait_or_empty(req, &a);
    sl_qstage_unwait(c);
    sl_qstage_lease(s, sl_queues_next_lease(qs));
    sl_reply_array(&req->reply, (size_t)n);
    evbuffer_add_buffer(req->reply.out, s->scratch);
    return SL_DONE;
}

/* ---- ACK and NACK ---------------------------------------------------------- */

#define MAX_TAGS 100000

/* ACK queue tag [tag ...] -> how many of them were in flight and are now
 * acknowledged (durably).
 * NACK queue tag [REQUEUE] -> 1 if it was in flight (now ready again, or
 * dead-lettered), else 0. */
int sl_cmd_ack(sl_request_t *req)
{
    char queue[SL_QUEUE_NAME_MAX + 1];
    int nack = sl_arg_is(&req->argv[0], "NACK"), requeue = 0;
    int64_t tag, done = 0;
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs || sl_queue_name_arg(req, &req->argv[1], "queue", queue))
        return SL_DONE;
    if (nack && req->argc == 4 && sl_arg_is(&req->argv[3], "REQUEUE"))
        requeue = 1;
    if ((nack && req->argc != 3 + (size_t)requeue) || req->argc - 2 > MAX_TAGS)
        return sl_request_error(req, "syntax error: NACK queue tag [REQUEUE]");
    for (size_t i = 2; i < req->argc; i++)
        if (sl_arg_int(&req->argv[i], 0, INT64_MAX, &tag) && !(nack && i == 3))
            return sl_request_error(req, "delivery tag '%.*s' is not a non-negative integer",
                                    (int)(req->argv[i].len < 40 ? req->argv[i].len : 40),
                                    req->argv[i].data);
    if (sl_queue_ready(qs, queue) < 0)
        return sl_request_error(req, "NOTFOUND no queue %s", queue);
    sl_queue_batch_t *b = sl_qstage_batch(req->server);
    for (size_t i = 2; i < (nack ? 3 : req->argc); i++) {
        sl_arg_int(&req->argv[i], 0, INT64_MAX, &tag);
        int rc = nack ? sl_queue_batch_nack(b, queue, (uint64_t)tag, requeue)
                      : sl_queue_batch_ack(b, queue, (uint64_t)tag);
        if (rc < 0)
            return sl_queue_error(req, rc);
        done += rc;
    }
    if (done == 0) {
        sl_reply_int(&req->reply, 0);
        return SL_DONE;
    }
    if (sl_qstage_reply(req, done))
        return sl_request_error(req, "out of memory");
    return SL_DONE;
}

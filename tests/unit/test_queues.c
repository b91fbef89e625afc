/*
 * test_queues.c - work queues in storage: declarations (persisted,
 * idempotent, differences named), routing into queues, priorities and
 * FIFO, acks, nacks, redelivery on lease expiry and on a consumer closing,
 * max deliveries, TTL, max length in both overflow modes, dead letters and
 * their headers, prefetch, recovery after a reopen and after a crash
 * mid-commit, a failed commit leaving no trace, reclaiming consumed
 * segments, deleting queues, and stats.
 */
#include "testutil.h"

#include "storage/state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct qnode {
    char *dir;
    tu_clock_t clock;
    sl_log_t *log;
    sl_state_t *state;
    sl_queues_t *qs;
    sl_queue_batch_t *b;
    sl_queue_consumer_t *c;
} qnode_t;

static void qn_open(qnode_t *n)
{
    sl_log_options_t o = tu_options(&n->clock);
    assert_int_equal(sl_log_open(n->dir, &o, &n->log), 0);
    assert_int_equal(sl_state_open(n->dir, NULL, &n->state), 0);
    assert_int_equal(sl_log_attach_state(n->log, n->state), 0);
    assert_int_equal(sl_queues_open(n->log, n->state, &n->qs), 0);
    assert_int_equal(sl_queue_batch_new(n->qs, &n->b), 0);
    assert_int_equal(sl_queues_consumer_open(n->qs, &n->c), 0);
}

static void qn_close(qnode_t *n)
{
    sl_queues_consumer_close(n->qs, n->c, n->b);
    sl_queue_batch_free(n->b);
    sl_queues_close(n->qs);
    sl_log_close(n->log);
    sl_state_close(n->state);
}

static qnode_t *qn_new(void)
{
    qnode_t *n = calloc(1, sizeof *n);
    n->dir = tu_mkdtemp();
    n->clock.now_ms = 1000000;
    qn_open(n);
    return n;
}

static void qn_free(qnode_t *n)
{
    qn_close(n);
    tu_rmdir(n->dir);
    free(n);
}

static void qn_reopen(qnode_t *n)
{
    qn_close(n);
    qn_open(n);
}

/* Declares a queue with options given as "NAME=value" strings. */
static void declare(qnode_t *n, const char *name, ...)
{
    sl_queue_options_t o;
    va_list ap;
    sl_queue_options_default(&o);
    va_start(ap, name);
    for (const char *kv; (kv = va_arg(ap, const char *));) {
        const char *v = strchr(kv, '=') + 1;
        if (!strncmp(kv, "maxpriority=", 12))
            o.max_priority = atoi(v);
        else if (!strncmp(kv, "ttl=", 4))
            o.ttl_ms = atoll(v);
        else if (!strncmp(kv, "maxlen=", 7))
            o.max_length = atoll(v);
        else if (!strncmp(kv, "reject=", 7))
            o.overflow = SL_OVERFLOW_REJECT_PUBLISH;
        else if (!strncmp(kv, "maxdeliveries=", 14))
            o.max_deliveries = atoi(v);
        else if (!strncmp(kv, "deadletter=", 11))
            snprintf(o.dead_letter, sizeof o.dead_letter, "%s", v);
        else if (!strncmp(kv, "lease=", 6))
            o.lease_ms = atoll(v);
        else if (!strncmp(kv, "segment=", 8))
            o.segment_bytes = atoll(v);
        else
            fail_msg("unknown option %s", kv);
    }
    va_end(ap);
    assert_int_equal(sl_queues_declare_queue(n->qs, name, &o), 0);
}

static int stage(qnode_t *n, const char *exchange, const char *key, const char *payload,
                 int priority, int64_t ttl)
{
    sl_queue_message_t m = {
        key,      strlen(key), (const uint8_t *)payload, (int32_t)strlen(payload), NULL, 0,
        priority, ttl};
    return sl_queue_batch_publish(n->b, exchange, &m);
}

static int publish(qnode_t *n, const char *exchange, const char *key, const char *payload)
{
    int rc = stage(n, exchange, key, payload, 0, -1);
    assert_int_equal(sl_queue_batch_commit(n->b), 0);
    return rc;
}

static void commit(qnode_t *n)
{
    assert_int_equal(sl_queue_batch_commit(n->b), 0);
}

/* What pops delivered. */
typedef struct got {
    int count;
    uint64_t tag[64];
    char payload[64][64];
    int deliveries[64];
    int priority[64];
    char headers[64][256]; /* "name=value;" ... */
    char key[64][64];
} got_t;

static void collect(void *arg, const sl_queue_delivery_t *d)
{
    got_t *g = arg;
    int i = g->count++;
    assert_true(i < 64);
    g->tag[i] = d->tag;
    snprintf(g->payload[i], sizeof g->payload[i], "%.*s", (int)d->payload_len,
             (const char *)d->payload);
    snprintf(g->key[i], sizeof g->key[i], "%.*s", (int)d->routing_key_len, d->routing_key);
    g->deliveries[i] = d->deliveries;
    g->priority[i] = d->priority;
    g->headers[i][0] = 0;
    for (uint32_t h = 0; h < d->header_count; h++) {
        size_t used = strlen(g->headers[i]);
        snprintf(g->headers[i] + used, sizeof g->headers[i] - used, "%.*s=%.*s;",
                 (int)d->headers[h].name_len, (const char *)d->headers[h].name,
                 (int)d->headers[h].value_len, (const char *)d->headers[h].value);
    }
}

static got_t pop_as(qnode_t *n, sl_queue_consumer_t *c, const char *queue, int max, int64_t lease)
{
    got_t g = {0};
    int rc = sl_queue_pop(n->qs, n->b, queue, c, max, lease, collect, &g);
    assert_int_equal(rc, g.count);
    return g;
}

static got_t pop(qnode_t *n, const char *queue, int max)
{
    return pop_as(n, n->c, queue, max, 0);
}

/* Payloads of a pop joined with spaces. */
static const char *payloads(const got_t *g)
{
    static char text[1024];
    text[0] = 0;
    for (int i = 0; i < g->count; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s%s", i ? " " : "",
                 g->payload[i]);
    return text;
}

static void ack_all(qnode_t *n, const char *queue, const got_t *g)
{
    for (int i = 0; i < g->count; i++)
        assert_int_equal(sl_queue_batch_ack(n->b, queue, g->tag[i]), 1);
    commit(n);
}

static sl_queue_stats_t stats(qnode_t *n, const char *queue)
{
    sl_queue_stats_t st;
    assert_int_equal(sl_queue_stats(n->qs, queue, &st), 0);
    return st;
}

/* ---- declarations ------------------------------------------------------- */

static void test_declarations_are_idempotent_and_differences_named(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    sl_queue_options_t o;
    declare(n, "jobs", "maxlen=10", "ttl=5000", NULL);
    declare(n, "jobs", "maxlen=10", "ttl=5000", NULL); /* the same again: fine */
    sl_queue_options_default(&o);
    o.max_length = 20;
    o.ttl_ms = 5000;
    assert_int_equal(sl_queues_declare_queue(n->qs, "jobs", &o), SL_EEXISTS);
    assert_non_null(strstr(sl_error_detail(), "MAXLEN 10, not 20"));
    o.max_length = 10;
    o.overflow = SL_OVERFLOW_REJECT_PUBLISH;
    assert_int_equal(sl_queues_declare_queue(n->qs, "jobs", &o), SL_EEXISTS);
    assert_non_null(strstr(sl_error_detail(), "OVERFLOW drop-head, not reject-publish"));
    o.overflow = SL_OVERFLOW_DROP_HEAD;
    snprintf(o.dead_letter, sizeof o.dead_letter, "dlq");
    assert_int_equal(sl_queues_declare_queue(n->qs, "jobs", &o), SL_EEXISTS);
    assert_non_null(strstr(sl_error_detail(), "DEADLETTER"));

    assert_int_equal(sl_queues_declare_exchange(n->qs, "ex", SL_EXCHANGE_TOPIC), 0);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "ex", SL_EXCHANGE_TOPIC), 0);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "ex", SL_EXCHANGE_DIRECT), SL_EEXISTS);
    assert_non_null(strstr(sl_error_detail(), "type topic, not direct"));

    sl_queue_options_default(&o);
    assert_int_equal(sl_queues_declare_queue(n->qs, "bad name", &o), SL_EINVALID);
    assert_int_equal(sl_queues_declare_queue(n->qs, "", &o), SL_EINVALID);
    o.max_priority = 10;
    assert_int_equal(sl_queues_declare_queue(n->qs, "p", &o), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "MAXPRIORITY"));
    sl_queue_options_default(&o);
    snprintf(o.dead_letter, sizeof o.dead_letter, "self");
    assert_int_equal(sl_queues_declare_queue(n->qs, "self", &o), SL_EINVALID);

    /* persisted: the same after a reopen */
    qn_reopen(n);
    declare(n, "jobs", "maxlen=10", "ttl=5000", NULL);
    o.max_length = 11;
    o.ttl_ms = 5000;
    o.dead_letter[0] = 0;
    assert_int_equal(sl_queues_declare_queue(n->qs, "jobs", &o), SL_EEXISTS);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "ex", SL_EXCHANGE_FANOUT), SL_EEXISTS);
    qn_free(n);
}

/* ---- routing ------------------------------------------------------------ */

static sl_header_t hdr(const char *name, const char *value)
{
    return (sl_header_t){(const uint8_t *)name, (int32_t)strlen(name), (const uint8_t *)value,
                         (int32_t)strlen(value)};
}

static void bind(qnode_t *n, const char *exchange, const char *queue, const char *pattern)
{
    assert_int_equal(sl_queues_bind(n->qs, exchange, queue, pattern, strlen(pattern), NULL, 0), 0);
}

static int64_t ready_of(qnode_t *n, const char *queue)
{
    return sl_queue_ready(n->qs, queue);
}

static void test_routing_through_every_exchange_type(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "a", NULL);
    declare(n, "b", NULL);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "direct", SL_EXCHANGE_DIRECT), 0);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "topic", SL_EXCHANGE_TOPIC), 0);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "fanout", SL_EXCHANGE_FANOUT), 0);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "headers", SL_EXCHANGE_HEADERS), 0);
    bind(n, "direct", "a", "red");
    bind(n, "direct", "b", "blue");
    bind(n, "topic", "a", "orders.*.eu");
    bind(n, "topic", "a", "orders.#"); /* two bindings to a: stored once */
    bind(n, "topic", "b", "#.refund");
    bind(n, "fanout", "a", "");
    bind(n, "fanout", "b", "ignored");
    sl_header_t any[] = {hdr("x-match", "any"), hdr("format", "pdf"), hdr("type", "report")};
    assert_int_equal(sl_queues_bind(n->qs, "headers", "b", "", 0, any, 3), 0);
    assert_int_equal(sl_queues_bind(n->qs, "headers", "b", "", 0, any, 3), 0); /* no-op */

    assert_int_equal(publish(n, "direct", "red", "1"), 1);
    assert_int_equal(publish(n, "direct", "green", "2"), 0); /* unroutable */
    assert_int_equal(publish(n, "topic", "orders.x.eu", "3"), 1);
    assert_int_equal(publish(n, "topic", "orders.x.refund", "4"), 2);
    assert_int_equal(publish(n, "topic", "refund", "5"), 1);
    assert_int_equal(publish(n, "fanout", "whatever", "6"), 2);
    sl_queue_message_t m = {"k", 1, (const uint8_t *)"7", 1, NULL, 0, 0, -1};
    sl_header_t pdf = hdr("format", "pdf");
    m.headers = &pdf;
    m.header_count = 1;
    assert_int_equal(sl_queue_batch_publish(n->b, "headers", &m), 1);
    m.header_count = 0;
    assert_int_equal(sl_queue_batch_publish(n->b, "headers", &m), 0);
    assert_int_equal(publish(n, "", "b", "8"), 1); /* the default exchange */
    assert_int_equal(publish(n, "", "nope", "9"), 0);
    assert_int_equal(publish(n, "missing", "k", "x"), SL_ENOTFOUND);

    assert_string_equal(payloads((got_t[]){pop(n, "a", 10)}), "1 3 4 6");
    assert_string_equal(payloads((got_t[]){pop(n, "b", 10)}), "4 5 6 7 8");

    /* unbinding stops routing; binding a missing queue fails */
    assert_int_equal(sl_queues_unbind(n->qs, "direct", "a", "red", 3, NULL, 0), 0);
    assert_int_equal(sl_queues_unbind(n->qs, "direct", "a", "red", 3, NULL, 0), SL_ENOTFOUND);
    assert_int_equal(publish(n, "direct", "red", "10"), 0);
    assert_int_equal(sl_queues_bind(n->qs, "direct", "zz", "k", 1, NULL, 0), SL_ENOTFOUND);
    assert_int_equal(sl_queues_bind(n->qs, "nope", "a", "k", 1, NULL, 0), SL_ENOTFOUND);
    sl_header_t bad = hdr("x-match", "some");
    assert_int_equal(sl_queues_bind(n->qs, "headers", "a", "", 0, &bad, 1), SL_EINVALID);

    /* bindings persist */
    qn_reopen(n);
    assert_int_equal(publish(n, "topic", "orders.y.eu", "11"), 1);
    assert_int_equal(publish(n, "direct", "blue", "12"), 1);
    m.header_count = 1;
    assert_int_equal(sl_queue_batch_publish(n->b, "headers", &m), 1);
    commit(n);
    assert_int_equal(ready_of(n, "a"), 5); /* 1 3 4 6 were delivered, not acked */
    assert_int_equal(ready_of(n, "b"), 5 + 2);

    /* exchange deletion removes its bindings */
    assert_int_equal(sl_queues_delete_exchange(n->qs, "topic"), 0);
    assert_int_equal(publish(n, "topic", "orders.y.eu", "13"), SL_ENOTFOUND);
    assert_int_equal(sl_queues_delete_exchange(n->qs, "topic"), SL_ENOTFOUND);
    qn_free(n);
}

/* ---- delivery order ----------------------------------------------------- */

static void test_highest_priority_first_then_fifo(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "p", "maxpriority=3", NULL);
    const char *order[][2] = {{"a", "0"}, {"b", "2"}, {"c", "9"}, {"d", "2"},
                              {"e", "0"}, {"f", "3"}, {"g", "-1"}};
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(stage(n, "", "p", order[i][0], atoi(order[i][1]), -1), 1);
    commit(n);
    got_t g = pop(n, "p", 3);
    assert_string_equal(payloads(&g), "c f b"); /* 9 is clamped to 3 */
    assert_int_equal(g.priority[0], 3);
    assert_int_equal(g.priority[2], 2);
    g = pop(n, "p", 10);
    assert_string_equal(payloads(&g), "d a e g");
    assert_int_equal(g.deliveries[0], 1);
    qn_free(n);
}

/* ---- acks and nacks ----------------------------------------------------- */

static void test_acked_messages_are_gone_and_stale_tags_count_zero(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", NULL);
    publish(n, "", "q", "one");
    publish(n, "", "q", "two");
    got_t g = pop(n, "q", 1);
    assert_string_equal(payloads(&g), "one");
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 1);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 0); /* twice */
    commit(n);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 0);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", 12345678), 0);
    assert_int_equal(sl_queue_batch_ack(n->b, "nope", g.tag[0]), SL_ENOTFOUND);
    g = pop(n, "q", 10);
    assert_string_equal(payloads(&g), "two");
    assert_int_equal(pop(n, "q", 10).count, 0);
    sl_queue_stats_t st = stats(n, "q");
    assert_int_equal(st.acked, 1);
    assert_int_equal(st.in_flight, 1);
    assert_int_equal(st.ready, 0);
    assert_int_equal(st.published, 2);
    assert_int_equal(st.delivered, 2);
    qn_free(n);
}

static void test_nack_requeues_or_dead_letters_with_headers(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "dead", NULL);
    declare(n, "q", "deadletter=dead", NULL);
    sl_queue_message_t m = {"q", 1, (const uint8_t *)"job", 3, NULL, 0, 0, -1};
    sl_header_t h[] = {hdr("trace", "t1"), hdr("x-death-reason", "old")};
    m.headers = h;
    m.header_count = 2;
    assert_int_equal(sl_queue_batch_publish(n->b, "", &m), 1);
    commit(n);
    got_t g = pop(n, "q", 1);
    assert_int_equal(sl_queue_batch_nack(n->b, "q", g.tag[0], 1), 1);
    commit(n);
    got_t again = pop(n, "q", 1);
    assert_string_equal(again.payload[0], "job");
    assert_int_equal(again.deliveries[0], 2); /* redelivered */
    assert_true(again.tag[0] != g.tag[0]);
    assert_int_equal(sl_queue_batch_nack(n->b, "q", g.tag[0], 0), 0); /* the old delivery */
    assert_int_equal(sl_queue_batch_nack(n->b, "q", again.tag[0], 0), 1);
    commit(n);
    assert_int_equal(pop(n, "q", 1).count, 0);
    got_t dead = pop(n, "dead", 1);
    assert_string_equal(dead.payload[0], "job");
    assert_string_equal(dead.key[0], "q");
    assert_string_equal(dead.headers[0], "trace=t1;x-death-reason=rejected;x-original-queue=q;"
                                         "x-delivery-count=2;");
    assert_int_equal(stats(n, "q").dead_lettered, 1);
    qn_free(n);
}

static void test_max_deliveries_sends_to_dead_letters(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "dead", NULL);
    declare(n, "q", "maxdeliveries=2", "deadletter=dead", NULL);
    publish(n, "", "q", "poison");
    for (int i = 1; i <= 2; i++) {
        got_t g = pop(n, "q", 1);
        assert_int_equal(g.deliveries[0], i);
        assert_int_equal(sl_queue_batch_nack(n->b, "q", g.tag[0], 1), 1);
        commit(n);
    }
    assert_int_equal(pop(n, "q", 1).count, 0);
    got_t d = pop(n, "dead", 1);
    assert_string_equal(d.payload[0], "poison");
    assert_non_null(strstr(d.headers[0], "x-death-reason=maxdeliveries;"));
    assert_non_null(strstr(d.headers[0], "x-delivery-count=2;"));
    qn_free(n);
}

/* ---- redelivery --------------------------------------------------------- */

static void test_expired_lease_redelivers_to_another_consumer(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    sl_queue_consumer_t *other;
    declare(n, "q", "lease=1000", NULL);
    publish(n, "", "q", "work");
    assert_int_equal(sl_queues_consumer_open(n->qs, &other), 0);
    got_t g = pop(n, "q", 1);
    assert_int_equal(pop_as(n, other, "q", 1, 0).count, 0);
    n->clock.now_ms += 999;
    int64_t next = sl_queues_expire(n->qs, n->b);
    assert_int_equal(next, n->clock.now_ms + 1);
    assert_int_equal(pop_as(n, other, "q", 1, 0).count, 0);
    n->clock.now_ms += 1;
    sl_queues_expire(n->qs, n->b);
    commit(n);
    got_t again = pop_as(n, other, "q", 1, 5000);
    assert_string_equal(again.payload[0], "work");
    assert_int_equal(again.deliveries[0], 2);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 0); /* too late */
    assert_int_equal(sl_queue_batch_ack(n->b, "q", again.tag[0]), 1);
    commit(n);
    assert_int_equal(stats(n, "q").redelivered, 1);
    sl_queues_consumer_close(n->qs, other, n->b);
    qn_free(n);
}

static void test_closing_a_consumer_redelivers_its_messages(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    sl_queue_consumer_t *gone;
    declare(n, "q", NULL);
    publish(n, "", "q", "a");
    publish(n, "", "q", "b");
    publish(n, "", "q", "c");
    assert_int_equal(sl_queues_consumer_open(n->qs, &gone), 0);
    got_t g = pop_as(n, gone, "q", 2, 0);
    assert_string_equal(payloads(&g), "a b");
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[1]), 1); /* b acked, a not */
    commit(n);
    sl_queues_consumer_close(n->qs, gone, n->b);
    commit(n);
    got_t rest = pop(n, "q", 10);
    assert_string_equal(payloads(&rest), "a c"); /* back in its place */
    assert_int_equal(rest.deliveries[0], 2);
    assert_int_equal(rest.deliveries[1], 1);
    qn_free(n);
}

static void test_prefetch_limits_what_a_consumer_holds(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", NULL);
    for (int i = 0; i < 5; i++)
        stage(n, "", "q", "m", 0, -1);
    commit(n);
    sl_queues_consumer_set_prefetch(n->qs, n->c, 2);
    got_t g = pop(n, "q", 10);
    assert_int_equal(g.count, 2);
    assert_int_equal(sl_queues_consumer_room(n->qs, n->c), 0);
    assert_int_equal(pop(n, "q", 10).count, 0);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 1);
    assert_int_equal(sl_queues_consumer_room(n->qs, n->c), 1);
    assert_int_equal(pop(n, "q", 10).count, 1);
    sl_queues_consumer_set_prefetch(n->qs, n->c, 0);
    assert_int_equal(pop(n, "q", 10).count, 2);
    commit(n);
    qn_free(n);
}

/* ---- TTL and length ----------------------------------------------------- */

static void test_expired_messages_go_to_dead_letters(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "dead", NULL);
    declare(n, "q", "ttl=1000", "deadletter=dead", NULL);
    stage(n, "", "q", "queue-ttl", 0, -1);
    stage(n, "", "q", "own-ttl", 0, 500); /* the shorter one wins */
    commit(n);
    n->clock.now_ms += 600;
    /* only heads expire: "own-ttl" waits behind "queue-ttl" */
    assert_int_equal(sl_queues_expire(n->qs, n->b), n->clock.now_ms + 400);
    assert_true(sl_queue_batch_empty(n->b));
    n->clock.now_ms += 400;
    assert_int_equal(sl_queues_expire(n->qs, n->b), INT64_MAX);
    commit(n);
    assert_int_equal(ready_of(n, "q"), 0);
    got_t d = pop(n, "dead", 10);
    assert_string_equal(payloads(&d), "queue-ttl own-ttl");
    assert_non_null(strstr(d.headers[0], "x-death-reason=expired;"));
    assert_int_equal(stats(n, "q").expired, 2);

    /* a pop skips (and dead-letters) expired messages */
    stage(n, "", "q", "late", 0, -1);
    stage(n, "", "q", "fresh", 0, 5000);
    commit(n);
    n->clock.now_ms += 1000;
    stage(n, "", "q", "new", 0, -1);
    commit(n);
    got_t g = pop(n, "q", 10);
    assert_string_equal(payloads(&g), "new");
    commit(n);
    assert_string_equal(payloads((got_t[]){pop(n, "dead", 10)}), "late fresh");
    qn_free(n);
}

static void test_max_length_drops_the_oldest(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "dead", NULL);
    declare(n, "q", "maxlen=3", "maxpriority=1", "deadletter=dead", NULL);
    stage(n, "", "q", "a", 1, -1);
    stage(n, "", "q", "b", 0, -1);
    stage(n, "", "q", "c", 0, -1);
    commit(n);
    stage(n, "", "q", "d", 1, -1);
    stage(n, "", "q", "e", 0, -1);
    commit(n); /* 5 ready: the two oldest of priority 0 go */
    assert_int_equal(ready_of(n, "q"), 3);
    assert_string_equal(payloads((got_t[]){pop(n, "q", 10)}), "a d e");
    got_t d = pop(n, "dead", 10);
    assert_string_equal(payloads(&d), "b c");
    assert_non_null(strstr(d.headers[0], "x-death-reason=maxlen;"));
    /* in-flight messages do not count; staged ones over the limit go too */
    for (int i = 0; i < 5; i++)
        stage(n, "", "q", (const char *[]){"v", "w", "x", "y", "z"}[i], 0, -1);
    commit(n);
    assert_string_equal(payloads((got_t[]){pop(n, "q", 10)}), "x y z");
    assert_string_equal(payloads((got_t[]){pop(n, "dead", 10)}), "v w");
    assert_int_equal(stats(n, "q").dropped, 4);
    qn_free(n);
}

static void test_max_length_rejects_publishes(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", "maxlen=2", "reject=1", NULL);
    declare(n, "other", NULL);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "fan", SL_EXCHANGE_FANOUT), 0);
    bind(n, "fan", "q", "");
    bind(n, "fan", "other", "");
    assert_int_equal(stage(n, "fan", "k", "1", 0, -1), 2);
    assert_int_equal(stage(n, "fan", "k", "2", 0, -1), 2);
    assert_int_equal(stage(n, "fan", "k", "3", 0, -1), -ENOBUFS); /* counts staged ones */
    assert_non_null(strstr(sl_error_detail(), "queue q is full"));
    commit(n);
    assert_int_equal(ready_of(n, "other"), 2); /* nowhere, not even other */
    got_t g = pop(n, "q", 1);
    assert_int_equal(stage(n, "fan", "k", "4", 0, -1), 2); /* one is in flight now */
    ack_all(n, "q", &g);
    assert_int_equal(stats(n, "q").rejected, 1);
    qn_free(n);
}

/* ---- durability --------------------------------------------------------- */

static void test_state_survives_a_reopen(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    char payload[32];
    declare(n, "q", NULL);
    for (int i = 0; i < 5000; i++) {
        snprintf(payload, sizeof payload, "m%d", i);
        stage(n, "", "q", payload, 0, -1);
    }
    commit(n);
    /* deliver everything, ack all but three, out of order across chunks */
    int64_t delivered = 0;
    while (delivered < 5000) {
        got_t g = pop(n, "q", 64);
        for (int i = 0; i < g.count; i++) {
            int k = atoi(g.payload[i] + 1);
            if (k != 10 && k != 4100 && k != 4999)
                assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[i]), 1);
        }
        delivered += g.count;
        if (delivered % 640 == 0)
            commit(n);
    }
    commit(n);
    qn_reopen(n);
    assert_int_equal(ready_of(n, "q"), 3);
    got_t g = pop(n, "q", 10);
    assert_string_equal(payloads(&g), "m10 m4100 m4999");
    assert_int_equal(g.deliveries[0], 2); /* delivered before the reopen */
    assert_int_equal(sl_queue_batch_nack(n->b, "q", g.tag[1], 1), 1);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 1);
    commit(n);
    qn_reopen(n);
    g = pop(n, "q", 10);
    assert_string_equal(payloads(&g), "m4100 m4999");
    assert_int_equal(g.deliveries[0], 3); /* its stored count, plus the delivery */
    qn_free(n);
}

static void test_a_crash_mid_commit_loses_only_the_uncommitted(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", NULL);
    publish(n, "", "q", "kept");
    publish(n, "", "q", "acked");
    assert_int_equal(pop(n, "q", 2).count, 2);
    qn_close(n);
    pid_t child = fork();
    if (child == 0) { /* appends and syncs, then dies before its commit */
        qn_open(n);
        got_t again = pop(n, "q", 2);
        assert_int_equal(sl_queue_batch_ack(n->b, "q", again.tag[1]), 1);
        stage(n, "", "q", "lost", 0, -1);
        MDB_txn *txn;
        sl_state_lock_commits(n->state);
        assert_int_equal(sl_state_begin(n->state, 1, &txn), 0);
        assert_int_equal(sl_queue_batch_write(n->b, txn), 0);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    qn_open(n);
    got_t after = pop(n, "q", 10);
    assert_string_equal(payloads(&after), "kept acked");
    qn_free(n);
}

static void test_a_failed_commit_leaves_no_trace(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    MDB_txn *txn;
    declare(n, "q", NULL);
    publish(n, "", "q", "one");
    got_t g = pop(n, "q", 1);
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), 1);
    stage(n, "", "q", "two", 0, -1);
    sl_state_lock_commits(n->state);
    assert_int_equal(sl_state_begin(n->state, 1, &txn), 0);
    assert_int_equal(sl_queue_batch_write(n->b, txn), 0);
    mdb_txn_abort(txn);
    sl_queue_batch_finish(n->b, 0);
    sl_state_unlock_commits(n->state);
    got_t again = pop(n, "q", 10);
    assert_string_equal(payloads(&again), "one"); /* the ack did not happen, nor "two" */
    assert_int_equal(again.deliveries[0], 2);
    publish(n, "", "q", "three"); /* the log takes appends at the right offset */
    qn_reopen(n);
    assert_string_equal(payloads((got_t[]){pop(n, "q", 10)}), "one three");
    qn_free(n);
}

static void test_consumed_segments_are_reclaimed(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    char payload[256];
    declare(n, "q", "segment=4096", NULL);
    memset(payload, 'x', sizeof payload - 1);
    payload[sizeof payload - 1] = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 10; i++)
            stage(n, "", "q", payload, 0, -1);
        commit(n);
    }
    sl_topic_t *t = sl_log_topic(n->log, "__queue.q");
    sl_partition_t *p = sl_topic_partition(t, 0);
    int32_t segments = sl_partition_segment_count(p);
    assert_true(segments > 5);
    int64_t total = 0;
    got_t g;
    while ((g = pop(n, "q", 64)).count) {
        ack_all(n, "q", &g);
        total += g.count;
    }
    assert_int_equal(total, 200);
    assert_int_equal(sl_partition_segment_count(p), 1);
    assert_true(sl_partition_start_offset(p) > 150);
    assert_true(stats(n, "q").bytes < 8192);
    qn_reopen(n);
    assert_int_equal(ready_of(n, "q"), 0);
    publish(n, "", "q", "after");
    assert_string_equal(payloads((got_t[]){pop(n, "q", 10)}), "after");
    qn_free(n);
}

static void test_deleting_a_queue_removes_it_everywhere(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", NULL);
    assert_int_equal(sl_queues_declare_exchange(n->qs, "d", SL_EXCHANGE_DIRECT), 0);
    bind(n, "d", "q", "k");
    publish(n, "d", "k", "one");
    got_t g = pop(n, "q", 1);
    assert_int_equal(sl_queues_delete_queue(n->qs, "q"), 0);
    assert_null(sl_log_topic(n->log, "__queue.q"));
    assert_int_equal(sl_queue_batch_ack(n->b, "q", g.tag[0]), SL_ENOTFOUND);
    assert_int_equal(publish(n, "d", "k", "two"), 0);
    assert_int_equal(sl_queues_delete_queue(n->qs, "q"), SL_ENOTFOUND);
    assert_int_equal(sl_queues_consumer_room(n->qs, n->c), INT64_MAX);
    declare(n, "q", NULL); /* again, empty and unbound */
    assert_int_equal(ready_of(n, "q"), 0);
    assert_int_equal(publish(n, "d", "k", "three"), 0);
    qn_reopen(n);
    assert_int_equal(ready_of(n, "q"), 0);
    assert_int_equal(publish(n, "d", "k", "four"), 0);
    qn_free(n);
}

static void test_stats_and_rates(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    declare(n, "q", "maxpriority=2", NULL);
    stage(n, "", "q", "a", 0, -1);
    commit(n);
    n->clock.now_ms += 3000;
    stage(n, "", "q", "b", 2, -1);
    commit(n);
    sl_queue_stats_t st = stats(n, "q");
    assert_int_equal(st.ready, 2);
    assert_int_equal(st.priorities, 3);
    assert_int_equal(st.oldest_ready_age_ms, 3000);
    assert_true(st.bytes > 0);
    sl_queues_tick(n->qs); /* 2 published over 3 s */
    st = stats(n, "q");
    assert_true(st.publish_rate > 0.1 && st.publish_rate < 0.67);
    assert_int_equal(sl_queue_stats(n->qs, "none", &st), SL_ENOTFOUND);
    qn_free(n);
}

static void test_a_commit_larger_than_a_log_batch_is_appended_in_pieces(void **state)
{
    (void)state;
    qnode_t *n = qn_new();
    size_t size = 1 << 20; /* 20 of them: over the queue log's 16 MiB max.batch.bytes */
    char *payload = malloc(size + 1);
    declare(n, "big", NULL);
    for (int i = 0; i < 20; i++) {
        memset(payload, 'a' + i, size);
        payload[size] = 0;
        assert_int_equal(stage(n, "", "big", payload, 0, -1), 1);
    }
    commit(n);
    assert_int_equal(stats(n, "big").ready, 20);
    qn_reopen(n);
    got_t g = pop(n, "big", 64);
    assert_int_equal(g.count, 20);
    for (int i = 0; i < 20; i++)
        assert_int_equal(g.payload[i][0], 'a' + i); /* in order */
    free(payload);
    qn_free(n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_declarations_are_idempotent_and_differences_named),
        cmocka_unit_test(test_routing_through_every_exchange_type),
        cmocka_unit_test(test_highest_priority_first_then_fifo),
        cmocka_unit_test(test_acked_messages_are_gone_and_stale_tags_count_zero),
        cmocka_unit_test(test_nack_requeues_or_dead_letters_with_headers),
        cmocka_unit_test(test_max_deliveries_sends_to_dead_letters),
        cmocka_unit_test(test_expired_lease_redelivers_to_another_consumer),
        cmocka_unit_test(test_closing_a_consumer_redelivers_its_messages),
        cmocka_unit_test(test_prefetch_limits_what_a_consumer_holds),
        cmocka_unit_test(test_expired_messages_go_to_dead_letters),
        cmocka_unit_test(test_max_length_drops_the_oldest),
        cmocka_unit_test(test_max_length_rejects_publishes),
        cmocka_unit_test(test_state_survives_a_reopen),
        cmocka_unit_test(test_a_crash_mid_commit_loses_only_the_uncommitted),
        cmocka_unit_test(test_a_failed_commit_leaves_no_trace),
        cmocka_unit_test(test_consumed_segments_are_reclaimed),
        cmocka_unit_test(test_deleting_a_queue_removes_it_everywhere),
        cmocka_unit_test(test_stats_and_rates),
        cmocka_unit_test(test_a_commit_larger_than_a_log_batch_is_appended_in_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

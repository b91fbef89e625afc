/*
 * queue_bench.c - work queues end to end, sluice against RabbitMQ, with
 * the same workload and the same measurements:
 *
 *   - a topic exchange with 10 bindings to 4 durable queues (several
 *     bindings of a queue match the same keys: a message is stored once
 *     per queue); each message's routing key reaches exactly one queue;
 *   - P publishers, each with W publishes in flight, persistent 1 KiB
 *     messages, each counted only once confirmed (sluice: the QPUBLISH
 *     reply, sent once the message is durable; RabbitMQ: the publisher
 *     confirm);
 *   - C competing consumers, each taking from all 4 queues with a
 *     prefetch of 100 and acknowledging what it took (sluice: ACK, whose
 *     reply comes once the ack is durable; RabbitMQ: basic.ack, which has
 *     no reply, so its latency is taken when it is sent);
 *   - messages/s end to end: messages / (first publish .. last ack), and
 *     the publish-to-ack latency of every message (its publish time is in
 *     its first 8 bytes): p50, p99, max.
 *
 *   queue_bench sluice|rabbitmq PORT [-n MESSAGES] [-p PUBLISHERS]
 *               [-c CONSUMERS] [-s SIZE] [-w WINDOW] [-q PREFETCH] [-r RATE]
 *
 * -r paces the publishers to RATE messages/s in all (still at most WINDOW
 * in flight each), to compare latencies at the same offered load.
 *
 * Clients: hiredis for sluice, librabbitmq (rabbitmq-c) for RabbitMQ, one
 * thread per publisher and consumer, all in this process on 127.0.0.1.
 * Results are printed, not asserted (bench/queue_bench.sh runs both).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUEUES 4

static const char *const queue_names[QUEUES] = {"bench.q0", "bench.q1", "bench.q2", "bench.q3"};

/* 10 bindings: (queue, pattern); key task.<q>.normal reaches queue q. */
static const struct {
    int queue;
    const char *pattern;
} bindings[10] = {
    {0, "task.0.*"}, {0, "task.0.#"}, {0, "*.0.normal"}, {1, "task.1.*"}, {1, "#.1.normal"},
    {2, "task.2.*"}, {2, "task.2.#"}, {3, "task.3.*"},   {3, "*.3.*"},    {3, "#.3.normal"},
};

typedef struct config {
    int sluice, port;
    long messages;
    int publishers, consumers, size, window, prefetch;
    double rate; /* messages/s over all publishers; 0: as fast as confirms allow */
} config_t;

static config_t cfg = {0, 0, 200000, 4, 4, 1024, 256, 100, 0};
static atomic_long acked_total;
static int64_t *latencies; /* ns, one per acked message */
static atomic_long latency_count;
static int64_t started_ns;
static atomic_llong last_ack_ns;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "queue_bench: %s: %s\n", what, detail);
    exit(1);
}

/* Records one acknowledged message whose payload starts with its publish
 * time. */
static void record_ack(const void *payload, int64_t now)
{
    int64_t sent;
    memcpy(&sent, payload, sizeof sent);
    long i = atomic_fetch_add(&latency_count, 1);
    if (i < cfg.messages)
        latencies[i] = now - sent;
    atomic_fetch_add(&acked_total, 1);
    atomic_store(&last_ack_ns, now);
}

static void fill_payload(char *payload)
{
    int64_t t = now_ns();
    memcpy(payload, &t, sizeof t);
}

/* With -r, waits until the publisher's message number `sent` is due. */
static void pace(long sent)
{
    if (cfg.rate <= 0)
        return;
    int64_t due = started_ns + (int64_t)((double)sent * 1e9 * cfg.publishers / cfg.rate);
    int64_t wait = due - now_ns();
    if (wait > 0) {
        struct timespec ts = {wait / 1000000000, wait % 1000000000};
        nanosleep(&ts, NULL);
    }
}

static long share(int index, int count)
{
    return cfg.messages / count + (index < cfg.messages % count);
}

/* ---- sluice ------------------------------------------------------------------ */

static redisContext *sluice_connect(void)
{
    redisContext *c = redisConnect("127.0.0.1", cfg.port);
    if (!c || c->err)
        die("connecting to sluice", c ? c->errstr : "out of memory");
    return c;
}

static void sluice_command(redisContext *c, const char *fmt, const char *a, const char *b,
                           const char *d)
{
    redisReply *r = redisCommand(c, fmt, a, b, d);
    if (!r || r->type == REDIS_REPLY_ERROR)
        die("sluice setup", r ? r->str : c->errstr);
    freeReplyObject(r);
}

static void sluice_setup(void)
{
    redisContext *c = sluice_connect();
    sluice_command(c, "EXCHANGE DECLARE %s %s", "bench", "topic", NULL);
    for (int q = 0; q < QUEUES; q++)
        sluice_command(c, "QUEUE DECLARE %s", queue_names[q], NULL, NULL);
    for (int i = 0; i < 10; i++)
        sluice_command(c, "BIND %s %s %s", "bench", queue_names[bindings[i].queue],
                       bindings[i].pattern);
    redisFree(c);
}

static void *sluice_publisher(void *arg)
{
    int index = (int)(intptr_t)arg;
    long total = share(index, cfg.publishers), sent = 0, confirmed = 0;
    redisContext *c = sluice_connect();
    char *payload = calloc(1, (size_t)cfg.size), key[32];
    while (confirmed < total) {
        while (sent < total && sent - confirmed < cfg.window) {
            snprintf(key, sizeof key, "task.%ld.normal", (sent * cfg.publishers + index) % QUEUES);
            pace(sent);
            fill_payload(payload);
            const char *argv[] = {"QPUBLISH", "bench", key, payload};
            size_t lens[] = {8, 5, strlen(key), (size_t)cfg.size};
            redisAppendCommandArgv(c, 4, argv, lens);
            sent++;
        }
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK)
            die("publishing", c->errstr);
        if (r->type != REDIS_REPLY_INTEGER || r->integer != 1)
            die("publishing", r->type == REDIS_REPLY_ERROR ? r->str : "not stored in 1 queue");
        freeReplyObject(r);
        confirmed++;
    }
    free(payload);
    redisFree(c);
    return NULL;
}

/* One round of a consumer: ACK what the last round took (if anything) and
 * pop from the next queue, pipelined; the ACK's reply (durable) times
 * those messages. */
static void sluice_consume_round(redisContext *c, int q, redisReply **pending, int *empty)
{
    redisReply *got = NULL;
    const char *argv[2 + 100 + 1];
    size_t lens[2 + 100 + 1];
    char tags[100][24];
    int n = 0;
    if (*pending) { /* ACK what the last round took, then pop again at once */
        argv[n] = "ACK", lens[n++] = 3;
        argv[n] = queue_names[q], lens[n++] = strlen(queue_names[q]);
        for (size_t i = 0; i < (*pending)->elements; i++) {
            snprintf(tags[i], sizeof tags[i], "%lld", (*pending)->element[i]->element[0]->integer);
            argv[n] = tags[i], lens[n++] = strlen(tags[i]);
        }
        redisAppendCommandArgv(c, n, argv, lens);
    }
    int next = (q + 1) % QUEUES;
    if (*empty >= QUEUES) /* every queue was empty: wait a little on this one */
        redisAppendCommand(c, "QPOP %s COUNT %d BLOCK 5", queue_names[next], cfg.prefetch);
    else
        redisAppendCommand(c, "QPOP %s COUNT %d", queue_names[next], cfg.prefetch);
    if (*pending) {
        redisReply *ack;
        if (redisGetReply(c, (void **)&ack) != REDIS_OK || ack->type != REDIS_REPLY_INTEGER)
            die("acking", c->errstr[0] ? c->errstr : "unexpected reply");
        int64_t now = now_ns();
        for (size_t i = 0; i < (*pending)->elements; i++)
            record_ack((*pending)->element[i]->element[1]->str, now);
        freeReplyObject(ack);
        freeReplyObject(*pending);
        *pending = NULL;
    }
    if (redisGetReply(c, (void **)&got) != REDIS_OK || got->type != REDIS_REPLY_ARRAY)
        die("popping", c->errstr[0] ? c->errstr : "unexpected reply");
    *empty = got->elements ? 0 : *empty + 1;
    if (got->elements)
        *pending = got;
    else
        freeReplyObject(got);
}

static void *sluice_consumer(void *arg)
{
    (void)arg;
    redisContext *c = sluice_connect();
    redisReply *pending = NULL, *r = redisCommand(c, "QUEUE PREFETCH %d", cfg.prefetch);
    int empty = 0, q = 0;
    freeReplyObject(r);
    while (atomic_load(&acked_total) < cfg.messages || pending) {
        sluice_consume_round(c, q, &pending, &empty);
        q = (q + 1) % QUEUES;
    }
    redisFree(c);
    return NULL;
}

/* ---- RabbitMQ ---------------------------------------------------------------- */

static void amqp_check(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                      ? amqp_error_string2(r.library_error)
                      : "server exception");
}

static amqp_connection_state_t rabbit_connect(void)
{
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, "127.0.0.1", cfg.port))
        die("connecting to RabbitMQ", "cannot open the socket");
    amqp_check(amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
               "logging in");
    amqp_channel_open(conn, 1);
    amqp_check(amqp_get_rpc_reply(conn), "opening a channel");
    return conn;
}

static void rabbit_close(amqp_connection_state_t conn)
{
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

static void rabbit_setup(void)
{
    amqp_connection_state_t conn = rabbit_connect();
    amqp_exchange_declare(conn, 1, amqp_cstring_bytes("bench"), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    amqp_check(amqp_get_rpc_reply(conn), "declaring the exchange");
    for (int q = 0; q < QUEUES; q++) {
        amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue_names[q]), 0, 1, 0, 0,
                           amqp_empty_table);
        amqp_check(amqp_get_rpc_reply(conn), "declaring a queue");
    }
    for (int i = 0; i < 10; i++) {
        amqp_queue_bind(conn, 1, amqp_cstring_bytes(queue_names[bindings[i].queue]),
                        amqp_cstring_bytes("bench"), amqp_cstring_bytes(bindings[i].pattern),
                        amqp_empty_table);
        amqp_check(amqp_get_rpc_reply(conn), "binding");
    }
    rabbit_close(conn);
}

/* Waits for publisher confirms; returns how many it confirmed. */
static long rabbit_confirms(amqp_connection_state_t conn, long confirmed)
{
    amqp_frame_t frame;
    if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK)
        die("publishing", "lost the connection");
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return 0;
    if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD)
        die("publishing", "RabbitMQ nacked a publish");
    if (frame.payload.method.id != AMQP_BASIC_ACK_METHOD)
        return 0;
    amqp_basic_ack_t *ack = frame.payload.method.decoded;
    return ack->multiple ? (long)ack->delivery_tag - confirmed : 1;
}

static void *rabbit_publisher(void *arg)
{
    int index = (int)(intptr_t)arg;
    long total = share(index, cfg.publishers), sent = 0, confirmed = 0;
    amqp_connection_state_t conn = rabbit_connect();
    amqp_confirm_select(conn, 1);
    amqp_check(amqp_get_rpc_reply(conn), "selecting confirms");
    char *payload = calloc(1, (size_t)cfg.size), key[32];
    amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                     .delivery_mode = 2}; /* persistent */
    while (confirmed < total) {
        while (sent < total && sent - confirmed < cfg.window) {
            snprintf(key, sizeof key, "task.%ld.normal", (sent * cfg.publishers + index) % QUEUES);
            pace(sent);
            fill_payload(payload);
            amqp_bytes_t body = {(size_t)cfg.size, payload};
            if (amqp_basic_publish(conn, 1, amqp_cstring_bytes("bench"), amqp_cstring_bytes(key), 0,
                                   0, &props, body))
                die("publishing", "amqp_basic_publish failed");
            sent++;
        }
        confirmed += rabbit_confirms(conn, confirmed);
    }
    free(payload);
    rabbit_close(conn);
    return NULL;
}

#define ACK_EVERY 50

static void *rabbit_consumer(void *arg)
{
    (void)arg;
    amqp_connection_state_t conn = rabbit_connect();
    amqp_basic_qos(conn, 1, 0, (uint16_t)cfg.prefetch, 1);
    amqp_check(amqp_get_rpc_reply(conn), "setting the prefetch");
    for (int q = 0; q < QUEUES; q++) {
        amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue_names[q]), amqp_empty_bytes, 0, 0, 0,
                           amqp_empty_table);
        amqp_check(amqp_get_rpc_reply(conn), "consuming");
    }
    int64_t *sent = malloc(ACK_EVERY * sizeof *sent);
    int unacked = 0;
    uint64_t last_tag = 0;
    struct timeval wait = {0, 5000};
    while (atomic_load(&acked_total) < cfg.messages) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t r = amqp_consume_message(conn, &envelope, &wait, 0);
        int got = r.reply_type == AMQP_RESPONSE_NORMAL;
        if (got) {
            memcpy(&sent[unacked++], envelope.message.body.bytes, sizeof *sent);
            last_tag = envelope.delivery_tag;
            amqp_destroy_envelope(&envelope);
        }
        if (unacked && (unacked == ACK_EVERY || !got)) { /* one ack for all of them */
            amqp_basic_ack(conn, 1, last_tag, 1);
            int64_t now = now_ns();
            for (int i = 0; i < unacked; i++)
                record_ack(&sent[i], now);
            unacked = 0;
        }
    }
    free(sent);
    rabbit_close(conn);
    return NULL;
}

/* ---- the run -------------------------------------------------------------------- */

static int compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void report(const char *name)
{
    long n = atomic_load(&latency_count);
    n = n < cfg.messages ? n : cfg.messages;
    qsort(latencies, (size_t)n, sizeof *latencies, compare);
    double seconds = (double)(atomic_load(&last_ack_ns) - started_ns) / 1e9;
    printf("%-8s %ld messages of %d B%s in %.2f s: %.0f msg/s end to end; publish-to-ack "
           "p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
           name, n, cfg.size, cfg.rate > 0 ? " (paced)" : "", seconds, (double)n / seconds,
           (double)latencies[n / 2] / 1e6, (double)latencies[n * 99 / 100] / 1e6,
           (double)latencies[n - 1] / 1e6);
}

static void parse(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "sluice") && strcmp(argv[1], "rabbitmq")))
        die("usage", "queue_bench sluice|rabbitmq PORT [-n MESSAGES] [-p PUBLISHERS] "
                     "[-c CONSUMERS] [-s SIZE] [-w WINDOW] [-q PREFETCH] [-r RATE]");
    cfg.sluice = !strcmp(argv[1], "sluice");
    cfg.port = atoi(argv[2]);
    int opt;
    optind = 3;
    while ((opt = getopt(argc, argv, "n:p:c:s:w:q:r:")) != -1) {
        long v = atol(optarg);
        if (v < 1)
            die("usage", "numbers must be positive");
        if (opt == 'n')
            cfg.messages = v;
        else if (opt == 'p')
            cfg.publishers = (int)v;
        else if (opt == 'c')
            cfg.consumers = (int)v;
        else if (opt == 's')
            cfg.size = v < 8 ? 8 : (int)v;
        else if (opt == 'w')
            cfg.window = (int)v;
        else if (opt == 'q')
            cfg.prefetch = v > 100 ? 100 : (int)v;
        else if (opt == 'r')
            cfg.rate = (double)v;
        else
            die("usage", "unknown option");
    }
}

int main(int argc, char **argv)
{
    parse(argc, argv);
    latencies = calloc((size_t)cfg.messages, sizeof *latencies);
    pthread_t threads[64];
    int n = 0;
    if (cfg.sluice)
        sluice_setup();
    else
        rabbit_setup();
    started_ns = now_ns();
    for (int i = 0; i < cfg.consumers && n < 64; i++)
        pthread_create(&threads[n++], NULL, cfg.sluice ? sluice_consumer : rabbit_consumer, NULL);
    for (int i = 0; i < cfg.publishers && n < 64; i++)
        pthread_create(&threads[n++], NULL, cfg.sluice ? sluice_publisher : rabbit_publisher,
                       (void *)(intptr_t)i);
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    report(cfg.sluice ? "sluice" : "rabbitmq");
    free(latencies);
    return 0;
}

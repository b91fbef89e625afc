/*
 * cmd_produce.c - PRODUCE and PRODUCEBATCH: appending records.
 *
 * PRODUCE records are staged and appended together at the end of the event
 * loop's round (stage.c); PRODUCEBATCH appends one batch per partition at
 * once. Either way the reply is held until the records are durable under
 * the topic's fsync policy; meanwhile the connection goes on reading, so
 * concurrent and pipelined producers share writes and fsyncs. Keys pick partitions with Kafka's
 * partitioner; an empty key is a null key, and null-key records go round-robin, one command at a
 * time.
 */
#include "queries/server.h"

#include <string.h>

/* The topic named by argv[1], created if the node allows it; NULL after an
 * error reply. */
static sl_topic_t *producer_topic(sl_request_t *req)
{
    char name[SL_TOPIC_NAME_MAX + 2];
    sl_server_t *s = req->server;
    if (sl_arg_name(&req->argv[1], name, sizeof name)) {
        sl_request_error(req, "topic name too long (at most %d)", SL_TOPIC_NAME_MAX);
        return NULL;
    }
    sl_topic_t *t = sl_log_topic(s->log, name);
    if (t && sl_topic_config(t)->transactional) {
        sl_request_error(req,
                         "topic '%s' is transactional: only its pipeline's commits write it "
                         "(work queues take QPUBLISH)",
                         name);
        return NULL;
    }
    if (t || !s->options.auto_create_topics) {
        if (!t)
            sl_request_error(req,
                             "NOTFOUND no such topic '%s' (create it with TOPIC CREATE, or "
                             "start the node with --auto-create-topics)",
                             name);
        return t;
    }
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    int rc = sl_log_create_topic(s->log, name, &cfg, &t);
    if (rc && rc != SL_EEXISTS) {
        sl_request_error(req, "%s", sl_error_detail());
        return NULL;
    }
    return rc ? sl_log_topic(s->log, name) : t;
}

static int check_sizes(sl_request_t *req, const sl_resp_arg_t *key, const sl_resp_arg_t *value)
{
    size_t max = req->server->options.max_value_bytes;
    if (value->len > max || key->len > max)
        return sl_request_error(req,
                                "record of %zu bytes is over the limit of %zu bytes "
                                "(--max-value-bytes)",
                                key->len + value->len, max);
    return -1;
}

static sl_record_t record_of(const sl_resp_arg_t *key, const sl_resp_arg_t *value)
{
    return (sl_record_t){.timestamp = -1,
                         .key = (const uint8_t *)key->data,
                         .key_len = key->len ? (int32_t)key->len : -1,
                         .value = (const uint8_t *)value->data,
                         .value_len = (int32_t)value->len};
}

/* The partition for null-key records of the next command: round-robin. */
static int32_t next_null_partition(int32_t partitions)
{
    static uint32_t round_robin; /* the server runs on one thread */
    return (int32_t)(round_robin++ % (uint32_t)partitions);
}

static int32_t pick_partition(const sl_record_t *r, int32_t partitions, int32_t null_partition)
{
    if (r->key_len < 0)
        return null_partition;
    return sl_partition_for_key(r->key, (size_t)r->key_len, partitions);
}

/* Replies now if durable, else holds the reply; *out is where to write. */
static int hold_or_reply(sl_request_t *req, sl_partition_t **parts, const int64_t *ends, int n)
{
    int durable = 1;
    for (int i = 0; i < n && durable; i++)
        durable = sl_partition_await_durable(parts[i], ends[i], 0) == 0;
    if (durable)
        return 0;
    sl_hold_t *h = sl_conn_hold(req->conn, n);
    if (!h)
        return -1;
    for (int i = 0; i < n; i++)
        sl_hold_add(h, parts[i], ends[i]);
    req->reply.out = h->reply;
    return 0;
}

/* Parses PRODUCE's options after key and value into r and *partition. */
static int produce_options(sl_request_t *req, sl_record_t *r, sl_header_t *headers,
                           int32_t partitions, int64_t *partition)
{
    for (size_t i = 4; i < req->argc; i++) {
        const sl_resp_arg_t *a = &req->argv[i];
        int64_t v;
        if (sl_arg_is(a, "TS") && i + 1 < req->argc &&
            !sl_arg_int(&req->argv[i + 1], 0, INT64_MAX / 2, &v)) {
            r->timestamp = v;
            i++;
        } else if (sl_arg_is(a, "PARTITION") && i + 1 < req->argc &&
                   !sl_arg_int(&req->argv[i + 1], 0, partitions - 1, partition)) {
            i++;
        } else if (sl_arg_is(a, "HEADER") && i + 2 < req->argc && r->header_count < 64) {
            headers[r->header_count++] = (sl_header_t){
                (const uint8_t *)req->argv[i + 1].data, (int32_t)req->argv[i + 1].len,
                (const uint8_t *)req->argv[i + 2].data, (int32_t)req->argv[i + 2].len};
            i += 2;
        } else {
            return sl_request_error(req,
                                    "syntax error at argument %zu: PRODUCE topic key value "
                                    "[TS ms] [PARTITION p] [HEADER name value]... (up to 64 "
                                    "headers; PARTITION below %d)",
                                    i, partitions);
        }
    }
    return -1;
}

/* PRODUCE topic key value [TS ms] [PARTITION p] [HEADER name value]...
 * -> [partition, offset], once durable. An empty key is a null key. */
int sl_cmd_produce(sl_request_t *req)
{
    sl_header_t headers[64];
    sl_topic_t *t = producer_topic(req);
    if (!t)
        return SL_DONE;
    if (check_sizes(req, &req->argv[2], &req->argv[3]) == SL_DONE)
        return SL_DONE;
    int32_t partitions = sl_topic_config(t)->partitions;
    sl_record_t r = record_of(&req->argv[2], &req->argv[3]);
    r.headers = headers;
    int64_t partition = -1;
    if (produce_options(req, &r, headers, partitions, &partition) == SL_DONE)
        return SL_DONE;
    if (partition < 0)
        partition = pick_partition(&r, partitions, next_null_partition(partitions));
    if (sl_stage_record(req, sl_topic_partition(t, (int32_t)partition), &r))
        return sl_request_error(req, "out of memory");
    return SL_DONE; /* the reply is written when the stage is appended */
}

/* Working memory of one PRODUCEBATCH. */
typedef struct batch_plan {
    sl_record_t *records; /* grouped by partition, in input order within one */
    int32_t *partition;   /* per input record */
    int64_t *offset;      /* per input record, once appended */
    size_t *slot;         /* input record i sits at records[slot[i]] */
    size_t *start;        /* per partition: first slot; start[partitions] = n */
} batch_plan_t;

static void plan_free(batch_plan_t *b)
{
    sl_free(b->records);
    sl_free(b->partition);
    sl_free(b->offset);
    sl_free(b->slot);
    sl_free(b->start);
}

static int plan_alloc(batch_plan_t *b, size_t n, int32_t partitions)
{
    b->records = sl_malloc(n * sizeof *b->records);
    b->partition = sl_malloc(n * sizeof *b->partition);
    b->offset = sl_malloc(n * sizeof *b->offset);
    b->slot = sl_malloc(n * sizeof *b->slot);
    b->start = sl_calloc((size_t)partitions + 1, sizeof *b->start);
    return b->records && b->partition && b->offset && b->slot && b->start ? 0 : -1;
}

/* Counting sort of the records by partition, stable. */
static void plan_group(sl_request_t *req, batch_plan_t *b, size_t n, int32_t partitions)
{
    size_t *fill = b->start; /* counts, then running positions */
    int32_t null_partition = next_null_partition(partitions);
    for (size_t i = 0; i < n; i++) {
        sl_record_t r = record_of(&req->argv[2 + 2 * i], &req->argv[3 + 2 * i]);
        b->partition[i] = pick_partition(&r, partitions, null_partition);
        fill[b->partition[i] + 1]++;
    }
    for (int32_t p = 0; p < partitions; p++)
        fill[p + 1] += fill[p];
    size_t *next = sl_calloc((size_t)partitions, sizeof *next);
    for (size_t i = 0; i < n; i++) {
        int32_t p = b->partition[i];
        b->slot[i] = fill[p] + (next ? next[p]++ : 0);
        b->records[b->slot[i]] = record_of(&req->argv[2 + 2 * i], &req->argv[3 + 2 * i]);
    }
    sl_free(next);
}

/* Appends each partition's group as one batch; fills offsets. */
static int plan_append(sl_request_t *req, sl_topic_t *t, batch_plan_t *b, size_t n)
{
    int32_t partitions = sl_topic_config(t)->partitions, used = 0;
    sl_partition_t **parts = sl_malloc((size_t)partitions * sizeof *parts);
    int64_t *ends = sl_malloc((size_t)partitions * sizeof *ends);
    int64_t *firsts = sl_malloc((size_t)partitions * sizeof *firsts);
    int rc = parts && ends && firsts ? 0 : -1;
    for (int32_t p = 0; rc == 0 && p < partitions; p++) {
        size_t count = b->start[p + 1] - b->start[p];
        if (count == 0)
            continue;
        parts[used] = sl_topic_partition(t, p);
        rc = sl_partition_append_nowait(parts[used], b->records + b->start[p], count, &firsts[p]);
        ends[used++] = firsts[p] + (int64_t)count;
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        b->offset[i] = firsts[b->partition[i]] + (int64_t)(b->slot[i] - b->start[b->partition[i]]);
    if (rc == 0 && hold_or_reply(req, parts, ends, used))
        rc = -1;
    sl_free(parts);
    sl_free(ends);
    sl_free(firsts);
    return rc;
}

/* PRODUCEBATCH topic key value [key value ...] -> [[partition, offset], ...]
 * once every record is durable. One batch per partition touched. */
int sl_cmd_producebatch(sl_request_t *req)
{
    batch_plan_t plan = {0};
    if (req->argc % 2)
        return sl_request_error(req, "PRODUCEBATCH takes a topic then key value pairs");
    sl_topic_t *t = producer_topic(req);
    if (!t)
        return SL_DONE;
    size_t n = (req->argc - 2) / 2;
    for (size_t i = 0; i < n; i++)
        if (check_sizes(req, &req->argv[2 + 2 * i], &req->argv[3 + 2 * i]) == SL_DONE)
            return SL_DONE;
    int32_t partitions = sl_topic_config(t)->partitions;
    int rc = plan_alloc(&plan, n, partitions);
    if (rc == 0) {
        plan_group(req, &plan, n, partitions);
        rc = plan_append(req, t, &plan, n);
    }
    if (rc == 0) {
        sl_reply_array(&req->reply, n);
        for (size_t i = 0; i < n; i++) {
            sl_reply_array(&req->reply, 2);
            sl_reply_int(&req->reply, plan.partition[i]);
            sl_reply_int(&req->reply, plan.offset[i]);
        }
    }
    plan_free(&plan);
    if (rc)
        return sl_request_error(req, "%s", rc < -1 ? sl_error_detail() : "out of memory");
    return SL_DONE;
}

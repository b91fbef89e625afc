/*
 * cmd_fetch.c - FETCH: reading a partition from an offset, optionally
 * blocking until records arrive.
 */
#include "queries/server.h"

#include <string.h>

#define FETCH_MAX_BYTES (16 << 20) /* stop adding records past this */

static void put_record(sl_reply_t *r, const sl_record_t *rec, const char *topic, int32_t part)
{
    sl_reply_array(r, topic ? 7 : 5);
    if (topic) {
        sl_reply_cstr(r, topic);
        sl_reply_int(r, part);
    }
    sl_reply_int(r, rec->offset);
    sl_reply_int(r, rec->timestamp);
    sl_reply_bulk_or_null(r, rec->key, rec->key_len);
    sl_reply_bulk_or_null(r, rec->value, rec->value_len);
    sl_reply_array(r, 2 * (size_t)rec->header_count);
    for (uint32_t i = 0; i < rec->header_count; i++) {
        sl_reply_bulk(r, rec->headers[i].name, (size_t)rec->headers[i].name_len);
        sl_reply_bulk_or_null(r, rec->headers[i].value, rec->headers[i].value_len);
    }
}

int sl_fetch_records(sl_request_t *req, sl_partition_t *p, int64_t *offset, int64_t max,
                     const char *group_topic)
{
    sl_server_t *s = req->server;
    sl_reader_t *reader = NULL;
    sl_record_t rec;
    sl_reply_t r = {s->scratch, req->conn->resp3};
    int rc = sl_reader_open(p, *offset, &reader);
    int64_t count = 0, bytes = 0;
    size_t start = evbuffer_get_length(s->scratch);
    while (rc == 0 && count < max && evbuffer_get_length(s->scratch) - start < FETCH_MAX_BYTES &&
           (rc = sl_reader_next(reader, &rec)) == 1) {
        put_record(&r, &rec, group_topic, sl_partition_id(p));
        bytes += (rec.key_len > 0 ? rec.key_len : 0) + (rec.value_len > 0 ? rec.value_len : 0);
        count++;
        rc = 0;
    }
    if (rc >= 0)
        *offset = sl_reader_position(reader);
    if (reader)
        sl_reader_close(reader);
    sl_partition_count_read(p, count, bytes);
    return rc < 0 ? rc : (int)count;
}

typedef struct fetch_args {
    sl_partition_t *partition;
    int64_t offset, count, block_ms; /* block_ms < 0: no BLOCK */
} fetch_args_t;

static int parse_fetch(sl_request_t *req, fetch_args_t *a)
{
    char name[SL_TOPIC_NAME_MAX + 2];
    int64_t part;
    sl_topic_t *t =
        sl_arg_name(&req->argv[1], name, sizeof name) ? NULL : sl_log_topic(req->server->log, name);
    if (!t)
        return sl_request_error(req, "NOTFOUND no such topic");
    if (sl_arg_int(&req->argv[2], 0, sl_topic_config(t)->partitions - 1, &part))
        return sl_request_error(req, "partition must be 0 to %d",
                                sl_topic_config(t)->partitions - 1);
    if (sl_arg_int(&req->argv[3], 0, INT64_MAX, &a->offset))
        return sl_request_error(req, "offset must be a non-negative integer");
    a->partition = sl_topic_partition(t, (int32_t)part);
    if (sl_read_options(req, 4, &a->count, &a->block_ms))
        return sl_request_error(req, "syntax error: FETCH topic partition offset [COUNT n "
                                     "(1-100000)] [BLOCK ms (0 = forever)]");
    return -1;
}

int sl_read_options(const sl_request_t *req, size_t from, int64_t *count, int64_t *block_ms)
{
    *count = 100;
    *block_ms = -1;
    for (size_t i = from; i < req->argc; i += 2) {
        int64_t *into = sl_arg_is(&req->argv[i], "COUNT")   ? count
                        : sl_arg_is(&req->argv[i], "BLOCK") ? block_ms
                                                            : NULL;
        if (!into || i + 1 >= req->argc ||
            sl_arg_int(&req->argv[i + 1], into == count, into == count ? 100000 : INT32_MAX, into))
            return -1;
    }
    return 0;
}

/* Blocks the request (first run) or answers its timeout (deadline over). */
int sl_block_or_empty(sl_request_t *req, int64_t block_ms)
{
    sl_conn_t *c = req->conn;
    int over = req->retry && c->block_deadline_ms >= 0 && sl_now_ms() >= c->block_deadline_ms;
    if (block_ms < 0 || over || req->server->shutting_down) {
        sl_reply_array(&req->reply, 0);
        return SL_DONE;
    }
    int64_t deadline = req->retry      ? c->block_deadline_ms
                       : block_ms == 0 ? -1
                                       : sl_now_ms() + block_ms;
    sl_conn_block(c, deadline);
    return SL_BLOCKED;
}

/* FETCH topic partition offset [COUNT n] [BLOCK ms]
 * -> [[offset, timestamp, key, value, [header name, value, ...]], ...] */
int sl_cmd_fetch(sl_request_t *req)
{
    fetch_args_t a;
    if (parse_fetch(req, &a) == SL_DONE)
        return SL_DONE;
    int64_t end = sl_partition_end_offset(a.partition);
    if (a.offset > end)
        return sl_request_error(req, "offset %lld is past the end of %s/%d (end offset %lld)",
                                (long long)a.offset, sl_partition_topic_name(a.partition),
                                sl_partition_id(a.partition), (long long)end);
    if (a.offset == end)
        return sl_block_or_empty(req, a.block_ms);
    evbuffer_drain(req->server->scratch, evbuffer_get_length(req->server->scratch));
    int n = sl_fetch_records(req, a.partition, &a.offset, a.count, NULL);
    if (n < 0)
        return sl_request_error(req, "%s", sl_error_detail());
    sl_reply_array(&req->reply, (size_t)n);
    evbuffer_add_buffer(req->reply.out, req->server->scratch);
    return SL_DONE;
}

/*
 * stage.c - gathering PRODUCE records into one batch per partition.
 *
 * A PRODUCE copies its record into its partition's stage (key, value and
 * headers into one arena, referenced by offsets because the arena moves as
 * it grows) and leaves a staged hold in its connection's reply chain. The
 * flush event has a lower priority than socket events, so it runs once the
 * loop has read every ready connection: then each stage becomes one append
 * (one write, one fsync shared by all of them), and every staged hold gets
 * its reply [partition, offset] and waits for durability like any other.
 */
#include "queries/server.h"

#include <errno.h>
#include <string.h>

typedef struct staged_record {
    int64_t timestamp;
    size_t key, value, headers; /* offsets: arena, arena, header array */
    int32_t key_len, value_len;
    uint32_t header_count;
    sl_hold_t *hold;
} staged_record_t;

typedef struct staged_header {
    size_t name, value;
    int32_t name_len, value_len;
} staged_header_t;

typedef struct partition_stage {
    sl_partition_t *partition; /* referenced while records are staged */
    staged_record_t *records;
    size_t count, cap;
    staged_header_t *headers;
    size_t header_count, header_cap;
    char *arena;
    size_t arena_len, arena_cap;
} partition_stage_t;

struct sl_stage {
    partition_stage_t *stages; /* [0, count) in use; [0, ready) initialised */
    size_t count, ready, cap;
    sl_record_t *records; /* the flush's working arrays, reused */
    size_t records_cap;
    sl_header_t *headers;
    size_t headers_cap;
};

/* Copies n bytes into the arena; returns their offset, or -1. */
static int64_t arena_copy(partition_stage_t *ps, const void *data, int32_t n)
{
    size_t at = ps->arena_len;
    if (n <= 0)
        return (int64_t)at;
    if (sl_array_reserve((void **)&ps->arena, &ps->arena_cap, at + (size_t)n, 1))
        return -1;
    memcpy(ps->arena + at, data, (size_t)n);
    ps->arena_len += (size_t)n;
    return (int64_t)at;
}

static partition_stage_t *stage_for(sl_server_t *s, sl_partition_t *p)
{
    struct sl_stage *st = s->stage;
    if (!st && !(st = s->stage = sl_calloc(1, sizeof *st)))
        return NULL;
    for (size_t i = 0; i < st->count; i++)
        if (st->stages[i].partition == p)
            return &st->stages[i];
    if (sl_array_reserve((void **)&st->stages, &st->cap, st->count + 1, sizeof *st->stages))
        return NULL;
    partition_stage_t *ps = &st->stages[st->count];
    if (st->count == st->ready) {
        memset(ps, 0, sizeof *ps);
        st->ready++;
    }
    ps->partition = p;
    sl_partition_ref(p);
    st->count++;
    return ps;
}

static int copy_headers(partition_stage_t *ps, const sl_record_t *r, staged_record_t *sr)
{
    sr->headers = ps->header_count;
    sr->header_count = r->header_count;
    if (sl_array_reserve((void **)&ps->headers, &ps->header_cap, ps->header_count + r->header_count,
                         sizeof *ps->headers))
        return -ENOMEM;
    for (uint32_t i = 0; i < r->header_count; i++) {
        const sl_header_t *h = &r->headers[i];
        int64_t name = arena_copy(ps, h->name, h->name_len);
        int64_t value = arena_copy(ps, h->value, h->value_len);
        if (name < 0 || value < 0)
            return -ENOMEM;
        ps->headers[ps->header_count++] =
            (staged_header_t){(size_t)name, (size_t)value, h->name_len, h->value_len};
    }
    return 0;
}

int sl_stage_record(sl_request_t *req, sl_partition_t *p, const sl_record_t *r)
{
    partition_stage_t *ps = stage_for(req->server, p);
    if (!ps ||
        sl_array_reserve((void **)&ps->records, &ps->cap, ps->count + 1, sizeof *ps->records))
        return -ENOMEM;
    staged_record_t *sr = &ps->records[ps->count];
    int64_t key = arena_copy(ps, r->key, r->key_len);
    int64_t value = arena_copy(ps, r->value, r->value_len);
    if (key < 0 || value < 0 || copy_headers(ps, r, sr))
        return -ENOMEM;
    sr->hold = sl_conn_hold(req->conn, 1);
    if (!sr->hold)
        return -ENOMEM;
    sr->hold->staged = 1;
    sr->timestamp = r->timestamp;
    sr->key = (size_t)key;
    sr->key_len = r->key_len;
    sr->value = (size_t)value;
    sr->value_len = r->value_len;
    ps->count++;
    event_active(req->server->flush, EV_TIMEOUT, 0);
    return 0;
}

/* Rebuilds the records of one stage as sl_record_t, pointing into its
 * arena (stable now that nothing is added). */
static int build_records(struct sl_stage *st, partition_stage_t *ps)
{
    if (sl_array_reserve((void **)&st->records, &st->records_cap, ps->count, sizeof *st->records) ||
        sl_array_reserve((void **)&st->headers, &st->headers_cap, ps->header_count,
                         sizeof *st->headers))
        return -ENOMEM;
    for (size_t i = 0; i < ps->header_count; i++) {
        staged_header_t *h = &ps->headers[i];
        st->headers[i] = (sl_header_t){(uint8_t *)ps->arena + h->name, h->name_len,
                                       (uint8_t *)ps->arena + h->value, h->value_len};
    }
    for (size_t i = 0; i < ps->count; i++) {
        staged_record_t *r = &ps->records[i];
        st->records[i] = (sl_record_t){.timestamp = r->timestamp,
                                       .key = (uint8_t *)ps->arena + r->key,
                                       .key_len = r->key_len,
                                       .value = (uint8_t *)ps->arena + r->value,
                                       .value_len = r->value_len,
                                       .headers = st->headers + r->headers,
                                       .header_count = r->header_count};
    }
    return 0;
}

/* Gives each staged hold its reply: [partition, offset] or the error. */
static void answer(partition_stage_t *ps, int rc, int64_t first)
{
    int64_t end = first + (int64_t)ps->count;
    for (size_t i = 0; i < ps->count; i++) {
        sl_hold_t *h = ps->records[i].hold;
        sl_reply_t r = {h->reply, 0};
        h->staged = 0;
        if (h->orphaned) {
            h->waits = 0;
            sl_free_hold(h);
            continue;
        }
        if (rc) {
            sl_reply_error(&r, "%s", sl_error_detail());
            continue;
        }
        sl_reply_array(&r, 2);
        sl_reply_int(&r, sl_partition_id(ps->partition));
        sl_reply_int(&r, first + (int64_t)i);
        sl_hold_add(h, ps->partition, end);
    }
}

void sl_stage_flush(evutil_socket_t fd, short what, void *arg)
{
    sl_server_t *s = arg;
    struct sl_stage *st = s->stage;
    (void)fd;
    (void)what;
    for (size_t i = 0; st && i < st->count; i++) {
        partition_stage_t *ps = &st->stages[i];
        int64_t first = 0;
        int rc = ps->count ? build_records(st, ps) : 0;
        if (rc)
            sl_error_set(rc, "out of memory");
        else if (ps->count)
            rc = sl_partition_append_nowait(ps->partition, st->records, ps->count, &first);
        answer(ps, rc, first);
        sl_partition_unref(ps->partition);
        ps->partition = NULL;
        ps->count = ps->header_count = ps->arena_len = 0;
    }
    if (st)
        st->count = 0;
    sl_server_release_all(s);
}

void sl_stage_free(struct sl_stage *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->ready; i++) {
        partition_stage_t *ps = &st->stages[i];
        if (ps->partition)
            sl_partition_unref(ps->partition);
        sl_free(ps->records);
        sl_free(ps->headers);
        sl_free(ps->arena);
    }
    sl_free(st->stages);
    sl_free(st->records);
    sl_free(st->headers);
    sl_free(st);
}

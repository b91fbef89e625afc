/*
 * stage.c - gathering PRODUCE records into one batch per partition.
 *
 * A PRODUCE copies its record into its partition's stage (an
 * sl_record_set_t) and leaves a staged hold in its connection's reply
 * chain. The
 * flush event has a lower priority than socket events, so it runs once the
 * loop has read every ready connection: then each stage becomes one append
 * (one write, one fsync shared by all of them), and every staged hold gets
 * its reply [partition, offset] and waits for durability like any other.
 */
#include "queries/server.h"

#include <errno.h>
#include <string.h>

typedef struct partition_stage {
    sl_partition_t *partition; /* referenced while records are staged */
    sl_record_set_t records;   /* copies of the staged records */
    sl_hold_t **holds;         /* the hold of each record */
    size_t holds_cap;
} partition_stage_t;

struct sl_stage {
    partition_stage_t *stages; /* [0, count) in use; [0, ready) initialised */
    size_t count, ready, cap;
};

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

int sl_stage_record(sl_request_t *req, sl_partition_t *p, const sl_record_t *r)
{
    partition_stage_t *ps = stage_for(req->server, p);
    size_t n = ps ? ps->records.count : 0;
    if (!ps || sl_array_reserve((void **)&ps->holds, &ps->holds_cap, n + 1, sizeof *ps->holds))
        return -ENOMEM;
    sl_hold_t *h = sl_conn_hold(req->conn, 1);
    if (!h)
        return -ENOMEM;
    if (sl_record_set_add(&ps->records, r))
        return -ENOMEM; /* h stays empty: it releases nothing, in order */
    h->staged = 1;
    ps->holds[n] = h;
    event_active(req->server->flush, EV_TIMEOUT, 0);
    return 0;
}

/* Gives each staged hold its reply: [partition, offset] or the error. */
static void answer(partition_stage_t *ps, int rc, int64_t first)
{
    size_t n = ps->records.count;
    int64_t end = first + (int64_t)n;
    for (size_t i = 0; i < n; i++) {
        sl_hold_t *h = ps->holds[i];
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
        size_t n = ps->records.count;
        int64_t first = 0;
        int rc = n ? sl_partition_append_nowait(ps->partition, sl_record_set_array(&ps->records), n,
                                                &first)
                   : 0;
        answer(ps, rc, first);
        sl_partition_unref(ps->partition);
        ps->partition = NULL;
        sl_record_set_reset(&ps->records);
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
        sl_record_set_free(&ps->records);
        sl_free(ps->holds);
    }
    sl_free(st->stages);
    sl_free(st);
}

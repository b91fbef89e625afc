/*
 * cmd_features.c - feature views over RESP (DESIGN.md sections 8 and 10;
 * docs/commands.md, "Feature views"):
 *
 *   FEATURES view key [AS OF ms] [FORMAT json|f32]
 *   MFEATURES view key [key ...]
 *   MFEATURES view [AS OF ms] [FORMAT json|f32] KEYS key [key ...]
 *   MFEATURES view [FORMAT json|f32] POINTS key ms [key ms ...]
 *   FEATURES.SCHEMA view
 *
 * The vectors themselves come from the runtime's views (queries.h,
 * sl_feature_views_t); this file parses, reads and replies. Every command
 * reads in one LMDB read transaction, so a vector, and every vector of one
 * MFEATURES, comes from one committed state: never half of one commit and
 * half of the next. LMDB readers never wait for the writer, so queries go
 * on while pipelines commit. The transaction is kept between commands
 * (mdb_txn_reset, then mdb_txn_renew: no allocation per query).
 *
 * MFEATURES' first form takes every argument after the view as a key. An
 * argument after the view that is AS, FORMAT, KEYS or POINTS (any case)
 * starts the long forms instead, where keys follow KEYS (one time for
 * all) or POINTS (a time per key, for point-in-time training rows); a key
 * spelled like one of those words is asked for with KEYS.
 */
#include "queries/server.h"
#include "storage/state.h"

#include <errno.h>
#include <string.h>

#define TIME_LIMIT ((int64_t)1 << 62) /* |AS OF| at most this: no overflow with ranges */

struct sl_feature_reads {
    MDB_txn *txn; /* reset between commands; NULL until first used */
    sl_buf_t vector;
};

/* One command's read. */
typedef struct fquery {
    sl_request_t *req;
    void *view;
    MDB_txn *txn;
    int64_t time; /* the AS OF time, or the clock when the command began */
    int as_of;
    int format;
} fquery_t;

void sl_feature_reads_free(struct sl_feature_reads *r)
{
    if (!r)
        return;
    if (r->txn)
        mdb_txn_abort(r->txn);
    sl_buf_free(&r->vector);
    sl_free(r);
}

/* ---- options ----------------------------------------------------------- */

/* [AS OF ms] [FORMAT json|f32] at argv[*at] on, in any order, each at most
 * once; stops at the first other argument (or argc). SL_DONE after an error
 * reply, else -1. */
static int parse_options(sl_request_t *req, size_t *at, fquery_t *q, int allow_as_of)
{
    int seen_as_of = 0, seen_format = 0;
    while (*at < req->argc) {
        const sl_resp_arg_t *a = &req->argv[*at];
        if (sl_arg_is(a, "AS") && allow_as_of && !seen_as_of) {
            if (*at + 2 >= req->argc || !sl_arg_is(&req->argv[*at + 1], "OF") ||
                sl_arg_int(&req->argv[*at + 2], -TIME_LIMIT, TIME_LIMIT, &q->time))
                return sl_request_error(req, "AS OF takes a time in ms (an integer, at most 2^62 "
                                             "either side of 0)");
            q->as_of = seen_as_of = 1;
            *at += 3;
        } else if (sl_arg_is(a, "FORMAT") && !seen_format) {
            if (*at + 1 >= req->argc)
                return sl_request_error(req, "FORMAT takes json or f32");
            if (sl_arg_is(&req->argv[*at + 1], "json"))
                q->format = SL_FEATURES_JSON;
            else if (sl_arg_is(&req->argv[*at + 1], "f32"))
                q->format = SL_FEATURES_F32;
            else
                return sl_request_error(req, "FORMAT takes json or f32");
            seen_format = 1;
            *at += 2;
        } else {
            return -1;
        }
    }
    return -1;
}

/* ---- one read ---------------------------------------------------------- */

static struct sl_feature_reads *feature_reads(sl_server_t *s)
{
    if (!s->feature_reads)
        s->feature_reads = sl_calloc(1, sizeof *s->feature_reads);
    return s->feature_reads;
}

/* A read transaction: the kept one renewed, or a new one. */
static int renew(sl_server_t *s, struct sl_feature_reads *r)
{
    int rc = r->txn ? mdb_txn_renew(r->txn)
                    : mdb_txn_begin(sl_state_env(s->state), NULL, MDB_RDONLY, &r->txn);
    if (rc && r->txn) {
        mdb_txn_abort(r->txn);
        r->txn = NULL;
    }
    return rc ? sl_state_error(rc, "beginning a read of feature views") : 0;
}

/* Opens the view argv[1] names (the views' close() ends it). SL_DONE after
 * an error reply. */
static int open_view(sl_request_t *req, fquery_t *q)
{
    char name[SL_TOPIC_NAME_MAX + 1];
    sl_server_t *s = req->server;
    q->req = req;
    if (sl_arg_name(&req->argv[1], name, sizeof name))
        return sl_request_error(req,
                                "NOTFOUND no feature view of that name (a view name is at "
                                "most %d bytes without NUL)",
                                SL_TOPIC_NAME_MAX);
    if (!s->features)
        return sl_request_error(req, "NOTFOUND no feature view '%s' (no pipeline defines views)",
                                name);
    int rc = s->features->open(s->features_arg, name, &q->view);
    if (rc)
        return sl_request_error(req, "%s%s", rc == SL_ENOTFOUND ? "NOTFOUND " : "",
                                rc == SL_ENOTFOUND ? sl_error_detail() : sl_strerror(rc));
    return -1;
}

/* Opens the view argv[1] names and a read transaction. SL_DONE after an
 * error reply. */
static int begin_query(sl_request_t *req, fquery_t *q)
{
    sl_server_t *s = req->server;
    struct sl_feature_reads *r = feature_reads(s);
    if (open_view(req, q) == SL_DONE)
        return SL_DONE;
    if (r)
        sl_store_views_lock(s->state);
    int rc = r ? renew(s, r) : -ENOMEM;
    if (rc == 0)
        s->features->begin(q->view, r->txn);
    if (r)
        sl_store_views_unlock(s->state);
    if (rc) {
        s->features->close(q->view);
        return sl_request_error(req, "%s", r ? sl_error_detail() : "out of memory");
    }
    q->txn = r->txn;
    return -1;
}

static void end_query(fquery_t *q)
{
    sl_server_t *s = q->req->server;
    s->features->close(q->view);
    mdb_txn_reset(q->txn);
}

/* Key's vector into the reads' buffer: 0, or as the views' vector(). */
static int vector(fquery_t *q, const sl_resp_arg_t *key, int64_t time)
{
    sl_server_t *s = q->req->server;
    sl_buf_t *out = &s->feature_reads->vector;
    out->len = 0;
    if (key->len < 1 || key->len > SL_WINDOW_KEY_MAX)
        return sl_error_set(SL_EINVALID, "a key is 1 to %d bytes, got %zu", SL_WINDOW_KEY_MAX,
                            key->len);
    return s->features->vector(q->view, q->txn, key->data, key->len, time, q->as_of, q->format,
                               out);
}

/* Replies key's vector: a bulk string, nil, or an error (an element's, in
 * MFEATURES; whole, failing the command, in FEATURES). */
static void reply_vector(fquery_t *q, const sl_resp_arg_t *key, int64_t time, int whole)
{
    sl_request_t *req = q->req;
    int rc = vector(q, key, time);
    const sl_buf_t *out = &req->server->feature_reads->vector;
    if (rc == 0)
        sl_reply_bulk(&req->reply, out->data, out->len);
    else if (rc == SL_ENOTFOUND)
        sl_reply_null(&req->reply);
    else if (whole)
        sl_request_error(req, "%s", rc == -ENOMEM ? "out of memory" : sl_error_detail());
    else
        sl_reply_error(&req->reply, "%s", rc == -ENOMEM ? "out of memory" : sl_error_detail());
}

/* ---- FEATURES ---------------------------------------------------------- */

/* FEATURES view key [AS OF ms] [FORMAT json|f32] -> the key's vector as a
 * bulk string (JSON, or float32 little-endian), nil if the key has no data
 * in any range and the view no default. */
int sl_cmd_features(sl_request_t *req)
{
    fquery_t q = {.time = sl_log_now(req->server->log)}; /* the log's clock: PRODUCE's "now" */
    size_t at = 3;
    if (parse_options(req, &at, &q, 1) == SL_DONE)
        return SL_DONE;
    if (at < req->argc)
        return sl_request_error(req,
                                "syntax error: FEATURES view key [AS OF ms] [FORMAT json|f32]");
    if (begin_query(req, &q) == SL_DONE)
        return SL_DONE;
    reply_vector(&q, &req->argv[2], q.time, 1);
    end_query(&q);
    return SL_DONE;
}

/* ---- MFEATURES --------------------------------------------------------- */

static int starts_long_form(const sl_resp_arg_t *a)
{
    return sl_arg_is(a, "AS") || sl_arg_is(a, "FORMAT") || sl_arg_is(a, "KEYS") ||
           sl_arg_is(a, "POINTS");
}

/* The POINTS form's times, checked before anything is replied. */
static int check_points(sl_request_t *req, size_t first)
{
    int64_t t;
    if (first >= req->argc || (req->argc - first) % 2)
        return sl_request_error(req, "POINTS takes pairs of key and time in ms");
    for (size_t i = first + 1; i < req->argc; i += 2)
        if (sl_arg_int(&req->argv[i], -TIME_LIMIT, TIME_LIMIT, &t))
            return sl_request_error(req,
                                    "POINTS: the time after key %zu is not a time in ms (an "
                                    "integer, at most 2^62 either side of 0)",
                                    (i - first) / 2 + 1);
    return -1;
}

/* Where the keys start, and whether they come in (key, time) pairs;
 * SL_DONE after an error reply. */
static int parse_mfeatures(sl_request_t *req, fquery_t *q, size_t *first, int *points)
{
    size_t at = 2;
    *points = 0;
    *first = 2;
    if (!starts_long_form(&req->argv[2]))
        return -1;
    if (parse_options(req, &at, q, 1) == SL_DONE)
        return SL_DONE;
    if (at < req->argc && sl_arg_is(&req->argv[at], "POINTS") && !q->as_of) {
        *points = 1;
        q->as_of = 1;
        *first = at + 1;
        return check_points(req, *first);
    }
    if (at >= req->argc || !sl_arg_is(&req->argv[at], "KEYS") || at + 1 >= req->argc)
        return sl_request_error(req, "syntax error: MFEATURES view [AS OF ms] [FORMAT json|f32] "
                                     "KEYS key [key ...], or MFEATURES view [FORMAT json|f32] "
                                     "POINTS key ms [key ms ...]");
    *first = at + 1;
    return -1;
}

/* MFEATURES view key [key ...] (and the long forms above) -> an array
 * with each key's reply as FEATURES would give it (an element is an error
 * if that key's vector failed, e.g. beyond the stores' retention). */
int sl_cmd_mfeatures(sl_request_t *req)
{
    fquery_t q = {.time = sl_log_now(req->server->log)}; /* the log's clock: PRODUCE's "now" */
    size_t first;
    int points;
    int64_t t = 0;
    if (parse_mfeatures(req, &q, &first, &points) == SL_DONE || begin_query(req, &q) == SL_DONE)
        return SL_DONE;
    size_t step = points ? 2 : 1;
    sl_reply_array(&req->reply, (req->argc - first) / step);
    for (size_t i = first; i < req->argc; i += step) {
        if (points)
            sl_arg_int(&req->argv[i + 1], -TIME_LIMIT, TIME_LIMIT, &t);
        reply_vector(&q, &req->argv[i], points ? t : q.time, 0);
    }
    end_query(&q);
    return SL_DONE;
}

/* ---- FEATURES.SCHEMA --------------------------------------------------- */

static void reply_feature(sl_reply_t *r, const sl_feature_info_t *f)
{
    sl_reply_array(r, 8);
    sl_reply_cstr(r, f->name);
    sl_reply_cstr(r, f->type);
    sl_reply_cstr(r, f->aggregate);
    sl_reply_cstr(r, f->member);
    sl_reply_int(r, f->range_ms);
    sl_reply_int(r, f->bucket_ms);
    if (f->default_json)
        sl_reply_cstr(r, f->default_json);
    else
        sl_reply_null(r);
    sl_reply_cstr(r, f->pipeline);
}

/* FEATURES.SCHEMA view -> [[name, type, aggregate, member, range_ms,
 * bucket_ms, default, pipeline], ...] in schema order (the order of JSON
 * objects and float32 vectors); default is JSON text or nil. */
int sl_cmd_features_schema(sl_request_t *req)
{
    const sl_feature_info_t *features;
    size_t count;
    fquery_t q = {0};
    if (open_view(req, &q) == SL_DONE) /* no read: the schema is the view's */
        return SL_DONE;
    int rc = req->server->features->schema(q.view, &features, &count);
    if (rc)
        sl_request_error(req, "%s", sl_strerror(rc));
    else {
        sl_reply_array(&req->reply, count);
        for (size_t i = 0; i < count; i++)
            reply_feature(&req->reply, &features[i]);
    }
    req->server->features->close(q.view);
    return SL_DONE;
}

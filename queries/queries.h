/*
 * queries.h - the node's TCP face: a RESP2/RESP3 server (so redis-cli,
 * redis-benchmark and every Redis client library are clients) and an HTTP
 * endpoint for /health and /metrics. See docs/commands.md for the commands.
 *
 * The server runs on the caller's libevent base, on one thread. Storage work
 * that can wait (fsync) never blocks it: a PRODUCE's reply is held until the
 * log reports the records durable, while the connection keeps reading, and
 * replies always leave in request order.
 */
#ifndef SL_QUERIES_H
#define SL_QUERIES_H

#include "queries/reply.h"
#include "queries/resp.h"
#include "storage/buf.h"
#include "storage/storage.h"

#include <event2/event.h>
#include <lmdb.h>

typedef struct sl_server sl_server_t;

typedef struct sl_server_options {
    const char *bind;        /* address to listen on; default 127.0.0.1 */
    int port;                /* RESP port; 0 = any free port */
    int http_port;           /* HTTP port; 0 = any free port, -1 = none */
    const char *requirepass; /* NULL: no AUTH needed */
    size_t max_value_bytes;  /* largest record value (and key) accepted */
    size_t max_bulk_bytes;   /* largest RESP bulk string accepted */
    size_t max_args;         /* most arguments in one command */
    int max_clients;
    int auto_create_topics; /* PRODUCE to a missing topic creates it */
} sl_server_options_t;

/* Fills o with the defaults: 127.0.0.1:6380, HTTP 8080, no password,
 * values up to 1 MiB, bulk up to 512 MiB, 1M arguments, 10000 clients. */
void sl_server_options_default(sl_server_options_t *o);

/*
 * Starts listening. The base must have two priorities
 * (event_base_priority_init(base, 2)): socket events run at 0, and the
 * flush that appends staged records at 1, after each round of I/O.
 * The log and the state must outlive the server. Binding
 * to anything but a loopback address without requirepass is refused
 * (SL_EINVALID, protected mode). On success *out is the caller's until
 * sl_server_free().
 */
int sl_server_start(struct event_base *base, sl_log_t *log, sl_state_t *state,
                    const sl_server_options_t *o, sl_server_t **out);

/* The ports actually bound (useful with port 0). */
int sl_server_port(const sl_server_t *s);
int sl_server_http_port(const sl_server_t *s);

/* The log listener (sl_log_options_t.listener) with arg = the server: wakes
 * the server's loop to release held replies and blocked reads. Safe from
 * any thread. */
void sl_server_notify(void *server, sl_partition_t *p, int64_t end_offset);

/* Graceful stop: closes the listeners, answers blocked reads with their
 * timeout reply, lets held replies finish, then breaks the event loop once
 * no reply is outstanding (or after timeout_ms). */
void sl_server_shutdown(sl_server_t *s, int timeout_ms);

/* A command family added from above (the runtime's PIPELINE ...): runs on
 * the server's thread with the command's arguments (argv[0] is its name)
 * and writes exactly one reply. Returns 1 if that reply is an error (for
 * the metrics), 0 otherwise. */
typedef int (*sl_command_fn)(void *arg, size_t argc, const sl_resp_arg_t *argv, sl_reply_t *reply);

/* Adds a command: arity as in Redis (N exactly, -N at least N, counting
 * the name). At most 8 such commands. Returns 0 or SL_EINVALID. */
int sl_server_add_command(sl_server_t *s, const char *name, int arity, sl_command_fn fn, void *arg);

/* Metric families added from above: fn appends whole families (HELP,
 * TYPE, samples) in Prometheus text format to out, on the server's thread,
 * each time /metrics is read. One such writer. */
typedef void (*sl_metrics_fn)(void *arg, struct evbuffer *out);
void sl_server_set_metrics(sl_server_t *s, sl_metrics_fn fn, void *arg);

/* Enables the work-queue commands (EXCHANGE, QUEUE, BIND, UNBIND,
 * QPUBLISH, QPOP, ACK, NACK) over queues, which must outlive the server.
 * Call once, before the loop runs. Returns 0 or -ENOMEM. */
int sl_server_set_queues(sl_server_t *s, sl_queues_t *queues);

/*
 * How GET, WINDOWS and SCAN show a state store's values. A store holds what
 * its operator wrote (an AGGREGATE's encoded state, ops/aggregate.h), which
 * only the pipeline owning it can read, so the runtime registers a renderer
 * (queries knows no pipelines). Per command, on the server's thread:
 *
 *   open(arg, store, &view)   store is the full name "<pipeline>.<store>".
 *       0 and *view; SL_ENOTFOUND if no running pipeline owns the store
 *       (its values are then replied as stored); -ENOMEM.
 *   render(view, value, len, window_start, &window_end, out)   appends the
 *       JSON text of one value (len bytes as stored; window_start is the
 *       window's for a window store, 0 for a kv store) to out and sets
 *       *window_end if the window's end is known (it is left alone
 *       otherwise). 0; SL_ECORRUPT if the value cannot be read (it is then
 *       replied as stored, out truncated back); -ENOMEM.
 *   close(view)   after the command's last render.
 *
 * Without a renderer every value is replied as stored.
 */
typedef struct sl_store_renderer {
    int (*open)(void *arg, const char *store, void **view);
    int (*render)(void *view, const void *value, size_t len, int64_t window_start,
                  int64_t *window_end, sl_buf_t *out);
    void (*close)(void *view);
} sl_store_renderer_t;

/* Sets the renderer (r is borrowed and must outlive the server; NULL:
 * none) and the arg its open() gets. */
void sl_server_set_store_renderer(sl_server_t *s, const sl_store_renderer_t *r, void *arg);

/*
 * Feature views (FEATURES, MFEATURES, FEATURES.SCHEMA; cmd_features.c). A
 * view's vectors are computed from its pipelines' aggregate stores, which
 * only the runtime can read (queries knows no pipelines), so the runtime
 * registers the views. Per command, on the server's thread, all reads of
 * one command in one LMDB read transaction:
 *
 *   open(arg, view, &v)   0 and *v; SL_ENOTFOUND with a detail if there is
 *       no such view; -ENOMEM. Every open is followed by one close.
 *   begin(v, txn)   the command reads in txn, just begun, from now on:
 *       called with the stores' views lock held (sl_store_views_lock), so
 *       that every store the view reads shows txn's committed state.
 *   vector(v, txn, key, key_len, t, as_of, format, out)   appends key's
 *       vector to out: as JSON (SL_FEATURES_JSON: one object, feature
 *       name -> number or null, in schema order) or as little-endian
 *       float32 in schema order (SL_FEATURES_F32, NaN for null). t is the
 *       time in ms: the AS OF time (as_of 1) or the node's clock (as_of
 *       0). 0; SL_ENOTFOUND (nothing appended) if the key has no data in
 *       any range and no default applies; SL_EINVALID with a detail (t
 *       beyond what the stores keep); SL_ECORRUPT with a detail; -ENOMEM.
 *   schema(v, &features, &count)   the features in schema order, valid
 *       until close.
 *   close(v)   after the command's last call.
 */
enum { SL_FEATURES_JSON = 0, SL_FEATURES_F32 = 1 };

/* One feature of a view, as FEATURES.SCHEMA shows it. */
typedef struct sl_feature_info {
    const char *name;         /* "clicks_5m" */
    const char *type;         /* "integer", "number" or "float" */
    const char *aggregate;    /* "count", "sum", "min", "max", "avg", "last", "distinct" */
    const char *member;       /* "clicks" */
    int64_t range_ms;         /* the trailing range */
    int64_t bucket_ms;        /* the aggregate's window size */
    const char *default_json; /* the default as JSON text; NULL if none */
    const char *pipeline;     /* the pipeline computing it */
} sl_feature_info_t;

typedef struct sl_feature_views {
    int (*open)(void *arg, const char *view, void **v);
    void (*begin)(void *v, MDB_txn *txn);
    int (*vector)(void *v, MDB_txn *txn, const void *key, size_t key_len, int64_t t, int as_of,
                  int format, sl_buf_t *out);
    int (*schema)(void *v, const sl_feature_info_t **features, size_t *count);
    void (*close)(void *v);
} sl_feature_views_t;

/* Sets the views (v is borrowed and must outlive the server; NULL: none,
 * and FEATURES answers that no view exists) and the arg open() gets. */
void sl_server_set_feature_views(sl_server_t *s, const sl_feature_views_t *v, void *arg);

/* Closes every connection and frees the server. */
void sl_server_free(sl_server_t *s);

#endif

/*
 * server.h - internals of the RESP server shared by its files: the server,
 * connections, held replies, and the command table.
 *
 * Held replies: a command whose reply must wait (PRODUCE until its records
 * are durable) appends a hold to its connection. Replies of later commands
 * go into the newest hold's `after` buffer instead of the socket, so output
 * stays in request order; when the oldest hold is released its reply and
 * its `after` buffer move to the socket, and so on down the chain.
 *
 * Blocked reads: a FETCH ... BLOCK with nothing to return leaves its bytes
 * in the input buffer and marks the connection blocked; the command is run
 * again on every wake (data became visible) and at its deadline.
 */
#ifndef SL_SERVER_H
#define SL_SERVER_H

#include "queries/metrics.h"
#include "queries/queries.h"
#include "queries/reply.h"
#include "queries/resp.h"

#include <event2/http.h>
#include <event2/listener.h>

/* What a held reply waits for: each partition durable up to its end. */
typedef struct sl_hold_wait {
    sl_partition_t *partition; /* referenced */
    int64_t end;
} sl_hold_wait_t;

typedef struct sl_hold {
    struct sl_hold *next;
    struct sl_server *server;
    struct evbuffer *reply; /* sent when every wait is durable */
    struct evbuffer *after; /* replies of later commands */
    int staged;             /* its record is staged, not yet appended */
    int orphaned;           /* its connection closed while staged */
    int capacity;           /* room in wait[] */
    int waits;
    sl_hold_wait_t wait[];
} sl_hold_t;

typedef struct sl_conn {
    struct sl_server *server;
    evutil_socket_t fd;
    struct event *read_event, *write_event;
    struct evbuffer *in, *out;
    int reading;                 /* read_event is added */
    struct sl_conn *prev, *next; /* all connections */
    sl_resp_parser_t parser;
    sl_hold_t *holds, *holds_tail;
    int resp3;
    int authenticated;
    int closing; /* close once output is flushed and holds released */
    int blocked; /* a blocked command sits at the head of the input */
    int64_t block_deadline_ms;
    struct event *block_timer;
    struct sl_queue_client *queue_client; /* its consumer, if it used queues (qstage.c) */
    uint64_t id;
    char name[64];
} sl_conn_t;

typedef struct sl_server {
    struct event_base *base;
    sl_log_t *log;
    sl_state_t *state;
    sl_server_options_t options;
    char bind[64];
    struct evconnlistener *listener;
    struct evhttp *http;
    int port, http_port;
    struct event *wake; /* activated by sl_server_notify from any thread */
    struct event *shutdown_timer;
    sl_conn_t *conns;
    int conn_count;
    uint64_t next_conn_id, total_connections;
    int64_t started_ms;
    int shutting_down;
    sl_metrics_t metrics;
    struct evbuffer *scratch;  /* reused by commands that count before replying */
    struct sl_groups *groups;  /* consumer-group fetch positions (cmd_group.c) */
    struct sl_stage *stage;    /* PRODUCE records waiting for the flush (stage.c) */
    struct event *flush;       /* runs the stage flush after this round of I/O */
    struct sl_hold *hold_pool; /* free one-wait holds */
    struct sl_qstage *qstage;  /* work queues, if enabled (qstage.c) */
    struct sl_extra_command {
        char name[32];
        int arity;
        sl_command_fn fn;
        void *arg;
    } extra[8];
    int extra_count;
    sl_metrics_fn extra_metrics;
    void *extra_metrics_arg;
    struct sl_open_stores *stores;       /* opened by GET, WINDOWS, SCAN (cmd_state.c) */
    const sl_store_renderer_t *renderer; /* NULL: values as stored */
    void *renderer_arg;
    const sl_feature_views_t *features; /* NULL: no feature views */
    void *features_arg;
    struct sl_feature_reads *feature_reads; /* FEATURES' reused transaction (cmd_features.c) */
    int hold_pooled;
} sl_server_t;

/* One command being executed. */
typedef struct sl_request {
    sl_server_t *server;
    sl_conn_t *conn;
    sl_reply_t reply;
    size_t argc;
    const sl_resp_arg_t *argv;
    int retry;  /* re-run of a blocked command */
    int failed; /* the reply is an error (for metrics) */
} sl_request_t;

/* Replies with an error and marks the request failed. Returns SL_DONE. */
int sl_request_error(sl_request_t *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Command handlers return SL_DONE (reply written), SL_BLOCKED (wait for data:
 * nothing written, the command stays in the input and runs again) or
 * SL_CLOSE (reply written, then close the connection). */
enum { SL_DONE = 0, SL_BLOCKED = 1, SL_CLOSE = 2 };

typedef struct sl_command {
    const char *name;
    int arity; /* N: exactly N arguments incl. the name; -N: at least N */
    int (*run)(sl_request_t *req);
    int allowed_before_auth;
    int metric; /* index into the metrics' per-command counters */
} sl_command_t;

/* The command table (commands.c); commands added with
 * sl_server_add_command come after the built-in ones. */
const sl_command_t *sl_command_find(const sl_resp_arg_t *name);
int sl_builtin_command_count(void);
const sl_command_t *sl_command_at(int i); /* NULL past the end */

/* Argument helpers (commands.c). */
int sl_arg_is(const sl_resp_arg_t *a, const char *word); /* case-insensitive */
int sl_arg_int(const sl_resp_arg_t *a, int64_t min, int64_t max, int64_t *out);
/* Copies a name argument into out (NUL-terminated); 0 or -1 if too long
 * or it contains a NUL byte. */
int sl_arg_name(const sl_resp_arg_t *a, char *out, size_t size);

/* Where the current command's reply goes: the newest hold's `after`
 * buffer, or the socket. */
struct evbuffer *sl_conn_output(sl_conn_t *c);

/* Starts a held reply for the current command with room for `waits`
 * waits (filled by sl_hold_add): returns the hold (its `reply` buffer is
 * where the reply goes) or NULL on allocation failure. */
sl_hold_t *sl_conn_hold(sl_conn_t *c, int waits);

/* Adds a wait: the reply leaves once p is durable up to end. */
void sl_hold_add(sl_hold_t *h, sl_partition_t *p, int64_t end);

/* Frees a hold that is no longer in any connection's chain. */
void sl_free_hold(sl_hold_t *h);

/* Blocks the connection until deadline_ms (absolute, ms; < 0 forever). */
void sl_conn_block(sl_conn_t *c, int64_t deadline_ms);

/* Milliseconds on a monotonic clock. */
int64_t sl_now_ms(void);
int64_t sl_now_ns(void);

/* Handlers, one file per family. */
int sl_cmd_topic(sl_request_t *req);
int sl_cmd_produce(sl_request_t *req);
int sl_cmd_producebatch(sl_request_t *req);
int sl_cmd_fetch(sl_request_t *req);
int sl_cmd_group(sl_request_t *req);
int sl_cmd_seek(sl_request_t *req);

/* Reads up to max records of p from *offset into the server's scratch
 * buffer as FETCH records (group_topic != NULL: GROUP FETCH records, which
 * start with topic and partition); advances *offset. Returns the count or
 * an error (cmd_fetch.c). */
int sl_fetch_records(sl_request_t *req, sl_partition_t *p, int64_t *offset, int64_t max,
                     const char *group_topic);

/* Parses the read options [COUNT n (1-100000, default 100)] [BLOCK ms (0 =
 * forever; absent: -1)] from argv[from] on. 0, or -1 for a syntax error. */
int sl_read_options(const sl_request_t *req, size_t from, int64_t *count, int64_t *block_ms);

/* For a read that found nothing: blocks the connection until the BLOCK
 * deadline (block_ms >= 0; 0 = forever) or replies an empty array. */
int sl_block_or_empty(sl_request_t *req, int64_t block_ms);

/* Staging (stage.c): PRODUCE records of one event-loop round are gathered
 * per partition and appended as one batch each once the round's I/O is
 * done, so concurrent and pipelined producers share writes and fsyncs.
 * sl_stage_record copies the record, gives the request a staged hold (its
 * reply is written at the flush) and schedules the flush. */
int sl_stage_record(sl_request_t *req, sl_partition_t *p, const sl_record_t *r);
void sl_stage_flush(evutil_socket_t fd, short what, void *server);
void sl_stage_free(struct sl_stage *st);

/* Releases what is ready and writes out every connection with holds. */
void sl_server_release_all(sl_server_t *s);

/* Runs a blocked command again now (as a wake does); the connection may
 * be freed by this. */
void sl_conn_wake(sl_conn_t *c);

/* Work queues: commands (cmd_exchange.c, cmd_queue.c) and their side of
 * the server (qstage.c): the round's batch and its group commit, staged
 * replies, waiters of blocked QPOPs, the lease and TTL timer, metrics. */
typedef struct sl_qstage sl_qstage_t;
int sl_cmd_exchange(sl_request_t *req);
int sl_cmd_bind(sl_request_t *req); /* BIND and UNBIND */
int sl_cmd_queue(sl_request_t *req);
int sl_cmd_qpublish(sl_request_t *req);
int sl_cmd_qpop(sl_request_t *req);
int sl_cmd_ack(sl_request_t *req); /* ACK and NACK */

/* The error reply for a registry failure rc: NOTFOUND, BUSY or ERR with
 * the detail. Returns SL_DONE. */
int sl_queue_error(sl_request_t *req, int rc);

/* Copies a queue or exchange name argument into out (SL_QUEUE_NAME_MAX +
 * 1 bytes); -1 after an error reply if it is too long. */
int sl_queue_name_arg(sl_request_t *req, const sl_resp_arg_t *a, const char *kind, char *out);

/* The registry, or NULL after an error reply (queues not enabled). */
sl_queues_t *sl_qstage_queues(sl_request_t *req);

/* The batch this round stages into. */
sl_queue_batch_t *sl_qstage_batch(sl_server_t *s);

/* The request's reply becomes `value` once the round's commit succeeds
 * (the commit's error otherwise). 0 or -ENOMEM. */
int sl_qstage_reply(sl_request_t *req, int64_t value);

/* Schedules the round's commit if something is staged. */
void sl_qstage_schedule(sl_server_t *s);

/* The connection's consumer (created on first use), or NULL. */
sl_queue_consumer_t *sl_qstage_consumer(sl_request_t *req);

/* A blocked QPOP joins the waiters for queue; unwait leaves them. */
void sl_qstage_wait(sl_request_t *req, const char *queue);
void sl_qstage_unwait(sl_conn_t *c);

/* How many blocked QPOPs wait for queue. */
int64_t sl_qstage_waiting(sl_server_t *s, const char *queue);

/* Whether c is the waiter being served (its blocked QPOP may pop). */
int sl_qstage_serving(const sl_conn_t *c);

/* A lease ends at deadline (log clock, ms): the timer fires by then. */
void sl_qstage_lease(sl_server_t *s, int64_t deadline);

/* The close hook: c's deliveries go back to ready. */
void sl_qstage_conn_closed(sl_conn_t *c);

/* Serves the QPOPs waiting for queues that have messages ready now, oldest
 * first: for messages made ready by another thread (a pipeline's :route
 * commit), which wakes the loop through sl_server_notify. */
void sl_qstage_serve(sl_server_t *s);

void sl_qstage_free(sl_server_t *s);
void sl_qstage_metrics(sl_server_t *s, struct evbuffer *out);

/* State queries (cmd_state.c): GET, WINDOWS and SCAN over the stores in
 * LMDB, in read transactions that never block commits. */
int sl_cmd_get(sl_request_t *req);
int sl_cmd_windows(sl_request_t *req);
int sl_cmd_scan(sl_request_t *req);
void sl_open_stores_free(struct sl_open_stores *stores);

/* Feature views (cmd_features.c): FEATURES, MFEATURES, FEATURES.SCHEMA,
 * each in one LMDB read transaction (reused: reset and renewed). */
int sl_cmd_features(sl_request_t *req);
int sl_cmd_mfeatures(sl_request_t *req);
int sl_cmd_features_schema(sl_request_t *req);
void sl_feature_reads_free(struct sl_feature_reads *r);

/* HTTP endpoint (http.c). */
int sl_http_start(sl_server_t *s);

/* Consumer groups' in-memory state (cmd_group.c). */
void sl_groups_free(struct sl_groups *g);
void sl_groups_forget_topic(struct sl_groups *g, const char *topic);

#endif

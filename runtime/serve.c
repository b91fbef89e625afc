/*
 * serve.c - `sluice serve`: the long-lived node.
 *
 * Lifecycle: parse options, open the log (recovering it) and the LMDB state,
 * start the RESP/HTTP server on a libevent loop, run retention and
 * compaction on a maintenance thread, and on SIGTERM/SIGINT stop accepting,
 * let held replies finish, close the log (fsync, indexes, clean marker) and
 * exit 0.
 */
#include "queries/queries.h"
#include "runtime/cli.h"
#include "runtime/features.h"
#include "runtime/pipeline.h"
#include "runtime/store_views.h"
#include "storage/state.h"

#include <event2/thread.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <errno.h>
#include <time.h>

static int serve_main(int argc, char **argv, const char *run_file);

static const char serve_usage[] =
    "usage: sluice serve [options]\n"
    "\n"
    "  --data DIR              data directory (default ./data)\n"
    "  --bind ADDR             listen address (default 127.0.0.1); anything but\n"
    "                          loopback needs --requirepass\n"
    "  --port N                RESP port (default 6380; 0 = any free port)\n"
    "  --http-port N           HTTP port for /health and /metrics (default 8080;\n"
    "                          0 = any free port, -1 = off)\n"
    "  --requirepass PASS      clients must AUTH with PASS\n"
    "  --workers N             worker threads (each with its own Lua VM) per\n"
    "                          pipeline, at most one per task (default: cores)\n"
    "  --auto-create-topics    PRODUCE to a missing topic creates it\n"
    "  --max-value-bytes N     largest record key or value (default 1048576)\n"
    "  --max-bulk-bytes N      largest RESP bulk string (default 536870912)\n"
    "  --max-args N            most arguments in one command (default 1048576)\n"
    "  --max-clients N         most connections (default 10000)\n"
    "  --maintenance-ms N      retention/compaction period (default 30000)\n"
    "  --features-cache-mb N   memory per feature view for live vectors kept\n"
    "                          until the next commit (default 64; 0 = off)\n"
    "  --log-level LEVEL       debug, info, warn or error (default info)\n"
    "\n"
    "The node logs `serve: ready resp=ADDR:PORT http=ADDR:PORT` once it accepts\n"
    "clients. SIGTERM or SIGINT stops it cleanly (exit 0).\n";

typedef struct node {
    sl_server_options_t server_options;
    const char *data;
    int64_t maintenance_ms;
    int64_t features_cache_mb; /* -1: not given */
    int workers;
    sl_log_t *log;
    sl_state_t *state;
    sl_queues_t *queues; /* work queues: exchanges, queues, deliveries */
    struct event_base *base;
    _Atomic(sl_server_t *) server;
    _Atomic(sl_pipelines_t *) pipelines;
    const char *run_file; /* `sluice run`: the script to submit at start */
    pthread_t maintenance;
    pthread_mutex_t lock;
    pthread_mutex_t listener_lock; /* server and pipelines, for on_durable */
    pthread_cond_t stop;
    int stopping;
} node_t;

static int parse_level(const char *text)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(text, names[i]))
            return i;
    return -1;
}

/* Sets a numeric option; returns 0 or -1 for a bad number. */
static int set_number(node_t *n, int opt, const char *text)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (*end || end == text || v < -1)
        return -1;
    switch (opt) {
    case 'p':
        n->server_options.port = (int)v;
        break;
    case 'H':
        n->server_options.http_port = (int)v;
        break;
    case 'w':
        n->workers = (int)v;
        break;
    case 'V':
        n->server_options.max_value_bytes = (size_t)v;
        break;
    case 'B':
        n->server_options.max_bulk_bytes = (size_t)v;
        break;
    case 'A':
        n->server_options.max_args = (size_t)v;
        break;
    case 'C':
        n->server_options.max_clients = (int)v;
        break;
    case 'M':
        n->maintenance_ms = v;
        break;
    case 'F':
        if (v > (int64_t)(SIZE_MAX >> 21))
            return -1;
        n->features_cache_mb = v;
        break;
    }
    return v < 0 && opt != 'H' ? -1 : 0;
}

static int parse_serve(int argc, char **argv, node_t *n)
{
    static const struct option options[] = {
        {"data", required_argument, NULL, 'd'},
        {"bind", required_argument, NULL, 'b'},
        {"port", required_argument, NULL, 'p'},
        {"http-port", required_argument, NULL, 'H'},
        {"requirepass", required_argument, NULL, 'P'},
        {"workers", required_argument, NULL, 'w'},
        {"auto-create-topics", no_argument, NULL, 'a'},
        {"max-value-bytes", required_argument, NULL, 'V'},
        {"max-bulk-bytes", required_argument, NULL, 'B'},
        {"max-args", required_argument, NULL, 'A'},
        {"max-clients", required_argument, NULL, 'C'},
        {"maintenance-ms", required_argument, NULL, 'M'},
        {"features-cache-mb", required_argument, NULL, 'F'},
        {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (c == 'h')
            return fputs(serve_usage, stdout), 1;
        if (c == 'd')
            n->data = optarg;
        else if (c == 'b')
            n->server_options.bind = optarg;
        else if (c == 'P')
            n->server_options.requirepass = optarg;
        else if (c == 'a')
            n->server_options.auto_create_topics = 1;
        else if (c == 'L' && parse_level(optarg) >= 0)
            sl_report_level((sl_level_t)parse_level(optarg));
        else if (c == '?' || c == 'L' || set_number(n, c, optarg))
            return fprintf(stderr, "sluice serve: bad option or value\n%s", serve_usage), 2;
    }
    if (optind < argc)
        return fprintf(stderr, "sluice serve: unexpected '%s'\n%s", argv[optind], serve_usage), 2;
    return 0;
}

/* The log's listener: forwards to the server once it exists. */
/* The log's listener, on whichever thread made data durable. The lock
 * keeps stop_node() from freeing the server or the pipelines under it. */
static void on_durable(void *arg, sl_partition_t *p, int64_t end)
{
    node_t *n = arg;
    pthread_mutex_lock(&n->listener_lock);
    sl_server_t *s = atomic_load(&n->server);
    sl_pipelines_t *m = atomic_load(&n->pipelines);
    if (s)
        sl_server_notify(s, p, end);
    if (m)
        sl_pipelines_notify(m);
    pthread_mutex_unlock(&n->listener_lock);
}

static void *maintenance_main(void *arg)
{
    node_t *n = arg;
    pthread_mutex_lock(&n->lock);
    while (!n->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += n->maintenance_ms / 1000;
        ts.tv_nsec += (n->maintenance_ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&n->stop, &n->lock, &ts);
        if (n->stopping)
            break;
        pthread_mutex_unlock(&n->lock);
        sl_log_maintain(n->log);
        pthread_mutex_lock(&n->lock);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    node_t *n = arg;
    (void)what;
    sl_report(SL_INFO, "serve", "signal %d: stopping (finishing in-flight requests)", (int)sig);
    sl_server_shutdown(atomic_load(&n->server), 5000);
}

static void raise_file_limit(void)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
}

/* `sluice run`: submits the script file, named after the file. */
static int submit_file(node_t *n)
{
    char name[160], *text;
    size_t len;
    cli_script_name(n->run_file, name, sizeof name);
    int rc = sl_io_read_file(n->run_file, &text, &len);
    if (rc)
        return fprintf(stderr, "sluice run: cannot read %s: %s\n", n->run_file, sl_strerror(rc)), 1;
    rc = sl_pipelines_submit(atomic_load(&n->pipelines), name, text, len);
    sl_free(text);
    if (rc)
        return cli_fail("run", rc);
    sl_report(SL_INFO, "run", "pipeline %s submitted from %s", name, n->run_file);
    return 0;
}

/* Opens the log and the state and starts the server on n->base. */
static int start_node(node_t *n)
{
    sl_server_t *server;
    sl_log_options_t lo = {.listener = on_durable, .listener_arg = n};
    int rc = sl_log_open(n->data, &lo, &n->log);
    if (rc)
        return cli_fail("serve: cannot open the log", rc);
    if ((rc = sl_state_open(n->data, NULL, &n->state)))
        return cli_fail("serve: cannot open the state", rc);
    if ((rc = sl_log_attach_state(n->log, n->state))) /* transactional partitions to their lso */
        return cli_fail("serve: cannot recover committed ends", rc);
    if ((rc = sl_server_start(n->base, n->log, n->state, &n->server_options, &server)))
        return cli_fail("serve", rc);
    atomic_store(&n->server, server);
    if ((rc = sl_queues_open(n->log, n->state, &n->queues)) ||
        (rc = sl_server_set_queues(server, n->queues)))
        return cli_fail("serve: work queues", rc);
    sl_pipelines_t *m;
    if ((rc = sl_pipelines_open(n->data, n->log, n->state, n->queues, n->workers, &m)))
        return cli_fail("serve: pipelines", rc);
    atomic_store(&n->pipelines, m);
    if (n->features_cache_mb >= 0) /* else the registry's default */
        sl_features_set_cache_bytes(sl_pipelines_features(m), (size_t)n->features_cache_mb << 20);
    if ((rc = sl_server_add_command(server, "PIPELINE", -2, sl_pipelines_command, m)))
        return cli_fail("serve", rc);
    sl_server_set_metrics(server, sl_pipelines_metrics, m);
    sl_server_set_store_renderer(server, &sl_store_views, m); /* GET, WINDOWS, SCAN */
    sl_server_set_feature_views(server, &sl_feature_views, sl_pipelines_features(m));
    if (n->run_file && (rc = submit_file(n)))
        return rc;
    return 0;
}

/* The line scripts wait for: logged once SIGTERM and SIGINT are handled,
 * so a signal sent right after it stops the node cleanly. */
static void report_ready(node_t *n)
{
    sl_server_t *server = atomic_load(&n->server);
    sl_report(SL_INFO, "serve", "ready resp=%s:%d http=%s:%d data=%s", n->server_options.bind,
              sl_server_port(server), n->server_options.bind, sl_server_http_port(server), n->data);
}

static void stop_node(node_t *n)
{
    pthread_mutex_lock(&n->lock);
    n->stopping = 1;
    pthread_cond_signal(&n->stop);
    pthread_mutex_unlock(&n->lock);
    pthread_mutex_lock(&n->listener_lock);
    sl_server_t *server = atomic_exchange(&n->server, NULL);
    sl_pipelines_t *pipelines = atomic_exchange(&n->pipelines, NULL);
    pthread_mutex_unlock(&n->listener_lock);
    sl_pipelines_close(pipelines); /* before the log: its workers append */
    sl_server_free(server);
    sl_queues_close(n->queues); /* after the server: its last round commits */
    if (n->maintenance)
        pthread_join(n->maintenance, NULL);
    if (n->state)
        sl_state_close(n->state);
    sl_log_close(n->log);
    if (n->base)
        event_base_free(n->base);
}

int cli_run_pipeline(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr,
                "usage: sluice run FILE.lua [serve options]\n\n"
                "Starts a node (as `sluice serve`, data in ./data unless --data) and\n"
                "submits FILE.lua as the pipeline named after the file. The node keeps\n"
                "running the pipeline until SIGTERM or Ctrl-C; see `sluice serve --help`.\n");
        return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
    }
    const char *file = argv[1];
    argv[1] = argv[0];
    return serve_main(argc - 1, argv + 1, file);
}

int cli_serve(int argc, char **argv)
{
    return serve_main(argc, argv, NULL);
}

static int serve_main(int argc, char **argv, const char *run_file)
{
    node_t n = {
        .data = "data", .maintenance_ms = 30000, .features_cache_mb = -1, .run_file = run_file};
    sl_server_options_default(&n.server_options);
    int rc = parse_serve(argc, argv, &n);
    if (rc)
        return rc == 1 ? 0 : rc;
    signal(SIGPIPE, SIG_IGN);
    raise_file_limit();
    pthread_mutex_init(&n.lock, NULL);
    pthread_mutex_init(&n.listener_lock, NULL);
    pthread_cond_init(&n.stop, NULL);
    evthread_use_pthreads();
    n.base = event_base_new();
    rc = n.base && event_base_priority_init(n.base, 2) == 0 ? start_node(&n)
                                                            : cli_fail("serve: libevent", -1);
    struct event *term = NULL, *intr = NULL;
    if (rc == 0) {
        term = evsignal_new(n.base, SIGTERM, on_signal, &n);
        intr = evsignal_new(n.base, SIGINT, on_signal, &n);
        evsignal_add(term, NULL);
        evsignal_add(intr, NULL);
        report_ready(&n);
        if (n.maintenance_ms > 0)
            pthread_create(&n.maintenance, NULL, maintenance_main, &n);
        event_base_dispatch(n.base);
        sl_report(SL_INFO, "serve", "stopped");
    }
    if (term)
        event_free(term);
    if (intr)
        event_free(intr);
    stop_node(&n);
    return rc;
}

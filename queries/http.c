/*
 * http.c - the HTTP endpoint: GET /health and GET /metrics (Prometheus text
 * exposition format 0.0.4), on libevent's evhttp.
 *
 * Each metric family is written whole (HELP, TYPE, then every sample) so the
 * output passes a strict parser such as promtool. Label values are escaped
 * (backslash, double quote, newline) since group names are user bytes.
 */
#include "queries/server.h"
#include "storage/io.h"
#include "storage/offsets.h"

#include <ctype.h>
#include <errno.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* Decodes standard base64 into out; returns the length or -1. */
static int decode_base64(const char *in, char *out, int size)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int bits = 0, n = 0;
    uint32_t acc = 0;
    for (; *in && *in != '='; in++) {
        const char *at = strchr(alphabet, *in);
        if (!at || !*in)
            return -1;
        acc = acc << 6 | (uint32_t)(at - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= size)
                return -1;
            out[n++] = (char)(acc >> bits);
        }
    }
    return n;
}

static void add_label(struct evbuffer *out, const char *name, const char *value)
{
    evbuffer_add_printf(out, "%s=\"", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            evbuffer_add_printf(out, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
    evbuffer_add(out, "\"", 1);
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One partition-level family: which = 0..5 picks the value. */
typedef struct partition_family {
    struct evbuffer *out;
    const char *name;
    int which;
} partition_family_t;

static int64_t partition_value(sl_partition_t *p, int which)
{
    sl_partition_stats_t st;
    if (which == 4)
        return sl_partition_end_offset(p);
    if (which == 5)
        return sl_partition_start_offset(p);
    sl_partition_get_stats(p, &st);
    int64_t v[4] = {st.records_in, st.bytes_in, st.records_out, st.bytes_out};
    return v[which];
}

static int partition_samples(void *arg, sl_topic_t *t)
{
    partition_family_t *f = arg;
    for (int32_t i = 0; i < sl_topic_config(t)->partitions; i++) {
        char part[16];
        snprintf(part, sizeof part, "%d", i);
        evbuffer_add_printf(f->out, "%s{", f->name);
        add_label(f->out, "topic", sl_topic_name(t));
        evbuffer_add(f->out, ",", 1);
        add_label(f->out, "partition", part);
        evbuffer_add_printf(f->out, "} %lld\n",
                            (long long)partition_value(sl_topic_partition(t, i), f->which));
    }
    return 0;
}

static void partition_families(sl_server_t *s, struct evbuffer *out)
{
    static const char *const names[][3] = {
        {"sluice_partition_records_in_total", "counter", "Records appended."},
        {"sluice_partition_bytes_in_total", "counter", "Bytes of record batches appended."},
        {"sluice_partition_records_out_total", "counter", "Records served to consumers."},
        {"sluice_partition_bytes_out_total", "counter", "Key and value bytes served."},
        {"sluice_partition_end_offset", "gauge", "One past the last durable offset."},
        {"sluice_partition_start_offset", "gauge", "First offset still stored."},
    };
    for (int i = 0; i < 6; i++) {
        partition_family_t f = {out, names[i][0], i};
        family(out, names[i][0], names[i][1], names[i][2]);
        sl_log_foreach_topic(s->log, partition_samples, &f);
    }
}

typedef struct lag_walk {
    sl_server_t *server;
    struct evbuffer *out;
} lag_walk_t;

static int lag_sample(void *arg, const char *group, const char *topic, int32_t partition,
                      int64_t offset)
{
    lag_walk_t *w = arg;
    sl_topic_t *t = sl_log_topic(w->server->log, topic);
    sl_partition_t *p = t ? sl_topic_partition(t, partition) : NULL;
    if (!p)
        return 0;
    char part[16];
    int64_t end = sl_partition_end_offset(p);
    snprintf(part, sizeof part, "%d", partition);
    evbuffer_add(w->out, "sluice_group_lag{", 17);
    add_label(w->out, "group", group);
    evbuffer_add(w->out, ",", 1);
    add_label(w->out, "topic", topic);
    evbuffer_add(w->out, ",", 1);
    add_label(w->out, "partition", part);
    evbuffer_add_printf(w->out, "} %lld\n", (long long)(end > offset ? end - offset : 0));
    return 0;
}

static void command_families(sl_server_t *s, struct evbuffer *out)
{
    family(out, "sluice_commands_total", "counter", "Commands processed, by command.");
    for (int i = 0; sl_command_at(i); i++)
        evbuffer_add_printf(out, "sluice_commands_total{command=\"%s\"} %llu\n",
                            sl_command_at(i)->name, (unsigned long long)s->metrics.calls[i]);
    for (int i = 0, base = sl_builtin_command_count(); i < s->extra_count; i++)
        evbuffer_add_printf(out, "sluice_commands_total{command=\"%s\"} %llu\n", s->extra[i].name,
                            (unsigned long long)s->metrics.calls[base + i]);
    family(out, "sluice_command_errors_total", "counter", "Commands that replied an error.");
    for (int i = 0; sl_command_at(i); i++)
        evbuffer_add_printf(out, "sluice_command_errors_total{command=\"%s\"} %llu\n",
                            sl_command_at(i)->name, (unsigned long long)s->metrics.errors[i]);
    for (int i = 0, base = sl_builtin_command_count(); i < s->extra_count; i++)
        evbuffer_add_printf(out, "sluice_command_errors_total{command=\"%s\"} %llu\n",
                            s->extra[i].name, (unsigned long long)s->metrics.errors[base + i]);
    const sl_latency_t *l = &s->metrics.latency;
    family(out, "sluice_request_latency_seconds", "summary", "Command execution time.");
    static const double quantiles[] = {0.5, 0.9, 0.99, 0.999};
    for (int i = 0; i < 4; i++)
        evbuffer_add_printf(out, "sluice_request_latency_seconds{quantile=\"%g\"} %.6f\n",
                            quantiles[i], sl_latency_quantile(l, quantiles[i]));
    evbuffer_add_printf(out, "sluice_request_latency_seconds_sum %.6f\n", l->sum_seconds);
    evbuffer_add_printf(out, "sluice_request_latency_seconds_count %llu\n",
                        (unsigned long long)l->count);
}

static void server_families(sl_server_t *s, struct evbuffer *out)
{
    family(out, "sluice_connections", "gauge", "Open client connections.");
    evbuffer_add_printf(out, "sluice_connections %d\n", s->conn_count);
    family(out, "sluice_connections_received_total", "counter", "Connections accepted.");
    evbuffer_add_printf(out, "sluice_connections_received_total %llu\n",
                        (unsigned long long)s->total_connections);
    family(out, "sluice_connections_rejected_total", "counter", "Connections over the limit.");
    evbuffer_add_printf(out, "sluice_connections_rejected_total %llu\n",
                        (unsigned long long)s->metrics.rejected_connections);
    family(out, "sluice_protocol_errors_total", "counter", "Malformed requests.");
    evbuffer_add_printf(out, "sluice_protocol_errors_total %llu\n",
                        (unsigned long long)s->metrics.protocol_errors);
    family(out, "sluice_unknown_commands_total", "counter", "Requests naming no command.");
    evbuffer_add_printf(out, "sluice_unknown_commands_total %llu\n",
                        (unsigned long long)s->metrics.unknown_commands);
    family(out, "sluice_fsyncs_total", "counter", "Data syncs issued by the log.");
    evbuffer_add_printf(out, "sluice_fsyncs_total %llu\n", sl_io_sync_count());
}

/* With --requirepass, /metrics needs `Authorization: Bearer PASS` or Basic
 * auth with password PASS (any user), as Prometheus scrapers can send. */
static int authorized(sl_server_t *s, struct evhttp_request *req)
{
    const char *pass = s->options.requirepass;
    if (!pass)
        return 1;
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!auth)
        return 0;
    if (!strncmp(auth, "Bearer ", 7))
        return !strcmp(auth + 7, pass);
    if (strncmp(auth, "Basic ", 6))
        return 0;
    char decoded[512];
    int n = decode_base64(auth + 6, decoded, sizeof decoded - 1);
    if (n < 0)
        return 0;
    decoded[n] = 0;
    const char *colon = strchr(decoded, ':');
    return colon && !strcmp(colon + 1, pass);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    sl_server_t *s = arg;
    if (!authorized(s, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Basic realm=\"sluice\"");
        return evhttp_send_error(req, 401, "Unauthorized");
    }
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return evhttp_send_error(req, 500, "out of memory");
    server_families(s, out);
    command_families(s, out);
    partition_families(s, out);
    family(out, "sluice_group_lag", "gauge", "Records after the group's committed offset.");
    lag_walk_t w = {s, out};
    sl_offsets_foreach(s->state, NULL, NULL, lag_sample, &w);
    sl_qstage_metrics(s, out);
    if (s->extra_metrics)
        s->extra_metrics(s->extra_metrics_arg, out);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void on_health(struct evhttp_request *req, void *arg)
{
    struct evbuffer *out = evbuffer_new();
    (void)arg;
    if (!out)
        return evhttp_send_error(req, 500, "out of memory");
    evbuffer_add_printf(out, "ok\n");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

void sl_server_set_metrics(sl_server_t *s, sl_metrics_fn fn, void *arg)
{
    s->extra_metrics = fn;
    s->extra_metrics_arg = arg;
}

int sl_http_start(sl_server_t *s)
{
    s->http = evhttp_new(s->base);
    if (!s->http)
        return -ENOMEM;
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_cb(s->http, "/metrics", on_metrics, s);
    evhttp_set_cb(s->http, "/health", on_health, s);
    struct evhttp_bound_socket *sock =
        evhttp_bind_socket_with_handle(s->http, s->bind, (uint16_t)s->options.http_port);
    if (!sock)
        return sl_error_set(-EADDRINUSE, "cannot listen for HTTP on %s:%d", s->bind,
                            s->options.http_port);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(sock);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
        s->http_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

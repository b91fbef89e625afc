/*
 * commands.c - the command table, argument helpers, and the connection-level
 * commands: PING, ECHO, HELLO, AUTH, QUIT, INFO, COMMAND, CONFIG, CLIENT.
 */
#include "queries/server.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SLUICE_VERSION "0.1.0"

int sl_request_error(sl_request_t *req, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    sl_reply_error(&req->reply, "%s", text);
    req->failed = 1;
    return SL_DONE;
}

int sl_arg_is(const sl_resp_arg_t *a, const char *word)
{
    size_t n = strlen(word);
    return a->len == n && !strncasecmp(a->data, word, n);
}

int sl_arg_int(const sl_resp_arg_t *a, int64_t min, int64_t max, int64_t *out)
{
    char text[32];
    if (a->len == 0 || a->len >= sizeof text)
        return -1;
    memcpy(text, a->data, a->len);
    text[a->len] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || *end || isspace((unsigned char)text[0]) || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int sl_arg_name(const sl_resp_arg_t *a, char *out, size_t size)
{
    if (a->len >= size || memchr(a->data, 0, a->len))
        return -1;
    memcpy(out, a->data, a->len);
    out[a->len] = 0;
    return 0;
}

/* PING [message] */
static int cmd_ping(sl_request_t *req)
{
    if (req->argc > 2)
        return sl_request_error(req, "wrong number of arguments for 'ping' command");
    if (req->argc == 2)
        sl_reply_bulk(&req->reply, req->argv[1].data, req->argv[1].len);
    else
        sl_reply_simple(&req->reply, "PONG");
    return SL_DONE;
}

/* ECHO message */
static int cmd_echo(sl_request_t *req)
{
    sl_reply_bulk(&req->reply, req->argv[1].data, req->argv[1].len);
    return SL_DONE;
}

static int check_password(sl_request_t *req, const sl_resp_arg_t *pass)
{
    const char *want = req->server->options.requirepass;
    if (!want)
        return sl_request_error(req, "AUTH called without any password configured");
    if (pass->len != strlen(want) || memcmp(pass->data, want, pass->len))
        return sl_request_error(req, "WRONGPASS invalid username-password pair");
    req->conn->authenticated = 1;
    return -1;
}

/* AUTH password | AUTH default password */
static int cmd_auth(sl_request_t *req)
{
    if (req->argc > 3)
        return sl_request_error(req, "wrong number of arguments for 'auth' command");
    if (req->argc == 3 && !sl_arg_is(&req->argv[1], "default"))
        return sl_request_error(req, "WRONGPASS invalid username-password pair");
    if (check_password(req, &req->argv[req->argc - 1]) == SL_DONE)
        return SL_DONE;
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

static void reply_hello(sl_request_t *req)
{
    sl_reply_map(&req->reply, 7);
    sl_reply_cstr(&req->reply, "server");
    sl_reply_cstr(&req->reply, "sluice");
    sl_reply_cstr(&req->reply, "version");
    sl_reply_cstr(&req->reply, SLUICE_VERSION);
    sl_reply_cstr(&req->reply, "proto");
    sl_reply_int(&req->reply, req->conn->resp3 ? 3 : 2);
    sl_reply_cstr(&req->reply, "id");
    sl_reply_int(&req->reply, (int64_t)req->conn->id);
    sl_reply_cstr(&req->reply, "mode");
    sl_reply_cstr(&req->reply, "standalone");
    sl_reply_cstr(&req->reply, "role");
    sl_reply_cstr(&req->reply, "master");
    sl_reply_cstr(&req->reply, "modules");
    sl_reply_array(&req->reply, 0);
}

/* HELLO [protover [AUTH username password] [SETNAME name]] */
static int cmd_hello(sl_request_t *req)
{
    int64_t proto = req->conn->resp3 ? 3 : 2;
    if (req->argc >= 2 && (sl_arg_int(&req->argv[1], 0, 100, &proto) || proto < 2 || proto > 3))
        return sl_request_error(req, "NOPROTO unsupported protocol version");
    for (size_t i = 2; i < req->argc; i++) {
        if (sl_arg_is(&req->argv[i], "AUTH") && i + 2 < req->argc) {
            if (check_password(req, &req->argv[i + 2]) == SL_DONE)
                return SL_DONE;
            i += 2;
        } else if (sl_arg_is(&req->argv[i], "SETNAME") && i + 1 < req->argc) {
            sl_arg_name(&req->argv[++i], req->conn->name, sizeof req->conn->name);
        } else {
            return sl_request_error(req, "syntax error in HELLO option");
        }
    }
    if (req->server->options.requirepass && !req->conn->authenticated)
        return sl_request_error(req, "NOAUTH HELLO must be called with the client already "
                                     "authenticated, otherwise the HELLO AUTH option can be used");
    req->conn->resp3 = proto == 3;
    req->reply.resp3 = req->conn->resp3;
    reply_hello(req);
    return SL_DONE;
}

/* QUIT */
static int cmd_quit(sl_request_t *req)
{
    sl_reply_simple(&req->reply, "OK");
    return SL_CLOSE;
}

static long resident_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f && fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    if (f)
        fclose(f);
    return resident * 4096;
}

static int count_topic(void *arg, sl_topic_t *t)
{
    (void)t;
    (*(int *)arg)++;
    return 0;
}

/* INFO [section] */
static int cmd_info(sl_request_t *req)
{
    sl_server_t *s = req->server;
    int topics = 0;
    char text[2048];
    sl_log_foreach_topic(s->log, count_topic, &topics);
    uint64_t commands = 0;
    for (int i = 0; i < SL_METRIC_COMMANDS; i++)
        commands += s->metrics.calls[i];
    int n =
        snprintf(text, sizeof text,
                 "# Server\r\nsluice_version:%s\r\nredis_version:7.0.0\r\nprocess_id:%d\r\n"
                 "tcp_port:%d\r\nhttp_port:%d\r\nuptime_in_seconds:%lld\r\n\r\n"
                 "# Clients\r\nconnected_clients:%d\r\nmaxclients:%d\r\n\r\n"
                 "# Memory\r\nused_memory_rss:%ld\r\n\r\n"
                 "# Stats\r\ntotal_connections_received:%llu\r\n"
                 "total_commands_processed:%llu\r\nrejected_connections:%llu\r\n"
                 "protocol_errors:%llu\r\n\r\n"
                 "# Topics\r\ntopics:%d\r\n",
                 SLUICE_VERSION, (int)getpid(), s->port, s->http_port,
                 (long long)((sl_now_ms() - s->started_ms) / 1000), s->conn_count,
                 s->options.max_clients, resident_bytes(), (unsigned long long)s->total_connections,
                 (unsigned long long)commands, (unsigned long long)s->metrics.rejected_connections,
                 (unsigned long long)s->metrics.protocol_errors, topics);
    sl_reply_bulk(&req->reply, text, (size_t)n);
    return SL_DONE;
}

/* COMMAND [COUNT | DOCS [name...] | INFO [name...] | LIST] - enough for
 * redis-cli's start-up probe; sluice's commands are in docs/commands.md. */
static int cmd_command(sl_request_t *req)
{
    int count = 0;
    while (sl_command_at(count))
        count++;
    if (req->argc >= 2 && sl_arg_is(&req->argv[1], "COUNT")) {
        sl_reply_int(&req->reply, count);
    } else if (req->argc >= 2 && sl_arg_is(&req->argv[1], "LIST")) {
        sl_reply_array(&req->reply, (size_t)count);
        for (int i = 0; i < count; i++)
            sl_reply_cstr(&req->reply, sl_command_at(i)->name);
    } else if (req->argc >= 2 && sl_arg_is(&req->argv[1], "DOCS")) {
        sl_reply_map(&req->reply, 0);
    } else {
        sl_reply_array(&req->reply, 0);
    }
    return SL_DONE;
}

/* CONFIG GET pattern: no Redis settings here, so an empty result (what
 * redis-benchmark probes for); CONFIG SET is refused. */
static int cmd_config(sl_request_t *req)
{
    if (!sl_arg_is(&req->argv[1], "GET"))
        return sl_request_error(req,
                                "CONFIG %s is not supported; settings are command-line "
                                "options of sluice serve",
                                req->argv[1].len < 16 ? "SET" : "subcommand");
    sl_reply_array(&req->reply, 0);
    return SL_DONE;
}

/* CLIENT SETNAME name | GETNAME | ID */
static int cmd_client(sl_request_t *req)
{
    sl_conn_t *c = req->conn;
    if (sl_arg_is(&req->argv[1], "ID") && req->argc == 2) {
        sl_reply_int(&req->reply, (int64_t)c->id);
    } else if (sl_arg_is(&req->argv[1], "GETNAME") && req->argc == 2) {
        if (c->name[0])
            sl_reply_cstr(&req->reply, c->name);
        else
            sl_reply_null(&req->reply);
    } else if (sl_arg_is(&req->argv[1], "SETNAME") && req->argc == 3) {
        if (sl_arg_name(&req->argv[2], c->name, sizeof c->name) ||
            memchr(c->name, ' ', strlen(c->name)))
            return sl_request_error(req, "client name must be under 64 bytes without spaces");
        sl_reply_simple(&req->reply, "OK");
    } else {
        return sl_request_error(req, "CLIENT supports ID, GETNAME and SETNAME");
    }
    return SL_DONE;
}

static const sl_command_t commands[] = {
    {"PING", -1, cmd_ping, 0, 0},
    {"ECHO", 2, cmd_echo, 0, 1},
    {"HELLO", -1, cmd_hello, 1, 2},
    {"AUTH", -2, cmd_auth, 1, 3},
    {"QUIT", 1, cmd_quit, 1, 4},
    {"INFO", -1, cmd_info, 0, 5},
    {"COMMAND", -1, cmd_command, 0, 6},
    {"CONFIG", -2, cmd_config, 0, 7},
    {"CLIENT", -2, cmd_client, 0, 8},
    {"TOPIC", -2, sl_cmd_topic, 0, 9},
    {"PRODUCE", -4, sl_cmd_produce, 0, 10},
    {"PRODUCEBATCH", -4, sl_cmd_producebatch, 0, 11},
    {"FETCH", -4, sl_cmd_fetch, 0, 12},
    {"GROUP", -2, sl_cmd_group, 0, 13},
    {"SEEK", 5, sl_cmd_seek, 0, 14},
    {"EXCHANGE", -2, sl_cmd_exchange, 0, 15},
    {"QUEUE", -2, sl_cmd_queue, 0, 16},
    {"BIND", -4, sl_cmd_bind, 0, 17},
    {"UNBIND", -4, sl_cmd_bind, 0, 18},
    {"QPUBLISH", -4, sl_cmd_qpublish, 0, 19},
    {"QPOP", -2, sl_cmd_qpop, 0, 20},
    {"ACK", -3, sl_cmd_ack, 0, 21},
    {"NACK", -3, sl_cmd_ack, 0, 22},
    {"GET", 3, sl_cmd_get, 0, 23},
    {"WINDOWS", 5, sl_cmd_windows, 0, 24},
    {"SCAN", -3, sl_cmd_scan, 0, 25},
    {"FEATURES", -3, sl_cmd_features, 0, 26},
    {"MFEATURES", -3, sl_cmd_mfeatures, 0, 27},
    {"FEATURES.SCHEMA", 2, sl_cmd_features_schema, 0, 28},
};

int sl_builtin_command_count(void)
{
    return (int)(sizeof commands / sizeof *commands);
}

const sl_command_t *sl_command_at(int i)
{
    return i >= 0 && i < (int)(sizeof commands / sizeof *commands) ? &commands[i] : NULL;
}

const sl_command_t *sl_command_find(const sl_resp_arg_t *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (sl_arg_is(name, commands[i].name))
            return &commands[i];
    return NULL;
}

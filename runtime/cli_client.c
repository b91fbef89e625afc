/*
 * cli_client.c - what the client commands share: the --host/--port/
 * --password options, connecting and logging in, running a command and
 * reporting its failure, and checking the shape of replies.
 *
 * Failures are reported here, once, as one line on stderr, so that a command
 * can simply `return 1` when a helper returns NULL or -1.
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

#define CONNECT_TIMEOUT_SECONDS 10

void cli_server_init(cli_server_t *s)
{
    *s = (cli_server_t){"127.0.0.1", 6380, NULL};
}

int cli_server_option(cli_server_t *s, int opt, const char *value)
{
    int64_t port;
    if (opt == CLI_OPT_HOST)
        s->host = value;
    else if (opt == CLI_OPT_PASSWORD)
        s->password = value;
    else if (opt != CLI_OPT_PORT)
        return 0;
    else if (cli_parse_int(value, &port) || port < 1 || port > 65535)
        return -1;
    else
        s->port = (int)port;
    return 1;
}

int cli_usage_error(const char *command, const char *what, const char *message)
{
    fprintf(stderr, "sluice: %s: %s; see `sluice %s --help`\n", what, message, command);
    return 2;
}

int cli_option_error(const char *command, const char *what, int opt, char **argv)
{
    char message[256];
    const char *arg = argv[optind - 1];
    if (opt == ':')
        snprintf(message, sizeof message, "option '%s' needs a value", arg);
    else
        snprintf(message, sizeof message, "unknown option '%s'", arg);
    return cli_usage_error(command, what, message);
}

static int authenticate(redisContext *c, const char *password)
{
    const char *argv[] = {"AUTH", password};
    redisReply *r = redisCommandArgv(c, 2, argv, NULL);
    if (!r)
        return fprintf(stderr, "sluice: authentication failed: %s\n", c->errstr), -1;
    int failed = r->type == REDIS_REPLY_ERROR;
    if (failed)
        fprintf(stderr, "sluice: authentication failed: %s\n", r->str);
    freeReplyObject(r);
    return failed ? -1 : 0;
}

struct redisContext *cli_connect(const cli_server_t *s)
{
    struct timeval timeout = {CONNECT_TIMEOUT_SECONDS, 0};
    redisContext *c = redisConnectWithTimeout(s->host, s->port, timeout);
    if (!c) {
        fprintf(stderr, "sluice: cannot connect to %s:%d: out of memory\n", s->host, s->port);
        return NULL;
    }
    if (c->err) {
        fprintf(stderr, "sluice: cannot connect to %s:%d: %s\n", s->host, s->port, c->errstr);
        redisFree(c);
        return NULL;
    }
    if (s->password && authenticate(c, s->password)) {
        redisFree(c);
        return NULL;
    }
    return c;
}

struct redisReply *cli_next_reply(struct redisContext *c, const char *what)
{
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK) {
        fprintf(stderr, "sluice: %s: connection to the node failed: %s\n", what,
                c->errstr[0] ? c->errstr : "closed");
        return NULL;
    }
    return reply;
}

struct redisReply *cli_run(struct redisContext *c, const char *what, int argc,
                           const char *const *argv, const size_t *lens)
{
    /* hiredis only reads argv; its prototype just lacks the inner const */
    if (redisAppendCommandArgv(c, argc, (const char **)argv, lens) != REDIS_OK) {
        fprintf(stderr, "sluice: %s: %s\n", what, c->errstr);
        return NULL;
    }
    redisReply *r = cli_next_reply(c, what);
    if (r && r->type == REDIS_REPLY_ERROR) {
        cli_reply_error(what, r);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

int cli_reply_error(const char *what, const struct redisReply *r)
{
    fprintf(stderr, "sluice: %s: %.*s\n", what, (int)r->len, r->str);
    return 1;
}

int cli_unexpected_reply(const char *what)
{
    fprintf(stderr, "sluice: %s: unexpected reply from the node (is it a sluice node?)\n", what);
    return 1;
}

int cli_reply_is_array(const struct redisReply *r, size_t n)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements >= n;
}

int cli_reply_int(const struct redisReply *r, size_t i, long long *out)
{
    if (!cli_reply_is_array(r, i + 1) || r->element[i]->type != REDIS_REPLY_INTEGER)
        return -1;
    *out = r->element[i]->integer;
    return 0;
}

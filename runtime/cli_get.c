/*
 * cli_get.c - `sluice get STORE KEY`: a key's state from the command line
 * (docs/cli.md).
 *
 * A kv store (running totals) answers with GET: one line, the value's JSON,
 * or null. A window store answers with WINDOWS over every start (or the
 * --from/--to range): one line per window, "start end json" (end "-" when
 * the node does not know it). The store kind is found by asking: GET on a
 * window store replies -WRONGTYPE, and then WINDOWS is asked instead.
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char get_usage[] =
    "usage: sluice get STORE KEY [options]\n"
    "\n"
    "Prints KEY's state in STORE (named <pipeline>.<store>, see SCAN in\n"
    "docs/commands.md): for a store of running totals one line, the value as\n"
    "JSON or null; for a window store one line per window, \"start end value\"\n"
    "(ms since the epoch), oldest first.\n"
    "\n"
    "  --from MS         window stores: the earliest window start (default: all)\n"
    "  --to MS           window stores: the latest window start (default: all)\n" CLI_SERVER_USAGE;

typedef struct get {
    cli_server_t server;
    const char *store, *key, *from, *to;
} get_t;

static int parse_get(int argc, char **argv, get_t *g)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"from", required_argument, NULL, 'f'},
        {"to", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&g->server, c, optarg);
        if (c == 'h')
            return fputs(get_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("get", "get", c, argv);
        if (server < 0)
            return cli_usage_error("get", "get", "--port needs a number from 1 to 65535");
        int64_t t;
        if ((c == 'f' || c == 't') && cli_parse_time(optarg, strlen(optarg), &t))
            return cli_usage_error(
                "get", "get", c == 'f' ? "--from needs a time in ms" : "--to needs a time in ms");
        if (c == 'f')
            g->from = optarg;
        if (c == 't')
            g->to = optarg;
    }
    if (argc - optind != 2)
        return cli_usage_error("get", "get",
                               argc - optind < 2 ? "which store and key?" : "too many arguments");
    g->store = argv[optind];
    g->key = argv[optind + 1];
    return 0;
}

static int print_windows(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return cli_unexpected_reply("get");
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *w = r->element[i];
        const redisReply *value =
            w->type == REDIS_REPLY_ARRAY && w->elements ? w->element[w->elements - 1] : NULL;
        if (!value || value->type != REDIS_REPLY_STRING ||
            w->element[0]->type != REDIS_REPLY_INTEGER)
            return cli_unexpected_reply("get");
        if (w->elements == 3 && w->element[1]->type == REDIS_REPLY_INTEGER)
            printf("%lld %lld %.*s\n", w->element[0]->integer, w->element[1]->integer,
                   (int)value->len, value->str);
        else
            printf("%lld - %.*s\n", w->element[0]->integer, (int)value->len, value->str);
    }
    return 0;
}

/* GET: 0 printed, 1 failed (printed), 2 a window store. */
static int get_value(redisContext *c, const get_t *g)
{
    const char *args[] = {"GET", g->store, g->key};
    redisReply *r;
    if (redisAppendCommandArgv(c, 3, args, NULL) != REDIS_OK)
        return fprintf(stderr, "sluice: get: %s\n", c->errstr), 1;
    if (!(r = cli_next_reply(c, "get")))
        return 1;
    int rc = 0;
    if (r->type == REDIS_REPLY_NIL)
        puts("null");
    else if (r->type == REDIS_REPLY_STRING)
        printf("%.*s\n", (int)r->len, r->str);
    else if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "WRONGTYPE", 9))
        rc = 2;
    else if (r->type == REDIS_REPLY_ERROR)
        rc = cli_reply_error("get", r);
    else
        rc = cli_unexpected_reply("get");
    freeReplyObject(r);
    return rc;
}

int cli_get(int argc, char **argv)
{
    get_t g = {0};
    cli_server_init(&g.server);
    int rc = parse_get(argc, argv, &g);
    if (rc)
        return rc == 1 ? 0 : rc;
    redisContext *c = cli_connect(&g.server);
    if (!c)
        return 1;
    rc = g.from || g.to ? 2 : get_value(c, &g);
    if (rc == 2) {
        const char *args[] = {"WINDOWS", g.store, g.key, g.from ? g.from : "-9223372036854775807",
                              g.to ? g.to : "9223372036854775807"};
        redisReply *r = cli_run(c, "get", 5, args, NULL);
        rc = r ? print_windows(r) : 1;
        if (r)
            freeReplyObject(r);
    }
    redisFree(c);
    return rc;
}

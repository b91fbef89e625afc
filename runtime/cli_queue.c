/*
 * cli_queue.c - `sluice queue`: work queues on a running node through
 * EXCHANGE, QUEUE, BIND, QPUBLISH, QPOP and ACK (the worker that runs a
 * command per message is cli_worker.c).
 *
 * Every action builds one command (or, for `publish` from stdin, a
 * pipelined series of them) as an argument vector, so payloads and keys
 * are sent as they are, binary-safe.
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char queue_usage[] =
    "usage: sluice queue <action> [options]\n"
    "\n"
    "  declare QUEUE [--max-priority N] [--ttl MS] [--max-length N]\n"
    "                [--overflow drop-head|reject-publish] [--max-deliveries N]\n"
    "                [--dead-letter QUEUE] [--lease MS]\n"
    "                    declare a queue (again with the same options: no-op)\n"
    "  exchange NAME direct|topic|fanout|headers\n"
    "                    declare an exchange\n"
    "  bind EXCHANGE QUEUE [PATTERN] [--type TYPE] [--arg NAME=VALUE]...\n"
    "                    route messages matching PATTERN to QUEUE; --type declares\n"
    "                    the exchange first; --arg for headers exchanges\n"
    "                    (x-match=all|any and the headers to match)\n"
    "  publish EXCHANGE ROUTING-KEY [PAYLOAD] [--priority N] [--header NAME=VALUE]...\n"
    "                [--ttl MS] [--mandatory]\n"
    "                    publish PAYLOAD, or each line of stdin as a message, and\n"
    "                    wait until it is durable; EXCHANGE \"\" routes to the queue\n"
    "                    named ROUTING-KEY\n"
    "  pop QUEUE [-n N] [--block MS] [--lease MS] [--no-ack] [--verbose]\n"
    "                    print up to N ready messages (payload per line; --verbose:\n"
    "                    TAG DELIVERIES PRIORITY PAYLOAD) and acknowledge them\n"
    "                    (--no-ack: they go back to the queue when this exits)\n"
    "  stats [QUEUE]     a queue's numbers, or a table of every queue\n"
    "  delete QUEUE      delete a queue and its messages\n"
    "\n" CLI_SERVER_USAGE;

#define MAX_WORDS 512

/* One command being built. */
typedef struct words {
    const char *argv[MAX_WORDS];
    size_t lens[MAX_WORDS];
    int argc;
} words_t;

static void word(words_t *w, const char *text, size_t len)
{
    if (w->argc < MAX_WORDS) {
        w->argv[w->argc] = text;
        w->lens[w->argc++] = len;
    }
}

static void text(words_t *w, const char *s)
{
    word(w, s, strlen(s));
}

/* `NAME=VALUE` as two words; -1 without '='. */
static int pair(words_t *w, const char *keyword, char *value)
{
    char *eq = strchr(value, '=');
    if (!eq || eq == value)
        return -1;
    text(w, keyword);
    word(w, value, (size_t)(eq - value));
    text(w, eq + 1);
    return 0;
}

typedef struct queue_args {
    cli_server_t server;
    const char *action, *what; /* "declare", "queue declare" */
    words_t command;           /* the options, as command words */
    const char *type;          /* bind --type */
    int64_t count, block_ms, lease_ms;
    int no_ack, verbose;
    char **positional;
    int positional_count;
} queue_args_t;

/* Maps an option to its command keyword for the actions that take it. */
static int option_word(queue_args_t *a, int opt, char *value)
{
    static const struct {
        int opt;
        const char *action, *keyword;
    } map[] = {
        {'P', "declare", "MAXPRIORITY"},   {'t', "declare", "TTL"},
        {'L', "declare", "MAXLEN"},        {'o', "declare", "OVERFLOW"},
        {'D', "declare", "MAXDELIVERIES"}, {'d', "declare", "DEADLETTER"},
        {'l', "declare", "LEASE"},         {'p', "publish", "PRIORITY"},
        {'t', "publish", "TTL"},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (map[i].opt == opt && !strcmp(map[i].action, a->action)) {
            text(&a->command, map[i].keyword);
            text(&a->command, value);
            return 0;
        }
    if (opt == 'H' && !strcmp(a->action, "publish"))
        return pair(&a->command, "HEADER", value) ? 2 : 0;
    if (opt == 'a' && !strcmp(a->action, "bind"))
        return pair(&a->command, "ARG", value) ? 2 : 0;
    if (opt == 'm' && !strcmp(a->action, "publish"))
        return text(&a->command, "MANDATORY"), 0;
    return 1;
}

/* Options of pop and bind kept aside. */
static int own_option(queue_args_t *a, int opt, const char *value)
{
    int64_t *number = opt == 'n' ? &a->count : opt == 'b' ? &a->block_ms : NULL;
    if (!strcmp(a->action, "pop") && opt == 'l')
        number = &a->lease_ms;
    if (number)
        return strcmp(a->action, "pop") || cli_parse_int(value, number) ? 1 : 0;
    if (opt == 'N' || opt == 'v') {
        a->no_ack |= opt == 'N';
        a->verbose |= opt == 'v';
        return strcmp(a->action, "pop") ? 1 : 0;
    }
    if (opt == 'T' && !strcmp(a->action, "bind"))
        return a->type = value, 0;
    return 1;
}

static int parse_queue(int argc, char **argv, queue_args_t *a)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"max-priority", required_argument, NULL, 'P'},
        {"ttl", required_argument, NULL, 't'},
        {"max-length", required_argument, NULL, 'L'},
        {"overflow", required_argument, NULL, 'o'},
        {"max-deliveries", required_argument, NULL, 'D'},
        {"dead-letter", required_argument, NULL, 'd'},
        {"lease", required_argument, NULL, 'l'},
        {"priority", required_argument, NULL, 'p'},
        {"header", required_argument, NULL, 'H'},
        {"mandatory", no_argument, NULL, 'm'},
        {"arg", required_argument, NULL, 'a'},
        {"type", required_argument, NULL, 'T'},
        {"block", required_argument, NULL, 'b'},
        {"no-ack", no_argument, NULL, 'N'},
        {"verbose", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":n:", options, NULL)) != -1) {
        int server = cli_server_option(&a->server, c, optarg);
        if (c == 'h')
            return fputs(queue_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("queue", a->what, c, argv);
        if (server < 0)
            return cli_usage_error("queue", a->what, "--port needs a number from 1 to 65535");
        int rc = server ? 0 : option_word(a, c, optarg);
        if (rc == 1)
            rc = own_option(a, c, optarg) ? 3 : 0;
        if (rc == 2)
            return cli_usage_error("queue", a->what, "--header and --arg need NAME=VALUE");
        if (rc == 3)
            return cli_usage_error("queue", a->what,
                                   "that option does not go with this action "
                                   "(or needs a non-negative number)");
    }
    a->positional = argv + optind;
    a->positional_count = argc - optind;
    return 0;
}

/* ---- actions -------------------------------------------------------------- */

/* Runs argv as one command; prints `done` (a format for the first
 * positional argument) when it worked. */
static int run_simple(redisContext *c, const queue_args_t *a, const words_t *w, const char *done)
{
    redisReply *r = cli_run(c, a->what, w->argc, w->argv, w->lens);
    if (!r)
        return 1;
    freeReplyObject(r);
    if (done)
        printf(done, a->positional[0]);
    return 0;
}

/* QUEUE DECLARE name [options] */
static int declare(redisContext *c, const queue_args_t *a)
{
    words_t w = {.argc = 0};
    text(&w, "QUEUE");
    text(&w, "DECLARE");
    text(&w, a->positional[0]);
    for (int i = 0; i < a->command.argc; i++)
        word(&w, a->command.argv[i], a->command.lens[i]);
    return run_simple(c, a, &w, "declared queue %s\n");
}

/* EXCHANGE DECLARE name type */
static int exchange(redisContext *c, const queue_args_t *a, const char *name, const char *type)
{
    words_t w = {.argc = 0};
    text(&w, "EXCHANGE");
    text(&w, "DECLARE");
    text(&w, name);
    text(&w, type);
    return run_simple(c, a, &w, NULL);
}

/* BIND exchange queue pattern [ARG name value]... */
static int bind(redisContext *c, const queue_args_t *a)
{
    words_t w = {.argc = 0};
    if (a->type && exchange(c, a, a->positional[0], a->type))
        return 1;
    text(&w, "BIND");
    text(&w, a->positional[0]);
    text(&w, a->positional[1]);
    text(&w, a->positional_count > 2 ? a->positional[2] : "");
    for (int i = 0; i < a->command.argc; i++)
        word(&w, a->command.argv[i], a->command.lens[i]);
    if (run_simple(c, a, &w, NULL))
        return 1;
    printf("bound %s to %s\n", a->positional[1], a->positional[0]);
    return 0;
}

/* The publish command for payload[0..len). */
static void publish_words(const queue_args_t *a, const char *payload, size_t len, words_t *w)
{
    w->argc = 0;
    text(w, "QPUBLISH");
    text(w, a->positional[0]);
    text(w, a->positional[1]);
    word(w, payload, len);
    for (int i = 0; i < a->command.argc; i++)
        word(w, a->command.argv[i], a->command.lens[i]);
}

static int publish_one(redisContext *c, const queue_args_t *a)
{
    words_t w;
    publish_words(a, a->positional[2], strlen(a->positional[2]), &w);
    redisReply *r = cli_run(c, a->what, w.argc, w.argv, w.lens);
    if (!r)
        return 1;
    if (r->type == REDIS_REPLY_INTEGER)
        printf("stored in %lld queue%s\n", r->integer, r->integer == 1 ? "" : "s");
    freeReplyObject(r);
    return 0;
}

#define WINDOW 256 /* publishes in flight from stdin */

/* Reads the replies of n pipelined publishes; counts the stored ones. */
static int read_confirms(redisContext *c, const queue_args_t *a, int n, long long *stored)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        redisReply *r = cli_next_reply(c, a->what);
        if (!r)
            return 1;
        if (r->type == REDIS_REPLY_ERROR && rc == 0)
            rc = cli_reply_error(a->what, r);
        *stored += r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
    }
    return rc;
}

/* Each line of stdin is a message; up to WINDOW publishes in flight. */
static int publish_lines(redisContext *c, const queue_args_t *a)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long sent = 0, stored = 0;
    int in_flight = 0, rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, stdin)) >= 0) {
        words_t w;
        len -= len > 0 && line[len - 1] == '\n';
        publish_words(a, line, (size_t)len, &w);
        if (redisAppendCommandArgv(c, w.argc, w.argv, w.lens) != REDIS_OK)
            return free(line), fprintf(stderr, "sluice: %s: %s\n", a->what, c->errstr), 1;
        sent++;
        if (++in_flight == WINDOW) {
            rc = read_confirms(c, a, in_flight, &stored);
            in_flight = 0;
        }
    }
    free(line);
    if (rc == 0)
        rc = read_confirms(c, a, in_flight, &stored);
    fprintf(stderr, "published %lld message%s (%lld stored in a queue)\n", sent,
            sent == 1 ? "" : "s", stored);
    return rc;
}

/* Writes bytes, showing tab and newline as \t and \n. */
static void print_escaped(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\t' || s[i] == '\n')
            fputs(s[i] == '\n' ? "\\n" : "\\t", stdout);
        else
            putchar(s[i]);
    }
}

static void print_delivery(const queue_args_t *a, const redisReply *d)
{
    const redisReply *payload = d->element[1];
    if (a->verbose) {
        printf("%lld\t%lld\t%lld\t", d->element[0]->integer, d->element[2]->integer,
               d->element[3]->integer);
        print_escaped(payload->str, payload->len);
    } else {
        fwrite(payload->str, 1, payload->len, stdout);
    }
    putchar('\n');
}

/* Whether r is a QPOP reply: [[tag, payload, count, priority, headers]...] */
static int is_deliveries(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *d = r->element[i];
        if (!cli_reply_is_array(d, 5) || d->element[0]->type != REDIS_REPLY_INTEGER ||
            d->element[1]->type != REDIS_REPLY_STRING)
            return 0;
    }
    return 1;
}

#define ACK_CHUNK 500

/* ACK queue tag... for deliveries [from, to) of r. */
static int ack_some(redisContext *c, const queue_args_t *a, const redisReply *r, size_t from,
                    size_t to)
{
    words_t w = {.argc = 0};
    char tags[ACK_CHUNK][24];
    text(&w, "ACK");
    text(&w, a->positional[0]);
    for (size_t i = from; i < to; i++) {
        snprintf(tags[i - from], sizeof tags[i - from], "%lld", r->element[i]->element[0]->integer);
        text(&w, tags[i - from]);
    }
    return run_simple(c, a, &w, NULL);
}

/* ACK every delivery in r, ACK_CHUNK tags per command. */
static int ack_all(redisContext *c, const queue_args_t *a, const redisReply *r)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->elements; i += ACK_CHUNK)
        rc = ack_some(c, a, r, i, i + ACK_CHUNK < r->elements ? i + ACK_CHUNK : r->elements);
    return rc;
}

/* QPOP queue COUNT n [BLOCK ms] [LEASE ms], print, ACK. */
static int pop(redisContext *c, const queue_args_t *a)
{
    char count[24], block[24], lease[24];
    words_t w = {.argc = 0};
    text(&w, "QPOP");
    text(&w, a->positional[0]);
    snprintf(count, sizeof count, "%lld", (long long)(a->count > 0 ? a->count : 1));
    text(&w, "COUNT");
    text(&w, count);
    if (a->block_ms >= 0) {
        snprintf(block, sizeof block, "%lld", (long long)a->block_ms);
        text(&w, "BLOCK");
        text(&w, block);
    }
    if (a->lease_ms > 0) {
        snprintf(lease, sizeof lease, "%lld", (long long)a->lease_ms);
        text(&w, "LEASE");
        text(&w, lease);
    }
    redisReply *r = cli_run(c, a->what, w.argc, w.argv, w.lens);
    if (!r)
        return 1;
    int rc = is_deliveries(r) ? 0 : cli_unexpected_reply(a->what);
    for (size_t i = 0; rc == 0 && i < r->elements; i++)
        print_delivery(a, r->element[i]);
    if (rc == 0 && fflush(stdout)) {
        fprintf(stderr, "sluice: %s: cannot write the output\n", a->what);
        rc = 1;
    }
    if (rc == 0 && r->elements && !a->no_ack) /* printed first: at-least-once */
        rc = ack_all(c, a, r);
    freeReplyObject(r);
    return rc;
}

/* QUEUE STATS name -> name value lines */
static int stats_one(redisContext *c, const queue_args_t *a, const char *queue)
{
    const char *argv[] = {"QUEUE", "STATS", queue};
    redisReply *r = cli_run(c, a->what, 3, argv, NULL);
    if (!r)
        return 1;
    int rc = r->type == REDIS_REPLY_ARRAY ? 0 : cli_unexpected_reply(a->what);
    for (size_t i = 0; rc == 0 && i + 1 < r->elements; i += 2) {
        const redisReply *v = r->element[i + 1];
        if (v->type == REDIS_REPLY_INTEGER)
            printf("%s %lld\n", r->element[i]->str, v->integer);
        else
            printf("%s %.*s\n", r->element[i]->str, (int)v->len, v->str);
    }
    freeReplyObject(r);
    return rc;
}

/* Element name of a QUEUE STATS reply, as an integer (0 if absent). */
static long long stat_of(const redisReply *r, const char *name)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, name) &&
            r->element[i + 1]->type == REDIS_REPLY_INTEGER)
            return r->element[i + 1]->integer;
    return 0;
}

/* QUEUE LIST, then a table of every queue's main numbers. */
static int stats_all(redisContext *c, const queue_args_t *a)
{
    static const char *const columns[] = {"ready", "in_flight",     "published",
                                          "acked", "dead_lettered", "oldest_ready_age_ms"};
    const char *list[] = {"QUEUE", "LIST"};
    redisReply *names = cli_run(c, a->what, 2, list, NULL);
    if (!names)
        return 1;
    printf("%-24s %10s %10s %12s %12s %14s %20s\n", "QUEUE", "READY", "IN_FLIGHT", "PUBLISHED",
           "ACKED", "DEAD_LETTERED", "OLDEST_READY_AGE_MS");
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < names->elements; i++) {
        const char *argv[] = {"QUEUE", "STATS", names->element[i]->str};
        redisReply *r = cli_run(c, a->what, 3, argv, NULL);
        if (!r) {
            rc = 1;
            break;
        }
        printf("%-24s", names->element[i]->str);
        for (int k = 0; k < 6; k++)
            printf(" %*lld", k == 5 ? 20 : k == 4 ? 14 : k >= 2 ? 12 : 10, stat_of(r, columns[k]));
        putchar('\n');
        freeReplyObject(r);
    }
    freeReplyObject(names);
    return rc;
}

static int delete_queue(redisContext *c, const queue_args_t *a)
{
    words_t w = {.argc = 0};
    text(&w, "QUEUE");
    text(&w, "DELETE");
    text(&w, a->positional[0]);
    return run_simple(c, a, &w, "deleted queue %s\n");
}

/* How many positional arguments each action takes: [min, max]. */
static int check_arity(const queue_args_t *a)
{
    static const struct {
        const char *action;
        int min, max;
    } arity[] = {{"declare", 1, 1}, {"exchange", 2, 2}, {"bind", 2, 3},  {"publish", 2, 3},
                 {"pop", 1, 1},     {"stats", 0, 1},    {"delete", 1, 1}};
    for (size_t i = 0; i < sizeof arity / sizeof *arity; i++)
        if (!strcmp(arity[i].action, a->action)) {
            if (a->positional_count < arity[i].min)
                return cli_usage_error("queue", a->what, "missing arguments");
            if (a->positional_count > arity[i].max)
                return cli_usage_error("queue", a->what, "too many arguments");
            return 0;
        }
    return cli_usage_error("queue", "queue", "unknown action");
}

static int run_action(redisContext *c, const queue_args_t *a)
{
    const char *action = a->action;
    if (!strcmp(action, "declare"))
        return declare(c, a);
    if (!strcmp(action, "exchange")) {
        if (exchange(c, a, a->positional[0], a->positional[1]))
            return 1;
        printf("declared exchange %s\n", a->positional[0]);
        return 0;
    }
    if (!strcmp(action, "bind"))
        return bind(c, a);
    if (!strcmp(action, "publish"))
        return a->positional_count == 3 ? publish_one(c, a) : publish_lines(c, a);
    if (!strcmp(action, "pop"))
        return pop(c, a);
    if (!strcmp(action, "delete"))
        return delete_queue(c, a);
    return a->positional_count ? stats_one(c, a, a->positional[0]) : stats_all(c, a);
}

int cli_queue(int argc, char **argv)
{
    queue_args_t a = {.count = 1, .block_ms = -1};
    char what[64];
    cli_server_init(&a.server);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(queue_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    a.action = argv[1];
    snprintf(what, sizeof what, "queue %.40s", a.action);
    a.what = what;
    int rc = parse_queue(argc - 1, argv + 1, &a);
    if (rc)
        return rc == 1 ? 0 : rc;
    if ((rc = check_arity(&a)))
        return rc;
    redisContext *c = cli_connect(&a.server);
    if (!c)
        return 1;
    rc = run_action(c, &a);
    redisFree(c);
    return rc;
}

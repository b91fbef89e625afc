/*
 * cli_topics.c - `sluice topics`: topic administration on a running node
 * through TOPIC CREATE | LIST | DESCRIBE | DELETE.
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

static const char topics_usage[] =
    "usage: sluice topics <action> [options]\n"
    "\n"
    "  create NAME [--partitions N] [--retention MS] [--compact]\n"
    "              [--compression zstd|none] [--fsync never|interval|always]\n"
    "              [--set NAME=VALUE]...\n"
    "                    create a topic; --set gives any other topic setting\n"
    "                    (retention.bytes, segment.bytes, format, ...)\n"
    "  list              print the names of the topics, one a line\n"
    "  describe NAME     print a topic's settings and its partitions' offsets\n"
    "  delete NAME       delete a topic and every group's offsets for it\n"
    "\n" CLI_SERVER_USAGE;

typedef struct topics_args {
    cli_server_t server;
    const char *action, *what; /* e.g. "create", "topics create" */
    const char *command[3];    /* TOPIC <ACTION> [NAME] */
    int command_argc;
    const char **options; /* create's options as TOPIC CREATE words */
    int option_count;
} topics_args_t;

/* Whether value is one of the space-separated words in choices. */
static int is_choice(const char *value, const char *choices)
{
    size_t n = strlen(value);
    for (const char *w = strstr(choices, value); n && w; w = strstr(w + 1, value))
        if ((w == choices || w[-1] == ' ') && (w[n] == ' ' || w[n] == 0))
            return 1;
    return 0;
}

/* Checks the value of a create option; NULL when fine, else the problem. */
static const char *check_value(int opt, const char *value)
{
    int64_t v;
    if (opt == 'p' && (cli_parse_int(value, &v) || v < 1))
        return "--partitions needs a positive number";
    if (opt == 'r' && strcmp(value, "-1") && cli_parse_int(value, &v))
        return "--retention needs milliseconds (or -1: keep forever)";
    if (opt == 'z' && !is_choice(value, "zstd none"))
        return "--compression is zstd or none";
    if (opt == 'f' && !is_choice(value, "never interval always"))
        return "--fsync is never, interval or always";
    if (opt == 's' && (!strchr(value, '=') || value[0] == '='))
        return "--set needs NAME=VALUE";
    return NULL;
}

/* Appends the TOPIC CREATE words of one option; returns 2 if it is bad. */
static int add_create_option(topics_args_t *a, int opt, char *value)
{
    static const char *const keywords[][2] = {
        {"p", "PARTITIONS"},  {"r", "RETENTION"}, {"c", "COMPACT"},
        {"z", "COMPRESSION"}, {"f", "FSYNC"},     {"s", "SET"},
    };
    const char *problem = check_value(opt, value);
    if (problem)
        return cli_usage_error("topics", a->what, problem);
    for (size_t i = 0; i < sizeof keywords / sizeof *keywords; i++)
        if (keywords[i][0][0] == opt)
            a->options[a->option_count++] = keywords[i][1];
    if (opt == 's') {
        char *eq = strchr(value, '=');
        *eq = 0;
        a->options[a->option_count++] = value;
        value = eq + 1;
    }
    if (opt != 'c')
        a->options[a->option_count++] = value;
    return 0;
}

/* Parses argv (argv[0] is the action); 1 for --help, 2 for a usage error. */
static int parse_topics(int argc, char **argv, topics_args_t *a)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"partitions", required_argument, NULL, 'p'},
        {"retention", required_argument, NULL, 'r'},
        {"compact", no_argument, NULL, 'c'},
        {"compression", required_argument, NULL, 'z'},
        {"fsync", required_argument, NULL, 'f'},
        {"set", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&a->server, c, optarg);
        if (c == 'h')
            return fputs(topics_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("topics", a->what, c, argv);
        if (server < 0)
            return cli_usage_error("topics", a->what, "--port needs a number from 1 to 65535");
        if (server == 0 && strcmp(a->action, "create"))
            return cli_usage_error("topics", a->what, "that option only goes with create");
        if (server == 0)
            rc = add_create_option(a, c, optarg);
    }
    return rc;
}

/* TOPIC CREATE name [options] -> OK */
static int create_topic(redisContext *c, const topics_args_t *a)
{
    const char **argv = sl_malloc((size_t)(3 + a->option_count) * sizeof *argv);
    if (!argv)
        return fprintf(stderr, "sluice: %s: out of memory\n", a->what), 1;
    memcpy(argv, a->command, 3 * sizeof *argv);
    memcpy(argv + 3, a->options, (size_t)a->option_count * sizeof *argv);
    redisReply *r = cli_run(c, a->what, 3 + a->option_count, argv, NULL);
    sl_free(argv);
    if (!r)
        return 1;
    freeReplyObject(r);
    printf("created topic %s\n", a->command[2]);
    return 0;
}

/* TOPIC DELETE name -> OK */
static int delete_topic(redisContext *c, const topics_args_t *a)
{
    redisReply *r = cli_run(c, a->what, 3, a->command, NULL);
    if (!r)
        return 1;
    freeReplyObject(r);
    printf("deleted topic %s\n", a->command[2]);
    return 0;
}

/* TOPIC LIST -> [name, ...] */
static int list_topics(redisContext *c, const topics_args_t *a)
{
    redisReply *r = cli_run(c, a->what, 2, a->command, NULL);
    if (!r)
        return 1;
    int rc = r->type == REDIS_REPLY_ARRAY ? 0 : cli_unexpected_reply(a->what);
    for (size_t i = 0; rc == 0 && i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            printf("%.*s\n", (int)r->element[i]->len, r->element[i]->str);
    freeReplyObject(r);
    return rc;
}

/* Prints the flat name, value, ... array of settings, one a line. */
static void print_settings(const redisReply *settings)
{
    for (size_t i = 0; i + 1 < settings->elements; i += 2) {
        const redisReply *name = settings->element[i], *value = settings->element[i + 1];
        if (name->type != REDIS_REPLY_STRING || value->type != REDIS_REPLY_STRING)
            continue;
        if (value->len)
            printf("  %-22.*s %.*s\n", (int)name->len, name->str, (int)value->len, value->str);
        else
            printf("  %.*s\n", (int)name->len, name->str);
    }
}

/* Prints [[partition, start, end, bytes, segments], ...] as a table. */
static int print_partitions(const redisReply *partitions)
{
    printf("%9s %14s %14s %14s %9s\n", "PARTITION", "START", "END", "BYTES", "SEGMENTS");
    for (size_t i = 0; i < partitions->elements; i++) {
        long long v[5];
        for (size_t k = 0; k < 5; k++)
            if (cli_reply_int(partitions->element[i], k, &v[k]))
                return -1;
        printf("%9lld %14lld %14lld %14lld %9lld\n", v[0], v[1], v[2], v[3], v[4]);
    }
    return 0;
}

/* TOPIC DESCRIBE -> [name, <name>, settings, [k, v, ...], partitions,
 * [[partition, start, end, bytes, segments], ...]] */
static int describe_topic(redisContext *c, const topics_args_t *a)
{
    redisReply *r = cli_run(c, a->what, 3, a->command, NULL);
    if (!r)
        return 1;
    int rc = 0;
    if (!cli_reply_is_array(r, 6) || !cli_reply_is_array(r->element[3], 0) ||
        !cli_reply_is_array(r->element[5], 0)) {
        rc = cli_unexpected_reply(a->what);
    } else {
        printf("topic %s\n", a->command[2]);
        print_settings(r->element[3]);
        putchar('\n');
        if (print_partitions(r->element[5]))
            rc = cli_unexpected_reply(a->what);
    }
    freeReplyObject(r);
    return rc;
}

/* Checks the positional arguments: a NAME for all but list. */
static int check_name(int argc, char **argv, topics_args_t *a)
{
    int wants_name = strcmp(a->action, "list") != 0;
    if (argc - optind < wants_name)
        return cli_usage_error("topics", a->what, "which topic?");
    if (argc - optind > wants_name)
        return cli_usage_error("topics", a->what, "too many arguments");
    if (wants_name)
        a->command[a->command_argc++] = argv[optind];
    return 0;
}

/* Parses, connects and runs one action (argv[0] is the action). */
static int run_action(int argc, char **argv, topics_args_t *a)
{
    int rc = parse_topics(argc, argv, a);
    if (rc)
        return rc == 1 ? 0 : rc;
    if ((rc = check_name(argc, argv, a)))
        return rc;
    redisContext *c = cli_connect(&a->server);
    if (!c)
        return 1;
    rc = !strcmp(a->action, "create")   ? create_topic(c, a)
         : !strcmp(a->action, "delete") ? delete_topic(c, a)
         : !strcmp(a->action, "list")   ? list_topics(c, a)
                                        : describe_topic(c, a);
    redisFree(c);
    return rc;
}

int cli_topics(int argc, char **argv)
{
    static const char *const actions[] = {"create", "list", "describe", "delete"};
    static const char *const upper[] = {"CREATE", "LIST", "DESCRIBE", "DELETE"};
    char what[32];
    if (argc < 2)
        return cli_usage_error("topics", "topics",
                               "which action? (create, list, describe or "
                               "delete)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return fputs(topics_usage, stdout), 0;
    size_t i = 0;
    while (i < 4 && strcmp(argv[1], actions[i]))
        i++;
    if (i == 4)
        return cli_usage_error("topics", "topics",
                               "unknown action (create, list, describe or "
                               "delete)");
    snprintf(what, sizeof what, "topics %s", actions[i]);
    topics_args_t a = {.action = actions[i], .what = what, .command = {"TOPIC", upper[i]}};
    a.command_argc = 2;
    cli_server_init(&a.server);
    /* each option adds at most three words (SET name value) */
    a.options = sl_malloc((size_t)(3 * argc) * sizeof *a.options);
    if (!a.options)
        return fprintf(stderr, "sluice: %s: out of memory\n", what), 1;
    int rc = run_action(argc - 1, argv + 1, &a);
    sl_free(a.options);
    return rc;
}

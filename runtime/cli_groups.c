/*
 * cli_groups.c - `sluice groups`: where consumer groups stand. For every
 * (group, topic) with commits (GROUP LIST), or just the one named, it
 * prints each partition's committed offset, end offset and lag (GROUP
 * OFFSETS) as one table.
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

static const char groups_usage[] =
    "usage: sluice groups [--group G] [--topic T] [options]\n"
    "\n"
    "Prints GROUP TOPIC PARTITION COMMITTED END LAG for every group and topic\n"
    "with committed offsets, or only those of group G and/or topic T. A\n"
    "partition without a commit shows '-' and its lag from its first record.\n"
    "\n"
    "  --group G         only group G\n"
    "  --topic T         only topic T\n" CLI_SERVER_USAGE;

typedef struct groups_args {
    cli_server_t server;
    const char *group, *topic; /* NULL: any */
} groups_args_t;

/* One (group, topic) to show; names point into a reply or argv. */
typedef struct pair {
    const char *group, *topic;
    size_t group_len, topic_len;
} pair_t;

static int parse_groups(int argc, char **argv, groups_args_t *a)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"group", required_argument, NULL, 'g'},
        {"topic", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&a->server, c, optarg);
        if (c == 'h')
            return fputs(groups_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("groups", "groups", c, argv);
        if (server < 0)
            return cli_usage_error("groups", "groups", "--port needs a number from 1 to 65535");
        if (c == 'g')
            a->group = optarg;
        if (c == 't')
            a->topic = optarg;
    }
    if (optind < argc)
        return cli_usage_error("groups", "groups", "too many arguments");
    return 0;
}

static int matches(const char *wanted, const redisReply *name)
{
    return !wanted || (strlen(wanted) == name->len && !memcmp(wanted, name->str, name->len));
}

/* Picks the pairs of a GROUP LIST reply ([[group, topic], ...]) that the
 * options ask for; returns how many, or -1 for a reply of another shape. */
static long long pick_pairs(const redisReply *list, const groups_args_t *a, pair_t *pairs)
{
    long long n = 0;
    if (list->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (!cli_reply_is_array(e, 2) || e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[1]->type != REDIS_REPLY_STRING)
            return -1;
        if (matches(a->group, e->element[0]) && matches(a->topic, e->element[1]))
            pairs[n++] = (pair_t){e->element[0]->str, e->element[1]->str, e->element[0]->len,
                                  e->element[1]->len};
    }
    return n;
}

/* GROUP OFFSETS group topic -> [[partition, committed (-1: none), end,
 * lag], ...], printed as rows of the table. */
static int print_offsets(redisContext *c, const pair_t *pair, int widths[2])
{
    const char *argv[] = {"GROUP", "OFFSETS", pair->group, pair->topic};
    size_t lens[] = {5, 7, pair->group_len, pair->topic_len};
    redisReply *r = cli_run(c, "groups", 4, argv, lens);
    if (!r)
        return 1;
    int rc = r->type == REDIS_REPLY_ARRAY ? 0 : 1;
    for (size_t i = 0; rc == 0 && i < r->elements; i++) {
        long long v[4];
        char committed[24] = "-";
        for (size_t k = 0; k < 4 && rc == 0; k++)
            rc = cli_reply_int(r->element[i], k, &v[k]) ? 1 : 0;
        if (rc == 0 && v[1] >= 0)
            snprintf(committed, sizeof committed, "%lld", v[1]);
        if (rc == 0)
            printf("%-*.*s  %-*.*s  %9lld  %12s  %12lld  %12lld\n", widths[0], (int)pair->group_len,
                   pair->group, widths[1], (int)pair->topic_len, pair->topic, v[0], committed, v[2],
                   v[3]);
    }
    freeReplyObject(r);
    return rc ? cli_unexpected_reply("groups") : 0;
}

static int print_table(redisContext *c, const pair_t *pairs, long long n)
{
    int widths[2] = {5, 5}; /* GROUP, TOPIC */
    for (long long i = 0; i < n; i++) {
        if ((int)pairs[i].group_len > widths[0])
            widths[0] = (int)pairs[i].group_len;
        if ((int)pairs[i].topic_len > widths[1])
            widths[1] = (int)pairs[i].topic_len;
    }
    printf("%-*s  %-*s  %9s  %12s  %12s  %12s\n", widths[0], "GROUP", widths[1], "TOPIC",
           "PARTITION", "COMMITTED", "END", "LAG");
    for (long long i = 0; i < n; i++)
        if (print_offsets(c, &pairs[i], widths))
            return 1;
    return 0;
}

/* The table for one named pair, or for those GROUP LIST has. */
static int show_groups(redisContext *c, const groups_args_t *a)
{
    if (a->group && a->topic) {
        pair_t pair = {a->group, a->topic, strlen(a->group), strlen(a->topic)};
        return print_table(c, &pair, 1);
    }
    const char *argv[] = {"GROUP", "LIST"};
    redisReply *list = cli_run(c, "groups", 2, argv, NULL);
    if (!list)
        return 1;
    pair_t *pairs = sl_malloc((list->elements + 1) * sizeof *pairs);
    if (!pairs) {
        freeReplyObject(list);
        return fprintf(stderr, "sluice: groups: out of memory\n"), 1;
    }
    long long n = pick_pairs(list, a, pairs);
    int rc = n < 0 ? cli_unexpected_reply("groups") : print_table(c, pairs, n);
    sl_free(pairs);
    freeReplyObject(list);
    return rc;
}

int cli_groups(int argc, char **argv)
{
    groups_args_t a = {0};
    cli_server_init(&a.server);
    int rc = parse_groups(argc, argv, &a);
    if (rc)
        return rc == 1 ? 0 : rc;
    redisContext *c = cli_connect(&a.server);
    if (!c)
        return 1;
    rc = show_groups(c, &a);
    redisFree(c);
    return rc;
}

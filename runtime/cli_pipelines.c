/*
 * cli_pipelines.c - `sluice submit FILE.lua [--name N]` sends a pipeline
 * script to a running node (PIPELINE SUBMIT); `sluice pipelines` lists the
 * node's pipelines with their state (PIPELINE LIST).
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>

static const char submit_usage[] =
    "usage: sluice submit FILE.lua [--name N] [options]\n"
    "\n"
    "Sends the pipeline script to the node, which compiles, checks and starts\n"
    "it (replacing a running pipeline of that name, which continues from the\n"
    "same offsets). The name defaults to the file name without .lua.\n"
    "\n"
    "  --name N          the pipeline's name\n" CLI_SERVER_USAGE;

static const char pipelines_usage[] = "usage: sluice pipelines [options]\n"
                                      "\n"
                                      "Prints NAME STATE ERROR for every pipeline of the node.\n"
                                      "\n" CLI_SERVER_USAGE;

static int parse(int argc, char **argv, const char *command, const char *usage,
                 cli_server_t *server, const char **name)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"name", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int bad_server = cli_server_option(server, c, optarg) < 0;
        if (c == 'h')
            return fputs(usage, stdout), 1;
        if (c == '?' || c == ':' || (c == 'n' && !name))
            return cli_option_error(command, command, c, argv);
        if (bad_server)
            return cli_usage_error(command, command, "--port needs a number from 1 to 65535");
        if (c == 'n')
            *name = optarg;
    }
    return 0;
}

static int send_script(const cli_server_t *server, const char *name, const char *text, size_t len)
{
    const char *argv[] = {"PIPELINE", "SUBMIT", name, text};
    size_t lens[] = {8, 6, strlen(name), len};
    redisContext *c = cli_connect(server);
    if (!c)
        return 1;
    redisReply *r = cli_run(c, "submit", 4, argv, lens);
    int rc = !r ? 1 : r->type == REDIS_REPLY_ERROR ? cli_reply_error("submit", r) : 0;
    if (rc == 0)
        printf("pipeline %s submitted and running\n", name);
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

int cli_submit(int argc, char **argv)
{
    cli_server_t server;
    const char *name = NULL;
    char derived[160];
    cli_server_init(&server);
    int rc = parse(argc, argv, "submit", submit_usage, &server, &name);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (optind != argc - 1)
        return cli_usage_error("submit", "submit", "give exactly one script file");
    char *text;
    size_t len;
    cli_script_name(argv[optind], derived, sizeof derived);
    if ((rc = sl_io_read_file(argv[optind], &text, &len)))
        return fprintf(stderr, "sluice: submit: cannot read %s: %s\n", argv[optind],
                       sl_strerror(rc)),
               1;
    rc = send_script(&server, name ? name : derived, text, len);
    sl_free(text);
    return rc;
}

int cli_pipelines(int argc, char **argv)
{
    cli_server_t server;
    cli_server_init(&server);
    int rc = parse(argc, argv, "pipelines", pipelines_usage, &server, NULL);
    if (rc)
        return rc == 1 ? 0 : rc;
    redisContext *c = cli_connect(&server);
    if (!c)
        return 1;
    const char *argv_list[] = {"PIPELINE", "LIST"};
    size_t lens[] = {8, 4};
    redisReply *r = cli_run(c, "pipelines", 2, argv_list, lens);
    rc = !r ? 1 : r->type == REDIS_REPLY_ERROR ? cli_reply_error("pipelines", r) : 0;
    for (size_t i = 0; rc == 0 && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *p = r->element[i];
        if (p->type == REDIS_REPLY_ARRAY && p->elements == 3)
            printf("%-24s %-8s %s\n", p->element[0]->str, p->element[1]->str, p->element[2]->str);
    }
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

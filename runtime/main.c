/*
 * main.c - the `sluice` program: dispatches to a subcommand.
 */
#include "runtime/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLUICE_VERSION "0.1.0"

static const char usage[] =
    "usage: sluice <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve     run the node: RESP server, HTTP metrics; see `sluice serve --help`\n"
    "  run       run a pipeline: a node on ./data with FILE.lua submitted;\n"
    "            see `sluice run --help`\n"
    "  submit    send a pipeline script to a node; see `sluice submit --help`\n"
    "  pipelines list a node's pipelines and their state\n"

    "  topics    create, list, describe and delete topics on a running node\n"
    "  produce   send JSON lines from stdin to a topic as records\n"
    "  consume   print a topic's records, alone or as a consumer group\n"
    "  groups    show consumer groups' committed offsets and lag\n"
    "  features  print a key's feature vector of a view (live or --as-of)\n"
    "  get       print a key's state in a pipeline's store\n"
    "  features-at  point-in-time features for rows of key,timestamp (training data)\n"
    "  queue     work queues: declare, bind, publish, pop, stats\n"
    "  worker    run a command per message of a queue: sluice worker QUEUE -- CMD\n"
    "  log       inspect and edit a data directory offline (create, append, read,\n"
    "            topics, maintain); see `sluice log --help`\n"
    "  version   print the version\n"
    "\n"
    "`sluice <command> --help` describes each command. The client commands\n"
    "(topics, produce, consume, groups) take --host, --port and --password.\n";

int cli_fail(const char *what, int code)
{
    const char *detail = sl_error_detail();
    fprintf(stderr, "sluice: %s: %s\n", what, detail[0] ? detail : sl_strerror(code));
    return 1;
}

void cli_script_name(const char *path, char *out, size_t size)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    size_t len = strlen(base);
    if (len > 4 && !strcmp(base + len - 4, ".lua"))
        len -= 4;
    snprintf(out, size, "%.*s", (int)len, base);
}

int cli_parse_int(const char *text, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_time(const char *text, size_t len, int64_t *out)
{
    char buf[32], *end;
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, text, len);
    buf[len] = 0;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end || buf[0] == ' ' || buf[0] == '+')
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "submit"))
        return cli_submit(argc - 1, argv + 1);
    if (!strcmp(argv[1], "pipelines"))
        return cli_pipelines(argc - 1, argv + 1);
    if (!strcmp(argv[1], "run"))
        return cli_run_pipeline(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve"))
        return cli_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "log"))
        return cli_log(argc - 1, argv + 1);
    if (!strcmp(argv[1], "topics"))
        return cli_topics(argc - 1, argv + 1);
    if (!strcmp(argv[1], "produce"))
        return cli_produce(argc - 1, argv + 1);
    if (!strcmp(argv[1], "consume"))
        return cli_consume(argc - 1, argv + 1);
    if (!strcmp(argv[1], "groups"))
        return cli_groups(argc - 1, argv + 1);
    if (!strcmp(argv[1], "features"))
        return cli_features(argc - 1, argv + 1);
    if (!strcmp(argv[1], "get"))
        return cli_get(argc - 1, argv + 1);
    if (!strcmp(argv[1], "features-at"))
        return cli_features_at(argc - 1, argv + 1);
    if (!strcmp(argv[1], "queue"))
        return cli_queue(argc - 1, argv + 1);
    if (!strcmp(argv[1], "worker"))
        return cli_worker(argc - 1, argv + 1);
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("sluice %s\n", SLUICE_VERSION);
        return 0;
    }
    fprintf(stderr, "sluice: unknown command '%s'\n%s", argv[1], usage);
    return 2;
}

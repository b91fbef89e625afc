/*
 * cli_log.c - `sluice log`: offline tools over a data directory.
 *
 * Each invocation opens the log (recovering it as a node would), does one
 * thing and closes it cleanly, so `append` then `read` also shows a reopen.
 * A directory in use by a running node is refused (the log's flock).
 */
#include "runtime/cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char log_usage[] =
    "usage: sluice log <action> [--data DIR] ...\n"
    "\n"
    "  create TOPIC [NAME=VALUE ...]   create a topic; settings such as partitions=4,\n"
    "                                  compression=zstd, fsync=always, retention.ms=N,\n"
    "                                  cleanup.policy=compact (see docs/storage.md)\n"
    "  append TOPIC [--partition P] [--keyed] [--batch N]\n"
    "                                  append stdin, one record per line; with --keyed\n"
    "                                  each line is KEY<TAB>VALUE and keyed records go\n"
    "                                  to Kafka's murmur2 partition; unkeyed batches\n"
    "                                  rotate over partitions (batch: 1000 lines)\n"
    "  read TOPIC [--partition P] [--offset N | --time MS] [-n COUNT]\n"
    "                                  print records as PARTITION OFFSET TIMESTAMP KEY\n"
    "                                  VALUE, tab-separated; null shown as (null)\n"
    "  topics                          list topics with offsets, sizes and settings\n"
    "  maintain                        run retention and compaction once\n"
    "\n"
    "--data DIR is the data directory (default ./data).\n";

typedef struct log_args {
    const char *data;
    int32_t partition; /* -1: all / by key */
    int keyed;
    int64_t batch, offset, time, count;
    int optind;
} log_args_t;

static int parse_args(int argc, char **argv, log_args_t *a)
{
    static const struct option options[] = {
        {"data", required_argument, NULL, 'd'},   {"partition", required_argument, NULL, 'p'},
        {"keyed", no_argument, NULL, 'k'},        {"batch", required_argument, NULL, 'b'},
        {"offset", required_argument, NULL, 'o'}, {"time", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    *a = (log_args_t){"data", -1, 0, 1000, -1, -1, -1, 0};
    int c;
    int64_t v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:", options, NULL)) != -1) {
        if (c == 'd')
            a->data = optarg;
        else if (c == 'k')
            a->keyed = 1;
        else if (c == 'h')
            return fputs(log_usage, stdout), 1;
        else if (c == '?' || cli_parse_int(optarg, &v))
            return fprintf(stderr, "sluice log: bad option or number\n%s", log_usage), 2;
        else if (c == 'p')
            a->partition = (int32_t)v;
        else if (c == 'b')
            a->batch = v ? v : 1;
        else if (c == 'o')
            a->offset = v;
        else if (c == 't')
            a->time = v;
        else if (c == 'n')
            a->count = v;
    }
    a->optind = optind;
    return 0;
}

static int create_topic(sl_log_t *log, int argc, char **argv, int first)
{
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    for (int i = first + 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return fprintf(stderr, "sluice log create: '%s' is not NAME=VALUE\n", argv[i]), 2;
        *eq = 0;
        int rc = sl_topic_config_set(&cfg, argv[i], eq + 1);
        if (rc)
            return cli_fail("log create", rc);
    }
    int rc = sl_log_create_topic(log, argv[first], &cfg, NULL);
    if (rc)
        return cli_fail("log create", rc);
    printf("created topic %s with %d partition(s)\n", argv[first], cfg.partitions);
    return 0;
}

/* Lines waiting to be appended to one partition, in one buffer. */
typedef struct pending {
    char *text;
    size_t len, cap;
    size_t *spans; /* per line: key start, key len, value start, value len */
    size_t lines, spans_cap;
} pending_t;

static int pending_add(pending_t *q, const char *key, size_t key_len, const char *value,
                       size_t value_len)
{
    if (q->len + key_len + value_len > q->cap) {
        size_t cap = (q->cap + key_len + value_len) * 2;
        char *text = sl_realloc(q->text, cap);
        if (!text)
            return -1;
        q->text = text;
        q->cap = cap;
    }
    if (q->lines == q->spans_cap) {
        size_t cap = q->spans_cap ? q->spans_cap * 2 : 1024;
        size_t *spans = sl_realloc(q->spans, cap * 4 * sizeof *spans);
        if (!spans)
            return -1;
        q->spans = spans;
        q->spans_cap = cap;
    }
    size_t *s = q->spans + 4 * q->lines++;
    s[0] = q->len;
    s[1] = key ? key_len : (size_t)-1;
    if (key)
        memcpy(q->text + q->len, key, key_len);
    q->len += key ? key_len : 0;
    s[2] = q->len;
    s[3] = value_len;
    memcpy(q->text + q->len, value, value_len);
    q->len += value_len;
    return 0;
}

/* Appends the pending lines as one batch (not waiting for durability). */
static int pending_flush(pending_t *q, sl_partition_t *p, sl_record_t *records, int64_t *end)
{
    if (q->lines == 0)
        return 0;
    for (size_t i = 0; i < q->lines; i++) {
        size_t *s = q->spans + 4 * i;
        records[i] = (sl_record_t){.timestamp = -1,
                                   .key = (uint8_t *)q->text + s[0],
                                   .key_len = s[1] == (size_t)-1 ? -1 : (int32_t)s[1],
                                   .value = (uint8_t *)q->text + s[2],
                                   .value_len = (int32_t)s[3]};
    }
    int64_t first;
    int rc = sl_partition_append_nowait(p, records, q->lines, &first);
    if (rc == 0)
        *end = first + (int64_t)q->lines;
    q->lines = q->len = 0;
    return rc;
}

typedef struct appender {
    sl_topic_t *topic;
    int32_t partitions, next_round_robin;
    pending_t *queues;
    int64_t *ends;
    sl_record_t *records;
    int64_t batch, appended, batches;
} appender_t;

static int route_line(appender_t *ap, const log_args_t *a, char *line, size_t len)
{
    const char *key = NULL, *value = line;
    size_t key_len = 0, value_len = len;
    int32_t part = a->partition >= 0 ? a->partition : ap->next_round_robin;
    char *tab = a->keyed ? memchr(line, '\t', len) : NULL;
    if (tab) {
        key = line;
        key_len = (size_t)(tab - line);
        value = tab + 1;
        value_len = len - key_len - 1;
        if (a->partition < 0)
            part = sl_partition_for_key(key, key_len, ap->partitions);
    }
    pending_t *q = &ap->queues[part];
    if (pending_add(q, key, key_len, value, value_len))
        return -1;
    if ((int64_t)q->lines < ap->batch)
        return 0;
    ap->appended += (int64_t)q->lines;
    ap->batches++;
    if (!tab && a->partition < 0)
        ap->next_round_robin = (ap->next_round_robin + 1) % ap->partitions;
    return pending_flush(q, sl_topic_partition(ap->topic, part), ap->records, &ap->ends[part]);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Flushes what is pending and waits until all of it is durable. */
static int finish_appends(appender_t *ap)
{
    int rc = 0;
    for (int32_t i = 0; i < ap->partitions && rc == 0; i++) {
        sl_partition_t *p = sl_topic_partition(ap->topic, i);
        ap->appended += (int64_t)ap->queues[i].lines;
        ap->batches += ap->queues[i].lines > 0;
        rc = pending_flush(&ap->queues[i], p, ap->records, &ap->ends[i]);
        if (rc == 0 && ap->ends[i] >= 0)
            rc = sl_partition_await_durable(p, ap->ends[i], -1);
    }
    return rc;
}

static int append_stdin(sl_topic_t *topic, const log_args_t *a)
{
    appender_t ap = {
        .topic = topic, .partitions = sl_topic_config(topic)->partitions, .batch = a->batch};
    if (a->partition >= ap.partitions)
        return fprintf(stderr, "sluice log append: no partition %d\n", a->partition), 2;
    ap.queues = sl_calloc((size_t)ap.partitions, sizeof *ap.queues);
    ap.ends = sl_malloc((size_t)ap.partitions * sizeof *ap.ends);
    ap.records = sl_malloc((size_t)a->batch * sizeof *ap.records);
    int rc = ap.queues && ap.ends && ap.records ? 0 : -1;
    for (int32_t i = 0; rc == 0 && i < ap.partitions; i++)
        ap.ends[i] = -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    double start = seconds_now();
    while (rc == 0 && (n = getline(&line, &cap, stdin)) > 0)
        rc = route_line(&ap, a, line, (size_t)n - (line[n - 1] == '\n'));
    if (rc == 0)
        rc = finish_appends(&ap);
    double took = seconds_now() - start;
    free(line);
    for (int32_t i = 0; ap.queues && i < ap.partitions; i++) {
        sl_free(ap.queues[i].text);
        sl_free(ap.queues[i].spans);
    }
    sl_free(ap.queues);
    sl_free(ap.ends);
    sl_free(ap.records);
    if (rc)
        return cli_fail("log append", rc);
    printf("appended %lld records in %lld batches to %s in %.3f s (%.0f records/s, durable)\n",
           (long long)ap.appended, (long long)ap.batches, sl_topic_name(topic), took,
           took > 0 ? (double)ap.appended / took : 0.0);
    return 0;
}

static void print_field(const uint8_t *data, int32_t len)
{
    if (len < 0) {
        fputs("(null)", stdout);
        return;
    }
    for (int32_t i = 0; i < len; i++) {
        if (data[i] == '\n')
            fputs("\\n", stdout);
        else if (data[i] == '\t')
            fputs("\\t", stdout);
        else
            putchar(data[i]);
    }
}

static int read_partition(sl_partition_t *p, const log_args_t *a, int64_t *left)
{
    int64_t from = a->offset >= 0 ? a->offset : 0;
    int rc = a->time >= 0 ? sl_partition_offset_for_time(p, a->time, &from) : 0;
    sl_reader_t *r;
    sl_record_t rec;
    if (rc || (rc = sl_reader_open(p, from, &r)))
        return rc;
    while (*left != 0 && (rc = sl_reader_next(r, &rec)) == 1) {
        printf("%d\t%lld\t%lld\t", sl_partition_id(p), (long long)rec.offset,
               (long long)rec.timestamp);
        print_field(rec.key, rec.key_len);
        putchar('\t');
        print_field(rec.value, rec.value_len);
        putchar('\n');
        if (*left > 0)
            (*left)--;
    }
    sl_reader_close(r);
    return rc < 0 ? rc : 0;
}

static int read_topic(sl_topic_t *topic, const log_args_t *a)
{
    int32_t n = sl_topic_config(topic)->partitions;
    int64_t left = a->count;
    if (a->partition >= n)
        return fprintf(stderr, "sluice log read: no partition %d\n", a->partition), 2;
    for (int32_t i = 0; i < n; i++) {
        if (a->partition >= 0 && i != a->partition)
            continue;
        int rc = read_partition(sl_topic_partition(topic, i), a, &left);
        if (rc)
            return cli_fail("log read", rc);
    }
    return 0;
}

static int describe_topic(void *arg, sl_topic_t *t)
{
    const sl_topic_config_t *c = sl_topic_config(t);
    (void)arg;
    printf("%s  partitions=%d compression=%s fsync=%s cleanup.policy=%s retention.ms=%lld "
           "retention.bytes=%lld\n",
           sl_topic_name(t), c->partitions, c->compression ? "zstd" : "none",
           c->fsync == SL_FSYNC_ALWAYS ? "always"
           : c->fsync                  ? "interval"
                                       : "never",
           c->cleanup ? "compact" : "delete", (long long)c->retention_ms,
           (long long)c->retention_bytes);
    for (int32_t i = 0; i < c->partitions; i++) {
        sl_partition_t *p = sl_topic_partition(t, i);
        printf("  partition %d: offsets %lld..%lld, %lld bytes in %d segment(s)\n", i,
               (long long)sl_partition_start_offset(p), (long long)sl_partition_end_offset(p),
               (long long)sl_partition_size_bytes(p), sl_partition_segment_count(p));
    }
    return 0;
}

/* Runs one action on the open log. */
static int run_action(sl_log_t *log, const char *action, int argc, char **argv, const log_args_t *a)
{
    if (!strcmp(action, "topics"))
        return sl_log_foreach_topic(log, describe_topic, NULL);
    if (!strcmp(action, "maintain")) {
        int rc = sl_log_maintain(log);
        return rc ? cli_fail("log maintain", rc) : 0;
    }
    if (a->optind + 1 >= argc)
        return fprintf(stderr, "sluice log %s: which topic?\n%s", action, log_usage), 2;
    const char *name = argv[a->optind + 1];
    if (!strcmp(action, "create"))
        return create_topic(log, argc, argv, a->optind + 1);
    sl_topic_t *topic = sl_log_topic(log, name);
    if (!topic)
        return fprintf(stderr, "sluice log %s: no topic '%s'\n", action, name), 1;
    if (!strcmp(action, "append"))
        return append_stdin(topic, a);
    return read_topic(topic, a);
}

int cli_log(int argc, char **argv)
{
    static const char *const actions[] = {"create", "append", "read", "topics", "maintain"};
    log_args_t a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc == 1 ? 0 : rc;
    const char *action = a.optind < argc ? argv[a.optind] : "";
    size_t i = 0;
    while (i < sizeof actions / sizeof *actions && strcmp(action, actions[i]))
        i++;
    if (i == sizeof actions / sizeof *actions)
        return fprintf(stderr, "sluice log: unknown action '%s'\n%s", action, log_usage), 2;
    sl_log_t *log;
    if ((rc = sl_log_open(a.data, NULL, &log)))
        return cli_fail("log", rc);
    rc = run_action(log, action, argc, argv, &a);
    sl_log_close(log);
    return rc;
}

/*
 * cli_produce.c - `sluice produce TOPIC`: stdin's JSON lines become records.
 *
 * Each line is one record value, sent as written (without its line end);
 * blank lines are skipped. The key is the value of a top-level field of the
 * line's object (--key-field: a string, unescaped, or a number, as written)
 * or null, and the node's partitioner places keyed records. Every line is
 * checked to be JSON (cli_json.c) before it joins a batch.
 *
 * Batches go out as one PRODUCEBATCH of up to --batch records or, with
 * --partition, as that many pipelined PRODUCE ... PARTITION p whose replies
 * are read once all are sent. The node replies only once records are
 * durable, so a record whose reply came back is produced. At a bad line the
 * batch before it is sent first: the count in the error line is exactly the
 * records before the bad one.
 */
#include "runtime/cli.h"

#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH_MAX 100000

static const char produce_usage[] =
    "usage: sluice produce TOPIC [options] < records.jsonl\n"
    "\n"
    "Sends each line of stdin, a JSON value, as one record of TOPIC (blank\n"
    "lines are skipped) and prints a summary on stderr.\n"
    "\n"
    "  --key-field F     key each record by the top-level string or number\n"
    "                    field F of its JSON object (default: null key, the\n"
    "                    node spreads records over partitions)\n"
    "  --partition P     send every record to partition P\n"
    "  --batch N         records per round trip (default 500, at most 100000)\n" CLI_SERVER_USAGE;

/* Records waiting to be sent, their keys and values in one buffer. */
typedef struct batch {
    char *text;
    size_t len, cap;
    size_t *spans;  /* per record: key start, key length, value start, length */
    int64_t *lines; /* per record: its line number */
    size_t count;
} batch_t;

typedef struct producer {
    cli_server_t server;
    const char *topic, *key_field;
    int64_t partition; /* -1: the node picks */
    int64_t batch_size;
    char partition_text[24];
    redisContext *c;
    batch_t batch;
    const char **argv; /* one command being built */
    size_t *lens;
    int64_t produced;
    char failure[512]; /* why it stopped; empty while all is well */
} producer_t;

static int parse_produce(int argc, char **argv, producer_t *p)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"key-field", required_argument, NULL, 'k'},
        {"partition", required_argument, NULL, 'p'},
        {"batch", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&p->server, c, optarg);
        if (c == 'h')
            return fputs(produce_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("produce", "produce", c, argv);
        if (server < 0)
            return cli_usage_error("produce", "produce", "--port needs a number from 1 to 65535");
        if (c == 'k' && strlen(optarg) >= CLI_JSON_FIELD_MAX)
            return cli_usage_error("produce", "produce", "--key-field is too long");
        if (c == 'k')
            p->key_field = optarg;
        if (c == 'p' && cli_parse_int(optarg, &p->partition))
            return cli_usage_error("produce", "produce", "--partition needs a partition number");
        if (c == 'b' && (cli_parse_int(optarg, &p->batch_size) || p->batch_size < 1 ||
                         p->batch_size > BATCH_MAX))
            return cli_usage_error("produce", "produce", "--batch needs a number from 1 to 100000");
    }
    if (argc - optind != 1)
        return cli_usage_error("produce", "produce",
                               argc == optind ? "which topic?" : "too many arguments");
    p->topic = argv[optind];
    return 0;
}

/* Records why producing stopped (printf-style); returns -1. */
static int stop(producer_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int stop(producer_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->failure, sizeof p->failure, fmt, ap);
    va_end(ap);
    return -1;
}

static int batch_reserve(batch_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = (b->len + more) * 2;
    char *text = sl_realloc(b->text, cap);
    if (!text)
        return -1;
    b->text = text;
    b->cap = cap;
    return 0;
}

/* Copies a record into the batch; key->type ABSENT means a null key. */
static int batch_add(batch_t *b, const cli_json_t *key, const char *value, size_t value_len,
                     int64_t line)
{
    size_t key_room = key->type == CLI_JSON_ABSENT ? 0 : key->length;
    if (batch_reserve(b, key_room + value_len))
        return -1;
    size_t *span = b->spans + 4 * b->count;
    span[0] = b->len;
    span[1] = key_room;
    if (key->type == CLI_JSON_STRING)
        span[1] = cli_json_unescape(key->value, key->length, b->text + b->len);
    else if (key->type == CLI_JSON_NUMBER)
        memcpy(b->text + b->len, key->value, key_room);
    b->len += span[1];
    span[2] = b->len;
    span[3] = value_len;
    memcpy(b->text + b->len, value, value_len);
    b->len += value_len;
    b->lines[b->count++] = line;
    return 0;
}

static int is_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!strchr(" \t\r", line[i]))
            return 0;
    return 1;
}

/* Checks one line and adds it to the batch. */
static int add_line(producer_t *p, const char *line, size_t len, int64_t number)
{
    cli_json_t json;
    if (is_blank(line, len))
        return 0;
    if (cli_json_scan(line, len, p->key_field, &json))
        return stop(p, "line %lld: invalid JSON at column %zu: %s", (long long)number, json.column,
                    json.error);
    if (p->key_field && json.type == CLI_JSON_ABSENT)
        return stop(p, "line %lld: no top-level field '%s'", (long long)number, p->key_field);
    if (p->key_field && json.type == CLI_JSON_OTHER)
        return stop(p, "line %lld: field '%s' is not a string or a number", (long long)number,
                    p->key_field);
    if (batch_add(&p->batch, &json, line, len, number))
        return stop(p, "out of memory");
    return 0;
}

/* Puts record i's key and value at argv[at] and argv[at + 1]. */
static void put_record(producer_t *p, size_t i, size_t at)
{
    const size_t *span = p->batch.spans + 4 * i;
    p->argv[at] = p->batch.text + span[0];
    p->lens[at] = span[1];
    p->argv[at + 1] = p->batch.text + span[2];
    p->lens[at + 1] = span[3];
}

static redisReply *read_reply(producer_t *p)
{
    void *reply = NULL;
    if (redisGetReply(p->c, &reply) != REDIS_OK)
        stop(p, "connection to the node failed: %s", p->c->errstr[0] ? p->c->errstr : "closed");
    return reply;
}

/* PRODUCEBATCH topic key value [key value ...] -> [[partition, offset], ...] */
static int send_batch(producer_t *p)
{
    const batch_t *b = &p->batch;
    p->argv[0] = "PRODUCEBATCH";
    p->lens[0] = strlen(p->argv[0]);
    for (size_t i = 0; i < b->count; i++)
        put_record(p, i, 2 + 2 * i);
    if (redisAppendCommandArgv(p->c, (int)(2 + 2 * b->count), p->argv, p->lens) != REDIS_OK)
        return stop(p, "%s", p->c->errstr);
    redisReply *r = read_reply(p);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR && b->count == 1)
        rc = stop(p, "line %lld: %s", (long long)b->lines[0], r->str);
    else if (r->type == REDIS_REPLY_ERROR)
        rc = stop(p, "lines %lld-%lld: %s", (long long)b->lines[0],
                  (long long)b->lines[b->count - 1], r->str);
    else if (!cli_reply_is_array(r, b->count))
        rc = stop(p, "unexpected reply from the node");
    else
        p->produced += (int64_t)b->count;
    freeReplyObject(r);
    return rc;
}

/* PRODUCE topic key value PARTITION p -> [partition, offset], pipelined:
 * every command is sent before the first reply is read. */
static int send_pipelined(producer_t *p)
{
    const batch_t *b = &p->batch;
    p->argv[0] = "PRODUCE";
    p->lens[0] = strlen(p->argv[0]);
    p->argv[4] = "PARTITION";
    p->lens[4] = strlen(p->argv[4]);
    p->argv[5] = p->partition_text;
    p->lens[5] = strlen(p->partition_text);
    for (size_t i = 0; i < b->count; i++) {
        put_record(p, i, 2);
        if (redisAppendCommandArgv(p->c, 6, p->argv, p->lens) != REDIS_OK)
            return stop(p, "%s", p->c->errstr);
    }
    int rc = 0;
    for (size_t i = 0; i < b->count; i++) {
        redisReply *r = read_reply(p);
        if (!r)
            return -1;
        if (r->type == REDIS_REPLY_ERROR && rc == 0)
            rc = stop(p, "line %lld: %s", (long long)b->lines[i], r->str);
        p->produced += r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
    }
    return rc;
}

static int flush_batch(producer_t *p)
{
    if (p->batch.count == 0)
        return 0;
    int rc = p->partition < 0 ? send_batch(p) : send_pipelined(p);
    p->batch.count = p->batch.len = 0;
    return rc;
}

/* Reads stdin to its end or to the first bad line, sending full batches. */
static void produce_stdin(producer_t *p)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int64_t number = 0;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)n - (n > 0 && line[n - 1] == '\n');
        len -= len > 0 && line[len - 1] == '\r';
        rc = add_line(p, line, len, ++number);
        if (rc == 0 && (int64_t)p->batch.count == p->batch_size)
            rc = flush_batch(p);
    }
    if (rc == 0 && ferror(stdin))
        stop(p, "reading stdin: %s", strerror(errno));
    free(line);
    if (!p->c->err)
        flush_batch(p);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int produce(producer_t *p)
{
    p->argv[1] = p->topic;
    p->lens[1] = strlen(p->topic);
    double start = seconds_now();
    produce_stdin(p);
    double took = seconds_now() - start;
    if (p->failure[0]) {
        fprintf(stderr, "sluice: produce: %s; stopped after producing %lld record%s to %s\n",
                p->failure, (long long)p->produced, p->produced == 1 ? "" : "s", p->topic);
        return 1;
    }
    fprintf(stderr, "produced %lld record%s to %s in %.3f s (%.0f records/s)\n",
            (long long)p->produced, p->produced == 1 ? "" : "s", p->topic, took,
            took > 0 ? (double)p->produced / took : 0.0);
    return 0;
}

/* Allocates the batch and the command words for --batch records. */
static int producer_alloc(producer_t *p)
{
    size_t words = 2 + 2 * (size_t)p->batch_size + 4; /* PRODUCE needs 6 */
    p->batch.spans = sl_malloc(4 * (size_t)p->batch_size * sizeof *p->batch.spans);
    p->batch.lines = sl_malloc((size_t)p->batch_size * sizeof *p->batch.lines);
    p->argv = sl_malloc(words * sizeof *p->argv);
    p->lens = sl_malloc(words * sizeof *p->lens);
    if (p->batch.spans && p->batch.lines && p->argv && p->lens)
        return 0;
    fprintf(stderr, "sluice: produce: out of memory\n");
    return -1;
}

static void producer_free(producer_t *p)
{
    if (p->c)
        redisFree(p->c);
    sl_free(p->batch.text);
    sl_free(p->batch.spans);
    sl_free(p->batch.lines);
    sl_free(p->argv);
    sl_free(p->lens);
}

int cli_produce(int argc, char **argv)
{
    producer_t p = {.partition = -1, .batch_size = 500};
    cli_server_init(&p.server);
    int rc = parse_produce(argc, argv, &p);
    if (rc)
        return rc == 1 ? 0 : rc;
    snprintf(p.partition_text, sizeof p.partition_text, "%lld", (long long)p.partition);
    if (producer_alloc(&p) || !(p.c = cli_connect(&p.server)))
        rc = 1;
    else
        rc = produce(&p);
    producer_free(&p);
    return rc;
}

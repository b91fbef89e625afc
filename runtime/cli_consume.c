/*
 * cli_consume.c - `sluice consume TOPIC`: print a topic's records, one a
 * line, reading partitions directly or as a member of a consumer group.
 *
 * Without --group the client keeps its own positions: it starts each
 * partition at its end offset (only new records, as kafka-console-consumer
 * does), its start (--from-beginning) or a given offset, and reads them in
 * rounds of FETCH, one per partition. Only a round that found nothing
 * anywhere is followed by blocking FETCHes (--follow), each waiting a share
 * of a second, so a busy partition never waits on an idle one.
 *
 * With --group the node keeps the positions: GROUP FETCH hands out records
 * and, once a batch is printed and flushed, GROUP COMMIT records the next
 * offset of every partition in it. Printing before committing makes this
 * at-least-once: a consumer killed in between prints those records again.
 * --from-beginning and --time first rewind the group with SEEK.
 *
 * SIGINT stops after the request in flight (hiredis resumes a read that a
 * signal interrupts, so a blocked fetch ends at its timeout, within a
 * second); a second SIGINT kills at once.
 */
#include "runtime/cli.h"

#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define FETCH_MAX 1000 /* records asked for per request */
#define BLOCK_MS  1000 /* how long --follow waits per idle round */

static const char consume_usage[] =
    "usage: sluice consume TOPIC [options]\n"
    "\n"
    "Prints records of TOPIC, one a line: the value, or with --print-key\n"
    "KEY<TAB>VALUE, or with --verbose PARTITION OFFSET TIMESTAMP KEY VALUE\n"
    "tab-separated (tabs and newlines inside shown as \\t and \\n, a null as\n"
    "(null)). Stops when nothing is left, after -n records, or on SIGINT.\n"
    "\n"
    "  --from-beginning  start at the first record (with --group: rewind the\n"
    "                    group to it)\n"
    "  --offset N        start every partition at offset N (kept within each\n"
    "                    partition's range; not with --group)\n"
    "  --time MS         rewind the group to the first records at or after MS\n"
    "                    milliseconds since the epoch (needs --group)\n"
    "  --group G         consume as group G: start where it left off and commit\n"
    "                    what was printed; without it, start at the end\n"
    "  --follow          keep waiting for new records\n"
    "  -n N              stop after N records\n"
    "  --partition P     read partition P only (not with --group)\n"
    "  --print-key       print KEY<TAB>VALUE\n"
    "  --verbose         print PARTITION OFFSET TIMESTAMP KEY VALUE\n" CLI_SERVER_USAGE;

typedef struct consumer {
    cli_server_t server;
    const char *topic, *group;
    int from_beginning, follow, print_key, verbose;
    int64_t offset, time, limit, partition; /* -1: not given */
    int64_t printed;
    redisContext *c;
    long long partitions;
    long long *start, *end; /* per partition, when consuming began */
    long long *next;        /* per partition: next offset to fetch, or to commit (-1: none) */
} consumer_t;

/* One record of a FETCH or GROUP FETCH reply; pointers into the reply. */
typedef struct record {
    long long partition, offset, timestamp;
    const redisReply *key, *value;
} record_t;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int signal_number)
{
    (void)signal_number;
    interrupted = 1;
}

/* Sets one option; 2 (printed) when its value is bad. */
static int set_option(consumer_t *k, int opt, const char *value)
{
    static const char numeric[] = "otnp";
    static const char *const names[] = {"--offset", "--time", "-n", "--partition"};
    int64_t *numbers[] = {&k->offset, &k->time, &k->limit, &k->partition};
    const char *at = memchr(numeric, opt, sizeof numeric - 1);
    char message[64];
    if (at && cli_parse_int(value, numbers[at - numeric])) {
        snprintf(message, sizeof message, "%s needs a non-negative number", names[at - numeric]);
        return cli_usage_error("consume", "consume", message);
    }
    k->from_beginning |= opt == 'b';
    k->follow |= opt == 'f';
    k->print_key |= opt == 'k';
    k->verbose |= opt == 'v';
    if (opt == 'g')
        k->group = value;
    return 0;
}

/* Rejects options that do not go together; 2 (printed) if some do not. */
static int check_options(const consumer_t *k)
{
    const char *problem = NULL;
    if (k->from_beginning + (k->offset >= 0) + (k->time >= 0) > 1)
        problem = "use only one of --from-beginning, --offset and --time";
    else if (k->time >= 0 && !k->group)
        problem = "--time needs --group (it rewinds a group)";
    else if (k->group && k->offset >= 0)
        problem = "--offset does not go with --group (use --from-beginning or --time)";
    else if (k->group && k->partition >= 0)
        problem = "--partition does not go with --group";
    else if (k->limit == 0)
        problem = "-n needs a positive number";
    return problem ? cli_usage_error("consume", "consume", problem) : 0;
}

static int parse_consume(int argc, char **argv, consumer_t *k)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"from-beginning", no_argument, NULL, 'b'},
        {"offset", required_argument, NULL, 'o'},
        {"time", required_argument, NULL, 't'},
        {"group", required_argument, NULL, 'g'},
        {"follow", no_argument, NULL, 'f'},
        {"partition", required_argument, NULL, 'p'},
        {"print-key", no_argument, NULL, 'k'},
        {"verbose", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":n:", options, NULL)) != -1) {
        int server = cli_server_option(&k->server, c, optarg);
        if (c == 'h')
            return fputs(consume_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("consume", "consume", c, argv);
        if (server < 0)
            return cli_usage_error("consume", "consume", "--port needs a number from 1 to 65535");
        if (server == 0)
            rc = set_option(k, c, optarg);
    }
    if (rc)
        return rc;
    if (argc - optind != 1)
        return cli_usage_error("consume", "consume",
                               argc == optind ? "which topic?" : "too many arguments");
    k->topic = argv[optind];
    return check_options(k);
}

/* Whether consuming is over: interrupted, or -n records printed. */
static int done(const consumer_t *k)
{
    return interrupted || (k->limit > 0 && k->printed >= k->limit);
}

/* How many records to ask for next. */
static long long want(const consumer_t *k)
{
    int64_t left = k->limit > 0 ? k->limit - k->printed : FETCH_MAX;
    return left < FETCH_MAX ? left : FETCH_MAX;
}

/* Writes a key or value; with tabs, tab-separated output is escaped too. */
static void print_field(const redisReply *field, int tabs)
{
    if (field->type != REDIS_REPLY_STRING) {
        fputs("(null)", stdout);
        return;
    }
    const char *p = field->str, *end = field->str + field->len;
    for (const char *run = p; p <= end; p++) {
        if (p < end && *p != '\n' && !(tabs && *p == '\t'))
            continue;
        fwrite(run, 1, (size_t)(p - run), stdout);
        if (p < end)
            fputs(*p == '\n' ? "\\n" : "\\t", stdout);
        run = p + 1;
    }
}

static void print_record(consumer_t *k, const record_t *r)
{
    int tabs = k->verbose || k->print_key;
    if (k->verbose)
        printf("%lld\t%lld\t%lld\t", r->partition, r->offset, r->timestamp);
    if (tabs) {
        print_field(r->key, 1);
        putchar('\t');
    }
    print_field(r->value, tabs);
    putchar('\n');
    k->printed++;
}

/* Flushes what was printed; -1 (printed) if it could not be written. */
static int flush_output(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    fprintf(stderr, "sluice: consume: writing the records failed: %s\n", strerror(errno));
    return -1;
}

/* Reads element i of a reply: [offset, timestamp, key, value, headers]
 * (FETCH, base 0) or [topic, partition, ...the same] (GROUP FETCH, base 2). */
static int parse_record(const redisReply *reply, size_t i, size_t base, record_t *out)
{
    const redisReply *r = reply->element[i];
    if (!cli_reply_is_array(r, base + 5) || (base && cli_reply_int(r, 1, &out->partition)) ||
        cli_reply_int(r, base, &out->offset) || cli_reply_int(r, base + 1, &out->timestamp))
        return -1;
    out->key = r->element[base + 2];
    out->value = r->element[base + 3];
    return 0;
}

/* Prints the records of a FETCH reply (base 0; all from partition) or a
 * GROUP FETCH reply (base 2) and notes the next offset of each partition.
 * Returns how many, or -1 after reporting a reply of another shape. */
static long long print_records(consumer_t *k, const redisReply *r, size_t base, long long partition)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return cli_unexpected_reply("consume"), -1;
    for (size_t i = 0; i < r->elements; i++) {
        record_t rec = {.partition = partition};
        if (parse_record(r, i, base, &rec) || rec.partition < 0 || rec.partition >= k->partitions)
            return cli_unexpected_reply("consume"), -1;
        print_record(k, &rec);
        k->next[rec.partition] = rec.offset + 1;
    }
    return (long long)r->elements;
}

/* Fills the partition count, starts and ends from a TOPIC DESCRIBE reply:
 * [..., partitions, [[partition, start, end, bytes, segments], ...]]. */
static int read_partitions(consumer_t *k, const redisReply *r)
{
    if (!cli_reply_is_array(r, 6) || !cli_reply_is_array(r->element[5], 1))
        return cli_unexpected_reply("consume"), -1;
    const redisReply *rows = r->element[5];
    k->partitions = (long long)rows->elements;
    k->start = sl_calloc((size_t)k->partitions, sizeof *k->start);
    k->end = sl_calloc((size_t)k->partitions, sizeof *k->end);
    k->next = sl_calloc((size_t)k->partitions, sizeof *k->next);
    if (!k->start || !k->end || !k->next)
        return fprintf(stderr, "sluice: consume: out of memory\n"), -1;
    for (long long i = 0; i < k->partitions; i++)
        if (cli_reply_int(rows->element[i], 1, &k->start[i]) ||
            cli_reply_int(rows->element[i], 2, &k->end[i]))
            return cli_unexpected_reply("consume"), -1;
    return 0;
}

static int describe_topic(consumer_t *k)
{
    const char *argv[] = {"TOPIC", "DESCRIBE", k->topic};
    redisReply *r = cli_run(k->c, "consume", 3, argv, NULL);
    if (!r)
        return -1;
    int rc = read_partitions(k, r);
    freeReplyObject(r);
    return rc;
}

/* Where each partition starts without a group: end, start or --offset. */
static void choose_start(consumer_t *k)
{
    for (long long i = 0; i < k->partitions; i++) {
        long long at = k->from_beginning ? k->start[i] : k->end[i];
        if (k->offset >= 0)
            at = k->offset < k->start[i] ? k->start[i]
                 : k->offset > k->end[i] ? k->end[i]
                                         : k->offset;
        k->next[i] = at;
    }
}

/* FETCH topic partition offset COUNT n [BLOCK ms] -> [[offset, timestamp,
 * key, value, headers], ...]; prints them. Returns how many, or -1. */
static long long fetch_partition(consumer_t *k, long long partition, long long block_ms)
{
    char numbers[4][24];
    const char *argv[] = {"FETCH", k->topic,   numbers[0], numbers[1],
                          "COUNT", numbers[2], "BLOCK",    numbers[3]};
    snprintf(numbers[0], sizeof numbers[0], "%lld", partition);
    snprintf(numbers[1], sizeof numbers[1], "%lld", k->next[partition]);
    snprintf(numbers[2], sizeof numbers[2], "%lld", want(k));
    snprintf(numbers[3], sizeof numbers[3], "%lld", block_ms);
    redisReply *r = cli_run(k->c, "consume", block_ms > 0 ? 8 : 6, argv, NULL);
    if (!r)
        return -1;
    long long n = print_records(k, r, 0, partition);
    freeReplyObject(r);
    return n;
}

/* Reads the partitions in rounds until done, or (without --follow) until a
 * round finds nothing. */
static int consume_partitions(consumer_t *k)
{
    if (k->partition >= k->partitions)
        return fprintf(stderr, "sluice: consume: %s has no partition %lld (it has %lld)\n",
                       k->topic, (long long)k->partition, k->partitions),
               1;
    long long first = k->partition >= 0 ? k->partition : 0;
    long long last = k->partition >= 0 ? k->partition : k->partitions - 1;
    long long block_ms = BLOCK_MS / (last - first + 1), got = 1;
    block_ms = block_ms > 0 ? block_ms : 1;
    choose_start(k);
    while (!done(k) && (got > 0 || k->follow)) {
        long long idle = got == 0, n = 0;
        got = 0;
        for (long long p = first; p <= last && !done(k) && n >= 0; p++) {
            n = fetch_partition(k, p, idle ? block_ms : -1);
            got += n;
        }
        if (n < 0 || flush_output())
            return 1;
    }
    return 0;
}

/* SEEK group topic TIME ms: rewinds the group (--from-beginning: to 0). */
static int seek_group(consumer_t *k)
{
    char ms[24];
    const char *argv[] = {"SEEK", k->group, k->topic, "TIME", ms};
    snprintf(ms, sizeof ms, "%lld", (long long)(k->time >= 0 ? k->time : 0));
    redisReply *r = cli_run(k->c, "consume", 5, argv, NULL);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* GROUP FETCH group topic COUNT n [BLOCK ms] -> [[topic, partition, offset,
 * timestamp, key, value, headers], ...]; prints them and notes the offsets
 * to commit. Returns how many, or -1. */
static long long fetch_group(consumer_t *k)
{
    char count[24], block[24];
    const char *argv[] = {"GROUP", "FETCH", k->group, k->topic, "COUNT", count, "BLOCK", block};
    snprintf(count, sizeof count, "%lld", want(k));
    snprintf(block, sizeof block, "%d", BLOCK_MS);
    redisReply *r = cli_run(k->c, "consume", k->follow ? 8 : 6, argv, NULL);
    if (!r)
        return -1;
    long long n = print_records(k, r, 2, -1);
    freeReplyObject(r);
    return n;
}

/* GROUP COMMIT group topic partition offset for every partition printed
 * from since the last commit, pipelined. */
static int commit_group(consumer_t *k)
{
    char numbers[2][24];
    const char *argv[] = {"GROUP", "COMMIT", k->group, k->topic, numbers[0], numbers[1]};
    long long sent = 0;
    int rc = 0;
    for (long long p = 0; p < k->partitions; p++) {
        if (k->next[p] < 0)
            continue;
        snprintf(numbers[0], sizeof numbers[0], "%lld", p);
        snprintf(numbers[1], sizeof numbers[1], "%lld", k->next[p]);
        if (redisAppendCommandArgv(k->c, 6, argv, NULL) != REDIS_OK)
            return fprintf(stderr, "sluice: consume: %s\n", k->c->errstr), -1;
        k->next[p] = -1;
        sent++;
    }
    while (sent-- > 0) {
        redisReply *r = cli_next_reply(k->c, "consume, committing");
        if (!r)
            return -1;
        if (r->type == REDIS_REPLY_ERROR && rc == 0) {
            cli_reply_error("consume, committing", r);
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}

/* Fetches, prints and commits batches until done, or (without --follow)
 * until a fetch finds nothing. */
static int consume_group(consumer_t *k)
{
    long long got = 1;
    for (long long p = 0; p < k->partitions; p++)
        k->next[p] = -1;
    if ((k->from_beginning || k->time >= 0) && seek_group(k))
        return 1;
    while (!done(k) && (got > 0 || k->follow)) {
        got = fetch_group(k);
        if (got < 0 || flush_output() || commit_group(k))
            return 1;
    }
    return 0;
}

int cli_consume(int argc, char **argv)
{
    consumer_t k = {.offset = -1, .time = -1, .limit = -1, .partition = -1};
    struct sigaction on_sigint = {.sa_handler = on_interrupt, .sa_flags = SA_RESETHAND};
    cli_server_init(&k.server);
    int rc = parse_consume(argc, argv, &k);
    if (rc)
        return rc == 1 ? 0 : rc;
    sigemptyset(&on_sigint.sa_mask);
    sigaction(SIGINT, &on_sigint, NULL);
    if (!(k.c = cli_connect(&k.server)) || describe_topic(&k))
        rc = 1;
    else
        rc = k.group ? consume_group(&k) : consume_partitions(&k);
    if (k.c)
        redisFree(k.c);
    sl_free(k.start);
    sl_free(k.end);
    sl_free(k.next);
    return rc;
}

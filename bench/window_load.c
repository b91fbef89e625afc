/*
 * window_load.c - pre-loads the input of window_bench.sh (issue 5,
 * "Benchmark") into a data directory a node then opens: N JSON records of
 * about 100 bytes in topic "in", appended through the storage API in
 * batches of 1000 (PRODUCE over RESP would take longer than the run).
 *
 *   window_load DIR N keyed|unkeyed [PARTITIONS]
 *
 * Record i (k = a hash of i modulo 100,000, so 100 K distinct users in a
 * random order; a = 1 + another hash modulo 1000):
 *
 *   value     {"user":"u<k, 5 digits>","amount":<a>,"ts":<t>,"pad":"abc..."}
 *             padded to exactly 100 bytes
 *   timestamp t = 1,700,000,000,000 + i * 600,000 / N (ms): the records
 *             span 10 minutes of event time, in order, whatever N, so a
 *             1-minute tumbling window holds 10 windows per key
 *   key       keyed: "u<k>", in Kafka's partition for the key (as PRODUCE
 *             would put it), so an aggregate can run on the source;
 *             unkeyed: none (a null key), one partition per batch in turn
 *
 * Also prints the distinct (user, 1-minute window) pairs: the entries a
 * tumbling 1-minute aggregate's store ends up with.
 *
 * DIR must not exist (it is created; the log is closed cleanly at the end).
 * "in" has PARTITIONS partitions (default 2) and fsync=never: it is only
 * read by the benchmark. Prints the records, bytes and seconds taken.
 */
#include "storage/storage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define LOAD_BATCH   1000
#define MAX_PARTS    64
#define VALUE_BYTES  100
#define USERS        100000
#define SPAN_MS      600000
#define BASE_TS      1700000000000LL
#define KEY_BYTES    8
#define VALUE_BUFFER (VALUE_BYTES + 32)
#define WINDOW_MS    60000
#define MAX_WINDOWS  (SPAN_MS / WINDOW_MS + 2) /* 1-minute windows the span touches */

typedef struct pending {
    sl_record_t recs[LOAD_BATCH];
    char keys[LOAD_BATCH][KEY_BYTES];
    char values[LOAD_BATCH][VALUE_BUFFER];
    size_t count;
} pending_t;

static void die(const char *what, int rc)
{
    fprintf(stderr, "window_load: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64: a well-mixed hash of the record number. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Record i's user: "u" + 5 digits, one of USERS. */
static void make_key(uint64_t i, char *key)
{
    snprintf(key, KEY_BYTES, "u%05u", (unsigned)(mix(i) % USERS));
}

/* Record i's value, exactly VALUE_BYTES long, with its user key. */
static int make_value(uint64_t i, uint64_t n, const char *key, char *value)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";
    unsigned amount = 1 + (unsigned)((mix(i) >> 32) % 1000);
    long long ts = BASE_TS + (long long)(i * SPAN_MS / n);
    int len = snprintf(value, VALUE_BUFFER, "{\"user\":\"%s\",\"amount\":%u,\"ts\":%lld,\"pad\":\"",
                       key, amount, ts);
    int pad = VALUE_BYTES - len - 2;
    if (len < 0 || pad < 1 || pad > (int)sizeof letters - 1) {
        fprintf(stderr, "window_load: value template too long\n");
        exit(1);
    }
    memcpy(value + len, letters, (size_t)pad);
    memcpy(value + len + pad, "\"}", 3);
    return VALUE_BYTES;
}

static void flush(sl_topic_t *in, int32_t part, pending_t *p)
{
    if (p->count == 0)
        return;
    int rc = sl_partition_append(sl_topic_partition(in, part), p->recs, p->count, NULL);
    if (rc)
        die("appending", rc);
    p->count = 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5 || (strcmp(argv[3], "keyed") && strcmp(argv[3], "unkeyed")))
        goto usage;
    const char *dir = argv[1];
    char *end;
    uint64_t n = strtoull(argv[2], &end, 10);
    long parts = argc == 5 ? strtol(argv[4], NULL, 10) : 2;
    int keyed = strcmp(argv[3], "keyed") == 0;
    if (*end || n == 0 || parts < 1 || parts > MAX_PARTS)
        goto usage;
    if (mkdir(dir, 0755))
        die(dir, -errno);

    sl_log_t *log;
    sl_topic_config_t cfg;
    sl_topic_t *in;
    sl_report_level(SL_WARN);
    int rc = sl_log_open(dir, NULL, &log);
    if (rc)
        die("opening the log", rc);
    sl_topic_config_default(&cfg);
    cfg.partitions = (int32_t)parts;
    cfg.fsync = SL_FSYNC_NEVER;
    if ((rc = sl_log_create_topic(log, "in", &cfg, &in)))
        die("creating topic in", rc);

    pending_t *pending = calloc((size_t)parts, sizeof *pending);
    if (!pending)
        die("allocating", -ENOMEM);
    static uint8_t seen[USERS][MAX_WINDOWS];
    uint64_t pairs = 0;
    double t0 = now();
    uint64_t bytes = 0;
    int32_t next = 0; /* unkeyed: the partition of the batch being filled */
    for (uint64_t i = 0; i < n; i++) {
        char key[KEY_BYTES];
        make_key(i, key);
        int32_t part = keyed ? sl_partition_for_key(key, strlen(key), (int32_t)parts) : next;
        pending_t *p = &pending[part];
        size_t k = p->count++;
        memcpy(p->keys[k], key, KEY_BYTES);
        int len = make_value(i, n, key, p->values[k]);
        p->recs[k] = (sl_record_t){.timestamp = BASE_TS + (int64_t)(i * SPAN_MS / n),
                                   .key = keyed ? (const uint8_t *)p->keys[k] : NULL,
                                   .key_len = keyed ? (int32_t)strlen(key) : -1,
                                   .value = (const uint8_t *)p->values[k],
                                   .value_len = len};
        unsigned user = (unsigned)(mix(i) % USERS);
        int64_t window = p->recs[k].timestamp / WINDOW_MS - BASE_TS / WINDOW_MS;
        pairs += !seen[user][window];
        seen[user][window] = 1;
        bytes += (uint64_t)len + (keyed ? strlen(key) : 0);
        if (p->count == LOAD_BATCH) {
            flush(in, part, p);
            if (!keyed)
                next = (int32_t)((next + 1) % parts);
        }
    }
    for (int32_t part = 0; part < (int32_t)parts; part++)
        flush(in, part, &pending[part]);
    double seconds = now() - t0;
    sl_log_close(log);
    free(pending);
    printf("window_load: %llu %s records (%llu bytes of keys and values) into %s/in, %ld "
           "partitions, in %.2f s (%.0f records/s); %llu distinct (user, 1-minute window) "
           "pairs\n",
           (unsigned long long)n, argv[3], (unsigned long long)bytes, dir, parts, seconds,
           (double)n / seconds, (unsigned long long)pairs);
    return 0;

usage:
    fprintf(stderr, "usage: window_load DIR N keyed|unkeyed [PARTITIONS]\n");
    return 2;
}

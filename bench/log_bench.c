/*
 * log_bench.c - throughput of the storage log, next to the limits of the
 * machine it runs on.
 *
 * What it measures, in one run, with one appending thread (plus the log's
 * own fsync thread):
 *
 *   append  records/s, MB/s of record values and MB/s written to the log
 *           for every mix of value size (100 B, 1 KiB), records per batch
 *           (1, 100, 1000), zstd level 1 (off, on) and fsync policy (never,
 *           interval 5 ms, always): 36 configurations, each on a fresh
 *           one-partition topic and bounded by time and bytes. Durable
 *           policies are pipelined the way a producer with many requests in
 *           flight drives a broker: sl_partition_append_nowait() per batch,
 *           and every WINDOW_BATCHES batches a wait for the end of the batch
 *           WINDOW_BATCHES / 2 back; the clock stops when the last record is
 *           durable. fsync=always with one record per batch is also run
 *           strictly synchronously (sl_partition_append(), one acknowledged
 *           append at a time), which is bound by fdatasync latency.
 *   read    records/s and MB/s of a reader going from offset 0 to the end of
 *           each fsync=never topic straight after it was written (so from the
 *           page cache: the CPU cost of reading). The count of records, their
 *           offsets and value bytes must equal what was appended, else the
 *           run stops with an error line and a non-zero exit.
 *   machine measured first, in the same run: write() of 512 MiB (-d) in
 *           1 MiB blocks plus one fdatasync to a file in the data directory
 *           (what `dd bs=1M conv=fdatasync` reports), the latency of a 4 KiB
 *           append + fdatasync, memcpy bandwidth, and zstd level 1 by itself
 *           on the same values (the CPU's ceiling for the zstd=on figures).
 *           The summary gives fsync=interval 1 KiB x 1000 append MB/s as a
 *           share of that disk figure.
 *
 * Before any of it, WARM_BYTES of memory are touched and freed (see
 * warm_memory()), and the load average is printed at the start and the end:
 * on a shared or virtual machine both move the figures a lot.
 *
 * MB is 10^6 bytes. Nothing is asserted about speed: the targets from the
 * issue are printed next to the figures for the reader to judge.
 *
 * Usage: log_bench [-t SECONDS] [-d MIB] [-m PATTERN] DATA_DIR
 *   -t  time bound per configuration (default 1.0)
 *   -d  size of the disk write test in MiB (default 512)
 *   -m  run only the configurations whose description contains PATTERN,
 *       e.g. -m 'value=100B batch=1000 zstd=on' (for profiling one of them)
 */
#include "storage/storage.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mntent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define POOL_RECORDS       4000         /* prepared records; a multiple of every batch size */
#define WINDOW_BATCHES     64           /* pipelined appends in flight: 32 to 64 batches */
#define VALUE_CAP_BYTES    1000000000LL /* stop a configuration after 1 GB of values */
#define MAX_RUNS           64
#define MIB                (1024 * 1024)
#define MEMCPY_BYTES       (256 * MIB)
#define MEMCPY_ROUNDS      4
#define WARM_BYTES         (3072LL * MIB)
#define ZSTD_FRAME_RECORDS 1000

static const int32_t value_sizes[] = {100, 1024};
static const int32_t batch_sizes[] = {1, 100, 1000};
static const sl_fsync_t policies[] = {SL_FSYNC_NEVER, SL_FSYNC_INTERVAL, SL_FSYNC_ALWAYS};
static const char *const policy_names[] = {"never", "interval", "always"};

/* Records ready to append: values and keys live in one arena. */
typedef struct record_pool {
    int32_t value_size;
    sl_record_t *records;
    uint8_t *arena;
} record_pool_t;

typedef struct run_config {
    int32_t value_size;
    int32_t batch;
    int zstd;
    sl_fsync_t fsync;
    int synchronous; /* one acknowledged append at a time */
} run_config_t;

typedef struct run_result {
    int64_t records;
    int64_t value_bytes;
    int64_t log_bytes;
    double seconds;
} run_result_t;

typedef struct bench {
    sl_log_t *log;
    const char *data_dir;
    double seconds;
    int64_t disk_test_bytes;
    const char *only; /* run the configurations whose description has this */
    record_pool_t pools[2];
    double disk_mbps;
    run_config_t append_configs[MAX_RUNS], read_configs[MAX_RUNS];
    run_result_t appends[MAX_RUNS], reads[MAX_RUNS];
    int append_count, read_count;
} bench_t;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static int report_error(const char *what, int rc)
{
    printf("error: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    return 1;
}

/* ---- records ---------------------------------------------------------- */

static const char *const words[] = {
    "fast",   "blue",    "order",  "ship",   "cart",    "promo", "mobile", "web",
    "return", "gift",    "sale",   "review", "store",   "paris", "berlin", "tokyo",
    "red",    "express", "bundle", "refund", "premium", "basic", "trial",  "renew",
    "search", "banner",  "email",  "push",   "home",    "shoes", "books",  "music",
};
static const char *const kinds[] = {"view", "click", "cart", "purchase"};

/* Fills room bytes with words picked at random, separated by spaces. */
static void put_words(uint8_t *out, size_t room, uint64_t *seed)
{
    size_t n = 0;
    while (n < room) {
        const char *w = words[next_random(seed) % (sizeof words / sizeof *words)];
        for (; *w && n < room; w++)
            out[n++] = (uint8_t)*w;
        if (n < room)
            out[n++] = ' ';
    }
}

/* Writes a JSON event of exactly size bytes: varying fields, then a "note"
 * of random words as padding, so zstd sees text of realistic entropy. */
static void fill_value(uint8_t *out, size_t size, uint64_t *seed)
{
    char head[192];
    uint64_t r = next_random(seed);
    int len = snprintf(head, sizeof head,
                       "{\"user\":\"u%llu\",\"item\":\"i%llu\",\"price\":%llu.%02llu,"
                       "\"kind\":\"%s\",\"note\":\"",
                       (unsigned long long)(r % 100000), (unsigned long long)((r >> 17) % 1000000),
                       (unsigned long long)((r >> 37) % 500), (unsigned long long)((r >> 46) % 100),
                       kinds[(r >> 53) % 4]);
    assert(len > 0 && (size_t)len + 2 <= size);
    memcpy(out, head, (size_t)len);
    put_words(out + len, size - (size_t)len - 2, seed);
    memcpy(out + size - 2, "\"}", 2);
}

#define KEY_ROOM 16

static int pool_fill(record_pool_t *pool, int32_t value_size)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)value_size;
    pool->value_size = value_size;
    pool->records = sl_calloc(POOL_RECORDS, sizeof *pool->records);
    pool->arena = sl_malloc((size_t)POOL_RECORDS * ((size_t)value_size + KEY_ROOM));
    if (!pool->records || !pool->arena)
        return -ENOMEM;
    for (size_t i = 0; i < POOL_RECORDS; i++) {
        uint8_t *value = pool->arena + i * ((size_t)value_size + KEY_ROOM);
        char *key = (char *)value + value_size;
        fill_value(value, (size_t)value_size, &seed);
        int key_len =
            snprintf(key, KEY_ROOM, "user-%llu", (unsigned long long)(next_random(&seed) % 100000));
        pool->records[i] = (sl_record_t){.timestamp = -1,
                                         .key = (const uint8_t *)key,
                                         .key_len = key_len,
                                         .value = value,
                                         .value_len = value_size};
    }
    return 0;
}

static void pool_free(record_pool_t *pool)
{
    sl_free(pool->records);
    sl_free(pool->arena);
}

static const record_pool_t *pool_for(const bench_t *b, int32_t value_size)
{
    return b->pools[0].value_size == value_size ? &b->pools[0] : &b->pools[1];
}

/* ---- output ----------------------------------------------------------- */

static void value_label(int32_t size, char *out, size_t room)
{
    if (size % 1024 == 0)
        snprintf(out, room, "%dKiB", size / 1024);
    else
        snprintf(out, room, "%dB", size);
}

/* "value=100B batch=1000 zstd=on fsync=never", padded into columns when
 * aligned is set. */
static void describe(const run_config_t *c, int aligned, char *out, size_t room)
{
    char value[16];
    value_label(c->value_size, value, sizeof value);
    const char *mode = c->fsync == SL_FSYNC_NEVER ? "" : c->synchronous ? "sync" : "pipelined";
    const char *format = aligned ? "value=%-4s batch=%-4d zstd=%-3s fsync=%-8s %-9s"
                                 : "value=%s batch=%d zstd=%s fsync=%s %s";
    snprintf(out, room, format, value, c->batch, c->zstd ? "on" : "off", policy_names[c->fsync],
             mode);
}

/* A rate in a fixed width of 8: "  4.52 M", " 11.30 k", "   312  ". */
static void format_rate(double rate, char *out, size_t room)
{
    if (rate >= 1e6)
        snprintf(out, room, "%6.2f M", rate / 1e6);
    else if (rate >= 1e3)
        snprintf(out, room, "%6.2f k", rate / 1e3);
    else
        snprintf(out, room, "%6.0f  ", rate);
}

static void print_result(const char *kind, const run_config_t *c, const run_result_t *r)
{
    char what[96], rate[32];
    describe(c, 1, what, sizeof what);
    format_rate((double)r->records / r->seconds, rate, sizeof rate);
    printf("%-7s %s %s rec/s %8.1f MB/s  log %8.1f MB/s  %10lld rec in %5.2f s\n", kind, what, rate,
           (double)r->value_bytes / r->seconds / 1e6, (double)r->log_bytes / r->seconds / 1e6,
           (long long)r->records, r->seconds);
}

/* ---- one configuration ------------------------------------------------ */

static int create_topic(bench_t *b, const run_config_t *c, sl_partition_t **out)
{
    char name[96];
    snprintf(name, sizeof name, "bench-%d-%d-%s-%s%s", c->value_size, c->batch,
             c->zstd ? "zstd" : "plain", policy_names[c->fsync], c->synchronous ? "-sync" : "");
    if (sl_log_topic(b->log, name))
        sl_log_delete_topic(b->log, name); /* a leftover of an interrupted run */
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    cfg.compression = c->zstd ? SL_COMPRESSION_ZSTD : SL_COMPRESSION_NONE;
    cfg.compression_level = 1;
    cfg.fsync = c->fsync;
    sl_topic_t *topic;
    int rc = sl_log_create_topic(b->log, name, &cfg, &topic);
    if (rc)
        return report_error("creating a topic", rc);
    *out = sl_topic_partition(topic, 0);
    return 0;
}

/* Appends batches from the pool until the time or byte bound, then waits
 * for the last one to be durable. Pipelined: at most WINDOW_BATCHES batches
 * in flight, topped up WINDOW_BATCHES / 2 at a time. */
static int append_timed(const bench_t *b, sl_partition_t *p, const run_config_t *c,
                        run_result_t *res)
{
    const record_pool_t *pool = pool_for(b, c->value_size);
    int pipelined = c->fsync != SL_FSYNC_NEVER && !c->synchronous;
    int64_t cap = VALUE_CAP_BYTES / c->value_size, end = 0, batches = 0;
    int64_t check_every = c->synchronous || c->batch >= 256 ? 1 : 256 / c->batch;
    double start = now_seconds(), deadline = start + b->seconds;
    int rc = 0;
    for (;;) {
        const sl_record_t *batch = pool->records + (batches * c->batch) % POOL_RECORDS;
        int64_t first;
        rc = c->synchronous ? sl_partition_append(p, batch, (size_t)c->batch, &first)
                            : sl_partition_append_nowait(p, batch, (size_t)c->batch, &first);
        if (rc)
            return report_error("appending", rc);
        end = first + c->batch;
        batches++;
        if (pipelined && batches % WINDOW_BATCHES == 0 &&
            (rc = sl_partition_await_durable(p, end - WINDOW_BATCHES / 2 * c->batch, -1)))
            return report_error("waiting for durability", rc);
        if (end >= cap || (batches % check_every == 0 && now_seconds() >= deadline))
            break;
    }
    if ((rc = sl_partition_await_durable(p, end, -1)))
        return report_error("waiting for durability", rc);
    res->seconds = now_seconds() - start;
    res->records = end;
    res->value_bytes = end * c->value_size;
    res->log_bytes = sl_partition_size_bytes(p);
    return 0;
}

/* Reads the partition from offset 0 and checks it holds what was written. */
static int read_back(sl_partition_t *p, const run_result_t *written, run_result_t *res)
{
    sl_reader_t *r;
    sl_record_t rec;
    int64_t records = 0, value_bytes = 0, misplaced = 0;
    double start = now_seconds();
    int rc = sl_reader_open(p, 0, &r);
    if (rc)
        return report_error("opening a reader", rc);
    while ((rc = sl_reader_next(r, &rec)) == 1) {
        misplaced += rec.offset != records;
        records++;
        value_bytes += rec.value_len;
    }
    res->seconds = now_seconds() - start;
    sl_reader_close(r);
    if (rc < 0)
        return report_error("reading", rc);
    if (records != written->records || value_bytes != written->value_bytes || misplaced) {
        printf("error: read back %lld records (%lld value bytes, %lld at the wrong offset), "
               "appended %lld records (%lld value bytes)\n",
               (long long)records, (long long)value_bytes, (long long)misplaced,
               (long long)written->records, (long long)written->value_bytes);
        return 1;
    }
    res->records = records;
    res->value_bytes = value_bytes;
    res->log_bytes = sl_partition_size_bytes(p);
    return 0;
}

/* Appends (and for fsync=never reads back) one configuration on its own
 * topic, then deletes the topic so that its pages leave the cache. */
static int run_one(bench_t *b, const run_config_t *c)
{
    sl_partition_t *p;
    run_result_t *appended = &b->appends[b->append_count];
    char what[96];
    describe(c, 0, what, sizeof what);
    assert(b->append_count < MAX_RUNS && b->read_count < MAX_RUNS);
    if (b->only && !strstr(what, b->only))
        return 0;
    if (create_topic(b, c, &p))
        return 1;
    int failed = append_timed(b, p, c, appended);
    if (!failed) {
        b->append_configs[b->append_count++] = *c;
        print_result("append", c, appended);
    }
    if (!failed && c->fsync == SL_FSYNC_NEVER) {
        failed = read_back(p, appended, &b->reads[b->read_count]);
        if (!failed)
            b->read_configs[b->read_count++] = *c;
    }
    char name[SL_TOPIC_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", sl_partition_topic_name(p));
    int rc = sl_log_delete_topic(b->log, name);
    if (rc && !failed)
        failed = report_error("deleting a topic", rc);
    return failed;
}

static int run_all(bench_t *b)
{
    for (size_t v = 0; v < 2; v++)
        for (size_t n = 0; n < 3; n++)
            for (int zstd = 0; zstd <= 1; zstd++)
                for (size_t f = 0; f < 3; f++) {
                    run_config_t c = {value_sizes[v], batch_sizes[n], zstd, policies[f], 0};
                    if (run_one(b, &c))
                        return 1;
                    c.synchronous = 1;
                    if (c.fsync == SL_FSYNC_ALWAYS && c.batch == 1 && run_one(b, &c))
                        return 1;
                }
    for (int i = 0; i < b->read_count; i++)
        print_result("read", &b->read_configs[i], &b->reads[i]);
    return 0;
}

/* ---- the machine's limits --------------------------------------------- */

static int write_all(int fd, const uint8_t *data, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -ENOSPC;
        data += w;
        n -= (size_t)w;
    }
    return 0;
}

/* write() 1 MiB blocks to a new file in dir, then one fdatasync: the
 * throughput `dd bs=1M conv=fdatasync` reports. Blocks differ (random bytes,
 * numbered), so neither zero detection nor deduplication can help. */
static int disk_write_test(bench_t *b)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/disk-test.bin", b->data_dir);
    uint8_t *block = sl_malloc(MIB);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    int rc = !block ? -ENOMEM : fd < 0 ? -errno : 0;
    uint64_t seed = 88172645463325252ull;
    for (size_t i = 0; block && i < MIB / 8; i++) {
        uint64_t word = next_random(&seed);
        memcpy(block + 8 * i, &word, 8);
    }
    double start = now_seconds();
    for (int64_t i = 0; rc == 0 && i < b->disk_test_bytes / MIB; i++) {
        memcpy(block, &i, sizeof i);
        rc = write_all(fd, block, MIB);
    }
    if (rc == 0 && fdatasync(fd))
        rc = -errno;
    double seconds = now_seconds() - start;
    if (fd >= 0)
        close(fd);
    unlink(path);
    sl_free(block);
    if (rc)
        return report_error("disk write test", rc);
    b->disk_mbps = (double)b->disk_test_bytes / seconds / 1e6;
    printf("disk    write %lld MiB in 1 MiB blocks + fdatasync      %8.1f MB/s  (%.2f s)\n",
           (long long)(b->disk_test_bytes / MIB), b->disk_mbps, seconds);
    return 0;
}

/* Appends 4 KiB and fdatasyncs, again and again for about 0.5 s: the floor
 * under one acknowledged append with fsync=always. */
static int sync_latency_test(const bench_t *b)
{
    char path[PATH_MAX];
    uint8_t block[4096];
    snprintf(path, sizeof path, "%s/sync-test.bin", b->data_dir);
    memset(block, 'x', sizeof block);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : 0, count = 0;
    double start = now_seconds();
    while (rc == 0 && count < 5000 && now_seconds() - start < 0.5) {
        if ((rc = write_all(fd, block, sizeof block)) == 0 && fdatasync(fd))
            rc = -errno;
        count++;
    }
    double seconds = now_seconds() - start;
    if (fd >= 0)
        close(fd);
    unlink(path);
    if (rc)
        return report_error("sync latency test", rc);
    printf("disk    append 4 KiB + fdatasync, one at a time          %8.1f us each  (%d in %.2f "
           "s)\n",
           seconds / count * 1e6, count, seconds);
    return 0;
}

/* Compresses (or decompresses) one frame over and over for about 0.3 s;
 * returns frames per second, or a negative zstd error. */
static double zstd_frames_per_second(ZSTD_CCtx *cctx, ZSTD_DCtx *dctx, void *out, size_t room,
                                     const void *in, size_t in_len, size_t *out_len)
{
    double start = now_seconds(), seconds;
    int64_t frames = 0;
    do {
        size_t n = cctx ? ZSTD_compressCCtx(cctx, out, room, in, in_len, 1)
                        : ZSTD_decompressDCtx(dctx, out, room, in, in_len);
        if (ZSTD_isError(n))
            return -1;
        *out_len = n;
        frames++;
    } while ((seconds = now_seconds() - start) < 0.3);
    return (double)frames / seconds;
}

/* zstd level 1 by itself on the values of ZSTD_FRAME_RECORDS records (what
 * one batch of the log holds, less a few bytes of framing per record): the
 * ceiling this CPU puts on the zstd=on configurations. */
static int zstd_test(const record_pool_t *pool)
{
    size_t value = (size_t)pool->value_size, plain_len = ZSTD_FRAME_RECORDS * value;
    size_t room = ZSTD_compressBound(plain_len), packed_len = 0, unpacked_len = 0;
    uint8_t *plain = sl_malloc(plain_len), *packed = sl_malloc(room);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    double packs = -1, unpacks = -1;
    int rc = plain && packed && cctx && dctx ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < ZSTD_FRAME_RECORDS; i++)
        memcpy(plain + i * value, pool->records[i].value, value);
    if (rc == 0)
        packs = zstd_frames_per_second(cctx, NULL, packed, room, plain, plain_len, &packed_len);
    if (rc == 0 && packs > 0)
        unpacks =
            zstd_frames_per_second(NULL, dctx, plain, plain_len, packed, packed_len, &unpacked_len);
    if (rc == 0 && (unpacks < 0 || unpacked_len != plain_len))
        rc = sl_error_set(SL_ECOMPRESSION, "zstd level 1 round trip failed");
    sl_free(plain);
    sl_free(packed);
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
    if (rc)
        return report_error("zstd test", rc);
    char label[16];
    value_label(pool->value_size, label, sizeof label);
    printf("zstd    level 1 alone, frames of %d x %-4s values  compress %7.1f MB/s = %5.2f M "
           "rec/s, decompress %7.1f MB/s = %5.2f M rec/s (ratio %.1f)\n",
           ZSTD_FRAME_RECORDS, label, packs * (double)plain_len / 1e6,
           packs * ZSTD_FRAME_RECORDS / 1e6, unpacks * (double)plain_len / 1e6,
           unpacks * ZSTD_FRAME_RECORDS / 1e6, (double)plain_len / (double)packed_len);
    return 0;
}

/* Touches and frees WARM_BYTES of memory. On a virtual machine the first
 * touch of a guest page costs a hypervisor fault; without this the first
 * configurations would pay it for their page cache and the later ones,
 * reusing pages freed by deleted topics, would not. */
static void warm_memory(void)
{
    uint8_t *block = sl_malloc(WARM_BYTES);
    if (block)
        memset(block, 1, WARM_BYTES);
    sl_free(block);
}

static int memcpy_test(void)
{
    uint8_t *from = sl_malloc(MEMCPY_BYTES), *to = sl_malloc(MEMCPY_BYTES);
    if (!from || !to) {
        sl_free(from);
        sl_free(to);
        return report_error("memcpy test", -ENOMEM);
    }
    memset(from, 1, MEMCPY_BYTES);
    memset(to, 2, MEMCPY_BYTES); /* fault the pages in before timing */
    double start = now_seconds();
    for (int i = 0; i < MEMCPY_ROUNDS; i++) {
        from[i] = (uint8_t)i;
        memcpy(to, from, MEMCPY_BYTES);
    }
    double seconds = now_seconds() - start;
    volatile uint8_t sink = to[MEMCPY_ROUNDS - 1];
    (void)sink;
    sl_free(from);
    sl_free(to);
    printf("memory  memcpy %d MiB x %d                              %8.2f GB/s\n",
           MEMCPY_BYTES / MIB, MEMCPY_ROUNDS, (double)MEMCPY_BYTES * MEMCPY_ROUNDS / seconds / 1e9);
    return 0;
}

/* ---- header and summary ----------------------------------------------- */

/* The device and filesystem type of the mount holding path. */
static void mount_of(const char *path, char *device, char *type, size_t room)
{
    char real[PATH_MAX];
    size_t best = 0;
    snprintf(device, room, "?");
    snprintf(type, room, "?");
    FILE *mounts = setmntent("/proc/self/mounts", "r");
    if (!realpath(path, real) || !mounts) {
        if (mounts)
            endmntent(mounts);
        return;
    }
    struct mntent *m;
    while ((m = getmntent(mounts))) {
        size_t n = strlen(m->mnt_dir);
        int inside = !strncmp(real, m->mnt_dir, n) &&
                     (real[n] == '/' || real[n] == 0 || !strcmp(m->mnt_dir, "/"));
        if (inside && n >= best) {
            best = n;
            snprintf(device, room, "%s", m->mnt_fsname);
            snprintf(type, room, "%s", m->mnt_type);
        }
    }
    endmntent(mounts);
}

static void cpu_model(char *out, size_t room)
{
    char line[256];
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(out, room, "unknown cpu");
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && colon) {
            snprintf(out, room, "%s", colon + 2);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    }
    if (f)
        fclose(f);
}

/* The load averages: other work on the machine skews every figure here. */
static void print_load(const char *when)
{
    double load[3];
    if (getloadavg(load, 3) == 3)
        printf("load    %s: %.2f %.2f %.2f (1, 5, 15 min averages of runnable threads)\n", when,
               load[0], load[1], load[2]);
}

static void print_header(const bench_t *b)
{
    char device[PATH_MAX], type[PATH_MAX], cpu[256];
    mount_of(b->data_dir, device, type, sizeof device);
    cpu_model(cpu, sizeof cpu);
    printf("sluice log_bench\n");
    printf("cores   %ld online (%s)\n", sysconf(_SC_NPROCESSORS_ONLN), cpu);
    printf("data    %s  (filesystem %s on %s)\n", b->data_dir, type, device);
    if (!strcmp(type, "tmpfs") || !strcmp(type, "ramfs"))
        printf("WARNING the data directory is in memory: no figure below measures a disk\n");
#ifdef NDEBUG
    printf("build   NDEBUG (Release)\n");
#else
    printf("build   assertions on: not a Release build, figures are pessimistic\n");
#endif
    print_load("at start");
    printf("bounds  %g s or %lld MB of values per configuration; pipelined appends keep "
           "%d to %d batches in flight\n\n",
           b->seconds, VALUE_CAP_BYTES / 1000000, WINDOW_BATCHES / 2, WINDOW_BATCHES);
}

static int same_config(const run_config_t *a, const run_config_t *b)
{
    return a->value_size == b->value_size && a->batch == b->batch && a->zstd == b->zstd &&
           a->fsync == b->fsync && a->synchronous == b->synchronous;
}

static const run_result_t *find(const run_config_t *configs, const run_result_t *results, int n,
                                const run_config_t *want)
{
    for (int i = 0; i < n; i++)
        if (same_config(&configs[i], want))
            return &results[i];
    return NULL;
}

static void print_target(const char *what, const run_result_t *r, double target)
{
    if (!r)
        return; /* not run (-m) */
    double rate = (double)r->records / r->seconds;
    printf("target  %-44s %6.2f M rec/s  (issue: >= %.1f M)  %s\n", what, rate / 1e6, target / 1e6,
           rate >= target ? "met" : "MISSED");
}

static void print_summary(const bench_t *b)
{
    const run_config_t small = {100, 1000, 0, SL_FSYNC_NEVER, 0};
    const run_config_t small_zstd = {100, 1000, 1, SL_FSYNC_NEVER, 0};
    const run_config_t interval = {1024, 1000, 0, SL_FSYNC_INTERVAL, 0};
    int n = b->append_count;
    const run_result_t *r = find(b->append_configs, b->appends, n, &interval);
    printf("\n");
    if (r) {
        double mbps = (double)r->value_bytes / r->seconds / 1e6;
        double share = mbps / b->disk_mbps * 100;
        printf("ratio   fsync=interval value=1KiB batch=1000 zstd=off append %.1f MB/s = %.1f%% "
               "of disk %.1f MB/s  (issue: >= 80%%)  %s\n",
               mbps, share, b->disk_mbps, share >= 80 ? "met" : "MISSED");
    }
    print_target("append value=100B batch=1000 zstd=off never",
                 find(b->append_configs, b->appends, n, &small), 4e6);
    print_target("read   value=100B batch=1000 zstd=off never",
                 find(b->read_configs, b->reads, b->read_count, &small), 8e6);
    print_target("append value=100B batch=1000 zstd=on  never",
                 find(b->append_configs, b->appends, n, &small_zstd), 1.5e6);
}

/* ---- main ------------------------------------------------------------- */

static int parse_args(int argc, char **argv, bench_t *b)
{
    int opt;
    long mib = 512;
    b->seconds = 1.0;
    while ((opt = getopt(argc, argv, "t:d:m:")) != -1) {
        if (opt == 't')
            b->seconds = strtod(optarg, NULL);
        else if (opt == 'd')
            mib = strtol(optarg, NULL, 10);
        else if (opt == 'm')
            b->only = optarg;
        else
            return -1;
    }
    if (optind != argc - 1 || b->seconds <= 0 || mib <= 0)
        return -1;
    b->disk_test_bytes = (int64_t)mib * MIB;
    b->data_dir = argv[optind];
    return 0;
}

int main(int argc, char **argv)
{
    static bench_t b;
    int failed = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse_args(argc, argv, &b)) {
        fprintf(stderr, "usage: %s [-t SECONDS] [-d MIB] [-m PATTERN] DATA_DIR\n", argv[0]);
        return 2;
    }
    int rc = sl_log_open(b.data_dir, NULL, &b.log);
    if (rc)
        return report_error("opening the log", rc);
    print_header(&b);
    if ((rc = pool_fill(&b.pools[0], value_sizes[0])) ||
        (rc = pool_fill(&b.pools[1], value_sizes[1]))) {
        report_error("preparing records", rc);
        goto done;
    }
    warm_memory();
    if (disk_write_test(&b) || sync_latency_test(&b) || memcpy_test() || zstd_test(&b.pools[0]) ||
        zstd_test(&b.pools[1]))
        goto done;
    printf("\n");
    if (run_all(&b))
        goto done;
    print_summary(&b);
    print_load("at end");
    failed = 0;
done:
    pool_free(&b.pools[0]);
    pool_free(&b.pools[1]);
    sl_log_close(b.log);
    return failed;
}

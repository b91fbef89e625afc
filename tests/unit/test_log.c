/*
 * test_log.c - topics and partitions: append, read, lookups against an
 * in-memory reference, segment rolling, concurrent readers, waiting,
 * truncation, fsync policies, topic lifecycle and configuration.
 */
#include "testutil.h"

#include "storage/io.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sl_log_t *open_log(const char *dir, tu_clock_t *clock)
{
    sl_log_t *log;
    sl_log_options_t o = tu_options(clock);
    assert_int_equal(sl_log_open(dir, &o, &log), 0);
    return log;
}

/* Appends n records "v<offset>" with key "k<offset % 50>" as one batch. */
static int64_t append_numbered(sl_partition_t *p, int n, int64_t ts)
{
    sl_record_t recs[1000];
    char values[1000][32], keys[1000][16];
    int64_t base = sl_partition_end_offset(p), first;
    assert_true(n <= 1000);
    for (int i = 0; i < n; i++) {
        snprintf(values[i], sizeof values[i], "v%lld", (long long)(base + i));
        snprintf(keys[i], sizeof keys[i], "k%lld", (long long)((base + i) % 50));
        recs[i] = tu_record(keys[i], values[i], ts);
    }
    assert_int_equal(sl_partition_append(p, recs, (size_t)n, &first), 0);
    assert_int_equal(first, base);
    return first;
}

/* Reads from offset to the end, checking every value is "v<offset>". */
static int64_t check_numbered(sl_partition_t *p, int64_t from, int64_t expected_end)
{
    sl_reader_t *r;
    sl_record_t rec;
    int64_t next = from, n = 0;
    char want[32];
    int rc;
    assert_int_equal(sl_reader_open(p, from, &r), 0);
    while ((rc = sl_reader_next(r, &rec)) == 1) {
        assert_int_equal(rec.offset, next);
        snprintf(want, sizeof want, "v%lld", (long long)rec.offset);
        assert_int_equal(rec.value_len, (int)strlen(want));
        assert_memory_equal(rec.value, want, strlen(want));
        next++;
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(next, expected_end);
    sl_reader_close(r);
    return n;
}

static void test_append_and_read_back(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "clicks", "fsync=never", NULL);
    assert_int_equal(append_numbered(p, 1, -1), 0);
    assert_int_equal(append_numbered(p, 100, -1), 1);
    assert_int_equal(append_numbered(p, 1000, -1), 101);
    assert_int_equal(sl_partition_end_offset(p), 1101);
    assert_int_equal(check_numbered(p, 0, 1101), 1101);
    assert_int_equal(check_numbered(p, 555, 1101), 546);
    assert_int_equal(check_numbered(p, 1101, 1101), 0);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_reopen_after_clean_close_keeps_everything(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "t", "segment.bytes=4096", "compression=zstd", NULL);
    for (int i = 0; i < 50; i++)
        append_numbered(p, 20 + i, -1);
    int32_t segments = sl_partition_segment_count(p);
    assert_true(segments > 3);
    sl_log_close(log);
    snprintf(path, sizeof path, "%s/topics/.clean-shutdown", dir);
    assert_true(tu_exists(path));
    snprintf(path, sizeof path, "%s/topics/t/0/00000000000000000000.index", dir);
    assert_true(tu_exists(path));
    log = open_log(dir, NULL);
    sl_topic_t *t = sl_log_topic(log, "t");
    assert_non_null(t);
    assert_int_equal(sl_topic_config(t)->compression, SL_COMPRESSION_ZSTD);
    assert_int_equal(sl_topic_config(t)->segment_bytes, 4096);
    p = sl_topic_partition(t, 0);
    assert_int_equal(sl_partition_segment_count(p), segments);
    int64_t end = sl_partition_end_offset(p);
    assert_int_equal(end, 50 * 20 + 49 * 50 / 2);
    check_numbered(p, 0, end);
    append_numbered(p, 5, -1);
    check_numbered(p, 0, end + 5);
    sl_log_close(log);
    tu_rmdir(dir);
}

/* A model of the partition: per offset, its timestamp. */
typedef struct model {
    int64_t *ts;
    int64_t n;
} model_t;

static int64_t model_first_at_or_after(const model_t *m, int64_t ts)
{
    for (int64_t i = 0; i < m->n; i++)
        if (m->ts[i] >= ts)
            return i;
    return m->n;
}

static void check_lookups(sl_partition_t *p, const model_t *m)
{
    for (int i = 0; i < 300; i++) {
        int64_t offset = rand() % (m->n + 5), got;
        sl_reader_t *r;
        sl_record_t rec;
        assert_int_equal(sl_reader_open(p, offset, &r), 0);
        int rc = sl_reader_next(r, &rec);
        if (offset < m->n) {
            assert_int_equal(rc, 1);
            assert_int_equal(rec.offset, offset);
            assert_int_equal(rec.timestamp, m->ts[offset]);
        } else {
            assert_int_equal(rc, 0);
        }
        sl_reader_close(r);
        int64_t ts = 1000 + rand() % 12000;
        assert_int_equal(sl_partition_offset_for_time(p, ts, &got), 0);
        assert_int_equal(got, model_first_at_or_after(m, ts));
    }
}

static void test_offset_and_time_lookups_match_reference(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p =
        tu_topic(log, "t", "fsync=never", "segment.bytes=20000", "index.interval.bytes=512", NULL);
    model_t m = {calloc(100000, sizeof(int64_t)), 0};
    srand(42);
    sl_record_t recs[200];
    char value[64];
    for (int b = 0; b < 400; b++) {
        int n = 1 + rand() % 60;
        int64_t base_ts = 1000 + b * 25; /* rising, with local disorder */
        for (int i = 0; i < n; i++) {
            int64_t ts = base_ts + rand() % 400 - 200;
            snprintf(value, sizeof value, "payload-%d-%d", b, i);
            recs[i] = tu_record("key", value, ts);
            m.ts[m.n + i] = ts;
        }
        assert_int_equal(sl_partition_append(p, recs, (size_t)n, NULL), 0);
        m.n += n;
    }
    assert_true(sl_partition_segment_count(p) > 5);
    check_lookups(p, &m);
    sl_log_close(log);
    log = open_log(dir, NULL); /* indexes from files */
    p = sl_topic_partition(sl_log_topic(log, "t"), 0);
    check_lookups(p, &m);
    sl_log_close(log);
    snprintf(path, sizeof path, "rm %s/topics/t/0/*index %s/topics/.clean-shutdown", dir, dir);
    assert_int_equal(system(path), 0);
    log = open_log(dir, NULL); /* indexes rebuilt by scanning */
    p = sl_topic_partition(sl_log_topic(log, "t"), 0);
    check_lookups(p, &m);
    sl_log_close(log);
    free(m.ts);
    tu_rmdir(dir);
}

static void test_segments_roll_by_size_and_by_age(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *by_size = tu_topic(log, "size", "fsync=never", "segment.bytes=2048", NULL);
    for (int i = 0; i < 30; i++)
        append_numbered(by_size, 10, 1000);
    int32_t count = sl_partition_segment_count(by_size);
    assert_true(count >= 2);
    assert_true(sl_partition_size_bytes(by_size) <= (int64_t)count * 2048);
    assert_true(sl_partition_size_bytes(by_size) > (int64_t)(count - 1) * 1800);
    check_numbered(by_size, 0, 300);
    sl_partition_t *by_age = tu_topic(log, "age", "fsync=never", "segment.ms=60000", NULL);
    append_numbered(by_age, 1, 1000);
    append_numbered(by_age, 1, 61000);
    assert_int_equal(sl_partition_segment_count(by_age), 1);
    append_numbered(by_age, 1, 61001);
    assert_int_equal(sl_partition_segment_count(by_age), 2);
    check_numbered(by_age, 0, 3);
    assert_int_equal(sl_partition_roll(by_age), 0);
    assert_int_equal(sl_partition_segment_count(by_age), 3);
    assert_int_equal(sl_partition_roll(by_age), 0); /* empty active: no new segment */
    assert_int_equal(sl_partition_segment_count(by_age), 3);
    sl_log_close(log);
    tu_rmdir(dir);
}

typedef struct producer {
    sl_partition_t *p;
    int batches, per_batch;
} producer_t;

/* Appends batches of records whose value is their own offset, so a reader
 * can check them; a single producer per partition keeps offsets known.
 * cmocka asserts only work on the main thread, so failures abort here. */
static void *produce(void *arg)
{
    producer_t *pr = arg;
    for (int b = 0; b < pr->batches; b++)
        if (pr->per_batch == 1) {
            sl_record_t r = tu_record("k", "v", -1);
            if (sl_partition_append(pr->p, &r, 1, NULL))
                abort();
        } else {
            append_numbered(pr->p, pr->per_batch, -1);
        }
    return NULL;
}

/* A reader that follows the appender sees every record exactly once, in
 * order, waiting for data without polling. */
static void test_concurrent_reader_sees_every_record(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "live", "fsync=never", "segment.bytes=65536", NULL);
    producer_t pr = {p, 2000, 50};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, produce, &pr), 0);
    sl_reader_t *r;
    sl_record_t rec;
    char want[32];
    int64_t next = 0, total = (int64_t)pr.batches * pr.per_batch;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    while (next < total) {
        int rc = sl_reader_next(r, &rec);
        if (rc == 0) {
            assert_true(sl_partition_wait(p, next, 10000) == 1);
            continue;
        }
        assert_int_equal(rc, 1);
        assert_int_equal(rec.offset, next);
        snprintf(want, sizeof want, "v%lld", (long long)next);
        assert_memory_equal(rec.value, want, strlen(want));
        next++;
    }
    pthread_join(thread, NULL);
    assert_int_equal(sl_reader_next(r, &rec), 0);
    sl_reader_close(r);
    assert_true(sl_partition_segment_count(p) > 10);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_wait_times_out_then_wakes_on_append(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "w", NULL);
    assert_int_equal(sl_partition_wait(p, 0, 20), 0);
    producer_t pr = {p, 1, 2};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, produce, &pr), 0);
    assert_int_equal(sl_partition_wait(p, 0, 10000), 1);
    pthread_join(thread, NULL);
    assert_int_equal(sl_partition_wait(p, 0, 0), 1);
    sl_log_close(log);
    tu_rmdir(dir);
}

static int64_t listened_end;

static void listener(void *arg, sl_partition_t *p, int64_t end)
{
    (void)arg;
    (void)p;
    __atomic_store_n(&listened_end, end, __ATOMIC_SEQ_CST);
}

/* Each policy acknowledges only durable data; always shares syncs. */
static void test_fsync_policies_acknowledge_durable_appends(void **state)
{
    (void)state;
    static const char *const policies[] = {"fsync=never", "fsync=interval", "fsync=always"};
    char *dir = tu_mkdtemp();
    sl_log_t *log;
    sl_log_options_t o = {.listener = listener};
    assert_int_equal(sl_log_open(dir, &o, &log), 0);
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        sl_partition_t *p = tu_topic(log, name, policies[i], NULL);
        unsigned long long syncs = sl_io_sync_count();
        append_numbered(p, 10, -1);
        assert_int_equal(sl_partition_end_offset(p), 10);
        assert_int_equal(__atomic_load_n(&listened_end, __ATOMIC_SEQ_CST), 10);
        if (i > 0)
            assert_true(sl_io_sync_count() > syncs);
        __atomic_store_n(&listened_end, 0, __ATOMIC_SEQ_CST);
    }
    /* eight producers with fsync=always: fewer syncs than appends */
    sl_partition_t *p = tu_topic(log, "group", "fsync=always", NULL);
    producer_t pr = {p, 100, 1};
    pthread_t threads[8];
    unsigned long long syncs = sl_io_sync_count();
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, produce, &pr), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(sl_partition_end_offset(p), 800);
    assert_true(sl_io_sync_count() - syncs < 800);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_pipelined_appends_await_durability(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "pipe", "fsync=interval", "fsync.interval.ms=20", NULL);
    sl_record_t r = tu_record("k", "v", -1);
    int64_t first = -1;
    for (int i = 0; i < 100; i++)
        assert_int_equal(sl_partition_append_nowait(p, &r, 1, &first), 0);
    assert_int_equal(first, 99);
    assert_int_equal(sl_partition_await_durable(p, 100, 10000), 0);
    assert_int_equal(sl_partition_end_offset(p), 100);
    assert_int_equal(sl_partition_await_durable(p, 101, 10), SL_ETIMEDOUT);
    sl_log_close(log);
    tu_rmdir(dir);
}

/* Many partitions queued on the flusher while it syncs others: each must
 * be synced, none lost or freed from under the flusher (regression: a
 * partition re-queued during its sync once corrupted the flusher's list). */
static void test_flusher_serves_many_busy_partitions(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_topic_config_t cfg;
    sl_topic_t *t;
    sl_topic_config_default(&cfg);
    cfg.partitions = 8;
    cfg.fsync_interval_ms = 1;
    assert_int_equal(sl_log_create_topic(log, "busy", &cfg, &t), 0);
    sl_record_t r = tu_record("k", "v", -1);
    int64_t ends[8] = {0};
    for (int i = 0; i < 4000; i++) {
        int64_t first;
        assert_int_equal(sl_partition_append_nowait(sl_topic_partition(t, i % 8), &r, 1, &first),
                         0);
        ends[i % 8] = first + 1;
    }
    for (int i = 0; i < 8; i++) {
        assert_int_equal(sl_partition_await_durable(sl_topic_partition(t, i), ends[i], 10000), 0);
        assert_int_equal(ends[i], 500);
    }
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_truncate_removes_the_tail(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "tr", "segment.bytes=1024", "fsync=never", NULL);
    for (int i = 0; i < 40; i++)
        append_numbered(p, 5, -1);
    assert_true(sl_partition_segment_count(p) > 3);
    assert_int_equal(sl_partition_truncate(p, 102), SL_EINVALID); /* inside a batch */
    assert_non_null(strstr(sl_error_detail(), "inside a batch"));
    sl_alloc_fail_after(0); /* reading the segment fails: that, not "inside a batch" */
    int rc = sl_partition_truncate(p, 100);
    sl_alloc_fail_after(-1);
    assert_int_equal(rc, -ENOMEM);
    assert_non_null(strstr(sl_error_detail(), "reading its segment"));
    assert_int_equal(sl_partition_end_offset(p), 200);
    assert_int_equal(sl_partition_truncate(p, 100), 0);
    assert_int_equal(sl_partition_end_offset(p), 100);
    check_numbered(p, 0, 100);
    append_numbered(p, 5, -1);
    check_numbered(p, 0, 105);
    sl_log_close(log);
    log = open_log(dir, NULL);
    p = sl_topic_partition(sl_log_topic(log, "tr"), 0);
    check_numbered(p, 0, 105);
    assert_int_equal(sl_partition_truncate(p, 0), 0);
    assert_int_equal(sl_partition_end_offset(p), 0);
    assert_int_equal(tu_count(p, 0), 0);
    assert_int_equal(sl_partition_truncate(p, 5), SL_EINVALID);
    sl_log_close(log);
    tu_rmdir(dir);
}

static int collect_name(void *arg, sl_topic_t *t)
{
    strcat(arg, sl_topic_name(t));
    strcat(arg, " ");
    return 0;
}

static void test_topic_lifecycle(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), names[256] = "", path[4096];
    sl_log_t *log = open_log(dir, NULL);
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    cfg.partitions = 3;
    sl_topic_t *t;
    assert_int_equal(sl_log_create_topic(log, "b", &cfg, &t), 0);
    assert_int_equal(sl_log_create_topic(log, "a", &cfg, NULL), 0);
    assert_int_equal(sl_log_create_topic(log, "b", &cfg, NULL), SL_EEXISTS);
    assert_non_null(strstr(sl_error_detail(), "already exists"));
    assert_non_null(sl_topic_partition(t, 2));
    assert_null(sl_topic_partition(t, 3));
    sl_log_foreach_topic(log, collect_name, names);
    assert_string_equal(names, "a b ");
    sl_partition_t *p = sl_topic_partition(t, 1);
    append_numbered(p, 3, -1);
    sl_reader_t *r;
    sl_record_t rec;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    assert_int_equal(sl_log_delete_topic(log, "b"), 0);
    assert_int_equal(sl_reader_next(r, &rec), SL_EDELETED);
    sl_reader_close(r);
    assert_null(sl_log_topic(log, "b"));
    assert_int_equal(sl_log_delete_topic(log, "b"), SL_ENOTFOUND);
    snprintf(path, sizeof path, "%s/topics/b", dir);
    assert_false(tu_exists(path));
    assert_int_equal(sl_log_create_topic(log, "b", &cfg, &t), 0);
    assert_int_equal(sl_partition_end_offset(sl_topic_partition(t, 1)), 0);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_bad_names_and_settings_are_refused(void **state)
{
    (void)state;
    static const char *const bad_names[] = {"", ".", "..", "a/b", "sp ace", "deleted~x", "é"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++)
        assert_int_equal(sl_topic_name_check(bad_names[i]), SL_EINVALID);
    char long_name[300];
    memset(long_name, 'a', 250);
    long_name[250] = 0;
    assert_int_equal(sl_topic_name_check(long_name), SL_EINVALID);
    long_name[249] = 0;
    assert_int_equal(sl_topic_name_check(long_name), 0);
    sl_topic_config_t c;
    sl_topic_config_default(&c);
    assert_int_equal(sl_topic_config_set(&c, "partitions", "0"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "partitions"));
    assert_int_equal(sl_topic_config_set(&c, "partitions", "4x"), SL_EINVALID);
    assert_int_equal(sl_topic_config_set(&c, "fsync", "sometimes"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "never|interval|always"));
    assert_int_equal(sl_topic_config_set(&c, "colour", "red"), SL_EINVALID);
    assert_int_equal(sl_topic_config_set(&c, "retention.ms", "-2"), SL_EINVALID);
    assert_int_equal(sl_topic_config_set(&c, "cleanup.policy", "compact"), 0);
    assert_int_equal(c.cleanup, SL_CLEANUP_COMPACT);
    assert_int_equal(sl_topic_config_set(&c, "retention.bytes", "1000000"), 0);
    assert_int_equal(c.retention_bytes, 1000000);
    assert_true(c.min_cleanable_dirty_ratio == 0.5);
    assert_int_equal(sl_topic_config_set(&c, "min.cleanable.dirty.ratio", "0.25"), 0);
    assert_true(c.min_cleanable_dirty_ratio == 0.25);
    assert_int_equal(sl_topic_config_set(&c, "min.cleanable.dirty.ratio", "1.5"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "decimal from 0 to 1"));
    assert_int_equal(sl_topic_config_set(&c, "min.cleanable.dirty.ratio", "half"), SL_EINVALID);
    char text[1024];
    sl_topic_config_t back;
    sl_topic_config_format(&c, text, sizeof text);
    assert_non_null(strstr(text, "min.cleanable.dirty.ratio=0.25\n"));
    sl_topic_config_default(&back);
    assert_int_equal(sl_topic_config_set(&back, "min.cleanable.dirty.ratio", "0.25"), 0);
    assert_true(back.min_cleanable_dirty_ratio == c.min_cleanable_dirty_ratio);
}

static void test_record_limits_and_keys_are_enforced(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "small", "max.batch.bytes=1024", NULL);
    static char big[2000];
    memset(big, 'x', sizeof big - 1);
    sl_record_t r = tu_record("k", big, -1);
    assert_int_equal(sl_partition_append(p, &r, 1, NULL), SL_ETOOBIG);
    assert_non_null(strstr(sl_error_detail(), "small/0"));
    assert_int_equal(sl_partition_append(p, &r, 0, NULL), SL_EINVALID);
    sl_partition_t *c = tu_topic(log, "compacted", "cleanup.policy=compact", NULL);
    r = tu_record(NULL, "v", -1);
    assert_int_equal(sl_partition_append(c, &r, 1, NULL), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "needs a key"));
    assert_int_equal(sl_partition_end_offset(c), 0);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_data_directory_is_locked(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL), *second;
    assert_int_equal(sl_log_open(dir, NULL, &second), -EBUSY);
    assert_non_null(strstr(sl_error_detail(), "in use"));
    sl_log_close(log);
    assert_int_equal(sl_log_open(dir, NULL, &second), 0);
    sl_log_close(second);
    tu_rmdir(dir);
}

static void test_reader_limit_stops_early(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir, NULL);
    sl_partition_t *p = tu_topic(log, "lim", "fsync=never", NULL);
    append_numbered(p, 10, -1);
    append_numbered(p, 10, -1);
    sl_reader_t *r;
    sl_record_t rec;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    sl_reader_set_limit(r, 15);
    int n = 0;
    while (sl_reader_next(r, &rec) == 1)
        n++;
    assert_int_equal(n, 15);
    assert_int_equal(sl_reader_position(r), 15);
    sl_reader_set_limit(r, INT64_MAX);
    assert_int_equal(sl_reader_next(r, &rec), 1);
    assert_int_equal(rec.offset, 15);
    sl_reader_close(r);
    sl_log_close(log);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_read_back),
        cmocka_unit_test(test_reopen_after_clean_close_keeps_everything),
        cmocka_unit_test(test_offset_and_time_lookups_match_reference),
        cmocka_unit_test(test_segments_roll_by_size_and_by_age),
        cmocka_unit_test(test_concurrent_reader_sees_every_record),
        cmocka_unit_test(test_wait_times_out_then_wakes_on_append),
        cmocka_unit_test(test_fsync_policies_acknowledge_durable_appends),
        cmocka_unit_test(test_pipelined_appends_await_durability),
        cmocka_unit_test(test_flusher_serves_many_busy_partitions),
        cmocka_unit_test(test_truncate_removes_the_tail),
        cmocka_unit_test(test_topic_lifecycle),
        cmocka_unit_test(test_bad_names_and_settings_are_refused),
        cmocka_unit_test(test_record_limits_and_keys_are_enforced),
        cmocka_unit_test(test_data_directory_is_locked),
        cmocka_unit_test(test_reader_limit_stops_early),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

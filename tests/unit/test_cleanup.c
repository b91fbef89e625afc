/*
 * test_cleanup.c - retention (by time, by bytes) and compaction, each
 * checked against a reference model of what must remain; compaction
 * waiting for its dirty ratio.
 */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The segments on disk: base offsets and file sizes, sorted. */
typedef struct disk_segment {
    int64_t base;
    long size;
} disk_segment_t;

static int compare_base(const void *a, const void *b)
{
    const disk_segment_t *x = a, *y = b;
    return (x->base > y->base) - (x->base < y->base);
}

static int list_disk_segments(const char *dir, const char *topic, disk_segment_t *out, int max)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/topics/%s/0", dir, topic);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len != 24 || strcmp(e->d_name + 20, ".log"))
            continue;
        char file[4400];
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        assert_true(n < max);
        out[n].base = atoll(e->d_name);
        out[n++].size = tu_file_size(file);
    }
    closedir(d);
    qsort(out, (size_t)n, sizeof *out, compare_base);
    return n;
}

/* Appends batches of 10 records with timestamps rising by 1000 per batch. */
static void fill(sl_partition_t *p, int batches)
{
    sl_record_t recs[10];
    char values[10][40];
    for (int b = 0; b < batches; b++) {
        for (int i = 0; i < 10; i++) {
            snprintf(values[i], sizeof values[i], "value-%d-%d", b, i);
            recs[i] = tu_record("k", values[i], 1000 * (int64_t)b + i);
        }
        assert_int_equal(sl_partition_append(p, recs, 10, NULL), 0);
    }
}

/* Model of time retention: segment i (not the last) holds timestamps up to
 * 1000 * (last batch in it) + 9; a prefix of expired segments goes. */
static void test_retention_by_time_matches_model(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    tu_clock_t clock = {0};
    sl_log_t *log;
    sl_log_options_t o = tu_options(&clock);
    assert_int_equal(sl_log_open(dir, &o, &log), 0);
    sl_partition_t *p =
        tu_topic(log, "rt", "fsync=never", "segment.bytes=2048", "retention.ms=10000", NULL);
    fill(p, 100);
    disk_segment_t segs[64];
    int n = list_disk_segments(dir, "rt", segs, 64);
    assert_true(n > 5);
    for (int64_t now = 0; now <= 120000; now += 7000) {
        clock.now_ms = now;
        int expected_start_index = 0;
        while (expected_start_index < n - 1) {
            int64_t last_offset = segs[expected_start_index + 1].base - 1;
            int64_t max_ts = 1000 * (last_offset / 10) + 9;
            if (max_ts >= now - 10000)
                break;
            expected_start_index++;
        }
        assert_int_equal(sl_log_maintain(log), 0);
        assert_int_equal(sl_partition_start_offset(p), segs[expected_start_index].base);
        assert_int_equal(tu_count(p, 0), 1000 - segs[expected_start_index].base);
    }
    /* the active segment stays even when everything is old */
    assert_int_equal(sl_partition_segment_count(p), 1);
    assert_int_equal(sl_partition_end_offset(p), 1000);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_retention_by_bytes_matches_model(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log;
    assert_int_equal(sl_log_open(dir, NULL, &log), 0);
    sl_partition_t *p =
        tu_topic(log, "rb", "fsync=never", "segment.bytes=2048", "retention.bytes=5000", NULL);
    fill(p, 100);
    disk_segment_t segs[64];
    int n = list_disk_segments(dir, "rb", segs, 64);
    long total = 0;
    for (int i = 0; i < n; i++)
        total += segs[i].size;
    int first = 0;
    while (first < n - 1 && total - segs[first].size >= 5000)
        total -= segs[first++].size;
    int deleted;
    assert_int_equal(sl_partition_apply_retention(p, sl_log_now(log), &deleted), 0);
    assert_int_equal(deleted, first);
    assert_int_equal(sl_partition_start_offset(p), segs[first].base);
    assert_true(sl_partition_size_bytes(p) >= 5000);
    assert_int_equal(list_disk_segments(dir, "rb", segs, 64), n - first);
    assert_int_equal(sl_partition_apply_retention(p, sl_log_now(log), &deleted), 0);
    assert_int_equal(deleted, 0);
    /* a reader positioned before the start moves up to it */
    assert_int_equal(tu_count(p, 0), 1000 - sl_partition_start_offset(p));
    sl_log_close(log);
    tu_rmdir(dir);
}

enum { RECORDS = 3000, KEYS = 40 };

typedef struct compaction_model {
    int key[RECORDS];
    int tombstone[RECORDS];
    int64_t latest[KEYS];
} compaction_model_t;

static void fill_keyed(sl_partition_t *p, compaction_model_t *m)
{
    char keys[KEYS][16], values[RECORDS][16];
    for (int k = 0; k < KEYS; k++) {
        snprintf(keys[k], sizeof keys[k], "key-%d", k);
        m->latest[k] = -1;
    }
    for (int o = 0; o < RECORDS;) {
        sl_record_t recs[16];
        int n = 1 + rand() % 16, i;
        for (i = 0; i < n && o < RECORDS; i++, o++) {
            m->key[o] = rand() % KEYS;
            m->tombstone[o] = rand() % 10 == 0;
            m->latest[m->key[o]] = o;
            snprintf(values[o], sizeof values[o], "v%d", o);
            recs[i] = tu_record(keys[m->key[o]], m->tombstone[o] ? NULL : values[o], 5000 + o);
        }
        assert_int_equal(sl_partition_append(p, recs, (size_t)i, NULL), 0);
    }
}

/* Reads the partition and compares it with the records the model keeps. */
static void check_compacted(sl_partition_t *p, const compaction_model_t *m, int64_t active_base,
                            int tombstones_expired)
{
    sl_reader_t *r;
    sl_record_t rec;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    for (int o = 0; o < RECORDS; o++) {
        int kept = o >= active_base ||
                   (m->latest[m->key[o]] == o && !(m->tombstone[o] && tombstones_expired));
        if (!kept)
            continue;
        char key[16], value[16];
        snprintf(key, sizeof key, "key-%d", m->key[o]);
        snprintf(value, sizeof value, "v%d", o);
        assert_int_equal(sl_reader_next(r, &rec), 1);
        assert_int_equal(rec.offset, o);
        assert_int_equal(rec.timestamp, 5000 + o);
        assert_memory_equal(rec.key, key, strlen(key));
        if (m->tombstone[o]) {
            assert_int_equal(rec.value_len, -1);
        } else {
            assert_int_equal(rec.value_len, (int)strlen(value));
            assert_memory_equal(rec.value, value, strlen(value));
        }
    }
    assert_int_equal(sl_reader_next(r, &rec), 0);
    sl_reader_close(r);
}

static void test_compaction_matches_model(void **state)
{
    (void)state;
    static compaction_model_t m;
    for (int codec = 0; codec < 2; codec++) {
        char *dir = tu_mkdtemp();
        tu_clock_t clock = {1000};
        sl_log_t *log;
        sl_log_options_t o = tu_options(&clock);
        srand(11 + (unsigned)codec);
        assert_int_equal(sl_log_open(dir, &o, &log), 0);
        sl_partition_t *p = tu_topic(log, "cc", "fsync=never", "segment.bytes=4096",
                                     "cleanup.policy=compact", "delete.retention.ms=50000",
                                     codec ? "compression=zstd" : "compression=none", NULL);
        fill_keyed(p, &m);
        disk_segment_t segs[256];
        int n = list_disk_segments(dir, "cc", segs, 256);
        assert_true(n > 5);
        int64_t active_base = segs[n - 1].base;
        int64_t size_before = sl_partition_size_bytes(p);
        clock.now_ms = 2000; /* tombstones still within delete.retention.ms */
        assert_int_equal(sl_log_maintain(log), 0);
        check_compacted(p, &m, active_base, 0);
        assert_true(sl_partition_size_bytes(p) < size_before);
        assert_int_equal(sl_partition_end_offset(p), RECORDS);
        clock.now_ms = 100000;
        assert_int_equal(sl_log_maintain(log), 0);
        check_compacted(p, &m, active_base, 1);
        sl_log_close(log);
        assert_int_equal(sl_log_open(dir, &o, &log), 0);
        p = sl_topic_partition(sl_log_topic(log, "cc"), 0);
        check_compacted(p, &m, active_base, 1);
        assert_int_equal(sl_partition_compact(p, clock.now_ms), 0);
        check_compacted(p, &m, active_base, 1);
        sl_record_t more = tu_record("key-1", "after", -1);
        int64_t at;
        assert_int_equal(sl_partition_append(p, &more, 1, &at), 0);
        assert_int_equal(at, RECORDS);
        sl_log_close(log);
        tu_rmdir(dir);
    }
}

/* Appends count records of key "hot", each value padded to about 100
 * bytes. */
static void append_hot(sl_partition_t *p, int count, int from)
{
    for (int i = 0; i < count; i++) {
        char value[128];
        snprintf(value, sizeof value, "%06d-%090d", from + i, 0);
        sl_record_t r = tu_record("hot", value, 1000);
        assert_int_equal(sl_partition_append(p, &r, 1, NULL), 0);
    }
}

/* A pass is skipped while the segments closed since the last one hold
 * less than min.cleanable.dirty.ratio of the closed bytes: an obsolete
 * record outlives it, and goes once enough is new. */
static void test_compaction_waits_for_the_dirty_ratio(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    tu_clock_t clock = {1000};
    sl_log_t *log;
    sl_log_options_t o = tu_options(&clock);
    assert_int_equal(sl_log_open(dir, &o, &log), 0);
    sl_partition_t *p = tu_topic(log, "dr", "fsync=never", "segment.bytes=4096",
                                 "cleanup.policy=compact", "min.cleanable.dirty.ratio=0.5", NULL);
    for (int k = 0; k < 200; k++) { /* 200 keys, once each: nothing to drop */
        char key[16];
        snprintf(key, sizeof key, "key-%03d", k);
        sl_record_t r = tu_record(key, "a value of about forty bytes, padded....", 1000);
        assert_int_equal(sl_partition_append(p, &r, 1, NULL), 0);
    }
    append_hot(p, 1, 0);
    assert_int_equal(sl_partition_compact(p, clock.now_ms), 0); /* the first pass */
    int64_t size = sl_partition_size_bytes(p);
    append_hot(p, 60, 1); /* about 6 KiB: a segment or two of ~4 closed */
    assert_int_equal(sl_partition_compact(p, clock.now_ms), 0);
    assert_int_equal(tu_count(p, 0), 201 + 60); /* skipped: every record is still there */
    assert_true(sl_partition_size_bytes(p) > size);
    append_hot(p, 200, 61); /* now most of the closed bytes are new */
    assert_int_equal(sl_partition_compact(p, clock.now_ms), 0);
    assert_true(tu_count(p, 0) < 201 + 260 - 100); /* the obsolete "hot" records went */
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_compaction_never_touches_the_active_segment(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log;
    assert_int_equal(sl_log_open(dir, NULL, &log), 0);
    sl_partition_t *p = tu_topic(log, "one", "fsync=never", "cleanup.policy=compact", NULL);
    for (int i = 0; i < 50; i++) {
        sl_record_t r = tu_record("same", "v", -1);
        assert_int_equal(sl_partition_append(p, &r, 1, NULL), 0);
    }
    snprintf(path, sizeof path, "%s/topics/one/0/00000000000000000000.log", dir);
    long size = tu_file_size(path);
    assert_int_equal(sl_partition_compact(p, sl_log_now(log) + 10000000), 0);
    assert_int_equal(tu_file_size(path), size);
    assert_int_equal(tu_count(p, 0), 50);
    sl_log_close(log);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_by_time_matches_model),
        cmocka_unit_test(test_retention_by_bytes_matches_model),
        cmocka_unit_test(test_compaction_matches_model),
        cmocka_unit_test(test_compaction_never_touches_the_active_segment),
        cmocka_unit_test(test_compaction_waits_for_the_dirty_ratio),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

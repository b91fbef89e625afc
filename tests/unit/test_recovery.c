/*
 * test_recovery.c - opening a log after crashes and damage: torn tails,
 * kill -9 during acknowledged appends, missing and inconsistent indexes,
 * corruption in the middle of a partition, interrupted operations.
 */
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static sl_log_t *open_log(const char *dir)
{
    sl_log_t *log;
    int rc = sl_log_open(dir, NULL, &log);
    if (rc)
        fprintf(stderr, "open failed: %s\n", sl_error_detail());
    assert_int_equal(rc, 0);
    return log;
}

static sl_partition_t *partition(sl_log_t *log, const char *topic)
{
    sl_topic_t *t = sl_log_topic(log, topic);
    assert_non_null(t);
    return sl_topic_partition(t, 0);
}

static void append_values(sl_partition_t *p, int n, const char *prefix)
{
    sl_record_t recs[64];
    char values[64][32];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) {
        snprintf(values[i], sizeof values[i], "%s-%d", prefix, i);
        recs[i] = tu_record("key", values[i], 1000 + i);
    }
    assert_int_equal(sl_partition_append(p, recs, (size_t)n, NULL), 0);
}

static char *read_file(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)*size + 1);
    assert_int_equal(fread(data, 1, (size_t)*size, f), (size_t)*size);
    fclose(f);
    return data;
}

static void write_file(const char *path, const char *data, long size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, (size_t)size, f), (size_t)size);
    fclose(f);
}

static void forget_clean_shutdown(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/topics/.clean-shutdown", dir);
    unlink(path);
}

/* Cutting the last batch at every byte position (as a crash mid-write
 * would) recovers exactly the batches before it, and the partition then
 * takes appends again at the right offset. */
static void test_torn_tail_is_truncated_at_every_byte(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir);
    sl_partition_t *p = tu_topic(log, "t", "fsync=never", NULL);
    append_values(p, 3, "a");
    append_values(p, 4, "b");
    long before = sl_partition_size_bytes(p);
    append_values(p, 5, "c");
    sl_log_close(log);
    snprintf(path, sizeof path, "%s/topics/t/0/00000000000000000000.log", dir);
    long size;
    char *pristine = read_file(path, &size);
    for (long cut = before; cut < size; cut++) {
        write_file(path, pristine, cut);
        forget_clean_shutdown(dir);
        log = open_log(dir);
        p = partition(log, "t");
        assert_int_equal(sl_partition_end_offset(p), 7);
        assert_int_equal(tu_count(p, 0), 7);
        assert_int_equal(tu_file_size(path), before);
        append_values(p, 1, "d");
        assert_int_equal(tu_count(p, 0), 8);
        sl_log_close(log);
    }
    /* a flipped byte in the last batch is a torn write too */
    pristine[size - 3] ^= 1;
    write_file(path, pristine, size);
    forget_clean_shutdown(dir);
    log = open_log(dir);
    assert_int_equal(sl_partition_end_offset(partition(log, "t")), 7);
    sl_log_close(log);
    free(pristine);
    tu_rmdir(dir);
}

/* A child appends with fsync=always and reports each acknowledgement down
 * a pipe; the parent kills it with SIGKILL mid-stream. Every acknowledged
 * record must be there after reopening, in order, intact. */
static void test_kill_9_keeps_every_acknowledged_append(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_log_t *log = open_log(dir);
    tu_topic(log, "acks", "fsync=always", "segment.bytes=8192", NULL);
    sl_log_close(log);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(fds[0]);
        sl_log_t *clog;
        if (sl_log_open(dir, NULL, &clog))
            _exit(2);
        sl_partition_t *cp = sl_topic_partition(sl_log_topic(clog, "acks"), 0);
        for (int64_t i = 0;; i++) {
            char value[32];
            snprintf(value, sizeof value, "value-%lld", (long long)i);
            sl_record_t r = tu_record("k", value, -1);
            int64_t offset;
            if (sl_partition_append(cp, &r, 1, &offset) || offset != i)
                _exit(3);
            if (write(fds[1], &offset, sizeof offset) != sizeof offset)
                _exit(4);
        }
    }
    close(fds[1]);
    int64_t acked = -1, offset;
    while (acked < 300 && read(fds[0], &offset, sizeof offset) == sizeof offset)
        acked = offset;
    kill(child, SIGKILL);
    while (read(fds[0], &offset, sizeof offset) == sizeof offset)
        acked = offset; /* acknowledgements already in flight count too */
    int status;
    waitpid(child, &status, 0);
    assert_true(WIFSIGNALED(status));
    close(fds[0]);
    log = open_log(dir);
    sl_partition_t *p = partition(log, "acks");
    assert_true(sl_partition_end_offset(p) >= acked + 1);
    sl_reader_t *r;
    sl_record_t rec;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    for (int64_t i = 0; i <= acked; i++) {
        char want[32];
        assert_int_equal(sl_reader_next(r, &rec), 1);
        assert_int_equal(rec.offset, i);
        snprintf(want, sizeof want, "value-%lld", (long long)i);
        assert_int_equal(rec.value_len, (int)strlen(want));
        assert_memory_equal(rec.value, want, strlen(want));
    }
    sl_reader_close(r);
    sl_log_close(log);
    tu_rmdir(dir);
}

static void fill_segments(sl_log_t *log, const char *topic)
{
    sl_partition_t *p =
        tu_topic(log, topic, "fsync=never", "segment.bytes=2048", "index.interval.bytes=256", NULL);
    for (int i = 0; i < 60; i++)
        append_values(p, 10, "x");
    assert_true(sl_partition_segment_count(p) > 4);
}

static void check_every_offset_readable(sl_partition_t *p, int64_t end)
{
    for (int64_t o = 0; o < end; o += 7) {
        sl_reader_t *r;
        sl_record_t rec;
        assert_int_equal(sl_reader_open(p, o, &r), 0);
        assert_int_equal(sl_reader_next(r, &rec), 1);
        assert_int_equal(rec.offset, o);
        sl_reader_close(r);
    }
}

static void test_missing_and_inconsistent_indexes_are_rebuilt(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), cmd[8192];
    sl_log_t *log = open_log(dir);
    fill_segments(log, "ix");
    sl_log_close(log);
    /* delete one index, garble another (valid size, wrong content) */
    snprintf(cmd, sizeof cmd,
             "cd %s/topics/ix/0 && rm 00000000000000000000.index && "
             "f=$(ls *.index | sed -n 2p) && head -c 64 /dev/urandom > $f",
             dir);
    assert_int_equal(system(cmd), 0);
    log = open_log(dir);
    sl_partition_t *p = partition(log, "ix");
    assert_int_equal(sl_partition_end_offset(p), 600);
    check_every_offset_readable(p, 600);
    int64_t at;
    assert_int_equal(sl_partition_offset_for_time(p, 1005, &at), 0);
    assert_int_equal(at, 5);
    sl_log_close(log);
    tu_rmdir(dir);
}

/* A bad batch inside a closed segment: the log opens, reads before it work,
 * a read that reaches it fails with SL_ECORRUPT naming topic, partition
 * and offset, and reads after it (seeking past) work. */
static void test_corruption_in_the_middle_is_reported_not_fatal(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir);
    fill_segments(log, "mid");
    sl_log_close(log);
    snprintf(path, sizeof path, "%s/topics/mid/0/00000000000000000000.log", dir);
    long size;
    char *pristine = read_file(path, &size);
    long batch = 12 + (long)(((unsigned char)pristine[10] << 8) | (unsigned char)pristine[11]);
    /* damage inside batch 5's records (CRC-covered), then in its baseOffset
     * (not covered), each with a clean and a crash restart */
    for (int run = 0; run < 4; run++) {
        char *data = malloc((size_t)size);
        memcpy(data, pristine, (size_t)size);
        data[5 * batch + (run < 2 ? 70 : 0)] ^= 0x55;
        write_file(path, data, size);
        free(data);
        if (run % 2)
            forget_clean_shutdown(dir);
        log = open_log(dir);
        sl_partition_t *p = partition(log, "mid");
        assert_int_equal(sl_partition_end_offset(p), 600);
        sl_reader_t *r;
        sl_record_t rec;
        int rc;
        int64_t n = 0;
        assert_int_equal(sl_reader_open(p, 0, &r), 0);
        while ((rc = sl_reader_next(r, &rec)) == 1)
            n++;
        assert_int_equal(rc, SL_ECORRUPT);
        assert_int_equal(n, 50);
        assert_non_null(strstr(sl_error_detail(), "mid/0"));
        assert_non_null(strstr(sl_error_detail(), "offset"));
        assert_int_equal(sl_reader_next(r, &rec), SL_ECORRUPT); /* stays failed */
        sl_reader_seek(r, 590);
        assert_int_equal(sl_reader_next(r, &rec), 1);
        assert_int_equal(rec.offset, 590);
        sl_reader_close(r);
        sl_log_close(log);
    }
    free(pristine);
    tu_rmdir(dir);
}

static void test_leftovers_of_interrupted_operations_are_cleared(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir);
    sl_partition_t *p = tu_topic(log, "keep", NULL);
    append_values(p, 2, "k");
    sl_log_close(log);
    snprintf(path, sizeof path, "%s/topics/half/0", dir); /* created, no meta */
    snprintf(path, sizeof path,
             "mkdir -p %s/topics/half/0 %s/topics/deleted~old~0/0 && "
             "touch %s/topics/keep/0/00000000000000000000.log.cleaned",
             dir, dir, dir);
    assert_int_equal(system(path), 0);
    log = open_log(dir);
    assert_null(sl_log_topic(log, "half"));
    assert_int_equal(tu_count(partition(log, "keep"), 0), 2);
    snprintf(path, sizeof path, "%s/topics/half", dir);
    assert_false(tu_exists(path));
    snprintf(path, sizeof path, "%s/topics/deleted~old~0", dir);
    assert_false(tu_exists(path));
    snprintf(path, sizeof path, "%s/topics/keep/0/00000000000000000000.log.cleaned", dir);
    assert_false(tu_exists(path));
    sl_log_close(log);
    tu_rmdir(dir);
}

static void test_damaged_meta_keeps_topic_offline_with_a_reason(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_log_t *log = open_log(dir);
    tu_topic(log, "bad", NULL);
    tu_topic(log, "good", NULL);
    sl_log_close(log);
    snprintf(path, sizeof path, "%s/topics/bad/meta", dir);
    write_file(path, "partitions=zero\n", 16);
    log = open_log(dir);
    assert_null(sl_log_topic(log, "bad"));
    assert_non_null(sl_log_topic(log, "good"));
    sl_log_close(log);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torn_tail_is_truncated_at_every_byte),
        cmocka_unit_test(test_kill_9_keeps_every_acknowledged_append),
        cmocka_unit_test(test_missing_and_inconsistent_indexes_are_rebuilt),
        cmocka_unit_test(test_corruption_in_the_middle_is_reported_not_fatal),
        cmocka_unit_test(test_leftovers_of_interrupted_operations_are_cleared),
        cmocka_unit_test(test_damaged_meta_keeps_topic_offline_with_a_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

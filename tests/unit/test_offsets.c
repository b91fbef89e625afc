/*
 * test_offsets.c - the node's LMDB environment and consumer-group offsets:
 * commit and read back, atomicity, key order and filters, names that are
 * prefixes of each other, deletion, validation, durability across reopen
 * and SIGKILL, one process per data directory, corrupt entries, a full map
 * and allocation failure.
 */
#include "testutil.h"

#include "storage/offsets.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static sl_state_t *open_state(const char *dir)
{
    sl_state_t *st;
    assert_int_equal(sl_state_open(dir, NULL, &st), 0);
    return st;
}

static void commit_one(sl_state_t *st, const char *group, const char *topic, int32_t partition,
                       int64_t offset)
{
    assert_int_equal(sl_offsets_commit(st, group, topic, &partition, &offset, 1), 0);
}

static int64_t get_offset(sl_state_t *st, const char *group, const char *topic, int32_t partition)
{
    int64_t offset = -1;
    assert_int_equal(sl_offsets_get(st, group, topic, partition, &offset), 0);
    return offset;
}

static void assert_not_found(sl_state_t *st, const char *group, const char *topic,
                             int32_t partition)
{
    int64_t offset = 12345;
    assert_int_equal(sl_offsets_get(st, group, topic, partition, &offset), SL_ENOTFOUND);
    assert_int_equal(offset, 12345);
}

/* foreach into a text listing, "group/topic/partition=offset " per entry. */
typedef struct listing {
    char text[8192];
    int count;
} listing_t;

static int add_to_listing(void *arg, const char *group, const char *topic, int32_t partition,
                          int64_t offset)
{
    listing_t *l = arg;
    size_t used = strlen(l->text);
    snprintf(l->text + used, sizeof l->text - used, "%s/%s/%d=%lld ", group, topic, partition,
             (long long)offset);
    l->count++;
    return 0;
}

static listing_t list(sl_state_t *st, const char *group, const char *topic)
{
    listing_t l = {.count = 0};
    assert_int_equal(sl_offsets_foreach(st, group, topic, add_to_listing, &l), 0);
    return l;
}

static int count_entries(sl_state_t *st, const char *group, const char *topic)
{
    return list(st, group, topic).count;
}

static void test_commit_then_get(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096];
    sl_state_t *st = open_state(dir);
    commit_one(st, "billing", "orders", 3, 42);
    assert_int_equal(get_offset(st, "billing", "orders", 3), 42);
    assert_not_found(st, "billing", "orders", 2);
    assert_not_found(st, "billing", "payments", 3);
    assert_not_found(st, "audit", "orders", 3);
    snprintf(path, sizeof path, "%s/state/data.mdb", dir);
    assert_true(tu_exists(path));
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_commit_of_nothing_is_a_no_op(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    assert_int_equal(sl_offsets_commit(st, "g", "t", NULL, NULL, 0), 0);
    assert_int_equal(count_entries(st, NULL, NULL), 0);
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_commit_overwrites_and_last_duplicate_wins(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_one(st, "g", "t", 0, 100);
    commit_one(st, "g", "t", 0, 7); /* offsets may move back (a reset) */
    assert_int_equal(get_offset(st, "g", "t", 0), 7);
    int32_t partitions[] = {1, 1, 1};
    int64_t offsets[] = {5, 6, 4};
    assert_int_equal(sl_offsets_commit(st, "g", "t", partitions, offsets, 3), 0);
    assert_int_equal(get_offset(st, "g", "t", 1), 4);
    assert_int_equal(count_entries(st, NULL, NULL), 2);
    sl_state_close(st);
    tu_rmdir(dir);
}

#define ATOMIC_PARTITIONS 64
#define ATOMIC_ROUNDS     60

typedef struct snapshot_check {
    sl_state_t *st;
    int64_t first_offset;
    int count, mixed, done, reads;
} snapshot_check_t;

static int check_same_round(void *arg, const char *group, const char *topic, int32_t partition,
                            int64_t offset)
{
    snapshot_check_t *c = arg;
    (void)group, (void)topic, (void)partition;
    if (c->count++ == 0)
        c->first_offset = offset;
    c->mixed |= offset != c->first_offset;
    return 0;
}

/* Reads snapshots until the writer is done: each must hold no partition
 * or all of them, all from the same commit. */
static void *read_snapshots(void *arg)
{
    snapshot_check_t *c = arg;
    while (!__atomic_load_n(&c->done, __ATOMIC_ACQUIRE)) {
        c->count = 0;
        if (sl_offsets_foreach(c->st, "g", "t", check_same_round, c) != 0)
            c->mixed = 1;
        if (c->count != 0 && c->count != ATOMIC_PARTITIONS)
            c->mixed = 1;
        c->reads++;
    }
    return NULL;
}

static void test_multi_partition_commit_is_atomic(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    snapshot_check_t check = {.st = st};
    int32_t partitions[ATOMIC_PARTITIONS];
    int64_t offsets[ATOMIC_PARTITIONS];
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, read_snapshots, &check), 0);
    for (int round = 0; round < ATOMIC_ROUNDS; round++) {
        for (int i = 0; i < ATOMIC_PARTITIONS; i++) {
            partitions[i] = ATOMIC_PARTITIONS - 1 - i;
            offsets[i] = round * 1000;
        }
        assert_int_equal(sl_offsets_commit(st, "g", "t", partitions, offsets, ATOMIC_PARTITIONS),
                         0);
    }
    __atomic_store_n(&check.done, 1, __ATOMIC_RELEASE);
    pthread_join(reader, NULL);
    assert_false(check.mixed);
    assert_true(check.reads > 0);
    for (int i = 0; i < ATOMIC_PARTITIONS; i++)
        assert_int_equal(get_offset(st, "g", "t", i), (ATOMIC_ROUNDS - 1) * 1000);
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_invalid_commit_commits_nothing(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    int32_t partitions[] = {0, 1, 2};
    int64_t offsets[] = {10, 20, -1};
    assert_int_equal(sl_offsets_commit(st, "g", "t", partitions, offsets, 3), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "partition 2 offset -1"));
    assert_int_equal(count_entries(st, NULL, NULL), 0);
    sl_state_close(st);
    tu_rmdir(dir);
}

/* A commit too big for the map fails as a whole with -ENOSPC; its write
 * transaction is aborted (so the next commit does not wait for it forever)
 * and earlier commits are intact. */
static void test_commit_into_a_full_map_is_aborted_and_leaves_nothing(void **state)
{
    (void)state;
    enum { N = 40000 };
    char *dir = tu_mkdtemp();
    sl_state_options_t opts = {.map_size = 256 * 1024};
    sl_state_t *st;
    assert_int_equal(sl_state_open(dir, &opts, &st), 0);
    commit_one(st, "g", "before", 0, 1);
    int32_t *partitions = malloc(N * sizeof *partitions);
    int64_t *offsets = malloc(N * sizeof *offsets);
    for (int i = 0; i < N; i++) {
        partitions[i] = i;
        offsets[i] = i;
    }
    assert_int_equal(sl_offsets_commit(st, "g", "big", partitions, offsets, N), -ENOSPC);
    assert_non_null(strstr(sl_error_detail(), "MDB_MAP_FULL"));
    assert_int_equal(count_entries(st, "g", "big"), 0);
    alarm(20); /* a failed transaction left open would make this wait forever */
    commit_one(st, "g", "after", 0, 2);
    alarm(0);
    assert_int_equal(get_offset(st, "g", "before", 0), 1);
    assert_int_equal(get_offset(st, "g", "after", 0), 2);
    free(partitions);
    free(offsets);
    sl_state_close(st);
    tu_rmdir(dir);
}

/* Partitions 2, 10, 256 and 70000 sort as numbers (big-endian keys). */
static void commit_mixed_order(sl_state_t *st)
{
    static const char *const groups[] = {"b", "a"};
    static const char *const topics[] = {"y", "x"};
    static const int32_t partitions[] = {70000, 2, 256, 10};
    for (int g = 0; g < 2; g++)
        for (int t = 0; t < 2; t++)
            for (int p = 0; p < 4; p++)
                commit_one(st, groups[g], topics[t], partitions[p], partitions[p] + 1);
}

static void test_foreach_is_in_key_order_and_filters(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_mixed_order(st);
    assert_string_equal(list(st, "a", "x").text, "a/x/2=3 a/x/10=11 a/x/256=257 a/x/70000=70001 ");
    assert_string_equal(list(st, "b", NULL).text, "b/x/2=3 b/x/10=11 b/x/256=257 b/x/70000=70001 "
                                                  "b/y/2=3 b/y/10=11 b/y/256=257 b/y/70000=70001 ");
    assert_string_equal(list(st, NULL, "y").text, "a/y/2=3 a/y/10=11 a/y/256=257 a/y/70000=70001 "
                                                  "b/y/2=3 b/y/10=11 b/y/256=257 b/y/70000=70001 ");
    listing_t all = list(st, NULL, NULL);
    assert_int_equal(all.count, 16);
    assert_non_null(strstr(all.text, "a/y/70000=70001 b/x/2=3 "));
    assert_int_equal(count_entries(st, "c", NULL), 0);
    assert_int_equal(count_entries(st, "a", "z"), 0);
    sl_state_close(st);
    tu_rmdir(dir);
}

static int stop_at_third(void *arg, const char *group, const char *topic, int32_t partition,
                         int64_t offset)
{
    int *seen = arg;
    (void)group, (void)topic, (void)partition, (void)offset;
    return ++*seen == 3 ? 77 : 0;
}

static void test_foreach_stops_when_fn_returns_non_zero(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    int seen = 0;
    commit_mixed_order(st);
    assert_int_equal(sl_offsets_foreach(st, NULL, NULL, stop_at_third, &seen), 77);
    assert_int_equal(seen, 3);
    sl_state_close(st);
    tu_rmdir(dir);
}

static int commit_while_walking(void *arg, const char *group, const char *topic, int32_t partition,
                                int64_t offset)
{
    commit_one(arg, group, "copy", partition, offset + 1);
    (void)topic;
    return 0;
}

/* fn may commit: the walk sees its snapshot, not the new entries. */
static void test_foreach_callback_may_commit(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_one(st, "g", "t", 0, 5);
    commit_one(st, "g", "t", 1, 6);
    assert_int_equal(sl_offsets_foreach(st, "g", NULL, commit_while_walking, st), 0);
    assert_string_equal(list(st, "g", NULL).text, "g/copy/0=6 g/copy/1=7 g/t/0=5 g/t/1=6 ");
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_names_that_are_prefixes_do_not_mix(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_one(st, "g", "t", 0, 1);
    commit_one(st, "g", "t.x", 0, 2);
    commit_one(st, "g2", "t", 0, 3);
    commit_one(st, "g2", "t.x", 0, 4);
    commit_one(st, "g!", "t", 0, 5); /* '!' sorts below most name bytes */
    assert_int_equal(get_offset(st, "g", "t", 0), 1);
    assert_int_equal(get_offset(st, "g", "t.x", 0), 2);
    assert_int_equal(get_offset(st, "g2", "t", 0), 3);
    assert_string_equal(list(st, "g", NULL).text, "g/t/0=1 g/t.x/0=2 ");
    assert_string_equal(list(st, "g", "t").text, "g/t/0=1 ");
    assert_string_equal(list(st, NULL, "t").text, "g/t/0=1 g!/t/0=5 g2/t/0=3 ");
    assert_int_equal(sl_offsets_delete_group(st, "g"), 0);
    assert_int_equal(sl_offsets_delete_topic(st, "t"), 0);
    assert_string_equal(list(st, NULL, NULL).text, "g2/t.x/0=4 ");
    sl_state_close(st);
    tu_rmdir(dir);
}

/* Enough groups, topics and partitions to span many LMDB pages, so that
 * deletion crosses page boundaries. */
static void commit_grid(sl_state_t *st, int groups, int topics, int partitions)
{
    int32_t parts[256];
    int64_t offsets[256];
    assert_true(partitions <= 256);
    for (int p = 0; p < partitions; p++) {
        parts[p] = p;
        offsets[p] = p * 3;
    }
    for (int g = 0; g < groups; g++)
        for (int t = 0; t < topics; t++) {
            char group[32], topic[32];
            snprintf(group, sizeof group, "group-%02d", g);
            snprintf(topic, sizeof topic, "topic-%02d", t);
            assert_int_equal(
                sl_offsets_commit(st, group, topic, parts, offsets, (size_t)partitions), 0);
        }
}

static void test_delete_topic_removes_it_from_every_group(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_grid(st, 12, 5, 100);
    assert_int_equal(sl_offsets_delete_topic(st, "topic-02"), 0);
    assert_int_equal(count_entries(st, NULL, "topic-02"), 0);
    assert_int_equal(count_entries(st, NULL, NULL), 12 * 4 * 100);
    assert_int_equal(count_entries(st, "group-05", "topic-01"), 100);
    assert_int_equal(count_entries(st, "group-05", "topic-03"), 100);
    assert_int_equal(get_offset(st, "group-11", "topic-04", 99), 99 * 3);
    assert_int_equal(sl_offsets_delete_topic(st, "topic-02"), 0); /* none left: still fine */
    assert_int_equal(sl_offsets_delete_topic(st, "no-such-topic"), 0);
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_delete_group_removes_only_that_group(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_grid(st, 6, 8, 120);
    assert_int_equal(sl_offsets_delete_group(st, "group-03"), 0);
    assert_int_equal(count_entries(st, "group-03", NULL), 0);
    assert_int_equal(count_entries(st, "group-02", NULL), 8 * 120);
    assert_int_equal(count_entries(st, "group-04", NULL), 8 * 120);
    assert_int_equal(count_entries(st, NULL, NULL), 5 * 8 * 120);
    assert_not_found(st, "group-03", "topic-00", 0);
    assert_int_equal(sl_offsets_delete_group(st, "group-03"), 0);
    sl_state_close(st);
    tu_rmdir(dir);
}

static int must_not_be_called(void *arg, const char *group, const char *topic, int32_t partition,
                              int64_t offset)
{
    (void)arg, (void)group, (void)topic, (void)partition, (void)offset;
    fail_msg("fn called despite invalid arguments");
    return 0;
}

static void assert_invalid(int rc, const char *detail_part)
{
    assert_int_equal(rc, SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), detail_part));
}

static void test_invalid_names_and_values_are_rejected(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), group[SL_GROUP_NAME_MAX + 2], topic[SL_TOPIC_NAME_MAX + 2];
    sl_state_t *st = open_state(dir);
    int32_t partition = 0, negative_partition = -1;
    int64_t offset = 0, negative_offset = -5;
    memset(group, 'g', sizeof group - 1);
    group[sizeof group - 1] = 0; /* 256 bytes */
    memset(topic, 't', sizeof topic - 1);
    topic[sizeof topic - 1] = 0; /* 250 bytes */
    assert_invalid(sl_offsets_commit(st, "", "t", &partition, &offset, 1), "group name");
    assert_invalid(sl_offsets_commit(st, NULL, "t", &partition, &offset, 1), "group name");
    assert_invalid(sl_offsets_commit(st, "g", "", &partition, &offset, 1), "topic name");
    assert_invalid(sl_offsets_commit(st, group, "t", &partition, &offset, 1), "over 255 bytes");
    assert_invalid(sl_offsets_commit(st, "g", topic, &partition, &offset, 1), "over 249 bytes");
    assert_invalid(sl_offsets_commit(st, "g", "t", &negative_partition, &offset, 1), "negative");
    assert_invalid(sl_offsets_commit(st, "g", "t", &partition, &negative_offset, 1), "negative");
    assert_invalid(sl_offsets_get(st, "", "t", 0, &offset), "group name");
    assert_invalid(sl_offsets_get(st, "g", "t", -1, &offset), "negative");
    assert_invalid(sl_offsets_foreach(st, group, NULL, must_not_be_called, NULL), "group name");
    assert_invalid(sl_offsets_foreach(st, NULL, "", must_not_be_called, NULL), "topic name");
    assert_invalid(sl_offsets_delete_topic(st, NULL), "topic name");
    assert_invalid(sl_offsets_delete_group(st, ""), "group name");
    assert_int_equal(count_entries(st, NULL, NULL), 0);
    group[SL_GROUP_NAME_MAX] = 0; /* the longest names fit LMDB's key limit */
    topic[SL_TOPIC_NAME_MAX] = 0;
    commit_one(st, group, topic, INT32_MAX, INT64_MAX);
    assert_int_equal(get_offset(st, group, topic, INT32_MAX), INT64_MAX);
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_offsets_survive_close_and_reopen(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    sl_state_t *st = open_state(dir);
    commit_mixed_order(st);
    commit_one(st, "a", "x", 2, 99);
    listing_t before = list(st, NULL, NULL);
    sl_state_close(st);
    st = open_state(dir);
    assert_string_equal(list(st, NULL, NULL).text, before.text);
    assert_int_equal(get_offset(st, "a", "x", 2), 99);
    sl_state_close(st);
    tu_rmdir(dir);
}

/* The committed offset of partition i in the kill -9 test. */
static int64_t killed_offset(int32_t i)
{
    return (int64_t)i * 7 + 1;
}

/* A child commits partition i = 0, 1, 2, ... and reports i down a pipe
 * after each commit returns; the parent kills it with SIGKILL mid-stream.
 * Every reported commit must be there after reopening; nothing beyond the
 * one commit that may have been in flight. */
static void test_kill_9_keeps_every_committed_offset(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        sl_state_t *cst;
        close(fds[0]);
        if (sl_state_open(dir, NULL, &cst))
            _exit(2);
        for (int32_t i = 0;; i++) {
            int64_t offset = killed_offset(i);
            if (sl_offsets_commit(cst, "g", "t", &i, &offset, 1))
                _exit(3);
            if (write(fds[1], &i, sizeof i) != sizeof i)
                _exit(4);
        }
    }
    close(fds[1]);
    int32_t reported = -1, i;
    while (reported < 200 && read(fds[0], &i, sizeof i) == sizeof i)
        reported = i;
    kill(child, SIGKILL);
    while (read(fds[0], &i, sizeof i) == sizeof i)
        reported = i; /* reports already in flight count too */
    int status;
    waitpid(child, &status, 0);
    assert_true(WIFSIGNALED(status));
    close(fds[0]);
    sl_state_t *st = open_state(dir);
    for (i = 0; i <= reported; i++)
        assert_int_equal(get_offset(st, "g", "t", i), killed_offset(i));
    int count = count_entries(st, NULL, NULL);
    assert_true(count == reported + 1 || count == reported + 2);
    sl_state_close(st);
    tu_rmdir(dir);
}

/* The child of test_second_process_...: opens dir, commits g/t/0=11, says
 * so on opened_fd, and holds the state until release_fd reaches its end. */
static void hold_state(const char *dir, int opened_fd, int release_fd)
{
    sl_state_t *st;
    char byte = 1;
    int32_t partition = 0;
    int64_t offset = 11;
    if (sl_state_open(dir, NULL, &st) || sl_offsets_commit(st, "g", "t", &partition, &offset, 1) ||
        write(opened_fd, &byte, 1) != 1)
        _exit(2);
    while (read(release_fd, &byte, 1) > 0)
        ;
    sl_state_close(st);
    _exit(0);
}

/* While a child process has DATA open, opening it here fails at once with
 * -EBUSY and a sentence; so does a second open in the same process; once
 * the child closes, it opens. */
static void test_second_process_is_refused_while_the_state_is_open(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), byte;
    int opened[2], release[2], status;
    assert_int_equal(pipe(opened), 0);
    assert_int_equal(pipe(release), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(opened[0]);
        close(release[1]);
        hold_state(dir, opened[1], release[0]);
    }
    close(opened[1]);
    close(release[0]);
    assert_int_equal(read(opened[0], &byte, 1), 1);
    sl_state_t *st = NULL, *again = NULL;
    alarm(20); /* a hang would be the failure */
    assert_int_equal(sl_state_open(dir, NULL, &st), -EBUSY);
    alarm(0);
    assert_null(st);
    assert_non_null(strstr(sl_error_detail(), "in use by another sluice process"));
    close(release[1]);
    waitpid(child, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(opened[0]);
    st = open_state(dir);
    assert_int_equal(get_offset(st, "g", "t", 0), 11);
    assert_int_equal(sl_state_open(dir, NULL, &again), -EBUSY);
    assert_null(again);
    sl_state_close(st);
    tu_rmdir(dir);
}

static void test_data_file_that_is_not_lmdb_is_corrupt(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), path[4096], garbage[8192];
    snprintf(path, sizeof path, "%s/state", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/state/data.mdb", dir);
    memset(garbage, 'x', sizeof garbage);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(garbage, 1, sizeof garbage, f), sizeof garbage);
    fclose(f);
    sl_state_t *st = NULL;
    assert_int_equal(sl_state_open(dir, NULL, &st), SL_ECORRUPT);
    assert_null(st);
    assert_non_null(strstr(sl_error_detail(), "MDB_INVALID"));
    sl_state_close(st);
    tu_rmdir(dir);
}

static void put_raw(sl_state_t *st, const void *key, size_t key_len, const void *value,
                    size_t value_len)
{
    MDB_dbi dbi;
    MDB_txn *txn;
    MDB_val k = {key_len, (void *)key}, v = {value_len, (void *)value};
    assert_int_equal(sl_state_database(st, SL_OFFSETS_DATABASE, &dbi), 0);
    assert_int_equal(mdb_txn_begin(sl_state_env(st), NULL, 0, &txn), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
}

/* Entries that break the layout are SL_ECORRUPT with a detail, never a
 * crash; each is checked alone. */
static void test_entries_that_break_the_layout_are_corrupt(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        size_t key_len;
        size_t value_len;
    } bad[] = {
        {"g\0t\0\0\0\0\1", 8, 4},         /* value not 8 bytes */
        {"gt\0\0\0\0\1", 7, 8},           /* too short */
        {"gxt\0\0\0\0\1", 8, 8},          /* no 0x00 between the names */
        {"\0gt\0\0\0\0\1", 8, 8},         /* empty group */
        {"gg\0\0\0\0\0\1", 8, 8},         /* empty topic */
        {"g\0t\0\0\0\0\0\1", 9, 8},       /* a 0x00 inside the topic */
        {"g\0t\0\xff\xff\xff\xff", 8, 8}, /* negative partition */
    };
    static const uint8_t value[8] = {0, 0, 0, 0, 0, 0, 0, 9};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *dir = tu_mkdtemp();
        sl_state_t *st = open_state(dir);
        put_raw(st, bad[i].key, bad[i].key_len, value, bad[i].value_len);
        listing_t l = {.count = 0};
        assert_int_equal(sl_offsets_foreach(st, NULL, NULL, add_to_listing, &l), SL_ECORRUPT);
        assert_int_equal(l.count, 0);
        assert_non_null(strstr(sl_error_detail(), "offsets: entry"));
        sl_state_close(st);
        tu_rmdir(dir);
    }
}

/* Every allocation of open, first use and close failing in turn: each
 * attempt is a clean -ENOMEM (the sanitizer build checks nothing leaks)
 * until there are enough allocations to succeed. */
static void test_out_of_memory_is_an_error(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    int rc = -ENOMEM;
    long n;
    for (n = 0; n < 100 && rc == -ENOMEM; n++) {
        sl_state_t *st = NULL;
        int64_t offset = n, read_back = -1;
        int32_t partition = 0;
        sl_alloc_fail_after(n);
        rc = sl_state_open(dir, NULL, &st);
        if (rc == 0)
            rc = sl_offsets_commit(st, "g", "t", &partition, &offset, 1);
        if (rc == 0)
            rc = sl_offsets_get(st, "g", "t", 0, &read_back);
        sl_alloc_fail_after(-1);
        if (rc == 0)
            assert_int_equal(read_back, offset);
        else
            assert_int_equal(rc, -ENOMEM);
        sl_state_close(st);
    }
    assert_int_equal(rc, 0);
    assert_true(n > 2); /* open and the database table did meet failures */
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_then_get),
        cmocka_unit_test(test_commit_of_nothing_is_a_no_op),
        cmocka_unit_test(test_commit_overwrites_and_last_duplicate_wins),
        cmocka_unit_test(test_multi_partition_commit_is_atomic),
        cmocka_unit_test(test_invalid_commit_commits_nothing),
        cmocka_unit_test(test_commit_into_a_full_map_is_aborted_and_leaves_nothing),
        cmocka_unit_test(test_foreach_is_in_key_order_and_filters),
        cmocka_unit_test(test_foreach_stops_when_fn_returns_non_zero),
        cmocka_unit_test(test_foreach_callback_may_commit),
        cmocka_unit_test(test_names_that_are_prefixes_do_not_mix),
        cmocka_unit_test(test_delete_topic_removes_it_from_every_group),
        cmocka_unit_test(test_delete_group_removes_only_that_group),
        cmocka_unit_test(test_invalid_names_and_values_are_rejected),
        cmocka_unit_test(test_offsets_survive_close_and_reopen),
        cmocka_unit_test(test_kill_9_keeps_every_committed_offset),
        cmocka_unit_test(test_second_process_is_refused_while_the_state_is_open),
        cmocka_unit_test(test_data_file_that_is_not_lmdb_is_corrupt),
        cmocka_unit_test(test_entries_that_break_the_layout_are_corrupt),
        cmocka_unit_test(test_out_of_memory_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

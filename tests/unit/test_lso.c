/*
 * test_lso.c - transactional partitions and their committed ends: the
 * setting, invisibility of uncommitted records to readers, waiters, end
 * offsets and the listener; visibility after a commit; truncation to the
 * committed end after a crash (close without commit, and SIGKILL); a
 * partition that never committed; a new state adopting the log; damaged
 * and left-over entries; compaction and retention leaving uncommitted
 * segments alone; and that other topics behave as before.
 */
#include "testutil.h"

#include "storage/buf.h"
#include "storage/state.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Listener calls, for checking what the log announces. */
typedef struct heard {
    int calls;
    int64_t last_end;
} heard_t;

static void on_visible(void *arg, sl_partition_t *p, int64_t end)
{
    heard_t *h = arg;
    (void)p;
    h->calls++;
    h->last_end = end;
}

/* What the listener heard; one node is open at a time. */
static heard_t heard;

typedef struct node {
    char *dir;
    sl_log_t *log;
    sl_state_t *state;
} node_t;

/* Opens the log (with the listener) and the state, attaching them when
 * attach is set. */
static void node_open(node_t *n, int attach)
{
    sl_log_options_t o = {.listener = on_visible, .listener_arg = &heard};
    assert_int_equal(sl_log_open(n->dir, &o, &n->log), 0);
    assert_int_equal(sl_state_open(n->dir, NULL, &n->state), 0);
    if (attach)
        assert_int_equal(sl_log_attach_state(n->log, n->state), 0);
}

static void node_close(node_t *n)
{
    sl_log_close(n->log);
    sl_state_close(n->state);
    n->log = NULL;
    n->state = NULL;
}

static node_t node_new(void)
{
    node_t n = {.dir = tu_mkdtemp()};
    node_open(&n, 1);
    return n;
}

static void node_free(node_t *n)
{
    node_close(n);
    tu_rmdir(n->dir);
}

static sl_partition_t *partition_of(node_t *n, const char *topic)
{
    sl_topic_t *t = sl_log_topic(n->log, topic);
    assert_non_null(t);
    return sl_topic_partition(t, 0);
}

/* Appends count records "prefix-i" (durably) and returns the new end. */
static int64_t append_values(sl_partition_t *p, int count, const char *prefix)
{
    char values[64][32];
    sl_record_t recs[64];
    int64_t first;
    assert_true(count <= 64);
    for (int i = 0; i < count; i++) {
        snprintf(values[i], sizeof values[i], "%s-%d", prefix, i);
        recs[i] = tu_record("k", values[i], 1000 + i);
    }
    assert_int_equal(sl_partition_append(p, recs, (size_t)count, &first), 0);
    return first + count;
}

/* The commit of one partition's end: lso in a transaction, then visible. */
static void commit_end(node_t *n, sl_partition_t *p, int64_t end)
{
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(n->state, 1, &txn), 0);
    assert_int_equal(sl_lso_put(n->state, txn, p, end), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_int_equal(sl_partition_set_visible_end(p, end), 0);
}

/* Reads every visible value, joined with ','. */
static void read_all(sl_partition_t *p, char *out, size_t size)
{
    sl_reader_t *r;
    sl_record_t rec;
    int rc;
    out[0] = 0;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    while ((rc = sl_reader_next(r, &rec)) == 1) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, "%s%.*s", used ? "," : "", rec.value_len,
                 (const char *)rec.value);
    }
    assert_int_equal(rc, 0);
    sl_reader_close(r);
}

static int64_t lso_of(node_t *n, const char *topic, int32_t partition)
{
    int64_t end = -1;
    assert_int_equal(sl_lso_get(n->state, topic, partition, &end), 0);
    return end;
}

static void test_transactional_setting_is_parsed_and_kept_in_meta(void **state)
{
    (void)state;
    node_t n = node_new();
    sl_topic_config_t cfg;
    char text[2048];
    sl_topic_config_default(&cfg);
    assert_int_equal(cfg.transactional, 0);
    assert_int_equal(sl_topic_config_set(&cfg, "transactional", "maybe"), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "transactional must be one of false|true"));
    assert_int_equal(sl_topic_config_set(&cfg, "transactional", "true"), 0);
    sl_topic_config_format(&cfg, text, sizeof text);
    assert_non_null(strstr(text, "\ntransactional=true\n"));
    tu_topic(n.log, "out", "transactional=true", NULL);
    tu_topic(n.log, "plain", NULL);
    node_close(&n);
    node_open(&n, 1);
    assert_int_equal(sl_topic_config(sl_log_topic(n.log, "out"))->transactional, 1);
    assert_int_equal(sl_topic_config(sl_log_topic(n.log, "plain"))->transactional, 0);
    assert_true(sl_partition_is_transactional(partition_of(&n, "out")));
    assert_false(sl_partition_is_transactional(partition_of(&n, "plain")));
    node_free(&n);
}

static void test_uncommitted_records_are_invisible_until_the_commit(void **state)
{
    (void)state;
    node_t n = node_new();
    char text[256];
    int64_t offset;
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    sl_reader_t *r;
    sl_record_t rec;
    int calls = heard.calls;
    assert_int_equal(append_values(p, 2, "a"), 2);
    assert_int_equal(append_values(p, 1, "b"), 3);
    assert_int_equal(sl_partition_written_end(p), 3);
    assert_int_equal(sl_partition_end_offset(p), 0);
    assert_int_equal(sl_partition_wait(p, 0, 0), 0);
    assert_int_equal(sl_partition_offset_for_time(p, 0, &offset), 0);
    assert_int_equal(offset, 0);
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    assert_int_equal(sl_reader_next(r, &rec), 0);
    assert_int_equal(heard.calls, calls); /* durable, but not announced */

    commit_end(&n, p, 2);
    assert_int_equal(sl_partition_end_offset(p), 2);
    assert_int_equal(heard.calls, calls + 1);
    assert_int_equal(heard.last_end, 2);
    assert_int_equal(sl_partition_wait(p, 1, 0), 1);
    assert_int_equal(sl_partition_wait(p, 2, 0), 0);
    assert_int_equal(sl_reader_next(r, &rec), 1); /* the open reader sees them now */
    assert_int_equal(rec.offset, 0);
    assert_int_equal(sl_reader_next(r, &rec), 1);
    assert_int_equal(sl_reader_next(r, &rec), 0);
    sl_reader_close(r);
    read_all(p, text, sizeof text);
    assert_string_equal(text, "a-0,a-1");
    assert_int_equal(lso_of(&n, "out", 0), 2);
    node_free(&n);
}

/* An aborted transaction's lso is never recorded. */
static void test_aborted_lso_is_not_recorded(void **state)
{
    (void)state;
    node_t n = node_new();
    MDB_txn *txn;
    int64_t end;
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    append_values(p, 2, "a");
    assert_int_equal(sl_state_begin(n.state, 1, &txn), 0);
    assert_int_equal(sl_lso_put(n.state, txn, p, 2), 0);
    mdb_txn_abort(txn);
    assert_int_equal(sl_lso_get(n.state, "out", 0, &end), SL_ENOTFOUND);
    node_free(&n);
}

static void test_visible_end_rules(void **state)
{
    (void)state;
    node_t n = node_new();
    MDB_txn *txn;
    sl_record_t rec = tu_record("k", "v", 1);
    /* an hour between fsyncs: appends stay not durable */
    sl_partition_t *p =
        tu_topic(n.log, "slow", "transactional=true", "fsync.interval.ms=3600000", NULL);
    sl_partition_t *plain = tu_topic(n.log, "plain", NULL);
    assert_int_equal(sl_partition_append_nowait(p, &rec, 1, NULL), 0);
    assert_int_equal(sl_partition_set_visible_end(p, 1), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "only 0 are durable"));
    assert_int_equal(sl_partition_await_durable(p, 1, 0), SL_ETIMEDOUT);
    assert_int_equal(sl_partition_set_visible_end(plain, 0), SL_EINVALID);
    assert_int_equal(sl_state_begin(n.state, 1, &txn), 0);
    assert_int_equal(sl_lso_put(n.state, txn, plain, 0), SL_EINVALID);
    assert_int_equal(sl_lso_put(n.state, txn, p, 2), SL_EINVALID); /* beyond written */
    assert_int_equal(sl_lso_put(n.state, txn, p, -1), SL_EINVALID);
    mdb_txn_abort(txn);
    sl_partition_t *q = tu_topic(n.log, "out", "transactional=true", NULL);
    append_values(q, 4, "a");
    commit_end(&n, q, 4);
    assert_int_equal(sl_partition_set_visible_end(q, 2), 0); /* a late, older commit */
    assert_int_equal(sl_partition_end_offset(q), 4);
    node_free(&n);
}

typedef struct waiter {
    sl_partition_t *p;
    int result;
} waiter_t;

static void *wait_for_data(void *arg)
{
    waiter_t *w = arg;
    w->result = sl_partition_wait(w->p, 0, 10000);
    return NULL;
}

static void test_waiter_wakes_when_records_become_visible(void **state)
{
    (void)state;
    node_t n = node_new();
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    waiter_t w = {.p = p, .result = -1};
    pthread_t thread;
    append_values(p, 1, "a");
    assert_int_equal(pthread_create(&thread, NULL, wait_for_data, &w), 0);
    commit_end(&n, p, 1);
    pthread_join(thread, NULL);
    assert_int_equal(w.result, 1);
    node_free(&n);
}

static void test_other_topics_are_visible_once_durable(void **state)
{
    (void)state;
    node_t n = node_new();
    sl_partition_t *p = tu_topic(n.log, "plain", "fsync=never", NULL); /* announced at once */
    int calls = heard.calls;
    append_values(p, 3, "a");
    assert_int_equal(sl_partition_end_offset(p), 3);
    assert_int_equal(tu_count(p, 0), 3);
    assert_true(heard.calls > calls);
    assert_int_equal(heard.last_end, 3);
    node_close(&n);
    node_open(&n, 0); /* without the state, too */
    assert_int_equal(sl_partition_end_offset(partition_of(&n, "plain")), 3);
    node_free(&n);
}

static void test_close_without_commit_truncates_to_the_committed_end(void **state)
{
    (void)state;
    node_t n = node_new();
    char text[256];
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    commit_end(&n, p, append_values(p, 3, "a"));
    append_values(p, 2, "b"); /* a commit that never finished */
    node_close(&n);
    node_open(&n, 0);
    p = partition_of(&n, "out");
    assert_int_equal(sl_partition_end_offset(p), 0); /* unknown until attached */
    assert_int_equal(sl_partition_written_end(p), 5);
    assert_int_equal(sl_log_attach_state(n.log, n.state), 0);
    assert_int_equal(sl_partition_end_offset(p), 3);
    assert_int_equal(sl_partition_written_end(p), 3);
    assert_int_equal(heard.last_end, 3);
    read_all(p, text, sizeof text);
    assert_string_equal(text, "a-0,a-1,a-2");
    commit_end(&n, p, append_values(p, 1, "c")); /* offsets continue at the cut */
    read_all(p, text, sizeof text);
    assert_string_equal(text, "a-0,a-1,a-2,c-0");
    assert_int_equal(sl_log_attach_state(n.log, n.state), SL_EINVALID);
    node_free(&n);
}

/* A child commits 10 records, appends 4 more and is killed before their
 * commit; the parent finds exactly the 10. */
static void test_kill_9_before_the_commit_loses_only_uncommitted_records(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), text[512];
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        node_t n = {.dir = dir};
        node_open(&n, 1);
        sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", "fsync=always", NULL);
        commit_end(&n, p, append_values(p, 10, "a"));
        append_values(p, 4, "b");
        kill(getpid(), SIGKILL);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFSIGNALED(status));
    node_t n = {.dir = dir};
    node_open(&n, 1);
    sl_partition_t *p = partition_of(&n, "out");
    assert_int_equal(sl_partition_end_offset(p), 10);
    assert_int_equal(sl_partition_written_end(p), 10);
    read_all(p, text, sizeof text);
    assert_string_equal(text, "a-0,a-1,a-2,a-3,a-4,a-5,a-6,a-7,a-8,a-9");
    node_free(&n);
}

static void test_partition_that_never_committed_is_emptied(void **state)
{
    (void)state;
    node_t n = node_new(); /* the state has met the log: it knows */
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    append_values(p, 3, "a");
    node_close(&n);
    node_open(&n, 1);
    p = partition_of(&n, "out");
    assert_int_equal(sl_partition_end_offset(p), 0);
    assert_int_equal(sl_partition_written_end(p), 0);
    node_free(&n);
}

static void test_new_state_adopts_every_durable_record(void **state)
{
    (void)state;
    node_t n = node_new();
    char path[4096], text[256];
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    commit_end(&n, p, append_values(p, 2, "a"));
    append_values(p, 1, "b");
    node_close(&n);
    snprintf(path, sizeof path, "rm -rf '%s/state'", n.dir);
    assert_int_equal(system(path), 0);
    node_open(&n, 1);
    p = partition_of(&n, "out");
    assert_int_equal(sl_partition_end_offset(p), 3);
    read_all(p, text, sizeof text);
    assert_string_equal(text, "a-0,a-1,b-0");
    assert_int_equal(lso_of(&n, "out", 0), 3);
    node_close(&n);
    node_open(&n, 1); /* adopted once; from now on the state knows */
    assert_int_equal(sl_partition_end_offset(partition_of(&n, "out")), 3);
    node_free(&n);
}

static void put_raw(node_t *n, const void *key, size_t key_len, int64_t value, size_t value_len)
{
    uint8_t bytes[8];
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {key_len, (void *)key}, v = {value_len, bytes};
    sl_put_be64(bytes, (uint64_t)value);
    assert_int_equal(sl_state_database(n->state, SL_LSO_DATABASE, &dbi), 0);
    assert_int_equal(sl_state_begin(n->state, 1, &txn), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(sl_state_commit(txn), 0);
}

/* An lso beyond the log (the log lost committed records) is reported and
 * the partition stays readable up to what it has. */
static void test_committed_end_beyond_the_log_is_reported(void **state)
{
    (void)state;
    node_t n = node_new();
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    commit_end(&n, p, append_values(p, 3, "a"));
    put_raw(&n, "out\0\0\0\0\0", 8, 10, 8);
    node_close(&n);
    node_open(&n, 1);
    p = partition_of(&n, "out");
    assert_int_equal(sl_partition_end_offset(p), 3);
    assert_int_equal(tu_count(p, 0), 3);
    node_free(&n);
}

/* A damaged entry: the partition stays as it was (invisible), the others
 * recover, and attach says what was wrong. */
static void test_damaged_entry_is_an_error_for_its_partition_only(void **state)
{
    (void)state;
    node_t n = node_new();
    sl_partition_t *bad = tu_topic(n.log, "bad", "transactional=true", NULL);
    sl_partition_t *good = tu_topic(n.log, "good", "transactional=true", NULL);
    commit_end(&n, bad, append_values(bad, 1, "a"));
    commit_end(&n, good, append_values(good, 2, "a"));
    put_raw(&n, "bad\0\0\0\0\0", 8, 1, 4);
    node_close(&n);
    node_open(&n, 0);
    assert_int_equal(sl_log_attach_state(n.log, n.state), SL_ECORRUPT);
    assert_non_null(strstr(sl_error_detail(), "bad/0"));
    assert_int_equal(sl_partition_end_offset(partition_of(&n, "bad")), 0);
    assert_int_equal(sl_partition_end_offset(partition_of(&n, "good")), 2);
    node_free(&n);
}

static void test_deleting_a_topic_forgets_its_committed_ends(void **state)
{
    (void)state;
    node_t n = node_new();
    int64_t end;
    sl_partition_t *p = tu_topic(n.log, "out", "transactional=true", NULL);
    commit_end(&n, p, append_values(p, 2, "a"));
    assert_int_equal(sl_log_delete_topic(n.log, "out"), 0);
    assert_int_equal(sl_lso_get(n.state, "out", 0, &end), SL_ENOTFOUND);
    /* a leftover of a topic deleted while the node was down goes at attach */
    put_raw(&n, "ghost\0\0\0\0\0", 10, 7, 8);
    p = tu_topic(n.log, "kept", "transactional=true", NULL);
    commit_end(&n, p, append_values(p, 1, "a"));
    node_close(&n);
    node_open(&n, 1);
    assert_int_equal(sl_lso_get(n.state, "ghost", 0, &end), SL_ENOTFOUND);
    assert_int_equal(lso_of(&n, "kept", 0), 1);
    assert_int_equal(sl_lso_get(n.state, "", 0, &end), SL_EINVALID);
    node_free(&n);
}

/* Keyed records in small segments: the uncommitted ones sit in a closed
 * segment and the active one. Compaction must not drop them (its key map
 * stops at the visible end), retention must not delete them. */
static void test_compaction_and_retention_leave_uncommitted_segments_alone(void **state)
{
    (void)state;
    node_t n = node_new();
    char value[600];
    sl_partition_t *p = tu_topic(n.log, "log", "transactional=true", "cleanup.policy=compact",
                                 "segment.bytes=1024", "delete.retention.ms=0", NULL);
    memset(value, 'x', sizeof value - 1);
    value[sizeof value - 1] = 0;
    sl_record_t rec = tu_record("k", value, 1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(sl_partition_append(p, &rec, 1, NULL), 0);
    commit_end(&n, p, 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sl_partition_append(p, &rec, 1, NULL), 0);
    assert_true(sl_partition_segment_count(p) >= 3);
    assert_int_equal(sl_partition_compact(p, 0), 0);
    assert_int_equal(tu_count(p, 0), 1); /* the committed part did compact */
    sl_partition_t *q = tu_topic(n.log, "old", "transactional=true", "segment.bytes=1024",
                                 "retention.bytes=0", NULL);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sl_partition_append(q, &rec, 1, NULL), 0);
    commit_end(&n, q, 1);
    assert_int_equal(sl_partition_apply_retention(q, 0, NULL), 0);
    assert_true(sl_partition_start_offset(q) <= 1);

    commit_end(&n, p, 5);
    sl_reader_t *r;
    sl_record_t got;
    int64_t last = -1;
    assert_int_equal(sl_reader_open(p, 0, &r), 0);
    while (sl_reader_next(r, &got) == 1)
        last = got.offset;
    sl_reader_close(r);
    assert_int_equal(last, 4); /* the newest record survived */
    node_free(&n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transactional_setting_is_parsed_and_kept_in_meta),
        cmocka_unit_test(test_uncommitted_records_are_invisible_until_the_commit),
        cmocka_unit_test(test_aborted_lso_is_not_recorded),
        cmocka_unit_test(test_visible_end_rules),
        cmocka_unit_test(test_waiter_wakes_when_records_become_visible),
        cmocka_unit_test(test_other_topics_are_visible_once_durable),
        cmocka_unit_test(test_close_without_commit_truncates_to_the_committed_end),
        cmocka_unit_test(test_kill_9_before_the_commit_loses_only_uncommitted_records),
        cmocka_unit_test(test_partition_that_never_committed_is_emptied),
        cmocka_unit_test(test_new_state_adopts_every_durable_record),
        cmocka_unit_test(test_committed_end_beyond_the_log_is_reported),
        cmocka_unit_test(test_damaged_entry_is_an_error_for_its_partition_only),
        cmocka_unit_test(test_deleting_a_topic_forgets_its_committed_ends),
        cmocka_unit_test(test_compaction_and_retention_leave_uncommitted_segments_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

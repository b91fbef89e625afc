/*
 * test_changelog.c - changelogs and restore: a store's committed changes
 * appended to its changelog rebuild a byte-identical store in a new state
 * (kv and window stores, updates and deletes across many small batches, a
 * compacted changelog); restore-needed detection by checkpoint; progress;
 * resuming after more changes; a damaged record; a checkpoint beyond the
 * changelog; and the restored window store expiring like the original.
 */
#include "testutil.h"

#include "storage/state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct node {
    char *dir;
    sl_log_t *log;
    sl_state_t *state;
    sl_store_t *store;
    sl_cache_t *cache;
    sl_partition_t *changelog;
} node_t;

static void node_open(node_t *n, sl_store_kind_t kind)
{
    assert_int_equal(sl_log_open(n->dir, NULL, &n->log), 0);
    assert_int_equal(sl_state_open(n->dir, NULL, &n->state), 0);
    assert_int_equal(sl_log_attach_state(n->log, n->state), 0);
    assert_int_equal(sl_store_open(n->state, "pipe", "agg", kind, &n->store), 0);
    assert_int_equal(sl_cache_new(n->store, 0, &n->cache), 0);
    sl_topic_t *t = sl_log_topic(n->log, sl_store_changelog_topic(n->store));
    if (!t) {
        sl_topic_config_t cfg;
        sl_changelog_topic_config(&cfg, 2, "pipe");
        cfg.segment_bytes = 4096; /* several segments, for compaction */
        assert_int_equal(sl_log_create_topic(n->log, sl_store_changelog_topic(n->store), &cfg, &t),
                         0);
    }
    n->changelog = sl_topic_partition(t, 1); /* the task of partition 1 */
}

static void node_close(node_t *n)
{
    sl_cache_free(n->cache);
    sl_store_close(n->store);
    sl_log_close(n->log);
    sl_state_close(n->state);
}

/* Deletes DATA/state: the node lost its LMDB data. */
static void lose_state(node_t *n)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/state'", n->dir);
    assert_int_equal(system(cmd), 0);
}

/* The protocol in small: append the changes to the changelog, then write
 * entries, checkpoint and lso in one transaction, then show the records. */
static void commit(node_t *n)
{
    const sl_record_t *changes;
    size_t count;
    int64_t first;
    MDB_txn *txn;
    int32_t p = sl_partition_id(n->changelog);
    assert_int_equal(sl_cache_changes(n->cache, &changes, &count), 0);
    if (count == 0)
        return;
    assert_int_equal(sl_partition_append(n->changelog, changes, count, &first), 0);
    int64_t end = first + (int64_t)count;
    assert_int_equal(sl_state_begin(n->state, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(n->cache, txn, 1, &(int){0}), 0);
    assert_int_equal(sl_store_checkpoint_put(n->store, txn, p, end), 0);
    assert_int_equal(sl_lso_put(n->state, txn, n->changelog, end), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    sl_cache_committed(n->cache);
    assert_int_equal(sl_partition_set_visible_end(n->changelog, end), 0);
}

/* The whole store as text: "key=value" per entry, keys in hex. */
typedef struct dump {
    char *text;
    size_t len, cap;
    int entries;
} dump_t;

static int dump_entry(void *arg, const void *key, size_t key_len, const void *value, size_t n)
{
    dump_t *d = arg;
    if (d->len + 2 * key_len + n + 8 > d->cap) {
        d->cap = (d->cap + 2 * key_len + n + 8) * 2;
        d->text = realloc(d->text, d->cap);
        assert_non_null(d->text);
    }
    for (size_t i = 0; i < key_len; i++)
        d->len += (size_t)sprintf(d->text + d->len, "%02x", ((const uint8_t *)key)[i]);
    d->text[d->len++] = '=';
    memcpy(d->text + d->len, value, n);
    d->len += n;
    d->text[d->len++] = '\n';
    d->text[d->len] = 0;
    d->entries++;
    return 0;
}

static dump_t dump_store(node_t *n)
{
    dump_t d = {0};
    MDB_txn *txn;
    d.text = calloc(1, 1);
    assert_int_equal(sl_state_begin(n->state, 0, &txn), 0);
    assert_int_equal(sl_store_foreach(n->store, txn, dump_entry, &d), 0);
    mdb_txn_abort(txn);
    return d;
}

static int entry_count(node_t *n)
{
    dump_t d = dump_store(n);
    free(d.text);
    return d.entries;
}

static void assert_store_is(node_t *n, const char *expected)
{
    dump_t d = dump_store(n);
    assert_string_equal(d.text, expected);
    free(d.text);
}

static void put_value(node_t *n, int key, int window, int version)
{
    char k[32], v[64];
    snprintf(k, sizeof k, "user-%d", key);
    snprintf(v, sizeof v, "{\"count\":%d,\"key\":%d}", version, key);
    int rc = sl_store_kind(n->store) == SL_STORE_WINDOW
                 ? sl_cache_window_put(n->cache, k, strlen(k), (int64_t)window * 60000 - 120000, v,
                                       strlen(v))
                 : sl_cache_put(n->cache, k, strlen(k), v, strlen(v));
    assert_true(rc == 0 || rc == 1);
}

static void delete_value(node_t *n, int key, int window)
{
    char k[32];
    snprintf(k, sizeof k, "user-%d", key);
    int rc = sl_store_kind(n->store) == SL_STORE_WINDOW
                 ? sl_cache_window_delete(n->cache, k, strlen(k), (int64_t)window * 60000 - 120000)
                 : sl_cache_delete(n->cache, k, strlen(k));
    assert_true(rc == 0 || rc == 1);
}

/* Ten commits of puts, updates and deletes over 200 keys. */
static void make_history(node_t *n)
{
    for (int round = 0; round < 10; round++) {
        for (int key = round; key < 200; key += 3)
            put_value(n, key, round % 4, round);
        for (int key = round * 7; key < 200; key += 11)
            delete_value(n, key, (round + 3) % 4);
        commit(n);
    }
}

/* 150 commits of two puts (and a delete every fifth), keys going down:
 * a changelog of many short sorted runs, keys changing many times. */
static void make_scattered_history(node_t *n)
{
    for (int round = 0; round < 150; round++) {
        put_value(n, 199 - round, round % 3, round);
        put_value(n, 199 - (round * 7) % 150, round % 3, round + 1000);
        if (round % 5 == 0)
            delete_value(n, 199 - (round * 11) % 150, round % 3);
        commit(n);
    }
}

static void (*g_history)(node_t *n) = make_history;

typedef struct seen {
    int calls;
    int64_t last_position, last_records, last_bytes;
    int64_t most_bytes; /* the largest batch, in key and value bytes */
} seen_t;

static void on_progress(void *arg, const sl_restore_progress_t *p)
{
    seen_t *s = arg;
    assert_true(p->position > s->last_position);
    assert_true(p->records >= s->last_records);
    assert_string_equal(p->store, "pipe.agg");
    assert_int_equal(p->partition, 1);
    s->calls++;
    if (p->bytes - s->last_bytes > s->most_bytes)
        s->most_bytes = p->bytes - s->last_bytes;
    s->last_position = p->position;
    s->last_records = p->records;
    s->last_bytes = p->bytes;
}

/* Restores after losing the state, in batches of at most batch_records
 * records and about batch_bytes bytes, and compares with the original. */
static seen_t restore_in_batches(sl_store_kind_t kind, int compact, size_t batch_records,
                                 size_t batch_bytes)
{
    node_t n = {.dir = tu_mkdtemp()};
    int64_t from;
    seen_t seen = {0};
    sl_restore_progress_t result;
    sl_restore_options_t opts = {.batch_records = batch_records,
                                 .batch_bytes = batch_bytes,
                                 .progress = on_progress,
                                 .progress_arg = &seen};
    node_open(&n, kind);
    g_history(&n);
    if (compact) {
        assert_int_equal(sl_partition_roll(n.changelog), 0);
        assert_int_equal(sl_partition_compact(n.changelog, INT64_MAX / 4), 0);
    }
    dump_t before = dump_store(&n);
    assert_true(before.entries > 50);
    assert_int_equal(sl_store_restore_needed(n.store, n.changelog, -1, &from), 0);
    int64_t end = sl_partition_end_offset(n.changelog);
    node_close(&n);
    lose_state(&n);
    node_open(&n, kind);
    assert_int_equal(sl_partition_end_offset(n.changelog), end); /* adopted by the new state */
    assert_int_equal(entry_count(&n), 0);
    assert_int_equal(sl_store_restore_needed(n.store, n.changelog, -1, &from), 1);
    assert_int_equal(from, sl_partition_start_offset(n.changelog));
    assert_int_equal(sl_store_restore(n.store, n.changelog, &opts, &result), 0);
    assert_int_equal(result.position, end);
    assert_int_equal(result.to, end);
    assert_int_equal(seen.last_position, end);
    assert_true(result.records >= before.entries);
    assert_true(result.bytes > 0);
    dump_t after = dump_store(&n);
    assert_int_equal(after.entries, before.entries);
    assert_string_equal(after.text, before.text);
    assert_int_equal(sl_store_restore_needed(n.store, n.changelog, -1, &from), 0);
    free(before.text);
    free(after.text);
    node_close(&n);
    tu_rmdir(n.dir);
    return seen;
}

static void check_restore_is_identical(sl_store_kind_t kind, int compact)
{
    assert_true(restore_in_batches(kind, compact, 37, 0).calls > 3);
}

/* A batch also ends at batch_bytes: the first record past the limit ends
 * it (records here are about 40 bytes). */
static void test_restore_batches_end_at_the_byte_limit(void **state)
{
    (void)state;
    seen_t seen = restore_in_batches(SL_STORE_WINDOW, 0, 0, 200);
    assert_true(seen.most_bytes >= 200);
    assert_true(seen.most_bytes < 200 + 100);
    assert_true(seen.calls > 10);
    seen_t whole = restore_in_batches(SL_STORE_WINDOW, 0, 0, 0);
    assert_int_equal(whole.calls, 1); /* the defaults: one batch for it all */
}

static void test_kv_store_restores_byte_identical(void **state)
{
    (void)state;
    check_restore_is_identical(SL_STORE_KV, 0);
}

static void test_window_store_restores_byte_identical(void **state)
{
    (void)state;
    check_restore_is_identical(SL_STORE_WINDOW, 0);
}

static void test_compacted_changelog_restores_byte_identical(void **state)
{
    (void)state;
    check_restore_is_identical(SL_STORE_KV, 1);
    check_restore_is_identical(SL_STORE_WINDOW, 1);
}

/* A changelog of many short runs, restored in one batch and in batches of
 * 37 (the other tests' changelogs are a few long runs). */
static void test_unsorted_changelog_restores_byte_identical(void **state)
{
    (void)state;
    g_history = make_scattered_history;
    for (int kind = 0; kind < 2; kind++) {
        sl_store_kind_t k = kind ? SL_STORE_WINDOW : SL_STORE_KV;
        check_restore_is_identical(k, 0);
        assert_int_equal(restore_in_batches(k, 0, 0, 0).calls, 1);
    }
    g_history = make_history;
}

/* A store behind its changelog (here: changes committed by a node whose
 * LMDB was then replaced by an older copy) resumes from its checkpoint. */
static void test_restore_resumes_from_the_checkpoint(void **state)
{
    (void)state;
    node_t n = {.dir = tu_mkdtemp()};
    int64_t from, checkpoint;
    sl_restore_progress_t result;
    node_open(&n, SL_STORE_KV);
    put_value(&n, 1, 0, 1);
    put_value(&n, 2, 0, 1);
    commit(&n);
    checkpoint = sl_partition_end_offset(n.changelog);
    dump_t old = dump_store(&n);
    put_value(&n, 2, 0, 2);
    put_value(&n, 3, 0, 2);
    commit(&n);
    dump_t newest = dump_store(&n);
    /* go back: the old entries and checkpoint, the newer changelog */
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(n.state, 1, &txn), 0);
    sl_record_t undo[2] = {tu_record("user-2", "{\"count\":1,\"key\":2}", 0),
                           tu_record("user-3", NULL, 0)};
    assert_int_equal(sl_store_apply(n.store, txn, undo, 2), 0);
    assert_int_equal(sl_store_checkpoint_put(n.store, txn, 1, checkpoint), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_store_is(&n, old.text);
    assert_int_equal(sl_store_restore_needed(n.store, n.changelog, -1, &from), 1);
    assert_int_equal(from, checkpoint);
    assert_int_equal(sl_store_restore(n.store, n.changelog, NULL, &result), 0);
    assert_int_equal(result.from, checkpoint);
    assert_int_equal(result.records, 2); /* only what came after the checkpoint */
    assert_store_is(&n, newest.text);
    assert_int_equal(sl_store_restore(n.store, n.changelog, NULL, &result), 0); /* nothing */
    assert_int_equal(result.records, 0);
    free(old.text);
    free(newest.text);
    node_close(&n);
    tu_rmdir(n.dir);
}

static void test_damaged_changelog_record_stops_the_restore(void **state)
{
    (void)state;
    node_t n = {.dir = tu_mkdtemp()};
    sl_record_t bad[2] = {tu_record("good", "1", 0), tu_record(NULL, "no key", 0)};
    sl_topic_t *t;
    sl_topic_config_t cfg;
    sl_store_t *w;
    node_open(&n, SL_STORE_KV);
    /* a changelog that is not compacted can hold a null key */
    sl_changelog_topic_config(&cfg, 1, "pipe");
    cfg.cleanup = SL_CLEANUP_DELETE;
    assert_int_equal(sl_log_create_topic(n.log, "pipe.raw.changelog", &cfg, &t), 0);
    sl_partition_t *p = sl_topic_partition(t, 0);
    assert_int_equal(sl_partition_append(p, bad, 2, NULL), 0);
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(n.state, 1, &txn), 0);
    assert_int_equal(sl_lso_put(n.state, txn, p, 2), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_int_equal(sl_partition_set_visible_end(p, 2), 0);
    assert_int_equal(sl_store_open(n.state, "pipe", "raw", SL_STORE_KV, &w), 0);
    assert_int_equal(sl_store_restore(w, p, NULL, NULL), SL_ECORRUPT);
    assert_non_null(strstr(sl_error_detail(), "pipe.raw.changelog/0"));
    assert_non_null(strstr(sl_error_detail(), "offset 1 has a null key"));
    sl_record_t short_window = tu_record("abc", "v", 0);
    sl_store_close(w);
    assert_int_equal(sl_store_open(n.state, "pipe", "win", SL_STORE_WINDOW, &w), 0);
    assert_int_equal(sl_changelog_check(w, &short_window), SL_ECORRUPT);
    sl_store_close(w);
    node_close(&n);
    tu_rmdir(n.dir);
}

static void test_checkpoint_beyond_the_changelog_counts_as_up_to_date(void **state)
{
    (void)state;
    node_t n = {.dir = tu_mkdtemp()};
    int64_t from = -1;
    MDB_txn *txn;
    node_open(&n, SL_STORE_KV);
    put_value(&n, 1, 0, 1);
    commit(&n);
    assert_int_equal(sl_state_begin(n.state, 1, &txn), 0);
    assert_int_equal(sl_store_checkpoint_put(n.store, txn, 1, 1000), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_int_equal(sl_store_restore_needed(n.store, n.changelog, -1, &from), 0);
    node_close(&n);
    tu_rmdir(n.dir);
}

/* The restored window store has its time index: expiry finds every old
 * window, as in the original. */
static void test_restored_window_store_expires_like_the_original(void **state)
{
    (void)state;
    node_t n = {.dir = tu_mkdtemp()};
    size_t before, after;
    node_open(&n, SL_STORE_WINDOW);
    make_history(&n);
    sl_cache_t *probe;
    assert_int_equal(sl_cache_new(n.store, 0, &probe), 0);
    assert_int_equal(sl_cache_expire(probe, 0, 0, &before), 0);
    sl_cache_free(probe);
    assert_true(before > 0);
    node_close(&n);
    lose_state(&n);
    node_open(&n, SL_STORE_WINDOW);
    assert_int_equal(sl_store_restore(n.store, n.changelog, NULL, NULL), 0);
    assert_int_equal(sl_cache_expire(n.cache, 0, 0, &after), 0);
    assert_int_equal(after, before);
    commit(&n);
    assert_int_equal(sl_cache_expire(n.cache, 0, 0, &after), 0);
    assert_int_equal(after, 0);
    node_close(&n);
    tu_rmdir(n.dir);
}

/* A changelog topic made with the changelog defaults rolls segments small
 * enough that compaction reaches all but the newest of a store's changes:
 * 24 MiB of changes to 4 keys compact to under half. */
static void test_a_changelog_is_compacted_beyond_its_newest_segment(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    static char value[8192];
    sl_log_t *log;
    sl_topic_t *t;
    sl_topic_config_t cfg;
    memset(value, 'v', sizeof value - 1);
    assert_int_equal(sl_log_open(dir, NULL, &log), 0);
    sl_changelog_topic_config(&cfg, 1, "pipe");
    assert_int_equal(sl_log_create_topic(log, "pipe.agg.changelog", &cfg, &t), 0);
    sl_partition_t *p = sl_topic_partition(t, 0);
    static const char *const keys[] = {"k0", "k1", "k2", "k3"};
    for (int batch = 0; batch < 48; batch++) { /* 64 changes each */
        sl_record_t recs[64];
        int64_t first;
        for (int i = 0; i < 64; i++)
            recs[i] = tu_record(keys[i % 4], value, 0);
        assert_int_equal(sl_partition_append(p, recs, 64, &first), 0);
        assert_int_equal(sl_partition_set_visible_end(p, first + 64), 0);
    }
    int64_t before = sl_partition_size_bytes(p);
    assert_true(before > (24 << 20));
    assert_int_equal(sl_partition_compact(p, 0), 0);
    assert_true(sl_partition_size_bytes(p) < before / 2);
    assert_int_equal(tu_count(p, 0) > 4, 1); /* the newest segment is left as it is */
    sl_log_close(log);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_store_restores_byte_identical),
        cmocka_unit_test(test_window_store_restores_byte_identical),
        cmocka_unit_test(test_compacted_changelog_restores_byte_identical),
        cmocka_unit_test(test_unsorted_changelog_restores_byte_identical),
        cmocka_unit_test(test_restore_batches_end_at_the_byte_limit),
        cmocka_unit_test(test_restore_resumes_from_the_checkpoint),
        cmocka_unit_test(test_damaged_changelog_record_stops_the_restore),
        cmocka_unit_test(test_checkpoint_beyond_the_changelog_counts_as_up_to_date),
        cmocka_unit_test(test_restored_window_store_expires_like_the_original),
        cmocka_unit_test(test_a_changelog_is_compacted_beyond_its_newest_segment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

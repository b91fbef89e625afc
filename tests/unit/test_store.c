/*
 * test_store.c - state stores and the write cache: names and kinds, key
 * limits, reads through the cache and after a commit, deletes, changes in
 * LMDB's key order, window ranges (also with keys that interleave), the
 * cache's windows over LMDB's, expiry through the time index, the full
 * signal and eviction, a failed commit keeping changes, reads from another
 * thread during a commit, checkpoints, opening a store by its full name
 * alone, paging through a store, and allocation failure.
 */
#include "testutil.h"

#include "storage/keysort.h"
#include "storage/state.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fixture {
    char *dir;
    sl_state_t *state;
    sl_store_t *store;
    sl_cache_t *cache;
} fixture_t;

static void open_fixture(fixture_t *f, sl_store_kind_t kind, size_t cache_bytes)
{
    f->dir = tu_mkdtemp();
    assert_int_equal(sl_state_open(f->dir, NULL, &f->state), 0);
    assert_int_equal(sl_store_open(f->state, "pipe", "counts", kind, &f->store), 0);
    assert_int_equal(sl_cache_new(f->store, cache_bytes, &f->cache), 0);
}

static void close_fixture(fixture_t *f)
{
    sl_cache_free(f->cache);
    sl_store_close(f->store);
    sl_state_close(f->state);
    tu_rmdir(f->dir);
}

/* Flushes the cache in a write transaction and commits it. */
static void commit(fixture_t *f)
{
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(f->state, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(f->cache, txn, 1, &(int){0}), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    sl_cache_committed(f->cache);
}

static void put(fixture_t *f, const char *key, const char *value)
{
    int rc = sl_cache_put(f->cache, key, strlen(key), value, strlen(value));
    assert_true(rc == 0 || rc == 1);
}

static void window_put(fixture_t *f, const char *key, int64_t start, const char *value)
{
    int rc = sl_cache_window_put(f->cache, key, strlen(key), start, value, strlen(value));
    assert_true(rc == 0 || rc == 1);
}

/* The cache's value of key as a string, or "-" when it has none. */
static const char *cached(fixture_t *f, const char *key)
{
    static char text[256];
    const void *value;
    size_t n;
    int rc = sl_cache_get(f->cache, key, strlen(key), &value, &n);
    assert_true(rc == 0 || rc == 1);
    snprintf(text, sizeof text, "%.*s", rc ? (int)n : 1, rc ? (const char *)value : "-");
    return text;
}

/* LMDB's committed value of key, or "-". */
static const char *stored(fixture_t *f, const char *key)
{
    static char text[256];
    const void *value;
    size_t n;
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(f->state, 0, &txn), 0);
    int rc = sl_store_get(f->store, txn, key, strlen(key), &value, &n);
    assert_true(rc == 0 || rc == SL_ENOTFOUND);
    snprintf(text, sizeof text, "%.*s", rc ? 1 : (int)n, rc ? "-" : (const char *)value);
    mdb_txn_abort(txn);
    return text;
}

/* "start=value " per window, into a text. */
typedef struct listing {
    char text[4096];
    int count;
} listing_t;

static int list_window(void *arg, int64_t start, const void *value, size_t n)
{
    listing_t *l = arg;
    size_t used = strlen(l->text);
    snprintf(l->text + used, sizeof l->text - used, "%lld=%.*s ", (long long)start, (int)n,
             (const char *)value);
    l->count++;
    return 0;
}

static const char *stored_windows(fixture_t *f, const char *key, int64_t from, int64_t to)
{
    static listing_t l;
    MDB_txn *txn;
    memset(&l, 0, sizeof l);
    assert_int_equal(sl_state_begin(f->state, 0, &txn), 0);
    assert_int_equal(sl_store_windows(f->store, txn, key, strlen(key), from, to, list_window, &l),
                     0);
    mdb_txn_abort(txn);
    return l.text;
}

static const char *cached_windows(fixture_t *f, const char *key, int64_t from, int64_t to)
{
    static listing_t l;
    memset(&l, 0, sizeof l);
    assert_int_equal(sl_cache_windows(f->cache, key, strlen(key), from, to, list_window, &l), 0);
    return l.text;
}

static void test_names_and_kinds(void **state)
{
    (void)state;
    fixture_t f;
    sl_store_t *s = NULL;
    char long_name[300];
    open_fixture(&f, SL_STORE_KV, 0);
    assert_string_equal(sl_store_name(f.store), "pipe.counts");
    assert_string_equal(sl_store_changelog_topic(f.store), "pipe.counts.changelog");
    assert_int_equal(sl_store_kind(f.store), SL_STORE_KV);
    assert_int_equal(sl_store_open(f.state, "", "x", SL_STORE_KV, &s), SL_EINVALID);
    assert_int_equal(sl_store_open(f.state, "pipe", "a/b", SL_STORE_KV, &s), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "store pipe.a/b"));
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    assert_int_equal(sl_store_open(f.state, "pipe", long_name, SL_STORE_KV, &s), SL_EINVALID);
    assert_int_equal(sl_store_open(f.state, "pipe", "counts", SL_STORE_WINDOW, &s), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "is a kv store, not a window store"));
    assert_int_equal(sl_store_open(f.state, "pipe", "x", (sl_store_kind_t)7, &s), SL_EINVALID);
    assert_null(s);
    assert_int_equal(sl_store_open(f.state, "pipe", "counts", SL_STORE_KV, &s), 0); /* again */
    sl_store_close(s);
    close_fixture(&f);
}

static void test_reads_see_the_cache_then_lmdb_after_commit(void **state)
{
    (void)state;
    fixture_t f;
    open_fixture(&f, SL_STORE_KV, 0);
    put(&f, "alice", "1");
    put(&f, "bob", "2");
    assert_string_equal(cached(&f, "alice"), "1");
    assert_string_equal(stored(&f, "alice"), "-"); /* nothing in LMDB before the commit */
    assert_int_equal(sl_cache_dirty_count(f.cache), 2);
    commit(&f);
    assert_int_equal(sl_cache_dirty_count(f.cache), 0);
    assert_string_equal(stored(&f, "alice"), "1");
    assert_string_equal(stored(&f, "bob"), "2");
    put(&f, "alice", "a much longer value than before");
    assert_string_equal(cached(&f, "alice"), "a much longer value than before");
    put(&f, "alice", "3");
    assert_string_equal(cached(&f, "alice"), "3");
    assert_int_equal(sl_cache_delete(f.cache, "bob", 3), 0);
    assert_string_equal(cached(&f, "bob"), "-");
    assert_string_equal(stored(&f, "bob"), "2");
    assert_string_equal(cached(&f, "carol"), "-");
    commit(&f);
    assert_string_equal(stored(&f, "alice"), "3");
    assert_string_equal(stored(&f, "bob"), "-");
    sl_cache_clear(f.cache); /* reads now come from LMDB */
    assert_string_equal(cached(&f, "alice"), "3");
    assert_string_equal(cached(&f, "bob"), "-");
    close_fixture(&f);
}

/* Reads then writes of the same key, as aggregates do them: a put right
 * after a get (found or not, while the table grows and after it is
 * emptied) lands on that key, and the other keys keep their values. */
static void test_a_put_after_a_get_of_the_same_key(void **state)
{
    (void)state;
    fixture_t f;
    const void *v;
    size_t n;
    char key[32], value[32];
    open_fixture(&f, SL_STORE_KV, 0);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 5000; i++) {
            snprintf(key, sizeof key, "k%d", i);
            snprintf(value, sizeof value, "%d.%d", i, round);
            assert_int_equal(sl_cache_get(f.cache, key, strlen(key), &v, &n), round > 0);
            if (i % 7 == 0) /* another key read in between */
                assert_int_equal(sl_cache_get(f.cache, "k0", 2, &v, &n), round > 0 || i > 0);
            if (i % 5 == 0) /* another key added in between (the table grows now and then) */
                assert_true(sl_cache_put(f.cache, value, strlen(value), "x", 1) >= 0);
            assert_true(sl_cache_put(f.cache, key, strlen(key), value, strlen(value)) >= 0);
        }
        for (int i = 0; i < 5000; i++) { /* before the commit: from the cache alone */
            snprintf(key, sizeof key, "k%d", i);
            snprintf(value, sizeof value, "%d.%d", i, round);
            assert_string_equal(cached(&f, key), value);
        }
        commit(&f);
        if (round == 1)
            sl_cache_clear(f.cache);
        for (int i = 0; i < 5000; i++) {
            snprintf(key, sizeof key, "k%d", i);
            snprintf(value, sizeof value, "%d.%d", i, round);
            assert_string_equal(cached(&f, key), value);
            assert_string_equal(stored(&f, key), value);
        }
    }
    close_fixture(&f);
}

static int take_one(void *arg, const sl_record_t *change)
{
    char *text = arg;
    size_t used = strlen(text);
    snprintf(text + used, 512 - used, "%.*s=%.*s ", (int)change->key_len, (const char *)change->key,
             change->value ? (int)change->value_len : 1,
             change->value ? (const char *)change->value : "-");
    return strncmp((const char *)change->key, "stop", 4) == 0 ? 7 : 0;
}

static const char *take_changed(fixture_t *f, int want_rc)
{
    static char text[512];
    text[0] = '\0';
    assert_int_equal(sl_cache_take_changed(f->cache, take_one, text), want_rc);
    return text;
}

/* Each change is taken once, in the order the entries first changed,
 * whether or not a commit came between; a change after the take is taken
 * again; a stopped walk leaves the rest for the next. */
static void test_changes_are_taken_once(void **state)
{
    (void)state;
    fixture_t f;
    open_fixture(&f, SL_STORE_KV, 0);
    put(&f, "bob", "2");
    put(&f, "alice", "1");
    put(&f, "bob", "two");
    assert_string_equal(take_changed(&f, 0), "bob=two alice=1 ");
    assert_string_equal(take_changed(&f, 0), "");
    put(&f, "carol", "3");
    assert_int_equal(sl_cache_delete(f.cache, "alice", 5), 0);
    assert_string_equal(take_changed(&f, 0), "alice=- carol=3 ");
    commit(&f);
    assert_string_equal(take_changed(&f, 0), "");
    put(&f, "bob", "b");
    put(&f, "stop", "s");
    put(&f, "zed", "z");
    assert_string_equal(take_changed(&f, 7), "bob=b stop=s ");
    assert_string_equal(take_changed(&f, 0), "zed=z ");
    commit(&f);
    put(&f, "dave", "4"); /* changed after the commit: only this */
    assert_string_equal(take_changed(&f, 0), "dave=4 ");
    sl_cache_clear(f.cache);
    assert_string_equal(take_changed(&f, 0), "");
    close_fixture(&f);
}

static void test_keys_over_lmdb_limit_are_refused(void **state)
{
    (void)state;
    fixture_t f, w;
    char key[600];
    const void *v;
    size_t n;
    memset(key, 'k', sizeof key);
    open_fixture(&f, SL_STORE_KV, 0);
    assert_int_equal(sl_cache_put(f.cache, key, 511, "v", 1), 0);
    assert_int_equal(sl_cache_put(f.cache, key, 512, "v", 1), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "a key of 512 bytes is over the limit of 511"));
    assert_int_equal(sl_cache_put(f.cache, key, 0, "v", 1), SL_EINVALID);
    assert_int_equal(sl_cache_get(f.cache, key, 512, &v, &n), SL_EINVALID);
    assert_int_equal(sl_cache_delete(f.cache, key, 512), SL_EINVALID);
    commit(&f);
    assert_int_equal(sl_cache_window_put(f.cache, "k", 1, 0, "v", 1), SL_EINVALID);
    open_fixture(&w, SL_STORE_WINDOW, 0);
    assert_int_equal(sl_cache_window_put(w.cache, key, 503, 5, "v", 1), 0);
    assert_int_equal(sl_cache_window_put(w.cache, key, 504, 5, "v", 1), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "less 8 for the window"));
    assert_int_equal(sl_cache_put(w.cache, "k", 1, "v", 1), SL_EINVALID);
    commit(&w);
    close_fixture(&w);
    close_fixture(&f);
}

/* Changes come out in LMDB's order (memcmp, then length), whatever order
 * they went in, and LMDB holds them in the same order. */
static const char *const sorted_keys[] = {
    "a", "a\x01", "ab", "abcdefgh", "abcdefgh\x01", "abcdefghi", "b", "\xff\xff"};
#define SORTED_COUNT (sizeof sorted_keys / sizeof *sorted_keys)

static int check_order(void *arg, const void *key, size_t len, const void *value, size_t n)
{
    size_t *i = arg;
    (void)value;
    (void)n;
    assert_true(*i < SORTED_COUNT);
    assert_int_equal(len, strlen(sorted_keys[*i]));
    assert_memory_equal(key, sorted_keys[*i], len);
    (*i)++;
    return 0;
}

/* The changes list each changed entry once, in the order they first
 * changed (a delete as a tombstone); the flush writes them all. */
static void test_changes_list_each_entry_once_in_change_order(void **state)
{
    (void)state;
    fixture_t f;
    const sl_record_t *changes;
    size_t n, seen = 0;
    MDB_txn *txn;
    static const int insertion[] = {6, 2, 7, 0, 4, 1, 5, 3};
    open_fixture(&f, SL_STORE_KV, 0);
    for (size_t i = 0; i < SORTED_COUNT; i++)
        put(&f, sorted_keys[insertion[i]], "v");
    assert_int_equal(sl_cache_delete(f.cache, "a", 1), 0);
    assert_int_equal(sl_cache_changes(f.cache, &changes, &n), 0);
    assert_int_equal(n, SORTED_COUNT);
    for (size_t i = 0; i < n; i++) {
        const char *want = sorted_keys[insertion[i]];
        assert_int_equal(changes[i].key_len, strlen(want));
        assert_memory_equal(changes[i].key, want, strlen(want));
        if (insertion[i] == 0) { /* "a" was deleted: a tombstone */
            assert_int_equal(changes[i].value_len, -1);
            assert_null(changes[i].value);
        } else {
            assert_int_equal(changes[i].value_len, 1);
        }
    }
    put(&f, "a", "back");
    commit(&f);
    assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
    assert_int_equal(sl_store_foreach(f.store, txn, check_order, &seen), 0);
    mdb_txn_abort(txn);
    assert_int_equal(seen, SORTED_COUNT);
    close_fixture(&f);
}

static int lmdb_order(const sl_key_item_t *a, const sl_key_item_t *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->key, b->key, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* Many keys over a small alphabet (zero bytes, shared prefixes, prefixes
 * of each other, duplicates, 1 to 40 bytes): the radix sort agrees with
 * LMDB's order and keeps equal keys in their order. */
static void test_key_sort_matches_lmdb_order(void **state)
{
    (void)state;
    static const uint8_t alphabet[] = {0x00, 0x01, 'a', 0xff};
    enum { N = 20000 };
    uint8_t *bytes = malloc(N * 40);
    sl_key_item_t *items = malloc(N * sizeof *items), *tmp = malloc(N * sizeof *tmp);
    unsigned seed = 7;
    assert_non_null(bytes);
    for (size_t i = 0; i < N; i++) {
        uint32_t len = 1 + (uint32_t)(rand_r(&seed) % (i % 3 ? 12 : 40));
        for (uint32_t j = 0; j < len; j++)
            bytes[i * 40 + j] = j < 9 && i % 5 ? 'u' : alphabet[rand_r(&seed) % 4];
        items[i] = (sl_key_item_t){0, 0, bytes + i * 40, len, (uint32_t)i};
    }
    sl_key_sort(items, tmp, N);
    for (size_t i = 1; i < N; i++) {
        int c = lmdb_order(&items[i - 1], &items[i]);
        assert_true(c < 0 || (c == 0 && items[i - 1].index < items[i].index));
    }
    free(bytes);
    free(items);
    free(tmp);
}

static int in_order(void *arg, const void *key, size_t len, const void *value, size_t n)
{
    sl_key_item_t *last = arg, now = {0, 0, key, (uint32_t)len, 0};
    (void)value;
    (void)n;
    if (last->key)
        assert_true(lmdb_order(last, &now) < 0);
    *last = now;
    return 0;
}

/* The same through a cache: each changed key once among its changes, and
 * all of them in LMDB, in its order, after the flush. */
static void test_many_changes_come_out_in_lmdb_order(void **state)
{
    (void)state;
    fixture_t f;
    const sl_record_t *changes;
    size_t n;
    char key[32];
    unsigned seed = 11;
    open_fixture(&f, SL_STORE_KV, 0);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "user-%0*u", 1 + rand_r(&seed) % 9, rand_r(&seed) % 100000);
        put(&f, key, "v");
    }
    assert_int_equal(sl_cache_changes(f.cache, &changes, &n), 0);
    sl_key_item_t *items = malloc(2 * n * sizeof *items);
    assert_non_null(items);
    for (size_t i = 0; i < n; i++)
        items[i] = (sl_key_item_t){0, 0, changes[i].key, (uint32_t)changes[i].key_len, 0};
    sl_key_sort(items, items + n, n);
    for (size_t i = 1; i < n; i++) /* no key twice */
        assert_true(lmdb_order(&items[i - 1], &items[i]) < 0);
    free(items);
    commit(&f);
    sl_key_item_t last = {0};
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
    assert_int_equal(sl_store_foreach(f.store, txn, in_order, &last), 0);
    mdb_txn_abort(txn);
    close_fixture(&f);
}

static void test_window_ranges(void **state)
{
    (void)state;
    fixture_t f;
    uint8_t twin[32];
    const void *v;
    size_t n;
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    window_put(&f, "k", 100, "a");
    window_put(&f, "k", 200, "b");
    window_put(&f, "k", -50, "neg");
    window_put(&f, "k", 300, "c");
    window_put(&f, "kk", 150, "other");
    /* a key that is "k" followed by the bytes of window 150: its store
     * keys sort between k's windows 100 and 200 */
    size_t twin_len = sl_store_window_key(twin, "k", 1, 150);
    twin[twin_len++] = 'z';
    assert_int_equal(sl_cache_window_put(f.cache, twin, twin_len, 7, "twin", 4), 0);
    commit(&f);
    assert_string_equal(stored_windows(&f, "k", INT64_MIN, INT64_MAX),
                        "-50=neg 100=a 200=b 300=c ");
    assert_string_equal(stored_windows(&f, "k", 100, 200), "100=a 200=b ");
    assert_string_equal(stored_windows(&f, "k", 101, 199), "");
    assert_string_equal(stored_windows(&f, "k", 300, 100), "");
    assert_string_equal(stored_windows(&f, "kk", 0, 1000), "150=other ");
    assert_string_equal(stored_windows(&f, "nope", 0, 1000), "");
    assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
    assert_int_equal(sl_store_get_window(f.store, txn, "k", 1, 200, &v, &n), 0);
    assert_memory_equal(v, "b", 1);
    assert_int_equal(sl_store_get_window(f.store, txn, "k", 1, 201, &v, &n), SL_ENOTFOUND);
    assert_int_equal(sl_store_get(f.store, txn, "k", 1, &v, &n), SL_EINVALID);
    mdb_txn_abort(txn);
    int64_t start;
    size_t key_len;
    assert_int_equal(sl_store_window_split(twin, twin_len - 1, &key_len, &start), 0);
    assert_int_equal(key_len, 1);
    assert_int_equal(start, 150);
    assert_int_equal(sl_store_window_split(twin, 8, &key_len, &start), SL_ECORRUPT);
    close_fixture(&f);
}

static void test_cache_windows_overlay_lmdb(void **state)
{
    (void)state;
    fixture_t f;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    window_put(&f, "k", 100, "a");
    window_put(&f, "k", 200, "b");
    window_put(&f, "k", 300, "c");
    commit(&f);
    window_put(&f, "k", 200, "B");
    assert_int_equal(sl_cache_window_delete(f.cache, "k", 1, 300), 0);
    window_put(&f, "k", 250, "new");
    window_put(&f, "k", 50, "early");
    window_put(&f, "j", 200, "other key");
    assert_string_equal(cached_windows(&f, "k", 0, 1000), "50=early 100=a 200=B 250=new ");
    assert_string_equal(cached_windows(&f, "k", 150, 260), "200=B 250=new ");
    assert_string_equal(cached_windows(&f, "j", 0, 1000), "200=other key ");
    commit(&f);
    assert_string_equal(stored_windows(&f, "k", 0, 1000), "50=early 100=a 200=B 250=new ");
    close_fixture(&f);
}

/* A key's windows are chained from the first ask on: those cached before
 * it, those added after it while the key table grows, and after an
 * emptying. Each key k has windows 10 * w for w < k % 7 + 1 (value
 * "k:w"), checked against that. */
static void check_key_windows(fixture_t *f, int keys, int from_key)
{
    for (int k = from_key; k < keys; k += 97) {
        char key[16], want[256] = "";
        snprintf(key, sizeof key, "key%d", k);
        for (int w = 0; w < k % 7 + 1; w++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%d=%d:%d ", 10 * w, k, w);
        assert_string_equal(cached_windows(f, key, 0, 1000), want);
    }
}

static void put_key_windows(fixture_t *f, int from, int to)
{
    for (int k = from; k < to; k++)
        for (int w = k % 7; w >= 0; w--) { /* newest start first: the chain sorts */
            char key[16], value[32];
            snprintf(key, sizeof key, "key%d", k);
            snprintf(value, sizeof value, "%d:%d", k, w);
            window_put(f, key, 10 * w, value);
        }
}

static void test_cache_windows_chain_before_and_after_the_first_ask(void **state)
{
    (void)state;
    fixture_t f;
    open_fixture(&f, SL_STORE_WINDOW, (size_t)1 << 30);
    put_key_windows(&f, 0, 3000);
    check_key_windows(&f, 3000, 0);  /* the first ask chains 12000 windows */
    put_key_windows(&f, 3000, 9000); /* the key table grows twice */
    check_key_windows(&f, 9000, 1);
    window_put(&f, "key5", 990, "late one");
    assert_string_equal(cached_windows(&f, "key5", 500, 1000), "990=late one ");
    assert_string_equal(cached_windows(&f, "nobody", 0, 1000), "");
    commit(&f);
    sl_cache_clear(f.cache);
    assert_string_equal(cached_windows(&f, "key5", 0, 1000), "0=5:0 10=5:1 20=5:2 30=5:3 "
                                                             "40=5:4 50=5:5 990=late one ");
    put_key_windows(&f, 9000, 9100); /* chained at once after an emptying */
    check_key_windows(&f, 9100, 9000);
    close_fixture(&f);
}

/* The cache-only read finds what the cache holds and never LMDB's. */
static void test_cached_window_reads_skip_lmdb(void **state)
{
    (void)state;
    fixture_t f;
    const void *v;
    size_t n;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    window_put(&f, "k", 100, "a");
    assert_int_equal(sl_cache_window_get_cached(f.cache, "k", 1, 100, &v, &n), 1);
    assert_int_equal(n, 1);
    assert_memory_equal(v, "a", 1);
    commit(&f);
    sl_cache_clear(f.cache); /* now only LMDB has it */
    assert_int_equal(sl_cache_window_get_cached(f.cache, "k", 1, 100, &v, &n), 0);
    assert_int_equal(sl_cache_window_get(f.cache, "k", 1, 100, &v, &n), 1);
    assert_int_equal(sl_cache_window_delete(f.cache, "k", 1, 100), 0);
    assert_int_equal(sl_cache_window_get_cached(f.cache, "k", 1, 100, &v, &n), 0); /* deleted */
    assert_int_equal(sl_cache_window_get_cached(f.cache, "k", 1, 999, &v, &n), 0);
    close_fixture(&f);
}

/* Prefetching (sl_cache_window_prefetch, sl_cache_key_prefetch and their
 * stages) is a hint: the same key hashes the same, a store of the other
 * kind or a key too long (or empty) gives 0,
 * and stages given hashes gone stale (the table grew past the huge-page
 * size of its slots, the cache was emptied) change nothing a read sees. */
static void test_prefetch_changes_nothing(void **state)
{
    (void)state;
    enum { WINDOWS = 300000 };
    fixture_t f, kv;
    const void *v;
    size_t n;
    char key[16], long_key[SL_STORE_KEY_MAX] = {0};
    uint64_t early[16];
    open_fixture(&f, SL_STORE_WINDOW, (size_t)1 << 30);
    open_fixture(&kv, SL_STORE_KV, 0);
    put(&kv, "k", "v");
    assert_int_equal(sl_cache_window_prefetch(kv.cache, "k", 1, 0), 0);
    assert_int_equal(sl_cache_key_prefetch(f.cache, "k", 1), 0); /* a window store */
    uint64_t h = sl_cache_key_prefetch(kv.cache, "k", 1);
    assert_int_not_equal(h, 0);
    assert_int_equal(sl_cache_key_prefetch(kv.cache, "k", 1), h);
    assert_int_equal(sl_cache_key_prefetch(kv.cache, "", 0), 0);
    for (int s = 1; s <= 2; s++)
        sl_cache_prefetch(kv.cache, h, s);
    assert_string_equal(cached(&kv, "k"), "v");
    window_put(&f, "k0", 0, "first");
    assert_int_equal(sl_cache_window_prefetch(f.cache, long_key, sizeof long_key, 0), 0);
    for (int i = 0; i < 16; i++) {
        snprintf(key, sizeof key, "k%d", i);
        early[i] = sl_cache_window_prefetch(f.cache, key, strlen(key), i * 60000);
        assert_int_not_equal(early[i], 0);
        assert_int_equal(sl_cache_window_prefetch(f.cache, key, strlen(key), i * 60000), early[i]);
    }
    for (int i = 0; i < WINDOWS; i++) {
        snprintf(key, sizeof key, "k%d", i % 1000);
        window_put(&f, key, (int64_t)(i / 1000) * 60000, key);
        if (i % 997 == 0)
            for (int s = 1; s <= 2; s++)
                sl_cache_prefetch(f.cache, early[i % 16], s);
    }
    for (int i = 0; i < WINDOWS; i += 7) {
        snprintf(key, sizeof key, "k%d", i % 1000);
        uint64_t h = sl_cache_window_prefetch(f.cache, key, strlen(key), (i / 1000) * 60000);
        sl_cache_prefetch(f.cache, h, 1);
        sl_cache_prefetch(f.cache, h, 2);
        assert_int_equal(sl_cache_window_get_cached(f.cache, key, strlen(key),
                                                    (int64_t)(i / 1000) * 60000, &v, &n),
                         1);
        assert_int_equal(n, strlen(key));
        assert_memory_equal(v, key, n);
    }
    commit(&f);
    sl_cache_clear(f.cache);
    for (int i = 0; i < 16; i++)
        for (int s = 1; s <= 2; s++)
            sl_cache_prefetch(f.cache, early[i], s);
    assert_int_equal(sl_cache_window_get_cached(f.cache, "k5", 2, 0, &v, &n), 0);
    assert_int_equal(sl_cache_window_get(f.cache, "k5", 2, 0, &v, &n), 1);
    assert_memory_equal(v, "k5", 2);
    close_fixture(&kv);
    close_fixture(&f);
}

static int count_entry(void *arg, const void *key, size_t len, const void *value, size_t n)
{
    (void)key;
    (void)len;
    (void)value;
    (void)n;
    (*(size_t *)arg)++;
    return 0;
}

/* How many windows the time index lists before cutoff. */
static size_t indexed_before(fixture_t *f, int64_t cutoff)
{
    size_t count = 0;
    MDB_txn *txn;
    assert_int_equal(sl_state_begin(f->state, 0, &txn), 0);
    assert_int_equal(
        sl_store_expired(f->store, txn, INT64_MIN, cutoff, SIZE_MAX, count_entry, &count), 0);
    mdb_txn_abort(txn);
    return count;
}

/* sl_store_apply on a window store: a new window adds an index entry, a
 * stored one is replaced in place by a longer or a shorter value (no
 * second index entry), a deleted one leaves the index, and deleting a
 * window that is not there changes nothing. */
static void test_window_apply_replaces_values_and_keeps_the_index(void **state)
{
    (void)state;
    fixture_t f;
    uint8_t k[3][16];
    size_t n[3];
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (int i = 0; i < 3; i++)
        n[i] = sl_store_window_key(k[i], i == 2 ? "b" : "a", 1, i == 1 ? 200 : 100);
    sl_record_t first[2] = {
        {.key = k[0], .key_len = (int32_t)n[0], .value = (const uint8_t *)"v1", .value_len = 2},
        {.key = k[1], .key_len = (int32_t)n[1], .value = (const uint8_t *)"v2", .value_len = 2}};
    sl_record_t second[3] = {
        {.key = k[0],
         .key_len = (int32_t)n[0],
         .value = (const uint8_t *)"a longer value",
         .value_len = 14},
        {.key = k[1], .key_len = (int32_t)n[1], .value = NULL, .value_len = -1},
        {.key = k[2], .key_len = (int32_t)n[2], .value = NULL, .value_len = -1}};
    sl_record_t third[1] = {
        {.key = k[0], .key_len = (int32_t)n[0], .value = (const uint8_t *)"s", .value_len = 1}};
    sl_record_t *batches[3] = {first, second, third};
    size_t counts[3] = {2, 3, 1};
    const char *windows[3] = {"100=v1 200=v2 ", "100=a longer value ", "100=s "};
    for (int b = 0; b < 3; b++) {
        assert_int_equal(sl_state_begin(f.state, 1, &txn), 0);
        assert_int_equal(sl_store_apply(f.store, txn, batches[b], counts[b]), 0);
        assert_int_equal(sl_state_commit(txn), 0);
        assert_string_equal(stored_windows(&f, "a", 0, 1000), windows[b]);
        assert_string_equal(stored_windows(&f, "b", 0, 1000), "");
        assert_int_equal(indexed_before(&f, 1000), b == 0 ? 2 : 1);
    }
    close_fixture(&f);
}

/* Owns the keys starting with "a" (as a task owns its partition's). */
static int owns_a(void *arg, const void *store_key, size_t len)
{
    (void)arg;
    return len > 0 && *(const char *)store_key == 'a';
}

/* Two tasks share a store: one's expiry, by its own stream time, leaves
 * the other's stored windows alone. */
static void test_expiry_deletes_only_the_owners_windows(void **state)
{
    (void)state;
    fixture_t f;
    size_t count;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (int64_t w = 0; w < 5; w++) {
        window_put(&f, "a1", w * 100, "v");
        window_put(&f, "b1", w * 100, "v");
    }
    commit(&f);
    sl_cache_clear(f.cache);
    sl_cache_set_owner(f.cache, owns_a, NULL);
    assert_int_equal(sl_cache_expire(f.cache, 300, 2, &count), 0);
    assert_int_equal(count, 2); /* a1 at 0 and 100; b1's are skipped, not counted */
    assert_int_equal(sl_cache_expire(f.cache, 300, 0, &count), 0);
    assert_int_equal(count, 1);
    commit(&f);
    assert_string_equal(stored_windows(&f, "a1", 0, 1000), "300=v 400=v ");
    assert_string_equal(stored_windows(&f, "b1", 0, 1000), "0=v 100=v 200=v 300=v 400=v ");
    close_fixture(&f);
}

/* The newest committed window start, from the end of the time index:
 * negative starts sort first, a kv store has none to give. */
static void test_newest_window_is_the_latest_committed_start(void **state)
{
    (void)state;
    fixture_t f;
    int64_t start = 0;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    assert_int_equal(sl_store_newest_window(f.store, &start), SL_ENOTFOUND);
    window_put(&f, "b", 500, "v");
    window_put(&f, "a", -700, "v");
    window_put(&f, "c", 300, "v");
    assert_int_equal(sl_store_newest_window(f.store, &start), SL_ENOTFOUND); /* cached only */
    commit(&f);
    assert_int_equal(sl_store_newest_window(f.store, &start), 0);
    assert_int_equal(start, 500);
    close_fixture(&f);
    open_fixture(&f, SL_STORE_KV, 0);
    assert_int_equal(sl_store_newest_window(f.store, &start), SL_EINVALID);
    close_fixture(&f);
}

/* A window expiry deleted from the cache and then put again is live and
 * old: the next expiry must find it in the cache too. */
static void test_a_window_put_again_after_expiry_expires_again(void **state)
{
    (void)state;
    fixture_t f;
    size_t count;
    const void *v;
    size_t len;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    window_put(&f, "a1", 100, "v");
    window_put(&f, "a1", 500, "v");
    assert_int_equal(sl_cache_expire(f.cache, 300, 0, &count), 0);
    assert_int_equal(count, 1);
    window_put(&f, "a1", 100, "again"); /* a late put of the expired window */
    assert_int_equal(sl_cache_window_get(f.cache, "a1", 2, 100, &v, &len), 1);
    assert_int_equal(sl_cache_expire(f.cache, 300, 0, &count), 0);
    assert_int_equal(count, 1);
    assert_int_equal(sl_cache_window_get(f.cache, "a1", 2, 100, &v, &len), 0);
    assert_int_equal(sl_cache_window_get(f.cache, "a1", 2, 500, &v, &len), 1);
    close_fixture(&f);
}

static void test_expiry_deletes_old_windows_with_tombstones(void **state)
{
    (void)state;
    fixture_t f;
    const sl_record_t *changes;
    size_t n, count;
    char key[16];
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (int k = 0; k < 5; k++) {
        snprintf(key, sizeof key, "key%d", k);
        for (int64_t w = 0; w < 10; w++)
            window_put(&f, key, w * 100, "v");
    }
    commit(&f);
    for (int64_t w = 0; w < 10; w++)
        window_put(&f, "key0", w * 100, "updated"); /* updates add no index entries */
    commit(&f);
    assert_int_equal(indexed_before(&f, INT64_MAX), 50);
    assert_int_equal(sl_cache_expire(f.cache, 300, 0, &count), 0);
    assert_int_equal(count, 15); /* all of them are still in the cache (clean) */
    sl_cache_clear(f.cache);
    window_put(&f, "fresh", 100, "cached only");
    assert_int_equal(sl_cache_expire(f.cache, 300, 7, &count), 0);
    assert_int_equal(count, 1 + 7); /* the cached one, then 7 from LMDB, oldest first */
    assert_int_equal(sl_cache_expire(f.cache, 300, 0, &count), 0);
    assert_int_equal(count, 15 - 7);
    assert_int_equal(sl_cache_changes(f.cache, &changes, &n), 0);
    assert_int_equal(n, 16);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(changes[i].value_len, -1);
    commit(&f);
    assert_int_equal(indexed_before(&f, 300), 0);
    assert_int_equal(indexed_before(&f, INT64_MAX), 35);
    assert_string_equal(stored_windows(&f, "key0", 0, 1000),
                        "300=updated 400=updated 500=updated 600=updated 700=updated 800=updated "
                        "900=updated ");
    assert_string_equal(stored_windows(&f, "fresh", 0, 1000), "");
    fixture_t kv;
    open_fixture(&kv, SL_STORE_KV, 0);
    assert_int_equal(sl_cache_expire(kv.cache, 300, 0, &count), SL_EINVALID);
    close_fixture(&kv);
    close_fixture(&f);
}

static void test_full_cache_signals_and_is_emptied_after_commit(void **state)
{
    (void)state;
    fixture_t f;
    char key[32], value[64];
    int rc = 0, puts = 0;
    open_fixture(&f, SL_STORE_KV, 256 << 10);
    memset(value, 'v', sizeof value);
    while (rc == 0) {
        snprintf(key, sizeof key, "key-%06d", puts++);
        rc = sl_cache_put(f.cache, key, strlen(key), value, sizeof value);
        assert_true(rc == 0 || rc == 1);
        assert_true(puts < 100000);
    }
    assert_true(sl_cache_is_full(f.cache));
    assert_true(sl_cache_bytes(f.cache) >= 256 << 10);
    commit(&f);
    assert_false(sl_cache_is_full(f.cache));
    assert_true(sl_cache_bytes(f.cache) < 256 << 10);
    assert_string_equal(stored(&f, "key-000000"), cached(&f, "key-000000"));
    snprintf(key, sizeof key, "key-%06d", puts - 1);
    assert_int_equal(strlen(stored(&f, key)), sizeof value);
    close_fixture(&f);
}

/* A commit with the cache's flush interval not yet up: 1 if it wrote the
 * entries into LMDB. */
static int commit_unforced(fixture_t *f)
{
    MDB_txn *txn;
    int wrote = -1;
    assert_int_equal(sl_state_begin(f->state, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(f->cache, txn, 0, &wrote), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    sl_cache_committed(f->cache);
    return wrote;
}

/* With a flush interval, commits leave LMDB alone until the interval is up,
 * the cache passes half its budget (then it is emptied after writing), or
 * the commit asks; the cache keeps every change LMDB lacks meanwhile. */
static void test_a_flush_interval_defers_writes_until_due_or_full(void **state)
{
    (void)state;
    fixture_t f;
    char key[32];
    open_fixture(&f, SL_STORE_KV, 256 << 10);
    sl_cache_set_flush_interval(f.cache, 3600000);
    put(&f, "a", "1");
    assert_int_equal(commit_unforced(&f), 0);
    put(&f, "a", "2");
    put(&f, "b", "1");
    assert_int_equal(sl_cache_flush_due(f.cache), 0);
    assert_int_equal(commit_unforced(&f), 0);
    assert_string_equal(stored(&f, "a"), "-");
    assert_string_equal(cached(&f, "a"), "2");
    assert_int_equal(sl_cache_unflushed_count(f.cache), 2);
    assert_int_equal(sl_cache_dirty_count(f.cache), 0);
    commit(&f); /* forced */
    assert_string_equal(stored(&f, "a"), "2");
    assert_string_equal(stored(&f, "b"), "1");
    assert_int_equal(sl_cache_unflushed_count(f.cache), 0);
    int puts = 0;
    while (sl_cache_bytes(f.cache) <= (128 << 10)) {
        snprintf(key, sizeof key, "key-%06d", puts++);
        put(&f, key, "x");
    }
    assert_int_equal(sl_cache_flush_due(f.cache), 1); /* over half the budget */
    assert_int_equal(commit_unforced(&f), 1);
    assert_true(sl_cache_bytes(f.cache) < (128 << 10)); /* written, then emptied */
    assert_string_equal(stored(&f, "key-000000"), "x");
    snprintf(key, sizeof key, "key-%06d", puts - 1);
    assert_string_equal(stored(&f, key), "x");
    close_fixture(&f);
}

/* Expiry between flushes: windows deleted in the cache but still in LMDB
 * are not deleted again, later passes find the newly expired ones, and the
 * flush deletes them all from LMDB. */
static void test_expiry_before_a_flush_deletes_each_window_once(void **state)
{
    (void)state;
    fixture_t f;
    size_t count;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (int64_t w = 0; w < 10; w++)
        window_put(&f, "k", w * 100, "v");
    commit(&f);
    sl_cache_clear(f.cache); /* the windows are in LMDB alone */
    sl_cache_set_flush_interval(f.cache, 3600000);
    assert_int_equal(sl_cache_expire(f.cache, 500, 0, &count), 0);
    assert_int_equal(count, 5);
    assert_int_equal(commit_unforced(&f), 0);
    assert_int_equal(sl_cache_expire(f.cache, 500, 0, &count), 0);
    assert_int_equal(count, 0);
    assert_int_equal(sl_cache_expire(f.cache, 700, 0, &count), 0);
    assert_int_equal(count, 2);
    assert_string_equal(stored_windows(&f, "k", 0, 1000),
                        "0=v 100=v 200=v 300=v 400=v 500=v 600=v 700=v 800=v 900=v ");
    commit(&f);
    assert_string_equal(stored_windows(&f, "k", 0, 1000), "700=v 800=v 900=v ");
    close_fixture(&f);
}

/* Expiry passes that stop at their maximum go on, between flushes, where
 * the last one stopped, and together delete every window once. */
static void test_expiry_in_bounded_passes_deletes_each_window_once(void **state)
{
    (void)state;
    fixture_t f;
    size_t count, total = 0;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (int64_t w = 0; w < 10; w++) {
        window_put(&f, "a", w * 100, "v");
        window_put(&f, "b", w * 100, "v");
    }
    commit(&f);
    sl_cache_clear(f.cache);
    sl_cache_set_flush_interval(f.cache, 3600000);
    for (int pass = 0; pass < 8; pass++) {
        assert_int_equal(sl_cache_expire(f.cache, 1000, 3, &count), 0);
        assert_true(count <= 3);
        total += count;
        assert_int_equal(commit_unforced(&f), 0);
    }
    assert_int_equal(total, 20);
    commit(&f);
    assert_string_equal(stored_windows(&f, "a", 0, 1000), "");
    assert_string_equal(stored_windows(&f, "b", 0, 1000), "");
    close_fixture(&f);
}

/* A cache that grew far past a tiny budget (the caller kept putting) is
 * emptied by the commit and not "full" afterwards: the memory it keeps for
 * reuse does not count. */
static void test_emptied_cache_is_not_full(void **state)
{
    (void)state;
    fixture_t f;
    char key[32];
    open_fixture(&f, SL_STORE_KV, 4096);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        put(&f, key, "value");
    }
    assert_true(sl_cache_is_full(f.cache));
    commit(&f);
    assert_false(sl_cache_is_full(f.cache));
    assert_int_equal(sl_cache_bytes(f.cache), 0);
    assert_string_equal(cached(&f, "key-999"), "value");
    close_fixture(&f);
}

static void test_failed_commit_keeps_the_changes(void **state)
{
    (void)state;
    fixture_t f;
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_KV, 0);
    put(&f, "a", "1");
    assert_int_equal(sl_state_begin(f.state, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(f.cache, txn, 1, &(int){0}), 0);
    mdb_txn_abort(txn); /* the commit failed */
    assert_int_equal(sl_cache_dirty_count(f.cache), 1);
    assert_string_equal(stored(&f, "a"), "-");
    commit(&f);
    assert_string_equal(stored(&f, "a"), "1");
    close_fixture(&f);
}

typedef struct reader_call {
    fixture_t *f;
    int rc;
} reader_call_t;

static void *read_during_commit(void *arg)
{
    reader_call_t *call = arg;
    const void *v;
    size_t n;
    MDB_txn *txn;
    call->rc = sl_state_begin(call->f->state, 0, &txn);
    if (call->rc == 0) {
        call->rc = sl_store_get(call->f->store, txn, "a", 1, &v, &n);
        mdb_txn_abort(txn);
    }
    return NULL;
}

/* A reader on another thread is not blocked by an open write transaction
 * and sees the last committed state. */
static void test_reads_from_another_thread_never_wait_for_a_commit(void **state)
{
    (void)state;
    fixture_t f;
    MDB_txn *txn;
    pthread_t thread;
    open_fixture(&f, SL_STORE_KV, 0);
    put(&f, "a", "1");
    assert_int_equal(sl_state_begin(f.state, 1, &txn), 0);
    assert_int_equal(sl_cache_flush(f.cache, txn, 1, &(int){0}), 0);
    reader_call_t call = {&f, -1};
    assert_int_equal(pthread_create(&thread, NULL, read_during_commit, &call), 0);
    pthread_join(thread, NULL);
    assert_int_equal(call.rc, SL_ENOTFOUND);
    assert_int_equal(sl_state_commit(txn), 0);
    sl_cache_committed(f.cache);
    assert_int_equal(pthread_create(&thread, NULL, read_during_commit, &call), 0);
    pthread_join(thread, NULL);
    assert_int_equal(call.rc, 0);
    close_fixture(&f);
}

static void test_checkpoints(void **state)
{
    (void)state;
    fixture_t f;
    MDB_txn *txn;
    int64_t offset = -1;
    sl_store_t *other;
    open_fixture(&f, SL_STORE_KV, 0);
    assert_int_equal(sl_store_open(f.state, "pipe", "counts2", SL_STORE_KV, &other), 0);
    assert_int_equal(sl_state_begin(f.state, 1, &txn), 0);
    assert_int_equal(sl_store_checkpoint_get(f.store, txn, 3, &offset), SL_ENOTFOUND);
    assert_int_equal(sl_store_checkpoint_put(f.store, txn, 3, 1234), 0);
    assert_int_equal(sl_store_checkpoint_put(f.store, txn, -1, 1), SL_EINVALID);
    assert_int_equal(sl_store_checkpoint_put(f.store, txn, 1, -1), SL_EINVALID);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
    assert_int_equal(sl_store_checkpoint_get(f.store, txn, 3, &offset), 0);
    assert_int_equal(offset, 1234);
    assert_int_equal(sl_store_checkpoint_get(f.store, txn, 2, &offset), SL_ENOTFOUND);
    assert_int_equal(sl_store_checkpoint_get(other, txn, 3, &offset), SL_ENOTFOUND);
    mdb_txn_abort(txn);
    sl_store_close(other);
    close_fixture(&f);
}

/* Survives a close and reopen of the whole state. */
static void test_committed_entries_survive_reopen(void **state)
{
    (void)state;
    fixture_t f;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    window_put(&f, "k", 60000, "x");
    commit(&f);
    sl_cache_free(f.cache);
    sl_store_close(f.store);
    sl_state_close(f.state);
    assert_int_equal(sl_state_open(f.dir, NULL, &f.state), 0);
    assert_int_equal(sl_store_open(f.state, "pipe", "counts", SL_STORE_WINDOW, &f.store), 0);
    assert_int_equal(sl_cache_new(f.store, 0, &f.cache), 0);
    assert_string_equal(stored_windows(&f, "k", 0, INT64_MAX), "60000=x ");
    assert_string_equal(cached_windows(&f, "k", 0, INT64_MAX), "60000=x ");
    close_fixture(&f);
}

/* A reader that knows only "<pipeline>.<store>" opens a store of either
 * kind and reads what its writer committed, also after the state is
 * reopened (its databases then first opened by name). */
static void test_open_existing_finds_either_kind_by_full_name(void **state)
{
    (void)state;
    fixture_t f;
    sl_store_t *windows, *kv = NULL, *win = NULL;
    const void *value;
    size_t n;
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_KV, 0);
    put(&f, "alice", "1");
    commit(&f);
    assert_int_equal(sl_store_open(f.state, "pipe", "wins", SL_STORE_WINDOW, &windows), 0);
    sl_store_close(windows);
    for (int reopened = 0; reopened < 2; reopened++) {
        assert_int_equal(sl_store_open_existing(f.state, "pipe.counts", &kv), 0);
        assert_int_equal(sl_store_open_existing(f.state, "pipe.wins", &win), 0);
        assert_int_equal(sl_store_kind(kv), SL_STORE_KV);
        assert_int_equal(sl_store_kind(win), SL_STORE_WINDOW);
        assert_string_equal(sl_store_name(win), "pipe.wins");
        assert_string_equal(sl_store_changelog_topic(kv), "pipe.counts.changelog");
        assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
        assert_int_equal(sl_store_get(kv, txn, "alice", 5, &value, &n), 0);
        assert_memory_equal(value, "1", n);
        assert_int_equal(sl_store_get(win, txn, "alice", 5, &value, &n), SL_EINVALID);
        mdb_txn_abort(txn);
        sl_store_close(kv);
        sl_store_close(win);
        sl_cache_free(f.cache);
        sl_store_close(f.store);
        sl_state_close(f.state);
        assert_int_equal(sl_state_open(f.dir, NULL, &f.state), 0);
        assert_int_equal(sl_store_open(f.state, "pipe", "counts", SL_STORE_KV, &f.store), 0);
        assert_int_equal(sl_cache_new(f.store, 0, &f.cache), 0);
        sl_store_close(f.store); /* the next round opens "pipe.counts" by name first */
        sl_cache_free(f.cache);
        sl_state_close(f.state);
        assert_int_equal(sl_state_open(f.dir, NULL, &f.state), 0);
        assert_int_equal(sl_store_open_existing(f.state, "pipe.counts", &f.store), 0);
        assert_int_equal(sl_cache_new(f.store, 0, &f.cache), 0);
    }
    close_fixture(&f);
}

/* A handle opened by name sees what the writer's handle commits later. */
static void test_open_existing_sees_later_commits(void **state)
{
    (void)state;
    fixture_t f;
    sl_store_t *reader;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    assert_int_equal(sl_store_open_existing(f.state, "pipe.counts", &reader), 0);
    window_put(&f, "k", 60000, "x");
    window_put(&f, "k", 120000, "y");
    commit(&f);
    sl_store_t *writer = f.store;
    f.store = reader;
    assert_string_equal(stored_windows(&f, "k", 0, INT64_MAX), "60000=x 120000=y ");
    f.store = writer;
    sl_store_close(reader);
    close_fixture(&f);
}

/* Unknown names are SL_ENOTFOUND naming the store; names no store can have
 * are SL_EINVALID; *out is left alone. */
static void test_open_existing_refuses_unknown_and_bad_names(void **state)
{
    (void)state;
    fixture_t f;
    sl_store_t *s = NULL;
    char long_name[300];
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_KV, 0);
    assert_int_equal(sl_store_open_existing(f.state, "pipe.nothing", &s), SL_ENOTFOUND);
    assert_non_null(strstr(sl_error_detail(), "no store 'pipe.nothing'"));
    assert_int_equal(sl_store_open_existing(f.state, "pipe", &s), SL_ENOTFOUND);
    assert_int_equal(sl_store_open_existing(f.state, "pipe.counts.x", &s), SL_ENOTFOUND);
    assert_int_equal(sl_store_open_existing(f.state, "", &s), SL_EINVALID);
    assert_int_equal(sl_store_open_existing(f.state, NULL, &s), SL_EINVALID);
    assert_int_equal(sl_store_open_existing(f.state, "pipe.a/b", &s), SL_EINVALID);
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    assert_int_equal(sl_store_open_existing(f.state, long_name, &s), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "over"));
    assert_null(s);
    /* a checkpoint's key shares the name's bytes but is no store */
    assert_int_equal(sl_state_begin(f.state, 1, &txn), 0);
    assert_int_equal(sl_store_checkpoint_put(f.store, txn, 0, 7), 0);
    assert_int_equal(sl_state_commit(txn), 0);
    assert_int_equal(sl_store_open_existing(f.state, "pipe.count", &s), SL_ENOTFOUND);
    assert_null(s);
    close_fixture(&f);
}

/* Appends "key " per entry to a listing; stops after limit entries (the
 * entry it stops at is not listed) when limit > 0. */
typedef struct paging {
    listing_t l;
    int limit;
    char next[64];
} paging_t;

static int page_entry(void *arg, const void *key, size_t len, const void *value, size_t n)
{
    paging_t *p = arg;
    (void)value;
    (void)n;
    if (p->limit > 0 && p->l.count == p->limit) {
        snprintf(p->next, sizeof p->next, "%.*s", (int)len, (const char *)key);
        return 1;
    }
    size_t used = strlen(p->l.text);
    snprintf(p->l.text + used, sizeof p->l.text - used, "%.*s ", (int)len, (const char *)key);
    p->l.count++;
    return 0;
}

static const char *walk_from(fixture_t *f, const char *from, int limit, char *next)
{
    static paging_t p;
    MDB_txn *txn;
    memset(&p, 0, sizeof p);
    p.limit = limit;
    assert_int_equal(sl_state_begin(f->state, 0, &txn), 0);
    int rc = sl_store_foreach_from(f->store, txn, from, strlen(from), page_entry, &p);
    mdb_txn_abort(txn);
    assert_int_equal(rc, p.next[0] ? 1 : 0);
    if (next)
        strcpy(next, p.next);
    return p.l.text;
}

/* A walk starts at the first key at or after the start key, in LMDB's
 * order; pages that restart at the key they stopped at cover every entry
 * once. */
static void test_foreach_from_pages_through_a_store(void **state)
{
    (void)state;
    fixture_t f;
    char next[64], from[64] = "", all[512] = "";
    uint8_t long_key[SL_STORE_KEY_MAX + 1] = {0};
    MDB_txn *txn;
    open_fixture(&f, SL_STORE_KV, 0);
    const char *keys[] = {"c", "a", "ba", "b", "bab", "d"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        put(&f, keys[i], "v");
    commit(&f);
    assert_string_equal(walk_from(&f, "", 0, NULL), "a b ba bab c d ");
    assert_string_equal(walk_from(&f, "b", 0, NULL), "b ba bab c d ");
    assert_string_equal(walk_from(&f, "baa", 0, NULL), "bab c d ");
    assert_string_equal(walk_from(&f, "z", 0, NULL), "");
    assert_string_equal(walk_from(&f, "b", 2, next), "b ba ");
    assert_string_equal(next, "bab");
    int pages = 0;
    do {
        strcat(all, walk_from(&f, from, 4, next));
        strcpy(from, next);
        pages++;
    } while (from[0]);
    assert_string_equal(all, "a b ba bab c d ");
    assert_int_equal(pages, 2);
    assert_int_equal(sl_state_begin(f.state, 0, &txn), 0);
    assert_int_equal(
        sl_store_foreach_from(f.store, txn, long_key, sizeof long_key, page_entry, &(paging_t){0}),
        SL_EINVALID);
    mdb_txn_abort(txn);
    close_fixture(&f);
}

/* Every allocation failing in turn: each attempt ends in -ENOMEM (the
 * sanitizer build checks nothing leaks) until enough succeed. */
static void test_out_of_memory_is_an_error(void **state)
{
    (void)state;
    fixture_t f;
    char key[16];
    int rc = -ENOMEM;
    long n;
    open_fixture(&f, SL_STORE_WINDOW, 0);
    for (n = 0; n < 1000 && rc == -ENOMEM; n++) {
        sl_cache_t *c = NULL;
        sl_alloc_fail_after(n);
        rc = sl_cache_new(f.store, 0, &c);
        for (int i = 0; rc == 0 && i < 50; i++) {
            snprintf(key, sizeof key, "k%d", i);
            rc = sl_cache_window_put(c, key, strlen(key), i, "v", 1);
        }
        if (rc == 0)
            rc = sl_cache_expire(c, 10, 0, NULL);
        const sl_record_t *changes;
        size_t count;
        if (rc == 0)
            rc = sl_cache_changes(c, &changes, &count);
        sl_alloc_fail_after(-1);
        if (rc == 0)
            assert_int_equal(count, 50);
        else
            assert_int_equal(rc, -ENOMEM);
        sl_cache_free(c);
    }
    assert_int_equal(rc, 0);
    assert_true(n > 3);
    close_fixture(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_kinds),
        cmocka_unit_test(test_reads_see_the_cache_then_lmdb_after_commit),
        cmocka_unit_test(test_a_put_after_a_get_of_the_same_key),
        cmocka_unit_test(test_changes_are_taken_once),
        cmocka_unit_test(test_keys_over_lmdb_limit_are_refused),
        cmocka_unit_test(test_changes_list_each_entry_once_in_change_order),
        cmocka_unit_test(test_key_sort_matches_lmdb_order),
        cmocka_unit_test(test_many_changes_come_out_in_lmdb_order),
        cmocka_unit_test(test_window_ranges),
        cmocka_unit_test(test_cache_windows_overlay_lmdb),
        cmocka_unit_test(test_cache_windows_chain_before_and_after_the_first_ask),
        cmocka_unit_test(test_cached_window_reads_skip_lmdb),
        cmocka_unit_test(test_prefetch_changes_nothing),
        cmocka_unit_test(test_expiry_deletes_old_windows_with_tombstones),
        cmocka_unit_test(test_a_window_put_again_after_expiry_expires_again),
        cmocka_unit_test(test_newest_window_is_the_latest_committed_start),
        cmocka_unit_test(test_window_apply_replaces_values_and_keeps_the_index),
        cmocka_unit_test(test_expiry_deletes_only_the_owners_windows),
        cmocka_unit_test(test_full_cache_signals_and_is_emptied_after_commit),
        cmocka_unit_test(test_emptied_cache_is_not_full),
        cmocka_unit_test(test_a_flush_interval_defers_writes_until_due_or_full),
        cmocka_unit_test(test_expiry_before_a_flush_deletes_each_window_once),
        cmocka_unit_test(test_expiry_in_bounded_passes_deletes_each_window_once),
        cmocka_unit_test(test_failed_commit_keeps_the_changes),
        cmocka_unit_test(test_reads_from_another_thread_never_wait_for_a_commit),
        cmocka_unit_test(test_checkpoints),
        cmocka_unit_test(test_committed_entries_survive_reopen),
        cmocka_unit_test(test_open_existing_finds_either_kind_by_full_name),
        cmocka_unit_test(test_open_existing_sees_later_commits),
        cmocka_unit_test(test_open_existing_refuses_unknown_and_bad_names),
        cmocka_unit_test(test_foreach_from_pages_through_a_store),
        cmocka_unit_test(test_out_of_memory_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

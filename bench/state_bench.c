/*
 * state_bench.c - speed and size of state stores (issue 5, "Benchmark"):
 * LMDB writes in random and in key order, write-cache commits through the
 * exactly-once commit helper, random reads, restore from a changelog, and
 * the LMDB size of windowed aggregates.
 *
 * What it does, in one run, in a fresh data directory under DIR:
 *
 *   apply     N entries (13-byte keys "user-%08u", 24-byte values: an
 *             aggregate's count, sum and mean) written with
 *             sl_store_apply() in one transaction into an empty kv store,
 *             once in random order and once sorted: LMDB's cost of order.
 *   commit    N changes as 10 commits of N/10: random keys out of N/2
 *             (so later commits update), put into a write cache, then per
 *             commit: sort the changes (sl_cache_changes), append them to
 *             the changelog (sl_commit_store), and sl_commit_end (fsync of
 *             the changelog, sorted flush into LMDB, checkpoint, lso, LMDB
 *             commit). Reported per phase and in total, entries/s.
 *   gets      N random gets of stored keys: straight from LMDB in a read
 *             transaction (what GET does), through an empty cache (its
 *             LMDB path), and from a warm cache (hits).
 *   restore   DATA/state deleted, reopened (the changelog is adopted), and
 *             the store rebuilt from its changelog: entries/s and MB/s of
 *             changelog key and value bytes read.
 *   size      a window store of K keys (default 100,000) x 10 one-minute
 *             windows with the same 24-byte values, committed in sorted
 *             batches: data.mdb's size and the pages LMDB uses, bytes per
 *             window (entry and time index), and a kv store of K keys.
 *
 * Nothing is asserted; figures are printed with the machine's CPU count.
 *
 * Usage: state_bench [N] [DIR] [K]
 *   N    entries per phase (default 1000000)
 *   DIR  where to make the temporary data directory (default: the current
 *        directory; /tmp may be tmpfs). Removed at the end.
 *   K    keys for the size phase (default 100000)
 */
#include "storage/state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEY_LEN   13
#define VALUE_LEN 24
#define COMMITS   10

typedef struct bench {
    char dir[4096];
    size_t n, k;
    sl_log_t *log;
    sl_state_t *state;
    uint64_t rng;
} bench_t;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void check(int rc, const char *what)
{
    if (rc == 0)
        return;
    fprintf(stderr, "state_bench: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    exit(1);
}

static uint64_t next_random(bench_t *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

/* "user-%08u", without printf's cost in the timed loops */
static void make_key(uint8_t *key, uint32_t i)
{
    memcpy(key, "user-", 5);
    for (int d = KEY_LEN - 1; d >= 5; d--, i /= 10)
        key[d] = (uint8_t)('0' + i % 10);
}

static void make_value(uint8_t *value, uint64_t count)
{
    double sum = (double)count * 12.5, mean = 12.5;
    memcpy(value, &count, 8);
    memcpy(value + 8, &sum, 8);
    memcpy(value + 16, &mean, 8);
}

static void open_node(bench_t *b)
{
    check(sl_log_open(b->dir, NULL, &b->log), "opening the log");
    check(sl_state_open(b->dir, NULL, &b->state), "opening the state");
    check(sl_log_attach_state(b->log, b->state), "attaching the state");
}

static void close_node(bench_t *b)
{
    sl_log_close(b->log);
    sl_state_close(b->state);
}

static void rate(const char *label, double seconds, double count, const char *unit)
{
    printf("  %-44s %8.3f s  %10.0f %s/s\n", label, seconds, count / seconds, unit);
}

/* ---- apply: random against sorted ------------------------------------- */

typedef struct entries {
    uint8_t *keys, *values;
    sl_record_t *records;
} entries_t;

static entries_t make_entries(size_t n)
{
    entries_t e = {malloc(n * KEY_LEN), malloc(n * VALUE_LEN), malloc(n * sizeof(sl_record_t))};
    if (!e.keys || !e.values || !e.records)
        check(-12, "allocating entries");
    for (size_t i = 0; i < n; i++) {
        make_key(e.keys + i * KEY_LEN, (uint32_t)i);
        make_value(e.values + i * VALUE_LEN, i);
        e.records[i] = (sl_record_t){.key = e.keys + i * KEY_LEN,
                                     .key_len = KEY_LEN,
                                     .value = e.values + i * VALUE_LEN,
                                     .value_len = VALUE_LEN};
    }
    return e;
}

static void shuffle(bench_t *b, sl_record_t *r, size_t n)
{
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = next_random(b) % (i + 1);
        sl_record_t t = r[i];
        r[i] = r[j];
        r[j] = t;
    }
}

static double timed_apply(bench_t *b, const char *name, const sl_record_t *r, size_t n)
{
    sl_store_t *s;
    MDB_txn *txn;
    check(sl_store_open(b->state, "bench", name, SL_STORE_KV, &s), "opening a store");
    double t0 = now_s();
    check(sl_state_begin(b->state, 1, &txn), "beginning");
    check(sl_store_apply(s, txn, r, n), "applying");
    check(sl_state_commit(txn), "committing");
    double t = now_s() - t0;
    sl_store_close(s);
    return t;
}

static void bench_apply(bench_t *b)
{
    entries_t e = make_entries(b->n); /* in key order */
    sl_record_t *random = malloc(b->n * sizeof *random);
    if (!random)
        check(-12, "allocating entries");
    memcpy(random, e.records, b->n * sizeof *random);
    shuffle(b, random, b->n);
    printf("\napply: %zu entries in one transaction into an empty kv store\n", b->n);
    rate("random order (sl_store_apply)", timed_apply(b, "random", random, b->n), (double)b->n,
         "entries");
    rate("key order (sl_store_apply)", timed_apply(b, "sorted", e.records, b->n), (double)b->n,
         "entries");
    free(random);
    free(e.keys);
    free(e.values);
    free(e.records);
}

/* ---- commits through the write cache ------------------------------------ */

typedef struct store_set {
    sl_store_t *store;
    sl_cache_t *cache;
    sl_partition_t *changelog;
} store_set_t;

static store_set_t open_store(bench_t *b, const char *name, sl_store_kind_t kind)
{
    store_set_t s;
    sl_topic_config_t cfg;
    sl_topic_t *t;
    check(sl_store_open(b->state, "bench", name, kind, &s.store), "opening a store");
    check(sl_cache_new(s.store, (size_t)1 << 30, &s.cache), "making a cache");
    t = sl_log_topic(b->log, sl_store_changelog_topic(s.store));
    if (!t) {
        sl_changelog_topic_config(&cfg, 1, "bench");
        check(sl_log_create_topic(b->log, sl_store_changelog_topic(s.store), &cfg, &t),
              "creating the changelog");
    }
    s.changelog = sl_topic_partition(t, 0);
    return s;
}

static void close_store(store_set_t *s)
{
    sl_cache_free(s->cache);
    sl_store_close(s->store);
}

typedef struct phases {
    double put, sort, append, end;
} phases_t;

/* One commit of `changes` random puts over `keys` keys. */
static void one_commit(bench_t *b, store_set_t *s, sl_commit_t *c, size_t changes, size_t keys,
                       phases_t *p)
{
    uint8_t key[KEY_LEN], value[VALUE_LEN];
    const sl_record_t *recs;
    size_t count;
    double t0 = now_s();
    for (size_t i = 0; i < changes; i++) {
        uint32_t k = (uint32_t)(next_random(b) % keys);
        make_key(key, k);
        make_value(value, i);
        if (sl_cache_put(s->cache, key, KEY_LEN, value, VALUE_LEN) < 0)
            check(-1, "putting");
    }
    double t1 = now_s();
    check(sl_cache_changes(s->cache, &recs, &count), "sorting");
    double t2 = now_s();
    check(sl_commit_begin(c), "beginning a commit");
    check(sl_commit_store(c, s->cache, s->changelog), "appending the changelog");
    double t3 = now_s();
    check(sl_commit_end(c), "ending a commit");
    double t4 = now_s();
    p->put += t1 - t0;
    p->sort += t2 - t1;
    p->append += t3 - t2;
    p->end += t4 - t3;
}

static size_t bench_commits(bench_t *b)
{
    store_set_t s = open_store(b, "agg", SL_STORE_KV);
    sl_commit_t *c;
    phases_t p = {0};
    size_t per = b->n / COMMITS, written;
    check(sl_commit_new(b->state, &c), "making a commit");
    for (int i = 0; i < COMMITS; i++)
        one_commit(b, &s, c, per, b->n / 2, &p);
    written = (size_t)sl_partition_end_offset(s.changelog); /* one per key and commit */
    double total = p.put + p.sort + p.append + p.end;
    printf("\ncommit: %d commits of %zu random puts over %zu keys (%zu distinct changes "
           "written)\n",
           COMMITS, per, b->n / 2, written);
    rate("cache puts", p.put, (double)per * COMMITS, "puts");
    rate("sort the changes (sl_cache_changes)", p.sort, (double)written, "entries");
    rate("append to the changelog", p.append, (double)written, "entries");
    rate("commit end (fsync, sorted flush, LMDB commit)", p.end, (double)written, "entries");
    rate("the whole commit, puts excluded", p.sort + p.append + p.end, (double)written, "entries");
    rate("everything", total, (double)per * COMMITS, "puts");
    sl_commit_free(c);
    close_store(&s);
    return written;
}

/* ---- random gets ----------------------------------------------------------- */

static void bench_gets(bench_t *b)
{
    store_set_t s = open_store(b, "agg", SL_STORE_KV);
    uint8_t key[KEY_LEN];
    const void *v;
    size_t n, found = 0, keys = b->n / 2;
    MDB_txn *txn;
    double t0 = now_s();
    check(sl_state_begin(b->state, 0, &txn), "beginning a read");
    for (size_t i = 0; i < b->n; i++) {
        make_key(key, (uint32_t)(next_random(b) % keys));
        found += sl_store_get(s.store, txn, key, KEY_LEN, &v, &n) == 0;
    }
    mdb_txn_abort(txn);
    double lmdb = now_s() - t0;
    t0 = now_s();
    for (size_t i = 0; i < b->n; i++) {
        make_key(key, (uint32_t)(next_random(b) % keys));
        if (i % 100000 == 0)
            sl_cache_clear(s.cache);
        found += sl_cache_get(s.cache, key, KEY_LEN, &v, &n) == 1;
    }
    double through = now_s() - t0;
    for (size_t i = 0; i < 100000; i++) { /* warm: 100 000 keys cached */
        make_key(key, (uint32_t)i);
        if (sl_cache_put(s.cache, key, KEY_LEN, "12345678901234567890abcd", VALUE_LEN) < 0)
            check(-1, "warming");
    }
    t0 = now_s();
    for (size_t i = 0; i < b->n; i++) {
        make_key(key, (uint32_t)(next_random(b) % 100000));
        found += sl_cache_get(s.cache, key, KEY_LEN, &v, &n) == 1;
    }
    double hits = now_s() - t0;
    printf("\ngets: %zu random keys of %zu (%zu found in all)\n", b->n, keys, found);
    rate("LMDB read transaction (sl_store_get)", lmdb, (double)b->n, "gets");
    rate("through an empty cache (sl_cache_get, miss)", through, (double)b->n, "gets");
    rate("warm cache (sl_cache_get, hit)", hits, (double)b->n, "gets");
    sl_cache_clear(s.cache);
    close_store(&s);
}

/* ---- restore ------------------------------------------------------------ */

static void bench_restore(bench_t *b)
{
    char cmd[4200];
    sl_restore_progress_t r;
    close_node(b);
    snprintf(cmd, sizeof cmd, "rm -rf '%s/state'", b->dir);
    if (system(cmd))
        check(-5, "deleting DATA/state");
    sl_report_level(SL_WARN); /* the adoption notices */
    open_node(b);
    sl_report_level(SL_INFO);
    store_set_t s = open_store(b, "agg", SL_STORE_KV);
    int64_t bytes = sl_partition_size_bytes(s.changelog);
    double t0 = now_s();
    check(sl_store_restore(s.store, s.changelog, NULL, &r), "restoring");
    double t = now_s() - t0;
    printf("\nrestore: DATA/state deleted; store rebuilt from its changelog (%lld records, "
           "%.1f MB on disk)\n",
           (long long)r.records, (double)bytes / 1e6);
    rate("restore (sl_store_restore)", t, (double)r.records, "entries");
    printf("  %-44s %8.3f s  %10.1f MB/s of keys and values (%.1f MB/s of log)\n", "", t,
           (double)r.bytes / 1e6 / t, (double)bytes / 1e6 / t);
    close_store(&s);
}

/* ---- size ----------------------------------------------------------------- */

/* Bytes of the pages database `name` uses, and its entries. */
static double database_bytes(bench_t *b, const char *name, size_t *entries)
{
    MDB_dbi dbi;
    MDB_stat st;
    MDB_txn *txn;
    check(sl_state_database(b->state, name, &dbi), "opening a database");
    check(sl_state_begin(b->state, 0, &txn), "beginning a read");
    check(sl_state_error(mdb_stat(txn, dbi, &st), "stat"), "reading a database's size");
    mdb_txn_abort(txn);
    *entries = st.ms_entries;
    return (double)(st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) * st.ms_psize;
}

static long file_size(bench_t *b)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/state/data.mdb", b->dir);
    return stat(path, &st) ? -1 : (long)st.st_size;
}

/* Fills a store with k keys (x windows, if a window store) in sorted
 * commits of up to 500 000 entries. */
static void fill(bench_t *b, sl_store_kind_t kind, const char *name, size_t k, int windows)
{
    store_set_t s = open_store(b, name, kind);
    uint8_t key[KEY_LEN], value[VALUE_LEN];
    size_t pending = 0;
    MDB_txn *txn;
    for (int w = 0; w < windows; w++)
        for (size_t i = 0; i < k; i++) {
            make_key(key, (uint32_t)i);
            make_value(value, i);
            int rc =
                kind == SL_STORE_WINDOW
                    ? sl_cache_window_put(s.cache, key, KEY_LEN,
                                          1700000000000LL + (int64_t)w * 60000, value, VALUE_LEN)
                    : sl_cache_put(s.cache, key, KEY_LEN, value, VALUE_LEN);
            if (rc < 0)
                check(rc, "filling");
            if (++pending < 500000 && !(w == windows - 1 && i == k - 1))
                continue;
            check(sl_state_begin(b->state, 1, &txn), "beginning");
            check(sl_cache_flush(s.cache, txn, 1, &(int){0}), "flushing");
            check(sl_state_commit(txn), "committing");
            sl_cache_committed(s.cache);
            sl_cache_clear(s.cache);
            pending = 0;
        }
    close_store(&s);
}

static void bench_size(bench_t *b)
{
    char cmd[8300];
    size_t windows, index, keys;
    close_node(b);
    snprintf(cmd, sizeof cmd, "rm -rf '%s/state' '%s/topics'", b->dir, b->dir);
    if (system(cmd))
        check(-5, "clearing the data directory");
    open_node(b);
    fill(b, SL_STORE_WINDOW, "windows", b->k, 10);
    fill(b, SL_STORE_KV, "totals", b->k, 1);
    double w = database_bytes(b, "store:bench.windows", &windows);
    double t = database_bytes(b, "store-time:bench.windows", &index);
    double kv = database_bytes(b, "store:bench.totals", &keys);
    printf("\nsize: 13-byte keys, 24-byte values, LMDB pages in use per database\n");
    printf("  window store, %zu keys x 10 windows: %.1f MB = %.1f bytes per window "
           "(entries %.1f MB, time index %.1f MB)\n",
           b->k, (w + t) / 1e6, (w + t) / (double)windows, w / 1e6, t / 1e6);
    printf("  kv store, %zu keys: %.1f MB = %.1f bytes per key\n", keys, kv / 1e6,
           kv / (double)keys);
    printf("  data.mdb: %.1f MB on disk (pages freed by earlier transactions included)\n",
           (double)file_size(b) / 1e6);
}

int main(int argc, char **argv)
{
    bench_t b = {.n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000,
                 .k = argc > 3 ? strtoul(argv[3], NULL, 10) : 100000,
                 .rng = 0x9e3779b97f4a7c15ull};
    const char *parent = argc > 2 ? argv[2] : ".";
    char cmd[4200];
    if (b.n < COMMITS * 2 || b.k < 1) {
        fprintf(stderr, "usage: state_bench [N >= 20] [DIR] [K >= 1]\n");
        return 2;
    }
    snprintf(b.dir, sizeof b.dir, "%s/state_bench.XXXXXX", parent);
    if (!mkdtemp(b.dir))
        check(-2, "making the data directory");
    printf("state_bench: N=%zu K=%zu, data in %s, %ld cpus online\n", b.n, b.k, b.dir,
           sysconf(_SC_NPROCESSORS_ONLN));
    open_node(&b);
    bench_apply(&b);
    bench_commits(&b);
    bench_gets(&b);
    bench_restore(&b);
    bench_size(&b);
    close_node(&b);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", b.dir);
    return system(cmd) ? 1 : 0;
}

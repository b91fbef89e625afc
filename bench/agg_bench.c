/*
 * agg_bench.c - CPU cost of the aggregate core (ops/aggregate.h, ops/hll.h):
 * updates per second of a {count, sum(price), avg(price)} set and
 * HyperLogLog adds per second, single thread, everything in memory.
 *
 * Variants (each over the same pre-generated updates: a key drawn
 * uniformly from K keys, a price of two decimals as a double):
 *
 *   add           one decoded state per key, sl_aggstate_add only: the
 *                 cost when the write cache keeps decoded states
 *   codec+add     each key's state kept encoded (17-43 bytes); per update
 *                 decode into a scratch state, add, encode back: the cost
 *                 when the cache keeps LMDB-ready bytes
 *   codec+add hot the same on a single key (no cache misses): pure CPU
 *   json          sl_aggstate_json of a state per update (results/s)
 *   hll 1 sketch  sl_hll_add of 8-byte values into one sketch (dense
 *                 after 3072 registers)
 *   hll K sketch  the same spread over K sketches (sparse inserts)
 *   distinct      {count, distinct(user)} per key (users 0..59), kept
 *   codec+add     encoded (a sparse sketch; the largest size is printed)
 *
 * Nothing is asserted; the total count over all keys is checked against
 * the number of updates. Figures are for one core: the runtime gives each
 * task one thread, so a node scales them by its worker count.
 *
 * Usage: agg_bench [N] [K]   N updates per variant (default 10000000),
 *                            K keys (default 100000)
 * Build a Release tree (cmake -DCMAKE_BUILD_TYPE=Release) for figures.
 */
#include "ops/aggregate.h"
#include "ops/hll.h"
#include "storage/storage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 3

typedef struct update {
    uint32_t key;
    uint32_t user;
    double price;
} update_t;

typedef struct timing {
    double seconds;
    double cpu;
} timing_t;

static size_t g_n = 10000000, g_keys = 100000;
static update_t *g_updates;
static sl_aggset_t *g_money, *g_visits;

static double clock_seconds(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "agg_bench: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    exit(1);
}

static void check(const char *what, int rc)
{
    if (rc)
        die(what, rc);
}

static uint64_t next_random(uint64_t *seed)
{
    uint64_t z = (*seed += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void make_updates(void)
{
    uint64_t seed = 1;
    g_updates = malloc(g_n * sizeof *g_updates);
    if (!g_updates)
        die("updates", -ENOMEM);
    for (size_t i = 0; i < g_n; i++) {
        uint64_t r = next_random(&seed);
        g_updates[i].key = (uint32_t)(r % g_keys);
        g_updates[i].user = (uint32_t)((r >> 32) % 60);
        g_updates[i].price = (double)((r >> 40) % 10000) / 100.0;
    }
}

static void add_member(sl_aggset_t *set, const char *name, sl_agg_kind_t kind, const char *source)
{
    int rc = sl_aggset_add(set, name, kind, source);
    if (rc < 0)
        die(name, rc);
}

static void make_sets(void)
{
    check("set", sl_aggset_new(&g_money));
    add_member(g_money, "clicks", SL_AGG_COUNT, NULL);
    add_member(g_money, "spend", SL_AGG_SUM, "price");
    add_member(g_money, "avg_price", SL_AGG_AVG, "price");
    check("set", sl_aggset_new(&g_visits));
    add_member(g_visits, "visits", SL_AGG_COUNT, NULL);
    add_member(g_visits, "users", SL_AGG_DISTINCT, "user");
}

static void money_inputs(const update_t *u, sl_agg_input_t in[3])
{
    sl_agg_input_t price = {SL_AGG_NUMBER, sl_number_double(u->price), NULL, 0};
    in[0] = (sl_agg_input_t){SL_AGG_NONE, sl_number_int(0), NULL, 0};
    in[1] = in[2] = price;
}

/* Checks that the states counted every update once. */
static void check_total(int64_t total, size_t expected, const char *variant)
{
    if (total != (int64_t)expected) {
        fprintf(stderr, "agg_bench: %s counted %lld updates, want %zu\n", variant, (long long)total,
                expected);
        exit(1);
    }
}

/* ---- variants --------------------------------------------------------- */

static void run_add(void)
{
    sl_aggstate_t **states = calloc(g_keys, sizeof *states);
    for (size_t k = 0; k < g_keys; k++)
        check("state", sl_aggstate_new(g_money, &states[k]));
    sl_agg_input_t in[3];
    for (size_t i = 0; i < g_n; i++) {
        money_inputs(&g_updates[i], in);
        check("add", sl_aggstate_add(states[g_updates[i].key], in, (int64_t)i));
    }
    int64_t total = 0;
    for (size_t k = 0; k < g_keys; k++) {
        total += sl_aggstate_result(states[k], 0).number.i;
        sl_aggstate_free(states[k]);
    }
    free(states);
    check_total(total, g_n, "add");
}

/* Per update: decode the key's state, add, encode back. keys = 1: hot.
 * Each key has a slot of STATE_SLOT bytes and its state's length (states
 * grow as their varints do). */
#define STATE_SLOT 64
static void codec_add(size_t keys)
{
    sl_aggstate_t *scratch;
    check("state", sl_aggstate_new(g_money, &scratch));
    uint8_t *bytes = malloc(keys * STATE_SLOT);
    size_t *sizes = malloc(keys * sizeof *sizes);
    if (!bytes || !sizes)
        check("memory", -ENOMEM);
    for (size_t k = 0; k < keys; k++) {
        sizes[k] = sl_aggstate_encoded_size(scratch);
        sl_aggstate_encode(scratch, bytes + k * STATE_SLOT);
    }
    sl_agg_input_t in[3];
    for (size_t i = 0; i < g_n; i++) {
        size_t k = keys == 1 ? 0 : g_updates[i].key;
        uint8_t *at = bytes + k * STATE_SLOT;
        money_inputs(&g_updates[i], in);
        check("decode", sl_aggstate_decode(scratch, at, sizes[k]));
        check("add", sl_aggstate_add(scratch, in, (int64_t)i));
        if ((sizes[k] = sl_aggstate_encoded_size(scratch)) > STATE_SLOT)
            check("state size", -ENOBUFS);
        sl_aggstate_encode(scratch, at);
    }
    int64_t total = 0;
    for (size_t k = 0; k < keys; k++) {
        check("decode", sl_aggstate_decode(scratch, bytes + k * STATE_SLOT, sizes[k]));
        total += sl_aggstate_result(scratch, 0).number.i;
    }
    check_total(total, g_n, "codec+add");
    free(bytes);
    free(sizes);
    sl_aggstate_free(scratch);
}

static void run_codec_add(void)
{
    codec_add(g_keys);
}

static void run_codec_add_hot(void)
{
    codec_add(1);
}

static void run_json(void)
{
    sl_aggstate_t *st;
    sl_buf_t out = {0};
    sl_agg_input_t in[3];
    check("state", sl_aggstate_new(g_money, &st));
    size_t bytes = 0;
    for (size_t i = 0; i < g_n; i++) {
        money_inputs(&g_updates[i], in);
        check("add", sl_aggstate_add(st, in, 0));
        out.len = 0;
        check("json", sl_aggstate_json(st, &out));
        bytes += out.len;
    }
    if (bytes == 0)
        exit(1);
    sl_buf_free(&out);
    sl_aggstate_free(st);
}

static void run_hll_one(void)
{
    sl_hll_t h;
    sl_hll_init(&h);
    for (size_t i = 0; i < g_n; i++) {
        uint64_t v = i * 0x9E3779B97F4A7C15ULL;
        check("hll", sl_hll_add(&h, &v, sizeof v));
    }
    if (sl_hll_estimate(&h) < (double)g_n * 0.9)
        exit(1);
    sl_hll_clear(&h);
}

static void run_hll_many(void)
{
    sl_hll_t *sketches = calloc(g_keys, sizeof *sketches);
    for (size_t i = 0; i < g_n; i++) {
        uint64_t v = i * 0x9E3779B97F4A7C15ULL;
        check("hll", sl_hll_add(&sketches[g_updates[i].key], &v, sizeof v));
    }
    for (size_t k = 0; k < g_keys; k++)
        sl_hll_clear(&sketches[k]);
    free(sketches);
}

/* {count, distinct(user)} kept encoded per key in fixed slots. */
static void run_distinct_codec(void)
{
    enum { SLOT = 512 };
    sl_aggstate_t *scratch;
    check("state", sl_aggstate_new(g_visits, &scratch));
    uint8_t *slots = malloc(g_keys * SLOT);
    uint16_t *sizes = malloc(g_keys * sizeof *sizes);
    for (size_t k = 0; k < g_keys; k++) {
        sizes[k] = (uint16_t)sl_aggstate_encoded_size(scratch);
        sl_aggstate_encode(scratch, slots + k * SLOT);
    }
    sl_agg_input_t in[2] = {{SL_AGG_NONE, sl_number_int(0), NULL, 0},
                            {SL_AGG_NUMBER, sl_number_int(0), NULL, 0}};
    size_t largest = 0;
    for (size_t i = 0; i < g_n; i++) {
        size_t k = g_updates[i].key;
        in[1].number = sl_number_int(g_updates[i].user);
        check("decode", sl_aggstate_decode(scratch, slots + k * SLOT, sizes[k]));
        check("add", sl_aggstate_add(scratch, in, 0));
        size_t size = sl_aggstate_encoded_size(scratch);
        if (size > SLOT)
            die("distinct slot too small", -1);
        largest = size > largest ? size : largest;
        sizes[k] = (uint16_t)size;
        sl_aggstate_encode(scratch, slots + k * SLOT);
    }
    static size_t reported;
    if (!reported++)
        printf("  (distinct states: largest %zu bytes encoded)\n", largest);
    free(slots);
    free(sizes);
    sl_aggstate_free(scratch);
}

/* ---- driver ----------------------------------------------------------- */

typedef struct variant {
    const char *name;
    const char *unit;
    void (*run)(void);
} variant_t;

static const variant_t variants[] = {
    {"add (decoded states)", "updates", run_add},
    {"codec+add (encoded states)", "updates", run_codec_add},
    {"codec+add hot (1 key)", "updates", run_codec_add_hot},
    {"json results", "results", run_json},
    {"hll add, 1 sketch", "adds", run_hll_one},
    {"hll add, K sketches", "adds", run_hll_many},
    {"distinct codec+add (count+hll)", "updates", run_distinct_codec},
};

static timing_t time_run(void (*run)(void))
{
    double wall = clock_seconds(CLOCK_MONOTONIC), cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    run();
    return (timing_t){clock_seconds(CLOCK_MONOTONIC) - wall,
                      clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu};
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_n = strtoull(argv[1], NULL, 10);
    if (argc > 2)
        g_keys = strtoull(argv[2], NULL, 10);
    if (g_n == 0 || g_keys == 0) {
        fprintf(stderr, "usage: agg_bench [updates] [keys]\n");
        return 2;
    }
    double load[3] = {0};
    if (getloadavg(load, 3) < 0)
        load[0] = -1;
    printf("agg_bench: %zu updates per variant, %zu keys, %ld cpus online (nproc), load %.2f, "
           "single thread, best of %d rounds\n",
           g_n, g_keys, sysconf(_SC_NPROCESSORS_ONLN), load[0], ROUNDS);
    make_updates();
    make_sets();
    for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        timing_t best = {1e30, 1e30};
        for (int r = 0; r < ROUNDS; r++) {
            timing_t t = time_run(variants[v].run);
            if (t.seconds < best.seconds)
                best = t;
        }
        printf("  %-32s %7.3f s  %7.3f s cpu  %6.2f M %s/s  %6.1f ns each\n", variants[v].name,
               best.seconds, best.cpu, (double)g_n / best.seconds / 1e6, variants[v].unit,
               best.seconds * 1e9 / (double)g_n);
    }
    sl_aggset_free(g_money);
    sl_aggset_free(g_visits);
    free(g_updates);
    return 0;
}

/*
 * pipeline_bench.c - throughput of a Lua pipeline (filter -> map -> to) over
 * pre-loaded JSON records, run the way runtime/pipeline.c runs it, with a
 * breakdown of where the time goes (issue 4, "Benchmark").
 *
 * What it does, in one run:
 *
 *   load     N records (default 2,000,000) of about 100 bytes of JSON, e.g.
 *            {"user":"u12345","kind":"click","item":678,"price":12.5,
 *             "ts":1700000000000,"pad":"xxxx"}
 *            (half of them kind "click"), null keys, appended in batches of
 *            1000 to topic "in" (2 partitions, N/2 each, fsync=never) of a
 *            fresh log in a new directory under DIR.
 *   pipeline s.stream('in'):filter(function(r) return r.value.kind == 'click' end)
 *              :map(function(r) return {user = r.value.user, price = r.value.price} end)
 *              :to('out')
 *            run as runtime/pipeline.c does (that file is not linked; its
 *            batch loop is copied here): per task (partition), in turn,
 *            copy up to 1024 records from the task's reader into a batch
 *            arena, sl_exec_batch() them, group what the sink emits by
 *            target partition (null keys: one partition per batch, round
 *            robin, with the sink's partitions looked up once per batch),
 *            sl_partition_append_nowait() each group and await it durable,
 *            sl_exec_reset(). "out" has 2 partitions and is recreated
 *            (fsync=never) before every run.
 *   breakdown the same data through cumulative variants, single thread:
 *              read+copy      reader -> batch arena only
 *              +load raw      sl_vm_record_load() with json = 0: the slot
 *                             and the bytes copied, no JSON (informational)
 *              +load json     sl_vm_record_load(): slot + JSON tokens checked
 *                             (the Lua record and its fields are made
 *                             lazily, inside the calls below)
 *              +filter        sl_vm_call_filter() on every record
 *              +map           sl_vm_call_map() on the kept ones
 *              +encode        sl_vm_record_get() of the map's result
 *              exec           the same through sl_exec_batch() with the
 *                             runtime's emit/grouping, no append
 *              +append        the pipeline above (append_nowait + await)
 *              +commit        plus the runtime's per-batch offset commit
 *                             (LMDB, durable: one fsync per batch)
 *              +append fsync=interval  the pipeline with "out" at the
 *                             topic default fsync=interval 5 ms
 *            Each stage's cost is the difference to the previous variant,
 *            in microseconds per input record, with its share of the
 *            pipeline (the +append variant).
 *   scaling  2 worker threads, each with its own VM and exec, each running
 *            one partition of "in" (the +append variant): records/s in
 *            total and per worker, against the single-thread run.
 *
 * Nothing is asserted; figures are printed for the reader to judge against
 * the target of 1 M records/s per core. Every variant reads all N
 * records; counts are checked (a mismatch stops the run with an error).
 *
 * Usage: pipeline_bench [-l] [-m MODE] [N] [DIR]
 *   N     records to pre-load (default 2000000)
 *   DIR   where to make the temporary data directory (default: the current
 *         directory; run it from the build directory; /tmp may be tmpfs).
 *         The directory is removed at the end.
 *   -m    run only one variant (read, loadraw, load, filter, map, encode,
 *         exec, full, commit, interval, threads): for perf record.
 *   -l    the same filter and map written so that they run in Lua: the
 *         default script's run without it (lua/native.c).
 *
 * Build (it links the module libraries, not runtime/):
 *
 *   cmake --build build-t
 *   gcc -O2 -g -std=c11 -D_GNU_SOURCE -I. -o build-t/pipeline_bench bench/pipeline_bench.c \
 *       -Lbuild-t/ops -Lbuild-t/lua -Lbuild-t/storage -lsl_ops -lsl_lua -lsl_storage \
 *       $(pkg-config --libs lua5.4 lua5.4-cjson libzstd lmdb) -lm -lpthread
 *
 * or in bench/CMakeLists.txt:
 *
 *   add_executable(pipeline_bench pipeline_bench.c)
 *   target_link_libraries(pipeline_bench PRIVATE sl_ops sl_lua sl_storage)
 *
 * Profile: perf record -e cpu-clock -g build-t/pipeline_bench -m full
 *          perf report --no-children --percent-limit 1
 */
#include "lua/lua.h"
#include "ops/ops.h"
#include "storage/offsets.h"
#include "storage/state.h"
#include "storage/storage.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#define BATCH        1024 /* records per batch, as runtime/pipeline.c */
#define LOAD_BATCH   1000 /* records per append while pre-loading */
#define IN_PARTS     2
#define OUT_PARTS    2
#define MAX_PARTS    2
#define TARGET_VALUE 100 /* bytes per JSON value */
#define MAX_ROUNDS   9

/* The pipeline. Its filter and map are of the kind lua/native.c runs
 * without Lua; with -l the same functions, reading a global (which that
 * does not take), run in Lua. */
static const char NATIVE_SCRIPT[] =
    "local s = require('sluice')\n"
    "s.stream('in'):filter(function(r) return r.value.kind == 'click' end)\n"
    "  :map(function(r) return {user = r.value.user, price = r.value.price} end)\n"
    "  :to('out')\n";
static const char LUA_SCRIPT[] =
    "local s = require('sluice')\n"
    "s.stream('in'):filter(function(r) local _ = next return r.value.kind == 'click' end)\n"
    "  :map(function(r) local _ = next return {user = r.value.user, price = r.value.price} end)\n"
    "  :to('out')\n";
static const char *g_script = NATIVE_SCRIPT;

enum mode {
    M_READ,
    M_LOAD_RAW,
    M_LOAD,
    M_FILTER,
    M_MAP,
    M_ENCODE,
    M_EXEC,
    M_FULL,
    M_COMMIT,
    M_INTERVAL, /* M_FULL with "out" at fsync=interval */
    M_COUNT
};

static const char *const MODE_NAMES[M_COUNT] = {"read",   "loadraw", "load", "filter", "map",
                                                "encode", "exec",    "full", "commit", "interval"};
static const char *const MODE_LABELS[M_COUNT] = {
    "read+copy",      "+load raw (no JSON)",        "+load json (decode)",  "+filter",
    "+map",           "+encode (record_get)",       "exec (sl_exec_batch)", "+append",
    "+commit (LMDB)", "+append, out fsync=interval"};

static sl_log_t *g_log;
static sl_state_t *g_state;

static void die(const char *what, int rc)
{
    fprintf(stderr, "pipeline_bench: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- reading a batch (as runtime/pipeline.c) ----------------------------- */

static int batch_read(sl_reader_t *reader, sl_record_set_t *b)
{
    sl_record_t rec;
    int rc = 0;
    sl_record_set_reset(b);
    while (b->count < BATCH && (rc = sl_reader_next(reader, &rec)) == 1)
        if ((rc = sl_record_set_add(b, &rec)))
            return rc;
    sl_record_set_array(b);
    return rc < 0 ? rc : 0;
}

/* ---- a worker: one VM, its tasks, its outputs ---------------------------- */

typedef struct out_group {
    sl_partition_t *partition;
    sl_record_t *recs;
    size_t count, cap;
} out_group_t;

typedef struct task {
    sl_partition_t *partition;
    sl_reader_t *reader;
    int64_t position;
    int done;
} task_t;

typedef struct worker {
    int index;
    enum mode mode;
    int parts[MAX_PARTS], part_count;
    sl_vm_t *vm;
    sl_dag_t *dag;
    sl_exec_t *exec;
    const sl_op_t *source, *filter, *map, *sink;
    sl_record_set_t batch;
    task_t tasks[MAX_PARTS];
    out_group_t outs[OUT_PARTS + 1];
    int out_count;
    sl_partition_t *route[OUT_PARTS]; /* the sink's partitions, referenced per batch */
    int32_t route_count;
    uint64_t round_robin;
    /* results */
    uint64_t in, kept, out, out_bytes;
    double seconds, cpu_seconds;
    int rc;
} worker_t;

static void worker_setup(worker_t *w)
{
    int rc = sl_vm_new(NULL, &w->vm);
    if (rc == 0)
        rc = sl_vm_compile(w->vm, "bench.lua", g_script, strlen(g_script), &w->dag);
    if (rc == 0)
        rc = sl_exec_new(w->dag, &w->exec);
    if (rc)
        die("compiling the pipeline", rc);
    for (int i = 0; i < w->dag->op_count; i++) {
        const sl_op_t *op = &w->dag->ops[i];
        if (op->kind == SL_OP_SOURCE)
            w->source = op;
        else if (op->kind == SL_OP_FILTER)
            w->filter = op;
        else if (op->kind == SL_OP_MAP)
            w->map = op;
        else if (op->kind == SL_OP_TO)
            w->sink = op;
    }
    if (!w->source || !w->filter || !w->map || !w->sink || w->dag->op_count != 4) {
        fprintf(stderr, "pipeline_bench: unexpected DAG shape\n");
        exit(1);
    }
    static int said;
    if (!said++)
        printf("filter %s, map %s\n", w->filter->native ? "answered from the tokens" : "in Lua",
               w->map->native ? "written from the tokens" : "in Lua");
}

static void worker_teardown(worker_t *w)
{
    for (int i = 0; i < w->part_count; i++)
        sl_reader_close(w->tasks[i].reader);
    sl_exec_free(w->exec);
    sl_dag_free(w->dag);
    sl_vm_free(w->vm);
    sl_record_set_free(&w->batch);
}

/* -- outputs, as runtime/pipeline.c (queue_record, on_emit, flush_outputs) -- */

static out_group_t *group_for(worker_t *w, sl_partition_t *p)
{
    for (int i = 0; i < w->out_count; i++)
        if (w->outs[i].partition == p)
            return &w->outs[i];
    out_group_t *g = &w->outs[w->out_count++];
    *g = (out_group_t){.partition = p};
    sl_partition_ref(p);
    return g;
}

/* The sink's partitions, looked up and referenced once per batch. */
static int resolve_route(worker_t *w, const char *topic_name)
{
    if (w->route_count)
        return 0;
    sl_topic_t *t = sl_log_topic(g_log, topic_name);
    if (!t)
        return sl_error_set(SL_ENOTFOUND, "topic %s is gone", topic_name);
    w->route_count = sl_topic_config(t)->partitions;
    if (w->route_count > OUT_PARTS)
        return sl_error_set(SL_EINVALID, "topic %s has too many partitions", topic_name);
    for (int32_t i = 0; i < w->route_count; i++) {
        w->route[i] = sl_topic_partition(t, i);
        sl_partition_ref(w->route[i]);
    }
    return 0;
}

static int queue_record(worker_t *w, const char *topic_name, const sl_record_t *rec)
{
    int rc = resolve_route(w, topic_name);
    if (rc)
        return rc;
    int32_t n = w->route_count;
    int32_t part = rec->key_len >= 0 ? sl_partition_for_key(rec->key, (size_t)rec->key_len, n)
                                     : (int32_t)(w->round_robin % (uint32_t)n);
    out_group_t *g = group_for(w, w->route[part]);
    if (sl_array_reserve((void **)&g->recs, &g->cap, g->count + 1, sizeof *g->recs))
        return -ENOMEM;
    g->recs[g->count++] = *rec;
    return 0;
}

static int on_emit(void *arg, const sl_op_t *exit, const sl_record_t *rec)
{
    worker_t *w = arg;
    w->out++;
    w->out_bytes += rec->value_len > 0 ? (uint64_t)rec->value_len : 0;
    return queue_record(w, exit->topic, rec);
}

static int on_failed(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why)
{
    (void)arg;
    fprintf(stderr, "pipeline_bench: %s failed at offset %lld: %s\n", sl_op_kind_name(op->kind),
            (long long)input->offset, why);
    return SL_EINVALID;
}

static int flush_outputs(worker_t *w, int append)
{
    int rc = 0;
    int64_t ends[OUT_PARTS + 1];
    for (int i = 0; append && rc == 0 && i < w->out_count; i++) {
        int64_t first;
        out_group_t *g = &w->outs[i];
        rc = sl_partition_append_nowait(g->partition, g->recs, g->count, &first);
        ends[i] = first + (int64_t)g->count;
    }
    for (int i = 0; append && rc == 0 && i < w->out_count; i++)
        rc = sl_partition_await_durable(w->outs[i].partition, ends[i], -1);
    for (int i = 0; i < w->out_count; i++) {
        sl_partition_unref(w->outs[i].partition);
        sl_free(w->outs[i].recs);
    }
    for (int32_t i = 0; i < w->route_count; i++)
        sl_partition_unref(w->route[i]);
    w->route_count = 0;
    w->out_count = 0;
    return rc;
}

/* -- one batch ---------------------------------------------------------------- */

/* The cumulative variants below sl_exec_batch: the VM calls by hand. */
static int run_calls(worker_t *w, const sl_vm_origin_t *origin)
{
    const sl_record_set_t *b = &w->batch;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->count; i++) {
        int slot, keep = 1, out;
        sl_record_t rec;
        if ((rc = sl_vm_record_load(w->vm, &b->records[i], origin, &slot)) || w->mode < M_FILTER)
            continue;
        if ((rc = sl_vm_call_filter(w->vm, w->filter, slot, &keep)) || !keep)
            continue;
        w->kept++;
        if (w->mode < M_MAP || (rc = sl_vm_call_map(w->vm, w->map, slot, &out)))
            continue;
        if (w->mode < M_ENCODE || (rc = sl_vm_record_get(w->vm, out, &rec)))
            continue;
        w->out++;
        w->out_bytes += rec.value_len > 0 ? (uint64_t)rec.value_len : 0;
    }
    sl_vm_batch_reset(w->vm);
    return rc;
}

static int step(worker_t *w, task_t *t)
{
    sl_record_set_t *b = &w->batch;
    int rc = batch_read(t->reader, b);
    if (rc)
        return rc;
    if (b->count == 0) {
        t->done = 1;
        return 0;
    }
    w->in += b->count;
    sl_vm_origin_t origin = {"in", sl_partition_id(t->partition), w->mode != M_LOAD_RAW, 0};
    if (w->mode == M_READ)
        return 0;
    if (w->mode < M_EXEC)
        return run_calls(w, &origin);
    sl_exec_output_t out = {on_emit, on_failed, w};
    size_t done = 0;
    w->round_robin++;
    int stopped = sl_exec_batch(w->exec, w->source->id, &origin, b->records, b->count, &out, &done);
    rc = flush_outputs(w, w->mode != M_EXEC);
    sl_exec_reset(w->exec);
    if (rc == 0 && w->mode == M_COMMIT && done > 0) {
        int32_t part = sl_partition_id(t->partition);
        int64_t next = b->records[done - 1].offset + 1;
        rc = sl_offsets_commit(g_state, "pipeline.bench", "in", &part, &next, 1);
    }
    if (rc == 0 && done > 0)
        t->position = b->records[done - 1].offset + 1;
    return rc ? rc : stopped;
}

/* Runs the worker's tasks in turn, a batch each, until every one is at the
 * end of its partition (as pipeline_main, without waiting for more). */
static void *worker_main(void *arg)
{
    worker_t *w = arg;
    sl_topic_t *in = sl_log_topic(g_log, "in");
    int rc = 0;
    for (int i = 0; i < w->part_count && rc == 0; i++) {
        w->tasks[i] = (task_t){.partition = sl_topic_partition(in, w->parts[i])};
        rc = sl_reader_open(w->tasks[i].partition, 0, &w->tasks[i].reader);
    }
    w->round_robin = (uint64_t)w->index;
    double t0 = now(), c0 = thread_cpu();
    for (int left = w->part_count; rc == 0 && left > 0;) {
        left = 0;
        for (int i = 0; rc == 0 && i < w->part_count; i++)
            if (!w->tasks[i].done && (rc = step(w, &w->tasks[i])) == 0 && !w->tasks[i].done)
                left++;
    }
    w->seconds = now() - t0;
    w->cpu_seconds = thread_cpu() - c0;
    w->rc = rc;
    return NULL;
}

/* ---- setup ------------------------------------------------------------------- */

static void create_topic(const char *name, int32_t partitions, sl_fsync_t fsync)
{
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    cfg.partitions = partitions;
    cfg.fsync = fsync;
    if (sl_log_topic(g_log, name)) {
        int rc = sl_log_delete_topic(g_log, name);
        if (rc)
            die("deleting topic", rc);
    }
    int rc = sl_log_create_topic(g_log, name, &cfg, NULL);
    if (rc)
        die("creating topic", rc);
}

static const char *const KINDS[4] = {"click", "view", "click", "purchase"};

/* One JSON value of exactly TARGET_VALUE bytes (the pad absorbs the rest). */
static int make_value(char *out, size_t size, uint64_t i)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";
    int n = snprintf(out, size,
                     "{\"user\":\"u%05u\",\"kind\":\"%s\",\"item\":%u,\"price\":%u.%u,"
                     "\"ts\":%llu,\"pad\":\"",
                     (unsigned)(i * 7919 % 100000), KINDS[i % 4], (unsigned)(i * 31 % 1000),
                     (unsigned)(i % 100), (unsigned)(i % 10 ? i % 10 : 5),
                     (unsigned long long)(1700000000000ULL + i));
    int pad = TARGET_VALUE - n - 2;
    if (pad < 1)
        pad = 1;
    if (n < 0 || (size_t)n + (size_t)pad + 3 > size || pad > (int)sizeof letters - 1) {
        fprintf(stderr, "pipeline_bench: value buffer too small\n");
        exit(1);
    }
    memcpy(out + n, letters, (size_t)pad);
    memcpy(out + n + pad, "\"}", 3);
    return n + pad + 2;
}

static double preload(uint64_t n, uint64_t *bytes)
{
    static char values[LOAD_BATCH][TARGET_VALUE + 64];
    static sl_record_t recs[LOAD_BATCH];
    sl_topic_t *in = sl_log_topic(g_log, "in");
    double t0 = now();
    *bytes = 0;
    for (uint64_t i = 0; i < n;) {
        size_t count = 0;
        int32_t part = (int32_t)((i / LOAD_BATCH) % IN_PARTS);
        for (; count < LOAD_BATCH && i < n; count++, i++) {
            int len = make_value(values[count], sizeof values[count], i);
            recs[count] = (sl_record_t){.timestamp = (int64_t)(1700000000000ULL + i),
                                        .key_len = -1,
                                        .value = (const uint8_t *)values[count],
                                        .value_len = len};
            *bytes += (uint64_t)len;
        }
        int rc = sl_partition_append(sl_topic_partition(in, part), recs, count, NULL);
        if (rc)
            die("pre-loading", rc);
    }
    return now() - t0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* ---- runs -------------------------------------------------------------------- */

typedef struct result {
    uint64_t in, kept, out, out_bytes;
    double seconds, cpu_seconds;
} result_t;

static uint64_t g_n, g_clicks;

/* threads workers over the IN_PARTS partitions; one result for all. */
static result_t run(enum mode mode, int threads, result_t *per_worker)
{
    worker_t w[MAX_PARTS];
    pthread_t tid[MAX_PARTS];
    result_t r = {0};
    create_topic("out", OUT_PARTS, mode == M_INTERVAL ? SL_FSYNC_INTERVAL : SL_FSYNC_NEVER);
    for (int i = 0; i < threads; i++) {
        w[i] = (worker_t){.index = i, .mode = mode == M_INTERVAL ? M_FULL : mode};
        for (int p = i; p < IN_PARTS; p += threads)
            w[i].parts[w[i].part_count++] = p;
        worker_setup(&w[i]);
    }
    double t0 = now();
    if (threads == 1)
        worker_main(&w[0]);
    else
        for (int i = 0; i < threads; i++)
            if (pthread_create(&tid[i], NULL, worker_main, &w[i]))
                die("pthread_create", -errno);
    for (int i = 0; threads > 1 && i < threads; i++)
        pthread_join(tid[i], NULL);
    r.seconds = now() - t0;
    for (int i = 0; i < threads; i++) {
        if (w[i].rc)
            die(MODE_NAMES[mode], w[i].rc);
        r.in += w[i].in;
        r.kept += w[i].kept;
        r.out += w[i].out;
        r.out_bytes += w[i].out_bytes;
        r.cpu_seconds += w[i].cpu_seconds;
        if (per_worker)
            per_worker[i] = (result_t){w[i].in,        w[i].kept,    w[i].out,
                                       w[i].out_bytes, w[i].seconds, w[i].cpu_seconds};
        worker_teardown(&w[i]);
    }
    uint64_t want_out = mode >= M_ENCODE || mode == M_INTERVAL ? g_clicks : 0;
    if (r.in != g_n || (mode >= M_FILTER && mode < M_EXEC && r.kept != g_clicks) ||
        r.out != want_out) {
        fprintf(
            stderr, "pipeline_bench: %s: read %llu (want %llu), kept %llu, out %llu (want %llu)\n",
            MODE_NAMES[mode], (unsigned long long)r.in, (unsigned long long)g_n,
            (unsigned long long)r.kept, (unsigned long long)r.out, (unsigned long long)want_out);
        exit(1);
    }
    if (mode >= M_FULL) { /* what was appended is what was emitted */
        sl_topic_t *out = sl_log_topic(g_log, "out");
        int64_t total = 0;
        for (int p = 0; p < OUT_PARTS; p++)
            total += sl_partition_end_offset(sl_topic_partition(out, p));
        if ((uint64_t)total != g_clicks) {
            fprintf(stderr, "pipeline_bench: %s: out holds %lld records, want %llu\n",
                    MODE_NAMES[mode], (long long)total, (unsigned long long)g_clicks);
            exit(1);
        }
    }
    return r;
}

static int by_seconds(const void *a, const void *b)
{
    double x = ((const result_t *)a)->seconds, y = ((const result_t *)b)->seconds;
    return (x > y) - (x < y);
}

static void print_row(const char *label, const result_t *r)
{
    printf("  %-30s %7.3f s  %7.3f s cpu  %9.0f rec/s  %6.3f us/rec\n", label, r->seconds,
           r->cpu_seconds, (double)r->in / r->seconds, r->seconds * 1e6 / (double)r->in);
}

int main(int argc, char **argv)
{
    int only = -1, opt, rounds = 3;
    while ((opt = getopt(argc, argv, "lm:r:")) != -1) {
        if (opt == 'l') {
            g_script = LUA_SCRIPT;
            continue;
        }
        if (opt == 'r') {
            rounds = atoi(optarg);
            if (rounds < 1 || rounds > MAX_ROUNDS)
                goto usage;
            continue;
        }
        if (opt != 'm')
            goto usage;
        for (int i = 0; i < M_COUNT; i++)
            if (strcmp(optarg, MODE_NAMES[i]) == 0)
                only = i;
        if (strcmp(optarg, "threads") == 0)
            only = M_COUNT;
        if (only < 0)
            goto usage;
    }
    g_n = optind < argc ? strtoull(argv[optind], NULL, 10) : 2000000;
    const char *parent = optind + 1 < argc ? argv[optind + 1] : ".";
    if (g_n < IN_PARTS || optind + 2 < argc)
        goto usage;

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/pipeline_bench.XXXXXX", parent);
    if (!mkdtemp(dir))
        die("mkdtemp", -errno);
    struct statfs fs;
    int tmpfs = statfs(dir, &fs) == 0 && fs.f_type == 0x01021994;
    sl_report_level(SL_WARN);
    int rc = sl_log_open(dir, NULL, &g_log);
    if (rc == 0)
        rc = sl_state_open(dir, NULL, &g_state);
    if (rc)
        die("opening the log", rc);

    double load_avg[3] = {0};
    getloadavg(load_avg, 3);
    printf("pipeline_bench: %llu records, data in %s%s, %ld cpus online, load %.2f\n",
           (unsigned long long)g_n, dir, tmpfs ? " (tmpfs!)" : "", sysconf(_SC_NPROCESSORS_ONLN),
           load_avg[0]);
    printf("script:\n%s", g_script);

    uint64_t bytes;
    create_topic("in", IN_PARTS, SL_FSYNC_NEVER);
    double load_s = preload(g_n, &bytes);
    for (uint64_t i = 0; i < g_n; i++)
        g_clicks += strcmp(KINDS[i % 4], "click") == 0;
    char sample[TARGET_VALUE + 64];
    make_value(sample, sizeof sample, 12345);
    printf("pre-load: %llu records, %.1f bytes of value each, %llu kept by the filter, "
           "%.2f s (%.0f rec/s)\n  sample: %s\n\n",
           (unsigned long long)g_n, (double)bytes / (double)g_n, (unsigned long long)g_clicks,
           load_s, (double)g_n / load_s, sample);

    if (only >= 0 && only < M_COUNT) {
        result_t r = run((enum mode)only, 1, NULL);
        print_row(MODE_LABELS[only], &r);
    }
    if (only < 0) {
        static result_t all[MAX_ROUNDS][M_COUNT];
        result_t r[M_COUNT], med[M_COUNT];
        run(M_ENCODE, 1, NULL); /* warm-up: page cache, allocator, Lua heap */
        printf("single thread, every variant over all %llu records, %d interleaved rounds "
               "(us per input record):\n",
               (unsigned long long)g_n, rounds);
        for (int k = 0; k < rounds; k++) {
            printf("  round %d:", k + 1);
            for (int m = 0; m < M_COUNT; m++) {
                all[k][m] = run((enum mode)m, 1, NULL);
                printf(" %s %.3f", MODE_NAMES[m], all[k][m].seconds * 1e6 / (double)g_n);
                fflush(stdout);
            }
            printf("\n");
        }
        printf("\nper variant, the fastest round (wall, thread cpu) and the median round:\n");
        for (int m = 0; m < M_COUNT; m++) {
            result_t col[MAX_ROUNDS];
            for (int k = 0; k < rounds; k++)
                col[k] = all[k][m];
            qsort(col, (size_t)rounds, sizeof *col, by_seconds);
            r[m] = col[0];
            med[m] = col[rounds / 2];
            printf("  %-30s %7.3f s  %7.3f s cpu  %9.0f rec/s  %6.3f us/rec  median %6.3f us/rec\n",
                   MODE_LABELS[m], r[m].seconds, r[m].cpu_seconds, (double)r[m].in / r[m].seconds,
                   r[m].seconds * 1e6 / (double)r[m].in, med[m].seconds * 1e6 / (double)g_n);
        }
        double n = (double)g_n, total = r[M_FULL].seconds * 1e6 / n,
               total_med = med[M_FULL].seconds * 1e6 / n;
        printf("\npipeline (filter -> map -> to, runtime loop, no commit): %.0f records/s in "
               "(median round %.0f), %.0f records/s out, %.3f us/record\n",
               n / r[M_FULL].seconds, n / med[M_FULL].seconds, (double)g_clicks / r[M_FULL].seconds,
               total);
        printf("  with the runtime's per-batch offset commit: %.0f records/s; with out at "
               "fsync=interval: %.0f records/s\n",
               n / r[M_COMMIT].seconds, n / r[M_INTERVAL].seconds);
        printf("\nbreakdown (difference between successive variants, us per input record, "
               "fastest rounds | median rounds; share of the +append pipeline):\n");
        struct {
            const char *what;
            int from, to;
        } stages[] = {
            {"read + copy batch (log I/O in)", -1, M_READ},
            {"record load (bytes into a slot)", M_READ, M_LOAD_RAW},
            {"JSON tokenize + check", M_LOAD_RAW, M_LOAD},
            {"filter (all records)", M_LOAD, M_FILTER},
            {"map (kept records)", M_FILTER, M_MAP},
            {"encode (record_get, kept)", M_MAP, M_ENCODE},
            {"exec + emit/grouping", M_ENCODE, M_EXEC},
            {"append + await (log I/O out)", M_EXEC, M_FULL},
        };
        double sum = 0, sum_med = 0;
        for (size_t i = 0; i < sizeof stages / sizeof *stages; i++) {
            double from = stages[i].from < 0 ? 0 : r[stages[i].from].seconds * 1e6 / n;
            double from_med = stages[i].from < 0 ? 0 : med[stages[i].from].seconds * 1e6 / n;
            double d = r[stages[i].to].seconds * 1e6 / n - from;
            double d_med = med[stages[i].to].seconds * 1e6 / n - from_med;
            sum += d;
            sum_med += d_med;
            printf("  %-32s %7.3f us %5.1f%%  | %7.3f us %5.1f%%\n", stages[i].what, d,
                   100 * d / total, d_med, 100 * d_med / total_med);
        }
        printf("  %-32s %7.3f us %5.1f%%  | %7.3f us %5.1f%%\n", "total", sum, 100 * sum / total,
               sum_med, 100 * sum_med / total_med);
        printf("  per kept record (%.0f%% kept, fastest rounds): map %.3f us, encode %.3f us\n",
               100 * (double)g_clicks / n,
               (r[M_MAP].seconds - r[M_FILTER].seconds) * 1e6 / (double)g_clicks,
               (r[M_ENCODE].seconds - r[M_MAP].seconds) * 1e6 / (double)g_clicks);
        printf("  extra: offset commit %.3f us/record (%.1f us per batch of %d); "
               "fsync=interval out %.3f us/record (%.1f us per batch)\n",
               (r[M_COMMIT].seconds - r[M_FULL].seconds) * 1e6 / n,
               (r[M_COMMIT].seconds - r[M_FULL].seconds) * 1e6 / (n / BATCH), BATCH,
               (r[M_INTERVAL].seconds - r[M_FULL].seconds) * 1e6 / n,
               (r[M_INTERVAL].seconds - r[M_FULL].seconds) * 1e6 / (n / BATCH));
        printf("  target 1 M records/s per core = 1.000 us/record: the fastest round is at "
               "%.0f%% of it\n",
               100 / total);
        only = M_COUNT;
    }
    if (only == M_COUNT) {
        result_t ones[MAX_ROUNDS], twos[MAX_ROUNDS], per[MAX_ROUNDS][MAX_PARTS];
        int best = 0;
        for (int k = 0; k < rounds; k++) {
            ones[k] = run(M_FULL, 1, NULL);
            twos[k] = run(M_FULL, 2, per[k]);
            if (twos[k].seconds < twos[best].seconds)
                best = k;
        }
        result_t two = twos[best], one = ones[0];
        for (int k = 1; k < rounds; k++)
            if (ones[k].seconds < one.seconds)
                one = ones[k];
        printf("\nscaling (+append pipeline, %d partitions of 'in', one VM per worker; "
               "fastest of %d rounds each):\n",
               IN_PARTS, rounds);
        print_row("1 worker, both partitions", &one);
        print_row("2 workers, one partition each", &two);
        for (int i = 0; i < 2; i++) {
            char label[64];
            snprintf(label, sizeof label, "  worker %d", i);
            print_row(label, &per[best][i]);
        }
        printf("  total %.0f rec/s = %.2fx one worker; per worker %.0f rec/s = %.0f%% of one "
               "worker alone\n",
               (double)two.in / two.seconds, one.seconds / two.seconds,
               (double)two.in / 2 / two.seconds, 100 * one.seconds / two.seconds / 2);
        printf("  all rounds, wall s: 1 worker");
        for (int k = 0; k < rounds; k++)
            printf(" %.3f", ones[k].seconds);
        printf("; 2 workers");
        for (int k = 0; k < rounds; k++)
            printf(" %.3f", twos[k].seconds);
        printf("\n");
    }
    getloadavg(load_avg, 3);
    printf("\nload at the end %.2f\n", load_avg[0]);

    sl_state_close(g_state);
    sl_log_close(g_log);
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;

usage:
    fprintf(stderr,
            "usage: pipeline_bench [-l] [-r ROUNDS] [-m read|loadraw|load|filter|map|encode|"
            "exec|full|commit|interval|threads] [N] [DIR]\n");
    return 2;
}

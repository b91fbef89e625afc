/*
 * ops.h - running a pipeline's operators over batches of records.
 *
 * A compiled pipeline (lua/lua.h: sl_dag_t) runs in stages. A stage starts
 * at an entry op, a SOURCE (records read from its topic) or a KEY_BY
 * (records read back from the repartition topic the runtime wrote them to,
 * so that every key lands in one task), and runs every op downstream of it
 * until an exit: a TO (records for a sink topic), a KEY_BY (records, now
 * re-keyed, for its repartition topic), a ROUTE (messages for an
 * exchange) or a FEATURES (the changed feature vectors of its aggregate's
 * keys at commit, for the topic named after its view: features.h). Exits
 * hand their records to the caller's emit callback; the
 * caller appends them wherever they go. A ROUTE's record is the message's
 * payload (its value); the routing key, priority and headers its functions
 * made are sl_exec_route()'s during the callback.
 *
 * Per record, an op's failure (the user function raised an error, hit a
 * limit, returned a bad value, or the record is not valid JSON) goes to the
 * caller's failed callback with the input record and a sentence naming the
 * op and its script line. The callback decides: return 0 to drop that path
 * of that record and go on (on_error = skip or dead_letter), non-zero to
 * stop the batch there (on_error = stop). Other paths of the same record
 * (a stream feeding two operators) are not affected by one path's failure.
 *
 * One sl_exec_t per (DAG, VM); not thread-safe, like the VM it drives.
 */
#ifndef SL_OPS_H
#define SL_OPS_H

#include "lua/lua.h"

typedef struct sl_exec sl_exec_t;

/* Counters of one op since sl_exec_new. */
typedef struct sl_op_stats {
    uint64_t records_in;  /* records the op was given */
    uint64_t records_out; /* records it passed on (or emitted, for exits) */
    uint64_t errors;      /* records it failed on */
} sl_op_stats_t;

/* Where a stage's records go, and what to do with failures. */
typedef struct sl_exec_output {
    /* An exit (TO, KEY_BY, ROUTE, FEATURES) produced rec; its bytes stay valid until
     * sl_exec_reset(). Returns 0; SL_ETOOBIG for a record its topic cannot
     * take, which fails that record (failed() below, as a Lua error does);
     * or an error that stops the batch. */
    int (*emit)(void *arg, const sl_op_t *exit, const sl_record_t *rec);
    /* op failed on input (the record that entered the stage); why names
     * the op and the script line. 0: go on; non-zero: stop the batch. */
    int (*failed)(void *arg, const sl_op_t *op, const sl_record_t *input, const char *why);
    void *arg;
} sl_exec_output_t;

/* Prepares to run dag (its successor lists and counters). Returns 0 and
 * *out, owned by the caller until sl_exec_free(); -ENOMEM. The DAG and its
 * VM must outlive it. */
int sl_exec_new(sl_dag_t *dag, sl_exec_t **out);
void sl_exec_free(sl_exec_t *x);

/* The entry ops of the DAG's stages: SOURCE and KEY_BY ops, in id order.
 * Returns how many and fills up to max ids into ids. */
int sl_exec_entries(const sl_exec_t *x, int *ids, int max);

/*
 * Runs n records entering at op `entry` (a SOURCE: from its topic; a
 * KEY_BY: from its repartition topic, so its function is not run again)
 * through the stage. *done (if not NULL) receives how many records were
 * fully handled: n, unless a callback stopped the batch, in which case the
 * record it stopped at is not counted. Returns 0, the stopping callback's
 * value, SL_EINVALID if entry is not an entry op, or -ENOMEM.
 */
int sl_exec_batch(sl_exec_t *x, int entry, const sl_vm_origin_t *origin, const sl_record_t *records,
                  size_t n, const sl_exec_output_t *out, size_t *done);

/* Forgets the batch: the VM's slots and the bytes emitted records point
 * into. Call once the emitted records are written. */
void sl_exec_reset(sl_exec_t *x);

/*
 * During the emit callback of a ROUTE exit: the message's routing key (the
 * record's key, "" for a null one, when the op has no key option), its
 * priority (0 without a function) and its headers (the record's without a
 * function). A record without a value, or whose key is too long to be a
 * routing key, fails in the op instead (the failed callback). Pointers are
 * valid until sl_exec_reset().
 */
const sl_vm_route_t *sl_exec_route(const sl_exec_t *x);

/* Whether the records entry op (a SOURCE, KEY_BY or TABLE) reads have
 * JSON values (its topic's format): what tables and joins read their
 * stored values back as. Unset entries count as JSON. */
void sl_exec_set_entry_json(sl_exec_t *x, int entry, int json);

/* The counters of op id (NULL if out of range). */
const sl_op_stats_t *sl_exec_stats(const sl_exec_t *x, int op);

/* ---- stateful ops (AGGREGATE) ---------------------------------------------
 *
 * A task (one input partition of a stage) keeps the state of the stage's
 * AGGREGATE ops in an sl_exec_task_t: a write cache over each op's store,
 * its watermark, what it owes downstream. The runtime opens the stores,
 * makes one sl_exec_task_t per task, names it before each batch
 * (sl_exec_set_task), and around each commit: sl_exec_task_flush (results
 * through the ops downstream, windows past retention expired), then commits
 * each op's cache (sl_exec_task_cache) and stream time
 * (sl_exec_task_stream_time) with the task's outputs and offsets, then
 * sl_exec_task_committed. Late records (every window closed) are counted,
 * and emitted through emit() with exit = the AGGREGATE op when it names a
 * late topic.
 */
typedef struct sl_exec_task sl_exec_task_t;

/* State for the stateful ops (AGGREGATE, TABLE, JOIN) of x that the task
 * runs: stores[i] the store of op i (NULL for other ops, and for stateful
 * ops of other stages), stream_times[i] its committed stream time
 * (SL_WATERMARK_NONE if none); partition of partitions is the task's input
 * partition (keys of other partitions in a store belong to other tasks). */
int sl_exec_task_new(sl_exec_t *x, sl_store_t *const *stores, const int64_t *stream_times,
                     int32_t partition, int partitions, sl_exec_task_t **out);
void sl_exec_task_free(sl_exec_task_t *t);

/* The task whose state the following batches use (NULL: none). */
void sl_exec_set_task(sl_exec_t *x, sl_exec_task_t *t);

/* Emits what t owes downstream, through out; call before committing. */
int sl_exec_task_flush(sl_exec_t *x, sl_exec_task_t *t, const sl_exec_output_t *out);

/* The cache of AGGREGATE op (NULL for other ops). */
sl_cache_t *sl_exec_task_cache(sl_exec_task_t *t, int op);

/* The stream time of AGGREGATE op, to commit with the offsets. */
int64_t sl_exec_task_stream_time(sl_exec_task_t *t, int op);

/* Bounds the stream time of every stateful op of t by its upstream tasks'
 * progress, and moves it to at least floor (sl_watermark_bound in
 * ops/window.h). */
void sl_exec_task_bound(sl_exec_task_t *t, int64_t bound, int64_t floor);

/* Late records AGGREGATE op has counted in this task (safe to read from
 * another thread). */
uint64_t sl_exec_task_late(sl_exec_task_t *t, int op);

/* The commit holding the caches' changes is durable. */
void sl_exec_task_committed(sl_exec_task_t *t);

/* 1 when a cache of t is at its budget: commit before the next batch. */
int sl_exec_task_full(const sl_exec_task_t *t);

/* ---- reading an aggregate's store (for queries) ----------------------------- */

typedef struct sl_aggset sl_aggset_t; /* ops/aggregate.h */

/* The aggregate set AGGREGATE op's states are made with (so decoding
 * checks the same fingerprint). Free with sl_aggset_free. */
int sl_aggregate_set(const sl_op_t *op, sl_aggset_t **out);

/* Splits a value of op's store into the encoded state (*state, *state_len)
 * and the window's end (exclusive for tumbling and hopping; a session's
 * last record time; INT64_MIN without a window). SL_ECORRUPT for a
 * session value too short to hold its end. */
int sl_aggregate_split(const sl_op_t *op, const void *value, size_t len, int64_t window_start,
                       const uint8_t **state, size_t *state_len, int64_t *window_end);

#endif

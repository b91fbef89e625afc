/*
 * ops_internal.h - between the files of the ops module: exec.c (the walk
 * over a stage) and aggregator.c (the AGGREGATE operator).
 */
#ifndef SL_OPS_INTERNAL_H
#define SL_OPS_INTERNAL_H

#include "ops/ops.h"

/* The DAG x runs. */
const sl_dag_t *sl_exec_dag(const sl_exec_t *x);

/* Loads rec (a JSON result record) into the VM and runs it through the
 * ops that read from op: what an aggregate's results do. Returns 0 or
 * what stopped it (as sl_exec_batch). */
int sl_exec_deliver(sl_exec_t *x, int op, const sl_record_t *rec, const sl_exec_output_t *out);

/* Runs the record in slot through the ops that read from op (port 0), as
 * its output: what a join's results made at commit do. */
int sl_exec_deliver_slot(sl_exec_t *x, int op, int slot, const sl_exec_output_t *out);

/* 1 if some op reads what op passes on (its successors, any port). */
int sl_exec_op_read(const sl_exec_t *x, int op);

/* 1 if the records op passes on have JSON values as far as the runtime
 * said of the entries (sl_exec_set_entry_json): an entry's own, an
 * AGGREGATE's and a JOIN's always, others their first input's. */
int sl_exec_op_json(const sl_exec_t *x, int op);

/* Folds the record in slot into task t's state for AGGREGATE op; *late =
 * 1 when every window it belongs to is closed (nothing changed). */
int sl_aggregator_record(sl_exec_task_t *t, const sl_op_t *op, sl_vm_t *vm, int slot, int *late);

/* Prefetching for sl_aggregator_record() of a record some records ahead
 * whose key and event time are its own (the op reads its source's records
 * as they are): sl_cache_window_prefetch's stages (storage.h). Stage 0
 * gives the hash stages 1 and 2 take; 0 for a session aggregate or a
 * record without a key. */
uint64_t sl_aggregator_prefetch(sl_exec_task_t *t, const sl_op_t *op, const sl_record_t *r);
void sl_aggregator_prefetch_stage(sl_exec_task_t *t, const sl_op_t *op, uint64_t hash, int stage);

/* The FEATURES exits of an exec (features.c), made when first used. */
typedef struct sl_features_emitters sl_features_emitters_t;

/* FEATURES op given slot, an aggregate's result: *out_slot = a record
 * holding the vector of its key at task t's stream time ({"key", "ts",
 * "features"}), or -1 when that key's vector was written since the last
 * reset. Errors name the op. */
int sl_features_emit(sl_features_emitters_t **e, const sl_dag_t *dag, sl_exec_task_t *t,
                     const sl_op_t *op, sl_vm_t *vm, int slot, int *out_slot);

/* Forgets the keys written (the stage is reset). */
void sl_features_emitters_reset(sl_features_emitters_t *e);
void sl_features_emitters_free(sl_features_emitters_t *e);

/* ---- TABLE and JOIN state (join.c) ----------------------------------------- */

/* A task's state of one TABLE op, or of one JOIN op with a store. */
/* cache_span.c: which windows of a task's window store (an aggregate's, a
 * stream-stream join's buffers) its cache holds all of. init reads the
 * store's newest window (a kv store: none); flushed notes the largest event
 * time seen at a flush, committed makes it the store's bound once that
 * flush is committed; holds says whether every stored window starting at
 * or after from is in the cache (0: LMDB may hold more). */
typedef struct sl_cache_span {
    int64_t stored_through; /* no stored window starts after it; INT64_MIN: none */
    int64_t flushed_seen;   /* the largest event time at the last flush */
    int64_t cached_through; /* every stored window starting after it is cached */
    uint64_t clears_seen;   /* sl_cache_clears() when cached_through was set */
} sl_cache_span_t;

int sl_cache_span_init(sl_cache_span_t *s, sl_store_t *store);
void sl_cache_span_flushed(sl_cache_span_t *s, int64_t seen);
void sl_cache_span_committed(sl_cache_span_t *s);
int sl_cache_span_holds(sl_cache_span_t *s, const sl_cache_t *cache, int64_t from);

typedef struct sl_join sl_join_t;

/* Task t's state of TABLE or JOIN op (NULL if it has none). */
sl_join_t *sl_exec_task_join(sl_exec_task_t *t, int op);

/* State of op over store, continuing from stream_time (STREAM_STREAM;
 * SL_WATERMARK_NONE: none), for the task of partition of partitions. */
int sl_join_new(const sl_op_t *op, sl_store_t *store, int64_t stream_time, int32_t partition,
                int partitions, sl_join_t **out);
void sl_join_free(sl_join_t *j);
const sl_op_t *sl_join_op(const sl_join_t *j);
sl_cache_t *sl_join_cache(sl_join_t *j);
int64_t sl_join_stream_time(const sl_join_t *j);

/* Sets the upstream bound and floor of its stream time (sl_watermark_bound). */
void sl_join_bound(sl_join_t *j, int64_t bound, int64_t floor);
uint64_t sl_join_late(sl_join_t *j);
int sl_join_full(const sl_join_t *j);
void sl_join_committed(sl_join_t *j);

/* Whether values are JSON: a table's own (json), a stream-stream join's
 * sides' (left_json, right_json). */
void sl_join_set_json(sl_join_t *j, int json, int left_json, int right_json);

/* TABLE: the record of slot into the table (a tombstone deletes). */
int sl_join_table_record(sl_join_t *j, sl_vm_t *vm, int slot);

/* STREAM_TABLE op: the stream record of slot with table's value of its
 * key; *out = the result slot, or -1 when nothing is emitted. */
int sl_join_stream_table(sl_join_t *table, const sl_op_t *op, sl_vm_t *vm, int slot, int *out);

/* op: the JOIN op of the running exec's DAG (its function is called). */

/* TABLE_TABLE: the change in slot (from either side) makes the key's new
 * result from left and right; *out = the result (a tombstone when the key
 * left the join), or -1 when nothing changed. */
int sl_join_table_table(sl_join_t *j, const sl_op_t *op, sl_join_t *left, sl_join_t *right,
                        sl_vm_t *vm, int slot, int *out);

/* STREAM_STREAM: the record of slot from side (0 left, 1 right); the
 * pairs it made are appended to (*outs, *count, *cap). A late record is
 * dropped and counted (sl_join_late). */
int sl_join_stream_stream(sl_join_t *j, const sl_op_t *op, sl_vm_t *vm, int slot, int side,
                          int **outs, size_t *count, size_t *cap);

/* At commit: unmatched records of closed windows downstream (left and
 * outer), then expiry of the buffers. */
int sl_join_flush(sl_exec_t *x, sl_join_t *j, sl_vm_t *vm, const sl_exec_output_t *out);

#endif

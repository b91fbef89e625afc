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

/* Folds the record in slot into task t's state for AGGREGATE op; *late =
 * 1 when every window it belongs to is closed (nothing changed). */
int sl_aggregator_record(sl_exec_task_t *t, const sl_op_t *op, sl_vm_t *vm, int slot, int *late);

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

#endif

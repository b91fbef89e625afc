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

#endif

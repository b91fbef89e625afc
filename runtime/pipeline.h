/*
 * pipeline.h - running submitted pipelines (DESIGN.md section 5), runtime
 * internals.
 *
 * A pipeline is a Lua script compiled into a DAG (lua/lua.h) and run in
 * stages (ops/ops.h). Its tasks are the partitions its stages read: each
 * SOURCE's topic, and for each KEY_BY its repartition topic
 * `<pipeline>.repartition.<op id>` (as many partitions as the widest
 * source), so every key of a keyed stage lands in one task. Workers: each
 * pipeline runs on up to `workers` threads (default: cores), each with its
 * own VM and compiled DAG; task i belongs to worker i % workers, so a task
 * is only ever run by one thread. (A pool shared by all pipelines is for
 * later: here each pipeline has its own workers.)
 *
 * Processing is at-least-once: a task reads a batch, runs it, appends the
 * outputs (sinks, repartition topics, dead letters) and waits until they are
 * durable, then commits the batch's input offsets in LMDB as the consumer
 * group `pipeline.<name>`. After a crash a task resumes at its committed
 * offset, so records since the last commit are processed again.
 */
#ifndef SL_PIPELINE_H
#define SL_PIPELINE_H

#include "lua/lua.h"
#include "ops/ops.h"
#include "queries/queries.h"

typedef struct sl_pipelines sl_pipelines_t;

/* Starts the pipeline manager: loads DATA/pipelines/<name>.lua and starts
 * each (a script that no longer compiles is reported and left stopped).
 * queues: the node's work queues, which :route() sinks enqueue into and
 * scripts declare into (NULL: such pipelines are refused); they must
 * outlive the manager. workers: threads (each with its own VM) per
 * pipeline, at most one per task; 0 means the number of cores. */
int sl_pipelines_open(const char *data_dir, sl_log_t *log, sl_state_t *state, sl_queues_t *queues,
                      int workers, sl_pipelines_t **out);

/* Stops every pipeline (each at a batch boundary) and frees the manager. */
void sl_pipelines_close(sl_pipelines_t *m);

/* Compiles, checks and starts a pipeline, replacing a running one of that
 * name (which stops at a batch boundary first; the new one continues from
 * the same committed offsets), and saves the script. On any error the old
 * version keeps running. Returns 0 or SL_EINVALID/-errno with a detail. */
int sl_pipelines_submit(sl_pipelines_t *m, const char *name, const char *source, size_t len);

/* Stops a pipeline and forgets it (its offsets stay). SL_ENOTFOUND. */
int sl_pipelines_stop(sl_pipelines_t *m, const char *name);

/* Wakes every pipeline waiting for input (the log listener's job). */
void sl_pipelines_notify(sl_pipelines_t *m);

/* Writes the pipelines' metric families (sl_server_set_metrics):
 * per operator records in/out and errors, per task lag, and state. */
void sl_pipelines_metrics(void *m, struct evbuffer *out);

/* The feature views of the running pipelines (runtime/features.h), for
 * the server: sl_server_set_feature_views(server, &sl_feature_views,
 * sl_pipelines_features(m)). Borrowed: valid until the manager closes. */
struct sl_features *sl_pipelines_features(sl_pipelines_t *m);

/* The group under which pipeline's stream times are committed, one "topic"
 * per store: "pipeline.<name>.stream-time". */
void sl_pipeline_time_group(const char *pipeline, char *out, size_t size);

/* The PIPELINE command for the server (sl_server_add_command). */
int sl_pipelines_command(void *m, size_t argc, const sl_resp_arg_t *argv, sl_reply_t *reply);

#endif

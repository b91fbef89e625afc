/*
 * features.h - the feature views a node serves (DESIGN.md section 8): the
 * registry of every running pipeline's :features() sinks, and the views'
 * side of FEATURES, MFEATURES and FEATURES.SCHEMA (queries.h,
 * sl_feature_views_t).
 *
 * A view is named by its :features() calls; several pipelines (and several
 * aggregates of one pipeline) may contribute features to one view as long
 * as no two contribute a feature of the same name. The view's schema is
 * every contribution's features sorted by member name (then pipeline),
 * each member's ranges in the order its script gave them.
 */
#ifndef SL_RUNTIME_FEATURES_H
#define SL_RUNTIME_FEATURES_H

#include "lua/lua.h"
#include "queries/queries.h"

typedef struct sl_features sl_features_t;

/* An empty registry reading stores of state and their changelogs' shapes
 * in log (both must outlive it). 0 and *out, or -ENOMEM. */
int sl_features_new(sl_state_t *state, sl_log_t *log, sl_features_t **out);
void sl_features_free(sl_features_t *f);

/* Each view's vector cache (ops/features.h) holds at most bytes (default
 * 64 MiB); 0: no cache, every vector is computed. Empties the views'. */
void sl_features_set_cache_bytes(sl_features_t *f, size_t bytes);

/* Live vectors answered from the views' caches and computed (with a cache
 * on), since the registry was made. */
void sl_features_cache_counts(sl_features_t *f, long long *hits, long long *misses);

/* Makes dag's :features() sinks pipeline's contributions, replacing the
 * ones it had. Their aggregates' stores must exist (the pipeline has
 * opened them). Returns 0; SL_EINVALID with a detail naming the feature,
 * its view and the other pipeline if a feature of one of its views is
 * another running pipeline's already (the pipeline's own current
 * contributions, which it replaces, do not count); an error opening a
 * store; -ENOMEM. On failure the registry is unchanged. */
int sl_features_register(sl_features_t *f, const char *pipeline, const sl_dag_t *dag);

/* Drops pipeline's contributions (a view left without any goes). */
void sl_features_unregister(sl_features_t *f, const char *pipeline);

/* The views for the node's server, with arg = the registry:
 * sl_server_set_feature_views(server, &sl_feature_views, registry). */
extern const sl_feature_views_t sl_feature_views;

#endif

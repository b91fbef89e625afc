/*
 * store_views.h - how GET, WINDOWS and SCAN show the values of the
 * pipelines' state stores (queries.h, sl_store_renderer_t).
 */
#ifndef SL_STORE_VIEWS_H
#define SL_STORE_VIEWS_H

#include "runtime/pipeline.h"

/* The renderer for a node running the pipelines of a manager, which must
 * outlive every query: sl_server_set_store_renderer(server,
 * &sl_store_views, pipelines). A store is shown if a running pipeline
 * owns it: an AGGREGATE's values as the JSON object of its members'
 * results ({"n":3,"total":12.5}), a window's end as start + size for
 * tumbling and hopping windows and as its last record's time for a
 * session. */
extern const sl_store_renderer_t sl_store_views;

#endif

/*
 * cache_span.c - which windows of a task's window store its cache holds
 * all of, so that aggregates and stream-stream joins ask LMDB only where
 * it may hold more (manual in ops_internal.h).
 *
 * No window the store holds starts after stored_through: the newest stored
 * at start, then the largest event time of each commit (a record's
 * windows, and a join's buffered records, start at or before its time).
 * Every window the store holds that starts after cached_through is in the
 * cache too: it got there through the cache, which has not been emptied
 * since (sl_cache_clears() == clears_seen). At start and at each emptying,
 * cached_through is what stored_through is then.
 */
#include "ops/ops_internal.h"

int sl_cache_span_init(sl_cache_span_t *s, sl_store_t *store)
{
    *s = (sl_cache_span_t){INT64_MIN, INT64_MIN, INT64_MIN, 0};
    int rc = sl_store_kind(store) == SL_STORE_WINDOW
                 ? sl_store_newest_window(store, &s->stored_through)
                 : 0;
    s->cached_through = s->stored_through;
    return rc == SL_ENOTFOUND ? 0 : rc;
}

void sl_cache_span_flushed(sl_cache_span_t *s, int64_t seen)
{
    s->flushed_seen = seen;
}

void sl_cache_span_committed(sl_cache_span_t *s)
{
    if (s->flushed_seen > s->stored_through)
        s->stored_through = s->flushed_seen;
}

int sl_cache_span_holds(sl_cache_span_t *s, const sl_cache_t *cache, int64_t from)
{
    if (sl_cache_clears(cache) != s->clears_seen) { /* emptied: some windows are only stored */
        s->clears_seen = sl_cache_clears(cache);
        s->cached_through = s->stored_through;
    }
    return from > s->cached_through;
}

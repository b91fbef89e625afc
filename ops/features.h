/*
 * features.h - feature vectors from an aggregate's buckets (DESIGN.md
 * section 8): what a :features() view is worth for one key at one time.
 *
 * A view's features are its aggregate's members over trailing ranges,
 * answered from the aggregate's tumbling windows ("buckets", size B). A
 * vector is computed for an end E, always a bucket boundary: range R is
 * the buckets starting in [E - R, E - B], i.e. the events of [E - R, E).
 * Which end a time t gives (sl_features_end):
 *
 *   AS OF t   E = floor(t / B) * B: the buckets complete at t. Exact at
 *             bucket boundaries; for t inside a bucket, that bucket (which
 *             may hold events after t) is left out, so no event after t is
 *             ever counted, and the events of [E, t] are not counted either.
 *   now t     E = floor(t / B) * B + B: the bucket holding t counts, so a
 *             live query sees every event up to now (and any later-stamped
 *             one in that bucket).
 *
 * Buckets are merged newest first into one running state, and each range's
 * results are read off it when the walk passes the range's start: one
 * decode and one merge per bucket of the widest range, whatever the number
 * of ranges. Counts, sums, min, max, avg and last over whole buckets are
 * exact (sums of doubles up to rounding); distinct merges HyperLogLog
 * sketches (estimates).
 *
 * Values: feature k (member k / R over range k % R, R ranges) is the
 * member's result over its range; with a default, the default replaces it
 * when the range holds no bucket of the key or the result is null (an
 * empty min, max, avg or last). JSON writes null for a null; float32
 * writes NaN.
 *
 * Not thread-safe: one calculator per thread.
 */
#ifndef SL_FEATURES_H
#define SL_FEATURES_H

#include "ops/aggregate.h"
#include "ops/ops.h"

typedef struct sl_features_calc sl_features_calc_t;

/* A calculator for FEATURES op fop over its AGGREGATE op agg (tumbling,
 * without reduce members, as the DSL checks); it keeps copies of what it
 * needs, so the ops may go. Returns 0 and *out (free with
 * sl_features_calc_free), SL_EINVALID for another op, -ENOMEM. */
int sl_features_calc_new(const sl_op_t *agg, const sl_op_t *fop, sl_features_calc_t **out);
void sl_features_calc_free(sl_features_calc_t *c);

/* The end of the buckets a query at t sees (see above); as_of 1 for AS OF
 * t, 0 for now = t. t must be within +-2^62. */
int64_t sl_features_end(int64_t t, int64_t bucket, int as_of);

/* Starts a vector ending at end (a bucket boundary): forgets the buckets
 * added before, and sets [*from, *to], the window starts to walk. */
void sl_features_begin(sl_features_calc_t *c, int64_t end, int64_t *from, int64_t *to);

/* Adds one bucket of the key (its encoded state, copied): an sl_window_fn
 * for sl_store_windows and sl_cache_windows. Buckets outside [from, to]
 * are ignored. 0 or -ENOMEM. */
int sl_features_add(void *c, int64_t window_start, const void *value, size_t value_len);

/* Computes every feature from the buckets added. Returns 0; SL_ECORRUPT
 * with a detail when a bucket does not decode with the aggregate's set (a
 * store written by another definition); SL_EINVALID (a sum leaving the
 * doubles); -ENOMEM. */
int sl_features_compute(sl_features_calc_t *c);

/* 1 if the last computation had a bucket in some range. */
int sl_features_found(const sl_features_calc_t *c);

/* Features (members times ranges). */
int sl_features_count(const sl_features_calc_t *c);

/* Feature k's value from the last computation, defaults applied:
 * SL_AGG_NULL or SL_AGG_RESULT_NUMBER. */
sl_agg_result_t sl_features_value(const sl_features_calc_t *c, int k);

/* Appends a value as JSON: a number as sl_number_json writes it, or null.
 * 0 or -ENOMEM. */
int sl_features_json_value(sl_agg_result_t v, sl_buf_t *out);

/* The value as a float32 (NaN for null). */
float sl_features_f32(sl_agg_result_t v);

/* Appends the features as one JSON object {"clicks_5m":3,...}, in feature
 * order, named from the op. 0 or -ENOMEM. */
int sl_features_json(const sl_features_calc_t *c, sl_buf_t *out);

/* Appends feature k as a member of such an object ("clicks_5m":3), for
 * objects that mix calculators. 0 or -ENOMEM. */
int sl_features_json_member(const sl_features_calc_t *c, int k, sl_buf_t *out);

/* Feature k's name ("clicks_5m"), the index of its member in the
 * aggregate set, its range in ms; the buckets' size; the set (its members'
 * names and kinds). Owned by the calculator. */
const char *sl_features_name(const sl_features_calc_t *c, int k);
int sl_features_member(const sl_features_calc_t *c, int k);
int64_t sl_features_range(const sl_features_calc_t *c, int k);
int64_t sl_features_bucket(const sl_features_calc_t *c);
const sl_aggset_t *sl_features_set(const sl_features_calc_t *c);

/* 1 with *value if feature k has a default, else 0 (*value is then
 * meaningless); the value is a number as the vectors write it (an integer
 * when it is one). */
int sl_features_default(const sl_features_calc_t *c, int k, sl_agg_result_t *value);

/* 1 if some feature has a default. */
int sl_features_any_default(const sl_features_calc_t *c);

/*
 * Vector cache. A live vector (now = t) depends only on the committed
 * state it is read from and on its ends (one per contributing aggregate:
 * the bucket holding t), so between commits, and within one bucket, the
 * same query has the same answer: a view keeps the vectors it computed,
 * keyed by (key, format), each with the ends it was computed for, all of
 * one LMDB snapshot (its transaction id). A query in another snapshot
 * empties the cache before anything is looked up, so an answer is never
 * from another committed state than the query's. At most max_bytes (keys,
 * ends, vectors and the table's own entries); reaching it empties the
 * cache. Not thread-safe (a view's queries hold its registry's lock).
 */
typedef struct sl_vector_cache sl_vector_cache_t;

int sl_vector_cache_new(size_t max_bytes, sl_vector_cache_t **out);
void sl_vector_cache_free(sl_vector_cache_t *c);

/* The vector of (key, format) computed in snapshot txn for these ends:
 * 1 and *vector, *len (the cache's bytes, valid until its next put); 2
 * when it was cached as absent (the view has nothing for the key); 0 when
 * it is not cached. */
int sl_vector_cache_get(sl_vector_cache_t *c, size_t txn, const void *key, size_t key_len,
                        int format, const int64_t *ends, int end_count, const void **vector,
                        size_t *len);

/* Keeps a vector (or, absent set, that there is none) of (key, format)
 * computed in snapshot txn for ends. 0, also when it is too big to keep;
 * -ENOMEM (nothing kept). */
int sl_vector_cache_put(sl_vector_cache_t *c, size_t txn, const void *key, size_t key_len,
                        int format, const int64_t *ends, int end_count, const void *vector,
                        size_t len, int absent);

/* Vectors kept now. */
size_t sl_vector_cache_count(const sl_vector_cache_t *c);

#endif

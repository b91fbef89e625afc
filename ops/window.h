/*
 * window.h - event-time windows: window specs, assigning a
 * record's time to windows, watermarks and lateness, session merging, and
 * the queue of open windows that tells emit = "on_close" what has closed.
 *
 * Pure computation: nothing here reads a clock, a store or Lua. The runtime
 * keeps one sl_watermark_t per (task, window operator), state in its stores,
 * and calls these functions per record.
 *
 * Time. Event times and durations are int64 milliseconds. Durations are
 * 0..SL_DURATION_MAX (about 317 years; parsed from text such as "10s" by
 * sl_duration_parse in storage/storage.h); event times must lie in
 * [SL_TIME_MIN, SL_TIME_MAX] (about +-146 million years around the epoch),
 * so that no window arithmetic can overflow. Functions given a time outside
 * that range return SL_EINVALID naming it.
 *
 * Windows. Tumbling and hopping windows are half-open [start, end): t
 * belongs to a window when start <= t < end. Window starts are multiples
 * of the advance counted from the epoch (tumbling: advance = size), for
 * negative times too (floor division: with size 10, t = -1 falls in
 * [-10, 0)). A hopping window whose size is not a multiple of its advance
 * is allowed: a record then falls in floor(size/advance) or
 * ceil(size/advance) windows depending on its time (size 10, advance 4:
 * t = 9 is in [0, 10), [4, 14) and [8, 18); t = 3 in [-4, 6) and [0, 10)).
 * The advance may not exceed the size (that would leave gaps no window
 * covers), and one record may fall in at most SL_WINDOW_MAX_OVERLAP windows
 * (size / advance), so that per-record work stays bounded.
 *
 * Sessions. A session is the closed interval [first, last] of the event
 * times of its records. Two records belong to the same session when a chain
 * of records links them with no step longer than the gap (gap inclusive:
 * with gap 10, records at 0 and 10 share a session; at 0 and 11 they do
 * not). So a record at t joins every session with first - gap <= t <= last +
 * gap, merging them (a record between two sessions bridges them).
 *
 * Watermark and lateness. stream time = the largest event time seen so far
 * by the task (records in arrival order), and
 *
 *     watermark = stream time - grace      (SL_WATERMARK_NONE before any)
 *
 * Every window has a close time, the smallest watermark at which no record
 * can change it any more:
 *
 *     tumbling, hopping:   close time = end              (= start + size)
 *     session:             close time = last + gap + 1
 *
 * A window is closed once close time <= watermark, i.e. once the stream
 * time has passed its end by at least the grace (a tumbling window [0, 60000)
 * with grace 10000 closes when a record with time >= 70000 arrives). A record
 * is late when a window it would change is already closed: for tumbling and
 * hopping windows, each window it falls in is judged separately (a record
 * may be late for an old hopping window and on time for a newer one); a
 * session record is late when the session it would form, or any session it
 * would merge with, is closed (so a closed, possibly emitted session is never
 * reopened). A record is observed (sl_watermark_observe) before it is judged,
 * so a record that advances the stream time is never late. Records with
 * t >= watermark are never late; records with t < watermark are late or not
 * depending on their windows (this is where grace matters).
 *
 * Note: DESIGN.md section 6 writes the rule as "end + grace <= watermark";
 * read with watermark = stream time - grace that would apply the grace
 * twice. The rule here applies it once, as Kafka Streams does: closed when
 * end + grace <= stream time.
 *
 * The stream time must be committed with the task's input offsets (and
 * restored with sl_watermark_restore) so that a restarted task judges
 * lateness exactly as the run before it did.
 */
#ifndef SL_WINDOW_H
#define SL_WINDOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/storage.h"

#define SL_TIME_MAX           ((int64_t)1 << 62)
#define SL_TIME_MIN           (-SL_TIME_MAX)
#define SL_WINDOW_MAX_OVERLAP 1024
#define SL_WATERMARK_NONE     INT64_MIN

/* ---- window specs ---------------------------------------------------- */

typedef enum sl_window_kind {
    SL_WINDOW_TUMBLING = 1,
    SL_WINDOW_HOPPING = 2,
    SL_WINDOW_SESSION = 3,
} sl_window_kind_t;

typedef struct sl_window_spec {
    sl_window_kind_t kind;
    int64_t size;    /* tumbling, hopping: window length; session: 0 */
    int64_t advance; /* hopping: distance between starts; tumbling: size */
    int64_t gap;     /* session: longest pause inside a session */
    int64_t grace;   /* how far behind the stream time records are accepted */
} sl_window_spec_t;

/* Fill *out with a checked spec. Each returns 0, or SL_EINVALID with a
 * detail: size, advance and gap must be 1..SL_DURATION_MAX, grace
 * 0..SL_DURATION_MAX, advance <= size and size / advance (rounded up) at
 * most SL_WINDOW_MAX_OVERLAP. */
int sl_window_tumbling(int64_t size, int64_t grace, sl_window_spec_t *out);
int sl_window_hopping(int64_t size, int64_t advance, int64_t grace, sl_window_spec_t *out);
int sl_window_session(int64_t gap, int64_t grace, sl_window_spec_t *out);

/* ---- assignment (tumbling and hopping) -------------------------------- */

typedef struct sl_window {
    int64_t start; /* inclusive */
    int64_t end;   /* exclusive; also the window's close time */
} sl_window_t;

/* The most windows sl_window_assign can return for spec: 1 for tumbling,
 * ceil(size / advance) for hopping. */
int sl_window_overlap(const sl_window_spec_t *spec);

/*
 * The windows of a tumbling or hopping spec that contain event time t,
 * oldest first, into out (room for max >= sl_window_overlap(spec)).
 * Returns how many (>= 1), or SL_EINVALID if t is outside
 * [SL_TIME_MIN, SL_TIME_MAX]. Not for session specs (assert).
 */
int sl_window_assign(const sl_window_spec_t *spec, int64_t t, sl_window_t *out, int max);

/* The start of the newest window that is closed at watermark (windows with
 * a start <= it are closed), or INT64_MIN if none can be (SL_WATERMARK_NONE).
 * For scanning a store ordered by window start. Tumbling and hopping. */
int64_t sl_window_closed_through(const sl_window_spec_t *spec, int64_t watermark);

/* floor(a / b) for b > 0, also for negative a. */
int64_t sl_floor_div(int64_t a, int64_t b);

/* The start of the oldest window of `size` a store keeps at watermark:
 * windows expire `retention` after they close (the aggregates' expiry, and
 * what feature queries may rely on). */
int64_t sl_window_kept_from(int64_t watermark, int64_t retention, int64_t size);

/* ---- watermarks ------------------------------------------------------ */

/*
 * A task reading a repartition topic takes records of several upstream
 * tasks, each in its own event-time order but interleaved as they were
 * written. Its stream time then follows how far they are (the runtime's
 * frontiers.c) rather than the records alone: the stream time is
 *
 *     max(stream time, floor, min(largest event time observed, bound))
 *
 * so it never goes back, never passes the bound (the slowest upstream task
 * still busy: SL_WATERMARK_NONE holds it where it is) and reaches the floor
 * (how far upstream tasks have surely gone, seen here or not) even without
 * records of its own. Without upstream tasks: bound SL_WATERMARK_UNBOUNDED,
 * floor SL_WATERMARK_NONE.
 */
#define SL_WATERMARK_UNBOUNDED INT64_MAX

typedef struct sl_watermark {
    int64_t stream_time; /* see above, or SL_WATERMARK_NONE */
    int64_t seen;        /* largest event time observed, or SL_WATERMARK_NONE */
    int64_t bound;       /* SL_WATERMARK_UNBOUNDED unless set */
    int64_t floor;       /* SL_WATERMARK_NONE unless set */
    int64_t grace;
} sl_watermark_t;

/* A watermark that has seen nothing, for a spec's grace. */
void sl_watermark_init(sl_watermark_t *wm, int64_t grace);

/* Continues from a committed stream time (SL_WATERMARK_NONE: nothing seen). */
void sl_watermark_restore(sl_watermark_t *wm, int64_t stream_time);

/* Takes event time t into account. Returns true when the watermark moved. */
bool sl_watermark_observe(sl_watermark_t *wm, int64_t t);

/* Sets the upstream bound and floor (see above). Returns true when the
 * watermark moved. */
bool sl_watermark_bound(sl_watermark_t *wm, int64_t bound, int64_t floor);

/* stream time - grace, or SL_WATERMARK_NONE before the first record. */
int64_t sl_watermark_get(const sl_watermark_t *wm);

/* true when a window with this close time is closed at watermark. */
bool sl_window_is_closed(int64_t close_time, int64_t watermark);

/* ---- sessions -------------------------------------------------------- */

typedef struct sl_session {
    int64_t first; /* event time of the session's first record */
    int64_t last;  /* event time of its last record (>= first) */
} sl_session_t;

/* A session's close time: last + gap + 1. */
int64_t sl_session_close_time(const sl_window_spec_t *spec, const sl_session_t *session);

/*
 * What one record does to a key's sessions: the existing sessions
 * [first, first + count) of the caller's array are absorbed into `session`
 * (count 0: `session` is new and goes in at index first). A store deletes
 * the absorbed sessions (and their sl_window_closer entries), merges their
 * aggregates into the record's, and writes `session`. When late is true the
 * record changes nothing (drop it, count it, or send it aside).
 */
typedef struct sl_session_placement {
    sl_session_t session;
    size_t first;
    size_t count;
    bool late;
} sl_session_placement_t;

/*
 * Places a record with event time t among the n sessions of one key
 * (sorted by first, disjoint: sessions[i].last < sessions[i+1].first; they
 * need not be the whole list, only every session within gap of t), given
 * the current watermark (after observing t). Returns 0 and *out, or
 * SL_EINVALID for t out of range, SL_ECORRUPT if the sessions break the
 * ordering rule (a damaged store), both with a detail. Session spec only.
 */
int sl_session_place(const sl_window_spec_t *spec, int64_t watermark, const sl_session_t *sessions,
                     size_t n, int64_t t, sl_session_placement_t *out);

/* Applies a placement that is not late to the array it was computed on:
 * *n shrinks by count - 1. When count is 0 the array needs room for *n + 1. */
void sl_session_apply(sl_session_t *sessions, size_t *n, const sl_session_placement_t *placement);

/* ---- the queue of open windows ---------------------------------------- */

/*
 * The open windows of a task, by (close time, key bytes, start), so that
 * when the watermark moves, the windows it closed come out in an order that
 * depends only on the windows themselves (never on arrival order): the
 * output of emit = "on_close" is then the same after a restart, when the
 * queue is rebuilt from the store. Add a window when its state is created
 * (adding it again only updates its close time), remove sessions a merge
 * absorbed, pop closed windows after each watermark advance. Costs
 * O(log n) per add, remove and pop, plus a copy of the key per window.
 */
typedef struct sl_window_closer sl_window_closer_t;

typedef struct sl_window_closed {
    const uint8_t *key; /* owned by the closer: valid until its next call */
    size_t key_len;
    int64_t start; /* window start, or a session's first */
    int64_t close_time;
} sl_window_closed_t;

/* A new empty queue. Returns 0 and *out (free with sl_window_closer_free),
 * or -ENOMEM. */
int sl_window_closer_new(sl_window_closer_t **out);
void sl_window_closer_free(sl_window_closer_t *closer);

/* Adds the window (key, start), or moves it to a new close time if it is
 * there. Returns 0 or -ENOMEM (queue unchanged). */
int sl_window_closer_add(sl_window_closer_t *closer, const void *key, size_t key_len, int64_t start,
                         int64_t close_time);

/* Removes the window (key, start). Returns true if it was there. */
bool sl_window_closer_remove(sl_window_closer_t *closer, const void *key, size_t key_len,
                             int64_t start);

/* Takes out the first window closed at watermark, if any: returns true
 * and fills *out, or false when none is closed. */
bool sl_window_closer_pop(sl_window_closer_t *closer, int64_t watermark, sl_window_closed_t *out);

/* Windows in the queue. */
size_t sl_window_closer_count(const sl_window_closer_t *closer);

#endif

/*
 * window.c - window specs, assignment, watermarks, session placement
 * and the queue of open windows (rules in window.h).
 *
 * Window arithmetic stays inside int64: times are within +-2^62 and every
 * duration within 1e13 < 2^44, so start, end, close times and watermarks
 * (all within a few durations of a valid time) cannot overflow.
 *
 * The open-window queue is a binary min-heap ordered by (close time, key,
 * start) for popping closed windows, plus an open-addressing hash table
 * (linear probing, backward-shift deletion, so no tombstones) from (key,
 * start) to the heap entry, for finding a window to move or remove. Each
 * entry records its heap position, so both operations are O(log n).
 */
#include "ops/window.h"
#include "ops/hll.h"
#include "storage/storage.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

/* ---- specs ----------------------------------------------------------- */

static int check_duration(const char *what, int64_t v, int64_t min)
{
    if (v < min || v > SL_DURATION_MAX)
        return sl_error_set(SL_EINVALID, "window: %s %lld ms is out of range (%lld..%lld ms)", what,
                            (long long)v, (long long)min, (long long)SL_DURATION_MAX);
    return 0;
}

int sl_window_tumbling(int64_t size, int64_t grace, sl_window_spec_t *out)
{
    int rc = check_duration("size", size, 1);
    if (rc == 0)
        rc = check_duration("grace", grace, 0);
    if (rc)
        return rc;
    *out = (sl_window_spec_t){SL_WINDOW_TUMBLING, size, size, 0, grace};
    return 0;
}

int sl_window_hopping(int64_t size, int64_t advance, int64_t grace, sl_window_spec_t *out)
{
    int rc = check_duration("size", size, 1);
    if (rc == 0)
        rc = check_duration("advance", advance, 1);
    if (rc == 0)
        rc = check_duration("grace", grace, 0);
    if (rc)
        return rc;
    if (advance > size)
        return sl_error_set(SL_EINVALID,
                            "window: advance %lld ms is over the size %lld ms (times between "
                            "windows would belong to none)",
                            (long long)advance, (long long)size);
    if ((size + advance - 1) / advance > SL_WINDOW_MAX_OVERLAP)
        return sl_error_set(SL_EINVALID,
                            "window: size %lld ms / advance %lld ms puts each record in over %d "
                            "windows",
                            (long long)size, (long long)advance, SL_WINDOW_MAX_OVERLAP);
    *out = (sl_window_spec_t){SL_WINDOW_HOPPING, size, advance, 0, grace};
    return 0;
}

int sl_window_session(int64_t gap, int64_t grace, sl_window_spec_t *out)
{
    int rc = check_duration("gap", gap, 1);
    if (rc == 0)
        rc = check_duration("grace", grace, 0);
    if (rc)
        return rc;
    *out = (sl_window_spec_t){SL_WINDOW_SESSION, 0, 0, gap, grace};
    return 0;
}

/* ---- assignment ------------------------------------------------------ */

int64_t sl_floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

int64_t sl_window_kept_from(int64_t watermark, int64_t retention, int64_t size)
{
    return watermark - retention - size + 1;
}

static int check_time(int64_t t)
{
    if (t < SL_TIME_MIN || t > SL_TIME_MAX)
        return sl_error_set(SL_EINVALID, "window: event time %lld is out of range (+-2^62 ms)",
                            (long long)t);
    return 0;
}

int sl_window_overlap(const sl_window_spec_t *spec)
{
    assert(spec->kind == SL_WINDOW_TUMBLING || spec->kind == SL_WINDOW_HOPPING);
    return (int)((spec->size + spec->advance - 1) / spec->advance);
}

/*
 * The windows containing t are those whose aligned start s satisfies
 * t - size < s <= t: from the newest aligned start at or before t, back by
 * advance while the window still reaches past t.
 */
int sl_window_assign(const sl_window_spec_t *spec, int64_t t, sl_window_t *out, int max)
{
    assert(max >= sl_window_overlap(spec));
    (void)max; /* only checked, in debug builds */
    int rc = check_time(t);
    if (rc)
        return rc;
    int64_t newest = sl_floor_div(t, spec->advance) * spec->advance;
    /* The largest k with newest - k * advance > t - size. */
    int64_t k = (spec->size - (t - newest) - 1) / spec->advance;
    int64_t oldest = newest - k * spec->advance;
    int n = 0;
    for (int64_t s = oldest; s <= newest; s += spec->advance) {
        assert(n < max);
        out[n++] = (sl_window_t){s, s + spec->size};
    }
    return n;
}

int64_t sl_window_closed_through(const sl_window_spec_t *spec, int64_t watermark)
{
    assert(spec->kind == SL_WINDOW_TUMBLING || spec->kind == SL_WINDOW_HOPPING);
    if (watermark == SL_WATERMARK_NONE)
        return INT64_MIN;
    return sl_floor_div(watermark - spec->size, spec->advance) * spec->advance;
}

/* ---- watermarks ------------------------------------------------------ */

void sl_watermark_init(sl_watermark_t *wm, int64_t grace)
{
    wm->stream_time = wm->seen = SL_WATERMARK_NONE;
    wm->bound = SL_WATERMARK_UNBOUNDED;
    wm->floor = SL_WATERMARK_NONE;
    wm->grace = grace;
}

void sl_watermark_restore(sl_watermark_t *wm, int64_t stream_time)
{
    wm->stream_time = wm->seen = stream_time;
}

/* stream time = max(stream time, floor, min(seen, bound)) */
static bool advance(sl_watermark_t *wm)
{
    int64_t t = wm->seen < wm->bound ? wm->seen : wm->bound;
    if (wm->floor > t)
        t = wm->floor;
    if (t <= wm->stream_time)
        return false;
    wm->stream_time = t;
    return true;
}

bool sl_watermark_observe(sl_watermark_t *wm, int64_t t)
{
    if (t > wm->seen)
        wm->seen = t;
    return advance(wm);
}

bool sl_watermark_bound(sl_watermark_t *wm, int64_t bound, int64_t floor)
{
    wm->bound = bound;
    wm->floor = floor;
    return advance(wm);
}

int64_t sl_watermark_get(const sl_watermark_t *wm)
{
    if (wm->stream_time == SL_WATERMARK_NONE)
        return SL_WATERMARK_NONE;
    return wm->stream_time - wm->grace;
}

bool sl_window_is_closed(int64_t close_time, int64_t watermark)
{
    return watermark != SL_WATERMARK_NONE && close_time <= watermark;
}

/* ---- sessions -------------------------------------------------------- */

int64_t sl_session_close_time(const sl_window_spec_t *spec, const sl_session_t *session)
{
    return session->last + spec->gap + 1;
}

static int check_sessions(const sl_session_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i].first > s[i].last || check_time(s[i].first) || check_time(s[i].last))
            return sl_error_set(SL_ECORRUPT, "session %zu: [%lld, %lld] is not a valid session", i,
                                (long long)s[i].first, (long long)s[i].last);
        if (i > 0 && s[i - 1].last >= s[i].first)
            return sl_error_set(SL_ECORRUPT, "sessions %zu and %zu overlap or are out of order",
                                i - 1, i);
    }
    return 0;
}

/* The first index in [0, n) whose session ends at or after t (n if none);
 * sessions are disjoint and sorted, so their ends increase too. */
static size_t first_ending_from(const sl_session_t *s, size_t n, int64_t t)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s[mid].last < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The first index in [from, n) whose session starts after t. */
static size_t first_starting_after(const sl_session_t *s, size_t from, size_t n, int64_t t)
{
    while (from < n && s[from].first <= t)
        from++;
    return from;
}

int sl_session_place(const sl_window_spec_t *spec, int64_t watermark, const sl_session_t *sessions,
                     size_t n, int64_t t, sl_session_placement_t *out)
{
    assert(spec->kind == SL_WINDOW_SESSION);
    int rc = check_time(t);
    if (rc == 0)
        rc = check_sessions(sessions, n);
    if (rc)
        return rc;
    size_t lo = first_ending_from(sessions, n, t - spec->gap);
    size_t hi = first_starting_after(sessions, lo, n, t + spec->gap);
    sl_session_t merged = {t, t};
    if (hi > lo) {
        merged.first = sessions[lo].first < t ? sessions[lo].first : t;
        merged.last = sessions[hi - 1].last > t ? sessions[hi - 1].last : t;
    }
    bool late = sl_window_is_closed(sl_session_close_time(spec, &merged), watermark);
    /* The leftmost absorbed session ends first, so closes first. */
    if (hi > lo && sl_window_is_closed(sl_session_close_time(spec, &sessions[lo]), watermark))
        late = true;
    *out = (sl_session_placement_t){merged, lo, hi - lo, late};
    return 0;
}

void sl_session_apply(sl_session_t *sessions, size_t *n, const sl_session_placement_t *placement)
{
    size_t at = placement->first, count = placement->count;
    assert(!placement->late && at + count <= *n);
    if (count == 0) {
        memmove(sessions + at + 1, sessions + at, (*n - at) * sizeof *sessions);
        (*n)++;
    } else {
        memmove(sessions + at + 1, sessions + at + count, (*n - at - count) * sizeof *sessions);
        *n -= count - 1;
    }
    sessions[at] = placement->session;
}

/* ---- the queue of open windows ---------------------------------------- */

typedef struct entry {
    int64_t start;
    int64_t close_time;
    uint64_t hash;
    size_t heap_at; /* position in the heap */
    size_t key_len;
    uint8_t key[];
} entry_t;

struct sl_window_closer {
    entry_t **heap; /* min-heap by entry_before */
    size_t count;
    size_t heap_cap;
    entry_t **slots; /* hash table, slot_cap a power of two, at most 3/4 full */
    size_t slot_cap;
    entry_t *popped; /* the last popped entry, freed at the next call */
};

static uint64_t window_hash(const void *key, size_t key_len, int64_t start)
{
    return sl_hash64(key, key_len, (uint64_t)start);
}

static int compare_keys(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c)
        return c;
    return a_len < b_len ? -1 : a_len > b_len;
}

static bool entry_before(const entry_t *a, const entry_t *b)
{
    if (a->close_time != b->close_time)
        return a->close_time < b->close_time;
    int c = compare_keys(a->key, a->key_len, b->key, b->key_len);
    return c ? c < 0 : a->start < b->start;
}

static void heap_place(sl_window_closer_t *c, size_t at, entry_t *e)
{
    c->heap[at] = e;
    e->heap_at = at;
}

static void sift_up(sl_window_closer_t *c, size_t at)
{
    entry_t *e = c->heap[at];
    while (at > 0 && entry_before(e, c->heap[(at - 1) / 2])) {
        heap_place(c, at, c->heap[(at - 1) / 2]);
        at = (at - 1) / 2;
    }
    heap_place(c, at, e);
}

static void sift_down(sl_window_closer_t *c, size_t at)
{
    entry_t *e = c->heap[at];
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= c->count)
            break;
        if (child + 1 < c->count && entry_before(c->heap[child + 1], c->heap[child]))
            child++;
        if (!entry_before(c->heap[child], e))
            break;
        heap_place(c, at, c->heap[child]);
        at = child;
    }
    heap_place(c, at, e);
}

static void heap_remove(sl_window_closer_t *c, entry_t *e)
{
    size_t at = e->heap_at;
    c->count--;
    if (at == c->count)
        return;
    entry_t *moved = c->heap[c->count];
    heap_place(c, at, moved);
    sift_down(c, at);
    sift_up(c, moved->heap_at);
}

/* The slot holding (key, start), or the empty slot where it would go. */
static size_t slot_of(const sl_window_closer_t *c, const void *key, size_t key_len, int64_t start,
                      uint64_t hash)
{
    size_t mask = c->slot_cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        entry_t *e = c->slots[i];
        if (!e || (e->hash == hash && e->start == start && e->key_len == key_len &&
                   memcmp(e->key, key, key_len) == 0))
            return i;
    }
}

/* Moves the table to new_cap slots. Returns 0 or -ENOMEM (unchanged). */
static int rehash(sl_window_closer_t *c, size_t new_cap)
{
    entry_t **slots = sl_calloc(new_cap, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    entry_t **old = c->slots;
    size_t old_cap = c->slot_cap;
    c->slots = slots;
    c->slot_cap = new_cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i])
            c->slots[slot_of(c, old[i]->key, old[i]->key_len, old[i]->start, old[i]->hash)] =
                old[i];
    sl_free(old);
    return 0;
}

/* Empties slot i, shifting back later entries of its probe run. */
static void slot_clear(sl_window_closer_t *c, size_t i)
{
    size_t mask = c->slot_cap - 1;
    c->slots[i] = NULL;
    for (size_t j = (i + 1) & mask; c->slots[j]; j = (j + 1) & mask) {
        size_t home = c->slots[j]->hash & mask;
        /* Entry j may fill hole i unless its home lies cyclically in (i, j]. */
        bool stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            c->slots[i] = c->slots[j];
            c->slots[j] = NULL;
            i = j;
        }
    }
}

static void forget_popped(sl_window_closer_t *c)
{
    sl_free(c->popped);
    c->popped = NULL;
}

int sl_window_closer_new(sl_window_closer_t **out)
{
    sl_window_closer_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->slot_cap = 16;
    c->slots = sl_calloc(c->slot_cap, sizeof *c->slots);
    if (!c->slots) {
        sl_free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void sl_window_closer_free(sl_window_closer_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->count; i++)
        sl_free(c->heap[i]);
    forget_popped(c);
    sl_free(c->heap);
    sl_free(c->slots);
    sl_free(c);
}

size_t sl_window_closer_count(const sl_window_closer_t *c)
{
    return c->count;
}

/* Room for one more entry in the heap and the table. */
static int make_room(sl_window_closer_t *c)
{
    void *heap = c->heap;
    if (sl_array_reserve(&heap, &c->heap_cap, c->count + 1, sizeof *c->heap))
        return -ENOMEM;
    c->heap = heap;
    if ((c->count + 1) * 4 > c->slot_cap * 3)
        return rehash(c, c->slot_cap * 2);
    return 0;
}

static void move_entry(sl_window_closer_t *c, entry_t *e, int64_t close_time)
{
    e->close_time = close_time;
    sift_up(c, e->heap_at);
    sift_down(c, e->heap_at);
}

int sl_window_closer_add(sl_window_closer_t *c, const void *key, size_t key_len, int64_t start,
                         int64_t close_time)
{
    forget_popped(c);
    uint64_t hash = window_hash(key, key_len, start);
    size_t slot = slot_of(c, key, key_len, start, hash);
    if (c->slots[slot]) {
        move_entry(c, c->slots[slot], close_time);
        return 0;
    }
    entry_t *e = sl_malloc(sizeof *e + key_len);
    if (!e || make_room(c) != 0) {
        sl_free(e);
        return -ENOMEM;
    }
    *e = (entry_t){.start = start, .close_time = close_time, .hash = hash, .key_len = key_len};
    memcpy(e->key, key, key_len);
    c->slots[slot_of(c, key, key_len, start, hash)] = e;
    heap_place(c, c->count++, e);
    sift_up(c, e->heap_at);
    return 0;
}

bool sl_window_closer_remove(sl_window_closer_t *c, const void *key, size_t key_len, int64_t start)
{
    forget_popped(c);
    size_t slot = slot_of(c, key, key_len, start, window_hash(key, key_len, start));
    entry_t *e = c->slots[slot];
    if (!e)
        return false;
    slot_clear(c, slot);
    heap_remove(c, e);
    sl_free(e);
    return true;
}

bool sl_window_closer_pop(sl_window_closer_t *c, int64_t watermark, sl_window_closed_t *out)
{
    forget_popped(c);
    if (c->count == 0 || !sl_window_is_closed(c->heap[0]->close_time, watermark))
        return false;
    entry_t *e = c->heap[0];
    slot_clear(c, slot_of(c, e->key, e->key_len, e->start, e->hash));
    heap_remove(c, e);
    c->popped = e;
    *out = (sl_window_closed_t){e->key, e->key_len, e->start, e->close_time};
    return true;
}

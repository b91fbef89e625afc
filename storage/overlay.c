/*
 * overlay.c - a store's committed changes that LMDB does not hold yet
 * (manual in storage.h, "state stores and commits").
 *
 * A task writes its store's entries into LMDB only every flush interval
 * (sl_cache_set_flush_interval); the commits between append their changes
 * to the changelog alone. So that readers outside the task (GET, WINDOWS,
 * SCAN, feature vectors) still see every commit, each such commit also
 * publishes its changes here as a run: an immutable copy, tagged with the
 * partition and the LMDB transaction id of the commit. A run is put in key
 * order by the first reader that needs it (readers are few beside commits:
 * a commit pays no sort), through a sorted index that readers race to
 * install (the loser frees its own).
 * The flush that writes a partition's entries into LMDB drops its runs
 * once that transaction has committed.
 *
 * The runs of a store form a list that is never changed, only replaced
 * (under the lock) by a copy with one run more or some fewer; a reader
 * takes a reference to the current list (a view) and reads it without the
 * lock. A view read with LMDB read transaction R shows the runs tagged R
 * or earlier: with R's LMDB data that is exactly the state as of commit
 * R, provided no run of R's time was dropped before the view was taken by
 * a flush R does not see. Flushes drop runs holding the state's views
 * lock, which readers hold from beginning R to taking their views
 * (sl_store_views_lock()); a view taken later tells by its `dropped` (the
 * newest transaction that dropped runs), and its reader then reads LMDB in
 * a newer transaction (store.c).
 *
 * A run is published inside the commit's write transaction, before LMDB
 * commits: a commit that then fails drops it again (by its transaction id,
 * which the next commit reuses), holding the commit lock throughout, so no
 * reader can see it with a transaction that includes it.
 *
 * A flush leaves a mark the same way (a run of no changes, tagged with its
 * transaction F): LMDB as of F holds everything the partition's earlier
 * runs hold, so a reader whose transaction includes F must not take those
 * runs over LMDB. Without the mark, a reader that began after F committed
 * but took its views before the flush dropped the runs (the drop waits for
 * the views lock a reader holds only while it begins) read the flushed
 * store's keys as of the runs, older than LMDB: a feature vector over two
 * stores then mixed two commits (test_vectors_never_mix_two_commits, once).
 */
#include "storage/buf.h"
#include "storage/keysort.h"
#include "storage/state.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

typedef struct run_entry {
    uint32_t key_at, value_at; /* in the run's bytes */
    uint32_t key_len;
    int32_t value_len; /* -1: deleted */
} run_entry_t;

typedef struct run {
    atomic_uint refs;
    int32_t partition;
    int flush;            /* a flush's mark: no changes; hides the partition's earlier runs */
    _Atomic uint64_t txn; /* UINT64_MAX: hidden, to be dropped */
    size_t count;
    run_entry_t *entries; /* in the same allocation, in the commit's order */
    uint8_t *bytes;
    _Atomic(uint32_t *) order; /* entry indexes in key order; NULL until a reader asks */
} run_t;

struct sl_overlay_view {
    atomic_uint refs;
    uint64_t dropped; /* the newest transaction that dropped runs */
    size_t count;
    run_t *runs[]; /* oldest first */
};

struct sl_overlay {
    pthread_mutex_t lock;
    sl_overlay_view_t *current; /* never NULL */
};

static void run_release(run_t *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        sl_free(atomic_load(&r->order));
        sl_free(r);
    }
}

void sl_overlay_view_release(sl_overlay_view_t *v)
{
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    for (size_t i = 0; i < v->count; i++)
        run_release(v->runs[i]);
    sl_free(v);
}

static sl_overlay_view_t *new_view(size_t count, uint64_t dropped)
{
    sl_overlay_view_t *v = sl_malloc(sizeof *v + count * sizeof v->runs[0]);
    if (v) {
        atomic_init(&v->refs, 1);
        v->dropped = dropped;
        v->count = 0;
    }
    return v;
}

int sl_overlay_new(sl_overlay_t **out)
{
    sl_overlay_t *o = sl_calloc(1, sizeof *o);
    if (!o || !(o->current = new_view(0, 0))) {
        sl_free(o);
        return sl_error_set(-ENOMEM, "overlay: out of memory");
    }
    pthread_mutex_init(&o->lock, NULL);
    *out = o;
    return 0;
}

void sl_overlay_free(sl_overlay_t *o)
{
    if (!o)
        return;
    sl_overlay_view_release(o->current);
    pthread_mutex_destroy(&o->lock);
    sl_free(o);
}

/* Replaces the current list by v (the lock held). */
static void swap_in(sl_overlay_t *o, sl_overlay_view_t *v)
{
    sl_overlay_view_t *old = o->current;
    o->current = v;
    sl_overlay_view_release(old);
}

static void keep(sl_overlay_view_t *v, run_t *r)
{
    atomic_fetch_add(&r->refs, 1);
    v->runs[v->count++] = r;
}

/* A new run's fields beside its changes: one reference, not yet ordered. */
static void run_init(run_t *r, int32_t partition, uint64_t txn, int flush, size_t count)
{
    atomic_init(&r->refs, 1);
    atomic_init(&r->txn, txn);
    atomic_init(&r->order, NULL);
    r->partition = partition;
    r->flush = flush;
    r->count = count;
}

/* Adds run r as the newest: 1, or 0 out of memory (r not taken). */
static int append(sl_overlay_t *o, run_t *r)
{
    pthread_mutex_lock(&o->lock);
    sl_overlay_view_t *v = new_view(o->current->count + 1, o->current->dropped);
    if (v) {
        for (size_t i = 0; i < o->current->count; i++)
            keep(v, o->current->runs[i]);
        v->runs[v->count++] = r;
        swap_in(o, v);
    }
    pthread_mutex_unlock(&o->lock);
    return v != NULL;
}

int sl_overlay_publish(sl_overlay_t *o, int32_t partition, uint64_t txn, const sl_record_t *changes,
                       size_t count)
{
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++)
        bytes += (size_t)changes[i].key_len + (changes[i].value_len > 0 ? changes[i].value_len : 0);
    if (count == 0)
        return 0;
    if (bytes > UINT32_MAX)
        return sl_error_set(SL_EINVALID, "overlay: a commit of %zu bytes of changes", bytes);
    run_t *r = sl_malloc(sizeof *r + count * sizeof(run_entry_t) + bytes);
    if (!r)
        return sl_error_set(-ENOMEM, "overlay: out of memory keeping %zu changes", count);
    run_init(r, partition, txn, 0, count);
    r->entries = (run_entry_t *)(r + 1);
    r->bytes = (uint8_t *)(r->entries + count);
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        const sl_record_t *c = &changes[i];
        run_entry_t *e = &r->entries[i];
        e->key_at = (uint32_t)at;
        e->key_len = (uint32_t)c->key_len;
        memcpy(r->bytes + at, c->key, (size_t)c->key_len);
        at += (size_t)c->key_len;
        e->value_at = (uint32_t)at;
        e->value_len = c->value ? c->value_len : -1;
        if (e->value_len > 0)
            memcpy(r->bytes + at, c->value, (size_t)c->value_len);
        at += e->value_len > 0 ? (size_t)e->value_len : 0;
    }
    if (append(o, r))
        return 0;
    sl_free(r);
    return sl_error_set(-ENOMEM, "overlay: out of memory keeping %zu changes", count);
}

int sl_overlay_mark_flush(sl_overlay_t *o, int32_t partition, uint64_t txn, int *marked)
{
    *marked = 0;
    pthread_mutex_lock(&o->lock);
    int runs = 0;
    for (size_t i = 0; i < o->current->count && !runs; i++)
        runs = o->current->runs[i]->partition == partition;
    pthread_mutex_unlock(&o->lock);
    if (!runs) /* nothing of the partition to hide (and only its own task adds any) */
        return 0;
    run_t *r = sl_calloc(1, sizeof *r);
    if (r)
        run_init(r, partition, txn, 1, 0);
    if (!r || !append(o, r)) {
        sl_free(r);
        return sl_error_set(-ENOMEM, "overlay: out of memory marking a flush");
    }
    *marked = 1;
    return 0;
}

/* Whether a drop of partition's runs from transaction min_txn on takes r. */
static int dropping(const run_t *r, int32_t partition, uint64_t min_txn)
{
    return (partition < 0 || r->partition == partition) && atomic_load(&r->txn) >= min_txn;
}

void sl_overlay_drop(sl_overlay_t *o, int32_t partition, uint64_t min_txn, uint64_t dropped)
{
    pthread_mutex_lock(&o->lock);
    sl_overlay_view_t *cur = o->current;
    size_t gone = 0;
    for (size_t i = 0; i < cur->count; i++)
        gone += dropping(cur->runs[i], partition, min_txn);
    uint64_t newest = dropped > cur->dropped ? dropped : cur->dropped;
    sl_overlay_view_t *v =
        gone || newest != cur->dropped ? new_view(cur->count - gone, newest) : NULL;
    for (size_t i = 0; v && i < cur->count; i++)
        if (!dropping(cur->runs[i], partition, min_txn))
            keep(v, cur->runs[i]);
    if (v) {
        swap_in(o, v);
    } else if (gone) { /* out of memory: hidden now, dropped by the next drop that can */
        for (size_t i = 0; i < cur->count; i++)
            if (dropping(cur->runs[i], partition, min_txn))
                atomic_store(&cur->runs[i]->txn, UINT64_MAX);
    }
    pthread_mutex_unlock(&o->lock);
}

sl_overlay_view_t *sl_overlay_view(sl_overlay_t *o)
{
    pthread_mutex_lock(&o->lock);
    sl_overlay_view_t *v = o->current;
    atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&o->lock);
    return v;
}

uint64_t sl_overlay_view_dropped(const sl_overlay_view_t *v)
{
    return v->dropped;
}

size_t sl_overlay_view_runs(const sl_overlay_view_t *v)
{
    return v->count;
}

/* LMDB's default order: bytes, then the shorter first. */
static int compare_keys(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    return c ? c : (a_len > b_len) - (a_len < b_len);
}

/* r's entry indexes in key order: installed by the first reader that
 * asks; NULL when out of memory. */
static const uint32_t *run_order(run_t *r)
{
    uint32_t *order = atomic_load(&r->order), *none = NULL;
    if (order)
        return order;
    sl_key_item_t *items = sl_malloc(2 * r->count * sizeof *items);
    order = sl_malloc(r->count * sizeof *order);
    if (!items || !order) {
        sl_free(items);
        sl_free(order);
        return NULL;
    }
    for (size_t i = 0; i < r->count; i++)
        items[i] = (sl_key_item_t){0, 0, r->bytes + r->entries[i].key_at, r->entries[i].key_len,
                                   (uint32_t)i};
    sl_key_sort(items, items + r->count, r->count);
    for (size_t i = 0; i < r->count; i++)
        order[i] = items[i].index;
    sl_free(items);
    if (!atomic_compare_exchange_strong(&r->order, &none, order)) { /* another reader won */
        sl_free(order);
        order = none;
    }
    return order;
}

static const run_entry_t *ordered(const run_t *r, const uint32_t *order, size_t at)
{
    return &r->entries[order[at]];
}

/* The first position in r's key order at or after key. */
static size_t lower_bound(const run_t *r, const uint32_t *order, const uint8_t *key, size_t len)
{
    size_t lo = 0, hi = r->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const run_entry_t *e = ordered(r, order, mid);
        if (compare_keys(r->bytes + e->key_at, e->key_len, key, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether a reader in txn takes run i of v: committed as of txn, and no
 * flush of its partition since that txn holds (a later mark in the list). */
static int run_seen(const sl_overlay_view_t *v, size_t i, uint64_t txn)
{
    const run_t *r = v->runs[i];
    if (r->flush || atomic_load(&r->txn) > txn)
        return 0;
    for (size_t j = i + 1; j < v->count; j++) {
        const run_t *m = v->runs[j];
        if (m->flush && m->partition == r->partition && atomic_load(&m->txn) <= txn)
            return 0;
    }
    return 1;
}

static void entry_value(const run_t *r, const run_entry_t *e, const void **value, int32_t *len)
{
    *value = e->value_len < 0 ? NULL : r->bytes + e->value_at;
    *len = e->value_len;
}

int sl_overlay_view_get(const sl_overlay_view_t *v, uint64_t txn, const void *key, size_t len,
                        const void **value, int32_t *value_len)
{
    for (size_t i = v->count; i-- > 0;) {
        run_t *r = v->runs[i];
        if (!run_seen(v, i, txn))
            continue;
        const uint32_t *order = run_order(r);
        if (!order)
            return sl_error_set(-ENOMEM, "overlay: out of memory ordering a commit's changes");
        size_t at = lower_bound(r, order, key, len);
        const run_entry_t *e = at < r->count ? ordered(r, order, at) : NULL;
        if (e && e->key_len == len && memcmp(r->bytes + e->key_at, key, len) == 0) {
            entry_value(r, e, value, value_len);
            return 1;
        }
    }
    return 0;
}

/* ---- walks --------------------------------------------------------------- */

int sl_overlay_walk_start(sl_overlay_walk_t *w, const sl_overlay_view_t *v, uint64_t txn,
                          const void *from, size_t from_len)
{
    *w = (sl_overlay_walk_t){.view = v};
    if (!v || v->count == 0)
        return 0;
    if (!(w->pos = sl_malloc(v->count * sizeof *w->pos)) ||
        !(w->order = sl_calloc(v->count, sizeof *w->order))) {
        sl_overlay_walk_end(w);
        return sl_error_set(-ENOMEM, "overlay: out of memory walking");
    }
    for (size_t i = 0; i < v->count; i++) {
        run_t *r = v->runs[i];
        if (!run_seen(v, i, txn)) {
            w->pos[i] = r->count;
            continue;
        }
        if (!(w->order[i] = run_order(r))) {
            sl_overlay_walk_end(w);
            return sl_error_set(-ENOMEM, "overlay: out of memory ordering a commit's changes");
        }
        w->pos[i] = from_len ? lower_bound(r, w->order[i], from, from_len) : 0;
    }
    return 0;
}

void sl_overlay_walk_end(sl_overlay_walk_t *w)
{
    sl_free(w->pos);
    sl_free(w->order);
    w->pos = NULL;
    w->order = NULL;
}

int sl_overlay_walk_peek(sl_overlay_walk_t *w, const uint8_t **key, size_t *key_len,
                         const void **value, int32_t *value_len)
{
    const sl_overlay_view_t *v = w->view;
    const run_t *best = NULL;
    const run_entry_t *be = NULL;
    for (size_t i = 0; w->pos && i < v->count; i++) { /* newer runs win ties: later in the list */
        const run_t *r = v->runs[i];
        if (w->pos[i] >= r->count)
            continue;
        const run_entry_t *e = ordered(r, w->order[i], w->pos[i]);
        if (!be || compare_keys(r->bytes + e->key_at, e->key_len, best->bytes + be->key_at,
                                be->key_len) <= 0) {
            best = r;
            be = e;
        }
    }
    if (!be)
        return 0;
    *key = best->bytes + be->key_at;
    *key_len = be->key_len;
    entry_value(best, be, value, value_len);
    return 1;
}

void sl_overlay_walk_next(sl_overlay_walk_t *w)
{
    const uint8_t *key;
    size_t len;
    const void *value;
    int32_t value_len;
    if (!sl_overlay_walk_peek(w, &key, &len, &value, &value_len))
        return;
    uint8_t copy[SL_STORE_KEY_MAX];
    memcpy(copy, key, len);
    for (size_t i = 0; i < w->view->count; i++) {
        const run_t *r = w->view->runs[i];
        if (w->pos[i] >= r->count)
            continue;
        const run_entry_t *e = ordered(r, w->order[i], w->pos[i]);
        if (e->key_len == len && memcmp(r->bytes + e->key_at, copy, len) == 0)
            w->pos[i]++;
    }
}

int sl_overlay_compare_keys(const void *a, size_t a_len, const void *b, size_t b_len)
{
    return compare_keys(a, a_len, b, b_len);
}

/*
 * store.c - state stores: named LMDB databases of a pipeline's operators
 * (manual in storage.h, "state stores and commits").
 *
 * Databases, per store named N = "<pipeline>.<store>":
 *
 *   "store:N"        the entries, keyed by store key:
 *                      kv store      key                      1..511 bytes
 *                      window store  key || W                 9..511 bytes
 *                    where W = be64(window_start ^ 1 << 63): the sign bit
 *                    flipped, so that windows sort by start (negative
 *                    starts first) under LMDB's byte order.
 *   "store-time:N"   window stores only: W || key -> empty, one per
 *                    window entry, so that expiry walks the windows in
 *                    start order and touches only the expired ones.
 *   "stores"         system database shared by all stores:
 *                      N                  -> 1 byte: kind (1 kv, 2 window)
 *                      N 0x00 be32(p)     -> be64: changelog checkpoint of
 *                                            partition p (see below)
 *
 * The checkpoint of (store, p) is the changelog offset up to which the
 * entries of partition p are in LMDB: a commit writes it in the same
 * transaction as the entries, so it always describes the data exactly.
 *
 * Writes (sl_store_apply) take changes sorted by key: LMDB's B-tree then
 * walks its pages in order, about 5 times faster than random puts. For a
 * window store each put tries to add its key first, so that only a window
 * not yet stored adds a time-index entry; those index changes are
 * collected and applied afterwards, radix-sorted, through one cursor. The
 * scratch space for that lives in the store: writes hold the node's write
 * transaction, so they never run concurrently.
 */
#include "storage/buf.h"
#include "storage/keysort.h"
#include "storage/state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_SIGN        0x8000000000000000ull
#define STORES_DATABASE    "stores"
#define STORE_NAME_MAX     (SL_TOPIC_NAME_MAX - 10) /* room for ".changelog" */
#define CHECKPOINT_KEY_MAX (STORE_NAME_MAX + 5)

/* A time-index change: put (1) or delete (0) of W || key. */
typedef struct index_change {
    size_t at; /* in store->index_bytes */
    uint32_t len;
    int put;
} index_change_t;

struct sl_store {
    sl_state_t *state;
    sl_store_kind_t kind;
    char name[STORE_NAME_MAX + 1];
    char changelog[SL_TOPIC_NAME_MAX + 1];
    MDB_dbi data, by_time, stores;
    sl_buf_t index_bytes; /* scratch of sl_store_apply() */
    index_change_t *index_changes;
    size_t index_count, index_cap;
    sl_key_item_t *index_order; /* the changes' keys and the sort's scratch */
    size_t index_order_cap;
    sl_overlay_t *overlay; /* the store's committed changes LMDB lacks (overlay.c) */
    /* Reader handles (sl_store_open_existing) read through the overlay: the
     * view taken for the caller's read transaction `view_for` (of id
     * view_for_id), and the transaction whose LMDB data goes with it: the
     * caller's, or `fresh` when a flush the caller's read does not see
     * dropped runs before the view was taken. */
    int reader;
    sl_overlay_view_t *view;
    MDB_txn *view_for, *fresh;
    uint64_t view_for_id, view_txn;
};

static const char *const kind_names[] = {"?", "kv", "window"};

/* ---- keys ---------------------------------------------------------------- */

size_t sl_store_window_key(uint8_t *out, const void *key, size_t key_len, int64_t window_start)
{
    memcpy(out, key, key_len);
    sl_put_be64(out + key_len, (uint64_t)window_start ^ WINDOW_SIGN);
    return key_len + 8;
}

int sl_store_window_split(const void *store_key, size_t len, size_t *key_len, int64_t *window_start)
{
    if (len < 9 || len > SL_STORE_KEY_MAX)
        return sl_error_set(SL_ECORRUPT, "store: a window key of %zu bytes (9 to %d expected)", len,
                            SL_STORE_KEY_MAX);
    *key_len = len - 8;
    *window_start = (int64_t)(sl_get_be64((const uint8_t *)store_key + len - 8) ^ WINDOW_SIGN);
    return 0;
}

static int check_key(const sl_store_t *s, size_t key_len, size_t max)
{
    if (key_len == 0)
        return sl_error_set(SL_EINVALID, "store %s: a key must not be empty", s->name);
    if (key_len > max)
        return sl_error_set(SL_EINVALID,
                            "store %s: a key of %zu bytes is over the limit of %zu (LMDB's key "
                            "size%s)",
                            s->name, key_len, max,
                            max < SL_STORE_KEY_MAX ? " less 8 for the window" : "");
    return 0;
}

int sl_store_check_key(const sl_store_t *s, size_t key_len)
{
    return check_key(s, key_len, s->kind == SL_STORE_WINDOW ? SL_WINDOW_KEY_MAX : SL_STORE_KEY_MAX);
}

/* ---- opening ------------------------------------------------------------- */

static int check_names(const char *pipeline, const char *name, sl_store_t *s)
{
    if (!pipeline || !*pipeline || !name || !*name)
        return sl_error_set(SL_EINVALID, "store: the pipeline and store names must not be empty");
    if (snprintf(s->name, sizeof s->name, "%s.%s", pipeline, name) >= (int)sizeof s->name)
        return sl_error_set(SL_EINVALID, "store %s.%s: the name is over %d characters", pipeline,
                            name, STORE_NAME_MAX);
    snprintf(s->changelog, sizeof s->changelog, "%s.changelog", s->name);
    if (sl_topic_name_check(s->changelog))
        return sl_error_set(SL_EINVALID, "store %s: %s", s->name, sl_error_detail());
    return 0;
}

/* Reads the kind recorded for the store, or records kind. */
static int check_kind(sl_store_t *s)
{
    MDB_val key = {strlen(s->name), s->name}, value;
    uint8_t kind = (uint8_t)s->kind;
    MDB_txn *txn;
    int rc = sl_state_begin(s->state, 1, &txn);
    if (rc)
        return rc;
    rc = mdb_get(txn, s->stores, &key, &value);
    if (rc == MDB_NOTFOUND) {
        value = (MDB_val){1, &kind};
        if ((rc = mdb_put(txn, s->stores, &key, &value, 0)) == 0)
            return sl_state_commit(txn);
    }
    mdb_txn_abort(txn);
    if (rc)
        return sl_state_error(rc, "reading a store's kind");
    if (value.mv_size != 1 || *(uint8_t *)value.mv_data != kind)
        return sl_error_set(SL_EINVALID, "store %s is a %s store, not a %s store", s->name,
                            value.mv_size == 1 && *(uint8_t *)value.mv_data <= 2
                                ? kind_names[*(uint8_t *)value.mv_data]
                                : "damaged",
                            kind_names[kind]);
    return 0;
}

static int open_databases(sl_store_t *s)
{
    char db[STORE_NAME_MAX + 16];
    int rc = sl_state_database(s->state, STORES_DATABASE, &s->stores);
    snprintf(db, sizeof db, "store:%s", s->name);
    if (rc == 0)
        rc = sl_state_database(s->state, db, &s->data);
    snprintf(db, sizeof db, "store-time:%s", s->name);
    if (rc == 0 && s->kind == SL_STORE_WINDOW)
        rc = sl_state_database(s->state, db, &s->by_time);
    return rc;
}

int sl_store_open(sl_state_t *st, const char *pipeline, const char *name, sl_store_kind_t kind,
                  sl_store_t **out)
{
    sl_store_t *s = sl_calloc(1, sizeof *s);
    int rc;
    if (!s)
        return sl_error_set(-ENOMEM, "store: out of memory opening %s.%s", pipeline, name);
    s->state = st;
    s->kind = kind;
    if (kind != SL_STORE_KV && kind != SL_STORE_WINDOW)
        rc = sl_error_set(SL_EINVALID, "store: unknown kind %d", (int)kind);
    else if ((rc = check_names(pipeline, name, s)) == 0 && (rc = open_databases(s)) == 0 &&
             (rc = check_kind(s)) == 0)
        rc = sl_state_overlay(st, s->name, &s->overlay);
    if (rc) {
        sl_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* Sets s->name to the full name and derives the changelog topic. */
static int set_full_name(sl_store_t *s, const char *name)
{
    if (!name || !*name)
        return sl_error_set(SL_EINVALID, "store: the name must not be empty");
    if (strlen(name) > STORE_NAME_MAX)
        return sl_error_set(SL_EINVALID, "store %.40s...: the name is over %d characters", name,
                            STORE_NAME_MAX);
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->changelog, sizeof s->changelog, "%s.changelog", s->name);
    if (sl_topic_name_check(s->changelog))
        return sl_error_set(SL_EINVALID, "store %s: %s", s->name, sl_error_detail());
    return 0;
}

/* Reads the kind recorded for s->name: SL_ENOTFOUND if there is none. */
static int read_kind(sl_store_t *s)
{
    MDB_val key = {strlen(s->name), s->name}, value;
    MDB_txn *txn;
    int rc = sl_state_database(s->state, STORES_DATABASE, &s->stores);
    if (rc || (rc = sl_state_begin(s->state, 0, &txn)))
        return rc;
    rc = mdb_get(txn, s->stores, &key, &value);
    uint8_t kind = rc == 0 && value.mv_size == 1 ? *(uint8_t *)value.mv_data : 0;
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
        return sl_error_set(SL_ENOTFOUND, "no store '%s'", s->name);
    if (rc)
        return sl_state_error(rc, "reading a store's kind");
    if (kind != SL_STORE_KV && kind != SL_STORE_WINDOW)
        return sl_error_set(SL_ECORRUPT, "store %s: its recorded kind is damaged", s->name);
    s->kind = (sl_store_kind_t)kind;
    return 0;
}

int sl_store_open_existing(sl_state_t *st, const char *name, sl_store_t **out)
{
    sl_store_t *s = sl_calloc(1, sizeof *s);
    int rc;
    if (!s)
        return sl_error_set(-ENOMEM, "store: out of memory opening %s", name ? name : "");
    s->state = st;
    s->reader = 1;
    if ((rc = set_full_name(s, name)) == 0 && (rc = read_kind(s)) == 0 &&
        (rc = open_databases(s)) == 0)
        rc = sl_state_overlay(st, s->name, &s->overlay);
    if (rc) {
        sl_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void sl_store_close(sl_store_t *s)
{
    if (!s)
        return;
    sl_store_read_done(s);
    sl_buf_free(&s->index_bytes);
    sl_free(s->index_changes);
    sl_free(s->index_order);
    sl_free(s);
}

const char *sl_store_name(const sl_store_t *s)
{
    return s->name;
}

const char *sl_store_changelog_topic(const sl_store_t *s)
{
    return s->changelog;
}

sl_overlay_t *sl_store_overlay(const sl_store_t *s)
{
    return s->overlay;
}

sl_store_kind_t sl_store_kind(const sl_store_t *s)
{
    return s->kind;
}

sl_state_t *sl_store_state(const sl_store_t *s)
{
    return s->state;
}

/* ---- reads ------------------------------------------------------------- */

void sl_store_read_done(sl_store_t *s)
{
    sl_overlay_view_release(s->view);
    if (s->fresh)
        mdb_txn_abort(s->fresh);
    s->view = NULL;
    s->fresh = s->view_for = NULL;
}

void sl_store_view_take(sl_store_t *s, MDB_txn *txn)
{
    sl_store_read_done(s);
    if (!s->reader)
        return;
    s->view = sl_overlay_view(s->overlay);
    s->view_for = txn;
    s->view_for_id = s->view_txn = mdb_txn_id(txn);
}

/* A reader handle's view for reads in txn, and the transaction to read
 * LMDB in with it (*use): the one sl_store_view_take() took for txn, else
 * taken now. A view taken after txn began may lack runs a flush that txn
 * does not see dropped meanwhile: LMDB is then read in a newer read. */
static int reader_view(sl_store_t *s, MDB_txn *txn, MDB_txn **use)
{
    *use = txn;
    if (!s->reader)
        return 0;
    uint64_t id = mdb_txn_id(txn);
    if (!s->view || s->view_for != txn || s->view_for_id != id) {
        sl_store_view_take(s, txn);
        if (sl_overlay_view_dropped(s->view) > id) { /* runs txn cannot see in LMDB are gone */
            int rc = sl_state_begin(s->state, 0, &s->fresh);
            if (rc) {
                s->fresh = NULL;
                sl_store_read_done(s);
                return rc;
            }
            s->view_txn = mdb_txn_id(s->fresh);
        }
    }
    if (s->fresh)
        *use = s->fresh;
    return 0;
}

static int get_store_key(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len,
                         const void **value, size_t *value_len)
{
    MDB_val k = {key_len, (void *)key}, v;
    int32_t len;
    int rc = reader_view(s, txn, &txn);
    if (rc)
        return rc;
    if (s->view && (rc = sl_overlay_view_get(s->view, s->view_txn, key, key_len, value, &len))) {
        if (rc < 0)
            return rc;
        *value_len = len < 0 ? 0 : (size_t)len;
        return len < 0 ? SL_ENOTFOUND : 0;
    }
    rc = mdb_get(txn, s->data, &k, &v);
    if (rc == MDB_NOTFOUND)
        return SL_ENOTFOUND;
    if (rc)
        return sl_state_error(rc, "reading a store");
    *value = v.mv_data;
    *value_len = v.mv_size;
    return 0;
}

static int require_kind(const sl_store_t *s, sl_store_kind_t kind)
{
    if (s->kind == kind)
        return 0;
    return sl_error_set(SL_EINVALID, "store %s is a %s store, not a %s store", s->name,
                        kind_names[s->kind], kind_names[kind]);
}

int sl_store_get(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len, const void **value,
                 size_t *value_len)
{
    int rc = require_kind(s, SL_STORE_KV);
    if (rc || (rc = check_key(s, key_len, SL_STORE_KEY_MAX)))
        return rc;
    return get_store_key(s, txn, key, key_len, value, value_len);
}

int sl_store_get_key(sl_store_t *s, MDB_txn *txn, const void *store_key, size_t len,
                     const void **value, size_t *value_len)
{
    if (len == 0 || len > SL_STORE_KEY_MAX)
        return sl_error_set(SL_EINVALID, "store %s: a store key of %zu bytes", s->name, len);
    return get_store_key(s, txn, store_key, len, value, value_len);
}

int sl_store_get_window(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len,
                        int64_t window_start, const void **value, size_t *value_len)
{
    uint8_t k[SL_STORE_KEY_MAX];
    int rc = require_kind(s, SL_STORE_WINDOW);
    if (rc || (rc = check_key(s, key_len, SL_WINDOW_KEY_MAX)))
        return rc;
    size_t n = sl_store_window_key(k, key, key_len, window_start);
    return get_store_key(s, txn, k, n, value, value_len);
}

/* Calls fn for each entry from the first at or after from[0..from_len) in
 * store-key order: LMDB's as of txn and, for a reader handle, the
 * overlay's changes its view shows, which win where both have a key (a
 * delete hides LMDB's entry). Returns 0, fn's non-zero return, or an error. */
static int walk(sl_store_t *s, MDB_txn *txn, const void *from, size_t from_len, sl_entry_fn fn,
                void *arg)
{
    MDB_cursor *cursor;
    MDB_val k = {from_len, (void *)from}, v;
    sl_overlay_walk_t w;
    int stop = 0, rc = reader_view(s, txn, &txn);
    if (rc || (rc = sl_overlay_walk_start(&w, s->view, s->view_txn, from, from_len)))
        return rc;
    if ((rc = mdb_cursor_open(txn, s->data, &cursor))) {
        sl_overlay_walk_end(&w);
        return sl_state_error(rc, "opening a cursor on a store");
    }
    rc = mdb_cursor_get(cursor, &k, &v, from_len ? MDB_SET_RANGE : MDB_FIRST);
    while (!stop && (rc == 0 || rc == MDB_NOTFOUND)) {
        const uint8_t *key;
        size_t len;
        const void *value;
        int32_t value_len;
        int changed = sl_overlay_walk_peek(&w, &key, &len, &value, &value_len);
        if (!changed && rc)
            break;
        int c = !changed ? -1 : rc ? 1 : sl_overlay_compare_keys(k.mv_data, k.mv_size, key, len);
        if (c < 0) {
            stop = fn(arg, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
            rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
            continue;
        }
        if (value_len >= 0)
            stop = fn(arg, key, len, value, (size_t)value_len);
        sl_overlay_walk_next(&w);
        if (c == 0 && !stop)
            rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cursor);
    sl_overlay_walk_end(&w);
    if (stop)
        return stop;
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : sl_state_error(rc, "walking a store");
}

typedef struct window_walk {
    const void *key;
    size_t key_len;
    int64_t to;
    sl_window_fn fn;
    void *arg;
    int past; /* beyond the range: the walk ends */
} window_walk_t;

/* One entry of a windows walk. Other keys that share key's bytes and are
 * longer can sort among its windows (their ninth byte after key falls
 * between two window starts): skipped by length. */
static int window_entry(void *arg, const void *store_key, size_t len, const void *value,
                        size_t value_len)
{
    window_walk_t *ww = arg;
    if (len < ww->key_len || memcmp(store_key, ww->key, ww->key_len) != 0)
        return ww->past = 1;
    if (len != ww->key_len + 8)
        return 0;
    int64_t start = (int64_t)(sl_get_be64((const uint8_t *)store_key + ww->key_len) ^ WINDOW_SIGN);
    if (start > ww->to)
        return ww->past = 1;
    return ww->fn(ww->arg, start, value, value_len);
}

int sl_store_windows(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len, int64_t from,
                     int64_t to, sl_window_fn fn, void *arg)
{
    uint8_t k[SL_STORE_KEY_MAX];
    window_walk_t ww = {key, key_len, to, fn, arg, 0};
    int rc = require_kind(s, SL_STORE_WINDOW);
    if (rc || (rc = check_key(s, key_len, SL_WINDOW_KEY_MAX)))
        return rc;
    if (from > to)
        return 0;
    rc = walk(s, txn, k, sl_store_window_key(k, key, key_len, from), window_entry, &ww);
    return ww.past ? 0 : rc;
}

int sl_store_foreach_from(sl_store_t *s, MDB_txn *txn, const void *from, size_t from_len,
                          sl_entry_fn fn, void *arg)
{
    if (from_len > SL_STORE_KEY_MAX)
        return sl_error_set(SL_EINVALID, "store %s: a start key of %zu bytes (at most %d)", s->name,
                            from_len, SL_STORE_KEY_MAX);
    return walk(s, txn, from, from_len, fn, arg);
}

int sl_store_foreach(sl_store_t *s, MDB_txn *txn, sl_entry_fn fn, void *arg)
{
    return sl_store_foreach_from(s, txn, NULL, 0, fn, arg);
}

int sl_store_foreach_committed(sl_store_t *s, sl_entry_fn fn, void *arg)
{
    MDB_txn *txn;
    int rc = sl_state_begin(s->state, 0, &txn);
    if (rc)
        return rc;
    rc = sl_store_foreach(s, txn, fn, arg);
    mdb_txn_abort(txn);
    return rc;
}

int sl_store_newest_window(sl_store_t *s, int64_t *start)
{
    MDB_txn *txn;
    MDB_cursor *cursor;
    MDB_val key, value;
    int rc = require_kind(s, SL_STORE_WINDOW);
    if (rc || (rc = sl_state_begin(s->state, 0, &txn)))
        return rc;
    if ((rc = mdb_cursor_open(txn, s->by_time, &cursor))) {
        mdb_txn_abort(txn);
        return sl_state_error(rc, "opening a cursor on a store's time index");
    }
    rc = mdb_cursor_get(cursor, &key, &value, MDB_LAST);
    if (rc == 0 && key.mv_size < 9)
        rc = sl_error_set(SL_ECORRUPT, "store: a time-index key of %zu bytes", key.mv_size);
    else if (rc == 0)
        *start = (int64_t)(sl_get_be64(key.mv_data) ^ WINDOW_SIGN);
    else
        rc = rc == MDB_NOTFOUND ? SL_ENOTFOUND : sl_state_error(rc, "reading a time index");
    mdb_cursor_close(cursor);
    mdb_txn_abort(txn);
    return rc;
}

/* Visits up to max time-index entries with a start before cutoff, passing
 * each one's store key. */
static int walk_expired(MDB_cursor *cursor, int64_t from, int64_t cutoff, size_t max,
                        sl_entry_fn fn, void *arg)
{
    uint8_t k[SL_STORE_KEY_MAX], seek[8];
    sl_put_be64(seek, (uint64_t)from ^ WINDOW_SIGN);
    MDB_val key = {8, seek}, value;
    size_t seen = 0;
    int rc, stop = 0;
    for (rc = mdb_cursor_get(cursor, &key, &value, from == INT64_MIN ? MDB_FIRST : MDB_SET_RANGE);
         rc == 0 && !stop && seen < max;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT), seen++) {
        const uint8_t *t = key.mv_data;
        if (key.mv_size < 9 || key.mv_size > SL_STORE_KEY_MAX)
            return sl_error_set(SL_ECORRUPT, "store: a time-index key of %zu bytes", key.mv_size);
        if ((int64_t)(sl_get_be64(t) ^ WINDOW_SIGN) >= cutoff)
            return 0;
        memcpy(k, t + 8, key.mv_size - 8);
        memcpy(k + key.mv_size - 8, t, 8);
        stop = fn(arg, k, key.mv_size, NULL, 0);
    }
    if (stop)
        return stop;
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : sl_state_error(rc, "walking a time index");
}

int sl_store_expired(sl_store_t *s, MDB_txn *txn, int64_t from, int64_t cutoff, size_t max,
                     sl_entry_fn fn, void *arg)
{
    MDB_cursor *cursor;
    int rc = require_kind(s, SL_STORE_WINDOW);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(txn, s->by_time, &cursor)))
        return sl_state_error(rc, "opening a cursor on a store's time index");
    rc = walk_expired(cursor, from, cutoff, max, fn, arg);
    mdb_cursor_close(cursor);
    return rc;
}

/* ---- writes ------------------------------------------------------------ */

/* Notes a time-index change for the window store key k. */
static int note_index_change(sl_store_t *s, const uint8_t *k, size_t len, int put)
{
    if (sl_array_reserve((void **)&s->index_changes, &s->index_cap, s->index_count + 1,
                         sizeof *s->index_changes) ||
        sl_buf_reserve(&s->index_bytes, len))
        return sl_error_set(-ENOMEM, "store %s: out of memory writing", s->name);
    uint8_t *at = s->index_bytes.data + s->index_bytes.len;
    memcpy(at, k + len - 8, 8);
    memcpy(at + 8, k, len - 8);
    s->index_changes[s->index_count++] = (index_change_t){s->index_bytes.len, (uint32_t)len, put};
    s->index_bytes.len += len;
    return 0;
}

/* Writes the noted time-index changes, sorted into LMDB's order. */
static int apply_index(sl_store_t *s, MDB_txn *txn)
{
    int rc = 0;
    size_t n = s->index_count;
    if (sl_array_reserve((void **)&s->index_order, &s->index_order_cap, 2 * n,
                         sizeof *s->index_order))
        return sl_error_set(-ENOMEM, "store %s: out of memory writing", s->name);
    for (size_t i = 0; i < n; i++) {
        const index_change_t *c = &s->index_changes[i];
        s->index_order[i] = (sl_key_item_t){0, 0, s->index_bytes.data + c->at, c->len, (uint32_t)i};
    }
    sl_key_sort(s->index_order, s->index_order + n, n);
    MDB_cursor *cursor; /* one cursor: in key order each step stays near the last */
    if ((rc = mdb_cursor_open(txn, s->by_time, &cursor)))
        return sl_state_error(rc, "opening a cursor on a store's time index");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const sl_key_item_t *it = &s->index_order[i];
        MDB_val k = {it->len, (void *)it->key}, v = {0, NULL};
        if (s->index_changes[it->index].put)
            rc = mdb_cursor_put(cursor, &k, &v, 0);
        else if ((rc = mdb_cursor_get(cursor, &k, &v, MDB_SET)) == 0)
            rc = mdb_cursor_del(cursor, 0);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    mdb_cursor_close(cursor);
    s->index_count = s->index_bytes.len = 0;
    return sl_state_error(rc, "writing a store's time index");
}

/* One change through the cursor; new and deleted windows noted. A window
 * put tries to add the key (one search); when the key is there, the cursor
 * is on it and the value is replaced in place. */
static int apply_one(sl_store_t *s, MDB_cursor *cursor, const sl_record_t *r)
{
    MDB_val k = {(size_t)r->key_len, (void *)r->key}, v;
    int window = s->kind == SL_STORE_WINDOW, rc;
    if (r->value_len < 0) {
        rc = mdb_cursor_get(cursor, &k, &v, MDB_SET);
        if (rc == MDB_NOTFOUND)
            return 0;
        if (rc == 0 && (rc = mdb_cursor_del(cursor, 0)) == 0 && window)
            return note_index_change(s, r->key, (size_t)r->key_len, 0);
        return sl_state_error(rc, "deleting from a store");
    }
    v = (MDB_val){(size_t)r->value_len, (void *)r->value};
    rc = mdb_cursor_put(cursor, &k, &v, window ? MDB_NOOVERWRITE : 0);
    if (rc == 0)
        return window ? note_index_change(s, r->key, (size_t)r->key_len, 1) : 0;
    if (rc == MDB_KEYEXIST) { /* v now points at the stored value */
        v = (MDB_val){(size_t)r->value_len, (void *)r->value};
        rc = mdb_cursor_put(cursor, &k, &v, MDB_CURRENT);
    }
    return sl_state_error(rc, "writing a store");
}

static int check_change(const sl_store_t *s, const sl_record_t *r)
{
    size_t min = s->kind == SL_STORE_WINDOW ? 9 : 1;
    if (r->key_len < 0 || (size_t)r->key_len < min || r->key_len > SL_STORE_KEY_MAX)
        return sl_error_set(SL_EINVALID, "store %s: a change with a %d-byte key (%zu to %d)",
                            s->name, r->key_len, min, SL_STORE_KEY_MAX);
    return 0;
}

int sl_store_apply(sl_store_t *s, MDB_txn *txn, const sl_record_t *changes, size_t count)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open(txn, s->data, &cursor);
    if (rc)
        return sl_state_error(rc, "opening a cursor on a store");
    s->index_count = s->index_bytes.len = 0;
    for (size_t i = 0; rc == 0 && i < count; i++)
        if ((rc = check_change(s, &changes[i])) == 0)
            rc = apply_one(s, cursor, &changes[i]);
    mdb_cursor_close(cursor);
    if (rc == 0 && s->index_count)
        rc = apply_index(s, txn);
    return rc;
}

/* ---- checkpoints ----------------------------------------------------- */

static size_t checkpoint_key(const sl_store_t *s, int32_t partition, uint8_t *key)
{
    size_t n = strlen(s->name);
    memcpy(key, s->name, n + 1);
    sl_put_be32(key + n + 1, (uint32_t)partition);
    return n + 5;
}

int sl_store_checkpoint_get(sl_store_t *s, MDB_txn *txn, int32_t partition, int64_t *offset)
{
    uint8_t kb[CHECKPOINT_KEY_MAX];
    MDB_val k = {checkpoint_key(s, partition, kb), kb}, v;
    int rc = partition < 0 ? MDB_NOTFOUND : mdb_get(txn, s->stores, &k, &v);
    if (rc == MDB_NOTFOUND)
        return SL_ENOTFOUND;
    if (rc)
        return sl_state_error(rc, "reading a store checkpoint");
    if (v.mv_size != 8 || (int64_t)sl_get_be64(v.mv_data) < 0)
        return sl_error_set(SL_ECORRUPT, "store %s: the checkpoint of partition %d is damaged",
                            s->name, partition);
    *offset = (int64_t)sl_get_be64(v.mv_data);
    return 0;
}

int sl_store_checkpoint_put(sl_store_t *s, MDB_txn *txn, int32_t partition, int64_t offset)
{
    uint8_t kb[CHECKPOINT_KEY_MAX], vb[8];
    if (partition < 0 || offset < 0)
        return sl_error_set(SL_EINVALID, "store %s: checkpoint %lld of partition %d", s->name,
                            (long long)offset, partition);
    MDB_val k = {checkpoint_key(s, partition, kb), kb}, v = {8, vb};
    sl_put_be64(vb, (uint64_t)offset);
    return sl_state_error(mdb_put(txn, s->stores, &k, &v, 0), "writing a store checkpoint");
}

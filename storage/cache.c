/*
 * cache.c - a task's write cache over one state store (manual in
 * storage.h, "state stores and commits").
 *
 * An open-addressing hash table of entries keyed by store key (the key, or
 * key || W for a window store, as in store.c). Key and value bytes live in
 * one arena addressed by offsets, so that growing it never invalidates an
 * entry; a value rewritten with the same size or smaller is overwritten in
 * place (an aggregate's state seldom grows), a larger one moves to the end
 * of the arena. Entries are never removed one by one: a delete is an entry
 * marked deleted, and eviction empties the whole cache. So the table needs
 * no tombstones, and entry indexes are stable until the cache is emptied.
 *
 * An entry is dirty from a put or delete until the commit that wrote it
 * (sl_cache_committed()); clean entries stay as a read cache (a clean
 * deleted entry remembers that the key is absent) until the cache holds
 * more than half its budget after a commit, when it is emptied.
 *
 * A slot holds the top half of its key's hash beside the entry's index, so
 * a probe passes other keys' slots without reading their entries (a
 * cache miss each, in a cache of millions).
 *
 * Window stores asked for a key's windows (sl_cache_windows: sessions,
 * stream-stream joins, feature views) add a second table keyed by the key
 * alone, giving the most recently added entry of each key; entries of one
 * key are chained through next_window, so the windows of a key in the
 * cache are found without a scan. It is built at the first ask and kept
 * from then on: a store only ever read by window (tumbling and hopping
 * aggregates) pays nothing for it.
 *
 * Reads that miss go to LMDB through one read transaction the cache keeps,
 * renewed after each commit (a long-lived snapshot would keep LMDB from
 * reusing pages).
 */
#include "storage/buf.h"
#include "storage/keysort.h"
#include "storage/state.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_DEFAULT_BYTES ((size_t)64 << 20)

typedef struct entry {
    uint64_t hash;
    size_t key_at, value_at; /* in the arena */
    uint32_t key_len, value_len, value_cap;
    uint32_t next_window; /* index + 1 of the key's previous window entry; 0 none */
    uint8_t dirty, deleted;
    uint8_t fresh;     /* changed since the last sl_cache_take_changed() */
    uint8_t unflushed; /* changed since the last flush into LMDB */
} entry_t;

/* One window of a key, while merging with LMDB's. */
typedef struct cached_window {
    int64_t start;
    uint32_t entry;
} cached_window_t;

struct sl_cache {
    sl_store_t *store;
    sl_state_t *state;
    int window;
    size_t max_bytes;
    entry_t *entries;
    size_t count, entries_cap, dirty;
    uint32_t *dirty_list; /* indexes of the dirty entries (c->dirty of them) */
    size_t dirty_list_cap;
    uint32_t *unflushed_list; /* indexes of the unflushed entries */
    size_t unflushed, unflushed_cap;
    int64_t flush_interval, flushed_ms; /* ms; when the last flush committed */
    size_t published;                   /* bytes of the commits since then (the overlay's) */
    int flushing;                       /* this commit writes LMDB */
    int64_t expired_below;              /* every stored window starting before it is deleted here */
    int64_t min_start;                  /* window stores: no live cached window starts before it */
    uint64_t *slots; /* a slot: the hash's top 32 bits, index + 1 into entries; 0 empty */
    size_t slot_count;
    /* Window stores, once asked for a key's windows (sl_cache_windows;
     * chained): the same for a key's newest entry, which heads the chain
     * of its windows through next_window. */
    uint64_t *key_slots;
    size_t key_slot_count, key_count;
    int chained;
    sl_buf_t arena;
    sl_key_item_t *order, *order_tmp; /* dirty entries, to sort */
    size_t order_cap, order_tmp_cap;
    sl_record_t *changes;
    size_t changes_cap, change_count;
    int changes_valid;
    cached_window_t *windows;
    size_t windows_cap;
    MDB_txn *read; /* NULL, or a read transaction (live or reset) */
    int read_live;
    sl_owner_fn owner; /* which stored keys expiry may delete; NULL: all */
    void *owner_arg;
    uint64_t clears; /* times emptied */
    /* What the last lookup found for its key (found_len bytes of found_key;
     * 0: none): the slot holding its entry or the empty one where it would
     * go, while no entry has been added since (count == found_count) and
     * the table kept its size (found_slots). So the put that follows a get
     * of the same key (an aggregate's read-modify-write) does not search
     * again, for a new key either. */
    uint32_t found_len;
    size_t found_slot, found_slots, found_count;
    uint64_t found_hash;
    uint8_t found_key[SL_STORE_KEY_MAX];
};

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

/* A hash table slot of entry i, its key's hash h: h's top half beside the
 * index, so that a probe passes other keys without reading their entries. */
static uint64_t slot_make(uint64_t h, size_t i)
{
    return (h & 0xffffffff00000000ull) | ((uint64_t)i + 1);
}

static uint32_t slot_entry(uint64_t slot)
{
    return (uint32_t)slot - 1;
}

static const uint8_t *key_of(const sl_cache_t *c, const entry_t *e)
{
    return c->arena.data + e->key_at;
}

/* The window start of a window store key of len bytes (store.c's
 * decoding; a key too short to hold one, which no window store has, is 0). */
static int64_t key_window(const uint8_t *k, size_t len)
{
    size_t key_len;
    int64_t start = 0;
    (void)sl_store_window_split(k, len, &key_len, &start);
    return start;
}

static int64_t window_of(const sl_cache_t *c, const entry_t *e)
{
    return key_window(key_of(c, e), e->key_len);
}

/* ---- lifetime ------------------------------------------------------------ */

int sl_cache_new(sl_store_t *store, size_t max_bytes, sl_cache_t **out)
{
    sl_cache_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return sl_error_set(-ENOMEM, "store %s: out of memory for a cache", sl_store_name(store));
    c->store = store;
    c->state = sl_store_state(store);
    c->window = sl_store_kind(store) == SL_STORE_WINDOW;
    c->max_bytes = max_bytes ? max_bytes : CACHE_DEFAULT_BYTES;
    c->min_start = INT64_MAX;
    c->expired_below = INT64_MIN;
    c->flushed_ms = sl_monotonic_ms();
    *out = c;
    return 0;
}

static void end_read(sl_cache_t *c)
{
    if (c->read && c->read_live)
        mdb_txn_reset(c->read);
    c->read_live = 0;
}

void sl_cache_clear(sl_cache_t *c)
{
    c->count = c->dirty = c->unflushed = c->key_count = c->arena.len = 0;
    c->min_start = INT64_MAX;
    c->expired_below = INT64_MIN; /* the deletes it knew of may be gone with it */
    if (c->slots)
        memset(c->slots, 0, c->slot_count * sizeof *c->slots);
    if (c->key_slots)
        memset(c->key_slots, 0, c->key_slot_count * sizeof *c->key_slots);
    c->changes_valid = 0;
    c->clears++;
    c->found_len = 0;
    end_read(c);
}

uint64_t sl_cache_clears(const sl_cache_t *c)
{
    return c->clears;
}

void sl_cache_free(sl_cache_t *c)
{
    if (!c)
        return;
    if (c->read)
        mdb_txn_abort(c->read);
    sl_free(c->entries);
    sl_free(c->dirty_list);
    sl_free(c->unflushed_list);
    sl_free(c->slots);
    sl_free(c->key_slots);
    sl_buf_free(&c->arena);
    sl_free(c->order);
    sl_free(c->order_tmp);
    sl_free(c->changes);
    sl_free(c->windows);
    sl_free(c);
}

sl_store_t *sl_cache_store(const sl_cache_t *c)
{
    return c->store;
}

/* What the entries in use take: their bytes, the entry and its share of the
 * tables (kept at most half full). Capacity kept after an eviction for
 * reuse is not counted, so an emptied cache is never "full". */
size_t sl_cache_bytes(const sl_cache_t *c)
{
    size_t per_entry = sizeof(entry_t) + (c->window ? 4 : 2) * sizeof(uint32_t);
    return c->arena.len + c->count * per_entry;
}

int sl_cache_is_full(const sl_cache_t *c)
{
    return sl_cache_bytes(c) >= c->max_bytes;
}

size_t sl_cache_dirty_count(const sl_cache_t *c)
{
    return c->dirty;
}

size_t sl_cache_unflushed_count(const sl_cache_t *c)
{
    return c->unflushed;
}

void sl_cache_set_flush_interval(sl_cache_t *c, int64_t ms)
{
    c->flush_interval = ms;
}

/* ---- the tables ---------------------------------------------------------- */

/* The slot of key k (len bytes, hash h) in a table of count slots:
 * holding its entry, or the empty one where it would go. The entries table
 * is keyed by whole store keys; by_key, the key table of a window store,
 * by a store key's user key (all but its 8 window bytes). */
static uint64_t *probe(const sl_cache_t *c, uint64_t *table, size_t count, const uint8_t *k,
                       size_t len, uint64_t h, int by_key)
{
    size_t mask = count - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint64_t *slot = &table[i];
        if (!*slot)
            return slot;
        if ((*slot >> 32) != (h >> 32)) /* not it: the entry stays untouched */
            continue;
        const entry_t *e = &c->entries[slot_entry(*slot)];
        if ((by_key || e->hash == h) && e->key_len - (by_key ? 8 : 0) == len &&
            !memcmp(key_of(c, e), k, len))
            return slot;
    }
}

static uint64_t *find_slot(const sl_cache_t *c, const uint8_t *k, size_t len, uint64_t h)
{
    return probe(c, c->slots, c->slot_count, k, len, h, 0);
}

/* The key-table slot of window key k (user key bytes, len of them). */
static uint64_t *find_key_slot(const sl_cache_t *c, const uint8_t *k, size_t len, uint64_t h)
{
    return probe(c, c->key_slots, c->key_slot_count, k, len, h, 1);
}

static int rehash(sl_cache_t *c, uint64_t **slots, size_t *slot_count, int by_key)
{
    size_t n = *slot_count ? *slot_count * 2 : 1024;
    uint64_t *fresh = sl_calloc_huge(n, sizeof *fresh), *old = *slots;
    if (!fresh)
        return -ENOMEM;
    *slots = fresh;
    *slot_count = n;
    for (size_t i = 0; old && i < c->count; i++) {
        const entry_t *e = &c->entries[i];
        if (!by_key)
            *find_slot(c, key_of(c, e), e->key_len, e->hash) = slot_make(e->hash, i);
    }
    if (by_key) /* the newest entry of each key heads its chain: visit oldest first */
        for (size_t i = 0; old && i < c->count; i++) {
            const entry_t *e = &c->entries[i];
            size_t len = e->key_len - 8;
            uint64_t h = hash_bytes(key_of(c, e), len);
            *find_key_slot(c, key_of(c, e), len, h) = slot_make(h, i);
        }
    sl_free(old);
    return 0;
}

/* Makes room for one more entry (and one more key). */
static int reserve_entry(sl_cache_t *c)
{
    if (c->count >= UINT32_MAX - 1)
        return -ENOBUFS;
    if (sl_array_reserve((void **)&c->entries, &c->entries_cap, c->count + 1, sizeof(entry_t)) ||
        sl_array_reserve((void **)&c->dirty_list, &c->dirty_list_cap, c->count + 1,
                         sizeof *c->dirty_list) ||
        sl_array_reserve((void **)&c->unflushed_list, &c->unflushed_cap, c->count + 1,
                         sizeof *c->unflushed_list))
        return -ENOMEM;
    if ((c->count + 1) * 2 > c->slot_count && rehash(c, &c->slots, &c->slot_count, 0))
        return -ENOMEM;
    if (c->chained && (c->key_count + 1) * 2 > c->key_slot_count &&
        rehash(c, &c->key_slots, &c->key_slot_count, 1))
        return -ENOMEM;
    return 0;
}

/* Stores n bytes in the arena; *at receives their offset. */
static int arena_add(sl_cache_t *c, const void *data, size_t n, size_t *at)
{
    if (sl_buf_reserve(&c->arena, n))
        return -ENOMEM;
    *at = c->arena.len;
    if (n)
        memcpy(c->arena.data + c->arena.len, data, n);
    c->arena.len += n;
    return 0;
}

/* Links window entry i into its key's chain. */
static void link_window(sl_cache_t *c, uint32_t i)
{
    entry_t *e = &c->entries[i];
    size_t len = e->key_len - 8;
    uint64_t h = hash_bytes(key_of(c, e), len);
    uint64_t *slot = find_key_slot(c, key_of(c, e), len, h);
    if (!*slot)
        c->key_count++;
    e->next_window = *slot ? slot_entry(*slot) + 1 : 0;
    *slot = slot_make(h, i);
}

/* Adds the entry for store key k at slot (from find_slot, tables already
 * grown); *out receives it. */
static int add_entry(sl_cache_t *c, uint64_t *slot, const uint8_t *k, size_t len, uint64_t h,
                     entry_t **out)
{
    entry_t e = {.hash = h, .key_len = (uint32_t)len};
    if (arena_add(c, k, len, &e.key_at))
        return -ENOMEM;
    e.value_at = c->arena.len;
    c->entries[c->count] = e;
    *slot = slot_make(h, c->count++);
    if (c->chained)
        link_window(c, (uint32_t)c->count - 1);
    *out = &c->entries[c->count - 1];
    return 0;
}

/* The entry of store key k, created (empty, clean, deleted) if missing. */
static int entry_for(sl_cache_t *c, const uint8_t *k, size_t len, entry_t **out)
{
    int known = c->found_len == len && c->found_count == c->count && !memcmp(c->found_key, k, len);
    uint64_t h = known ? c->found_hash : hash_bytes(k, len);
    uint64_t *slot = known           ? &c->slots[c->found_slot]
                     : c->slot_count ? find_slot(c, k, len, h)
                                     : NULL;
    if (slot && *slot) {
        *out = &c->entries[slot_entry(*slot)];
        return 0;
    }
    int rc = reserve_entry(c);
    if (rc)
        return sl_error_set(rc, "store %s: the cache cannot grow: %s", sl_store_name(c->store),
                            sl_strerror(rc));
    if (!known || c->slot_count != c->found_slots) /* the table grew: its slots moved */
        slot = find_slot(c, k, len, h);
    if ((rc = add_entry(c, slot, k, len, h, out)))
        return sl_error_set(rc, "store %s: out of memory in the cache", sl_store_name(c->store));
    (*out)->deleted = 1; /* nothing known yet: the caller sets it */
    return 0;
}

static entry_t *lookup(sl_cache_t *c, const uint8_t *k, size_t len)
{
    if (!c->slot_count)
        return NULL;
    uint64_t h = hash_bytes(k, len);
    uint64_t *slot = find_slot(c, k, len, h);
    c->found_len = (uint32_t)len;
    c->found_slot = (size_t)(slot - c->slots);
    c->found_slots = c->slot_count;
    c->found_count = c->count;
    c->found_hash = h;
    memcpy(c->found_key, k, len);
    return *slot ? &c->entries[slot_entry(*slot)] : NULL;
}

/* ---- writes -------------------------------------------------------------- */

static void mark_dirty(sl_cache_t *c, entry_t *e)
{
    if (!e->dirty) /* room: dirty_list has a place per entry, as unflushed_list */
        c->dirty_list[c->dirty++] = (uint32_t)(e - c->entries);
    if (!e->unflushed)
        c->unflushed_list[c->unflushed++] = (uint32_t)(e - c->entries);
    e->dirty = e->unflushed = 1;
    e->fresh = 1;
    c->changes_valid = 0;
}

static int put_store_key(sl_cache_t *c, const uint8_t *k, size_t len, const void *value,
                         size_t value_len)
{
    entry_t *e;
    if (value_len > INT32_MAX)
        return sl_error_set(SL_ETOOBIG, "store %s: a value of %zu bytes", sl_store_name(c->store),
                            value_len);
    int rc = entry_for(c, k, len, &e);
    if (rc)
        return rc;
    if (value_len > e->value_cap) {
        size_t at;
        if (arena_add(c, value, value_len, &at))
            return sl_error_set(-ENOMEM, "store %s: out of memory in the cache",
                                sl_store_name(c->store));
        e->value_at = at; /* entries hold offsets: the arena may move */
        e->value_cap = (uint32_t)value_len;
    } else if (value_len) {
        memcpy(c->arena.data + e->value_at, value, value_len);
    }
    e->value_len = (uint32_t)value_len;
    e->deleted = 0; /* live: min_start covers it (expiry may have passed it when deleted) */
    if (c->window) {
        int64_t start = window_of(c, e);
        if (start < c->min_start)
            c->min_start = start;
        if (start < c->expired_below) /* expiry must look at it again */
            c->expired_below = start;
    }
    mark_dirty(c, e);
    return sl_cache_is_full(c);
}

static int delete_store_key(sl_cache_t *c, const uint8_t *k, size_t len)
{
    entry_t *e;
    int rc = entry_for(c, k, len, &e);
    if (rc)
        return rc;
    e->deleted = 1;
    e->value_len = 0;
    mark_dirty(c, e);
    return sl_cache_is_full(c);
}

int sl_cache_put(sl_cache_t *c, const void *key, size_t key_len, const void *value,
                 size_t value_len)
{
    int rc = sl_store_check_key(c->store, key_len);
    if (rc == 0 && c->window)
        rc = sl_error_set(SL_EINVALID, "store %s is a window store: give the window",
                          sl_store_name(c->store));
    return rc ? rc : put_store_key(c, key, key_len, value, value_len);
}

int sl_cache_delete(sl_cache_t *c, const void *key, size_t key_len)
{
    int rc = sl_store_check_key(c->store, key_len);
    if (rc == 0 && c->window)
        rc = sl_error_set(SL_EINVALID, "store %s is a window store: give the window",
                          sl_store_name(c->store));
    return rc ? rc : delete_store_key(c, key, key_len);
}

/* Builds the store key of a window in k; checks the store and key. */
static int window_key(sl_cache_t *c, const void *key, size_t key_len, int64_t start, uint8_t *k,
                      size_t *len)
{
    int rc = sl_store_check_key(c->store, key_len);
    if (rc == 0 && !c->window)
        rc = sl_error_set(SL_EINVALID, "store %s is a kv store: it has no windows",
                          sl_store_name(c->store));
    if (rc == 0)
        *len = sl_store_window_key(k, key, key_len, start);
    return rc;
}

int sl_cache_window_put(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                        const void *value, size_t value_len)
{
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, window_start, k, &len);
    return rc ? rc : put_store_key(c, k, len, value, value_len);
}

int sl_cache_window_delete(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start)
{
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, window_start, k, &len);
    return rc ? rc : delete_store_key(c, k, len);
}

/* ---- reads --------------------------------------------------------------- */

static int begin_read(sl_cache_t *c)
{
    int rc = 0;
    if (!c->read)
        rc = sl_state_begin(c->state, 0, &c->read);
    else if (!c->read_live)
        rc = sl_state_error(mdb_txn_renew(c->read), "renewing a cache's read");
    c->read_live = rc == 0;
    return rc;
}

/* A cached entry's value: 1, or 0 for a deletion. */
static int cached_value(const sl_cache_t *c, const entry_t *e, const void **value,
                        size_t *value_len)
{
    *value = c->arena.data + e->value_at;
    *value_len = e->value_len;
    return !e->deleted;
}

static int get_store_key(sl_cache_t *c, const uint8_t *k, size_t len, const void **value,
                         size_t *value_len)
{
    const entry_t *e = lookup(c, k, len);
    if (e)
        return cached_value(c, e, value, value_len);
    int rc = begin_read(c);
    if (rc == 0)
        rc = sl_store_get_key(c->store, c->read, k, len, value, value_len);
    return rc == 0 ? 1 : rc == SL_ENOTFOUND ? 0 : rc;
}

int sl_cache_get(sl_cache_t *c, const void *key, size_t key_len, const void **value,
                 size_t *value_len)
{
    int rc = sl_store_check_key(c->store, key_len);
    if (rc == 0 && c->window)
        rc = sl_error_set(SL_EINVALID, "store %s is a window store: give the window",
                          sl_store_name(c->store));
    return rc ? rc : get_store_key(c, key, key_len, value, value_len);
}

int sl_cache_window_get(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                        const void **value, size_t *value_len)
{
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, window_start, k, &len);
    return rc ? rc : get_store_key(c, k, len, value, value_len);
}

int sl_cache_window_get_cached(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                               const void **value, size_t *value_len)
{
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, window_start, k, &len);
    if (rc)
        return rc;
    const entry_t *e = lookup(c, k, len);
    return e ? cached_value(c, e, value, value_len) : 0;
}

/* Asks for entry e, both cache lines it may straddle (entries are 48
 * bytes: every other one crosses a line). */
static void prefetch_entry(const entry_t *e)
{
    __builtin_prefetch(e);
    __builtin_prefetch((const char *)(e + 1) - 1);
}

/* Stage 0 for store key k (len bytes): its hash, its slot asked for. */
static uint64_t prefetch_slot(const sl_cache_t *c, const uint8_t *k, size_t len)
{
    uint64_t h = hash_bytes(k, len);
    __builtin_prefetch(&c->slots[h & (c->slot_count - 1)]);
    return h;
}

uint64_t sl_cache_window_prefetch(sl_cache_t *c, const void *key, size_t key_len,
                                  int64_t window_start)
{
    uint8_t k[SL_STORE_KEY_MAX];
    if (!c->window || !c->slot_count || key_len + 8 > SL_STORE_KEY_MAX)
        return 0;
    return prefetch_slot(c, k, sl_store_window_key(k, key, key_len, window_start));
}

uint64_t sl_cache_key_prefetch(sl_cache_t *c, const void *key, size_t key_len)
{
    if (c->window || !c->slot_count || key_len == 0 || key_len > SL_STORE_KEY_MAX)
        return 0;
    return prefetch_slot(c, key, key_len);
}

void sl_cache_prefetch(const sl_cache_t *c, uint64_t hash, int stage)
{
    if (!hash || !c->slot_count)
        return;
    uint64_t slot = c->slots[hash & (c->slot_count - 1)]; /* the first probe's: most often it */
    if (!slot || (slot >> 32) != (hash >> 32) || slot_entry(slot) >= c->count)
        return;
    const entry_t *e = &c->entries[slot_entry(slot)];
    if (stage == 1) {
        prefetch_entry(e);
    } else if (e->hash == hash) {
        __builtin_prefetch(c->arena.data + e->key_at);
        __builtin_prefetch(c->arena.data + e->value_at);
    }
}

static int compare_windows(const void *a, const void *b)
{
    const cached_window_t *x = a, *y = b;
    return (x->start > y->start) - (x->start < y->start);
}

/* The cache's windows of key in [from, to] into c->windows, by start. */
static int collect_windows(sl_cache_t *c, const uint8_t *key, size_t key_len, int64_t from,
                           int64_t to, size_t *n)
{
    *n = 0;
    if (!c->chained) { /* the first ask: chain the windows cached so far */
        size_t slots = 1024;
        while (slots < 2 * (c->count + 1))
            slots *= 2;
        sl_free(c->key_slots);
        if (!(c->key_slots = sl_calloc_huge(slots, sizeof *c->key_slots)))
            return sl_error_set(-ENOMEM, "store %s: out of memory reading windows",
                                sl_store_name(c->store));
        c->key_slot_count = slots;
        c->key_count = 0;
        for (size_t i = 0; i < c->count; i++)
            link_window(c, (uint32_t)i);
        c->chained = 1;
    }
    uint64_t head = *find_key_slot(c, key, key_len, hash_bytes(key, key_len));
    uint32_t at = head ? slot_entry(head) + 1 : 0;
    for (; at; at = c->entries[at - 1].next_window) {
        int64_t start = window_of(c, &c->entries[at - 1]);
        if (start < from || start > to)
            continue;
        if (sl_array_reserve((void **)&c->windows, &c->windows_cap, *n + 1, sizeof *c->windows))
            return sl_error_set(-ENOMEM, "store %s: out of memory reading windows",
                                sl_store_name(c->store));
        c->windows[(*n)++] = (cached_window_t){start, at - 1};
    }
    if (*n > 1)
        qsort(c->windows, *n, sizeof *c->windows, compare_windows);
    return 0;
}

/* Merges LMDB's windows (in order) with the cache's: the cache's version of
 * a window wins, deleted ones are left out. */
typedef struct merge {
    sl_cache_t *c;
    size_t next, n;
    sl_window_fn fn;
    void *arg;
} merge_t;

/* Passes on the cache's windows that start before limit (or at it, if
 * inclusive). */
static int emit_cached(merge_t *m, int64_t limit, int inclusive)
{
    for (; m->next < m->n && (m->c->windows[m->next].start < limit ||
                              (inclusive && m->c->windows[m->next].start == limit));
         m->next++) {
        const entry_t *e = &m->c->entries[m->c->windows[m->next].entry];
        int rc = e->deleted ? 0
                            : m->fn(m->arg, m->c->windows[m->next].start,
                                    m->c->arena.data + e->value_at, e->value_len);
        if (rc)
            return rc;
    }
    return 0;
}

static int merge_window(void *arg, int64_t start, const void *value, size_t value_len)
{
    merge_t *m = arg;
    int rc = emit_cached(m, start, 0);
    if (rc)
        return rc;
    if (m->next < m->n && m->c->windows[m->next].start == start)
        return emit_cached(m, start, 1); /* the cache's version instead */
    return m->fn(m->arg, start, value, value_len);
}

int sl_cache_windows(sl_cache_t *c, const void *key, size_t key_len, int64_t from, int64_t to,
                     sl_window_fn fn, void *arg)
{
    merge_t m = {.c = c, .fn = fn, .arg = arg};
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, from, k, &len);
    if (rc || from > to || (rc = collect_windows(c, key, key_len, from, to, &m.n)) ||
        (rc = begin_read(c)))
        return rc;
    rc = sl_store_windows(c->store, c->read, key, key_len, from, to, merge_window, &m);
    return rc ? rc : emit_cached(&m, INT64_MAX, 1);
}

int sl_cache_windows_cached(sl_cache_t *c, const void *key, size_t key_len, int64_t from,
                            int64_t to, sl_window_fn fn, void *arg)
{
    merge_t m = {.c = c, .fn = fn, .arg = arg};
    uint8_t k[SL_STORE_KEY_MAX];
    size_t len;
    int rc = window_key(c, key, key_len, from, k, &len);
    if (rc || from > to || (rc = collect_windows(c, key, key_len, from, to, &m.n)))
        return rc;
    return emit_cached(&m, INT64_MAX, 1);
}

/* ---- expiry ------------------------------------------------------------ */

typedef struct expiry {
    sl_cache_t *c;
    size_t count, stored, max; /* all deleted; of those, from LMDB (at most max) */
    int error;
    int64_t last_start; /* of the last stored window looked at */
} expiry_t;

void sl_cache_set_owner(sl_cache_t *c, sl_owner_fn owner, void *arg)
{
    c->owner = owner;
    c->owner_arg = arg;
}

static int expire_stored(void *arg, const void *k, size_t len, const void *value, size_t n)
{
    expiry_t *x = arg;
    const entry_t *e = lookup(x->c, k, len);
    (void)value;
    (void)n;
    x->last_start = key_window(k, len);
    if ((e && e->deleted) || (x->c->owner && !x->c->owner(x->c->owner_arg, k, len)))
        return 0; /* already going, or another task's */
    x->count++;
    int rc = delete_store_key(x->c, k, len);
    if (rc < 0)
        x->error = rc;
    return rc < 0 || ++x->stored >= x->max;
}

int sl_cache_expire(sl_cache_t *c, int64_t cutoff, size_t max, size_t *count)
{
    expiry_t x = {.c = c, .max = max ? max : SIZE_MAX};
    int rc = c->window ? 0
                       : sl_error_set(SL_EINVALID, "store %s is a kv store: it has no windows",
                                      sl_store_name(c->store));
    if (rc == 0 && c->min_start < cutoff) { /* else no cached window is that old */
        int64_t min = INT64_MAX;
        for (size_t i = 0; i < c->count; i++) {
            entry_t *e = &c->entries[i];
            int64_t start = window_of(c, e);
            if (!e->deleted && start < cutoff) {
                e->deleted = 1;
                e->value_len = 0;
                mark_dirty(c, e);
                x.count++;
            } else if (!e->deleted && start < min) {
                min = start;
            }
        }
        c->min_start = min;
    }
    if (rc == 0 && cutoff > c->expired_below && (rc = begin_read(c)) == 0 &&
        (rc = sl_store_expired(c->store, c->read, c->expired_below, cutoff, SIZE_MAX, expire_stored,
                               &x)) == 0)
        c->expired_below = cutoff;    /* all deleted here: the next pass starts after them */
    else if (rc == 1 && x.error == 0) /* stopped at max: every window before the last is done */
        c->expired_below = x.last_start;
    if (rc == 1)
        rc = x.error;
    if (count)
        *count = x.count;
    return rc;
}

/* ---- commits ------------------------------------------------------------- */

static sl_record_t change_of(const sl_cache_t *c, const entry_t *e)
{
    return (sl_record_t){.timestamp = -1,
                         .key = key_of(c, e),
                         .key_len = (int32_t)e->key_len,
                         .value = e->deleted ? NULL : c->arena.data + e->value_at,
                         .value_len = e->deleted ? -1 : (int32_t)e->value_len};
}

/* Walks over a list of entries (dirty, unflushed) read entries scattered
 * over a table far larger than the CPU's caches: each asks for the entry
 * LIST_AHEAD places further on while it works on this one. */
#define LIST_AHEAD 8

static void prefetch_listed(const sl_cache_t *c, const uint32_t *list, size_t i, size_t n)
{
    if (i + LIST_AHEAD < n)
        prefetch_entry(&c->entries[list[i + LIST_AHEAD]]);
}

/* Fills c->changes with the n entries listed (indexes into entries),
 * sorted by store key (LMDB writes sorted keys about 5 times faster). */
static int sort_changes(sl_cache_t *c, const uint32_t *list, size_t n)
{
    if (sl_array_reserve((void **)&c->order, &c->order_cap, n, sizeof *c->order) ||
        sl_array_reserve((void **)&c->order_tmp, &c->order_tmp_cap, n, sizeof *c->order_tmp) ||
        sl_array_reserve((void **)&c->changes, &c->changes_cap, n, sizeof *c->changes))
        return sl_error_set(-ENOMEM, "store %s: out of memory sorting changes",
                            sl_store_name(c->store));
    for (size_t i = 0; i < n; i++) {
        const entry_t *e = &c->entries[list[i]];
        prefetch_listed(c, list, i, n);
        c->order[i] = (sl_key_item_t){0, 0, key_of(c, e), e->key_len, list[i]};
    }
    sl_key_sort(c->order, c->order_tmp, n);
    for (size_t i = 0; i < n; i++)
        c->changes[i] = change_of(c, &c->entries[c->order[i].index]);
    c->change_count = n;
    return 0;
}

/* The dirty entries as changes, in the order they first changed since the
 * last commit (no sort: the changelog, results and the overlay need none). */
int sl_cache_changes(sl_cache_t *c, const sl_record_t **records, size_t *count)
{
    if (!c->changes_valid) {
        if (sl_array_reserve((void **)&c->changes, &c->changes_cap, c->dirty, sizeof *c->changes))
            return sl_error_set(-ENOMEM, "store %s: out of memory listing changes",
                                sl_store_name(c->store));
        for (size_t i = 0; i < c->dirty; i++) {
            prefetch_listed(c, c->dirty_list, i, c->dirty);
            c->changes[i] = change_of(c, &c->entries[c->dirty_list[i]]);
        }
        c->change_count = c->dirty;
        c->changes_valid = 1;
    }
    *records = c->changes;
    *count = c->change_count;
    return 0;
}

int sl_cache_take_changed(sl_cache_t *c, sl_change_fn fn, void *arg)
{
    const sl_record_t *changes;
    size_t n;
    int rc = sl_cache_changes(c, &changes, &n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        entry_t *e = &c->entries[c->dirty_list[i]];
        if (i + LIST_AHEAD < n && changes[i + LIST_AHEAD].value) /* fn reads it */
            __builtin_prefetch(changes[i + LIST_AHEAD].value);
        if (!e->fresh)
            continue;
        e->fresh = 0;
        rc = fn(arg, &changes[i]);
    }
    return rc;
}

/* The key and value bytes of the dirty entries: what the commit adds to
 * the overlay if it does not flush. */
static size_t dirty_bytes(const sl_cache_t *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->dirty; i++) {
        prefetch_listed(c, c->dirty_list, i, c->dirty);
        n += c->entries[c->dirty_list[i]].key_len + c->entries[c->dirty_list[i]].value_len;
    }
    return n;
}

/* Whether this commit writes the entries into LMDB (see sl_cache_flush()):
 * its interval is up, or the cache or the overlay (with the commit's
 * changed bytes) holds over half the cache's budget (the cache is emptied
 * after it). */
static int flush_due(const sl_cache_t *c, int force, size_t changed)
{
    return force || c->flush_interval <= 0 ||
           sl_monotonic_ms() - c->flushed_ms >= c->flush_interval ||
           sl_cache_bytes(c) > c->max_bytes / 2 || c->published + changed > c->max_bytes / 2;
}

int sl_cache_flush_due(const sl_cache_t *c)
{
    return c->unflushed > 0 && flush_due(c, 0, dirty_bytes(c));
}

int sl_cache_flush(sl_cache_t *c, MDB_txn *txn, int force, int *wrote)
{
    const sl_record_t *changes;
    size_t n, changed = c->unflushed > 0 ? dirty_bytes(c) : 0;
    int rc = 0;
    *wrote = c->flushing = c->unflushed > 0 && flush_due(c, force, changed);
    if (!c->flushing) { /* the commit shows the changes through the overlay */
        c->published += changed;
        return 0;
    }
    if ((rc = sort_changes(c, c->unflushed_list, c->unflushed)) == 0) {
        c->changes_valid = 0; /* c->changes holds the unflushed entries now, sorted */
        changes = c->changes;
        n = c->change_count;
    }
    return rc ? rc : sl_store_apply(c->store, txn, changes, n);
}

void sl_cache_committed(sl_cache_t *c)
{
    for (size_t i = 0; i < c->dirty; i++) {
        prefetch_listed(c, c->dirty_list, i, c->dirty);
        c->entries[c->dirty_list[i]].dirty = 0;
    }
    c->dirty = 0;
    c->changes_valid = 0;
    end_read(c);
    if (c->flushing) {
        for (size_t i = 0; i < c->unflushed; i++) {
            prefetch_listed(c, c->unflushed_list, i, c->unflushed);
            c->entries[c->unflushed_list[i]].unflushed = 0;
        }
        c->unflushed = c->published = 0;
        c->flushing = 0;
        c->flushed_ms = sl_monotonic_ms();
    }
    if (c->unflushed == 0 && sl_cache_bytes(c) > c->max_bytes / 2) /* LMDB has it all */
        sl_cache_clear(c);
}

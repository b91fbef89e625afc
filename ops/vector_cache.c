/*
 * vector_cache.c - computed feature vectors kept for the next query of the
 * same key (manual in features.h, "Vector cache").
 *
 * An open-addressing table of entries keyed by (key, format); key bytes,
 * the ends the vector was computed for and the vector's bytes live in one
 * arena. Every entry belongs to the one snapshot the cache holds (c->txn):
 * a query in another snapshot empties the cache first, so nothing computed
 * from one committed state is ever answered in another. Entries are never
 * removed one by one; when the arena or the table would pass the limit the
 * whole cache is emptied, as the write cache does.
 */
#include "ops/features.h"
#include "ops/hll.h"
#include "storage/buf.h"

#include <errno.h>
#include <string.h>

#define FIRST_SLOTS 1024

typedef struct entry {
    uint64_t hash;
    size_t at; /* in the arena: the key, the ends, the vector */
    uint32_t key_len, vector_len;
    uint8_t format, absent, end_count;
} entry_t;

struct sl_vector_cache {
    size_t max_bytes;
    size_t txn; /* the snapshot of the entries */
    int has_txn;
    entry_t *entries;
    size_t count, entries_cap;
    uint32_t *slots; /* index + 1 into entries; 0 empty */
    size_t slot_count;
    sl_buf_t arena;
};

int sl_vector_cache_new(size_t max_bytes, sl_vector_cache_t **out)
{
    sl_vector_cache_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->max_bytes = max_bytes;
    *out = c;
    return 0;
}

void sl_vector_cache_free(sl_vector_cache_t *c)
{
    if (!c)
        return;
    sl_free(c->entries);
    sl_free(c->slots);
    sl_buf_free(&c->arena);
    sl_free(c);
}

static void clear(sl_vector_cache_t *c)
{
    c->count = 0;
    c->arena.len = 0;
    if (c->slot_count)
        memset(c->slots, 0, c->slot_count * sizeof *c->slots);
}

size_t sl_vector_cache_count(const sl_vector_cache_t *c)
{
    return c->count;
}

/* Empties the cache when txn is not its snapshot. */
static void enter(sl_vector_cache_t *c, size_t txn)
{
    if (c->has_txn && c->txn == txn)
        return;
    clear(c);
    c->txn = txn;
    c->has_txn = 1;
}

static uint64_t hash_of(const void *key, size_t key_len, int format)
{
    return sl_hash64(key, key_len, (uint64_t)format + 1);
}

/* The slot of (key, format): its entry's, or the empty one it would take. */
static uint32_t *find_slot(const sl_vector_cache_t *c, const void *key, size_t key_len, int format,
                           uint64_t hash)
{
    size_t mask = c->slot_count - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        uint32_t *slot = &c->slots[i];
        if (!*slot)
            return slot;
        const entry_t *e = &c->entries[*slot - 1];
        if (e->hash == hash && e->key_len == key_len && e->format == format &&
            memcmp(c->arena.data + e->at, key, key_len) == 0)
            return slot;
    }
}

int sl_vector_cache_get(sl_vector_cache_t *c, size_t txn, const void *key, size_t key_len,
                        int format, const int64_t *ends, int end_count, const void **vector,
                        size_t *len)
{
    enter(c, txn);
    if (!c->count)
        return 0;
    uint32_t *slot = find_slot(c, key, key_len, format, hash_of(key, key_len, format));
    if (!*slot)
        return 0;
    const entry_t *e = &c->entries[*slot - 1];
    const uint8_t *stored_ends = c->arena.data + e->at + e->key_len;
    if (e->end_count != end_count || memcmp(stored_ends, ends, (size_t)end_count * 8) != 0)
        return 0; /* computed for other buckets: the clock has moved on */
    *vector = stored_ends + (size_t)end_count * 8;
    *len = e->vector_len;
    return e->absent ? 2 : 1;
}

static int grow_slots(sl_vector_cache_t *c, size_t want)
{
    size_t n = c->slot_count ? c->slot_count : FIRST_SLOTS;
    while (n < want)
        n *= 2;
    if (n == c->slot_count)
        return 0;
    uint32_t *slots = sl_calloc(n, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    sl_free(c->slots);
    c->slots = slots;
    c->slot_count = n;
    for (size_t i = 0; i < c->count; i++) { /* rehash */
        const entry_t *e = &c->entries[i];
        size_t mask = n - 1, at = (size_t)e->hash & mask;
        while (slots[at])
            at = (at + 1) & mask;
        slots[at] = (uint32_t)(i + 1);
    }
    return 0;
}

/* What an entry costs against max_bytes: its bytes, the entry and two
 * slots (the table stays at most half full). */
static size_t cost(size_t bytes)
{
    return bytes + sizeof(entry_t) + 2 * sizeof(uint32_t);
}

static size_t used(const sl_vector_cache_t *c)
{
    return c->arena.len + c->count * cost(0);
}

int sl_vector_cache_put(sl_vector_cache_t *c, size_t txn, const void *key, size_t key_len,
                        int format, const int64_t *ends, int end_count, const void *vector,
                        size_t len, int absent)
{
    size_t bytes = key_len + (size_t)end_count * 8 + len;
    if (end_count < 0 || end_count > UINT8_MAX || key_len > UINT32_MAX || len > UINT32_MAX ||
        cost(bytes) > c->max_bytes)
        return 0; /* never cached */
    enter(c, txn);
    if (used(c) + cost(bytes) > c->max_bytes || c->count >= UINT32_MAX - 1)
        clear(c);
    uint64_t hash = hash_of(key, key_len, format);
    if (grow_slots(c, 2 * (c->count + 1)) ||
        sl_array_reserve((void **)&c->entries, &c->entries_cap, c->count + 1, sizeof *c->entries) ||
        sl_buf_reserve(&c->arena, bytes))
        return -ENOMEM;
    uint32_t *slot = find_slot(c, key, key_len, format, hash);
    size_t at = c->arena.len;
    memcpy(c->arena.data + at, key, key_len);
    memcpy(c->arena.data + at + key_len, ends, (size_t)end_count * 8);
    if (len)
        memcpy(c->arena.data + at + key_len + (size_t)end_count * 8, vector, len);
    c->arena.len += bytes;
    entry_t e = {hash,
                 at,
                 (uint32_t)key_len,
                 (uint32_t)len,
                 (uint8_t)format,
                 (uint8_t) !!absent,
                 (uint8_t)end_count};
    if (*slot) { /* the same key for other buckets: replaced (its old bytes stay till a clear) */
        c->entries[*slot - 1] = e;
        return 0;
    }
    c->entries[c->count++] = e;
    *slot = (uint32_t)c->count;
    return 0;
}

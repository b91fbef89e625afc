/*
 * arena.c - bump allocation for one batch of output records.
 *
 * Invariant: only the newest chunk (the list head) has free space in use;
 * older chunks are full or abandoned. sl_arena_alloc() takes bytes from the
 * head or pushes a chunk twice the size of all chunks so far (at least the
 * request), so a batch of n bytes costs O(log n) allocations. sl_arena_reset()
 * replaces a list of several chunks by one chunk of their total size: after
 * the first batch, batches of similar size allocate nothing.
 */
#include "lua/arena.h"

#include "storage/storage.h"

#include <stdalign.h>
#include <string.h>

#define FIRST_CHUNK_BYTES 4096

struct sl_arena_chunk {
    sl_arena_chunk_t *next;
    size_t size; /* bytes in data */
    size_t used;
    alignas(max_align_t) unsigned char data[];
};

static size_t aligned(size_t n)
{
    size_t a = alignof(max_align_t);
    return (n + a - 1) / a * a;
}

static sl_arena_chunk_t *chunk_push(sl_arena_t *arena, size_t size)
{
    sl_arena_chunk_t *chunk = sl_malloc(sizeof *chunk + size);
    if (!chunk)
        return NULL;
    chunk->next = arena->chunks;
    chunk->size = size;
    chunk->used = 0;
    arena->chunks = chunk;
    arena->total += size;
    return chunk;
}

void *sl_arena_alloc(sl_arena_t *arena, size_t size)
{
    sl_arena_chunk_t *chunk = arena->chunks;
    size = aligned(size ? size : 1);
    if (!chunk || chunk->size - chunk->used < size) {
        size_t want = arena->total ? 2 * arena->total : FIRST_CHUNK_BYTES;
        chunk = chunk_push(arena, want > size ? want : size);
        if (!chunk)
            return NULL;
    }
    void *p = chunk->data + chunk->used;
    chunk->used += size;
    return p;
}

void *sl_arena_copy(sl_arena_t *arena, const void *data, size_t n)
{
    void *p = sl_arena_alloc(arena, n);
    if (p && n)
        memcpy(p, data, n);
    return p;
}

void sl_arena_reset(sl_arena_t *arena)
{
    size_t total = arena->total;
    if (arena->chunks && arena->chunks->next) {
        sl_arena_free(arena);
        chunk_push(arena, total); /* on failure the next alloc retries */
    }
    if (arena->chunks)
        arena->chunks->used = 0;
}

void sl_arena_free(sl_arena_t *arena)
{
    sl_arena_chunk_t *chunk = arena->chunks;
    while (chunk) {
        sl_arena_chunk_t *next = chunk->next;
        sl_free(chunk);
        chunk = next;
    }
    arena->chunks = NULL;
    arena->total = 0;
}

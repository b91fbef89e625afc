/*
 * arena.h - a bump allocator for the bytes of one batch of output records.
 *
 * Memory is handed out from chunks and never moves, so a pointer stays valid
 * until sl_arena_reset(). A reset keeps one chunk as large as everything the
 * batch used, so a warm arena serves each following batch of similar size
 * from a single chunk without calling the allocator.
 */
#ifndef SL_LUA_ARENA_H
#define SL_LUA_ARENA_H

#include <stddef.h>

typedef struct sl_arena_chunk sl_arena_chunk_t;

typedef struct sl_arena {
    sl_arena_chunk_t *chunks; /* newest first; the one bytes come from */
    size_t total;             /* bytes in all chunks */
} sl_arena_t;

/* Returns size bytes aligned for any type, or NULL when out of memory. */
void *sl_arena_alloc(sl_arena_t *arena, size_t size);

/* Copies n bytes into the arena; NULL when out of memory. */
void *sl_arena_copy(sl_arena_t *arena, const void *data, size_t n);

/* Forgets every allocation; the memory is reused by the next batch. */
void sl_arena_reset(sl_arena_t *arena);

/* Frees every chunk and zeroes the arena. */
void sl_arena_free(sl_arena_t *arena);

#endif

/*
 * keysort.h - sorting keys into LMDB's order, fast: a radix sort on 8-byte
 * digits. The write cache and restore sort every commit's and every
 * batch's keys with it, a store's time index its changes, and the
 * aggregator (ops/) the windows it owes results for.
 *
 * LMDB orders keys as memcmp over the shorter length, then the shorter
 * first. Here a key is read 8 bytes at a time, big-endian, zero-padded
 * beyond its end, into `digit`; items are sorted by digit with a stable
 * least-significant-byte radix sort (a byte that is the same in every item,
 * like the "user-000" of "user-00012345", costs one counting pass and no
 * move), and each run of equal digits is finished: keys that end within
 * the digit are prefixes of the others in the run and go first, shortest
 * first; the rest are sorted on their next 8 bytes. The sort is stable, so
 * equal keys keep their order (restore relies on it: the last change of a
 * key wins).
 */
#ifndef SL_KEYSORT_H
#define SL_KEYSORT_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_key_item {
    uint64_t digit, next_digit; /* scratch */
    const uint8_t *key;
    uint32_t len;
    uint32_t index; /* the caller's: which entry this is */
} sl_key_item_t;

/* Sorts items[0..n) by key; tmp has room for n items. The first 16 bytes
 * of every key are read in the order the items come, before anything
 * moves: callers that list items in the order their keys lie in memory
 * make those reads sequential. */
void sl_key_sort(sl_key_item_t *items, sl_key_item_t *tmp, size_t n);

#endif

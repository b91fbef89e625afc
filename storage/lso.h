/*
 * lso.h - committed ends of transactional partitions, in the `lso` database
 * of the node's LMDB environment (state.h). Private to storage; the public
 * half is in storage.h ("state stores and commits").
 *
 * One entry per partition of a transactional topic, plus one marker. n =
 * strlen(topic):
 *
 *   Key (a partition's committed end)
 *   offset   size  field
 *   0        n     topic name, 1..249 bytes of [A-Za-z0-9._-]
 *   n        1     0x00
 *   n+1      4     partition, int32 big-endian, >= 0
 *
 *   Value
 *   0        8     committed end (lso): one past the last committed offset,
 *                  int64 big-endian, >= 0
 *
 *   Key (the marker)
 *   0        1     0x00 (no topic name starts with it)
 *
 *   Value
 *   0        8     the time the state first met the log, ms, int64 big-endian
 *
 * The marker tells a state that has recovered a log before from one that is
 * new (first start, or DATA/state deleted): in the first, a partition
 * without an entry never committed anything and is truncated to its start;
 * in the second, nothing is known, so every durable record is adopted as
 * committed (and changelogs are then complete for a restore).
 */
#ifndef SL_LSO_H
#define SL_LSO_H

#include "storage/partition.h"
#include "storage/state.h"

/* Says whether the entry of (topic, partition) belongs to a topic that
 * still exists (1) or is left over from a deleted one (0). */
typedef int (*sl_lso_keep_fn)(void *arg, const char *topic, int32_t partition);

/*
 * Recovers the given transactional partitions: truncates each to its
 * committed end and makes it visible up to there (or adopts its durable
 * end, for a new state), and deletes entries that keep() rejects. Every
 * partition is tried; returns 0 or the first error. Takes the write
 * transaction, so the caller must not hold it.
 */
int sl_lso_recover(sl_state_t *st, sl_partition_t **partitions, size_t count, sl_lso_keep_fn keep,
                   void *arg);

#endif

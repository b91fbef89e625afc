/*
 * offsets.h - consumer-group committed offsets, in the `offsets` database of
 * the node's LMDB environment (state.h).
 *
 * One entry per (group, topic, partition). The key layout is fixed: other
 * code reads and range-scans it directly. n = strlen(group), m =
 * strlen(topic):
 *
 *   Key
 *   offset   size  field
 *   0        n     group name, 1..255 bytes, no 0x00
 *   n        1     0x00
 *   n+1      m     topic name, 1..249 bytes (SL_TOPIC_NAME_MAX), no 0x00
 *   n+1+m    1     0x00
 *   n+2+m    4     partition, int32 big-endian, >= 0
 *                  total n+m+6 bytes, at most 510 (LMDB's key limit is 511)
 *
 *   Value
 *   0        8     committed offset, int64 big-endian, >= 0
 *
 * LMDB compares keys as bytes (memcmp, then length). As the 0x00 after a
 * name sorts below every byte of a longer name, keys sort by group, then
 * topic, then partition number, and "g\0" is a prefix of exactly the keys
 * of group "g" (never of "g2"), "g\0t\0" exactly those of topic "t" in that
 * group (never "t.x"). Stored offsets are whatever the caller commits (by
 * Kafka's convention, the next offset the group will read).
 *
 * Every function validates its names (non-empty, within the lengths above;
 * a C string cannot contain 0x00) and returns SL_EINVALID with a detail for
 * a bad one. Other failures are those of state.h: -ENOSPC when the map is
 * full, SL_ECORRUPT for an entry that does not follow the layout, -errno.
 * A write that fails leaves nothing of itself behind. None of these
 * functions but sl_offsets_put() may be called by a thread that holds a
 * write transaction.
 */
#ifndef SL_OFFSETS_H
#define SL_OFFSETS_H

#include "storage/state.h"

#define SL_OFFSETS_DATABASE  "offsets"
#define SL_GROUP_NAME_MAX    255
#define SL_OFFSETS_KEY_MAX   (SL_GROUP_NAME_MAX + 1 + SL_TOPIC_NAME_MAX + 1 + 4)
#define SL_OFFSETS_VALUE_LEN 8

/*
 * Commits offsets[i] for partitions[i], i < count, of one group and topic,
 * atomically: one write transaction, durable when this returns 0. A
 * partition named twice keeps its last offset. count 0 commits nothing and
 * returns 0. SL_EINVALID (and nothing committed) for a bad name, a negative
 * partition or a negative offset.
 */
int sl_offsets_commit(sl_state_t *st, const char *group, const char *topic,
                      const int32_t *partitions, const int64_t *offsets, size_t count);

/* Writes the offset of one partition inside the caller's write transaction
 * txn (a task's commit: with its state and outputs). Returns 0, SL_EINVALID
 * (nothing written) for a bad name, a negative partition or offset, or an
 * LMDB failure, after which txn must be aborted. */
int sl_offsets_put(sl_state_t *st, MDB_txn *txn, const char *group, const char *topic,
                   int32_t partition, int64_t offset);

/* Reads the committed offset of one partition into *offset (untouched on
 * failure). Returns 0, SL_ENOTFOUND if the group never committed one,
 * SL_EINVALID for a bad name or a negative partition, or an error. */
int sl_offsets_get(sl_state_t *st, const char *group, const char *topic, int32_t partition,
                   int64_t *offset);

/* The same, inside the caller's transaction txn (read or write): what one
 * snapshot of the state holds. The offsets database must exist already
 * (sl_offsets_get, a commit or sl_state_database made it): a read cannot
 * create it. */
int sl_offsets_get_txn(sl_state_t *st, MDB_txn *txn, const char *group, const char *topic,
                       int32_t partition, int64_t *offset);

/* What sl_offsets_foreach() calls per entry. group and topic are borrowed,
 * NUL-terminated, valid only during the call. */
typedef int (*sl_offsets_fn)(void *arg, const char *group, const char *topic, int32_t partition,
                             int64_t offset);

/*
 * Calls fn for every committed (group, topic, partition, offset) in key
 * order, restricted to group and topic when they are not NULL (topic alone
 * selects that topic in every group). fn sees one consistent snapshot (a
 * read transaction held during the walk) and may itself commit or delete
 * offsets; the walk does not see those changes. Stops at the first non-zero
 * return of fn and returns that value (so fn should return values it can
 * tell from error codes, e.g. 1); otherwise 0 or an error. If the names are
 * invalid, fn is never called.
 */
int sl_offsets_foreach(sl_state_t *st, const char *group, const char *topic, sl_offsets_fn fn,
                       void *arg);

/* Deletes every offset committed for topic, in every group (when the topic
 * is deleted), in one write transaction. 0 also when there was none. */
int sl_offsets_delete_topic(sl_state_t *st, const char *topic);

/* Deletes every offset committed by group, in one write transaction. 0 also
 * when there was none. */
int sl_offsets_delete_group(sl_state_t *st, const char *group);

#endif

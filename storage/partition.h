/*
 * partition.h - a partition: an ordered list of segments, the last one
 * active, plus the appender, the durability state and the readers' view.
 *
 * Locks, always taken in this order:
 *   maintenance_lock  retention, compaction and truncation, one at a time;
 *   append_lock       one appender at a time (encoding, writing, rolling);
 *   lock              the segment list, in-memory indexes and the ends;
 *                     held only for lookups and updates, never during I/O.
 *
 * Offsets: written_end is the next offset to assign; durable_end (<=
 * written_end) is what readers see. With fsync=never they are equal after
 * every append; otherwise the flusher moves durable_end after fdatasync.
 * If an fsync fails, the records that were not durable are cut from the
 * file and their offsets are never reused (the range goes into lost[], so
 * their waiters learn they failed).
 *
 * A transactional partition (topic setting transactional=true) has a third
 * end, committed_end (<= durable_end): the `lso` the node's last commit
 * recorded for it. Readers, waiters and the listener see only up to
 * committed_end there; it moves only through sl_partition_set_visible_end()
 * and recovery (sl_partition_recover_end()), and back only by truncation.
 * Until the node attaches its state (sl_log_attach_state()) it stays at the
 * start offset, so a log opened without the state shows such a partition
 * empty rather than with records a crash may have left uncommitted.
 */
#ifndef SL_PARTITION_H
#define SL_PARTITION_H

#include "storage/segment.h"

#include <pthread.h>

typedef struct sl_flusher sl_flusher_t;

/* What a partition needs from its log. */
typedef struct sl_partition_env {
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
    sl_log_listener_fn listener;
    void *listener_arg;
    sl_flusher_t *flusher;
} sl_partition_env_t;

typedef struct sl_lost_range {
    int64_t from, to;
    int error;
} sl_lost_range_t;

#define SL_LOST_RANGES 16

struct sl_partition {
    char *topic_name;
    int32_t id;
    char *dir;
    sl_topic_config_t config;
    sl_partition_env_t env;
    atomic_int refs;

    pthread_mutex_t maintenance_lock;
    pthread_mutex_t append_lock;
    /* compaction's last full pass, under maintenance_lock: done (0: none
     * since open or a truncation), the end of the closed segments it
     * covered and its time */
    int compacted;
    int64_t compacted_end, compacted_ms;
    pthread_mutex_t lock;
    pthread_cond_t changed; /* durable_end moved, an error, or deleted */

    sl_segment_t **segments; /* by base offset; the last one is active */
    sl_segment_t *active;    /* == segments[segment_count - 1]; changes under append_lock */
    int32_t segment_count, segment_cap;
    int64_t written_end;
    int64_t durable_end;
    int64_t committed_end; /* transactional partitions only */
    int transactional;
    int deleted;
    sl_lost_range_t lost[SL_LOST_RANGES];
    int lost_count;

    sl_batch_encoder_t encoder; /* under append_lock */
    atomic_llong stats[4];      /* sl_partition_stats_t, in its order */

    /* flusher bookkeeping, under the flusher's lock */
    int flush_queued;
    int64_t flush_due_ms;
    struct sl_partition *flush_next;
};

/* Opens (creating if empty) the partition in dir, recovering its segments.
 * clean says the last shutdown was clean, so index files can be trusted. */
int sl_partition_open(const char *topic, int32_t id, const char *dir,
                      const sl_topic_config_t *config, const sl_partition_env_t *env, int clean,
                      sl_partition_t **out);

/* The end readers may see: committed_end for a transactional partition,
 * else durable_end. Lock held. */
static inline int64_t sl_partition_visible_locked(const sl_partition_t *p)
{
    return p->transactional ? p->committed_end : p->durable_end;
}

/* Recovery of a transactional partition: truncates it to end (if records
 * lie beyond) and makes it visible up to exactly end, which may be lower
 * than the current visible end. end must lie in [start, written end]. */
int sl_partition_recover_end(sl_partition_t *p, int64_t end);

/* Makes the partition durable, writes the active segment's indexes and
 * drops the caller's reference. */
void sl_partition_close(sl_partition_t *p);

/* Calls the log listener with p's visible end, as if records had just
 * become visible: for changes a reader can only see after something else
 * (a queue's ready messages, made ready after their commit) that happened
 * after the partition's own announcement. */
void sl_partition_announce(sl_partition_t *p);

/* Marks the partition deleted: appends fail, readers and waiters get
 * SL_EDELETED. The files are the caller's to remove. */
void sl_partition_mark_deleted(sl_partition_t *p);

/* fdatasyncs what was written so far and moves durable_end (the flusher's
 * work). Returns 0 or the sync error (already applied: the lost records
 * are cut and their waiters woken). */
int sl_partition_sync(sl_partition_t *p);

/* What a reader learns when it enters a segment. */
typedef struct sl_segment_view {
    int64_t position;     /* file position to scan from */
    int64_t batch_offset; /* base offset of the batch at that position */
    int64_t visible_end;  /* the partition's visible end */
    int64_t size;         /* bytes written to the segment */
    int64_t end_offset;   /* one past the segment's last offset written */
} sl_segment_view_t;

/* Segment lookup for readers: the segment holding offset (or the first one
 * after it), with a reference the caller drops, and *view as of now. */
sl_segment_t *sl_partition_locate(sl_partition_t *p, int64_t offset, sl_segment_view_t *view);

/* Flusher interface. */
int sl_flusher_start(sl_flusher_t **out);
void sl_flusher_stop(sl_flusher_t *f);
void sl_flusher_schedule(sl_flusher_t *f, sl_partition_t *p);
void sl_flusher_forget(sl_flusher_t *f, sl_partition_t *p);

#endif

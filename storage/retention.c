/*
 * retention.c - deleting whole closed segments by age and by size.
 *
 * Kafka's rules: a closed segment expires by time when its newest record is
 * older than retention.ms; by size while removing it still leaves at least
 * retention.bytes. Only a prefix of the segment list goes (the oldest
 * segments first, stopping at the first one that stays), and the active
 * segment never goes, so the end offset never moves back. Nor does a
 * segment of a transactional partition holding records beyond its
 * committed end: those still await their commit or their truncation.
 */
#include "storage/partition.h"

/* How many leading segments have expired. Lock held. */
static int32_t expired_prefix(const sl_partition_t *p, int64_t now_ms)
{
    const sl_topic_config_t *c = &p->config;
    int64_t total = 0;
    for (int32_t i = 0; i < p->segment_count; i++)
        total += p->segments[i]->size;
    int32_t n = 0;
    while (n < p->segment_count - 1) {
        const sl_segment_t *seg = p->segments[n];
        int by_time = c->retention_ms >= 0 && seg->max_timestamp < now_ms - c->retention_ms;
        int by_size = c->retention_bytes >= 0 && total - seg->size >= c->retention_bytes;
        if ((!by_time && !by_size) || (p->transactional && seg->end_offset > p->committed_end))
            break;
        total -= seg->size;
        n++;
    }
    return n;
}

int sl_partition_apply_retention(sl_partition_t *p, int64_t now_ms, int *deleted)
{
    sl_segment_t *gone[64];
    pthread_mutex_lock(&p->maintenance_lock);
    pthread_mutex_lock(&p->lock);
    int32_t n = p->deleted ? 0 : expired_prefix(p, now_ms);
    if (n > 64)
        n = 64; /* the rest go on the next round */
    memcpy(gone, p->segments, (size_t)n * sizeof *gone);
    memmove(p->segments, p->segments + n, (size_t)(p->segment_count - n) * sizeof *gone);
    p->segment_count -= n;
    int64_t start = p->segments[0]->base_offset;
    pthread_mutex_unlock(&p->lock);
    for (int32_t i = 0; i < n; i++) {
        sl_segment_unlink(gone[i]);
        sl_segment_unref(gone[i]);
    }
    pthread_mutex_unlock(&p->maintenance_lock);
    if (n)
        sl_report(SL_INFO, "log", "%s/%d: retention deleted %d segment(s); log starts at %lld",
                  p->topic_name, p->id, n, (long long)start);
    if (deleted)
        *deleted = n;
    return 0;
}

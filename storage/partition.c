/*
 * partition.c - opening, appending, durability and lookups of a partition.
 *
 * The append path: encode the batch (under append_lock), roll the active
 * segment if the batch would overflow it, write the batch with one pwrite,
 * then publish it under the short lock. Durability is the flusher's
 * (flusher.c) unless fsync=never; acknowledged appends wait for it in
 * sl_partition_await_durable().
 */
#include "storage/partition.h"
#include "storage/io.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(const sl_partition_t *p)
{
    return p->env.clock_ms(p->env.clock_arg);
}

static sl_segment_owner_t owner_of(const sl_partition_t *p)
{
    return (sl_segment_owner_t){p->topic_name, p->id, p->config.index_interval_bytes};
}

static int push_segment(sl_partition_t *p, sl_segment_t *seg)
{
    if (p->segment_count == p->segment_cap) {
        int32_t cap = p->segment_cap ? p->segment_cap * 2 : 8;
        sl_segment_t **s = sl_realloc(p->segments, (size_t)cap * sizeof *s);
        if (!s)
            return -ENOMEM;
        p->segments = s;
        p->segment_cap = cap;
    }
    p->segments[p->segment_count++] = seg;
    p->active = seg;
    return 0;
}

static int compare_offsets(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Ends with the suffix, or is an unfinished temporary file. */
static int has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), m = strlen(suffix);
    return n > m && !strcmp(name + n - m, suffix);
}

/* Lists the base offsets of dir's .log files, sorted; removes leftovers of
 * interrupted writes (.tmp, .cleaned). */
static int list_segments(const char *dir, int64_t **bases, size_t *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    size_t n = 0, cap = 0;
    int64_t *b = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[PATH_MAX];
        if (has_suffix(e->d_name, ".tmp") || has_suffix(e->d_name, ".cleaned")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
            continue;
        }
        char *end;
        long long base = strtoll(e->d_name, &end, 10);
        if (end != e->d_name + 20 || strcmp(end, ".log") || base < 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            int64_t *grown = sl_realloc(b, cap * sizeof *b);
            if (!grown) {
                sl_free(b);
                closedir(d);
                return -ENOMEM;
            }
            b = grown;
        }
        b[n++] = base;
    }
    closedir(d);
    if (n)
        qsort(b, n, sizeof *b, compare_offsets);
    *bases = b;
    *count = n;
    return 0;
}

/* Opens one segment found on disk and appends it to the list, dropping
 * empty closed ones. Only the last (active) segment may have a torn tail. */
static int open_one_segment(sl_partition_t *p, int64_t base, int clean, int last)
{
    sl_segment_owner_t owner = owner_of(p);
    sl_segment_t *seg;
    int rc = sl_segment_open(p->dir, base, clean || !last, last, &owner, &seg);
    if (rc)
        return rc;
    if (seg->size == 0 && !last) {
        sl_segment_unlink(seg);
        sl_segment_unref(seg);
        return 0;
    }
    sl_segment_t *prev = p->segment_count ? p->segments[p->segment_count - 1] : NULL;
    if (prev && prev->corrupt)
        prev->end_offset = seg->base_offset; /* readers must meet the damage, not skip it */
    if (prev && seg->base_offset < prev->end_offset) {
        rc = sl_error_set(SL_ECORRUPT, "%s/%d: segment %020lld overlaps the one before it",
                          p->topic_name, p->id, (long long)base);
        sl_segment_unref(seg);
        return rc;
    }
    if ((rc = push_segment(p, seg)))
        sl_segment_unref(seg);
    return rc;
}

static int open_segments(sl_partition_t *p, int clean)
{
    int64_t *bases = NULL;
    size_t n;
    int rc = list_segments(p->dir, &bases, &n);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = open_one_segment(p, bases[i], clean, i == n - 1);
    if (rc == 0 && p->segment_count == 0) {
        sl_segment_owner_t owner = owner_of(p);
        sl_segment_t *seg;
        int64_t base = n ? bases[n - 1] : 0;
        rc = sl_segment_create(p->dir, base, now_ms(p), &owner, &seg);
        if (rc == 0 && (rc = push_segment(p, seg)))
            sl_segment_unref(seg);
        if (rc == 0 && p->config.fsync != SL_FSYNC_NEVER)
            rc = sl_io_sync_dir(p->dir);
    }
    if (rc == 0) {
        p->written_end = p->durable_end = p->active->end_offset;
        p->committed_end = p->segments[0]->base_offset; /* until recovery says more */
    }
    if (rc == 0 && p->active->corrupt)
        rc = sl_error_set(SL_ECORRUPT, "%s/%d: active segment is corrupt", p->topic_name, p->id);
    sl_free(bases);
    return rc;
}

int sl_partition_open(const char *topic, int32_t id, const char *dir,
                      const sl_topic_config_t *config, const sl_partition_env_t *env, int clean,
                      sl_partition_t **out)
{
    sl_partition_t *p = sl_calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->topic_name = sl_strdup(topic);
    p->dir = sl_strdup(dir);
    p->id = id;
    p->config = *config;
    p->transactional = config->transactional;
    p->env = *env;
    atomic_init(&p->refs, 1);
    pthread_mutex_init(&p->maintenance_lock, NULL);
    pthread_mutex_init(&p->append_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->changed, &attr);
    pthread_condattr_destroy(&attr);
    int rc = !p->topic_name || !p->dir ? -ENOMEM : 0;
    if (rc == 0 && mkdir(dir, 0755) && errno != EEXIST)
        rc = sl_error_set(-errno, "cannot create %s: %s", dir, strerror(errno));
    if (rc == 0)
        rc = open_segments(p, clean);
    if (rc) {
        sl_partition_unref(p);
        return rc;
    }
    *out = p;
    return 0;
}

void sl_partition_ref(sl_partition_t *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
}

void sl_partition_unref(sl_partition_t *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (int32_t i = 0; i < p->segment_count; i++)
        sl_segment_unref(p->segments[i]);
    sl_free(p->segments);
    sl_batch_encoder_free(&p->encoder);
    pthread_mutex_destroy(&p->maintenance_lock);
    pthread_mutex_destroy(&p->append_lock);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->changed);
    sl_free(p->topic_name);
    sl_free(p->dir);
    sl_free(p);
}

void sl_partition_close(sl_partition_t *p)
{
    int rc = sl_partition_sync(p);
    pthread_mutex_lock(&p->append_lock);
    if (rc == 0 && !p->deleted && p->config.fsync == SL_FSYNC_NEVER)
        rc = sl_io_sync(p->active->fd);
    if (rc == 0 && !p->deleted)
        rc = sl_segment_close_files(p->active, 0);
    if (rc)
        sl_report(SL_WARN, "log", "%s/%d: closing: %s", p->topic_name, p->id, sl_strerror(rc));
    pthread_mutex_unlock(&p->append_lock);
    sl_partition_unref(p);
}

void sl_partition_mark_deleted(sl_partition_t *p)
{
    pthread_mutex_lock(&p->append_lock);
    pthread_mutex_lock(&p->lock);
    p->deleted = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->append_lock);
}

void sl_partition_get_stats(sl_partition_t *p, sl_partition_stats_t *out)
{
    out->records_in = atomic_load_explicit(&p->stats[0], memory_order_relaxed);
    out->bytes_in = atomic_load_explicit(&p->stats[1], memory_order_relaxed);
    out->records_out = atomic_load_explicit(&p->stats[2], memory_order_relaxed);
    out->bytes_out = atomic_load_explicit(&p->stats[3], memory_order_relaxed);
}

void sl_partition_count_read(sl_partition_t *p, int64_t records, int64_t bytes)
{
    atomic_fetch_add_explicit(&p->stats[2], records, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->stats[3], bytes, memory_order_relaxed);
}

const char *sl_partition_topic_name(const sl_partition_t *p)
{
    return p->topic_name;
}

int32_t sl_partition_id(const sl_partition_t *p)
{
    return p->id;
}

static int needs_roll(const sl_partition_t *p, const sl_batch_header_t *h)
{
    const sl_segment_t *seg = p->active;
    if (seg->size == 0)
        return 0;
    return seg->size + (int64_t)sl_batch_size(h) > p->config.segment_bytes ||
           h->max_timestamp - seg->first_timestamp > p->config.segment_ms ||
           sl_batch_end_offset(h) - seg->base_offset > (int64_t)UINT32_MAX;
}

/* Closes the active segment and opens a new one at written_end. Called with
 * append_lock held. With a durable policy the old segment is synced first,
 * so that only the active segment ever holds data that is not durable. */
static int roll(sl_partition_t *p)
{
    int sync = p->config.fsync != SL_FSYNC_NEVER;
    sl_segment_owner_t owner = owner_of(p);
    sl_segment_t *seg;
    int rc = sync ? sl_io_sync(p->active->fd) : 0;
    if (rc)
        return sl_error_set(rc, "%s/%d: sync before roll failed: %s", p->topic_name, p->id,
                            sl_strerror(rc));
    if ((rc = sl_segment_close_files(p->active, 0)))
        sl_report(SL_WARN, "log", "%s/%d: %s (the index is rebuilt on the next open)",
                  p->topic_name, p->id, sl_error_detail());
    if ((rc = sl_segment_create(p->dir, p->written_end, now_ms(p), &owner, &seg)))
        return rc;
    if (sync && (rc = sl_io_sync_dir(p->dir))) {
        sl_segment_unlink(seg);
        sl_segment_unref(seg);
        return rc;
    }
    pthread_mutex_lock(&p->lock);
    rc = push_segment(p, seg);
    pthread_mutex_unlock(&p->lock);
    if (rc) {
        sl_segment_unlink(seg);
        sl_segment_unref(seg);
    }
    return rc;
}

static int check_keys(const sl_partition_t *p, const sl_record_t *records, size_t count)
{
    if (p->config.cleanup != SL_CLEANUP_COMPACT)
        return 0;
    for (size_t i = 0; i < count; i++)
        if (records[i].key_len < 0)
            return sl_error_set(SL_EINVALID,
                                "%s/%d: compacted topic needs a key on every record (record %zu "
                                "has none)",
                                p->topic_name, p->id, i);
    return 0;
}

/* Writes the encoded batch in p->encoder and publishes it. append_lock held. */
static int write_batch(sl_partition_t *p, int64_t now)
{
    sl_batch_header_t h;
    const sl_buf_t *out = &p->encoder.out;
    int rc = sl_batch_header_parse(out->data, out->len, &h);
    assert(rc == 0);
    if (needs_roll(p, &h) && (rc = roll(p)))
        return rc;
    pthread_mutex_lock(&p->lock);
    rc = sl_segment_reserve(p->active);
    pthread_mutex_unlock(&p->lock);
    if (rc || (rc = sl_segment_write(p->active, out->data, out->len)))
        return sl_error_set(rc, "%s/%d: append at offset %lld failed: %s", p->topic_name, p->id,
                            (long long)p->written_end, sl_strerror(rc));
    pthread_mutex_lock(&p->lock);
    sl_segment_publish(p->active, &h, now, p->config.index_interval_bytes);
    p->written_end = sl_batch_end_offset(&h);
    atomic_fetch_add_explicit(&p->stats[0], h.record_count, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->stats[1], (long long)out->len, memory_order_relaxed);
    if (p->config.fsync == SL_FSYNC_NEVER) {
        p->durable_end = p->written_end;
        pthread_cond_broadcast(&p->changed);
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int sl_partition_append_nowait(sl_partition_t *p, const sl_record_t *records, size_t count,
                               int64_t *first_offset)
{
    int rc = check_keys(p, records, count);
    if (rc)
        return rc;
    pthread_mutex_lock(&p->append_lock);
    int64_t base = p->written_end, now = now_ms(p);
    if (p->deleted)
        rc = sl_error_set(SL_EDELETED, "topic %s was deleted", p->topic_name);
    if (!rc)
        rc = sl_batch_encode(&p->encoder, records, count, base, now, p->config.compression,
                             p->config.compression_level);
    if (!rc && p->encoder.out.len > (size_t)p->config.max_batch_bytes)
        rc = sl_error_set(SL_ETOOBIG, "%s/%d: batch of %zu bytes is over max.batch.bytes %d",
                          p->topic_name, p->id, p->encoder.out.len, p->config.max_batch_bytes);
    if (!rc)
        rc = write_batch(p, now);
    int64_t end = p->written_end;
    pthread_mutex_unlock(&p->append_lock);
    if (rc)
        return rc;
    if (first_offset)
        *first_offset = base;
    if (p->config.fsync == SL_FSYNC_NEVER) {
        if (p->env.listener && !p->transactional)
            p->env.listener(p->env.listener_arg, p, end);
    } else {
        sl_flusher_schedule(p->env.flusher, p);
    }
    return 0;
}

/* The most a pipeline's append puts in one batch: well below the default
 * max.batch.bytes, so that readers get batches of a sensible size. */
#define SPLIT_BYTES (512 << 10)

size_t sl_record_batch_bytes(const sl_record_t *r)
{
    size_t n = SL_BATCH_HEADER_SIZE + 64 + (size_t)(r->key_len > 0 ? r->key_len : 0) +
               (size_t)(r->value_len > 0 ? r->value_len : 0);
    for (uint32_t i = 0; i < r->header_count; i++)
        n += 16 + (size_t)(r->headers[i].name_len > 0 ? r->headers[i].name_len : 0) +
             (size_t)(r->headers[i].value_len > 0 ? r->headers[i].value_len : 0);
    return n;
}

int sl_partition_append_split(sl_partition_t *p, const sl_record_t *records, size_t count,
                              int64_t *first_offset, int64_t *end_offset)
{
    size_t max = (size_t)p->config.max_batch_bytes, limit = max / 2;
    if (limit > SPLIT_BYTES)
        limit = SPLIT_BYTES;
    for (size_t i = 0; i < count; i++)
        if (sl_record_batch_bytes(&records[i]) > max)
            return sl_error_set(SL_ETOOBIG,
                                "%s/%d: a record of %zu bytes is over the topic's max.batch.bytes "
                                "%zu",
                                p->topic_name, p->id, sl_record_batch_bytes(&records[i]), max);
    for (size_t from = 0; from < count;) {
        size_t to = from + 1, bytes = sl_record_batch_bytes(&records[from]);
        for (; to < count; to++) { /* the header once a batch */
            size_t more = sl_record_batch_bytes(&records[to]) - SL_BATCH_HEADER_SIZE;
            if (bytes + more > limit)
                break;
            bytes += more;
        }
        int64_t first;
        int rc = sl_partition_append_nowait(p, records + from, to - from, &first);
        if (rc)
            return rc;
        if (from == 0 && first_offset)
            *first_offset = first;
        if (end_offset)
            *end_offset = first + (int64_t)(to - from);
        from = to;
    }
    return 0;
}

int sl_partition_append(sl_partition_t *p, const sl_record_t *records, size_t count,
                        int64_t *first_offset)
{
    int64_t first;
    int rc = sl_partition_append_nowait(p, records, count, &first);
    if (rc == 0)
        rc = sl_partition_await_durable(p, first + (int64_t)count, -1);
    if (rc == 0 && first_offset)
        *first_offset = first;
    return rc;
}

/* The file position of the first batch at or after offset in seg, found by
 * scanning from the index; -1 if a batch straddles offset. */
static int batch_boundary(sl_segment_t *seg, int64_t offset, int64_t *position)
{
    sl_segment_cursor_t c = {.pos = sl_segment_position_for_offset(seg, offset, NULL),
                             .chunk = 65536};
    const uint8_t *batch;
    sl_batch_header_t h;
    int rc;
    int64_t at = c.pos;
    while ((rc = sl_segment_read_batch(seg, &c, seg->size, &batch, &h)) == 1) {
        if (sl_batch_end_offset(&h) > offset)
            break;
        at = c.pos;
    }
    sl_segment_cursor_free(&c);
    if (rc < 0)
        return rc;
    if (rc == 1 && h.base_offset < offset)
        return SL_EINVALID;
    *position = rc == 1 ? at : seg->size;
    return 0;
}

/* After a failed fsync the page cache can no longer be trusted for what was
 * not durable: cut it from the active segment and wake its waiters with the
 * error. Offsets are not reused, so a waiter can never mistake someone
 * else's later records for its own. */
static void drop_undurable(sl_partition_t *p, int err)
{
    sl_segment_owner_t owner = owner_of(p);
    pthread_mutex_lock(&p->append_lock);
    pthread_mutex_lock(&p->lock);
    int64_t from =
        p->durable_end > p->active->base_offset ? p->durable_end : p->active->base_offset;
    int64_t to = p->written_end, position;
    if (from < to && batch_boundary(p->active, from, &position) == 0 &&
        sl_segment_truncate(p->active, position, &owner) == 0) {
        sl_lost_range_t *slot = &p->lost[p->lost_count++ % SL_LOST_RANGES];
        *slot = (sl_lost_range_t){from, to, err};
        sl_report(SL_ERROR, "log",
                  "%s/%d: fsync failed (%s); offsets %lld to %lld were not acknowledged and "
                  "are dropped",
                  p->topic_name, p->id, sl_strerror(err), (long long)from, (long long)to - 1);
        p->durable_end = to;
    }
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->append_lock);
}

int sl_partition_sync(sl_partition_t *p)
{
    pthread_mutex_lock(&p->lock);
    int64_t target = p->written_end;
    sl_segment_t *seg = p->active;
    int idle = p->deleted || target <= p->durable_end;
    if (!idle)
        sl_segment_ref(seg);
    pthread_mutex_unlock(&p->lock);
    if (idle)
        return 0;
    int rc = sl_io_sync(seg->fd);
    sl_segment_unref(seg);
    if (rc) {
        drop_undurable(p, rc);
        return rc;
    }
    pthread_mutex_lock(&p->lock);
    if (target > p->durable_end)
        p->durable_end = target;
    pthread_mutex_unlock(&p->lock);
    /* announce before waking the appenders, so that an acknowledged append
     * has always been announced (transactional ones are, at commit) */
    if (p->env.listener && !p->transactional)
        p->env.listener(p->env.listener_arg, p, target);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void deadline_after(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* Waits on p->changed (lock held); returns 0 or ETIMEDOUT. */
static int wait_changed(sl_partition_t *p, int timeout_ms, const struct timespec *deadline)
{
    if (timeout_ms < 0)
        return pthread_cond_wait(&p->changed, &p->lock);
    return pthread_cond_timedwait(&p->changed, &p->lock, deadline);
}

static int lost_error(const sl_partition_t *p, int64_t end_offset)
{
    int n = p->lost_count < SL_LOST_RANGES ? p->lost_count : SL_LOST_RANGES;
    for (int i = 0; i < n; i++)
        if (p->lost[i].from < end_offset && end_offset <= p->lost[i].to)
            return p->lost[i].error;
    return 0;
}

int sl_partition_await_durable(sl_partition_t *p, int64_t end_offset, int timeout_ms)
{
    struct timespec deadline;
    int rc = 0;
    deadline_after(&deadline, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if ((rc = lost_error(p, end_offset)))
            break;
        if (p->durable_end >= end_offset)
            break;
        if (p->deleted) {
            rc = SL_EDELETED;
            break;
        }
        /* timeout 0 is a check, not a wait: a timed wait that has already
         * expired still sleeps for the timer slack (about 50 us) */
        if (timeout_ms == 0 || wait_changed(p, timeout_ms, &deadline) == ETIMEDOUT) {
            rc = SL_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int sl_partition_wait(sl_partition_t *p, int64_t offset, int timeout_ms)
{
    struct timespec deadline;
    int rc;
    deadline_after(&deadline, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (sl_partition_visible_locked(p) > offset) {
            rc = 1;
            break;
        }
        if (p->deleted) {
            rc = SL_EDELETED;
            break;
        }
        if (timeout_ms == 0 || wait_changed(p, timeout_ms, &deadline) == ETIMEDOUT) {
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* Index of the last segment with base <= offset (0 if none). Lock held. */
static int32_t segment_index_for(const sl_partition_t *p, int64_t offset)
{
    int32_t lo = 0, hi = p->segment_count;
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        if (p->segments[mid]->base_offset <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

sl_segment_t *sl_partition_locate(sl_partition_t *p, int64_t offset, sl_segment_view_t *view)
{
    pthread_mutex_lock(&p->lock);
    int32_t i = segment_index_for(p, offset);
    while (i < p->segment_count - 1 && offset >= p->segments[i]->end_offset)
        i++;
    sl_segment_t *seg = p->segments[i];
    view->position = sl_segment_position_for_offset(seg, offset, &view->batch_offset);
    view->visible_end = sl_partition_visible_locked(p);
    view->size = seg->size;
    view->end_offset = seg->end_offset;
    sl_segment_ref(seg);
    pthread_mutex_unlock(&p->lock);
    return seg;
}

int64_t sl_partition_start_offset(sl_partition_t *p)
{
    pthread_mutex_lock(&p->lock);
    int64_t start = p->segments[0]->base_offset;
    pthread_mutex_unlock(&p->lock);
    return start;
}

int64_t sl_partition_end_offset(sl_partition_t *p)
{
    pthread_mutex_lock(&p->lock);
    int64_t end = sl_partition_visible_locked(p);
    pthread_mutex_unlock(&p->lock);
    return end;
}

int64_t sl_partition_size_bytes(sl_partition_t *p)
{
    int64_t total = 0;
    pthread_mutex_lock(&p->lock);
    for (int32_t i = 0; i < p->segment_count; i++)
        total += p->segments[i]->size;
    pthread_mutex_unlock(&p->lock);
    return total;
}

int32_t sl_partition_segment_count(sl_partition_t *p)
{
    pthread_mutex_lock(&p->lock);
    int32_t n = p->segment_count;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* The first segment whose records reach ts, referenced; NULL if none. */
static sl_segment_t *segment_for_time(sl_partition_t *p, int64_t ts, int64_t *position,
                                      int64_t *visible_end, int64_t *visible_size)
{
    sl_segment_t *seg = NULL;
    pthread_mutex_lock(&p->lock);
    *visible_end = sl_partition_visible_locked(p);
    for (int32_t i = 0; i < p->segment_count && !seg; i++)
        if (p->segments[i]->max_timestamp >= ts)
            seg = p->segments[i];
    if (seg) {
        *position = sl_segment_position_for_time(seg, ts);
        *visible_size = seg->size;
        sl_segment_ref(seg);
    }
    pthread_mutex_unlock(&p->lock);
    return seg;
}

/* Skips batches whose newest record is older than ts; the first record at
 * or after ts is then in the batch found, read with a reader. */
int sl_partition_offset_for_time(sl_partition_t *p, int64_t ts, int64_t *offset)
{
    int64_t position = 0, visible_end, visible_size = 0;
    sl_segment_t *seg = segment_for_time(p, ts, &position, &visible_end, &visible_size);
    *offset = visible_end;
    if (!seg)
        return 0;
    sl_segment_cursor_t c = {.pos = position, .chunk = 65536};
    const uint8_t *batch;
    sl_batch_header_t h;
    int rc;
    while ((rc = sl_segment_read_batch(seg, &c, visible_size, &batch, &h)) == 1 &&
           h.base_offset < visible_end && h.max_timestamp < ts)
        ;
    sl_segment_cursor_free(&c);
    sl_segment_unref(seg);
    if (rc <= 0 || h.base_offset >= visible_end)
        return rc == 0 || rc == 1 ? 0 : rc;
    sl_reader_t *r;
    sl_record_t rec;
    if ((rc = sl_reader_open(p, h.base_offset, &r)))
        return rc;
    while ((rc = sl_reader_next(r, &rec)) == 1 && rec.timestamp < ts)
        ;
    if (rc == 1)
        *offset = rec.offset;
    sl_reader_close(r);
    return rc < 0 ? rc : 0;
}

/* Removes the segments from index `from` on (lock held by the caller). */
static void drop_segments_from(sl_partition_t *p, int32_t from)
{
    for (int32_t i = from; i < p->segment_count; i++) {
        sl_segment_unlink(p->segments[i]);
        sl_segment_unref(p->segments[i]);
    }
    p->segment_count = from;
    p->active = p->segments[from - 1];
}

static int truncate_locked(sl_partition_t *p, int64_t offset)
{
    sl_segment_owner_t owner = owner_of(p);
    if (offset < p->segments[0]->base_offset || offset > p->written_end)
        return sl_error_set(SL_EINVALID, "%s/%d: cannot truncate to %lld outside [%lld, %lld]",
                            p->topic_name, p->id, (long long)offset,
                            (long long)p->segments[0]->base_offset, (long long)p->written_end);
    int32_t keep = segment_index_for(p, offset);
    if (keep > 0 && p->segments[keep]->base_offset == offset)
        keep--; /* a segment starting exactly at offset goes entirely */
    sl_segment_t *seg = p->segments[keep];
    int64_t position = seg->size;
    int found = offset < seg->end_offset ? batch_boundary(seg, offset, &position) : 0;
    if (found == SL_EINVALID)
        return sl_error_set(SL_EINVALID, "%s/%d: offset %lld is inside a batch", p->topic_name,
                            p->id, (long long)offset);
    if (found) /* reading the segment failed (out of memory, an I/O error): say so */
        return sl_error_set(found, "%s/%d: truncating to offset %lld: reading its segment: %s",
                            p->topic_name, p->id, (long long)offset, sl_strerror(found));
    drop_segments_from(p, keep + 1);
    int rc = sl_segment_truncate(seg, position, &owner);
    if (rc == 0 && p->config.fsync != SL_FSYNC_NEVER)
        rc = sl_io_sync(seg->fd);
    p->written_end = p->durable_end = offset;
    if (p->committed_end > offset)
        p->committed_end = offset;
    for (int i = 0; i < SL_LOST_RANGES; i++) /* offsets from here on are new again */
        if (p->lost[i].to > offset)
            p->lost[i].to = offset > p->lost[i].from ? offset : p->lost[i].from;
    pthread_cond_broadcast(&p->changed);
    return rc;
}

int sl_partition_truncate(sl_partition_t *p, int64_t offset)
{
    pthread_mutex_lock(&p->maintenance_lock);
    pthread_mutex_lock(&p->append_lock);
    pthread_mutex_lock(&p->lock);
    int rc = p->deleted ? SL_EDELETED : truncate_locked(p, offset);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->append_lock);
    p->compacted = 0; /* the segments it covered may be gone */
    pthread_mutex_unlock(&p->maintenance_lock);
    return rc;
}

int sl_partition_roll(sl_partition_t *p)
{
    pthread_mutex_lock(&p->append_lock);
    int rc = p->deleted ? SL_EDELETED : 0;
    if (rc == 0 && p->active->size > 0)
        rc = roll(p);
    pthread_mutex_unlock(&p->append_lock);
    return rc;
}

void sl_partition_announce(sl_partition_t *p)
{
    if (p->env.listener)
        p->env.listener(p->env.listener_arg, p, sl_partition_end_offset(p));
}

int sl_partition_is_transactional(const sl_partition_t *p)
{
    return p->transactional;
}

int64_t sl_partition_written_end(sl_partition_t *p)
{
    pthread_mutex_lock(&p->lock);
    int64_t end = p->written_end;
    pthread_mutex_unlock(&p->lock);
    return end;
}

/* Checks a new visible end of a transactional partition (lock held). */
static int check_visible_end(const sl_partition_t *p, int64_t end)
{
    if (!p->transactional)
        return sl_error_set(SL_EINVALID, "%s/%d: not a transactional partition", p->topic_name,
                            p->id);
    if (p->deleted)
        return sl_error_set(SL_EDELETED, "topic %s was deleted", p->topic_name);
    if (end > p->durable_end)
        return sl_error_set(SL_EINVALID,
                            "%s/%d: cannot make offset %lld visible: only %lld are durable",
                            p->topic_name, p->id, (long long)end, (long long)p->durable_end);
    return 0;
}

int sl_partition_set_visible_end(sl_partition_t *p, int64_t end)
{
    pthread_mutex_lock(&p->lock);
    int rc = check_visible_end(p, end);
    int moved = rc == 0 && end > p->committed_end;
    if (moved) {
        p->committed_end = end;
        pthread_cond_broadcast(&p->changed);
    }
    pthread_mutex_unlock(&p->lock);
    if (moved && p->env.listener)
        p->env.listener(p->env.listener_arg, p, end);
    return rc;
}

int sl_partition_recover_end(sl_partition_t *p, int64_t end)
{
    int rc = end < sl_partition_written_end(p) ? sl_partition_truncate(p, end) : 0;
    pthread_mutex_lock(&p->lock);
    if (rc == 0)
        rc = p->deleted ? SL_EDELETED : end > p->durable_end ? SL_EINVALID : 0;
    if (rc == 0) {
        p->committed_end = end;
        pthread_cond_broadcast(&p->changed);
    }
    pthread_mutex_unlock(&p->lock);
    if (rc == 0 && p->env.listener)
        p->env.listener(p->env.listener_arg, p, end);
    return rc;
}

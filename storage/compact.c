/*
 * compact.c - log compaction for cleanup=compact topics.
 *
 * Pass 1 reads the whole partition (up to its durable end) and records, per
 * key, the offset of its newest record. Pass 2 rewrites each closed segment
 * into <base>.log.cleaned keeping a record only if it is its key's newest,
 * and dropping newest-but-tombstone records once the segment was last
 * written more than delete.retention.ms ago. Batches keep their base offset
 * and lastOffsetDelta and records keep their offsets, so compaction leaves
 * gaps but never renumbers. A batch that loses nothing is copied byte for
 * byte. The active segment is never touched.
 *
 * A pass reads the whole partition, so it runs only when it may gain
 * something (Kafka's cleaner rule): the segments closed since the last pass
 * hold at least min.cleanable.dirty.ratio of the closed segments' bytes,
 * or some segment's tombstones became droppable since. The first pass
 * after opening always runs.
 *
 * Swapping in a cleaned segment: unlink the old index files, rename the
 * cleaned file over the .log, fsync the directory, then write new index
 * files. A crash at any step leaves either the old or the new .log with no
 * index (rebuilt on open) or with a matching one; .cleaned leftovers are
 * deleted on open.
 */
#include "storage/io.h"
#include "storage/partition.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

typedef struct key_slot {
    uint64_t hash; /* 0 = empty */
    int64_t offset;
    size_t key_pos; /* in key_map.keys */
    int32_t key_len;
} key_slot_t;

typedef struct key_map {
    key_slot_t *slots;
    size_t cap, count;
    sl_buf_t keys;
} key_map_t;

static uint64_t hash_key(const uint8_t *key, int32_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (int32_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 0x100000001b3ull;
    return h | 1;
}

static key_slot_t *find_slot(key_map_t *m, const uint8_t *key, int32_t len, uint64_t h)
{
    size_t i = h & (m->cap - 1);
    for (;; i = (i + 1) & (m->cap - 1)) {
        key_slot_t *s = &m->slots[i];
        if (s->hash == 0 || (s->hash == h && s->key_len == len &&
                             !memcmp(m->keys.data + s->key_pos, key, (size_t)len)))
            return s;
    }
}

static int grow_map(key_map_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    key_map_t bigger = {.slots = sl_calloc(cap, sizeof(key_slot_t)), .cap = cap};
    if (!bigger.slots)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].hash) {
            size_t j = m->slots[i].hash & (cap - 1);
            while (bigger.slots[j].hash)
                j = (j + 1) & (cap - 1);
            bigger.slots[j] = m->slots[i];
        }
    sl_free(m->slots);
    m->slots = bigger.slots;
    m->cap = cap;
    return 0;
}

static int map_put(key_map_t *m, const uint8_t *key, int32_t len, int64_t offset)
{
    if ((m->count + 1) * 2 > m->cap && grow_map(m))
        return -ENOMEM;
    uint64_t h = hash_key(key, len);
    key_slot_t *s = find_slot(m, key, len, h);
    if (s->hash == 0) {
        *s = (key_slot_t){h, offset, m->keys.len, len};
        m->count++;
        return sl_buf_append(&m->keys, key, (size_t)len);
    }
    if (offset > s->offset)
        s->offset = offset;
    return 0;
}

static int64_t map_get(key_map_t *m, const uint8_t *key, int32_t len)
{
    key_slot_t *s = find_slot(m, key, len, hash_key(key, len));
    return s->hash ? s->offset : -1;
}

static void map_free(key_map_t *m)
{
    sl_free(m->slots);
    sl_buf_free(&m->keys);
}

/* Pass 1: the newest offset of every key, up to the durable end. */
static int build_map(sl_partition_t *p, key_map_t *m)
{
    sl_reader_t *r;
    sl_record_t rec;
    int rc = sl_reader_open(p, 0, &r);
    if (rc)
        return rc;
    sl_reader_set_limit(r, sl_partition_end_offset(p));
    while ((rc = sl_reader_next(r, &rec)) == 1)
        if (rec.key_len >= 0 && (rc = map_put(m, rec.key, rec.key_len, rec.offset)))
            break;
    sl_reader_close(r);
    return rc;
}

typedef struct cleaner {
    sl_partition_t *p;
    key_map_t map;
    int64_t now;
    sl_batch_decoder_t decoder;
    sl_batch_encoder_t encoder;
    sl_buf_t kept;          /* sl_record_t of the current batch that survive */
    sl_buf_t header_starts; /* per kept record: index of its first header */
    sl_buf_t headers;       /* sl_header_t copies */
} cleaner_t;

static int keep_record(cleaner_t *c, sl_record_t *rec)
{
    size_t start = c->headers.len / sizeof(sl_header_t);
    if (sl_buf_append(&c->headers, rec->headers, rec->header_count * sizeof(sl_header_t)) ||
        sl_buf_append(&c->header_starts, &start, sizeof start) ||
        sl_buf_append(&c->kept, rec, sizeof *rec))
        return -ENOMEM;
    return 0;
}

/* Collects the survivors of the decoded batch; *total counts all records. */
static int filter_batch(cleaner_t *c, int drop_tombstones, size_t *total)
{
    sl_record_t rec;
    int rc;
    c->kept.len = c->header_starts.len = c->headers.len = 0;
    *total = 0;
    while ((rc = sl_batch_decoder_next(&c->decoder, &rec)) == 1) {
        (*total)++;
        int newest = rec.key_len < 0 || map_get(&c->map, rec.key, rec.key_len) == rec.offset;
        if (newest && !(rec.value_len < 0 && drop_tombstones) && (rc = keep_record(c, &rec)))
            return rc;
    }
    sl_record_t *kept = (sl_record_t *)c->kept.data;
    size_t *starts = (size_t *)c->header_starts.data;
    for (size_t i = 0; i < c->kept.len / sizeof *kept; i++)
        kept[i].headers = (sl_header_t *)c->headers.data + starts[i];
    return rc;
}

/* Writes the survivors of one batch to fd at *pos; sets *changed if any
 * record was dropped. */
static int clean_batch(cleaner_t *c, const uint8_t *batch, const sl_batch_header_t *h,
                       int drop_tombstones, int fd, int64_t *pos, int *changed)
{
    size_t total;
    int rc = sl_batch_decoder_start(&c->decoder, batch, sl_batch_size(h));
    if (rc || (rc = filter_batch(c, drop_tombstones, &total)))
        return rc;
    size_t kept = c->kept.len / sizeof(sl_record_t);
    const uint8_t *out = batch;
    size_t n = sl_batch_size(h);
    if (kept != total) {
        *changed = 1;
        if (kept == 0)
            return 0;
        rc = sl_batch_reencode(&c->encoder, h, (sl_record_t *)c->kept.data, kept,
                               h->attributes & SL_BATCH_CODEC_MASK, c->p->config.compression_level);
        out = c->encoder.out.data;
        n = c->encoder.out.len;
    }
    if (rc == 0 && (rc = sl_io_pwrite(fd, out, n, (off_t)*pos)) == 0)
        *pos += (int64_t)n;
    return rc;
}

/* Pass 2 for one segment: writes <base>.log.cleaned. *changed is 0 if no
 * record was dropped (the cleaned file is then removed again). */
static int clean_segment(cleaner_t *c, sl_segment_t *seg, int *changed, int64_t *kept_bytes)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.log.cleaned", seg->path);
    int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0)
        return sl_error_set(-errno, "cannot create %s: %s", tmp, strerror(errno));
    int drop_tombstones = seg->modified_ms + c->p->config.delete_retention_ms <= c->now;
    sl_segment_cursor_t cursor = {.pos = 0};
    const uint8_t *batch;
    sl_batch_header_t h;
    int rc;
    *changed = 0;
    *kept_bytes = 0;
    while ((rc = sl_segment_read_batch(seg, &cursor, seg->size, &batch, &h)) == 1)
        if ((rc = clean_batch(c, batch, &h, drop_tombstones, fd, kept_bytes, changed)))
            break;
    sl_segment_cursor_free(&cursor);
    if (rc == 0 && *changed && fsync(fd))
        rc = -errno;
    close(fd);
    if (rc || !*changed)
        unlink(tmp);
    return rc;
}

/* Replaces old (or removes it, when nothing survived) in the list. */
static void replace_segment(sl_partition_t *p, sl_segment_t *old, sl_segment_t *fresh)
{
    pthread_mutex_lock(&p->lock);
    for (int32_t i = 0; i < p->segment_count; i++) {
        if (p->segments[i] != old)
            continue;
        if (fresh) {
            p->segments[i] = fresh;
        } else {
            memmove(p->segments + i, p->segments + i + 1,
                    (size_t)(p->segment_count - i - 1) * sizeof *p->segments);
            p->segment_count--;
        }
        break;
    }
    pthread_mutex_unlock(&p->lock);
    sl_segment_unref(old); /* the list's reference */
}

static int swap_in(sl_partition_t *p, sl_segment_t *old, int64_t kept_bytes)
{
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, "%s.index", old->path);
    unlink(from);
    snprintf(from, sizeof from, "%s.timeindex", old->path);
    unlink(from);
    snprintf(from, sizeof from, "%s.log.cleaned", old->path);
    snprintf(to, sizeof to, "%s.log", old->path);
    if (rename(from, to))
        return sl_error_set(-errno, "cannot rename %s: %s", from, strerror(errno));
    int rc = sl_io_sync_dir(p->dir);
    sl_segment_t *fresh = NULL;
    if (kept_bytes == 0) {
        unlink(to);
    } else {
        sl_segment_owner_t owner = {p->topic_name, p->id, p->config.index_interval_bytes};
        if (rc == 0)
            rc = sl_segment_open(p->dir, old->base_offset, 0, 0, &owner, &fresh);
        if (rc)
            return rc;
        fresh->modified_ms = old->modified_ms;
        if (sl_segment_close_files(fresh, 0))
            sl_report(SL_WARN, "log", "%s (rebuilt on the next open)", sl_error_detail());
    }
    replace_segment(p, old, fresh);
    return rc;
}

/* The closed segments, referenced, into *out (caller frees). Of a
 * transactional partition, only those wholly below the committed end: the
 * key map stops there, and a record it has not seen would look obsolete. */
static int32_t closed_segments(sl_partition_t *p, sl_segment_t ***out)
{
    pthread_mutex_lock(&p->lock);
    int32_t n = p->deleted ? 0 : p->segment_count - 1;
    while (n > 0 && p->transactional && p->segments[n - 1]->end_offset > p->committed_end)
        n--;
    *out = sl_malloc((size_t)(n > 0 ? n : 1) * sizeof **out);
    if (!*out)
        n = -ENOMEM;
    for (int32_t i = 0; i < n; i++) {
        (*out)[i] = p->segments[i];
        sl_segment_ref(p->segments[i]);
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* Whether a pass over the n closed segments is worth its reading the whole
 * partition: the segments closed since the last pass hold at least
 * min.cleanable.dirty.ratio of their bytes (and some), or tombstones became
 * droppable since. */
static int worth_a_pass(const sl_partition_t *p, sl_segment_t *const *segments, int32_t n,
                        int64_t now)
{
    int64_t total = 0, dirty = 0;
    if (!p->compacted)
        return n > 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t due = segments[i]->modified_ms + p->config.delete_retention_ms;
        if (due > p->compacted_ms && due <= now)
            return 1;
        total += segments[i]->size;
        if (segments[i]->base_offset >= p->compacted_end)
            dirty += segments[i]->size;
    }
    return dirty > 0 && (double)dirty >= p->config.min_cleanable_dirty_ratio * (double)total;
}

int sl_partition_compact(sl_partition_t *p, int64_t now_ms)
{
    if (p->config.cleanup != SL_CLEANUP_COMPACT)
        return 0;
    pthread_mutex_lock(&p->maintenance_lock);
    cleaner_t c = {.p = p, .now = now_ms};
    sl_segment_t **segments;
    int32_t n = closed_segments(p, &segments);
    int rc = n < 0 ? n : 0, rewritten = 0;
    int run = rc == 0 && worth_a_pass(p, segments, n, now_ms);
    int64_t before = 0, after = 0;
    if (run)
        rc = build_map(p, &c.map);
    for (int32_t i = 0; run && rc == 0 && i < n; i++) {
        int changed;
        int64_t kept_bytes;
        rc = clean_segment(&c, segments[i], &changed, &kept_bytes);
        if (rc == 0 && changed) {
            rewritten++;
            before += segments[i]->size;
            after += kept_bytes;
            rc = swap_in(p, segments[i], kept_bytes);
        }
    }
    if (run && rc == 0) {
        p->compacted = 1;
        p->compacted_end = segments[n - 1]->end_offset;
        p->compacted_ms = now_ms;
    }
    if (rc == 0 && rewritten)
        sl_report(SL_INFO, "log", "%s/%d: compaction rewrote %d segment(s), %lld -> %lld bytes",
                  p->topic_name, p->id, rewritten, (long long)before, (long long)after);
    for (int32_t i = 0; i < n; i++)
        sl_segment_unref(segments[i]);
    if (n >= 0)
        sl_free(segments);
    map_free(&c.map);
    sl_buf_free(&c.kept);
    sl_buf_free(&c.header_starts);
    sl_buf_free(&c.headers);
    sl_batch_decoder_free(&c.decoder);
    sl_batch_encoder_free(&c.encoder);
    pthread_mutex_unlock(&p->maintenance_lock);
    if (rc)
        sl_report(SL_ERROR, "log", "%s/%d: compaction failed: %s", p->topic_name, p->id,
                  sl_error_detail());
    return rc;
}

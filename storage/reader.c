/*
 * reader.c - sequential reading of a partition from an offset.
 *
 * A reader holds a reference to the partition and to the segment it is in,
 * and reads that segment's file through a buffer, one batch at a time. It
 * takes the partition lock once per batch, only to learn how far it may read
 * (the durable end and the segment's written size); I/O and decoding happen
 * outside the lock, so readers never block the appender. When a segment is
 * exhausted and no longer active, the reader looks up the next one by offset,
 * which also carries it over segments deleted or compacted meanwhile.
 */
#include "storage/partition.h"

#include <errno.h>
#include <stdio.h>

struct sl_reader {
    sl_partition_t *partition;
    int64_t position;    /* next offset wanted */
    int64_t limit;       /* read nothing at or after this offset */
    int64_t visible_end; /* the partition's visible end, as last seen */
    sl_segment_t *segment;
    int64_t segment_size; /* bytes of segment readable, as last seen */
    int64_t segment_end;  /* the segment's end offset, as last seen */
    int64_t scan_end;     /* the next batch in the file starts at or after this */
    sl_segment_cursor_t cursor;
    sl_batch_decoder_t decoder;
    int in_batch;
};

int sl_reader_open(sl_partition_t *p, int64_t offset, sl_reader_t **out)
{
    sl_reader_t *r = sl_calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    sl_partition_ref(p);
    r->partition = p;
    r->limit = INT64_MAX;
    r->cursor.chunk = 64 * 1024;
    sl_reader_seek(r, offset);
    *out = r;
    return 0;
}

static void leave_segment(sl_reader_t *r)
{
    if (r->segment)
        sl_segment_unref(r->segment);
    r->segment = NULL;
    r->in_batch = 0;
}

int sl_reader_seek(sl_reader_t *r, int64_t offset)
{
    int64_t start = sl_partition_start_offset(r->partition);
    leave_segment(r);
    r->position = offset < start ? start : offset;
    return 0;
}

int64_t sl_reader_position(const sl_reader_t *r)
{
    return r->position;
}

void sl_reader_set_limit(sl_reader_t *r, int64_t limit)
{
    r->limit = limit;
    if (r->in_batch && sl_batch_end_offset(&r->decoder.header) > limit)
        leave_segment(r); /* re-read that batch later under the new limit */
}

void sl_reader_close(sl_reader_t *r)
{
    if (!r)
        return;
    leave_segment(r);
    sl_segment_cursor_free(&r->cursor);
    sl_batch_decoder_free(&r->decoder);
    sl_partition_unref(r->partition);
    sl_free(r);
}

/* Refreshes what may be read; returns 1 if the current segment is the
 * partition's active one, or SL_EDELETED. */
static int refresh(sl_reader_t *r)
{
    sl_partition_t *p = r->partition;
    pthread_mutex_lock(&p->lock);
    int deleted = p->deleted, active = p->active == r->segment;
    r->visible_end = sl_partition_visible_locked(p);
    if (r->segment) {
        r->segment_size = r->segment->size;
        r->segment_end = r->segment->end_offset;
    }
    pthread_mutex_unlock(&p->lock);
    return deleted ? SL_EDELETED : active;
}

static void enter_segment(sl_reader_t *r)
{
    sl_segment_view_t view;
    r->segment = sl_partition_locate(r->partition, r->position, &view);
    r->cursor.pos = view.position;
    r->cursor.buf.len = 0;
    r->visible_end = view.visible_end;
    r->segment_size = view.size;
    r->segment_end = view.end_offset;
    r->scan_end = view.batch_offset;
}

static int corrupt(sl_reader_t *r, int64_t file_position)
{
    char why[256], path[300];
    snprintf(why, sizeof why, "%s", sl_error_detail());
    snprintf(path, sizeof path, "%s.log", r->segment ? r->segment->path : "?");
    leave_segment(r);
    sl_report(SL_ERROR, "log", "%s/%d: corrupt batch at offset %lld (%s, position %lld): %s",
              r->partition->topic_name, r->partition->id, (long long)r->position, path,
              (long long)file_position, why);
    return sl_error_set(SL_ECORRUPT, "%s/%d: corrupt batch at offset %lld: %s",
                        r->partition->topic_name, r->partition->id, (long long)r->position, why);
}

/* Moves on from an exhausted closed segment: 1 if there is a next one. */
static int next_segment(sl_reader_t *r)
{
    sl_segment_t *old = r->segment;
    r->segment = NULL;
    enter_segment(r);
    sl_segment_unref(old);
    return r->segment != old;
}

/* Starts the decoder on the next batch holding offsets >= position: 1 when
 * found, 0 when nothing more is visible now, or an error. */
static int next_batch(sl_reader_t *r)
{
    int active = refresh(r);
    if (active >= 0 && !r->segment) {
        enter_segment(r);
        active = refresh(r);
    }
    if (active < 0)
        return active;
    int64_t upper = r->visible_end < r->limit ? r->visible_end : r->limit;
    for (;;) {
        const uint8_t *batch;
        sl_batch_header_t h;
        int64_t at = r->cursor.pos;
        if (r->position >= upper)
            return 0;
        int rc = sl_segment_read_batch(r->segment, &r->cursor, r->segment_size, &batch, &h);
        if (rc < 0)
            return rc == -ENOMEM ? rc : corrupt(r, at);
        if (rc == 0) {
            if (active || !next_segment(r))
                return 0;
            if ((active = refresh(r)) < 0)
                return active;
            continue;
        }
        /* baseOffset is not covered by the CRC: check it against its
         * neighbours so a damaged one is reported, never skipped silently */
        if (h.base_offset < r->scan_end || h.base_offset >= r->segment_end) {
            sl_error_set(SL_ECORRUPT, "batch offset %lld is out of order",
                         (long long)h.base_offset);
            r->cursor.pos = at;
            return corrupt(r, at);
        }
        r->scan_end = sl_batch_end_offset(&h);
        if (sl_batch_end_offset(&h) <= r->position)
            continue;
        if (h.base_offset >= upper) {
            r->cursor.pos = at;
            r->scan_end = h.base_offset;
            return 0;
        }
        if ((rc = sl_batch_decoder_start(&r->decoder, batch, sl_batch_size(&h)))) {
            r->cursor.pos = at;
            r->scan_end = h.base_offset;
            return rc == -ENOMEM ? rc : corrupt(r, at);
        }
        r->in_batch = 1;
        return 1;
    }
}

int sl_reader_next(sl_reader_t *r, sl_record_t *rec)
{
    for (;;) {
        if (r->in_batch) {
            int rc = sl_batch_decoder_next(&r->decoder, rec);
            if (rc == 1 && rec->offset < r->position)
                continue;
            if (rc == 1 && rec->offset >= r->limit) {
                leave_segment(r);
                return 0;
            }
            if (rc == 1) {
                r->position = rec->offset + 1;
                return 1;
            }
            r->in_batch = 0;
            if (rc < 0)
                return rc == -ENOMEM ? rc : corrupt(r, r->cursor.pos);
            if (sl_batch_end_offset(&r->decoder.header) > r->position)
                r->position = sl_batch_end_offset(&r->decoder.header);
            continue;
        }
        int rc = next_batch(r);
        if (rc <= 0)
            return rc;
    }
}

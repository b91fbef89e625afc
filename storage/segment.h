/*
 * segment.h - one segment of a partition: a .log file of batches and its two
 * sparse indexes.
 *
 * Index files (written when the segment closes and at clean shutdown; the
 * active segment's live indexes are in memory only and rebuilt by scanning
 * after a crash):
 *
 *   <base>.index      entries of 8 bytes, big-endian:
 *                       0  4  relative offset (batch base offset - base)
 *                       4  4  file position of that batch
 *                     one entry per index.interval.bytes of log data;
 *                     offsets and positions strictly increase.
 *
 *   <base>.timeindex  entries of 12 bytes, big-endian:
 *                       0  8  timestamp T
 *                       8  4  relative offset R
 *                     meaning: every record of this segment before offset
 *                     base + R has a timestamp <= T. Written at index points
 *                     where T grew, so T and R strictly increase; R always
 *                     also has an .index entry.
 *
 * A segment is reference counted: the partition holds one reference, and a
 * reader holds one while it reads, so retention and compaction can swap or
 * delete a segment under a reader, which keeps reading the old file.
 */
#ifndef SL_SEGMENT_H
#define SL_SEGMENT_H

#include "storage/batch.h"

#include <stdatomic.h>

typedef struct sl_index_entry {
    uint32_t relative_offset;
    uint32_t position;
} sl_index_entry_t;

typedef struct sl_time_entry {
    int64_t timestamp;
    uint32_t relative_offset;
} sl_time_entry_t;

typedef struct sl_segment {
    int64_t base_offset;
    int64_t end_offset;      /* one past the last offset written */
    int64_t size;            /* bytes of batches written */
    int64_t max_timestamp;   /* INT64_MIN when empty */
    int64_t first_timestamp; /* of the first batch; for rolling by age */
    int64_t modified_ms;     /* time of the last append; the file's mtime */
    int64_t bytes_since_index;
    int corrupt; /* a bad batch was found mid-file; size = file size */
    int fd;
    atomic_int refs;
    sl_index_entry_t *index;
    size_t index_len, index_cap;
    sl_time_entry_t *times;
    size_t times_len, times_cap;
    char *path; /* ".../<base>" without extension */
} sl_segment_t;

/* Names the partition in messages: "topic/partition". */
typedef struct sl_segment_owner {
    const char *topic;
    int32_t partition;
    int32_t index_interval_bytes;
} sl_segment_owner_t;

/* Sequential batch reading from a segment file through a buffer. */
typedef struct sl_segment_cursor {
    sl_buf_t buf; /* file bytes [buf_pos, buf_pos + buf.len) */
    int64_t buf_pos;
    int64_t pos;  /* file position of the next batch */
    size_t chunk; /* bytes per read; 0 = 1 MiB */
} sl_segment_cursor_t;

/* Reads the batch at c->pos if it starts before limit (a file size): 1 with
 * *batch (valid until the next call) and *h set, and c->pos advanced; 0 when
 * c->pos >= limit; SL_ECORRUPT if the header is bad or the batch runs past
 * limit; -errno. The CRC is the caller's to check. */
int sl_segment_read_batch(sl_segment_t *seg, sl_segment_cursor_t *c, int64_t limit,
                          const uint8_t **batch, sl_batch_header_t *h);

void sl_segment_cursor_free(sl_segment_cursor_t *c);

/* Reserves room for one more index and time entry so that the next
 * sl_segment_publish() cannot fail. Caller holds the partition lock. */
int sl_segment_reserve(sl_segment_t *seg);

/* Creates an empty segment file dir/<base>.log (replacing a stale one). */
int sl_segment_create(const char *dir, int64_t base_offset, int64_t now_ms,
                      const sl_segment_owner_t *owner, sl_segment_t **out);

/*
 * Opens an existing segment. With trust_indexes, index files that pass their
 * checks are used and only the bytes after the last index entry are scanned;
 * otherwise (the active segment after a crash) the whole file is scanned with
 * CRC checks. A bad batch in the scanned part ends the segment there: with
 * truncate_tail it is cut off (a torn write), otherwise it is reported and
 * left for readers to hit as SL_ECORRUPT.
 */
int sl_segment_open(const char *dir, int64_t base_offset, int trust_indexes, int truncate_tail,
                    const sl_segment_owner_t *owner, sl_segment_t **out);

/* Writes a batch at the end of the file (one pwrite). On failure the file
 * is cut back to its old size and -errno returned. Does not publish. */
int sl_segment_write(sl_segment_t *seg, const uint8_t *batch, size_t size);

/* Records a written batch in the in-memory state (size, end, indexes).
 * The caller holds the partition lock. Returns 0, or -ENOMEM unless
 * sl_segment_reserve() was called first. */
int sl_segment_publish(sl_segment_t *seg, const sl_batch_header_t *h, int64_t now_ms,
                       int32_t index_interval_bytes);

/* The file position to start scanning from for offset, and in *batch_offset
 * (if not NULL) the base offset of the batch there. Caller holds the
 * partition lock. */
int64_t sl_segment_position_for_offset(const sl_segment_t *seg, int64_t offset,
                                       int64_t *batch_offset);

/* The file position to start scanning from for the first record with
 * timestamp >= ts. Caller holds the partition lock. */
int64_t sl_segment_position_for_time(const sl_segment_t *seg, int64_t ts);

/* Cuts the segment at position (a batch boundary) and rescans it. */
int sl_segment_truncate(sl_segment_t *seg, int64_t position, const sl_segment_owner_t *owner);

/* Writes .index and .timeindex from memory, sets the file's mtime to
 * modified_ms, and with sync fsyncs the log and index files. */
int sl_segment_close_files(sl_segment_t *seg, int sync);

/* Unlinks the segment's files (the fd stays usable until the last unref). */
void sl_segment_unlink(sl_segment_t *seg);

void sl_segment_ref(sl_segment_t *seg);
void sl_segment_unref(sl_segment_t *seg);

/* Formats dir/<base, 20 digits><suffix> into out. */
int sl_segment_path(char *out, size_t size, const char *dir, int64_t base, const char *suffix);

#endif

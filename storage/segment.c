/*
 * segment.c - a segment file, its in-memory indexes, and recovery by scan.
 *
 * Recovery rule: a batch is accepted while its header parses, it fits in the
 * file, its CRC matches and its base offset does not go backwards. The first
 * batch that fails ends the valid part of the file. For the active segment
 * after a crash that is a torn write and the file is cut there; for a closed
 * segment it is corruption in the middle of the partition, reported and left
 * in place so that a reader meets it as SL_ECORRUPT rather than skipping it.
 */
#include "storage/segment.h"
#include "storage/io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_CHUNK (1 << 20)

int sl_segment_path(char *out, size_t size, const char *dir, int64_t base, const char *suffix)
{
    int n = snprintf(out, size, "%s/%020lld%s", dir, (long long)base, suffix);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int open_file(const char *path, int64_t base, int flags, sl_segment_t **out)
{
    char log_path[PATH_MAX];
    snprintf(log_path, sizeof log_path, "%s.log", path);
    sl_segment_t *seg = sl_calloc(1, sizeof *seg);
    char *copy = sl_strdup(path);
    if (!seg || !copy) {
        sl_free(seg);
        sl_free(copy);
        return -ENOMEM;
    }
    seg->fd = open(log_path, flags | O_RDWR | O_CLOEXEC, 0644);
    if (seg->fd < 0) {
        int rc = -errno;
        sl_free(seg);
        sl_free(copy);
        return sl_error_set(rc, "cannot open %s: %s", log_path, strerror(-rc));
    }
    seg->path = copy;
    seg->base_offset = seg->end_offset = base;
    seg->max_timestamp = seg->first_timestamp = INT64_MIN;
    atomic_init(&seg->refs, 1);
    *out = seg;
    return 0;
}

int sl_segment_create(const char *dir, int64_t base_offset, int64_t now_ms,
                      const sl_segment_owner_t *owner, sl_segment_t **out)
{
    char path[PATH_MAX];
    (void)owner;
    int rc = sl_segment_path(path, sizeof path, dir, base_offset, "");
    if (rc || (rc = open_file(path, base_offset, O_CREAT | O_TRUNC, out)))
        return rc;
    (*out)->modified_ms = now_ms;
    return 0;
}

static int add_index_points(sl_segment_t *seg, uint32_t rel)
{
    if (sl_array_reserve((void **)&seg->index, &seg->index_cap, seg->index_len + 1,
                         sizeof *seg->index))
        return -ENOMEM;
    seg->index[seg->index_len++] = (sl_index_entry_t){rel, (uint32_t)seg->size};
    int64_t last = seg->times_len ? seg->times[seg->times_len - 1].timestamp : INT64_MIN;
    if (seg->max_timestamp <= last)
        return 0;
    if (sl_array_reserve((void **)&seg->times, &seg->times_cap, seg->times_len + 1,
                         sizeof *seg->times))
        return -ENOMEM;
    seg->times[seg->times_len++] = (sl_time_entry_t){seg->max_timestamp, rel};
    return 0;
}

int sl_segment_publish(sl_segment_t *seg, const sl_batch_header_t *h, int64_t now_ms,
                       int32_t index_interval_bytes)
{
    if (seg->index_len == 0 || seg->bytes_since_index >= index_interval_bytes) {
        if (add_index_points(seg, (uint32_t)(h->base_offset - seg->base_offset)))
            return -ENOMEM;
        seg->bytes_since_index = 0;
    }
    if (seg->size == 0)
        seg->first_timestamp = h->base_timestamp;
    seg->bytes_since_index += (int64_t)sl_batch_size(h);
    seg->size += (int64_t)sl_batch_size(h);
    seg->end_offset = sl_batch_end_offset(h);
    if (h->max_timestamp > seg->max_timestamp)
        seg->max_timestamp = h->max_timestamp;
    seg->modified_ms = now_ms;
    return 0;
}

int sl_segment_write(sl_segment_t *seg, const uint8_t *batch, size_t size)
{
    int rc = sl_io_pwrite(seg->fd, batch, size, (off_t)seg->size);
    if (rc && ftruncate(seg->fd, (off_t)seg->size))
        sl_report(SL_ERROR, "log", "%s.log: cannot cut back a failed write: %s", seg->path,
                  strerror(errno));
    return rc;
}

static const uint8_t *cursor_get(sl_segment_cursor_t *c, int fd, int64_t pos, size_t need,
                                 int64_t limit, int *rc)
{
    *rc = 0;
    if (pos >= c->buf_pos && pos + (int64_t)need <= c->buf_pos + (int64_t)c->buf.len)
        return c->buf.data + (pos - c->buf_pos);
    size_t chunk = c->chunk ? c->chunk : SCAN_CHUNK;
    size_t want = need > chunk ? need : chunk;
    if ((int64_t)want > limit - pos)
        want = (size_t)(limit - pos);
    c->buf.len = 0;
    if ((*rc = sl_buf_reserve(&c->buf, want)))
        return NULL;
    ssize_t n = sl_io_pread(fd, c->buf.data, want, (off_t)pos);
    c->buf_pos = pos;
    c->buf.len = n > 0 ? (size_t)n : 0;
    if (n < (ssize_t)need) {
        *rc = n < 0 ? (int)n : sl_error_set(SL_ECORRUPT, "file ends inside a batch");
        return NULL;
    }
    return c->buf.data;
}

int sl_segment_read_batch(sl_segment_t *seg, sl_segment_cursor_t *c, int64_t limit,
                          const uint8_t **batch, sl_batch_header_t *h)
{
    int rc;
    if (c->pos >= limit)
        return 0;
    if (limit - c->pos < SL_BATCH_HEADER_SIZE)
        return sl_error_set(SL_ECORRUPT, "a batch header is cut short");
    const uint8_t *p = cursor_get(c, seg->fd, c->pos, SL_BATCH_HEADER_SIZE, limit, &rc);
    if (!p)
        return rc;
    if ((rc = sl_batch_header_parse(p, SL_BATCH_HEADER_SIZE, h)))
        return rc;
    if ((int64_t)sl_batch_size(h) > limit - c->pos)
        return sl_error_set(SL_ECORRUPT, "a batch runs past the end of the data");
    if (!(p = cursor_get(c, seg->fd, c->pos, sl_batch_size(h), limit, &rc)))
        return rc;
    *batch = p;
    c->pos += (int64_t)sl_batch_size(h);
    return 1;
}

void sl_segment_cursor_free(sl_segment_cursor_t *c)
{
    sl_buf_free(&c->buf);
}

/* Checks the next batch for recovery: 1 good (header in *h), 0 at the end
 * of the file, or a reason it is bad in *why (rc < 0 for an I/O error). */
static int check_batch(sl_segment_t *seg, sl_segment_cursor_t *c, int64_t file_size,
                       sl_batch_header_t *h, const char **why)
{
    const uint8_t *p = NULL;
    int rc = sl_segment_read_batch(seg, c, file_size, &p, h);
    if (rc == SL_ECORRUPT) {
        *why = sl_error_detail();
        return 2;
    }
    if (rc <= 0)
        return rc;
    if (h->base_offset < seg->end_offset)
        *why = "a batch's offset goes backwards";
    else if (!sl_batch_crc_ok(p, h))
        *why = "a batch fails its CRC";
    return *why ? 2 : 1;
}

static void handle_bad_tail(sl_segment_t *seg, int64_t file_size, const char *why,
                            int truncate_tail, const sl_segment_owner_t *owner)
{
    if (truncate_tail) {
        sl_report(SL_WARN, "log",
                  "%s/%d: torn tail at offset %lld (file %s.log, position %lld): %s; "
                  "truncating %lld bytes",
                  owner->topic, owner->partition, (long long)seg->end_offset, seg->path,
                  (long long)seg->size, why, (long long)(file_size - seg->size));
        if (ftruncate(seg->fd, (off_t)seg->size))
            sl_report(SL_ERROR, "log", "%s.log: truncate failed: %s", seg->path, strerror(errno));
        return;
    }
    sl_report(SL_ERROR, "log",
              "%s/%d: corrupt batch after offset %lld (file %s.log, position %lld): %s; "
              "reads there will fail",
              owner->topic, owner->partition, (long long)seg->end_offset, seg->path,
              (long long)seg->size, why);
    seg->size = file_size;
    seg->corrupt = 1;
}

/* Publishes every good batch from seg->size to the end of the file. */
static int scan(sl_segment_t *seg, int truncate_tail, const sl_segment_owner_t *owner)
{
    struct stat st;
    if (fstat(seg->fd, &st))
        return -errno;
    sl_segment_cursor_t c = {.pos = seg->size};
    const char *why = NULL;
    sl_batch_header_t h;
    int rc;
    while ((rc = check_batch(seg, &c, st.st_size, &h, &why)) == 1)
        if ((rc = sl_segment_publish(seg, &h, seg->modified_ms, owner->index_interval_bytes)))
            break;
    sl_segment_cursor_free(&c);
    if (rc == 2)
        handle_bad_tail(seg, st.st_size, why, truncate_tail, owner);
    return rc < 0 ? rc : 0;
}

static void reset_memory(sl_segment_t *seg)
{
    seg->index_len = seg->times_len = 0;
    seg->size = seg->bytes_since_index = 0;
    seg->end_offset = seg->base_offset;
    seg->max_timestamp = seg->first_timestamp = INT64_MIN;
}

/* Reads an index file of entry-sized records; 0, -ENOENT, or -1 if its size
 * is not a multiple of the entry size. */
static int read_index_file(const sl_segment_t *seg, const char *suffix, size_t entry, char **data,
                           size_t *count)
{
    char path[PATH_MAX];
    size_t n;
    snprintf(path, sizeof path, "%s%s", seg->path, suffix);
    int rc = sl_io_read_file(path, data, &n);
    if (rc)
        return rc;
    if (n % entry) {
        sl_free(*data);
        return -1;
    }
    *count = n / entry;
    return 0;
}

static int load_offset_index(sl_segment_t *seg, int64_t file_size)
{
    char *data;
    size_t count;
    int rc = read_index_file(seg, ".index", 8, &data, &count);
    if (rc)
        return rc;
    seg->index = sl_malloc((count ? count : 1) * sizeof *seg->index);
    if (!seg->index) {
        sl_free(data);
        return -ENOMEM;
    }
    seg->index_cap = count ? count : 1;
    for (size_t i = 0; i < count; i++) {
        sl_index_entry_t e = {sl_get_be32((uint8_t *)data + 8 * i),
                              sl_get_be32((uint8_t *)data + 8 * i + 4)};
        int ordered = i == 0 ? e.position == 0
                             : e.relative_offset > seg->index[i - 1].relative_offset &&
                                   e.position > seg->index[i - 1].position;
        if (!ordered || e.position >= file_size)
            rc = -1;
        seg->index[i] = e;
    }
    seg->index_len = count;
    sl_free(data);
    return rc || (count == 0 && file_size > 0) ? -1 : 0;
}

static int has_index_entry(const sl_segment_t *seg, uint32_t rel)
{
    size_t lo = 0, hi = seg->index_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg->index[mid].relative_offset < rel)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < seg->index_len && seg->index[lo].relative_offset == rel;
}

static int load_time_index(sl_segment_t *seg)
{
    char *data;
    size_t count;
    int rc = read_index_file(seg, ".timeindex", 12, &data, &count);
    if (rc)
        return rc;
    seg->times = sl_malloc((count ? count : 1) * sizeof *seg->times);
    if (!seg->times) {
        sl_free(data);
        return -ENOMEM;
    }
    seg->times_cap = count ? count : 1;
    for (size_t i = 0; i < count; i++) {
        sl_time_entry_t e = {(int64_t)sl_get_be64((uint8_t *)data + 12 * i),
                             sl_get_be32((uint8_t *)data + 12 * i + 8)};
        if ((i > 0 && (e.timestamp <= seg->times[i - 1].timestamp ||
                       e.relative_offset <= seg->times[i - 1].relative_offset)) ||
            !has_index_entry(seg, e.relative_offset))
            rc = -1;
        seg->times[i] = e;
    }
    seg->times_len = count;
    sl_free(data);
    return rc;
}

static int read_header_at(const sl_segment_t *seg, int64_t pos, sl_batch_header_t *out)
{
    uint8_t h[SL_BATCH_HEADER_SIZE];
    if (sl_io_pread(seg->fd, h, sizeof h, (off_t)pos) != (ssize_t)sizeof h)
        return -1;
    return sl_batch_header_parse(h, sizeof h, out) ? -1 : 0;
}

/* Checks that the first and last index entries point at batches with the
 * right offsets and restores the in-memory state as of the last one. */
static int resume_from_last_entry(sl_segment_t *seg)
{
    sl_batch_header_t first, last;
    sl_index_entry_t e = seg->index[seg->index_len - 1];
    if (read_header_at(seg, 0, &first) ||
        first.base_offset != seg->base_offset + seg->index[0].relative_offset ||
        read_header_at(seg, e.position, &last) ||
        last.base_offset != seg->base_offset + e.relative_offset)
        return -1;
    seg->first_timestamp = first.base_timestamp;
    seg->size = e.position;
    seg->end_offset = last.base_offset;
    seg->max_timestamp = seg->times_len ? seg->times[seg->times_len - 1].timestamp : INT64_MIN;
    return 0;
}

/* Loads and checks both index files: 0 when they can be trusted, 1 when the
 * segment must be rescanned, or -ENOMEM. */
static int load_indexes(sl_segment_t *seg, int64_t file_size, const sl_segment_owner_t *owner)
{
    int rc = load_offset_index(seg, file_size);
    if (rc == 0)
        rc = load_time_index(seg);
    if (rc == 0 && seg->index_len)
        rc = resume_from_last_entry(seg);
    if (rc == -ENOMEM)
        return rc;
    if (rc == 0)
        return 0;
    if (rc != -ENOENT)
        sl_report(SL_WARN, "log", "%s/%d: index of %s.log is inconsistent; rebuilding it",
                  owner->topic, owner->partition, seg->path);
    reset_memory(seg);
    return 1;
}

int sl_segment_open(const char *dir, int64_t base_offset, int trust_indexes, int truncate_tail,
                    const sl_segment_owner_t *owner, sl_segment_t **out)
{
    char path[PATH_MAX];
    sl_segment_t *seg;
    struct stat st;
    int rc = sl_segment_path(path, sizeof path, dir, base_offset, "");
    if (rc || (rc = open_file(path, base_offset, 0, &seg)))
        return rc;
    if (fstat(seg->fd, &st)) {
        rc = -errno;
        goto fail;
    }
    seg->modified_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (trust_indexes && (rc = load_indexes(seg, st.st_size, owner)) < 0)
        goto fail;
    if ((rc = scan(seg, truncate_tail, owner)))
        goto fail;
    *out = seg;
    return 0;
fail:
    sl_segment_unref(seg);
    return rc;
}

int64_t sl_segment_position_for_offset(const sl_segment_t *seg, int64_t offset,
                                       int64_t *batch_offset)
{
    int64_t at =
        seg->index_len ? seg->base_offset + seg->index[0].relative_offset : seg->base_offset;
    if (batch_offset)
        *batch_offset = at;
    if (offset <= at || seg->index_len == 0)
        return 0;
    uint64_t rel = (uint64_t)(offset - seg->base_offset);
    size_t lo = 0, hi = seg->index_len; /* find the last entry with rel <= target */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg->index[mid].relative_offset <= rel)
            lo = mid;
        else
            hi = mid;
    }
    if (batch_offset)
        *batch_offset = seg->base_offset + seg->index[lo].relative_offset;
    return seg->index[lo].position;
}

int64_t sl_segment_position_for_time(const sl_segment_t *seg, int64_t ts)
{
    size_t lo = 0, hi = seg->times_len; /* count the entries with timestamp < ts */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg->times[mid].timestamp < ts)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    return sl_segment_position_for_offset(
        seg, seg->base_offset + seg->times[lo - 1].relative_offset, NULL);
}

int sl_segment_truncate(sl_segment_t *seg, int64_t position, const sl_segment_owner_t *owner)
{
    if (ftruncate(seg->fd, (off_t)position))
        return sl_error_set(-errno, "cannot truncate %s.log: %s", seg->path, strerror(errno));
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s.index", seg->path);
    unlink(path);
    snprintf(path, sizeof path, "%s.timeindex", seg->path);
    unlink(path);
    reset_memory(seg);
    return scan(seg, 1, owner);
}

static int write_index_files(const sl_segment_t *seg)
{
    char path[PATH_MAX];
    size_t n = seg->index_len * 8 + seg->times_len * 12;
    uint8_t *data = sl_malloc(n);
    if (!data)
        return -ENOMEM;
    for (size_t i = 0; i < seg->index_len; i++) {
        sl_put_be32(data + 8 * i, seg->index[i].relative_offset);
        sl_put_be32(data + 8 * i + 4, seg->index[i].position);
    }
    uint8_t *t = data + seg->index_len * 8;
    for (size_t i = 0; i < seg->times_len; i++) {
        sl_put_be64(t + 12 * i, (uint64_t)seg->times[i].timestamp);
        sl_put_be32(t + 12 * i + 8, seg->times[i].relative_offset);
    }
    snprintf(path, sizeof path, "%s.index", seg->path);
    int rc = sl_io_write_file(path, data, seg->index_len * 8);
    snprintf(path, sizeof path, "%s.timeindex", seg->path);
    if (!rc)
        rc = sl_io_write_file(path, t, seg->times_len * 12);
    sl_free(data);
    return rc;
}

int sl_segment_close_files(sl_segment_t *seg, int sync)
{
    int rc = sync ? sl_io_sync(seg->fd) : 0;
    if (!rc)
        rc = write_index_files(seg);
    struct timespec times[2] = {{seg->modified_ms / 1000, (seg->modified_ms % 1000) * 1000000},
                                {seg->modified_ms / 1000, (seg->modified_ms % 1000) * 1000000}};
    if (!rc && futimens(seg->fd, times))
        rc = -errno;
    if (rc)
        sl_error_set(rc, "cannot close segment %s: %s", seg->path, sl_strerror(rc));
    return rc;
}

void sl_segment_unlink(sl_segment_t *seg)
{
    static const char *const suffixes[] = {".log", ".index", ".timeindex"};
    char path[PATH_MAX];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", seg->path, suffixes[i]);
        unlink(path);
    }
}

void sl_segment_ref(sl_segment_t *seg)
{
    atomic_fetch_add_explicit(&seg->refs, 1, memory_order_relaxed);
}

void sl_segment_unref(sl_segment_t *seg)
{
    if (atomic_fetch_sub_explicit(&seg->refs, 1, memory_order_acq_rel) != 1)
        return;
    close(seg->fd);
    sl_free(seg->index);
    sl_free(seg->times);
    sl_free(seg->path);
    sl_free(seg);
}

int sl_segment_reserve(sl_segment_t *seg)
{
    if (sl_array_reserve((void **)&seg->index, &seg->index_cap, seg->index_len + 1,
                         sizeof *seg->index) ||
        sl_array_reserve((void **)&seg->times, &seg->times_cap, seg->times_len + 1,
                         sizeof *seg->times))
        return -ENOMEM;
    return 0;
}

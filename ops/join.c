/*
 * join.c - the TABLE and JOIN operators: per-task state and records.
 *
 * One sl_join_t per TABLE op and per JOIN op with a store, in a task:
 *
 *   TABLE          a kv cache over the table's store: each record puts its
 *                  value under its key, a tombstone deletes the key
 *   STREAM_TABLE   no state: a stream record reads the table op's cache
 *   TABLE_TABLE    a kv cache over the result store: fn(lv, rv) per key
 *   STREAM_STREAM  a window cache over the buffers of both sides: store
 *                  key = side byte ('L' or 'R') || key, window start = the
 *                  record's event time; the value is [be32 chunks] and the
 *                  records of that (side, key, time), each [flags u8][len
 *                  be32][bytes] (flags: MATCHED, NULL_VALUE), so duplicates
 *                  are kept; past ENTRY_BYTES_MAX, more go to chunks n = 1..
 *                  chunks at key 'l' or 'r' || key || be32(n), same time, so
 *                  adding a record copies at most one chunk
 *
 * A buffered record keeps only the fields of its value the join function
 * reads (op->join_reads), when the function says which (lua/project.c);
 * loading one that keeps fewer than this version reads is an error.
 *
 * Stream-stream, per record of side s (key k, time t): late if t < stream
 * time - grace (counted, dropped); else stream time = max(it, t), every
 * buffered record of the other side with key k and time in [t - within,
 * t + within] is joined (fn(l, r)), marked MATCHED if that side owes its
 * unmatched records (left: the left side; outer: both), and the record is
 * appended to its own side's buffer. A side that owes unmatched records
 * keeps its buffered times in a closer (window.h) with close time t +
 * within + grace + 1: at each flush, before the commit, those closed at
 * stream time are read, their unmatched records joined with nil, and
 * deleted; then every buffer entry older than stream time - within -
 * grace is expired (none can join a record still accepted). A restarted
 * task rebuilds the closer from the store.
 *
 * Lookups skip LMDB where the cache holds all there is (cache_span.c, as
 * the aggregator's do): a buffer entry starts at its record's time.
 */
#include "ops/ops_internal.h"
#include "ops/window.h"
#include "storage/buf.h"

#include <errno.h>
#include <string.h>

#define EXPIRE_BATCH    10000 /* buffer entries expired per flush, at most */
#define SIDE_LEFT       'L'
#define SIDE_RIGHT      'R'
#define MATCHED         0x01
#define NULL_VALUE      0x02
#define ITEM_HEADER     5
#define CHUNK_LEFT      'l' /* chunks: more records of a (side, key, time) */
#define CHUNK_RIGHT     'r'
#define CHUNK_SUFFIX    4     /* a chunk's key: side, key, be32 chunk number */
#define ENTRY_HEADER    4     /* a base entry's be32 count of chunks */
#define FOUND_HEADER    16    /* j->found: be64 time, be32 chunk, be32 length */
#define ENTRY_BYTES_MAX 65536 /* items in one entry; more go to a new chunk */

struct sl_join {
    const sl_op_t *op;  /* of the DAG whose exec made it */
    const sl_op_t *run; /* the same op of the running exec's DAG, whose VM
                         * holds the functions (a replaced pipeline's
                         * tasks drain on another worker's VM) */
    sl_cache_t *cache;
    int json;                   /* TABLE: its values are JSON */
    int side_json[2];           /* STREAM_STREAM: each side's values are JSON */
    sl_watermark_t wm;          /* STREAM_STREAM: its stream time, and the grace */
    sl_window_closer_t *closer; /* STREAM_STREAM with unmatched owed */
    uint64_t late;
    int full;
    sl_cache_span_t span; /* STREAM_STREAM: what the cache holds all of */
    int32_t partition;
    int partitions;
    sl_buf_t found; /* matches collected from the other side */
    sl_buf_t value; /* an entry being rewritten */
    uint8_t key[SL_STORE_KEY_MAX];
};

/* 1 if side s (0 left, 1 right) of join op emits its unmatched records. */
static int owes_unmatched(const sl_op_t *op, int side)
{
    return op->join_type == SL_JOIN_OUTER || (op->join_type == SL_JOIN_LEFT && side == 0);
}

const sl_op_t *sl_join_op(const sl_join_t *j)
{
    return j->op;
}

sl_cache_t *sl_join_cache(sl_join_t *j)
{
    return j->cache;
}

void sl_join_bound(sl_join_t *j, int64_t bound, int64_t floor)
{
    sl_watermark_bound(&j->wm, bound, floor);
}

int64_t sl_join_stream_time(const sl_join_t *j)
{
    return j->wm.stream_time;
}

uint64_t sl_join_late(sl_join_t *j)
{
    return __atomic_load_n(&j->late, __ATOMIC_RELAXED); /* from /metrics */
}

int sl_join_full(const sl_join_t *j)
{
    return j->full;
}

void sl_join_committed(sl_join_t *j)
{
    sl_cache_committed(j->cache);
    sl_cache_span_committed(&j->span);
    j->full = 0;
}

/* A buffer entry (store key k, time t), from the cache alone when that
 * holds all there is. */
static int window_get(sl_join_t *j, size_t key_len, int64_t t, const void **value, size_t *len)
{
    if (sl_cache_span_holds(&j->span, j->cache, t))
        return sl_cache_window_get_cached(j->cache, j->key, key_len, t, value, len);
    return sl_cache_window_get(j->cache, j->key, key_len, t, value, len);
}

void sl_join_set_json(sl_join_t *j, int json, int left_json, int right_json)
{
    j->json = json;
    j->side_json[0] = left_json;
    j->side_json[1] = right_json;
}

/* When a buffered record of time t has no partner left to wait for: the
 * closer's close time (closed once stream time reaches it). */
static int64_t close_time(const sl_op_t *op, int64_t t)
{
    return t + op->join_within + op->window_grace + 1;
}

/* ---- setup ------------------------------------------------------------------- */

static int owns(void *arg, const void *store_key, size_t len);

typedef struct rebuild {
    sl_join_t *j;
    int rc;
} rebuild_t;

/* Puts a buffered (side, key, time) of this task that owes unmatched
 * records back into the closer. */
static int rebuild_one(void *arg, const void *store_key, size_t len, const void *value,
                       size_t value_len)
{
    rebuild_t *r = arg;
    sl_join_t *j = r->j;
    size_t key_len;
    int64_t t;
    (void)value, (void)value_len;
    if (sl_store_window_split(store_key, len, &key_len, &t) || key_len < 1)
        return 0;
    const uint8_t *k = store_key;
    int side = k[0] == SIDE_RIGHT;
    if ((k[0] != SIDE_LEFT && k[0] != SIDE_RIGHT) || !owes_unmatched(j->op, side) || /* a chunk */
        !owns(j, store_key, len))
        return 0;
    r->rc = sl_window_closer_add(j->closer, store_key, key_len, t, close_time(j->op, t));
    return r->rc ? 1 : 0;
}

/* Whether a stored buffer entry is of this task's partition (expiry). */
static int owns(void *arg, const void *store_key, size_t len)
{
    const sl_join_t *j = arg;
    size_t key_len;
    int64_t t;
    const uint8_t *k = store_key;
    if (j->partitions <= 0 || sl_store_window_split(store_key, len, &key_len, &t) || key_len < 1)
        return 1;
    if (k[0] == CHUNK_LEFT || k[0] == CHUNK_RIGHT) /* side, key, chunk number */
        key_len = key_len > CHUNK_SUFFIX ? key_len - CHUNK_SUFFIX : 1;
    return sl_partition_for_key(k + 1, key_len - 1, j->partitions) == j->partition;
}

static int rebuild_closer(sl_join_t *j)
{
    rebuild_t r = {j, 0};
    int rc = sl_store_foreach_committed(sl_cache_store(j->cache), rebuild_one, &r);
    return r.rc ? r.rc : rc < 0 ? rc : 0;
}

int sl_join_new(const sl_op_t *op, sl_store_t *store, int64_t stream_time, int32_t partition,
                int partitions, sl_join_t **out)
{
    sl_join_t *j = sl_calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->op = j->run = op;
    j->json = j->side_json[0] = j->side_json[1] = 1;
    j->partition = partition;
    j->partitions = partitions;
    sl_watermark_init(&j->wm, op->window_grace);
    sl_watermark_restore(&j->wm, stream_time);
    int rc = sl_cache_span_init(&j->span, store);
    if (rc == 0)
        rc = sl_cache_new(store, 0, &j->cache);
    if (rc == 0)
        sl_cache_set_owner(j->cache, owns, j);
    if (rc == 0 && op->kind == SL_OP_JOIN && op->join_kind == SL_JOIN_STREAM_STREAM &&
        op->join_type != SL_JOIN_INNER) {
        rc = sl_window_closer_new(&j->closer);
        if (rc == 0)
            rc = rebuild_closer(j);
    }
    if (rc) {
        sl_join_free(j);
        return rc;
    }
    *out = j;
    return 0;
}

void sl_join_free(sl_join_t *j)
{
    if (!j)
        return;
    sl_cache_free(j->cache);
    sl_window_closer_free(j->closer);
    sl_buf_free(&j->found);
    sl_buf_free(&j->value);
    sl_free(j);
}

/* ---- tables ------------------------------------------------------------------- */

/* Notes a cache write's "full" answer; passes errors on. */
static int wrote(sl_join_t *j, int rc)
{
    if (rc == 1)
        j->full = 1;
    return rc < 0 || rc > 1 ? rc : 0;
}

/* A kv store's new value of key: rec's value, or a delete for a tombstone. */
static int table_write(sl_join_t *j, const uint8_t *key, int32_t key_len, const sl_record_t *rec)
{
    int rc = rec->value_len < 0
                 ? sl_cache_delete(j->cache, key, (size_t)key_len)
                 : sl_cache_put(j->cache, key, (size_t)key_len, rec->value, (size_t)rec->value_len);
    if (rc < 0 || rc > 1)
        return sl_error_set(rc, "%s (%s): %s", sl_op_kind_name(j->op->kind), j->op->where,
                            sl_error_detail());
    return wrote(j, rc);
}

int sl_join_table_record(sl_join_t *j, sl_vm_t *vm, int slot)
{
    sl_record_t rec;
    int rc = sl_vm_record_get(vm, slot, &rec);
    if (rc)
        return rc;
    if (rec.key_len <= 0)
        return sl_error_set(SL_EINVALID,
                            "table (%s): a record without a key cannot be placed in a table",
                            j->op->where);
    return table_write(j, rec.key, rec.key_len, &rec);
}

/* Loads table j's value of key into a new slot: 1 and *slot, 0 if it has
 * none, or an error. */
static int table_lookup(sl_join_t *j, sl_vm_t *vm, const uint8_t *key, int32_t key_len, int64_t ts,
                        int *slot)
{
    const void *value;
    size_t value_len;
    int found = sl_cache_get(j->cache, key, (size_t)key_len, &value, &value_len);
    if (found <= 0)
        return found;
    sl_record_t rec = {.key = key,
                       .key_len = key_len,
                       .value = value,
                       .value_len = (int32_t)value_len,
                       .timestamp = ts,
                       .offset = -1};
    sl_vm_origin_t origin = {j->op->kind == SL_OP_TABLE ? j->op->topic : j->op->store, j->partition,
                             j->json, 0};
    int rc = sl_vm_record_load(vm, &rec, &origin, slot);
    return rc ? rc : 1;
}

int sl_join_stream_table(sl_join_t *table, const sl_op_t *op, sl_vm_t *vm, int slot, int *out)
{
    sl_record_t meta;
    int found = 0, value = -1;
    *out = -1;
    int rc = sl_vm_record_meta(vm, slot, &meta);
    if (rc == 0 && meta.key_len > 0)
        found = table_lookup(table, vm, meta.key, meta.key_len, meta.timestamp, &value);
    if (found < 0)
        return found;
    if (rc || (!found && op->join_type == SL_JOIN_INNER))
        return rc;
    return sl_vm_call_join(vm, op, slot, slot, found ? value : -1, out);
}

int sl_join_table_table(sl_join_t *j, const sl_op_t *op, sl_join_t *left, sl_join_t *right,
                        sl_vm_t *vm, int slot, int *out)
{
    sl_record_t meta, rec;
    int l = -1, r = -1, lf, rf = 0;
    const void *old;
    size_t old_len;
    *out = -1;
    j->run = op;
    int rc = sl_vm_record_meta(vm, slot, &meta);
    if (rc)
        return rc;
    if (meta.key_len <= 0)
        return 0;
    lf = table_lookup(left, vm, meta.key, meta.key_len, meta.timestamp, &l);
    if (lf >= 0)
        rf = table_lookup(right, vm, meta.key, meta.key_len, meta.timestamp, &r);
    if (lf < 0 || rf < 0)
        return lf < 0 ? lf : rf;
    if (lf && (rf || j->op->join_type == SL_JOIN_LEFT)) {
        rc = sl_vm_call_join(vm, j->run, slot, l, r, out);
    } else { /* the key left the join: delete it, if it was there */
        int had = sl_cache_get(j->cache, meta.key, (size_t)meta.key_len, &old, &old_len);
        if (had <= 0)
            return had;
        sl_record_t tomb = meta;
        tomb.value = NULL;
        tomb.value_len = -1;
        sl_vm_origin_t origin = {j->op->store, j->partition, 1, 0};
        rc = sl_vm_record_load(vm, &tomb, &origin, out);
    }
    if (rc == 0)
        rc = sl_vm_record_get(vm, *out, &rec);
    if (rc == 0 && rec.value_len >= 0) { /* joins over this table read it back as JSON */
        int check;
        sl_vm_origin_t origin = {j->op->store, j->partition, 1, 0};
        if ((rc = sl_vm_record_load(vm, &rec, &origin, &check)) == SL_EINVALID)
            return sl_error_set(SL_EINVALID,
                                "join (%s): the function returned a value that is not JSON (a "
                                "string?); a table-table join keeps JSON values: return a table",
                                j->op->where);
    }
    return rc ? rc : table_write(j, meta.key, meta.key_len, &rec);
}

/* ---- stream-stream --------------------------------------------------------- */

/* The buffer key of (side, key) in j->key, or of its chunk `chunk` (> 0);
 * its length, or an error. */
static int buffer_key(sl_join_t *j, int side, const uint8_t *key, int32_t key_len, uint32_t chunk,
                      size_t *len)
{
    if ((size_t)key_len + 1 + CHUNK_SUFFIX > SL_WINDOW_KEY_MAX)
        return sl_error_set(SL_EINVALID, "join (%s): a key of %d bytes (at most %d)", j->op->where,
                            (int)key_len, SL_WINDOW_KEY_MAX - 1 - CHUNK_SUFFIX);
    j->key[0] = chunk ? (side ? CHUNK_RIGHT : CHUNK_LEFT) : (side ? SIDE_RIGHT : SIDE_LEFT);
    memcpy(j->key + 1, key, (size_t)key_len);
    *len = (size_t)key_len + 1;
    if (chunk) {
        sl_put_be32(j->key + *len, chunk);
        *len += CHUNK_SUFFIX;
    }
    return 0;
}

/* Appends an entry to j->found: [be64 time][be32 chunk][be32 length][value]. */
static int found_add(sl_join_t *j, int64_t t, uint32_t chunk, const void *value, size_t len)
{
    uint8_t head[FOUND_HEADER];
    sl_put_be64(head, (uint64_t)t);
    sl_put_be32(head + 8, chunk);
    sl_put_be32(head + 12, (uint32_t)len);
    int rc = sl_buf_append(&j->found, head, sizeof head);
    return rc ? rc : sl_buf_append(&j->found, value, len);
}

/* Copies each base entry of the other side in range into j->found. */
static int collect(void *arg, int64_t start, const void *value, size_t value_len)
{
    sl_join_t *j = arg;
    if (value_len < ENTRY_HEADER)
        return sl_error_set(SL_ECORRUPT, "join (%s): a damaged buffer entry", j->op->where);
    return found_add(j, start, 0, value, value_len);
}

/* Adds the chunks of the base entries collected in j->found[0, end). */
static int collect_chunks(sl_join_t *j, int side, const sl_record_t *meta, size_t end)
{
    for (size_t pos = 0; pos < end;) {
        const uint8_t *head = j->found.data + pos;
        int64_t t = (int64_t)sl_get_be64(head);
        uint32_t chunks = sl_get_be32(head + FOUND_HEADER), len = sl_get_be32(head + 12);
        pos += FOUND_HEADER + len;
        for (uint32_t n = 1; n <= chunks; n++) {
            const void *value;
            size_t value_len, key_len = 0;
            int rc = buffer_key(j, side, meta->key, meta->key_len, n, &key_len);
            int found = rc ? rc : window_get(j, key_len, t, &value, &value_len);
            if (found < 0)
                return found;
            if (found && (rc = found_add(j, t, n, value, value_len)))
                return rc;
        }
    }
    return 0;
}

/* Walks the items of an entry: *at is the next item's offset; 1 with the
 * item, 0 at the end, SL_ECORRUPT for a damaged entry. */
static int next_item(const sl_join_t *j, const uint8_t *entry, size_t len, size_t *at,
                     uint8_t **flags, const uint8_t **bytes, int32_t *bytes_len)
{
    if (*at == len)
        return 0;
    if (len - *at < ITEM_HEADER)
        return sl_error_set(SL_ECORRUPT, "join (%s): a damaged buffer entry", j->op->where);
    *flags = (uint8_t *)entry + *at;
    uint32_t n = sl_get_be32(entry + *at + 1);
    *bytes = entry + *at + ITEM_HEADER;
    if (**flags & NULL_VALUE) {
        *bytes_len = -1;
        n = 0;
    } else if (n > len - *at - ITEM_HEADER) {
        return sl_error_set(SL_ECORRUPT, "join (%s): a damaged buffer entry", j->op->where);
    } else {
        *bytes_len = (int32_t)n;
    }
    *at += ITEM_HEADER + n;
    return 1;
}

/* Loads a buffered item of side `side` as a record {key, value, ts}; an
 * error if it keeps fewer fields than the function reads (another version
 * of the pipeline buffered it, or its key_by wrote it: lua/project.c). */
static int load_item(sl_join_t *j, sl_vm_t *vm, const uint8_t *key, size_t key_len, int64_t t,
                     const uint8_t *bytes, int32_t len, int side, int *slot)
{
    const char *kept, *needs = j->run->join_reads[side];
    size_t kept_len;
    if (len >= 0 && !sl_vm_value_keeps(bytes, len, needs, &kept, &kept_len))
        return sl_error_set(SL_EINVALID,
                            "join (%s): a record its buffer holds keeps only the fields '%.*s' of "
                            "its value (another version of the pipeline buffered it), and "
                            "this version's function reads %s%s%s: give the join a new store "
                            "(store = \"...\") to start its buffers empty",
                            j->run->where, (int)kept_len, kept, needs ? "'" : "",
                            needs ? needs : "all of it", needs ? "'" : "");
    int json = j->side_json[side];
    sl_record_t rec = {.key = key,
                       .key_len = (int32_t)key_len,
                       .value = bytes,
                       .value_len = len,
                       .timestamp = t,
                       .offset = -1};
    sl_vm_origin_t origin = {j->op->store, j->partition, json, 0};
    return sl_vm_record_load(vm, &rec, &origin, slot);
}

/* Appends an output slot to *outs. */
static int add_out(int **outs, size_t *count, size_t *cap, int slot)
{
    if (sl_array_reserve((void **)outs, cap, *count + 1, sizeof **outs))
        return -ENOMEM;
    (*outs)[(*count)++] = slot;
    return 0;
}

/* Joins the record in slot (side, key, t) with the collected entries of
 * the other side; marks them matched where that side owes unmatched ones.
 * *matched: whether any joined. */
static int join_found(sl_join_t *j, sl_vm_t *vm, int slot, int side, const sl_record_t *meta,
                      int **outs, size_t *count, size_t *cap, int *matched)
{
    size_t pos = 0, key_len = 0;
    int other = !side, rc = 0;
    while (rc == 0 && pos < j->found.len) {
        uint8_t *head = j->found.data + pos;
        int64_t t = (int64_t)sl_get_be64(head);
        uint32_t chunk = sl_get_be32(head + 8);
        size_t len = sl_get_be32(head + 12), at = chunk ? 0 : ENTRY_HEADER;
        uint8_t *entry = head + FOUND_HEADER, *flags = NULL;
        const uint8_t *bytes = NULL;
        int32_t n = 0;
        int changed = 0, item, out;
        pos += FOUND_HEADER + len;
        while (rc == 0 && (item = next_item(j, entry, len, &at, &flags, &bytes, &n)) == 1) {
            int buffered;
            rc = load_item(j, vm, meta->key, (size_t)meta->key_len, t, bytes, n, other, &buffered);
            if (rc == 0)
                rc = sl_vm_call_join(vm, j->run, slot, side ? buffered : slot,
                                     side ? slot : buffered, &out);
            if (rc == 0)
                rc = add_out(outs, count, cap, out);
            if (owes_unmatched(j->op, other) && !(*flags & MATCHED)) {
                *flags |= MATCHED;
                changed = 1;
            }
            *matched = 1;
        }
        if (rc == 0 && item < 0)
            rc = item;
        if (rc == 0 && changed &&
            (rc = buffer_key(j, other, meta->key, meta->key_len, chunk, &key_len)) == 0)
            rc = wrote(j, sl_cache_window_put(j->cache, j->key, key_len, t, entry, len));
    }
    return rc;
}

/* Puts j->value at the buffer key of (side, key, chunk) and time t. */
static int put_value(sl_join_t *j, int side, const sl_record_t *meta, uint32_t chunk, int64_t t)
{
    size_t key_len = 0;
    int rc = buffer_key(j, side, meta->key, meta->key_len, chunk, &key_len);
    if (rc == 0)
        rc = sl_cache_window_put(j->cache, j->key, key_len, t, j->value.data, j->value.len);
    if (rc < 0 || rc > 1)
        return sl_error_set(rc, "join (%s): %s", j->op->where, sl_error_detail());
    return wrote(j, rc);
}

/* Appends the record to its side's buffer at (key, t): to the base entry
 * while it has room, then to its last chunk, then to a new chunk (so an
 * addition copies at most an entry's ENTRY_BYTES_MAX, however many records
 * share the key and time). */
static int buffer_record(sl_join_t *j, int side, const sl_record_t *meta, const sl_record_t *rec,
                         int matched)
{
    size_t key_len = 0, len = 0;
    const void *base = NULL, *last = NULL;
    uint8_t head[ITEM_HEADER];
    int64_t t = meta->timestamp;
    size_t item = ITEM_HEADER + (rec->value_len > 0 ? (size_t)rec->value_len : 0);
    int rc = buffer_key(j, side, meta->key, meta->key_len, 0, &key_len);
    int found = rc ? rc : window_get(j, key_len, t, &base, &len);
    if (found < 0)
        return found;
    if (found && len < ENTRY_HEADER)
        return sl_error_set(SL_ECORRUPT, "join (%s): a damaged buffer entry", j->op->where);
    if (!found && j->closer && owes_unmatched(j->op, side) && /* a new (key, t): closes later */
        (rc = sl_window_closer_add(j->closer, j->key, key_len, t, close_time(j->op, t))))
        return rc;
    head[0] = (uint8_t)((matched ? MATCHED : 0) | (rec->value_len < 0 ? NULL_VALUE : 0));
    sl_put_be32(head + 1, rec->value_len < 0 ? 0 : (uint32_t)rec->value_len);
    j->value.len = 0; /* the base entry, copied before the cache is called again */
    if (found)
        rc = sl_buf_append(&j->value, base, len);
    else
        rc = sl_buf_append(&j->value, (const uint8_t[ENTRY_HEADER]){0}, ENTRY_HEADER);
    if (rc)
        return rc;
    uint32_t chunks = sl_get_be32(j->value.data), into = 0; /* 0: the base entry */
    if (chunks > 0 || len + item > ENTRY_BYTES_MAX) {       /* into the last chunk, or a new one */
        size_t chunk_key = 0, last_len = 0;
        int has = 0;
        if (chunks > 0 &&
            ((rc = buffer_key(j, side, meta->key, meta->key_len, chunks, &chunk_key)) ||
             (has = window_get(j, chunk_key, t, &last, &last_len)) < 0))
            return rc ? rc : has;
        if (!has || last_len + item > ENTRY_BYTES_MAX) { /* the base counts one chunk more */
            sl_put_be32(j->value.data, ++chunks);
            if ((rc = put_value(j, side, meta, 0, t)))
                return rc;
            j->value.len = 0;
        } else {
            j->value.len = 0;
            if ((rc = sl_buf_append(&j->value, last, last_len)))
                return rc;
        }
        into = chunks;
    }
    if ((rc = sl_buf_append(&j->value, head, sizeof head)) == 0 && rec->value_len > 0)
        rc = sl_buf_append(&j->value, rec->value, (size_t)rec->value_len);
    return rc ? rc : put_value(j, side, meta, into, t);
}

int sl_join_stream_stream(sl_join_t *j, const sl_op_t *op, sl_vm_t *vm, int slot, int side,
                          int **outs, size_t *count, size_t *cap)
{
    j->run = op;
    sl_record_t meta, rec;
    size_t key_len = 0;
    int matched = 0, out;
    int rc = sl_vm_record_meta(vm, slot, &meta);
    if (rc)
        return rc;
    if (meta.key_len <= 0) { /* joins nothing, ever */
        if (!owes_unmatched(op, side))
            return 0;
        rc = sl_vm_call_join(vm, op, slot, side ? -1 : slot, side ? slot : -1, &out);
        return rc ? rc : add_out(outs, count, cap, out);
    }
    int64_t t = meta.timestamp;
    if (t < SL_TIME_MIN || t > SL_TIME_MAX)
        return sl_error_set(SL_EINVALID, "join (%s): event time %lld is out of range", op->where,
                            (long long)t);
    int64_t watermark = sl_watermark_get(&j->wm);
    if (watermark != SL_WATERMARK_NONE && t < watermark) {
        __atomic_fetch_add(&j->late, 1, __ATOMIC_RELAXED);
        return 0;
    }
    /* the bytes to buffer: only the fields the function reads, if known */
    if ((rc = sl_vm_record_kept(vm, slot, op->join_reads[side], &rec)))
        return rc;
    sl_watermark_observe(&j->wm, t);
    if ((rc = buffer_key(j, !side, meta.key, meta.key_len, 0, &key_len)))
        return rc;
    j->found.len = 0;
    int64_t from = t - op->join_within, to = t + op->join_within;
    rc = sl_cache_span_holds(&j->span, j->cache, from)
             ? sl_cache_windows_cached(j->cache, j->key, key_len, from, to, collect, j)
             : sl_cache_windows(j->cache, j->key, key_len, from, to, collect, j);
    if (rc == 0)
        rc = collect_chunks(j, !side, &meta, j->found.len);
    if (rc == 0)
        rc = join_found(j, vm, slot, side, &meta, outs, count, cap, &matched);
    if (rc == 0)
        rc = buffer_record(j, side, &meta, &rec, matched);
    return rc;
}

/* ---- at commit --------------------------------------------------------------- */

/* The unmatched records of one entry (from `at`), joined with nil,
 * downstream. */
static int emit_items(sl_exec_t *x, sl_join_t *j, sl_vm_t *vm, const uint8_t *key, size_t key_len,
                      int side, int64_t t, const uint8_t *entry, size_t len, size_t at,
                      const sl_exec_output_t *out)
{
    uint8_t *flags = NULL;
    const uint8_t *bytes = NULL;
    int32_t n = 0;
    int rc = 0, item = 0;
    while (rc == 0 && (item = next_item(j, entry, len, &at, &flags, &bytes, &n)) == 1) {
        int slot, result;
        if (*flags & MATCHED)
            continue;
        rc = load_item(j, vm, key, key_len, t, bytes, n, side, &slot);
        if (rc == 0)
            rc = sl_vm_call_join(vm, j->run, slot, side ? -1 : slot, side ? slot : -1, &result);
        if (rc == 0)
            rc = sl_exec_deliver_slot(x, j->op->id, result, out);
    }
    return rc ? rc : item < 0 ? item : 0;
}

/* The unmatched records of a closed entry and its chunks downstream; then
 * they are deleted. */
static int emit_unmatched(sl_exec_t *x, sl_join_t *j, sl_vm_t *vm, const uint8_t *store_key,
                          size_t len, int64_t t, const sl_exec_output_t *out)
{
    const void *value;
    size_t value_len;
    int side = store_key[0] == SIDE_RIGHT, rc;
    sl_record_t meta = {.key = store_key + 1, .key_len = (int32_t)len - 1};
    int found = sl_cache_window_get(j->cache, store_key, len, t, &value, &value_len);
    if (found <= 0)
        return found;
    if (value_len < ENTRY_HEADER)
        return sl_error_set(SL_ECORRUPT, "join (%s): a damaged buffer entry", j->op->where);
    j->value.len = 0;
    if ((rc = sl_buf_append(&j->value, value, value_len)))
        return rc;
    uint32_t chunks = sl_get_be32(j->value.data);
    rc = emit_items(x, j, vm, meta.key, len - 1, side, t, j->value.data, j->value.len, ENTRY_HEADER,
                    out);
    for (uint32_t n = 1; rc == 0 && n <= chunks; n++) {
        size_t key_len = 0;
        if ((rc = buffer_key(j, side, meta.key, meta.key_len, n, &key_len)) ||
            (found = sl_cache_window_get(j->cache, j->key, key_len, t, &value, &value_len)) < 0)
            return rc ? rc : found;
        j->found.len = 0;
        if (found && (rc = sl_buf_append(&j->found, value, value_len)) == 0)
            rc = emit_items(x, j, vm, meta.key, len - 1, side, t, j->found.data, j->found.len, 0,
                            out);
        if (rc == 0) /* j->key is still chunk n's: emit_items runs other ops only */
            rc = wrote(j, sl_cache_window_delete(j->cache, j->key, key_len, t));
    }
    if (rc == 0)
        rc = wrote(j, sl_cache_window_delete(j->cache, store_key, len, t));
    return rc;
}

int sl_join_flush(sl_exec_t *x, sl_join_t *j, sl_vm_t *vm, const sl_exec_output_t *out)
{
    const sl_op_t *op = j->run = &sl_exec_dag(x)->ops[j->op->id];
    sl_window_closed_t closed;
    int rc = 0;
    sl_cache_span_flushed(&j->span, j->wm.seen); /* what this flush writes starts no later */
    if (op->kind != SL_OP_JOIN || op->join_kind != SL_JOIN_STREAM_STREAM ||
        j->wm.stream_time == SL_WATERMARK_NONE)
        return 0;
    while (rc == 0 && j->closer && sl_window_closer_pop(j->closer, j->wm.stream_time, &closed)) {
        uint8_t key[SL_STORE_KEY_MAX];
        size_t len = closed.key_len;
        memcpy(key, closed.key, len); /* the closer's copy goes at its next call */
        rc = emit_unmatched(x, j, vm, key, len, closed.start, out);
    }
    int64_t cutoff = sl_watermark_get(&j->wm) - op->join_within;
    if (rc == 0 && cutoff > SL_TIME_MIN)
        rc = sl_cache_expire(j->cache, cutoff, EXPIRE_BATCH, NULL);
    return rc;
}

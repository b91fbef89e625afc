/*
 * changelog.c - stores' changelogs and restoring a store from one (manual
 * in storage.h, "state stores and commits").
 *
 * A changelog record is a store change as it is: key = the store key (for
 * a window store key || W, so the window round-trips), value = the new
 * value, null = deleted. Timestamps and headers carry nothing. The topic is
 * compacted (the newest record per key is the entry) and transactional
 * (only committed changes are ever read back).
 *
 * Restore reads the changelog partition from the store's checkpoint to the
 * partition's visible end in batches. Each batch is copied, sorted by key
 * (offset breaking ties), reduced to the last change of each key, written
 * in key order in one write transaction together with the checkpoint of
 * where the batch ended, and committed. A crash mid-restore therefore
 * resumes from the last batch committed; replaying changes that are
 * already in LMDB is harmless, as every change is a plain overwrite.
 */
#include "storage/keysort.h"
#include "storage/state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A batch ends at this many records or key and value bytes, whichever
 * comes first: big enough that each write transaction rewrites few pages
 * twice (every batch touches pages all over the B-tree), small enough to
 * bound the memory a restore holds. */
#define RESTORE_BATCH_DEFAULT 1048576
#define RESTORE_BATCH_BYTES   (128u << 20)

/* A changelog's segments: compaction rewrites closed segments only, so a
 * topic's default (1 GiB) would leave a store's whole changelog
 * uncompacted, and a restore reading every change ever made. */
#define CHANGELOG_SEGMENT_BYTES (16 << 20)

void sl_changelog_topic_config(sl_topic_config_t *cfg, int32_t partitions, const char *owner)
{
    sl_topic_config_default(cfg);
    cfg->partitions = partitions > 0 ? partitions : 1;
    cfg->cleanup = SL_CLEANUP_COMPACT;
    cfg->segment_bytes = CHANGELOG_SEGMENT_BYTES;
    cfg->transactional = 1;
    cfg->format = SL_FORMAT_RAW;
    snprintf(cfg->owner, sizeof cfg->owner, "%s", owner ? owner : "");
}

int sl_changelog_check(const sl_store_t *s, const sl_record_t *r)
{
    int window = sl_store_kind(s) == SL_STORE_WINDOW;
    int32_t min = window ? 9 : 1;
    if (r->key_len < min || r->key_len > SL_STORE_KEY_MAX)
        return sl_error_set(SL_ECORRUPT,
                            "changelog of store %s: record at offset %lld has a %s key of %d "
                            "bytes (%d to %d expected)",
                            sl_store_name(s), (long long)r->offset, r->key_len < 0 ? "null" : "bad",
                            r->key_len < 0 ? 0 : r->key_len, min, SL_STORE_KEY_MAX);
    return 0;
}

/* ---- restore ----------------------------------------------------------- */

typedef struct restore {
    sl_store_t *store;
    sl_partition_t *changelog;
    const sl_restore_options_t *options;
    sl_restore_progress_t progress;
    sl_reader_t *reader;
    sl_record_set_t batch;
    sl_key_item_t *order, *order_tmp;
    size_t order_cap, order_tmp_cap;
    sl_record_t *changes;
    size_t changes_cap;
    struct timespec started;
    uint64_t committed_txn; /* the last batch's transaction; 0 before */
} restore_t;

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

/* Reads up to the batch size of records into r->batch. Returns how many
 * (0 at the end) or an error. */
static int read_batch(restore_t *r)
{
    const sl_restore_options_t *o = r->options;
    size_t limit = o && o->batch_records ? o->batch_records : RESTORE_BATCH_DEFAULT;
    size_t bytes_limit = o && o->batch_bytes ? o->batch_bytes : RESTORE_BATCH_BYTES;
    sl_record_t rec;
    int rc = 0, source = o && o->source;
    sl_record_set_reset(&r->batch);
    size_t bytes = 0;
    while (r->batch.count < limit && bytes < bytes_limit &&
           (rc = sl_reader_next(r->reader, &rec)) == 1) {
        if (source && rec.key_len <= 0)
            continue; /* never in the table: it failed there */
        if ((rc = sl_changelog_check(r->store, &rec)))
            return sl_error_set(rc, "%s/%d: %s", sl_partition_topic_name(r->changelog),
                                sl_partition_id(r->changelog), sl_error_detail());
        rec.header_count = 0;
        if ((rc = sl_record_set_add(&r->batch, &rec)))
            return sl_error_set(rc, "restoring %s: out of memory", sl_store_name(r->store));
        size_t n = (size_t)rec.key_len + (size_t)(rec.value_len > 0 ? rec.value_len : 0);
        r->progress.records++;
        r->progress.bytes += (int64_t)n;
        bytes += n;
    }
    return rc < 0 ? rc : (int)(r->batch.count > 0);
}

/* Sorts the batch and keeps the last change of each key, into r->changes;
 * returns how many. */
static int reduce_batch(restore_t *r, size_t *count)
{
    sl_record_t *recs = sl_record_set_array(&r->batch);
    size_t n = r->batch.count, kept = 0;
    if (sl_array_reserve((void **)&r->order, &r->order_cap, n, sizeof *r->order) ||
        sl_array_reserve((void **)&r->order_tmp, &r->order_tmp_cap, n, sizeof *r->order_tmp) ||
        sl_array_reserve((void **)&r->changes, &r->changes_cap, n, sizeof *r->changes))
        return sl_error_set(-ENOMEM, "restoring %s: out of memory", sl_store_name(r->store));
    for (size_t i = 0; i < n; i++)
        r->order[i] = (sl_key_item_t){0, 0, recs[i].key, (uint32_t)recs[i].key_len, (uint32_t)i};
    sl_key_sort(r->order, r->order_tmp, n); /* stable: a key's changes stay in order */
    for (size_t i = 0; i < n; i++) {
        const sl_key_item_t *it = &r->order[i], *next = i + 1 < n ? &r->order[i + 1] : NULL;
        if (next && next->len == it->len && !memcmp(next->key, it->key, it->len))
            continue; /* a later change of the same key follows */
        r->changes[kept++] = recs[it->index];
    }
    *count = kept;
    return 0;
}

/* Writes the batch and the checkpoint `upto` in one transaction. */
static int write_batch(restore_t *r, int64_t upto)
{
    size_t count = 0;
    MDB_txn *txn;
    int rc = reduce_batch(r, &count);
    if (rc || (rc = sl_state_begin(sl_store_state(r->store), 1, &txn)))
        return rc;
    if ((rc = sl_store_apply(r->store, txn, r->changes, count)) ||
        (rc = sl_store_checkpoint_put(r->store, txn, sl_partition_id(r->changelog), upto))) {
        mdb_txn_abort(txn);
        return rc;
    }
    uint64_t id = mdb_txn_id(txn);
    if ((rc = sl_state_commit(txn)) == 0) {
        r->progress.entries += (int64_t)count;
        r->committed_txn = id;
    }
    return rc;
}

static void report_progress(restore_t *r, int64_t position)
{
    r->progress.position = position;
    r->progress.seconds = seconds_since(&r->started);
    if (r->options && r->options->progress)
        r->options->progress(r->options->progress_arg, &r->progress);
}

static int run_restore(restore_t *r)
{
    int rc;
    while ((rc = read_batch(r)) == 1) {
        int64_t position = sl_reader_position(r->reader);
        if (position > r->progress.to)
            position = r->progress.to;
        if ((rc = write_batch(r, position)))
            return rc;
        report_progress(r, position);
    }
    if (rc == 0 && r->progress.position < r->progress.to) { /* a compacted-away tail */
        if ((rc = write_batch(r, r->progress.to)) == 0)
            report_progress(r, r->progress.to);
    }
    return rc;
}

/* Where a restore of changelog up to `to` (-1: its end) ends. */
static int64_t restore_end(sl_partition_t *changelog, int64_t to)
{
    int64_t end = sl_partition_end_offset(changelog);
    return to >= 0 && to < end ? to : end;
}

int sl_store_checkpoint_read(sl_store_t *s, int32_t partition, int64_t *offset)
{
    MDB_txn *txn;
    int rc = sl_state_begin(sl_store_state(s), 0, &txn);
    if (rc)
        return rc;
    rc = sl_store_checkpoint_get(s, txn, partition, offset);
    mdb_txn_abort(txn);
    return rc;
}

int sl_store_restore_needed(sl_store_t *s, sl_partition_t *changelog, int64_t to, int64_t *from)
{
    int64_t checkpoint = 0, start = sl_partition_start_offset(changelog);
    int64_t end = restore_end(changelog, to);
    int rc = sl_store_checkpoint_read(s, sl_partition_id(changelog), &checkpoint);
    if (rc == SL_ENOTFOUND)
        checkpoint = start, rc = 0;
    if (rc)
        return rc;
    if (checkpoint > end)
        sl_report(SL_WARN, "state",
                  "store %s partition %d is at changelog offset %lld, beyond the changelog's end "
                  "%lld (the changelog lost records?): keeping the store as it is",
                  sl_store_name(s), sl_partition_id(changelog), (long long)checkpoint,
                  (long long)end);
    *from = checkpoint < start ? start : checkpoint;
    return *from < end;
}

static void restore_free(restore_t *r)
{
    sl_reader_close(r->reader);
    sl_record_set_free(&r->batch);
    sl_free(r->order);
    sl_free(r->order_tmp);
    sl_free(r->changes);
}

int sl_store_restore(sl_store_t *s, sl_partition_t *changelog, const sl_restore_options_t *opts,
                     sl_restore_progress_t *result)
{
    restore_t r = {.store = s, .changelog = changelog, .options = opts};
    int64_t from, to = opts && opts->source ? opts->to : -1;
    int rc = sl_store_restore_needed(s, changelog, to, &from);
    r.progress.store = sl_store_name(s);
    r.progress.partition = sl_partition_id(changelog);
    r.progress.from = r.progress.position = from;
    r.progress.to = restore_end(changelog, to);
    clock_gettime(CLOCK_MONOTONIC, &r.started);
    if (rc == 1 && (rc = sl_reader_open(changelog, from, &r.reader)) == 0) {
        sl_report(SL_INFO, "state", "restoring store %s partition %d from %s offsets %lld to %lld",
                  r.progress.store, r.progress.partition, sl_partition_topic_name(changelog),
                  (long long)from, (long long)r.progress.to);
        sl_reader_set_limit(r.reader, r.progress.to);
        if ((rc = run_restore(&r)) == 0 && r.committed_txn) { /* LMDB has what the runs had */
            sl_store_views_lock(sl_store_state(s));
            sl_overlay_drop(sl_store_overlay(s), r.progress.partition, 0, r.committed_txn);
            sl_store_views_unlock(sl_store_state(s));
        }
        if (rc == 0)
            sl_report(SL_INFO, "state",
                      "restored store %s partition %d: %lld records, %lld entries in %.3f s",
                      r.progress.store, r.progress.partition, (long long)r.progress.records,
                      (long long)r.progress.entries, seconds_since(&r.started));
    }
    r.progress.seconds = seconds_since(&r.started);
    if (result)
        *result = r.progress;
    restore_free(&r);
    return rc < 0 ? rc : 0;
}

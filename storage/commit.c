/*
 * commit.c - a task's exactly-once commit (protocol in storage.h, "state
 * stores and commits").
 *
 * A commit remembers what it touched: each transactional partition it
 * appended to, with the end it had before (where a failed commit cuts it
 * back to) and the end after its last append (its new lso); and each
 * store cache with the changelog partition its changes went to. Finishing
 * makes the appends durable, writes caches, checkpoints and lso into the
 * transaction, commits it, and only then shows the records to readers.
 *
 * The commit lock (sl_state_lock_commits) is held from begin to the end of
 * that, so between commits every transactional partition has nothing
 * beyond its visible end; a commit that finds something there (a failed
 * commit whose cut failed too) cuts it first, and refuses the partition if
 * it cannot.
 */
#include "storage/offsets.h"
#include "storage/partition.h"

#include <errno.h>
#include <string.h>

typedef struct written {
    sl_partition_t *partition; /* referenced */
    int64_t before, end;
} written_t;

typedef struct flushed {
    sl_cache_t *cache;
    sl_partition_t *changelog; /* NULL: sl_commit_store_at */
    int32_t partition;         /* the task's (changelog's, or the checkpoint's) */
    int64_t checkpoint;        /* sl_commit_store_at: the offset; -1 otherwise */
    int wrote;                 /* the entries went into LMDB: the overlay's runs go */
    int published;             /* the overlay got its changes (or its flush's mark) */
} flushed_t;

struct sl_commit {
    sl_state_t *state;
    MDB_txn *txn; /* non-NULL from begin to end or abort */
    written_t *written;
    size_t written_count, written_cap;
    flushed_t *flushed;
    size_t flushed_count, flushed_cap;
    uint64_t txn_id; /* the write transaction's */
    int flush_all;   /* sl_commit_flush_all() */
};

int sl_commit_new(sl_state_t *st, sl_commit_t **out)
{
    sl_commit_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return sl_error_set(-ENOMEM, "commit: out of memory");
    c->state = st;
    *out = c;
    return 0;
}

void sl_commit_free(sl_commit_t *c)
{
    if (!c)
        return;
    sl_commit_abort(c);
    sl_free(c->written);
    sl_free(c->flushed);
    sl_free(c);
}

MDB_txn *sl_commit_txn(sl_commit_t *c)
{
    return c->txn;
}

static int check_open(const sl_commit_t *c)
{
    return c->txn ? 0 : sl_error_set(SL_EINVALID, "commit: no commit is in progress");
}

int sl_commit_begin(sl_commit_t *c)
{
    if (c->txn)
        return sl_error_set(SL_EINVALID, "commit: a commit is already in progress");
    sl_state_lock_commits(c->state);
    int rc = sl_state_begin(c->state, 1, &c->txn);
    if (rc) {
        c->txn = NULL;
        sl_state_unlock_commits(c->state);
    } else {
        c->txn_id = mdb_txn_id(c->txn);
    }
    return rc;
}

void sl_commit_flush_all(sl_commit_t *c)
{
    c->flush_all = 1;
}

/* Takes back the overlay runs of a commit that did not happen (the next
 * commit reuses its transaction id). */
static void unpublish(sl_commit_t *c)
{
    for (size_t i = 0; i < c->flushed_count; i++)
        if (c->flushed[i].published)
            sl_overlay_drop(sl_store_overlay(sl_cache_store(c->flushed[i].cache)),
                            c->flushed[i].partition, c->txn_id, 0);
}

/* Forgets what the commit touched and lets the next one in. */
static void finish(sl_commit_t *c)
{
    for (size_t i = 0; i < c->written_count; i++)
        sl_partition_unref(c->written[i].partition);
    c->written_count = c->flushed_count = 0;
    c->flush_all = 0;
    c->txn = NULL;
    sl_state_unlock_commits(c->state);
}

/* Cuts every appended partition back to where the commit found it. */
static void roll_back(sl_commit_t *c)
{
    for (size_t i = 0; i < c->written_count; i++) {
        written_t *w = &c->written[i];
        int rc = w->end > w->before ? sl_partition_truncate(w->partition, w->before) : 0;
        if (rc && rc != SL_EDELETED)
            sl_report(SL_ERROR, "commit",
                      "%s/%d: cannot cut uncommitted offsets %lld to %lld: %s (the next commit "
                      "tries again)",
                      sl_partition_topic_name(w->partition), sl_partition_id(w->partition),
                      (long long)w->before, (long long)w->end - 1, sl_error_detail());
    }
}

void sl_commit_abort(sl_commit_t *c)
{
    if (!c->txn)
        return;
    mdb_txn_abort(c->txn);
    roll_back(c);
    unpublish(c);
    finish(c);
}

/* Cuts what a failed commit left beyond p's visible end. */
static int clean_partition(sl_partition_t *p)
{
    int64_t visible = sl_partition_end_offset(p), written = sl_partition_written_end(p);
    if (written == visible)
        return 0;
    sl_report(SL_WARN, "commit", "%s/%d: cutting uncommitted offsets %lld to %lld first",
              sl_partition_topic_name(p), sl_partition_id(p), (long long)visible,
              (long long)written - 1);
    int rc = sl_partition_truncate(p, visible);
    return rc ? sl_error_set(rc, "%s/%d: uncommitted records remain: %s",
                             sl_partition_topic_name(p), sl_partition_id(p), sl_error_detail())
              : 0;
}

/* The commit's entry for p, added (p checked and referenced) if new. */
static int written_for(sl_commit_t *c, sl_partition_t *p, written_t **out)
{
    for (size_t i = 0; i < c->written_count; i++)
        if (c->written[i].partition == p) {
            *out = &c->written[i];
            return 0;
        }
    if (!sl_partition_is_transactional(p))
        return sl_error_set(SL_EINVALID, "commit: %s/%d is not a transactional partition",
                            sl_partition_topic_name(p), sl_partition_id(p));
    int rc = clean_partition(p);
    if (rc)
        return rc;
    if (sl_array_reserve((void **)&c->written, &c->written_cap, c->written_count + 1,
                         sizeof *c->written))
        return sl_error_set(-ENOMEM, "commit: out of memory");
    int64_t end = sl_partition_written_end(p);
    sl_partition_ref(p);
    *out = &c->written[c->written_count++];
    **out = (written_t){p, end, end};
    return 0;
}

int sl_commit_append(sl_commit_t *c, sl_partition_t *p, const sl_record_t *records, size_t count,
                     int64_t *first_offset)
{
    written_t *w = NULL;
    int rc = check_open(c);
    if (rc || (rc = written_for(c, p, &w)) || count == 0)
        return rc;
    return sl_partition_append_split(p, records, count, first_offset, &w->end);
}

/* Checks cache is not in c yet and makes room for it. */
static int add_flushed(sl_commit_t *c, sl_cache_t *cache)
{
    int rc = check_open(c);
    for (size_t i = 0; rc == 0 && i < c->flushed_count; i++)
        if (c->flushed[i].cache == cache)
            rc = sl_error_set(SL_EINVALID, "commit: store %s is already in this commit",
                              sl_store_name(sl_cache_store(cache)));
    if (rc == 0 && sl_array_reserve((void **)&c->flushed, &c->flushed_cap, c->flushed_count + 1,
                                    sizeof *c->flushed))
        rc = sl_error_set(-ENOMEM, "commit: out of memory");
    return rc;
}

int sl_commit_store(sl_commit_t *c, sl_cache_t *cache, sl_partition_t *changelog)
{
    const sl_record_t *changes;
    size_t count;
    int rc = add_flushed(c, cache);
    if (rc || (rc = sl_cache_changes(cache, &changes, &count)))
        return rc;
    if (count && (rc = sl_commit_append(c, changelog, changes, count, NULL)))
        return rc;
    c->flushed[c->flushed_count++] =
        (flushed_t){cache, changelog, sl_partition_id(changelog), -1, 0, 0};
    return 0;
}

int sl_commit_store_at(sl_commit_t *c, sl_cache_t *cache, int32_t partition, int64_t offset)
{
    int rc = add_flushed(c, cache);
    if (rc == 0 && (partition < 0 || offset < 0))
        rc = sl_error_set(SL_EINVALID, "commit: checkpoint %d/%lld", (int)partition,
                          (long long)offset);
    if (rc == 0)
        c->flushed[c->flushed_count++] = (flushed_t){cache, NULL, partition, offset, 0, 0};
    return rc;
}

int sl_commit_offset(sl_commit_t *c, const char *group, const char *topic, int32_t partition,
                     int64_t offset)
{
    int rc = check_open(c);
    return rc ? rc : sl_offsets_put(c->state, c->txn, group, topic, partition, offset);
}

/* Step 2's end: every appended record durable. */
static int make_durable(sl_commit_t *c)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->written_count; i++) {
        written_t *w = &c->written[i];
        if (w->end == w->before)
            continue;
        if (w->partition->config.fsync != SL_FSYNC_NEVER)
            rc = sl_partition_sync(w->partition); /* now, not at the flusher's next turn */
        if (rc == 0)
            rc = sl_partition_await_durable(w->partition, w->end, -1);
    }
    return rc;
}

static int64_t end_of(const sl_commit_t *c, const sl_partition_t *p)
{
    for (size_t i = 0; i < c->written_count; i++)
        if (c->written[i].partition == p)
            return c->written[i].end;
    return -1;
}

/* Step 3 for one cache: its entries and checkpoint when it flushes, else
 * its changes into the store's overlay. */
static int write_cache(sl_commit_t *c, flushed_t *f)
{
    sl_store_t *store = sl_cache_store(f->cache);
    const sl_record_t *changes;
    size_t count;
    int rc = sl_cache_flush(f->cache, c->txn, c->flush_all, &f->wrote);
    if (rc == 0 && f->wrote) {
        int64_t end = f->changelog ? end_of(c, f->changelog) : f->checkpoint;
        if (end < 0) /* nothing appended this commit: the changelog's end */
            end = sl_partition_written_end(f->changelog);
        if ((rc = sl_store_checkpoint_put(store, c->txn, f->partition, end)))
            return rc;
        /* readers of this transaction on must not take the earlier runs
         * over what LMDB now holds, though they see them until the drop */
        return sl_overlay_mark_flush(sl_store_overlay(store), f->partition, c->txn_id,
                                     &f->published);
    }
    if (rc || (rc = sl_cache_changes(f->cache, &changes, &count)) || count == 0)
        return rc;
    rc = sl_overlay_publish(sl_store_overlay(store), f->partition, c->txn_id, changes, count);
    f->published = rc == 0;
    return rc;
}

/* Step 3: the caches, their checkpoints and every written partition's lso. */
static int write_state(sl_commit_t *c)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->flushed_count; i++)
        rc = write_cache(c, &c->flushed[i]);
    for (size_t i = 0; rc == 0 && i < c->written_count; i++)
        rc = sl_lso_put(c->state, c->txn, c->written[i].partition, c->written[i].end);
    return rc;
}

/* After the commit: readers see the records, caches turn clean. */
static void publish(sl_commit_t *c)
{
    for (size_t i = 0; i < c->written_count; i++) {
        written_t *w = &c->written[i];
        int rc = sl_partition_set_visible_end(w->partition, w->end);
        if (rc && rc != SL_EDELETED)
            sl_report(SL_ERROR, "commit", "%s/%d: committed but not shown: %s",
                      sl_partition_topic_name(w->partition), sl_partition_id(w->partition),
                      sl_error_detail());
    }
    int locked = 0;
    for (size_t i = 0; i < c->flushed_count; i++) {
        const flushed_t *f = &c->flushed[i];
        if (f->wrote && !locked++) /* no reader between its view and its transaction */
            sl_store_views_lock(c->state);
        if (f->wrote) /* LMDB holds the partition's entries: its runs are done */
            sl_overlay_drop(sl_store_overlay(sl_cache_store(f->cache)), f->partition, 0, c->txn_id);
        sl_cache_committed(f->cache);
    }
    if (locked)
        sl_store_views_unlock(c->state);
}

int sl_commit_end(sl_commit_t *c)
{
    int rc = check_open(c);
    if (rc)
        return rc;
    if ((rc = make_durable(c)) || (rc = write_state(c))) {
        sl_commit_abort(c);
        return rc;
    }
    rc = sl_state_commit(c->txn); /* frees the transaction, committed or not */
    c->txn = NULL;
    if (rc) {
        roll_back(c);
        unpublish(c);
    } else
        publish(c);
    finish(c);
    return rc;
}

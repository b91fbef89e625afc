/*
 * lso.c - committed ends of transactional partitions (layout in lso.h).
 *
 * A commit writes a partition's new end with sl_lso_put() inside its write
 * transaction and, once that transaction is durable, shows the records to
 * readers with sl_partition_set_visible_end(). Recovery runs the other way:
 * one write transaction reads every entry, decides each partition's end,
 * deletes entries of topics that are gone and writes the marker (plus the
 * adopted ends of a new state); after it commits, each partition is cut to
 * its end. A crash before that commit repeats the same decisions on the
 * next start; a crash during the cuts leaves partitions that the next
 * recovery cuts again.
 */
#include "storage/lso.h"
#include "storage/buf.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define LSO_KEY_MAX   (SL_TOPIC_NAME_MAX + 1 + 4)
#define LSO_VALUE_LEN 8

static const uint8_t marker_key[1] = {0};

static int lso_database(sl_state_t *st, MDB_dbi *dbi)
{
    return sl_state_database(st, SL_LSO_DATABASE, dbi);
}

static size_t encode_key(uint8_t *key, const char *topic, int32_t partition)
{
    size_t n = strlen(topic);
    memcpy(key, topic, n + 1);
    sl_put_be32(key + n + 1, (uint32_t)partition);
    return n + 5;
}

static int check_topic(const char *topic, int32_t partition)
{
    size_t n = topic ? strlen(topic) : 0;
    if (n == 0 || n > SL_TOPIC_NAME_MAX || partition < 0)
        return sl_error_set(SL_EINVALID, "lso: bad topic name or partition %d", partition);
    return 0;
}

/* Reads the entry of (topic, partition) in txn: 0 and *end, SL_ENOTFOUND,
 * or an error (SL_ECORRUPT for a value that is not 8 bytes). */
static int get_in(MDB_txn *txn, MDB_dbi dbi, const char *topic, int32_t partition, int64_t *end)
{
    uint8_t key_bytes[LSO_KEY_MAX];
    MDB_val key = {encode_key(key_bytes, topic, partition), key_bytes}, value;
    int rc = mdb_get(txn, dbi, &key, &value);
    if (rc == MDB_NOTFOUND)
        return SL_ENOTFOUND;
    if (rc)
        return sl_state_error(rc, "reading an lso");
    if (value.mv_size != LSO_VALUE_LEN || (int64_t)sl_get_be64(value.mv_data) < 0)
        return sl_error_set(SL_ECORRUPT, "lso: the entry of %s/%d is not an 8-byte offset", topic,
                            partition);
    *end = (int64_t)sl_get_be64(value.mv_data);
    return 0;
}

static int put_in(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key_bytes, size_t key_len, int64_t v)
{
    uint8_t value_bytes[LSO_VALUE_LEN];
    MDB_val key = {key_len, (void *)key_bytes}, value = {sizeof value_bytes, value_bytes};
    sl_put_be64(value_bytes, (uint64_t)v);
    return sl_state_error(mdb_put(txn, dbi, &key, &value, 0), "writing an lso");
}

int sl_lso_put(sl_state_t *st, MDB_txn *txn, sl_partition_t *p, int64_t end)
{
    uint8_t key[LSO_KEY_MAX];
    MDB_dbi dbi;
    int rc;
    if (!sl_partition_is_transactional(p))
        return sl_error_set(SL_EINVALID, "lso: %s/%d is not a transactional partition",
                            p->topic_name, p->id);
    if (end < 0 || end > sl_partition_written_end(p))
        return sl_error_set(SL_EINVALID, "lso: end %lld of %s/%d is beyond what was written",
                            (long long)end, p->topic_name, p->id);
    if ((rc = lso_database(st, &dbi)))
        return rc;
    return put_in(txn, dbi, key, encode_key(key, p->topic_name, p->id), end);
}

int sl_lso_get(sl_state_t *st, const char *topic, int32_t partition, int64_t *end)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = check_topic(topic, partition);
    if (rc || (rc = lso_database(st, &dbi)) || (rc = sl_state_begin(st, 0, &txn)))
        return rc;
    rc = get_in(txn, dbi, topic, partition, end);
    mdb_txn_abort(txn);
    if (rc == SL_ENOTFOUND)
        rc = sl_error_set(rc, "lso: %s/%d has no committed end", topic, partition);
    return rc;
}

/* Splits an entry's key; 0, or -1 for the marker or a key off the layout. */
static int decode_key(const MDB_val *key, char *topic, int32_t *partition)
{
    const uint8_t *k = key->mv_data;
    size_t n = key->mv_size;
    if (n < 6 || n > LSO_KEY_MAX || k[n - 5] != 0 || memchr(k, 0, n - 5))
        return -1;
    memcpy(topic, k, n - 5);
    topic[n - 5] = 0;
    *partition = (int32_t)sl_get_be32(k + n - 4);
    return 0;
}

typedef struct sweep {
    sl_lso_keep_fn keep; /* NULL: delete the entries of topic */
    void *arg;
    const char *topic;
} sweep_t;

static int doomed(const sweep_t *s, const MDB_val *key)
{
    char topic[SL_TOPIC_NAME_MAX + 1];
    int32_t partition;
    if (decode_key(key, topic, &partition))
        return 0; /* the marker, or not ours to judge */
    return s->keep ? !s->keep(s->arg, topic, partition) : strcmp(topic, s->topic) == 0;
}

/* Deletes the entries the sweep selects (all keys are visited: the lso
 * table holds one entry per transactional partition, a few thousand). */
static int sweep_in(MDB_txn *txn, MDB_dbi dbi, const sweep_t *s)
{
    MDB_cursor *cursor;
    MDB_val key, value;
    int rc = mdb_cursor_open(txn, dbi, &cursor);
    if (rc)
        return sl_state_error(rc, "opening a cursor on lso");
    for (rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT))
        if (doomed(s, &key) && (rc = mdb_cursor_del(cursor, 0)))
            break;
    mdb_cursor_close(cursor);
    return rc == MDB_NOTFOUND ? 0 : sl_state_error(rc, "deleting lso entries");
}

int sl_lso_delete_topic(sl_state_t *st, const char *topic)
{
    sweep_t s = {.topic = topic};
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = check_topic(topic, 0);
    if (rc || (rc = lso_database(st, &dbi)) || (rc = sl_state_begin(st, 1, &txn)))
        return rc;
    if ((rc = sweep_in(txn, dbi, &s))) {
        mdb_txn_abort(txn);
        return rc;
    }
    return sl_state_commit(txn);
}

/* The end partition p recovers to, given its entry (rc from get_in). */
static int decide_end(sl_partition_t *p, int rc, int64_t lso, int64_t *end)
{
    int64_t start = sl_partition_start_offset(p), written = sl_partition_written_end(p);
    if (rc == SL_ENOTFOUND)
        lso = start; /* never committed */
    else if (rc)
        return rc;
    if (lso > written) {
        sl_report(SL_ERROR, "log",
                  "%s/%d: committed up to offset %lld but the log ends at %lld: records %lld "
                  "to %lld are lost",
                  p->topic_name, p->id, (long long)lso, (long long)written, (long long)written,
                  (long long)lso - 1);
        lso = written;
    }
    if (lso < start)
        lso = start;
    if (lso < written)
        sl_report(SL_INFO, "log", "%s/%d: dropping uncommitted offsets %lld to %lld", p->topic_name,
                  p->id, (long long)lso, (long long)written - 1);
    *end = lso;
    return 0;
}

/* Decides partition p's end in txn (for a new state: adopts and records
 * its written end). A damaged entry is reported in *soft and leaves *end at
 * -1; any other failure is returned, and fails the transaction. */
static int decide_one(MDB_txn *txn, MDB_dbi dbi, int fresh, sl_partition_t *p, int64_t *end,
                      int *soft)
{
    uint8_t k[LSO_KEY_MAX];
    int64_t lso = 0;
    int rc;
    *end = -1;
    if (fresh) {
        int64_t written = sl_partition_written_end(p);
        if ((rc = put_in(txn, dbi, k, encode_key(k, p->topic_name, p->id), written)))
            return rc;
        if (written > sl_partition_start_offset(p))
            sl_report(SL_INFO, "log", "%s/%d: new state: adopting offsets up to %lld as committed",
                      p->topic_name, p->id, (long long)written);
        *end = written;
        return 0;
    }
    rc = get_in(txn, dbi, p->topic_name, p->id, &lso);
    if (rc != SL_ECORRUPT)
        return decide_end(p, rc, lso, end);
    sl_report(SL_ERROR, "log", "%s/%d stays as it is: %s", p->topic_name, p->id, sl_error_detail());
    if (!*soft)
        *soft = rc;
    return 0;
}

/* Decides every partition's end in txn, then deletes the entries keep()
 * rejects and writes the marker. */
static int decide_ends(MDB_txn *txn, MDB_dbi dbi, sl_partition_t **ps, size_t count, int64_t *ends,
                       const sweep_t *s, int *soft)
{
    MDB_val key = {sizeof marker_key, (void *)marker_key}, value;
    int rc = mdb_get(txn, dbi, &key, &value);
    int fresh = rc == MDB_NOTFOUND;
    if (rc && !fresh)
        return sl_state_error(rc, "reading the lso marker");
    rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = decide_one(txn, dbi, fresh, ps[i], &ends[i], soft);
    if (rc == 0)
        rc = sweep_in(txn, dbi, s);
    if (rc == 0 && fresh) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        rc = put_in(txn, dbi, marker_key, sizeof marker_key,
                    (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000);
    }
    return rc;
}

/* Applies the decided ends after the transaction committed. */
static int apply_ends(sl_partition_t **ps, size_t count, const int64_t *ends)
{
    int first = 0;
    for (size_t i = 0; i < count; i++) {
        int rc = ends[i] < 0 ? 0 : sl_partition_recover_end(ps[i], ends[i]);
        if (rc) {
            sl_report(SL_ERROR, "log", "%s/%d: cannot recover to offset %lld: %s",
                      ps[i]->topic_name, ps[i]->id, (long long)ends[i], sl_error_detail());
            if (!first)
                first = rc;
        }
    }
    return first;
}

int sl_lso_recover(sl_state_t *st, sl_partition_t **ps, size_t count, sl_lso_keep_fn keep,
                   void *arg)
{
    sweep_t s = {.keep = keep, .arg = arg};
    int64_t *ends = sl_malloc((count ? count : 1) * sizeof *ends);
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int soft = 0;
    int rc = ends ? 0 : sl_error_set(-ENOMEM, "lso: out of memory recovering partitions");
    if (rc || (rc = lso_database(st, &dbi)) || (rc = sl_state_begin(st, 1, &txn)))
        goto done;
    if ((rc = decide_ends(txn, dbi, ps, count, ends, &s, &soft))) {
        mdb_txn_abort(txn);
        goto done;
    }
    if ((rc = sl_state_commit(txn)) == 0 && (rc = apply_ends(ps, count, ends)) == 0)
        rc = soft;
done:
    sl_free(ends);
    return rc;
}

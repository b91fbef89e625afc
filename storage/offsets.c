/*
 * offsets.c - consumer-group committed offsets (layout in offsets.h).
 *
 * Reads and deletions are one walk: position a cursor at the first key with
 * a prefix ("group\0", "group\0topic\0", or nothing for all), visit keys
 * while they keep the prefix, and skip those of another topic when only a
 * topic was given. Because the key layout makes every group's (and every
 * group and topic's) entries contiguous, the walk touches only what it
 * selects, except for "one topic in every group", which scans the whole
 * database (topic deletion is rare). Keys and values are checked against
 * the layout as they are read; a bad one is SL_ECORRUPT, never a crash.
 *
 * Keys are built on the stack (at most SL_OFFSETS_KEY_MAX bytes): nothing
 * here allocates.
 */
#include "storage/offsets.h"

#include <errno.h>
#include <string.h>

/* One decoded entry; group and topic point into LMDB's page. */
typedef struct entry {
    const char *group;
    const char *topic;
    int32_t partition;
    int64_t offset;
} entry_t;

/* The keys a walk visits: those starting with prefix and, if topic is not
 * NULL, of that topic. */
typedef struct selection {
    uint8_t prefix[SL_OFFSETS_KEY_MAX];
    size_t prefix_len;
    const char *topic;
} selection_t;

typedef int (*visit_fn)(void *arg, MDB_cursor *cursor, const entry_t *entry);

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int size)
{
    uint64_t v = 0;
    for (int i = 0; i < size; i++)
        v = v << 8 | p[i];
    return v;
}

static int check_name(const char *kind, const char *name, size_t max)
{
    if (!name || !*name)
        return sl_error_set(SL_EINVALID, "offsets: the %s name must not be empty", kind);
    if (strlen(name) > max)
        return sl_error_set(SL_EINVALID, "offsets: %s name \"%.40s...\" is over %zu bytes", kind,
                            name, max);
    return 0;
}

static int check_names(const char *group, const char *topic)
{
    int rc = check_name("group", group, SL_GROUP_NAME_MAX);
    return rc ? rc : check_name("topic", topic, SL_TOPIC_NAME_MAX);
}

/* Appends name and its 0x00 at key + at; returns the new length. */
static size_t put_name(uint8_t *key, size_t at, const char *name)
{
    size_t n = strlen(name) + 1;
    memcpy(key + at, name, n);
    return at + n;
}

/* Writes the key of (group, topic, partition); returns its length. */
static size_t encode_key(uint8_t *key, const char *group, const char *topic, int32_t partition)
{
    size_t at = put_name(key, put_name(key, 0, group), topic);
    put_be32(key + at, (uint32_t)partition);
    return at + 4;
}

static int corrupt(const MDB_val *key, const char *what)
{
    return sl_error_set(SL_ECORRUPT, "offsets: entry with a %zu-byte key has %s", key->mv_size,
                        what);
}

/* Checks an entry against the layout and decodes it; the names are
 * terminated by the key's own 0x00 bytes. */
static int decode_entry(const MDB_val *key, const MDB_val *value, entry_t *e)
{
    const uint8_t *k = key->mv_data;
    size_t size = key->mv_size;
    if (size < 8 || size > SL_OFFSETS_KEY_MAX || k[size - 5] != 0)
        return corrupt(key, "a bad length or no 0x00 before the partition");
    const uint8_t *group_end = memchr(k, 0, size - 5);
    if (!group_end || group_end == k || group_end >= k + size - 6)
        return corrupt(key, "an empty group or topic name");
    e->group = (const char *)k;
    e->topic = (const char *)group_end + 1;
    e->partition = (int32_t)get_be(k + size - 4, 4);
    if (strlen(e->topic) != (size_t)(k + size - 5 - (group_end + 1)) || e->partition < 0)
        return corrupt(key, "a 0x00 inside the topic or a negative partition");
    if (value->mv_size != SL_OFFSETS_VALUE_LEN)
        return corrupt(key, "a value that is not 8 bytes");
    e->offset = (int64_t)get_be(value->mv_data, 8);
    return e->offset < 0 ? corrupt(key, "a negative offset") : 0;
}

static int offsets_database(sl_state_t *st, MDB_dbi *dbi)
{
    return sl_state_database(st, SL_OFFSETS_DATABASE, dbi);
}

static int check_commit(const char *group, const char *topic, const int32_t *partitions,
                        const int64_t *offsets, size_t count)
{
    int rc = check_names(group, topic);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        if (partitions[i] < 0 || offsets[i] < 0)
            rc = sl_error_set(SL_EINVALID,
                              "offsets: group %s topic %s: partition %d offset %lld is negative",
                              group, topic, partitions[i], (long long)offsets[i]);
    }
    return rc;
}

static int put_offset(MDB_txn *txn, MDB_dbi dbi, const char *group, const char *topic,
                      int32_t partition, int64_t offset)
{
    uint8_t key_bytes[SL_OFFSETS_KEY_MAX], value_bytes[SL_OFFSETS_VALUE_LEN];
    MDB_val key = {encode_key(key_bytes, group, topic, partition), key_bytes};
    MDB_val value = {sizeof value_bytes, value_bytes};
    put_be64(value_bytes, (uint64_t)offset);
    return sl_state_error(mdb_put(txn, dbi, &key, &value, 0), "committing offsets");
}

int sl_offsets_commit(sl_state_t *st, const char *group, const char *topic,
                      const int32_t *partitions, const int64_t *offsets, size_t count)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = check_commit(group, topic, partitions, offsets, count);
    if (rc || count == 0)
        return rc;
    if ((rc = offsets_database(st, &dbi)) || (rc = sl_state_begin(st, 1, &txn)))
        return rc;
    for (size_t i = 0; i < count; i++)
        if ((rc = put_offset(txn, dbi, group, topic, partitions[i], offsets[i])))
            goto fail;
    return sl_state_commit(txn);
fail:
    mdb_txn_abort(txn);
    return rc;
}

int sl_offsets_put(sl_state_t *st, MDB_txn *txn, const char *group, const char *topic,
                   int32_t partition, int64_t offset)
{
    MDB_dbi dbi;
    int rc = check_commit(group, topic, &partition, &offset, 1);
    if (rc || (rc = offsets_database(st, &dbi)))
        return rc;
    return put_offset(txn, dbi, group, topic, partition, offset);
}

int sl_offsets_get(sl_state_t *st, const char *group, const char *topic, int32_t partition,
                   int64_t *offset)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = offsets_database(st, &dbi); /* made, if new, before the read begins */
    if (rc || (rc = sl_state_begin(st, 0, &txn)))
        return rc;
    rc = sl_offsets_get_txn(st, txn, group, topic, partition, offset);
    mdb_txn_abort(txn);
    return rc;
}

int sl_offsets_get_txn(sl_state_t *st, MDB_txn *txn, const char *group, const char *topic,
                       int32_t partition, int64_t *offset)
{
    uint8_t key_bytes[SL_OFFSETS_KEY_MAX];
    MDB_val key, value;
    MDB_dbi dbi;
    entry_t e;
    int rc = check_names(group, topic);
    if (rc == 0 && partition < 0)
        rc = sl_error_set(SL_EINVALID, "offsets: partition %d is negative", partition);
    if (rc || (rc = offsets_database(st, &dbi)))
        return rc;
    key = (MDB_val){encode_key(key_bytes, group, topic, partition), key_bytes};
    rc = mdb_get(txn, dbi, &key, &value);
    if (rc == MDB_NOTFOUND)
        rc = sl_error_set(SL_ENOTFOUND, "offsets: group %s has no offset for %s/%d", group, topic,
                          partition);
    else if (rc)
        rc = sl_state_error(rc, "reading an offset");
    else if ((rc = decode_entry(&key, &value, &e)) == 0)
        *offset = e.offset;
    return rc;
}

/* Fills sel for a walk over group (or every group) and topic (or every
 * topic). */
static int select_entries(selection_t *sel, const char *group, const char *topic)
{
    int rc;
    sel->prefix_len = 0;
    sel->topic = NULL;
    if (group && (rc = check_name("group", group, SL_GROUP_NAME_MAX)))
        return rc;
    if (topic && (rc = check_name("topic", topic, SL_TOPIC_NAME_MAX)))
        return rc;
    if (group)
        sel->prefix_len = put_name(sel->prefix, 0, group);
    if (group && topic)
        sel->prefix_len = put_name(sel->prefix, sel->prefix_len, topic);
    else if (topic)
        sel->topic = topic;
    return 0;
}

static int has_prefix(const MDB_val *key, const selection_t *sel)
{
    return key->mv_size >= sel->prefix_len &&
           memcmp(key->mv_data, sel->prefix, sel->prefix_len) == 0;
}

/* Visits the selected entries in key order. Returns 0, visit's first
 * non-zero result, or an error. */
static int walk(MDB_cursor *cursor, const selection_t *sel, visit_fn visit, void *arg)
{
    MDB_val key = {sel->prefix_len, (void *)sel->prefix}, value;
    entry_t e;
    int rc = mdb_cursor_get(cursor, &key, &value, sel->prefix_len ? MDB_SET_RANGE : MDB_FIRST);
    for (; rc == 0 && has_prefix(&key, sel); rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
        if ((rc = decode_entry(&key, &value, &e)))
            return rc;
        if (sel->topic && strcmp(e.topic, sel->topic) != 0)
            continue;
        if ((rc = visit(arg, cursor, &e)))
            return rc;
    }
    return rc == MDB_NOTFOUND ? 0 : sl_state_error(rc, "walking offsets");
}

/* Runs a walk in a transaction of its own: a read for write == 0, else a
 * write committed only if the whole walk succeeded. */
static int walk_in_transaction(sl_state_t *st, int write, const selection_t *sel, visit_fn visit,
                               void *arg)
{
    MDB_cursor *cursor;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc;
    if ((rc = offsets_database(st, &dbi)) || (rc = sl_state_begin(st, write, &txn)))
        return rc;
    if ((rc = mdb_cursor_open(txn, dbi, &cursor))) {
        rc = sl_state_error(rc, "opening a cursor on offsets");
        goto fail;
    }
    rc = walk(cursor, sel, visit, arg);
    mdb_cursor_close(cursor);
    if (rc)
        goto fail;
    if (write)
        return sl_state_commit(txn);
    mdb_txn_abort(txn);
    return 0;
fail:
    mdb_txn_abort(txn);
    return rc;
}

typedef struct foreach_call {
    sl_offsets_fn fn;
    void *arg;
} foreach_call_t;

static int call_fn(void *arg, MDB_cursor *cursor, const entry_t *e)
{
    const foreach_call_t *call = arg;
    (void)cursor;
    return call->fn(call->arg, e->group, e->topic, e->partition, e->offset);
}

int sl_offsets_foreach(sl_state_t *st, const char *group, const char *topic, sl_offsets_fn fn,
                       void *arg)
{
    foreach_call_t call = {fn, arg};
    selection_t sel;
    int rc = select_entries(&sel, group, topic);
    return rc ? rc : walk_in_transaction(st, 0, &sel, call_fn, &call);
}

/* Deletes the entry under the cursor; the next MDB_NEXT then returns the
 * entry that followed it. */
static int delete_entry(void *arg, MDB_cursor *cursor, const entry_t *e)
{
    (void)arg;
    (void)e;
    return sl_state_error(mdb_cursor_del(cursor, 0), "deleting offsets");
}

int sl_offsets_delete_topic(sl_state_t *st, const char *topic)
{
    selection_t sel;
    int rc = check_name("topic", topic, SL_TOPIC_NAME_MAX); /* NULL is no "every topic" here */
    if (rc == 0)
        rc = select_entries(&sel, NULL, topic);
    return rc ? rc : walk_in_transaction(st, 1, &sel, delete_entry, NULL);
}

int sl_offsets_delete_group(sl_state_t *st, const char *group)
{
    selection_t sel;
    int rc = check_name("group", group, SL_GROUP_NAME_MAX); /* NULL is no "every group" here */
    if (rc == 0)
        rc = select_entries(&sel, group, NULL);
    return rc ? rc : walk_in_transaction(st, 1, &sel, delete_entry, NULL);
}

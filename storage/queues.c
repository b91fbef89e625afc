/*
 * queues.c - the registry of exchanges, queues and bindings: declarations
 * persisted in the `queues` LMDB database (layout in queue.h), loaded at
 * open, and kept in memory for routing.
 *
 * Every declaration is one write transaction, made before the in-memory
 * change, so memory never shows what LMDB does not hold. A queue's log is
 * created before its declaration is written and deleted after its
 * declaration is gone: a crash in between leaves at most a log without a
 * declaration, which the next declaration of that name replaces.
 *
 * Bindings point straight at their exchange and queue; deleting either
 * deletes its bindings, so those pointers never dangle.
 */
#include "storage/queue.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void sl_queue_options_default(sl_queue_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->ttl_ms = -1;
    o->max_length = -1;
    o->overflow = SL_OVERFLOW_DROP_HEAD;
    o->lease_ms = 30000;
    o->segment_bytes = 64 << 20;
}

int sl_queue_name_check(const char *kind, const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SL_QUEUE_NAME_MAX)
        return sl_error_set(SL_EINVALID, "%s name must be 1 to %d characters", kind,
                            SL_QUEUE_NAME_MAX);
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
              (name[i] >= '0' && name[i] <= '9') || strchr("._-", name[i])))
            return sl_error_set(SL_EINVALID, "%s name '%.64s' may only hold [A-Za-z0-9._-]", kind,
                                name);
    return 0;
}

/* ---- keys and values --------------------------------------------------- */

void sl_queue_put_be(uint8_t *p, uint64_t v, int size)
{
    for (int i = size - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t sl_queue_get_be(const uint8_t *p, int size)
{
    uint64_t v = 0;
    for (int i = 0; i < size; i++)
        v = v << 8 | p[i];
    return v;
}

size_t sl_queue_key(uint8_t *key, char kind, const char *name, int level, int64_t n)
{
    size_t len = strlen(name);
    key[0] = (uint8_t)kind;
    memcpy(key + 1, name, len);
    key[1 + len] = 0;
    key[2 + len] = (uint8_t)level;
    if (n < 0)
        return 3 + len;
    sl_queue_put_be(key + 3 + len, (uint64_t)n, 8);
    return 11 + len;
}

/* 'E' name or 'Q' name. */
static size_t name_key(uint8_t *key, char kind, const char *name)
{
    size_t len = strlen(name);
    key[0] = (uint8_t)kind;
    memcpy(key + 1, name, len);
    return 1 + len;
}

int sl_queue_put(sl_queues_t *qs, MDB_txn *txn, const uint8_t *key, size_t key_len,
                 const void *value, size_t value_len)
{
    MDB_val k = {key_len, (void *)key}, v = {value_len, (void *)value};
    int rc = value ? mdb_put(txn, qs->dbi, &k, &v, 0) : mdb_del(txn, qs->dbi, &k, NULL);
    if (rc == MDB_NOTFOUND && !value)
        return 0;
    return sl_state_error(rc, value ? "writing queue state" : "deleting queue state");
}

/* Deletes every entry whose key starts with prefix. */
static int delete_prefix(sl_queues_t *qs, MDB_txn *txn, const uint8_t *prefix, size_t len)
{
    MDB_cursor *cur;
    MDB_val k = {len, (void *)prefix}, v;
    int rc = mdb_cursor_open(txn, qs->dbi, &cur);
    if (rc)
        return sl_state_error(rc, "opening a cursor");
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= len && !memcmp(k.mv_data, prefix, len)) {
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
        if (rc == MDB_NOTFOUND || (rc == 0 && (k.mv_size < len || memcmp(k.mv_data, prefix, len))))
            break; /* LMDB leaves the cursor on the next entry after a delete */
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : sl_state_error(rc, "deleting queue state");
}

/* Deletes a queue's 'L', 'A' and 'D' entries. */
static int delete_queue_state(sl_queues_t *qs, MDB_txn *txn, const char *name)
{
    static const char kinds[] = "LAD";
    uint8_t prefix[SL_QUEUE_KEY_MAX];
    int rc = 0;
    for (int i = 0; rc == 0 && i < 3; i++) {
        size_t len = sl_queue_key(prefix, kinds[i], name, 0, -1) - 1; /* "X name 0x00" */
        rc = delete_prefix(qs, txn, prefix, len);
    }
    return rc;
}

#define OPTIONS_FIXED 39

static size_t encode_options(const sl_queue_options_t *o, uint8_t *out)
{
    size_t n = strlen(o->dead_letter);
    out[0] = 1;
    out[1] = (uint8_t)o->max_priority;
    sl_queue_put_be(out + 2, (uint64_t)o->ttl_ms, 8);
    sl_queue_put_be(out + 10, (uint64_t)o->max_length, 8);
    out[18] = (uint8_t)o->overflow;
    sl_queue_put_be(out + 19, (uint64_t)o->max_deliveries, 4);
    sl_queue_put_be(out + 23, (uint64_t)o->lease_ms, 8);
    sl_queue_put_be(out + 31, (uint64_t)o->segment_bytes, 8);
    memcpy(out + OPTIONS_FIXED, o->dead_letter, n);
    return OPTIONS_FIXED + n;
}

static int decode_options(const MDB_val *v, sl_queue_options_t *o)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < OPTIONS_FIXED || v->mv_size > OPTIONS_FIXED + SL_QUEUE_NAME_MAX || p[0] != 1)
        return sl_error_set(SL_ECORRUPT, "queues: a queue declaration of %zu bytes is malformed",
                            v->mv_size);
    sl_queue_options_default(o);
    o->max_priority = p[1];
    o->ttl_ms = (int64_t)sl_queue_get_be(p + 2, 8);
    o->max_length = (int64_t)sl_queue_get_be(p + 10, 8);
    o->overflow = p[18] ? SL_OVERFLOW_REJECT_PUBLISH : SL_OVERFLOW_DROP_HEAD;
    o->max_deliveries = (int32_t)sl_queue_get_be(p + 19, 4);
    o->lease_ms = (int64_t)sl_queue_get_be(p + 23, 8);
    o->segment_bytes = (int64_t)sl_queue_get_be(p + 31, 8);
    memcpy(o->dead_letter, p + OPTIONS_FIXED, v->mv_size - OPTIONS_FIXED);
    return o->max_priority > SL_QUEUE_PRIORITY_MAX
               ? sl_error_set(SL_ECORRUPT, "queues: a declaration has max priority %d",
                              o->max_priority)
               : 0;
}

/* ---- lookups ----------------------------------------------------------- */

static sl_exchange_t *find_exchange(sl_queues_t *qs, const char *name, size_t *at)
{
    size_t lo = 0, hi = qs->exchange_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(qs->exchanges[mid]->name, name);
        if (cmp == 0)
            return qs->exchanges[mid];
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (at)
        *at = lo;
    return NULL;
}

sl_queue_t *sl_queues_find(sl_queues_t *qs, const char *name)
{
    for (size_t i = 0; i < qs->queue_slots; i++)
        if (qs->queues[i] && !strcmp(qs->queues[i]->name, name))
            return qs->queues[i];
    return NULL;
}

sl_queue_t *sl_queues_at(sl_queues_t *qs, uint32_t slot, uint64_t id)
{
    sl_queue_t *q = slot < qs->queue_slots ? qs->queues[slot] : NULL;
    return q && q->id == id ? q : NULL;
}

static int insert_exchange(sl_queues_t *qs, const char *name, sl_exchange_type_t type)
{
    size_t at = 0;
    sl_exchange_t *e = sl_calloc(1, sizeof *e);
    if (!e || sl_array_reserve((void **)&qs->exchanges, &qs->exchange_cap, qs->exchange_count + 1,
                               sizeof *qs->exchanges)) {
        sl_free(e);
        return sl_error_set(-ENOMEM, "queues: out of memory adding exchange %s", name);
    }
    find_exchange(qs, name, &at);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->type = type;
    memmove(qs->exchanges + at + 1, qs->exchanges + at,
            (qs->exchange_count - at) * sizeof *qs->exchanges);
    qs->exchanges[at] = e;
    qs->exchange_count++;
    return 0;
}

static int insert_queue(sl_queues_t *qs, sl_queue_t *q)
{
    size_t slot = 0;
    while (slot < qs->queue_slots && qs->queues[slot])
        slot++;
    if (slot == qs->queue_slots &&
        sl_array_reserve((void **)&qs->queues, &qs->queue_cap, slot + 1, sizeof *qs->queues))
        return sl_error_set(-ENOMEM, "queues: out of memory adding queue %s", q->name);
    if (slot == qs->queue_slots)
        qs->queue_slots++;
    q->slot = (uint32_t)slot;
    q->id = ++qs->next_queue_id;
    qs->queues[slot] = q;
    return 0;
}

/* ---- bindings ---------------------------------------------------------- */

static int same_bytes(const void *a, int64_t alen, const void *b, int64_t blen)
{
    return alen == blen && (alen <= 0 || !memcmp(a, b, (size_t)alen));
}

static int has_arg(const sl_header_t *arg, const sl_header_t *args, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (same_bytes(arg->name, arg->name_len, args[i].name, args[i].name_len) &&
            same_bytes(arg->value, arg->value_len, args[i].value, args[i].value_len))
            return 1;
    return 0;
}

static sl_binding_t *find_binding(sl_queues_t *qs, const sl_exchange_t *e, const sl_queue_t *q,
                                  const char *pattern, size_t pattern_len, const sl_header_t *args,
                                  size_t nargs)
{
    for (size_t i = 0; i < e->binding_count; i++) {
        sl_binding_t *b = e->bindings[i];
        int same = b->queue == q && b->nargs == nargs &&
                   same_bytes(b->pattern, (int64_t)b->pattern_len, pattern, (int64_t)pattern_len);
        for (size_t j = 0; same && j < nargs; j++)
            same = has_arg(&args[j], b->args, b->nargs);
        if (same)
            return b;
    }
    (void)qs;
    return NULL;
}

static size_t binding_size(const char *exchange, const char *queue, size_t pattern_len,
                           const sl_header_t *args, size_t nargs)
{
    size_t n = strlen(exchange) + strlen(queue) + 2 + 2 + pattern_len + 2;
    for (size_t i = 0; i < nargs; i++)
        n += 8 + (size_t)args[i].name_len + (args[i].value_len > 0 ? (size_t)args[i].value_len : 0);
    return n;
}

static void put_bytes(uint8_t **p, const void *data, size_t len)
{
    if (len)
        memcpy(*p, data, len);
    *p += len;
}

static void encode_binding(uint8_t *out, const char *exchange, const char *queue,
                           const char *pattern, size_t pattern_len, const sl_header_t *args,
                           size_t nargs)
{
    uint8_t *p = out;
    put_bytes(&p, exchange, strlen(exchange) + 1);
    put_bytes(&p, queue, strlen(queue) + 1);
    sl_queue_put_be(p, pattern_len, 2);
    p += 2;
    put_bytes(&p, pattern, pattern_len);
    sl_queue_put_be(p, nargs, 2);
    p += 2;
    for (size_t i = 0; i < nargs; i++) {
        sl_queue_put_be(p, (uint64_t)args[i].name_len, 4);
        p += 4;
        put_bytes(&p, args[i].name, (size_t)args[i].name_len);
        sl_queue_put_be(p, (uint32_t)args[i].value_len, 4);
        p += 4;
        put_bytes(&p, args[i].value, args[i].value_len > 0 ? (size_t)args[i].value_len : 0);
    }
}

/* Reads len bytes at *p if they are there. */
static const uint8_t *take_bytes(const uint8_t **p, const uint8_t *end, size_t len)
{
    const uint8_t *at = *p;
    if ((size_t)(end - at) < len)
        return NULL;
    *p += len;
    return at;
}

/* Decodes a binding's value into b (which then owns a copy of it) and the
 * exchange and queue names it names. */
static int decode_binding(const MDB_val *v, sl_binding_t *b, const char **exchange,
                          const char **queue)
{
    uint8_t *copy = sl_malloc(v->mv_size + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, v->mv_data, v->mv_size);
    copy[v->mv_size] = 0;
    const uint8_t *p = copy, *end = copy + v->mv_size, *at;
    b->bytes = copy;
    *exchange = (const char *)p;
    p += strlen(*exchange) + 1;
    *queue = p < end ? (const char *)p : "";
    p = p < end ? p + strlen(*queue) + 1 : end;
    if (!(at = take_bytes(&p, end, 2)))
        return SL_ECORRUPT;
    b->pattern_len = sl_queue_get_be(at, 2);
    if (!(at = take_bytes(&p, end, b->pattern_len)))
        return SL_ECORRUPT;
    b->pattern = (char *)at;
    if (!(at = take_bytes(&p, end, 2)))
        return SL_ECORRUPT;
    b->nargs = sl_queue_get_be(at, 2);
    b->args = sl_calloc(b->nargs ? b->nargs : 1, sizeof *b->args);
    if (!b->args)
        return -ENOMEM;
    for (size_t i = 0; i < b->nargs; i++) {
        sl_header_t *h = &b->args[i];
        if (!(at = take_bytes(&p, end, 4)))
            return SL_ECORRUPT;
        h->name_len = (int32_t)sl_queue_get_be(at, 4);
        if (h->name_len < 0 || !(h->name = take_bytes(&p, end, (size_t)h->name_len)) ||
            !(at = take_bytes(&p, end, 4)))
            return SL_ECORRUPT;
        h->value_len = (int32_t)sl_queue_get_be(at, 4);
        h->value = take_bytes(&p, end, h->value_len > 0 ? (size_t)h->value_len : 0);
        if (!h->value)
            return SL_ECORRUPT;
    }
    return p == end ? 0 : SL_ECORRUPT;
}

static void free_binding(sl_binding_t *b)
{
    if (!b)
        return;
    sl_free(b->args);
    sl_free(b->bytes);
    sl_free(b);
}

/* Links a decoded binding into the registry and its exchange. */
static int link_binding(sl_queues_t *qs, sl_binding_t *b)
{
    sl_exchange_t *e = b->exchange;
    if (sl_array_reserve((void **)&qs->bindings, &qs->binding_cap, qs->binding_count + 1,
                         sizeof *qs->bindings) ||
        sl_array_reserve((void **)&e->bindings, &e->binding_cap, e->binding_count + 1,
                         sizeof *e->bindings))
        return sl_error_set(-ENOMEM, "queues: out of memory adding a binding");
    qs->bindings[qs->binding_count++] = b;
    e->bindings[e->binding_count++] = b;
    if (b->id >= qs->next_binding_id)
        qs->next_binding_id = b->id + 1;
    return 0;
}

static void remove_pointer(void **array, size_t *count, const void *p)
{
    for (size_t i = 0; i < *count; i++)
        if (array[i] == p) {
            memmove(array + i, array + i + 1, (*count - i - 1) * sizeof *array);
            (*count)--;
            return;
        }
}

static void unlink_binding(sl_queues_t *qs, sl_binding_t *b)
{
    remove_pointer((void **)qs->bindings, &qs->binding_count, b);
    remove_pointer((void **)b->exchange->bindings, &b->exchange->binding_count, b);
    free_binding(b);
}

static int delete_binding_entry(sl_queues_t *qs, MDB_txn *txn, const sl_binding_t *b)
{
    uint8_t key[5] = {'B'};
    sl_queue_put_be(key + 1, b->id, 4);
    return sl_queue_put(qs, txn, key, sizeof key, NULL, 0);
}

/* ---- opening ----------------------------------------------------------- */

/* Calls fn for every entry whose key starts with kind, in a read
 * transaction. */
static int walk(sl_queues_t *qs, char kind,
                int (*fn)(sl_queues_t *, const MDB_val *, const MDB_val *))
{
    MDB_txn *txn;
    MDB_cursor *cur;
    uint8_t prefix = (uint8_t)kind;
    MDB_val k = {1, &prefix}, v;
    int rc = sl_state_begin(qs->state, 0, &txn);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(txn, qs->dbi, &cur))) {
        mdb_txn_abort(txn);
        return sl_state_error(rc, "opening a cursor");
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && ((const uint8_t *)k.mv_data)[0] == (uint8_t)kind) {
        if ((rc = fn(qs, &k, &v)))
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc == MDB_NOTFOUND ? 0 : rc > 0 ? sl_state_error(rc, "reading declarations") : rc;
}

/* Copies an 'E' or 'Q' key's name; -1 if it cannot be a name. */
static int key_name(const MDB_val *k, char *name)
{
    if (k->mv_size < 2 || k->mv_size > 1 + SL_QUEUE_NAME_MAX)
        return -1;
    memcpy(name, (const char *)k->mv_data + 1, k->mv_size - 1);
    name[k->mv_size - 1] = 0;
    return strlen(name) == k->mv_size - 1 ? 0 : -1;
}

static int load_exchange(sl_queues_t *qs, const MDB_val *k, const MDB_val *v)
{
    char name[SL_QUEUE_NAME_MAX + 1];
    const uint8_t *type = v->mv_data;
    if (key_name(k, name) || v->mv_size != 1 || type[0] > SL_EXCHANGE_HEADERS) {
        sl_report(SL_ERROR, "queues", "skipping a malformed exchange declaration");
        return 0;
    }
    return insert_exchange(qs, name, (sl_exchange_type_t)type[0]);
}

static void topic_name(char *out, size_t size, const char *queue)
{
    snprintf(out, size, "%s%s", SL_QUEUE_TOPIC, queue);
}

static int create_log(sl_queues_t *qs, const char *name, const sl_queue_options_t *o)
{
    char topic[SL_TOPIC_NAME_MAX + 1], segment[32];
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    topic_name(topic, sizeof topic, name);
    snprintf(segment, sizeof segment, "%lld", (long long)o->segment_bytes);
    cfg.partitions = o->max_priority + 1;
    cfg.fsync = SL_FSYNC_ALWAYS;
    cfg.format = SL_FORMAT_RAW;
    int rc = sl_topic_config_set(&cfg, "segment.bytes", segment);
    if (rc == 0)
        rc = sl_topic_config_set(&cfg, "transactional", "true");
    if (rc == 0)
        rc = sl_topic_config_set(&cfg, "owner", "queue");
    return rc ? rc : sl_log_create_topic(qs->log, topic, &cfg, NULL);
}

/* Loads a queue: its log must exist (re-created empty, with its state
 * cleared, if it went missing). */
static int load_queue(sl_queues_t *qs, const MDB_val *k, const MDB_val *v)
{
    char topic[SL_TOPIC_NAME_MAX + 1];
    sl_queue_t *q = sl_calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    if (key_name(k, q->name) || decode_options(v, &q->options)) {
        sl_report(SL_ERROR, "queues", "skipping a malformed queue declaration: %s",
                  sl_error_detail());
        sl_free(q);
        return 0;
    }
    topic_name(topic, sizeof topic, q->name);
    int rc = 0;
    if (!sl_log_topic(qs->log, topic)) {
        sl_report(SL_ERROR, "queues", "queue %s: its log %s is missing; the queue starts empty",
                  q->name, topic);
        MDB_txn *txn;
        if ((rc = sl_state_begin(qs->state, 1, &txn)) == 0) {
            rc = delete_queue_state(qs, txn, q->name);
            rc = rc ? (mdb_txn_abort(txn), rc) : sl_state_commit(txn);
        }
        if (rc == 0)
            rc = create_log(qs, q->name, &q->options);
    }
    if (rc == 0 && (rc = insert_queue(qs, q)) == 0 && (rc = sl_queue_recover(qs, q))) {
        qs->queues[q->slot] = NULL;
        sl_queue_release(qs, q);
    }
    if (rc) {
        sl_report(SL_ERROR, "queues", "queue %s stays offline: %s", q->name, sl_error_detail());
        sl_free(q);
    }
    return 0;
}

static int load_binding(sl_queues_t *qs, const MDB_val *k, const MDB_val *v)
{
    const char *exchange = "", *queue = "";
    sl_binding_t *b = sl_calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    int rc = k->mv_size == 5 ? decode_binding(v, b, &exchange, &queue) : SL_ECORRUPT;
    if (rc == 0) {
        b->id = (uint32_t)sl_queue_get_be((const uint8_t *)k->mv_data + 1, 4);
        b->exchange = find_exchange(qs, exchange, NULL);
        b->queue = sl_queues_find(qs, queue);
        if (b->exchange && b->queue)
            rc = link_binding(qs, b);
        else
            rc = 1;
    }
    if (rc == 1)
        sl_report(SL_WARN, "queues", "binding of %s to %s skipped: one of them is gone", queue,
                  exchange);
    else if (rc == SL_ECORRUPT)
        sl_report(SL_ERROR, "queues", "skipping a malformed binding");
    if (rc)
        free_binding(b);
    return rc == -ENOMEM ? rc : 0;
}

int sl_queues_open(sl_log_t *log, sl_state_t *state, sl_queues_t **out)
{
    sl_queues_t *qs = sl_calloc(1, sizeof *qs);
    if (!qs)
        return sl_error_set(-ENOMEM, "queues: out of memory");
    qs->log = log;
    qs->state = state;
    qs->last_tick_ms = sl_log_now(log);
    pthread_mutex_init(&qs->lock, NULL);
    int rc = sl_state_database(state, SL_QUEUES_DATABASE, &qs->dbi);
    if (rc == 0)
        rc = walk(qs, 'E', load_exchange);
    if (rc == 0)
        rc = walk(qs, 'Q', load_queue);
    if (rc == 0)
        rc = walk(qs, 'B', load_binding);
    if (rc) {
        sl_queues_close(qs);
        return rc;
    }
    *out = qs;
    return 0;
}

void sl_queues_close(sl_queues_t *qs)
{
    if (!qs)
        return;
    for (size_t i = 0; i < qs->binding_count; i++)
        free_binding(qs->bindings[i]);
    for (size_t i = 0; i < qs->exchange_count; i++) {
        sl_free(qs->exchanges[i]->bindings);
        sl_free(qs->exchanges[i]);
    }
    for (size_t i = 0; i < qs->queue_slots; i++)
        if (qs->queues[i]) {
            sl_queue_release(qs, qs->queues[i]);
            sl_free(qs->queues[i]);
        }
    sl_free(qs->bindings);
    sl_free(qs->exchanges);
    sl_free(qs->queues);
    sl_free(qs->consumers);
    sl_free(qs->leases);
    pthread_mutex_destroy(&qs->lock);
    sl_free(qs);
}

/* ---- exchanges --------------------------------------------------------- */

/* Begins a write transaction and locks the registry. */
static int begin(sl_queues_t *qs, MDB_txn **txn)
{
    int rc = sl_state_begin(qs->state, 1, txn);
    if (rc == 0)
        pthread_mutex_lock(&qs->lock);
    return rc;
}

/* Aborts (nothing was written) and unlocks; returns verdict. */
static int give_up(sl_queues_t *qs, MDB_txn *txn, int verdict)
{
    mdb_txn_abort(txn);
    pthread_mutex_unlock(&qs->lock);
    return verdict;
}

int sl_queues_declare_exchange(sl_queues_t *qs, const char *name, sl_exchange_type_t type)
{
    uint8_t key[1 + SL_QUEUE_NAME_MAX], value = (uint8_t)type;
    MDB_txn *txn;
    int rc = sl_queue_name_check("exchange", name);
    if (rc || (rc = begin(qs, &txn)))
        return rc;
    sl_exchange_t *e = find_exchange(qs, name, NULL);
    if (e && e->type != type)
        rc = sl_error_set(SL_EEXISTS, "exchange %s exists with type %s, not %s", name,
                          sl_exchange_type_name(e->type), sl_exchange_type_name(type));
    if (e)
        return give_up(qs, txn, rc);
    rc = sl_queue_put(qs, txn, key, name_key(key, 'E', name), &value, 1);
    if (rc == 0)
        rc = sl_state_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0)
        rc = insert_exchange(qs, name, type);
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

int sl_queues_delete_exchange(sl_queues_t *qs, const char *name)
{
    uint8_t key[1 + SL_QUEUE_NAME_MAX];
    MDB_txn *txn;
    size_t at = 0;
    int rc = sl_queue_name_check("exchange", name);
    if (rc || (rc = begin(qs, &txn)))
        return rc;
    sl_exchange_t *e = find_exchange(qs, name, NULL);
    if (!e)
        return give_up(qs, txn, sl_error_set(SL_ENOTFOUND, "no exchange %s", name));
    rc = sl_queue_put(qs, txn, key, name_key(key, 'E', name), NULL, 0);
    for (size_t i = 0; rc == 0 && i < e->binding_count; i++)
        rc = delete_binding_entry(qs, txn, e->bindings[i]);
    if (rc == 0 && (rc = sl_state_commit(txn)) == 0) {
        while (e->binding_count)
            unlink_binding(qs, e->bindings[0]);
        find_exchange(qs, name, &at);
        while (qs->exchanges[at] != e)
            at++;
        memmove(qs->exchanges + at, qs->exchanges + at + 1,
                (qs->exchange_count - at - 1) * sizeof *qs->exchanges);
        qs->exchange_count--;
        sl_free(e->bindings);
        sl_free(e);
    } else if (rc) {
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

/* ---- queues ------------------------------------------------------------ */

static int check_options(const char *name, const sl_queue_options_t *o)
{
    if (o->max_priority < 0 || o->max_priority > SL_QUEUE_PRIORITY_MAX)
        return sl_error_set(SL_EINVALID, "MAXPRIORITY must be 0 to %d", SL_QUEUE_PRIORITY_MAX);
    if (o->ttl_ms < -1 || o->max_length < -1 || o->max_deliveries < 0)
        return sl_error_set(SL_EINVALID, "TTL, MAXLEN and MAXDELIVERIES must not be negative");
    if (o->lease_ms <= 0)
        return sl_error_set(SL_EINVALID, "LEASE must be positive");
    if (o->segment_bytes < 4096)
        return sl_error_set(SL_EINVALID, "queue segments must be at least 4096 bytes");
    if (o->dead_letter[0] && sl_queue_name_check("dead-letter queue", o->dead_letter))
        return SL_EINVALID;
    if (!strcmp(o->dead_letter, name))
        return sl_error_set(SL_EINVALID, "queue %s cannot be its own dead-letter queue", name);
    return 0;
}

/* An option's value as QUEUE DECLARE spells it: -1 is "none". */
static const char *option_text(long long v, char *buf, size_t size)
{
    if (v < 0)
        return "none";
    snprintf(buf, size, "%lld", v);
    return buf;
}

/* 0 if a and b are equal, else SL_EEXISTS naming the first difference. */
static int compare_options(const char *name, const sl_queue_options_t *a,
                           const sl_queue_options_t *b)
{
    static const char *const overflow[] = {"drop-head", "reject-publish"};
    const char *what = NULL;
    long long was = 0, asked = 0;
    char was_text[32], asked_text[32];
    if (a->max_priority != b->max_priority)
        what = "MAXPRIORITY", was = a->max_priority, asked = b->max_priority;
    else if (a->ttl_ms != b->ttl_ms)
        what = "TTL", was = a->ttl_ms, asked = b->ttl_ms;
    else if (a->max_length != b->max_length)
        what = "MAXLEN", was = a->max_length, asked = b->max_length;
    else if (a->max_deliveries != b->max_deliveries)
        what = "MAXDELIVERIES", was = a->max_deliveries ? a->max_deliveries : -1,
        asked = b->max_deliveries ? b->max_deliveries : -1;
    else if (a->lease_ms != b->lease_ms)
        what = "LEASE", was = a->lease_ms, asked = b->lease_ms;
    else if (a->segment_bytes != b->segment_bytes)
        what = "segment size", was = a->segment_bytes, asked = b->segment_bytes;
    if (what)
        return sl_error_set(SL_EEXISTS,
                            "queue %s exists with %s %s, not %s; delete it first to change it",
                            name, what, option_text(was, was_text, sizeof was_text),
                            option_text(asked, asked_text, sizeof asked_text));
    if (a->overflow != b->overflow)
        return sl_error_set(SL_EEXISTS, "queue %s exists with OVERFLOW %s, not %s", name,
                            overflow[a->overflow], overflow[b->overflow]);
    if (strcmp(a->dead_letter, b->dead_letter))
        return sl_error_set(SL_EEXISTS, "queue %s exists with DEADLETTER '%s', not '%s'", name,
                            a->dead_letter, b->dead_letter);
    return 0;
}

/* The existing declaration's verdict (0 or SL_EEXISTS), or 1 if none. */
static int existing_queue(sl_queues_t *qs, const char *name, const sl_queue_options_t *o)
{
    sl_queue_t *q = sl_queues_find(qs, name);
    return q ? compare_options(name, &q->options, o) : 1;
}

/* Replaces a log left without a declaration (a crash mid-way, or a
 * declaration that failed) and creates the queue's log. */
static int fresh_log(sl_queues_t *qs, const char *name, const sl_queue_options_t *o)
{
    char topic[SL_TOPIC_NAME_MAX + 1];
    topic_name(topic, sizeof topic, name);
    int rc = sl_log_topic(qs->log, topic) ? sl_log_delete_topic(qs->log, topic) : 0;
    return rc ? rc : create_log(qs, name, o);
}

static int add_queue(sl_queues_t *qs, MDB_txn *txn, const char *name, const sl_queue_options_t *o)
{
    uint8_t key[1 + SL_QUEUE_NAME_MAX], value[OPTIONS_FIXED + SL_QUEUE_NAME_MAX];
    sl_queue_t *q = sl_calloc(1, sizeof *q);
    if (!q)
        return sl_error_set(-ENOMEM, "queues: out of memory declaring %s", name);
    snprintf(q->name, sizeof q->name, "%s", name);
    q->options = *o;
    int rc = sl_queue_put(qs, txn, key, name_key(key, 'Q', name), value, encode_options(o, value));
    if (rc == 0)
        rc = delete_queue_state(qs, txn, name); /* leftovers of a failed declaration */
    if (rc == 0)
        rc = sl_state_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0 && (rc = insert_queue(qs, q)) == 0 && (rc = sl_queue_recover(qs, q)) != 0) {
        qs->queues[q->slot] = NULL;
        sl_queue_release(qs, q);
    }
    if (rc)
        sl_free(q);
    return rc;
}

int sl_queues_declare_queue(sl_queues_t *qs, const char *name, const sl_queue_options_t *o)
{
    MDB_txn *txn;
    int rc = sl_queue_name_check("queue", name);
    if (rc || (rc = check_options(name, o)))
        return rc;
    pthread_mutex_lock(&qs->lock);
    rc = existing_queue(qs, name, o);
    pthread_mutex_unlock(&qs->lock);
    if (rc != 1)
        return rc;
    if ((rc = fresh_log(qs, name, o)) || (rc = begin(qs, &txn)))
        return rc;
    rc = existing_queue(qs, name, o); /* declared meanwhile by another thread? */
    if (rc != 1)
        return give_up(qs, txn, rc);
    rc = add_queue(qs, txn, name, o);
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

/* Forgets a deleted queue and its bindings. Registry locked. */
static void remove_queue(sl_queues_t *qs, sl_queue_t *q)
{
    for (size_t i = qs->binding_count; i-- > 0;)
        if (qs->bindings[i]->queue == q)
            unlink_binding(qs, qs->bindings[i]);
    qs->queues[q->slot] = NULL;
    sl_queue_release(qs, q);
    sl_free(q);
}

int sl_queues_delete_queue(sl_queues_t *qs, const char *name)
{
    uint8_t key[1 + SL_QUEUE_NAME_MAX];
    char topic[SL_TOPIC_NAME_MAX + 1];
    MDB_txn *txn;
    int rc = sl_queue_name_check("queue", name);
    if (rc || (rc = begin(qs, &txn)))
        return rc;
    sl_queue_t *q = sl_queues_find(qs, name);
    if (!q)
        return give_up(qs, txn, sl_error_set(SL_ENOTFOUND, "no queue %s", name));
    rc = sl_queue_put(qs, txn, key, name_key(key, 'Q', name), NULL, 0);
    if (rc == 0)
        rc = delete_queue_state(qs, txn, name);
    for (size_t i = 0; rc == 0 && i < qs->binding_count; i++)
        if (qs->bindings[i]->queue == q)
            rc = delete_binding_entry(qs, txn, qs->bindings[i]);
    if (rc == 0)
        rc = sl_state_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0)
        remove_queue(qs, q);
    pthread_mutex_unlock(&qs->lock);
    topic_name(topic, sizeof topic, name);
    if (rc == 0 && sl_log_delete_topic(qs->log, topic))
        sl_report(SL_WARN, "queues", "queue %s deleted but not its log: %s", name,
                  sl_error_detail());
    return rc;
}

/* ---- bindings ---------------------------------------------------------- */

static int check_binding(sl_queues_t *qs, const char *exchange, const char *queue,
                         size_t pattern_len, const sl_header_t *args, size_t nargs,
                         sl_exchange_t **e, sl_queue_t **q)
{
    *e = find_exchange(qs, exchange, NULL);
    *q = sl_queues_find(qs, queue);
    if (!*e)
        return sl_error_set(SL_ENOTFOUND, "no exchange %s", exchange);
    if (!*q)
        return sl_error_set(SL_ENOTFOUND, "no queue %s", queue);
    return sl_exchange_binding_check((*e)->type, pattern_len, args, nargs);
}

static int new_binding(sl_queues_t *qs, MDB_txn *txn, sl_exchange_t *e, sl_queue_t *q,
                       const char *pattern, size_t pattern_len, const sl_header_t *args,
                       size_t nargs)
{
    size_t size = binding_size(e->name, q->name, pattern_len, args, nargs);
    uint8_t key[5] = {'B'}, *value = sl_malloc(size);
    sl_binding_t *b = sl_calloc(1, sizeof *b);
    MDB_val v = {size, value};
    const char *exchange, *queue;
    int rc = value && b ? 0 : -ENOMEM;
    if (rc == 0) {
        b->id = qs->next_binding_id++;
        sl_queue_put_be(key + 1, b->id, 4);
        encode_binding(value, e->name, q->name, pattern, pattern_len, args, nargs);
        rc = decode_binding(&v, b, &exchange, &queue);
    }
    if (rc == 0)
        rc = sl_queue_put(qs, txn, key, sizeof key, value, size);
    if (rc == 0)
        rc = sl_state_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0) {
        b->exchange = e;
        b->queue = q;
        rc = link_binding(qs, b);
    }
    if (rc)
        free_binding(b);
    sl_free(value);
    return rc;
}

int sl_queues_bind(sl_queues_t *qs, const char *exchange, const char *queue, const char *pattern,
                   size_t pattern_len, const sl_header_t *args, size_t nargs)
{
    MDB_txn *txn;
    sl_exchange_t *e;
    sl_queue_t *q;
    int rc = begin(qs, &txn);
    if (rc)
        return rc;
    if ((rc = check_binding(qs, exchange, queue, pattern_len, args, nargs, &e, &q)))
        return give_up(qs, txn, rc);
    if (find_binding(qs, e, q, pattern, pattern_len, args, nargs))
        return give_up(qs, txn, 0);
    rc = new_binding(qs, txn, e, q, pattern, pattern_len, args, nargs);
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

int sl_queues_unbind(sl_queues_t *qs, const char *exchange, const char *queue, const char *pattern,
                     size_t pattern_len, const sl_header_t *args, size_t nargs)
{
    MDB_txn *txn;
    sl_exchange_t *e;
    sl_queue_t *q;
    int rc = begin(qs, &txn);
    if (rc)
        return rc;
    if ((rc = check_binding(qs, exchange, queue, pattern_len, args, nargs, &e, &q)))
        return give_up(qs, txn, rc);
    sl_binding_t *b = find_binding(qs, e, q, pattern, pattern_len, args, nargs);
    if (!b)
        return give_up(qs, txn,
                       sl_error_set(SL_ENOTFOUND, "no such binding of %s to %s", queue, exchange));
    rc = delete_binding_entry(qs, txn, b);
    if (rc == 0)
        rc = sl_state_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0)
        unlink_binding(qs, b);
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

/* ---- listing ----------------------------------------------------------- */

int sl_queues_foreach_exchange(sl_queues_t *qs,
                               int (*fn)(void *arg, const char *name, sl_exchange_type_t type,
                                         int64_t unroutable),
                               void *arg)
{
    pthread_mutex_lock(&qs->lock);
    int rc = fn(arg, "", SL_EXCHANGE_DIRECT, qs->default_unroutable);
    for (size_t i = 0; rc == 0 && i < qs->exchange_count; i++)
        rc = fn(arg, qs->exchanges[i]->name, qs->exchanges[i]->type, qs->exchanges[i]->unroutable);
    pthread_mutex_unlock(&qs->lock);
    return rc;
}

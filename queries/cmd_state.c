/*
 * cmd_state.c - state queries: GET, WINDOWS and SCAN over the pipelines'
 * state stores (DESIGN.md sections 7, 8 and 10; storage.h, "state stores
 * and commits").
 *
 * A store is named "<pipeline>.<store>" (sl_store_name()). The server opens
 * a store by that name the first time a command asks for it
 * (sl_store_open_existing) and keeps the handle until it is freed; a read
 * that fails in LMDB drops the handle, so the next command opens the store
 * afresh (and answers NOTFOUND if it is gone). Each command reads in one
 * LMDB read transaction of its own: it sees one committed state, and LMDB
 * readers never wait for the writer, so queries go on while pipelines
 * commit.
 *
 * Values are shown through the runtime's renderer (queries.h) as JSON; a
 * store no running pipeline owns, or a value its renderer cannot read, is
 * shown as stored.
 *
 * SCAN's cursor is "0" (start, and the end of the walk) or a decimal
 * integer that encodes the store key the next call starts at (see
 * "cursors" below): entries are walked in store-key order, so an entry present for the whole walk
 * is returned exactly once, whatever is written meanwhile. MATCH takes a key prefix: the walk
 * starts at the prefix and ends after the last key having it. COUNT bounds the entries a call looks
 * at (Redis's rule: a call may return fewer, even none, and still give a cursor to go on with).
 */
#include "queries/server.h"
#include "storage/state.h"

#include <errno.h>
#include <string.h>

#define SCAN_COUNT_DEFAULT 10
#define SCAN_COUNT_MAX     1000
#define REPLY_BYTES_MAX    ((size_t)64 << 20) /* WINDOWS refuses, SCAN stops, past this */
#define WINDOWS_MAX        100000             /* windows in one WINDOWS reply */
#define NO_END             INT64_MIN          /* a window's end is not known */

struct sl_open_stores {
    sl_store_t **list;
    size_t count, cap;
    sl_buf_t json; /* the value being rendered */
};

/* One command's read. */
typedef struct query {
    sl_request_t *req;
    sl_store_t *store;
    MDB_txn *txn;
    void *view;       /* the renderer's, NULL: values as stored */
    sl_reply_t items; /* WINDOWS and SCAN collect their items here */
    size_t count;     /* items collected */
    int render_rc;    /* a renderer failure that stopped a walk */
} query_t;

void sl_open_stores_free(struct sl_open_stores *stores)
{
    if (!stores)
        return;
    for (size_t i = 0; i < stores->count; i++)
        sl_store_close(stores->list[i]);
    sl_free(stores->list);
    sl_buf_free(&stores->json);
    sl_free(stores);
}

/* ---- opening stores ---------------------------------------------------- */

static sl_store_t *cached_store(struct sl_open_stores *stores, const char *name)
{
    for (size_t i = 0; stores && i < stores->count; i++)
        if (!strcmp(sl_store_name(stores->list[i]), name))
            return stores->list[i];
    return NULL;
}

/* Forgets a handle whose reads failed: the next command opens it again. */
static void forget_store(sl_server_t *s, sl_store_t *store)
{
    struct sl_open_stores *stores = s->stores;
    for (size_t i = 0; i < stores->count; i++)
        if (stores->list[i] == store) {
            stores->list[i] = stores->list[--stores->count];
            sl_store_close(store);
            return;
        }
}

static int keep_store(sl_server_t *s, sl_store_t *store)
{
    if (!s->stores && !(s->stores = sl_calloc(1, sizeof *s->stores)))
        return -ENOMEM;
    struct sl_open_stores *stores = s->stores;
    if (sl_array_reserve((void **)&stores->list, &stores->cap, stores->count + 1,
                         sizeof *stores->list))
        return -ENOMEM;
    stores->list[stores->count++] = store;
    return 0;
}

/* The store argv[1] names, opened and kept; NULL after an error reply. */
static sl_store_t *find_store(sl_request_t *req)
{
    char name[SL_TOPIC_NAME_MAX + 1];
    sl_store_t *store;
    if (sl_arg_name(&req->argv[1], name, sizeof name)) {
        sl_request_error(req, "store name is over %d bytes or holds a NUL byte",
                         SL_TOPIC_NAME_MAX - 10);
        return NULL;
    }
    if ((store = cached_store(req->server->stores, name)))
        return store;
    int rc = sl_store_open_existing(req->server->state, name, &store);
    if (rc == SL_ENOTFOUND || rc == SL_EINVALID) /* no store can have an invalid name */
        sl_request_error(req, "NOTFOUND no store '%s' (stores are named <pipeline>.<store>)", name);
    else if (rc)
        sl_request_error(req, "%s", sl_error_detail());
    else if ((rc = keep_store(req->server, store))) {
        sl_store_close(store);
        sl_request_error(req, "out of memory opening store '%s'", name);
    }
    return rc ? NULL : store;
}

/* ---- one read ---------------------------------------------------------- */

static const char *kind_hint(sl_store_kind_t kind)
{
    return kind == SL_STORE_WINDOW ? "a window store: read it with WINDOWS store key from to"
                                   : "a kv store: read it with GET store key";
}

/* Opens the store of argv[1] (of kind `want`, 0: either), a read
 * transaction and the renderer's view. SL_DONE after an error reply. */
static int begin_query(sl_request_t *req, sl_store_kind_t want, query_t *q)
{
    sl_server_t *s = req->server;
    *q = (query_t){.req = req, .items = {s->scratch, req->reply.resp3}};
    if (!(q->store = find_store(req)))
        return SL_DONE;
    if (want && sl_store_kind(q->store) != want)
        return sl_request_error(req, "WRONGTYPE store '%s' is %s", sl_store_name(q->store),
                                kind_hint(sl_store_kind(q->store)));
    sl_store_views_lock(s->state);
    int rc = sl_state_begin(s->state, 0, &q->txn);
    if (rc == 0)
        sl_store_view_take(q->store, q->txn);
    sl_store_views_unlock(s->state);
    if (rc)
        return sl_request_error(req, "cannot read the state: %s", sl_error_detail());
    if (s->renderer &&
        (rc = s->renderer->open(s->renderer_arg, sl_store_name(q->store), &q->view)) != 0 &&
        rc != SL_ENOTFOUND) {
        mdb_txn_abort(q->txn);
        return sl_request_error(req, "cannot show store '%s': %s", sl_store_name(q->store),
                                sl_strerror(rc));
    }
    evbuffer_drain(s->scratch, evbuffer_get_length(s->scratch));
    return -1;
}

static void end_query(query_t *q)
{
    if (q->view)
        q->req->server->renderer->close(q->view);
    if (q->store)
        sl_store_read_done(q->store);
    mdb_txn_abort(q->txn);
}

/* The error reply for a read that failed with rc (not a missing key). A
 * renderer failure is reported as such; an LMDB failure also drops the
 * store's handle. Returns SL_DONE. */
static int read_failed(query_t *q, int rc)
{
    char name[SL_TOPIC_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", sl_store_name(q->store));
    if (q->render_rc)
        return sl_request_error(q->req, "cannot show store '%s': %s", name,
                                sl_strerror(q->render_rc));
    forget_store(q->req->server, q->store);
    q->store = NULL; /* closed */
    return sl_request_error(q->req, "reading store '%s' failed: %s", name,
                            rc == SL_EINVALID ? sl_error_detail() : sl_strerror(rc));
}

/* Renders a value; *data and *len are then what to reply: its JSON, or the
 * stored bytes if no renderer can read it. 0 or the renderer's error. */
static int render(query_t *q, const void *value, size_t len, int64_t window_start,
                  int64_t *window_end, const void **data, size_t *n)
{
    sl_buf_t *json = &q->req->server->stores->json;
    *data = value;
    *n = len;
    if (!q->view)
        return 0;
    json->len = 0;
    int rc = q->req->server->renderer->render(q->view, value, len, window_start, window_end, json);
    if (rc == 0) {
        *data = json->data;
        *n = json->len;
    }
    return rc == SL_ECORRUPT ? 0 : rc;
}

/* The key argument, checked against the store's key limits; -1 after an
 * error reply. */
static int check_key_arg(query_t *q, const sl_resp_arg_t *key)
{
    if (sl_store_check_key(q->store, key->len) == 0)
        return 0;
    sl_request_error(q->req, "%s", sl_error_detail());
    return -1;
}

/* ---- GET --------------------------------------------------------------- */

static void reply_value(query_t *q, const sl_resp_arg_t *key)
{
    const void *value, *data;
    size_t len, n;
    int64_t end = NO_END;
    int rc = sl_store_get(q->store, q->txn, key->data, key->len, &value, &len);
    if (rc == SL_ENOTFOUND)
        sl_reply_null(&q->req->reply);
    else if (rc == 0 && (q->render_rc = render(q, value, len, 0, &end, &data, &n)) == 0)
        sl_reply_bulk(&q->req->reply, data, n);
    else
        read_failed(q, rc);
}

/* GET store key -> the JSON of key's value in a kv store as a bulk string,
 * or nil if key has none. */
int sl_cmd_get(sl_request_t *req)
{
    query_t q;
    if (begin_query(req, SL_STORE_KV, &q) == SL_DONE)
        return SL_DONE;
    if (check_key_arg(&q, &req->argv[2]) == 0)
        reply_value(&q, &req->argv[2]);
    end_query(&q);
    return SL_DONE;
}

/* ---- WINDOWS ----------------------------------------------------------- */

static int add_window(void *arg, int64_t start, const void *value, size_t len)
{
    query_t *q = arg;
    const void *data;
    size_t n;
    int64_t end = NO_END;
    if (q->count == WINDOWS_MAX || evbuffer_get_length(q->items.out) > REPLY_BYTES_MAX)
        return 1;
    if ((q->render_rc = render(q, value, len, start, &end, &data, &n)))
        return q->render_rc;
    sl_reply_array(&q->items, end == NO_END ? 2 : 3);
    sl_reply_int(&q->items, start);
    if (end != NO_END)
        sl_reply_int(&q->items, end);
    sl_reply_bulk(&q->items, data, n);
    q->count++;
    return 0;
}

static int parse_range(sl_request_t *req, int64_t *from, int64_t *to)
{
    if (sl_arg_int(&req->argv[3], INT64_MIN, INT64_MAX, from))
        return sl_request_error(req, "from must be an integer (a window start in ms)");
    if (sl_arg_int(&req->argv[4], INT64_MIN, INT64_MAX, to))
        return sl_request_error(req, "to must be an integer (a window start in ms)");
    return -1;
}

static void reply_windows(query_t *q, const sl_resp_arg_t *key, int64_t from, int64_t to)
{
    sl_request_t *req = q->req;
    int rc = sl_store_windows(q->store, q->txn, key->data, key->len, from, to, add_window, q);
    if (rc == 1)
        sl_request_error(req,
                         "more than %d windows or %zu MiB of key in [%lld, %lld]; ask for a "
                         "narrower range",
                         WINDOWS_MAX, REPLY_BYTES_MAX >> 20, (long long)from, (long long)to);
    else if (rc)
        read_failed(q, rc);
    else {
        sl_reply_array(&req->reply, q->count);
        evbuffer_add_buffer(req->reply.out, q->items.out);
    }
}

/* WINDOWS store key from to -> [[window_start, window_end, value], ...]
 * for key's windows with from <= window_start <= to, in start order
 * ([window_start, value] when the end is not known). */
int sl_cmd_windows(sl_request_t *req)
{
    int64_t from, to;
    query_t q;
    if (parse_range(req, &from, &to) == SL_DONE || begin_query(req, SL_STORE_WINDOW, &q) == SL_DONE)
        return SL_DONE;
    if (check_key_arg(&q, &req->argv[2]) == 0)
        reply_windows(&q, &req->argv[2], from, to);
    end_query(&q);
    return SL_DONE;
}

/* ---- SCAN -------------------------------------------------------------- */

enum { PAGE_FULL = 1, PAST_PREFIX = 2 };

typedef struct scan {
    query_t *q;
    const sl_resp_arg_t *prefix; /* NULL: every key */
    int64_t count, examined;
    uint8_t next[SL_STORE_KEY_MAX]; /* where the next call starts */
    size_t next_len;
} scan_t;

/* 1 if key[0..len) starts with the MATCH prefix (or there is none). */
static int has_prefix(const scan_t *sc, const void *key, size_t len)
{
    return !sc->prefix ||
           (len >= sc->prefix->len && !memcmp(key, sc->prefix->data, sc->prefix->len));
}

static int add_entry(query_t *q, const void *key, size_t key_len, int window, int64_t start,
                     const void *value, size_t len)
{
    const void *data;
    size_t n;
    int64_t end = NO_END;
    if ((q->render_rc = render(q, value, len, start, &end, &data, &n)))
        return q->render_rc;
    sl_reply_bulk(&q->items, key, key_len);
    if (window)
        sl_reply_int(&q->items, start);
    sl_reply_bulk(&q->items, data, n);
    q->count++;
    return 0;
}

static int scan_entry(void *arg, const void *store_key, size_t len, const void *value,
                      size_t value_len)
{
    scan_t *sc = arg;
    size_t key_len = len;
    int64_t start = 0;
    int window = sl_store_kind(sc->q->store) == SL_STORE_WINDOW;
    if (!has_prefix(sc, store_key, len))
        return PAST_PREFIX;
    if (sc->examined == sc->count || evbuffer_get_length(sc->q->items.out) > REPLY_BYTES_MAX) {
        memcpy(sc->next, store_key, len);
        sc->next_len = len;
        return PAGE_FULL;
    }
    sc->examined++;
    if (window && sl_store_window_split(store_key, len, &key_len, &start))
        return 0; /* not a window entry: nothing to show */
    if (!has_prefix(sc, store_key, key_len))
        return 0; /* the prefix runs into the window's bytes */
    return add_entry(sc->q, store_key, key_len, window, start, value, value_len);
}

/* ---- cursors ----------------------------------------------------------
 *
 * A cursor is the unsigned decimal integer whose big-endian bytes are 0x01
 * followed by the store key to start at: an integer, as Redis's cursors
 * are (redis-py turns SCAN's cursor into an int), so clients hand it back
 * unchanged; the 0x01 keeps the key's leading zero bytes and keeps every
 * cursor but the start/end "0" above zero. A key of up to 511 bytes makes
 * up to 1234 digits. The conversions work on little-endian 32-bit limbs,
 * nine decimal digits at a time.
 */

#define CURSOR_BYTES  (SL_STORE_KEY_MAX + 1)
#define CURSOR_LIMBS  ((CURSOR_BYTES + 3) / 4)
#define CURSOR_DIGITS 1234 /* CURSOR_BYTES * log10(256), rounded up */
#define BILLION       1000000000u

/* Writes the cursor of key[0..len) into text (CURSOR_DIGITS + 1 bytes);
 * returns its length. */
static size_t cursor_text(const uint8_t *key, size_t len, char *text)
{
    uint32_t limbs[CURSOR_LIMBS] = {0}, groups[CURSOR_DIGITS / 9 + 1];
    size_t used = (len + 1 + 3) / 4, count = 0, n = 0;
    for (size_t i = 0; i <= len; i++) { /* byte i of 0x01 || key, from the end */
        uint8_t b = i < len ? key[len - 1 - i] : 1;
        limbs[i / 4] |= (uint32_t)b << (8 * (i % 4));
    }
    while (used) { /* divide by 10^9, keeping the remainders */
        uint64_t rest = 0;
        for (size_t i = used; i-- > 0;) {
            uint64_t v = rest << 32 | limbs[i];
            limbs[i] = (uint32_t)(v / BILLION);
            rest = v % BILLION;
        }
        groups[count++] = (uint32_t)rest;
        while (used && !limbs[used - 1])
            used--;
    }
    n = (size_t)snprintf(text, 16, "%u", groups[--count]);
    while (count)
        n += (size_t)snprintf(text + n, 16, "%09u", groups[--count]);
    return n;
}

/* Multiplies the number in limbs by scale and adds add; -1 on overflow. */
static int limbs_mul_add(uint32_t *limbs, uint32_t scale, uint32_t add)
{
    uint64_t carry = add;
    for (size_t i = 0; i < CURSOR_LIMBS; i++) {
        uint64_t v = (uint64_t)limbs[i] * scale + carry;
        limbs[i] = (uint32_t)v;
        carry = v >> 32;
    }
    return carry ? -1 : 0;
}

/* Reads a cursor argument into the key it starts at (*len 0 for "0").
 * 0, or -1 for anything that is not a cursor SCAN gave. */
static int parse_cursor(const sl_resp_arg_t *a, uint8_t *key, size_t *len)
{
    uint32_t limbs[CURSOR_LIMBS] = {0};
    uint8_t bytes[CURSOR_LIMBS * 4];
    *len = 0;
    if (a->len == 1 && a->data[0] == '0')
        return 0;
    if (a->len == 0 || a->len > CURSOR_DIGITS || a->data[0] == '0')
        return -1;
    for (size_t at = 0; at < a->len;) {
        uint32_t group = 0, scale = 1;
        for (size_t end = at + 9 < a->len ? at + 9 : a->len; at < end; at++, scale *= 10) {
            if (a->data[at] < '0' || a->data[at] > '9')
                return -1;
            group = group * 10 + (uint32_t)(a->data[at] - '0');
        }
        if (limbs_mul_add(limbs, scale, group))
            return -1;
    }
    size_t n = 0, first = sizeof bytes;
    for (size_t i = 0; i < sizeof bytes; i++) { /* big-endian, leading zeros dropped */
        bytes[sizeof bytes - 1 - i] = (uint8_t)(limbs[i / 4] >> (8 * (i % 4)));
        if (bytes[sizeof bytes - 1 - i])
            first = sizeof bytes - 1 - i;
    }
    n = sizeof bytes - first;
    if (n < 2 || n > CURSOR_BYTES || bytes[first] != 1)
        return -1;
    memcpy(key, bytes + first + 1, n - 1);
    *len = n - 1;
    return 0;
}

/* [MATCH prefix] [COUNT n] from argv[3] on. SL_DONE after an error reply. */
static int parse_scan_options(sl_request_t *req, scan_t *sc)
{
    sc->count = SCAN_COUNT_DEFAULT;
    for (size_t i = 3; i < req->argc; i += 2) {
        if (i + 1 >= req->argc)
            return sl_request_error(req, "syntax error: SCAN store cursor [MATCH prefix] "
                                         "[COUNT n]");
        if (sl_arg_is(&req->argv[i], "MATCH") && req->argv[i + 1].len <= SL_STORE_KEY_MAX)
            sc->prefix = req->argv[i + 1].len ? &req->argv[i + 1] : NULL;
        else if (sl_arg_is(&req->argv[i], "MATCH"))
            return sl_request_error(req, "MATCH prefix is over %d bytes (the longest key)",
                                    SL_STORE_KEY_MAX);
        else if (!sl_arg_is(&req->argv[i], "COUNT"))
            return sl_request_error(req, "syntax error: SCAN store cursor [MATCH prefix] "
                                         "[COUNT n]");
        else if (sl_arg_int(&req->argv[i + 1], 1, SCAN_COUNT_MAX, &sc->count))
            return sl_request_error(req, "COUNT must be 1 to %d", SCAN_COUNT_MAX);
    }
    return -1;
}

/* The walk's start: the cursor's key, or the prefix if that sorts after
 * it (LMDB's order: bytes, then length). */
static void scan_start(const scan_t *sc, uint8_t *from, size_t *from_len)
{
    const sl_resp_arg_t *p = sc->prefix;
    if (!p)
        return;
    size_t n = *from_len < p->len ? *from_len : p->len;
    int c = memcmp(p->data, from, n);
    if (c > 0 || (c == 0 && p->len > *from_len)) {
        memcpy(from, p->data, p->len);
        *from_len = p->len;
    }
}

static void reply_cursor(sl_reply_t *r, const uint8_t *key, size_t len)
{
    char text[CURSOR_DIGITS + 16];
    if (len)
        sl_reply_bulk(r, text, cursor_text(key, len, text));
    else
        sl_reply_cstr(r, "0");
}

/* SCAN store cursor [MATCH prefix] [COUNT n] -> [next cursor, [key, value,
 * ...]] ([key, window_start, value, ...] for a window store). */
int sl_cmd_scan(sl_request_t *req)
{
    uint8_t from[SL_STORE_KEY_MAX];
    size_t from_len;
    query_t q;
    scan_t sc = {.q = &q};
    if (parse_cursor(&req->argv[2], from, &from_len))
        return sl_request_error(req, "invalid cursor: \"0\" or a cursor SCAN returned");
    if (parse_scan_options(req, &sc) == SL_DONE || begin_query(req, 0, &q) == SL_DONE)
        return SL_DONE;
    scan_start(&sc, from, &from_len);
    int rc = sl_store_foreach_from(q.store, q.txn, from, from_len, scan_entry, &sc);
    if (rc < 0) {
        read_failed(&q, rc);
    } else {
        sl_reply_array(&req->reply, 2);
        reply_cursor(&req->reply, sc.next, rc == PAGE_FULL ? sc.next_len : 0);
        sl_reply_array(&req->reply, q.count * (sl_store_kind(q.store) == SL_STORE_WINDOW ? 3 : 2));
        evbuffer_add_buffer(req->reply.out, q.items.out);
    }
    end_query(&q);
    return SL_DONE;
}

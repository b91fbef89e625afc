/*
 * reply.h - writing RESP2 and RESP3 replies into a libevent buffer.
 *
 * Reply shapes are chosen so that a command's reply parses alike under both
 * protocols (DESIGN.md section 10): maps are flat arrays under RESP2 and `%`
 * maps under RESP3; null is `$-1` under RESP2 and `_` under RESP3.
 */
#ifndef SL_REPLY_H
#define SL_REPLY_H

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_reply {
    struct evbuffer *out;
    int resp3;
} sl_reply_t;

void sl_reply_simple(sl_reply_t *r, const char *text);   /* +text */
void sl_reply_error(sl_reply_t *r, const char *fmt, ...) /* -ERR ... or -PREFIX ... */
    __attribute__((format(printf, 2, 3)));
void sl_reply_int(sl_reply_t *r, int64_t v);                              /* :v */
void sl_reply_bulk(sl_reply_t *r, const void *data, size_t len);          /* $len data */
void sl_reply_cstr(sl_reply_t *r, const char *text);                      /* bulk of a C string */
void sl_reply_bulk_or_null(sl_reply_t *r, const void *data, int64_t len); /* len < 0: null */
void sl_reply_null(sl_reply_t *r);
void sl_reply_array(sl_reply_t *r, size_t count); /* then count replies */
void sl_reply_map(sl_reply_t *r, size_t pairs);   /* then 2 * pairs replies */

#endif

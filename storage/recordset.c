/*
 * recordset.c - a growable set of records owning copies of their bytes.
 *
 * While records are added, their key, value and header bytes go into one
 * byte buffer and their pointer fields hold offsets into it (the buffer
 * moves as it grows). sl_record_set_array() turns the offsets into pointers
 * once, when the set is complete.
 */
#include "storage/storage.h"

#include <errno.h>
#include <string.h>

/* Copies len bytes (none for null or empty) and returns their offset. */
static int keep(sl_record_set_t *s, const uint8_t *data, int32_t len, uintptr_t *at)
{
    *at = s->bytes_len;
    if (len <= 0)
        return 0;
    if (sl_array_reserve((void **)&s->bytes, &s->bytes_cap, s->bytes_len + (size_t)len, 1))
        return -ENOMEM;
    memcpy(s->bytes + s->bytes_len, data, (size_t)len);
    s->bytes_len += (size_t)len;
    return 0;
}

static int keep_headers(sl_record_set_t *s, const sl_record_t *r)
{
    if (sl_array_reserve((void **)&s->headers, &s->headers_cap, s->header_count + r->header_count,
                         sizeof *s->headers))
        return -ENOMEM;
    for (uint32_t i = 0; i < r->header_count; i++) {
        const sl_header_t *h = &r->headers[i];
        sl_header_t *c = &s->headers[s->header_count + i];
        uintptr_t name, value;
        if (keep(s, h->name, h->name_len, &name) || keep(s, h->value, h->value_len, &value))
            return -ENOMEM;
        *c =
            (sl_header_t){(const uint8_t *)name, h->name_len, (const uint8_t *)value, h->value_len};
    }
    return 0;
}

int sl_record_set_add(sl_record_set_t *s, const sl_record_t *r)
{
    uintptr_t key, value;
    size_t mark = s->bytes_len;
    if (sl_array_reserve((void **)&s->records, &s->records_cap, s->count + 1, sizeof *s->records) ||
        keep(s, r->key, r->key_len, &key) || keep(s, r->value, r->value_len, &value) ||
        keep_headers(s, r)) {
        s->bytes_len = mark;
        return -ENOMEM;
    }
    sl_record_t *c = &s->records[s->count++];
    *c = *r;
    c->key = (const uint8_t *)key;
    c->value = (const uint8_t *)value;
    c->headers = (const sl_header_t *)(uintptr_t)s->header_count;
    s->header_count += r->header_count;
    return 0;
}

sl_record_t *sl_record_set_array(sl_record_set_t *s)
{
    if (s->fixed || s->count == 0)
        return s->records;
    const uint8_t *base = (const uint8_t *)s->bytes;
    for (size_t i = 0; i < s->header_count; i++) {
        s->headers[i].name = base ? base + (uintptr_t)s->headers[i].name : NULL;
        s->headers[i].value = base ? base + (uintptr_t)s->headers[i].value : NULL;
    }
    for (size_t i = 0; i < s->count; i++) {
        sl_record_t *r = &s->records[i];
        r->key = base ? base + (uintptr_t)r->key : NULL;
        r->value = base ? base + (uintptr_t)r->value : NULL;
        r->headers = s->headers + (uintptr_t)r->headers;
    }
    s->fixed = 1;
    return s->records;
}

void sl_record_set_reset(sl_record_set_t *s)
{
    s->count = s->header_count = s->bytes_len = 0;
    s->fixed = 0;
}

void sl_record_set_free(sl_record_set_t *s)
{
    sl_free(s->records);
    sl_free(s->headers);
    sl_free(s->bytes);
    memset(s, 0, sizeof *s);
}

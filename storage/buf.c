/*
 * buf.c - growable byte buffer. Capacity doubles, so appends are amortised
 * O(1) and a buffer reused across batches stops allocating once warm.
 */
#include "storage/buf.h"
#include "storage/storage.h"

#include <errno.h>

int sl_buf_reserve(sl_buf_t *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    uint8_t *data = sl_realloc(b->data, cap);
    if (!data)
        return -ENOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

int sl_buf_append(sl_buf_t *b, const void *data, size_t n)
{
    int rc = sl_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

int sl_buf_json_string(const void *text, size_t len, sl_buf_t *out)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = text;
    int rc = sl_buf_append(out, "\"", 1);
    for (size_t i = 0; rc == 0 && i < len; i++) {
        char esc[6] = {'\\', 'u', '0', '0', hex[s[i] >> 4], hex[s[i] & 15]};
        if (s[i] == '"' || s[i] == '\\')
            rc = sl_buf_append(out, esc, 1) ? -ENOMEM : sl_buf_append(out, &s[i], 1);
        else if (s[i] < 0x20)
            rc = sl_buf_append(out, esc, 6);
        else
            rc = sl_buf_append(out, &s[i], 1);
    }
    return rc ? rc : sl_buf_append(out, "\"", 1);
}

void sl_buf_free(sl_buf_t *b)
{
    sl_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

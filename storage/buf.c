/*
 * buf.c - growable byte buffer. Capacity doubles, so appends are amortised
 * O(1) and a buffer reused across batches stops allocating once warm.
 */
#include "storage/buf.h"
#include "storage/storage.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

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

int sl_buf_json_string(const void *text, size_t len, sl_buf_t *out)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = text;
    if (len > (SIZE_MAX - 2) / 6 || sl_buf_reserve(out, 6 * len + 2)) /* each byte: 6 at most */
        return -ENOMEM;
    char *o = (char *)out->data + out->len, *start = o;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        size_t run = i; /* the bytes that go as they are, copied at once */
        while (run < len && s[run] >= 0x20 && s[run] != '"' && s[run] != '\\')
            run++;
        memcpy(o, s + i, run - i);
        o += run - i;
        if ((i = run) == len)
            break;
        if (s[i] == '"' || s[i] == '\\') {
            *o++ = '\\';
            *o++ = (char)s[i];
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[s[i] >> 4];
            o[5] = hex[s[i] & 15];
            o += 6;
        }
        i++;
    }
    *o++ = '"';
    out->len += (size_t)(o - start);
    return 0;
}

void sl_buf_free(sl_buf_t *b)
{
    sl_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

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

void sl_buf_free(sl_buf_t *b)
{
    sl_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

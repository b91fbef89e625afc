/*
 * buf.h - a growable byte buffer and the integer encodings of the log.
 *
 * Fixed-width integers in RecordBatch v2 are big-endian. Variable-length
 * integers are protobuf-style zigzag varints (Kafka's "varint" for 32-bit
 * and "varlong" for 64-bit values): 7 bits a byte, low groups first, high
 * bit set on every byte but the last.
 */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sl_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} sl_buf_t;

/* Makes room for extra more bytes. Returns 0 or -ENOMEM. */
int sl_buf_reserve(sl_buf_t *b, size_t extra);

/* Appends n bytes. Returns 0 or -ENOMEM. Inline: results and encodings
 * are built of many small appends, most of them of constant size. */
static inline int sl_buf_append(sl_buf_t *b, const void *data, size_t n)
{
    if (b->cap - b->len < n) {
        int rc = sl_buf_reserve(b, n);
        if (rc)
            return rc;
    }
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

/* Frees the storage and zeroes the buffer. */
void sl_buf_free(sl_buf_t *b);

/* Appends len bytes of text as a JSON string: quoted, with '"' and '\\'
 * escaped and control characters as \u00XX (other bytes as they are).
 * Returns 0 or -ENOMEM. */
int sl_buf_json_string(const void *text, size_t len, sl_buf_t *out);

static inline void sl_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void sl_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void sl_put_be64(uint8_t *p, uint64_t v)
{
    sl_put_be32(p, (uint32_t)(v >> 32));
    sl_put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t sl_get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t sl_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t sl_get_be64(const uint8_t *p)
{
    return ((uint64_t)sl_get_be32(p) << 32) | sl_get_be32(p + 4);
}

static inline uint64_t sl_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t sl_unzigzag(uint64_t z)
{
    return (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
}

/* Writes v as an unsigned varint (no zigzag) at p (room for 10 bytes);
 * returns bytes used. */
static inline size_t sl_put_uvarint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* The bytes sl_put_uvarint() writes for v. */
static inline size_t sl_uvarint_size(uint64_t v)
{
    size_t n = 1;
    for (; v >= 0x80; v >>= 7)
        n++;
    return n;
}

/* Writes v as a zigzag varint at p (room for 10 bytes); returns bytes used. */
static inline size_t sl_put_varlong(uint8_t *p, int64_t v)
{
    return sl_put_uvarint(p, sl_zigzag(v));
}

/* Reads a zigzag varint of at most max_bytes (5 for varint, 10 for
 * varlong) from *p, not beyond end. Returns 0 and advances *p, or -1 if the
 * encoding is truncated or too long. */
static inline int sl_get_varint(const uint8_t **p, const uint8_t *end, int max_bytes, int64_t *out)
{
    uint64_t z = 0;
    const uint8_t *q = *p;
    for (int shift = 0, i = 0; i < max_bytes && q < end; i++, shift += 7) {
        uint8_t byte = *q++;
        z |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *p = q;
            *out = sl_unzigzag(z);
            return 0;
        }
    }
    return -1;
}

#endif

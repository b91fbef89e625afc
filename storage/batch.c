/*
 * batch.c - encoding and decoding of RecordBatch v2 (layout in batch.h).
 *
 * Encoding writes the 61-byte header with placeholders, appends the records
 * (into a side buffer when compressing, then one zstd frame), and finally
 * fills in batchLength and the CRC. Decoding validates before it trusts:
 * every length read from the batch is checked against the bytes that remain,
 * so a corrupt or hostile batch is an error, never an out-of-bounds read.
 */
#include "storage/batch.h"
#include "storage/crc32c.h"

#include <errno.h>
#include <limits.h>

static size_t varint_size(int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

static size_t bytes_size(int32_t len)
{
    return varint_size(len) + (len > 0 ? (size_t)len : 0);
}

/* Bytes of a record after its length prefix. */
static size_t record_body_size(const sl_record_t *r, int64_t ts_delta, int64_t offset_delta)
{
    size_t n = 1 + varint_size(ts_delta) + varint_size(offset_delta);
    n += bytes_size(r->key_len) + bytes_size(r->value_len) + varint_size(r->header_count);
    for (uint32_t i = 0; i < r->header_count; i++)
        n += bytes_size(r->headers[i].name_len) + bytes_size(r->headers[i].value_len);
    return n;
}

static uint8_t *put_bytes(uint8_t *p, const uint8_t *data, int32_t len)
{
    p += sl_put_varlong(p, len < 0 ? -1 : len);
    if (len > 0) {
        memcpy(p, data, (size_t)len);
        p += len;
    }
    return p;
}

static int check_record(const sl_record_t *r)
{
    if ((r->key_len > 0 && !r->key) || (r->value_len > 0 && !r->value))
        return sl_error_set(SL_EINVALID, "record has a length but no data");
    if (r->header_count && !r->headers)
        return sl_error_set(SL_EINVALID, "record has a header count but no headers");
    for (uint32_t i = 0; i < r->header_count; i++)
        if (r->headers[i].name_len < 0 || (r->headers[i].name_len > 0 && !r->headers[i].name) ||
            (r->headers[i].value_len > 0 && !r->headers[i].value))
            return sl_error_set(SL_EINVALID, "record header %u has no name or no data", i);
    return 0;
}

static int append_record(sl_buf_t *b, const sl_record_t *r, int64_t ts_delta, int64_t offset_delta)
{
    size_t body = record_body_size(r, ts_delta, offset_delta);
    if (body > INT32_MAX)
        return sl_error_set(SL_ETOOBIG, "record of %zu bytes", body);
    int rc = sl_buf_reserve(b, body + 5);
    if (rc)
        return rc;
    uint8_t *p = b->data + b->len;
    p += sl_put_varlong(p, (int64_t)body);
    *p++ = 0;
    p += sl_put_varlong(p, ts_delta);
    p += sl_put_varlong(p, offset_delta);
    p = put_bytes(p, r->key, r->key_len);
    p = put_bytes(p, r->value, r->value_len);
    p += sl_put_varlong(p, r->header_count);
    for (uint32_t i = 0; i < r->header_count; i++) {
        p = put_bytes(p, r->headers[i].name, r->headers[i].name_len);
        p = put_bytes(p, r->headers[i].value, r->headers[i].value_len);
    }
    b->len = (size_t)(p - b->data);
    return 0;
}

static int compress_payload(sl_batch_encoder_t *enc, int level)
{
    if (!enc->cctx && !(enc->cctx = ZSTD_createCCtx()))
        return -ENOMEM;
    size_t bound = ZSTD_compressBound(enc->plain.len);
    int rc = sl_buf_reserve(&enc->out, bound);
    if (rc)
        return rc;
    size_t n = ZSTD_compressCCtx(enc->cctx, enc->out.data + enc->out.len, bound, enc->plain.data,
                                 enc->plain.len, level);
    if (ZSTD_isError(n))
        return sl_error_set(SL_ECOMPRESSION, "zstd: %s", ZSTD_getErrorName(n));
    enc->out.len += n;
    return 0;
}

static void write_header(uint8_t *h, const sl_batch_header_t *bh, size_t total)
{
    memset(h, 0, SL_BATCH_HEADER_SIZE);
    sl_put_be64(h, (uint64_t)bh->base_offset);
    sl_put_be32(h + 8, (uint32_t)(total - SL_BATCH_LOG_OVERHEAD));
    h[16] = 2;
    sl_put_be16(h + 21, (uint16_t)bh->attributes);
    sl_put_be32(h + 23, (uint32_t)bh->last_offset_delta);
    sl_put_be64(h + 27, (uint64_t)bh->base_timestamp);
    sl_put_be64(h + 35, (uint64_t)bh->max_timestamp);
    sl_put_be64(h + 43, UINT64_MAX); /* producerId -1 */
    sl_put_be16(h + 51, UINT16_MAX); /* producerEpoch -1 */
    sl_put_be32(h + 53, UINT32_MAX); /* baseSequence -1 */
    sl_put_be32(h + 57, (uint32_t)bh->record_count);
    sl_put_be32(h + 17, sl_crc32c(0, h + SL_BATCH_CRC_START, total - SL_BATCH_CRC_START));
}

/*
 * The shared encoder: records[i] goes at offset base + offset_delta(i) with
 * timestamp ts(i). When explicit is set, offsets and timestamps come from
 * the records themselves (compaction); otherwise they are consecutive and
 * negative timestamps mean now.
 */
static int encode(sl_batch_encoder_t *enc, sl_batch_header_t *bh, const sl_record_t *records,
                  size_t count, int explicit, int64_t now_ms, int codec, int level)
{
    if (count == 0 || count > INT32_MAX)
        return sl_error_set(SL_EINVALID, "a batch holds 1 to 2^31-1 records, not %zu", count);
    if (codec != SL_COMPRESSION_NONE && codec != SL_COMPRESSION_ZSTD)
        return sl_error_set(SL_EINVALID, "unsupported compression codec %d", codec);
    sl_buf_t *body = codec == SL_COMPRESSION_ZSTD ? &enc->plain : &enc->out;
    enc->out.len = enc->plain.len = 0;
    int rc = sl_buf_reserve(&enc->out, SL_BATCH_HEADER_SIZE);
    if (rc)
        return rc;
    enc->out.len = SL_BATCH_HEADER_SIZE;
    int64_t first_ts = records[0].timestamp < 0 && !explicit ? now_ms : records[0].timestamp;
    if (!explicit)
        bh->base_timestamp = first_ts;
    bh->max_timestamp = INT64_MIN;
    for (size_t i = 0; i < count; i++) {
        const sl_record_t *r = &records[i];
        int64_t ts = r->timestamp < 0 && !explicit ? now_ms : r->timestamp;
        int64_t delta = explicit ? r->offset - bh->base_offset : (int64_t)i;
        if ((rc = check_record(r)) || (rc = append_record(body, r, ts - bh->base_timestamp, delta)))
            return rc;
        if (ts > bh->max_timestamp)
            bh->max_timestamp = ts;
    }
    if (codec == SL_COMPRESSION_ZSTD && (rc = compress_payload(enc, level)))
        return rc;
    if (!explicit)
        bh->last_offset_delta = (int32_t)(count - 1);
    bh->attributes = (int16_t)codec;
    bh->record_count = (int32_t)count;
    if (enc->out.len - SL_BATCH_LOG_OVERHEAD > INT32_MAX)
        return sl_error_set(SL_ETOOBIG, "batch of %zu bytes", enc->out.len);
    write_header(enc->out.data, bh, enc->out.len);
    return 0;
}

int sl_batch_encode(sl_batch_encoder_t *enc, const sl_record_t *records, size_t count,
                    int64_t base_offset, int64_t now_ms, int codec, int level)
{
    sl_batch_header_t bh = {.base_offset = base_offset};
    return encode(enc, &bh, records, count, 0, now_ms, codec, level);
}

int sl_batch_reencode(sl_batch_encoder_t *enc, const sl_batch_header_t *original,
                      const sl_record_t *records, size_t count, int codec, int level)
{
    sl_batch_header_t bh = *original;
    return encode(enc, &bh, records, count, 1, 0, codec, level);
}

void sl_batch_encoder_free(sl_batch_encoder_t *enc)
{
    sl_buf_free(&enc->out);
    sl_buf_free(&enc->plain);
    ZSTD_freeCCtx(enc->cctx);
    enc->cctx = NULL;
}

int sl_batch_header_parse(const uint8_t *p, size_t avail, sl_batch_header_t *h)
{
    if (avail < SL_BATCH_HEADER_SIZE)
        return SL_EINVALID;
    h->base_offset = (int64_t)sl_get_be64(p);
    h->length = (int32_t)sl_get_be32(p + 8);
    h->crc = sl_get_be32(p + 17);
    h->attributes = (int16_t)sl_get_be16(p + 21);
    h->last_offset_delta = (int32_t)sl_get_be32(p + 23);
    h->base_timestamp = (int64_t)sl_get_be64(p + 27);
    h->max_timestamp = (int64_t)sl_get_be64(p + 35);
    h->record_count = (int32_t)sl_get_be32(p + 57);
    if (p[16] != 2)
        return sl_error_set(SL_ECORRUPT, "batch magic %d, expected 2", p[16]);
    if (h->length < SL_BATCH_HEADER_SIZE - SL_BATCH_LOG_OVERHEAD || h->base_offset < 0 ||
        h->last_offset_delta < 0 || h->record_count < 0 ||
        h->base_offset > INT64_MAX - h->last_offset_delta - 1)
        return sl_error_set(SL_ECORRUPT, "batch header out of range (length %d, records %d)",
                            h->length, h->record_count);
    return 0;
}

int sl_batch_crc_ok(const uint8_t *p, const sl_batch_header_t *h)
{
    return sl_crc32c(0, p + SL_BATCH_CRC_START, sl_batch_size(h) - SL_BATCH_CRC_START) == h->crc;
}

/* Streams one zstd frame into dec->plain, refusing to grow past the cap. */
static int decompress_payload(sl_batch_decoder_t *dec, const uint8_t *src, size_t n)
{
    size_t cap = dec->max_plain ? dec->max_plain : SL_BATCH_MAX_PLAIN;
    if (!dec->dctx && !(dec->dctx = ZSTD_createDCtx()))
        return -ENOMEM;
    ZSTD_DCtx_reset(dec->dctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in = {src, n, 0};
    dec->plain.len = 0;
    for (;;) {
        int rc = sl_buf_reserve(&dec->plain, dec->plain.len < 65536 ? 65536 : dec->plain.len);
        if (rc)
            return rc;
        size_t room = dec->plain.cap - dec->plain.len;
        if (dec->plain.len + room > cap)
            room = cap - dec->plain.len;
        ZSTD_outBuffer out = {dec->plain.data + dec->plain.len, room, 0};
        size_t left = ZSTD_decompressStream(dec->dctx, &out, &in);
        dec->plain.len += out.pos;
        if (ZSTD_isError(left))
            return sl_error_set(SL_ECORRUPT, "zstd: %s", ZSTD_getErrorName(left));
        if (left == 0 && in.pos == in.size)
            return 0;
        if (left == 0 || (in.pos == in.size && out.pos < out.size))
            return sl_error_set(SL_ECORRUPT, "zstd payload is truncated or has trailing bytes");
        if (dec->plain.len >= cap)
            return sl_error_set(SL_ECORRUPT, "zstd payload over %zu bytes", cap);
    }
}

int sl_batch_decoder_start(sl_batch_decoder_t *dec, const uint8_t *p, size_t size)
{
    int rc = sl_batch_header_parse(p, size, &dec->header);
    if (rc == SL_EINVALID)
        return sl_error_set(SL_ECORRUPT, "batch of %zu bytes is shorter than its header", size);
    if (rc)
        return rc;
    if (sl_batch_size(&dec->header) != size)
        return sl_error_set(SL_ECORRUPT, "batch length %d does not match %zu bytes",
                            dec->header.length, size);
    if (!sl_batch_crc_ok(p, &dec->header))
        return sl_error_set(SL_ECORRUPT, "batch CRC mismatch");
    int codec = dec->header.attributes & SL_BATCH_CODEC_MASK;
    const uint8_t *payload = p + SL_BATCH_HEADER_SIZE;
    size_t payload_len = size - SL_BATCH_HEADER_SIZE;
    if (codec == SL_COMPRESSION_ZSTD) {
        if ((rc = decompress_payload(dec, payload, payload_len)))
            return rc;
        payload = dec->plain.data;
        payload_len = dec->plain.len;
    } else if (codec != SL_COMPRESSION_NONE) {
        return sl_error_set(SL_ECOMPRESSION, "unsupported compression codec %d", codec);
    }
    dec->pos = payload;
    dec->end = payload + payload_len;
    dec->records_left = dec->header.record_count;
    dec->last_delta = -1;
    return 0;
}

/* Reads a length-prefixed byte string: -1 is null, else 0..(end - *p). */
static int get_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **data, int32_t *len)
{
    int64_t n;
    if (sl_get_varint(p, end, 5, &n) || n < -1 || n > end - *p)
        return -1;
    *data = n < 0 ? NULL : *p;
    *len = (int32_t)n;
    if (n > 0)
        *p += n;
    return 0;
}

static int decode_headers(sl_batch_decoder_t *dec, const uint8_t **p, const uint8_t *end,
                          sl_record_t *rec)
{
    int64_t count;
    if (sl_get_varint(p, end, 5, &count) || count < 0 || count > (end - *p) / 2)
        return -1;
    if ((uint64_t)count > dec->headers_cap) {
        sl_header_t *h = sl_realloc(dec->headers, (size_t)count * sizeof *h);
        if (!h)
            return -ENOMEM;
        dec->headers = h;
        dec->headers_cap = (uint32_t)count;
    }
    for (int64_t i = 0; i < count; i++) {
        sl_header_t *h = &dec->headers[i];
        if (get_bytes(p, end, &h->name, &h->name_len) || h->name_len < 0 ||
            get_bytes(p, end, &h->value, &h->value_len))
            return -1;
    }
    rec->headers = dec->headers;
    rec->header_count = (uint32_t)count;
    return 0;
}

static int decode_record(sl_batch_decoder_t *dec, const uint8_t *p, const uint8_t *end,
                         sl_record_t *rec)
{
    int64_t ts_delta, offset_delta;
    if (p >= end)
        return -1;
    p++; /* record attributes: unused in v2 */
    if (sl_get_varint(&p, end, 10, &ts_delta) || sl_get_varint(&p, end, 5, &offset_delta))
        return -1;
    if (offset_delta <= dec->last_delta || offset_delta > dec->header.last_offset_delta)
        return -1;
    dec->last_delta = offset_delta;
    rec->offset = dec->header.base_offset + offset_delta;
    rec->timestamp = (int64_t)((uint64_t)dec->header.base_timestamp + (uint64_t)ts_delta);
    if (get_bytes(&p, end, &rec->key, &rec->key_len) ||
        get_bytes(&p, end, &rec->value, &rec->value_len))
        return -1;
    int rc = decode_headers(dec, &p, end, rec);
    if (rc)
        return rc;
    return p == end ? 0 : -1;
}

int sl_batch_decoder_next(sl_batch_decoder_t *dec, sl_record_t *rec)
{
    if (dec->records_left == 0)
        return dec->pos == dec->end
                   ? 0
                   : sl_error_set(SL_ECORRUPT, "batch at offset %lld has bytes after its records",
                                  (long long)dec->header.base_offset);
    int64_t len;
    if (sl_get_varint(&dec->pos, dec->end, 5, &len) || len < 0 || len > dec->end - dec->pos)
        goto corrupt;
    const uint8_t *body = dec->pos;
    dec->pos += len;
    int rc = decode_record(dec, body, body + len, rec);
    if (rc == -ENOMEM)
        return rc;
    if (rc)
        goto corrupt;
    dec->records_left--;
    return 1;
corrupt:
    dec->records_left = 0;
    dec->pos = dec->end;
    return sl_error_set(SL_ECORRUPT, "malformed record in batch at offset %lld",
                        (long long)dec->header.base_offset);
}

void sl_batch_decoder_free(sl_batch_decoder_t *dec)
{
    sl_buf_free(&dec->plain);
    ZSTD_freeDCtx(dec->dctx);
    sl_free(dec->headers);
    dec->dctx = NULL;
    dec->headers = NULL;
    dec->headers_cap = 0;
}

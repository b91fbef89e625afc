/*
 * fuzz_batch.c - libFuzzer target for the RecordBatch v2 decoder.
 *
 * Each input is decoded twice. First as given, which fuzzes the header,
 * length and CRC checks. Then as a fixed-up copy whose batchLength, magic
 * and CRC are made valid: almost every mutation fails the CRC otherwise, so
 * only the copy lets the fuzzer reach record parsing and zstd decompression.
 * Every byte the decoder hands out is read, so that ASan sees any
 * out-of-bounds pointer.
 *
 * When the fixed-up copy decodes without error, its records are copied out,
 * re-encoded uncompressed and decoded again; the keys, values, headers and
 * timestamps that come back must equal the copies, or the target aborts.
 *
 * One decoder serves every input, as a reader's does across batches, so
 * buffer reuse is fuzzed too. Its decompression cap is small so that zstd
 * bombs stay cheap.
 */
#include "storage/batch.h"
#include "storage/crc32c.h"

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_MAX_PLAIN (1 << 20)

/* A byte string copied out of the decoder: off into saved.bytes, len < 0
 * for null. */
typedef struct span {
    size_t off;
    int32_t len;
} span_t;

typedef struct saved_header {
    span_t name, value;
} saved_header_t;

typedef struct saved_record {
    int64_t timestamp;
    span_t key, value;
    size_t first_header;
    uint32_t header_count;
} saved_record_t;

/* The records of the last batch decoded with saving on. Spans hold offsets,
 * not pointers, because saved.bytes moves as it grows. */
static struct {
    sl_buf_t bytes;
    saved_record_t *records;
    size_t record_count, record_cap;
    saved_header_t *headers;
    size_t header_count, header_cap;
} saved;

/* The saved records as sl_record_t, for the encoder. */
static struct {
    sl_record_t *records;
    size_t record_cap;
    sl_header_t *headers;
    size_t header_cap;
} plain;

static sl_batch_decoder_t decoder = {.max_plain = FUZZ_MAX_PLAIN};
static sl_batch_encoder_t encoder;
static volatile uint8_t sink;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_batch: %s\n", what);
    abort();
}

/* Grows *array (of elem-byte items, capacity *cap) to hold need items. */
static void *grow(void *array, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return array;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    array = realloc(array, n * elem);
    if (!array)
        fail("out of memory");
    *cap = n;
    return array;
}

static void touch(const uint8_t *p, int32_t len)
{
    uint8_t sum = 0;
    for (int32_t i = 0; i < len; i++)
        sum += p[i];
    sink += sum;
}

static void touch_record(const sl_record_t *r)
{
    touch(r->key, r->key_len);
    touch(r->value, r->value_len);
    for (uint32_t i = 0; i < r->header_count; i++) {
        touch(r->headers[i].name, r->headers[i].name_len);
        touch(r->headers[i].value, r->headers[i].value_len);
    }
}

static span_t save_bytes(const uint8_t *p, int32_t len)
{
    span_t s = {saved.bytes.len, len};
    if (len > 0 && sl_buf_append(&saved.bytes, p, (size_t)len))
        fail("out of memory");
    return s;
}

static void save_record(const sl_record_t *r)
{
    saved.records =
        grow(saved.records, &saved.record_cap, saved.record_count + 1, sizeof *saved.records);
    saved.headers = grow(saved.headers, &saved.header_cap, saved.header_count + r->header_count,
                         sizeof *saved.headers);
    saved_record_t *s = &saved.records[saved.record_count++];
    s->timestamp = r->timestamp;
    s->key = save_bytes(r->key, r->key_len);
    s->value = save_bytes(r->value, r->value_len);
    s->first_header = saved.header_count;
    s->header_count = r->header_count;
    for (uint32_t i = 0; i < r->header_count; i++) {
        saved_header_t *h = &saved.headers[saved.header_count++];
        h->name = save_bytes(r->headers[i].name, r->headers[i].name_len);
        h->value = save_bytes(r->headers[i].value, r->headers[i].value_len);
    }
}

/* Decodes the batch of size bytes at p to the end or the first error,
 * saving its records if asked. Returns the decoder's last result. */
static int decode(const uint8_t *p, size_t size, int save)
{
    saved.bytes.len = saved.record_count = saved.header_count = 0;
    int rc = sl_batch_decoder_start(&decoder, p, size);
    if (rc)
        return rc;
    sl_record_t r;
    while ((rc = sl_batch_decoder_next(&decoder, &r)) > 0) {
        touch_record(&r);
        if (save)
            save_record(&r);
    }
    return rc;
}

static const uint8_t *span_data(span_t s)
{
    return s.len < 0 ? NULL : saved.bytes.data + s.off;
}

static int same_bytes(span_t s, const uint8_t *p, int32_t len)
{
    return s.len == len && (len <= 0 || memcmp(span_data(s), p, (size_t)len) == 0);
}

/* Points plain.records at the saved copies. */
static void materialize(void)
{
    plain.records =
        grow(plain.records, &plain.record_cap, saved.record_count, sizeof *plain.records);
    plain.headers =
        grow(plain.headers, &plain.header_cap, saved.header_count, sizeof *plain.headers);
    for (size_t i = 0; i < saved.header_count; i++)
        plain.headers[i] =
            (sl_header_t){span_data(saved.headers[i].name), saved.headers[i].name.len,
                          span_data(saved.headers[i].value), saved.headers[i].value.len};
    for (size_t i = 0; i < saved.record_count; i++) {
        const saved_record_t *s = &saved.records[i];
        plain.records[i] =
            (sl_record_t){.timestamp = s->timestamp,
                          .key = span_data(s->key),
                          .key_len = s->key.len,
                          .value = span_data(s->value),
                          .value_len = s->value.len,
                          .headers = s->header_count ? plain.headers + s->first_header : NULL,
                          .header_count = s->header_count};
    }
}

/* The encoder replaces a negative timestamp with now_ms, here 0. */
static int same_record(const saved_record_t *s, const sl_record_t *r)
{
    if (r->timestamp != (s->timestamp < 0 ? 0 : s->timestamp) ||
        !same_bytes(s->key, r->key, r->key_len) || !same_bytes(s->value, r->value, r->value_len) ||
        r->header_count != s->header_count)
        return 0;
    for (uint32_t i = 0; i < s->header_count; i++) {
        const saved_header_t *h = &saved.headers[s->first_header + i];
        if (!same_bytes(h->name, r->headers[i].name, r->headers[i].name_len) ||
            !same_bytes(h->value, r->headers[i].value, r->headers[i].value_len))
            return 0;
    }
    return 1;
}

/* Re-encodes the saved records and checks that they decode unchanged. */
static void round_trip(int64_t base_offset)
{
    if (saved.record_count == 0)
        return;
    materialize();
    if (sl_batch_encode(&encoder, plain.records, saved.record_count, base_offset, 0,
                        SL_COMPRESSION_NONE, 0))
        fail("cannot re-encode records that decoded cleanly");
    if (sl_batch_decoder_start(&decoder, encoder.out.data, encoder.out.len))
        fail("re-encoded batch does not decode");
    sl_record_t r;
    for (size_t i = 0; i < saved.record_count; i++)
        if (sl_batch_decoder_next(&decoder, &r) != 1 || !same_record(&saved.records[i], &r))
            fail("re-encoded record differs");
    if (sl_batch_decoder_next(&decoder, &r) != 0)
        fail("re-encoded batch has extra records");
}

/* Makes the length, magic and CRC of the batch in p valid. */
static void fix_up(uint8_t *p, size_t size)
{
    sl_put_be32(p + 8, (uint32_t)(size - SL_BATCH_LOG_OVERHEAD));
    p[16] = 2;
    sl_put_be32(p + 17, sl_crc32c(0, p + SL_BATCH_CRC_START, size - SL_BATCH_CRC_START));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decode(data, size, 0);
    if (size < SL_BATCH_HEADER_SIZE || size - SL_BATCH_LOG_OVERHEAD > INT32_MAX)
        return 0;
    uint8_t *copy = malloc(size);
    if (!copy)
        fail("out of memory");
    memcpy(copy, data, size);
    fix_up(copy, size);
    if (decode(copy, size, 1) == 0)
        round_trip(decoder.header.base_offset);
    free(copy);
    return 0;
}

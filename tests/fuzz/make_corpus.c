/*
 * make_corpus.c - writes the seed batches of the fuzz_batch corpus.
 *
 * Usage: make_corpus DIR. Each seed is one valid RecordBatch v2 built with
 * sl_batch_encode(), so the fuzzer starts from batches that decode and
 * mutates from there. Timestamps are fixed so the output is reproducible
 * (for one zstd version). tests/fuzz/run.sh builds this program; rerun it
 * over tests/fuzz/corpus when the batch format changes.
 */
#include "storage/batch.h"

#include <stdio.h>
#include <string.h>

#define BASE_OFFSET 1000
#define TIMESTAMP   1700000000000LL

typedef struct seed {
    const char *name;
    const sl_record_t *records;
    size_t count;
    int codec;
} seed_t;

#define BYTES(s) (const uint8_t *)(s), (int32_t)(sizeof(s) - 1)

static const sl_header_t trace_headers[] = {
    {BYTES("trace-id"), BYTES("4bf92f3577b34da6")},
    {BYTES("empty"), BYTES("")},
    {BYTES("null"), NULL, -1},
};

static const sl_record_t one[] = {
    {.timestamp = TIMESTAMP, .key = BYTES("k"), .value = BYTES("v")},
};

static const sl_record_t several[] = {
    {.timestamp = TIMESTAMP, .key = BYTES("user-1"), .value = BYTES("{\"clicks\":1}")},
    {.timestamp = TIMESTAMP + 5, .key = BYTES("user-2"), .value = BYTES("{\"clicks\":7}")},
    {.timestamp = TIMESTAMP - 3, .key = BYTES("user-1"), .value = BYTES("{\"clicks\":2}")},
    {.timestamp = TIMESTAMP + 60000, .key = BYTES(""), .value = BYTES("")},
};

static const sl_record_t with_headers[] = {
    {.timestamp = TIMESTAMP,
     .key = BYTES("order-17"),
     .value = BYTES("shipped"),
     .headers = trace_headers,
     .header_count = 3},
    {.timestamp = TIMESTAMP + 1, .key = BYTES("order-18"), .value = BYTES("paid")},
};

static const sl_record_t null_key[] = {
    {.timestamp = TIMESTAMP, .key = NULL, .key_len = -1, .value = BYTES("no key at all")},
};

static const sl_record_t tombstone[] = {
    {.timestamp = TIMESTAMP, .key = BYTES("user-1"), .value = BYTES("{\"clicks\":2}")},
    {.timestamp = TIMESTAMP + 1, .key = BYTES("user-1"), .value = NULL, .value_len = -1},
};

/* Zeros compress to almost nothing: the bomb decompresses past the fuzz
 * target's 1 MiB cap, the large value just past the decoder's first 64 KiB
 * buffer. */
static const uint8_t zeros[2 << 20];

static const sl_record_t large_value[] = {
    {.timestamp = TIMESTAMP, .key = BYTES("large"), .value = zeros, .value_len = 100000},
};

static const sl_record_t bomb[] = {
    {.timestamp = TIMESTAMP, .key = BYTES("bomb"), .value = zeros, .value_len = sizeof zeros},
};

static const seed_t seeds[] = {
    {"one_record", one, 1, SL_COMPRESSION_NONE},
    {"several_records", several, 4, SL_COMPRESSION_NONE},
    {"headers", with_headers, 2, SL_COMPRESSION_NONE},
    {"null_key", null_key, 1, SL_COMPRESSION_NONE},
    {"tombstone", tombstone, 2, SL_COMPRESSION_NONE},
    {"zstd_several_records", several, 4, SL_COMPRESSION_ZSTD},
    {"zstd_headers", with_headers, 2, SL_COMPRESSION_ZSTD},
    {"zstd_large_value", large_value, 1, SL_COMPRESSION_ZSTD},
    {"zstd_bomb", bomb, 1, SL_COMPRESSION_ZSTD},
};

static int write_file(const char *dir, const char *name, const sl_buf_t *b)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f)) {
        perror(path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    sl_batch_encoder_t enc = {0};
    int status = 0;
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0] && status == 0; i++) {
        const seed_t *s = &seeds[i];
        int rc = sl_batch_encode(&enc, s->records, s->count, BASE_OFFSET, 0, s->codec, 3);
        if (rc) {
            fprintf(stderr, "%s: %s (%s)\n", s->name, sl_strerror(rc), sl_error_detail());
            status = 1;
        } else if (write_file(argv[1], s->name, &enc.out)) {
            status = 1;
        }
    }
    sl_batch_encoder_free(&enc);
    return status;
}

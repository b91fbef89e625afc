/*
 * test_batch.c - the RecordBatch v2 codec: byte layout, round trips with
 * and without zstd, and rejection of corrupt batches.
 */
#include "testutil.h"

#include "storage/batch.h"
#include "storage/crc32c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One record, key "k", value "v", ts 1000, base offset 0, laid out by hand
 * from the Kafka protocol documentation. */
static void test_encoding_is_kafka_record_batch_v2(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0};
    sl_record_t r = tu_record("k", "v", 1000);
    assert_int_equal(sl_batch_encode(&enc, &r, 1, 0, 0, SL_COMPRESSION_NONE, 0), 0);
    /* clang-format off */
    static const uint8_t expected_head[] = {
        0, 0, 0, 0, 0, 0, 0, 0, /* baseOffset 0 */
        0, 0, 0, 58,            /* batchLength: 70 - 12 */
        0, 0, 0, 0,             /* partitionLeaderEpoch */
        2,                      /* magic */
    };
    static const uint8_t expected_tail[] = {
        0, 0,                         /* attributes: no compression */
        0, 0, 0, 0,                   /* lastOffsetDelta */
        0, 0, 0, 0, 0, 0, 0x03, 0xe8, /* baseTimestamp 1000 */
        0, 0, 0, 0, 0, 0, 0x03, 0xe8, /* maxTimestamp 1000 */
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* producerId -1 */
        0xff, 0xff,                                     /* producerEpoch -1 */
        0xff, 0xff, 0xff, 0xff,                         /* baseSequence -1 */
        0, 0, 0, 1,                                     /* records count */
        0x10, /* record length 8 (zigzag 16) */
        0x00, /* attributes */
        0x00, /* timestampDelta 0 */
        0x00, /* offsetDelta 0 */
        0x02, 'k', 0x02, 'v', /* key and value, length 1 each */
        0x00,                 /* no headers */
    };
    /* clang-format on */
    assert_int_equal(enc.out.len, 70);
    assert_memory_equal(enc.out.data, expected_head, sizeof expected_head);
    assert_memory_equal(enc.out.data + 21, expected_tail, sizeof expected_tail);
    uint32_t crc = sl_crc32c_table(0, enc.out.data + 21, 70 - 21);
    assert_int_equal(sl_get_be32(enc.out.data + 17), crc);
    sl_batch_encoder_free(&enc);
}

static void make_records(sl_record_t *recs, char (*keys)[16], char (*values)[64], int n,
                         sl_header_t *headers)
{
    for (int i = 0; i < n; i++) {
        snprintf(keys[i], 16, "key-%d", i);
        snprintf(values[i], 64, "{\"n\":%d,\"pad\":\"%0*d\"}", i, i % 40, 0);
        recs[i] = tu_record(i % 7 == 3 ? NULL : keys[i], i % 11 == 5 ? NULL : values[i],
                            5000 + (i * 37) % 100);
        if (i % 3 == 0) {
            recs[i].headers = headers;
            recs[i].header_count = 2;
        }
    }
}

static void round_trip(int codec)
{
    enum { N = 300 };
    static char keys[N][16], values[N][64];
    sl_header_t headers[2] = {{(const uint8_t *)"trace", 5, (const uint8_t *)"abc", 3},
                              {(const uint8_t *)"empty", 5, NULL, -1}};
    sl_record_t recs[N], got;
    make_records(recs, keys, values, N, headers);
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {0};
    assert_int_equal(sl_batch_encode(&enc, recs, N, 1000, 0, codec, 3), 0);
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
    assert_int_equal(dec.header.attributes & 7, codec);
    assert_int_equal(dec.header.max_timestamp, 5099);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sl_batch_decoder_next(&dec, &got), 1);
        assert_int_equal(got.offset, 1000 + i);
        assert_int_equal(got.timestamp, recs[i].timestamp);
        assert_int_equal(got.key_len, recs[i].key_len);
        assert_int_equal(got.value_len, recs[i].value_len);
        if (got.key_len > 0)
            assert_memory_equal(got.key, recs[i].key, (size_t)got.key_len);
        if (got.value_len > 0)
            assert_memory_equal(got.value, recs[i].value, (size_t)got.value_len);
        assert_int_equal(got.header_count, recs[i].header_count);
        if (got.header_count) {
            assert_memory_equal(got.headers[0].value, "abc", 3);
            assert_int_equal(got.headers[1].value_len, -1);
        }
    }
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 0);
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

static void test_round_trip_uncompressed(void **state)
{
    (void)state;
    round_trip(SL_COMPRESSION_NONE);
}

static void test_round_trip_zstd(void **state)
{
    (void)state;
    round_trip(SL_COMPRESSION_ZSTD);
}

static void test_zstd_shrinks_repetitive_values(void **state)
{
    (void)state;
    enum { N = 200 };
    static char values[N][96];
    sl_record_t recs[N];
    for (int i = 0; i < N; i++) {
        snprintf(values[i], sizeof values[i],
                 "{\"user\":\"u%d\",\"kind\":\"click\",\"page\":\"/products/item\"}", i % 17);
        recs[i] = tu_record("user", values[i], 1000 + i);
    }
    sl_batch_encoder_t plain = {0}, packed = {0};
    assert_int_equal(sl_batch_encode(&plain, recs, N, 0, 0, SL_COMPRESSION_NONE, 0), 0);
    assert_int_equal(sl_batch_encode(&packed, recs, N, 0, 0, SL_COMPRESSION_ZSTD, 1), 0);
    assert_true(packed.out.len * 2 < plain.out.len);
    sl_batch_encoder_free(&plain);
    sl_batch_encoder_free(&packed);
}

static void test_negative_timestamp_means_now(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {0};
    sl_record_t r[2] = {tu_record("a", "1", -1), tu_record("b", "2", 42)}, got;
    assert_int_equal(sl_batch_encode(&enc, r, 2, 7, 123456, SL_COMPRESSION_NONE, 0), 0);
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 1);
    assert_int_equal(got.timestamp, 123456);
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 1);
    assert_int_equal(got.timestamp, 42);
    assert_int_equal(dec.header.max_timestamp, 123456);
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

/* Flipping any single byte after the CRC field is caught. */
static void test_any_flipped_byte_fails_the_crc(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {0};
    sl_record_t r[3] = {tu_record("a", "one", 1), tu_record("b", "two", 2),
                        tu_record("c", "three", 3)};
    assert_int_equal(sl_batch_encode(&enc, r, 3, 0, 0, SL_COMPRESSION_NONE, 0), 0);
    for (size_t i = SL_BATCH_CRC_START; i < enc.out.len; i++) {
        enc.out.data[i] ^= 0x40;
        assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), SL_ECORRUPT);
        enc.out.data[i] ^= 0x40;
    }
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

/* A batch whose CRC is valid but whose records lie is still rejected. */
static void test_lying_record_lengths_are_rejected(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {0};
    sl_record_t r = tu_record("k", "v", 1000), got;
    assert_int_equal(sl_batch_encode(&enc, &r, 1, 0, 0, SL_COMPRESSION_NONE, 0), 0);
    /* record length -64; offsetDelta 1 beyond lastOffsetDelta 0; key
     * length 16 beyond the record; record length 7 with a byte left over */
    static const size_t where[] = {61, 64, 65, 61};
    static const uint8_t lies[] = {0x7f, 0x02, 0x20, 0x0e};
    for (size_t i = 0; i < sizeof lies; i++) {
        uint8_t saved = enc.out.data[where[i]];
        enc.out.data[where[i]] = lies[i];
        sl_put_be32(enc.out.data + 17, sl_crc32c(0, enc.out.data + 21, enc.out.len - 21));
        assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
        assert_int_equal(sl_batch_decoder_next(&dec, &got), SL_ECORRUPT);
        enc.out.data[where[i]] = saved;
    }
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

static void test_short_and_wrong_magic_are_rejected(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {0};
    sl_record_t r = tu_record("k", "v", 1000);
    assert_int_equal(sl_batch_encode(&enc, &r, 1, 0, 0, SL_COMPRESSION_NONE, 0), 0);
    for (size_t n = 0; n < enc.out.len; n++)
        assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, n), SL_ECORRUPT);
    enc.out.data[16] = 1;
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), SL_ECORRUPT);
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

/* Re-encoding survivors keeps base offset, lastOffsetDelta and offsets. */
static void test_reencode_preserves_offsets(void **state)
{
    (void)state;
    sl_batch_encoder_t enc = {0}, again = {0};
    sl_batch_decoder_t dec = {0};
    sl_record_t r[4] = {tu_record("a", "0", 10), tu_record("b", "1", 11), tu_record("c", "2", 12),
                        tu_record("d", "3", 13)};
    sl_record_t kept[2];
    assert_int_equal(sl_batch_encode(&enc, r, 4, 100, 0, SL_COMPRESSION_ZSTD, 1), 0);
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
    sl_batch_header_t original = dec.header;
    kept[0] = r[1];
    kept[0].offset = 101;
    kept[1] = r[2];
    kept[1].offset = 102;
    assert_int_equal(sl_batch_reencode(&again, &original, kept, 2, SL_COMPRESSION_ZSTD, 1), 0);
    assert_int_equal(sl_batch_decoder_start(&dec, again.out.data, again.out.len), 0);
    assert_int_equal(dec.header.base_offset, 100);
    assert_int_equal(dec.header.last_offset_delta, 3);
    sl_record_t got;
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 1);
    assert_int_equal(got.offset, 101);
    assert_int_equal(got.timestamp, 11);
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 1);
    assert_int_equal(got.offset, 102);
    assert_int_equal(sl_batch_decoder_next(&dec, &got), 0);
    sl_batch_encoder_free(&enc);
    sl_batch_encoder_free(&again);
    sl_batch_decoder_free(&dec);
}

static void test_zstd_bomb_is_capped(void **state)
{
    (void)state;
    enum { N = 64 };
    static char big[N][64 * 1024];
    sl_record_t recs[N];
    for (int i = 0; i < N; i++) {
        memset(big[i], 'x', sizeof big[i] - 1);
        big[i][sizeof big[i] - 1] = 0;
        recs[i] = tu_record("k", big[i], 1);
    }
    sl_batch_encoder_t enc = {0};
    sl_batch_decoder_t dec = {.max_plain = 1 << 20};
    assert_int_equal(sl_batch_encode(&enc, recs, N, 0, 0, SL_COMPRESSION_ZSTD, 1), 0);
    assert_true(enc.out.len < 64 * 1024);
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), SL_ECORRUPT);
    dec.max_plain = 0;
    assert_int_equal(sl_batch_decoder_start(&dec, enc.out.data, enc.out.len), 0);
    sl_batch_encoder_free(&enc);
    sl_batch_decoder_free(&dec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoding_is_kafka_record_batch_v2),
        cmocka_unit_test(test_round_trip_uncompressed),
        cmocka_unit_test(test_round_trip_zstd),
        cmocka_unit_test(test_zstd_shrinks_repetitive_values),
        cmocka_unit_test(test_negative_timestamp_means_now),
        cmocka_unit_test(test_any_flipped_byte_fails_the_crc),
        cmocka_unit_test(test_lying_record_lengths_are_rejected),
        cmocka_unit_test(test_short_and_wrong_magic_are_rejected),
        cmocka_unit_test(test_reencode_preserves_offsets),
        cmocka_unit_test(test_zstd_bomb_is_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

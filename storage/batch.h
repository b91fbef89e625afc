/*
 * batch.h - Kafka's RecordBatch v2, byte for byte.
 *
 * A batch on disk (all fixed-width integers big-endian):
 *
 *   offset size  field
 *   ------ ----  ---------------------------------------------------------
 *      0     8   baseOffset            offset of the first record
 *      8     4   batchLength           bytes that follow this field
 *     12     4   partitionLeaderEpoch  0 (no replication yet)
 *     16     1   magic                 2
 *     17     4   crc                   CRC-32C of bytes 21 .. end
 *     21     2   attributes            bits 0-2 codec (0 none, 4 zstd),
 *                                      bit 3 timestamp type, bit 4
 *                                      transactional, bit 5 control
 *     23     4   lastOffsetDelta       offset of the last record - base
 *     27     8   baseTimestamp         timestamp of the first record
 *     35     8   maxTimestamp          largest timestamp in the batch
 *     43     8   producerId            -1
 *     51     2   producerEpoch         -1
 *     53     4   baseSequence          -1
 *     57     4   recordsCount
 *     61     -   records, zstd-compressed as one frame when codec is 4
 *
 * A record (varint = zigzag varint, see buf.h):
 *
 *   length varint (bytes after this field), attributes int8 (0),
 *   timestampDelta varlong, offsetDelta varint, keyLength varint (-1 =
 *   null), key, valueLength varint (-1 = null), value, headerCount varint,
 *   then per header: nameLength varint, name, valueLength varint, value.
 *
 * Invariants checked by the decoder (anything else is SL_ECORRUPT, never a
 * crash): magic 2, batchLength within the data given, CRC matches, record
 * lengths stay inside the batch, offset deltas strictly increase and never
 * pass lastOffsetDelta, exactly recordsCount records fill the payload.
 * Compaction leaves gaps in offsets but keeps lastOffsetDelta, so the next
 * batch's baseOffset is always baseOffset + lastOffsetDelta + 1 or more.
 */
#ifndef SL_BATCH_H
#define SL_BATCH_H

#include "storage/buf.h"
#include "storage/storage.h"

#include <zstd.h>

#define SL_BATCH_HEADER_SIZE  61
#define SL_BATCH_LOG_OVERHEAD 12 /* baseOffset + batchLength */
#define SL_BATCH_CRC_START    21
#define SL_BATCH_CODEC_MASK   0x07
#define SL_BATCH_CONTROL_FLAG 0x20
#define SL_BATCH_MAX_PLAIN    (64 << 20) /* default cap on a decompressed payload */

typedef struct sl_batch_header {
    int64_t base_offset;
    int32_t length; /* batchLength: the batch is length + 12 bytes */
    uint32_t crc;
    int16_t attributes;
    int32_t last_offset_delta;
    int64_t base_timestamp;
    int64_t max_timestamp;
    int32_t record_count;
} sl_batch_header_t;

/* Total bytes of the batch described by h. */
static inline size_t sl_batch_size(const sl_batch_header_t *h)
{
    return (size_t)h->length + SL_BATCH_LOG_OVERHEAD;
}

/* One past the last offset of the batch. */
static inline int64_t sl_batch_end_offset(const sl_batch_header_t *h)
{
    return h->base_offset + h->last_offset_delta + 1;
}

/* Parses and sanity-checks the fixed header from avail >= 61 bytes. Does
 * not check the CRC. Returns 0, SL_ECORRUPT, or SL_EINVALID if avail is
 * too short to hold a header. */
int sl_batch_header_parse(const uint8_t *p, size_t avail, sl_batch_header_t *h);

/* 1 if the CRC of the whole batch (sl_batch_size(h) bytes at p) matches. */
int sl_batch_crc_ok(const uint8_t *p, const sl_batch_header_t *h);

/* Reusable encoding state: the encoded batch ends up in out. */
typedef struct sl_batch_encoder {
    sl_buf_t out;
    sl_buf_t plain; /* uncompressed records when compressing */
    ZSTD_CCtx *cctx;
} sl_batch_encoder_t;

/*
 * Encodes count records (count >= 1) as one batch starting at base_offset
 * into enc->out (replacing its contents). Records with a negative timestamp
 * get now_ms. codec is SL_COMPRESSION_NONE or SL_COMPRESSION_ZSTD.
 * Returns 0, -ENOMEM, SL_EINVALID (bad lengths) or SL_ECOMPRESSION.
 */
int sl_batch_encode(sl_batch_encoder_t *enc, const sl_record_t *records, size_t count,
                    int64_t base_offset, int64_t now_ms, int codec, int level);

/* Re-encodes the surviving records of a compacted batch: keeps the
 * original baseOffset, lastOffsetDelta, timestamps and each record's own
 * offset (records[i].offset), so offsets are preserved with gaps. */
int sl_batch_reencode(sl_batch_encoder_t *enc, const sl_batch_header_t *original,
                      const sl_record_t *records, size_t count, int codec, int level);

void sl_batch_encoder_free(sl_batch_encoder_t *enc);

/* Reusable decoding state. */
typedef struct sl_batch_decoder {
    sl_batch_header_t header;
    const uint8_t *pos, *end; /* remaining record bytes */
    int32_t records_left;
    int64_t last_delta; /* offset delta of the previous record */
    sl_buf_t plain;     /* decompressed payload */
    ZSTD_DCtx *dctx;
    sl_header_t *headers;
    uint32_t headers_cap;
    size_t max_plain; /* cap on decompressed size; 0 = SL_BATCH_MAX_PLAIN */
} sl_batch_decoder_t;

/* Starts decoding the batch of size bytes at p: parses the header, checks
 * the CRC and decompresses. The decoder points into p (or its own buffer)
 * until the next start. Returns 0, SL_ECORRUPT, SL_ECOMPRESSION, -ENOMEM. */
int sl_batch_decoder_start(sl_batch_decoder_t *dec, const uint8_t *p, size_t size);

/* The next record of the batch: 1 and *rec filled, 0 when the batch is
 * done, SL_ECORRUPT for a malformed record, -ENOMEM. */
int sl_batch_decoder_next(sl_batch_decoder_t *dec, sl_record_t *rec);

void sl_batch_decoder_free(sl_batch_decoder_t *dec);

#endif

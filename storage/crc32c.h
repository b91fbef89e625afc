/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum of RecordBatch v2.
 *
 * Polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final xor
 * 0xFFFFFFFF. sl_crc32c() picks the SSE4.2 `crc32` instruction when the CPU
 * has it and the table implementation otherwise; both are exposed so tests
 * can check each against the published vectors (RFC 3720, B.4).
 */
#ifndef SL_CRC32C_H
#define SL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc (0 to start) over len bytes of data. */
uint32_t sl_crc32c(uint32_t crc, const void *data, size_t len);

/* The portable slicing-by-8 table implementation. */
uint32_t sl_crc32c_table(uint32_t crc, const void *data, size_t len);

/* The SSE4.2 implementation; only call it if sl_crc32c_hardware() is 1. */
uint32_t sl_crc32c_sse42(uint32_t crc, const void *data, size_t len);

/* 1 if this CPU has the SSE4.2 crc32 instruction. */
int sl_crc32c_hardware(void);

#endif

/*
 * crc32c.c - CRC-32C, in hardware where possible.
 *
 * The table path is slicing-by-8: table[k][b] is the CRC of byte b followed
 * by k zero bytes, so eight input bytes fold into the CRC with eight lookups
 * and no dependency between them. The hardware path feeds eight bytes at a
 * time to the SSE4.2 crc32 instruction, which computes the same polynomial.
 */
#include "storage/crc32c.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t crc = b;
        for (int i = 0; i < 8; i++)
            crc = (crc >> 1) ^ (POLY & (0u - (crc & 1)));
        table[0][b] = crc;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
}

uint32_t sl_crc32c_table(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    pthread_once(&table_once, build_table);
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc; /* little-endian hosts only; x86-64 is the target */
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
              table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
              table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) uint32_t sl_crc32c_sse42(uint32_t crc, const void *data,
                                                           size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc & 0xffffffffu;
    while (len >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

int sl_crc32c_hardware(void)
{
    return __builtin_cpu_supports("sse4.2");
}
#else
uint32_t sl_crc32c_sse42(uint32_t crc, const void *data, size_t len)
{
    return sl_crc32c_table(crc, data, len);
}

int sl_crc32c_hardware(void)
{
    return 0;
}
#endif

uint32_t sl_crc32c(uint32_t crc, const void *data, size_t len)
{
    static _Atomic int hardware = -1; /* -1 until probed; racing probes agree */
    int has = atomic_load_explicit(&hardware, memory_order_relaxed);
    if (has < 0) {
        has = sl_crc32c_hardware();
        atomic_store_explicit(&hardware, has, memory_order_relaxed);
    }
    return has ? sl_crc32c_sse42(crc, data, len) : sl_crc32c_table(crc, data, len);
}

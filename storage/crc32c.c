/*
 * crc32c.c - CRC-32C, in hardware where possible.
 *
 * The table path is slicing-by-8: table[k][b] is the CRC of byte b followed
 * by k zero bytes, so eight input bytes fold into the CRC with eight lookups
 * and no dependency between them. The hardware path feeds eight bytes at a
 * time to the SSE4.2 crc32 instruction, which computes the same polynomial.
 *
 * One crc32 instruction takes three cycles but a core can start one every
 * cycle, so on long inputs the hardware path runs three CRCs at once, over
 * three consecutive blocks of a stripe, and joins them. The join rests on
 * the CRC register being linear: the register after block b from state s
 * is shift(s) ^ (the register after b from 0), where shift(s) is the
 * register after as many zero bytes from s, itself linear in s and so four
 * table lookups (shift_table, built once per block size from the 32
 * single-bit states).
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

/* Block sizes of the three-way path, longest first; a stripe is three blocks. */
static const size_t stripe_blocks[] = {4096, 256};
#define STRIPE_SIZES (sizeof stripe_blocks / sizeof stripe_blocks[0])

/* shift_table[i][k][b]: the register after stripe_blocks[i] zero bytes
 * from the state b << 8k. */
static uint32_t shift_table[STRIPE_SIZES][4][256];
static pthread_once_t shift_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2"))) static uint32_t zeros_from(uint32_t state, size_t n)
{
    uint64_t c = state;
    for (; n >= 8; n -= 8)
        c = _mm_crc32_u64(c, 0);
    return (uint32_t)c;
}

static void build_shift_tables(void)
{
    for (size_t i = 0; i < STRIPE_SIZES; i++) {
        uint32_t bit[32];
        for (int j = 0; j < 32; j++)
            bit[j] = zeros_from(1u << j, stripe_blocks[i]);
        for (int k = 0; k < 4; k++)
            for (uint32_t b = 0; b < 256; b++) {
                uint32_t v = 0;
                for (int j = 0; j < 8; j++)
                    if (b & (1u << j))
                        v ^= bit[8 * k + j];
                shift_table[i][k][b] = v;
            }
    }
}

static uint32_t shift(const uint32_t t[4][256], uint32_t s)
{
    return t[0][s & 0xff] ^ t[1][(s >> 8) & 0xff] ^ t[2][(s >> 16) & 0xff] ^ t[3][s >> 24];
}

__attribute__((target("sse4.2"))) uint32_t sl_crc32c_sse42(uint32_t crc, const void *data,
                                                           size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc & 0xffffffffu;
    if (len >= 3 * stripe_blocks[STRIPE_SIZES - 1])
        pthread_once(&shift_once, build_shift_tables);
    for (size_t i = 0; i < STRIPE_SIZES; i++) {
        size_t block = stripe_blocks[i];
        for (; len >= 3 * block; p += 3 * block, len -= 3 * block) {
            uint64_t a = c, b = 0, d = 0;
            for (size_t at = 0; at < block; at += 8) {
                uint64_t x, y, z;
                memcpy(&x, p + at, 8);
                memcpy(&y, p + block + at, 8);
                memcpy(&z, p + 2 * block + at, 8);
                a = _mm_crc32_u64(a, x);
                b = _mm_crc32_u64(b, y);
                d = _mm_crc32_u64(d, z);
            }
            uint32_t ab = shift(shift_table[i], (uint32_t)a) ^ (uint32_t)b;
            c = shift(shift_table[i], ab) ^ (uint32_t)d;
        }
    }
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

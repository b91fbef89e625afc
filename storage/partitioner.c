/*
 * partitioner.c - Kafka's default partitioner, so keyed records land where a
 * Kafka client would put them: murmur2 (seed 0x9747b28c, as in Kafka's
 * Utils.murmur2) of the key bytes, made positive by masking the sign bit,
 * modulo the partition count.
 */
#include "storage/storage.h"

#include <string.h>

int32_t sl_murmur2(const void *data, size_t len)
{
    const uint8_t *p = data;
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = 0x9747b28cu ^ (uint32_t)len;
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t k = (uint32_t)p[i] | (uint32_t)p[i + 1] << 8 | (uint32_t)p[i + 2] << 16 |
                     (uint32_t)p[i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (len - i) {
    case 3:
        h ^= (uint32_t)p[i + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)p[i + 1] << 8;
        /* fall through */
    case 1:
        h ^= p[i];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

int32_t sl_partition_for_key(const void *key, size_t len, int32_t partitions)
{
    return (int32_t)(((uint32_t)sl_murmur2(key, len) & 0x7fffffffu) % (uint32_t)partitions);
}

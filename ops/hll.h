/*
 * hll.h - HyperLogLog: approximate distinct counts in bounded memory, and
 * the 64-bit hash (xxHash64) that sluice uses for it and for hash tables.
 *
 * A sketch has m = 2^14 = 16384 registers. A value's 64-bit hash picks a
 * register with its top 14 bits; the register keeps the largest "rank" seen
 * there, the position of the first 1 bit among the remaining 50 bits (1..51).
 * The estimate is Ertl's improved estimator (2017), computed from the
 * histogram of register values: for small cardinalities it equals linear
 * counting (m ln(m / zero registers)), and it has no bias where the classic
 * estimator switches from linear counting to the raw harmonic mean (at
 * 2.5 m, where that switch measured +1.3% mean error here). The relative
 * standard error is 1.04 / sqrt(m) = 0.81%: about 1.3% of sketches of a
 * large set are off by more than 2% (2.5 standard errors). Tests check the
 * mean error near the switch, < 2% at 100 K and 1 M values with fixed
 * seeds, and near-exact counts at 10 and 1000.
 *
 * Adding the same value twice changes nothing, and merging (register-wise
 * maximum) is associative and commutative: a sketch depends only on the set
 * of values added, never on their order or on how they were grouped.
 *
 * Representation. A sketch starts sparse: a sorted array of its non-zero
 * registers, so that the many small sketches of a windowed store stay small.
 * Past SL_HLL_SPARSE_MAX non-zero registers it becomes dense (one byte per
 * register in memory, 6 bits per register encoded) and stays dense.
 *
 * Encoding (platform independent; integers little-endian):
 *
 *   offset  size   field
 *   0       1      precision, 14
 *   1       1      representation: 0 sparse, 1 dense
 *   sparse:
 *   2       2      k, non-zero registers, 0..SL_HLL_SPARSE_MAX
 *   4       3k     registers in increasing index order, each a 24-bit
 *                  little-endian integer index << 6 | rank, rank 1..51
 *   dense:
 *   2       12288  16384 registers of 6 bits, register i in bits 6i..6i+5
 *                  of the little-endian bit stream (byte 2 + 6i/8, low bits
 *                  first), each 0..51
 *
 * A sparse encoding is 4 + 3k bytes, a dense one SL_HLL_DENSE_BYTES. The
 * decoder checks every field (order, ranges, exact length) and returns
 * SL_ECORRUPT for anything else, never reading past what it was given.
 *
 * Memory: every function that can allocate returns -ENOMEM on failure and
 * then leaves the sketch as it was. A sketch is a plain struct the caller
 * owns; sl_hll_clear frees what it points to. Not thread-safe.
 */
#ifndef SL_HLL_H
#define SL_HLL_H

#include <stddef.h>
#include <stdint.h>

#define SL_HLL_PRECISION   14
#define SL_HLL_REGISTERS   (1 << SL_HLL_PRECISION)
#define SL_HLL_MAX_RANK    (64 - SL_HLL_PRECISION + 1)
#define SL_HLL_SPARSE_MAX  3072
#define SL_HLL_DENSE_BYTES (2 + SL_HLL_REGISTERS * 6 / 8)

typedef struct sl_hll {
    uint32_t *sparse;    /* index << 8 | rank, increasing; unused once dense */
    uint32_t sparse_len; /* non-zero registers while sparse */
    uint32_t sparse_cap; /* entries allocated in sparse */
    uint8_t *dense;      /* SL_HLL_REGISTERS registers, or NULL while sparse */
} sl_hll_t;

/*
 * xxHash64 of n bytes with a seed, implemented from the published xxHash
 * specification (XXH64): equal to the reference implementation's output for
 * every input, on every platform.
 */
uint64_t sl_hash64(const void *data, size_t n, uint64_t seed);

/* An empty sketch (no allocation). */
void sl_hll_init(sl_hll_t *h);

/* Frees the sketch's memory; it is then empty, ready for reuse. */
void sl_hll_clear(sl_hll_t *h);

/* Adds a value given by its 64-bit hash (use sl_hash64, or any hash with
 * uniformly distributed bits). Returns 0 or -ENOMEM (sketch unchanged). */
int sl_hll_add_hash(sl_hll_t *h, uint64_t hash);

/* Adds the n bytes at data (hashed with sl_hash64, seed 0). */
int sl_hll_add(sl_hll_t *h, const void *data, size_t n);

/* Folds src into dst: dst then estimates the union. Returns 0 or -ENOMEM
 * (dst unchanged). dst and src may not be the same sketch. */
int sl_hll_merge(sl_hll_t *dst, const sl_hll_t *src);

/* Makes dst an exact copy of src, freeing what dst held. 0 or -ENOMEM (dst
 * unchanged). */
int sl_hll_copy(sl_hll_t *dst, const sl_hll_t *src);

/* The estimated number of distinct values added (0 for an empty sketch). */
double sl_hll_estimate(const sl_hll_t *h);

/* 1 if the sketch is dense, 0 if sparse. */
int sl_hll_is_dense(const sl_hll_t *h);

/* Bytes sl_hll_encode writes for h. */
size_t sl_hll_encoded_size(const sl_hll_t *h);

/* Writes the encoding of h (sl_hll_encoded_size bytes) at out. */
void sl_hll_encode(const sl_hll_t *h, uint8_t *out);

/*
 * Replaces h by the sketch encoded in exactly n bytes at data. Returns 0,
 * SL_ECORRUPT with a detail naming what is wrong (h unchanged), or -ENOMEM
 * (h unchanged).
 */
int sl_hll_decode(sl_hll_t *h, const uint8_t *data, size_t n);

#endif

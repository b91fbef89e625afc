/*
 * jsonscan.h - where a JSON text's structure is, found with simdjson.
 *
 * simdjson's first stage (Debian's libsimdjson, C++) reads a text 64 bytes
 * at a time with SIMD instructions and lists the positions of its
 * structural characters: every { } [ ] : and , outside strings, the opening
 * quote of every string, and the first byte of every number or literal, in
 * text order. On the way it refuses text that is not UTF-8, a string that
 * never closes and control characters inside strings. It checks nothing
 * else: the grammar, numbers, literals and escapes are the caller's to
 * check (jsontok.c does, from these positions).
 *
 * This is the one C++ file of sluice, behind a C interface; nothing thrown
 * crosses it. The scanner's buffers come from simdjson's own allocator.
 */
#ifndef SL_LUA_JSONSCAN_H
#define SL_LUA_JSONSCAN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest text sl_jsonscan_run() takes: its buffer holds four bytes per
 * text byte, kept for the scanner's life. Longer texts go the slow way. */
#define SL_JSONSCAN_MAX (1 << 20)

typedef struct sl_jsonscan sl_jsonscan_t;

/* A new scanner, or NULL when out of memory. Free with sl_jsonscan_free. */
sl_jsonscan_t *sl_jsonscan_new(void);

void sl_jsonscan_free(sl_jsonscan_t *scan);

/* Lists the structural positions of text[0..len) (len <= SL_JSONSCAN_MAX)
 * into *positions, owned by scan and valid until its next run. Returns
 * their count, or -1 when simdjson refuses the text (see above) or cannot
 * get the memory: either way the caller decides by other means. */
int32_t sl_jsonscan_run(sl_jsonscan_t *scan, const char *text, int32_t len,
                        const uint32_t **positions);

#ifdef __cplusplus
}
#endif

#endif

/*
 * fuzz_resp.c - libFuzzer target for the RESP2 request parser.
 *
 * Input layout: byte 0 picks the limits (bit 0: tiny limits, so that every
 * limit error is reachable; default limits otherwise), bytes 1-3 seed the
 * sizes of the pieces the stream arrives in, and the rest is the stream a
 * client sends.
 *
 * The stream is parsed three times, as a connection would parse it:
 *
 *   whole     all bytes at once, in an exact-size heap copy;
 *   bytes     one more byte per call (prefixes of one exact-size copy);
 *   pieces    random pieces, sometimes jumping straight to p->need, each
 *             call given a fresh exact-size copy of the unconsumed bytes
 *             (so the buffer moves between calls and ASan sees any read
 *             past its end).
 *
 * Each run consumes commands until an error or until the input is used up,
 * copies every argument byte into a transcript (argc, then each length and
 * bytes; then the final result and error sentence), and checks on the way
 * that consumed counts, argument addresses and p->need keep their promises.
 * The property: the three transcripts are identical, i.e. how the bytes
 * are split never changes the commands or the error. Any broken promise or
 * difference aborts.
 *
 * Parsers are static and reused across inputs (reset in between), so the
 * reuse and trimming of their memory is fuzzed too.
 */
#include "queries/resp.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { WHOLE, BYTES, PIECES, RUNS };

typedef struct transcript {
    uint8_t *bytes;
    size_t len, cap;
    int final_rc;
    char error[sizeof((sl_resp_parser_t *)0)->error];
} transcript_t;

static transcript_t transcripts[RUNS];
static sl_resp_parser_t parsers[2][RUNS];
static int parsers_ready;

static void transcript_add(transcript_t *t, const void *data, size_t n)
{
    if (t->cap - t->len < n) {
        t->cap = (t->cap + n) * 2;
        t->bytes = realloc(t->bytes, t->cap);
        CHECK(t->bytes);
    }
    if (n)
        memcpy(t->bytes + t->len, data, n);
    t->len += n;
}

static int points_into(const sl_resp_arg_t *a, const char *base, size_t size)
{
    return a->len == 0 || (base && a->data >= base && a->data + a->len <= base + size);
}

/* Records the command just returned for buf[0 .. used). */
static void record_command(transcript_t *t, const sl_resp_parser_t *p, const char *buf, size_t len,
                           size_t used)
{
    CHECK(used > 0 && used <= len);
    transcript_add(t, &p->argc, sizeof p->argc);
    for (size_t i = 0; i < p->argc; i++) {
        const sl_resp_arg_t *a = &p->argv[i];
        CHECK(points_into(a, buf, used) || points_into(a, p->scratch, p->scratch_cap));
        transcript_add(t, &a->len, sizeof a->len);
        transcript_add(t, a->data, a->len);
    }
}

static void record_end(transcript_t *t, const sl_resp_parser_t *p, int rc)
{
    CHECK(rc == SL_RESP_INCOMPLETE || rc == SL_RESP_PROTOCOL_ERROR);
    t->final_rc = rc;
    snprintf(t->error, sizeof t->error, "%s", rc ? p->error : "");
    if (rc)
        CHECK(strncmp(p->error, "Protocol error: ", 16) == 0 && !strpbrk(p->error, "\r\n"));
}

static uint32_t next_random(uint32_t *state)
{
    uint32_t x = *state ? *state : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* An exact-size heap copy (one byte, unused, for an empty one). */
static char *copy_of(const uint8_t *s, size_t n)
{
    char *c = malloc(n ? n : 1);
    CHECK(c);
    if (n)
        memcpy(c, s, n);
    return c;
}

static void run_whole(sl_resp_parser_t *p, const uint8_t *s, size_t n, transcript_t *t)
{
    char *buf = copy_of(s, n);
    size_t start = 0, used;
    int rc;
    while ((rc = sl_resp_parse(p, buf + start, n - start, &used)) == SL_RESP_COMMAND) {
        record_command(t, p, buf + start, n - start, used);
        start += used;
    }
    CHECK(rc != SL_RESP_INCOMPLETE || p->need == 0 || p->need > n - start);
    record_end(t, p, rc);
    free(buf);
}

/*
 * Feeds s[0 .. n) with the received end growing by the sizes grow() picks.
 * Every call gets a fresh copy of the unconsumed bytes when moving is set,
 * else a prefix of one copy of the whole stream.
 */
static void run_fed(sl_resp_parser_t *p, const uint8_t *s, size_t n, transcript_t *t, int moving,
                    uint32_t seed)
{
    char *whole = moving ? NULL : copy_of(s, n);
    size_t start = 0, end = 0, used, need = 0;
    for (;;) {
        char *buf = moving ? copy_of(s + start, end - start) : whole + start;
        int rc = sl_resp_parse(p, buf, end - start, &used);
        if (rc == SL_RESP_COMMAND) {
            record_command(t, p, buf, end - start, used);
            CHECK(need <= used);
            start += used;
            need = 0;
        } else if (rc == SL_RESP_INCOMPLETE && end < n) {
            CHECK(p->need == 0 || p->need > end - start);
            need = p->need > need ? p->need : need;
            uint32_t r = moving ? next_random(&seed) : 0;
            if (r % 4 == 1 && p->need)
                end = start + p->need;
            else
                end += moving ? 1 + r % 64 : 1;
            end = end < n ? end : n;
        } else {
            record_end(t, p, rc);
            if (moving)
                free(buf);
            break;
        }
        if (moving)
            free(buf);
    }
    free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sl_resp_limits_t tiny = {.max_args = 4, .max_bulk = 16, .max_inline = 32};
    if (!parsers_ready) {
        for (int r = 0; r < RUNS; r++) {
            sl_resp_parser_init(&parsers[0][r], NULL);
            sl_resp_parser_init(&parsers[1][r], &tiny);
        }
        parsers_ready = 1;
    }
    if (size < 4)
        return 0;
    sl_resp_parser_t *p = parsers[data[0] & 1];
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16;
    const uint8_t *stream = data + 4;
    size_t n = size - 4;

    for (int r = 0; r < RUNS; r++) {
        transcripts[r].len = 0;
        sl_resp_parser_reset(&p[r]);
    }
    run_whole(&p[WHOLE], stream, n, &transcripts[WHOLE]);
    run_fed(&p[BYTES], stream, n, &transcripts[BYTES], 0, 0);
    run_fed(&p[PIECES], stream, n, &transcripts[PIECES], 1, seed);

    for (int r = 1; r < RUNS; r++) {
        CHECK(transcripts[r].len == transcripts[WHOLE].len);
        CHECK(transcripts[r].len == 0 ||
              memcmp(transcripts[r].bytes, transcripts[WHOLE].bytes, transcripts[r].len) == 0);
        CHECK(transcripts[r].final_rc == transcripts[WHOLE].final_rc);
        CHECK(strcmp(transcripts[r].error, transcripts[WHOLE].error) == 0);
    }
    return 0;
}

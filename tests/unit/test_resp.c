/*
 * test_resp.c - the RESP2 request parser: both request forms, pipelining,
 * commands split anywhere, the honesty of `need`, every protocol error,
 * limits, allocation failure, and random input.
 *
 * Buffers handed to the parser are exact-size heap copies, fresh for each
 * call, so that ASan catches any read past buf + len and so that the parser
 * is always exercised with a buffer that moved since the previous call.
 * Leaks are caught by LeakSanitizer when the suite runs under ASan.
 */
#include "testutil.h"

#include "queries/resp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

/* An exact-size heap copy of s[0 .. n) (NULL when n is 0). */
static char *copy_of(const char *s, size_t n)
{
    if (n == 0)
        return NULL;
    char *c = malloc(n);
    assert_non_null(c);
    memcpy(c, s, n);
    return c;
}

/* Parses a fresh copy of s[0 .. n); the copy stays valid for the checks
 * that follow, until the next call. */
static char *last_copy;

static int parse_copy(sl_resp_parser_t *p, const char *s, size_t n, size_t *used)
{
    free(last_copy);
    last_copy = copy_of(s, n);
    return sl_resp_parse(p, last_copy, n, used);
}

static int parse_str(sl_resp_parser_t *p, const char *s, size_t *used)
{
    return parse_copy(p, s, strlen(s), used);
}

static void teardown_copy(void)
{
    free(last_copy);
    last_copy = NULL;
}

/* Checks argv against NULL-terminated strings. */
static void assert_args(const sl_resp_parser_t *p, const char *const *want)
{
    size_t n = 0;
    for (; want[n]; n++) {
        assert_true(n < p->argc);
        assert_int_equal(p->argv[n].len, strlen(want[n]));
        if (p->argv[n].len)
            assert_memory_equal(p->argv[n].data, want[n], p->argv[n].len);
    }
    assert_int_equal(p->argc, n);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Expects s to parse as exactly one command with the given arguments. */
static void assert_command(const char *s, const char *const *want)
{
    sl_resp_parser_t p;
    size_t used = 0;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, s, &used), SL_RESP_COMMAND);
    assert_int_equal(used, strlen(s));
    assert_args(&p, want);
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* Expects s (and every longer stream starting with s) to fail with error. */
static void assert_protocol_error(const sl_resp_limits_t *limits, const char *s, const char *error)
{
    sl_resp_parser_t p;
    size_t used = 1;
    sl_resp_parser_init(&p, limits);
    assert_int_equal(parse_str(&p, s, &used), SL_RESP_PROTOCOL_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(p.argc, 0);
    assert_string_equal(p.error, error);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static int points_into(const sl_resp_arg_t *a, const char *base, size_t size)
{
    return a->len == 0 || (a->data >= base && a->data + a->len <= base + size);
}

/* A deterministic generator, so that failures reproduce. */
static uint32_t next_random(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* ---- well-formed requests --------------------------------------------- */

static void test_multibulk_command_points_into_buffer(void **state)
{
    (void)state;
    static const char req[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
    sl_resp_parser_t p;
    size_t used = 0;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, req, &used), SL_RESP_COMMAND);
    assert_int_equal(used, sizeof req - 1);
    assert_args(&p, ARGS("SET", "k", "value"));
    assert_ptr_equal(p.argv[0].data, last_copy + 8);
    assert_ptr_equal(p.argv[2].data, last_copy + 24);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_inline_command_is_split_on_blanks(void **state)
{
    (void)state;
    assert_command("PING\r\n", ARGS("PING"));
    assert_command("PING\n", ARGS("PING"));
    assert_command("  SET\tk \v value  \r\n", ARGS("SET", "k", "value"));
    assert_command("a\vb\r\n", ARGS("a\vb")); /* as in Redis, \v only separates at a word's start */
    assert_command("x\ry\r\n", ARGS("x", "y"));
}

static void test_inline_words_point_into_buffer(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "GET key\r\n", &used), SL_RESP_COMMAND);
    assert_ptr_equal(p.argv[0].data, last_copy);
    assert_ptr_equal(p.argv[1].data, last_copy + 4);
    assert_int_equal(p.scratch_cap, 0);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_pipelined_commands_come_one_at_a_time(void **state)
{
    (void)state;
    static const char stream[] = "*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"
                                 "\r\nECHO \"a b\"\n*0\r\nGET";
    const char *const *want[] = {ARGS("PING"),        ARGS("PING"),
                                 ARGS("ECHO", "hi"),  (const char *const[]){NULL},
                                 ARGS("ECHO", "a b"), (const char *const[]){NULL}};
    sl_resp_parser_t p;
    size_t at = 0, used;
    sl_resp_parser_init(&p, NULL);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_int_equal(parse_copy(&p, stream + at, sizeof stream - 1 - at, &used),
                         SL_RESP_COMMAND);
        assert_args(&p, want[i]);
        at += used;
    }
    assert_int_equal(parse_copy(&p, stream + at, sizeof stream - 1 - at, &used),
                     SL_RESP_INCOMPLETE);
    assert_int_equal(used, 0);
    assert_int_equal(sizeof stream - 1 - at, 3);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_empty_buffer_is_incomplete(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used = 7;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(sl_resp_parse(&p, NULL, 0, &used), SL_RESP_INCOMPLETE);
    assert_int_equal(used, 0);
    assert_int_equal(p.need, 0);
    sl_resp_parser_free(&p);
}

static void test_values_are_binary_safe(void **state)
{
    (void)state;
    static const char req[] = "*2\r\n$3\r\nk\0y\r\n$8\r\na\r\nb\0\r\n\n\r\n";
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_copy(&p, req, sizeof req - 1, &used), SL_RESP_COMMAND);
    assert_int_equal(used, sizeof req - 1);
    assert_int_equal(p.argc, 2);
    assert_int_equal(p.argv[0].len, 3);
    assert_memory_equal(p.argv[0].data, "k\0y", 3);
    assert_int_equal(p.argv[1].len, 8);
    assert_memory_equal(p.argv[1].data, "a\r\nb\0\r\n\n", 8);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_empty_bulk_argument(void **state)
{
    (void)state;
    assert_command("*2\r\n$3\r\nGET\r\n$0\r\n\r\n", ARGS("GET", ""));
}

static void test_empty_multibulk_is_consumed_without_arguments(void **state)
{
    (void)state;
    assert_command("*0\r\n", (const char *const[]){NULL});
    assert_command("*-1\r\n", (const char *const[]){NULL});
}

static void test_inline_empty_lines_are_skipped(void **state)
{
    (void)state;
    assert_command("\r\n", (const char *const[]){NULL});
    assert_command("\n", (const char *const[]){NULL});
    assert_command(" \t \r\n", (const char *const[]){NULL});
}

static void test_inline_quotes_and_escapes(void **state)
{
    (void)state;
    assert_command("SET \"hello world\" 'it\\'s'\r\n", ARGS("SET", "hello world", "it's"));
    assert_command("\"\\x41\\x4a\\n\\r\\t\\b\\a\\\\\\\"\\q\"\r\n", ARGS("AJ\n\r\t\b\a\\\"q"));
    assert_command("\"\\xZZ\\x4\" ''\r\n", ARGS("xZZx4", ""));
    assert_command("'a\\nb\"c'\r\n", ARGS("a\\nb\"c"));
    assert_command("pre\"fix x\"\r\n", ARGS("prefix x"));
    assert_command("a\"\" \"\"\r\n", ARGS("a", ""));
    assert_command("\"a\"\tb\r\n", ARGS("a", "b"));
}

static void test_inline_escapes_decode_into_scratch(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "SET \"a\\x00b\" plain\r\n", &used), SL_RESP_COMMAND);
    assert_int_equal(p.argc, 3);
    assert_true(points_into(&p.argv[0], last_copy, used));
    assert_int_equal(p.argv[1].len, 3);
    assert_memory_equal(p.argv[1].data, "a\0b", 3);
    assert_true(points_into(&p.argv[1], p.scratch, p.scratch_cap));
    assert_ptr_equal(p.argv[2].data, last_copy + 13);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_inline_nul_ends_the_line_as_in_redis(void **state)
{
    (void)state;
    static const char req[] = "PING\0 junk\r\nECHO";
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_copy(&p, req, sizeof req - 1, &used), SL_RESP_COMMAND);
    assert_int_equal(used, 12);
    assert_args(&p, ARGS("PING"));
    static const char quoted[] = "\"a\0\"\r\n";
    assert_int_equal(parse_copy(&p, quoted, sizeof quoted - 1, &used), SL_RESP_PROTOCOL_ERROR);
    assert_string_equal(p.error, "Protocol error: unbalanced quotes in request");
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* ---- incremental parsing ---------------------------------------------- */

static const char *const split_streams[] = {
    "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$12\r\nhello\r\nworld\r\n",
    "*1\r\n$0\r\n\r\n",
    ("*12\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n"
     "$1\r\ng\r\n$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n$1\r\nk\r\n$10\r\n0123456789\r\n"),
    "SET \"a b\" 'c' d\r\n",
    "PING\n",
    "*-1\r\n",
};

/* Feeds s growing by one byte per call: INCOMPLETE, with an honest need,
 * until the last byte, then the same command as when fed whole. */
static void feed_byte_by_byte(const char *s)
{
    size_t total = strlen(s), used, need = 0;
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    for (size_t k = 0; k < total; k++) {
        assert_int_equal(parse_copy(&p, s, k, &used), SL_RESP_INCOMPLETE);
        assert_int_equal(used, 0);
        assert_true(p.need <= total);
        if (p.need) {
            assert_true(p.need > k);
            assert_true(need == 0 || p.need == need);
        }
        need = k + 1 < p.need ? p.need : 0; /* while short of need, need stays */
    }
    assert_int_equal(parse_copy(&p, s, total, &used), SL_RESP_COMMAND);
    assert_int_equal(used, total);
    sl_resp_parser_t whole;
    sl_resp_parser_init(&whole, NULL);
    char *c = copy_of(s, total);
    assert_int_equal(sl_resp_parse(&whole, c, total, &used), SL_RESP_COMMAND);
    assert_int_equal(whole.argc, p.argc);
    for (size_t i = 0; i < p.argc; i++) {
        assert_int_equal(whole.argv[i].len, p.argv[i].len);
        assert_memory_equal(whole.argv[i].data, p.argv[i].data, p.argv[i].len);
    }
    free(c);
    sl_resp_parser_free(&whole);
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* Feeds s in two pieces, split at k, with a fresh parser. */
static void feed_in_two_pieces(const char *s, size_t k)
{
    size_t total = strlen(s), used;
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_copy(&p, s, k, &used), SL_RESP_INCOMPLETE);
    assert_int_equal(parse_copy(&p, s, total, &used), SL_RESP_COMMAND);
    assert_int_equal(used, total);
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* Feeds s reading only what need asks for once it is known: the command
 * must come without ever being fed fewer bytes than need. */
static void feed_as_need_asks(const char *s)
{
    size_t total = strlen(s), used, k = 0;
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    while (parse_copy(&p, s, k, &used) == SL_RESP_INCOMPLETE) {
        assert_true(k < total);
        k = p.need ? p.need : k + 1;
    }
    assert_int_equal(k, total);
    assert_int_equal(used, total);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_command_split_at_every_byte_position(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof split_streams / sizeof split_streams[0]; i++) {
        feed_byte_by_byte(split_streams[i]);
        feed_as_need_asks(split_streams[i]);
        for (size_t k = 0; k < strlen(split_streams[i]); k++)
            feed_in_two_pieces(split_streams[i], k);
    }
}

static void test_need_announces_a_large_value(void **state)
{
    (void)state;
    enum { VALUE = 10 * 1000 * 1000 };
    static const char head[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000\r\n";
    size_t total = sizeof head - 1 + VALUE + 2, used;
    char *buf = malloc(total);
    assert_non_null(buf);
    memcpy(buf, head, sizeof head - 1);
    memset(buf + sizeof head - 1, 'v', VALUE);
    memcpy(buf + total - 2, "\r\n", 2);
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(sl_resp_parse(&p, buf, sizeof head - 1, &used), SL_RESP_INCOMPLETE);
    assert_int_equal(p.need, total);
    assert_int_equal(sl_resp_parse(&p, buf, total - 1, &used), SL_RESP_INCOMPLETE);
    assert_int_equal(p.need, total);
    assert_int_equal(sl_resp_parse(&p, buf, total, &used), SL_RESP_COMMAND);
    assert_int_equal(used, total);
    assert_int_equal(p.argv[2].len, VALUE);
    assert_ptr_equal(p.argv[2].data, buf + sizeof head - 1);
    sl_resp_parser_free(&p);
    free(buf);
}

static void test_shorter_buffer_restarts_the_command(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "*2\r\n$3\r\nGET\r\n$3\r\nk", &used), SL_RESP_INCOMPLETE);
    assert_int_equal(parse_str(&p, "PING\r\n", &used), SL_RESP_COMMAND);
    assert_args(&p, ARGS("PING"));
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_reset_forgets_a_partial_command(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "*2\r\n$3\r\nGET\r\n$3\r\nkey", &used), SL_RESP_INCOMPLETE);
    sl_resp_parser_reset(&p);
    assert_int_equal(parse_str(&p, "*1\r\n$4\r\nPING\r\n$3\r\nkey", &used), SL_RESP_COMMAND);
    assert_int_equal(used, 14);
    assert_args(&p, ARGS("PING"));
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_parser_is_reusable_after_an_error(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "*1\r\n$4\r\nPING\r\n", &used), SL_RESP_COMMAND);
    assert_int_equal(parse_str(&p, "*1\r\n$x", &used), SL_RESP_PROTOCOL_ERROR);
    assert_int_equal(parse_str(&p, "ECHO hi\r\n", &used), SL_RESP_COMMAND);
    assert_args(&p, ARGS("ECHO", "hi"));
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* ---- protocol errors -------------------------------------------------- */

static void test_invalid_multibulk_length_is_rejected(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "*x\r\n",
        "*+1\r\n",
        "* 1\r\n",
        "*1 \r\n",
        "*1x",
        "*-2\r\n",
        "*-0\r\n",
        "*01\r\n",
        "*00\r\n",
        "*\r\n",
        "*-\r\n",
        "*1\r\r\n",
        "*1\n",
        "*1\rx",
        "*0x10\r\n",
        "*--1\r\n",
        "*99999999999999999999\r\n", /* overflow */
        "*9223372036854775808",      /* INT64_MAX + 1, rejected before the CRLF */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_protocol_error(NULL, bad[i], "Protocol error: invalid multibulk length");
}

static void test_invalid_bulk_length_is_rejected(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "*1\r\n$x\r\n",  "*1\r\n$-1\r\n", "*1\r\n$+4\r\nPING\r\n",
        "*1\r\n$04\r\n", "*1\r\n$-0\r\n", "*1\r\n$\r\n",
        "*1\r\n$4 \r\n", "*1\r\n$4\n",    "*1\r\n$99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_protocol_error(NULL, bad[i], "Protocol error: invalid bulk length");
}

static void test_missing_dollar_is_rejected(void **state)
{
    (void)state;
    assert_protocol_error(NULL, "*1\r\n:4\r\nPING\r\n", "Protocol error: expected '$', got ':'");
    assert_protocol_error(NULL, "*2\r\n$1\r\na\r\nb", "Protocol error: expected '$', got 'b'");
    assert_protocol_error(NULL, "*1\r\n\r\n", "Protocol error: expected '$', got '\\x0d'");
}

static void test_missing_crlf_after_bulk_is_rejected(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "*1\r\n$4\r\nPINGxx",  "*1\r\n$4\r\nPINGx", /* detected before more bytes */
        "*1\r\n$4\r\nPING\rx", "*1\r\n$4\r\nPING\n\r", "*1\r\n$3\r\nPING\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_protocol_error(NULL, bad[i], "Protocol error: expected CRLF after bulk data");
}

static void test_too_big_inline_request_is_rejected(void **state)
{
    (void)state;
    size_t max = SL_RESP_DEFAULT_MAX_INLINE, used;
    char *line = malloc(max + 3);
    assert_non_null(line);
    memset(line, 'a', max + 3);
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    line[max] = '\r';
    assert_int_equal(parse_copy(&p, line, max + 1, &used), SL_RESP_INCOMPLETE);
    line[max + 1] = '\n';
    assert_int_equal(parse_copy(&p, line, max + 2, &used), SL_RESP_COMMAND);
    assert_int_equal(p.argv[0].len, max);
    line[max] = 'a';
    assert_int_equal(parse_copy(&p, line, max + 1, &used), SL_RESP_PROTOCOL_ERROR);
    assert_string_equal(p.error, "Protocol error: too big inline request");
    line[max + 1] = '\r';
    line[max + 2] = '\n';
    assert_int_equal(parse_copy(&p, line, max + 3, &used), SL_RESP_PROTOCOL_ERROR);
    assert_string_equal(p.error, "Protocol error: too big inline request");
    sl_resp_parser_free(&p);
    teardown_copy();
    free(line);
}

static void test_unbalanced_quotes_are_rejected(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "SET \"abc\r\n", "SET 'abc\n",   "\"abc\"def\r\n", "\"abc\\\"\r\n",
        "'a\\'\r\n",     "\"a\"'b'\r\n", "\"\\\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_protocol_error(NULL, bad[i], "Protocol error: unbalanced quotes in request");
}

static void test_too_many_arguments_are_rejected(void **state)
{
    (void)state;
    sl_resp_limits_t limits = {.max_args = 3};
    const char *error = "Protocol error: too many arguments (max 3)";
    assert_protocol_error(&limits, "*4\r\n", error);
    assert_protocol_error(&limits, "a b c d\r\n", error);
    assert_protocol_error(NULL, "*1048577\r\n", "Protocol error: too many arguments (max 1048576)");
    assert_protocol_error(NULL, "*9223372036854775807\r\n",
                          "Protocol error: too many arguments (max 1048576)");
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, &limits);
    assert_int_equal(parse_str(&p, "a b c\r\n", &used), SL_RESP_COMMAND);
    assert_int_equal(parse_str(&p, "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", &used),
                     SL_RESP_COMMAND);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_bulk_over_limit_is_rejected(void **state)
{
    (void)state;
    assert_protocol_error(NULL, "*1\r\n$536870913\r\n",
                          "Protocol error: bulk length 536870913 exceeds limit 536870912");
    sl_resp_limits_t limits = {.max_bulk = 4};
    assert_protocol_error(&limits, "*1\r\n$5\r\n", "Protocol error: bulk length 5 exceeds limit 4");
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "*1\r\n$536870912\r\n", &used), SL_RESP_INCOMPLETE);
    assert_int_equal(p.need, 16 + 536870912 + 2);
    assert_true(p.argv_cap <= 8);
    sl_resp_parser_free(&p);
    teardown_copy();
}

static void test_errors_carry_no_line_breaks(void **state)
{
    (void)state;
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_str(&p, "*1\r\n\n", &used), SL_RESP_PROTOCOL_ERROR);
    assert_null(strpbrk(p.error, "\r\n"));
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* ---- limits and memory ------------------------------------------------ */

static void test_zero_limits_take_the_defaults(void **state)
{
    (void)state;
    sl_resp_limits_t limits = {.max_bulk = 100};
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, &limits);
    assert_int_equal(p.limits.max_args, SL_RESP_DEFAULT_MAX_ARGS);
    assert_int_equal(p.limits.max_bulk, 100);
    assert_int_equal(p.limits.max_inline, SL_RESP_DEFAULT_MAX_INLINE);
    sl_resp_parser_free(&p);
}

/* A multibulk command of n arguments "0", "1", ..., in a malloc'd buffer. */
static char *many_args_command(size_t n, size_t *len)
{
    size_t cap = 32 + n * 24, at = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    at += (size_t)sprintf(buf, "*%zu\r\n", n);
    for (size_t i = 0; i < n; i++) {
        char word[24];
        int w = sprintf(word, "%zu", i);
        at += (size_t)sprintf(buf + at, "$%d\r\n%s\r\n", w, word);
    }
    *len = at;
    return buf;
}

static void assert_many_args(const sl_resp_parser_t *p, size_t n)
{
    assert_int_equal(p->argc, n);
    for (size_t i = 0; i < n; i++) {
        char word[24];
        int w = sprintf(word, "%zu", i);
        assert_int_equal(p->argv[i].len, (size_t)w);
        assert_memory_equal(p->argv[i].data, word, (size_t)w);
    }
}

static void test_ten_thousand_arguments(void **state)
{
    (void)state;
    enum { N = 10000 };
    size_t len, used, k = 0;
    char *buf = many_args_command(N, &len);
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_copy(&p, buf, len, &used), SL_RESP_COMMAND);
    assert_int_equal(used, len);
    assert_many_args(&p, N);
    assert_true(p.argv_cap <= N);
    while (parse_copy(&p, buf, k, &used) == SL_RESP_INCOMPLETE)
        k += 61;
    assert_int_equal(used, len);
    assert_many_args(&p, N);
    assert_int_equal(parse_str(&p, "PING\r\n", &used), SL_RESP_COMMAND);
    assert_true(p.argv_cap < N); /* a huge argv is not kept for ever */
    sl_resp_parser_free(&p);
    teardown_copy();
    free(buf);
}

static void test_ten_thousand_inline_arguments(void **state)
{
    (void)state;
    enum { N = 10000 };
    char *line = malloc(N * 6 + 2);
    assert_non_null(line);
    size_t at = 0, used;
    for (size_t i = 0; i < N; i++)
        at += (size_t)sprintf(line + at, "%zu ", i);
    memcpy(line + at, "\r\n", 2);
    sl_resp_parser_t p;
    sl_resp_parser_init(&p, NULL);
    assert_int_equal(parse_copy(&p, line, at + 2, &used), SL_RESP_COMMAND);
    assert_many_args(&p, N);
    sl_resp_parser_free(&p);
    teardown_copy();
    free(line);
}

static void test_huge_declared_count_allocates_nothing_up_front(void **state)
{
    (void)state;
    sl_resp_limits_t limits = {.max_args = 2000000000};
    sl_resp_parser_t p;
    size_t used;
    sl_resp_parser_init(&p, &limits);
    sl_alloc_fail_after(0);
    assert_int_equal(parse_str(&p, "*1000000000\r\n", &used), SL_RESP_INCOMPLETE);
    assert_int_equal(p.argv_cap, 0);
    sl_alloc_fail_after(-1);
    assert_int_equal(parse_str(&p, "*1000000000\r\n$1\r\nx\r\n$1\r\n", &used), SL_RESP_INCOMPLETE);
    assert_true(p.argv_cap <= 8);
    sl_resp_parser_free(&p);
    teardown_copy();
    assert_protocol_error(NULL, "*1000000000\r\n",
                          "Protocol error: too many arguments (max 1048576)");
}

/* Parses s with the n-th allocation failing, for n = 0, 1, ... until no
 * allocation fails; after a failure the same call, repeated, must succeed. */
static void walk_allocation_failures(const char *s, size_t len, void (*check)(sl_resp_parser_t *))
{
    for (long n = 0, failed = 1; failed; n++) {
        sl_resp_parser_t p;
        size_t used;
        sl_resp_parser_init(&p, NULL);
        sl_alloc_fail_after(n);
        int rc = parse_copy(&p, s, len, &used);
        sl_alloc_fail_after(-1);
        failed = rc == SL_RESP_NOMEM;
        if (failed) {
            assert_int_equal(used, 0);
            assert_string_equal(p.error, "out of memory");
            rc = parse_copy(&p, s, len, &used);
        }
        assert_int_equal(rc, SL_RESP_COMMAND);
        assert_int_equal(used, len);
        check(&p);
        sl_resp_parser_free(&p);
        teardown_copy();
    }
}

static void check_many(sl_resp_parser_t *p)
{
    assert_many_args(p, 1000);
}

static void check_quoted(sl_resp_parser_t *p)
{
    assert_args(p, ARGS("SET", "a b", "c\n", "d"));
}

static void test_allocation_failure_returns_nomem_and_retry_succeeds(void **state)
{
    (void)state;
    size_t len;
    char *buf = many_args_command(1000, &len);
    walk_allocation_failures(buf, len, check_many);
    free(buf);
    static const char quoted[] = "SET \"a b\" \"c\\n\" d\r\n";
    walk_allocation_failures(quoted, sizeof quoted - 1, check_quoted);
}

/* ---- random input ----------------------------------------------------- */

/* What a stream parsed into: each command as argc, then len and bytes of
 * each argument; then the final result and error. */
typedef struct transcript {
    char *bytes;
    size_t len, cap;
    int final_rc;
    char error[128];
} transcript_t;

static void transcript_add(transcript_t *t, const void *data, size_t n)
{
    if (t->cap - t->len < n) {
        t->cap = (t->cap + n) * 2;
        t->bytes = realloc(t->bytes, t->cap);
        assert_non_null(t->bytes);
    }
    memcpy(t->bytes + t->len, data, n);
    t->len += n;
}

static void transcript_command(transcript_t *t, const sl_resp_parser_t *p, const char *buf,
                               size_t len, size_t used)
{
    assert_true(used > 0 && used <= len);
    transcript_add(t, &p->argc, sizeof p->argc);
    for (size_t i = 0; i < p->argc; i++) {
        assert_true(points_into(&p->argv[i], buf, used) ||
                    points_into(&p->argv[i], p->scratch, p->scratch_cap));
        transcript_add(t, &p->argv[i].len, sizeof p->argv[i].len);
        transcript_add(t, p->argv[i].data, p->argv[i].len);
    }
}

/* Parses stream[0 .. n) as a connection would: whole (step 0), byte by
 * byte (step 1) or in random pieces (step 2), handing out a moved copy of
 * the unconsumed bytes at every call. */
static void run_stream(const char *stream, size_t n, int step, uint32_t seed, transcript_t *t,
                       const sl_resp_limits_t *limits)
{
    sl_resp_parser_t p;
    size_t start = 0, end = step == 0 ? n : 0, used, need = 0;
    sl_resp_parser_init(&p, limits);
    for (;;) {
        int rc = parse_copy(&p, stream + start, end - start, &used);
        if (rc == SL_RESP_COMMAND) {
            transcript_command(t, &p, last_copy, end - start, used);
            assert_true(need <= used);
            start += used;
            need = 0;
            continue;
        }
        if (rc == SL_RESP_INCOMPLETE && end < n) {
            assert_true(p.need == 0 || p.need > end - start);
            need = p.need > need ? p.need : need;
            end += step == 1 ? 1 : 1 + next_random(&seed) % 16;
            end = end < n ? end : n;
            continue;
        }
        t->final_rc = rc;
        snprintf(t->error, sizeof t->error, "%s", rc ? p.error : "");
        break;
    }
    sl_resp_parser_free(&p);
    teardown_copy();
}

/* A stream of plausible requests, some of them damaged. */
static size_t random_stream(uint32_t *seed, char *out, size_t cap)
{
    static const char alphabet[] = "*$-0123456789\r\n\r\n \t\"'\\xab\0PING";
    size_t at = 0;
    while (at + 64 < cap && next_random(seed) % 16) {
        uint32_t kind = next_random(seed) % 4, argc = next_random(seed) % 4;
        if (kind == 0) {
            at += (size_t)sprintf(out + at, "*%u\r\n", argc);
            for (uint32_t i = 0; i < argc; i++) {
                uint32_t w = next_random(seed) % 6;
                at += (size_t)sprintf(out + at, "$%u\r\n", w);
                for (uint32_t j = 0; j < w; j++)
                    out[at++] = alphabet[next_random(seed) % (sizeof alphabet - 1)];
                at += (size_t)sprintf(out + at, "\r\n");
            }
        } else if (kind == 1) {
            at += (size_t)sprintf(out + at, "ECHO \"a\\x41\\n\" 'b\\'' c\r\n");
        } else if (kind == 2) {
            at += (size_t)sprintf(out + at, "%s", argc ? "\r\n" : "*-1\r\n");
        } else {
            for (uint32_t j = next_random(seed) % 12; j > 0; j--)
                out[at++] = alphabet[next_random(seed) % (sizeof alphabet - 1)];
        }
    }
    for (uint32_t flips = next_random(seed) % 3; flips > 0 && at > 0; flips--)
        out[next_random(seed) % at] = (char)next_random(seed);
    return at;
}

static void test_feeding_in_pieces_gives_the_same_commands(void **state)
{
    (void)state;
    sl_resp_limits_t small = {.max_args = 3, .max_bulk = 4, .max_inline = 24};
    static char stream[1024];
    uint32_t seed = 12345;
    for (int round = 0; round < 600; round++) {
        size_t n = random_stream(&seed, stream, sizeof stream);
        const sl_resp_limits_t *limits = round % 2 ? &small : NULL;
        transcript_t whole = {0}, bytes = {0}, pieces = {0};
        run_stream(stream, n, 0, 0, &whole, limits);
        run_stream(stream, n, 1, 0, &bytes, limits);
        run_stream(stream, n, 2, seed, &pieces, limits);
        assert_int_equal(whole.len, bytes.len);
        assert_int_equal(whole.len, pieces.len);
        assert_memory_equal(whole.bytes, bytes.bytes, whole.len);
        assert_memory_equal(whole.bytes, pieces.bytes, whole.len);
        assert_int_equal(whole.final_rc, bytes.final_rc);
        assert_int_equal(whole.final_rc, pieces.final_rc);
        assert_string_equal(whole.error, bytes.error);
        assert_string_equal(whole.error, pieces.error);
        free(whole.bytes);
        free(bytes.bytes);
        free(pieces.bytes);
    }
}

static void test_random_bytes_never_crash(void **state)
{
    (void)state;
    static char buf[512];
    uint32_t seed = 777;
    for (int round = 0; round < 5000; round++) {
        size_t n = next_random(&seed) % sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)next_random(&seed);
        if (round % 2)
            buf[0] = '*';
        transcript_t t = {0};
        run_stream(buf, n, 2, seed, &t, NULL);
        assert_true(t.final_rc == SL_RESP_INCOMPLETE || t.final_rc == SL_RESP_PROTOCOL_ERROR);
        free(t.bytes);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multibulk_command_points_into_buffer),
        cmocka_unit_test(test_inline_command_is_split_on_blanks),
        cmocka_unit_test(test_inline_words_point_into_buffer),
        cmocka_unit_test(test_pipelined_commands_come_one_at_a_time),
        cmocka_unit_test(test_empty_buffer_is_incomplete),
        cmocka_unit_test(test_values_are_binary_safe),
        cmocka_unit_test(test_empty_bulk_argument),
        cmocka_unit_test(test_empty_multibulk_is_consumed_without_arguments),
        cmocka_unit_test(test_inline_empty_lines_are_skipped),
        cmocka_unit_test(test_inline_quotes_and_escapes),
        cmocka_unit_test(test_inline_escapes_decode_into_scratch),
        cmocka_unit_test(test_inline_nul_ends_the_line_as_in_redis),
        cmocka_unit_test(test_command_split_at_every_byte_position),
        cmocka_unit_test(test_need_announces_a_large_value),
        cmocka_unit_test(test_shorter_buffer_restarts_the_command),
        cmocka_unit_test(test_reset_forgets_a_partial_command),
        cmocka_unit_test(test_parser_is_reusable_after_an_error),
        cmocka_unit_test(test_invalid_multibulk_length_is_rejected),
        cmocka_unit_test(test_invalid_bulk_length_is_rejected),
        cmocka_unit_test(test_missing_dollar_is_rejected),
        cmocka_unit_test(test_missing_crlf_after_bulk_is_rejected),
        cmocka_unit_test(test_too_big_inline_request_is_rejected),
        cmocka_unit_test(test_unbalanced_quotes_are_rejected),
        cmocka_unit_test(test_too_many_arguments_are_rejected),
        cmocka_unit_test(test_bulk_over_limit_is_rejected),
        cmocka_unit_test(test_errors_carry_no_line_breaks),
        cmocka_unit_test(test_zero_limits_take_the_defaults),
        cmocka_unit_test(test_ten_thousand_arguments),
        cmocka_unit_test(test_ten_thousand_inline_arguments),
        cmocka_unit_test(test_huge_declared_count_allocates_nothing_up_front),
        cmocka_unit_test(test_allocation_failure_returns_nomem_and_retry_succeeds),
        cmocka_unit_test(test_feeding_in_pieces_gives_the_same_commands),
        cmocka_unit_test(test_random_bytes_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * resp.c - the RESP2 request parser (the interface and its rules are in
 * resp.h).
 *
 * Grammar, as Redis's networking.c reads requests (processMultibulkBuffer,
 * processInlineBuffer, sdssplitargs):
 *
 *   request   = multibulk | inline
 *   multibulk = "*" count CRLF  count * ( "$" length CRLF <length bytes> CRLF )
 *   count     = "-1" | "0" | positive        -1 and 0: nothing to run
 *   length    = "0" | positive               at most limits.max_bulk
 *   positive  = %x31-39 *DIGIT               at most INT64_MAX
 *   inline    = line ( LF | CRLF )           any request not starting '*'
 *
 * Numbers are canonical decimals: no '+', no leading zeros, no "-0", no
 * overflow, as Redis's string2ll() demands. Two places are stricter than
 * Redis: a count below -1 is an error (Redis ignores the request), and the
 * CRLF after a header or after bulk bytes must be CR LF (Redis skips two
 * bytes unseen).
 *
 * An inline line (without its CRLF, cut at its first NUL byte as Redis's C
 * string handling does) is split into words by sdssplitargs() rules: blanks
 * (the isspace() set) separate words; a word is an unquoted part made of
 * anything but space, tab, CR, LF and quotes, optionally followed by a
 * "double-quoted" part (escapes \xHH \n \r \t \b \a, and \c for any other c)
 * or a 'single-quoted' one (only \' is an escape). A closing quote must be
 * followed by a blank or the end of the line.
 *
 * The state machine. A command is parsed from buf[0]; p->pos records how far
 * earlier calls got, so each byte is examined once however the command is
 * split across reads:
 *
 *   START --'*'--> COUNT --count > 0--> HEADER <--> BULK --last one--> done
 *     |              `---count <= 0---------------------------------> done
 *     `--other---> LINE: memchr '\n' from pos --found--> split words --> done
 *
 * COUNT and HEADER re-read their few bytes (at most 23: a type byte, a sign,
 * 19 digits, CRLF) until the CRLF is there, and fail as soon as a byte
 * cannot belong to a valid header; an incomplete COUNT leaves the parser in
 * START, so nothing about it is remembered. BULK waits for pos + length + 2 bytes;
 * that total is what p->need announces. Every decision depends only on the
 * bytes before the point where it is made, so feeding a stream byte by byte
 * yields the same commands and the same error as feeding it at once.
 *
 * Invariant while a multibulk command is in progress: arguments 0 .. argc-1
 * are complete, their lengths are in argv[i].len, and pos is the offset of
 * the next header (HEADER) or of argument argc's bytes (BULK). Addresses are
 * not stored, because buf may move between calls: when the command
 * completes they are recomputed from the lengths alone, which works because
 * canonical numbers make every header's size a function of its value.
 *
 * Memory: argv grows by doubling as argument headers arrive (never beyond
 * the declared count), the scratch buffer grows to the longest quoted inline
 * line; both are reused across commands, and trimmed when a new command
 * starts if an earlier one made them unusually large.
 */
#include "queries/resp.h"

#include <assert.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { START = 0, COUNT, HEADER, BULK, LINE };

/* A step of the state machine made progress (internal result only). */
#define PROGRESS 2

enum { NUMBER_OK, NUMBER_MORE, NUMBER_BAD };

/* Memory kept between commands; beyond this it is freed at the next one. */
#define KEEP_ARGS    4096
#define KEEP_SCRATCH ((size_t)64 * 1024)

/* ---- errors ----------------------------------------------------------- */

static int protocol_error(sl_resp_parser_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int protocol_error(sl_resp_parser_t *p, const char *fmt, ...)
{
    static const char prefix[] = "Protocol error: ";
    va_list ap;
    memcpy(p->error, prefix, sizeof prefix);
    va_start(ap, fmt);
    vsnprintf(p->error + sizeof prefix - 1, sizeof p->error - sizeof prefix + 1, fmt, ap);
    va_end(ap);
    return SL_RESP_PROTOCOL_ERROR;
}

static int out_of_memory(sl_resp_parser_t *p)
{
    snprintf(p->error, sizeof p->error, "out of memory");
    return SL_RESP_NOMEM;
}

static int expected_dollar(sl_resp_parser_t *p, unsigned char c)
{
    if (c >= 0x20 && c < 0x7f)
        return protocol_error(p, "expected '$', got '%c'", c);
    return protocol_error(p, "expected '$', got '\\x%02x'", c);
}

/* ---- memory ----------------------------------------------------------- */

/* Doubles argv, up to bound: the most arguments the command can have, so
 * that growth never allocates beyond what the client declared. */
static int grow_args(sl_resp_parser_t *p, size_t bound)
{
    size_t cap = p->argv_cap ? p->argv_cap * 2 : 8;
    if (cap > bound)
        cap = bound;
    sl_resp_arg_t *argv = sl_realloc(p->argv, cap * sizeof *argv);
    if (!argv)
        return out_of_memory(p);
    p->argv = argv;
    p->argv_cap = cap;
    return 0;
}

/* Makes room for argv[argc]; see grow_args() for bound. */
static inline int reserve_arg(sl_resp_parser_t *p, size_t bound)
{
    assert(p->argc < bound);
    return p->argc < p->argv_cap ? 0 : grow_args(p, bound);
}

static int reserve_scratch(sl_resp_parser_t *p, size_t size)
{
    if (p->scratch_cap >= size)
        return 0;
    char *scratch = sl_realloc(p->scratch, size);
    if (!scratch)
        return out_of_memory(p);
    p->scratch = scratch;
    p->scratch_cap = size;
    return 0;
}

static void trim_memory(sl_resp_parser_t *p)
{
    if (p->argv_cap > KEEP_ARGS) {
        sl_free(p->argv);
        p->argv = NULL;
        p->argv_cap = 0;
    }
    if (p->scratch_cap > KEEP_SCRATCH) {
        sl_free(p->scratch);
        p->scratch = NULL;
        p->scratch_cap = 0;
    }
}

static void push_arg(sl_resp_parser_t *p, const char *data, size_t len)
{
    assert(p->argc < p->argv_cap);
    p->argv[p->argc].data = data;
    p->argv[p->argc].len = len;
    p->argc++;
}

/* ---- multibulk -------------------------------------------------------- */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads a canonical decimal and its CRLF from s[0 .. n). NUMBER_MORE means
 * every byte so far fits and more are needed; *used covers the CRLF. At
 * most 19 digits are read: enough for INT64_MAX, too few to overflow v. */
static int scan_number(const char *s, size_t n, int64_t *value, size_t *used)
{
    size_t first = n > 0 && s[0] == '-';
    size_t i = first, end = n - first > 19 ? first + 19 : n;
    uint64_t v = 0;
    for (; i < end && is_digit(s[i]); i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    size_t digits = i - first;
    if ((digits > 1 && s[first] == '0') || v > INT64_MAX || (i < n && is_digit(s[i])))
        return NUMBER_BAD;
    if (i == n || (s[i] == '\r' && i + 1 == n))
        return NUMBER_MORE;
    if (digits == 0 || s[i] != '\r' || s[i + 1] != '\n' || (first && v == 0))
        return NUMBER_BAD;
    *value = first ? -(int64_t)v : (int64_t)v;
    *used = i + 2;
    return NUMBER_OK;
}

/* COUNT: "*<count>\r\n" at buf[0]. */
static int parse_count(sl_resp_parser_t *p, const char *buf, size_t len)
{
    int64_t count = 0;
    size_t used = 0;
    int rc = scan_number(buf + 1, len - 1, &count, &used);
    if (rc == NUMBER_MORE) {
        p->state = START; /* nothing to remember: the next call re-reads buf[0] */
        return SL_RESP_INCOMPLETE;
    }
    if (rc == NUMBER_BAD || count < -1)
        return protocol_error(p, "invalid multibulk length");
    if (count > 0 && (uint64_t)count > p->limits.max_args)
        return protocol_error(p, "too many arguments (max %zu)", p->limits.max_args);
    p->pos = 1 + used;
    p->args_left = count > 0 ? (size_t)count : 0;
    p->state = HEADER;
    return PROGRESS;
}

/* HEADER: "$<length>\r\n" at pos. */
static int parse_bulk_header(sl_resp_parser_t *p, const char *buf, size_t len)
{
    if (p->pos == len)
        return SL_RESP_INCOMPLETE;
    if (buf[p->pos] != '$')
        return expected_dollar(p, (unsigned char)buf[p->pos]);
    int64_t length = 0;
    size_t used = 0;
    int rc = scan_number(buf + p->pos + 1, len - p->pos - 1, &length, &used);
    if (rc == NUMBER_MORE)
        return SL_RESP_INCOMPLETE;
    if (rc == NUMBER_BAD || length < 0)
        return protocol_error(p, "invalid bulk length");
    if ((uint64_t)length > p->limits.max_bulk)
        return protocol_error(p, "bulk length %lld exceeds limit %zu", (long long)length,
                              p->limits.max_bulk);
    if (reserve_arg(p, p->argc + p->args_left))
        return SL_RESP_NOMEM;
    p->argv[p->argc].len = (size_t)length;
    p->bulk_len = (size_t)length;
    p->pos += 1 + used;
    p->state = BULK;
    return PROGRESS;
}

/* BULK: bulk_len bytes and CRLF at pos. */
static int parse_bulk_data(sl_resp_parser_t *p, const char *buf, size_t len)
{
    size_t have = len - p->pos, want = p->bulk_len;
    if (have < want + 2) {
        if (have > want && buf[p->pos + want] != '\r')
            return protocol_error(p, "expected CRLF after bulk data");
        p->need = p->pos + want + 2;
        return SL_RESP_INCOMPLETE;
    }
    const char *end = buf + p->pos + want;
    if (end[0] != '\r' || end[1] != '\n')
        return protocol_error(p, "expected CRLF after bulk data");
    p->pos += want + 2;
    p->argc++;
    p->args_left--;
    p->state = HEADER;
    return PROGRESS;
}

static size_t decimal_digits(size_t v)
{
    size_t digits = 1;
    for (; v >= 10; v /= 10)
        digits++;
    return digits;
}

/* Sets every argument's address from the lengths (see the invariant). */
static void point_args(sl_resp_parser_t *p, const char *buf)
{
    if (p->argc == 0)
        return;
    size_t at = 3 + decimal_digits(p->argc);
    for (size_t i = 0; i < p->argc; i++) {
        at += 3 + decimal_digits(p->argv[i].len);
        p->argv[i].data = buf + at;
        at += p->argv[i].len + 2;
    }
    assert(at == p->pos);
}

static int parse_multibulk(sl_resp_parser_t *p, const char *buf, size_t len)
{
    int rc = p->state == COUNT ? parse_count(p, buf, len) : PROGRESS;
    while (rc == PROGRESS && p->args_left > 0)
        rc = p->state == HEADER ? parse_bulk_header(p, buf, len) : parse_bulk_data(p, buf, len);
    if (rc != PROGRESS)
        return rc;
    point_args(p, buf);
    return SL_RESP_COMMAND;
}

/* ---- inline ----------------------------------------------------------- */

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int ends_unquoted(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One character of a "double-quoted" part at s[0 .. n): decodes it into
 * *out and returns the bytes it took. */
static size_t unescape_double(const char *s, size_t n, char *out)
{
    if (s[0] != '\\' || n < 2) {
        *out = s[0];
        return 1;
    }
    if (s[1] == 'x' && n >= 4 && hex_value(s[2]) >= 0 && hex_value(s[3]) >= 0) {
        *out = (char)(hex_value(s[2]) * 16 + hex_value(s[3]));
        return 4;
    }
    switch (s[1]) {
    case 'n':
        *out = '\n';
        break;
    case 'r':
        *out = '\r';
        break;
    case 't':
        *out = '\t';
        break;
    case 'b':
        *out = '\b';
        break;
    case 'a':
        *out = '\a';
        break;
    default:
        *out = s[1];
        break;
    }
    return 2;
}

/* One character of a 'single-quoted' part, as above. */
static size_t unescape_single(const char *s, size_t n, char *out)
{
    if (s[0] == '\\' && n >= 2 && s[1] == '\'') {
        *out = '\'';
        return 2;
    }
    *out = s[0];
    return 1;
}

/*
 * A word whose unquoted part line[start .. *i) is followed by a quote at *i.
 * Decodes it into the scratch buffer after the *used bytes earlier words
 * took, and moves *i past it. The scratch buffer holds the whole line, and
 * no word decodes longer than its source, so it never moves while a line is
 * being split.
 */
static int quoted_word(sl_resp_parser_t *p, const char *line, size_t n, size_t start, size_t *i,
                       size_t *used)
{
    if (reserve_scratch(p, n))
        return SL_RESP_NOMEM;
    char *word = p->scratch + *used, *out = word;
    memcpy(out, line + start, *i - start);
    out += *i - start;
    size_t j = *i;
    char quote = line[j++];
    while (j < n && line[j] != quote)
        j += quote == '"' ? unescape_double(line + j, n - j, out++)
                          : unescape_single(line + j, n - j, out++);
    if (j == n || (j + 1 < n && !is_blank(line[j + 1])))
        return protocol_error(p, "unbalanced quotes in request");
    push_arg(p, word, (size_t)(out - word));
    *used += (size_t)(out - word);
    *i = j + 1;
    return PROGRESS;
}

/* Splits line[0 .. n) into argv. */
static int split_words(sl_resp_parser_t *p, const char *line, size_t n)
{
    size_t i = 0, used = 0;
    p->argc = 0;
    for (;;) {
        while (i < n && is_blank(line[i]))
            i++;
        if (i == n)
            return PROGRESS;
        if (p->argc == p->limits.max_args)
            return protocol_error(p, "too many arguments (max %zu)", p->limits.max_args);
        if (reserve_arg(p, p->limits.max_args))
            return SL_RESP_NOMEM;
        size_t start = i;
        while (i < n && !ends_unquoted(line[i]))
            i++;
        if (i < n && (line[i] == '"' || line[i] == '\'')) {
            int rc = quoted_word(p, line, n, start, &i, &used);
            if (rc != PROGRESS)
                return rc;
        } else {
            push_arg(p, line + start, i - start);
        }
    }
}

/* LINE: everything up to '\n'; pos is how far earlier calls searched. */
static int parse_inline(sl_resp_parser_t *p, const char *buf, size_t len)
{
    const char *newline = memchr(buf + p->pos, '\n', len - p->pos);
    if (!newline) {
        p->pos = len;
        if (len - (buf[len - 1] == '\r') > p->limits.max_inline)
            return protocol_error(p, "too big inline request");
        return SL_RESP_INCOMPLETE;
    }
    size_t end = (size_t)(newline - buf);
    size_t line_len = end - (end > 0 && buf[end - 1] == '\r');
    if (line_len > p->limits.max_inline)
        return protocol_error(p, "too big inline request");
    const char *nul = memchr(buf, '\0', line_len);
    int rc = split_words(p, buf, nul ? (size_t)(nul - buf) : line_len);
    if (rc != PROGRESS)
        return rc;
    p->pos = end + 1;
    return SL_RESP_COMMAND;
}

/* ---- the interface ---------------------------------------------------- */

static void restart(sl_resp_parser_t *p)
{
    p->state = START;
    p->pos = 0;
    p->args_left = 0;
    p->bulk_len = 0;
}

void sl_resp_parser_init(sl_resp_parser_t *p, const sl_resp_limits_t *limits)
{
    memset(p, 0, sizeof *p);
    if (limits)
        p->limits = *limits;
    if (!p->limits.max_args)
        p->limits.max_args = SL_RESP_DEFAULT_MAX_ARGS;
    if (!p->limits.max_bulk)
        p->limits.max_bulk = SL_RESP_DEFAULT_MAX_BULK;
    if (!p->limits.max_inline)
        p->limits.max_inline = SL_RESP_DEFAULT_MAX_INLINE;
    /* Beyond these, sizes computed from them could overflow. */
    if (p->limits.max_args > SIZE_MAX / 2 / sizeof(sl_resp_arg_t))
        p->limits.max_args = SIZE_MAX / 2 / sizeof(sl_resp_arg_t);
    if (p->limits.max_bulk > SIZE_MAX / 4)
        p->limits.max_bulk = SIZE_MAX / 4;
}

static void start_command(sl_resp_parser_t *p, const char *buf)
{
    trim_memory(p);
    p->argc = 0;
    p->state = buf[0] == '*' ? COUNT : LINE;
}

int sl_resp_parse(sl_resp_parser_t *p, const char *buf, size_t len, size_t *consumed)
{
    *consumed = 0;
    p->need = 0;
    if (len < p->pos || len == 0)
        restart(p);
    if (len == 0)
        return SL_RESP_INCOMPLETE;
    if (p->state == START)
        start_command(p, buf);
    int rc = p->state == LINE ? parse_inline(p, buf, len) : parse_multibulk(p, buf, len);
    if (rc == SL_RESP_COMMAND) {
        *consumed = p->pos;
        restart(p);
    } else if (rc == SL_RESP_PROTOCOL_ERROR) {
        p->argc = 0;
        restart(p);
    }
    return rc;
}

void sl_resp_parser_reset(sl_resp_parser_t *p)
{
    p->argc = 0;
    restart(p);
}

void sl_resp_parser_free(sl_resp_parser_t *p)
{
    sl_free(p->argv);
    sl_free(p->scratch);
    p->argv = NULL;
    p->scratch = NULL;
    p->argc = p->argv_cap = p->scratch_cap = 0;
    restart(p);
}

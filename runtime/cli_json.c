/*
 * cli_json.c - checks that a line is one JSON value and finds one top-level
 * field of it, for `sluice produce --key-field`.
 *
 * A recursive-descent scanner over RFC 8259:
 *
 *   value  = object / array / string / number / true / false / null
 *   object = "{" [ string ":" value *( "," string ":" value ) ] "}"
 *   array  = "[" [ value *( "," value ) ] "]"
 *   number = [ "-" ] ( "0" / 1-9 *DIGIT ) [ "." 1*DIGIT ]
 *            [ ( "e" / "E" ) [ "+" / "-" ] 1*DIGIT ]
 *   string = '"' *( unescaped / "\" ( '"' / "\" / "/" / b f n r t /
 *            "u" 4HEXDIG ) ) '"'
 *
 * Invariants: the scanner never reads past `end`; strings hold no raw
 * control characters, only well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing past U+10FFFF), and a \u escape of a high surrogate is
 * always followed by one of a low surrogate (lone surrogates are rejected,
 * since they decode to no character). Nesting is limited to MAX_DEPTH so a
 * line of "[[[[..." cannot exhaust the stack. Nothing is allocated: the
 * field is reported as a span of the input and decoded on demand.
 */
#include "runtime/cli.h"

#include <assert.h>
#include <string.h>

#define MAX_DEPTH 256

typedef struct scanner {
    const unsigned char *p, *start, *end;
    const char *field; /* top-level member wanted; NULL: none */
    size_t field_len;
    cli_json_t *out;
} scanner_t;

static int scan_value(scanner_t *s, int depth);

static int fail(scanner_t *s, const char *what)
{
    s->out->error = what;
    s->out->column = (size_t)(s->p - s->start) + 1;
    return -1;
}

static int at(const scanner_t *s, unsigned char c)
{
    return s->p < s->end && *s->p == c;
}

static void skip_space(scanner_t *s)
{
    while (at(s, ' ') || at(s, '\t') || at(s, '\n') || at(s, '\r'))
        s->p++;
}

static int scan_literal(scanner_t *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
        return fail(s, "unexpected character");
    s->p += n;
    return 0;
}

static size_t skip_digits(scanner_t *s)
{
    const unsigned char *from = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return (size_t)(s->p - from);
}

static int scan_number(scanner_t *s)
{
    if (at(s, '-'))
        s->p++;
    const unsigned char *digits = s->p;
    size_t n = skip_digits(s);
    if (n == 0)
        return fail(s, "a number needs digits");
    if (n > 1 && *digits == '0') {
        s->p = digits + 1;
        return fail(s, "a number cannot have a leading zero");
    }
    if (at(s, '.')) {
        s->p++;
        if (skip_digits(s) == 0)
            return fail(s, "a digit must follow the decimal point");
    }
    if (at(s, 'e') || at(s, 'E')) {
        s->p++;
        if (at(s, '+') || at(s, '-'))
            s->p++;
        if (skip_digits(s) == 0)
            return fail(s, "an exponent needs digits");
    }
    return 0;
}

/* Reads four hex digits at p (the caller checked they are in bounds). */
static int hex4(const unsigned char *p, uint32_t *out)
{
    *out = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        int v = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (v < 0)
            return -1;
        *out = *out << 4 | (uint32_t)v;
    }
    return 0;
}

static int is_high_surrogate(uint32_t u)
{
    return u >= 0xD800 && u <= 0xDBFF;
}

static int is_low_surrogate(uint32_t u)
{
    return u >= 0xDC00 && u <= 0xDFFF;
}

/* Steps over the escape whose backslash is at s->p. */
static int scan_escape(scanner_t *s)
{
    uint32_t u, low;
    s->p++;
    if (s->p >= s->end)
        return fail(s, "unterminated string");
    if (*s->p != 'u') {
        if (!memchr("\"\\/bfnrt", *s->p, 8))
            return fail(s, "invalid escape in a string");
        s->p++;
        return 0;
    }
    if (s->end - s->p < 5 || hex4(s->p + 1, &u))
        return fail(s, "\\u needs four hex digits");
    s->p += 5;
    if (is_low_surrogate(u))
        return fail(s, "a \\u escape of a low surrogate needs a high one before it");
    if (!is_high_surrogate(u))
        return 0;
    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || hex4(s->p + 2, &low) ||
        !is_low_surrogate(low))
        return fail(s, "a \\u escape of a high surrogate needs a low one after it");
    s->p += 6;
    return 0;
}

/* Steps over the UTF-8 sequence whose first byte (0x80 or above) is at s->p. */
static int scan_utf8(scanner_t *s)
{
    static const uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    unsigned char c = *s->p;
    size_t n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1; /* continuation bytes */
    if (c < 0xC2 || c > 0xF4 || (size_t)(s->end - s->p) <= n)
        return fail(s, "invalid UTF-8");
    uint32_t code = c & (0x3Fu >> n);
    for (size_t i = 1; i <= n; i++) {
        if ((s->p[i] & 0xC0) != 0x80)
            return fail(s, "invalid UTF-8");
        code = code << 6 | (s->p[i] & 0x3Fu);
    }
    if (code < smallest[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return fail(s, "invalid UTF-8");
    s->p += n + 1;
    return 0;
}

/* Steps over the string whose opening quote is at s->p. */
static int scan_string(scanner_t *s)
{
    s->p++;
    while (s->p < s->end && *s->p != '"') {
        int rc = 0;
        if (*s->p == '\\')
            rc = scan_escape(s);
        else if (*s->p < 0x20)
            rc = fail(s, "a control character in a string must be escaped");
        else if (*s->p >= 0x80)
            rc = scan_utf8(s);
        else
            s->p++;
        if (rc)
            return rc;
    }
    if (s->p >= s->end)
        return fail(s, "unterminated string");
    s->p++;
    return 0;
}

static int scan_array(scanner_t *s, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(s, "nested too deeply");
    s->p++;
    skip_space(s);
    if (at(s, ']')) {
        s->p++;
        return 0;
    }
    for (;;) {
        if (scan_value(s, depth))
            return -1;
        skip_space(s);
        if (at(s, ']')) {
            s->p++;
            return 0;
        }
        if (!at(s, ','))
            return fail(s, "expected ',' or ']'");
        s->p++;
    }
}

/* Whether the string literal [from, to) decodes to the wanted field. */
static int is_field(const scanner_t *s, const unsigned char *from, const unsigned char *to)
{
    char name[CLI_JSON_FIELD_MAX];
    if ((size_t)(to - from) < s->field_len + 2)
        return 0;
    size_t n = cli_json_unescape((const char *)from, (size_t)(to - from), NULL);
    if (n != s->field_len)
        return 0;
    cli_json_unescape((const char *)from, (size_t)(to - from), name);
    return !memcmp(name, s->field, n);
}

static void found(cli_json_t *out, const unsigned char *from, const unsigned char *to)
{
    int number = *from == '-' || (*from >= '0' && *from <= '9');
    out->type = *from == '"' ? CLI_JSON_STRING : number ? CLI_JSON_NUMBER : CLI_JSON_OTHER;
    out->value = (const char *)from;
    out->length = (size_t)(to - from);
}

/* Steps over one `"name": value` of an object at the given depth. */
static int scan_member(scanner_t *s, int depth)
{
    skip_space(s);
    const unsigned char *name = s->p;
    if (!at(s, '"'))
        return fail(s, "expected a string as the name of a member");
    if (scan_string(s))
        return -1;
    int wanted = depth == 1 && s->field && is_field(s, name, s->p);
    skip_space(s);
    if (!at(s, ':'))
        return fail(s, "expected ':' after the name of a member");
    s->p++;
    skip_space(s);
    const unsigned char *value = s->p;
    if (scan_value(s, depth))
        return -1;
    if (wanted)
        found(s->out, value, s->p);
    return 0;
}

static int scan_object(scanner_t *s, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(s, "nested too deeply");
    s->p++;
    skip_space(s);
    if (at(s, '}')) {
        s->p++;
        return 0;
    }
    for (;;) {
        if (scan_member(s, depth))
            return -1;
        skip_space(s);
        if (at(s, '}')) {
            s->p++;
            return 0;
        }
        if (!at(s, ','))
            return fail(s, "expected ',' or '}'");
        s->p++;
    }
}

static int scan_value(scanner_t *s, int depth)
{
    skip_space(s);
    if (s->p >= s->end)
        return fail(s, "a value is missing");
    switch (*s->p) {
    case '{':
        return scan_object(s, depth + 1);
    case '[':
        return scan_array(s, depth + 1);
    case '"':
        return scan_string(s);
    case 't':
        return scan_literal(s, "true");
    case 'f':
        return scan_literal(s, "false");
    case 'n':
        return scan_literal(s, "null");
    case '-':
        return scan_number(s);
    default:
        if (*s->p >= '0' && *s->p <= '9')
            return scan_number(s);
        return fail(s, "unexpected character");
    }
}

int cli_json_scan(const char *text, size_t len, const char *field, cli_json_t *out)
{
    const unsigned char *start = (const unsigned char *)text;
    scanner_t s = {start, start, start + len, field, field ? strlen(field) : 0, out};
    assert(s.field_len < CLI_JSON_FIELD_MAX);
    *out = (cli_json_t){CLI_JSON_ABSENT, NULL, 0, NULL, 0};
    if (scan_value(&s, 0))
        return -1;
    skip_space(&s);
    if (s.p < s.end)
        return fail(&s, "unexpected text after the value");
    return 0;
}

/* Encodes a code point as UTF-8 into bytes; returns how many. */
static size_t encode_utf8(uint32_t code, char *bytes)
{
    size_t n = code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
    static const unsigned char lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
    for (size_t i = n - 1; i > 0; i--, code >>= 6)
        bytes[i] = (char)(0x80 | (code & 0x3F));
    bytes[0] = (char)(lead[n] | code);
    return n;
}

/* Decodes the (checked) character at *p, escaped or not; returns how many
 * bytes it wrote to bytes. */
static size_t decode_one(const unsigned char **p, char *bytes)
{
    static const char escaped[] = "\"\\/bfnrt", meaning[] = "\"\\/\b\f\n\r\t";
    const unsigned char *c = *p;
    uint32_t code, low;
    if (c[0] != '\\' || c[1] != 'u') {
        *p += c[0] == '\\' ? 2 : 1;
        bytes[0] = c[0] == '\\' ? meaning[strchr(escaped, c[1]) - escaped] : (char)c[0];
        return 1;
    }
    hex4(c + 2, &code);
    *p += 6;
    if (is_high_surrogate(code)) {
        hex4(c + 8, &low);
        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        *p += 6;
    }
    return encode_utf8(code, bytes);
}

size_t cli_json_unescape(const char *quoted, size_t len, char *out)
{
    const unsigned char *p = (const unsigned char *)quoted + 1;
    const unsigned char *end = (const unsigned char *)quoted + len - 1;
    size_t n = 0;
    while (p < end) {
        char bytes[4];
        size_t k = decode_one(&p, bytes);
        if (out)
            memcpy(out + n, bytes, k);
        n += k;
    }
    return n;
}

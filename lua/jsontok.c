/*
 * jsontok.c - JSON record values as checked tokens (see vm.h, "Tokens").
 *
 * Two ways to the same tokens. The fast way (most texts) lets simdjson's
 * first stage (jsonscan.h) list where the structural characters are, and
 * walks that list once with the grammar as a state machine, checking each
 * string, number and literal between them and making the tokens. It takes
 * only what it can prove valid: at any doubt (a grammar error, a bad
 * number or escape, bytes that are not UTF-8, nesting past 1000, a text too
 * long for the scanner) it gives up and the slow way decides.
 *
 * The slow way tokenizes with Debian's jsmn (strict mode) and then checks
 * here, because jsmn is a tokenizer, not a validator: it accepts missing
 * commas and colons, bad numbers, misspelled literals, control characters
 * in strings and lone surrogates. The check walks the tokens in document
 * order and looks at the bytes between them, so that exactly the texts RFC
 * 8259 allows get through; anything else is refused with the byte where it
 * went wrong, and the record goes to the pipeline's on_error policy as
 * before. (It lets bytes that are not UTF-8 through, as lua-cjson did.)
 *
 * Both make, per token, the index just past its subtree, so a field lookup
 * skips nested values without walking them. Nothing here touches Lua:
 * turning tokens into Lua values is lazy.c's business.
 */
#include "lua/jsonscan.h"
#include "lua/vm.h"

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS /* closing brackets and commas find their parent at once */
#include <jsmn.h>

#include <errno.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH    1000 /* lua-cjson's limit, kept for the same inputs */
#define FIRST_TOKENS 64

typedef struct check {
    const char *text;
    int32_t len;
    const jsmntok_t *in;
    int count;      /* tokens jsmn made */
    sl_jtok_t *out; /* the checked tokens, out[0] the root */
    int32_t bad;    /* the byte where the text went wrong */
    const char *why;
} check_t;

static int refuse(check_t *c, int32_t at, const char *why)
{
    c->bad = at;
    c->why = why;
    return -1;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

static int32_t skip_space(const check_t *c, int32_t at)
{
    while (at < c->len && is_space(c->text[at]))
        at++;
    return at;
}

/* The first byte of token i as it appears in the text (a string's quote). */
static int32_t outer_start(const jsmntok_t *t)
{
    return t->type == JSMN_STRING ? t->start - 1 : t->start;
}

static int32_t outer_end(const jsmntok_t *t)
{
    return t->type == JSMN_STRING ? t->end + 1 : t->end;
}

/* The per-token helpers of the fast way are forced inline: GCC left them
 * calls, and a call per token was a quarter of the walk's instructions. */
#define HOT inline __attribute__((always_inline))

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* RFC 8259 number: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static HOT int check_number(check_t *c, int32_t at, int32_t end)
{
    const char *s = c->text;
    int32_t start = at;
    if (at < end && s[at] == '-')
        at++;
    if (at < end && s[at] == '0')
        at++;
    else if (at < end && is_digit(s[at]))
        while (at < end && is_digit(s[at]))
            at++;
    else
        return refuse(c, at, "not a value");
    if (at < end && s[at] == '.') {
        if (++at >= end || !is_digit(s[at]))
            return refuse(c, at, "a digit must follow the decimal point");
        while (at < end && is_digit(s[at]))
            at++;
    }
    if (at < end && (s[at] == 'e' || s[at] == 'E')) {
        at++;
        if (at < end && (s[at] == '+' || s[at] == '-'))
            at++;
        if (at >= end || !is_digit(s[at]))
            return refuse(c, at, "a digit must follow the exponent");
        while (at < end && is_digit(s[at]))
            at++;
    }
    return at == end ? 0 : refuse(c, at > start ? at : start, "not a number");
}

static int check_literal(check_t *c, int32_t at, int32_t end, const char *word, uint8_t type,
                         sl_jtok_t *out)
{
    size_t n = strlen(word);
    if ((size_t)(end - at) != n || memcmp(c->text + at, word, n) != 0)
        return refuse(c, at, "not a value");
    out->type = type;
    return 0;
}

static HOT int check_primitive(check_t *c, int32_t at, int32_t end, sl_jtok_t *out)
{
    switch (c->text[at]) {
    case 't':
        return check_literal(c, at, end, "true", SL_JTOK_TRUE, out);
    case 'f':
        return check_literal(c, at, end, "false", SL_JTOK_FALSE, out);
    case 'n':
        return check_literal(c, at, end, "null", SL_JTOK_NULL, out);
    default:
        out->type = SL_JTOK_NUMBER;
        return check_number(c, at, end);
    }
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = s[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (unsigned)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

#ifdef __SSE2__
/* The bytes of s[0..16) that are a control character (<= 0x1f, unsigned),
 * a backslash or a quote, as a bit mask. */
static unsigned special16(const char *s)
{
    const __m128i last_control = _mm_set1_epi8(0x1f), backslash = _mm_set1_epi8('\\'),
                  quote = _mm_set1_epi8('"');
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)s);
    __m128i hit =
        _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, last_control), x),
                     _mm_or_si128(_mm_cmpeq_epi8(x, backslash), _mm_cmpeq_epi8(x, quote)));
    return (unsigned)_mm_movemask_epi8(hit);
}
#endif

/* Where the plain bytes of a string from at on end: at the first control
 * character, backslash or quote, or at end (its closing quote). Reads
 * sixteen bytes at a time where the text has them, past end too. */
static int32_t skip_plain(const check_t *c, int32_t at, int32_t end)
{
    const char *s = c->text;
#ifdef __SSE2__
    for (; c->len - at >= 16 && at < end; at += 16) {
        unsigned hit = special16(s + at);
        if (hit) {
            at += __builtin_ctz(hit);
            return at < end ? at : end;
        }
    }
#endif
    while (at < end && (unsigned char)s[at] >= 0x20 && s[at] != '\\' && s[at] != '"')
        at++;
    return at < end ? at : end;
}

/* The \u escape whose 'u' is at `at`: one code unit, or a surrogate pair.
 * Returns the index of its last hex digit, or -1 (refused). */
static int32_t check_unicode_escape(check_t *c, int32_t at, int32_t end)
{
    const char *s = c->text;
    unsigned unit, low;
    if (end - at < 5 || hex4(s + at + 1, &unit))
        return refuse(c, at, "bad \\u escape");
    at += 4;
    if (unit >= 0xdc00 && unit <= 0xdfff)
        return refuse(c, at - 5, "lone low surrogate in a string");
    if (unit < 0xd800 || unit > 0xdbff)
        return at;
    if (end - at < 7 || s[at + 1] != '\\' || s[at + 2] != 'u' || hex4(s + at + 3, &low) ||
        low < 0xdc00 || low > 0xdfff)
        return refuse(c, at - 5, "high surrogate without its low half in a string");
    return at + 6;
}

/* The string text[at..end) (between its quotes): no control characters,
 * no unescaped quote, only the escapes RFC 8259 names, no lone surrogates. */
static int check_string(check_t *c, int32_t at, int32_t end, sl_jtok_t *out)
{
    const char *s = c->text;
    out->type = SL_JTOK_STRING;
    out->escaped = 0;
    while ((at = skip_plain(c, at, end)) < end) {
        if (s[at] != '\\')
            return refuse(c, at,
                          s[at] == '"' ? "unescaped quote in a string"
                                       : "control character in a string");
        out->escaped = 1;
        if (++at == end)
            return refuse(c, at, "bad escape");
        char ch = s[at];
        if (ch == 'u')
            at = check_unicode_escape(c, at, end);
        else if (!ch || !strchr("\"\\/bfnrt", ch))
            return refuse(c, at, "bad escape");
        if (at < 0)
            return -1;
        at++;
    }
    return 0;
}

static int check_value(check_t *c, int i, int depth, int *next);

/* Checks the object or array at token i, whose children start at i + 1. */
static int check_container(check_t *c, int i, int depth, int *next)
{
    const jsmntok_t *t = &c->in[i];
    int object = t->type == JSMN_OBJECT, child = i + 1;
    int32_t at = skip_space(c, t->start + 1);
    c->out[i].type = object ? SL_JTOK_OBJECT : SL_JTOK_ARRAY;
    if (depth >= MAX_DEPTH)
        return refuse(c, t->start, "nested deeper than 1000 levels");
    for (int k = 0; k < t->size; k++) {
        if (k > 0) {
            if (at >= c->len || c->text[at] != ',')
                return refuse(c, at, object ? "expected ',' or '}'" : "expected ',' or ']'");
            at = skip_space(c, at + 1);
        }
        if (child >= c->count || outer_start(&c->in[child]) != at)
            return refuse(c, at, object ? "expected a string key" : "expected a value");
        if (object) {
            const jsmntok_t *key = &c->in[child];
            if (key->type != JSMN_STRING || key->size != 1)
                return refuse(c, at, "expected a string key followed by ':'");
            if (check_string(c, key->start, key->end, &c->out[child]))
                return -1;
            c->out[child].start = key->start;
            c->out[child].end = key->end;
            c->out[child].size = 1;
            c->out[child].next = child + 1;
            at = skip_space(c, key->end + 1);
            if (at >= c->len || c->text[at] != ':')
                return refuse(c, at, "expected ':'");
            at = skip_space(c, at + 1);
            child++;
            if (child >= c->count || outer_start(&c->in[child]) != at)
                return refuse(c, at, "expected a value");
        }
        int value = child;
        if (check_value(c, value, depth + 1, &child))
            return -1;
        at = skip_space(c, outer_end(&c->in[value]));
    }
    if (at != t->end - 1)
        return refuse(c, at, object ? "expected ',' or '}'" : "expected ',' or ']'");
    *next = child;
    return 0;
}

/* Checks the value at token i and its subtree; *next = the token after. */
static int check_value(check_t *c, int i, int depth, int *next)
{
    const jsmntok_t *t = &c->in[i];
    sl_jtok_t *out = &c->out[i];
    int after = i + 1;
    out->start = t->start;
    out->end = t->end;
    out->size = t->size;
    out->escaped = 0;
    switch (t->type) {
    case JSMN_OBJECT:
    case JSMN_ARRAY:
        if (check_container(c, i, depth, &after))
            return -1;
        break;
    case JSMN_STRING:
        if (t->size != 0)
            return refuse(c, t->end + 1, "a string here cannot be followed by ':'");
        if (check_string(c, t->start, t->end, out))
            return -1;
        break;
    default:
        if (check_primitive(c, t->start, t->end, out))
            return -1;
        break;
    }
    out->next = after;
    *next = after;
    return 0;
}

static int grow_tokens(sl_vm_t *vm, size_t want)
{
    if (want <= vm->jtok_capacity)
        return 0;
    size_t capacity = vm->jtok_capacity ? vm->jtok_capacity : FIRST_TOKENS * 16;
    while (capacity < want)
        capacity *= 2;
    sl_jtok_t *grown = sl_realloc(vm->jtoks, capacity * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    vm->jtoks = grown;
    vm->jtok_capacity = capacity;
    return 0;
}

/* Runs jsmn over the text into vm's scratch tokens, growing them as jsmn
 * asks; returns the token count or a jsmn error. */
static int tokenize(sl_vm_t *vm, const char *text, int32_t len, unsigned *stopped)
{
    jsmn_parser parser;
    jsmn_init(&parser);
    if (!vm->jsmn) {
        if (!(vm->jsmn = sl_malloc(FIRST_TOKENS * sizeof(jsmntok_t))))
            return -ENOMEM;
        vm->jsmn_capacity = FIRST_TOKENS;
    }
    for (;;) {
        int n = jsmn_parse(&parser, text, (size_t)len, vm->jsmn, (unsigned)vm->jsmn_capacity);
        *stopped = parser.pos;
        if (n != JSMN_ERROR_NOMEM)
            return n;
        size_t capacity = 2 * vm->jsmn_capacity;
        jsmntok_t *grown =
            capacity > INT32_MAX / 2 ? NULL : sl_realloc(vm->jsmn, capacity * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        vm->jsmn = grown;
        vm->jsmn_capacity = capacity;
    }
}

static int add_doc(sl_vm_t *vm, const char *text, int32_t first, int *doc)
{
    if (vm->doc_count == vm->doc_capacity) {
        size_t capacity = vm->doc_capacity ? 2 * vm->doc_capacity : 1024;
        sl_jdoc_t *grown = sl_realloc(vm->docs, capacity * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        vm->docs = grown;
        vm->doc_capacity = capacity;
    }
    vm->docs[vm->doc_count] = (sl_jdoc_t){text, first};
    *doc = (int)vm->doc_count++;
    return 0;
}

static int invalid(check_t *c)
{
    return sl_error_set(SL_EINVALID, "%s at byte %ld", c->why, (long)c->bad + 1);
}

/* A value that is a bare number or literal: jsmn wants one inside a
 * container, so it is checked here directly. */
static int scalar_doc(sl_vm_t *vm, check_t *c, int32_t at, int *doc)
{
    int32_t end = c->len;
    while (end > at && is_space(c->text[end - 1]))
        end--;
    if (grow_tokens(vm, vm->jtok_count + 1))
        return -ENOMEM;
    sl_jtok_t *t = &vm->jtoks[vm->jtok_count];
    *t = (sl_jtok_t){.start = at, .end = end, .next = 1};
    if (check_primitive(c, at, end, t))
        return invalid(c);
    if (add_doc(vm, c->text, (int32_t)vm->jtok_count, doc))
        return -ENOMEM;
    vm->jtok_count++;
    return 0;
}

/* ---- the fast way ----------------------------------------------------------- */

/*
 * The walk reads the structural positions once, in order, as a parser
 * would read tokens: the grammar is in where the code goes next (a value,
 * a key and its colon, what may follow a value), the open containers are a
 * stack of their tokens. A string or a scalar runs from its position to the
 * last non-space byte before the next position, which for a string must be
 * its closing quote (see walk_string). Tokens come out as check_value makes
 * them from jsmn's: containers span their brackets and count keys or
 * items, keys have size 1 and their value as next.
 */
typedef struct walk {
    check_t c;
    const uint32_t *at; /* the structural positions */
    int32_t count;
    int made; /* tokens */
    int depth;
    int backslashes;     /* the text has a backslash: strings may have escapes */
    int open[MAX_DEPTH]; /* the token of each open container */
} walk_t;

/* Where the structure at position i ends: the next position, or the end. */
static HOT int32_t limit_of(const walk_t *w, int32_t i)
{
    return i + 1 < w->count ? (int32_t)w->at[i + 1] : w->c.len;
}

/* The last non-space byte before limit, plus one. */
static int32_t trim_end(const check_t *c, int32_t at, int32_t limit)
{
    while (limit > at && is_space(c->text[limit - 1]))
        limit--;
    return limit;
}

/* The string whose opening quote is position i, as the next token. The
 * scanner has refused control characters in strings, and the closing quote
 * found here is the first unescaped one (any quote after it would open a
 * string, itself a structural position): only escapes are left to check. */
static HOT int walk_string(walk_t *w, int32_t i)
{
    int32_t quote = (int32_t)w->at[i], end = limit_of(w, i) - 1; /* the closing quote */
    sl_jtok_t *t = &w->c.out[w->made];
    if (w->c.text[end] != '"') /* spaces before the next structure */
        end = trim_end(&w->c, quote + 1, end + 1) - 1;
    if (end <= quote || w->c.text[end] != '"')
        return -1;
    *t = (sl_jtok_t){.start = quote + 1, .end = end, .next = ++w->made, .type = SL_JTOK_STRING};
    if (!w->backslashes)
        return 0;
    const char *slash = memchr(w->c.text + quote + 1, '\\', (size_t)(end - quote - 1));
    return slash ? check_string(&w->c, (int32_t)(slash - w->c.text), end, t) : 0;
}

static HOT int walk_scalar(walk_t *w, int32_t i)
{
    int32_t at = (int32_t)w->at[i];
    sl_jtok_t *t = &w->c.out[w->made];
    *t = (sl_jtok_t){.start = at, .end = trim_end(&w->c, at, limit_of(w, i)), .next = ++w->made};
    return check_primitive(&w->c, at, t->end, t);
}

static int walk_open(walk_t *w, int32_t i, uint8_t type)
{
    if (w->depth == MAX_DEPTH)
        return -1;
    w->c.out[w->made] = (sl_jtok_t){.start = (int32_t)w->at[i], .type = type};
    w->open[w->depth++] = w->made++;
    return 0;
}

static HOT sl_jtok_t *innermost(walk_t *w)
{
    return &w->c.out[w->open[w->depth - 1]];
}

static void walk_close(walk_t *w, int32_t i)
{
    sl_jtok_t *t = innermost(w);
    t->end = (int32_t)w->at[i] + 1;
    t->next = w->made;
    w->depth--;
}

/* The whole walk, a deliberate state machine of gotos: 0 when the text is
 * one valid value, else -1. */
static int walk(walk_t *w)
{
    const char *text = w->c.text;
    int32_t i = 0, n = w->count;
#define CH(k) text[w->at[k]]
value:
    if (i >= n)
        return -1;
    switch (CH(i)) {
    case '{':
        if (walk_open(w, i++, SL_JTOK_OBJECT))
            return -1;
        if (i < n && CH(i) == '}')
            goto close;
        goto key;
    case '[':
        if (walk_open(w, i++, SL_JTOK_ARRAY))
            return -1;
        if (i < n && CH(i) == ']')
            goto close;
        innermost(w)->size++;
        goto value;
    case '"':
        if (walk_string(w, i++))
            return -1;
        goto after_value;
    case '}':
    case ']':
    case ':':
    case ',':
        return -1;
    default:
        if (walk_scalar(w, i++))
            return -1;
        goto after_value;
    }
key:
    if (i + 1 >= n || CH(i) != '"' || CH(i + 1) != ':' || walk_string(w, i))
        return -1;
    w->c.out[w->made - 1].size = 1;
    innermost(w)->size++;
    i += 2;
    goto value;
close:
    walk_close(w, i++);
after_value:
    if (w->depth == 0)
        return i == n ? 0 : -1;
    if (i >= n)
        return -1;
    if (CH(i) == ',') {
        i++;
        if (innermost(w)->type == SL_JTOK_OBJECT)
            goto key;
        innermost(w)->size++;
        goto value;
    }
    if (CH(i) == (innermost(w)->type == SL_JTOK_OBJECT ? '}' : ']'))
        goto close;
    return -1;
#undef CH
}

int sl_json_tokenize_fast(sl_vm_t *vm, const char *text, int32_t len, int *doc)
{
    check_t c = {.text = text, .len = len};
    int32_t first = skip_space(&c, 0);
    if (first == len || (text[first] != '{' && text[first] != '[' && text[first] != '"') ||
        len > SL_JSONSCAN_MAX || (!vm->jsonscan && !(vm->jsonscan = sl_jsonscan_new())))
        return 1;
    walk_t w; /* open[] is written before it is read: not cleared */
    w.count = sl_jsonscan_run(vm->jsonscan, text, len, &w.at);
    if (w.count <= 0 || (int32_t)w.at[0] != first)
        return 1;
    if (grow_tokens(vm, vm->jtok_count + (size_t)w.count))
        return -ENOMEM;
    w.c = c;
    w.c.out = vm->jtoks + vm->jtok_count;
    w.made = 0;
    w.depth = 0;
    w.backslashes = memchr(text, '\\', (size_t)len) != NULL; /* most texts: none */
    if (walk(&w))
        return 1;
    if (add_doc(vm, text, (int32_t)vm->jtok_count, doc))
        return -ENOMEM;
    vm->jtok_count += (size_t)w.made;
    return 0;
}

int sl_json_tokenize_slow(sl_vm_t *vm, const char *text, int32_t len, int *doc)
{
    check_t c = {.text = text, .len = len};
    int32_t at = skip_space(&c, 0);
    if (at == len)
        return sl_error_set(SL_EINVALID, "empty value");
    if (text[at] != '{' && text[at] != '[' && text[at] != '"')
        return scalar_doc(vm, &c, at, doc);
    unsigned stopped = 0;
    int n = tokenize(vm, text, len, &stopped);
    if (n == -ENOMEM)
        return -ENOMEM;
    if (n == JSMN_ERROR_PART)
        return sl_error_set(SL_EINVALID, "the text ends inside a value");
    if (n < 0)
        return sl_error_set(SL_EINVALID, "unexpected character at byte %u", stopped + 1);
    if (grow_tokens(vm, vm->jtok_count + (size_t)n))
        return -ENOMEM;
    c.in = vm->jsmn;
    c.count = n;
    c.out = vm->jtoks + vm->jtok_count;
    int next;
    if (outer_start(&c.in[0]) != at)
        return refuse(&c, at, "not a value"), invalid(&c);
    if (check_value(&c, 0, 0, &next))
        return invalid(&c);
    int32_t rest = skip_space(&c, outer_end(&c.in[0]));
    if (next != n || rest != len)
        return refuse(&c, rest, "more than one value"), invalid(&c);
    if (add_doc(vm, text, (int32_t)vm->jtok_count, doc))
        return -ENOMEM;
    vm->jtok_count += (size_t)n;
    return 0;
}

int sl_json_add_doc(sl_vm_t *vm, const char *text, const sl_jtok_t *tokens, int count, int *doc)
{
    if (grow_tokens(vm, vm->jtok_count + (size_t)count) ||
        add_doc(vm, text, (int32_t)vm->jtok_count, doc))
        return -ENOMEM;
    memcpy(vm->jtoks + vm->jtok_count, tokens, (size_t)count * sizeof *tokens);
    vm->jtok_count += (size_t)count;
    return 0;
}

int sl_json_tokenize(sl_vm_t *vm, const char *text, int32_t len, int *doc)
{
    int rc = sl_json_tokenize_fast(vm, text, len, doc);
    return rc <= 0 ? rc : sl_json_tokenize_slow(vm, text, len, doc);
}

/*
 * exchange.c - RabbitMQ's routing rules: direct, topic, fanout, headers
 * (see the work-queues section of storage.h).
 *
 * Topic matching works on words. Both the pattern and the key are split at
 * every '.' exactly as RabbitMQ splits them (rabbit_exchange_type_topic's
 * split_topic_key): the empty string is no words at all, and every '.'
 * ends a word, so "a." is the two words "a" and "". Matching is then glob
 * matching over words, with "#" as the any-sequence wildcard and "*" as
 * the any-one wildcard. The usual greedy algorithm is exact for that
 * alphabet: on a mismatch, go back to the last "#" and let it swallow one
 * more word; with no "#" to go back to, the match fails. Its invariant:
 * the pattern words before the last "#" matched a prefix of the key, and
 * only how much the last "#" takes is still open. Every step either
 * advances in the key or moves the restart point forward, so it runs in
 * O(pattern words * key words) at worst, and in one pass without "#".
 */
#include "storage/storage.h"

#include <string.h>
#include <strings.h>

/* A word of a pattern or key: [start, start + len). */
typedef struct word {
    const char *start;
    size_t len;
} word_t;

/* At most 128 separators fit in SL_ROUTING_KEY_MAX bytes. */
#define MAX_WORDS (SL_ROUTING_KEY_MAX + 1)

static const char *const type_names[] = {"direct", "topic", "fanout", "headers"};

int sl_exchange_type_parse(const char *text, size_t len, sl_exchange_type_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strlen(type_names[i]) == len && !strncasecmp(text, type_names[i], len)) {
            *out = (sl_exchange_type_t)i;
            return 0;
        }
    return sl_error_set(SL_EINVALID,
                        "exchange type must be direct, topic, fanout or headers (not '%.*s')",
                        (int)(len < 32 ? len : 32), text);
}

const char *sl_exchange_type_name(sl_exchange_type_t type)
{
    return (unsigned)type < 4 ? type_names[type] : "unknown";
}

/* Splits text into words; returns their number (0 for ""). */
static size_t split_words(const char *text, size_t len, word_t *words)
{
    size_t n = 0, start = 0;
    if (len == 0)
        return 0;
    for (size_t i = 0; i <= len; i++)
        if (i == len || text[i] == '.') {
            words[n++] = (word_t){text + start, i - start};
            start = i + 1;
        }
    return n;
}

static int word_is(const word_t *w, char c)
{
    return w->len == 1 && w->start[0] == c;
}

static int word_equal(const word_t *a, const word_t *b)
{
    return a->len == b->len && (a->len == 0 || !memcmp(a->start, b->start, a->len));
}

static int match_words(const word_t *pattern, size_t np, const word_t *key, size_t nk)
{
    size_t p = 0, k = 0, hash_p = 0, hash_k = 0;
    int have_hash = 0;
    while (k < nk) {
        if (p < np && word_is(&pattern[p], '#')) {
            have_hash = 1;
            hash_p = p++;
            hash_k = k;
        } else if (p < np && (word_is(&pattern[p], '*') || word_equal(&pattern[p], &key[k]))) {
            p++;
            k++;
        } else if (have_hash) {
            p = hash_p + 1;
            k = ++hash_k;
        } else {
            return 0;
        }
    }
    while (p < np && word_is(&pattern[p], '#'))
        p++;
    return p == np;
}

int sl_exchange_topic_match(const char *pattern, size_t pattern_len, const char *key,
                            size_t key_len)
{
    word_t pw[MAX_WORDS], kw[MAX_WORDS];
    if (pattern_len > SL_ROUTING_KEY_MAX || key_len > SL_ROUTING_KEY_MAX)
        return 0;
    size_t np = split_words(pattern, pattern_len, pw);
    size_t nk = split_words(key, key_len, kw);
    return match_words(pw, np, kw, nk);
}

static int header_is(const sl_header_t *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == (int32_t)n && !memcmp(h->name, name, n);
}

static int value_is(const sl_header_t *h, const char *text)
{
    size_t n = strlen(text);
    return h->value_len == (int32_t)n && (n == 0 || !memcmp(h->value, text, n));
}

static int starts_with_x(const sl_header_t *h)
{
    return h->name_len >= 2 && h->name[0] == 'x' && h->name[1] == '-';
}

/* The x-match argument's value: 0 all, 1 any, 2 all-with-x, 3 any-with-x,
 * -1 unknown. Absent means all. */
static int match_kind(const sl_header_t *args, size_t nargs)
{
    static const char *const kinds[] = {"all", "any", "all-with-x", "any-with-x"};
    for (size_t i = 0; i < nargs; i++) {
        if (!header_is(&args[i], "x-match"))
            continue;
        for (int k = 0; k < 4; k++)
            if (value_is(&args[i], kinds[k]))
                return k;
        return -1;
    }
    return 0;
}

static int same_value(const sl_header_t *a, const sl_header_t *b)
{
    if (a->value_len < 0 || b->value_len < 0)
        return a->value_len < 0 && b->value_len < 0;
    return a->value_len == b->value_len &&
           (a->value_len == 0 || !memcmp(a->value, b->value, (size_t)a->value_len));
}

/* Whether some message header has the argument's name and value. */
static int present(const sl_header_t *arg, const sl_header_t *headers, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (headers[i].name_len == arg->name_len &&
            (arg->name_len == 0 || !memcmp(headers[i].name, arg->name, (size_t)arg->name_len)) &&
            same_value(arg, &headers[i]))
            return 1;
    return 0;
}

int sl_exchange_headers_match(const sl_header_t *args, size_t nargs, const sl_header_t *headers,
                              size_t count)
{
    int kind = match_kind(args, nargs);
    if (kind < 0)
        return 0;
    int any = kind == 1 || kind == 3, with_x = kind >= 2;
    for (size_t i = 0; i < nargs; i++) {
        if (header_is(&args[i], "x-match") || (!with_x && starts_with_x(&args[i])))
            continue;
        int found = present(&args[i], headers, count);
        if (any && found)
            return 1;
        if (!any && !found)
            return 0;
    }
    return !any;
}

int sl_exchange_binding_check(sl_exchange_type_t type, size_t pattern_len, const sl_header_t *args,
                              size_t nargs)
{
    if (pattern_len > SL_ROUTING_KEY_MAX)
        return sl_error_set(SL_EINVALID, "binding pattern of %zu bytes is over %d bytes",
                            pattern_len, SL_ROUTING_KEY_MAX);
    if (type == SL_EXCHANGE_HEADERS && match_kind(args, nargs) < 0)
        return sl_error_set(SL_EINVALID, "x-match must be all, any, all-with-x or any-with-x");
    return 0;
}

int sl_exchange_binding_matches(sl_exchange_type_t type, const char *pattern, size_t pattern_len,
                                const sl_header_t *args, size_t nargs, const char *key,
                                size_t key_len, const sl_header_t *headers, size_t count)
{
    switch (type) {
    case SL_EXCHANGE_DIRECT:
        return pattern_len == key_len && (key_len == 0 || !memcmp(pattern, key, key_len));
    case SL_EXCHANGE_TOPIC:
        return sl_exchange_topic_match(pattern, pattern_len, key, key_len);
    case SL_EXCHANGE_FANOUT:
        return 1;
    case SL_EXCHANGE_HEADERS:
        return sl_exchange_headers_match(args, nargs, headers, count);
    }
    return 0;
}

/*
 * test_exchange.c - RabbitMQ's routing rules as tables: topic patterns
 * (every corner case of '#' and '*' over empty and non-empty words),
 * direct, fanout and headers exchanges with x-match all/any, type names
 * and binding checks.
 */
#include "testutil.h"

#include <string.h>

typedef struct topic_case {
    const char *pattern, *key;
    int match;
} topic_case_t;

static const topic_case_t topic_cases[] = {
    /* plain words */
    {"a.b.c", "a.b.c", 1},
    {"a.b.c", "a.b", 0},
    {"a.b", "a.b.c", 0},
    {"a.b.c", "a.b.x", 0},
    {"abc", "abc", 1},
    {"abc", "ab", 0},
    {"a*", "ab", 0}, /* wildcards are whole words only */
    {"a#", "a", 0},
    {"a#", "a#", 1},
    /* '*' is exactly one word */
    {"*", "a", 1},
    {"*", "a.b", 0},
    {"*", "", 0}, /* the empty key has no words */
    {"*.b", "a.b", 1},
    {"a.*", "a.b", 1},
    {"a.*", "a", 0},
    {"a.*.c", "a.b.c", 1},
    {"a.*.c", "a.c", 0},
    {"*.*", "a.b", 1},
    {"*.*", "a", 0},
    /* '*' against empty words */
    {"a.*", "a.", 1}, /* "a." is "a" and an empty word */
    {"*.a", ".a", 1},
    {"*", ".", 0}, /* "." is two empty words */
    {"*.*", ".", 1},
    {"a.*.b", "a..b", 1},
    {"a..b", "a..b", 1}, /* an empty pattern word matches an empty key word */
    {"a..b", "a.x.b", 0},
    {"a.b", "a..b", 0},
    /* '#' is zero or more words */
    {"#", "", 1},
    {"#", "a", 1},
    {"#", "a.b.c", 1},
    {"#", ".", 1},
    {"a.#", "a", 1}, /* '#' matching zero words */
    {"a.#", "a.b", 1},
    {"a.#", "a.b.c", 1},
    {"a.#", "b.a", 0},
    {"#.a", "a", 1},
    {"#.a", "x.y.a", 1},
    {"#.a", "a.x", 0},
    {"a.#.b", "a.b", 1},
    {"a.#.b", "a.x.b", 1},
    {"a.#.b", "a.x.y.z.b", 1},
    {"a.#.b", "a.b.c", 0},
    {"a.#.b", "a.b.b", 1},
    {"a.#.b", "a.b.x.b", 1},
    {"a.#.b", "x.a.b", 0},
    {"a.#.b", "a", 0},
    {"#.#", "", 1},
    {"#.#", "a", 1},
    {"#.#", "a.b.c", 1},
    {"#.#.#", "a", 1},
    {"#.*", "", 0}, /* '*' still needs its word */
    {"#.*", "a", 1},
    {"#.*", "a.b.c", 1},
    {"*.#", "a", 1},
    {"*.#", "", 0},
    {"#.*.#", "a", 1},
    {"#.b.#", "a.b.c", 1},
    {"#.b.#", "b", 1},
    {"#.b.#", "a.c", 0},
    {"a.#.*", "a", 0},
    {"a.#.*", "a.b", 1},
    {"a.#.*", "a.b.c.d", 1},
    {"*.#.*", "a", 0},
    {"*.#.*", "a.b", 1},
    {"#.a.#.b.#", "x.a.y.b.z", 1},
    {"#.a.#.b.#", "x.b.y.a.z", 0},
    {"#.a.a", "a.a.a.a", 1},
    {"#.a.b.#.c", "a.b.a.b.x.c", 1},
    /* the empty pattern */
    {"", "", 1},
    {"", "a", 0},
    {"a", "", 0},
    {"#", "a..b", 1},
};

static void test_topic_patterns_follow_rabbitmq(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof topic_cases / sizeof *topic_cases; i++) {
        const topic_case_t *c = &topic_cases[i];
        int got = sl_exchange_topic_match(c->pattern, strlen(c->pattern), c->key, strlen(c->key));
        if (got != c->match)
            fail_msg("pattern '%s' key '%s': expected %s", c->pattern, c->key,
                     c->match ? "a match" : "no match");
    }
}

static void test_topic_keys_over_the_limit_never_match(void **state)
{
    (void)state;
    char key[SL_ROUTING_KEY_MAX + 2];
    memset(key, 'a', sizeof key);
    for (size_t i = 1; i < sizeof key; i += 2)
        key[i] = '.'; /* the most words a key can have */
    assert_true(sl_exchange_topic_match("#", 1, key, SL_ROUTING_KEY_MAX));
    assert_false(sl_exchange_topic_match("#", 1, key, SL_ROUTING_KEY_MAX + 1));
    assert_false(sl_exchange_topic_match(key, SL_ROUTING_KEY_MAX + 1, "a", 1));
}

static sl_header_t header(const char *name, const char *value)
{
    return (sl_header_t){(const uint8_t *)name, (int32_t)strlen(name), (const uint8_t *)value,
                         value ? (int32_t)strlen(value) : -1};
}

typedef struct headers_case {
    const char *args[8]; /* name, value pairs; NULL ends */
    int match;
} headers_case_t;

/* The message every case is matched against. */
static const char *const message_headers[] = {"format", "pdf", "type", "report", "x-level", "3"};

static const headers_case_t headers_cases[] = {
    {{"format", "pdf", "type", "report"}, 1},
    {{"x-match", "all", "format", "pdf", "type", "report"}, 1},
    {{"x-match", "all", "format", "pdf", "type", "log"}, 0},
    {{"x-match", "all", "format", "pdf", "missing", "1"}, 0},
    {{"x-match", "any", "format", "zip", "type", "report"}, 1},
    {{"x-match", "any", "format", "zip", "type", "log"}, 0},
    {{"x-match", "any", "missing", "pdf"}, 0},
    {{"x-match", "all"}, 1}, /* nothing to compare: all holds, any does not */
    {{"x-match", "any"}, 0},
    {{"x-match", "all", "x-level", "9"}, 1}, /* x-* arguments are ignored */
    {{"x-match", "any", "x-level", "3"}, 0},
    {{"x-match", "all-with-x", "x-level", "9"}, 0}, /* ... unless asked for */
    {{"x-match", "all-with-x", "x-level", "3", "format", "pdf"}, 1},
    {{"x-match", "any-with-x", "x-level", "3", "format", "zip"}, 1},
    {{"x-match", "something"}, 0},
    {{"format", "PDF"}, 0}, /* values compare as bytes */
    {{"Format", "pdf"}, 0}, /* and names too */
    {{"format", ""}, 0},
};

static void test_headers_exchange_matches_all_and_any(void **state)
{
    (void)state;
    sl_header_t message[3];
    for (int i = 0; i < 3; i++)
        message[i] = header(message_headers[2 * i], message_headers[2 * i + 1]);
    for (size_t i = 0; i < sizeof headers_cases / sizeof *headers_cases; i++) {
        sl_header_t args[4];
        size_t n = 0;
        while (n < 4 && headers_cases[i].args[2 * n]) {
            args[n] = header(headers_cases[i].args[2 * n], headers_cases[i].args[2 * n + 1]);
            n++;
        }
        int got = sl_exchange_binding_matches(SL_EXCHANGE_HEADERS, "ignored", 7, args, n, "k", 1,
                                              message, 3);
        if (got != headers_cases[i].match)
            fail_msg("headers case %zu: expected %s", i,
                     headers_cases[i].match ? "a match" : "no match");
    }
}

static void test_headers_null_values_equal_only_null(void **state)
{
    (void)state;
    sl_header_t null_arg = header("flag", NULL), empty_arg = header("flag", "");
    sl_header_t null_message = header("flag", NULL), empty_message = header("flag", "");
    assert_true(sl_exchange_headers_match(&null_arg, 1, &null_message, 1));
    assert_false(sl_exchange_headers_match(&null_arg, 1, &empty_message, 1));
    assert_false(sl_exchange_headers_match(&empty_arg, 1, &null_message, 1));
    assert_true(sl_exchange_headers_match(&empty_arg, 1, &empty_message, 1));
    assert_false(sl_exchange_headers_match(&empty_arg, 1, NULL, 0));
}

static void test_direct_and_fanout(void **state)
{
    (void)state;
    static const struct {
        sl_exchange_type_t type;
        const char *pattern, *key;
        int match;
    } cases[] = {
        {SL_EXCHANGE_DIRECT, "orders", "orders", 1},
        {SL_EXCHANGE_DIRECT, "orders", "Orders", 0},
        {SL_EXCHANGE_DIRECT, "orders", "orders.eu", 0},
        {SL_EXCHANGE_DIRECT, "#", "orders", 0}, /* no wildcards in direct */
        {SL_EXCHANGE_DIRECT, "", "", 1},
        {SL_EXCHANGE_DIRECT, "", "a", 0},
        {SL_EXCHANGE_FANOUT, "anything", "orders", 1},
        {SL_EXCHANGE_FANOUT, "", "", 1},
        {SL_EXCHANGE_TOPIC, "orders.*", "orders.eu", 1},
        {SL_EXCHANGE_TOPIC, "orders.*", "orders", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int got =
            sl_exchange_binding_matches(cases[i].type, cases[i].pattern, strlen(cases[i].pattern),
                                        NULL, 0, cases[i].key, strlen(cases[i].key), NULL, 0);
        if (got != cases[i].match)
            fail_msg("%s '%s' key '%s': expected %d", sl_exchange_type_name(cases[i].type),
                     cases[i].pattern, cases[i].key, cases[i].match);
    }
}

static void test_type_names_round_trip(void **state)
{
    (void)state;
    sl_exchange_type_t t;
    static const char *const names[] = {"direct", "topic", "fanout", "headers"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sl_exchange_type_parse(names[i], strlen(names[i]), &t), 0);
        assert_int_equal(t, i);
        assert_string_equal(sl_exchange_type_name(t), names[i]);
    }
    assert_int_equal(sl_exchange_type_parse("TOPIC", 5, &t), 0);
    assert_int_equal(t, SL_EXCHANGE_TOPIC);
    assert_int_equal(sl_exchange_type_parse("topics", 6, &t), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "direct, topic, fanout or headers"));
    assert_int_equal(sl_exchange_type_parse("", 0, &t), SL_EINVALID);
}

static void test_binding_checks(void **state)
{
    (void)state;
    sl_header_t bad = header("x-match", "most"), good = header("x-match", "any");
    assert_int_equal(sl_exchange_binding_check(SL_EXCHANGE_TOPIC, SL_ROUTING_KEY_MAX, NULL, 0), 0);
    assert_int_equal(sl_exchange_binding_check(SL_EXCHANGE_TOPIC, SL_ROUTING_KEY_MAX + 1, NULL, 0),
                     SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "pattern"));
    assert_int_equal(sl_exchange_binding_check(SL_EXCHANGE_HEADERS, 0, &bad, 1), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "x-match"));
    assert_int_equal(sl_exchange_binding_check(SL_EXCHANGE_HEADERS, 0, &good, 1), 0);
    assert_int_equal(sl_exchange_binding_check(SL_EXCHANGE_DIRECT, 0, &bad, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_patterns_follow_rabbitmq),
        cmocka_unit_test(test_topic_keys_over_the_limit_never_match),
        cmocka_unit_test(test_headers_exchange_matches_all_and_any),
        cmocka_unit_test(test_headers_null_values_equal_only_null),
        cmocka_unit_test(test_direct_and_fanout),
        cmocka_unit_test(test_type_names_round_trip),
        cmocka_unit_test(test_binding_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

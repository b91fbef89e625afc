/*
 * test_buf.c - sl_buf_json_string() writes exactly what escaping byte by
 * byte writes ('"' and '\\' escaped, control characters as \u00XX, every
 * other byte as it is), for random texts of every length and mix, after
 * what the buffer already holds, and into a buffer that must grow.
 */
#include "testutil.h"

#include "storage/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference: one byte at a time. */
static size_t reference(const uint8_t *s, size_t len, char *out)
{
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            out[n++] = '\\';
            out[n++] = (char)s[i];
        } else if (s[i] < 0x20) {
            n += (size_t)sprintf(out + n, "\\u%04x", s[i]);
        } else {
            out[n++] = (char)s[i];
        }
    }
    out[n++] = '"';
    return n;
}

static void test_json_strings_are_escaped_as_byte_by_byte(void **state)
{
    (void)state;
    static const uint8_t alphabet[] = {'a',  'Z',  '0',  ' ',  '"',  '\\', 0,   '\n',
                                       0x1f, 0x7f, 0xc3, 0xa9, 0xff, '/',  0x20};
    uint8_t text[300];
    char want[6 * sizeof text + 2 + 3];
    srand(7);
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)rand() % (round < 1000 ? 8 : sizeof text);
        int mix = rand() % 4; /* 0: plain, 1: mostly plain, 2: mixed, 3: all special */
        for (size_t i = 0; i < len; i++) {
            int special = mix == 3 || (mix == 2 && rand() % 2) || (mix == 1 && rand() % 16 == 0);
            text[i] = special ? alphabet[4 + rand() % 5] : alphabet[rand() % sizeof alphabet];
        }
        sl_buf_t out = {0};
        size_t before = (size_t)(round % 3);
        assert_int_equal(sl_buf_append(&out, "xyz", before), 0);
        size_t n = reference(text, len, want);
        assert_int_equal(sl_buf_json_string(text, len, &out), 0);
        assert_int_equal(out.len, before + n);
        assert_memory_equal(out.data, "xyz", before);
        assert_memory_equal(out.data + before, want, n);
        sl_buf_free(&out);
    }
}

static void test_json_strings_fill_a_reused_buffer(void **state)
{
    (void)state;
    sl_buf_t out = {0};
    char want[64];
    for (int i = 0; i < 5000; i++) /* the buffer grows many times */
        assert_int_equal(sl_buf_json_string("a\"\\\x01", 4, &out), 0);
    size_t n = reference((const uint8_t *)"a\"\\\x01", 4, want);
    assert_int_equal(n, 13);
    assert_int_equal(out.len, 5000 * n);
    for (int i = 0; i < 5000; i++)
        assert_memory_equal(out.data + (size_t)i * n, want, n);
    out.len = 0;
    assert_int_equal(sl_buf_json_string("", 0, &out), 0);
    assert_int_equal(out.len, 2);
    assert_memory_equal(out.data, "\"\"", 2);
    sl_buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_strings_are_escaped_as_byte_by_byte),
        cmocka_unit_test(test_json_strings_fill_a_reused_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

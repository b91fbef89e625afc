/*
 * test_dtoa.c - sl_double_text() gives exactly the text of the printf and
 * strtod loop it replaces, for the numbers results are made of and at the
 * edges of its integer arithmetic; sl_decimal_double() reads exactly what
 * strtod() does whenever it answers, and leaves the rest to strtod().
 */
#include "testutil.h"

#include "storage/dtoa.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference: the loop every caller had. */
static void reference(double d, char *out)
{
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(out, SL_DOUBLE_TEXT_MAX, "%.*g", digits, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

static void check(double d)
{
    char want[SL_DOUBLE_TEXT_MAX], got[SL_DOUBLE_TEXT_MAX];
    reference(d, want);
    int n = sl_double_text(d, got);
    if (strcmp(got, want) != 0 || n != (int)strlen(want))
        fail_msg("%a: got \"%s\" (%d), want \"%s\"", d, got, n, want);
}

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double from_bits(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* Averages, ratios and sums as aggregates make them, both signs. */
static void test_quotients_and_sums(void **state)
{
    (void)state;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 100000; i++) {
        double a = (double)(next_random(&s) % 100000000), b = (double)(next_random(&s) % 997 + 1);
        check(a / b);
        check(-a / b);
        check(a / b / 1000.0);
        check((double)(next_random(&s) % 1000) * 0.1 + (double)(next_random(&s) % 1000) * 0.01);
    }
    check(0.1 + 0.2);
    check(1.0 / 3.0);
    check(2.0 / 3.0);
    check(100.0 / 7.0);
}

/* Random bit patterns over the exponents of the fast path and around it. */
static void test_random_doubles(void **state)
{
    (void)state;
    uint64_t s = 12345;
    for (int i = 0; i < 200000; i++) {
        uint64_t mantissa = next_random(&s) & ((1ull << 52) - 1);
        uint64_t exponent = 1023 - 30 + next_random(&s) % 90; /* 2^-30 .. 2^60 */
        uint64_t sign = (next_random(&s) & 1) << 63;
        check(from_bits(sign | exponent << 52 | mantissa));
    }
}

/* Where the decimal exponent or the layout changes, powers of two (the gap
 * below them is half as wide), ties and the ends of the fast path. */
static void test_edges(void **state)
{
    (void)state;
    for (int k = -8; k <= 17; k++) {
        double p = pow(10.0, k);
        check(p);
        check(nextafter(p, 0.0));
        check(nextafter(p, INFINITY));
        check(p * 1.5);
        check(p * 9.999999999999999);
        check(p * 0.99999999999999995);
    }
    for (int e = -60; e <= 60; e++) {
        double p = ldexp(1.0, e);
        check(p);
        check(nextafter(p, 0.0));
        check(nextafter(p, INFINITY));
        check(-p);
    }
    const double odd[] = {0.5,
                          0.25,
                          0.125,
                          1e-5,
                          1.5e-5,
                          9.99999e-6,
                          0.0001,
                          0.00012345,
                          123456789012345.6,
                          999999999999999.9,
                          4503599627370495.5,
                          4503599627370496.0,
                          9007199254740991.0,
                          1e15,
                          1e16,
                          1e21,
                          1e300,
                          1e-300,
                          5e-324,
                          2.2250738585072014e-308,
                          0.0,
                          -0.0,
                          1.7976931348623157e308,
                          3.14159265358979,
                          2.718281828459045,
                          1234.5,
                          0.3};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        check(odd[i]);
        check(-odd[i]);
    }
}

/* sl_decimal_double() of text: 1 and strtod's double (sign of zero
 * included), or 0 where fast says it must not answer. */
static void check_decimal(const char *text, int fast)
{
    double got = 0, want = strtod(text, NULL);
    int rc = sl_decimal_double(text, strlen(text), &got);
    if (rc != fast)
        fail_msg("\"%s\": answered %d, expected %d", text, rc, fast);
    if (rc && memcmp(&got, &want, sizeof got) != 0)
        fail_msg("\"%s\": got %a, strtod %a", text, got, want);
}

static void test_decimals_read_as_strtod_reads_them(void **state)
{
    (void)state;
    uint64_t s = 0xdecafbad;
    char text[64];
    for (int i = 0; i < 300000; i++) {
        uint64_t w = next_random(&s) % ((1ull << 53) + 1);
        int digits = snprintf(text, sizeof text, "%llu", (unsigned long long)w);
        int point = (int)(next_random(&s) % (uint64_t)(digits + 1)), e = (int)(next_random(&s) % 9);
        char out[80];
        int n = 0;
        if (next_random(&s) & 1)
            out[n++] = '-';
        if (point == 0) { /* 0.000ddd */
            out[n++] = '0';
            out[n++] = '.';
            memset(out + n, '0', (size_t)e);
            n += e;
            n += sprintf(out + n, "%s", text);
        } else {
            memcpy(out + n, text, (size_t)point);
            n += point;
            if (point < digits)
                n += sprintf(out + n, ".%s", text + point);
        }
        if (next_random(&s) % 3 == 0)
            n += sprintf(out + n, "e%s%d", next_random(&s) & 1 ? "-" : "+",
                         (int)(next_random(&s) % 12));
        out[n] = '\0';
        double exact;
        int answered = sl_decimal_double(out, (size_t)n, &exact);
        check_decimal(out, answered); /* whenever it answers, it agrees */
    }
    check_decimal("12.5", 1);
    check_decimal("-0.0", 1);
    check_decimal("0", 1);
    check_decimal("9007199254740992", 1);
    check_decimal("0.1", 1);
    check_decimal("1e22", 1);
    check_decimal("1e-22", 1);
    check_decimal("123.456e-3", 1);
    check_decimal("9007199254740993", 0);     /* over 2^53 */
    check_decimal("1e23", 0);                 /* 10^23 is not exact */
    check_decimal("1.5e-23", 0);              /* nor 10^-24 */
    check_decimal("12345678901234567890", 0); /* 20 digits */
    check_decimal("0.30000000000000004", 0);  /* 17 digits over 2^53 */
    check_decimal("1e99999", 0);
    check_decimal("12a", 0);
}

/* sl_int64_digits() writes what printf's %lld does, ending at end. */
static void test_int64_digits_are_printfs(void **state)
{
    (void)state;
    const int64_t values[] = {0,
                              1,
                              -1,
                              9,
                              10,
                              -10,
                              99,
                              100,
                              -100,
                              999,
                              1000,
                              123456789,
                              100000000000000000,
                              INT64_MAX,
                              INT64_MIN,
                              INT64_MIN + 1};
    enum { EDGES = sizeof values / sizeof values[0] };
    char buf[SL_INT64_TEXT_MAX + 1], want[32];
    uint64_t s = 99;
    for (int i = 0; i < EDGES + 100000; i++) {
        int64_t v = i < EDGES ? values[i] : (int64_t)next_random(&s) >> (next_random(&s) % 64);
        char *end = buf + SL_INT64_TEXT_MAX, *start = sl_int64_digits(end, v);
        snprintf(want, sizeof want, "%lld", (long long)v);
        assert_true(start >= buf);
        assert_int_equal(end - start, strlen(want));
        assert_memory_equal(start, want, strlen(want));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quotients_and_sums),
        cmocka_unit_test(test_random_doubles),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_decimals_read_as_strtod_reads_them),
        cmocka_unit_test(test_int64_digits_are_printfs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

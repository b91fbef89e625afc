/*
 * test_dtoa.c - sl_double_text() gives exactly the text of the printf and
 * strtod loop it replaces, for the numbers results are made of and at the
 * edges of its integer arithmetic.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quotients_and_sums),
        cmocka_unit_test(test_random_doubles),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * dtoa.c - a double as the shortest "%.*g" text that reads back (dtoa.h).
 *
 * The text every caller wants is the first of "%.15g", "%.16g", "%.17g"
 * that strtod() turns back into the same double. Asking printf and strtod
 * costs up to three of each, about a microsecond, for every average an
 * aggregate emits. For a normal double d = m * 2^-sh (m < 2^53, 1 <= sh <=
 * 125) whose p significant digits start at most 21 places left of the
 * units (d >= about 1e-5) and not right of them, the same text comes from
 * 128-bit integer arithmetic:
 *
 *   digits   with s = p - 1 - x, x the decimal exponent of d's first
 *            digit: m * 10^s < 2^126 exactly, and its quotient by 2^sh,
 *            rounded to nearest with ties to even (as printf rounds the
 *            exact binary value), is the p-digit integer q of "%.{p}g"
 *   reads    the decimal q * 10^-s reads back as d if it lies within half
 *   back     a gap of d: 2 |q * 2^sh - m * 10^s| <= 10^s, the tie only for
 *            an even m (strtod rounds ties to even); below a power of two
 *            the gap under d is half as wide, so 4 |...| <= 10^s there
 *   text     q without its trailing zeros, laid out as %g does: exponent
 *            form when x < -4 or x >= p, else positional
 *
 * Anything else (zero, subnormals, the very small and the large) goes to
 * the printf loop.
 *
 * The other way, sl_decimal_double() is Clinger's fast path: digits that
 * make an integer w <= 2^53 (exact in a double) and a decimal exponent e
 * with |e| <= 22 (10^e exact too) give w * 10^e or w / 10^-e, one IEEE
 * operation and so correctly rounded, the same double strtod() returns.
 */
#include "storage/dtoa.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

#define MAX_SCALE 21 /* 2^53 * 10^21 < 2^126 */

static const uint64_t POW10[20] = {1ull,
                                   10ull,
                                   100ull,
                                   1000ull,
                                   10000ull,
                                   100000ull,
                                   1000000ull,
                                   10000000ull,
                                   100000000ull,
                                   1000000000ull,
                                   10000000000ull,
                                   100000000000ull,
                                   1000000000000ull,
                                   10000000000000ull,
                                   100000000000000ull,
                                   1000000000000000ull,
                                   10000000000000000ull,
                                   100000000000000000ull,
                                   1000000000000000000ull,
                                   10000000000000000000ull};

static u128 pow10_wide(int s)
{
    return s < 20 ? POW10[s] : (u128)POW10[19] * POW10[s - 19];
}

static int printf_text(double d, char *out)
{
    int n = 0;
    for (int digits = 15; digits <= 17; digits++) {
        n = snprintf(out, SL_DOUBLE_TEXT_MAX, "%.*g", digits, d);
        if (strtod(out, NULL) == d)
            break;
    }
    return n;
}

/* "%.{p}g" of the value whose p digits are q (10^(p-1) <= q < 10^p) and
 * whose first digit has decimal exponent x. */
static int layout(int negative, uint64_t q, int p, int x, char *out)
{
    char digits[20];
    int nd = p, n = 0;
    for (int i = p - 1; i >= 0; i--, q /= 10)
        digits[i] = (char)('0' + q % 10);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (negative)
        out[n++] = '-';
    if (x < -4 || x >= p) {
        out[n++] = digits[0];
        if (nd > 1) {
            out[n++] = '.';
            memcpy(out + n, digits + 1, (size_t)nd - 1);
            n += nd - 1;
        }
        out[n++] = 'e';
        out[n++] = x < 0 ? '-' : '+';
        int e = abs(x);
        if (e >= 100)
            out[n++] = (char)('0' + e / 100);
        out[n++] = (char)('0' + e / 10 % 10);
        out[n++] = (char)('0' + e % 10);
    } else if (x >= 0) {
        int whole = x + 1;
        for (int i = 0; i < whole; i++)
            out[n++] = i < nd ? digits[i] : '0';
        if (nd > whole) {
            out[n++] = '.';
            memcpy(out + n, digits + whole, (size_t)(nd - whole));
            n += nd - whole;
        }
    } else {
        out[n++] = '0';
        out[n++] = '.';
        for (int i = 0; i < -x - 1; i++)
            out[n++] = '0';
        memcpy(out + n, digits, (size_t)nd);
        n += nd;
    }
    out[n] = '\0';
    return n;
}

/* The p-digit rounding of m * 2^-sh: *q and *x as layout() takes them, and
 * whether it reads back as the double. Returns -1 when the numbers leave
 * the range the arithmetic is exact in. */
static int digits_of(uint64_t m, int sh, int p, int x, uint64_t *q, int *x_out)
{
    for (int tries = 0; tries < 4; tries++) {
        int s = p - 1 - x;
        if (s < 0 || s > MAX_SCALE)
            return -1;
        u128 ten = pow10_wide(s), num = (u128)m * ten;
        u128 whole = num >> sh, rest = num - (whole << sh), half = (u128)1 << (sh - 1);
        if (whole >= POW10[p]) {
            x++;
            continue;
        }
        if (whole < POW10[p - 1]) {
            x--;
            continue;
        }
        if (rest > half || (rest == half && (whole & 1)))
            whole++;
        u128 scaled = whole << sh;
        int above = scaled >= num;
        u128 diff = above ? scaled - num : num - scaled;
        int power_of_two = m == (1ull << 52);
        u128 bound = !above && power_of_two ? diff * 4 : diff * 2;
        int reads_back = bound < ten || (bound == ten && (m & 1) == 0);
        if (whole == POW10[p]) {
            whole = POW10[p - 1];
            x++;
        }
        *q = (uint64_t)whole;
        *x_out = x;
        return reads_back;
    }
    return -1;
}

int sl_double_text(double d, char out[SL_DOUBLE_TEXT_MAX])
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    int biased = (int)(bits >> 52 & 0x7ff);
    int sh = 1075 - biased;
    if (biased == 0 || biased == 0x7ff || sh < 1 || sh > 125)
        return printf_text(d, out);
    uint64_t m = (bits & ((1ull << 52) - 1)) | (1ull << 52);
    /* floor(log10(2) * binary exponent): the first digit's decimal
     * exponent or one below it (digits_of() moves it as needed) */
    int guess = (int)(((int64_t)(biased - 1023) * 78913) >> 18);
    for (int p = 15; p <= 17; p++) {
        uint64_t q;
        int x, rc = digits_of(m, sh, p, guess, &q, &x);
        if (rc < 0)
            return printf_text(d, out);
        if (rc)
            return layout(d < 0, q, p, x, out);
    }
    return printf_text(d, out); /* not reached: 17 digits always read back */
}

char *sl_int64_digits(char *end, int64_t v)
{
    static const char pairs[] = "00010203040506070809101112131415161718192021222324"
                                "25262728293031323334353637383940414243444546474849"
                                "50515253545556575859606162636465666768697071727374"
                                "75767778798081828384858687888990919293949596979899";
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    for (; u >= 100; u /= 100) { /* two digits a division */
        end -= 2;
        memcpy(end, pairs + 2 * (u % 100), 2);
    }
    if (u >= 10) {
        end -= 2;
        memcpy(end, pairs + 2 * u, 2);
    } else {
        *--end = (char)('0' + u);
    }
    if (v < 0)
        *--end = '-';
    return end;
}

int sl_decimal_double(const char *text, size_t len, double *out)
{
    static const double EXACT[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *p = text, *end = text + len;
    int negative = p < end && *p == '-', significant = 0, exponent = 0;
    uint64_t w = 0;
    p += negative;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        if (w || *p != '0') {
            if (++significant > 19)
                return 0;
            w = w * 10 + (uint64_t)(*p - '0');
        }
    if (p < end && *p == '.')
        for (p++; p < end && *p >= '0' && *p <= '9'; p++) {
            exponent--;
            if (w || *p != '0') {
                if (++significant > 19)
                    return 0;
                w = w * 10 + (uint64_t)(*p - '0');
            }
        }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int minus = 0, e = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            minus = *p++ == '-';
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if ((e = e * 10 + (*p - '0')) > 1000)
                return 0;
        exponent += minus ? -e : e;
    }
    if (p != end || w > (1ull << 53) || exponent < -22 || exponent > 22)
        return 0;
    double d = exponent < 0 ? (double)w / EXACT[-exponent] : (double)w * EXACT[exponent];
    *out = negative ? -d : d;
    return 1;
}

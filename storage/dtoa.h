/*
 * dtoa.h - doubles to text and back, without printf and strtod where exact
 * integer arithmetic gives the same answer.
 */
#ifndef SL_DTOA_H
#define SL_DTOA_H

#include <stddef.h>
#include <stdint.h>

#define SL_DOUBLE_TEXT_MAX 32 /* bytes of sl_double_text()'s out, '\0' included */
#define SL_INT64_TEXT_MAX  20 /* bytes of an int64's decimal text, '-' included */

/*
 * Writes v in decimal ('-' first when negative) so that the text ends just
 * before end, and returns where it starts: the digits without printf, for
 * the paths that write counts and offsets per record or per reply.
 */
char *sl_int64_digits(char *end, int64_t v);

/*
 * Writes d (finite) as printf's "%.15g", or "%.16g", or "%.17g", the first
 * of them that strtod() reads back as d, and returns its length. The text
 * is the same as that loop of snprintf and strtod gives (every caller had
 * one), made with integer arithmetic for the numbers results are made of
 * (magnitudes from about 1e-5 to 2^53, not integral ones among the
 * largest), and by that loop for the rest.
 */
int sl_double_text(double d, char out[SL_DOUBLE_TEXT_MAX]);

/*
 * Reads a JSON number's text (RFC 8259 syntax, already checked) as strtod()
 * would, without it when the result is exact by construction: at most 19
 * significant digits making an integer up to 2^53, scaled by a power of
 * ten up to 10^22 (one correctly rounded multiplication or division of
 * exact operands, as strtod's result is the correctly rounded value too).
 * Returns 1 and *out then, 0 for texts the caller must give to strtod().
 */
int sl_decimal_double(const char *text, size_t len, double *out);

#endif

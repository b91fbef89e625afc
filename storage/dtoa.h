/*
 * dtoa.h - a double as the shortest "%.*g" text that reads back as it.
 */
#ifndef SL_DTOA_H
#define SL_DTOA_H

#define SL_DOUBLE_TEXT_MAX 32 /* bytes of sl_double_text()'s out, '\0' included */

/*
 * Writes d (finite) as printf's "%.15g", or "%.16g", or "%.17g", the first
 * of them that strtod() reads back as d, and returns its length. The text
 * is the same as that loop of snprintf and strtod gives (every caller had
 * one), made with integer arithmetic for the numbers results are made of
 * (magnitudes from about 1e-5 to 2^53, not integral ones among the
 * largest), and by that loop for the rest.
 */
int sl_double_text(double d, char out[SL_DOUBLE_TEXT_MAX]);

#endif

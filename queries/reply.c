/*
 * reply.c - RESP reply encoding (see reply.h).
 *
 * An error text that starts with one of the error codes clients match on
 * (ERR, NOAUTH, WRONGPASS, NOTFOUND, BUSY, NOPROTO, WRONGTYPE) is sent as is;
 * any other gets the generic "ERR " prefix, as Redis does. Error texts never contain CR or LF:
 * they are replaced so that a user's bytes cannot break the framing.
 */
#include "queries/reply.h"
#include "storage/dtoa.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Appends prefix, the decimal v and CRLF in one add (no printf: this is
 * on every reply's path). */
static void add_number_line(struct evbuffer *out, char prefix, int64_t v)
{
    char text[SL_INT64_TEXT_MAX + 3], *p = text + sizeof text;
    *--p = '\n';
    *--p = '\r';
    p = sl_int64_digits(p, v);
    *--p = prefix;
    evbuffer_add(out, p, (size_t)(text + sizeof text - p));
}

void sl_reply_simple(sl_reply_t *r, const char *text)
{
    size_t n = strlen(text);
    evbuffer_add(r->out, "+", 1);
    evbuffer_add(r->out, text, n);
    evbuffer_add(r->out, "\r\n", 2);
}

static int has_code_prefix(const char *text)
{
    static const char *const codes[] = {"ERR ",  "NOAUTH ",  "WRONGPASS ", "NOTFOUND ",
                                        "BUSY ", "NOPROTO ", "WRONGTYPE "};
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (!strncmp(text, codes[i], strlen(codes[i])))
            return 1;
    return 0;
}

void sl_reply_error(sl_reply_t *r, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (char *p = text; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    evbuffer_add_printf(r->out, has_code_prefix(text) ? "-%s\r\n" : "-ERR %s\r\n", text);
}

void sl_reply_int(sl_reply_t *r, int64_t v)
{
    add_number_line(r->out, ':', v);
}

void sl_reply_bulk(sl_reply_t *r, const void *data, size_t len)
{
    add_number_line(r->out, '$', (int64_t)len);
    evbuffer_add(r->out, data, len);
    evbuffer_add(r->out, "\r\n", 2);
}

void sl_reply_cstr(sl_reply_t *r, const char *text)
{
    sl_reply_bulk(r, text, strlen(text));
}

void sl_reply_null(sl_reply_t *r)
{
    evbuffer_add(r->out, r->resp3 ? "_\r\n" : "$-1\r\n", r->resp3 ? 3 : 5);
}

void sl_reply_bulk_or_null(sl_reply_t *r, const void *data, int64_t len)
{
    if (len < 0)
        sl_reply_null(r);
    else
        sl_reply_bulk(r, data, (size_t)len);
}

void sl_reply_array(sl_reply_t *r, size_t count)
{
    add_number_line(r->out, '*', (int64_t)count);
}

void sl_reply_map(sl_reply_t *r, size_t pairs)
{
    add_number_line(r->out, r->resp3 ? '%' : '*', (int64_t)(r->resp3 ? pairs : 2 * pairs));
}

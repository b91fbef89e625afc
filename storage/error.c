/*
 * error.c - error codes and the per-thread detail sentence.
 *
 * Codes are LMDB-style ints: 0 ok, -errno for the system, SL_E* from a
 * reserved range for sluice's own. The detail sentence carries what a code
 * cannot: which topic, partition, offset or setting was wrong.
 */
#include "storage/storage.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char detail[512];

static const char *const sluice_messages[] = {
    "corrupt data", "not found", "already exists", "invalid argument",
    "too big",      "deleted",   "timed out",      "compression failed",
};

const char *sl_strerror(int code)
{
    if (code == 0)
        return "success";
    if (code <= SL_ERROR_BASE && code >= SL_ERROR_LAST)
        return sluice_messages[SL_ERROR_BASE - code];
    if (code < 0)
        return strerror(-code);
    return "unknown error";
}

const char *sl_error_detail(void)
{
    return detail;
}

int sl_error_set(int code, const char *fmt, ...)
{
    char text[sizeof detail]; /* the arguments may include sl_error_detail() itself */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(detail, text, sizeof detail);
    return code;
}

/*
 * duration.c - durations written as text ("500ms", "10s", "1m", "1h",
 * "1d", or bare milliseconds), for every module that reads them: the Lua
 * DSL (window sizes, grace, retention) and the operators; and the
 * monotonic clock that intervals are measured on.
 *
 * The grammar is deliberately small: decimal digits, then nothing or one
 * unit. Values are checked against SL_DURATION_MAX while the digits are
 * read and again after scaling, so no input can overflow int64.
 */
#include "storage/storage.h"

#include <string.h>
#include <time.h>

static const struct {
    const char *name;
    int64_t ms;
} units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};

static int duration_error(const char *text, const char *why)
{
    return sl_error_set(SL_EINVALID,
                        "duration \"%.64s\": %s (write an integer and a unit: 500ms, 10s, 5m, "
                        "1h, 1d; a bare integer is milliseconds)",
                        text, why);
}

/* The multiplier of unit, or 0 if it is not one. */
static int64_t unit_ms(const char *unit)
{
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (strcmp(unit, units[i].name) == 0)
            return units[i].ms;
    return 0;
}

int sl_duration_parse(const char *text, int64_t *ms)
{
    if (!text || !*text)
        return duration_error("", "empty");
    const char *p = text;
    int64_t n = 0;
    if (*p < '0' || *p > '9')
        return duration_error(text, "does not start with a digit");
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (SL_DURATION_MAX - (*p - '0')) / 10)
            return duration_error(text, "too long (the limit is 1e13 ms, about 317 years)");
        n = n * 10 + (*p - '0');
    }
    if (*p == '.' || *p == ',')
        return duration_error(text, "fractions are not supported (write 1500ms, not 1.5s)");
    int64_t unit = unit_ms(p);
    if (!unit)
        return duration_error(text, "unknown unit");
    if (n > SL_DURATION_MAX / unit)
        return duration_error(text, "too long (the limit is 1e13 ms, about 317 years)");
    *ms = n * unit;
    return 0;
}

int64_t sl_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

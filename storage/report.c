/*
 * report.c - one diagnostic line per event on stderr.
 *
 * Format: `2026-11-26T18:40:01.123Z WARN log: message`. A whole line goes out
 * in one write so that lines from several threads never interleave.
 */
#include "storage/storage.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static _Atomic int threshold = SL_INFO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void sl_report_level(sl_level_t level)
{
    atomic_store(&threshold, (int)level);
}

static int format_time(char *out, size_t size)
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    return snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                    now.tv_nsec / 1000000);
}

void sl_report(sl_level_t level, const char *module, const char *fmt, ...)
{
    char line[1024];
    if ((int)level < atomic_load(&threshold))
        return;
    int n = format_time(line, sizeof line);
    n += snprintf(line + n, sizeof line - (size_t)n, " %s %s: ", level_names[level], module);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (m < 0) ? n : n + m;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, (size_t)n);
    (void)ignored;
}

/*
 * testutil.h - helpers shared by the unit tests: temporary data directories,
 * a settable clock, and building records.
 */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "storage/storage.h"

/* A fresh empty directory under $TMPDIR (or /tmp); removed by tu_rmdir. */
char *tu_mkdtemp(void);
void tu_rmdir(char *dir);

/* A clock the tests move by hand. */
typedef struct tu_clock {
    int64_t now_ms;
} tu_clock_t;
int64_t tu_clock_read(void *arg);

/* Log options using the clock (NULL: wall clock). */
sl_log_options_t tu_options(tu_clock_t *clock);

/* A record with string key/value (NULL = null), timestamp ts. */
sl_record_t tu_record(const char *key, const char *value, int64_t ts);

/* Creates a topic with 1 partition and the given overrides ("name=value",
 * NULL-terminated) and returns partition 0. */
sl_partition_t *tu_topic(sl_log_t *log, const char *name, ...);

/* Reads from offset to the visible end; returns how many records. */
int64_t tu_count(sl_partition_t *p, int64_t from);

/* 1 if the file exists. */
int tu_exists(const char *path);

/* Size of a file, or -1. */
long tu_file_size(const char *path);

#endif

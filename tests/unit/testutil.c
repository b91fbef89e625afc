/*
 * testutil.c - helpers shared by the unit tests.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *tu_mkdtemp(void)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *dir = malloc(strlen(base) + 32);
    assert_non_null(dir);
    sprintf(dir, "%s/sluice-test-XXXXXX", base);
    assert_non_null(mkdtemp(dir));
    return dir;
}

void tu_rmdir(char *dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

int64_t tu_clock_read(void *arg)
{
    return ((tu_clock_t *)arg)->now_ms;
}

sl_log_options_t tu_options(tu_clock_t *clock)
{
    sl_log_options_t o = {0};
    if (clock) {
        o.clock_ms = tu_clock_read;
        o.clock_arg = clock;
    }
    return o;
}

sl_record_t tu_record(const char *key, const char *value, int64_t ts)
{
    sl_record_t r = {.timestamp = ts, .key_len = -1, .value_len = -1};
    if (key) {
        r.key = (const uint8_t *)key;
        r.key_len = (int32_t)strlen(key);
    }
    if (value) {
        r.value = (const uint8_t *)value;
        r.value_len = (int32_t)strlen(value);
    }
    return r;
}

sl_partition_t *tu_topic(sl_log_t *log, const char *name, ...)
{
    sl_topic_config_t cfg;
    sl_topic_t *t;
    va_list ap;
    sl_topic_config_default(&cfg);
    va_start(ap, name);
    for (const char *kv; (kv = va_arg(ap, const char *));) {
        char key[128];
        const char *eq = strchr(kv, '=');
        assert_non_null(eq);
        snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
        assert_int_equal(sl_topic_config_set(&cfg, key, eq + 1), 0);
    }
    va_end(ap);
    assert_int_equal(sl_log_create_topic(log, name, &cfg, &t), 0);
    return sl_topic_partition(t, 0);
}

int64_t tu_count(sl_partition_t *p, int64_t from)
{
    sl_reader_t *r;
    sl_record_t rec;
    int64_t n = 0;
    int rc;
    assert_int_equal(sl_reader_open(p, from, &r), 0);
    while ((rc = sl_reader_next(r, &rec)) == 1)
        n++;
    assert_int_equal(rc, 0);
    sl_reader_close(r);
    return n;
}

int tu_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

long tu_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

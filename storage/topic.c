/*
 * topic.c - topic configuration, the meta file, and a topic's partitions.
 */
#include "storage/topic.h"
#include "storage/io.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

void sl_topic_config_default(sl_topic_config_t *c)
{
    *c = (sl_topic_config_t){
        .partitions = 1,
        .retention_ms = -1,
        .retention_bytes = -1,
        .cleanup = SL_CLEANUP_DELETE,
        .delete_retention_ms = 86400000,
        .min_cleanable_dirty_ratio = 0.5,
        .compression = SL_COMPRESSION_NONE,
        .compression_level = 1,
        .fsync = SL_FSYNC_INTERVAL,
        .fsync_interval_ms = 5,
        .format = SL_FORMAT_JSON,
        .segment_bytes = 1 << 30,
        .segment_ms = 7 * 86400000LL,
        .index_interval_bytes = 4096,
        .max_batch_bytes = 16 << 20,
    };
}

int sl_topic_name_check(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SL_TOPIC_NAME_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return sl_error_set(SL_EINVALID, "topic name must be 1 to %d characters, not . or ..",
                            SL_TOPIC_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        if (!ok)
            return sl_error_set(SL_EINVALID,
                                "topic name '%s' has '%c': use only letters, digits, '.', '_', '-'",
                                name, ch);
    }
    return 0;
}

static int parse_int(const char *name, const char *value, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max)
        return sl_error_set(SL_EINVALID, "%s must be an integer from %lld to %lld, not '%s'", name,
                            (long long)min, (long long)max, value);
    *out = v;
    return 0;
}

/* Maps one word of a fixed set to its index, or names the choices. */
static int parse_choice(const char *name, const char *value, const char *const *choices, int n,
                        int *out)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(value, choices[i])) {
            *out = i;
            return 0;
        }
    return sl_error_set(SL_EINVALID, "%s must be one of %s|%s%s%s, not '%s'", name, choices[0],
                        choices[1], n > 2 ? "|" : "", n > 2 ? choices[2] : "", value);
}

/* The integer settings: name, field, width and range. */
typedef struct int_setting {
    const char *name;
    size_t offset;
    size_t width;
    int64_t min, max;
} int_setting_t;

#define INT_SETTING(n, field, lo, hi)                                                              \
    {                                                                                              \
        n, offsetof(sl_topic_config_t, field), sizeof(((sl_topic_config_t *)0)->field), lo, hi     \
    }

static const int_setting_t int_settings[] = {
    INT_SETTING("partitions", partitions, 1, 10000),
    INT_SETTING("retention.ms", retention_ms, -1, INT64_MAX / 2),
    INT_SETTING("retention.bytes", retention_bytes, -1, INT64_MAX / 2),
    INT_SETTING("delete.retention.ms", delete_retention_ms, 0, INT64_MAX / 2),
    INT_SETTING("compression.level", compression_level, -7, 22),
    INT_SETTING("fsync.interval.ms", fsync_interval_ms, 1, 3600000),
    INT_SETTING("segment.bytes", segment_bytes, 1024, INT32_MAX),
    INT_SETTING("segment.ms", segment_ms, 1, INT64_MAX / 2),
    INT_SETTING("index.interval.bytes", index_interval_bytes, 0, INT32_MAX),
    INT_SETTING("max.batch.bytes", max_batch_bytes, 1024, 1 << 30),
};

static const char *const cleanup_names[] = {"delete", "compact"};
static const char *const fsync_names[] = {"never", "interval", "always"};
static const char *const format_names[] = {"json", "raw"};
static const char *const compression_names[] = {"none", "zstd"};
static const char *const boolean_names[] = {"false", "true"};

static int set_int(sl_topic_config_t *c, const int_setting_t *s, const char *value)
{
    int64_t v = 0;
    int rc = parse_int(s->name, value, s->min, s->max, &v);
    if (rc)
        return rc;
    char *field = (char *)c + s->offset;
    if (s->width == sizeof(int32_t)) {
        int32_t v32 = (int32_t)v;
        memcpy(field, &v32, sizeof v32);
    } else {
        memcpy(field, &v, sizeof v);
    }
    return 0;
}

static int set_choice(sl_topic_config_t *c, const char *name, const char *value)
{
    int v = 0, rc;
    if (!strcmp(name, "cleanup.policy")) {
        if (!(rc = parse_choice(name, value, cleanup_names, 2, &v)))
            c->cleanup = (sl_cleanup_t)v;
    } else if (!strcmp(name, "fsync")) {
        if (!(rc = parse_choice(name, value, fsync_names, 3, &v)))
            c->fsync = (sl_fsync_t)v;
    } else if (!strcmp(name, "format")) {
        if (!(rc = parse_choice(name, value, format_names, 2, &v)))
            c->format = (sl_value_format_t)v;
    } else if (!strcmp(name, "compression")) {
        if (!(rc = parse_choice(name, value, compression_names, 2, &v)))
            c->compression = v ? SL_COMPRESSION_ZSTD : SL_COMPRESSION_NONE;
    } else if (!strcmp(name, "transactional")) {
        if (!(rc = parse_choice(name, value, boolean_names, 2, &v)))
            c->transactional = v;
    } else {
        rc = sl_error_set(SL_EINVALID, "unknown topic setting '%s'", name);
    }
    return rc;
}

/* A decimal from 0 to 1. */
static int set_ratio(const char *name, const char *value, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (!*value || *end || errno || !(v >= 0 && v <= 1))
        return sl_error_set(SL_EINVALID, "%s must be a decimal from 0 to 1, got \"%.32s\"", name,
                            value);
    *out = v;
    return 0;
}

int sl_topic_config_set(sl_topic_config_t *c, const char *name, const char *value)
{
    if (!strcmp(name, "min.cleanable.dirty.ratio"))
        return set_ratio(name, value, &c->min_cleanable_dirty_ratio);
    for (size_t i = 0; i < sizeof int_settings / sizeof *int_settings; i++)
        if (!strcmp(name, int_settings[i].name))
            return set_int(c, &int_settings[i], value);
    if (!strcmp(name, "owner")) {
        if (strlen(value) >= SL_OWNER_MAX || strchr(value, '\n'))
            return sl_error_set(SL_EINVALID, "owner must be one line under %d bytes", SL_OWNER_MAX);
        snprintf(c->owner, sizeof c->owner, "%s", value);
        return 0;
    }
    return set_choice(c, name, value);
}

int sl_topic_config_check(const sl_topic_config_t *c)
{
    char text[64];
    for (size_t i = 0; i < sizeof int_settings / sizeof *int_settings; i++) {
        const int_setting_t *s = &int_settings[i];
        int64_t v = 0;
        if (s->width == sizeof(int32_t)) {
            int32_t v32;
            memcpy(&v32, (const char *)c + s->offset, sizeof v32);
            v = v32;
        } else {
            memcpy(&v, (const char *)c + s->offset, sizeof v);
        }
        snprintf(text, sizeof text, "%lld", (long long)v);
        sl_topic_config_t scratch = *c;
        int rc = set_int(&scratch, s, text);
        if (rc)
            return rc;
    }
    if ((unsigned)c->cleanup > 1 || (unsigned)c->fsync > 2 || (unsigned)c->format > 1 ||
        (unsigned)c->transactional > 1 ||
        (c->compression != SL_COMPRESSION_NONE && c->compression != SL_COMPRESSION_ZSTD))
        return sl_error_set(SL_EINVALID, "topic configuration has an unknown enum value");
    if (!(c->min_cleanable_dirty_ratio >= 0 && c->min_cleanable_dirty_ratio <= 1))
        return sl_error_set(SL_EINVALID, "min.cleanable.dirty.ratio must be from 0 to 1");
    return 0;
}

int sl_topic_config_format(const sl_topic_config_t *c, char *out, size_t size)
{
    return snprintf(
        out, size,
        "partitions=%d\nretention.ms=%lld\nretention.bytes=%lld\n"
        "cleanup.policy=%s\ndelete.retention.ms=%lld\ncompression=%s\n"
        "compression.level=%d\nfsync=%s\nfsync.interval.ms=%lld\nformat=%s\n"
        "segment.bytes=%lld\nsegment.ms=%lld\nindex.interval.bytes=%d\n"
        "max.batch.bytes=%d\nowner=%s\ntransactional=%s\nmin.cleanable.dirty.ratio=%.6g\n",
        c->partitions, (long long)c->retention_ms, (long long)c->retention_bytes,
        cleanup_names[c->cleanup], (long long)c->delete_retention_ms,
        c->compression == SL_COMPRESSION_ZSTD ? "zstd" : "none", c->compression_level,
        fsync_names[c->fsync], (long long)c->fsync_interval_ms, format_names[c->format],
        (long long)c->segment_bytes, (long long)c->segment_ms, c->index_interval_bytes,
        c->max_batch_bytes, c->owner, boolean_names[c->transactional ? 1 : 0],
        c->min_cleanable_dirty_ratio);
}

static int parse_meta(char *text, const char *path, sl_topic_config_t *c)
{
    sl_topic_config_default(c);
    int line_no = 0;
    char *save;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        char *eq = strchr(line, '=');
        if (!eq)
            return sl_error_set(SL_ECORRUPT, "%s line %d has no '='", path, line_no);
        *eq = 0;
        if (sl_topic_config_set(c, line, eq + 1))
            return sl_error_set(SL_ECORRUPT, "%s line %d: %s", path, line_no, sl_error_detail());
    }
    return 0;
}

static sl_topic_t *topic_new(const char *dir, const char *name, const sl_topic_config_t *c)
{
    sl_topic_t *t = sl_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->name = sl_strdup(name);
    t->dir = sl_strdup(dir);
    t->config = *c;
    t->partitions = sl_calloc((size_t)c->partitions, sizeof *t->partitions);
    if (!t->name || !t->dir || !t->partitions) {
        sl_free(t->name);
        sl_free(t->dir);
        sl_free(t->partitions);
        sl_free(t);
        return NULL;
    }
    return t;
}

static void topic_free(sl_topic_t *t)
{
    sl_free(t->partitions);
    sl_free(t->name);
    sl_free(t->dir);
    sl_free(t);
}

static int open_partitions(sl_topic_t *t, const sl_partition_env_t *env, int clean)
{
    for (int32_t i = 0; i < t->config.partitions; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%d", t->dir, i);
        int rc = sl_partition_open(t->name, i, dir, &t->config, env, clean, &t->partitions[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static void close_partitions(sl_topic_t *t, sl_flusher_t *flusher, int discard)
{
    for (int32_t i = 0; i < t->config.partitions; i++) {
        sl_partition_t *p = t->partitions[i];
        if (!p)
            continue;
        sl_flusher_forget(flusher, p);
        if (discard) {
            sl_partition_mark_deleted(p);
            sl_partition_unref(p);
        } else {
            sl_partition_close(p);
        }
    }
}

int sl_topic_create(const char *dir, const char *name, const sl_topic_config_t *config,
                    const sl_partition_env_t *env, sl_topic_t **out)
{
    char meta[PATH_MAX], text[2048];
    int rc = sl_topic_config_check(config);
    if (rc)
        return rc;
    if (mkdir(dir, 0755))
        return sl_error_set(-errno, "cannot create %s: %s", dir, strerror(errno));
    sl_topic_t *t = topic_new(dir, name, config);
    if (!t)
        return -ENOMEM;
    snprintf(meta, sizeof meta, "%s/meta", dir);
    rc = open_partitions(t, env, 1);
    if (rc == 0)
        rc =
            sl_io_write_file(meta, text, (size_t)sl_topic_config_format(config, text, sizeof text));
    if (rc) {
        close_partitions(t, env->flusher, 1);
        topic_free(t);
        sl_io_remove_tree(dir);
        return rc;
    }
    *out = t;
    return 0;
}

int sl_topic_open(const char *dir, const char *name, const sl_partition_env_t *env, int clean,
                  sl_topic_t **out)
{
    char meta[PATH_MAX], *text;
    size_t n;
    sl_topic_config_t config;
    snprintf(meta, sizeof meta, "%s/meta", dir);
    int rc = sl_io_read_file(meta, &text, &n);
    if (rc)
        return rc == -ENOENT ? rc : sl_error_set(rc, "cannot read %s: %s", meta, sl_strerror(rc));
    rc = parse_meta(text, meta, &config);
    sl_free(text);
    if (rc == 0 && (rc = sl_topic_config_check(&config)))
        rc = sl_error_set(SL_ECORRUPT, "%s: %s", meta, sl_error_detail());
    if (rc)
        return rc;
    sl_topic_t *t = topic_new(dir, name, &config);
    if (!t)
        return -ENOMEM;
    if ((rc = open_partitions(t, env, clean))) {
        close_partitions(t, env->flusher, 0);
        topic_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void sl_topic_close(sl_topic_t *t, sl_flusher_t *flusher)
{
    close_partitions(t, flusher, 0);
    topic_free(t);
}

void sl_topic_discard(sl_topic_t *t, sl_flusher_t *flusher)
{
    close_partitions(t, flusher, 1);
    topic_free(t);
}

const char *sl_topic_name(const sl_topic_t *t)
{
    return t->name;
}

const sl_topic_config_t *sl_topic_config(const sl_topic_t *t)
{
    return &t->config;
}

sl_partition_t *sl_topic_partition(sl_topic_t *t, int32_t i)
{
    return i >= 0 && i < t->config.partitions ? t->partitions[i] : NULL;
}

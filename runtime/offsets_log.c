/*
 * offsets_log.c - an exactly-once pipeline's positions, also kept in its log.
 *
 * A commit records the input offsets (and the aggregates' stream times) in
 * LMDB. If DATA/state is lost, the stores come back from their changelogs,
 * but offsets would not: the pipeline would read its inputs again from the
 * start and count everything twice. So every commit also appends them to
 * the pipeline's topic "<pipeline>.offsets" (transactional, compacted, one
 * partition), in the same commit as the outputs and changelogs:
 *
 *   key "in/<topic>/<partition>"     value: the next input offset, decimal
 *   key "time/<store>/<partition>"   value: the stream time, decimal
 *
 * When a position is missing from LMDB, the newest value of its key in this
 * topic is used instead.
 */
#include "runtime/pipeline_internal.h"
#include "storage/offsets.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void offsets_topic(const pipeline_t *pl, char *out, size_t size)
{
    snprintf(out, size, "%s.offsets", pl->name);
}

static int remember(pipeline_t *pl, const sl_record_t *r)
{
    char key[SL_TOPIC_NAME_MAX + 96], value[32];
    if (r->key_len <= 0 || (size_t)r->key_len >= sizeof key || r->value_len <= 0 ||
        (size_t)r->value_len >= sizeof value)
        return 0; /* not ours: ignore */
    memcpy(key, r->key, (size_t)r->key_len);
    key[r->key_len] = '\0';
    memcpy(value, r->value, (size_t)r->value_len);
    value[r->value_len] = '\0';
    int64_t v = strtoll(value, NULL, 10);
    for (int i = 0; i < pl->logged_count; i++)
        if (strcmp(pl->logged[i].key, key) == 0) {
            pl->logged[i].value = v;
            return 0;
        }
    size_t cap = (size_t)pl->logged_cap;
    if (sl_array_reserve((void **)&pl->logged, &cap, (size_t)pl->logged_count + 1,
                         sizeof *pl->logged))
        return -ENOMEM;
    pl->logged_cap = (int)cap;
    logged_t *l = &pl->logged[pl->logged_count];
    if (!(l->key = sl_strdup(key)))
        return -ENOMEM;
    l->value = v;
    pl->logged_count++;
    return 0;
}

int offsets_log_open(pipeline_t *pl)
{
    char name[SL_TOPIC_NAME_MAX + 16];
    sl_topic_config_t cfg;
    sl_reader_t *reader;
    sl_record_t r;
    if (!pl->exactly_once)
        return 0;
    offsets_topic(pl, name, sizeof name);
    sl_topic_t *t = sl_log_topic(pl->log, name);
    if (!t) {
        sl_topic_config_default(&cfg);
        cfg.partitions = 1;
        cfg.transactional = 1;
        cfg.cleanup = SL_CLEANUP_COMPACT;
        cfg.format = SL_FORMAT_RAW;
        snprintf(cfg.owner, sizeof cfg.owner, "%s", pl->name);
        int rc = sl_log_create_topic(pl->log, name, &cfg, &t);
        return rc == SL_EEXISTS ? 0 : rc;
    }
    int rc = sl_reader_open(sl_topic_partition(t, 0), 0, &reader);
    while (rc == 0 && (rc = sl_reader_next(reader, &r)) == 1)
        rc = remember(pl, &r);
    if (rc >= 0)
        sl_reader_close(reader);
    return rc < 0 ? rc : 0;
}

/* What the offsets topic holds for (kind, name, partition), read at start. */
static int logged(const pipeline_t *pl, const char *kind, const char *name, int32_t partition,
                  int64_t *value)
{
    char key[SL_TOPIC_NAME_MAX + 96];
    snprintf(key, sizeof key, "%s/%s/%d", kind, name, (int)partition);
    for (int i = 0; i < pl->logged_count; i++)
        if (strcmp(pl->logged[i].key, key) == 0) {
            *value = pl->logged[i].value;
            return 0;
        }
    return SL_ENOTFOUND;
}

int offsets_log_committed(const pipeline_t *pl, const char *kind, const char *name,
                          int32_t partition, int64_t *value)
{
    const char *group = strcmp(kind, "in") == 0 ? pl->group : pl->time_group;
    int rc = sl_offsets_get(pl->state, group, name, partition, value);
    return rc == SL_ENOTFOUND ? logged(pl, kind, name, partition, value) : rc;
}

/* Adds one position to recs (keys and values live in text). */
static int add(sl_record_set_t *recs, const char *kind, const char *name, int32_t partition,
               int64_t value)
{
    char key[SL_TOPIC_NAME_MAX + 96], text[32];
    int key_len = snprintf(key, sizeof key, "%s/%s/%d", kind, name, (int)partition);
    int len = snprintf(text, sizeof text, "%lld", (long long)value);
    sl_record_t r = {.key = (const uint8_t *)key,
                     .key_len = key_len,
                     .value = (const uint8_t *)text,
                     .value_len = len,
                     .timestamp = -1};
    return sl_record_set_add(recs, &r);
}

int offsets_log_append(pipeline_t *pl, sl_commit_t *c, const worker_t *w)
{
    char name[SL_TOPIC_NAME_MAX + 16];
    sl_record_set_t recs = {0};
    int rc = 0;
    for (int i = 0; rc == 0 && i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        if (!pipeline_runs(w, t))
            continue;
        int32_t part = sl_partition_id(t->partition);
        if (t->uncommitted >= 0)
            rc = add(&recs, "in", t->topic, part, t->uncommitted);
        for (int op = 0; rc == 0 && t->state && op < pl->dag->op_count; op++) {
            int64_t time =
                pl->stores && pl->stores[op] ? sl_exec_task_stream_time(t->state, op) : INT64_MIN;
            if (time != INT64_MIN)
                rc = add(&recs, "time", sl_store_name(pl->stores[op]), part, time);
        }
    }
    offsets_topic(pl, name, sizeof name);
    sl_topic_t *t = sl_log_topic(pl->log, name);
    if (rc == 0 && recs.count && !t)
        rc = sl_error_set(SL_ENOTFOUND, "pipeline %s: topic %s is gone", pl->name, name);
    if (rc == 0 && recs.count)
        rc = sl_commit_append(c, sl_topic_partition(t, 0), sl_record_set_array(&recs), recs.count,
                              NULL);
    sl_record_set_free(&recs);
    return rc;
}

void offsets_log_free(pipeline_t *pl)
{
    for (int i = 0; i < pl->logged_count; i++)
        sl_free(pl->logged[i].key);
    sl_free(pl->logged);
}

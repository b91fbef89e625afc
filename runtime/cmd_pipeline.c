/*
 * cmd_pipeline.c - the PIPELINE command, added to the node's RESP server:
 *
 *   PIPELINE SUBMIT name source   compile, check, start or replace -> OK
 *   PIPELINE LIST                 -> [[name, state, error], ...]
 *   PIPELINE DESCRIBE name        -> [name, n, state, s, error, e, ops, [[id,
 *                                    kind, where, in, out, errors], ...], tasks,
 *                                    [[topic, partition, committed, end, lag], ...]]
 *   PIPELINE STOP name            stop and forget -> OK
 */
#include "runtime/pipeline_internal.h"
#include "storage/offsets.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static int word_is(const sl_resp_arg_t *a, const char *word)
{
    return a->len == strlen(word) && !strncasecmp(a->data, word, a->len);
}

static int copy_name(const sl_resp_arg_t *a, char *out, size_t size)
{
    if (a->len == 0 || a->len >= size || memchr(a->data, 0, a->len))
        return -1;
    memcpy(out, a->data, a->len);
    out[a->len] = 0;
    return 0;
}

static int fail(sl_reply_t *r, const char *text)
{
    sl_reply_error(r, "%s", text);
    return 1;
}

static void reply_state(sl_reply_t *r, pipeline_t *pl)
{
    char error[512];
    int failed = pipeline_failed(pl, error, sizeof error);
    sl_reply_cstr(r, failed ? "failed" : "running");
    sl_reply_cstr(r, failed ? error : "");
}

static int list(sl_pipelines_t *m, sl_reply_t *r)
{
    pthread_mutex_lock(&m->lock);
    sl_reply_array(r, (size_t)m->count);
    for (int i = 0; i < m->count; i++) {
        sl_reply_array(r, 3);
        sl_reply_cstr(r, m->list[i]->name);
        reply_state(r, m->list[i]);
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static void reply_ops(sl_reply_t *r, pipeline_t *pl)
{
    sl_reply_array(r, (size_t)pl->dag->op_count);
    for (int i = 0; i < pl->dag->op_count; i++) {
        const sl_op_t *op = &pl->dag->ops[i];
        const sl_op_stats_t *st = sl_exec_stats(pl->exec, i);
        sl_reply_array(r, 6);
        sl_reply_int(r, i);
        sl_reply_cstr(r, sl_op_kind_name(op->kind));
        sl_reply_cstr(r, op->where);
        sl_reply_int(r, (int64_t)st->records_in);
        sl_reply_int(r, (int64_t)st->records_out);
        sl_reply_int(r, (int64_t)st->errors);
    }
}

static void reply_tasks(sl_reply_t *r, pipeline_t *pl)
{
    sl_reply_array(r, (size_t)pl->task_count);
    for (int i = 0; i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        int32_t part = sl_partition_id(t->partition);
        int64_t committed = -1, end = sl_partition_end_offset(t->partition);
        if (sl_offsets_get(pl->state, pl->group, t->topic, part, &committed))
            committed = -1;
        int64_t from = committed >= 0 ? committed : sl_partition_start_offset(t->partition);
        sl_reply_array(r, 5);
        sl_reply_cstr(r, t->topic);
        sl_reply_int(r, part);
        sl_reply_int(r, committed);
        sl_reply_int(r, end);
        sl_reply_int(r, end > from ? end - from : 0);
    }
}

static int describe(sl_pipelines_t *m, const char *name, sl_reply_t *r)
{
    pthread_mutex_lock(&m->lock);
    pipeline_t *pl = NULL;
    for (int i = 0; i < m->count && !pl; i++)
        if (!strcmp(m->list[i]->name, name))
            pl = m->list[i];
    if (pl) {
        sl_reply_array(r, 10);
        sl_reply_cstr(r, "name");
        sl_reply_cstr(r, pl->name);
        sl_reply_cstr(r, "state");
        char error[512];
        int failed = pipeline_failed(pl, error, sizeof error);
        sl_reply_cstr(r, failed ? "failed" : "running");
        sl_reply_cstr(r, "error");
        sl_reply_cstr(r, failed ? error : "");
        sl_reply_cstr(r, "ops");
        reply_ops(r, pl);
        sl_reply_cstr(r, "tasks");
        reply_tasks(r, pl);
    }
    pthread_mutex_unlock(&m->lock);
    return pl ? 0 : fail(r, "NOTFOUND no such pipeline");
}

int sl_pipelines_command(void *arg, size_t argc, const sl_resp_arg_t *argv, sl_reply_t *r)
{
    sl_pipelines_t *m = arg;
    char name[160];
    if (argc == 2 && word_is(&argv[1], "LIST"))
        return list(m, r);
    if (argc < 3 || copy_name(&argv[2], name, sizeof name))
        return fail(r, "usage: PIPELINE SUBMIT name source | LIST | DESCRIBE name | STOP name");
    if (argc == 4 && word_is(&argv[1], "SUBMIT")) {
        if (sl_pipelines_submit(m, name, argv[3].data, argv[3].len))
            return fail(r, sl_error_detail());
        sl_reply_simple(r, "OK");
        return 0;
    }
    if (argc == 3 && word_is(&argv[1], "DESCRIBE"))
        return describe(m, name, r);
    if (argc == 3 && word_is(&argv[1], "STOP")) {
        if (sl_pipelines_stop(m, name))
            return fail(r, sl_error_detail());
        sl_reply_simple(r, "OK");
        return 0;
    }
    return fail(r, "usage: PIPELINE SUBMIT name source | LIST | DESCRIBE name | STOP name");
}

/*
 * frontiers.c - the writers of repartition topics, and event time through
 * them.
 *
 * Who writes a repartition topic is known from the DAG: the tasks whose
 * entries are upstream of its KEY_BY. A group that reads one waits for the
 * writers outside it (task_t.feeders, pipeline.c's step_group); and:
 *
 * A task reading a repartition topic gets the records of every upstream
 * group (a lead and its members) that writes it, interleaved as they were
 * written. Each group writes in its own event-time order, but the groups
 * move at their own speeds: replaying a day of pre-loaded events, one may
 * be an hour ahead of another. A stream time taken as the largest event
 * time read would then count the slower group's records as late and close
 * windows they still belong to. So the reading task's stream time also
 * waits for its slowest writer (ops/window.h, the bound):
 *
 *   - At every commit that has news, a lead that writes repartition topics
 *     appends a marker to each partition of each of them, after its
 *     records: the largest event time its group wrote there so far, and
 *     whether it is idle (it has read all its input, and whatever feeds it
 *     through a repartition topic is idle too).
 *   - The reading task takes each marker in its place among the records.
 *     While a writer has said nothing yet (at start), its stream time stays
 *     where it was committed. While some writers are busy, it is the
 *     smallest time they said: their later records are not older, so none
 *     is late, and windows close even in a partition that gets no records.
 *     When every writer is idle, it is the largest time observed or said
 *     (live input: as if there were no repartition, but a partition
 *     without records of its own still moves with the others).
 *   In a group that also reads a topic directly, the directly read
 *   records hold it too: there it is at most the smallest of the above
 *   and never more than the group's records have shown.
 *
 * A writer's records after its marker have times at or above what it said
 * (as long as its input is in event-time order), so the bound never makes
 * them late. Markers are records with no key, no value and one header,
 * FRONTIER_HEADER, whose value is [be64 time][u8 idle][be32 partition]
 * [the writer's input topic]: the writer's lead is named by what it reads,
 * which stays the same across restarts and new versions of the script.
 */
#include "runtime/pipeline_internal.h"

#include <errno.h>
#include <string.h>

#define FRONTIER_HEADER "sluice.frontier"
#define HEADER_LEN      (sizeof FRONTIER_HEADER - 1)
#define VALUE_FIXED     13 /* time, idle, partition */

enum { UNSAID, BUSY, IDLE };

/* A lead writing the topic a task reads, as its markers said. */
struct producer {
    int task;
    int said; /* UNSAID, BUSY or IDLE */
    int64_t time;
};

static int add_int(int **list, int *count, int value)
{
    for (int i = 0; i < *count; i++)
        if ((*list)[i] == value)
            return 0;
    int *grown = sl_realloc(*list, (size_t)(*count + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    grown[(*count)++] = value;
    *list = grown;
    return 0;
}

/* For each KEY_BY op, the tasks upstream of it write its topic: their
 * leads feed it, and every task reading it has them as producers and, in a
 * group of two or more, the writers outside its group as feeders (its
 * group waits for them: pipeline.c's step_group). */
int frontiers_find(pipeline_t *pl)
{
    const sl_dag_t *dag = pl->dag;
    unsigned char *seen = sl_malloc((size_t)dag->op_count);
    int rc = seen ? 0 : -ENOMEM;
    for (int i = 0; i < pl->task_count; i++)
        pl->tasks[i].wrote_time = INT64_MIN;
    for (int k = 0; rc == 0 && k < dag->op_count; k++) {
        if (dag->ops[k].kind != SL_OP_KEY_BY)
            continue;
        memset(seen, 0, (size_t)dag->op_count);
        groups_upstream_entries(dag, dag->ops[k].inputs[0].op, seen);
        int *writers = NULL, writer_count = 0, *leads = NULL, lead_count = 0;
        for (int j = 0; rc == 0 && j < pl->task_count; j++)
            if (seen[pl->tasks[j].entry] == 2 && (rc = add_int(&writers, &writer_count, j)) == 0)
                rc = add_int(&leads, &lead_count, pl->tasks[j].lead);
        for (int i = 0; rc == 0 && i < lead_count; i++)
            rc = add_int(&pl->tasks[leads[i]].feeds, &pl->tasks[leads[i]].feed_count, k);
        for (int j = 0; rc == 0 && j < pl->task_count; j++) {
            task_t *t = &pl->tasks[j];
            if (t->entry != k)
                continue;
            if (!(t->producers = sl_calloc((size_t)lead_count, sizeof *t->producers))) {
                rc = -ENOMEM;
                break;
            }
            for (int i = 0; i < lead_count; i++)
                t->producers[i] = (struct producer){leads[i], UNSAID, INT64_MIN};
            t->producer_count = lead_count;
            for (int i = 0; rc == 0 && pl->tasks[t->lead].member_count > 1 && i < writer_count; i++)
                if (pl->tasks[writers[i]].lead != t->lead) {
                    rc = add_int(&t->feeders, &t->feeder_count, writers[i]);
                    pl->has_feeders = 1;
                }
        }
        sl_free(writers);
        sl_free(leads);
    }
    sl_free(seen);
    return rc;
}

void frontiers_free(task_t *t)
{
    sl_free(t->feeders);
    sl_free(t->feeds);
    sl_free(t->producers);
}

/* ---- writing -------------------------------------------------------------- */

/* Whether a group is idle: every member has read all it can, and every
 * writer of a repartition topic a member reads is idle. */
static int group_idle(const pipeline_t *pl, const task_t *lead)
{
    int n = lead->member_count ? lead->member_count : 1;
    for (int i = 0; i < n; i++) {
        const task_t *m = lead->member_count ? &pl->tasks[lead->members[i]] : lead;
        if (m->position < sl_partition_end_offset(m->partition))
            return 0;
        for (int j = 0; j < m->producer_count; j++)
            if (m->producers[j].said != IDLE)
                return 0;
    }
    return 1;
}

int frontiers_markers(worker_t *w, int (*out)(worker_t *w, sl_partition_t *p, const sl_record_t *r))
{
    pipeline_t *pl = w->pl;
    int rc = 0;
    for (int i = 0; rc == 0 && i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        if (!t->feed_count || t->lead != i || !pipeline_runs(w, t))
            continue;
        int said = group_idle(pl, t) ? IDLE : BUSY;
        if (said == t->said && t->wrote_time == t->said_time)
            continue; /* no news */
        size_t topic_len = strlen(t->topic);
        uint8_t value[VALUE_FIXED + SL_TOPIC_NAME_MAX];
        sl_put_be64(value, (uint64_t)t->wrote_time);
        value[8] = said == IDLE;
        sl_put_be32(value + 9, (uint32_t)sl_partition_id(t->partition));
        memcpy(value + VALUE_FIXED, t->topic, topic_len);
        sl_header_t h = {(const uint8_t *)FRONTIER_HEADER, (int32_t)HEADER_LEN, value,
                         (int32_t)(VALUE_FIXED + topic_len)};
        sl_record_t marker = {.timestamp = t->wrote_time > 0 ? t->wrote_time : 0,
                              .key_len = -1,
                              .value_len = -1,
                              .headers = &h,
                              .header_count = 1};
        for (int f = 0; rc == 0 && f < t->feed_count; f++) {
            char name[SL_TOPIC_NAME_MAX + 64];
            pipeline_repartition_topic(pl, t->feeds[f], name, sizeof name);
            sl_topic_t *topic = sl_log_topic(pl->log, name);
            if (!topic)
                return sl_error_set(SL_ENOTFOUND, "pipeline %s: topic %s is gone", pl->name, name);
            int32_t parts = sl_topic_config(topic)->partitions;
            for (int32_t p = 0; rc == 0 && p < parts; p++)
                rc = out(w, sl_topic_partition(topic, p), &marker);
        }
        t->said = said;
        t->said_time = t->wrote_time;
    }
    return rc;
}

/* ---- reading -------------------------------------------------------------- */

int frontiers_is_marker(const sl_record_t *r)
{
    return r->key_len < 0 && r->value_len < 0 && r->header_count == 1 &&
           r->headers[0].name_len == (int32_t)HEADER_LEN &&
           !memcmp(r->headers[0].name, FRONTIER_HEADER, HEADER_LEN);
}

/* The bound and floor of one reading task (see the top of the file;
 * ops/window.h): none for a task reading a topic directly. */
static void task_bound(const task_t *t, int64_t *bound, int64_t *floor)
{
    int64_t busy = INT64_MAX, said = INT64_MIN;
    *bound = INT64_MAX;
    *floor = INT64_MIN;
    for (int i = 0; i < t->producer_count; i++) {
        const struct producer *p = &t->producers[i];
        if (p->said == UNSAID) {
            *bound = INT64_MIN;
            return;
        }
        if (p->said == BUSY && p->time < busy)
            busy = p->time;
        if (p->time > said)
            said = p->time;
    }
    if (!t->producer_count)
        return;
    *bound = busy;
    *floor = busy < INT64_MAX ? busy : said;
}

void frontiers_bound(const pipeline_t *pl, task_t *lead)
{
    int n = lead->member_count ? lead->member_count : 1, behind = 0;
    int64_t bound = INT64_MAX, floor = INT64_MAX;
    for (int i = 0; i < n; i++) {
        const task_t *m = lead->member_count ? &pl->tasks[lead->members[i]] : lead;
        int64_t b, f;
        task_bound(m, &b, &f);
        behind |= m->producer_count > 0;
        if (b < bound)
            bound = b;
        if (f < floor)
            floor = f;
    }
    if (behind && lead->state) /* a group reading topics directly keeps its own time */
        sl_exec_task_bound(lead->state, bound, floor);
}

void frontiers_apply(pipeline_t *pl, task_t *t, const sl_record_t *marker)
{
    const sl_header_t *h = &marker->headers[0];
    if (h->value_len < VALUE_FIXED)
        return; /* not one this file wrote: ignored */
    int64_t time = (int64_t)sl_get_be64(h->value);
    int idle = h->value[8] != 0;
    int32_t partition = (int32_t)sl_get_be32(h->value + 9);
    size_t topic_len = (size_t)h->value_len - VALUE_FIXED;
    for (int i = 0; i < t->producer_count; i++) {
        struct producer *p = &t->producers[i];
        const task_t *writer = &pl->tasks[p->task];
        if (sl_partition_id(writer->partition) != partition || strlen(writer->topic) != topic_len ||
            memcmp(writer->topic, h->value + VALUE_FIXED, topic_len))
            continue;
        p->said = idle ? IDLE : BUSY;
        if (time > p->time)
            p->time = time;
        frontiers_bound(pl, &pl->tasks[t->lead]);
        return;
    }
}

/*
 * groups.c - co-partitioned stages: which tasks run together.
 *
 * The records of a stateful op (an aggregate, a join) meet in one state,
 * so every entry (SOURCE, TABLE, KEY_BY) whose records reach it must be
 * read, partition by partition, by one task: the entries are united
 * (union-find over op ids), their topics must have the same partition
 * count, and the tasks of united entries for one partition form a group
 * whose lead (the task of the first entry) holds the state and runs its
 * members (pipeline.c's step_group). Leads are dealt out to the workers in
 * turn; members run on their lead's.
 */
#include "runtime/pipeline_internal.h"

#include <errno.h>
#include <string.h>

static int is_entry(const sl_op_t *op)
{
    return sl_op_kind_is_entry(op->kind);
}

static int find_root(int *root, int op)
{
    while (root[op] != op) {
        root[op] = root[root[op]]; /* halve the path */
        op = root[op];
    }
    return op;
}

/* Marks in seen[] the entries whose records reach op (seen[] also
 * marks the ops visited: 1 visited, 2 an entry). */
void groups_upstream_entries(const sl_dag_t *dag, int op, unsigned char *seen)
{
    if (seen[op])
        return;
    const sl_op_t *o = &dag->ops[op];
    seen[op] = is_entry(o) ? 2 : 1;
    for (int i = 0; !is_entry(o) && i < o->input_count; i++)
        groups_upstream_entries(dag, o->inputs[i].op, seen);
}

static int32_t entry_partitions(const pipeline_t *pl, int op, const char **topic)
{
    int json;
    sl_topic_t *t = pipeline_entry_topic(pl, &pl->dag->ops[op], &json);
    *topic = t ? sl_topic_name(t) : "?";
    return t ? sl_topic_config(t)->partitions : 0;
}

/* Unites the entries of every stateful op (an aggregate, a join): their
 * records meet in one state, so partition p of each must run in one task;
 * their topics must have the same partition count. root[] per op id. */
static int unite_entries(pipeline_t *pl, int *root)
{
    const sl_dag_t *dag = pl->dag;
    unsigned char *seen = sl_malloc((size_t)dag->op_count);
    int rc = seen ? 0 : -ENOMEM;
    for (int i = 0; i < dag->op_count; i++)
        root[i] = i;
    for (int s = 0; rc == 0 && s < dag->op_count; s++) {
        const sl_op_t *op = &dag->ops[s];
        if (op->kind != SL_OP_AGGREGATE && op->kind != SL_OP_JOIN)
            continue;
        memset(seen, 0, (size_t)dag->op_count);
        groups_upstream_entries(dag, s, seen);
        int first = -1;
        const char *first_topic = NULL, *topic;
        int32_t first_n = 0;
        for (int e = 0; rc == 0 && e < dag->op_count; e++) {
            if (seen[e] != 2)
                continue;
            int32_t n = entry_partitions(pl, e, &topic);
            if (first < 0) {
                first = e, first_topic = topic, first_n = n;
                continue;
            }
            if (n != first_n)
                rc = sl_error_set(SL_EINVALID,
                                  "%s: the inputs of this %s are not co-partitioned: topic '%s' "
                                  "has %d partitions and topic '%s' has %d, so one key's records "
                                  "would be in different tasks; re-key a side with :key_by(...) "
                                  "(a repartition topic has as many partitions as the widest "
                                  "source)",
                                  op->where, sl_op_kind_name(op->kind), first_topic, (int)first_n,
                                  topic, (int)n);
            else
                root[find_root(root, e)] = find_root(root, first);
        }
    }
    sl_free(seen);
    return rc;
}

/* Each task's lead: the task of the same partition whose entry comes
 * first among those united with its own. Leads of two or more list them. */
static int group_tasks(pipeline_t *pl, int *root)
{
    for (int i = 0; i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        int32_t part = sl_partition_id(t->partition);
        t->lead = i;
        for (int j = 0; j < i; j++)
            if (find_root(root, pl->tasks[j].entry) == find_root(root, t->entry) &&
                sl_partition_id(pl->tasks[j].partition) == part) {
                t->lead = j;
                break;
            }
        if (t->lead == i)
            continue;
        task_t *lead = &pl->tasks[t->lead];
        int n = lead->member_count ? lead->member_count : 1; /* the lead itself comes first */
        int *grown = sl_realloc(lead->members, (size_t)(n + 1) * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        grown[0] = t->lead;
        grown[n] = i;
        lead->members = grown;
        lead->member_count = n + 1;
    }
    return 0;
}

/* Gives each lead a worker in turn; members run on their lead's. Tells
 * every worker's exec which entries read JSON. */
void groups_assign_workers(pipeline_t *pl)
{
    int next = 0, json;
    for (int i = 0; i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        t->worker = t->lead == i ? next++ % pl->worker_count : pl->tasks[t->lead].worker;
    }
    for (int i = 0; i < pl->dag->op_count; i++)
        if (is_entry(&pl->dag->ops[i]) && pipeline_entry_topic(pl, &pl->dag->ops[i], &json))
            for (int w = 0; w < pl->worker_count; w++)
                sl_exec_set_entry_json(pl->workers[w].exec, i, json);
}

/* The task of lead's group (lead itself included) that reads entry. */
task_t *groups_task(pipeline_t *pl, task_t *lead, int entry)
{
    if (lead->entry == entry)
        return lead;
    for (int i = 0; i < lead->member_count; i++)
        if (pl->tasks[lead->members[i]].entry == entry)
            return &pl->tasks[lead->members[i]];
    return NULL;
}

int groups_stores(const pipeline_t *pl, const task_t *lead, sl_store_t **out)
{
    const sl_dag_t *dag = pl->dag;
    unsigned char *seen = sl_malloc((size_t)dag->op_count);
    if (!seen)
        return -ENOMEM;
    for (int s = 0; s < dag->op_count; s++) {
        out[s] = NULL;
        if (!pl->stores[s])
            continue;
        memset(seen, 0, (size_t)dag->op_count);
        groups_upstream_entries(dag, s, seen);
        int ours = seen[lead->entry] == 2;
        for (int i = 0; !ours && i < lead->member_count; i++)
            ours = seen[pl->tasks[lead->members[i]].entry] == 2;
        out[s] = ours ? pl->stores[s] : NULL;
    }
    sl_free(seen);
    return 0;
}

int groups_build(pipeline_t *pl)
{
    int *root = sl_malloc((size_t)pl->dag->op_count * sizeof *root);
    int rc = root ? unite_entries(pl, root) : -ENOMEM;
    if (rc == 0)
        rc = group_tasks(pl, root);
    sl_free(root);
    return rc;
}

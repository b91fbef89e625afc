/*
 * pipeline_internal.h - the structures of running pipelines, shared by
 * pipeline.c (one pipeline) and pipelines.c (the manager and commands).
 */
#ifndef SL_PIPELINE_INTERNAL_H
#define SL_PIPELINE_INTERNAL_H

#include "runtime/pipeline.h"

#include <pthread.h>
#include <stdatomic.h>

/* One partition a stage reads. */
typedef struct task {
    int entry;                 /* the stage's entry op */
    char *topic;               /* owned */
    sl_partition_t *partition; /* referenced */
    int64_t position;          /* next offset to read (committed or beyond) */
    int64_t uncommitted;       /* processed up to here, not yet committed; -1: none */
    sl_reader_t *reader;
    int json;
    sl_exec_task_t *state; /* its stateful ops' state; NULL without any (or a member) */
    int worker;            /* the worker that runs it (and whose exec made state) */
    /* Co-partitioned entries (the inputs of a join or an aggregate) share
     * one task per partition: the lead (the first entry's task) holds the
     * state and runs its members (members[], itself first, in entry
     * order) together, taking records in event-time order across them. */
    int lead;           /* index of its lead task (itself if it leads) */
    int *members;       /* lead of a group: the group's task indices */
    int member_count;   /* 0 unless it leads a group of 2 or more */
    sl_record_set_t in; /* a member's records read and not yet run */
    size_t in_at;       /* the next of them to run */
    int64_t ran_to;     /* the position after the records run, until their outputs are out; -1 */
    /* A member reading a repartition topic: the tasks of other groups
     * whose stages write that topic. While it has no records and one of
     * them has some to read or to commit, its group waits (up to
     * FEEDER_WAIT_MS), so the group's other inputs do not run ahead in
     * event time of records still on their way. */
    int *feeders;
    int feeder_count;
    int64_t waiting_since; /* lead: when its group began to wait, 0 if not */
    /* Event-time progress through repartition topics (frontiers.c). A
     * lead writing them: the KEY_BY ops its group feeds, the largest event
     * time its group wrote to them, and what its last marker said. A task
     * reading one: the leads writing it, as their markers said. */
    int *feeds;
    int feed_count;
    int64_t wrote_time; /* INT64_MIN: nothing yet */
    int64_t said_time;
    int said; /* 0 nothing yet, 1 busy, 2 idle */
    struct producer *producers;
    int producer_count;
    /* position and "uncommitted >= 0" as the owning worker last showed
     * them, for other workers' feeder checks */
    atomic_llong shown_position;
    atomic_int shown_uncommitted;
} task_t;

/* Records of one batch bound for one partition. */
typedef struct out_group {
    sl_partition_t *partition; /* referenced */
    sl_record_t *recs;
    size_t count, cap;
} out_group_t;

/* The referenced partitions of one output topic, for one batch. */
typedef struct route {
    const sl_op_t *exit; /* NULL: the dead-letter topic */
    sl_partition_t **partitions;
    int32_t count;
    size_t max_record; /* the topic's max.batch.bytes: no record may be larger */
} route_t;

/* Exactly-once: copies of the records bound for one partition since the
 * last commit, appended by the commit (DESIGN.md section 7). */
typedef struct held {
    sl_partition_t *partition; /* referenced */
    sl_record_set_t records;
} held_t;

/* A dead letter's headers and their text, alive until the batch is out. */
typedef struct dead_letter {
    struct dead_letter *next;
    sl_header_t headers[4];
    char error[400], topic[SL_TOPIC_NAME_MAX + 1], partition[16], offset[24];
} dead_letter_t;

struct pipeline;

/* A position from the pipeline's offsets topic (offsets_log.c). */
typedef struct logged {
    char *key;
    int64_t value;
} logged_t;

/* A worker: one thread with its own VM, running its share of a
 * pipeline's tasks (task i belongs to worker i % workers). */
typedef struct worker {
    struct pipeline *pl;
    int index;
    pthread_t thread;
    int running; /* the thread was started */
    sl_vm_t *vm;
    sl_dag_t *dag; /* compiled in vm; equal to every other worker's */
    sl_exec_t *exec;
    sl_record_set_t batch; /* input records copied out of a reader */
    out_group_t *outs;
    int out_count, out_cap;
    route_t *routes; /* the output topics of the batch */
    int route_count, route_cap;
    dead_letter_t *dead;
    task_t *current;
    uint32_t round_robin;
    out_group_t *pending; /* partitions appended since the last commit: the
                           * highest end (in count) each must reach */
    int pending_count, pending_cap;
    int64_t committed_ms; /* when this worker last committed */
    held_t *held;         /* exactly-once: outputs waiting for the commit */
    int held_count, held_cap;
    int held_made; /* held[0..held_made) have record sets, kept (emptied) between commits */
    size_t held_bytes;
    sl_commit_t *committer;
    struct route_sink *router; /* messages for :route(), until the commit (route.c) */
    int all_tasks;             /* draining a replaced pipeline: runs every task */
} worker_t;

typedef struct pipeline {
    char *name;
    char *source;
    size_t len;
    sl_log_t *log;
    sl_state_t *state;
    struct sl_pipelines *manager;
    worker_t *workers;
    int worker_count;
    sl_dag_t *dag;   /* workers[0].dag: the shape, for setup and DESCRIBE */
    sl_exec_t *exec; /* workers[0].exec */
    task_t *tasks;
    int task_count;
    char group[160];      /* the consumer group holding its offsets */
    int exactly_once;     /* outputs and offsets commit together (section 7) */
    sl_store_t **stores;  /* per op id: an AGGREGATE's store, else NULL */
    char time_group[192]; /* the group holding the aggregates' stream times */
    logged_t *logged;     /* the offsets topic's newest positions, read at start */
    int has_feeders;      /* some group waits on feeders: wake workers after commits */
    int logged_count, logged_cap;
    atomic_int stop;
    atomic_int draining; /* replaced: finish the repartitioned records, then end */
    atomic_int failed_flag;
    pthread_mutex_t lock; /* failed, error */
    int failed;
    char error[512];
} pipeline_t;

struct sl_pipelines {
    char *dir;   /* DATA/pipelines */
    int workers; /* threads per pipeline, at most its task count */
    sl_log_t *log;
    sl_state_t *state;
    pthread_mutex_t lock; /* the list */
    pipeline_t **list;
    int count, cap;
    pthread_mutex_t wake_lock;
    pthread_cond_t wake;
    uint64_t wake_seq;
    sl_queues_t *queues;          /* the node's work queues, for :route(); NULL: none */
    struct sl_features *features; /* the views of the running pipelines (features.c) */
    atomic_llong restore_records; /* changelog records restored since start */
    atomic_int restoring;         /* restores running now */
};

/* Shows t's position and whether it has uncommitted records to other
 * workers (task_t.shown_*). */
static inline void pipeline_task_show(task_t *t)
{
    atomic_store(&t->shown_position, t->position);
    atomic_store(&t->shown_uncommitted, t->uncommitted >= 0);
}

/* 1 if worker w runs task t. */
static inline int pipeline_runs(const worker_t *w, const task_t *t)
{
    return w->all_tasks || t->worker == w->index;
}

/* pipeline.c */
int pipeline_prepare(sl_pipelines_t *m, const char *name, const char *source, size_t len,
                     pipeline_t **out);
int pipeline_start(pipeline_t *pl);
void pipeline_free(pipeline_t *pl); /* stops the thread first */
/* Ends a pipeline that is being replaced: its sources stop, its keyed
 * stages run until their repartition topics are drained, then it is freed
 * (so no record that entered it is left behind). */
void pipeline_drain_and_free(pipeline_t *pl);
int pipeline_failed(pipeline_t *pl, char *error, size_t size);

/* The name of KEY_BY op's repartition topic, "<pipeline>.repartition.<op>". */
void pipeline_repartition_topic(const pipeline_t *pl, int op, char *out, size_t size);

/* The topic entry op (SOURCE, TABLE, KEY_BY) reads (NULL if it does not
 * exist), and whether its records are JSON. */
sl_topic_t *pipeline_entry_topic(const pipeline_t *pl, const sl_op_t *op, int *json);

/* groups.c: co-partitioned stages. build unites the entries of every
 * stateful op, checks their partition counts and makes the groups (task
 * lead, members); assign_workers deals the leads out to the
 * workers and tells each exec which entries read JSON; task finds the
 * task of lead's group that reads entry; stores picks the group's stores. */
int groups_build(pipeline_t *pl);
void groups_assign_workers(pipeline_t *pl);
task_t *groups_task(pipeline_t *pl, task_t *lead, int entry);

/* out[op] = pl->stores[op] for the stateful ops whose records come from
 * lead's group's entries, NULL for every other op: the state the group's
 * task keeps. out has room for every op. Returns 0 or -ENOMEM. */
int groups_stores(const pipeline_t *pl, const task_t *lead, sl_store_t **out);

/* Marks in seen[] the entries whose records reach op: 2 for an entry, 1
 * for another op visited (seen[] has a zero byte per op). */
void groups_upstream_entries(const sl_dag_t *dag, int op, unsigned char *seen);

/* frontiers.c: the writers of each repartition topic, and how far in event
 * time they are, for the stream time of the tasks reading it
 * (ops/window.h). find sets up feeders, feeds and producers (after
 * groups_build); wrote notes a record
 * written by a KEY_BY exit; markers gives each lead w runs that has news
 * its marker, one per partition of every repartition topic it feeds, to
 * out (at a commit, after the lead's records); is_marker tells a marker
 * from a record; apply takes one into the reading task t; bound gives
 * the state of lead's group, when it reads a repartition topic, the bound
 * and floor of its stream time (sl_exec_task_bound). */
int frontiers_find(pipeline_t *pl);
void frontiers_free(task_t *t);
static inline void frontiers_wrote(pipeline_t *pl, const task_t *t, int64_t time)
{
    task_t *lead = &pl->tasks[t->lead];
    if (time > lead->wrote_time)
        lead->wrote_time = time;
}
int frontiers_markers(worker_t *w,
                      int (*out)(worker_t *w, sl_partition_t *p, const sl_record_t *r));
int frontiers_is_marker(const sl_record_t *r);
void frontiers_apply(pipeline_t *pl, task_t *t, const sl_record_t *marker);
void frontiers_bound(const pipeline_t *pl, task_t *lead);

/* The source topic of op, a table, when it serves as the table store's
 * changelog (the topic is compacted: it keeps every key's newest record);
 * NULL when the store has a changelog topic of its own (pipeline.c). */
sl_topic_t *pipeline_changelog_source(const pipeline_t *pl, int op);

/* offsets_log.c: the positions an exactly-once pipeline also logs in its
 * topic "<name>.offsets". open creates it or reads its newest values;
 * committed gives the committed input offset ("in", topic) or stream time
 * ("time", store) of a partition: from LMDB, or when the state has lost it
 * from the offsets topic (SL_ENOTFOUND if neither has it); append adds the
 * positions of the tasks worker w runs to commit c. */
int offsets_log_open(pipeline_t *pl);
int offsets_log_committed(const pipeline_t *pl, const char *kind, const char *name,
                          int32_t partition, int64_t *value);
int offsets_log_append(pipeline_t *pl, sl_commit_t *c, const worker_t *w);
void offsets_log_free(pipeline_t *pl);

/* route.c: the :route() sink. prepare checks a new pipeline's ROUTE ops
 * (exactly-once only, existing exchanges) after applying its declarations;
 * hold copies the message a ROUTE exit emits (its emit callback); pending
 * says whether messages wait for the commit; commit routes and enqueues
 * them into the commit's write transaction txn (holding the queues locked
 * until finish), and finish follows every commit, committed or not
 * (undone: the messages are kept); free drops a worker's. */
typedef struct route_sink route_sink_t;
int route_prepare(pipeline_t *pl);
int route_hold(worker_t *w, const sl_op_t *op, const sl_record_t *rec);
int route_pending(const worker_t *w);
int route_commit(worker_t *w, MDB_txn *txn);
void route_finish(worker_t *w, int committed);
void route_free(worker_t *w);

#endif

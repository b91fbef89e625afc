/*
 * exec.c - pushing records through a stage of a pipeline (see ops.h).
 *
 * sl_exec_new turns the DAG's input lists around into successor lists: for
 * each op and output port (a BRANCH has one port per branch, every other op
 * one), the ops that read from it. A record then walks the stage depth
 * first from its entry op: each op calls its user function on the record's
 * VM slot and hands the resulting slot(s) to its successors, until an exit
 * (TO, KEY_BY, ROUTE, FEATURES) emits the bytes. Depth first keeps one record's
 * work together, so a failure stops only the path it happened on.
 *
 * A FEATURES exit turns each aggregate result it is given into the
 * vector of the result's key (features.c) and emits that.
 *
 * A ROUTE exit first runs its functions (routing key, priority, headers)
 * and completes the message from the record where it has none: the
 * record's key as the routing key, the record's headers. The message stays
 * in the exec while the emit callback runs (sl_exec_route).
 */
#include "ops/ops_internal.h"

#include <errno.h>
#include <string.h>

typedef struct successors {
    int *ops;
    int count;
} successors_t;

struct sl_exec {
    sl_dag_t *dag;
    successors_t **next; /* next[op][port] */
    sl_op_stats_t *stats;
    const sl_exec_output_t *out;      /* during a batch */
    const sl_record_t *input;         /* the record that entered the stage */
    int stop;                         /* a callback's non-zero value */
    sl_exec_task_t *task;             /* the state of AGGREGATE ops */
    sl_vm_route_t route;              /* the message a ROUTE exit is emitting */
    sl_features_emitters_t *features; /* FEATURES exits (features.c) */
    signed char *json;                /* per entry op: its values are JSON (-1: unset) */
    int *outs;                        /* a JOIN's results for one record */
    size_t out_count, out_cap;
};

const sl_dag_t *sl_exec_dag(const sl_exec_t *x)
{
    return x->dag;
}

void sl_exec_set_task(sl_exec_t *x, sl_exec_task_t *t)
{
    x->task = t;
}

static int ports(const sl_op_t *op)
{
    return op->kind == SL_OP_BRANCH ? op->branch_count : 1;
}

static int add_successor(successors_t *s, int op)
{
    int *grown = sl_realloc(s->ops, (size_t)(s->count + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    s->ops = grown;
    s->ops[s->count++] = op;
    return 0;
}

static int link_ops(sl_exec_t *x)
{
    sl_dag_t *dag = x->dag;
    for (int i = 0; i < dag->op_count; i++) {
        int n = ports(&dag->ops[i]);
        if (!(x->next[i] = sl_calloc((size_t)(n > 0 ? n : 1), sizeof(successors_t))))
            return -ENOMEM;
    }
    for (int i = 0; i < dag->op_count; i++)
        for (int k = 0; k < dag->ops[i].input_count; k++) {
            const sl_op_input_t *in = &dag->ops[i].inputs[k];
            if (add_successor(&x->next[in->op][in->port], i))
                return -ENOMEM;
        }
    return 0;
}

int sl_exec_new(sl_dag_t *dag, sl_exec_t **out)
{
    sl_exec_t *x = sl_calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->dag = dag;
    x->next = sl_calloc((size_t)(dag->op_count ? dag->op_count : 1), sizeof *x->next);
    x->stats = sl_calloc((size_t)(dag->op_count ? dag->op_count : 1), sizeof *x->stats);
    x->json = sl_malloc((size_t)(dag->op_count ? dag->op_count : 1));
    if (x->json)
        memset(x->json, -1, (size_t)(dag->op_count ? dag->op_count : 1));
    int rc = x->next && x->stats && x->json ? link_ops(x) : -ENOMEM;
    if (rc) {
        sl_exec_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

void sl_exec_free(sl_exec_t *x)
{
    if (!x)
        return;
    for (int i = 0; x->next && i < x->dag->op_count; i++) {
        for (int p = 0; x->next[i] && p < ports(&x->dag->ops[i]); p++)
            sl_free(x->next[i][p].ops);
        sl_free(x->next[i]);
    }
    sl_free(x->next);
    sl_free(x->stats);
    sl_free(x->json);
    sl_free(x->outs);
    sl_features_emitters_free(x->features);
    sl_free(x);
}

int sl_exec_entries(const sl_exec_t *x, int *ids, int max)
{
    int n = 0;
    for (int i = 0; i < x->dag->op_count; i++) {
        if (!sl_op_kind_is_entry(x->dag->ops[i].kind))
            continue;
        if (n < max)
            ids[n] = i;
        n++;
    }
    return n;
}

void sl_exec_set_entry_json(sl_exec_t *x, int op, int json)
{
    if (op >= 0 && op < x->dag->op_count)
        x->json[op] = (signed char)!!json;
}

int sl_exec_op_json(const sl_exec_t *x, int op)
{
    for (int hops = 0; hops <= x->dag->op_count; hops++) {
        const sl_op_t *o = &x->dag->ops[op];
        if (x->json[op] >= 0)
            return x->json[op];
        if (o->kind == SL_OP_AGGREGATE || o->kind == SL_OP_JOIN || o->input_count == 0)
            return 1;
        op = o->inputs[0].op;
    }
    return 1;
}

const sl_op_stats_t *sl_exec_stats(const sl_exec_t *x, int op)
{
    return op >= 0 && op < x->dag->op_count ? &x->stats[op] : NULL;
}

void sl_exec_reset(sl_exec_t *x)
{
    sl_vm_batch_reset(x->dag->vm);
    sl_features_emitters_reset(x->features);
}

static void run(sl_exec_t *x, int op_id, int slot, int from, int port);

/* A call failed: count it, and let the caller decide (-ENOMEM stops). */
static void fail(sl_exec_t *x, const sl_op_t *op, int rc)
{
    x->stats[op->id].errors++;
    if (rc == -ENOMEM) {
        x->stop = rc;
        return;
    }
    int decision = x->out->failed(x->out->arg, op, x->input, sl_error_detail());
    if (decision)
        x->stop = decision;
}

/* Hands slot to every op reading `port` of op_id. */
static void deliver(sl_exec_t *x, int op_id, int port, int slot)
{
    const successors_t *s = &x->next[op_id][port];
    for (int i = 0; i < s->count && !x->stop; i++)
        run(x, s->ops[i], slot, op_id, port);
}

/* The op passes a record on: counted as its output. */
static void pass_on(sl_exec_t *x, int op_id, int port, int slot)
{
    x->stats[op_id].records_out++;
    deliver(x, op_id, port, slot);
}

/* An exit: the slot's bytes go to the caller; a KEY_BY's with only the
 * fields read after its repartition, where it knows them. */
static void emit(sl_exec_t *x, const sl_op_t *op, int slot)
{
    sl_record_t rec;
    int rc = sl_vm_record_kept(x->dag->vm, slot, op->keep, &rec);
    if (rc) {
        fail(x, op, rc);
        return;
    }
    rc = x->out->emit(x->out->arg, op, &rec);
    if (rc == SL_ETOOBIG) /* this record cannot be written: its error */
        fail(x, op, rc);
    else if (rc)
        x->stop = rc;
    else
        x->stats[op->id].records_out++;
}

const sl_vm_route_t *sl_exec_route(const sl_exec_t *x)
{
    return &x->route;
}

/* Completes the message from the record of a ROUTE exit. */
static int complete_route(sl_exec_t *x, const sl_op_t *op, const sl_record_t *rec)
{
    sl_vm_route_t *m = &x->route;
    if (rec->value_len < 0)
        return sl_error_set(SL_EINVALID,
                            "route (%s): the record has no value (a tombstone), and a message "
                            "needs a payload",
                            op->where);
    if (!m->has_key && rec->key_len > SL_ROUTING_KEY_MAX)
        return sl_error_set(SL_EINVALID,
                            "route (%s): the record's key of %d bytes is over the %d bytes of a "
                            "routing key (give the option key)",
                            op->where, (int)rec->key_len, SL_ROUTING_KEY_MAX);
    if (!m->has_key) {
        m->key = rec->key_len > 0 ? (const char *)rec->key : "";
        m->key_len = rec->key_len > 0 ? (size_t)rec->key_len : 0;
    }
    if (!m->has_headers) {
        m->headers = rec->headers;
        m->header_count = rec->header_count;
    }
    return 0;
}

/* A ROUTE exit: the message to the caller. */
static void emit_route(sl_exec_t *x, const sl_op_t *op, int slot)
{
    sl_record_t rec;
    int rc = sl_vm_call_route(x->dag->vm, op, slot, &x->route);
    if (rc == 0)
        rc = sl_vm_record_get(x->dag->vm, slot, &rec);
    if (rc == 0)
        rc = complete_route(x, op, &rec);
    if (rc) {
        fail(x, op, rc);
        return;
    }
    x->stats[op->id].records_out++;
    rc = x->out->emit(x->out->arg, op, &rec);
    if (rc)
        x->stop = rc;
}

/* A JOIN given slot by (from, port): its results, passed on. */
static int join(sl_exec_t *x, const sl_op_t *op, int slot, int from, int port)
{
    sl_vm_t *vm = x->dag->vm;
    int side = !(op->inputs[0].op == from && op->inputs[0].port == port), out = -1, rc;
    if (op->join_kind == SL_JOIN_STREAM_TABLE && side == 1)
        return 0; /* the table's own change: it is already in its store */
    /* the state each kind uses: its own, and for tables the tables' */
    sl_join_t *j =
        op->join_kind != SL_JOIN_STREAM_TABLE ? sl_exec_task_join(x->task, op->id) : NULL;
    sl_join_t *left =
        op->join_kind == SL_JOIN_TABLE_TABLE ? sl_exec_task_join(x->task, op->inputs[0].op) : NULL;
    sl_join_t *right = op->join_kind != SL_JOIN_STREAM_STREAM
                           ? sl_exec_task_join(x->task, op->inputs[1].op)
                           : NULL;
    int ready = op->join_kind == SL_JOIN_STREAM_STREAM  ? j != NULL
                : op->join_kind == SL_JOIN_STREAM_TABLE ? right != NULL /* the table */
                                                        : j && left && right;
    if (!ready)
        return sl_error_set(SL_EINVALID, "join (%s): the runtime gave no state", op->where);
    if (op->join_kind == SL_JOIN_STREAM_STREAM) {
        size_t first = x->out_count; /* a join downstream appends after these */
        rc = sl_join_stream_stream(j, op, vm, slot, side, &x->outs, &x->out_count, &x->out_cap);
        size_t end = x->out_count;
        for (size_t i = first; rc == 0 && i < end && !x->stop; i++)
            pass_on(x, op->id, 0, x->outs[i]);
        x->out_count = first;
        return rc;
    }
    if (op->join_kind == SL_JOIN_STREAM_TABLE)
        rc = sl_join_stream_table(right, op, vm, slot, &out);
    else
        rc = sl_join_table_table(j, op, left, right, vm, slot, &out);
    if (rc == 0 && out >= 0)
        pass_on(x, op->id, 0, out);
    return rc;
}

/* One op on one record, given by (from, port) (from -1: an entry's own
 * record): the operator table of the pipeline, deliberately in one place. */
static void run(sl_exec_t *x, int op_id, int slot, int from, int port)
{
    const sl_op_t *op = &x->dag->ops[op_id];
    sl_vm_t *vm = x->dag->vm;
    sl_join_t *table;
    int rc = 0, keep, out, first, count, branch, late;
    sl_record_t rec;
    x->stats[op_id].records_in++;
    switch (op->kind) {
    case SL_OP_FILTER:
        if (!(rc = sl_vm_call_filter(vm, op, slot, &keep)) && keep)
            pass_on(x, op_id, 0, slot);
        break;
    case SL_OP_MAP:
        if (!(rc = sl_vm_call_map(vm, op, slot, &out)))
            pass_on(x, op_id, 0, out);
        break;
    case SL_OP_FLAT_MAP:
        if (!(rc = sl_vm_call_flat_map(vm, op, slot, &first, &count)))
            for (int i = 0; i < count && !x->stop; i++)
                pass_on(x, op_id, 0, first + i);
        break;
    case SL_OP_PEEK:
        if (!(rc = sl_vm_call_peek(vm, op, slot)))
            pass_on(x, op_id, 0, slot);
        break;
    case SL_OP_BRANCH:
        if (!(rc = sl_vm_call_branch(vm, op, slot, &branch)) && branch >= 0)
            pass_on(x, op_id, branch, slot);
        break;
    case SL_OP_MERGE:
        pass_on(x, op_id, 0, slot);
        break;
    case SL_OP_KEY_BY:
        if (!(rc = sl_vm_call_key(vm, op, slot, &out)))
            emit(x, op, out);
        break;
    case SL_OP_TO:
        emit(x, op, slot);
        break;
    case SL_OP_ROUTE:
        emit_route(x, op, slot);
        break;
    case SL_OP_FEATURES: /* an aggregate's result: its key's vector */
        rc = sl_features_emit(&x->features, x->dag, x->task, op, vm, slot, &out);
        if (rc == 0 && out >= 0)
            emit(x, op, out);
        break;
    case SL_OP_AGGREGATE:
        rc = sl_aggregator_record(x->task, op, vm, slot, &late);
        if (rc == 0 && late && op->late_topic && (rc = sl_vm_record_get(vm, slot, &rec)) == 0 &&
            (rc = x->out->emit(x->out->arg, op, &rec)))
            x->stop = rc, rc = 0;
        break;
    case SL_OP_TABLE: /* an entry: its record into the table, then on */
        if (!(table = sl_exec_task_join(x->task, op_id)))
            rc = sl_error_set(SL_EINVALID, "table (%s): the runtime gave no state", op->where);
        else if (!(rc = sl_join_table_record(table, vm, slot)))
            pass_on(x, op_id, 0, slot);
        break;
    case SL_OP_JOIN:
        rc = join(x, op, slot, from, port);
        break;
    case SL_OP_SOURCE: /* never a successor */
        break;
    }
    if (rc)
        fail(x, op, rc);
}

int sl_exec_op_read(const sl_exec_t *x, int op)
{
    for (int port = 0; port < ports(&x->dag->ops[op]); port++)
        if (x->next[op][port].count > 0)
            return 1;
    return 0;
}

/* 1 if every op reading from op is a TO (the usual :aggregate{...}:to()):
 * then no Lua reads op's records, which need not be tokenized. */
static int only_sinks_follow(const sl_exec_t *x, int op)
{
    const successors_t *s = &x->next[op][0];
    for (int i = 0; i < s->count; i++)
        if (x->dag->ops[s->ops[i]].kind != SL_OP_TO)
            return 0;
    return 1;
}

int sl_exec_deliver_slot(sl_exec_t *x, int op, int slot, const sl_exec_output_t *out)
{
    const sl_exec_output_t *saved = x->out;
    const sl_record_t *input = x->input;
    sl_record_t rec;
    int rc = sl_vm_record_get(x->dag->vm, slot, &rec);
    if (rc)
        return rc;
    x->out = out;
    x->input = &rec;
    x->stop = 0;
    pass_on(x, op, 0, slot);
    x->out = saved;
    x->input = input;
    return x->stop;
}

int sl_exec_deliver(sl_exec_t *x, int op, const sl_record_t *rec, const sl_exec_output_t *out)
{
    sl_vm_origin_t origin = {x->dag->ops[op].store, -1, !only_sinks_follow(x, op), 0};
    int slot, rc = sl_vm_record_load(x->dag->vm, rec, &origin, &slot);
    return rc ? rc : sl_exec_deliver_slot(x, op, slot, out);
}

/* A record read back from a KEY_BY's repartition topic that another
 * version of the pipeline wrote with fewer fields than this one reads:
 * its error (SL_EINVALID), else 0. */
static int check_kept(const sl_op_t *entry, const sl_record_t *rec)
{
    const char *kept;
    size_t len;
    if (entry->kind != SL_OP_KEY_BY || rec->value_len < 0 ||
        sl_vm_value_keeps(rec->value, rec->value_len, entry->keep, &kept, &len))
        return 0;
    return sl_error_set(SL_EINVALID,
                        "key_by (%s): a record of its repartition topic keeps only the fields "
                        "'%.*s' of its value (written by another version of the pipeline), and "
                        "this version reads %s%s%s",
                        entry->where, (int)len, kept, entry->keep ? "'" : "",
                        entry->keep ? entry->keep : "all of it", entry->keep ? "'" : "");
}

/* One record into the stage at entry. */
static void enter(sl_exec_t *x, const sl_op_t *entry, const sl_vm_origin_t *origin)
{
    sl_vm_t *vm = x->dag->vm;
    int slot, rc = check_kept(entry, x->input);
    int64_t ts;
    if (rc) {
        fail(x, entry, rc);
        return;
    }
    rc = sl_vm_record_load(vm, x->input, origin, &slot);
    if (entry->kind == SL_OP_SOURCE)
        x->stats[entry->id].records_in++;
    if (rc == 0 && entry->kind == SL_OP_SOURCE && entry->fn != SL_NO_FUNCTION)
        rc = sl_vm_call_timestamp(vm, entry, slot, &ts);
    if (rc)
        fail(x, entry, rc);
    else if (entry->kind == SL_OP_TABLE)
        run(x, entry->id, slot, -1, 0);
    else if (entry->kind == SL_OP_SOURCE)
        pass_on(x, entry->id, 0, slot);
    else
        deliver(x, entry->id, 0, slot); /* a KEY_BY counted its output when it emitted */
}

/* Records a stage reads go, as they are, to an aggregate first (a SOURCE
 * without a timestamp function, or a KEY_BY reading back its repartition
 * topic, feeding an AGGREGATE without session windows):
 * their keys and windows are known ahead, so the batch prefetches the
 * aggregate's cache PREFETCH_AHEAD records before each record's lookup
 * (storage.h, sl_cache_window_prefetch). The aggregate (its first), or NULL. */
#define PREFETCH_AHEAD 3 /* stages: the hash and slot, the entry, the bytes */

static const sl_op_t *prefetching(const sl_exec_t *x, int entry)
{
    const sl_op_t *e = &x->dag->ops[entry];
    const successors_t *s = &x->next[entry][0];
    if (!x->task || (e->kind == SL_OP_SOURCE && e->fn != SL_NO_FUNCTION) ||
        (e->kind != SL_OP_SOURCE && e->kind != SL_OP_KEY_BY))
        return NULL;
    for (int i = 0; i < s->count; i++)
        if (x->dag->ops[s->ops[i]].kind == SL_OP_AGGREGATE)
            return &x->dag->ops[s->ops[i]];
    return NULL;
}

int sl_exec_batch(sl_exec_t *x, int entry, const sl_vm_origin_t *origin, const sl_record_t *records,
                  size_t n, const sl_exec_output_t *out, size_t *done)
{
    if (entry < 0 || entry >= x->dag->op_count || !sl_op_kind_is_entry(x->dag->ops[entry].kind))
        return sl_error_set(SL_EINVALID, "op %d does not start a stage", entry);
    size_t i;
    x->out = out;
    x->stop = 0;
    const sl_op_t *agg = prefetching(x, entry);
    uint64_t ahead[PREFETCH_AHEAD + 1] = {0}; /* hashes, by record index mod the size */
    for (i = 0; agg && i < PREFETCH_AHEAD && i < n; i++)
        ahead[i] = sl_aggregator_prefetch(x->task, agg, &records[i]);
    for (i = 0; i < n && !x->stop; i++) {
        if (agg) { /* each stage a record apart: one memory latency each */
            size_t j = i + PREFETCH_AHEAD;
            if (j < n)
                ahead[j % (PREFETCH_AHEAD + 1)] = sl_aggregator_prefetch(x->task, agg, &records[j]);
            for (int stage = 1; stage < PREFETCH_AHEAD; stage++)
                if (--j < n)
                    sl_aggregator_prefetch_stage(x->task, agg, ahead[j % (PREFETCH_AHEAD + 1)],
                                                 stage);
        }
        x->input = &records[i];
        enter(x, &x->dag->ops[entry], origin);
        if (x->stop)
            break;
    }
    if (done)
        *done = i;
    x->out = NULL;
    x->input = NULL;
    return x->stop;
}

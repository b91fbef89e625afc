/*
 * cmd_group.c - consumer groups: GROUP FETCH | COMMIT | OFFSETS | LIST and
 * SEEK.
 *
 * A group's committed offsets live in LMDB (storage/offsets.h) and survive
 * anything. Its fetch positions live here, in memory: they start at the
 * committed offsets (or the partition start when nothing is committed) and
 * move as GROUP FETCH hands records out, so consumers of one group share
 * the work. After a restart positions go back to the committed offsets:
 * records fetched but not committed are handed out again (at least once).
 */
#include "queries/server.h"
#include "storage/offsets.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct group_entry {
    struct group_entry *next;
    char *group, *topic;
    int32_t partitions, next_partition;
    int64_t *position;
} group_entry_t;

struct sl_groups {
    group_entry_t *entries;
};

static void entry_free(group_entry_t *e)
{
    sl_free(e->group);
    sl_free(e->topic);
    sl_free(e->position);
    sl_free(e);
}

void sl_groups_free(struct sl_groups *g)
{
    if (!g)
        return;
    while (g->entries) {
        group_entry_t *e = g->entries;
        g->entries = e->next;
        entry_free(e);
    }
    sl_free(g);
}

/* Drops the entries of a topic (all, or those with a stale partition
 * count when partitions >= 0). */
static void forget(struct sl_groups *g, const char *topic, int32_t partitions)
{
    for (group_entry_t **link = g ? &g->entries : NULL; link && *link;) {
        group_entry_t *e = *link;
        if (!strcmp(e->topic, topic) && (partitions < 0 || e->partitions != partitions)) {
            *link = e->next;
            entry_free(e);
        } else {
            link = &e->next;
        }
    }
}

void sl_groups_forget_topic(struct sl_groups *g, const char *topic)
{
    forget(g, topic, -1);
}

/* Loads positions from the committed offsets (or each partition's start). */
static int load_positions(sl_server_t *s, group_entry_t *e, sl_topic_t *t)
{
    for (int32_t i = 0; i < e->partitions; i++) {
        int64_t committed;
        int rc = sl_offsets_get(s->state, e->group, e->topic, i, &committed);
        if (rc == SL_ENOTFOUND)
            committed = sl_partition_start_offset(sl_topic_partition(t, i));
        else if (rc)
            return rc;
        e->position[i] = committed;
    }
    return 0;
}

/* The entry for group/topic, created and loaded on first use; NULL on
 * failure (detail set). A topic recreated with another partition count is
 * reloaded. */
static group_entry_t *group_entry(sl_server_t *s, const char *group, sl_topic_t *t)
{
    int32_t partitions = sl_topic_config(t)->partitions;
    if (!s->groups && !(s->groups = sl_calloc(1, sizeof *s->groups)))
        return NULL;
    for (group_entry_t *e = s->groups->entries; e; e = e->next)
        if (!strcmp(e->group, group) && !strcmp(e->topic, sl_topic_name(t)) &&
            e->partitions == partitions)
            return e;
    forget(s->groups, sl_topic_name(t), partitions);
    group_entry_t *e = sl_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->group = sl_strdup(group);
    e->topic = sl_strdup(sl_topic_name(t));
    e->partitions = partitions;
    e->position = sl_calloc((size_t)partitions, sizeof *e->position);
    if (!e->group || !e->topic || !e->position || load_positions(s, e, t)) {
        entry_free(e);
        return NULL;
    }
    e->next = s->groups->entries;
    s->groups->entries = e;
    return e;
}

/* Resolves argv[at] as a group and argv[at + 1] as a topic. */
static int group_and_topic(sl_request_t *req, size_t at, char *group, size_t size, sl_topic_t **t)
{
    char topic[SL_TOPIC_NAME_MAX + 2];
    if (sl_arg_name(&req->argv[at], group, size) || !group[0])
        return sl_request_error(req, "group name must be 1 to %zu bytes", size - 1);
    if (sl_arg_name(&req->argv[at + 1], topic, sizeof topic) ||
        !(*t = sl_log_topic(req->server->log, topic)))
        return sl_request_error(req, "NOTFOUND no such topic");
    return -1;
}

/* GROUP FETCH group topic [COUNT n] [BLOCK ms] -> [[topic, partition,
 * offset, timestamp, key, value, headers], ...] from the group's positions,
 * partitions taken in turn. */
static int group_fetch(sl_request_t *req)
{
    char group[256];
    sl_topic_t *t;
    int64_t count, block_ms;
    if (req->argc < 4 || group_and_topic(req, 2, group, sizeof group, &t) == SL_DONE)
        return req->argc < 4 ? sl_request_error(req, "GROUP FETCH group topic [COUNT n] [BLOCK ms]")
                             : SL_DONE;
    if (sl_read_options(req, 4, &count, &block_ms))
        return sl_request_error(req, "syntax error: GROUP FETCH group topic [COUNT n] [BLOCK ms]");
    group_entry_t *e = group_entry(req->server, group, t);
    if (!e)
        return sl_request_error(req, "cannot load group %s: %s", group, sl_error_detail());
    evbuffer_drain(req->server->scratch, evbuffer_get_length(req->server->scratch));
    int64_t total = 0;
    for (int32_t k = 0; k < e->partitions && total < count; k++) {
        int32_t part = (e->next_partition + k) % e->partitions;
        int n = sl_fetch_records(req, sl_topic_partition(t, part), &e->position[part],
                                 count - total, e->topic);
        if (n < 0)
            return sl_request_error(req, "%s", sl_error_detail());
        total += n;
    }
    e->next_partition = (e->next_partition + 1) % e->partitions;
    if (total == 0)
        return sl_block_or_empty(req, block_ms);
    sl_reply_array(&req->reply, (size_t)total);
    evbuffer_add_buffer(req->reply.out, req->server->scratch);
    return SL_DONE;
}

/* GROUP COMMIT group topic partition offset */
static int group_commit(sl_request_t *req)
{
    char group[256];
    sl_topic_t *t;
    int64_t part, offset;
    if (req->argc != 6)
        return sl_request_error(req, "GROUP COMMIT group topic partition offset");
    if (group_and_topic(req, 2, group, sizeof group, &t) == SL_DONE)
        return SL_DONE;
    if (sl_arg_int(&req->argv[4], 0, sl_topic_config(t)->partitions - 1, &part) ||
        sl_arg_int(&req->argv[5], 0, INT64_MAX, &offset))
        return sl_request_error(req, "partition must be 0 to %d and offset non-negative",
                                sl_topic_config(t)->partitions - 1);
    int32_t p32 = (int32_t)part;
    int rc = sl_offsets_commit(req->server->state, group, sl_topic_name(t), &p32, &offset, 1);
    if (rc)
        return sl_request_error(req, "%s", sl_error_detail());
    group_entry_t *e = group_entry(req->server, group, t);
    if (e && e->position[part] < offset)
        e->position[part] = offset;
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

/* GROUP OFFSETS group topic -> [[partition, committed (-1: none), end
 * offset, lag], ...] */
static int group_offsets(sl_request_t *req)
{
    char group[256];
    sl_topic_t *t;
    if (req->argc != 4)
        return sl_request_error(req, "GROUP OFFSETS group topic");
    if (group_and_topic(req, 2, group, sizeof group, &t) == SL_DONE)
        return SL_DONE;
    int32_t partitions = sl_topic_config(t)->partitions;
    sl_reply_array(&req->reply, (size_t)partitions);
    for (int32_t i = 0; i < partitions; i++) {
        sl_partition_t *p = sl_topic_partition(t, i);
        int64_t committed = -1, end = sl_partition_end_offset(p);
        int64_t start = sl_partition_start_offset(p);
        if (sl_offsets_get(req->server->state, group, sl_topic_name(t), i, &committed))
            committed = -1;
        int64_t from = committed > start ? committed : start;
        sl_reply_array(&req->reply, 4);
        sl_reply_int(&req->reply, i);
        sl_reply_int(&req->reply, committed);
        sl_reply_int(&req->reply, end);
        sl_reply_int(&req->reply, end > from ? end - from : 0);
    }
    return SL_DONE;
}

typedef struct pair_list {
    sl_reply_t *reply; /* NULL: count only */
    size_t count;
    char last[512];
} pair_list_t;

static int add_pair(void *arg, const char *group, const char *topic, int32_t partition,
                    int64_t offset)
{
    pair_list_t *l = arg;
    char key[512];
    (void)partition;
    (void)offset;
    snprintf(key, sizeof key, "%s%c%s", group, 0, topic);
    size_t n = strlen(group) + 1 + strlen(topic);
    if (l->count && !memcmp(key, l->last, n + 1))
        return 0;
    memcpy(l->last, key, n + 1);
    l->count++;
    if (l->reply) {
        sl_reply_array(l->reply, 2);
        sl_reply_cstr(l->reply, group);
        sl_reply_cstr(l->reply, topic);
    }
    return 0;
}

/* GROUP LIST -> [[group, topic], ...] for every group with commits */
static int group_list(sl_request_t *req)
{
    pair_list_t counting = {0}, listing = {.reply = &req->reply};
    int rc = sl_offsets_foreach(req->server->state, NULL, NULL, add_pair, &counting);
    if (rc)
        return sl_request_error(req, "%s", sl_error_detail());
    sl_reply_array(&req->reply, counting.count);
    sl_offsets_foreach(req->server->state, NULL, NULL, add_pair, &listing);
    return SL_DONE;
}

/* GROUP FETCH | COMMIT | OFFSETS | LIST ... */
int sl_cmd_group(sl_request_t *req)
{
    const sl_resp_arg_t *sub = &req->argv[1];
    if (sl_arg_is(sub, "FETCH"))
        return group_fetch(req);
    if (sl_arg_is(sub, "COMMIT"))
        return group_commit(req);
    if (sl_arg_is(sub, "OFFSETS"))
        return group_offsets(req);
    if (sl_arg_is(sub, "LIST") && req->argc == 2)
        return group_list(req);
    return sl_request_error(req, "unknown subcommand of GROUP: use FETCH, COMMIT, OFFSETS or LIST");
}

/* SEEK group topic TIME ms -> [[partition, offset], ...]: commits, for every
 * partition, the first offset whose timestamp is at or after ms. */
int sl_cmd_seek(sl_request_t *req)
{
    char group[256];
    sl_topic_t *t;
    int64_t ms;
    if (!sl_arg_is(&req->argv[3], "TIME"))
        return sl_request_error(req, "syntax error: SEEK group topic TIME ms");
    if (group_and_topic(req, 1, group, sizeof group, &t) == SL_DONE)
        return SL_DONE;
    if (sl_arg_int(&req->argv[4], 0, INT64_MAX, &ms))
        return sl_request_error(req, "TIME must be milliseconds since the epoch");
    int32_t n = sl_topic_config(t)->partitions;
    int32_t *parts = sl_malloc((size_t)n * sizeof *parts);
    int64_t *offsets = sl_malloc((size_t)n * sizeof *offsets);
    int rc = parts && offsets ? 0 : sl_error_set(-ENOMEM, "out of memory");
    for (int32_t i = 0; i < n && rc == 0; i++) {
        parts[i] = i;
        rc = sl_partition_offset_for_time(sl_topic_partition(t, i), ms, &offsets[i]);
    }
    if (rc == 0)
        rc = sl_offsets_commit(req->server->state, group, sl_topic_name(t), parts, offsets,
                               (size_t)n);
    group_entry_t *e = rc ? NULL : group_entry(req->server, group, t);
    if (rc)
        sl_request_error(req, "%s", sl_error_detail());
    else
        sl_reply_array(&req->reply, (size_t)n);
    for (int32_t i = 0; i < n && rc == 0; i++) {
        if (e)
            e->position[i] = offsets[i];
        sl_reply_array(&req->reply, 2);
        sl_reply_int(&req->reply, i);
        sl_reply_int(&req->reply, offsets[i]);
    }
    sl_free(parts);
    sl_free(offsets);
    return SL_DONE;
}

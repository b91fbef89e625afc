/*
 * cmd_topic.c - topic administration: TOPIC CREATE | LIST | DESCRIBE | DELETE.
 */
#include "queries/server.h"
#include "storage/offsets.h"

#include <stdio.h>
#include <string.h>

/* Maps a TOPIC CREATE keyword to its setting name; NULL if unknown. */
static const char *setting_for(const sl_resp_arg_t *word)
{
    static const char *const map[][2] = {
        {"PARTITIONS", "partitions"},
        {"RETENTION", "retention.ms"},
        {"RETENTIONBYTES", "retention.bytes"},
        {"COMPRESSION", "compression"},
        {"FSYNC", "fsync"},
        {"FORMAT", "format"},
        {"SEGMENTBYTES", "segment.bytes"},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (sl_arg_is(word, map[i][0]))
            return map[i][1];
    return NULL;
}

/* Applies `keyword value` / COMPACT / SET name value options from argv[i]. */
static int parse_create_options(sl_request_t *req, sl_topic_config_t *cfg)
{
    char name[64], value[128];
    for (size_t i = 3; i < req->argc; i++) {
        const char *setting = setting_for(&req->argv[i]);
        if (sl_arg_is(&req->argv[i], "COMPACT")) {
            cfg->cleanup = SL_CLEANUP_COMPACT;
            continue;
        }
        if (sl_arg_is(&req->argv[i], "TRANSACTIONAL")) {
            cfg->transactional = 1;
            continue;
        }
        if (sl_arg_is(&req->argv[i], "SET") && i + 2 < req->argc) {
            if (sl_arg_name(&req->argv[++i], name, sizeof name))
                return sl_request_error(req, "setting name too long");
            setting = name;
        } else if (!setting || i + 1 >= req->argc) {
            return sl_request_error(
                req,
                "syntax error near argument %zu of TOPIC CREATE "
                "(options: PARTITIONS n, RETENTION ms, RETENTIONBYTES n, "
                "COMPACT, TRANSACTIONAL, COMPRESSION zstd|none, FSYNC never|interval|always, "
                "FORMAT json|raw, SEGMENTBYTES n, SET name value)",
                i);
        }
        if (sl_arg_name(&req->argv[++i], value, sizeof value) ||
            sl_topic_config_set(cfg, setting, value))
            return sl_request_error(req, "%s", sl_error_detail());
    }
    return -1;
}

/* TOPIC CREATE name [PARTITIONS n] [RETENTION ms] [COMPACT] [...] */
static int topic_create(sl_request_t *req)
{
    char name[SL_TOPIC_NAME_MAX + 2];
    sl_topic_config_t cfg;
    sl_topic_config_default(&cfg);
    if (req->argc < 3)
        return sl_request_error(req, "wrong number of arguments for 'topic create' command");
    if (sl_arg_name(&req->argv[2], name, sizeof name))
        return sl_request_error(req, "topic name too long (at most %d)", SL_TOPIC_NAME_MAX);
    if (parse_create_options(req, &cfg) == SL_DONE)
        return SL_DONE;
    int rc = sl_log_create_topic(req->server->log, name, &cfg, NULL);
    if (rc == SL_EEXISTS)
        return sl_request_error(req, "BUSY topic %s already exists", name);
    if (rc)
        return sl_request_error(req, "%s", sl_error_detail());
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

static int count_topic(void *arg, sl_topic_t *t)
{
    (void)t;
    (*(int *)arg)++;
    return 0;
}

static int add_name(void *arg, sl_topic_t *t)
{
    sl_reply_cstr(arg, sl_topic_name(t));
    return 0;
}

/* TOPIC LIST */
static int topic_list(sl_request_t *req)
{
    int count = 0;
    sl_log_foreach_topic(req->server->log, count_topic, &count);
    sl_reply_array(&req->reply, (size_t)count);
    sl_log_foreach_topic(req->server->log, add_name, &req->reply);
    return SL_DONE;
}

/* Replies the meta-file settings as a flat array: name, value, ... */
static void reply_settings(sl_reply_t *r, const sl_topic_config_t *cfg)
{
    char text[2048];
    int n = sl_topic_config_format(cfg, text, sizeof text), lines = 0;
    for (int i = 0; i < n; i++)
        lines += text[i] == '\n';
    sl_reply_array(r, 2 * (size_t)lines);
    for (char *line = text, *end; (end = strchr(line, '\n')); line = end + 1) {
        char *eq = strchr(line, '=');
        sl_reply_bulk(r, line, (size_t)(eq - line));
        sl_reply_bulk(r, eq + 1, (size_t)(end - eq - 1));
    }
}

/* TOPIC DESCRIBE name -> [name, <name>, settings, [k, v, ...], partitions,
 * [[partition, start offset, end offset, bytes, segments], ...]] */
static int topic_describe(sl_request_t *req, sl_topic_t *t)
{
    const sl_topic_config_t *cfg = sl_topic_config(t);
    sl_reply_array(&req->reply, 6);
    sl_reply_cstr(&req->reply, "name");
    sl_reply_cstr(&req->reply, sl_topic_name(t));
    sl_reply_cstr(&req->reply, "settings");
    reply_settings(&req->reply, cfg);
    sl_reply_cstr(&req->reply, "partitions");
    sl_reply_array(&req->reply, (size_t)cfg->partitions);
    for (int32_t i = 0; i < cfg->partitions; i++) {
        sl_partition_t *p = sl_topic_partition(t, i);
        sl_reply_array(&req->reply, 5);
        sl_reply_int(&req->reply, i);
        sl_reply_int(&req->reply, sl_partition_start_offset(p));
        sl_reply_int(&req->reply, sl_partition_end_offset(p));
        sl_reply_int(&req->reply, sl_partition_size_bytes(p));
        sl_reply_int(&req->reply, sl_partition_segment_count(p));
    }
    return SL_DONE;
}

/* TOPIC DELETE name: also forgets every group's offsets for it. */
static int topic_delete(sl_request_t *req, const char *name)
{
    int rc = sl_log_delete_topic(req->server->log, name);
    if (rc == SL_ENOTFOUND)
        return sl_request_error(req, "NOTFOUND no such topic '%s'", name);
    if (rc)
        return sl_request_error(req, "%s", sl_error_detail());
    event_active(req->server->wake, EV_READ, 0); /* held replies and blocked reads on it */
    if (sl_offsets_delete_topic(req->server->state, name))
        sl_report(SL_WARN, "queries", "topic %s deleted but its group offsets remain: %s", name,
                  sl_error_detail());
    sl_groups_forget_topic(req->server->groups, name);
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

/* TOPIC CREATE|LIST|DESCRIBE|DELETE ... */
int sl_cmd_topic(sl_request_t *req)
{
    const sl_resp_arg_t *sub = &req->argv[1];
    char name[SL_TOPIC_NAME_MAX + 2];
    if (sl_arg_is(sub, "CREATE"))
        return topic_create(req);
    if (sl_arg_is(sub, "LIST"))
        return topic_list(req);
    if (!sl_arg_is(sub, "DESCRIBE") && !sl_arg_is(sub, "DELETE"))
        return sl_request_error(req, "unknown subcommand of TOPIC: use CREATE, LIST, DESCRIBE or "
                                     "DELETE");
    if (req->argc != 3)
        return sl_request_error(req, "wrong number of arguments for 'topic' command");
    if (sl_arg_name(&req->argv[2], name, sizeof name))
        return sl_request_error(req, "NOTFOUND no such topic");
    if (sl_arg_is(sub, "DELETE"))
        return topic_delete(req, name);
    sl_topic_t *t = sl_log_topic(req->server->log, name);
    if (!t)
        return sl_request_error(req, "NOTFOUND no such topic '%s'", name);
    return topic_describe(req, t);
}

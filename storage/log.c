/*
 * log.c - the log: a data directory of topics.
 *
 *   DATA/topics/.lock            flock()ed while a process has the log open
 *   DATA/topics/.clean-shutdown  present only after a clean sl_log_close()
 *   DATA/topics/<topic>/...      see storage.h and topic.h
 *   DATA/topics/deleted~<topic>~<n>  a topic being deleted ('~' is not
 *                                allowed in topic names); removed on open
 *
 * The topic table is a sorted array under one mutex; topic operations are
 * rare next to appends and reads, which never touch it. LMDB writes (the
 * lso entries of a deleted topic, recovery) are never made under that
 * mutex: a committing task holds the write transaction and may look up a
 * topic meanwhile.
 */
#include "storage/io.h"
#include "storage/lso.h"
#include "storage/topic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct sl_log {
    char *topics_dir;
    int lock_fd;
    sl_log_options_t options;
    sl_partition_env_t env;
    pthread_mutex_t lock;
    sl_topic_t **topics; /* sorted by name */
    size_t topic_count, topic_cap;
    unsigned long deletions;
    sl_state_t *state; /* from sl_log_attach_state(), under lock */
};

static int64_t wall_clock_ms(void *arg)
{
    struct timespec ts;
    (void)arg;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sl_log_now(const sl_log_t *log)
{
    return log->env.clock_ms(log->env.clock_arg);
}

/* Position of name in the table, or where it would go (*found = 0). */
static size_t find_topic(const sl_log_t *log, const char *name, int *found)
{
    size_t lo = 0, hi = log->topic_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(log->topics[mid]->name, name);
        if (cmp == 0) {
            *found = 1;
            return mid;
        }
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static int insert_topic(sl_log_t *log, sl_topic_t *t)
{
    int found;
    size_t at = find_topic(log, t->name, &found);
    if (log->topic_count == log->topic_cap) {
        size_t cap = log->topic_cap ? log->topic_cap * 2 : 16;
        sl_topic_t **grown = sl_realloc(log->topics, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        log->topics = grown;
        log->topic_cap = cap;
    }
    memmove(log->topics + at + 1, log->topics + at, (log->topic_count - at) * sizeof *log->topics);
    log->topics[at] = t;
    log->topic_count++;
    return 0;
}

/* Opens one entry of DATA/topics found at startup. */
static void open_entry(sl_log_t *log, const char *name, int clean)
{
    char dir[PATH_MAX];
    sl_topic_t *t;
    snprintf(dir, sizeof dir, "%s/%s", log->topics_dir, name);
    if (!strncmp(name, "deleted~", 8)) {
        sl_io_remove_tree(dir);
        return;
    }
    if (sl_topic_name_check(name))
        return;
    int rc = sl_topic_open(dir, name, &log->env, clean, &t);
    if (rc == -ENOENT) {
        sl_report(SL_WARN, "log", "%s: no meta file (interrupted creation); removing it", dir);
        sl_io_remove_tree(dir);
        return;
    }
    if (rc == 0 && (rc = insert_topic(log, t)))
        sl_topic_close(t, log->env.flusher);
    if (rc)
        sl_report(SL_ERROR, "log", "topic %s cannot be opened and stays offline: %s", name,
                  sl_error_detail()[0] ? sl_error_detail() : sl_strerror(rc));
}

static int open_topics(sl_log_t *log, int clean)
{
    DIR *d = opendir(log->topics_dir);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            open_entry(log, e->d_name, clean);
    closedir(d);
    return 0;
}

static int take_directory_lock(sl_log_t *log)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/.lock", log->topics_dir);
    log->lock_fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (log->lock_fd < 0)
        return sl_error_set(-errno, "cannot open %s: %s", path, strerror(errno));
    if (flock(log->lock_fd, LOCK_EX | LOCK_NB))
        return sl_error_set(errno == EWOULDBLOCK ? -EBUSY : -errno,
                            "data directory %s is in use by another sluice process",
                            log->topics_dir);
    return 0;
}

/* Reads and removes the clean-shutdown marker, durably, before any write:
 * a crash from here on must not look clean on the next open. */
static int consume_clean_marker(sl_log_t *log, int *clean)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/.clean-shutdown", log->topics_dir);
    *clean = unlink(path) == 0;
    return *clean ? sl_io_sync_dir(log->topics_dir) : 0;
}

static int make_dirs(const char *dir, char **topics_dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/topics", dir) >= (int)sizeof path)
        return sl_error_set(-ENAMETOOLONG, "data directory path is too long");
    if ((mkdir(dir, 0755) && errno != EEXIST) || (mkdir(path, 0755) && errno != EEXIST))
        return sl_error_set(-errno, "cannot create %s: %s", path, strerror(errno));
    *topics_dir = sl_strdup(path);
    return *topics_dir ? 0 : -ENOMEM;
}

int sl_log_open(const char *dir, const sl_log_options_t *opts, sl_log_t **out)
{
    sl_log_t *log = sl_calloc(1, sizeof *log);
    int clean = 0, rc;
    if (!log)
        return -ENOMEM;
    log->lock_fd = -1;
    if (opts)
        log->options = *opts;
    log->env.clock_ms = log->options.clock_ms ? log->options.clock_ms : wall_clock_ms;
    log->env.clock_arg = log->options.clock_arg;
    log->env.listener = log->options.listener;
    log->env.listener_arg = log->options.listener_arg;
    pthread_mutex_init(&log->lock, NULL);
    if ((rc = make_dirs(dir, &log->topics_dir)) || (rc = take_directory_lock(log)) ||
        (rc = consume_clean_marker(log, &clean)) || (rc = sl_flusher_start(&log->env.flusher)) ||
        (rc = open_topics(log, clean)))
        goto fail;
    *out = log;
    return 0;
fail:
    sl_log_close(log);
    return rc;
}

void sl_log_close(sl_log_t *log)
{
    if (!log)
        return;
    for (size_t i = 0; i < log->topic_count; i++)
        sl_topic_close(log->topics[i], log->env.flusher);
    if (log->env.flusher)
        sl_flusher_stop(log->env.flusher);
    if (log->env.flusher && log->lock_fd >= 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/.clean-shutdown", log->topics_dir);
        if (sl_io_write_file(path, "", 0))
            sl_report(SL_WARN, "log", "cannot mark a clean shutdown; next open will rescan");
    }
    if (log->lock_fd >= 0)
        close(log->lock_fd);
    pthread_mutex_destroy(&log->lock);
    sl_free(log->topics);
    sl_free(log->topics_dir);
    sl_free(log);
}

int sl_log_create_topic(sl_log_t *log, const char *name, const sl_topic_config_t *cfg,
                        sl_topic_t **out)
{
    char dir[PATH_MAX];
    sl_topic_t *t = NULL;
    int found, rc = sl_topic_name_check(name);
    if (rc)
        return rc;
    pthread_mutex_lock(&log->lock);
    find_topic(log, name, &found);
    snprintf(dir, sizeof dir, "%s/%s", log->topics_dir, name);
    if (found)
        rc = sl_error_set(SL_EEXISTS, "topic %s already exists", name);
    else if (access(dir, F_OK) == 0)
        sl_io_remove_tree(dir); /* a leftover that failed to open: replaced */
    if (rc == 0)
        rc = sl_topic_create(dir, name, cfg, &log->env, &t);
    if (rc == 0)
        rc = sl_io_sync_dir(log->topics_dir);
    if (rc == 0 && (rc = insert_topic(log, t)) != 0)
        sl_topic_discard(t, log->env.flusher);
    pthread_mutex_unlock(&log->lock);
    if (rc == 0 && out)
        *out = t;
    return rc;
}

sl_topic_t *sl_log_topic(sl_log_t *log, const char *name)
{
    int found;
    pthread_mutex_lock(&log->lock);
    size_t at = find_topic(log, name, &found);
    sl_topic_t *t = found ? log->topics[at] : NULL;
    pthread_mutex_unlock(&log->lock);
    return t;
}

int sl_log_delete_topic(sl_log_t *log, const char *name)
{
    char dir[PATH_MAX], doomed[PATH_MAX];
    int found;
    pthread_mutex_lock(&log->lock);
    size_t at = find_topic(log, name, &found);
    if (!found) {
        pthread_mutex_unlock(&log->lock);
        return sl_error_set(SL_ENOTFOUND, "topic %s does not exist", name);
    }
    sl_topic_t *t = log->topics[at];
    memmove(log->topics + at, log->topics + at + 1,
            (log->topic_count - at - 1) * sizeof *log->topics);
    log->topic_count--;
    snprintf(dir, sizeof dir, "%s/%s", log->topics_dir, name);
    snprintf(doomed, sizeof doomed, "%s/deleted~%s~%lu", log->topics_dir, name, log->deletions++);
    int rc = rename(dir, doomed) ? -errno : sl_io_sync_dir(log->topics_dir);
    sl_state_t *state = t->config.transactional ? log->state : NULL;
    pthread_mutex_unlock(&log->lock);
    sl_topic_discard(t, log->env.flusher);
    if (rc == 0)
        sl_io_remove_tree(doomed);
    if (rc == 0 && state && sl_lso_delete_topic(state, name))
        sl_report(SL_WARN, "log", "topic %s deleted but its committed ends remain: %s", name,
                  sl_error_detail()); /* the next sl_log_attach_state() sweeps them */
    return rc ? sl_error_set(rc, "deleting topic %s: %s", name, sl_strerror(rc)) : 0;
}

/* Keeps the lso entries of a transactional topic's partitions, and of a
 * topic that stays offline (its directory is there, it failed to open). */
static int keep_lso(void *arg, const char *name, int32_t partition)
{
    sl_log_t *log = arg;
    char dir[PATH_MAX];
    int found;
    pthread_mutex_lock(&log->lock);
    size_t at = find_topic(log, name, &found);
    int keep = found && log->topics[at]->config.transactional &&
               partition < log->topics[at]->config.partitions;
    pthread_mutex_unlock(&log->lock);
    snprintf(dir, sizeof dir, "%s/%s", log->topics_dir, name);
    return keep || (!found && access(dir, F_OK) == 0);
}

/* The partitions of every transactional topic, referenced, into *out. */
static int transactional_partitions(sl_log_t *log, sl_partition_t ***out, size_t *count)
{
    size_t n = 0;
    for (size_t i = 0; i < log->topic_count; i++)
        if (log->topics[i]->config.transactional)
            n += (size_t)log->topics[i]->config.partitions;
    sl_partition_t **all = sl_malloc((n ? n : 1) * sizeof *all);
    if (!all)
        return sl_error_set(-ENOMEM, "out of memory attaching the state");
    n = 0;
    for (size_t i = 0; i < log->topic_count; i++)
        for (int32_t j = 0;
             log->topics[i]->config.transactional && j < log->topics[i]->config.partitions; j++) {
            all[n] = log->topics[i]->partitions[j];
            sl_partition_ref(all[n++]);
        }
    *out = all;
    *count = n;
    return 0;
}

int sl_log_attach_state(sl_log_t *log, sl_state_t *st)
{
    sl_partition_t **all = NULL;
    size_t n = 0;
    pthread_mutex_lock(&log->lock);
    int rc = log->state ? sl_error_set(SL_EINVALID, "the log already has its state") : 0;
    if (rc == 0 && (rc = transactional_partitions(log, &all, &n)) == 0)
        log->state = st;
    pthread_mutex_unlock(&log->lock);
    if (rc)
        return rc;
    rc = sl_lso_recover(st, all, n, keep_lso, log);
    for (size_t i = 0; i < n; i++)
        sl_partition_unref(all[i]);
    sl_free(all);
    return rc;
}

int sl_log_foreach_topic(sl_log_t *log, int (*fn)(void *arg, sl_topic_t *topic), void *arg)
{
    int rc = 0;
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->topic_count && rc == 0; i++)
        rc = fn(arg, log->topics[i]);
    pthread_mutex_unlock(&log->lock);
    return rc;
}

static int maintain_partition(sl_partition_t *p, int64_t now)
{
    if (p->config.cleanup == SL_CLEANUP_COMPACT)
        return sl_partition_compact(p, now);
    return sl_partition_apply_retention(p, now, NULL);
}

int sl_log_maintain(sl_log_t *log)
{
    size_t n = 0;
    int first_error = 0;
    pthread_mutex_lock(&log->lock);
    for (size_t i = 0; i < log->topic_count; i++)
        n += (size_t)log->topics[i]->config.partitions;
    sl_partition_t **all = sl_malloc((n ? n : 1) * sizeof *all);
    n = 0;
    for (size_t i = 0; all && i < log->topic_count; i++)
        for (int32_t j = 0; j < log->topics[i]->config.partitions; j++) {
            all[n] = log->topics[i]->partitions[j];
            sl_partition_ref(all[n++]);
        }
    pthread_mutex_unlock(&log->lock);
    if (!all)
        return -ENOMEM;
    int64_t now = sl_log_now(log);
    for (size_t i = 0; i < n; i++) {
        int rc = maintain_partition(all[i], now);
        if (rc && !first_error)
            first_error = rc;
        sl_partition_unref(all[i]);
    }
    sl_free(all);
    return first_error;
}

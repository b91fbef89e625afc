/*
 * pipelines.c - the pipeline manager: submitted scripts on disk, the set
 * of running pipelines, and the PIPELINE command.
 *
 *   DATA/pipelines/<name>.lua   the current script of each pipeline,
 *                               written atomically (tmp, fsync, rename)
 */
#include "runtime/features.h"
#include "runtime/pipeline_internal.h"
#include "storage/offsets.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
              (name[i] >= '0' && name[i] <= '9') || name[i] == '_' || name[i] == '-'))
            return 0;
    return 1;
}

static int save_script(sl_pipelines_t *m, const char *name, const char *source, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/%s.lua", m->dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return sl_error_set(-errno, "cannot write %s: %s", tmp, strerror(errno));
    ssize_t w = write(fd, source, len);
    int rc = (w == (ssize_t)len && fsync(fd) == 0) ? 0 : -(errno ? errno : EIO);
    close(fd);
    if (rc == 0 && rename(tmp, path))
        rc = -errno;
    if (rc)
        return sl_error_set(rc, "cannot save pipeline %s: %s", name, strerror(-rc));
    return 0;
}

/* Index of name in the list, or -1. Lock held. */
static int find(sl_pipelines_t *m, const char *name)
{
    for (int i = 0; i < m->count; i++)
        if (!strcmp(m->list[i]->name, name))
            return i;
    return -1;
}

/* Reloads the tasks' positions from the committed offsets (after the
 * version it replaces has stopped and committed). */
static void reload_positions(pipeline_t *pl)
{
    for (int i = 0; i < pl->task_count; i++) {
        task_t *t = &pl->tasks[i];
        int64_t committed;
        if (sl_offsets_get(pl->state, pl->group, t->topic, sl_partition_id(t->partition),
                           &committed) == 0)
            t->position = committed;
        pipeline_task_show(t);
    }
}

/* Puts pl in the list, replacing (and stopping) a pipeline of its name. */
static int install(sl_pipelines_t *m, pipeline_t *pl)
{
    pthread_mutex_lock(&m->lock);
    int at = find(m, pl->name);
    pipeline_t *old = at >= 0 ? m->list[at] : NULL;
    if (at < 0 && m->count == m->cap) {
        int cap = m->cap ? m->cap * 2 : 8;
        pipeline_t **grown = sl_realloc(m->list, (size_t)cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&m->lock);
            return -ENOMEM;
        }
        m->list = grown;
        m->cap = cap;
    }
    if (old)
        pipeline_drain_and_free(old); /* its keyed stages finish first */
    m->list[at >= 0 ? at : m->count++] = pl;
    reload_positions(pl);
    int rc = pipeline_start(pl);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* The feature views of the pipeline named name as it now runs (none if it
 * does not), after a submit that did not install its new version. */
static void restore_views(sl_pipelines_t *m, const char *name)
{
    pthread_mutex_lock(&m->lock);
    int at = find(m, name);
    if (at < 0)
        sl_features_unregister(m->features, name);
    else if (sl_features_register(m->features, name, m->list[at]->dag))
        sl_report(SL_ERROR, "pipeline", "%s: its feature views are lost: %s", name,
                  sl_error_detail());
    pthread_mutex_unlock(&m->lock);
}

int sl_pipelines_submit(sl_pipelines_t *m, const char *name, const char *source, size_t len)
{
    pipeline_t *pl;
    if (!name_ok(name))
        return sl_error_set(SL_EINVALID, "pipeline name must be 1 to 128 of [A-Za-z0-9_-]");
    int rc = pipeline_prepare(m, name, source, len, &pl);
    if (rc == 0) { /* what the running version buffered must do for this one */
        pthread_mutex_lock(&m->lock);
        int at = find(m, name);
        rc = at >= 0 ? sl_dag_check_projections(m->list[at]->dag, pl->dag) : 0;
        pthread_mutex_unlock(&m->lock);
        if (rc)
            pipeline_free(pl);
    }
    if (rc == 0 && (rc = sl_features_register(m->features, name, pl->dag)))
        pipeline_free(pl); /* a feature name another pipeline's view has */
    if (rc)
        return rc;
    if ((rc = save_script(m, name, source, len)) || (rc = install(m, pl))) {
        pthread_mutex_lock(&m->lock);
        int at = find(m, name), installed = at >= 0 && m->list[at] == pl;
        pthread_mutex_unlock(&m->lock);
        if (!installed) {
            pipeline_free(pl);
            restore_views(m, name);
        }
        return rc;
    }
    sl_report(SL_INFO, "pipeline", "%s started (%d task(s))", name, pl->task_count);
    return 0;
}

int sl_pipelines_stop(sl_pipelines_t *m, const char *name)
{
    char path[PATH_MAX];
    pthread_mutex_lock(&m->lock);
    int at = find(m, name);
    pipeline_t *pl = at >= 0 ? m->list[at] : NULL;
    if (pl)
        m->list[at] = m->list[--m->count];
    pthread_mutex_unlock(&m->lock);
    if (!pl)
        return sl_error_set(SL_ENOTFOUND, "NOTFOUND no such pipeline '%s'", name);
    sl_features_unregister(m->features, name);
    pipeline_free(pl);
    snprintf(path, sizeof path, "%s/%s.lua", m->dir, name);
    unlink(path);
    sl_report(SL_INFO, "pipeline", "%s stopped and removed", name);
    return 0;
}

void sl_pipelines_notify(sl_pipelines_t *m)
{
    pthread_mutex_lock(&m->wake_lock);
    m->wake_seq++;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->wake_lock);
}

/* Starts one saved script; a script that no longer compiles is reported. */
static void load_one(sl_pipelines_t *m, const char *file)
{
    char path[PATH_MAX], name[160];
    snprintf(path, sizeof path, "%s/%s", m->dir, file);
    snprintf(name, sizeof name, "%.*s", (int)(strlen(file) - 4), file);
    char *text = NULL;
    size_t n;
    int rc = sl_io_read_file(path, &text, &n);
    if (rc || sl_pipelines_submit(m, name, text, n))
        sl_report(SL_ERROR, "pipeline", "%s: not started: %s", path,
                  rc ? sl_strerror(rc) : sl_error_detail());
    sl_free(text);
}

static int load_saved(sl_pipelines_t *m)
{
    DIR *d = opendir(m->dir);
    if (!d)
        return sl_error_set(-errno, "cannot read %s: %s", m->dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 4 && !strcmp(e->d_name + n - 4, ".lua"))
            load_one(m, e->d_name);
    }
    closedir(d);
    return 0;
}

int sl_pipelines_open(const char *data_dir, sl_log_t *log, sl_state_t *state, sl_queues_t *queues,
                      int workers, sl_pipelines_t **out)
{
    char dir[PATH_MAX];
    sl_pipelines_t *m = sl_calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    snprintf(dir, sizeof dir, "%s/pipelines", data_dir);
    m->dir = sl_strdup(dir);
    m->log = log;
    m->state = state;
    m->queues = queues;
    m->workers = workers > 0 ? workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (m->workers < 1)
        m->workers = 1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->wake_lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    int rc = !m->dir ? -ENOMEM : (mkdir(dir, 0755) && errno != EEXIST) ? -errno : 0;
    if (rc == 0)
        rc = sl_features_new(state, log, &m->features);
    if (rc == 0)
        rc = load_saved(m);
    if (rc) {
        sl_pipelines_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

void sl_pipelines_close(sl_pipelines_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->count; i++)
        pipeline_free(m->list[i]);
    sl_features_free(m->features);
    sl_free(m->list);
    sl_free(m->dir);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->wake);
    sl_free(m);
}

sl_features_t *sl_pipelines_features(sl_pipelines_t *m)
{
    return m->features;
}

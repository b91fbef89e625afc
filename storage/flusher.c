/*
 * flusher.c - the log's fsync thread: group commit and interval syncing.
 *
 * An append to a partition with fsync=always or interval puts the
 * partition on the flusher's queue (once) with a due time: now for always,
 * now + fsync.interval.ms for interval. The thread syncs each partition when
 * it falls due. Every batch written before the sync starts is covered by
 * it, so concurrent appenders to a partition share one fdatasync (group
 * commit) and appends that arrive during a sync are covered by the next.
 * Due times use CLOCK_MONOTONIC, never the log's (test-settable) clock.
 */
#include "storage/partition.h"

#include <errno.h>
#include <time.h>

struct sl_flusher {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    sl_partition_t *queue; /* linked through flush_next, unordered */
    int stopping;
};

#define TAKE_MAX 64

/* Unlinks up to TAKE_MAX partitions that are due into due[] (they cannot
 * stay linked through flush_next: an appender may queue them again while
 * they are being synced); sets *next_due to the earliest due time left
 * (INT64_MAX if none, now if more are due). Lock held. */
static int take_due(sl_flusher_t *f, int64_t now, sl_partition_t **due, int64_t *next_due)
{
    sl_partition_t **link = &f->queue;
    int n = 0;
    *next_due = INT64_MAX;
    while (*link) {
        sl_partition_t *p = *link;
        if (p->flush_due_ms <= now && n < TAKE_MAX) {
            *link = p->flush_next;
            p->flush_queued = 0;
            p->flush_next = NULL;
            due[n++] = p;
        } else {
            if (p->flush_due_ms < *next_due)
                *next_due = p->flush_due_ms;
            link = &p->flush_next;
        }
    }
    return n;
}

static void wait_until(sl_flusher_t *f, int64_t due_ms)
{
    if (due_ms == INT64_MAX) {
        pthread_cond_wait(&f->wake, &f->lock);
        return;
    }
    struct timespec ts = {due_ms / 1000, (due_ms % 1000) * 1000000};
    pthread_cond_timedwait(&f->wake, &f->lock, &ts);
}

static void *flusher_main(void *arg)
{
    sl_flusher_t *f = arg;
    sl_partition_t *due[TAKE_MAX];
    pthread_mutex_lock(&f->lock);
    while (!f->stopping) {
        int64_t next_due;
        int n = take_due(f, sl_monotonic_ms(), due, &next_due);
        if (n == 0) {
            wait_until(f, next_due);
            continue;
        }
        pthread_mutex_unlock(&f->lock);
        for (int i = 0; i < n; i++) {
            sl_partition_sync(due[i]); /* failures are handled and reported inside */
            sl_partition_unref(due[i]);
        }
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

int sl_flusher_start(sl_flusher_t **out)
{
    sl_flusher_t *f = sl_calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    pthread_mutex_init(&f->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&f->wake, &attr);
    pthread_condattr_destroy(&attr);
    int rc = pthread_create(&f->thread, NULL, flusher_main, f);
    if (rc) {
        pthread_mutex_destroy(&f->lock);
        pthread_cond_destroy(&f->wake);
        sl_free(f);
        return -rc;
    }
    *out = f;
    return 0;
}

void sl_flusher_stop(sl_flusher_t *f)
{
    pthread_mutex_lock(&f->lock);
    f->stopping = 1;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    int64_t ignored;
    sl_partition_t *due[TAKE_MAX];
    for (int n; (n = take_due(f, INT64_MAX, due, &ignored)) > 0;)
        for (int i = 0; i < n; i++) {
            sl_partition_sync(due[i]);
            sl_partition_unref(due[i]);
        }
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->wake);
    sl_free(f);
}

void sl_flusher_schedule(sl_flusher_t *f, sl_partition_t *p)
{
    pthread_mutex_lock(&f->lock);
    if (!p->flush_queued) {
        int64_t delay = p->config.fsync == SL_FSYNC_ALWAYS ? 0 : p->config.fsync_interval_ms;
        p->flush_queued = 1;
        p->flush_due_ms = sl_monotonic_ms() + delay;
        p->flush_next = f->queue;
        f->queue = p;
        sl_partition_ref(p);
        pthread_cond_signal(&f->wake);
    }
    pthread_mutex_unlock(&f->lock);
}

void sl_flusher_forget(sl_flusher_t *f, sl_partition_t *p)
{
    pthread_mutex_lock(&f->lock);
    for (sl_partition_t **link = &f->queue; *link; link = &(*link)->flush_next)
        if (*link == p) {
            *link = p->flush_next;
            p->flush_queued = 0;
            sl_partition_unref(p);
            break;
        }
    pthread_mutex_unlock(&f->lock);
}

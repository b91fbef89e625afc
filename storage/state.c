/*
 * state.c - the node's LMDB environment (see state.h).
 *
 * Opening goes: create DATA and DATA/state; take DATA/state/.lock with a
 * non-blocking flock() (so a second process fails at once instead of
 * sharing the environment); open LMDB; clear reader slots left by killed
 * processes; fsync both directories so the new files' entries are durable.
 *
 * Named database handles are opened once and kept in a small table under a
 * mutex: LMDB requires that only one transaction at a time calls
 * mdb_dbi_open(), and that the transaction commits before other
 * transactions use the handle. The system databases are opened with the
 * environment, so that code already holding the write transaction (a
 * commit) finds their handles without opening a transaction of its own.
 */
#include "storage/state.h"
#include "storage/io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct named_database {
    char *name;
    MDB_dbi dbi;
} named_database_t;

struct sl_state {
    MDB_env *env;
    int lock_fd;
    char dir[PATH_MAX]; /* DATA/state */
    pthread_mutex_t databases_lock;
    pthread_mutex_t commit_lock; /* see sl_state_lock_commits() */
    pthread_mutex_t views_lock;  /* see sl_store_views_lock() */
    named_database_t *databases; /* in opening order */
    size_t database_count, database_capacity;
    struct overlay_slot {
        char *name;
        sl_overlay_t *overlay;
    } * overlays; /* by store name, under databases_lock */
    size_t overlay_count, overlay_cap;
};

static int sluice_code(int mdb_code)
{
    switch (mdb_code) {
    case MDB_NOTFOUND:
        return SL_ENOTFOUND;
    case MDB_KEYEXIST:
        return SL_EEXISTS;
    case MDB_MAP_FULL:
        return -ENOSPC;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return SL_ECORRUPT;
    case MDB_BAD_VALSIZE:
    case MDB_BAD_DBI:
    case MDB_INCOMPATIBLE:
        return SL_EINVALID;
    case MDB_DBS_FULL:
    case MDB_READERS_FULL:
    case MDB_TLS_FULL:
    case MDB_TXN_FULL:
    case MDB_CURSOR_FULL:
    case MDB_PAGE_FULL:
        return -ENOBUFS;
    case MDB_MAP_RESIZED:
        return -EAGAIN;
    default:
        return -EIO;
    }
}

int sl_state_error(int mdb_code, const char *what)
{
    if (mdb_code == 0)
        return 0;
    int code = mdb_code > 0 ? -mdb_code : sluice_code(mdb_code);
    return sl_error_set(code, "state: %s: %s", what, mdb_strerror(mdb_code));
}

static int make_dirs(const char *data_dir, sl_state_t *st)
{
    if (snprintf(st->dir, sizeof st->dir, "%s/state", data_dir) >= (int)sizeof st->dir)
        return sl_error_set(-ENAMETOOLONG, "state: data directory path is too long");
    if ((mkdir(data_dir, 0755) && errno != EEXIST) || (mkdir(st->dir, 0755) && errno != EEXIST))
        return sl_error_set(-errno, "state: cannot create %s: %s", st->dir, strerror(errno));
    return 0;
}

static int take_directory_lock(sl_state_t *st)
{
    char path[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/.lock", st->dir);
    st->lock_fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (st->lock_fd < 0)
        return sl_error_set(-errno, "state: cannot open %s: %s", path, strerror(errno));
    if (flock(st->lock_fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK)
        return sl_error_set(-errno, "state: cannot lock %s: %s", path, strerror(errno));
    return sl_error_set(-EBUSY, "state: %s is in use by another sluice process (or already open)",
                        st->dir);
}

static int open_environment(sl_state_t *st, const sl_state_options_t *opts)
{
    size_t map_size = opts && opts->map_size ? opts->map_size : SL_STATE_MAP_SIZE_DEFAULT;
    unsigned max_databases =
        opts && opts->max_databases ? opts->max_databases : SL_STATE_MAX_DATABASES_DEFAULT;
    int rc = mdb_env_create(&st->env);
    if (rc)
        return sl_state_error(rc, "creating the environment");
    if ((rc = mdb_env_set_maxdbs(st->env, max_databases)) ||
        (rc = mdb_env_set_mapsize(st->env, map_size)) ||
        (rc = mdb_env_open(st->env, st->dir, MDB_NOTLS, 0644))) {
        mdb_env_close(st->env); /* LMDB: a failed open still needs closing */
        st->env = NULL;
        return sl_error_set(sl_state_error(rc, "opening"), "state: cannot open %s: %s", st->dir,
                            mdb_strerror(rc));
    }
    int dead;
    return sl_state_error(mdb_reader_check(st->env, &dead), "clearing stale readers");
}

/* offsets.h, lso.c and store.c own these. */
static const char *const system_databases[] = {"offsets", "lso", "stores"};

static int open_system_databases(sl_state_t *st)
{
    MDB_dbi dbi;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof system_databases / sizeof *system_databases; i++)
        rc = sl_state_database(st, system_databases[i], &dbi);
    return rc;
}

static int sync_dirs(const char *data_dir, sl_state_t *st)
{
    int rc = sl_io_sync_dir(st->dir);
    if (rc == 0)
        rc = sl_io_sync_dir(data_dir);
    return rc ? sl_error_set(rc, "state: cannot sync %s: %s", data_dir, strerror(-rc)) : 0;
}

int sl_state_open(const char *data_dir, const sl_state_options_t *opts, sl_state_t **out)
{
    sl_state_t *st = sl_calloc(1, sizeof *st);
    int rc;
    if (!st)
        return sl_error_set(-ENOMEM, "state: out of memory opening %s", data_dir);
    st->lock_fd = -1;
    if ((rc = -pthread_mutex_init(&st->databases_lock, NULL))) {
        sl_free(st);
        return sl_error_set(rc, "state: cannot create a mutex");
    }
    if ((rc = -pthread_mutex_init(&st->commit_lock, NULL))) {
        pthread_mutex_destroy(&st->databases_lock);
        sl_free(st);
        return sl_error_set(rc, "state: cannot create a mutex");
    }
    if ((rc = -pthread_mutex_init(&st->views_lock, NULL))) {
        pthread_mutex_destroy(&st->commit_lock);
        pthread_mutex_destroy(&st->databases_lock);
        sl_free(st);
        return sl_error_set(rc, "state: cannot create a mutex");
    }
    if ((rc = make_dirs(data_dir, st)) || (rc = take_directory_lock(st)) ||
        (rc = open_environment(st, opts)) || (rc = open_system_databases(st)) ||
        (rc = sync_dirs(data_dir, st)))
        goto fail;
    *out = st;
    return 0;
fail:
    sl_state_close(st);
    return rc;
}

void sl_state_close(sl_state_t *st)
{
    if (!st)
        return;
    if (st->env)
        mdb_env_close(st->env);
    if (st->lock_fd >= 0)
        close(st->lock_fd); /* only now may another process open the state */
    for (size_t i = 0; i < st->database_count; i++)
        sl_free(st->databases[i].name);
    sl_free(st->databases);
    for (size_t i = 0; i < st->overlay_count; i++) {
        sl_free(st->overlays[i].name);
        sl_overlay_free(st->overlays[i].overlay);
    }
    sl_free(st->overlays);
    pthread_mutex_destroy(&st->databases_lock);
    pthread_mutex_destroy(&st->commit_lock);
    pthread_mutex_destroy(&st->views_lock);
    sl_free(st);
}

void sl_state_lock_commits(sl_state_t *st)
{
    pthread_mutex_lock(&st->commit_lock);
}

void sl_state_unlock_commits(sl_state_t *st)
{
    pthread_mutex_unlock(&st->commit_lock);
}

MDB_env *sl_state_env(sl_state_t *st)
{
    return st->env;
}

static const named_database_t *find_database(const sl_state_t *st, const char *name)
{
    for (size_t i = 0; i < st->database_count; i++)
        if (strcmp(st->databases[i].name, name) == 0)
            return &st->databases[i];
    return NULL;
}

/* Makes room for one more entry, so that a database once opened in LMDB
 * always finds its place in the table. */
static int reserve_database_slot(sl_state_t *st)
{
    if (st->database_count < st->database_capacity)
        return 0;
    size_t capacity = st->database_capacity ? 2 * st->database_capacity : 8;
    named_database_t *grown = sl_realloc(st->databases, capacity * sizeof *grown);
    if (!grown)
        return sl_error_set(-ENOMEM, "state: out of memory opening a database");
    st->databases = grown;
    st->database_capacity = capacity;
    return 0;
}

/* Called with databases_lock held and txn, a write transaction of the
 * caller's, which it commits or aborts. */
static int open_database(sl_state_t *st, MDB_txn *txn, const char *name, MDB_dbi *out)
{
    char *copy = NULL;
    int rc;
    if ((rc = reserve_database_slot(st)) || !(copy = sl_strdup(name))) {
        mdb_txn_abort(txn);
        return rc ? rc : sl_error_set(-ENOMEM, "state: out of memory opening database %s", name);
    }
    if ((rc = mdb_dbi_open(txn, name, MDB_CREATE, out))) {
        mdb_txn_abort(txn);
        rc = sl_state_error(rc, "opening a database");
        goto fail;
    }
    if ((rc = sl_state_commit(txn)))
        goto fail;
    st->databases[st->database_count++] = (named_database_t){copy, *out};
    return 0;
fail:
    sl_free(copy);
    return rc;
}

/* The database of name opened before: 1 and *out, or 0. */
static int opened_database(sl_state_t *st, const char *name, MDB_dbi *out)
{
    pthread_mutex_lock(&st->databases_lock);
    const named_database_t *found = find_database(st, name);
    if (found)
        *out = found->dbi;
    pthread_mutex_unlock(&st->databases_lock);
    return found != NULL;
}

int sl_state_database(sl_state_t *st, const char *name, MDB_dbi *out)
{
    if (!name || !*name)
        return sl_error_set(SL_EINVALID, "state: a database name must not be empty");
    if (opened_database(st, name, out))
        return 0;
    /* Opening takes the write transaction first and the lock second, the
     * order of a commit that looks a database up while it holds the
     * transaction; then looks again (another thread may have opened it
     * meanwhile). */
    MDB_txn *txn;
    int rc = sl_state_begin(st, 1, &txn);
    if (rc)
        return rc;
    pthread_mutex_lock(&st->databases_lock);
    const named_database_t *found = find_database(st, name);
    if (found) {
        *out = found->dbi;
        mdb_txn_abort(txn);
    } else {
        rc = open_database(st, txn, name, out);
    }
    pthread_mutex_unlock(&st->databases_lock);
    return rc;
}

void sl_store_views_lock(sl_state_t *st)
{
    pthread_mutex_lock(&st->views_lock);
}

void sl_store_views_unlock(sl_state_t *st)
{
    pthread_mutex_unlock(&st->views_lock);
}

int sl_state_overlay(sl_state_t *st, const char *name, sl_overlay_t **out)
{
    int rc = 0;
    pthread_mutex_lock(&st->databases_lock);
    size_t i = 0;
    while (i < st->overlay_count && strcmp(st->overlays[i].name, name))
        i++;
    if (i == st->overlay_count) {
        char *copy = sl_strdup(name);
        sl_overlay_t *o = NULL;
        if (!copy ||
            sl_array_reserve((void **)&st->overlays, &st->overlay_cap, st->overlay_count + 1,
                             sizeof *st->overlays) ||
            (rc = sl_overlay_new(&o))) {
            sl_free(copy);
            rc = sl_error_set(-ENOMEM, "state: out of memory opening store %s", name);
        } else {
            st->overlays[st->overlay_count++] = (struct overlay_slot){copy, o};
        }
    }
    if (rc == 0)
        *out = st->overlays[i].overlay;
    pthread_mutex_unlock(&st->databases_lock);
    return rc;
}

int sl_state_begin(sl_state_t *st, int write, MDB_txn **txn)
{
    int rc = mdb_txn_begin(st->env, NULL, write ? 0 : MDB_RDONLY, txn);
    return sl_state_error(rc, write ? "beginning a write transaction" : "beginning a read");
}

int sl_state_commit(MDB_txn *txn)
{
    return sl_state_error(mdb_txn_commit(txn), "committing");
}

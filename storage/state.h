/*
 * state.h - the node's LMDB environment (DESIGN.md section 7).
 *
 * Private header of the storage module, and its manual for everything that
 * keeps state in LMDB: consumer-group offsets (offsets.h), committed ends
 * of transactional partitions (lso.c), state stores and their changelog
 * checkpoints (store.c), `queues` later. Those modules use the MDB_env and
 * LMDB's own API directly; this file owns opening and closing it, naming
 * its databases, and turning LMDB's codes into sluice's. The system
 * databases `offsets`, `lso` and `stores` are opened with the environment;
 * each store adds one or two more (store.c).
 *
 * Layout on disk:
 *
 *   DATA/state/data.mdb   LMDB's data file: every named database
 *   DATA/state/lock.mdb   LMDB's reader table and writer mutex
 *   DATA/state/.lock      flock()ed while a sluice process has the state open
 *
 * One process per data directory. LMDB itself lets several processes share
 * an environment, but the node's write transaction is its commit lock
 * (section 7): it also orders appends to transactional partitions and their
 * `lso`, which only the node holding DATA/topics can do. A second process
 * (or a second sl_state_open() of the same directory in this process, which
 * LMDB forbids because closing either would drop the other's fcntl locks)
 * therefore fails at once with -EBUSY and a sentence naming the directory;
 * it never waits. Read-only LMDB tools (mdb_stat, mdb_dump) do not take
 * .lock and may still read a live environment.
 *
 * Durability: LMDB's default, so a commit that returned 0 has been written
 * and fsync()ed and survives the process being killed or the machine
 * crashing. The map size is address space, not disk: the data file grows
 * with what is written, up to the map size, after which writes fail with
 * -ENOSPC.
 *
 * Threads: an sl_state_t may be used from any number of threads. It is
 * opened with MDB_NOTLS, so a read-only transaction belongs to no thread and
 * a thread may hold several of them, plus at most one write transaction
 * (LMDB has one writer per environment; beginning a second write
 * transaction on a thread that already holds one deadlocks).
 *
 * Errors: LMDB returns positive errno values and its own MDB_* codes. Every
 * function here returns sluice codes instead (0, -errno, SL_E*), using
 * sl_state_error() below, which also records LMDB's own message in
 * sl_error_detail().
 */
#ifndef SL_STATE_H
#define SL_STATE_H

#include "storage/storage.h"

#include <lmdb.h>
#include <stdint.h>

/* Address space reserved for the data file; the file itself only grows
 * with use. A build may set it (e.g. 1 GiB to run the node under valgrind,
 * which cannot map 64 GiB). */
#ifdef SL_STATE_MAP_SIZE_DEFAULT
#elif SIZE_MAX > 0xffffffffu
#define SL_STATE_MAP_SIZE_DEFAULT ((size_t)64 << 30) /* 64 GiB */
#else
#define SL_STATE_MAP_SIZE_DEFAULT ((size_t)1 << 30) /* 1 GiB */
#endif
#define SL_STATE_MAX_DATABASES_DEFAULT 64 /* 3 of them are the system databases */

typedef struct sl_state sl_state_t;

/* Zero fields mean the defaults above. */
typedef struct sl_state_options {
    size_t map_size;        /* LMDB map size in bytes (rounded up to a page) */
    unsigned max_databases; /* LMDB's maxdbs: named databases, system ones included */
} sl_state_options_t;

/*
 * Opens, creating it if needed, the LMDB environment in data_dir/state
 * (data_dir is created too). opts may be NULL for the defaults. Returns 0
 * and *out, owned by the caller until sl_state_close(); -EBUSY if another
 * process (or another sl_state_t in this one) has the directory open;
 * -ENOMEM, -errno from the file system, or SL_ECORRUPT if data.mdb is not
 * an LMDB file. On failure *out is untouched and nothing is left open.
 */
int sl_state_open(const char *data_dir, const sl_state_options_t *opts, sl_state_t **out);

/* Closes the environment, releases the directory and frees st. Every
 * transaction and cursor on it must have ended; no other thread may be
 * using st. NULL is a no-op. */
void sl_state_close(sl_state_t *st);

/* The LMDB environment, for modules that keep state. Borrowed: valid until
 * sl_state_close(); never call mdb_env_close() on it. */
MDB_env *sl_state_env(sl_state_t *st);

/*
 * The handle of the named database name (created empty if it does not
 * exist), for use in any transaction on this environment. The first call for
 * a name opens it in a write transaction of its own, so it must not be made
 * by a thread that holds a write transaction; later calls only look the
 * name up. Handles stay valid until sl_state_close() (never mdb_dbi_close()
 * them). Returns 0, SL_EINVALID for an empty name, -ENOMEM, or -ENOBUFS once
 * max_databases are open.
 */
int sl_state_database(sl_state_t *st, const char *name, MDB_dbi *out);

/* Begins a transaction: read-only if write is 0, else the environment's one
 * write transaction (waiting for the current writer to finish). On success
 * *txn belongs to the caller, who ends it with sl_state_commit() or
 * mdb_txn_abort(); a write transaction whose operation failed must be
 * aborted. Returns 0 or a code as from sl_state_error(). */
int sl_state_begin(sl_state_t *st, int write, MDB_txn **txn);

/*
 * The node's commit lock (storage.h, "state stores and commits"): held from
 * before a commit takes the write transaction until the partitions it wrote
 * are visible, so that the next commit never meets records that are
 * committed in LMDB but not yet visible. Only commits that append to
 * transactional partitions take it; other writers take the write
 * transaction alone. Always taken before the write transaction.
 */
void sl_state_lock_commits(sl_state_t *st);
void sl_state_unlock_commits(sl_state_t *st);

/* Commits txn (which is freed whether or not this succeeds). Returns 0 once
 * the transaction is durable, or a code as from sl_state_error(), in which
 * case nothing of it was committed. */
int sl_state_commit(MDB_txn *txn);

/*
 * Turns the result of an LMDB call into a sluice code, and for a failure
 * records the detail "state: <what>: <LMDB's message>". what names the
 * operation ("committing offsets"). 0 stays 0 and a positive errno becomes
 * -errno. LMDB's own codes map as follows (the detail keeps the MDB_ name):
 *
 *   MDB_NOTFOUND                                    SL_ENOTFOUND
 *   MDB_KEYEXIST                                    SL_EEXISTS
 *   MDB_MAP_FULL                                    -ENOSPC  (raise map_size)
 *   MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID,
 *   MDB_VERSION_MISMATCH                            SL_ECORRUPT
 *   MDB_BAD_VALSIZE, MDB_BAD_DBI, MDB_INCOMPATIBLE  SL_EINVALID
 *   MDB_DBS_FULL, MDB_READERS_FULL, MDB_TLS_FULL,
 *   MDB_TXN_FULL, MDB_CURSOR_FULL, MDB_PAGE_FULL    -ENOBUFS (an LMDB limit)
 *   MDB_MAP_RESIZED                                 -EAGAIN
 *   MDB_PANIC, MDB_BAD_TXN, MDB_BAD_RSLOT, others   -EIO
 */
int sl_state_error(int mdb_code, const char *what);

/*
 * Overlays (overlay.c): a store's committed changes that LMDB does not hold
 * yet, shared by every handle of the store in the process (storage.h,
 * "state stores and commits", flush interval). Runs are published by
 * commits and dropped by flushes and restores; readers take views.
 */
typedef struct sl_overlay sl_overlay_t;
typedef struct sl_overlay_view sl_overlay_view_t;

/* The overlay of the store named name (created at the first ask, freed by
 * sl_state_close()). Returns 0 or -ENOMEM. */
int sl_state_overlay(sl_state_t *st, const char *name, sl_overlay_t **out);

/* The overlay of store s (store.c). */
sl_overlay_t *sl_store_overlay(const sl_store_t *s);

int sl_overlay_new(sl_overlay_t **out);
void sl_overlay_free(sl_overlay_t *o);

/* Keeps count changes (keys unique, any order, value NULL for a delete) of
 * partition's task, committed by write transaction txn. */
int sl_overlay_publish(sl_overlay_t *o, int32_t partition, uint64_t txn, const sl_record_t *changes,
                       size_t count);

/* Marks that write transaction txn flushes partition's entries into LMDB
 * (before it commits, as runs are published): readers whose transaction
 * includes it take none of the partition's earlier runs, LMDB holding all
 * they hold. *marked = 0 when the partition has no run (no mark needed).
 * The flush's drop, or the failed commit's, takes the mark with the runs. */
int sl_overlay_mark_flush(sl_overlay_t *o, int32_t partition, uint64_t txn, int *marked);

/* Drops the runs of partition (-1: every partition) published by
 * transaction min_txn or later; dropped, if newer than what the overlay
 * has, becomes its newest dropping transaction (0: none, for runs that
 * were never committed). */
void sl_overlay_drop(sl_overlay_t *o, int32_t partition, uint64_t min_txn, uint64_t dropped);

/* A reference to the current runs, read without locks until released. */
sl_overlay_view_t *sl_overlay_view(sl_overlay_t *o);
void sl_overlay_view_release(sl_overlay_view_t *v);
uint64_t sl_overlay_view_dropped(const sl_overlay_view_t *v);
size_t sl_overlay_view_runs(const sl_overlay_view_t *v);

/* The newest change of store key key[0..len) among the runs of
 * transaction txn or earlier: 1 with *value (NULL and -1 for a delete),
 * valid while v is held; 0 if the runs have none; -ENOMEM. */
int sl_overlay_view_get(const sl_overlay_view_t *v, uint64_t txn, const void *key, size_t len,
                        const void **value, int32_t *value_len);

/* A walk over a view's changes in store-key order from `from` (from_len 0:
 * the first), the newest change of each key once. */
typedef struct sl_overlay_walk {
    const sl_overlay_view_t *view;
    size_t *pos;            /* per run, in its key order */
    const uint32_t **order; /* per run: its key order */
} sl_overlay_walk_t;

/* v may be NULL (an empty walk). Returns 0 or -ENOMEM (nothing to end). */
int sl_overlay_walk_start(sl_overlay_walk_t *w, const sl_overlay_view_t *v, uint64_t txn,
                          const void *from, size_t from_len);
/* The walk's current change: 1 with it, 0 at the end. */
int sl_overlay_walk_peek(sl_overlay_walk_t *w, const uint8_t **key, size_t *key_len,
                         const void **value, int32_t *value_len);
void sl_overlay_walk_next(sl_overlay_walk_t *w);
void sl_overlay_walk_end(sl_overlay_walk_t *w);

/* LMDB's default key order: < 0, 0, > 0. */
int sl_overlay_compare_keys(const void *a, size_t a_len, const void *b, size_t b_len);

#endif

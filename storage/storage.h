/*
 * storage.h - sluice's durable, partitioned, replayable log.
 *
 * This header is the manual of the storage module. The module knows nothing
 * of Lua, operators or sockets; everything above it reaches topics through
 * the partition interface below (append, read from an offset, end offset,
 * wait for data, truncate).
 *
 * Layout on disk (DESIGN.md section 4):
 *
 *   DATA/topics/<topic>/meta                      topic configuration, text
 *   DATA/topics/<topic>/<partition>/<base>.log    RecordBatch v2 batches
 *   DATA/topics/<topic>/<partition>/<base>.index      offset -> file position
 *   DATA/topics/<topic>/<partition>/<base>.timeindex  max timestamp -> offset
 *
 * <base> is the segment's first offset written as 20 decimal digits.
 *
 * Conventions, as in LMDB: every function that can fail returns an int, 0 on
 * success, a negative errno (-ENOSPC, -EIO, ...) for a system failure, or a
 * negative SL_E* code below. sl_strerror() names both. Failures caused by a
 * user or by a file also leave a sentence naming topic/partition/offset in
 * sl_error_detail(). Nothing here aborts on bad input.
 *
 * Threads: one sl_log_t may be used from any number of threads. Appends to
 * one partition are serialised; readers never block the appender (they hold
 * a partition lock only to look up an index entry, never during I/O).
 */
#ifndef SL_STORAGE_H
#define SL_STORAGE_H

#include <stddef.h>
#include <stdint.h>

/* ---- errors --------------------------------------------------------- */

#define SL_ERROR_BASE   (-30900)
#define SL_ECORRUPT     (-30900) /* a file or batch fails its checks */
#define SL_ENOTFOUND    (-30901) /* no such topic or partition */
#define SL_EEXISTS      (-30902) /* the topic already exists */
#define SL_EINVALID     (-30903) /* a bad argument from the caller or user */
#define SL_ETOOBIG      (-30904) /* a record or batch over the configured limit */
#define SL_EDELETED     (-30905) /* the topic was deleted while in use */
#define SL_ETIMEDOUT    (-30906) /* a bounded wait ran out */
#define SL_ECOMPRESSION (-30907) /* zstd failed to compress or decompress */
#define SL_ERROR_LAST   (-30907)

/* The name of an error code: an SL_E* code, a negative errno, or 0. The
 * string is static. */
const char *sl_strerror(int code);

/* The sentence describing the last failure on this thread (empty when none).
 * Valid until the next failing call on the same thread. */
const char *sl_error_detail(void);

/* Records the detail sentence for the current thread (printf-style). Returns
 * code, so that callers can write `return sl_error_set(SL_EINVALID, ...)`. */
int sl_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- allocation ------------------------------------------------------ */

/*
 * Every allocation in sluice goes through these wrappers. Out-of-memory
 * policy: they return NULL, and every caller turns NULL into -ENOMEM for its
 * own caller; nothing aborts. sl_alloc_fail_after(n) makes the (n+1)th
 * allocation from now fail (n < 0 switches failure injection off), so tests
 * can walk every out-of-memory path.
 */
void *sl_malloc(size_t size);
void *sl_calloc(size_t count, size_t size);
/* As sl_calloc(), for a large table read at random (a hash table's slots):
 * from 4 MiB on, in transparent huge pages where the kernel allows (one TLB
 * entry per 2 MiB instead of per 4 KiB). Freed with sl_free(). */
void *sl_calloc_huge(size_t count, size_t size);
void *sl_realloc(void *ptr, size_t size);
char *sl_strdup(const char *s);
void sl_free(void *ptr);
void sl_alloc_fail_after(long n);

/* Makes room for `need` items of `item` bytes in the growable array
 * *array of capacity *cap (doubling, from 16), moving it if needed.
 * Returns 0 or -ENOMEM (the array is then unchanged). */
int sl_array_reserve(void **array, size_t *cap, size_t need, size_t item);

/* Reads a whole file into a buffer from sl_malloc (NUL-terminated, the
 * caller frees it); *n is its length. Returns 0, -ENOENT, or -errno. */
int sl_io_read_file(const char *path, char **data, size_t *n);

/* ---- diagnostics ------------------------------------------------------ */

typedef enum { SL_DEBUG = 0, SL_INFO = 1, SL_WARN = 2, SL_ERROR = 3 } sl_level_t;

/* One line on stderr: `2026-11-26T18:40:01.123Z level module: message`.
 * Lines below the threshold set by sl_report_level() are dropped. */
void sl_report(sl_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sl_report_level(sl_level_t threshold);

/* ---- records ---------------------------------------------------------- */

/* A header of a record. value_len < 0 means a null value. */
typedef struct sl_header {
    const uint8_t *name;
    int32_t name_len;
    const uint8_t *value;
    int32_t value_len;
} sl_header_t;

/*
 * A record as appended and as read back. key_len/value_len < 0 mean null
 * (a null value is a tombstone). On append, offset is ignored and a negative
 * timestamp means "now". On read, every pointer points into the reader's
 * buffers and is valid until the next call on that reader.
 */
typedef struct sl_record {
    int64_t offset;
    int64_t timestamp;
    const uint8_t *key;
    int32_t key_len;
    const uint8_t *value;
    int32_t value_len;
    const sl_header_t *headers;
    uint32_t header_count;
} sl_record_t;

/*
 * A growable set of records that owns copies of their bytes: add records
 * (their key, value and headers are copied), then take them as one array.
 * The array's pointers are valid until the next reset or free; records
 * must not be added after sl_record_set_array() until a reset. A
 * zero-initialised set is empty.
 */
typedef struct sl_record_set {
    sl_record_t *records;
    size_t count, records_cap;
    sl_header_t *headers;
    size_t header_count, headers_cap;
    char *bytes;
    size_t bytes_len, bytes_cap;
    int fixed; /* the array's pointers are real */
} sl_record_set_t;

/* Copies r into the set. Returns 0 or -ENOMEM (the set is unchanged). */
int sl_record_set_add(sl_record_set_t *s, const sl_record_t *r);

/* The records added, in order (s->count of them), pointing into the set. */
sl_record_t *sl_record_set_array(sl_record_set_t *s);

/* Empties the set, keeping its memory for reuse. */
void sl_record_set_reset(sl_record_set_t *s);

void sl_record_set_free(sl_record_set_t *s);

/* ---- topics ----------------------------------------------------------- */

typedef enum { SL_FSYNC_NEVER = 0, SL_FSYNC_INTERVAL = 1, SL_FSYNC_ALWAYS = 2 } sl_fsync_t;
typedef enum { SL_CLEANUP_DELETE = 0, SL_CLEANUP_COMPACT = 1 } sl_cleanup_t;
typedef enum { SL_COMPRESSION_NONE = 0, SL_COMPRESSION_ZSTD = 4 } sl_compression_t;
typedef enum { SL_FORMAT_JSON = 0, SL_FORMAT_RAW = 1 } sl_value_format_t;

#define SL_TOPIC_NAME_MAX 249
#define SL_OWNER_MAX      128

/* A topic's configuration, stored in its meta file. */
typedef struct sl_topic_config {
    int32_t partitions;
    int64_t retention_ms;             /* closed segments older than this go; -1 forever */
    int64_t retention_bytes;          /* per partition; -1 no limit */
    sl_cleanup_t cleanup;             /* delete (retention) or compact */
    int64_t delete_retention_ms;      /* how long compaction keeps tombstones */
    double min_cleanable_dirty_ratio; /* compact once this share of the log is new */
    sl_compression_t compression;
    int32_t compression_level; /* zstd level */
    sl_fsync_t fsync;
    int64_t fsync_interval_ms; /* for SL_FSYNC_INTERVAL */
    sl_value_format_t format;
    int64_t segment_bytes;        /* roll the active segment at this size */
    int64_t segment_ms;           /* ... or at this age */
    int32_t index_interval_bytes; /* one sparse index entry per this many bytes */
    int32_t max_batch_bytes;      /* the largest encoded batch accepted */
    char owner[SL_OWNER_MAX];     /* "" = external producers, else the pipeline */
    int32_t transactional;        /* 1: visible only up to the committed end (lso) */
} sl_topic_config_t;

/* Fills cfg with the defaults: 1 partition, retention forever, delete
 * cleanup, tombstones kept 1 day, no compression (zstd level 1 if chosen),
 * fsync interval 5 ms, JSON values, 1 GiB / 7 day segments, index every
 * 4 KiB, batches up to 16 MiB. */
void sl_topic_config_default(sl_topic_config_t *cfg);

/* Checks a topic name: 1 to 249 characters of [A-Za-z0-9._-], not "." or
 * "..". Returns 0 or SL_EINVALID with a detail. */
int sl_topic_name_check(const char *name);

/* Parses one `name=value` configuration setting (the meta file's and the
 * TOPIC CREATE options' spelling: partitions, retention.ms, retention.bytes,
 * cleanup.policy=delete|compact, delete.retention.ms,
 * min.cleanable.dirty.ratio (a decimal from 0 to 1), compression=none|zstd,
 * compression.level, fsync=never|interval|always, fsync.interval.ms,
 * format=json|raw, segment.bytes, segment.ms, index.interval.bytes,
 * max.batch.bytes, owner, transactional=false|true). Returns 0 or
 * SL_EINVALID naming the setting. A transactional topic's partitions are
 * appended only under the node's commit and read only up to their `lso`
 * (see "state stores and commits" below). */
int sl_topic_config_set(sl_topic_config_t *cfg, const char *name, const char *value);

/* Writes every setting as `name=value` lines (the meta file's form) into
 * out; returns the length, as snprintf does. */
int sl_topic_config_format(const sl_topic_config_t *cfg, char *out, size_t size);

/* ---- the log ---------------------------------------------------------- */

typedef struct sl_log sl_log_t;
typedef struct sl_topic sl_topic_t;
typedef struct sl_partition sl_partition_t;
typedef struct sl_state sl_state_t; /* the node's LMDB environment (DATA/state) */
typedef struct MDB_txn MDB_txn;     /* LMDB's (<lmdb.h>): a transaction on it */

/* Called, on a storage thread, whenever records become visible to readers
 * of a partition (after they are durable under the topic's policy).
 * end_offset is the new visible end. Must be quick and must not call back
 * into the log; a node forwards it to its event loop. */
typedef void (*sl_log_listener_fn)(void *arg, sl_partition_t *partition, int64_t end_offset);

typedef struct sl_log_options {
    /* The clock, in ms since the epoch; NULL for the wall clock. Tests set
     * it to drive retention, compaction and segment ageing. */
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
    sl_log_listener_fn listener;
    void *listener_arg;
} sl_log_options_t;

/* Opens (creating if needed) the log under dir/topics and recovers every
 * topic: torn tails are truncated, missing or inconsistent indexes rebuilt.
 * opts may be NULL. A topic that cannot be recovered is reported and left
 * closed (sl_log_topic() does not return it); the log still opens. On
 * success *out is owned by the caller until sl_log_close(). */
int sl_log_open(const char *dir, const sl_log_options_t *opts, sl_log_t **out);

/* Makes everything durable, writes indexes, marks the shutdown clean and
 * frees the log. Every reader must be closed first. */
void sl_log_close(sl_log_t *log);

/* Creates a topic. *out (if not NULL) is borrowed from the log and valid
 * until the topic is deleted or the log closed. SL_EEXISTS if it exists. */
int sl_log_create_topic(sl_log_t *log, const char *name, const sl_topic_config_t *cfg,
                        sl_topic_t **out);

/* The open topic of that name, or NULL. Borrowed, as above. */
sl_topic_t *sl_log_topic(sl_log_t *log, const char *name);

/* Deletes a topic and its files. Readers still open on it get SL_EDELETED
 * from then on. */
int sl_log_delete_topic(sl_log_t *log, const char *name);

/* Calls fn for each topic, in name order, until fn returns non-zero (which
 * is then returned). */
int sl_log_foreach_topic(sl_log_t *log, int (*fn)(void *arg, sl_topic_t *topic), void *arg);

/* Runs retention and compaction once over every topic (a node calls this
 * from a timer). Returns 0 or the first error (the others still run). */
int sl_log_maintain(sl_log_t *log);

/* The log's clock, in ms since the epoch. */
int64_t sl_log_now(const sl_log_t *log);

const char *sl_topic_name(const sl_topic_t *topic);
const sl_topic_config_t *sl_topic_config(const sl_topic_t *topic);

/* Partition i of a topic, or NULL if i is out of range. Borrowed. */
sl_partition_t *sl_topic_partition(sl_topic_t *topic, int32_t i);

/* Kafka's murmur2 hash of data (Utils.murmur2, seed 0x9747b28c). */
int32_t sl_murmur2(const void *data, size_t len);

/* The partition Kafka's default partitioner picks for a non-null key:
 * (murmur2(key) & 0x7fffffff) % partitions. partitions must be >= 1. */
int32_t sl_partition_for_key(const void *key, size_t len, int32_t partitions);

/* ---- partitions ------------------------------------------------------- */

const char *sl_partition_topic_name(const sl_partition_t *p);
int32_t sl_partition_id(const sl_partition_t *p);

/*
 * Appends count records as one batch (one write) and waits until it is
 * durable under the topic's fsync policy: the acknowledged append. On
 * success *first_offset (if not NULL) is the offset of records[0]; the
 * others follow consecutively. Fails with SL_ETOOBIG if the encoded batch
 * is over max_batch_bytes, SL_EINVALID for a null key on a compacted topic,
 * -ENOSPC/-EIO when the disk refuses (nothing is appended then, and the
 * partition accepts appends again once the cause is gone).
 */
int sl_partition_append(sl_partition_t *p, const sl_record_t *records, size_t count,
                        int64_t *first_offset);

/* As sl_partition_append() but returns once the batch is written, before it
 * is durable; pair with sl_partition_await_durable() to pipeline appends. */
int sl_partition_append_nowait(sl_partition_t *p, const sl_record_t *records, size_t count,
                               int64_t *first_offset);

/* The bytes record r may take in a batch of its own (header included,
 * uncompressed): what a partition's max.batch.bytes must allow for it. */
size_t sl_record_batch_bytes(const sl_record_t *r);

/*
 * As sl_partition_append_nowait(), for records a pipeline made, however
 * many: in batches of at most 512 KiB and half p's max.batch.bytes (a
 * larger record alone in its batch). A record over max.batch.bytes fails
 * the call with SL_ETOOBIG before anything is appended; a later failure
 * may leave the batches before it appended. *first_offset (if not NULL)
 * receives the first record's offset, *end_offset (if not NULL) the end of
 * the last batch (other writers' batches may lie between them).
 */
int sl_partition_append_split(sl_partition_t *p, const sl_record_t *records, size_t count,
                              int64_t *first_offset, int64_t *end_offset);

/* Waits until every offset below end_offset is durable. timeout_ms < 0
 * waits without bound. Returns 0, SL_ETIMEDOUT, or the write/fsync error
 * that lost those records (they are then no longer in the partition). */
int sl_partition_await_durable(sl_partition_t *p, int64_t end_offset, int timeout_ms);

/* The first offset still stored (moves forward with retention). */
int64_t sl_partition_start_offset(sl_partition_t *p);

/* The visible end: one past the last offset readers can see (durable). */
int64_t sl_partition_end_offset(sl_partition_t *p);

/* Bytes of log data stored in the partition. */
int64_t sl_partition_size_bytes(sl_partition_t *p);

/* Number of segments (closed and active). */
int32_t sl_partition_segment_count(sl_partition_t *p);

/* The first offset whose record has timestamp >= ts (Kafka's ListOffsets
 * rule). The visible end if no record qualifies. */
int sl_partition_offset_for_time(sl_partition_t *p, int64_t ts, int64_t *offset);

/* Waits until the visible end passes offset (data at offset is readable) or
 * timeout_ms passes (< 0: no bound). Returns 1 if data is there, 0 on
 * timeout, SL_EDELETED if the topic goes away meanwhile. */
int sl_partition_wait(sl_partition_t *p, int64_t offset, int timeout_ms);

/* Removes every record at or after offset (offset >= start). Used for
 * rolling back pipeline-owned partitions to their committed end. */
int sl_partition_truncate(sl_partition_t *p, int64_t offset);

/* Deletes closed segments beyond retention.ms / retention.bytes as of now.
 * *deleted (if not NULL) receives the number of segments removed. */
int sl_partition_apply_retention(sl_partition_t *p, int64_t now_ms, int *deleted);

/* Compacts the closed segments of a cleanup=compact partition: keeps the
 * newest record per key (offsets preserved), drops tombstones in segments
 * closed more than delete.retention.ms before now. Never touches the
 * active segment. A pass reads the whole partition, so it is skipped while
 * the segments closed since the last pass hold less than
 * min.cleanable.dirty.ratio of the closed segments' bytes (nothing new at
 * all, at ratio 0) and no segment's tombstones became droppable since. */
int sl_partition_compact(sl_partition_t *p, int64_t now_ms);

/* Closes the active segment and starts a new one at the end offset (no-op
 * when the active segment is empty). Segments also roll on their own by
 * size and age; this is for callers that need a boundary now. */
int sl_partition_roll(sl_partition_t *p);

/* Traffic counters of a partition since the log was opened. */
typedef struct sl_partition_stats {
    int64_t records_in, bytes_in;   /* appended (bytes: encoded batches) */
    int64_t records_out, bytes_out; /* served to consumers, as counted below */
} sl_partition_stats_t;

void sl_partition_get_stats(sl_partition_t *p, sl_partition_stats_t *out);

/* Counts records served to a consumer (a node's FETCH), for the metrics. */
void sl_partition_count_read(sl_partition_t *p, int64_t records, int64_t bytes);

/* Reference counting, for callers that keep a partition across calls that
 * might delete its topic: a referenced partition stays valid (operations on
 * a deleted one fail with SL_EDELETED) until the last sl_partition_unref. */
void sl_partition_ref(sl_partition_t *p);
void sl_partition_unref(sl_partition_t *p);

/* ---- readers ---------------------------------------------------------- */

typedef struct sl_reader sl_reader_t;

/* Opens a reader at offset (clamped up to the start offset). The reader
 * holds the partition: it stays valid even if the topic is deleted (reads
 * then fail with SL_EDELETED). Free it with sl_reader_close(). */
int sl_reader_open(sl_partition_t *p, int64_t offset, sl_reader_t **out);

/* Reads the next record into *rec (pointers valid until the next call).
 * Returns 1 for a record, 0 at the visible end (call again later, e.g.
 * after sl_partition_wait()), or an error: SL_ECORRUPT names the topic,
 * partition and offset of the bad batch in sl_error_detail(). */
int sl_reader_next(sl_reader_t *r, sl_record_t *rec);

/* Moves the reader to offset (clamped up to the start offset). */
int sl_reader_seek(sl_reader_t *r, int64_t offset);

/* The offset the next sl_reader_next() looks for. */
int64_t sl_reader_position(const sl_reader_t *r);

/* Stops reading beyond limit (exclusive); INT64_MAX for no limit. */
void sl_reader_set_limit(sl_reader_t *r, int64_t limit);

void sl_reader_close(sl_reader_t *r);

/* ---- work queues ---------------------------------------------------- */

/*
 * RabbitMQ's routing and delivery on top of the log (DESIGN.md section 9).
 * Exchanges route a message by its routing key (and headers) through
 * bindings to queues; a queue is a transactional log (one partition per
 * priority level) plus delivery state in LMDB.
 *
 * Routing rules (exchange.c) are pure functions, RabbitMQ's exactly:
 *
 *   direct   the binding's pattern equals the routing key (bytes);
 *   topic    pattern and key are words separated by '.' (an empty key is
 *            no words; "a." is "a" and an empty word); in the pattern a
 *            word "*" matches exactly one word (an empty one too) and "#"
 *            zero or more words; any other word matches itself;
 *   fanout   every binding matches;
 *   headers  the binding's arguments other than x-* ones are compared
 *            with the message headers: x-match all (the default) needs
 *            every one present with an equal value, any needs one;
 *            all-with-x / any-with-x compare x-* arguments too.
 */
typedef enum {
    SL_EXCHANGE_DIRECT = 0,
    SL_EXCHANGE_TOPIC = 1,
    SL_EXCHANGE_FANOUT = 2,
    SL_EXCHANGE_HEADERS = 3,
} sl_exchange_type_t;

/* Longest routing key and binding pattern, in bytes (AMQP's shortstr). */
#define SL_ROUTING_KEY_MAX 255

/* The type named text[0..len) ("direct", "topic", "fanout", "headers",
 * any case). Returns 0 or SL_EINVALID with a detail. */
int sl_exchange_type_parse(const char *text, size_t len, sl_exchange_type_t *out);

/* The lower-case name of a type. */
const char *sl_exchange_type_name(sl_exchange_type_t type);

/* 1 if the topic pattern matches the routing key, else 0. Both are at most
 * SL_ROUTING_KEY_MAX bytes (longer ones never match). */
int sl_exchange_topic_match(const char *pattern, size_t pattern_len, const char *key,
                            size_t key_len);

/* 1 if a headers binding with arguments args[0..nargs) matches a message
 * with headers headers[0..count), else 0. Values compare as bytes; a null
 * value equals only a null value. */
int sl_exchange_headers_match(const sl_header_t *args, size_t nargs, const sl_header_t *headers,
                              size_t count);

/* Checks a binding's pattern and arguments for an exchange of that type:
 * the pattern's length, and for headers an x-match of all, any, all-with-x
 * or any-with-x. Returns 0 or SL_EINVALID with a detail. */
int sl_exchange_binding_check(sl_exchange_type_t type, size_t pattern_len, const sl_header_t *args,
                              size_t nargs);

/* 1 if a binding (pattern, args) of an exchange of that type routes a
 * message with that key and headers, else 0. */
int sl_exchange_binding_matches(sl_exchange_type_t type, const char *pattern, size_t pattern_len,
                                const sl_header_t *args, size_t nargs, const char *key,
                                size_t key_len, const sl_header_t *headers, size_t count);

/*
 * The registry of exchanges, queues and bindings, and every queue's
 * messages and delivery state (queues.c, queue.c, queue_batch.c).
 *
 * A queue q with MAXPRIORITY n is the transactional topic "__queue.q" with
 * n + 1 partitions, partition i holding the messages of priority i. Its
 * declaration, bindings, ack floors and acknowledgements live in the
 * `queues` LMDB database; the committed end of each partition is its
 * `lso`. Messages are delivered highest priority first, FIFO (by offset)
 * within a priority; a message is ready, in flight (leased to a consumer),
 * or done (acknowledged, dead-lettered or dropped), and only done messages
 * leave the queue. Every offset below a level's ack floor is done, and
 * closed segments wholly below it are deleted.
 *
 * Changes that must be durable before they are answered (publishes, acks,
 * nacks, dead-lettering) are staged in an sl_queue_batch_t and committed
 * together: one LMDB transaction and one fsync per partition for any number
 * of them (group commit). Deliveries (pops) are not written at once: a
 * level's delivery high-water mark and the delivery count of a message that
 * goes back to ready are written with the next commit, so after a crash a
 * delivery count may be one too low, never too high.
 *
 * Threads: every function may be called from any thread; the registry has
 * one mutex. Lock order: the commit lock (sl_state_lock_commits), then the
 * LMDB write transaction, then the registry. sl_queue_batch_write() keeps
 * the registry locked until sl_queue_batch_finish().
 */
typedef struct sl_queues sl_queues_t;
typedef struct sl_queue_batch sl_queue_batch_t;
typedef struct sl_queue_consumer sl_queue_consumer_t;

/* Longest queue or exchange name: [A-Za-z0-9._-], 1 to 200 bytes. */
#define SL_QUEUE_NAME_MAX     200
#define SL_QUEUE_PRIORITY_MAX 9

typedef enum { SL_OVERFLOW_DROP_HEAD = 0, SL_OVERFLOW_REJECT_PUBLISH = 1 } sl_overflow_t;

/* A queue's options, fixed at declaration. */
typedef struct sl_queue_options {
    int32_t max_priority;   /* 0-9: priorities 0..max_priority, higher first */
    int64_t ttl_ms;         /* a message expires this long after it arrives; -1 never */
    int64_t max_length;     /* most ready messages; -1 no limit */
    sl_overflow_t overflow; /* what a publish to a full queue does */
    int32_t max_deliveries; /* dead-letter instead of the next delivery; 0 no limit */
    char dead_letter[SL_QUEUE_NAME_MAX + 1]; /* queue for dead letters; "" none */
    int64_t lease_ms;                        /* default lease of a delivery */
    int64_t segment_bytes;                   /* the queue log's segment size */
} sl_queue_options_t;

/* Fills o with the defaults: priority 0 only, no TTL, no length limit
 * (drop-head if one is set), no delivery limit, no dead-letter queue,
 * leases of 30 s, 64 MiB segments. */
void sl_queue_options_default(sl_queue_options_t *o);

/* Checks a queue or exchange name; SL_EINVALID with a detail. */
int sl_queue_name_check(const char *kind, const char *name);

/*
 * Opens the registry over the node's log and state (sl_log_attach_state()
 * done): loads the declarations and rebuilds every queue's ready and done
 * messages from its log and LMDB state (messages in flight when the node
 * stopped are ready again, their delivery counted). A queue that cannot be
 * recovered is reported and left out. *out is the caller's until
 * sl_queues_close(); log and state must outlive it.
 */
int sl_queues_open(sl_log_t *log, sl_state_t *state, sl_queues_t **out);

/* Frees the registry. Consumers and batches must be closed first. */
void sl_queues_close(sl_queues_t *qs);

/* Declares an exchange. 0 if it exists with that type already; SL_EEXISTS
 * naming the existing type otherwise; SL_EINVALID for a bad name. */
int sl_queues_declare_exchange(sl_queues_t *qs, const char *name, sl_exchange_type_t type);

/* Deletes an exchange and its bindings. SL_ENOTFOUND if there is none. */
int sl_queues_delete_exchange(sl_queues_t *qs, const char *name);

/* Declares a queue (creating its log). 0 if it exists with exactly these
 * options; SL_EEXISTS with a detail naming the first option that differs
 * otherwise; SL_EINVALID for a bad name or option. */
int sl_queues_declare_queue(sl_queues_t *qs, const char *name, const sl_queue_options_t *o);

/* Deletes a queue, its log, its bindings and its messages (also those in
 * flight: their acks then find nothing). SL_ENOTFOUND if there is none. */
int sl_queues_delete_queue(sl_queues_t *qs, const char *name);

/* Binds queue to exchange with a pattern (the routing key for direct, the
 * pattern for topic, ignored for fanout and headers) and arguments (x-match
 * and the headers to compare, for headers exchanges). Binding twice is a
 * no-op. SL_ENOTFOUND if either is missing, SL_EINVALID for a bad pattern
 * or x-match. */
int sl_queues_bind(sl_queues_t *qs, const char *exchange, const char *queue, const char *pattern,
                   size_t pattern_len, const sl_header_t *args, size_t nargs);

/* Removes the binding with exactly that pattern and arguments.
 * SL_ENOTFOUND if there is none. */
int sl_queues_unbind(sl_queues_t *qs, const char *exchange, const char *queue, const char *pattern,
                     size_t pattern_len, const sl_header_t *args, size_t nargs);

/* A message to publish; pointers are borrowed for the call. */
typedef struct sl_queue_message {
    const char *routing_key;
    size_t routing_key_len; /* at most SL_ROUTING_KEY_MAX */
    const uint8_t *payload;
    int32_t payload_len;
    const sl_header_t *headers;
    uint32_t header_count;
    int32_t priority; /* clamped to each queue's 0..max_priority */
    int64_t ttl_ms;   /* -1: only the queue's TTL applies */
} sl_queue_message_t;

/* A batch of staged changes, for one thread at a time. */
int sl_queue_batch_new(sl_queues_t *qs, sl_queue_batch_t **out);

/* Frees a batch; what is staged and not committed is abandoned (acks and
 * nacks staged in it make their messages ready again). */
void sl_queue_batch_free(sl_queue_batch_t *b);

/* 1 if nothing is staged. */
int sl_queue_batch_empty(const sl_queue_batch_t *b);

/*
 * Routes m through exchange ("" is the default exchange: it routes to the
 * queue named by the routing key) and stages one copy per queue it
 * reaches. Returns that number (0: unroutable, counted on the exchange),
 * SL_ENOTFOUND for no such exchange, SL_EINVALID for a bad message, or
 * -ENOBUFS if a queue it reaches is full with overflow reject-publish
 * (then nothing is staged anywhere; the detail names the queue).
 */
int sl_queue_batch_publish(sl_queue_batch_t *b, const char *exchange, const sl_queue_message_t *m);

/* Stages the acknowledgement of the delivery with that tag. Returns 1, 0 if
 * the tag is not in flight (acknowledged already, lease expired,
 * redelivered, or no such message), SL_ENOTFOUND for no such queue. */
int sl_queue_batch_ack(sl_queue_batch_t *b, const char *queue, uint64_t tag);

/* Rejects a delivery: with requeue it is ready again (or dead-lettered,
 * reason maxdeliveries, if it has had its deliveries), without it is
 * dead-lettered with reason rejected (dropped if the queue has no
 * dead-letter queue). Returns as sl_queue_batch_ack(). */
int sl_queue_batch_nack(sl_queue_batch_t *b, const char *queue, uint64_t tag, int requeue);

/*
 * The first half of a commit, for a caller that holds the node's commit
 * lock and the LMDB write transaction txn: appends the staged messages
 * (dead letters included), waits until they are durable, and writes their
 * committed ends (lso) and the delivery state into txn. Always follow with
 * sl_queue_batch_finish() once txn is committed (committed = 1) or aborted
 * (committed = 0, also after this failed); until then the registry stays
 * locked. Returns 0 or the error (the transaction must then be aborted).
 */
int sl_queue_batch_write(sl_queue_batch_t *b, struct MDB_txn *txn);

/* The second half: makes committed messages visible and ready and acked
 * ones done, or undoes the batch (its appends truncated, its acks and
 * nacks ready again). Empties the batch. */
void sl_queue_batch_finish(sl_queue_batch_t *b, int committed);

/* A whole commit on its own: the commit lock, a write transaction, write,
 * commit, finish. Returns 0 once every staged change is durable, or the
 * error (nothing of the batch then happened). */
int sl_queue_batch_commit(sl_queue_batch_t *b);

/* A consumer: holds deliveries, up to its prefetch limit. */
int sl_queues_consumer_open(sl_queues_t *qs, sl_queue_consumer_t **out);

/* Closes a consumer: its deliveries go back to ready (staged in b, which
 * the caller commits, are their delivery counts and the dead letters of
 * those out of deliveries). */
void sl_queues_consumer_close(sl_queues_t *qs, sl_queue_consumer_t *c, sl_queue_batch_t *b);

/* Most deliveries the consumer may hold at once; 0 no limit. */
void sl_queues_consumer_set_prefetch(sl_queues_t *qs, sl_queue_consumer_t *c, int64_t prefetch);

/* How many more deliveries the consumer may take now. */
int64_t sl_queues_consumer_room(sl_queues_t *qs, const sl_queue_consumer_t *c);

/* One delivery, as handed to an sl_queue_deliver_fn. Pointers are valid
 * during the call only. */
typedef struct sl_queue_delivery {
    uint64_t tag;       /* for ACK and NACK; names this delivery only */
    int32_t priority;   /* its level */
    int32_t deliveries; /* 1 on the first delivery; > 1: redelivered */
    int64_t timestamp;  /* when it arrived in the queue, ms */
    const char *routing_key;
    size_t routing_key_len;
    const uint8_t *payload;
    int32_t payload_len;
    const sl_header_t *headers;
    uint32_t header_count;
} sl_queue_delivery_t;

typedef void (*sl_queue_deliver_fn)(void *arg, const sl_queue_delivery_t *d);

/*
 * Delivers up to max ready messages of queue to c (fewer if its prefetch
 * limit is near), each leased for lease_ms (<= 0: the queue's default),
 * calling fn for each in delivery order. Expired messages met on the way
 * are dead-lettered into b instead. Returns the number delivered,
 * SL_ENOTFOUND for no such queue, or a read error.
 */
int sl_queue_pop(sl_queues_t *qs, sl_queue_batch_t *b, const char *queue, sl_queue_consumer_t *c,
                 int64_t max, int64_t lease_ms, sl_queue_deliver_fn fn, void *arg);

/* Ready messages of a queue, or -1 if there is no such queue. */
int64_t sl_queue_ready(sl_queues_t *qs, const char *queue);

/*
 * Time-driven work, as of the log's clock: deliveries whose lease ran out
 * go back to ready (or to dead letters), expired messages at the head of a
 * queue and the oldest messages of a queue over its length (dead letters
 * can push one over) are dead-lettered, all staged in b. Returns the next
 * time (log clock, ms) worth calling again; INT64_MAX if none.
 */
int64_t sl_queues_expire(sl_queues_t *qs, sl_queue_batch_t *b);

/* The earliest lease deadline (log clock, ms), INT64_MAX if none. It may
 * belong to a delivery that ended since: a time to call
 * sl_queues_expire() that is at worst early. */
int64_t sl_queues_next_lease(sl_queues_t *qs);

/* Updates the rates in the stats; call about once a second. */
void sl_queues_tick(sl_queues_t *qs);

/* A queue's numbers: counters since the node started, rates per second
 * (smoothed over about 10 s). */
typedef struct sl_queue_stats {
    int64_t ready, in_flight;
    int64_t published, delivered, redelivered, acked, dead_lettered;
    int64_t expired, dropped, rejected; /* dead_lettered by TTL, by max length; refused */
    double publish_rate, deliver_rate, redeliver_rate, ack_rate, dead_letter_rate;
    int64_t oldest_ready_age_ms; /* age of the oldest ready message; 0 if none */
    int64_t bytes;               /* stored in its log */
    int32_t priorities;
} sl_queue_stats_t;

/* Fills *out for queue. SL_ENOTFOUND if there is none. */
int sl_queue_stats(sl_queues_t *qs, const char *queue, sl_queue_stats_t *out);

/* Calls fn for each queue in name order (the registry locked: fn must not
 * call back into it) until fn returns non-zero, which is returned. */
int sl_queues_foreach_queue(sl_queues_t *qs,
                            int (*fn)(void *arg, const char *name, const sl_queue_stats_t *st),
                            void *arg);

/* Calls fn for each exchange in name order with its type and the messages
 * it routed to no queue, as above; first for the default exchange "". */
int sl_queues_foreach_exchange(sl_queues_t *qs,
                               int (*fn)(void *arg, const char *name, sl_exchange_type_t type,
                                         int64_t unroutable),
                               void *arg);

/* ---- state stores and commits ---------------------------------------- */

/*
 * Exactly-once processing on one node (DESIGN.md section 7) rests on three
 * things kept in the node's LMDB environment (state.h) and changed together
 * in one write transaction per commit: a task's state stores, its input
 * offsets, and the committed end (`lso`) of every transactional partition
 * it wrote.
 *
 * Transactional partitions. A topic created with transactional=true (a
 * pipeline's outputs, repartition topics, changelogs, queue logs) is
 * appended to only by commits, under the node's commit lock and write
 * transaction; readers (sl_reader_next, FETCH), waiters
 * (sl_partition_wait), sl_partition_end_offset(),
 * sl_partition_offset_for_time() and the log listener see it only up to its
 * visible end, which a commit moves to the new lso once the LMDB
 * transaction holding that lso is durable. Records appended beyond it are
 * invisible and, after a crash, truncated when the node attaches its state
 * to the log (sl_log_attach_state()). Retention and compaction leave
 * segments holding records beyond the visible end alone. Partitions of
 * other topics behave as before: visible once durable.
 *
 * Every function here that takes an MDB_txn works inside the caller's
 * transaction (a write transaction where it writes) and takes no other.
 */

#define SL_LSO_DATABASE "lso"

/* 1 if p belongs to a topic with transactional=true, else 0. */
int sl_partition_is_transactional(const sl_partition_t *p);

/* The next offset an append to p would get: one past everything written,
 * durable or not, committed or not. */
int64_t sl_partition_written_end(sl_partition_t *p);

/*
 * Makes a transactional partition visible up to end (exclusive), after the
 * transaction that recorded end as its lso committed: wakes waiters and
 * calls the log listener with end. An end at or below the visible end is a
 * no-op (commits can finish in any order). Returns 0; SL_EINVALID if p is
 * not transactional or end is beyond its durable end; SL_EDELETED.
 */
int sl_partition_set_visible_end(sl_partition_t *p, int64_t end);

/*
 * Records end as the committed end (lso) of the transactional partition p,
 * inside the caller's write transaction txn. Returns 0, SL_EINVALID (p not
 * transactional, end negative or beyond what was written), or an LMDB
 * failure as from sl_state_error() (the transaction must then be aborted).
 */
int sl_lso_put(sl_state_t *st, MDB_txn *txn, sl_partition_t *p, int64_t end);

/* Reads the committed end of (topic, partition) in a read transaction of
 * its own. Returns 0 and *end, SL_ENOTFOUND if none was committed, or an
 * error. */
int sl_lso_get(sl_state_t *st, const char *topic, int32_t partition, int64_t *end);

/* Deletes the committed ends of every partition of topic in a write
 * transaction of its own (so not by a thread holding one). 0 also when
 * there were none. sl_log_delete_topic() does this itself once the log has
 * its state. */
int sl_lso_delete_topic(sl_state_t *st, const char *topic);

/*
 * Gives the log the node's state and recovers every transactional
 * partition: each is truncated to its committed end (to its start offset if
 * it never committed) and made visible up to there. A state that has never
 * met a log (first start, or DATA/state deleted: nothing is known) instead
 * adopts every durable record as committed, so that changelogs can restore
 * stores in full. Also deletes the committed ends of topics that no longer
 * exist. From then on, deleting a transactional topic deletes its committed
 * ends too (so sl_log_delete_topic() must not then be called by a thread
 * holding the write transaction). Call once, after opening both and before
 * anything reads or appends; until then a transactional partition looks
 * empty. Every partition is tried; returns 0 or the first error (a
 * partition whose committed end cannot be read stays as it was, with a
 * report). st must outlive the log.
 */
int sl_log_attach_state(sl_log_t *log, sl_state_t *st);

/*
 * State stores. A store is one named LMDB database of a pipeline's
 * operator, shared by all the pipeline's tasks (their keys differ: a task
 * owns the keys of its partition). Two kinds:
 *
 *   kv      store key = key (1 to SL_STORE_KEY_MAX bytes)
 *   window  store key = key || be64(window_start with its sign bit
 *           flipped), so a key's windows sort by start; keys of 1 to
 *           SL_WINDOW_KEY_MAX bytes. A second database indexes the windows
 *           by start, for expiry.
 *
 * Keys are bytes, compared as LMDB does (memcmp, then length). The store
 * key is also the key of the store's changelog records. A key over the
 * limit (LMDB's 511-byte key size) or empty is refused with SL_EINVALID.
 *
 * Reads run in any LMDB transaction the caller holds, read-only ones from
 * any thread (sl_state_begin(st, 0, &txn)), and never block commits;
 * returned value pointers point into LMDB's map and are valid until that
 * transaction ends. Writes (sl_store_apply, checkpoints) run inside the
 * caller's write transaction.
 */

#define SL_STORE_KEY_MAX  511
#define SL_WINDOW_KEY_MAX (SL_STORE_KEY_MAX - 8)

typedef enum { SL_STORE_KV = 1, SL_STORE_WINDOW = 2 } sl_store_kind_t;

typedef struct sl_store sl_store_t;

/*
 * Opens (creating it empty the first time) the store `name` of pipeline
 * `pipeline`: database "store:<pipeline>.<name>" (and "store-time:..." for
 * a window store). Both names must be such that "<pipeline>.<name>.changelog"
 * is a valid topic name. The kind is recorded at creation; opening with
 * another kind is SL_EINVALID. Uses a write transaction of its own the
 * first time (so not from a thread holding one), and one of
 * max_databases (state.h) per database. *out is the caller's until
 * sl_store_close(); it may be used from several threads for reads.
 */
int sl_store_open(sl_state_t *st, const char *pipeline, const char *name, sl_store_kind_t kind,
                  sl_store_t **out);

/*
 * Opens the existing store of full name `name`, "<pipeline>.<store>" as
 * sl_store_name() gives it, with the kind it was created with: for readers
 * that know a store only by name (a node's GET, WINDOWS, SCAN). Returns 0
 * and *out (the caller's until sl_store_close()); SL_ENOTFOUND if no store
 * of that name was ever opened with sl_store_open(); SL_EINVALID for a
 * name no store can have (empty, too long, not a topic name's characters);
 * SL_ECORRUPT if its recorded kind is damaged; or an LMDB failure. The
 * first open of a store's databases in this process takes a write
 * transaction of its own (so not from a thread holding one); later opens
 * only read. Stores are never dropped, so a handle stays valid until
 * sl_state_close().
 */
int sl_store_open_existing(sl_state_t *st, const char *name, sl_store_t **out);

/* Frees the handle (the data stays in LMDB). NULL is a no-op. */
void sl_store_close(sl_store_t *s);

/* "<pipeline>.<name>"; borrowed, valid until sl_store_close(). */
const char *sl_store_name(const sl_store_t *s);

/* "<pipeline>.<name>.changelog", the store's changelog topic; borrowed. */
const char *sl_store_changelog_topic(const sl_store_t *s);

sl_store_kind_t sl_store_kind(const sl_store_t *s);
sl_state_t *sl_store_state(const sl_store_t *s);

/* 0 if key_len is a valid key length for the store, else SL_EINVALID with
 * a sentence naming the store and the limit. */
int sl_store_check_key(const sl_store_t *s, size_t key_len);

/* Writes the window store key of (key, window_start) into out (room for
 * key_len + 8 bytes); returns its length. */
size_t sl_store_window_key(uint8_t *out, const void *key, size_t key_len, int64_t window_start);

/* Splits a window store key: 0 with the key's length (the key is the first
 * *key_len bytes) and *window_start, or SL_ECORRUPT if len is not 9 to
 * SL_STORE_KEY_MAX. */
int sl_store_window_split(const void *store_key, size_t len, size_t *key_len,
                          int64_t *window_start);

/*
 * Reads. A task's own handle (sl_store_open) reads LMDB as of txn. A
 * reader's handle (sl_store_open_existing: queries, feature views) reads
 * the store as committed by txn's time: LMDB's entries and, over them, the
 * commits whose changes LMDB does not hold yet (tasks write their entries
 * into LMDB only every flush interval; see sl_cache_set_flush_interval).
 * Values read are valid until txn ends, the handle's next read in another
 * transaction, or sl_store_read_done(); a reader's handle is used by one
 * thread at a time.
 */

/* Lets go of what a reader's handle keeps for the reads of its last
 * transaction (call it when the transaction ends; else its next read or
 * sl_store_close() does). */
void sl_store_read_done(sl_store_t *s);

/*
 * Reads of several stores that must show one committed state (a feature
 * vector over two aggregates) begin together: sl_store_views_lock(),
 * begin or renew the read transaction, sl_store_view_take() for every
 * store it will read, sl_store_views_unlock(). (A store read without it
 * still shows one committed state of its own, maybe a newer one than the
 * transaction's.) The lock is held only that long; commits take it to drop
 * what they flushed.
 */
void sl_store_views_lock(sl_state_t *st);
void sl_store_views_unlock(sl_state_t *st);
void sl_store_view_take(sl_store_t *s, MDB_txn *txn);

/* Reads a kv store's value of key in txn: 0 with *value and *value_len;
 * SL_ENOTFOUND; SL_EINVALID for a bad key or a window store; or an LMDB
 * failure. */
int sl_store_get(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len, const void **value,
                 size_t *value_len);

/* As sl_store_get() for one window of a window store. */
int sl_store_get_window(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len,
                        int64_t window_start, const void **value, size_t *value_len);

/* As sl_store_get() by store key, for either kind. */
int sl_store_get_key(sl_store_t *s, MDB_txn *txn, const void *store_key, size_t len,
                     const void **value, size_t *value_len);

/* Called per window; value valid during the call. A non-zero return stops
 * the walk and is returned by it (so return a value that cannot be taken
 * for an error, e.g. 1). */
typedef int (*sl_window_fn)(void *arg, int64_t window_start, const void *value, size_t value_len);

/* Calls fn for each window of key with from <= window_start <= to, in
 * start order, as of txn. Returns 0, fn's non-zero return, SL_EINVALID
 * (bad key, kv store) or an LMDB failure. */
int sl_store_windows(sl_store_t *s, MDB_txn *txn, const void *key, size_t key_len, int64_t from,
                     int64_t to, sl_window_fn fn, void *arg);

/* Called per entry, with its store key; as sl_window_fn otherwise. */
typedef int (*sl_entry_fn)(void *arg, const void *store_key, size_t key_len, const void *value,
                           size_t value_len);

/* Calls fn for every entry of the store, in store-key order, as of txn.
 * Returns 0, fn's non-zero return, or an LMDB failure. */
int sl_store_foreach(sl_store_t *s, MDB_txn *txn, sl_entry_fn fn, void *arg);

/* As sl_store_foreach() in a read transaction of its own: the committed
 * entries (a task rebuilding what it keeps in memory at start). */
int sl_store_foreach_committed(sl_store_t *s, sl_entry_fn fn, void *arg);

/* The start of the newest window the store holds, committed (any
 * partition's), from the end of its time index: 0, SL_ENOTFOUND when it
 * holds none, or an error. Window stores only. */
int sl_store_newest_window(sl_store_t *s, int64_t *start);

/* As sl_store_foreach() from the first entry whose store key is at or
 * after from[0..from_len) in LMDB's order (from_len 0: the first entry):
 * a cursor for paging through a store. SL_EINVALID if from_len is over
 * SL_STORE_KEY_MAX. */
int sl_store_foreach_from(sl_store_t *s, MDB_txn *txn, const void *from, size_t from_len,
                          sl_entry_fn fn, void *arg);

/* Calls fn (value NULL) with the store key of up to max windows whose start
 * is from `from` (INT64_MIN: the oldest) to before cutoff, oldest first, as
 * of txn: what expiry deletes. Window stores only. Returns as
 * sl_store_foreach(). */
int sl_store_expired(sl_store_t *s, MDB_txn *txn, int64_t from, int64_t cutoff, size_t max,
                     sl_entry_fn fn, void *arg);

/*
 * Writes count changes into the caller's write transaction: record i's key
 * is a store key, its value the new value or null (value_len < 0) to
 * delete it (a delete of an absent key is no error); timestamps and
 * headers are ignored. The changes should be sorted by key (LMDB writes
 * them about 5 times faster so) and keys should be unique (the last one
 * wins). Returns 0, SL_EINVALID for a bad key (nothing after it is
 * written), or an LMDB failure (-ENOSPC when the map is full); after a
 * failure the transaction must be aborted.
 */
int sl_store_apply(sl_store_t *s, MDB_txn *txn, const sl_record_t *changes, size_t count);

/*
 * Checkpoints. The checkpoint of (store, partition) is the offset of the
 * store's changelog partition up to which (exclusive) the store's entries
 * of that partition are in LMDB. A commit writes it in the same
 * transaction as the entries (sl_commit_*), a restore as it goes, so it
 * always describes LMDB exactly; a store is behind its changelog when the
 * checkpoint is below the changelog's end (sl_store_restore_needed()).
 */

/* Reads the checkpoint in txn: 0 and *offset, SL_ENOTFOUND if none was
 * written (the store has nothing of that partition), SL_ECORRUPT, or an
 * LMDB failure. */
int sl_store_checkpoint_get(sl_store_t *s, MDB_txn *txn, int32_t partition, int64_t *offset);

/* The same in a read transaction of its own (PIPELINE DESCRIBE). */
int sl_store_checkpoint_read(sl_store_t *s, int32_t partition, int64_t *offset);

/* Writes the checkpoint in the caller's write transaction. SL_EINVALID for
 * a negative partition or offset. */
int sl_store_checkpoint_put(sl_store_t *s, MDB_txn *txn, int32_t partition, int64_t offset);

/*
 * A per-task write cache over one store. Operators put and delete into it
 * and read through it (the cache first, then LMDB as of the last flush);
 * nothing reaches LMDB until a commit flushes it. Dirty entries stay until
 * the commit that wrote them to the changelog; unflushed ones until the
 * commit that also wrote them into LMDB (every commit, or every flush
 * interval: sl_cache_set_flush_interval()); then they stay as a read cache
 * until the cache holds more than half its budget after a flush, when it
 * is emptied. So the cache always holds every change LMDB lacks. A cache
 * belongs to one thread at a time.
 *
 * Pointers returned by reads are valid until the next call on the cache.
 */
typedef struct sl_cache sl_cache_t;

/* A cache of at most max_bytes (0: 64 MiB) over store, which must outlive
 * it. Returns 0 or -ENOMEM. */
int sl_cache_new(sl_store_t *store, size_t max_bytes, sl_cache_t **out);
void sl_cache_free(sl_cache_t *c);

/* Sets key's value (a kv store). Returns 0, or 1 when the cache is now
 * full: commit before putting more (the put itself was taken). Errors:
 * SL_EINVALID (bad key, window store), SL_ETOOBIG, -ENOMEM. */
int sl_cache_put(sl_cache_t *c, const void *key, size_t key_len, const void *value,
                 size_t value_len);

/* Deletes key (a kv store); returns as sl_cache_put(). */
int sl_cache_delete(sl_cache_t *c, const void *key, size_t key_len);

/* Reads key (a kv store): 1 with *value and *value_len, 0 if it has no
 * value, or an error. */
int sl_cache_get(sl_cache_t *c, const void *key, size_t key_len, const void **value,
                 size_t *value_len);

/* The same for one window of a window store. */
int sl_cache_window_put(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                        const void *value, size_t value_len);
int sl_cache_window_delete(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start);
int sl_cache_window_get(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                        const void **value, size_t *value_len);

/* As sl_cache_window_get() without looking in LMDB: for a window the caller
 * knows was never committed (e.g. one starting after every event time a
 * commit has seen). 1 with the value, 0 if the cache has none. */
int sl_cache_window_get_cached(sl_cache_t *c, const void *key, size_t key_len, int64_t window_start,
                               const void **value, size_t *value_len);

/* Prefetching for a caller that knows the windows it will read a few
 * records ahead (an aggregate reading its source's records). The cache's
 * table is far larger than the CPU's caches, so a lookup is three memory
 * latencies in a row (the slot, the entry, the key's bytes); each stage
 * here starts one of them for a later lookup, so that they overlap with
 * other work. Stage 0 returns the hash of (key, window_start), 0 for a key
 * the store refuses, and asks for its slot; stage 1, given that hash, its
 * entry; stage 2 its key and value bytes. Call them a record or more apart,
 * in that order. Only hints: nothing changes, and a lookup that finds
 * things moved since (a grown table, an emptied cache) is merely slower. */
uint64_t sl_cache_window_prefetch(sl_cache_t *c, const void *key, size_t key_len,
                                  int64_t window_start);
/* The same stage 0 for a key of a kv store (0 for a window store). */
uint64_t sl_cache_key_prefetch(sl_cache_t *c, const void *key, size_t key_len);
void sl_cache_prefetch(const sl_cache_t *c, uint64_t hash, int stage);

/* Calls fn for each window of key with from <= start <= to, in start
 * order, as the task sees them: the cache's over LMDB's. Returns as
 * sl_store_windows(). */
int sl_cache_windows(sl_cache_t *c, const void *key, size_t key_len, int64_t from, int64_t to,
                     sl_window_fn fn, void *arg);

/* As sl_cache_windows() without looking in LMDB: for a range the caller
 * knows holds no window that was committed without staying in the cache
 * (see sl_cache_clears()). */
int sl_cache_windows_cached(sl_cache_t *c, const void *key, size_t key_len, int64_t from,
                            int64_t to, sl_window_fn fn, void *arg);

/*
 * Deletes, as ordinary cached deletes (so the next commit writes them and
 * their changelog tombstones), every window starting before cutoff: those
 * in the cache, and up to max (0: no limit) of those in LMDB, oldest
 * first. *count (if not NULL) receives how many were deleted; with a
 * limit, call again after the commit while it reaches max. Window stores
 * only.
 */
int sl_cache_expire(sl_cache_t *c, int64_t cutoff, size_t max, size_t *count);

/* Says which store keys are the cache's task's: those of its partition.
 * Several tasks share a store, each writing its own keys; expiry then
 * deletes only the stored windows owner accepts (each task expires its
 * own, by its own stream time). */
typedef int (*sl_owner_fn)(void *arg, const void *store_key, size_t len);
void sl_cache_set_owner(sl_cache_t *c, sl_owner_fn owner, void *arg);

/* The store the cache is over. */
sl_store_t *sl_cache_store(const sl_cache_t *c);

/* 1 if the cache is at or over its budget. */
int sl_cache_is_full(const sl_cache_t *c);

/* Bytes the cache's entries take (key and value bytes, entries, their
 * share of the hash tables): what its budget counts. */
size_t sl_cache_bytes(const sl_cache_t *c);

/* How many entries the next commit writes. */
size_t sl_cache_dirty_count(const sl_cache_t *c);

/*
 * The changes the next commit writes, in the order the entries first
 * changed since the last commit (unsorted: a flush sorts what it writes):
 * one record per dirty entry with key = store key and value = the value or
 * null for a delete (timestamp -1: "now" when appended). This is what goes
 * to the changelog and, between flushes, to the overlay. The array and its
 * bytes belong to the cache, valid until it is next changed or flushed.
 */
int sl_cache_changes(sl_cache_t *c, const sl_record_t **records, size_t *count);

/* Called with one change of sl_cache_changes(); non-zero stops the walk. */
typedef int (*sl_change_fn)(void *arg, const sl_record_t *change);

/*
 * Calls fn for every entry changed since the last call (put, or deleted:
 * value NULL), once, in the order sl_cache_changes() lists them,
 * and forgets that they changed: what an operator that reports each change
 * once (an aggregate's on_update results) takes before each commit. The
 * walk reads the changes in place: fn must not change the cache. Returns
 * 0, -ENOMEM, or what fn returned (the entries after it stay
 * changed).
 */
int sl_cache_take_changed(sl_cache_t *c, sl_change_fn fn, void *arg);

/*
 * The flush interval, in ms: commits write the entries changed since the
 * last flush into LMDB (with the checkpoint) only once it has passed since
 * then; the commits between write the changes to the changelog alone, and
 * readers see them through the store's overlay (sl_store_read_done()). A
 * crash then leaves LMDB behind its changelog, and the store is restored
 * from its checkpoint on: state costs one LMDB write per entry per
 * interval instead of per commit. Flushes come earlier when the cache or
 * the changes since the last flush pass half the cache's budget, and when
 * the commit asks (a task that stops). 0 (the default): every commit.
 */
void sl_cache_set_flush_interval(sl_cache_t *c, int64_t ms);

/* Changed entries LMDB lacks (0 after a flush). */
size_t sl_cache_unflushed_count(const sl_cache_t *c);

/* 1 if the next commit would write the unflushed entries into LMDB
 * unasked (see above), else 0. */
int sl_cache_flush_due(const sl_cache_t *c);

/* Step 3 of a commit for the cache: writes the entries changed since the
 * last flush into the caller's write transaction (sl_store_apply()) if a
 * flush is due or force is set, and says so in *wrote (the checkpoint may
 * then move). The entries stay dirty and unflushed until
 * sl_cache_committed(). */
int sl_cache_flush(sl_cache_t *c, MDB_txn *txn, int force, int *wrote);

/* Tells the cache that the transaction its flush went into committed: the
 * entries become clean. Not calling it after a failed commit keeps them
 * dirty for the next attempt. */
void sl_cache_committed(sl_cache_t *c);

/* Empties the cache, dirty and unflushed entries too (their changes are
 * dropped): for a task that starts over from the state in LMDB. */
void sl_cache_clear(sl_cache_t *c);

/* How many times the cache has been emptied (sl_cache_clear(), or by
 * sl_cache_committed() once over half its budget). Until it is next
 * emptied, everything the store gets from the cache's flushes stays in the
 * cache, so a caller that knows what the store held before can tell a
 * cache miss means "not stored" without asking LMDB. */
uint64_t sl_cache_clears(const sl_cache_t *c);

/*
 * Changelogs. Every change a commit writes to a store is also appended,
 * under the same commit, to partition p of the store's changelog topic
 * "<pipeline>.<store>.changelog" (p = the task's partition): key = the
 * store key (for a window store key || be64(window start), so the window
 * round-trips), value = the new value, null = the entry was deleted. The
 * records sl_cache_changes() returns are exactly these. The topic is
 * compacted and transactional, so it holds the newest committed change of
 * every key, and a store whose LMDB data is missing (DATA/state deleted, a
 * new node) or behind is rebuilt from it.
 */

/* Fills cfg for a changelog topic: the defaults, then `partitions`,
 * cleanup.policy=compact, transactional=true, format=raw, owner (NULL for
 * none). */
void sl_changelog_topic_config(sl_topic_config_t *cfg, int32_t partitions, const char *owner);

/* Checks a changelog record read back for store s: 0, or SL_ECORRUPT
 * naming its offset when its key is null or not a store key of s. */
int sl_changelog_check(const sl_store_t *s, const sl_record_t *r);

/*
 * Whether store s must be restored from changelog, a partition of its
 * changelog topic: 1 if its checkpoint for that partition is below the
 * changelog's visible end (or missing while the changelog has records),
 * with *from = where restoring starts; 0 if it is up to date; or an error.
 * A checkpoint beyond the changelog's end (the changelog lost records) is
 * reported and counts as up to date. to >= 0 stands for the end where it
 * is smaller (a source serving as the changelog: up to the committed
 * input offset).
 */
int sl_store_restore_needed(sl_store_t *s, sl_partition_t *changelog, int64_t to, int64_t *from);

/* What a restore has done so far. */
typedef struct sl_restore_progress {
    const char *store; /* sl_store_name() */
    int32_t partition; /* of the changelog */
    int64_t from, to;  /* the offsets restored: [from, to) */
    int64_t position;  /* restored and committed up to here (exclusive) */
    int64_t records;   /* changelog records read */
    int64_t bytes;     /* their key and value bytes */
    int64_t entries;   /* entries written (the last change of a key per batch) */
    double seconds;    /* since the restore started */
} sl_restore_progress_t;

/* Called after each committed batch of a restore (and never after a
 * failure). */
typedef void (*sl_restore_fn)(void *arg, const sl_restore_progress_t *progress);

typedef struct sl_restore_options {
    /* A batch, written in one LMDB transaction, ends at batch_records
     * records (0: 1048576) or once it holds batch_bytes key and value
     * bytes (0: 128 MiB), whichever comes first. */
    size_t batch_records, batch_bytes;
    sl_restore_fn progress;
    void *progress_arg;
    /* A table's source topic serving as its changelog (the topic is
     * compacted, so it keeps every key's newest record): restore up to
     * `to` (the committed input offset) instead of the visible end, and
     * skip records without a key (a table never held them). 0: a
     * changelog topic, to unused. */
    int source;
    int64_t to;
} sl_restore_options_t;

/*
 * Restores store s's entries of one partition from changelog (that
 * partition of its changelog topic), from the checkpoint to the visible end
 * as of the call: batches of records, each reduced to the last change per
 * key, written in key order with the checkpoint in one write transaction
 * apiece (so a crash resumes at the last batch). Logs its start and end,
 * calls opts->progress per batch; opts may be NULL. *result (if not NULL)
 * receives the final progress. Returns 0 (also when nothing was to do), or
 * the first error: SL_ECORRUPT for a record that is no store change, a
 * read or LMDB failure. Run it before the partition's task starts (its
 * cache would not see the restored entries) and not from a thread holding
 * the write transaction.
 */
int sl_store_restore(sl_store_t *s, sl_partition_t *changelog, const sl_restore_options_t *opts,
                     sl_restore_progress_t *result);

/*
 * Commits. The protocol of DESIGN.md section 7, which a task follows every
 * commit interval (sl_commit_* below do steps 1 to 4 in this order):
 *
 *   1. Take the node's commit lock and its LMDB write transaction
 *      (sl_commit_begin). LMDB has one writer: this orders all commits.
 *   2. Append the task's buffered outputs to their transactional partitions
 *      (sl_commit_append) and each store cache's changes to partition p of
 *      the store's changelog (sl_commit_store); then fsync every partition
 *      appended to and wait until all is durable (inside sl_commit_end).
 *      Nothing of it is visible to readers yet.
 *   3. In the same transaction write the caches' entries and each store's
 *      checkpoint (the changelog end just reached) where a flush is due
 *      (sl_cache_set_flush_interval; else the changes go into the store's
 *      overlay, for readers), the task's input offsets (sl_commit_offset)
 *      and each appended partition's new end into `lso` (sl_commit_end).
 *   4. Commit the transaction (LMDB fsyncs it); then make each partition
 *      visible up to its new lso, mark the caches clean and release the
 *      lock (sl_commit_end).
 *
 * What a crash at each point leaves, once the node restarts, attaches the
 * state to the log (which cuts every transactional partition to its lso)
 * and resumes each task from its committed input offsets:
 *
 *   during 1-3    LMDB still holds the previous commit: state, offsets and
 *                 lso. The records appended in step 2 lie beyond lso and
 *                 are cut; the task reprocesses its inputs from the old
 *                 offsets and appends its outputs again. No reader ever saw
 *                 the cut records. No loss, no duplicate.
 *   during 4      LMDB's commit is atomic: either as above, or as below.
 *   after 4's     LMDB holds the new state, offsets and lso, which cover
 *   LMDB commit   exactly the records appended (they were durable before
 *                 the commit): recovery makes them visible (if step 4 had
 *                 not yet) and the task continues from the new offsets.
 *
 * The state a commit that did not flush leaves in LMDB is the last flush's;
 * the checkpoint says so, and the changes since are in the changelog up to
 * lso: the store is behind its changelog after a crash, and restoring it
 * from the checkpoint (sl_store_restore) before its task starts gives the
 * state of the last commit exactly.
 *
 * A failure that is no crash (a full disk, an fsync or LMDB error) aborts
 * the commit: the transaction is aborted and every partition is cut back to
 * where the commit found it (sl_commit_abort, also done by a failing
 * sl_commit_end). The caches keep their changes dirty and the task keeps
 * its buffered outputs, so it may retry the whole commit, or give up and
 * restart from the committed state (sl_cache_clear).
 *
 * Transactional partitions must be appended to only through commits, and
 * a store's cache changed by its task only, never during its commit. A
 * store whose LMDB data is missing or behind its changelog (the state was
 * lost: the log was then adopted, see sl_log_attach_state) is restored
 * with sl_store_restore() before its task starts. Input offsets live only
 * in LMDB: a task whose offsets were lost with DATA/state starts from
 * wherever its runtime starts tasks without committed offsets.
 */
typedef struct sl_commit sl_commit_t;

/* A commit helper for one task (reusable, one commit at a time). Returns 0
 * or -ENOMEM. Freeing one in progress aborts it. */
int sl_commit_new(sl_state_t *st, sl_commit_t **out);
void sl_commit_free(sl_commit_t *c);

/* Step 1: takes the commit lock and the write transaction (waiting for the
 * commit in progress). The calling thread must not hold the write
 * transaction already. Returns 0 or an LMDB failure (nothing is then
 * held); SL_EINVALID if this helper's commit is already in progress. */
int sl_commit_begin(sl_commit_t *c);

/* The commit's write transaction, for writes of the caller's own that must
 * commit with it (e.g. queue delivery state). Valid until the commit ends. */
MDB_txn *sl_commit_txn(sl_commit_t *c);

/*
 * Step 2: appends records to the transactional partition p as
 * sl_partition_append_split() does (not yet durable, not visible);
 * *first_offset (if not NULL) receives the
 * first one's offset. p's new lso will be the end of its last append in
 * this commit. SL_EINVALID for a partition that is not transactional;
 * otherwise as sl_partition_append_split(). After a failure, abort.
 */
int sl_commit_append(sl_commit_t *c, sl_partition_t *p, const sl_record_t *records, size_t count,
                     int64_t *first_offset);

/* Step 2 for a store: appends the cache's changes (sl_cache_changes) to
 * changelog, its changelog's partition of the task, and has step 3 write
 * them and the checkpoint. A cache without changes costs nothing. Each
 * cache at most once per commit (SL_EINVALID). */
int sl_commit_store(sl_commit_t *c, sl_cache_t *cache, sl_partition_t *changelog);

/* Step 2 for a store whose changelog is the source topic it was read from
 * (a table over a compacted topic): nothing is appended; step 3 writes
 * the cache's changes and the checkpoint `offset` (the input offset the
 * commit records) for `partition`. Each cache at most once per commit. */
int sl_commit_store_at(sl_commit_t *c, sl_cache_t *cache, int32_t partition, int64_t offset);

/* Has step 3 write every cache's unflushed entries into LMDB, whatever
 * their flush intervals (a task that stops: it then needs no restore). */
void sl_commit_flush_all(sl_commit_t *c);

/* Step 3: records the task's input offset (the next offset to read) of
 * (topic, partition) for group, as sl_offsets_put(). */
int sl_commit_offset(sl_commit_t *c, const char *group, const char *topic, int32_t partition,
                     int64_t offset);

/*
 * Steps 2 (the fsync) to 4. Returns 0 once committed and visible; or the
 * failure, after which the commit is aborted as sl_commit_abort() does. In
 * both cases the lock is released and the helper is ready for the next
 * begin.
 */
int sl_commit_end(sl_commit_t *c);

/* Aborts the commit in progress (a no-op if none): aborts the transaction,
 * cuts every partition appended to back to where the commit found it,
 * releases the lock. The caches stay dirty. */
void sl_commit_abort(sl_commit_t *c);

/* ---- durations ------------------------------------------------------- */

#define SL_DURATION_MAX 10000000000000LL /* 1e13 ms, about 317 years */

/*
 * Parses a duration (duration.c): a decimal integer followed by a unit,
 * "ms", "s", "m", "h" or "d" ("500ms", "10s", "5m", "1h", "1d"), or a bare
 * integer meaning milliseconds ("1500"). No sign, spaces, fractions or other
 * units. Returns 0 and *ms in 0..SL_DURATION_MAX, or SL_EINVALID with a
 * detail quoting the text and saying what is wrong (empty, not a number,
 * unknown unit, over SL_DURATION_MAX); *ms is then unchanged.
 */
int sl_duration_parse(const char *text, int64_t *ms);

/* The monotonic clock in ms (duration.c): for intervals, never dates. */
int64_t sl_monotonic_ms(void);

#endif

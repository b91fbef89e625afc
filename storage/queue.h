/*
 * queue.h - internals of the work queues, shared by queues.c (the registry
 * and the declarations), queue.c (one queue's messages and deliveries) and
 * queue_batch.c (staging and group commit). The manual is the work-queues
 * section of storage.h.
 *
 * LMDB layout, database `queues`. Names are [A-Za-z0-9._-] (never 0x00),
 * so "name 0x00" is a prefix of exactly one queue's keys:
 *
 *   Key                                  Value
 *   'E' name                             1 byte: the exchange type
 *   'Q' name                             the queue's options (below)
 *   'B' be32 id                          a binding (below)
 *   'L' name 0x00 level                  be64 ack floor, be64 cursor
 *   'A' name 0x00 level be64 chunk       512 bytes: bit i (byte i / 8, bit
 *                                        i % 8) set if offset
 *                                        chunk * 4096 + i is done
 *   'D' name 0x00 level be64 offset      be32 delivery count
 *
 * A level's ack floor: every offset below it is done. Its cursor: offsets
 * at or past it were never delivered (so after a crash a message below it
 * counts one delivery more than its 'D' entry, if any, says). 'A' chunks
 * record the done messages at or past the floor; a chunk with no bit set
 * is not stored. 'D' holds the count of a message that went back to ready
 * after a delivery; it goes when the message is done. The committed end of
 * each level is the `lso` of its partition (storage.h, "state stores and
 * commits").
 *
 *   Queue options (value of 'Q')
 *   offset  size  field
 *   0       1     format version, 1
 *   1       1     max priority, 0-9
 *   2       8     TTL ms, be64 (-1: none)
 *   10      8     max length, be64 (-1: none)
 *   18      1     overflow: 0 drop-head, 1 reject-publish
 *   19      4     max deliveries, be32 (0: none)
 *   23      8     lease ms, be64
 *   31      8     segment bytes, be64
 *   39      n     dead-letter queue name, n = 0..200
 *
 *   Binding (value of 'B')
 *   exchange 0x00 queue 0x00 be16 pattern length, pattern, be16 argument
 *   count, then per argument be32 name length, name, be32 value length
 *   (0xffffffff: null), value
 *
 *   A queue log record (one per message)
 *   timestamp  when the message arrived in this queue, ms
 *   key        be64 expiry time (ms, 0: never), then the routing key
 *   value      the payload
 *   headers    the message's headers; a dead letter also carries
 *              x-death-reason, x-original-queue and x-delivery-count
 *
 *   Delivery tag (an integer below 2^63)
 *   bits 0-3 level, bits 4-11 delivery count mod 256, bits 12-62 offset
 */
#ifndef SL_QUEUE_H
#define SL_QUEUE_H

#include "storage/partition.h"
#include "storage/state.h"

#define SL_QUEUES_DATABASE "queues"
#define SL_QUEUE_TOPIC     "__queue."
#define SL_QUEUE_LEVELS    (SL_QUEUE_PRIORITY_MAX + 1)
#define SL_ACK_CHUNK       4096 /* offsets per 'A' entry */
#define SL_QUEUE_KEY_MAX   (1 + SL_QUEUE_NAME_MAX + 1 + 1 + 8)

/* Message states. READY messages are counted in their level's `ready`;
 * PENDING ones have an ack or dead-lettering staged in a batch, which
 * makes them COMMITTING while it is written and DONE once committed. */
enum { SL_QMSG_READY, SL_QMSG_IN_FLIGHT, SL_QMSG_PENDING, SL_QMSG_COMMITTING, SL_QMSG_DONE };

#define SL_QMSG_COUNT_STORED 1 /* a 'D' entry exists for it */

/* One message of a level, in memory. */
typedef struct sl_qmsg {
    int64_t timestamp;
    int64_t expires_at;  /* 0: never */
    uint32_t consumer;   /* in flight: the slot of the consumer holding it */
    uint16_t deliveries; /* saturates at UINT16_MAX */
    uint8_t state;
    uint8_t flags;
} sl_qmsg_t;

/* One priority level: a partition and its messages [floor, end). */
typedef struct sl_qlevel {
    sl_partition_t *partition; /* referenced */
    int64_t floor, end, cursor;
    int64_t stored_floor, stored_cursor;   /* as in LMDB */
    int64_t written_floor, written_cursor; /* as a batch being written has them */
    sl_qmsg_t *msgs;                       /* msgs[first + offset - floor] */
    size_t first, cap;
    int64_t *requeued; /* min-heap: offsets below cursor that are ready */
    size_t requeued_count, requeued_cap;
    int64_t ready;
    sl_reader_t *reader; /* kept between pops */
} sl_qlevel_t;

typedef struct sl_qcounters {
    int64_t published, delivered, redelivered, acked, dead_lettered;
    int64_t expired, dropped, rejected;
} sl_qcounters_t;

typedef struct sl_queue {
    char name[SL_QUEUE_NAME_MAX + 1];
    uint64_t id; /* never reused: (slot, id) names a queue across deletions */
    uint32_t slot;
    sl_queue_options_t options;
    int32_t levels;
    int64_t in_flight;
    sl_qlevel_t level[SL_QUEUE_LEVELS];
    sl_qcounters_t counters, counted; /* counted: as of the last tick */
    double rates[5];                  /* published..dead_lettered per second */
} sl_queue_t;

typedef struct sl_exchange sl_exchange_t;

typedef struct sl_binding {
    uint32_t id;
    sl_exchange_t *exchange;
    sl_queue_t *queue;
    char *pattern; /* pattern_len bytes in `bytes` */
    size_t pattern_len;
    sl_header_t *args; /* pointing into `bytes` */
    size_t nargs;
    uint8_t *bytes;
} sl_binding_t;

struct sl_exchange {
    char name[SL_QUEUE_NAME_MAX + 1];
    sl_exchange_type_t type;
    int64_t unroutable;
    sl_binding_t **bindings;
    size_t binding_count, binding_cap;
};

/* A delivery a consumer holds; stale once the message moved on. */
typedef struct sl_held {
    int64_t offset;
    uint64_t queue_id;
    uint32_t queue_slot;
    uint16_t deliveries;
    uint8_t level;
} sl_held_t;

struct sl_queue_consumer {
    uint32_t slot;
    int64_t prefetch, in_flight;
    sl_held_t *held;
    size_t held_count, held_cap;
};

/* A lease, in the registry's min-heap by deadline; stale once the
 * delivery ended. */
typedef struct sl_lease {
    int64_t deadline;
    sl_held_t delivery;
} sl_lease_t;

struct sl_queues {
    sl_log_t *log;
    sl_state_t *state;
    MDB_dbi dbi;
    pthread_mutex_t lock;
    sl_exchange_t **exchanges; /* sorted by name */
    size_t exchange_count, exchange_cap;
    sl_queue_t **queues; /* by slot; NULL: free */
    size_t queue_slots, queue_cap;
    uint64_t next_queue_id;
    sl_binding_t **bindings;
    size_t binding_count, binding_cap;
    uint32_t next_binding_id;
    sl_queue_consumer_t **consumers; /* by slot; NULL: free */
    size_t consumer_slots, consumer_cap;
    sl_lease_t *leases; /* min-heap */
    size_t lease_count, lease_cap;
    int64_t in_flight; /* over every queue */
    int64_t last_tick_ms;
    int64_t default_unroutable; /* published to "" for no queue */
};

/* ---- delivery tags ---- */

static inline uint64_t sl_queue_tag(int level, int64_t offset, uint16_t deliveries)
{
    return (uint64_t)offset << 12 | (uint64_t)(deliveries & 0xff) << 4 | (uint64_t)level;
}

/* ---- keys and values (queues.c) ---- */

void sl_queue_put_be(uint8_t *p, uint64_t v, int size);
uint64_t sl_queue_get_be(const uint8_t *p, int size);

/* Writes the key kind|name|0x00|level[|be64 n] (n < 0: none); returns its
 * length. */
size_t sl_queue_key(uint8_t *key, char kind, const char *name, int level, int64_t n);

/* Puts or deletes (value NULL) one entry in txn; a missing entry is not
 * an error for a delete. */
int sl_queue_put(sl_queues_t *qs, MDB_txn *txn, const uint8_t *key, size_t key_len,
                 const void *value, size_t value_len);

/* The live queue named name, or in slot with that id; NULL if none.
 * Registry locked. */
sl_queue_t *sl_queues_find(sl_queues_t *qs, const char *name);
sl_queue_t *sl_queues_at(sl_queues_t *qs, uint32_t slot, uint64_t id);

/* ---- one queue (queue.c); the registry is locked ---- */

/* Recovers q's levels from its log and LMDB state (q->options set). */
int sl_queue_recover(sl_queues_t *qs, sl_queue_t *q);

/* Drops q's in-memory state: consumers stop counting its deliveries. */
void sl_queue_release(sl_queues_t *qs, sl_queue_t *q);

/* The message at offset, or NULL outside [floor, end). */
sl_qmsg_t *sl_queue_msg(sl_qlevel_t *l, int64_t offset);

/* Makes an existing message ready (it was in flight, pending or
 * committing). */
void sl_queue_make_ready(sl_qlevel_t *l, int64_t offset);

/* The next ready offset of a level in delivery order, -1 if none. */
int64_t sl_queue_peek(sl_qlevel_t *l);

/* Takes a peeked offset out of the ready set (it becomes state). */
void sl_queue_take(sl_qlevel_t *l, int64_t offset, int state);

/* A delivery ends (acked, nacked, requeued): its consumer and counts stop
 * holding it; the caller changes the message's state. */
void sl_queue_end_delivery(sl_queues_t *qs, sl_queue_t *q, const sl_qmsg_t *m);

/* Appends n newly committed messages to a level, ready. */
int sl_queue_add_messages(sl_qlevel_t *l, const sl_record_t *records, size_t n);

/* Moves a level's floor past its done prefix; returns 1 if it moved. */
int sl_queue_advance_floor(sl_qlevel_t *l);

/* Deletes closed segments of a level wholly below its floor. */
void sl_queue_reclaim(sl_qlevel_t *l);

/* Reads the record of a message with the level's own reader; *rec is
 * valid until the next read of that level. */
int sl_queue_read(sl_queue_t *q, int level, int64_t offset, sl_record_t *rec);

/* The expiry time a record's key carries (0: never). */
int64_t sl_queue_record_expiry(const sl_record_t *r);

/* ---- batches (queue_batch.c) ---- */

/* Stages a message that goes done (ack, or dead letter with reason
 * 0 none / "rejected" / ...). The message is already PENDING. */
int sl_queue_batch_stage_done(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t offset,
                              const char *reason);

/* Stages the write of a message's delivery count. */
int sl_queue_batch_stage_count(sl_queue_batch_t *b, sl_queue_t *q, int level, int64_t offset);

/* A delivery that ends without an ack (lease expiry, consumer gone, nack
 * with requeue): ready again, or dead-lettered into b when it has had its
 * deliveries. The message is in flight; its consumer is already
 * uncounted. */
void sl_queue_requeue(sl_queues_t *qs, sl_queue_batch_t *b, sl_queue_t *q, int level,
                      int64_t offset);

#endif

/*
 * lua.h - sluice's Lua module: the sandboxed VM, the pipeline DSL, and
 * records in and out of user functions.
 *
 * This header is the manual of the lua module (DESIGN.md section 5). It
 * depends on storage/ for errors, allocation and sl_record_t, and on nothing
 * above it: no threads, sockets or log access here. The runtime creates one
 * VM per worker thread, compiles each pipeline script in every VM, and
 * drives the calls below batch by batch.
 *
 * Conventions, as in storage.h: functions return 0 on success, -ENOMEM when
 * the process is out of memory, or SL_EINVALID for anything a script or a
 * record did wrong, with a sentence in sl_error_detail(). A VM is used by
 * one thread at a time; distinct VMs are independent.
 *
 * ---- The DSL -------------------------------------------------------------
 *
 * A pipeline script is evaluated once per VM. It builds the DAG through the
 * module returned by require("sluice"):
 *
 *   local s = require("sluice")
 *   s.pipeline{name = "alerts", on_error = "dead_letter"}
 *   local pay = s.stream("payments", {partitions = 4, format = "json",
 *                                     timestamp = function(r) return r.value.at end})
 *   local big = pay:filter(function(r) return r.value.amount > 1000 end)
 *   local by_region = big:branch{eu = function(r) return r.value.region == "eu" end,
 *                                us = function(r) return r.value.region == "us" end}
 *   s.merge(by_region.eu, by_region.us)
 *     :map(function(r) return {user = r.value.user, amount = r.value.amount} end)
 *     :key_by("user")
 *     :to("alerts", {create = true, partitions = 2})
 *
 *   s.pipeline{name=, on_error=, processing=}   at most once, anywhere in the
 *       script. name: 1-128 of [A-Za-z0-9_-] (it prefixes the pipeline's
 *       internal topics); absent = the runtime names it. on_error: "stop"
 *       (default), "skip" or "dead_letter". processing: "exactly_once" or
 *       "at_least_once"; absent = SL_PROCESSING_DEFAULT. commit_interval: a
 *       duration ("100ms", "1s") between commits, 1 ms to 1 h (default
 *       SL_COMMIT_INTERVAL_DEFAULT); longer ones batch more state changes
 *       per LMDB commit at the cost of output latency. flush_interval: a
 *       duration, 0 to 1 h (default SL_FLUSH_INTERVAL_DEFAULT), between the
 *       commits that also write the state's changed entries into LMDB (the
 *       others write them to the changelog only; queries see every commit);
 *       longer ones write less, and a crash restores more from the
 *       changelog.
 *   s.stream(topic, {partitions=, format=, timestamp=})   a source, once per
 *       topic. partitions: the count the script expects (absent: any);
 *       format: "json" or "raw" (absent: the topic's own); timestamp: a
 *       function r -> event time in ms (absent: the record timestamp).
 *   :filter(fn) :map(fn) :flat_map(fn) :peek(fn)   return a new stream.
 *   :key_by(fn | "field")   re-keys (the runtime repartitions by the key).
 *   :branch{name = predicate, ...}   returns a table name -> stream. A record
 *       goes to the first predicate that accepts it, trying names in byte
 *       order (a Lua table has no declaration order); none: dropped.
 *   s.merge(a, b, ...)   one stream with the records of all (at least one,
 *       each at most once).
 *   :to(topic, {create=, partitions=})   a sink; returns a sink object on
 *       which every operator is an error. create = true lets the runtime
 *       create a missing topic, with partitions (only with create).
 *   s.null   the JSON null value (also require("json").null).
 *
 * Windows and aggregates (DESIGN.md section 6):
 *
 *   pay:key_by("user")
 *     :window(s.hopping("10m", "1m", {grace = "30s"}))
 *     :aggregate{n = s.count(), spend = s.sum("amount"), top = s.max("amount"),
 *                users = s.distinct(function(r) return r.value.user end),
 *                seen = s.reduce({}, function(acc, r) acc[r.value.kind] = true; return acc end),
 *                emit = "on_close", retention = "7d", late = "late_payments",
 *                store = "spend"}
 *     :to("spend_per_user")
 *
 *   Durations are strings "<digits><unit>" with unit ms, s, m, h or d, or
 *   bare digits, or Lua integers, all meaning ms (sl_duration_parse), at
 *   most SL_DURATION_MAX.
 *   s.tumbling(size, {grace=})  s.hopping(size, advance, {grace=})
 *   s.session(gap, {grace=})   window specs. size, advance, gap >= 1 ms;
 *       grace >= 0 (default 0); advance <= size and ceil(size / advance) <=
 *       SL_OP_WINDOW_MAX_OVERLAP.
 *   :window(spec)   returns a windowed stream: its only operator is
 *       :aggregate{}, and a windowed stream never aggregated is an error.
 *       The window becomes the fields of the AGGREGATE op; :window() adds
 *       no op of its own.
 *   :aggregate{name = member, ..., emit=, retention=, late=, store=}   per
 *       key (and window), the members' results; returns a stream of result
 *       records: key = the input key, value = {"key": k, "window_start":
 *       ms, "window_end": ms, "values": {name: result, ...}} (without the
 *       window fields when there is no window: running totals per key).
 *       Members, in a table whose other keys are the four options (so no
 *       member may be named emit, retention, late or store), 1 to
 *       SL_OP_AGG_MEMBERS_MAX of them, names 1 to SL_OP_AGG_NAME_MAX bytes:
 *         s.count()           records
 *         s.sum(f) s.min(f) s.max(f) s.avg(f) s.last(f) s.distinct(f)
 *                             f: a field name of r.value (1 to
 *                             SL_OP_AGG_FIELD_MAX bytes) or a function
 *                             r -> value
 *         s.reduce(init, fn)  fn(acc, r) -> new acc, starting from init
 *                             (any JSON-encodable value; s.null for null)
 *       emit: "on_update" (default) or "on_close" (windows only). retention:
 *       how long closed windows stay queryable (windows only; default
 *       SL_OP_RETENTION_DEFAULT, raised to size + grace, for sessions gap +
 *       grace, if less). late: a topic for late records (windows only;
 *       absent: dropped and counted). store: the state store's name,
 *       1-SL_OP_STORE_NAME_MAX of [A-Za-z0-9_-], unique in the pipeline;
 *       absent: "aggregate<op id>".
 *
 * Tables and joins:
 *
 *   local users = s.table("users", {store = "users"})
 *   clicks:join(users, function(r, u) return {page = r.value.page, u = u} end, {type = "left"})
 *   clicks:join(views, function(c, v) return ... end, {within = "5m", grace = "10s",
 *                                                       type = "outer", store = "cv"})
 *   users:join(scores, function(u, sc) return ... end, {type = "left", store = "us"})
 *
 *   s.table(topic, {partitions=, format=, store=})   a TABLE op: an entry
 *       like a SOURCE (a topic is read by one s.stream or s.table) whose
 *       records upsert their key in a kv store (store: as an aggregate's,
 *       default "table<op id>"); returns a table, which has only :join,
 *       :to (its changes) and :stream() (its changes as a stream: a MERGE
 *       of one input). A table needs no sink.
 *   :join(other, fn, opts)   a JOIN op, inputs[0] = self, inputs[1] =
 *       other: stream + table (STREAM_TABLE, opts {type = "inner" |
 *       "left"}), stream + stream (STREAM_STREAM, {within = d (required),
 *       grace = d, type = "inner" | "left" | "outer", store =}), table +
 *       table (TABLE_TABLE, {type = "inner" | "left", store =}, returns a
 *       table). A table on the left takes only a table; a stream is not
 *       joined with itself. Neither side may come through :map or
 *       :flat_map after its entry (the key may have changed): the error
 *       says to :key_by() that side.
 *
 * Work queues (DESIGN.md section 9):
 *
 *   s.exchange("tasks", "topic")
 *   s.queue("fraud", {maxpriority = 9, ttl = "1h", deadletter = "fraud-dead"})
 *   s.bind("tasks", "fraud", "fraud.#")
 *   pay:route("tasks", {key = function(r) return "fraud." .. r.value.region end,
 *                       priority = function(r) return r.value.amount > 5000 and 9 or 1 end,
 *                       headers = function(r) return {user = r.value.user} end})
 *
 *   s.exchange(name, type)   declares an exchange: type "direct", "topic",
 *       "fanout" or "headers"; returns name.
 *   s.queue(name, {maxpriority=, ttl=, maxlen=, overflow=, maxdeliveries=,
 *       deadletter=, lease=})   declares a queue, options as QUEUE DECLARE's:
 *       maxpriority 0-SL_QUEUE_PRIORITY_MAX, ttl and lease durations (lease
 *       >= 1 ms), maxlen >= 0, overflow "drop-head" or "reject-publish",
 *       maxdeliveries >= 1, deadletter a queue name; returns name.
 *   s.bind(exchange, queue, pattern, {name = value, ...})   declares a
 *       binding: pattern (absent: "") at most SL_ROUTING_KEY_MAX bytes,
 *       arguments (x-match and the headers to compare, for headers
 *       exchanges) names to strings or integers, at most
 *       SL_DECLARE_ARGS_MAX.
 *   Names follow the registry's rules (sl_queue_name_check). Declarations
 *   go into dag->declarations, in script order; each name (and each
 *   binding) is declared at most once per script; a binding to an exchange
 *   the script declared before is checked against its type.
 *   :route(exchange, {key=, priority=, headers=})   a sink: each record
 *       becomes a message with the record's value as its payload, published
 *       to exchange ("" is the default exchange, which routes to the queue
 *       named by the routing key). key: a field name of r.value or a
 *       function r -> string (absent: the record's key); priority: a
 *       function r -> 0..255 (absent: 0); headers: a function r -> {name =
 *       value} (absent: the record's headers). Returns a sink.
 *
 * Feature views (DESIGN.md section 8):
 *
 *   clicks:key_by("user")
 *     :window(s.tumbling("1m"))
 *     :aggregate{clicks = s.count(), spend = s.sum("price"), store = "activity"}
 *     :features("user_activity", {ranges = {"5m", "1h", "24h"},
 *                                 defaults = {spend = 0, clicks_5m = -1}})
 *
 *   :features(view, {ranges =, defaults =})   a sink, right after a
 *       tumbling :aggregate{}: per key, each member over each trailing
 *       range is a feature named "<member>_<range>" (clicks_5m, spend_1h),
 *       members by name, then ranges in the order given. The node answers
 *       them at query time from the aggregate's buckets (its windows), and
 *       writes each changed vector to the topic named view at commit.
 *       view: 1 to SL_OP_VIEW_NAME_MAX bytes of a topic name, not a topic
 *       the pipeline reads. ranges: 1 to SL_OP_FEATURE_RANGES_MAX distinct
 *       durations, each a multiple of the window size (so at least one
 *       bucket) and at most the aggregate's retention. defaults: names to
 *       finite numbers, each name a member (all its ranges) or a feature
 *       (that one, which wins over its member's); a feature with a default
 *       takes it where its range has no value. Members must merge across
 *       buckets: no s.reduce(). Returns a sink.
 *
 * Compile-time checks, each reported as "chunk:line: what was wrong": unknown
 * options, wrong argument types, a bad topic or pipeline name, operators after
 * a sink, a second s.pipeline{} or s.stream() of one topic, an empty merge, a
 * script without a sink, a stream that is never used (every stream but a
 * branch output must end in a sink), a sink or late topic writing a topic the
 * pipeline reads (a cycle through the log; other cycles cannot be written,
 * since an operator only takes earlier streams), bad durations and window
 * shapes, an operator other than :aggregate{} after :window() or a window
 * never aggregated, an aggregate without members or with a bad one, window
 * options on an aggregate without a window, a bad or repeated store name,
 * bad or repeated work-queue declarations, a bad exchange name or routing
 * option, :features() after anything but a tumbling aggregate, bad ranges
 * or defaults, a feature name a view already has in the script, stream
 * operators on a table, bad join operands or options, a join side that
 * may have changed its keys, and any Lua syntax or runtime error.
 * The DSL works only while the script is being compiled: a user function
 * calling it later gets an error.
 *
 * ---- The sandbox -----------------------------------------------------------
 *
 * Each compiled script gets its own global table with: assert error ipairs
 * next pairs rawequal rawget rawlen rawset select getmetatable tonumber
 * tostring type _VERSION _G, setmetatable (refusing __gc: a finalizer would
 * run at the collector's whim, inside other pipelines' calls), pcall and
 * xpcall (which cannot catch the instruction limit), print (one INFO line
 * on stderr via sl_report), collectgarbage("count") only, load (text chunks
 * only; the script's globals unless an env is given), require (only
 * "sluice", and lua-cjson as "json" or "cjson"), and copies of string
 * (without dump), table, math, utf8 and os.time, os.clock, os.date. Absent:
 * io, os otherwise, package, debug, coroutine, dofile, loadfile,
 * string.dump. getmetatable("") is false, so scripts cannot reach the
 * string methods shared by the VM. The json module is the script's own
 * lua-cjson instance reduced to encode, decode, null and the number and
 * sparse-array settings (depth and buffer settings could crash or leak);
 * json.decode takes at most memory_bytes / 32 bytes of text.
 *
 * Limits (sl_vm_limits_t): every byte the VM allocates is counted and
 * growth past memory_bytes fails as a Lua memory error; each user-function
 * call (and the script's evaluation) may run `instructions` VM instructions,
 * counted in steps of 1000 by a hook, then fails with "chunk:line:
 * instruction limit exceeded". Both fail only the call at hand; the VM stays
 * usable. Library functions written in C run to completion, so a
 * pathological string.find pattern is bounded only by its input size.
 *
 * ---- Determinism -----------------------------------------------------------
 *
 * The runtime compiles the same script in every worker VM and relies on the
 * DAGs being identical: op ids are assigned in the order the DSL calls run,
 * inputs name earlier ids, and the DSL itself never depends on the order of
 * a Lua table (options are read by name, branch names are sorted). A script
 * can still make its own shape vary (math.random, os.time, pairs() over
 * string keys, whose order differs between VMs); sl_dag_equal() lets the
 * runtime detect that and refuse the script. Function references are per
 * VM: an sl_op_t is meaningful only with the VM that compiled it.
 *
 * ---- Records in Lua --------------------------------------------------------
 *
 * A record is the table {key=, value=, ts=, headers=, topic=, partition=,
 * offset=}: key a string or nil; value decoded from JSON (format json) or
 * the raw bytes as a string (format raw), nil for a tombstone; ts, partition,
 * offset integers; headers a table name -> string (json.null for a null
 * header value; a repeated name keeps its last value). JSON numbers with an
 * integral value in int64 range become Lua integers, so "user:" .. r.value.id
 * reads "user:42", not "user:42.0"; JSON null is json.null.
 *
 * A map function returns a new value or a record table. A returned table is
 * a record table when it has a `key` or a `value` field and no fields other
 * than key, value, ts, headers, topic, partition, offset (so `return r` works
 * after changing r); to output a JSON object of that shape, wrap it:
 * {value = obj}. From a value, the output keeps the input's key, ts and
 * headers. From a record table, the output is that record: absent key = null
 * key, absent value = tombstone, absent ts = the input's, absent headers =
 * none. flat_map returns a list of such results ({} for none). nil is an
 * error (a forgotten return), never a silent tombstone.
 *
 * Output bytes: a string value is written as is; any other value is
 * written as JSON by encode.c (integers exactly, other numbers in the
 * shortest text that reads back as the same double; values that no map
 * changed keep their original bytes). Keys and header values may be strings
 * or numbers: integers (and integral floats in int64 range) become decimal
 * digits ("42"), other finite numbers the shortest "%.17g"-style text that
 * reads back exactly. Headers are written in name order.
 *
 * Laziness: loading a record only checks its JSON (jsmn tokens, RFC 8259
 * rules). r and r.value are tables whose fields are converted when first
 * read and then kept; pairs, #, json.encode and sinks see every field. A
 * record kept past its batch keeps what was read; reading a field that
 * never was is an error naming the cause.
 *
 * Functions other than map and flat_map must not modify r, and map must not
 * modify r when its stream feeds several operators: records are shared
 * between the operators of a pipeline (that is what makes decoding once
 * possible), and filter, branch, peek and key_by pass on the bytes that came
 * in, not the Lua table.
 */
#ifndef SL_LUA_H
#define SL_LUA_H

#include <stddef.h>
#include <stdint.h>

#include "storage/storage.h"

/* ---- the VM ------------------------------------------------------------- */

typedef struct sl_vm sl_vm_t;

#define SL_VM_DEFAULT_MEMORY       ((size_t)64 << 20)
#define SL_VM_DEFAULT_INSTRUCTIONS ((uint64_t)10000000)

typedef struct sl_vm_limits {
    size_t memory_bytes;   /* cap on the VM's Lua memory; 0: SL_VM_DEFAULT_MEMORY */
    uint64_t instructions; /* per user-function call; 0: SL_VM_DEFAULT_INSTRUCTIONS */
} sl_vm_limits_t;

/* Creates a VM (one lua_State with the sandbox prepared). limits may be NULL
 * for the defaults. Returns 0 and *out, owned by the caller until
 * sl_vm_free(); -ENOMEM, also when memory_bytes is too small to start. */
int sl_vm_new(const sl_vm_limits_t *limits, sl_vm_t **out);

/* Frees the VM. Every DAG it compiled must be freed first. */
void sl_vm_free(sl_vm_t *vm);

/* Bytes of Lua memory the VM has in use (what the cap is checked against). */
size_t sl_vm_memory(const sl_vm_t *vm);

/* ---- the DAG ------------------------------------------------------------ */

typedef enum {
    SL_OP_SOURCE,    /* s.stream(): no inputs */
    SL_OP_FILTER,    /* :filter(fn) */
    SL_OP_MAP,       /* :map(fn) */
    SL_OP_FLAT_MAP,  /* :flat_map(fn) */
    SL_OP_KEY_BY,    /* :key_by(fn | "field") */
    SL_OP_BRANCH,    /* :branch{...}: one output port per branch */
    SL_OP_MERGE,     /* s.merge(...): several inputs */
    SL_OP_PEEK,      /* :peek(fn) */
    SL_OP_TO,        /* :to(topic): a sink, no output */
    SL_OP_AGGREGATE, /* [:window(spec)]:aggregate{...} */
    SL_OP_ROUTE,     /* :route(exchange, {...}): a sink into work queues */
    SL_OP_FEATURES,  /* :features(view, {...}): a sink, a queryable feature view */
    SL_OP_TABLE,     /* s.table(): no inputs; the latest value per key, in a store */
    SL_OP_JOIN       /* :join(other, fn, {...}): two inputs, left and right */
} sl_op_kind_t;

/* JOIN's join_kind: what its two inputs are. */
enum {
    SL_JOIN_STREAM_TABLE = 1,  /* a stream looks up a table */
    SL_JOIN_STREAM_STREAM = 2, /* two streams meet within a time distance */
    SL_JOIN_TABLE_TABLE = 3    /* a table of both tables' values per key */
};

/* JOIN's join_type. */
enum { SL_JOIN_INNER = 0, SL_JOIN_LEFT = 1, SL_JOIN_OUTER = 2 };

typedef enum { SL_ON_ERROR_STOP, SL_ON_ERROR_SKIP, SL_ON_ERROR_DEAD_LETTER } sl_on_error_t;

typedef enum { SL_PROCESSING_AT_LEAST_ONCE, SL_PROCESSING_EXACTLY_ONCE } sl_processing_t;

/* s.pipeline{commit_interval =}: how often a pipeline commits, in ms. */
#define SL_COMMIT_INTERVAL_DEFAULT 100
#define SL_COMMIT_INTERVAL_MAX     3600000

/* s.pipeline{flush_interval =}: how often a task writes its state into
 * LMDB, in ms (0: every commit; sl_cache_set_flush_interval). */
#define SL_FLUSH_INTERVAL_DEFAULT 1000
#define SL_FLUSH_INTERVAL_MAX     3600000

/* The processing mode of a script that names none. */
#define SL_PROCESSING_DEFAULT SL_PROCESSING_EXACTLY_ONCE

/* AGGREGATE's window_kind; the numbers equal ops' sl_window_kind_t. */
enum {
    SL_OP_WINDOW_NONE = 0, /* running totals per key */
    SL_OP_WINDOW_TUMBLING = 1,
    SL_OP_WINDOW_HOPPING = 2,
    SL_OP_WINDOW_SESSION = 3
};

/* An aggregate member's kind; the numbers equal ops' sl_agg_kind_t. */
enum {
    SL_OP_AGG_COUNT = 1,
    SL_OP_AGG_SUM = 2,
    SL_OP_AGG_MIN = 3,
    SL_OP_AGG_MAX = 4,
    SL_OP_AGG_AVG = 5,
    SL_OP_AGG_LAST = 6,
    SL_OP_AGG_DISTINCT = 7,
    SL_OP_AGG_REDUCE = 8
};

/* AGGREGATE's emit. */
enum { SL_EMIT_ON_UPDATE = 0, SL_EMIT_ON_CLOSE = 1 };

/* Limits the DSL checks, equal to the operators' own (ops/window.h,
 * ops/aggregate.h), so a DAG that compiles is one the operators accept. */
#define SL_OP_WINDOW_MAX_OVERLAP 1024     /* windows per record (hopping) */
#define SL_OP_AGG_MEMBERS_MAX    64       /* members per aggregate */
#define SL_OP_AGG_NAME_MAX       255      /* bytes in a member's name */
#define SL_OP_AGG_FIELD_MAX      255      /* bytes in a member's field name */
#define SL_OP_REDUCE_INIT_MAX    1048576  /* bytes of a reducer's initial JSON */
#define SL_OP_STORE_NAME_MAX     64       /* bytes in a store name */
#define SL_OP_RETENTION_DEFAULT  86400000 /* ms: one day */
#define SL_OP_FEATURE_RANGES_MAX 16       /* trailing ranges of one :features() */
#define SL_OP_VIEW_NAME_MAX      128      /* bytes in a feature view's name */

/* The value SL_OP_SOURCE's format takes when the script names none. */
#define SL_FORMAT_TOPIC (-1)

/* What a user function is when an op has none (equals LUA_NOREF). */
#define SL_NO_FUNCTION (-2)

#define SL_WHERE_MAX 128

/* Where an op reads from: an earlier op, and for a BRANCH input the index
 * of the branch (in branch_names order); 0 otherwise. */
typedef struct sl_op_input {
    int op;
    int port;
} sl_op_input_t;

/*
 * One member of an aggregate, e.g. spend = s.sum("price"). Strings are
 * owned by the DAG.
 *   name   the member's name in results (1..SL_OP_AGG_NAME_MAX bytes)
 *   kind   SL_OP_AGG_*
 *   field  SUM..DISTINCT by field name: the top-level field of r.value
 *          whose value is the input (the C fast path); NULL otherwise
 *   fn     SUM..DISTINCT by function: r -> value; REDUCE: fn(acc, r) -> new
 *          acc; a registry reference as for sl_op_t.fn; SL_NO_FUNCTION
 *          otherwise (COUNT, and by field)
 *   init   REDUCE: the initial accumulator as JSON text (encoded by the
 *          script's json module at compile time, at most
 *          SL_OP_REDUCE_INIT_MAX bytes); NULL otherwise
 */
typedef struct sl_agg_spec {
    char *name;
    int kind;
    char *field;
    int fn;
    char *init;
} sl_agg_spec_t;

typedef struct sl_native sl_native_t; /* lua/native.c */

typedef struct sl_op {
    int id; /* its index in dag->ops */
    sl_op_kind_t kind;
    sl_op_input_t *inputs; /* earlier ops only: the DAG is acyclic */
    int input_count;
    /* The user function: the timestamp extractor of a SOURCE; the function
     * of FILTER, MAP, FLAT_MAP, PEEK and KEY_BY by function. A reference in
     * the registry of the VM that compiled the DAG; SL_NO_FUNCTION if none
     * (an AGGREGATE's functions are in its members). */
    int fn;
    /* FILTER, MAP, JOIN: the function run without Lua where its answer is
     * certainly Lua's (a function without calls, loops or globals over
     * fields, constants and arithmetic: lua/native.c); NULL when the
     * function is of another kind. */
    sl_native_t *native;
    /* KEY_BY by a function that is `return r.value.<native_key>`: read
     * from the tokens where that gives a string or a number; NULL else. */
    char *native_key;
    char *topic;              /* SOURCE, TO */
    char *field;              /* KEY_BY by field name; NULL otherwise */
    char **branch_names;      /* BRANCH, in byte order */
    int *branch_fns;          /* BRANCH, the predicate of each name */
    int branch_count;         /* BRANCH */
    int32_t partitions;       /* SOURCE: expected, TO: to create with; 0: unset */
    int format;               /* SOURCE: SL_FORMAT_JSON, SL_FORMAT_RAW or SL_FORMAT_TOPIC */
    int create;               /* TO: the runtime may create the topic */
    char where[SL_WHERE_MAX]; /* "script.lua:12", the DSL call, for messages */
    /* AGGREGATE. The window, in ms: tumbling: size, advance = size, grace;
     * hopping: size, advance, grace; session: gap, grace; none: all 0.
     * Fields a kind does not use are 0. */
    int window_kind; /* SL_OP_WINDOW_* */
    int64_t window_size, window_advance, window_gap, window_grace;
    sl_agg_spec_t *aggs; /* the members, sorted by name (byte order) */
    int agg_count;       /* 1..SL_OP_AGG_MEMBERS_MAX */
    int emit;            /* SL_EMIT_ON_UPDATE, or SL_EMIT_ON_CLOSE (windows only) */
    /* ms closed windows stay queryable: SL_OP_RETENTION_DEFAULT or the
     * script's, at least size + grace (session: gap + grace); 0 without a
     * window. */
    int64_t retention;
    char *late_topic; /* where late records go; NULL: dropped and counted */
    char *store;      /* the state store's name: the script's or "aggregate<id>" */
    /* ROUTE. The exchange ("" is the default exchange) and where the
     * message's routing key comes from: a top-level field of r.value
     * (route_key_field), a function r -> string (route_key_fn), or neither:
     * the record's key. route_priority_fn: r -> 0..255; route_headers_fn:
     * r -> {name = value}. Functions are registry references as for fn,
     * SL_NO_FUNCTION when absent (on every op). */
    char *exchange;
    char *route_key_field;
    int route_key_fn;
    int route_priority_fn;
    int route_headers_fn;
    /* FEATURES. Its input is a tumbling AGGREGATE. view: the view's name,
     * also the topic its vectors go to. ranges: the trailing ranges in ms,
     * in the script's order, each a multiple of the window size;
     * range_names: how each is written in feature names ("5m", as the
     * script wrote it). Feature k of feature_count (the aggregate's
     * members times range_count) is member k / range_count over range k %
     * range_count, named "<member>_<range>"; has_default[k] and defaults[k]
     * say whether it has a default and which. */
    char *view;
    int64_t *ranges;
    char **range_names;
    int range_count;
    int feature_count;
    unsigned char *has_default;
    double *defaults;
    /* TABLE: topic, partitions and format as a SOURCE's, store its store.
     * JOIN: inputs[0] is the left side, inputs[1] the right; fn the
     * joiner; join_kind SL_JOIN_*; join_type SL_JOIN_INNER, LEFT or OUTER
     * (STREAM_STREAM only); STREAM_STREAM: join_within, and window_grace
     * as its grace, both in ms; store: the store of a STREAM_STREAM (both
     * sides' buffers) or TABLE_TABLE (the result) join, NULL for
     * STREAM_TABLE. */
    int join_kind;
    int join_type;
    int64_t join_within;
    /* Projections (lua/compile.c): top-level fields of r.value, in byte
     * order, each followed by ',' ("" for none), or NULL for "any field".
     * KEY_BY: the fields the ops after its repartition can read; its
     * records are written to the repartition topic with only those
     * (sl_vm_record_project), when the whole pipeline says which.
     * JOIN (stream-stream): join_reads[p], the fields its function reads
     * of input p's records, which its buffer keeps (ops/join.c). */
    char *keep;
    char *join_reads[2];
} sl_op_t;

#define SL_OP_KEEP_MAX 32 /* names in a keep or join_reads list; more: NULL */

/* What a declaration declares: s.exchange(), s.queue(), s.bind(). */
typedef enum { SL_DECLARE_EXCHANGE, SL_DECLARE_QUEUE, SL_DECLARE_BIND } sl_declare_kind_t;

#define SL_DECLARE_ARGS_MAX 64 /* arguments of one binding, as BIND takes */

/*
 * A work-queue declaration of the script, for the runtime to apply before
 * the pipeline starts, idempotently, as EXCHANGE DECLARE, QUEUE DECLARE
 * and BIND do. Strings are owned by the DAG.
 *   name           EXCHANGE, QUEUE: its name; BIND: the exchange's
 *   exchange_type  EXCHANGE
 *   queue_options  QUEUE: sl_queue_options_default() with the script's
 *                  options set
 *   queue          BIND: the queue
 *   pattern        BIND: pattern_len bytes (NUL-terminated); "" if none
 *   args           BIND: arg_count arguments sorted by name, each name and
 *                  value NUL-terminated
 */
typedef struct sl_declaration {
    sl_declare_kind_t kind;
    char where[SL_WHERE_MAX];
    char *name;
    sl_exchange_type_t exchange_type;
    sl_queue_options_t queue_options;
    char *queue;
    char *pattern;
    size_t pattern_len;
    sl_header_t *args;
    uint32_t arg_count;
} sl_declaration_t;

typedef struct sl_dag {
    char *name; /* from s.pipeline{name=}; NULL if the script set none */
    sl_on_error_t on_error;
    sl_processing_t processing;
    int64_t commit_interval; /* ms between commits (SL_COMMIT_INTERVAL_DEFAULT) */
    int64_t flush_interval;  /* ms between state flushes into LMDB (SL_FLUSH_INTERVAL_DEFAULT) */
    sl_op_t *ops;            /* in id order; every input precedes its op */
    int op_count;
    sl_declaration_t *declarations; /* in script order */
    int declaration_count;
    sl_vm_t *vm; /* the VM holding the ops' functions */
} sl_dag_t;

/* Evaluates source (len bytes, Lua text) in vm under chunkname (used as is
 * in messages: "script.lua" gives "script.lua:12: ...") and builds its DAG.
 * Returns 0 and *out, owned by the caller until sl_dag_free(); SL_EINVALID
 * with the detail "chunk:line: what was wrong" for any error of the script
 * (syntax, runtime, DSL misuse, limits); -ENOMEM. */
int sl_vm_compile(sl_vm_t *vm, const char *chunkname, const char *source, size_t len,
                  sl_dag_t **out);

/* Frees a DAG and releases its functions in its VM, which must still exist.
 * NULL is ignored. */
void sl_dag_free(sl_dag_t *dag);

/* 1 if a and b describe the same pipeline: options, every op (kind,
 * inputs, topics, fields, branch names, options, where, windows, aggregate
 * members and their options, exchanges and routing options, feature
 * views, and which functions exist, not their references) and every
 * declaration. 0 otherwise. */
int sl_dag_equal(const sl_dag_t *a, const sl_dag_t *b);

/* The DSL name of an op kind ("stream", "filter", ..., "to", "aggregate",
 * "route", "features"); static. */
const char *sl_op_kind_name(sl_op_kind_t kind);

/* 1 if ops of this kind start a stage: SOURCE, TABLE and KEY_BY (whose
 * records come back through its repartition topic). */
int sl_op_kind_is_entry(sl_op_kind_t kind);

/* ---- records and batches ------------------------------------------------- */

/*
 * A slot is a record held by the VM as a Lua table, named by a small
 * integer, from sl_vm_record_load() or an operator call until
 * sl_vm_batch_reset(). A loaded record is decoded once and then shared by
 * every operator it flows through. Output bytes (sl_vm_record_get) live in
 * the VM's batch arena, reused from batch to batch: no malloc per record
 * once the VM is warm.
 */

/* Where a record was read from: shown to Lua as r.topic and r.partition.
 * json: decode the value as JSON (else it is the raw bytes). borrowed: the
 * record's bytes (key, value, headers) stay where they are until the next
 * sl_vm_batch_reset(), so the slot points at them instead of a copy (a
 * stage's input records, read into a set that outlives the batch). */
typedef struct sl_vm_origin {
    const char *topic;
    int32_t partition;
    int json;
    int borrowed;
} sl_vm_origin_t;

/* Loads rec into a new slot: its bytes are copied (rec may go away on
 * return) unless origin says they are borrowed. Returns 0 and *slot;
 * SL_EINVALID naming topic, partition and offset when the value is not
 * valid JSON or the VM's memory cap is hit; -ENOMEM. */
int sl_vm_record_load(sl_vm_t *vm, const sl_record_t *rec, const sl_vm_origin_t *origin, int *slot);

/* The record in a slot as bytes: *out points into the batch arena, valid
 * until sl_vm_batch_reset(). Records that no map changed come back as they
 * were loaded (with key_by's key and the timestamp extractor's ts); others
 * are encoded once. Returns 0; SL_EINVALID naming the op that produced the
 * record when its value cannot be encoded (a function inside a table, an
 * excessively sparse array, nesting deeper than 1000); -ENOMEM. */
int sl_vm_record_get(sl_vm_t *vm, int slot, sl_record_t *out);

/* The record in a slot as sl_vm_record_get gives it, but its value with
 * only the members named in keep (op->keep of a KEY_BY: "a,b,") after a
 * marker naming them (lua/project.c). Returns 0; 1 when the value is not
 * a JSON object read as it is (or keep is NULL, or a key has escapes):
 * the caller writes the whole record; -ENOMEM. */
int sl_vm_record_project(sl_vm_t *vm, int slot, const char *keep, sl_record_t *out);

/* The record to write: sl_vm_record_project's where it projects, else
 * sl_vm_record_get's (keep NULL: always the whole record). 0, or the
 * error of either. */
int sl_vm_record_kept(sl_vm_t *vm, int slot, const char *keep, sl_record_t *out);

/* Does a value hold every field of needs ("a,b,"; NULL: any field)? 1 for
 * a whole value (not written by sl_vm_record_project) or a projection
 * naming them all; else 0 with *kept (kept_len bytes) the names it keeps,
 * for the error. */
int sl_vm_value_keeps(const uint8_t *value, int32_t len, const char *needs, const char **kept,
                      size_t *kept_len);

/* Does the list kept ("a,b,", kept_len bytes) name every field of needs
 * (NULL: any field, which no list covers)? */
int sl_fields_cover(const char *kept, size_t kept_len, const char *needs);

/* Can next replace running? SL_EINVALID (with the error) when a
 * stream-stream join of next keeps a store in which running buffered
 * records with fewer fields (its join_reads, or its key_by's keep) than
 * next's join function reads; else 0. */
int sl_dag_check_projections(const sl_dag_t *running, const sl_dag_t *next);

/* Ends a batch: forgets every slot and every byte in the arena. */
void sl_vm_batch_reset(sl_vm_t *vm);

/* ---- user-function calls ----------------------------------------------------
 *
 * Each call runs the op's user function on a slot under lua_pcall with a
 * fresh instruction budget. Errors (the function raised one, a limit was
 * hit, a bad return type) return SL_EINVALID with the detail
 * "<kind> (<where>): <message>", e.g. "map (script.lua:4): script.lua:5:
 * attempt to index a nil value (field 'value')", and leave the VM usable for
 * the next record. op must come from a DAG compiled in this VM and be of the
 * kind the function names.
 */

/* SOURCE with a timestamp function: *ts = its result (an integer, ms), also
 * stored as the slot's ts. */
int sl_vm_call_timestamp(sl_vm_t *vm, const sl_op_t *op, int slot, int64_t *ts);

/* FILTER: *keep = 1 if the function returned a true value (Lua truth). */
int sl_vm_call_filter(sl_vm_t *vm, const sl_op_t *op, int slot, int *keep);

/* MAP: *out_slot = the record the function made (see "Records in Lua"). */
int sl_vm_call_map(sl_vm_t *vm, const sl_op_t *op, int slot, int *out_slot);

/* FLAT_MAP: the records made are slots *first_slot .. *first_slot + *count - 1. */
int sl_vm_call_flat_map(sl_vm_t *vm, const sl_op_t *op, int slot, int *first_slot, int *count);

/* KEY_BY: *out_slot = the record with the key from the function or field
 * (a string or number; nil or a missing field is an error). */
int sl_vm_call_key(sl_vm_t *vm, const sl_op_t *op, int slot, int *out_slot);

/* BRANCH: *branch = index of the first predicate (in branch_names order)
 * that accepts the record, -1 if none does. */
int sl_vm_call_branch(sl_vm_t *vm, const sl_op_t *op, int slot, int *branch);

/* PEEK: runs the function for its side effects. */
int sl_vm_call_peek(sl_vm_t *vm, const sl_op_t *op, int slot);

/* JOIN: fn(left, right), where each side is the record of its slot
 * (STREAM_STREAM), the stream record and the table's value (STREAM_TABLE:
 * r.value of right's slot), or the two tables' values (TABLE_TABLE); a
 * side of -1 is nil. base is the record whose key, ts and headers the
 * result keeps where the function's result does not set them (as map's
 * input). *out_slot: the record made, as by map; for TABLE_TABLE a nil
 * result is a tombstone of base's key. */
int sl_vm_call_join(sl_vm_t *vm, const sl_op_t *op, int base, int left, int right, int *out_slot);

/* What ROUTE's functions make of a record: the message's routing key,
 * priority and headers. has_key 0: the op takes its key from nowhere (the
 * record's key is the routing key); has_headers 0: no headers function
 * (the record's headers go along); priority 0 without a function. Bytes
 * live in the batch arena, valid until sl_vm_batch_reset(). */
typedef struct sl_vm_route {
    int has_key;
    const char *key;
    size_t key_len; /* at most SL_ROUTING_KEY_MAX */
    int32_t priority;
    int has_headers;
    const sl_header_t *headers; /* sorted by name */
    uint32_t header_count;      /* at most SL_DECLARE_ARGS_MAX */
} sl_vm_route_t;

/* ROUTE: runs the op's key field or function, priority and headers
 * functions. The key must be a string or an integer (written in decimal)
 * of at most SL_ROUTING_KEY_MAX bytes, the priority an integer 0..255,
 * the headers a table of non-empty string names to strings, integers or
 * json.null (a null value); anything else (nil too) is an error naming the
 * option. */
int sl_vm_call_route(sl_vm_t *vm, const sl_op_t *op, int slot, sl_vm_route_t *out);

/* ---- values for stateful operators --------------------------------------------
 *
 * What an aggregate reads from a record: a field of its JSON object value
 * (the C fast path: a loaded record's field is read straight from its
 * tokens, no Lua), a value extractor's result, or a Lua reducer's step.
 */

typedef enum {
    SL_VM_VALUE_NONE,   /* absent, nil or JSON null */
    SL_VM_VALUE_NUMBER, /* integer (is_integer) or number */
    SL_VM_VALUE_STRING, /* bytes, len: valid until sl_vm_batch_reset() */
    SL_VM_VALUE_OTHER   /* a boolean, table or anything else */
} sl_vm_value_type_t;

typedef struct sl_vm_value {
    sl_vm_value_type_t type;
    int is_integer;
    int64_t integer;
    double number;
    const char *bytes;
    size_t len;
} sl_vm_value_t;

/* r.value[field] of slot (NONE when the value is no object or lacks it).
 * Errors (SL_EINVALID, -ENOMEM) name op. */
int sl_vm_field(sl_vm_t *vm, const sl_op_t *op, int slot, const char *field, sl_vm_value_t *out);

/* fn(r), fn a function reference of op's DAG (a value extractor). */
int sl_vm_call_value(sl_vm_t *vm, const sl_op_t *op, int fn, int slot, sl_vm_value_t *out);

/* One step of a reducer: fn(acc, r), acc given and returned as JSON text
 * (*out in the batch arena). */
int sl_vm_call_reduce(sl_vm_t *vm, const sl_op_t *op, int fn, const char *acc, size_t acc_len,
                      int slot, const uint8_t **out, int32_t *out_len);

/* The record of slot without its value: key, ts, headers, offset (a map's
 * record table is written whole, as by sl_vm_record_get). */
int sl_vm_record_meta(sl_vm_t *vm, int slot, sl_record_t *out);

#endif

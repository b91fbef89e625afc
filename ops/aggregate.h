/*
 * aggregate.h - the built-in aggregates (count, sum, min, max, avg, last,
 * distinct) and a Lua reducer's slot, grouped in aggregate sets, with one
 * compact binary state per (key, window).
 *
 * An aggregate set is the table given to :aggregate{...}, e.g. {clicks =
 * s.count(), spend = s.sum("price")}: an ordered list of named members.
 * Its state (sl_aggstate_t) holds one member state each; the runtime keeps
 * one per key and window, folds records in with sl_aggstate_add, merges
 * states when sessions merge, stores the encoding in LMDB and changelogs,
 * and renders results as JSON.
 *
 * Numbers (sl_number_t) are int64 or double and stay int64 where exact:
 * a sum of integers is an integer until it would overflow int64, then it
 * becomes a double (as it does when a double arrives). Integers and doubles
 * compare exactly (min/max of 2^53 + 1 and 2^53 as a double picks the
 * right one). Non-finite doubles (NaN, infinities) are refused on input
 * and a sum or average whose double would overflow is refused too, so a
 * state never holds one.
 *
 * Members and results:
 *
 *   kind      input            result (sl_aggstate_result)     empty
 *   count     none (records)   integer: records added          0
 *   sum       number           integer or double               0
 *   min, max  number           the smallest/largest value      null
 *   avg       number           double: sum / values            null
 *   last      number           value of greatest event time;   null
 *                              ties go to the later arrival
 *   distinct  number or bytes  integer: estimated distinct     0
 *                              values (HyperLogLog, hll.h)
 *   reduce    set by caller    the caller's JSON text          null
 *
 * A member given no value for a record (SL_AGG_NONE: field missing or
 * null) skips that record; count counts every record.
 *
 * distinct hashes a value with its type: the string "3" and the number 3
 * are different values; the numbers 3 and 3.0 are the same.
 *
 * State encoding (platform independent; varints are unsigned LEB128, 7
 * bits a byte, low groups first, in their shortest form, at most 64 bits;
 * signed values zigzag-encoded first; doubles IEEE-754 binary64
 * little-endian):
 *
 *   offset  size  field
 *   0       1     format version, 2 (1 is read too, see below)
 *   1       1     member count n, 1..SL_AGGSET_MAX
 *   2       4     fingerprint of the set (little-endian): low 32 bits of
 *                 xxHash64 over every member's kind, name and source; a
 *                 state written for another definition is refused
 *   6       ...   n member states in set order, each a kind byte (the
 *                 SL_AGG_* value) and then:
 *
 *   kind      payload
 *   count     varint records
 *   sum       number: tag (0 integer, 1 double), then a zigzag varint or
 *             the double's 8 bytes
 *   min, max  optional number: tag (0 empty, 1 integer, 2 double), then as
 *             above; nothing more when empty
 *   avg       varint values, then the sum as a number; with 0 values the
 *             sum is integer 0
 *   last      optional number, then (when not empty) the event time as a
 *             zigzag varint
 *   distinct  varint k, then a k-byte HyperLogLog (hll.h)
 *   reduce    varint k, then k bytes of JSON text; k = 0: unset
 *
 * Version 1 (states written before 2026-11-27) has the same header and
 * fixed-width fields: counts, times and lengths as 8/8/4 little-endian
 * bytes, every number as a tag and 8 bytes (all zero when empty, and an
 * empty last's time 0): count+sum+avg of integers took 43 bytes, 17 in
 * version 2, so more windows share an LMDB page and a commit dirties
 * fewer. Version 1 is decoded; whatever is encoded is version 2.
 *
 * The decoder checks every byte against this layout and the set (version,
 * count, fingerprint, kinds, tags, finiteness, shortest varints, zero
 * padding in version 1, lengths, no trailing bytes) and returns SL_ECORRUPT
 * with a detail, never reading out of bounds. A state's encoding depends
 * only on its contents: equal states encode to equal bytes (restores can be
 * compared byte for byte).
 *
 * Errors: SL_EINVALID (a bad definition or a bad input value, with a
 * sentence naming the member), SL_ECORRUPT (bad bytes), -ENOMEM. Functions
 * that fail leave the state as it was, except where noted. Not
 * thread-safe; a set must outlive its states.
 */
#ifndef SL_AGGREGATE_H
#define SL_AGGREGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/buf.h"

#define SL_AGGSET_MAX       64      /* members in one set */
#define SL_AGG_NAME_MAX     255     /* bytes in a member's name */
#define SL_AGG_SOURCE_MAX   255     /* bytes in a member's source */
#define SL_AGG_REDUCE_MAX   1048576 /* bytes in a reducer's JSON value */
#define SL_AGGSTATE_VERSION 2

typedef enum sl_agg_kind {
    SL_AGG_COUNT = 1,
    SL_AGG_SUM = 2,
    SL_AGG_MIN = 3,
    SL_AGG_MAX = 4,
    SL_AGG_AVG = 5,
    SL_AGG_LAST = 6,
    SL_AGG_DISTINCT = 7,
    SL_AGG_REDUCE = 8,
} sl_agg_kind_t;

/* A JSON number as sluice keeps it. */
typedef struct sl_number {
    bool is_double;
    union {
        int64_t i;
        double d;
    };
} sl_number_t;

static inline sl_number_t sl_number_int(int64_t i)
{
    return (sl_number_t){.is_double = false, .i = i};
}

static inline sl_number_t sl_number_double(double d)
{
    return (sl_number_t){.is_double = true, .d = d};
}

/*
 * Parses the JSON number text of n bytes at text (the C fast path for a
 * field): an integer (no fraction or exponent) that fits int64 becomes an
 * integer, anything else a double. Returns 0 and *out, or SL_EINVALID with
 * a detail if the text is not a JSON number or its double is not finite.
 */
int sl_number_parse(const char *text, size_t n, sl_number_t *out);

/* -1, 0 or 1 as a < b, a == b, a > b, exactly across integer and double. */
int sl_number_compare(sl_number_t a, sl_number_t b);

/* ---- sets ------------------------------------------------------------ */

typedef struct sl_aggset sl_aggset_t;

/* A new empty set. Returns 0 and *out (free with sl_aggset_free) or
 * -ENOMEM. */
int sl_aggset_new(sl_aggset_t **out);
void sl_aggset_free(sl_aggset_t *set);

/*
 * Appends member `name` (1..SL_AGG_NAME_MAX bytes, unique in the set) of a
 * kind. source says where its values come from, for error messages and the
 * fingerprint: the field name ("price"), a description of a Lua function
 * ("function at line 12"), or NULL for count. Returns the member's index,
 * SL_EINVALID with a detail (bad or duplicate name, unknown kind, a source
 * over SL_AGG_SOURCE_MAX, more than SL_AGGSET_MAX members) or -ENOMEM.
 * Add every member before creating states.
 */
int sl_aggset_add(sl_aggset_t *set, const char *name, sl_agg_kind_t kind, const char *source);

/* Members in the set. */
int sl_aggset_count(const sl_aggset_t *set);

/* Member i's name, kind and source (NULL if none); i < count. */
const char *sl_aggset_name(const sl_aggset_t *set, int i);
sl_agg_kind_t sl_aggset_kind(const sl_aggset_t *set, int i);

/* The DSL name of an aggregate kind ("count", "sum", ...); static. */
const char *sl_agg_kind_name(sl_agg_kind_t kind);
const char *sl_aggset_source(const sl_aggset_t *set, int i);

/* ---- states ---------------------------------------------------------- */

typedef struct sl_aggstate sl_aggstate_t;

/* One member's input for one record. */
typedef enum sl_agg_input_type {
    SL_AGG_NONE = 0,   /* no value: missing field or null */
    SL_AGG_NUMBER = 1, /* number */
    SL_AGG_BYTES = 2,  /* a string's bytes (distinct only) */
} sl_agg_input_type_t;

typedef struct sl_agg_input {
    sl_agg_input_type_t type;
    sl_number_t number;
    const void *bytes;
    size_t len;
} sl_agg_input_t;

/* An empty state for set (every member empty). Returns 0 and *out (free
 * with sl_aggstate_free) or -ENOMEM. */
int sl_aggstate_new(const sl_aggset_t *set, sl_aggstate_t **out);
void sl_aggstate_free(sl_aggstate_t *state);

/* Makes the state empty again (keeps its memory where it can). */
void sl_aggstate_reset(sl_aggstate_t *state);

/*
 * Folds one record into the state: inputs[i] is member i's value (count
 * and reduce members ignore theirs), event_time is the record's time (for
 * last). All inputs are checked first: a string for a numeric member or a
 * non-finite double is SL_EINVALID naming the member, and a sum or average that would leave the
 * doubles is SL_EINVALID too, with nothing changed. -ENOMEM (growing a
 * distinct sketch) may leave earlier distinct members holding the value;
 * as sketches ignore repeats, adding the record again is still exact.
 */
int sl_aggstate_add(sl_aggstate_t *state, const sl_agg_input_t *inputs, int64_t event_time);

/* Sets reduce member i's value to n bytes of JSON text (n = 0: unset), as
 * computed by the caller's reducer. Returns 0, SL_EINVALID if member i is
 * not a reduce member or n is over SL_AGG_REDUCE_MAX, or -ENOMEM. The text
 * is not parsed: the caller guarantees it is one JSON value. */
int sl_aggstate_set_reduce(sl_aggstate_t *state, int i, const void *json, size_t n);

/*
 * Folds src into dst (both of the same set): dst then holds what one state
 * fed with both inputs would hold (sum and avg of doubles up to rounding).
 * For last, src counts as the later arrival on equal event times. Merging
 * is associative; for exact (integer) values also commutative. Returns 0,
 * SL_EINVALID (a sum overflowing the doubles; both reduce members set, as
 * a reducer has no merge), or -ENOMEM, leaving dst unchanged except that
 * on -ENOMEM distinct members may already hold the union.
 */
int sl_aggstate_merge(sl_aggstate_t *dst, const sl_aggstate_t *src);

/* Makes dst (same set) equal to src. 0 or -ENOMEM (dst then unchanged). */
int sl_aggstate_copy(sl_aggstate_t *dst, const sl_aggstate_t *src);

/* ---- encoding -------------------------------------------------------- */

/* Bytes sl_aggstate_encode writes. */
size_t sl_aggstate_encoded_size(const sl_aggstate_t *state);

/* Writes the encoding (sl_aggstate_encoded_size bytes) at out, e.g. into
 * an LMDB value reserved with MDB_RESERVE. */
void sl_aggstate_encode(const sl_aggstate_t *state, uint8_t *out);

/* Replaces the state by the one encoded in exactly n bytes at data.
 * Returns 0, SL_ECORRUPT with a detail (state unchanged), or -ENOMEM
 * (state unchanged). */
int sl_aggstate_decode(sl_aggstate_t *state, const uint8_t *data, size_t n);

/* ---- results --------------------------------------------------------- */

typedef enum sl_agg_result_type {
    SL_AGG_NULL = 0, /* empty min, max, avg, last, unset reduce */
    SL_AGG_RESULT_NUMBER = 1,
    SL_AGG_JSON = 2, /* a reduce member's JSON text */
} sl_agg_result_type_t;

typedef struct sl_agg_result {
    sl_agg_result_type_t type;
    sl_number_t number;
    const char *json; /* SL_AGG_JSON: owned by the state, valid until it changes */
    size_t json_len;
} sl_agg_result_t;

/* Member i's current result (see the table above). */
sl_agg_result_t sl_aggstate_result(const sl_aggstate_t *state, int i);

/*
 * Appends the results as one JSON object to out, members in set order:
 * {"clicks":3,"spend":12.5,"low":null}. Names are escaped as JSON strings;
 * doubles are written with the fewest digits that read back to the same
 * double. Returns 0 or -ENOMEM (out may then hold part of the object).
 */
int sl_aggstate_json(const sl_aggstate_t *state, sl_buf_t *out);

/* Appends the JSON text of a number, as sl_aggstate_json writes it. */
int sl_number_json(sl_number_t number, sl_buf_t *out);

#endif

/*
 * project.c - records written with only the fields their readers read.
 *
 * A key_by whose records are read, after its repartition topic, only by
 * ops that say which top-level fields of r.value they read (op->keep:
 * lua/compile.c) writes each record whose value is a JSON object with only
 * those members, after a marker member naming them:
 *
 *   {"":"\u0000reserve,seller,","reserve":120,"seller":"ann"}
 *
 * (the last of repeated members, as Lua reads them; members absent from
 * the record stay absent). A stream-stream join buffers its records the
 * same way, with the fields its function reads (op->join_reads: ops/join.c).
 * Readers of such a value (the stage after the
 * repartition, a join reading a buffered record) first check that the
 * marker names every field they read: a version of the pipeline that
 * reads more than the one that wrote the record must not take a missing
 * field for an absent one. No op of the pipeline sees the marker: they
 * read named fields only.
 */
#include "lua/vm.h"

#include <errno.h>
#include <string.h>

#define MARKER_HEAD     "{\"\":\"\\u0000"
#define MARKER_HEAD_LEN (sizeof MARKER_HEAD - 1)

/* The bytes of token t's value as in the text: strings with their quotes. */
static void raw_value(const sl_jtok_t *t, int32_t *start, int32_t *end)
{
    int quoted = t->type == SL_JTOK_STRING;
    *start = t->start - quoted;
    *end = t->end + quoted;
}

int sl_vm_record_project(sl_vm_t *vm, int slot, const char *keep, sl_record_t *out)
{
    int doc = keep ? sl_lazy_object_doc(vm, slot) : -1;
    if (doc < 0)
        return 1;
    const sl_jtok_t *base = vm->jtoks + vm->docs[doc].first;
    const char *text = vm->docs[doc].text;
    int child = 1, tokens[SL_OP_KEEP_MAX], count = 0;
    for (int k = 0; k < base[0].size; k++) { /* Lua compares escaped keys unescaped */
        if (base[child].escaped)
            return 1;
        child = base[child + 1].next;
    }
    size_t keep_len = strlen(keep), size = MARKER_HEAD_LEN + keep_len + 2;
    for (const char *name = keep; *name; count++) {
        const char *comma = strchr(name, ',');
        if (count == SL_OP_KEEP_MAX)
            return 1; /* a longer list than compile.c makes: the marker must not lie */
        tokens[count] = sl_lazy_find_member(vm, doc, 0, name, (size_t)(comma - name));
        if (tokens[count] >= 0) {
            int32_t start, end;
            raw_value(&base[tokens[count]], &start, &end);
            size += (size_t)(comma - name) + 4 + (size_t)(end - start);
        }
        name = comma + 1;
    }
    int rc = sl_vm_record_get(vm, slot, out);
    char *value = rc ? NULL : sl_arena_alloc(&vm->arena, size), *at = value;
    if (!value)
        return rc ? rc : -ENOMEM;
    memcpy(at, MARKER_HEAD, MARKER_HEAD_LEN);
    at += MARKER_HEAD_LEN;
    memcpy(at, keep, keep_len);
    at += keep_len;
    *at++ = '"';
    const char *name = keep;
    for (int i = 0; i < count; i++) {
        const char *comma = strchr(name, ',');
        if (tokens[i] >= 0) {
            int32_t start, end;
            raw_value(&base[tokens[i]], &start, &end);
            *at++ = ',';
            *at++ = '"';
            memcpy(at, name, (size_t)(comma - name));
            at += comma - name;
            *at++ = '"';
            *at++ = ':';
            memcpy(at, text + start, (size_t)(end - start));
            at += end - start;
        }
        name = comma + 1;
    }
    *at++ = '}';
    out->value = (const uint8_t *)value;
    out->value_len = (int32_t)(at - value);
    return 0;
}

int sl_vm_record_kept(sl_vm_t *vm, int slot, const char *keep, sl_record_t *out)
{
    int rc = sl_vm_record_project(vm, slot, keep, out);
    return rc == 1 ? sl_vm_record_get(vm, slot, out) : rc;
}

/* Is name (len bytes) one of the names of list ("a,b,", list_len bytes)? */
static int listed(const char *list, size_t list_len, const char *name, size_t len)
{
    for (size_t at = 0; at + len < list_len;) {
        const char *comma = memchr(list + at, ',', list_len - at);
        if (!comma)
            return 0;
        if ((size_t)(comma - list) - at == len && memcmp(list + at, name, len) == 0)
            return 1;
        at = (size_t)(comma - list) + 1;
    }
    return 0;
}

int sl_fields_cover(const char *kept, size_t kept_len, const char *needs)
{
    if (!needs)
        return 0;
    for (const char *name = needs; *name;) {
        const char *comma = strchr(name, ',');
        if (!listed(kept, kept_len, name, (size_t)(comma - name)))
            return 0;
        name = comma + 1;
    }
    return 1;
}

int sl_vm_value_keeps(const uint8_t *value, int32_t len, const char *needs, const char **kept,
                      size_t *kept_len)
{
    if (len < (int32_t)MARKER_HEAD_LEN || memcmp(value, MARKER_HEAD, MARKER_HEAD_LEN) != 0)
        return 1; /* a whole value */
    const char *list = (const char *)value + MARKER_HEAD_LEN;
    const char *quote = memchr(list, '"', (size_t)len - MARKER_HEAD_LEN);
    *kept = list;
    *kept_len = quote ? (size_t)(quote - list) : 0;
    return sl_fields_cover(list, *kept_len, needs);
}

int sl_dag_check_projections(const sl_dag_t *running, const sl_dag_t *next)
{
    static const char *const sides[] = {"left", "right"};
    for (int i = 0; i < next->op_count; i++) {
        const sl_op_t *op = &next->ops[i];
        if (op->kind != SL_OP_JOIN || op->join_kind != SL_JOIN_STREAM_STREAM)
            continue;
        for (int k = 0; k < running->op_count; k++) {
            const sl_op_t *was = &running->ops[k];
            if (was->kind != SL_OP_JOIN || was->join_kind != SL_JOIN_STREAM_STREAM ||
                strcmp(was->store, op->store) != 0)
                continue;
            for (int side = 0; side < 2; side++) { /* what its buffer may keep */
                const sl_op_t *input = &running->ops[was->inputs[side].op];
                const char *kept = was->join_reads[side], *needs = op->join_reads[side];
                if (!kept && input->kind == SL_OP_KEY_BY)
                    kept = input->keep;
                if (!kept || sl_fields_cover(kept, strlen(kept), needs))
                    continue;
                return sl_error_set(
                    SL_EINVALID,
                    "join (%s): its store '%s' holds %s records that the running version "
                    "buffered with only the fields '%s' of their value, and this version's "
                    "function reads %s%s%s: give the join a new store (store = \"...\") to start "
                    "its buffers empty",
                    op->where, op->store, sides[side], kept, needs ? "'" : "",
                    needs ? needs : "any field", needs ? "'" : "");
            }
        }
    }
    return 0;
}

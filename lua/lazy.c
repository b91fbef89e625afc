/*
 * lazy.c - records and JSON objects that turn into Lua values on demand.
 *
 * Decoding a whole JSON value and building a full record table costs more
 * than most user functions do with it: a filter reads one field. So the
 * record table a function gets holds only what has been asked for, and a
 * metatable fills the rest in on first use:
 *
 *   r          a table with `value` set; key, ts, headers, topic, partition
 *              and offset come from the slot's C record when first read
 *   r.value    for a JSON object, a table whose fields are converted from
 *              the checked tokens (jsontok.c) when first read; any other
 *              JSON value is converted at once; raw values are strings
 *
 * Each read field is stored in the table (rawset), so it is converted once
 * and later reads are plain table reads; writes go to the table and win.
 * The VM knows, by the table's address, the slot or document it reads
 * from (see make_lazy). pairs(), # and json.encode() see whole
 * tables: they first fill in every field (materialize), which also drops
 * the metatable, after which the table is an ordinary one. Setting a field
 * that was never read to nil materializes first, so the nil sticks.
 *
 * A record's bytes and tokens live until the end of its batch. A table kept
 * longer (in a global) still has what was read or materialized; reading a
 * field that never was raises an error saying so, instead of reading freed
 * memory: the VM's entries carry the batch generation, checked on each use.
 *
 * The metatables say __metatable = false, so scripts cannot see or change
 * them (they are shared by every pipeline on the VM).
 */
#include "lua/vm.h"
#include "storage/dtoa.h"

#include <lua5.4/lauxlib.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
 * Which slot or document a lazy table reads from is kept outside it, in the
 * VM's table of the batch's lazy tables, by the table's address (Lua never
 * moves an object, and a live table's address is its own): so making a
 * lazy table writes nothing into it, and scripts see only its fields.
 * Entries carry the batch generation; those of earlier batches count as
 * empty, so a batch reset clears nothing. A table kept past its batch is
 * not found there, which is how a late read is caught. An address seen
 * twice in one batch belongs to a table made after the first was collected:
 * the new entry replaces the old.
 */
static size_t address_hash(const void *table)
{
    uint64_t x = (uint64_t)(uintptr_t)table;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static int entry_live(const sl_vm_t *vm, const sl_lazy_entry_t *e)
{
    return e->table && e->generation == vm->generation;
}

/* The entry for table, or the empty one where it would go. */
static sl_lazy_entry_t *entry_for(sl_vm_t *vm, const void *table)
{
    size_t mask = vm->lazy_capacity - 1, i = address_hash(table) & mask;
    while (entry_live(vm, &vm->lazy[i]) && vm->lazy[i].table != table)
        i = (i + 1) & mask;
    return &vm->lazy[i];
}

static int grow_entries(sl_vm_t *vm)
{
    size_t capacity = vm->lazy_capacity ? 2 * vm->lazy_capacity : 1024;
    sl_lazy_entry_t *old = vm->lazy, *grown = sl_calloc(capacity, sizeof *grown);
    size_t old_capacity = vm->lazy_capacity;
    if (!grown)
        return -ENOMEM;
    vm->lazy = grown;
    vm->lazy_capacity = capacity;
    for (size_t i = 0; i < old_capacity; i++)
        if (entry_live(vm, &old[i]))
            *entry_for(vm, old[i].table) = old[i];
    sl_free(old);
    return 0;
}

/* Makes the table at the top lazy over index (a slot or a document). */
static void make_lazy(lua_State *L, sl_vm_t *vm, int index, int metatable_ref)
{
    if (2 * (vm->lazy_count + 1) > vm->lazy_capacity && grow_entries(vm))
        sl_vm_need(L, NULL);
    const void *table = lua_topointer(L, -1);
    sl_lazy_entry_t *e = entry_for(vm, table);
    if (!entry_live(vm, e))
        vm->lazy_count++;
    *e = (sl_lazy_entry_t){table, vm->generation, index};
    lua_rawgeti(L, LUA_REGISTRYINDEX, metatable_ref);
    lua_setmetatable(L, -2);
}

/* The index the lazy table at idx reads from; raises if its batch is over. */
static int handle_of(lua_State *L, sl_vm_t *vm, int idx)
{
    const void *table = lua_topointer(L, idx);
    const sl_lazy_entry_t *e = vm->lazy_capacity ? entry_for(vm, table) : NULL;
    if (!e || !entry_live(vm, e))
        luaL_error(L, "a record (or its value) was kept after its batch ended and a field "
                      "it never read is gone: copy what you need while the record is processed");
    return e->index;
}

/* The table at idx is complete: an ordinary table from now on. */
static void drop_lazy(lua_State *L, int idx)
{
    lua_pushnil(L);
    lua_setmetatable(L, idx);
}

/* ---- tokens -> Lua -------------------------------------------------------- */

static int hex_value(char ch)
{
    return ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
}

static unsigned hex4(const char *s)
{
    return (unsigned)(hex_value(s[0]) << 12 | hex_value(s[1]) << 8 | hex_value(s[2]) << 4 |
                      hex_value(s[3]));
}

static void add_utf8(luaL_Buffer *b, unsigned cp)
{
    char out[4];
    int n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        out[0] = (char)(0xf0 | cp >> 18);
        out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    luaL_addlstring(b, out, (size_t)n);
}

/* Pushes the string of a checked token (escapes were validated). */
static void push_string(lua_State *L, const char *text, const sl_jtok_t *t)
{
    const char *s = text + t->start, *end = text + t->end;
    if (!t->escaped) {
        lua_pushlstring(L, s, (size_t)(end - s));
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (s < end) {
        const char *slash = memchr(s, '\\', (size_t)(end - s));
        if (!slash) {
            luaL_addlstring(&b, s, (size_t)(end - s));
            break;
        }
        luaL_addlstring(&b, s, (size_t)(slash - s));
        char ch = slash[1];
        s = slash + 2;
        switch (ch) {
        case 'b':
            luaL_addchar(&b, '\b');
            break;
        case 'f':
            luaL_addchar(&b, '\f');
            break;
        case 'n':
            luaL_addchar(&b, '\n');
            break;
        case 'r':
            luaL_addchar(&b, '\r');
            break;
        case 't':
            luaL_addchar(&b, '\t');
            break;
        case 'u': {
            unsigned cp = hex4(s);
            s += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (hex4(s + 2) - 0xdc00);
                s += 6;
            }
            add_utf8(&b, cp);
            break;
        }
        default:
            luaL_addchar(&b, ch);
            break; /* " \ / */
        }
    }
    luaL_pushresult(&b);
}

/* The number of a checked token: an integer when integral and in int64
 * range (as lua.h promises; up to 18 digits read exactly), else a double.
 * 0, or -ENOMEM copying a very long number for strtod. */
int sl_token_number(const char *text, const sl_jtok_t *t, sl_vm_value_t *out)
{
    const char *s = text + t->start;
    int32_t len = t->end - t->start, i = 0;
    int negative = s[0] == '-';
    memset(out, 0, sizeof *out);
    out->type = SL_VM_VALUE_NUMBER;
    if (len - negative <= 18) {
        int64_t v = 0;
        for (i = negative; i < len && s[i] >= '0' && s[i] <= '9'; i++)
            v = v * 10 + (s[i] - '0');
        if (i == len) {
            out->is_integer = 1;
            out->integer = negative ? -v : v;
            return 0;
        }
    }
    if (!sl_decimal_double(s, (size_t)len, &out->number)) {
        char small[64];
        char *copy = (size_t)len < sizeof small ? small : malloc((size_t)len + 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, s, (size_t)len);
        copy[len] = '\0';
        out->number = strtod(copy, NULL);
        if (copy != small)
            free(copy);
    }
    lua_Integer integer;
    if (sl_json_integral(out->number, &integer)) {
        out->is_integer = 1;
        out->integer = integer;
    }
    return 0;
}

static void push_number(lua_State *L, const char *text, const sl_jtok_t *t)
{
    sl_vm_value_t v;
    if (sl_token_number(text, t, &v))
        sl_vm_need(L, NULL);
    if (v.is_integer)
        lua_pushinteger(L, v.integer);
    else
        lua_pushnumber(L, v.number);
}

/* Pushes token i (of tokens base) and everything under it as Lua values;
 * returns the index after its subtree. */
static int push_token(lua_State *L, const char *text, const sl_jtok_t *base, int i)
{
    const sl_jtok_t *t = &base[i];
    switch (t->type) {
    case SL_JTOK_STRING:
        push_string(L, text, t);
        break;
    case SL_JTOK_NUMBER:
        push_number(L, text, t);
        break;
    case SL_JTOK_TRUE:
    case SL_JTOK_FALSE:
        lua_pushboolean(L, t->type == SL_JTOK_TRUE);
        break;
    case SL_JTOK_NULL:
        lua_pushlightuserdata(L, NULL);
        break;
    case SL_JTOK_ARRAY: {
        int child = i + 1;
        luaL_checkstack(L, 4, "JSON nested too deep");
        lua_createtable(L, t->size, 0);
        for (int k = 1; k <= t->size; k++) {
            child = push_token(L, text, base, child);
            lua_rawseti(L, -2, k);
        }
        break;
    }
    case SL_JTOK_OBJECT: {
        int child = i + 1;
        luaL_checkstack(L, 4, "JSON nested too deep");
        lua_createtable(L, 0, t->size);
        for (int k = 0; k < t->size; k++) {
            push_string(L, text, &base[child]);
            child = push_token(L, text, base, child + 1);
            lua_rawset(L, -3);
        }
        break;
    }
    }
    return t->next;
}

/* ---- lazy JSON objects ------------------------------------------------------ */

static const sl_jtok_t *doc_tokens(const sl_vm_t *vm, int doc)
{
    return vm->jtoks + vm->docs[doc].first;
}

/* Is key token t (of text) equal to name? */
static int key_equals(lua_State *L, const char *text, const sl_jtok_t *t, const char *name,
                      size_t len)
{
    if (!t->escaped)
        return (size_t)(t->end - t->start) == len && memcmp(text + t->start, name, len) == 0;
    push_string(L, text, t);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    int equal = n == len && memcmp(s, name, len) == 0;
    lua_pop(L, 1);
    return equal;
}

int sl_lazy_find(lua_State *L, sl_vm_t *vm, int doc, const char *name, size_t len)
{
    const sl_jtok_t *base = doc_tokens(vm, doc);
    const char *text = vm->docs[doc].text;
    int found = -1, child = 1;
    for (int k = 0; k < base[0].size; k++) {
        if (key_equals(L, text, &base[child], name, len))
            found = child + 1; /* the last one wins, as in a decoder */
        child = base[child + 1].next;
    }
    return found;
}

void sl_lazy_push_found(lua_State *L, sl_vm_t *vm, int doc, int token)
{
    push_token(L, vm->docs[doc].text, doc_tokens(vm, doc), token);
}

/* Fills every field of the lazy object at idx not set yet; drops lazy. */
static void materialize_doc(lua_State *L, sl_vm_t *vm, int idx)
{
    int doc = handle_of(L, vm, idx);
    const sl_jtok_t *base = doc_tokens(vm, doc);
    const char *text = vm->docs[doc].text;
    int child = 1;
    luaL_checkstack(L, 4, "JSON nested too deep");
    for (int k = 0; k < base[0].size; k++) {
        push_string(L, text, &base[child]);
        if (lua_rawget(L, idx) == LUA_TNIL) {
            lua_pop(L, 1);
            push_string(L, text, &base[child]);
            push_token(L, text, base, child + 1);
            lua_rawset(L, idx);
        } else {
            lua_pop(L, 1);
        }
        child = base[child + 1].next;
    }
    drop_lazy(L, idx);
}

static int doc_index(lua_State *L)
{
    sl_vm_t *vm = sl_vm_of(L);
    size_t len;
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    int doc = handle_of(L, vm, 1);
    const char *name = lua_tolstring(L, 2, &len);
    int token = sl_lazy_find(L, vm, doc, name, len);
    if (token < 0)
        return 0;
    sl_lazy_push_found(L, vm, doc, token);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* ---- lazy records ----------------------------------------------------------- */

void sl_push_bytes(lua_State *L, const uint8_t *data, int32_t len)
{
    if (len < 0)
        lua_pushlightuserdata(L, NULL);
    else
        lua_pushlstring(L, (const char *)data, (size_t)len);
}

static void push_headers(lua_State *L, const sl_record_t *rec)
{
    lua_createtable(L, 0, (int)rec->header_count);
    for (uint32_t i = 0; i < rec->header_count; i++) {
        const sl_header_t *h = &rec->headers[i];
        lua_pushlstring(L, (const char *)h->name, h->name_len > 0 ? (size_t)h->name_len : 0);
        sl_push_bytes(L, h->value, h->value_len);
        lua_rawset(L, -3);
    }
}

/* Pushes field name of the record in slot (nothing for an absent one);
 * returns 1 if it pushed. */
static int push_record_field(lua_State *L, sl_vm_t *vm, int slot, const char *name)
{
    const sl_slot_t *s = &vm->slots[slot];
    const sl_record_t *rec = &s->record;
    switch (name[0]) {
    case 'k':
        if (strcmp(name, "key") || rec->key_len < 0)
            return 0;
        lua_pushlstring(L, (const char *)rec->key, (size_t)rec->key_len);
        return 1;
    case 't':
        if (strcmp(name, "ts") == 0)
            lua_pushinteger(L, rec->timestamp);
        else if (strcmp(name, "topic") == 0)
            lua_pushstring(L, s->topic ? s->topic : "");
        else
            return 0;
        return 1;
    case 'h':
        if (strcmp(name, "headers"))
            return 0;
        push_headers(L, rec);
        return 1;
    case 'p':
        if (strcmp(name, "partition"))
            return 0;
        lua_pushinteger(L, s->partition);
        return 1;
    case 'o':
        if (strcmp(name, "offset"))
            return 0;
        lua_pushinteger(L, rec->offset);
        return 1;
    }
    return 0;
}

static const char *const record_fields[] = {"key",       "ts",     "headers", "topic",
                                            "partition", "offset", NULL};

static void materialize_record(lua_State *L, sl_vm_t *vm, int idx)
{
    handle_of(L, vm, idx); /* raises for a record of an earlier batch */
    for (const char *const *name = record_fields; *name; name++) {
        lua_getfield(L, idx, *name); /* an absent field is filled in by record_index */
        lua_pop(L, 1);
    }
    drop_lazy(L, idx);
}

static int record_index(lua_State *L)
{
    sl_vm_t *vm = sl_vm_of(L);
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    int slot = handle_of(L, vm, 1);
    if (!push_record_field(L, vm, slot, lua_tostring(L, 2)))
        return 0;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* ---- both kinds ------------------------------------------------------------- */

void sl_lazy_materialize(lua_State *L, sl_vm_t *vm, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->doc_mt_ref);
    int doc = lua_rawequal(L, -1, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->record_mt_ref);
    int record = lua_rawequal(L, -1, -3);
    lua_pop(L, 3);
    if (doc)
        materialize_doc(L, vm, idx);
    else if (record)
        materialize_record(L, vm, idx);
}

int sl_lazy_is_record(lua_State *L, sl_vm_t *vm, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->record_mt_ref);
    int record = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return record;
}

/* t[k] = v for a k not in t: a nil must stick, so fill t in first. */
static int lazy_newindex(lua_State *L)
{
    if (lua_isnil(L, 3))
        sl_lazy_materialize(L, sl_vm_of(L), 1);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

static int plain_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int lazy_pairs(lua_State *L)
{
    sl_lazy_materialize(L, sl_vm_of(L), 1);
    lua_pushcfunction(L, plain_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int lazy_len(lua_State *L)
{
    sl_lazy_materialize(L, sl_vm_of(L), 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

static int new_metatable(lua_State *L, lua_CFunction index)
{
    lua_createtable(L, 0, 5);
    lua_pushcfunction(L, index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lazy_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, lazy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushcfunction(L, lazy_len);
    lua_setfield(L, -2, "__len");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void sl_lazy_init(lua_State *L, sl_vm_t *vm)
{
    vm->doc_mt_ref = new_metatable(L, doc_index);
    vm->record_mt_ref = new_metatable(L, record_index);
}

void sl_lazy_push_value(lua_State *L, sl_vm_t *vm, int doc)
{
    const sl_jtok_t *base = doc_tokens(vm, doc);
    if (base[0].type != SL_JTOK_OBJECT) {
        push_token(L, vm->docs[doc].text, base, 0);
        return;
    }
    lua_createtable(L, 0, 4);
    make_lazy(L, vm, doc, vm->doc_mt_ref);
}

void sl_lazy_push_record(lua_State *L, sl_vm_t *vm, int slot)
{
    lua_createtable(L, 0, 4);
    make_lazy(L, vm, slot, vm->record_mt_ref);
}

/* ---- fields for stateful operators ------------------------------------------- */

int sl_lazy_object_doc(const sl_vm_t *vm, int slot)
{
    const sl_slot_t *s = &vm->slots[slot];
    if (s->kind != SL_SLOT_LOADED || s->doc < 0 || s->has_table ||
        doc_tokens(vm, s->doc)[0].type != SL_JTOK_OBJECT)
        return -1;
    return s->doc;
}

int sl_lazy_find_member(const sl_vm_t *vm, int doc, int object, const char *name, size_t len)
{
    const sl_jtok_t *base = doc_tokens(vm, doc);
    const char *text = vm->docs[doc].text;
    int found = -1, child = object + 1;
    for (int k = 0; k < base[object].size; k++) {
        const sl_jtok_t *key = &base[child];
        if (key->escaped)
            return -2; /* compared after unescaping, in Lua */
        if ((size_t)(key->end - key->start) == len && (len == 0 || text[key->start] == name[0]) &&
            memcmp(text + key->start, name, len) == 0)
            found = child + 1;
        child = base[child + 1].next;
    }
    return found;
}

int sl_lazy_find_plain(const sl_vm_t *vm, int doc, const char *name)
{
    return sl_lazy_find_member(vm, doc, 0, name, strlen(name));
}

int sl_lazy_field(sl_vm_t *vm, int doc, const char *name, sl_vm_value_t *out)
{
    const sl_jtok_t *base = doc_tokens(vm, doc);
    const char *text = vm->docs[doc].text;
    int found = sl_lazy_find_plain(vm, doc, name);
    memset(out, 0, sizeof *out);
    if (found == -2)
        return -1;
    const sl_jtok_t *t = found < 0 ? NULL : &base[found];
    if (!t || t->type == SL_JTOK_NULL) {
        out->type = SL_VM_VALUE_NONE;
    } else if (t->type == SL_JTOK_STRING) {
        if (t->escaped)
            return -1;
        out->type = SL_VM_VALUE_STRING;
        out->bytes = text + t->start;
        out->len = (size_t)(t->end - t->start);
    } else if (t->type == SL_JTOK_NUMBER) {
        if (sl_token_number(text, t, out))
            return -1; /* out of memory: let the Lua path say so */
    } else {
        out->type = SL_VM_VALUE_OTHER;
    }
    return 0;
}

void sl_lazy_push_json(lua_State *L, sl_vm_t *vm, const char *text, size_t len)
{
    int doc;
    if (len > INT32_MAX)
        sl_vm_raise(L, "a JSON text of %zu bytes is too long", len);
    int rc = sl_json_tokenize(vm, text, (int32_t)len, &doc);
    if (rc == -ENOMEM)
        sl_vm_need(L, NULL);
    if (rc)
        sl_vm_raise(L, "invalid JSON: %s", sl_error_detail());
    push_token(L, text, doc_tokens(vm, doc), 0);
}

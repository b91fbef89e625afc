/*
 * keysort.c - radix sort of keys into LMDB's order (see keysort.h).
 */
#include "storage/keysort.h"
#include "storage/buf.h"

#include <string.h>

#define SMALL_RUN 24 /* below this, insertion sort */

static uint64_t digit_at(const sl_key_item_t *it, size_t depth)
{
    if (it->len >= depth + 8) /* a whole digit: one big-endian load */
        return sl_get_be64(it->key + depth);
    uint8_t bytes[8] = {0}; /* the key's end, zero-padded */
    if (depth < it->len)
        memcpy(bytes, it->key + depth, it->len - depth);
    return sl_get_be64(bytes);
}

/* LMDB's order for keys equal in their first depth bytes. */
static int compare_from(const sl_key_item_t *a, const sl_key_item_t *b, size_t depth)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n > depth ? memcmp(a->key + depth, b->key + depth, n - depth) : 0;
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static void insertion_sort(sl_key_item_t *a, size_t n, size_t depth)
{
    for (size_t i = 1; i < n; i++) {
        sl_key_item_t x = a[i];
        size_t j = i;
        for (; j > 0 && compare_from(&a[j - 1], &x, depth) > 0; j--)
            a[j] = a[j - 1];
        a[j] = x;
    }
}

/* Stable LSD radix sort of a[0..n) by digit, through tmp: each pass that
 * moves items goes from one array to the other, and the items are copied
 * back into a once, at the end, if they ended in tmp. */
static void sort_by_digit(sl_key_item_t *a, sl_key_item_t *tmp, size_t n)
{
    sl_key_item_t *from = a, *to = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        size_t count[256] = {0};
        for (size_t i = 0; i < n; i++)
            count[(from[i].digit >> shift) & 0xff]++;
        if (count[(from[0].digit >> shift) & 0xff] == n)
            continue; /* every item has this byte: nothing moves */
        size_t at = 0;
        for (int b = 0; b < 256; b++) {
            size_t c = count[b];
            count[b] = at;
            at += c;
        }
        for (size_t i = 0; i < n; i++)
            to[count[(from[i].digit >> shift) & 0xff]++] = from[i];
        sl_key_item_t *t = from;
        from = to;
        to = t;
    }
    if (from != a)
        memcpy(a, from, n * sizeof *a);
}

static void sort_from(sl_key_item_t *a, sl_key_item_t *tmp, size_t n, size_t depth);

/* A run of items whose keys agree up to depth + 8 (zero-padded): those that
 * end by then go first, shortest first (stable); the rest go deeper. */
static void finish_run(sl_key_item_t *a, sl_key_item_t *tmp, size_t n, size_t depth)
{
    size_t shorter = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i].len <= depth + 8)
            tmp[shorter++] = a[i];
    size_t longer = shorter;
    for (size_t i = 0; i < n; i++)
        if (a[i].len > depth + 8)
            tmp[longer++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
    insertion_sort(a, shorter, depth); /* by length only: they agree, zero-padded */
    if (n - shorter > 1)
        sort_from(a + shorter, tmp, n - shorter, depth + 8);
}

static void sort_from(sl_key_item_t *a, sl_key_item_t *tmp, size_t n, size_t depth)
{
    if (n < SMALL_RUN) {
        insertion_sort(a, n, depth);
        return;
    }
    for (size_t i = 0; depth > 0 && i < n; i++)
        a[i].digit = depth == 8 ? a[i].next_digit : digit_at(&a[i], depth);
    sort_by_digit(a, tmp, n);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && a[j].digit == a[i].digit)
            j++;
        if (j - i > 1)
            finish_run(a + i, tmp, j - i, depth);
        i = j;
    }
}

void sl_key_sort(sl_key_item_t *items, sl_key_item_t *tmp, size_t n)
{
    if (n < 2)
        return;
    for (size_t i = 0; i < n; i++) {
        items[i].digit = digit_at(&items[i], 0);
        items[i].next_digit = digit_at(&items[i], 8);
    }
    sort_from(items, tmp, n, 0);
}

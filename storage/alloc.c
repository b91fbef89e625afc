/*
 * alloc.c - the one allocator of sluice.
 *
 * Everything allocates through sl_malloc() and friends so that a test can
 * make the next allocation fail (sl_alloc_fail_after) and check that the
 * caller returns -ENOMEM cleanly. Callers never abort on NULL.
 */
#include "storage/storage.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Allocations left before injected failure; negative = never fail. */
static _Atomic long allocations_until_failure = -1;

static int injected_failure(void)
{
    long left = atomic_load_explicit(&allocations_until_failure, memory_order_relaxed);
    if (left < 0)
        return 0;
    if (left == 0)
        return 1;
    atomic_fetch_sub_explicit(&allocations_until_failure, 1, memory_order_relaxed);
    return 0;
}

void sl_alloc_fail_after(long n)
{
    atomic_store(&allocations_until_failure, n);
}

void *sl_malloc(size_t size)
{
    return injected_failure() ? NULL : malloc(size ? size : 1);
}

void *sl_calloc(size_t count, size_t size)
{
    return injected_failure() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

#define HUGE_PAGE ((size_t)2 << 20)

void *sl_calloc_huge(size_t count, size_t size)
{
    size_t bytes = count * size;
    void *p;
    if (size && bytes / size != count)
        return NULL;
    if (bytes < 2 * HUGE_PAGE)
        return sl_calloc(count, size);
    if (injected_failure() || posix_memalign(&p, HUGE_PAGE, bytes))
        return NULL;
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without it, small pages */
    return memset(p, 0, bytes);
}

void *sl_realloc(void *ptr, size_t size)
{
    return injected_failure() ? NULL : realloc(ptr, size ? size : 1);
}

char *sl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *copy = sl_malloc(n);
    if (copy)
        memcpy(copy, s, n);
    return copy;
}

int sl_array_reserve(void **array, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *grown = sl_realloc(*array, n * item);
    if (!grown)
        return -ENOMEM;
    *array = grown;
    *cap = n;
    return 0;
}

void sl_free(void *ptr)
{
    free(ptr);
}

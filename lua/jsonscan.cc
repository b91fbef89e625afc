/*
 * jsonscan.cc - simdjson's structural indexer behind a C interface.
 *
 * simdjson's public parsers build a whole document (numbers converted,
 * strings unescaped into their own buffer) and keep no byte offsets, while
 * sluice's tokens point into the record's own text and convert lazily. So
 * this runs only the first of simdjson's two stages, through the parser
 * implementation its DOM parser uses (simdjson 3.0, Debian 12): that stage
 * reads the text in 64-byte blocks, the last one copied into a padded
 * block of its own, so the text needs no padding past len.
 *
 * The buffer grows to the longest text seen, up to SL_JSONSCAN_MAX.
 */
#include "lua/jsonscan.h"

#include <simdjson.h>

#include <memory>
#include <new>

struct sl_jsonscan {
    std::unique_ptr<simdjson::internal::dom_parser_implementation> impl;
};

static const size_t FIRST_CAPACITY = 64 * 1024;
static const size_t MAX_DEPTH = 2; /* stage 2 never runs */

sl_jsonscan_t *sl_jsonscan_new(void)
{
    sl_jsonscan_t *scan = new (std::nothrow) sl_jsonscan_t;
    if (!scan)
        return nullptr;
    const simdjson::implementation *simd = simdjson::get_active_implementation();
    if (simd->create_dom_parser_implementation(FIRST_CAPACITY, MAX_DEPTH, scan->impl) !=
        simdjson::SUCCESS) {
        delete scan;
        return nullptr;
    }
    return scan;
}

void sl_jsonscan_free(sl_jsonscan_t *scan)
{
    delete scan;
}

/* Capacity for len bytes: doubling, so a run of growing texts costs little.
 * A failed grow leaves simdjson's capacity at 0 (and no buffer): the next
 * call starts again from FIRST_CAPACITY. */
static bool reserve(sl_jsonscan_t *scan, size_t len)
{
    size_t capacity = scan->impl->capacity();
    if (len < capacity)
        return true;
    if (capacity < FIRST_CAPACITY)
        capacity = FIRST_CAPACITY;
    while (capacity <= len)
        capacity *= 2;
    if (capacity > SL_JSONSCAN_MAX + 1)
        capacity = SL_JSONSCAN_MAX + 1;
    return scan->impl->set_capacity(capacity) == simdjson::SUCCESS;
}

int32_t sl_jsonscan_run(sl_jsonscan_t *scan, const char *text, int32_t len,
                        const uint32_t **positions)
{
    if (len <= 0 || len > SL_JSONSCAN_MAX || !reserve(scan, (size_t)len))
        return -1;
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(text);
    if (scan->impl->stage1(bytes, (size_t)len, simdjson::stage1_mode::regular) != simdjson::SUCCESS)
        return -1;
    *positions = scan->impl->structural_indexes.get();
    return (int32_t)scan->impl->n_structural_indexes;
}

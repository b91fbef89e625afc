/*
 * fuzz_json.c - libFuzzer target for the JSON tokenizer's two ways.
 *
 * The input is a record value. It is tokenized the slow way (jsmn and the
 * RFC 8259 check, the reference) and the fast way (simdjson's structural
 * scan and the walk over it), each from its own exact-size heap copy so
 * that ASan sees any read past the end. The property: whenever the fast
 * way takes a text, the slow way takes it too and makes the same tokens;
 * and sl_json_tokenize answers as the slow way does. Anything else aborts.
 *
 * The VM is a zeroed sl_vm_t holding only what tokenizing touches (the
 * token and document arrays, jsmn's scratch, the scanner), reset between
 * inputs as a batch reset would.
 */
#include "lua/vm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static sl_vm_t vm;

static int same_tokens(const sl_jtok_t *a, const sl_jtok_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].start != b[i].start || a[i].end != b[i].end || a[i].size != b[i].size ||
            a[i].next != b[i].next || a[i].type != b[i].type || a[i].escaped != b[i].escaped)
            return 0;
    return 1;
}

static char *copy_of(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    CHECK(text);
    memcpy(text, data, size);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1 << 20))
        return 0;
    char *slow_text = copy_of(data, size), *fast_text = copy_of(data, size);
    int slow_doc = -1, fast_doc = -1, doc = -1;
    vm.jtok_count = vm.doc_count = 0;
    int slow = sl_json_tokenize_slow(&vm, slow_text, (int32_t)size, &slow_doc);
    size_t slow_end = vm.jtok_count;
    int fast = sl_json_tokenize_fast(&vm, fast_text, (int32_t)size, &fast_doc);
    CHECK(fast == 0 || fast == 1);
    if (fast == 0) {
        CHECK(slow == 0);
        size_t n = slow_end - (size_t)vm.docs[slow_doc].first;
        CHECK(vm.jtok_count - slow_end == n);
        CHECK(
            same_tokens(vm.jtoks + vm.docs[slow_doc].first, vm.jtoks + vm.docs[fast_doc].first, n));
    }
    CHECK(sl_json_tokenize(&vm, fast_text, (int32_t)size, &doc) == slow);
    free(slow_text);
    free(fast_text);
    return 0;
}

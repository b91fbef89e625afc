/*
 * test_crc32c.c - both CRC-32C implementations against the published
 * vectors (RFC 3720 appendix B.4 and the "123456789" check value).
 */
#include "testutil.h"

#include "storage/crc32c.h"

#include <stdlib.h>
#include <string.h>

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static void check_vectors(crc_fn crc)
{
    uint8_t buf[32];
    assert_int_equal(crc(0, "123456789", 9), 0xE3069283u);
    memset(buf, 0, sizeof buf);
    assert_int_equal(crc(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    assert_int_equal(crc(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(crc(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(crc(0, buf, 32), 0x113FDB5Cu);
    assert_int_equal(crc(0, "", 0), 0);
}

static void test_table_matches_published_vectors(void **state)
{
    (void)state;
    check_vectors(sl_crc32c_table);
}

static void test_hardware_matches_published_vectors(void **state)
{
    (void)state;
    if (!sl_crc32c_hardware())
        skip();
    check_vectors(sl_crc32c_sse42);
}

static void test_dispatch_matches_published_vectors(void **state)
{
    (void)state;
    check_vectors(sl_crc32c);
}

/* Continuing a CRC over split input equals one pass, at every split and
 * alignment, and both implementations agree on random data. */
static void test_streaming_and_implementations_agree(void **state)
{
    (void)state;
    uint8_t buf[1000];
    srand(7);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rand();
    uint32_t whole = sl_crc32c_table(0, buf, sizeof buf);
    for (size_t split = 0; split <= 64; split++) {
        uint32_t part = sl_crc32c_table(0, buf, split);
        assert_int_equal(sl_crc32c_table(part, buf + split, sizeof buf - split), whole);
        for (size_t off = 0; off < 8; off++)
            assert_int_equal(sl_crc32c(0, buf + off, split + 100),
                             sl_crc32c_table(0, buf + off, split + 100));
    }
}

/* The hardware path runs three CRCs at once over stripes of 3 x 4096 and
 * 3 x 256 bytes and joins them: every length around those stripes (and the
 * single-CRC tail after them), at every alignment, gives the table's CRC,
 * continued from a CRC that is not 0 too. */
static void test_hardware_stripes_agree_with_table(void **state)
{
    (void)state;
    if (!sl_crc32c_hardware())
        skip();
    enum { SIZE = 3 * 4096 * 2 + 3 * 256 * 3 + 64 };
    static uint8_t buf[SIZE + 8];
    srand(11);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rand();
    const size_t around[] = {3 * 256, 3 * 4096, 2 * 3 * 4096, 3 * 4096 + 3 * 256, SIZE - 8};
    for (size_t a = 0; a < sizeof around / sizeof around[0]; a++)
        for (size_t len = around[a] - 9; len <= around[a] + 9; len++)
            for (size_t off = 0; off < 8; off++) {
                assert_int_equal(sl_crc32c_sse42(0, buf + off, len),
                                 sl_crc32c_table(0, buf + off, len));
                assert_int_equal(sl_crc32c_sse42(0x12345678, buf + off, len),
                                 sl_crc32c_table(0x12345678, buf + off, len));
            }
    for (size_t len = 0; len <= SIZE; len += 97)
        assert_int_equal(sl_crc32c(0, buf, len), sl_crc32c_table(0, buf, len));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_published_vectors),
        cmocka_unit_test(test_hardware_matches_published_vectors),
        cmocka_unit_test(test_dispatch_matches_published_vectors),
        cmocka_unit_test(test_streaming_and_implementations_agree),
        cmocka_unit_test(test_hardware_stripes_agree_with_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

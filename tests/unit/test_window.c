/*
 * test_window.c - durations, window specs, assignment at boundaries and for
 * negative times, watermarks and lateness at the grace boundary, session
 * placement (extending, bridging, late-but-within-grace bridging, closed
 * sessions), and the queue of open windows against a simple model.
 */
#include "testutil.h"

#include "ops/window.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t next_random(uint64_t *seed)
{
    uint64_t z = (*seed += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* A random integer in [lo, hi]. */
static int64_t random_between(uint64_t *seed, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(next_random(seed) % (uint64_t)(hi - lo + 1));
}

/* ---- durations ------------------------------------------------------- */

static void test_durations_parse_every_unit(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"500ms", 500},
        {"10s", 10000},
        {"5m", 300000},
        {"1h", 3600000},
        {"1d", 86400000},
        {"1500", 1500},
        {"0", 0},
        {"0s", 0},
        {"007s", 7000},
        {"24h", 86400000},
        {"10000000000000", SL_DURATION_MAX},
        {"115740d", 115740LL * 86400000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t ms = -1;
        assert_int_equal(sl_duration_parse(cases[i].text, &ms), 0);
        assert_int_equal(ms, cases[i].ms);
    }
}

static void test_bad_durations_say_what_is_wrong(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *why;
    } cases[] = {
        {"", "empty"},
        {"-5s", "does not start with a digit"},
        {" 5s", "does not start with a digit"},
        {"s", "does not start with a digit"},
        {"5 s", "unknown unit"},
        {"5x", "unknown unit"},
        {"5min", "unknown unit"},
        {"5S", "unknown unit"},
        {"5s ", "unknown unit"},
        {"1.5s", "fractions"},
        {"10000000000001", "too long"},
        {"115741d", "too long"},
        {"99999999999999999999999ms", "too long"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t ms = 42;
        assert_int_equal(sl_duration_parse(cases[i].text, &ms), SL_EINVALID);
        assert_int_equal(ms, 42);
        assert_non_null(strstr(sl_error_detail(), cases[i].why));
        assert_non_null(strstr(sl_error_detail(), cases[i].text));
    }
    int64_t ms;
    assert_int_equal(sl_duration_parse(NULL, &ms), SL_EINVALID);
}

/* ---- specs ----------------------------------------------------------- */

static void test_specs_check_their_durations(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_tumbling(0, 0, &spec), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "size 0 ms"));
    assert_int_equal(sl_window_tumbling(-5, 0, &spec), SL_EINVALID);
    assert_int_equal(sl_window_tumbling(SL_DURATION_MAX + 1, 0, &spec), SL_EINVALID);
    assert_int_equal(sl_window_tumbling(10, -1, &spec), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "grace -1 ms"));
    assert_int_equal(sl_window_tumbling(SL_DURATION_MAX, SL_DURATION_MAX, &spec), 0);
    assert_int_equal(sl_window_hopping(10, 0, 0, &spec), SL_EINVALID);
    assert_int_equal(sl_window_hopping(10, 11, 0, &spec), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "over the size"));
    assert_int_equal(sl_window_hopping(1025, 1, 0, &spec), SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "over 1024 windows"));
    assert_int_equal(sl_window_hopping(1024, 1, 0, &spec), 0);
    assert_int_equal(sl_window_overlap(&spec), 1024);
    assert_int_equal(sl_window_session(0, 0, &spec), SL_EINVALID);
    assert_int_equal(sl_window_session(1, -1, &spec), SL_EINVALID);
    assert_int_equal(sl_window_session(1, 0, &spec), 0);
    assert_int_equal(spec.kind, SL_WINDOW_SESSION);
}

/* ---- assignment ------------------------------------------------------ */

/* Asserts that t falls in exactly the windows starting at starts[]. */
static void assert_windows(const sl_window_spec_t *spec, int64_t t, const int64_t *starts, int n)
{
    sl_window_t w[SL_WINDOW_MAX_OVERLAP];
    assert_int_equal(sl_window_assign(spec, t, w, SL_WINDOW_MAX_OVERLAP), n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(w[i].start, starts[i]);
        assert_int_equal(w[i].end, starts[i] + spec->size);
    }
}

static void test_tumbling_windows_at_boundaries(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_tumbling(10, 0, &spec), 0);
    assert_int_equal(sl_window_overlap(&spec), 1);
    const int64_t cases[][2] = {{0, 0},     {9, 0},     {10, 10},  {19, 10}, {-1, -10},
                                {-10, -10}, {-11, -20}, {-9, -10}, {25, 20}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        assert_windows(&spec, cases[i][0], &cases[i][1], 1);
}

static void test_hopping_windows_at_boundaries(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_hopping(10, 5, 0, &spec), 0);
    assert_windows(&spec, 0, (int64_t[]){-5, 0}, 2);
    assert_windows(&spec, 4, (int64_t[]){-5, 0}, 2);
    assert_windows(&spec, 5, (int64_t[]){0, 5}, 2);
    assert_windows(&spec, 9, (int64_t[]){0, 5}, 2);
    assert_windows(&spec, 10, (int64_t[]){5, 10}, 2);
    assert_windows(&spec, -1, (int64_t[]){-10, -5}, 2);
    assert_windows(&spec, -5, (int64_t[]){-10, -5}, 2);
    assert_windows(&spec, -6, (int64_t[]){-15, -10}, 2);
}

/* Size not a multiple of the advance: 2 or 3 windows, as window.h says. */
static void test_hopping_size_not_a_multiple_of_advance(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_hopping(10, 4, 0, &spec), 0);
    assert_int_equal(sl_window_overlap(&spec), 3);
    assert_windows(&spec, 9, (int64_t[]){0, 4, 8}, 3);
    assert_windows(&spec, 3, (int64_t[]){-4, 0}, 2);
    assert_windows(&spec, 8, (int64_t[]){0, 4, 8}, 3);
    assert_windows(&spec, 10, (int64_t[]){4, 8}, 2);
    assert_windows(&spec, -1, (int64_t[]){-8, -4}, 2);
    assert_windows(&spec, -3, (int64_t[]){-12, -8, -4}, 3);
}

/* Every window of a random spec, found by brute force, equals assign's. */
static void test_assignment_matches_brute_force(void **state)
{
    (void)state;
    uint64_t seed = 7;
    for (int round = 0; round < 300; round++) {
        int64_t advance = random_between(&seed, 1, 12);
        int64_t size = advance * random_between(&seed, 1, 4) + random_between(&seed, 0, 11);
        sl_window_spec_t spec;
        assert_int_equal(sl_window_hopping(size, advance, 0, &spec), 0);
        for (int k = 0; k < 50; k++) {
            int64_t t = random_between(&seed, -200, 200);
            int64_t expected[64];
            int n = 0;
            for (int64_t s = -400 / advance * advance - advance * 2; s <= 400; s += advance)
                if (s <= t && t < s + size)
                    expected[n++] = s;
            assert_true(n == size / advance || n == (size + advance - 1) / advance);
            assert_windows(&spec, t, expected, n);
        }
    }
}

static void test_event_times_out_of_range_are_refused(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    sl_window_t w[SL_WINDOW_MAX_OVERLAP];
    assert_int_equal(sl_window_hopping(SL_DURATION_MAX, SL_DURATION_MAX / 1024 + 1, 0, &spec), 0);
    assert_int_equal(sl_window_assign(&spec, SL_TIME_MAX + 1, w, SL_WINDOW_MAX_OVERLAP),
                     SL_EINVALID);
    assert_non_null(strstr(sl_error_detail(), "out of range"));
    assert_int_equal(sl_window_assign(&spec, SL_TIME_MIN - 1, w, SL_WINDOW_MAX_OVERLAP),
                     SL_EINVALID);
    /* The extremes themselves work without overflow (UBSan checks). */
    int n = sl_window_assign(&spec, SL_TIME_MAX, w, SL_WINDOW_MAX_OVERLAP);
    assert_true(n >= 1);
    assert_true(w[n - 1].start <= SL_TIME_MAX && SL_TIME_MAX < w[n - 1].end);
    n = sl_window_assign(&spec, SL_TIME_MIN, w, SL_WINDOW_MAX_OVERLAP);
    assert_true(n >= 1 && w[0].start <= SL_TIME_MIN);
}

/* ---- watermarks and lateness ------------------------------------------ */

static void test_watermark_is_stream_time_minus_grace(void **state)
{
    (void)state;
    sl_watermark_t wm;
    sl_watermark_init(&wm, 10);
    assert_int_equal(sl_watermark_get(&wm), SL_WATERMARK_NONE);
    assert_true(sl_watermark_observe(&wm, 100));
    assert_int_equal(sl_watermark_get(&wm), 90);
    assert_false(sl_watermark_observe(&wm, 50)); /* out of order: no change */
    assert_false(sl_watermark_observe(&wm, 100));
    assert_int_equal(sl_watermark_get(&wm), 90);
    assert_true(sl_watermark_observe(&wm, 101));
    assert_int_equal(sl_watermark_get(&wm), 91);
    assert_true(sl_watermark_observe(&wm, -5000) == false);
    sl_watermark_t restored;
    sl_watermark_init(&restored, 10);
    sl_watermark_restore(&restored, wm.stream_time);
    assert_int_equal(sl_watermark_get(&restored), 91);
    assert_false(sl_window_is_closed(INT64_MIN + 1, SL_WATERMARK_NONE));
}

/* Behind a repartition topic: the stream time waits at the bound (the
 * slowest busy upstream task), reaches the floor without records, and
 * never goes back. */
static void test_watermark_bound_and_floor(void **state)
{
    (void)state;
    sl_watermark_t wm;
    sl_watermark_init(&wm, 0);
    sl_watermark_restore(&wm, 100);
    assert_false(sl_watermark_bound(&wm, SL_WATERMARK_NONE, SL_WATERMARK_NONE)); /* held */
    assert_false(sl_watermark_observe(&wm, 5000));
    assert_int_equal(wm.stream_time, 100);
    assert_true(sl_watermark_bound(&wm, 3000, 3000)); /* the slowest is at 3000 */
    assert_int_equal(wm.stream_time, 3000);
    assert_false(sl_watermark_observe(&wm, 6000)); /* a faster upstream's record */
    assert_int_equal(wm.stream_time, 3000);
    assert_true(sl_watermark_bound(&wm, 4000, 4000));
    assert_int_equal(wm.stream_time, 4000);
    assert_false(sl_watermark_bound(&wm, 2000, 2000)); /* never back */
    assert_int_equal(wm.stream_time, 4000);
    assert_true(sl_watermark_bound(&wm, SL_WATERMARK_UNBOUNDED, 5500)); /* all idle */
    assert_int_equal(wm.stream_time, 6000);                             /* seen wins */
    assert_true(sl_watermark_bound(&wm, SL_WATERMARK_UNBOUNDED, 9000)); /* said wins */
    assert_int_equal(wm.stream_time, 9000);
    assert_true(sl_watermark_observe(&wm, 9500));
    assert_int_equal(wm.stream_time, 9500);
}

/* Is a record at t late for window w, after the stream reached `stream`? */
static bool late_for(const sl_window_t *w, int64_t stream, int64_t grace, int64_t t)
{
    sl_watermark_t wm;
    sl_watermark_init(&wm, grace);
    sl_watermark_observe(&wm, stream);
    sl_watermark_observe(&wm, t);
    return sl_window_is_closed(w->end, sl_watermark_get(&wm));
}

/* Window [0, 60s) with grace 10s closes when the stream time reaches 70s. */
static void test_window_closes_at_end_plus_grace(void **state)
{
    (void)state;
    sl_window_t w = {0, 60000};
    assert_false(late_for(&w, 69999, 10000, 59999));
    assert_true(late_for(&w, 70000, 10000, 59999));
    assert_true(late_for(&w, 70000, 10000, 0));
    assert_false(late_for(&w, 69999, 10000, 0));
    /* grace 0: closed as soon as the stream time reaches the end */
    assert_false(late_for(&w, 59999, 0, 59998));
    assert_true(late_for(&w, 60000, 0, 59999));
    sl_watermark_t wm;
    sl_watermark_init(&wm, 10000);
    sl_watermark_observe(&wm, 70000);
    assert_int_equal(sl_watermark_get(&wm), 60000);
    sl_window_spec_t spec;
    assert_int_equal(sl_window_tumbling(60000, 10000, &spec), 0);
    assert_int_equal(sl_window_closed_through(&spec, 60000), 0);
    assert_int_equal(sl_window_closed_through(&spec, 59999), -60000);
    assert_int_equal(sl_window_closed_through(&spec, SL_WATERMARK_NONE), INT64_MIN);
}

/* A record that moves the stream time is never late for its own windows,
 * and records at or after the watermark never are. */
static void test_records_at_or_after_the_watermark_are_on_time(void **state)
{
    (void)state;
    uint64_t seed = 11;
    sl_window_spec_t spec;
    sl_window_t w[SL_WINDOW_MAX_OVERLAP];
    assert_int_equal(sl_window_hopping(100, 30, 25, &spec), 0);
    sl_watermark_t wm;
    sl_watermark_init(&wm, spec.grace);
    for (int i = 0; i < 5000; i++) {
        int64_t before = sl_watermark_get(&wm);
        int64_t t = random_between(&seed, -500, 5000 + i);
        sl_watermark_observe(&wm, t);
        int n = sl_window_assign(&spec, t, w, SL_WINDOW_MAX_OVERLAP);
        for (int k = 0; k < n; k++)
            if (before == SL_WATERMARK_NONE || t >= before)
                assert_false(sl_window_is_closed(w[k].end, sl_watermark_get(&wm)));
    }
}

/* Hopping: a late record may miss its older window and count in a newer. */
static void test_hopping_record_late_for_one_window_only(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    sl_window_t w[SL_WINDOW_MAX_OVERLAP];
    assert_int_equal(sl_window_hopping(10, 5, 2, &spec), 0);
    sl_watermark_t wm;
    sl_watermark_init(&wm, spec.grace);
    sl_watermark_observe(&wm, 12); /* watermark 10 */
    assert_int_equal(sl_window_assign(&spec, 7, w, SL_WINDOW_MAX_OVERLAP), 2);
    assert_true(sl_window_is_closed(w[0].end, sl_watermark_get(&wm)));  /* [0, 10) */
    assert_false(sl_window_is_closed(w[1].end, sl_watermark_get(&wm))); /* [5, 15) */
}

/* ---- sessions -------------------------------------------------------- */

static sl_session_placement_t place(const sl_window_spec_t *spec, int64_t watermark,
                                    const sl_session_t *sessions, size_t n, int64_t t)
{
    sl_session_placement_t p;
    assert_int_equal(sl_session_place(spec, watermark, sessions, n, t, &p), 0);
    return p;
}

static void assert_placement(sl_session_placement_t p, int64_t first, int64_t last, size_t at,
                             size_t count, bool late)
{
    assert_int_equal(p.session.first, first);
    assert_int_equal(p.session.last, last);
    assert_int_equal(p.first, at);
    assert_int_equal(p.count, count);
    assert_int_equal(p.late, late);
}

static void test_session_gap_is_inclusive(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_session(10, 0, &spec), 0);
    const sl_session_t one[] = {{0, 5}};
    assert_placement(place(&spec, SL_WATERMARK_NONE, NULL, 0, 7), 7, 7, 0, 0, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, one, 1, 15), 0, 15, 0, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, one, 1, 16), 16, 16, 1, 0, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, one, 1, -10), -10, 5, 0, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, one, 1, -11), -11, -11, 0, 0, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, one, 1, 3), 0, 5, 0, 1, false);
    assert_int_equal(sl_session_close_time(&spec, &one[0]), 16);
}

static void test_record_between_sessions_bridges_them(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_session(10, 0, &spec), 0);
    const sl_session_t s[] = {{-50, -40}, {0, 0}, {20, 25}, {60, 60}};
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 10), 0, 25, 1, 2, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 9), 0, 9, 1, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 11), 11, 25, 2, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 12), 12, 25, 2, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 40), 40, 40, 3, 0, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 61), 60, 61, 3, 1, false);
    assert_placement(place(&spec, SL_WATERMARK_NONE, s, 4, 71), 71, 71, 4, 0, false);
    /* apply: bridging two leaves three sessions */
    sl_session_t list[5];
    memcpy(list, s, sizeof s);
    size_t n = 4;
    sl_session_placement_t p = place(&spec, SL_WATERMARK_NONE, list, n, 10);
    sl_session_apply(list, &n, &p);
    assert_int_equal(n, 3);
    assert_int_equal(list[1].first, 0);
    assert_int_equal(list[1].last, 25);
    assert_int_equal(list[2].first, 60);
    p = place(&spec, SL_WATERMARK_NONE, list, n, 40);
    sl_session_apply(list, &n, &p);
    assert_int_equal(n, 4);
    assert_int_equal(list[2].first, 40);
    assert_int_equal(list[3].first, 60);
}

/* Gap 10, grace 100: records at 0 and 20 make two sessions; a record at
 * 100 moves the watermark to 0; the record at 10 arrives late (behind the
 * stream time) but within the grace and bridges the two sessions. */
static void test_late_record_within_grace_bridges_sessions(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_session(10, 100, &spec), 0);
    sl_watermark_t wm;
    sl_watermark_init(&wm, spec.grace);
    sl_session_t list[8];
    size_t n = 0;
    const int64_t times[] = {0, 20, 100, 10};
    for (int i = 0; i < 4; i++) {
        sl_watermark_observe(&wm, times[i]);
        sl_session_placement_t p = place(&spec, sl_watermark_get(&wm), list, n, times[i]);
        assert_false(p.late);
        if (i == 3)
            assert_placement(p, 0, 20, 0, 2, false);
        sl_session_apply(list, &n, &p);
    }
    assert_int_equal(n, 2);
    assert_int_equal(list[0].first, 0);
    assert_int_equal(list[0].last, 20);
    assert_int_equal(list[1].first, 100);
}

/* Gap 10, grace 0: session [0, 0] closes when the watermark reaches 11. */
static void test_closed_sessions_refuse_late_records(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    assert_int_equal(sl_window_session(10, 0, &spec), 0);
    const sl_session_t s[] = {{0, 0}, {30, 30}};
    assert_placement(place(&spec, 10, s, 2, 10), 0, 10, 0, 1, false);
    assert_placement(place(&spec, 11, s, 2, 10), 0, 10, 0, 1, true);
    /* Near a closed session but beyond its gap: no matter. */
    assert_placement(place(&spec, 11, s, 2, 20), 20, 30, 1, 1, false);
    /* Bridging an open session to a closed one is late. */
    const sl_session_t close[] = {{0, 0}, {19, 30}};
    assert_placement(place(&spec, 11, close, 2, 10), 0, 30, 0, 2, true);
    /* A record behind the watermark whose own session is still open is
     * taken: close time t + gap + 1 > watermark. */
    assert_placement(place(&spec, 100, NULL, 0, 90), 90, 90, 0, 0, false);
    assert_placement(place(&spec, 100, NULL, 0, 89), 89, 89, 0, 0, true);
    /* ... and extending an open session backwards is fine. */
    const sl_session_t open[] = {{95, 99}};
    assert_placement(place(&spec, 100, open, 1, 85), 85, 99, 0, 1, false);
}

static void test_damaged_session_lists_are_refused(void **state)
{
    (void)state;
    sl_window_spec_t spec;
    sl_session_placement_t p;
    assert_int_equal(sl_window_session(10, 0, &spec), 0);
    const sl_session_t overlap[] = {{0, 10}, {10, 20}};
    assert_int_equal(sl_session_place(&spec, SL_WATERMARK_NONE, overlap, 2, 5, &p), SL_ECORRUPT);
    assert_non_null(strstr(sl_error_detail(), "overlap"));
    const sl_session_t unsorted[] = {{30, 40}, {0, 10}};
    assert_int_equal(sl_session_place(&spec, SL_WATERMARK_NONE, unsorted, 2, 5, &p), SL_ECORRUPT);
    const sl_session_t backwards[] = {{10, 0}};
    assert_int_equal(sl_session_place(&spec, SL_WATERMARK_NONE, backwards, 1, 5, &p), SL_ECORRUPT);
    assert_int_equal(sl_session_place(&spec, SL_WATERMARK_NONE, NULL, 0, SL_TIME_MAX + 1, &p),
                     SL_EINVALID);
}

/* Sessions as connected components of the accepted times: sorted, split
 * where two neighbours are more than gap apart. */
static size_t reference_sessions(int64_t *times, size_t n, int64_t gap, sl_session_t *out)
{
    size_t count = 0;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && times[j - 1] > times[j]; j--) {
            int64_t tmp = times[j];
            times[j] = times[j - 1];
            times[j - 1] = tmp;
        }
    for (size_t i = 0; i < n; i++) {
        if (count == 0 || times[i] - out[count - 1].last > gap)
            out[count++] = (sl_session_t){times[i], times[i]};
        out[count - 1].last = times[i];
    }
    return count;
}

/* Random records with out-of-order times: the sessions built record by
 * record equal the components of the accepted records, and no accepted
 * record ever touches a session that the closer already reported closed. */
static void test_sessions_match_reference_and_never_reopen(void **state)
{
    (void)state;
    uint64_t seed = 99;
    for (int round = 0; round < 40; round++) {
        sl_window_spec_t spec;
        assert_int_equal(
            sl_window_session(random_between(&seed, 1, 20), random_between(&seed, 0, 60), &spec),
            0);
        sl_window_closer_t *closer;
        assert_int_equal(sl_window_closer_new(&closer), 0);
        sl_watermark_t wm;
        sl_watermark_init(&wm, spec.grace);
        sl_session_t list[600], expected[600];
        int64_t accepted[600];
        bool emitted[6000] = {false}; /* by first + 1000 */
        size_t n = 0, n_accepted = 0;
        for (int i = 0; i < 500; i++) {
            int64_t t = random_between(&seed, -100, 8 * i);
            sl_watermark_observe(&wm, t);
            int64_t watermark = sl_watermark_get(&wm);
            sl_session_placement_t p = place(&spec, watermark, list, n, t);
            if (p.late)
                continue;
            for (size_t k = p.first; k < p.first + p.count; k++) {
                assert_false(emitted[list[k].first + 1000]);
                assert_true(sl_window_closer_remove(closer, "k", 1, list[k].first));
            }
            sl_session_apply(list, &n, &p);
            accepted[n_accepted++] = t;
            assert_int_equal(sl_window_closer_add(closer, "k", 1, p.session.first,
                                                  sl_session_close_time(&spec, &p.session)),
                             0);
            sl_window_closed_t closed;
            while (sl_window_closer_pop(closer, watermark, &closed))
                emitted[closed.start + 1000] = true;
        }
        size_t m = reference_sessions(accepted, n_accepted, spec.gap, expected);
        assert_int_equal(n, m);
        assert_memory_equal(list, expected, n * sizeof *list);
        sl_window_closer_free(closer);
    }
}

/* ---- the queue of open windows ---------------------------------------- */

static void assert_pop(sl_window_closer_t *c, int64_t watermark, const char *key, int64_t start,
                       int64_t close_time)
{
    sl_window_closed_t w;
    assert_true(sl_window_closer_pop(c, watermark, &w));
    assert_int_equal(w.key_len, strlen(key));
    assert_memory_equal(w.key, key, w.key_len);
    assert_int_equal(w.start, start);
    assert_int_equal(w.close_time, close_time);
}

static void test_closer_pops_by_close_time_then_key_then_start(void **state)
{
    (void)state;
    sl_window_closer_t *c;
    assert_int_equal(sl_window_closer_new(&c), 0);
    assert_int_equal(sl_window_closer_add(c, "b", 1, 0, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "ab", 2, 0, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "a", 1, 5, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "a", 1, 0, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "a", 1, 10, 20), 0);
    assert_int_equal(sl_window_closer_add(c, "c", 1, -5, 5), 0);
    assert_int_equal(sl_window_closer_count(c), 6);
    sl_window_closed_t w;
    assert_false(sl_window_closer_pop(c, SL_WATERMARK_NONE, &w));
    assert_false(sl_window_closer_pop(c, 4, &w));
    assert_pop(c, 10, "c", -5, 5);
    assert_pop(c, 10, "a", 0, 10);
    assert_pop(c, 10, "a", 5, 10);
    assert_pop(c, 10, "ab", 0, 10);
    assert_pop(c, 10, "b", 0, 10);
    assert_false(sl_window_closer_pop(c, 19, &w));
    assert_pop(c, 20, "a", 10, 20);
    assert_int_equal(sl_window_closer_count(c), 0);
    sl_window_closer_free(c);
}

static void test_closer_add_again_moves_and_remove_forgets(void **state)
{
    (void)state;
    sl_window_closer_t *c;
    sl_window_closed_t w;
    assert_int_equal(sl_window_closer_new(&c), 0);
    assert_int_equal(sl_window_closer_add(c, "k\0x", 3, 0, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "k\0y", 3, 0, 10), 0);
    assert_int_equal(sl_window_closer_add(c, "k\0x", 3, 0, 30), 0);
    assert_int_equal(sl_window_closer_count(c), 2);
    assert_true(sl_window_closer_pop(c, 29, &w));
    assert_memory_equal(w.key, "k\0y", 3);
    assert_false(sl_window_closer_pop(c, 29, &w));
    assert_false(sl_window_closer_remove(c, "k\0y", 3, 0));
    assert_false(sl_window_closer_remove(c, "k\0x", 3, 1));
    assert_true(sl_window_closer_remove(c, "k\0x", 3, 0));
    assert_int_equal(sl_window_closer_count(c), 0);
    assert_false(sl_window_closer_pop(c, INT64_MAX, &w));
    sl_window_closer_free(c);
}

/* The model: an array of live windows; pops must give its minimum. */
typedef struct model_window {
    char key[4];
    int64_t start, close_time;
    bool live;
} model_window_t;

static bool model_before(const model_window_t *a, const model_window_t *b)
{
    if (a->close_time != b->close_time)
        return a->close_time < b->close_time;
    int c = strcmp(a->key, b->key);
    return c ? c < 0 : a->start < b->start;
}

static int model_min(const model_window_t *m, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (m[i].live && (best < 0 || model_before(&m[i], &m[best])))
            best = i;
    return best;
}

static void test_closer_matches_a_model_under_random_operations(void **state)
{
    (void)state;
    enum { SLOTS = 26 * 20 };
    static model_window_t model[SLOTS];
    uint64_t seed = 5;
    sl_window_closer_t *c;
    assert_int_equal(sl_window_closer_new(&c), 0);
    for (int i = 0; i < SLOTS; i++)
        model[i] = (model_window_t){
            {(char)('a' + i % 26), (char)('a' + i / 26 % 3), 0, 0}, i / 26, 0, false};
    size_t live = 0;
    int64_t watermark = 0;
    for (int op = 0; op < 100000; op++) {
        int i = (int)random_between(&seed, 0, SLOTS - 1);
        model_window_t *w = &model[i];
        int64_t what = random_between(&seed, 0, 9);
        if (what < 5) {
            int64_t close_time = watermark + random_between(&seed, 1, 200);
            assert_int_equal(sl_window_closer_add(c, w->key, strlen(w->key), w->start, close_time),
                             0);
            live += !w->live;
            w->live = true;
            w->close_time = close_time;
        } else if (what < 7) {
            assert_int_equal(sl_window_closer_remove(c, w->key, strlen(w->key), w->start), w->live);
            live -= w->live;
            w->live = false;
        } else {
            watermark += random_between(&seed, 0, 20);
            sl_window_closed_t got;
            int best;
            while ((best = model_min(model, SLOTS)) >= 0 && model[best].close_time <= watermark) {
                assert_pop(c, watermark, model[best].key, model[best].start,
                           model[best].close_time);
                model[best].live = false;
                live--;
            }
            assert_false(sl_window_closer_pop(c, watermark, &got));
        }
        assert_int_equal(sl_window_closer_count(c), live);
    }
    sl_window_closer_free(c);
}

static void test_closer_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    sl_window_closer_t *c;
    sl_alloc_fail_after(0);
    assert_int_equal(sl_window_closer_new(&c), -ENOMEM);
    sl_alloc_fail_after(1);
    assert_int_equal(sl_window_closer_new(&c), -ENOMEM);
    sl_alloc_fail_after(-1);
    assert_int_equal(sl_window_closer_new(&c), 0);
    /* Every allocation of an add fails in turn: entry, heap, table. */
    for (int key = 0; key < 100; key++) {
        for (long fail = 0;; fail++) {
            sl_alloc_fail_after(fail);
            int rc = sl_window_closer_add(c, &key, sizeof key, 0, key);
            sl_alloc_fail_after(-1);
            if (rc == 0)
                break;
            assert_int_equal(rc, -ENOMEM);
            assert_int_equal(sl_window_closer_count(c), (size_t)key);
        }
    }
    for (int key = 0; key < 100; key++) {
        sl_window_closed_t w;
        assert_true(sl_window_closer_pop(c, 1000, &w));
        assert_int_equal(w.close_time, key);
    }
    sl_window_closer_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations_parse_every_unit),
        cmocka_unit_test(test_bad_durations_say_what_is_wrong),
        cmocka_unit_test(test_specs_check_their_durations),
        cmocka_unit_test(test_tumbling_windows_at_boundaries),
        cmocka_unit_test(test_hopping_windows_at_boundaries),
        cmocka_unit_test(test_hopping_size_not_a_multiple_of_advance),
        cmocka_unit_test(test_assignment_matches_brute_force),
        cmocka_unit_test(test_event_times_out_of_range_are_refused),
        cmocka_unit_test(test_watermark_is_stream_time_minus_grace),
        cmocka_unit_test(test_watermark_bound_and_floor),
        cmocka_unit_test(test_window_closes_at_end_plus_grace),
        cmocka_unit_test(test_records_at_or_after_the_watermark_are_on_time),
        cmocka_unit_test(test_hopping_record_late_for_one_window_only),
        cmocka_unit_test(test_session_gap_is_inclusive),
        cmocka_unit_test(test_record_between_sessions_bridges_them),
        cmocka_unit_test(test_late_record_within_grace_bridges_sessions),
        cmocka_unit_test(test_closed_sessions_refuse_late_records),
        cmocka_unit_test(test_damaged_session_lists_are_refused),
        cmocka_unit_test(test_sessions_match_reference_and_never_reopen),
        cmocka_unit_test(test_closer_pops_by_close_time_then_key_then_start),
        cmocka_unit_test(test_closer_add_again_moves_and_remove_forgets),
        cmocka_unit_test(test_closer_matches_a_model_under_random_operations),
        cmocka_unit_test(test_closer_out_of_memory_changes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

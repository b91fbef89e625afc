/*
 * nexmark_load.c - pre-loads the input of join_bench.sh (issue 6, "Joins")
 * into a data directory a node then opens: N events of Nexmark's generator
 * mix in three topics, appended through the storage API in batches of 1000
 * per partition (PRODUCE over RESP would take longer than the runs).
 *
 *   nexmark_load DIR N [PARTITIONS [by-seller]]
 *
 * by-seller: auctions are keyed by their seller instead of their id (a
 * producer that keys them for a join with the people, which then needs no
 * repartition).
 *
 * Event i (0-based) is, as in Nexmark's generator (proportions 1:3:46 in
 * every group of 50 events, person first):
 *
 *   i % 50 == 0      a person   topic "person",  key = its id,  200 bytes
 *   i % 50 in 1..3   an auction topic "auction", key = its id,  500 bytes
 *   otherwise        a bid      topic "bid",     key = its auction, 100 bytes
 *
 * Event time t = 1,700,000,000,000 + i * 1000 / 10,000 ms: Nexmark's
 * default rate of 10,000 events/s, so a 10-second window holds 100,000
 * events (2,000 people, 6,000 auctions); the record timestamp is t and the
 * value's date_time is t. Ids count from 1000 per kind, as Nexmark's do.
 * Values are JSON objects padded to their exact size by an "extra" field
 * (Nexmark's name for it):
 *
 *   person   {"id", "name", "email", "city", "state" (one of AZ CA ID OR
 *            WA WY), "date_time", "extra"}
 *   auction  {"id", "item_name", "description", "initial_bid", "reserve",
 *            "date_time", "expires", "seller", "category" (10..14), "extra"}
 *   bid      {"auction", "bidder", "price", "date_time", "extra"}
 *
 * An auction's seller is, 3 times in 4, the "hot seller" (the newest
 * person id rounded down to a multiple of 4), else one of the 1000 newest
 * people; Nexmark draws the same way (without its lead of 10 ids not yet
 * created, so every seller exists before its auctions). A bid's auction is
 * the newest even auction id half the time, else one of the 1000 newest;
 * its bidder is the hot person 3 times in 4, else one of the 1000 newest.
 *
 * Every record is in the partition the storage API's partitioner gives its
 * key (as PRODUCE would put it), so a join can read "person" as a table
 * without a repartition. Each topic has PARTITIONS partitions (default 2)
 * and fsync=never: they are only read by the benchmark. DIR must not exist
 * (it is created; the log is closed cleanly at the end).
 *
 * Prints the records and bytes per topic, and the outputs the bench's two
 * queries should give (so a run can be checked against them):
 *
 *   q3  auctions of category 10 whose seller lives in OR, ID or CA (each
 *       seller is created before or with its auctions, never updated);
 *   q8  (person, auction) pairs, the auction's seller being the person,
 *       at most 10 s apart; and those in the same 10-second window.
 */
#include "storage/storage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define LOAD_BATCH        1000
#define MAX_PARTS         64
#define KEY_BYTES         24
#define VALUE_BUFFER      520
#define PERSON_BYTES      200
#define AUCTION_BYTES     500
#define BID_BYTES         100
#define BASE_TS           1700000000000LL
#define EVENTS_PER_SECOND 10000
#define GROUP             50 /* 1 person, 3 auctions, 46 bids */
#define AUCTIONS_PER      3
#define FIRST_ID          1000
#define RECENT            1000 /* Nexmark's NUM_ACTIVE_PEOPLE, NUM_IN_FLIGHT_AUCTIONS */
#define HOT_SELLERS       4
#define HOT_BIDDERS       4
#define HOT_AUCTIONS      2
#define CATEGORIES        5
#define FIRST_CATEGORY    10
#define Q3_CATEGORY       10
#define Q8_WINDOW_MS      10000

enum { PERSON, AUCTION, BID, TOPICS };

static const char *topic_names[TOPICS] = {"person", "auction", "bid"};
static const char *states[] = {"AZ", "CA", "ID", "OR", "WA", "WY"};
static const char *cities[] = {"Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
                               "Bend",    "Redmond",     "Seattle",       "Kent",  "Cheyenne"};
static const char *first_names[] = {"Peter", "Paul",  "Luke",  "John",   "Saul",  "Vicky",
                                    "Kate",  "Julie", "Sarah", "Deiter", "Walter"};
static const char *last_names[] = {"Shultz", "Abrams", "Spencer", "White", "Bartels",
                                   "Walton", "Smith",  "Jones",   "Noris"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

typedef struct pending {
    sl_record_t recs[LOAD_BATCH];
    char keys[LOAD_BATCH][KEY_BYTES];
    char values[LOAD_BATCH][VALUE_BUFFER];
    size_t count;
} pending_t;

/* The generator's memory: what was made so far, and what the queries
 * should find in it. */
typedef struct generator {
    uint64_t persons, auctions;
    uint8_t *person_state; /* index into states[], per person */
    int64_t *person_ts;    /* event time, per person */
    uint64_t records[TOPICS], bytes[TOPICS];
    uint64_t q3_category, q3_out, q8_within, q8_same_window;
} generator_t;

static void die(const char *what, int rc)
{
    fprintf(stderr, "nexmark_load: %s: %s (%s)\n", what, sl_strerror(rc), sl_error_detail());
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64: a well-mixed hash of the event number. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The i-th random number of event `event` (independent draws per event). */
static uint64_t draw(uint64_t event, unsigned i)
{
    return mix(event * 16 + i);
}

/* len lowercase letters from seed into out, NUL-terminated. */
static void random_word(char *out, int len, uint64_t seed)
{
    for (int j = 0; j < len; j++) {
        if (j % 12 == 0)
            seed = mix(seed);
        out[j] = (char)('a' + (seed >> (5 * (j % 12))) % 26);
    }
    out[len] = 0;
}

/* Base-0 index of one of the `recent` newest of `count` ids, or of the hot
 * one (the newest rounded down to a multiple of ratio) when hot is set. */
static uint64_t pick(uint64_t count, uint64_t ratio, int hot, uint64_t r)
{
    if (hot)
        return (count - 1) / ratio * ratio;
    uint64_t window = count < RECENT ? count : RECENT;
    return count - 1 - r % window;
}

/* Ends the JSON object of len bytes in value with an "extra" string that
 * makes it exactly size bytes; returns size. */
static int finish_value(char *value, int len, int size, uint64_t seed)
{
    static const char tail[] = ",\"extra\":\"";
    int pad = size - len - (int)(sizeof tail - 1) - 2;
    if (len < 0 || pad < 0 || size >= VALUE_BUFFER) {
        fprintf(stderr, "nexmark_load: value template too long (%d of %d bytes)\n", len, size);
        exit(1);
    }
    memcpy(value + len, tail, sizeof tail - 1);
    random_word(value + len + sizeof tail - 1, pad, seed);
    memcpy(value + size - 2, "\"}", 3);
    return size;
}

static int make_person(generator_t *g, uint64_t i, int64_t ts, char *key, char *value)
{
    uint64_t id = FIRST_ID + g->persons;
    unsigned state = (unsigned)(draw(i, 0) % COUNT(states));
    char user[8], domain[10];
    random_word(user, 5, draw(i, 1));
    random_word(domain, 7, draw(i, 2));
    g->person_state[g->persons] = (uint8_t)state;
    g->person_ts[g->persons++] = ts;
    snprintf(key, KEY_BYTES, "%llu", (unsigned long long)id);
    int len = snprintf(value, VALUE_BUFFER,
                       "{\"id\":%llu,\"name\":\"%s %s\",\"email\":\"%s@%s.com\",\"city\":\"%s\","
                       "\"state\":\"%s\",\"date_time\":%lld",
                       (unsigned long long)id, first_names[draw(i, 3) % COUNT(first_names)],
                       last_names[draw(i, 4) % COUNT(last_names)], user, domain,
                       cities[draw(i, 5) % COUNT(cities)], states[state], (long long)ts);
    return finish_value(value, len, PERSON_BYTES, draw(i, 6));
}

/* Counts what the q3 and q8 joins should output for this auction. */
static void expect_auction(generator_t *g, uint64_t seller, unsigned category, int64_t ts)
{
    const char *state = states[g->person_state[seller]];
    int64_t seller_ts = g->person_ts[seller];
    if (category == Q3_CATEGORY) {
        g->q3_category++;
        g->q3_out += !strcmp(state, "OR") || !strcmp(state, "ID") || !strcmp(state, "CA");
    }
    if (ts - seller_ts <= Q8_WINDOW_MS) {
        g->q8_within++;
        g->q8_same_window += ts / Q8_WINDOW_MS == seller_ts / Q8_WINDOW_MS;
    }
}

static int auctions_by_seller; /* key auctions by seller (by-seller) */

static int make_auction(generator_t *g, uint64_t i, int64_t ts, char *key, char *value)
{
    uint64_t id = FIRST_ID + g->auctions++;
    uint64_t seller = pick(g->persons, HOT_SELLERS, draw(i, 0) % HOT_SELLERS != 0, draw(i, 1));
    unsigned category = FIRST_CATEGORY + (unsigned)(draw(i, 2) % CATEGORIES);
    unsigned initial = 100 + (unsigned)(draw(i, 3) % 100000);
    unsigned reserve = initial + (unsigned)(draw(i, 4) % 100000);
    long long expires = ts + 2000 + (long long)(draw(i, 5) % 60000);
    char item[24], description[104];
    random_word(item, 20, draw(i, 6));
    random_word(description, 100, draw(i, 7));
    expect_auction(g, seller, category, ts);
    snprintf(key, KEY_BYTES, "%llu",
             (unsigned long long)(auctions_by_seller ? FIRST_ID + seller : id));
    int len = snprintf(value, VALUE_BUFFER,
                       "{\"id\":%llu,\"item_name\":\"%s\",\"description\":\"%s\","
                       "\"initial_bid\":%u,\"reserve\":%u,\"date_time\":%lld,\"expires\":%lld,"
                       "\"seller\":%llu,\"category\":%u",
                       (unsigned long long)id, item, description, initial, reserve, (long long)ts,
                       expires, (unsigned long long)(FIRST_ID + seller), category);
    return finish_value(value, len, AUCTION_BYTES, draw(i, 8));
}

static int make_bid(generator_t *g, uint64_t i, int64_t ts, char *key, char *value)
{
    uint64_t auction =
        FIRST_ID + pick(g->auctions, HOT_AUCTIONS, draw(i, 0) % HOT_AUCTIONS != 0, draw(i, 1));
    uint64_t bidder = pick(g->persons, HOT_BIDDERS, draw(i, 2) % HOT_BIDDERS != 0, draw(i, 3));
    unsigned price = 100 + (unsigned)(draw(i, 4) % 1000000);
    snprintf(key, KEY_BYTES, "%llu", (unsigned long long)auction);
    int len = snprintf(
        value, VALUE_BUFFER, "{\"auction\":%llu,\"bidder\":%llu,\"price\":%u,\"date_time\":%lld",
        (unsigned long long)auction, (unsigned long long)(FIRST_ID + bidder), price, (long long)ts);
    return finish_value(value, len, BID_BYTES, draw(i, 5));
}

static void flush(sl_topic_t *topic, int32_t part, pending_t *p)
{
    if (p->count == 0)
        return;
    int rc = sl_partition_append(sl_topic_partition(topic, part), p->recs, p->count, NULL);
    if (rc)
        die("appending", rc);
    p->count = 0;
}

/* Makes event i into the pending batch of its topic and key's partition,
 * appending the batch when full. */
static void add_event(generator_t *g, sl_topic_t **topics, pending_t *pending, int32_t parts,
                      uint64_t i)
{
    int64_t ts = BASE_TS + (int64_t)(i * 1000 / EVENTS_PER_SECOND);
    int kind = i % GROUP == 0 ? PERSON : i % GROUP <= AUCTIONS_PER ? AUCTION : BID;
    char key[KEY_BYTES];
    char value[VALUE_BUFFER];
    int len = kind == PERSON    ? make_person(g, i, ts, key, value)
              : kind == AUCTION ? make_auction(g, i, ts, key, value)
                                : make_bid(g, i, ts, key, value);
    size_t key_len = strlen(key);
    int32_t part = sl_partition_for_key(key, key_len, parts);
    pending_t *p = &pending[kind * parts + part];
    size_t k = p->count++;
    memcpy(p->keys[k], key, key_len + 1);
    memcpy(p->values[k], value, (size_t)len + 1);
    p->recs[k] = (sl_record_t){.timestamp = ts,
                               .key = (const uint8_t *)p->keys[k],
                               .key_len = (int32_t)key_len,
                               .value = (const uint8_t *)p->values[k],
                               .value_len = len};
    g->records[kind]++;
    g->bytes[kind] += key_len + (uint64_t)len;
    if (p->count == LOAD_BATCH)
        flush(topics[kind], part, p);
}

static sl_log_t *create_topics(const char *dir, int32_t parts, sl_topic_t **topics)
{
    sl_log_t *log;
    sl_topic_config_t cfg;
    if (mkdir(dir, 0755))
        die(dir, -errno);
    int rc = sl_log_open(dir, NULL, &log);
    if (rc)
        die("opening the log", rc);
    sl_topic_config_default(&cfg);
    cfg.partitions = parts;
    cfg.fsync = SL_FSYNC_NEVER;
    for (int t = 0; t < TOPICS; t++)
        if ((rc = sl_log_create_topic(log, topic_names[t], &cfg, &topics[t])))
            die(topic_names[t], rc);
    return log;
}

static void report(const generator_t *g, const char *dir, int32_t parts, double seconds)
{
    uint64_t n = g->records[PERSON] + g->records[AUCTION] + g->records[BID];
    printf("nexmark_load: %llu events into %s, %d partitions per topic, in %.2f s (%.0f "
           "events/s); event times span %.1f s at %d events/s\n",
           (unsigned long long)n, dir, parts, seconds, (double)n / seconds,
           (double)n / EVENTS_PER_SECOND, EVENTS_PER_SECOND);
    for (int t = 0; t < TOPICS; t++)
        printf("nexmark_load: %-7s %10llu records, %12llu bytes of keys and values\n",
               topic_names[t], (unsigned long long)g->records[t], (unsigned long long)g->bytes[t]);
    printf("nexmark_load: q3 expects %llu outputs (of %llu category-%d auctions)\n",
           (unsigned long long)g->q3_out, (unsigned long long)g->q3_category, Q3_CATEGORY);
    printf("nexmark_load: q8 expects %llu outputs (of %llu person-auction pairs within %d s)\n",
           (unsigned long long)g->q8_same_window, (unsigned long long)g->q8_within,
           Q8_WINDOW_MS / 1000);
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5 || (argc == 5 && strcmp(argv[4], "by-seller") != 0))
        goto usage;
    char *end;
    uint64_t n = strtoull(argv[2], &end, 10);
    long parts = argc >= 4 ? strtol(argv[3], NULL, 10) : 2;
    auctions_by_seller = argc == 5;
    if (*end || n == 0 || parts < 1 || parts > MAX_PARTS)
        goto usage;
    sl_report_level(SL_WARN);
    sl_topic_t *topics[TOPICS];
    sl_log_t *log = create_topics(argv[1], (int32_t)parts, topics);
    generator_t g = {0};
    pending_t *pending = calloc((size_t)(TOPICS * parts), sizeof *pending);
    g.person_state = malloc(n / GROUP + 1);
    g.person_ts = malloc((n / GROUP + 1) * sizeof *g.person_ts);
    if (!pending || !g.person_state || !g.person_ts)
        die("allocating", -ENOMEM);
    double t0 = now();
    for (uint64_t i = 0; i < n; i++)
        add_event(&g, topics, pending, (int32_t)parts, i);
    for (int t = 0; t < TOPICS; t++)
        for (int32_t part = 0; part < (int32_t)parts; part++)
            flush(topics[t], part, &pending[t * parts + part]);
    double seconds = now() - t0;
    sl_log_close(log);
    report(&g, argv[1], (int32_t)parts, seconds);
    free(pending);
    free(g.person_state);
    free(g.person_ts);
    return 0;

usage:
    fprintf(stderr, "usage: nexmark_load DIR N [PARTITIONS [by-seller]]\n");
    return 2;
}

/*
 * metrics.c - counting commands and their latency (see metrics.h).
 */
#include "queries/metrics.h"

void sl_metrics_observe(sl_metrics_t *m, int command, int64_t ns, int failed)
{
    if (command >= 0 && command < SL_METRIC_COMMANDS) {
        m->calls[command]++;
        m->errors[command] += failed != 0;
    }
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    int bucket = 0;
    while (us > 1 && bucket < SL_LATENCY_BUCKETS - 1) {
        us >>= 1;
        bucket++;
    }
    m->latency.buckets[bucket]++;
    m->latency.count++;
    m->latency.sum_seconds += (double)ns / 1e9;
}

double sl_latency_quantile(const sl_latency_t *l, double q)
{
    if (l->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)l->count), seen = 0;
    for (int i = 0; i < SL_LATENCY_BUCKETS; i++) {
        seen += l->buckets[i];
        if (seen > rank)
            return (double)(2ull << i) / 1e6; /* the bucket's upper bound */
    }
    return (double)(1ull << SL_LATENCY_BUCKETS) / 1e6;
}

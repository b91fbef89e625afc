/*
 * metrics.h - the server's counters: calls and errors per command and a
 * latency distribution, rendered as Prometheus text by http.c.
 *
 * Latencies go into power-of-two microsecond buckets (bucket i holds
 * [2^i, 2^(i+1)) us); quantiles are read off the buckets, so they are exact
 * to within a factor of two, which is what a summary needs to show.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stdint.h>

#define SL_METRIC_COMMANDS 64
#define SL_LATENCY_BUCKETS 40

typedef struct sl_latency {
    uint64_t buckets[SL_LATENCY_BUCKETS];
    uint64_t count;
    double sum_seconds;
} sl_latency_t;

typedef struct sl_metrics {
    uint64_t calls[SL_METRIC_COMMANDS];
    uint64_t errors[SL_METRIC_COMMANDS];
    uint64_t unknown_commands;
    uint64_t protocol_errors;
    uint64_t rejected_connections;
    sl_latency_t latency;
} sl_metrics_t;

/* Records one command: its table index, duration and whether it failed. */
void sl_metrics_observe(sl_metrics_t *m, int command, int64_t ns, int failed);

/* The latency (seconds) below which a fraction q of observations fall. */
double sl_latency_quantile(const sl_latency_t *l, double q);

#endif

/*
 * topic.h - a topic: its configuration (the meta file) and its partitions.
 *
 * The meta file is text, one `name=value` per line, in the spelling of
 * sl_topic_config_set(). It is written last when a topic is created (after
 * every partition directory exists) and atomically (write, fsync, rename),
 * so a topic directory without meta is an interrupted creation.
 */
#ifndef SL_TOPIC_H
#define SL_TOPIC_H

#include "storage/partition.h"

struct sl_topic {
    char *name;
    char *dir;
    sl_topic_config_t config;
    sl_partition_t **partitions;
};

/* Creates dir (must not hold a topic) with its partitions and meta file. */
int sl_topic_create(const char *dir, const char *name, const sl_topic_config_t *config,
                    const sl_partition_env_t *env, sl_topic_t **out);

/* Opens the topic in dir: reads meta and recovers every partition. */
int sl_topic_open(const char *dir, const char *name, const sl_partition_env_t *env, int clean,
                  sl_topic_t **out);

/* Checks a whole configuration; SL_EINVALID names the bad setting. */
int sl_topic_config_check(const sl_topic_config_t *config);

/* Closes every partition (durably, with indexes) and frees the topic. */
void sl_topic_close(sl_topic_t *t, sl_flusher_t *flusher);

/* Marks every partition deleted and frees the topic (files untouched). */
void sl_topic_discard(sl_topic_t *t, sl_flusher_t *flusher);

#endif

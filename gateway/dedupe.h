/* SPDX-License-Identifier: MIT */
/* Dedupe: commands that reach a base by two paths (MQTT downlink, narrow links) are published once. */
#ifndef KM_DEDUPE_H
#define KM_DEDUPE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum km_cmd_path {
        KM_CMD_MQTT = 0,   /* the center broker's session, through the downlink */
        KM_CMD_NARROW = 1, /* a center kuimen, through a narrow link */
};

/* One copy seen on one path and not yet matched by a copy from the other. */
struct km_dedupe_entry {
        uint64_t hash;
        int64_t expires_ms; /* 0: free */
        uint64_t seq;       /* arrival order: the oldest match is cancelled first */
        uint8_t path;
};

/* A multiset of unmatched copies, bounded; caller-embedded, any thread. */
struct km_dedupe {
        pthread_mutex_t mu;
        struct km_dedupe_entry *e;
        size_t cap;
        uint64_t seq;
        uint64_t evicted; /* unmatched copies forgotten for room before they expired */
};

/* cap: unmatched copies remembered at once. Returns 0 or -ENOMEM. */
int km_dedupe_init(struct km_dedupe *dd, size_t cap);
/* Safe on a zeroed or deinitialised dd. */
void km_dedupe_deinit(struct km_dedupe *dd);

/* 64-bit FNV-1a over topic, a NUL, and the payload: what makes two copies the same. */
uint64_t km_dedupe_hash(const char *topic, const void *payload, size_t len);

/* A copy of hash arrived on path. When an unexpired copy from the other path is
 * remembered, the oldest such is forgotten and true is returned: this copy is the
 * second of a pair, drop it. Otherwise this copy is remembered until now_ms + ttl_ms
 * (the oldest remembered copy makes room when full) and false is returned: publish
 * it. So an operator's command sent twice is published twice, each once. */
bool km_dedupe_take(struct km_dedupe *dd, int path, uint64_t hash, int64_t now_ms, int64_t ttl_ms);

/* Any thread. Forgets the copy km_dedupe_take just remembered for path (its message was
 * not stored after all: it comes again, and must not cancel the other path's copy). */
void km_dedupe_untake(struct km_dedupe *dd, int path, uint64_t hash);

#endif

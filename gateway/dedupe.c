/* SPDX-License-Identifier: MIT */
/* Dedupe: a bounded multiset of command copies per path, so that a copy on one path cancels one from the other. */
#include "dedupe.h"

#include <errno.h>
#include <stdlib.h>

/*
 * A center sends a command down a narrow link while the base is offline over MQTT;
 * the base's persistent MQTT session at the center broker holds the same command and
 * delivers it when the base reconnects. Both copies reach the base, in either order.
 * The pairing is by content (topic and payload): the two paths share no id (the
 * narrow copy carries the center's spool id, the MQTT copy none). Counting copies per
 * path, rather than remembering "seen", keeps an operator's repeated command: two
 * identical commands are two copies on each path, and each pair cancels once.
 *
 * The multiset lives in memory only: a restart of kuimen between the two copies of a
 * pair publishes the second one too (at least once). Entries expire with the command
 * class's TTL: a copy older than that would have expired in the spool anyway.
 */

int km_dedupe_init(struct km_dedupe *dd, size_t cap)
{
        dd->e = calloc(cap ? cap : 1, sizeof(*dd->e));
        if (!dd->e)
                return -ENOMEM;
        dd->cap = cap ? cap : 1;
        dd->seq = 0;
        dd->evicted = 0;
        pthread_mutex_init(&dd->mu, NULL);
        return 0;
}

void km_dedupe_deinit(struct km_dedupe *dd)
{
        if (!dd->e)
                return;
        pthread_mutex_destroy(&dd->mu);
        free(dd->e);
        dd->e = NULL;
        dd->cap = 0;
}

uint64_t km_dedupe_hash(const char *topic, const void *payload, size_t len)
{
        uint64_t h = 14695981039346656037ULL;
        const uint8_t *p = (const uint8_t *)topic;
        for (; *p; p++)
                h = (h ^ *p) * 1099511628211ULL;
        h = (h ^ 0) * 1099511628211ULL; /* topic "a/b" + "c" differs from "a/" + "bc" */
        p = payload;
        for (size_t i = 0; i < len; i++)
                h = (h ^ p[i]) * 1099511628211ULL;
        return h;
}

bool km_dedupe_take(struct km_dedupe *dd, int path, uint64_t hash, int64_t now_ms, int64_t ttl_ms)
{
        struct km_dedupe_entry *match = NULL, *slot = NULL, *oldest = NULL;

        pthread_mutex_lock(&dd->mu);
        for (size_t i = 0; i < dd->cap; i++) {
                struct km_dedupe_entry *e = &dd->e[i];
                if (e->expires_ms && e->expires_ms <= now_ms)
                        e->expires_ms = 0;
                if (!e->expires_ms) {
                        if (!slot)
                                slot = e;
                        continue;
                }
                if (e->hash == hash && e->path != path && (!match || e->seq < match->seq))
                        match = e;
                if (!oldest || e->seq < oldest->seq)
                        oldest = e;
        }
        if (match) {
                match->expires_ms = 0;
                pthread_mutex_unlock(&dd->mu);
                return true;
        }
        if (!slot) {
                slot = oldest;
                dd->evicted++;
        }
        *slot = (struct km_dedupe_entry){ .hash = hash, .expires_ms = now_ms + (ttl_ms > 0 ? ttl_ms : 1),
                                          .seq = ++dd->seq, .path = (uint8_t)path };
        pthread_mutex_unlock(&dd->mu);
        return false;
}

void km_dedupe_untake(struct km_dedupe *dd, int path, uint64_t hash)
{
        struct km_dedupe_entry *newest = NULL;

        pthread_mutex_lock(&dd->mu);
        for (size_t i = 0; i < dd->cap; i++) {
                struct km_dedupe_entry *e = &dd->e[i];
                if (e->expires_ms && e->hash == hash && e->path == path && (!newest || e->seq > newest->seq))
                        newest = e;
        }
        if (newest)
                newest->expires_ms = 0;
        pthread_mutex_unlock(&dd->mu);
}

/* SPDX-License-Identifier: MIT */
/* Topic dictionary of a narrow link: the list both ends agree on by config, its fingerprint, and the fallback for indexes beyond it. */
#include "dict.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "link.h"
#include "log.h"

/*
 * Why a file and why append only. A frame names a dictionary topic by its index (one
 * byte below 128) instead of carrying it (a length byte and every character), which
 * matters for the first message of a topic on a 77-byte BeiDou frame; later ones name
 * their topic's slot anyway (gateway/frame.c, version 2). Nothing on the wire says
 * which list an index belongs to: the two ends agree by config, and the frame format
 * stays as it is. So the list can only grow at its end: a frame in flight, a message
 * waiting in a slot, and the other end's older copy all keep meaning what they meant.
 * Removing or reordering a line would silently republish messages under another
 * topic; the worst an appended line can do is arrive at an end that does not have it
 * yet, and that end delivers the message on the fallback topic (below), not lost.
 * The fingerprint makes a disagreement visible (start log, kuimenctl, /metrics, the
 * link's status message) without any byte on the air.
 */

static void fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;
        if (!err || !errlen)
                return;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

uint32_t km_dict_fingerprint(const char *const *topics, size_t n)
{
        uLong crc = crc32(0L, Z_NULL, 0);
        for (size_t i = 0; i < n; i++) {
                crc = crc32(crc, (const Bytef *)topics[i], (uInt)strlen(topics[i]));
                crc = crc32(crc, (const Bytef *)"\n", 1);
        }
        return (uint32_t)crc;
}

void km_dict_deinit(struct km_dict *d)
{
        for (size_t i = 0; d->topics && i < d->n; i++)
                free(d->topics[i]);
        free(d->topics);
        free(d->path);
        memset(d, 0, sizeof(*d));
}

/* Why line[0..n) (no line end) cannot be a topic, or NULL. why has room for 160. */
static const char *bad_topic(const char *line, size_t n, char *why, size_t wl)
{
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)line[i];
                if (ch == 0)
                        return "NUL byte in topic";
                if (ch < 0x20 || ch == 0x7f) {
                        snprintf(why, wl, "control character 0x%02x in topic", ch);
                        return why;
                }
        }
        if (line[0] == ' ' || line[n - 1] == ' ')
                return "blank at the start or end of the topic";
        if (n > KM_FRAME_TOPIC_MAX) {
                snprintf(why, wl, "topic of %zu bytes, longer than %d", n, KM_FRAME_TOPIC_MAX);
                return why;
        }
        const char *w = memchr(line, '+', n);
        if (!w)
                w = memchr(line, '#', n);
        if (w) {
                snprintf(why, wl, "wildcard '%c' in topic '%.*s': a dictionary lists topics, not filters", *w,
                         (int)(n > 80 ? 80 : n), line);
                return why;
        }
        return NULL;
}

int km_dict_parse(struct km_dict *d, const char *name, const char *text, size_t len, char *err, size_t errlen)
{
        struct km_dict t = { 0 };
        size_t cap = 0;
        int *lines = NULL; /* line number of each topic, for duplicate messages */
        int rc = -ENOMEM, lineno = 0;
        char why[200];

        memset(d, 0, sizeof(*d));
        for (size_t off = 0; off < len;) {
                const char *line = text + off;
                const char *nl = memchr(line, '\n', len - off);
                size_t n = nl ? (size_t)(nl - line) : len - off;
                off += n + (nl != NULL);
                lineno++;
                if (n && line[n - 1] == '\r')
                        n--;
                size_t lead = 0;
                while (lead < n && (line[lead] == ' ' || line[lead] == '\t'))
                        lead++;
                if (lead == n || line[lead] == '#')
                        continue;
                const char *bad = bad_topic(line, n, why, sizeof(why));
                if (bad) {
                        fail(err, errlen, "%s:%d: %s", name, lineno, bad);
                        rc = -EINVAL;
                        goto out;
                }
                for (size_t i = 0; i < t.n; i++)
                        if (strlen(t.topics[i]) == n && memcmp(t.topics[i], line, n) == 0) {
                                fail(err, errlen, "%s:%d: '%.*s' again (first on line %d): an index names one topic",
                                     name, lineno, (int)(n > 80 ? 80 : n), line, lines[i]);
                                rc = -EINVAL;
                                goto out;
                        }
                if (t.n == KM_DICT_MAX) {
                        fail(err, errlen, "%s:%d: more than %d topics", name, lineno, KM_DICT_MAX);
                        rc = -EINVAL;
                        goto out;
                }
                if (t.n == cap) {
                        size_t nc = cap ? cap * 2 : 32;
                        char **v = realloc(t.topics, nc * sizeof(*v));
                        if (!v)
                                goto out;
                        t.topics = v;
                        int *l = realloc(lines, nc * sizeof(*l));
                        if (!l)
                                goto out;
                        lines = l;
                        cap = nc;
                }
                if (!(t.topics[t.n] = strndup(line, n)))
                        goto out;
                lines[t.n++] = lineno;
        }
        if (!t.n) {
                fail(err, errlen, "%s: no topics (only blank lines and comments)", name);
                rc = -EINVAL;
                goto out;
        }
        if (!(t.path = strdup(name)))
                goto out;
        t.fingerprint = km_dict_fingerprint((const char *const *)t.topics, t.n);
        t.frame = (struct km_frame_dict){ .topics = (const char *const *)t.topics, .n = t.n };
        *d = t;
        free(lines);
        return 0;
out:
        if (rc == -ENOMEM)
                fail(err, errlen, "%s: out of memory", name);
        free(lines);
        km_dict_deinit(&t);
        return rc;
}

int km_dict_load(struct km_dict *d, const char *path, const char *conf_file, char *err, size_t errlen)
{
        char *full = NULL;
        const char *slash = conf_file ? strrchr(conf_file, '/') : NULL;
        int rc;

        memset(d, 0, sizeof(*d));
        if (!path || !*path) {
                fail(err, errlen, "no file named");
                return -EINVAL;
        }
        if (path[0] != '/' && slash) {
                if (asprintf(&full, "%.*s/%s", (int)(slash - conf_file), conf_file, path) < 0)
                        return -ENOMEM;
                path = full;
        }
        FILE *f = fopen(path, "rb");
        if (!f) {
                rc = -errno;
                fail(err, errlen, "%s: %s", path, strerror(-rc));
                free(full);
                return rc;
        }
        char *buf = malloc(KM_DICT_FILE_MAX + 1);
        size_t len = buf ? fread(buf, 1, KM_DICT_FILE_MAX + 1, f) : 0;
        if (!buf)
                rc = -ENOMEM, fail(err, errlen, "%s: out of memory", path);
        else if (ferror(f))
                rc = -EIO, fail(err, errlen, "%s: read error", path);
        else if (len > KM_DICT_FILE_MAX)
                rc = -EINVAL, fail(err, errlen, "%s: larger than %d bytes", path, KM_DICT_FILE_MAX);
        else
                rc = km_dict_parse(d, path, buf, len, err, errlen);
        fclose(f);
        free(buf);
        free(full);
        return rc;
}

#define FALLBACK_LOG_MS 10000

int km_dict_fallback_deliver(void *ctx, const struct km_frame_msg *m)
{
        struct km_dict_fallback *fb = ctx;
        if (m->topic)
                return fb->next(fb->ctx, m);

        char topic[sizeof(KM_DICT_FALLBACK) + 16], origin[32];
        struct km_frame_msg c = *m;
        snprintf(topic, sizeof(topic), KM_DICT_FALLBACK "/%" PRIu32, m->topic_idx);
        c.topic = topic;
        int rc = fb->fate ? 0 : fb->next(fb->ctx, &c);
        if (rc < 0)
                return rc; /* the frame comes again: count it then */
        fb->unknown++;
        /* A peer with a longer list sends these as long as it runs: one line per
         * FALLBACK_LOG_MS, saying how many went unlogged. */
        int64_t now = km_mono_ms();
        if (fb->log_ms && now - fb->log_ms < FALLBACK_LOG_MS) {
                fb->quiet++;
                return 0;
        }
        snprintf(origin, sizeof(origin), "node-%08x", m->origin);
        for (size_t i = 0; fb->peers && i < fb->peers->n; i++)
                if (km_frame_node_id(fb->peers->v[i]) == m->origin)
                        snprintf(origin, sizeof(origin), "%s", fb->peers->v[i]);
        if (fb->dict && fb->dict->path)
                KM_LOG(KM_LOG_WARNING, "link",
                       "%s: message %" PRIu64 " from %s names dictionary index %" PRIu32 ", beyond the %zu topics of %s"
                       " (fingerprint %08x): %s%s; the sender's dictionary is longer or different"
                       " (%llu so far, %llu not logged since the last line)",
                       fb->link, m->id, origin, m->topic_idx, fb->dict->n, fb->dict->path, fb->dict->fingerprint,
                       fb->fate ? fb->fate : "delivered on ", fb->fate ? "" : topic,
                       (unsigned long long)fb->unknown, (unsigned long long)fb->quiet);
        else
                KM_LOG(KM_LOG_WARNING, "link",
                       "%s: message %" PRIu64 " from %s names dictionary index %" PRIu32 ", and this link has no"
                       " dictionary: %s%s; set the same dictionary at both ends"
                       " (%llu so far, %llu not logged since the last line)",
                       fb->link, m->id, origin, m->topic_idx, fb->fate ? fb->fate : "delivered on ",
                       fb->fate ? "" : topic, (unsigned long long)fb->unknown,
                       (unsigned long long)fb->quiet);
        fb->log_ms = now;
        fb->quiet = 0;
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* Route: topic filters to classes; the class table is rebuilt whole on reload. */
#include "route.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define OFF(f) offsetof(struct km_class, f)

static const char *const coalesce_help = "latest per key wins: none, topic, or level:N";

static const struct km_conf_key class_keys[] = {
        { "match", KM_CONF_LIST, NULL, OFF(match), "topic filters of this class (comma-separated)", 0, 0, NULL },
        { "priority", KM_CONF_INT, NULL, OFF(priority), "0 is highest; lower leaves first", 0, 255, NULL },
        { "ttl", KM_CONF_DURATION, NULL, OFF(ttl_ms), "drop when not delivered within this time (0 = never)", 0, 0, NULL },
        { "links", KM_CONF_LIST, NULL, OFF(links), "links that may carry it (empty: all)", 0, 0, NULL },
        { "coalesce", KM_CONF_STRING, NULL, OFF(coalesce), "latest per key wins: none, topic, or level:N", 0, 0, NULL },
        { "droppable", KM_CONF_BOOL, NULL, OFF(droppable), "may be dropped, oldest first, when the spool is full", 0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

/* The defaults of DESIGN.md: alert and command are never dropped for space; positions
 * and status coalesce per topic (one unit, one link) so an outage keeps the latest.
 * Only pos/<unit> (what the position bridge publishes, checked) is a position: a
 * terminal's pos/<unit>/<more> is not parsed and travels as telemetry, so garbage
 * there never takes a position's place in the queue. */
static const struct {
        const char *name, *match, *ttl, *coalesce;
        long priority;
        bool droppable;
} defaults[] = {
        { "alert", "alert/#", "7d", "none", 0, false },
        { "command", "cmd/#", "1d", "none", 1, false },
        { "position", "pos/+, gnss", "1d", "topic", 2, true },
        { "status", "status/#, link/#", "1d", "topic", 3, true },
        { "telemetry", "sensors/#, pos/#", "1d", "none", 4, true },
        { "bulk", "#", "1d", "none", 5, true },
};

const char *km_topic_filter_invalid(const char *f)
{
        if (!*f)
                return "empty topic filter";
        for (const char *p = f; *p; p++) {
                bool start = p == f || p[-1] == '/';
                if (*p == '#' && (!start || p[1]))
                        return "'#' must be a whole last level";
                if (*p == '+' && (!start || (p[1] && p[1] != '/')))
                        return "'+' must be a whole level";
        }
        return NULL;
}

bool km_topic_matches(const char *f, const char *t)
{
        if (*t == '$' && (*f == '+' || *f == '#'))
                return false;
        for (;;) {
                if (*f == '#')
                        return true;
                if (*f == '+') {
                        while (*t && *t != '/')
                                t++;
                        f++;
                } else {
                        while (*f && *f != '/' && *f == *t)
                                f++, t++;
                        if ((*f && *f != '/') || (*t && *t != '/'))
                                return false;
                }
                if (!*f && !*t)
                        return true;
                if (!*f || !*t) {
                        /* "a/#" also matches "a" itself. */
                        return !*t && f[0] == '/' && f[1] == '#' && !f[2];
                }
                f++, t++;
        }
}

static int parse_coalesce(struct km_class *k)
{
        char *end;

        if (!k->coalesce || strcmp(k->coalesce, "none") == 0)
                k->coalesce_level = -1;
        else if (strcmp(k->coalesce, "topic") == 0)
                k->coalesce_level = 0;
        else if (strncmp(k->coalesce, "level:", 6) == 0 &&
                 (k->coalesce_level = (int)strtol(k->coalesce + 6, &end, 10)) > 0 && !*end &&
                 k->coalesce_level < 64)
                return 0;
        else
                return -EINVAL;
        return 0;
}

static int set_default(struct km_class *k, size_t i)
{
        char prio[8];
        struct km_conf_key keys[sizeof(class_keys) / sizeof(class_keys[0])];
        struct km_conf tmp = { 0 };

        /* The defaults run through the same table as a config would, so a default can
         * never hold a value the parser would refuse. */
        memcpy(keys, class_keys, sizeof(keys));
        snprintf(prio, sizeof(prio), "%ld", defaults[i].priority);
        keys[0].def = defaults[i].match;
        keys[1].def = prio;
        keys[2].def = defaults[i].ttl;
        keys[4].def = defaults[i].coalesce;
        keys[5].def = defaults[i].droppable ? "yes" : "no";
        int n = km_conf_apply(&tmp, "", keys, k);
        km_conf_deinit(&tmp);
        return n ? -EINVAL : 0;
}

static struct km_class *add_class(struct km_route *r, const char *name)
{
        struct km_class *n = realloc(r->cls, (r->n + 1) * sizeof(*n));
        if (!n)
                return NULL;
        r->cls = n;
        memset(&n[r->n], 0, sizeof(*n));
        if (!(n[r->n].name = strdup(name)))
                return NULL;
        n[r->n].priority = 5;
        n[r->n].droppable = true;
        return &r->cls[r->n++];
}

static int by_priority(const void *a, const void *b)
{
        const struct km_class *x = a, *y = b;
        if (x->priority != y->priority)
                return x->priority < y->priority ? -1 : 1;
        return strcmp(x->name, y->name);
}

static int validate(struct km_conf *c, const char *section, struct km_class *k)
{
        int bad = 0;

        if (parse_coalesce(k) < 0) {
                km_conf_error(c, section, "coalesce", "'%s' is not none, topic or level:N", k->coalesce);
                bad = 1;
        }
        for (size_t j = 0; j < k->match.n; j++) {
                const char *why = km_topic_filter_invalid(k->match.v[j]);
                if (why) {
                        km_conf_error(c, section, "match", "'%s': %s", k->match.v[j], why);
                        bad = 1;
                }
        }
        return bad;
}

int km_route_load(struct km_route *r, struct km_conf *c)
{
        size_t nd = sizeof(defaults) / sizeof(defaults[0]);
        int bad = 0;

        memset(r, 0, sizeof(*r));
        for (size_t i = 0; i < nd; i++) {
                struct km_class *k = add_class(r, defaults[i].name);
                if (!k || set_default(k, i) < 0)
                        goto oom;
        }
        for (size_t s = 0; s < c->nsections; s++) {
                const char *sec = c->sections[s];
                if (strncmp(sec, "class ", 6) != 0)
                        continue;
                const char *name = sec + 6;
                struct km_class *k = NULL;
                for (size_t i = 0; i < r->n; i++)
                        if (strcmp(r->cls[i].name, name) == 0)
                                k = &r->cls[i];
                if (!k && !(k = add_class(r, name)))
                        goto oom;
                /* Defaults of an existing class stay unless the section overrides them:
                 * apply over a copy with each key's default taken from the current value. */
                struct km_class cur = *k;
                struct km_conf_key keys[sizeof(class_keys) / sizeof(class_keys[0])];
                char prio[8], ttl[32], drop[4];
                memcpy(keys, class_keys, sizeof(keys));
                keys[0].def = NULL;
                snprintf(prio, sizeof(prio), "%ld", cur.priority);
                snprintf(ttl, sizeof(ttl), "%lldms", (long long)cur.ttl_ms);
                snprintf(drop, sizeof(drop), "%s", cur.droppable ? "yes" : "no");
                keys[1].def = prio;
                keys[2].def = ttl;
                keys[4].def = cur.coalesce ? cur.coalesce : "none";
                keys[5].def = drop;
                struct km_class next = { .name = k->name };
                char *oldco = cur.coalesce;
                bad |= km_conf_apply(c, sec, keys, &next) != 0;
                if (next.match.n == 0) {
                        next.match = cur.match; /* keep the default filters */
                } else {
                        km_strv_free(&cur.match);
                }
                if (next.links.n == 0) {
                        next.links = cur.links;
                } else {
                        km_strv_free(&cur.links);
                }
                free(oldco);
                *k = next;
                bad |= validate(c, sec, k);
        }
        for (size_t i = 0; i < r->n; i++)
                if (parse_coalesce(&r->cls[i]) < 0)
                        bad = 1;
        qsort(r->cls, r->n, sizeof(*r->cls), by_priority);
        return bad ? -EINVAL : 0;
oom:
        km_route_deinit(r);
        return -ENOMEM;
}

void km_route_deinit(struct km_route *r)
{
        for (size_t i = 0; i < r->n; i++) {
                km_conf_release(class_keys, &r->cls[i]);
                free(r->cls[i].name);
        }
        free(r->cls);
        memset(r, 0, sizeof(*r));
}

const struct km_class *km_route_match(const struct km_route *r, const char *topic)
{
        for (size_t i = 0; i < r->n; i++)
                for (size_t j = 0; j < r->cls[i].match.n; j++)
                        if (km_topic_matches(r->cls[i].match.v[j], topic))
                                return &r->cls[i];
        return NULL;
}

const struct km_class *km_route_by_priority(const struct km_route *r, long prio)
{
        for (size_t i = 0; i < r->n; i++)
                if (r->cls[i].priority >= prio)
                        return &r->cls[i];
        return r->n ? &r->cls[r->n - 1] : NULL;
}

const struct km_class *km_route_find(const struct km_route *r, const char *name)
{
        for (size_t i = 0; i < r->n; i++)
                if (strcmp(r->cls[i].name, name) == 0)
                        return &r->cls[i];
        return NULL;
}

size_t km_route_coalesce_key(const struct km_class *k, const char *topic, char *buf, size_t len)
{
        const char *b = topic, *e;
        int n;

        buf[0] = '\0';
        if (k->coalesce_level < 0 || len == 0)
                return 0;
        if (k->coalesce_level > 0) {
                for (int lvl = 1; lvl < k->coalesce_level; lvl++) {
                        b = strchr(b, '/');
                        if (!b)
                                return 0;
                        b++;
                }
                e = b + strcspn(b, "/");
        } else {
                e = b + strlen(b);
        }
        /* The class name keeps keys of different classes apart. */
        n = snprintf(buf, len, "%s|%.*s", k->name, (int)(e - b), b);
        if (n < 0 || (size_t)n >= len) {
                buf[0] = '\0';
                return 0;
        }
        return (size_t)n;
}

void km_route_print_help(FILE *out)
{
        km_conf_print_help(out, "class NAME", class_keys);
        fputs("  default classes (priority, match, ttl, coalesce, droppable):\n", out);
        for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
                fprintf(out, "    %-10s %ld  %-10s %-3s %-6s %s\n", defaults[i].name, defaults[i].priority,
                        defaults[i].match, defaults[i].ttl, defaults[i].coalesce,
                        defaults[i].droppable ? "yes" : "no");
        fprintf(out, "  coalesce: %s\n\n", coalesce_help);
}

/* SPDX-License-Identifier: MIT */
/* Route: maps a topic to its class (priority, TTL, links, coalescing, space policy). */
#ifndef KM_ROUTE_H
#define KM_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct km_class {
        char *name;
        struct km_strv match; /* MQTT topic filters */
        long priority;        /* 0 is highest */
        int64_t ttl_ms;
        struct km_strv links; /* empty: every link */
        char *coalesce;       /* "none", "topic" or "level:N" */
        bool droppable;       /* may be dropped for space */
        int coalesce_level;   /* -1 none, 0 whole topic, N: topic level N (1-based) */
};

struct km_route {
        struct km_class *cls; /* sorted by priority, then name */
        size_t n;
};

/* Builds the class table: the six default classes of DESIGN.md, then every [class NAME]
 * section of c overriding or adding. Errors land in c->errors; returns 0 or -EINVAL. */
int km_route_load(struct km_route *r, struct km_conf *c);
void km_route_deinit(struct km_route *r);

/* The class of topic: the first class in priority order with a matching filter, or NULL
 * when none matches (the default "bulk" class matches "#", so only a config that
 * narrows bulk yields NULL). The pointer is valid until the route is reloaded. */
const struct km_class *km_route_match(const struct km_route *r, const char *topic);

/* The first class, in priority order, whose priority is prio or less urgent (the last
 * class when none is); NULL only for an empty table. For a message whose topic is not
 * known here but whose priority is (a narrow link's unknown dictionary index). */
const struct km_class *km_route_by_priority(const struct km_route *r, long prio);

/* Class by name or NULL. */
const struct km_class *km_route_find(const struct km_route *r, const char *name);

/* Writes the coalesce key for topic into buf ("" when the class does not coalesce or the
 * topic has no such level); returns its length. */
size_t km_route_coalesce_key(const struct km_class *k, const char *topic, char *buf, size_t len);

/* MQTT filter match with + and # (a leading $ topic never matches a wildcard first level). */
bool km_topic_matches(const char *filter, const char *topic);

/* Validates an MQTT topic filter; returns NULL or why not. */
const char *km_topic_filter_invalid(const char *filter);

void km_route_print_help(FILE *out);

#endif

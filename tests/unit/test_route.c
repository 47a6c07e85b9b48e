/* SPDX-License-Identifier: MIT */
/* Route: topic filters, default classes, overrides, coalesce keys, config errors. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "gateway/route.h"

Test(route, topic_filters)
{
        cr_assert(km_topic_matches("sensors/#", "sensors/gas/1"));
        cr_assert(km_topic_matches("sensors/#", "sensors"));
        cr_assert(km_topic_matches("pos/+", "pos/u7"));
        cr_assert_not(km_topic_matches("pos/+", "pos/u7/x"));
        cr_assert_not(km_topic_matches("pos/+", "pos"));
        cr_assert(km_topic_matches("+/+/t", "a/b/t"));
        cr_assert(km_topic_matches("#", "a/b"));
        cr_assert_not(km_topic_matches("#", "$SYS/x"));
        cr_assert_not(km_topic_matches("sensors/gas", "sensors/gasx"));
        cr_assert_not(km_topic_matches("sensors/gasx", "sensors/gas"));
        cr_assert(km_topic_matches("a//b", "a//b"));
        cr_assert_str_eq(km_topic_filter_invalid("a/#/b"), "'#' must be a whole last level");
        cr_assert_str_eq(km_topic_filter_invalid("a/b+"), "'+' must be a whole level");
        cr_assert_null(km_topic_filter_invalid("a/+/#"));
}

static struct km_route load(const char *ini, struct km_conf *c, int want_rc)
{
        struct km_route r;
        cr_assert_eq(km_conf_load(c, "t.ini", ini), 0);
        cr_assert_eq(km_route_load(&r, c), want_rc);
        return r;
}

Test(route, defaults)
{
        struct km_conf c;
        struct km_route r = load("", &c, 0);
        cr_assert_eq(r.n, 6);
        cr_assert_str_eq(km_route_match(&r, "alert/gas/1")->name, "alert");
        cr_assert_str_eq(km_route_match(&r, "cmd/x")->name, "command");
        cr_assert_str_eq(km_route_match(&r, "pos/u1")->name, "position");
        cr_assert_str_eq(km_route_match(&r, "gnss")->name, "position");
        cr_assert_str_eq(km_route_match(&r, "pos/u12/extra")->name, "telemetry", "not parsed: not a position");
        cr_assert_str_eq(km_route_match(&r, "sensors/t")->name, "telemetry");
        cr_assert_str_eq(km_route_match(&r, "other")->name, "bulk");
        const struct km_class *a = km_route_find(&r, "alert");
        cr_assert_eq(a->priority, 0);
        cr_assert_eq(a->ttl_ms, 7LL * 86400 * 1000);
        cr_assert_not(a->droppable);
        cr_assert(km_route_find(&r, "telemetry")->droppable);
        char key[64];
        cr_assert_eq(km_route_coalesce_key(km_route_find(&r, "position"), "pos/u1", key, sizeof(key)), 15);
        cr_assert_str_eq(key, "position|pos/u1");
        cr_assert_eq(km_route_coalesce_key(a, "alert/x", key, sizeof(key)), 0);
        km_route_deinit(&r);
        km_conf_deinit(&c);
}

Test(route, override_and_add)
{
        struct km_conf c;
        struct km_route r = load("[class alert]\nmatch = alert/#, sensors/+/gas\n"
                                 "[class video]\nmatch = video/#\npriority = 9\nttl = 2h\ncoalesce = level:2\n",
                                 &c, 0);
        cr_assert_eq(r.n, 7);
        cr_assert_str_eq(km_route_match(&r, "sensors/x/gas")->name, "alert");
        cr_assert_str_eq(km_route_match(&r, "sensors/x/temp")->name, "telemetry");
        const struct km_class *a = km_route_find(&r, "alert");
        cr_assert_eq(a->ttl_ms, 7LL * 86400 * 1000, "unchanged keys keep the default");
        cr_assert_not(a->droppable);
        const struct km_class *v = km_route_find(&r, "video");
        cr_assert_eq(v->priority, 9);
        cr_assert_eq(v->ttl_ms, 7200000);
        cr_assert_str_eq(r.cls[r.n - 1].name, "video", "sorted by priority");
        char key[64];
        km_route_coalesce_key(v, "video/cam3/frame", key, sizeof(key));
        cr_assert_str_eq(key, "video|cam3");
        /* "video/#" is checked after bulk's "#" only if priority says so: bulk (5) wins. */
        cr_assert_str_eq(km_route_match(&r, "video/cam3")->name, "bulk");
        km_route_deinit(&r);
        km_conf_deinit(&c);
}

Test(route, errors_name_file_line_key)
{
        struct km_conf c;
        struct km_route r = load("[class alert]\npriority = 300\n\n[class x]\nmatch = a/#/b\ncoalesce = sideways\n", &c, -EINVAL);
        cr_assert_eq(c.nerrors, 3);
        cr_assert_str_eq(c.errors[0], "t.ini:2: priority: 300 is out of range 0..255");
        cr_assert_str_eq(c.errors[1], "t.ini:6: coalesce: 'sideways' is not none, topic or level:N");
        cr_assert_str_eq(c.errors[2], "t.ini:5: match: 'a/#/b': '#' must be a whole last level");
        km_route_deinit(&r);
        km_conf_deinit(&c);
}

/* A relayed message whose topic the center cannot name (an unknown dictionary index)
 * keeps its urgency: the first class of its priority, or the next less urgent. */
Test(route, by_priority)
{
        struct km_conf c;
        struct km_route r = load("[class drill]\npriority = 7\nmatch = drill/#\n[class urgent]\npriority = 0\nmatch = x/#\n",
                                 &c, 0);
        cr_assert_str_eq(km_route_by_priority(&r, 0)->name, "alert"); /* "alert" before "urgent" */
        cr_assert_str_eq(km_route_by_priority(&r, 1)->name, "command");
        cr_assert_str_eq(km_route_by_priority(&r, 6)->name, "drill");
        cr_assert_str_eq(km_route_by_priority(&r, 9)->name, "drill");
        km_route_deinit(&r);
        km_conf_deinit(&c);
}

/* SPDX-License-Identifier: MIT */
/* Status: the drain estimate (rate and time left) from the loop's once-a-second samples; units' tracks; a center's board of bases. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "gateway/status.h"

/* One sample a second from t = 0: acked, depth and in flight at each, and whether a
 * link carried. */
static void feed(struct km_drain *dr, int64_t at_s, uint64_t acked, uint64_t depth, uint64_t inflight, bool carrying)
{
        struct km_drain_sample s = { at_s * 1000, acked, depth, inflight, carrying };
        km_status_drain_add(dr, &s);
}

static char text[160];

static const char *said(const struct km_drain_est *e)
{
        km_status_drain_text(e, text, sizeof(text));
        return text;
}

TestSuite(status);

Test(status, nothing_to_say_before_two_samples)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;

        km_status_drain_estimate(&dr, &e);
        cr_assert(!e.draining);
        cr_assert_eq(e.eta_s, -1);
        feed(&dr, 0, 0, 3000, 0, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert(!e.draining);
        cr_assert_eq(e.rate, 0);
        cr_assert_eq(e.eta_s, -1);
        cr_assert_str_eq(said(&e), "");
}

/* A cut of 20 s with 3000 queued, then 500 a second: the rate is 500 from the first
 * second of the drain (the cut's seconds are no part of the window), and the time left
 * is the backlog at that rate. */
Test(status, drain_after_a_cut)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;
        int t = 0;

        for (; t <= 20; t++)
                feed(&dr, t, 7, 3000, 0, false);
        km_status_drain_estimate(&dr, &e);
        cr_assert(!e.draining, "nothing carries: no drain");
        cr_assert_eq(e.depth, 3000);

        feed(&dr, t++, 7 + 500, 2500, 250, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert(e.draining);
        cr_assert_float_eq(e.rate, 500, 1e-9);
        cr_assert_float_eq(e.window_s, 1, 1e-9);
        cr_assert_float_eq(e.eta_s, 5, 1e-9);
        cr_assert_str_eq(said(&e), "draining 500 msg/s, ~5 s left");

        for (int k = 2; k <= 4; k++)
                feed(&dr, t++, 7 + 500 * (uint64_t)k, 3000 - 500 * (uint64_t)k, 250, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert_float_eq(e.rate, 500, 1e-9);
        cr_assert_float_eq(e.window_s, 4, 1e-9);
        cr_assert_float_eq(e.eta_s, 2, 1e-9);
        cr_assert_float_eq(e.backlog_rate, -500, 1e-9);
}

/* Past 5 s the window slides: a slowdown shows within seconds, not diluted by a minute. */
Test(status, the_window_is_the_last_five_seconds)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;
        uint64_t acked = 0, depth = 100000;
        int t = 0;

        for (; t <= 30; t++, acked += 1000, depth -= 1000)
                feed(&dr, t, acked, depth, 100, true);
        for (int k = 0; k < 6; k++, t++, acked += 100, depth -= 100)
                feed(&dr, t, acked, depth, 100, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert_float_eq(e.window_s, 5, 1e-9);
        cr_assert_float_eq(e.rate, 100, 1e-9, "rate %f", e.rate);
}

/* A link keeping up is not a drain: everything queued is in flight at each sample. */
Test(status, a_link_keeping_up_is_no_drain)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;

        for (int t = 0; t <= 10; t++)
                feed(&dr, t, (uint64_t)t * 20, t % 2, t % 2, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert(!e.draining);
        cr_assert_eq(e.rate, 0);
        cr_assert_eq(e.eta_s, -1);
        cr_assert_str_eq(said(&e), "");
}

/* A BeiDou card: one message every 20 s. Five seconds hold no ack, so the window grows
 * until it holds some (up to a minute). */
Test(status, a_slow_link_looks_back_further)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;
        uint64_t acked = 0, depth = 40;

        for (int t = 0; t <= 63; t++) {
                if (t && t % 20 == 0)
                        acked++, depth--;
                feed(&dr, t, acked, depth, 1, true);
        }
        km_status_drain_estimate(&dr, &e);
        cr_assert(e.draining);
        cr_assert_float_eq(e.window_s, 60, 1e-9);
        cr_assert_float_eq(e.rate, 3.0 / 60, 1e-9);
        cr_assert_float_eq(e.eta_s, 37 / (3.0 / 60), 1e-6);
        cr_assert_str_eq(said(&e), "draining 0.1 msg/s, ~12m20s left");
}

/* More comes in than leaves: the rate still shows, and no time left is promised. */
Test(status, a_growing_backlog_has_no_time_left)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;

        for (int t = 0; t <= 6; t++)
                feed(&dr, t, (uint64_t)t * 100, 5000 + (uint64_t)t * 50, 256, true);
        km_status_drain_estimate(&dr, &e);
        cr_assert(e.draining);
        cr_assert_float_eq(e.rate, 100, 1e-9);
        cr_assert_eq(e.eta_s, -1);
        cr_assert_float_eq(e.backlog_rate, 50, 1e-9);
        cr_assert_str_eq(said(&e), "draining 100 msg/s, backlog growing by 50 msg/s");

        struct km_drain flat = { 0 };
        for (int t = 0; t <= 6; t++)
                feed(&flat, t, (uint64_t)t * 100, 5000, 256, true);
        km_status_drain_estimate(&flat, &e);
        cr_assert_str_eq(said(&e), "draining 100 msg/s, backlog steady");
}

/* The ring keeps the newest KM_DRAIN_SAMPLES: after hours of samples the estimate is
 * that of the last seconds. */
Test(status, the_ring_wraps)
{
        struct km_drain dr = { 0 };
        struct km_drain_est e;
        uint64_t acked = 0;

        for (int t = 0; t < 10 * KM_DRAIN_SAMPLES + 3; t++, acked += 40)
                feed(&dr, t, acked, 1000000 - acked, 10, true);
        cr_assert_eq(dr.n, KM_DRAIN_SAMPLES);
        km_status_drain_estimate(&dr, &e);
        cr_assert_float_eq(e.rate, 40, 1e-9);
        cr_assert_float_eq(e.window_s, 5, 1e-9);
}

/* Both directions: the rates add up, the time left is the longer; one direction that
 * does not shrink leaves no time to promise; one not draining does not count. */
Test(status, directions_add_up)
{
        struct km_drain_est e[2], sum;

        memset(e, 0, sizeof(e));
        e[0] = (struct km_drain_est){ true, 400, -400, 10, 5, 4000 };
        e[1] = (struct km_drain_est){ true, 20, -20, 30, 5, 600 };
        km_status_drain_sum(e, 2, &sum);
        cr_assert(sum.draining);
        cr_assert_float_eq(sum.rate, 420, 1e-9);
        cr_assert_float_eq(sum.eta_s, 30, 1e-9);
        cr_assert_eq(sum.depth, 4600);

        e[1].eta_s = -1;
        e[1].backlog_rate = 5;
        km_status_drain_sum(e, 2, &sum);
        cr_assert_eq(sum.eta_s, -1);

        e[1] = (struct km_drain_est){ false, 0, 0, -1, 5, 3 };
        km_status_drain_sum(e, 2, &sum);
        cr_assert_float_eq(sum.rate, 400, 1e-9);
        cr_assert_float_eq(sum.eta_s, 10, 1e-9);
        cr_assert_eq(sum.depth, 4003);

        e[0].draining = false;
        km_status_drain_sum(e, 2, &sum);
        cr_assert(!sum.draining);
        cr_assert_eq(sum.eta_s, -1);
        cr_assert_eq(sum.rate, 0);
}

/* ---- a unit's track and a center's board of bases ------------------------------------ */

static const struct km_status_unit *found;

static void find_u1(void *ud, const struct km_status_unit *u)
{
        if (strcmp(u->unit, ud) == 0)
                found = u;
}

static void pos(struct km_status *s, const char *unit, double lat, double lon, int64_t at)
{
        char json[200];
        int n = snprintf(json, sizeof(json), "{\"unit\":\"%s\",\"lat\":%.7f,\"lon\":%.7f,\"mode\":3}", unit, lat, lon);
        km_status_position(s, unit, json, (size_t)n, at);
}

/* The last KM_STATUS_TRACK fixes, oldest first; one closer than the gap to the newest
 * replaces it, so a 10 Hz terminal does not fill the track in seconds. */
Test(status, track_keeps_the_last_fixes_apart)
{
        struct km_status s;
        km_status_init(&s);
        for (int i = 0; i < KM_STATUS_TRACK + 10; i++)
                pos(&s, "u1", 30.0 + i * 0.001, 109.0, 1000000 + (int64_t)i * 5000);
        pos(&s, "u1", 31.5, 109.5, 1000000 + (int64_t)(KM_STATUS_TRACK + 9) * 5000 + 500); /* 0.5 s after */
        found = NULL;
        km_status_each_position(&s, find_u1, "u1");
        cr_assert(found);
        cr_assert_eq(found->ntrack, KM_STATUS_TRACK);
        const struct km_status_fix *first = &found->track[found->track_first];
        cr_assert_float_eq(first->lat, 30.010, 1e-9, "the 10 oldest went");
        const struct km_status_fix *last = &found->track[(found->track_first + KM_STATUS_TRACK - 1) % KM_STATUS_TRACK];
        cr_assert_float_eq(last->lat, 31.5, 1e-9, "the fix 0.5 s later replaced the newest");
        cr_assert_float_eq(last->lon, 109.5, 1e-9);
        km_status_deinit(&s);
}

struct seen {
        int n;
        char names[8][64];
        char json[8][KM_STATUS_JSON_MAX];
};

static void each_base(void *ud, const struct km_status_base *b)
{
        struct seen *x = ud;
        snprintf(x->names[x->n], sizeof(x->names[0]), "%s:%zu:%zu", b->name, b->nlinks, b->nunits);
        snprintf(x->json[x->n], sizeof(x->json[0]), "%s", b->status.json);
        x->n++;
}

/* What a base says of itself is kept once it is a JSON object (anyone on the center's
 * broker can publish there), under status, link/NAME or pos/UNIT only. */
Test(status, heard_bases_take_only_json_objects)
{
        struct km_status s;
        struct seen x = { 0 };
        km_status_init(&s);
        static const char st[] = "{ \"state\" : \"online\", \"node\":\"north\" }";
        km_status_heard(&s, "north", "status", st, sizeof(st) - 1, false, 1000);
        km_status_heard(&s, "north", "link/center", "{\"state\":\"up\"}", 14, true, 1000);
        km_status_heard(&s, "north", "pos/u1", "{\"lat\":1}", 9, false, 1000);
        km_status_heard(&s, "north", "pos/u1", "{\"lat\":2}", 9, false, 2000); /* the same unit again */
        km_status_heard(&s, "north", "link/x", "<script>", 8, false, 1000);  /* not JSON */
        km_status_heard(&s, "north", "link/y", "[1,2]", 5, false, 1000);     /* not an object */
        km_status_heard(&s, "north", "pos/a/b", "{}", 2, false, 1000);      /* not a unit */
        km_status_heard(&s, "north", "sensors/t", "{}", 2, false, 1000);    /* not what a base says of itself */
        km_status_heard(&s, "", "status", "{}", 2, false, 1000);
        km_status_heard(&s, "south", "link/center", "{\"state\":\"down\"}", 16, false, 1000);
        km_status_each_base(&s, each_base, &x);
        cr_assert_eq(x.n, 2);
        cr_assert_str_eq(x.names[0], "north:1:1");
        cr_assert_str_eq(x.json[0], "{\"state\":\"online\",\"node\":\"north\"}", "kept unformatted");
        cr_assert_str_eq(x.names[1], "south:1:0");
        km_status_deinit(&s);
}

/* A base's units past KM_STATUS_BASE_UNITS: the one heard longest ago gives way. */
Test(status, heard_units_stalest_goes)
{
        struct km_status s;
        km_status_init(&s);
        char unit[32];
        for (int i = 0; i <= KM_STATUS_BASE_UNITS; i++) {
                snprintf(unit, sizeof(unit), "pos/u%d", i);
                km_status_heard(&s, "north", unit, "{}", 2, false, i == 0 ? 5000000 : 1000 + i);
        }
        const struct km_status_base *b = s.bases[0];
        cr_assert_eq(b->nunits, KM_STATUS_BASE_UNITS);
        bool u0 = false, u1 = false;
        for (size_t i = 0; i < b->nunits; i++) {
                u0 |= strcmp(b->units[i].name, "u0") == 0;
                u1 |= strcmp(b->units[i].name, "u1") == 0;
        }
        cr_assert(u0 && !u1, "u1 was the stalest");
        km_status_deinit(&s);
}

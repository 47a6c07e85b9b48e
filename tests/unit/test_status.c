/* SPDX-License-Identifier: MIT */
/* Status: the drain estimate (rate and time left) from the loop's once-a-second samples. */
#include <criterion/criterion.h>
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

/* SPDX-License-Identifier: MIT */
/* The durable bridge end to end: real mosquitto brokers, the real kuimen binary, exact counts. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

struct env {
        char dir[200], conf[300], klog[300];
        struct h_broker local, center;
        struct h_proc k;
        struct h_sub sub;
        struct h_pub pub;
        int restarts;
        char stopped[1024]; /* kuimen's last "stopped:" line, kept past cleanup */
        bool pub_may_fail;  /* the test kills the publisher's broker */
};

static void start_kuimen(struct env *e)
{
        const char *args[] = { "--config", e->conf, "--log-level", "debug", NULL };
        h_kuimen_start(&e->k, e->klog, args);
        e->restarts++;
}

/* The center subscriber's persistent session takes the data topics (not the link
 * status topics, which a test asserts on its own). */
static void subscribe_data(struct h_sub *s)
{
        static const char *const more[] = { "kuimen/north/alert/#", "kuimen/north/pos/#", "kuimen/north/cmd/#" };
        for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++) {
                MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
                cr_assert_eq(MQTTAsync_subscribe(s->c, more[i], 1, &ro), 0);
        }
        h_sleep_ms(200);
}

/* Brokers, kuimen (config with extra lines), the center subscriber and a publisher. */
static void up(struct env *e, const char *tag, const char *extra, bool center_up)
{
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        h_broker_start(&e->local, e->dir, 0, NULL);
        int cport = h_free_port();
        /* The data tests count every message: link status messages are the subject
         * of their own test. */
        char all[1024];
        snprintf(all, sizeof(all), "%s%s", strstr(tag, "linkst") ? "" : "[node]\nlink_status = no\n", extra ? extra : "");
        h_write_conf(e->conf, "north", e->dir, e->local.port, cport, all);
        /* The center subscriber's session exists before any outage, as at a real
         * center: a broker that comes back restores it from its persistence file. */
        h_broker_start(&e->center, e->dir, cport, NULL);
        h_sub_start(&e->sub, cport, "center-sub", "kuimen/north/sensors/#", true);
        subscribe_data(&e->sub);
        if (!center_up)
                h_stop(&e->center.p, SIGTERM);
        start_kuimen(e);
        cr_assert(h_log_wait(&e->k, "ingest: connected", 10000), "kuimen did not connect to the local broker");
        h_pub_start(&e->pub, e->local.port, "sensor-pub");
}

/* The center comes back (outage from the start). */
static void center_start(struct env *e)
{
        h_broker_restart(&e->center);
}

static void down(struct env *e)
{
        if (!e->pub_may_fail)
                cr_expect_eq(e->pub.failed, 0, "the test publisher lost %llu sends", (unsigned long long)e->pub.failed);
        h_pub_stop(&e->pub);
        if (e->k.pid) {
                int st = h_stop(&e->k, SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        }
        if (e->sub.c)
                h_sub_stop(&e->sub);
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
        FILE *f = fopen(e->klog, "r");
        char line[1024];
        while (f && fgets(line, sizeof(line), f))
                if (strstr(line, "stopped: "))
                        snprintf(e->stopped, sizeof(e->stopped), "%s", line);
        if (f)
                fclose(f);
        h_cleanup(e->dir);
}

/* Publishes messages first..first+count-1 as "<topic>:<seq>" round-robin over topics. */
static void publish_seq_from(struct env *e, int topics, int first, int count, int per_sec)
{
        int64_t start = h_now_ms();
        for (int j = 0; j < count; j++) {
                int i = first + j;
                char topic[64], payload[64];
                snprintf(topic, sizeof(topic), "sensors/t%d", i % topics);
                snprintf(payload, sizeof(payload), "%d:%d", i % topics, i / topics);
                while (h_pub_send(&e->pub, topic, payload) != 0)
                        h_sleep_ms(5);
                if (per_sec) {
                        int64_t due = start + (int64_t)(j + 1) * 1000 / per_sec;
                        int64_t wait = due - h_now_ms();
                        if (wait > 0)
                                h_sleep_ms((int)wait);
                }
        }
}

static void publish_seq(struct env *e, int topics, int count, int per_sec)
{
        publish_seq_from(e, topics, 0, count, per_sec);
}

/* A counter from kuimen's final "stopped:" line (after down()). */
static long final_counter(struct env *e, const char *name)
{
        char key[64];
        snprintf(key, sizeof(key), " %s=", name);
        const char *p = strstr(e->stopped, key);
        return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* Waits for a first message, then until nothing new arrived for quiet_ms (the backlog
 * has drained); returns n. */
static size_t settle(struct h_sub *s, int quiet_ms, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms, since = h_now_ms();
        size_t last = 0;
        while (h_now_ms() < until) {
                size_t n = h_sub_wait(s, (size_t)-1, 100);
                if (n != last)
                        last = n, since = h_now_ms();
                else if (n && h_now_ms() - since >= quiet_ms)
                        break;
        }
        return last;
}

TestSuite(bridge, .timeout = 240);

Test(bridge, ten_thousand_in_order_with_user_properties)
{
        struct env e;
        up(&e, "through", NULL, true);
        publish_seq(&e, 10, 10000, 0);
        cr_assert(h_pub_flush(&e.pub, 30000));
        cr_assert_eq(e.pub.acked, 10000);
        size_t n = h_sub_wait(&e.sub, 10000, 60000);
        cr_assert_eq(n, 10000, "received %zu unique of 10000", n);
        cr_assert_eq(h_order_violations(&e.sub), 0);
        for (size_t i = 0; i < n; i++) {
                cr_assert_str_eq(e.sub.rx[i].origin, "north");
                cr_assert_neq(e.sub.rx[i].id, 0);
                int t;
                cr_assert_eq(sscanf(e.sub.rx[i].topic, "kuimen/north/sensors/t%d", &t), 1, "topic %s", e.sub.rx[i].topic);
        }
        h_sleep_ms(300);
        cr_assert_eq(e.sub.dups, 0, "no duplicates without a failure");
        down(&e);
        cr_assert_eq(final_counter(&e, "forwarded"), 10000);
        cr_assert_eq(final_counter(&e, "spooled"), 0);
}

Test(bridge, center_down_ten_seconds_during_stream)
{
        struct env e;
        up(&e, "outage", NULL, true);
        /* 12 s of 250 msg/s; the center is away from second 1 to second 11. */
        int64_t t0 = h_now_ms();
        publish_seq(&e, 4, 250, 250);
        h_stop(&e.center.p, SIGTERM);
        publish_seq_from(&e, 4, 250, 2500, 250);
        int64_t down_ms = h_now_ms() - t0 - 1000;
        if (down_ms < 11000)
                h_sleep_ms((int)(11000 - down_ms));
        h_broker_restart(&e.center);
        publish_seq_from(&e, 4, 2750, 250, 250);
        cr_assert(h_pub_flush(&e.pub, 10000));
        size_t n = h_sub_wait(&e.sub, 3000, 60000);
        cr_assert_eq(n, 3000, "received %zu unique of 3000", n);
        cr_assert_eq(h_order_violations(&e.sub), 0);
        down(&e);
}

struct stream {
        struct env *e;
        int topics, count, rate;
};

static void *stream_main(void *arg)
{
        struct stream *st = arg;
        publish_seq(st->e, st->topics, st->count, st->rate);
        return NULL;
}

/* kill -9 at random moments of a stream; every PUBACKed message must arrive. The kills
 * come from this thread: kuimen dies with the thread that forked it. */
Test(bridge, sigkill_kuimen_during_stream)
{
        struct env e;
        int kills = getenv("KM_DRILL_KILLS") ? atoi(getenv("KM_DRILL_KILLS")) : 20;
        int total = 400 * kills;
        pthread_t t;
        up(&e, "kill", NULL, true);
        struct stream st = { &e, 8, total, 800 };
        cr_assert_eq(pthread_create(&t, NULL, stream_main, &st), 0);
        srand((unsigned)getpid());
        for (int i = 0; i < kills; i++) {
                h_sleep_ms(150 + rand() % 300);
                h_stop(&e.k, SIGKILL);
                start_kuimen(&e);
                cr_assert(h_log_wait(&e.k, "ingest: connected", 10000));
        }
        pthread_join(t, NULL);
        cr_assert(h_pub_flush(&e.pub, 30000));
        cr_assert_eq(e.pub.acked, (uint64_t)total);
        size_t n = h_sub_wait(&e.sub, (size_t)total, 90000);
        cr_assert_eq(n, (size_t)total, "received %zu unique of %d after %d kills", n, total, kills);
        cr_assert_eq(h_order_violations(&e.sub), 0);
        cr_log_info("kill drill: %d kills, %d messages, %zu duplicates by id, %zu redelivered under a new id", kills,
                    total, e.sub.dups, e.sub.redelivered);
        cr_assert_leq(e.sub.redelivered, (size_t)kills * 2, "redeliveries stay within the messages a kill interrupts: %zu after %d kills",
                      e.sub.redelivered, kills);
        down(&e);
}

Test(bridge, sigkill_both_brokers_during_stream)
{
        struct env e;
        const char *save = "autosave_interval 1\nautosave_on_changes true\n";
        memset(&e, 0, sizeof(e));
        /* Persistence that saves after every change (without fsync: a kill is not a
         * power cut). */
        up(&e, "brokers", NULL, false);
        h_stop(&e.local.p, SIGTERM);
        FILE *f = fopen(e.local.conf, "a");
        fputs(save, f);
        fclose(f);
        h_broker_restart(&e.local);
        f = fopen(e.center.conf, "a");
        fputs(save, f);
        fclose(f);
        h_broker_restart(&e.center);
        h_log_wait(&e.k, "center: down -> up", 10000);
        /* Sends in flight when the local broker dies fail at the publisher: they were
         * never acknowledged, so they are not counted below. */
        e.pub_may_fail = true;
        publish_seq_from(&e, 4, 0, 300, 300);
        /* Mosquitto acknowledges a publish before the save that holds it (the save comes
         * at the end of its loop turn and rewrites the whole file): a kill inside that
         * window loses a message the broker acknowledged, whatever kuimen does. So the
         * publisher pauses long enough for the save before the local broker dies; kuimen
         * may still be taking the backlog from it. */
        h_sleep_ms(300);
        h_stop(&e.local.p, SIGKILL);
        h_broker_restart(&e.local);
        publish_seq_from(&e, 4, 300, 300, 300);
        h_sleep_ms(300); /* the same window at the center, for kuimen's last publishes */
        h_stop(&e.center.p, SIGKILL);
        h_broker_restart(&e.center);
        publish_seq_from(&e, 4, 600, 300, 300);
        cr_assert(h_pub_flush(&e.pub, 20000));
        size_t acked = e.pub.acked;
        size_t n = h_sub_wait(&e.sub, acked, 60000);
        /* Every payload the local broker acknowledged must be among those received. */
        size_t missing = 0;
        for (size_t i = 0; i < acked; i++) {
                bool found = false;
                for (size_t j = 0; j < n && !found; j++)
                        found = strcmp(e.sub.rx[j].payload, e.pub.acked_payloads[i]) == 0;
                missing += !found;
        }
        cr_assert_eq(missing, 0, "%zu of %zu acknowledged messages lost (received %zu)", missing, acked, n);
        down(&e);
}

Test(bridge, spool_full_drops_lowest_class_never_alerts)
{
        struct env e;
        char big[1001];
        memset(big, 'x', 1000);
        big[1000] = 0;
        /* 1 MiB spool, center away: 300 alerts and 3000 telemetry of ~1 KB each. */
        up(&e, "full", "[node]\nspool_max_mb = 1\n", false);
        for (int i = 0; i < 3300; i++) {
                char topic[32], payload[1100];
                bool alert = i % 11 == 0;
                snprintf(topic, sizeof(topic), alert ? "alert/gas" : "sensors/t%d", i % 7);
                snprintf(payload, sizeof(payload), "%s%d:%s", alert ? "A" : "T", i, big);
                while (h_pub_send(&e.pub, topic, payload) != 0)
                        h_sleep_ms(5);
        }
        cr_assert(h_pub_flush(&e.pub, 30000));
        cr_assert(h_log_wait(&e.k, "spool full", 10000), "the drop is logged");
        h_sleep_ms(1500); /* the pending flush */
        center_start(&e);
        size_t n = settle(&e.sub, 2000, 30000);
        size_t alerts = 0, tele = 0;
        for (size_t i = 0; i < n; i++) {
                if (e.sub.rx[i].payload[0] == 'A')
                        alerts++;
                else
                        tele++;
        }
        cr_assert_eq(alerts, 300, "every alert arrives (%zu)", alerts);
        cr_assert_lt(tele, 3000, "telemetry was dropped for space");
        cr_assert_gt(tele, 0);
        down(&e);
        cr_assert_eq(final_counter(&e, "dropped"), (long)(3000 - tele));
        cr_assert_eq(final_counter(&e, "in"), 3300);
}

Test(bridge, ttl_expiry_and_coalescing)
{
        struct env e;
        up(&e, "ttl", "[class telemetry]\nttl = 1s\n[positions]\ntrack_interval = 0\n", false);
        for (int i = 0; i < 50; i++) {
                char payload[32];
                snprintf(payload, sizeof(payload), "T%d", i);
                h_pub_send(&e.pub, "sensors/t", payload);
        }
        /* 20 fixes of 5 units; the seq is in the latitude. */
        for (int u = 0; u < 5; u++)
                for (int s = 0; s < 20; s++) {
                        char topic[32], payload[96];
                        snprintf(topic, sizeof(topic), "pos/u%d", u);
                        snprintf(payload, sizeof(payload), "{\"lat\": %d.%03d, \"lon\": 109.5, \"kind\": \"drone\"}", 30 + u, s);
                        h_pub_send(&e.pub, topic, payload);
                }
        h_pub_send(&e.pub, "alert/x", "ALERT");
        cr_assert(h_pub_flush(&e.pub, 10000));
        h_sleep_ms(2500);
        center_start(&e);
        size_t n = settle(&e.sub, 1500, 20000);
        for (size_t i = 0; n != 6 && i < n; i++)
                cr_log_error("got %s %s", e.sub.rx[i].topic, e.sub.rx[i].payload);
        cr_assert_eq(n, 6, "one alert and the latest position of 5 units (got %zu)", n);
        cr_assert_str_eq(e.sub.rx[0].payload, "ALERT", "the alert leaves first");
        for (size_t i = 1; i < n; i++) {
                int u;
                char want[64];
                cr_assert_eq(sscanf(e.sub.rx[i].topic, "kuimen/north/pos/u%d", &u), 1, "%s", e.sub.rx[i].topic);
                snprintf(want, sizeof(want), "{\"unit\":\"u%d\",\"lat\":%d.0190000,", u, 30 + u);
                cr_assert_eq(strncmp(e.sub.rx[i].payload, want, strlen(want)), 0, "latest wins: %s", e.sub.rx[i].payload);
        }
        down(&e);
        cr_assert_eq(final_counter(&e, "expired"), 50);
        cr_assert_eq(final_counter(&e, "coalesced"), 95);
}

/* An outage keeps one position per unit and track_interval (the latest of each), not
 * only the last one. */
Test(bridge, outage_keeps_thinned_track)
{
        struct env e;
        up(&e, "track", "[positions]\ntrack_interval = 60s\n", false);
        const long t0 = 1700000000; /* 28333333 min + 20 s */
        long buckets = 0, last_bucket = -1;
        for (int i = 0; i < 30; i++) {
                char payload[128];
                long ts = t0 + 10 * i;
                if (ts / 60 != last_bucket)
                        buckets++, last_bucket = ts / 60;
                snprintf(payload, sizeof(payload), "{\"lat\": 30.%04d, \"lon\": 109.5, \"ts\": %ld}", i, ts);
                h_pub_send(&e.pub, "pos/drone7", payload);
        }
        /* and one malformed fix in the middle of it: counted, not forwarded */
        h_pub_send(&e.pub, "pos/drone7", "{\"lat\": 95, \"lon\": 109.5}");
        cr_assert(h_pub_flush(&e.pub, 10000));
        h_sleep_ms(1500);
        center_start(&e);
        size_t n = settle(&e.sub, 1500, 20000);
        cr_assert_eq(n, (size_t)buckets, "one point per minute: %zu of %ld", n, buckets);
        /* Each survivor is the last fix of its minute, in time order. */
        long prev = -1;
        for (size_t i = 0; i < n; i++) {
                int k;
                cr_assert_eq(sscanf(e.sub.rx[i].payload, "{\"unit\":\"drone7\",\"lat\":30.%4d", &k), 1, "%s",
                             e.sub.rx[i].payload);
                long ts = t0 + 10 * k;
                cr_assert_gt(k, prev);
                cr_assert(k == 29 || (t0 + 10 * (k + 1)) / 60 != ts / 60, "fix %d is the last of its minute", k);
                prev = k;
        }
        down(&e);
        cr_assert_eq(final_counter(&e, "bad_input"), 1);
}

/* Bad terminal input never stops the rest: each malformed payload is counted and
 * dropped, and the good fix right after it still arrives. */
Test(bridge, bad_positions_counted_good_ones_flow)
{
        static const char *const bad[] = {
                "", " ", "\x01\x02\x03\xff", "not json", "{", "[]", "{\"lat\": 30.5}", "{\"lon\": 109.5}",
                "{\"lat\": \"30.5\", \"lon\": 109.5}", "{\"lat\": 91, \"lon\": 109.5}", "{\"lat\": 30, \"lon\": 181}",
                "{\"lat\": 30, \"lon\": 109, \"alt\": 1e999}", "{\"lat\": 30, \"lon\": 109, \"kind\": \"tank\"}",
                "{\"lat\": 30, \"lon\": 109, \"unit\": \"other\"}", "{\"lat\": 30, \"lon\": 109, \"ts\": \"yesterday\"}",
                "{\"lat\": 30, \"lon\": 109, \"speed\": -4}", "{\"lat\": 30, \"lon\": 109, \"heading\": 400}",
                "{\"lat\": 30, \"lon\": 109, \"battery\": 150}", "{\"lat\": 30, \"lon\": 109, \"fix\": 1}",
                "{\"lat\": 30, \"lat\": 31, \"lon\": 109}", "{\"lat\": null, \"lon\": 109}",
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*00",
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "$GPGGA,123519,4807.038,N*47", "$GPGGA,123519,4807.038,N,01131.000,E,0,08,0.9,545.4,M,46.9,M,,*46",
                "$GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*7D",
                "$GPGSV,1,1,01,10,63,137,17*4C", "$GPGGA,12x519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*1F",
                "$GPGGA,123519,9907.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*4E", "GPGGA no dollar",
                "{\"lat\": 30, \"lon\": 109, \"alt\": 100000}",
        };
        const size_t nbad = sizeof(bad) / sizeof(bad[0]);
        struct env e;
        char big[5000];
        memset(big, ' ', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        memcpy(big, "{\"lat\": 30, \"lon\": 109}", 23); /* oversized */
        up(&e, "badpos", "[positions]\ntrack_interval = 0\n", true);
        for (size_t i = 0; i <= nbad; i++) {
                char topic[32], good[96];
                snprintf(topic, sizeof(topic), "pos/t%zu", i);
                h_pub_send(&e.pub, topic, i < nbad ? bad[i] : big);
                snprintf(good, sizeof(good), "{\"lat\": 31.%04zu, \"lon\": 110.5}", i);
                h_pub_send(&e.pub, topic, good);
        }
        cr_assert(h_pub_flush(&e.pub, 10000));
        size_t n = h_sub_wait(&e.sub, nbad + 1, 20000);
        h_sleep_ms(500);
        n = e.sub.n;
        cr_assert_eq(n, nbad + 1, "every good fix arrives (%zu of %zu)", n, nbad + 1);
        for (size_t i = 0; i < n; i++)
                cr_assert(strstr(e.sub.rx[i].payload, "\"lat\":31.") != NULL, "only good fixes: %s", e.sub.rx[i].payload);
        down(&e);
        cr_assert_eq(final_counter(&e, "bad_input"), (long)nbad + 1);
}

/* Each transition of a link goes upward on <prefix>/<node>/link/<name> with its reason,
 * and is retained on the local broker under the same topic. */
Test(bridge, link_status_topics)
{
        struct env e;
        struct h_sub st, local;
        up(&e, "linkst", NULL, true);
        h_sub_start(&st, e.center.port, "status-sub", "kuimen/north/link/#", false);
        h_stop(&e.center.p, SIGTERM);
        h_sleep_ms(500);
        h_broker_restart(&e.center);
        h_sub_stop(&st);
        /* Retained at the center too: a subscriber that comes after the status went
         * (a center started after its bases) reads the link's state at once, not at the
         * next status a minute later. */
        cr_assert(h_log_wait(&e.k, "center: down -> up", 10000), "kuimen did not reconnect (%s)", e.k.log);
        h_sleep_ms(1500); /* the "up" status reaches the center */
        struct h_sub late;
        h_sub_start(&late, e.center.port, "late-status", "kuimen/north/link/#", false);
        cr_assert_geq(h_sub_wait(&late, 1, 2000), 1, "no retained link status at the center");
        cr_assert_str_eq(late.rx[0].topic, "kuimen/north/link/center");
        cr_assert(strstr(late.rx[0].payload, "\"state\":\"up\""), "%s", late.rx[0].payload);
        h_sub_stop(&late);
        h_sub_start(&local, e.local.port, "local-status", "kuimen/north/link/#", false);
        cr_assert_geq(h_sub_wait(&local, 1, 10000), 1, "a retained link status on the local broker");
        cr_assert_str_eq(local.rx[0].topic, "kuimen/north/link/center");
        cr_assert(strncmp(local.rx[0].payload, "{\"link\":\"center\",\"type\":\"mqtt\",\"state\":\"", 40) == 0,
                  "%s", local.rx[0].payload);
        h_sub_stop(&local);
        down(&e);
        /* kuimen logged both transitions with their reasons */
}

Test(bridge, damaged_spool_is_moved_aside)
{
        struct env e;
        char path[320];
        up(&e, "damaged", NULL, true);
        h_stop(&e.k, SIGKILL);
        static const char *const sfx[] = { "-wal", "-shm" };
        for (int i = 0; i < 2; i++) {
                snprintf(path, sizeof(path), "%s/state/spool.db%s", e.dir, sfx[i]);
                unlink(path);
        }
        snprintf(path, sizeof(path), "%s/state/spool.db", e.dir);
        FILE *f = fopen(path, "w");
        for (int i = 0; i < 8192; i++)
                fputc(i * 7919 % 251, f);
        fclose(f);
        start_kuimen(&e);
        cr_assert(h_log_wait(&e.k, "is damaged: moved aside to", 10000));
        cr_assert(h_log_wait(&e.k, "ingest: connected", 10000));
        publish_seq(&e, 2, 100, 0);
        cr_assert_eq(h_sub_wait(&e.sub, 100, 20000), 100);
        down(&e);
}

Test(bridge, downlink_command_reaches_local_subscriber)
{
        struct env e;
        struct h_sub local;
        struct h_pub center;
        up(&e, "cmd", NULL, true);
        h_sub_start(&local, e.local.port, "terminal-7", "cmd/#", false);
        cr_assert(h_log_wait(&e.k, "down: connected", 10000));
        h_sleep_ms(300);
        h_pub_start(&center, e.center.port, "center-cmd");
        h_pub_send(&center, "kuimen/north/cmd/evacuate/zone3", "GO");
        h_pub_send(&center, "kuimen/south/cmd/evacuate/zone3", "NOT-FOR-NORTH");
        cr_assert(h_pub_flush(&center, 5000));
        cr_assert_eq(h_sub_wait(&local, 1, 10000), 1);
        h_sleep_ms(500);
        cr_assert_eq(local.n, 1);
        cr_assert_str_eq(local.rx[0].topic, "cmd/evacuate/zone3");
        cr_assert_str_eq(local.rx[0].payload, "GO");
        h_pub_stop(&center);
        h_sub_stop(&local);
        down(&e);
        cr_assert_eq(final_counter(&e, "delivered_local"), 1);
}

/* mqttc keeps an idle connection alive with its own PINGREQs: with a 1 s keepalive
 * and nothing to say for 5 s, neither broker drops kuimen (Mosquitto would after
 * 1.5 s of silence), and a message after the pause goes straight through. */
Test(bridge, idle_connections_kept_alive_by_pings)
{
        struct env e;
        up(&e, "idle", "[local]\nkeepalive = 1s\n", true);
        cr_assert(h_log_wait(&e.k, "up: connected", 10000));
        h_sleep_ms(5000);
        cr_assert_eq(h_log_count(&e.k, "lost"), 0, "a connection was dropped while idle");
        cr_assert_eq(h_log_count(&e.k, "ingest: connected to"), 1, "ingest connected more than once");
        cr_assert_eq(h_log_count(&e.k, "up: connected to"), 1, "the uplink connected more than once");
        publish_seq(&e, 1, 1, 0);
        cr_assert_eq(h_sub_wait(&e.sub, 1, 5000), 1);
        down(&e);
}

/* What the payload-size test's center subscriber saw: length and FNV-1a of each. */
struct sized_rx {
        pthread_mutex_t mu;
        size_t n;
        size_t len[16];
        uint32_t hash[16];
};

static uint32_t fnv1a(const void *p, size_t n)
{
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < n; i++)
                h = (h ^ ((const uint8_t *)p)[i]) * 16777619u;
        return h;
}

static int sized_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct sized_rx *r = ctx;
        (void)tlen;
        pthread_mutex_lock(&r->mu);
        if (r->n < 16) {
                r->len[r->n] = (size_t)m->payloadlen;
                r->hash[r->n] = fnv1a(m->payload, (size_t)m->payloadlen);
                r->n++;
        }
        pthread_mutex_unlock(&r->mu);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static char *sized_payload(size_t len)
{
        char *p = malloc(len + 1);
        for (size_t i = 0; i < len; i++)
                p[i] = (char)('a' + (i * 7 + len) % 26);
        p[len] = 0;
        return p;
}

/* Payloads on both sides of MQTT's length-field steps (127/128, 16383/16384 bytes),
 * larger than kuimen's 64 KiB read, and empty, arrive byte for byte and in order; both
 * brokers are given by name (localhost), so kuimen's name lookup runs too. */
Test(bridge, payload_sizes_byte_exact_through_named_brokers)
{
        static const size_t sizes[] = { 0, 1, 127, 128, 16383, 16384, 70000, 1 << 20 };
        const size_t n = sizeof(sizes) / sizeof(sizes[0]);
        char dir[200], conf[300], klog[300], uri[64];
        struct h_broker local, center;
        struct h_proc k;
        struct h_pub pub;
        struct sized_rx rx = { .mu = PTHREAD_MUTEX_INITIALIZER };

        h_tmpdir(dir, sizeof(dir), "sizes");
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        h_broker_start(&local, dir, 0, NULL);
        h_broker_start(&center, dir, 0, NULL);
        FILE *f = fopen(conf, "w");
        cr_assert(f);
        fprintf(f, "[node]\nname = north\nspool = %s/state/spool.db\nstats_interval = 0\nlink_status = no\n"
                   "[local]\nuri = tcp://localhost:%d\nsubscribe = sensors/#\n"
                   "[link center]\ntype = mqtt\nuri = mqtt://localhost:%d\nkeepalive = 2s\n",
                dir, local.port, center.port);
        fclose(f);

        MQTTAsync sub;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", center.port);
        cr_assert_eq(MQTTAsync_createWithOptions(&sub, uri, "sized-sub", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
        MQTTAsync_setCallbacks(sub, &rx, NULL, sized_arrived, NULL);
        cr_assert_eq(MQTTAsync_connect(sub, &co), 0);
        for (int i = 0; i < 100 && !MQTTAsync_isConnected(sub); i++)
                h_sleep_ms(50);
        cr_assert_eq(MQTTAsync_subscribe(sub, "kuimen/north/sensors/#", 1, &ro), 0);
        h_sleep_ms(200);

        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "ingest: connected to tcp://localhost", 10000), "ingest did not connect by name");
        cr_assert(h_log_wait(&k, "up: connected to mqtt://localhost", 10000), "the uplink did not connect by name");
        h_pub_start(&pub, local.port, "sized-pub");
        for (size_t i = 0; i < n; i++) {
                char *p = sized_payload(sizes[i]);
                cr_assert_eq(h_pub_send(&pub, "sensors/sized", p), 0);
                free(p);
        }
        cr_assert(h_pub_flush(&pub, 10000));
        cr_assert_eq(pub.acked, n);
        for (int i = 0; i < 200; i++) {
                pthread_mutex_lock(&rx.mu);
                size_t got = rx.n;
                pthread_mutex_unlock(&rx.mu);
                if (got >= n)
                        break;
                h_sleep_ms(50);
        }
        h_sleep_ms(300);
        cr_assert_eq(rx.n, n, "received %zu of %zu", rx.n, n);
        for (size_t i = 0; i < n; i++) {
                char *p = sized_payload(sizes[i]);
                cr_expect_eq(rx.len[i], sizes[i], "message %zu: %zu bytes, want %zu", i, rx.len[i], sizes[i]);
                cr_expect_eq(rx.hash[i], fnv1a(p, sizes[i]), "message %zu (%zu bytes): content differs", i, sizes[i]);
                free(p);
        }
        h_pub_stop(&pub);
        MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer5;
        MQTTAsync_disconnect(sub, &dopt);
        h_sleep_ms(100);
        MQTTAsync_destroy(&sub);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        h_stop(&local.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        h_cleanup(dir);
}

Test(bridge, check_config_names_file_line_key)
{
        char dir[200], path[300], out[4096];
        h_tmpdir(dir, sizeof(dir), "conf");
        snprintf(path, sizeof(path), "%s/bad.conf", dir);
        FILE *f = fopen(path, "w");
        fputs("[node]\nname = north\nspool_max_mb = lots\nsync = sometimes\nplugin_dir = /nonexistent\n[local]\nuri = tcp://127.0.0.1:1883\n"
              "subscribe = sensors/#/x\ncolour = blue\n[link center]\ntype = mqtt\nuri = http://center\n"
              "[link sat]\ntype = carrier-pigeon\n[class alert]\nttl = forever\n[nonsense]\nx = 1\n",
              f);
        fclose(f);
        const char *args[] = { "--check-config", path, NULL };
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1);
        char want[4096];
        snprintf(want, sizeof(want),
                 "%s:3: spool_max_mb: not a whole number\n"
                 "%s:4: sync: 'sometimes' is not one of: batch always\n"
                 "%s:16: ttl: not a duration (e.g. 50ms, 10s, 5m, 2h, 7d)\n"
                 "%s:8: subscribe: 'sensors/#/x': '#' must be a whole last level\n"
                 "%s:12: uri: 'http://center' is not tcp://, ssl://, mqtt:// or mqtts://host:port\n"
                 "%s:14: type: unknown link type 'carrier-pigeon': no plugin /nonexistent/carrier-pigeon.so (built in: mqtt)\n"
                 "%s:18: -: unknown section [nonsense]\n"
                 "%s:9: colour: unknown key in [local]\n"
                 "%s:18: x: unknown key in [nonsense]\n",
                 path, path, path, path, path, path, path, path, path);
        cr_assert_str_eq(out, want);
        f = fopen(path, "w");
        fputs("[node]\nname = north\n[link center]\nuri = tcp://127.0.0.1:1884\n", f);
        fclose(f);
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 0);
        snprintf(want, sizeof(want), "%s: ok\n", path);
        cr_assert_str_eq(out, want);
        h_cleanup(dir);
}

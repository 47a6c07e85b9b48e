/* SPDX-License-Identifier: MIT */
/* Links under stress: broken plugins beside a working link, budgets measured on the air, alerts overtaking a backlog. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *env_dir(const char *name)
{
        const char *d = getenv(name);
        cr_assert_not_null(d, "%s (meson sets it)", name);
        return d;
}

/* ---- every link status message, in order -------------------------------------------- */

#define MAXSTAT 1024

struct status_rec {
        char link[32], state[16], reason[200];
};

struct statsub {
        MQTTAsync c;
        pthread_mutex_t mu;
        struct status_rec r[MAXSTAT];
        size_t n;
};

static int stat_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct statsub *s = ctx;
        char *json = strndup(m->payload, (size_t)m->payloadlen);
        cJSON *j = json ? cJSON_Parse(json) : NULL;
        (void)tlen;
        if (j) {
                struct status_rec rec = { 0 };
                const cJSON *l = cJSON_GetObjectItem(j, "link"), *st = cJSON_GetObjectItem(j, "state"),
                            *why = cJSON_GetObjectItem(j, "reason");
                snprintf(rec.link, sizeof(rec.link), "%s", cJSON_IsString(l) ? l->valuestring : "?");
                snprintf(rec.state, sizeof(rec.state), "%s", cJSON_IsString(st) ? st->valuestring : "?");
                snprintf(rec.reason, sizeof(rec.reason), "%s", cJSON_IsString(why) ? why->valuestring : "?");
                pthread_mutex_lock(&s->mu);
                if (s->n < MAXSTAT)
                        s->r[s->n++] = rec;
                pthread_mutex_unlock(&s->mu);
                cJSON_Delete(j);
        }
        free(json);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

/* Subscribes to the retained <prefix>/north/link/# on the base's local broker. */
static void statsub_start(struct statsub *s, int port)
{
        char uri[64];
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        memset(s, 0, sizeof(*s));
        pthread_mutex_init(&s->mu, NULL);
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        cr_assert_eq(MQTTAsync_createWithOptions(&s->c, uri, "status-sub", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
        MQTTAsync_setCallbacks(s->c, s, NULL, stat_arrived, NULL);
        co.cleanstart = 1;
        cr_assert_eq(MQTTAsync_connect(s->c, &co), 0);
        int64_t until = h_now_ms() + 10000;
        while (!MQTTAsync_isConnected(s->c) && h_now_ms() < until)
                h_sleep_ms(10);
        cr_assert(MQTTAsync_isConnected(s->c));
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(s->c, "kuimen/north/link/#", 1, &ro), 0);
        h_sleep_ms(200);
}

static void statsub_stop(struct statsub *s)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        o.timeout = 500;
        MQTTAsync_disconnect(s->c, &o);
        h_sleep_ms(50);
        MQTTAsync_destroy(&s->c);
        pthread_mutex_destroy(&s->mu);
}

/* The reason of link's first status with state, copied into out; false if none. */
static bool first_reason(struct statsub *s, const char *link, const char *state, char *out, size_t n)
{
        bool found = false;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->n && !found; i++)
                if (strcmp(s->r[i].link, link) == 0 && strcmp(s->r[i].state, state) == 0) {
                        snprintf(out, n, "%s", s->r[i].reason);
                        found = true;
                }
        pthread_mutex_unlock(&s->mu);
        return found;
}

static size_t count_status(struct statsub *s, const char *link, const char *state, const char *reason_prefix)
{
        size_t k = 0;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->n; i++)
                k += strcmp(s->r[i].link, link) == 0 && strcmp(s->r[i].state, state) == 0 &&
                     strncmp(s->r[i].reason, reason_prefix, strlen(reason_prefix)) == 0;
        pthread_mutex_unlock(&s->mu);
        return k;
}

static const cJSON *link_of(const cJSON *j, const char *name)
{
        const cJSON *ls = cJSON_GetObjectItem(j, "links"), *l;
        cJSON_ArrayForEach(l, ls)
        {
                const cJSON *n = cJSON_GetObjectItem(l, "name");
                if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
                        return l;
        }
        return NULL;
}

static const char *str_of(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItem(o, key);
        return cJSON_IsString(v) ? v->valuestring : "";
}

/* ---- 1. broken plugins ------------------------------------------------------------- */

#define STREAM 400 /* telemetry messages, 50 a second */

/* Four broken link plugins, preferred (lower order) to the one working MQTT link: one
 * whose open() fails, one whose send() returns EIO, one that takes frames and never
 * answers, one whose send() blocks the loop for 1.5 s. Each goes down with a reason
 * naming its failure, is retried with back-off, and every message of a steady stream
 * reaches the center exactly once per id; kuimen keeps running and exits cleanly. */
Test(links, broken_plugins_leave_the_rest_running, .timeout = 120)
{
        char dir[200], conf[300], klog[300], sock[300];
        struct h_broker local, center;
        struct h_sub sub;
        struct h_pub pub;
        struct h_proc k;
        static struct statsub ss;

        h_tmpdir(dir, sizeof(dir), "links-faulty");
        h_broker_start(&local, dir, 0, NULL);
        h_broker_start(&center, dir, 0, NULL);
        h_sub_start(&sub, center.port, "center-sub", "kuimen/north/sensors/#", true);
        statsub_start(&ss, local.port);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        snprintf(sock, sizeof(sock), "%s/kuimen.sock", dir);
        FILE *f = fopen(conf, "w");
        cr_assert_not_null(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/state/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[control]\nsocket = %s\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                "[link dead]\ntype = faulty\nfault = open_error\norder = 1\n"
                "[link broken]\ntype = faulty\nfault = send_error\nerrno = EIO\norder = 2\n"
                "[link hung]\ntype = faulty\nfault = stall\norder = 3\nack_timeout = 2s\n"
                "[link stuck]\ntype = faulty\nfault = block\nblock = 1500\norder = 4\n"
                "[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 5\nkeepalive = 5s\n",
                dir, env_dir("KM_TEST_PLUGIN_DIR"), sock, local.port, center.port);
        fclose(f);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "link: center: down -> up", 10000), "the MQTT link comes up");
        cr_assert(h_log_wait(&k, "ingest: connected", 10000));
        h_pub_start(&pub, local.port, "terminals");

        int64_t start = h_now_ms();
        for (int i = 0; i < STREAM; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "T%04d", i);
                while (h_pub_send(&pub, "sensors/flow", pl) != 0)
                        h_sleep_ms(2);
                int64_t wait = start + (int64_t)(i + 1) * 20 - h_now_ms();
                if (wait > 0)
                        h_sleep_ms((int)wait);
        }
        cr_assert(h_pub_flush(&pub, 20000));
        size_t got = h_sub_wait(&sub, STREAM, 60000);
        int64_t done = h_now_ms();
        cr_assert_eq(kill(k.pid, 0), 0, "kuimen is still running");

        /* Nothing lost, nothing foreign: each payload once, in order. */
        cr_assert_eq(got, STREAM, "every message reached the center (%zu of %d)", got, STREAM);
        pthread_mutex_lock(&sub.mu);
        for (size_t i = 0; i < sub.n; i++) {
                char want[32];
                snprintf(want, sizeof(want), "T%04zu", i);
                cr_assert_str_eq(sub.rx[i].payload, want, "arrival %zu", i);
        }
        size_t dups = sub.dups, redelivered = sub.redelivered;
        pthread_mutex_unlock(&sub.mu);
        cr_assert_eq(redelivered, 0, "no message under a second id");

        /* Each broken link went down naming its failure (its status topic). */
        char why[200];
        h_sleep_ms(300); /* the last status messages reach the local broker */
        cr_assert(first_reason(&ss, "dead", "down", why, sizeof(why)), "status of dead");
        cr_assert_str_eq(why, "plugin failed to open: Input/output error");
        cr_assert_geq(count_status(&ss, "broken", "down", "send: Input/output error"), 1, "broken: down for its send error");
        cr_assert_geq(count_status(&ss, "hung", "down", "no acknowledgement for "), 1, "hung: down for no acknowledgement");
        cr_assert_geq(count_status(&ss, "stuck", "down", "send() blocked the event loop for "), 1,
                      "stuck: down for blocking the loop");
        /* ... and was tried again after a back-off, with a probe before any traffic
         * (the probe's send fails as the messages' did: it stays down). */
        cr_assert_geq(count_status(&ss, "broken", "down", "probing after: send: Input/output error"), 1);
        cr_assert_eq(count_status(&ss, "broken", "up", "probe answered after: "), 0);
        cr_assert_eq(count_status(&ss, "center", "down", ""), 0, "the MQTT link never went down");
        /* The log says the same, with the blocked time. */
        cr_assert_geq(h_log_count(&k, "link: broken: up -> down (send: Input/output error)"), 1);
        cr_assert_geq(h_log_count(&k, "link: hung: up -> down (no acknowledgement for 2."), 1);
        cr_assert_geq(h_log_count(&k, "link: stuck: the faulty plugin blocked the event loop for 1."), 1);

        cJSON *j = h_ctl_json(sock, "links --json");
        const cJSON *dead = link_of(j, "dead"), *ctr = link_of(j, "center");
        cr_assert(dead && ctr);
        cr_assert_str_eq(str_of(dead, "state"), "down");
        cr_assert_str_eq(str_of(dead, "reason"), "plugin failed to open: Input/output error");
        cr_assert_str_eq(str_of(ctr, "state"), "up");
        cJSON_Delete(j);

        cr_log_info("broken plugins: %d messages in %.1f s, %zu duplicates by id; down transitions: broken %zu, hung %zu, "
                    "stuck %zu; sends tried: %d",
                    STREAM, (double)(done - start) / 1000, dups, count_status(&ss, "broken", "down", ""),
                    count_status(&ss, "hung", "down", ""), count_status(&ss, "stuck", "down", ""),
                    h_log_count(&k, "faulty: send #"));
        h_pub_stop(&pub);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 (%d)", st);
        statsub_stop(&ss);
        h_sub_stop(&sub);
        h_stop(&local.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        h_cleanup(dir);
}

/* ---- a base and a center kuimen over a sim link, through a recording relay --------- */

struct pair {
        struct h_pair k; /* through k.relay, which records what the base puts on the air */
        struct h_sub sub;
        struct h_pub pub;
};

/* link_extra goes into both ends' [link sat]; base_extra into the base's [link sat]. */
static void pair_up(struct pair *p, const char *tag, const char *link_extra, const char *base_extra)
{
        struct h_pair_conf conf = { .link_keys = link_extra,
                                    .base_node = "link_status = no",
                                    .base_local = "subscribe = sensors/#, alert/#",
                                    .base_extra = base_extra,
                                    .relay = true };
        memset(p, 0, sizeof(*p));
        h_pair_init(&p->k, tag);
        h_sub_start(&p->sub, p->k.center.port, "center-sub", "kuimen/north/sensors/#", true);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p->sub.c, "kuimen/north/alert/#", 1, &ro), 0);
        h_sleep_ms(200);
        h_pair_start(&p->k, &conf);
        h_pub_start(&p->pub, p->k.local.port, "terminals");
}

static void pair_down(struct pair *p)
{
        h_pub_stop(&p->pub);
        h_sub_stop(&p->sub);
        h_pair_stop(&p->k);
        int sb = p->k.base_exit, sc = p->k.ctr_exit;
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "base exits 0 (%d)", sb);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "center exits 0 (%d)", sc);
        h_cleanup(p->k.dir);
}

/* A card with a 5 s service interval (a BeiDou card's is 60 s) is busy, not dead: a
 * message handed over while it waits leaves when the card is free, and the link is not
 * declared dead meanwhile although that is longer than ack_timeout (3 s). A beam the
 * driver reports degraded still carries, and operators see "degraded" with its reason. */
Test(links, busy_card_and_degraded_beam, .timeout = 120)
{
        struct pair p;
        pair_up(&p, "busy", "interval = 5s\ndegraded = 7s+5s", NULL);
        cr_assert_eq(h_pub_send(&p.pub, "sensors/a", "one"), 0);
        cr_assert_eq(h_sub_wait(&p.sub, 1, 10000), 1);
        h_sleep_ms(500);
        cr_assert_eq(h_pub_send(&p.pub, "sensors/a", "two"), 0); /* the card is busy for 4.5 s more */
        cr_assert_eq(h_sub_wait(&p.sub, 2, 15000), 2);
        cr_assert(h_log_wait(&p.k.base, "sat: up -> degraded (scheduled degradation)", 15000));
        cr_assert_eq(h_pub_send(&p.pub, "sensors/a", "three"), 0);
        cr_assert_eq(h_sub_wait(&p.sub, 3, 15000), 3, "a degraded link still carries");
        cr_assert(h_log_wait(&p.k.base, "sat: degraded -> up", 15000));
        cr_assert_eq(h_log_count(&p.k.base, "no acknowledgement"), 0, "a busy card was taken for a dead link");
        cr_assert_eq(h_log_count(&p.k.base, "-> down"), 0, "the link went down");
        pair_down(&p);
}

/* ---- 2. budgets --------------------------------------------------------------------- */

#define BUDGET_MS 1500
#define BACKLOG 120

/* A backlog on a link with a budget per 1.5 s: the base's frames, as the relay sees
 * them leave, come in bursts (one per budget window) within the budget, the bursts at
 * least a window apart, the backlog still waiting after 4 windows (a full frame is 64 ms on this air), and the link never
 * declared dead while it waits. bytes or frames 0: that budget is off. */
static void budget_run(const char *tag, size_t bytes, size_t frames)
{
        struct pair p;
        char extra[160];
        snprintf(extra, sizeof(extra), "budget_bytes = %zu\nbudget_messages = %zu\nbudget_interval = %dms", bytes,
                 frames, BUDGET_MS);
        pair_up(&p, tag, "mtu = 77\nbitrate = 9600\nrto = 2s", extra);
        for (int i = 0; i < BACKLOG; i++) {
                char pl[48];
                snprintf(pl, sizeof(pl), "{\"seq\": %d, \"ppm\": %d}", i, (i * 37) % 1000);
                h_pub_send(&p.pub, "sensors/gas", pl);
        }
        cr_assert(h_pub_flush(&p.pub, 10000));
        /* The first window and 3 more. */
        for (int64_t until = h_now_ms() + 30000; h_now_ms() < until; h_sleep_ms(50)) {
                pthread_mutex_lock(&p.k.relay.mu);
                bool enough = p.k.relay.n && h_now_ms() - p.k.relay.at[0] > 3 * BUDGET_MS + 700;
                pthread_mutex_unlock(&p.k.relay.mu);
                if (enough)
                        break;
        }
        size_t arrived = h_sub_count(&p.sub);

        /* Bursts: frames less than half a window apart belong together. */
        pthread_mutex_lock(&p.k.relay.mu);
        size_t n = p.k.relay.n, bursts = 0, fr = 0, by = 0, max_fr = 0, max_by = 0;
        int64_t min_gap = INT64_MAX, burst_start = 0;
        char line[512];
        size_t ll = 0;
        for (size_t i = 0; i <= n; i++) {
                bool new_burst = i == n || i == 0 || p.k.relay.at[i] - p.k.relay.at[i - 1] > BUDGET_MS / 2;
                if (new_burst && i > 0) {
                        bursts++;
                        max_fr = fr > max_fr ? fr : max_fr;
                        max_by = by > max_by ? by : max_by;
                        if (ll < sizeof(line))
                                ll += (size_t)snprintf(line + ll, sizeof(line) - ll, " %zu/%zu", fr, by);
                        fr = by = 0;
                }
                if (i == n)
                        break;
                if (new_burst) {
                        if (i > 0 && p.k.relay.at[i] - burst_start < min_gap)
                                min_gap = p.k.relay.at[i] - burst_start;
                        burst_start = p.k.relay.at[i];
                }
                fr++;
                by += p.k.relay.len[i];
        }
        pthread_mutex_unlock(&p.k.relay.mu);
        cr_log_info("budget %zu B / %zu frames per %d ms: %zu bursts (frames/bytes):%s; least gap between bursts "
                    "%lld ms; %zu of %d messages arrived",
                    bytes, frames, BUDGET_MS, bursts, line, (long long)min_gap, arrived, BACKLOG);
        cr_assert_geq(bursts, 4, "the link sent in at least 4 windows (%zu)", bursts);
        if (frames)
                cr_assert_leq(max_fr, frames, "frames in one window:%s", line);
        if (bytes)
                cr_assert_leq(max_by, bytes, "bytes in one window:%s", line);
        cr_assert_geq(min_gap, BUDGET_MS - 100, "one burst per window (least gap %lld ms)", (long long)min_gap);
        cr_assert_gt(arrived, 0, "the budget lets traffic through");
        cr_assert_lt(arrived, BACKLOG, "the backlog still waits (%zu of %d arrived)", arrived, BACKLOG);
        cr_assert_eq(h_log_count(&p.k.base, "link: sat: up -> down"), 0, "waiting for the budget is not a dead link");
        pair_down(&p);
}

/* budget_messages on a narrow link counts frames: what the equipment bills as one
 * message (a BeiDou short message, an SBD session). */
Test(links, budget_messages_on_the_air, .timeout = 120)
{
        budget_run("links-budgetm", 0, 3);
}

/* budget_bytes counts the bytes of every frame handed to the device; the last frame of
 * a window is cut to what is left. */
Test(links, budget_bytes_on_the_air, .timeout = 120)
{
        budget_run("links-budgetb", 150, 0);
}

/* ---- 3. alerts first ------------------------------------------------------------------ */

#define TELE 1000

/* The MQTT link: 1 000 telemetry messages and then one alert are spooled while the
 * center is unreachable; when it returns the alert is the first message it gets, and
 * the telemetry follows complete and in order. */
Test(links, alert_first_on_mqtt, .timeout = 120)
{
        char dir[200], conf[300], klog[300];
        struct h_broker local, center;
        struct h_sub sub;
        struct h_pub pub;
        struct h_proc k;

        h_tmpdir(dir, sizeof(dir), "links-alert");
        h_broker_start(&local, dir, 0, NULL);
        h_broker_start(&center, dir, 0, NULL);
        /* A persistent session: it collects what kuimen sends while the subscriber is
         * still reconnecting to the restarted broker, in order. */
        h_sub_start(&sub, center.port, "center-sub", "kuimen/north/sensors/#", true);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(sub.c, "kuimen/north/alert/#", 1, &ro), 0);
        h_sleep_ms(300);
        h_stop(&center.p, SIGTERM); /* the center is unreachable */
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        h_write_conf(conf, "north", dir, local.port, center.port, "[node]\nlink_status = no\n");
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "ingest: connected", 10000));
        h_pub_start(&pub, local.port, "terminals");
        for (int i = 0; i < TELE; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "T%04d", i);
                while (h_pub_send(&pub, "sensors/flow", pl) != 0)
                        h_sleep_ms(2);
        }
        h_pub_send(&pub, "alert/gas", "ALERT");
        cr_assert(h_pub_flush(&pub, 20000), "kuimen took every message");
        cr_assert_eq(h_log_count(&k, "link: center: down -> up"), 0, "the backlog was built while the link was down");
        h_broker_restart(&center);
        size_t got = h_sub_wait(&sub, TELE + 1, 60000);
        cr_assert_eq(got, TELE + 1, "everything arrived (%zu of %d)", got, TELE + 1);
        pthread_mutex_lock(&sub.mu);
        long at = -1;
        for (size_t i = 0; i < sub.n; i++)
                if (strcmp(sub.rx[i].payload, "ALERT") == 0)
                        at = (long)i;
        size_t tele_in_order = 0;
        for (size_t i = 0, t = 0; i < sub.n; i++) {
                char want[32];
                if (strcmp(sub.rx[i].payload, "ALERT") == 0)
                        continue;
                snprintf(want, sizeof(want), "T%04zu", t++);
                tele_in_order += strcmp(sub.rx[i].payload, want) == 0;
        }
        pthread_mutex_unlock(&sub.mu);
        cr_log_info("mqtt: the alert arrived at position %ld of %d", at, TELE + 1);
        cr_assert_eq(at, 0, "the alert leaves first (arrived at position %ld)", at);
        cr_assert_eq(tele_in_order, TELE, "the telemetry follows in order");
        h_pub_stop(&pub);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        h_sub_stop(&sub);
        h_stop(&local.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        h_cleanup(dir);
}

#define SIM_TELE 80
/* What may leave before an alert handed to a busy narrow link: the frame on the air
 * and the one frame framed ahead for the device (plugin.c, frame_unsent), each with
 * at most this many of these telemetry messages. */
#define PER_FRAME_MAX 8

/* A slow narrow link (77-byte frames at 2 400 bit/s) with a telemetry backlog: an
 * alert published while the backlog drains overtakes it, leaving at most the two
 * frames the device already held ahead of it. */
Test(links, alert_first_on_sim, .timeout = 120)
{
        struct pair p;
        pair_up(&p, "links-simalert", "mtu = 77\nbitrate = 2400\nrto = 2s", NULL);
        for (int i = 0; i < SIM_TELE; i++) {
                char pl[48];
                snprintf(pl, sizeof(pl), "{\"seq\": %d, \"ppm\": %d}", i, (i * 37) % 1000);
                h_pub_send(&p.pub, "sensors/gas", pl);
        }
        cr_assert(h_pub_flush(&p.pub, 10000));
        cr_assert_geq(h_sub_wait(&p.sub, 10, 30000), 10, "the backlog starts to drain");
        size_t before = h_sub_count(&p.sub);
        h_pub_send(&p.pub, "alert/gas", "ALERT");
        cr_assert(h_pub_flush(&p.pub, 10000));
        long at = -1;
        for (int64_t until = h_now_ms() + 30000; at < 0 && h_now_ms() < until; h_sleep_ms(20)) {
                pthread_mutex_lock(&p.sub.mu);
                for (size_t i = 0; i < p.sub.n; i++)
                        if (strcmp(p.sub.rx[i].payload, "ALERT") == 0)
                                at = (long)i;
                pthread_mutex_unlock(&p.sub.mu);
        }
        size_t now_n = h_sub_count(&p.sub);
        cr_log_info("sim: %zu telemetry had arrived when the alert was published; it arrived at position %ld; "
                    "%zu messages in by then, of %d telemetry",
                    before, at, now_n, SIM_TELE);
        cr_assert_geq(at, 0, "the alert arrived");
        cr_assert_lt((size_t)at, SIM_TELE, "the alert arrived before the backlog drained");
        cr_assert_leq((size_t)at - before, 2 * PER_FRAME_MAX,
                      "only what the device already held left before the alert (%zu)", (size_t)at - before);
        /* The backlog then drains completely. */
        size_t got = h_sub_wait(&p.sub, SIM_TELE + 1, 60000);
        cr_assert_eq(got, SIM_TELE + 1, "everything arrived (%zu of %d)", got, SIM_TELE + 1);
        pair_down(&p);
}

/* ---- 5. probes and ack modes --------------------------------------------------------- */

/* Bytes of a probe from "north": hdr, the origin (FNV-1a of the name) as a varint,
 * seq, back, CRC-16. */
static size_t probe_len(void)
{
        uint32_t h = 2166136261u;
        for (const char *c = "north"; *c; c++)
                h = (h ^ (uint8_t)*c) * 16777619u;
        size_t v = 1;
        while (h >>= 7)
                v++;
        return 1 + v + 2 + 1 + 2;
}

static uint64_t ctl_num(const char *sock, const char *link, const char *key)
{
        cJSON *j = h_ctl_json(sock, "links --json");
        const cJSON *l = link_of(j, link), *v = l ? cJSON_GetObjectItem(l, key) : NULL;
        cr_assert(cJSON_IsNumber(v), "kuimenctl links: %s.%s", link, key);
        uint64_t n = (uint64_t)v->valuedouble;
        cJSON_Delete(j);
        return n;
}

/* An idle link is probed: nothing but probes on the air while nothing is sent, each
 * acknowledged. A silent cut (nothing forwarded either way, no error anywhere) is seen
 * by the next probe within probe + ack_timeout; while cut, the link stays down and
 * only probes go, with back-off; once they are answered it carries again, and what
 * waited meanwhile arrives. What the link counts as sent on the air is exactly what
 * left it. */
Test(links, idle_link_probed_and_silent_cut_seen, .timeout = 120)
{
        struct pair p;
        char extra[400];
        snprintf(extra, sizeof(extra), "probe = 1s\nack_timeout = 2s\n[control]\nsocket = /tmp/km-probe-%d.sock",
                 (int)getpid());
        const char *sock = strrchr(extra, '=') + 2;
        pair_up(&p, "links-probe", "mtu = 77\nbitrate = 9600", extra);
        size_t plen = probe_len();

        h_sleep_ms(3500);
        size_t bytes, n = h_relay_count(&p.k.relay, &bytes, NULL);
        cr_assert_geq(n, 2, "an idle link is probed every second (%zu probes)", n);
        pthread_mutex_lock(&p.k.relay.mu);
        for (size_t i = 0; i < p.k.relay.n; i++)
                cr_assert_eq(p.k.relay.len[i], plen, "datagram %zu is a probe (%zu B)", i, p.k.relay.len[i]);
        pthread_mutex_unlock(&p.k.relay.mu);
        cr_assert_eq(h_log_count(&p.k.base, "-> down"), 0, "answered probes keep the link up");

        int64_t cut_at = h_now_ms();
        p.k.relay.cut = true;
        cr_assert(h_log_wait(&p.k.base, "link: sat: up -> down (probe not acknowledged for 2.", 8000),
                  "a silent cut is seen by the probe");
        int64_t seen = h_now_ms() - cut_at;
        cr_assert_leq(seen, 1000 + 2000 + 1500, "seen within probe + ack_timeout (+ the timer's step): %lld ms",
                      (long long)seen);
        size_t before = h_relay_count(&p.k.relay, NULL, NULL);
        cr_assert_eq(h_pub_send(&p.pub, "alert/gas", "{\"ch4\": 2.5}"), 0);
        cr_assert(h_log_wait(&p.k.base, "link: sat: down -> down (probing after: probe not acknowledged", 8000),
                  "the host probes again after the back-off");
        h_sleep_ms(2500);
        pthread_mutex_lock(&p.k.relay.mu);
        for (size_t i = before; i < p.k.relay.n; i++)
                cr_assert_eq(p.k.relay.len[i], plen, "while cut only probes go (datagram %zu: %zu B)", i, p.k.relay.len[i]);
        pthread_mutex_unlock(&p.k.relay.mu);
        cr_assert_eq(h_sub_count(&p.sub), 0);

        p.k.relay.cut = false;
        cr_assert(h_log_wait(&p.k.base, "-> up (probe answered after: probe not acknowledged for", 20000),
                  "an answered probe brings it back");
        cr_assert_eq(h_sub_wait(&p.sub, 1, 10000), 1, "the alert that waited arrives");
        h_sleep_ms(300);
        n = h_relay_count(&p.k.relay, &bytes, NULL);
        cr_assert_eq(ctl_num(sock, "sat", "bytes_sent"), bytes, "bytes on the air: the link says %llu, %zu datagrams of "
                     "%zu B left it", (unsigned long long)ctl_num(sock, "sat", "bytes_sent"), n, bytes);
        pair_down(&p);
        unlink(sock);
}

/* ack = receipt: the device's receipt releases a message, so a cut beyond the device
 * loses it (at most once, as documented); the far end sends no ack frames at all. */
static void unacked_mode(const char *mode)
{
        struct pair p;
        char link[160], extra[200];
        snprintf(link, sizeof(link), "mtu = 77\nbitrate = 9600\nack = %s", mode);
        snprintf(extra, sizeof(extra), "[control]\nsocket = /tmp/km-ack-%s-%d.sock", mode, (int)getpid());
        const char *sock = strrchr(extra, '=') + 2;
        pair_up(&p, mode, link, extra);
        p.k.relay.cut = true;
        for (int i = 0; i < 5; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "lost-%d", i);
                cr_assert_eq(h_pub_send(&p.pub, "alert/gas", pl), 0);
        }
        int64_t until = h_now_ms() + 10000;
        while (ctl_num(sock, "sat", "acked") < 5 && h_now_ms() < until)
                h_sleep_ms(100);
        cr_assert_eq(ctl_num(sock, "sat", "acked"), 5, "ack = %s: released without the peer", mode);
        cr_assert_eq(ctl_num(sock, "sat", "inflight"), 0);
        /* With none they may still be on the (sim's 9 600 bit/s) air: let them land
         * in the cut before it heals. */
        h_sleep_ms(1000);
        p.k.relay.cut = false;
        for (int i = 0; i < 3; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "kept-%d", i);
                cr_assert_eq(h_pub_send(&p.pub, "alert/gas", pl), 0);
        }
        cr_assert_eq(h_sub_wait(&p.sub, 3, 10000), 3);
        h_sleep_ms(1000);
        size_t back;
        h_relay_count(&p.k.relay, NULL, &back);
        pthread_mutex_lock(&p.sub.mu);
        cr_assert_eq(p.sub.n, 3, "what the cut took is not sent again (%zu arrived)", p.sub.n);
        for (size_t i = 0; i < p.sub.n; i++) {
                char want[32];
                snprintf(want, sizeof(want), "kept-%zu", i);
                cr_assert_str_eq(p.sub.rx[i].payload, want);
        }
        pthread_mutex_unlock(&p.sub.mu);
        cr_assert_eq(back, 0, "ack = %s: the center sends no ack frames (%zu)", mode, back);
        cr_assert_eq(h_log_count(&p.k.base, "-> down"), 0);
        pair_down(&p);
        unlink(sock);
}

Test(links, ack_receipt_releases_on_the_device_receipt, .timeout = 60) { unacked_mode("receipt"); }
Test(links, ack_none_releases_on_hand_over, .timeout = 60) { unacked_mode("none"); }

/* The keys are checked before anything starts: an MQTT link is always acknowledged by
 * its broker, and a probe needs a peer that answers. */
Test(links, ack_and_probe_keys_checked)
{
        char dir[200], path[300], out[4096], want[4096];
        h_tmpdir(dir, sizeof(dir), "links-ackconf");
        snprintf(path, sizeof(path), "%s/bad.conf", dir);
        FILE *f = fopen(path, "w");
        fprintf(f,
                "[node]\nname = north\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:1883\n"
                "[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:1884\nack = none\n"
                "[link sat]\ntype = sim\nlisten = 127.0.0.1:1\npeer = 127.0.0.1:2\nack = receipt\nprobe = 10s\n"
                "[link radio]\ntype = sim\nlisten = 127.0.0.1:3\npeer = 127.0.0.1:4\nack = maybe\nrto = soon\n",
                env_dir("KM_SIM_PLUGIN_DIR"));
        fclose(f);
        const char *args[] = { "--check-config", path, NULL };
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "%s", out);
        snprintf(want, sizeof(want),
                 "%s:9: ack: 'none' is for narrow links: an mqtt link is acknowledged by its broker (ack = peer)\n"
                 "%s:15: probe: needs ack = peer: with ack = receipt nothing answers a probe\n"
                 "%s:20: ack: 'maybe' is not one of: peer receipt none\n"
                 "%s:21: rto: 'soon' is not a duration above 0\n",
                 path, path, path, path);
        cr_assert_str_eq(out, want);
        h_cleanup(dir);
}

/* A probe out when traffic starts: frames sent after it share the window, and the
 * peer's acks release the probe while they are still in flight. That answers the
 * probe; before the fix its clock ran on and took the healthy link down. */
Test(links, probe_answered_while_traffic_in_flight, .timeout = 120)
{
        struct pair p;
        pair_up(&p, "links-probe-traffic", "mtu = 77\nbitrate = 9600\nlatency = 700ms", "probe = 1s\nack_timeout = 2s");
        int sent = 0;
        for (int cycle = 0; cycle < 2; cycle++) {
                h_sleep_ms(3500 + 230 * cycle); /* idle: probes go and are answered */
                for (int64_t until = h_now_ms() + 4000; h_now_ms() < until; h_sleep_ms(400)) {
                        char pl[32];
                        snprintf(pl, sizeof(pl), "{\"v\":%d}", sent++);
                        cr_assert_eq(h_pub_send(&p.pub, "sensors/a", pl), 0);
                }
        }
        cr_assert_eq(h_sub_wait(&p.sub, (size_t)sent, 15000), (size_t)sent);
        size_t probes = 0, plen = probe_len();
        pthread_mutex_lock(&p.k.relay.mu);
        for (size_t i = 0; i < p.k.relay.n; i++)
                probes += p.k.relay.len[i] == plen;
        pthread_mutex_unlock(&p.k.relay.mu);
        cr_assert_geq(probes, 2, "probes went while idle (%zu)", probes);
        cr_assert_eq(h_log_count(&p.k.base, "probe not acknowledged"), 0, "a probe answered by the window's acks timed out");
        cr_assert_eq(h_log_count(&p.k.base, "-> down"), 0);
        pair_down(&p);
}

/* A link retried after a cut whose probe finds the budget spent: the probe goes when
 * the budget's window rolls over (before the fix it never went, and the link stayed
 * down for good), and what waited arrives. */
Test(links, probe_waits_for_the_budget, .timeout = 120)
{
        struct pair p;
        pair_up(&p, "links-probe-budget", "mtu = 77\nbitrate = 9600",
                "probe = 1s\nack_timeout = 2s\nbudget_messages = 2\nbudget_interval = 4s");
        h_sleep_ms(1500);
        p.k.relay.cut = true;
        /* Two probes spent the first window: the next goes when it rolls over. */
        cr_assert(h_log_wait(&p.k.base, "probe not acknowledged", 20000));
        h_sleep_ms(6000);
        p.k.relay.cut = false;
        cr_assert_eq(h_pub_send(&p.pub, "alert/gas", "{\"x\":1}"), 0);
        cr_assert(h_log_wait(&p.k.base, "-> up (probe answered after: ", 30000), "the retried link came back");
        cr_assert_eq(h_sub_wait(&p.sub, 1, 15000), 1, "the alert that waited arrives");
        pair_down(&p);
}

/* Commands come down while the base has a backlog going up: the base's acks for the
 * center's frames ride in its data frames (each keeps their bytes free) instead of
 * taking frames of their own, which on a budgeted card each cost a send. */
Test(links, acks_ride_in_data_frames, .timeout = 120)
{
        struct pair p;
        struct h_sub cmds;
        struct h_pub op;
        pair_up(&p, "links-piggy", "mtu = 77\nbitrate = 2400", NULL);
        h_sub_start(&cmds, p.k.local.port, "unit", "cmd/#", false);
        h_pub_start(&op, p.k.center.port, "operator");
        for (int i = 0; i < 80; i++) {
                char pl[64];
                snprintf(pl, sizeof(pl), "{\"seq\":%d,\"ch4\":%d.%02d,\"o2\":20.%d}", i, i % 5, (i * 37) % 100, i % 10);
                cr_assert_eq(h_pub_send(&p.pub, "sensors/gas", pl), 0);
        }
        cr_assert(h_pub_flush(&p.pub, 5000));
        while (h_relay_count(&p.k.relay, NULL, NULL) < 3)
                h_sleep_ms(20);
        for (int i = 0; i < 5; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "{\"go\":%d}", i);
                cr_assert_eq(h_pub_send(&op, "kuimen/north/cmd/pump", pl), 0);
        }
        cr_assert(h_pub_flush(&op, 5000));
        cr_assert_eq(h_sub_wait(&cmds, 5, 20000), 5, "the commands reach the base's broker");
        size_t got = h_sub_wait(&p.sub, 80, 60000);
        cr_assert_eq(got, 80);
        size_t acks = 0, data = 0, back;
        h_relay_count(&p.k.relay, NULL, &back);
        pthread_mutex_lock(&p.k.relay.mu);
        cr_assert_lt(p.k.relay.n, H_RELAY_MAXDG);
        for (size_t i = 0; i < p.k.relay.n; i++) {
                acks += ((p.k.relay.hdr[i] >> 3) & 3) == 1;
                data += ((p.k.relay.hdr[i] >> 3) & 3) == 0;
        }
        pthread_mutex_unlock(&p.k.relay.mu);
        cr_log_info("piggyback: %zu data frames, %zu ack frames from the base; %zu datagrams from the center", data,
                    acks, back);
        cr_assert_geq(back, 1, "the center sent its command frames");
        cr_assert_eq(acks, 0, "the base sent %zu ack frames of their own while its data frames went", acks);
        h_pub_stop(&op);
        h_sub_stop(&cmds);
        pair_down(&p);
}

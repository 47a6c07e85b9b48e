/* SPDX-License-Identifier: MIT */
/* Incidents (issue 14 item 2): a real receiver's track replayed as two units that answer a call, turn out, arrive and withdraw, with jitter at the area's edge. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bridges/position.h"
#include "harness.h"
#include "nmea_epochs.h"

#define R 100.0 /* the incident's radius, m */
#define H 15.0  /* [incidents] hysteresis, m */
#define EP_MAX 256
#define M_PER_DEG (6371008.8 * M_PI / 180) /* as gateway/incidents.c measures */

/* The capture's fixes (a Quectel L76K, 5 Hz, 30 s): real times and the receiver's own
 * small wander. */
struct fix {
        double lat, lon;
        int64_t t;
};
static struct fix real[EP_MAX];
static int nreal;

static void on_epoch(void *ud, const char *payload, size_t len)
{
        struct km_pos p;
        (void)ud;
        if (nreal < EP_MAX && km_position_parse("x", payload, len, 0, &p) == 0 && p.time_ms)
                real[nreal++] = (struct fix){ p.lat, p.lon, p.time_ms };
}

/* Metres north of the incident's centre where unit u is at epoch k: at its base, on
 * the way, at the edge (with a handheld's jitter of +-10 m on top of the real track:
 * the capture's own wander is 0.2 m), inside, leaving, and out near radius +
 * hysteresis (jitter again). u = 1 runs 10 epochs (2 s) behind u = 0. */
static double north(int u, int k, unsigned *seed)
{
        k -= 10 * u;
        double jitter = ((double)(rand_r(seed) % 2001) / 100.0) - 10.0;
        if (k < 10)
                return 600;
        if (k < 35)
                return 600 - (600 - R) * (k - 10) / 25.0;
        if (k < 75)
                return R + jitter; /* at the edge: in and out of the radius */
        if (k < 95)
                return 20;
        if (k < 105)
                return 20 + (R + H - 20) * (k - 95) / 10.0;
        return R + H + 2 + jitter; /* out, but not always beyond radius + hysteresis */
}

struct env {
        char dir[200], conf[300], klog[300], sock[300], cconf[300], clog[300], csock[300];
        struct h_broker local, center;
        struct h_proc k, ctr_k; /* the base's kuimen; the center's (role = center) */
        struct h_rec term, ctr;
};

/* h_rec_send without waiting for the PUBACK (in order all the same: one client, QoS 1);
 * returns the token to wait for. */
static MQTTAsync_token send_nowait(struct h_rec *r, const char *topic, const char *payload)
{
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        m.payload = (void *)payload;
        m.payloadlen = (int)strlen(payload);
        m.qos = 1;
        int64_t until = h_now_ms() + 5000;
        int rc;
        while ((rc = MQTTAsync_sendMessage(r->c, topic, &m, &ro)) != MQTTASYNC_SUCCESS && h_now_ms() < until)
                h_sleep_ms(1); /* the window is full */
        cr_assert_eq(rc, MQTTASYNC_SUCCESS, "publish %s: %d", topic, rc);
        return ro.token;
}

static int ctl_at(const char *sock, char *out, size_t n, const char *args)
{
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "%s --socket %s %s", getenv("KM_KUIMENCTL"), sock, args);
        FILE *f = popen(cmd, "r");
        cr_assert(f);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = 0;
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int ctl(struct env *e, char *out, size_t n, const char *args)
{
        return ctl_at(e->sock, out, n, args);
}

/* What the rule says for unit u's fixes d[0..n) (metres from the centre) at times t:
 * the first fix of the first inside run that lasts dwell, and after it the first fix of
 * the first run beyond radius + hysteresis that lasts dwell; a fix between the two
 * radii neither starts nor breaks a run. */
static void expected(const double *d, const int64_t *t, int n, int64_t dwell, int64_t *arr, int64_t *wd)
{
        int64_t run = 0;
        *arr = *wd = 0;
        for (int i = 0; i < n; i++) {
                if (!*arr) {
                        if (d[i] > R + H)
                                run = 0;
                        else if (d[i] <= R && !run)
                                run = t[i];
                        if (run && t[i] - run >= dwell)
                                *arr = run, run = 0;
                } else if (!*wd) {
                        if (d[i] <= R)
                                run = 0;
                        else if (d[i] > R + H && !run)
                                run = t[i];
                        if (run && t[i] - run >= dwell)
                                *wd = run, run = 0;
                }
        }
}

Test(incidents, replayed_track_one_arrival_one_withdrawal, .timeout = 60)
{
        struct env e;
        char out[8192], extra[600];
        memset(&e, 0, sizeof(e));
        cr_assert_eq(km_test_nmea_epochs("quectel-l76k-nmea.log", on_epoch, NULL), 0);
        cr_assert_geq(nreal, 140, "the capture's epochs (%d)", nreal);
        h_tmpdir(e.dir, sizeof(e.dir), "incidents");
        snprintf(e.conf, sizeof(e.conf), "%s/kuimen.conf", e.dir);
        snprintf(e.klog, sizeof(e.klog), "%s/kuimen.log", e.dir);
        snprintf(e.sock, sizeof(e.sock), "%s/kuimen.sock", e.dir);
        h_broker_start(&e.local, e.dir, 0, NULL);
        h_broker_start(&e.center, e.dir, h_free_port(), NULL);
        snprintf(extra, sizeof(extra),
                 "[control]\nsocket = %s\n[incidents]\ndwell = 3s\nhysteresis = %.0f\nbase_radius = 100\n"
                 "[calls level orange]\nrepeat_every = 0\n",
                 e.sock, H);
        h_write_conf(e.conf, "north", e.dir, e.local.port, e.center.port, extra);
        h_rec_start(&e.term, e.local.port, "terminals", "call/+");
        h_rec_start(&e.ctr, e.center.port, "center-app", "kuimen/north/incident/#");
        /* The center's kuimen on the center broker: it keeps what the bases publish. */
        snprintf(e.cconf, sizeof(e.cconf), "%s/center.conf", e.dir);
        snprintf(e.clog, sizeof(e.clog), "%s/center.log", e.dir);
        snprintf(e.csock, sizeof(e.csock), "%s/center.sock", e.dir);
        char ctext[1200];
        snprintf(ctext, sizeof(ctext),
                 "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nstats_interval = 0\n"
                 "[local]\nuri = tcp://127.0.0.1:%d\n[control]\nsocket = %s\n",
                 e.dir, e.center.port, e.csock);
        h_write_text(e.cconf, ctext);
        const char *cargs[] = { "--config", e.cconf, NULL };
        h_kuimen_start(&e.ctr_k, e.clog, cargs);
        cr_assert(h_log_wait(&e.ctr_k, "control: listening on", 10000), "the center kuimen (%s)", e.clog);
        const char *args[] = { "--config", e.conf, NULL };
        h_kuimen_start(&e.k, e.klog, args);
        cr_assert(h_log_wait(&e.k, "control: listening on", 10000));

        /* The call that dispatches them, and the incident at the capture's place. */
        double clat = real[0].lat, clon = real[0].lon;
        cr_assert_eq(ctl(&e, out, sizeof(out), "call d1 orange 'Rockfall at K7: go' u1,u2"), 0, "%s", out);
        char cmd[300];
        /* "--": a western longitude is negative, not an option */
        snprintf(cmd, sizeof(cmd), "incident open --call d1 -- i1 %.7f %.7f %.0f u1,u2", clat, clon, R);
        cr_assert_eq(ctl(&e, out, sizeof(out), cmd), 0, "%s", out);
        cr_assert_eq(h_rec_send(&e.term, "call/u1/answer", "{\"id\":\"d1\",\"status\":\"received\"}"), 0);
        cr_assert_eq(h_rec_send(&e.term, "call/u2/answer", "{\"id\":\"d1\",\"status\":\"acting\"}"), 0);

        /* The replay: each unit's fix = the capture's fix moved north by north(). */
        static double d[2][EP_MAX];
        static int64_t t[2][EP_MAX];
        unsigned seed = 7;
        int crossings[2] = { 0, 0 };
        MQTTAsync_token last = 0;
        for (int k = 0; k < nreal; k++)
                for (int u = 0; u < 2; u++) {
                        double n = north(u, k, &seed);
                        double lat = real[k].lat + n / M_PER_DEG, lon = real[k].lon;
                        char topic[32], p[160];
                        /* what kuimen measures: the distance of the fix it gets */
                        double dy = (lat - clat) * M_PER_DEG,
                               dx = (lon - clon) * M_PER_DEG * cos((lat + clat) / 2 * M_PI / 180);
                        d[u][k] = sqrt(dx * dx + dy * dy);
                        t[u][k] = real[k].t;
                        if (k && (d[u][k] <= R) != (d[u][k - 1] <= R))
                                crossings[u]++;
                        snprintf(topic, sizeof(topic), "pos/u%d", u + 1);
                        snprintf(p, sizeof(p), "{\"lat\":%.7f,\"lon\":%.7f,\"ts\":%.3f}", lat, lon, real[k].t / 1000.0);
                        last = send_nowait(&e.term, topic, p);
                }
        cr_assert_eq(MQTTAsync_waitForCompletion(e.term.c, last, 10000), 0);
        for (int u = 0; u < 2; u++)
                cr_assert_geq(crossings[u], 10, "u%d's fixes cross the radius %d times: the edge's jitter is there", u + 1,
                              crossings[u]);
        int64_t arr[2], wd[2];
        for (int u = 0; u < 2; u++) {
                expected(d[u], t[u], nreal, 3000, &arr[u], &wd[u]);
                cr_assert_neq(arr[u], 0);
                cr_assert_neq(wd[u], 0);
        }
        h_sleep_ms(500);
        cr_assert_eq(ctl(&e, out, sizeof(out), "incident show i1 --json"), 0, "%s", out);
        cJSON *j = cJSON_Parse(out), *u;
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "incident");
        cr_assert_not_null(x, "%s", out);
        int i = 0;
        cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(x, "units")) {
                const cJSON *a = cJSON_GetObjectItemCaseSensitive(u, "arrived"), *w = cJSON_GetObjectItemCaseSensitive(u, "withdrew");
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(u, "reacted"), *o = cJSON_GetObjectItemCaseSensitive(u, "turned_out");
                cr_assert(cJSON_IsNumber(a) && cJSON_IsNumber(w), "u%d arrived and withdrew: %s", i + 1, out);
                cr_expect_eq((int64_t)a->valuedouble, arr[i] / 1000, "u%d arrived at the first fix of its dwell", i + 1);
                cr_expect_eq((int64_t)w->valuedouble, wd[i] / 1000, "u%d withdrew at the first fix of staying out", i + 1);
                cr_expect(cJSON_IsNumber(r), "u%d reacted (answered the call)", i + 1);
                cr_expect(cJSON_IsNumber(o), "u%d turned out", i + 1);
                i++;
        }
        cr_assert_eq(i, 2);
        cJSON_Delete(j);
        /* Upstream (class status): each version the center got names at most one arrival
         * and one withdrawal per unit, and none of them ever changes once set. */
        int64_t until = h_now_ms() + 5000;
        while (h_rec_count(&e.ctr) < 3 && h_now_ms() < until)
                h_sleep_ms(50);
        h_sleep_ms(500);
        int64_t seen_a[2] = { 0, 0 }, seen_w[2] = { 0, 0 };
        pthread_mutex_lock(&e.ctr.mu);
        for (size_t q = 0; q < e.ctr.n; q++) {
                cr_assert_str_eq(e.ctr.m[q].topic, "kuimen/north/incident/i1");
                cJSON *v = cJSON_Parse(e.ctr.m[q].payload), *uu;
                int k = 0;
                cJSON_ArrayForEach(uu, cJSON_GetObjectItemCaseSensitive(v, "units")) {
                        const cJSON *a = cJSON_GetObjectItemCaseSensitive(uu, "arrived");
                        const cJSON *w = cJSON_GetObjectItemCaseSensitive(uu, "withdrew");
                        if (cJSON_IsNumber(a)) {
                                cr_expect(!seen_a[k] || seen_a[k] == (int64_t)a->valuedouble, "one arrival of u%d", k + 1);
                                seen_a[k] = (int64_t)a->valuedouble;
                        }
                        if (cJSON_IsNumber(w)) {
                                cr_expect(!seen_w[k] || seen_w[k] == (int64_t)w->valuedouble, "one withdrawal of u%d", k + 1);
                                seen_w[k] = (int64_t)w->valuedouble;
                        }
                        k++;
                }
                cJSON_Delete(v);
        }
        size_t versions = e.ctr.n;
        fprintf(stderr, "# the center's last version: %s\n", e.ctr.m[e.ctr.n - 1].payload);
        pthread_mutex_unlock(&e.ctr.mu);
        for (int k = 0; k < 2; k++) {
                cr_expect_eq(seen_a[k], arr[k] / 1000, "the center has u%d's arrival", k + 1);
                cr_expect_eq(seen_w[k], wd[k] / 1000, "the center has u%d's withdrawal", k + 1);
        }
        cr_log_info("incident: %zu versions at the center; arrivals after %d and %d crossings of the radius", versions,
                    crossings[0], crossings[1]);
        /* kill -9: the timelines stay as they were. */
        char before[8192];
        cr_assert_eq(ctl(&e, before, sizeof(before), "incident show i1 --json"), 0, "%s", before);
        int st = h_stop(&e.k, SIGKILL);
        cr_assert(WIFSIGNALED(st));
        h_kuimen_start(&e.k, e.klog, args);
        until = h_now_ms() + 10000;
        while (h_log_count(&e.k, "control: listening on") < 2 && h_now_ms() < until) /* the log goes on */
                h_sleep_ms(20);
        cr_assert_eq(h_log_count(&e.k, "control: listening on"), 2, "restarted");
        cr_assert_eq(ctl(&e, out, sizeof(out), "incident show i1 --json"), 0, "%s", out);
        cr_assert_str_eq(out, before, "the timeline after kill -9");
        /* An incident from the center, as cmd/incident. */
        cr_assert(h_log_wait(&e.center.p, "kuimen/north/cmd/#", 10000), "the downlink subscribed");
        char cj[300];
        snprintf(cj, sizeof(cj), "{\"id\":\"i2\",\"lat\":%.6f,\"lon\":%.6f,\"radius\":50,\"units\":[\"u3\"]}", clat, clon);
        cr_assert_eq(h_rec_send(&e.ctr, "kuimen/north/cmd/incident", cj), 0);
        until = h_now_ms() + 10000;
        do {
                h_sleep_ms(50);
                ctl(&e, out, sizeof(out), "incident show i2 --json");
        } while (!strstr(out, "\"id\":\"i2\"") && h_now_ms() < until);
        cr_assert(strstr(out, "\"units\":[{\"unit\":\"u3\",\"reacted\":null"), "%s", out);
        /* The center's kuimen kept north's timeline as it heard it. */
        char want_a[64], want_w[64];
        snprintf(want_a, sizeof(want_a), "\"arrived\":%lld", (long long)(arr[0] / 1000));
        snprintf(want_w, sizeof(want_w), "\"withdrew\":%lld", (long long)(wd[1] / 1000));
        until = h_now_ms() + 5000;
        do {
                ctl_at(e.csock, out, sizeof(out), "incident show north/i1 --json");
                if (strstr(out, want_a) && strstr(out, want_w))
                        break;
                h_sleep_ms(100);
        } while (h_now_ms() < until);
        cr_assert(strstr(out, "\"incident\":{\"id\":\"north/i1\""), "%s", out);
        cr_assert(strstr(out, want_a) && strstr(out, want_w), "the center has north's arrivals and withdrawals: %s", out);
        cr_assert_eq(ctl_at(e.csock, out, sizeof(out), "incident show north/i1 --csv"), 0, "%s", out);
        cr_assert(strstr(out, "\nnorth/i1,u2,"), "%s", out);
        /* The registry as CSV, one line a unit. */
        cr_assert_eq(ctl(&e, out, sizeof(out), "incident show i1 --csv"), 0, "%s", out);
        cr_assert(strncmp(out, "incident,unit,reacted,turned_out,arrived,withdrew\ni1,u1,", 56) == 0, "%s", out);
        cr_assert(strstr(out, "\ni1,u2,"), "%s", out);
        st = h_stop(&e.k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        st = h_stop(&e.ctr_k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the center kuimen exits 0 (%d)", st);
        h_rec_stop(&e.term);
        h_rec_stop(&e.ctr);
        h_rec_free(&e.term);
        h_rec_free(&e.ctr);
        h_stop(&e.local.p, SIGTERM);
        h_stop(&e.center.p, SIGTERM);
        h_cleanup(e.dir);
}

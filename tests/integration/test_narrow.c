/* SPDX-License-Identifier: MIT */
/* Narrow links end to end: base kuimen -> sim plugin (lossy, slow, small MTU) -> center kuimen -> center broker. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

struct pair {
        char dir[200], bconf[300], cconf[300], blog[300], clog[300];
        struct h_broker local, center;
        struct h_proc base, ctr;
        struct h_sub sub;
        struct h_pub pub;
};

static const char *plugin_dir(void)
{
        const char *d = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert_not_null(d, "KM_SIM_PLUGIN_DIR (meson sets it)");
        return d;
}

/* link_extra: keys added to both ends' [link sat]. */
static void pair_up(struct pair *p, const char *tag, const char *link_extra, const char *base_extra)
{
        memset(p, 0, sizeof(*p));
        h_tmpdir(p->dir, sizeof(p->dir), tag);
        h_broker_start(&p->local, p->dir, 0, NULL);
        h_broker_start(&p->center, p->dir, 0, NULL);
        h_sub_start(&p->sub, p->center.port, "center-sub", "kuimen/north/alert/#", true);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p->sub.c, "kuimen/north/pos/#", 1, &ro), 0);
        MQTTAsync_responseOptions ro2 = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p->sub.c, "kuimen/north/sensors/#", 1, &ro2), 0);
        h_sleep_ms(200);
        int a = h_free_port(), b = h_free_port();
        snprintf(p->bconf, sizeof(p->bconf), "%s/base.conf", p->dir);
        snprintf(p->cconf, sizeof(p->cconf), "%s/center.conf", p->dir);
        snprintf(p->blog, sizeof(p->blog), "%s/base.log", p->dir);
        snprintf(p->clog, sizeof(p->clog), "%s/center.log", p->dir);
        FILE *f = fopen(p->bconf, "w");
        fprintf(f,
                "[node]\nname = north\nspool = %s/base/spool.db\nplugin_dir = %s\nstats_interval = 0\nlink_status = no\n%s\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\n%s\n",
                p->dir, plugin_dir(), base_extra ? base_extra : "", p->local.port, a, b, link_extra);
        fclose(f);
        f = fopen(p->cconf, "w");
        fprintf(f,
                "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = north, south\n%s\n",
                p->dir, plugin_dir(), p->center.port, b, a, link_extra);
        fclose(f);
        const char *cargs[] = { "--config", p->cconf, "--log-level", "debug", NULL };
        const char *bargs[] = { "--config", p->bconf, "--log-level", "debug", NULL };
        h_kuimen_start(&p->ctr, p->clog, cargs);
        h_kuimen_start(&p->base, p->blog, bargs);
        cr_assert(h_log_wait(&p->base, "sim", 10000));
        cr_assert(h_log_wait(&p->base, "ingest: connected", 10000));
        h_pub_start(&p->pub, p->local.port, "terminals");
}

static void pair_down(struct pair *p)
{
        h_pub_stop(&p->pub);
        int sb = h_stop(&p->base, SIGTERM), sc = h_stop(&p->ctr, SIGTERM);
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "base exits 0 (%d)", sb);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "center exits 0 (%d)", sc);
        h_sub_stop(&p->sub);
        h_stop(&p->local.p, SIGTERM);
        h_stop(&p->center.p, SIGTERM);
        h_cleanup(p->dir);
}

/* A BeiDou-sized link: 77-byte frames, 1 200 bit/s, 5% of frames lost. Every alert and
 * the latest position of every unit arrive with their origin and id; telemetry is not
 * for this link and waits. */
Test(narrow, lossy_slow_satellite, .timeout = 180)
{
        struct pair p;
        pair_up(&p, "narrow", "mtu = 77\nbitrate = 1200\nloss = 0.05\nseed = 11\nrto = 2s",
                "[link sat]\nclasses = alert, command, position, status\n[positions]\ntrack_interval = 0");
        for (int i = 0; i < 10; i++) {
                char t[32], pl[32];
                snprintf(t, sizeof(t), "sensors/t%d", i);
                snprintf(pl, sizeof(pl), "T%d", i);
                h_pub_send(&p.pub, t, pl);
        }
        for (int u = 0; u < 4; u++)
                for (int s = 0; s < 5; s++) {
                        char t[32], pl[96];
                        snprintf(t, sizeof(t), "pos/u%d", u);
                        snprintf(pl, sizeof(pl), "{\"lat\": 30.%04d, \"lon\": 109.5}", u * 10 + s);
                        h_pub_send(&p.pub, t, pl);
                }
        for (int i = 0; i < 15; i++) {
                char pl[32];
                snprintf(pl, sizeof(pl), "A%d", i);
                h_pub_send(&p.pub, "alert/gas", pl);
        }
        cr_assert(h_pub_flush(&p.pub, 10000));
        /* Positions sent before later ones replaced them arrive too: wait for what the
         * test is about, every alert and each unit's latest fix. */
        int64_t until = h_now_ms() + 90000;
        size_t n = 0;
        for (;;) {
                size_t got = 0;
                pthread_mutex_lock(&p.sub.mu);
                n = p.sub.n;
                for (size_t i = 0; i < n; i++)
                        got += strncmp(p.sub.rx[i].topic, "kuimen/north/alert/gas", 22) == 0 ||
                               strstr(p.sub.rx[i].payload, "\"lat\":30.0004") || strstr(p.sub.rx[i].payload, "\"lat\":30.0014") ||
                               strstr(p.sub.rx[i].payload, "\"lat\":30.0024") || strstr(p.sub.rx[i].payload, "\"lat\":30.0034");
                pthread_mutex_unlock(&p.sub.mu);
                if (got >= 15 + 4 || h_now_ms() > until)
                        break;
                h_sleep_ms(100);
        }
        h_sleep_ms(2000);
        n = p.sub.n;
        size_t alerts = 0, pos = 0, tele = 0;
        for (size_t i = 0; i < n; i++) {
                cr_assert_str_eq(p.sub.rx[i].origin, "north");
                cr_assert_neq(p.sub.rx[i].id, 0);
                if (strncmp(p.sub.rx[i].topic, "kuimen/north/alert/gas", 22) == 0)
                        alerts++;
                else if (strncmp(p.sub.rx[i].topic, "kuimen/north/pos/u", 18) == 0)
                        pos++;
                else
                        tele++;
        }
        cr_log_info("narrow link: %zu alerts, %zu positions, %zu telemetry", alerts, pos, tele);
        cr_assert_eq(alerts, 15, "every alert arrives (%zu)", alerts);
        cr_assert_geq(pos, 4, "the latest position of every unit (%zu)", pos);
        cr_assert_eq(tele, 0, "telemetry waits for the fast link");
        /* the latest of each unit is among them */
        for (int u = 0; u < 4; u++) {
                char want_lat[48];
                snprintf(want_lat, sizeof(want_lat), "\"lat\":30.%04d", u * 10 + 4);
                bool found = false;
                for (size_t i = 0; i < n && !found; i++)
                        found = strstr(p.sub.rx[i].payload, want_lat) != NULL;
                cr_assert(found, "unit %d's latest position %s", u, want_lat);
        }
        pair_down(&p);
}

/* A large message crosses a 77-byte link in fragments and arrives whole. */
Test(narrow, fragments_reassembled, .timeout = 120)
{
        struct pair p;
        char big[1500];
        pair_up(&p, "frag", "mtu = 77\nloss = 0.1\nseed = 5\nrto = 1s", NULL);
        for (size_t i = 0; i < sizeof(big) - 1; i++)
                big[i] = (char)('a' + (i * 7) % 26);
        big[sizeof(big) - 1] = 0;
        memcpy(big, "A-big:", 6);
        h_pub_send(&p.pub, "alert/report", big);
        cr_assert(h_pub_flush(&p.pub, 5000));
        cr_assert_eq(h_sub_wait(&p.sub, 1, 60000), 1);
        cr_assert_eq(strncmp(p.sub.rx[0].payload, big, 63), 0, "the first bytes match");
        pair_down(&p);
}

/* ---- positions over a narrow link: the compact codec, and what the center publishes ---- */

/* The whole payload and properties of the last message on one topic (the harness's
 * subscriber keeps 63 bytes of a payload: a position is about 180). */
struct last_msg {
        pthread_mutex_t mu;
        const char *topic;
        char payload[512];
        char origin[32], relay[32];
        uint64_t id;
        int count;
};

static int last_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct last_msg *l = ctx;
        (void)tlen;
        pthread_mutex_lock(&l->mu);
        if (strcmp(topic, l->topic) == 0) {
                snprintf(l->payload, sizeof(l->payload), "%.*s", m->payloadlen, (char *)m->payload);
                for (int i = 0; i < m->properties.count; i++) {
                        MQTTProperty *p = &m->properties.array[i];
                        if (p->identifier != MQTTPROPERTY_CODE_USER_PROPERTY)
                                continue;
                        char k[64], v[64];
                        snprintf(k, sizeof(k), "%.*s", p->value.data.len, p->value.data.data);
                        snprintf(v, sizeof(v), "%.*s", p->value.value.len, p->value.value.data);
                        if (strcmp(k, "kuimen-id") == 0)
                                l->id = strtoull(v, NULL, 10);
                        else if (strcmp(k, "kuimen-origin") == 0)
                                snprintf(l->origin, sizeof(l->origin), "%.31s", v);
                        else if (strcmp(k, "kuimen-relay") == 0)
                                snprintf(l->relay, sizeof(l->relay), "%.31s", v);
                }
                l->count++;
        }
        pthread_mutex_unlock(&l->mu);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

/* A terminal publishes one fix at the base; returns what the center broker got on
 * kuimen/north/pos/uav-07 in *l. link_extra as in pair_up. */
static void position_over_narrow(struct last_msg *l, const char *tag, const char *link_extra)
{
        struct pair p;
        MQTTAsync c;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        char uri[64];

        memset(l, 0, sizeof(*l));
        pthread_mutex_init(&l->mu, NULL);
        l->topic = "kuimen/north/pos/uav-07";
        pair_up(&p, tag, link_extra, "[positions]\ntrack_interval = 0");
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", p.center.port);
        cr_assert_eq(MQTTAsync_createWithOptions(&c, uri, "pos-sub", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
        MQTTAsync_setCallbacks(c, l, NULL, last_arrived, NULL);
        cr_assert_eq(MQTTAsync_connect(c, &co), 0);
        for (int i = 0; i < 500 && !MQTTAsync_isConnected(c); i++)
                h_sleep_ms(10);
        cr_assert(MQTTAsync_isConnected(c));
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(c, l->topic, 1, &ro), 0);
        h_sleep_ms(200);
        h_pub_send(&p.pub, "pos/uav-07",
                   "{\"lat\": 30.8123546, \"lon\": 108.4014343, \"alt\": 353.1, \"ts\": \"2025-11-23T06:40:02.151Z\","
                   " \"speed\": 12.37, \"heading\": 86.9, \"fix\": 3, \"battery\": 81, \"kind\": \"drone\"}");
        cr_assert(h_pub_flush(&p.pub, 5000));
        for (int i = 0; i < 600; i++) {
                pthread_mutex_lock(&l->mu);
                int n = l->count;
                pthread_mutex_unlock(&l->mu);
                if (n)
                        break;
                h_sleep_ms(50);
        }
        h_sleep_ms(300); /* nothing else may follow */
        MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer5;
        dopt.timeout = 500;
        MQTTAsync_disconnect(c, &dopt);
        h_sleep_ms(50);
        MQTTAsync_destroy(&c);
        pair_down(&p);
}

/* A BeiDou-sized link (77-byte frames, where a unit's first position, about 170 bytes
 * of JSON with no slot to deflate against, would be split over three frames): the base
 * sends the compact codec, the center publishes the canonical JSON of the quantised
 * record, with the base's origin and message id. */
Test(narrow, position_compact_codec, .timeout = 120)
{
        struct last_msg l;
        position_over_narrow(&l, "poscompact", "mtu = 77\nloss = 0.05\nseed = 3\nrto = 1s");
        cr_assert_eq(l.count, 1);
        cr_assert_str_eq(l.payload,
                         "{\"unit\":\"uav-07\",\"lat\":30.8123500,\"lon\":108.4014300,\"alt\":353.0,"
                         "\"time\":\"2025-11-23T06:40:02.200Z\",\"speed\":12.40,\"heading\":87.0,\"mode\":3,"
                         "\"kind\":\"drone\",\"battery\":81.0}");
        cr_assert_str_eq(l.origin, "north");
        cr_assert_str_eq(l.relay, "county");
        cr_assert_neq(l.id, 0);
}

/* positions = json: the center publishes the base's canonical JSON exactly. */
Test(narrow, position_json_exact, .timeout = 120)
{
        struct last_msg l;
        position_over_narrow(&l, "posjson", "mtu = 77\nrto = 1s\npositions = json");
        cr_assert_eq(l.count, 1);
        cr_assert_str_eq(l.payload,
                         "{\"unit\":\"uav-07\",\"lat\":30.8123546,\"lon\":108.4014343,\"alt\":353.1,"
                         "\"time\":\"2025-11-23T06:40:02.151Z\",\"speed\":12.37,\"heading\":86.9,\"mode\":3,"
                         "\"kind\":\"drone\",\"battery\":81.0}");
        cr_assert_str_eq(l.origin, "north");
        cr_assert_neq(l.id, 0);
}

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
        struct h_pair k;
        struct h_sub sub; /* at the center: alerts, positions, sensors */
        struct h_pub pub; /* at the base */
};

static const char *plugin_dir(void)
{
        const char *d = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert_not_null(d, "KM_SIM_PLUGIN_DIR (meson sets it)");
        return d;
}

/* link_extra: keys added to both ends' [link sat]. base_dict, center_dict: the text of
 * each end's dictionary file (NULL: none), named relative to its config; with a base
 * dictionary the base publishes its link status. */
static void pair_up_dict(struct pair *p, const char *tag, const char *link_extra, const char *base_extra,
                         const char *base_dict, const char *center_dict)
{
        char bextra[600], path[300];
        snprintf(bextra, sizeof(bextra), "%s\n%s", base_extra ? base_extra : "",
                 base_dict ? "[link sat]\ndictionary = base.dict\n" : "");
        struct h_pair_conf conf = { .link_keys = link_extra,
                                    .base_node = base_dict ? "link_status = yes" : "link_status = no",
                                    .base_extra = bextra,
                                    .center_extra = center_dict ? "[link sat]\ndictionary = center.dict" : NULL,
                                    .peers = "north",
                                    .debug = true };
        memset(p, 0, sizeof(*p));
        h_pair_init(&p->k, tag);
        h_sub_start(&p->sub, p->k.center.port, "center-sub", "kuimen/north/alert/#", true);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p->sub.c, "kuimen/north/pos/#", 1, &ro), 0);
        MQTTAsync_responseOptions ro2 = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p->sub.c, "kuimen/north/sensors/#", 1, &ro2), 0);
        h_sleep_ms(200);
        if (base_dict) {
                snprintf(path, sizeof(path), "%s/base.dict", p->k.dir);
                h_write_text(path, base_dict);
        }
        if (center_dict) {
                snprintf(path, sizeof(path), "%s/center.dict", p->k.dir);
                h_write_text(path, center_dict);
        }
        h_pair_start(&p->k, &conf);
        h_pub_start(&p->pub, p->k.local.port, "terminals");
}

static void pair_up(struct pair *p, const char *tag, const char *link_extra, const char *base_extra)
{
        pair_up_dict(p, tag, link_extra, base_extra, NULL, NULL);
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

/* A terminal publishes one fix at the base; what the center broker got on
 * kuimen/north/pos/uav-07, whole (h_sub keeps 63 bytes of a payload: a position is
 * about 180), is in r, stopped; the caller frees it. link_extra as in pair_up. */
static void position_over_narrow(struct h_rec *r, const char *tag, const char *link_extra)
{
        struct pair p;

        pair_up(&p, tag, link_extra, "[positions]\ntrack_interval = 0");
        h_rec_start(r, p.k.center.port, "pos-sub", "kuimen/north/pos/uav-07");
        h_pub_send(&p.pub, "pos/uav-07",
                   "{\"lat\": 30.8123546, \"lon\": 108.4014343, \"alt\": 353.1, \"ts\": \"2025-11-23T06:40:02.151Z\","
                   " \"speed\": 12.37, \"heading\": 86.9, \"fix\": 3, \"battery\": 81, \"kind\": \"drone\"}");
        cr_assert(h_pub_flush(&p.pub, 5000));
        h_rec_wait(r, 1, 30000);
        h_sleep_ms(300); /* nothing else may follow */
        h_rec_stop(r);
        pair_down(&p);
}

/* A BeiDou-sized link (77-byte frames, where a unit's first position, about 170 bytes
 * of JSON with no slot to deflate against, would be split over three frames): the base
 * sends the compact codec, the center publishes the canonical JSON of the quantised
 * record, with the base's origin and message id. */
Test(narrow, position_compact_codec, .timeout = 120)
{
        struct h_rec l;
        position_over_narrow(&l, "poscompact", "mtu = 77\nloss = 0.05\nseed = 3\nrto = 1s");
        cr_assert_eq(l.n, 1);
        cr_assert_str_eq(l.m[0].payload,
                         "{\"unit\":\"uav-07\",\"lat\":30.8123500,\"lon\":108.4014300,\"alt\":353.0,"
                         "\"time\":\"2025-11-23T06:40:02.200Z\",\"speed\":12.40,\"heading\":87.0,\"mode\":3,"
                         "\"kind\":\"drone\",\"battery\":81.0}");
        cr_assert_str_eq(l.m[0].origin, "north");
        cr_assert_str_eq(l.m[0].relay, "county");
        cr_assert_neq(l.m[0].id, 0);
        h_rec_free(&l);
}

/* positions = json: the center publishes the base's canonical JSON exactly. */
Test(narrow, position_json_exact, .timeout = 120)
{
        struct h_rec l;
        position_over_narrow(&l, "posjson", "mtu = 77\nrto = 1s\npositions = json");
        cr_assert_eq(l.n, 1);
        cr_assert_str_eq(l.m[0].payload,
                         "{\"unit\":\"uav-07\",\"lat\":30.8123546,\"lon\":108.4014343,\"alt\":353.1,"
                         "\"time\":\"2025-11-23T06:40:02.151Z\",\"speed\":12.37,\"heading\":86.9,\"mode\":3,"
                         "\"kind\":\"drone\",\"battery\":81.0}");
        cr_assert_str_eq(l.m[0].origin, "north");
        cr_assert_neq(l.m[0].id, 0);
        h_rec_free(&l);
}

/* ---- the topic dictionary ------------------------------------------------------- */

#define DICT3 "# north base <-> county, append only\nalert/gas/zone3\n\nsensors/water/level\nalert/gas/zone9\n"
#define DICT2 "# north base <-> county, append only\nalert/gas/zone3\n\nsensors/water/level\n"

/* The index of the message received on topic, or -1. */
static int find_rx(struct h_sub *s, const char *topic)
{
        int at = -1;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->n && at < 0; i++)
                if (strcmp(s->rx[i].topic, topic) == 0)
                        at = (int)i;
        pthread_mutex_unlock(&s->mu);
        return at;
}

/* The fingerprint a kuimen logged for its dictionary ("... N topics, fingerprint X"). */
static void logged_dict(const struct h_proc *k, int topics, char *fp)
{
        char want[64], line[512];
        snprintf(want, sizeof(want), ": %d topics, fingerprint ", topics);
        cr_assert(h_log_wait(k, want, 5000), "%s: no '%s'", k->log, want);
        FILE *f = fopen(k->log, "r");
        fp[0] = '\0';
        while (f && fgets(line, sizeof(line), f))
                if (strstr(line, want) && strstr(line, "sat: dictionary "))
                        sscanf(strstr(line, want) + strlen(want), "%8s", fp);
        if (f)
                fclose(f);
        cr_assert_eq(strlen(fp), 8, "fingerprint in %s", k->log);
}

/* Runs cmd (a shell command line) and returns its output. */
static void run_out(const char *cmd, char *out, size_t n)
{
        FILE *f = popen(cmd, "r");
        cr_assert_not_null(f, "%s", cmd);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = '\0';
        pclose(f);
}

/* The retained link status a kuimen published on a broker. */
static void link_status(int port, const char *topic, char *out, size_t n)
{
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "mosquitto_sub -h 127.0.0.1 -p %d -t '%s' -C 1 -W 10 2>&1", port, topic);
        run_out(cmd, out, n);
}

/* Both ends read one list: topics go by index and arrive as themselves; a topic not in
 * it goes literally. */
Test(narrow, shared_dictionary, .timeout = 120)
{
        struct pair p;
        char fb[16], fc[16];
        pair_up_dict(&p, "dict", "mtu = 77\nrto = 1s", NULL, DICT3, DICT3);
        logged_dict(&p.k.base, 3, fb);
        logged_dict(&p.k.ctr, 3, fc);
        cr_assert_str_eq(fb, fc, "one list, one fingerprint");
        h_pub_send(&p.pub, "alert/gas/zone9", "Z9");
        h_pub_send(&p.pub, "sensors/water/level", "{\"m\":3.2}");
        h_pub_send(&p.pub, "alert/gas/other", "OT");
        cr_assert(h_pub_flush(&p.pub, 5000));
        cr_assert_eq(h_sub_wait(&p.sub, 3, 30000), 3);
        int i = find_rx(&p.sub, "kuimen/north/alert/gas/zone9");
        cr_assert_geq(i, 0, "alert/gas/zone9 arrives on its own topic");
        cr_assert_str_eq(p.sub.rx[i].payload, "Z9");
        cr_assert_str_eq(p.sub.rx[i].origin, "north");
        i = find_rx(&p.sub, "kuimen/north/sensors/water/level");
        cr_assert_geq(i, 0);
        cr_assert_str_eq(p.sub.rx[i].payload, "{\"m\":3.2}");
        i = find_rx(&p.sub, "kuimen/north/alert/gas/other");
        cr_assert_geq(i, 0, "a topic not in the dictionary goes literally");
        cr_assert_str_eq(p.sub.rx[i].payload, "OT");
        cr_assert_eq(h_log_count(&p.k.ctr, "names dictionary index"), 0);
        /* the link status messages show the list: the base's on its broker, the center's on its own */
        char st[1024], want[64];
        snprintf(want, sizeof(want), "\"dictionary\":\"%s/3\"}", fb);
        link_status(p.k.local.port, "kuimen/north/link/sat", st, sizeof(st));
        cr_assert(strstr(st, want), "base link status: %s", st);
        link_status(p.k.center.port, "kuimen/county/link/sat", st, sizeof(st));
        cr_assert(strstr(st, want), "center link status: %s", st);
        pair_down(&p);
}

/* The base's list was appended to and the center's not yet: the message on the new
 * topic is not lost but arrives on <prefix>/<origin>/unknown-topic/<index>, and the
 * center says why. */
Test(narrow, center_dictionary_shorter, .timeout = 120)
{
        struct pair p;
        char fb[16], fc[16];
        pair_up_dict(&p, "dictshort", "mtu = 77\nrto = 1s", NULL, DICT3, DICT2);
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        cr_assert_eq(MQTTAsync_subscribe(p.sub.c, "kuimen/north/unknown-topic/#", 1, &ro), 0);
        h_sleep_ms(300);
        logged_dict(&p.k.base, 3, fb);
        logged_dict(&p.k.ctr, 2, fc);
        cr_assert_str_neq(fb, fc, "the two lists show different fingerprints");
        h_pub_send(&p.pub, "alert/gas/zone3", "Z3");
        h_pub_send(&p.pub, "alert/gas/zone9", "Z9");
        cr_assert(h_pub_flush(&p.pub, 5000));
        cr_assert_eq(h_sub_wait(&p.sub, 2, 30000), 2);
        int i = find_rx(&p.sub, "kuimen/north/alert/gas/zone3");
        cr_assert_geq(i, 0, "index 0 is known at both ends");
        cr_assert_str_eq(p.sub.rx[i].payload, "Z3");
        i = find_rx(&p.sub, "kuimen/north/unknown-topic/2");
        cr_assert_geq(i, 0, "index 2 arrives on the fallback topic");
        cr_assert_str_eq(p.sub.rx[i].payload, "Z9");
        cr_assert_str_eq(p.sub.rx[i].origin, "north");
        cr_assert_neq(p.sub.rx[i].id, 0);
        char want[400];
        snprintf(want, sizeof(want), "from north names dictionary index 2, beyond the 2 topics of %s/center.dict (fingerprint %s)",
                 p.k.dir, fc);
        cr_assert(h_log_wait(&p.k.ctr, want, 5000), "the center says why: %s", want);
        cr_assert_eq(h_log_count(&p.k.ctr, "names dictionary index"), 1);
        /* kuimenctl shows each end's list */
        char out[4096], cmd[700];
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s/center/kuimen.sock' links 2>&1", getenv("KM_KUIMENCTL"), p.k.dir);
        run_out(cmd, out, sizeof(out));
        snprintf(want, sizeof(want), "\nsat: dictionary %s/2\n", fc);
        cr_assert(strstr(out, want), "kuimenctl links: %s", out);
        pair_down(&p);
}

/* A bad dictionary stops the config check (and so the start) with its file and line. */
Test(narrow, bad_dictionary_refused_by_check_config, .timeout = 30)
{
        char dir[200], conf[300], dict[300], cmd[1200], out[2048], want[1024];
        h_tmpdir(dir, sizeof(dir), "dictbad");
        snprintf(conf, sizeof(conf), "%s/base.conf", dir);
        snprintf(dict, sizeof(dict), "%s/topics.txt", dir);
        h_write_text(dict, "alert/gas/zone3\n# sensors\nsensors/+/level\n");
        char text[800];
        snprintf(text, sizeof(text),
                 "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:1\n"
                 "[link sat]\ntype = sim\nlisten = 127.0.0.1:1\npeer = 127.0.0.1:2\ndictionary = topics.txt\n",
                 dir, plugin_dir());
        h_write_text(conf, text);
        snprintf(cmd, sizeof(cmd), "'%s' --check-config '%s' 2>&1", getenv("KM_KUIMEN"), conf);
        FILE *f = popen(cmd, "r");
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        int st = pclose(f);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit 1 (%d): %s", st, out);
        snprintf(want, sizeof(want),
                 "%s:11: dictionary: %s:3: wildcard '+' in topic 'sensors/+/level': a dictionary lists topics, not filters\n",
                 conf, dict);
        cr_assert_str_eq(out, want);
        h_write_text(dict, "alert/gas/zone3\n# sensors\nsensors/water/level\n");
        f = popen(cmd, "r");
        n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        st = pclose(f);
        snprintf(want, sizeof(want), "%s: ok\n", conf);
        cr_assert_str_eq(out, want);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        h_cleanup(dir);
}

/* ---- calls (issue 14) over a BeiDou-sized link ---------------------------------------- */

static int rec_count_json(struct h_rec *r, const char *topic, const char *needle)
{
        int k = 0;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n; i++)
                k += strcmp(r->m[i].topic, topic) == 0 && (!needle || strstr(r->m[i].payload, needle));
        pthread_mutex_unlock(&r->mu);
        return k;
}

/* The base's only way out is a 77-byte link at 2 400 bit/s losing 5% of its frames: a
 * call from the center comes down it; then the air is cut for the whole call while the
 * terminals answer (3 of 5), repeats and the escalation run; once it is back every
 * change goes up it, in order, none missing (each recipient's change fits one frame:
 * docs/calls.md). */
Test(narrow, calls_over_77_byte_link, .timeout = 120)
{
        struct h_pair k;
        struct h_rec term, ctr;
        char cmd[600], out[4096];
        struct h_pair_conf conf = { .link_keys = "mtu = 77\nbitrate = 2400\nloss = 0.05\nseed = 5\nrto = 1s\nack_timeout = 2s",
                                    .relay = true,
                                    .base_extra = "[calls]\ntick = 50ms\n[calls level red]\nrespond_within = 2s\n"
                                                  "repeat_every = 1s\nescalate_to = chief\n",
                                    .debug = true };
        h_pair_init(&k, "narrow-calls");
        h_rec_start(&term, k.local.port, "terminals", "call/+");
        h_rec_start(&ctr, k.center.port, "center-app", "kuimen/north/call/#");
        h_pair_start(&k, &conf);
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        const char *call = "{\"id\":\"n1\",\"level\":\"red\",\"text\":\"Flash flood\",\"recipients\":[\"u1\",\"u2\",\"u3\",\"u4\",\"u5\"]}";
        m.payload = (void *)call;
        m.payloadlen = (int)strlen(call);
        m.qos = 1;
        cr_assert_eq(MQTTAsync_sendMessage(ctr.c, "kuimen/north/cmd/call", &m, &ro), 0);
        int64_t until = h_now_ms() + 30000;
        while (rec_count_json(&term, "call/u5", "\"id\":\"n1\"") < 1 && h_now_ms() < until)
                h_sleep_ms(20);
        cr_assert_geq(rec_count_json(&term, "call/u5", "\"id\":\"n1\""), 1, "the center's call came down the narrow link");
        h_sleep_ms(300); /* the open change and the deliveries leave */
        k.relay.cut = true;
        h_sleep_ms(200); /* what crossed before the cut reaches the center's broker */
        size_t at_cut = rec_count_json(&ctr, "kuimen/north/call/n1", NULL);
        const char *ans[][2] = { { "u1", "acting" }, { "u2", "done" }, { "u3", "cannot" } };
        for (int i = 0; i < 3; i++) {
                char topic[32], p[96];
                MQTTAsync_message a = MQTTAsync_message_initializer;
                MQTTAsync_responseOptions aro = MQTTAsync_responseOptions_initializer;
                snprintf(topic, sizeof(topic), "call/%s/answer", ans[i][0]);
                snprintf(p, sizeof(p), "{\"id\":\"n1\",\"status\":\"%s\"}", ans[i][1]);
                a.payload = p;
                a.payloadlen = (int)strlen(p);
                a.qos = 1;
                cr_assert_eq(MQTTAsync_sendMessage(term.c, topic, &a, &aro), 0);
                cr_assert_eq(MQTTAsync_waitForCompletion(term.c, aro.token, 5000), 0);
        }
        h_sleep_ms(2600); /* repeats, overdue, escalation */
        const char *ctl = getenv("KM_KUIMENCTL");
        snprintf(cmd, sizeof(cmd), "%s --socket %s/base/kuimen.sock call close n1 && %s --socket %s/base/kuimen.sock call show --json",
                 ctl, k.dir, ctl, k.dir);
        FILE *f = popen(cmd, "r");
        size_t len = fread(out, 1, sizeof(out) - 1, f);
        out[len] = 0;
        cr_assert_eq(pclose(f), 0, "%s", out);
        cr_assert_eq(rec_count_json(&ctr, "kuimen/north/call/n1", NULL), (int)at_cut, "nothing crosses the cut air");
        k.relay.cut = false;
        const char *ch = strstr(out, "\"changes\":");
        cr_assert_not_null(ch, "%s", out);
        int want = atoi(ch + 10);
        cr_assert_geq(want, 1 + 5 + 3 + 2 + 1 + 1 + 1, "open, 5 deliveries, 3 answers, 2 overdue, escalation, chief, close");
        until = h_now_ms() + 60000;
        while (rec_count_json(&ctr, "kuimen/north/call/n1", NULL) < want && h_now_ms() < until)
                h_sleep_ms(50);
        h_sleep_ms(500);
        /* Every change once (the link acknowledges end to end: a frame sent again is
         * not a message published twice), in order. */
        pthread_mutex_lock(&ctr.mu);
        size_t n = ctr.n;
        int last_t = 0;
        uint64_t last_id = 0;
        for (size_t i = 0; i < n; i++) {
                const struct h_msg *x = &ctr.m[i];
                cr_assert_str_eq(x->topic, "kuimen/north/call/n1");
                cr_assert_str_eq(x->origin, "north");
                cr_assert_gt(x->id, last_id, "in order: kuimen-id %llu after %llu", (unsigned long long)x->id,
                             (unsigned long long)last_id);
                last_id = x->id;
                const char *t = strstr(x->payload, "\"t\":");
                if (t) {
                        cr_assert_geq(atoi(t + 4), last_t, "in order: %s", x->payload);
                        last_t = atoi(t + 4);
                }
        }
        cr_assert(strstr(ctr.m[0].payload, "\"state\":\"open\""), "%s", ctr.m[0].payload);
        cr_assert(strstr(ctr.m[n - 1].payload, "\"state\":\"closed\""), "%s", ctr.m[n - 1].payload);
        pthread_mutex_unlock(&ctr.mu);
        cr_assert_eq((int)n, want, "every change crossed the narrow link: %zu of %d", n, want);
        cr_assert_eq(rec_count_json(&ctr, "kuimen/north/call/n1", "{\"unit\":\"u1\",\"state\":\"acting\""), 1);
        cr_assert_eq(rec_count_json(&ctr, "kuimen/north/call/n1", "{\"unit\":\"u2\",\"state\":\"done\""), 1);
        cr_assert_eq(rec_count_json(&ctr, "kuimen/north/call/n1", "{\"unit\":\"u3\",\"state\":\"cannot\""), 1);
        cr_assert_eq(rec_count_json(&ctr, "kuimen/north/call/n1", "\"state\":\"escalated\""), 1);
        cr_log_info("calls over a 77-byte link: %zu changes", n);
        /* An incident's timeline crosses too, and the center's kuimen keeps it. */
        snprintf(cmd, sizeof(cmd), "%s --socket %s/base/kuimen.sock incident open --call n1 -- i5 30.5 109.4 100 u1,u2",
                 ctl, k.dir);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        until = h_now_ms() + 30000;
        do {
                h_sleep_ms(200);
                snprintf(cmd, sizeof(cmd), "%s --socket %s/center/kuimen.sock incident show north/i5 --json", ctl, k.dir);
                f = popen(cmd, "r");
                len = fread(out, 1, sizeof(out) - 1, f);
                out[len] = 0;
                pclose(f);
        } while (!strstr(out, "\"id\":\"north/i5\"") && h_now_ms() < until);
        cr_assert(strstr(out, "\"incident\":{\"id\":\"north/i5\",\"state\":\"open\""), "%s", out);
        cr_assert(strstr(out, "{\"unit\":\"u2\",\"reacted\":null"), "%s", out);
        h_rec_stop(&term);
        h_rec_stop(&ctr);
        h_rec_free(&term);
        h_rec_free(&ctr);
        h_pair_stop(&k);
        cr_expect(WIFEXITED(k.base_exit) && WEXITSTATUS(k.base_exit) == 0, "base exits 0 (%d)", k.base_exit);
        h_cleanup(k.dir);
}

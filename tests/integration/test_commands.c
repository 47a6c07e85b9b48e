/* SPDX-License-Identifier: MIT */
/* Commands down to a base: center broker -> center kuimen -> sim narrow link -> base kuimen -> base broker, and the MQTT path beside it. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

#define PMAX 256

struct cmdenv {
        struct h_pair k;
        struct h_rec rec; /* every delivery on the base's local broker, duplicates included */
        MQTTAsync op; /* the operator at the center */
        char bstop[2048], cstop[2048]; /* the "stopped:" counters lines */
        int64_t ctr_stop_ms; /* how long the center took to stop */
        bool center_first;   /* stop the center before the base */
};

static MQTTAsync client(int port, const char *id)
{
        char uri[64];
        MQTTAsync c;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        cr_assert_eq(MQTTAsync_createWithOptions(&c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
        co.cleanstart = 1;
        co.keepAliveInterval = 5;
        co.automaticReconnect = 1;
        cr_assert_eq(MQTTAsync_connect(c, &co), 0);
        int64_t until = h_now_ms() + 10000;
        while (!MQTTAsync_isConnected(c) && h_now_ms() < until)
                h_sleep_ms(10);
        cr_assert(MQTTAsync_isConnected(c), "%s connects", id);
        return c;
}

/* Command i: exact bytes that a JSON compactor or a C string would change (blanks, a
 * NUL, bytes above 0x7f), and repeats of the same command when repeat is set (the
 * operator sending one command twice must see it twice). */
static int command(int i, bool repeat, char *topic, size_t tn, unsigned char *p)
{
        int k = repeat ? i / 2 : i;
        snprintf(topic, tn, "kuimen/north/cmd/%s", k % 3 == 0 ? "door" : k % 3 == 1 ? "pump/2" : "siren");
        switch (k % 3) {
        case 0:
                return snprintf((char *)p, PMAX, "{\"open\":  true,\n \"seq\": %d }", k);
        case 1:
                p[0] = 0x00, p[1] = 0xff, p[2] = (unsigned char)k, p[3] = 0x7f, p[4] = ' ';
                return 5;
        default:
                return snprintf((char *)p, PMAX, "sound %d", k);
        }
}

/* Publishes at QoS 1 without waiting; returns the token to wait for. */
static MQTTAsync_token publish(MQTTAsync op, const char *topic, const unsigned char *p, int len)
{
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        m.payload = (void *)p;
        m.payloadlen = len;
        m.qos = 1;
        cr_assert_eq(MQTTAsync_sendMessage(op, topic, &m, &ro), 0);
        return ro.token;
}

#define TO_CENTER 0 /* fiber: the center broker itself */
#define DEAD (-1)   /* fiber: nobody listens */
#define PROXIED 1   /* fiber: through px to the center broker */

/* fiber: where the base's [link fiber] goes (px is started for PROXIED); link_extra
 * goes to both ends' [link sat]; base_status: the base's link_status. */
static void cmd_up_ex(struct cmdenv *e, const char *tag, int fiber, struct h_proxy *px, const char *link_extra,
                      bool base_status, const char *center_extra, const char *base_extra)
{
        char fiber_conf[200], bextra[600];
        memset(e, 0, sizeof(*e));
        h_pair_init(&e->k, tag);
        h_rec_start(&e->rec, e->k.local.port, "base-terminal", "cmd/#");
        if (fiber == PROXIED)
                h_proxy_start(px, e->k.center.port);
        snprintf(fiber_conf, sizeof(fiber_conf), "[link fiber]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 1\n",
                 fiber == TO_CENTER ? e->k.center.port : fiber == DEAD ? h_free_port() : px->port);
        snprintf(bextra, sizeof(bextra), "order = 3\n%s", base_extra ? base_extra : "");
        struct h_pair_conf conf = { .link_keys = link_extra,
                                    .base_node = base_status ? "link_status = yes" : "link_status = no",
                                    .base_local = fiber_conf,
                                    .base_extra = bextra,
                                    .center_extra = center_extra,
                                    .debug = true };
        h_pair_start(&e->k, &conf);
        e->op = client(e->k.center.port, "operator");
}

static void cmd_up(struct cmdenv *e, const char *tag, int fiber, struct h_proxy *px, const char *link_extra,
                   bool base_status, const char *center_extra)
{
        cmd_up_ex(e, tag, fiber, px, link_extra, base_status, center_extra, NULL);
}

/* kuimenctl status of the center (its socket beside its spool), into out. */
static void center_status(struct cmdenv *e, char *out, size_t n)
{
        char cmd[600];
        const char *ctl = getenv("KM_KUIMENCTL");
        cr_assert_not_null(ctl, "KM_KUIMENCTL (meson sets it)");
        snprintf(cmd, sizeof(cmd), "%s --socket %s/center/kuimen.sock status", ctl, e->k.dir);
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = 0;
        cr_assert_eq(pclose(f), 0, "%s", cmd);
}

/* The counter name from a "stopped:" line, or -1. */
static long counter(const char *line, const char *name)
{
        char key[64];
        snprintf(key, sizeof(key), " %s=", name);
        const char *p = strstr(line, key);
        return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void stopped_line(const char *log, char *out, size_t n)
{
        char line[2048];
        FILE *f = fopen(log, "r");
        cr_assert_geq(n, sizeof(line));
        out[0] = 0;
        if (!f)
                return;
        while (fgets(line, sizeof(line), f))
                if (strstr(line, "stopped: "))
                        memcpy(out, line, sizeof(line));
        fclose(f);
}

static void cmd_down(struct cmdenv *e)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        o.timeout = 500;
        MQTTAsync_disconnect(e->op, &o);
        int sb = e->center_first ? 0 : h_stop(&e->k.base, SIGTERM);
        int64_t t0 = h_now_ms();
        int sc = h_stop(&e->k.ctr, SIGTERM);
        e->ctr_stop_ms = h_now_ms() - t0;
        if (e->center_first)
                sb = h_stop(&e->k.base, SIGTERM);
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "base exits 0 (%d)", sb);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "center exits 0 (%d)", sc);
        stopped_line(e->k.blog, e->bstop, sizeof(e->bstop));
        stopped_line(e->k.clog, e->cstop, sizeof(e->cstop));
        cr_log_info("base: %s", e->bstop);
        cr_log_info("center: %s (stopped in %lld ms)", e->cstop, (long long)e->ctr_stop_ms);
        h_rec_stop(&e->rec);
        MQTTAsync_destroy(&e->op);
        h_pair_stop(&e->k);
}

static void cmd_cleanup(struct cmdenv *e)
{
        h_rec_free(&e->rec);
        if (!getenv("KM_KEEP_TMP")) /* a failure's logs, for a look by hand */
                h_cleanup(e->k.dir);
}

/* Every command exactly once, in the order sent, byte for byte, as cmd/... */
static void expect_exactly(struct cmdenv *e, int n, bool repeat)
{
        cr_assert_eq(e->rec.n, (size_t)n, "the base's broker got %zu commands, %d were sent", e->rec.n, n);
        for (int i = 0; i < n; i++) {
                char topic[96];
                unsigned char p[PMAX];
                int len = command(i, repeat, topic, sizeof(topic), p);
                const struct h_msg *g = &e->rec.m[i];
                cr_assert_str_eq(g->topic, topic + strlen("kuimen/north/"), "command %d's topic", i);
                cr_assert_eq(g->len, len, "command %d: %d bytes, %d sent", i, g->len, len);
                cr_assert_eq(memcmp(g->payload, p, (size_t)len), 0, "command %d's bytes", i);
        }
}

/* The operator's n commands, as fast as the center broker takes them. */
static void send_some(struct cmdenv *e, int from, int to, bool repeat)
{
        MQTTAsync_token tok[to - from];
        for (int i = from; i < to; i++) {
                char topic[96];
                unsigned char p[PMAX];
                int len = command(i, repeat, topic, sizeof(topic), p);
                tok[i - from] = publish(e->op, topic, p, len);
        }
        for (int i = from; i < to; i++)
                cr_assert_eq(MQTTAsync_waitForCompletion(e->op, tok[i - from], 5000), 0, "the center broker takes command %d", i);
}

static void send_all(struct cmdenv *e, int n, bool repeat)
{
        send_some(e, 0, n, repeat);
}

/* Frames the sim link "sat" of log's kuimen dropped on purpose (its closing line), or -1. */
static long sim_lost(const char *log)
{
        char line[2048];
        long lost = -1;
        FILE *f = fopen(log, "r");
        while (f && fgets(line, sizeof(line), f)) {
                const char *p = strstr(line, "link: sat: sim: closed; frames");
                if (p && (p = strstr(p, " lost ")))
                        lost = strtol(p + 6, NULL, 10);
        }
        if (f)
                fclose(f);
        return lost;
}

/* The base's IP link is dead: every command goes down the sim link, once each. lossy:
 * the sim link must have lost frames both ways (else the run proved nothing about
 * retransmission). */
static void narrow_only(const char *tag, const char *link_extra, int n, int timeout_ms, bool lossy)
{
        struct cmdenv e;
        char others[512], mesh[200];
        /* The center's other narrow links, preferred by order: one to another base, and
         * one that sends no commands although it reaches north too (whose kuimen would
         * acknowledge and refuse a command that went that way). Neither may take
         * north's commands. */
        int m1 = h_free_port(), m2 = h_free_port();
        snprintf(others, sizeof(others),
                 "[link radio]\ntype = sim\norder = 1\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = south\n"
                 "[link mesh]\ntype = sim\norder = 0\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = west\ncommands = no\n",
                 h_free_port(), h_free_port(), m2, m1);
        snprintf(mesh, sizeof(mesh), "[link mesh]\ntype = sim\norder = 4\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\n", m1, m2);
        cmd_up_ex(&e, tag, DEAD, NULL, link_extra, true, others, mesh);
        int64_t t0 = h_now_ms();
        send_all(&e, n, false);
        size_t got = h_rec_wait(&e.rec, (size_t)n, timeout_ms);
        int64_t took = h_now_ms() - t0;
        h_sleep_ms(1500); /* nothing more may come */
        cr_log_info("%s: %zu of %d commands down the narrow link in %lld ms", tag, got, n, (long long)took);
        cmd_down(&e);
        long lc = sim_lost(e.k.clog), lb = sim_lost(e.k.blog);
        cr_log_info("%s: the sim link lost %ld command frames and %ld ack frames", tag, lc, lb);
        if (lossy) {
                cr_assert_gt(lc, 0, "frames with commands were lost");
                cr_assert_gt(lb, 0, "acks were lost");
        } else {
                cr_assert_eq(lc, 0);
        }
        expect_exactly(&e, n, false);
        cr_assert_eq(counter(e.cstop, "cmd_sent_narrow"), n, "the center sent each command narrow once");
        cr_assert_eq(counter(e.cstop, "cmd_settled_mqtt"), 0);
        cr_assert_eq(counter(e.bstop, "cmd_in_narrow"), n, "the base took each once");
        cr_assert_eq(counter(e.bstop, "cmd_in_mqtt"), 0);
        cr_assert_eq(counter(e.bstop, "cmd_duplicates"), 0);
        cmd_cleanup(&e);
}

TestSuite(commands, .timeout = 120);

Test(commands, narrow_when_ip_down)
{
        narrow_only("cmd-narrow", "mtu = 77", 30, 20000, false);
}

/* A BeiDou-sized link losing 5% of frames both ways (commands and their acks). */
Test(commands, narrow_lossy_satellite)
{
        narrow_only("cmd-lossy", "mtu = 77\nbitrate = 9600\nloss = 0.05\nseed = 7\nrto = 1s", 60, 60000, true);
}

/* The base is online over MQTT: its session brings the commands; the center holds
 * them for command_grace and then leaves them to MQTT, sending nothing narrow. */
Test(commands, online_base_mqtt_only)
{
        struct cmdenv e;
        const int n = 12;
        cmd_up(&e, "cmd-online", TO_CENTER, NULL, "mtu = 77", true, "command_grace = 2s");
        cr_assert(h_log_wait(&e.k.ctr, "north is online over MQTT", 15000), "the center sees the base's status");
        cr_assert(h_log_wait(&e.k.base, "down: connected", 10000));
        h_sleep_ms(500); /* the downlink's SUBACK */
        send_all(&e, n, true);
        cr_assert_eq(h_rec_wait(&e.rec, (size_t)n, 15000), (size_t)n);
        int64_t until = h_now_ms() + 15000;
        while (h_log_count(&e.k.ctr, "left to north's MQTT session") < n && h_now_ms() < until)
                h_sleep_ms(100);
        h_sleep_ms(1000);
        char st[8192];
        center_status(&e, st, sizeof(st));
        cr_assert(strstr(st, "north:online"), "kuimenctl status shows the base online:\n%s", st);
        cr_assert(strstr(st, "settled_mqtt=12"), "and the commands left to MQTT:\n%s", st);
        /* Commands held when the center stops stay in its spool; the stop does not wait
         * for them as it waits for frames in flight (up to 3 s). The base stays: once
         * its will said offline they would go narrow. */
        send_some(&e, n, n + 4, true);
        cr_assert_eq(h_rec_wait(&e.rec, (size_t)n + 4, 15000), (size_t)n + 4);
        e.center_first = true;
        cmd_down(&e);
        cr_assert_lt(e.ctr_stop_ms, 1500, "the center stopped in %lld ms", (long long)e.ctr_stop_ms);
        cr_assert_eq(counter(e.cstop, "spooled"), 4, "the held ones wait in the center's spool");
        expect_exactly(&e, n + 4, true);
        cr_assert_eq(counter(e.cstop, "cmd_sent_narrow"), 0, "nothing went narrow");
        cr_assert_eq(counter(e.cstop, "cmd_settled_mqtt"), n);
        cr_assert_eq(counter(e.bstop, "cmd_in_narrow"), 0);
        cr_assert_eq(counter(e.bstop, "cmd_in_mqtt"), n + 4);
        cr_assert_eq(counter(e.bstop, "cmd_duplicates"), 0);
        cmd_cleanup(&e);
}

/* Both paths bring every command (the center never learns the base is online: the base
 * publishes no status): the base publishes each once, and a command the operator sent
 * twice twice. */
Test(commands, both_paths_published_once)
{
        struct cmdenv e;
        const int n = 16;
        cmd_up(&e, "cmd-both", TO_CENTER, NULL, "mtu = 77", false, NULL);
        cr_assert(h_log_wait(&e.k.base, "down: connected", 10000));
        h_sleep_ms(500); /* the downlink's SUBACK */
        send_all(&e, n, true);
        cr_assert_eq(h_rec_wait(&e.rec, (size_t)n, 20000), (size_t)n);
        int64_t until = h_now_ms() + 20000;
        while (h_log_count(&e.k.base, "not published again") < n && h_now_ms() < until)
                h_sleep_ms(100);
        h_sleep_ms(1000);
        cmd_down(&e);
        expect_exactly(&e, n, true);
        cr_assert_eq(counter(e.cstop, "cmd_sent_narrow"), n);
        cr_assert_eq(counter(e.bstop, "cmd_in_narrow"), n);
        cr_assert_eq(counter(e.bstop, "cmd_in_mqtt"), n);
        cr_assert_eq(counter(e.bstop, "cmd_duplicates"), n, "every second copy dropped");
        cmd_cleanup(&e);
}

/* The brief's case: the base's fiber drops (its will says offline), so the commands the
 * center held for it go narrow although its MQTT session had brought them, and the
 * commands sent while it is away go narrow first and come again from its session when
 * the fiber is back. Each is published once, in order. */
Test(commands, offline_then_back_published_once)
{
        struct cmdenv e;
        struct h_proxy fiber;
        const int n1 = 6, n2 = 6;
        int64_t until;
        cmd_up(&e, "cmd-back", PROXIED, &fiber, "mtu = 77", true, "command_grace = 60s");
        cr_assert(h_log_wait(&e.k.ctr, "north is online over MQTT", 15000), "the center sees the base's status");
        cr_assert(h_log_wait(&e.k.base, "down: connected", 10000));
        h_sleep_ms(500); /* the downlink's SUBACK */
        send_some(&e, 0, n1, true);
        cr_assert_eq(h_rec_wait(&e.rec, (size_t)n1, 15000), (size_t)n1, "the MQTT session brings the first ones");
        fiber.down = true;
        cr_assert(h_log_wait(&e.k.ctr, "north is offline over MQTT", 15000), "the will reaches the center");
        send_some(&e, n1, n1 + n2, true);
        cr_assert_eq(h_rec_wait(&e.rec, (size_t)(n1 + n2), 20000), (size_t)(n1 + n2), "the rest come down the sim link");
        until = h_now_ms() + 20000;
        while (h_log_count(&e.k.base, "not published again") < n1 && h_now_ms() < until)
                h_sleep_ms(100);
        cr_assert_eq(h_log_count(&e.k.base, "not published again"), n1, "the held ones came narrow too, and were dropped");
        fiber.down = false;
        until = h_now_ms() + 30000;
        while (h_log_count(&e.k.base, "not published again") < n1 + n2 && h_now_ms() < until)
                h_sleep_ms(100);
        h_sleep_ms(1000);
        cmd_down(&e);
        h_proxy_stop(&fiber);
        expect_exactly(&e, n1 + n2, true);
        cr_assert_eq(counter(e.cstop, "cmd_sent_narrow"), n1 + n2);
        cr_assert_eq(counter(e.cstop, "cmd_settled_mqtt"), 0);
        cr_assert_eq(counter(e.bstop, "cmd_in_narrow"), n1 + n2);
        cr_assert_eq(counter(e.bstop, "cmd_in_mqtt"), n1 + n2, "the session brought the away ones on reconnect");
        cr_assert_eq(counter(e.bstop, "cmd_duplicates"), n1 + n2);
        cmd_cleanup(&e);
}

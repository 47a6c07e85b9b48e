/* SPDX-License-Identifier: MIT */
/* MQTT version per connection: a center broker that speaks only 3.1.1 (a gate in front of Mosquitto, and RabbitMQ 3.10). */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cjson/cJSON.h>
#include <libgen.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * Mosquitto has no listener option that refuses MQTT 5 (its protocol options are per
 * bridge), so a 3.1.1-only center is the harness's proxy with its gate on (h_proxy
 * v311_only) in front of a real Mosquitto: a v5 CONNECT is refused as RabbitMQ 3.10
 * refuses it (the socket closed, no CONNACK) or as the 3.1.1 spec says (CONNACK return
 * code 1), and a 3.1.1 connection passes byte for byte. Subscribers read the real
 * Mosquitto behind it; what kuimen published over 3.1.1 reaches them without user
 * properties, with origin and id in kuimen's envelope (docs/topics.md), which the
 * harness's subscribers read with a JSON parser as any subscriber would. The last test
 * runs Debian's RabbitMQ with its MQTT plugin, on ports and an epmd of its own.
 */

#define N_MSGS 3000
#define N_TOPICS 10

struct env {
        char dir[200], conf[300], klog[300], sock[300];
        int mport;
        struct h_broker local, center;
        struct h_proxy gate;
        struct h_proc k;
};

/* GET /metrics; the caller frees it. */
static char *metrics(int port)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        size_t len = 0, cap = 1 << 18;
        char *buf = malloc(cap);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to metrics port %d", port);
        const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        cr_assert_eq(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
        for (ssize_t r; len + 1 < cap && (r = recv(fd, buf + len, cap - 1 - len, 0)) > 0;)
                len += (size_t)r;
        close(fd);
        buf[len] = '\0';
        return buf;
}

/* A base "north": its local Mosquitto, and a center Mosquitto behind the gate (mode:
 * h_proxy v311_only); center_port 0 is the gate's, else the center's own port (another
 * broker); link: more keys of [link center]. */
static void env_start(struct env *e, const char *tag, int mode, int center_port, const char *link)
{
        char extra[1024];
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        h_broker_start(&e->local, e->dir, 0, NULL);
        if (!center_port) {
                h_broker_start(&e->center, e->dir, 0, NULL);
                h_proxy_start(&e->gate, e->center.port);
                atomic_store(&e->gate.v311_only, mode);
                center_port = e->gate.port;
        }
        e->mport = h_free_port();
        snprintf(e->sock, sizeof(e->sock), "%s/kuimen.sock", e->dir);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        snprintf(extra, sizeof(extra), "%s\n[control]\nsocket = %s\n[metrics]\nlisten = 127.0.0.1:%d\n", link ? link : "",
                 e->sock, e->mport);
        h_write_conf(e->conf, "north", e->dir, e->local.port, center_port, extra);
        const char *args[] = { "--config", e->conf, NULL };
        h_kuimen_start(&e->k, e->klog, args);
        cr_assert(h_log_wait(&e->k, "ingest: connected", 10000), "kuimen not on its local broker (%s)", e->klog);
}

static void env_stop(struct env *e)
{
        h_stop(&e->k, SIGTERM);
        if (e->gate.lfd)
                h_proxy_stop(&e->gate);
        if (e->center.p.pid)
                h_stop(&e->center.p, SIGTERM);
        h_stop(&e->local.p, SIGTERM);
}

/* N_MSGS messages "<t>:<seq>" on sensors/t<t> of the local broker, all acknowledged. */
static void publish_all(struct env *e)
{
        struct h_pub pub;
        char topic[32], payload[32];
        int v = h_mqtt_version;
        h_mqtt_version = 5; /* the local broker is Mosquitto */
        h_pub_start(&pub, e->local.port, "terminals");
        for (int i = 0; i < N_MSGS; i++) {
                snprintf(topic, sizeof(topic), "sensors/t%d", i % N_TOPICS);
                snprintf(payload, sizeof(payload), "%d:%d", i % N_TOPICS, i / N_TOPICS);
                while (h_pub_send(&pub, topic, payload) != 0)
                        h_sleep_ms(5);
        }
        cr_assert(h_pub_flush(&pub, 20000), "the local broker acknowledged every message");
        h_pub_stop(&pub);
        h_mqtt_version = v;
}

/* Every message once, in order, each with its origin and a distinct id. */
static void assert_all_once(struct h_sub *s, const char *what)
{
        size_t n = h_sub_wait(s, N_MSGS, 20000);
        pthread_mutex_lock(&s->mu);
        cr_assert_eq(n, N_MSGS, "%s: %zu of %d messages arrived (lost %zu)", what, n, N_MSGS, N_MSGS - n);
        cr_assert_eq(s->dups, 0, "%s: %zu duplicates by kuimen-id (none without a fault)", what, s->dups);
        cr_assert_eq(s->redelivered, 0, "%s: %zu copies under a new id", what, s->redelivered);
        cr_assert_eq(h_order_violations(s), 0, "%s: per-topic order kept", what);
        for (size_t i = 0; i < s->n; i++) {
                cr_assert(s->rx[i].id != 0, "%s: message %zu (%s) came with its kuimen-id", what, i, s->rx[i].payload);
                cr_assert_str_eq(s->rx[i].origin, "north", "%s: message %zu came with its kuimen-origin", what, i);
        }
        pthread_mutex_unlock(&s->mu);
}

/* protocol = auto against a center that closes the socket on an MQTT 5 CONNECT (as
 * RabbitMQ 3.10 does): the uplink and the downlink go 3.1.1, every message arrives once
 * and in order with origin and id, a command comes down, and status, kuimenctl and
 * /metrics say 3.1.1 for the link and 5 for the local broker. */
Test(mqtt311, auto_forwards_to_a_311_center)
{
        struct env e;
        struct h_sub sub;
        env_start(&e, "m311-auto", 1, 0, NULL);
        h_sub_start(&sub, e.center.port, "console", "kuimen/north/sensors/#", false);
        cr_assert(h_log_wait(&e.k, "up: connected to", 15000), "the uplink connected (%s)", e.klog);
        cr_assert(h_log_wait(&e.k, "down: connected to", 15000), "the downlink connected (%s)", e.klog);
        cr_assert_geq(atomic_load(&e.gate.refused_v5), 2, "the gate refused MQTT 5 (uplink and downlink)");
        cr_assert_eq(h_log_count(&e.k, "down: connected to tcp://127.0.0.1:"), 1);
        cr_assert_eq(h_log_count(&e.k, "(MQTT 3.1.1)"), 2, "uplink and downlink said 3.1.1 at connect (%s)", e.klog);
        cr_assert_eq(h_log_count(&e.k, "ingest: connected to tcp://127.0.0.1:"), 1);
        cr_assert(h_log_count(&e.k, "refuses MQTT 5 and takes 3.1.1") >= 1, "the fallback is logged (%s)", e.klog);

        publish_all(&e);
        assert_all_once(&sub, "auto via the gate");
        h_assert_command_down(e.local.port, e.center.port, h_mqtt_version, "{\"open\":42}", e.klog);

        cJSON *r = h_status_json(e.sock);
        cr_assert_str_eq(h_json_str(h_status_link(r, "center"), "protocol"), "3.1.1");
        cr_assert_str_eq(h_json_str(h_status_link(r, "center"), "protocol_down"), "3.1.1");
        cr_assert_str_eq(h_json_str(h_status_link(r, "local"), "protocol"), "5");
        cJSON_Delete(r);
        char cmd[700], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' status 2>&1", h_ctl_path(), e.sock);
        FILE *f = popen(cmd, "r");
        size_t len = fread(out, 1, sizeof(out) - 1, f);
        out[len] = '\0';
        pclose(f);
        cr_assert(strstr(out, "\nMQTT: center 3.1.1, local 5\n"), "kuimenctl status: %s", out);
        char *m = metrics(e.mport);
        cr_assert(strstr(m, "\nkuimen_link_mqtt_protocol{link=\"center\",connection=\"up\"} 4\n"), "%s", m);
        cr_assert(strstr(m, "\nkuimen_link_mqtt_protocol{link=\"center\",connection=\"down\"} 4\n"), "%s", m);
        cr_assert(strstr(m, "\nkuimen_link_mqtt_protocol{link=\"local\",connection=\"up\"} 5\n"), "%s", m);
        free(m);
        /* It was learnt once: later reconnects go 3.1.1 straight away. */
        unsigned long refused = atomic_load(&e.gate.refused_v5);
        atomic_store(&e.gate.down, true);
        h_sleep_ms(300);
        atomic_store(&e.gate.down, false);
        cr_assert(h_log_wait(&e.k, "connection to tcp", 5000));
        int64_t until = h_now_ms() + 8000;
        while (h_log_count(&e.k, "up: connected to tcp://127.0.0.1:") < 2 && h_now_ms() < until)
                h_sleep_ms(20);
        cr_assert_eq(h_log_count(&e.k, "up: connected to tcp://127.0.0.1:"), 2, "the uplink is back (%s)", e.klog);
        cr_assert_eq(atomic_load(&e.gate.refused_v5), refused, "no MQTT 5 attempt after the fallback was learnt");
        h_sub_stop(&sub);
        env_stop(&e);
        h_cleanup(e.dir);
}

/* A broker that refuses MQTT 5 with CONNACK return code 1 (the 3.1.1 spec's way):
 * the same fallback; and protocol = 3.1.1 connects without trying 5 at all. */
Test(mqtt311, connack_rc1_and_explicit_311)
{
        struct env e;
        struct h_sub sub;
        env_start(&e, "m311-rc1", 2, 0, NULL);
        h_sub_start(&sub, e.center.port, "console", "kuimen/north/sensors/#", false);
        cr_assert(h_log_wait(&e.k, "up: connected to", 15000), "the uplink connected (%s)", e.klog);
        cr_assert(h_log_count(&e.k, "refuses MQTT 5 (CONNACK return code 1, unacceptable protocol version)") >= 1,
                  "the refusal's reason logged (%s)", e.klog);
        cr_assert(h_log_wait(&e.k, "down: connected to", 15000), "the downlink connected (%s)", e.klog);
        cr_assert_eq(h_log_count(&e.k, "(MQTT 3.1.1)"), 2, "uplink and downlink on 3.1.1 (%s)", e.klog);
        cr_assert_eq(atomic_load(&e.gate.refused_v5), 2, "each refused once");
        struct h_pub pub;
        h_pub_start(&pub, e.local.port, "terminal");
        cr_assert_eq(h_pub_send(&pub, "sensors/x", "0:1"), 0);
        cr_assert(h_pub_flush(&pub, 5000));
        h_pub_stop(&pub);
        cr_assert_eq(h_sub_wait(&sub, 1, 10000), 1);
        cr_assert(sub.rx[0].id != 0 && strcmp(sub.rx[0].payload, "0:1") == 0, "payload %s id %llu", sub.rx[0].payload,
                  (unsigned long long)sub.rx[0].id);
        h_sub_stop(&sub);
        env_stop(&e);
        h_cleanup(e.dir);

        env_start(&e, "m311-explicit", 2, 0, "downlink = no\nprotocol = 3.1.1");
        cr_assert(h_log_wait(&e.k, "up: connected to", 15000), "the uplink connected (%s)", e.klog);
        cr_assert_eq(atomic_load(&e.gate.refused_v5), 0, "protocol = 3.1.1 never tries 5");
        cJSON *r = h_status_json(e.sock);
        cr_assert_str_eq(h_json_str(h_status_link(r, "center"), "protocol"), "3.1.1");
        cJSON_Delete(r);
        env_stop(&e);
        h_cleanup(e.dir);
}

/* protocol = 5 against a 3.1.1-only broker: no fallback, and the link's reason says why
 * and what to do. */
Test(mqtt311, protocol_5_is_refused_with_a_reason)
{
        struct env e;
        env_start(&e, "m311-v5", 1, 0, "protocol = 5");
        cr_assert(h_log_wait(&e.k, "the broker refuses MQTT 5", 10000), "%s", e.klog);
        h_sleep_ms(200);
        cJSON *r = h_status_json(e.sock);
        const cJSON *l = h_status_link(r, "center");
        cr_assert_str_eq(h_json_str(l, "state"), "down");
        cr_assert(strstr(h_json_str(l, "reason"), "the broker refuses MQTT 5") &&
                  strstr(h_json_str(l, "reason"), "set protocol = auto or 3.1.1"), "reason: %s", h_json_str(l, "reason"));
        cr_assert_str_eq(h_json_str(l, "protocol"), "5");
        cJSON_Delete(r);
        cr_assert_eq(h_log_count(&e.k, "(MQTT 3.1.1)"), 0, "no 3.1.1 connection with protocol = 5");
        env_stop(&e);
        h_cleanup(e.dir);
}

/* A center-role kuimen whose broker speaks only 3.1.1: what it relays from a narrow link
 * reaches subscribers with origin, id and relay from the envelope; the base's relayed
 * status, which comes back to it (3.1.1 has no no-local), is recognised by the relay in
 * the envelope and ignored, so that a command for the base goes down the narrow link
 * at once rather than being held for the base's MQTT session. */
Test(mqtt311, center_role_on_a_311_broker)
{
        struct h_pair p;
        struct h_proxy gate;
        struct h_rec rec;
        h_pair_init(&p, "m311-center");
        h_proxy_start(&gate, p.center.port);
        atomic_store(&gate.v311_only, 1);
        h_rec_start(&rec, p.center.port, "console", "kuimen/north/#");
        struct h_pair_conf pc = { .center_local_port = gate.port };
        h_pair_start(&p, &pc);
        cr_assert(h_log_count(&p.ctr, "ingest: connected to tcp://127.0.0.1:") >= 1);
        cr_assert(h_log_wait(&p.ctr, "(MQTT 3.1.1)", 5000), "the center speaks 3.1.1 to its broker (%s)", p.clog);

        struct h_pub pub;
        h_pub_start(&pub, p.local.port, "terminal");
        for (int i = 0; i < 20; i++) {
                char pl[16];
                snprintf(pl, sizeof(pl), "0:%d", i);
                cr_assert_eq(h_pub_send(&pub, "sensors/level", pl), 0);
        }
        cr_assert(h_pub_flush(&pub, 5000));
        h_pub_stop(&pub);
        /* the 20 readings and the base's status, relayed */
        int64_t until = h_now_ms() + 15000;
        size_t readings = 0, statuses = 0;
        while (h_now_ms() < until) {
                readings = statuses = 0;
                pthread_mutex_lock(&rec.mu);
                for (size_t i = 0; i < rec.n; i++) {
                        struct h_msg *m = &rec.m[i];
                        if (strcmp(m->topic, "kuimen/north/sensors/level") == 0) {
                                char want[16];
                                snprintf(want, sizeof(want), "0:%zu", readings);
                                cr_assert_str_eq(m->payload, want, "reading %zu in order, its envelope stripped", readings);
                                cr_assert(m->id && strcmp(m->origin, "north") == 0 && strcmp(m->relay, "county") == 0,
                                          "reading %zu: id %llu origin %s relay %s", readings,
                                          (unsigned long long)m->id, m->origin, m->relay);
                                readings++;
                        } else if (strcmp(m->topic, "kuimen/north/status") == 0 && strcmp(m->relay, "county") == 0) {
                                statuses++;
                        }
                }
                pthread_mutex_unlock(&rec.mu);
                if (readings == 20 && statuses >= 1)
                        break;
                h_sleep_ms(50);
        }
        cr_assert_eq(readings, 20, "the readings relayed once each (%s)", p.clog);
        cr_assert_geq(statuses, 1, "the base's status relayed (%s)", p.clog);

        struct h_rec term;
        h_rec_start(&term, p.local.port, "terminal-cmd", "cmd/#");
        struct h_pub op;
        h_pub_start(&op, p.center.port, "operator");
        int64_t sent = h_now_ms();
        cr_assert_eq(h_pub_send(&op, "kuimen/north/cmd/siren", "on"), 0);
        cr_assert(h_pub_flush(&op, 5000));
        cr_assert_eq(h_rec_wait(&term, 1, 10000), 1, "the command went down the narrow link (%s, %s)", p.clog, p.blog);
        cr_assert_lt(h_now_ms() - sent, 10000, "not held for command_grace (30 s): the relayed status was ignored");
        cr_assert_str_eq(term.m[0].topic, "cmd/siren");
        cr_assert_str_eq(term.m[0].payload, "on");
        h_pub_stop(&op);
        h_rec_stop(&term);
        h_rec_free(&term);
        h_rec_stop(&rec);
        h_rec_free(&rec);
        h_pair_stop(&p);
        h_proxy_stop(&gate);
        h_cleanup(p.dir);
}

/* ---- RabbitMQ 3.10 (Debian) with its MQTT plugin -------------------------------------- */

/* The center is RabbitMQ: it closes the socket on an MQTT 5 CONNECT. protocol = auto:
 * 3 000 messages once each and in order to a 3.1.1 subscriber of RabbitMQ, with origin
 * and id, and a command from RabbitMQ down to the base's terminals. Beside it a base
 * "south" reaches RabbitMQ over TLS (the libmosquitto uplink, mqttc's downlink over TLS):
 * the same fallback, its messages and a command. */
Test(rabbitmq, a_311_center_over_tcp_and_tls, .timeout = 60)
{
        struct env e;
        struct h_rabbit_cluster rc;
        struct h_sub sub;
        char dir[200];
        h_tmpdir(dir, sizeof(dir), "m311-rabbit");
        h_make_certs(dir);
        h_rabbit_start(&rc, dir, 1, true, NULL);
        const struct h_rabbit r = rc.node[0];
        env_start(&e, "m311-rabbit-k", 0, r.mqtt_port, NULL);
        /* south, over TLS */
        struct h_broker slocal;
        struct h_proc south;
        char sconf[300], slog[300], text[1024];
        h_broker_start(&slocal, dir, 0, NULL);
        snprintf(sconf, sizeof(sconf), "%s/south.conf", dir);
        snprintf(slog, sizeof(slog), "%s/south.log", dir);
        /* Its uri a list whose head listens nowhere: the TLS uplink (libmosquitto)
         * moves to the next. */
        int nowhere = h_free_port();
        snprintf(text, sizeof(text),
                 "[node]\nname = south\nspool = %s/south/spool.db\nstats_interval = 0\n"
                 "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                 "[link center]\ntype = mqtt\nuri = ssl://127.0.0.1:%d, ssl://127.0.0.1:%d\nca = %s/ca.crt\nkeepalive = 2s\n",
                 dir, slocal.port, nowhere, r.tls_port, dir);
        h_write_text(sconf, text);
        const char *sargs[] = { "--config", sconf, NULL };
        h_kuimen_start(&south, slog, sargs);
        h_mqtt_version = 4; /* RabbitMQ's own clients */
        h_sub_start(&sub, r.mqtt_port, "console", "kuimen/north/sensors/#", false);
        cr_assert(h_log_wait(&e.k, "up: connected to", 15000), "the uplink connected (%s)", e.klog);
        cr_assert(h_log_wait(&e.k, "down: connected to", 15000), "the downlink connected (%s)", e.klog);
        cr_assert(h_log_count(&e.k, "it closed the connection without a CONNACK") >= 1, "%s", e.klog);
        publish_all(&e);
        assert_all_once(&sub, "auto to RabbitMQ");
        h_assert_command_down(e.local.port, r.mqtt_port, h_mqtt_version, "{\"open\":42}", e.klog);
        cJSON *st = h_status_json(e.sock);
        cr_assert_str_eq(h_json_str(h_status_link(st, "center"), "protocol"), "3.1.1");
        cr_assert_str_eq(h_json_str(h_status_link(st, "center"), "protocol_down"), "3.1.1");
        cr_assert_str_eq(h_json_str(h_status_link(st, "local"), "protocol"), "5");
        cJSON_Delete(st);
        h_sub_stop(&sub);

        /* south: its uplink over TLS found 3.1.1 too; 200 readings and a command */
        char want[96];
        snprintf(want, sizeof(want), "up: connected to ssl://127.0.0.1:%d (MQTT 3.1.1)", r.tls_port);
        cr_assert(h_log_wait(&south, want, 15000), "south's TLS uplink connected to the list's second (%s)", slog);
        snprintf(want, sizeof(want), "up: cannot connect to ssl://127.0.0.1:%d:", nowhere);
        cr_assert(h_log_count(&south, want) >= 1, "the list's head was tried first (%s)", slog);
        cr_assert(h_log_count(&south, "refuses MQTT 5 and takes 3.1.1") >= 1, "%s", slog);
        cr_assert(h_log_wait(&south, "down: connected to ssl://", 15000), "south's TLS downlink connected (%s)", slog);
        h_sub_start(&sub, r.mqtt_port, "console-south", "kuimen/south/sensors/#", false);
        h_mqtt_version = 5;
        struct h_pub sp;
        h_pub_start(&sp, slocal.port, "south-terminals");
        for (int i = 0; i < 200; i++) {
                char pl[16];
                snprintf(pl, sizeof(pl), "0:%d", i);
                while (h_pub_send(&sp, "sensors/flow", pl) != 0)
                        h_sleep_ms(5);
        }
        cr_assert(h_pub_flush(&sp, 10000));
        h_pub_stop(&sp);
        h_mqtt_version = 4;
        cr_assert_eq(h_sub_wait(&sub, 200, 15000), 200, "south's readings over TLS (%s)", slog);
        pthread_mutex_lock(&sub.mu);
        cr_assert_eq(sub.dups, 0);
        cr_assert_eq(h_order_violations(&sub), 0);
        for (size_t i = 0; i < sub.n; i++)
                cr_assert(sub.rx[i].id && strcmp(sub.rx[i].origin, "south") == 0, "south's reading %zu: origin %s",
                          i, sub.rx[i].origin);
        pthread_mutex_unlock(&sub.mu);
        h_sub_stop(&sub);
        h_stop(&south, SIGTERM);
        h_stop(&slocal.p, SIGTERM);
        h_mqtt_version = 5;
        env_stop(&e);
        h_rabbit_stop(&rc);
        h_cleanup(e.dir);
        h_cleanup(dir);
}

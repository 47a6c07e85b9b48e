/* SPDX-License-Identifier: MIT */
/* A link with a list of center brokers: a 3-node RabbitMQ cluster with a node killed mid-stream, and a list of a 3.1.1-only and an MQTT 5 broker. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

/*
 * Suite cluster: Debian's RabbitMQ 3.10 as three nodes on loopback ports of their own
 * (their own epmd, node names and distribution ports), joined with rabbitmqctl, with
 * the MQTT plugin's subscription queues mirrored on every node (classic mirrored
 * queues: RabbitMQ 3.10's MQTT plugin declares classic queues, and a classic queue
 * lives on one node unless a policy mirrors it). The plugin answers a QoS 1 PUBLISH
 * only after the queues it was routed to confirmed it, and a mirrored queue confirms
 * once every mirror holds it, so a PUBACK kuimen got stands for a message on every
 * node. A base's link lists the three nodes; the node it is on is killed (SIGKILL)
 * mid-stream: what was in flight and unacknowledged is sent again through the next
 * node (duplicates, same kuimen-id, counted), nothing is lost, and each topic's order
 * holds. Its downlink session, a queue mirrored the same way, survives the node too.
 *
 * Suite urilist: a center whose brokers differ, one speaking only 3.1.1 (the harness's
 * gate in front of a Mosquitto, as in test_mqtt311.c) and one MQTT 5 (that Mosquitto
 * itself): the version is learnt per URI, so after the move the link speaks 5 again.
 * And the key's checks.
 */

#define N_MSGS 3000
#define N_TOPICS 10
#define KILL_AT 1000

struct base {
        char dir[200], conf[300], log[300], sock[300];
        struct h_broker local;
        struct h_proc k;
};

/* A base named name whose [link center] has uri = uris, with its own local Mosquitto. */
static void base_start(struct base *b, const char *tag, const char *name, const char *uris)
{
        char text[2048];
        memset(b, 0, sizeof(*b));
        h_tmpdir(b->dir, sizeof(b->dir), tag);
        h_broker_start(&b->local, b->dir, 0, NULL);
        snprintf(b->conf, sizeof(b->conf), "%s/kuimen.conf", b->dir);
        snprintf(b->log, sizeof(b->log), "%s/kuimen.log", b->dir);
        snprintf(b->sock, sizeof(b->sock), "%s/kuimen.sock", b->dir);
        snprintf(text, sizeof(text),
                 "[node]\nname = %s\nspool = %s/state/spool.db\nstats_interval = 0\n"
                 "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                 "[link center]\ntype = mqtt\nuri = %s\nkeepalive = 2s\n[control]\nsocket = %s\n",
                 name, b->dir, b->local.port, uris, b->sock);
        h_write_text(b->conf, text);
        const char *args[] = { "--config", b->conf, NULL };
        h_kuimen_start(&b->k, b->log, args);
        cr_assert(h_log_wait(&b->k, "ingest: connected", 10000), "kuimen not on its local broker (%s)", b->log);
}

static void base_stop(struct base *b)
{
        int st = h_stop(&b->k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 (%d; %s)", st, b->log);
        h_stop(&b->local.p, SIGTERM);
}

/* N_MSGS messages "<t>:<seq>" on sensors/t<t> of the base's local broker at about
 * 1 000 a second; at message KILL_AT, cut() runs (a node killed, a gate shut). */
static void stream_n(struct base **b, int nb, void (*cut)(void *), void *ud)
{
        struct h_pub pub[2];
        char topic[32], payload[32];
        int v = h_mqtt_version;
        h_mqtt_version = 5; /* the local broker is Mosquitto */
        for (int k = 0; k < nb; k++)
                h_pub_start(&pub[k], b[k]->local.port, "terminals");
        for (int i = 0; i < N_MSGS; i++) {
                if (i == KILL_AT)
                        cut(ud);
                snprintf(topic, sizeof(topic), "sensors/t%d", i % N_TOPICS);
                snprintf(payload, sizeof(payload), "%d:%d", i % N_TOPICS, i / N_TOPICS);
                for (int k = 0; k < nb; k++)
                        while (h_pub_send(&pub[k], topic, payload) != 0)
                                h_sleep_ms(5);
                if (i % 10 == 9)
                        h_sleep_ms(10);
        }
        for (int k = 0; k < nb; k++) {
                cr_assert(h_pub_flush(&pub[k], 20000), "the local broker acknowledged every message");
                h_pub_stop(&pub[k]);
        }
        h_mqtt_version = v;
}

static void stream(struct base *b, void (*cut)(void *), void *ud)
{
        stream_n(&b, 1, cut, ud);
}

/* Every message at least once, each first copy in its topic's order, with origin and id;
 * copies of an id are counted (at least once), never under a new id. Returns the copies. */
static size_t assert_all(struct h_sub *s, const char *what, const char *log, const char *origin)
{
        size_t n = h_sub_wait(s, N_MSGS, 30000);
        pthread_mutex_lock(&s->mu);
        cr_assert_eq(n, N_MSGS, "%s: %zu of %d messages arrived (lost %zu; %s)", what, n, N_MSGS, N_MSGS - n, log);
        cr_assert_eq(s->redelivered, 0, "%s: %zu copies under a new id", what, s->redelivered);
        cr_assert_eq(h_order_violations(s), 0, "%s: per-topic order kept", what);
        for (size_t i = 0; i < s->n; i++) {
                cr_assert(s->rx[i].id != 0, "%s: message %zu (%s) came with its kuimen-id", what, i, s->rx[i].payload);
                cr_assert_str_eq(s->rx[i].origin, origin, "%s: message %zu came with its kuimen-origin", what, i);
        }
        size_t dups = s->dups;
        pthread_mutex_unlock(&s->mu);
        return dups;
}

/* Every message of origin at least once across two brokers' subscribers (a link that
 * moved from one to the other), each subscriber's first copies in order, none under a
 * new id. Returns the copies (on one broker, or on both). */
static size_t assert_union(struct h_sub *a, struct h_sub *b, const char *origin, const char *log)
{
        static bool got[N_MSGS];
        struct h_sub *s2[2] = { a, b };
        size_t copies = 0, n = 0;
        memset(got, 0, sizeof(got));
        int64_t until = h_now_ms() + 30000;
        while (h_now_ms() < until && h_sub_count(a) + h_sub_count(b) < N_MSGS)
                h_sleep_ms(50);
        h_sleep_ms(300);
        for (int k = 0; k < 2; k++) {
                struct h_sub *s = s2[k];
                pthread_mutex_lock(&s->mu);
                cr_assert_eq(s->redelivered, 0, "%s: copies under a new id", origin);
                cr_assert_eq(h_order_violations(s), 0, "%s: per-topic order on broker %d", origin, k + 1);
                copies += s->dups;
                for (size_t i = 0; i < s->n; i++) {
                        int t = -1, q = -1;
                        sscanf(s->rx[i].payload, "%d:%d", &t, &q);
                        cr_assert(t >= 0 && t < N_TOPICS && q >= 0 && q * N_TOPICS + t < N_MSGS, "%s", s->rx[i].payload);
                        cr_assert(s->rx[i].id && strcmp(s->rx[i].origin, origin) == 0, "%s: origin %s id %llu", origin,
                                  s->rx[i].origin, (unsigned long long)s->rx[i].id);
                        if (got[q * N_TOPICS + t])
                                copies++;
                        else
                                n++;
                        got[q * N_TOPICS + t] = true;
                }
                pthread_mutex_unlock(&s->mu);
        }
        cr_assert_eq(n, N_MSGS, "%s: %zu of %d messages arrived on the two brokers (%s)", origin, n, N_MSGS, log);
        return copies;
}

/* The link's broker in use, as status says it. */
static void assert_on(struct base *b, const char *uri, int index, int n, const char *protocol)
{
        cJSON *r = h_status_json(b->sock);
        const cJSON *l = h_status_link(r, "center");
        cr_assert_str_eq(h_json_str(l, "state"), "up", "%s", b->log);
        cr_assert_str_eq(h_json_str(l, "uri"), uri, "the link says which broker it is on");
        cr_assert_eq((int)h_json_num(l, "uri_index"), index);
        cr_assert_eq((int)h_json_num(l, "uris"), n);
        cr_assert_str_eq(h_json_str(l, "protocol"), protocol);
        cJSON_Delete(r);
}

/* ---- a 3-node RabbitMQ cluster ----------------------------------------------------- */

#define MIRROR_POLICY                                                                                            \
        "set_policy --apply-to queues ha-mqtt '^mqtt-subscription-' "                                            \
        "'{\"ha-mode\":\"all\",\"ha-sync-mode\":\"automatic\"}'"

struct cut {
        struct h_rabbit_cluster *rc;
        struct h_proxy *to_node2; /* east's way to node 2 */
};

/* Node 1 dies (north's); east's way to node 2 closes (as if that node went away). */
static void kill_node(void *ud)
{
        struct cut *c = ud;
        h_rabbit_kill(c->rc, 0);
        atomic_store(&c->to_node2->down, true);
}

Test(cluster, node_killed_mid_stream, .timeout = 240)
{
        struct h_rabbit_cluster rc;
        struct base b;
        struct h_sub sub;
        char dir[200], uris[300], uri[3][64], want[128], out[4096];
        h_tmpdir(dir, sizeof(dir), "cluster-rabbit");
        int64_t t0 = h_now_ms();
        h_rabbit_start(&rc, dir, 3, false, MIRROR_POLICY);
        cr_log_info("RabbitMQ 3 nodes: listening after %.1f s (start %d), clustered and mirrored %.1f s later (%d joined by rabbitmqctl)",
                    rc.boot_ms / 1000.0, rc.tries, rc.join_ms / 1000.0, rc.joined_by_ctl);
        cr_assert_eq(h_rabbitmqctl(&rc, 2, "cluster_status --formatter json", out, sizeof(out)), 0, "%s", out);
        const char *running = strstr(out, "\"running_nodes\"");
        cr_assert(running, "%s", out);
        for (int i = 0; i < 3; i++) {
                snprintf(want, sizeof(want), "\"%s\"", rc.node[i].name);
                cr_assert(strstr(running, want) && strstr(running, want) < strchr(running, ']'),
                          "%s runs in the cluster: %s", rc.node[i].name, out);
                snprintf(uri[i], sizeof(uri[i]), "tcp://127.0.0.1:%d", rc.node[i].mqtt_port);
        }
        snprintf(uris, sizeof(uris), "%s, %s,%s", uri[0], uri[1], uri[2]);
        base_start(&b, "cluster-base", "north", uris);
        /* east: a RabbitMQ node (3.1.1 only; through a proxy, so that the test can take
         * it away without killing a second node: two of three must stay for the
         * cluster to take connections) and a Mosquitto (MQTT 5) in one list. */
        struct h_broker mosq;
        struct h_proxy to2;
        struct base east;
        struct h_sub sub_er, sub_em;
        char eu[2][64], euris[160];
        h_broker_start(&mosq, dir, 0, NULL);
        h_proxy_start(&to2, rc.node[1].mqtt_port);
        snprintf(eu[0], sizeof(eu[0]), "tcp://127.0.0.1:%d", to2.port);
        snprintf(eu[1], sizeof(eu[1]), "tcp://127.0.0.1:%d", mosq.port);
        snprintf(euris, sizeof(euris), "%s, %s", eu[0], eu[1]);
        /* The consoles are on node 3 with persistent sessions: their queues are there
         * and mirrored on 1 and 2. */
        h_sub_start(&sub_em, mosq.port, "console-east", "kuimen/east/sensors/#", false);
        h_mqtt_version = 4;
        h_sub_start(&sub, rc.node[2].mqtt_port, "console", "kuimen/north/sensors/#", true);
        h_sub_start(&sub_er, rc.node[2].mqtt_port, "console-east", "kuimen/east/sensors/#", true);
        base_start(&east, "cluster-east", "east", euris);
        snprintf(want, sizeof(want), "up: connected to %s (MQTT 3.1.1)", uri[0]);
        cr_assert(h_log_wait(&b.k, want, 20000), "the uplink on the list's first node (%s)", b.log);
        cr_assert(h_log_wait(&b.k, "down: connected to", 20000), "the downlink connected (%s)", b.log);
        assert_on(&b, uri[0], 0, 3, "3.1.1");

        snprintf(want, sizeof(want), "up: connected to %s (MQTT 3.1.1)", eu[0]);
        cr_assert(h_log_wait(&east.k, want, 20000), "east on the RabbitMQ node first (%s)", east.log);
        assert_on(&east, eu[0], 0, 2, "3.1.1");
        struct cut cut = { &rc, &to2 };
        struct base *both[2] = { &b, &east };
        stream_n(both, 2, kill_node, &cut);
        snprintf(want, sizeof(want), "up: connection to %s lost", uri[0]);
        cr_assert(h_log_wait(&b.k, want, 10000), "the uplink saw its node die (%s)", b.log);
        snprintf(want, sizeof(want), "up: connected to %s (MQTT 3.1.1)", uri[1]);
        cr_assert(h_log_wait(&b.k, want, 20000), "the uplink moved to the next node (%s)", b.log);
        size_t dups = assert_all(&sub, "a node killed mid-stream", b.log, "north");
        cr_log_info("node killed mid-stream: %d of %d messages, 0 lost, %zu duplicates (by kuimen-id), %.1f s in all",
                    N_MSGS, N_MSGS, dups, (h_now_ms() - t0) / 1000.0);
        assert_on(&b, uri[1], 1, 3, "3.1.1");
        /* east: on to the Mosquitto, in MQTT 5 (learnt per URI) */
        snprintf(want, sizeof(want), "up: connected to %s (MQTT 5)", eu[1]);
        cr_assert(h_log_wait(&east.k, want, 10000), "east moved to the Mosquitto in MQTT 5 (%s)", east.log);
        size_t edups = assert_union(&sub_er, &sub_em, "east", east.log);
        cr_log_info("east, a RabbitMQ node (3.1.1) then a Mosquitto (5): 0 lost, %zu copies", edups);
        assert_on(&east, eu[1], 1, 2, "5");
        h_sub_stop(&sub_er);
        h_sub_stop(&sub_em);
        base_stop(&east);
        h_proxy_stop(&to2);
        h_stop(&mosq.p, SIGTERM);
        h_cleanup(east.dir);
        /* The downlink's session (its queue was on node 1, mirrored) and a command from
         * node 3. */
        h_assert_command_down(b.local.port, rc.node[2].mqtt_port, h_mqtt_version, "{\"open\":7}", b.log);
        cr_assert_eq(h_log_count(&b.k, "set aside"), 0, "%s", b.log);
        h_sub_stop(&sub);
        h_mqtt_version = 5;
        base_stop(&b);
        h_rabbit_stop(&rc);
        h_cleanup(b.dir);
        h_cleanup(dir);
}

/* ---- a 3.1.1-only broker and an MQTT 5 one in one list ------------------------------ */

static void shut_gate(void *ud)
{
        struct h_proxy *g = ud;
        atomic_store(&g->down, true);
}

Test(urilist, v311_node_then_v5_node)
{
        struct h_broker center;
        struct h_proxy gate;
        struct base b;
        struct h_sub sub;
        char dir[200], uris[200], u0[64], u1[64], want[128];
        h_tmpdir(dir, sizeof(dir), "urilist");
        h_broker_start(&center, dir, 0, NULL);
        h_proxy_start(&gate, center.port);
        atomic_store(&gate.v311_only, 1); /* closes on a v5 CONNECT, as RabbitMQ 3.10 */
        snprintf(u0, sizeof(u0), "tcp://127.0.0.1:%d", gate.port);
        snprintf(u1, sizeof(u1), "tcp://127.0.0.1:%d", center.port);
        snprintf(uris, sizeof(uris), "%s,%s", u0, u1);
        h_sub_start(&sub, center.port, "console", "kuimen/north/sensors/#", false);
        base_start(&b, "urilist-base", "north", uris);
        snprintf(want, sizeof(want), "up: connected to %s (MQTT 3.1.1)", u0);
        cr_assert(h_log_wait(&b.k, want, 15000), "the uplink on the 3.1.1 broker first (%s)", b.log);
        cr_assert(h_log_count(&b.k, "it closed the connection without a CONNACK") >= 1, "%s", b.log);
        assert_on(&b, u0, 0, 2, "3.1.1");

        stream(&b, shut_gate, &gate);
        snprintf(want, sizeof(want), "up: connected to %s (MQTT 5)", u1);
        cr_assert(h_log_wait(&b.k, want, 10000), "the next broker in MQTT 5: learnt per URI (%s)", b.log);
        size_t dups = assert_all(&sub, "3.1.1 broker shut mid-stream", b.log, "north");
        cr_log_info("3.1.1 node shut mid-stream, on to an MQTT 5 node: 0 lost, %zu duplicates", dups);
        assert_on(&b, u1, 1, 2, "5");
        /* The downlink tries the list from its head, the gate (shut), then the broker. */
        h_assert_command_down(b.local.port, center.port, h_mqtt_version, "{\"open\":9}", b.log);
        h_sub_stop(&sub);
        base_stop(&b);
        h_proxy_stop(&gate);
        h_stop(&center.p, SIGTERM);
        h_cleanup(b.dir);
        h_cleanup(dir);
}

/* Over TLS both connections follow the list as on TCP (the downlink is mqttc there too,
 * since Paho left): the head listens nowhere, the uplink (libmosquitto) and the
 * downlink each move on to the second, and a command comes down. */
Test(urilist, tls_list_followed_by_both_connections)
{
        struct h_broker center;
        struct base b;
        char dir[200], link[1200], u0[64], u1[64], want[160];
        int tls_port = 0, nowhere;
        h_tmpdir(dir, sizeof(dir), "urilist-tls");
        h_make_certs(dir);
        h_broker_start_tls(&center, dir, 0, "server", NULL, &tls_port);
        do
                nowhere = h_free_port();
        while (nowhere == tls_port || nowhere == center.port);
        snprintf(u0, sizeof(u0), "ssl://127.0.0.1:%d", nowhere);
        snprintf(u1, sizeof(u1), "ssl://127.0.0.1:%d", tls_port);
        /* The link's TLS keys follow its uri line. */
        snprintf(link, sizeof(link), "%s, %s\nca = %s/ca.crt\ncert = %s/client.crt\nkey = %s/client.key", u0, u1, dir,
                 dir, dir);
        base_start(&b, "urilist-tls-base", "north", link);
        snprintf(want, sizeof(want), "up: connected to %s", u1);
        cr_assert(h_log_wait(&b.k, want, 15000), "the uplink on the list's second (%s)", b.log);
        snprintf(want, sizeof(want), "down: connected to %s", u1);
        cr_assert(h_log_wait(&b.k, want, 15000), "the downlink on the list's second (%s)", b.log);
        snprintf(want, sizeof(want), "down: cannot connect to %s: connect: Connection refused", u0);
        cr_assert_geq(h_log_count(&b.k, want), 1, "the downlink tried the head first (%s)", b.log);
        assert_on(&b, u1, 1, 2, "5");
        h_assert_command_down(b.local.port, center.port, h_mqtt_version, "{\"open\":7}", b.log);
        base_stop(&b);
        h_stop(&center.p, SIGTERM);
        h_cleanup(b.dir);
        h_cleanup(dir);
}

/* The list's checks: an empty entry, TLS on some URIs only, a bad one named. */
Test(urilist, checked)
{
        char dir[200], conf[300], text[1024], out[4096];
        h_tmpdir(dir, sizeof(dir), "urilist-check");
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        const struct {
                const char *uri, *error;
        } cases[] = {
                { "tcp://127.0.0.1:1883,,tcp://127.0.0.1:1884", "an empty entry (URIs are separated by single commas)" },
                { "tcp://127.0.0.1:1883,", "an empty entry" },
                { "tcp://127.0.0.1:1883, ssl://127.0.0.1:8883", "TLS (ssl://, mqtts://) for every URI of the list or for none" },
                { "tcp://127.0.0.1:1883, tcp://127.0.0.1:99999", "'tcp://127.0.0.1:99999': not scheme://host[:port] with a port from 1 to 65535" },
                { "tcp://127.0.0.1:1883, http://x", "'http://x' is not tcp://, ssl://, mqtt:// or mqtts://host:port" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                snprintf(text, sizeof(text),
                         "[node]\nname = north\nspool = %s/spool.db\n[local]\nuri = tcp://127.0.0.1:1883\n"
                         "[link center]\ntype = mqtt\nuri = %s\n",
                         dir, cases[i].uri);
                h_write_text(conf, text);
                const char *args[] = { "--check-config", conf, NULL };
                cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 1, "'%s' refused: %s", cases[i].uri, out);
                cr_assert(strstr(out, cases[i].error), "'%s': %s", cases[i].uri, out);
                cr_assert(strstr(out, "kuimen.conf:"), "FILE:LINE named: %s", out);
        }
        snprintf(text, sizeof(text),
                 "[node]\nname = north\nspool = %s/spool.db\n[local]\nuri = tcp://127.0.0.1:1883\n"
                 "[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:1883 , tcp://[::1]:1884,mqtt://localhost\n",
                 dir);
        h_write_text(conf, text);
        const char *args[] = { "--check-config", conf, NULL };
        cr_assert_eq(h_kuimen_run(args, out, sizeof(out)), 0, "a good list passes: %s", out);
        h_cleanup(dir);
}

/* ---- a center-role kuimen as two processes (issue 15 item 3) ------------------------ */

/*
 * Two bases, north and south, each with a narrow link to each of two center processes,
 * county-a and county-b, on one center broker (Mosquitto); no IP link, so everything
 * crosses the narrow links. A base is assigned to one center process by its links'
 * order (north prefers a, south b) and fails over to the other by the scheduler, as
 * any base fails over between links; the centers share the bases' commands through
 * the MQTT 5 shared subscription of [local] center_group, so each command is framed by
 * one of them. county-a is killed (SIGKILL) mid-stream and started again 4 s later (as
 * systemd would).
 */

#define C_MSGS 600
#define C_CMDS 20

struct centers {
        char dir[200], plugins[300];
        struct h_broker center, local[2];
        struct h_proc base[2], ctr[2];
        char bconf[2][300], cconf[2][300], blog[2][300], clog[2][300];
};

static const char *const bases[2] = { "north", "south" }, *const ctrs[2] = { "county-a", "county-b" };

static void centers_start_center(struct centers *e, int c)
{
        const char *args[] = { "--config", e->cconf[c], NULL };
        h_kuimen_start(&e->ctr[c], e->clog[c], args);
        cr_assert(h_log_wait(&e->ctr[c], "ingest: connected", 10000), "%s on its broker (%s)", ctrs[c], e->clog[c]);
}

static void centers_start(struct centers *e)
{
        int port[2][2][2]; /* [base][center][0: the base's end, 1: the center's end] */
        char text[4096];
        memset(e, 0, sizeof(*e));
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert(plugins, "KM_SIM_PLUGIN_DIR is not set");
        snprintf(e->plugins, sizeof(e->plugins), "%s", plugins);
        h_tmpdir(e->dir, sizeof(e->dir), "centers");
        char dir[200];
        memcpy(dir, e->dir, sizeof(dir));
        h_broker_start(&e->center, dir, 0, NULL);
        for (int b = 0; b < 2; b++)
                for (int c = 0; c < 2; c++)
                        for (int k = 0; k < 2; k++)
                                port[b][c][k] = h_free_port();
        for (int c = 0; c < 2; c++) {
                int n = snprintf(text, sizeof(text),
                                 "[node]\nname = %s\nrole = center\nspool = %s/%s/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                                 "[local]\nuri = tcp://127.0.0.1:%d\ncenter_group = county\n",
                                 ctrs[c], e->dir, ctrs[c], plugins, e->center.port);
                for (int b = 0; b < 2; b++)
                        n += snprintf(text + n, sizeof(text) - (size_t)n,
                                      "[link sat-%s]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = %s\n",
                                      bases[b], port[b][c][1], port[b][c][0], bases[b]);
                snprintf(e->cconf[c], sizeof(e->cconf[c]), "%s/%s.conf", dir, ctrs[c]);
                snprintf(e->clog[c], sizeof(e->clog[c]), "%s/%s.log", dir, ctrs[c]);
                h_write_text(e->cconf[c], text);
        }
        for (int b = 0; b < 2; b++) {
                h_broker_start(&e->local[b], e->dir, 0, NULL);
                int n = snprintf(text, sizeof(text),
                                 "[node]\nname = %s\nspool = %s/%s/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                                 "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n",
                                 bases[b], e->dir, bases[b], plugins, e->local[b].port);
                for (int c = 0; c < 2; c++) /* north prefers county-a, south county-b */
                        n += snprintf(text + n, sizeof(text) - (size_t)n,
                                      "[link sat-%s]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\norder = %d\n",
                                      ctrs[c], port[b][c][0], port[b][c][1], c == b ? 1 : 2);
                snprintf(e->bconf[b], sizeof(e->bconf[b]), "%s/%s.conf", dir, bases[b]);
                snprintf(e->blog[b], sizeof(e->blog[b]), "%s/%s.log", dir, bases[b]);
                h_write_text(e->bconf[b], text);
        }
        for (int c = 0; c < 2; c++)
                centers_start_center(e, c);
        for (int b = 0; b < 2; b++) {
                const char *args[] = { "--config", e->bconf[b], NULL };
                h_kuimen_start(&e->base[b], e->blog[b], args);
                cr_assert(h_log_wait(&e->base[b], "ingest: connected", 10000), "%s on its broker (%s)", bases[b],
                          e->blog[b]);
        }
}

static void centers_stop(struct centers *e)
{
        for (int b = 0; b < 2; b++) {
                int st = h_stop(&e->base[b], SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exits 0 (%d; %s)", bases[b], st, e->blog[b]);
        }
        for (int c = 0; c < 2; c++) {
                int st = h_stop(&e->ctr[c], SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exits 0 (%d; %s)", ctrs[c], st, e->clog[c]);
        }
        for (int b = 0; b < 2; b++)
                h_stop(&e->local[b].p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
}

Test(centers, two_processes_one_killed, .timeout = 120)
{
        struct centers e;
        struct h_sub sub[2];
        struct h_rec term[2];
        struct h_pub pub[2], op;
        char topic[64], payload[64];
        centers_start(&e);
        for (int b = 0; b < 2; b++) {
                snprintf(topic, sizeof(topic), "kuimen/%s/sensors/#", bases[b]);
                snprintf(payload, sizeof(payload), "console-%s", bases[b]);
                h_sub_start(&sub[b], e.center.port, payload, topic, true);
                snprintf(payload, sizeof(payload), "terminal-%s", bases[b]);
                h_rec_start(&term[b], e.local[b].port, payload, "cmd/#");
                snprintf(payload, sizeof(payload), "terminals-%s", bases[b]);
                h_pub_start(&pub[b], e.local[b].port, payload);
        }
        h_pub_start(&op, e.center.port, "operator");
        struct h_rec all;
        h_rec_start(&all, e.center.port, "recorder", "kuimen/+/sensors/#");
        int64_t killed_at = 0;
        for (int i = 0; i < C_MSGS; i++) {
                if (i == C_MSGS / 3) {
                        h_stop(&e.ctr[0], SIGKILL);
                        killed_at = h_now_ms();
                }
                if (killed_at && e.ctr[0].pid == 0 && h_now_ms() - killed_at >= 4000)
                        centers_start_center(&e, 0);
                for (int b = 0; b < 2; b++) {
                        snprintf(topic, sizeof(topic), "sensors/t%d", i % N_TOPICS);
                        snprintf(payload, sizeof(payload), "%d:%d", i % N_TOPICS, i / N_TOPICS);
                        while (h_pub_send(&pub[b], topic, payload) != 0)
                                h_sleep_ms(5);
                }
                if (i % (C_MSGS / C_CMDS) == 0) /* a command for each base, some while county-a is dead */
                        for (int b = 0; b < 2; b++) {
                                snprintf(topic, sizeof(topic), "kuimen/%s/cmd/valve", bases[b]);
                                snprintf(payload, sizeof(payload), "{\"n\":%d}", i / (C_MSGS / C_CMDS));
                                cr_assert_eq(h_pub_send(&op, topic, payload), 0);
                        }
                h_sleep_ms(15); /* about 65 a second from each base: some 9 s of stream */
        }
        while (e.ctr[0].pid == 0) {
                h_sleep_ms(50);
                if (h_now_ms() - killed_at >= 4000)
                        centers_start_center(&e, 0);
        }
        for (int b = 0; b < 2; b++)
                cr_assert(h_pub_flush(&pub[b], 10000));
        cr_assert(h_pub_flush(&op, 10000));
        for (int b = 0; b < 2; b++) {
                size_t n = h_sub_wait(&sub[b], C_MSGS, 40000);
                pthread_mutex_lock(&sub[b].mu);
                cr_assert_eq(n, C_MSGS, "%s: %zu of %d arrived (%s, %s, %s)", bases[b], n, C_MSGS, e.blog[b], e.clog[0],
                             e.clog[1]);
                cr_assert_eq(sub[b].redelivered, 0, "%s: %zu copies under a new id", bases[b], sub[b].redelivered);
                cr_assert_eq(h_order_violations(&sub[b]), 0, "%s: per-topic order", bases[b]);
                size_t dups = sub[b].dups;
                pthread_mutex_unlock(&sub[b].mu);
                /* Published by both processes: what the scale-out must never do. Published
                 * again by the killed process after its restart (what it had in flight to
                 * the broker when killed; the same kuimen-id): at least once, as any kuimen
                 * killed mid-publish. */
                size_t both = 0, again = 0, by[2] = { 0, 0 };
                pthread_mutex_lock(&all.mu);
                for (size_t i = 0; i < all.n; i++)
                        for (int c = 0; c < 2; c++)
                                by[c] += strcmp(all.m[i].origin, bases[b]) == 0 && strcmp(all.m[i].relay, ctrs[c]) == 0;
                for (size_t i = 0; i < all.n; i++)
                        for (size_t j = i + 1; j < all.n; j++) {
                                struct h_msg *x = &all.m[i], *y = &all.m[j];
                                if (x->id != y->id || strcmp(x->origin, bases[b]) || strcmp(y->origin, bases[b]))
                                        continue;
                                if (strcmp(x->relay, y->relay) != 0) {
                                        both++;
                                        cr_log_error("%s %s id %llu published by %s and by %s", bases[b], x->payload,
                                                     (unsigned long long)x->id, x->relay, y->relay);
                                } else {
                                        again++;
                                }
                        }
                pthread_mutex_unlock(&all.mu);
                cr_log_info("%s: %d messages through two center processes, one killed: 0 lost, %zu by both processes, "
                            "%zu again by the killed one after its restart", bases[b], C_MSGS, both, again);
                cr_assert_eq(both, 0, "%s: %zu messages published by both center processes", bases[b], both);
                /* north's county-a was killed: county-b took over; south stayed on county-b,
                 * and county-a relays at least the status it was restarted into. */
                if (b == 0)
                        cr_assert(by[0] > 0 && by[1] > 0, "north went through both: %zu by county-a, %zu by county-b",
                                  by[0], by[1]);
                cr_log_info("%s: %zu relayed by county-a, %zu by county-b", bases[b], by[0], by[1]);
                cr_assert_eq(again, dups, "%s: every copy is the killed process's own replay", bases[b]);
        }
        /* Each command once at its base: none lost in the dead process's session, none
         * framed by both. */
        for (int b = 0; b < 2; b++) {
                size_t n = h_rec_wait(&term[b], C_CMDS, 30000);
                h_sleep_ms(n == C_CMDS ? 1500 : 0); /* a second copy would come by now */
                pthread_mutex_lock(&term[b].mu);
                bool seen[C_CMDS] = { false };
                for (size_t i = 0; i < term[b].n; i++) {
                        int k = -1;
                        sscanf(term[b].m[i].payload, "{\"n\":%d}", &k);
                        cr_assert(k >= 0 && k < C_CMDS, "%s: command %s", bases[b], term[b].m[i].payload);
                        cr_assert(!seen[k], "%s: command %d framed twice", bases[b], k);
                        seen[k] = true;
                }
                cr_assert_eq(term[b].n, C_CMDS, "%s: %zu of %d commands (%s, %s)", bases[b], term[b].n, C_CMDS,
                             e.clog[0], e.clog[1]);
                pthread_mutex_unlock(&term[b].mu);
        }
        for (int b = 0; b < 2; b++) {
                h_sub_stop(&sub[b]);
                h_pub_stop(&pub[b]);
                h_rec_stop(&term[b]);
                h_rec_free(&term[b]);
        }
        h_pub_stop(&op);
        h_rec_stop(&all);
        h_rec_free(&all);
        centers_stop(&e);
        h_cleanup(e.dir);
}

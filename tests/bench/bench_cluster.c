/* SPDX-License-Identifier: MIT */
/* Scale benchmark (issue 15 item 4): base kuimen processes at 200 msg/s each into a 3-node RabbitMQ cluster, directly and through center-role processes terminating narrow-link frames. */
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "harness.h"

/*
 * One Mosquitto is every base's local broker (base bNN takes bNN/#); each base is a
 * kuimen process whose center link lists the three RabbitMQ nodes, starting at node
 * NN % 3, so the bases spread over the cluster. A publisher per base offers 200 msg/s
 * (QoS 1, one message per base every 5 ms), each payload "bNN <seq> <monotonic us>".
 * One 3.1.1 subscriber on node 1 takes kuimen/# and measures the latency from the
 * publish on the base's broker to its arrival from the cluster (the same machine: one
 * monotonic clock). Narrow: the bases have no IP link but a sim narrow link (UDP,
 * unlimited bitrate) to one of two center-role processes, which publish what they
 * relay to their own RabbitMQ node. CPU is utime + stime from /proc over the run and
 * its drain: the bases' kuimen, the center processes, the RabbitMQ nodes, each per
 * delivered message. missing: not arrived when the drain gave up (20 s without an
 * arrival): still in a spool or a queue, not lost. The bases' ack_timeout is 30 s
 * (KM_BENCH_ACK_TIMEOUT): with the default 3 s an overloaded cluster's slow PUBACKs
 * take links down and the replays add to the load (docs/benchmarks.md). Figures only;
 * never pass/fail on numbers.
 */

#define HZ 200
#define TICK_MS (1000 / HZ)
#define MAX_BASES 20
#define MAX_SEQ 65536
#define CENTERS 2

static char g_dir[256];

static void die(const char *msg)
{
        fprintf(stderr, "bench_cluster: %s\n", msg);
        if (g_dir[0] && !getenv("KM_KEEP"))
                h_cleanup(g_dir);
        exit(1); /* brokers and kuimen die with us: PR_SET_PDEATHSIG */
}

static int64_t mono_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double cpu_s(pid_t pid)
{
        char path[64], buf[1024];
        unsigned long ut = 0, st = 0;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                return 0;
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The beam.smp of a RabbitMQ node is the child rabbitmq-server exec'd into, the pid itself. */

/* ---- the subscriber ------------------------------------------------------------------ */

static struct {
        pthread_mutex_t mu;
        uint8_t seen[MAX_BASES][MAX_SEQ / 8];
        int64_t *lat;
        size_t n, cap, dups;
} rx = { .mu = PTHREAD_MUTEX_INITIALIZER };

static int on_msg(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        (void)ctx, (void)tlen;
        int64_t now = mono_us();
        char buf[256];
        size_t len = (size_t)m->payloadlen < sizeof(buf) - 1 ? (size_t)m->payloadlen : sizeof(buf) - 1;
        memcpy(buf, m->payload, len);
        buf[len] = 0;
        const char *p = buf;
        if (*p == '{') { /* kuimen's 3.1.1 envelope: one JSON line before the payload */
                const char *nl = strchr(p, '\n');
                p = nl ? nl + 1 : p;
        }
        int b;
        unsigned seq;
        long long t;
        if (sscanf(p, "b%d %u %lld", &b, &seq, &t) == 3 && b >= 0 && b < MAX_BASES && seq < MAX_SEQ) {
                pthread_mutex_lock(&rx.mu);
                if (rx.seen[b][seq / 8] & (1u << (seq % 8))) {
                        rx.dups++;
                } else {
                        rx.seen[b][seq / 8] |= (uint8_t)(1u << (seq % 8));
                        if (rx.n == rx.cap) {
                                rx.cap = rx.cap ? rx.cap * 2 : 65536;
                                rx.lat = realloc(rx.lat, rx.cap * sizeof(*rx.lat));
                                if (!rx.lat)
                                        die("out of memory");
                        }
                        rx.lat[rx.n++] = now - t;
                }
                pthread_mutex_unlock(&rx.mu);
        }
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static MQTTAsync sub_start(int port)
{
        MQTTAsync c;
        char uri[64];
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer;
        cro.MQTTVersion = MQTTVERSION_3_1_1;
        if (MQTTAsync_createWithOptions(&c, uri, "bench-console", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro) != 0)
                die("subscriber: create");
        MQTTAsync_setCallbacks(c, NULL, NULL, on_msg, NULL);
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
        co.MQTTVersion = MQTTVERSION_3_1_1;
        co.cleansession = 1;
        co.keepAliveInterval = 20;
        co.maxInflight = 1024;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        if (MQTTAsync_connect(c, &co) != 0)
                die("subscriber: connect");
        for (int i = 0; i < 500 && !MQTTAsync_isConnected(c); i++)
                h_sleep_ms(10);
        if (!MQTTAsync_isConnected(c))
                die("subscriber: not connected to RabbitMQ");
        if (MQTTAsync_subscribe(c, "kuimen/#", 1, &ro) != 0 || MQTTAsync_waitForCompletion(c, ro.token, 5000) != 0)
                die("subscriber: subscribe");
        return c;
}

/* ---- one step ------------------------------------------------------------------------ */

static int cmp64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return x < y ? -1 : x > y;
}

/* nb bases for secs seconds, direct (their MQTT uplinks) or narrow (through CENTERS
 * center-role processes); one line of figures. */
static const char *ack_timeout = "30s";

static void step(struct h_rabbit_cluster *rc, struct h_broker *local, int nb, bool narrow, int secs)
{
        struct h_proc base[MAX_BASES], ctr[CENTERS];
        struct h_pub pub[MAX_BASES];
        char dir[300], conf[400], log[400], text[8192], uris[256];
        int sport[MAX_BASES][2];
        snprintf(dir, sizeof(dir), "%s/%s%d", g_dir, narrow ? "narrow" : "direct", nb);
        if (mkdir(dir, 0700) != 0)
                die("mkdir");
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        if (narrow && !plugins)
                die("KM_SIM_PLUGIN_DIR is not set");
        for (int i = 0; i < nb; i++)
                sport[i][0] = h_free_port(), sport[i][1] = h_free_port();
        int nc = narrow ? CENTERS : 0;
        for (int c = 0; c < nc; c++) {
                int n = snprintf(text, sizeof(text),
                                 "[node]\nname = county-%d\nrole = center\nspool = %s/county-%d/spool.db\nplugin_dir = %s\n"
                                 "stats_interval = 0\nlink_status = no\n[local]\nuri = tcp://127.0.0.1:%d\nprotocol = 3.1.1\n",
                                 c, dir, c, plugins, rc->node[c % rc->n].mqtt_port);
                for (int i = c; i < nb; i += CENTERS)
                        n += snprintf(text + n, sizeof(text) - (size_t)n,
                                      "[link sat-b%02d]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\npeers = b%02d\n"
                                      "commands = no\n",
                                      i, sport[i][1], sport[i][0], i);
                snprintf(conf, sizeof(conf), "%s/county-%d.conf", dir, c);
                snprintf(log, sizeof(log), "%s/county-%d.log", dir, c);
                h_write_text(conf, text);
                const char *args[] = { "--config", conf, NULL };
                h_kuimen_start(&ctr[c], log, args);
                if (!h_log_wait(&ctr[c], "ingest: connected", 20000))
                        die("a center process did not reach RabbitMQ");
        }
        for (int i = 0; i < nb; i++) {
                int k = i % rc->n, n = 0;
                for (int j = 0; j < rc->n; j++)
                        n += snprintf(uris + n, sizeof(uris) - (size_t)n, "%stcp://127.0.0.1:%d", j ? ", " : "",
                                      rc->node[(k + j) % rc->n].mqtt_port);
                n = snprintf(text, sizeof(text),
                             "[node]\nname = b%02d\nspool = %s/b%02d/spool.db\nstats_interval = 0\nlink_status = no\n%s%s\n"
                             "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = b%02d/#\n",
                             i, dir, i, narrow ? "plugin_dir = " : "", narrow ? plugins : "", local->port, i);
                if (narrow)
                        snprintf(text + n, sizeof(text) - (size_t)n,
                                 "[link sat]\ntype = sim\nlisten = 127.0.0.1:%d\npeer = 127.0.0.1:%d\n", sport[i][0],
                                 sport[i][1]);
                else
                        snprintf(text + n, sizeof(text) - (size_t)n,
                                 "[link center]\ntype = mqtt\nuri = %s\nprotocol = 3.1.1\nkeepalive = 5s\nack_timeout = %s\n", uris,
                                 ack_timeout);
                snprintf(conf, sizeof(conf), "%s/b%02d.conf", dir, i);
                snprintf(log, sizeof(log), "%s/b%02d.log", dir, i);
                h_write_text(conf, text);
                const char *args[] = { "--config", conf, NULL };
                h_kuimen_start(&base[i], log, args);
        }
        for (int i = 0; i < nb; i++)
                if (!h_log_wait(&base[i], narrow ? "link: sat: down -> up" : "up: connected to", 30000))
                        die(narrow ? "a base's narrow link did not come up" : "a base did not reach RabbitMQ");
        for (int i = 0; i < nb; i++) {
                char id[32];
                snprintf(id, sizeof(id), "bench-pub-%02d", i);
                h_pub_start(&pub[i], local->port, id);
        }
        h_sleep_ms(500);
        pthread_mutex_lock(&rx.mu);
        memset(rx.seen, 0, sizeof(rx.seen));
        rx.n = rx.dups = 0;
        pthread_mutex_unlock(&rx.mu);

        double c0[MAX_BASES + CENTERS + H_RABBIT_MAX];
        int np = 0;
        pid_t pids[MAX_BASES + CENTERS + H_RABBIT_MAX];
        for (int i = 0; i < nb; i++)
                pids[np++] = base[i].pid;
        for (int c = 0; c < nc; c++)
                pids[np++] = ctr[c].pid;
        for (int j = 0; j < rc->n; j++)
                pids[np++] = rc->node[j].node.pid;
        for (int j = 0; j < np; j++)
                c0[j] = cpu_s(pids[j]);

        unsigned seq[MAX_BASES] = { 0 };
        int64_t t0 = mono_us(), end = t0 + (int64_t)secs * 1000000;
        size_t offered = 0, behind = 0;
        for (int64_t tick = t0; tick < end; tick += TICK_MS * 1000) {
                int64_t now = mono_us();
                if (tick > now)
                        usleep((useconds_t)(tick - now));
                for (int i = 0; i < nb; i++) {
                        char topic[32], payload[64];
                        snprintf(topic, sizeof(topic), "b%02d/sensors/t%u", i, seq[i] % 8);
                        snprintf(payload, sizeof(payload), "b%d %u %lld", i, seq[i], (long long)mono_us());
                        if (h_pub_send(&pub[i], topic, payload) == 0)
                                seq[i]++, offered++;
                        else
                                behind++; /* the publisher's window is full: the base's broker is behind */
                }
        }
        double sent_s = (double)(mono_us() - t0) / 1e6;
        for (int i = 0; i < nb; i++)
                h_pub_flush(&pub[i], 20000);
        int64_t last_n = -1, quiet = mono_us();
        for (;;) { /* drain: until all arrived, or 20 s without progress */
                pthread_mutex_lock(&rx.mu);
                size_t n = rx.n;
                pthread_mutex_unlock(&rx.mu);
                if (n >= offered)
                        break;
                if ((int64_t)n != last_n)
                        last_n = (int64_t)n, quiet = mono_us();
                else if (mono_us() - quiet > 20000000)
                        break;
                h_sleep_ms(20);
        }
        double all_s = (double)(mono_us() - t0) / 1e6;
        double cb = 0, cc = 0, cr = 0;
        for (int j = 0; j < np; j++) {
                double d = cpu_s(pids[j]) - c0[j];
                if (j < nb)
                        cb += d;
                else if (j < nb + nc)
                        cc += d;
                else
                        cr += d;
        }
        pthread_mutex_lock(&rx.mu);
        size_t got = rx.n, dups = rx.dups;
        qsort(rx.lat, got, sizeof(*rx.lat), cmp64);
        double p50 = got ? (double)rx.lat[got / 2] / 1000 : 0, p99 = got ? (double)rx.lat[got * 99 / 100] / 1000 : 0;
        pthread_mutex_unlock(&rx.mu);
        double per = got ? 1e6 / (double)got : 0;
        printf("%-6s %5d %9.0f %9.0f %9.0f %8zu %6zu %8.1f %8.1f %9.1f %9.1f %9.1f\n", narrow ? "narrow" : "direct", nb,
               (double)nb * HZ, (double)offered / sent_s, (double)got / all_s, offered - (got < offered ? got : offered),
               dups, p50, p99, cb * per, cc * per, cr * per);
        if (behind)
                printf("       (%zu sends found the publisher's window full: offered less than %d msg/s a base)\n", behind, HZ);
        fflush(stdout);
        for (int i = 0; i < nb; i++) {
                h_pub_stop(&pub[i]);
                h_stop(&base[i], SIGTERM);
        }
        for (int c = 0; c < nc; c++)
                h_stop(&ctr[c], SIGTERM);
}

int main(int argc, char **argv)
{
        bool short_run = argc > 1 && strcmp(argv[1], "--short") == 0;
        int secs = short_run ? 4 : 15;
        h_fail_hook = die;
        signal(SIGPIPE, SIG_IGN);
        if (getenv("KM_BENCH_ACK_TIMEOUT"))
                ack_timeout = getenv("KM_BENCH_ACK_TIMEOUT");
        const char *root = getenv("KM_BENCH_DIR") ? getenv("KM_BENCH_DIR") : "/var/tmp";
        snprintf(g_dir, sizeof(g_dir), "%s/km-bench-cluster-XXXXXX", root);
        if (!mkdtemp(g_dir))
                die("mkdtemp");
        struct h_rabbit_cluster rc;
        struct h_broker local;
        h_rabbit_start(&rc, g_dir, 3, false,
                       "set_policy --apply-to queues ha-mqtt '^mqtt-subscription-' "
                       "'{\"ha-mode\":\"all\",\"ha-sync-mode\":\"automatic\"}'");
        printf("cluster: 3 RabbitMQ 3.10 nodes (MQTT plugin, subscription queues mirrored on all), listening after "
               "%.1f s, clustered %.1f s later\n", rc.boot_ms / 1000.0, rc.join_ms / 1000.0);
        h_broker_start(&local, g_dir, 0, "max_queued_messages 100000\n");
        h_mqtt_version = 5;
        MQTTAsync sub = sub_start(rc.node[0].mqtt_port);
        printf("%d msg/s a base, %d s a step, the bases' ack_timeout %s; latency: publish on the base's broker to arrival from the cluster; CPU in us "
               "of CPU time per delivered message\n", HZ, secs, ack_timeout);
        printf("%-6s %5s %9s %9s %9s %8s %6s %8s %8s %9s %9s %9s\n", "path", "bases", "target/s", "offered/s",
               "msg/s", "missing", "dups", "p50 ms", "p99 ms", "base us", "center us", "rabbit us");
        int steps[] = { 1, 5, 20 };
        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
                step(&rc, &local, steps[i], false, secs);
        step(&rc, &local, 20, true, secs);
        MQTTAsync_disconnect(sub, NULL);
        MQTTAsync_destroy(&sub);
        h_stop(&local.p, SIGTERM);
        h_rabbit_stop(&rc);
        if (!getenv("KM_KEEP"))
                h_cleanup(g_dir);
        return 0;
}

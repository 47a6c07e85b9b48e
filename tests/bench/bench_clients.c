/* SPDX-License-Identifier: MIT */
/* MQTT client libraries compared on kuimen's uplink work: QoS 1 publishes with two user properties, CPU per message. */
#include <MQTTAsync.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

#include "bridges/mqttc.h"

/*
 * Why: kuimen's CPU per message is mostly its MQTT client library (README,
 * Benchmarks). This measures the uplink's share alone, with each library driven the
 * way kuimen would drive it: Paho's async client (its own threads, a callback per
 * PUBACK), libmosquitto on a caller's poll loop (no threads), and kuimen's own client
 * (bridges/mqttc.c) on an sd-event loop, as kuimen runs it. Same broker, same
 * messages (200-byte payload, kuimen-origin and kuimen-id user properties, 10 topics),
 * same window of 64 in flight. CPU is this process's user + system time.
 *
 * Usage: bench_clients [messages] (default 100000); KM_MOSQUITTO names the broker.
 */

#define WINDOW 64
#define PAYLOAD 200

static char payload[PAYLOAD];

static double now_s(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void cpu_s(double *user, double *sys)
{
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
        *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

struct result {
        double rate, cpu_us, sys_us;
};

static void report(const char *name, long n, double t0, double u0, double s0, struct result *r)
{
        double u1, s1, wall = now_s() - t0;
        cpu_s(&u1, &s1);
        r->rate = (double)n / wall;
        r->cpu_us = (u1 - u0 + s1 - s0) * 1e6 / (double)n;
        r->sys_us = (s1 - s0) * 1e6 / (double)n;
        printf("  %-13s %8.0f msgs/s  CPU %6.1f us/msg (system %5.1f)\n", name, r->rate, r->cpu_us, r->sys_us);
        fflush(stdout);
}

/* ---- Paho async ------------------------------------------------------------------ */

static struct {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        long acked, failed;
} pa = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };

static void paho_ok(void *ctx, MQTTAsync_successData5 *r)
{
        (void)ctx, (void)r;
        pthread_mutex_lock(&pa.mu);
        pa.acked++;
        pthread_cond_signal(&pa.cv);
        pthread_mutex_unlock(&pa.mu);
}

static void paho_fail(void *ctx, MQTTAsync_failureData5 *r)
{
        (void)ctx, (void)r;
        pthread_mutex_lock(&pa.mu);
        pa.failed++;
        pthread_cond_signal(&pa.cv);
        pthread_mutex_unlock(&pa.mu);
}

static int run_paho(int port, long n, struct result *r)
{
        char uri[64];
        MQTTAsync c;
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;

        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        if (MQTTAsync_createWithOptions(&c, uri, "bench-paho", MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro))
                return -1;
        co.cleanstart = 1;
        co.maxInflight = WINDOW;
        if (MQTTAsync_connect(c, &co))
                return -1;
        for (int i = 0; i < 500 && !MQTTAsync_isConnected(c); i++)
                usleep(10000);
        if (!MQTTAsync_isConnected(c))
                return -1;
        pa.acked = pa.failed = 0;
        long sent = 0;
        double u0, s0, t0 = now_s();
        cpu_s(&u0, &s0);
        pthread_mutex_lock(&pa.mu);
        while (pa.acked + pa.failed < n) {
                if (sent < n && sent - pa.acked - pa.failed < WINDOW) {
                        pthread_mutex_unlock(&pa.mu);
                        MQTTAsync_message pm = MQTTAsync_message_initializer;
                        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
                        MQTTProperty p = { .identifier = MQTTPROPERTY_CODE_USER_PROPERTY };
                        char id[24], topic[64];
                        snprintf(id, sizeof(id), "%ld", 1000000 + sent);
                        snprintf(topic, sizeof(topic), "kuimen/north/sensors/t%ld", sent % 10);
                        p.value.data.data = "kuimen-origin";
                        p.value.data.len = 13;
                        p.value.value.data = "north";
                        p.value.value.len = 5;
                        MQTTProperties_add(&pm.properties, &p);
                        p.value.data.data = "kuimen-id";
                        p.value.data.len = 9;
                        p.value.value.data = id;
                        p.value.value.len = (int)strlen(id);
                        MQTTProperties_add(&pm.properties, &p);
                        pm.payload = payload;
                        pm.payloadlen = PAYLOAD;
                        pm.qos = 1;
                        ro.onSuccess5 = paho_ok;
                        ro.onFailure5 = paho_fail;
                        int rc = MQTTAsync_sendMessage(c, topic, &pm, &ro);
                        MQTTProperties_free(&pm.properties);
                        pthread_mutex_lock(&pa.mu);
                        if (rc == MQTTASYNC_SUCCESS)
                                sent++;
                        else
                                pthread_cond_wait(&pa.cv, &pa.mu); /* full: wait for an ack */
                        continue;
                }
                pthread_cond_wait(&pa.cv, &pa.mu);
        }
        pthread_mutex_unlock(&pa.mu);
        report("paho-async", n, t0, u0, s0, r);
        MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer5;
        dop.timeout = 1000;
        MQTTAsync_disconnect(c, &dop);
        usleep(100000);
        MQTTAsync_destroy(&c);
        return pa.failed ? -1 : 0;
}

/* ---- libmosquitto on a poll loop ------------------------------------------------- */

static long mq_acked;
static int mq_connected;

static void mq_on_publish(struct mosquitto *m, void *ud, int mid, int rc, const mosquitto_property *p)
{
        (void)m, (void)ud, (void)mid, (void)rc, (void)p;
        mq_acked++;
}

static void mq_on_connect(struct mosquitto *m, void *ud, int rc, int flags, const mosquitto_property *p)
{
        (void)m, (void)ud, (void)flags, (void)p;
        mq_connected = rc == 0 ? 1 : -1;
}

static int run_mosquitto(int port, long n, struct result *r)
{
        struct mosquitto *m = mosquitto_new("bench-mosq", true, NULL);
        if (!m)
                return -1;
        mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
        mosquitto_publish_v5_callback_set(m, mq_on_publish);
        mosquitto_connect_v5_callback_set(m, mq_on_connect);
        mq_connected = 0;
        mq_acked = 0;
        if (mosquitto_connect_bind_v5(m, "127.0.0.1", port, 10, NULL, NULL))
                return -1;
        for (int i = 0; i < 100 && !mq_connected; i++)
                mosquitto_loop(m, 100, 1);
        if (mq_connected != 1)
                return -1;
        long sent = 0;
        double u0, s0, t0 = now_s();
        cpu_s(&u0, &s0);
        while (mq_acked < n) {
                while (sent < n && sent - mq_acked < WINDOW) {
                        mosquitto_property *props = NULL;
                        char id[24], topic[64];
                        snprintf(id, sizeof(id), "%ld", 1000000 + sent);
                        snprintf(topic, sizeof(topic), "kuimen/north/sensors/t%ld", sent % 10);
                        mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "kuimen-origin", "north");
                        mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "kuimen-id", id);
                        int rc = mosquitto_publish_v5(m, NULL, topic, PAYLOAD, payload, 1, false, props);
                        mosquitto_property_free_all(&props);
                        if (rc != MOSQ_ERR_SUCCESS)
                                return -1;
                        sent++;
                }
                struct pollfd pf = { mosquitto_socket(m), POLLIN | (mosquitto_want_write(m) ? POLLOUT : 0), 0 };
                if (poll(&pf, 1, 1000) < 0)
                        return -1;
                if (pf.revents & POLLIN && mosquitto_loop_read(m, 1) != MOSQ_ERR_SUCCESS)
                        return -1;
                if (pf.revents & POLLOUT && mosquitto_loop_write(m, 1) != MOSQ_ERR_SUCCESS)
                        return -1;
                mosquitto_loop_misc(m);
        }
        report("libmosquitto", n, t0, u0, s0, r);
        mosquitto_disconnect(m);
        mosquitto_destroy(m);
        return 0;
}

/* ---- kuimen's own client on sd-event ------------------------------------------- */

static long mc_acked;
static int mc_state;

static void mc_up(void *ud)
{
        (void)ud;
        mc_state = 1;
}

static void mc_down(void *ud, const char *why)
{
        (void)ud;
        fprintf(stderr, "bench_clients: mqttc: %s\n", why);
        mc_state = -1;
}

static int mc_message(void *ud, const char *topic, const void *p, size_t len, bool retain, const void *props,
                      size_t plen)
{
        (void)ud, (void)topic, (void)p, (void)len, (void)retain, (void)props, (void)plen;
        return 0;
}

static void mc_acked_cb(void *ud, uint32_t cookie)
{
        (void)ud, (void)cookie;
        mc_acked++;
}

static bool mc_refused(void *ud, uint32_t cookie, int reason, const char *why)
{
        (void)ud, (void)cookie, (void)reason;
        mc_down(NULL, why);
        return true;
}

static int run_mqttc(int port, long n, struct result *r)
{
        sd_event *ev = NULL;
        struct km_mqttc *c = NULL;
        char uri[64];
        int rc = -1;

        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        struct km_mqttc_opts o = { .uri = uri, .client_id = "bench-mqttc", .role = "bench", .clean_start = true,
                                   .keepalive_s = 10, .window = WINDOW, .receive_max = 16 };
        struct km_mqttc_cb cb = { .up = mc_up, .lost = mc_down, .failed_connect = mc_down, .message = mc_message,
                                  .acked = mc_acked_cb, .refused = mc_refused };
        mc_state = 0;
        mc_acked = 0;
        if (sd_event_new(&ev) < 0 || km_mqttc_new(&c, ev, &o, &cb) < 0)
                goto out;
        for (int i = 0; i < 100 && mc_state == 0; i++)
                sd_event_run(ev, 100000);
        if (mc_state != 1)
                goto out;
        long sent = 0;
        double u0, s0, t0 = now_s();
        cpu_s(&u0, &s0);
        while (mc_acked < n && mc_state == 1) {
                while (sent < n && sent - mc_acked < WINDOW) {
                        char topic[64];
                        snprintf(topic, sizeof(topic), "kuimen/north/sensors/t%ld", sent % 10);
                        if (km_mqttc_publish(c, topic, payload, PAYLOAD, false, "north", (uint64_t)(1000000 + sent),
                                             NULL, (uint32_t)sent) < 0)
                                goto out;
                        sent++;
                }
                if (sd_event_run(ev, 1000000) < 0)
                        goto out;
        }
        if (mc_acked >= n) {
                report("mqttc", n, t0, u0, s0, r);
                rc = 0;
        }
out:
        km_mqttc_free(c);
        sd_event_unref(ev);
        return rc;
}

/* ---- the broker ------------------------------------------------------------------ */

static int free_port(void)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || getsockname(fd, (struct sockaddr *)&a, &l) < 0)
                return -1;
        close(fd);
        return ntohs(a.sin_port);
}

static pid_t broker_start(int port, char *dir)
{
        char conf[300];
        snprintf(conf, sizeof(conf), "%s/mosquitto.conf", dir);
        FILE *f = fopen(conf, "w");
        if (!f)
                return -1;
        /* As in bench_bridge: the broker's receive maximum above our window, no per-message log. */
        fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\nuser root\nmax_inflight_messages 100\n"
                   "log_dest none\n", port);
        fclose(f);
        pid_t pid = fork();
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                const char *bin = getenv("KM_MOSQUITTO") ? getenv("KM_MOSQUITTO") : "/usr/sbin/mosquitto";
                execl(bin, bin, "-c", conf, (char *)NULL);
                _exit(127);
        }
        /* Up when it accepts. */
        for (int i = 0; i < 200; i++) {
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
                close(fd);
                if (ok)
                        return pid;
                usleep(20000);
        }
        kill(pid, SIGKILL);
        return -1;
}

static int cmp(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
        long n = argc > 1 ? atol(argv[1]) : 100000;
        char dir[] = "/tmp/km-bench-clients-XXXXXX";
        struct result p[3], q[3], k[3];
        double pc[3], qc[3], kc[3];

        if (n <= 0 || !mkdtemp(dir))
                return 2;
        memset(payload, 'x', sizeof(payload));
        mosquitto_lib_init();
        int port = free_port();
        pid_t broker = broker_start(port, dir);
        if (broker < 0) {
                fprintf(stderr, "bench_clients: cannot start mosquitto\n");
                return 1;
        }
        printf("uplink publish, %ld QoS 1 messages of %d bytes with 2 user properties, window %d, 3 rounds:\n", n,
               PAYLOAD, WINDOW);
        int rc = 0;
        for (int i = 0; i < 3 && rc == 0; i++) {
                rc = run_paho(port, n, &p[i]) || run_mosquitto(port, n, &q[i]) || run_mqttc(port, n, &k[i]);
                pc[i] = p[i].cpu_us;
                qc[i] = q[i].cpu_us;
                kc[i] = k[i].cpu_us;
        }
        kill(broker, SIGTERM);
        waitpid(broker, NULL, 0);
        char cmd[64];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        (void)!system(cmd);
        if (rc) {
                fprintf(stderr, "bench_clients: a client failed\n");
                return 1;
        }
        qsort(pc, 3, sizeof(double), cmp);
        qsort(qc, 3, sizeof(double), cmp);
        qsort(kc, 3, sizeof(double), cmp);
        printf("median CPU per message: paho-async %.1f us, libmosquitto %.1f us, mqttc %.1f us (paho/mqttc %.1f, "
               "libmosquitto/mqttc %.1f)\n",
               pc[1], qc[1], kc[1], pc[1] / kc[1], qc[1] / kc[1]);
        mosquitto_lib_cleanup();
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* Security end to end: kuimen to the center over mutual TLS, and the base broker's ACL
 * (config/mosquitto-base.conf and .acl as shipped) against real clients; exact counts. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* ---- helpers ------------------------------------------------------------------------- */

/* The project's source root: KM_SOURCE_ROOT when meson passes it, else found from this
 * file's compile-time path (relative to the build root, which holds KM_KUIMEN two levels
 * down: <build>/<dir>/kuimen). */
static const char *src_root(void)
{
        static char root[PATH_MAX];
        char path[PATH_MAX * 2];
        if (root[0])
                return root;
        if (getenv("KM_SOURCE_ROOT")) {
                snprintf(root, sizeof(root), "%s", getenv("KM_SOURCE_ROOT"));
                return root;
        }
        const char *file = __FILE__; /* <root>/tests/integration/test_tls.c, maybe relative */
        if (file[0] == '/') {
                snprintf(path, sizeof(path), "%s", file);
        } else {
                const char *k = getenv("KM_KUIMEN");
                char build[PATH_MAX];
                cr_assert(k && snprintf(build, sizeof(build), "%s", k) < (int)sizeof(build), "KM_KUIMEN unset");
                for (int up = 0; up < 2; up++) { /* <build>/<dir>/kuimen -> <build> */
                        char *slash = strrchr(build, '/');
                        cr_assert(slash, "KM_KUIMEN=%s is not a path", k);
                        *slash = 0;
                }
                snprintf(path, sizeof(path), "%s/%s", build, file);
        }
        char *slash = strrchr(path, '/');
        cr_assert(slash);
        strcpy(slash, "/../..");
        cr_assert(realpath(path, root), "source root %s: %s", path, strerror(errno));
        return root;
}

/* Lines of file holding both a and b (b may be NULL). */
static int grep2(const char *path, const char *a, const char *b)
{
        FILE *f = fopen(path, "r");
        char line[2048];
        int n = 0;
        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                n += strstr(line, a) && (!b || strstr(line, b));
        fclose(f);
        return n;
}

static void run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void run(const char *fmt, ...)
{
        char cmd[4096];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        int rc = system(cmd);
        cr_assert(rc == 0, "command failed (%d): %s", rc, cmd);
}

/* A counter from kuimen's final "stopped:" line. */
static long final_counter(const char *log, const char *name)
{
        FILE *f = fopen(log, "r");
        char line[2048], stopped[2048] = "", key[64];
        while (f && fgets(line, sizeof(line), f))
                if (strstr(line, "stopped: "))
                        snprintf(stopped, sizeof(stopped), "%s", line);
        if (f)
                fclose(f);
        snprintf(key, sizeof(key), " %s=", name);
        const char *p = strstr(stopped, key);
        return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* Waits until s has want messages, then quiet_ms more to catch extras; returns n. */
static size_t count_after(struct h_sub *s, size_t want, int timeout_ms, int quiet_ms)
{
        h_sub_wait(s, want, timeout_ms);
        h_sleep_ms(quiet_ms);
        pthread_mutex_lock(&s->mu);
        size_t n = s->total;
        pthread_mutex_unlock(&s->mu);
        return n;
}

/* ---- TLS to the center ---------------------------------------------------------------- */

struct tenv {
        char dir[200], conf[300], klog[300];
        struct h_broker local, center;
        int tls_port;
        struct h_proc k;
        struct h_sub sub;
        struct h_pub pub;
};

/* Local broker, center broker with a plain listener (for the test's subscriber) and a
 * TLS listener that requires a client certificate (server certificate `server`) and
 * applies config/mosquitto-center.acl as shipped (the certificate's CN is the user
 * name), kuimen with link uri ssl://127.0.0.1:<tls port> and client certificate
 * `client`. */
static void tls_up(struct tenv *e, const char *tag, const char *server, const char *client, const char *link_extra)
{
        char uri[64];
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        h_make_certs(e->dir);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        h_broker_start(&e->local, e->dir, 0, NULL);
        char acl[PATH_MAX + 16];
        snprintf(acl, sizeof(acl), "acl_file %s/config/mosquitto-center.acl", src_root());
        h_broker_start_tls(&e->center, e->dir, 0, server, acl, &e->tls_port);
        h_sub_start(&e->sub, e->center.port, "center-sub", "kuimen/north/sensors/#", false);

        snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%d", e->tls_port);
        FILE *f = fopen(e->conf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/state/spool.db\nstats_interval = 0\nlink_status = no\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                "[link center]\ntype = mqtt\nuri = %s\nkeepalive = 2s\n"
                "ca = %s/ca.crt\ncert = %s/%s.crt\nkey = %s/%s.key\n%s\n",
                e->dir, e->local.port, uri, e->dir, e->dir, client, e->dir, client, link_extra ? link_extra : "");
        fclose(f);
        const char *args[] = { "--config", e->conf, "--log-level", "debug", NULL };
        h_kuimen_start(&e->k, e->klog, args);
        cr_assert(h_log_wait(&e->k, "ingest: connected", 10000), "kuimen did not connect to the local broker");
        h_pub_start(&e->pub, e->local.port, "sensor-pub");
}

static void tls_down(struct tenv *e)
{
        h_pub_stop(&e->pub);
        if (e->k.pid) {
                int st = h_stop(&e->k, SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        }
        h_sub_stop(&e->sub);
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
}

static void publish_n(struct tenv *e, int n)
{
        char payload[32];
        for (int i = 0; i < n; i++) {
                snprintf(payload, sizeof(payload), "0:%d", i);
                cr_assert_eq(h_pub_send(&e->pub, "sensors/gas", payload), 0);
        }
        cr_assert(h_pub_flush(&e->pub, 10000));
        cr_assert_eq(e->pub.acked, (uint64_t)n, "the local broker acknowledged %llu of %d",
                     (unsigned long long)e->pub.acked, n);
}

/* The link is refused: kuimen logs why, nothing reaches the center, the spool keeps it all. */
static void assert_refused(struct tenv *e, int n)
{
        char needle[96];
        snprintf(needle, sizeof(needle), "up: cannot connect to ssl://127.0.0.1:%d", e->tls_port);
        cr_assert(h_log_wait(&e->k, needle, 10000), "kuimen's log shows no '%s'", needle);
        publish_n(e, n);
        h_sleep_ms(3000); /* a few reconnect attempts (every 1 to 5 s) */
        cr_assert_geq(h_log_count(&e->k, needle), 2, "kuimen keeps retrying");
        cr_assert_eq(h_log_count(&e->k, "up: connected"), 0, "the uplink must stay down");
        cr_assert_eq(h_log_count(&e->k, "down: connected"), 0, "the downlink must stay down");
        cr_assert_eq(h_log_count(&e->k, "refuses MQTT 5"), 0, "a TLS refusal is not a broker refusing MQTT 5");
        cr_assert_eq(h_log_count(&e->k, "MQTT 3.1.1"), 0, "protocol = auto stays on MQTT 5");
        pthread_mutex_lock(&e->sub.mu);
        size_t total = e->sub.total;
        pthread_mutex_unlock(&e->sub.mu);
        cr_assert_eq(total, 0, "%zu messages reached the center over a refused link", total);
        tls_down(e);
        cr_assert_eq(final_counter(e->klog, "forwarded"), 0);
        cr_assert_eq(final_counter(e->klog, "spooled"), n, "what could not leave stays in the spool");
        h_cleanup(e->dir);
}

TestSuite(tls, .timeout = 120);

Test(tls, mutual_tls_both_ways)
{
        struct tenv e;
        struct h_sub cmds;
        struct h_pub center_pub;
        tls_up(&e, "tls", "server", "client", NULL);
        cr_assert(h_log_wait(&e.k, "up: connected to ssl://", 10000), "uplink did not come up over TLS");
        cr_assert(h_log_wait(&e.k, "down: connected to ssl://", 10000), "downlink did not come up over TLS");
        /* The broker saw kuimen's certificate: CN north became the user name. */
        cr_assert_eq(grep2(e.center.p.log, "as kuimen-north-center-up (", "u'north'"), 1, "center log: %s", e.center.p.log);
        cr_assert_eq(grep2(e.center.p.log, "as kuimen-north-center-down (", "u'north'"), 1);

        publish_n(&e, 300);
        size_t n = count_after(&e.sub, 300, 20000, 500);
        cr_assert_eq(n, 300, "the center received %zu of 300", n);
        cr_assert_eq(e.sub.n, 300);
        cr_assert_eq(e.sub.dups, 0);
        cr_assert_eq(h_order_violations(&e.sub), 0);
        for (size_t i = 0; i < e.sub.n; i++) {
                cr_assert_str_eq(e.sub.rx[i].topic, "kuimen/north/sensors/gas");
                cr_assert_str_eq(e.sub.rx[i].origin, "north");
        }

        /* Commands come down the TLS downlink. */
        h_sub_start(&cmds, e.local.port, "terminal", "cmd/#", false);
        h_pub_start(&center_pub, e.center.port, "center-pub");
        for (int i = 0; i < 5; i++) {
                char p[16];
                snprintf(p, sizeof(p), "c%d", i);
                cr_assert_eq(h_pub_send(&center_pub, "kuimen/north/cmd/unit7/go", p), 0);
        }
        cr_assert(h_pub_flush(&center_pub, 5000));
        size_t c = count_after(&cmds, 5, 10000, 300);
        cr_assert_eq(c, 5, "the local broker got %zu of 5 commands", c);
        cr_assert_str_eq(cmds.rx[0].topic, "cmd/unit7/go");
        h_pub_stop(&center_pub);
        h_sub_stop(&cmds);

        /* Over the same TLS listener and ACL, another base's certificate (CN south)
         * cannot speak for north nor read north's commands: mosquitto_pub exits 0 on a
         * refused QoS 1 publish only when the broker acknowledged it, so what counts is
         * the center subscriber's tally and the broker's log. */
        h_sub_start(&cmds, e.center.port, "center-cmds", "kuimen/+/cmd/#", false);
        char tls[1000];
        snprintf(tls, sizeof(tls), "-V 5 -q 1 -h 127.0.0.1 -p %d --cafile '%s/ca.crt' --cert '%s/south.crt' --key '%s/south.key'",
                 e.tls_port, e.dir, e.dir, e.dir);
        run("mosquitto_pub %s -i south-forger -t kuimen/north/sensors/gas -m forged >/dev/null 2>&1;"
            "mosquitto_pub %s -i south-forger -t kuimen/north/cmd/unit7/go -m forged >/dev/null 2>&1;"
            "mosquitto_pub %s -i south-own -t kuimen/south/cmd/unit7/ok -m own", tls, tls, tls);
        cr_assert_eq(count_after(&cmds, 1, 5000, 500), 1, "south's own topic passes the ACL, nothing of north's");
        cr_assert_str_eq(cmds.rx[0].topic, "kuimen/south/cmd/unit7/ok");
        cr_assert_geq(h_log_count(&e.center.p, "Denied PUBLISH from south-forger"), 2, "the center broker denied both");
        h_sub_stop(&cmds);

        tls_down(&e);
        cr_assert_eq(e.sub.n, 300, "nothing forged reached kuimen/north/sensors/#");
        cr_assert_eq(final_counter(e.klog, "forwarded"), 300);
        cr_assert_eq(final_counter(e.klog, "spooled"), 0);
        h_cleanup(e.dir);
}

Test(tls, client_certificate_from_another_ca_is_refused)
{
        struct tenv e;
        tls_up(&e, "tlsrogue", "server", "rogue", NULL);
        /* TLS 1.3 finishes the client's handshake before the broker checks its
         * certificate: the broker's alert comes after, where a CONNACK was awaited. It
         * is a TLS failure, not a broker refusing MQTT 5 (which would move protocol =
         * auto to 3.1.1 until a restart). */
        char needle[96];
        snprintf(needle, sizeof(needle), "up: cannot connect to ssl://127.0.0.1:%d", e.tls_port);
        cr_assert(h_log_wait(&e.k, needle, 10000));
        cr_assert(h_log_wait(&e.k, "alert unknown ca", 10000), "the uplink names the broker's TLS alert");
        assert_refused(&e, 40);
}

Test(tls, hostname_checked_by_default)
{
        struct tenv e;
        /* A valid chain from the trusted CA, for other.example: only the name is wrong. */
        tls_up(&e, "tlsname", "other", "client", NULL);
        assert_refused(&e, 20);
}

Test(tls, verify_hostname_no_accepts_another_name)
{
        struct tenv e;
        tls_up(&e, "tlsnoname", "other", "client", "verify_hostname = no");
        cr_assert(h_log_wait(&e.k, "up: connected to ssl://", 10000), "uplink did not come up");
        publish_n(&e, 20);
        size_t n = count_after(&e.sub, 20, 10000, 300);
        cr_assert_eq(n, 20, "the center received %zu of 20", n);
        tls_down(&e);
        cr_assert_eq(final_counter(e.klog, "forwarded"), 20);
        h_cleanup(e.dir);
}

/* ---- the base broker's ACL -------------------------------------------------------------- */

/* A Paho client with a user name that counts what it receives and reports reason codes. */
struct cli {
        MQTTAsync c;
        pthread_mutex_t mu;
        int n;
        char topics[32][96];
        int done, rc; /* last request: finished?, reason code (or negative Paho code) */
};

static int cli_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        struct cli *c = ctx;
        (void)tlen;
        pthread_mutex_lock(&c->mu);
        if (c->n < 32)
                snprintf(c->topics[c->n], sizeof(c->topics[0]), "%s", topic);
        c->n++;
        pthread_mutex_unlock(&c->mu);
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static void cli_ok(void *ctx, MQTTAsync_successData5 *r)
{
        struct cli *c = ctx;
        pthread_mutex_lock(&c->mu);
        c->rc = r ? r->reasonCode : 0;
        c->done = 1;
        pthread_mutex_unlock(&c->mu);
}

static void cli_fail(void *ctx, MQTTAsync_failureData5 *r)
{
        struct cli *c = ctx;
        pthread_mutex_lock(&c->mu);
        /* A refused PUBACK/SUBACK carries its reason in reasonCode; a refused CONNACK
         * (Paho 1.3) in code; a Paho error is a negative code. */
        c->rc = !r ? -1 : r->reasonCode ? (int)r->reasonCode : r->code ? r->code : -1;
        c->done = 1;
        pthread_mutex_unlock(&c->mu);
}

static int cli_wait(struct cli *c)
{
        int64_t until = h_now_ms() + 5000;
        for (;;) {
                pthread_mutex_lock(&c->mu);
                int done = c->done, rc = c->rc;
                c->done = 0;
                pthread_mutex_unlock(&c->mu);
                if (done)
                        return rc;
                cr_assert(h_now_ms() < until, "no answer from the broker");
                h_sleep_ms(5);
        }
}

/* Connects (MQTT v5); returns the CONNACK reason code: 0 on success. */
static int cli_connect(struct cli *c, int port, const char *id, const char *user, const char *pass)
{
        char uri[64];
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        memset(c, 0, sizeof(*c));
        pthread_mutex_init(&c->mu, NULL);
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        cr_assert_eq(MQTTAsync_createWithOptions(&c->c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
        MQTTAsync_setCallbacks(c->c, c, NULL, cli_arrived, NULL);
        co.cleanstart = 1;
        co.username = user;
        co.password = pass;
        co.onSuccess5 = cli_ok;
        co.onFailure5 = cli_fail;
        co.context = c;
        cr_assert_eq(MQTTAsync_connect(c->c, &co), 0);
        return cli_wait(c);
}

static int cli_sub(struct cli *c, const char *filter)
{
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.onSuccess5 = cli_ok;
        ro.onFailure5 = cli_fail;
        ro.context = c;
        cr_assert_eq(MQTTAsync_subscribe(c->c, filter, 1, &ro), 0);
        return cli_wait(c);
}

/* QoS 1 publish; returns the PUBACK's reason code (0x10 "no matching subscribers" is
 * a success too). */
static int cli_pub(struct cli *c, const char *topic, const char *payload)
{
        MQTTAsync_message m = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        m.payload = (void *)payload;
        m.payloadlen = (int)strlen(payload);
        m.qos = 1;
        ro.onSuccess5 = cli_ok;
        ro.onFailure5 = cli_fail;
        ro.context = c;
        cr_assert_eq(MQTTAsync_sendMessage(c->c, topic, &m, &ro), 0);
        return cli_wait(c);
}

static int cli_count(struct cli *c)
{
        pthread_mutex_lock(&c->mu);
        int n = c->n;
        pthread_mutex_unlock(&c->mu);
        return n;
}

static void cli_close(struct cli *c)
{
        if (MQTTAsync_isConnected(c->c)) {
                MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
                o.timeout = 500;
                MQTTAsync_disconnect(c->c, &o);
                h_sleep_ms(20);
        }
        MQTTAsync_destroy(&c->c);
        pthread_mutex_destroy(&c->mu);
}

#define RC_OK(rc) ((rc) == 0 || (rc) == MQTTREASONCODE_NO_MATCHING_SUBSCRIBERS)

/* Starts mosquitto from config/mosquitto-base.conf as shipped, with only its port,
 * password file, ACL (config/mosquitto-base.acl itself) and persistence directory moved
 * into dir, debug logging (for the "Denied PUBLISH" lines) and "user root" added.
 * Accounts: kuimen/kpass, unit7/u7pass, unit8/u8pass. */
static void base_broker_start(struct h_broker *b, const char *dir)
{
        char in[PATH_MAX], line[1024];
        int seen = 0;
        memset(b, 0, sizeof(*b));
        b->port = h_free_port();
        snprintf(b->dir, sizeof(b->dir), "%s", dir);
        snprintf(b->conf, sizeof(b->conf), "%s/base.conf", dir);
        snprintf(b->p.log, sizeof(b->p.log), "%s/base.log", dir);
        snprintf(in, sizeof(in), "%s/config/mosquitto-base.conf", src_root());
        run("mosquitto_passwd -c -b '%s/kuimen.passwd' kuimen kpass && mosquitto_passwd -b '%s/kuimen.passwd' unit7 u7pass"
            " && mosquitto_passwd -b '%s/kuimen.passwd' unit8 u8pass",
            dir, dir, dir);
        FILE *f = fopen(in, "r"), *out = fopen(b->conf, "w");
        cr_assert(f && out, "%s: %s", in, strerror(errno));
        while (fgets(line, sizeof(line), f)) {
                if (strncmp(line, "listener 1883 127.0.0.1", 23) == 0)
                        fprintf(out, "listener %d 127.0.0.1\n", b->port), seen |= 1;
                else if (strncmp(line, "password_file ", 14) == 0)
                        fprintf(out, "password_file %s/kuimen.passwd\n", dir), seen |= 2;
                else if (strncmp(line, "acl_file ", 9) == 0)
                        fprintf(out, "acl_file %s/config/mosquitto-base.acl\n", src_root()), seen |= 4;
                else if (strncmp(line, "persistence_location ", 21) == 0)
                        fprintf(out, "persistence_location %s/\n", dir), seen |= 8;
                else if (strncmp(line, "pid_file ", 9) == 0)
                        continue;
                else
                        fputs(line, out);
        }
        fprintf(out, "\nuser root\nlog_type all\n");
        fclose(f);
        fclose(out);
        cr_assert_eq(seen, 15, "mosquitto-base.conf lacks a listener/password_file/acl_file/persistence_location line (%d)", seen);
        h_broker_restart(b);
}

Test(tls, base_broker_refuses_anonymous_and_bad_passwords)
{
        char dir[200];
        struct h_broker b;
        struct cli c;
        h_tmpdir(dir, sizeof(dir), "aclauth");
        base_broker_start(&b, dir);
        int rc = cli_connect(&c, b.port, "anon", NULL, NULL);
        cli_close(&c);
        cr_assert_eq(rc, MQTTREASONCODE_NOT_AUTHORIZED, "anonymous login: reason %d, want 0x87", rc);
        rc = cli_connect(&c, b.port, "unit7-term", "unit7", "wrong");
        cli_close(&c);
        cr_assert_eq(rc, MQTTREASONCODE_NOT_AUTHORIZED, "bad password: reason %d, want 0x87", rc);
        rc = cli_connect(&c, b.port, "unit7-term", "unit7", "u7pass");
        cli_close(&c);
        cr_assert_eq(rc, 0, "good password: reason %d", rc);
        h_stop(&b.p, SIGTERM);
        h_cleanup(dir);
}

Test(tls, unit_publishes_only_its_own_topics)
{
        char dir[200];
        struct h_broker b;
        struct cli kuimen, unit7, unit8;
        static const char *const allowed[] = { "pos/unit7", "sensors/unit7/gas", "sensors/unit7/gas/ch4",
                                               "alert/unit7/sos", "call/unit7/answer" };
        static const char *const denied[] = { "pos/unit8",       "pos/unit7/x", "sensors/unit8/gas",
                                              "alert/unit8/sos", "status/unit7", "cmd/unit8/stop",
                                              "cmd/unit7/ack",   "sensors",     "call/unit8/answer",
                                              "call/unit7",      "call/unit8" };
        const int na = sizeof(allowed) / sizeof(*allowed), nd = sizeof(denied) / sizeof(*denied);
        h_tmpdir(dir, sizeof(dir), "aclpub");
        base_broker_start(&b, dir);
        cr_assert_eq(cli_connect(&kuimen, b.port, "kuimen-north", "kuimen", "kpass"), 0);
        cr_assert_eq(cli_connect(&unit7, b.port, "unit7-term", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&unit8, b.port, "unit8-term", "unit8", "u8pass"), 0);
        /* What kuimen reads (its [local] subscribe, and the answers to calls), and unit8's
         * own commands and calls. */
        const char *const filters[] = { "sensors/#", "pos/#", "alert/#", "status/#", "call/+/answer" };
        for (int i = 0; i < 5; i++)
                cr_assert_eq(cli_sub(&kuimen, filters[i]), 1, "SUBACK for %s (granted QoS 1)", filters[i]);
        cr_assert_eq(cli_sub(&unit8, "cmd/unit8/#"), 1);
        cr_assert_eq(cli_sub(&unit8, "call/unit8"), 1);

        for (int i = 0; i < na; i++) {
                int rc = cli_pub(&unit7, allowed[i], "ok");
                cr_assert(RC_OK(rc), "unit7 publishing %s: reason %d", allowed[i], rc);
        }
        for (int i = 0; i < nd; i++) {
                int rc = cli_pub(&unit7, denied[i], "forged");
                cr_assert_eq(rc, MQTTREASONCODE_NOT_AUTHORIZED, "unit7 publishing %s: reason %d, want 0x87", denied[i], rc);
        }
        h_sleep_ms(500);
        cr_assert_eq(cli_count(&kuimen), na, "kuimen received %d, want exactly the %d allowed", cli_count(&kuimen), na);
        for (int i = 0; i < na; i++)
                cr_assert_str_eq(kuimen.topics[i], allowed[i]);
        cr_assert_eq(cli_count(&unit8), 0, "a forged command or call reached unit8");
        cr_assert_eq(grep2(b.p.log, "Denied PUBLISH from unit7-term", NULL), nd, "broker log: %s", b.p.log);
        cli_close(&unit7);
        cli_close(&unit8);
        cli_close(&kuimen);
        h_stop(&b.p, SIGTERM);
        h_cleanup(dir);
}

Test(tls, unit_reads_only_its_own_commands)
{
        char dir[200];
        struct h_broker b;
        struct cli kuimen, own, snoop, wild, readings, unit8;
        h_tmpdir(dir, sizeof(dir), "aclread");
        base_broker_start(&b, dir);
        cr_assert_eq(cli_connect(&kuimen, b.port, "kuimen-north", "kuimen", "kpass"), 0);
        cr_assert_eq(cli_connect(&own, b.port, "unit7-own", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&snoop, b.port, "unit7-snoop", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&wild, b.port, "unit7-wild", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&readings, b.port, "unit7-readings", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&unit8, b.port, "unit8-term", "unit8", "u8pass"), 0);
        /* Mosquitto 2.0 grants every subscription and filters each message by the ACL. */
        cr_assert_eq(cli_sub(&own, "cmd/unit7/#"), 1);
        cr_assert_eq(cli_sub(&snoop, "cmd/unit8/#"), 1);
        cr_assert_eq(cli_sub(&wild, "cmd/#"), 1);
        cr_assert_eq(cli_sub(&readings, "sensors/#"), 1);
        cr_assert_eq(cli_sub(&unit8, "cmd/unit8/#"), 1);

        cr_assert(RC_OK(cli_pub(&kuimen, "cmd/unit7/go", "1")));
        cr_assert(RC_OK(cli_pub(&kuimen, "cmd/unit8/go", "2")));
        cr_assert(RC_OK(cli_pub(&kuimen, "cmd/unit8/stop", "3")));
        cr_assert(RC_OK(cli_pub(&unit8, "sensors/unit8/gas", "4")));
        h_sleep_ms(500);
        cr_assert_eq(cli_count(&own), 1);
        cr_assert_str_eq(own.topics[0], "cmd/unit7/go");
        cr_assert_eq(cli_count(&snoop), 0, "unit7 read %d of unit8's commands", cli_count(&snoop));
        cr_assert_eq(cli_count(&wild), 1, "unit7 on cmd/# got %d, want only its own", cli_count(&wild));
        cr_assert_str_eq(wild.topics[0], "cmd/unit7/go");
        cr_assert_eq(cli_count(&readings), 0, "unit7 read another unit's readings");
        cr_assert_eq(cli_count(&unit8), 2);
        /* Calls alike: unit7 on call/+ gets its own call only; kuimen reads answers. */
        struct cli calls7, answers;
        cr_assert_eq(cli_connect(&calls7, b.port, "unit7-calls", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&answers, b.port, "kuimen-answers", "kuimen", "kpass"), 0);
        cr_assert_eq(cli_sub(&calls7, "call/+"), 1);
        cr_assert_eq(cli_sub(&answers, "call/+/answer"), 1);
        cr_assert(RC_OK(cli_pub(&kuimen, "call/unit7", "{\"id\":\"c1\"}")));
        cr_assert(RC_OK(cli_pub(&kuimen, "call/unit8", "{\"id\":\"c1\"}")));
        cr_assert(RC_OK(cli_pub(&unit8, "call/unit8/answer", "{\"id\":\"c1\",\"status\":\"done\"}")));
        h_sleep_ms(500);
        cr_assert_eq(cli_count(&calls7), 1, "unit7 on call/+ got %d calls, want only its own", cli_count(&calls7));
        cr_assert_str_eq(calls7.topics[0], "call/unit7");
        cr_assert_eq(cli_count(&answers), 1);
        cr_assert_str_eq(answers.topics[0], "call/unit8/answer");
        cli_close(&calls7);
        cli_close(&answers);
        cli_close(&own);
        cli_close(&snoop);
        cli_close(&wild);
        cli_close(&readings);
        cli_close(&unit8);
        cli_close(&kuimen);
        h_stop(&b.p, SIGTERM);
        h_cleanup(dir);
}

/* The real kuimen logs in as "kuimen" at the ACL'd base broker: a unit's own readings
 * go up, its forgeries do not, and a command from the center reaches only its unit. */
Test(tls, kuimen_bridges_through_the_base_acl)
{
        char dir[200], conf[300], klog[300];
        struct h_broker base, center;
        struct h_proc k;
        struct h_sub sub;
        struct h_pub center_pub;
        struct cli unit7, unit8;
        h_tmpdir(dir, sizeof(dir), "aclkuimen");
        base_broker_start(&base, dir);
        h_broker_start(&center, dir, 0, NULL);
        /* kuimen/north/<class>/<unit>/<x>: readings, alerts and forgeries alike, but not
         * kuimen's own link status (kuimen/north/link/center). */
        h_sub_start(&sub, center.port, "center-sub", "kuimen/north/+/+/+", false);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        h_write_conf(conf, "north", dir, base.port, center.port, NULL);
        /* h_write_conf's [local] section is followed by [link center]: add the login there. */
        char text[4096];
        FILE *f = fopen(conf, "r");
        size_t len = fread(text, 1, sizeof(text) - 1, f);
        fclose(f);
        text[len] = 0;
        char *link = strstr(text, "[link center]");
        cr_assert(link);
        f = fopen(conf, "w");
        fprintf(f, "%.*susername = kuimen\npassword = kpass\n%s", (int)(link - text), text, link);
        fclose(f);
        const char *args[] = { "--config", conf, "--log-level", "debug", NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "ingest: connected", 10000), "kuimen did not log in at the base broker");
        cr_assert(h_log_wait(&k, "down: connected", 10000));
        cr_assert_eq(h_log_count(&k, "refused subscription"), 0);

        cr_assert_eq(cli_connect(&unit7, base.port, "unit7-term", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_connect(&unit8, base.port, "unit8-term", "unit8", "u8pass"), 0);
        cr_assert_eq(cli_sub(&unit7, "cmd/unit7/#"), 1);
        cr_assert_eq(cli_sub(&unit8, "cmd/#"), 1);
        for (int i = 0; i < 5; i++) {
                char p[16];
                snprintf(p, sizeof(p), "reading%d", i);
                cr_assert(RC_OK(cli_pub(&unit7, "sensors/unit7/gas", p)));
        }
        cr_assert(RC_OK(cli_pub(&unit7, "alert/unit7/sos", "sos")));
        for (int i = 0; i < 3; i++)
                cr_assert_eq(cli_pub(&unit7, "sensors/unit8/gas", "forged"), MQTTREASONCODE_NOT_AUTHORIZED);

        h_pub_start(&center_pub, center.port, "center-pub");
        cr_assert_eq(h_pub_send(&center_pub, "kuimen/north/cmd/unit7/go", "c1"), 0);
        cr_assert_eq(h_pub_send(&center_pub, "kuimen/north/cmd/unit7/go", "c2"), 0);
        cr_assert(h_pub_flush(&center_pub, 5000));

        h_sub_wait(&sub, 8, 10000);
        h_sleep_ms(1000);
        pthread_mutex_lock(&sub.mu);
        size_t total = sub.total, gas = 0, sos = 0, cmd = 0;
        for (size_t i = 0; i < sub.n; i++) {
                gas += strcmp(sub.rx[i].topic, "kuimen/north/sensors/unit7/gas") == 0;
                sos += strcmp(sub.rx[i].topic, "kuimen/north/alert/unit7/sos") == 0;
                cmd += strcmp(sub.rx[i].topic, "kuimen/north/cmd/unit7/go") == 0; /* the center's own */
        }
        pthread_mutex_unlock(&sub.mu);
        cr_assert_eq(gas, 5);
        cr_assert_eq(sos, 1);
        cr_assert_eq(cmd, 2);
        cr_assert_eq(total, 8, "the center saw %zu messages: want unit7's 6 and its own 2 commands, no forgery", total);
        cr_assert_eq(sub.n, 8);
        int64_t until = h_now_ms() + 10000;
        while (cli_count(&unit7) < 2 && h_now_ms() < until)
                h_sleep_ms(20);
        h_sleep_ms(300);
        cr_assert_eq(cli_count(&unit7), 2, "unit7 got %d of its 2 commands", cli_count(&unit7));
        cr_assert_str_eq(unit7.topics[0], "cmd/unit7/go");
        cr_assert_eq(cli_count(&unit8), 0, "unit8 read unit7's commands");

        h_pub_stop(&center_pub);
        cli_close(&unit7);
        cli_close(&unit8);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 (status %d)", st);
        h_sub_stop(&sub);
        h_stop(&base.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        /* kuimen's own retained link status on the base broker is allowed too. */
        cr_assert_geq(grep2(base.p.log, "Received PUBLISH from kuimen-north ", "'kuimen/north/link/center'"), 1);
        cr_assert_eq(grep2(base.p.log, "Denied PUBLISH from kuimen-north", NULL), 0, "base broker log: %s", base.p.log);
        cr_assert_eq(grep2(base.p.log, "Denied PUBLISH from unit7-term", NULL), 3);
        h_cleanup(dir);
}

/* A broker that refuses one of kuimen's messages for good must not hold the link down:
 * with topic_prefix "field", which the shipped ACL does not let kuimen write, the base
 * broker refuses the retained link and node status (PUBACK 0x87). They are set aside,
 * counted and logged, and the center's commands still reach their unit. */
Test(tls, refused_messages_do_not_block_the_local_link)
{
        char dir[200], conf[300], klog[300], text[4096];
        struct h_broker base, center;
        struct h_proc k;
        struct h_pub center_pub;
        struct cli unit7;
        h_tmpdir(dir, sizeof(dir), "aclrefused");
        base_broker_start(&base, dir);
        h_broker_start(&center, dir, 0, NULL);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        h_write_conf(conf, "north", dir, base.port, center.port, NULL);
        FILE *f = fopen(conf, "r");
        size_t len = fread(text, 1, sizeof(text) - 1, f);
        fclose(f);
        text[len] = 0;
        char *link = strstr(text, "[link center]"), *prefix = strstr(text, "topic_prefix = kuimen\n");
        cr_assert(link && prefix && prefix > link);
        f = fopen(conf, "w");
        fprintf(f, "%.*susername = kuimen\npassword = kpass\n%.*stopic_prefix = field\n%s", (int)(link - text), text,
                (int)(prefix - link), link, prefix + strlen("topic_prefix = kuimen\n"));
        fclose(f);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "ingest: connected", 10000));
        cr_assert(h_log_wait(&k, "down: connected", 10000));
        cr_assert(h_log_wait(&k, "refused it on link local (Not authorized)", 10000), "the refused status is logged");

        cr_assert_eq(cli_connect(&unit7, base.port, "unit7-term", "unit7", "u7pass"), 0);
        cr_assert_eq(cli_sub(&unit7, "cmd/unit7/#"), 1);
        h_pub_start(&center_pub, center.port, "center-pub");
        cr_assert_eq(h_pub_send(&center_pub, "field/north/cmd/unit7/go", "c1"), 0);
        cr_assert(h_pub_flush(&center_pub, 5000));
        int64_t until = h_now_ms() + 10000;
        while (cli_count(&unit7) < 1 && h_now_ms() < until)
                h_sleep_ms(20);
        cr_assert_eq(cli_count(&unit7), 1, "the command reached unit7 past the refused status");
        cr_assert_eq(h_log_count(&k, "local: up -> down"), 0, "the local link never went down");

        h_pub_stop(&center_pub);
        cli_close(&unit7);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        h_stop(&base.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        /* The link status and the node status, each refused once: nothing retried. */
        cr_assert_eq(grep2(base.p.log, "Denied PUBLISH from kuimen-north", "'field/north/link/center'"), 1);
        cr_assert_eq(grep2(base.p.log, "Denied PUBLISH from kuimen-north", "'field/north/status'"), 1);
        cr_assert_eq(final_counter(klog, "refused"), 2);
        cr_assert_eq(final_counter(klog, "set_aside"), 2);
        cr_assert_eq(final_counter(klog, "set_aside_held"), 2);
        cr_assert_eq(final_counter(klog, "spooled"), 0);
        h_cleanup(dir);
}

/* The center broker with config/mosquitto-center.acl as shipped (issue 12, item 4):
 * base north publishes only under kuimen/north/ and reads only kuimen/north/cmd/;
 * the center's kuimen relays under any base's name and reads every base's commands. */
Test(tls, center_acl_base_speaks_only_for_itself)
{
        char dir[200];
        struct h_broker b;
        struct cli north, ctr, ops, north_cmds, north_all;
        memset(&b, 0, sizeof(b));
        h_tmpdir(dir, sizeof(dir), "aclcenter");
        b.port = h_free_port();
        snprintf(b.dir, sizeof(b.dir), "%s", dir);
        snprintf(b.conf, sizeof(b.conf), "%s/center.conf", dir);
        snprintf(b.p.log, sizeof(b.p.log), "%s/center.log", dir);
        run("mosquitto_passwd -c -b '%s/center.passwd' north npass && mosquitto_passwd -b '%s/center.passwd' south spass"
            " && mosquitto_passwd -b '%s/center.passwd' kuimen-center cpass && mosquitto_passwd -b '%s/center.passwd' ops-console opass",
            dir, dir, dir, dir);
        FILE *f = fopen(b.conf, "w");
        cr_assert(f);
        fprintf(f, "listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s/center.passwd\n"
                   "acl_file %s/config/mosquitto-center.acl\npersistence false\nuser root\nlog_type all\n",
                b.port, dir, src_root());
        fclose(f);
        h_broker_restart(&b);
        cr_assert_eq(cli_connect(&north, b.port, "north", "north", "npass"), 0);
        cr_assert_eq(cli_connect(&north_cmds, b.port, "north-cmds", "north", "npass"), 0);
        cr_assert_eq(cli_connect(&north_all, b.port, "north-all", "north", "npass"), 0);
        cr_assert_eq(cli_connect(&ctr, b.port, "kuimen-center", "kuimen-center", "cpass"), 0);
        cr_assert_eq(cli_connect(&ops, b.port, "ops", "ops-console", "opass"), 0);
        cr_assert_eq(cli_sub(&north_cmds, "kuimen/north/cmd/#"), 1);
        cr_assert_eq(cli_sub(&north_all, "kuimen/#"), 1);

        cr_assert(RC_OK(cli_pub(&north, "kuimen/north/alert/gas", "mine")));
        cr_assert_eq(cli_pub(&north, "kuimen/south/alert/gas", "forged"), MQTTREASONCODE_NOT_AUTHORIZED);
        cr_assert_eq(cli_pub(&north, "kuimen/south/cmd/evacuate", "forged"), MQTTREASONCODE_NOT_AUTHORIZED);
        cr_assert_eq(cli_pub(&north, "other/north/x", "forged"), MQTTREASONCODE_NOT_AUTHORIZED);
        cr_assert(RC_OK(cli_pub(&ctr, "kuimen/south/alert/gas", "relayed")), "the center relays under a base's name");
        cr_assert(RC_OK(cli_pub(&ops, "kuimen/north/cmd/u1/go", "1")));
        cr_assert(RC_OK(cli_pub(&ops, "kuimen/south/cmd/u1/go", "2")));
        h_sleep_ms(500);
        cr_assert_eq(cli_count(&north_cmds), 1);
        cr_assert_str_eq(north_cmds.topics[0], "kuimen/north/cmd/u1/go");
        cr_assert_eq(cli_count(&north_all), 1, "north on kuimen/# reads only its own commands (%d)", cli_count(&north_all));
        cli_close(&north);
        cli_close(&north_cmds);
        cli_close(&north_all);
        cli_close(&ctr);
        cli_close(&ops);
        h_stop(&b.p, SIGTERM);
        h_cleanup(dir);
}

/* SPDX-License-Identifier: MIT */
/* kuimenctl and /metrics against the real kuimen between real brokers: exact outputs and counts. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* ---- cJSON ----------------------------------------------------------------------- */

/* A JSON path like "links.0.name" (numbers index arrays); NULL when absent. */
static const cJSON *jpath(const cJSON *j, const char *path)
{
        char buf[128], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", path);
        for (char *t = strtok_r(buf, ".", &save); j && t; t = strtok_r(NULL, ".", &save))
                j = (*t >= '0' && *t <= '9') ? cJSON_GetArrayItem(j, atoi(t)) : cJSON_GetObjectItemCaseSensitive(j, t);
        return j;
}

static const char *jstr(const cJSON *j, const char *path)
{
        const cJSON *v = jpath(j, path);
        cr_assert(v && (v->type & 0xff) == cJSON_String, "%s: not a string", path);
        return v->valuestring;
}

static double jnum(const cJSON *j, const char *path)
{
        const cJSON *v = jpath(j, path);
        cr_assert(v && (v->type & 0xff) == cJSON_Number, "%s: not a number", path);
        return v->valuedouble;
}

/* The depth of one class in a status reply, or -1. */
static double class_depth(const cJSON *r, const char *name)
{
        const cJSON *cls = jpath(r, "spool.classes");
        for (int i = 0; cls && i < cJSON_GetArraySize(cls); i++)
                if (strcmp(jstr(cJSON_GetArrayItem(cls, i), "name"), name) == 0)
                        return jnum(cJSON_GetArrayItem(cls, i), "depth");
        return -1;
}

/* ---- the setup ------------------------------------------------------------------- */

struct env {
        char dir[200], conf[300], klog[300], sock[300];
        int mport;
        struct h_broker local, center;
        struct h_proc k;
        struct h_pub pub;
};

/* Runs kuimenctl with args (stdout and stderr into out); returns its exit code. */
static int ctl(const char *sock, const char *args, char *out, size_t n)
{
        char cmd[1024];
        size_t len = 0;
        snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s 2>&1", h_ctl_path(), sock, args);
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        while (len + 1 < n && !feof(f))
                len += fread(out + len, 1, n - 1 - len, f);
        out[len] = '\0';
        int st = pclose(f);
        cr_assert(WIFEXITED(st), "kuimenctl died (%d)", st);
        return WEXITSTATUS(st);
}

/* status --json (or spool --json), parsed; the caller deletes it. */
static cJSON *ctl_json(struct env *e, const char *what)
{
        static char out[1 << 16];
        char args[64];
        snprintf(args, sizeof(args), "%s --json", what);
        int rc = ctl(e->sock, args, out, sizeof(out));
        cr_assert_eq(rc, 0, "kuimenctl %s: exit %d: %s", args, rc, out);
        cJSON *r = cJSON_Parse(out);
        cr_assert(r, "not JSON: %s", out);
        return r;
}

/* Waits until the first link's state is (or is not) state. */
static bool wait_link(struct env *e, const char *state, bool is, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                cJSON *r = ctl_json(e, "status");
                bool match = (strcmp(jstr(r, "links.0.state"), state) == 0) == is;
                cJSON_Delete(r);
                if (match)
                        return true;
                h_sleep_ms(50);
        }
        return false;
}

/* Waits until the spool is empty: after a link comes up, its status message (class
 * status) is on its way, and exact counts start after it. */
static bool wait_empty(struct env *e, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        for (;;) {
                cJSON *r = ctl_json(e, "status");
                double depth = jnum(r, "spool.depth"), inflight = jnum(r, "links.0.inflight");
                cJSON_Delete(r);
                if (!depth && !inflight)
                        return true;
                if (h_now_ms() > until)
                        return false;
                h_sleep_ms(50);
        }
}

/* A socket file nobody listens on, as a killed kuimen leaves it. */
static void stale_socket(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s", path);
        close(fd);
}

/* up() with link_keys added to [link center] and, when live, kuimen --live. */
static void up_with(struct env *e, const char *tag, const char *link_keys, bool live)
{
        char extra[800];
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        snprintf(e->sock, sizeof(e->sock), "%s/kuimen.sock", e->dir);
        h_broker_start(&e->local, e->dir, 0, NULL);
        int cport = h_free_port();
        e->mport = h_free_port();
        snprintf(extra, sizeof(extra), "%s[control]\nsocket = %s\n[metrics]\nlisten = 127.0.0.1:%d\n", link_keys, e->sock,
                 e->mport);
        h_write_conf(e->conf, "north", e->dir, e->local.port, cport, extra);
        h_broker_start(&e->center, e->dir, cport, NULL);
        stale_socket(e->sock);
        const char *args[] = { "--config", e->conf, live ? "--live" : NULL, NULL };
        h_kuimen_start(&e->k, e->klog, args);
        cr_assert(h_log_wait(&e->k, "control: listening on", 10000), "no control socket");
        cr_assert(wait_link(e, "up", true, 10000), "the center link did not come up");
        cr_assert(wait_empty(e, 10000), "the spool did not empty after start");
        /* The node status goes upward again 100 ms after the link came up
         * (daemon.c, on_link_state): let it leave before a test counts messages. */
        h_sleep_ms(300);
        cr_assert(wait_empty(e, 10000), "the spool did not empty after the announce");
        h_pub_start(&e->pub, e->local.port, "sensor-pub");
}

static void up(struct env *e, const char *tag)
{
        up_with(e, tag, "", false);
}

static void down(struct env *e)
{
        h_pub_stop(&e->pub);
        if (e->k.pid) {
                int st = h_stop(&e->k, SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        }
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
        h_cleanup(e->dir);
}

static void publish(struct env *e, const char *prefix, int count)
{
        for (int i = 0; i < count; i++) {
                char topic[64], payload[32];
                snprintf(topic, sizeof(topic), "%s%d", prefix, i);
                snprintf(payload, sizeof(payload), "v%d", i);
                while (h_pub_send(&e->pub, topic, payload) != 0)
                        h_sleep_ms(5);
        }
        cr_assert(h_pub_flush(&e->pub, 10000));
}

/* ---- metrics --------------------------------------------------------------------- */

/* GET path from /metrics's port; returns the whole response (headers and body). */
static char *http_get(int port, const char *path)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        char req[256];
        size_t len = 0, cap = 1 << 18;
        char *buf = malloc(cap);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to metrics port %d", port);
        int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n", path);
        cr_assert_eq(send(fd, req, (size_t)n, 0), n);
        for (ssize_t r; len + 1 < cap && (r = recv(fd, buf + len, cap - 1 - len, 0)) > 0;)
                len += (size_t)r;
        close(fd);
        buf[len] = '\0';
        return buf;
}

/* The value of one series ("name" or "name{labels}") in an exposition; asserts it is
 * there exactly once. */
static double metric(const char *text, const char *series)
{
        char key[200];
        snprintf(key, sizeof(key), "\n%s ", series);
        const char *p = strstr(text, key);
        cr_assert(p, "no series %s", series);
        cr_assert(!strstr(p + 1, key), "series %s twice", series);
        return strtod(p + strlen(key), NULL);
}

static double forwarded(struct env *e)
{
        char *m = http_get(e->mport, "/metrics");
        double v = metric(m, "kuimen_messages_forwarded_total");
        free(m);
        return v;
}

TestSuite(control, .timeout = 120);

Test(control, status_links_spool_and_backlog)
{
        static char out[1 << 16];
        struct env e;
        struct stat st;
        up(&e, "ctl");

        /* The stale socket file was replaced, with the mode the group needs. */
        cr_assert_eq(stat(e.sock, &st), 0);
        cr_assert(S_ISSOCK(st.st_mode));
        cr_assert_eq(st.st_mode & 0777, 0660);

        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 0, "%s", out);
        cr_assert(strncmp(out, "node north (base), up ", 22) == 0, "%s", out);
        cr_assert(strstr(out, "\ncenter  up    up "), "no center line:\n%s", out);
        cr_assert(strstr(out, "\ntelemetry  "), "no telemetry class:\n%s", out);
        cr_assert(strstr(out, "\ncounters: in="), "%s", out);
        cr_assert(!strstr(out, "\ncenter: sent="), "the counters of each link are in links:\n%s", out);
        cr_assert_eq(ctl(e.sock, "links", out, sizeof(out)), 0, "%s", out);
        cr_assert(strstr(out, "\ncenter  up    up "), "%s", out);
        cr_assert(strstr(out, "\ncenter: sent="), "%s", out);
        cr_assert(strstr(out, " signal=- transitions="), "%s", out);
        cr_assert(!strstr(out, "spool:"), "links shows only links:\n%s", out);

        cJSON *r = ctl_json(&e, "status");
        cr_assert_str_eq(jstr(r, "node"), "north");
        cr_assert_str_eq(jstr(r, "role"), "base");
        cr_assert_str_eq(jstr(r, "links.0.name"), "center");
        cr_assert_str_eq(jstr(r, "links.0.state"), "up");
        cr_assert_str_eq(jstr(r, "links.0.reason"), "connected");
        cr_assert_str_eq(jstr(r, "links.1.name"), "local");
        cr_assert_eq(jnum(r, "spool.depth"), 0);
        cr_assert_eq(jnum(r, "spool.oldest_age_s"), 0);
        cr_assert_eq(cJSON_GetArraySize(jpath(r, "positions")), 0);
        cr_assert_eq(jpath(r, "gnss")->type & 0xff, cJSON_NULL);
        cr_assert_eq(class_depth(r, "telemetry"), 0);
        cJSON_Delete(r);

        /* A backlog of known size: the center away, 20 readings and one alert. */
        h_stop(&e.center.p, SIGTERM);
        cr_assert(wait_link(&e, "up", false, 10000), "the center link stayed up");
        publish(&e, "sensors/t", 20);
        publish(&e, "alert/a", 1);
        int64_t until = h_now_ms() + 5000;
        for (;;) {
                r = ctl_json(&e, "spool");
                if ((class_depth(r, "telemetry") == 20 && class_depth(r, "alert") == 1) || h_now_ms() > until)
                        break;
                cJSON_Delete(r);
                h_sleep_ms(50);
        }
        cr_assert_eq(class_depth(r, "telemetry"), 20);
        cr_assert_eq(class_depth(r, "alert"), 1);
        /* Link status messages (class status) may be queued as well: the total is the
         * sum of the classes, and holds our 21. */
        double sum = 0;
        const cJSON *cls = jpath(r, "spool.classes");
        for (int i = 0; i < cJSON_GetArraySize(cls); i++)
                sum += jnum(cJSON_GetArrayItem(cls, i), "depth");
        cr_assert_eq(jnum(r, "spool.depth"), sum);
        cr_assert_eq(jnum(r, "spool.depth"), 21 + class_depth(r, "status"));
        cr_assert(jnum(r, "spool.bytes") > 0);
        cr_assert(jnum(r, "spool.oldest_age_s") > 0);
        /* The head: the alert leaves first. */
        cr_assert_eq(cJSON_GetArraySize(jpath(r, "spool.head")), 1);
        cr_assert_str_eq(jstr(r, "spool.head.0.class"), "alert");
        cr_assert_str_eq(jstr(r, "spool.head.0.topic"), "alert/a0");
        cr_assert_eq(jnum(r, "spool.head.0.bytes"), 2);
        cr_assert_eq(jnum(r, "spool.head.0.priority"), 0);
        cJSON_Delete(r);
        cr_assert_eq(ctl(e.sock, "spool", out, sizeof(out)), 0, "%s", out);
        cr_assert(strstr(out, "\nnext to leave (up, priority 0):\n"), "%s", out);
        cr_assert(strstr(out, "  alert/a0\n"), "%s", out);
        cr_assert(strstr(out, "\ncenter  up    down "), "%s", out);

        /* The center back: the backlog drains to nothing. */
        h_broker_restart(&e.center);
        cr_assert(wait_link(&e, "up", true, 15000));
        cr_assert(wait_empty(&e, 10000), "the backlog did not drain");
        down(&e);
}

/* ---- a drain an operator can follow (issue 13, item 6) ---------------------------- */

/* The line of out that starts with prefix (copied into line), or false. */
static bool line_of(const char *out, const char *prefix, char *line, size_t n)
{
        for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
                if (strncmp(p, prefix, strlen(prefix)) == 0) {
                        snprintf(line, n, "%.*s", (int)strcspn(p, "\n"), p);
                        return true;
                }
        return false;
}

struct drain_seen {
        double depth, rate, eta; /* eta -1: null */
        bool draining;
};

/* A backlog of 2 000 readings with the center cut, then the center back behind a budget
 * of 500 messages a second (about 4 s of drain): status says why the link is down and
 * what waits by class and by link; while it drains, the rate and the time left, and
 * they agree with the budget and the backlog; nothing once it is drained. kuimen --live
 * says the same, in 80 columns. */
Test(control, drain_rate_time_left_and_live_view)
{
        static char out[1 << 16];
        static struct drain_seen seen[400];
        char line[300];
        size_t nseen = 0;
        struct env e;
        const int N = 2000;

        setenv("COLUMNS", "80", 1); /* kuimen's stdout is its log, no terminal: wrap as on one */
        up_with(&e, "drain", "hold = 500ms\nbudget_messages = 500\nbudget_interval = 1s\n", true);
        int64_t t_start = h_now_ms();
        cr_assert(h_log_wait(&e.k, "  center  up    up ", 5000), "--live shows the link");

        h_stop(&e.center.p, SIGTERM);
        cr_assert(wait_link(&e, "down", true, 10000), "the center link stayed up");
        publish(&e, "sensors/d", N);
        cJSON *r = NULL;
        int64_t until = h_now_ms() + 10000;
        for (;;) {
                r = ctl_json(&e, "status");
                if (class_depth(r, "telemetry") == N || h_now_ms() > until)
                        break;
                cJSON_Delete(r);
                h_sleep_ms(50);
        }
        /* The link's state, why, and since when; the backlog by class and by link. */
        cr_assert_eq(class_depth(r, "telemetry"), N);
        cr_assert_str_eq(jstr(r, "links.0.state"), "down");
        char reason[200];
        snprintf(reason, sizeof(reason), "%s", jstr(r, "links.0.reason"));
        cr_assert(strcmp(reason, "connection lost") == 0 || strcmp(reason, "cannot connect") == 0, "reason %s", reason);
        cr_assert(jnum(r, "links.0.since_s") > 0);
        double up_depth = jnum(r, "spool.up.depth");
        cr_assert_eq(up_depth, N + class_depth(r, "status"));
        cr_assert_eq(jnum(r, "links.0.backlog"), up_depth, "the center link may carry every class");
        cr_assert_str_eq(jstr(r, "links.1.name"), "local");
        cr_assert_eq(jnum(r, "links.1.backlog"), 0);
        cr_assert(cJSON_IsFalse(jpath(r, "spool.draining")), "no drain while the link is down");
        cr_assert_eq(jnum(r, "spool.drain_rate"), 0);
        cr_assert(cJSON_IsNull(jpath(r, "spool.drain_eta_s")));
        cr_assert(cJSON_IsFalse(jpath(r, "spool.up.draining")));
        cJSON_Delete(r);
        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 0, "%s", out);
        cr_assert(line_of(out, "center  up    down ", line, sizeof(line)), "%s", out);
        cr_assert(strstr(line, reason), "the reason on the link's row: %s", line);
        cr_assert(line_of(out, "telemetry     4      2000  ", line, sizeof(line)), "%s", out);
        cr_assert(!strstr(out, "draining"), "%s", out);
        /* --live: the link down with its backlog, the backlog by class. */
        cr_assert(h_log_wait(&e.k, "  center  up    down ", 3000), "--live shows the link down");
        cr_assert(h_log_wait(&e.k, "telemetry 2000", 3000), "--live shows the backlog by class");

        /* The center back: follow the drain. */
        int64_t t_cut = h_now_ms();
        h_broker_restart(&e.center);
        int64_t t0 = h_now_ms();
        bool text_checked = false, metrics_checked = false;
        until = h_now_ms() + 30000;
        for (;;) {
                r = ctl_json(&e, "status");
                struct drain_seen d = { jnum(r, "spool.depth"), jnum(r, "spool.drain_rate"), -1,
                                        cJSON_IsTrue(jpath(r, "spool.draining")) };
                if (cJSON_IsNumber(jpath(r, "spool.drain_eta_s")))
                        d.eta = jnum(r, "spool.drain_eta_s");
                cJSON_Delete(r);
                if (nseen < sizeof(seen) / sizeof(seen[0]))
                        seen[nseen++] = d;
                if (d.draining && d.depth >= 1000 && !text_checked) {
                        /* The operator's words for the same, from the same daemon. */
                        double rate = 0, left = -1;
                        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 0, "%s", out);
                        cr_assert(line_of(out, "draining ", line, sizeof(line)), "no drain line:\n%s", out);
                        cr_assert_eq(sscanf(line, "draining %lf msg/s, ~%lf s left", &rate, &left), 2, "%s", line);
                        /* The rate is the machine's (148 msg/s seen under ASan on a loaded
                         * machine), bounded by the link's 500/s; the time left must be the
                         * backlog at that rate. */
                        cr_assert(rate > 0 && rate <= 1000, "%s", line);
                        char sl[200];
                        double depth = -1;
                        cr_assert(line_of(out, "spool: ", sl, sizeof(sl)) && sscanf(sl, "spool: %lf messages", &depth) == 1,
                                  "%s", out);
                        double want = depth / rate;
                        cr_assert(left >= 0 && fabs(left - want) <= (want > 4 ? want / 2 : 2),
                                  "%s: %g messages at %g msg/s is %g s", line, depth, rate, want);
                        cr_assert(line_of(out, "center  up    up ", line, sizeof(line)), "%s", out);
                        text_checked = true;
                }
                if (d.draining && d.depth >= 1000 && !metrics_checked) {
                        char *m = http_get(e.mport, "/metrics");
                        cr_assert(metric(m, "kuimen_spool_drain_rate") > 0);
                        cr_assert(metric(m, "kuimen_spool_drain_eta_seconds") >= 0);
                        double lb = metric(m, "kuimen_link_backlog_messages{link=\"center\"}");
                        cr_assert(lb > 0 && lb <= up_depth, "backlog %f", lb);
                        cr_assert_eq(metric(m, "kuimen_link_backlog_messages{link=\"local\"}"), 0);
                        free(m);
                        metrics_checked = true;
                }
                if (d.depth == 0)
                        break;
                cr_assert(h_now_ms() < until, "the backlog did not drain (%.0f left)", d.depth);
                h_sleep_ms(200);
        }
        double took = (double)(h_now_ms() - t0) / 1000.0;
        fprintf(stderr, "drain: cut and backlog %.1f s, reconnect and drain %.1f s\n", (double)(t_cut - t_start) / 1000.0,
                took);
        cr_assert(text_checked && metrics_checked, "no status while it drained (%zu samples in %.1f s)", nseen, took);

        /* The rate is the budget's (500 a budget_interval of at least a second), and the
         * time left agrees with the backlog at that rate and shrinks as it drains. */
        double rates[400], first_eta = -1, last_eta = -1;
        size_t nd = 0;
        for (size_t i = 0; i < nseen; i++) {
                if (!seen[i].draining)
                        continue;
                cr_assert(seen[i].rate > 0);
                rates[nd++] = seen[i].rate;
                if (seen[i].depth >= 500) {
                        cr_assert(seen[i].eta >= 0, "no time left at depth %.0f", seen[i].depth);
                        cr_assert(seen[i].eta >= seen[i].depth / 1000 - 1 && seen[i].eta <= seen[i].depth / 200 + 1,
                                  "%.1f s left for %.0f messages", seen[i].eta, seen[i].depth);
                        if (first_eta < 0)
                                first_eta = seen[i].eta;
                        last_eta = seen[i].eta;
                }
        }
        cr_assert_geq(nd, 5, "draining shown in %zu of %zu samples over %.1f s", nd, nseen, took);
        for (size_t i = 1; i < nd; i++) /* sort, for the median */
                for (size_t j = i; j > 0 && rates[j - 1] > rates[j]; j--) {
                        double t = rates[j];
                        rates[j] = rates[j - 1], rates[j - 1] = t;
                }
        cr_assert(rates[nd / 2] >= 300 && rates[nd / 2] <= 650, "median drain rate %.1f msg/s", rates[nd / 2]);
        cr_assert(first_eta > last_eta, "time left %.1f s, then %.1f s", first_eta, last_eta);

        /* Drained: nothing said of a drain (the sampler looks once a second). */
        until = h_now_ms() + 5000;
        for (;;) {
                r = ctl_json(&e, "status");
                bool quiet = cJSON_IsFalse(jpath(r, "spool.draining"));
                if (quiet || h_now_ms() > until)
                        break;
                cJSON_Delete(r);
                h_sleep_ms(200);
        }
        cr_assert(cJSON_IsFalse(jpath(r, "spool.draining")));
        cr_assert_eq(jnum(r, "spool.drain_rate"), 0);
        cr_assert(cJSON_IsNull(jpath(r, "spool.drain_eta_s")));
        cr_assert_eq(jnum(r, "links.0.backlog"), jnum(r, "spool.up.depth"));
        cJSON_Delete(r);
        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 0, "%s", out);
        cr_assert(!strstr(out, "draining"), "%s", out);
        char *m = http_get(e.mport, "/metrics");
        cr_assert_eq(metric(m, "kuimen_spool_drain_rate"), 0);
        cr_assert(!strstr(m, "\nkuimen_spool_drain_eta_seconds "), "no time left when not draining");
        free(m);

        /* --live said it too, and kept to 80 columns (its lines, not the log's "<N>"). */
        cr_assert(h_log_wait(&e.k, "  center  up    up ", 3000));
        cr_assert(h_log_count(&e.k, " msg/s, ~") >= 1, "--live showed no drain");
        FILE *f = fopen(e.klog, "r");
        cr_assert(f);
        int live_lines = 0;
        while (fgets(line, sizeof(line), f)) {
                if (line[0] == '<')
                        continue;
                live_lines++;
                cr_assert_leq(strlen(line) - 1, 80, "a --live line over 80 columns: %s", line);
        }
        fclose(f);
        cr_assert_geq(live_lines, 10);
        down(&e);
        unsetenv("COLUMNS");
}

Test(control, reload_and_socket_gone_on_stop)
{
        static char out[1 << 16], want[600];
        struct env e;
        up(&e, "reload");

        cr_assert_eq(ctl(e.sock, "reload", out, sizeof(out)), 0, "%s", out);
        snprintf(want, sizeof(want), "reloaded routes and classes from %s (6 classes)\n", e.conf);
        cr_assert_str_eq(out, want);
        cr_assert_eq(h_log_count(&e.k, "reloaded routes and classes"), 1);

        /* A new class arrives with the reload. */
        FILE *f = fopen(e.conf, "a");
        fputs("[class drill]\nmatch = drill/#\npriority = 6\n", f);
        fclose(f);
        cr_assert_eq(ctl(e.sock, "reload --json", out, sizeof(out)), 0, "%s", out);
        cJSON *r = cJSON_Parse(out);
        cr_assert_str_eq(jstr(r, "reload"), "ok");
        cr_assert_eq(jnum(r, "classes"), 7);
        cJSON_Delete(r);
        r = ctl_json(&e, "status");
        cr_assert_str_eq(jstr(r, "spool.classes.6.name"), "drill");
        cJSON_Delete(r);

        /* A config with errors is refused and says why; the routes stay. */
        f = fopen(e.conf, "a");
        fputs("[class broken]\npriority = 999\n", f);
        fclose(f);
        cr_assert_eq(ctl(e.sock, "reload", out, sizeof(out)), 1, "%s", out);
        cr_assert(strstr(out, "reload refused, the running routes stay:\n"), "%s", out);
        cr_assert(strstr(out, "priority: 999 is out of range 0..255"), "%s", out);
        cr_assert_eq(h_log_count(&e.k, "keeping the running routes"), 1);
        cr_assert_eq(h_log_count(&e.k, "reloaded routes and classes"), 2);
        r = ctl_json(&e, "status");
        cr_assert_eq(jnum(r, "counters.bad_config_reloads"), 1);
        cJSON_Delete(r);

        /* Stopped, the socket goes: kuimenctl says so at once. The exit status also
         * tells, under the sanitizers, that the reloads leaked nothing. */
        int st = h_stop(&e.k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        cr_assert_neq(access(e.sock, F_OK), 0);
        snprintf(want, sizeof(want), "kuimen is not running (no socket at %s)\n", e.sock);
        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 3);
        cr_assert_str_eq(out, want);
        down(&e);
}

Test(control, not_running)
{
        static char out[4096], want[600], dir[200], sock[300];
        h_tmpdir(dir, sizeof(dir), "ctlnone");
        snprintf(sock, sizeof(sock), "%s/kuimen.sock", dir);

        cr_assert_eq(ctl(sock, "status", out, sizeof(out)), 3);
        snprintf(want, sizeof(want), "kuimen is not running (no socket at %s)\n", sock);
        cr_assert_str_eq(out, want);
        cr_assert_eq(ctl(sock, "links --json", out, sizeof(out)), 3);
        cr_assert_str_eq(out, want);

        stale_socket(sock);
        cr_assert_eq(ctl(sock, "spool", out, sizeof(out)), 3);
        snprintf(want, sizeof(want), "kuimen is not running (nothing answers on %s)\n", sock);
        cr_assert_str_eq(out, want);

        cr_assert_eq(ctl(sock, "frobnicate", out, sizeof(out)), 2);
        cr_assert(strncmp(out, "usage: kuimenctl", 16) == 0, "%s", out);
        h_cleanup(dir);
}

Test(control, metrics_move_with_messages)
{
        struct env e;
        up(&e, "metrics");
        static const char *const families[] = {
                "kuimen_messages_in_total counter", "kuimen_messages_forwarded_total counter",
                "kuimen_messages_dropped_total counter", "kuimen_messages_expired_total counter",
                "kuimen_messages_coalesced_total counter", "kuimen_bad_input_total counter",
                "kuimen_spool_messages gauge", "kuimen_spool_bytes gauge", "kuimen_spool_oldest_age_seconds gauge",
                "kuimen_link_up gauge", "kuimen_link_messages_sent_total counter",
                "kuimen_link_messages_acked_total counter", "kuimen_link_inflight_messages gauge",
                "kuimen_uptime_seconds gauge", "kuimen_fsyncs_total counter", "kuimen_link_backlog_messages gauge",
                "kuimen_spool_drain_rate gauge", "kuimen_spool_drain_eta_seconds gauge", NULL,
        };

        char *m = http_get(e.mport, "/metrics");
        cr_assert(strncmp(m, "HTTP/1.0 200 OK\r\n", 17) == 0, "%.200s", m);
        cr_assert(strstr(m, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "%.400s", m);
        for (int i = 0; families[i]; i++) {
                char line[120], name[80];
                snprintf(line, sizeof(line), "\n# TYPE %s\n", families[i]);
                cr_assert(strstr(m, line), "no TYPE line for %s", families[i]);
                snprintf(name, sizeof(name), "%.*s", (int)strcspn(families[i], " "), families[i]);
                snprintf(line, sizeof(line), "\n# HELP %s ", name);
                cr_assert(strstr(m, line), "no HELP line for %s", name);
        }
        cr_assert_eq(metric(m, "kuimen_link_up{link=\"center\"}"), 1);
        cr_assert_eq(metric(m, "kuimen_link_up{link=\"local\"}"), 1);
        cr_assert_eq(metric(m, "kuimen_spool_messages{class=\"telemetry\"}"), 0);
        cr_assert(metric(m, "kuimen_uptime_seconds") > 0);
        double in0 = metric(m, "kuimen_messages_in_total");
        double fwd0 = metric(m, "kuimen_messages_forwarded_total");
        double acked0 = metric(m, "kuimen_link_messages_acked_total{link=\"center\"}");
        free(m);

        publish(&e, "sensors/m", 50);
        int64_t until = h_now_ms() + 10000;
        while (forwarded(&e) < fwd0 + 50 && h_now_ms() < until)
                h_sleep_ms(50);
        h_sleep_ms(300); /* nothing more may come */
        m = http_get(e.mport, "/metrics");
        cr_assert_eq(metric(m, "kuimen_messages_forwarded_total") - fwd0, 50);
        cr_assert_eq(metric(m, "kuimen_messages_in_total") - in0, 50);
        cr_assert_eq(metric(m, "kuimen_link_messages_acked_total{link=\"center\"}") - acked0, 50);
        cr_assert_eq(metric(m, "kuimen_link_inflight_messages{link=\"center\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_link_backlog_messages{link=\"center\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_link_backlog_messages{link=\"local\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_spool_messages{class=\"telemetry\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_spool_oldest_age_seconds"), 0);
        cr_assert_eq(metric(m, "kuimen_messages_dropped_total"), 0);
        free(m);

        m = http_get(e.mport, "/nothing");
        cr_assert(strncmp(m, "HTTP/1.0 404 Not Found\r\n", 24) == 0, "%.200s", m);
        free(m);
        down(&e);
}

/* The bridges' latest sightings: each unit's last position, refusals by reason, in
 * status --json, the human status and /metrics. */
Test(control, positions_and_bad_input_by_reason)
{
        struct env e;
        char out[1 << 14];
        up(&e, "board");
        const char *bad_sum = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*00";
        cr_assert_eq(h_pub_send(&e.pub, "pos/r2", bad_sum), 0);
        cr_assert_eq(h_pub_send(&e.pub, "pos/r2", bad_sum), 0);
        cr_assert_eq(h_pub_send(&e.pub, "pos/r3", "{\"lat\": 91, \"lon\": 109}"), 0);
        cr_assert_eq(h_pub_send(&e.pub, "pos/u7", "{\"lat\": 30.5123456, \"lon\": 109.4, \"alt\": 820, \"kind\": \"drone\"}"), 0);
        cr_assert_eq(h_pub_send(&e.pub, "pos/r2", "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"), 0);
        cr_assert(h_pub_flush(&e.pub, 10000));

        cJSON *r = NULL;
        int64_t until = h_now_ms() + 10000;
        for (;;) {
                r = ctl_json(&e, "status");
                const cJSON *p = jpath(r, "positions");
                if ((p && cJSON_GetArraySize(p) == 2) || h_now_ms() > until)
                        break;
                cJSON_Delete(r);
                h_sleep_ms(100);
        }
        cr_assert_eq(jnum(r, "counters.bad_input"), 3);
        cr_assert_eq(jnum(r, "bad_input_reasons.bad_checksum"), 2);
        cr_assert_eq(jnum(r, "bad_input_reasons.out_of_range"), 1);
        const cJSON *pos = jpath(r, "positions");
        cr_assert(pos && cJSON_GetArraySize(pos) == 2, "two units' positions");
        int seen = 0;
        for (int i = 0; i < 2; i++) {
                const cJSON *u = cJSON_GetArrayItem(pos, i);
                const char *unit = jstr(u, "unit");
                cr_assert(jnum(u, "age_s") >= 0 && jnum(u, "age_s") < 30);
                cr_assert_str_eq(jstr(u, "position.unit"), unit);
                if (strcmp(unit, "u7") == 0) {
                        cr_assert_eq(jnum(u, "position.lat"), 30.5123456);
                        cr_assert_eq(jnum(u, "position.lon"), 109.4);
                        cr_assert_eq(jnum(u, "position.alt"), 820);
                        seen |= 1;
                } else {
                        cr_assert_str_eq(unit, "r2");
                        /* 48 deg 07.038 min N, 11 deg 31.000 min E, to the record's 7 decimals */
                        cr_assert_eq(jnum(u, "position.lat"), 48.1173000);
                        cr_assert_eq(jnum(u, "position.lon"), 11.5166667);
                        seen |= 2;
                }
        }
        cr_assert_eq(seen, 3);
        /* Each link's figures for the operator: no signal on MQTT, a rate, bytes sent. */
        cr_assert_str_eq(jstr(r, "links.0.name"), "center");
        cr_assert_eq(jnum(r, "links.0.signal"), -1);
        cr_assert(jnum(r, "links.0.rate") >= 0);
        cr_assert(jnum(r, "links.0.bytes_sent") > 0, "the positions went up");
        const cJSON *g = jpath(r, "gnss");
        cr_assert(g && (g->type & 0xff) == cJSON_NULL, "no [gnss]: gnss is null");
        cJSON_Delete(r);

        cr_assert_eq(ctl(e.sock, "status", out, sizeof(out)), 0);
        cr_assert(strstr(out, "bad input by reason: bad_checksum=2 out_of_range=1\n"), "%s", out);
        cr_assert(strstr(out, "\nu7 "), "%s", out);
        cr_assert(strstr(out, "  30.5123456    109.4000000     820.0  "), "%s", out);

        char *m = http_get(e.mport, "/metrics");
        cr_assert(strstr(m, "\n# TYPE kuimen_bad_input_reason_total counter\n"));
        cr_assert_eq(metric(m, "kuimen_bad_input_reason_total{reason=\"bad_checksum\"}"), 2);
        cr_assert_eq(metric(m, "kuimen_bad_input_reason_total{reason=\"out_of_range\"}"), 1);
        double age = metric(m, "kuimen_position_age_seconds{unit=\"u7\"}");
        cr_assert(age >= 0 && age < 30, "age %f", age);
        free(m);
        down(&e);
}

/* The node's status, retained on both brokers: "online" from the start, "offline" from
 * the brokers (the clients' will) when kuimen stops, and again when it is killed. What
 * a newcomer reads is the retained copy: each probe is a fresh subscriber. */
static bool retained_state(int port, const char *state, int timeout_ms)
{
        char want[48];
        snprintf(want, sizeof(want), "{\"state\":\"%s\",\"node\":\"north\"", state);
        int64_t until = h_now_ms() + timeout_ms;
        for (;;) {
                struct h_sub s;
                h_sub_start(&s, port, "status-probe", "kuimen/north/status", false);
                bool found = h_sub_wait(&s, 1, 2000) >= 1 && strcmp(s.rx[0].topic, "kuimen/north/status") == 0 &&
                             strncmp(s.rx[0].payload, want, strlen(want)) == 0;
                h_sub_stop(&s);
                if (found)
                        return true;
                if (h_now_ms() > until)
                        return false;
                h_sleep_ms(100);
        }
}

Test(control, node_status_online_then_offline)
{
        struct env e;
        up(&e, "nodestatus");
        cr_assert(retained_state(e.local.port, "online", 10000), "retained online on the local broker");
        cr_assert(retained_state(e.center.port, "online", 10000), "retained online at the center");
        int st = h_stop(&e.k, SIGTERM);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        cr_assert(retained_state(e.local.port, "offline", 5000), "offline on the local broker after a stop");
        cr_assert(retained_state(e.center.port, "offline", 5000), "offline at the center after a stop");

        /* Back, then killed: the brokers see the connections drop and send the will. */
        const char *args[] = { "--config", e.conf, NULL };
        h_kuimen_start(&e.k, e.klog, args);
        cr_assert(retained_state(e.local.port, "online", 10000), "online again");
        cr_assert(retained_state(e.center.port, "online", 10000), "online again at the center");
        h_stop(&e.k, SIGKILL);
        e.k.pid = 0;
        cr_assert(retained_state(e.local.port, "offline", 5000), "offline on the local broker after a kill");
        cr_assert(retained_state(e.center.port, "offline", 5000), "offline at the center after a kill");
        down(&e);
}

/* ---- narrow links: frame counters and the dictionary ----------------------------- */

/* A base and a center kuimen over a sim link through the relay, both with a control
 * socket and metrics; the base's dictionary is one topic longer than the center's. A
 * datagram with a bad CRC put on the air as the base counts exactly once, and every
 * datagram the center took lands in exactly one counter. */
Test(control, narrow_frame_counters_and_dictionary)
{
        char bsock[300], csock[300], path[300], bcontrol[400], cextra[500];
        char text[1200], out[1 << 14];
        struct h_pair k;
        struct h_pub pub;

        h_pair_init(&k, "frames");
        int mport = h_free_port();
        snprintf(path, sizeof(path), "%s/base.dict", k.dir);
        h_write_text(path, "alert/gas/zone3\nalert/gas/zone9\n");
        snprintf(path, sizeof(path), "%s/center.dict", k.dir);
        h_write_text(path, "alert/gas/zone3\n");
        snprintf(bsock, sizeof(bsock), "%s/base.sock", k.dir);
        snprintf(csock, sizeof(csock), "%s/center.sock", k.dir);
        snprintf(bcontrol, sizeof(bcontrol), "[control]\nsocket = %s", bsock);
        snprintf(cextra, sizeof(cextra), "dictionary = center.dict\n[control]\nsocket = %s\n[metrics]\nlisten = 127.0.0.1:%d",
                 csock, mport);
        struct h_pair_conf conf = { .link_keys = "mtu = 77\nrto = 1s",
                                    .base_node = "link_status = no",
                                    .base_local = bcontrol,
                                    .base_extra = "dictionary = base.dict",
                                    .center_extra = cextra,
                                    .relay = true };
        h_pair_start(&k, &conf);
        struct h_relay *r = &k.relay;
        cr_assert(h_log_wait(&k.ctr, "control: listening on", 10000));

        /* three readings on the shared topic, one on the topic only the base lists */
        h_pub_start(&pub, k.local.port, "sensor-pub");
        h_pub_send(&pub, "alert/gas/zone3", "Z3a");
        h_pub_send(&pub, "alert/gas/zone3", "Z3b");
        h_pub_send(&pub, "alert/gas/zone9", "Z9");
        h_pub_send(&pub, "alert/gas/zone3", "Z3c");
        cr_assert(h_pub_flush(&pub, 5000));
        int64_t until = h_now_ms() + 20000;
        for (;;) {
                cJSON *st = NULL;
                snprintf(text, sizeof(text), "'%s' --socket '%s' status --json 2>&1", h_ctl_path(), bsock);
                FILE *f = popen(text, "r");
                size_t n = fread(out, 1, sizeof(out) - 1, f);
                out[n] = '\0';
                pclose(f);
                st = cJSON_Parse(out);
                bool done = st && jnum(st, "spool.depth") == 0 && jnum(st, "links.0.inflight") == 0 &&
                            jnum(st, "links.0.acked") == 4;
                cJSON_Delete(st);
                if (done)
                        break;
                cr_assert(h_now_ms() < until, "the base's spool did not empty: %s", out);
                h_sleep_ms(100);
        }
        h_sleep_ms(500); /* the last ack frames settle */

        /* a datagram with a bad CRC, from the address the center takes as its peer */
        uint8_t junk[20] = { 0x48, 0x04, 0x00, 0x01, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44 };
        cr_assert_eq(h_relay_to_center(r, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        cr_assert(h_log_wait(&k.ctr, "frame refused", 5000));
        h_sleep_ms(300);

        char *m = http_get(mport, "/metrics");
        unsigned long up = atomic_load(&r->up);
        cr_assert_eq(metric(m, "kuimen_link_frame_crc_errors_total{link=\"sat\"}"), 1, "%s", m);
        cr_assert_eq(metric(m, "kuimen_link_frames_bad_total{link=\"sat\"}"), 1);
        cr_assert_eq(metric(m, "kuimen_link_frames_in_total{link=\"sat\"}"), up + 1, "%lu relayed", up);
        /* every datagram the base sent is a data frame taken or seen again, or an ack */
        cr_assert_eq(metric(m, "kuimen_link_frames_ok_total{link=\"sat\"}") +
                             metric(m, "kuimen_link_frame_duplicates_total{link=\"sat\"}") +
                             metric(m, "kuimen_link_frame_acks_in_total{link=\"sat\"}"),
                     up);
        cr_assert_geq(metric(m, "kuimen_link_frames_ok_total{link=\"sat\"}"), 1);
        cr_assert_eq(metric(m, "kuimen_link_frame_malformed_total{link=\"sat\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_link_frame_bad_version_total{link=\"sat\"}"), 0);
        cr_assert_eq(metric(m, "kuimen_link_frame_delivered_total{link=\"sat\"}"), 4);
        cr_assert_eq(metric(m, "kuimen_link_frame_unknown_topics_total{link=\"sat\"}"), 1);
        cr_assert_eq(metric(m, "kuimen_link_frames_sent_total{link=\"sat\"}"), 0, "a center without commands sends acks only");
        cr_assert_eq(metric(m, "kuimen_link_dictionary_topics{link=\"sat\",fingerprint=\"cf2ecc53\"}"), 1);
        cr_assert(strstr(m, "\n# TYPE kuimen_link_frame_crc_errors_total counter\n"));
        cr_assert(strstr(m, "\n# HELP kuimen_link_frame_slot_refs_total "));
        free(m);

        /* kuimenctl: the same numbers, and the base's side of them */
        snprintf(text, sizeof(text), "'%s' --socket '%s' links 2>&1", h_ctl_path(), csock);
        FILE *f = popen(text, "r");
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        pclose(f);
        cr_assert(strstr(out, "\nsat: dictionary cf2ecc53/1\n"), "%s", out);
        cr_assert(strstr(out, "\nsat: frames frames_in="), "%s", out);
        cr_assert(strstr(out, " crc_errors=1 "), "%s", out);
        cr_assert(strstr(out, " unknown_topics=1 delivered=4 probes=0 probes_lost=0 frames_sacked=0 pos_batches=0"
                              " bad_posbatch=0 out_of_window=0 dropped_nomem=0 oversize=0 bad_payload=0 restarts_lost=0\n"),
                  "%s", out);
        snprintf(text, sizeof(text), "'%s' --socket '%s' links --json 2>&1", h_ctl_path(), bsock);
        f = popen(text, "r");
        n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        pclose(f);
        cJSON *j = cJSON_Parse(out);
        cr_assert(j, "%s", out);
        cr_assert_str_eq(jstr(j, "links.0.dictionary"), "29b136bc/2");
        unsigned long down = atomic_load(&r->down);
        cr_assert_eq(jnum(j, "links.0.frames.frames_in"), down);
        cr_assert_eq(jnum(j, "links.0.frames.acks_in"), down, "the center sends only acks");
        cr_assert_geq(jnum(j, "links.0.frames.frames_sent"), 1);
        cr_assert_eq(jnum(j, "links.0.frames.crc_errors"), 0);
        cr_assert_geq(jnum(j, "links.0.frames.slot_refs"), 1, "Z3b and Z3c name Z3a's slot");
        cJSON_Delete(j);

        h_pub_stop(&pub);
        h_pair_stop(&k);
        cr_expect(WIFEXITED(k.base_exit) && WEXITSTATUS(k.base_exit) == 0);
        cr_expect(WIFEXITED(k.ctr_exit) && WEXITSTATUS(k.ctr_exit) == 0);
        h_cleanup(k.dir);
}

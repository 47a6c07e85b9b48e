/* SPDX-License-Identifier: MIT */
/* Calls (issue 14): five terminals on the base's broker, the center's broker watching call/<id>, kuimen killed and the uplink cut mid-call. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

struct env {
        char dir[200], conf[300], klog[300], sock[300];
        int mport; /* /metrics */
        struct h_broker local, center;
        struct h_proxy px;
        bool proxied;
        struct h_proc k;
        struct h_rec term; /* the terminals: every call/<unit> delivery */
        struct h_rec ctr;  /* the center: kuimen/north/call/# */
};

static void start_kuimen(struct env *e)
{
        const char *args[] = { "--config", e->conf, "--log-level", "debug", NULL };
        h_kuimen_start(&e->k, e->klog, args);
        cr_assert(h_log_wait(&e->k, "control: listening on", 10000), "no control socket");
}

/* A base north with calls_conf, its local broker, the center broker (through a proxy
 * when proxied), the terminals and the center's watcher. */
static void up(struct env *e, const char *tag, const char *calls_conf, bool proxied)
{
        char extra[1200];
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        snprintf(e->conf, sizeof(e->conf), "%s/kuimen.conf", e->dir);
        snprintf(e->klog, sizeof(e->klog), "%s/kuimen.log", e->dir);
        snprintf(e->sock, sizeof(e->sock), "%s/kuimen.sock", e->dir);
        h_broker_start(&e->local, e->dir, 0, NULL);
        h_broker_start(&e->center, e->dir, h_free_port(), NULL);
        e->proxied = proxied;
        if (proxied)
                h_proxy_start(&e->px, e->center.port);
        e->mport = h_free_port();
        snprintf(extra, sizeof(extra), "[control]\nsocket = %s\n[metrics]\nlisten = 127.0.0.1:%d\n[calls]\ntick = 50ms\n%s",
                 e->sock, e->mport, calls_conf);
        h_write_conf(e->conf, "north", e->dir, e->local.port, proxied ? e->px.port : e->center.port, extra);
        h_rec_start(&e->term, e->local.port, "terminals", "call/+");
        h_rec_start(&e->ctr, e->center.port, "center-app", "kuimen/north/call/#");
        start_kuimen(e);
}

static void down(struct env *e)
{
        if (e->k.pid) {
                int st = h_stop(&e->k, SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status %d)", st);
        }
        h_rec_stop(&e->term);
        h_rec_stop(&e->ctr);
        h_rec_free(&e->term);
        h_rec_free(&e->ctr);
        if (e->proxied)
                h_proxy_stop(&e->px);
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
        h_cleanup(e->dir);
}

/* kuimenctl --socket ... args; its stdout into out; returns its exit code. */
static int ctl(struct env *e, char *out, size_t n, const char *args)
{
        char cmd[1200];
        const char *bin = getenv("KM_KUIMENCTL");
        cr_assert_not_null(bin, "KM_KUIMENCTL (meson sets it)");
        snprintf(cmd, sizeof(cmd), "%s --socket %s %s", bin, e->sock, args);
        FILE *f = popen(cmd, "r");
        cr_assert(f, "popen %s", cmd);
        size_t len = fread(out, 1, n - 1, f);
        out[len] = 0;
        int st = pclose(f);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void answer(struct env *e, const char *unit, const char *id, const char *status, const char *text)
{
        char topic[64], p[256];
        snprintf(topic, sizeof(topic), "call/%s/answer", unit);
        if (text)
                snprintf(p, sizeof(p), "{\"id\":\"%s\",\"status\":\"%s\",\"text\":\"%s\"}", id, status, text);
        else
                snprintf(p, sizeof(p), "{\"id\":\"%s\",\"status\":\"%s\"}", id, status);
        cr_assert_eq(h_rec_send(&e->term, topic, p), 0);
}

/* The value of one series of kuimen's /metrics; asserts it is there exactly once. */
static double metric(struct env *e, const char *series)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)e->mport),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        static char buf[1 << 17];
        const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        size_t len = 0;
        char key[128];
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to /metrics on port %d", e->mport);
        cr_assert_eq(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
        for (ssize_t r; len + 1 < sizeof(buf) && (r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0;)
                len += (size_t)r;
        close(fd);
        buf[len] = '\0';
        snprintf(key, sizeof(key), "\n%s ", series);
        const char *p = strstr(buf, key);
        cr_assert(p, "no series %s in /metrics", series);
        cr_assert(!strstr(p + 1, key), "series %s twice", series);
        return strtod(p + strlen(key), NULL);
}

/* ---- what the terminals got ----------------------------------------------------------- */

/* Copies of call id on call/<unit> (an empty message, the retained copy cleared, is
 * not one); their arrival times into at (may be NULL, up to max) and n values into
 * nv. */
static int copies(struct env *e, const char *unit, const char *id, int64_t *at, int *nv, int max)
{
        char topic[64];
        int k = 0;
        snprintf(topic, sizeof(topic), "call/%s", unit);
        pthread_mutex_lock(&e->term.mu);
        for (size_t i = 0; i < e->term.n; i++) {
                const struct h_msg *m = &e->term.m[i];
                if (strcmp(m->topic, topic) != 0 || !m->len)
                        continue;
                cJSON *j = cJSON_Parse(m->payload);
                const cJSON *jid = cJSON_GetObjectItemCaseSensitive(j, "id");
                if (cJSON_IsString(jid) && strcmp(jid->valuestring, id) == 0) {
                        if (k < max && at)
                                at[k] = m->at;
                        if (k < max && nv)
                                nv[k] = cJSON_GetObjectItemCaseSensitive(j, "n")->valueint;
                        k++;
                }
                cJSON_Delete(j);
        }
        pthread_mutex_unlock(&e->term.mu);
        return k;
}

/* Empty messages on call/<unit>: the retained copy taken off. */
static int clears(struct env *e, const char *unit)
{
        char topic[64];
        int k = 0;
        snprintf(topic, sizeof(topic), "call/%s", unit);
        pthread_mutex_lock(&e->term.mu);
        for (size_t i = 0; i < e->term.n; i++)
                k += strcmp(e->term.m[i].topic, topic) == 0 && !e->term.m[i].len;
        pthread_mutex_unlock(&e->term.mu);
        return k;
}

static bool wait_copies(struct env *e, const char *unit, const char *id, int want, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (copies(e, unit, id, NULL, NULL, 0) < want && h_now_ms() < until)
                h_sleep_ms(20);
        return copies(e, unit, id, NULL, NULL, 0) >= want;
}

/* ---- what the center got ------------------------------------------------------------------ */

struct ev {
        char unit[32], state[16], answer[64];
        int t, n, step;
        uint64_t id;
        int64_t at;
        char to[64];
};

/* The center's messages on kuimen/north/call/<cid>, in arrival order, duplicates (same
 * kuimen-id) dropped. Returns how many (up to max). */
static int events(struct env *e, const char *cid, struct ev *out, int max)
{
        char topic[96];
        int k = 0;
        snprintf(topic, sizeof(topic), "kuimen/north/call/%s", cid);
        pthread_mutex_lock(&e->ctr.mu);
        for (size_t i = 0; i < e->ctr.n && k < max; i++) {
                const struct h_msg *m = &e->ctr.m[i];
                bool dup = false;
                if (strcmp(m->topic, topic) != 0)
                        continue;
                for (int q = 0; q < k && !dup; q++)
                        dup = out[q].id == m->id;
                if (dup)
                        continue;
                cJSON *j = cJSON_Parse(m->payload);
                cr_assert_not_null(j, "center: not JSON: %s", m->payload);
                struct ev *v = &out[k++];
                memset(v, 0, sizeof(*v));
                const cJSON *x;
                if (cJSON_IsString(x = cJSON_GetObjectItemCaseSensitive(j, "unit")))
                        snprintf(v->unit, sizeof(v->unit), "%s", x->valuestring);
                if (cJSON_IsString(x = cJSON_GetObjectItemCaseSensitive(j, "state")))
                        snprintf(v->state, sizeof(v->state), "%s", x->valuestring);
                if (cJSON_IsString(x = cJSON_GetObjectItemCaseSensitive(j, "answer")))
                        snprintf(v->answer, sizeof(v->answer), "%s", x->valuestring);
                v->t = cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "t")) ? x->valueint : -1;
                v->n = cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "n")) ? x->valueint : 1;
                v->step = cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "step")) ? x->valueint : 0;
                if (cJSON_IsArray(x = cJSON_GetObjectItemCaseSensitive(j, "to")) && cJSON_GetArraySize(x))
                        snprintf(v->to, sizeof(v->to), "%s", cJSON_GetArrayItem(x, 0)->valuestring);
                if (cJSON_IsArray(x = cJSON_GetObjectItemCaseSensitive(j, "recipients")))
                        snprintf(v->to, sizeof(v->to), "%d", cJSON_GetArraySize(x));
                v->id = m->id;
                v->at = m->at;
                cJSON_Delete(j);
        }
        pthread_mutex_unlock(&e->ctr.mu);
        return k;
}

static int count(const struct ev *v, int n, const char *unit, const char *state)
{
        int k = 0;
        for (int i = 0; i < n; i++)
                k += strcmp(v[i].unit, unit) == 0 && strcmp(v[i].state, state) == 0;
        return k;
}

/* Changes of the first copy (n = 1): not repeats. */
static int first_copies(const struct ev *v, int n, const char *unit, const char *state)
{
        int k = 0;
        for (int i = 0; i < n; i++)
                k += strcmp(v[i].unit, unit) == 0 && strcmp(v[i].state, state) == 0 && v[i].n == 1;
        return k;
}

static const struct ev *find(const struct ev *v, int n, const char *unit, const char *state)
{
        for (int i = 0; i < n; i++)
                if (strcmp(v[i].unit, unit) == 0 && strcmp(v[i].state, state) == 0)
                        return &v[i];
        return NULL;
}

static bool wait_event(struct env *e, const char *cid, const char *unit, const char *state, int timeout_ms)
{
        static struct ev v[512];
        int64_t until = h_now_ms() + timeout_ms;
        do {
                int n = events(e, cid, v, 512);
                if (find(v, n, unit, state))
                        return true;
                h_sleep_ms(20);
        } while (h_now_ms() < until);
        return false;
}

#define MAXEV 512
static struct ev ev[MAXEV];

/* ---- the tests ------------------------------------------------------------------------------- */

/* A red call from the center to u1, u2, u3 and group field (u4, u5): three answer,
 * two never do. Repeats every second, overdue and escalation to chief at 2 s. */
Test(calls, five_terminals_three_answer, .timeout = 40)
{
        struct env e;
        up(&e, "calls-five",
           "[calls level red]\nrespond_within = 2s\nrepeat_every = 1s\nescalate_to = chief\n"
           "[calls group field]\nunits = u4, u5\n",
           false);
        cr_assert(h_log_wait(&e.center.p, "kuimen/north/cmd/#", 10000), "the downlink subscribed");
        cr_assert_eq(h_rec_send(&e.ctr, "kuimen/north/cmd/call",
                                "{\"id\":\"f1\",\"level\":\"red\",\"text\":\"Landslide at K12: evacuate\","
                                "\"recipients\":[\"u1\",\"u2\",\"u3\",\"field\"]}"),
                     0);
        const char *units[] = { "u1", "u2", "u3", "u4", "u5" };
        for (int i = 0; i < 5; i++)
                cr_assert(wait_copies(&e, units[i], "f1", 1, 10000), "%s got the call", units[i]);
        int64_t t0;
        copies(&e, "u1", "f1", &t0, NULL, 1);
        h_sleep_ms(300);
        answer(&e, "u1", "f1", "received", NULL);
        answer(&e, "u2", "f1", "acting", "2 vehicles");
        answer(&e, "u3", "f1", "done", NULL);
        /* u4, u5: copies at 0, 1, 2, 3 s; chief from 2 s. */
        int64_t now = h_now_ms();
        if (now < t0 + 3400)
                h_sleep_ms((int)(t0 + 3400 - now));
        /* What an operator sees mid-call (3.4 s; chief, called at 2 s, is overdue at 4 s):
         * one open call, escalated, u4, u5 and chief unanswered, u4 and u5 overdue. */
        cr_expect_eq(metric(&e, "kuimen_calls_open"), 1);
        cr_expect_eq(metric(&e, "kuimen_calls_unanswered"), 3);
        cr_expect_eq(metric(&e, "kuimen_calls_overdue"), 2);
        cr_expect_eq(metric(&e, "kuimen_calls_escalated"), 1);
        cr_expect_eq(metric(&e, "kuimen_calls_answers_total"), 3);
        cr_expect_eq(metric(&e, "kuimen_calls_escalations_total"), 1);
        cr_expect_eq(metric(&e, "kuimen_calls_refused_total"), 0);
        cr_expect_eq(metric(&e, "kuimen_incidents_open"), 0);
        for (int i = 0; i < 3; i++) {
                cr_expect_eq(copies(&e, units[i], "f1", NULL, NULL, 0), 1, "%s answered: not called again", units[i]);
                cr_expect_eq(clears(&e, units[i]), 1, "%s answered: its retained call taken off", units[i]);
        }
        for (int i = 3; i < 5; i++) {
                int64_t at[16];
                int nv[16];
                int k = copies(&e, units[i], "f1", at, nv, 16);
                cr_expect_eq(k, 4, "%s unanswered: called 4 times by 3.4 s, got %d", units[i], k);
                for (int q = 1; q < k && q < 16; q++) {
                        cr_expect_eq(nv[q], q + 1, "%s copy %d says n=%d", units[i], q + 1, nv[q]);
                        cr_expect(at[q] - at[q - 1] >= 850 && at[q] - at[q - 1] <= 1300,
                                  "%s: repeat %d after %lld ms (1 s asked)", units[i], q, (long long)(at[q] - at[q - 1]));
                }
                cr_expect_eq(clears(&e, units[i]), 0, "%s: nothing taken off", units[i]);
        }
        int64_t cat;
        cr_assert_geq(copies(&e, "chief", "f1", &cat, NULL, 1), 1, "chief called by escalation");
        cr_expect(cat - t0 >= 1850 && cat - t0 <= 2400, "escalation at %lld ms (2 s asked)", (long long)(cat - t0));

        /* A terminal that starts late gets the retained copy. */
        struct h_rec late;
        h_rec_start(&late, e.local.port, "late-u4", "call/u4");
        cr_assert_geq(h_rec_wait(&late, 1, 3000), 1, "the retained call on call/u4");
        cr_assert(strstr(late.m[0].payload, "\"id\":\"f1\""), "%s", late.m[0].payload);
        h_rec_stop(&late);
        h_rec_free(&late);

        /* The center: every change, in order. */
        cr_assert(wait_event(&e, "f1", "chief", "delivered", 5000), "chief's delivery seen at the center");
        int n = events(&e, "f1", ev, MAXEV);
        cr_assert_gt(n, 0);
        cr_expect_str_eq(ev[0].state, "open", "the first change is the call itself");
        cr_expect_str_eq(ev[0].to, "5", "five recipients (the group expanded)");
        for (int i = 0; i < 5; i++)
                cr_expect_eq(first_copies(ev, n, units[i], "delivered"), 1, "%s delivered once", units[i]);
        const struct ev *a = find(ev, n, "u1", "received");
        cr_expect(a && a->t == 0, "u1 received at t=0");
        a = find(ev, n, "u2", "acting");
        cr_expect(a && strcmp(a->answer, "2 vehicles") == 0, "u2 acting with its text");
        cr_expect_eq(count(ev, n, "u3", "done"), 1, "u3 done");
        for (int i = 0; i < 3; i++)
                cr_expect_eq(count(ev, n, units[i], "overdue"), 0, "%s answered: never overdue", units[i]);
        for (int i = 3; i < 5; i++) {
                a = find(ev, n, units[i], "overdue");
                cr_expect(a && a->t == 2, "%s overdue at t=2 (%d)", units[i], a ? a->t : -1);
                int last = 1;
                for (int q = 0; q < n; q++) /* repeats: n counts up by one */
                        if (strcmp(ev[q].unit, units[i]) == 0 && ev[q].n != last) {
                                cr_expect_eq(ev[q].n, last + 1, "%s: n %d after %d", units[i], ev[q].n, last);
                                last = ev[q].n;
                        }
                int k = copies(&e, units[i], "f1", NULL, NULL, 0);
                cr_expect(last >= 4 && last <= k && last >= k - 1, "%s: the center saw repeats up to n=%d (%d sent)",
                          units[i], last, k);
        }
        a = find(ev, n, "", "escalated");
        cr_expect(a && a->t == 2 && a->step == 1 && strcmp(a->to, "chief") == 0, "escalated at t=2 to chief");
        cr_expect_eq(first_copies(ev, n, "chief", "delivered"), 1);
        for (int q = 1; q < n; q++) {
                cr_expect_geq(ev[q].t, ev[q - 1].t, "t never goes back (%d after %d)", ev[q].t, ev[q - 1].t);
                cr_expect_gt(ev[q].id, ev[q - 1].id, "kuimen-ids in order");
        }

        /* Closed by the operator: every retained copy left is taken off. */
        char out[4096];
        cr_assert_eq(ctl(&e, out, sizeof(out), "call close f1"), 0, "%s", out);
        cr_assert(wait_event(&e, "f1", "", "closed", 5000));
        int64_t until = h_now_ms() + 3000;
        while ((clears(&e, "u4") < 1 || clears(&e, "u5") < 1 || clears(&e, "chief") < 1) && h_now_ms() < until)
                h_sleep_ms(20);
        cr_expect_eq(clears(&e, "u4"), 1);
        cr_expect_eq(clears(&e, "u5"), 1);
        cr_expect_eq(clears(&e, "chief"), 1);
        cr_assert_eq(ctl(&e, out, sizeof(out), "call show f1 --json"), 0, "%s", out);
        cJSON *j = cJSON_Parse(out);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "call");
        cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(c, "state")->valuestring, "closed");
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(c, "answered_n")->valueint, 3);
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(c, "recipients_n")->valueint, 6);
        cJSON_Delete(j);
        /* The counters (kuimenctl call show, and /metrics's kuimen_calls_*). */
        cr_assert_eq(ctl(&e, out, sizeof(out), "call show --json"), 0, "%s", out);
        j = cJSON_Parse(out);
        int repeats = 0;
        for (int i = 3; i < 5; i++)
                repeats += copies(&e, units[i], "f1", NULL, NULL, 0) - 1;
        repeats += copies(&e, "chief", "f1", NULL, NULL, 0) - 1;
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "answers")->valueint, 3);
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "escalations")->valueint, 1);
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "repeats")->valueint, repeats);
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "open")->valueint, 0);
        cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "changes")->valueint, events(&e, "f1", ev, MAXEV));
        cJSON_Delete(j);
        cr_expect_eq(metric(&e, "kuimen_calls_open"), 0, "closed");
        cr_expect_eq(metric(&e, "kuimen_calls_unanswered"), 0, "a closed call waits for nobody");
        cr_expect_eq(metric(&e, "kuimen_calls_overdue"), 0);
        cr_expect_eq(metric(&e, "kuimen_calls_escalated"), 0);
        cr_expect_eq(metric(&e, "kuimen_calls_repeats_total"), repeats);
        cr_expect_eq(metric(&e, "kuimen_calls_changes_total"), events(&e, "f1", ev, MAXEV));
        pthread_mutex_lock(&e.ctr.mu); /* the timeline, for docs/calls.md */
        for (size_t q = 0; q < e.ctr.n; q++)
                fprintf(stderr, "# %+6lld ms %s %s\n", (long long)(e.ctr.m[q].at - t0), e.ctr.m[q].topic + 13,
                        e.ctr.m[q].payload);
        pthread_mutex_unlock(&e.ctr.mu);
        cr_log_info("five terminals: %d changes at the center", n);
        down(&e);
}

/* kill -9 mid-call: what was answered stays answered, what was on its way arrives, and
 * the repeats go on counting where they were. */
Test(calls, kill9_resumes, .timeout = 40)
{
        struct env e;
        char out[8192];
        up(&e, "calls-kill", "[calls level orange]\nrespond_within = 60s\nrepeat_every = 1s\n", false);
        cr_assert(h_log_wait(&e.center.p, "kuimen/north/cmd/#", 10000), "the downlink subscribed");
        cr_assert_eq(ctl(&e, out, sizeof(out), "call k1 orange 'Dam seepage: stand by' u1,u2,u3,u4,u5"), 0, "%s", out);
        const char *units[] = { "u1", "u2", "u3", "u4", "u5" };
        for (int i = 0; i < 5; i++)
                cr_assert(wait_copies(&e, units[i], "k1", 1, 10000), "%s got the call", units[i]);
        answer(&e, "u1", "k1", "acting", "on my way");
        answer(&e, "u2", "k1", "done", NULL);
        cr_assert(wait_event(&e, "k1", "u2", "done", 5000), "u2's answer upstream");
        /* On their way at the kill: an answer and a new call from the center. */
        answer(&e, "u3", "k1", "received", NULL);
        cr_assert_eq(h_rec_send(&e.ctr, "kuimen/north/cmd/call",
                                "{\"id\":\"k2\",\"level\":\"yellow\",\"text\":\"Road cut\",\"recipients\":[\"u6\"]}"),
                     0);
        h_sleep_ms(30);
        int nv[16];
        int before = copies(&e, "u5", "k1", NULL, nv, 16);
        int st = h_stop(&e.k, SIGKILL);
        cr_assert(WIFSIGNALED(st), "kuimen killed");
        start_kuimen(&e);
        cr_assert(h_log_wait(&e.k, "open calls resumed", 5000), "the open calls resumed");
        answer(&e, "u4", "k1", "cannot", "bridge out");
        cr_assert(wait_copies(&e, "u6", "k2", 1, 10000), "the center's call k2 survived the kill");
        cr_assert(wait_event(&e, "k1", "u4", "cannot", 10000), "u4's answer after the restart upstream");
        cr_assert(wait_copies(&e, "u5", "k1", before + 2, 8000), "u5 still called after the restart");
        int after = copies(&e, "u5", "k1", NULL, nv, 16);
        for (int q = 0; q < after && q < 16; q++)
                cr_expect_eq(nv[q], q + 1, "u5 copy %d says n=%d: the count goes on", q + 1, nv[q]);
        cr_assert_eq(ctl(&e, out, sizeof(out), "call show k1 --json"), 0, "%s", out);
        cJSON *j = cJSON_Parse(out);
        const cJSON *r, *c = cJSON_GetObjectItemCaseSensitive(j, "call");
        const char *want[] = { "acting", "done", "received", "cannot", "delivered" };
        int i = 0;
        cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(c, "recipients")) {
                cr_assert_lt(i, 5);
                cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(r, "unit")->valuestring, units[i]);
                cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(r, "state")->valuestring, want[i], "%s", units[i]);
                i++;
        }
        cr_expect_eq(i, 5);
        cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "recipients"), 0),
                                                          "answer")->valuestring,
                         "on my way");
        cJSON_Delete(j);
        /* Every answer reached the center (a change may come twice across a kill). */
        cr_assert(wait_event(&e, "k1", "u3", "received", 5000), "u3's answer, on its way at the kill, upstream");
        int n = events(&e, "k1", ev, MAXEV);
        cr_expect_geq(count(ev, n, "u1", "acting"), 1);
        cr_expect_geq(count(ev, n, "u2", "done"), 1);
        cr_expect_geq(count(ev, n, "u3", "received"), 1);
        cr_expect_eq(count(ev, n, "u4", "cannot"), 1);
        down(&e);
}

/* Every uplink down for the whole call: the base runs it alone, and everything
 * reaches the center afterwards, in order. */
Test(calls, uplink_down_whole_call, .timeout = 40)
{
        struct env e;
        char out[4096];
        up(&e, "calls-cut",
           "[calls level red]\nrespond_within = 1s\nrepeat_every = 500ms\nescalate_after = 1s\nescalate_to = chief\n", true);
        h_sleep_ms(500);
        e.px.down = true;
        cr_assert(h_log_wait(&e.k, "center: up -> down", 5000), "the uplink went down");
        cr_assert_eq(ctl(&e, out, sizeof(out), "call c9 red 'Fire on ridge 3' u1,u2,u3,u4,u5"), 0, "%s", out);
        const char *units[] = { "u1", "u2", "u3", "u4", "u5", "chief" };
        for (int i = 0; i < 5; i++)
                cr_assert(wait_copies(&e, units[i], "c9", 1, 10000), "%s got the call", units[i]);
        h_sleep_ms(100);
        answer(&e, "u1", "c9", "acting", NULL);
        answer(&e, "u2", "c9", "done", NULL);
        answer(&e, "u3", "c9", "cannot", "no fuel");
        cr_assert(wait_copies(&e, "chief", "c9", 2, 8000), "escalated and repeated while cut off");
        cr_assert_eq(ctl(&e, out, sizeof(out), "call close c9"), 0, "%s", out);
        h_sleep_ms(100);
        cr_expect_eq(events(&e, "c9", ev, MAXEV), 0, "nothing reached the center while cut off");
        /* What the base sent upstream while cut off: the center must see all of it. */
        cr_assert_eq(ctl(&e, out, sizeof(out), "call show --json"), 0, "%s", out);
        cJSON *j = cJSON_Parse(out);
        int want = cJSON_GetObjectItemCaseSensitive(j, "changes")->valueint;
        cJSON_Delete(j);
        /* At least: open, escalated, closed, and for each unit its delivery and each
         * repeat, and the three answers. */
        int least = 3 + 3;
        for (int i = 0; i < 6; i++)
                least += copies(&e, units[i], "c9", NULL, NULL, 0);
        cr_assert_geq(want, least, "changes sent: %d", want);
        e.px.down = false;
        cr_assert(wait_event(&e, "c9", "", "closed", 20000), "the call's changes arrive once the uplink is back");
        int n = events(&e, "c9", ev, MAXEV);
        cr_expect_str_eq(ev[0].state, "open");
        cr_expect_str_eq(ev[n - 1].state, "closed");
        for (int q = 1; q < n; q++) {
                cr_expect_geq(ev[q].t, ev[q - 1].t, "in order: t %d after %d", ev[q].t, ev[q - 1].t);
                cr_expect_gt(ev[q].id, ev[q - 1].id, "in order: kuimen-id");
        }
        cr_expect_eq(count(ev, n, "u1", "acting"), 1);
        cr_expect_eq(count(ev, n, "u2", "done"), 1);
        const struct ev *a = find(ev, n, "u3", "cannot");
        cr_expect(a && strcmp(a->answer, "no fuel") == 0);
        cr_expect_eq(count(ev, n, "", "escalated"), 1);
        cr_expect_eq(n, want, "every change arrived: %d of %d", n, want);
        for (int i = 3; i < 5; i++)
                cr_expect_geq(count(ev, n, units[i], "overdue"), 1, "%s overdue", units[i]);
        cr_log_info("uplink down: %d changes held and sent in order", n);
        down(&e);
}

/* SPDX-License-Identifier: MIT */
/* The soak drill: a base under steady traffic through link cuts and a kill -9, checked for loss, order and leaks. */

/*
 * One base: a local Mosquitto, kuimen with one mqtt link "center" to a center Mosquitto
 * through h_proxy (the fiber), a QoS 1 publisher at KM_SOAK_RATE messages a second for
 * KM_SOAK_SECONDS (default 180 at 200 msg/s: the CI run; tests/drills/soak runs the
 * same test for hours), and a subscriber at the center that records every delivery.
 *
 * The timeline, T the duration and S the cut interval (KM_SOAK_CUT, default 60):
 *   - at S/2, S/2 + S, S/2 + 2S, ...: the fiber is cut for 20 to min(60, S/2) s
 *     (seeded by KM_SOAK_SEED, printed), alternately silent (h_proxy cut: nothing
 *     forwarded, connections kept open) and loud (h_proxy down: connections closed,
 *     new ones refused), then restored; a cut that would not end by T is not made;
 *   - at min(S/2 + 10 s, T/2), inside the first cut with thousands of messages in the
 *     spool: kill -9 of kuimen, restarted 1 s later (RestartSec=1 of the units), while
 *     the publisher goes on; the local broker queues meanwhile. It comes early so that
 *     the samples compared for leaks are one process's;
 *   - every 5 s: kuimen's VmRSS and open fds from /proc, and `kuimenctl status --json`
 *     (spool depth, the link's state, counters).
 *
 * The traffic, by global sequence number g (in every payload: "n" for readings and
 * alerts; for positions, in the latitude, lat = 20 + g * 1e-7, because kuimen forwards
 * the canonical record and keeps only the fields it knows): of each 20 messages, 1
 * alert on alert/gas-NN/ch4 (2 topics), 3 positions on pos/uav-NN (4 units, JSON with
 * ts = the wall clock) and 16 gas readings on sensors/gas-NN/air (8 units).
 *
 * The checks (each counts toward the last line, `soak: N passed, M failed`):
 *   - lost = 0: messages the local broker acknowledged that never reached the center.
 *     A position superseded within kuimen's track bucket (the default position class
 *     coalesces per unit and `[positions] track_interval` = 60 s of the fix's ts) is
 *     counted as coalesced, not lost, when a later position of the same unit and
 *     minute arrived: that is the designed thinning of a backlog;
 *   - order = 0 per topic, after dropping duplicates by sequence number (the first copy
 *     of each g counts; copies under the same kuimen-id are reported as duplicates,
 *     copies under a new id, the local broker's redelivery after the kill, as
 *     redelivered);
 *   - the publisher lost no sends; kuimen never died but for the drill's kill, answered
 *     kuimenctl throughout, and exits 0 on SIGTERM at the end;
 *   - every cut drained: all that was published before the restore (positions aside)
 *     arrived, within 120 s;
 *   - RSS flat: among the samples of the process that ran after the kill, the median
 *     of the last fifth is at most 1.2 x the median of the second fifth + 2 MiB;
 *   - fds flat: the same fifths over the quiet samples only (link up, no cut, 10 s or
 *     more since the last restore or restart, so no reconnect in progress; and the
 *     sample right before each cut, link up): the last fifth's median is not above the
 *     second fifth's.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define N_TELE 8
#define N_ALERT 2
#define N_POS 4
#define N_TOPIC (N_TELE + N_ALERT + N_POS)
#define SAMPLE_MS 5000
#define QUIET_MS 10000
#define WINDOW 64 /* QoS 1 sends in flight at the publisher */

enum { ST_NONE, ST_SENT, ST_ACKED, ST_FAILED };

struct sample {
        int64_t t; /* ms since the start */
        pid_t pid;
        long rss_kb, fds, depth; /* depth -1: kuimenctl did not answer */
        bool link_up, quiet;
        long in, forwarded, coalesced, dropped, expired;
};

struct cut {
        bool silent;
        int64_t start, end;        /* ms since the start */
        int64_t len_ms;
        uint64_t g_restore;        /* published before the restore */
        int64_t drain_ms;          /* restore to all of it received; -1: not yet */
        long fds_before, depth_max;
};

struct soak {
        /* configuration */
        int seconds, rate, cut_s;
        unsigned seed;
        /* processes */
        char dir[200], conf[300], klog[300], sock[300];
        struct h_broker local, center;
        struct h_proxy fiber;
        struct h_proc k;
        int64_t t0;
        /* per message, by g */
        uint64_t cap;
        uint8_t *topic, *state, *copies;
        uint32_t *ts;
        uint64_t *id;
        _Atomic uint64_t published, acked, failed, send_retries;
        atomic_bool stop;
        /* subscriber (Paho's thread) */
        MQTTAsync pub, sub;
        uint64_t deliveries, dup_id, redelivered, order_bad, unknown;
        uint64_t last_g[N_TOPIC];
        bool seen_any[N_TOPIC];
        /* the timeline's record */
        struct sample *s;
        size_t ns, scap;
        struct cut cuts[512];
        int ncuts;
        int64_t kill_at, restart_at, kill_recover_ms;
        uint64_t g_kill, g_restart; /* published at the kill, at the restart */
        int unexpected_exits, ctl_failures;
        int ready_lines; /* "ingest: connected" lines in kuimen's log when it was last started */
        bool starting;   /* started and not yet on its broker: no samples */
        int64_t last_disturbance;
        bool cutting;
        /* verdicts */
        int passed, failed_checks;
};

static struct soak *S; /* Paho's callbacks find it here */


static const char *topic_name(int t, char *buf, size_t n)
{
        if (t < N_TELE)
                snprintf(buf, n, "sensors/gas-%02d/air", t);
        else if (t < N_TELE + N_ALERT)
                snprintf(buf, n, "alert/gas-%02d/ch4", t - N_TELE);
        else
                snprintf(buf, n, "pos/uav-%02d", t - N_TELE - N_ALERT);
        return buf;
}

static bool is_pos(int t)
{
        return t >= N_TELE + N_ALERT;
}

/* Which topic message g goes to: of each 20, 1 alert, 3 positions, 16 readings. */
static int topic_of(uint64_t g)
{
        unsigned r = (unsigned)(g % 20), k = (unsigned)(g / 20);
        if (r == 0)
                return N_TELE + (int)(k % N_ALERT);
        if (r == 5 || r == 10 || r == 15)
                return N_TELE + N_ALERT + (int)((k * 3 + r / 5) % N_POS);
        return (int)(g % N_TELE);
}

static int env_int(const char *name, int def)
{
        const char *v = getenv(name);
        return v && *v ? atoi(v) : def;
}

static int64_t t_ms(void)
{
        return h_now_ms() - S->t0;
}

/* ---- the publisher --------------------------------------------------------------- */

static void pub_ok(void *ctx, MQTTAsync_successData5 *r)
{
        (void)r;
        __atomic_store_n(&S->state[(uintptr_t)ctx], ST_ACKED, __ATOMIC_RELEASE);
        atomic_fetch_add(&S->acked, 1);
}

static void pub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
        uint64_t g = (uintptr_t)ctx;
        if (atomic_load(&S->failed) < 3)
                fprintf(stderr, "soak: publish %" PRIu64 " failed: %d %s\n", g, r ? r->code : 0,
                        r && r->message ? r->message : "");
        __atomic_store_n(&S->state[g], ST_FAILED, __ATOMIC_RELEASE);
        atomic_fetch_add(&S->failed, 1);
}

static int payload_of(uint64_t g, int t, uint32_t ts, char *buf, size_t n)
{
        if (t < N_TELE)
                return snprintf(buf, n, "{\"n\":%" PRIu64 ",\"ch4\":%.2f,\"co\":%d,\"h2s\":%.1f,\"o2\":%.1f,\"t\":%u}", g,
                                0.5 + (double)(g % 97) / 50.0, (int)(g % 40), (double)(g % 13) / 10.0,
                                20.9 - (double)(g % 5) / 10.0, ts);
        if (t < N_TELE + N_ALERT)
                return snprintf(buf, n, "{\"n\":%" PRIu64 ",\"alarm\":\"ch4\",\"level\":2,\"value\":%.2f,\"t\":%u}", g,
                                1.0 + (double)(g % 300) / 100.0, ts);
        return snprintf(buf, n,
                        "{\"lat\":%.7f,\"lon\":%.7f,\"alt\":%d,\"ts\":%u,\"speed\":%.1f,\"heading\":%d,\"fix\":3,"
                        "\"battery\":%d,\"kind\":\"drone\"}",
                        20.0 + (double)g * 1e-7, 109.4 + 0.01 * (t - N_TELE - N_ALERT), 800 + (int)(g % 50), ts,
                        (double)(g % 150) / 10.0, (int)(g % 360), 100 - (int)(g / 1000 % 80));
}

/* Publishes g = 0, 1, ... at the rate until told to stop, at most WINDOW unanswered. */
static void *publisher_main(void *arg)
{
        (void)arg;
        int64_t start = h_now_ms();
        for (uint64_t g = 0; !atomic_load(&S->stop) && g < S->cap; g++) {
                int64_t wait = start + (int64_t)(g * 1000 / (uint64_t)S->rate) - h_now_ms();
                if (wait > 0)
                        h_sleep_ms((int)wait);
                while (atomic_load(&S->published) - atomic_load(&S->acked) - atomic_load(&S->failed) >= WINDOW &&
                       !atomic_load(&S->stop))
                        h_sleep_ms(1);
                int t = topic_of(g);
                char topic[64], payload[256];
                uint32_t ts = (uint32_t)time(NULL);
                int len = payload_of(g, t, ts, payload, sizeof(payload));
                S->topic[g] = (uint8_t)t;
                S->ts[g] = ts;
                __atomic_store_n(&S->state[g], ST_SENT, __ATOMIC_RELEASE);
                MQTTAsync_message m = MQTTAsync_message_initializer;
                MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
                m.payload = payload;
                m.payloadlen = len;
                m.qos = 1;
                ro.onSuccess5 = pub_ok;
                ro.onFailure5 = pub_fail;
                ro.context = (void *)(uintptr_t)g;
                atomic_fetch_add(&S->published, 1); /* before the send: its PUBACK may come first */
                while (MQTTAsync_sendMessage(S->pub, topic_name(t, topic, sizeof(topic)), &m, &ro) != MQTTASYNC_SUCCESS) {
                        atomic_fetch_add(&S->send_retries, 1);
                        h_sleep_ms(5);
                }
        }
        return NULL;
}

/* ---- the subscriber at the center ------------------------------------------------- */

static int topic_index(const char *topic)
{
        static const char prefix[] = "kuimen/north/";
        char buf[64];
        if (strncmp(topic, prefix, sizeof(prefix) - 1) != 0)
                return -1;
        for (int t = 0; t < N_TOPIC; t++)
                if (strcmp(topic + sizeof(prefix) - 1, topic_name(t, buf, sizeof(buf))) == 0)
                        return t;
        return -1;
}

/* g from a delivered payload, or UINT64_MAX. */
static uint64_t g_of(int t, const char *p, int len)
{
        char buf[512];
        snprintf(buf, sizeof(buf), "%.*s", len, p);
        if (!is_pos(t)) {
                unsigned long long g;
                return sscanf(buf, "{\"n\":%llu", &g) == 1 ? g : UINT64_MAX;
        }
        const char *lat = strstr(buf, "\"lat\":");
        if (!lat)
                return UINT64_MAX;
        double v = strtod(lat + 6, NULL);
        long long g = (long long)((v - 20.0) * 1e7 + 0.5); /* v >= 20: no libm for llround */
        return g >= 0 ? (uint64_t)g : UINT64_MAX;
}

static uint64_t kuimen_id(const MQTTProperties *props)
{
        for (int i = 0; i < props->count; i++) {
                const MQTTProperty *p = &props->array[i];
                if (p->identifier == MQTTPROPERTY_CODE_USER_PROPERTY && p->value.data.len == 9 &&
                    memcmp(p->value.data.data, "kuimen-id", 9) == 0) {
                        char v[32];
                        snprintf(v, sizeof(v), "%.*s", p->value.value.len, p->value.value.data);
                        return strtoull(v, NULL, 10);
                }
        }
        return 0;
}

/* One thread (Paho's) runs this: the per-g arrays it writes are read by the timeline
 * only through copies[] (atomically) and by the verdict after the subscriber stopped. */
static int sub_arrived(void *ctx, char *topic, int tlen, MQTTAsync_message *m)
{
        (void)ctx, (void)tlen;
        int t = topic_index(topic);
        uint64_t g = t < 0 ? UINT64_MAX : g_of(t, m->payload, m->payloadlen);
        S->deliveries++;
        if (g >= atomic_load(&S->published) || S->topic[g] != t) {
                S->unknown++;
        } else {
                uint64_t id = kuimen_id(&m->properties);
                uint8_t c = __atomic_load_n(&S->copies[g], __ATOMIC_RELAXED);
                if (c == 0) {
                        S->id[g] = id;
                        if (S->seen_any[t] && g < S->last_g[t])
                                S->order_bad++;
                        if (!S->seen_any[t] || g > S->last_g[t])
                                S->last_g[t] = g;
                        S->seen_any[t] = true;
                } else if (id == S->id[g]) {
                        S->dup_id++;
                } else {
                        S->redelivered++;
                }
                if (c < 255)
                        __atomic_store_n(&S->copies[g], (uint8_t)(c + 1), __ATOMIC_RELEASE);
        }
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
}

static void client_new(MQTTAsync *c, int port, const char *id)
{
        char uri[64];
        MQTTAsync_createOptions cro = MQTTAsync_createOptions_initializer5;
        cro.maxBufferedMessages = 1000;
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
        cr_assert_eq(MQTTAsync_createWithOptions(c, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &cro), 0);
}

static void client_connect(MQTTAsync c)
{
        MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
        co.cleanstart = 1;
        co.automaticReconnect = 1;
        co.minRetryInterval = 1;
        co.maxRetryInterval = 1;
        co.keepAliveInterval = 10;
        cr_assert_eq(MQTTAsync_connect(c, &co), 0);
        int64_t until = h_now_ms() + 10000;
        while (!MQTTAsync_isConnected(c) && h_now_ms() < until)
                h_sleep_ms(10);
        cr_assert(MQTTAsync_isConnected(c), "a test client did not connect");
}

static void sub_start(int port)
{
        static const char *const filters[] = { "kuimen/north/sensors/#", "kuimen/north/alert/#", "kuimen/north/pos/#" };
        client_new(&S->sub, port, "soak-center-sub");
        MQTTAsync_setCallbacks(S->sub, NULL, NULL, sub_arrived, NULL);
        client_connect(S->sub);
        for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
                MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
                cr_assert_eq(MQTTAsync_subscribe(S->sub, filters[i], 1, &ro), 0);
                cr_assert_eq(MQTTAsync_waitForCompletion(S->sub, ro.token, 5000), 0, "no SUBACK for %s", filters[i]);
        }
}

static void client_stop(MQTTAsync *c)
{
        MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
        o.timeout = 500;
        MQTTAsync_disconnect(*c, &o);
        h_sleep_ms(100);
        MQTTAsync_destroy(c);
}

/* ---- kuimen and its samples ------------------------------------------------------- */

static void kuimen_start(void)
{
        const char *args[] = { "--config", S->conf, NULL };
        S->ready_lines = h_log_count(&S->k, "ingest: connected");
        h_kuimen_start(&S->k, S->klog, args);
        S->last_disturbance = t_ms();
        S->starting = true;
}

/* A (re)started kuimen answers kuimenctl once it is on its broker (its socket comes
 * first): until then the timeline takes no sample. */
static bool kuimen_ready(void)
{
        if (S->starting && S->k.pid && h_log_count(&S->k, "ingest: connected") > S->ready_lines)
                S->starting = false;
        return S->k.pid && !S->starting;
}

static long proc_rss_kb(pid_t pid)
{
        char path[64], line[256];
        long kb = -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
                        break;
        if (f)
                fclose(f);
        return kb;
}

static long proc_fds(pid_t pid)
{
        char path[64];
        long n = 0;
        snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
        DIR *d = opendir(path);
        if (!d)
                return -1;
        for (struct dirent *e; (e = readdir(d));)
                n += e->d_name[0] != '.';
        closedir(d);
        return n;
}

static long json_long(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? (long)v->valuedouble : -1;
}

/* `kuimenctl status --json` into s; false when it did not answer. */
static bool ctl_status(struct sample *s)
{
        const char *ctl = getenv("KM_KUIMENCTL") ? getenv("KM_KUIMENCTL") : "kuimenctl";
        char cmd[800];
        static char out[1 << 16];
        snprintf(cmd, sizeof(cmd), "timeout 5 '%s' --socket '%s' status --json 2>&1", ctl, S->sock);
        FILE *f = popen(cmd, "r");
        if (!f)
                return false;
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = 0;
        int rc = pclose(f);
        cJSON *j = rc == 0 ? cJSON_Parse(out) : NULL;
        if (!j) {
                fprintf(stderr, "soak: %.1f s: kuimenctl status failed (exit %d%s), pid %d: %.200s\n", (double)t_ms() / 1000,
                        WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, WIFEXITED(rc) && WEXITSTATUS(rc) == 124 ? ": no answer in 5 s" : "",
                        (int)S->k.pid, out);
                return false;
        }
        const cJSON *spool = cJSON_GetObjectItemCaseSensitive(j, "spool");
        const cJSON *counters = cJSON_GetObjectItemCaseSensitive(j, "counters");
        const cJSON *links = cJSON_GetObjectItemCaseSensitive(j, "links");
        const cJSON *l;
        s->depth = json_long(spool, "depth");
        cJSON_ArrayForEach(l, links)
        {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(l, "name");
                const cJSON *state = cJSON_GetObjectItemCaseSensitive(l, "state");
                if (cJSON_IsString(name) && strcmp(name->valuestring, "center") == 0 && cJSON_IsString(state))
                        s->link_up = strcmp(state->valuestring, "up") == 0;
        }
        s->in = json_long(counters, "in");
        s->forwarded = json_long(counters, "forwarded");
        s->coalesced = json_long(counters, "coalesced");
        s->dropped = json_long(counters, "dropped");
        s->expired = json_long(counters, "expired");
        cJSON_Delete(j);
        return true;
}

static struct sample *take_sample(void)
{
        if (S->ns == S->scap) {
                S->scap = S->scap ? S->scap * 2 : 256;
                S->s = realloc(S->s, S->scap * sizeof(*S->s));
                cr_assert_not_null(S->s);
        }
        struct sample *s = &S->s[S->ns++];
        memset(s, 0, sizeof(*s));
        s->t = t_ms();
        s->pid = S->k.pid;
        s->rss_kb = proc_rss_kb(s->pid);
        s->fds = proc_fds(s->pid);
        if (!ctl_status(s)) {
                s->depth = -1;
                S->ctl_failures++;
        }
        s->quiet = s->link_up && !S->cutting && s->t - S->last_disturbance >= QUIET_MS;
        return s;
}

/* Like systemd's Restart=always: a kuimen that died unbidden is counted and started again. */
static void reap_unexpected(void)
{
        int st;
        if (S->k.pid > 0 && waitpid(S->k.pid, &st, WNOHANG) == S->k.pid) {
                fprintf(stderr, "soak: kuimen (pid %d) died unbidden at %.1f s, status 0x%x: restarted\n", (int)S->k.pid,
                        (double)t_ms() / 1000, st);
                S->unexpected_exits++;
                S->k.pid = 0;
                kuimen_start();
        }
}

/* ---- what arrived ----------------------------------------------------------------- */

/* The first g not yet accounted for, counting from *wm: received, failed at the
 * publisher, or a position (those may be coalesced; the verdict looks at them). */
static uint64_t advance(uint64_t wm)
{
        uint64_t pub = atomic_load(&S->published);
        while (wm < pub) {
                uint8_t st = __atomic_load_n(&S->state[wm], __ATOMIC_ACQUIRE);
                if (st == ST_FAILED || is_pos(S->topic[wm]) || __atomic_load_n(&S->copies[wm], __ATOMIC_ACQUIRE))
                        wm++;
                else
                        break;
        }
        return wm;
}

/* Positions superseded in kuimen's spool: acknowledged, not received, and a later
 * position of the same unit with the same minute of ts was received. Counts lost
 * (acknowledged, never received, not so superseded) and coalesced; fills the first
 * lost g's into first[] (up to nfirst). */
static void account(uint64_t *lost, uint64_t *coalesced, uint64_t *received, uint64_t *first, size_t nfirst)
{
        uint64_t pub = atomic_load(&S->published);
        /* per unit: the newest received position's g and minute, walking backward */
        uint64_t latest_g[N_POS];
        uint32_t latest_min[N_POS];
        bool have[N_POS] = { false };
        *lost = *coalesced = *received = 0;
        size_t nf = 0;
        for (uint64_t g = pub; g-- > 0;) {
                int t = S->topic[g];
                bool got = __atomic_load_n(&S->copies[g], __ATOMIC_ACQUIRE) != 0;
                *received += got;
                if (is_pos(t)) {
                        int u = t - N_TELE - N_ALERT;
                        uint32_t min = S->ts[g] / 60;
                        if (got) {
                                /* the newest received of this minute stays the witness */
                                if (!have[u] || latest_min[u] != min)
                                        latest_g[u] = g, latest_min[u] = min, have[u] = true;
                                continue;
                        }
                        if (__atomic_load_n(&S->state[g], __ATOMIC_ACQUIRE) != ST_ACKED)
                                continue;
                        if (have[u] && latest_min[u] == min && latest_g[u] > g) {
                                (*coalesced)++;
                                continue;
                        }
                } else if (got || __atomic_load_n(&S->state[g], __ATOMIC_ACQUIRE) != ST_ACKED) {
                        continue;
                }
                (*lost)++;
                if (nf < nfirst)
                        first[nf++] = g;
        }
}

/* ---- the verdict ------------------------------------------------------------------ */

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        fprintf(stderr, "soak: %s: %s\n", ok ? "PASS" : "FAIL", msg);
        if (ok)
                S->passed++;
        else
                S->failed_checks++;
        cr_expect(ok, "%s", msg);
}

static int cmp_long(const void *a, const void *b)
{
        long x = *(const long *)a, y = *(const long *)b;
        return (x > y) - (x < y);
}

static long median(long *v, size_t n)
{
        if (!n)
                return -1;
        qsort(v, n, sizeof(*v), cmp_long);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Medians of the second and the last fifth of v (n values in time order). */
static void fifths(const long *v, size_t n, long *second, long *last)
{
        long *tmp = malloc((n + 1) * sizeof(*tmp));
        size_t a = n / 5, b = 2 * n / 5, c = 4 * n / 5;
        if (b <= a) /* fewer than five: the first and the last */
                a = 0, b = n ? 1 : 0, c = n ? n - 1 : 0;
        memcpy(tmp, v + a, (b - a) * sizeof(*tmp));
        *second = median(tmp, b - a);
        memcpy(tmp, v + c, (n - c) * sizeof(*tmp));
        *last = median(tmp, n - c);
        free(tmp);
}

static void write_conf(int local_port)
{
        FILE *f = fopen(S->conf, "w");
        cr_assert_not_null(f);
        /* The README's defaults but for the paths: keepalive 10 s, ack_timeout 3 s,
         * hold 2 s, the default classes, link status on. */
        fprintf(f,
                "[node]\nname = north\nspool = %s/state/spool.db\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#, pos/#, alert/#, status/#\n"
                "[link center]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\n"
                "[control]\nsocket = %s\n",
                S->dir, local_port, S->fiber.port, S->sock);
        fclose(f);
}

static void setup(struct soak *s)
{
        memset(s, 0, sizeof(*s));
        S = s;
        s->seconds = env_int("KM_SOAK_SECONDS", 180);
        s->rate = env_int("KM_SOAK_RATE", 200);
        s->cut_s = env_int("KM_SOAK_CUT", 60);
        const char *seed = getenv("KM_SOAK_SEED");
        s->seed = seed && *seed ? (unsigned)strtoul(seed, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();
        cr_assert(s->seconds >= 30 && s->rate >= 1 && s->cut_s >= 20, "KM_SOAK_SECONDS >= 30, KM_SOAK_RATE >= 1, KM_SOAK_CUT >= 20");
        s->cap = (uint64_t)s->seconds * (uint64_t)s->rate + 1000;
        s->topic = calloc(s->cap, 1);
        s->state = calloc(s->cap, 1);
        s->copies = calloc(s->cap, 1);
        s->ts = calloc(s->cap, sizeof(*s->ts));
        s->id = calloc(s->cap, sizeof(*s->id));
        cr_assert(s->topic && s->state && s->copies && s->ts && s->id, "no memory for %" PRIu64 " messages", s->cap);
        h_tmpdir(s->dir, sizeof(s->dir), "soak");
        snprintf(s->conf, sizeof(s->conf), "%s/kuimen.conf", s->dir);
        snprintf(s->klog, sizeof(s->klog), "%s/kuimen.log", s->dir);
        snprintf(s->sock, sizeof(s->sock), "%s/kuimen.sock", s->dir);
        h_broker_start(&s->local, s->dir, 0, NULL);
        h_broker_start(&s->center, s->dir, 0, NULL);
        h_proxy_start(&s->fiber, s->center.port);
        write_conf(s->local.port);
        s->t0 = h_now_ms();
        sub_start(s->center.port);
        kuimen_start();
        cr_assert(h_log_wait(&s->k, "ingest: connected", 10000), "kuimen did not connect to its broker (%s)", s->klog);
        cr_assert(h_log_wait(&s->k, "center: down -> up", 15000), "the link did not come up (%s)", s->klog);
        client_new(&s->pub, s->local.port, "soak-pub");
        client_connect(s->pub);
}

TestSuite(soak);

Test(soak, drill)
{
        static struct soak s;
        setup(&s);
        fprintf(stderr, "soak: %d s at %d msg/s, a cut every %d s, seed %u, in %s\n", s.seconds, s.rate, s.cut_s,
                s.seed, s.dir);
        srand(s.seed);
        const int64_t T = (int64_t)s.seconds * 1000, SI = (int64_t)s.cut_s * 1000;
        const int64_t max_cut = SI / 2 < 60000 ? SI / 2 : 60000;
        s.kill_at = SI / 2 + 10000 < T / 2 ? SI / 2 + 10000 : T / 2; /* inside the first cut */
        s.kill_recover_ms = -1;
        int64_t next_cut = SI / 2, next_sample = 0;
        s.t0 = h_now_ms();
        s.last_disturbance = 0;
        pthread_t pt;
        cr_assert_eq(pthread_create(&pt, NULL, publisher_main, NULL), 0);
        uint64_t wm = 0;
        struct cut *open_drain = NULL; /* the cut (or NULL) whose drain is being timed */
        int next_drain = 0;
        int64_t now;
        while ((now = t_ms()) < T) {
                reap_unexpected();
                /* the kill and the restart */
                if (s.kill_at >= 0 && now >= s.kill_at && !s.restart_at) {
                        s.g_kill = atomic_load(&s.published);
                        fprintf(stderr, "soak: %.1f s: kill -9 of kuimen (pid %d), %" PRIu64 " published, spool depth %ld at the last sample\n",
                                (double)now / 1000, (int)s.k.pid, s.g_kill, s.ns ? s.s[s.ns - 1].depth : -1);
                        h_stop(&s.k, SIGKILL);
                        s.restart_at = now + 1000;
                        s.last_disturbance = now;
                }
                if (s.restart_at && !s.k.pid && now >= s.restart_at) {
                        s.g_restart = atomic_load(&s.published);
                        kuimen_start();
                        fprintf(stderr, "soak: %.1f s: kuimen restarted (pid %d), %" PRIu64 " published\n",
                                (double)now / 1000, (int)s.k.pid, s.g_restart);
                }
                /* cuts */
                if (!s.cutting && now >= next_cut) {
                        int64_t len = 20000 + (max_cut > 20000 ? rand() % (max_cut - 20000 + 1) : 0);
                        if (now + len <= T && s.ncuts < (int)(sizeof(s.cuts) / sizeof(s.cuts[0]))) {
                                struct cut *c = &s.cuts[s.ncuts];
                                struct sample *before = take_sample(); /* the quiet moment before it */
                                before->quiet = before->link_up && before->pid == s.k.pid && kuimen_ready();
                                c->fds_before = before->fds;
                                c->silent = s.ncuts % 2 == 0;
                                c->start = t_ms();
                                c->len_ms = len;
                                c->drain_ms = -1;
                                s.cutting = true;
                                atomic_store(c->silent ? &s.fiber.cut : &s.fiber.down, true);
                                fprintf(stderr, "soak: %.1f s: cut %d (%s) for %.0f s, kuimen fds %ld, rss %ld kB\n",
                                        (double)c->start / 1000, s.ncuts + 1, c->silent ? "silent" : "loud",
                                        (double)len / 1000, before->fds, before->rss_kb);
                                s.ncuts++;
                        }
                        next_cut += SI;
                }
                if (s.cutting) {
                        struct cut *c = &s.cuts[s.ncuts - 1];
                        if (now >= c->start + c->len_ms) {
                                c->g_restore = atomic_load(&s.published);
                                atomic_store(&s.fiber.cut, false);
                                atomic_store(&s.fiber.down, false);
                                c->end = t_ms();
                                s.cutting = false;
                                s.last_disturbance = c->end;
                                fprintf(stderr, "soak: %.1f s: cut %d restored, %" PRIu64 " published\n",
                                        (double)c->end / 1000, s.ncuts, c->g_restore);
                        }
                }
                /* drains: the oldest restore not yet drained */
                wm = advance(wm);
                if (!open_drain && next_drain < s.ncuts && s.cuts[next_drain].end)
                        open_drain = &s.cuts[next_drain++];
                if (open_drain && wm >= open_drain->g_restore) {
                        open_drain->drain_ms = t_ms() - open_drain->end;
                        fprintf(stderr, "soak: %.1f s: cut %d drained in %.1f s\n", (double)t_ms() / 1000,
                                (int)(open_drain - s.cuts) + 1, (double)open_drain->drain_ms / 1000);
                        open_drain = NULL;
                }
                if (s.g_restart && s.kill_recover_ms < 0 && wm >= s.g_restart)
                        s.kill_recover_ms = t_ms() - s.restart_at;
                /* samples */
                if (now >= next_sample && kuimen_ready()) {
                        struct sample *x = take_sample();
                        if (s.cutting && x->depth > s.cuts[s.ncuts - 1].depth_max)
                                s.cuts[s.ncuts - 1].depth_max = x->depth;
                        next_sample += SAMPLE_MS;
                }
                h_sleep_ms(100);
        }
        atomic_store(&s.stop, true);
        pthread_join(pt, NULL);
        int64_t pub_end = t_ms();
        uint64_t published = atomic_load(&s.published);

        /* The end: every send answered, then everything drained (or 60 s without
         * progress). */
        int64_t until = h_now_ms() + 30000;
        while (atomic_load(&s.acked) + atomic_load(&s.failed) < published && h_now_ms() < until)
                h_sleep_ms(20);
        uint64_t lost = 0, coalesced = 0, received = 0, first_lost[8];
        int64_t last_progress = h_now_ms();
        uint64_t prev_received = 0;
        for (;;) {
                reap_unexpected();
                wm = advance(wm);
                if (open_drain && wm >= open_drain->g_restore) {
                        open_drain->drain_ms = t_ms() - open_drain->end;
                        open_drain = NULL;
                }
                if (!open_drain && next_drain < s.ncuts && s.cuts[next_drain].end)
                        open_drain = &s.cuts[next_drain++];
                if (s.g_restart && s.kill_recover_ms < 0 && wm >= s.g_restart)
                        s.kill_recover_ms = t_ms() - s.restart_at;
                account(&lost, &coalesced, &received, first_lost, 8);
                if (lost == 0 && !open_drain)
                        break;
                if (received != prev_received)
                        prev_received = received, last_progress = h_now_ms();
                if (h_now_ms() - last_progress > 60000)
                        break;
                h_sleep_ms(500);
        }
        int64_t drained_at = t_ms();
        h_sleep_ms(3000); /* late copies, for the duplicate counts */
        struct sample *fin = take_sample();
        fin->quiet = fin->link_up; /* nothing moves any more */
        account(&lost, &coalesced, &received, first_lost, 8);

        /* kuimen's own end */
        pid_t kpid = s.k.pid;
        int st = h_stop(&s.k, SIGTERM);
        client_stop(&s.pub);
        client_stop(&s.sub);
        h_proxy_stop(&s.fiber);
        h_stop(&s.local.p, SIGTERM);
        h_stop(&s.center.p, SIGTERM);

        /* ---- figures ---- */
        uint64_t acked = atomic_load(&s.acked), failed = atomic_load(&s.failed);
        fprintf(stderr, "soak: --- figures ---\n");
        fprintf(stderr, "soak: published %" PRIu64 " in %.1f s: %.1f msg/s achieved (asked %d); acked by the local broker %" PRIu64
                        ", failed %" PRIu64 ", send retries %" PRIu64 "\n",
                published, (double)pub_end / 1000, (double)published * 1000 / (double)pub_end, s.rate, acked, failed,
                atomic_load(&s.send_retries));
        fprintf(stderr, "soak: received %" PRIu64 " distinct (%" PRIu64 " deliveries), lost %" PRIu64
                        ", positions coalesced %" PRIu64 ", duplicates by kuimen-id %" PRIu64 ", redelivered under a new id %" PRIu64
                        ", order violations %" PRIu64 " (per topic, first copy of each sequence number), unknown %" PRIu64 "\n",
                received, s.deliveries, lost, coalesced, s.dup_id, s.redelivered, s.order_bad, s.unknown);
        for (uint64_t i = 0; i < lost && i < 8; i++) {
                char tn[64];
                fprintf(stderr, "soak: lost g=%" PRIu64 " on %s (ts %u)\n", first_lost[i],
                        topic_name(S->topic[first_lost[i]], tn, sizeof(tn)), S->ts[first_lost[i]]);
        }
        fprintf(stderr, "soak: drained %.1f s after the publisher stopped\n", (double)(drained_at - pub_end) / 1000);
        fprintf(stderr, "soak: kuimen's counters since the restart: in %ld, forwarded %ld, coalesced %ld, dropped %ld, expired %ld, spool depth %ld\n",
                fin->in, fin->forwarded, fin->coalesced, fin->dropped, fin->expired, fin->depth);
        fprintf(stderr, "soak: kill -9 at %.1f s (%" PRIu64 " published), restart 1 s later (%" PRIu64
                        " published): all of that at the center %.1f s after the restart\n",
                (double)s.kill_at / 1000, s.g_kill, s.g_restart, (double)s.kill_recover_ms / 1000);
        bool drains_ok = true;
        for (int i = 0; i < s.ncuts; i++) {
                struct cut *c = &s.cuts[i];
                fprintf(stderr, "soak: cut %d %-6s at %6.1f s for %4.1f s: fds before %ld, spool depth max %ld, drained %.1f s after the restore\n",
                        i + 1, c->silent ? "silent" : "loud", (double)c->start / 1000, (double)c->len_ms / 1000,
                        c->fds_before, c->depth_max, (double)c->drain_ms / 1000);
                drains_ok &= c->drain_ms >= 0 && c->drain_ms <= 120000;
        }
        /* the process that ran after the kill: its samples after the restart */
        long *rss = calloc(s.ns + 1, sizeof(long)), *fds = calloc(s.ns + 1, sizeof(long));
        size_t nr = 0, nf = 0;
        long rss_max = 0, rss_first = -1, fds_first = -1;
        for (size_t i = 0; i < s.ns; i++) {
                struct sample *x = &s.s[i];
                if (x->pid != kpid || x->rss_kb < 0)
                        continue;
                if (rss_first < 0)
                        rss_first = x->rss_kb, fds_first = x->fds;
                rss[nr++] = x->rss_kb;
                if (x->rss_kb > rss_max)
                        rss_max = x->rss_kb;
                if (x->quiet)
                        fds[nf++] = x->fds;
        }
        long rss2, rss5, fds2, fds5;
        fifths(rss, nr, &rss2, &rss5);
        fifths(fds, nf, &fds2, &fds5);
        fprintf(stderr, "soak: RSS kB: start %ld (before the kill), after the restart %ld, end %ld, max %ld; median second fifth %ld, last fifth %ld (%zu samples)\n",
                s.s[0].rss_kb, rss_first, fin->rss_kb, rss_max, rss2, rss5, nr);
        fprintf(stderr, "soak: fds: start %ld (before the kill), after the restart %ld, end %ld; quiet medians second fifth %ld, last fifth %ld (%zu quiet samples)\n",
                s.s[0].fds, fds_first, fin->fds, fds2, fds5, nf);
        if (getenv("KM_SOAK_SAMPLES")) {
                for (size_t i = 0; i < s.ns; i++)
                        fprintf(stderr, "soak: sample %6.1f s pid %d rss %ld kB fds %ld depth %ld link %s%s in %ld fwd %ld coalesced %ld\n",
                                (double)s.s[i].t / 1000, (int)s.s[i].pid, s.s[i].rss_kb, s.s[i].fds, s.s[i].depth,
                                s.s[i].link_up ? "up" : "down", s.s[i].quiet ? " quiet" : "", s.s[i].in, s.s[i].forwarded,
                                s.s[i].coalesced);
        }

        /* ---- verdict ---- */
        check(lost == 0, "lost %" PRIu64 " of %" PRIu64 " acknowledged", lost, acked);
        check(s.order_bad == 0, "order violations %" PRIu64, s.order_bad);
        check(failed == 0 && acked == published, "the local broker acknowledged all %" PRIu64 " sends (failed %" PRIu64 ")",
              published, failed);
        check(s.unknown == 0, "no delivery the publisher did not send (%" PRIu64 ")", s.unknown);
        check(drains_ok && s.ncuts > 0, "%d cuts, each drained within 120 s", s.ncuts);
        check(s.kill_recover_ms >= 0, "all published before the restart arrived after it");
        check(s.unexpected_exits == 0, "kuimen died unbidden %d times", s.unexpected_exits);
        check(s.ctl_failures == 0, "kuimenctl status answered every sample (%d failures of %zu)", s.ctl_failures, s.ns);
        check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 on SIGTERM (status 0x%x)", st);
        check(nr >= 2 && rss5 <= rss2 + rss2 / 5 + 2048, "RSS flat: last fifth %ld kB <= 1.2 x second fifth %ld kB + 2 MiB", rss5,
              rss2);
        check(nf >= 2 && fds5 <= fds2, "fds flat: last fifth %ld <= second fifth %ld (quiet samples)", fds5, fds2);
        fprintf(stderr, "soak: %d passed, %d failed\n", s.passed, s.failed_checks);
        free(rss);
        free(fds);
        if (s.failed_checks == 0)
                h_cleanup(s.dir);
        else
                fprintf(stderr, "soak: kept %s (kuimen.log, mosquitto-*.log)\n", s.dir);
}

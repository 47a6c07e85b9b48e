/* SPDX-License-Identifier: MIT */
/* Narrow-link and failover benchmark on real brokers and kuimen processes: goodput of a sim link against its raw capacity, and failover time after a silent cut. */
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

#include <MQTTAsync.h>

#include "harness.h"

/*
 * GOODPUT = payload bytes delivered / (bitrate * T / 8), where T runs from the first
 * publish on the base's broker to the arrival of the last message at the center's
 * subscriber. Only the payload counts: topics, ids, times, frame headers, CRCs,
 * retransmissions and idle air are all overhead. The air is the sim link's forward
 * direction (acks come back on the far end's own device, as on a full-duplex pair).
 * Compression counts in our favour, so the payloads must be honest: readings of a gas
 * detector, exactly READING_LEN bytes of compact JSON whose values drift from one
 * reading to the next (a counter, four gas values, the unix time), on one topic per
 * unit, UNITS units taking turns, no dictionary configured.
 */
#define READING_LEN 64
#define UNITS 8
#define STALL_MS 30000 /* no arrival this long: something is broken (rto is 3 s) */

static char g_dir[256];

static void die(const char *msg)
{
        fprintf(stderr, "bench_narrow: %s\n", msg);
        if (g_dir[0])
                h_cleanup(g_dir);
        exit(1); /* brokers and kuimen die with us: PR_SET_PDEATHSIG */
}

__attribute__((format(printf, 1, 2))) static void dief(const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        die(msg);
}

/* ---- readings ------------------------------------------------------------------------ */

struct unit_state {
        int ch4, co, h2s, o2; /* hundredths, units, tenths, tenths */
        unsigned t;
};

static uint64_t rng = 0x2545f4914f6cdd1dULL;
static int walk(int v, int step, int lo, int hi)
{
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        v += (int)(rng % (unsigned)(2 * step + 1)) - step;
        return v < lo ? lo : v > hi ? hi : v;
}

/* Reading n (0..9999) of unit u: exactly READING_LEN bytes. */
static void reading(char *out, struct unit_state *s, unsigned n)
{
        s->ch4 = walk(s->ch4, 7, 0, 299);
        s->co = walk(s->co, 3, 10, 99);
        s->h2s = walk(s->h2s, 2, 0, 99);
        s->o2 = walk(s->o2, 1, 195, 209);
        s->t += 10;
        int len = snprintf(out, READING_LEN + 1, "{\"n\":%04u,\"ch4\":%d.%02d,\"co\":%d,\"h2s\":%d.%d,\"o2\":%d.%d,\"t\":%u}",
                           n % 10000, s->ch4 / 100, s->ch4 % 100, s->co, s->h2s / 10, s->h2s % 10, s->o2 / 10,
                           s->o2 % 10, s->t);
        if (len != READING_LEN)
                dief("reading of %d bytes, not %d", len, READING_LEN);
}

/* ---- a center subscriber that checks every byte ------------------------------------- */

struct arrivals {
        struct h_rec rec;
        size_t done; /* rec.m[] tallied */
        int n_want, n_got, bad, dups;
        char (*want)[READING_LEN + 1];
        char (*topic)[64];
        int64_t *at; /* monotonic ms of first arrival, 0 = not yet */
        int64_t last;
};

static void arr_start(struct arrivals *a, int port, int n)
{
        memset(a, 0, sizeof(*a));
        a->n_want = n;
        a->want = calloc((size_t)n, sizeof(*a->want));
        a->topic = calloc((size_t)n, sizeof(*a->topic));
        a->at = calloc((size_t)n, sizeof(*a->at));
        if (!a->want || !a->topic || !a->at)
                die("out of memory");
        h_rec_start(&a->rec, port, "goodput-sub", "kuimen/north/#");
}

/* Tallies what arrived since the last call: a byte-exact reading counts once (at its
 * first arrival), a copy as a duplicate, anything else as bad. Returns n_got. */
static int arr_tally(struct arrivals *a)
{
        pthread_mutex_lock(&a->rec.mu);
        for (; a->done < a->rec.n; a->done++) {
                const struct h_msg *m = &a->rec.m[a->done];
                unsigned n;
                if (m->len == READING_LEN && sscanf(m->payload, "{\"n\":%4u", &n) == 1 && (int)n < a->n_want &&
                    memcmp(m->payload, a->want[n], READING_LEN) == 0 && strcmp(m->topic, a->topic[n]) == 0) {
                        if (a->at[n]) {
                                a->dups++;
                        } else {
                                a->at[n] = m->at;
                                a->n_got++;
                                a->last = m->at;
                        }
                } else {
                        a->bad++;
                }
        }
        pthread_mutex_unlock(&a->rec.mu);
        return a->n_got;
}

static void arr_stop(struct arrivals *a)
{
        h_rec_stop(&a->rec);
        h_rec_free(&a->rec);
        free(a->want);
        free(a->topic);
        free(a->at);
}

/* ---- goodput ------------------------------------------------------------------------- */

struct goodput {
        int n, got, bad, dups;
        double secs, pct;
};

static void wait_up(struct h_proc *p, const char *link)
{
        char needle[96];
        snprintf(needle, sizeof(needle), "link: %s: down -> up", link);
        if (!h_log_wait(p, needle, 15000))
                dief("%s never came up (log %s)", link, p->log);
}

/* One run: a base and a center kuimen joined by a sim link of mtu, bitrate and frame
 * loss (no latency, no setup time), n readings published at once on the base. */
static void run_goodput(int n, int mtu, int bitrate, double loss, int tag, struct goodput *g)
{
        char bkeys[160], ckeys[160], path[400];
        struct h_pair k;
        struct h_pub pub;
        struct arrivals a;
        char keys[160];

        snprintf(keys, sizeof(keys), "mtu = %d\nbitrate = %d\nloss = %g", mtu, bitrate, loss);
        struct h_pair_conf conf = { .link = "radio",
                                    .link_keys = keys,
                                    .base_node = "link_status = no",
                                    .base_local = "subscribe = sensors/#",
                                    .center_node = "link_status = no" };
        h_pair_init(&k, "bench-narrow");
        /* tag > 0: an authenticated link (gateway/auth.c), tag_bytes = tag */
        if (tag) {
                snprintf(path, sizeof(path), "%s/base.key", k.dir);
                h_write_text(path, "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n");
                chmod(path, 0600);
                snprintf(path, sizeof(path), "%s/center.key", k.dir);
                h_write_text(path, "north = AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n");
                chmod(path, 0600);
                snprintf(bkeys, sizeof(bkeys), "key_file = base.key\ntag_bytes = %d", tag);
                snprintf(ckeys, sizeof(ckeys), "key_file = center.key\ntag_bytes = %d", tag);
                conf.base_extra = bkeys;
                conf.center_extra = ckeys;
        }
        snprintf(g_dir, sizeof(g_dir), "%s", k.dir);
        arr_start(&a, k.center.port, n);
        h_pair_start(&k, &conf);
        wait_up(&k.base, "radio");
        h_sleep_ms(2500); /* past the link's hold time */

        struct unit_state us[UNITS];
        for (int u = 0; u < UNITS; u++)
                us[u] = (struct unit_state){ .ch4 = 20 * u, .co = 20 + u, .h2s = 5, .o2 = 207, .t = 1763880000u + 3 * u };
        for (int i = 0; i < n; i++) {
                reading(a.want[i], &us[i % UNITS], (unsigned)i);
                snprintf(a.topic[i], sizeof(a.topic[i]), "kuimen/north/sensors/gas-%02d/air", i % UNITS + 1);
        }
        h_pub_start(&pub, k.local.port, "detectors");
        int64_t t0 = h_now_ms();
        for (int i = 0; i < n; i++) {
                char topic[64];
                snprintf(topic, sizeof(topic), "sensors/gas-%02d/air", i % UNITS + 1);
                while (h_pub_send(&pub, topic, a.want[i]) != 0)
                        h_sleep_ms(2);
        }
        int got = 0;
        int64_t last_progress = h_now_ms();
        while (got < n) {
                h_sleep_ms(20);
                int now_got = arr_tally(&a);
                if (now_got > got)
                        got = now_got, last_progress = h_now_ms();
                if (h_now_ms() - last_progress > STALL_MS) {
                        int miss = 0;
                        while (miss < n && a.at[miss])
                                miss++;
                        dief("goodput: stalled at %d of %d messages (first missing: %d; %d altered; %llu of %llu "
                             "publishes acknowledged; logs in %s)",
                             got, n, miss, a.bad, (unsigned long long)pub.acked, (unsigned long long)pub.sent, g_dir);
                }
        }
        arr_tally(&a);
        *g = (struct goodput){ .n = n, .got = a.n_got, .bad = a.bad, .dups = a.dups,
                               .secs = (double)(a.last - t0) / 1000.0 };
        g->pct = 100.0 * (double)n * READING_LEN * 8.0 / ((double)bitrate * g->secs);
        h_pub_stop(&pub);
        arr_stop(&a);
        h_pair_stop(&k);
        h_cleanup(g_dir);
        g_dir[0] = '\0';
}

/* ---- failover ------------------------------------------------------------------------ */

#define FO_RATE 50 /* messages a second on the base's broker */

struct stream {
        struct h_pub *pub;
        atomic_bool stop;
        int sent;
};

static void *stream_main(void *arg)
{
        struct stream *st = arg;
        int64_t start = h_now_ms();
        for (int i = 0; !atomic_load(&st->stop); i++) {
                char payload[32];
                snprintf(payload, sizeof(payload), "0:%d", i);
                while (h_pub_send(st->pub, "sensors/flow", payload) != 0 && !atomic_load(&st->stop))
                        h_sleep_ms(2);
                st->sent = i + 1;
                int64_t wait = start + (int64_t)(i + 1) * 1000 / FO_RATE - h_now_ms();
                if (wait > 0)
                        h_sleep_ms((int)wait);
        }
        return NULL;
}

/* Waits until s1 gains messages and s2 none for a while: traffic is on the fiber. */
static bool on_fiber(struct h_sub *s1, struct h_sub *s2, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                size_t a1 = h_sub_count(s1), a2 = h_sub_count(s2);
                h_sleep_ms(1000);
                if (h_sub_count(s1) >= a1 + FO_RATE / 2 && h_sub_count(s2) == a2)
                        return true;
        }
        return false;
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return (x > y) - (x < y);
}

/*
 * A base with links fiber (mqtt, order 1) and 4g (mqtt, order 2), each to its own
 * center broker through a proxy, all keys at their defaults (ack_timeout 3 s, hold
 * 2 s, keepalive 10 s). Per trial: traffic flows on the fiber, the fiber is cut
 * silently (or, with kill, its center broker, reached without the proxy, is killed:
 * the connection breaks at once), and the trial measures the
 * time from the outage to the first message that arrives at the 4g center broker. Then
 * the fiber returns (the broker restarts) and traffic goes back to it.
 */
static void run_failover(int trials, bool kill)
{
        const char *what = kill ? "the fiber's broker killed" : "a silent cut";
        struct h_broker local, c1, c2;
        struct h_proxy fiber, fourg;
        struct h_sub s1, s2;
        struct h_pub pub;
        struct h_proc k;
        struct stream st;
        char conf[300], klog[300];
        int64_t fo[32];

        h_tmpdir(g_dir, sizeof(g_dir), "bench-failover");
        h_broker_start(&local, g_dir, 0, NULL);
        /* Saved on every change, so that the subscriber's session survives the kill. */
        h_broker_start(&c1, g_dir, 0, kill ? "autosave_interval 1\nautosave_on_changes true\n" : NULL);
        h_broker_start(&c2, g_dir, 0, NULL);
        h_proxy_start(&fiber, c1.port);
        h_proxy_start(&fourg, c2.port);
        h_sub_start(&s1, c1.port, "center1-sub", "kuimen/north/sensors/#", true);
        h_sub_start(&s2, c2.port, "center2-sub", "kuimen/north/sensors/#", true);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", g_dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", g_dir);
        FILE *f = fopen(conf, "w");
        if (!f)
                die("cannot write the config");
        fprintf(f,
                "[node]\nname = north\nspool = %s/state/spool.db\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                "[link fiber]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 1\n"
                "[link 4g]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 2\ndownlink = no\n",
                g_dir, local.port, kill ? c1.port : fiber.port, fourg.port);
        fclose(f);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        wait_up(&k, "fiber");
        wait_up(&k, "4g");
        h_sleep_ms(2500);
        h_pub_start(&pub, local.port, "flow");
        memset(&st, 0, sizeof(st));
        st.pub = &pub;
        pthread_t tp;
        if (pthread_create(&tp, NULL, stream_main, &st) != 0)
                die("cannot start the publisher thread");

        printf("failover, %s: %d trial(s), %d msg/s, fiber and 4g mqtt links with default keys (ack_timeout 3 s, "
               "hold 2 s)\n", what, trials, FO_RATE);
        for (int i = 0; i < trials; i++) {
                if (!on_fiber(&s1, &s2, 30000))
                        dief("failover: traffic never settled on the fiber (trial %d, log %s)", i + 1, klog);
                int ups = h_log_count(&k, "link: fiber: down -> up");
                size_t before = h_sub_count(&s2);
                int64_t cut = h_now_ms();
                if (kill)
                        h_stop(&c1.p, SIGKILL);
                else
                        atomic_store(&fiber.cut, true);
                while (h_sub_count(&s2) == before && h_now_ms() - cut < 30000)
                        h_sleep_ms(2);
                fo[i] = h_sub_count(&s2) > before ? h_now_ms() - cut : -1;
                printf("  trial %2d: %6lld ms%s\n", i + 1, (long long)fo[i],
                       fo[i] < 0 ? " (nothing over 4g within 30 s)" : "");
                fflush(stdout);
                h_sleep_ms(1000);
                if (kill)
                        h_broker_restart(&c1);
                else
                        atomic_store(&fiber.cut, false); /* the fiber returns */
                for (int64_t until = h_now_ms() + 30000; h_log_count(&k, "link: fiber: down -> up") <= ups;
                     h_sleep_ms(50))
                        if (h_now_ms() > until)
                                dief("failover: the fiber never came back (trial %d, log %s)", i + 1, klog);
        }
        atomic_store(&st.stop, true);
        pthread_join(tp, NULL);
        int64_t sorted[32];
        int ok = 0;
        for (int i = 0; i < trials; i++)
                if (fo[i] >= 0)
                        sorted[ok++] = fo[i];
        qsort(sorted, (size_t)ok, sizeof(sorted[0]), cmp_i64);
        if (ok)
                printf("failover after %s, outage to first message over 4g: p50 %.3f s, max %.3f s (%d of %d trials)\n",
                       what, (double)sorted[(ok - 1) / 2] / 1000.0, (double)sorted[ok - 1] / 1000.0, ok, trials);
        else
                printf("failover: no trial delivered over 4g\n");
        h_pub_stop(&pub);
        h_stop(&k, SIGTERM);
        h_sub_stop(&s1);
        h_sub_stop(&s2);
        h_proxy_stop(&fiber);
        h_proxy_stop(&fourg);
        h_stop(&local.p, SIGTERM);
        h_stop(&c1.p, SIGTERM);
        h_stop(&c2.p, SIGTERM);
        h_cleanup(g_dir);
        g_dir[0] = '\0';
}

static void usage(void)
{
        fprintf(stderr, "usage: bench_narrow [--short] [--only goodput|failover] [--messages N] [--runs N] [--trials N]\n"
                        "                    [--mtu B] [--bitrate BITS] [--loss P] [--tag 0|4..16]\n");
}

int main(int argc, char **argv)
{
        int n = 200, runs = 3, trials = 10, mtu = 77, bitrate = 1200, tag = 0;
        double loss = 0;
        bool short_run = false;
        const char *only = NULL;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--short") == 0)
                        n = 24, runs = 1, trials = 2, short_run = true;
                else if (v && strcmp(a, "--only") == 0)
                        only = v, i++;
                else if (v && strcmp(a, "--messages") == 0)
                        n = atoi(v), i++;
                else if (v && strcmp(a, "--runs") == 0)
                        runs = atoi(v), i++;
                else if (v && strcmp(a, "--trials") == 0)
                        trials = atoi(v), i++;
                else if (v && strcmp(a, "--mtu") == 0)
                        mtu = atoi(v), i++;
                else if (v && strcmp(a, "--bitrate") == 0)
                        bitrate = atoi(v), i++;
                else if (v && strcmp(a, "--loss") == 0)
                        loss = atof(v), i++;
                else if (v && strcmp(a, "--tag") == 0)
                        tag = atoi(v), i++;
                else {
                        usage();
                        return 2;
                }
        }
        if (n < 1 || n > 9999 || runs < 1 || runs > 9 || trials < 1 || trials > 32 || mtu < 32 || bitrate < 1 ||
            loss < 0 || loss >= 1 || (tag && (tag < 4 || tag > 16))) {
                usage();
                return 2;
        }
        h_fail_hook = die;
        signal(SIGPIPE, SIG_IGN);
        if (!only || !strcmp(only, "goodput")) {
                printf("narrow-link goodput: sim link, MTU %d, %d bit/s, frame loss %g, %s%.0d; %d readings of %d B JSON on %d topics "
                       "published at once; goodput = payload bytes / (bitrate * T / 8), T = first publish to last "
                       "arrival at the center\n",
                       mtu, bitrate, loss, tag ? "authenticated, tag_bytes " : "unauthenticated", tag, n, READING_LEN, UNITS);
                double pct[9];
                for (int r = 0; r < runs; r++) {
                        struct goodput g;
                        run_goodput(n, mtu, bitrate, loss, tag, &g);
                        pct[r] = g.pct;
                        printf("  run %d: %d/%d delivered byte-exact (%d bad, %d duplicates) in %.2f s: goodput %.1f%%\n",
                               r + 1, g.got, g.n, g.bad, g.dups, g.secs, g.pct);
                        fflush(stdout);
                        if (g.bad)
                                die("goodput: messages arrived altered");
                }
                for (int a = 1; a < runs; a++)
                        for (int b = a; b > 0 && pct[b] < pct[b - 1]; b--) {
                                double t = pct[b];
                                pct[b] = pct[b - 1], pct[b - 1] = t;
                        }
                printf("goodput (median of %d): %.1f%%\n", runs, pct[runs / 2]);
        }
        if (!only || !strcmp(only, "failover")) {
                run_failover(trials, false);
                if (!short_run)
                        run_failover(trials, true);
        }
        return 0;
}

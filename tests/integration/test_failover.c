/* SPDX-License-Identifier: MIT */
/* Failover between links: a silent cut of the fiber (no FIN, no RST), its return, and a killed broker. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

/* ---- the stream ------------------------------------------------------------------ */

#define RATE 200
#define MAXMSG 8000

struct stream {
        struct h_pub *pub;
        int count;
        int64_t sent_at[MAXMSG]; /* monotonic ms each seq was published */
};

static void *stream_main(void *arg)
{
        struct stream *st = arg;
        int64_t start = h_now_ms();
        for (int i = 0; i < st->count; i++) {
                char payload[32];
                snprintf(payload, sizeof(payload), "0:%d", i);
                st->sent_at[i] = h_now_ms();
                while (h_pub_send(st->pub, "sensors/flow", payload) != 0)
                        h_sleep_ms(2);
                int64_t wait = start + (int64_t)(i + 1) * 1000 / RATE - h_now_ms();
                if (wait > 0)
                        h_sleep_ms((int)wait);
        }
        return NULL;
}

/* Polls subscribers until all count seqs arrived or timeout; records first-seen times. */
static int wait_all(struct h_sub *s1, struct h_sub *s2, int count, int64_t *seen, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        int have = 0;
        size_t done1 = 0, done2 = 0;
        while (h_now_ms() < until && have < count) {
                struct h_sub *subs[2] = { s1, s2 };
                size_t *done[2] = { &done1, &done2 };
                for (int k = 0; k < 2; k++) {
                        if (!subs[k])
                                continue;
                        pthread_mutex_lock(&subs[k]->mu);
                        for (; *done[k] < subs[k]->n; (*done[k])++) {
                                int t, seq;
                                if (sscanf(subs[k]->rx[*done[k]].payload, "%d:%d", &t, &seq) == 2 && seq >= 0 &&
                                    seq < count && !seen[seq]) {
                                        seen[seq] = h_now_ms();
                                        have++;
                                }
                        }
                        pthread_mutex_unlock(&subs[k]->mu);
                }
                h_sleep_ms(5);
        }
        return have;
}

struct seen_thread {
        struct h_sub *s1, *s2;
        int count, have;
        int64_t *seen;
        pthread_t t;
};

static void *seen_main(void *arg)
{
        struct seen_thread *w = arg;
        w->have = wait_all(w->s1, w->s2, w->count, w->seen, 120000);
        return NULL;
}

/* Time from the cut to the first delivered message published after it. */
static int64_t failover_ms(const struct stream *st, const int64_t *seen, int count, int64_t cut)
{
        int64_t first = -1;
        for (int i = 0; i < count; i++)
                if (st->sent_at[i] > cut && seen[i] && (first < 0 || seen[i] < first))
                        first = seen[i];
        return first < 0 ? -1 : first - cut;
}

/* Longest gap between consecutive arrivals of messages published in [from, to). */
static int64_t longest_gap(const struct stream *st, const int64_t *seen, int count, int64_t from, int64_t to)
{
        int64_t prev = -1, gap = 0;
        for (int i = 0; i < count; i++) {
                if (st->sent_at[i] < from || st->sent_at[i] >= to || !seen[i])
                        continue;
                if (prev >= 0 && seen[i] - prev > gap)
                        gap = seen[i] - prev;
                if (seen[i] > prev)
                        prev = seen[i];
        }
        return gap;
}

static void write_conf(const char *path, const char *dir, int local, int fiber, int fourg)
{
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/state/spool.db\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#\n"
                "[link fiber]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 1\nkeepalive = 10s\nack_timeout = 2s\nhold = 2s\n"
                "[link 4g]\ntype = mqtt\nuri = tcp://127.0.0.1:%d\norder = 2\nkeepalive = 10s\nack_timeout = 2s\nhold = 1s\ndownlink = no\n",
                dir, local, fiber, fourg);
        fclose(f);
}

/* A silent cut of the fiber: traffic continues over 4g within 5 s; when the fiber
 * returns it carries again (a later silent cut of 4g causes no stall); nothing lost. */
Test(failover, silent_cut_and_return, .timeout = 240)
{
        char dir[200], conf[300], klog[300];
        struct h_broker local, center;
        struct h_proxy fiber, fourg;
        struct h_sub sub;
        struct h_pub pub;
        struct h_proc k;
        static struct stream st;
        static int64_t seen[MAXMSG];

        h_tmpdir(dir, sizeof(dir), "failover");
        h_broker_start(&local, dir, 0, NULL);
        int p2 = h_free_port();
        char extra[64];
        snprintf(extra, sizeof(extra), "listener %d 127.0.0.1\n", p2);
        h_broker_start(&center, dir, 0, extra);
        cr_assert(h_wait_port(p2, 5000));
        h_proxy_start(&fiber, center.port);
        h_proxy_start(&fourg, p2);
        h_sub_start(&sub, center.port, "center-sub", "kuimen/north/sensors/#", true);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        write_conf(conf, dir, local.port, fiber.port, fourg.port);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "link: fiber: down -> up", 10000));
        cr_assert(h_log_wait(&k, "link: 4g: down -> up", 10000));
        h_sleep_ms(2500); /* both past their hold time */
        h_pub_start(&pub, local.port, "flow");

        memset(&st, 0, sizeof(st));
        memset(seen, 0, sizeof(seen));
        st.pub = &pub;
        st.count = RATE * 24;
        struct seen_thread w = { .s1 = &sub, .count = st.count, .seen = seen };
        pthread_t tp;
        cr_assert_eq(pthread_create(&w.t, NULL, seen_main, &w), 0);
        cr_assert_eq(pthread_create(&tp, NULL, stream_main, &st), 0);

        h_sleep_ms(4000);
        int64_t cut = h_now_ms();
        fiber.cut = true;
        cr_assert(h_log_wait(&k, "link: fiber: up -> down (no acknowledgement for", 8000), "the cut is seen by its acks");
        h_sleep_ms(6000);
        fiber.cut = false; /* the fiber returns (the old connection flows again, too) */
        int64_t back = h_now_ms();
        cr_assert(h_log_wait(&k, "link: fiber: down -> up", 15000), "fiber reconnects");
        h_sleep_ms(4000);
        int64_t cut4g = h_now_ms();
        fourg.cut = true; /* traffic must already be back on the fiber */
        pthread_join(tp, NULL);
        cr_assert(h_pub_flush(&pub, 20000));
        pthread_join(w.t, NULL);

        int64_t fo = failover_ms(&st, seen, st.count, cut);
        int64_t gap_after = longest_gap(&st, seen, st.count, cut4g, cut4g + 4000);
        cr_log_info("failover after a silent cut: %lld ms; longest gap after cutting 4g: %lld ms; back at +%lld ms",
                    (long long)fo, (long long)gap_after, (long long)(back - cut));
        cr_assert_eq(w.have, st.count, "every message delivered (%d of %d)", w.have, st.count);
        cr_assert_geq(fo, 0);
        cr_assert_leq(fo, 5000, "traffic continues within 5 s of the cut (%lld ms)", (long long)fo);
        cr_assert_leq(gap_after, 1500, "traffic was back on the fiber when 4g was cut (gap %lld ms)", (long long)gap_after);

        h_pub_stop(&pub);
        int stc = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(stc) && WEXITSTATUS(stc) == 0);
        h_sub_stop(&sub);
        h_proxy_stop(&fiber);
        h_proxy_stop(&fourg);
        h_stop(&local.p, SIGTERM);
        h_stop(&center.p, SIGTERM);
        h_cleanup(dir);
}

/* The fiber's broker is killed: the connection breaks at once, 4g (another center
 * broker) carries on; nothing is lost. */
Test(failover, fiber_broker_killed, .timeout = 180)
{
        char dir[200], conf[300], klog[300];
        struct h_broker local, c1, c2;
        struct h_sub s1, s2;
        struct h_pub pub;
        struct h_proc k;
        static struct stream st;
        static int64_t seen[MAXMSG];

        h_tmpdir(dir, sizeof(dir), "fokill");
        h_broker_start(&local, dir, 0, NULL);
        /* Saved on every change: what c1 acknowledged survives its kill (for s1). */
        h_broker_start(&c1, dir, 0, "autosave_interval 1\nautosave_on_changes true\n");
        h_broker_start(&c2, dir, 0, NULL);
        h_sub_start(&s1, c1.port, "center-sub", "kuimen/north/sensors/#", true);
        h_sub_start(&s2, c2.port, "center-sub", "kuimen/north/sensors/#", true);
        snprintf(conf, sizeof(conf), "%s/kuimen.conf", dir);
        snprintf(klog, sizeof(klog), "%s/kuimen.log", dir);
        write_conf(conf, dir, local.port, c1.port, c2.port);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, klog, args);
        cr_assert(h_log_wait(&k, "link: fiber: down -> up", 10000));
        cr_assert(h_log_wait(&k, "link: 4g: down -> up", 10000));
        h_sleep_ms(2500);
        h_pub_start(&pub, local.port, "flow");
        memset(&st, 0, sizeof(st));
        memset(seen, 0, sizeof(seen));
        st.pub = &pub;
        st.count = RATE * 10;
        struct seen_thread w = { .s1 = &s1, .s2 = &s2, .count = st.count, .seen = seen };
        pthread_t tp;
        cr_assert_eq(pthread_create(&w.t, NULL, seen_main, &w), 0);
        cr_assert_eq(pthread_create(&tp, NULL, stream_main, &st), 0);
        h_sleep_ms(3000);
        int64_t cut = h_now_ms();
        h_stop(&c1.p, SIGKILL);
        h_sleep_ms(1000);
        h_broker_restart(&c1); /* s1 collects what c1 had acknowledged */
        pthread_join(tp, NULL);
        cr_assert(h_pub_flush(&pub, 20000));
        pthread_join(w.t, NULL);
        int64_t fo = failover_ms(&st, seen, st.count, cut);
        cr_log_info("failover after killing the fiber's broker: %lld ms", (long long)fo);
        cr_assert_eq(w.have, st.count, "every message delivered (%d of %d)", w.have, st.count);
        cr_assert_leq(fo, 5000, "(%lld ms)", (long long)fo);
        h_pub_stop(&pub);
        h_stop(&k, SIGTERM);
        h_sub_stop(&s1);
        h_sub_stop(&s2);
        h_stop(&local.p, SIGTERM);
        h_stop(&c1.p, SIGTERM);
        h_stop(&c2.p, SIGTERM);
        h_cleanup(dir);
}

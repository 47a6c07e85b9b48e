/* SPDX-License-Identifier: MIT */
/* Suite beidou: base kuimen -> beidou.so -> simulated module (pty) -> "satellite" (UDP) -> simulated module -> beidou.so -> center kuimen -> center broker. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * Two tests/sim/beidou_sim processes stand in for the base's and the center's
 * terminals: the base's card 4238473 sends to 4238474 and back. The sims run at a
 * 1 s service interval (real cards: 60 s; the interval comes from the card, so the
 * driver takes whatever the sim says), with 50 ms to the feedback and 100 ms on the
 * air. Faults go in through each sim's control FIFO; what the driver made of them is
 * read from kuimen's log ("link: sat: up -> down (REASON)") and the sims' logs.
 */

#define BASE_CARD "4238473"
#define CENTER_CARD "4238474"

struct bdenv {
        char dir[200], bconf[300], cconf[300], blog[300], clog[300];
        char dev_a[300], dev_b[300], ctl_a[300], ctl_b[300], slog_a[300], slog_b[300];
        struct h_broker local, center;
        struct h_proc base, ctr, sim_a, sim_b;
        struct h_pub pub, cpub;    /* a terminal at the base, an operator at the center */
        struct h_sub sub, cmds;    /* the center broker's kuimen/north/#, the base broker's cmd/# */
};

/* One client to connect; bd_up connects the four side by side (Paho takes about a
 * second for each). */
struct starter {
        void *obj;
        int port;
        const char *id, *filter; /* filter NULL: a publisher */
};

static void *start_client(void *arg)
{
        struct starter *s = arg;
        if (s->filter)
                h_sub_start(s->obj, s->port, s->id, s->filter, false);
        else
                h_pub_start(s->obj, s->port, s->id);
        return NULL;
}

struct bdconf {
        const char *proto;       /* of the sims: "bds3" or "2.1" */
        const char *level;       /* the cards' communication level */
        const char *base_proto;  /* protocol = at the base */
        const char *ctr_proto;   /* at the center */
        const char *base_extra;  /* more keys of the base's [link sat], then sections */
        const char *card_poll;   /* the base's card_poll: 500ms unless said */
        int interval;            /* the cards' service interval in s: 1 unless said */
};

/* The e2e test's card interval: 1 s, or KM_BEIDOU_INTERVAL (the drill at a real card's
 * 60 s: KM_BEIDOU_INTERVAL=60 build/tests/integration/test_beidou --filter='beidou/end*'). */
static int drill_interval(void)
{
        const char *v = getenv("KM_BEIDOU_INTERVAL");
        int i = v ? atoi(v) : 1;
        return i > 0 ? i : 1;
}

static void start_sim(struct bdenv *e, struct h_proc *p, const char *log, const char *dev, const char *ctl,
                      const char *card, int udp, int peer, int peer2, const struct bdconf *c)
{
        const char *sim = getenv("KM_BEIDOU_SIM");
        cr_assert(sim, "KM_BEIDOU_SIM is not set (meson sets it)");
        char u[16], pr[16], pr2[16], iv[16];
        snprintf(iv, sizeof(iv), "%d", c->interval > 0 ? c->interval : 1);
        snprintf(u, sizeof(u), "%d", udp);
        snprintf(pr, sizeof(pr), "%d", peer);
        snprintf(pr2, sizeof(pr2), "%d", peer2);
        char *argv[] = { (char *)sim, "--protocol", (char *)c->proto, "--card", (char *)card, "--interval", iv,
                         "--level", (char *)c->level, "--link", (char *)dev, "--control", (char *)ctl, "--udp", u,
                         "--peer", pr, "--boot-ms", "200", "--notime-ms", "200", "--fki-ms", "50", "--latency-ms",
                         "100", "--seed", udp % 2 ? "7" : "11", peer2 ? "--peer" : NULL, pr2, NULL };
        h_spawn(p, log, argv, NULL);
        cr_assert(h_log_wait(p, "booted", 5000), "the simulator did not start (%s)", log);
        (void)e;
}

/* The timings every link here shares: quick to notice and quick to come back.
 * ack_timeout follows the README's rule (an ack waits for the other card's next slot:
 * at least twice the interval, plus a margin), shortened as the interval is. */
#define LINK_COMMON                                                                                            \
        "classes = alert, command, position\nsettle = 500ms\nrefusal_retry = 500ms\n"                       \
        "reopen = 200ms\nsilence = 2s\nfeedback_timeout = 3s\nhold = 0\n"

/* An ack waits for the other card's next slot: the README's rule (twice the interval
 * and a margin), shortened as the interval is. */
static int ack_s(const struct bdconf *c)
{
        int i = c->interval > 0 ? c->interval : 1;
        return 2 * i + (i >= 30 ? 30 : 4);
}

static void bd_up(struct bdenv *e, const char *tag, const struct bdconf *c)
{
        memset(e, 0, sizeof(*e));
        h_tmpdir(e->dir, sizeof(e->dir), tag);
        h_broker_start(&e->local, e->dir, 0, NULL);
        h_broker_start(&e->center, e->dir, 0, NULL);
#define P(f, name) snprintf(e->f, sizeof(e->f), "%s/" name, e->dir)
        P(bconf, "base.conf");
        P(cconf, "center.conf");
        P(blog, "base.log");
        P(clog, "center.log");
        P(dev_a, "bd-base");
        P(dev_b, "bd-center");
        P(ctl_a, "sim-base.ctl");
        P(ctl_b, "sim-center.ctl");
        P(slog_a, "sim-base.log");
        P(slog_b, "sim-center.log");
#undef P
        int ua = h_free_port(), ub = h_free_port();
        start_sim(e, &e->sim_a, e->slog_a, e->dev_a, e->ctl_a, BASE_CARD, ua, ub, 0, c);
        start_sim(e, &e->sim_b, e->slog_b, e->dev_b, e->ctl_b, CENTER_CARD, ub, ua, 0, c);

        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert(plugins, "KM_SIM_PLUGIN_DIR is not set");
        FILE *f = fopen(e->bconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/base/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link sat]\ntype = beidou\ndevice = %s\nprotocol = %s\npeer_card = " CENTER_CARD "\n" LINK_COMMON
                "ack_timeout = %ds\ncard_poll = %s\n%s\n[positions]\ntrack_interval = 0\n",
                e->dir, plugins, e->local.port, e->dev_a, c->base_proto, ack_s(c), c->card_poll ? c->card_poll : "500ms",
                c->base_extra ? c->base_extra : "");
        fclose(f);
        f = fopen(e->cconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link sat]\ntype = beidou\ndevice = %s\nprotocol = %s\npeer_card = " BASE_CARD "\npeers = north\n" LINK_COMMON
                "ack_timeout = %ds\ncard_poll = 500ms\n",
                e->dir, plugins, e->center.port, e->dev_b, c->ctr_proto, ack_s(c));
        fclose(f);
        const char *cargs[] = { "--config", e->cconf, "--log-level", "debug", NULL },
                   *bargs[] = { "--config", e->bconf, "--log-level", "debug", NULL };
        h_kuimen_start(&e->ctr, e->clog, cargs);
        h_kuimen_start(&e->base, e->blog, bargs);
        struct starter st[] = { { &e->pub, e->local.port, "terminal", NULL },
                                { &e->cpub, e->center.port, "operator", NULL },
                                { &e->sub, e->center.port, "center-sub", "kuimen/north/#" },
                                { &e->cmds, e->local.port, "base-cmd", "cmd/#" } };
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
                cr_assert_eq(pthread_create(&th[i], NULL, start_client, &st[i]), 0);
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        cr_assert(h_log_wait(&e->ctr, "sat: down -> up (card " CENTER_CARD " ready)", 10000),
                  "the center's link did not come up (%s)", e->clog);
        cr_assert(h_log_wait(&e->base, "sat: down -> up (card " BASE_CARD " ready)", 10000),
                  "the base's link did not come up (%s)", e->blog);
        cr_assert(h_log_wait(&e->base, "ingest: connected", 10000));
}

static void bd_down(struct bdenv *e)
{
        h_sub_stop(&e->sub);
        h_sub_stop(&e->cmds);
        h_pub_stop(&e->pub);
        h_pub_stop(&e->cpub);
        /* Under ASan a leak or an error in kuimen or beidou.so shows as a non-zero exit. */
        int sb = h_stop(&e->base, SIGTERM), sc = h_stop(&e->ctr, SIGTERM);
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "the base exits 0 on SIGTERM (status %d, %s)", sb, e->blog);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "the center exits 0 on SIGTERM (status %d, %s)", sc, e->clog);
        h_stop(&e->sim_a, SIGTERM);
        h_stop(&e->sim_b, SIGTERM);
        h_stop(&e->local.p, SIGTERM);
        h_stop(&e->center.p, SIGTERM);
}

/* One line to a sim's control FIFO. */
static void fault(const char *ctl, const char *cmd)
{
        int fd = open(ctl, O_WRONLY | O_NONBLOCK);
        cr_assert(fd >= 0, "%s: %s", ctl, strerror(errno));
        char line[256];
        int n = snprintf(line, sizeof(line), "%s\n", cmd);
        cr_assert_eq(write(fd, line, (size_t)n), n);
        close(fd);
}

static bool wait_count(const struct h_proc *p, const char *needle, int n, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                if (h_log_count(p, needle) >= n)
                        return true;
                h_sleep_ms(20);
        }
        return false;
}

static bool has_payload(struct h_sub *r, const char *pl)
{
        bool yes = false;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n && !yes; i++)
                yes = strcmp(r->rx[i].payload, pl) == 0;
        pthread_mutex_unlock(&r->mu);
        return yes;
}

/* Messages r got on topics starting with prefix. */
static size_t count_topic(struct h_sub *r, const char *prefix)
{
        size_t n = 0;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n; i++)
                n += strncmp(r->rx[i].topic, prefix, strlen(prefix)) == 0;
        pthread_mutex_unlock(&r->mu);
        return n;
}

/* Whether the last message on a topic starting with prefix contains needle. */
static bool last_on(struct h_sub *r, const char *prefix, const char *needle)
{
        const char *last = NULL;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < r->n; i++)
                if (strncmp(r->rx[i].topic, prefix, strlen(prefix)) == 0)
                        last = r->rx[i].payload;
        bool yes = last && strstr(last, needle);
        pthread_mutex_unlock(&r->mu);
        return yes;
}

static bool wait_payload(struct h_sub *r, const char *pl, int timeout_ms)
{
        int64_t until = h_now_ms() + timeout_ms;
        while (h_now_ms() < until) {
                if (has_payload(r, pl))
                        return true;
                h_sleep_ms(20);
        }
        return false;
}

/* Distinct payloads (h_sub keeps each once; every payload here is unique). */
static size_t distinct(struct h_sub *r)
{
        return h_sub_count(r);
}

static const struct bdconf bds3 = { .proto = "bds3", .level = "2", .base_proto = "bds3", .ctr_proto = "bds3" };

/* Alerts, commands and the latest position cross; sensor readings do not (the link's
 * classes); the link never leaves UP, and the driver never sends inside the card's
 * interval (the module refused nothing). */
Test(beidou, end_to_end_classes_interval)
{
        struct bdenv e;
        struct h_sub *ctr = &e.sub, *cmds = &e.cmds;
        char pl[200];
        struct bdconf c = bds3;
        c.interval = drill_interval();
        int wait_ms = 15000 * c.interval;

        bd_up(&e, "bd-e2e", &c);
        snprintf(pl, sizeof(pl),
                 "beidou: card " BASE_CARD " (bds3), class 3, service interval %d s, level 2: "
                 "frames of 124 B (mixed coding), to card " CENTER_CARD, c.interval);
        cr_assert(h_log_count(&e.base, pl) == 1, "the card's figures are not in %s", e.blog);
        for (int i = 1; i <= 6; i++) {
                snprintf(pl, sizeof(pl), "A%d", i);
                h_pub_send(&e.pub, "alert/gas/zone3", pl);
                snprintf(pl, sizeof(pl), "{\"m\":%d.5}", i);
                h_pub_send(&e.pub, "sensors/water/level", pl);
        }
        for (int i = 1; i <= 5; i++) {
                snprintf(pl, sizeof(pl), "{\"lat\":30.81%d,\"lon\":108.4,\"ts\":\"2026-12-07T12:00:0%dZ\"}", i, i);
                h_pub_send(&e.pub, "pos/uav-07", pl);
        }
        for (int i = 1; i <= 3; i++) {
                snprintf(pl, sizeof(pl), "C%d", i);
                h_pub_send(&e.cpub, "kuimen/north/cmd/siren", pl);
        }
        cr_assert(h_pub_flush(&e.pub, 5000));
        cr_assert(h_pub_flush(&e.cpub, 5000));
        cr_assert(wait_payload(cmds, "C3", wait_ms), "commands did not reach the base");
        int64_t t = h_now_ms();
        while (h_now_ms() - t < wait_ms && (count_topic(ctr, "kuimen/north/alert/") < 6 || !last_on(ctr, "kuimen/north/pos/", "30.815")))
                h_sleep_ms(50);
        h_sleep_ms(1200 * c.interval); /* what else may come */
        cr_assert_eq(count_topic(ctr, "kuimen/north/alert/"), 6, "alerts: %zu of 6", count_topic(ctr, "kuimen/north/alert/"));
        for (int i = 1; i <= 6; i++) {
                snprintf(pl, sizeof(pl), "A%d", i);
                cr_assert(has_payload(ctr, pl), "%s missing", pl);
        }
        cr_assert_eq(distinct(cmds), 3, "commands: %zu of 3", distinct(cmds));
        size_t npos = count_topic(ctr, "kuimen/north/pos/");
        cr_assert(npos >= 1 && npos <= 5, "%zu positions", npos);
        cr_assert(last_on(ctr, "kuimen/north/pos/", "30.815"), "the latest position is not the last");
        cr_assert_eq(count_topic(ctr, "kuimen/north/sensors/"), 0, "a sensor reading crossed a link without that class");
        cr_assert_eq(count_topic(ctr, "kuimen/north/"), 6 + npos + 3 /* the operator's commands */, "something else crossed");

        fault(e.ctl_a, "stats");
        fault(e.ctl_b, "stats");
        cr_assert(h_log_wait(&e.sim_a, "stats:", 2000));
        cr_assert(h_log_wait(&e.sim_b, "stats:", 2000));
        bd_down(&e);
        /* The base's sim accepted frames and refused none for the interval: the driver
         * keeps the card's pace by itself. */
        cr_assert(h_log_count(&e.sim_a, "refused 1:0 2:0 3:0 4:0 5:0 6:0 11:0 0:0") >= 1, "the base's module refused a send (%s)", e.slog_a);
        cr_assert(h_log_count(&e.sim_b, "refused 1:0 2:0 3:0 4:0 5:0 6:0 11:0 0:0") >= 1, "the center's module refused a send (%s)", e.slog_b);
        cr_assert(h_log_count(&e.sim_a, "accepted") >= 2);
        cr_assert_eq(h_log_count(&e.base, "sat: up -> "), 0, "the base's link flapped (%s)", e.blog);
        cr_assert_eq(h_log_count(&e.ctr, "sat: up -> "), 0, "the center's link flapped (%s)", e.clog);
        cr_assert_eq(h_log_count(&e.base, "beidou: garbled"), 0);
        h_cleanup(e.dir);
}

/* A fault that makes the module refuse a send: "on" to the base's sim, an alert
 * published, the link's reason awaited, "off" (NULL: it clears itself), the link up
 * again and the alert delivered. */
struct refusal {
        const char *on, *off, *reason, *sim; /* sim: what the module's log shows for it */
};

/* Runs codes over the base's link; then, with gate, the interval-not-elapsed case.
 * Every alert arrives once. */
static void run_refusals(const struct bdconf *c, const char *tag, const struct refusal *codes, size_t n, bool gate,
                         const char *card_log)
{
        struct bdenv e;
        struct h_sub *alerts = &e.sub;
        char pl[32];
        int ups = 1;

        bd_up(&e, tag, c);
        if (card_log)
                cr_assert(h_log_count(&e.base, card_log) == 1, "no \"%s\" in %s", card_log, e.blog);
        /* A command down while the faults come and go: it arrives once. */
        h_pub_send(&e.cpub, "kuimen/north/cmd/pump", "K1");
        for (size_t i = 0; i < n; i++) {
                fault(e.ctl_a, codes[i].on);
                h_sleep_ms(50);
                snprintf(pl, sizeof(pl), "R%zu", i);
                h_pub_send(&e.pub, "alert/test", pl);
                cr_assert(h_log_wait(&e.base, codes[i].reason, 5000), "no \"%s\" in %s", codes[i].reason, e.blog);
                if (codes[i].off)
                        fault(e.ctl_a, codes[i].off);
                cr_assert(wait_count(&e.base, "-> up (card " BASE_CARD " ready)", ++ups, 5000), "not up again after %s (%s)",
                          codes[i].on, e.blog);
                cr_assert(wait_payload(alerts, pl, 8000), "%s did not arrive after %s", pl, codes[i].on);
                /* Each refusal was the module's answer, not the driver's guess. */
                cr_assert(h_log_count(&e.sim_a, codes[i].sim) >= 1, "the module did not say \"%s\" (%s)", codes[i].sim,
                          e.slog_a);
        }
        if (gate) {
                /* Interval not elapsed (the card's clock ahead of ours): the same frame
                 * goes again when the time left is over, and the link stays up. */
                int downs = h_log_count(&e.base, "sat: up -> down");
                /* 2 s: longer than the card's 1 s, so the driver's own wait cannot hide it. */
                fault(e.ctl_a, "gate 2");
                h_pub_send(&e.pub, "alert/test", "GATE");
                cr_assert(h_log_wait(&e.base, "the card's service interval has not elapsed; the frame goes again in ", 5000),
                          "%s", e.blog);
                cr_assert(wait_payload(alerts, "GATE", 8000));
                cr_assert_eq(h_log_count(&e.base, "sat: up -> down"), downs, "an early send took the link down");
                /* the seconds left as the module said them: the driver's log names the same */
                char said[96];
                int w = 0;
                for (int k = 1; k <= 2 && !w; k++)
                        for (int code = 0; code <= 4 && !w; code += code == 1 ? 3 : 1) {
                                snprintf(said, sizeof(said), "refused code %d wait %d", code, k);
                                if (h_log_count(&e.sim_a, said))
                                        w = k;
                        }
                cr_assert(w, "the module refused nothing for the interval (%s)", e.slog_a);
                snprintf(said, sizeof(said), "the frame goes again in %d s", w);
                cr_assert(h_log_count(&e.base, said) >= 1, "no \"%s\" in %s", said, e.blog);
        }
        cr_assert_eq(count_topic(alerts, "kuimen/north/alert/"), n + gate, "alerts: %zu of %zu", count_topic(alerts, "kuimen/north/alert/"), n + gate);
        cr_assert(wait_payload(&e.cmds, "K1", 8000), "the command did not reach the base");
        cr_assert_eq(distinct(&e.cmds), 1);
        bd_down(&e);
        h_cleanup(e.dir);
}

/* Each BDS-3 refusal ($BDFKI reason) becomes its reason, the link comes back after it,
 * and nothing published meanwhile is lost. Two halves, run side by side. */
Test(beidou, bds3_refusals_suppress_silence_permission_interval, .timeout = 60)
{
        static const struct refusal codes[] = {
                { "suppress on", "suppress off", "sat: up -> down (transmission suppressed)", "refused code 2 " },
                { "silence on", "silence off", "sat: up -> down (radio silence)", "refused code 3 " },
                { "permission off", "permission on", "sat: up -> down (no permission to send)", "refused code 6 " },
        };
        run_refusals(&bds3, "bd-refuse1", codes, 3, true, NULL);
}

Test(beidou, bds3_refusals_weak_checksum_card, .timeout = 60)
{
        /* fki-error 3: the module answers reason 11 three times; the driver sends the
         * line twice more, then gives the frame back. */
        static const struct refusal codes[] = {
                { "weak on", "weak off", "-> down (weak signal: power not locked)", "refused code 4 " },
                { "fki-error 3", NULL, "sat: up -> down (checksum errors at the module)", "refused code 11 " },
                { "card out", "card in", "sat: up -> down (no IC card)", "refused code 5 " },
        };
        /* The card is read every 30 s here, so the send finds it gone (reason 5);
         * once gone it is asked for every 2 s. */
        const struct bdconf c = { .proto = "bds3", .level = "2", .base_proto = "bds3", .ctr_proto = "bds3", .card_poll = "30s" };
        run_refusals(&c, "bd-refuse2", codes, 3, false, NULL);
}

/* Garbled lines are counted and logged once, a module reset and an unplugged adapter
 * take the link down with their reason and it comes back by itself; nothing is lost. */
Test(beidou, garbled_reset_unplug, .timeout = 60)
{
        struct bdenv e;
        struct h_sub *alerts = &e.sub;

        bd_up(&e, "bd-faults", &bds3);

        fault(e.ctl_a, "garble 8");
        h_pub_send(&e.pub, "alert/test", "G1");
        cr_assert(wait_payload(alerts, "G1", 8000));
        cr_assert(h_log_wait(&e.base, "beidou: garbled line from the module (checksum mismatch)", 2000));
        cr_assert_eq(h_log_count(&e.base, "beidou: garbled line"), 1, "garbled lines are logged once per 10 s");

        fault(e.ctl_a, "reset 400");
        cr_assert(h_log_wait(&e.base, "beidou: the module restarted", 5000), "%s", e.blog);
        cr_assert(h_log_wait(&e.base, "sat: up -> down (module has no time yet)", 2000));
        h_pub_send(&e.pub, "alert/test", "G2");
        cr_assert(wait_count(&e.base, "-> up (card " BASE_CARD " ready)", 2, 5000));
        cr_assert(wait_payload(alerts, "G2", 8000));

        fault(e.ctl_a, "unplug");
        cr_assert(h_log_wait(&e.base, "sat: up -> down (device ", 3000), "%s", e.blog);
        h_pub_send(&e.pub, "alert/test", "G3");
        h_sleep_ms(600);
        cr_assert(!has_payload(alerts, "G3"));
        fault(e.ctl_a, "plug");
        cr_assert(wait_count(&e.base, "-> up (card " BASE_CARD " ready)", 3, 6000), "%s", e.blog);
        cr_assert(wait_payload(alerts, "G3", 8000));
        cr_assert_eq(count_topic(alerts, "kuimen/north/alert/"), 3);
        bd_down(&e);
        cr_assert_eq(h_log_count(&e.base, ", garbled 8,"), 1, "the driver did not count 8 garbled lines (%s)", e.blog);
        h_cleanup(e.dir);
}

/* Two alerts up (payloads A1, A2 for a = "A") and two commands down (C1, C2), each
 * exactly once; then both ends stop, and the base's link never left UP. */
static void two_each_way(struct bdenv *e, const char *a, const char *c)
{
        char p[4][8];
        for (int i = 0; i < 2; i++) {
                snprintf(p[i], sizeof(p[i]), "%s%d", a, i + 1);
                snprintf(p[2 + i], sizeof(p[2 + i]), "%s%d", c, i + 1);
                h_pub_send(&e->pub, "alert/a", p[i]);
        }
        h_pub_send(&e->cpub, "kuimen/north/cmd/pump", p[2]);
        h_pub_send(&e->cpub, "kuimen/north/cmd/pump", p[3]);
        cr_assert(wait_payload(&e->sub, p[1], 10000));
        cr_assert(wait_payload(&e->cmds, p[3], 10000));
        h_sleep_ms(500);
        cr_assert_eq(count_topic(&e->sub, "kuimen/north/alert/"), 2);
        cr_assert_eq(distinct(&e->cmds), 2);
        bd_down(e);
        cr_assert_eq(h_log_count(&e->base, "sat: up -> "), 0, "the base's link flapped (%s)", e->blog);
}

static const struct bdconf v21 = { .proto = "2.1", .level = "3", .base_proto = "2.1", .ctr_proto = "auto" };

/* The 2.1 dialect end to end, the center finding it by itself (protocol = auto);
 * level-3 cards give 77-byte frames. */
Test(beidou, v21_end_to_end_auto, .timeout = 60)
{
        struct bdenv e;

        bd_up(&e, "bd-v21", &v21);
        cr_assert(h_log_count(&e.base, "beidou: card " BASE_CARD " (2.1), class 3, service interval 1 s, level 3: "
                                        "frames of 77 B (mixed coding)") == 1, "%s", e.blog);
        cr_assert(h_log_count(&e.ctr, "beidou: card " CENTER_CARD " (2.1)") == 1, "auto did not find 2.1 (%s)", e.clog);
        two_each_way(&e, "V", "K");
        h_cleanup(e.dir);
}

/* 2.1's refusals ($BDFKI suppression field, and a wait with exec N) become their
 * reasons; a card pulled reads back as all zeros. */
Test(beidou, v21_refusals, .timeout = 60)
{
        static const struct refusal codes[] = {
                { "suppress on", "suppress off", "sat: up -> down (transmission suppressed)", "refused code 1 " },
                { "battery on", "battery off", "sat: up -> down (battery low)", "refused code 2 " },
                { "silence on", "silence off", "sat: up -> down (radio silence)", "refused code 3 " },
                { "card out", "card in", "-> down (no IC card)", "refused code 0 wait 0" },
        };
        /* A 2.1 refusal says no more than N: the driver reads the card again, which
         * reads as all zeros (card_poll 30 s: the send comes first). */
        struct bdconf c = v21;
        c.card_poll = "30s";
        run_refusals(&c, "bd-v21r", codes, 4, true, NULL);
}

/* --check-config runs the plugin's own checks: an unknown protocol, a bad card number,
 * an unknown coding and line speed, a bad peer_cards list are refused, each naming its line; a device that is not there
 * is no config error (the link starts DOWN and retries). */
Test(beidou, check_config, .timeout = 30)
{
        char dir[200], conf[300], out[4096];
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        cr_assert(plugins);
        h_tmpdir(dir, sizeof(dir), "bd-check");
        snprintf(conf, sizeof(conf), "%s/k.conf", dir);
        static const struct {
                const char *keys, *want;
        } cases[] = {
                { "protocol = 5.0\npeer_card = 4238474\n", "k.conf:10: protocol: protocol = 5.0: expected bds3, 2.1, 4.0 or auto" },
                { "peer_card = 42384741234\n", "k.conf:10: peer_card: peer_card = 42384741234: expected a card number of 1 to 8 digits, not 0" },
                { "peer_card = 4238474\ncoding = base64\n", "k.conf:11: coding: coding = base64: expected mixed or code" },
                { "protocol = bds3\n", "peer_card: required" },
                { "peer_card = 4238474\nbaud = 12345\n", "k.conf:11: baud: baud = 12345: not a line speed" },
                { "peer_card = 4238474\npeer_cards = north\n", "k.conf:11: peer_cards: peer_cards = north: expected NAME:CARD" },
                { "peer_card = 4238474\npeer_cards = north:0\n", "k.conf:11: peer_cards: peer_cards = north:0: expected NAME:CARD, ... with card numbers" },
                { "peer_card = 4238474\npeer_cards = north:4238473, south:4238475\n", "k.conf: ok" },
                { "peer_card = 4238474\n", "k.conf: ok" },
                /* A card serving several bases sends each its own frames: one left out
                 * would get another's (docs/DESIGN.md, "Addressed sends"). */
                { "peer_card = 4238474\npeers = north, south\npeer_cards = north:4238473\n",
                  "k.conf:12: peer_cards: no card for south (one of peers) in peer_cards" },
                { "peer_card = 4238474\npeers = north, south\n", "k.conf:11: peers: no card for north (one of peers) in peer_cards" },
                { "peer_card = 4238474\npeers = north, south\npeer_cards = south:4238475, north:4238473\n", "k.conf: ok" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char text[1024];
                snprintf(text, sizeof(text),
                         "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:1\n"
                         "[link sat]\ntype = beidou\ndevice = %s/no-such-tty\n%s",
                         dir, plugins, dir, cases[i].keys);
                h_write_text(conf, text);
                const char *args[] = { "--check-config", conf, NULL };
                int rc = h_kuimen_run(args, out, sizeof(out));
                cr_assert(strstr(out, cases[i].want), "case %zu: want \"%s\" in:\n%s", i, cases[i].want, out);
                cr_assert_eq(rc, strcmp(cases[i].want, "k.conf: ok") == 0 ? 0 : 1, "case %zu: exit %d", i, rc);
        }
        h_cleanup(dir);
}

/* The binary 4.0 set end to end ($ICJC/$ICXX, $GLJC/$GLZK, $TXSQ/$FKXX, $TXXX): a
 * level-3 card gives 77-byte frames; each $FKXX flag becomes its reason (4.0 has no
 * flag for a missing card: flag 1 makes the driver read the card, which says address 0). */
Test(beidou, v40_end_to_end_and_refusals, .timeout = 60)
{
        static const struct refusal codes[] = {
                { "suppress on", "suppress off", "sat: up -> down (transmission suppressed)", "refused code 7 " },
                { "battery on", "battery off", "sat: up -> down (battery low)", "refused code 3 " },
                { "fki-error 3", NULL, "sat: up -> down (checksum errors at the module)", "refused code 6 " },
                { "card out", "card in", "-> down (no IC card)", "refused code 1 " },
        };
        const struct bdconf v40 = { .proto = "4.0", .level = "3", .base_proto = "4.0", .ctr_proto = "4.0", .card_poll = "30s" };
        run_refusals(&v40, "bd-v40", codes, 4, true,
                     "beidou: card " BASE_CARD " (4.0), class 3, service interval 1 s, level 3: frames of 77 B (mixed coding)");
}

/* protocol = auto finds the binary 4.0 set at both ends: the module answers the
 * $ICJC probe (it skips the ASCII questions), the driver switches to the binary reader
 * and reads a level-3 card; alerts and commands cross, and the link never flaps. */
Test(beidou, v40_end_to_end_auto, .timeout = 60)
{
        struct bdenv e;
        const struct bdconf v40 = { .proto = "4.0", .level = "3", .base_proto = "auto", .ctr_proto = "auto" };

        bd_up(&e, "bd-v40a", &v40);
        cr_assert_eq(h_log_count(&e.base, "beidou: the module answers in the binary 4.0 set ($"), 1, "%s", e.blog);
        cr_assert_eq(h_log_count(&e.ctr, "beidou: the module answers in the binary 4.0 set ($"), 1, "%s", e.clog);
        cr_assert(h_log_count(&e.base, "beidou: card " BASE_CARD " (4.0), class 3, service interval 1 s, level 3: "
                                        "frames of 77 B (mixed coding)") == 1, "%s", e.blog);
        cr_assert(h_log_count(&e.ctr, "beidou: card " CENTER_CARD " (4.0)") == 1, "auto did not find 4.0 (%s)", e.clog);
        two_each_way(&e, "F", "Q");
        cr_assert_eq(h_log_count(&e.base, "beidou: garbled line from the module"), 0,
                     "the ASCII questions' answers are not taken for garbage (%s)", e.blog);
        h_cleanup(e.dir);
}

/* The binary reader under noise (bytes flipped, cut frames that the next one runs
 * into, junk before a "$"), a restarted 4.0 module (silent until asked again) and an
 * unplugged adapter: the link comes back by itself each time; nothing is lost. */
Test(beidou, v40_garbled_reset_unplug, .timeout = 60)
{
        struct bdenv e;
        struct h_sub *alerts = &e.sub;
        /* card_poll 30 s: a poll every 500 ms would ask for $GLZK again before anything
         * could notice the restart. */
        const struct bdconf v40 = { .proto = "4.0", .level = "3", .base_proto = "4.0", .ctr_proto = "4.0", .card_poll = "30s" };

        bd_up(&e, "bd-v40f", &v40);
        fault(e.ctl_a, "garble 8");
        h_pub_send(&e.pub, "alert/test", "B1");
        cr_assert(wait_payload(alerts, "B1", 8000));
        cr_assert(h_log_wait(&e.base, "beidou: garbled line from the module", 2000), "%s", e.blog);
        cr_assert_eq(h_log_count(&e.base, "sat: up -> "), 0, "noise took the link down (%s)", e.blog);

        /* A 4.0 module forgets $GLJC when it restarts: no beam reports until the driver
         * asks again, which it does before the missing reports settle into "no beam". */
        fault(e.ctl_a, "reset 300");
        cr_assert(h_log_wait(&e.base, "beidou: no beam report for ", 5000), "%s", e.blog);
        h_pub_send(&e.pub, "alert/test", "B2");
        cr_assert(wait_payload(alerts, "B2", 8000));
        int ups = h_log_count(&e.base, "-> up (card " BASE_CARD " ready)");

        fault(e.ctl_a, "unplug");
        cr_assert(h_log_wait(&e.base, "sat: up -> down (device ", 3000), "%s", e.blog);
        h_pub_send(&e.pub, "alert/test", "B3");
        fault(e.ctl_a, "plug");
        cr_assert(wait_count(&e.base, "-> up (card " BASE_CARD " ready)", ups + 1, 6000), "%s", e.blog);
        cr_assert(wait_payload(alerts, "B3", 8000));
        cr_assert_eq(count_topic(alerts, "kuimen/north/alert/"), 3);
        bd_down(&e);
        /* The burst is flip, noise, cut, lost checksum, twice. The reader skips from a
         * bad "$" to the next one, so a flipped frame and the noise before the next
         * frame are one drop (6 for the 8); a read that ends inside noise splits one. */
        FILE *f = fopen(e.blog, "r");
        cr_assert(f);
        char line[2048];
        unsigned long g = 0;
        while (fgets(line, sizeof(line), f)) {
                char *at = strstr(line, ", garbled ");
                if (at && strstr(line, "beidou: closed"))
                        g = strtoul(at + 10, NULL, 10);
        }
        fclose(f);
        cr_assert(g >= 6 && g <= 10, "the driver counted %lu drops for 8 garbled frames (%s)", g, e.blog);
        h_cleanup(e.dir);
}

/* One beidou.so drives two links in one kuimen, each with its own module and card: a
 * card pulled from one takes that link down and leaves the other up (no state shared
 * between links). */
Test(beidou, two_links_one_plugin, .timeout = 30)
{
        struct bdenv e;
        struct h_proc k;
        char conf[300], log[300], dev2[300], ctl2[300], slog2[300];
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");

        memset(&e, 0, sizeof(e));
        h_tmpdir(e.dir, sizeof(e.dir), "bd-two");
        h_broker_start(&e.local, e.dir, 0, NULL);
        snprintf(e.dev_a, sizeof(e.dev_a), "%s/bd-a", e.dir);
        snprintf(e.ctl_a, sizeof(e.ctl_a), "%s/sim-a.ctl", e.dir);
        snprintf(e.slog_a, sizeof(e.slog_a), "%s/sim-a.log", e.dir);
        snprintf(dev2, sizeof(dev2), "%s/bd-b", e.dir);
        snprintf(ctl2, sizeof(ctl2), "%s/sim-b.ctl", e.dir);
        snprintf(slog2, sizeof(slog2), "%s/sim-b.log", e.dir);
        snprintf(conf, sizeof(conf), "%s/k.conf", e.dir);
        snprintf(log, sizeof(log), "%s/k.log", e.dir);
        int ua = h_free_port(), ub = h_free_port();
        start_sim(&e, &e.sim_a, e.slog_a, e.dev_a, e.ctl_a, BASE_CARD, ua, ub, 0, &bds3);
        const struct bdconf v21 = { .proto = "2.1", .level = "3" };
        start_sim(&e, &e.sim_b, slog2, dev2, ctl2, "0166166", ub, ua, 0, &v21);
        char text[2048];
        snprintf(text, sizeof(text),
                 "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                 "[local]\nuri = tcp://127.0.0.1:%d\n"
                 "[link one]\ntype = beidou\ndevice = %s\nprotocol = bds3\npeer_card = 0166166\ncard_poll = 500ms\n"
                 "settle = 500ms\n"
                 "[link two]\ntype = beidou\ndevice = %s\nprotocol = auto\npeer_card = " BASE_CARD "\ncard_poll = 500ms\n"
                 "settle = 500ms\norder = 2\n",
                 e.dir, plugins, e.local.port, e.dev_a, dev2);
        h_write_text(conf, text);
        const char *args[] = { "--config", conf, NULL };
        h_kuimen_start(&k, log, args);
        cr_assert(h_log_wait(&k, "link: one: down -> up (card " BASE_CARD " ready)", 10000), "%s", log);
        cr_assert(h_log_wait(&k, "link: two: down -> up (card 0166166 ready)", 10000), "%s", log);
        cr_assert_eq(h_log_count(&k, "beidou: card " BASE_CARD " (bds3)"), 1);
        cr_assert_eq(h_log_count(&k, "beidou: card 0166166 (2.1)"), 1);
        fault(ctl2, "card out");
        cr_assert(h_log_wait(&k, "link: two: up -> down (no IC card)", 5000), "%s", log);
        h_sleep_ms(700);
        cr_assert_eq(h_log_count(&k, "link: one: up -> "), 0, "the other link moved (%s)", log);
        fault(ctl2, "card in");
        cr_assert(h_log_wait(&k, "link: two: down -> up (card 0166166 ready)", 5000), "%s", log);
        int st = h_stop(&k, SIGTERM);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kuimen exits 0 (%d)", st);
        h_stop(&e.sim_a, SIGTERM);
        h_stop(&e.sim_b, SIGTERM);
        h_stop(&e.local.p, SIGTERM);
        h_cleanup(e.dir);
}

#define SOUTH_CARD "4238475"

/* North, south and a center ("county") whose one card terminates both: a broker, a
 * simulated module and a kuimen each, the center's link with peers = north, south. */
struct three {
        char dir[200], conf[3][300], log[3][300], dev[3][300], ctl[3][300], slog[3][300];
        struct h_broker br[3]; /* north's, south's, the center's */
        struct h_proc k[3], sim[3];
};

static const char *const three_name[3] = { "north", "south", "county" };
static const char *const three_card[3] = { BASE_CARD, SOUTH_CARD, CENTER_CARD };
static const struct bdconf three_bd = { .proto = "bds3", .level = "2" };

/* Sealed: each base has its own key, the center both. Returns once every link is up
 * and every kuimen has its subscriptions (a message published before them has no
 * subscriber). */
static void three_up(struct three *t, const char *tag, bool commands, bool sealed)
{
        static const char *const key[2] = { "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
                                             "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4A=" };
        const char *plugins = getenv("KM_SIM_PLUGIN_DIR");
        char text[2048], kpath[300];
        int udp[3];

        memset(t, 0, sizeof(*t));
        h_tmpdir(t->dir, sizeof(t->dir), tag);
        for (int i = 0; i < 3; i++) {
                h_broker_start(&t->br[i], t->dir, 0, NULL);
                snprintf(t->conf[i], sizeof(t->conf[i]), "%s/%s.conf", t->dir, three_name[i]);
                snprintf(t->log[i], sizeof(t->log[i]), "%s/%s.log", t->dir, three_name[i]);
                snprintf(t->dev[i], sizeof(t->dev[i]), "%s/bd-%s", t->dir, three_name[i]);
                snprintf(t->ctl[i], sizeof(t->ctl[i]), "%s/sim-%s.ctl", t->dir, three_name[i]);
                snprintf(t->slog[i], sizeof(t->slog[i]), "%s/sim-%s.log", t->dir, three_name[i]);
                udp[i] = h_free_port();
        }
        if (sealed) {
                for (int i = 0; i < 2; i++) {
                        snprintf(kpath, sizeof(kpath), "%s/%s.key", t->dir, three_name[i]);
                        snprintf(text, sizeof(text), "%s\n", key[i]);
                        h_write_text(kpath, text);
                        cr_assert_eq(chmod(kpath, 0600), 0);
                }
                snprintf(kpath, sizeof(kpath), "%s/county.key", t->dir);
                snprintf(text, sizeof(text), "north = %s\nsouth = %s\n", key[0], key[1]);
                h_write_text(kpath, text);
                cr_assert_eq(chmod(kpath, 0600), 0);
        }
        start_sim(NULL, &t->sim[0], t->slog[0], t->dev[0], t->ctl[0], three_card[0], udp[0], udp[2], 0, &three_bd);
        start_sim(NULL, &t->sim[1], t->slog[1], t->dev[1], t->ctl[1], three_card[1], udp[1], udp[2], 0, &three_bd);
        start_sim(NULL, &t->sim[2], t->slog[2], t->dev[2], t->ctl[2], three_card[2], udp[2], udp[0], udp[1], &three_bd);
        for (int i = 0; i < 2; i++) {
                snprintf(text, sizeof(text),
                         "[node]\nname = %s\nspool = %s/%s/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                         "[local]\nuri = tcp://127.0.0.1:%d\n"
                         "[link sat]\ntype = beidou\ndevice = %s\nprotocol = bds3\npeer_card = " CENTER_CARD "\n" LINK_COMMON
                         "ack_timeout = %ds\ncard_poll = 500ms\n%s%s%s[positions]\ntrack_interval = 0\n",
                         three_name[i], t->dir, three_name[i], plugins, t->br[i].port, t->dev[i], ack_s(&three_bd),
                         sealed ? "key_file = " : "", sealed ? three_name[i] : "", sealed ? ".key\n" : "");
                h_write_text(t->conf[i], text);
        }
        snprintf(text, sizeof(text),
                 "[node]\nname = county\nrole = center\nspool = %s/county/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                 "[local]\nuri = tcp://127.0.0.1:%d\n"
                 "[link sat]\ntype = beidou\ndevice = %s\nprotocol = bds3\npeer_card = " BASE_CARD "\n"
                 "peer_cards = north:" BASE_CARD ", south:" SOUTH_CARD "\npeers = north, south\ncommands = %s\n" LINK_COMMON
                 "ack_timeout = %ds\ncard_poll = 500ms\n%s",
                 t->dir, plugins, t->br[2].port, t->dev[2], commands ? "yes" : "no", ack_s(&three_bd),
                 sealed ? "key_file = county.key\n" : "");
        h_write_text(t->conf[2], text);
        for (int i = 2; i >= 0; i--) {
                const char *args[] = { "--config", t->conf[i], "--log-level", "debug", NULL };
                h_kuimen_start(&t->k[i], t->log[i], args);
        }
        for (int i = 0; i < 3; i++) {
                char up[64];
                snprintf(up, sizeof(up), "sat: down -> up (card %s ready)", three_card[i]);
                cr_assert(h_log_wait(&t->k[i], up, 10000), "%s", t->log[i]);
        }
        for (int i = 0; i < 3; i++)
                cr_assert(h_log_wait(&t->k[i], "ingest: subscribed", 10000), "%s", t->log[i]);
}

/* No link went down and the center had a card for every base. */
static void three_steady(const struct three *t)
{
        for (int i = 0; i < 3; i++)
                cr_assert_eq(h_log_count(&t->k[i], "sat: up -> "), 0, "a link went down (%s)", t->log[i]);
        cr_assert_eq(h_log_count(&t->k[2], "no card for peer"), 0, "%s", t->log[2]);
}

static void three_down(struct three *t)
{
        for (int i = 0; i < 3; i++) {
                int st = h_stop(&t->k[i], SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exits 0 (%d)", three_name[i], st);
        }
        for (int i = 0; i < 3; i++) {
                h_stop(&t->sim[i], SIGTERM);
                h_stop(&t->br[i].p, SIGTERM);
        }
        h_cleanup(t->dir);
}

/*
 * A center whose one card terminates two bases (ABI 1.2 send_to): north's card
 * 4238473 and south's card 4238475 both send to the center's 4238474, and the center
 * addresses each base's acknowledgements to that base's card (peer_cards). The
 * "satellite" hands every message of the center's card to both base simulators, each
 * keeping what is for its own card. Without the addressed send every ack would go to
 * peer_card (north): south's simulator would never be handed a message, south's
 * frames would stay unacknowledged and its link would go down after ack_timeout.
 */
Test(beidou, center_two_bases_one_card, .timeout = 60)
{
        struct three t;
        struct h_sub sub;

        three_up(&t, "bd-2bases", false, false);
        h_sub_start(&sub, t.br[2].port, "center-sub", "kuimen/#", false);
        cr_assert_eq(h_mosquitto_pub(t.br[0].port, "alert/a", "N1"), 0);
        cr_assert_eq(h_mosquitto_pub(t.br[1].port, "alert/a", "S1"), 0);
        cr_assert(wait_payload(&sub, "N1", 10000), "%s", t.log[2]);
        cr_assert(wait_payload(&sub, "S1", 10000), "%s", t.log[2]);
        cr_assert_eq(h_mosquitto_pub(t.br[0].port, "alert/a", "N2"), 0);
        cr_assert_eq(h_mosquitto_pub(t.br[1].port, "alert/a", "S2"), 0);
        cr_assert(wait_payload(&sub, "N2", 10000), "%s", t.log[2]);
        cr_assert(wait_payload(&sub, "S2", 10000), "%s", t.log[2]);
        /* Each base's simulator was handed the center's acks (its own card's messages). */
        cr_assert(wait_count(&t.sim[0], "delivered ", 1, 5000), "north got no ack (%s)", t.slog[0]);
        cr_assert(wait_count(&t.sim[1], "delivered ", 1, 5000), "south got no ack (%s)", t.slog[1]);
        /* Long enough for an unacknowledged frame to take its base's link down. */
        h_sleep_ms((ack_s(&three_bd) + 1) * 1000);
        cr_assert_eq(count_topic(&sub, "kuimen/north/alert/"), 2);
        cr_assert_eq(count_topic(&sub, "kuimen/south/alert/"), 2);
        three_steady(&t);
        h_sub_stop(&sub);
        three_down(&t);
}

/*
 * Commands to two bases over the center's one card (ABI 1.2 send_to, a sending side per
 * base): the operator publishes 3 commands for north and 3 for south on the center
 * broker; the center frames each base's in that base's own sequence space and sends
 * them to its card (peer_cards), so each base publishes exactly its own 3, in order,
 * and none of the other's, though the "satellite" hands both base simulators every
 * message of the center's card. Sealed, each base's frames go under its own key: a
 * frame sealed under the other base's key would fail there and publish nothing. Before,
 * such a center link (peers = north, south with commands) was refused at the start.
 * Meanwhile each base sends 3 alerts up, so the center owes both bases acks while it
 * has commands to frame: an ack rides only in a frame to the base it is for (a base
 * logs, at debug level, an ack for another node's frames).
 */
static void two_bases_commands(const char *tag, bool sealed)
{
        struct three t;
        struct h_rec cmds[2];  /* cmd/# at each base's broker */
        struct h_pub op;       /* the operator at the center */
        struct h_pub term[2];  /* a terminal at each base */
        struct h_sub up;       /* the center broker's alerts */

        memset(cmds, 0, sizeof(cmds));
        three_up(&t, tag, true, sealed);
        for (int i = 0; i < 2; i++)
                h_rec_start(&cmds[i], t.br[i].port, three_name[i], "cmd/#");
        h_pub_start(&op, t.br[2].port, "operator");
        for (int i = 0; i < 2; i++)
                h_pub_start(&term[i], t.br[i].port, "terminal");
        h_sub_start(&up, t.br[2].port, "center-sub", "kuimen/+/alert/#", false);
        /* South's commands fill frames of their own (random letters do not deflate) and
         * queue at the center's card, one frame a second, while north's alerts come up:
         * the ack owed to north waits while frames to south go, and must not ride in
         * them. Then north's commands (one frame) and south's alerts. */
        char want[2][3][128];
        uint32_t rnd = 12345;
        for (int m = 0; m < 3; m++) {
                snprintf(want[0][m], sizeof(want[0][m]), "N%d", m + 1);
                int o = snprintf(want[1][m], sizeof(want[1][m]), "S%d:", m + 1);
                for (; o < 110; o++) {
                        rnd = rnd * 1103515245u + 12345u;
                        want[1][m][o] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"[(rnd >> 16) & 63];
                }
                want[1][m][o] = '\0';
        }
        int64_t t0 = h_now_ms();
        for (int r = 0; r < 2; r++) { /* r = 0: commands to south, alerts from north; then the other way */
                int to = r ? 0 : 1, from = r ? 1 : 0;
                for (int m = 0; m < 3; m++)
                        cr_assert_eq(h_pub_send(&op, to ? "kuimen/south/cmd/gate" : "kuimen/north/cmd/pump", want[to][m]), 0);
                cr_assert(h_pub_flush(&op, 5000));
                for (int n = 1; n <= 3; n++) {
                        char pl[32];
                        snprintf(pl, sizeof(pl), "up-%c%d", from ? 'S' : 'N', n);
                        cr_assert_eq(h_pub_send(&term[from], "alert/a", pl), 0);
                }
                cr_assert_eq(h_sub_wait(&up, 3 * (size_t)(r + 1), 15000), 3 * (size_t)(r + 1),
                             "the center published %zu alerts (%s)", h_sub_count(&up), t.log[2]);
        }
        for (int i = 0; i < 2; i++)
                cr_assert_eq(h_rec_wait(&cmds[i], 3, 15000), 3, "%s published %zu of its 3 commands (%s, %s)", three_name[i],
                             h_rec_count(&cmds[i]), t.log[i], t.log[2]);
        cr_log_info("%s: 3 + 3 commands at the bases' brokers, 3 + 3 alerts at the center's in %lld ms", tag,
                    (long long)(h_now_ms() - t0));
        /* Longer than rto (half of ack_timeout): a frame sent again, or one to the
         * wrong base, would be here. */
        h_sleep_ms(ack_s(&three_bd) * 1000 / 2 + 1000);
        for (int i = 0; i < 2; i++) {
                pthread_mutex_lock(&cmds[i].mu);
                cr_assert_eq(cmds[i].n, 3, "%s published %zu commands (%s)", three_name[i], cmds[i].n, t.log[i]);
                for (size_t m = 0; m < 3; m++) {
                        cr_assert_str_eq(cmds[i].m[m].topic, i ? "cmd/gate" : "cmd/pump");
                        cr_assert_str_eq(cmds[i].m[m].payload, want[i][m], "%s's command %zu", three_name[i], m + 1);
                }
                pthread_mutex_unlock(&cmds[i].mu);
                cr_assert_eq(h_log_count(&t.k[i], sealed ? "from narrow link sat, authenticated, key id"
                                                       : "from narrow link sat, NOT authenticated"),
                             3, "%s", t.log[i]);
                cr_assert_eq(h_log_count(&t.k[i], "dropped:"), 0, "a frame failed to open (%s)", t.log[i]);
                cr_assert_eq(h_log_count(&t.k[i], "'s frames, not ours"), 0, "%s was handed the other's ack (%s)", three_name[i],
                             t.log[i]);
        }
        cr_assert_eq(h_sub_count(&up), 6, "each alert once");
        three_steady(&t);
        h_pub_stop(&op);
        h_sub_stop(&up);
        for (int i = 0; i < 2; i++) {
                h_pub_stop(&term[i]);
                h_rec_stop(&cmds[i]);
                h_rec_free(&cmds[i]);
        }
        three_down(&t);
}

Test(beidou, center_two_bases_commands, .timeout = 60)
{
        two_bases_commands("bd-2cmds", false);
}

Test(beidou, center_two_bases_commands_sealed, .timeout = 60)
{
        two_bases_commands("bd-2cmds-sealed", true);
}

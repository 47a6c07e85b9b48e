/* SPDX-License-Identifier: MIT */
/* The Iridium SBD link end to end: base kuimen -> sbd.so -> sbdsim (two 9603s and the gateway) -> sbd.so -> center kuimen. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * Everything here is real but the sky: the two kuimen processes load the sbd plugin
 * built beside them and open the pty of a simulated modem each
 * (tests/sim/sbd/sbdsim.c), which speaks the 9602/9603 AT dialogue byte for byte and
 * carries a successful session's MO buffer to the other modem's MT queue. The
 * simulator takes faults and answers with its counters on a UDP control port.
 *
 * Timings are shrunk so that the suite stays within its 20 s: a session takes 60 ms
 * (a real one 10-30 s), back-offs start at 20 ms.
 */

static const char *env_dir(const char *name)
{
        const char *d = getenv(name);
        cr_assert_not_null(d, "%s (meson sets it)", name);
        return d;
}

struct sbd_pair {
        char dir[200], bconf[300], cconf[300], blog[300], clog[300], slog[300];
        struct h_broker local, center;
        struct h_proc base, ctr, sim;
        int ctl_port, ctl_fd;
        struct h_sub sub;  /* the center broker: what crossed */
};

/* Terminals publish with mosquitto_pub; the simulator answers on its UDP control port. */
static int pub(struct sbd_pair *p, const char *topic, const char *payload)
{
        return h_mosquitto_pub(p->local.port, topic, payload);
}

static void sim_ctl(struct sbd_pair *p, const char *cmd, char *ans, size_t n)
{
        h_sim_ctl(p->ctl_fd, p->ctl_port, "sbdsim", p->slog, cmd, ans, n);
}

static long sim_stat(struct sbd_pair *p, const char *name, const char *key)
{
        return h_sim_stat(p->ctl_fd, p->ctl_port, "sbdsim", p->slog, name, key);
}

static bool sim_stat_wait(struct sbd_pair *p, const char *name, const char *key, long want, int ms)
{
        int64_t until = h_now_ms() + ms;
        do {
                if (sim_stat(p, name, key) >= want)
                        return true;
                h_sleep_ms(20);
        } while (h_now_ms() < until);
        return false;
}

static const char *link_keys =
        "ack = receipt\nretry = 20ms\nretry_max = 100ms\nsession_timeout = 1500ms\nat_timeout = 1s\nreopen = 200ms\n"
        "csq_interval = 500ms\nregistration_wait = 300ms\n";

/* Starts the simulator, both brokers and both kuimen (base_extra and center_extra
 * go into their [link sat]), and waits until both modems are initialised. */
static void pair_up(struct sbd_pair *p, const char *tag, const char *base_extra, const char *center_extra)
{
        memset(p, 0, sizeof(*p));
        h_tmpdir(p->dir, sizeof(p->dir), tag);
        h_broker_start(&p->local, p->dir, 0, NULL);
        h_broker_start(&p->center, p->dir, 0, NULL);
        snprintf(p->bconf, sizeof(p->bconf), "%s/base.conf", p->dir);
        snprintf(p->cconf, sizeof(p->cconf), "%s/center.conf", p->dir);
        snprintf(p->blog, sizeof(p->blog), "%s/base.log", p->dir);
        snprintf(p->clog, sizeof(p->clog), "%s/center.log", p->dir);
        snprintf(p->slog, sizeof(p->slog), "%s/sim.log", p->dir);

        p->ctl_port = h_free_port();
        p->ctl_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(p->ctl_fd >= 0);
        struct timeval tv = { .tv_sec = 0, .tv_usec = 250000 };
        setsockopt(p->ctl_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

        char bdev[256], cdev[256], port[16], cmd[1024];
        snprintf(bdev, sizeof(bdev), "base=%s/base.tty", p->dir);
        snprintf(cdev, sizeof(cdev), "center=%s/center.tty", p->dir);
        snprintf(port, sizeof(port), "%d", p->ctl_port);
        snprintf(cmd, sizeof(cmd), "exec '%s' --modem %s --modem %s --control %s --session 60 --csq 5",
                 env_dir("KM_SBD_SIM"), bdev, cdev, port);
        char *argv[] = { "sh", "-c", cmd, NULL };
        h_spawn(&p->sim, p->slog, argv, NULL);
        cr_assert(h_log_wait(&p->sim, "ready:", 5000), "sbdsim did not start (%s)", p->slog);

        const char *plugins = env_dir("KM_SIM_PLUGIN_DIR");
        FILE *f = fopen(p->bconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/base/spool.db\nplugin_dir = %s\nstats_interval = 0\nlink_status = no\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#, alert/#\n"
                "[link sat]\ntype = sbd\ndevice = %s/base.tty\n%s%s\n",
                p->dir, plugins, p->local.port, p->dir, link_keys, base_extra ? base_extra : "");
        fclose(f);
        f = fopen(p->cconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link sat]\ntype = sbd\ndevice = %s/center.tty\npeers = north\n%s%s\n",
                p->dir, plugins, p->center.port, p->dir, link_keys, center_extra ? center_extra : "");
        fclose(f);

        h_sub_start(&p->sub, p->center.port, "center-sub", "kuimen/north/#", true);
        const char *cargs[] = { "--config", p->cconf, "--log-level", "debug", NULL };
        const char *bargs[] = { "--config", p->bconf, "--log-level", "debug", NULL };
        h_kuimen_start(&p->ctr, p->clog, cargs);
        h_kuimen_start(&p->base, p->blog, bargs);
        cr_assert(h_log_wait(&p->ctr, "sat: sbd: modem ready, IMEI 300234010753371", 10000), "center modem (%s)", p->clog);
        cr_assert(h_log_wait(&p->base, "sat: sbd: modem ready, IMEI 300234010753370", 10000), "base modem (%s)", p->blog);
        cr_assert(h_log_wait(&p->base, "ingest: connected", 10000), "base broker (%s)", p->blog);
}

static void pair_down(struct sbd_pair *p)
{
        h_sub_stop(&p->sub);
        int sb = h_stop(&p->base, SIGTERM), sc = h_stop(&p->ctr, SIGTERM);
        h_stop(&p->sim, SIGTERM);
        h_stop(&p->local.p, SIGTERM);
        h_stop(&p->center.p, SIGTERM);
        close(p->ctl_fd);
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "base exits 0 (%d)", sb);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "center exits 0 (%d)", sc);
        h_cleanup(p->dir);
}

/* The payloads that reached the center broker, each exactly want[i], in order. */
static void expect_crossed(struct sbd_pair *p, const char *const *want, size_t n)
{
        cr_assert_eq(h_sub_wait(&p->sub, n, 15000), n, "%zu of %zu crossed (%s, %s, %s)", h_sub_count(&p->sub), n,
                     p->blog, p->clog, p->slog);
        h_sleep_ms(300);
        pthread_mutex_lock(&p->sub.mu);
        cr_assert_eq(p->sub.n, n, "exactly %zu arrive (%zu)", n, p->sub.n);
        for (size_t i = 0; i < n; i++)
                cr_assert_str_eq(p->sub.rx[i].payload, want[i]);
        pthread_mutex_unlock(&p->sub.mu);
}

/* Publishes payload on topic and waits until the base modem has sent one more MO. */
static void send_one(struct sbd_pair *p, const char *topic, const char *payload)
{
        long before = sim_stat(p, "base", "mo");
        cr_assert_eq(pub(p, topic, payload), 0);
        cr_assert(sim_stat_wait(p, "base", "mo", before + 1, 10000), "no MO session for %s (%s)", payload, p->blog);
}

/* Both ways: sensor readings cross base -> center as MO/MT pairs, released by the
 * modem's receipt; an operator's command crosses center -> base on SBDRING. */
Test(sbd, end_to_end, .timeout = 60)
{
        struct sbd_pair p;
        struct h_sub cmds;
        pair_up(&p, "sbd-e2e", NULL, NULL);
        h_sub_start(&cmds, p.local.port, "unit", "cmd/#", false);
        static const char *const want[] = { "{\"ch4\":0.1}", "{\"ch4\":0.2}", "{\"ch4\":0.3}", "ALERT gas" };
        for (int i = 0; i < 3; i++)
                cr_assert_eq(pub(&p, "sensors/gas", want[i]), 0);
        expect_crossed(&p, want, 3);
        cr_assert_eq(pub(&p, "alert/gas", want[3]), 0);
        expect_crossed(&p, want, 4);

        long mo = sim_stat(&p, "base", "mo"), mt = sim_stat(&p, "center", "mt"), rb = sim_stat(&p, "center", "rb");
        cr_assert(mo >= 1 && mo <= 4, "4 messages in 1..4 MO sessions (%ld)", mo);
        cr_assert_eq(mt, mo, "every MO reached the center as an MT (%ld of %ld)", mt, mo);
        cr_assert_eq(rb, mt, "the center read every MT with AT+SBDRB (%ld of %ld)", rb, mt);
        long rings = sim_stat(&p, "center", "rings");
        cr_assert(rings >= 1 && rings <= mt, "MT announced by SBDRING (%ld rings, %ld MT)", rings, mt);
        cr_assert_eq(sim_stat(&p, "base", "errors") + sim_stat(&p, "center", "errors"), 0, "no command answered ERROR");

        cr_assert_eq(h_mosquitto_pub(p.center.port, "kuimen/north/cmd/pump", "start"), 0);
        cr_assert_eq(h_sub_wait(&cmds, 1, 15000), 1, "the command crossed to the base (%s, %s)", p.clog, p.blog);
        pthread_mutex_lock(&cmds.mu);
        cr_assert_str_eq(cmds.rx[0].topic, "cmd/pump");
        cr_assert_str_eq(cmds.rx[0].payload, "start");
        pthread_mutex_unlock(&cmds.mu);
        cr_assert_geq(sim_stat(&p, "base", "rb"), 1);
        cr_assert_eq(h_log_count(&p.base, "garbled"), 0);
        cr_assert_eq(h_log_count(&p.base, "up -> down"), 0);
        h_sub_stop(&cmds);
        pair_down(&p);
}

/* Every failing MO status of +SBDIX becomes its reason, on the link and in the log,
 * and a retry: transient ones retry the same MO buffer after a back-off (DEGRADED),
 * those that say the network or modem is unusable hand the frame back and probe
 * (DOWN), 12 and 14 refuse the frame and the host sends it again. The message crosses
 * once in the end. */
Test(sbd, every_mo_failure_code, .timeout = 60)
{
        static const struct {
                int st;
                const char *text;
        } codes[] = {
                { 10, "gateway call timeout" },
                { 11, "MO queue at the gateway full" },
                { 13, "session did not complete" },
                { 15, "access denied by the gateway" },
                { 17, "gateway not responding" },
                { 18, "connection lost (RF drop)" },
                { 19, "link failure" },
                { 35, "busy (attempting auto-registration)" },
                { 36, "registration too recent (wait 3 minutes)" },
                { 38, "traffic management period" },
                { 64, "band violation" },
                { 65, "PLL lock failure" },
                { 12, "too many segments for the gateway" },
                { 14, "invalid segment size" },
                { 32, "no network service" },
                { 33, "antenna fault" },
                { 34, "radio disabled" },
                { 16, "modem locked" },
                { 37, "SBD service disabled" },
        };
        const size_t n = sizeof(codes) / sizeof(codes[0]);
        struct sbd_pair p;
        char cmd[256] = "fail base";
        pair_up(&p, "sbd-codes", NULL, NULL);
        for (size_t i = 0; i < n; i++)
                snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " %d", codes[i].st);
        sim_ctl(&p, cmd, NULL, 0);
        static const char *const want[] = { "{\"level\":3.2}" };
        cr_assert_eq(pub(&p, "sensors/water", want[0]), 0);
        expect_crossed(&p, want, 1);

        for (size_t i = 0; i < n; i++) {
                char line[160];
                snprintf(line, sizeof(line), "session failed: %s (MO status %d)", codes[i].text, codes[i].st);
                /* The MO of 51 B, or an empty one while DOWN probes: 33, 34, 16, 37. */
                cr_expect_eq(h_log_count(&p.base, line), 1, "one '%s' (%s)", line, p.blog);
        }
        cr_assert(h_log_count(&p.base, "sat: up -> degraded (gateway call timeout (MO status 10))") == 1);
        cr_assert(h_log_count(&p.base, "-> down (no network service (MO status 32))") == 1);
        cr_assert(h_log_count(&p.base, "-> down (SBD service disabled (MO status 37))") == 1);
        cr_assert(h_log_count(&p.base, "too many segments for the gateway (MO status 12): the frame of 51 B is refused") == 1,
                  "12 refuses the frame (%s)", p.blog);
        cr_assert(h_log_count(&p.base, "invalid segment size (MO status 14): the frame of 51 B is refused") == 1,
                  "14 refuses the frame, sent again by the host");
        cr_assert(h_log_count(&p.base, "the frame goes back to the host") == 1, "32 hands the frame back");
        cr_assert_eq(sim_stat(&p, "base", "mo_failed"), (long)n);
        cr_assert_eq(sim_stat(&p, "base", "mo"), 1, "one MO went, after the %zu failures", n);
        cr_assert_eq(sim_stat(&p, "center", "mt"), 1);
        cr_assert(h_log_wait(&p.base, "-> up (up)", 2000), "the link is up again");
        pair_down(&p);
}

/* A module reset behind the driver's back, twice: a long one while a frame sits in the
 * MO buffer (the modem stops answering: the frame goes again after init), and a short
 * one seen by the echo that comes back with the factory settings; then the modem's own
 * HARDWARE FAILURE code, and a reset into numeric answers (ATV0). */
Test(sbd, module_reset, .timeout = 60)
{
        struct sbd_pair p;
        pair_up(&p, "sbd-reset", NULL, NULL);
        static const char *const want[] = { "one", "two", "three" };
        send_one(&p, "sensors/a", want[0]);
        expect_crossed(&p, want, 1);

        /* "two" fails its first session and waits out the back-off in the MO buffer. */
        sim_ctl(&p, "fail base 13 13 13", NULL, 0);
        cr_assert_eq(pub(&p, "sensors/a", want[1]), 0);
        cr_assert(h_log_wait(&p.base, "session failed: session did not complete (MO status 13)", 5000));
        sim_ctl(&p, "reset base 700", NULL, 0);
        cr_assert(h_log_wait(&p.base, "sbd: no answer to", 5000), "the silent modem is noticed (%s)", p.blog);
        expect_crossed(&p, want, 2);
        cr_assert_eq(h_log_count(&p.base, "sbd: modem ready"), 2, "initialised again after the reset");

        int64_t until;
        sim_ctl(&p, "reset base 20", NULL, 0);
        cr_assert(h_log_wait(&p.base, "the modem was reset (it echoes commands again)", 5000), "%s", p.blog);
        cr_assert(h_log_wait(&p.base, "sat: sbd: modem ready", 5000));
        h_sleep_ms(300);
        cr_assert_eq(h_log_count(&p.base, "sbd: modem ready"), 3);
        send_one(&p, "sensors/a", want[2]);
        expect_crossed(&p, want, 3);
        cr_assert_eq(sim_stat(&p, "base", "resets"), 2);

        /* The 9602's unsolicited HARDWARE FAILURE: init again. */
        sim_ctl(&p, "hwfail base", NULL, 0);
        cr_assert(h_log_wait(&p.base, "the modem reports HARDWARE FAILURE: 4, 2; initialising it again", 5000), "%s", p.blog);
        until = h_now_ms() + 5000;
        while (h_log_count(&p.base, "sbd: modem ready") < 4 && h_now_ms() < until)
                h_sleep_ms(20);
        cr_assert_eq(h_log_count(&p.base, "sbd: modem ready"), 4);

        /* A modem whose stored profile answers numerically (ATV0) after a reset: init
         * takes "0" for OK and sets ATV1. */
        sim_ctl(&p, "atv0 base", NULL, 0);
        sim_ctl(&p, "reset base 20", NULL, 0);
        until = h_now_ms() + 5000;
        while (h_log_count(&p.base, "sbd: modem ready") < 5 && h_now_ms() < until)
                h_sleep_ms(20);
        cr_assert_eq(h_log_count(&p.base, "sbd: modem ready"), 5, "%s", p.blog);
        pair_down(&p);
}

/* Junk on both serial lines (short lines of random bytes, overlong lines) while
 * traffic flows: each junk line is counted, logging is rate-limited, nothing is lost.
 * The center hears no SBDRING here: its mailbox_check sessions fetch every message. */
Test(sbd, garbled_input_and_mailbox_checks, .timeout = 60)
{
        struct sbd_pair p;
        pair_up(&p, "sbd-garble", NULL, "mailbox_check = 300ms\n");
        sim_ctl(&p, "hold center 1", NULL, 0);
        static const char *const want[] = { "g0", "g1", "g2", "g3" };
        for (int i = 0; i < 4; i++) {
                sim_ctl(&p, "garble base 10", NULL, 0);
                sim_ctl(&p, "garble center 10", NULL, 0);
                send_one(&p, "sensors/b", want[i]);
        }
        expect_crossed(&p, want, 4);
        cr_assert_eq(sim_stat(&p, "base", "garbled"), 40);
        cr_assert_eq(sim_stat(&p, "center", "rings"), 0, "no ring: the mailbox checks fetched them");
        cr_assert_eq(sim_stat(&p, "center", "mt"), 4);
        h_sub_stop(&p.sub);
        h_stop(&p.base, SIGTERM);
        h_stop(&p.ctr, SIGTERM);
        cr_assert_eq(h_log_count(&p.base, "garbled 40,"), 1, "40 junk lines counted (%s)", p.blog);
        cr_assert_eq(h_log_count(&p.ctr, "garbled 40,"), 1, "40 junk lines counted (%s)", p.clog);
        int shown = h_log_count(&p.base, "sbd: garbled ");
        cr_assert(shown >= 1 && shown <= 3, "garbled lines logged rate-limited (%d lines)", shown);
        h_stop(&p.sim, SIGTERM);
        h_stop(&p.local.p, SIGTERM);
        h_stop(&p.center.p, SIGTERM);
        close(p.ctl_fd);
        h_cleanup(p.dir);
}

/* A frame that keeps failing goes back to the host after give_up (sent -ETIMEDOUT),
 * which sends it again; it crosses once when the sky clears. */
Test(sbd, give_up_hands_the_frame_back, .timeout = 60)
{
        struct sbd_pair p;
        pair_up(&p, "sbd-giveup", "give_up = 300ms\n", NULL);
        sim_ctl(&p, "fail base 13 13 13 13 13 13 13 13 13 13", NULL, 0);
        static const char *const want[] = { "persistent" };
        cr_assert_eq(pub(&p, "sensors/f", want[0]), 0);
        cr_assert(h_log_wait(&p.base, "session failed: session did not complete (MO status 13); giving the frame back after", 5000),
                  "%s", p.blog);
        expect_crossed(&p, want, 1);
        cr_assert_eq(sim_stat(&p, "base", "mo_failed"), 10);
        cr_assert_eq(sim_stat(&p, "base", "mo"), 1);
        pair_down(&p);
}

/* Several MT messages wait at the gateway (the center heard no ring); one SBDRING and
 * the driver drains the queue, one session per message, as MT queued counts down. */
Test(sbd, mt_queue_drained, .timeout = 60)
{
        struct sbd_pair p;
        pair_up(&p, "sbd-drain", NULL, NULL);
        sim_ctl(&p, "hold center 1", NULL, 0);
        static const char *const want[] = { "q0", "q1", "q2", "q3" };
        for (int i = 0; i < 4; i++)
                send_one(&p, "sensors/c", want[i]);
        cr_assert_eq(sim_stat(&p, "center", "queued"), 4, "four MT messages wait at the gateway");
        cr_assert_eq(h_sub_count(&p.sub), 0);
        sim_ctl(&p, "hold center 0", NULL, 0);
        expect_crossed(&p, want, 4);
        cr_assert_eq(sim_stat(&p, "center", "rings"), 1, "one ring");
        cr_assert_eq(sim_stat(&p, "center", "mt"), 4);
        cr_assert_eq(sim_stat(&p, "center", "queued"), 0);
        cr_assert_eq(h_log_count(&p.ctr, "3 more queued"), 1, "%s", p.clog);
        cr_assert_eq(h_log_count(&p.ctr, "2 more queued"), 1);
        cr_assert_eq(h_log_count(&p.ctr, "1 more queued"), 1);
        pair_down(&p);
}

/* The USB adapter pulled and plugged back: DOWN with the reason, reopened on the
 * timer, initialised, and traffic flows again. Then the sky: a weak signal (+CIEV
 * CSQ 1) is DEGRADED, lost service (+CIEV service 0) is DOWN and holds traffic, and
 * the message waiting crosses once service is back. */
Test(sbd, unplugged_and_signal_lost, .timeout = 60)
{
        struct sbd_pair p;
        pair_up(&p, "sbd-unplug", NULL, NULL);
        sim_ctl(&p, "unplug base 400", NULL, 0);
        cr_assert(h_log_wait(&p.base, "sat: up -> down (device gone", 5000), "%s", p.blog);
        int64_t until = h_now_ms() + 5000;
        while (h_log_count(&p.base, "sbd: modem ready") < 2 && h_now_ms() < until)
                h_sleep_ms(50);
        cr_assert_eq(h_log_count(&p.base, "sbd: modem ready"), 2, "%s", p.blog);
        static const char *const want[] = { "after", "held" };
        send_one(&p, "sensors/d", want[0]);
        expect_crossed(&p, want, 1);

        sim_ctl(&p, "csq base 1", NULL, 0);
        cr_assert(h_log_wait(&p.base, "sat: up -> degraded (weak signal (CSQ 1))", 5000), "%s", p.blog);
        sim_ctl(&p, "service base 0", NULL, 0);
        cr_assert(h_log_wait(&p.base, "-> down (no network service (+CIEV))", 5000), "%s", p.blog);
        long mo = sim_stat(&p, "base", "mo");
        cr_assert_eq(pub(&p, "sensors/d", want[1]), 0);
        h_sleep_ms(400);
        cr_assert_eq(sim_stat(&p, "base", "mo"), mo, "nothing is sent without service");
        cr_assert_eq(h_sub_count(&p.sub), 1);
        sim_ctl(&p, "csq base 5", NULL, 0);
        sim_ctl(&p, "service base 1", NULL, 0);
        expect_crossed(&p, want, 2);
        cr_assert(h_log_wait(&p.base, "sat: down -> up (up)", 5000), "%s", p.blog);
        pair_down(&p);
}

/* Bad keys name themselves before anything starts. */
Test(sbd, keys_checked, .timeout = 30)
{
        char dir[200], conf[300], out[8192];
        h_tmpdir(dir, sizeof(dir), "sbd-keys");
        snprintf(conf, sizeof(conf), "%s/k.conf", dir);
        static const struct {
                const char *keys, *want;
        } cases[] = {
                { "baud = 12345", "baud = '12345': not a serial speed" },
                { "mtu = 341", "mtu = '341': out of range 64..340" },
                { "device = ttyUSB0", "device = 'ttyUSB0': not an absolute path" },
                { "retry = 10s\nretry_max = 1s", "retry_max: shorter than retry" },
                { "", NULL },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char text[1024];
                snprintf(text, sizeof(text),
                         "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:1\n"
                         "[link sat]\ntype = sbd\n%s\n%s\n",
                         dir, env_dir("KM_SIM_PLUGIN_DIR"),
                         strncmp(cases[i].keys, "device", 6) ? "device = /dev/ttyUSB9" : "", cases[i].keys);
                h_write_text(conf, text);
                const char *args[] = { "--check-config", conf, NULL };
                int rc = h_kuimen_run(args, out, sizeof(out));
                if (cases[i].want) {
                        cr_expect_neq(rc, 0, "%s accepted", cases[i].keys);
                        cr_expect(strstr(out, cases[i].want), "'%s' not in: %s", cases[i].want, out);
                } else {
                        cr_expect_eq(rc, 0, "a good config refused: %s", out);
                }
        }
        h_cleanup(dir);
}

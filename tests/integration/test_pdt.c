/* SPDX-License-Identifier: MIT */
/* The PDT/DMR radio link end to end: base kuimen -> pdt.so -> pdtsim (two Hytera radios on one channel) -> pdt.so -> center kuimen. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/*
 * Both kuimen load the pdt plugin and talk HDAP over loopback UDP to a simulated radio
 * each (tests/sim/pdt/pdtsim.c): base's radio on 127.0.0.2 with its PC on 127.0.0.4,
 * center's on 127.0.0.3 and 127.0.0.5, the same TMP and RRS ports everywhere, as on a
 * radio's USB network. The radios share one half-duplex channel. Airtime is shrunk
 * (100 ms preamble, 20 ms a block) to keep the suite within its 20 s.
 *
 * The hrnp_ tests put the base's radio on a pty instead (transport = hrnp): the same
 * PDUs in HRNP packets on a serial line, while the center stays on UDP.
 */

struct pdt_pair {
        char dir[200], bconf[300], cconf[300], blog[300], clog[300], slog[300];
        struct h_broker local, center;
        struct h_proc base, ctr, sim;
        int ctl_port, ctl_fd;
        struct h_sub sub;
};

static const char *env_dir(const char *name)
{
        const char *d = getenv(name);
        cr_assert_not_null(d, "%s (meson sets it)", name);
        return d;
}


/* Terminals publish with mosquitto_pub; the simulator answers on its UDP control port. */
static int pub(struct pdt_pair *p, const char *topic, const char *payload)
{
        return h_mosquitto_pub(p->local.port, topic, payload);
}

static void sim_ctl(struct pdt_pair *p, const char *cmd, char *ans, size_t n)
{
        h_sim_ctl(p->ctl_fd, p->ctl_port, "pdtsim", p->slog, cmd, ans, n);
}

static long sim_stat(struct pdt_pair *p, const char *name, const char *key)
{
        return h_sim_stat(p->ctl_fd, p->ctl_port, "pdtsim", p->slog, name, key);
}


/* The payloads that reached the center broker, each exactly want[i], in order. */
static void expect_crossed(struct pdt_pair *p, const char *const *want, size_t n)
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

static const char *link_keys =
        "ack = receipt\nack_timeout = 3s\nretry = 100ms\nretry_max = 400ms\ncheck_interval = 300ms\n";

/* The base's radio: on UDP, on HRNP, or on HRNP with the base's device path
 * (DIR/late-radio) not there yet: the test plugs it in (a symlink to the pty). */
enum base_radio { ON_UDP, ON_HRNP, ON_HRNP_LATE };

static void pair_up_as(struct pdt_pair *p, const char *tag, enum base_radio how)
{
        bool hrnp = how != ON_UDP;
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
        int tmp = h_free_port(), rrs = h_free_port();
        while (rrs == tmp)
                rrs = h_free_port();
        p->ctl_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(p->ctl_fd >= 0);
        struct timeval tv = { .tv_sec = 0, .tv_usec = 250000 };
        setsockopt(p->ctl_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

        char cmd[1024], base_radio[400], base_keys[400];
        if (hrnp) {
                snprintf(base_radio, sizeof(base_radio), "--hrnp base=%s/base-radio,111111", p->dir);
                snprintf(base_keys, sizeof(base_keys), "transport = hrnp\ndevice = %s/%s\nbaud = 115200", p->dir,
                         how == ON_HRNP_LATE ? "late-radio" : "base-radio");
        } else {
                snprintf(base_radio, sizeof(base_radio), "--radio base=127.0.0.2,127.0.0.4,111111");
                snprintf(base_keys, sizeof(base_keys), "radio = 127.0.0.2\nlisten = 127.0.0.4");
        }
        snprintf(cmd, sizeof(cmd),
                 "exec '%s' %s --radio center=127.0.0.3,127.0.0.5,222222 "
                 "--tmp-port %d --rrs-port %d --control %d --preamble 100 --block 20 --reg-retry 300",
                 env_dir("KM_PDT_SIM"), base_radio, tmp, rrs, p->ctl_port);
        char *argv[] = { "sh", "-c", cmd, NULL };
        h_spawn(&p->sim, p->slog, argv, NULL);
        cr_assert(h_log_wait(&p->sim, "ready:", 5000), "pdtsim did not start (%s)", p->slog);

        const char *plugins = env_dir("KM_SIM_PLUGIN_DIR");
        FILE *f = fopen(p->bconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = north\nspool = %s/base/spool.db\nplugin_dir = %s\nstats_interval = 0\nlink_status = no\n"
                "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = sensors/#, alert/#\n"
                "[link radio]\ntype = pdt\n%s\ntmp_port = %d\nrrs_port = %d\n"
                "radio_id = 111111\npeer_id = 222222\n%s\n",
                p->dir, plugins, p->local.port, base_keys, tmp, rrs, link_keys);
        fclose(f);
        f = fopen(p->cconf, "w");
        cr_assert(f);
        fprintf(f,
                "[node]\nname = county\nrole = center\nspool = %s/center/spool.db\nplugin_dir = %s\nstats_interval = 0\n"
                "[local]\nuri = tcp://127.0.0.1:%d\n"
                "[link radio]\ntype = pdt\nradio = 127.0.0.3\nlisten = 127.0.0.5\ntmp_port = %d\nrrs_port = %d\n"
                "radio_id = 222222\npeer_id = 111111\npeers = north\n%s\n",
                p->dir, plugins, p->center.port, tmp, rrs, link_keys);
        fclose(f);

        h_sub_start(&p->sub, p->center.port, "center-sub", "kuimen/north/#", true);
        const char *cargs[] = { "--config", p->cconf, "--log-level", "debug", NULL };
        const char *bargs[] = { "--config", p->bconf, "--log-level", "debug", NULL };
        h_kuimen_start(&p->ctr, p->clog, cargs);
        h_kuimen_start(&p->base, p->blog, bargs);
        cr_assert(h_log_wait(&p->ctr, "radio: pdt: radio 222222 registered", 10000), "center radio (%s)", p->clog);
        if (how == ON_HRNP_LATE)
                return;
        cr_assert(h_log_wait(&p->base, "radio: pdt: radio 111111 registered", 10000), "base radio (%s)", p->blog);
        cr_assert(h_log_wait(&p->base, "radio: down -> up (up)", 10000), "base link up (%s)", p->blog);
        cr_assert(h_log_wait(&p->base, "ingest: connected", 10000), "base broker (%s)", p->blog);
}

static void pair_up_on(struct pdt_pair *p, const char *tag, bool hrnp)
{
        pair_up_as(p, tag, hrnp ? ON_HRNP : ON_UDP);
}

static void pair_up(struct pdt_pair *p, const char *tag)
{
        pair_up_as(p, tag, ON_UDP);
}

/* The simulator, the brokers and the control socket: what every test stops last. */
static void pair_rest_down(struct pdt_pair *p)
{
        h_stop(&p->sim, SIGTERM);
        h_stop(&p->local.p, SIGTERM);
        h_stop(&p->center.p, SIGTERM);
        close(p->ctl_fd);
        h_cleanup(p->dir);
}

static void pair_down(struct pdt_pair *p)
{
        h_sub_stop(&p->sub);
        int sb = h_stop(&p->base, SIGTERM), sc = h_stop(&p->ctr, SIGTERM);
        cr_expect(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "base exits 0 (%d)", sb);
        cr_expect(WIFEXITED(sc) && WEXITSTATUS(sc) == 0, "center exits 0 (%d)", sc);
        pair_rest_down(p);
}

/* An operator's command at the center crosses to the base's broker (cmds: its cmd/#). */
static void command_crosses(struct pdt_pair *p, struct h_sub *cmds)
{
        cr_assert_eq(h_mosquitto_pub(p->center.port, "kuimen/north/cmd/pump", "start"), 0);
        cr_assert_eq(h_sub_wait(cmds, 1, 10000), 1, "the command crossed to the base (%s, %s)", p->clog, p->blog);
        pthread_mutex_lock(&cmds->mu);
        cr_assert_str_eq(cmds->rx[0].topic, "cmd/pump");
        cr_assert_str_eq(cmds->rx[0].payload, "start");
        pthread_mutex_unlock(&cmds->mu);
}

/* Readings cross base -> center as TMP private messages, released by the radio's ack
 * (result 0); a command crosses back; a person's text and broken PDUs are counted and
 * carry nothing. */
Test(pdt, end_to_end, .timeout = 60)
{
        struct pdt_pair p;
        struct h_sub cmds;
        pair_up(&p, "pdt-e2e");
        h_sub_start(&cmds, p.local.port, "unit", "cmd/#", true);
        static const char *const want[] = { "{\"ch4\":0.1}", "{\"ch4\":0.2}", "{\"ch4\":0.3}" };
        for (int i = 0; i < 3; i++)
                cr_assert_eq(pub(&p, "sensors/gas", want[i]), 0);
        expect_crossed(&p, want, 3);
        long msgs = sim_stat(&p, "base", "msgs"), ok = sim_stat(&p, "base", "ok");
        cr_assert(msgs >= 1 && msgs <= 3, "3 readings in 1..3 messages (%ld)", msgs);
        cr_assert_eq(ok, msgs, "every message went (%ld of %ld)", ok, msgs);
        cr_assert_eq(sim_stat(&p, "center", "delivered"), msgs);
        cr_assert_eq(sim_stat(&p, "center", "acks_from_pc"), msgs, "the center acked each message its radio handed it");

        sim_ctl(&p, "text center HELLO FROM UNIT 7", NULL, 0);
        sim_ctl(&p, "garble center 3", NULL, 0);
        command_crosses(&p, &cmds);
        cr_assert(h_log_wait(&p.ctr, "a text message from radio 4242 (34 B) is not a frame", 3000), "%s", p.clog);
        cr_assert(h_log_wait(&p.ctr, "pdt: bad TMP PDU from the radio: bad checksum", 3000), "%s", p.clog);
        h_sub_stop(&cmds);
        h_sub_stop(&p.sub);
        h_stop(&p.ctr, SIGTERM);
        cr_assert_eq(h_log_count(&p.ctr, "other texts 1, bad PDUs 3,"), 1, "%s", p.clog);
        cr_assert_eq(h_log_count(&p.base, "up -> down"), 0);
        h_stop(&p.base, SIGTERM);
        pair_rest_down(&p);
}

/* Every TMP result from the air becomes its reason and a retry: transient ones
 * (DEGRADED) resend after the back-off; tx denied, receive-only and PLL unlock hand the
 * frame back (DOWN) until the back-off ends; invalid parameters refuse it; a channel
 * another radio holds (half duplex) answers busy until it is free. One message crosses,
 * once. */
static void results_as_reasons(bool hrnp)
{
        static const struct {
                int r;
                const char *line;
        } codes[] = {
                { 4, "message failed: channel busy (TMP result 4); retry" },
                { 8, "message failed: no ack from the target radio (TMP result 8); retry" },
                { 9, "message failed: repeater wake-up failed (TMP result 9); retry" },
                { 10, "message failed: no contact (TMP result 10); retry" },
                { 12, "message failed: tx interrupted (TMP result 12); retry" },
                { 1, "message failed: failed (TMP result 1); retry" },
                { 6, "message failed: low battery (TMP result 6); retry" },
                { 11, "message failed: tx denied (TMP result 11); the frame goes back" },
                { 5, "message failed: radio is receive-only (TMP result 5); the frame goes back" },
                { 7, "message failed: PLL unlocked (TMP result 7); the frame goes back" },
                { 3, "invalid parameters (TMP result 3): the frame of" },
        };
        const size_t n = sizeof(codes) / sizeof(codes[0]);
        struct pdt_pair p;
        char cmd[256] = "fail base";
        pair_up_on(&p, hrnp ? "pdt-hrnp-codes" : "pdt-codes", hrnp);
        for (size_t i = 0; i < n; i++)
                snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " %d", codes[i].r);
        sim_ctl(&p, cmd, NULL, 0);
        static const char *const want[] = { "{\"level\":3.2}", "after the busy channel" };
        cr_assert_eq(pub(&p, "sensors/water", want[0]), 0);
        expect_crossed(&p, want, 1);
        for (size_t i = 0; i < n; i++)
                cr_expect_eq(h_log_count(&p.base, codes[i].line), 1, "one '%s' (%s)", codes[i].line, p.blog);
        cr_assert_eq(h_log_count(&p.base, "radio: up -> degraded (channel busy (TMP result 4))"), 1, "%s", p.blog);
        cr_assert_eq(h_log_count(&p.base, "-> down (tx denied (TMP result 11))"), 1, "%s", p.blog);
        cr_assert_eq(sim_stat(&p, "base", "ok"), 1);
        cr_assert_eq(sim_stat(&p, "center", "delivered"), 1);

        /* Someone else holds the channel for 1 s: busy answers, then it goes. */
        sim_ctl(&p, "busy 1000", NULL, 0);
        cr_assert_eq(pub(&p, "sensors/water", want[1]), 0);
        expect_crossed(&p, want, 2);
        cr_assert_geq(sim_stat(&p, "base", "busy"), 1, "the channel was busy");
        cr_assert(h_log_wait(&p.base, "-> up (up)", 2000));
        pair_down(&p);
}

Test(pdt, results_as_reasons, .timeout = 60)
{
        results_as_reasons(false);
}

/* The same results, each carried to the base in an HRNP packet from a radio on its
 * serial port. */
Test(pdt, hrnp_results_as_reasons, .timeout = 60)
{
        results_as_reasons(true);
}

/* Over HRNP: the base connects once, its readings cross in data packets each acked by
 * the radio, a command comes back the same way, and broken packets on the line (a bad
 * checksum, line noise, an unknown version, a bad PDU inside a good packet) are each
 * one counted error that loses nothing. */
Test(pdt, hrnp_end_to_end, .timeout = 60)
{
        struct pdt_pair p;
        struct h_sub cmds;
        pair_up_on(&p, "pdt-hrnp-e2e", true);
        cr_assert_eq(h_log_count(&p.base, "pdt: HRNP connection accepted by the radio on"), 1, "%s", p.blog);
        h_sub_start(&cmds, p.local.port, "unit", "cmd/#", true);
        sim_ctl(&p, "garble base 4", NULL, 0);
        static const char *const want[] = { "{\"ch4\":0.1}", "{\"ch4\":0.2}", "{\"ch4\":0.3}" };
        for (int i = 0; i < 3; i++)
                cr_assert_eq(pub(&p, "sensors/gas", want[i]), 0);
        expect_crossed(&p, want, 3);
        long msgs = sim_stat(&p, "base", "msgs");
        cr_assert(msgs >= 1 && msgs <= 3, "3 readings in 1..3 messages (%ld)", msgs);
        cr_assert_eq(sim_stat(&p, "base", "ok"), msgs, "every message went");
        cr_assert_eq(sim_stat(&p, "center", "delivered"), msgs);
        cr_assert_eq(sim_stat(&p, "base", "connects"), 1);
        cr_assert_eq(sim_stat(&p, "base", "hrnp_bad"), 0, "every packet of the PC checked out at the radio");
        cr_assert_eq(sim_stat(&p, "base", "unconnected"), 0);

        command_crosses(&p, &cmds);
        cr_assert_eq(sim_stat(&p, "base", "acks_from_pc"), 1, "the base acked the command's message (TMP)");
        /* The first of the four is logged, the rest rate-limited into the counts. */
        cr_assert_eq(h_log_count(&p.base, "pdt: bad HRNP PDU from the radio: bytes outside a packet (1 bad so far, 0 not logged)"), 1,
                     "%s", p.blog);
        h_sub_stop(&cmds);
        h_sub_stop(&p.sub);
        h_stop(&p.base, SIGTERM);
        cr_assert_eq(h_log_count(&p.base, "bad PDUs 4,"), 1, "%s", p.blog);
        cr_assert_eq(h_log_count(&p.base, "pdt: HRNP: bad packets 3, "), 1, "%s", p.blog);
        cr_assert_eq(h_log_count(&p.base, "up -> down"), 0);
        h_stop(&p.ctr, SIGTERM);
        pair_rest_down(&p);
}

/* The radio on the serial port reboots: it forgets the HRNP connection and answers
 * nothing, so the online checks go unanswered and the link goes DOWN holding traffic;
 * the driver connects again, the radio registers, the held reading crosses once. */
Test(pdt, hrnp_radio_reset, .timeout = 60)
{
        struct pdt_pair p;
        pair_up_on(&p, "pdt-hrnp-reset", true);
        sim_ctl(&p, "reset base 800", NULL, 0);
        cr_assert(h_log_wait(&p.base, "radio: up -> down (radio not answering (RRS online check); connecting (HRNP))", 5000),
                  "%s", p.blog);
        static const char *const want[] = { "held over the reboot" };
        cr_assert_eq(pub(&p, "sensors/e", want[0]), 0);
        expect_crossed(&p, want, 1);
        cr_assert_eq(sim_stat(&p, "base", "msgs"), 1, "one message, after the reboot");
        cr_assert_eq(sim_stat(&p, "base", "connects"), 2, "connected again once");
        cr_assert_eq(h_log_count(&p.base, "pdt: HRNP connection accepted by the radio on"), 2, "%s", p.blog);
        cr_assert_eq(h_log_count(&p.base, "pdt: radio 111111 registered"), 2, "%s", p.blog);
        cr_assert_eq(h_log_count(&p.base, "bad HRNP PDU from the radio: bytes outside a packet"), 1,
                     "the boot noise is one error (%s)", p.blog);
        pair_down(&p);
}

/* The radio switched off: its online checks go unanswered, the link goes DOWN and
 * holds traffic; switched on, it registers, the link is UP and the reading crosses. */
Test(pdt, radio_off_and_on, .timeout = 60)
{
        struct pdt_pair p;
        pair_up(&p, "pdt-off");
        sim_ctl(&p, "power base 0", NULL, 0);
        cr_assert(h_log_wait(&p.base, "radio: up -> down (radio not answering (RRS online check))", 5000), "%s", p.blog);
        static const char *const want[] = { "held" };
        cr_assert_eq(pub(&p, "sensors/e", want[0]), 0);
        h_sleep_ms(700);
        cr_assert_eq(sim_stat(&p, "base", "msgs"), 0, "nothing went to a radio that is off");
        sim_ctl(&p, "power base 1", NULL, 0);
        expect_crossed(&p, want, 1);
        cr_assert_eq(h_log_count(&p.base, "pdt: radio 111111 registered"), 2, "%s", p.blog);
        pair_down(&p);
}

/* The radio's cable plugged in after the start: the port cannot be opened, the link is
 * DOWN with the error and the driver tries again every second; once the device is
 * there it opens it, connects, the radio registers and a held reading crosses. */
Test(pdt, hrnp_device_late, .timeout = 60)
{
        struct pdt_pair p;
        char late[300], real[300];
        pair_up_as(&p, "pdt-hrnp-late", ON_HRNP_LATE);
        snprintf(late, sizeof(late), "%s/late-radio", p.dir);
        snprintf(real, sizeof(real), "%s/base-radio", p.dir);
        cr_assert(h_log_wait(&p.base, "late-radio: open: No such file or directory", 5000), "%s", p.blog);
        cr_assert(h_log_wait(&p.base, "ingest: connected", 10000), "%s", p.blog);
        static const char *const want[] = { "before the cable" };
        cr_assert_eq(pub(&p, "sensors/e", want[0]), 0);
        h_sleep_ms(1500);
        char needle[400];
        snprintf(needle, sizeof(needle), "radio: pdt: %s: open: No such file or directory", late);
        cr_assert_eq(h_log_count(&p.base, needle), 1,
                     "the same error is logged once, however often it is retried (%s)", p.blog);
        cr_assert_eq(sim_stat(&p, "base", "connects"), 0);
        cr_assert_eq(symlink(real, late), 0, "%s", strerror(errno));
        cr_assert(h_log_wait(&p.base, "pdt: HRNP connection accepted by the radio on", 5000), "%s", p.blog);
        cr_assert(h_log_wait(&p.base, "radio: down -> up (up)", 5000), "%s", p.blog);
        expect_crossed(&p, want, 1);
        cr_assert_eq(sim_stat(&p, "base", "connects"), 1);
        pair_down(&p);
}

/*
 * A center whose one radio (222222) terminates two bases (ABI 1.2 send_to): north's
 * radio 111111 and south's 333333 both send to it, and the center addresses each
 * base's acknowledgements (ack = peer here: the far kuimen's acks release the frames)
 * to that base's radio (peer_ids). Without the addressed send every ack would go to
 * peer_id (north): south's radio would never be handed one and south's link would go
 * down after ack_timeout. Then commands down the same radio (a sending side per base):
 * 3 for north and 3 for south published at the center broker, each base publishes
 * exactly its own, in order; sent to peer_id alone, south would get none.
 */
Test(pdt, center_two_bases_one_radio, .timeout = 60)
{
        char dir[200], conf[3][300], log[3][300], slog[300], cmd[1024], text[2048];
        static const char *const name[3] = { "north", "south", "county" };
        static const char *const rip[3] = { "127.0.0.2", "127.0.0.6", "127.0.0.3" }, *const pip[3] = { "127.0.0.4", "127.0.0.7", "127.0.0.5" };
        static const unsigned id[3] = { 111111, 333333, 222222 };
        struct h_broker br[3];
        struct h_proc k[3], sim;
        struct h_sub sub;
        struct h_rec cmds[2]; /* cmd/# at each base's broker */
        const char *keys = "ack = peer\nack_timeout = 3s\nretry = 100ms\nretry_max = 400ms\ncheck_interval = 300ms\n";

        memset(br, 0, sizeof(br));
        h_tmpdir(dir, sizeof(dir), "pdt-2bases");
        snprintf(slog, sizeof(slog), "%s/sim.log", dir);
        int ctl_port = h_free_port(), tmp = h_free_port(), rrs = h_free_port();
        while (rrs == tmp)
                rrs = h_free_port();
        int ctl_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(ctl_fd >= 0);
        struct timeval tv = { .tv_sec = 0, .tv_usec = 250000 };
        setsockopt(ctl_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        snprintf(cmd, sizeof(cmd),
                 "exec '%s' --radio north=%s,%s,%u --radio south=%s,%s,%u --radio center=%s,%s,%u "
                 "--tmp-port %d --rrs-port %d --control %d --preamble 100 --block 20 --reg-retry 300",
                 env_dir("KM_PDT_SIM"), rip[0], pip[0], id[0], rip[1], pip[1], id[1], rip[2], pip[2], id[2], tmp, rrs, ctl_port);
        char *argv[] = { "sh", "-c", cmd, NULL };
        h_spawn(&sim, slog, argv, NULL);
        cr_assert(h_log_wait(&sim, "ready:", 5000), "pdtsim did not start (%s)", slog);
        for (int i = 0; i < 3; i++) {
                h_broker_start(&br[i], dir, 0, NULL);
                snprintf(conf[i], sizeof(conf[i]), "%s/%s.conf", dir, name[i]);
                snprintf(log[i], sizeof(log[i]), "%s/%s.log", dir, name[i]);
                snprintf(text, sizeof(text),
                         "[node]\nname = %s\n%sspool = %s/%s/spool.db\nplugin_dir = %s\nstats_interval = 0\nlink_status = no\n"
                         "[local]\nuri = tcp://127.0.0.1:%d\nsubscribe = alert/#\n"
                         "[link radio]\ntype = pdt\nradio = %s\nlisten = %s\ntmp_port = %d\nrrs_port = %d\nradio_id = %u\n"
                         "peer_id = %u\n%s%s",
                         name[i], i == 2 ? "role = center\n" : "", dir, name[i], env_dir("KM_SIM_PLUGIN_DIR"), br[i].port,
                         rip[i], pip[i], tmp, rrs, id[i], i == 2 ? id[0] : id[2],
                         i == 2 ? "peer_ids = north:111111, south:333333\npeers = north, south\n" : "", keys);
                h_write_text(conf[i], text);
        }
        h_sub_start(&sub, br[2].port, "center-sub", "kuimen/#", true);
        memset(cmds, 0, sizeof(cmds));
        for (int i = 0; i < 2; i++)
                h_rec_start(&cmds[i], br[i].port, name[i], "cmd/#");
        for (int i = 2; i >= 0; i--) {
                const char *args[] = { "--config", conf[i], "--log-level", "debug", NULL };
                h_kuimen_start(&k[i], log[i], args);
        }
        for (int i = 0; i < 3; i++)
                cr_assert(h_log_wait(&k[i], "radio: down -> up (up)", 10000), "%s", log[i]);
        /* A message published on a base's broker before its SUBACK has no subscriber. */
        for (int i = 0; i < 2; i++)
                cr_assert(h_log_wait(&k[i], "ingest: subscribed", 10000), "%s", log[i]);

        cr_assert_eq(h_mosquitto_pub(br[0].port, "alert/a", "N1"), 0);
        cr_assert_eq(h_mosquitto_pub(br[1].port, "alert/a", "S1"), 0);
        cr_assert_eq(h_sub_wait(&sub, 2, 10000), 2, "%s", log[2]);
        cr_assert_eq(h_mosquitto_pub(br[0].port, "alert/a", "N2"), 0);
        cr_assert_eq(h_mosquitto_pub(br[1].port, "alert/a", "S2"), 0);
        cr_assert_eq(h_sub_wait(&sub, 4, 10000), 4, "%s", log[2]);
        /* Each base's radio was handed the center's acks. */
        cr_assert_geq(h_sim_stat(ctl_fd, ctl_port, "pdtsim", slog, "north", "delivered"), 1, "%s", slog);
        cr_assert_geq(h_sim_stat(ctl_fd, ctl_port, "pdtsim", slog, "south", "delivered"), 1, "south got no ack (%s)", slog);
        /* Longer than ack_timeout: an unacknowledged frame would take its base's link down. */
        h_sleep_ms(4000);
        cr_assert_eq(h_sub_count(&sub), 4, "each alert once");
        /* Three radios share the channel: DEGRADED for a busy channel is fine, DOWN is not. */
        for (int i = 0; i < 3; i++)
                cr_assert_eq(h_log_count(&k[i], "up -> down") + h_log_count(&k[i], "degraded -> down"), 0,
                             "a link went down (%s)", log[i]);
        cr_assert_eq(h_log_count(&k[2], "no radio for peer"), 0, "%s", log[2]);

        /* Commands for both bases, interleaved as an operator might send them. */
        cr_assert(h_log_wait(&k[2], "ingest: subscribed", 10000), "%s", log[2]);
        for (int n = 1; n <= 3; n++) {
                char pl[8];
                snprintf(pl, sizeof(pl), "N%d", n);
                cr_assert_eq(h_mosquitto_pub(br[2].port, "kuimen/north/cmd/pump", pl), 0);
                snprintf(pl, sizeof(pl), "S%d", n);
                cr_assert_eq(h_mosquitto_pub(br[2].port, "kuimen/south/cmd/gate", pl), 0);
        }
        for (int i = 0; i < 2; i++)
                cr_assert_eq(h_rec_wait(&cmds[i], 3, 10000), 3, "%s published %zu of its 3 commands (%s, %s)", name[i],
                             h_rec_count(&cmds[i]), log[i], log[2]);
        h_sleep_ms(3500); /* longer than rto: a frame sent again or to the wrong base would be here */
        for (int i = 0; i < 2; i++) {
                pthread_mutex_lock(&cmds[i].mu);
                cr_assert_eq(cmds[i].n, 3, "%s published %zu commands (%s)", name[i], cmds[i].n, log[i]);
                for (size_t m = 0; m < 3; m++) {
                        char want[8];
                        snprintf(want, sizeof(want), "%c%zu", i ? 'S' : 'N', m + 1);
                        cr_assert_str_eq(cmds[i].m[m].topic, i ? "cmd/gate" : "cmd/pump");
                        cr_assert_str_eq(cmds[i].m[m].payload, want, "%s's command %zu", name[i], m + 1);
                }
                pthread_mutex_unlock(&cmds[i].mu);
                h_rec_stop(&cmds[i]);
                h_rec_free(&cmds[i]);
                cr_assert_eq(h_log_count(&k[i], "'s frames, not ours"), 0, "%s was handed the other's ack (%s)", name[i],
                             log[i]);
        }
        for (int i = 0; i < 3; i++)
                cr_assert_eq(h_log_count(&k[i], "up -> down") + h_log_count(&k[i], "degraded -> down"), 0,
                             "a link went down (%s)", log[i]);
        h_sub_stop(&sub);
        for (int i = 0; i < 3; i++) {
                int st = h_stop(&k[i], SIGTERM);
                cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exits 0 (%d)", name[i], st);
                h_stop(&br[i].p, SIGTERM);
        }
        h_stop(&sim, SIGTERM);
        close(ctl_fd);
        h_cleanup(dir);
}

/* Bad keys name themselves before anything starts. */
Test(pdt, keys_checked, .timeout = 30)
{
        char dir[200], conf[300], out[8192];
        h_tmpdir(dir, sizeof(dir), "pdt-keys");
        snprintf(conf, sizeof(conf), "%s/k.conf", dir);
        static const struct {
                const char *keys, *want;
        } cases[] = {
                { "radio_id = 1\npeer_id = 2\nradio = 192.168.10", "radio = '192.168.10': not a numeric IPv4 address" },
                { "radio_id = 1\npeer_id = 1", "peer_id: the same as radio_id" },
                { "radio_id = 1\npeer_id = 2\ntext_max = 20", "text_max: a frame needs at least 32 bytes, 20 text bytes carry 15" },
                { "radio_id = 16777216\npeer_id = 2", "radio_id = '16777216': out of range 1..16777215" },
                { "peer_id = 2", "radio_id: missing" },
                { "radio_id = 1\npeer_id = 2\nrrs_port = 3004", "rrs_port: the same as tmp_port" },
                { "radio_id = 1\npeer_id = 2\ntransport = serial", "transport = 'serial': not udp or hrnp" },
                { "radio_id = 1\npeer_id = 2\ntransport = hrnp\nbaud = 12345", "baud = '12345': not a line speed" },
                { "radio_id = 1\npeer_id = 2\ntransport = hrnp\ndevice = ttyUSB0", "device = 'ttyUSB0': not an absolute path" },
                { "radio_id = 1\npeer_id = 2\ntransport = hrnp\ndevice = /dev/ttyS1\nbaud = 9600", NULL },
                { "radio_id = 1\npeer_id = 2\npeer_ids = north", "peer_ids = 'north': expected NAME:ID" },
                { "radio_id = 1\npeer_id = 2\npeer_ids = north:2, south:16777216", "peer_ids = 'north:2, south:16777216': expected NAME:ID, ... with radio ids" },
                { "radio_id = 1\npeer_id = 2\npeer_ids = north:2, south:3", NULL },
                { "radio_id = 1\npeer_id = 2\npeers = north, south\npeer_ids = north:2",
                  "peer_ids: no radio for south (one of peers) in peer_ids" },
                { "radio_id = 1\npeer_id = 2\npeers = north, south\npeer_ids = north:2, south:3", NULL },
                { "radio_id = 1\npeer_id = 2", NULL },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char text[1024];
                snprintf(text, sizeof(text),
                         "[node]\nname = north\nspool = %s/spool.db\nplugin_dir = %s\n[local]\nuri = tcp://127.0.0.1:1\n"
                         "[link radio]\ntype = pdt\n%s\n",
                         dir, env_dir("KM_SIM_PLUGIN_DIR"), cases[i].keys);
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

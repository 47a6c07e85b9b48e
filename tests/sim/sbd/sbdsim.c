/* SPDX-License-Identifier: MIT */
/* sbdsim: two Iridium 9602/9603 modems on ptys and the Iridium gateway between them, with injectable faults. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/*
 * Each modem is the master side of a pty whose slave is reached through a symlink
 * (--modem NAME=LINK), as a USB serial adapter is through /dev/serial/by-id: the
 * driver under test opens LINK. The modem speaks the 9602/9603 AT dialogue of
 * shared/protocols/equipment.md §2 and §4.2 byte for byte: commands end in \r, echo
 * until ATE0, answers "\r\n<text>\r\n", AT+SBDWB=<n> -> READY -> n bytes + sum u16 BE
 * -> 0/1/2 (3 for a bad n), AT+SBDIX blocks the port for a session and answers
 * "+SBDIX: <MO st>, <MOMSN>, <MT st>, <MTMSN>, <MT len>, <MT queued>", AT+SBDRB
 * answers [len u16 BE][bytes][sum u16 BE] then "\r\nOK\r\n", SBDRING when an MT
 * message reaches a registered modem with SBDMTA=1, +CIEV after AT+CIER.
 *
 * The gateway: a session that succeeds takes the modem's MO buffer (kept, as a real
 * modem keeps it, until AT+SBDD0 or the next AT+SBDWB) to the other modem's MT queue
 * after --latency; an MO longer than 270 B cannot be an MT and is dropped (counted).
 * Two modems make one link: base's MO is center's MT and the other way.
 *
 * The test drives faults over UDP on 127.0.0.1:--control (one command a datagram,
 * one answer back): see usage().
 */

#define MO_MAX 340
#define MT_MAX 270
#define MTQ_MAX 64
#define NMODEM 2

struct mt {
        uint8_t d[MO_MAX];
        size_t len;
        uint64_t due_us;
        bool announced; /* arrived() ran for it */
};

enum in_mode { IN_CMD, IN_BIN, IN_BUSY };

struct modem {
        char name[16], link[256];
        int mfd, sfd;
        struct modem *peer;
        const char *imei;

        /* settings a reset clears */
        bool echo, mta, areg, cier, cier_sig, cier_svc, registered;
        bool verbose; /* ATV1; like a stored profile, a reset keeps it */
        /* buffers */
        uint8_t mo[MO_MAX];
        size_t mo_len;
        uint8_t mtbuf[MT_MAX];
        size_t mtbuf_len;
        uint16_t momsn, mtmsn;
        /* the gateway's queue for this modem */
        struct mt q[MTQ_MAX];
        unsigned qn;
        bool hold; /* no SBDRING */
        /* the radio */
        int csq, service;
        bool walk;
        /* input */
        enum in_mode in;
        char cmd[512];
        size_t cmdlen;
        uint8_t bin[MO_MAX + 2];
        size_t bin_want, bin_have;
        uint64_t bin_deadline, busy_until;
        bool answer_ring;
        uint8_t pend[4096]; /* bytes the DTE sent during a session */
        size_t pend_len;
        int fail[64];
        unsigned nfail;
        uint64_t dead_until, unplug_until;
        bool ring_owed;

        unsigned long sessions, mo_ok, mo_failed, mt_delivered, rb, rings, resets, garbled, dropped, errors, unplugs;
};

static struct modem modems[NMODEM];
static unsigned nmodems;
static uint64_t session_us = 500000, jitter_us = 0, latency_us = 0, walk_us = 0;
static int csq_min = 3, csq_start = 5;
static double fail_p = 0;
static uint64_t rng = 0x5eed;
static int ctl_fd = -1;

static uint64_t now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t rnd(void)
{
        uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

static void say(const struct modem *m, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        printf("sbdsim: %.3f %s: ", (double)(now_us() % 1000000000ull) / 1e6, m ? m->name : "-");
        vprintf(fmt, ap);
        putchar('\n');
        fflush(stdout);
        va_end(ap);
}

static void out(struct modem *m, const void *p, size_t n)
{
        const uint8_t *b = p;
        while (m->mfd >= 0 && n > 0) {
                ssize_t w = write(m->mfd, b, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                struct pollfd pf = { .fd = m->mfd, .events = POLLOUT };
                                poll(&pf, 1, 100);
                                continue;
                        }
                        return;
                }
                b += w;
                n -= (size_t)w;
        }
}

static void outs(struct modem *m, const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        out(m, buf, (size_t)n);
}

static void line(struct modem *m, const char *text);

static void linef(struct modem *m, const char *fmt, ...)
{
        char buf[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        line(m, buf);
}

/* An answer or an unsolicited code, framed as the modem frames them: verbose (ATV1)
 * "\r\n<text>\r\n"; numeric (ATV0) result codes as numbers ("0\r" OK, "4\r" ERROR,
 * "126\r" SBDRING) and other text as "<text>\r", as isbd-emu frames them. */
static void line(struct modem *m, const char *text)
{
        if (m->verbose) {
                outs(m, "\r\n%s\r\n", text);
                return;
        }
        const char *code = strcmp(text, "OK") == 0 ? "0" : strcmp(text, "ERROR") == 0 ? "4" : strcmp(text, "SBDRING") == 0 ? "126" : text;
        outs(m, "%s\r", code);
}

static void ok(struct modem *m)
{
        line(m, "OK");
}

static void power_on(struct modem *m)
{
        m->echo = true;
        m->mta = m->areg = m->cier = m->cier_sig = m->cier_svc = m->registered = false;
        m->mo_len = m->mtbuf_len = 0;
        m->in = IN_CMD;
        m->cmdlen = m->pend_len = 0;
        m->ring_owed = false;
}

/* ---- the pty ---------------------------------------------------------------------- */

static int make_pty(struct modem *m)
{
        int fd = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0) {
                perror("sbdsim: posix_openpt");
                return -1;
        }
        const char *slave = ptsname(fd);
        /* The slave stays open here too: a driver that closes and reopens it must not
         * make the master see a hang-up, and the line discipline is set raw before the
         * driver comes (with ECHO on it would echo the modem's own output back). */
        int sfd = open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC);
        struct termios t;
        if (sfd < 0 || tcgetattr(sfd, &t) < 0) {
                perror("sbdsim: slave");
                return -1;
        }
        cfmakeraw(&t);
        tcsetattr(sfd, TCSANOW, &t);
        unlink(m->link);
        if (symlink(slave, m->link) < 0) {
                perror("sbdsim: symlink");
                return -1;
        }
        m->mfd = fd;
        m->sfd = sfd;
        say(m, "modem on %s (%s)", m->link, slave);
        return 0;
}

static void unplug(struct modem *m, uint64_t ms)
{
        if (m->mfd >= 0)
                close(m->mfd);
        if (m->sfd >= 0)
                close(m->sfd);
        m->mfd = m->sfd = -1;
        unlink(m->link);
        m->unplugs++;
        m->unplug_until = now_us() + ms * 1000;
        say(m, "unplugged for %llu ms", (unsigned long long)ms);
}

/* ---- the gateway ---------------------------------------------------------------- */

static void try_ring(struct modem *m)
{
        if (!m->ring_owed || m->in != IN_CMD || m->cmdlen || m->mfd < 0 || m->dead_until)
                return;
        m->ring_owed = false;
        m->rings++;
        line(m, "SBDRING");
}

/* An MT message reached the modem's gateway queue: ring if the modem can hear it. */
static void arrived(struct modem *m)
{
        if (m->mta && (m->registered || m->areg) && m->service && m->csq > 0 && !m->hold) {
                m->ring_owed = true;
                try_ring(m);
        }
}

static unsigned arrived_count(const struct modem *m, uint64_t now)
{
        unsigned k = 0;
        while (k < m->qn && m->q[k].due_us <= now)
                k++;
        return k;
}

static void deliver(struct modem *from, uint64_t now)
{
        struct modem *to = from->peer;
        if (!to)
                return;
        if (from->mo_len > MT_MAX) {
                from->dropped++;
                say(from, "MO of %zu B is longer than an MT (%d B): the gateway drops it", from->mo_len, MT_MAX);
                return;
        }
        if (to->qn == MTQ_MAX) {
                from->dropped++;
                say(to, "MT queue full: dropped");
                return;
        }
        struct mt *q = &to->q[to->qn++];
        memcpy(q->d, from->mo, from->mo_len);
        q->len = from->mo_len;
        q->due_us = now + latency_us;
        q->announced = !latency_us;
        if (!latency_us)
                arrived(to);
}

/* ---- sessions ------------------------------------------------------------------- */

static void end_session(struct modem *m, uint64_t now)
{
        int st;
        m->in = IN_CMD;
        m->sessions++;
        if (m->nfail) {
                st = m->fail[0];
                memmove(m->fail, m->fail + 1, --m->nfail * sizeof(m->fail[0]));
        } else if (!m->service || m->csq == 0) {
                st = 32;
        } else if (fail_p > 0 && (double)(rnd() >> 11) * 0x1.0p-53 < fail_p) {
                static const int transient[] = { 13, 17, 18 };
                st = transient[rnd() % 3];
        } else {
                st = 0;
        }
        int mt_st = 0;
        unsigned mt_len = 0, queued;
        if (st <= 4) {
                m->registered = true;
                if (m->mo_len) {
                        m->momsn++;
                        m->mo_ok++;
                        deliver(m, now);
                }
                unsigned avail = arrived_count(m, now);
                if (avail) {
                        memcpy(m->mtbuf, m->q[0].d, m->q[0].len);
                        m->mtbuf_len = m->q[0].len;
                        memmove(m->q, m->q + 1, --m->qn * sizeof(m->q[0]));
                        m->mtmsn++;
                        m->mt_delivered++;
                        mt_st = 1;
                        mt_len = (unsigned)m->mtbuf_len;
                        avail--;
                }
                queued = avail;
        } else {
                m->mo_failed++;
                mt_st = 2;
                queued = 0;
        }
        say(m, "session %lu: MO status %d (MO %zu B), MT status %d, %u B, %u queued", m->sessions, st, m->mo_len, mt_st,
            mt_len, queued);
        linef(m, "+SBDIX: %d, %u, %d, %u, %u, %u", st, m->momsn, mt_st, mt_st == 1 ? m->mtmsn : 0, mt_len, queued);
        ok(m);
}

static void start_session(struct modem *m, uint64_t now, bool answer)
{
        uint64_t t = session_us + (jitter_us ? rnd() % jitter_us : 0);
        /* Without a satellite the modem gives up sooner than a full session. */
        if (!m->service || m->csq == 0)
                t /= 5;
        m->in = IN_BUSY;
        m->busy_until = now + t;
        m->answer_ring = answer;
}

/* ---- commands ------------------------------------------------------------------- */

static bool is(const char *c, const char *what)
{
        return strcmp(c, what) == 0;
}

static void command(struct modem *m, char *c, uint64_t now)
{
        for (char *p = c; *p; p++)
                *p = (char)toupper((unsigned char)*p);
        if (strncmp(c, "AT", 2) != 0)
                return; /* a modem ignores what does not start with AT */
        const char *a = c + 2;
        long n;
        char *end;
        if (*a == '\0' || is(a, "&K0") || is(a, "&K3") || is(a, "&D0") || is(a, "&F0")) {
                ok(m);
        } else if (is(a, "V0") || is(a, "V1")) {
                m->verbose = a[1] == '1';
                ok(m);
        } else if (is(a, "E0") || is(a, "E1") || is(a, "E")) {
                m->echo = a[1] == '1';
                ok(m);
        } else if (strncmp(a, "+SBDWB=", 7) == 0) {
                n = strtol(a + 7, &end, 10);
                if (*end || end == a + 7 || n < 1 || n > MO_MAX) {
                        line(m, "3");
                        ok(m);
                        return;
                }
                m->in = IN_BIN;
                m->bin_want = (size_t)n + 2;
                m->bin_have = 0;
                m->bin_deadline = now + 60000000ull;
                line(m, "READY");
        } else if (is(a, "+SBDIX") || is(a, "+SBDIXA")) {
                start_session(m, now, a[6] == 'A');
        } else if (is(a, "+SBDRB")) {
                uint8_t hdr[2] = { (uint8_t)(m->mtbuf_len >> 8), (uint8_t)m->mtbuf_len };
                uint32_t sum = 0;
                for (size_t i = 0; i < m->mtbuf_len; i++)
                        sum += m->mtbuf[i];
                uint8_t ck[2] = { (uint8_t)(sum >> 8), (uint8_t)sum };
                out(m, hdr, 2);
                out(m, m->mtbuf, m->mtbuf_len);
                out(m, ck, 2);
                m->rb += m->mtbuf_len > 0;
                ok(m);
        } else if (is(a, "+SBDD0") || is(a, "+SBDD1") || is(a, "+SBDD2")) {
                if (a[5] != '1')
                        m->mo_len = 0;
                if (a[5] != '0')
                        m->mtbuf_len = 0;
                line(m, "0");
                ok(m);
        } else if (is(a, "+CSQ") || is(a, "+CSQF")) {
                linef(m, "+CSQ%s:%d", a[4] == 'F' ? "F" : "", m->csq);
                ok(m);
        } else if (strncmp(a, "+CIER=", 6) == 0) {
                int v[4] = { 0, 0, 0, 0 };
                int k = sscanf(a + 6, "%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3]);
                if (k < 1) {
                        line(m, "ERROR");
                        return;
                }
                m->cier = v[0] == 1;
                m->cier_sig = v[1] == 1;
                m->cier_svc = v[2] == 1;
                ok(m);
                if (m->cier && m->cier_sig)
                        linef(m, "+CIEV:0,%d", m->csq);
                if (m->cier && m->cier_svc)
                        linef(m, "+CIEV:1,%d", m->service);
        } else if (strncmp(a, "+SBDMTA=", 8) == 0 && (a[8] == '0' || a[8] == '1') && !a[9]) {
                m->mta = a[8] == '1';
                ok(m);
        } else if (strncmp(a, "+SBDAREG=", 9) == 0 && a[9] >= '0' && a[9] <= '4' && !a[10]) {
                m->areg = a[9] != '0';
                ok(m);
        } else if (is(a, "-MSSTM")) {
                /* 90 ms ticks since the Iridium epoch, 2014-05-11 14:23:55 UTC. */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t ticks = ((uint64_t)ts.tv_sec - 1399818235ull) * 1000 / 90;
                if (m->service && m->csq > 0)
                        linef(m, "-MSSTM: %08x", (unsigned)ticks);
                else
                        line(m, "-MSSTM: no network service");
                ok(m);
        } else if (is(a, "+CGSN")) {
                line(m, m->imei);
                ok(m);
        } else {
                m->errors++;
                line(m, "ERROR");
        }
}

/* Bytes from the DTE. */
static void input(struct modem *m, const uint8_t *p, size_t n, uint64_t now)
{
        for (size_t i = 0; i < n; i++) {
                uint8_t c = p[i];
                if (m->in == IN_BUSY) {
                        /* The port is blocked during a session: what comes is handled after it. */
                        if (m->pend_len < sizeof(m->pend))
                                m->pend[m->pend_len++] = c;
                        continue;
                }
                if (m->in == IN_BIN) {
                        m->bin[m->bin_have++] = c;
                        if (m->bin_have == m->bin_want) {
                                size_t len = m->bin_want - 2;
                                uint32_t sum = 0;
                                for (size_t k = 0; k < len; k++)
                                        sum += m->bin[k];
                                bool good = (uint16_t)sum == (uint16_t)(m->bin[len] << 8 | m->bin[len + 1]);
                                m->in = IN_CMD;
                                if (good) {
                                        memcpy(m->mo, m->bin, len);
                                        m->mo_len = len;
                                }
                                line(m, good ? "0" : "2");
                                ok(m);
                        }
                        continue;
                }
                if (m->echo)
                        out(m, &c, 1);
                if (c == '\r') {
                        m->cmd[m->cmdlen] = '\0';
                        m->cmdlen = 0;
                        command(m, m->cmd, now);
                        if (m->in == IN_BUSY) {
                                /* The rest of this read waits for the session's end. */
                                size_t rest = n - i - 1;
                                if (rest > sizeof(m->pend))
                                        rest = sizeof(m->pend);
                                memcpy(m->pend, p + i + 1, rest);
                                m->pend_len = rest;
                                return;
                        }
                        try_ring(m);
                } else if (c == '\n') {
                        continue; /* "line-feed will not work": ignored */
                } else if (m->cmdlen + 1 < sizeof(m->cmd)) {
                        m->cmd[m->cmdlen++] = (char)c;
                }
        }
}

/* Junk lines a noisy serial line would make: framed like answers, never starting with
 * "AT" (that is a reset's echo) nor with 0x00/0x01 (the start of an SBDRB length). */
static void garble(struct modem *m, unsigned n)
{
        for (unsigned k = 0; k < n; k++) {
                uint8_t junk[300];
                size_t len = k % 5 == 4 ? 200 : 3 + rnd() % 30, o = 0;
                junk[o++] = '\r';
                junk[o++] = '\n';
                for (size_t i = 0; i < len; i++) {
                        uint8_t c;
                        do
                                c = (uint8_t)(0x02 + rnd() % 254);
                        while (c == '\r' || c == '\n' || (i == 0 && (c == 'A' || c == 'a')));
                        junk[o++] = c;
                }
                junk[o++] = '\r';
                junk[o++] = '\n';
                out(m, junk, o);
                m->garbled++;
        }
}

static void reset(struct modem *m, uint64_t ms)
{
        power_on(m);
        m->resets++;
        m->dead_until = now_us() + ms * 1000;
        say(m, "reset: silent for %llu ms", (unsigned long long)ms);
}

/* ---- control ---------------------------------------------------------------------- */

static struct modem *by_name(const char *name)
{
        for (unsigned i = 0; i < nmodems; i++)
                if (strcmp(modems[i].name, name) == 0)
                        return &modems[i];
        return NULL;
}

static void control(void)
{
        char req[512], ans[2048];
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(ctl_fd, req, sizeof(req) - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n <= 0)
                return;
        req[n] = '\0';
        char *save, *verb = strtok_r(req, " \n", &save), *name = strtok_r(NULL, " \n", &save);
        struct modem *m = name ? by_name(name) : NULL;
        size_t o = 0;
        uint64_t now = now_us();
        if (verb && is(verb, "stats")) {
                for (unsigned i = 0; i < nmodems; i++) {
                        struct modem *x = &modems[i];
                        o += (size_t)snprintf(ans + o, sizeof(ans) - o,
                                              "%s sessions=%lu mo=%lu mo_failed=%lu mt=%lu rb=%lu rings=%lu resets=%lu "
                                              "garbled=%lu dropped=%lu errors=%lu queued=%u csq=%d unplugs=%lu\n",
                                              x->name, x->sessions, x->mo_ok, x->mo_failed, x->mt_delivered, x->rb,
                                              x->rings, x->resets, x->garbled, x->dropped, x->errors, x->qn, x->csq,
                                              x->unplugs);
                }
        } else if (!verb || !m) {
                snprintf(ans, sizeof(ans), "error: expected VERB MODEM [ARGS]");
        } else if (is(verb, "fail")) {
                for (char *t; (t = strtok_r(NULL, " \n", &save)) && m->nfail < 64;)
                        m->fail[m->nfail++] = atoi(t);
                snprintf(ans, sizeof(ans), "ok %u failures queued", m->nfail);
        } else if (is(verb, "reset")) {
                char *t = strtok_r(NULL, " \n", &save);
                reset(m, t ? strtoull(t, NULL, 10) : 500);
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "unplug")) {
                char *t = strtok_r(NULL, " \n", &save);
                unplug(m, t ? strtoull(t, NULL, 10) : 1000);
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "garble")) {
                char *t = strtok_r(NULL, " \n", &save);
                garble(m, t ? (unsigned)atoi(t) : 1);
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "atv0")) {
                m->verbose = false;
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "hwfail")) {
                line(m, "HARDWARE FAILURE: 4, 2");
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "csq")) {
                char *t = strtok_r(NULL, " \n", &save);
                m->csq = t ? atoi(t) : 5;
                m->walk = false;
                if (m->cier && m->cier_sig && m->in == IN_CMD && m->mfd >= 0 && !m->dead_until)
                        linef(m, "+CIEV:0,%d", m->csq);
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "service")) {
                char *t = strtok_r(NULL, " \n", &save);
                m->service = t ? atoi(t) != 0 : 1;
                if (m->cier && m->cier_svc && m->in == IN_CMD && m->mfd >= 0 && !m->dead_until)
                        linef(m, "+CIEV:1,%d", m->service);
                snprintf(ans, sizeof(ans), "ok");
        } else if (is(verb, "hold")) {
                char *t = strtok_r(NULL, " \n", &save);
                m->hold = !t || atoi(t) != 0;
                if (!m->hold && arrived_count(m, now))
                        arrived(m);
                snprintf(ans, sizeof(ans), "ok");
        } else {
                snprintf(ans, sizeof(ans), "error: unknown verb %s", verb);
        }
        sendto(ctl_fd, ans, strlen(ans), 0, (struct sockaddr *)&from, fl);
}

/* ---- the loop --------------------------------------------------------------------- */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
        (void)sig;
        stop = 1;
}

static void usage(void)
{
        fprintf(stderr,
                "usage: sbdsim --modem NAME=LINK --modem NAME=LINK --control PORT [--session MS] [--jitter MS]\n"
                "              [--latency MS] [--csq N] [--csq-min N] [--walk MS] [--fail-p P] [--seed N]\n"
                "control (UDP 127.0.0.1:PORT, one command a datagram, answered):\n"
                "  stats                     counters of both modems\n"
                "  fail NAME ST [ST...]      the next sessions of NAME end with these MO statuses\n"
                "  reset NAME [MS]           module reset: settings and buffers gone, silent MS ms (500)\n"
                "  unplug NAME [MS]          the pty disappears for MS ms (1000), then a new one behind LINK\n"
                "  garble NAME [N]           N junk lines on NAME's serial line now\n"
                "  hwfail NAME               the unsolicited HARDWARE FAILURE: 4, 2\n"
                "  atv0 NAME                 numeric answers from now on, resets included (a stored ATV0)\n"
                "  csq NAME N                CSQ fixed at N (the walk stops)\n"
                "  service NAME 0|1          network service (0: sessions end in MO status 32)\n"
                "  hold NAME 0|1             1: no SBDRING for NAME (MT messages queue at the gateway)\n");
        exit(2);
}

int main(int argc, char **argv)
{
        int port = 0;
        static const char *const imeis[NMODEM] = { "300234010753370", "300234010753371" };
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!v)
                        usage();
                i++;
                if (is(a, "--modem") && nmodems < NMODEM) {
                        const char *eq = strchr(v, '=');
                        if (!eq || eq - v >= 16)
                                usage();
                        struct modem *m = &modems[nmodems];
                        snprintf(m->name, sizeof(m->name), "%.*s", (int)(eq - v), v);
                        snprintf(m->link, sizeof(m->link), "%s", eq + 1);
                        m->imei = imeis[nmodems++];
                } else if (is(a, "--control"))
                        port = atoi(v);
                else if (is(a, "--session"))
                        session_us = strtoull(v, NULL, 10) * 1000;
                else if (is(a, "--jitter"))
                        jitter_us = strtoull(v, NULL, 10) * 1000;
                else if (is(a, "--latency"))
                        latency_us = strtoull(v, NULL, 10) * 1000;
                else if (is(a, "--csq"))
                        csq_start = atoi(v);
                else if (is(a, "--csq-min"))
                        csq_min = atoi(v);
                else if (is(a, "--walk"))
                        walk_us = strtoull(v, NULL, 10) * 1000;
                else if (is(a, "--fail-p"))
                        fail_p = atof(v);
                else if (is(a, "--seed"))
                        rng = strtoull(v, NULL, 10);
                else
                        usage();
        }
        if (nmodems == 0 || port <= 0)
                usage();
        if (nmodems == 2) {
                modems[0].peer = &modems[1];
                modems[1].peer = &modems[0];
        }
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        signal(SIGPIPE, SIG_IGN);

        ctl_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (ctl_fd < 0 || bind(ctl_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                perror("sbdsim: control socket");
                return 1;
        }
        for (unsigned i = 0; i < nmodems; i++) {
                struct modem *m = &modems[i];
                m->mfd = m->sfd = -1;
                m->csq = csq_start;
                m->service = 1;
                m->verbose = true;
                m->walk = walk_us > 0;
                power_on(m);
                if (make_pty(m) < 0)
                        return 1;
        }
        say(NULL, "ready: session %llu ms, control 127.0.0.1:%d", (unsigned long long)(session_us / 1000), port);
        uint64_t next_walk = now_us() + walk_us;

        while (!stop) {
                struct pollfd pf[NMODEM + 1];
                struct modem *who[NMODEM + 1];
                nfds_t np = 0;
                uint64_t now = now_us(), due = now + 1000000;
                pf[np] = (struct pollfd){ .fd = ctl_fd, .events = POLLIN };
                who[np++] = NULL;
                for (unsigned i = 0; i < nmodems; i++) {
                        struct modem *m = &modems[i];
                        if (m->mfd >= 0) {
                                pf[np] = (struct pollfd){ .fd = m->mfd, .events = POLLIN };
                                who[np++] = m;
                        }
                        if (m->in == IN_BUSY && m->busy_until < due)
                                due = m->busy_until;
                        if (m->in == IN_BIN && m->bin_deadline < due)
                                due = m->bin_deadline;
                        if (m->dead_until && m->dead_until < due)
                                due = m->dead_until;
                        if (m->unplug_until && m->unplug_until < due)
                                due = m->unplug_until;
                        for (unsigned k = 0; k < m->qn; k++)
                                if (m->q[k].due_us > now && m->q[k].due_us < due)
                                        due = m->q[k].due_us;
                }
                if (walk_us && next_walk < due)
                        due = next_walk;
                int ms = due > now ? (int)((due - now + 999) / 1000) : 0;
                if (poll(pf, np, ms) < 0 && errno != EINTR)
                        break;
                now = now_us();
                for (nfds_t k = 0; k < np; k++) {
                        if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        if (!who[k]) {
                                control();
                                continue;
                        }
                        struct modem *m = who[k];
                        uint8_t buf[1024];
                        ssize_t n = read(m->mfd, buf, sizeof(buf));
                        if (n <= 0)
                                continue;
                        if (m->dead_until)
                                continue; /* a modem being reset hears nothing */
                        input(m, buf, (size_t)n, now);
                }
                for (unsigned i = 0; i < nmodems; i++) {
                        struct modem *m = &modems[i];
                        if (m->unplug_until && now >= m->unplug_until) {
                                m->unplug_until = 0;
                                power_on(m);
                                if (make_pty(m) < 0)
                                        return 1;
                        }
                        if (m->dead_until && now >= m->dead_until) {
                                m->dead_until = 0;
                                say(m, "back from reset");
                        }
                        if (m->in == IN_BUSY && now >= m->busy_until && !m->dead_until) {
                                end_session(m, now);
                                if (m->pend_len) {
                                        uint8_t p[sizeof(m->pend)];
                                        size_t n = m->pend_len;
                                        memcpy(p, m->pend, n);
                                        m->pend_len = 0;
                                        input(m, p, n, now);
                                }
                                try_ring(m);
                        }
                        if (m->in == IN_BIN && now >= m->bin_deadline) {
                                m->in = IN_CMD;
                                line(m, "1");
                                ok(m);
                        }
                        bool news = false;
                        for (unsigned k = 0; k < m->qn; k++)
                                if (m->q[k].due_us <= now && !m->q[k].announced)
                                        news = m->q[k].announced = true;
                        if (news)
                                arrived(m);
                }
                if (walk_us && now >= next_walk) {
                        next_walk = now + walk_us;
                        for (unsigned i = 0; i < nmodems; i++) {
                                struct modem *m = &modems[i];
                                if (!m->walk)
                                        continue;
                                int was = m->csq;
                                m->csq += (int)(rnd() % 3) - 1;
                                if (m->csq < csq_min)
                                        m->csq = csq_min;
                                if (m->csq > 5)
                                        m->csq = 5;
                                if (m->csq != was && m->cier && m->cier_sig && m->in == IN_CMD && !m->cmdlen &&
                                    m->mfd >= 0 && !m->dead_until)
                                        linef(m, "+CIEV:0,%d", m->csq);
                        }
                }
        }
        for (unsigned i = 0; i < nmodems; i++)
                unlink(modems[i].link);
        say(NULL, "stopped");
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* beidou_sim: a BeiDou RDSS module with its card on a pty, speaking the BDS-3 or 2.1 sentences or the binary 4.0 frames byte-exactly; a loopback UDP "satellite" joins two of them. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "plugins/beidou/rdss.h"

/*
 * The model follows /work/shared/protocols/equipment.md §4.1.
 *
 *   OFF -> BOOT (silent, --boot-ms) -> NO_TIME (BDS-3: $BDPWI,000000.00,00,00 each
 *   second, --notime-ms) -> READY (BDS-3: $BDPWI each second with 4 beams whose S2C_d
 *   random-walk around their means between --s2c-lo and --s2c-hi; 2.1: $BDBSI each second once
 *   $CCRMO,BSI,2,n asked for it; 4.0: $GLZK every n s once $GLJC n asked for it).
 *
 * 4.0 ($ICJC -> $ICXX, $TXSQ -> $FKXX, $TXXX) has flags where the ASCII sets have
 * reasons: 1 failed (also for a missing card: 4.0 has no flag for it), 2 signal not
 * locked, 3 battery low, 4 interval (seconds left in the last extra byte), 6 CRC
 * error, 7 suppression (also for radio silence).
 *
 * $CCICR/$CCICA/$ICJC answer $BDICP/$BDICI/$ICXX (all zeros without a card). $CCTCQ/$CCTXA pass
 * the gates in the order of the notes: no card (5), interval not elapsed (1, with the
 * seconds left), suppression / silence / battery (2 / 3 / 2.1's 2), permission (6),
 * no beam at or above --min-s2c (4), longer than the level allows (6). A send that
 * passes gets $BDFKI Y after --fki-ms; the interval starts then, and the message goes
 * to the peer simulators over UDP (--peer, up to 4 times: every peer hears every
 * message and keeps those for its own card, as a satellite beam does), which emits $BDTCI/$BDTXR after --latency-ms (held
 * while its card is out, as the system's centre would). A message to our own card
 * loops back. A bad checksum from the host is ignored, as a module does.
 *
 * Faults come as lines on the control FIFO (--control), or from --schedule
 * ("2s:beams off; 5s:beams on"): garble N, reset [ms], beams off|on, weak on|off,
 * card out|in, suppress on|off, silence on|off, battery on|off, permission off|on,
 * fki-error N, gate S (the card's interval runs S more seconds), unplug, plug, inject
 * FROM HEX, stats; garble N sends N garbled beam reports at once, garble-next N garbles
 * the next N lines whatever they are. Everything is logged to stdout,
 * one line each, so a test can count what happened.
 */

#define MAX_EVENTS 256
#define MAX_INBOX 64
#define LINE 8192

enum proto { BDS3, V21, V40 };
enum phase { BOOT, NO_TIME, READY };

struct ev {
        uint64_t at;
        int kind; /* 0: bytes to the host; 1: the card's interval starts; 2: deliver an inbound;
                   * 3: onto the satellite; 4: a control command */
        char *text;
        size_t len; /* of text, for kind 0 (binary 4.0 frames hold NULs) */
};

struct opt {
        enum proto proto;
        uint32_t card;
        unsigned cls, interval, level;
        bool encrypted;
        const char *link, *control, *schedule;
        int udp, peer[4];
        unsigned npeer;
        unsigned boot_ms, notime_ms, fki_ms, latency_ms, min_s2c, s2c_lo, s2c_hi;
        uint64_t seed;
};

static struct opt o = { .proto = BDS3, .card = 4238473, .cls = 3, .interval = 60, .level = 2,
                        .boot_ms = 1500, .notime_ms = 1000, .fki_ms = 300, .latency_ms = 2000,
                        .min_s2c = 40, .s2c_lo = 30, .s2c_hi = 52, .seed = 1 };

static int master = -1, slave = -1, udp = -1, ctl = -1;
static char inbuf[LINE], ctlbuf[1024];
static size_t inlen, ctllen;
static enum phase phase;
static uint64_t phase_at, next_beam_at, gate_until, t0;
static bool card_in = true, beams_on = true, weak, suppressed, silenced, battery, permitted = true, unplugged;
static bool bsi_on, sending;
static unsigned glzk_every; /* 4.0: $GLJC's period, 0 = off */
static unsigned bsi_every = 1, garble_left, fki_error_left, garble_mode;
static int s2c[4] = { 48, 45, 42, 50 };
static const int beam_id[4] = { 2, 4, 11, 16 };
static int power[10];
static struct ev evs[MAX_EVENTS];
static size_t nev;
static char *inbox[MAX_INBOX];
static size_t ninbox;
static uint64_t rng;
static volatile sig_atomic_t stop;
static struct {
        unsigned long lines_out, lines_in, bad_in, sends, accepted, refused[16], delivered, from_sat, held, garbled, dropped;
} st;

static uint64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t rnd(void)
{
        uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
        va_list ap;
        printf("[%7.3f] ", (double)(now_ms() - t0) / 1000.0);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

static void utc_hms(char *out, size_t n)
{
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(out, n, "%02d%02d%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- the pty ------------------------------------------------------------------ */

static void pty_close(void)
{
        if (master >= 0)
                close(master);
        if (slave >= 0)
                close(slave);
        master = slave = -1;
        if (o.link)
                unlink(o.link);
}

static int pty_open(void)
{
        master = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
                return -1;
        const char *name = ptsname(master);
        if (!name)
                return -1;
        /* We hold the slave open too, so the line stays up while the driver reopens. */
        slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0)
                return -1;
        struct termios t;
        if (tcgetattr(slave, &t) == 0) {
                cfmakeraw(&t);
                cfsetspeed(&t, B115200);
                tcsetattr(slave, TCSANOW, &t);
        }
        if (o.link) {
                char tmp[512];
                snprintf(tmp, sizeof(tmp), "%s.new", o.link);
                unlink(tmp);
                if (symlink(name, tmp) < 0 || rename(tmp, o.link) < 0)
                        return -1;
        }
        logf_("pty %s%s%s", name, o.link ? " linked at " : "", o.link ? o.link : "");
        return 0;
}

/* Writes one line to the host, garbled if a fault asks for it. A full pty (nobody
 * reading) drops the line, as a UART does. */
static void emit_raw(const char *line, size_t n)
{
        char g[LINE + 32];
        if (master < 0)
                return;
        if (garble_left) {
                garble_left--;
                st.garbled++;
                /* A cut line is always followed by one that lost its checksum: the
                 * driver then counts each garbled line once. */
                switch (garble_mode++ % 4) {
                case 0: /* one byte hit: the checksum no longer matches */
                        memcpy(g, line, n);
                        g[n / 2] ^= 0x01;
                        line = g;
                        break;
                case 2: /* cut short: the next line runs into it */
                        n = n / 2;
                        break;
                case 1: /* noise before it, on the same line */
                        memcpy(g, "\x00\xff\x13zz", 5);
                        memcpy(g + 5, line, n);
                        line = g;
                        n += 5;
                        break;
                case 3: /* the checksum lost */
                        memcpy(g, line, n);
                        g[n - 5] = '\r';
                        g[n - 4] = '\n';
                        n -= 3;
                        line = g;
                        break;
                }
        }
        ssize_t w = write(master, line, n);
        if (w != (ssize_t)n)
                st.dropped++;
        else
                st.lines_out++;
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
        char buf[LINE];
        va_list ap;
        va_start(ap, fmt);
        int n = rdss_vformat(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > 0)
                emit_raw(buf, (size_t)n);
}

static void schedule_bytes(uint64_t at, int kind, const void *data, size_t len)
{
        if (nev == MAX_EVENTS) {
                logf_("event queue full; dropped");
                return;
        }
        char *copy = NULL;
        if (data) {
                copy = malloc(len + 1);
                memcpy(copy, data, len);
                copy[len] = '\0';
        }
        evs[nev++] = (struct ev){ .at = at, .kind = kind, .text = copy, .len = len };
}

static void schedule(uint64_t at, int kind, const char *text)
{
        schedule_bytes(at, kind, text, text ? strlen(text) : 0);
}

/* A binary 4.0 frame, now or after delay_ms. */
static void bin_frame(uint64_t delay_ms, const char *id, uint32_t addr, const uint8_t *body, size_t blen)
{
        uint8_t f[RDSS40_MAX];
        ssize_t n = rdss40_build(f, sizeof(f), id, addr, body, blen);
        if (n < 0)
                return;
        if (delay_ms)
                schedule_bytes(now_ms() + delay_ms, 0, f, (size_t)n);
        else
                emit_raw((const char *)f, (size_t)n);
}

static void later_line(uint64_t delay_ms, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void later_line(uint64_t delay_ms, const char *fmt, ...)
{
        char buf[LINE];
        va_list ap;
        va_start(ap, fmt);
        int n = rdss_vformat(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > 0)
                schedule(now_ms() + delay_ms, 0, buf);
}

/* ---- the module ---------------------------------------------------------------- */

static void boot(unsigned ms)
{
        phase = BOOT;
        phase_at = now_ms() + ms;
        bsi_on = false;
        glzk_every = 0;
        sending = false;
        /* Lines the module had queued for the host die with it. */
        size_t k = 0;
        for (size_t i = 0; i < nev; i++) {
                if (evs[i].kind == 0 || evs[i].kind == 1) {
                        free(evs[i].text);
                        continue;
                }
                evs[k++] = evs[i];
        }
        nev = k;
}

/* Each beam walks around its own mean (a clear sky's S2C_d), pulled back by 1 dB-Hz a
 * step once 3 away from it: within 30..52 as the notes say, and the best of the four
 * stays above 40. A walk with no pull drifts all four below 40 within minutes, which
 * is a model of nothing but a flapping link; dropouts are faults (beams off, weak on). */
static const int s2c_mean[4] = { 48, 45, 42, 50 };

static void step_beams(void)
{
        for (int i = 0; i < 4; i++) {
                int d = s2c[i] + (int)(rnd() % 5) - 2;
                if (d - s2c_mean[i] >= 3)
                        d--;
                else if (s2c_mean[i] - d >= 3)
                        d++;
                int lo = weak ? (int)o.s2c_lo : (int)o.s2c_lo, hi = weak ? (int)o.min_s2c - 1 : (int)o.s2c_hi;
                if (d < lo)
                        d = lo;
                if (d > hi)
                        d = hi;
                s2c[i] = d;
        }
        for (int i = 0; i < 10; i++) {
                int p = power[i] + (int)(rnd() % 3) - 1;
                int hi = weak ? 1 : 4, lo = i < 3 && !weak ? 2 : 0;
                power[i] = p < lo ? lo : p > hi ? hi : p;
        }
}

static void beam_report(void)
{
        char b[512], hms[16];
        size_t n = 0;
        step_beams();
        if (o.proto == BDS3) {
                if (phase == NO_TIME) {
                        emit("BDPWI,000000.00,00,00");
                        return;
                }
                utc_hms(hms, sizeof(hms));
                if (!beams_on) {
                        emit("BDPWI,%s.00,00,00", hms);
                        return;
                }
                for (int i = 0; i < 4; i++)
                        n += (size_t)snprintf(b + n, sizeof(b) - n, ",%d,%d,%d,0", beam_id[i], s2c[i], s2c[i] - 7);
                emit("BDPWI,%s.00,00,04%s", hms, b);
                return;
        }
        if (o.proto == V40) {
                uint8_t p[6];
                if (!glzk_every)
                        return;
                for (int i = 0; i < 6; i++)
                        p[i] = beams_on ? (uint8_t)power[i] : 0;
                bin_frame(0, "GLZK", card_in ? o.card : 0, p, 6);
                return;
        }
        if (!bsi_on)
                return;
        for (int i = 0; i < 10; i++)
                n += (size_t)snprintf(b + n, sizeof(b) - n, ",%d", beams_on ? power[i] : 0);
        emit("BDBSI,01,02%s", b);
}

static bool beam_ok(void)
{
        if (!beams_on)
                return false;
        for (int i = 0; i < (o.proto == BDS3 ? 4 : o.proto == V40 ? 6 : 10); i++)
                if (o.proto == BDS3 ? s2c[i] >= (int)o.min_s2c : power[i] >= 1)
                        return true;
        return false;
}

static unsigned max_bits(void)
{
        return o.proto != BDS3 ? rdss_v21_bits(o.level, o.encrypted) : rdss_bds3_bits(o.level);
}

static void answer_card(void)
{
        uint32_t id = card_in ? o.card : 0;
        if (o.proto == V40) {
                /* frame 0, broadcast id, user type, interval u16, level, encryption, subordinates */
                uint8_t b[11] = { 0, 0, 0, 0, (uint8_t)o.cls, (uint8_t)(o.interval >> 8), (uint8_t)o.interval,
                                  (uint8_t)o.level, o.encrypted, 0, 0 };
                if (!id)
                        memset(b, 0, sizeof(b));
                bin_frame(0, "ICXX", id, b, sizeof(b));
                return;
        }
        if (o.proto == BDS3) {
                if (!id)
                        emit("BDICP,0,0,0,0,0,N,0,N,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0");
                else
                        emit("BDICP,%07u,0,0,%u,0,N,2,N,1,0,0,3,1,%u,%u,0,0,0,0,0,0,0,0", id, o.cls, o.interval,
                             o.level == 5 ? 0 : o.level);
                return;
        }
        if (!id)
                emit("BDICI,0000000,00000000,0000000,0,0,0,N,0");
        else
                emit("BDICI,%07u,02097151,0000011,%u,%u,%u,%c,000", id, o.cls, o.interval, o.level,
                     o.encrypted ? 'E' : 'N');
}

/* One refusal, in the dialect's form; returns 0 so a gate can end with it. */
static int refuse(unsigned code, unsigned wait_s)
{
        char hms[16];
        st.refused[code < 16 ? code : 15]++;
        if (o.proto == V40) {
                uint8_t b[5] = { (uint8_t)code, 'T', 'X', 'S', 'Q' };
                if (code == 4)
                        b[1] = b[2] = b[3] = 0, b[4] = (uint8_t)(wait_s > 255 ? 255 : wait_s);
                bin_frame(o.fki_ms, "FKXX", o.card, b, 5);
        } else if (o.proto == BDS3) {
                utc_hms(hms, sizeof(hms));
                later_line(o.fki_ms, "BDFKI,%s,TCQ,N,%u,%u", hms, code, wait_s);
        } else {
                later_line(o.fki_ms, "BDFKI,TXA,N,Y,%u,%02u%02u", code, wait_s / 60 % 100, wait_s % 60);
        }
        logf_("refused code %u wait %u", code, wait_s);
        return 0;
}

/* Bits the content takes: what the gates measure against the level. */
static unsigned content_bits(unsigned coding, const char *hex)
{
        size_t n = strlen(hex);
        bool v21 = o.proto == V21;
        if ((v21 && coding == 1) || (!v21 && coding == 2))
                return (unsigned)(n * 4); /* code: a nibble each */
        if ((v21 && coding == 2) || (!v21 && coding == 3))
                return (unsigned)(n * 4); /* mixed: A4 marker + bytes */
        return (unsigned)(n * 4);         /* 汉字: 16 bits per character, 4 hex digits */
}

static int on_send(const char *dest_s, unsigned coding, const char *hex)
{
        uint32_t dest;
        uint64_t now = now_ms();
        st.sends++;
        if (rdss_parse_card(dest_s, &dest) < 0) {
                logf_("bad destination %s", dest_s);
                return -1;
        }
        if (o.proto != V21 && fki_error_left) {
                fki_error_left--;
                return refuse(o.proto == V40 ? 6 : 11, 0);
        }
        /* 4.0 flags [B12]: 1 failed, 2 signal not locked, 3 battery low, 4 interval, 6
         * CRC error, 7 suppression; no card and silence have no flag of their own. */
        if (!card_in) {
                return refuse(o.proto == BDS3 ? 5 : o.proto == V40 ? 1 : 0, 0);
        }
        if (sending) {
                return refuse(o.proto == BDS3 ? 1 : o.proto == V40 ? 4 : 0, 1);
        }
        if (now < gate_until) {
                unsigned left = (unsigned)((gate_until - now + 999) / 1000);
                return refuse(o.proto == BDS3 ? 1 : o.proto == V40 ? 4 : 0, left);
        }
        if (o.proto == V40) {
                if (suppressed || silenced)
                        return refuse(7, 0);
                if (battery)
                        return refuse(3, 0);
                if (!permitted)
                        return refuse(1, 0);
                if (!beam_ok())
                        return refuse(2, 0);
        } else if (o.proto == BDS3) {
                if (suppressed)
                        return refuse(2, 0);
                if (silenced)
                        return refuse(3, 0);
                if (!permitted)
                        return refuse(6, 0);
                if (!beam_ok())
                        return refuse(4, 0);
        } else {
                if (suppressed)
                        return refuse(1, 0);
                if (battery)
                        return refuse(2, 0);
                if (silenced)
                        return refuse(3, 0);
                if (!beam_ok())
                        return refuse(0, 0);
        }
        if (content_bits(coding, hex) > max_bits()) {
                logf_("content of %u bits over the level's %u", content_bits(coding, hex), max_bits());
                return refuse(o.proto == BDS3 ? 6 : o.proto == V40 ? 1 : 0, 0);
        }
        char hms[16], msg[LINE];
        utc_hms(hms, sizeof(hms));
        sending = true;
        if (o.proto == V40)
                bin_frame(o.fki_ms, "FKXX", o.card, (const uint8_t *)"\0TXSQ", 5);
        else if (o.proto == BDS3)
                later_line(o.fki_ms, "BDFKI,%s,TCQ,Y,0,0", hms);
        else
                later_line(o.fki_ms, "BDFKI,TXA,Y,Y,0,%02u%02u", o.interval / 60 % 100, o.interval % 60);
        schedule(now + o.fki_ms, 1, NULL);
        snprintf(msg, sizeof(msg), "MSG %u %u %u %s", o.card, dest, coding, hex);
        schedule(now + o.fki_ms, 3, msg);
        st.accepted++;
        logf_("accepted %zu hex digits to %07u", strlen(hex), dest);
        return 0;
}

static int on_host_line(char *line, size_t n)
{
        static struct rdss_sentence s;
        char *d = memchr(line, '$', n);
        if (!d)
                return -1;
        n -= (size_t)(d - line);
        int r = rdss_parse(d, n, &s);
        if (r < 0) {
                st.bad_in++;
                logf_("ignored a line from the host: %s", rdss_strerror(r));
                return -1;
        }
        st.lines_in++;
        if (phase == BOOT)
                return 0; /* not listening yet */
        if (o.proto == BDS3 && strcmp(s.id, "ICR") == 0)
                answer_card();
        else if (o.proto == V21 && strcmp(s.id, "ICA") == 0)
                answer_card();
        else if (o.proto == V21 && strcmp(s.id, "RMO") == 0 && s.nf >= 2) {
                unsigned every = s.nf >= 3 ? (unsigned)atoi(s.f[2]) : 1;
                if ((strcmp(s.f[0], "BSI") == 0 && strcmp(s.f[1], "2") == 0) || strcmp(s.f[1], "4") == 0) {
                        bsi_on = true;
                        bsi_every = every ? every : 1;
                } else if ((strcmp(s.f[0], "BSI") == 0 && strcmp(s.f[1], "1") == 0) || strcmp(s.f[1], "3") == 0) {
                        bsi_on = false;
                }
        } else if (o.proto == BDS3 && strcmp(s.id, "TCQ") == 0 && s.nf == 6) {
                if (phase != READY)
                        return refuse(4, 0);
                return on_send(s.f[0], (unsigned)atoi(s.f[3]), s.f[4]);
        } else if (o.proto == V21 && strcmp(s.id, "TXA") == 0 && s.nf == 4) {
                return on_send(s.f[0], (unsigned)atoi(s.f[2]), s.f[3]);
        } else {
                logf_("unknown sentence $%s%s", s.talker, s.id);
        }
        return 0;
}

/* The 4.0 host frames in inbuf: $ICJC, $GLJC, $TXSQ; a bad XOR is ignored, as a
 * module does. */
static void on_host_bytes40(void)
{
        size_t off = 0;
        while (off < inlen) {
                struct rdss40 f;
                const uint8_t *p = (const uint8_t *)inbuf + off;
                ssize_t r = p[0] == '$' ? rdss40_parse(p, inlen - off, &f) : RDSS_E_FORMAT;
                if (r == 0)
                        break;
                if (r < 0) {
                        st.bad_in++;
                        off++;
                        continue;
                }
                off += (size_t)r;
                st.lines_in++;
                if (phase == BOOT)
                        continue;
                if (strcmp(f.id, "ICJC") == 0)
                        answer_card();
                else if (strcmp(f.id, "GLJC") == 0 && f.blen >= 1)
                        glzk_every = f.body[0];
                else if (strcmp(f.id, "TXSQ") == 0 && f.blen >= 7) {
                        char dest[16], hex[LINE];
                        const uint8_t *b = f.body;
                        snprintf(dest, sizeof(dest), "%u", (unsigned)b[1] << 16 | (unsigned)b[2] << 8 | b[3]);
                        size_t bytes = ((size_t)b[4] << 8 | b[5]) / 8;
                        if (7 + bytes > f.blen)
                                bytes = f.blen - 7;
                        rdss_hex_encode(hex, b + 7, bytes);
                        on_send(dest, 2, hex);
                } else
                        logf_("unknown frame $%s", f.id);
        }
        memmove(inbuf, inbuf + off, inlen - off);
        inlen -= off;
}

/* ---- the satellite -------------------------------------------------------------- */

static void sat_send(const char *msg)
{
        struct sockaddr_in a = { .sin_family = AF_INET,
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        uint32_t from, to;
        if (sscanf(msg, "MSG %u %u", &from, &to) == 2 && to == o.card) {
                schedule(now_ms() + o.latency_ms, 2, msg); /* to ourselves */
                return;
        }
        for (unsigned i = 0; i < o.npeer; i++) {
                a.sin_port = htons((uint16_t)o.peer[i]);
                if (o.peer[i] > 0 && sendto(udp, msg, strlen(msg), 0, (struct sockaddr *)&a, sizeof(a)) < 0)
                        logf_("sendto: %s", strerror(errno));
        }
}

static void deliver(const char *msg)
{
        uint32_t from, to;
        unsigned coding;
        char hex[LINE], hms[16];
        if (sscanf(msg, "MSG %u %u %u %8000s", &from, &to, &coding, hex) != 4)
                return;
        if (!card_in || phase != READY || master < 0) {
                if (ninbox < MAX_INBOX) {
                        inbox[ninbox++] = strdup(msg);
                        st.held++;
                }
                return;
        }
        utc_hms(hms, sizeof(hms));
        st.delivered++;
        if (o.proto == V40) {
                /* class (bit 5: code), sender u24, hour, minute, bits u16, data, CRC flag */
                static uint8_t b[RDSS40_MAX];
                time_t t = time(NULL);
                struct tm tm;
                gmtime_r(&t, &tm);
                b[0] = 0x60;
                b[1] = (uint8_t)(from >> 16), b[2] = (uint8_t)(from >> 8), b[3] = (uint8_t)from;
                b[4] = (uint8_t)tm.tm_hour, b[5] = (uint8_t)tm.tm_min;
                ssize_t n = rdss_hex_decode(b + 8, sizeof(b) - 32, hex);
                if (n < 0)
                        return;
                b[6] = (uint8_t)((n * 8) >> 8), b[7] = (uint8_t)(n * 8);
                b[8 + n] = 0;
                bin_frame(0, "TXXX", o.card, b, 9 + (size_t)n);
        } else if (o.proto == BDS3)
                emit("BDTCI,%07u,%07u,2,%s,%u,0,%s", from, to, hms, coding, hex);
        else
                emit("BDTXR,1,%07u,%u,,%s", from, coding, hex);
        logf_("delivered %zu hex digits from %07u", strlen(hex), from);
}

static void on_udp(void)
{
        char buf[LINE];
        for (;;) {
                ssize_t n = recv(udp, buf, sizeof(buf) - 1, MSG_DONTWAIT);
                if (n <= 0)
                        return;
                buf[n] = '\0';
                uint32_t from, to;
                if (sscanf(buf, "MSG %u %u", &from, &to) != 2 || to != o.card)
                        continue;
                st.from_sat++;
                schedule(now_ms() + o.latency_ms, 2, buf);
        }
}

/* ---- faults ---------------------------------------------------------------------- */

static void stats(void)
{
        logf_("stats: out %lu in %lu bad_in %lu sends %lu accepted %lu refused 1:%lu 2:%lu 3:%lu 4:%lu 5:%lu 6:%lu 11:%lu "
              "0:%lu delivered %lu from_sat %lu held %lu garbled %lu dropped %lu",
              st.lines_out, st.lines_in, st.bad_in, st.sends, st.accepted, st.refused[1], st.refused[2], st.refused[3],
              st.refused[4], st.refused[5], st.refused[6], st.refused[11], st.refused[0], st.delivered, st.from_sat,
              st.held, st.garbled, st.dropped);
}

static bool onoff(const char *a, bool *v)
{
        if (strcmp(a, "on") == 0 || strcmp(a, "in") == 0)
                *v = true;
        else if (strcmp(a, "off") == 0 || strcmp(a, "out") == 0)
                *v = false;
        else
                return false;
        return true;
}

static void command(char *c)
{
        char w[32] = "", a[LINE] = "", b[LINE] = "";
        int n = sscanf(c, "%31s %8000s %8000s", w, a, b);
        if (n < 1)
                return;
        bool ok = true;
        if (strcmp(w, "garble") == 0) {
                /* N garbled beam reports at once (a burst of line noise). */
                unsigned k = n > 1 ? (unsigned)atoi(a) : 1;
                garble_left += k;
                for (unsigned i = 0; i < k && phase != BOOT; i++)
                        beam_report();
        } else if (strcmp(w, "garble-next") == 0)
                garble_left += n > 1 ? (unsigned)atoi(a) : 1;
        else if (strcmp(w, "gate") == 0)
                gate_until = now_ms() + (uint64_t)atoi(a) * 1000u;
        else if (strcmp(w, "reset") == 0)
                boot(n > 1 ? (unsigned)atoi(a) : o.boot_ms);
        else if (strcmp(w, "beams") == 0)
                ok = onoff(a, &beams_on);
        else if (strcmp(w, "weak") == 0) {
                ok = onoff(a, &weak);
                if (!weak) /* the obstruction gone: the beams are back at once */
                        memcpy(s2c, s2c_mean, sizeof(s2c));
                step_beams(); /* at once, not at the next report */
        }
        else if (strcmp(w, "card") == 0) {
                ok = onoff(a, &card_in);
                if (card_in)
                        for (size_t i = 0, k = ninbox; i < k; i++) {
                                schedule(now_ms() + 100, 2, inbox[i]);
                                free(inbox[i]);
                                ninbox--;
                        }
        } else if (strcmp(w, "suppress") == 0)
                ok = onoff(a, &suppressed);
        else if (strcmp(w, "silence") == 0)
                ok = onoff(a, &silenced);
        else if (strcmp(w, "battery") == 0)
                ok = onoff(a, &battery);
        else if (strcmp(w, "permission") == 0)
                ok = onoff(a, &permitted);
        else if (strcmp(w, "fki-error") == 0)
                fki_error_left += n > 1 ? (unsigned)atoi(a) : 1;
        else if (strcmp(w, "unplug") == 0) {
                pty_close();
                unplugged = true;
        } else if (strcmp(w, "plug") == 0) {
                if (master < 0 && pty_open() < 0)
                        logf_("pty: %s", strerror(errno));
                unplugged = false;
                boot(o.boot_ms);
        } else if (strcmp(w, "inject") == 0 && n == 3) {
                char msg[LINE + 64];
                snprintf(msg, sizeof(msg), "MSG %s %u %u %s", a, o.card, o.proto == BDS3 ? 3u : 2u, b);
                schedule(now_ms(), 2, msg);
        } else if (strcmp(w, "stats") == 0)
                stats();
        else
                ok = false;
        logf_("control: %s%s", c, ok ? "" : " (not understood)");
}

/* "2s:beams off; 5.5s:card out": each item's command runs that long after start. */
static void load_schedule(const char *sched)
{
        char *copy = strdup(sched), *save = NULL;
        for (char *it = strtok_r(copy, ";", &save); it; it = strtok_r(NULL, ";", &save)) {
                char *colon = strchr(it, ':');
                if (!colon)
                        continue;
                *colon = '\0';
                double at = strtod(it, NULL);
                schedule(t0 + (uint64_t)(at * 1000.0), 4, colon + 1);
        }
        free(copy);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void run_events(uint64_t now)
{
        for (size_t i = 0; i < nev;) {
                if (evs[i].at > now) {
                        i++;
                        continue;
                }
                struct ev e = evs[i];
                evs[i] = evs[--nev];
                switch (e.kind) {
                case 0:
                        if (phase != BOOT)
                                emit_raw(e.text, e.len);
                        break;
                case 1:
                        sending = false;
                        gate_until = now + (uint64_t)o.interval * 1000u;
                        break;
                case 2:
                        deliver(e.text);
                        break;
                case 3:
                        sat_send(e.text);
                        break;
                case 4: {
                        char *c = e.text;
                        while (*c == ' ')
                                c++;
                        command(c);
                        break;
                }
                }
                free(e.text);
        }
}

static void on_stop(int sig)
{
        (void)sig;
        stop = 1;
}

static void usage(void)
{
        fprintf(stderr,
                "usage: beidou_sim [--protocol bds3|2.1|4.0] [--card N] [--class N] [--interval S] [--level L] [--encrypted]\n"
                "                  [--link PATH] [--udp PORT] [--peer PORT] [--control FIFO] [--schedule 'T:CMD; ...']\n"
                "                  [--boot-ms MS] [--notime-ms MS] [--fki-ms MS] [--latency-ms MS] [--min-s2c N] [--seed N]\n");
        exit(2);
}

int main(int argc, char **argv)
{
        static const struct option lo[] = {
                { "protocol", 1, 0, 'p' }, { "card", 1, 0, 'c' },       { "class", 1, 0, 'k' },     { "interval", 1, 0, 'i' },
                { "level", 1, 0, 'l' },    { "encrypted", 0, 0, 'e' },  { "link", 1, 0, 'L' },      { "udp", 1, 0, 'u' },
                { "peer", 1, 0, 'P' },     { "control", 1, 0, 'C' },    { "schedule", 1, 0, 'S' },  { "boot-ms", 1, 0, 'b' },
                { "notime-ms", 1, 0, 'n' }, { "fki-ms", 1, 0, 'f' },    { "latency-ms", 1, 0, 'a' }, { "min-s2c", 1, 0, 'm' },
                { "seed", 1, 0, 's' },     { 0, 0, 0, 0 },
        };
        int ch;
        while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
                switch (ch) {
                case 'p':
                        if (strcmp(optarg, "bds3") == 0)
                                o.proto = BDS3;
                        else if (strcmp(optarg, "2.1") == 0)
                                o.proto = V21;
                        else if (strcmp(optarg, "4.0") == 0)
                                o.proto = V40;
                        else
                                usage();
                        break;
                case 'c': o.card = (uint32_t)strtoul(optarg, NULL, 10); break;
                case 'k': o.cls = (unsigned)atoi(optarg); break;
                case 'i': o.interval = (unsigned)atoi(optarg); break;
                case 'l': o.level = (unsigned)atoi(optarg); break;
                case 'e': o.encrypted = true; break;
                case 'L': o.link = optarg; break;
                case 'u': o.udp = atoi(optarg); break;
                case 'P':
                        if (o.npeer < 4)
                                o.peer[o.npeer++] = atoi(optarg);
                        break;
                case 'C': o.control = optarg; break;
                case 'S': o.schedule = optarg; break;
                case 'b': o.boot_ms = (unsigned)atoi(optarg); break;
                case 'n': o.notime_ms = (unsigned)atoi(optarg); break;
                case 'f': o.fki_ms = (unsigned)atoi(optarg); break;
                case 'a': o.latency_ms = (unsigned)atoi(optarg); break;
                case 'm': o.min_s2c = (unsigned)atoi(optarg); break;
                case 's': o.seed = strtoull(optarg, NULL, 10); break;
                default: usage();
                }
        }
        if (optind != argc)
                usage();
        if (o.card == 0)
                card_in = false;
        rng = o.seed;
        t0 = now_ms();
        signal(SIGPIPE, SIG_IGN);
        struct sigaction sa = { .sa_handler = on_stop };
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        for (int i = 0; i < 10; i++)
                power[i] = i < 3 ? 3 : (int)(rnd() % 3);

        if (pty_open() < 0) {
                fprintf(stderr, "beidou_sim: pty: %s\n", strerror(errno));
                return 1;
        }
        if (o.udp > 0) {
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)o.udp),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                if (udp < 0 || bind(udp, (struct sockaddr *)&a, sizeof(a)) < 0) {
                        fprintf(stderr, "beidou_sim: udp %d: %s\n", o.udp, strerror(errno));
                        return 1;
                }
        }
        if (o.control) {
                unlink(o.control);
                if (mkfifo(o.control, 0600) < 0 || (ctl = open(o.control, O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0) {
                        fprintf(stderr, "beidou_sim: control %s: %s\n", o.control, strerror(errno));
                        return 1;
                }
        }
        if (o.schedule)
                load_schedule(o.schedule);
        logf_("card %07u (%s), class %u, interval %u s, level %u (%u bits), udp %d -> %d", o.card,
              o.proto == BDS3 ? "bds3" : o.proto == V21 ? "2.1" : "4.0", o.cls, o.interval, o.level, max_bits(), o.udp, o.npeer ? o.peer[0] : 0);
        boot(o.boot_ms);

        while (!stop) {
                uint64_t now = now_ms();
                if (phase == BOOT && now >= phase_at) {
                        phase = o.proto == BDS3 ? NO_TIME : READY;
                        phase_at = now + o.notime_ms;
                        next_beam_at = now;
                        logf_("booted");
                }
                if (phase == NO_TIME && now >= phase_at) {
                        phase = READY;
                        logf_("time acquired");
                }
                if (phase != BOOT && now >= next_beam_at) {
                        beam_report();
                        next_beam_at = now + (o.proto == BDS3 ? 1000u : o.proto == V40 ? 1000u * (glzk_every ? glzk_every : 1) : 1000u * bsi_every);
                }
                run_events(now);

                struct pollfd p[3] = { { .fd = master, .events = POLLIN }, { .fd = udp, .events = POLLIN },
                                       { .fd = ctl, .events = POLLIN } };
                int r = poll(p, 3, 20);
                if (r <= 0)
                        continue;
                if (master >= 0 && (p[0].revents & POLLIN) && o.proto == V40) {
                        ssize_t n = read(master, inbuf + inlen, sizeof(inbuf) - inlen);
                        if (n > 0) {
                                inlen += (size_t)n;
                                on_host_bytes40();
                        }
                } else if (master >= 0 && (p[0].revents & POLLIN)) {
                        ssize_t n = read(master, inbuf + inlen, sizeof(inbuf) - inlen);
                        if (n > 0) {
                                inlen += (size_t)n;
                                char *nl;
                                while ((nl = memchr(inbuf, '\n', inlen))) {
                                        size_t len = (size_t)(nl - inbuf) + 1;
                                        on_host_line(inbuf, len);
                                        memmove(inbuf, inbuf + len, inlen - len);
                                        inlen -= len;
                                }
                                if (inlen == sizeof(inbuf))
                                        inlen = 0;
                        }
                }
                if (udp >= 0 && (p[1].revents & POLLIN))
                        on_udp();
                if (ctl >= 0 && (p[2].revents & POLLIN)) {
                        ssize_t n = read(ctl, ctlbuf + ctllen, sizeof(ctlbuf) - 1 - ctllen);
                        if (n > 0) {
                                ctllen += (size_t)n;
                                char *nl;
                                while ((nl = memchr(ctlbuf, '\n', ctllen))) {
                                        *nl = '\0';
                                        command(ctlbuf);
                                        size_t len = (size_t)(nl - ctlbuf) + 1;
                                        memmove(ctlbuf, ctlbuf + len, ctllen - len);
                                        ctllen -= len;
                                }
                                if (ctllen == sizeof(ctlbuf) - 1)
                                        ctllen = 0;
                        }
                }
        }
        stats();
        pty_close();
        if (o.control)
                unlink(o.control);
        return 0;
}

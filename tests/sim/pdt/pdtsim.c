/* SPDX-License-Identifier: MIT */
/* pdtsim: two or three Hytera PDT/DMR radios on one half-duplex channel, each speaking HDAP (TMP, RRS) to its PC over UDP or in HRNP on a pty. */
#include <arpa/inet.h>
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

#include "plugins/pdt/hdap.h"
#include "plugins/pdt/hrnp.h"

/*
 * Each radio binds its TMP and RRS ports on its own loopback address (--radio
 * NAME=RADIO_IP,PC_IP,ID) and talks to the PC at PC_IP on the same ports, as a Hytera
 * radio does on its USB network (equipment.md §3.1, §4.3):
 *
 * - RRS: the radio registers (0x03) at start and again every valid_time from the PC's
 *   ack (every 2 s until acked); it answers the PC's online check (0x02 -> 0x82).
 * - TMP: a private message (0xA1) from the PC is checked (checksum, 0x03 end, length),
 *   refused with result 3 above --text-max bytes of text, then put on the channel. The
 *   channel is half duplex and shared by both radios: a message while another is on the
 *   air (or during a third party's `busy`) gets result 4 at once. Airtime is
 *   --preamble + ceil(bytes/18) x 60 ms (rate 3/4 data blocks). After it, the far radio
 *   (its id is the destination) forwards the message to its PC, and the sender's PC gets
 *   0xA2 with result 0, or 8 when the far radio is off.
 *
 * A radio given as --hrnp NAME=LINK,ID speaks to its PC on a pty instead (the master
 * here, the slave reached through the symlink LINK), every PDU inside an HRNP packet
 * (plugins/pdt/hrnp.h): it accepts the PC's connect (answering nothing before one),
 * acks each data packet, closes on a close, and registers once connected. A packet with
 * a bad checksum or header is dropped and counted, as is data before a connect.
 *
 * Faults over UDP on 127.0.0.1:--control, one command a datagram, answered:
 *   stats | fail NAME R [R...] (results of NAME's next messages) | busy MS |
 *   power NAME 0|1 | garble NAME N (N bad PDUs, or on HRNP bad packets, to NAME's
 *   PC) | text NAME STRING (a person's message from the far radio) |
 *   reset NAME MS (the radio reboots: silent for MS, the connection and registration
 *   forgotten, two bytes of boot noise on the line when it comes back)
 */

#define NRADIO 3
#define NEV 128

struct radio {
        char name[16];
        struct in_addr ip, pc;
        uint32_t id;
        int tmp_fd, rrs_fd;
        bool on, registered;
        uint64_t next_reg_us;
        int fail[64];
        unsigned nfail;
        unsigned long msgs, delivered, busy, results[16], bad, checks, regs, acks_from_pc, garbled;

        /* --hrnp */
        bool hrnp, connected;
        char link[256];
        int mfd, sfd;
        uint16_t pn;
        struct hrnp_rx rx;
        uint64_t reset_until;
        unsigned long connects, hrnp_bad, unconnected, data_acks, resets;
};

enum ev_type { EV_DELIVER };

struct event {
        bool used;
        uint64_t due;
        struct radio *from;
        int result;
        uint8_t pdu[HDAP_MAX];
        size_t len;
        uint32_t req, dst, src;
};

static struct radio radios[NRADIO];
static unsigned nradios;
static struct event evs[NEV];
static uint16_t tmp_port, rrs_port;
static uint64_t preamble_us = 300000, block_us = 60000, busy_until, reg_retry_us = 2000000;
static size_t text_max = 67;
static int ctl_fd = -1;
static volatile sig_atomic_t stop;

static uint64_t now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void say(const struct radio *r, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        printf("pdtsim: %.3f %s: ", (double)(now_us() % 1000000000ull) / 1e6, r ? r->name : "-");
        vprintf(fmt, ap);
        putchar('\n');
        fflush(stdout);
        va_end(ap);
}

static void hrnp_out(struct radio *r, uint8_t opcode, uint16_t pn, const uint8_t *p, size_t n)
{
        uint8_t pkt[HRNP_MAX];
        int k = hrnp_encode(pkt, sizeof(pkt), opcode, HRNP_RADIO, HRNP_PC, pn, p, n);
        if (k > 0 && write(r->mfd, pkt, (size_t)k) != k)
                say(r, "pty write: %s", strerror(errno));
}

static void to_pc(struct radio *r, int fd, uint16_t port, const uint8_t *p, size_t n)
{
        if (r->hrnp) {
                if (r->connected)
                        hrnp_out(r, HRNP_DATA, r->pn++, p, n);
                return;
        }
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = r->pc };
        sendto(fd, p, n, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof(to));
}

static void ack_pc(struct radio *r, uint32_t req, uint32_t dst, uint32_t src, int result)
{
        uint8_t pdu[64];
        struct tmp_msg a = { .ack_wanted = false, .type = TMP_PRIVATE_ACK, .req = req, .dst = dst, .src = src,
                             .result = (uint8_t)result };
        int n = tmp_encode(pdu, sizeof(pdu), &a);
        r->results[result & 15]++;
        if (n > 0)
                to_pc(r, r->tmp_fd, tmp_port, pdu, (size_t)n);
}

static void rrs_send(struct radio *r, uint8_t type, const uint8_t *extra, size_t elen)
{
        uint8_t pl[16], pdu[32];
        uint32_t ip = radio_ip(10, r->id);
        pl[0] = (uint8_t)(ip >> 24), pl[1] = (uint8_t)(ip >> 16), pl[2] = (uint8_t)(ip >> 8), pl[3] = (uint8_t)ip;
        if (elen)
                memcpy(pl + 4, extra, elen);
        int n = hdap_encode(pdu, sizeof(pdu), HDAP_RRS, false, 0, type, pl, 4 + elen);
        if (n > 0)
                to_pc(r, r->rrs_fd, rrs_port, pdu, (size_t)n);
}

static struct radio *by_id(uint32_t id)
{
        for (unsigned i = 0; i < nradios; i++)
                if (radios[i].id == id)
                        return &radios[i];
        return NULL;
}

static struct radio *by_name(const char *name)
{
        for (unsigned i = 0; i < nradios; i++)
                if (strcmp(radios[i].name, name) == 0)
                        return &radios[i];
        return NULL;
}

static struct event *new_event(void)
{
        for (int i = 0; i < NEV; i++)
                if (!evs[i].used) {
                        memset(&evs[i], 0, sizeof(evs[i]));
                        evs[i].used = true;
                        return &evs[i];
                }
        return NULL;
}

/* A private message from r's PC. */
static void on_tmp(struct radio *r, const uint8_t *p, size_t n, uint64_t now)
{
        struct hdap h;
        struct tmp_msg m;
        const char *why;
        if (hdap_decode(p, n, &h, &why) < 0 || tmp_decode(&h, &m, &why) < 0) {
                r->bad++;
                say(r, "bad TMP PDU from the PC: %s", why);
                return;
        }
        if (m.type == TMP_PRIVATE_ACK) {
                r->acks_from_pc++;
                return;
        }
        r->msgs++;
        int forced = -1;
        if (r->nfail) {
                forced = r->fail[0];
                memmove(r->fail, r->fail + 1, --r->nfail * sizeof(r->fail[0]));
        }
        if (m.text_len > text_max) {
                say(r, "%zu B of text > %zu: invalid parameters", m.text_len, text_max);
                ack_pc(r, m.req, m.dst, m.src, 3);
                return;
        }
        if (forced == 3 || forced == 4 || forced == 5 || forced == 7 || forced == 11) {
                say(r, "message %u: result %d (injected)", m.req, forced);
                ack_pc(r, m.req, m.dst, m.src, forced);
                return;
        }
        if (busy_until > now) {
                r->busy++;
                say(r, "message %u: channel busy", m.req);
                ack_pc(r, m.req, m.dst, m.src, 4);
                return;
        }
        size_t bytes = n;
        uint64_t air = preamble_us + (bytes + 17) / 18 * block_us;
        busy_until = now + air;
        struct event *e = new_event();
        if (!e)
                return;
        e->due = now + air;
        e->from = r;
        e->result = forced;
        memcpy(e->pdu, p, n);
        e->len = n;
        e->req = m.req;
        e->dst = m.dst;
        e->src = m.src;
        say(r, "message %u: %zu B on the air for %llu ms", m.req, n, (unsigned long long)(air / 1000));
}

static void end_air(struct event *e)
{
        struct radio *r = e->from, *to = by_id(e->dst & 0xFFFFFF);
        int result = e->result >= 0 ? e->result : 0;
        if (result == 0 && (!to || !to->on || to == r))
                result = 8;
        if (result == 0) {
                to->delivered++;
                to_pc(to, to->tmp_fd, tmp_port, e->pdu, e->len);
        }
        say(r, "message %u: result %d", e->req, result);
        if (r->on)
                ack_pc(r, e->req, e->dst, e->src, result);
        e->used = false;
}

static void on_rrs(struct radio *r, const uint8_t *p, size_t n, uint64_t now)
{
        struct hdap h;
        const char *why;
        if (hdap_decode(p, n, &h, &why) < 0 || h.service != HDAP_RRS) {
                r->bad++;
                say(r, "bad RRS PDU from the PC");
                return;
        }
        if (h.op_lo == RRS_CHECK) {
                uint8_t ok = 0;
                r->checks++;
                rrs_send(r, RRS_CHECK_ACK, &ok, 1);
        } else if (h.op_lo == RRS_REGISTER_ACK && h.len == 9) {
                uint32_t vt = (uint32_t)h.payload[5] << 24 | (uint32_t)h.payload[6] << 16 | h.payload[7] << 8 | h.payload[8];
                if (!r->registered)
                        say(r, "registered, valid %u s", vt);
                r->registered = true;
                r->next_reg_us = now + (uint64_t)vt * 1000000u;
        }
}

static void power(struct radio *r, bool on, uint64_t now)
{
        r->on = on;
        r->connected = false;
        r->registered = false;
        r->next_reg_us = now;
        say(r, "power %s", on ? "on" : "off");
}

/* One of four broken things on the serial line, in turn: bytes outside any packet, a
 * bad HRNP checksum, an unknown HRNP version, and a good packet around a PDU with a bad
 * HDAP checksum. Each is one error to the PC (noise right after a broken packet would
 * be part of that packet's error: the deframer resyncs on the next 0x7E). */
static void garble_hrnp(struct radio *r, unsigned i)
{
        uint8_t pdu[64], pkt[128];
        struct tmp_msg m = { .ack_wanted = true, .type = TMP_PRIVATE, .req = 9000 + i, .dst = radio_ip(10, r->id),
                             .src = radio_ip(10, 1), .text = (const uint8_t *)"h\0i\0", .text_len = 4 };
        int k = tmp_encode(pdu, sizeof(pdu), &m);
        if (i % 4 == 3)
                pdu[k - 2] ^= 0x5A;
        int n = hrnp_encode(pkt, sizeof(pkt), HRNP_DATA, HRNP_RADIO, HRNP_PC, r->pn++, pdu, (size_t)k);
        switch (i % 4) {
        case 0: n = snprintf((char *)pkt, sizeof(pkt), "\x01\x02 line noise\r\n"); break;
        case 1: pkt[11] ^= 0x5A; break;
        case 2: pkt[1] = 0x09; break;
        }
        if (write(r->mfd, pkt, (size_t)n) != n)
                say(r, "pty write: %s", strerror(errno));
        r->garbled++;
}

static void garble(struct radio *r, unsigned n)
{
        for (unsigned i = 0; i < n && r->hrnp; i++)
                garble_hrnp(r, i);
        for (unsigned i = 0; i < n && !r->hrnp; i++) {
                uint8_t pdu[64];
                struct tmp_msg m = { .ack_wanted = true, .type = TMP_PRIVATE, .req = 9000 + i, .dst = radio_ip(10, r->id),
                                     .src = radio_ip(10, 1), .text = (const uint8_t *)"h\0i\0", .text_len = 4 };
                int k = tmp_encode(pdu, sizeof(pdu), &m);
                if (k <= 0)
                        continue;
                switch (i % 3) {
                case 0: pdu[k - 2] ^= 0x5A; break; /* checksum */
                case 1: pdu[k - 1] = 0x04; break;  /* end byte */
                case 2: k -= 3; break;             /* cut short */
                }
                to_pc(r, r->tmp_fd, tmp_port, pdu, (size_t)k);
                r->garbled++;
        }
}

/* A person's text typed on the far radio, to r's PC. */
static void text(struct radio *r, const char *s)
{
        uint8_t t[256], pdu[600];
        size_t n = 0;
        for (; *s && n + 2 <= sizeof(t); s++) {
                t[n++] = (uint8_t)*s;
                t[n++] = 0;
        }
        struct tmp_msg m = { .ack_wanted = true, .type = TMP_PRIVATE, .req = 7000, .dst = radio_ip(10, r->id),
                             .src = radio_ip(10, 4242), .text = t, .text_len = n };
        int k = tmp_encode(pdu, sizeof(pdu), &m);
        if (k > 0)
                to_pc(r, r->tmp_fd, tmp_port, pdu, (size_t)k);
}

static void control(uint64_t now)
{
        char req[512], ans[2048];
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(ctl_fd, req, sizeof(req) - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n <= 0)
                return;
        req[n] = '\0';
        char *save, *verb = strtok_r(req, " \n", &save), *arg = strtok_r(NULL, " \n", &save);
        struct radio *r = arg ? by_name(arg) : NULL;
        size_t o = 0;
        if (verb && strcmp(verb, "stats") == 0) {
                for (unsigned i = 0; i < nradios; i++) {
                        struct radio *x = &radios[i];
                        o += (size_t)snprintf(ans + o, sizeof(ans) - o,
                                              "%s msgs=%lu delivered=%lu busy=%lu ok=%lu noack=%lu bad=%lu checks=%lu "
                                              "acks_from_pc=%lu registered=%d connects=%lu hrnp_bad=%lu unconnected=%lu "
                                              "data_acks=%lu\n",
                                              x->name, x->msgs, x->delivered, x->busy, x->results[0], x->results[8],
                                              x->bad, x->checks, x->acks_from_pc, x->registered, x->connects,
                                              x->hrnp_bad, x->unconnected, x->data_acks);
                }
        } else if (verb && strcmp(verb, "busy") == 0 && arg) {
                busy_until = now + strtoull(arg, NULL, 10) * 1000;
                snprintf(ans, sizeof(ans), "ok");
        } else if (!verb || !r) {
                snprintf(ans, sizeof(ans), "error: expected VERB RADIO [ARGS]");
        } else if (strcmp(verb, "fail") == 0) {
                for (char *t; (t = strtok_r(NULL, " \n", &save)) && r->nfail < 64;)
                        r->fail[r->nfail++] = atoi(t);
                snprintf(ans, sizeof(ans), "ok");
        } else if (strcmp(verb, "power") == 0) {
                char *t = strtok_r(NULL, " \n", &save);
                power(r, !t || atoi(t) != 0, now);
                snprintf(ans, sizeof(ans), "ok");
        } else if (strcmp(verb, "reset") == 0) {
                char *t = strtok_r(NULL, " \n", &save);
                power(r, false, now);
                r->resets++;
                r->reset_until = now + (t ? strtoull(t, NULL, 10) : 1000) * 1000;
                snprintf(ans, sizeof(ans), "ok");
        } else if (strcmp(verb, "garble") == 0) {
                char *t = strtok_r(NULL, " \n", &save);
                garble(r, t ? (unsigned)atoi(t) : 1);
                snprintf(ans, sizeof(ans), "ok");
        } else if (strcmp(verb, "text") == 0) {
                char *t = strtok_r(NULL, "\n", &save);
                text(r, t ? t : "");
                snprintf(ans, sizeof(ans), "ok");
        } else {
                snprintf(ans, sizeof(ans), "error: unknown verb %s", verb);
        }
        sendto(ctl_fd, ans, strlen(ans), 0, (struct sockaddr *)&from, fl);
}

static int bind_udp(struct in_addr ip, uint16_t port)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = ip };
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                fprintf(stderr, "pdtsim: bind %s:%u: %s\n", inet_ntoa(ip), port, strerror(errno));
                exit(1);
        }
        return fd;
}

/* The radio's serial port: a pty whose slave the PC opens through r->link. The slave
 * stays open here too, set raw before the PC comes: with ECHO on, the line discipline
 * would echo the radio's own packets back, and a PC closing it would hang the master up. */
static void make_pty(struct radio *r)
{
        int fd = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0) {
                perror("pdtsim: posix_openpt");
                exit(1);
        }
        const char *slave = ptsname(fd);
        struct termios t;
        int sfd = open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (sfd < 0 || tcgetattr(sfd, &t) < 0) {
                perror("pdtsim: slave");
                exit(1);
        }
        cfmakeraw(&t);
        tcsetattr(sfd, TCSANOW, &t);
        unlink(r->link);
        if (symlink(slave, r->link) < 0) {
                perror("pdtsim: symlink");
                exit(1);
        }
        r->mfd = fd;
        r->sfd = sfd;
        hrnp_rx_reset(&r->rx);
        say(r, "HRNP on %s (%s)", r->link, slave);
}

static void on_hrnp(struct radio *r, const struct hrnp_pkt *k, uint64_t now)
{
        switch (k->opcode) {
        case HRNP_CONNECT:
                r->connects++;
                r->connected = true;
                r->pn = 1;
                r->registered = false;
                r->next_reg_us = now; /* a radio registers as soon as its PC is there */
                hrnp_out(r, HRNP_ACCEPT, 0, NULL, 0);
                say(r, "HRNP connect accepted");
                return;
        case HRNP_CLOSE:
                hrnp_out(r, HRNP_CLOSE_ACK, k->pn, NULL, 0);
                r->connected = false;
                return;
        case HRNP_DATA_ACK: r->data_acks++; return;
        case HRNP_DATA: break;
        default: return;
        }
        if (!r->connected) {
                r->unconnected++;
                return;
        }
        hrnp_out(r, HRNP_DATA_ACK, k->pn, NULL, 0);
        if (k->len && (k->data[0] & 0x7F) == HDAP_RRS)
                on_rrs(r, k->data, k->len, now);
        else
                on_tmp(r, k->data, k->len, now);
}

static void on_pty(struct radio *r, uint64_t now)
{
        uint8_t buf[512];
        ssize_t n = read(r->mfd, buf, sizeof(buf));
        if (n <= 0 || !r->on)
                return; /* a radio switched off or rebooting hears nothing */
        for (size_t off = 0; off < (size_t)n;) {
                off += hrnp_rx_feed(&r->rx, buf + off, (size_t)n - off, now);
                struct hrnp_pkt k;
                const char *why;
                int rc;
                while ((rc = hrnp_rx_next(&r->rx, &k, &why)) != 0) {
                        if (rc > 0) {
                                on_hrnp(r, &k, now);
                        } else {
                                r->hrnp_bad++;
                                say(r, "bad HRNP packet from the PC: %s", why);
                        }
                }
        }
}

static void on_signal(int sig)
{
        (void)sig;
        stop = 1;
}

static void usage(void)
{
        fprintf(stderr, "usage: pdtsim --radio NAME=RADIO_IP,PC_IP,ID | --hrnp NAME=PTY_LINK,ID (2 or 3 of them)\n"
                        "              --tmp-port P --rrs-port P --control P\n"
                        "              [--preamble MS] [--block MS] [--text-max BYTES] [--reg-retry MS]\n");
        exit(2);
}

int main(int argc, char **argv)
{
        int cport = 0;
        for (int i = 1; i + 1 < argc; i += 2) {
                const char *a = argv[i], *v = argv[i + 1];
                if (strcmp(a, "--radio") == 0 && nradios < NRADIO) {
                        struct radio *r = &radios[nradios++];
                        char ip1[32], ip2[32];
                        unsigned id;
                        const char *eq = strchr(v, '=');
                        if (!eq || eq - v >= 16 || sscanf(eq + 1, "%31[^,],%31[^,],%u", ip1, ip2, &id) != 3 ||
                            inet_pton(AF_INET, ip1, &r->ip) != 1 || inet_pton(AF_INET, ip2, &r->pc) != 1)
                                usage();
                        snprintf(r->name, sizeof(r->name), "%.*s", (int)(eq - v), v);
                        r->id = id;
                        r->tmp_fd = r->rrs_fd = r->mfd = r->sfd = -1;
                } else if (strcmp(a, "--hrnp") == 0 && nradios < NRADIO) {
                        struct radio *r = &radios[nradios++];
                        const char *eq = strchr(v, '='), *comma = strrchr(v, ',');
                        if (!eq || eq - v >= 16 || !comma || comma < eq || (size_t)(comma - eq - 1) >= sizeof(r->link))
                                usage();
                        snprintf(r->name, sizeof(r->name), "%.*s", (int)(eq - v), v);
                        snprintf(r->link, sizeof(r->link), "%.*s", (int)(comma - eq - 1), eq + 1);
                        r->id = (uint32_t)strtoul(comma + 1, NULL, 10);
                        r->hrnp = true;
                        r->tmp_fd = r->rrs_fd = r->mfd = r->sfd = -1;
                } else if (strcmp(a, "--tmp-port") == 0)
                        tmp_port = (uint16_t)atoi(v);
                else if (strcmp(a, "--rrs-port") == 0)
                        rrs_port = (uint16_t)atoi(v);
                else if (strcmp(a, "--control") == 0)
                        cport = atoi(v);
                else if (strcmp(a, "--preamble") == 0)
                        preamble_us = strtoull(v, NULL, 10) * 1000;
                else if (strcmp(a, "--block") == 0)
                        block_us = strtoull(v, NULL, 10) * 1000;
                else if (strcmp(a, "--reg-retry") == 0)
                        reg_retry_us = strtoull(v, NULL, 10) * 1000;
                else if (strcmp(a, "--text-max") == 0)
                        text_max = strtoull(v, NULL, 10);
                else
                        usage();
        }
        if (!nradios || !tmp_port || !rrs_port || !cport)
                usage();
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        struct in_addr lo = { htonl(INADDR_LOOPBACK) };
        ctl_fd = bind_udp(lo, (uint16_t)cport);
        uint64_t now = now_us();
        for (unsigned i = 0; i < nradios; i++) {
                if (radios[i].hrnp) {
                        make_pty(&radios[i]);
                } else {
                        radios[i].tmp_fd = bind_udp(radios[i].ip, tmp_port);
                        radios[i].rrs_fd = bind_udp(radios[i].ip, rrs_port);
                }
                power(&radios[i], true, now);
        }
        say(NULL, "ready: preamble %llu ms, block %llu ms, text max %zu B", (unsigned long long)(preamble_us / 1000),
            (unsigned long long)(block_us / 1000), text_max);

        while (!stop) {
                struct pollfd pf[1 + 3 * NRADIO];
                nfds_t np = 0;
                now = now_us();
                uint64_t due = now + 1000000;
                pf[np++] = (struct pollfd){ .fd = ctl_fd, .events = POLLIN };
                for (unsigned i = 0; i < nradios; i++) {
                        pf[np++] = (struct pollfd){ .fd = radios[i].tmp_fd, .events = POLLIN };
                        pf[np++] = (struct pollfd){ .fd = radios[i].rrs_fd, .events = POLLIN };
                        pf[np++] = (struct pollfd){ .fd = radios[i].mfd, .events = POLLIN };
                        if (radios[i].on && radios[i].next_reg_us < due)
                                due = radios[i].next_reg_us;
                        if (radios[i].reset_until && radios[i].reset_until < due)
                                due = radios[i].reset_until;
                }
                for (int i = 0; i < NEV; i++)
                        if (evs[i].used && evs[i].due < due)
                                due = evs[i].due;
                int ms = due > now ? (int)((due - now + 999) / 1000) : 0;
                if (poll(pf, np, ms) < 0 && errno != EINTR)
                        break;
                now = now_us();
                if (pf[0].revents & POLLIN)
                        control(now);
                for (unsigned i = 0; i < nradios; i++) {
                        struct radio *r = &radios[i];
                        if (pf[1 + 3 * i + 2].revents & POLLIN)
                                on_pty(r, now);
                        if (r->reset_until && now >= r->reset_until) {
                                r->reset_until = 0;
                                power(r, true, now);
                                if (r->hrnp && write(r->mfd, "\0\377", 2) != 2) /* boot noise */
                                        say(r, "pty write: %s", strerror(errno));
                        }
                        for (int k = 0; k < 2; k++) {
                                struct pollfd *p = &pf[1 + 3 * i + (unsigned)k];
                                if (!(p->revents & POLLIN))
                                        continue;
                                uint8_t buf[HDAP_MAX + 16];
                                struct sockaddr_in from;
                                socklen_t fl = sizeof(from);
                                ssize_t n = recvfrom(p->fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
                                if (n <= 0 || !r->on)
                                        continue; /* a radio switched off hears nothing */
                                if (k == 0)
                                        on_tmp(r, buf, (size_t)n, now);
                                else
                                        on_rrs(r, buf, (size_t)n, now);
                        }
                        if (r->on && (!r->hrnp || r->connected) && now >= r->next_reg_us) {
                                r->regs++;
                                rrs_send(r, RRS_REGISTER, NULL, 0);
                                r->next_reg_us = now + reg_retry_us; /* again until acked */
                        }
                }
                for (int i = 0; i < NEV; i++)
                        if (evs[i].used && evs[i].due <= now)
                                end_air(&evs[i]);
        }
        for (unsigned i = 0; i < nradios; i++)
                if (radios[i].hrnp)
                        unlink(radios[i].link);
        say(NULL, "stopped");
        return 0;
}

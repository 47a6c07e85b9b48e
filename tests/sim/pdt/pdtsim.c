/* SPDX-License-Identifier: MIT */
/* pdtsim: two Hytera PDT/DMR radios on one half-duplex channel, each speaking HDAP (TMP, RRS) over UDP to its PC. */
#include <arpa/inet.h>
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

#include "plugins/pdt/hdap.h"

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
 * Faults over UDP on 127.0.0.1:--control, one command a datagram, answered:
 *   stats | fail NAME R [R...] (results of NAME's next messages) | busy MS |
 *   power NAME 0|1 | garble NAME N (N bad PDUs to NAME's PC) | text NAME STRING (a
 *   person's message from the far radio)
 */

#define NRADIO 2
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

static void to_pc(struct radio *r, int fd, uint16_t port, const uint8_t *p, size_t n)
{
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
        r->registered = false;
        r->next_reg_us = now;
        say(r, "power %s", on ? "on" : "off");
}

static void garble(struct radio *r, unsigned n)
{
        for (unsigned i = 0; i < n; i++) {
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
                                              "acks_from_pc=%lu registered=%d\n",
                                              x->name, x->msgs, x->delivered, x->busy, x->results[0], x->results[8],
                                              x->bad, x->checks, x->acks_from_pc, x->registered);
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

static void on_signal(int sig)
{
        (void)sig;
        stop = 1;
}

static void usage(void)
{
        fprintf(stderr, "usage: pdtsim --radio NAME=RADIO_IP,PC_IP,ID --radio ... --tmp-port P --rrs-port P --control P\n"
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
                radios[i].tmp_fd = bind_udp(radios[i].ip, tmp_port);
                radios[i].rrs_fd = bind_udp(radios[i].ip, rrs_port);
                power(&radios[i], true, now);
        }
        say(NULL, "ready: preamble %llu ms, block %llu ms, text max %zu B", (unsigned long long)(preamble_us / 1000),
            (unsigned long long)(block_us / 1000), text_max);

        while (!stop) {
                struct pollfd pf[1 + 2 * NRADIO];
                nfds_t np = 0;
                now = now_us();
                uint64_t due = now + 1000000;
                pf[np++] = (struct pollfd){ .fd = ctl_fd, .events = POLLIN };
                for (unsigned i = 0; i < nradios; i++) {
                        pf[np++] = (struct pollfd){ .fd = radios[i].tmp_fd, .events = POLLIN };
                        pf[np++] = (struct pollfd){ .fd = radios[i].rrs_fd, .events = POLLIN };
                        if (radios[i].on && radios[i].next_reg_us < due)
                                due = radios[i].next_reg_us;
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
                        for (int k = 0; k < 2; k++) {
                                struct pollfd *p = &pf[1 + 2 * i + (unsigned)k];
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
                        if (r->on && now >= r->next_reg_us) {
                                r->regs++;
                                rrs_send(r, RRS_REGISTER, NULL, 0);
                                r->next_reg_us = now + reg_retry_us; /* again until acked */
                        }
                }
                for (int i = 0; i < NEV; i++)
                        if (evs[i].used && evs[i].due <= now)
                                end_air(&evs[i]);
        }
        say(NULL, "stopped");
        return 0;
}

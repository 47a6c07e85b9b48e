/* SPDX-License-Identifier: MIT */
/* pdt: a Hytera PDT/DMR data radio on its USB network or its serial port as a narrow link (HDAP TMP text messages, RRS; HRNP on serial). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "plugins/common/plugin-util.h"
#include "plugins/kuimen-plugin.h"
#include "plugins/pdt/hdap.h"
#include "plugins/pdt/hrnp.h"

/*
 * The radio shows up as a USB network interface ("Forward to PC" in its codeplug) and
 * offers its services as UDP ports (RRS 3002, TMP 3004). This driver binds the same
 * ports on the PC's address and speaks HDAP (plugins/pdt/hdap.h):
 *
 *   send()  -> TMP private message (0xA1, ack wanted) to peer_id, the frame as text
 *              (send_to(): to the base's radio in peer_ids, for a center's acks)
 *           <- TMP private message ack (0xA2) from our radio, with the air's result
 *   radio   -> TMP private message from the far radio: the frame, handed up; acked
 *   radio   -> RRS registration: answered with valid_time; RRS online check every
 *              check_interval, answered by the radio (its absence takes the link down)
 *
 * The channel is half duplex and one message is on the air at a time: the driver holds
 * one frame until the radio's ack, so send() says -EAGAIN meanwhile. The ack's result
 * decides: 0 the frame went (sent 0); channel busy (4), no ack from the target (8) and
 * the other transient results retry after a back-off, DEGRADED with the reason; tx
 * denied (11), receive-only (5) and PLL unlock (7) hand the frame back (sent
 * -ENOTCONN) and report DOWN until the back-off ends; invalid parameters (3) refuse
 * the frame (sent -EINVAL). No ack at all within ack_timeout retries the same way.
 *
 * transport = hrnp: the same PDUs travel inside HRNP packets (plugins/pdt/hrnp.h) on
 * the radio's serial port instead of UDP datagrams; everything above is shared, only
 * to_radio() and the reading differ. The PC connects (every second until the radio
 * accepts), acks each data packet of the radio and the radio acks ours. A radio that
 * resets forgets the connection and stops answering: the online checks going unanswered
 * take the link DOWN and connecting starts over, as does a close from the radio or the
 * port going away (reopened every second).
 */

enum { T_UDP, T_HRNP };

struct pdt_conf {
        int transport;
        char device[256];
        uint64_t baud;
        struct in_addr radio, listen;
        uint64_t tmp_port, rrs_port, radio_id, peer_id, subnet, text_max;
        struct kmp_peer_map peer_ids;
        uint64_t ack_timeout_us, retry_us, retry_max_us, give_up_us, check_interval_us, valid_time;
};

struct pdt {
        km_plugin_link *h;
        const struct km_host_api *api;
        struct pdt_conf c;
        size_t mtu;

        int tmp_fd, rrs_fd;
        char down_reason[320];
        int bind_timer;

        /* transport = hrnp */
        int ser_fd;
        bool connected;
        uint16_t pn, rx_pn;
        bool rx_pn_valid;
        struct hrnp_rx hrx;
        int conn_timer;
        unsigned long n_hrnp_bad, n_data_acks, n_dups, n_other, n_write_fail;

        /* the radio */
        bool heard;         /* an RRS message from the radio since the last silence */
        unsigned unanswered; /* online checks in a row without an answer */
        bool registered;
        int check_timer;

        /* the frame on the air */
        bool have, on_air, retry_wait, want_ready;
        uint8_t frame[HDAP_MAX];
        size_t len;
        uint32_t token, req, dest;
        uint64_t first_us;
        unsigned fails;
        int ack_timer, retry_timer, kick_timer;

        enum km_plugin_state state;
        char reason[320], fail_reason[128];
        bool fail_down;

        unsigned long n_sent, n_failed, n_rx, n_bad, n_text, n_stray;
        struct kmp_ratelimit rl_bad, rl_text, rl_peer;
        uint8_t buf[HDAP_MAX];
};

/* ---- configuration ---------------------------------------------------------- */

enum { OPT_UINT = KMP_OPT_UINT, OPT_DURATION = KMP_OPT_DURATION, OPT_IP4 = KMP_OPT_CUSTOM, OPT_TRANSPORT, OPT_PATH, OPT_BAUD,
       OPT_IDS };

#define CONF(f) offsetof(struct pdt_conf, f)
#define US(s) ((uint64_t)(s) * 1000000ull)

static const struct kmp_opt opts[] = {
        { "transport", OPT_TRANSPORT, "udp", CONF(transport), 0, 0,
          "udp: HDAP over the radio's USB network; hrnp: HDAP in HRNP packets on its serial port" },
        { "device", OPT_PATH, "/dev/ttyUSB0", CONF(device), 0, 0, "serial port of the radio (transport = hrnp)" },
        { "baud", OPT_BAUD, "115200", CONF(baud), 0, 0, "line speed of the serial port, 8N1 (transport = hrnp)" },
        { "radio", OPT_IP4, "192.168.10.1", CONF(radio), 0, 0, "IPv4 address of the radio on its USB network" },
        { "listen", OPT_IP4, "0.0.0.0", CONF(listen), 0, 0, "IPv4 address of this end (where the radio sends)" },
        { "tmp_port", OPT_UINT, "3004", CONF(tmp_port), 1, 65535, "UDP port of the text message service (TMP)" },
        { "rrs_port", OPT_UINT, "3002", CONF(rrs_port), 1, 65535, "UDP port of the registration service (RRS)" },
        { "radio_id", OPT_UINT, NULL, CONF(radio_id), 1, 0xFFFFFF, "this radio's id (24 bits)" },
        { "peer_id", OPT_UINT, NULL, CONF(peer_id), 1, 0xFFFFFF, "the far radio's id, where frames go" },
        { "peer_ids", OPT_IDS | KMP_OPT_OPTIONAL, NULL, CONF(peer_ids), 0, 0,
          "a center's bases on this one radio: NAME:ID, ... (NAME as in peers); each base's acks go to its radio, "
          "the rest to peer_id" },
        { "subnet", OPT_UINT, "10", CONF(subnet), 1, 255, "first byte of the radio IPs (the codeplug's radio network)" },
        { "text_max", OPT_UINT, "67", CONF(text_max), 8, 1024,
          "bytes of UTF-16LE text in one message: 67 on Hytera PDT (PDP_MAX); the frame gets 14 bits a character" },
        { "ack_timeout", OPT_DURATION, "10s", CONF(ack_timeout_us), 10000, US(600),
          "how long the radio may take to say how a message went (airtime, channel access, the target's ack)" },
        { "retry", OPT_DURATION, "2s", CONF(retry_us), 10000, US(3600), "back-off after the first failed message" },
        { "retry_max", OPT_DURATION, "60s", CONF(retry_max_us), 10000, US(86400), "longest back-off (doubling)" },
        { "give_up", OPT_DURATION, "300s", CONF(give_up_us), 10000, US(86400),
          "after this long failing, a frame goes back to the host (sent -ETIMEDOUT)" },
        { "check_interval", OPT_DURATION, "30s", CONF(check_interval_us), 10000, US(3600),
          "RRS online check of the radio this often; two unanswered take the link down" },
        { "valid_time", OPT_UINT, "600", CONF(valid_time), 10, 86400,
          "seconds the radio's registration holds (told to the radio in the registration ack)" },
};

static const char *const keys[] = { "transport", "device", "baud", "radio",    "listen",      "tmp_port", "rrs_port", "radio_id",
                                    "peer_id",  "peer_ids", "subnet",      "text_max", "ack_timeout", "retry",
                                    "retry_max", "give_up", "check_interval", "valid_time", NULL };
_Static_assert(sizeof(keys) / sizeof(keys[0]) == sizeof(opts) / sizeof(opts[0]) + 1, "keys[] mirrors opts[]");

static const char *parse_id(const char *v, uint32_t *id)
{
        uint64_t x;
        char why[64];
        if (kmp_parse_uint(v, &x, 1, 0xFFFFFF, why, sizeof(why)))
                return "expected NAME:ID, ... with radio ids of 1 to 16777215";
        *id = (uint32_t)x;
        return NULL;
}

/* The types of its own: the radio's USB network is numeric IPv4; the transport, the
 * serial port and its speed. */
static const char *parse_custom(const struct kmp_opt *o, const char *v, void *conf, char *why, size_t n)
{
        void *at = (char *)conf + o->off;
        switch (o->type & ~KMP_OPT_OPTIONAL) {
        case OPT_IP4: return inet_pton(AF_INET, v, at) == 1 ? NULL : "not a numeric IPv4 address";
        case OPT_TRANSPORT:
                if (strcmp(v, "udp") == 0)
                        *(int *)at = T_UDP;
                else if (strcmp(v, "hrnp") == 0)
                        *(int *)at = T_HRNP;
                else
                        return "not udp or hrnp";
                return NULL;
        case OPT_PATH:
                if (*v != '/')
                        return "not an absolute path";
                if (strlen(v) >= sizeof(((struct pdt_conf *)0)->device))
                        return "too long";
                strcpy(at, v);
                return NULL;
        case OPT_BAUD: {
                const char *bad = kmp_parse_uint(v, at, 1, 10000000, why, n);
                return bad ? bad : kmp_baud_known(*(uint64_t *)at) ? NULL : "not a line speed (" KMP_BAUDS ")";
        }
        case OPT_IDS:
                return kmp_peer_map_parse(v, at, "expected NAME:ID, ... (a base's name as in peers, its radio id)",
                                          parse_id);
        default: return "unknown option type";
        }
}

/* The checks across keys, once each key has parsed on its own. */
static int check_keys(void *conf, const char **key, char *why, size_t wn)
{
        struct pdt_conf *c = conf;
        if (c->tmp_port == c->rrs_port) {
                *key = "rrs_port";
                snprintf(why, wn, "pdt: rrs_port: the same as tmp_port");
                return -EINVAL;
        }
        if (c->radio_id == c->peer_id) {
                *key = "peer_id";
                snprintf(why, wn, "pdt: peer_id: the same as radio_id");
                return -EINVAL;
        }
        if (text_frame_max(c->text_max) < 32) {
                *key = "text_max";
                snprintf(why, wn, "pdt: text_max: a frame needs at least 32 bytes, %llu text bytes carry %zu",
                         (unsigned long long)c->text_max, text_frame_max(c->text_max));
                return -EINVAL;
        }
        if (c->retry_max_us < c->retry_us) {
                *key = "retry_max";
                snprintf(why, wn, "pdt: retry_max: shorter than retry");
                return -EINVAL;
        }
        return 0;
}

static const struct kmp_opt_table opt_table = {
        .name = "pdt", .opts = opts, .n = sizeof(opts) / sizeof(opts[0]),
        .check_keys = check_keys, .parse = parse_custom
};

/* ---- reports ---------------------------------------------------------------- */

/* The way to the radio is there: the ports bound, or the serial port open and the
 * HRNP connection accepted. */
static bool io_up(const struct pdt *s)
{
        return s->c.transport == T_HRNP ? s->ser_fd >= 0 && s->connected : s->tmp_fd >= 0;
}

static void report(struct pdt *s)
{
        struct km_plugin_report r = { .struct_size = sizeof(r), .signal = -1, .mtu = (uint32_t)s->mtu };
        char why[320];
        if (!io_up(s)) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "%s", s->down_reason);
        } else if (!s->heard) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "%s", s->unanswered >= 2 ? "radio not answering (RRS online check)" : "waiting for the radio");
        } else if (s->fail_reason[0]) {
                r.state = s->fail_down ? KM_PLUGIN_DOWN : KM_PLUGIN_DEGRADED;
                snprintf(why, sizeof(why), "%s", s->fail_reason);
        } else {
                r.state = KM_PLUGIN_UP;
                snprintf(why, sizeof(why), "up");
        }
        if (r.state == s->state && strcmp(why, s->reason) == 0)
                return;
        s->state = r.state;
        snprintf(s->reason, sizeof(s->reason), "%s", why);
        r.reason = s->reason;
        s->api->report(s->h, &r);
}

static void cancel(struct pdt *s, int *id)
{
        if (*id > 0)
                s->api->cancel_timer(s->h, *id);
        *id = 0;
}

static int arm(struct pdt *s, int *id, uint64_t us, km_plugin_timer_cb cb)
{
        cancel(s, id);
        int r = s->api->timer(s->h, us, cb, s);
        *id = r > 0 ? r : 0;
        return r;
}

/* The frame goes back (err < 0) or is receipted (0); state settled first, as the host
 * may send from inside sent(). */
static void finish(struct pdt *s, int err)
{
        if (!s->have)
                return;
        s->have = false;
        s->on_air = false;
        cancel(s, &s->ack_timer);
        if (err)
                s->n_failed++;
        else
                s->n_sent++;
        s->api->sent(s->h, s->token, err);
}

static void maybe_ready(struct pdt *s)
{
        if (s->want_ready && !s->have && s->state != KM_PLUGIN_DOWN) {
                s->want_ready = false;
                s->api->ready(s->h);
        }
}

/* ---- sending ------------------------------------------------------------------- */

static void on_ack_timeout(void *ud);
static void on_retry(void *ud);

static void hrnp_put(struct pdt *s, uint8_t opcode, uint16_t pn, const uint8_t *data, size_t len);

/* One HDAP PDU to the radio: a datagram to the port of its service, or an HRNP data
 * packet on the serial port. A PDU lost here is one the radio never acks: the ack
 * timeout retries it. */
static void to_radio(struct pdt *s, const uint8_t *p, size_t n)
{
        if (s->c.transport == T_HRNP) {
                if (s->ser_fd >= 0 && s->connected)
                        hrnp_put(s, HRNP_DATA, s->pn++, p, n);
                return;
        }
        bool rrs = (p[0] & 0x7F) == HDAP_RRS;
        int fd = rrs ? s->rrs_fd : s->tmp_fd;
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)(rrs ? s->c.rrs_port : s->c.tmp_port)),
                                  .sin_addr = s->c.radio };
        if (fd >= 0 && sendto(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&to, sizeof(to)) < 0) {
                long sup = kmp_ratelimit(&s->rl_bad, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: sendto the radio: %s (%ld more suppressed)",
                                    strerror(errno), sup);
        }
}

static void transmit(struct pdt *s)
{
        uint8_t text[HDAP_MAX], pdu[HDAP_MAX];
        if (!s->have || s->on_air || s->retry_wait || !io_up(s))
                return;
        int tl = text_encode(s->frame, s->len, text, sizeof(text));
        struct tmp_msg m = { .ack_wanted = true, .type = TMP_PRIVATE, .req = ++s->req,
                             .dst = radio_ip((uint8_t)s->c.subnet, s->dest),
                             .src = radio_ip((uint8_t)s->c.subnet, (uint32_t)s->c.radio_id), .text = text,
                             .text_len = tl > 0 ? (size_t)tl : 0 };
        int n = tl > 0 ? tmp_encode(pdu, sizeof(pdu), &m) : tl;
        if (n < 0) {
                finish(s, -EMSGSIZE);
                return;
        }
        s->on_air = true;
        to_radio(s, pdu, (size_t)n);
        arm(s, &s->ack_timer, s->c.ack_timeout_us, on_ack_timeout);
}

static void on_kick(void *ud)
{
        struct pdt *s = ud;
        s->kick_timer = 0;
        transmit(s);
}

static uint64_t backoff(const struct pdt *s)
{
        uint64_t b = s->c.retry_us;
        for (unsigned i = 1; i < s->fails && b < s->c.retry_max_us; i++)
                b *= 2;
        return b > s->c.retry_max_us ? s->c.retry_max_us : b;
}

/* A message did not go: its result (or -1: no answer) decides what follows. */
static void failed(struct pdt *s, int result)
{
        uint64_t now = kmp_now_us();
        s->on_air = false;
        cancel(s, &s->ack_timer);
        s->fails++;
        if (result < 0)
                snprintf(s->fail_reason, sizeof(s->fail_reason), "no answer from the radio to a TMP message");
        else
                snprintf(s->fail_reason, sizeof(s->fail_reason), "%s (TMP result %d)", tmp_result_text(result), result);
        uint64_t b = backoff(s);
        if (result == 3) {
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: %s: the frame of %zu B is refused", s->fail_reason, s->len);
                s->fail_reason[0] = '\0';
                s->fails = 0;
                finish(s, -EINVAL);
                maybe_ready(s);
                return;
        }
        s->fail_down = result == 5 || result == 7 || result == 11;
        arm(s, &s->retry_timer, b, on_retry);
        s->retry_wait = s->retry_timer > 0;
        if (s->fail_down) {
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: message failed: %s; the frame goes back, retry in %.1f s",
                            s->fail_reason, (double)b / 1e6);
                report(s);
                finish(s, -ENOTCONN);
                return;
        }
        if (now - s->first_us >= s->c.give_up_us) {
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: message failed: %s; giving the frame back after %.0f s",
                            s->fail_reason, (double)(now - s->first_us) / 1e6);
                report(s);
                finish(s, -ETIMEDOUT);
                maybe_ready(s);
                return;
        }
        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "pdt: message failed: %s; retry %u in %.1f s", s->fail_reason, s->fails,
                    (double)b / 1e6);
        report(s);
}

static void on_ack_timeout(void *ud)
{
        struct pdt *s = ud;
        s->ack_timer = 0;
        failed(s, -1);
}

static void on_retry(void *ud)
{
        struct pdt *s = ud;
        s->retry_timer = 0;
        s->retry_wait = false;
        if (s->fail_down) {
                /* The radio refused to transmit: try again, as a probe would. */
                s->fail_down = false;
                s->fail_reason[0] = '\0';
                report(s);
                maybe_ready(s);
        }
        transmit(s);
}

/* ---- receiving ------------------------------------------------------------------ */

static void bad_pdu(struct pdt *s, const char *what, const char *why)
{
        s->n_bad++;
        long sup = kmp_ratelimit(&s->rl_bad, kmp_now_us());
        if (sup >= 0)
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: bad %s PDU from the radio: %s (%lu bad so far, %ld not logged)",
                            what, why, s->n_bad, sup);
}

static void on_tmp_pdu(struct pdt *s, const uint8_t *p, size_t n)
{
        struct hdap h;
        struct tmp_msg m;
        const char *why;
        if (hdap_decode(p, n, &h, &why) < 0 || tmp_decode(&h, &m, &why) < 0) {
                bad_pdu(s, "TMP", why);
                return;
        }
        if (m.type == TMP_PRIVATE_ACK) {
                if (!s->on_air || m.req != s->req) {
                        s->n_stray++;
                        return; /* the ack of a message given up on */
                }
                if (m.result != 0) {
                        failed(s, m.result);
                        return;
                }
                s->fails = 0;
                s->fail_reason[0] = '\0';
                s->fail_down = false;
                report(s);
                finish(s, 0);
                maybe_ready(s);
                return;
        }
        /* A message from the air. The radio wants our ack when it asked for one. */
        if (m.ack_wanted) {
                uint8_t pdu[64];
                struct tmp_msg a = { .ack_wanted = false, .type = TMP_PRIVATE_ACK, .req = m.req, .dst = m.src, .src = m.dst };
                int k = tmp_encode(pdu, sizeof(pdu), &a);
                if (k > 0)
                        to_radio(s, pdu, (size_t)k);
        }
        int fl = text_decode(m.text, m.text_len, s->buf, sizeof(s->buf));
        if (fl < 0) {
                /* A person typed it on a radio: not ours to carry, but worth a line. */
                s->n_text++;
                long sup = kmp_ratelimit(&s->rl_text, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                                    "pdt: a text message from radio %u (%zu B) is not a frame: ignored (%ld more not logged)",
                                    m.src & 0xFFFFFF, m.text_len, sup);
                return;
        }
        s->n_rx++;
        s->api->received(s->h, s->buf, (size_t)fl);
}

static void on_rrs_pdu(struct pdt *s, const uint8_t *p, size_t n)
{
        struct hdap h;
        const char *why;
        if (hdap_decode(p, n, &h, &why) < 0) {
                bad_pdu(s, "RRS", why);
                return;
        }
        if (h.service != HDAP_RRS || h.len < 4) {
                bad_pdu(s, "RRS", "not an RRS PDU");
                return;
        }
        bool was = s->heard;
        switch (h.op_lo) {
        case RRS_REGISTER: {
                uint8_t pl[9], pdu[32];
                memcpy(pl, h.payload, 4);
                pl[4] = 0; /* result: ok */
                uint32_t vt = (uint32_t)s->c.valid_time;
                pl[5] = (uint8_t)(vt >> 24), pl[6] = (uint8_t)(vt >> 16), pl[7] = (uint8_t)(vt >> 8), pl[8] = (uint8_t)vt;
                int k = hdap_encode(pdu, sizeof(pdu), HDAP_RRS, false, 0, RRS_REGISTER_ACK, pl, sizeof(pl));
                if (k > 0)
                        to_radio(s, pdu, (size_t)k);
                if (!s->registered)
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "pdt: radio %u registered",
                                    (unsigned)((uint32_t)h.payload[1] << 16 | h.payload[2] << 8 | h.payload[3]));
                s->registered = true;
                s->heard = true;
                s->unanswered = 0;
                break;
        }
        case RRS_CHECK_ACK:
                s->heard = true;
                s->unanswered = 0;
                break;
        case RRS_DEREGISTER:
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: the radio deregistered");
                s->registered = false;
                s->heard = false;
                break;
        default: bad_pdu(s, "RRS", "unknown type"); return;
        }
        report(s);
        if (!s->heard)
                finish(s, -ENOTCONN);
        if (!was && s->heard)
                maybe_ready(s);
}

/* One HDAP PDU from the radio, whichever way it came. */
static void on_pdu(struct pdt *s, const uint8_t *p, size_t n, bool rrs)
{
        if (rrs)
                on_rrs_pdu(s, p, n);
        else
                on_tmp_pdu(s, p, n);
}

static void on_readable(void *ud, int fd, uint32_t revents)
{
        struct pdt *s = ud;
        uint8_t buf[HDAP_MAX + 1];
        (void)revents;
        for (int i = 0; i < 64; i++) {
                struct sockaddr_in from;
                socklen_t fl = sizeof(from);
                ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
                if (n < 0)
                        return;
                if (from.sin_addr.s_addr != s->c.radio.s_addr) {
                        bad_pdu(s, "", "from a host that is not the radio");
                        continue;
                }
                if ((size_t)n > HDAP_MAX) {
                        bad_pdu(s, "", "longer than any HDAP PDU");
                        continue;
                }
                on_pdu(s, buf, (size_t)n, fd != s->tmp_fd);
                if (s->tmp_fd < 0)
                        return;
        }
}

/* ---- the radio's presence --------------------------------------------------------- */

static void hrnp_lost(struct pdt *s, const char *why);

static void on_check(void *ud)
{
        struct pdt *s = ud;
        uint8_t pl[4], pdu[16];
        uint32_t ip = radio_ip((uint8_t)s->c.subnet, (uint32_t)s->c.radio_id);
        s->check_timer = 0;
        if (s->c.transport == T_HRNP && s->unanswered >= 2 && s->connected) {
                /* A radio that reset has forgotten the connection: make a new one. */
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: the radio does not answer online checks; connecting again");
                hrnp_lost(s, "radio not answering (RRS online check); connecting (HRNP)");
        } else if (s->unanswered >= 2 && s->heard) {
                s->heard = false;
                s->registered = false;
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: the radio does not answer online checks");
                /* DOWN first, then the frame back (on the air or not: a late ack is a
                 * stray): the host must not send into a link about to go down. */
                report(s);
                finish(s, -ENOTCONN);
        }
        if (io_up(s)) {
                pl[0] = (uint8_t)(ip >> 24), pl[1] = (uint8_t)(ip >> 16), pl[2] = (uint8_t)(ip >> 8), pl[3] = (uint8_t)ip;
                int k = hdap_encode(pdu, sizeof(pdu), HDAP_RRS, false, 0, RRS_CHECK, pl, 4);
                if (k > 0)
                        to_radio(s, pdu, (size_t)k);
                s->unanswered++;
        }
        arm(s, &s->check_timer, s->c.check_interval_us, on_check);
}

static int bind_one(struct pdt *s, uint64_t port, int *out)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = s->c.listen };
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                int e = errno;
                close(fd);
                snprintf(s->down_reason, sizeof(s->down_reason), "bind port %llu: %s", (unsigned long long)port, strerror(e));
                return -e;
        }
        int r = s->api->watch_fd(s->h, fd, EPOLLIN, on_readable, s);
        if (r < 0) {
                close(fd);
                return r;
        }
        *out = fd;
        return 0;
}

static void close_socks(struct pdt *s)
{
        int *fds[] = { &s->tmp_fd, &s->rrs_fd };
        for (int i = 0; i < 2; i++)
                if (*fds[i] >= 0) {
                        s->api->unwatch_fd(s->h, *fds[i]);
                        close(*fds[i]);
                        *fds[i] = -1;
                }
}

static void on_bind(void *ud)
{
        struct pdt *s = ud;
        s->bind_timer = 0;
        if (bind_one(s, s->c.tmp_port, &s->tmp_fd) < 0 || bind_one(s, s->c.rrs_port, &s->rrs_fd) < 0) {
                close_socks(s);
                report(s);
                arm(s, &s->bind_timer, 1000000, on_bind);
                return;
        }
        s->down_reason[0] = '\0';
        report(s);
        on_check(s);
}

/* ---- HRNP on the serial port ------------------------------------------------------ */

static void on_serial(void *ud, int fd, uint32_t revents);

static void hrnp_put(struct pdt *s, uint8_t opcode, uint16_t pn, const uint8_t *data, size_t len)
{
        uint8_t pkt[HRNP_MAX];
        int n = hrnp_encode(pkt, sizeof(pkt), opcode, HRNP_PC, HRNP_RADIO, pn, data, len);
        if (n < 0 || s->ser_fd < 0)
                return;
        /* A whole packet or nothing useful: the port's queue holds several kB, and what
         * does not go is retried above (connect again, the ack timeout). */
        ssize_t w = write(s->ser_fd, pkt, (size_t)n);
        if (w != n) {
                s->n_write_fail++;
                long sup = kmp_ratelimit(&s->rl_bad, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: %s: write: %s (%ld more suppressed)", s->c.device,
                                    w < 0 ? strerror(errno) : "short write", sup);
        }
}

static void on_connect(void *ud)
{
        struct pdt *s = ud;
        s->conn_timer = 0;
        if (s->ser_fd < 0 || s->connected)
                return;
        hrnp_put(s, HRNP_CONNECT, 0, NULL, 0);
        arm(s, &s->conn_timer, 1000000, on_connect);
}

/* The connection is gone (why: the reason DOWN reports): the frame goes back and
 * connecting starts over. */
static void hrnp_lost(struct pdt *s, const char *why)
{
        s->connected = false;
        s->heard = false;
        s->registered = false;
        s->unanswered = 0;
        snprintf(s->down_reason, sizeof(s->down_reason), "%s", why);
        report(s);
        finish(s, -ENOTCONN);
        arm(s, &s->conn_timer, 0, on_connect);
}

static void on_reopen(void *ud);

static void close_serial(struct pdt *s, const char *why)
{
        if (s->ser_fd >= 0) {
                s->api->unwatch_fd(s->h, s->ser_fd);
                close(s->ser_fd);
                s->ser_fd = -1;
        }
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: %s: %s", s->c.device, why);
        hrnp_lost(s, why);
        cancel(s, &s->conn_timer);
        arm(s, &s->bind_timer, 1000000, on_reopen);
}

static void on_hrnp(struct pdt *s, const struct hrnp_pkt *k)
{
        switch (k->opcode) {
        case HRNP_ACCEPT:
                if (!s->connected) {
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "pdt: HRNP connection accepted by the radio on %s", s->c.device);
                        s->connected = true;
                        s->pn = 1;
                        s->rx_pn_valid = false;
                        s->down_reason[0] = '\0';
                        cancel(s, &s->conn_timer);
                        report(s);
                }
                return;
        case HRNP_REJECT:
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: the radio rejected the HRNP connection; again in 1 s");
                snprintf(s->down_reason, sizeof(s->down_reason), "the radio rejected the HRNP connection");
                report(s);
                return;
        case HRNP_CLOSE:
                hrnp_put(s, HRNP_CLOSE_ACK, k->pn, NULL, 0);
                if (s->connected) {
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: the radio closed the HRNP connection");
                        hrnp_lost(s, "the radio closed the HRNP connection; connecting (HRNP)");
                }
                return;
        case HRNP_DATA_ACK: s->n_data_acks++; return;
        case HRNP_CLOSE_ACK: return;
        case HRNP_DATA: break;
        default: bad_pdu(s, "HRNP", "unknown opcode"); return;
        }
        if (!s->connected) {
                bad_pdu(s, "HRNP", "data before the connection was accepted");
                return;
        }
        hrnp_put(s, HRNP_DATA_ACK, k->pn, NULL, 0);
        /* Our data ack lost on the line: the radio sends the packet again. */
        if (s->rx_pn_valid && k->pn == s->rx_pn) {
                s->n_dups++;
                return;
        }
        s->rx_pn = k->pn;
        s->rx_pn_valid = true;
        if (k->len == 0) {
                bad_pdu(s, "HRNP", "data packet without a PDU");
                return;
        }
        uint8_t service = k->data[0] & 0x7F;
        if (service != HDAP_TMP && service != HDAP_RRS) {
                s->n_other++; /* RCP, LP, ... broadcasts this link does not use */
                return;
        }
        on_pdu(s, k->data, k->len, service == HDAP_RRS);
}

static void on_serial(void *ud, int fd, uint32_t revents)
{
        struct pdt *s = ud;
        uint8_t buf[512];
        (void)fd;
        for (int i = 0; i < 16 && s->ser_fd >= 0; i++) {
                ssize_t n = read(s->ser_fd, buf, sizeof(buf));
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return;
                if (n <= 0) {
                        char why[160];
                        snprintf(why, sizeof(why), "%s", n == 0 ? "hang-up" : strerror(errno));
                        close_serial(s, why);
                        return;
                }
                uint64_t now = kmp_now_us();
                for (size_t off = 0; off < (size_t)n && s->ser_fd >= 0;) {
                        off += hrnp_rx_feed(&s->hrx, buf + off, (size_t)n - off, now);
                        struct hrnp_pkt k;
                        const char *why;
                        int r;
                        while (s->ser_fd >= 0 && (r = hrnp_rx_next(&s->hrx, &k, &why)) != 0) {
                                if (r > 0) {
                                        on_hrnp(s, &k);
                                } else {
                                        s->n_hrnp_bad++;
                                        bad_pdu(s, "HRNP", why);
                                }
                        }
                }
        }
        (void)revents;
}

static void on_reopen(void *ud)
{
        struct pdt *s = ud;
        char why[160];
        s->bind_timer = 0;
        int fd = kmp_serial_open(s->c.device, s->c.baud, why, sizeof(why));
        int r = fd >= 0 ? s->api->watch_fd(s->h, fd, EPOLLIN, on_serial, s) : fd;
        if (r < 0) {
                if (fd >= 0) {
                        close(fd);
                        snprintf(why, sizeof(why), "watch_fd: %s", strerror(-r));
                }
                char was[sizeof(s->down_reason)];
                snprintf(was, sizeof(was), "%s", s->down_reason);
                snprintf(s->down_reason, sizeof(s->down_reason), "%.150s: %.150s", s->c.device, why);
                if (strcmp(was, s->down_reason) != 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "pdt: %s", s->down_reason);
                report(s);
                arm(s, &s->bind_timer, 1000000, on_reopen);
                return;
        }
        s->ser_fd = fd;
        hrnp_rx_reset(&s->hrx);
        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "pdt: %s opened at %llu baud; connecting (HRNP)", s->c.device,
                    (unsigned long long)s->c.baud);
        snprintf(s->down_reason, sizeof(s->down_reason), "connecting to the radio (HRNP)");
        report(s);
        on_connect(s);
        if (s->check_timer <= 0)
                on_check(s);
}

/* ---- the ops ------------------------------------------------------------------ */

static void pdt_close(void *state);

static int pdt_open(km_plugin_link *h, const struct km_host_api *api, void **state)
{
        struct pdt_conf c;
        int r = kmp_open_conf(&opt_table, h, api, &c, sizeof(c));
        if (r < 0)
                return r;
        char why[300];
        if ((r = kmp_peer_map_covers(&c.peer_ids, api->config(h, "peers"), "peer_ids", "radio", why, sizeof(why))) < 0) {
                api->log(h, KM_PLUGIN_LOG_ERR, "pdt: %s", why);
                return r;
        }
        struct pdt *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->h = h;
        s->api = api;
        s->c = c;
        s->tmp_fd = s->rrs_fd = s->ser_fd = -1;
        s->state = (enum km_plugin_state)-1;
        s->mtu = text_frame_max(c.text_max);
        snprintf(s->down_reason, sizeof(s->down_reason), "not bound yet");
        char ip[INET_ADDRSTRLEN], where[300];
        inet_ntop(AF_INET, &c.radio, ip, sizeof(ip));
        if (c.transport == T_HRNP)
                snprintf(where, sizeof(where), "HRNP on %s at %llu baud", c.device, (unsigned long long)c.baud);
        else
                snprintf(where, sizeof(where), "radio %s (TMP %llu, RRS %llu)", ip, (unsigned long long)c.tmp_port,
                         (unsigned long long)c.rrs_port);
        api->log(h, KM_PLUGIN_LOG_INFO, "pdt: mtu %zu B (%llu text bytes), %s, id %llu -> %llu", s->mtu,
                 (unsigned long long)c.text_max, where, (unsigned long long)c.radio_id, (unsigned long long)c.peer_id);
        if (c.transport == T_HRNP)
                on_reopen(s);
        else
                on_bind(s);
        *state = s;
        return 0;
}

static void pdt_close(void *state)
{
        struct pdt *s = state;
        if (!s)
                return;
        int *timers[] = { &s->bind_timer, &s->check_timer, &s->ack_timer, &s->retry_timer, &s->kick_timer, &s->conn_timer };
        for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++)
                cancel(s, timers[i]);
        close_socks(s);
        if (s->ser_fd >= 0) {
                s->api->unwatch_fd(s->h, s->ser_fd);
                close(s->ser_fd);
        }
        s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                    "pdt: closed; messages sent %lu, failed %lu, frames received %lu, other texts %lu, bad PDUs %lu, "
                    "stray acks %lu",
                    s->n_sent, s->n_failed, s->n_rx, s->n_text, s->n_bad, s->n_stray);
        if (s->c.transport == T_HRNP)
                s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                            "pdt: HRNP: bad packets %lu, data acks %lu, duplicates %lu, other services %lu, failed writes %lu",
                            s->n_hrnp_bad, s->n_data_acks, s->n_dups, s->n_other, s->n_write_fail);
        free(s);
}

/* One frame to the radio dest. */
static int send_id(struct pdt *s, uint32_t dest, const void *frame, size_t len, uint32_t token)
{
        if (!frame || len == 0)
                return -EINVAL;
        if (len > s->mtu)
                return -EMSGSIZE;
        if (s->state == KM_PLUGIN_DOWN) {
                s->want_ready = true;
                return -ENOTCONN;
        }
        if (s->have) {
                s->want_ready = true;
                return -EAGAIN;
        }
        memcpy(s->frame, frame, len);
        s->len = len;
        s->dest = dest;
        s->token = token;
        s->have = true;
        s->first_us = kmp_now_us();
        if (s->kick_timer <= 0) {
                int id = s->api->timer(s->h, 0, on_kick, s);
                s->kick_timer = id > 0 ? id : 0;
        }
        return 0;
}

static int pdt_send(void *state, const void *frame, size_t len, uint32_t token)
{
        struct pdt *s = state;
        return send_id(s, (uint32_t)s->c.peer_id, frame, len, token);
}

/* ABI 1.2: a center's acks to the radio of the base they are for (peer_ids). */
static int pdt_send_to(void *state, const char *peer, const void *frame, size_t len, uint32_t token)
{
        struct pdt *s = state;
        bool found;
        uint32_t dest = kmp_peer_map_get(&s->c.peer_ids, peer, (uint32_t)s->c.peer_id, &found);
        if (peer && !found && s->c.peer_ids.n) {
                long sup = kmp_ratelimit(&s->rl_peer, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                    "pdt: no radio for peer %s in peer_ids: sent to peer_id %u (%ld more suppressed)", peer,
                                    dest, sup);
        }
        return send_id(s, dest, frame, len, token);
}

static uint32_t pdt_mtu(void *state)
{
        const struct pdt *s = state;
        return (uint32_t)s->mtu;
}

static int pdt_check(km_plugin_link *h, const struct km_host_api *api, const char **key, char *why, size_t len)
{
        struct pdt_conf c;
        int r = kmp_read_opts(&opt_table, h, api, &c, sizeof(c), key, why, len);
        if (r == 0 && (r = kmp_peer_map_covers(&c.peer_ids, api->config(h, "peers"), "peer_ids", "radio", why, len)) < 0)
                *key = c.peer_ids.n ? "peer_ids" : "peers";
        return r;
}

static const struct km_plugin_ops ops = {
        .open = pdt_open,
        .close = pdt_close,
        .send = pdt_send,
        .mtu = pdt_mtu,
        .check = pdt_check,
        .send_to = pdt_send_to,
};

KMP_PLUGIN_ENTRY("pdt", "1.1", ops, keys)

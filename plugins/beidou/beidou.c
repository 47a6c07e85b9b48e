/* SPDX-License-Identifier: MIT */
/* beidou: a BeiDou RDSS short-message terminal on a serial port (BDS-3 and BDS-2 "2.1" ASCII sentences) as a narrow link. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "plugins/beidou/rdss.h"
#include "plugins/common/plugin-util.h"
#include "plugins/kuimen-plugin.h"

/*
 * The model (protocol facts: /work/shared/protocols/equipment.md §1, README.md here).
 *
 * A card sends one short message per service interval (the card's 服务频度) of at
 * most its level's bits. The driver learns both from the card ($CCICR -> $BDICP on
 * BDS-3, $CCICA -> $BDICI on 2.1), so the host's frames are exactly as large as the
 * card takes and the scheduler hears the interval through next_send_ms after every
 * accepted send. One frame is on the way at a time: send() writes $CCTCQ/$CCTXA and
 * the module's $BDFKI settles it:
 *
 *   Y               -> sent(token, 0); next send after the interval
 *   interval early  -> the same line again when the remaining time is over (the
 *                      module's clock wins over ours, e.g. after a restart)
 *   checksum (11)   -> the same line again, twice at most
 *   anything else   -> sent(token, -errno) and the link DOWN with the reason for a
 *                      while (refusal_retry; settle for a weak beam); no card -> DOWN
 *                      until the card is back
 *
 * Health comes from what the module says by itself: BDS-3 $BDPWI every second, 2.1
 * $BDBSI after $CCRMO,BSI,2,1. A beam state must hold for `settle` before it is
 * reported, so a beam power walking around the threshold does not flap the link. A
 * module that says nothing for `silence` is DOWN "module silent"; when it speaks again
 * (or a BDS-3 module's time falls back to 000000.00: it restarted) the card is read
 * again. A device that cannot be opened, or goes away (EOF, EIO, HUP: a USB adapter
 * pulled), is DOWN with the error and reopened every `reopen`.
 *
 * Everything runs on one 200 ms tick plus the fd callbacks; all state lives in
 * struct bd, one per link.
 */

#define BD_TICK_US 200000ull
#define BD_OUT_MAX 16384
#define BD_FRAME_MIN 32  /* KM_FRAME_MTU_MIN: a card that carries less cannot be a link */
#define BD_FRAME_MAX 4096 /* KM_FRAME_MTU_MAX */
#define BD_CARD_RETRY_US 2000000ull
#define BD_MAX_RESENDS 2

enum bd_proto { P_BDS3, P_V21, P_AUTO, P_40 };
enum bd_beam { BEAM_UNKNOWN, BEAM_NONE, BEAM_WEAK, BEAM_GOOD };

struct bd_conf {
        char device[256];
        unsigned baud;
        enum bd_proto proto;
        uint32_t peer;
        struct kmp_peer_map peer_cards;
        bool mixed;
        uint64_t mtu_cap, min_s2c, min_power, freq_point;
        uint64_t reopen_us, fki_us, silence_us, settle_us, card_poll_us, refusal_us;
};

struct bd {
        km_plugin_link *h;
        const struct km_host_api *api;
        struct bd_conf c;
        int fd, tick_id;
        bool watching_out;
        char dev_err[128];
        uint64_t reopen_at;

        char rx[RDSS_LINE_MAX + 2];
        size_t rxlen;
        bool rx_skip; /* dropping the rest of an overlong line */
        char out[BD_OUT_MAX];
        size_t outlen;

        enum bd_proto proto; /* P_AUTO until the module answers one dialect */
        uint64_t opened_at, last_line_at, last_beam_at;
        bool silent; /* declared silent; the next line means it came back */

        bool card_known;
        struct rdss_card card;
        uint32_t card_mtu;
        uint64_t card_query_at;

        struct rdss_beams beams;
        bool had_time;
        enum bd_beam beam_raw, beam;
        uint64_t beam_raw_since, beam_ask_at;

        bool pending;
        uint32_t token;
        uint64_t fki_deadline, resend_at;
        unsigned resends;
        char line[RDSS_LINE_MAX + 8];
        int linelen;
        uint64_t next_ok;
        bool want_ready;
        bool battery_low;
        bool weak_refused; /* "power not locked": a weak beam is not tried again */

        char hold_reason[96];
        uint64_t hold_until;

        /* the last report */
        bool reported;
        enum km_plugin_state r_state;
        char r_reason[400];
        int r_signal;
        uint32_t r_mtu;

        uint64_t n_lines, n_garbled, n_sent, n_refused, n_early, n_rx, n_rx_bad, n_unexpected, n_out_dropped;
        struct kmp_ratelimit rl_garbled, rl_rx, rl_out, rl_peer;
        struct rdss_sentence sen; /* big: kept here, not on the stack */
        uint8_t frame[RDSS_LINE_MAX / 2];
};

/* ---- configuration ---------------------------------------------------------- */

enum {
        OPT_UINT = KMP_OPT_UINT,
        OPT_DURATION = KMP_OPT_DURATION,
        OPT_PATH = KMP_OPT_CUSTOM,
        OPT_BAUD,
        OPT_PROTO,
        OPT_CARD,
        OPT_CODING,
        OPT_CARDS,
};

#define CONF(f) offsetof(struct bd_conf, f)
#define US(s) ((uint64_t)(s) * 1000000ull)

static const struct kmp_opt opts[] = {
        { "device", OPT_PATH, NULL, CONF(device), 0, 0, "serial port of the module, e.g. /dev/ttyUSB0" },
        { "baud", OPT_BAUD, "115200", CONF(baud), 0, 0, "line speed, 8N1" },
        { "protocol", OPT_PROTO, "auto", CONF(proto), 0, 0, "bds3, 2.1, 4.0 (binary) or auto (whichever the module answers in)" },
        { "peer_card", OPT_CARD, NULL, CONF(peer), 0, 0, "card number (1 to 8 digits) that frames are sent to" },
        { "peer_cards", OPT_CARDS | KMP_OPT_OPTIONAL, NULL, CONF(peer_cards), 0, 0,
          "a center's bases on this one card: NAME:CARD, ... (NAME as in peers); each base's acks go to its card, "
          "the rest to peer_card" },
        { "coding", OPT_CODING, "mixed", CONF(mixed), 0, 0, "mixed (A4 + hex of the bytes) or code (hex nibbles)" },
        { "mtu", OPT_UINT, "0", CONF(mtu_cap), 0, BD_FRAME_MAX, "cap on the frame size below the card's, 0 = the card's" },
        { "min_s2c", OPT_UINT, "40", CONF(min_s2c), 0, 99, "BDS-3: a beam counts when its S2C_d (dB-Hz) is at least this" },
        { "min_power", OPT_UINT, "1", CONF(min_power), 0, 4, "2.1 and 4.0: a beam counts when its power (0..4) is at least this" },
        { "freq_point", OPT_UINT, "2", CONF(freq_point), 1, 5, "BDS-3 $CCTCQ frequency point (1..5 = Lf0..Lf4)" },
        { "reopen", OPT_DURATION, "2s", CONF(reopen_us), 100000, US(3600), "retry a missing or lost device this often" },
        { "feedback_timeout", OPT_DURATION, "10s", CONF(fki_us), 500000, US(600),
          "a send with no $BDFKI this long is given back" },
        { "silence", OPT_DURATION, "5s", CONF(silence_us), 500000, US(600),
          "a module with no sentence this long is down (beam reports come every second)" },
        { "settle", OPT_DURATION, "3s", CONF(settle_us), 0, US(600), "a beam state must hold this long before it is reported" },
        { "card_poll", OPT_DURATION, "30s", CONF(card_poll_us), 500000, US(86400), "read the card again this often" },
        { "refusal_retry", OPT_DURATION, "60s", CONF(refusal_us), 100000, US(86400),
          "after a suppression, radio silence, battery or permission refusal, try again after this long" },
};

static const char *const keys[] = { "device", "baud",   "protocol", "peer_card", "peer_cards",        "coding",
                                    "mtu",    "min_s2c", "min_power", "freq_point",      "reopen",
                                    "feedback_timeout", "silence", "settle", "card_poll", "refusal_retry", NULL };
_Static_assert(sizeof(keys) / sizeof(keys[0]) == sizeof(opts) / sizeof(opts[0]) + 1, "keys[] mirrors opts[]");

static const char *parse_card(const char *v, uint32_t *card)
{
        if (rdss_parse_card(v, card) < 0 || *card == 0)
                return "expected NAME:CARD, ... with card numbers of 1 to 8 digits, not 0";
        return NULL;
}

/* The types of its own; the numbers and durations are the reader's. */
static const char *parse_opt(const struct kmp_opt *o, const char *v, void *conf, char *why, size_t n)
{
        struct bd_conf *c = conf;
        void *at = (char *)conf + o->off;
        switch (o->type & ~KMP_OPT_OPTIONAL) {
        case OPT_PATH:
                if (!*v)
                        return "empty";
                if (strlen(v) >= sizeof(c->device))
                        return "too long";
                strcpy(at, v);
                return NULL;
        case OPT_BAUD: {
                uint64_t b;
                if (kmp_parse_uint(v, &b, 1, 10000000, why, n) || !kmp_baud_known(b))
                        return "not a line speed (" KMP_BAUDS ")";
                *(unsigned *)at = (unsigned)b;
                return NULL;
        }
        case OPT_PROTO:
                if (strcmp(v, "bds3") == 0)
                        *(enum bd_proto *)at = P_BDS3;
                else if (strcmp(v, "2.1") == 0)
                        *(enum bd_proto *)at = P_V21;
                else if (strcmp(v, "auto") == 0)
                        *(enum bd_proto *)at = P_AUTO;
                else if (strcmp(v, "4.0") == 0)
                        *(enum bd_proto *)at = P_40;
                else
                        return "expected bds3, 2.1, 4.0 or auto";
                return NULL;
        case OPT_CARD:
                if (rdss_parse_card(v, at) < 0 || *(uint32_t *)at == 0)
                        return "expected a card number of 1 to 8 digits, not 0";
                return NULL;
        case OPT_CARDS:
                return kmp_peer_map_parse(v, at, "expected NAME:CARD, ... (a base's name as in peers, its card number)",
                                          parse_card);
        case OPT_CODING:
                if (strcmp(v, "mixed") == 0)
                        *(bool *)at = true;
                else if (strcmp(v, "code") == 0)
                        *(bool *)at = false;
                else
                        return "expected mixed or code";
                return NULL;
        }
        return "unknown option type";
}

/* The checks across keys, once each key has parsed on its own. */
static int check_keys(void *conf, const char **key, char *why, size_t wn)
{
        struct bd_conf *c = conf;
        if (c->mtu_cap && c->mtu_cap < BD_FRAME_MIN) {
                *key = "mtu";
                snprintf(why, wn, "mtu: at least %d (a frame's minimum), or 0 for the card's", BD_FRAME_MIN);
                return -EINVAL;
        }
        return 0;
}

/* The errors keep the form configs and tests already know: "key = value: why". */
static const struct kmp_opt_table opt_table = {
        .name = "beidou", .opts = opts, .n = sizeof(opts) / sizeof(opts[0]),
        .check_keys = check_keys, .parse = parse_opt, .terse = true
};

/* ---- the device --------------------------------------------------------------- */

static void on_io(void *ud, int fd, uint32_t revents);
static void report(struct bd *s, bool force);

static void give_back(struct bd *s, int status)
{
        if (!s->pending)
                return;
        s->pending = false;
        s->resend_at = 0;
        s->n_refused++;
        s->api->sent(s->h, s->token, status);
}

static void dev_close(struct bd *s)
{
        if (s->fd < 0)
                return;
        s->api->unwatch_fd(s->h, s->fd);
        close(s->fd);
        s->fd = -1;
        s->watching_out = false;
        s->rxlen = s->outlen = 0;
        s->rx_skip = false;
}

/* The device went away or never was: DOWN with why, and a reopen after `reopen`. */
static void dev_lost(struct bd *s, const char *why)
{
        uint64_t now = kmp_now_us();
        if (strcmp(why, s->dev_err) != 0)
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: %s: %s; retrying every %.1f s", s->c.device, why,
                            (double)s->c.reopen_us / 1e6);
        snprintf(s->dev_err, sizeof(s->dev_err), "%s", why);
        dev_close(s);
        s->reopen_at = now + s->c.reopen_us;
        s->card_known = false;
        s->beam = s->beam_raw = BEAM_UNKNOWN;
        give_back(s, -ENOTCONN);
        report(s, false);
}

static int watch(struct bd *s)
{
        uint32_t ev = EPOLLIN | (s->outlen ? EPOLLOUT : 0);
        int r = s->api->watch_fd(s->h, s->fd, ev, on_io, s);
        if (r == 0)
                s->watching_out = s->outlen != 0;
        return r;
}

static void flush_out(struct bd *s)
{
        while (s->outlen) {
                ssize_t n = write(s->fd, s->out, s->outlen);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (n <= 0) {
                        char why[96];
                        snprintf(why, sizeof(why), "write: %s", n < 0 ? strerror(errno) : "nothing written");
                        dev_lost(s, why);
                        return;
                }
                memmove(s->out, s->out + n, s->outlen - (size_t)n);
                s->outlen -= (size_t)n;
        }
        if ((s->outlen != 0) != s->watching_out)
                watch(s);
}

/* Queues one sentence for the module; false when the device is gone or its buffer full. */
static bool put_line(struct bd *s, const char *line, size_t n)
{
        if (s->fd < 0)
                return false;
        if (s->outlen + n > sizeof(s->out)) {
                /* The module takes nothing (flow control stuck, a wedged adapter). */
                s->n_out_dropped++;
                long sup = kmp_ratelimit(&s->rl_out, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                    "beidou: the module takes no input; a sentence was dropped (%ld more suppressed)", sup);
                return false;
        }
        memcpy(s->out + s->outlen, line, n);
        s->outlen += n;
        flush_out(s);
        return s->fd >= 0;
}

static void put_fmt(struct bd *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_fmt(struct bd *s, const char *fmt, ...)
{
        char buf[128];
        va_list ap;
        va_start(ap, fmt);
        int n = rdss_vformat(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > 0)
                put_line(s, buf, (size_t)n);
}

/* A card not read yet, or not there, is asked for again this often. */
static uint64_t card_retry_us(const struct bd *s)
{
        return s->c.card_poll_us < BD_CARD_RETRY_US ? s->c.card_poll_us : BD_CARD_RETRY_US;
}

/* Asks for the card, and on 2.1 for the beam reports; in auto both dialects. */
static void put_bin(struct bd *s, const char *id, uint32_t addr, const uint8_t *body, size_t blen)
{
        uint8_t f[RDSS40_MAX];
        ssize_t n = rdss40_build(f, sizeof(f), id, addr, body, blen);
        if (n > 0)
                put_line(s, (const char *)f, (size_t)n);
}

static void query_card(struct bd *s)
{
        uint64_t now = kmp_now_us();
        if (s->proto == P_40) {
                /* $ICJC frame 0 -> $ICXX; $GLJC every 1 s -> $GLZK beam powers. */
                put_bin(s, "ICJC", 0, (const uint8_t[]){ 0 }, 1);
                put_bin(s, "GLJC", 0, (const uint8_t[]){ 1 }, 1);
                s->card_query_at = now + (s->card_known && s->card.id ? s->c.card_poll_us : card_retry_us(s));
                return;
        }
        if (s->proto != P_V21)
                put_fmt(s, "CCICR,0,00");
        if (s->proto != P_BDS3) {
                put_fmt(s, "CCRMO,BSI,2,1");
                put_fmt(s, "CCICA,0,00");
        }
        if (s->proto == P_AUTO) {
                /* The 4.0 questions too, each ended by a CR LF: an ASCII module takes
                 * the frame for a line with a bad checksum and drops it, and the next
                 * sentence starts on a line of its own; a 4.0 module skips the CR LF
                 * (and the ASCII lines) looking for the next "$". */
                put_bin(s, "ICJC", 0, (const uint8_t[]){ 0 }, 1);
                put_line(s, "\r\n", 2);
                put_bin(s, "GLJC", 0, (const uint8_t[]){ 1 }, 1);
                put_line(s, "\r\n", 2);
        }
        s->card_query_at = now + (s->card_known && s->card.id ? s->c.card_poll_us : card_retry_us(s));
}

static void dev_open(struct bd *s)
{
        char why[160];
        int fd = kmp_serial_open(s->c.device, s->c.baud, why, sizeof(why));
        if (fd < 0) {
                dev_lost(s, why);
                return;
        }
        s->fd = fd;
        int r = watch(s);
        if (r < 0) {
                snprintf(why, sizeof(why), "watch_fd: %s", strerror(-r));
                dev_lost(s, why);
                return;
        }
        if (s->dev_err[0])
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "beidou: %s open again", s->c.device);
        s->dev_err[0] = '\0';
        s->opened_at = s->last_line_at = kmp_now_us();
        s->silent = false;
        s->card_known = false;
        s->beam = s->beam_raw = BEAM_UNKNOWN;
        s->last_beam_at = 0;
        s->proto = s->c.proto;
        query_card(s);
        report(s, false);
}

/* ---- state -------------------------------------------------------------------- */

static uint32_t card_mtu(const struct bd *s, const struct rdss_card *c)
{
        /* 4.0 cards are BDS-2 cards: the 2.1 table. */
        unsigned bits = s->proto != P_BDS3 ? rdss_v21_bits(c->level, c->encrypted) : rdss_bds3_bits(c->level);
        uint32_t m = rdss_bytes_for_bits(bits, s->c.mixed);
        if (m > BD_FRAME_MAX)
                m = BD_FRAME_MAX;
        if (s->c.mtu_cap && m > s->c.mtu_cap)
                m = (uint32_t)s->c.mtu_cap;
        return m;
}

static const char *proto_name(enum bd_proto p)
{
        return p == P_BDS3 ? "bds3" : p == P_V21 ? "2.1" : p == P_40 ? "4.0" : "auto";
}

/* What the host was last told: a DOWN link gets its ready() from the UP report. */
static bool can_send(const struct bd *s)
{
        return s->r_state != KM_PLUGIN_DOWN;
}

/* The state, the reason and the signal as of now. Reasons are fixed texts (numbers
 * go to the log and the signal), so a beam walking up and down is no new reason. */
static enum km_plugin_state state_now(struct bd *s, uint64_t now, char *reason, size_t n, int *signal)
{
        *signal = -1;
        if (s->fd < 0) {
                snprintf(reason, n, "device %s: %s", s->c.device, s->dev_err[0] ? s->dev_err : "closed");
                return KM_PLUGIN_DOWN;
        }
        if (s->silent) {
                snprintf(reason, n, "module silent");
                return KM_PLUGIN_DOWN;
        }
        if (s->proto == P_AUTO) {
                snprintf(reason, n, "waiting for the module");
                return KM_PLUGIN_DOWN;
        }
        if (s->proto == P_BDS3 && s->last_beam_at && !s->beams.has_time) {
                snprintf(reason, n, "module has no time yet");
                return KM_PLUGIN_DOWN;
        }
        if (!s->card_known) {
                snprintf(reason, n, "reading the card");
                return KM_PLUGIN_DOWN;
        }
        if (s->card.id == 0) {
                snprintf(reason, n, "no IC card");
                return KM_PLUGIN_DOWN;
        }
        if (s->card_mtu < BD_FRAME_MIN) {
                snprintf(reason, n, "card level %u carries %u B, below a frame's %d B", s->card.level, s->card_mtu,
                         BD_FRAME_MIN);
                return KM_PLUGIN_DOWN;
        }
        if (s->hold_until > now) {
                snprintf(reason, n, "%s", s->hold_reason);
                return KM_PLUGIN_DOWN;
        }
        if (s->last_beam_at) {
                if (s->proto == P_BDS3)
                        *signal = s->beams.best <= 30 ? 0 : s->beams.best >= 52 ? 100 : (int)((s->beams.best - 30) * 100 / 22);
                else
                        *signal = (int)s->beams.best * 25;
        }
        switch (s->beam) {
        case BEAM_UNKNOWN:
                snprintf(reason, n, "waiting for beam reports");
                return KM_PLUGIN_DOWN;
        case BEAM_NONE:
                snprintf(reason, n, "no beam");
                return KM_PLUGIN_DOWN;
        case BEAM_WEAK:
                if (s->weak_refused) {
                        snprintf(reason, n, "weak signal: power not locked");
                        return KM_PLUGIN_DOWN;
                }
                snprintf(reason, n, "weak beam");
                return KM_PLUGIN_DEGRADED;
        case BEAM_GOOD:
                break;
        }
        if (s->battery_low) {
                snprintf(reason, n, "battery low");
                return KM_PLUGIN_DEGRADED;
        }
        snprintf(reason, n, "card %07u ready", s->card.id);
        return KM_PLUGIN_UP;
}

/* Tells the host on a change of state, reason or MTU, or a signal move of 10 or more;
 * force: also when only next_send_ms is news. */
static void report(struct bd *s, bool force)
{
        uint64_t now = kmp_now_us();
        char reason[400];
        int signal;
        enum km_plugin_state st = state_now(s, now, reason, sizeof(reason), &signal);
        uint32_t mtu = s->card_known && s->card.id && s->card_mtu >= BD_FRAME_MIN ? s->card_mtu : 0;
        bool change = !s->reported || st != s->r_state || strcmp(reason, s->r_reason) != 0 ||
                      (mtu && mtu != s->r_mtu) || abs(signal - s->r_signal) >= 10 || (signal < 0) != (s->r_signal < 0);
        if (!change && !force)
                return;
        s->reported = true;
        s->r_state = st;
        snprintf(s->r_reason, sizeof(s->r_reason), "%s", reason);
        s->r_signal = signal;
        if (mtu)
                s->r_mtu = mtu;
        uint64_t wait = s->next_ok > now ? s->next_ok - now : 0;
        struct km_plugin_report r = { .struct_size = sizeof(r),
                                      .state = st,
                                      .reason = reason,
                                      .signal = signal,
                                      .mtu = mtu,
                                      .next_send_ms = (uint32_t)((wait + 999) / 1000) };
        s->api->report(s->h, &r);
}

/* A beam state holds for `settle` before it counts; the first one counts at once. */
static void beam_update(struct bd *s, uint64_t now, enum bd_beam raw)
{
        if (raw != s->beam_raw) {
                s->beam_raw = raw;
                s->beam_raw_since = now;
        }
        if (s->beam == BEAM_UNKNOWN || (s->beam != raw && now - s->beam_raw_since >= s->c.settle_us)) {
                if (s->beam != raw && s->beam != BEAM_UNKNOWN)
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "beidou: beams now %s (%u listed, %u usable, best %u)",
                                    raw == BEAM_GOOD ? "good" : raw == BEAM_WEAK ? "weak" : "gone", s->beams.n,
                                    s->beams.above, s->beams.best);
                s->beam = raw;
        }
        if (s->beam == BEAM_GOOD)
                s->weak_refused = false;
}

static void hold(struct bd *s, uint64_t now, uint64_t dur, const char *why)
{
        snprintf(s->hold_reason, sizeof(s->hold_reason), "%s", why);
        s->hold_until = now + dur;
}

/* ---- sentences from the module ------------------------------------------------- */

static void on_card(struct bd *s, const struct rdss_card *c)
{
        bool was = s->card_known && s->card.id;
        uint32_t mtu = c->id ? card_mtu(s, c) : 0;
        if (!s->card_known || c->id != s->card.id || c->interval_s != s->card.interval_s || c->level != s->card.level) {
                if (c->id)
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                                    "beidou: card %07u (%s), class %u, service interval %u s, level %u%s: frames of %u B "
                                    "(%s coding), to card %07u",
                                    c->id, proto_name(s->proto), c->cls, c->interval_s, c->level,
                                    c->encrypted ? ", encrypted" : "", mtu, s->c.mixed ? "mixed" : "code", s->c.peer);
                else if (was || !s->card_known)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: no IC card in the module");
        }
        s->card = *c;
        s->card_mtu = mtu;
        s->card_known = true;
        s->card_query_at = kmp_now_us() + (c->id ? s->c.card_poll_us : card_retry_us(s));
}

static void on_fki(struct bd *s, const struct rdss_fki *k, uint64_t now)
{
        const char *want = s->proto == P_V21 ? "TXA" : s->proto == P_40 ? "TXSQ" : "TCQ";
        if (!s->pending || s->resend_at || strcmp(k->cmd, want) != 0) {
                s->n_unexpected++;
                return;
        }
        uint64_t interval = US(s->card.interval_s);
        if (k->exec) {
                s->pending = false;
                s->n_sent++;
                /* 2.1 puts the card's interval in the wait field of a success. */
                if (k->v21 && k->wait_s)
                        interval = US(k->wait_s);
                s->next_ok = now + interval;
                s->battery_low = k->v21 && k->code == 2;
                s->api->sent(s->h, s->token, 0);
                report(s, true);
                return;
        }
        /* Refused. Which of the 2.1 fields says "interval not elapsed" is not in the
         * sources [U]: a wait with no suppression is read as the time left. */
        bool early = k->v21 ? k->code == 0 && k->wait_s > 0 : k->v40 ? k->code == 4 : k->code == 1;
        if (early) {
                uint64_t w = US(k->wait_s ? k->wait_s : 1);
                s->n_early++;
                s->resend_at = s->next_ok = now + w;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                            "beidou: the card's service interval has not elapsed; the frame goes again in %u s",
                            k->wait_s ? k->wait_s : 1);
                report(s, true);
                return;
        }
        if (((!k->v21 && !k->v40 && k->code == 11) || (k->v40 && k->code == 6)) && s->resends < BD_MAX_RESENDS) {
                /* The module saw a bad checksum: the line was hit on the way. */
                s->resends++;
                s->resend_at = now + 1;
                return;
        }
        const char *why;
        int err;
        uint64_t dur = s->c.refusal_us;
        if (k->v40) {
                switch (k->code) {
                case 2:
                        why = "weak signal: power not locked";
                        err = -ENETDOWN;
                        dur = s->c.settle_us;
                        s->weak_refused = true;
                        if (s->beam == BEAM_GOOD) {
                                s->beam = s->beam_raw = BEAM_WEAK;
                                s->beam_raw_since = now;
                        }
                        break;
                case 3: why = "battery low"; err = -EBUSY; break;
                case 5: why = "encryption error at the module"; err = -EIO; dur = s->c.settle_us; break;
                case 6: why = "checksum errors at the module"; err = -EIO; dur = s->c.settle_us; break;
                case 7: why = "transmission suppressed"; err = -EBUSY; break;
                default:
                        /* 1 "failed" says no more: read the card again (no card reads as
                         * address 0) and wait a settle. */
                        why = "refused by the module";
                        err = -EIO;
                        dur = s->c.settle_us;
                        s->card_known = false;
                        query_card(s);
                        break;
                }
        } else if (k->v21) {
                switch (k->code) {
                case 1: why = "transmission suppressed"; err = -EBUSY; break;
                case 2: why = "battery low"; err = -EBUSY; break;
                case 3: why = "radio silence"; err = -EBUSY; break;
                default:
                        /* Nothing said why: read the card again (a pulled card reads
                         * as all zeros) and wait a settle. */
                        why = "refused by the module";
                        err = -EIO;
                        dur = s->c.settle_us;
                        s->card_known = false;
                        query_card(s);
                        break;
                }
        } else {
                switch (k->code) {
                case 2: why = "transmission suppressed"; err = -EBUSY; break;
                case 3: why = "radio silence"; err = -EBUSY; break;
                case 4:
                        /* Not again on this beam: only a good one, held for a settle. */
                        why = "weak signal: power not locked";
                        err = -ENETDOWN;
                        dur = s->c.settle_us;
                        s->weak_refused = true;
                        if (s->beam == BEAM_GOOD) {
                                s->beam = BEAM_WEAK;
                                s->beam_raw = BEAM_WEAK;
                                s->beam_raw_since = now;
                        }
                        break;
                case 5: why = "no IC card"; err = -ENODEV; break;
                case 6: why = "no permission to send"; err = -EACCES; break;
                case 11: why = "checksum errors at the module"; err = -EIO; dur = s->c.settle_us; break;
                default: why = "refused by the module"; err = -EIO; dur = s->c.settle_us; break;
                }
        }
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: the module refused a frame: %s (%s %u)", why,
                    k->v21 ? "2.1 suppression code" : k->v40 ? "4.0 FKXX flag" : "BDS-3 reason code", k->code);
        if (!k->v21 && !k->v40 && k->code == 5) {
                s->card.id = 0; /* DOWN until the card reads back */
                s->card_query_at = now + card_retry_us(s);
        } else {
                hold(s, now, dur ? dur : 1, why);
        }
        give_back(s, err);
        report(s, false);
}

static void on_message(struct bd *s, const struct rdss_msg *m)
{
        ssize_t n = rdss_hex_decode(s->frame, sizeof(s->frame), m->hex);
        bool mixed = s->proto == P_V21 ? m->coding == 2 : s->proto == P_40 ? s->c.mixed : m->coding == 3;
        if (n < 0) {
                s->n_rx_bad++;
                long sup = kmp_ratelimit(&s->rl_rx, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                    "beidou: a message from card %07u has an odd hex length; dropped (%ld more suppressed)",
                                    m->from, sup);
                return;
        }
        const uint8_t *p = s->frame;
        if (mixed && n > 0 && p[0] == 0xA4) {
                p++;
                n--;
        }
        s->n_rx++;
        if (n > 0)
                s->api->received(s->h, p, (size_t)n);
}

static void garbled(struct bd *s, const char *line, size_t len, int err)
{
        char show[48];
        size_t k = 0;
        s->n_garbled++;
        long sup = kmp_ratelimit(&s->rl_garbled, kmp_now_us());
        if (sup < 0)
                return;
        for (size_t i = 0; i < len && k + 5 < sizeof(show) && i < 40; i++) {
                unsigned char c = (unsigned char)line[i];
                if (c >= 0x20 && c < 0x7f && c != '\\')
                        show[k++] = (char)c;
                else
                        k += (size_t)snprintf(show + k, sizeof(show) - k, "\\x%02x", c);
        }
        show[k] = '\0';
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: garbled line from the module (%s): \"%s\"; %llu so far (%ld more suppressed)",
                    rdss_strerror(err), show, (unsigned long long)s->n_garbled, sup);
}

static void on_line(struct bd *s, const char *line, size_t len)
{
        uint64_t now = kmp_now_us();
        /* A sentence has one "$": what comes before the last one is the rest of a line
         * cut short. */
        const char *d = NULL;
        for (size_t i = len; i-- > 0;)
                if (line[i] == '$') {
                        d = line + i;
                        break;
                }
        size_t skip = d ? (size_t)(d - line) : len;
        bool junk = false;
        for (size_t i = 0; i < skip; i++)
                if (line[i] != '\r' && line[i] != '\n' && line[i] != ' ' && line[i] != '\0')
                        junk = true;
        if (junk)
                garbled(s, line, skip, RDSS_E_FORMAT);
        if (!d)
                return;
        len -= skip;
        int r = rdss_parse(d, len, &s->sen);
        if (r < 0) {
                garbled(s, d, len, r);
                return;
        }
        struct rdss_sentence *sen = &s->sen;
        s->n_lines++;
        s->last_line_at = now;
        if (s->silent) {
                s->silent = false;
                s->card_known = false;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "beidou: the module speaks again; reading the card");
                query_card(s);
        }
        const char *id = sen->id;
        if (strcmp(id, "PWI") == 0 && s->proto != P_V21) {
                struct rdss_beams b;
                if ((r = rdss_parse_pwi(sen, (unsigned)s->c.min_s2c, &b)) < 0)
                        goto bad;
                if (s->proto == P_AUTO) {
                        s->proto = P_BDS3;
                        query_card(s);
                }
                if (s->had_time && !b.has_time) {
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: the module restarted (its time is 000000.00)");
                        s->card_known = false;
                        s->beam = BEAM_UNKNOWN;
                        query_card(s);
                }
                s->had_time = b.has_time;
                s->beams = b;
                s->last_beam_at = now;
                if (b.has_time)
                        beam_update(s, now, b.above ? BEAM_GOOD : b.n ? BEAM_WEAK : BEAM_NONE);
        } else if (strcmp(id, "BSI") == 0 && s->proto != P_BDS3) {
                struct rdss_beams b;
                if ((r = rdss_parse_bsi(sen, (unsigned)s->c.min_power, &b)) < 0)
                        goto bad;
                if (s->proto == P_AUTO) {
                        s->proto = P_V21;
                        query_card(s);
                }
                s->beams = b;
                s->last_beam_at = now;
                beam_update(s, now, b.above ? BEAM_GOOD : b.best ? BEAM_WEAK : BEAM_NONE);
        } else if (strcmp(id, "ICP") == 0 && s->proto != P_V21) {
                struct rdss_card c;
                if ((r = rdss_parse_icp(sen, &c)) < 0)
                        goto bad;
                s->proto = P_BDS3;
                on_card(s, &c);
        } else if (strcmp(id, "ICI") == 0 && s->proto != P_BDS3) {
                struct rdss_card c;
                if ((r = rdss_parse_ici(sen, &c)) < 0)
                        goto bad;
                s->proto = P_V21;
                on_card(s, &c);
        } else if (strcmp(id, "FKI") == 0) {
                struct rdss_fki k;
                if ((r = rdss_parse_fki(sen, &k)) < 0)
                        goto bad;
                on_fki(s, &k, now);
        } else if (strcmp(id, "TCI") == 0 || strcmp(id, "TXR") == 0) {
                struct rdss_msg m;
                if ((r = id[1] == 'C' ? rdss_parse_tci(sen, &m) : rdss_parse_txr(sen, &m)) < 0)
                        goto bad;
                on_message(s, &m);
        }
        /* Anything else ($BDZDA, $GNRMC from the RNSS side, $BDHZR ...) is not ours. */
        report(s, false);
        return;
bad:
        garbled(s, d, len, r);
}

/* One binary frame of the 4.0 set. */
static void on_frame40(struct bd *s, const struct rdss40 *f)
{
        uint64_t now = kmp_now_us();
        const uint8_t *b = f->body;
        s->n_lines++;
        s->last_line_at = now;
        if (s->silent) {
                s->silent = false;
                s->card_known = false;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "beidou: the module speaks again; reading the card");
                query_card(s);
        }
        if (strcmp(f->id, "ICXX") == 0 && f->blen >= 11) {
                /* frame no, broadcast id u24, user type, interval u16, level, encryption,
                 * subordinates u16 [B11, B12]; the card is the header's address. */
                struct rdss_card c = { .id = f->addr, .cls = b[4], .interval_s = (unsigned)b[5] << 8 | b[6],
                                       .level = b[7], .encrypted = b[8] != 0 };
                on_card(s, &c);
        } else if (strcmp(f->id, "GLZK") == 0 && f->blen >= 6) {
                struct rdss_beams bm = { .has_time = true };
                for (int i = 0; i < 6; i++) {
                        bm.n++;
                        if (b[i] > bm.best)
                                bm.best = b[i];
                        if (b[i] >= s->c.min_power)
                                bm.above++;
                }
                s->beams = bm;
                s->last_beam_at = now;
                beam_update(s, now, bm.above ? BEAM_GOOD : bm.best ? BEAM_WEAK : BEAM_NONE);
        } else if (strcmp(f->id, "FKXX") == 0 && f->blen >= 5) {
                /* flag + 4 extra bytes; flag 4 has the seconds left in extra[3] [B12]. */
                struct rdss_fki k = { .v40 = true, .exec = b[0] == 0, .freq_ok = true, .code = b[0],
                                      .wait_s = b[0] == 4 ? b[4] : 0 };
                memcpy(k.cmd, "TXSQ", 5);
                if (b[0] == 8) /* suppression released: news, not an answer */
                        s->hold_until = 0;
                else
                        on_fki(s, &k, now);
        } else if (strcmp(f->id, "TXXX") == 0 && f->blen >= 9) {
                /* class, sender u24, hour, minute, bits u16, data, CRC flag [B11] */
                size_t bits = (size_t)b[6] << 8 | b[7], n = (bits + 7) / 8;
                if (9 + n > f->blen || b[8 + n] != 0) {
                        s->n_rx_bad++;
                        long sup = kmp_ratelimit(&s->rl_rx, now);
                        if (sup >= 0)
                                s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                            "beidou: a $TXXX with a CRC error or a bad length; dropped (%ld more suppressed)", sup);
                } else {
                        const uint8_t *p = b + 8;
                        if (s->c.mixed && n && p[0] == 0xA4) {
                                p++;
                                n--;
                        }
                        s->n_rx++;
                        if (n)
                                s->api->received(s->h, p, n);
                }
        }
        report(s, false);
}

static void on_bytes40(struct bd *s)
{
        size_t off = 0;
        while (off < s->rxlen && s->fd >= 0) {
                const uint8_t *p = (const uint8_t *)s->rx + off;
                size_t left = s->rxlen - off;
                if (p[0] != '$') {
                        const uint8_t *d = memchr(p, '$', left);
                        size_t skip = d ? (size_t)(d - p) : left;
                        garbled(s, (const char *)p, skip, RDSS_E_FORMAT);
                        off += skip;
                        continue;
                }
                struct rdss40 f;
                ssize_t r = rdss40_parse(p, left, &f);
                if (r == 0)
                        break;
                if (r < 0) {
                        /* Not a frame here: skip the "$" and look for the next one. */
                        const uint8_t *d = memchr(p + 1, '$', left - 1);
                        size_t skip = d ? (size_t)(d - p) : left;
                        garbled(s, (const char *)p, skip, (int)r);
                        off += skip;
                        continue;
                }
                on_frame40(s, &f);
                off += (size_t)r;
        }
        if (s->fd < 0)
                return;
        memmove(s->rx, s->rx + off, s->rxlen - off);
        s->rxlen -= off;
}

static bool answer40(const char *id)
{
        return !strcmp(id, "ICXX") || !strcmp(id, "GLZK") || !strcmp(id, "FKXX") || !strcmp(id, "TXXX") ||
               !strcmp(id, "ZJXX");
}

/*
 * protocol = auto: a whole 4.0 frame from the module among the first len bytes of rx
 * settles the dialect as 4.0, and the bytes from it on go to the binary reader.
 * Returns how far the bytes may be cut into ASCII lines: up to a "$" that may start a
 * frame whose rest has not come yet (an ASCII sentence never can: its bytes 5 and 6,
 * the frame's length, are printable, > RDSS40_MAX), else all of them.
 */
static size_t auto_scan40(struct bd *s, size_t len)
{
        for (size_t i = 0; i < len; i++) {
                if (s->rx[i] != '$')
                        continue;
                struct rdss40 f;
                ssize_t r = rdss40_parse((const uint8_t *)s->rx + i, len - i, &f);
                if (r == 0)
                        return i;
                if (r < 0 || !answer40(f.id))
                        continue;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "beidou: the module answers in the binary 4.0 set ($%s)", f.id);
                s->proto = P_40;
                memmove(s->rx, s->rx + i, len - i);
                s->rxlen = len - i;
                query_card(s);
                on_bytes40(s);
                return 0;
        }
        return len;
}

static void on_readable(struct bd *s)
{
        for (int burst = 0; burst < 16 && s->fd >= 0; burst++) {
                ssize_t n = read(s->fd, s->rx + s->rxlen, sizeof(s->rx) - s->rxlen);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n <= 0) {
                        char why[96];
                        snprintf(why, sizeof(why), "read: %s", n < 0 ? strerror(errno) : "end of file (unplugged?)");
                        dev_lost(s, why);
                        return;
                }
                if (s->proto == P_40) {
                        s->rxlen += (size_t)n;
                        on_bytes40(s);
                        continue;
                }
                size_t len = s->rxlen + (size_t)n, start = 0, upto = len, from = s->rxlen;
                if (s->proto == P_AUTO) {
                        upto = auto_scan40(s, len);
                        if (s->proto == P_40)
                                continue;
                        from = 0; /* bytes held back last time as a possible frame */
                }
                for (size_t i = from; i < upto; i++) {
                        if (s->rx[i] != '\n')
                                continue;
                        if (!s->rx_skip)
                                on_line(s, s->rx + start, i - start);
                        else
                                s->rx_skip = false;
                        start = i + 1;
                        if (s->fd < 0)
                                return;
                }
                memmove(s->rx, s->rx + start, len - start);
                s->rxlen = len - start;
                if (s->rxlen == sizeof(s->rx)) {
                        garbled(s, s->rx, s->rxlen, RDSS_E_LONG);
                        s->rxlen = 0;
                        s->rx_skip = true;
                }
        }
}

static void on_io(void *ud, int fd, uint32_t revents)
{
        struct bd *s = ud;
        (void)fd;
        if (revents & EPOLLIN)
                on_readable(s);
        if (s->fd >= 0 && (revents & EPOLLOUT))
                flush_out(s);
        if (s->fd >= 0 && (revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLIN))
                dev_lost(s, "hang-up (unplugged?)");
}

/* ---- the tick ------------------------------------------------------------------- */

static void on_tick(void *ud);

static void tick(struct bd *s)
{
        uint64_t now = kmp_now_us();
        if (s->fd < 0) {
                if (now >= s->reopen_at)
                        dev_open(s);
        } else {
                if (!s->silent && now - s->last_line_at >= s->c.silence_us) {
                        s->silent = true;
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: the module has said nothing for %.1f s",
                                    (double)(now - s->last_line_at) / 1e6);
                        give_back(s, -ETIMEDOUT);
                        /* Ask again now and every 2 s: a 2.1 or 4.0 module that restarted
                         * reports beams only when asked. */
                        s->card_known = false;
                        s->card_query_at = now;
                }
                /* Beam reports stopped while other lines come (a 2.1 or 4.0 module that
                 * restarted and forgot $CCRMO/$GLJC while messages still arrive): as
                 * good as no beam, and ask for them again every 2 s. */
                if (s->last_beam_at && now - s->last_beam_at >= s->c.silence_us) {
                        s->beams = (struct rdss_beams){ .has_time = s->beams.has_time };
                        beam_update(s, now, BEAM_NONE);
                        if (now >= s->beam_ask_at) {
                                if (!s->beam_ask_at || now - s->beam_ask_at > card_retry_us(s))
                                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                                    "beidou: no beam report for %.1f s; asking the module again",
                                                    (double)(now - s->last_beam_at) / 1e6);
                                s->beam_ask_at = now + card_retry_us(s);
                                query_card(s);
                        }
                }
                if (s->pending && s->resend_at && now >= s->resend_at) {
                        s->resend_at = 0;
                        s->fki_deadline = now + s->c.fki_us;
                        if (!put_line(s, s->line, (size_t)s->linelen))
                                give_back(s, -ENOTCONN);
                }
                if (s->pending && !s->resend_at && now >= s->fki_deadline) {
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "beidou: no $BDFKI for a send within %.1f s; reading the card",
                                    (double)s->c.fki_us / 1e6);
                        s->card_known = false;
                        query_card(s);
                        give_back(s, -ETIMEDOUT);
                }
                if (s->fd >= 0 && now >= s->card_query_at)
                        query_card(s);
        }
        report(s, false);
        if (s->want_ready && !s->pending && now >= s->next_ok && can_send(s)) {
                s->want_ready = false;
                s->api->ready(s->h);
        }
}

static void on_tick(void *ud)
{
        struct bd *s = ud;
        s->tick_id = 0;
        tick(s);
        int id = s->api->timer(s->h, BD_TICK_US, on_tick, s);
        if (id > 0)
                s->tick_id = id;
        else
                s->api->log(s->h, KM_PLUGIN_LOG_ERR, "beidou: timer: %s; the link stops", strerror(id < 0 ? -id : ENOMEM));
}

/* ---- the ops ------------------------------------------------------------------ */

static void bd_close(void *state);

static int bd_open(km_plugin_link *h, const struct km_host_api *api, void **state)
{
        struct bd_conf c;
        int r = kmp_open_conf(&opt_table, h, api, &c, sizeof(c));
        if (r < 0)
                return r;
        char why[300];
        if ((r = kmp_peer_map_covers(&c.peer_cards, api->config(h, "peers"), "peer_cards", "card", why, sizeof(why))) < 0) {
                api->log(h, KM_PLUGIN_LOG_ERR, "beidou: %s", why);
                return r;
        }
        struct bd *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->h = h;
        s->api = api;
        s->c = c;
        s->fd = -1;
        s->proto = c.proto;
        s->r_signal = -1;
        api->log(h, KM_PLUGIN_LOG_INFO, "beidou: %s at %u baud, protocol %s, to card %07u, %s coding", c.device, c.baud,
                 proto_name(c.proto), c.peer, c.mixed ? "mixed" : "code");
        dev_open(s);
        int id = api->timer(h, BD_TICK_US, on_tick, s);
        if (id <= 0) {
                bd_close(s);
                return id < 0 ? id : -ENOMEM;
        }
        s->tick_id = id;
        *state = s;
        return 0;
}

static void bd_close(void *state)
{
        struct bd *s = state;
        if (!s)
                return;
        if (s->tick_id > 0)
                s->api->cancel_timer(s->h, s->tick_id);
        dev_close(s);
        s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                    "beidou: closed; frames sent %llu, refused %llu, early %llu, received %llu (bad %llu), lines %llu, "
                    "garbled %llu, unexpected feedback %llu, output dropped %llu",
                    (unsigned long long)s->n_sent, (unsigned long long)s->n_refused, (unsigned long long)s->n_early,
                    (unsigned long long)s->n_rx, (unsigned long long)s->n_rx_bad, (unsigned long long)s->n_lines,
                    (unsigned long long)s->n_garbled, (unsigned long long)s->n_unexpected,
                    (unsigned long long)s->n_out_dropped);
        free(s);
}

static uint32_t bd_mtu(void *state)
{
        const struct bd *s = state;
        if (s->card_known && s->card.id && s->card_mtu >= BD_FRAME_MIN)
                return s->card_mtu;
        /* Before the card answers (the link is DOWN, nothing is framed): a 2.1
         * level-3 card's, so the host takes it with sealing overhead; the card's own
         * value comes with the first UP report. */
        uint32_t m = rdss_bytes_for_bits(rdss_v21_bits(3, false), s->c.mixed);
        return s->c.mtu_cap && s->c.mtu_cap < m ? (uint32_t)s->c.mtu_cap : m;
}

/* One frame to the card dest. */
static int send_card(struct bd *s, uint32_t dest, const void *frame, size_t len, uint32_t token)
{
        uint64_t now = kmp_now_us();
        char hex[2 * BD_FRAME_MAX + 4];

        if (!frame || len == 0)
                return -EINVAL;
        if (len > bd_mtu(s))
                return -EMSGSIZE;
        if (s->r_state == KM_PLUGIN_DOWN || s->fd < 0) {
                s->want_ready = true;
                return -ENOTCONN;
        }
        if (s->pending || now < s->next_ok) {
                s->want_ready = true;
                return -EAGAIN;
        }
        if (s->proto == P_40) {
                /* class 0x46 (normal, code/mixed), dest u24, bit length u16, ack 0, data */
                uint8_t body[16 + BD_FRAME_MAX];
                size_t k = 0, dl = len + (s->c.mixed ? 1 : 0);
                body[k++] = 0x46;
                body[k++] = (uint8_t)(dest >> 16);
                body[k++] = (uint8_t)(dest >> 8);
                body[k++] = (uint8_t)dest;
                body[k++] = (uint8_t)((dl * 8) >> 8);
                body[k++] = (uint8_t)(dl * 8);
                body[k++] = 0;
                if (s->c.mixed)
                        body[k++] = 0xA4;
                memcpy(body + k, frame, len);
                ssize_t fl = rdss40_build((uint8_t *)s->line, sizeof(s->line), "TXSQ", s->card.id, body, k + len);
                if (fl < 0)
                        return -EMSGSIZE;
                s->linelen = (int)fl;
                goto write;
        }
        size_t off = 0;
        if (s->c.mixed) {
                memcpy(hex, "A4", 2);
                off = 2;
        }
        rdss_hex_encode(hex + off, frame, len);
        int n;
        if (s->proto == P_V21)
                n = rdss_format(s->line, sizeof(s->line), "CCTXA,%07u,1,%d,%s", dest, s->c.mixed ? 2 : 1, hex);
        else
                n = rdss_format(s->line, sizeof(s->line), "CCTCQ,%07u,%u,1,%d,%s,0", dest, (unsigned)s->c.freq_point,
                                s->c.mixed ? 3 : 2, hex);
        if (n < 0)
                return -EMSGSIZE;
        s->linelen = n;
write:
        if (!put_line(s, s->line, (size_t)s->linelen)) {
                s->want_ready = true;
                return -ENOTCONN;
        }
        s->pending = true;
        s->token = token;
        s->resends = 0;
        s->resend_at = 0;
        s->fki_deadline = now + s->c.fki_us;
        return 0;
}

static int bd_send(void *state, const void *frame, size_t len, uint32_t token)
{
        struct bd *s = state;
        return send_card(s, s->c.peer, frame, len, token);
}

/* ABI 1.2: a center's acks to the card of the base they are for (peer_cards). */
static int bd_send_to(void *state, const char *peer, const void *frame, size_t len, uint32_t token)
{
        struct bd *s = state;
        bool found;
        uint32_t dest = kmp_peer_map_get(&s->c.peer_cards, peer, s->c.peer, &found);
        if (peer && !found && s->c.peer_cards.n) {
                long sup = kmp_ratelimit(&s->rl_peer, kmp_now_us());
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                    "beidou: no card for peer %s in peer_cards: sent to peer_card %07u (%ld more suppressed)",
                                    peer, s->c.peer, sup);
        }
        return send_card(s, dest, frame, len, token);
}

static int bd_check(km_plugin_link *h, const struct km_host_api *api, const char **key, char *why, size_t len)
{
        struct bd_conf c;
        int r = kmp_read_opts(&opt_table, h, api, &c, sizeof(c), key, why, len);
        if (r == 0 && (r = kmp_peer_map_covers(&c.peer_cards, api->config(h, "peers"), "peer_cards", "card", why, len)) < 0)
                *key = c.peer_cards.n ? "peer_cards" : "peers";
        return r;
}

static const struct km_plugin_ops ops = {
        .open = bd_open,
        .close = bd_close,
        .send = bd_send,
        .mtu = bd_mtu,
        .check = bd_check,
        .send_to = bd_send_to,
};

KMP_PLUGIN_ENTRY("beidou", "1.1", ops, keys)

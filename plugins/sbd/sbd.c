/* SPDX-License-Identifier: MIT */
/* sbd: an Iridium 9602/9603/RockBLOCK modem on a serial port as a narrow link (AT+SBDWB, +SBDIX, +SBDRB). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "plugins/common/plugin-util.h"
#include "plugins/kuimen-plugin.h"
#include "plugins/sbd/at.h"

/*
 * The modem does one thing at a time, and so does this driver: one AT command is
 * outstanding, with its own timeout, and the next is chosen when its answer (OK or
 * ERROR) is in. In order of preference the next command is
 *
 *   init (AT, ATV1, ATE0, AT&K0, AT+SBDMTA=1, AT+SBDAREG=1, AT+CIER=1,1,1, AT+CGSN, AT-MSSTM)
 *   AT+SBDRB    an MT message waits in the modem's buffer (the last session said so)
 *   AT+SBDWB=n  a frame from the host, not yet in the MO buffer
 *   AT+SBDIX    the MO buffer holds it: a session (AT+SBDIXA when answering SBDRING)
 *   AT+SBDD0    a mailbox check is due and the MO buffer still holds a sent message
 *               (a session sends whatever the MO buffer holds: it would go twice)
 *   AT+SBDIX    the mailbox check: SBDRING came, or the last session said MT queued > 0
 *   AT+CSQ      every csq_interval, for the signal in the report
 *
 * A session's MO status decides what becomes of the frame (sbd_mo_text): 0..4 it went
 * and the host gets its receipt (sent 0: with ack = receipt that releases the
 * messages); a transient failure keeps the frame in the MO buffer and retries the
 * session after a back-off (retry, doubling to retry_max; 36 waits registration_wait),
 * reporting DEGRADED with the status's meaning, until give_up has passed since the
 * first try (then sent -ETIMEDOUT); a failure that says the network or the modem is
 * unusable (32 no service, 33 antenna, 34 radio off, 16 locked, 37 SBD disabled)
 * hands the frame back (sent -ENOTCONN), reports DOWN and probes with mailbox checks
 * at the back-off until one succeeds; 12 and 14 refuse the frame (sent -EMSGSIZE).
 *
 * The modem is presumed reset when it echoes a command after ATE0 or stops answering:
 * its MO buffer and settings are gone, a frame it held is handed back (sent -EIO) and
 * init runs again. A port that fails (unplugged USB adapter, EIO, hang-up) is closed,
 * the link is DOWN and the port reopened every `reopen`.
 *
 * The host calls send() on its loop; send() only stores the frame and arms a
 * zero-delay timer (the kick), because the state machine calls sent() and ready(),
 * which the ABI forbids inside send().
 */

#define SBD_MAX_DURATION_US (86400ull * 1000000ull)
#define SBD_RB_TRIES 3

struct sbd_conf {
        char device[256];
        uint64_t baud, mtu;
        uint64_t at_timeout_us, session_timeout_us, retry_us, retry_max_us, give_up_us, reopen_us;
        uint64_t csq_interval_us, mailbox_check_us, registration_wait_us;
};

enum sbd_cmd {
        C_NONE,
        C_INIT,  /* one step of the init sequence */
        C_WB,    /* AT+SBDWB=n, before READY */
        C_WDATA, /* the bytes and their checksum, before the result */
        C_IX,    /* AT+SBDIX / AT+SBDIXA */
        C_RB,    /* AT+SBDRB */
        C_CLEAR, /* AT+SBDD0 */
        C_CSQ,   /* AT+CSQ */
};

struct sbd {
        km_plugin_link *h;
        const struct km_host_api *api;
        struct sbd_conf c;

        int fd;
        char dev_reason[160]; /* why the port is not open */
        struct sbd_rx rx;
        uint8_t tx[SBD_MO_MAX + 32];
        size_t txlen, txoff;

        /* the modem */
        bool inited;
        unsigned init_step;
        unsigned init_fails;
        bool mo_dirty; /* the MO buffer may hold a message already sent (or unknown) */
        int csq, svc;  /* -1 unknown */
        char imei[24];

        /* the command in flight and what its answer carried so far */
        enum sbd_cmd cmd;
        char cmd_text[24];
        int cmd_timer;
        bool got_result, got_ix, got_block, answering_ring;
        struct sbd_resp res;
        unsigned rb_tries;

        /* the frame */
        bool mo_have, mo_written;
        uint8_t mo[SBD_MO_MAX];
        size_t mo_len;
        uint32_t token;
        uint64_t mo_first_us;
        bool want_ready;

        /* mailbox, retries, health */
        bool mt_wait;    /* SBDRING or MT queued > 0: a session will fetch it */
        bool ring;       /* the next mailbox session answers a ring (SBDIXA) */
        bool mt_in_buf;  /* the last session put an MT message in the modem's buffer */
        bool retry_wait; /* a back-off is running: no session until it ends */
        bool probing;    /* DOWN by an MO status: the next session is a probe */
        unsigned fails;  /* consecutive failed sessions */
        int retry_timer, kick_timer, csq_timer, reopen_timer, mailbox_timer;
        bool csq_due;
        enum km_plugin_state state;
        char reason[160];
        char fail_reason[160]; /* the last session failure, while it holds */
        bool fail_down;

        unsigned long n_sessions, n_mo, n_mo_failed, n_mt, n_mt_bad, n_garbled, n_resets, n_timeouts;
        struct kmp_ratelimit rl_garbled;
};

/* ---- configuration ---------------------------------------------------------- */

enum { OPT_UINT = KMP_OPT_UINT, OPT_DURATION = KMP_OPT_DURATION, OPT_PATH = KMP_OPT_CUSTOM, OPT_BAUD };

#define CONF(f) offsetof(struct sbd_conf, f)
#define US(s) ((uint64_t)(s) * 1000000ull)

static const struct kmp_opt opts[] = {
        { "device", OPT_PATH, NULL, CONF(device), 0, 0, "serial port of the modem, e.g. /dev/ttyUSB0" },
        { "baud", OPT_BAUD, "19200", CONF(baud), 0, 0, "serial speed (the 9602/9603 default is 19200)" },
        { "mtu", OPT_UINT, "270", CONF(mtu), 64, SBD_MO_MAX,
          "largest frame: 270, the far modem's MT limit; up to 340 (the MO limit) only when nothing "
          "on the far side is a modem" },
        { "at_timeout", OPT_DURATION, "20s", CONF(at_timeout_us), 100000, US(600),
          "how long the modem may take to answer a command other than a session" },
        { "session_timeout", OPT_DURATION, "60s", CONF(session_timeout_us), 100000, US(3600),
          "how long an AT+SBDIX session may take" },
        { "retry", OPT_DURATION, "10s", CONF(retry_us), 10000, US(3600), "back-off after the first failed session" },
        { "retry_max", OPT_DURATION, "300s", CONF(retry_max_us), 10000, US(86400),
          "longest back-off (it doubles from retry)" },
        { "give_up", OPT_DURATION, "600s", CONF(give_up_us), 10000, US(86400),
          "after this long failing, a frame goes back to the host (sent -ETIMEDOUT)" },
        { "reopen", OPT_DURATION, "5s", CONF(reopen_us), 10000, US(3600),
          "retry period of a port that cannot be opened or a modem that does not answer" },
        { "csq_interval", OPT_DURATION, "20s", CONF(csq_interval_us), 0, US(86400),
          "poll AT+CSQ this often when idle (0: only +CIEV)" },
        { "mailbox_check", OPT_DURATION, "0", CONF(mailbox_check_us), 0, US(86400),
          "a mailbox session this often even without SBDRING (0: only on SBDRING and MT queued)" },
        { "registration_wait", OPT_DURATION, "180s", CONF(registration_wait_us), 0, US(3600),
          "back-off after MO status 36 (the modem registered less than 3 minutes ago)" },
};

static const char *const keys[] = { "device", "baud", "mtu", "at_timeout", "session_timeout", "retry", "retry_max",
                                    "give_up", "reopen", "csq_interval", "mailbox_check", "registration_wait", NULL };
_Static_assert(sizeof(keys) / sizeof(keys[0]) == sizeof(opts) / sizeof(opts[0]) + 1, "keys[] mirrors opts[]");

/* The device path and the line speed; the numbers and durations are the reader's. */
static const char *parse_custom(const struct kmp_opt *o, const char *v, void *conf, char *why, size_t n)
{
        struct sbd_conf *c = conf;
        void *dst = (char *)conf + o->off;
        const char *bad = NULL;
        switch (o->type) {
        case OPT_PATH:
                if (*v != '/')
                        bad = "not an absolute path";
                else if (strlen(v) >= sizeof(c->device))
                        bad = "too long";
                else
                        strcpy(dst, v);
                break;
        case OPT_BAUD:
                bad = kmp_parse_uint(v, dst, 1, 10000000, why, n);
                if (!bad && !kmp_baud_known(*(uint64_t *)dst))
                        bad = "not a serial speed (" KMP_BAUDS ")";
                break;
        default: bad = "unknown option type"; break;
        }
        return bad;
}

/* The checks across keys, once each key has parsed on its own. */
static int check_keys(void *conf, const char **key, char *why, size_t wn)
{
        struct sbd_conf *c = conf;
        if (c->retry_max_us < c->retry_us) {
                *key = "retry_max";
                snprintf(why, wn, "sbd: retry_max: shorter than retry");
                return -EINVAL;
        }
        return 0;
}

static const struct kmp_opt_table opt_table = {
        .name = "sbd", .opts = opts, .n = sizeof(opts) / sizeof(opts[0]),
        .check_keys = check_keys, .parse = parse_custom
};

/* ---- reports ---------------------------------------------------------------- */

/* The link's health from what the driver knows now, told to the host on a change. */
static void report(struct sbd *s)
{
        struct km_plugin_report r = { .struct_size = sizeof(r), .signal = s->csq < 0 ? -1 : s->csq * 20,
                                      .mtu = (uint32_t)s->c.mtu };
        char why[160];
        if (s->fd < 0) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "%s", s->dev_reason);
        } else if (!s->inited) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "%s", s->init_fails ? "modem not answering" : "initialising the modem");
        } else if (s->fail_reason[0] && s->fail_down) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "%s", s->fail_reason);
        } else if (s->svc == 0) {
                r.state = KM_PLUGIN_DOWN;
                snprintf(why, sizeof(why), "no network service (+CIEV)");
        } else if (s->fail_reason[0]) {
                r.state = KM_PLUGIN_DEGRADED;
                snprintf(why, sizeof(why), "%s", s->fail_reason);
        } else if (s->csq >= 0 && s->csq <= 1) {
                r.state = KM_PLUGIN_DEGRADED;
                snprintf(why, sizeof(why), "weak signal (CSQ %d)", s->csq);
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

static void kick(struct sbd *s);

/* Hands the frame back to the host (it goes again, here or on another link). The
 * state is settled first: the host may call send() from inside sent(). */
static void give_back(struct sbd *s, int err)
{
        if (!s->mo_have)
                return;
        uint32_t token = s->token;
        s->mo_have = false;
        s->mo_written = false;
        if (err)
                s->n_mo_failed++;
        else
                s->n_mo++;
        s->api->sent(s->h, token, err);
}

static void maybe_ready(struct sbd *s)
{
        if (s->want_ready && !s->mo_have && s->state != KM_PLUGIN_DOWN) {
                s->want_ready = false;
                s->api->ready(s->h);
        }
}

/* ---- the port ------------------------------------------------------------------ */

static void close_port(struct sbd *s)
{
        if (s->fd >= 0) {
                s->api->unwatch_fd(s->h, s->fd);
                close(s->fd);
        }
        s->fd = -1;
        s->txlen = s->txoff = 0;
}

static void on_io(void *ud, int fd, uint32_t revents);
static void on_reopen(void *ud);
static void start_cmd(struct sbd *s, enum sbd_cmd cmd, const char *text, uint64_t timeout_us);

static void cancel(struct sbd *s, int *id)
{
        if (*id > 0)
                s->api->cancel_timer(s->h, *id);
        *id = 0;
}

/* Forgets the modem: nothing in flight, init from the start. The caller reports and
 * then hands a held frame back (down_and_give_back): the host must see DOWN before it
 * can send again from inside sent(). */
static void forget_modem(struct sbd *s)
{
        cancel(s, &s->cmd_timer);
        cancel(s, &s->retry_timer);
        s->cmd = C_NONE;
        s->inited = false;
        s->init_step = 0;
        s->mo_dirty = true;
        s->mt_in_buf = false;
        s->retry_wait = false;
        s->csq = s->svc = -1;
        sbd_rx_reset(&s->rx);
}

/* Reports, and when that says DOWN hands a held frame back with err: the host replays
 * its messages elsewhere, and a frame kept here would go a second time later. */
static void down_and_give_back(struct sbd *s, int err)
{
        report(s);
        if (s->state == KM_PLUGIN_DOWN && s->mo_have)
                give_back(s, err);
}

static void arm_reopen(struct sbd *s)
{
        if (s->reopen_timer > 0)
                return;
        int id = s->api->timer(s->h, s->c.reopen_us, on_reopen, s);
        s->reopen_timer = id > 0 ? id : 0;
}

/* The port failed: DOWN with why, and a reopen later. */
static void port_lost(struct sbd *s, const char *why)
{
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: %s: %s; reopening every %.1f s", s->c.device, why,
                    (double)s->c.reopen_us / 1e6);
        snprintf(s->dev_reason, sizeof(s->dev_reason), "%s", why);
        close_port(s);
        forget_modem(s);
        s->init_fails = 0;
        arm_reopen(s);
        down_and_give_back(s, -ENOTCONN);
}

/* Opens and sets up the port (raw 8N1, no flow control: the init sends AT&K0 to
 * match). Returns 0 or -errno with dev_reason set. */
static int open_port(struct sbd *s)
{
        int fd = kmp_serial_open(s->c.device, s->c.baud, s->dev_reason, sizeof(s->dev_reason));
        if (fd < 0)
                return fd;
        int r = s->api->watch_fd(s->h, fd, EPOLLIN, on_io, s);
        if (r < 0) {
                close(fd);
                snprintf(s->dev_reason, sizeof(s->dev_reason), "watch_fd: %s", strerror(-r));
                return r;
        }
        s->fd = fd;
        s->dev_reason[0] = '\0';
        sbd_rx_reset(&s->rx);
        return 0;
}

static void on_reopen(void *ud)
{
        struct sbd *s = ud;
        s->reopen_timer = 0;
        if (s->fd < 0) {
                char was[sizeof(s->dev_reason)];
                snprintf(was, sizeof(was), "%s", s->dev_reason);
                if (open_port(s) < 0) {
                        if (strcmp(was, s->dev_reason) != 0) {
                                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: %s: %s", s->c.device, s->dev_reason);
                                report(s);
                        }
                        arm_reopen(s);
                        return;
                }
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sbd: %s opened at %llu baud", s->c.device,
                            (unsigned long long)s->c.baud);
                report(s);
        }
        /* A modem that stopped answering: init again from the start. */
        if (!s->inited && s->cmd == C_NONE)
                kick(s);
}

/* Writes what is queued; the rest goes when the port can take it (EPOLLOUT). */
static void flush_tx(struct sbd *s)
{
        while (s->fd >= 0 && s->txoff < s->txlen) {
                ssize_t n = write(s->fd, s->tx + s->txoff, s->txlen - s->txoff);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK) {
                                s->api->watch_fd(s->h, s->fd, EPOLLIN | EPOLLOUT, on_io, s);
                                return;
                        }
                        char why[96];
                        snprintf(why, sizeof(why), "write: %s", strerror(errno));
                        port_lost(s, why);
                        return;
                }
                s->txoff += (size_t)n;
        }
        if (s->fd >= 0 && s->txoff == s->txlen) {
                s->txoff = s->txlen = 0;
                s->api->watch_fd(s->h, s->fd, EPOLLIN, on_io, s);
        }
}

static void put(struct sbd *s, const void *p, size_t n)
{
        if (s->txlen + n > sizeof(s->tx))
                return; /* cannot happen: one command at a time, the largest is 342 bytes */
        memcpy(s->tx + s->txlen, p, n);
        s->txlen += n;
}

/* ---- the state machine -------------------------------------------------------- */

/* ATV1 early: a modem left in numeric mode (ATV0) answers "0\r" for OK and "4\r" for
 * ERROR, which init takes as such until ATV1 makes answers verbose. */
static const char *const init_cmds[] = { "AT",           "ATV1",          "ATE0",    "AT&K0",   "AT+SBDMTA=1",
                                         "AT+SBDAREG=1", "AT+CIER=1,1,1", "AT+CGSN", "AT-MSSTM" };
#define N_INIT (sizeof(init_cmds) / sizeof(init_cmds[0]))

static void on_cmd_timeout(void *ud);

static void start_cmd(struct sbd *s, enum sbd_cmd cmd, const char *text, uint64_t timeout_us)
{
        char line[40];
        s->cmd = cmd;
        snprintf(s->cmd_text, sizeof(s->cmd_text), "%s", text);
        s->got_result = s->got_ix = s->got_block = false;
        memset(&s->res, 0, sizeof(s->res));
        int n = snprintf(line, sizeof(line), "%s\r", text);
        put(s, line, (size_t)n);
        cancel(s, &s->cmd_timer);
        int id = s->api->timer(s->h, timeout_us, on_cmd_timeout, s);
        s->cmd_timer = id > 0 ? id : 0;
        flush_tx(s);
}

static void start_wb(struct sbd *s)
{
        char text[24];
        snprintf(text, sizeof(text), "AT+SBDWB=%zu", s->mo_len);
        start_cmd(s, C_WB, text, s->c.at_timeout_us);
}

static void on_retry(void *ud);
static void on_csq_due(void *ud);
static void on_mailbox_due(void *ud);

static uint64_t backoff_us(const struct sbd *s, long status)
{
        uint64_t b = s->c.retry_us;
        for (unsigned i = 1; i < s->fails && b < s->c.retry_max_us; i++)
                b *= 2;
        if (b > s->c.retry_max_us)
                b = s->c.retry_max_us;
        if (status == 36 && b < s->c.registration_wait_us)
                b = s->c.registration_wait_us;
        return b;
}

static void arm_retry(struct sbd *s, uint64_t us)
{
        cancel(s, &s->retry_timer);
        int id = s->api->timer(s->h, us, on_retry, s);
        s->retry_timer = id > 0 ? id : 0;
        s->retry_wait = id > 0;
}

/* Chooses and starts the next command when none is in flight. */
static void next(struct sbd *s)
{
        if (s->fd < 0 || s->cmd != C_NONE)
                return;
        if (!s->inited) {
                start_cmd(s, C_INIT, init_cmds[s->init_step], s->c.at_timeout_us);
                return;
        }
        if (s->mt_in_buf) {
                sbd_rx_expect_block(&s->rx);
                start_cmd(s, C_RB, "AT+SBDRB", s->c.at_timeout_us);
                return;
        }
        if (s->mo_have && !s->mo_written && !s->retry_wait && !s->probing && !(s->fail_down && s->fail_reason[0])) {
                start_wb(s);
                return;
        }
        if (!s->retry_wait) {
                if (s->mo_have && s->mo_written) {
                        s->answering_ring = s->ring;
                        start_cmd(s, C_IX, s->ring ? "AT+SBDIXA" : "AT+SBDIX", s->c.session_timeout_us);
                        return;
                }
                if (s->mt_wait || s->probing) {
                        if (s->mo_dirty) {
                                start_cmd(s, C_CLEAR, "AT+SBDD0", s->c.at_timeout_us);
                                return;
                        }
                        s->answering_ring = s->ring;
                        start_cmd(s, C_IX, s->ring ? "AT+SBDIXA" : "AT+SBDIX", s->c.session_timeout_us);
                        return;
                }
        }
        if (s->csq_due) {
                s->csq_due = false;
                start_cmd(s, C_CSQ, "AT+CSQ", s->c.at_timeout_us);
        }
}

static void on_kick(void *ud)
{
        struct sbd *s = ud;
        s->kick_timer = 0;
        next(s);
}

/* Runs next() from the loop, outside whatever host call we are in. */
static void kick(struct sbd *s)
{
        if (s->kick_timer > 0)
                return;
        int id = s->api->timer(s->h, 0, on_kick, s);
        s->kick_timer = id > 0 ? id : 0;
}

static void on_retry(void *ud)
{
        struct sbd *s = ud;
        s->retry_timer = 0;
        s->retry_wait = false;
        next(s);
}

static void arm_csq(struct sbd *s)
{
        if (!s->c.csq_interval_us)
                return;
        cancel(s, &s->csq_timer);
        int id = s->api->timer(s->h, s->c.csq_interval_us, on_csq_due, s);
        s->csq_timer = id > 0 ? id : 0;
}

static void on_csq_due(void *ud)
{
        struct sbd *s = ud;
        s->csq_timer = 0;
        s->csq_due = true;
        arm_csq(s);
        next(s);
}

static void on_mailbox_due(void *ud)
{
        struct sbd *s = ud;
        s->mailbox_timer = 0;
        if (s->c.mailbox_check_us) {
                int id = s->api->timer(s->h, s->c.mailbox_check_us, on_mailbox_due, s);
                s->mailbox_timer = id > 0 ? id : 0;
        }
        s->mt_wait = true;
        next(s);
}

/* The modem did not answer cmd in time: a session counts as a failed one; anything
 * else means the modem is gone or was reset. */
static void on_cmd_timeout(void *ud)
{
        struct sbd *s = ud;
        s->cmd_timer = 0;
        s->n_timeouts++;
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: no answer to %s within %.1f s", s->cmd_text,
                    (double)(s->cmd == C_IX ? s->c.session_timeout_us : s->c.at_timeout_us) / 1e6);
        bool was_init = s->cmd == C_INIT;
        forget_modem(s);
        if (was_init) {
                s->init_fails++;
                arm_reopen(s); /* init again after reopen, not at once: a dead modem is not flooded */
                down_and_give_back(s, -EIO);
                return;
        }
        down_and_give_back(s, -EIO);
        next(s);
}

/* The modem was reset behind our back (it echoes again): start over. */
static void modem_reset(struct sbd *s)
{
        s->n_resets++;
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: the modem was reset (it echoes commands again); initialising it%s",
                    s->mo_have && s->mo_written ? ", the frame in its MO buffer goes again" : "");
        forget_modem(s);
        down_and_give_back(s, -EIO);
        next(s);
}

static void garbled(struct sbd *s, const char *what, const uint8_t *p, size_t n)
{
        char shown[80];
        size_t o = 0;
        s->n_garbled++;
        long sup = kmp_ratelimit(&s->rl_garbled, kmp_now_us());
        if (sup < 0)
                return;
        for (size_t i = 0; i < n && o + 5 < sizeof(shown); i++)
                o += (size_t)snprintf(shown + o, sizeof(shown) - o, p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\' ? "%c" : "\\x%02x", p[i]);
        shown[o] = '\0';
        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: garbled %s from the modem%s%s%s (%lu garbled so far, %ld not logged)",
                    what, n ? ": '" : "", shown, n ? "'" : "", s->n_garbled, sup);
}

/* A session ended (OK after +SBDIX). */
static void session_done(struct sbd *s)
{
        long *v = s->res.v;
        bool carried = s->mo_have && s->mo_written;
        enum sbd_mo_class cls;
        const char *text = sbd_mo_text(v[0], &cls);
        uint64_t now = kmp_now_us();

        s->n_sessions++;
        if (s->answering_ring)
                s->ring = false;
        /* The mailbox first: it does not depend on the MO outcome. */
        if (v[2] == 1 && v[4] > 0)
                s->mt_in_buf = true;
        else if (v[2] == 2)
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: MT status 2: the gateway's mailbox check failed");
        if (cls == SBD_MO_OK && v[2] != 2)
                s->mt_wait = v[5] > 0;
        if (v[5] > 0 || v[2] == 1)
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sbd: MT status %ld, MTMSN %ld, %ld B, %ld more queued", v[2], v[3],
                            v[4], v[5]);

        if (cls == SBD_MO_OK) {
                s->fails = 0;
                s->probing = false;
                s->fail_reason[0] = '\0';
                s->fail_down = false;
                if (carried) {
                        s->api->log(s->h, KM_PLUGIN_LOG_DEBUG, "sbd: MO %zu B sent, MOMSN %ld", s->mo_len, v[1]);
                        s->mo_dirty = true;
                }
                /* The MO went but the mailbox check failed: the mailbox is tried
                 * again after a back-off, not in a tight loop. */
                if (v[2] == 2 && s->mt_wait) {
                        s->fails++;
                        arm_retry(s, backoff_us(s, 0));
                }
                report(s);
                if (carried)
                        give_back(s, 0);
                maybe_ready(s);
                next(s);
                return;
        }

        s->fails++;
        snprintf(s->fail_reason, sizeof(s->fail_reason), "%s (MO status %ld)", text, v[0]);
        if (cls == SBD_MO_FATAL && carried) {
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: session failed: %s: the frame of %zu B is refused",
                            s->fail_reason, s->mo_len);
                s->fail_reason[0] = '\0'; /* about this frame, not the link */
                s->fails = 0;
                s->mo_dirty = true;
                report(s);
                give_back(s, -EMSGSIZE);
                maybe_ready(s);
                next(s);
                return;
        }
        /* 12 and 14 are about an MO message: without one they are taken as transient. */
        uint64_t b = backoff_us(s, v[0]);
        s->fail_down = cls == SBD_MO_DOWN;
        if (cls == SBD_MO_DOWN) {
                s->probing = true;
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: session failed: %s; %s, probing again in %.1f s",
                            s->fail_reason, carried ? "the frame goes back to the host" : "link down", (double)b / 1e6);
                arm_retry(s, b);
                s->mo_dirty = true;
                report(s);
                if (carried)
                        give_back(s, -ENOTCONN);
                return;
        }
        if (carried && now - s->mo_first_us >= s->c.give_up_us) {
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: session failed: %s; giving the frame back after %.0f s of tries",
                            s->fail_reason, (double)(now - s->mo_first_us) / 1e6);
                arm_retry(s, b);
                report(s);
                give_back(s, -ETIMEDOUT);
                maybe_ready(s);
                return;
        }
        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sbd: session failed: %s; retry %u in %.1f s", s->fail_reason, s->fails,
                    (double)b / 1e6);
        arm_retry(s, b);
        report(s);
}

/* OK or ERROR ended the command in flight. */
static void cmd_done(struct sbd *s, bool ok)
{
        enum sbd_cmd cmd = s->cmd;
        cancel(s, &s->cmd_timer);
        s->cmd = C_NONE;
        switch (cmd) {
        case C_NONE: return;
        case C_INIT:
                if (!ok) {
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: the modem answers ERROR to %s", init_cmds[s->init_step]);
                        s->init_fails++;
                        s->init_step = 0;
                        report(s);
                        arm_reopen(s);
                        return;
                }
                if (++s->init_step < N_INIT)
                        break;
                s->inited = true;
                s->init_fails = 0;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sbd: modem ready%s%s, CSQ %d", s->imei[0] ? ", IMEI " : "", s->imei,
                            s->csq);
                report(s);
                arm_csq(s);
                maybe_ready(s);
                break;
        case C_WB:
                /* OK without READY: the modem took "AT+SBDWB=n" as something else. */
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: AT+SBDWB answered %s without READY", ok ? "OK" : "ERROR");
                s->fails++;
                arm_retry(s, backoff_us(s, 0));
                break;
        case C_WDATA:
                if (!s->got_result || s->res.v[0] != 0) {
                        long r = s->got_result ? s->res.v[0] : -1;
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: AT+SBDWB: result %ld (%s)", r,
                                    r == 1 ? "timeout" : r == 2 ? "checksum" : r == 3 ? "size" : "none");
                        if (r == 3) {
                                give_back(s, -EMSGSIZE);
                                maybe_ready(s);
                                break;
                        }
                        s->fails++;
                        arm_retry(s, backoff_us(s, 0));
                        break;
                }
                s->mo_written = true;
                s->mo_dirty = true;
                break;
        case C_IX:
                if (ok && s->got_ix) {
                        session_done(s);
                        return;
                }
                /* ERROR, or OK without a readable +SBDIX: the outcome is unknown. The
                 * frame stays and goes again (the far end drops a duplicate). */
                s->fails++;
                snprintf(s->fail_reason, sizeof(s->fail_reason), "%s", ok ? "garbled session result" : "AT+SBDIX answered ERROR");
                s->fail_down = false;
                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: session: %s; retry in %.1f s", s->fail_reason,
                            (double)backoff_us(s, 0) / 1e6);
                arm_retry(s, backoff_us(s, 0));
                report(s);
                break;
        case C_RB:
                if (ok && s->got_block) {
                        s->mt_in_buf = false;
                        s->rb_tries = 0;
                } else if (++s->rb_tries >= SBD_RB_TRIES) {
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sbd: AT+SBDRB failed %u times: the MT message is lost",
                                    s->rb_tries);
                        s->n_mt_bad++;
                        s->mt_in_buf = false;
                        s->rb_tries = 0;
                }
                sbd_rx_cancel_block(&s->rx);
                break;
        case C_CLEAR:
                if (ok && s->got_result && s->res.v[0] == 0)
                        s->mo_dirty = false;
                else {
                        s->fails++;
                        arm_retry(s, backoff_us(s, 0));
                }
                break;
        case C_CSQ: report(s); break;
        }
        next(s);
}

static void on_line(struct sbd *s, const char *line, size_t len)
{
        struct sbd_resp r;
        switch (sbd_at_parse(line, len, &r)) {
        case SBD_K_OK: cmd_done(s, true); return;
        case SBD_K_ERROR: cmd_done(s, false); return;
        case SBD_K_READY:
                if (s->cmd == C_WB) {
                        uint16_t sum = sbd_checksum(s->mo, s->mo_len);
                        uint8_t ck[2] = { (uint8_t)(sum >> 8), (uint8_t)sum };
                        s->cmd = C_WDATA;
                        put(s, s->mo, s->mo_len);
                        put(s, ck, 2);
                        flush_tx(s);
                        return;
                }
                break;
        case SBD_K_RESULT:
                if (s->cmd == C_INIT && s->init_step <= 1 && (r.v[0] == 0 || r.v[0] == 4)) {
                        cmd_done(s, r.v[0] == 0); /* ATV0: numeric OK / ERROR */
                        return;
                }
                if (s->cmd == C_WDATA || s->cmd == C_CLEAR) {
                        s->res = r;
                        s->got_result = true;
                        return;
                }
                break;
        case SBD_K_SBDIX:
                if (s->cmd == C_IX) {
                        s->res = r;
                        s->got_ix = true;
                        return;
                }
                break;
        case SBD_K_CSQ:
                s->csq = (int)r.v[0];
                if (s->cmd != C_CSQ)
                        report(s);
                return;
        case SBD_K_CIEV:
                if (r.v[0] == 0) {
                        s->csq = (int)r.v[1];
                } else {
                        bool back = s->svc == 0 && r.v[1] == 1;
                        s->svc = (int)r.v[1];
                        /* Service is back: probe now rather than at the end of the back-off. */
                        if (back && s->probing && s->retry_wait) {
                                cancel(s, &s->retry_timer);
                                s->retry_wait = false;
                                kick(s);
                        }
                }
                /* DOWN tells the host to replay elsewhere: a frame waiting here (for
                 * its write or out a back-off) goes back now. One in a session waits
                 * for the session's MO status. */
                if (s->inited && s->cmd == C_NONE)
                        down_and_give_back(s, -ENOTCONN);
                else if (s->inited)
                        report(s);
                maybe_ready(s);
                return;
        case SBD_K_RING:
                s->mt_wait = true;
                s->ring = true;
                s->api->log(s->h, KM_PLUGIN_LOG_DEBUG, "sbd: SBDRING");
                kick(s);
                return;
        case SBD_K_MSSTM:
                if (s->cmd == C_INIT)
                        s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sbd: Iridium system time %s%08x",
                                    r.v[0] ? "0x" : "unknown (no network service)", r.v[0] ? r.msstm : 0);
                return;
        case SBD_K_HWFAIL:
                s->n_resets++;
                s->api->log(s->h, KM_PLUGIN_LOG_ERR, "sbd: the modem reports HARDWARE FAILURE: %ld, %ld; initialising it again",
                            r.v[0], r.v[1]);
                forget_modem(s);
                down_and_give_back(s, -EIO);
                kick(s);
                return;
        case SBD_K_ECHO:
                if (s->inited) {
                        modem_reset(s);
                        return;
                }
                return; /* before ATE0 the modem echoes */
        case SBD_K_INFO:
                if (s->cmd == C_INIT && strcmp(init_cmds[s->init_step], "AT+CGSN") == 0 && len < sizeof(s->imei)) {
                        memcpy(s->imei, line, len);
                        s->imei[len] = '\0';
                        return;
                }
                break;
        case SBD_K_BAD: break;
        }
        garbled(s, "line", (const uint8_t *)line, len);
}

static void on_rx(void *ud, enum sbd_rx_event ev, const uint8_t *data, size_t len)
{
        struct sbd *s = ud;
        switch (ev) {
        case SBD_RX_LINE: on_line(s, (const char *)data, len); return;
        case SBD_RX_OVERLONG: garbled(s, "overlong line", NULL, 0); return;
        case SBD_RX_BADBLOCK: garbled(s, "AT+SBDRB block (bad length or checksum)", NULL, 0); return;
        case SBD_RX_BLOCK:
                if (s->cmd != C_RB) {
                        garbled(s, "block", NULL, 0);
                        return;
                }
                s->got_block = true;
                s->n_mt++;
                if (len == 0)
                        return;
                s->api->received(s->h, data, len);
                return;
        }
}

static void on_io(void *ud, int fd, uint32_t revents)
{
        struct sbd *s = ud;
        uint8_t buf[512];
        (void)fd;
        if (revents & EPOLLOUT)
                flush_tx(s);
        for (int i = 0; i < 16 && s->fd >= 0; i++) {
                ssize_t n = read(s->fd, buf, sizeof(buf));
                if (n > 0) {
                        sbd_rx_feed(&s->rx, buf, (size_t)n, on_rx, s);
                        continue;
                }
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (n < 0 && errno == EINTR)
                        continue;
                char why[96];
                snprintf(why, sizeof(why), "device gone (%s)", n == 0 ? "end of file" : strerror(errno));
                port_lost(s, why);
                return;
        }
        if (s->fd >= 0 && (revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLIN))
                port_lost(s, "device gone (hang-up)");
}

/* ---- the ops ------------------------------------------------------------------ */

static void sbd_close(void *state);

static int sbd_open(km_plugin_link *h, const struct km_host_api *api, void **state)
{
        struct sbd_conf c;
        int r = kmp_open_conf(&opt_table, h, api, &c, sizeof(c));
        if (r < 0)
                return r;
        struct sbd *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->h = h;
        s->api = api;
        s->c = c;
        s->fd = -1;
        s->csq = s->svc = -1;
        s->mo_dirty = true;
        s->state = (enum km_plugin_state)-1;
        sbd_rx_init(&s->rx);
        api->log(h, KM_PLUGIN_LOG_INFO, "sbd: mtu %llu B, device %s, %llu baud, session timeout %.1f s, retry %.1f..%.1f s",
                 (unsigned long long)c.mtu, c.device, (unsigned long long)c.baud, (double)c.session_timeout_us / 1e6,
                 (double)c.retry_us / 1e6, (double)c.retry_max_us / 1e6);
        if (open_port(s) < 0) {
                api->log(h, KM_PLUGIN_LOG_WARNING, "sbd: %s: %s; retrying every %.1f s", c.device, s->dev_reason,
                         (double)c.reopen_us / 1e6);
                arm_reopen(s);
        }
        report(s);
        if (c.mailbox_check_us) {
                int id = api->timer(h, c.mailbox_check_us, on_mailbox_due, s);
                s->mailbox_timer = id > 0 ? id : 0;
        }
        kick(s);
        *state = s;
        return 0;
}

static void sbd_close(void *state)
{
        struct sbd *s = state;
        if (!s)
                return;
        int *timers[] = { &s->cmd_timer, &s->retry_timer, &s->kick_timer, &s->csq_timer, &s->reopen_timer, &s->mailbox_timer };
        for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++)
                cancel(s, timers[i]);
        close_port(s);
        s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                    "sbd: closed; sessions %lu, MO sent %lu, MO failed %lu, MT %lu, MT lost %lu, garbled %lu, resets %lu, "
                    "timeouts %lu",
                    s->n_sessions, s->n_mo, s->n_mo_failed, s->n_mt, s->n_mt_bad, s->n_garbled, s->n_resets, s->n_timeouts);
        free(s);
}

static int sbd_send(void *state, const void *frame, size_t len, uint32_t token)
{
        struct sbd *s = state;
        if (!frame || len == 0)
                return -EINVAL;
        if (len > s->c.mtu)
                return -EMSGSIZE;
        if (s->state == KM_PLUGIN_DOWN) {
                s->want_ready = true;
                return -ENOTCONN;
        }
        if (s->mo_have) {
                s->want_ready = true;
                return -EAGAIN;
        }
        memcpy(s->mo, frame, len);
        s->mo_len = len;
        s->token = token;
        s->mo_have = true;
        s->mo_written = false;
        s->mo_first_us = kmp_now_us();
        kick(s);
        return 0;
}

static uint32_t sbd_mtu(void *state)
{
        const struct sbd *s = state;
        return (uint32_t)s->c.mtu;
}

static int sbd_check(km_plugin_link *h, const struct km_host_api *api, const char **key, char *why, size_t len)
{
        struct sbd_conf c;
        return kmp_read_opts(&opt_table, h, api, &c, sizeof(c), key, why, len);
}

static const struct km_plugin_ops ops = {
        .open = sbd_open,
        .close = sbd_close,
        .send = sbd_send,
        .mtu = sbd_mtu,
        .check = sbd_check,
};

KMP_PLUGIN_ENTRY("sbd", "1.0", ops, keys)

/* SPDX-License-Identifier: MIT */
/* sim: a narrow link over loopback UDP with a set MTU, bit rate, send interval, latency, loss and outages. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "plugins/common/plugin-util.h"
#include "plugins/kuimen-plugin.h"

/*
 * The model. The sim stands in for a device that takes one frame at a time, the way
 * a BeiDou card, an SBD modem or a data radio does:
 *
 *   send() -> [setup + len*8/bitrate on the air] -> sent(token, 0)
 *                                                -> [latency] -> loss? -> sendto(peer)
 *
 * The device is busy (send() says -EAGAIN, ready() follows) while a frame is being
 * serialised, until `interval` has passed since the start of the previous send (a
 * BeiDou card's service rate), and while `queue` frames are still on their way
 * through the latency line. A frame lost to `loss` still gets sent(token, 0): the
 * device took it, and only the end-to-end acknowledgement can notice the loss.
 *
 * `outages` are announced (the report says DOWN "scheduled outage", send() says
 * -ENOTCONN, a frame being serialised comes back as sent(token, -ENOTCONN)); `cuts`
 * are silent (everything still looks UP while both directions drop every frame),
 * which is the case the host's end-to-end timeouts exist for. Frames already past
 * the air when an outage starts still land, as a message already relayed would.
 *
 * Everything runs on the host's loop through one UDP socket and three timers: the
 * tick (serialisation end, deliveries, readiness), the schedule, and the bind retry.
 * Memory is fixed at open: the latency line is a ring of `queue` frames of `mtu`.
 */

#define SIM_MAX_WINDOWS 16
#define SIM_MAX_DURATION_US (86400ull * 1000000ull) /* one day bounds every duration */
#define SIM_MAX_UDP 65507u                          /* the largest IPv4 UDP payload */
#define SIM_MAX_LINE_BYTES (64u << 20)              /* queue * mtu */
#define SIM_RX_BURST 64                             /* datagrams per readable event */
#define SIM_BIND_RETRY_US 1000000ull

struct sim_addr {
        struct sockaddr_storage ss;
        socklen_t len;
};

/* One scheduled window, relative to open (or to the start of each cycle). */
struct sim_window {
        uint64_t start_us, dur_us;
};

struct sim_sched {
        struct sim_window w[SIM_MAX_WINDOWS];
        unsigned n;
};

struct sim_conf {
        struct sim_addr listen, peer;
        uint64_t mtu, bitrate, queue, seed;
        uint64_t interval_us, latency_us, setup_us, cycle_us;
        double loss;
        bool seed_set;
        struct sim_sched outages, cuts, degraded;
};

/* A frame in the latency line; its bytes live at qbuf + slot * mtu. */
struct sim_frame {
        uint32_t token, len;
        uint64_t due_us; /* when it leaves through sendto */
};

struct sim {
        km_plugin_link *h;
        const struct km_host_api *api;
        struct sim_conf c;
        int fd;
        bool bound;
        char down_reason[128]; /* why the socket is not bound */
        uint64_t t0_us;        /* open: the origin of the schedule */
        uint64_t rng;

        /* The latency line, oldest first. While tx_busy its last frame is the one
         * being serialised, which is why deliveries stop one short of it. */
        struct sim_frame *q;
        uint8_t *qbuf;
        uint32_t qhead, qlen;
        bool tx_busy;
        uint64_t tx_end_us;
        uint64_t next_start_us; /* interval: the earliest start of the next send */
        bool want_ready;        /* a send() was refused; ready() is owed */
        bool told_wait;         /* the last report carried next_send_ms > 0 */

        int tick_id, sched_id, bind_id;
        uint64_t tick_at_us;
        bool outage, cut, degraded;

        uint64_t n_taken, n_sent, n_lost, n_cut, n_refused, n_recv, n_rx_dropped, n_stranger, n_tx_err;
        struct kmp_ratelimit rl_stranger, rl_tx, rl_rx;
        uint8_t rxbuf[65536];
};

/* splitmix64: tiny, and the same seed gives the same losses on every machine. */
static uint64_t rng_next(uint64_t *x)
{
        uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

/* ---- configuration ---------------------------------------------------------- */

enum {
        OPT_UINT = KMP_OPT_UINT,
        OPT_DURATION = KMP_OPT_DURATION,
        OPT_PROB = KMP_OPT_PROB,
        OPT_ADDR = KMP_OPT_CUSTOM,
        OPT_SCHEDULE,
        OPT_SEED, /* a whole number; when left out the seed is random */
};

#define CONF(f) offsetof(struct sim_conf, f)
#define US(s) ((uint64_t)(s) * 1000000ull)

static const struct kmp_opt opts[] = {
        { "listen", OPT_ADDR, NULL, CONF(listen), 0, 0, "address:port where this end receives frames" },
        { "peer", OPT_ADDR, NULL, CONF(peer), 0, 0, "address:port where the other end receives" },
        { "mtu", OPT_UINT, "1024", CONF(mtu), 1, SIM_MAX_UDP, "largest frame in bytes" },
        { "bitrate", OPT_UINT, "0", CONF(bitrate), 0, 1000000000, "bit/s on the air, 0 = unlimited" },
        { "interval", OPT_DURATION, "0", CONF(interval_us), 0, SIM_MAX_DURATION_US,
          "least time between the starts of two sends (a card's service interval)" },
        { "setup", OPT_DURATION, "0", CONF(setup_us), 0, US(3600),
          "fixed busy time per frame before its bits go out (an SBD session, a DMR preamble)" },
        { "latency", OPT_DURATION, "0", CONF(latency_us), 0, US(3600), "one-way delay of each frame" },
        { "loss", OPT_PROB, "0", CONF(loss), 0, 0, "probability 0..1 that a frame is lost" },
        { "seed", OPT_SEED | KMP_OPT_OPTIONAL, NULL, CONF(seed), 0, UINT64_MAX, "seed of the loss generator, default random" },
        { "outages", OPT_SCHEDULE, "", CONF(outages), 0, 0,
          "announced outages after open, START+LENGTH[, ...], e.g. 10s+5s, 60s+30s" },
        { "cuts", OPT_SCHEDULE, "", CONF(cuts), 0, 0, "silent cuts (report stays UP, frames vanish), same form" },
        { "cycle", OPT_DURATION, "0", CONF(cycle_us), 0, SIM_MAX_DURATION_US,
          "repeat outages and cuts with this period, 0 = once" },
        { "queue", OPT_UINT, "64", CONF(queue), 1, 4096, "frames in flight through the latency line" },
        { "degraded", OPT_SCHEDULE, "", CONF(degraded), 0, 0,
          "announced degradation (report DEGRADED \"scheduled degradation\", frames still flow), same form" },
};

static const char *const keys[] = { "listen", "peer", "mtu",     "bitrate", "interval", "setup", "latency",
                                    "loss",   "seed", "outages", "cuts",    "cycle",    "queue", "degraded", NULL };
_Static_assert(sizeof(keys) / sizeof(keys[0]) == sizeof(opts) / sizeof(opts[0]) + 1, "keys[] mirrors opts[]");

/* "[v6]:port" or "v4:port", numeric only: a sim never waits on DNS. */
static const char *parse_addr(const char *v, struct sim_addr *a)
{
        char host[INET6_ADDRSTRLEN + 2];
        const char *port;
        size_t hl;

        if (*v == '[') {
                const char *rb = strchr(v, ']');
                if (!rb || rb[1] != ':')
                        return "expected [ipv6]:port";
                hl = (size_t)(rb - v - 1);
                v++;
                port = rb + 2;
        } else {
                const char *colon = strrchr(v, ':');
                if (!colon)
                        return "expected address:port";
                hl = (size_t)(colon - v);
                port = colon + 1;
                if (memchr(v, ':', hl))
                        return "write an IPv6 address as [addr]:port";
        }
        if (hl == 0 || hl >= sizeof(host))
                return "expected address:port";
        memcpy(host, v, hl);
        host[hl] = '\0';

        char *end;
        if (*port < '0' || *port > '9')
                return "port must be 1..65535";
        unsigned long p = strtoul(port, &end, 10);
        if (*end != '\0' || p < 1 || p > 65535)
                return "port must be 1..65535";

        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM,
                                  .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
        struct addrinfo *res = NULL;
        if (getaddrinfo(host, port, &hints, &res) != 0 || !res)
                return "not a numeric IPv4 or IPv6 address";
        memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
        a->len = res->ai_addrlen;
        freeaddrinfo(res);
        return NULL;
}

/* "10s+5s, 60s+30s": comma-separated START+LENGTH windows; empty means none. */
static const char *parse_schedule(const char *v, struct sim_sched *s, char *why, size_t n)
{
        char buf[512], *next = buf;
        if (strlen(v) >= sizeof(buf))
                return "too long";
        strcpy(buf, v);
        s->n = 0;
        if (strspn(v, " \t") == strlen(v))
                return NULL;
        /* strsep, not strtok: "1s+1s,,2s+1s" is a typo to report, not to skip. */
        for (char *item; (item = strsep(&next, ","));) {
                while (*item == ' ' || *item == '\t')
                        item++;
                char *e = item + strlen(item);
                while (e > item && (e[-1] == ' ' || e[-1] == '\t'))
                        *--e = '\0';
                if (*item == '\0')
                        return "empty window (expected START+LENGTH, e.g. 10s+5s)";
                char *plus = strchr(item, '+');
                if (!plus)
                        return "expected START+LENGTH, e.g. 10s+5s";
                *plus = '\0';
                if (s->n == SIM_MAX_WINDOWS) {
                        snprintf(why, n, "more than %d windows", SIM_MAX_WINDOWS);
                        return why;
                }
                struct sim_window *w = &s->w[s->n];
                const char *bad = kmp_parse_duration(item, &w->start_us, 0, SIM_MAX_DURATION_US, why, n);
                if (!bad)
                        bad = kmp_parse_duration(plus + 1, &w->dur_us, 1000, SIM_MAX_DURATION_US, why, n);
                if (bad) {
                        char inner[96];
                        snprintf(inner, sizeof(inner), "%s", bad);
                        snprintf(why, n, "window %u: %s", s->n + 1, inner);
                        return why;
                }
                s->n++;
        }
        return NULL;
}

static bool addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
        if (a->ss_family != b->ss_family)
                return false;
        if (a->ss_family == AF_INET) {
                const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
                return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static const char *check_conf(const struct sim_conf *c, const char **key, char *why, size_t n)
{
        if (c->listen.ss.ss_family != c->peer.ss.ss_family) {
                *key = "peer";
                return "listen and peer must both be IPv4 or both IPv6";
        }
        if (c->queue * c->mtu > SIM_MAX_LINE_BYTES) {
                *key = "queue";
                snprintf(why, n, "queue * mtu exceeds %u MiB", SIM_MAX_LINE_BYTES >> 20);
                return why;
        }
        const struct sim_sched *all[] = { &c->outages, &c->cuts, &c->degraded };
        static const char *const names[] = { "outages", "cuts", "degraded" };
        for (unsigned k = 0; k < 3 && c->cycle_us; k++)
                for (unsigned i = 0; i < all[k]->n; i++)
                        if (all[k]->w[i].start_us + all[k]->w[i].dur_us > c->cycle_us) {
                                *key = names[k];
                                snprintf(why, n, "window %u ends after the cycle of %gs", i + 1,
                                         (double)c->cycle_us / 1e6);
                                return why;
                        }
        if (c->cycle_us && !c->outages.n && !c->cuts.n && !c->degraded.n) {
                *key = "cycle";
                return "set, but there are no outages or cuts to repeat";
        }
        return NULL;
}

static const char *parse_custom(const struct kmp_opt *o, const char *v, void *conf, char *why, size_t n)
{
        struct sim_conf *c = conf;
        void *dst = (char *)conf + o->off;
        switch (o->type & ~KMP_OPT_OPTIONAL) {
        case OPT_ADDR: return parse_addr(v, dst);
        case OPT_SCHEDULE: return parse_schedule(v, dst, why, n);
        case OPT_SEED: {
                const char *bad = kmp_parse_uint(v, dst, o->min, o->max, why, n);
                c->seed_set = !bad;
                return bad;
        }
        }
        return "unknown option type";
}

/* The checks across keys, once each key has parsed on its own. */
static int check_keys(void *conf, const char **key, char *why, size_t wn)
{
        struct sim_conf *c = conf;
        char buf[128];
        const char *bad = check_conf(c, key, buf, sizeof(buf));
        if (bad) {
                snprintf(why, wn, "sim: %s: %s", *key, bad);
                return -EINVAL;
        }
        return 0;
}

static const struct kmp_opt_table opt_table = {
        .name = "sim", .opts = opts, .n = sizeof(opts) / sizeof(opts[0]),
        .check_keys = check_keys, .parse = parse_custom
};

/* ---- link state and reports ------------------------------------------------- */

/* When the device can take the next frame, or UINT64_MAX when only an event (the
 * end of an outage, a successful bind) can make it so. */
static uint64_t free_at(const struct sim *s)
{
        if (!s->bound || s->outage)
                return UINT64_MAX;
        uint64_t t = s->next_start_us;
        if (s->tx_busy && s->tx_end_us > t)
                t = s->tx_end_us;
        if (s->qlen == s->c.queue && s->q[s->qhead].due_us > t)
                t = s->q[s->qhead].due_us;
        return t;
}

/* Tells the host the link's state as it is now; called on every change, and after a
 * send when a service interval makes the wait worth planning around. */
static void report(struct sim *s, uint64_t now)
{
        struct km_plugin_report r = { .struct_size = sizeof(r), .signal = -1, .mtu = (uint32_t)s->c.mtu };
        uint64_t f = free_at(s);

        if (!s->bound) {
                r.state = KM_PLUGIN_DOWN;
                r.reason = s->down_reason;
        } else if (s->outage) {
                r.state = KM_PLUGIN_DOWN;
                r.reason = "scheduled outage";
        } else {
                r.state = s->degraded ? KM_PLUGIN_DEGRADED : KM_PLUGIN_UP;
                r.reason = s->degraded ? "scheduled degradation" : "up";
                /* Rounded up: a host that waits next_send_ms must find the card free. */
                if (f > now)
                        r.next_send_ms = (uint32_t)((f - now + 999) / 1000);
        }
        s->told_wait = r.next_send_ms > 0;
        s->api->report(s->h, &r);
}

static int arm_tick(struct sim *s);

/* Takes the head of the latency line off the air: lost, cut, or sent to the peer. */
static void deliver(struct sim *s, uint64_t now)
{
        struct sim_frame *f = &s->q[s->qhead];
        const uint8_t *data = s->qbuf + (size_t)s->qhead * s->c.mtu;
        /* Drawn for every frame, cut or not, so a seed gives the same losses whatever
         * the schedule does. */
        bool lost = (double)(rng_next(&s->rng) >> 11) * 0x1.0p-53 < s->c.loss;

        s->qhead = (s->qhead + 1) % (uint32_t)s->c.queue;
        s->qlen--;
        if (s->cut) {
                s->n_cut++;
        } else if (lost) {
                s->n_lost++;
        } else if (sendto(s->fd, data, f->len, MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&s->c.peer.ss,
                          s->c.peer.len) < 0) {
                /* On loopback this is a full socket buffer: the air ate the frame. */
                int e = errno;
                s->n_tx_err++;
                long sup = kmp_ratelimit(&s->rl_tx, now);
                if (sup >= 0)
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sim: sendto: %s (%ld more suppressed)",
                                    strerror(e), sup);
        } else {
                s->n_sent++;
        }
}

/* Free means the last frame's receipt is out too: until the tick has said sent(),
 * the device still holds it, however short its airtime was. */
static bool device_free(const struct sim *s, uint64_t now)
{
        return !s->tx_busy && free_at(s) <= now;
}

static void maybe_ready(struct sim *s, uint64_t now)
{
        if (s->want_ready && device_free(s, now)) {
                s->want_ready = false;
                s->api->ready(s->h);
        }
}

/* The tick: everything that falls due on the transmit side, in the order the air
 * would do it. Host callbacks may call send() from inside; each step re-reads state. */
static void on_tick(void *ud)
{
        struct sim *s = ud;
        uint64_t now = kmp_now_us();

        s->tick_id = 0;
        if (s->tx_busy && s->tx_end_us <= now) {
                s->tx_busy = false;
                /* Receipt before delivery: a zero-latency frame leaves in this same tick. */
                uint32_t token = s->q[(s->qhead + s->qlen - 1) % (uint32_t)s->c.queue].token;
                s->api->sent(s->h, token, 0);
        }
        while (s->qlen > (s->tx_busy ? 1u : 0u) && s->q[s->qhead].due_us <= now)
                deliver(s, now);
        /* The report first, so a host that sends from ready() finds a current state. */
        if (s->told_wait && free_at(s) <= now)
                report(s, now);
        maybe_ready(s, now);
        arm_tick(s);
}

/* Arms the one tick timer for the earliest thing due, keeping it if it already is. */
static int arm_tick(struct sim *s)
{
        uint64_t due = UINT64_MAX;

        if (s->tx_busy)
                due = s->tx_end_us;
        if (s->qlen > (s->tx_busy ? 1u : 0u) && s->q[s->qhead].due_us < due)
                due = s->q[s->qhead].due_us;
        if (s->want_ready || s->told_wait) {
                uint64_t f = free_at(s);
                if (f < due)
                        due = f;
        }
        if (s->tick_id > 0 && due == s->tick_at_us)
                return 0;
        if (s->tick_id > 0)
                s->api->cancel_timer(s->h, s->tick_id);
        s->tick_id = 0;
        if (due == UINT64_MAX)
                return 0;
        uint64_t now = kmp_now_us();
        int id = s->api->timer(s->h, due > now ? due - now : 0, on_tick, s);
        if (id <= 0) {
                s->api->log(s->h, KM_PLUGIN_LOG_ERR, "sim: timer: %s", strerror(id < 0 ? -id : ENOMEM));
                return id < 0 ? id : -ENOMEM;
        }
        s->tick_id = id;
        s->tick_at_us = due;
        return 0;
}

/* ---- the schedule ------------------------------------------------------------- */

static bool in_sched(const struct sim_sched *sc, uint64_t phase)
{
        for (unsigned i = 0; i < sc->n; i++)
                if (phase >= sc->w[i].start_us && phase < sc->w[i].start_us + sc->w[i].dur_us)
                        return true;
        return false;
}

/* The next time after t (since open) at which a window opens or closes. */
static uint64_t next_edge(const struct sim_conf *c, uint64_t t)
{
        uint64_t phase = c->cycle_us ? t % c->cycle_us : t, base = t - phase, best = UINT64_MAX;
        const struct sim_sched *all[] = { &c->outages, &c->cuts, &c->degraded };

        for (unsigned k = 0; k < 3; k++)
                for (unsigned i = 0; i < all[k]->n; i++) {
                        uint64_t a = all[k]->w[i].start_us, b = a + all[k]->w[i].dur_us;
                        if (a > phase && a < best)
                                best = a;
                        if (b > phase && b < best)
                                best = b;
                }
        if (best != UINT64_MAX)
                return base + best;
        /* Nothing left in this cycle: the next one starts with its state re-read. */
        return c->cycle_us ? base + c->cycle_us : UINT64_MAX;
}

static void on_sched(void *ud);

/* Applies the schedule's state at now and arms the timer for the next edge. A timer
 * that fires early just finds no change and re-arms for the same edge. */
static void apply_sched(struct sim *s)
{
        uint64_t now = kmp_now_us(), t = now - s->t0_us;
        uint64_t phase = s->c.cycle_us ? t % s->c.cycle_us : t;
        bool outage = in_sched(&s->c.outages, phase), cut = in_sched(&s->c.cuts, phase);
        bool degraded = in_sched(&s->c.degraded, phase);

        s->sched_id = 0;
        if (degraded != s->degraded) {
                s->degraded = degraded;
                if (!s->outage && !outage)
                        report(s, now);
        }
        if (cut != s->cut) {
                s->cut = cut;
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sim: silent cut %s", cut ? "begins" : "ends");
        }
        if (outage != s->outage) {
                s->outage = outage;
                if (outage && s->tx_busy) {
                        /* The beam went while the frame was on the air: the device
                         * gives it back rather than pretending it went out. */
                        uint32_t tail = (s->qhead + s->qlen - 1) % (uint32_t)s->c.queue;
                        uint32_t token = s->q[tail].token;
                        s->tx_busy = false;
                        s->qlen--;
                        report(s, now);
                        s->api->sent(s->h, token, -ENOTCONN);
                } else {
                        report(s, now);
                }
                if (!outage)
                        maybe_ready(s, now);
                arm_tick(s);
        }
        uint64_t edge = next_edge(&s->c, t);
        if (edge == UINT64_MAX)
                return;
        int id = s->api->timer(s->h, edge - t, on_sched, s);
        if (id > 0)
                s->sched_id = id;
        else
                s->api->log(s->h, KM_PLUGIN_LOG_ERR, "sim: timer: %s; the outage schedule stops",
                            strerror(id < 0 ? -id : ENOMEM));
}

static void on_sched(void *ud)
{
        struct sim *s = ud;
        s->sched_id = 0;
        apply_sched(s);
}

/* ---- the socket -------------------------------------------------------------- */

static void on_readable(void *ud, int fd, uint32_t revents)
{
        struct sim *s = ud;
        (void)revents;

        for (int i = 0; i < SIM_RX_BURST; i++) {
                struct sockaddr_storage from;
                socklen_t fl = sizeof(from);
                ssize_t n = recvfrom(fd, s->rxbuf, sizeof(s->rxbuf), MSG_DONTWAIT | MSG_TRUNC,
                                     (struct sockaddr *)&from, &fl);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        if (errno == EINTR)
                                continue;
                        long sup = kmp_ratelimit(&s->rl_rx, kmp_now_us());
                        if (sup >= 0)
                                s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sim: recvfrom: %s (%ld more suppressed)",
                                            strerror(errno), sup);
                        return;
                }
                if (!addr_equal(&from, &s->c.peer.ss)) {
                        /* Only the peer is on this "air"; anything else is a stray. */
                        s->n_stranger++;
                        long sup = kmp_ratelimit(&s->rl_stranger, kmp_now_us());
                        if (sup >= 0)
                                s->api->log(s->h, KM_PLUGIN_LOG_WARNING,
                                            "sim: dropped a datagram from a host that is not the peer (%ld more suppressed)",
                                            sup);
                        continue;
                }
                if (s->outage || s->cut || n == 0 || (size_t)n > sizeof(s->rxbuf)) {
                        s->n_rx_dropped++;
                        continue;
                }
                s->n_recv++;
                s->api->received(s->h, s->rxbuf, (size_t)n);
        }
}

static void on_bind_retry(void *ud);

/* Binds listen and watches it. On failure the link stays open and DOWN, and a timer
 * tries again each second: the address may belong to an interface not yet up, or to
 * the previous run of the other end. */
static int try_bind(struct sim *s)
{
        char why[96];
        int fd = socket(s->c.listen.ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (const struct sockaddr *)&s->c.listen.ss, s->c.listen.len) < 0) {
                int e = errno;
                close(fd);
                snprintf(why, sizeof(why), "bind: %s", strerror(e));
                if (strcmp(why, s->down_reason) != 0) {
                        snprintf(s->down_reason, sizeof(s->down_reason), "%s", why);
                        s->api->log(s->h, KM_PLUGIN_LOG_WARNING, "sim: listen: %s; retrying every second", why);
                }
                return -e;
        }
        int r = s->api->watch_fd(s->h, fd, EPOLLIN, on_readable, s);
        if (r < 0) {
                close(fd);
                snprintf(s->down_reason, sizeof(s->down_reason), "watch_fd: %s", strerror(-r));
                return r;
        }
        s->fd = fd;
        s->bound = true;
        s->down_reason[0] = '\0';
        return 0;
}

static void on_bind_retry(void *ud)
{
        struct sim *s = ud;
        uint64_t now = kmp_now_us();

        s->bind_id = 0;
        if (try_bind(s) == 0) {
                s->api->log(s->h, KM_PLUGIN_LOG_INFO, "sim: listening");
                report(s, now);
                maybe_ready(s, now);
                arm_tick(s);
                return;
        }
        int id = s->api->timer(s->h, SIM_BIND_RETRY_US, on_bind_retry, s);
        s->bind_id = id > 0 ? id : 0;
}

/* ---- the ops ------------------------------------------------------------------ */

static void sim_close(void *state);

static int sim_open(km_plugin_link *h, const struct km_host_api *api, void **state)
{
        struct sim_conf c;
        int r = kmp_open_conf(&opt_table, h, api, &c, sizeof(c));
        if (r < 0)
                return r;

        struct sim *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->h = h;
        s->api = api;
        s->c = c;
        s->fd = -1;
        s->q = calloc(c.queue, sizeof(*s->q));
        s->qbuf = malloc(c.queue * c.mtu);
        if (!s->q || !s->qbuf) {
                sim_close(s);
                return -ENOMEM;
        }
        if (!c.seed_set && getrandom(&s->c.seed, sizeof(s->c.seed), GRND_NONBLOCK) != sizeof(s->c.seed))
                s->c.seed = kmp_now_us() ^ ((uint64_t)getpid() << 32);
        s->rng = s->c.seed;
        s->t0_us = kmp_now_us();

        api->log(h, KM_PLUGIN_LOG_INFO,
                 "sim: mtu %llu B, bitrate %llu bit/s, interval %.3f s, setup %.3f s, latency %.3f s, loss %g, "
                 "seed %llu%s, %u outages, %u cuts",
                 (unsigned long long)c.mtu, (unsigned long long)c.bitrate, (double)c.interval_us / 1e6,
                 (double)c.setup_us / 1e6, (double)c.latency_us / 1e6, c.loss, (unsigned long long)s->c.seed, c.seed_set ? "" : " (random)",
                 c.outages.n, c.cuts.n);

        r = try_bind(s);
        if (r < 0 && !s->down_reason[0]) {
                /* No socket at all (fd limit, no memory): nothing a retry would fix soon. */
                api->log(h, KM_PLUGIN_LOG_ERR, "sim: socket: %s", strerror(-r));
                sim_close(s);
                return r;
        }
        if (r < 0) {
                int id = api->timer(h, SIM_BIND_RETRY_US, on_bind_retry, s);
                if (id <= 0) {
                        sim_close(s);
                        return id < 0 ? id : -ENOMEM;
                }
                s->bind_id = id;
        }
        /* The schedule first, so an outage from 0 s makes the first report DOWN. */
        s->outage = in_sched(&s->c.outages, 0);
        s->cut = in_sched(&s->c.cuts, 0);
        s->degraded = in_sched(&s->c.degraded, 0);
        report(s, kmp_now_us());
        apply_sched(s);
        *state = s;
        return 0;
}

/* Must not be called from inside a host callback this plugin is making (sent,
 * received, ready, report): it frees the state those callers still use. */
static void sim_close(void *state)
{
        struct sim *s = state;
        if (!s)
                return;
        if (s->tick_id > 0)
                s->api->cancel_timer(s->h, s->tick_id);
        if (s->sched_id > 0)
                s->api->cancel_timer(s->h, s->sched_id);
        if (s->bind_id > 0)
                s->api->cancel_timer(s->h, s->bind_id);
        if (s->fd >= 0) {
                s->api->unwatch_fd(s->h, s->fd);
                close(s->fd);
        }
        if (s->n_taken)
                s->api->log(s->h, KM_PLUGIN_LOG_INFO,
                            "sim: closed; frames taken %llu, sent %llu, lost %llu, cut %llu, refused %llu, "
                            "received %llu, dropped %llu, strays %llu, send errors %llu",
                            (unsigned long long)s->n_taken, (unsigned long long)s->n_sent,
                            (unsigned long long)s->n_lost, (unsigned long long)s->n_cut,
                            (unsigned long long)s->n_refused, (unsigned long long)s->n_recv,
                            (unsigned long long)s->n_rx_dropped, (unsigned long long)s->n_stranger,
                            (unsigned long long)s->n_tx_err);
        free(s->q);
        free(s->qbuf);
        free(s);
}

static int sim_send(void *state, const void *frame, size_t len, uint32_t token)
{
        struct sim *s = state;
        uint64_t now = kmp_now_us();

        if (len == 0 || !frame)
                return -EINVAL;
        if (len > s->c.mtu)
                return -EMSGSIZE;
        if (!s->bound || s->outage) {
                s->n_refused++;
                s->want_ready = true; /* ready() after the UP report, for hosts that wait on it */
                return -ENOTCONN;
        }
        if (!device_free(s, now)) {
                s->want_ready = true;
                arm_tick(s);
                return -EAGAIN;
        }

        uint32_t slot = (s->qhead + s->qlen) % (uint32_t)s->c.queue;
        /* Serialisation time, rounded up so 20 frames never beat the bit rate. */
        uint64_t air = s->c.setup_us;
        if (s->c.bitrate)
                air += ((uint64_t)len * 8u * 1000000u + s->c.bitrate - 1) / s->c.bitrate;
        memcpy(s->qbuf + (size_t)slot * s->c.mtu, frame, len);
        s->q[slot] = (struct sim_frame){ .token = token, .len = (uint32_t)len, .due_us = now + air + s->c.latency_us };
        s->qlen++;
        s->tx_busy = true;
        s->tx_end_us = now + air;
        uint64_t prev_start = s->next_start_us;
        s->next_start_us = now + s->c.interval_us;

        int r = arm_tick(s);
        if (r < 0) {
                s->qlen--;
                s->tx_busy = false;
                s->next_start_us = prev_start;
                return r;
        }
        s->n_taken++;
        /* A card with a service interval says how long the host has to wait; the
         * scheduler plans around that rather than polling. */
        if (s->c.interval_us)
                report(s, now);
        return 0;
}

static uint32_t sim_mtu(void *state)
{
        const struct sim *s = state;
        return (uint32_t)s->c.mtu;
}

/* kuimen --check-config: the keys as open() reads them, and nothing opened. */
static int sim_check(km_plugin_link *h, const struct km_host_api *api, const char **key, char *why, size_t len)
{
        struct sim_conf c;
        return kmp_read_opts(&opt_table, h, api, &c, sizeof(c), key, why, len);
}

static const struct km_plugin_ops ops = {
        .open = sim_open,
        .close = sim_close,
        .send = sim_send,
        .mtu = sim_mtu,
        .check = sim_check,
};

KMP_PLUGIN_ENTRY("sim", "1.0", ops, keys)

/* SPDX-License-Identifier: MIT */
/* GNSS bridge: the box's own receiver through gpsd (libgps), served by the event loop. */
#include "bridges/gnss.h"

#include <errno.h>
#include <fcntl.h>
#include <gps.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timex.h>
#include <time.h>

#include "gateway/log.h"
#include "gateway/msg.h"
#include "gateway/posrec.h"

/* API 9 (gpsd 3.20) made fix times timespec_t and added altMSL; 11 is gpsd 3.22
 * (Debian 12). Later majors moved fields we do not read (status into the fix) and
 * kept the ones we do; a major that drops one fails to build here, not at run time. */
#if GPSD_API_MAJOR_VERSION < 9
#error "libgps API 9 or newer (gpsd 3.20+) is needed"
#endif

/*
 * How it works. One TCP connection to gpsd, watched in JSON. The socket is
 * non-blocking and served by an sd-event io source on the daemon's loop; gpsd absent
 * or gone means a retry timer with backoff (1 s doubling to 30 s), never a thread.
 * gps_open() itself connects in blocking mode: gpsd runs on the box (loopback), where
 * connect answers at once; a remote, black-holed gpsd host would stall the loop for
 * the kernel's connect timeout, so keep gpsd local.
 *
 * Each TPV with a 2D/3D fix becomes a snapshot: the position plus the satellite
 * counts of the latest SKY (gpsd sends an epoch's SKYs before its TPV, so the
 * snapshot carries that epoch's sky view). A snapshot is published at once when the
 * fix mode changed or the position moved more than min_distance since the last one
 * published, else by the interval tick when it is newer than the last published;
 * the tick never re-sends an old snapshot, so a receiver that went quiet does not
 * look like a box standing still.
 */

#define BACKOFF_MAX_S 30
#define OFFSET_REPORT_MS 1000         /* re-send status when the offset moved this much */
#define EARTH_RADIUS_M 6371008.8      /* mean radius (IUGG) */

struct gnss_conf {
        char *gpsd;
        int64_t interval_ms;
        double min_distance;
        int64_t fix_timeout_ms;
};

#define OFF(f) offsetof(struct gnss_conf, f)
static const struct km_conf_key gnss_keys[] = {
        { "gpsd", KM_CONF_STRING, "127.0.0.1:2947", OFF(gpsd), "gpsd serving the box's receiver: host:port ([v6addr]:port)", 0, 0, NULL },
        { "interval", KM_CONF_DURATION, "5s", OFF(interval_ms), "publish the latest fix this often", 10, 86400000, NULL },
        { "min_distance", KM_CONF_DOUBLE, "50", OFF(min_distance), "metres moved since the last published fix that publish at once", 0, 1000000, NULL },
        { "fix_timeout", KM_CONF_DURATION, "10s", OFF(fix_timeout_ms), "a fix with no new report for this long counts as lost", 1000, 3600000, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

enum gnss_state { ST_NONE, ST_NO_GPSD, ST_NO_FIX, ST_FIX };
static const char *const state_names[] = { "none", "no_gpsd", "no_fix", "fix" };

/* Satellites in gpsd's sky view, each counted once (see count_sky). */
struct sky {
        int used, seen, bd_used, bd_seen;
};

struct gnss {
        struct km_daemon *d;
        struct gnss_conf conf;
        char host[256], port[8];
        struct gps_data_t gps;
        bool open;       /* gps holds a connection */
        bool got_data;   /* something arrived on this connection */
        bool failing;    /* connect attempts are failing (logged once) */
        unsigned backoff_s;
        sd_event_source *io, *retry, *tick;

        enum gnss_state state;
        int mode;         /* mode of gpsd's latest TPV */
        char reason[160]; /* why we are in state */
        struct sky sky;   /* from the latest SKY */

        struct km_pos fix; /* latest snapshot */
        double eph, epv;
        struct sky fix_sky;
        uint64_t fix_seq, published_seq;
        int64_t fix_mono_ms;
        bool have_fix;

        struct km_pos last_pub; /* what min_distance and mode changes compare with */
        bool have_pub;

        bool offset_known; /* measured in the current fix streak */
        int64_t offset_ms; /* GNSS time minus system time */
        bool reported_offset_known;
        int64_t reported_offset_ms;
        int reported_mode;
        enum gnss_state reported_state;
};

/*
 * The one piece of module state: what km_gnss_clock needs. The daemon's ingest calls
 * km_gnss_clock (from whichever thread ingests) and holds no handle to this bridge, and there is one
 * receiver per box, so the clock is process-wide. It holds values, not a pointer to
 * struct gnss, so a reader racing the bridge's shutdown never touches freed memory.
 */
static struct {
        pthread_mutex_t mu;
        bool valid;
        int64_t gnss_ms; /* GNSS time of the latest timed fix */
        int64_t mono_ms; /* CLOCK_MONOTONIC when it arrived */
} gclock = { PTHREAD_MUTEX_INITIALIZER, false, 0, 0 };

static int64_t clock_ms(clockid_t id)
{
        struct timespec ts;
        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * GNSS-disciplined time for message stamps and expiry. Rule: use GNSS time only when
 * the system clock says it is not synchronised (adjtimex status STA_UNSYNC, or the
 * call failing) and a timed fix has arrived since kuimen started; otherwise the
 * system clock (NTP-disciplined) is the better one and this returns 0. GNSS time is
 * carried forward on CLOCK_MONOTONIC from the latest timed fix, so a step of the
 * unsynchronised system clock does not disturb it. It is held for as long as the
 * system clock stays unsynchronised, however old the fix: a 50 ppm oscillator drifts
 * 4.3 s a day, while the unsynchronised clock may be years off (a box without RTC
 * battery boots in 1970), and falling back to it would move every stamped message's
 * expiry by that much at once (all expire, or none ever does).
 * Any thread. Returns 1 and fills *gnss_now_ms (unix ms), or 0.
 */
int km_gnss_clock(int64_t *gnss_now_ms)
{
        /* adjtimex is a real system call (no vDSO) and this runs for every message
         * stamped; the kernel's sync state changes on NTP's time scale, so it is read
         * at most once a second. */
        static int64_t checked_mono = -1000; /* CLOCK_MONOTONIC starts at 0: the first call reads */
        static int unsync;
        int64_t mono = clock_ms(CLOCK_MONOTONIC);
        if (mono - __atomic_load_n(&checked_mono, __ATOMIC_ACQUIRE) >= 1000) {
                struct timex tx = { 0 };
                int st = adjtimex(&tx); /* modes 0: read only */
                __atomic_store_n(&unsync, !(st >= 0 && st != TIME_ERROR && !(tx.status & STA_UNSYNC)),
                                 __ATOMIC_RELAXED);
                __atomic_store_n(&checked_mono, mono, __ATOMIC_RELEASE);
        }
        if (!__atomic_load_n(&unsync, __ATOMIC_RELAXED))
                return 0;
        int ok = 0;
        pthread_mutex_lock(&gclock.mu);
        if (gclock.valid) {
                *gnss_now_ms = gclock.gnss_ms + (mono - gclock.mono_ms);
                ok = 1;
        }
        pthread_mutex_unlock(&gclock.mu);
        return ok;
}

/* ---- config ---------------------------------------------------------------------- */

/* "host:port" or "[v6]:port" into host and port; returns NULL or why not. */
static const char *split_hostport(const char *s, char *host, size_t hl, char *port, size_t pl)
{
        const char *colon, *h = s;
        size_t n;

        if (*s == '[') {
                const char *end = strchr(s, ']');
                if (!end || end[1] != ':')
                        return "expected [address]:port";
                h = s + 1;
                n = (size_t)(end - h);
                colon = end + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon)
                        return "expected host:port";
                if (memchr(s, ':', (size_t)(colon - s)))
                        return "an IPv6 address needs brackets: [address]:port";
                n = (size_t)(colon - s);
        }
        if (n == 0 || n >= hl)
                return "host is empty or too long";
        char *end;
        errno = 0;
        long p = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || errno || p < 1 || p > 65535)
                return "port must be 1..65535";
        memcpy(host, h, n);
        host[n] = '\0';
        snprintf(port, pl, "%ld", p);
        return NULL;
}

int km_gnss_check(struct km_conf *c)
{
        struct gnss_conf g = { 0 };
        char host[256], port[8];
        int bad;

        if (!km_conf_has_section(c, "gnss"))
                return 0;
        bad = km_conf_apply(c, "gnss", gnss_keys, &g);
        const char *why = g.gpsd ? split_hostport(g.gpsd, host, sizeof(host), port, sizeof(port)) : "missing";
        if (why) {
                km_conf_error(c, "gnss", "gpsd", "'%s': %s", g.gpsd ? g.gpsd : "", why);
                bad++;
        }
        /* Positions name their unit by the node: it must fit the record. */
        const char *name = km_conf_get(c, "node", "name");
        if (name && strlen(name) >= KM_POS_UNIT_MAX) {
                km_conf_error(c, "node", "name", "'%s' is longer than %d bytes, the most a position's unit holds ([gnss] names the box's fixes by it)",
                              name, KM_POS_UNIT_MAX - 1);
                bad++;
        }
        km_conf_release(gnss_keys, &g);
        return bad ? -EINVAL : 0;
}

void km_gnss_print_help(FILE *out)
{
        km_conf_print_help(out, "gnss", gnss_keys);
}

/* ---- publishing ------------------------------------------------------------------ */

/* Copies s into out as the inside of a JSON string. */
static void json_escape(const char *s, char *out, size_t len)
{
        size_t o = 0;
        for (; *s && o + 7 < len; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch == '"' || ch == '\\') {
                        out[o++] = '\\';
                        out[o++] = (char)ch;
                } else if (ch < 0x20) {
                        o += (size_t)snprintf(out + o, len - o, "\\u%04x", ch);
                } else {
                        out[o++] = (char)ch;
                }
        }
        out[o] = '\0';
}

static void publish_status(struct gnss *g)
{
        char buf[512], reason[sizeof(g->reason) * 2], off[24] = "null";
        bool known = g->state == ST_FIX && g->offset_known;

        json_escape(g->reason, reason, sizeof(reason));
        if (known)
                snprintf(off, sizeof(off), "%lld", (long long)g->offset_ms);
        int n = snprintf(buf, sizeof(buf), "{\"state\":\"%s\",\"reason\":\"%s\",\"mode\":%d,\"clock_offset_ms\":%s}",
                         state_names[g->state], reason, g->mode, off);
        g->reported_state = g->state;
        g->reported_mode = g->mode;
        g->reported_offset_known = known;
        g->reported_offset_ms = g->offset_ms;
        km_daemon_ingest(g->d, KM_DIR_UP, "status/gnss", buf, (size_t)n, false);
        km_status_gnss_state(&g->d->status, buf, (size_t)n, km_now_ms());
}

/* Publishes status when anything it says changed: state, mode, or the clock offset
 * appearing or moving by more than OFFSET_REPORT_MS (the system clock was stepped). */
static void update_status(struct gnss *g)
{
        bool known = g->state == ST_FIX && g->offset_known;
        if (g->state == g->reported_state && g->mode == g->reported_mode && known == g->reported_offset_known &&
            (!known || llabs(g->offset_ms - g->reported_offset_ms) <= OFFSET_REPORT_MS))
                return;
        if (g->state != g->reported_state)
                KM_LOG(g->state == ST_FIX ? KM_LOG_NOTICE : KM_LOG_WARNING, "gnss", "%s: %s", state_names[g->state],
                       g->reason);
        publish_status(g);
}

static void publish_fix(struct gnss *g);
static void set_state(struct gnss *g, enum gnss_state st, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void set_state(struct gnss *g, enum gnss_state st, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->reason, sizeof(g->reason), fmt, ap);
        va_end(ap);
        if (st != ST_FIX && g->state == ST_FIX && g->have_fix && g->fix_seq != g->published_seq)
                publish_fix(g); /* the last known place is the one a rescuer needs */
        g->state = st;
        if (st != ST_FIX) {
                /* The next fix is news: published at once, whatever the distance. */
                g->have_fix = false;
                g->have_pub = false;
                g->offset_known = false;
        }
        if (st == ST_NO_GPSD)
                g->mode = 0;
        update_status(g);
}

static void publish_fix(struct gnss *g)
{
        char buf[512];
        int n = km_posrec_to_json(&g->fix, buf, sizeof(buf));

        if (n < 0 || (size_t)n >= sizeof(buf) - 200) {
                KM_LOG(KM_LOG_ERR, "gnss", "fix not publishable (%s)", strerror(n < 0 ? -n : ENOSPC));
                g->published_seq = g->fix_seq; /* do not retry the same record every tick */
                return;
        }
        n--; /* reopen the object: the satellite counts follow the common part */
        if (isfinite(g->eph))
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, ",\"eph\":%.1f", g->eph);
        if (isfinite(g->epv))
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, ",\"epv\":%.1f", g->epv);
        n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                      ",\"sats_used\":%d,\"sats_seen\":%d,\"sats_beidou\":%d,\"sats_beidou_seen\":%d}", g->fix_sky.used,
                      g->fix_sky.seen, g->fix_sky.bd_used, g->fix_sky.bd_seen);
        g->published_seq = g->fix_seq;
        g->last_pub = g->fix;
        g->have_pub = true;
        km_daemon_ingest(g->d, KM_DIR_UP, "gnss", buf, (size_t)n, false);
        km_status_gnss_fix(&g->d->status, buf, (size_t)n, km_now_ms());
}

static double distance_m(const struct km_pos *a, const struct km_pos *b)
{
        const double r = M_PI / 180.0;
        double dlat = (b->lat - a->lat) * r, dlon = (b->lon - a->lon) * r;
        double h = sin(dlat / 2) * sin(dlat / 2) + cos(a->lat * r) * cos(b->lat * r) * sin(dlon / 2) * sin(dlon / 2);
        return 2 * EARTH_RADIUS_M * asin(fmin(1.0, sqrt(h)));
}

/* ---- gpsd reports ---------------------------------------------------------------- */

static bool same_sat(const struct satellite_t *a, const struct satellite_t *b)
{
        return a->gnssid == b->gnssid && (a->svid || b->svid ? a->svid == b->svid : a->PRN == b->PRN);
}

/*
 * gpsd 3.22 lists one sky view entry per signal for NMEA 4.10+ receivers (a u-blox
 * F9P shows each dual-band satellite twice), so satellites are counted once per
 * (gnssid, svid), used when any of its signals is. BeiDou is gnssid 3 whatever the
 * talker ($BD or $GB). What "used" means is gpsd's call: 3.22 does not attribute
 * the NMEA 4.11 system id of $GNGSA, so it may show BeiDou seen but none used; we
 * report that rather than guess.
 */
static void on_sky(struct gnss *g)
{
        int n = g->gps.satellites_visible;
        struct sky k = { 0 };

        if (n > MAXCHANNELS)
                n = MAXCHANNELS;
        for (int i = 0; i < n; i++) {
                const struct satellite_t *s = &g->gps.skyview[i];
                bool dup = false, used = s->used;
                for (int j = 0; j < i && !dup; j++)
                        dup = same_sat(s, &g->gps.skyview[j]);
                if (dup)
                        continue;
                for (int j = i + 1; j < n; j++)
                        used = used || (same_sat(s, &g->gps.skyview[j]) && g->gps.skyview[j].used);
                k.seen++;
                k.used += used;
                if (s->gnssid == GNSSID_BD) {
                        k.bd_seen++;
                        k.bd_used += used;
                }
        }
        g->sky = k;
}

static void on_tpv(struct gnss *g)
{
        const struct gps_fix_t *f = &g->gps.fix;
        int64_t mono = clock_ms(CLOCK_MONOTONIC), real = clock_ms(CLOCK_REALTIME);
        struct km_pos p;

        g->mode = f->mode;
        if (f->mode < MODE_2D || !isfinite(f->latitude) || !isfinite(f->longitude) || fabs(f->latitude) > 90 ||
            fabs(f->longitude) > 180) {
                if (g->state != ST_NO_FIX || strcmp(g->reason, "receiver reports no fix") != 0)
                        set_state(g, ST_NO_FIX, "receiver reports no fix");
                else
                        update_status(g); /* mode 0 -> 1 */
                return;
        }
        km_posrec_init(&p);
        snprintf(p.unit, sizeof(p.unit), "%s", g->d->node.name);
        p.lat = f->latitude;
        p.lon = f->longitude;
        p.alt = f->mode == MODE_3D && isfinite(f->altMSL) ? f->altMSL : NAN;
        if (f->time.tv_sec > 0)
                p.time_ms = (int64_t)f->time.tv_sec * 1000 + (f->time.tv_nsec + 500000) / 1000000;
        p.speed = isfinite(f->speed) ? f->speed : NAN;
        p.heading = isfinite(f->track) ? f->track : NAN;
        p.mode = f->mode;

        bool news = !g->have_pub || g->last_pub.mode != p.mode || distance_m(&g->last_pub, &p) > g->conf.min_distance;
        /* An epoch the interval never published is rate limiting, not loss; said so that
         * a gap in the published track can be told from a fault (after a stalled loop
         * read several epochs at once, say). */
        if (g->have_fix && g->fix_seq != g->published_seq && g->fix.time_ms && g->fix.time_ms != p.time_ms)
                KM_LOG(KM_LOG_DEBUG, "gnss", "fix of %lld superseded within the interval", (long long)g->fix.time_ms);
        g->fix = p;
        g->eph = f->eph;
        g->epv = f->epv;
        g->fix_sky = g->sky;
        g->fix_seq++;
        g->fix_mono_ms = mono;
        g->have_fix = true;
        if (p.time_ms) {
                g->offset_ms = p.time_ms - real;
                g->offset_known = true;
                pthread_mutex_lock(&gclock.mu);
                gclock.valid = true;
                gclock.gnss_ms = p.time_ms;
                gclock.mono_ms = mono;
                pthread_mutex_unlock(&gclock.mu);
        }
        if (g->state != ST_FIX)
                set_state(g, ST_FIX, "%s fix", p.mode == MODE_3D ? "3D" : "2D");
        else {
                snprintf(g->reason, sizeof(g->reason), "%s fix", p.mode == MODE_3D ? "3D" : "2D");
                update_status(g);
        }
        if (news)
                publish_fix(g);
}

static bool is_class(const char *msg, const char *cls)
{
        size_t n = strlen(cls);
        return strncmp(msg, "{\"class\":\"", 10) == 0 && strncmp(msg + 10, cls, n) == 0 && msg[10 + n] == '"';
}

static void on_message(struct gnss *g, const char *msg)
{
        if (!g->got_data) {
                g->got_data = true;
                g->backoff_s = 1; /* gpsd answers: the next outage starts the backoff afresh */
        }
        if (is_class(msg, "TPV")) {
                on_tpv(g);
        } else if (is_class(msg, "SKY")) {
                on_sky(g);
        } else if (is_class(msg, "DEVICE")) {
                /* gpsd says "activated":0 when the receiver went away. */
                if (strstr(msg, "\"activated\":0") && g->state != ST_NO_FIX)
                        set_state(g, ST_NO_FIX, "receiver removed from gpsd");
        } else if (is_class(msg, "DEVICES")) {
                if (g->gps.devices.ndevices == 0)
                        set_state(g, ST_NO_FIX, "no receiver attached to gpsd");
                else if (g->state != ST_FIX && g->state != ST_NO_FIX)
                        set_state(g, ST_NO_FIX, "waiting for a fix");
        }
}

/* ---- the gpsd connection --------------------------------------------------------- */

static int on_retry(sd_event_source *s, uint64_t usec, void *ud);

static void gpsd_close(struct gnss *g)
{
        g->io = sd_event_source_disable_unref(g->io);
        if (g->open) {
                gps_close(&g->gps);
                g->open = false;
        }
}

static void schedule_retry(struct gnss *g)
{
        if (g->d->stopping)
                return;
        g->retry = sd_event_source_disable_unref(g->retry);
        int rc = sd_event_add_time_relative(g->d->ev, &g->retry, CLOCK_MONOTONIC, g->backoff_s * 1000000ULL, 100000,
                                            on_retry, g);
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "gnss", "cannot arm the gpsd retry timer: %s", strerror(-rc));
        g->backoff_s = g->backoff_s * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : g->backoff_s * 2;
}

static void gpsd_lost(struct gnss *g, const char *why)
{
        KM_LOG(KM_LOG_WARNING, "gnss", "gpsd at %s:%s: %s; reconnecting", g->host, g->port, why);
        gpsd_close(g);
        g->sky = (struct sky){ 0 };
        set_state(g, ST_NO_GPSD, "%s", why);
        schedule_retry(g);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct gnss *g = ud;
        char msg[256]; /* enough for the class and a DEVICE line; libgps keeps the rest */
        (void)s, (void)fd, (void)revents;

        /* Each gps_read parses one line; several may arrive in one segment, and those
         * left in libgps's buffer would not wake epoll again, so read until the socket
         * is empty (non-blocking: it says so with EAGAIN or 0, never blocks). */
        for (;;) {
                errno = 0;
                int n = gps_read(&g->gps, msg, sizeof(msg));
                if (n > 0) {
                        on_message(g, msg);
                        continue;
                }
                if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                        return 0;
                gpsd_lost(g, errno ? strerror(errno) : "gpsd closed the connection");
                return 0;
        }
}

static void gpsd_connect(struct gnss *g)
{
        int rc;

        memset(&g->gps, 0, sizeof(g->gps));
        g->got_data = false;
        if (gps_open(g->host, g->port, &g->gps) != 0) {
                const char *why = gps_errstr(errno);
                /* Logged once per outage; the status topic tells the center. */
                if (!g->failing)
                        KM_LOG(KM_LOG_WARNING, "gnss", "cannot connect to gpsd at %s:%s: %s; retrying every 1 s to %d s",
                               g->host, g->port, why, BACKOFF_MAX_S);
                else
                        KM_LOG(KM_LOG_DEBUG, "gnss", "gpsd at %s:%s: %s; next try in %u s", g->host, g->port, why,
                               g->backoff_s);
                g->failing = true;
                if (g->state != ST_NO_GPSD)
                        set_state(g, ST_NO_GPSD, "cannot connect to gpsd: %s", why);
                schedule_retry(g);
                return;
        }
        g->open = true;
        if (gps_stream(&g->gps, WATCH_ENABLE | WATCH_JSON, NULL) < 0) {
                gpsd_lost(g, "cannot start the watch");
                return;
        }
        int fl = fcntl(g->gps.gps_fd, F_GETFL);
        if (fl < 0 || fcntl(g->gps.gps_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
                gpsd_lost(g, "cannot make the socket non-blocking");
                return;
        }
        if ((rc = sd_event_add_io(g->d->ev, &g->io, g->gps.gps_fd, EPOLLIN, on_io, g)) < 0) {
                gpsd_lost(g, strerror(-rc));
                return;
        }
        g->failing = false;
        KM_LOG(KM_LOG_NOTICE, "gnss", "connected to gpsd at %s:%s", g->host, g->port);
        if (g->state == ST_NO_GPSD || g->state == ST_NONE)
                set_state(g, ST_NO_FIX, "connected to gpsd, waiting for a fix");
}

static int on_retry(sd_event_source *s, uint64_t usec, void *ud)
{
        struct gnss *g = ud;
        (void)usec;
        if (s == g->retry)
                g->retry = sd_event_source_disable_unref(g->retry);
        gpsd_connect(g);
        return 0;
}

/* The interval: publish a newer snapshot, and call a fix lost when reports stop. */
static int on_tick(sd_event_source *s, uint64_t usec, void *ud)
{
        struct gnss *g = ud;
        (void)usec;
        if (g->state == ST_FIX && clock_ms(CLOCK_MONOTONIC) - g->fix_mono_ms > g->conf.fix_timeout_ms)
                set_state(g, ST_NO_FIX, "no fix reported for %lld s", (long long)(g->conf.fix_timeout_ms / 1000));
        else if (g->state == ST_FIX && g->have_fix && g->fix_seq != g->published_seq)
                publish_fix(g);
        sd_event_source_set_time_relative(s, (uint64_t)g->conf.interval_ms * 1000);
        sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

static void gnss_stop(void *ud)
{
        struct gnss *g = ud;
        gpsd_close(g);
        g->retry = sd_event_source_disable_unref(g->retry);
        g->tick = sd_event_source_disable_unref(g->tick);
        pthread_mutex_lock(&gclock.mu);
        gclock.valid = false;
        pthread_mutex_unlock(&gclock.mu);
        km_conf_release(gnss_keys, &g->conf);
        free(g);
}

int km_gnss_start(struct km_daemon *d, struct km_conf *c)
{
        struct gnss *g;
        int rc;

        if (!km_conf_has_section(c, "gnss"))
                return 0;
        if (!(g = calloc(1, sizeof(*g))))
                return -ENOMEM;
        g->d = d;
        g->backoff_s = 1;
        if (km_conf_apply(c, "gnss", gnss_keys, &g->conf) != 0 ||
            split_hostport(g->conf.gpsd, g->host, sizeof(g->host), g->port, sizeof(g->port))) {
                rc = -EINVAL; /* km_gnss_check said why */
                goto fail;
        }
        uint64_t iv = (uint64_t)g->conf.interval_ms * 1000;
        /* The first connect runs on the loop, so start never waits for gpsd. */
        if ((rc = sd_event_add_time_relative(d->ev, &g->retry, CLOCK_MONOTONIC, 0, 0, on_retry, g)) < 0 ||
            (rc = sd_event_add_time_relative(d->ev, &g->tick, CLOCK_MONOTONIC, iv, iv / 10 < 100000 ? iv / 10 : 100000,
                                             on_tick, g)) < 0) {
                KM_LOG(KM_LOG_ERR, "gnss", "cannot arm timers: %s", strerror(-rc));
                goto fail;
        }
        km_daemon_on_stop(d, gnss_stop, g);
        KM_LOG(KM_LOG_INFO, "gnss", "reading gpsd at %s:%s every %lld ms, min_distance %.1f m", g->host, g->port,
               (long long)g->conf.interval_ms, g->conf.min_distance);
        return 0;
fail:
        g->retry = sd_event_source_disable_unref(g->retry);
        g->tick = sd_event_source_disable_unref(g->tick);
        km_conf_release(gnss_keys, &g->conf);
        free(g);
        return rc;
}

/* SPDX-License-Identifier: MIT */
/* Control socket: a unix socket in the loop that answers kuimenctl's one-line requests in JSON. */
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "calls.h"
#include "incidents.h"
#include "daemon.h"
#include "log.h"
#include "plugin.h"

#define MAX_CONN 8                     /* per server; more are closed at once */
#define CONN_TIMEOUT_US 5000000ULL     /* a connection lives at most this long */
#define ACCEPT_RETRY_US 1000000ULL     /* after accept fails for want of fds */
#define CONTROL_MAX_REQUEST 8192 /* a call (kuimenctl call) is one line of JSON */
#define HEAD_PEEK 10                   /* messages "spool" shows of the queue head */
#define SOCKET_NAME "kuimen.sock"

/* ---- config ---------------------------------------------------------------------- */

struct control_conf {
        char *socket;
};

#define OFF(f) offsetof(struct control_conf, f)
static const struct km_conf_key control_keys[] = {
        { "socket", KM_CONF_STRING, NULL, OFF(socket),
          "unix socket kuimenctl talks to (default $RUNTIME_DIRECTORY/kuimen.sock, else kuimen.sock beside the spool)",
          0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

int km_control_check(struct km_conf *c)
{
        struct control_conf cc = { 0 };
        int bad = km_conf_apply(c, "control", control_keys, &cc);

        if (cc.socket && (!*cc.socket || strlen(cc.socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))) {
                km_conf_error(c, "control", "socket", "'%s' must be a path of 1 to %zu bytes", cc.socket,
                              sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
                bad++;
        } else if (cc.socket) {
                /* The start runs on without a socket it cannot make (kuimenctl then says
                 * "not running"): worth a word before it happens. */
                char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
                struct stat st;
                const char *slash = strrchr(cc.socket, '/');
                snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash == cc.socket ? 1 : slash - cc.socket) : 1,
                         slash ? cc.socket : ".");
                int rc = stat(dir, &st);
                const char *spool = km_conf_get(c, "node", "spool"); /* whose directory the start makes */
                bool made = spool && strncmp(spool, dir, strlen(dir)) == 0 && spool[strlen(dir)] == '/';
                if (!made && (rc < 0 || !S_ISDIR(st.st_mode)))
                        km_conf_warn(c, "control", "socket", "%s: %s: kuimen would run without its control socket", dir,
                                     rc < 0 ? strerror(errno) : "not a directory");
        }
        km_conf_release(control_keys, &cc);
        return bad ? -EINVAL : 0;
}

void km_control_print_help(FILE *out)
{
        km_conf_print_help(out, "control", control_keys);
}

/* The configured path, else $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=, which may
 * list several), else the spool's directory: a place kuimen can always write. */
static char *socket_path(const struct control_conf *cc, const char *spool)
{
        const char *rd = getenv("RUNTIME_DIRECTORY");
        const char *slash = strrchr(spool, '/');
        char *p = NULL;
        int rc;

        if (cc->socket)
                return strdup(cc->socket);
        if (rd && *rd)
                rc = asprintf(&p, "%.*s/" SOCKET_NAME, (int)strcspn(rd, ":"), rd);
        else if (slash)
                rc = asprintf(&p, "%.*s/" SOCKET_NAME, (int)(slash - spool), spool);
        else
                rc = asprintf(&p, SOCKET_NAME);
        return rc < 0 ? NULL : p;
}

/* ---- reply buffer ---------------------------------------------------------------- */

static void buf_add(struct km_control_buf *b, const char *s, size_t n)
{
        if (b->failed)
                return;
        if (b->len + n + 1 > b->cap) {
                size_t cap = b->cap ? b->cap : 1024;
                while (cap < b->len + n + 1)
                        cap *= 2;
                char *p = realloc(b->p, cap);
                if (!p) {
                        b->failed = true;
                        return;
                }
                b->p = p, b->cap = cap;
        }
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = '\0';
}

void km_control_printf(struct km_control_buf *b, const char *fmt, ...)
{
        char small[256], *big = NULL;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(small, sizeof(small), fmt, ap);
        va_end(ap);
        if (n < 0) {
                b->failed = true;
                return;
        }
        if ((size_t)n < sizeof(small)) {
                buf_add(b, small, (size_t)n);
                return;
        }
        va_start(ap, fmt);
        n = vasprintf(&big, fmt, ap);
        va_end(ap);
        if (n < 0) {
                b->failed = true;
                return;
        }
        buf_add(b, big, (size_t)n);
        free(big);
}

void km_control_buf_free(struct km_control_buf *b)
{
        free(b->p);
        memset(b, 0, sizeof(*b));
}

/* ---- one request, one reply ------------------------------------------------------ */

struct conn;

struct server {
        struct km_daemon *d;
        const struct km_control_proto *proto;
        int fd;
        char *path;            /* unlinked on stop */
        sd_event_source *src;  /* floating: the loop owns it and frees the server with it */
        sd_event_source *retry;
        struct conn *conns;
        unsigned nconn;
        bool stopped;
};

struct conn {
        struct conn *next;
        struct server *srv;
        int fd;
        sd_event_source *io, *timer;
        char *req; /* max_request + 2: one byte past the limit tells "too long", one NUL */
        size_t len;
        struct km_control_buf out;
        size_t sent;
        bool writing, lingering;
};

static void conn_close(struct conn *c)
{
        struct conn **pp = &c->srv->conns;
        while (*pp && *pp != c)
                pp = &(*pp)->next;
        if (*pp)
                *pp = c->next;
        c->srv->nconn--;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        close(c->fd);
        free(c->req);
        km_control_buf_free(&c->out);
        free(c);
}

/* After the reply: reads and discards until the peer closes. Closing with unread
 * request bytes would reset the connection, and a reset can discard the reply before
 * the client has read it. Returns 1 to wait, 0 when done, or negative errno. */
static int conn_linger(struct conn *c)
{
        char scratch[512];
        for (;;) {
                ssize_t n = recv(c->fd, scratch, sizeof(scratch), 0);
                if (n > 0)
                        continue;
                if (n == 0)
                        return 0;
                if (errno == EINTR)
                        continue;
                return errno == EAGAIN ? 1 : -errno;
        }
}

static int conn_write(struct conn *c)
{
        while (c->sent < c->out.len) {
                ssize_t n = send(c->fd, c->out.p + c->sent, c->out.len - c->sent, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return errno == EAGAIN ? 1 : -errno;
                c->sent += (size_t)n;
        }
        shutdown(c->fd, SHUT_WR);
        c->lingering = true;
        sd_event_source_set_io_events(c->io, EPOLLIN);
        return conn_linger(c);
}

static int conn_read(struct conn *c)
{
        const struct km_control_proto *p = c->srv->proto;
        bool eof = false;

        while (c->len <= p->max_request && !eof) {
                ssize_t n = recv(c->fd, c->req + c->len, p->max_request + 1 - c->len, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return errno == EAGAIN ? 1 : -errno;
                eof = n == 0;
                c->len += (size_t)n;
                c->req[c->len] = '\0';
                if (p->complete(c->req, c->len))
                        break;
        }
        if (eof && !c->len)
                return 0;
        bool too_long = c->len > p->max_request;
        p->answer(c->srv->d, c->req, too_long ? p->max_request : c->len, too_long, &c->out);
        if (c->out.failed)
                return -ENOMEM;
        c->writing = true;
        sd_event_source_set_io_events(c->io, EPOLLOUT);
        return conn_write(c);
}

static int on_conn_io(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct conn *c = ud;
        int rc;
        (void)s, (void)fd, (void)revents;

        rc = c->lingering ? conn_linger(c) : c->writing ? conn_write(c) : conn_read(c);
        if (rc <= 0)
                conn_close(c);
        return 0;
}

static int on_conn_timeout(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)s, (void)usec;
        conn_close(ud);
        return 0;
}

/* Takes ownership of fd in every case. */
static void conn_open(struct server *srv, int fd)
{
        struct conn *c = calloc(1, sizeof(*c));

        if (!c) {
                close(fd);
                return;
        }
        c->srv = srv;
        c->fd = fd;
        c->next = srv->conns;
        srv->conns = c;
        srv->nconn++;
        c->req = malloc(srv->proto->max_request + 2);
        if (!c->req || sd_event_add_io(srv->d->ev, &c->io, fd, EPOLLIN, on_conn_io, c) < 0 ||
            sd_event_add_time_relative(srv->d->ev, &c->timer, CLOCK_MONOTONIC, CONN_TIMEOUT_US, 100000,
                                       on_conn_timeout, c) < 0)
                conn_close(c);
}

static int on_accept_retry(sd_event_source *s, uint64_t usec, void *ud)
{
        struct server *srv = ud;
        (void)s, (void)usec;
        if (!srv->stopped)
                sd_event_source_set_enabled(srv->src, SD_EVENT_ON);
        return 0;
}

/* Out of file descriptors, accept fails while the peer stays queued, and a level-
 * triggered listener would spin: pause it for a second instead. */
static void accept_pause(struct server *srv, int err)
{
        static unsigned logged;
        if (logged++ % 100 == 0)
                KM_LOG(KM_LOG_ERR, srv->proto->tag, "accept: %s; pausing for a second", strerror(err));
        sd_event_source_set_enabled(srv->src, SD_EVENT_OFF);
        if (!srv->retry) {
                if (sd_event_add_time_relative(srv->d->ev, &srv->retry, CLOCK_MONOTONIC, ACCEPT_RETRY_US, 100000,
                                               on_accept_retry, srv) < 0)
                        sd_event_source_set_enabled(srv->src, SD_EVENT_ON);
                return;
        }
        sd_event_source_set_time_relative(srv->retry, ACCEPT_RETRY_US);
        sd_event_source_set_enabled(srv->retry, SD_EVENT_ONESHOT);
}

/* At the limit, the oldest connection waiting for its request (or, answered, for the
 * peer's close) makes room: a client that connects and says nothing (on the metrics
 * port, anyone who can reach it) must not lock the scraper or the operator out for the
 * connection timeout. Returns whether one went. */
static bool evict_idle(struct server *srv)
{
        struct conn *oldest = NULL;
        for (struct conn *c = srv->conns; c; c = c->next) /* newest first */
                if (!c->writing || c->lingering)
                        oldest = c;
        if (oldest)
                conn_close(oldest);
        return oldest != NULL;
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct server *srv = ud;
        (void)s, (void)revents;

        for (int i = 0; i < MAX_CONN; i++) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                                accept_pause(srv, errno);
                        return 0;
                }
                if (srv->nconn >= MAX_CONN && !evict_idle(srv))
                        close(cfd);
                else
                        conn_open(srv, cfd);
        }
        return 0;
}

/* On stop (before the drain): nobody serves the socket any more, so it goes away and
 * kuimenctl says "not running" at once instead of waiting for a reply. */
static void server_stop(void *ud)
{
        struct server *srv = ud;

        srv->stopped = true;
        while (srv->conns)
                conn_close(srv->conns);
        srv->retry = sd_event_source_disable_unref(srv->retry);
        if (srv->src)
                sd_event_source_set_enabled(srv->src, SD_EVENT_OFF);
        if (srv->path)
                unlink(srv->path);
        free(srv->path);
        srv->path = NULL;
}

static void server_destroy(void *ud)
{
        struct server *srv = ud;

        srv->src = NULL; /* being freed: the loop calls this from inside its free */
        server_stop(srv);
        if (srv->fd >= 0)
                close(srv->fd);
        free(srv);
}

int km_control_serve(struct km_daemon *d, int fd, const struct km_control_proto *proto, const char *path)
{
        struct server *srv = calloc(1, sizeof(*srv));
        int rc;

        if (!srv || (path && !(srv->path = strdup(path)))) {
                free(srv);
                return -ENOMEM;
        }
        srv->d = d;
        srv->proto = proto;
        srv->fd = -1;
        if ((rc = sd_event_add_io(d->ev, &srv->src, fd, EPOLLIN, on_accept, srv)) < 0) {
                free(srv->path);
                free(srv);
                return rc;
        }
        srv->fd = fd;
        /* From here the loop owns the source and, through its destroy callback, the
         * server: it goes when the daemon frees the loop, also if the loop never ran. */
        sd_event_source_set_destroy_callback(srv->src, server_destroy);
        sd_event_source_set_floating(srv->src, 1);
        sd_event_source_unref(srv->src);
        km_daemon_on_stop(d, server_stop, srv);
        return 0;
}

/* ---- the spool by class ---------------------------------------------------------- */

static int64_t oldest_of_prio(struct km_daemon *d, const struct km_spool_stats *st, int prio)
{
        struct km_spool_peek pk;
        int64_t oldest = 0;

        for (int dir = 0; dir < KM_DIR_COUNT; dir++)
                if (st->depth_prio[dir][prio] && km_spool_peek(d->spool, dir, prio, &pk, 1) == 1 &&
                    (!oldest || pk.created_ms < oldest))
                        oldest = pk.created_ms;
        return oldest;
}

static void class_fill(struct km_daemon *d, const struct km_spool_stats *st, struct km_control_class *k,
                       const char *name, int prio)
{
        snprintf(k->name, sizeof(k->name), "%s", name);
        k->prio = prio;
        k->depth = st->depth_prio[KM_DIR_UP][prio] + st->depth_prio[KM_DIR_DOWN][prio];
        k->oldest_ms = k->depth ? oldest_of_prio(d, st, prio) : 0;
}

int km_control_classes(struct km_daemon *d, const struct km_spool_stats *st, struct km_control_class *out, int max)
{
        bool named[KM_PRIO_COUNT] = { false };
        int n = 0;

        /* The loop thread is the only writer of d->route (reload), so no lock here. The
         * classes are sorted by priority: same priorities are neighbours. */
        for (size_t i = 0; i < d->route.n; i++) {
                const struct km_class *k = &d->route.cls[i];
                int prio = (int)k->priority;
                if (prio < 0 || prio >= KM_PRIO_COUNT)
                        continue;
                if (named[prio] && n > 0) {
                        size_t l = strlen(out[n - 1].name);
                        snprintf(out[n - 1].name + l, sizeof(out[n - 1].name) - l, "+%s", k->name);
                        continue;
                }
                if (n == max)
                        break;
                named[prio] = true;
                class_fill(d, st, &out[n++], k->name, prio);
        }
        for (int prio = 0; prio < KM_PRIO_COUNT && n < max; prio++) {
                char name[16];
                if (named[prio] || !(st->depth_prio[KM_DIR_UP][prio] + st->depth_prio[KM_DIR_DOWN][prio]))
                        continue;
                snprintf(name, sizeof(name), "prio-%d", prio);
                class_fill(d, st, &out[n++], name, prio);
        }
        return n;
}

uint64_t km_control_link_backlog(struct km_daemon *d, const struct km_link *l, const struct km_spool_stats *st)
{
        bool named[KM_PRIO_COUNT] = { false }, carried[KM_PRIO_COUNT] = { false };
        uint64_t n = 0;

        for (size_t i = 0; i < d->route.n; i++) {
                const struct km_class *k = &d->route.cls[i];
                if (k->priority >= KM_PRIO_COUNT)
                        continue;
                named[k->priority] = true;
                if (km_link_may_carry(l, k->name))
                        carried[k->priority] = true;
        }
        /* A priority no class has any more (after a reload) still leaves by the links
         * that carry everything. */
        for (int p = 0; p < KM_PRIO_COUNT; p++)
                if (carried[p] || (!named[p] && !l->conf.classes.n))
                        n += st->depth_prio[l->dir][p];
        return n;
}

/* ---- the drain ------------------------------------------------------------------- */

#define SAMPLE_US 1000000ULL

void km_control_sample(struct km_daemon *d)
{
        struct km_drain_sample s[KM_DIR_COUNT];
        struct km_spool_stats st;
        int64_t now = km_mono_ms();

        km_spool_stats(d->spool, &st);
        memset(s, 0, sizeof(s));
        for (int dir = 0; dir < KM_DIR_COUNT; dir++)
                s[dir].depth = st.depth[dir];
        for (size_t i = 0; i < d->nlinks; i++) {
                const struct km_link *l = d->links[i];
                int dir = l->dir == KM_DIR_UP ? KM_DIR_UP : KM_DIR_DOWN;
                s[dir].acked += l->acked;
                s[dir].inflight += l->inflight;
                s[dir].carrying |= km_link_eligible(l, now);
        }
        for (int i = 0; i < KM_DIR_COUNT; i++) {
                s[i].mono_ms = now;
                km_status_drain_add(&d->status.drain[i], &s[i]);
        }
}

void km_control_drain(struct km_daemon *d, int dir, struct km_drain_est *out)
{
        struct km_drain_est e[KM_DIR_COUNT];

        if (dir >= 0 && dir < KM_DIR_COUNT) {
                km_status_drain_estimate(&d->status.drain[dir], out);
                return;
        }
        for (int i = 0; i < KM_DIR_COUNT; i++)
                km_status_drain_estimate(&d->status.drain[i], &e[i]);
        km_status_drain_sum(e, KM_DIR_COUNT, out);
}

static int on_sample(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)usec;
        km_control_sample(ud);
        sd_event_source_set_time_relative(s, SAMPLE_US);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

/* The operator's view of a drain must not depend on the control socket (metrics, --live
 * read it too): the timer belongs to the loop and goes with it. */
static int sample_start(struct km_daemon *d)
{
        sd_event_source *src;
        int rc = sd_event_add_time_relative(d->ev, &src, CLOCK_MONOTONIC, SAMPLE_US, 50000, on_sample, d);
        if (rc < 0)
                return rc;
        sd_event_source_set_floating(src, 1);
        sd_event_source_unref(src);
        km_control_sample(d);
        return 0;
}

/* ---- JSON ------------------------------------------------------------------------ */

void km_control_json_str(struct km_control_buf *b, const char *s)
{
        buf_add(b, "\"", 1);
        for (const char *run = s;; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch && ch >= 0x20 && ch != '"' && ch != '\\')
                        continue;
                buf_add(b, run, (size_t)(s - run));
                if (!ch)
                        break;
                if (ch == '"' || ch == '\\')
                        km_control_printf(b, "\\%c", ch);
                else
                        km_control_printf(b, "\\u%04x", ch);
                run = s + 1;
        }
        buf_add(b, "\"", 1);
}

static double age_s(int64_t now, int64_t then)
{
        return then && now > then ? (double)(now - then) / 1000.0 : 0.0;
}

static const char *dir_name(int dir)
{
        return dir == KM_DIR_UP ? "up" : "down";
}

/* Links in the order an operator reads them: toward the center first, by preference. */
static size_t links_sorted(struct km_daemon *d, struct km_link **out)
{
        size_t n = 0;
        for (size_t i = 0; i < d->nlinks; i++) {
                struct km_link *l = d->links[i];
                size_t j = n++;
                while (j > 0 && (out[j - 1]->dir > l->dir || (out[j - 1]->dir == l->dir && out[j - 1]->order > l->order)))
                        out[j] = out[j - 1], j--;
                out[j] = l;
        }
        return n;
}

/* A narrow link's dictionary as "fingerprint/topics" (null without one), and its frame
 * counters under their names in struct km_narrow_stats. */
static void put_narrow(struct km_control_buf *b, const struct km_link *l)
{
        struct km_narrow_stats ns;
        if (km_plugin_link_frames(l, &ns) < 0)
                return;
        if (ns.dict_topics)
                km_control_printf(b, ",\"dictionary\":\"%08x/%zu\"", (unsigned)ns.dict_fingerprint, ns.dict_topics);
        else
                km_control_printf(b, ",\"dictionary\":null");
#define U(f) (unsigned long long)ns.f
        km_control_printf(b,
                          ",\"frames\":{\"frames_in\":%llu,\"frames_bad\":%llu,\"frames_sent\":%llu,\"frames_resent\":%llu,"
                          "\"slot_refs\":%llu,\"slot_resets\":%llu,\"frames_ok\":%llu,\"acks_in\":%llu,\"crc_errors\":%llu,"
                          "\"bad_version\":%llu,\"malformed\":%llu,\"duplicates\":%llu,\"slot_misses\":%llu,"
                          "\"unknown_topics\":%llu,\"delivered\":%llu,\"probes\":%llu,\"probes_lost\":%llu,"
                          "\"frames_sacked\":%llu,\"pos_batches\":%llu,\"bad_posbatch\":%llu,\"out_of_window\":%llu,"
                          "\"dropped_nomem\":%llu,\"oversize\":%llu,\"bad_payload\":%llu,\"restarts_lost\":%llu}",
                          U(frames_in), U(frames_bad), U(frames_sent), U(frames_resent), U(slot_refs), U(slot_resets),
                          U(frames_ok), U(acks_in), U(crc_errors), U(bad_version), U(malformed), U(duplicates),
                          U(slot_misses), U(unknown_topics), U(delivered), U(probes), U(probes_lost), U(frames_sacked),
                          U(pos_batches), U(bad_posbatch), U(out_of_window), U(dropped_nomem), U(oversize),
                          U(bad_payload), U(restarts_lost));
#undef U
        km_control_printf(b, ",\"refused\":{");
        for (int r = 1; r < KM_REFUSE_N; r++)
                km_control_printf(b, "%s\"%s\":%llu", r > 1 ? "," : "", km_inbound_reason_name(r),
                                  (unsigned long long)ns.refused[r]);
        km_control_printf(b, "}");
        km_control_printf(b, ",\"auth\":{\"mode\":\"%s\",\"tag_bytes\":%u,\"auth_failures\":%llu,\"replays\":%llu,"
                          "\"frames_authenticated\":%llu,\"peers\":[",
                          ns.auth == 1 ? "on" : ns.auth == 2 ? "off" : "none", ns.tag_bytes,
                          (unsigned long long)ns.auth_failures, (unsigned long long)ns.replays,
                          (unsigned long long)ns.frames_authenticated);
        const char *pn, *pk, *pid;
        for (size_t i = 0; km_plugin_link_auth_peer(l, i, &pn, &pk, &pid) == 0; i++) {
                km_control_printf(b, "%s{\"name\":", i ? "," : "");
                km_control_json_str(b, pn);
                km_control_printf(b, ",\"key\":\"%s\",\"key_id\":\"%s\"}", pk, pid);
        }
        km_control_printf(b, "]}");
}

static void put_links(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st, int64_t now)
{
        struct km_link *ls[KM_MAX_LINKS];
        size_t n = links_sorted(d, ls);

        km_control_printf(b, "\"links\":[");
        for (size_t i = 0; i < n; i++) {
                const struct km_link *l = ls[i];
                km_control_printf(b, "%s{\"name\":", i ? "," : "");
                km_control_json_str(b, l->name);
                km_control_printf(b, ",\"direction\":\"%s\",\"state\":\"%s\",\"reason\":", dir_name(l->dir),
                                  km_link_shown_state(l));
                km_control_json_str(b, l->reason);
                km_control_printf(b,
                                  ",\"since_ms\":%lld,\"since_s\":%.3f,\"order\":%ld,\"window\":%u,\"inflight\":%u,"
                                  "\"sent\":%llu,\"acked\":%llu,\"failed\":%llu,\"bytes_sent\":%llu,\"signal\":%d,"
                                  "\"rate\":%.1f,\"transitions\":%llu,\"set_aside\":%llu,\"max_packet\":%u",
                                  (long long)l->since_ms, age_s(now, l->since_ms), l->order, l->window, l->inflight,
                                  (unsigned long long)l->sent, (unsigned long long)l->acked,
                                  (unsigned long long)l->failed, (unsigned long long)l->bytes_sent, l->signal, l->rate,
                                  (unsigned long long)l->transitions, (unsigned long long)l->set_aside, l->max_packet);
                km_control_printf(b, ",\"backlog\":%llu", (unsigned long long)km_control_link_backlog(d, l, st));
                /* An MQTT link's version: of its connection, and of its downlink. */
                if (l->mqtt_version)
                        km_control_printf(b, ",\"protocol\":\"%s\"", l->mqtt_version == 5 ? "5" : "3.1.1");
                if (l->mqtt_version_down)
                        km_control_printf(b, ",\"protocol_down\":\"%s\"", l->mqtt_version_down == 5 ? "5" : "3.1.1");
                /* Which of its brokers (uri may be a list) it is on. */
                if (l->uri[0]) {
                        km_control_printf(b, ",\"uri\":");
                        km_control_json_str(b, l->uri);
                        km_control_printf(b, ",\"uri_index\":%u,\"uris\":%u", l->uri_index, l->nuris);
                }
                put_narrow(b, l);
                km_control_printf(b, "}");
        }
        km_control_printf(b, "]");
}

static void put_classes(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st, int64_t now)
{
        struct km_control_class *k = calloc(KM_PRIO_COUNT, sizeof(*k));
        int n = k ? km_control_classes(d, st, k, KM_PRIO_COUNT) : 0;

        if (!k)
                b->failed = true;
        km_control_printf(b, ",\"classes\":[");
        for (int i = 0; i < n; i++) {
                km_control_printf(b, "%s{\"name\":", i ? "," : "");
                km_control_json_str(b, k[i].name);
                km_control_printf(b, ",\"priority\":%d,\"depth\":%llu,\"oldest_age_s\":%.3f}", k[i].prio,
                                  (unsigned long long)k[i].depth, age_s(now, k[i].oldest_ms));
        }
        km_control_printf(b, "]");
        free(k);
}

static int64_t oldest_any(const struct km_spool_stats *st)
{
        int64_t o = 0;
        for (int dir = 0; dir < KM_DIR_COUNT; dir++)
                if (st->oldest_ms[dir] && (!o || st->oldest_ms[dir] < o))
                        o = st->oldest_ms[dir];
        return o;
}

/* The drain estimate's fields (km_status_drain_estimate). */
static void put_drain(struct km_control_buf *b, struct km_daemon *d, int dir)
{
        struct km_drain_est e;

        km_control_drain(d, dir, &e);
        km_control_printf(b, ",\"draining\":%s,\"drain_rate\":%.1f,\"drain_eta_s\":", e.draining ? "true" : "false",
                          e.rate);
        if (e.eta_s >= 0)
                km_control_printf(b, "%.1f", e.eta_s);
        else
                km_control_printf(b, "null");
        km_control_printf(b, ",\"backlog_rate\":%.1f", e.backlog_rate);
}

static void put_spool(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st)
{
        /* Messages are stamped by the daemon's clock (GNSS time while the system clock is
         * not synchronised): their ages are taken on the same clock. */
        int64_t now = km_daemon_now(d);
        km_control_printf(b, "\"spool\":{\"depth\":%llu,\"bytes\":%llu,\"oldest_age_s\":%.3f",
                          (unsigned long long)(st->depth[KM_DIR_UP] + st->depth[KM_DIR_DOWN]),
                          (unsigned long long)st->bytes, age_s(now, oldest_any(st)));
        for (int dir = 0; dir < KM_DIR_COUNT; dir++) {
                km_control_printf(b, ",\"%s\":{\"depth\":%llu,\"oldest_age_s\":%.3f", dir_name(dir),
                                  (unsigned long long)st->depth[dir], age_s(now, st->oldest_ms[dir]));
                put_drain(b, d, dir);
                km_control_printf(b, "}");
        }
        put_drain(b, d, -1);
        put_classes(b, d, st, now);
}

/* Whether an up link has id of prio handed out on its current connection. */
static bool in_flight(struct km_daemon *d, int dir, int prio, uint64_t id)
{
        for (size_t i = 0; i < d->nlinks; i++) {
                const struct km_link *l = d->links[i];
                if (l->dir == dir && l->state == KM_LINK_UP && l->cursor[prio] >= id)
                        return true;
        }
        return false;
}

/* The next few messages to leave: the head of the highest non-empty priority, toward
 * the center first. */
static void put_head(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st, int64_t now)
{
        struct km_spool_peek pk[HEAD_PEEK];
        int dir = -1, prio = 0, n = 0;

        for (int i = 0; i < KM_DIR_COUNT && dir < 0; i++)
                for (int p = 0; p < KM_PRIO_COUNT && dir < 0; p++)
                        if (st->depth_prio[i][p])
                                dir = i, prio = p;
        if (dir >= 0 && (n = km_spool_peek(d->spool, dir, prio, pk, HEAD_PEEK)) < 0)
                n = 0;
        km_control_printf(b, ",\"head\":[");
        for (int i = 0; i < n; i++) {
                km_control_printf(b, "%s{\"id\":%llu,\"direction\":\"%s\",\"priority\":%d,\"class\":", i ? "," : "",
                                  (unsigned long long)pk[i].id, dir_name(dir), prio);
                km_control_json_str(b, pk[i].cls);
                km_control_printf(b, ",\"topic\":");
                km_control_json_str(b, pk[i].topic);
                km_control_printf(b, ",\"age_s\":%.3f,\"bytes\":%u,\"in_flight\":%s}", age_s(now, pk[i].created_ms),
                                  pk[i].len, in_flight(d, dir, prio, pk[i].id) ? "true" : "false");
        }
        km_control_printf(b, "]");
}

static void put_counters(struct km_control_buf *b, struct km_daemon *d, const struct km_spool_stats *st)
{
        uint64_t acked[KM_DIR_COUNT] = { 0, 0 };

        for (size_t i = 0; i < d->nlinks; i++)
                acked[d->links[i]->dir == KM_DIR_UP ? KM_DIR_UP : KM_DIR_DOWN] += d->links[i]->acked;
        km_control_printf(b,
                          "\"counters\":{\"in\":%llu,\"forwarded\":%llu,\"delivered_local\":%llu,\"dropped\":%llu,"
                          "\"expired\":%llu,\"coalesced\":%llu,\"bad_input\":%llu,\"unrouted\":%llu,"
                          "\"store_retries\":%llu,\"over_limit\":%llu,\"recovered\":%llu,\"moved_aside\":%llu,"
                          "\"fsyncs\":%llu,\"bad_config_reloads\":%llu,\"refused\":%llu,"
                          "\"cmd_in_mqtt\":%llu,\"cmd_in_narrow\":%llu,\"cmd_duplicates\":%llu,"
                          "\"cmd_sent_narrow\":%llu,\"cmd_settled_mqtt\":%llu,"
                          "\"storage_faults\":%llu,\"refused_storage\":%llu,\"set_aside\":%llu,\"set_aside_held\":%llu}",
                          (unsigned long long)st->pushed, (unsigned long long)acked[KM_DIR_UP],
                          (unsigned long long)acked[KM_DIR_DOWN], (unsigned long long)st->dropped,
                          (unsigned long long)st->expired, (unsigned long long)st->coalesced,
                          (unsigned long long)__atomic_load_n(&d->bad_input, __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&d->unrouted, __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&d->rejected, __ATOMIC_RELAXED),
                          (unsigned long long)st->over_limit, (unsigned long long)st->recovered,
                          (unsigned long long)st->moved_aside, (unsigned long long)st->fsyncs,
                          (unsigned long long)d->bad_config_reloads, (unsigned long long)d->refused,
                          (unsigned long long)__atomic_load_n(&d->cmd_in[KM_CMD_MQTT], __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&d->cmd_in[KM_CMD_NARROW], __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&d->cmd_duplicates, __ATOMIC_RELAXED),
                          (unsigned long long)d->cmd_sent_narrow, (unsigned long long)d->cmd_settled_mqtt,
                          (unsigned long long)st->storage_faults, (unsigned long long)st->refused_storage,
                          (unsigned long long)st->set_aside, (unsigned long long)st->dead);
        /* A center: what it knows of each base's MQTT path (where its commands go). */
        if (d->npeers) {
                km_control_printf(b, ",\"peers\":[");
                for (size_t i = 0; i < d->npeers; i++) {
                        km_control_printf(b, "%s{\"node\":", i ? "," : "");
                        km_control_json_str(b, d->peers[i].name);
                        km_control_printf(b, ",\"mqtt\":\"%s\"}", km_peer_state_name(d->peers[i].state));
                }
                km_control_printf(b, "]");
        }
}

static void put_node(struct km_control_buf *b, struct km_daemon *d, int64_t now)
{
        km_control_printf(b, "{\"node\":");
        km_control_json_str(b, d->node.name);
        km_control_printf(b, ",\"role\":");
        km_control_json_str(b, d->node.role);
        km_control_printf(b, ",\"version\":\"%s\",\"pid\":%ld,\"now_ms\":%lld,\"uptime_s\":%.3f,", KM_VERSION,
                          (long)getpid(), (long long)now, age_s(now, d->started_ms));
}

/* ---- the status board: what the bridges last saw ---------------------------------- */

struct board_ctx {
        struct km_control_buf *b;
        int64_t now;
        int n;
};

static void put_reason(void *ud, const char *reason, uint64_t n)
{
        struct board_ctx *x = ud;
        km_control_printf(x->b, "%s", x->n++ ? "," : "");
        km_control_json_str(x->b, reason);
        km_control_printf(x->b, ":%llu", (unsigned long long)n);
}

/* The bridges' JSON is our own (posrec, gnss): embedded as it is. */
static void put_position(void *ud, const struct km_status_unit *u)
{
        struct board_ctx *x = ud;
        km_control_printf(x->b, "%s{\"unit\":", x->n++ ? "," : "");
        km_control_json_str(x->b, u->unit);
        km_control_printf(x->b, ",\"age_s\":%.3f,\"position\":%s}", age_s(x->now, u->at_ms), u->json);
}

static void put_gnss(void *ud, const char *state, int64_t state_ms, const char *fix, int64_t fix_ms)
{
        struct board_ctx *x = ud;
        if (!state && !fix) {
                km_control_printf(x->b, "null");
                return;
        }
        km_control_printf(x->b, "{\"status\":%s,\"status_age_s\":%.3f,\"fix\":%s,\"fix_age_s\":%.3f}",
                          state ? state : "null", state ? age_s(x->now, state_ms) : 0.0, fix ? fix : "null",
                          fix ? age_s(x->now, fix_ms) : 0.0);
}

static void put_board(struct km_control_buf *b, struct km_daemon *d, int64_t now)
{
        struct board_ctx x = { b, now, 0 };
        km_control_printf(b, ",\"bad_input_reasons\":{");
        km_status_each_bad(&d->status, put_reason, &x);
        x.n = 0;
        km_control_printf(b, "},\"positions\":[");
        km_status_each_position(&d->status, put_position, &x);
        km_control_printf(b, "],\"gnss\":");
        km_status_gnss(&d->status, put_gnss, &x);
}

/* ---- units and bases: the map's data --------------------------------------------- */

static void put_unit(void *ud, const struct km_status_unit *u)
{
        struct board_ctx *x = ud;
        km_control_printf(x->b, "%s{\"unit\":", x->n++ ? "," : "");
        km_control_json_str(x->b, u->unit);
        km_control_printf(x->b, ",\"age_s\":%.3f,\"position\":%s,\"track\":[", age_s(x->now, u->at_ms), u->json);
        for (unsigned i = 0; i < u->ntrack; i++) {
                const struct km_status_fix *f = &u->track[(u->track_first + i) % KM_STATUS_TRACK];
                km_control_printf(x->b, "%s[%.7f,%.7f,%.3f]", i ? "," : "", f->lat, f->lon, age_s(x->now, f->at_ms));
        }
        km_control_printf(x->b, "]}");
}

void km_control_units(struct km_daemon *d, struct km_control_buf *b)
{
        int64_t now = km_now_ms();
        struct board_ctx x = { b, now, 0 };
        put_node(b, d, now);
        km_control_printf(b, "\"units\":[");
        km_status_each_position(&d->status, put_unit, &x);
        km_control_printf(b, "],\"gnss\":");
        km_status_gnss(&d->status, put_gnss, &x);
        km_control_printf(b, "}\n");
}

static void put_heard(struct km_control_buf *b, const char *key, const struct km_status_heard *h, int64_t now,
                      const char *what)
{
        km_control_printf(b, "{\"%s\":", key);
        km_control_json_str(b, h->name);
        km_control_printf(b, ",\"age_s\":%.3f,\"via\":\"%s\",\"%s\":%s}", age_s(now, h->at_ms),
                          h->narrow ? "narrow" : "mqtt", what, h->json);
}

struct bases_ctx {
        struct board_ctx x;
        struct km_daemon *d;
        bool *shown; /* d->peers already written */
};

static const char *peer_mqtt(struct bases_ctx *c, const char *name)
{
        for (size_t i = 0; i < c->d->npeers; i++)
                if (strcmp(c->d->peers[i].name, name) == 0) {
                        c->shown[i] = true;
                        return km_peer_state_name(c->d->peers[i].state);
                }
        return NULL;
}

static void put_base(void *ud, const struct km_status_base *base)
{
        struct bases_ctx *c = ud;
        struct km_control_buf *b = c->x.b;
        const char *mqtt = peer_mqtt(c, base->name);
        km_control_printf(b, "%s{\"base\":", c->x.n++ ? "," : "");
        km_control_json_str(b, base->name);
        km_control_printf(b, ",\"mqtt\":");
        if (mqtt)
                km_control_printf(b, "\"%s\"", mqtt);
        else
                km_control_printf(b, "null");
        km_control_printf(b, ",\"status\":");
        if (base->status.at_ms)
                km_control_printf(b, "%s,\"status_age_s\":%.3f,\"status_via\":\"%s\"", base->status.json,
                                  age_s(c->x.now, base->status.at_ms), base->status.narrow ? "narrow" : "mqtt");
        else
                km_control_printf(b, "null");
        km_control_printf(b, ",\"links\":[");
        for (size_t i = 0; i < base->nlinks; i++) {
                km_control_printf(b, "%s", i ? "," : "");
                put_heard(b, "link", &base->links[i], c->x.now, "status");
        }
        km_control_printf(b, "],\"units\":[");
        for (size_t i = 0; i < base->nunits; i++) {
                km_control_printf(b, "%s", i ? "," : "");
                put_heard(b, "unit", &base->units[i], c->x.now, "position");
        }
        km_control_printf(b, "]}");
}

void km_control_bases(struct km_daemon *d, struct km_control_buf *b)
{
        int64_t now = km_now_ms();
        bool shown[KM_MAX_PEERS] = { false };
        struct bases_ctx c = { { b, now, 0 }, d, shown };
        put_node(b, d, now);
        km_control_printf(b, "\"bases\":[");
        km_status_each_base(&d->status, put_base, &c);
        /* A narrow link's peer not heard from yet is a base the center expects. */
        for (size_t i = 0; i < d->npeers; i++) {
                if (shown[i])
                        continue;
                km_control_printf(b, "%s{\"base\":", c.x.n++ ? "," : "");
                km_control_json_str(b, d->peers[i].name);
                km_control_printf(b, ",\"mqtt\":\"%s\",\"status\":null,\"links\":[],\"units\":[]}",
                                  km_peer_state_name(d->peers[i].state));
        }
        km_control_printf(b, "]}\n");
}

/* status: everything an operator looks at first, the bridges' latest sightings too. */
void km_control_status(struct km_daemon *d, struct km_control_buf *b, bool with_head)
{
        struct km_spool_stats st;
        int64_t now = km_now_ms();

        km_spool_stats(d->spool, &st);
        put_node(b, d, now);
        put_links(b, d, &st, now);
        /* "ok", or what keeps the spool from storing (then nothing is taken in). */
        km_control_printf(b, ",\"storage\":");
        km_control_json_str(b, st.storage_err ? st.storage_why : "ok");
        if (st.storage_err)
                km_control_printf(b, ",\"storage_for_s\":%.1f", (double)st.storage_since_ms / 1000);
        km_control_printf(b, ",");
        put_spool(b, d, &st);
        if (with_head)
                put_head(b, d, &st, now);
        km_control_printf(b, "},");
        put_counters(b, d, &st);
        put_board(b, d, now);
        km_control_printf(b, "}\n");
}

static void reply_links(struct km_daemon *d, struct km_control_buf *b)
{
        struct km_spool_stats st;
        int64_t now = km_now_ms();

        km_spool_stats(d->spool, &st);
        put_node(b, d, now);
        put_links(b, d, &st, now);
        km_control_printf(b, "}\n");
}

static void put_strv(struct km_control_buf *b, const char *name, const struct km_strv *v)
{
        km_control_printf(b, ",\"%s\":[", name);
        for (size_t i = 0; i < v->n; i++) {
                km_control_printf(b, "%s", i ? "," : "");
                km_control_json_str(b, v->v[i]);
        }
        km_control_printf(b, "]");
}

/* The reload's outcome as the daemon logged it: its errors when refused; when taken,
 * the changed keys that only a restart applies (kuimenctl exits non-zero on either). */
static void reply_reload(struct km_daemon *d, struct km_control_buf *b)
{
        int rc = km_daemon_reload(d);

        km_control_printf(b, "{\"reload\":\"%s\",\"config\":", rc == 0 ? "ok" : "failed");
        if (d->config_path)
                km_control_json_str(b, d->config_path);
        else
                km_control_printf(b, "null");
        if (rc == 0) {
                km_control_printf(b, ",\"classes\":%zu", d->route.n);
                put_strv(b, "restart_needed", &d->reload_restart);
        } else {
                put_strv(b, "errors", &d->reload_errors);
        }
        km_control_printf(b, "}\n");
}

static void reply_error(struct km_control_buf *b, const char *msg)
{
        km_control_printf(b, "{\"error\":");
        km_control_json_str(b, msg);
        km_control_printf(b, "}\n");
}

/* ---- the dead letters: spool dead | retry ID|all | drop ID|all ------------------- */

#define DEAD_LIST 1000 /* shown by "spool dead" at most (oldest first), out of dead_held */

static void reply_dead(struct km_daemon *d, struct km_control_buf *b)
{
        struct km_spool_stats st;
        struct km_spool_dead *v = calloc(DEAD_LIST, sizeof(*v));
        int64_t now = km_now_ms();
        int n;

        if (!v || (n = km_spool_dead_list(d->spool, v, DEAD_LIST)) < 0) {
                free(v);
                reply_error(b, "cannot read the set-aside messages");
                return;
        }
        km_spool_stats(d->spool, &st);
        put_node(b, d, now);
        km_control_printf(b, "\"set_aside\":%llu,\"held\":%llu,\"dead\":[", (unsigned long long)st.set_aside,
                          (unsigned long long)st.dead);
        for (int i = 0; i < n; i++) {
                km_control_printf(b, "%s{\"id\":%llu,\"direction\":\"%s\",\"priority\":%d,\"class\":", i ? "," : "",
                                  (unsigned long long)v[i].id, dir_name(v[i].dir), v[i].prio);
                km_control_json_str(b, v[i].cls);
                km_control_printf(b, ",\"topic\":");
                km_control_json_str(b, v[i].topic);
                km_control_printf(b, ",\"bytes\":%u,\"why\":", v[i].len);
                km_control_json_str(b, v[i].why);
                km_control_printf(b, ",\"at_ms\":%lld,\"age_s\":%.3f}", (long long)v[i].at_ms, age_s(now, v[i].at_ms));
        }
        km_control_printf(b, "]}\n");
        free(v);
}

/* retry or drop: arg is a message id or "all". */
static void reply_dead_op(struct km_daemon *d, struct km_control_buf *b, bool retry, const char *arg)
{
        char *end;
        uint64_t id = 0;
        if (strncmp(arg, "all", 3) != 0 || (arg[3] && !strchr(" \t\r\n", arg[3]))) {
                errno = 0;
                unsigned long long v = strtoull(arg, &end, 10);
                if (errno || end == arg || (*end && !strchr(" \t\r\n", *end)) || !v) {
                        reply_error(b, "spool retry|drop takes a message id or all");
                        return;
                }
                id = v;
        }
        int sup = 0;
        int n = retry ? km_spool_dead_retry(d->spool, id, &sup) : km_spool_dead_drop(d->spool, id);
        if (n == -EPERM) {
                reply_error(b, "that message was refused on arrival and can never be published: drop it");
                return;
        }
        if (n < 0) {
                reply_error(b, retry ? "cannot send set-aside messages back" : "cannot drop set-aside messages");
                return;
        }
        if (n == 0 && !sup && id) {
                reply_error(b, "no set-aside message has that id (kuimenctl spool dead)");
                return;
        }
        if (retry && n)
                km_daemon_kick(d);
        if (retry)
                km_control_printf(b, "{\"retried\":%d,\"superseded\":%d}\n", n, sup);
        else
                km_control_printf(b, "{\"dropped\":%d}\n", n);
}

/* "spool" alone is the queue; "spool dead|retry|drop ..." the dead letters. */
static void reply_spool(struct km_daemon *d, struct km_control_buf *b, const char *args)
{
        char sub[16];
        args += strspn(args, " \t");
        size_t n = strcspn(args, " \t\r\n");
        if (!n) {
                km_control_status(d, b, true);
                return;
        }
        snprintf(sub, sizeof(sub), "%.*s", (int)(n < sizeof(sub) ? n : sizeof(sub) - 1), args);
        const char *arg = args + n + strspn(args + n, " \t");
        if (strcmp(sub, "dead") == 0)
                reply_dead(d, b);
        else if (strcmp(sub, "retry") == 0 || strcmp(sub, "drop") == 0)
                reply_dead_op(d, b, sub[1] == 'e', arg);
        else
                reply_error(b, "unknown spool request (spool, spool dead, spool retry ID|all, spool drop ID|all)");
}

static bool control_complete(const char *req, size_t len)
{
        return memchr(req, '\n', len) != NULL;
}

static void control_answer(struct km_daemon *d, const char *req, size_t len, bool too_long, struct km_control_buf *out)
{
        char cmd[32];
        size_t n = strcspn(req, " \t\r\n");
        (void)len;

        if (too_long) {
                reply_error(out, "request too long");
                return;
        }
        snprintf(cmd, sizeof(cmd), "%.*s", (int)(n < sizeof(cmd) ? n : sizeof(cmd) - 1), req);
        if (strcmp(cmd, "status") == 0)
                km_control_status(d, out, false);
        else if (strcmp(cmd, "spool") == 0)
                reply_spool(d, out, req + n);
        else if (strcmp(cmd, "links") == 0)
                reply_links(d, out);
        else if (strcmp(cmd, "units") == 0)
                km_control_units(d, out);
        else if (strcmp(cmd, "bases") == 0)
                km_control_bases(d, out);
        else if (strcmp(cmd, "reload") == 0)
                reply_reload(d, out);
        else if (strcmp(cmd, "call") == 0)
                km_calls_control(d->calls, req + n, out);
        else if (strcmp(cmd, "incident") == 0)
                km_incidents_control(d->incidents, req + n, out);
        else
                reply_error(out, "unknown request (status, links, units, bases, spool, reload, call or incident)");
}

static const struct km_control_proto control_proto = {
        .tag = "control",
        .max_request = CONTROL_MAX_REQUEST,
        .complete = control_complete,
        .answer = control_answer,
};

/* ---- kuimen --live ---------------------------------------------------------------- */

/* Lines built word by word and broken before width (0: never); a continuation is
 * indented by cont spaces. What a terminal of 80 columns shows without its own wrap
 * cutting a number in two. */
struct wrap {
        FILE *out;
        int width, cont, col;
        bool fresh; /* the next word starts the line's text: no space before it */
};

/* Starts a line with prefix (columns kept as they are). */
static void wrap_start(struct wrap *w, const char *prefix)
{
        fputs(prefix, w->out);
        w->col = (int)strlen(prefix);
        w->fresh = true;
}

static void wrap_word(struct wrap *w, const char *word)
{
        int len = (int)strlen(word);
        if (!w->fresh && w->width && w->col + 1 + len > w->width) {
                fprintf(w->out, "\n%*s", w->cont, "");
                w->col = w->cont;
        } else if (!w->fresh) {
                fputc(' ', w->out);
                w->col++;
        }
        fputs(word, w->out);
        w->col += len;
        w->fresh = false;
}

/* Each space-separated word of text. */
static void wrap_text(struct wrap *w, const char *text)
{
        char word[200];
        while (*text) {
                text += strspn(text, " ");
                size_t n = strcspn(text, " ");
                if (!n)
                        break;
                snprintf(word, sizeof(word), "%.*s", (int)n, text);
                wrap_word(w, word);
                text += n;
        }
}

static void wrap_end(struct wrap *w)
{
        fputc('\n', w->out);
        w->col = 0;
        w->fresh = true;
}

static int live_width(FILE *out)
{
        struct winsize ws;
        const char *cols = getenv("COLUMNS");
        if (isatty(fileno(out)) && ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
                return ws.ws_col;
        if (cols && atoi(cols) >= 20)
                return atoi(cols);
        return 0;
}

/* 0.4s, 12s, 3m05s, 2h07m, 3d04h: kuimenctl's SINCE column. */
static const char *span(double s, char *buf, size_t n)
{
        long t = (long)s;
        if (s < 10)
                snprintf(buf, n, "%.1fs", s);
        else if (t < 60)
                snprintf(buf, n, "%lds", t);
        else if (t < 3600)
                snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
        else if (t < 86400)
                snprintf(buf, n, "%ldh%02ldm", t / 3600, t % 3600 / 60);
        else
                snprintf(buf, n, "%ldd%02ldh", t / 86400, t % 86400 / 3600);
        return buf;
}

static void live_counters(struct wrap *w, struct km_daemon *d, const struct km_spool_stats *st)
{
        uint64_t acked[KM_DIR_COUNT] = { 0, 0 };
        char word[64], clock[16];
        time_t t = time(NULL);
        struct tm tm;

        for (size_t i = 0; i < d->nlinks; i++)
                acked[d->links[i]->dir == KM_DIR_UP ? KM_DIR_UP : KM_DIR_DOWN] += d->links[i]->acked;
        /* The names of the log's stats line (km_daemon_counters); the first three always,
         * the rest once they are not 0: a column of zeros hides the one that moved.
         * spool_bytes is in the spool's line, as a size. */
        const struct {
                const char *name;
                uint64_t v;
        } c[] = {
                { "in", st->pushed },
                { "spooled", st->depth[KM_DIR_UP] + st->depth[KM_DIR_DOWN] },
                { "forwarded", acked[KM_DIR_UP] },
                { "delivered_local", acked[KM_DIR_DOWN] },
                { "dropped", st->dropped },
                { "expired", st->expired },
                { "coalesced", st->coalesced },
                { "bad_input", __atomic_load_n(&d->bad_input, __ATOMIC_RELAXED) },
                { "refused", d->refused },
                { "cmd_in_mqtt", __atomic_load_n(&d->cmd_in[KM_CMD_MQTT], __ATOMIC_RELAXED) },
                { "cmd_in_narrow", __atomic_load_n(&d->cmd_in[KM_CMD_NARROW], __ATOMIC_RELAXED) },
                { "cmd_duplicates", __atomic_load_n(&d->cmd_duplicates, __ATOMIC_RELAXED) },
                { "cmd_sent_narrow", d->cmd_sent_narrow },
                { "cmd_settled_mqtt", d->cmd_settled_mqtt },
                { "set_aside", st->set_aside },
                { "set_aside_held", st->dead },
        };
        localtime_r(&t, &tm);
        strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
        wrap_start(w, "");
        wrap_word(w, clock);
        for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
                if (i >= 3 && !c[i].v)
                        continue;
                snprintf(word, sizeof(word), "%s=%llu", c[i].name, (unsigned long long)c[i].v);
                wrap_word(w, word);
        }
        wrap_end(w);
}

static void live_links(struct wrap *w, struct km_daemon *d, const struct km_spool_stats *st, int64_t now)
{
        struct km_link *ls[KM_MAX_LINKS];
        size_t n = links_sorted(d, ls);
        int nw = 4;
        char line[200], since[32];

        for (size_t i = 0; i < n; i++)
                if ((int)strlen(ls[i]->name) > nw)
                        nw = (int)strlen(ls[i]->name);
        for (size_t i = 0; i < n; i++) {
                const struct km_link *l = ls[i];
                /* The columns as one word: the wrap breaks only inside the reason. */
                snprintf(line, sizeof(line), "  %-*s  %-4s  %-8s  %6s  backlog %-6llu", nw, l->name, dir_name(l->dir),
                         km_link_shown_state(l), span(age_s(now, l->since_ms), since, sizeof(since)),
                         (unsigned long long)km_control_link_backlog(d, l, st));
                size_t len = strlen(line);
                bool below = w->width && len + 1 + strlen(l->reason) > (size_t)w->width;
                if (below) {
                        /* The whole reason below the row, its words wrapped there. */
                        while (len && line[len - 1] == ' ')
                                line[--len] = '\0';
                        fprintf(w->out, "%s\n", line);
                        snprintf(line, sizeof(line), "%*s", w->cont, "");
                }
                wrap_start(w, line);
                w->fresh = below; /* else a space between the columns and the reason */
                wrap_text(w, l->reason);
                wrap_end(w);
        }
}

/* 460 B, 1.2 KiB, 3.4 MiB. */
static const char *bytes_text(uint64_t b, char *buf, size_t n)
{
        if (b < 1024)
                snprintf(buf, n, "%llu B", (unsigned long long)b);
        else if (b < 1024 * 1024)
                snprintf(buf, n, "%.1f KiB", (double)b / 1024);
        else if (b < 1024ULL * 1024 * 1024)
                snprintf(buf, n, "%.1f MiB", (double)b / (1024 * 1024));
        else
                snprintf(buf, n, "%.1f GiB", (double)b / (1024.0 * 1024 * 1024));
        return buf;
}

static void live_spool(struct wrap *w, struct km_daemon *d, const struct km_spool_stats *st)
{
        struct km_control_class *k = calloc(KM_PRIO_COUNT, sizeof(*k));
        int n = k ? km_control_classes(d, st, k, KM_PRIO_COUNT) : 0, last = -1;
        uint64_t depth = st->depth[KM_DIR_UP] + st->depth[KM_DIR_DOWN];
        char word[160], size[32], age[32];

        if (!k)
                n = 0;
        for (int i = 0; i < n; i++)
                if (k[i].depth)
                        last = i;
        wrap_start(w, "  spool: ");
        if (!depth) {
                wrap_word(w, "empty");
        } else {
                snprintf(word, sizeof(word), "%llu message%s, %s, oldest %s", (unsigned long long)depth, depth == 1 ? "" : "s",
                         bytes_text(st->bytes, size, sizeof(size)),
                         span(age_s(km_daemon_now(d), oldest_any(st)), age, sizeof(age)));
                wrap_text(w, word);
        }
        wrap_end(w);
        if (last >= 0) {
                wrap_start(w, "  by class: ");
                for (int i = 0; i <= last; i++) {
                        if (!k[i].depth)
                                continue;
                        snprintf(word, sizeof(word), "%s %llu%s", k[i].name, (unsigned long long)k[i].depth,
                                 i < last ? "," : "");
                        wrap_word(w, word); /* a class and its count stay on one line */
                }
                wrap_end(w);
        }
        free(k);
        if (st->storage_err) {
                wrap_start(w, "  storage: ");
                wrap_text(w, st->storage_why);
                wrap_end(w);
        }
}

void km_control_live(struct km_daemon *d, FILE *out)
{
        struct km_spool_stats st;
        struct km_drain_est e;
        char text[160];
        struct wrap w = { out, live_width(out), 4, 0, true };

        int64_t now = km_now_ms();

        km_spool_stats(d->spool, &st);
        live_counters(&w, d, &st);
        live_links(&w, d, &st, now);
        live_spool(&w, d, &st);
        km_control_drain(d, -1, &e);
        km_status_drain_text(&e, text, sizeof(text));
        if (*text) {
                wrap_start(&w, "  ");
                wrap_text(&w, text);
                wrap_end(&w);
        }
        fflush(out);
}

/* ---- the socket ------------------------------------------------------------------ */

/* A socket file left by a kuimen that died is replaced; one another kuimen answers on,
 * or a file that is not a socket, is left alone. Returns 0 when path is free now. */
static int clear_stale(const char *path, const struct sockaddr_un *sa)
{
        struct stat stb;
        int fd, rc;

        if (lstat(path, &stb) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(stb.st_mode))
                return -EEXIST;
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
                return -errno;
        rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
        close(fd);
        if (rc == 0)
                return -EADDRINUSE;
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

static int listen_unix(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, rc;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if ((rc = clear_stale(path, &sa)) < 0)
                return rc;
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
                return -errno;
        /* 0660: the service's group may ask too (kuimenctl run by an operator in it). */
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0660) < 0 || listen(fd, 16) < 0) {
                rc = -errno;
                close(fd);
                return rc;
        }
        return fd;
}

int km_control_start(struct km_daemon *d, struct km_conf *c)
{
        struct control_conf cc = { 0 };
        char *path;
        int fd, rc;

        if ((rc = sample_start(d)) < 0)
                return rc;
        km_conf_apply(c, "control", control_keys, &cc);
        path = socket_path(&cc, d->node.spool);
        km_conf_release(control_keys, &cc);
        if (!path)
                return -ENOMEM;
        fd = listen_unix(path);
        if (fd < 0) {
                KM_LOG(KM_LOG_ERR, "control", "%s: %s; running without the control socket", path,
                       fd == -EADDRINUSE ? "another kuimen answers there"
                       : fd == -EEXIST ? "exists and is not a socket" : strerror(-fd));
                free(path);
                return 0;
        }
        rc = km_control_serve(d, fd, &control_proto, path);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "control", "%s: %s; running without the control socket", path, strerror(-rc));
                close(fd);
                unlink(path);
        } else {
                KM_LOG(KM_LOG_INFO, "control", "listening on %s", path);
        }
        free(path);
        return rc == -ENOMEM ? rc : 0;
}

/* SPDX-License-Identifier: MIT */
/* The command post view: the page, /api/ and /api/events (Server-Sent Events) from libmicrohttpd run on the loop. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calls.h"
#include "control.h"
#include "daemon.h"
#include "incidents.h"
#include "log.h"
#include "web.h"

/*
 * How it runs: libmicrohttpd in its external-polling epoll mode. Its epoll fd is one
 * IO source of the loop and MHD_get_timeout arms one timer; either calls MHD_run,
 * which never blocks. So the page adds no thread and every producer it calls
 * (gateway/control.c's, the calls' and incidents') runs on the loop thread as for the
 * control socket. An event stream is a response whose reader suspends its connection
 * while it has nothing to send; a push appends to each stream's buffer and resumes it.
 */

#define PUSH_CHECK_US 250000ULL   /* how often link states are compared for a push */
#define PUSH_EVERY_MS 1000        /* a full push at least this often while someone watches */
#define HISTORY_EVERY_US 10000000ULL
#define HISTORY_SAMPLES 1080      /* 3 h at 10 s */
#define STREAM_MAX_BYTES (1 << 20) /* a stream this far behind is closed: the client reconnects */
#define MAX_CONNECTIONS 64
#define MAX_PER_IP 16
#define MAX_PEM (256 << 10) /* a certificate chain, a key or a CA bundle */
#define ID_MAX 72 /* "base/id" of an incident a center heard */

/* ---- config ---------------------------------------------------------------------- */

struct http_conf {
        char *listen, *cert, *key, *client_ca, *user, *password, *tiles;
};

#define OFF(f) offsetof(struct http_conf, f)
static const struct km_conf_key http_keys[] = {
        { "listen", KM_CONF_STRING, NULL, OFF(listen),
          "HOST:PORT of the command post page and its JSON API, e.g. 127.0.0.1:8080 (off unless set); an address "
          "other than loopback needs cert and key, and a password (password_file) or client_ca",
          0, 0, NULL },
        { "cert", KM_CONF_STRING, NULL, OFF(cert), "PEM certificate (chain) file: serve HTTPS", 0, 0, NULL },
        { "key", KM_CONF_STRING, NULL, OFF(key), "PEM private key file of cert", 0, 0, NULL },
        { "client_ca", KM_CONF_STRING, NULL, OFF(client_ca),
          "PEM CA file: ask browsers for a client certificate and let in only those this CA signed (needs cert)", 0,
          0, NULL },
        { "user", KM_CONF_STRING, "kuimen", OFF(user), "user name of HTTP basic authentication (with password)", 0, 0,
          NULL },
        { "password", KM_CONF_STRING, NULL, OFF(password),
          "HTTP basic authentication for every page and API; better password_file = PATH (mode 0600) or "
          "password_credential = NAME, which stand for it",
          0, 0, NULL },
        { "tiles", KM_CONF_STRING, NULL, OFF(tiles),
          "base map tile URL with {z}, {x} and {y} (a local tile server, e.g. http://10.0.0.2:8081/{z}/{x}/{y}.png); "
          "without it the map is a plain lat/lon grid that needs nothing from outside",
          0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

const char *km_http_parse_listen(const char *s, struct sockaddr_storage *sa, socklen_t *salen)
{
        char host[64];
        const char *colon = strrchr(s, ':');
        char *end;

        if (!colon || colon == s)
                return "expected HOST:PORT";
        long port = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || port < 1 || port > 65535)
                return "port must be 1 to 65535";
        size_t hl = (size_t)(colon - s);
        if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']')
                s++, hl -= 2;
        if (hl >= sizeof(host))
                return "host too long";
        memcpy(host, s, hl);
        host[hl] = '\0';
        memset(sa, 0, sizeof(*sa));
        struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
        if (strcmp(host, "localhost") == 0)
                snprintf(host, sizeof(host), "127.0.0.1");
        if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
                v4->sin_family = AF_INET;
                v4->sin_port = htons((uint16_t)port);
                *salen = sizeof(*v4);
        } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
                v6->sin6_family = AF_INET6;
                v6->sin6_port = htons((uint16_t)port);
                *salen = sizeof(*v6);
        } else {
                return "host must be an IPv4 address, [IPv6 address] or localhost";
        }
        return NULL;
}

bool km_http_is_loopback(const struct sockaddr_storage *sa)
{
        if (sa->ss_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
        return sa->ss_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

static bool readable(struct km_conf *c, const char *key, const char *path)
{
        if (path && access(path, R_OK) != 0) {
                km_conf_error(c, "http", key, "'%s': cannot read: %s", path, strerror(errno));
                return false;
        }
        return true;
}

int km_http_check(struct km_conf *c)
{
        struct http_conf hc = { 0 };
        struct sockaddr_storage sa;
        socklen_t salen;
        int bad = km_conf_apply(c, "http", http_keys, &hc);
        const char *why;

        if (hc.listen && (why = km_http_parse_listen(hc.listen, &sa, &salen))) {
                km_conf_error(c, "http", "listen", "'%s': %s", hc.listen, why);
                bad++;
        }
        if (!!hc.cert != !!hc.key) {
                km_conf_error(c, "http", hc.cert ? "cert" : "key", "cert and key go together (HTTPS needs both)");
                bad++;
        }
        if (hc.client_ca && !hc.cert) {
                km_conf_error(c, "http", "client_ca", "client certificates need HTTPS: set cert and key");
                bad++;
        }
        bad += !readable(c, "cert", hc.cert) + !readable(c, "key", hc.key) + !readable(c, "client_ca", hc.client_ca);
        struct stat st;
        if (hc.key && stat(hc.key, &st) == 0 && (st.st_mode & S_IROTH))
                km_conf_warn(c, "http", "key", "'%s' (a private key) is readable by every user: chmod 600 (or 640 with group kuimen)",
                             hc.key);
        if (hc.password && (!*hc.password || strlen(hc.password) > 256)) {
                km_conf_error(c, "http", "password", "must be 1 to 256 bytes");
                bad++;
        }
        if (hc.user && (!*hc.user || strchr(hc.user, ':'))) {
                km_conf_error(c, "http", "user", "'%s': must be a name without ':'", hc.user);
                bad++;
        }
        /* Off loopback the page shows where every unit is and what the center asked:
         * never in clear text, never to whoever can reach the port. */
        if (hc.listen && !km_http_parse_listen(hc.listen, &sa, &salen) && !km_http_is_loopback(&sa)) {
                if (!hc.cert || !hc.key) {
                        km_conf_error(c, "http", "listen", "'%s' is not loopback: set cert and key (HTTPS)", hc.listen);
                        bad++;
                }
                if (!hc.password && !hc.client_ca) {
                        km_conf_error(c, "http", "listen",
                                      "'%s' is not loopback: set password_file or client_ca (who may look)", hc.listen);
                        bad++;
                }
        }
        if (hc.tiles && ((strncmp(hc.tiles, "http://", 7) != 0 && strncmp(hc.tiles, "https://", 8) != 0 &&
                          hc.tiles[0] != '/') ||
                         !strstr(hc.tiles, "{z}") || !strstr(hc.tiles, "{x}") || !strstr(hc.tiles, "{y}") ||
                         strpbrk(hc.tiles, "\"'<> \\"))) {
                km_conf_error(c, "http", "tiles", "'%s': expected an http(s):// or /path URL with {z}, {x} and {y}",
                              hc.tiles);
                bad++;
        }
        km_conf_release(http_keys, &hc);
        return bad ? -EINVAL : 0;
}

void km_http_print_help(FILE *out)
{
        km_conf_print_help(out, "http", http_keys);
}

/* ---- the server ------------------------------------------------------------------ */

struct stream;

/* Per link, at one history sample. */
struct hist_link {
        uint8_t state; /* 0 down, 1 degraded, 2 up */
        uint64_t acked, sent, bytes, transitions;
};

struct hist_sample {
        int64_t at_ms;
        uint64_t depth[KM_DIR_COUNT];
        struct hist_link link[KM_MAX_LINKS];
};

struct http {
        struct km_daemon *d;
        const char *tag; /* log subsystem: "http", "metrics" */
        /* The metrics server: GET /metrics answers this, nothing else is served. */
        void (*metrics)(struct km_daemon *d, struct km_control_buf *b);
        struct MHD_Daemon *mhd;
        sd_event_source *io, *timer, *push, *hist_src;
        bool stopped;
        char *user, *password; /* basic authentication when password is set */
        bool client_certs;
        char *tiles;
        char *csp;
        char *cert_pem, *key_pem, *ca_pem; /* MHD reads them from memory */
        struct stream *streams;
        size_t nstreams;
        char links_seen[KM_MAX_LINKS * 200]; /* states and reasons at the last push */
        int64_t pushed_mono;
        struct hist_sample *hist; /* ring of HISTORY_SAMPLES */
        size_t hist_n, hist_next;
};

/* An open /api/events: what is still to be sent, and whether its connection waits. */
struct stream {
        struct stream *next;
        struct http *h;
        struct MHD_Connection *conn;
        struct km_control_buf out;
        size_t off;
        bool suspended, closing;
};

static void http_arm(struct http *h)
{
        MHD_UNSIGNED_LONG_LONG ms;
        if (!h->mhd || h->stopped)
                return;
        if (MHD_get_timeout(h->mhd, &ms) == MHD_YES) {
                sd_event_source_set_time_relative(h->timer, (uint64_t)ms * 1000);
                sd_event_source_set_enabled(h->timer, SD_EVENT_ONESHOT);
        } else {
                sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
        }
}

static void http_run(struct http *h)
{
        if (!h->mhd || h->stopped)
                return;
        MHD_run(h->mhd);
        http_arm(h);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        (void)s, (void)fd, (void)revents;
        http_run(ud);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)s, (void)usec;
        http_run(ud);
        return 0;
}

/* ---- responses --------------------------------------------------------------------- */

static void common_headers(struct http *h, struct MHD_Response *r, const char *type, bool nocache)
{
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
        MHD_add_response_header(r, "Content-Security-Policy", h->csp);
        if (nocache)
                MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
}

static enum MHD_Result reply_text(struct http *h, struct MHD_Connection *c, unsigned status, const char *text)
{
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
        if (!r)
                return MHD_NO;
        common_headers(h, r, "text/plain; charset=utf-8", true);
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result rc = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return rc;
}

/* Sends b's JSON (taken over: b is emptied). A producer's {"error":...} is a 404. */
static enum MHD_Result reply_json(struct http *h, struct MHD_Connection *c, struct km_control_buf *b)
{
        if (b->failed || !b->p) {
                km_control_buf_free(b);
                return reply_text(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        unsigned status = strncmp(b->p, "{\"error\":", 9) == 0 ? MHD_HTTP_NOT_FOUND : MHD_HTTP_OK;
        struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(b->len, b->p, free);
        if (!r) {
                km_control_buf_free(b);
                return MHD_NO;
        }
        b->p = NULL;
        b->len = b->cap = 0;
        common_headers(h, r, "application/json", true);
        enum MHD_Result rc = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return rc;
}

static enum MHD_Result reply_asset(struct http *h, struct MHD_Connection *c, const struct km_web_asset *a)
{
        struct MHD_Response *r = MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
        if (!r)
                return MHD_NO;
        /* The page changes with the binary: no-cache makes a browser ask again after an
         * upgrade instead of mixing an old script with a new API. */
        common_headers(h, r, a->type, false);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
}

/* ---- history: the sparklines' data ------------------------------------------------- */

static uint8_t state_code(const struct km_link *l)
{
        return l->state != KM_LINK_UP ? 0 : l->degraded ? 1 : 2;
}

static void hist_take(struct http *h)
{
        struct km_spool_stats st;
        struct hist_sample *s = &h->hist[h->hist_next];

        km_spool_stats(h->d->spool, &st);
        memset(s, 0, sizeof(*s));
        s->at_ms = km_now_ms();
        for (int dir = 0; dir < KM_DIR_COUNT; dir++)
                s->depth[dir] = st.depth[dir];
        for (size_t i = 0; i < h->d->nlinks && i < KM_MAX_LINKS; i++) {
                const struct km_link *l = h->d->links[i];
                s->link[i] = (struct hist_link){ state_code(l), l->acked, l->sent, l->bytes_sent, l->transitions };
        }
        h->hist_next = (h->hist_next + 1) % HISTORY_SAMPLES;
        if (h->hist_n < HISTORY_SAMPLES)
                h->hist_n++;
}

static int on_hist(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)usec;
        hist_take(ud);
        sd_event_source_set_time_relative(s, HISTORY_EVERY_US);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static const struct hist_sample *hist_at(const struct http *h, size_t k) /* k = 0: the oldest */
{
        return &h->hist[(h->hist_next + HISTORY_SAMPLES - h->hist_n + k) % HISTORY_SAMPLES];
}

static uint64_t delta(uint64_t now, uint64_t then)
{
        return now > then ? now - then : 0;
}

/* {"interval_s","samples","links":[{"link","points":[[t_ms,state,acked,bytes,transitions]...]}],
 * "spool":[[t_ms,up,down]...]}: per interval the state at its end and what moved in it. */
static void put_history(struct http *h, struct km_control_buf *b)
{
        km_control_printf(b, "{\"interval_s\":%llu,\"samples\":%zu,\"links\":[", HISTORY_EVERY_US / 1000000ULL,
                          h->hist_n);
        for (size_t i = 0; i < h->d->nlinks && i < KM_MAX_LINKS; i++) {
                km_control_printf(b, "%s{\"link\":", i ? "," : "");
                km_control_json_str(b, h->d->links[i]->name);
                km_control_printf(b, ",\"points\":[");
                for (size_t k = 1; k < h->hist_n; k++) {
                        const struct hist_link *p = &hist_at(h, k - 1)->link[i], *q = &hist_at(h, k)->link[i];
                        km_control_printf(b, "%s[%lld,%u,%llu,%llu,%llu]", k > 1 ? "," : "",
                                          (long long)hist_at(h, k)->at_ms, q->state,
                                          (unsigned long long)delta(q->acked, p->acked),
                                          (unsigned long long)delta(q->bytes, p->bytes),
                                          (unsigned long long)delta(q->transitions, p->transitions));
                }
                km_control_printf(b, "]}");
        }
        km_control_printf(b, "],\"spool\":[");
        for (size_t k = 0; k < h->hist_n; k++) {
                const struct hist_sample *s = hist_at(h, k);
                km_control_printf(b, "%s[%lld,%llu,%llu]", k ? "," : "", (long long)s->at_ms,
                                  (unsigned long long)s->depth[KM_DIR_UP], (unsigned long long)s->depth[KM_DIR_DOWN]);
        }
        km_control_printf(b, "]}\n");
}

/* ---- the event stream -------------------------------------------------------------- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
        struct stream *s = cls;
        (void)pos;
        if (s->closing || s->h->stopped)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (s->off < s->out.len) {
                size_t n = s->out.len - s->off < max ? s->out.len - s->off : max;
                memcpy(buf, s->out.p + s->off, n);
                s->off += n;
                if (s->off == s->out.len)
                        s->off = s->out.len = 0;
                return (ssize_t)n;
        }
        /* Nothing to say: off MHD's loop until a push resumes it (returning 0 alone
         * would have MHD ask again at once, a busy loop). */
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        return 0;
}

static void stream_free(void *cls)
{
        struct stream *s = cls;
        struct http *h = s->h;
        for (struct stream **p = &h->streams; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        h->nstreams--;
                        break;
                }
        km_control_buf_free(&s->out);
        free(s);
}

static void stream_add(struct stream *s, const char *event, const struct km_control_buf *json)
{
        if (s->closing)
                return;
        if (s->out.len - s->off > STREAM_MAX_BYTES) {
                s->closing = true; /* a client this slow reconnects and starts afresh */
        } else {
                /* Our JSON is one line: \n ends it, and SSE's data: must not hold one. */
                int len = (int)json->len;
                while (len && json->p[len - 1] == '\n')
                        len--;
                km_control_printf(&s->out, "event: %s\ndata: %.*s\n\n", event, len, json->p);
        }
        if (s->suspended) {
                s->suspended = false;
                MHD_resume_connection(s->conn);
        }
}

static void broadcast(struct http *h, struct stream *only, const char *event,
                      void (*produce)(struct km_daemon *d, struct km_control_buf *b))
{
        struct km_control_buf b = { 0 };
        produce(h->d, &b);
        if (!b.failed && b.p)
                for (struct stream *s = h->streams; s; s = s->next)
                        if (!only || s == only)
                                stream_add(s, event, &b);
        km_control_buf_free(&b);
}

static void produce_status(struct km_daemon *d, struct km_control_buf *b)
{
        km_control_status(d, b, false);
}

static void produce_calls(struct km_daemon *d, struct km_control_buf *b)
{
        km_calls_control(d->calls, "show", b);
}

static void produce_incidents(struct km_daemon *d, struct km_control_buf *b)
{
        km_incidents_control(d->incidents, "show", b);
}

static bool is_center(const struct km_daemon *d)
{
        return strcmp(d->node.role, "center") == 0;
}

/* Everything the page shows, to one stream (a new one) or to all. */
static void push_all(struct http *h, struct stream *only)
{
        broadcast(h, only, "status", produce_status);
        broadcast(h, only, "units", km_control_units);
        if (is_center(h->d))
                broadcast(h, only, "bases", km_control_bases);
        if (h->d->calls)
                broadcast(h, only, "calls", produce_calls);
        if (h->d->incidents)
                broadcast(h, only, "incidents", produce_incidents);
}

/* Every 250 ms while someone watches: a link that changed state is pushed at once,
 * the rest once a second. */
static int on_push(sd_event_source *src, uint64_t usec, void *ud)
{
        struct http *h = ud;
        char seen[sizeof(h->links_seen)];
        size_t n = 0;
        (void)usec;
        seen[0] = '\0';
        for (size_t i = 0; i < h->d->nlinks && n < sizeof(seen); i++)
                n += (size_t)snprintf(seen + n, sizeof(seen) - n, "%s:%s:%s;", h->d->links[i]->name,
                                      km_link_shown_state(h->d->links[i]), h->d->links[i]->reason);
        int64_t now = km_mono_ms();
        if (h->streams && (strcmp(seen, h->links_seen) != 0 || now - h->pushed_mono >= PUSH_EVERY_MS)) {
                memcpy(h->links_seen, seen, sizeof(seen));
                h->pushed_mono = now;
                push_all(h, NULL);
                http_run(h); /* the resumed streams write now, not at the next socket event */
        }
        sd_event_source_set_time_relative(src, PUSH_CHECK_US);
        return sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
}

static enum MHD_Result open_stream(struct http *h, struct MHD_Connection *c)
{
        struct stream *s = calloc(1, sizeof(*s));
        if (!s)
                return MHD_NO;
        s->h = h;
        s->conn = c;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
        if (!r) {
                free(s);
                return MHD_NO;
        }
        s->next = h->streams;
        h->streams = s;
        h->nstreams++;
        /* The reconnect delay a browser's EventSource waits after a drop. */
        km_control_printf(&s->out, "retry: 1000\n\n");
        push_all(h, s);
        common_headers(h, r, "text/event-stream", true);
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
}

/* ---- requests ---------------------------------------------------------------------- */

/* Constant time in the secret's bytes: a length differing is said at once, which
 * tells an attacker only the length. */
static bool user_ok(struct http *h, const char *name, const char *pass)
{
        size_t nl = strlen(name), pl = strlen(pass);
        bool ok = strlen(h->user) == nl && strlen(h->password) == pl;
        ok &= sodium_memcmp(h->user, name, ok ? nl : 0) == 0;
        ok &= sodium_memcmp(h->password, pass, ok ? pl : 0) == 0;
        return ok;
}

static bool cert_ok(struct MHD_Connection *c)
{
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
        unsigned status = 0, n = 0;
        if (!ci || !ci->tls_session)
                return false;
        gnutls_session_t s = (gnutls_session_t)ci->tls_session;
        return gnutls_certificate_get_peers(s, &n) && n > 0 && gnutls_certificate_verify_peers2(s, &status) == 0 &&
               status == 0;
}

/* "/api/calls/ID" → "show ID", when ID is a plain id (a center's "base/id" for
 * incidents); NULL otherwise. */
/* "show <id>" for a url of prefix + id; slash: a center's relayed incidents are named
 * <base>/<id>, calls never have one. */
static const char *show_arg(const char *url, const char *prefix, bool slash, char *out, size_t n)
{
        size_t plen = strlen(prefix);
        if (strncmp(url, prefix, plen) != 0)
                return NULL;
        const char *id = url + plen;
        size_t len = strlen(id);
        if (!len || len >= ID_MAX ||
            strspn(id, slash ? "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/"
                             : "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len)
                return NULL;
        snprintf(out, n, "show %s", id);
        return out;
}

static enum MHD_Result route(struct http *h, struct MHD_Connection *c, const char *url)
{
        struct km_control_buf b = { 0 };
        struct km_daemon *d = h->d;
        char arg[ID_MAX + 8];

        if (strcmp(url, "/") == 0)
                url = "/index.html";
        for (const struct km_web_asset *a = km_web_assets; a->path; a++)
                if (strcmp(url, a->path) == 0)
                        return reply_asset(h, c, a);
        if (strcmp(url, "/api/events") == 0)
                return open_stream(h, c);
        if (strcmp(url, "/api/status") == 0) {
                km_control_status(d, &b, false);
        } else if (strcmp(url, "/api/units") == 0) {
                km_control_units(d, &b);
        } else if (strcmp(url, "/api/bases") == 0) {
                km_control_bases(d, &b);
        } else if (strcmp(url, "/api/history") == 0) {
                put_history(h, &b);
        } else if (strcmp(url, "/api/config") == 0) {
                km_control_printf(&b, "{\"node\":");
                km_control_json_str(&b, d->node.name);
                km_control_printf(&b, ",\"role\":");
                km_control_json_str(&b, d->node.role);
                km_control_printf(&b, ",\"version\":\"%s\",\"tiles\":", KM_VERSION);
                if (h->tiles)
                        km_control_json_str(&b, h->tiles);
                else
                        km_control_printf(&b, "null");
                km_control_printf(&b, ",\"history_interval_s\":%llu,\"calls\":%s,\"incidents\":%s}\n",
                                  HISTORY_EVERY_US / 1000000ULL, d->calls ? "true" : "false",
                                  d->incidents ? "true" : "false");
        } else if (strcmp(url, "/api/calls") == 0) {
                km_calls_control(d->calls, "show", &b);
        } else if (show_arg(url, "/api/calls/", false, arg, sizeof(arg))) {
                km_calls_control(d->calls, arg, &b);
        } else if (strcmp(url, "/api/incidents") == 0) {
                km_incidents_control(d->incidents, "show", &b);
        } else if (show_arg(url, "/api/incidents/", true, arg, sizeof(arg))) {
                km_incidents_control(d->incidents, arg, &b);
        } else {
                km_control_printf(&b, "{\"error\":\"not found: the API is /api/status, /api/units, /api/bases, "
                                      "/api/history, /api/calls, /api/incidents, /api/config and /api/events\"}\n");
        }
        return reply_json(h, c, &b);
}

/* ---- /metrics ----------------------------------------------------------------------- */

/* HTTP/1.0 answers, as the hand-written server before gave (scrapers and tests read
 * them so); the body is taken over when owned. */
static enum MHD_Result metrics_reply(struct MHD_Connection *c, unsigned status, const char *type, char *body,
                                     size_t len, bool owned)
{
        struct MHD_Response *r = owned ? MHD_create_response_from_buffer_with_free_callback(len, body, free)
                                       : MHD_create_response_from_buffer(len, body, MHD_RESPMEM_PERSISTENT);
        if (!r) {
                if (owned)
                        free(body);
                return MHD_NO;
        }
        MHD_set_response_options(r, MHD_RF_HTTP_1_0_COMPATIBLE_STRICT | MHD_RF_HTTP_1_0_SERVER, MHD_RO_END);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result rc = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return rc;
}

static enum MHD_Result metrics_request(struct http *h, struct MHD_Connection *c, const char *url, const char *method)
{
        static const char text[] = "text/plain; charset=utf-8";
        static char only_get[] = "only GET\n", not_found[] = "not found; metrics are at /metrics\n";

        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
                return metrics_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, only_get, sizeof(only_get) - 1, false);
        if (strcmp(url, "/metrics") != 0)
                return metrics_reply(c, MHD_HTTP_NOT_FOUND, text, not_found, sizeof(not_found) - 1, false);
        struct km_control_buf b = { 0 };
        h->metrics(h->d, &b);
        if (b.failed || !b.p) {
                km_control_buf_free(&b);
                return MHD_NO; /* nothing rather than half an exposition */
        }
        return metrics_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len, true);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **req)
{
        struct http *h = cls;
        (void)version, (void)upload, (void)upload_size, (void)req;

        if (h->metrics)
                return metrics_request(h, c, url, method);
        if (h->client_certs && !cert_ok(c))
                return reply_text(h, c, MHD_HTTP_FORBIDDEN, "a client certificate signed by client_ca is needed\n");
        if (h->password) {
                char *pass = NULL;
                char *user = MHD_basic_auth_get_username_password(c, &pass);
                bool ok = user && pass && user_ok(h, user, pass);
                if (pass)
                        sodium_memzero(pass, strlen(pass));
                MHD_free(user);
                MHD_free(pass);
                if (!ok) {
                        static const char text[] = "authentication needed\n";
                        struct MHD_Response *r =
                                MHD_create_response_from_buffer(sizeof(text) - 1, (void *)text, MHD_RESPMEM_PERSISTENT);
                        if (!r)
                                return MHD_NO;
                        common_headers(h, r, "text/plain; charset=utf-8", true);
                        enum MHD_Result rc = MHD_queue_basic_auth_fail_response(c, "kuimen", r);
                        MHD_destroy_response(r);
                        return rc;
                }
        }
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
                return reply_text(h, c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET: the page and its API only read\n");
        return route(h, c, url);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        char line[300];
        const struct http *h = cls;
        vsnprintf(line, sizeof(line), fmt, ap);
        line[strcspn(line, "\n")] = '\0';
        KM_LOG(KM_LOG_DEBUG, h ? h->tag : "http", "%s", line);
}

/* ---- lifetime ---------------------------------------------------------------------- */

/* On stop: streams end (MHD must not be stopped with a connection suspended), then
 * the server goes, so a stop does not wait for browsers. */
static void http_stop(void *ud)
{
        struct http *h = ud;
        if (h->stopped)
                return;
        for (struct stream *s = h->streams; s; s = s->next) {
                s->closing = true;
                if (s->suspended) {
                        s->suspended = false;
                        MHD_resume_connection(s->conn);
                }
        }
        if (h->io)
                sd_event_source_set_enabled(h->io, SD_EVENT_OFF);
        h->stopped = true;
        if (h->mhd)
                MHD_stop_daemon(h->mhd);
        h->mhd = NULL;
        h->timer = sd_event_source_disable_unref(h->timer);
        h->push = sd_event_source_disable_unref(h->push);
        h->hist_src = sd_event_source_disable_unref(h->hist_src);
}

static void http_free(struct http *h)
{
        if (!h)
                return;
        http_stop(h);
        if (h->password)
                sodium_memzero(h->password, strlen(h->password));
        free(h->password);
        free(h->user);
        free(h->tiles);
        free(h->csp);
        free(h->cert_pem);
        if (h->key_pem)
                sodium_memzero(h->key_pem, strlen(h->key_pem));
        free(h->key_pem);
        free(h->ca_pem);
        free(h->hist);
        free(h);
}

static void http_destroy(void *ud)
{
        struct http *h = ud;
        h->io = NULL; /* being freed: the loop calls this from inside its free */
        http_free(h);
}

static char *read_file(const char *path)
{
        FILE *f = fopen(path, "re");
        char *p = NULL;
        size_t len = 0;
        if (!f)
                return NULL;
        p = malloc(MAX_PEM + 1);
        if (p)
                len = fread(p, 1, MAX_PEM, f);
        fclose(f);
        if (p)
                p[len] = '\0';
        return p;
}

/* The origin of the tiles URL ("http://host:port"), for the page's CSP. */
static char *tiles_origin(const char *tiles)
{
        if (tiles[0] == '/')
                return strdup("'self'");
        const char *host = strstr(tiles, "//") + 2;
        size_t n = strcspn(host, "/");
        char *o = NULL;
        if (asprintf(&o, "%.*s%.*s", (int)(host - tiles), tiles, (int)n, host) < 0)
                return NULL;
        return o;
}

/* Starts h's MHD on sa with flags and opts (TLS), and joins it to the loop; the page's
 * server also gets its push and history timers. 0 on success (the loop then owns h),
 * 1 when it could not start (logged: kuimen runs without it), or -ENOMEM. h is the
 * caller's unless 0 is returned. */
static int serve(struct http *h, const struct sockaddr_storage *sa, unsigned flags, struct MHD_OptionItem *opts,
                 const char *listen, unsigned max_conn, unsigned per_ip, unsigned timeout_s)
{
        struct km_daemon *d = h->d;
        int rc;
        const char *what = h->metrics ? "metrics" : "the page";

        flags |= MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (sa->ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
        h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
                                  MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)sa, MHD_OPTION_LISTENING_ADDRESS_REUSE,
                                  1, MHD_OPTION_CONNECTION_LIMIT, max_conn, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                  per_ip, MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
                                  MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
        /* A busy port costs the operator's view, not forwarding. */
        if (!h->mhd) {
                KM_LOG(KM_LOG_ERR, h->tag, "cannot serve on %s (port taken, or TLS files not usable); running without %s",
                       listen, what);
                return 1;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        rc = di ? 0 : -EIO;
        if (rc == 0)
                rc = sd_event_add_io(d->ev, &h->io, di->epoll_fd, EPOLLIN, on_io, h);
        if (rc >= 0)
                rc = sd_event_add_time_relative(d->ev, &h->timer, CLOCK_MONOTONIC, 0, 1000, on_timer, h);
        if (rc >= 0 && !h->metrics)
                rc = sd_event_add_time_relative(d->ev, &h->push, CLOCK_MONOTONIC, PUSH_CHECK_US, 50000, on_push, h);
        if (rc >= 0 && !h->metrics)
                rc = sd_event_add_time_relative(d->ev, &h->hist_src, CLOCK_MONOTONIC, HISTORY_EVERY_US, 500000,
                                                on_hist, h);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, h->tag, "%s: %s; running without %s", listen, strerror(-rc), what);
                if (h->io)
                        h->io = sd_event_source_disable_unref(h->io);
                return rc == -ENOMEM ? rc : 1;
        }
        sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
        if (!h->metrics)
                hist_take(h);
        /* From here the loop owns the server through the IO source's destroy callback,
         * as the control socket's (it goes when the daemon frees the loop). */
        sd_event_source_set_destroy_callback(h->io, http_destroy);
        sd_event_source_set_floating(h->io, 1);
        sd_event_source_unref(h->io);
        km_daemon_on_stop(d, http_stop, h);
        http_arm(h);
        return 0;
}

int km_http_start(struct km_daemon *d, struct km_conf *c)
{
        struct http_conf hc = { 0 };
        struct sockaddr_storage sa;
        socklen_t salen;
        struct http *h = NULL;
        int rc = 0;

        km_conf_apply(c, "http", http_keys, &hc);
        if (!hc.listen || km_http_parse_listen(hc.listen, &sa, &salen))
                goto out;
        rc = -ENOMEM;
        if (!(h = calloc(1, sizeof(*h))) || !(h->hist = calloc(HISTORY_SAMPLES, sizeof(*h->hist))))
                goto out;
        h->d = d;
        h->tag = "http";
        char *origin = hc.tiles ? tiles_origin(hc.tiles) : NULL;
        if ((hc.tiles && (!origin || !(h->tiles = strdup(hc.tiles)))) ||
            asprintf(&h->csp,
                     "default-src 'self'; img-src 'self' data:%s%s; style-src 'self'; script-src 'self'; "
                     "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                     origin ? " " : "", origin ? origin : "") < 0) {
                free(origin);
                h->csp = NULL;
                goto out;
        }
        free(origin);
        if (hc.password && (!(h->password = strdup(hc.password)) || !(h->user = strdup(hc.user))))
                goto out;
        rc = 0;
        /* What the check passed may have changed since: said, and the page stays off. */
        if (hc.cert && (!(h->cert_pem = read_file(hc.cert)) || !(h->key_pem = read_file(hc.key)) ||
                        (hc.client_ca && !(h->ca_pem = read_file(hc.client_ca))))) {
                KM_LOG(KM_LOG_ERR, "http", "cannot read the TLS files (cert, key, client_ca): %s; running without the page",
                       strerror(errno));
                goto out;
        }
        h->client_certs = hc.client_ca != NULL;
        struct MHD_OptionItem tls[4];
        int nt = 0;
        if (hc.cert) {
                tls[nt++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, h->cert_pem };
                tls[nt++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, h->key_pem };
                if (h->ca_pem)
                        tls[nt++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_TRUST, 0, h->ca_pem };
        }
        tls[nt] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
        rc = serve(h, &sa, MHD_ALLOW_SUSPEND_RESUME | (hc.cert ? MHD_USE_TLS : 0), tls, hc.listen, MAX_CONNECTIONS, MAX_PER_IP, 30);
        if (rc == 0) {
                KM_LOG(KM_LOG_INFO, "http", "serving %s://%s/%s", hc.cert ? "https" : "http", hc.listen,
                       h->password ? " (password)" : h->client_certs ? " (client certificates)" : "");
                h = NULL;
        }
out:
        http_free(h);
        km_conf_release(http_keys, &hc);
        return rc == -ENOMEM ? rc : 0;
}

int km_http_metrics_start(struct km_daemon *d, const char *listen, void (*produce)(struct km_daemon *d, struct km_control_buf *b))
{
        struct sockaddr_storage sa;
        socklen_t salen;
        struct MHD_OptionItem none[1] = { { MHD_OPTION_END, 0, NULL } };
        struct http *h = calloc(1, sizeof(*h));

        if (!h || km_http_parse_listen(listen, &sa, &salen)) {
                free(h);
                return h ? 0 : -ENOMEM;
        }
        h->d = d;
        h->tag = "metrics";
        h->metrics = produce;
        /* Prometheus asks every few seconds, one scraper or two: a few connections, and
         * none kept longer than it takes (the old server's 5 s). */
        int rc = serve(h, &sa, 0, none, listen, 8, 8, 5);
        if (rc == 0)
                KM_LOG(KM_LOG_INFO, "metrics", "serving http://%s/metrics", listen);
        else
                http_free(h);
        return rc == -ENOMEM ? rc : 0;
}

/* SPDX-License-Identifier: MIT */
/* Uplink: QoS 1 publishing to the center broker over libmosquitto, driven by the daemon's event loop. */
#include "uplink.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "bridges/mqttc.h"
#include "gateway/log.h"

/*
 * Why libmosquitto here (the uplink over TLS; over TCP it is mqttc). The uplink is
 * kuimen's hottest path: a publish and a PUBACK per message. Paho's async client spends
 * 56 to 94 us of CPU on that (its own send and receive threads, a wake-up per message,
 * tracked allocations in Debian's build); libmosquitto driven from our loop spends about
 * 17 (tests/bench/bench_clients). Ingest and the downlink are mqttc's (over TLS too):
 * libmosquitto 2.0 acknowledges an inbound QoS 1 message before its callback runs, and
 * there the acknowledgement must wait for the spool. The uplink's promise rests on the
 * center's PUBACK alone, which libmosquitto reports after it arrived.
 *
 * How. libmosquitto's loop functions (read, write, misc) run on our sd-event loop, so
 * there is no thread and no wake-up per message: a publish is written at once, acks
 * are read when the socket says so. Only the connect runs on a thread of its own:
 * libmosquitto's connect for external loops blocks (name lookup, TCP, TLS handshake),
 * and a black-holed center must not stall the loop for the kernel's connect timeout.
 * The thread owns the connection object until it signals through an eventfd; the loop
 * owns it after. Each connection gets a fresh object, so nothing libmosquitto queued
 * for the last one is sent again behind our back: what was in flight is replayed from
 * the spool, in order, by the link.
 *
 * MQTT 3.1.1 as in mqttc.c: with protocol = auto, a broker's refusal of 5 (reason 0x84,
 * which libmosquitto also reports for a 3.1.1 CONNACK return code 1, or a close before
 * any CONNACK) makes the next attempt 3.1.1, and once one is accepted the uplink stays
 * on 3.1.1 until kuimen restarts.
 */

#define CONNACK_TIMEOUT_US 5000000ULL /* an answer to CONNECT within this, or retry */
#define MISC_US 500000ULL             /* keepalive bookkeeping (mosquitto_loop_misc) */
#define BACKOFF_MAX_S 5
#define MIDS 65536

/* One connection: the object, and the thread that connects it. */
struct conn {
        struct km_uplink *u; /* NULL once the uplink let go of a thread still connecting */
        struct mosquitto *m;
        pthread_t th;
        bool started, joined; /* the loop's own record of th */
        pthread_mutex_t mu;
        bool done;     /* the thread finished */
        bool abandoned; /* the uplink went away first: the thread frees everything */
        int rc, err;
        int efd; /* the thread's "done", read by the loop; the thread closes it if abandoned */
        char logerr[256]; /* the last error libmosquitto logged (OpenSSL's reason) */
        char host[256];
        int port, keepalive;
};

enum ustate { U_IDLE, U_CONNECTING, U_WAIT_CONNACK, U_UP, U_STOPPED };

struct km_uplink {
        sd_event *ev;
        struct km_uplink_cb cb;
        char **uris; /* the list (km_mqtt_uri_list), uri the one in use, as in mqttc.c */
        size_t nuris, cur, failed_in_round;
        bool *learned; /* per URI */
        const char *uri;
        char *client_id, *username, *password, *ca, *cert, *key, *will_topic, *will_msg;
        bool verify_hostname, tls;
        int keepalive_s;
        unsigned window;
        int version, meta;                  /* enum km_mqtt_version, enum km_mqtt_meta */
        int level;                          /* of this connection (attempt): 5 or 4 */
        bool try311, trying311; /* as in mqttc.c */
        char *env;                          /* 3.1.1: envelope and payload, built per publish */
        size_t envcap;
        char host[256];
        int port;

        enum ustate st;
        struct conn *c;
        sd_event_source *efd_src, *io, *misc, *connack, *retry, *defer;
        unsigned backoff_s;
        uint64_t *mids; /* mid -> 1 << 32 | cookie while in flight */
        unsigned inflight;
        unsigned send_max;   /* window, or the broker's Receive Maximum when lower */
        uint32_t max_packet; /* the broker's Maximum Packet Size, 0: none stated */
        bool drop_pending, drop_was_refusal;
        char drop_why[384];
};

static char *dup_or_null(const char *s)
{
        return s ? strdup(s) : NULL;
}

/* ---- connection objects -------------------------------------------------------- */

static void conn_free(struct conn *c)
{
        if (!c)
                return;
        if (c->m)
                mosquitto_destroy(c->m);
        if (c->efd >= 0)
                close(c->efd);
        pthread_mutex_destroy(&c->mu);
        free(c);
}

/* libmosquitto logs OpenSSL's reasons and refusals: the last error names the failure. */
static void on_log(struct mosquitto *m, void *ud, int level, const char *str)
{
        struct conn *c = ud;
        (void)m;
        if (level == MOSQ_LOG_ERR)
                snprintf(c->logerr, sizeof(c->logerr), "%s", str);
}

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags, const mosquitto_property *props);
static void on_publish(struct mosquitto *m, void *ud, int mid, int rc, const mosquitto_property *props);

static struct conn *conn_new(struct km_uplink *u, char *why, size_t wl)
{
        struct conn *c = calloc(1, sizeof(*c));
        int rc;
        if (!c) {
                snprintf(why, wl, "out of memory");
                return NULL;
        }
        c->u = u;
        c->efd = -1;
        pthread_mutex_init(&c->mu, NULL);
        snprintf(c->host, sizeof(c->host), "%s", u->host);
        c->port = u->port;
        /* libmosquitto refuses keepalives below 5 s; a silent cut under traffic is
         * seen sooner anyway, by the link's ack_timeout. */
        c->keepalive = u->keepalive_s < 5 ? 5 : u->keepalive_s;
        if (!(c->m = mosquitto_new(u->client_id, true, c))) {
                snprintf(why, wl, "cannot create a client: %s", strerror(errno));
                goto fail;
        }
        mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, u->level == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
        mosquitto_int_option(c->m, MOSQ_OPT_SEND_MAXIMUM, (int)(u->window > 65535 ? 65535 : u->window));
        mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
        mosquitto_log_callback_set(c->m, on_log);
        mosquitto_connect_v5_callback_set(c->m, on_connect);
        mosquitto_publish_v5_callback_set(c->m, on_publish);
        if (u->username && (rc = mosquitto_username_pw_set(c->m, u->username, u->password)) != MOSQ_ERR_SUCCESS) {
                snprintf(why, wl, "credentials: %s", mosquitto_strerror(rc));
                goto fail;
        }
        if (u->will_topic &&
            (rc = mosquitto_will_set_v5(c->m, u->will_topic, (int)strlen(u->will_msg), u->will_msg, 1, true, NULL)) !=
                    MOSQ_ERR_SUCCESS) {
                snprintf(why, wl, "will: %s", mosquitto_strerror(rc));
                goto fail;
        }
        if (u->tls) {
                rc = mosquitto_tls_set(c->m, u->ca, u->ca ? NULL : "/etc/ssl/certs", u->cert, u->key, NULL);
                if (rc == MOSQ_ERR_SUCCESS)
                        rc = mosquitto_tls_opts_set(c->m, 1 /* SSL_VERIFY_PEER */, NULL, NULL);
                if (rc == MOSQ_ERR_SUCCESS)
                        rc = mosquitto_tls_insecure_set(c->m, !u->verify_hostname);
                if (rc != MOSQ_ERR_SUCCESS) {
                        snprintf(why, wl, "TLS setup (ca, cert, key): %s", mosquitto_strerror(rc));
                        goto fail;
                }
        }
        if ((c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
                snprintf(why, wl, "eventfd: %s", strerror(errno));
                goto fail;
        }
        return c;
fail:
        conn_free(c);
        return NULL;
}

static void *connect_main(void *arg)
{
        struct conn *c = arg;
        int rc = mosquitto_connect_bind_v5(c->m, c->host, c->port, c->keepalive, NULL, NULL);
        int err = errno;
        uint64_t one = 1;

        pthread_mutex_lock(&c->mu);
        c->rc = rc;
        c->err = err;
        c->done = true;
        bool abandoned = c->abandoned;
        if (!abandoned)
                (void)!write(c->efd, &one, sizeof(one));
        pthread_mutex_unlock(&c->mu);
        if (abandoned)
                conn_free(c); /* nobody waits for it any more */
        return NULL;
}

/* ---- the loop side ----------------------------------------------------------- */

static void schedule_retry(struct km_uplink *u, unsigned delay_s);

static void stop_sources(struct km_uplink *u)
{
        u->io = sd_event_source_disable_unref(u->io);
        u->misc = sd_event_source_disable_unref(u->misc);
        u->connack = sd_event_source_disable_unref(u->connack);
        u->efd_src = sd_event_source_disable_unref(u->efd_src);
}

/* A list: the next URI (after the last, the first); false with one. */
static bool next_uri(struct km_uplink *u)
{
        bool tls;
        if (u->nuris < 2)
                return false;
        u->cur = (u->cur + 1) % u->nuris;
        u->uri = u->uris[u->cur];
        km_mqtt_uri_parse(u->uri, u->host, sizeof(u->host), &u->port, &tls); /* checked at the start */
        return true;
}

/* The connection is over: tell the owner and try again, unless stopped. */
static void drop(struct km_uplink *u, const char *why)
{
        bool was_up = u->st == U_UP;
        stop_sources(u);
        conn_free(u->c);
        u->c = NULL;
        memset(u->mids, 0, MIDS * sizeof(*u->mids));
        u->inflight = 0;
        u->drop_pending = false;
        if (u->st == U_STOPPED)
                return;
        u->st = U_IDLE;
        if (was_up) {
                u->cb.lost(u->cb.ud, why);
                schedule_retry(u, next_uri(u) ? 0 : 1); /* the next broker, or this one's return, at once */
        } else if (u->try311) {
                /* Not an outage: the broker answered, in another version. */
                u->cb.failed_connect(u->cb.ud, why);
                schedule_retry(u, 0);
        } else {
                u->cb.failed_connect(u->cb.ud, why);
                if (next_uri(u) && ++u->failed_in_round < u->nuris) {
                        schedule_retry(u, 0); /* the rest of the list at once, then the back-off */
                        return;
                }
                u->failed_in_round = 0;
                schedule_retry(u, u->backoff_s);
                if (u->backoff_s < BACKOFF_MAX_S)
                        u->backoff_s++;
        }
}

/* libmosquitto's callbacks cannot free the object they run in: they leave a note. */
static void drop_later(struct km_uplink *u, const char *why)
{
        if (u->drop_pending)
                return;
        u->drop_pending = true;
        snprintf(u->drop_why, sizeof(u->drop_why), "%s", why);
}

/* The broker refused MQTT 5 (how); with auto the next attempt is 3.1.1. */
static void refused_v5(struct km_uplink *u, const char *how)
{
        char why[320];
        if (u->version == KM_MQTT_AUTO) {
                u->try311 = true;
                snprintf(why, sizeof(why), KM_MQTT_REFUSES_V5 " (%s): trying MQTT 3.1.1", how);
        } else {
                snprintf(why, sizeof(why), KM_MQTT_REFUSES_V5 " (%s): set protocol = auto or 3.1.1", how);
        }
        drop_later(u, why);
}

static void drop_if_pending(struct km_uplink *u)
{
        if (u->drop_pending) {
                char why[sizeof(u->drop_why)];
                memcpy(why, u->drop_why, sizeof(why));
                drop(u, why);
        }
}

/* Why a libmosquitto call failed, with the logged reason when there is one. */
static void describe(struct km_uplink *u, int rc, int err, char *out, size_t len)
{
        const char *base = rc == MOSQ_ERR_ERRNO ? strerror(err) : mosquitto_strerror(rc);
        if (u->c && u->c->logerr[0])
                snprintf(out, len, "%s (%s)", base, u->c->logerr);
        else
                snprintf(out, len, "%s", base);
}

static void update_events(struct km_uplink *u)
{
        if (u->io && u->c)
                sd_event_source_set_io_events(u->io, EPOLLIN | (mosquitto_want_write(u->c->m) ? EPOLLOUT : 0));
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct km_uplink *u = ud;
        char why[320];
        int rc = MOSQ_ERR_SUCCESS;
        (void)s, (void)fd;

        if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
                rc = mosquitto_loop_read(u->c->m, 1);
        if (rc == MOSQ_ERR_SUCCESS && !u->drop_pending && (revents & EPOLLOUT))
                rc = mosquitto_loop_write(u->c->m, 1);
        /* A close before the CONNACK is RabbitMQ 3.10 refusing 5, unless TLS said why:
         * TLS 1.3 ends the client's handshake before the broker checks its certificate,
         * so a refused certificate's alert also comes where the CONNACK was awaited. */
        if (rc == MOSQ_ERR_CONN_LOST && !u->drop_pending && u->st == U_WAIT_CONNACK && u->level == 5 &&
            !u->c->logerr[0])
                refused_v5(u, "it closed the connection without a CONNACK");
        if (rc != MOSQ_ERR_SUCCESS && !u->drop_pending) {
                describe(u, rc, errno, why, sizeof(why));
                drop_later(u, why);
        }
        if (u->drop_pending)
                drop_if_pending(u);
        else
                update_events(u);
        return 0;
}

static int on_misc(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_uplink *u = ud;
        char why[320];
        (void)usec;
        int rc = mosquitto_loop_misc(u->c->m);
        if (rc != MOSQ_ERR_SUCCESS) {
                describe(u, rc, errno, why, sizeof(why));
                drop(u, rc == MOSQ_ERR_NO_CONN ? "no answer to keepalive pings" : why);
                return 0;
        }
        update_events(u);
        sd_event_source_set_time_relative(s, MISC_US);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_connack_timeout(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)s, (void)usec;
        drop(ud, "no answer to CONNECT within 5 s");
        return 0;
}

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags, const mosquitto_property *props)
{
        struct conn *c = ud;
        struct km_uplink *u = c->u;
        uint16_t rmax = 65535, amax = 0;
        uint32_t pmax = 0;
        (void)m, (void)flags;
        if (!u || u->c != c)
                return;
        if (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION && u->level == 5) {
                refused_v5(u, "CONNACK unsupported protocol version");
                return;
        }
        if (rc != 0) {
                char why[160];
                /* libmosquitto reports a 3.1.1 CONNACK's return code as it is (1 to 5). */
                snprintf(why, sizeof(why), "refused: %s",
                         u->level == 5 ? mosquitto_reason_string(rc) : mosquitto_connack_string(rc));
                drop_later(u, why);
                return;
        }
        /* The broker's limits. libmosquitto 2.0.11 keeps them too: it holds back
         * publishes past Receive Maximum in a queue of its own, and refuses one over
         * Maximum Packet Size with MOSQ_ERR_OVERSIZE_PACKET. Our window stops at Receive
         * Maximum, so that the link's ack clock counts only what is on the wire, and
         * km_uplink_publish checks the size itself. It never sends a Topic Alias (only
         * when the caller adds the property), so Topic Alias Maximum is kept whatever
         * it is. */
        mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &rmax, false);
        mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &pmax, false);
        mosquitto_property_read_int16(props, MQTT_PROP_TOPIC_ALIAS_MAXIMUM, &amax, false);
        u->send_max = u->window < rmax ? u->window : rmax;
        if (!u->send_max)
                u->send_max = 1;
        u->max_packet = pmax;
        if (pmax || rmax < 65535)
                KM_LOG(KM_LOG_INFO, "mqtt", "up: %s takes packets of %s, %u publishes in flight (topic aliases: %u, none used)",
                       u->uri, km_packet_limit(pmax, (char[32]){ 0 }, 32), rmax, amax);
        u->connack = sd_event_source_disable_unref(u->connack);
        u->st = U_UP;
        u->backoff_s = 1;
        u->failed_in_round = 0;
        if (u->trying311 && !u->learned[u->cur]) {
                u->learned[u->cur] = true;
                KM_LOG(KM_LOG_NOTICE, "mqtt", "up: %s refuses MQTT 5 and takes 3.1.1: this connection speaks 3.1.1 "
                       "until kuimen restarts (protocol = auto)", u->uri);
        }
        KM_LOG(KM_LOG_NOTICE, "mqtt", "up: connected to %s (MQTT %s)", u->uri, km_mqtt_version_name(u->level));
        u->cb.up(u->cb.ud);
}

static void on_publish(struct mosquitto *m, void *ud, int mid, int rc, const mosquitto_property *props)
{
        struct conn *c = ud;
        struct km_uplink *u = c->u;
        (void)m, (void)props;
        if (!u || u->c != c || mid <= 0 || mid >= MIDS || !(u->mids[mid] >> 32))
                return;
        uint32_t cookie = (uint32_t)u->mids[mid];
        u->mids[mid] = 0;
        u->inflight--;
        if (rc < 128) {
                u->cb.acked(u->cb.ud, cookie);
                return;
        }
        /* The center refused the message: for good (the owner drops it), or for now
         * (quota ...): then the link goes down and a fresh connection replays it. */
        char why[160];
        snprintf(why, sizeof(why), "publish refused (%s)", mosquitto_reason_string(rc));
        if (!u->cb.refused(u->cb.ud, cookie, rc, why))
                drop_later(u, why);
}

/* The connect thread is done: the loop owns the connection from here. */
static int on_connected_tcp(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct km_uplink *u = ud;
        struct conn *c = u->c;
        uint64_t v;
        char why[320];
        int rc;
        (void)s, (void)revents;

        (void)!read(fd, &v, sizeof(v));
        pthread_join(c->th, NULL);
        c->joined = true;
        u->efd_src = sd_event_source_disable_unref(u->efd_src);
        if (c->rc != MOSQ_ERR_SUCCESS) {
                describe(u, c->rc, c->err, why, sizeof(why));
                drop(u, why);
                return 0;
        }
        u->st = U_WAIT_CONNACK;
        if ((rc = sd_event_add_io(u->ev, &u->io, mosquitto_socket(c->m), EPOLLIN, on_io, u)) < 0 ||
            (rc = sd_event_add_time_relative(u->ev, &u->misc, CLOCK_MONOTONIC, MISC_US, 50000, on_misc, u)) < 0 ||
            (rc = sd_event_add_time_relative(u->ev, &u->connack, CLOCK_MONOTONIC, CONNACK_TIMEOUT_US, 100000,
                                             on_connack_timeout, u)) < 0) {
                snprintf(why, sizeof(why), "event loop: %s", strerror(-rc));
                drop(u, why);
                return 0;
        }
        update_events(u); /* CONNECT may still wait to be written */
        return 0;
}

static void start_connect(struct km_uplink *u)
{
        char why[320];
        int rc;

        if (u->st == U_STOPPED)
                return;
        u->trying311 = u->try311;
        u->try311 = false;
        u->level = u->version == KM_MQTT_V311 || u->learned[u->cur] || u->trying311 ? 4 : 5;
        struct conn *c = conn_new(u, why, sizeof(why));
        if (!c) {
                u->st = U_CONNECTING; /* so that drop reports a failed connect */
                drop(u, why);
                return;
        }
        u->c = c;
        u->st = U_CONNECTING;
        if ((rc = sd_event_add_io(u->ev, &u->efd_src, c->efd, EPOLLIN, on_connected_tcp, u)) < 0) {
                snprintf(why, sizeof(why), "event loop: %s", strerror(-rc));
                drop(u, why);
                return;
        }
        if ((rc = pthread_create(&c->th, NULL, connect_main, c)) != 0) {
                snprintf(why, sizeof(why), "cannot start the connect thread: %s", strerror(rc));
                drop(u, why);
                return;
        }
        c->started = true;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_uplink *u = ud;
        (void)s, (void)usec;
        u->retry = sd_event_source_disable_unref(u->retry);
        start_connect(u);
        return 0;
}

static void schedule_retry(struct km_uplink *u, unsigned delay_s)
{
        u->retry = sd_event_source_disable_unref(u->retry);
        if (sd_event_add_time_relative(u->ev, &u->retry, CLOCK_MONOTONIC, (uint64_t)delay_s * 1000000ULL, 100000,
                                       on_retry, u) < 0)
                KM_LOG(KM_LOG_ERR, "mqtt", "up: cannot arm the reconnect timer");
}

static int on_defer(sd_event_source *s, void *ud)
{
        struct km_uplink *u = ud;
        (void)s;
        drop_if_pending(u);
        return 0;
}

/* ---- the API ------------------------------------------------------------------- */

int km_uplink_new(struct km_uplink **out, sd_event *ev, const struct km_uplink_opts *o, const struct km_uplink_cb *cb)
{
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        struct km_uplink *u = calloc(1, sizeof(*u));
        int rc = -ENOMEM;

        pthread_once(&once, (void (*)(void))mosquitto_lib_init);
        if (!u)
                return -ENOMEM;
        u->ev = ev;
        u->cb = *cb;
        if (km_mqtt_uri_list(o->uri, &u->uris, &u->nuris) < 0) {
                free(u);
                return -EINVAL;
        }
        u->uri = u->uris[0];
        u->client_id = dup_or_null(o->client_id);
        u->username = dup_or_null(o->username);
        u->password = dup_or_null(o->password);
        u->ca = dup_or_null(o->ca);
        u->cert = dup_or_null(o->cert);
        u->key = dup_or_null(o->key);
        u->will_topic = dup_or_null(o->will_topic);
        u->will_msg = dup_or_null(o->will_msg);
        u->verify_hostname = o->verify_hostname;
        u->keepalive_s = o->keepalive_s;
        u->window = o->window;
        u->version = o->version;
        u->meta = o->v311_meta;
        u->level = o->version == KM_MQTT_V311 ? 4 : 5;
        u->backoff_s = 1;
        u->mids = calloc(MIDS, sizeof(*u->mids));
        u->learned = calloc(u->nuris, sizeof(*u->learned));
        if (!u->learned || !u->client_id || !u->mids || (o->will_topic && (!u->will_topic || !u->will_msg)))
                goto fail;
        for (size_t i = u->nuris; i-- > 0;) /* each of them, ending on the first */
                if ((rc = km_mqtt_uri_parse(u->uris[i], u->host, sizeof(u->host), &u->port, &u->tls)) < 0)
                        goto fail;
        if ((rc = sd_event_add_defer(ev, &u->defer, on_defer, u)) < 0)
                goto fail;
        sd_event_source_set_enabled(u->defer, SD_EVENT_OFF);
        start_connect(u);
        *out = u;
        return 0;
fail:
        km_uplink_free(u);
        return rc;
}

static int published(struct km_uplink *u, int rc, int mid, uint32_t cookie);

/* 3.1.1: no properties; origin and id in the envelope before the payload. */
static int publish311(struct km_uplink *u, const char *topic, const void *payload, size_t len, bool retain,
                      const char *origin, uint64_t id, uint32_t cookie)
{
        int mid = 0;
        size_t env = u->meta == KM_META_ENVELOPE ? km_mqtt_envelope(NULL, 0, origin, id, NULL) : 0;
        if (len + env > (size_t)INT32_MAX)
                return -EMSGSIZE;
        if (env) {
                if (env + len > u->envcap) {
                        char *p = realloc(u->env, env + len);
                        if (!p)
                                return -ENOMEM;
                        u->env = p;
                        u->envcap = env + len;
                }
                km_mqtt_envelope(u->env, env, origin, id, NULL);
                if (len)
                        memcpy(u->env + env, payload, len);
                payload = u->env;
        }
        int rc = mosquitto_publish(u->c->m, &mid, topic, (int)(len + env), payload, 1, retain);
        return published(u, rc, mid, cookie);
}

int km_uplink_publish(struct km_uplink *u, const char *topic, const void *payload, size_t len, bool retain,
                      const char *origin, uint64_t id, uint32_t cookie)
{
        mosquitto_property *props = NULL;
        char idbuf[24];
        int mid = 0, rc;

        if (u->st != U_UP || u->drop_pending)
                return -ENOTCONN;
        if (u->inflight >= u->send_max)
                return -EAGAIN;
        if (len > (size_t)INT32_MAX)
                return -EMSGSIZE;
        if (u->level != 5)
                return publish311(u, topic, payload, len, retain, origin, id, cookie);
        snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)id);
        /* The whole PUBLISH, as libmosquitto will write it: never one over the
         * broker's limit (the broker would drop the connection, and the link would
         * send it again at each connect). */
        uint64_t pl = 2 * (1 + 2 + 2) + 13 + strlen(origin) + 9 + strlen(idbuf);
        uint64_t rl = 2 + strlen(topic) + 2 + (pl < 128 ? 1 : 2) + pl + len;
        if (u->max_packet && 1 + (rl < 128 ? 1 : rl < 16384 ? 2 : rl < 2097152 ? 3 : 4) + rl > u->max_packet)
                return -EMSGSIZE;
        /* Subscribers drop duplicates by (origin, id): at least once means a message may
         * arrive twice after a reconnect. */
        if (mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "kuimen-origin", origin) ||
            mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "kuimen-id", idbuf)) {
                mosquitto_property_free_all(&props);
                return -ENOMEM;
        }
        rc = mosquitto_publish_v5(u->c->m, &mid, topic, (int)len, payload, 1, retain, props);
        mosquitto_property_free_all(&props);
        return published(u, rc, mid, cookie);
}

/* What a publish call said: the message in flight, or why not. */
static int published(struct km_uplink *u, int rc, int mid, uint32_t cookie)
{
        switch (rc) {
        case MOSQ_ERR_SUCCESS:
                break;
        case MOSQ_ERR_NOMEM:
                return -ENOMEM;
        case MOSQ_ERR_OVERSIZE_PACKET: /* over the broker's Maximum Packet Size */
        case MOSQ_ERR_PAYLOAD_SIZE:
        case MOSQ_ERR_MALFORMED_UTF8: /* a topic no broker takes */
        case MOSQ_ERR_INVAL:
                return -EMSGSIZE; /* this message never fits: the link sets it aside */
        default: {
                /* The write failed: the connection is gone. Not dropped here: the
                 * scheduler is in the middle of its pump. */
                char why[320];
                describe(u, rc, errno, why, sizeof(why));
                drop_later(u, why);
                sd_event_source_set_enabled(u->defer, SD_EVENT_ONESHOT);
                return -ENOTCONN;
        }
        }
        if (mid > 0 && mid < MIDS) {
                u->mids[mid] = 1ULL << 32 | cookie;
                u->inflight++;
        }
        update_events(u);
        return 0;
}

uint32_t km_uplink_max_packet(const struct km_uplink *u)
{
        return u->max_packet;
}

const char *km_uplink_uri(const struct km_uplink *u, size_t *index, size_t *n)
{
        if (index)
                *index = u->cur;
        if (n)
                *n = u->nuris;
        return u->uri;
}

int km_uplink_version(const struct km_uplink *u)
{
        return u->level;
}

void km_uplink_reset(struct km_uplink *u)
{
        if (u->st == U_WAIT_CONNACK || u->st == U_UP) {
                u->st = U_WAIT_CONNACK; /* the owner already knows: report as a failed attempt */
                drop(u, "reset after no acknowledgement");
        }
}

void km_uplink_stop(struct km_uplink *u)
{
        if (!u || u->st == U_STOPPED)
                return;
        u->retry = sd_event_source_disable_unref(u->retry);
        if (u->c && (u->st == U_UP || u->st == U_WAIT_CONNACK)) {
                struct mosquitto *m = u->c->m;
                /* 3.1.1's DISCONNECT discards the will: with one, the close sends it. */
                bool say = u->level == 5 || !u->will_topic;
                if (say && mosquitto_disconnect_v5(m, MQTT_RC_DISCONNECT_WITH_WILL_MSG, NULL) == MOSQ_ERR_SUCCESS) {
                        for (int i = 0; i < 100 && mosquitto_want_write(m); i++) {
                                struct pollfd pf = { mosquitto_socket(m), POLLOUT, 0 };
                                if (poll(&pf, 1, 10) > 0 && mosquitto_loop_write(m, 1) != MOSQ_ERR_SUCCESS)
                                        break;
                        }
                }
        }
        u->st = U_STOPPED;
        stop_sources(u);
}

void km_uplink_free(struct km_uplink *u)
{
        if (!u)
                return;
        km_uplink_stop(u);
        if (u->c) {
                struct conn *c = u->c;
                pthread_mutex_lock(&c->mu);
                bool running = c->started && !c->joined && !c->done;
                if (running) {
                        /* A connect still blocks (a black-holed center): leave the thread
                         * to free its connection when it returns, and stop waiting. */
                        c->abandoned = true;
                        c->u = NULL;
                        pthread_detach(c->th);
                }
                pthread_mutex_unlock(&c->mu);
                if (!running) {
                        if (c->started && !c->joined)
                                pthread_join(c->th, NULL); /* done: returns at once */
                        conn_free(c);
                }
                u->c = NULL;
        }
        sd_event_source_disable_unref(u->retry);
        sd_event_source_disable_unref(u->defer);
        km_mqtt_uri_list_free(u->uris, u->nuris);
        free(u->learned);
        free(u->client_id);
        free(u->username);
        free(u->password);
        free(u->ca);
        free(u->cert);
        free(u->key);
        free(u->will_topic);
        free(u->will_msg);
        free(u->mids);
        free(u->env);
        free(u);
}

/* SPDX-License-Identifier: MIT */
/* A small MQTT client (v5, or 3.1.1 where the broker refuses 5) on the daemon's event loop: QoS 1 in and out, acknowledged when the owner says. */
#include "mqttc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gateway/log.h"

/*
 * Why hand-written. Ingest is kuimen's hottest path and its durability rests on one
 * rule: the PUBACK of an inbound QoS 1 message leaves only after the spool holds the
 * message. Paho's async client keeps that rule (it acknowledges after the callback
 * returns), but spends about 26 us of CPU on every message here: one recv per header
 * byte, a poll per packet, a write per PUBACK, a wake-up across its two threads
 * (tests/bench/bench_clients). libmosquitto 2.0 is cheaper but acknowledges before its
 * callback runs, which would lose what a kill catches between the two. No library in
 * Debian does "read a socket buffer full of PUBLISHes, make them durable together,
 * then acknowledge them in one write", so this file does, on the daemon's loop thread:
 * one read(2) takes up to 64 KiB of packets, each message goes to the owner, then one
 * settle (the owner's fsync in sync = always), then every PUBACK of the read in one
 * write(2). Outbound publishes are gathered the same way and written once per loop
 * iteration.
 *
 * Scope: MQTT v5, or 3.1.1 (below), over TCP or TLS, QoS 0 and 1 in (subscriptions are QoS
 * 1, so a QoS 2 publisher arrives at QoS 1), QoS 1 out, a will, keepalive pings,
 * reconnect with back-off. A host name is looked up on a short-lived thread
 * (getaddrinfo blocks, and a center whose DNS is cut must not stall the loop); the TCP
 * connect itself is non-blocking.
 *
 * TLS (ssl:// and mqtts://, the downlink to a center; the TLS uplink is libmosquitto's,
 * uplink.c) is OpenSSL on the same loop: after the TCP connect, SSL_connect is driven by
 * its WANT_READ/WANT_WRITE, and the handshake counts against the CONNACK timeout; then
 * SSL_read and SSL_write stand where recv and send stand on TCP, so that the PUBACK
 * rule above holds over TLS too (Paho, which carried the TLS downlink before, sends its
 * PUBACK whatever its callback says). The keys mean what they mean to libmosquitto in
 * uplink.c: no CA file is the system's store (/etc/ssl/certs), a client certificate and
 * key when given, the broker's name (or IP address) checked against its certificate
 * unless verify_hostname is off. The context is made afresh at each connect, so that
 * renewed certificate files are taken at the next reconnect, as libmosquitto does.
 *
 * MQTT 3.1.1: a broker that speaks only 3.1.1 (RabbitMQ 3.10, many platforms) answers a
 * v5 CONNECT with CONNACK return code 1 (the 3.1.1 spec), reason 0x84 (a v5 broker
 * configured so), or by closing the socket (RabbitMQ). With protocol = auto the next
 * attempt is 3.1.1, and once one is accepted the connection stays 3.1.1 until kuimen
 * restarts: the same broker refuses 5 again at every reconnect, and a refused attempt
 * per outage would cost a second of the reconnect each time. On 3.1.1 there are no
 * properties: no Receive Maximum (our window holds), no Maximum Packet Size, no reason
 * codes in PUBACK or SUBACK beyond 0x80; the session is clean_start without a session
 * expiry, else persistent; a stop with a will closes the socket without DISCONNECT
 * (3.1.1's DISCONNECT discards the will), and origin and id travel in the envelope
 * (km_mqtt_envelope) unless v311_meta is none.
 */

#define CONNACK_TIMEOUT_US 5000000ULL
#define BACKOFF_MAX_S 5
#define READ_CHUNK 65536
#define MAX_PACKET (256u << 20) /* MQTT's own limit on a remaining length */
#define MIDS 65536
#define MID_USED (1ULL << 32)
#define MID_SUB (1ULL << 33)

enum cstate { C_IDLE, C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_WAIT_CONNACK, C_UP, C_STOPPED };

/* One name lookup: the thread owns it until done; then the loop, unless the client
 * went away first (abandoned): then the thread frees it. */
struct lookup {
        pthread_mutex_t mu;
        bool done, abandoned;
        int efd, rc;
        char host[256], port[8];
        struct addrinfo *ai;
};

struct buf {
        uint8_t *p;
        size_t off, len, cap; /* live bytes are p[off, off+len) */
};

struct km_mqttc {
        sd_event *ev;
        struct km_mqttc_cb cb;
        char *client_id, *username, *password, *role, *will_topic, *will_msg;
        /* The broker's URIs (key uri: a list, km_mqtt_uri_list) and the one in use, uri. */
        char **uris;
        size_t nuris, cur;
        const char *uri;
        bool *learned;    /* per URI: auto found it refuses 5 and takes 3.1.1 */
        size_t failed_in_round; /* connects failed since the last success (on any URI) */
        char **filters;
        size_t nfilters;
        bool clean_start;
        uint32_t session_expiry_s;
        unsigned keepalive_s, window, receive_max;
        int version, meta; /* enum km_mqtt_version, enum km_mqtt_meta */
        char host[256];
        char port[8];
        char *ca, *cert, *key; /* TLS files (NULL: none; no ca: the system's store) */
        bool verify_hostname;
        bool tls; /* the URI in use wants TLS */

        enum cstate st;
        int fd;
        SSL_CTX *ctx; /* TLS: this connection's, made at its connect */
        SSL *ssl;
        bool read_wants_write; /* an SSL_read needs the socket writable before it goes on */
        char tls_why[200];     /* the last TLS error, for the reason of a drop */
        struct lookup *lk;
        bool no_will; /* the broker refused the will: connect without it */
        uint8_t level;    /* protocol level of this connection (attempt): 5 or 4 */
        bool try311;      /* auto: the broker refused 5, the next attempt is 3.1.1 */
        bool trying311;   /* this attempt is that one */
        sd_event_source *io, *ping, *connack, *retry, *flush, *lk_src;
        unsigned backoff_s;
        struct buf in, out;
        uint64_t *mids; /* packet id -> MID_USED | cookie (or MID_SUB) */
        uint16_t next_mid;
        unsigned inflight, send_max;
        uint32_t max_packet; /* the broker's, 0: no limit */
        unsigned ka_s;       /* the keepalive in force (the broker may set its own) */
        int64_t last_tx_ms, last_rx_ms;
        bool ping_out;
        bool reset_seen; /* a write found the connection reset: read what is left, then drop */
        uint16_t *acks; /* PUBACKs owed for the read in progress */
        size_t nacks, capacks;
        bool took; /* the read in progress handed a message to the owner: settle after it */
};

static const struct {
        uint8_t code;
        const char *name;
} reasons[] = {
        { 0x00, "success" }, { 0x04, "disconnect with will message" }, { 0x10, "no matching subscribers" },
        { 0x80, "unspecified error" }, { 0x81, "malformed packet" }, { 0x82, "protocol error" },
        { 0x83, "implementation specific error" }, { 0x84, "unsupported protocol version" },
        { 0x85, "client identifier not valid" }, { 0x86, "bad user name or password" }, { 0x87, "not authorized" },
        { 0x88, "server unavailable" }, { 0x89, "server busy" }, { 0x8A, "banned" }, { 0x8B, "server shutting down" },
        { 0x8D, "keep alive timeout" }, { 0x8E, "session taken over" }, { 0x8F, "topic filter invalid" },
        { 0x90, "topic name invalid" }, { 0x93, "receive maximum exceeded" }, { 0x94, "topic alias invalid" },
        { 0x95, "packet too large" }, { 0x97, "quota exceeded" }, { 0x99, "payload format invalid" },
        { 0x9A, "retain not supported" }, { 0x9B, "QoS not supported" }, { 0x9C, "use another server" },
        { 0x9D, "server moved" }, { 0x9F, "connection rate exceeded" },
};

const char *km_mqttc_reason(int rc)
{
        for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
                if (reasons[i].code == rc)
                        return reasons[i].name;
        return "unknown reason";
}

static int64_t mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- buffers and encoding ------------------------------------------------------- */

static int buf_reserve(struct buf *b, size_t n)
{
        if (b->off && b->off + b->len + n > b->cap) {
                memmove(b->p, b->p + b->off, b->len);
                b->off = 0;
        }
        if (b->len + n <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
                cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p)
                return -ENOMEM;
        b->p = p;
        b->cap = cap;
        return 0;
}

static uint8_t *buf_tail(struct buf *b)
{
        return b->p + b->off + b->len;
}

static void buf_consume(struct buf *b, size_t n)
{
        b->off += n;
        b->len -= n;
        if (!b->len)
                b->off = 0;
}

static size_t varint_len(uint32_t v)
{
        return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

static uint8_t *put_varint(uint8_t *p, uint32_t v)
{
        do {
                uint8_t b = v & 0x7F;
                v >>= 7;
                *p++ = b | (v ? 0x80 : 0);
        } while (v);
        return p;
}

static uint8_t *put16(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t)(v >> 8);
        p[1] = (uint8_t)v;
        return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
        p = put16(p, (uint16_t)(v >> 16));
        return put16(p, (uint16_t)v);
}

static uint8_t *put_str(uint8_t *p, const void *s, size_t n)
{
        p = put16(p, (uint16_t)n);
        memcpy(p, s, n);
        return p + n;
}

/* Decodes a variable byte integer from p[0..n): its length, 0 when incomplete, -1 when
 * malformed. */
static int get_varint(const uint8_t *p, size_t n, uint32_t *v)
{
        uint32_t r = 0;
        for (int i = 0; i < 4; i++) {
                if ((size_t)i >= n)
                        return 0;
                r |= (uint32_t)(p[i] & 0x7F) << (7 * i);
                if (!(p[i] & 0x80)) {
                        *v = r;
                        return i + 1;
                }
        }
        return -1;
}

static uint16_t get16(const uint8_t *p)
{
        return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
        return (uint32_t)get16(p) << 16 | get16(p + 2);
}

/* Walks a property block p[0..n): fills what the client uses, skips the rest. Returns
 * 0 or -1 when malformed. */
struct props {
        int receive_max, server_keepalive, topic_alias_max;
        uint32_t max_packet;
        const uint8_t *reason_str;
        size_t reason_len;
};

/* The size of the value of property id at p[0..n), or -1 when malformed or unknown. */
static int prop_size(uint32_t id, const uint8_t *p, size_t n, size_t *size)
{
        switch (id) {
        case 0x01: case 0x17: case 0x19: case 0x24: case 0x25: case 0x28: case 0x29: case 0x2A:
                *size = 1;
                break;
        case 0x13: case 0x21: case 0x22: case 0x23:
                *size = 2;
                break;
        case 0x02: case 0x11: case 0x18: case 0x27:
                *size = 4;
                break;
        case 0x0B: {
                uint32_t v;
                int k = get_varint(p, n, &v);
                if (k <= 0)
                        return -1;
                *size = (size_t)k;
                break;
        }
        case 0x03: case 0x08: case 0x09: case 0x12: case 0x15: case 0x16: case 0x1A: case 0x1C: case 0x1F:
                if (n < 2)
                        return -1;
                *size = 2 + (size_t)get16(p);
                break;
        case 0x26:
                if (n < 2 || 4 + (size_t)get16(p) > n)
                        return -1;
                *size = 4 + (size_t)get16(p) + get16(p + 2 + get16(p));
                break;
        default:
                return -1;
        }
        return *size <= n ? 0 : -1;
}

static int parse_props(const uint8_t *p, size_t n, struct props *out)
{
        size_t i = 0;
        while (i < n) {
                uint32_t id;
                size_t need;
                int k = get_varint(p + i, n - i, &id);
                if (k <= 0)
                        return -1;
                i += (size_t)k;
                if (prop_size(id, p + i, n - i, &need) < 0)
                        return -1;
                if (out) {
                        if (id == 0x21)
                                out->receive_max = get16(p + i);
                        else if (id == 0x13)
                                out->server_keepalive = get16(p + i);
                        else if (id == 0x27)
                                out->max_packet = get32(p + i);
                        else if (id == 0x22)
                                out->topic_alias_max = get16(p + i);
                        else if (id == 0x1F) {
                                out->reason_str = p + i + 2;
                                out->reason_len = need - 2;
                        }
                }
                i += need;
        }
        return 0;
}

/* ---- connection ------------------------------------------------------------------ */

static void schedule_retry(struct km_mqttc *c, unsigned delay_s);
static int flush_out(struct km_mqttc *c);

static void lookup_free(struct lookup *lk)
{
        if (lk->ai)
                freeaddrinfo(lk->ai);
        if (lk->efd >= 0)
                close(lk->efd);
        pthread_mutex_destroy(&lk->mu);
        free(lk);
}

/* Lets go of a lookup: freed now when its thread is done, else by the thread. */
static void lookup_release(struct km_mqttc *c)
{
        struct lookup *lk = c->lk;
        c->lk_src = sd_event_source_disable_unref(c->lk_src);
        if (!lk)
                return;
        c->lk = NULL;
        pthread_mutex_lock(&lk->mu);
        bool done = lk->done;
        lk->abandoned = true;
        pthread_mutex_unlock(&lk->mu);
        if (done)
                lookup_free(lk);
}

/* ---- TLS ------------------------------------------------------------------------- */

/* OpenSSL's socket BIO writes with write(2), and a broker's reset would then raise
 * SIGPIPE and end the daemon (nothing else in it ignores the signal for sure); this BIO
 * is the socket BIO with send(MSG_NOSIGNAL), as the plain path sends. */
static int bio_write(BIO *b, const char *buf, int len)
{
        BIO_clear_retry_flags(b);
        ssize_t n = send((int)(intptr_t)BIO_get_data(b), buf, (size_t)len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                BIO_set_retry_write(b);
        return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
        BIO_clear_retry_flags(b);
        ssize_t n = recv((int)(intptr_t)BIO_get_data(b), buf, (size_t)len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                BIO_set_retry_read(b);
        return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
        (void)b, (void)num, (void)ptr;
        return cmd == BIO_CTRL_FLUSH; /* nothing is buffered here */
}

static int bio_create(BIO *b)
{
        BIO_set_init(b, 1);
        return 1;
}

static BIO_METHOD *the_bio_method;

static void bio_method_init(void)
{
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mqttc socket");
        if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) && BIO_meth_set_ctrl(m, bio_ctrl) &&
            BIO_meth_set_create(m, bio_create))
                the_bio_method = m;
        else
                BIO_meth_free(m);
}

/* OpenSSL's reason for what failed: "certificate verify failed: hostname mismatch". */
static void tls_err_text(struct km_mqttc *c, const char *what, char *out, size_t n)
{
        unsigned long e = ERR_peek_last_error();
        const char *r = e ? ERR_reason_error_string(e) : NULL;
        long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
        if (v != X509_V_OK)
                snprintf(out, n, "%s: %s: %s", what, r ? r : "certificate verify failed", X509_verify_cert_error_string(v));
        else
                snprintf(out, n, "%s: %s", what, r ? r : "error");
        ERR_clear_error();
}

/* The context of one connection: the CA (the system's store without one), the client
 * certificate and key. 0, or -1 with the reason in why. */
static int tls_ctx(struct km_mqttc *c, char *why, size_t wl)
{
        const char *what = "TLS setup";
        ERR_clear_error();
        if (!(c->ctx = SSL_CTX_new(TLS_client_method())))
                goto fail;
        SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        /* An EOF without close_notify is a close, as on TCP (MQTT frames its own packets:
         * no truncation to fear); a broker that refuses MQTT 5 so is recognised. */
        SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        /* flush_out hands what fits and may move its buffer before the rest. */
        SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        what = c->ca ? "TLS setup: ca" : "TLS setup: the system's CA store";
        if (SSL_CTX_load_verify_locations(c->ctx, c->ca, c->ca ? NULL : "/etc/ssl/certs") != 1)
                goto fail;
        what = "TLS setup: cert";
        if (c->cert && SSL_CTX_use_certificate_chain_file(c->ctx, c->cert) != 1)
                goto fail;
        what = "TLS setup: key";
        if (c->key && (SSL_CTX_use_PrivateKey_file(c->ctx, c->key, SSL_FILETYPE_PEM) != 1 ||
                       SSL_CTX_check_private_key(c->ctx) != 1))
                goto fail;
        return 0;
fail:
        tls_err_text(c, what, why, wl);
        return -1;
}

/* What an SSL_read or SSL_write that returned r <= 0 means, as recv(2) and send(2)
 * would say it: 0 (closed), or -1 with errno (EAGAIN: wait for the socket; EPROTO: a
 * TLS error, its text in c->tls_why). */
static ssize_t tls_io_error(struct km_mqttc *c, int r, const char *what, bool reading)
{
        int saved = errno;
        switch (SSL_get_error(c->ssl, r)) {
        case SSL_ERROR_WANT_READ:
                errno = EAGAIN;
                return -1;
        case SSL_ERROR_WANT_WRITE:
                /* A read that must write first (a key update): go on when writable. */
                if (reading)
                        c->read_wants_write = true;
                errno = EAGAIN;
                return -1;
        case SSL_ERROR_ZERO_RETURN:
                return 0;
        case SSL_ERROR_SYSCALL:
                if (ERR_peek_error() == 0) {
                        if (!saved)
                                return 0; /* EOF */
                        errno = saved;
                        return -1;
                }
                /* fall through */
        default:
                tls_err_text(c, what, c->tls_why, sizeof(c->tls_why));
                errno = EPROTO;
                return -1;
        }
}

/* send(2) on TCP, SSL_write on TLS, with send's return and errno. */
static ssize_t conn_send(struct km_mqttc *c, const void *p, size_t n)
{
        if (!c->ssl)
                return send(c->fd, p, n, MSG_NOSIGNAL);
        ERR_clear_error();
        errno = 0;
        int r = SSL_write(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
        return r > 0 ? r : tls_io_error(c, r, "TLS write", false);
}

/* recv(2) on TCP, SSL_read on TLS, with recv's return and errno. */
static ssize_t conn_recv(struct km_mqttc *c, void *p, size_t n)
{
        if (!c->ssl)
                return recv(c->fd, p, n, 0);
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
        return r > 0 ? r : tls_io_error(c, r, "TLS read", true);
}

/* The text of an errno from conn_send or conn_recv. */
static const char *io_why(const struct km_mqttc *c, int err)
{
        return err == EPROTO && c->tls_why[0] ? c->tls_why : strerror(err);
}

static void close_conn(struct km_mqttc *c)
{
        /* A read cut short still settles what it handed over (without acknowledging). */
        bool took = c->took;
        c->took = false;
        if (took && c->cb.settle)
                c->cb.settle(c->cb.ud); /* not acknowledged: the broker sends them again */
        lookup_release(c);
        c->io = sd_event_source_disable_unref(c->io);
        c->ping = sd_event_source_disable_unref(c->ping);
        c->connack = sd_event_source_disable_unref(c->connack);
        SSL_free(c->ssl);
        c->ssl = NULL;
        SSL_CTX_free(c->ctx);
        c->ctx = NULL;
        c->read_wants_write = false;
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        c->in.off = c->in.len = 0;
        c->out.off = c->out.len = 0;
        memset(c->mids, 0, MIDS * sizeof(*c->mids));
        c->inflight = 0;
        c->nacks = 0;
        c->ping_out = false;
        c->reset_seen = false;
}

static int parse_uri(struct km_mqttc *c);

/* A list of URIs: moves to the next (after the last, the first); false with one. */
static bool next_uri(struct km_mqttc *c)
{
        if (c->nuris < 2)
                return false;
        c->cur = (c->cur + 1) % c->nuris;
        c->uri = c->uris[c->cur];
        parse_uri(c); /* checked when the client was made */
        return true;
}

/* The connection is over: tell the owner and try again, unless stopped. Everything in
 * flight is forgotten; the owner replays it from its spool. */
static void drop(struct km_mqttc *c, const char *why)
{
        bool was_up = c->st == C_UP;
        close_conn(c);
        if (c->st == C_STOPPED)
                return;
        c->st = C_IDLE;
        if (was_up) {
                c->cb.lost(c->cb.ud, why);
                /* A list: the next broker at once (this one just went away); one broker:
                 * an outage's end is used at once. */
                schedule_retry(c, next_uri(c) ? 0 : 1);
        } else if (c->try311) {
                /* Not an outage: the broker answered, in another version. */
                c->cb.failed_connect(c->cb.ud, why);
                schedule_retry(c, 0);
        } else {
                c->cb.failed_connect(c->cb.ud, why);
                /* The rest of the list at once; a whole round failed: the back-off. */
                if (next_uri(c) && ++c->failed_in_round < c->nuris) {
                        schedule_retry(c, 0);
                        return;
                }
                c->failed_in_round = 0;
                schedule_retry(c, c->backoff_s);
                if (c->backoff_s < BACKOFF_MAX_S)
                        c->backoff_s++;
        }
}

static void want_write(struct km_mqttc *c, bool on)
{
        if (c->io)
                sd_event_source_set_io_events(c->io, EPOLLIN | (on ? EPOLLOUT : 0));
}

/* Writes what is queued; the rest waits for EPOLLOUT. 0, or -EIO (dropped). */
static int flush_out(struct km_mqttc *c)
{
        if (c->reset_seen) {
                c->out.off = c->out.len = 0; /* the connection is ending: see below */
                return 0;
        }
        while (c->out.len) {
                ssize_t n = conn_send(c, c->out.p + c->out.off, c->out.len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        /* On TLS an SSL_write may want to read first (a renegotiation,
                         * which TLS 1.3 has not): EPOLLOUT then fires until the socket is
                         * readable too, and the read runs on the same wake-up. */
                        want_write(c, true);
                        return 0;
                }
                if (n < 0 && (errno == ECONNRESET || errno == EPIPE) &&
                    (c->st == C_UP || (c->ssl && c->st == C_WAIT_CONNACK)) && !c->reset_seen) {
                        /* The broker closed the connection, and may have said why just
                         * before: PUBACKs (one refusing a message for good) wait in the
                         * receive buffer, or on TLS 1.3 the alert that refuses our client
                         * certificate (sent after our side of the handshake was done, so
                         * the CONNECT met a closed socket). Read them first; the read ends
                         * the connection (EOF after them). What is queued to write is lost
                         * with the connection and replayed by the owner, as on any drop. */
                        c->reset_seen = true;
                        c->out.off = c->out.len = 0;
                        if (c->io)
                                sd_event_source_set_io_events(c->io, EPOLLIN);
                        return 0;
                }
                if (n <= 0) {
                        char why[256];
                        snprintf(why, sizeof(why), "write: %s", n < 0 ? io_why(c, errno) : "closed");
                        drop(c, why);
                        return -EIO;
                }
                buf_consume(&c->out, (size_t)n);
                c->last_tx_ms = mono_ms();
        }
        want_write(c, c->read_wants_write);
        return 0;
}

static int on_flush(sd_event_source *s, void *ud)
{
        struct km_mqttc *c = ud;
        (void)s;
        if (c->fd >= 0 && c->st != C_CONNECTING && c->st != C_HANDSHAKE)
                flush_out(c);
        return 0;
}

/* Queues bytes to leave at the end of this loop iteration. */
static void schedule_flush(struct km_mqttc *c)
{
        sd_event_source_set_enabled(c->flush, SD_EVENT_ONESHOT);
}

static int send_connect(struct km_mqttc *c)
{
        bool will = c->will_topic && !c->no_will, v5 = c->level == 5;
        size_t idl = strlen(c->client_id), ul = c->username ? strlen(c->username) : 0;
        size_t pl = c->password ? strlen(c->password) : 0;
        size_t wtl = will ? strlen(c->will_topic) : 0, wml = will ? strlen(c->will_msg) : 0;
        uint32_t props = (c->clean_start ? 0 : 5) + 3; /* session expiry, receive maximum */
        uint32_t rl = 10 + (v5 ? (uint32_t)varint_len(props) + props : 0) + 2 + (uint32_t)idl;
        /* 3.1.1 has no session expiry: a session that outlives the connection is
         * Clean Session 0 (kept until the broker's own expiry), one that does not 1. */
        bool clean = c->clean_start || (!v5 && !c->session_expiry_s);
        if (will)
                rl += (v5 ? 1 : 0) + 2 + (uint32_t)wtl + 2 + (uint32_t)wml;
        if (c->username)
                rl += 2 + (uint32_t)ul;
        if (c->password)
                rl += 2 + (uint32_t)pl;
        if (buf_reserve(&c->out, 5 + rl) < 0)
                return -ENOMEM;
        uint8_t *p = buf_tail(&c->out), *start = p;
        *p++ = 0x10;
        p = put_varint(p, rl);
        p = put_str(p, "MQTT", 4);
        *p++ = c->level;
        *p++ = (uint8_t)((c->username ? 0x80 : 0) | (c->password ? 0x40 : 0) | (will ? 0x20 | 0x08 | 0x04 : 0) |
                         (clean ? 0x02 : 0));
        p = put16(p, (uint16_t)c->keepalive_s);
        if (v5) {
                p = put_varint(p, props);
                if (!c->clean_start) {
                        *p++ = 0x11;
                        p = put32(p, c->session_expiry_s);
                }
                *p++ = 0x21;
                p = put16(p, (uint16_t)c->receive_max);
        }
        p = put_str(p, c->client_id, idl);
        if (will) {
                if (v5)
                        *p++ = 0; /* will properties */
                p = put_str(p, c->will_topic, wtl);
                p = put_str(p, c->will_msg, wml);
        }
        if (c->username)
                p = put_str(p, c->username, ul);
        if (c->password)
                p = put_str(p, c->password, pl);
        c->out.len += (size_t)(p - start);
        return 0;
}

static int alloc_mid(struct km_mqttc *c, uint64_t tag)
{
        for (unsigned tries = 0; tries < MIDS; tries++) {
                uint16_t mid = ++c->next_mid ? c->next_mid : ++c->next_mid;
                if (!c->mids[mid]) {
                        c->mids[mid] = tag;
                        return mid;
                }
        }
        return -EAGAIN;
}

/* The SUBSCRIBE of filters [from, to): its remaining length. */
static uint32_t subscribe_rl(const struct km_mqttc *c, size_t from, size_t to)
{
        uint32_t rl = 2 + (c->level == 5 ? 1 : 0);
        for (size_t i = from; i < to; i++)
                rl += 2 + (uint32_t)strlen(c->filters[i]) + 1;
        return rl;
}

static bool fits(const struct km_mqttc *c, uint32_t rl)
{
        return !c->max_packet || 1 + varint_len(rl) + (uint64_t)rl <= c->max_packet;
}

static int send_subscribe_of(struct km_mqttc *c, size_t from, size_t to)
{
        uint32_t rl = subscribe_rl(c, from, to);
        int mid = alloc_mid(c, MID_SUB);
        if (mid < 0 || buf_reserve(&c->out, 5 + rl) < 0)
                return -ENOMEM;
        uint8_t *p = buf_tail(&c->out), *start = p;
        *p++ = 0x82;
        p = put_varint(p, rl);
        p = put16(p, (uint16_t)mid);
        if (c->level == 5)
                *p++ = 0; /* properties */
        for (size_t i = from; i < to; i++) {
                p = put_str(p, c->filters[i], strlen(c->filters[i]));
                /* QoS 1; no local: what we publish locally never comes back in; retain
                 * handling 1: retained messages only on a new subscription. 3.1.1 has
                 * neither (its other bits are reserved): a center's own relayed
                 * status comes back and is ignored (kuimen-relay), and retained
                 * messages come at each connect. A shared subscription must not set
                 * no local (MQTT 5 3.8.3.1: a protocol error). */
                *p++ = c->level != 5 ? 0x01 : strncmp(c->filters[i], "$share/", 7) == 0 ? 0x01 | 0x10 : 0x01 | 0x04 | 0x10;
        }
        c->out.len += (size_t)(p - start);
        return 0;
}

/* Every filter, in as few SUBSCRIBEs as the broker's Maximum Packet Size allows (a
 * center watching many bases has many); a filter that cannot fit alone is logged and
 * left out, never sent (the broker would drop the connection, again at each connect). */
static int send_subscribe(struct km_mqttc *c)
{
        size_t from = 0;
        while (from < c->nfilters) {
                size_t to = from;
                while (to < c->nfilters && fits(c, subscribe_rl(c, from, to + 1)))
                        to++;
                if (to == from) {
                        KM_LOG(KM_LOG_ERR, "mqtt", "%s: the subscription to '%s' does not fit the broker's maximum "
                               "packet size (%u bytes): not subscribed", c->role, c->filters[from], c->max_packet);
                        from++;
                        continue;
                }
                int rc = send_subscribe_of(c, from, to);
                if (rc < 0)
                        return rc;
                from = to;
        }
        return 0;
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud);

static int on_connack_timeout(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_mqttc *c = ud;
        (void)s, (void)usec;
        drop(c, c->st == C_RESOLVING    ? "name lookup took over 5 s"
                : c->st == C_CONNECTING ? "TCP connect took over 5 s"
                : c->st == C_HANDSHAKE  ? "TLS handshake took over 5 s"
                                        : "no answer to CONNECT within 5 s");
        return 0;
}

/* Keepalive: a PINGREQ when we sent nothing for three quarters of a keepalive (the
 * broker drops us after 1.5 of silence: pinging at one whole keepalive, checked every
 * quarter, left a loaded machine 0.2 s, and a broker once dropped an idle ingest with
 * keepalive = 1s under ASan); the connection is dead when the broker said nothing for
 * 1.5 of them (as the broker judges us). */
static int on_ping(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_mqttc *c = ud;
        (void)usec;
        int64_t now = mono_ms(), ka = (int64_t)c->ka_s * 1000;
        if (ka && now - c->last_rx_ms >= ka * 3 / 2) {
                drop(c, "no answer to keepalive pings");
                return 0;
        }
        if (ka && now - c->last_tx_ms >= ka * 3 / 4 && !c->ping_out && buf_reserve(&c->out, 2) == 0) {
                uint8_t *p = buf_tail(&c->out);
                p[0] = 0xC0;
                p[1] = 0;
                c->out.len += 2;
                c->ping_out = true;
                if (flush_out(c) < 0)
                        return 0;
        }
        sd_event_source_set_time_relative(s, (uint64_t)ka * 250); /* a quarter keepalive */
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

/* TCP is connected: CONNECT, then wait for CONNACK. */
static void connected_tcp(struct km_mqttc *c)
{
        char why[128];
        int rc;
        c->st = C_WAIT_CONNACK;
        c->last_rx_ms = c->last_tx_ms = mono_ms();
        if ((rc = send_connect(c)) < 0) {
                snprintf(why, sizeof(why), "CONNECT: %s", strerror(-rc));
                drop(c, why);
                return;
        }
        flush_out(c);
}

/* TLS: one step of the handshake, again at each readiness it asked for; CONNECT
 * once it is done. */
static void tls_step(struct km_mqttc *c)
{
        char why[320];
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(c->ssl);
        if (r == 1) {
                want_write(c, false);
                connected_tcp(c);
                return;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                want_write(c, e == SSL_ERROR_WANT_WRITE);
                return;
        }
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
                snprintf(why, sizeof(why), "TLS handshake: %s", errno ? strerror(errno) : "closed by the broker");
        else
                tls_err_text(c, "TLS handshake", why, sizeof(why));
        drop(c, why);
}

/* TCP is connected to a TLS URI: the handshake, with SNI (a name, not an address: RFC
 * 6066) and, with verify_hostname, the name or address checked by OpenSSL's own
 * verification (a mismatch fails it as "hostname mismatch"). */
static void tls_start(struct km_mqttc *c)
{
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        char why[320];
        struct in6_addr a;
        BIO *bio = NULL;

        pthread_once(&once, bio_method_init);
        if (tls_ctx(c, why, sizeof(why)) < 0) {
                drop(c, why);
                return;
        }
        if (!the_bio_method || !(c->ssl = SSL_new(c->ctx)) || !(bio = BIO_new(the_bio_method))) {
                drop(c, "TLS setup: out of memory");
                return;
        }
        BIO_set_data(bio, (void *)(intptr_t)c->fd);
        SSL_set_bio(c->ssl, bio, bio);
        bool ip = inet_pton(AF_INET, c->host, &a) == 1 || inet_pton(AF_INET6, c->host, &a) == 1;
        if (!ip && SSL_set_tlsext_host_name(c->ssl, c->host) != 1) {
                drop(c, "TLS setup: the server name is not valid for SNI");
                return;
        }
        if (c->verify_hostname) {
                X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
                X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                if ((ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, c->host) : X509_VERIFY_PARAM_set1_host(vp, c->host, 0)) != 1) {
                        drop(c, "TLS setup: the broker's name cannot be checked");
                        return;
                }
        }
        c->st = C_HANDSHAKE;
        tls_step(c);
}

/* The address is known: a non-blocking TCP connect. */
static void connect_to(struct km_mqttc *c, const struct addrinfo *ai)
{
        char why[320];
        int rc;

        c->st = C_CONNECTING;
        c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                snprintf(why, sizeof(why), "socket: %s", strerror(errno));
                drop(c, why);
                return;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
                snprintf(why, sizeof(why), "connect: %s", strerror(errno));
                drop(c, why);
                return;
        }
        if ((rc = sd_event_add_io(c->ev, &c->io, c->fd, EPOLLIN | EPOLLOUT, on_io, c)) < 0) {
                snprintf(why, sizeof(why), "event loop: %s", strerror(-rc));
                drop(c, why);
        }
}

static void *lookup_main(void *arg)
{
        struct lookup *lk = arg;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
        uint64_t one = 1;
        int rc = getaddrinfo(lk->host, lk->port, &hints, &lk->ai);

        pthread_mutex_lock(&lk->mu);
        lk->rc = rc;
        lk->done = true;
        bool abandoned = lk->abandoned;
        if (!abandoned)
                (void)!write(lk->efd, &one, sizeof(one));
        pthread_mutex_unlock(&lk->mu);
        if (abandoned)
                lookup_free(lk);
        return NULL;
}

static int on_lookup(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct km_mqttc *c = ud;
        struct lookup *lk = c->lk;
        char why[320];
        (void)s, (void)fd, (void)revents;

        c->lk_src = sd_event_source_disable_unref(c->lk_src);
        c->lk = NULL;
        /* The thread wrote under the lock: once we had it, the thread is done with lk. */
        pthread_mutex_lock(&lk->mu);
        pthread_mutex_unlock(&lk->mu);
        if (lk->rc != 0 || !lk->ai) {
                snprintf(why, sizeof(why), "%s: %s", c->host, gai_strerror(lk->rc));
                lookup_free(lk);
                drop(c, why);
                return 0;
        }
        connect_to(c, lk->ai);
        lookup_free(lk);
        return 0;
}

static void start_connect(struct km_mqttc *c)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV }, *ai;
        char why[320];
        pthread_t th;
        int rc;

        if (c->st == C_STOPPED)
                return;
        if (c->cb.may_connect && !c->cb.may_connect(c->cb.ud)) {
                schedule_retry(c, 1);
                return;
        }
        c->trying311 = c->try311;
        c->try311 = false;
        c->level = c->version == KM_MQTT_V311 || c->learned[c->cur] || c->trying311 ? 4 : 5;
        c->st = C_RESOLVING;
        c->tls_why[0] = '\0';
        /* Both the lookup and the TCP connect are bounded by the CONNECT timeout. */
        if ((rc = sd_event_add_time_relative(c->ev, &c->connack, CLOCK_MONOTONIC, CONNACK_TIMEOUT_US, 100000,
                                             on_connack_timeout, c)) < 0) {
                snprintf(why, sizeof(why), "event loop: %s", strerror(-rc));
                drop(c, why);
                return;
        }
        if (getaddrinfo(c->host, c->port, &hints, &ai) == 0) {
                connect_to(c, ai); /* an address: nothing to look up */
                freeaddrinfo(ai);
                return;
        }
        struct lookup *lk = calloc(1, sizeof(*lk));
        if (!lk) {
                drop(c, "out of memory");
                return;
        }
        pthread_mutex_init(&lk->mu, NULL);
        snprintf(lk->host, sizeof(lk->host), "%s", c->host);
        snprintf(lk->port, sizeof(lk->port), "%s", c->port);
        if ((lk->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
            (rc = sd_event_add_io(c->ev, &c->lk_src, lk->efd, EPOLLIN, on_lookup, c)) < 0) {
                lookup_free(lk);
                drop(c, "cannot start the name lookup");
                return;
        }
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&th, &at, lookup_main, lk);
        pthread_attr_destroy(&at);
        if (rc != 0) {
                c->lk_src = sd_event_source_disable_unref(c->lk_src);
                lookup_free(lk);
                snprintf(why, sizeof(why), "cannot start the name lookup: %s", strerror(rc));
                drop(c, why);
                return;
        }
        c->lk = lk;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_mqttc *c = ud;
        (void)s, (void)usec;
        c->retry = sd_event_source_disable_unref(c->retry);
        start_connect(c);
        return 0;
}

static void schedule_retry(struct km_mqttc *c, unsigned delay_s)
{
        c->retry = sd_event_source_disable_unref(c->retry);
        if (sd_event_add_time_relative(c->ev, &c->retry, CLOCK_MONOTONIC, (uint64_t)delay_s * 1000000ULL, 100000,
                                       on_retry, c) < 0)
                KM_LOG(KM_LOG_ERR, "mqtt", "%s: cannot arm the reconnect timer", c->role);
}

/* ---- inbound packets ------------------------------------------------------------- */

static void reason_text(const struct props *pr, int code, char *out, size_t len)
{
        if (pr->reason_str)
                snprintf(out, len, "%s: %.*s", km_mqttc_reason(code), (int)pr->reason_len, (const char *)pr->reason_str);
        else
                snprintf(out, len, "%s", km_mqttc_reason(code));
}

/* A 3.1.1 CONNACK's return code as the v5 reason code that means the same. */
static int v311_reason(int rc)
{
        static const uint8_t map[] = { 0x00, 0x84, 0x85, 0x88, 0x86, 0x87 };
        return rc >= 0 && rc < (int)sizeof(map) ? map[rc] : 0x80;
}

/* The broker refused MQTT 5 (how: a CONNACK's code, or a close before any). With
 * auto the next attempt, after the usual back-off, is 3.1.1. */
static void refused_v5(struct km_mqttc *c, const char *how)
{
        char why[320];
        if (c->version == KM_MQTT_AUTO) {
                c->try311 = true;
                snprintf(why, sizeof(why), KM_MQTT_REFUSES_V5 " (%s): trying MQTT 3.1.1", how);
        } else {
                snprintf(why, sizeof(why), KM_MQTT_REFUSES_V5 " (%s): set protocol = auto or 3.1.1", how);
        }
        drop(c, why);
}

static int handle_connack(struct km_mqttc *c, const uint8_t *p, size_t n)
{
        struct props pr = { .receive_max = 65535, .server_keepalive = -1 };
        uint32_t pl;
        int k;
        char why[320];

        if (c->st != C_WAIT_CONNACK || n < 2)
                return -1;
        int code = p[1];
        if (c->level == 5 && n == 2 && p[1] >= 1 && p[1] <= 5) {
                /* No property length: a 3.1.1 CONNACK, which a v5 one never is. */
                if (p[1] == 1) {
                        refused_v5(c, "CONNACK return code 1, unacceptable protocol version");
                        return 1;
                }
                snprintf(why, sizeof(why), "refused (a 3.1.1 CONNACK to MQTT 5): %s", km_mqttc_reason(v311_reason(p[1])));
                drop(c, why);
                return 1;
        }
        if (c->level == 5 && p[1] == 0x84) {
                refused_v5(c, "CONNACK unsupported protocol version");
                return 1;
        }
        if (c->level != 5) {
                if (n != 2 || (p[0] & 0xFE) || p[1] > 5)
                        return -1;
                code = v311_reason(p[1]); /* below, a v5 reason as any */
        } else if (n > 2 && ((k = get_varint(p + 2, n - 2, &pl)) <= 0 || 2 + (size_t)k + pl > n ||
                             parse_props(p + 2 + k, pl, &pr) < 0)) {
                return -1;
        }
        if (code >= 0x80) {
                /* A broker whose ACL predates the node status refuses a will it may not
                 * publish, and with it the whole connection: ingest must not stop for a
                 * status topic. The next attempts go without the will. */
                if (code == 0x87 && c->will_topic && !c->no_will) {
                        c->no_will = true;
                        KM_LOG(KM_LOG_ERR, "mqtt", "%s: %s refused the connection with the will on %s (not authorised: "
                               "allow kuimen to write it in the broker's ACL); connecting without the will",
                               c->role, c->uri, c->will_topic);
                }
                char r[256];
                reason_text(&pr, code, r, sizeof(r));
                snprintf(why, sizeof(why), "refused: %s", r);
                drop(c, why);
                return 1;
        }
        c->connack = sd_event_source_disable_unref(c->connack);
        c->send_max = c->window < (unsigned)pr.receive_max ? c->window : (unsigned)pr.receive_max;
        if (!c->send_max)
                c->send_max = 1;
        /* The broker's limits (MQTT v5 CONNACK): publishes in flight at most Receive
         * Maximum (above), no packet over Maximum Packet Size (publish, subscribe), and
         * no Topic Alias at all: this client never sends one, so any Topic Alias
         * Maximum, 0 included, is kept. */
        c->max_packet = pr.max_packet;
        if (pr.max_packet || pr.receive_max < 65535)
                KM_LOG(KM_LOG_INFO, "mqtt", "%s: %s takes packets of %s, %d publishes in flight (topic aliases: %d, none used)",
                       c->role, c->uri, km_packet_limit(pr.max_packet, (char[32]){ 0 }, 32), pr.receive_max,
                       pr.topic_alias_max);
        c->ka_s = pr.server_keepalive >= 0 ? (unsigned)pr.server_keepalive : c->keepalive_s;
        c->st = C_UP;
        c->backoff_s = 1;
        c->failed_in_round = 0;
        if (c->trying311 && !c->learned[c->cur]) {
                c->learned[c->cur] = true;
                KM_LOG(KM_LOG_NOTICE, "mqtt", "%s: %s refuses MQTT 5 and takes 3.1.1: this connection speaks 3.1.1 "
                       "until kuimen restarts (protocol = auto)", c->role, c->uri);
        }
        if (send_subscribe(c) < 0) {
                drop(c, "SUBSCRIBE: out of memory");
                return 1;
        }
        if (c->ka_s && sd_event_add_time_relative(c->ev, &c->ping, CLOCK_MONOTONIC, (uint64_t)c->ka_s * 250000, 50000,
                                                  on_ping, c) < 0)
                KM_LOG(KM_LOG_ERR, "mqtt", "%s: cannot arm the keepalive timer", c->role);
        KM_LOG(KM_LOG_NOTICE, "mqtt", "%s: connected to %s (MQTT %s)%s", c->role, c->uri, km_mqtt_version_name(c->level),
               p[0] & 1 ? " (session resumed)" : "");
        c->cb.up(c->cb.ud);
        if (c->st == C_UP)
                schedule_flush(c);
        return 0;
}

static int handle_publish(struct km_mqttc *c, uint8_t flags, uint8_t *p, size_t n)
{
        int qos = (flags >> 1) & 3;
        if (c->st != C_UP || qos > 1 || n < 2)
                return -1; /* we subscribe at QoS 1: the broker never sends QoS 2 */
        size_t tl = get16(p), i = 2 + tl;
        uint16_t mid = 0;
        uint32_t pl;
        int k;
        if (i + (qos ? 2 : 0) > n)
                return -1;
        if (qos) {
                mid = get16(p + i);
                i += 2;
        }
        if (c->level != 5)
                k = 0, pl = 0; /* 3.1.1: no properties */
        else if ((k = get_varint(p + i, n - i, &pl)) <= 0 || i + (size_t)k + pl > n || parse_props(p + i + k, pl, NULL) < 0)
                return -1;
        /* The topic is NUL-terminated in place over the byte after it (already read). */
        uint8_t saved = p[2 + tl];
        p[2 + tl] = 0;
        size_t body = i + (size_t)k + pl;
        int rc = c->cb.message(c->cb.ud, (const char *)p + 2, p + body, n - body, flags & 1, p + i + k, pl);
        p[2 + tl] = saved;
        c->took = true;
        if (rc != 0)
                return 2; /* not accepted: the broker must send it again */
        if (qos) {
                if (c->nacks == c->capacks) {
                        size_t cap = c->capacks ? c->capacks * 2 : 256;
                        uint16_t *a = realloc(c->acks, cap * sizeof(*a));
                        if (!a)
                                return 2;
                        c->acks = a;
                        c->capacks = cap;
                }
                c->acks[c->nacks++] = mid;
        }
        return 0;
}

static int handle_puback(struct km_mqttc *c, const uint8_t *p, size_t n)
{
        if (c->st != C_UP || n < 2)
                return -1;
        uint16_t mid = get16(p);
        int reason = n > 2 ? p[2] : 0;
        uint64_t v = c->mids[mid];
        if (!(v & MID_USED))
                return 0; /* not ours (any more) */
        c->mids[mid] = 0;
        c->inflight--;
        uint32_t cookie = (uint32_t)v;
        if (reason < 0x80) {
                c->cb.acked(c->cb.ud, cookie);
                return 0;
        }
        struct props pr = { 0 };
        uint32_t pl;
        int k;
        if (n > 3 && (k = get_varint(p + 3, n - 3, &pl)) > 0 && 3 + (size_t)k + pl <= n)
                parse_props(p + 3 + k, pl, &pr);
        char r[256], why[320];
        reason_text(&pr, reason, r, sizeof(r));
        snprintf(why, sizeof(why), "publish refused (%s)", r);
        if (!c->cb.refused(c->cb.ud, cookie, reason, why)) {
                drop(c, why);
                return 1;
        }
        return 0;
}

static int handle_suback(struct km_mqttc *c, const uint8_t *p, size_t n)
{
        uint32_t pl = 0;
        int k = 0;
        if (n < 3 || (c->level == 5 && ((k = get_varint(p + 2, n - 2, &pl)) <= 0 || 2 + (size_t)k + pl > n)))
                return -1;
        uint16_t mid = get16(p);
        if (c->mids[mid] == MID_SUB)
                c->mids[mid] = 0;
        size_t i = 2 + (size_t)k + pl, taken = 0, f = 0;
        for (; i < n; i++, f++)
                if (p[i] >= 0x80)
                        KM_LOG(KM_LOG_ERR, "mqtt", "%s: broker refused subscription to '%s' (%s)", c->role,
                               f < c->nfilters ? c->filters[f] : "?", km_mqttc_reason(p[i]));
                else
                        taken++;
        /* From here the broker routes to us what the filters match (before, a message
         * published on the local broker has no subscriber: tests wait for this line). */
        KM_LOG(KM_LOG_INFO, "mqtt", "%s: subscribed (%zu of %zu filters)", c->role, taken, f);
        return 0;
}

static int handle_disconnect(struct km_mqttc *c, const uint8_t *p, size_t n)
{
        struct props pr = { 0 };
        uint32_t pl;
        int k;
        int code = n ? p[0] : 0;
        if (n > 1 && (k = get_varint(p + 1, n - 1, &pl)) > 0 && 1 + (size_t)k + pl <= n)
                parse_props(p + 1 + k, pl, &pr);
        char r[256], why[320];
        reason_text(&pr, code, r, sizeof(r));
        snprintf(why, sizeof(why), "broker disconnected: %s", r);
        drop(c, why);
        return 1;
}

/* One complete packet. 0: go on; 1: the connection was dropped; 2: a message was not
 * accepted; -1: malformed or out of order. */
static int handle_packet(struct km_mqttc *c, uint8_t type, uint8_t *p, size_t n)
{
        switch (type >> 4) {
        case 2:
                return handle_connack(c, p, n);
        case 3:
                return handle_publish(c, type & 0x0F, p, n);
        case 4:
                return handle_puback(c, p, n);
        case 9:
                return handle_suback(c, p, n);
        case 13:
                c->ping_out = false;
                return 0;
        case 14:
                return handle_disconnect(c, p, n);
        default:
                return -1;
        }
}

/* The PUBACKs of this read, after the owner settled its messages (QoS 0 ones too: the
 * owner's deferral must not outlive the read). */
static int send_acks(struct km_mqttc *c)
{
        bool took = c->took;
        c->took = false;
        if (took && c->cb.settle && c->cb.settle(c->cb.ud) < 0) {
                c->nacks = 0;
                drop(c, "the messages of a read could not be stored: not acknowledged");
                return -EIO;
        }
        if (!c->nacks)
                return 0;
        if (buf_reserve(&c->out, c->nacks * 4) < 0)
                return -ENOMEM;
        uint8_t *p = buf_tail(&c->out);
        for (size_t i = 0; i < c->nacks; i++) {
                *p++ = 0x40;
                *p++ = 2;
                p = put16(p, c->acks[i]);
        }
        c->out.len += c->nacks * 4;
        c->nacks = 0;
        return flush_out(c);
}

static void take_packets(struct km_mqttc *c);

static void read_packets(struct km_mqttc *c)
{
        char why[256];
        if (buf_reserve(&c->in, READ_CHUNK) < 0) {
                drop(c, "out of memory");
                return;
        }
        size_t room = c->in.cap - c->in.off - c->in.len;
        ssize_t n = conn_recv(c, buf_tail(&c->in), room);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (c->read_wants_write)
                        want_write(c, true);
                return;
        }
        if (n > 0 && c->ssl) {
                /* An SSL_read gives one record (16 KiB at most): what has arrived, up to
                 * a chunk, is one read as on TCP, so that its messages settle together.
                 * An error after them comes again at the next read. */
                ssize_t k;
                while ((size_t)n < room && (k = conn_recv(c, buf_tail(&c->in) + n, room - (size_t)n)) > 0)
                        n += k;
                if (c->read_wants_write)
                        want_write(c, true);
        }
        if (n <= 0 && c->st == C_WAIT_CONNACK && c->level == 5 && (n == 0 || errno == ECONNRESET)) {
                /* Before any CONNACK: how RabbitMQ 3.10 refuses MQTT 5. */
                refused_v5(c, "it closed the connection without a CONNACK");
                return;
        }
        if (n <= 0) {
                snprintf(why, sizeof(why), "%s", n < 0 ? io_why(c, errno) : "closed by the broker");
                drop(c, why);
                return;
        }
        c->in.len += (size_t)n;
        c->last_rx_ms = mono_ms();
        take_packets(c);
}

/* Handles the complete packets in c->in (a read just added to it), then sends the
 * PUBACKs of the read. */
static void take_packets(struct km_mqttc *c)
{
        char why[160];
        for (;;) {
                uint8_t *p = c->in.p + c->in.off;
                uint32_t rl;
                int k = c->in.len < 2 ? 0 : get_varint(p + 1, c->in.len - 1, &rl);
                if (k < 0 || (k > 0 && rl > MAX_PACKET)) {
                        drop(c, "malformed packet length from the broker");
                        return;
                }
                if (k == 0 || c->in.len < 1 + (size_t)k + rl) {
                        /* Incomplete: a large packet grows the buffer for its whole. */
                        if (k > 0 && buf_reserve(&c->in, 1 + (size_t)k + rl) < 0) {
                                drop(c, "out of memory");
                                return;
                        }
                        break;
                }
                int rc = handle_packet(c, p[0], p + 1 + k, rl);
                if (rc == 1)
                        return; /* dropped: the buffer is gone */
                if (rc < 0) {
                        snprintf(why, sizeof(why), "protocol error in a packet of type %u from the broker", p[0] >> 4);
                        drop(c, why);
                        return;
                }
                if (rc == 2) {
                        /* What was accepted before it is acknowledged; it and what
                         * follows come again on the next connection. */
                        send_acks(c);
                        if (c->st == C_UP)
                                drop(c, "a message could not be taken");
                        return;
                }
                buf_consume(&c->in, 1 + (size_t)k + rl);
        }
        send_acks(c);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct km_mqttc *c = ud;
        (void)s, (void)fd;

        if (c->st == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof(err);
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
                        err = errno;
                if (err) {
                        char why[160];
                        snprintf(why, sizeof(why), "connect: %s", strerror(err));
                        drop(c, why);
                        return 0;
                }
                want_write(c, false);
                if (c->tls)
                        tls_start(c);
                else
                        connected_tcp(c);
                return 0;
        }
        if (c->st == C_HANDSHAKE) {
                tls_step(c);
                return 0;
        }
        if (c->read_wants_write && (revents & EPOLLOUT)) {
                c->read_wants_write = false;
                revents |= EPOLLIN;
        }
        if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
                read_packets(c);
        /* TLS: what a read left decrypted in OpenSSL's buffer (the chunk was full) makes
         * the socket no more readable: taken now. */
        while (c->ssl && (c->st == C_WAIT_CONNACK || c->st == C_UP) && SSL_pending(c->ssl) > 0)
                read_packets(c);
        if (c->fd >= 0 && (revents & EPOLLOUT))
                flush_out(c);
        return 0;
}

/* For the fuzz target (tests/fuzz/fuzz_mqttc.c): bytes as one read(2) of the connection
 * returned them, through what a read runs after the read. */
int km_mqttc_feed(struct km_mqttc *c, const void *bytes, size_t len)
{
        if (c->fd < 0 || (c->st != C_WAIT_CONNACK && c->st != C_UP))
                return -ENOTCONN;
        if (!len)
                return 0;
        if (buf_reserve(&c->in, len) < 0)
                return -ENOMEM;
        memcpy(buf_tail(&c->in), bytes, len);
        c->in.len += len;
        c->last_rx_ms = mono_ms();
        take_packets(c);
        return 0;
}

/* ---- the API ------------------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
        return s ? strdup(s) : NULL;
}

int km_mqtt_uri_parse(const char *uri, char *host, size_t hostlen, int *port, bool *tls)
{
        const char *p = strstr(uri, "://");
        if (!p)
                return -EINVAL;
        *tls = strncmp(uri, "ssl://", 6) == 0 || strncmp(uri, "mqtts://", 8) == 0;
        if (!*tls && strncmp(uri, "tcp://", 6) && strncmp(uri, "mqtt://", 7))
                return -EINVAL;
        p += 3;
        const char *colon, *hend;
        if (*p == '[') {
                hend = strchr(p, ']');
                if (!hend)
                        return -EINVAL;
                colon = hend[1] == ':' ? hend + 1 : NULL;
                p++;
        } else {
                colon = strrchr(p, ':');
                hend = colon ? colon : p + strcspn(p, "/");
        }
        size_t n = (size_t)(hend - p);
        if (!n || n >= hostlen)
                return -EINVAL;
        memcpy(host, p, n);
        host[n] = '\0';
        /* Whole digits only: atoi took "1883x" as 1883 and "99999999999" as anything. */
        char *end;
        errno = 0;
        long pn = colon ? strtol(colon + 1, &end, 10) : (*tls ? 8883 : 1883);
        if (colon && (end == colon + 1 || (*end && *end != '/') || errno))
                return -EINVAL;
        *port = pn > 0 && pn < 65536 ? (int)pn : 0;
        return *port ? 0 : -EINVAL;
}

void km_mqtt_uri_list_free(char **v, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

int km_mqtt_uri_list(const char *list, char ***out, size_t *n)
{
        char **v = NULL;
        size_t k = 0;
        const char *p = list;
        *out = NULL;
        *n = 0;
        if (!list)
                return -EINVAL;
        for (;;) {
                p += strspn(p, " \t");
                size_t len = strcspn(p, ",");
                const char *next = p[len] ? p + len + 1 : NULL;
                while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
                        len--;
                char **w = len ? realloc(v, (k + 1) * sizeof(*v)) : NULL;
                if (!len || !w || !(w[k] = strndup(p, len))) {
                        if (w)
                                v = w;
                        km_mqtt_uri_list_free(v, k);
                        return len ? -ENOMEM : -EINVAL; /* an empty entry: "a,,b" or a trailing comma */
                }
                v = w;
                k++;
                if (!next)
                        break;
                p = next;
        }
        *out = v;
        *n = k;
        return 0;
}

const char *km_mqttc_uri(const struct km_mqttc *c, size_t *index, size_t *n)
{
        if (index)
                *index = c->cur;
        if (n)
                *n = c->nuris;
        return c->uri;
}

/* Host, port and transport of the URI in use. */
static int parse_uri(struct km_mqttc *c)
{
        int port, rc = km_mqtt_uri_parse(c->uri, c->host, sizeof(c->host), &port, &c->tls);
        if (rc < 0)
                return -EINVAL;
        snprintf(c->port, sizeof(c->port), "%d", port);
        return 0;
}

int km_mqttc_new(struct km_mqttc **out, sd_event *ev, const struct km_mqttc_opts *o, const struct km_mqttc_cb *cb)
{
        struct km_mqttc *c = calloc(1, sizeof(*c));
        int rc = -ENOMEM;

        if (!c)
                return -ENOMEM;
        c->ev = ev;
        c->cb = *cb;
        c->fd = -1;
        if ((rc = km_mqtt_uri_list(o->uri, &c->uris, &c->nuris)) < 0)
                goto fail;
        rc = -ENOMEM;
        c->uri = c->uris[0];
        c->client_id = dup_or_null(o->client_id);
        c->username = dup_or_null(o->username);
        c->password = dup_or_null(o->password);
        c->role = dup_or_null(o->role ? o->role : "mqtt");
        c->will_topic = dup_or_null(o->will_topic);
        c->will_msg = dup_or_null(o->will_msg);
        c->ca = dup_or_null(o->ca);
        c->cert = dup_or_null(o->cert);
        c->key = dup_or_null(o->key);
        c->verify_hostname = o->verify_hostname;
        c->clean_start = o->clean_start;
        c->version = o->version;
        c->meta = o->v311_meta;
        c->level = o->version == KM_MQTT_V311 ? 4 : 5;
        c->session_expiry_s = o->session_expiry_s;
        c->keepalive_s = o->keepalive_s > 65535 ? 65535 : o->keepalive_s;
        c->window = o->window ? o->window : 1;
        c->receive_max = o->receive_max ? (o->receive_max > 65535 ? 65535 : o->receive_max) : 256;
        c->backoff_s = 1;
        c->mids = calloc(MIDS, sizeof(*c->mids));
        c->learned = calloc(c->nuris, sizeof(*c->learned));
        if (o->nfilters && !(c->filters = calloc(o->nfilters, sizeof(*c->filters))))
                goto fail;
        for (size_t i = 0; i < o->nfilters; i++, c->nfilters++)
                if (!(c->filters[i] = strdup(o->filters[i])))
                        goto fail;
        if (!c->learned || !c->client_id || !c->role || !c->mids || (o->will_topic && (!c->will_topic || !c->will_msg)) ||
            (o->ca && !c->ca) || (o->cert && !c->cert) || (o->key && !c->key))
                goto fail;
        for (c->cur = c->nuris; c->cur-- > 0;) { /* each of them, ending on the first */
                c->uri = c->uris[c->cur];
                if ((rc = parse_uri(c)) < 0)
                        goto fail;
        }
        c->cur = 0;
        if ((rc = sd_event_add_defer(ev, &c->flush, on_flush, c)) < 0)
                goto fail;
        sd_event_source_set_enabled(c->flush, SD_EVENT_OFF);
        start_connect(c);
        *out = c;
        return 0;
fail:
        km_mqttc_free(c);
        return rc;
}

bool km_mqttc_user_property(const void *props, size_t plen, const char *key, const char **val, size_t *vlen)
{
        const uint8_t *p = props;
        size_t kl = strlen(key), i = 0;
        while (i < plen) {
                uint32_t id;
                size_t need;
                int k = get_varint(p + i, plen - i, &id);
                if (k <= 0 || prop_size(id, p + i + k, plen - i - (size_t)k, &need) < 0)
                        return false; /* checked on arrival: cannot happen */
                i += (size_t)k;
                if (id == 0x26 && get16(p + i) == kl && memcmp(p + i + 2, key, kl) == 0) {
                        if (val)
                                *val = (const char *)p + i + 4 + kl;
                        if (vlen)
                                *vlen = get16(p + i + 2 + kl);
                        return true;
                }
                i += need;
        }
        return false;
}

int km_mqttc_publish(struct km_mqttc *c, const char *topic, const void *payload, size_t len, bool retain,
                     const char *origin, uint64_t id, const char *relay, uint32_t cookie)
{
        char idbuf[24];
        size_t tl = strlen(topic), ol = 0, il = 0, rl_ = relay ? strlen(relay) : 0;

        if (c->st != C_UP)
                return -ENOTCONN;
        if (c->inflight >= c->send_max)
                return -EAGAIN;
        uint32_t props = 0;
        size_t env = 0; /* 3.1.1: the envelope's length */
        bool v5 = c->level == 5;
        if (origin && !v5) {
                if (c->meta == KM_META_ENVELOPE)
                        env = km_mqtt_envelope(NULL, 0, origin, id, relay);
        } else if (origin) {
                ol = strlen(origin);
                il = (size_t)snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)id);
                /* Subscribers drop duplicates by (origin, id): at least once means a
                 * message may arrive twice after a reconnect. */
                props = (uint32_t)(1 + 2 + 13 + 2 + ol + 1 + 2 + 9 + 2 + il);
                if (relay)
                        props += (uint32_t)(1 + 2 + 12 + 2 + rl_);
        }
        uint64_t rl64 = 2 + (uint64_t)tl + 2 + (v5 ? varint_len(props) + props : 0) + env + len;
        if (tl > 65535 || ol > 65535 || rl_ > 65535 || rl64 > MAX_PACKET - 1 || !fits(c, (uint32_t)rl64))
                return -EMSGSIZE;
        uint32_t rl = (uint32_t)rl64;
        int mid = alloc_mid(c, MID_USED | cookie);
        if (mid < 0)
                return -EAGAIN;
        if (buf_reserve(&c->out, 1 + varint_len(rl) + rl) < 0) {
                c->mids[mid] = 0;
                return -ENOMEM;
        }
        uint8_t *p = buf_tail(&c->out), *start = p;
        *p++ = (uint8_t)(0x32 | (retain ? 1 : 0));
        p = put_varint(p, rl);
        p = put_str(p, topic, tl);
        p = put16(p, (uint16_t)mid);
        if (v5)
                p = put_varint(p, props);
        if (env)
                p += km_mqtt_envelope((char *)p, env, origin, id, relay);
        if (origin && v5) {
                *p++ = 0x26;
                p = put_str(p, "kuimen-origin", 13);
                p = put_str(p, origin, ol);
                *p++ = 0x26;
                p = put_str(p, "kuimen-id", 9);
                p = put_str(p, idbuf, il);
                if (relay) {
                        *p++ = 0x26;
                        p = put_str(p, "kuimen-relay", 12);
                        p = put_str(p, relay, rl_);
                }
        }
        if (len)
                memcpy(p, payload, len);
        p += len;
        c->out.len += (size_t)(p - start);
        c->inflight++;
        /* Written once per loop iteration with the others, or now when much is queued. */
        if (c->out.len >= READ_CHUNK)
                return flush_out(c) < 0 ? -ENOTCONN : 0;
        schedule_flush(c);
        return 0;
}

uint32_t km_mqttc_max_packet(const struct km_mqttc *c)
{
        return c->max_packet;
}

int km_mqttc_version(const struct km_mqttc *c)
{
        return c->level;
}

const char *km_mqtt_version_name(int level)
{
        return level == 5 ? "5" : level == 4 ? "3.1.1" : "";
}

/* ---- the 3.1.1 envelope ---------------------------------------------------------- */

/* s as the inside of a JSON string ('"' and '\\' escaped; node names hold no control
 * characters) at out + n when it fits cap; returns n plus its length. */
static size_t env_str(char *out, size_t cap, size_t n, const char *s)
{
        for (; *s; s++) {
                if (*s == '"' || *s == '\\') {
                        if (out && n < cap)
                                out[n] = '\\';
                        n++;
                }
                if (out && n < cap)
                        out[n] = *s;
                n++;
        }
        return n;
}

static size_t env_lit(char *out, size_t cap, size_t n, const char *lit)
{
        size_t l = strlen(lit);
        if (out && n + l <= cap)
                memcpy(out + n, lit, l);
        return n + l;
}

size_t km_mqtt_envelope(char *out, size_t cap, const char *origin, uint64_t id, const char *relay)
{
        char idbuf[24];
        snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)id);
        size_t n = env_lit(out, cap, 0, "{\"kuimen-origin\":\"");
        n = env_str(out, cap, n, origin);
        n = env_lit(out, cap, n, "\",\"kuimen-id\":\"");
        n = env_lit(out, cap, n, idbuf);
        if (relay) {
                n = env_lit(out, cap, n, "\",\"kuimen-relay\":\"");
                n = env_str(out, cap, n, relay);
        }
        return env_lit(out, cap, n, "\"}\n");
}

/* Matches lit at p[*i..len): advances *i past it. */
static bool env_take(const char *p, size_t len, size_t *i, const char *lit)
{
        size_t l = strlen(lit);
        if (*i + l > len || memcmp(p + *i, lit, l) != 0)
                return false;
        *i += l;
        return true;
}

/* A JSON string's inside up to its closing '"' (consumed), unescaped into out. */
static bool env_get_str(const char *p, size_t len, size_t *i, char *out, size_t cap)
{
        size_t o = 0;
        while (*i < len && p[*i] != '"') {
                char ch = p[*i];
                if ((unsigned char)ch < 0x20)
                        return false;
                if (ch == '\\') {
                        if (++*i >= len || (p[*i] != '"' && p[*i] != '\\'))
                                return false;
                        ch = p[*i];
                }
                if (o + 1 >= cap)
                        return false;
                out[o++] = ch;
                ++*i;
        }
        if (*i >= len || !o)
                return false;
        out[o] = '\0';
        ++*i;
        return true;
}

size_t km_mqtt_envelope_parse(const void *payload, size_t len, struct km_mqtt_meta_in *m)
{
        const char *p = payload;
        size_t i = 0;
        char idbuf[24];
        if (!p || !env_take(p, len, &i, "{\"kuimen-origin\":\"") || !env_get_str(p, len, &i, m->origin, sizeof(m->origin)) ||
            !env_take(p, len, &i, ",\"kuimen-id\":\"") || !env_get_str(p, len, &i, idbuf, sizeof(idbuf)))
                return 0;
        char *end;
        errno = 0;
        if (idbuf[0] < '0' || idbuf[0] > '9' || (m->id = strtoull(idbuf, &end, 10), *end) || errno)
                return 0;
        m->relay[0] = '\0';
        if (env_take(p, len, &i, ",\"kuimen-relay\":\"") && !env_get_str(p, len, &i, m->relay, sizeof(m->relay)))
                return 0;
        return env_take(p, len, &i, "}\n") ? i : 0;
}

void km_mqttc_reset(struct km_mqttc *c)
{
        if (c->st == C_WAIT_CONNACK || c->st == C_UP || c->st == C_CONNECTING || c->st == C_RESOLVING) {
                c->st = C_WAIT_CONNACK; /* the owner already knows: report as a failed attempt */
                drop(c, "reset after no acknowledgement");
        }
}

void km_mqttc_stop(struct km_mqttc *c)
{
        if (!c || c->st == C_STOPPED)
                return;
        c->retry = sd_event_source_disable_unref(c->retry);
        if (c->fd >= 0 && c->st == C_UP && buf_reserve(&c->out, 3) == 0) {
                bool will = c->will_topic && !c->no_will;
                uint8_t *p = buf_tail(&c->out);
                if (c->level == 5) {
                        p[0] = 0xE0;
                        p[1] = 1;
                        p[2] = will ? 0x04 : 0x00; /* the broker sends the will */
                        c->out.len += 3;
                } else if (!will) {
                        p[0] = 0xE0;
                        p[1] = 0;
                        c->out.len += 2;
                } /* else 3.1.1: a DISCONNECT would discard the will; the close sends it */
                for (int i = 0; i < 100 && c->out.len; i++) {
                        ssize_t n = conn_send(c, c->out.p + c->out.off, c->out.len);
                        if (n > 0) {
                                buf_consume(&c->out, (size_t)n);
                                continue;
                        }
                        if (n < 0 && errno != EAGAIN && errno != EINTR)
                                break;
                        struct pollfd pf = { c->fd, POLLOUT, 0 };
                        poll(&pf, 1, 10);
                }
                if (c->ssl && !c->out.len) {
                        SSL_shutdown(c->ssl); /* close_notify, once: the broker closes anyway */
                        ERR_clear_error();
                }
        }
        c->st = C_STOPPED;
        close_conn(c);
}

void km_mqttc_free(struct km_mqttc *c)
{
        if (!c)
                return;
        km_mqttc_stop(c);
        sd_event_source_disable_unref(c->retry);
        sd_event_source_disable_unref(c->flush);
        for (size_t i = 0; i < c->nfilters; i++)
                free(c->filters[i]);
        free(c->filters);
        km_mqtt_uri_list_free(c->uris, c->nuris);
        free(c->learned);
        free(c->client_id);
        free(c->username);
        free(c->password);
        free(c->role);
        free(c->will_topic);
        free(c->will_msg);
        free(c->ca);
        free(c->cert);
        free(c->key);
        free(c->mids);
        free(c->acks);
        free(c->in.p);
        free(c->out.p);
        free(c);
}

const char *km_packet_limit(uint32_t max_packet, char *buf, size_t len)
{
        if (!max_packet)
                return "any size";
        snprintf(buf, len, "%u bytes at most", (unsigned)max_packet);
        return buf;
}

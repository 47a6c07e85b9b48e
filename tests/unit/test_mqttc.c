/* SPDX-License-Identifier: MIT */
/* mqttc against a scripted broker on loopback (exact bytes out, bad bytes in), and over TLS against a real mosquitto. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "bridges/mqttc.h"
#include "gateway/log.h"
#include "tests/integration/harness.h"

/*
 * A real broker never sends a malformed packet, so the integration tests cannot show
 * what kuimen does with one. Here the test plays the broker on a loopback socket, in
 * the same thread as the client's event loop: it reads what mqttc writes and answers
 * with bytes of its choosing, one at a time when the test wants the parser to see
 * every split.
 */

struct seen {
        int up, lost, failed, acked, refused, refused_reason;
        char why[256];
        char topic[64];
        uint8_t payload[64];
        size_t len, whole; /* len: of payload[] kept; whole: the message's */
        int messages;
        char relay[16]; /* the kuimen-relay user property, "" when none */
};

static void s_up(void *ud)
{
        ((struct seen *)ud)->up++;
}

static void s_lost(void *ud, const char *why)
{
        struct seen *s = ud;
        s->lost++;
        snprintf(s->why, sizeof(s->why), "%s", why);
}

static void s_failed(void *ud, const char *why)
{
        struct seen *s = ud;
        s->failed++;
        snprintf(s->why, sizeof(s->why), "%s", why);
}

static int s_message(void *ud, const char *topic, const void *payload, size_t len, bool retain, const void *props,
                     size_t plen)
{
        struct seen *s = ud;
        const char *v;
        size_t vl;
        (void)retain;
        s->relay[0] = 0;
        if (km_mqttc_user_property(props, plen, "kuimen-relay", &v, &vl))
                snprintf(s->relay, sizeof(s->relay), "%.*s", (int)vl, v);
        snprintf(s->topic, sizeof(s->topic), "%s", topic);
        s->len = len < sizeof(s->payload) ? len : sizeof(s->payload);
        s->whole = len;
        memcpy(s->payload, payload, s->len);
        s->messages++;
        return 0;
}

static void s_acked(void *ud, uint32_t cookie)
{
        (void)cookie;
        ((struct seen *)ud)->acked++;
}

static bool s_refused(void *ud, uint32_t cookie, int reason, const char *why)
{
        struct seen *s = ud;
        (void)cookie;
        s->refused++;
        s->refused_reason = reason;
        snprintf(s->why, sizeof(s->why), "%s", why);
        return true;
}

struct rig {
        sd_event *ev;
        struct km_mqttc *c;
        struct seen seen;
        int lfd, fd;
        uint8_t in[4096];
        size_t nin;
};

static void turn(struct rig *r, int ms)
{
        sd_event_run(r->ev, (uint64_t)ms * 1000);
}

/* Runs the client's loop until the scripted broker has a connection. */
static void accept_client(struct rig *r)
{
        for (int i = 0; i < 600 && r->fd < 0; i++) {
                turn(r, 5);
                r->fd = accept4(r->lfd, NULL, NULL, SOCK_NONBLOCK);
        }
        cr_assert_geq(r->fd, 0, "mqttc did not connect");
}

/* Reads what the client sent until at least n bytes are in r->in. */
static void read_at_least(struct rig *r, size_t n)
{
        for (int i = 0; i < 400 && r->nin < n; i++) {
                turn(r, 5);
                ssize_t k = read(r->fd, r->in + r->nin, sizeof(r->in) - r->nin);
                if (k > 0)
                        r->nin += (size_t)k;
        }
        cr_assert_geq(r->nin, n, "client sent %zu bytes, want %zu", r->nin, n);
}

static void send_bytes(struct rig *r, const void *b, size_t n, bool one_by_one)
{
        const uint8_t *p = b;
        for (size_t i = 0; i < n;) {
                size_t k = one_by_one ? 1 : n - i;
                cr_assert_eq(write(r->fd, p + i, k), (ssize_t)k);
                i += k;
                turn(r, 1);
        }
        /* Loopback hands the bytes over in a softirq, which a loaded machine runs late
         * (CI saw a PUBACK not yet read after 20 turns): first until the client's
         * socket has them (acknowledged: nothing left in our send queue), then the
         * turns that let the client read and act on them. */
        int unsent = 1;
        for (int i = 0; i < 1000 && ioctl(r->fd, SIOCOUTQ, &unsent) == 0 && unsent > 0; i++)
                turn(r, 2);
        cr_assert_eq(unsent, 0, "the client's socket never took %d bytes", unsent);
        for (int i = 0; i < 20; i++)
                turn(r, 2);
}

static void rig_up_v(struct rig *r, const char *will, int version);

static void rig_up(struct rig *r, const char *will)
{
        rig_up_v(r, will, KM_MQTT_AUTO);
}

static void rig_up_v(struct rig *r, const char *will, int version)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t al = sizeof(a);
        char uri[64];
        memset(r, 0, sizeof(*r));
        r->fd = -1;
        km_log_max_level = KM_LOG_ERR - 1; /* the drops below are the point, not noise */
        r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        cr_assert(r->lfd >= 0 && bind(r->lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(r->lfd, 4) == 0);
        getsockname(r->lfd, (struct sockaddr *)&a, &al);
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", ntohs(a.sin_port));
        static const char *const filters[] = { "sensors/#" };
        struct km_mqttc_opts o = { .uri = uri, .client_id = "t", .role = "test", .keepalive_s = 30, .window = 4,
                                   .receive_max = 8, .will_topic = will, .will_msg = will ? "offline" : NULL,
                                   .filters = filters, .nfilters = 1, .session_expiry_s = 60, .version = version };
        struct km_mqttc_cb cb = { .up = s_up, .lost = s_lost, .failed_connect = s_failed, .message = s_message,
                                  .acked = s_acked, .refused = s_refused, .ud = &r->seen };
        cr_assert_eq(sd_event_new(&r->ev), 0);
        cr_assert_eq(km_mqttc_new(&r->c, r->ev, &o, &cb), 0);
        accept_client(r);
}

static void rig_down(struct rig *r)
{
        km_mqttc_free(r->c);
        sd_event_unref(r->ev);
        if (r->fd >= 0)
                close(r->fd);
        close(r->lfd);
}

/* The CONNECT (fixed header, "MQTT", protocol level, flags) is what the spec says;
 * returns its flags. */
static uint8_t read_connect_level(struct rig *r, uint8_t level)
{
        read_at_least(r, 2);
        size_t total = 2 + r->in[1]; /* our CONNECT stays under 128 bytes */
        read_at_least(r, total);
        cr_assert_eq(r->in[0], 0x10);
        cr_assert_eq(memcmp(r->in + 2, "\0\4MQTT", 6), 0);
        cr_assert_eq(r->in[8], level, "protocol level %u, want %u", r->in[8], level);
        uint8_t flags = r->in[9];
        memmove(r->in, r->in + total, r->nin - total);
        r->nin -= total;
        return flags;
}

static uint8_t read_connect(struct rig *r)
{
        return read_connect_level(r, 5);
}

/* The broker closes our connection; the client's next one is accepted. */
static void reconnect(struct rig *r)
{
        close(r->fd);
        r->fd = -1;
        r->nin = 0;
        accept_client(r);
}

static void connack_ok(struct rig *r)
{
        static const uint8_t ack[] = { 0x20, 0x03, 0x00, 0x00, 0x00 };
        send_bytes(r, ack, sizeof(ack), false);
        cr_assert_eq(r->seen.up, 1);
        /* Then the SUBSCRIBE: sensors/# at QoS 1, no local, retain handling 1. */
        static const uint8_t sub[] = { 0x82, 0x0F, 0x00, 0x01, 0x00, 0x00, 0x09, 's', 'e', 'n', 's', 'o', 'r', 's', '/', '#', 0x15 };
        read_at_least(r, sizeof(sub));
        cr_assert_eq(memcmp(r->in, sub, sizeof(sub)), 0, "SUBSCRIBE bytes differ");
        memmove(r->in, r->in + sizeof(sub), r->nin - sizeof(sub));
        r->nin -= sizeof(sub);
}

TestSuite(mqttc, .timeout = 30);

Test(mqttc, publish_split_byte_by_byte_is_taken_and_acknowledged)
{
        struct rig r;
        rig_up(&r, NULL);
        uint8_t flags = read_connect(&r);
        cr_assert_eq(flags, 0x00, "no will, persistent session, no credentials: flags 0x%02x", flags);
        connack_ok(&r);
        /* PUBLISH QoS 1, topic "sensors/a", packet id 0x1234, two properties (content
         * type "t", user property kuimen-relay = "c"), payload "hello". */
        static const uint8_t pub[] = { 0x32, 0x29, 0x00, 0x09, 's', 'e', 'n', 's', 'o', 'r', 's', '/', 'a', 0x12, 0x34,
                                       0x16, 0x03, 0x00, 0x01, 't', 0x26, 0x00, 0x0C, 'k', 'u', 'i', 'm', 'e', 'n',
                                       '-', 'r', 'e', 'l', 'a', 'y', 0x00, 0x01, 'c', 'h', 'e', 'l', 'l', 'o' };
        send_bytes(&r, pub, sizeof(pub), true);
        cr_assert_eq(r.seen.messages, 1);
        cr_assert_str_eq(r.seen.topic, "sensors/a");
        cr_assert_eq(r.seen.len, 5);
        cr_assert_eq(memcmp(r.seen.payload, "hello", 5), 0);
        cr_assert_str_eq(r.seen.relay, "c", "user property found past another property");
        static const uint8_t puback[] = { 0x40, 0x02, 0x12, 0x34 };
        read_at_least(&r, sizeof(puback));
        cr_assert_eq(memcmp(r.in, puback, sizeof(puback)), 0, "PUBACK bytes differ");
        cr_assert_eq(r.seen.lost, 0);
        rig_down(&r);
}

Test(mqttc, malformed_length_drops_the_connection)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect(&r);
        connack_ok(&r);
        static const uint8_t bad[] = { 0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01 };
        send_bytes(&r, bad, sizeof(bad), false);
        cr_assert_eq(r.seen.lost, 1);
        cr_assert_str_eq(r.seen.why, "malformed packet length from the broker");
        cr_assert_eq(r.seen.messages, 0);
        rig_down(&r);
}

Test(mqttc, unknown_property_is_a_protocol_error)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect(&r);
        connack_ok(&r);
        /* Property 0x7F does not exist: the packet cannot be parsed past it. */
        static const uint8_t pub[] = { 0x30, 0x07, 0x00, 0x01, 'x', 0x02, 0x7F, 0x00, 'p' };
        send_bytes(&r, pub, sizeof(pub), false);
        cr_assert_eq(r.seen.messages, 0);
        cr_assert_eq(r.seen.lost, 1);
        cr_assert_str_eq(r.seen.why, "protocol error in a packet of type 3 from the broker");
        rig_down(&r);
}

Test(mqttc, refused_will_is_left_out_on_the_next_connect)
{
        struct rig r;
        rig_up(&r, "kuimen/n/status");
        uint8_t flags = read_connect(&r);
        cr_assert_eq(flags & 0x3C, 0x2C, "will, QoS 1, retained: flags 0x%02x", flags);
        static const uint8_t refuse[] = { 0x20, 0x03, 0x00, 0x87, 0x00 };
        send_bytes(&r, refuse, sizeof(refuse), false);
        cr_assert_eq(r.seen.failed, 1);
        cr_assert_str_eq(r.seen.why, "refused: not authorized");
        close(r.fd);
        r.fd = -1;
        r.nin = 0;
        accept_client(&r); /* the retry comes after 1 s */
        flags = read_connect(&r);
        cr_assert_eq(flags & 0x3C, 0x00, "no will the second time: flags 0x%02x", flags);
        rig_down(&r);
}

Test(mqttc, puback_refusal_reaches_the_owner)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect(&r);
        connack_ok(&r);
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "x", 1, false, "north", 42, NULL, 7), 0);
        /* PUBLISH QoS 1 "a/b" id 2 (1 went to the SUBSCRIBE), properties: kuimen-origin=north, kuimen-id=42. */
        static const uint8_t want[] = { 0x32, 0x30, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x02, 0x27, 0x26, 0x00, 0x0D,
                                        'k', 'u', 'i', 'm', 'e', 'n', '-', 'o', 'r', 'i', 'g', 'i', 'n', 0x00, 0x05,
                                        'n', 'o', 'r', 't', 'h', 0x26, 0x00, 0x09, 'k', 'u', 'i', 'm', 'e', 'n', '-',
                                        'i', 'd', 0x00, 0x02, '4', '2', 'x' };
        read_at_least(&r, sizeof(want));
        cr_assert_eq(memcmp(r.in, want, sizeof(want)), 0, "PUBLISH bytes differ");
        static const uint8_t refuse[] = { 0x40, 0x04, 0x00, 0x02, 0x87, 0x00 };
        send_bytes(&r, refuse, sizeof(refuse), false);
        cr_assert_eq(r.seen.refused, 1);
        cr_assert_eq(r.seen.refused_reason, 0x87);
        cr_assert_str_eq(r.seen.why, "publish refused (not authorized)");
        cr_assert_eq(r.seen.acked, 0);
        cr_assert_eq(r.seen.lost, 0, "a refusal the owner dropped keeps the connection");
        rig_down(&r);
}

/* The broker's CONNACK says Maximum Packet Size 50 and Receive Maximum 2 (the client's
 * window is 4): a PUBLISH of exactly 50 bytes goes, one of 51 is refused with -EMSGSIZE
 * and never written, and a third in flight waits (-EAGAIN) until a PUBACK. */
Test(mqttc, connack_limits_are_kept)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect(&r);
        static const uint8_t ack[] = { 0x20, 0x0B, 0x00, 0x00, 0x08, 0x27, 0x00, 0x00, 0x00, 0x32, 0x21, 0x00, 0x02 };
        send_bytes(&r, ack, sizeof(ack), false);
        cr_assert_eq(r.seen.up, 1);
        cr_assert_eq(km_mqttc_max_packet(r.c), 50);
        read_at_least(&r, 17); /* the SUBSCRIBE, as in connack_ok */
        r.nin -= 17;
        memmove(r.in, r.in + 17, r.nin);
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "xy", 2, false, "north", 42, NULL, 7), -EMSGSIZE, "51 bytes");
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "x", 1, false, "north", 42, NULL, 7), 0, "50 bytes");
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "y", 1, false, "north", 43, NULL, 8), 0);
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "z", 1, false, "north", 44, NULL, 9), -EAGAIN, "Receive Maximum 2");
        read_at_least(&r, 100);
        for (int i = 0; i < 10; i++)
                turn(&r, 5);
        cr_assert_eq(read(r.fd, r.in + r.nin, sizeof(r.in) - r.nin), -1, "nothing more was written");
        cr_assert_eq(r.in[0], 0x32);
        cr_assert_eq(r.in[1], 0x30, "the first PUBLISH is 50 bytes");
        static const uint8_t puback[] = { 0x40, 0x02, 0x00, 0x02 };
        send_bytes(&r, puback, sizeof(puback), false);
        cr_assert_eq(r.seen.acked, 1);
        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "z", 1, false, "north", 44, NULL, 9), 0, "room again");
        cr_assert_eq(r.seen.lost, 0);
        rig_down(&r);
}

/* A broker whose Maximum Packet Size is below one SUBSCRIBE of every filter gets them
 * in several; a filter that cannot fit alone is left out (logged), never sent. */
Test(mqttc, subscribe_is_split_to_fit)
{
        struct rig r;
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t al = sizeof(a);
        char uri[64];
        memset(&r, 0, sizeof(r));
        r.fd = -1;
        km_log_max_level = KM_LOG_ERR - 1;
        r.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        cr_assert(r.lfd >= 0 && bind(r.lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(r.lfd, 4) == 0);
        getsockname(r.lfd, (struct sockaddr *)&a, &al);
        snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", ntohs(a.sin_port));
        /* Each alone: 2 + 1 + 2 + 9 + 1 = 15 of remaining length, 17 bytes; two: 29. */
        static const char *const filters[] = { "sensors/#", "alerts/ab", "a-filter-far-too-long-to-fit/#" };
        struct km_mqttc_opts o = { .uri = uri, .client_id = "t", .role = "test", .keepalive_s = 30, .window = 4,
                                   .receive_max = 8, .filters = filters, .nfilters = 3 };
        struct km_mqttc_cb cb = { .up = s_up, .lost = s_lost, .failed_connect = s_failed, .message = s_message,
                                  .acked = s_acked, .refused = s_refused, .ud = &r.seen };
        cr_assert_eq(sd_event_new(&r.ev), 0);
        cr_assert_eq(km_mqttc_new(&r.c, r.ev, &o, &cb), 0);
        accept_client(&r);
        read_connect(&r);
        static const uint8_t ack[] = { 0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00, 0x00, 0x1C }; /* max 28 */
        send_bytes(&r, ack, sizeof(ack), false);
        cr_assert_eq(r.seen.up, 1);
        static const uint8_t sub1[] = { 0x82, 0x0F, 0x00, 0x01, 0x00, 0x00, 0x09, 's', 'e', 'n', 's', 'o', 'r', 's', '/', '#', 0x15 };
        static const uint8_t sub2[] = { 0x82, 0x0F, 0x00, 0x02, 0x00, 0x00, 0x09, 'a', 'l', 'e', 'r', 't', 's', '/', 'a', 'b', 0x15 };
        read_at_least(&r, sizeof(sub1) + sizeof(sub2));
        for (int i = 0; i < 10; i++)
                turn(&r, 5);
        cr_assert_eq(read(r.fd, r.in + r.nin, sizeof(r.in) - r.nin), -1, "the long filter was not sent");
        cr_assert_eq(r.nin, sizeof(sub1) + sizeof(sub2));
        cr_assert_eq(memcmp(r.in, sub1, sizeof(sub1)), 0);
        cr_assert_eq(memcmp(r.in + sizeof(sub1), sub2, sizeof(sub2)), 0);
        cr_assert_eq(r.seen.lost, 0);
        rig_down(&r);
}

/* ---- MQTT 3.1.1 ------------------------------------------------------------------- */

/* protocol = 3.1.1: CONNECT level 4 without properties (Clean Session 0 for a session
 * with an expiry), CONNACK of 2 bytes, SUBSCRIBE without properties or v5 options,
 * PUBLISH with origin and id in the envelope, PUBLISH in and PUBACK out without
 * properties, SUBACK without properties; a stop with a will sends no DISCONNECT. */
Test(mqttc, v311_bytes_out_and_in)
{
        struct rig r;
        rig_up_v(&r, NULL, KM_MQTT_V311);
        read_at_least(&r, 15);
        static const uint8_t connect[] = { 0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x00, 0x00, 0x1E, 0x00, 0x01, 't' };
        cr_assert_eq(r.nin, sizeof(connect));
        cr_assert_eq(memcmp(r.in, connect, sizeof(connect)), 0, "CONNECT bytes differ");
        r.nin = 0;
        cr_assert_eq(km_mqttc_version(r.c), 4);
        static const uint8_t ack[] = { 0x20, 0x02, 0x00, 0x00 };
        send_bytes(&r, ack, sizeof(ack), true);
        cr_assert_eq(r.seen.up, 1);
        static const uint8_t sub[] = { 0x82, 0x0E, 0x00, 0x01, 0x00, 0x09, 's', 'e', 'n', 's', 'o', 'r', 's', '/', '#', 0x01 };
        read_at_least(&r, sizeof(sub));
        cr_assert_eq(memcmp(r.in, sub, sizeof(sub)), 0, "SUBSCRIBE bytes differ");
        r.nin = 0;
        static const uint8_t suback[] = { 0x90, 0x03, 0x00, 0x01, 0x01 };
        send_bytes(&r, suback, sizeof(suback), true);
        cr_assert_eq(r.seen.lost, 0, "a 3.1.1 SUBACK is no protocol error");

        cr_assert_eq(km_mqttc_publish(r.c, "a/b", "x", 1, false, "no\"rth", 42, "cen\\ter", 7), 0);
        const char env[] = "{\"kuimen-origin\":\"no\\\"rth\",\"kuimen-id\":\"42\",\"kuimen-relay\":\"cen\\\\ter\"}\n";
        uint8_t want[128];
        size_t el = sizeof(env) - 1, n = 0;
        want[n++] = 0x32;
        want[n++] = (uint8_t)(2 + 3 + 2 + el + 1);
        memcpy(want + n, "\0\3a/b\0\2", 7);
        n += 7;
        memcpy(want + n, env, el);
        n += el;
        want[n++] = 'x';
        read_at_least(&r, n);
        cr_assert_eq(r.nin, n);
        cr_assert_eq(memcmp(r.in, want, n), 0, "PUBLISH bytes differ: %.*s", (int)r.nin, r.in);
        r.nin = 0;
        static const uint8_t puback[] = { 0x40, 0x02, 0x00, 0x02 };
        send_bytes(&r, puback, sizeof(puback), false);
        cr_assert_eq(r.seen.acked, 1);

        /* PUBLISH QoS 1 "sensors/a" id 0x1234, no property length, payload "hi". */
        static const uint8_t pub[] = { 0x32, 0x0F, 0x00, 0x09, 's', 'e', 'n', 's', 'o', 'r', 's', '/', 'a', 0x12, 0x34, 'h', 'i' };
        send_bytes(&r, pub, sizeof(pub), true);
        cr_assert_eq(r.seen.messages, 1);
        cr_assert_str_eq(r.seen.topic, "sensors/a");
        cr_assert_eq(r.seen.len, 2);
        cr_assert_eq(memcmp(r.seen.payload, "hi", 2), 0, "the whole rest is the payload");
        static const uint8_t ours[] = { 0x40, 0x02, 0x12, 0x34 };
        read_at_least(&r, sizeof(ours));
        cr_assert_eq(memcmp(r.in, ours, sizeof(ours)), 0, "PUBACK bytes differ");
        r.nin = 0;
        km_mqttc_stop(r.c);
        static const uint8_t disc[] = { 0xE0, 0x00 };
        read_at_least(&r, sizeof(disc));
        cr_assert_eq(memcmp(r.in, disc, sizeof(disc)), 0, "DISCONNECT without a reason code");
        cr_assert_eq(r.seen.lost, 0);
        rig_down(&r);

        /* With a will: 3.1.1's DISCONNECT would discard it; the close alone. */
        rig_up_v(&r, "kuimen/n/status", KM_MQTT_V311);
        uint8_t flags = read_connect_level(&r, 4);
        cr_assert_eq(flags, 0x2C, "will, QoS 1, retained, Clean Session 0: flags 0x%02x", flags);
        send_bytes(&r, ack, sizeof(ack), false);
        cr_assert_eq(r.seen.up, 1);
        read_at_least(&r, sizeof(sub));
        r.nin = 0;
        km_mqttc_stop(r.c);
        /* The close reaches this end late on a loaded machine (send_bytes says why). */
        struct pollfd pf = { r.fd, POLLIN, 0 };
        cr_assert_eq(poll(&pf, 1, 2000), 1, "the close did not come");
        cr_assert_eq(read(r.fd, r.in, sizeof(r.in)), 0, "closed without a DISCONNECT");
        rig_down(&r);
}

/* auto: a 3.1.1 CONNACK with return code 1 to our MQTT 5 CONNECT; the next attempt (at
 * once) is 3.1.1, and once it was accepted every later one is too. */
Test(mqttc, auto_falls_back_on_connack_rc1_and_keeps_it)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect_level(&r, 5);
        static const uint8_t rc1[] = { 0x20, 0x02, 0x00, 0x01 };
        send_bytes(&r, rc1, sizeof(rc1), false);
        cr_assert_eq(r.seen.failed, 1);
        cr_assert_str_eq(r.seen.why, "the broker refuses MQTT 5 (CONNACK return code 1, unacceptable protocol version): "
                                     "trying MQTT 3.1.1");
        reconnect(&r);
        read_connect_level(&r, 4);
        static const uint8_t ack[] = { 0x20, 0x02, 0x00, 0x00 };
        send_bytes(&r, ack, sizeof(ack), false);
        cr_assert_eq(r.seen.up, 1);
        cr_assert_eq(km_mqttc_version(r.c), 4);
        reconnect(&r);
        cr_assert_eq(r.seen.lost, 1);
        read_connect_level(&r, 4); /* learnt: no second try of 5 */
        rig_down(&r);
}

/* auto: the broker closes the socket after our CONNECT without a CONNACK (RabbitMQ
 * 3.10); 3.1.1 next. A 3.1.1 attempt that fails too does not stick: 5 again after. */
Test(mqttc, auto_falls_back_on_a_close_without_connack)
{
        struct rig r;
        rig_up(&r, NULL);
        read_connect_level(&r, 5);
        reconnect(&r);
        cr_assert_eq(r.seen.failed, 1);
        cr_assert_str_eq(r.seen.why, "the broker refuses MQTT 5 (it closed the connection without a CONNACK): "
                                     "trying MQTT 3.1.1");
        read_connect_level(&r, 4);
        static const uint8_t bad_user[] = { 0x20, 0x02, 0x00, 0x04 };
        send_bytes(&r, bad_user, sizeof(bad_user), false);
        cr_assert_eq(r.seen.failed, 2);
        cr_assert_str_eq(r.seen.why, "refused: bad user name or password", "a 3.1.1 return code as its v5 reason");
        reconnect(&r); /* after the 1 s back-off */
        read_connect_level(&r, 5);
        rig_down(&r);
}

/* protocol = 5: a refusal of 5 is said, with what to do, and 5 is tried again. */
Test(mqttc, v5_only_says_why_and_stays_on_5)
{
        struct rig r;
        rig_up_v(&r, NULL, KM_MQTT_V5);
        read_connect_level(&r, 5);
        static const uint8_t refuse[] = { 0x20, 0x03, 0x00, 0x84, 0x00 };
        send_bytes(&r, refuse, sizeof(refuse), false);
        cr_assert_eq(r.seen.failed, 1);
        cr_assert_str_eq(r.seen.why, "the broker refuses MQTT 5 (CONNACK unsupported protocol version): "
                                     "set protocol = auto or 3.1.1");
        reconnect(&r);
        read_connect_level(&r, 5);
        rig_down(&r);
}

/* A 3.1.1 CONNACK longer than 2 bytes, or with flags or a code 3.1.1 does not have, is
 * a protocol error; so is a PUBLISH too short for its packet id. */
Test(mqttc, v311_malformed_packets_drop_the_connection)
{
        struct rig r;
        rig_up_v(&r, NULL, KM_MQTT_V311);
        read_connect_level(&r, 4);
        static const uint8_t long_ack[] = { 0x20, 0x03, 0x00, 0x00, 0x00 };
        send_bytes(&r, long_ack, sizeof(long_ack), false);
        cr_assert_eq(r.seen.failed, 1);
        cr_assert_str_eq(r.seen.why, "protocol error in a packet of type 2 from the broker");
        reconnect(&r);
        read_connect_level(&r, 4);
        static const uint8_t code6[] = { 0x20, 0x02, 0x00, 0x06 };
        send_bytes(&r, code6, sizeof(code6), false);
        cr_assert_eq(r.seen.failed, 2);
        reconnect(&r);
        read_connect_level(&r, 4);
        static const uint8_t ack[] = { 0x20, 0x02, 0x01, 0x00 };
        send_bytes(&r, ack, sizeof(ack), false);
        cr_assert_eq(r.seen.up, 1, "session present is a 3.1.1 flag");
        static const uint8_t pub[] = { 0x32, 0x04, 0x00, 0x01, 'x', 0x00 };
        send_bytes(&r, pub, sizeof(pub), false);
        cr_assert_eq(r.seen.messages, 0);
        cr_assert_eq(r.seen.lost, 1);
        rig_down(&r);
}

/* The envelope as written and as read: escapes, the relay, and what is not one. */
Test(mqttc, envelope_round_trip)
{
        char buf[256];
        struct km_mqtt_meta_in m;
        size_t n = km_mqtt_envelope(buf, sizeof(buf), "north", 18446744073709551615ULL, NULL);
        const char want[] = "{\"kuimen-origin\":\"north\",\"kuimen-id\":\"18446744073709551615\"}\n";
        cr_assert_eq(n, sizeof(want) - 1);
        cr_assert_eq(memcmp(buf, want, n), 0);
        cr_assert_eq(km_mqtt_envelope(NULL, 0, "north", 18446744073709551615ULL, NULL), n, "the length alone");
        memcpy(buf + n, "payload", 7);
        cr_assert_eq(km_mqtt_envelope_parse(buf, n + 7, &m), n);
        cr_assert_str_eq(m.origin, "north");
        cr_assert_eq(m.id, 18446744073709551615ULL, "64-bit ids exact (a string: JSON numbers stop at 2^53)");
        cr_assert_str_eq(m.relay, "");

        n = km_mqtt_envelope(buf, sizeof(buf), "a\"b\\c", 7, "county");
        cr_assert_eq(km_mqtt_envelope_parse(buf, n, &m), n);
        cr_assert_str_eq(m.origin, "a\"b\\c");
        cr_assert_str_eq(m.relay, "county");
        cr_assert_eq(m.id, 7);
        for (size_t cut = 0; cut < n; cut++)
                cr_assert_eq(km_mqtt_envelope_parse(buf, cut, &m), 0, "cut at %zu", cut);

        static const char *const not_one[] = {
                "{\"state\":\"online\"}\n",
                "{\"kuimen-origin\":\"n\",\"kuimen-id\":\"x1\"}\n",
                "{\"kuimen-origin\":\"n\",\"kuimen-id\":\"99999999999999999999\"}\n",
                "{\"kuimen-origin\":\"n\",\"kuimen-id\":\"1\"}",
                "{\"kuimen-origin\":\"\",\"kuimen-id\":\"1\"}\n",
                "{\"kuimen-origin\":\"n\\x\",\"kuimen-id\":\"1\"}\n",
                "{\"kuimen-origin\":\"n\",\"kuimen-id\":\"1\",\"other\":\"z\"}\n",
                "{ \"kuimen-origin\":\"n\",\"kuimen-id\":\"1\"}\n",
        };
        for (size_t i = 0; i < sizeof(not_one) / sizeof(not_one[0]); i++)
                cr_assert_eq(km_mqtt_envelope_parse(not_one[i], strlen(not_one[i]), &m), 0, "%s", not_one[i]);
}

/* The key uri as a list: commas, blanks around each entry dropped, no empty entry. */
Test(mqttc, uri_list_is_split_on_commas)
{
        char **v;
        size_t n;
        cr_assert_eq(km_mqtt_uri_list(" tcp://a:1883 ,tcp://b:1884,\ttcp://[::1]:1885 ", &v, &n), 0);
        cr_assert_eq(n, 3);
        cr_assert_str_eq(v[0], "tcp://a:1883");
        cr_assert_str_eq(v[1], "tcp://b:1884");
        cr_assert_str_eq(v[2], "tcp://[::1]:1885");
        km_mqtt_uri_list_free(v, n);
        cr_assert_eq(km_mqtt_uri_list("tcp://a:1883", &v, &n), 0);
        cr_assert(n == 1 && strcmp(v[0], "tcp://a:1883") == 0);
        km_mqtt_uri_list_free(v, n);
        const char *bad[] = { "", " ", "tcp://a:1,,tcp://b:2", "tcp://a:1,", ",tcp://a:1", "tcp://a:1, ,tcp://b:2" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                cr_assert_eq(km_mqtt_uri_list(bad[i], &v, &n), -EINVAL, "'%s' has an empty entry", bad[i]);
                cr_assert(v == NULL && n == 0);
        }
}

/* ---- TLS, against a real mosquitto ------------------------------------------------- */

/* A mosquitto with a TLS listener (server certificate server, a client certificate
 * required: h_broker_start_tls) and a plain one for the test's own publisher. */
struct tls_rig {
        char dir[200];
        struct h_broker b;
        int tls_port;
        sd_event *ev;
        struct km_mqttc *c;
        struct seen seen;
};

static void tls_rig_up(struct tls_rig *t, const char *tag, const char *server)
{
        memset(t, 0, sizeof(*t));
        km_log_max_level = KM_LOG_ERR - 1;
        h_tmpdir(t->dir, sizeof(t->dir), tag);
        h_make_certs(t->dir);
        h_broker_start_tls(&t->b, t->dir, 0, server, NULL, &t->tls_port);
        cr_assert_eq(sd_event_new(&t->ev), 0);
}

/* A client of the TLS listener trusting dir/<ca>.crt, with the client certificate
 * "client" (CN north) unless cert is false, subscribed to t/#. */
static void tls_client(struct tls_rig *t, const char *ca, bool cert, bool verify_hostname)
{
        char uri[64], caf[300], crt[300], key[300];
        static const char *const filters[] = { "t/#" };
        snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%d", t->tls_port);
        snprintf(caf, sizeof(caf), "%s/%s.crt", t->dir, ca);
        snprintf(crt, sizeof(crt), "%s/client.crt", t->dir);
        snprintf(key, sizeof(key), "%s/client.key", t->dir);
        struct km_mqttc_opts o = { .uri = uri, .client_id = "tls-unit", .role = "test", .keepalive_s = 30,
                                   .window = 8, .receive_max = 16, .filters = filters, .nfilters = 1,
                                   .clean_start = true, .version = KM_MQTT_V5, .ca = caf,
                                   .cert = cert ? crt : NULL, .key = cert ? key : NULL,
                                   .verify_hostname = verify_hostname };
        struct km_mqttc_cb cb = { .up = s_up, .lost = s_lost, .failed_connect = s_failed, .message = s_message,
                                  .acked = s_acked, .refused = s_refused, .ud = &t->seen };
        memset(&t->seen, 0, sizeof(t->seen));
        cr_assert_eq(km_mqttc_new(&t->c, t->ev, &o, &cb), 0);
}

/* Runs the loop until *counter reaches want or ms pass; returns *counter. */
static int tls_wait(struct tls_rig *t, const int *counter, int want, int ms)
{
        int64_t until = h_now_ms() + ms;
        while (*counter < want && h_now_ms() < until)
                sd_event_run(t->ev, 10000);
        return *counter;
}

static void tls_rig_down(struct tls_rig *t)
{
        km_mqttc_free(t->c);
        sd_event_unref(t->ev);
        h_stop(&t->b.p, SIGTERM);
        h_cleanup(t->dir);
}

Test(mqttc, tls_handshake_publish_and_receive)
{
        struct tls_rig t;
        tls_rig_up(&t, "mqttc-tls", "server");
        tls_client(&t, "ca", true, true);
        cr_assert_eq(tls_wait(&t, &t.seen.up, 1, 5000), 1, "no TLS connection: %s", t.seen.why);
        /* Out: QoS 1 publishes acknowledged over TLS. */
        for (uint32_t i = 0; i < 5; i++)
                cr_assert_eq(km_mqttc_publish(t.c, "u/x", "hello", 5, false, NULL, 0, NULL, i), 0);
        cr_assert_eq(tls_wait(&t, &t.seen.acked, 5, 5000), 5);
        /* In (the SUBACK went before the publishes' PUBACKs came back). */
        cr_assert_eq(h_mosquitto_pub(t.b.port, "t/in", "hi"), 0);
        cr_assert_eq(tls_wait(&t, &t.seen.messages, 1, 5000), 1);
        cr_assert_str_eq(t.seen.topic, "t/in");
        cr_assert_eq(t.seen.whole, 2);
        cr_assert_eq(memcmp(t.seen.payload, "hi", 2), 0);
        cr_assert_eq(t.seen.lost + t.seen.failed, 0, "%s", t.seen.why);
        /* The broker saw the client certificate: its CN is the user name. */
        cr_assert_eq(h_log_count(&t.b.p, "as tls-unit (p5, c1, k30, u'north')"), 1, "broker log %s", t.b.p.log);
        tls_rig_down(&t);
}

Test(mqttc, tls_large_message_arrives_whole)
{
        struct tls_rig t;
        tls_rig_up(&t, "mqttc-tlsbig", "server");
        tls_client(&t, "ca", true, true);
        cr_assert_eq(tls_wait(&t, &t.seen.up, 1, 5000), 1, "no TLS connection: %s", t.seen.why);
        sd_event_run(t.ev, 200000); /* the SUBACK */
        static char big[100001];
        memset(big, 'x', sizeof(big) - 1);
        big[0] = 'B';
        cr_assert_eq(h_mosquitto_pub(t.b.port, "t/in", big), 0);
        cr_assert_eq(tls_wait(&t, &t.seen.messages, 1, 5000), 1);
        cr_assert_str_eq(t.seen.topic, "t/in");
        cr_assert_eq(t.seen.whole, sizeof(big) - 1);
        cr_assert_eq(t.seen.payload[0], 'B');
        tls_rig_down(&t);
}

/* A connection that must fail with why, never up; the rig stays up (t->c is the client). */
static void tls_refused(struct tls_rig *t, const char *why)
{
        cr_assert_eq(tls_wait(t, &t->seen.failed, 1, 5000), 1);
        cr_assert_str_eq(t->seen.why, why);
        cr_assert_eq(t->seen.up, 0);
}

Test(mqttc, tls_wrong_ca_is_refused_with_the_verify_error)
{
        struct tls_rig t;
        tls_rig_up(&t, "mqttc-tlsca", "server");
        tls_client(&t, "rogue-ca", true, true);
        /* mosquitto sends its CA with its certificate: the chain ends in a CA not ours. */
        tls_refused(&t, "TLS handshake: certificate verify failed: self-signed certificate in certificate chain");
        tls_rig_down(&t);
}

/* The broker's certificate is for other.example: refused at 127.0.0.1 when the name is
 * checked (an address: OpenSSL's "IP address mismatch"), taken when it is not. */
Test(mqttc, tls_hostname_mismatch_refused_unless_verify_hostname_off)
{
        struct tls_rig t;
        tls_rig_up(&t, "mqttc-tlsname", "other");
        tls_client(&t, "ca", true, true);
        tls_refused(&t, "TLS handshake: certificate verify failed: IP address mismatch");
        km_mqttc_free(t.c);
        tls_client(&t, "ca", true, false);
        cr_assert_eq(tls_wait(&t, &t.seen.up, 1, 5000), 1, "verify_hostname off: %s", t.seen.why);
        tls_rig_down(&t);
}

/* A broker that requires a client certificate refuses a client without one; over TLS
 * 1.3 it says so after the client's handshake is done, at the first read. */
Test(mqttc, tls_missing_client_certificate_is_refused)
{
        struct tls_rig t;
        tls_rig_up(&t, "mqttc-tlsnocert", "server");
        tls_client(&t, "ca", false, true);
        tls_refused(&t, "TLS read: tlsv13 alert certificate required");
        tls_rig_down(&t);
}

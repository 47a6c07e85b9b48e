/* SPDX-License-Identifier: MIT */
/* A small MQTT v5 client on the daemon's event loop: QoS 1 in and out, acknowledged when the owner says. */
#ifndef KM_MQTTC_H
#define KM_MQTTC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

struct km_mqttc;

/* Which MQTT a connection speaks (key protocol of [local] and of a [link NAME] of type
 * mqtt); the values are the protocol level its CONNECT carries. auto: 5, and from the
 * broker's first refusal of 5 on, 3.1.1 for that connection until kuimen restarts. */
enum km_mqtt_version { KM_MQTT_AUTO = 0, KM_MQTT_V311 = 4, KM_MQTT_V5 = 5 };

/* How kuimen-origin, kuimen-id and kuimen-relay travel on a 3.1.1 connection, which
 * has no user properties (key v311_meta): in an envelope before the payload
 * (docs/topics.md), or not at all. */
enum km_mqtt_meta { KM_META_ENVELOPE = 0, KM_META_NONE = 1 };

/* How the reason of a connect that failed because the broker refuses MQTT 5 begins:
 * the link shows it as its reason (with protocol = 5 it is the operator's to fix). */
#define KM_MQTT_REFUSES_V5 "the broker refuses MQTT 5"

struct km_mqttc_opts {
        const char *uri; /* tcp://, mqtt://, ssl:// or mqtts://host[:port], or a list of them
                          * (km_mqtt_uri_list): on a failed connect or a lost connection the next; a
                          * name is resolved on the loop */
        /* TLS (ssl://, mqtts://), as the keys of a [link NAME] say: the CA file (PEM; NULL: the
         * system's store, /etc/ssl/certs), the client certificate and its key (NULL: none),
         * and whether the broker's name (or IP address) must match its certificate. */
        const char *ca, *cert, *key;
        bool verify_hostname;
        const char *client_id, *username, *password;
        const char *role; /* in log lines: "ingest", "up" */
        bool clean_start;
        uint32_t session_expiry_s; /* with clean_start off: how long the broker keeps the session */
        unsigned keepalive_s;
        unsigned window;      /* our QoS 1 publishes in flight at most (and the broker's Receive Maximum) */
        unsigned receive_max; /* inbound QoS 1 messages the broker may have unacknowledged with us */
        const char *will_topic, *will_msg; /* NULL: no will; else retained, QoS 1 */
        const char *const *filters;        /* subscribed at QoS 1 (no local, retained only when new) */
        size_t nfilters;
        int version;   /* enum km_mqtt_version */
        int v311_meta; /* enum km_mqtt_meta: what a publish with origin carries on 3.1.1 */
};

/* What the client tells its owner, on the loop thread; strings only valid during the
 * call. up: CONNACK accepted (the subscriptions are sent with it); lost: an
 * established connection ended; failed_connect: an attempt did not reach CONNACK (on
 * TLS a failed handshake too, why saying OpenSSL's reason: "TLS handshake: certificate
 * verify failed: hostname mismatch"). The
 * client connects again by itself after 1 to 5 s either way.
 * message: an inbound PUBLISH (topic NUL-terminated, payload not; props, plen: its
 * MQTT v5 property block, for km_mqttc_user_property; empty on 3.1.1). Return 0 once the
 * message is safe: its PUBACK then goes out, after settle. Any other value: no PUBACK,
 * and the connection is dropped so that the broker sends it again.
 * settle: called once after the messages of one read, before their PUBACKs are
 * written (the owner makes them safe there, in one write and one sync for all). A
 * negative return: no PUBACK for that read, and the connection is dropped so that the
 * broker sends them again. May be NULL.
 * acked and refused: the broker's PUBACK for a cookie (refused: reason code >= 0x80;
 * return true when the owner dropped the message for good, else the client drops the
 * connection and the owner replays). */
struct km_mqttc_cb {
        void (*up)(void *ud);
        void (*lost)(void *ud, const char *why);
        void (*failed_connect)(void *ud, const char *why);
        int (*message)(void *ud, const char *topic, const void *payload, size_t len, bool retain,
                       const void *props, size_t plen);
        int (*settle)(void *ud);
        void (*acked)(void *ud, uint32_t cookie);
        bool (*refused)(void *ud, uint32_t cookie, int reason, const char *why);
        /* Optional: false holds the next connect back (asked again each second). */
        bool (*may_connect)(void *ud);
        void *ud;
};

/* Creates the client and starts its first connect; o's strings are copied. */
int km_mqttc_new(struct km_mqttc **out, sd_event *ev, const struct km_mqttc_opts *o, const struct km_mqttc_cb *cb);

/* Publishes at QoS 1; with origin, adds the user properties kuimen-origin and kuimen-id,
 * and with relay also kuimen-relay (a center republishing what a narrow link brought);
 * on 3.1.1 the same in the envelope, unless v311_meta is none.
 * The bytes leave at the end of the loop iteration, together with the iteration's
 * other publishes. 0, or -ENOTCONN (not connected), -EAGAIN (window full), -EMSGSIZE
 * (larger than the broker takes), -ENOMEM. */
int km_mqttc_publish(struct km_mqttc *c, const char *topic, const void *payload, size_t len, bool retain,
                     const char *origin, uint64_t id, const char *relay, uint32_t cookie);

/* Whether the property block of a message (as the message callback got it) holds the
 * user property key; its value in *val, *vlen (not NUL-terminated) when they are not NULL. */
bool km_mqttc_user_property(const void *props, size_t plen, const char *key, const char **val, size_t *vlen);

/* The broker's Maximum Packet Size from the last CONNACK (0: none stated). Publishes
 * that would exceed it are refused with -EMSGSIZE, never sent. */
uint32_t km_mqttc_max_packet(const struct km_mqttc *c);

/* The protocol level of the connection, or of the attempt under way: 5 or 4 (3.1.1). */
int km_mqttc_version(const struct km_mqttc *c);

/* "5" or "3.1.1" for a protocol level (4 or 5), "" for anything else. */
const char *km_mqtt_version_name(int level);

/* The envelope a 3.1.1 publish carries before its payload when v311_meta is envelope:
 * {"kuimen-origin":"<origin>","kuimen-id":"<id>"} and a newline, with
 * ,"kuimen-relay":"<relay>" before the brace when relay is not NULL; '"' and '\\' in
 * the names are escaped as in JSON. Writes it to out when it fits cap; returns its
 * length either way (as snprintf, without a NUL). */
size_t km_mqtt_envelope(char *out, size_t cap, const char *origin, uint64_t id, const char *relay);

/* What an envelope says; origin and relay NUL-terminated, relay "" when absent. */
struct km_mqtt_meta_in {
        char origin[256], relay[256];
        uint64_t id;
};

/* Whether payload begins with an envelope (exactly the form km_mqtt_envelope writes):
 * its length in bytes (the message's own payload follows it), with what it says in m;
 * 0 when it does not. */
size_t km_mqtt_envelope_parse(const void *payload, size_t len, struct km_mqtt_meta_in *m);

/* Drops the connection now and connects again after the back-off. */
void km_mqttc_reset(struct km_mqttc *c);

/* Disconnects (reason "with will" when there is a will: a stop is an absence too), and
 * waits up to a second for the DISCONNECT to leave. No reconnect after this. */
void km_mqttc_stop(struct km_mqttc *c);

/* Stops and frees; NULL is a no-op. */
void km_mqttc_free(struct km_mqttc *c);

/* Splits "scheme://host[:port]" (host may be [v6]; tcp, mqtt, ssl, mqtts) into host
 * and port (default 1883, 8883 for TLS); *tls says whether the scheme wants TLS.
 * 0 or -EINVAL. Shared with the TLS uplink (uplink.c). */
int km_mqtt_uri_parse(const char *uri, char *host, size_t hostlen, int *port, bool *tls);

/* The key uri of an mqtt link (and of [local]) takes a list: URIs separated by commas,
 * blanks around each ignored ("tcp://a:1883, tcp://b:1883"). The list in *out (n
 * strings; km_mqtt_uri_list_free), not checked beyond that: -EINVAL for an empty
 * entry, -ENOMEM. */
int km_mqtt_uri_list(const char *list, char ***out, size_t *n);
void km_mqtt_uri_list_free(char **v, size_t n);

/* The URI in use (or being tried), its place in the list (from 0) and the list's length
 * when index and n are not NULL. */
const char *km_mqttc_uri(const struct km_mqttc *c, size_t *index, size_t *n);

/* For the fuzz target (tests/fuzz/fuzz_mqttc.c): handles bytes[0..len) (borrowed) as if
 * a read(2) of the connection had returned them, through the same code: packets,
 * callbacks, PUBACKs. The connection must be waiting for its CONNACK or up. 0, or
 * -ENOTCONN (no connection: it was never made or was dropped), -ENOMEM. */
int km_mqttc_feed(struct km_mqttc *c, const void *bytes, size_t len);

/* The reason code's name (MQTT v5), for log lines; a 3.1.1 CONNACK's return code is
 * mapped to its v5 equivalent first. */
const char *km_mqttc_reason(int rc);
/* "N bytes at most" for a CONNACK's Maximum Packet Size, "any size" for 0 (absent). */
const char *km_packet_limit(uint32_t max_packet, char *buf, size_t len);

#endif

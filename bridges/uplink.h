/* SPDX-License-Identifier: MIT */
/* Uplink: QoS 1 publishing to the center broker over libmosquitto, driven by the daemon's event loop. */
#ifndef KM_UPLINK_H
#define KM_UPLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

struct km_uplink;

struct km_uplink_opts {
        const char *uri; /* tcp://, mqtt://, ssl:// or mqtts://host[:port], or a list of them
                          * (km_mqtt_uri_list): the next on a failed connect or a loss */
        const char *client_id, *username, *password;
        const char *ca, *cert, *key; /* TLS (PEM files); ca NULL: the system's CAs */
        bool verify_hostname;
        int keepalive_s;
        unsigned window;                    /* in flight at most (MQTT send maximum) */
        const char *will_topic, *will_msg;  /* NULL: no will */
        int version;   /* enum km_mqtt_version (bridges/mqttc.h) */
        int v311_meta; /* enum km_mqtt_meta: what a publish carries on 3.1.1 */
};

/* What the uplink tells its owner, on the loop thread. why is only valid during the
 * call. up: CONNACK accepted; lost: an established connection ended; failed_connect:
 * an attempt did not reach CONNACK (retried by the uplink after 1 to 5 s); acked and
 * refused: the center's PUBACK for a cookie (refused: a reason code >= 0x80; unless
 * the owner says it dropped the message for good, the uplink reconnects). */
struct km_uplink_cb {
        void (*up)(void *ud);
        void (*lost)(void *ud, const char *why);
        void (*failed_connect)(void *ud, const char *why);
        void (*acked)(void *ud, uint32_t cookie);
        bool (*refused)(void *ud, uint32_t cookie, int reason, const char *why); /* true: dropped, carry on */
        void *ud;
};

/* Creates the uplink and starts its first connect; o's strings are copied. */
int km_uplink_new(struct km_uplink **out, sd_event *ev, const struct km_uplink_opts *o, const struct km_uplink_cb *cb);

/* Publishes at QoS 1 with the user properties kuimen-origin and kuimen-id (on 3.1.1 in
 * the envelope, unless v311_meta is none). 0, or
 * -ENOTCONN (not connected), -EAGAIN (window, or the broker's Receive Maximum, full),
 * -ENOMEM, -EMSGSIZE (this message can never be sent to this broker: over its Maximum
 * Packet Size, or a topic it cannot take). */
int km_uplink_publish(struct km_uplink *u, const char *topic, const void *payload, size_t len, bool retain,
                      const char *origin, uint64_t id, uint32_t cookie);

/* The broker's Maximum Packet Size from the last CONNACK (0: none stated). */
uint32_t km_uplink_max_packet(const struct km_uplink *u);

/* The URI in use (or being tried), its place in the list and the list's length. */
const char *km_uplink_uri(const struct km_uplink *u, size_t *index, size_t *n);

/* The protocol level of the connection, or of the attempt under way: 5 or 4 (3.1.1). */
int km_uplink_version(const struct km_uplink *u);

/* Drops the connection now (a silent cut was seen) and connects again after the back-off. */
void km_uplink_reset(struct km_uplink *u);

/* Disconnects, asking the broker to send the will (a stop is an absence too), and waits
 * up to a second for the DISCONNECT to leave. No reconnect after this. */
void km_uplink_stop(struct km_uplink *u);

/* Stops and frees; NULL is a no-op. */
void km_uplink_free(struct km_uplink *u);

#endif

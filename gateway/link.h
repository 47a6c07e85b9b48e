/* SPDX-License-Identifier: MIT */
/* Link: one way out of the spool (the center over MQTT, later narrow links), its state and window. */
#ifndef KM_LINK_H
#define KM_LINK_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "msg.h"

/* DEGRADED (the driver says it carries, but badly) is UP for everything that sends; it
 * lives in km_link.degraded and shows in status topics, kuimenctl and the log. */
enum km_link_state { KM_LINK_DOWN, KM_LINK_DEGRADED, KM_LINK_UP };

struct km_link;

/* Keys every [link NAME] has, whatever its type (the type's own keys come beside). */
struct km_link_conf {
        char *type;
        long order;
        struct km_strv classes;
        int64_t ack_timeout_ms;
        int64_t hold_ms;
        long budget_bytes, budget_messages;
        int64_t budget_interval_ms;
        char *ack; /* "peer", "receipt" or "none": enum km_ack_mode, in km_link.ack_mode */
};

/* What releases a message from the spool on this link (key `ack`). */
enum km_ack_mode {
        KM_ACK_PEER,    /* the far end acknowledges it (MQTT PUBACK, a frame ack) */
        KM_ACK_RECEIPT, /* narrow links: the device's receipt for the frame carrying it */
        KM_ACK_NONE,    /* narrow links: handed to the device */
};

struct km_link_ops {
        /* Hands one message to the transport. cookie must come back through
         * km_link_acked (peer acknowledged) or km_link_failed. m is borrowed for the
         * call only. Returns 0, -EAGAIN when the transport takes no more now, or a
         * negative errno (the link then goes down). */
        int (*send)(struct km_link *l, const struct km_msg *m, uint32_t cookie);
        /* Frees the transport behind l->impl. */
        void (*destroy)(struct km_link *l);
        /* The host declared the link dead (no acknowledgements): drop the transport's
         * connection and start a fresh one. May be NULL. */
        void (*reset)(struct km_link *l);
        /* Whether l carries m at all (a center's narrow link: only the commands of the
         * bases it reaches). NULL: every message of the classes it may carry. */
        bool (*wants)(struct km_link *l, const struct km_msg *m);
};

struct km_link_slot {
        uint64_t id;
        int64_t taken_mono; /* for ack_ms */
        uint16_t gen;
        bool used;
};

struct km_link {
        char *name;
        int dir; /* enum km_dir it carries */
        long order;
        struct km_link_conf conf;
        const struct km_link_ops *ops;
        void *impl;
        /* Links of different groups never compete for a priority (a center's narrow
         * links to different bases each carry their own base's commands); NULL competes
         * with every link. Borrowed from impl. */
        const char *group;
        enum km_link_state state; /* never KM_LINK_DEGRADED: see degraded */
        bool degraded;            /* UP, and the driver says degraded */
        char reason[160];
        int64_t since_ms; /* unix ms of the last state change */

        /* The window: messages handed to the transport and not yet acknowledged. A
         * cookie is slot | gen << 16; gen changes whenever the link leaves UP, so a
         * late answer from a dead connection is recognised and ignored. */
        uint32_t window, inflight;
        uint32_t parked; /* of inflight, held back on purpose (a center's commands for a base
                            online over MQTT): a stop does not wait for them */
        uint16_t gen;
        struct km_link_slot *slots;
        uint32_t *free;
        uint32_t nfree;
        /* Per priority, the highest id handed out on this connection: everything at or
         * below it is in flight or gone; a new connection starts again from 0, which
         * replays the unacknowledged in order. */
        uint64_t cursor[KM_PRIO_COUNT];

        enum km_ack_mode ack_mode;
        uint64_t sent, acked, failed;
        /* Bytes this link put on its way: an MQTT link the message's topic and
         * payload when handed over, a narrow link every frame on the air (data,
         * retransmissions, acks, probes). */
        uint64_t bytes_sent;
        /* sent and bytes_sent when the status was last published (its interval). */
        uint64_t sent_mark, bytes_mark;
        int64_t mark_mono;
        int64_t ack_ms;        /* last hand-over to acknowledgement time, -1 none yet */
        int signal;            /* 0..100 from the driver, -1 unknown */
        double rate;           /* acknowledged messages a second, over the last second or so */
        uint64_t rate_acked;   /* acked when rate_mono was taken */
        int64_t rate_mono;
        int64_t up_since_mono; /* CLOCK_MONOTONIC ms it last became UP */
        int64_t progress_mono; /* last ack, or when the window last went from empty */
        uint64_t transitions;
        bool lost_once; /* it was UP and went down: hold applies from then on */
        int64_t budget_start; /* CLOCK_MONOTONIC ms the budget window began */
        bool budget_at_device; /* the transport spends the budget itself (narrow links:
                                  frames on the air); the scheduler does not count it */
        uint64_t budget_bytes_used, budget_msgs_used;
        /* The peer's limit on a packet (MQTT v5 Maximum Packet Size, from its CONNACK;
         * 0: none known), kept while the link is down (the next connection most likely
         * reaches the same broker), and what a packet costs beyond the message's topic
         * and payload on this transport (a bridged topic's prefix, user properties,
         * headers): km_link_room. Set by the transport. */
        uint32_t max_packet, packet_overhead;
        uint64_t set_aside; /* messages it could never carry, moved to the dead letters */
        /* An MQTT link's protocol level (5, or 4 for 3.1.1) of its connection (the
         * uplink; the local broker's for "local") and of its downlink; 0: not MQTT, or
         * none yet. Set by the transport on the loop thread. */
        uint8_t mqtt_version, mqtt_version_down;
        /* An MQTT link's URI in use (of its connection, or of the last attempt), its
         * place in the key uri's list (from 0) and the list's length; "" / 0: not MQTT. */
        char uri[256];
        uint16_t uri_index, nuris;
        /* Called on the loop thread after each state change. */
        void (*on_state)(struct km_link *l, void *ud);
        void *on_state_ud;
};

/* Prepares l (embedded) for a transport; window is the in-flight limit (1..65535). */
int km_link_init(struct km_link *l, const char *name, int dir, uint32_t window);

/* Reads the common keys of section into l->conf (errors land in c). */
int km_link_configure(struct km_link *l, struct km_conf *c, const char *section);
int km_link_check_common(struct km_conf *c, const char *section);
void km_link_print_help(FILE *out);

/* Loop thread, from the housekeeping timer. Declares an UP link dead when messages
 * are in flight and none was acknowledged for ack_timeout: a silent cut (no FIN, no
 * RST) is seen in seconds, not after 1.5 keepalives. */
void km_link_check(struct km_link *l, int64_t now_mono);

/* Whether the scheduler may use l now: UP, and UP for at least hold (so a flapping
 * link does not pull traffic back and forth). */
bool km_link_eligible(const struct km_link *l, int64_t now_mono);

/* Whether l may carry class cls (its classes list is empty, or names it). */
bool km_link_may_carry(const struct km_link *l, const char *cls);

int64_t km_mono_ms(void);
void km_link_deinit(struct km_link *l);

/* Loop thread. Sets the state and why; leaving UP forgets the window (the spool still
 * holds every unacknowledged message, to be replayed on the next UP). */
void km_link_set_state(struct km_link *l, enum km_link_state st, const char *reason);

/* Loop thread. Answers for a cookie: returns the message id the cookie stood for, or 0
 * when the cookie is stale (from an earlier connection) or unknown. */
uint64_t km_link_acked(struct km_link *l, uint32_t cookie);
void km_link_failed(struct km_link *l, uint32_t cookie, const char *why);

/* Takes a free slot for id; returns the cookie, or -EAGAIN when the window is full. */
int64_t km_link_take_slot(struct km_link *l, uint64_t id);

/* Gives back the slot of cookie after the transport refused it synchronously. */
void km_link_put_slot(struct km_link *l, uint32_t cookie);

/* The oldest message in l's window (lowest id; 0 when none), and when it was handed to
 * the transport (CLOCK_MONOTONIC ms) in *taken_mono and the newest (highest id) in
 * *last, each when not NULL. */
uint64_t km_link_head(const struct km_link *l, int64_t *taken_mono, uint64_t *last);

/* The largest payload a message on topic (of topic_len bytes) may have to fit l's peer
 * (SIZE_MAX when it states no limit). */
size_t km_link_room(const struct km_link *l, size_t topic_len);

const char *km_link_state_name(enum km_link_state st);

/* What operators see: "up", "degraded" or "down". */
const char *km_link_shown_state(const struct km_link *l);

#endif

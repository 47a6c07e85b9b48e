/* SPDX-License-Identifier: MIT */
/* MQTT bridge: ingest and local delivery, the links' downlink and TCP uplink (mqttc.c), their TLS uplink (uplink.c). */
#include "mqtt.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bridges/mqttc.h"
#include "bridges/position.h"
#include "bridges/uplink.h"
#include "gateway/calls.h"
#include "gateway/incidents.h"
#include "gateway/log.h"
#include "gateway/plugin.h"

/* Two MQTT client models, both on the loop thread: mqttc (mqttc.c) for the local broker
 * (ingest, commands out, the will), for every downlink from a center (tcp:// and
 * ssl://: a command is in the spool before its PUBACK leaves, and while the spool
 * cannot store the downlink does not connect) and for the uplink over TCP;
 * libmosquitto (uplink.c) for the uplink over TLS. */

struct mqtt_conf {
        char *uri, *client_id, *username, *password, *topic_prefix, *protocol, *v311_meta;
        char *ca, *cert, *key, *center_group;
        struct km_strv subscribe;
        bool verify_hostname, downlink;
        long window;
        int64_t keepalive_ms, session_expiry_ms;
};

static const char *const protocols[] = { "auto", "5", "3.1.1", NULL };
static const char *const metas[] = { "envelope", "none", NULL };

#define OFF(f) offsetof(struct mqtt_conf, f)
static const struct km_conf_key local_keys[] = {
        { "uri", KM_CONF_STRING, "tcp://127.0.0.1:1883", OFF(uri), "the local broker", 0, 0, NULL },
        { "subscribe", KM_CONF_LIST, "sensors/#, pos/#, alert/#, status/#", OFF(subscribe), "topic filters bridged upward (QoS 1)", 0, 0, NULL },
        { "client_id", KM_CONF_STRING, NULL, OFF(client_id), "MQTT client id (default kuimen-<node>)", 0, 0, NULL },
        { "username", KM_CONF_STRING, NULL, OFF(username), "user name at the local broker", 0, 0, NULL },
        { "password", KM_CONF_STRING, NULL, OFF(password), "password at the local broker", 0, 0, NULL },
        { "session_expiry", KM_CONF_DURATION, "1d", OFF(session_expiry_ms), "how long the broker keeps our session while kuimen is away", 0, 4294967295000.0, NULL },
        { "keepalive", KM_CONF_DURATION, "10s", OFF(keepalive_ms), "MQTT keepalive", 1000, 3600000, NULL },
        { "window", KM_CONF_INT, "64", OFF(window), "commands in flight to the local broker", 1, 65535, NULL },
        { "protocol", KM_CONF_STRING, "auto", OFF(protocol), "MQTT version: auto (5, and 3.1.1 once the broker refuses 5, until a restart), 5 or 3.1.1", 0, 0, protocols },
        { "v311_meta", KM_CONF_STRING, "envelope", OFF(v311_meta), "on MQTT 3.1.1 (no user properties), how a center's relayed messages carry kuimen-origin, -id and -relay: envelope (a JSON line before the payload, docs/topics.md) or none", 0, 0, metas },
        { "center_group", KM_CONF_STRING, NULL, OFF(center_group), "a center run as several processes (each its own node name): the name they share their bases' commands under, as the MQTT 5 shared subscription $share/<group>/<topic_prefix>/<base>/cmd/#, so that the broker hands each command to one of them (the broker must have shared subscriptions: Mosquitto 2 has, RabbitMQ 3.10 has not)", 0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

static const struct km_conf_key link_keys[] = {
        { "uri", KM_CONF_STRING, NULL, OFF(uri), "center broker: tcp://host:port or ssl://host:port, or a list of them separated by commas (the nodes of a cluster): the uplink and the downlink each move to the next on a failed connect or a lost connection and stay where they are connected", 0, 0, NULL },
        { "topic_prefix", KM_CONF_STRING, "kuimen", OFF(topic_prefix), "bridged topic = <topic_prefix>/<node>/<local topic>", 0, 0, NULL },
        { "client_id", KM_CONF_STRING, NULL, OFF(client_id), "MQTT client id stem (default kuimen-<node>-<link>; -up and -down are added)", 0, 0, NULL },
        { "username", KM_CONF_STRING, NULL, OFF(username), "user name at the center broker", 0, 0, NULL },
        { "password", KM_CONF_STRING, NULL, OFF(password), "password at the center broker", 0, 0, NULL },
        { "ca", KM_CONF_STRING, NULL, OFF(ca), "TLS: CA certificate file (PEM)", 0, 0, NULL },
        { "cert", KM_CONF_STRING, NULL, OFF(cert), "TLS: client certificate file (PEM)", 0, 0, NULL },
        { "key", KM_CONF_STRING, NULL, OFF(key), "TLS: client private key file (PEM)", 0, 0, NULL },
        { "verify_hostname", KM_CONF_BOOL, "yes", OFF(verify_hostname), "TLS: check the broker's name against its certificate", 0, 0, NULL },
        { "keepalive", KM_CONF_DURATION, "10s", OFF(keepalive_ms), "MQTT keepalive: a dead peer is seen after 1.5 of these (the uplink's at least 5 s)", 1000, 3600000, NULL },
        { "window", KM_CONF_INT, "256", OFF(window), "messages in flight awaiting PUBACK, at most the broker's receive maximum (Mosquitto's max_inflight_messages) whatever is set here", 1, 65535, NULL },
        { "downlink", KM_CONF_BOOL, "yes", OFF(downlink), "take commands from <topic_prefix>/<node>/cmd/#", 0, 0, NULL },
        { "session_expiry", KM_CONF_DURATION, "7d", OFF(session_expiry_ms), "how long the center keeps the downlink session", 0, 4294967295000.0, NULL },
        { "protocol", KM_CONF_STRING, "auto", OFF(protocol), "MQTT version of the uplink and downlink: auto (5, and 3.1.1 once the broker refuses 5, until a restart), 5 or 3.1.1", 0, 0, protocols },
        { "v311_meta", KM_CONF_STRING, "envelope", OFF(v311_meta), "on MQTT 3.1.1 (no user properties), how kuimen-origin and kuimen-id reach the center: envelope (a JSON line before the payload, docs/topics.md) or none (subscribers cannot drop duplicates)", 0, 0, metas },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

struct bridge {
        struct km_daemon *d;
        struct mqtt_conf conf;
        const struct km_conf_key *keys;
        struct km_link *link; /* owns this bridge */
        struct km_mqttc *mc;  /* local: ingest and command delivery; a link on tcp://: its uplink */
        struct km_mqttc *down; /* a link's downlink (tcp:// and ssl://) */
        struct km_strv down_filters; /* its subscription: <prefix>/<node>/cmd/# */
        char *down_prefix;    /* "<prefix>/<node>/" stripped from downlink topics */
        int64_t down_logged_ms; /* the last failed connect of the downlink logged (rate limit) */
        char down_why[160];     /* and its reason */
        bool local;
        struct km_positions *positions; /* local only: terminal positions to canonical form */
        char *topic_buf;
        size_t topic_cap;
        /* The will of lc and up: "offline" on <topic_prefix>/<node>/status, retained,
         * which the broker sends when kuimen dies (or stops). */
        char *will_topic, *will_msg;
        struct km_uplink *up; /* a link on ssl://: its uplink (libmosquitto) */
        /* A center's local bridge: the bases whose commands go down its narrow links,
         * and the filters that take them (<pfx>cmd/#, <pfx>status for each). */
        struct watch *watch;
        size_t nwatch;
        struct km_strv watch_filters;
        char *heard_pfx; /* a center: "<topic_prefix>/", under which bases' incident/<id> are heard */
        /* A message that brings the connection down whenever it is sent (a broker that
         * answers an ACL refusal by closing the connection, as Mosquitto 2.0.11 does,
         * or whose PUBACK the reset loses; a size limit it does not announce): see
         * link_lost. */
        uint64_t suspect;
        int strikes;
        bool transient; /* the coming loss follows a refusal worth retrying */
        /* Careful: after a connection the broker ended, one message at a time until
         * what was in flight then (ids up to careful_until, careful_left of them) is
         * answered, or careful_budget acks have passed. */
        uint64_t careful_until;
        uint32_t careful_left, careful_budget;
};

/* One base a center watches on its broker: <pfx>cmd/# and <pfx>status. */
struct watch {
        char *pfx; /* "<topic_prefix>/<base>/" */
        char *base;
};

/* Inbound QoS 1 messages the local broker may have unacknowledged with us (MQTT v5
 * Receive Maximum): the more, the more one read and one fsync carry. */
#define INGEST_RECEIVE_MAX 1024

static int conf_version(const struct mqtt_conf *m)
{
        if (!m->protocol || strcmp(m->protocol, "auto") == 0)
                return KM_MQTT_AUTO;
        return strcmp(m->protocol, "5") == 0 ? KM_MQTT_V5 : KM_MQTT_V311;
}

static int conf_meta(const struct mqtt_conf *m)
{
        return m->v311_meta && strcmp(m->v311_meta, "none") == 0 ? KM_META_NONE : KM_META_ENVELOPE;
}

/* The protocol level of a bridge's own connection (local: ingest; a link: its uplink). */
static int bridge_version(const struct bridge *b)
{
        return b->up ? km_uplink_version(b->up) : b->mc ? km_mqttc_version(b->mc) : 0;
}

/* ---- loop side ------------------------------------------------------------------- */

/* Message id was answered (acknowledged, or refused and set aside): it was not what
 * ended the connections, and careful mode may end. */
static void answered(struct bridge *b, uint64_t id)
{
        if (id == b->suspect)
                b->suspect = 0, b->strikes = 0;
        if (!b->careful_until)
                return;
        if (id <= b->careful_until && b->careful_left)
                b->careful_left--;
        if (b->careful_budget)
                b->careful_budget--;
        if (!b->careful_left || !b->careful_budget) {
                b->careful_until = 0;
                b->suspect = 0, b->strikes = 0;
                km_daemon_kick(b->d); /* the whole window again */
        }
}

static void on_acked(void *ud, uint64_t cookie)
{
        struct bridge *b = ud;
        uint64_t id = km_link_acked(b->link, (uint32_t)cookie);
        if (id)
                km_spool_ack(b->d->spool, id);
        if (id && b->local && b->d->calls)
                km_calls_acked(b->d->calls, id); /* a call reached the local broker */
        if (id)
                answered(b, id);
}

/* A broker refused one message for good (not authorised, bad topic name, bad payload,
 * too large): sending it again would only block the link. It is set aside into the
 * spool's dead letters (counted there as set_aside, and here as refused; the spool logs
 * it, rate-limited), and the link carries on. Returns false for a reason worth retrying
 * (quota, server busy ...), which fails the link instead: the client reconnects and the
 * message is sent again from the spool. */
/* The reasons a broker refuses one message for good, with the names the log has always
 * given them (Paho's, which tests and operators' filters know). */
static const char *for_good_name(int reason)
{
        switch (reason) {
        case 0x87:
                return "Not authorized";
        case 0x90:
                return "Topic name invalid";
        case 0x95:
                return "Packet too large";
        case 0x99:
                return "Payload format invalid";
        default:
                return NULL;
        }
}

static bool refused_for_good(struct bridge *b, uint32_t cookie, int reason)
{
        const char *name = for_good_name(reason);
        if (!name)
                return false;
        uint64_t id = km_link_acked(b->link, cookie);
        if (!id)
                return true;
        char why[400];
        snprintf(why, sizeof(why), "%s refused it on link %s (%s)", b->link->uri[0] ? b->link->uri : b->conf.uri, b->link->name,
                 name);
        ++b->d->refused;
        if (km_spool_set_aside(b->d->spool, id, why) == 0)
                b->link->set_aside++;
        answered(b, id);
        return true;
}

/* Which of the link's URIs its connection (or attempt) is on, for status and kuimenctl. */
static void show_uri(struct bridge *b)
{
        size_t i = 0, n = 1;
        const char *u = b->up ? km_uplink_uri(b->up, &i, &n) : km_mqttc_uri(b->mc, &i, &n);
        snprintf(b->link->uri, sizeof(b->link->uri), "%s", u);
        b->link->uri_index = (uint16_t)i;
        b->link->nuris = (uint16_t)n;
}

/* The connection of a bridge's client (local: ingest; a link: its uplink), on the loop
 * thread: it is the bridge's link state. */
static void link_up(void *ud)
{
        struct bridge *b = ud;
        /* mqttc and uplink.c say so themselves, with the MQTT version. */
        /* What the daemon fits its own status messages to (km_link_room): the peer's
         * limit, and what a packet of ours adds to a message's topic and payload: the
         * fixed header (5), topic length and packet id (4), and on the uplink the
         * bridged topic's "<prefix>/<node>/" and the kuimen-origin and kuimen-id user
         * properties (a 20-digit id; 2 bytes of property length). */
        show_uri(b);
        b->link->max_packet = b->up ? km_uplink_max_packet(b->up) : km_mqttc_max_packet(b->mc);
        b->link->mqtt_version = (uint8_t)bridge_version(b);
        size_t props = 2 + (1 + 2 + 13 + 2 + strlen(b->d->node.name)) + (1 + 2 + 9 + 2 + 20);
        if (b->link->mqtt_version != 5) /* 3.1.1: the envelope instead (MQTT 3.1.1 states no limit anyway) */
                props = conf_meta(&b->conf) == KM_META_NONE ? 0 : km_mqtt_envelope(NULL, 0, b->d->node.name, UINT64_MAX, b->d->node.name);
        b->link->packet_overhead = (uint32_t)(9 + (b->local ? (b->nwatch ? props + 1 + 2 + 12 + 2 + strlen(b->d->node.name) : 1)
                                                            : props + strlen(b->conf.topic_prefix) + strlen(b->d->node.name) + 2));
        km_link_set_state(b->link, KM_LINK_UP, "connected");
}

/* A connection the broker ended. Some brokers end it instead of, or right after,
 * answering a message: Mosquitto 2.0.11 sends PUBACK 0x87 for an ACL refusal and then
 * closes the connection, and while more of our publishes wait unread on its side the
 * close is a reset that takes that PUBACK and the ones just before it along; a broker
 * that does not announce its size limit just closes. Replaying the window from its head
 * would hit the same message at every connection, for ever. So after such a loss the
 * link is careful: one message at a time (send_msg) until what was in flight is
 * answered; alone, a refusal's PUBACK arrives (nothing unread makes the close a reset)
 * and the message is set aside as refused. If instead the connection ends again with
 * the same message alone in flight, within SUSPECT_MS of sending it, SUSPECT_STRIKES
 * times, it is set aside as the cause. A broker crash loop would have to end the
 * connection within a second of our sending, every time, to be mistaken for that, and
 * even then the message is held and listed for an operator, not lost. A refusal worth
 * retrying (quota, busy) ends the connection on purpose: no suspicion. */
#define SUSPECT_STRIKES 3
#define SUSPECT_MS 1000

static void link_lost(void *ud, const char *why)
{
        struct bridge *b = ud;
        int64_t taken = 0;
        uint64_t last = 0, head = km_link_head(b->link, &taken, &last);
        uint32_t inflight = b->link->inflight;
        bool alone = inflight == 1 && km_mono_ms() - taken <= SUSPECT_MS;
        show_uri(b);
        KM_LOG(KM_LOG_WARNING, "mqtt", "%s: connection to %s lost: %s", b->local ? "ingest" : "up", b->link->uri, why);
        km_link_set_state(b->link, KM_LINK_DOWN, "connection lost");
        if (b->transient || !head) {
                b->transient = false;
                return;
        }
        if (!b->careful_until)
                KM_LOG(KM_LOG_NOTICE, "mqtt", "%s: the broker ended the connection with %u messages in flight: "
                       "sending one at a time until they are answered", b->link->name, inflight);
        if (last > b->careful_until)
                b->careful_until = last;
        b->careful_left = inflight;
        /* Bounded: a broker that was killed or restarted also ends connections, and
         * what was in flight may be acknowledged on another link; past 64 acks the
         * whole window again (a message that ends the connection is then met again a
         * window later, and the link is careful again from there). */
        b->careful_budget = 64;
        if (head != b->suspect || !alone) {
                b->suspect = head;
                b->strikes = alone;
                return;
        }
        if (++b->strikes < SUSPECT_STRIKES)
                return;
        char w[400];
        snprintf(w, sizeof(w), "%s closed the connection on link %s each time it was sent alone (%d times)",
                 b->link->uri[0] ? b->link->uri : b->conf.uri, b->link->name, b->strikes);
        if (km_spool_set_aside(b->d->spool, head, w) == 0)
                b->link->set_aside++;
        b->suspect = 0, b->strikes = 0;
        answered(b, head);
}

static void link_failed_connect(void *ud, const char *why)
{
        struct bridge *b = ud;
        show_uri(b);
        KM_LOG(KM_LOG_WARNING, "mqtt", "%s: cannot connect to %s: %s", b->local ? "ingest" : "up", b->link->uri, why);
        b->link->mqtt_version = (uint8_t)bridge_version(b);
        /* A broker that refuses MQTT 5 to protocol = 5 is the operator's to fix: said
         * where the link's state is read. */
        bool v5 = strncmp(why, KM_MQTT_REFUSES_V5, strlen(KM_MQTT_REFUSES_V5)) == 0 &&
                  conf_version(&b->conf) == KM_MQTT_V5;
        km_link_set_state(b->link, KM_LINK_DOWN, v5 ? why : "cannot connect");
}

/* The broker's answer to a publish of ours (uplink or local), on the loop thread. */
static void link_acked(void *ud, uint32_t cookie)
{
        struct bridge *b = ud;
        on_acked(ud, cookie);
        km_daemon_kick(b->d); /* the freed slot wants the next message */
}

static bool link_refused(void *ud, uint32_t cookie, int reason, const char *why)
{
        struct bridge *b = ud;
        if (refused_for_good(b, cookie, reason))
                return true;
        b->transient = true; /* the client drops the connection now: not the message's doing */
        km_link_failed(b->link, cookie, why);
        return false;
}

/* ---- the local broker (mqttc, loop thread) -------------------------------------- */

/* A center's broker: a command for a base (spooled towards its narrow links, durable
 * before the PUBACK as any ingest) or the base's status (whether its MQTT session takes
 * the commands itself). A status carrying kuimen-relay came to this broker through a
 * center's narrow link rather than from the base's own client: a base that reports
 * "online" over its satellite link is not reachable over MQTT. */
static int center_take(struct bridge *b, const char *t, const void *payload, size_t len, const void *props,
                        size_t plen)
{
        for (size_t i = 0; i < b->nwatch; i++) {
                struct watch *w = &b->watch[i];
                size_t pl = strlen(w->pfx);
                if (strncmp(t, w->pfx, pl) != 0)
                        continue;
                const char *rest = t + pl;
                if (strncmp(rest, "cmd/", 4) == 0)
                        return km_daemon_ingest_routed(b->d, KM_DIR_UP, t, rest, payload, len);
                if (strcmp(rest, "status") != 0 || km_mqttc_user_property(props, plen, "kuimen-relay", NULL, NULL))
                        return 0;
                /* Over MQTT 3.1.1 (this broker, or the base's or relaying center's
                 * connection to it) kuimen-relay is in the envelope. */
                struct km_mqtt_meta_in meta;
                if (km_mqtt_envelope_parse(payload, len, &meta) && meta.relay[0])
                        return 0;
                int st = KM_PEER_UNKNOWN;
                if (memmem(payload, len, "\"state\":\"online\"", 16))
                        st = KM_PEER_ONLINE;
                else if (memmem(payload, len, "\"state\":\"offline\"", 17))
                        st = KM_PEER_OFFLINE;
                km_daemon_peer_set_state(b->d, w->base, st);
                return 0;
        }
        KM_LOG(KM_LOG_WARNING, "mqtt", "center: unexpected topic '%s' ignored", t);
        return 0;
}

/* A center: <topic_prefix>/<base>/incident/<id>, a base's incident timeline (over MQTT;
 * the narrow links' come through km_daemon_relay). Returns whether it was one. */
static bool heard_incident(struct bridge *b, const char *t, const void *payload, size_t len)
{
        char base[64];
        size_t pl = b->heard_pfx ? strlen(b->heard_pfx) : 0;
        if (!pl || strncmp(t, b->heard_pfx, pl) != 0)
                return false;
        const char *rest = t + pl, *slash = strchr(rest, '/');
        if (!slash || (size_t)(slash - rest) >= sizeof(base) || strncmp(slash, "/incident/", 10) != 0 ||
            strchr(slash + 10, '/'))
                return false;
        memcpy(base, rest, (size_t)(slash - rest));
        base[slash - rest] = '\0';
        km_incidents_heard(b->d->incidents, base, slash + 10, payload, len);
        return true;
}

/* A center: <topic_prefix>/<base>/status, link/<name> or pos/<unit>, what a base says
 * of itself, onto the board of bases (km_control_bases). Over MQTT 3.1.1 the payload
 * may start with the envelope's line. Returns whether it was one. */
static bool heard_board(struct bridge *b, const char *t, const void *payload, size_t len)
{
        char base[KM_STATUS_UNIT_MAX];
        size_t pl = b->heard_pfx ? strlen(b->heard_pfx) : 0;
        if (!pl || strncmp(t, b->heard_pfx, pl) != 0)
                return false;
        const char *rest = t + pl, *slash = strchr(rest, '/');
        if (!slash || (size_t)(slash - rest) >= sizeof(base))
                return false;
        const char *what = slash + 1;
        if (strcmp(what, "status") != 0 && strncmp(what, "link/", 5) != 0 && strncmp(what, "pos/", 4) != 0)
                return false;
        memcpy(base, rest, (size_t)(slash - rest));
        base[slash - rest] = '\0';
        struct km_mqtt_meta_in meta;
        size_t skip = km_mqtt_envelope_parse(payload, len, &meta);
        km_status_heard(&b->d->status, base, what, (const char *)payload + skip, len - skip, false, km_now_ms());
        return true;
}

/* Whether t is under the prefix of a base a narrow link serves (center_take's). */
static bool watched(const struct bridge *b, const char *t)
{
        for (size_t i = 0; i < b->nwatch; i++)
                if (strncmp(t, b->watch[i].pfx, strlen(b->watch[i].pfx)) == 0)
                        return true;
        return false;
}

/* The messages of one read are staged and settled with one write (and in sync =
 * always one fsync) before their PUBACKs leave (km_spool_settle). */
static int local_message(void *ud, const char *topic, const void *payload, size_t len, bool retain,
                         const void *props, size_t plen)
{
        struct bridge *b = ud;
        int rc;
        km_spool_defer_sync(b->d->spool);
        if (b->heard_pfx && b->d->incidents && heard_incident(b, topic, payload, len))
                rc = 0;
        else if (b->heard_pfx && heard_board(b, topic, payload, len) && !watched(b, topic))
                rc = 0;
        else if (b->nwatch)
                rc = center_take(b, topic, payload, len, props, plen);
        else if (b->d->calls && km_calls_answer(b->d->calls, topic, payload, len))
                rc = 0; /* an answer to a call: its change goes upstream as the call's */
        else if ((rc = km_positions_take(b->positions, topic, payload, len)) == 0)
                rc = km_daemon_ingest(b->d, KM_DIR_UP, topic, payload, len, retain);
        /* Refused by the spool (a storage fault): no PUBACK, the broker keeps it. Too
         * large or of no class: acknowledged, it would be refused again (logged). */
        return rc < 0 && rc != -EMSGSIZE && rc != -ENOENT ? rc : 0;
}

/* While the spool cannot store, the ingest connection stays closed: the broker keeps
 * the messages in kuimen's session instead of sending them to be refused. */
static bool local_may_connect(void *ud)
{
        struct bridge *b = ud;
        return km_spool_storage_ok(b->d->spool);
}

/* The answers a read brought are written after the spool's settle (their upstream
 * changes are in the ingest log first) and before the PUBACKs leave. */
static int local_settle(void *ud)
{
        struct bridge *b = ud;
        int rc = km_spool_settle(b->d->spool);
        if (rc == 0 && b->d->calls)
                rc = km_calls_flush(b->d->calls, true);
        if (rc == 0 && b->d->incidents)
                rc = km_incidents_flush(b->d->incidents, true);
        return rc;
}

/* A call command (cmd/call; cmd/incident alike) is the calls engine's, not the local
 * broker's: it is taken out of the spool as the broker would take it, acknowledged once
 * the call is stored, so a kill in between brings it again (known by its id, taken
 * once). */
static void call_taken(void *ud, uint64_t cookie)
{
        on_acked(ud, cookie);
        km_daemon_kick(((struct bridge *)ud)->d);
}

static int take_call(struct bridge *b, const struct km_msg *m, uint32_t cookie)
{
        char err[256];
        int rc = strcmp(m->topic, "cmd/call") == 0
                         ? km_calls_command(b->d->calls, m->payload, m->len, err, sizeof(err))
                         : km_incidents_command(b->d->incidents, m->payload, m->len, err, sizeof(err));
        if (rc < 0)
                return -EAGAIN; /* not stored (a storage fault): offered again */
        return km_daemon_post(b->d, call_taken, b, cookie) < 0 ? -ENOMEM : 0;
}

/* ---- sending --------------------------------------------------------------------- */

static int send_msg(struct km_link *l, const struct km_msg *m, uint32_t cookie)
{
        struct bridge *b = l->impl;
        const char *topic = m->topic;
        int rc;

        /* Careful (link_lost): one message at a time. */
        if (b->careful_until && l->inflight > 1)
                return -EAGAIN;
        if (b->local && ((b->d->calls && strcmp(m->topic, "cmd/call") == 0) ||
                         (b->d->incidents && strcmp(m->topic, "cmd/incident") == 0)))
                return take_call(b, m, cookie);
        /* A relayed message keeps the node and id it was born with. */
        const char *origin = m->origin ? m->origin : b->d->node.name;
        uint64_t oid = m->oid ? m->oid : m->id;
        if (!b->local) {
                size_t need = strlen(b->conf.topic_prefix) + strlen(origin) + strlen(m->topic) + 3;
                if (need > b->topic_cap) {
                        char *t = realloc(b->topic_buf, need);
                        if (!t)
                                return -ENOMEM;
                        b->topic_buf = t;
                        b->topic_cap = need;
                }
                snprintf(b->topic_buf, need, "%s/%s/%s", b->conf.topic_prefix, origin, m->topic);
                topic = b->topic_buf;
        }
        if (b->up) {
                rc = km_uplink_publish(b->up, topic, m->payload, m->len, (m->flags & KM_MSG_RETAIN) != 0, origin, oid,
                                       cookie);
                return rc == -EAGAIN || rc == -ENOTCONN || rc == -ENOMEM || rc == -EMSGSIZE ? rc : rc < 0 ? -EIO : 0;
        }
        /* Locally, only what a narrow link relayed (on a center) carries its origin, and
         * says it came through this center (see center_take). */
        rc = km_mqttc_publish(b->mc, topic, m->payload, m->len, (m->flags & KM_MSG_RETAIN) != 0,
                              !b->local || m->origin ? origin : NULL, oid,
                              b->local && m->origin ? b->d->node.name : NULL, cookie);
        /* -EMSGSIZE: over the broker's Maximum Packet Size; the scheduler sets it aside. */
        return rc == -EAGAIN || rc == -ENOTCONN || rc == -ENOMEM || rc == -EMSGSIZE ? rc : rc < 0 ? -EIO : 0;
}

/* ---- setup ----------------------------------------------------------------------- */

static void bridge_stop(void *ud)
{
        struct bridge *b = ud;
        /* Ingest stops taking messages; the uplink keeps running so the drain can
         * collect in-flight acks. */
        if (b->local)
                km_mqttc_stop(b->mc);
        else if (b->down)
                km_mqttc_stop(b->down);
}

static void bridge_destroy(struct km_link *l)
{
        struct bridge *b = l->impl;
        if (!b)
                return;
        km_uplink_free(b->up); /* stops with the will: the center learns we are gone */
        b->up = NULL;
        km_mqttc_free(b->mc); /* stops with the will */
        b->mc = NULL;
        km_mqttc_free(b->down);
        b->down = NULL;
        km_conf_release(b->keys, &b->conf);
        km_strv_free(&b->down_filters);
        km_strv_free(&b->watch_filters);
        for (size_t i = 0; i < b->nwatch; i++)
                free(b->watch[i].pfx), free(b->watch[i].base);
        free(b->watch);
        km_positions_free(b->positions);
        free(b->down_prefix);
        free(b->heard_pfx);
        free(b->topic_buf);
        free(b->will_topic);
        free(b->will_msg);
        free(b);
        l->impl = NULL;
}

/* The host saw no acknowledgements: the TCP connection may look alive (a silent cut
 * sends no FIN or RST) but is not. Drop it and connect afresh, through the same
 * backoff as a failed connect. */
static void bridge_reset(struct km_link *l)
{
        struct bridge *b = l->impl;
        if (b->up)
                km_uplink_reset(b->up);
        if (b->mc)
                km_mqttc_reset(b->mc);
}

static const struct km_link_ops mqtt_ops = { .send = send_msg, .destroy = bridge_destroy, .reset = bridge_reset };

/* The URI as the start parses it (host, port 1..65535): a port out of range failed only
 * at the start, with no FILE:LINE (issue 13). */
static int check_uri(struct km_conf *c, const char *section, const char *uri)
{
        char host[256];
        int port;
        bool tls;
        if (km_mqtt_uri_parse(uri, host, sizeof(host), &port, &tls) == 0)
                return 0;
        km_conf_error(c, section, "uri", "'%s': not scheme://host[:port] with a port from 1 to 65535", uri);
        return 1;
}

/* uri as a list (km_mqtt_uri_list): each entry as check_uri, local ones without TLS, and
 * one transport for all (TLS for all or for none: the uplink's client is chosen by it). */
static int check_uri_list(struct km_conf *c, const char *section, const char *list, bool local)
{
        char **v, host[256];
        size_t n;
        int bad = 0, port, tls_n = 0;
        bool tls;
        if (km_mqtt_uri_list(list, &v, &n) < 0) {
                km_conf_error(c, section, "uri", "'%s': an empty entry (URIs are separated by single commas)", list);
                return 1;
        }
        for (size_t i = 0; i < n; i++) {
                if (strncmp(v[i], "tcp://", 6) && strncmp(v[i], "mqtt://", 7) &&
                    (local || (strncmp(v[i], "ssl://", 6) && strncmp(v[i], "mqtts://", 8)))) {
                        if (local)
                                km_conf_error(c, section, "uri", "'%s' is not tcp:// or mqtt://host:port (the local "
                                              "broker is reached without TLS)", v[i]);
                        else
                                km_conf_error(c, section, "uri", "'%s' is not tcp://, ssl://, mqtt:// or mqtts://host:port", v[i]);
                        bad++;
                        continue;
                }
                if (check_uri(c, section, v[i])) {
                        bad++;
                        continue;
                }
                km_mqtt_uri_parse(v[i], host, sizeof(host), &port, &tls);
                tls_n += tls;
        }
        if (!bad && tls_n && tls_n != (int)n) {
                km_conf_error(c, section, "uri", "'%s': TLS (ssl://, mqtts://) for every URI of the list or for none", list);
                bad++;
        }
        km_mqtt_uri_list_free(v, n);
        return bad;
}

/* The TLS files as the start hands them to libmosquitto (which says only "Invalid
 * function arguments" and retries for ever when one is missing) and mqttc. */
static int check_tls_files(struct km_conf *c, const char *section, const struct mqtt_conf *m)
{
        const char *files[] = { m->ca, m->cert, m->key }, *keys[] = { "ca", "cert", "key" };
        int bad = 0;
        for (int i = 0; i < 3; i++) {
                struct stat st;
                FILE *f = files[i] ? fopen(files[i], "re") : NULL;
                if (!files[i])
                        continue;
                if (!f || fstat(fileno(f), &st) < 0) {
                        km_conf_error(c, section, keys[i], "%s: %s", files[i], strerror(errno));
                        bad++;
                } else if (!S_ISREG(st.st_mode)) {
                        km_conf_error(c, section, keys[i], "%s: not a regular file", files[i]);
                        bad++;
                } else if (i == 2 && (st.st_mode & 077)) {
                        km_conf_warn(c, section, keys[i], "%s: mode %04o: a private key %s can read: chmod 600 (or 640 for group kuimen)",
                                     files[i], (unsigned)(st.st_mode & 07777), st.st_mode & 004 ? "every user" : "its group");
                }
                if (f)
                        fclose(f);
        }
        if (!m->cert != !m->key) {
                km_conf_error(c, section, m->cert ? "cert" : "key", "cert and key go together: give both or neither");
                bad++;
        }
        return bad;
}

int km_mqtt_local_check(struct km_conf *c)
{
        struct mqtt_conf m = { 0 };
        int bad = km_conf_apply(c, "local", local_keys, &m);
        if (m.uri)
                bad += check_uri_list(c, "local", m.uri, true);
        if (m.center_group && (!*m.center_group || strpbrk(m.center_group, "/+#"))) {
                km_conf_error(c, "local", "center_group", "'%s' must be non-empty and hold no '/', '+' or '#'",
                              m.center_group);
                bad++;
        }
        for (size_t i = 0; i < m.subscribe.n; i++) {
                const char *why = km_topic_filter_invalid(m.subscribe.v[i]);
                if (why) {
                        km_conf_error(c, "local", "subscribe", "'%s': %s", m.subscribe.v[i], why);
                        bad++;
                }
        }
        km_conf_release(local_keys, &m);
        return bad ? -EINVAL : 0;
}

int km_mqtt_link_check(struct km_conf *c, const char *section)
{
        struct mqtt_conf m = { 0 };
        int bad = km_conf_apply(c, section, link_keys, &m) + (km_link_check_common(c, section) < 0);
        if (!m.uri) {
                km_conf_error(c, section, NULL, "[%s] needs a uri", section);
                bad++;
        } else {
                bad += check_uri_list(c, section, m.uri, false);
        }
        bad += check_tls_files(c, section, &m);
        if (m.topic_prefix && (!*m.topic_prefix || strpbrk(m.topic_prefix, "+#"))) {
                km_conf_error(c, section, "topic_prefix", "'%s' must be non-empty and hold no '+' or '#'", m.topic_prefix);
                bad++;
        }
        km_conf_release(link_keys, &m);
        return bad ? -EINVAL : 0;
}

static struct bridge *bridge_new(struct km_daemon *d, struct km_conf *c, const char *section,
                                 const struct km_conf_key *keys, const char *link_name, int dir)
{
        struct bridge *b = calloc(1, sizeof(*b));
        struct km_link *l = calloc(1, sizeof(*l));

        if (!b || !l)
                goto fail;
        b->d = d;
        b->keys = keys;
        b->local = keys == local_keys;
        if (km_conf_apply(c, section, keys, &b->conf) != 0)
                goto fail;
        if (km_link_init(l, link_name, dir, (uint32_t)b->conf.window) < 0)
                goto fail;
        if (!b->local && km_link_configure(l, c, section) < 0) {
                km_link_deinit(l);
                goto fail;
        }
        l->ops = &mqtt_ops;
        l->impl = b;
        b->link = l;
        if (km_daemon_add_link(d, l) < 0) {
                km_link_deinit(l);
                free(l);
                return NULL; /* deinit freed b */
        }
        km_daemon_on_stop(d, bridge_stop, b);
        return b;
fail:
        km_conf_release(keys, &b->conf);
        free(b);
        free(l);
        return NULL;
}

/* The will's topic and message for a client of node d under prefix. */
static int set_will(struct bridge *b, const char *prefix)
{
        struct km_daemon *d = b->d;
        if (asprintf(&b->will_topic, "%s/%s/status", prefix, d->node.name) < 0) {
                b->will_topic = NULL;
                return -ENOMEM;
        }
        if (asprintf(&b->will_msg, "{\"state\":\"offline\",\"node\":\"%s\",\"role\":\"%s\"}", d->node.name,
                     d->node.role) < 0) {
                b->will_msg = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* The topic prefix of the first mqtt link, as the daemon takes it for the local status
 * topics (main starts mqtt links in config order), else "kuimen". */
static const char *first_link_prefix(struct km_conf *c)
{
        for (size_t i = 0; i < c->nsections; i++) {
                if (strncmp(c->sections[i], "link ", 5) != 0)
                        continue;
                const char *type = km_conf_get(c, c->sections[i], "type");
                if (type && strcmp(type, "mqtt") != 0)
                        continue;
                const char *p = km_conf_get(c, c->sections[i], "topic_prefix");
                return p ? p : "kuimen";
        }
        return "kuimen";
}

/* Center: watch base under prefix (once per pair). */
static int watch_base(void *ud, const char *prefix, const char *base)
{
        struct bridge *b = ud;
        char *pfx, *f1 = NULL, *f2 = NULL;
        if (asprintf(&pfx, "%s/%s/", prefix, base) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < b->nwatch; i++)
                if (strcmp(b->watch[i].pfx, pfx) == 0) {
                        free(pfx);
                        return 0;
                }
        struct watch *w = realloc(b->watch, (b->nwatch + 1) * sizeof(*w));
        char **v = realloc(b->watch_filters.v, (b->watch_filters.n + 2) * sizeof(*v));
        if (w)
                b->watch = w;
        if (v)
                b->watch_filters.v = v;
        /* Several center processes: each command to one of them (shared); the status
         * to each (every one decides whether the base's MQTT session takes commands). */
        int r1 = b->conf.center_group ? asprintf(&f1, "$share/%s/%scmd/#", b->conf.center_group, pfx)
                                      : asprintf(&f1, "%scmd/#", pfx);
        if (r1 < 0)
                f1 = NULL;
        if (!w || !v || !f1 || asprintf(&f2, "%sstatus", pfx) < 0) {
                free(pfx);
                free(f1);
                return -ENOMEM;
        }
        b->watch[b->nwatch++] = (struct watch){ .pfx = pfx, .base = strdup(base) };
        b->watch_filters.v[b->watch_filters.n++] = f1;
        b->watch_filters.v[b->watch_filters.n++] = f2;
        if (!b->watch[b->nwatch - 1].base)
                return -ENOMEM;
        KM_LOG(KM_LOG_INFO, "mqtt", "center: commands on %scmd/# go down the narrow links to %s", pfx, base);
        return 0;
}

int km_mqtt_local_start(struct km_daemon *d, struct km_conf *c)
{
        struct bridge *b = bridge_new(d, c, "local", local_keys, "local", KM_DIR_DOWN);
        char *id = NULL;
        int rc;

        if (!b)
                return -ENOMEM;
        if ((rc = km_positions_new(&b->positions, d, c)) < 0)
                return rc;
        if (b->conf.client_id)
                id = strdup(b->conf.client_id);
        else if (asprintf(&id, "kuimen-%s", d->node.name) < 0)
                id = NULL;
        if (!id)
                return -ENOMEM;
        if (d->node.link_status && (rc = set_will(b, first_link_prefix(c))) < 0) {
                free(id);
                return rc;
        }
        /* A persistent session: while kuimen restarts, the broker keeps what arrives.
         * A center takes from its broker only the commands (and the status) of the
         * bases its narrow links reach: what it relays comes from narrow links. */
        bool center = strcmp(d->node.role, "center") == 0;
        if (center && (rc = km_plugin_command_bases(c, first_link_prefix(c), watch_base, b)) < 0) {
                free(id);
                return rc;
        }
        /* A base takes its terminals' answers to calls (gateway/calls.c). */
        bool have = false;
        for (size_t i = 0; i < b->conf.subscribe.n; i++)
                have |= strcmp(b->conf.subscribe.v[i], "call/+/answer") == 0;
        if (!center && !have) {
                char **v = realloc(b->conf.subscribe.v, (b->conf.subscribe.n + 2) * sizeof(*v));
                if (!v || !(v[b->conf.subscribe.n] = strdup("call/+/answer"))) {
                        if (v)
                                b->conf.subscribe.v = v;
                        free(id);
                        return -ENOMEM;
                }
                b->conf.subscribe.v = v;
                v[++b->conf.subscribe.n] = NULL;
        }
        /* A center keeps the incident timelines of every base it hears (gateway/incidents.c). */
        if (center) {
                /* and what every base says of itself, its links and its units (the
                 * board of bases: kuimenctl bases, the web page). */
                static const char *const heard[] = { "+/incident/+", "+/status", "+/link/+", "+/pos/+" };
                size_t nh = sizeof(heard) / sizeof(heard[0]);
                char **v = realloc(b->watch_filters.v, (b->watch_filters.n + nh + 1) * sizeof(*v));
                if (v)
                        b->watch_filters.v = v;
                if (!v || asprintf(&b->heard_pfx, "%s/", first_link_prefix(c)) < 0) {
                        free(id);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < nh; i++) {
                        if (asprintf(&v[b->watch_filters.n], "%s%s", b->heard_pfx, heard[i]) < 0) {
                                v[b->watch_filters.n] = NULL;
                                free(id);
                                return -ENOMEM;
                        }
                        v[++b->watch_filters.n] = NULL;
                }
        }
        const struct km_strv *filters = center ? &b->watch_filters : &b->conf.subscribe;
        struct km_mqttc_opts o = {
                .uri = b->conf.uri, .client_id = id, .username = b->conf.username, .password = b->conf.password,
                .role = "ingest", .clean_start = false,
                .session_expiry_s = (uint32_t)(b->conf.session_expiry_ms / 1000),
                .keepalive_s = (unsigned)(b->conf.keepalive_ms / 1000), .window = (unsigned)b->conf.window,
                .receive_max = INGEST_RECEIVE_MAX, .will_topic = b->will_topic, .will_msg = b->will_msg,
                .filters = (const char *const *)filters->v, .nfilters = filters->n,
                .version = conf_version(&b->conf), .v311_meta = conf_meta(&b->conf),
        };
        struct km_mqttc_cb cb = { .up = link_up, .lost = link_lost, .failed_connect = link_failed_connect,
                                  .message = local_message, .settle = local_settle,
                                  .may_connect = local_may_connect, .acked = link_acked,
                                  .refused = link_refused, .ud = b };
        rc = km_mqttc_new(&b->mc, d->ev, &o, &cb);
        free(id);
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "mqtt", "ingest: cannot start the client for %s: %s", b->conf.uri, strerror(-rc));
        return rc;
}

/* ---- the uplink's reports (loop thread) ----------------------------------------- */

/* The uplink subscribes to nothing: a message here is a broker's mistake. */
/* The downlink (mqttc, tcp:// and ssl:// alike): a command is staged in the spool, the
 * read's commands are settled together, and only then do their PUBACKs leave; while the
 * spool cannot store, the connection stays closed and the center's broker keeps them in
 * the session. (Paho, which carried the downlink over TLS before, acknowledged whatever
 * its callback said: a kill -9 during a storage fault lost such a command.) */
static int down_message(void *ud, const char *topic, const void *payload, size_t len, bool retain,
                        const void *props, size_t plen)
{
        struct bridge *b = ud;
        size_t pl = strlen(b->down_prefix);
        (void)retain, (void)props, (void)plen;
        if (strncmp(topic, b->down_prefix, pl) != 0) {
                KM_LOG(KM_LOG_WARNING, "mqtt", "down: unexpected topic '%s' ignored", topic);
                return 0;
        }
        km_spool_defer_sync(b->d->spool);
        int rc = km_daemon_command(b->d, KM_CMD_MQTT, topic + pl, payload, len);
        /* Too large or of no class: acknowledged, it would be refused again (logged). */
        return rc < 0 && rc != -EMSGSIZE && rc != -ENOENT ? rc : 0;
}

static int down_settle(void *ud)
{
        struct bridge *b = ud;
        return km_spool_settle(b->d->spool);
}

static void down_up(void *ud)
{
        struct bridge *b = ud;
        b->link->mqtt_version_down = (uint8_t)km_mqttc_version(b->down);
}

/* mqttc connects again by itself; the link's state is the uplink's. Said in the log, a
 * reason that repeats at every attempt (a refused certificate, a broker away) once a
 * minute: the uplink already says each of its own. */
static void down_failed(void *ud, const char *why)
{
        struct bridge *b = ud;
        int64_t now = km_mono_ms();
        if (strcmp(why, b->down_why) == 0 && now - b->down_logged_ms < 60000)
                return;
        snprintf(b->down_why, sizeof(b->down_why), "%s", why);
        b->down_logged_ms = now;
        KM_LOG(KM_LOG_WARNING, "mqtt", "down: cannot connect to %s: %s", km_mqttc_uri(b->down, NULL, NULL), why);
}

static void down_lost(void *ud, const char *why)
{
        struct bridge *b = ud;
        b->down_why[0] = '\0';
        KM_LOG(KM_LOG_WARNING, "mqtt", "down: connection to %s lost: %s", km_mqttc_uri(b->down, NULL, NULL), why);
}

static int up_message(void *ud, const char *topic, const void *payload, size_t len, bool retain, const void *props,
                      size_t plen)
{
        (void)ud, (void)payload, (void)len, (void)retain, (void)props, (void)plen;
        KM_LOG(KM_LOG_WARNING, "mqtt", "up: unexpected message on '%s' ignored", topic);
        return 0;
}

int km_mqtt_link_start(struct km_daemon *d, struct km_conf *c, const char *section)
{
        const char *name = section + 5; /* "link " */
        struct bridge *b = bridge_new(d, c, section, link_keys, name, KM_DIR_UP);
        char *id = NULL, *up = NULL, *down = NULL;
        int rc = -ENOMEM;

        if (!b)
                return -ENOMEM;
        if (b->conf.client_id)
                id = strdup(b->conf.client_id);
        else if (asprintf(&id, "kuimen-%s-%s", d->node.name, name) < 0)
                id = NULL;
        if (!id || asprintf(&up, "%s-up", id) < 0 || asprintf(&down, "%s-down", id) < 0 ||
            asprintf(&b->down_prefix, "%s/%s/", b->conf.topic_prefix, d->node.name) < 0)
                goto out;
        if (!d->topic_prefix && !(d->topic_prefix = strdup(b->conf.topic_prefix)))
                goto out;
        /* The uplink starts clean: the spool, not the broker session, holds what is
         * unacknowledged, and replays it in order after every reconnect. */
        if (d->node.link_status && (rc = set_will(b, b->conf.topic_prefix)) < 0)
                goto out;
        /* Plain TCP goes through mqttc (a write per batch of publishes, a read per
         * batch of PUBACKs); TLS through libmosquitto. */
        if (strncmp(b->conf.uri, "tcp://", 6) == 0 || strncmp(b->conf.uri, "mqtt://", 7) == 0) {
                struct km_mqttc_opts mo = {
                        .uri = b->conf.uri, .client_id = up, .username = b->conf.username,
                        .password = b->conf.password, .role = "up", .clean_start = true,
                        .keepalive_s = (unsigned)(b->conf.keepalive_ms / 1000), .window = (unsigned)b->conf.window,
                        .receive_max = 16, .will_topic = b->will_topic, .will_msg = b->will_msg,
                        .version = conf_version(&b->conf), .v311_meta = conf_meta(&b->conf),
                };
                struct km_mqttc_cb mcb = { .up = link_up, .lost = link_lost, .failed_connect = link_failed_connect,
                                           .message = up_message, .acked = link_acked, .refused = link_refused,
                                           .ud = b };
                rc = km_mqttc_new(&b->mc, d->ev, &mo, &mcb);
        } else {
                struct km_uplink_opts uo = {
                        .uri = b->conf.uri, .client_id = up, .username = b->conf.username,
                        .password = b->conf.password, .ca = b->conf.ca, .cert = b->conf.cert, .key = b->conf.key,
                        .verify_hostname = b->conf.verify_hostname, .keepalive_s = (int)(b->conf.keepalive_ms / 1000),
                        .window = (unsigned)b->conf.window, .will_topic = b->will_topic, .will_msg = b->will_msg,
                        .version = conf_version(&b->conf), .v311_meta = conf_meta(&b->conf),
                };
                struct km_uplink_cb ucb = { .up = link_up, .lost = link_lost, .failed_connect = link_failed_connect,
                                            .acked = link_acked, .refused = link_refused, .ud = b };
                rc = km_uplink_new(&b->up, d->ev, &uo, &ucb);
        }
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "mqtt", "up: cannot start the uplink to %s: %s", b->conf.uri, strerror(-rc));
                goto out;
        }
        if (b->conf.downlink) {
                char *filter;
                if (asprintf(&filter, "%scmd/#", b->down_prefix) < 0 || km_strv_split(&b->down_filters, filter) < 0) {
                        rc = -ENOMEM;
                        goto out;
                }
                free(filter);
                /* The downlink keeps a session so commands sent while the base is away
                 * wait at the center. */
                struct km_mqttc_opts mo = {
                        .uri = b->conf.uri, .client_id = down, .username = b->conf.username,
                        .password = b->conf.password, .ca = b->conf.ca, .cert = b->conf.cert, .key = b->conf.key,
                        .verify_hostname = b->conf.verify_hostname, .role = "down", .clean_start = false,
                        .session_expiry_s = (uint32_t)(b->conf.session_expiry_ms / 1000),
                        .keepalive_s = (unsigned)(b->conf.keepalive_ms / 1000), .window = 1, .receive_max = 16,
                        .filters = (const char *const *)b->down_filters.v, .nfilters = b->down_filters.n,
                        .version = conf_version(&b->conf), .v311_meta = conf_meta(&b->conf),
                };
                struct km_mqttc_cb mcb = { .up = down_up, .lost = down_lost, .failed_connect = down_failed,
                                           .message = down_message, .settle = down_settle,
                                           .may_connect = local_may_connect, .ud = b };
                if ((rc = km_mqttc_new(&b->down, d->ev, &mo, &mcb)) < 0) {
                        KM_LOG(KM_LOG_ERR, "mqtt", "down: cannot start the downlink to %s: %s", b->conf.uri,
                               strerror(-rc));
                        goto out;
                }
        }
        rc = 0;
out:
        free(id);
        free(up);
        free(down);
        return rc;
}

void km_mqtt_print_help(FILE *out)
{
        km_conf_print_help(out, "local", local_keys);
        km_link_print_help(out);
        km_conf_print_help(out, "link NAME (type = mqtt)", link_keys);
}

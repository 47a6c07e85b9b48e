/* SPDX-License-Identifier: MIT */
/* Daemon: the event loop that owns the spool, the routes and the links, and the host API bridges use. */
#ifndef KM_DAEMON_H
#define KM_DAEMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "dedupe.h"
#include "link.h"
#include "mailbox.h"
#include "route.h"
#include "spool.h"
#include "status.h"

struct km_node_conf {
        char *name;
        char *role;
        char *spool;
        long spool_max_mb;
        char *sync;
        int64_t sync_interval_ms;
        int64_t stats_interval_ms;
        char *log_level;
        char *plugin_dir;
        bool link_status;
};

#define KM_MAX_LINKS 16
#define KM_MAX_PEERS 64

/* What a center knows of a base's MQTT path, from the retained <topic_prefix>/<base>/status
 * the base's own client published (or its will). */
enum km_peer_state { KM_PEER_UNKNOWN = -1, KM_PEER_OFFLINE = 0, KM_PEER_ONLINE = 1 };

struct km_calls;
struct km_incidents;

struct km_peer {
        char *name;
        int state;        /* enum km_peer_state */
};

struct km_daemon {
        char *config_path; /* NULL: the embedded default */
        /* The config the daemon started with (entries only): a reload names every key
         * it cannot apply by comparing the file with this. */
        struct km_conf started_conf;
        /* Every check the start runs (gateway/main.c sets it: the bridges' checks live
         * outside gateway/); a reload refuses a config it fails. NULL: routes only. */
        int (*check_config)(struct km_conf *c);
        /* The last reload's outcome, for the control socket's reply: its errors, or the
         * changed keys it could not apply ("[link center] uri"). Loop thread. */
        struct km_strv reload_errors, reload_restart;
        struct km_node_conf node;
        sd_event *ev;
        struct km_mailbox mb;
        pthread_t loop_thread;
        sd_event_source *turn_src; /* a turn asked for on the loop thread: no eventfd */
        struct km_spool *spool;
        pthread_rwlock_t route_lock; /* the ingest threads read routes while SIGHUP swaps */
        struct km_route route;
        struct km_link *links[KM_MAX_LINKS];
        size_t nlinks;
        char *topic_prefix; /* of the first mqtt link: for the local link status topics */
        bool live;        /* print the live view on stdout every second (km_control_live) */
        bool stopping;
        int64_t drain_until_mono; /* on stop: when to give up waiting for acks */
        int64_t started_ms;
        uint64_t unrouted, rejected, bad_config_reloads;
        uint64_t refused; /* messages a broker refused for good (loop thread) */
        uint64_t bad_input; /* payloads a bridge refused (atomic: bridges count from their threads) */
        struct km_status status; /* what the bridges last saw: kuimenctl status, /metrics */
        /* GNSS time while the system clock is unsynchronised (bridges/gnss sets it):
         * returns 1 and the time, or 0. Any thread. */
        int (*clock)(int64_t *now_ms);
        /* Bridges hook their shutdown here (called first on stop). */
        void (*on_stop[KM_MAX_LINKS + 2])(void *ud);
        void *on_stop_ud[KM_MAX_LINKS + 2];
        size_t nstop;
        /* Commands down to a base over narrow links (docs/DESIGN.md). Base: the copies
         * of each path, counted; center: what it sent and what it left to MQTT. */
        struct km_dedupe cmd_dedupe;
        /* Held from the dedupe decision to the spool push, so that the two paths'
         * threads publish commands in the order they first arrived. */
        pthread_mutex_t cmd_mu;
        uint64_t cmd_in[2];        /* base, per enum km_cmd_path (atomic: read by control and metrics) */
        uint64_t cmd_duplicates;   /* base: copies dropped, the other path brought them first (atomic) */
        uint64_t cmd_sent_narrow;  /* center: commands a base acknowledged over a narrow link (loop) */
        uint64_t cmd_settled_mqtt; /* center: commands left to the base's MQTT session (loop) */
        struct km_peer peers[KM_MAX_PEERS]; /* center: the bases its narrow links serve (loop) */
        size_t npeers;
        sd_event_source *announce_src; /* base: the node status again once an MQTT link is up */
        struct km_calls *calls; /* base: calls (gateway/calls.c); NULL on a center */
        struct km_incidents *incidents; /* base: response timelines (gateway/incidents.c) */
};

/* The wall clock messages are stamped and expired by: d->clock when it answers, else
 * the system clock. Any thread. */
int64_t km_daemon_now(struct km_daemon *d);

/* The embedded default config (config/kuimen.conf, compiled in). */
extern const char km_default_config[];

/* Parses and validates the whole config: node keys here, [class] sections through the
 * route, the rest through the key tables the caller passes in check (for bridge
 * sections); errors land in c->errors. */
int km_node_conf_load(struct km_node_conf *n, struct km_conf *c);
void km_node_conf_release(struct km_node_conf *n);
void km_node_print_help(FILE *out);

/* Opens the spool and builds the loop. n is moved into d (the caller's copy is
 * cleared). Returns 0 or negative errno (logged). */
int km_daemon_init(struct km_daemon *d, struct km_node_conf *n, struct km_conf *c, const char *config_path);
void km_daemon_deinit(struct km_daemon *d);

/* Adds a link the daemon pumps and reports; takes ownership on success. */
int km_daemon_add_link(struct km_daemon *d, struct km_link *l);

/* Registers fn(ud) to run when the daemon stops, before links are freed. */
void km_daemon_on_stop(struct km_daemon *d, void (*fn)(void *ud), void *ud);

/* Any thread: routes a message to its class and makes it durable. Returns
 * only when the spool holds it; retries while the spool cannot write, so the caller's
 * acknowledgement never covers a lost message. dir is where it goes. */
int km_daemon_ingest(struct km_daemon *d, int dir, const char *topic, const void *payload, size_t len,
                     bool retain);

/* The same, with ckey_suffix appended to the class's coalesce key (when the class
 * coalesces): a bridge keeps one message per (key, suffix), e.g. one position per unit
 * and time bucket, which thins a track instead of keeping only its end. */
int km_daemon_ingest_keyed(struct km_daemon *d, int dir, const char *topic, const void *payload, size_t len,
                           bool retain, const char *ckey_suffix);

/* Loop thread: kuimen's own message on topic in class cls (by the route when there is
 * no such class), durable when it returns 0 as km_daemon_ingest; *id (may be NULL)
 * gets its spool id. */
int km_daemon_ingest_class(struct km_daemon *d, int dir, const char *topic, const char *cls, const void *payload,
                           size_t len, bool retain, uint64_t *id);

/* Loop thread (narrow links on a center): a message another node sent over a narrow
 * link, to be published on the local broker as topic, in the class route_topic has at
 * its origin (route_topic NULL: the first class of priority prio or less urgent, for a
 * topic not known here), keeping origin and oid; an incident's timeline
 * (incident/<id>) retained. Durable when it returns, like km_daemon_ingest. */
int km_daemon_relay(struct km_daemon *d, const char *topic, const char *route_topic, int prio, const void *payload,
                    size_t len, const char *origin, uint64_t oid);

/* Loop thread (narrow links): a message that arrived but can never be published
 * (refused by gateway/inbound.c, too large, of no class) goes to the spool's dead
 * letters with why, as topic (printable, escaped), in the class of priority prio when
 * there is one, so an operator can see what came and drop it. 0 or a negative errno. */
int km_daemon_put_aside(struct km_daemon *d, const char *topic, int prio, const void *payload, size_t len,
                        const char *origin, uint64_t oid, const char *why);

/* Any thread, on a center: a command taken from the center broker as topic (the full
 * <topic_prefix>/<base>/cmd/...), routed by route_topic (cmd/...), spooled in dir, the
 * way out over narrow links. Durable when it returns, like km_daemon_ingest. */
int km_daemon_ingest_routed(struct km_daemon *d, int dir, const char *topic, const char *route_topic,
                            const void *payload, size_t len);

/* Any thread, on a base: a command for the local broker (topic cmd/...) that came by
 * path (enum km_cmd_path). A copy the other path already brought is dropped (counted);
 * otherwise it is spooled towards the local broker. Returns 0 once it is durable or
 * dropped as a duplicate, else a negative errno as km_daemon_ingest. */
int km_daemon_command(struct km_daemon *d, int path, const char *topic, const void *payload, size_t len);

/* Loop thread, on a center. Registers base name (idempotent): its commands may go down
 * a narrow link. Returns 0, -ENOSPC or -ENOMEM. */
int km_daemon_peer_add(struct km_daemon *d, const char *name);
/* Loop thread. What the center last learnt of base name's MQTT path (enum km_peer_state). */
int km_daemon_peer_state(const struct km_daemon *d, const char *name);
/* "unknown", "offline" or "online". */
const char *km_peer_state_name(int state);
void km_daemon_peer_set_state(struct km_daemon *d, const char *name, int state);

/* Any thread. Asks the loop for a turn soon (the scheduler refills the windows), as a
 * post does; for work the loop did itself outside a turn (an ack read on an io source). */
void km_daemon_kick(struct km_daemon *d);

/* Any thread: queue fn(ud, arg) on the loop thread. */
int km_daemon_post(struct km_daemon *d, km_mail_fn fn, void *ud, uint64_t arg);

/* Runs until SIGTERM/SIGINT; then drains (waits briefly for in-flight acks), checkpoints
 * the spool and returns the exit code. */
int km_daemon_run(struct km_daemon *d);

/* Writes the counters line ("in=... spooled=... forwarded=...") into buf. */
void km_daemon_counters(struct km_daemon *d, char *buf, size_t len);

/* Loop thread. What SIGHUP does: reloads routes and classes from the config file (a
 * config that fails any check the start runs is refused and the running routes stay:
 * d->reload_errors). Every other key that changed since the start needs a restart: they
 * are logged and listed in d->reload_restart. Returns 0 (also when running on the
 * embedded default: nothing to reload) or -EINVAL. */
int km_daemon_reload(struct km_daemon *d);

#endif

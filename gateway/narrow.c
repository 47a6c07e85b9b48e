/* SPDX-License-Identifier: MIT */
/* Narrow links: the frame protocol on top of a plugin's device (queue, frames, acks, probes, commands, authentication, the center's delivery). */
#include "plugin.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "daemon.h"
#include "dict.h"
#include "frame.h"
#include "inbound.h"
#include "link.h"
#include "log.h"
#include "narrow.h"
#include "plugins/kuimen-plugin.h"

/*
 * A narrow link is a km_link whose transport is a plugin. The scheduler hands it
 * messages (send), which wait in a small queue until the device can take a frame;
 * gateway/frame packs as many as fit the MTU, keeps each frame until the peer's ack
 * frame releases it, and retransmits after rto. A message leaves the spool only when
 * the frame carrying its last byte is acknowledged end to end, never on the device's
 * own receipt.
 *
 * The other end (a kuimen with role = center) feeds datagrams to its frame receiver,
 * pushes every complete message into its own spool before acknowledging the frame,
 * and its local link publishes them on the center broker as
 * <topic_prefix>/<origin>/<topic> with the origin's kuimen-origin and kuimen-id.
 *
 * Commands go the other way (issue 5, item 7): a center spools what its operators
 * publish on <topic_prefix>/<base>/cmd/# for the bases in peers (bridges/mqtt.c takes
 * them) in its upward queue, the one its narrow links pull from; narrow_wants lets a
 * link take only its own bases' commands, and the frame carries them as cmd/...
 * While the base is online over MQTT (its retained status, as bridges/mqtt.c last
 * saw it) a command is held here, not framed: the base's MQTT session brings it.
 * After command_grace it leaves the spool as settled by MQTT; if the base goes
 * offline first, it is framed after all (a silent cut is seen only when the will
 * arrives, 1.5 keepalives later, and what the operator sent meanwhile may still wait
 * in the base's session at the center broker). The base pushes each command through
 * km_daemon_command, which drops the second copy of a pair that came both ways,
 * before it acknowledges the frame.
 *
 * The device under it (the plugin, its faults and budget) is gateway/plugin.c.
 */

/* A command frame names no base: the base that hears it publishes it. A plugin that
 * addresses frames (ABI 1.2 send_to) sends each base's frames to that base alone, in
 * a sequence space of its own (struct narrow_peer); through one that cannot, commands
 * for several bases down one link would reach whichever base hears that link (one
 * card, one radio channel, one peer address), so such a center link sending commands
 * has one peer. Data from several bases over one link is fine either way. */
#define SHARED_COMMANDS                                                                                      \
        "a center link that sends commands to several bases needs a plugin that addresses frames "       \
        "(send_to, ABI 1.2: beidou, pdt); through this one a command for one base would reach whichever " \
        "base hears the link; set commands = no here (and a link per base for commands), or one peer"
#define HELD_CHECK_US 250000 /* center: how often held commands are looked at */
#define PROBE_DEFAULT_MS 120000
#define REFUSED_LOG_MS 10000 /* a peer (or a forger) can send refused messages as fast as the link goes */

const char *const km_narrow_keys[] = { "peers", "rto", "probe", "topic_prefix", "dictionary", NULL };

#define NOFF(f) offsetof(struct narrow_conf, f)
static const char *const position_forms[] = { "compact", "json", NULL };
static const char *const auth_modes[] = { "on", "off", NULL };
static const struct km_conf_key cmd_keys[] = {
        { "commands", KM_CONF_BOOL, "yes", NOFF(commands), "center: take <topic_prefix>/<peer>/cmd/# from the center broker for each of peers and send it down this link while that base is not online over MQTT", 0, 0, NULL },
        { "command_grace", KM_CONF_DURATION, "30s", NOFF(command_grace_ms), "center: a command for a base online over MQTT is left to its MQTT session after this long (sent down this link if the base goes offline sooner)", 0, 86400000, NULL },
        { "positions", KM_CONF_STRING, "compact", NOFF(positions), "base: compact = a position message (the canonical JSON of pos/<unit>) crosses as the compact position codec when that is smaller, and the center publishes it quantised (lat/lon 1e-5 deg, alt 1 m, time 0.1 s, speed 0.1 m/s, heading 1 deg, battery 1 %); json = as its JSON, exact (for a center older than the codec in frames). Links with ack = receipt or none write frame version 1 and send JSON", 0, 0, position_forms },
        { "key_file", KM_CONF_STRING, NULL, NOFF(key_file), "frame authentication key: a base, one base64 key (a line KEY or NAME = KEY); a center, a line PEER = KEY for each of peers; mode 0600 or stricter, relative to this file; kuimenctl key new makes a key", 0, 0, NULL },
        { "key_file_next", KM_CONF_STRING, NULL, NOFF(key_file_next), "during a rotation, the next key (same form): frames under either key are taken, sent under key_file's", 0, 0, NULL },
        { "auth", KM_CONF_STRING, NULL, NOFF(auth), "on = frames are sealed and only sealed ones taken (the default with key_file); off = neither, with a warning at start and in status", 0, 0, auth_modes },
        { "tag_bytes", KM_CONF_INT, "8", NOFF(tag_bytes), "bytes of the truncated HMAC-SHA-256 tag on each frame, the same at both ends: a forged frame passes with odds 2^-(8 x tag_bytes)", KM_AUTH_TAG_MIN, KM_AUTH_TAG_MAX, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

void km_narrow_forget(km_plugin_link *h)
{
        for (int i = 0; i < QMAX; i++) {
                free(h->q[i].topic);
                free(h->q[i].payload);
                h->q[i] = (struct qmsg){ 0 };
        }
        for (size_t i = 0; i < h->npp; i++) {
                struct narrow_peer *p = &h->pp[i];
                km_frame_tx_reset(&p->tx);
                memset(p->rcpt, 0, sizeof(p->rcpt));
                p->probe_at = 0;
        }
}


/* Center: whether q waits for the base's MQTT session instead of this link. A message
 * already partly framed is finished here whatever the base does meanwhile. */
static bool held_for_mqtt(const km_plugin_link *h, const struct qmsg *q)
{
        return h->center && q->peer >= 0 && !q->framed && !q->frag_off &&
               km_daemon_peer_state(h->d, h->peers.v[q->peer]) == KM_PEER_ONLINE;
}

/* Center: commands held for a base online over MQTT for command_grace leave the spool
 * as delivered by its session. Held ones count as parked, which the ack clock
 * (gateway/link.c) does not wait for. Returns whether some are still held. */
static bool settle_commands(km_plugin_link *h)
{
        int64_t now = km_daemon_now(h->d);
        uint32_t held = 0;
        for (int i = 0; i < QMAX; i++) {
                struct qmsg *q = &h->q[i];
                if (!q->used || !held_for_mqtt(h, q))
                        continue;
                if (now - q->created < h->nc.command_grace_ms) {
                        held++;
                        continue;
                }
                uint64_t sid = km_link_acked(h->link, q->cookie);
                if (sid)
                        km_spool_ack(h->d->spool, sid);
                h->d->cmd_settled_mqtt++;
                KM_LOG(KM_LOG_DEBUG, "cmd", "%s: %s/%s left to %s's MQTT session", h->link->name,
                       h->peers.v[q->peer], q->topic, h->peers.v[q->peer]);
                free(q->topic);
                free(q->payload);
                *q = (struct qmsg){ 0 };
        }
        h->link->parked = held <= h->link->inflight ? held : h->link->inflight;
        return held > 0;
}

static int put_aside(km_plugin_link *h, const struct km_frame_msg *m, const char *why);

static int ingest_delivered(km_plugin_link *h, const struct km_frame_msg *m, const char *origin)
{
        char topic[KM_FRAME_TOPIC_MAX + 128];
        snprintf(topic, sizeof(topic), "%s/%s/%s", h->prefix, origin, m->topic ? m->topic : "unknown");
        /* A topic beyond our dictionary (unknown-topic/N) has no class here: the frame
         * says how urgent it was at the base (an alert stays an alert). */
        bool unknown = !m->topic || strncmp(m->topic, KM_DICT_FALLBACK "/", sizeof(KM_DICT_FALLBACK)) == 0;
        int rc = km_daemon_relay(h->d, topic, unknown ? NULL : m->topic, m->cls, m->payload, m->len, origin, m->id);
        /* Not stored (a storage fault): the frame is not acknowledged and comes again.
         * Too large or of no class would be refused again: set aside, acknowledged. */
        if (rc == -EMSGSIZE || rc == -ENOENT)
                return put_aside(h, m, rc == -EMSGSIZE ? "too large to store" : "no class takes it");
        return rc < 0 ? rc : 0;
}

/* s as printable ASCII into out (cap >= 5), at most max characters of it: a refused
 * topic is whatever a forger chose, and goes to the journal and the dead letters. */
static const char *printable(const char *s, char *out, size_t cap, size_t max)
{
        size_t o = 0;
        if (!s)
                return "(unknown topic)";
        for (size_t i = 0; s[i] && i < max && o + 5 < cap; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c >= 0x20 && c < 0x7f && c != '\\')
                        out[o++] = (char)c;
                else
                        o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        }
        out[o] = '\0';
        return out;
}

/* The peer's name for origin, else its number in hex. */
static const char *origin_name(const km_plugin_link *h, uint32_t origin, char *out, size_t cap)
{
        snprintf(out, cap, "%08x", origin);
        for (size_t i = 0; i < h->peers.n; i++)
                if (km_frame_node_id(h->peers.v[i]) == origin)
                        snprintf(out, cap, "%s", h->peers.v[i]);
        return out;
}

/* A message from the peer that can never be published goes to the dead letters, so an
 * operator sees what came (kuimenctl spool dead) while what follows flows on. Only a
 * storage fault is worth the frame again (not acknowledged: it comes again). */
static int put_aside(km_plugin_link *h, const struct km_frame_msg *m, const char *why)
{
        char topic[4 * KM_FRAME_TOPIC_MAX + 8], from[48], w[160];
        origin_name(h, m->origin, from, sizeof(from));
        snprintf(w, sizeof(w), "refused on arrival over %s from %s: %s", h->link->name, from, why);
        int rc = km_daemon_put_aside(h->d, printable(m->topic, topic, sizeof(topic), KM_FRAME_TOPIC_MAX), m->cls,
                                     m->payload, m->len, from, m->id, w);
        if (rc < 0)
                KM_LOG(KM_LOG_ERR, "link", "%s: cannot set aside a refused message from %s: %s", h->link->name, from,
                       strerror(-rc));
        return rc < 0 && !km_spool_storage_ok(h->d->spool) ? rc : 0;
}

/* A message (topic set) or a frame (topic NULL, reason origin) from the peer that can
 * never be published: counted by reason; its frame is acknowledged all the same (sent
 * again it would be refused again), so it never holds up what follows. Logged per
 * reason, so that a flood of one kind does not hide the first of another. */
static void refuse(km_plugin_link *h, enum km_refuse r, const char *why, const char *topic, uint32_t origin)
{
        uint64_t quiet;
        h->refused[r]++;
        if (!km_log_limit_pass(&h->refused_log[r], km_mono_ms(), REFUSED_LOG_MS, &quiet))
                return;
        char t[400], from[48];
        origin_name(h, origin, from, sizeof(from));
        if (r == KM_REFUSE_ORIGIN && !topic)
                KM_LOG(KM_LOG_WARNING, "link", "%s: frame from origin %s, not one of peers: dropped (refused_origin %llu, %llu not logged since the last line)",
                       h->link->name, from, (unsigned long long)h->refused[r], (unsigned long long)quiet);
        else
                KM_LOG(KM_LOG_WARNING, "link", "%s: message on '%s' from %s refused: %s; not published (refused_%s %llu, %llu not logged since the last line)",
                       h->link->name, printable(topic, t, sizeof(t), 64), from, why, km_inbound_reason_name(r),
                       (unsigned long long)h->refused[r], (unsigned long long)quiet);
}

/* The frame receiver's origin filter (gateway/frame.h origin_ok): a center takes frames
 * only from its peers, and so does a base that names its center in peers (one that
 * names none takes any: it cannot know its center's name). */
static bool origin_ok(void *ctx, uint32_t origin)
{
        const km_plugin_link *h = ctx;
        if (!h->peers.n)
                return !h->center;
        for (size_t i = 0; i < h->peers.n; i++)
                if (km_frame_node_id(h->peers.v[i]) == origin)
                        return true;
        return false;
}

/* A base: what a center sends down is commands for the local broker, nothing else
 * (a center relays the rest of the world on its own broker); on_deliver checked it. */
static int deliver_command(km_plugin_link *h, const struct km_frame_msg *m)
{
        int rc = km_daemon_command(h->d, KM_CMD_NARROW, m->topic, m->payload, m->len);
        /* Who may have sent it: every command taken says its path and, sealed, its key. */
        const struct km_auth_peer *p = h->auth_on ? h->rx_peer : NULL;
        KM_LOG(rc < 0 ? KM_LOG_WARNING : KM_LOG_NOTICE, "cmd", "'%s' (%zu bytes) from narrow link %s, %s%s%s: %s",
               m->topic, m->len, h->link->name, p ? "authenticated, key id " : "",
               p ? (p->last_key == 2 ? p->next.id : p->key.id) : h->auth_off ? "NOT authenticated (auth = off)" : "NOT authenticated (no key_file)",
               p ? (p->last_key == 2 ? " (key_file_next)" : " (key_file)") : "", rc < 0 ? strerror(-rc) : "taken");
        /* A stop or a storage fault is worth a retry (unacknowledged, the frame comes
         * again); a command too large or unrouted would be refused again: set aside. */
        if (rc < 0 && (h->d->stopping || !km_spool_storage_ok(h->d->spool)))
                return rc;
        return rc < 0 ? put_aside(h, m, rc == -EMSGSIZE ? "too large to store" : strerror(-rc)) : 0;
}

/* A complete message from the peer: checked (gateway/inbound.c), then durable in our
 * spool before the frame is acked. */
static int on_deliver(void *ctx, const struct km_frame_msg *m)
{
        km_plugin_link *h = ctx;
        const char *why = NULL;
        enum km_refuse r = km_inbound_check(m->topic, m->len, h->center, &why);
        if (r != KM_REFUSE_NONE) {
                refuse(h, r, why, m->topic, m->origin);
                return put_aside(h, m, why);
        }
        if (!h->center)
                return deliver_command(h, m);
        const char *origin = NULL;
        for (size_t i = 0; i < h->peers.n && !origin; i++)
                if (km_frame_node_id(h->peers.v[i]) == m->origin)
                        origin = h->peers.v[i];
        if (!origin) { /* origin_ok let no such frame in: kept as a second lock */
                refuse(h, KM_REFUSE_ORIGIN, "origin not in peers", m->topic, m->origin);
                return 0;
        }
        return ingest_delivered(h, m, origin);
}

static void on_done(void *ctx, uint64_t id)
{
        km_plugin_link *h = ctx;
        for (int i = 0; i < QMAX; i++)
                if (h->q[i].used && h->q[i].id == id) {
                        uint64_t sid = km_link_acked(h->link, h->q[i].cookie);
                        if (sid)
                                km_spool_ack(h->d->spool, sid);
                        if (h->center)
                                h->d->cmd_sent_narrow++;
                        h->retry_ms = 0; /* it carries: the next fault starts the back-off afresh */
                        free(h->q[i].topic);
                        free(h->q[i].payload);
                        h->q[i] = (struct qmsg){ 0 };
                        return;
                }
}

static void on_restart(void *ctx, uint64_t id)
{
        km_plugin_link *h = ctx;
        for (int i = 0; i < QMAX; i++)
                if (h->q[i].used && h->q[i].id == id)
                        h->q[i].framed = false, h->q[i].frag_off = 0;
}

/* ---- authentication ------------------------------------------------------------------
 *
 * With a key (key_file), every frame this link sends is sealed (gateway/auth.c: wire
 * version 3, encrypt-then-MAC, a counter) and every frame it receives is opened
 * before the frame receiver sees a byte of it: a frame that fails (tag, replay, no key
 * for its origin, a plain frame) is counted and dropped, so no ack in it is applied,
 * no SYN honoured, no slot or reorder state touched, nothing delivered. A base thus
 * executes a command from this link only if its frame was sealed under its center's
 * key. A center seals its acks under the key of the base acknowledged, and its data
 * frames (commands, probes) under the key of the base whose sending side framed them
 * (struct narrow_peer): a frame for south that reached north would not open there.
 */

static const char *const key_names[] = { "none", "key_file", "key_file_next" };
static void probe_answered(km_plugin_link *h, struct narrow_peer *p);

/* The sending side whose frames origin acknowledges, and that owes it acks: a
 * center's to that base, else the one there is. NULL: none (not a peer). */
static struct narrow_peer *peer_of_origin(km_plugin_link *h, uint32_t origin)
{
        if (h->npp == 1 && h->pp[0].idx < 0)
                return &h->pp[0];
        for (size_t i = 0; i < h->npp; i++)
                if (h->pp[i].origin == origin)
                        return &h->pp[i];
        return NULL;
}

static struct km_auth_peer *auth_peer_of(km_plugin_link *h, uint32_t origin)
{
        for (size_t i = 0; i < h->auth.npeers; i++)
                if (h->auth.peer[i].origin == origin || h->auth.any_peer)
                        return &h->auth.peer[i];
        return NULL;
}

/* A frame that did not open: counted in gateway/auth.c, logged here at most every
 * REFUSED_LOG_MS (a forger sends as fast as the link goes). */
static void auth_refused(km_plugin_link *h, int rc, uint32_t origin, size_t len)
{
        uint64_t quiet;
        if (!km_log_limit_pass(&h->auth_log, km_mono_ms(), REFUSED_LOG_MS, &quiet))
                return;
        const char *why = rc == -EALREADY ? "a replay (counter already taken or older than the window)"
                        : rc == -EBADE ? "its tag does not verify under the peer's key(s)"
                        : rc == -ENOKEY ? "no key for that origin"
                        : rc == -EPROTONOSUPPORT ? "not sealed (an unauthenticated frame on an authenticated link)"
                                                 : strerror(-rc);
        char from[48];
        snprintf(from, sizeof(from), "%08x", origin);
        for (size_t i = 0; i < h->peers.n; i++)
                if (km_frame_node_id(h->peers.v[i]) == origin)
                        snprintf(from, sizeof(from), "%s", h->peers.v[i]);
        KM_LOG(KM_LOG_WARNING, "link", "%s: %zu-byte frame claiming origin %s dropped: %s (auth_failures %llu, replays %llu, %llu not logged since the last line)",
               h->link->name, len, from, why, (unsigned long long)(h->auth.auth_failures + h->auth.unknown_key),
               (unsigned long long)h->auth.replays, (unsigned long long)quiet);
}

/* path relative to the config file's directory, as the dictionary is. Owned. */
static char *conf_relative(const char *conf_file, const char *path)
{
        const char *slash = conf_file ? strrchr(conf_file, '/') : NULL;
        char *full = NULL;
        if (path[0] != '/' && slash) {
                if (asprintf(&full, "%.*s/%s", (int)(slash - conf_file), conf_file, path) < 0)
                        return NULL;
                return full;
        }
        return strdup(path);
}

/* Reads key_file (and key_file_next) for every peer of the link: at start (add: the
 * peers are made) and on reload (their keys replaced, counters kept). All or nothing:
 * on an error no key changes. Returns 0 or a negative errno, why naming the file. */
static int auth_keys_load(km_plugin_link *h, bool add, char *why, size_t wl)
{
        size_t n = h->center || h->peers.n ? h->peers.n : 1;
        struct km_auth_key *k = calloc(n, sizeof(*k)), *nx = calloc(n, sizeof(*nx));
        char *kf = conf_relative(h->conf_file, h->nc.key_file);
        char *nf = h->nc.key_file_next ? conf_relative(h->conf_file, h->nc.key_file_next) : NULL;
        int rc = -ENOMEM;
        if (!k || !nx || !kf || (h->nc.key_file_next && !nf))
                goto out;
        for (size_t i = 0; i < n; i++) {
                const char *name = h->center ? h->peers.v[i] : NULL;
                if ((rc = km_auth_key_load(kf, name, &k[i], why, wl)) < 0)
                        goto out;
                if (nf && (rc = km_auth_key_load(nf, name, &nx[i], why, wl)) < 0 && rc != -ENOENT)
                        goto out;
                rc = 0;
        }
        for (size_t i = 0; i < n; i++) {
                if (add) {
                        const char *name = h->peers.n ? h->peers.v[i] : "*";
                        if (!km_auth_peer_add(&h->auth, name, &k[i], &nx[i])) {
                                snprintf(why, wl, "more than %d peers", KM_AUTH_PEERS_MAX);
                                rc = -ENOSPC;
                                goto out;
                        }
                } else {
                        h->auth.peer[i].key = k[i];
                        h->auth.peer[i].next = nx[i];
                }
        }
out:
        if (k)
                explicit_bzero(k, n * sizeof(*k));
        if (nx)
                explicit_bzero(nx, n * sizeof(*nx));
        free(k);
        free(nx);
        free(kf);
        free(nf);
        return rc;
}

/* Sets up authentication from the link's keys. Returns 0 or a negative errno (logged). */
static int auth_setup(km_plugin_link *h, const char *spool)
{
        char why[4608], *state = NULL;
        const char *name = h->link->name;
        bool off = h->nc.auth && strcmp(h->nc.auth, "off") == 0;
        bool on = h->nc.auth ? !off : h->nc.key_file != NULL;
        if (off) {
                h->auth_off = true;
                KM_LOG(KM_LOG_WARNING, "link", "%s: auth = off: frames are NEITHER AUTHENTICATED NOR ENCRYPTED; anyone who can send on this link can forge %s, acks and sequence resets",
                       name, h->center ? "messages under a base's name" : "commands");
                return 0;
        }
        if (!on) {
                KM_LOG(KM_LOG_WARNING, "link", "%s: no key_file: frames are not authenticated (set key_file at both ends, or auth = off to say so)", name);
                return 0;
        }
        if (!h->nc.key_file) {
                KM_LOG(KM_LOG_ERR, "link", "%s: auth = on needs key_file", name);
                return -EINVAL;
        }
        if (h->center && !h->peers.n) {
                KM_LOG(KM_LOG_ERR, "link", "%s: a center's key_file holds a key per peer: set peers", name);
                return -EINVAL;
        }
        /* The counters beside the spool: a restart starts above anything sent. */
        const char *slash = spool ? strrchr(spool, '/') : NULL;
        if (asprintf(&state, "%.*s%sauth-%s.state", slash ? (int)(slash - spool) : 1, slash ? spool : ".", "/", name) < 0)
                return -ENOMEM;
        int rc = km_auth_init(&h->auth, (unsigned)h->nc.tag_bytes, h->center ? KM_AUTH_DOWN : KM_AUTH_UP, h->origin,
                              state);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s: %s", name, state, strerror(-rc));
                free(state);
                return rc;
        }
        free(state);
        if ((rc = auth_keys_load(h, true, why, sizeof(why))) < 0) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s", name, why);
                km_auth_deinit(&h->auth);
                return rc;
        }
        /* Each link numbers its frames on its own: two links of this node under one key
         * would use a nonce twice (gateway/auth.c), so each has its own key. */
        for (size_t i = 0; i < h->d->nlinks; i++) {
                const struct km_link *o = h->d->links[i];
                const km_plugin_link *oh = km_narrow_is(o) ? o->impl : NULL;
                for (size_t a = 0; oh && oh->auth_on && a < oh->auth.npeers; a++)
                        for (size_t b = 0; b < h->auth.npeers; b++)
                                if (strcmp(oh->auth.peer[a].key.id, h->auth.peer[b].key.id) == 0) {
                                        KM_LOG(KM_LOG_ERR, "link", "%s: key %s is also link %s's: each link needs a key of its own (its frame counter is its own)",
                                               name, h->auth.peer[b].key.id, o->name);
                                        km_auth_deinit(&h->auth);
                                        return -EINVAL;
                                }
        }
        h->auth_on = true;
        h->ovh = KM_AUTH_OVERHEAD(h->auth.tag);
        for (size_t i = 0; i < h->auth.npeers; i++) {
                struct km_auth_peer *p = &h->auth.peer[i];
                KM_LOG(KM_LOG_NOTICE, "link", "%s: frames to and from %s authenticated: key %s%s%s, tag %u bytes, %zu bytes a frame",
                       name, strcmp(p->name, "*") ? p->name : "the center", p->key.id, p->next.set ? ", next key " : "",
                       p->next.set ? p->next.id : "", h->auth.tag, h->ovh);
        }
        return 0;
}

void km_narrow_received(km_plugin_link *h, const void *frame, size_t len)
{
        if (h->auth_on) {
                uint32_t org = 0;
                struct km_auth_peer *p = NULL;
                int n = km_auth_open(&h->auth, frame, len, h->obuf, h->bufcap + 32, &p, &org);
                if (n < 0) {
                        h->frames_in++;
                        h->frames_bad++;
                        auth_refused(h, n, org, len);
                        return;
                }
                frame = h->obuf;
                len = (size_t)n;
                h->rx_peer = p;
                /* The counter on disk before the frame is acted on, unless it was saved
                 * less than a second ago: on a slow link (a card's frame a minute) no
                 * frame taken can be replayed after a crash; on a fast one, at most
                 * the last second's (on_rto saves those). */
                int64_t now = km_mono_ms();
                if (h->auth.dirty && now - h->auth_saved_ms >= 1000 && km_auth_save(&h->auth) == 0)
                        h->auth_saved_ms = now;
        }
        struct km_frame_rx_info info = { 0 };
        uint64_t bad_pos = h->rx.bad_posbatch;
        int rc = km_frame_rx_input(&h->rx, frame, len, km_now_ms(), km_dict_fallback_deliver, &h->fb, &info);
        h->frames_in++;
        /* The first, then one line a hundred: a bad peer must not flood the log. */
        if (h->rx.bad_posbatch != bad_pos && (bad_pos == 0 || bad_pos / 100 != h->rx.bad_posbatch / 100))
                KM_LOG(KM_LOG_WARNING, "link", "%s: position batch from %08x that is not one good position: not published (%llu so far)",
                       h->link->name, info.origin, (unsigned long long)h->rx.bad_posbatch);
        if (rc == -EPERM) { /* origin_ok: nothing of the frame was acted on */
                h->frames_bad++;
                refuse(h, KM_REFUSE_ORIGIN, NULL, NULL, info.origin);
                return;
        }
        if (rc < 0) {
                if (h->frames_bad++ % 100 == 0)
                        KM_LOG(KM_LOG_WARNING, "link", "%s: frame refused (%s); %llu so far", h->link->name,
                               strerror(-rc), (unsigned long long)h->frames_bad);
                return;
        }
        /* An ack for another node's frames reached us: a frame that was for another
         * node (a center's link to several bases puts a base's ack only in frames to
         * that base). Nothing to apply; said at debug level, once every 10 s at most. */
        if (info.has_ack && info.ack.origin != h->origin) {
                int64_t now = km_mono_ms();
                if (!h->acks_foreign++ || now - h->acks_foreign_log_ms >= REFUSED_LOG_MS) {
                        KM_LOG(KM_LOG_DEBUG, "link", "%s: a frame from %08x carries an ack for %08x's frames, not ours (%llu so far)",
                               h->link->name, info.origin, info.ack.origin, (unsigned long long)h->acks_foreign);
                        h->acks_foreign_log_ms = now;
                }
        }
        struct narrow_peer *from = peer_of_origin(h, info.origin);
        if (info.has_ack && info.ack.origin == h->origin && from) {
                uint64_t sacked = from->tx.frames_sacked;
                km_frame_tx_ack(&from->tx, &info.ack, on_done, on_restart, h);
                h->heard_mono = from->heard_mono = km_mono_ms();
                /* The peer holds a frame it did not have: the path works while a lost one
                 * is sent again, so the ack clock (gateway/link.c) restarts. A peer that
                 * holds frames and never releases any still goes down: once the window
                 * is full nothing new can be held. */
                if (from->tx.frames_sacked != sacked && h->link->inflight)
                        h->link->progress_mono = h->heard_mono;
                /* Answered once the window has moved past it: frames sent after it may
                 * still be in flight (a message came while it waited for the card). */
                uint16_t past = (uint16_t)(from->tx.next_seq - from->tx.inflight - from->probe_seq - 1);
                if (from->probe_at && past < 0x8000)
                        probe_answered(h, from);
        }
        /* With ack = receipt or none the sender releases frames without us. */
        if (info.ack_due && h->link->ack_mode == KM_ACK_PEER && from) {
                from->ack_owed = true;
                from->ack_tried = false;
                from->ack_to = info.origin;
        }
        km_narrow_kick(h);
}

/* Releases every frame to p in flight up to seq as if p had acknowledged it. */
static void release_to(km_plugin_link *h, struct narrow_peer *p, uint16_t seq)
{
        struct km_frame_ack a = { .origin = h->origin, .cum = seq, .version = (uint8_t)p->tx.cfg.version };
        km_frame_tx_ack(&p->tx, &a, on_done, on_restart, h);
}

void km_narrow_sent(km_plugin_link *h, uint32_t token, int status)
{
        if (status < 0 && h->frames_bad++ % 100 == 0)
                KM_LOG(KM_LOG_WARNING, "link", "%s: the device refused a frame (%s)", h->link->name, strerror(-status));
        if (h->link->ack_mode != KM_ACK_RECEIPT)
                return;
        int k = -1;
        struct narrow_peer *p = NULL;
        for (size_t j = 0; j < h->npp && k < 0; j++)
                for (int i = 0; i < KM_FRAME_WINDOW_MAX && k < 0; i++)
                        if (h->pp[j].rcpt[i].used && h->pp[j].rcpt[i].token == token)
                                k = i, p = &h->pp[j];
        if (k < 0)
                return; /* an ack frame's, or from before a reset */
        uint16_t seq = p->rcpt[k].seq;
        if (status < 0) {
                /* Not on the air: the frame goes again, first in line. */
                p->rcpt[k].used = false;
                for (unsigned i = 0; i < KM_FRAME_WINDOW_MAX; i++)
                        if (p->tx.slot[i].used && p->tx.slot[i].seq == seq)
                                p->tx.slot[i].lost = true;
                km_narrow_kick(h);
                return;
        }
        p->rcpt[k].receipted = true;
        /* Receipts release in frame order: a frame whose receipt is still to come
         * holds back those after it, as a cumulative ack would. */
        uint16_t base = (uint16_t)(p->tx.next_seq - p->tx.inflight), next = base;
        while (km_frame_tx_inflight(&p->tx) > (uint16_t)(next - base)) {
                k = next % KM_FRAME_WINDOW_MAX;
                if (!p->rcpt[k].used || !p->rcpt[k].receipted || p->rcpt[k].seq != next)
                        break;
                p->rcpt[k].used = false;
                next++;
        }
        if (next != base) {
                release_to(h, p, (uint16_t)(next - 1));
                km_narrow_kick(h);
        }
}

/* A data frame to p is on its way: with ack = none it is as good as delivered (every
 * frame before it went first: a frame the device refused is the next one sent); with
 * ack = receipt, note its token for km_narrow_sent. */
static void sent_data(km_plugin_link *h, struct narrow_peer *p, const uint8_t *frame, size_t len, uint32_t token)
{
        uint8_t type;
        uint16_t seq;
        if (h->link->ack_mode == KM_ACK_PEER || km_frame_peek(frame, len, &type, &seq) < 0 || type != KM_FRAME_T_DATA)
                return;
        if (h->link->ack_mode == KM_ACK_NONE) {
                release_to(h, p, seq);
                return;
        }
        int k = seq % KM_FRAME_WINDOW_MAX;
        p->rcpt[k].token = token;
        p->rcpt[k].seq = seq;
        p->rcpt[k].used = true;
        p->rcpt[k].receipted = false;
}

/* ABI 1.2: the peer a frame is for, where the plugin can address one (send_to). An
 * ack frame acknowledges one origin's frames (kick builds it for p->ack_to): it goes
 * to that base. A data frame goes to the base of its sending side on a center's link
 * to several bases (each has its own sequence space, docs/DESIGN.md), else to the
 * plugin's default peer (NULL), as before ABI 1.2. */
static const char *frame_peer(const km_plugin_link *h, const struct narrow_peer *p, bool ack)
{
        if (!ack)
                return p->idx >= 0 ? h->peers.v[p->idx] : NULL;
        for (size_t i = 0; i < h->peers.n; i++)
                if (km_frame_node_id(h->peers.v[i]) == p->ack_to)
                        return h->peers.v[i];
        return NULL;
}

/* Hands one frame for p (an ack frame when ack) to the device, sealed under that
 * peer's key on an authenticated link; false when it is busy, in an outage or broken. */
static bool device_send(km_plugin_link *h, struct narrow_peer *p, bool ack, const uint8_t *frame, size_t len)
{
        const uint8_t *wire = frame;
        size_t wlen = len;
        if (h->auth_on) {
                struct km_auth_peer *ap = ack ? auth_peer_of(h, p->ack_to) : p->idx >= 0 ? auth_peer_of(h, p->origin) : NULL;
                int n = km_auth_seal(&h->auth, ap ? ap : &h->auth.peer[0], frame, len, h->sbuf, h->bufcap + 32);
                if (n < 0) {
                        /* Nothing leaves without a durable counter (gateway/auth.c). */
                        km_plugin_fault(h, "cannot seal a frame: %s", strerror(-n));
                        return false;
                }
                wire = h->sbuf;
                wlen = (size_t)n;
        }
        uint32_t token;
        if (!km_plugin_dev_send(h, frame_peer(h, p, ack), wire, wlen, &token))
                return false;
        sent_data(h, p, frame, len, token);
        return true;
}

/* The device did not take the frame to p just stamped (busy, an outage): mark it for
 * km_frame_tx_due to pick first when the device is ready, rather than after rto, so
 * at most this one frame was framed ahead of what arrives meanwhile (an alert). */
static void frame_unsent(struct narrow_peer *p)
{
        for (unsigned i = 0; i < KM_FRAME_WINDOW_MAX; i++)
                if (p->tx.slot[i].used && p->tx.slot[i].stamp == p->tx.stamp)
                        p->tx.slot[i].lost = true;
}

/* The sending side q goes by: its base's on a center's link to several bases. */
static struct narrow_peer *peer_of_msg(km_plugin_link *h, const struct qmsg *q)
{
        return h->npp > 1 && q->peer >= 0 && (size_t)q->peer < h->npp ? &h->pp[q->peer] : &h->pp[0];
}

/* Whether q could go in a new frame now: not framed, not held for the base's MQTT
 * session, and its peer's window has room. */
static bool framable(km_plugin_link *h, const struct qmsg *q)
{
        return q->used && !q->framed && !held_for_mqtt(h, q) &&
               km_frame_tx_inflight(&peer_of_msg(h, q)->tx) < FRAME_WINDOW;
}

/* Whether a data frame to p would go now (what kick sends): one to send again, or a new one. */
static bool data_waiting(km_plugin_link *h, struct narrow_peer *p, int64_t now, int64_t rto)
{
        if (h->link->state != KM_LINK_UP && !h->probing)
                return false;
        if (km_frame_tx_pending(&p->tx, now, rto))
                return true;
        if (h->probing || km_frame_tx_inflight(&p->tx) >= FRAME_WINDOW)
                return false;
        for (int i = 0; i < QMAX; i++)
                if (h->q[i].used && !h->q[i].framed && !held_for_mqtt(h, &h->q[i]) && peer_of_msg(h, &h->q[i]) == p)
                        return true;
        return false;
}

/* Feeds the device while it takes frames: an owed ack, retransmissions, new frames. An
 * ack rides in the tail of a data frame about to go to the same peer when it fits (a
 * base answering a center's command frames while it sends its own: on a budgeted card
 * every frame counts); else it goes alone, once that frame is sent. A frame to one
 * base never carries another's ack: that base would not see it, and its frame would
 * be sent again after rto. On a center's link to several bases, new frames go to them
 * in turn (round robin) within the highest class waiting. */
void km_narrow_kick(km_plugin_link *h)
{
        int64_t now = km_now_ms();

        /* Without the peer's acks nothing is sent again for time alone: only a frame
         * the device refused or did not take (marked lost) goes again. */
        int64_t rto = h->link->ack_mode == KM_ACK_PEER ? h->rto_ms : INT64_MAX / 4;

        while (!h->busy && h->open && !h->faulted) {
                size_t room = km_plugin_budget_room(h);
                room = room > h->ovh ? room - h->ovh : 0; /* what sealing adds is on the air too */
                struct narrow_peer *p = NULL;
                for (size_t i = 0; i < h->npp && !p; i++)
                        if (h->pp[i].ack_owed && (h->pp[i].ack_tried || !data_waiting(h, &h->pp[i], now, rto)))
                                p = &h->pp[i];
                if (p) {
                        struct km_frame_ack ack;
                        if (km_frame_rx_ack(&h->rx, p->ack_to, &ack) == 0) {
                                int n = km_frame_ack_encode(&ack, h->origin, h->buf, h->bufcap);
                                if (n > 0 && (size_t)n > room) {
                                        km_plugin_budget_wait(h);
                                        return;
                                }
                                if (n > 0 && !device_send(h, p, true, h->buf, (size_t)n))
                                        return;
                        }
                        p->ack_owed = false;
                        continue;
                }
                if (h->link->state != KM_LINK_UP && !h->probing)
                        return;
                if (room < KM_FRAME_MTU_MIN) {
                        km_plugin_budget_wait(h);
                        return;
                }
                /* A frame longer than room stays put (-ENOSPC, not stamped). A frame sent
                 * again carries the owed ack as a new one would: on a card with one
                 * frame a slot, an ack sent alone first would take the slot, and a
                 * peer that sends every slot is owed one each time, so the frame
                 * would wait until ack_timeout. */
                struct km_frame_ack ack;
                const struct km_frame_ack *piggy = NULL;
                size_t fmtu = h->mtu - h->ovh;
                int n = 0;
                for (size_t i = 0; i < h->npp && n == 0; i++) {
                        p = &h->pp[i];
                        piggy = NULL;
                        if (p->ack_owed && !p->ack_tried && km_frame_rx_ack(&h->rx, p->ack_to, &ack) == 0)
                                piggy = &ack;
                        /* The ack may lengthen the frame up to the MTU, not past it; a
                         * frame framed before the MTU shrank is offered as it is. */
                        size_t cap = room < h->bufcap ? room : h->bufcap;
                        size_t plen = piggy ? km_frame_tx_pending(&p->tx, now, rto) : 0;
                        if (piggy && cap > (fmtu > plen ? fmtu : plen))
                                cap = fmtu > plen ? fmtu : plen;
                        bool rode = false;
                        n = km_frame_tx_due_ack(&p->tx, now, rto, piggy, h->buf, cap, &rode);
                        if (n == -ENOSPC) {
                                km_plugin_budget_wait(h);
                                return;
                        }
                        if (n <= 0) {
                                n = 0;
                                continue;
                        }
                        if (rode)
                                p->ack_owed = false;
                        else if (piggy)
                                p->ack_tried = true; /* no room: it goes alone next */
                        if (!device_send(h, p, false, h->buf, (size_t)n)) {
                                /* The window keeps the frame as it was framed, not with
                                 * this tail: the ack is owed still. */
                                if (rode)
                                        p->ack_owed = true;
                                frame_unsent(p);
                                return;
                        }
                }
                if (n > 0)
                        continue;
                if (h->probing)
                        return; /* only the probe goes until it is answered */
                /* One priority per frame, the highest waiting: an alert handed over
                 * behind queued telemetry leaves in the next frame, not after it. */
                int top = 255;
                for (int i = 0; i < QMAX; i++)
                        if (framable(h, &h->q[i]) && h->q[i].cls < top)
                                top = h->q[i].cls;
                /* One peer per frame: the next after the last one served that has a
                 * message of that priority. */
                p = NULL;
                for (size_t j = 1; j <= h->npp && !p; j++) {
                        struct narrow_peer *c = &h->pp[(h->rr + j) % h->npp];
                        for (int i = 0; i < QMAX && !p; i++)
                                if (framable(h, &h->q[i]) && h->q[i].cls == top && peer_of_msg(h, &h->q[i]) == c)
                                        p = c;
                }
                if (!p)
                        return;
                h->rr = (size_t)(p - h->pp);
                struct km_frame_msg msgs[QMAX];
                int idx[QMAX], k = 0;
                for (int i = 0; i < QMAX; i++) {
                        struct qmsg *q = &h->q[i];
                        if (!framable(h, q) || q->cls != top || peer_of_msg(h, q) != p)
                                continue;
                        msgs[k] = (struct km_frame_msg){ .id = q->id, .topic = q->topic, .payload = q->payload,
                                                         .len = q->len, .created_ms = q->created, .cls = q->cls,
                                                         .qos = 1, .frag_off = q->frag_off };
                        idx[k++] = i;
                }
                /* The queue is in arrival order only per slot; the frame wants id order. */
                for (int a = 1; a < k; a++)
                        for (int b = a; b > 0 && msgs[b].id < msgs[b - 1].id; b--) {
                                struct km_frame_msg tm = msgs[b];
                                msgs[b] = msgs[b - 1], msgs[b - 1] = tm;
                                int ti = idx[b];
                                idx[b] = idx[b - 1], idx[b - 1] = ti;
                        }
                struct km_frame_put put;
                piggy = NULL;
                if (p->ack_owed && !p->ack_tried && km_frame_rx_ack(&h->rx, p->ack_to, &ack) == 0)
                        piggy = &ack;
                p->ack_tried = p->ack_owed;
                n = km_frame_tx_encode(&p->tx, msgs, (size_t)k, room < fmtu ? room : fmtu, piggy, now, h->buf, &put);
                if (n < 0) {
                        if (n != -EAGAIN)
                                KM_LOG(KM_LOG_ERR, "link", "%s: cannot frame message %llu: %s", h->link->name,
                                       (unsigned long long)msgs[0].id, strerror(-n));
                        if (p->ack_owed)
                                continue; /* the ack goes alone */
                        return;
                }
                if (put.acked_piggy)
                        p->ack_owed = false;
                for (size_t i = 0; i < put.n_full; i++)
                        h->q[idx[i]].framed = true;
                if (put.n_full < (size_t)k)
                        h->q[idx[put.n_full]].frag_off = put.next_off;
                if (!device_send(h, p, false, h->buf, (size_t)n)) {
                        frame_unsent(p); /* it waits in the window, first in line */
                        return;
                }
        }
}

/* ---- probes ---------------------------------------------------------------------- */

/* An idle link learns only from a probe whether its peer still hears it: a frame
 * without messages that the peer acknowledges like any other (gateway/frame.c). It
 * goes when nothing was acknowledged for probe_ms and nothing waits to be (traffic
 * tests the link itself), and after a fault before the link carries again. An
 * unanswered probe takes the link down after ack_timeout, as unanswered messages do.
 * A center's link to several bases probes each (its own sequence space). */
static void send_probe_to(km_plugin_link *h, struct narrow_peer *p)
{
        int64_t now = km_mono_ms();
        if (!h->open || h->faulted || km_frame_tx_inflight(&p->tx))
                return;
        size_t room = km_plugin_budget_room(h), mtu = h->mtu - h->ovh;
        room = room > h->ovh ? room - h->ovh : 0;
        if (room < mtu)
                mtu = room;
        int n = mtu >= KM_FRAME_MTU_MIN ? km_frame_tx_probe(&p->tx, mtu, km_now_ms(), h->buf) : -ENOSPC;
        if (n < 0) {
                if (n == -ENOSPC)
                        km_plugin_budget_wait(h);
                return;
        }
        /* A card busy until free_at sends it then: the clock runs from then. */
        p->probe_at = h->free_at > now ? h->free_at : now;
        p->probe_seq = (uint16_t)(p->tx.next_seq - 1);
        h->probes++;
        if (!device_send(h, p, false, h->buf, (size_t)n))
                frame_unsent(p);
}

void km_narrow_send_probe(km_plugin_link *h)
{
        for (size_t i = 0; i < h->npp; i++)
                send_probe_to(h, &h->pp[i]);
}

static void probe_answered(km_plugin_link *h, struct narrow_peer *p)
{
        h->link->ack_ms = km_mono_ms() - p->probe_at;
        p->probe_at = 0;
        h->retry_ms = 0; /* the path works: the next fault starts the back-off afresh */
        if (!h->probing)
                return;
        h->probing = false;
        /* One base answered: the device carries. Another base's probe stays in its
         * window (sent again after rto) without holding the link down. */
        for (size_t i = 0; i < h->npp; i++)
                h->pp[i].probe_at = 0;
        char why[200];
        snprintf(why, sizeof(why), "probe answered after: %s", h->fault);
        km_link_set_state(h->link, h->dev_degraded ? KM_LINK_DEGRADED : KM_LINK_UP, why);
}

static void probe_check(km_plugin_link *h)
{
        int64_t now = km_mono_ms();
        if (!h->probe_ms || !h->open || h->faulted)
                return;
        for (size_t i = 0; i < h->npp; i++) {
                struct narrow_peer *p = &h->pp[i];
                if (h->probing && !p->probe_at) {
                        send_probe_to(h, p); /* the budget or memory held it back: try again */
                        continue;
                }
                if (!p->probe_at || now - p->probe_at < h->link->conf.ack_timeout_ms)
                        continue;
                h->probes_lost++;
                char why[96];
                snprintf(why, sizeof(why), "probe not acknowledged for %.1f s", (double)(now - p->probe_at) / 1000);
                if (!h->probing) {
                        km_plugin_fault(h, "%s", why); /* forgets the probe with the rest */
                        return;
                }
                km_link_set_state(h->link, KM_LINK_DOWN, why);
                snprintf(h->fault, sizeof(h->fault), "%s", why);
                km_plugin_hold_down(h);
                return;
        }
        if (h->probing || h->link->state != KM_LINK_UP || h->link->inflight)
                return;
        for (size_t i = 0; i < h->npp; i++) {
                struct narrow_peer *p = &h->pp[i];
                if (p->probe_at || km_frame_tx_inflight(&p->tx))
                        continue;
                int64_t quiet = p->heard_mono > h->link->up_since_mono ? p->heard_mono : h->link->up_since_mono;
                if (now - quiet >= h->probe_ms)
                        send_probe_to(h, p);
        }
}

static int on_rto(sd_event_source *s, uint64_t usec, void *ud)
{
        km_plugin_link *h = ud;
        uint64_t next = (uint64_t)h->rto_ms * 250;
        (void)usec;
        /* parked must be true well within ack_timeout while commands are held. */
        if (h->center && settle_commands(h) && next > HELD_CHECK_US)
                next = HELD_CHECK_US;
        probe_check(h);
        km_narrow_kick(h);
        /* The receive counters on disk at most every second (gateway/auth.c). */
        int64_t now = km_mono_ms();
        if (h->auth_on && h->auth.dirty && now - h->auth_saved_ms >= 1000) {
                int rc = km_auth_save(&h->auth);
                if (rc < 0 && now - h->auth_saved_ms >= 60000)
                        KM_LOG(KM_LOG_ERR, "link", "%s: cannot save the frame counters: %s", h->link->name, strerror(-rc));
                if (rc == 0 || now - h->auth_saved_ms >= 60000)
                        h->auth_saved_ms = now;
        }
        sd_event_source_set_time_relative(s, next);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

/* Center: the peer whose command topic is <topic_prefix>/<peer>/cmd/..., or -1. */
static int command_peer(const km_plugin_link *h, const char *topic)
{
        for (size_t i = 0; h->cmd_pfx && i < h->peers.n; i++) {
                size_t n = strlen(h->cmd_pfx[i]);
                if (strncmp(topic, h->cmd_pfx[i], n) == 0 && strncmp(topic + n, "cmd/", 4) == 0)
                        return (int)i;
        }
        return -1;
}

static bool narrow_wants(struct km_link *l, const struct km_msg *m)
{
        return command_peer(l->impl, m->topic) >= 0;
}

static int narrow_send(struct km_link *l, const struct km_msg *m, uint32_t cookie)
{
        km_plugin_link *h = l->impl;
        int peer = h->center ? command_peer(h, m->topic) : -1;
        for (int i = 0; i < QMAX; i++) {
                struct qmsg *q = &h->q[i];
                if (q->used)
                        continue;
                /* The base publishes cmd/... as its MQTT downlink does. */
                q->topic = strdup(peer >= 0 ? m->topic + strlen(h->cmd_pfx[peer]) : m->topic);
                q->payload = malloc(m->len ? m->len : 1);
                if (!q->topic || !q->payload) {
                        free(q->topic);
                        free(q->payload);
                        q->topic = NULL, q->payload = NULL;
                        return -ENOMEM;
                }
                memcpy(q->payload, m->payload, m->len);
                q->used = true;
                q->framed = false;
                q->id = m->id;
                q->cookie = cookie;
                q->len = m->len;
                q->frag_off = 0;
                q->created = m->created_ms;
                q->cls = m->prio < 8 ? m->prio : 7;
                q->peer = peer;
                km_narrow_kick(h);
                return 0;
        }
        return -EAGAIN;
}

/* The host declared the link dead (gateway/link.c: no acknowledgement): forget what
 * was handed over and try again after the back-off. */
static void narrow_reset(struct km_link *l)
{
        km_plugin_link *h = l->impl;
        km_narrow_forget(h);
        snprintf(h->fault, sizeof(h->fault), "%s", l->reason);
        km_plugin_hold_down(h);
}

static void narrow_destroy(struct km_link *l)
{
        km_plugin_link *h = l->impl;
        if (!h)
                return;
        km_plugin_close(h);
        sd_event_source_disable_unref(h->rto_src);
        km_narrow_forget(h);
        for (size_t i = 0; i < h->npp; i++)
                km_frame_tx_deinit(&h->pp[i].tx);
        free(h->pp);
        km_frame_rx_deinit(&h->rx);
        if (h->auth_on)
                km_auth_deinit(&h->auth); /* saves the receive counters */
        free(h->sbuf);
        free(h->obuf);
        free(h->conf_file);
        km_conf_release(cmd_keys, &h->nc);
        km_dict_deinit(&h->dict);
        for (size_t i = 0; h->cmd_pfx && i < h->peers.n; i++)
                free(h->cmd_pfx[i]);
        free(h->cmd_pfx);
        free(h->group);
        km_strv_free(&h->peers);
        free(h->prefix);
        free(h->buf);
        free(h);
        l->impl = NULL;
}

static const struct km_link_ops narrow_ops = { .send = narrow_send, .destroy = narrow_destroy, .reset = narrow_reset };
/* A center's link that sends commands: only those for its own bases. */
static const struct km_link_ops center_ops = { .send = narrow_send, .destroy = narrow_destroy, .reset = narrow_reset,
                                               .wants = narrow_wants };

void km_narrow_attach(struct km_link *l, km_plugin_link *h)
{
        l->ops = &narrow_ops;
        l->impl = h;
}

bool km_narrow_is(const struct km_link *l)
{
        return l && (l->ops == &narrow_ops || l->ops == &center_ops) && l->impl;
}

/* rto and probe, whose defaults depend on the link's other keys: rto half of
 * ack_timeout (a lost frame goes again well before the link is given up for it),
 * probe every PROBE_DEFAULT_MS on a base (a center hears its bases' frames and
 * probes only when told). Returns the number of errors, landed in c. */
static int narrow_timing(struct km_conf *c, const char *section, bool center, int64_t ack_timeout_ms,
                         int64_t *rto, int64_t *probe)
{
        const char *v, *ack = km_conf_get(c, section, "ack");
        bool peer = !ack || strcmp(ack, "peer") == 0;
        int bad = 0;
        *rto = ack_timeout_ms / 2 > 100 ? ack_timeout_ms / 2 : 100;
        if ((v = km_conf_get(c, section, "rto")) && (km_conf_parse_duration(v, rto) < 0 || *rto <= 0)) {
                km_conf_error(c, section, "rto", "'%s' is not a duration above 0", v);
                bad++;
        }
        *probe = center || !peer ? 0 : PROBE_DEFAULT_MS;
        if ((v = km_conf_get(c, section, "probe"))) {
                if (km_conf_parse_duration(v, probe) < 0 || *probe < 0) {
                        km_conf_error(c, section, "probe", "'%s' is not a duration", v);
                        bad++;
                } else if (*probe && !peer) {
                        km_conf_error(c, section, "probe", "needs ack = peer: with ack = %s nothing answers a probe", ack);
                        bad++;
                }
        }
        return bad;
}

int km_narrow_check(struct km_conf *c, const char *section, bool addressed)
{
        char why[4608];
        int bad = 0;
        struct narrow_conf nc = { 0 };
        bad += km_conf_apply(c, section, cmd_keys, &nc) != 0;
        /* The key files as the start reads them: mode, syntax, a key per peer. */
        const char *role_ = km_conf_get(c, "node", "role"), *pv = km_conf_get(c, section, "peers");
        bool ctr_ = role_ && strcmp(role_, "center") == 0;
        struct km_strv peers = { 0 };
        if (pv)
                km_strv_split(&peers, pv);
        const char *files[2] = { nc.key_file, nc.key_file_next }, *fkeys[2] = { "key_file", "key_file_next" };
        for (int fi = 0; fi < 2; fi++) {
                /* On reload, km_plugin_reload_keys reads them and keeps the keys in use
                 * when a file is bad: a key file made readable must not refuse the
                 * routes too. */
                if (!files[fi] || c->reloading)
                        continue;
                char *full = conf_relative(c->file, files[fi]);
                struct km_auth_key k;
                for (size_t i = 0; full && i < (ctr_ ? peers.n : 1); i++) {
                        int krc = km_auth_key_load(full, ctr_ ? peers.v[i] : NULL, &k, why, sizeof(why));
                        explicit_bzero(&k, sizeof(k));
                        if (krc < 0 && !(fi == 1 && krc == -ENOENT)) {
                                km_conf_error(c, section, fkeys[fi], "%s", why);
                                bad++;
                                break;
                        }
                }
                free(full);
        }
        if (nc.auth && strcmp(nc.auth, "on") == 0 && !nc.key_file) {
                km_conf_error(c, section, "auth", "auth = on needs key_file");
                bad++;
        }
        if (ctr_ && nc.commands && peers.n > 1 && !addressed) {
                km_conf_error(c, section, "peers", "%s", SHARED_COMMANDS);
                bad++;
        }
        km_strv_free(&peers);
        int64_t rto, probe, ackt = 3000;
        const char *role = km_conf_get(c, "node", "role"), *at = km_conf_get(c, section, "ack_timeout");
        if (at)
                km_conf_parse_duration(at, &ackt);
        bad += narrow_timing(c, section, role && strcmp(role, "center") == 0, ackt, &rto, &probe);
        km_conf_release(cmd_keys, &nc);
        return bad;
}

int km_narrow_check_dictionary(struct km_conf *c, const char *section)
{
        char why[4608];
        int bad = 0;
        const char *dict = km_conf_get(c, section, "dictionary");
        struct km_dict kd;
        if (dict && km_dict_load(&kd, dict, c->file, why, sizeof(why)) < 0) {
                km_conf_error(c, section, "dictionary", "%s", why);
                bad++;
        } else if (dict)
                km_dict_deinit(&kd);
        return bad;
}

int km_narrow_setup(km_plugin_link *h, struct km_conf *c, const char *section)
{
        struct km_daemon *d = h->d;
        struct km_link *l = h->link;
        char why[4608];
        int rc;
        h->center = strcmp(d->node.role, "center") == 0;
        h->origin = km_frame_node_id(d->node.name);
        const char *v = km_plugin_config(h, "peers");
        rc = -ENOMEM;
        if (v && km_strv_split(&h->peers, v) < 0)
                return rc;
        v = km_plugin_config(h, "topic_prefix");
        h->prefix = strdup(v ? v : (d->topic_prefix ? d->topic_prefix : "kuimen"));
        if (narrow_timing(c, section, h->center, l->conf.ack_timeout_ms, &h->rto_ms, &h->probe_ms)) {
                rc = -EINVAL;
                return rc;
        }
        if (km_conf_apply(c, section, cmd_keys, &h->nc) != 0) {
                rc = -EINVAL;
                return rc;
        }
        if (h->center && h->nc.commands && h->peers.n > 1 && !(h->desc->abi_minor >= 2 && h->desc->ops->send_to)) {
                KM_LOG(KM_LOG_ERR, "link", "%s: peers: %s", l->name, SHARED_COMMANDS);
                rc = -EINVAL;
                return rc;
        }
        if (h->center) {
                /* Every link of a center pulls from the upward queue, where only
                 * commands are: each takes its own peers' (none with commands = no),
                 * and its group is its peers, so links to other bases do not compete
                 * with it for the command priority. */
                bool cmds = h->nc.commands && h->peers.n;
                size_t gl = 1;
                for (size_t i = 0; cmds && i < h->peers.n; i++)
                        gl += strlen(h->peers.v[i]) + 1;
                rc = -ENOMEM;
                if (!(h->group = calloc(1, gl)) || (cmds && !(h->cmd_pfx = calloc(h->peers.n, sizeof(*h->cmd_pfx)))))
                        return rc;
                for (size_t i = 0; cmds && i < h->peers.n; i++) {
                        if (asprintf(&h->cmd_pfx[i], "%s/%s/", h->prefix, h->peers.v[i]) < 0) {
                                h->cmd_pfx[i] = NULL;
                                rc = -ENOMEM;
                                return rc;
                        }
                        if ((rc = km_daemon_peer_add(d, h->peers.v[i])) < 0)
                                return rc;
                        strcat(strcat(h->group, i ? "," : ""), h->peers.v[i]);
                }
                l->ops = &center_ops;
                l->group = h->group;
        }
        h->bufcap = KM_FRAME_MTU_MAX;
        h->buf = malloc(h->bufcap);
        h->sbuf = malloc(h->bufcap + 32);
        h->obuf = malloc(h->bufcap + 32);
        h->conf_file = c->file ? strdup(c->file) : NULL;
        if (!h->buf || !h->sbuf || !h->obuf) {
                rc = -ENOMEM;
                return rc;
        }
        if ((rc = auth_setup(h, d->node.spool)) < 0)
                return rc;
        /* Wire version 2 (slots): a reading names its topic's last one and deflates
         * against it; a center answers each base in the version it speaks. A center's
         * frames carry commands: the base publishes them byte for byte, and pairs the
         * two copies of one that also came over MQTT by their bytes. A base's
         * positions go as the compact codec (positions = compact), which the
         * center publishes as JSON again (gateway/frame.h pos_batch, pos_json).
         * Without the peer's acks (ack = receipt or none) a frame lost on the air
         * is skipped, not sent again, and the far end would lose its slots with no
         * ack to say so: such links write version 1. */
        struct km_frame_tx_cfg tc = { .origin = h->origin, .first_seq = (uint16_t)(km_now_ms() & 0xffff),
                                      .window = FRAME_WINDOW, .mtu_max = KM_FRAME_MTU_MAX,
                                      .no_compact_json = h->center,
                                      .version = l->ack_mode == KM_ACK_PEER ? 2 : 1, .ack_room = true,
                                      .pos_batch = !h->center && h->nc.positions && strcmp(h->nc.positions, "compact") == 0 };
        struct km_frame_rx_cfg rcfg = { .pos_json = true, .origin_ok = origin_ok, .origin_ctx = h };
        /* Topics by index both ways (gateway/dict.c); a message beyond our list still
         * arrives, on the fallback topic. */
        if ((v = km_plugin_config(h, "dictionary"))) {
                if ((rc = km_dict_load(&h->dict, v, c->file, why, sizeof(why))) < 0) {
                        KM_LOG(KM_LOG_ERR, "link", "%s: dictionary: %s", l->name, why);
                        return rc;
                }
                tc.dict = rcfg.dict = &h->dict.frame;
                KM_LOG(KM_LOG_NOTICE, "link", "%s: dictionary %s: %zu topics, fingerprint %08x", l->name, h->dict.path,
                       h->dict.n, h->dict.fingerprint);
        }
        h->fb = (struct km_dict_fallback){ .next = on_deliver, .ctx = h, .link = l->name, .dict = &h->dict,
                                           .peers = &h->peers,
                                           .fate = h->center ? NULL : "a command whose topic is unknown here: not published" };
        rc = -ENOMEM;
        if (!h->prefix || !h->buf || km_frame_rx_init(&h->rx, &rcfg) < 0)
                return rc;
        /* A sending side per base on a center's link to several (each base follows its
         * own sequence, window and slots); one for the default peer otherwise, whose
         * frames are what they were before ABI 1.2. */
        size_t npp = h->center && h->peers.n > 1 ? h->peers.n : 1;
        if (!(h->pp = calloc(npp, sizeof(*h->pp))))
                return rc;
        for (size_t i = 0; i < npp; i++) {
                struct narrow_peer *p = &h->pp[i];
                p->idx = npp > 1 ? (int)i : -1;
                p->origin = npp > 1 ? km_frame_node_id(h->peers.v[i]) : 0;
                if (km_frame_tx_init(&p->tx, &tc) < 0)
                        return rc;
                h->npp = i + 1;
        }
        return 0;
}

void km_narrow_opened(km_plugin_link *h)
{
        sd_event_add_time_relative(h->d->ev, &h->rto_src, CLOCK_MONOTONIC, (uint64_t)h->rto_ms * 250, 10000, on_rto, h);
}

int km_plugin_command_bases(struct km_conf *c, const char *default_prefix,
                            int (*fn)(void *ud, const char *prefix, const char *base), void *ud)
{
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < c->nsections; i++) {
                const char *sec = c->sections[i];
                if (strncmp(sec, "link ", 5) != 0)
                        continue;
                const char *type = km_conf_get(c, sec, "type"), *peers = km_conf_get(c, sec, "peers");
                if (!type || strcmp(type, "mqtt") == 0 || !peers)
                        continue;
                struct narrow_conf nc = { 0 };
                struct km_strv v = { 0 };
                int bad = km_conf_apply(c, sec, cmd_keys, &nc) != 0;
                km_conf_release(cmd_keys, &nc);
                if (bad || !nc.commands)
                        continue;
                if (km_strv_split(&v, peers) < 0)
                        return -ENOMEM;
                const char *prefix = km_conf_get(c, sec, "topic_prefix");
                for (size_t k = 0; rc == 0 && k < v.n; k++)
                        rc = fn(ud, prefix ? prefix : default_prefix, v.v[k]);
                km_strv_free(&v);
        }
        return rc;
}

void km_plugin_print_help(FILE *out)
{
        fputs("[link NAME (type = a plugin's name)]\n"
              "  the plugin's own keys (see its README), and for every narrow link:\n"
              "  peers            list     center: node names whose frames it receives [default: none]\n"
              "  rto              duration retransmit a frame not acknowledged this long [default: half of ack_timeout]\n"
              "  probe            duration base: send a probe (an empty frame the peer acknowledges) when nothing was acknowledged this long, and before a link the host took down carries again; 0 = never; needs ack = peer [default: 2min on a base with ack = peer, else 0]\n"
              "  topic_prefix     string   center: republished topic = <topic_prefix>/<origin>/<topic> [default: kuimen]\n"
              "  dictionary       path     file of topics, one a line, sent as their index; the same file at both ends, append only\n"
              "                            (relative to the config's directory; see docs/narrow-links.md) [default: none]\n",
              out);
        for (const struct km_conf_key *k = cmd_keys; k->name; k++)
                fprintf(out, "  %-16s %-8s %s [default: %s]\n", k->name,
                        k->type == KM_CONF_BOOL     ? "boolean"
                        : k->type == KM_CONF_STRING ? "string"
                        : k->type == KM_CONF_INT    ? "integer"
                                                    : "duration",
                        k->help, k->def ? k->def : "none");
        fputs("\n", out);
}

int km_plugin_link_frames(const struct km_link *l, struct km_narrow_stats *out)
{
        if (!km_narrow_is(l))
                return -ENOENT;
        const km_plugin_link *h = l->impl;
        *out = (struct km_narrow_stats){
                .frames_in = h->frames_in, .frames_bad = h->frames_bad,
                .frames_ok = h->rx.frames_ok, .acks_in = h->rx.acks_in, .crc_errors = h->rx.crc_errors,
                .bad_version = h->rx.bad_version, .malformed = h->rx.malformed, .duplicates = h->rx.duplicates,
                .slot_misses = h->rx.slot_misses, .unknown_topics = h->rx.unknown_topics,
                .delivered = h->rx.delivered,
                .probes = h->probes, .probes_lost = h->probes_lost, .bad_posbatch = h->rx.bad_posbatch,
                .out_of_window = h->rx.out_of_window, .dropped_nomem = h->rx.dropped_nomem,
                .oversize = h->rx.oversize, .bad_payload = h->rx.bad_payload, .restarts_lost = h->rx.restarts_lost,
                .dict_topics = h->dict.n, .dict_fingerprint = h->dict.fingerprint,
        };
        for (size_t i = 0; i < h->npp; i++) {
                const struct km_frame_tx *tx = &h->pp[i].tx;
                out->frames_sent += tx->frames_sent;
                out->frames_resent += tx->frames_resent;
                out->slot_refs += tx->slot_refs;
                out->slot_resets += tx->slot_resets;
                out->frames_sacked += tx->frames_sacked;
                out->pos_batches += tx->pos_batches;
        }
        for (int r = 0; r < KM_REFUSE_N; r++)
                out->refused[r] = h->refused[r];
        out->auth = h->auth_on ? 1 : h->auth_off ? 2 : 0;
        out->tag_bytes = h->auth_on ? h->auth.tag : 0;
        out->auth_failures = h->auth.auth_failures + h->auth.unknown_key;
        out->replays = h->auth.replays;
        out->frames_authenticated = h->auth.opened;
        return 0;
}

int km_plugin_link_auth_peer(const struct km_link *l, size_t i, const char **name, const char **key,
                             const char **key_id)
{
        if (!km_narrow_is(l))
                return -ENOENT;
        const km_plugin_link *h = l->impl;
        if (!h->auth_on || i >= h->auth.npeers)
                return -ENOENT;
        const struct km_auth_peer *p = &h->auth.peer[i];
        *name = strcmp(p->name, "*") ? p->name : "center";
        *key = key_names[p->last_key];
        *key_id = p->last_key == 2 ? p->next.id : p->key.id;
        return 0;
}

void km_plugin_reload_keys(struct km_daemon *d)
{
        char why[4608];
        for (size_t i = 0; i < d->nlinks; i++) {
                struct km_link *l = d->links[i];
                if (!km_narrow_is(l))
                        continue;
                km_plugin_link *h = l->impl;
                if (!h->auth_on)
                        continue;
                if (auth_keys_load(h, false, why, sizeof(why)) < 0)
                        KM_LOG(KM_LOG_ERR, "link", "%s: reload: %s: keeping the keys in use", l->name, why);
                else
                        KM_LOG(KM_LOG_NOTICE, "link", "%s: reload: keys read again (%s: key %s%s%s)", l->name,
                               h->auth.peer[0].name, h->auth.peer[0].key.id, h->auth.peer[0].next.set ? ", next " : "",
                               h->auth.peer[0].next.set ? h->auth.peer[0].next.id : "");
        }
}

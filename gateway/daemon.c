/* SPDX-License-Identifier: MIT */
/* Daemon: the loop thread, its timers and signals, ingest into the spool, reload, drain. */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "calls.h"
#include "incidents.h"
#include "control.h"
#include "log.h"
#include "plugin.h"
#include "sched.h"

#define HOUSEKEEPING_US 100000ULL  /* flush pending, retry pumps */
#define EXPIRE_US 10000000ULL      /* TTL sweep of queue heads */
#define DRAIN_MS 3000              /* on stop: how long to wait for in-flight acks */
#define LINK_STATUS_US 60000000ULL /* link status topics, beside every change */

#define OFF(f) offsetof(struct km_node_conf, f)
static const char *const roles[] = { "base", "center", NULL };
static const char *const syncs[] = { "batch", "always", NULL };
static const char *const levels[] = { "err", "warning", "notice", "info", "debug", NULL };
static const struct km_conf_key node_keys[] = {
        { "name", KM_CONF_STRING, "base", OFF(name), "node name; appears in bridged topics", 0, 0, NULL },
        { "role", KM_CONF_STRING, "base", OFF(role), "base or center", 0, 0, roles },
        { "spool", KM_CONF_STRING, NULL, OFF(spool), "spool file (default $STATE_DIRECTORY/spool.db, else ./kuimen-state/spool.db)", 0, 0, NULL },
        { "spool_max_mb", KM_CONF_INT, "256", OFF(spool_max_mb), "bound on what the spool holds, MiB", 1, 1048576, NULL },
        { "sync", KM_CONF_STRING, "batch", OFF(sync), "always: ack after fsync; batch: fsync every sync_interval", 0, 0, syncs },
        { "sync_interval", KM_CONF_DURATION, "50ms", OFF(sync_interval_ms), "batch mode: longest time between fsyncs", 1, 1000, NULL },
        { "stats_interval", KM_CONF_DURATION, "60s", OFF(stats_interval_ms), "log a counters line this often (0 = never)", 0, 0, NULL },
        { "log_level", KM_CONF_STRING, "info", OFF(log_level), "err, warning, notice, info or debug", 0, 0, levels },
        { "plugin_dir", KM_CONF_STRING, KM_PLUGIN_DIR, OFF(plugin_dir), "where link plugins (<type>.so) are", 0, 0, NULL },
        { "link_status", KM_CONF_BOOL, "yes", OFF(link_status), "publish each link's state on <topic_prefix>/<node>/link/<name>, and the node's on <topic_prefix>/<node>/status (retained; the MQTT clients' will says offline)", 0, 0, NULL },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

struct ingest_extra {
        const char *route_topic; /* classify by this topic instead */
        int prio;                /* >= 0: classify by this priority instead */
        const char *origin;
        uint64_t oid;
        uint64_t *id_out; /* the spool id it got */
};

static int ingest(struct km_daemon *d, int dir, const char *topic, const char *cls_name, const void *payload,
                  size_t len, bool retain, const char *ckey_suffix);
static int ingest_ex(struct km_daemon *d, int dir, const char *topic, const char *cls_name, const void *payload,
                     size_t len, bool retain, const char *ckey_suffix, const struct ingest_extra *x);
/* The largest payload on topic that every link of dir can carry (SIZE_MAX: no limit
 * known): the least room of their peers' Maximum Packet Size (km_link_room). */
static size_t status_room(const struct km_daemon *d, int dir, const char *topic)
{
        size_t room = SIZE_MAX, tl = strlen(topic);
        for (size_t i = 0; i < d->nlinks; i++)
                if (d->links[i]->dir == dir) {
                        size_t r = km_link_room(d->links[i], tl);
                        if (r < room)
                                room = r;
                }
        return room;
}

/* Trims a flat JSON object of our own (json[0..n), NUL-terminated, room for it) to at
 * most room bytes by dropping its last members, keeping the first keep (the ones a
 * reader needs: what it is and its state). Strings may hold commas and braces; nothing
 * is nested. Returns the new length, still over room when the first keep do not fit. */
static size_t json_trim(char *json, size_t n, size_t room, int keep)
{
        while (n > room) {
                size_t last = 0;
                int members = 1;
                bool str = false;
                for (size_t i = 1; i + 1 < n; i++) {
                        if (str) {
                                if (json[i] == '\\')
                                        i++;
                                else if (json[i] == '"')
                                        str = false;
                        } else if (json[i] == '"') {
                                str = true;
                        } else if (json[i] == ',') {
                                last = i;
                                members++;
                        }
                }
                if (members <= keep || !last)
                        break;
                json[last] = '}';
                json[last + 1] = '\0';
                n = last + 1;
        }
        return n;
}

/* kuimen's own status JSON on local_topic (class status): upward as <local_topic>, and
 * retained on the local broker as <topic_prefix>/<node>/<local_topic>, the topic the
 * center sees. A center has no upward: its broker is where the status goes. Each copy
 * is trimmed to what the peers of its direction take (optional members dropped from
 * the end, the first keep stay); one whose minimum still does not fit is spooled all
 * the same, and the link sets it aside (kuimenctl spool dead) instead of wedging. */
static void publish_own(struct km_daemon *d, const char *local_topic, const char *json, size_t n, bool retain_up,
                        int keep)
{
        char topic[256], fit[1024];
        if (n >= sizeof(fit))
                return;
        if (strcmp(d->node.role, "center") != 0) {
                memcpy(fit, json, n + 1);
                size_t m = json_trim(fit, n, status_room(d, KM_DIR_UP, local_topic), keep);
                ingest(d, KM_DIR_UP, local_topic, "status", fit, m, retain_up, NULL);
        }
        snprintf(topic, sizeof(topic), "%s/%s/%s", d->topic_prefix ? d->topic_prefix : "kuimen", d->node.name,
                 local_topic);
        memcpy(fit, json, n + 1);
        size_t m = json_trim(fit, n, status_room(d, KM_DIR_DOWN, topic), keep);
        ingest(d, KM_DIR_DOWN, topic, "status", fit, m, true, NULL);
}

/* The node's own state, retained under <topic_prefix>/<node>/status on the local broker
 * and upward (class status): "online" with what an operator glances at first, at start
 * and every LINK_STATUS_US. The MQTT clients leave a will on the same topic that says
 * "offline" (bridges/mqtt.c), sent by the broker when kuimen dies or stops. */
static void node_status(struct km_daemon *d, bool local_too);

static void publish_node_status(struct km_daemon *d)
{
        node_status(d, true);
}

/* local_too: also the retained copy on the local broker (false: upward only). */
static void node_status(struct km_daemon *d, bool local_too)
{
        char json[768];
        struct km_spool_stats st;
        uint64_t fwd = 0;
        unsigned up = 0, links = 0;
        int64_t now = km_now_ms(), oldest = 0;

        if (d->stopping || !d->node.link_status)
                return;
        km_spool_stats(d->spool, &st);
        for (size_t i = 0; i < d->nlinks; i++) {
                const struct km_link *l = d->links[i];
                if (l->dir != KM_DIR_UP)
                        continue;
                fwd += l->acked;
                links++;
                up += l->state == KM_LINK_UP;
        }
        for (int i = 0; i < KM_DIR_COUNT; i++)
                if (st.oldest_ms[i] && (!oldest || st.oldest_ms[i] < oldest))
                        oldest = st.oldest_ms[i];
        int n = snprintf(json, sizeof(json),
                         "{\"state\":\"online\",\"node\":\"%s\",\"role\":\"%s\",\"version\":\"%s\",\"uptime_s\":%lld,"
                         "\"links_up\":%u,\"links\":%u,\"spooled\":%llu,\"spool_bytes\":%llu,\"oldest_age_s\":%lld,"
                         "\"in\":%llu,\"forwarded\":%llu,\"dropped\":%llu,\"expired\":%llu,\"bad_input\":%llu}",
                         d->node.name, d->node.role, KM_VERSION, (long long)((now - d->started_ms) / 1000), up, links,
                         (unsigned long long)(st.depth[KM_DIR_UP] + st.depth[KM_DIR_DOWN]), (unsigned long long)st.bytes,
                         (long long)(oldest && now > oldest ? (now - oldest) / 1000 : 0), (unsigned long long)st.pushed,
                         (unsigned long long)fwd, (unsigned long long)st.dropped, (unsigned long long)st.expired,
                         (unsigned long long)__atomic_load_n(&d->bad_input, __ATOMIC_RELAXED));
        if (n < 0 || (size_t)n >= sizeof(json))
                return;
        /* state, node, role stay whatever the peers' limits: a center reads state. */
        if (local_too)
                publish_own(d, "status", json, (size_t)n, true, 3);
        else if (strcmp(d->node.role, "center") != 0)
                ingest(d, KM_DIR_UP, "status", "status", json,
                       json_trim(json, (size_t)n, status_room(d, KM_DIR_UP, "status"), 3), true, NULL);
}

static void on_link_state(struct km_link *l, void *ud);

int km_node_conf_load(struct km_node_conf *n, struct km_conf *c)
{
        int bad = km_conf_apply(c, "node", node_keys, n);

        if (n->name && (!*n->name || strpbrk(n->name, "/+#"))) {
                km_conf_error(c, "node", "name", "'%s' must be non-empty and hold no '/', '+' or '#'", n->name);
                bad++;
        }
        if (!n->spool) {
                const char *sd = getenv("STATE_DIRECTORY");
                int len = sd ? (int)strcspn(sd, ":") : 0; /* systemd may list several */
                if (!len)
                        sd = "./kuimen-state", len = (int)strlen(sd);
                if (asprintf(&n->spool, "%.*s/spool.db", len, sd) < 0)
                        return -ENOMEM;
        }
        return bad ? -EINVAL : 0;
}

void km_node_conf_release(struct km_node_conf *n)
{
        km_conf_release(node_keys, n);
}

void km_node_print_help(FILE *out)
{
        km_conf_print_help(out, "node", node_keys);
}

int64_t km_daemon_now(struct km_daemon *d)
{
        int64_t now;
        /* After a power cut a box can boot with a wrong clock: GNSS time is then the
         * only trustworthy time on the base. */
        if (!d->clock || d->clock(&now) != 1)
                now = km_now_ms();
        return now;
}

static int64_t spool_clock(void *ud)
{
        return km_daemon_now(ud);
}

void km_daemon_kick(struct km_daemon *d)
{
        /* On the loop thread (acks read by a client, ingest pushing) a turn is just an
         * enabled defer source; other threads write the mailbox's eventfd. */
        if (d->turn_src && pthread_equal(pthread_self(), d->loop_thread))
                sd_event_source_set_enabled(d->turn_src, SD_EVENT_ONESHOT);
        else
                km_mailbox_kick(&d->mb);
}

static void wake_loop(void *ud)
{
        km_daemon_kick(ud);
}

int km_daemon_post(struct km_daemon *d, km_mail_fn fn, void *ud, uint64_t arg)
{
        return km_mailbox_post(&d->mb, fn, ud, arg);
}

int km_daemon_add_link(struct km_daemon *d, struct km_link *l)
{
        if (d->nlinks == KM_MAX_LINKS)
                return -ENOSPC;
        d->links[d->nlinks++] = l;
        l->on_state = on_link_state;
        l->on_state_ud = d;
        return 0;
}

void km_daemon_on_stop(struct km_daemon *d, void (*fn)(void *ud), void *ud)
{
        if (d->nstop < sizeof(d->on_stop) / sizeof(d->on_stop[0])) {
                d->on_stop[d->nstop] = fn;
                d->on_stop_ud[d->nstop++] = ud;
        }
}

int km_daemon_ingest(struct km_daemon *d, int dir, const char *topic, const void *payload, size_t len, bool retain)
{
        return ingest(d, dir, topic, NULL, payload, len, retain, NULL);
}

static int ingest(struct km_daemon *d, int dir, const char *topic, const char *cls_name, const void *payload,
                  size_t len, bool retain, const char *ckey_suffix)
{
        return ingest_ex(d, dir, topic, cls_name, payload, len, retain, ckey_suffix, NULL);
}

int km_daemon_relay(struct km_daemon *d, const char *topic, const char *route_topic, int prio, const void *payload,
                    size_t len, const char *origin, uint64_t oid)
{
        struct ingest_extra x = { .route_topic = route_topic, .prio = route_topic ? -1 : prio, .origin = origin,
                                  .oid = oid };
        /* A narrow frame carries no retain flag (its record has no bit for it, and old
         * receivers refuse one). A base publishes an incident's timeline retained and
         * nothing else on incident/<id> (gateway/incidents.c), so the topic says it:
         * the center's subscribers get the latest timeline as over MQTT. */
        bool retain = route_topic && strncmp(route_topic, "incident/", 9) == 0 && !strchr(route_topic + 9, '/');
        int rc = ingest_ex(d, KM_DIR_DOWN, topic, NULL, payload, len, retain, NULL, &x);
        /* A center keeps the timelines it hears (its own broker does not send it back
         * what it publishes: the MQTT path is bridges/mqtt.c's). */
        if (rc == 0 && d->incidents && origin && route_topic && strncmp(route_topic, "incident/", 9) == 0)
                km_incidents_heard(d->incidents, origin, route_topic + 9, payload, len);
        /* and the board of the bases it hears (status, links, units: the web page's). */
        if (rc == 0 && origin && route_topic)
                km_status_heard(&d->status, origin, route_topic, payload, len, true, km_now_ms());
        return rc;
}

int km_daemon_put_aside(struct km_daemon *d, const char *topic, int prio, const void *payload, size_t len,
                        const char *origin, uint64_t oid, const char *why)
{
        char cls[64] = "none";
        struct km_msg m = { .created_ms = km_daemon_now(d), .dir = KM_DIR_DOWN, .qos = 1, .topic = topic, .cls = cls,
                            .payload = payload, .len = len, .origin = origin, .oid = oid };
        pthread_rwlock_rdlock(&d->route_lock);
        const struct km_class *k = prio >= 0 ? km_route_by_priority(&d->route, prio) : NULL;
        if (k) {
                snprintf(cls, sizeof(cls), "%s", k->name);
                m.prio = (uint8_t)k->priority;
        }
        pthread_rwlock_unlock(&d->route_lock);
        return km_spool_put_aside(d->spool, &m, why);
}

int km_daemon_ingest_routed(struct km_daemon *d, int dir, const char *topic, const char *route_topic,
                            const void *payload, size_t len)
{
        struct ingest_extra x = { .route_topic = route_topic, .prio = -1 };
        return ingest_ex(d, dir, topic, NULL, payload, len, false, NULL, &x);
}

#define CMD_DEDUPE_TTL_MAX_MS (24LL * 3600 * 1000) /* a command class that never expires */

/* Both paths end here, so that the pairing sees every copy: the downlink (mqttc) and
 * narrow links, both on the loop thread since the downlink left Paho. A copy dropped as the second of a pair is
 * acknowledged like a spooled one: its twin is already durable. */
int km_daemon_command(struct km_daemon *d, int path, const char *topic, const void *payload, size_t len)
{
        int64_t ttl = 0;
        pthread_rwlock_rdlock(&d->route_lock);
        const struct km_class *k = km_route_match(&d->route, topic);
        if (k)
                ttl = k->ttl_ms;
        pthread_rwlock_unlock(&d->route_lock);
        if (ttl <= 0 || ttl > CMD_DEDUPE_TTL_MAX_MS)
                ttl = CMD_DEDUPE_TTL_MAX_MS;
        __atomic_fetch_add(&d->cmd_in[path ? 1 : 0], 1, __ATOMIC_RELAXED);
        /* Decision and push under one lock: otherwise the MQTT thread could decide to
         * publish c0, the loop publish c1 (whose other copy it had not seen), and c0
         * land behind c1. Neither holds it long: a push from another thread than the
         * loop never waits for the loop (km_spool_push refuses with -EAGAIN instead). */
        pthread_mutex_lock(&d->cmd_mu);
        uint64_t hash = km_dedupe_hash(topic, payload, len);
        if (km_dedupe_take(&d->cmd_dedupe, path, hash, km_now_ms(), ttl)) {
                pthread_mutex_unlock(&d->cmd_mu);
                uint64_t n = __atomic_add_fetch(&d->cmd_duplicates, 1, __ATOMIC_RELAXED);
                KM_LOG(n <= 10 || n % 1000 == 0 ? KM_LOG_INFO : KM_LOG_DEBUG, "cmd",
                       "'%s' came over %s after the other path brought it: not published again (%llu so far)", topic,
                       path == KM_CMD_NARROW ? "a narrow link" : "MQTT", (unsigned long long)n);
                return 0;
        }
        int rc = ingest(d, KM_DIR_DOWN, topic, NULL, payload, len, false, NULL);
        if (rc < 0)
                km_dedupe_untake(&d->cmd_dedupe, path, hash); /* it comes again */
        pthread_mutex_unlock(&d->cmd_mu);
        /* Every command taken says its path; a narrow link logs its own line with its
         * name and key (gateway/narrow.c deliver_command). */
        if (path == KM_CMD_MQTT)
                KM_LOG(rc < 0 ? KM_LOG_WARNING : KM_LOG_NOTICE, "cmd", "'%s' (%zu bytes) over mqtt, the center broker's session: %s",
                       topic, len, rc < 0 ? strerror(-rc) : "taken");
        return rc;
}

static struct km_peer *find_peer(const struct km_daemon *d, const char *name)
{
        for (size_t i = 0; i < d->npeers; i++)
                if (strcmp(d->peers[i].name, name) == 0)
                        return (struct km_peer *)&d->peers[i];
        return NULL;
}

int km_daemon_peer_add(struct km_daemon *d, const char *name)
{
        if (find_peer(d, name))
                return 0;
        if (d->npeers == KM_MAX_PEERS)
                return -ENOSPC;
        struct km_peer *p = &d->peers[d->npeers];
        if (!(p->name = strdup(name)))
                return -ENOMEM;
        p->state = KM_PEER_UNKNOWN;
        d->npeers++;
        return 0;
}

int km_daemon_peer_state(const struct km_daemon *d, const char *name)
{
        const struct km_peer *p = find_peer(d, name);
        return p ? p->state : KM_PEER_UNKNOWN;
}

const char *km_peer_state_name(int state)
{
        static const char *const names[] = { "unknown", "offline", "online" };
        return state >= KM_PEER_UNKNOWN && state <= KM_PEER_ONLINE ? names[state + 1] : "?";
}

void km_daemon_peer_set_state(struct km_daemon *d, const char *name, int state)
{
        struct km_peer *p = find_peer(d, name);
        if (!p && (km_daemon_peer_add(d, name) < 0 || !(p = find_peer(d, name))))
                return;
        if (p->state == state)
                return;
        KM_LOG(KM_LOG_NOTICE, "cmd", "%s is %s over MQTT: its commands go %s", name, km_peer_state_name(state),
               state == KM_PEER_ONLINE ? "through its MQTT session" : "down its narrow links");
        p->state = state;
        km_daemon_kick(d); /* held commands may leave now */
}

/* Routes topic (or, with cls_name, takes that class) and pushes; see km_daemon_ingest. */
static int ingest_ex(struct km_daemon *d, int dir, const char *topic, const char *cls_name, const void *payload,
                     size_t len, bool retain, const char *ckey_suffix, const struct ingest_extra *x)
{
        char ckey[512], cls[64];
        int64_t now = km_daemon_now(d);
        struct km_msg m = { .created_ms = now, .dir = (uint8_t)dir, .qos = 1, .topic = topic,
                            .payload = payload, .len = len, .cls = cls, .ckey = ckey,
                            .origin = x ? x->origin : NULL, .oid = x ? x->oid : 0 };
        const char *rt = x && x->route_topic ? x->route_topic : topic;
        int rc;

        pthread_rwlock_rdlock(&d->route_lock);
        const struct km_class *k = cls_name          ? km_route_find(&d->route, cls_name)
                                   : x && x->prio >= 0 ? km_route_by_priority(&d->route, x->prio)
                                                       : km_route_match(&d->route, rt);
        if (k) {
                snprintf(cls, sizeof(cls), "%s", k->name);
                m.prio = (uint8_t)k->priority;
                m.expires_ms = k->ttl_ms ? m.created_ms + k->ttl_ms : 0;
                m.flags = (k->droppable ? KM_MSG_DROPPABLE : 0) | (retain ? KM_MSG_RETAIN : 0);
                size_t kl = km_route_coalesce_key(k, topic, ckey, sizeof(ckey));
                if (kl && ckey_suffix && snprintf(ckey + kl, sizeof(ckey) - kl, "|%s", ckey_suffix) < 0)
                        ckey[kl] = '\0';
        }
        pthread_rwlock_unlock(&d->route_lock);
        if (!k) {
                /* Only a config that narrowed the catch-all class gets here: say so. */
                if (__atomic_fetch_add(&d->unrouted, 1, __ATOMIC_RELAXED) % 1000 == 0)
                        KM_LOG(KM_LOG_WARNING, "route", "no class matches '%s': not forwarded (%llu so far)", topic,
                               (unsigned long long)d->unrouted + 1);
                return -ENOENT;
        }
        /* The caller acknowledges to its broker only when this returns 0. A storage
         * fault refuses at once (the spool retries the disk by itself): the broker keeps
         * the message, and no thread, the loop least of all, waits for the disk. */
        rc = km_spool_push(d->spool, &m);
        if (rc == 0 && x && x->id_out)
                *x->id_out = m.id;
        if (rc < 0 && rc != -EMSGSIZE && __atomic_fetch_add(&d->rejected, 1, __ATOMIC_RELAXED) % 1000 == 0)
                KM_LOG(KM_LOG_WARNING, "spool", "not stored, not acknowledged: a message on '%s' (%s; %llu so far)", topic,
                       strerror(-rc), (unsigned long long)__atomic_load_n(&d->rejected, __ATOMIC_RELAXED));
        if (rc == -EMSGSIZE)
                KM_LOG(KM_LOG_ERR, "spool", "message on '%s' too large (%zu bytes): not stored", topic, len);
        return rc;
}

int km_daemon_ingest_class(struct km_daemon *d, int dir, const char *topic, const char *cls, const void *payload,
                           size_t len, bool retain, uint64_t *id)
{
        struct ingest_extra x = { .prio = -1, .id_out = id };
        pthread_rwlock_rdlock(&d->route_lock);
        bool known = km_route_find(&d->route, cls) != NULL;
        pthread_rwlock_unlock(&d->route_lock);
        return ingest_ex(d, dir, topic, known ? cls : NULL, payload, len, retain, NULL, &x);
}

int km_daemon_ingest_keyed(struct km_daemon *d, int dir, const char *topic, const void *payload, size_t len,
                           bool retain, const char *ckey_suffix)
{
        return ingest(d, dir, topic, NULL, payload, len, retain, ckey_suffix);
}

/* Messages of the classes l may carry that wait in the spool. */
static uint64_t link_backlog(struct km_daemon *d, const struct km_link *l, const struct km_spool_stats *st)
{
        uint64_t n = 0;
        for (size_t i = 0; i < d->route.n; i++)
                if (km_link_may_carry(l, d->route.cls[i].name))
                        n += st->depth_prio[l->dir][d->route.cls[i].priority];
        return n;
}

/* A link's state as JSON: upward on link/<name> (class status, coalesced per link, so
 * the center learns it), retained, so that a center (its page, its board of bases)
 * started after the base knows the base's links at once and not at the next status;
 * and retained on the local broker as <topic_prefix>/<node>/link/<name>, the same topic
 * the center sees. */
static void publish_link_status(struct km_daemon *d, struct km_link *l)
{
        char json[1024], topic[256], since[32];
        struct km_spool_stats st;
        time_t t = (time_t)(l->since_ms / 1000);
        struct tm tm;

        if (l->dir != KM_DIR_UP || d->stopping || !d->node.link_status)
                return;
        km_spool_stats(d->spool, &st);
        gmtime_r(&t, &tm);
        strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &tm);
        /* What it sent since the last status (every LINK_STATUS_US and at each change),
         * and a narrow link's dictionary, so that the center sees whether each base
         * reads the same list as its own end (gateway/dict.c). */
        int64_t now = km_mono_ms();
        double interval = l->mark_mono ? (double)(now - l->mark_mono) / 1000 : 0;
        struct km_narrow_stats ns;
        char dict[48] = "";
        if (km_plugin_link_frames(l, &ns) == 0 && ns.dict_topics)
                snprintf(dict, sizeof(dict), ",\"dictionary\":\"%08x/%zu\"", (unsigned)ns.dict_fingerprint, ns.dict_topics);
        /* A reason may hold a plugin's or a peer's words: quoted as JSON. */
        struct km_control_buf why = { 0 };
        km_control_json_str(&why, l->reason);
        int n = snprintf(json, sizeof(json),
                         "{\"link\":\"%s\",\"type\":\"%s\",\"state\":\"%s\",\"reason\":%s,\"since\":\"%s\","
                         "\"order\":%ld,\"signal\":%d,\"sent\":%llu,\"acked\":%llu,\"inflight\":%u,"
                         "\"bytes_sent\":%llu,\"transitions\":%llu,\"backlog\":%llu,\"ack\":\"%s\",\"ack_ms\":%lld,"
                         "\"interval_s\":%.1f,\"sent_interval\":%llu,\"bytes_interval\":%llu%s}",
                         l->name, l->conf.type ? l->conf.type : "", km_link_shown_state(l),
                         why.p && !why.failed ? why.p : "\"\"", since,
                         l->order, l->signal, (unsigned long long)l->sent, (unsigned long long)l->acked, l->inflight,
                         (unsigned long long)l->bytes_sent, (unsigned long long)l->transitions,
                         (unsigned long long)link_backlog(d, l, &st), l->conf.ack ? l->conf.ack : "peer",
                         (long long)l->ack_ms, interval, (unsigned long long)(l->sent - l->sent_mark),
                         (unsigned long long)(l->bytes_sent - l->bytes_mark), dict);
        km_control_buf_free(&why);
        if (n < 0 || (size_t)n >= sizeof(json))
                return;
        l->sent_mark = l->sent;
        l->bytes_mark = l->bytes_sent;
        l->mark_mono = now;
        snprintf(topic, sizeof(topic), "link/%s", l->name);
        publish_own(d, topic, json, (size_t)n, true, 3); /* link, type, state stay */
}

static int on_announce(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)s, (void)usec;
        node_status(ud, false);
        return 0;
}

static void on_link_state(struct km_link *l, void *ud)
{
        struct km_daemon *d = ud;
        publish_link_status(d, l);
        /* The local broker states a packet limit: the retained node status spooled for
         * it before the limit was known may not fit (it is then set aside); say it again,
         * trimmed to fit, rather than leave the retained copy missing until the next
         * LINK_STATUS_US. */
        if (l->dir == KM_DIR_DOWN && l->state == KM_LINK_UP && l->max_packet && !d->stopping)
                publish_node_status(d);
        /* A center sends this base's commands down narrow links until its status says
         * online over MQTT, and believes only a status that came over MQTT (not one
         * relayed from a narrow link): say online again once an MQTT link may carry it
         * (after hold, when it came back), instead of at the next LINK_STATUS_US. */
        if (l->dir != KM_DIR_UP || l->state != KM_LINK_UP || !l->conf.type || strcmp(l->conf.type, "mqtt") != 0 ||
            d->stopping || !d->node.link_status || strcmp(d->node.role, "center") == 0)
                return;
        uint64_t us = (uint64_t)((l->lost_once ? l->conf.hold_ms : 0) + 100) * 1000;
        if (!d->announce_src)
                sd_event_add_time_relative(d->ev, &d->announce_src, CLOCK_MONOTONIC, us, 10000, on_announce, d);
        else {
                sd_event_source_set_time_relative(d->announce_src, us);
                sd_event_source_set_enabled(d->announce_src, SD_EVENT_ONESHOT);
        }
}

void km_daemon_counters(struct km_daemon *d, char *buf, size_t len)
{
        struct km_spool_stats st;
        uint64_t up = 0, down = 0;

        km_spool_stats(d->spool, &st);
        for (size_t i = 0; i < d->nlinks; i++) {
                if (d->links[i]->dir == KM_DIR_UP)
                        up += d->links[i]->acked;
                else
                        down += d->links[i]->acked;
        }
        snprintf(buf, len,
                 "in=%llu spooled=%llu forwarded=%llu delivered_local=%llu dropped=%llu expired=%llu coalesced=%llu bad_input=%llu refused=%llu spool_bytes=%llu"
                 " cmd_in_mqtt=%llu cmd_in_narrow=%llu cmd_duplicates=%llu cmd_sent_narrow=%llu cmd_settled_mqtt=%llu"
                 " set_aside=%llu set_aside_held=%llu",
                 (unsigned long long)st.pushed, (unsigned long long)(st.depth[KM_DIR_UP] + st.depth[KM_DIR_DOWN]),
                 (unsigned long long)up, (unsigned long long)down, (unsigned long long)st.dropped,
                 (unsigned long long)st.expired, (unsigned long long)st.coalesced,
                 (unsigned long long)__atomic_load_n(&d->bad_input, __ATOMIC_RELAXED), (unsigned long long)d->refused,
                 (unsigned long long)st.bytes,
                 (unsigned long long)__atomic_load_n(&d->cmd_in[KM_CMD_MQTT], __ATOMIC_RELAXED),
                 (unsigned long long)__atomic_load_n(&d->cmd_in[KM_CMD_NARROW], __ATOMIC_RELAXED),
                 (unsigned long long)__atomic_load_n(&d->cmd_duplicates, __ATOMIC_RELAXED),
                 (unsigned long long)d->cmd_sent_narrow, (unsigned long long)d->cmd_settled_mqtt,
                 (unsigned long long)st.set_aside, (unsigned long long)st.dead);
}

/* One turn of work: what the other threads handed over, then sends, then the spool's
 * group commit. */
static void turn(struct km_daemon *d)
{
        km_mailbox_run(&d->mb);
        if (!d->stopping) /* a drain waits for acks; it sends nothing new */
                km_sched_pump_all(d->links, d->nlinks, d->spool, &d->route);
        km_spool_commit(d->spool); /* a failure is the spool's storage fault: it logs and retries */
}

static int on_mail(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct km_daemon *d = ud;
        (void)s, (void)fd, (void)revents;
        km_mailbox_clear(&d->mb);
        turn(d);
        return 0;
}

static int on_turn(sd_event_source *s, void *ud)
{
        (void)s;
        turn(ud);
        return 0;
}

static int rearm(sd_event_source *s, uint64_t us)
{
        sd_event_source_set_time_relative(s, us);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_housekeeping(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_daemon *d = ud;
        int64_t now = km_mono_ms();
        (void)usec;
        for (size_t i = 0; i < d->nlinks; i++)
                km_link_check(d->links[i], now);
        turn(ud);
        return rearm(s, HOUSEKEEPING_US);
}

static int on_link_status(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_daemon *d = ud;
        (void)usec;
        for (size_t i = 0; i < d->nlinks; i++)
                publish_link_status(d, d->links[i]);
        publish_node_status(d);
        return rearm(s, LINK_STATUS_US);
}

static int on_expire(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_daemon *d = ud;
        (void)usec;
        km_spool_expire(d->spool, km_daemon_now(d));
        return rearm(s, EXPIRE_US);
}

static int on_stats(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_daemon *d = ud;
        char line[768];
        (void)usec;
        km_daemon_counters(d, line, sizeof(line));
        if (d->live)
                km_control_live(d, stdout);
        if (d->node.stats_interval_ms > 0 && (!d->live || d->node.stats_interval_ms <= 1000))
                KM_LOG(KM_LOG_INFO, "stats", "%s", line);
        return rearm(s, d->live ? 1000000ULL : (uint64_t)d->node.stats_interval_ms * 1000);
}

/* What a reload applies: the classes and routes ([class NAME]). The narrow links' key
 * files are read again too, but under the paths they started with, so a changed
 * key_file is a restart like any other key. */
static bool reload_applies(const char *section, const char *key)
{
        (void)key;
        return strncmp(section, "class ", 6) == 0;
}

static int strv_add(struct km_strv *v, const char *s)
{
        char **n = realloc(v->v, (v->n + 2) * sizeof(*n));
        if (!n)
                return -ENOMEM;
        v->v = n;
        if (!(n[v->n] = strdup(s)))
                return -ENOMEM;
        n[++v->n] = NULL;
        return 0;
}

static int reload(struct km_daemon *d)
{
        struct km_conf c;
        struct km_route r;
        int rc;

        km_strv_free(&d->reload_errors);
        km_strv_free(&d->reload_restart);
        if (!d->config_path) {
                KM_LOG(KM_LOG_NOTICE, "config", "reload: running on the embedded default, nothing to reload");
                return 0;
        }
        bool routed = false; /* r holds memory: km_route_load frees only on -ENOMEM */
        rc = km_conf_load(&c, d->config_path, NULL);
        c.reloading = true;
        if (rc == 0 && c.nerrors == 0 && d->check_config)
                d->check_config(&c);
        if (rc == 0 && c.nerrors == 0) {
                rc = km_route_load(&r, &c);
                routed = rc != -ENOMEM;
        } else if (rc == 0) {
                rc = -EINVAL;
        }
        if (rc < 0 || c.nerrors) {
                for (size_t i = 0; i < c.nerrors; i++) {
                        KM_LOG(KM_LOG_ERR, "config", "%s", c.errors[i]);
                        strv_add(&d->reload_errors, c.errors[i]);
                }
                if (rc < 0 && !c.nerrors) {
                        char why[600];
                        snprintf(why, sizeof(why), "%s: %s", d->config_path, strerror(-rc));
                        strv_add(&d->reload_errors, why);
                }
                KM_LOG(KM_LOG_ERR, "config", "reload of %s failed (%s): keeping the running routes", d->config_path,
                       rc < 0 && !c.nerrors ? strerror(-rc) : "errors above");
                if (routed)
                        km_route_deinit(&r);
                km_conf_deinit(&c);
                d->bad_config_reloads++;
                return -EINVAL;
        }
        for (size_t i = 0; i < c.nwarnings; i++)
                KM_LOG(KM_LOG_WARNING, "config", "%s", c.warnings[i]);
        pthread_rwlock_wrlock(&d->route_lock);
        struct km_route old = d->route;
        d->route = r;
        pthread_rwlock_unlock(&d->route_lock);
        km_route_deinit(&old);
        /* Said, not refused: the routes did change, and refusing them because a link's
         * uri changed too would keep an operator from fixing a class until a restart. */
        km_conf_changes(&d->started_conf, &c, reload_applies, &d->reload_restart);
        km_conf_deinit(&c);
        KM_LOG(KM_LOG_NOTICE, "config", "reloaded routes and classes from %s (%zu classes)", d->config_path, r.n);
        for (size_t i = 0; i < d->reload_restart.n; i++)
                KM_LOG(KM_LOG_WARNING, "config", "reload: restart needed: %s (changed, not applied)", d->reload_restart.v[i]);
        km_plugin_reload_keys(d);
        return 0;
}

int km_daemon_reload(struct km_daemon *d)
{
        return reload(d);
}

/* The drain runs on the loop itself, so that every link's acknowledgements keep
 * arriving the way they always do (a mailbox post, an io source): ingest stops first so
 * the spool stops growing, nothing new is sent, and the loop ends once nothing is in
 * flight or DRAIN_MS passed; whatever is left stays in the spool. */
static int on_drain_check(sd_event_source *s, uint64_t usec, void *ud)
{
        struct km_daemon *d = ud;
        uint32_t inflight = 0;
        (void)usec;
        for (size_t i = 0; i < d->nlinks; i++)
                if (d->links[i]->state == KM_LINK_UP)
                        inflight += d->links[i]->inflight > d->links[i]->parked
                                            ? d->links[i]->inflight - d->links[i]->parked : 0;
        if (!inflight || km_mono_ms() > d->drain_until_mono)
                return sd_event_exit(sd_event_source_get_event(s), 0);
        return rearm(s, 20000);
}

static void start_drain(struct km_daemon *d)
{
        sd_notify(0, "STOPPING=1");
        __atomic_store_n(&d->stopping, true, __ATOMIC_RELEASE); /* atomic: any thread may read it */
        d->drain_until_mono = km_mono_ms() + DRAIN_MS;
        for (size_t i = 0; i < d->nstop; i++)
                d->on_stop[i](d->on_stop_ud[i]);
        if (sd_event_add_time_relative(d->ev, NULL, CLOCK_MONOTONIC, 0, 1000, on_drain_check, d) < 0)
                sd_event_exit(d->ev, 0);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *ud)
{
        struct km_daemon *d = ud;
        (void)s;
        if (si->ssi_signo == SIGHUP) {
                sd_notify(0, "RELOADING=1");
                reload(d);
                sd_notify(0, "READY=1");
                return 0;
        }
        if (d->stopping) /* a second signal: stop waiting */
                return sd_event_exit(sd_event_source_get_event(s), 0);
        KM_LOG(KM_LOG_NOTICE, "main", "%s: draining and stopping", strsignal((int)si->ssi_signo));
        start_drain(d);
        return 0;
}

/* Test only (tests/integration/test_systemd.c), never in production: with
 * KUIMEN_TEST_HOOKS=1 in the environment, SIGUSR2 stalls the loop for the milliseconds
 * sent with sigqueue() (1 to 60000; plain kill(): 2000), so that a test can watch the
 * watchdog pings stop while the loop hangs. Without the variable SIGUSR2 is untouched. */
static bool test_hooks(void)
{
        const char *e = getenv("KUIMEN_TEST_HOOKS");
        return e && strcmp(e, "1") == 0;
}

static int on_test_stall(sd_event_source *s, const struct signalfd_siginfo *si, void *ud)
{
        int ms = si->ssi_int > 0 && si->ssi_int <= 60000 ? si->ssi_int : 2000;
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        (void)s;
        (void)ud;
        KM_LOG(KM_LOG_WARNING, "main", "test hook: stalling the loop for %d ms", ms);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        return 0;
}

int km_daemon_init(struct km_daemon *d, struct km_node_conf *n, struct km_conf *c, const char *config_path)
{
        int rc;

        /* First, so that deinit is safe whatever fails below. */
        memset(d, 0, sizeof(*d));
        d->mb.fd = -1;
        pthread_mutex_init(&d->cmd_mu, NULL);
        /* Blocked before any thread starts (the spool's, a name lookup's), so that only the
         * loop's signalfd ever sees them. */
        sigset_t ss;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        if (test_hooks())
                sigaddset(&ss, SIGUSR2);
        pthread_rwlock_init(&d->route_lock, NULL);
        km_status_init(&d->status);
        if (pthread_sigmask(SIG_BLOCK, &ss, NULL) != 0)
                return -EINVAL;
        d->node = *n;
        memset(n, 0, sizeof(*n));
        d->started_ms = km_now_ms();
        if (config_path && !(d->config_path = strdup(config_path)))
                return -ENOMEM;
        if ((rc = km_conf_copy(&d->started_conf, c)) < 0)
                return rc;
        if ((rc = km_route_load(&d->route, c)) < 0)
                return rc;
        if ((rc = km_mailbox_init(&d->mb)) < 0)
                return rc;
        if ((rc = km_dedupe_init(&d->cmd_dedupe, 4096)) < 0)
                return rc;
        struct km_spool_opts so = {
                .path = d->node.spool,
                .max_bytes = (int64_t)d->node.spool_max_mb << 20,
                .sync_always = strcmp(d->node.sync, "always") == 0,
                .sync_interval_ms = d->node.sync_interval_ms,
                .wake = wake_loop,
                .wake_ud = d,
                .now = spool_clock,
                .now_ud = d,
        };
        if ((rc = km_spool_open(&d->spool, &so)) < 0)
                return rc;
        if ((rc = sd_event_new(&d->ev)) < 0)
                return rc;
        if ((rc = sd_event_add_signal(d->ev, NULL, SIGTERM, on_signal, d)) < 0 ||
            (rc = sd_event_add_signal(d->ev, NULL, SIGINT, on_signal, d)) < 0 ||
            (rc = sd_event_add_signal(d->ev, NULL, SIGHUP, on_signal, d)) < 0 ||
            (rc = sd_event_add_io(d->ev, NULL, d->mb.fd, EPOLLIN, on_mail, d)) < 0 ||
            (rc = sd_event_add_time_relative(d->ev, NULL, CLOCK_MONOTONIC, HOUSEKEEPING_US, 10000, on_housekeeping, d)) < 0 ||
            (rc = sd_event_add_time_relative(d->ev, NULL, CLOCK_MONOTONIC, EXPIRE_US, 1000000, on_expire, d)) < 0 ||
            (rc = sd_event_add_time_relative(d->ev, NULL, CLOCK_MONOTONIC, LINK_STATUS_US, 1000000, on_link_status, d)) < 0)
                return rc;
        if (test_hooks() && (rc = sd_event_add_signal(d->ev, NULL, SIGUSR2, on_test_stall, d)) < 0)
                return rc;
        if ((rc = sd_event_add_defer(d->ev, &d->turn_src, on_turn, d)) < 0 ||
            (rc = sd_event_source_set_enabled(d->turn_src, SD_EVENT_OFF)) < 0)
                return rc;
        d->loop_thread = pthread_self();
        km_spool_set_loop_thread(d->spool);
        /* The watchdog is fed by the loop itself: a hung loop stops the pings. */
        sd_event_set_watchdog(d->ev, true);
        return 0;
}

/* After the loop: what the other threads still handed over, then everything into SQLite. */
static void drain(struct km_daemon *d)
{
        if (!d->stopping) { /* the loop ended by itself (an error) */
                __atomic_store_n(&d->stopping, true, __ATOMIC_RELEASE);
                for (size_t i = 0; i < d->nstop; i++)
                        d->on_stop[i](d->on_stop_ud[i]);
        }
        km_mailbox_run(&d->mb);
        km_spool_checkpoint(d->spool);
}

int km_daemon_run(struct km_daemon *d)
{
        int rc;
        sd_event_source *stats = NULL;

        if (d->live || d->node.stats_interval_ms > 0)
                sd_event_add_time_relative(d->ev, &stats, CLOCK_MONOTONIC,
                                           d->live ? 1000000ULL : (uint64_t)d->node.stats_interval_ms * 1000, 100000,
                                           on_stats, d);
        publish_node_status(d);
        sd_notify(0, "READY=1\nSTATUS=forwarding");
        KM_LOG(KM_LOG_NOTICE, "main", "node %s (%s) running; spool %s, sync %s", d->node.name, d->node.role,
               d->node.spool, d->node.sync);
        rc = sd_event_loop(d->ev);
        drain(d);
        sd_event_source_unref(stats);
        char line[768];
        km_daemon_counters(d, line, sizeof(line));
        KM_LOG(KM_LOG_NOTICE, "main", "stopped: %s", line);
        return rc < 0 ? 1 : 0;
}

void km_daemon_deinit(struct km_daemon *d)
{
        for (size_t i = 0; i < d->nlinks; i++) {
                km_link_deinit(d->links[i]);
                free(d->links[i]);
        }
        sd_event_source_disable_unref(d->announce_src);
        km_calls_free(d->calls); /* their tables live in the spool's file */
        km_incidents_free(d->incidents);
        km_spool_close(d->spool);
        d->turn_src = sd_event_source_disable_unref(d->turn_src);
        sd_event_unref(d->ev);
        if (d->mb.fd > 0)
                km_mailbox_deinit(&d->mb);
        km_route_deinit(&d->route);
        pthread_rwlock_destroy(&d->route_lock);
        km_status_deinit(&d->status);
        km_dedupe_deinit(&d->cmd_dedupe);
        pthread_mutex_destroy(&d->cmd_mu);
        for (size_t i = 0; i < d->npeers; i++)
                free(d->peers[i].name);
        km_node_conf_release(&d->node);
        km_conf_deinit(&d->started_conf);
        km_strv_free(&d->reload_errors);
        km_strv_free(&d->reload_restart);
        free(d->config_path);
        free(d->topic_prefix);
}

/* SPDX-License-Identifier: MIT */
/* Plugin host: the ABI's loader, the host API on the event loop, and the frame-based narrow link. */
#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "frame.h"
#include "link.h"
#include "log.h"
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
 */

#define QMAX 64        /* messages handed over and not yet acknowledged */
#define FRAME_WINDOW 8 /* frames in flight */
#define MAXFD 8
#define MAXTIMER 16

struct qmsg {
        bool used, framed;
        uint64_t id;
        uint32_t cookie;
        char *topic;
        uint8_t *payload;
        size_t len, frag_off;
        int64_t created;
        uint8_t cls;
};

struct watch {
        int fd;
        sd_event_source *src;
        km_plugin_fd_cb cb;
        void *ud;
};

struct ptimer {
        int id;
        sd_event_source *src;
        km_plugin_timer_cb cb;
        void *ud;
        struct km_plugin_link *h;
};

struct kv {
        char *key, *value;
};

/* The handle the plugin sees: one per link. */
struct km_plugin_link {
        struct km_daemon *d;
        struct km_link *link;
        void *dl;
        const struct km_plugin_desc *desc;
        void *state;
        bool open;
        struct kv *kv;
        size_t nkv;
        bool center;
        uint32_t origin;
        struct km_strv peers;
        char *prefix;
        int64_t rto_ms;
        struct km_frame_tx tx;
        struct km_frame_rx rx;
        bool busy;           /* the device said -EAGAIN: wait for ready() */
        bool ack_owed;       /* center: an ack frame waits for the device */
        uint32_t ack_to;     /* whose frames it acknowledges */
        struct qmsg q[QMAX];
        struct watch w[MAXFD];
        struct ptimer t[MAXTIMER];
        int next_timer;
        sd_event_source *rto_src;
        uint8_t *buf;
        size_t bufcap;
        uint32_t mtu;
        uint64_t frames_in, frames_bad;
};

static const char *const narrow_keys[] = { "peers", "rto", "topic_prefix", NULL };

static uint32_t node_id(const char *name)
{
        uint32_t h = 2166136261u;
        while (*name)
                h = (h ^ (uint8_t)*name++) * 16777619u;
        return h;
}

/* ---- host API ------------------------------------------------------------------- */

static void api_log(km_plugin_link *h, int level, const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        KM_LOG(level, "link", "%s: %s", h->link->name, msg);
}

static const char *api_config(km_plugin_link *h, const char *key)
{
        for (size_t i = 0; i < h->nkv; i++)
                if (strcmp(h->kv[i].key, key) == 0)
                        return h->kv[i].value;
        return NULL;
}

static int on_fd(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct watch *w = ud;
        (void)s;
        w->cb(w->ud, fd, revents);
        return 0;
}

static int api_watch_fd(km_plugin_link *h, int fd, uint32_t events, km_plugin_fd_cb cb, void *ud)
{
        for (int i = 0; i < MAXFD; i++)
                if (h->w[i].src && h->w[i].fd == fd) {
                        h->w[i].cb = cb, h->w[i].ud = ud;
                        return sd_event_source_set_io_events(h->w[i].src, events);
                }
        for (int i = 0; i < MAXFD; i++)
                if (!h->w[i].src) {
                        h->w[i] = (struct watch){ .fd = fd, .cb = cb, .ud = ud };
                        return sd_event_add_io(h->d->ev, &h->w[i].src, fd, events, on_fd, &h->w[i]);
                }
        return -ENOSPC;
}

static int api_unwatch_fd(km_plugin_link *h, int fd)
{
        for (int i = 0; i < MAXFD; i++)
                if (h->w[i].src && h->w[i].fd == fd) {
                        h->w[i].src = sd_event_source_disable_unref(h->w[i].src);
                        return 0;
                }
        return -ENOENT;
}

static int on_ptimer(sd_event_source *s, uint64_t usec, void *ud)
{
        struct ptimer *t = ud;
        (void)usec;
        km_plugin_timer_cb cb = t->cb;
        void *cud = t->ud;
        t->src = sd_event_source_unref(s);
        t->id = 0;
        cb(cud);
        return 0;
}

static int api_timer(km_plugin_link *h, uint64_t usec, km_plugin_timer_cb cb, void *ud)
{
        for (int i = 0; i < MAXTIMER; i++)
                if (!h->t[i].src) {
                        int rc = sd_event_add_time_relative(h->d->ev, &h->t[i].src, CLOCK_MONOTONIC, usec, 1000,
                                                            on_ptimer, &h->t[i]);
                        if (rc < 0)
                                return rc;
                        if (++h->next_timer <= 0)
                                h->next_timer = 1;
                        h->t[i].id = h->next_timer;
                        h->t[i].cb = cb, h->t[i].ud = ud, h->t[i].h = h;
                        return h->t[i].id;
                }
        return -ENOSPC;
}

static void api_cancel_timer(km_plugin_link *h, int id)
{
        for (int i = 0; i < MAXTIMER; i++)
                if (h->t[i].src && h->t[i].id == id) {
                        h->t[i].src = sd_event_source_disable_unref(h->t[i].src);
                        h->t[i].id = 0;
                }
}

static void forget_queue(km_plugin_link *h)
{
        for (int i = 0; i < QMAX; i++) {
                free(h->q[i].topic);
                free(h->q[i].payload);
                h->q[i] = (struct qmsg){ 0 };
        }
        km_frame_tx_reset(&h->tx);
}

static void kick(km_plugin_link *h);

static void api_report(km_plugin_link *h, const struct km_plugin_report *r)
{
        static const enum km_link_state map[] = { KM_LINK_DOWN, KM_LINK_DEGRADED, KM_LINK_UP };
        enum km_link_state st = r->state <= KM_PLUGIN_UP ? map[r->state] : KM_LINK_DOWN;
        if (r->mtu >= KM_FRAME_MTU_MIN && r->mtu <= h->bufcap)
                h->mtu = r->mtu;
        h->link->signal = r->signal;
        /* The scheduler sends only on UP links; a degraded device still carries. */
        if (st == KM_LINK_DEGRADED)
                st = KM_LINK_UP;
        if (st != KM_LINK_UP && h->link->state == KM_LINK_UP)
                forget_queue(h); /* the spool replays them on the next UP */
        km_link_set_state(h->link, st, r->reason ? r->reason : km_link_state_name(st));
        if (st == KM_LINK_UP)
                kick(h);
}

static void ingest_delivered(km_plugin_link *h, const struct km_frame_msg *m, const char *origin)
{
        char topic[KM_FRAME_TOPIC_MAX + 128];
        snprintf(topic, sizeof(topic), "%s/%s/%s", h->prefix, origin, m->topic ? m->topic : "unknown");
        km_daemon_relay(h->d, topic, m->topic ? m->topic : "", m->payload, m->len, origin, m->id);
}

/* A complete message from the peer: durable in our spool before the frame is acked. */
static int on_deliver(void *ctx, const struct km_frame_msg *m)
{
        km_plugin_link *h = ctx;
        char name[32];
        const char *origin = NULL;
        for (size_t i = 0; i < h->peers.n && !origin; i++)
                if (node_id(h->peers.v[i]) == m->origin)
                        origin = h->peers.v[i];
        if (!origin) {
                snprintf(name, sizeof(name), "node-%08x", m->origin);
                origin = name;
        }
        ingest_delivered(h, m, origin);
        return 0;
}

static void on_done(void *ctx, uint64_t id)
{
        km_plugin_link *h = ctx;
        for (int i = 0; i < QMAX; i++)
                if (h->q[i].used && h->q[i].id == id) {
                        uint64_t sid = km_link_acked(h->link, h->q[i].cookie);
                        if (sid)
                                km_spool_ack(h->d->spool, sid);
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

static void api_received(km_plugin_link *h, const void *frame, size_t len)
{
        struct km_frame_rx_info info = { 0 };
        int rc = km_frame_rx_input(&h->rx, frame, len, km_now_ms(), on_deliver, h, &info);
        h->frames_in++;
        if (rc < 0) {
                if (h->frames_bad++ % 100 == 0)
                        KM_LOG(KM_LOG_WARNING, "link", "%s: frame refused (%s); %llu so far", h->link->name,
                               strerror(-rc), (unsigned long long)h->frames_bad);
                return;
        }
        if (info.has_ack)
                km_frame_tx_ack(&h->tx, &info.ack, on_done, on_restart, h);
        if (info.ack_due) {
                h->ack_owed = true;
                h->ack_to = info.origin;
        }
        kick(h);
}

static void api_sent(km_plugin_link *h, uint32_t token, int status)
{
        (void)token;
        if (status < 0 && h->frames_bad++ % 100 == 0)
                KM_LOG(KM_LOG_WARNING, "link", "%s: the device refused a frame (%s)", h->link->name, strerror(-status));
}

static void api_ready(km_plugin_link *h)
{
        h->busy = false;
        kick(h);
}

static const struct km_host_api host_api = {
        .abi_major = KM_PLUGIN_ABI_MAJOR,
        .abi_minor = KM_PLUGIN_ABI_MINOR,
        .struct_size = sizeof(struct km_host_api),
        .log = api_log,
        .config = api_config,
        .watch_fd = api_watch_fd,
        .unwatch_fd = api_unwatch_fd,
        .timer = api_timer,
        .cancel_timer = api_cancel_timer,
        .report = api_report,
        .received = api_received,
        .sent = api_sent,
        .ready = api_ready,
};

/* ---- sending -------------------------------------------------------------------- */

/* Hands one frame to the device; false when it is busy. */
static bool device_send(km_plugin_link *h, const uint8_t *frame, size_t len)
{
        static uint32_t token;
        int rc = h->desc->ops->send(h->state, frame, len, ++token);
        if (rc == -EAGAIN) {
                h->busy = true;
                return false;
        }
        if (rc < 0 && rc != -ENOTCONN)
                KM_LOG(KM_LOG_WARNING, "link", "%s: send: %s", h->link->name, strerror(-rc));
        return rc == 0;
}

/* Feeds the device while it takes frames: an owed ack, retransmissions, new frames. */
static void kick(km_plugin_link *h)
{
        int64_t now = km_now_ms();

        while (!h->busy && h->open) {
                if (h->ack_owed) {
                        struct km_frame_ack ack;
                        if (km_frame_rx_ack(&h->rx, h->ack_to, &ack) == 0) {
                                int n = km_frame_ack_encode(&ack, h->origin, h->buf, h->bufcap);
                                if (n > 0 && !device_send(h, h->buf, (size_t)n))
                                        return;
                        }
                        h->ack_owed = false;
                        continue;
                }
                if (h->link->state != KM_LINK_UP)
                        return;
                int n = km_frame_tx_due(&h->tx, now, h->rto_ms, h->buf, h->bufcap);
                if (n > 0) {
                        if (!device_send(h, h->buf, (size_t)n))
                                return;
                        continue;
                }
                struct km_frame_msg msgs[QMAX];
                int idx[QMAX], k = 0;
                for (int i = 0; i < QMAX; i++) {
                        struct qmsg *q = &h->q[i];
                        if (!q->used || q->framed)
                                continue;
                        msgs[k] = (struct km_frame_msg){ .id = q->id, .topic = q->topic, .payload = q->payload,
                                                         .len = q->len, .created_ms = q->created, .cls = q->cls,
                                                         .qos = 1, .frag_off = q->frag_off };
                        idx[k++] = i;
                }
                if (!k)
                        return;
                /* The queue is in arrival order only per slot; the frame wants id order. */
                for (int a = 1; a < k; a++)
                        for (int b = a; b > 0 && msgs[b].id < msgs[b - 1].id; b--) {
                                struct km_frame_msg tm = msgs[b];
                                msgs[b] = msgs[b - 1], msgs[b - 1] = tm;
                                int ti = idx[b];
                                idx[b] = idx[b - 1], idx[b - 1] = ti;
                        }
                struct km_frame_put put;
                n = km_frame_tx_encode(&h->tx, msgs, (size_t)k, h->mtu, NULL, now, h->buf, &put);
                if (n < 0) {
                        if (n != -EAGAIN)
                                KM_LOG(KM_LOG_ERR, "link", "%s: cannot frame message %llu: %s", h->link->name,
                                       (unsigned long long)msgs[0].id, strerror(-n));
                        return;
                }
                for (size_t i = 0; i < put.n_full; i++)
                        h->q[idx[i]].framed = true;
                if (put.n_full < (size_t)k)
                        h->q[idx[put.n_full]].frag_off = put.next_off;
                if (!device_send(h, h->buf, (size_t)n))
                        return; /* the frame waits in the window: retransmitted at rto */
        }
}

static int on_rto(sd_event_source *s, uint64_t usec, void *ud)
{
        km_plugin_link *h = ud;
        (void)usec;
        kick(h);
        sd_event_source_set_time_relative(s, (uint64_t)h->rto_ms * 250);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int narrow_send(struct km_link *l, const struct km_msg *m, uint32_t cookie)
{
        km_plugin_link *h = l->impl;
        for (int i = 0; i < QMAX; i++) {
                struct qmsg *q = &h->q[i];
                if (q->used)
                        continue;
                q->topic = strdup(m->topic);
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
                kick(h);
                return 0;
        }
        return -EAGAIN;
}

static void narrow_reset(struct km_link *l)
{
        forget_queue(l->impl);
}

static void narrow_destroy(struct km_link *l)
{
        km_plugin_link *h = l->impl;
        if (!h)
                return;
        if (h->open)
                h->desc->ops->close(h->state);
        for (int i = 0; i < MAXFD; i++)
                sd_event_source_disable_unref(h->w[i].src);
        for (int i = 0; i < MAXTIMER; i++)
                sd_event_source_disable_unref(h->t[i].src);
        sd_event_source_disable_unref(h->rto_src);
        forget_queue(h);
        km_frame_tx_deinit(&h->tx);
        km_frame_rx_deinit(&h->rx);
        for (size_t i = 0; i < h->nkv; i++)
                free(h->kv[i].key), free(h->kv[i].value);
        free(h->kv);
        km_strv_free(&h->peers);
        free(h->prefix);
        free(h->buf);
        if (h->dl)
                dlclose(h->dl);
        free(h);
        l->impl = NULL;
}

static const struct km_link_ops narrow_ops = { .send = narrow_send, .destroy = narrow_destroy, .reset = narrow_reset };

/* ---- loading -------------------------------------------------------------------- */

/* dlopens <dir>/<type>.so and checks its descriptor; logs why not. */
static const struct km_plugin_desc *load(const char *dir, const char *type, void **dl, char *why, size_t wl)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s.so", dir, type);
        if (access(path, F_OK) < 0) {
                snprintf(why, wl, "unknown link type '%s': no plugin %s (built in: mqtt)", type, path);
                *dl = NULL;
                return NULL;
        }
        *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!*dl) {
                snprintf(why, wl, "cannot load %s: %s", path, dlerror());
                return NULL;
        }
        km_plugin_entry entry = (km_plugin_entry)(uintptr_t)dlsym(*dl, KM_PLUGIN_ENTRY);
        const struct km_plugin_desc *desc = entry ? entry(KM_PLUGIN_ABI_MAJOR, KM_PLUGIN_ABI_MINOR) : NULL;
        if (!desc)
                snprintf(why, wl, "%s: no usable %s()", path, KM_PLUGIN_ENTRY);
        else if (desc->abi_major != KM_PLUGIN_ABI_MAJOR)
                snprintf(why, wl, "%s: plugin ABI %u, host ABI %u", path, desc->abi_major, KM_PLUGIN_ABI_MAJOR);
        else if (desc->struct_size < sizeof(struct km_plugin_desc) || !desc->ops || !desc->ops->open ||
                 !desc->ops->send || !desc->ops->close || !desc->ops->mtu)
                snprintf(why, wl, "%s: descriptor too short or incomplete", path);
        else if (!desc->name || strcmp(desc->name, type) != 0)
                snprintf(why, wl, "%s: names itself '%s'", path, desc->name ? desc->name : "");
        else
                return desc;
        dlclose(*dl);
        *dl = NULL;
        return NULL;
}

static bool in_list(const char *const *list, const char *key)
{
        for (; list && *list; list++)
                if (strcmp(*list, key) == 0)
                        return true;
        return false;
}

/* Marks the plugin's and the narrow link's keys used; collects them for api_config. */
static void take_keys(struct km_conf *c, const char *section, const struct km_plugin_desc *desc, struct kv **kv,
                      size_t *nkv)
{
        for (size_t i = 0; i < c->n; i++) {
                struct km_conf_entry *e = &c->e[i];
                if (strcmp(e->section, section) != 0)
                        continue;
                bool mine = in_list(desc->keys, e->key) || in_list(narrow_keys, e->key);
                if (mine)
                        e->used = true;
                if (kv && (mine || e->used)) {
                        struct kv *n = realloc(*kv, (*nkv + 1) * sizeof(**kv));
                        if (!n)
                                return;
                        *kv = n;
                        n[*nkv].key = strdup(e->key);
                        n[*nkv].value = strdup(e->value);
                        (*nkv)++;
                }
        }
}

int km_plugin_check(struct km_conf *c, const char *section, const char *plugin_dir)
{
        const char *type = km_conf_get(c, section, "type");
        void *dl;
        char why[4608];
        int bad = km_link_check_common(c, section) < 0;
        const struct km_plugin_desc *desc = load(plugin_dir, type, &dl, why, sizeof(why));
        if (!desc) {
                km_conf_error(c, section, "type", "%s", why);
                return -EINVAL;
        }
        take_keys(c, section, desc, NULL, NULL);
        dlclose(dl);
        return bad ? -EINVAL : 0;
}

int km_plugin_link_start(struct km_daemon *d, struct km_conf *c, const char *section)
{
        km_plugin_link *h = calloc(1, sizeof(*h));
        struct km_link *l = calloc(1, sizeof(*l));
        char why[4608];
        int rc = -ENOMEM;

        if (!h || !l)
                goto fail;
        h->d = d;
        h->link = l;
        if ((rc = km_link_init(l, section + 5, KM_DIR_UP, QMAX)) < 0 || (rc = km_link_configure(l, c, section)) < 0)
                goto fail;
        l->ops = &narrow_ops;
        l->impl = h;
        h->desc = load(d->node.plugin_dir, l->conf.type, &h->dl, why, sizeof(why));
        if (!h->desc) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s", l->name, why);
                rc = -ENOENT;
                goto fail_link;
        }
        take_keys(c, section, h->desc, &h->kv, &h->nkv);
        h->center = strcmp(d->node.role, "center") == 0;
        h->origin = node_id(d->node.name);
        const char *v = api_config(h, "peers");
        if (v && km_strv_split(&h->peers, v) < 0)
                goto fail_link;
        v = api_config(h, "topic_prefix");
        h->prefix = strdup(v ? v : (d->topic_prefix ? d->topic_prefix : "kuimen"));
        int64_t rto = 3000;
        if ((v = api_config(h, "rto")) && km_conf_parse_duration(v, &rto) < 0) {
                KM_LOG(KM_LOG_ERR, "link", "%s: rto = '%s' is not a duration", l->name, v);
                rc = -EINVAL;
                goto fail_link;
        }
        h->rto_ms = rto;
        h->bufcap = KM_FRAME_MTU_MAX;
        h->buf = malloc(h->bufcap);
        struct km_frame_tx_cfg tc = { .origin = h->origin, .first_seq = (uint16_t)(km_now_ms() & 0xffff),
                                      .window = FRAME_WINDOW, .mtu_max = KM_FRAME_MTU_MAX };
        struct km_frame_rx_cfg rcfg = { 0 };
        if (!h->prefix || !h->buf || km_frame_tx_init(&h->tx, &tc) < 0 || km_frame_rx_init(&h->rx, &rcfg) < 0)
                goto fail_link;
        if ((rc = km_daemon_add_link(d, l)) < 0)
                goto fail_link;
        /* From here the daemon owns l (and through it h). */
        rc = h->desc->ops->open(h, &host_api, &h->state);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s plugin refused to open: %s", l->name, h->desc->name, strerror(-rc));
                km_link_set_state(l, KM_LINK_DOWN, "plugin failed to open");
                return 0; /* the rest of the gateway runs; this link stays down */
        }
        h->open = true;
        h->mtu = h->desc->ops->mtu(h->state);
        if (h->mtu < KM_FRAME_MTU_MIN || h->mtu > h->bufcap) {
                KM_LOG(KM_LOG_ERR, "link", "%s: MTU %u outside %d..%zu", l->name, h->mtu, KM_FRAME_MTU_MIN, h->bufcap);
                km_link_set_state(l, KM_LINK_DOWN, "MTU out of range");
                return 0;
        }
        sd_event_add_time_relative(d->ev, &h->rto_src, CLOCK_MONOTONIC, (uint64_t)h->rto_ms * 250, 10000, on_rto, h);
        KM_LOG(KM_LOG_NOTICE, "link", "%s: %s %s loaded, MTU %u%s", l->name, h->desc->name,
               h->desc->version ? h->desc->version : "", h->mtu, h->center ? ", receiving for the center" : "");
        return 0;
fail_link:
        if (l->ops) { /* attached: narrow_destroy frees h */
                km_link_deinit(l);
                free(l);
                return rc;
        }
        km_link_deinit(l);
fail:
        if (h) {
                km_frame_tx_deinit(&h->tx);
                km_frame_rx_deinit(&h->rx);
                free(h);
        }
        free(l);
        return rc;
}

void km_plugin_print_help(FILE *out)
{
        fputs("[link NAME (type = a plugin's name)]\n"
              "  the plugin's own keys (see its README), and for every narrow link:\n"
              "  peers            list     center: node names whose frames it receives [default: none]\n"
              "  rto              duration retransmit a frame not acknowledged this long [default: 3s]\n"
              "  topic_prefix     string   center: republished topic = <topic_prefix>/<origin>/<topic> [default: kuimen]\n\n",
              out);
}

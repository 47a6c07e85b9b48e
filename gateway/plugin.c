/* SPDX-License-Identifier: MIT */
/* Plugin host: the ABI's loader, the host API on the event loop, the device under a narrow link. */
#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "link.h"
#include "log.h"
#include "narrow.h"
#include "plugins/kuimen-plugin.h"

/*
 * The host side of a link plugin (plugins/kuimen-plugin.h): it loads <type>.so,
 * checks its ABI, hands it the host API (its keys, fd and timer watches on the
 * event loop, reports, datagrams in and receipts) and hands its frames to the
 * device. The narrow-link protocol on top (queue, frames, acks, probes,
 * commands, authentication) is gateway/narrow.c; gateway/narrow.h is between the two.
 *
 * A broken plugin must not take the gateway with it. The host believes the plugin's
 * reports, but also watches it: a hard error from send() (anything but -EAGAIN and
 * -ENOTCONN), a call into the plugin that held the loop for BLOCK_MS or more, and no
 * acknowledgement for ack_timeout (gateway/link.c) each take the link down with a
 * reason that names the failure, so the next link by order carries its traffic. The
 * host then tries the link again after a back-off (RETRY_MIN_MS doubling to
 * RETRY_MAX_MS, back to the start once a frame is acknowledged), as the MQTT link
 * reconnects; a plugin that reports DOWN and then UP is believed at once. What the
 * host cannot do is take the loop back from a plugin that never returns: a plugin
 * that blocks for good stops the whole daemon (and systemd's watchdog restarts it).
 *
 * Budgets (budget_bytes, budget_messages per budget_interval) are spent here, at the
 * device, not by the scheduler: every frame handed to the device counts (new frames,
 * retransmissions, acks), a frame being one "message" of the equipment (one BeiDou
 * short message, one SBD session) and its length the bytes on the air. Counting
 * spool messages at hand-over would let the QMAX messages waiting here leave in a
 * later window on top of that window's own.
 */

#define BLOCK_MS 1000      /* a call into the plugin this long broke the never-block rule */
#define RETRY_MIN_MS 1000  /* first retry of a link the host took down */
#define RETRY_MAX_MS 60000

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

const char *km_plugin_config(km_plugin_link *h, const char *key)
{
        for (size_t i = 0; i < h->nkv; i++)
                if (strcmp(h->kv[i].key, key) == 0)
                        return h->kv[i].value;
        return NULL;
}

static int on_fd(sd_event_source *s, int fd, uint32_t revents, void *ud)
{
        struct watch *w = ud;
        km_plugin_link *h = w->h;
        int64_t t0 = km_mono_ms();
        (void)s;
        w->cb(w->ud, fd, revents);
        km_plugin_check_block(h, "its fd callback", t0);
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
                        h->w[i] = (struct watch){ .h = h, .fd = fd, .cb = cb, .ud = ud };
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
        km_plugin_link *h = t->h;
        int64_t t0 = km_mono_ms();
        (void)usec;
        km_plugin_timer_cb cb = t->cb;
        void *cud = t->ud;
        t->src = sd_event_source_unref(s);
        t->id = 0;
        cb(cud);
        km_plugin_check_block(h, "its timer callback", t0);
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

/* ---- faults the host sees ---------------------------------------------------------- */

static int on_retry(sd_event_source *s, uint64_t usec, void *ud);

/* The host keeps the link down, and tries it again after the back-off. */
void km_plugin_hold_down(km_plugin_link *h)
{
        if (h->probing) {
                h->probing = false;
                km_narrow_forget(h); /* the probe: the peer skips it */
        }
        h->held = true;
        if (!h->retry_ms)
                h->retry_ms = RETRY_MIN_MS;
        if (!h->retry_src) {
                if (sd_event_add_time_relative(h->d->ev, &h->retry_src, CLOCK_MONOTONIC, (uint64_t)h->retry_ms * 1000,
                                               10000, on_retry, h) < 0)
                        KM_LOG(KM_LOG_ERR, "link", "%s: cannot arm the retry timer: the link waits for its plugin", h->link->name);
        } else {
                sd_event_source_set_time_relative(h->retry_src, (uint64_t)h->retry_ms * 1000);
                sd_event_source_set_enabled(h->retry_src, SD_EVENT_ONESHOT);
        }
        h->retry_ms = h->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : h->retry_ms * 2;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *ud)
{
        km_plugin_link *h = ud;
        (void)s, (void)usec;
        if (!h->held)
                return 0;
        h->held = false;
        if (h->open && h->dev_state == KM_LINK_UP && h->link->state != KM_LINK_UP) {
                char why[200];
                if (h->probe_ms) {
                        /* Traffic comes back only once the peer answers: a link still cut
                         * would otherwise take messages for ack_timeout at every retry. */
                        snprintf(why, sizeof(why), "probing after: %s", h->fault);
                        km_link_set_state(h->link, KM_LINK_DOWN, why);
                        h->probing = true;
                        km_narrow_send_probe(h);
                        return 0;
                }
                snprintf(why, sizeof(why), "retrying after: %s", h->fault);
                km_link_set_state(h->link, h->dev_degraded ? KM_LINK_DEGRADED : KM_LINK_UP, why);
                km_narrow_kick(h);
        }
        return 0;
}

/* Takes the link down for a fault seen inside a call (send, a plugin callback): later,
 * on a loop turn of its own, so neither the scheduler's pump nor the plugin's stack is
 * pulled from under them. */
static int on_fault(sd_event_source *s, void *ud)
{
        km_plugin_link *h = ud;
        (void)s;
        h->faulted = false;
        if (h->link->state == KM_LINK_UP) {
                km_link_set_state(h->link, KM_LINK_DOWN, h->fault);
                km_narrow_forget(h); /* the spool replays them on another link */
        }
        km_plugin_hold_down(h);
        return 0;
}

void km_plugin_fault(km_plugin_link *h, const char *fmt, ...)
{
        va_list ap;
        if (h->faulted)
                return; /* the first fault names the failure */
        va_start(ap, fmt);
        vsnprintf(h->fault, sizeof(h->fault), fmt, ap);
        va_end(ap);
        h->faulted = true;
        int rc = h->fault_src ? sd_event_source_set_enabled(h->fault_src, SD_EVENT_ONESHOT)
                              : sd_event_add_defer(h->d->ev, &h->fault_src, on_fault, h);
        if (rc < 0) { /* no memory for an event source: take it down here */
                h->faulted = false;
                km_link_set_state(h->link, KM_LINK_DOWN, h->fault);
        }
}

/* A plugin must never block the loop (the ABI says so); one that did for BLOCK_MS
 * starved every other link that long: take its link down and say where it blocked. */
void km_plugin_check_block(km_plugin_link *h, const char *what, int64_t t0)
{
        int64_t dt = km_mono_ms() - t0;
        if (dt < BLOCK_MS)
                return;
        KM_LOG(KM_LOG_ERR, "link", "%s: the %s plugin blocked the event loop for %.1f s in %s", h->link->name,
               h->desc->name, (double)dt / 1000, what);
        km_plugin_fault(h, "%s blocked the event loop for %.1f s", what, (double)dt / 1000);
}

static void api_report(km_plugin_link *h, const struct km_plugin_report *r)
{
        static const enum km_link_state map[] = { KM_LINK_DOWN, KM_LINK_DEGRADED, KM_LINK_UP };
        enum km_link_state st = r->state <= KM_PLUGIN_UP ? map[r->state] : KM_LINK_DOWN;
        if (r->mtu >= KM_FRAME_MTU_MIN + h->ovh && r->mtu <= h->bufcap)
                h->mtu = r->mtu;
        h->link->signal = r->signal;
        h->free_at = r->next_send_ms ? km_mono_ms() + r->next_send_ms : 0;
        /* A degraded device still carries: UP to the scheduler, "degraded" to operators
         * and the center (km_link_set_state keeps the two apart). */
        h->dev_degraded = st == KM_LINK_DEGRADED;
        if (st == KM_LINK_DEGRADED)
                st = KM_LINK_UP;
        enum km_link_state was = h->dev_state;
        h->dev_state = st;
        /* The host took the link down and the plugin still says UP, as it did: the
         * retry (and its probe) decides. A plugin that went DOWN and came back UP is
         * believed. */
        if ((h->held || h->probing) && st == KM_LINK_UP && was == KM_LINK_UP)
                return;
        if (st == KM_LINK_UP)
                h->held = false;
        if (h->probing) {
                h->probing = false;
                km_narrow_forget(h); /* the probe too */
        }
        if (st != KM_LINK_UP && h->link->state == KM_LINK_UP)
                km_narrow_forget(h); /* the spool replays them on the next UP */
        enum km_link_state shown = h->dev_degraded ? KM_LINK_DEGRADED : st;
        km_link_set_state(h->link, shown, r->reason ? r->reason : km_link_state_name(shown));
        if (st == KM_LINK_UP)
                km_narrow_kick(h);
}

static void api_ready(km_plugin_link *h)
{
        h->busy = false;
        km_narrow_kick(h);
}

static const struct km_host_api host_api = {
        .abi_major = KM_PLUGIN_ABI_MAJOR,
        .abi_minor = KM_PLUGIN_ABI_MINOR,
        .struct_size = sizeof(struct km_host_api),
        .log = api_log,
        .config = km_plugin_config,
        .watch_fd = api_watch_fd,
        .unwatch_fd = api_unwatch_fd,
        .timer = api_timer,
        .cancel_timer = api_cancel_timer,
        .report = api_report,
        .received = km_narrow_received,
        .sent = km_narrow_sent,
        .ready = api_ready,
};

/* ---- sending -------------------------------------------------------------------- */

static int on_budget(sd_event_source *s, uint64_t usec, void *ud)
{
        (void)s, (void)usec;
        km_narrow_kick(ud);
        return 0;
}

/* The bytes the budget lets the next frame have: SIZE_MAX without a budget, 0 when
 * this window's is spent. A window opens with the first frame sent after the last one
 * closed (not when the link was merely looked at: an idle link would otherwise open a
 * window, send its budget at the end of it and again at the start of the next) and
 * rolls over whole, as the scheduler's does. */
size_t km_plugin_budget_room(km_plugin_link *h)
{
        int64_t now = km_mono_ms();
        if (!h->bud_bytes && !h->bud_frames)
                return SIZE_MAX;
        if (h->bud_start && now - h->bud_start >= h->bud_ms) {
                h->bud_start = 0;
                h->bud_bytes_used = h->bud_frames_used = 0;
        }
        if (h->bud_frames && h->bud_frames_used >= h->bud_frames)
                return 0;
        return h->bud_bytes ? (size_t)(h->bud_bytes - h->bud_bytes_used) : SIZE_MAX;
}

/* The budget is spent: kick again when the window rolls over. Waiting for the budget
 * is not a dead link, so the ack clock does not run meanwhile. */
void km_plugin_budget_wait(km_plugin_link *h)
{
        int64_t now = km_mono_ms(), left = h->bud_start ? h->bud_start + h->bud_ms - now : h->bud_ms;
        uint64_t us = (uint64_t)(left > 0 ? left : 0) * 1000 + 1000;
        h->link->progress_mono = now;
        if (!h->bud_src) {
                if (sd_event_add_time_relative(h->d->ev, &h->bud_src, CLOCK_MONOTONIC, us, 1000, on_budget, h) < 0)
                        return; /* the rto timer kicks too, just later */
        } else {
                sd_event_source_set_time_relative(h->bud_src, us);
                sd_event_source_set_enabled(h->bud_src, SD_EVENT_ONESHOT);
        }
}

/* Hands one frame (sealed already, if the link is) to the device. The budget counts
 * what went on the air. */
bool km_plugin_dev_send(km_plugin_link *h, const char *peer, const uint8_t *wire, size_t wlen, uint32_t *token)
{
        static uint32_t next_token;
        int64_t t0 = km_mono_ms();
        const struct km_plugin_ops *ops = h->desc->ops;
        *token = ++next_token;
        int rc = h->desc->abi_minor >= 2 && ops->send_to ? ops->send_to(h->state, peer, wire, wlen, *token)
                                                         : ops->send(h->state, wire, wlen, *token);
        km_plugin_check_block(h, "send()", t0);
        if (rc == -EAGAIN) {
                /* A card that said when it takes the next frame (a BeiDou card's 60 s
                 * service interval) is busy, not dead: the ack clock starts again from
                 * then. One that said nothing keeps its clock running, so a device stuck
                 * in -EAGAIN still takes the link down after ack_timeout. */
                int64_t now = km_mono_ms();
                if (!h->busy && h->free_at > now && h->link->progress_mono < h->free_at)
                        h->link->progress_mono = h->free_at;
                h->busy = true;
                return false;
        }
        if (rc == 0) {
                if (!h->bud_start)
                        h->bud_start = km_mono_ms();
                h->bud_bytes_used += wlen;
                h->bud_frames_used++;
                h->link->bytes_sent += wlen;
                return true;
        }
        /* -ENOTCONN comes with a DOWN report (an announced outage); any other error
         * is a device the host cannot use. */
        if (rc != -ENOTCONN)
                km_plugin_fault(h, "send: %s", strerror(-rc));
        return false;
}

void km_plugin_close(km_plugin_link *h)
{
        if (h->open)
                h->desc->ops->close(h->state);
        h->open = false;
        for (int i = 0; i < MAXFD; i++)
                h->w[i].src = sd_event_source_disable_unref(h->w[i].src);
        for (int i = 0; i < MAXTIMER; i++)
                h->t[i].src = sd_event_source_disable_unref(h->t[i].src);
        h->fault_src = sd_event_source_disable_unref(h->fault_src);
        h->retry_src = sd_event_source_disable_unref(h->retry_src);
        h->bud_src = sd_event_source_disable_unref(h->bud_src);
        for (size_t i = 0; i < h->nkv; i++)
                free(h->kv[i].key), free(h->kv[i].value);
        free(h->kv);
        h->kv = NULL, h->nkv = 0;
        if (h->dl)
                dlclose(h->dl);
        h->dl = NULL;
}

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

/* Marks the plugin's and the narrow link's keys used; collects them for km_plugin_config. */
static void take_keys(struct km_conf *c, const char *section, const struct km_plugin_desc *desc, struct kv **kv,
                      size_t *nkv)
{
        for (size_t i = 0; i < c->n; i++) {
                struct km_conf_entry *e = &c->e[i];
                if (strcmp(e->section, section) != 0)
                        continue;
                bool mine = in_list(desc->keys, e->key) || in_list(km_narrow_keys, e->key);
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

static void check_log(km_plugin_link *h, int level, const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        (void)h;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        KM_LOG(level, "link", "check: %s", msg);
}

/* The plugin's own keys: their names here (take_keys), their values by the plugin's
 * check op (ABI 1.1), which reads them as its open() would and opens nothing. Before
 * it, a bad value passed --check-config and stopped the start. Returns errors added. */
static int plugin_keys_check(struct km_conf *c, const char *section, const struct km_plugin_desc *desc)
{
        static const struct km_host_api check_api = {
                .abi_major = KM_PLUGIN_ABI_MAJOR,
                .abi_minor = KM_PLUGIN_ABI_MINOR,
                .struct_size = sizeof(struct km_host_api),
                .log = check_log,
                .config = km_plugin_config,
        };
        if (desc->abi_minor < 1 || !desc->ops->check) {
                take_keys(c, section, desc, NULL, NULL);
                return 0;
        }
        km_plugin_link *h = calloc(1, sizeof(*h));
        if (!h)
                return 0;
        take_keys(c, section, desc, &h->kv, &h->nkv);
        const char *key = NULL;
        char why[512] = "";
        int bad = desc->ops->check(h, &check_api, &key, why, sizeof(why)) < 0;
        if (bad)
                km_conf_error(c, section, key && km_conf_get(c, section, key) ? key : NULL, "%s",
                              *why ? why : "the plugin refused the link's keys");
        for (size_t i = 0; i < h->nkv; i++)
                free(h->kv[i].key), free(h->kv[i].value);
        free(h->kv);
        free(h);
        return bad;
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
        bad += km_narrow_check(c, section, desc->abi_minor >= 2 && desc->ops->send_to);
        bad += plugin_keys_check(c, section, desc);
        bad += km_narrow_check_dictionary(c, section);
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
        km_narrow_attach(l, h);
        /* The budget is spent at the device (see the top of this file); the scheduler
         * must not count it a second time in message bytes. */
        h->bud_bytes = (uint64_t)l->conf.budget_bytes;
        h->bud_frames = (uint64_t)l->conf.budget_messages;
        h->bud_ms = l->conf.budget_interval_ms;
        l->budget_at_device = true;
        if (h->bud_bytes && h->bud_bytes < KM_FRAME_MTU_MIN)
                KM_LOG(KM_LOG_ERR, "link", "%s: budget_bytes = %llu is below the smallest frame (%d B): it will carry nothing",
                       l->name, (unsigned long long)h->bud_bytes, KM_FRAME_MTU_MIN);
        h->desc = load(d->node.plugin_dir, l->conf.type, &h->dl, why, sizeof(why));
        if (!h->desc) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s", l->name, why);
                rc = -ENOENT;
                goto fail_link;
        }
        take_keys(c, section, h->desc, &h->kv, &h->nkv);
        if ((rc = km_narrow_setup(h, c, section)) < 0)
                goto fail_link;
        if ((rc = km_daemon_add_link(d, l)) < 0)
                goto fail_link;
        /* From here the daemon owns l (and through it h). */
        int64_t t0 = km_mono_ms();
        rc = h->desc->ops->open(h, &host_api, &h->state);
        km_plugin_check_block(h, "open()", t0);
        if (rc < 0) {
                KM_LOG(KM_LOG_ERR, "link", "%s: %s plugin refused to open: %s", l->name, h->desc->name, strerror(-rc));
                snprintf(why, sizeof(why), "plugin failed to open: %s", strerror(-rc));
                km_link_set_state(l, KM_LINK_DOWN, why);
                return 0; /* the rest of the gateway runs; this link stays down */
        }
        h->open = true;
        h->mtu = h->desc->ops->mtu(h->state);
        if (h->mtu < KM_FRAME_MTU_MIN + h->ovh || h->mtu > h->bufcap) {
                KM_LOG(KM_LOG_ERR, "link", "%s: MTU %u outside %zu..%zu", l->name, h->mtu, KM_FRAME_MTU_MIN + h->ovh, h->bufcap);
                km_link_set_state(l, KM_LINK_DOWN, "MTU out of range");
                return 0;
        }
        km_narrow_opened(h);
        KM_LOG(KM_LOG_NOTICE, "link", "%s: %s %s loaded, MTU %u%s", l->name, h->desc->name,
               h->desc->version ? h->desc->version : "", h->mtu, h->center ? ", receiving for the center" : "");
        return 0;
fail_link:
        if (l->ops) { /* attached: the link's destroy frees h */
                km_link_deinit(l);
                free(l);
                return rc;
        }
        km_link_deinit(l);
fail:
        free(h);
        free(l);
        return rc;
}


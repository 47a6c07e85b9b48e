/* SPDX-License-Identifier: MIT */
/* Link: state with reason, and the window of in-flight messages keyed by cookies. */
#include "link.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "spool.h"

#define OFF(f) offsetof(struct km_link_conf, f)
static const char *const ack_modes[] = { "peer", "receipt", "none", NULL };
static const struct km_conf_key common_keys[] = {
        { "type", KM_CONF_STRING, "mqtt", OFF(type), "mqtt (built in) or a plugin's name (<plugin_dir>/<type>.so)", 0, 0, NULL },
        { "order", KM_CONF_INT, "1", OFF(order), "preference: the lowest healthy link carries what it may", 0, 1000, NULL },
        { "classes", KM_CONF_LIST, NULL, OFF(classes), "classes it may carry (empty: all)", 0, 0, NULL },
        { "ack_timeout", KM_CONF_DURATION, "3s", OFF(ack_timeout_ms), "dead when messages are in flight and none is acknowledged this long", 100, 3600000, NULL },
        { "hold", KM_CONF_DURATION, "2s", OFF(hold_ms), "a link that came back carries traffic only after being up this long", 0, 3600000, NULL },
        { "budget_bytes", KM_CONF_INT, "0", OFF(budget_bytes), "bytes it may send per budget_interval (0: no limit)", 0, 1e12, NULL },
        { "budget_messages", KM_CONF_INT, "0", OFF(budget_messages), "messages it may send per budget_interval (0: no limit)", 0, 1e12, NULL },
        { "budget_interval", KM_CONF_DURATION, "60s", OFF(budget_interval_ms), "the budget's window", 1000, 86400000, NULL },
        { "ack", KM_CONF_STRING, "peer", OFF(ack), "what releases a message: peer (the far end acknowledges it), receipt (narrow links: the device's receipt for its frame, at most once beyond it) or none (narrow links: handed to the device; for one-way links). Set the same on both ends", 0, 0, ack_modes },
        { NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

int64_t km_mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An MQTT link's broker acknowledges every message (QoS 1): releasing on less would
 * break the promise for nothing. Receipt and none are for equipment without a way back
 * or with a receipt of its own. */
static int check_ack(struct km_conf *c, const char *section, const struct km_link_conf *lc)
{
        if (!lc->ack || strcmp(lc->ack, "peer") == 0 || !lc->type || strcmp(lc->type, "mqtt") != 0)
                return 0;
        km_conf_error(c, section, "ack", "'%s' is for narrow links: an mqtt link is acknowledged by its broker (ack = peer)",
                      lc->ack);
        return 1;
}

static enum km_ack_mode ack_mode(const char *v)
{
        return !v || strcmp(v, "peer") == 0 ? KM_ACK_PEER : strcmp(v, "receipt") == 0 ? KM_ACK_RECEIPT : KM_ACK_NONE;
}

int km_link_configure(struct km_link *l, struct km_conf *c, const char *section)
{
        int bad = km_conf_apply(c, section, common_keys, &l->conf);
        bad += check_ack(c, section, &l->conf);
        l->order = l->conf.order;
        l->ack_mode = ack_mode(l->conf.ack);
        return bad ? -EINVAL : 0;
}

int km_link_check_common(struct km_conf *c, const char *section)
{
        struct km_link_conf lc = { 0 };
        int bad = km_conf_apply(c, section, common_keys, &lc);
        bad += check_ack(c, section, &lc);
        km_conf_release(common_keys, &lc);
        return bad ? -EINVAL : 0;
}

void km_link_print_help(FILE *out)
{
        km_conf_print_help(out, "link NAME (every type)", common_keys);
}

bool km_link_may_carry(const struct km_link *l, const char *cls)
{
        if (!l->conf.classes.n)
                return true;
        for (size_t i = 0; i < l->conf.classes.n; i++)
                if (strcmp(l->conf.classes.v[i], cls) == 0)
                        return true;
        return false;
}

bool km_link_eligible(const struct km_link *l, int64_t now)
{
        /* hold keeps a flapping link from pulling traffic back and forth; a link's
         * first UP is no flap. */
        return l->state == KM_LINK_UP && (!l->lost_once || now - l->up_since_mono >= l->conf.hold_ms);
}

void km_link_check(struct km_link *l, int64_t now)
{
        /* The rate operators read in kuimenctl: acknowledged messages over the last
         * second (housekeeping calls this ten times a second). */
        if (!l->rate_mono) {
                l->rate_mono = now;
                l->rate_acked = l->acked;
        } else if (now - l->rate_mono >= 1000) {
                l->rate = (double)(l->acked - l->rate_acked) * 1000.0 / (double)(now - l->rate_mono);
                l->rate_mono = now;
                l->rate_acked = l->acked;
        }
        if (l->state != KM_LINK_UP || !l->conf.ack_timeout_ms)
                return;
        /* Nothing awaits an ack but what is parked on purpose (a center's commands held
         * for a base online over MQTT): the clock starts when something real is sent. */
        if (l->inflight <= l->parked) {
                l->progress_mono = now;
                return;
        }
        if (now - l->progress_mono < l->conf.ack_timeout_ms)
                return;
        char why[96];
        snprintf(why, sizeof(why), "no acknowledgement for %.1f s", (double)(now - l->progress_mono) / 1000);
        km_link_set_state(l, KM_LINK_DOWN, why);
        if (l->ops && l->ops->reset)
                l->ops->reset(l);
}

static void reset_window(struct km_link *l)
{
        l->gen++;
        l->inflight = 0;
        l->parked = 0;
        l->nfree = 0;
        for (uint32_t i = l->window; i-- > 0;) {
                l->slots[i].used = false;
                l->free[l->nfree++] = i;
        }
        memset(l->cursor, 0, sizeof(l->cursor));
}

int km_link_init(struct km_link *l, const char *name, int dir, uint32_t window)
{
        memset(l, 0, sizeof(*l));
        if (window < 1 || window > 65535)
                return -EINVAL;
        l->name = strdup(name);
        l->slots = calloc(window, sizeof(*l->slots));
        l->free = calloc(window, sizeof(*l->free));
        if (!l->name || !l->slots || !l->free) {
                km_link_deinit(l);
                return -ENOMEM;
        }
        l->dir = dir;
        l->window = window;
        l->signal = -1;
        l->ack_ms = -1;
        l->state = KM_LINK_DOWN;
        snprintf(l->reason, sizeof(l->reason), "starting");
        l->since_ms = km_now_ms();
        reset_window(l);
        return 0;
}

void km_link_deinit(struct km_link *l)
{
        if (l->ops && l->ops->destroy)
                l->ops->destroy(l);
        km_conf_release(common_keys, &l->conf);
        free(l->name);
        free(l->slots);
        free(l->free);
        memset(l, 0, sizeof(*l));
}

const char *km_link_state_name(enum km_link_state st)
{
        static const char *const names[] = { "down", "degraded", "up" };
        return st <= KM_LINK_UP ? names[st] : "?";
}

const char *km_link_shown_state(const struct km_link *l)
{
        return l->state == KM_LINK_UP && l->degraded ? "degraded" : km_link_state_name(l->state);
}

void km_link_set_state(struct km_link *l, enum km_link_state st, const char *reason)
{
        /* Degraded carries as UP does; only what operators see differs. */
        bool degraded = st == KM_LINK_DEGRADED;
        if (degraded)
                st = KM_LINK_UP;
        bool same = st == l->state && degraded == l->degraded && strcmp(reason, l->reason) == 0;

        if (l->state == KM_LINK_UP && st != KM_LINK_UP) {
                reset_window(l);
                l->lost_once = true;
        }
        if (same)
                return;
        KM_LOG(st == KM_LINK_UP && !degraded ? KM_LOG_NOTICE : KM_LOG_WARNING, "link", "%s: %s -> %s (%s)", l->name,
               km_link_shown_state(l), degraded ? "degraded" : km_link_state_name(st), reason);
        if (st == KM_LINK_UP && l->state != KM_LINK_UP)
                l->up_since_mono = l->progress_mono = km_mono_ms();
        l->state = st;
        l->degraded = degraded;
        snprintf(l->reason, sizeof(l->reason), "%s", reason);
        l->since_ms = km_now_ms();
        l->transitions++;
        if (l->on_state)
                l->on_state(l, l->on_state_ud);
}

int64_t km_link_take_slot(struct km_link *l, uint64_t id)
{
        if (!l->nfree)
                return -EAGAIN;
        uint32_t s = l->free[--l->nfree];
        int64_t now = km_mono_ms();
        l->slots[s] = (struct km_link_slot){ .id = id, .taken_mono = now, .gen = l->gen, .used = true };
        /* The ack clock starts when the window stops being empty. */
        if (!l->inflight++)
                l->progress_mono = now;
        return (int64_t)(s | (uint32_t)l->gen << 16);
}

static struct km_link_slot *slot_of(struct km_link *l, uint32_t cookie)
{
        uint32_t s = cookie & 0xffff;
        if (s >= l->window || !l->slots[s].used || l->slots[s].gen != (uint16_t)(cookie >> 16))
                return NULL;
        return &l->slots[s];
}

void km_link_put_slot(struct km_link *l, uint32_t cookie)
{
        struct km_link_slot *s = slot_of(l, cookie);
        if (!s)
                return;
        s->used = false;
        l->free[l->nfree++] = cookie & 0xffff;
        l->inflight--;
}

uint64_t km_link_acked(struct km_link *l, uint32_t cookie)
{
        struct km_link_slot *s = slot_of(l, cookie);
        if (!s)
                return 0;
        uint64_t id = s->id;
        int64_t now = km_mono_ms();
        l->ack_ms = now - s->taken_mono;
        km_link_put_slot(l, cookie);
        l->acked++;
        l->progress_mono = now;
        return id;
}

void km_link_failed(struct km_link *l, uint32_t cookie, const char *why)
{
        if (!slot_of(l, cookie))
                return;
        l->failed++;
        /* The cursor has moved past this message: only a fresh connection replays it
         * in order, so a failed send takes the link down. */
        km_link_set_state(l, KM_LINK_DOWN, why);
}

size_t km_link_room(const struct km_link *l, size_t topic_len)
{
        if (!l->max_packet)
                return SIZE_MAX;
        size_t cost = (size_t)l->packet_overhead + topic_len;
        return cost < l->max_packet ? l->max_packet - cost : 0;
}

uint64_t km_link_head(const struct km_link *l, int64_t *taken_mono, uint64_t *last)
{
        uint64_t id = 0, hi = 0;
        for (uint32_t i = 0; i < l->window && l->inflight; i++) {
                const struct km_link_slot *s = &l->slots[i];
                if (!s->used || s->gen != l->gen)
                        continue;
                if (s->id > hi)
                        hi = s->id;
                if (!id || s->id < id) {
                        id = s->id;
                        if (taken_mono)
                                *taken_mono = s->taken_mono;
                }
        }
        if (last)
                *last = hi;
        return id;
}

/* SPDX-License-Identifier: MIT */
/* Link: state with reason, and the window of in-flight messages keyed by cookies. */
#include "link.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "spool.h"

static void reset_window(struct km_link *l)
{
        l->gen++;
        l->inflight = 0;
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

void km_link_set_state(struct km_link *l, enum km_link_state st, const char *reason)
{
        bool same = st == l->state && strcmp(reason, l->reason) == 0;

        if (l->state == KM_LINK_UP && st != KM_LINK_UP)
                reset_window(l);
        if (same)
                return;
        KM_LOG(st == KM_LINK_UP ? KM_LOG_NOTICE : KM_LOG_WARNING, "link", "%s: %s -> %s (%s)", l->name,
               km_link_state_name(l->state), km_link_state_name(st), reason);
        l->state = st;
        snprintf(l->reason, sizeof(l->reason), "%s", reason);
        l->since_ms = km_now_ms();
        if (l->on_state)
                l->on_state(l, l->on_state_ud);
}

int64_t km_link_take_slot(struct km_link *l, uint64_t id)
{
        if (!l->nfree)
                return -EAGAIN;
        uint32_t s = l->free[--l->nfree];
        l->slots[s] = (struct km_link_slot){ .id = id, .gen = l->gen, .used = true };
        l->inflight++;
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
        km_link_put_slot(l, cookie);
        l->acked++;
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

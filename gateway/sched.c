/* SPDX-License-Identifier: MIT */
/* Scheduler: which link carries which priority, and the order messages leave in. */
#include "sched.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

#define BATCH 64 /* messages of one priority before higher ones are looked at again */

size_t km_sched_cost(const struct km_msg *m)
{
        return strlen(m->topic) + m->len;
}

/* Whether l may carry some class of priority prio (any, when no class has it: a
 * message spooled under an older config). */
static bool carries_prio(const struct km_link *l, const struct km_route *route, int prio)
{
        bool known = false;
        for (size_t i = 0; i < route->n; i++) {
                if (route->cls[i].priority != prio)
                        continue;
                known = true;
                if (km_link_may_carry(l, route->cls[i].name))
                        return true;
        }
        return !known;
}

/* The budget window rolls over whole: what was spent in the last window counts. */
static bool budget_allows(struct km_link *l, size_t cost, int64_t now)
{
        struct km_link_conf *c = &l->conf;
        if (l->budget_at_device || (!c->budget_bytes && !c->budget_messages))
                return true;
        if (now - l->budget_start >= c->budget_interval_ms) {
                l->budget_start = now;
                l->budget_bytes_used = 0;
                l->budget_msgs_used = 0;
        }
        if (c->budget_messages && l->budget_msgs_used + 1 > (uint64_t)c->budget_messages)
                return false;
        if (c->budget_bytes && l->budget_bytes_used + cost > (uint64_t)c->budget_bytes)
                return false;
        return true;
}

/* The transport says m can never fit its peer (its packet is over the peer's maximum
 * packet size, or its topic is one the transport cannot send): retrying it would block
 * its queue for good. It goes to the spool's dead letters instead, and the link carries
 * on. m is not valid after this. 0 or a negative errno (from the spool). */
static int set_aside(struct km_link *l, struct km_spool *sp, const struct km_msg *m)
{
        char why[200];
        uint64_t id = m->id;
        if (l->max_packet)
                snprintf(why, sizeof(why), "too large for link %s: %zu bytes of topic and payload, the peer takes packets of %u bytes at most",
                         l->name, km_sched_cost(m), l->max_packet);
        else
                snprintf(why, sizeof(why), "link %s cannot send it (%zu bytes of topic and payload)", l->name,
                         km_sched_cost(m));
        int rc = km_spool_set_aside(sp, id, why);
        if (rc == 0)
                l->set_aside++;
        return rc == -ENOENT ? 0 : rc;
}

/* Fills l's window from the priorities it is responsible for (mask). */
static int pump_link(struct km_link *l, struct km_spool *sp, const bool *mine, const uint8_t *prios, int np,
                     int64_t now)
{
        int sent = 0;

        while (l->state == KM_LINK_UP && l->nfree) {
                int batch = 0, looked = 0;
                for (int i = 0; i < np && !batch; i++) {
                        int prio = prios[i];
                        if (!mine[prio])
                                continue;
                        struct km_msg m;
                        while (batch < BATCH && l->nfree && l->state == KM_LINK_UP) {
                                int rc = km_spool_next(sp, l->dir, prio, l->cursor[prio], &m);
                                if (rc < 0)
                                        return rc;
                                if (rc == 0)
                                        break;
                                looked++;
                                if (!km_link_may_carry(l, m.cls) || (l->ops->wants && !l->ops->wants(l, &m))) {
                                        l->cursor[prio] = m.id; /* another link's, or the fast link's later */
                                        continue;
                                }
                                size_t cost = km_sched_cost(&m);
                                if (!budget_allows(l, cost, now))
                                        return sent;
                                int64_t cookie = km_link_take_slot(l, m.id);
                                rc = l->ops->send(l, &m, (uint32_t)cookie);
                                if (rc == -EMSGSIZE) {
                                        km_link_put_slot(l, (uint32_t)cookie);
                                        l->cursor[prio] = m.id;
                                        if ((rc = set_aside(l, sp, &m)) < 0)
                                                return rc;
                                        continue;
                                }
                                if (rc < 0) {
                                        km_link_put_slot(l, (uint32_t)cookie);
                                        if (rc == -EAGAIN)
                                                return sent;
                                        km_link_set_state(l, KM_LINK_DOWN, "send refused by the transport");
                                        /* Not connected: the transport's own drop and
                                         * reconnect follow. Anything else (no memory): a
                                         * fresh connection, never a link left down on a
                                         * transport that is up. */
                                        if (rc != -ENOTCONN && l->ops->reset)
                                                l->ops->reset(l);
                                        return sent;
                                }
                                l->cursor[prio] = m.id;
                                l->sent++;
                                if (!l->budget_at_device)
                                        l->bytes_sent += cost; /* else counted on the air */
                                l->budget_bytes_used += cost;
                                l->budget_msgs_used++;
                                sent++;
                                batch++;
                        }
                }
                if (!batch && !looked)
                        break;
                if (!batch)
                        continue; /* only skipped messages: look again past them */
        }
        return sent;
}

static bool compete(const struct km_link *a, const struct km_link *b)
{
        return !a->group || !b->group || strcmp(a->group, b->group) == 0;
}

/* Whether links[k] pulls prio: it is eligible and may carry it, and no competing link
 * that may is preferred (lower order; the first in config order among equals). */
static bool responsible(struct km_link *const *links, size_t n, size_t k, int dir, const struct km_route *route,
                        int prio, int64_t now)
{
        const struct km_link *l = links[k];
        if (!km_link_eligible(l, now) || !carries_prio(l, route, prio))
                return false;
        for (size_t j = 0; j < n; j++) {
                const struct km_link *o = links[j];
                if (j == k || o->dir != dir || !compete(l, o) || !km_link_eligible(o, now) || !carries_prio(o, route, prio))
                        continue;
                if (o->order < l->order || (o->order == l->order && j < k))
                        return false;
        }
        return true;
}

int km_sched_pump_all(struct km_link *const *links, size_t n, struct km_spool *sp, const struct km_route *route)
{
        uint8_t prios[KM_PRIO_COUNT];
        int64_t now = km_mono_ms();
        int total = 0;

        for (int dir = 0; dir < KM_DIR_COUNT; dir++) {
                int np = km_spool_prios(sp, dir, prios);
                if (!np)
                        continue;
                /* Decided for all links before any pumps: a link that fails while
                 * pumping does not hand its priorities on within the same turn. */
                bool mine[n ? n : 1][KM_PRIO_COUNT], any[n ? n : 1];
                for (size_t k = 0; k < n; k++) {
                        memset(mine[k], 0, sizeof(mine[k]));
                        any[k] = false;
                        if (links[k]->dir != dir || links[k]->state != KM_LINK_UP)
                                continue;
                        for (int i = 0; i < np; i++)
                                if (responsible(links, n, k, dir, route, prios[i], now))
                                        mine[k][prios[i]] = any[k] = true;
                }
                for (size_t k = 0; k < n; k++) {
                        if (!any[k] || links[k]->dir != dir || links[k]->state != KM_LINK_UP)
                                continue;
                        int rc = pump_link(links[k], sp, mine[k], prios, np, now);
                        if (rc < 0)
                                return rc;
                        total += rc;
                }
        }
        return total;
}

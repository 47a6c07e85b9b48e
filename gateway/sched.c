/* SPDX-License-Identifier: MIT */
/* Scheduler: per link, next messages by class priority then age, within its window. */
#include "sched.h"

#include <errno.h>
#include <string.h>

#include "log.h"

#define BATCH 64 /* messages of one priority before higher ones are looked at again */

int km_sched_pump(struct km_link *l, struct km_spool *sp)
{
        uint8_t prios[KM_PRIO_COUNT];
        int sent = 0;

        while (l->state == KM_LINK_UP && l->nfree) {
                int np = km_spool_prios(sp, l->dir, prios);
                int batch = 0;
                for (int i = 0; i < np && !batch; i++) {
                        int prio = prios[i];
                        struct km_msg m;
                        while (batch < BATCH && l->nfree && l->state == KM_LINK_UP) {
                                int rc = km_spool_next(sp, l->dir, prio, l->cursor[prio], &m);
                                if (rc < 0)
                                        return rc;
                                if (rc == 0)
                                        break;
                                int64_t cookie = km_link_take_slot(l, m.id);
                                rc = l->ops->send(l, &m, (uint32_t)cookie);
                                if (rc < 0) {
                                        km_link_put_slot(l, (uint32_t)cookie);
                                        if (rc == -EAGAIN)
                                                return sent;
                                        km_link_set_state(l, KM_LINK_DOWN, "send refused by the transport");
                                        return sent;
                                }
                                l->cursor[prio] = m.id;
                                l->sent++;
                                sent++;
                                batch++;
                        }
                }
                if (!batch)
                        break;
        }
        return sent;
}

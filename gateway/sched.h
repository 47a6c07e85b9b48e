/* SPDX-License-Identifier: MIT */
/* Scheduler: fills each link's window from the spool, by class priority then age. */
#ifndef KM_SCHED_H
#define KM_SCHED_H

#include "link.h"
#include "spool.h"

/* Loop thread. Hands l the next messages of its direction until its window is full or
 * the spool has nothing more; higher priorities are looked at again after every batch
 * so that an alert arriving during a backlog leaves next. Returns messages sent or a
 * negative errno. */
int km_sched_pump(struct km_link *l, struct km_spool *sp);

#endif

/* SPDX-License-Identifier: MIT */
/* Scheduler: per link, next messages by class priority then age, within its window and budget. */
#ifndef KM_SCHED_H
#define KM_SCHED_H

#include <stddef.h>

#include "link.h"
#include "route.h"
#include "spool.h"

/* Loop thread. For every priority with messages queued, the responsible link is the
 * eligible link (UP for at least its hold time) of lowest order that may carry a class
 * of that priority; it alone pulls that priority, so a message is in flight on one
 * link at a time and traffic moves back to the preferred link when it returns. Each
 * link fills its window highest priority first, looking at higher priorities again
 * after every batch (an alert arriving during a backlog leaves next), skipping
 * messages of classes it may not carry, and stopping at its budget. Returns messages
 * handed to links, or a negative errno. */
int km_sched_pump_all(struct km_link *const *links, size_t n, struct km_spool *sp, const struct km_route *route);

/* Bytes a message costs a link's budget (topic and payload). */
size_t km_sched_cost(const struct km_msg *m);

#endif

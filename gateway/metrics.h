/* SPDX-License-Identifier: MIT */
/* Metrics: Prometheus text exposition of the daemon's counters and gauges on a local address. */
#ifndef KM_METRICS_H
#define KM_METRICS_H

#include <stdio.h>

#include "config.h"

struct km_daemon;

/* Validates [metrics] into errors of c. */
int km_metrics_check(struct km_conf *c);

/* Serves /metrics on [metrics] listen when it is set. A port that cannot be bound is
 * logged and kuimen runs without metrics. Returns 0 or -ENOMEM. */
int km_metrics_start(struct km_daemon *d, struct km_conf *c);

/* Prints the [metrics] keys for --help-config. */
void km_metrics_print_help(FILE *out);

#endif

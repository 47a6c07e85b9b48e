/* SPDX-License-Identifier: MIT */
/* Metrics: placeholder until the Prometheus exposition lands. */
#include "metrics.h"

int km_metrics_check(struct km_conf *c)
{
        (void)c;
        return 0;
}

int km_metrics_start(struct km_daemon *d, struct km_conf *c)
{
        (void)d, (void)c;
        return 0;
}

void km_metrics_print_help(FILE *out)
{
        (void)out;
}

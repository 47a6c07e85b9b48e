/* SPDX-License-Identifier: MIT */
/* Control socket: placeholder until the kuimenctl work lands. */
#include "control.h"

int km_control_check(struct km_conf *c)
{
        (void)c;
        return 0;
}

int km_control_start(struct km_daemon *d, struct km_conf *c)
{
        (void)d, (void)c;
        return 0;
}

void km_control_print_help(FILE *out)
{
        (void)out;
}

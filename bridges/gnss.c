/* SPDX-License-Identifier: MIT */
/* GNSS bridge: placeholder until the gpsd reader lands. */
#include "bridges/gnss.h"

int km_gnss_check(struct km_conf *c)
{
        (void)c;
        return 0;
}

int km_gnss_start(struct km_daemon *d, struct km_conf *c)
{
        (void)d, (void)c;
        return 0;
}

void km_gnss_print_help(FILE *out)
{
        (void)out;
}

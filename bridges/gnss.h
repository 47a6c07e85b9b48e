/* SPDX-License-Identifier: MIT */
/* GNSS bridge: the box's own receiver through gpsd (libgps), served by the event loop. */
#ifndef KM_BRIDGE_GNSS_H
#define KM_BRIDGE_GNSS_H

#include <stdio.h>

#include "gateway/config.h"
#include "gateway/daemon.h"

/* Validates [gnss] into errors of c; a config without [gnss] is valid. */
int km_gnss_check(struct km_conf *c);

/* Starts reading gpsd when c has a [gnss] section; 0 when there is none. */
int km_gnss_start(struct km_daemon *d, struct km_conf *c);

void km_gnss_print_help(FILE *out);

#endif

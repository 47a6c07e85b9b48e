/* SPDX-License-Identifier: MIT */
/* Control socket: what kuimenctl talks to (status, links, spool, reload) over a unix socket. */
#ifndef KM_CONTROL_H
#define KM_CONTROL_H

#include <stdio.h>

#include "config.h"

struct km_daemon;

/* Validates [control] into errors of c. */
int km_control_check(struct km_conf *c);

/* Listens on [control] socket (default $RUNTIME_DIRECTORY/kuimen.sock) in the loop. */
int km_control_start(struct km_daemon *d, struct km_conf *c);

void km_control_print_help(FILE *out);

#endif

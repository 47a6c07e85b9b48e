/* SPDX-License-Identifier: MIT */
/* GNSS bridge: the box's own receiver through gpsd (libgps), served by the event loop. */
#ifndef KM_BRIDGE_GNSS_H
#define KM_BRIDGE_GNSS_H

#include <stdint.h>
#include <stdio.h>

#include "gateway/config.h"
#include "gateway/daemon.h"

/* Validates [gnss] into errors of c; a config without [gnss] is valid. */
int km_gnss_check(struct km_conf *c);

/* Starts reading gpsd when c has a [gnss] section; 0 when there is none. */
int km_gnss_start(struct km_daemon *d, struct km_conf *c);

void km_gnss_print_help(FILE *out);

/* GNSS-disciplined time for stamping and expiring messages, from any thread: returns
 * 1 and sets *gnss_now_ms (unix ms) when the system clock is unsynchronised (adjtimex
 * STA_UNSYNC) and a timed fix has arrived since start (carried forward on the
 * monotonic clock), else 0 (use the system clock). The full rule is beside the code
 * in gnss.c. */
int km_gnss_clock(int64_t *gnss_now_ms);

#endif

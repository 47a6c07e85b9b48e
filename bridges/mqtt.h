/* SPDX-License-Identifier: MIT */
/* MQTT bridge: local ingest and command delivery, and the mqtt link to the center broker. */
#ifndef KM_BRIDGE_MQTT_H
#define KM_BRIDGE_MQTT_H

#include <stdio.h>

#include "gateway/config.h"
#include "gateway/daemon.h"

/* Validates [local] into errors of c (for --check-config and start). */
int km_mqtt_local_check(struct km_conf *c);

/* Validates one [link NAME] of type mqtt. */
int km_mqtt_link_check(struct km_conf *c, const char *section);

/* Connects to the local broker: subscribes to [local] subscribe for ingest and adds
 * the link that delivers commands (spool direction down) to local subscribers. */
int km_mqtt_local_start(struct km_daemon *d, struct km_conf *c);

/* Adds the mqtt link of section "link NAME": publishes the upward queue to the
 * center broker and takes commands from <topic_prefix>/<node>/cmd/#. */
int km_mqtt_link_start(struct km_daemon *d, struct km_conf *c, const char *section);

void km_mqtt_print_help(FILE *out);

#endif

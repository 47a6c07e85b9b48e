/* SPDX-License-Identifier: MIT */
/* Incidents: the response timeline of each assigned unit (reacted, turned out, arrived, withdrew), from answers and positions; state in the spool's SQLite file. */
#ifndef KM_INCIDENTS_H
#define KM_INCIDENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

struct km_incidents;
struct km_spool;
struct km_daemon;
struct km_control_buf;

#define KM_INCIDENTS_OPEN_MAX 64
#define KM_INCIDENTS_UNITS_MAX 64

/* [incidents]: how positions become arrivals and withdrawals. */
struct km_incidents_conf {
        int64_t dwell_ms;     /* inside (or out) this long, by the fixes' own times, to count */
        double hysteresis_m;  /* out means beyond radius + this; in means within radius */
        double base_m;        /* a unit this far from its first fix after the opening turned out */
};

int km_incidents_check(struct km_conf *c);
int km_incidents_conf_load(struct km_incidents_conf *conf, struct km_conf *c);
void km_incidents_print_help(FILE *out);

struct km_incidents_io {
        /* Upstream, class status, retained: topic incident/<id>. */
        int (*emit)(void *ud, const char *topic, const char *payload, size_t len);
        int64_t (*now)(void *ud);
        void (*dirty)(void *ud);
        void *ud;
};

/* conf copied, io copied; tables made in sp's SQLite file when missing. */
int km_incidents_new(struct km_incidents **out, struct km_spool *sp, const struct km_incidents_conf *conf,
                     const struct km_incidents_io *io);
void km_incidents_free(struct km_incidents *in);

/* Loop thread. An incident command (cmd/incident, kuimenctl incident open):
 * {"id","lat","lon","radius","units":[...],"call"} opens one, {"id","close":true} closes
 * it. 0 once stored or refused for good (why in err, counted); negative errno when it
 * could not be stored. */
int km_incidents_command(struct km_incidents *in, const void *payload, size_t len, char *err, size_t errlen);

/* Loop thread. A unit's fix (time_ms: the fix's own time, unix ms). */
void km_incidents_position(struct km_incidents *in, const char *unit, double lat, double lon, int64_t time_ms);

/* Loop thread. A unit answered call call_id with status (received, acting, done, cannot). */
void km_incidents_answer(struct km_incidents *in, const char *call_id, const char *unit, const char *status);

/* Loop thread, on a center. The timeline base published on incident/<id> (payload, its
 * JSON), heard over MQTT or relayed from a narrow link: kept under "base/id" for
 * kuimenctl incident show. A timeline only grows (times are set once), so a copy that
 * knows less than the one kept (an older one arriving late by the other path) is
 * ignored. */
void km_incidents_heard(struct km_incidents *in, const char *base, const char *id, const void *payload, size_t len);

/* Loop thread. Writes what changed; full: fsynced before it returns. */
int km_incidents_flush(struct km_incidents *in, bool full);

/* What the incidents are now: open ones and their units neither arrived nor withdrawn
 * (reported done) yet (a base), the
 * bases' timelines kept (a center), and commands refused as bad input. */
struct km_incidents_stats {
        uint64_t open, not_arrived, heard, bad;
};
void km_incidents_stats(const struct km_incidents *in, struct km_incidents_stats *st);

/* Loop thread. "incident JSON" opens, "incident close ID", "incident show [ID]". */
void km_incidents_control(struct km_incidents *in, const char *args, struct km_control_buf *out);

/* Daemon glue: into d->incidents (a base runs incidents, a center keeps what it hears). */
int km_incidents_start(struct km_daemon *d, struct km_conf *c);

#endif

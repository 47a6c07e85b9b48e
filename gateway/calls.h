/* SPDX-License-Identifier: MIT */
/* Calls (一叫四应): warnings delivered to terminals, answered, repeated and escalated, every state change sent upstream; state in the spool's SQLite file. */
#ifndef KM_CALLS_H
#define KM_CALLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

struct km_calls;
struct km_daemon;
struct km_spool;
struct km_control_buf;

enum km_call_level { KM_CALL_BLUE, KM_CALL_YELLOW, KM_CALL_ORANGE, KM_CALL_RED, KM_CALL_LEVELS };

/* Most escalation steps of one chain, recipients of one call, open calls. */
#define KM_CALLS_STEPS 4
#define KM_CALLS_RCPT_MAX 256
#define KM_CALLS_OPEN_MAX 256
#define KM_CALLS_ID_MAX 32   /* bytes of a call id */
#define KM_CALLS_UNIT_MAX 31 /* bytes of a unit id (the position bridge's bound) */
#define KM_CALLS_TEXT_MAX 1024
#define KM_CALLS_ANSWER_MAX 200 /* an answer's text is cut (at a character) to this */

/* What [calls], [calls level NAME] and [calls group NAME] say (km_calls_conf_load). */
struct km_calls_level_conf {
        int64_t respond_within_ms, repeat_every_ms, escalate_after_ms;
        struct km_strv steps[KM_CALLS_STEPS]; /* escalate_to, split at '>' */
        size_t nsteps;
};

struct km_calls_group {
        char *name;
        struct km_strv units;
};

struct km_calls_conf {
        struct km_calls_level_conf level[KM_CALL_LEVELS];
        struct km_calls_group *groups;
        size_t ngroups;
        int64_t keep_closed_ms; /* closed calls stay this long for kuimenctl call show */
        int64_t tick_ms;        /* how often deadlines are looked at */
};

/* Validates every [calls ...] section into c's errors (FILE:LINE: key: why); 0 or -EINVAL. */
int km_calls_check(struct km_conf *c);
/* Fills conf from c (defaults where c says nothing); errors as km_calls_check. The
 * caller km_calls_conf_release()s conf in every case. */
int km_calls_conf_load(struct km_calls_conf *conf, struct km_conf *c);
void km_calls_conf_release(struct km_calls_conf *conf);
void km_calls_print_help(FILE *out);

/* What the calls engine does to the world; the daemon's glue, or a test's. */
struct km_calls_io {
        /* Towards the local broker: topic (call/<unit>), QoS 1, retained as said. Durable
         * when it returns 0; *id gets the spool id its broker acknowledgement will name
         * (km_calls_acked). */
        int (*publish)(void *ud, const char *topic, const char *payload, size_t len, bool retain, uint64_t *id);
        /* Upstream, class alert: topic call/<id>. Durable when it returns 0. */
        int (*emit)(void *ud, const char *topic, const char *payload, size_t len);
        /* Unix ms (the daemon's clock: GNSS time while the system clock is unsynchronised). */
        int64_t (*now)(void *ud);
        /* Something changed that wants a km_calls_flush soon (a timer's, an ack's work). */
        void (*dirty)(void *ud);
        /* A recipient answered (NULL: nobody listens): the incidents' timelines. */
        void (*answered)(void *ud, const char *call_id, const char *unit, const char *status);
        void *ud;
};

/* Builds the engine over sp's SQLite file (tables calls and call_rcpt, made when
 * missing) and loads the open calls and the closed ones still kept. conf is moved in
 * (the caller's copy is cleared), io copied. On success *out is the caller's, freed with
 * km_calls_free. 0 or a negative errno. */
int km_calls_new(struct km_calls **out, struct km_spool *sp, struct km_calls_conf *conf,
                 const struct km_calls_io *io);
/* Writes what is unwritten; NULL is a no-op. */
void km_calls_free(struct km_calls *cs);

/* Loop thread. A call command (the JSON of cmd/call, or of kuimenctl call): a new call
 * is stored, then sent to its recipients; {"id","close":true} closes one; a call id
 * already known is taken once (a command that came again). Returns 0 once stored or
 * refused for good (bad input: why in err, counted, logged), or a negative errno when
 * it could not be stored (the caller must not acknowledge it). err may be NULL. */
int km_calls_command(struct km_calls *cs, const void *payload, size_t len, char *err, size_t errlen);

/* Loop thread. A message from the local broker: on call/<unit>/answer it is taken as
 * an answer and 1 returned (also when refused as bad input: counted, logged); 0 for
 * other topics. The state it changed is written by the next km_calls_flush. */
int km_calls_answer(struct km_calls *cs, const char *topic, const void *payload, size_t len);

/* Loop thread. The local broker acknowledged spool message id: a call it carried is
 * delivered. */
void km_calls_acked(struct km_calls *cs, uint64_t id);

/* Loop thread. Repeats, deadlines and escalations due at the io's now. */
void km_calls_tick(struct km_calls *cs);

/* Loop thread. Writes every changed call in one transaction; full: fsynced before it
 * returns (an acknowledgement follows). 0 or a negative errno (nothing acknowledged
 * may then rely on it). */
int km_calls_flush(struct km_calls *cs, bool full);

/* Counters, and (open, unanswered, overdue, escalated) what the open calls are now. */
struct km_calls_stats {
        uint64_t calls, open, answers, repeats, escalations, bad_commands, bad_answers;
        uint64_t changes;    /* changes spooled upstream */
        uint64_t unanswered; /* recipients of open calls with no answer yet (pending, delivered or overdue) */
        uint64_t overdue;    /* of those, past respond_within */
        uint64_t escalated;  /* open calls that took an escalation step */
};
void km_calls_stats(const struct km_calls *cs, struct km_calls_stats *st);

/* Loop thread. The control socket's "call ..." requests: "call JSON" raises one (as
 * cmd/call), "call close ID", "call show [ID]". The reply is JSON. */
void km_calls_control(struct km_calls *cs, const char *args, struct km_control_buf *out);

/* The level's name ("red"), or NULL. */
const char *km_call_level_name(int level);

/* Daemon glue: on a base, builds the engine from c with the daemon's spool, clock and
 * loop (a timer every tick), into d->calls. 0 or a negative errno. */
int km_calls_start(struct km_daemon *d, struct km_conf *c);

/* A call, incident or unit id: it becomes an MQTT topic level and a JSON string, so
 * 1..max bytes of printable ASCII without / + # " \\ or a blank. */
bool km_calls_name_ok(const char *s, size_t max);

#endif

/* SPDX-License-Identifier: MIT */
/* Calls, inside: what the engine (calls.c), its store (calls-store.c), its config
 * (calls-conf.c) and its control requests (calls-control.c) share; not for other modules. */
#ifndef KM_CALLS_INTERNAL_H
#define KM_CALLS_INTERNAL_H

/* Changes held back while the spool refuses them; beyond this the oldest are dropped. */
#define KM_CALLS_HELD_MAX 4096

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "calls.h"
#include "log.h"

struct sd_event_source;

enum rstate { R_PENDING, R_DELIVERED, R_OVERDUE, R_RECEIVED, R_ACTING, R_DONE, R_CANNOT, R_N };
static const char *const rstate_names[R_N] = { "pending", "delivered", "overdue", "received", "acting", "done", "cannot" };

enum cstate { C_OPEN, C_ESCALATED, C_CLOSED, C_N };
static const char *const cstate_names[C_N] = { "open", "escalated", "closed" };

static const char *const level_names[KM_CALL_LEVELS + 1] = { "blue", "yellow", "orange", "red", NULL };

struct rcpt {
        char unit[KM_CALLS_UNIT_MAX + 1];
        uint8_t state; /* enum rstate */
        uint8_t step;  /* 0: called first; k: by escalation step k */
        uint32_t sends;
        int64_t first_ms, sent_ms, delivered_ms, answered_ms;
        uint64_t spool_id; /* the copy the broker has not acknowledged yet, 0: none */
        char *answer;      /* the answer's text, or NULL */
};

struct call {
        char id[KM_CALLS_ID_MAX + 1];
        uint8_t level, state; /* enum km_call_level, enum cstate */
        uint8_t esc_done;     /* escalation steps taken */
        bool local;           /* raised by kuimenctl, not by the center */
        bool dirty;
        char *text;
        int64_t created_ms, closed_ms;
        int64_t respond_ms, repeat_ms, esc_after_ms;
        struct km_strv steps[KM_CALLS_STEPS];
        size_t nsteps;
        struct rcpt *r;
        size_t nr;
};

struct km_calls {
        struct km_calls_conf conf;
        struct km_calls_io io;
        struct km_spool *sp;
        sqlite3 *db;
        sqlite3_stmt *put_call, *put_rcpt, *del_call, *del_rcpt;
        struct call **c;
        size_t n, cap;
        struct km_calls_stats st;
        /* Changes the spool refused (a storage fault), in order, sent before any newer
         * one once it takes them again (km_calls_tick). */
        struct held {
                char *topic, *payload;
        } *held;
        size_t nheld, held_cap;
        struct km_log_limit bad_log;
        struct km_log_limit send_fail_log; /* a copy the spool refused: logged at most every 10 s */
        /* daemon glue */
        struct km_daemon *d;
        struct sd_event_source *tick, *flush;
};

static inline int level_of(const char *s)
{
        for (int i = 0; i < KM_CALL_LEVELS; i++)
                if (strcmp(s, level_names[i]) == 0)
                        return i;
        return -1;
}

static inline bool answered(int s)
{
        return s >= R_RECEIVED;
}

/* Unanswered, or answered that it cannot: someone else must be called. */
static inline bool needs_help(int s)
{
        return s < R_RECEIVED || s == R_CANNOT;
}

/* calls-conf.c */
/* "a, b > c": steps of names; 0, -ENOMEM, or -EINVAL with why. */
int km_calls_split_steps(const char *s, struct km_strv *steps, size_t *nsteps, const char **why);
void km_calls_steps_free(struct km_strv *steps, size_t n);
/* The group called name, or NULL. */
const struct km_calls_group *km_calls_find_group(const struct km_calls_conf *conf, const char *name);

/* calls-store.c */
/* Deletes call id and its recipients, inside the caller's transaction. 0 or -EIO. */
int km_calls_delete(struct km_calls *cs, const char *id);

/* calls.c: the engine */
/* Frees c and everything it owns; NULL is a no-op. */
void km_calls_call_free(struct call *c);
/* The call with this id (open or kept closed), or NULL. */
struct call *km_calls_find(const struct km_calls *cs, const char *id);
size_t km_calls_open_n(const struct km_calls *cs);
/* Closes c at now: its change upstream, its retained copies taken off. */
void km_calls_close(struct km_calls *cs, struct call *c, int64_t now);
/* Bad input from outside: counted in *counter, logged at most every 10 s. */
void km_calls_bad(struct km_calls *cs, uint64_t *counter, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A call command's JSON (payload, len); local: from kuimenctl. 0 once stored or closed,
 * -EINVAL with why in err (not counted), or another negative errno. */
int km_calls_do_command(struct km_calls *cs, const void *payload, size_t len, bool local, char *err, size_t errlen);

#endif

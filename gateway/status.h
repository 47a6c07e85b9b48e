/* SPDX-License-Identifier: MIT */
/* Status board: what the bridges last saw (positions, the GNSS fix, bad input by reason), for kuimenctl and metrics. */
#ifndef KM_STATUS_H
#define KM_STATUS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define KM_STATUS_REASONS 32   /* distinct bad-input reasons counted apart */
#define KM_STATUS_UNITS 256    /* units whose last position is kept; the stalest goes first */
#define KM_STATUS_UNIT_MAX 32
#define KM_STATUS_JSON_MAX 640

struct km_status_unit {
        char unit[KM_STATUS_UNIT_MAX];
        char json[KM_STATUS_JSON_MAX];
        int64_t at_ms; /* system time it was heard */
};

/*
 * Bridges write from their own threads (Paho's, the loop's); the control socket and
 * the metrics endpoint read on the loop. Everything is behind one mutex: the writes
 * are a position per terminal report and a counter per refused payload, far below
 * what would make the lock matter. Nothing here is durable: it is a view.
 */
struct km_status {
        pthread_mutex_t mu;
        struct {
                const char *name; /* borrowed: a string literal of the bridge */
                uint64_t n;
        } bad[KM_STATUS_REASONS];
        size_t nbad;
        struct km_status_unit *units; /* grows to KM_STATUS_UNITS */
        size_t nunits, capunits;
        char gnss_state[KM_STATUS_JSON_MAX], gnss_fix[KM_STATUS_JSON_MAX];
        int64_t gnss_state_ms, gnss_fix_ms;
};

void km_status_init(struct km_status *s);
void km_status_deinit(struct km_status *s);

/* A payload refused for reason (a string that outlives the daemon, e.g. a literal).
 * Reasons past KM_STATUS_REASONS distinct names are counted under "other". */
void km_status_bad_input(struct km_status *s, const char *reason);

/* The latest canonical position JSON of unit (copied; truncated JSON is not kept). */
void km_status_position(struct km_status *s, const char *unit, const char *json, size_t len, int64_t now_ms);

/* The GNSS bridge's latest status JSON and latest published fix JSON (copied). */
void km_status_gnss_state(struct km_status *s, const char *json, size_t len, int64_t now_ms);
void km_status_gnss_fix(struct km_status *s, const char *json, size_t len, int64_t now_ms);

/* Readers: call fn for each entry under the lock (fn must not call back into s). */
void km_status_each_bad(struct km_status *s, void (*fn)(void *ud, const char *reason, uint64_t n), void *ud);
void km_status_each_position(struct km_status *s, void (*fn)(void *ud, const struct km_status_unit *u), void *ud);
/* fn gets the state and fix JSON (NULL when none came) and their times. */
void km_status_gnss(struct km_status *s,
                    void (*fn)(void *ud, const char *state, int64_t state_ms, const char *fix, int64_t fix_ms), void *ud);

#endif

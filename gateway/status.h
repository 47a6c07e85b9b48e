/* SPDX-License-Identifier: MIT */
/* Status board: what the bridges last saw (positions, the GNSS fix, bad input by reason) and the drain estimate, for kuimenctl, metrics and --live. */
#ifndef KM_STATUS_H
#define KM_STATUS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define KM_STATUS_REASONS 32   /* distinct bad-input reasons counted apart */
#define KM_STATUS_UNITS 256    /* units whose last position is kept; the stalest goes first */
#define KM_STATUS_UNIT_MAX 32
#define KM_STATUS_JSON_MAX 640
#define KM_STATUS_TRACK 64     /* fixes of a unit's track kept for the map */
#define KM_STATUS_TRACK_GAP_MS 2000 /* a fix closer than this to the previous replaces it */

struct km_status_fix {
        double lat, lon;
        int64_t at_ms;
};

struct km_status_unit {
        char unit[KM_STATUS_UNIT_MAX];
        char json[KM_STATUS_JSON_MAX];
        int64_t at_ms; /* system time it was heard */
        /* The last fixes, oldest first from track_first (a ring of ntrack). */
        struct km_status_fix track[KM_STATUS_TRACK];
        unsigned ntrack, track_first;
};

/* A center: what it heard from one base (over MQTT on its broker, or relayed from a
 * narrow link): the base's node status, each link's status and each unit's position,
 * as the base published them (JSON checked and kept unformatted). */
#define KM_STATUS_BASES 64
#define KM_STATUS_BASE_LINKS 16
#define KM_STATUS_BASE_UNITS 64

struct km_status_heard {
        char name[KM_STATUS_UNIT_MAX]; /* the link or unit; "" for the node status */
        char json[KM_STATUS_JSON_MAX];
        int64_t at_ms;
        bool narrow; /* last heard through a narrow link */
};

struct km_status_base {
        char name[KM_STATUS_UNIT_MAX];
        struct km_status_heard status;
        struct km_status_heard links[KM_STATUS_BASE_LINKS];
        struct km_status_heard units[KM_STATUS_BASE_UNITS];
        size_t nlinks, nunits;
};

/*
 * Bridges write from their own threads (the loop's, and any other that reports); the control socket and
 * the metrics endpoint read on the loop. Everything is behind one mutex: the writes
 * are a position per terminal report and a counter per refused payload, far below
 * what would make the lock matter. Nothing here is durable: it is a view.
 */
/* ---- the drain: how fast a backlog leaves, and when it will be gone ----
 * The loop samples each direction's acknowledged count and depth once a second
 * (gateway/control.c); the estimate reads the last seconds of them. A link that sends
 * one message a minute (a BeiDou card) shows no ack in five seconds, so the window
 * grows until it holds a few acks, up to a minute. It never reaches back past a moment
 * when no link could carry: the seconds of a cut would halve the rate of a drain that
 * has just begun. */
#define KM_DRAIN_SAMPLES 64 /* one a second: a minute and a bit */

struct km_drain_sample {
        int64_t mono_ms;   /* CLOCK_MONOTONIC ms it was taken */
        uint64_t acked;    /* acknowledged by the direction's links so far (a counter) */
        uint64_t depth;    /* queued in the direction, in flight included */
        uint64_t inflight; /* of depth, handed to a link and not yet acknowledged */
        bool carrying;     /* some link of the direction may send (km_link_eligible) */
};

struct km_drain {
        struct km_drain_sample s[KM_DRAIN_SAMPLES];
        unsigned next, n; /* ring: the next slot to write, and how many are held */
};

struct km_drain_est {
        bool draining;       /* acks flow and more waits than is in flight */
        double rate;         /* acknowledged messages a second over the window; 0 unless draining */
        double backlog_rate; /* the depth's change a second over the window (< 0: shrinking) */
        double eta_s;        /* depth / -backlog_rate while draining and shrinking, else -1 */
        double window_s;     /* the seconds the estimate covers (0: none yet) */
        uint64_t depth;      /* at the newest sample */
};

/* Adds one sample (copied); the oldest of a full ring goes. */
void km_status_drain_add(struct km_drain *dr, const struct km_drain_sample *s);

/* The estimate from dr's samples into out (all zero and eta_s -1 with fewer than two
 * samples, or when no link carries at the newest). */
void km_status_drain_estimate(const struct km_drain *dr, struct km_drain_est *out);

/* Several directions' estimates as one (both ways of the spool): draining when one
 * is, the rates of those that drain added up, the time left the longest of theirs (-1
 * when one of them does not shrink). Acks one way never drain the other's backlog, so
 * the directions are estimated apart and only then put together. */
void km_status_drain_sum(const struct km_drain_est *e, size_t n, struct km_drain_est *out);

/* "draining 1520 msg/s, ~12 s left" (or "..., backlog growing by 30 msg/s") into buf;
 * "" when not draining. */
void km_status_drain_text(const struct km_drain_est *e, char *buf, size_t n);

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
        struct km_status_base **bases; /* a center's: KM_STATUS_BASES at most */
        size_t nbases;
        /* Per direction (enum km_dir). Loop thread only: outside mu. */
        struct km_drain drain[KM_DIR_COUNT];
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

/* A center heard base publish what (the topic below <topic_prefix>/<base>/: "status",
 * "link/<name>" or "pos/<unit>"; anything else is ignored) with payload json (copied
 * once it parses as a JSON object and fits). narrow: relayed from a narrow link. */
void km_status_heard(struct km_status *s, const char *base, const char *what, const char *json, size_t len,
                     bool narrow, int64_t now_ms);

/* Calls fn for each base heard, in the order first heard, under the lock. */
void km_status_each_base(struct km_status *s, void (*fn)(void *ud, const struct km_status_base *b), void *ud);

/* Readers: call fn for each entry under the lock (fn must not call back into s). */
void km_status_each_bad(struct km_status *s, void (*fn)(void *ud, const char *reason, uint64_t n), void *ud);
void km_status_each_position(struct km_status *s, void (*fn)(void *ud, const struct km_status_unit *u), void *ud);
/* fn gets the state and fix JSON (NULL when none came) and their times. */
void km_status_gnss(struct km_status *s,
                    void (*fn)(void *ud, const char *state, int64_t state_ms, const char *fix, int64_t fix_ms), void *ud);

#endif

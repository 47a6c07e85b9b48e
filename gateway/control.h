/* SPDX-License-Identifier: MIT */
/* Control socket: what kuimenctl talks to (status, links, spool, reload) over a unix socket. */
#ifndef KM_CONTROL_H
#define KM_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "spool.h"

struct km_daemon;

/* Validates [control] into errors of c. Returns 0 or -EINVAL. */
int km_control_check(struct km_conf *c);

/* Listens on [control] socket in the loop; the default is $RUNTIME_DIRECTORY/kuimen.sock,
 * else kuimen.sock in the spool's directory. A socket file nobody answers on is
 * replaced; when the socket cannot be set up, the error is logged and kuimen runs
 * without it (forwarding matters more than the operator's view). Also arms the drain
 * sampler (km_control_sample) that status, /metrics and --live read. Returns 0 or a
 * negative errno (-ENOMEM, or the timer's). */
int km_control_start(struct km_daemon *d, struct km_conf *c);

/* Prints the [control] keys for --help-config. */
void km_control_print_help(FILE *out);

/* A growable reply. On allocation failure it keeps what it had and sets failed; the
 * server then sends nothing rather than half an answer. */
struct km_control_buf {
        char *p;
        size_t len, cap;
        bool failed;
};

/* Appends to b (kept NUL-terminated). */
void km_control_printf(struct km_control_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string (", \\ and control characters escaped). */
void km_control_json_str(struct km_control_buf *b, const char *s);
/* Frees b's text and empties it; b itself is the caller's. */
void km_control_buf_free(struct km_control_buf *b);

/* One request, one reply, then close: the control socket's shape (the metrics and the
 * web page are HTTP, gateway/http.c). */
struct km_control_proto {
        const char *tag;    /* log subsystem: "control" */
        size_t max_request; /* a longer request gets answer(too_long = true) */
        /* Whether req[0..len) is a whole request (req is NUL-terminated). */
        bool (*complete)(const char *req, size_t len);
        /* Writes the reply into out. Runs on the loop thread. */
        void (*answer)(struct km_daemon *d, const char *req, size_t len, bool too_long, struct km_control_buf *out);
};

/* Serves proto on the listening, non-blocking socket fd in d's loop, at most a few
 * connections at a time, each closed after 5 s at the latest. Takes ownership of fd on
 * success (closed when the daemon stops); path (copied, may be NULL) is unlinked then.
 * Returns 0 or negative errno. */
int km_control_serve(struct km_daemon *d, int fd, const struct km_control_proto *proto, const char *path);

/* The spool by class: route classes are matched to the spool's per-priority queues
 * (classes sharing a priority are reported together as "a+b"; a queued priority no
 * class has any more, after a reload, as "prio-N"). */
struct km_control_class {
        char name[128];
        int prio;
        uint64_t depth;    /* both directions */
        int64_t oldest_ms; /* created time of the oldest queued, 0 if none */
};

/* Loop thread. Fills out (up to max) in priority order from st; returns how many. */
int km_control_classes(struct km_daemon *d, const struct km_spool_stats *st, struct km_control_class *out, int max);

struct km_link;

/* Loop thread. A link's backlog: the messages queued in its direction (in flight
 * included) of the priorities of the classes it may carry (every priority when its
 * `classes` is empty). A center's narrow link counts every base's commands, not only
 * those of its peers. */
uint64_t km_control_link_backlog(struct km_daemon *d, const struct km_link *l, const struct km_spool_stats *st);

/* Loop thread. Takes the drain sample of each direction into d->status (km_status_drain_add);
 * km_control_start arms a timer that does it every second. */
void km_control_sample(struct km_daemon *d);

/* Loop thread. The drain estimate of direction dir (enum km_dir), or of both when dir
 * is -1 (km_status_drain_sum). */
struct km_drain_est;
void km_control_drain(struct km_daemon *d, int dir, struct km_drain_est *out);

/* Loop thread. The JSON views the control socket and the web page (gateway/http.c)
 * both serve, one producer each, appended to b as one line ending in \n:
 * status (kuimenctl status; with_head adds the queue's head, as "spool"), units (each
 * unit's last position and track, the box's own GNSS fix) and bases (on a center, every
 * base it hears, with its links and units). */
void km_control_status(struct km_daemon *d, struct km_control_buf *b, bool with_head);
void km_control_units(struct km_daemon *d, struct km_control_buf *b);
void km_control_bases(struct km_daemon *d, struct km_control_buf *b);

/* Loop thread. kuimen --live: a block each second of the counters that matter (the
 * rest when not zero), each link's state, since when, backlog and reason, the backlog
 * by class, and while draining the rate and time left; wrapped to the terminal's width
 * (stdout a terminal: its width, else $COLUMNS, else not wrapped). */
void km_control_live(struct km_daemon *d, FILE *out);

#endif

/* SPDX-License-Identifier: MIT */
/* Topic dictionary of a narrow link: the list both ends agree on by config, its fingerprint, and the fallback for indexes beyond it. */
#ifndef KM_DICT_H
#define KM_DICT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "frame.h"

/* Most topics in one dictionary: the encoder looks a topic up linearly, and a
 * dictionary is for the few dozen topics that leave a base all day. */
#define KM_DICT_MAX 4096
/* Largest dictionary file read. */
#define KM_DICT_FILE_MAX (4 << 20)
/* A message whose index the receiver does not know is delivered on
 * KM_DICT_FALLBACK "/<index>" (a center republishes it under its prefix and the
 * origin like any other topic). */
#define KM_DICT_FALLBACK "unknown-topic"

/*
 * A dictionary file: one MQTT topic a line, as the sending end's spool holds it
 * (alert/gas/zone3; on a center, the cmd/... it sends down). Blank lines and lines
 * whose first non-blank character is '#' are skipped; the index of a topic is its
 * position among the remaining lines, from 0. Append only: frames in flight and the
 * other end's copy name topics by index, so an index must keep its topic for good.
 * Caller-embedded; km_dict_deinit releases it, and is safe on a zeroed struct.
 */
struct km_dict {
        char *path;                 /* the file as opened (owned); NULL = no dictionary */
        char **topics;              /* owned, n entries */
        size_t n;
        uint32_t fingerprint;       /* km_dict_fingerprint(topics, n) */
        struct km_frame_dict frame; /* the codec's view of topics (for tx and rx cfg) */
};

/* Parses text[0..len) (borrowed) named name in messages into d. Returns 0, or
 * -EINVAL with "NAME:LINE: why" in err[0..errlen) (d is then left zeroed), or
 * -ENOMEM. */
int km_dict_parse(struct km_dict *d, const char *name, const char *text, size_t len, char *err, size_t errlen);

/* Reads and parses the file path into d; a relative path is taken from the directory
 * of conf_file (the config that names it; NULL or no '/' = the working directory).
 * Returns 0; -EINVAL with the reason in err (file and line); -ENOMEM; or the
 * negative errno of opening or reading it, with err saying so. */
int km_dict_load(struct km_dict *d, const char *path, const char *conf_file, char *err, size_t errlen);

void km_dict_deinit(struct km_dict *d);

/* CRC-32 (zlib's, ISO-HDLC) over topics[0..n), each followed by '\n': the file's
 * topics without its comments and blank lines. Equal lists give equal values; it is
 * what operators compare at the two ends ("XXXXXXXX/N"). 0 for n = 0. */
uint32_t km_dict_fingerprint(const char *const *topics, size_t n);

/*
 * The receive side's fallback, put between the frame receiver and the link's
 * delivery callback (km_frame_rx_input(..., km_dict_fallback_deliver, fb, ...)). A
 * message whose dictionary index is beyond this end's dictionary (the sender's is
 * longer: it was appended to first, or the two lists differ) comes with topic NULL
 * from the codec; it is handed on with topic "unknown-topic/<index>" instead of
 * being lost, counted in unknown, and logged at most once per 10 s per link with
 * its index, id and origin. Every other message passes unchanged. Fill next, ctx,
 * link, and optionally dict and peers (borrowed; they must outlive it).
 */
struct km_dict_fallback {
        km_frame_deliver_fn next;
        void *ctx;
        const char *link;            /* the link's name, for the log */
        const struct km_dict *dict;  /* this end's dictionary, or NULL */
        const struct km_strv *peers; /* node names, to name an origin; may be NULL */
        /* NULL (a center): such a message goes on to next on the fallback topic. Else
         * (a base, which publishes no command it cannot name) it stops here, counted,
         * acknowledged, and logged with this text. */
        const char *fate;
        uint64_t unknown;            /* messages handed on with the fallback topic */
        int64_t log_ms;              /* CLOCK_MONOTONIC ms of the last log line */
        uint64_t quiet;              /* not logged since */
};

/* The km_frame_deliver_fn: ctx is a struct km_dict_fallback. Returns next's result. */
int km_dict_fallback_deliver(void *ctx, const struct km_frame_msg *m);

#endif

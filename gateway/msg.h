/* SPDX-License-Identifier: MIT */
/* The message: one record for everything the spool holds. */
#ifndef KM_MSG_H
#define KM_MSG_H

#include <stddef.h>
#include <stdint.h>

enum km_dir {
        KM_DIR_UP = 0,   /* towards the center */
        KM_DIR_DOWN = 1, /* towards the local broker (commands) */
        KM_DIR_COUNT = 2,
};

enum {
        KM_MSG_DROPPABLE = 1 << 0, /* may be dropped for space */
        KM_MSG_RETAIN = 1 << 1,    /* published with the retain flag */
        KM_MSG_REFUSED = 1 << 2,   /* refused on arrival (a dead letter only): never queued again */
};

#define KM_PRIO_COUNT 256

/* Strings and payload are borrowed: valid as long as the function that handed the
 * message out says. */
struct km_msg {
        uint64_t id;         /* unique per origin, monotonic, survives restarts */
        int64_t created_ms;  /* unix ms */
        int64_t expires_ms;  /* unix ms, 0 = never */
        uint8_t dir;         /* enum km_dir */
        uint8_t prio;        /* 0 highest */
        uint8_t qos;
        uint8_t flags;       /* KM_MSG_* */
        const char *cls;     /* class name */
        const char *topic;   /* topic on the side it came from */
        const char *ckey;    /* coalesce key, "" or NULL when none */
        const void *payload;
        size_t len;
        /* Relayed messages (a center terminating a narrow link) keep the node and id
         * they were born with; NULL and 0 for this node's own. */
        const char *origin;
        uint64_t oid;
};

#endif

/* SPDX-License-Identifier: MIT */
/* What a narrow link may publish: the checks every relayed message passes, authenticated or not, before it reaches a broker. */
#ifndef KM_INBOUND_H
#define KM_INBOUND_H

#include <stdbool.h>
#include <stddef.h>

/* Why a message from a narrow link was refused; one counter each (refused_<name>). */
enum km_refuse {
        KM_REFUSE_NONE = 0,
        KM_REFUSE_ORIGIN,    /* its origin is not in the link's peers */
        KM_REFUSE_TOPIC,     /* empty, too long, not UTF-8, NUL or a control character */
        KM_REFUSE_WILDCARD,  /* '+' or '#': no broker takes a PUBLISH on a filter */
        KM_REFUSE_DIRECTION, /* a prefix its direction may not carry (cmd/ up, anything else down) */
        KM_REFUSE_SIZE,      /* payload above the bound */
        KM_REFUSE_N
};

/* Longest relayed topic (before <topic_prefix>/<origin>/ is put in front). */
#define KM_INBOUND_TOPIC_MAX 512
/* Largest relayed payload: the frame receiver's max_msg default. */
#define KM_INBOUND_PAYLOAD_MAX (128 * 1024)

/* The counter name of r ("origin", "topic", ...); "none" for KM_REFUSE_NONE. */
const char *km_inbound_reason_name(enum km_refuse r);

/*
 * Whether a message that arrived on a narrow link may be published. topic (borrowed,
 * NUL-terminated, may be NULL) is as the frame carried it, without prefix and origin;
 * len the payload's length. to_center: true when a center received it from a base
 * (anything but cmd/...), false when a base received it from its center (cmd/...
 * only). Returns KM_REFUSE_NONE or the first reason that applies; *why (may be NULL)
 * gets a static phrase for the log.
 */
enum km_refuse km_inbound_check(const char *topic, size_t len, bool to_center, const char **why);

#endif /* KM_INBOUND_H */

/* SPDX-License-Identifier: MIT */
/* Parse a terminal's position payload (JSON or NMEA 0183) into the canonical position record. */
#ifndef KM_POSITION_H
#define KM_POSITION_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/posrec.h"
#include <stdio.h>

/* Payloads longer than this are refused unread. */
#define KM_POSITION_MAX_PAYLOAD 4096

/*
 * Why a payload was refused. These are NOT errno values: each names one
 * class of bad input so the bridge can count them (km_position_strerror()
 * gives the counter label). Values are stable; new reasons are added at
 * the end, before KM_POSITION_ERR_LAST.
 */
enum km_position_err {
	KM_POSITION_OK = 0,
	KM_POSITION_EMPTY = -1,         /* nothing but whitespace */
	KM_POSITION_OVERSIZED = -2,     /* more than KM_POSITION_MAX_PAYLOAD bytes */
	KM_POSITION_GARBAGE = -3,       /* neither JSON nor NMEA, binary bytes */
	KM_POSITION_BAD_JSON = -4,      /* JSON syntax, root not an object, duplicate key */
	KM_POSITION_BAD_TYPE = -5,      /* JSON field of the wrong type */
	KM_POSITION_MISSING_FIELD = -6, /* lat/lon (or an NMEA required field) absent */
	KM_POSITION_OUT_OF_RANGE = -7,  /* lat, lon, alt, speed, heading, battery, fix */
	KM_POSITION_NOT_FINITE = -8,    /* a JSON number that overflows to infinity */
	KM_POSITION_BAD_TIME = -9,      /* malformed or implausible time or date */
	KM_POSITION_BAD_KIND = -10,     /* kind not drone, radio, handheld, vehicle */
	KM_POSITION_UNIT_MISMATCH = -11,/* JSON unit differs from the topic's unit */
	KM_POSITION_BAD_UNIT = -12,     /* unit id empty, too long or bad characters */
	KM_POSITION_BAD_NMEA = -13,     /* sentence framing or an invalid flag field */
	KM_POSITION_NO_CHECKSUM = -14,  /* sentence without *hh: refused */
	KM_POSITION_BAD_CHECKSUM = -15, /* *hh does not match */
	KM_POSITION_TRUNCATED = -16,    /* sentence shorter than its type requires */
	KM_POSITION_BAD_NUMBER = -17,   /* NMEA numeric field malformed (nan, 1e5, 12a) */
	KM_POSITION_NO_FIX = -18,       /* the receiver says it has no fix */
	KM_POSITION_NO_POSITION = -19,  /* valid NMEA, but no GGA/RMC/GLL/GNS in it */
	KM_POSITION_INVALID_ARG = -20,  /* caller error: NULL payload or out */
	KM_POSITION_ERR_LAST = -21
};

/*
 * Parse one payload published by a terminal.
 *
 * unit_from_topic: the unit id from the MQTT topic (borrowed), or NULL if
 *   the topic carries none; then a JSON payload must name its unit. Valid
 *   ids are 1..31 printable ASCII bytes without space, '/', '+', '#', '"'
 *   and '\\'.
 * payload, len: the raw payload (borrowed, need not be NUL-terminated);
 *   trailing NUL bytes (a common terminal bug) are ignored.
 * now_ms: the caller's current unix time in ms, used only to date NMEA
 *   fixes that carry a time of day but no date (GGA, GLL, GNS without an
 *   RMC); pass 0 to leave such fixes undated (time_ms = 0).
 * out: filled only on success.
 *
 * JSON: an object with lat, lon (numbers, required) and optional unit
 *   (string), alt (m MSL), ts (ISO 8601 UTC "YYYY-MM-DDTHH:MM:SS[.frac]Z"
 *   or a number of unix seconds, fraction allowed; years 2000..2099), speed
 *   (m/s, 0..500), heading (deg true, 0..360), fix (gpsd mode 0..3; 0 and 1
 *   mean no fix), battery (%, 0..100), kind. null means absent. Unknown
 *   keys are ignored; numbers in strings are refused.
 * NMEA: one or more sentences separated by CR, LF or CRLF; see position.c.
 *
 * Returns 0 or a negative enum km_position_err.
 */
int km_position_parse(const char *unit_from_topic, const void *payload, size_t len,
		      int64_t now_ms, struct km_pos *out);

/* Short stable name of a reason ("bad_checksum"), for counters and logs.
 * Accepts the code with either sign; "unknown" for anything else. */
const char *km_position_strerror(int code);



/* ---- the bridge: terminal positions from the local broker -------------------------- */

#include "gateway/config.h"

struct km_daemon;
struct km_positions;

/* Validates [positions] into errors of c. */
int km_positions_check(struct km_conf *c);

/* Builds the position bridge from [positions] (defaults when absent); *out is owned by
 * the caller and freed with km_positions_free. */
int km_positions_new(struct km_positions **out, struct km_daemon *d, struct km_conf *c);
void km_positions_free(struct km_positions *p);

/* Any thread. When topic matches [positions] match, parses payload into the canonical
 * record, hands its JSON to the daemon as pos/<unit> and returns 1 (a bad payload is
 * counted per reason, logged at most once a minute per unit, and dropped); returns 0
 * for other topics, or the negative errno of a push the spool refused (a storage
 * fault: the caller must not acknowledge the message). */
int km_positions_take(struct km_positions *p, const char *topic, const void *payload, size_t len);

/* Bad payloads so far, all reasons; by reason with km_positions_bad_by. */
uint64_t km_positions_bad(const struct km_positions *p);
uint64_t km_positions_bad_by(const struct km_positions *p, int reason);

void km_positions_print_help(FILE *out);
#endif /* KM_POSITION_H */

/* SPDX-License-Identifier: MIT */
/* The canonical position record, its JSON form and its compact binary batch codec. */
#ifndef KM_POSREC_H
#define KM_POSREC_H

#include <stddef.h>
#include <stdint.h>

#define KM_POS_UNIT_MAX 32 /* bytes including the NUL: names are 0..31 bytes */
#define KM_POS_KIND_MAX 12

/*
 * One position of one unit. Unknown optional values are NAN (doubles) or 0
 * (time_ms, mode, fix_quality), so a record from km_posrec_init() says
 * "nothing known" until a parser fills it.
 */
struct km_pos {
	char unit[KM_POS_UNIT_MAX];  /* NUL-terminated unit id, e.g. "uav-07" */
	double lat;                  /* decimal degrees WGS84, [-90, 90] */
	double lon;                  /* decimal degrees WGS84, [-180, 180] */
	double alt;                  /* metres above mean sea level, NAN if unknown */
	int64_t time_ms;             /* unix ms UTC of the fix, 0 if unknown */
	double speed;                /* ground speed m/s, NAN if unknown */
	double heading;              /* course over ground, degrees true, NAN if unknown */
	int mode;                    /* as gpsd: 0 unknown, 1 no fix, 2 2D, 3 3D */
	int fix_quality;             /* NMEA GGA quality 1..15, 0 if unknown */
	double battery;              /* percent 0..100, NAN if unknown */
	char kind[KM_POS_KIND_MAX];  /* "drone", "radio", "handheld", "vehicle" or "" */
};

/* Codec version written in byte 0 of every batch. */
#define KM_POSREC_VERSION 1
/* Most distinct (unit, kind) pairs in one batch (7-bit unit index). */
#define KM_POSREC_MAX_UNITS 127
/* Most bytes one record takes, first of its unit included. */
#define KM_POSREC_MAX_RECORD 16
/* Batch header bytes before the unit table: version, base time, unit count. */
#define KM_POSREC_MAX_FIXED_HEADER (1 + 10 + 1 + 10)

/* Fill *pos with "nothing known": empty unit, 0,0, NAN optionals. */
void km_posrec_init(struct km_pos *pos);

/*
 * Write pos as one line of JSON (no newline) into buf, NUL-terminated.
 * Fields, in this order: "unit", "lat", "lon" (7 decimals), "alt" (1),
 * "time" (ISO 8601 UTC with milliseconds), "speed" (2), "heading" (1),
 * "mode", "quality", "kind", "battery" (1). alt, time, speed, heading,
 * quality (0), kind ("") and battery are left out when unknown. The output
 * is byte-for-byte deterministic: consumers may compare strings.
 * Returns the length written (without the NUL), -EINVAL for a record that is
 * not valid (lat/lon out of range or not finite, infinite optionals, unit or
 * kind not NUL-terminated), -ENOSPC if buf is too small.
 */
int km_posrec_to_json(const struct km_pos *pos, char *buf, size_t len);

/*
 * Quantise *in to exactly what km_posrec_decode() will return for it
 * (resolution and clamping are documented at the top of posrec.c), into
 * *out (may equal in). Returns 0 or -EINVAL for a record the codec refuses.
 */
int km_posrec_quantise(const struct km_pos *in, struct km_pos *out);

/*
 * Encode positions[0..n) as one batch into out[0..cap). Positions are kept
 * in order. Returns the bytes written, -ENOSPC if they do not fit in cap,
 * -E2BIG if they name more than KM_POSREC_MAX_UNITS (unit, kind) pairs,
 * -ERANGE if their times span more than the codec window (about +-58 h
 * around the first known time), -EINVAL for an invalid record.
 */
int km_posrec_encode(const struct km_pos *positions, size_t n,
		     uint8_t *out, size_t cap);

/*
 * Encode the longest prefix of positions[0..n) that fits in one batch of at
 * most cap bytes (a frame MTU), and store its length in *n_used. Call again
 * with positions + *n_used for the next frame. Returns the bytes written;
 * -ENOSPC if n > 0 and not even one position fits; -EINVAL if an invalid
 * record is met within the prefix that would otherwise fit.
 */
int km_posrec_encode_fit(const struct km_pos *positions, size_t n,
			 uint8_t *out, size_t cap, size_t *n_used);

/*
 * Decode one batch from in[0..len) into out[0..cap) and store the count in
 * *n_out. Reads only in[0..len) whatever the bytes are. Returns 0, -EBADMSG
 * for a malformed or truncated batch, -ENOTSUP for an unknown version,
 * -ENOSPC if the batch holds more than cap positions. On error *n_out is 0
 * and out[] is unspecified.
 */
int km_posrec_decode(const uint8_t *in, size_t len, struct km_pos *out,
		     size_t cap, size_t *n_out);

/*
 * Parse canonical position JSON (exactly the bytes km_posrec_to_json writes
 * for some record) from json[0..len) (borrowed) into *out. Returns 0, or
 * -EINVAL for anything else (other key order or spelling, whitespace,
 * escapes, other number forms, another producer's extra keys).
 */
int km_posrec_from_json(const void *json, size_t len, struct km_pos *out);

/*
 * A narrow link's form of a position message: when json[0..len) is
 * canonical position JSON whose values the codec keeps to its resolution
 * (none clamped: alt -500..15882 m, speed up to 204.6 m/s, a time not
 * within 50 ms of the epoch), encode its quantised record as a batch of one
 * position into out[0..cap), having checked that the batch decodes to that
 * record. What a receiver publishes for it (km_posrec_batch_json) is then
 * exactly km_posrec_to_json(km_posrec_quantise(record)). Returns the batch
 * length; -EINVAL when the payload is not canonical position JSON or the
 * codec refuses the record (mode, quality, kind); -ERANGE when a value
 * would be clamped; -ENOSPC when cap is too small.
 */
int km_posrec_json_batch(const void *json, size_t len, uint8_t *out, size_t cap);

/*
 * The receiving end: decode a batch of exactly one position from
 * in[0..len) (borrowed) and write its canonical JSON into out[0..cap),
 * NUL-terminated. Returns the JSON length; -EBADMSG for a malformed batch
 * or one with no position; -E2BIG for one with more than one; -ENOTSUP for
 * an unknown codec version; -ENOSPC when cap is too small.
 */
int km_posrec_batch_json(const uint8_t *in, size_t len, char *out, size_t cap);

#endif /* KM_POSREC_H */

/* SPDX-License-Identifier: MIT */
/* Position record: init, deterministic JSON, and the compact batch codec for narrow links. */

/*
 * COMPACT BATCH WIRE FORMAT, VERSION 1
 * ====================================
 * The center decodes this for as long as any base sends it: never change
 * the meaning of version 1, add a version instead.
 *
 * Notation: u8 = one byte; uvarint = unsigned LEB128 (7 bits per byte, low
 * group first, high bit = more follows, at most 10 bytes, value < 2^64);
 * svarint = zigzag ((v << 1) ^ (v >> 63)) then uvarint.
 *
 * Batch:
 *   u8       version               = 1
 *   svarint  base                  batch base time, 100 ms ticks since the
 *                                  unix epoch (the first known time of the
 *                                  batch; 0 if no position has a time)
 *   u8       n_units               0..127
 *   n_units x unit entry:
 *     u8     kind << 5 | name_len  kind: 0 none, 1 drone, 2 radio,
 *                                  3 handheld, 4 vehicle; name_len 0..31
 *     name_len bytes               unit name, no NUL
 *   uvarint  n_records
 *   n_records x record             in the order they were given
 *   (nothing may follow the last record)
 *
 * A unit entry is a (name, kind) pair; the record's unit index is the
 * position of its entry in the table (0-based).
 *
 * Every position becomes 8 integer CODES; the same codes are sent whether
 * the record is absolute or delta:
 *   #  code     bits  value                                      resolution
 *   0  lat      25    round(lat * 1e5) + 9000000   (0..18000000)  1e-5 deg
 *   1  lon      26    round(lon * 1e5) + 18000000  (0..36000000)  1e-5 deg
 *   2  alt      14    round(alt) + 500, clamped to 0..16382       1 m
 *                     (-500..15882 m); 16383 = unknown
 *   3  time     22    two's complement, round(time_ms / 100) - base 100 ms
 *                     (-2097151..2097151, about +-58 h);
 *                     -2097152 = unknown
 *   4  speed    11    round(speed * 10), clamped to 0..2046       0.1 m/s
 *                     (0..204.6 m/s); 2047 = unknown
 *   5  heading   9    round(heading) mod 360 (0..359);            1 deg
 *                     511 = unknown
 *   6  battery   7    round(battery) clamped to 0..100;           1 %
 *                     127 = unknown
 *   7  modeq     6    mode << 4 | fix_quality  (mode 0..3, quality 0..15)
 * Rounding is half away from zero (llround), time ticks round half up.
 * A time that rounds to tick 0 (the epoch itself) reads back as unknown.
 *
 * Record, first byte: K << 7 | unit index.
 *   K = 1, ABSOLUTE record, always exactly 16 bytes: the first byte, then
 *     the 8 codes in the order above as unsigned bit fields of the widths
 *     above, most significant bit first, packed without padding into 15
 *     bytes (120 bits). Required for the first record of a unit in a batch.
 *   K = 0, DELTA record, against the previous record of the same unit in
 *     this batch: the first byte, then u8 flags where bit i (1 << i) set
 *     means code i changed, then for each set bit in increasing i an
 *     svarint (new code - previous code). Unset codes are unchanged.
 * The encoder sends a delta record only when it is shorter than 16 bytes,
 * so every record, first of a unit or not, is at most 16 bytes.
 *
 * A decoder rejects (-EBADMSG): a code outside its range or sentinels, a
 * delta for a unit with no earlier record in the batch, a unit index past
 * the table, a kind above 4, a NUL in a name, varints longer than 10 bytes,
 * truncation, and trailing bytes.
 */

#include "posrec.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { C_LAT, C_LON, C_ALT, C_TIME, C_SPEED, C_HEADING, C_BATT, C_MODEQ, NCODES };

#define LAT_OFF 9000000
#define LON_OFF 18000000
#define ALT_OFF 500
#define ALT_UNKNOWN 16383
#define TIME_UNKNOWN (-2097152)
#define TIME_MAX 2097151
#define SPEED_UNKNOWN 2047
#define HEADING_UNKNOWN 511
#define BATT_UNKNOWN 127
/* Bounds that keep every time computation far from int64 overflow. */
#define TIME_MS_LIMIT (INT64_C(1) << 50)
#define TICK_LIMIT (INT64_C(1) << 44)
#define DELTA_LIMIT (INT64_C(1) << 40)

static const unsigned code_bits[NCODES] = { 25, 26, 14, 22, 11, 9, 7, 6 };

static const char *const kind_names[] = { "", "drone", "radio", "handheld", "vehicle" };
#define N_KINDS (sizeof(kind_names) / sizeof(kind_names[0]))

void km_posrec_init(struct km_pos *pos)
{
	memset(pos, 0, sizeof(*pos));
	pos->alt = NAN;
	pos->speed = NAN;
	pos->heading = NAN;
	pos->battery = NAN;
}

/* ------------------------------------------------------------------ JSON */

/* Appends to a fixed buffer; remembers overflow so callers check once. */
struct jw {
	char *buf;
	size_t len;
	size_t off;
	bool full;
};

static void jw_raw(struct jw *w, const char *s, size_t n)
{
	if (w->full || n >= w->len - w->off) {
		w->full = true;
		return;
	}
	memcpy(w->buf + w->off, s, n);
	w->off += n;
	w->buf[w->off] = '\0';
}

static void jw_str(struct jw *w, const char *s)
{
	jw_raw(w, s, strlen(s));
}

/* JSON string escaping; bytes >= 0x80 pass through (names are UTF-8). */
static void jw_quoted(struct jw *w, const char *s)
{
	jw_raw(w, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			jw_raw(w, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			jw_raw(w, esc, 6);
		} else {
			jw_raw(w, s, 1);
		}
	}
	jw_raw(w, "\"", 1);
}

/*
 * Fixed-point number. A value that rounds to zero prints without its sign:
 * "-0.0000000" would make equal positions compare unequal as strings.
 */
static void jw_fixed(struct jw *w, const char *key, double v, int decimals)
{
	char num[400];
	int n = snprintf(num, sizeof(num), "%.*f", decimals, v);
	const char *p = num;

	if (n < 0 || (size_t)n >= sizeof(num)) {
		w->full = true;
		return;
	}
	if (num[0] == '-' && strspn(num + 1, "0.") == (size_t)(n - 1))
		p++;
	jw_str(w, key);
	jw_str(w, p);
}

/* Floor division: time before 1970 must still land on the right second. */
static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* "2024-05-01T03:04:05.120Z"; -EINVAL outside years 0..9999. */
static int iso8601_ms(int64_t time_ms, char out[80])
{
	int64_t secs = floor_div(time_ms, 1000);
	int ms = (int)(time_ms - secs * 1000);
	time_t t = (time_t)secs;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
		return -EINVAL;
	snprintf(out, 80, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
	return 0;
}

/* NAN means unknown; infinity is never a measurement, so it is a bug. */
static bool optional_ok(double v)
{
	return isnan(v) || isfinite(v);
}

static bool record_ok(const struct km_pos *p)
{
	return memchr(p->unit, '\0', sizeof(p->unit)) != NULL &&
	       memchr(p->kind, '\0', sizeof(p->kind)) != NULL &&
	       isfinite(p->lat) && fabs(p->lat) <= 90.0 &&
	       isfinite(p->lon) && fabs(p->lon) <= 180.0 &&
	       optional_ok(p->alt) && optional_ok(p->speed) &&
	       optional_ok(p->heading) && optional_ok(p->battery);
}

static void jw_optional(struct jw *w, const char *key, double v, int decimals)
{
	if (!isnan(v))
		jw_fixed(w, key, v, decimals);
}

int km_posrec_to_json(const struct km_pos *pos, char *buf, size_t len)
{
	struct jw w = { .buf = buf, .len = len, .off = 0, .full = len == 0 };
	char iso[80], num[24];

	if (!record_ok(pos))
		return -EINVAL;
	if (pos->time_ms != 0 && iso8601_ms(pos->time_ms, iso) < 0)
		return -EINVAL;
	if (len > 0)
		buf[0] = '\0';
	jw_str(&w, "{\"unit\":");
	jw_quoted(&w, pos->unit);
	jw_fixed(&w, ",\"lat\":", pos->lat, 7);
	jw_fixed(&w, ",\"lon\":", pos->lon, 7);
	jw_optional(&w, ",\"alt\":", pos->alt, 1);
	if (pos->time_ms != 0) {
		jw_str(&w, ",\"time\":\"");
		jw_str(&w, iso);
		jw_str(&w, "\"");
	}
	jw_optional(&w, ",\"speed\":", pos->speed, 2);
	/* 359.96 would print as 360.0: the same direction must print as 0.0. */
	jw_optional(&w, ",\"heading\":", pos->heading >= 359.95 ? 0.0 : pos->heading, 1);
	snprintf(num, sizeof(num), ",\"mode\":%d", pos->mode);
	jw_str(&w, num);
	if (pos->fix_quality > 0) {
		snprintf(num, sizeof(num), ",\"quality\":%d", pos->fix_quality);
		jw_str(&w, num);
	}
	if (pos->kind[0] != '\0') {
		jw_str(&w, ",\"kind\":");
		jw_quoted(&w, pos->kind);
	}
	jw_optional(&w, ",\"battery\":", pos->battery, 1);
	jw_str(&w, "}");
	return w.full ? -ENOSPC : (int)w.off;
}

/* ------------------------------------------------------- quantisation */

/* What the codec keeps of one position: its codes, time as absolute ticks. */
struct qpos {
	int64_t c[NCODES];   /* c[C_TIME] unused here: see tick */
	bool has_time;
	int64_t tick;        /* 100 ms ticks since the epoch */
	uint8_t kind;
	const char *unit;
};

static int kind_code(const char *kind)
{
	for (size_t i = 0; i < N_KINDS; i++)
		if (strcmp(kind, kind_names[i]) == 0)
			return (int)i;
	return -1;
}

static int64_t clamp_round(double v, double lo, double hi)
{
	return llround(fmin(fmax(v, lo), hi));
}

/* Optional physical values: clamped into the code range, NAN to the sentinel. */
static void optional_codes(const struct km_pos *p, struct qpos *q)
{
	q->c[C_ALT] = isnan(p->alt) ? ALT_UNKNOWN
				    : clamp_round(p->alt, -ALT_OFF, ALT_UNKNOWN - 1 - ALT_OFF) + ALT_OFF;
	q->c[C_SPEED] = isnan(p->speed) ? SPEED_UNKNOWN
					: clamp_round(p->speed * 10.0, 0, SPEED_UNKNOWN - 1);
	if (isnan(p->heading)) {
		q->c[C_HEADING] = HEADING_UNKNOWN;
	} else {
		double h = fmod(p->heading, 360.0);

		q->c[C_HEADING] = llround(h < 0 ? h + 360.0 : h) % 360;
	}
	q->c[C_BATT] = isnan(p->battery) ? BATT_UNKNOWN : clamp_round(p->battery, 0, 100);
}

static int pos_to_codes(const struct km_pos *p, struct qpos *q)
{
	int kind;

	if (!record_ok(p) || p->mode < 0 || p->mode > 3 ||
	    p->fix_quality < 0 || p->fix_quality > 15 ||
	    p->time_ms < -TIME_MS_LIMIT || p->time_ms > TIME_MS_LIMIT)
		return -EINVAL;
	kind = kind_code(p->kind);
	if (kind < 0)
		return -EINVAL;
	q->kind = (uint8_t)kind;
	q->unit = p->unit;
	q->c[C_LAT] = llround(p->lat * 1e5) + LAT_OFF;
	q->c[C_LON] = llround(p->lon * 1e5) + LON_OFF;
	optional_codes(p, q);
	q->c[C_MODEQ] = (int64_t)p->mode << 4 | p->fix_quality;
	q->tick = p->time_ms == 0 ? 0 : floor_div(p->time_ms + 50, 100);
	q->has_time = q->tick != 0;
	q->c[C_TIME] = TIME_UNKNOWN;
	return 0;
}

/* The inverse of pos_to_codes; time from c[C_TIME] relative to base. */
static void codes_to_pos(const int64_t c[NCODES], int64_t base, struct km_pos *p)
{
	p->lat = (double)(c[C_LAT] - LAT_OFF) / 1e5;
	p->lon = (double)(c[C_LON] - LON_OFF) / 1e5;
	p->alt = c[C_ALT] == ALT_UNKNOWN ? NAN : (double)(c[C_ALT] - ALT_OFF);
	p->time_ms = c[C_TIME] == TIME_UNKNOWN ? 0 : (base + c[C_TIME]) * 100;
	p->speed = c[C_SPEED] == SPEED_UNKNOWN ? NAN : (double)c[C_SPEED] / 10.0;
	p->heading = c[C_HEADING] == HEADING_UNKNOWN ? NAN : (double)c[C_HEADING];
	p->battery = c[C_BATT] == BATT_UNKNOWN ? NAN : (double)c[C_BATT];
	p->mode = (int)(c[C_MODEQ] >> 4);
	p->fix_quality = (int)(c[C_MODEQ] & 15);
}

int km_posrec_quantise(const struct km_pos *in, struct km_pos *out)
{
	struct qpos q;
	int rc = pos_to_codes(in, &q);

	if (rc < 0)
		return rc;
	q.c[C_TIME] = q.has_time ? 0 : TIME_UNKNOWN;
	if (out != in)
		*out = *in;
	codes_to_pos(q.c, q.tick, out);
	return 0;
}

/* -------------------------------------------------------------- varints */

static size_t uvarint_put(uint8_t *dst, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		dst[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	dst[n++] = (uint8_t)v;
	return n;
}

static size_t uvarint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint64_t zigzag(int64_t v)
{
	return v < 0 ? ~((uint64_t)v << 1) : (uint64_t)v << 1;
}

static int64_t unzigzag(uint64_t u)
{
	return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

/* Bounded reader: every read checks the remaining length first. */
struct rd {
	const uint8_t *p;
	size_t len;
	size_t off;
};

static int rd_u8(struct rd *r, uint8_t *v)
{
	if (r->off >= r->len)
		return -EBADMSG;
	*v = r->p[r->off++];
	return 0;
}

static int rd_uvarint(struct rd *r, uint64_t *v)
{
	uint64_t acc = 0;

	for (unsigned shift = 0; shift < 70; shift += 7) {
		uint8_t b;

		if (rd_u8(r, &b) < 0)
			return -EBADMSG;
		if (shift == 63 && b > 1)
			return -EBADMSG; /* would not fit in 64 bits */
		acc |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = acc;
			return 0;
		}
	}
	return -EBADMSG;
}

/* ---------------------------------------------------------- bit fields */

static void bits_put(uint8_t *dst, unsigned *bit, uint64_t v, unsigned n)
{
	for (unsigned i = n; i-- > 0; (*bit)++) {
		if (v >> i & 1)
			dst[*bit / 8] |= (uint8_t)(0x80 >> (*bit % 8));
	}
}

static uint64_t bits_get(const uint8_t *src, unsigned *bit, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++, (*bit)++)
		v = v << 1 | (uint64_t)(src[*bit / 8] >> (7 - *bit % 8) & 1);
	return v;
}

/* ------------------------------------------------------------- records */

static bool code_valid(unsigned i, int64_t v)
{
	switch (i) {
	case C_LAT: return v >= 0 && v <= 2 * LAT_OFF;
	case C_LON: return v >= 0 && v <= 2 * LON_OFF;
	case C_ALT: return v >= 0 && v <= ALT_UNKNOWN;
	case C_TIME: return v >= TIME_UNKNOWN && v <= TIME_MAX;
	case C_SPEED: return v >= 0 && v <= SPEED_UNKNOWN;
	case C_HEADING: return (v >= 0 && v < 360) || v == HEADING_UNKNOWN;
	case C_BATT: return (v >= 0 && v <= 100) || v == BATT_UNKNOWN;
	default: return v >= 0 && v < 64;
	}
}

static size_t abs_encode(uint8_t *dst, unsigned unit, const int64_t c[NCODES])
{
	unsigned bit = 8;

	memset(dst, 0, KM_POSREC_MAX_RECORD);
	dst[0] = (uint8_t)(0x80 | unit);
	for (unsigned i = 0; i < NCODES; i++)
		bits_put(dst, &bit, (uint64_t)c[i] & ((UINT64_C(1) << code_bits[i]) - 1),
			 code_bits[i]);
	return KM_POSREC_MAX_RECORD;
}

/* dst must hold 2 + 10 * NCODES bytes: a delta can outgrow an absolute. */
static size_t delta_encode(uint8_t *dst, unsigned unit, const int64_t prev[NCODES],
			   const int64_t c[NCODES])
{
	size_t n = 2;

	dst[0] = (uint8_t)unit;
	dst[1] = 0;
	for (unsigned i = 0; i < NCODES; i++) {
		if (c[i] == prev[i])
			continue;
		dst[1] |= (uint8_t)(1u << i);
		n += uvarint_put(dst + n, zigzag(c[i] - prev[i]));
	}
	return n;
}

#define DELTA_BUF (2 + 10 * NCODES)

/* Smallest record for c: delta if it beats the fixed absolute size. */
static size_t rec_encode(uint8_t *dst, unsigned unit, const int64_t *prev,
			 const int64_t c[NCODES])
{
	if (prev) {
		size_t n = delta_encode(dst, unit, prev, c);

		if (n < KM_POSREC_MAX_RECORD)
			return n;
	}
	return abs_encode(dst, unit, c);
}

static int abs_decode(struct rd *r, int64_t c[NCODES])
{
	unsigned bit = 8;
	const uint8_t *src = r->p + r->off;

	if (r->len - r->off < KM_POSREC_MAX_RECORD)
		return -EBADMSG;
	for (unsigned i = 0; i < NCODES; i++) {
		uint64_t v = bits_get(src, &bit, code_bits[i]);

		if (i == C_TIME && v >> (code_bits[i] - 1))
			c[i] = (int64_t)v - ((int64_t)1 << code_bits[i]); /* sign-extend */
		else
			c[i] = (int64_t)v;
		if (!code_valid(i, c[i]))
			return -EBADMSG;
	}
	r->off += KM_POSREC_MAX_RECORD;
	return 0;
}

static int delta_decode(struct rd *r, int64_t c[NCODES])
{
	uint8_t flags;

	if (rd_u8(r, &flags) < 0)
		return -EBADMSG;
	for (unsigned i = 0; i < NCODES; i++) {
		uint64_t u;
		int64_t d;

		if (!(flags & (1u << i)))
			continue;
		if (rd_uvarint(r, &u) < 0)
			return -EBADMSG;
		d = unzigzag(u);
		if (d < -DELTA_LIMIT || d > DELTA_LIMIT || !code_valid(i, c[i] + d))
			return -EBADMSG;
		c[i] += d;
	}
	return 0;
}

/* --------------------------------------------------------------- encode */

struct unit_slot {
	const char *name;   /* borrowed from the caller's array for the call */
	uint8_t kind;
	bool started;
	int64_t prev[NCODES];
};

struct batch {
	struct unit_slot units[KM_POSREC_MAX_UNITS];
	size_t n_units;
	size_t table_bytes;
	bool have_base;
	int64_t base;
	size_t n_recs;
	size_t rec_bytes;
};

static size_t header_len(const struct batch *b, size_t table_extra, int64_t base,
			 size_t n_recs)
{
	return 1 + uvarint_len(zigzag(base)) + 1 + b->table_bytes + table_extra +
	       uvarint_len(n_recs);
}

static struct unit_slot *unit_find(struct batch *b, const struct qpos *q)
{
	for (size_t i = 0; i < b->n_units; i++)
		if (b->units[i].kind == q->kind && strcmp(b->units[i].name, q->unit) == 0)
			return &b->units[i];
	return NULL;
}

/*
 * Try to append one position; on success its record is staged at
 * out[rec_bytes..] (the header is written in front at the end, once its
 * size is known). Returns 0, or why the batch must stop before it.
 */
static int batch_add(struct batch *b, const struct km_pos *p, uint8_t *out, size_t cap)
{
	struct qpos q;
	struct unit_slot *u;
	uint8_t rec[DELTA_BUF];
	size_t rlen, table_extra = 0, total;
	int64_t base;
	int rc = pos_to_codes(p, &q);

	if (rc < 0)
		return rc;
	u = unit_find(b, &q);
	if (!u) {
		if (b->n_units == KM_POSREC_MAX_UNITS)
			return -E2BIG;
		table_extra = 1 + strlen(q.unit);
	}
	base = b->have_base || !q.has_time ? b->base : q.tick;
	if (q.has_time) {
		if (q.tick - base < -TIME_MAX || q.tick - base > TIME_MAX)
			return -ERANGE;
		q.c[C_TIME] = q.tick - base;
	}
	rlen = rec_encode(rec, u ? (unsigned)(u - b->units) : (unsigned)b->n_units,
			  u && u->started ? u->prev : NULL, q.c);
	total = header_len(b, table_extra, base, b->n_recs + 1) + b->rec_bytes + rlen;
	if (total > cap)
		return -ENOSPC;
	memcpy(out + b->rec_bytes, rec, rlen);
	if (!u) {
		u = &b->units[b->n_units++];
		u->name = q.unit;
		u->kind = q.kind;
		b->table_bytes += table_extra;
	}
	u->started = true;
	memcpy(u->prev, q.c, sizeof(q.c));
	b->base = base;
	b->have_base = b->have_base || q.has_time;
	b->n_recs++;
	b->rec_bytes += rlen;
	return 0;
}

/* Move the staged records up and write the header in front of them. */
static size_t batch_finish(const struct batch *b, uint8_t *out)
{
	size_t hlen = header_len(b, 0, b->base, b->n_recs);
	size_t n = 0;

	memmove(out + hlen, out, b->rec_bytes);
	out[n++] = KM_POSREC_VERSION;
	n += uvarint_put(out + n, zigzag(b->base));
	out[n++] = (uint8_t)b->n_units;
	for (size_t i = 0; i < b->n_units; i++) {
		size_t nl = strlen(b->units[i].name);

		out[n++] = (uint8_t)(b->units[i].kind << 5 | nl);
		memcpy(out + n, b->units[i].name, nl);
		n += nl;
	}
	n += uvarint_put(out + n, b->n_recs);
	return n + b->rec_bytes;
}

/* Shared by both entry points; *stop is why it stopped early (or 0). */
static int encode_prefix(const struct km_pos *positions, size_t n, uint8_t *out,
			 size_t cap, size_t *n_used, int *stop)
{
	struct batch b;
	size_t i;

	memset(&b, 0, sizeof(b));
	*stop = 0;
	if (header_len(&b, 0, 0, 0) > cap) {
		*stop = -ENOSPC;
		*n_used = 0;
		return -ENOSPC;
	}
	for (i = 0; i < n; i++) {
		*stop = batch_add(&b, &positions[i], out, cap);
		if (*stop < 0)
			break;
	}
	*n_used = i;
	if (*stop == -EINVAL || (i == 0 && n > 0))
		return *stop;
	return (int)batch_finish(&b, out);
}

int km_posrec_encode_fit(const struct km_pos *positions, size_t n,
			 uint8_t *out, size_t cap, size_t *n_used)
{
	int stop;

	return encode_prefix(positions, n, out, cap, n_used, &stop);
}

int km_posrec_encode(const struct km_pos *positions, size_t n,
		     uint8_t *out, size_t cap)
{
	size_t used;
	int stop;
	int rc = encode_prefix(positions, n, out, cap, &used, &stop);

	if (rc >= 0 && used < n)
		return stop;
	return rc;
}

/* --------------------------------------------------------------- decode */

struct unit_state {
	char name[KM_POS_UNIT_MAX];
	uint8_t kind;
	bool started;
	int64_t c[NCODES];
};

static int table_decode(struct rd *r, struct unit_state *units, size_t *n_units)
{
	uint8_t n;

	if (rd_u8(r, &n) < 0 || n > KM_POSREC_MAX_UNITS)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		uint8_t b;
		size_t nl;

		if (rd_u8(r, &b) < 0 || (b >> 5) >= N_KINDS)
			return -EBADMSG;
		nl = b & 31u;
		if (r->len - r->off < nl || memchr(r->p + r->off, '\0', nl))
			return -EBADMSG;
		memcpy(units[i].name, r->p + r->off, nl);
		units[i].name[nl] = '\0';
		units[i].kind = (uint8_t)(b >> 5);
		units[i].started = false;
		r->off += nl;
	}
	*n_units = n;
	return 0;
}

static int record_decode(struct rd *r, struct unit_state *units, size_t n_units,
			 int64_t base, struct km_pos *out)
{
	uint8_t b0;
	struct unit_state *u;
	int rc;

	if (rd_u8(r, &b0) < 0 || (size_t)(b0 & 0x7f) >= n_units)
		return -EBADMSG;
	u = &units[b0 & 0x7f];
	if (b0 & 0x80) {
		r->off--; /* the absolute record's 16 bytes include b0 */
		rc = abs_decode(r, u->c);
	} else {
		rc = u->started ? delta_decode(r, u->c) : -EBADMSG;
	}
	if (rc < 0)
		return rc;
	u->started = true;
	km_posrec_init(out);
	memcpy(out->unit, u->name, sizeof(out->unit));
	strcpy(out->kind, kind_names[u->kind]);
	codes_to_pos(u->c, base, out);
	return 0;
}

static int decode_body(struct rd *r, struct km_pos *out, size_t cap, size_t *n_out)
{
	struct unit_state units[KM_POSREC_MAX_UNITS];
	size_t n_units;
	uint64_t zbase, n_recs;
	int64_t base;
	uint8_t version;

	if (rd_u8(r, &version) < 0)
		return -EBADMSG;
	if (version != KM_POSREC_VERSION)
		return -ENOTSUP;
	if (rd_uvarint(r, &zbase) < 0)
		return -EBADMSG;
	base = unzigzag(zbase);
	if (base < -TICK_LIMIT || base > TICK_LIMIT)
		return -EBADMSG;
	if (table_decode(r, units, &n_units) < 0 || rd_uvarint(r, &n_recs) < 0)
		return -EBADMSG;
	/* Every record is at least 2 bytes: reject absurd counts before cap. */
	if (n_recs > (r->len - r->off) / 2 || (n_recs > 0 && n_units == 0))
		return -EBADMSG;
	if (n_recs > cap)
		return -ENOSPC;
	for (size_t i = 0; i < n_recs; i++) {
		if (record_decode(r, units, n_units, base, &out[i]) < 0)
			return -EBADMSG;
	}
	if (r->off != r->len)
		return -EBADMSG;
	*n_out = (size_t)n_recs;
	return 0;
}

int km_posrec_decode(const uint8_t *in, size_t len, struct km_pos *out,
		     size_t cap, size_t *n_out)
{
	struct rd r = { .p = in, .len = len, .off = 0 };

	*n_out = 0;
	if (!in && len > 0)
		return -EINVAL;
	return decode_body(&r, out, cap, n_out);
}

/* ------------------------------------------ canonical JSON <-> one batch */

/*
 * Narrow links carry a position message as a one-position batch instead of
 * its JSON (gateway/frame.c), and the center publishes the batch's record as
 * JSON again. These functions are the two ends of that trip. The base takes
 * only payloads that ARE canonical JSON (km_posrec_to_json's exact bytes),
 * so nothing a terminal or another producer wrote differently is ever
 * reinterpreted, and only records the codec keeps to its resolution (no
 * value clamped); what the center publishes is then exactly
 * km_posrec_to_json(km_posrec_quantise(record)), and the base proves it
 * before it sends the batch by decoding it and comparing.
 */

/* Longest canonical JSON we take (a full record with a 31-byte unit is
 * about 230 bytes). */
#define CANON_MAX 320

struct jr {
	const char *p;
	const char *end;
};

static bool jr_lit(struct jr *r, const char *s)
{
	size_t n = strlen(s);

	if ((size_t)(r->end - r->p) < n || memcmp(r->p, s, n) != 0)
		return false;
	r->p += n;
	return true;
}

/* A JSON number as km_posrec_to_json writes it: [-]digits[.digits]. The
 * caller's buffer is NUL-terminated past end, so strtod stops in it. */
static bool jr_num(struct jr *r, double *v)
{
	char *stop;
	const char *q = r->p;

	if (q < r->end && *q == '-')
		q++;
	if (q >= r->end || *q < '0' || *q > '9')
		return false;
	*v = strtod(r->p, &stop);
	if (stop <= r->p || stop > r->end || !isfinite(*v))
		return false;
	r->p = stop;
	return true;
}

/* A quoted string without escapes into out[cap]. */
static bool jr_str(struct jr *r, char *out, size_t cap)
{
	const char *q = memchr(r->p, '"', (size_t)(r->end - r->p));

	if (!q || (size_t)(q - r->p) >= cap || memchr(r->p, '\\', (size_t)(q - r->p)))
		return false;
	memcpy(out, r->p, (size_t)(q - r->p));
	out[q - r->p] = '\0';
	r->p = q + 1;
	return true;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_civil(int64_t y, int64_t m, int64_t d)
{
	y -= m <= 2;
	int64_t era = floor_div(y, 400);
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + doe - 719468;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ"; the round trip check catches impossible dates. */
static bool jr_time(struct jr *r, int64_t *ms)
{
	int y, mo, d, h, mi, s, f, n = 0;

	if ((size_t)(r->end - r->p) < 25 ||
	    sscanf(r->p, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ\"%n", &y, &mo, &d, &h, &mi, &s, &f, &n) != 7 ||
	    n != 25)
		return false;
	*ms = ((days_civil(y, mo, d) * 24 + h) * 60 + mi) * INT64_C(60000) + s * 1000 + f;
	r->p += n;
	return true;
}

static bool jr_int(struct jr *r, int *v)
{
	double d;

	if (!jr_num(r, &d) || d != floor(d) || d < 0 || d > 99)
		return false;
	*v = (int)d;
	return true;
}

int km_posrec_from_json(const void *json, size_t len, struct km_pos *out)
{
	char buf[CANON_MAX + 1], again[CANON_MAX + 1];
	struct jr r;
	struct km_pos p;

	/* len is checked before buf + len is formed: past the array's end that
	 * pointer is undefined behaviour even if never read through. */
	if (!json || len < 2 || len > CANON_MAX)
		return -EINVAL;
	memcpy(buf, json, len);
	buf[len] = '\0';
	r.p = buf;
	r.end = buf + len;
	km_posrec_init(&p);
	if (!jr_lit(&r, "{\"unit\":\"") || !jr_str(&r, p.unit, sizeof(p.unit)) ||
	    !jr_lit(&r, ",\"lat\":") || !jr_num(&r, &p.lat) ||
	    !jr_lit(&r, ",\"lon\":") || !jr_num(&r, &p.lon))
		return -EINVAL;
	if (jr_lit(&r, ",\"alt\":") && !jr_num(&r, &p.alt))
		return -EINVAL;
	if (jr_lit(&r, ",\"time\":\"") && !jr_time(&r, &p.time_ms))
		return -EINVAL;
	if (jr_lit(&r, ",\"speed\":") && !jr_num(&r, &p.speed))
		return -EINVAL;
	if (jr_lit(&r, ",\"heading\":") && !jr_num(&r, &p.heading))
		return -EINVAL;
	if (!jr_lit(&r, ",\"mode\":") || !jr_int(&r, &p.mode))
		return -EINVAL;
	if (jr_lit(&r, ",\"quality\":") && !jr_int(&r, &p.fix_quality))
		return -EINVAL;
	if (jr_lit(&r, ",\"kind\":\"") && !jr_str(&r, p.kind, sizeof(p.kind)))
		return -EINVAL;
	if (jr_lit(&r, ",\"battery\":") && !jr_num(&r, &p.battery))
		return -EINVAL;
	if (!jr_lit(&r, "}") || r.p != r.end)
		return -EINVAL;
	/* Canonical means byte for byte what we would write: this also refuses
	 * "-0.0", missing decimals, a 1 ms time that does not exist, ... */
	int n = km_posrec_to_json(&p, again, sizeof(again));
	if (n < 0 || (size_t)n != len || memcmp(again, buf, len) != 0)
		return -EINVAL;
	*out = p;
	return 0;
}

/* Whether q keeps every value of p to the codec's resolution: nothing was
 * clamped into a code range (alt above 15882 m, speed above 204.6 m/s). */
static bool within_resolution(const struct km_pos *p, const struct km_pos *q)
{
	const double e = 1e-9;
	double dh = isnan(p->heading) ? 0 : fabs(fmod(p->heading - q->heading + 540.0, 360.0) - 180.0);

	return fabs(p->lat - q->lat) <= 0.5e-5 + e && fabs(p->lon - q->lon) <= 0.5e-5 + e &&
	       (isnan(p->alt) || fabs(p->alt - q->alt) <= 0.5 + e) &&
	       (isnan(p->speed) || fabs(p->speed - q->speed) <= 0.05 + e) &&
	       (isnan(p->battery) || fabs(p->battery - q->battery) <= 0.5 + e) &&
	       (isnan(p->heading) || dh <= 0.5 + e) &&
	       (p->time_ms == 0) == (q->time_ms == 0) &&
	       llabs(p->time_ms - q->time_ms) <= 50;
}

int km_posrec_json_batch(const void *json, size_t len, uint8_t *out, size_t cap)
{
	struct km_pos p, q, d;
	char want[CANON_MAX + 1], got[CANON_MAX + 1];
	size_t n_out;
	int rc, n;

	if ((rc = km_posrec_from_json(json, len, &p)) < 0 || (rc = km_posrec_quantise(&p, &q)) < 0)
		return rc;
	if (!within_resolution(&p, &q))
		return -ERANGE;
	if ((n = km_posrec_encode(&q, 1, out, cap)) < 0)
		return n;
	/* The proof: what the center will publish is the quantised record. */
	int a = km_posrec_to_json(&q, want, sizeof(want));
	if (km_posrec_decode(out, (size_t)n, &d, 1, &n_out) < 0 || n_out != 1 || a < 0 ||
	    km_posrec_to_json(&d, got, sizeof(got)) != a || memcmp(want, got, (size_t)a) != 0)
		return -EINVAL;
	return n;
}

int km_posrec_batch_json(const uint8_t *in, size_t len, char *out, size_t cap)
{
	struct km_pos p;
	size_t n;
	int rc = km_posrec_decode(in, len, &p, 1, &n);

	if (rc == -ENOSPC)
		return -E2BIG;
	if (rc < 0)
		return rc;
	if (n != 1)
		return -EBADMSG;
	return km_posrec_to_json(&p, out, cap);
}

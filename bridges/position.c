/* SPDX-License-Identifier: MIT */
/* Terminal position payloads (JSON or NMEA 0183 GGA/RMC/GLL/GNS) to struct km_pos, with a reason for every refusal. */

/*
 * NMEA RULES
 * - Sentences start with '$', end at CR or LF; spaces and tabs around a
 *   sentence are ignored; empty lines are skipped. At most 120 characters.
 * - A checksum "*hh" is REQUIRED: a sentence without one is refused
 *   (no_checksum), or truncated if it is also shorter than its type needs.
 *   Terminals relay what their receiver wrote and every receiver we know
 *   writes checksums, so a missing one means a cut or corrupted line.
 * - Any bad sentence refuses the whole payload, even one we would ignore
 *   (GSV, VTG, proprietary): a corrupt line means the link from the
 *   receiver is corrupt, and a half-trusted position is worse than none.
 * - GGA, RMC, GLL, GNS from any two-letter talker (GP, GN, BD, GB, GA, GL,
 *   ...) give positions; other sentences are checked and ignored.
 * - Minimum field counts (address included): GGA 15, RMC 12, GLL 7, GNS 13.
 * - Combining: sentences are grouped by their UTC time of day. The result
 *   is the epoch of the LAST position sentence; other sentences with the
 *   same time of day add to it (GGA/GNS: altitude MSL and quality; RMC:
 *   speed, course, date). Earlier epochs only contribute RMC's date. If any
 *   sentence of the final epoch says "no fix" (GGA quality 0, RMC/GLL
 *   status V, mode N, GNS all N) the payload is no_fix.
 * - Date: from the latest RMC, moved by a day when the final epoch's time
 *   of day is more than 12 h away from that RMC's (midnight rollover).
 *   Without an RMC date, the date that puts the fix nearest to now_ms is
 *   used; with now_ms 0 the fix stays undated (time_ms 0). Two-digit years
 *   are 2000..2079 for 00..79, 1980..1999 for 80..99.
 * - mode is 3 (3D) when an altitude was given, else 2. fix_quality is GGA's
 *   quality, else derived from the mode letter (A 1, D 2, P 3, R 4, F 5,
 *   E 6, M 7, S 8).
 * - alt is GGA/GNS altitude above mean sea level (not the ellipsoid).
 */

#include "bridges/position.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/daemon.h"
#include "gateway/incidents.h"
#include "gateway/log.h"

#define NMEA_MAX_SENTENCE 120
#define NMEA_MAX_FIELDS 32
#define KNOT_MS (1852.0 / 3600.0)
#define DAY_MS INT64_C(86400000)
#define HALF_DAY_MS INT64_C(43200000)
/* Plausible timestamps: 2000-01-01 .. 2100-01-01 (unix seconds). */
#define TS_MIN INT64_C(946684800)
#define TS_MAX INT64_C(4102444800)
#define ALT_MIN (-1000.0)
#define ALT_MAX 50000.0
#define SPEED_MAX 500.0

static const char *const reason_names[] = {
	"ok", "empty", "oversized", "garbage", "bad_json", "bad_type",
	"missing_field", "out_of_range", "not_finite", "bad_time", "bad_kind",
	"unit_mismatch", "bad_unit", "bad_nmea", "no_checksum", "bad_checksum",
	"truncated", "bad_number", "no_fix", "no_position", "invalid_arg",
};

const char *km_position_strerror(int code)
{
	unsigned idx = code < 0 ? (unsigned)-(code + 1) + 1 : (unsigned)code;

	if (idx >= sizeof(reason_names) / sizeof(reason_names[0]))
		return "unknown";
	return reason_names[idx];
}

/* Unit ids become topic levels and counter labels: keep them plain. */
static bool unit_valid(const char *u)
{
	size_t n = strlen(u);

	if (n == 0 || n >= KM_POS_UNIT_MAX)
		return false;
	for (; *u; u++) {
		unsigned char c = (unsigned char)*u;

		if (c <= 0x20 || c >= 0x7f || strchr("/+#\"\\", c))
			return false;
	}
	return true;
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Days since the epoch of a civil date, or -1 if the date does not exist. */
static int64_t civil_days(int year, int month, int day)
{
	struct tm tm = { .tm_year = year - 1900, .tm_mon = month - 1, .tm_mday = day,
			 .tm_hour = 12 };
	time_t t = timegm(&tm);

	/* timegm normalises 31 February into March: a changed field means invalid. */
	if (tm.tm_year != year - 1900 || tm.tm_mon != month - 1 || tm.tm_mday != day)
		return -1;
	return floor_div((int64_t)t, 86400);
}

/* n decimal digits at s, or -1. */
static int digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

/* Milliseconds from a fraction ".ddd...": first 3 digits, rest truncated. */
static int fraction_ms(const char *s, const char **end)
{
	int ms = 0, i = 0;

	if (*s != '.')
		return *end = s, 0;
	for (s++; *s >= '0' && *s <= '9'; s++, i++)
		if (i < 3)
			ms = ms * 10 + (*s - '0');
	for (; i < 3 && i > 0; i++)
		ms *= 10;
	*end = i > 0 ? s : NULL; /* a '.' needs at least one digit */
	return ms;
}

/* ------------------------------------------------------------------ JSON */

/* "YYYY-MM-DDTHH:MM:SS[.fff]Z" to unix ms; strict, UTC only. */
static int parse_iso8601(const char *s, int64_t *ms)
{
	int y, mo, d, h, mi, sec, frac;
	int64_t days;
	const char *end;

	if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
	    s[13] != ':' || s[16] != ':')
		return KM_POSITION_BAD_TIME;
	y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
	h = digits(s + 11, 2), mi = digits(s + 14, 2), sec = digits(s + 17, 2);
	frac = fraction_ms(s + 19, &end);
	if (y < 2000 || y > 2099 || mo < 0 || d < 0 || h < 0 || h > 23 || mi < 0 ||
	    mi > 59 || sec < 0 || sec > 59 || !end || strcmp(end, "Z") != 0)
		return KM_POSITION_BAD_TIME;
	days = civil_days(y, mo, d);
	if (days < 0)
		return KM_POSITION_BAD_TIME;
	*ms = days * DAY_MS + ((h * 60 + mi) * 60 + sec) * INT64_C(1000) + frac;
	return 0;
}

enum { J_UNIT, J_LAT, J_LON, J_ALT, J_TS, J_SPEED, J_HEADING, J_FIX, J_BATTERY, J_KIND, J_N };
static const char *const json_keys[J_N] = {
	"unit", "lat", "lon", "alt", "ts", "speed", "heading", "fix", "battery", "kind",
};

/* Known keys of the root object; a duplicate is ambiguous, so it is refused. */
static int json_collect(const cJSON *root, const cJSON *f[J_N])
{
	bool seen[J_N] = { false };

	for (const cJSON *c = root->child; c; c = c->next) {
		for (int k = 0; k < J_N; k++) {
			if (strcmp(c->string, json_keys[k]) != 0)
				continue;
			if (seen[k])
				return KM_POSITION_BAD_JSON;
			seen[k] = true;
			f[k] = cJSON_IsNull(c) ? NULL : c; /* null means absent */
		}
	}
	return 0;
}

/* A number in [lo, hi]; absent leaves *v alone (NAN) unless required. */
static int json_num(const cJSON *item, bool required, double lo, double hi, double *v)
{
	if (!item)
		return required ? KM_POSITION_MISSING_FIELD : 0;
	if (!cJSON_IsNumber(item))
		return KM_POSITION_BAD_TYPE;
	if (!isfinite(item->valuedouble))
		return KM_POSITION_NOT_FINITE;
	if (item->valuedouble < lo || item->valuedouble > hi)
		return KM_POSITION_OUT_OF_RANGE;
	*v = item->valuedouble;
	return 0;
}

static int json_unit(const cJSON *item, const char *topic_unit, struct km_pos *p)
{
	const char *u = topic_unit;

	if (item) {
		if (!cJSON_IsString(item))
			return KM_POSITION_BAD_TYPE;
		if (topic_unit && strcmp(item->valuestring, topic_unit) != 0)
			return KM_POSITION_UNIT_MISMATCH;
		u = item->valuestring;
	}
	if (!u)
		return KM_POSITION_MISSING_FIELD;
	if (!unit_valid(u))
		return KM_POSITION_BAD_UNIT;
	strcpy(p->unit, u);
	return 0;
}

static int json_ts(const cJSON *item, struct km_pos *p)
{
	double s;

	if (!item)
		return 0;
	if (cJSON_IsString(item))
		return parse_iso8601(item->valuestring, &p->time_ms);
	if (!cJSON_IsNumber(item))
		return KM_POSITION_BAD_TYPE;
	s = item->valuedouble;
	if (!isfinite(s))
		return KM_POSITION_NOT_FINITE;
	if (s < (double)TS_MIN || s >= (double)TS_MAX)
		return KM_POSITION_BAD_TIME;
	p->time_ms = llround(s * 1000.0);
	return 0;
}

/* fix is gpsd's mode; a terminal that says 0 or 1 has no position to give. */
static int json_fix(const cJSON *item, struct km_pos *p)
{
	double m = NAN;
	int rc = json_num(item, false, -INFINITY, INFINITY, &m);

	if (rc < 0 || isnan(m))
		return rc;
	if (m != floor(m))
		return KM_POSITION_BAD_TYPE;
	if (m < 0 || m > 3)
		return KM_POSITION_OUT_OF_RANGE;
	if (m < 2)
		return KM_POSITION_NO_FIX;
	p->mode = (int)m;
	return 0;
}

static int json_kind(const cJSON *item, struct km_pos *p)
{
	static const char *const kinds[] = { "drone", "radio", "handheld", "vehicle" };

	if (!item)
		return 0;
	if (!cJSON_IsString(item))
		return KM_POSITION_BAD_TYPE;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		if (strcmp(item->valuestring, kinds[i]) == 0) {
			strcpy(p->kind, kinds[i]);
			return 0;
		}
	}
	return KM_POSITION_BAD_KIND;
}

/* Fields in a fixed order, so a payload with two faults always gets the same reason. */
static int json_fields(const cJSON *f[J_N], const char *topic_unit, struct km_pos *p)
{
	int rc;

	if ((rc = json_unit(f[J_UNIT], topic_unit, p)) < 0 ||
	    (rc = json_num(f[J_LAT], true, -90, 90, &p->lat)) < 0 ||
	    (rc = json_num(f[J_LON], true, -180, 180, &p->lon)) < 0 ||
	    (rc = json_num(f[J_ALT], false, ALT_MIN, ALT_MAX, &p->alt)) < 0 ||
	    (rc = json_ts(f[J_TS], p)) < 0 ||
	    (rc = json_num(f[J_SPEED], false, 0, SPEED_MAX, &p->speed)) < 0 ||
	    (rc = json_num(f[J_HEADING], false, 0, 360, &p->heading)) < 0 ||
	    (rc = json_fix(f[J_FIX], p)) < 0 ||
	    (rc = json_num(f[J_BATTERY], false, 0, 100, &p->battery)) < 0 ||
	    (rc = json_kind(f[J_KIND], p)) < 0)
		return rc;
	if (p->heading == 360.0)
		p->heading = 0.0;
	return 0;
}

static int parse_json(const char *buf, size_t len, const char *topic_unit, struct km_pos *p)
{
	const char *end = NULL;
	const cJSON *f[J_N] = { 0 };
	cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
	int rc;

	if (!root)
		return KM_POSITION_BAD_JSON;
	rc = KM_POSITION_BAD_JSON;
	if (cJSON_IsObject(root) && end && strspn(end, " \t\r\n") == (size_t)(buf + len - end))
		rc = json_collect(root, f);
	if (rc == 0)
		rc = json_fields(f, topic_unit, p);
	cJSON_Delete(root);
	return rc;
}

/* ------------------------------------------------------------------ NMEA */

/* One position sentence, decoded. */
struct nmea_fix {
	int64_t tod_ms;      /* time of day, -1 if the field was empty */
	bool fix;            /* false: this sentence says "no fix" */
	bool has_pos;
	double lat, lon, alt, speed, heading;
	int quality;         /* 0 unknown */
	int qprio;           /* GGA/GNS quality beats one derived from a mode letter */
	int64_t date_days;   /* -1 unless RMC gave a date */
};

/* The final epoch being assembled, plus the latest RMC date seen. */
struct nmea_acc {
	bool any;
	struct nmea_fix cur;
	int64_t date_days;
	int64_t date_tod;
};

/* Strict decimal: [-]digits[.digits]. strtod alone would take nan, inf, 1e5, hex. */
static int nmea_num(const char *s, double *v)
{
	const char *p = s + (*s == '-');
	size_t int_digits = strspn(p, "0123456789"), frac_digits = 0;

	if (*s == '\0')
		return KM_POSITION_MISSING_FIELD;
	if (p[int_digits] == '.')
		frac_digits = strspn(p + int_digits + 1, "0123456789");
	if (int_digits + frac_digits == 0 || strlen(s) > 16 ||
	    p[int_digits + (p[int_digits] == '.') + frac_digits] != '\0')
		return KM_POSITION_BAD_NUMBER;
	*v = strtod(s, NULL);
	return 0;
}

/* Optional number: empty means unknown (NAN). */
static int nmea_opt(const char *s, double lo, double hi, double *v)
{
	int rc;

	*v = NAN;
	if (*s == '\0')
		return 0;
	rc = nmea_num(s, v);
	if (rc == 0 && (*v < lo || *v > hi))
		rc = KM_POSITION_OUT_OF_RANGE;
	return rc;
}

/* "hhmmss[.sss]" to ms of the day; empty gives -1. */
static int nmea_tod(const char *s, int64_t *tod)
{
	int h = digits(s, 2), m, sec, ms;
	const char *end;

	*tod = -1;
	if (*s == '\0')
		return 0;
	if (strlen(s) < 6)
		return KM_POSITION_BAD_TIME;
	m = digits(s + 2, 2), sec = digits(s + 4, 2);
	ms = fraction_ms(s + 6, &end);
	if (h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 || sec > 60 || !end || *end)
		return KM_POSITION_BAD_TIME;
	*tod = ((h * 60 + m) * 60 + sec) * INT64_C(1000) + ms;
	return 0;
}

/* "ddmmyy" to days since the epoch; empty gives -1. */
static int nmea_date(const char *s, int64_t *days)
{
	int d, m, y;

	*days = -1;
	if (*s == '\0')
		return 0;
	d = digits(s, 2), m = digits(s + 2, 2), y = digits(s + 4, 2);
	if (strlen(s) != 6 || d < 0 || m < 0 || y < 0)
		return KM_POSITION_BAD_TIME;
	*days = civil_days(y < 80 ? 2000 + y : 1900 + y, m, d);
	return *days < 0 ? KM_POSITION_BAD_TIME : 0;
}

/* "ddmm.mmmm" + hemisphere to signed degrees; max_deg 90 or 180. */
static int nmea_coord(const char *v, const char *hemi, const char *neg, double max_deg,
		      double *out)
{
	double raw, deg, min;
	int rc;

	if (*v == '\0' || *hemi == '\0')
		return KM_POSITION_MISSING_FIELD;
	if (*v == '-')
		return KM_POSITION_BAD_NUMBER;
	if ((rc = nmea_num(v, &raw)) < 0)
		return rc;
	if ((hemi[0] != neg[0] && hemi[0] != neg[1]) || hemi[1] != '\0')
		return KM_POSITION_BAD_NMEA;
	deg = floor(raw / 100.0);
	min = raw - deg * 100.0;
	if (min >= 60.0 || deg + min / 60.0 > max_deg)
		return KM_POSITION_OUT_OF_RANGE;
	*out = (deg + min / 60.0) * (hemi[0] == neg[0] ? -1.0 : 1.0);
	return 0;
}

/* Latitude then longitude at fields[i..i+3]. */
static int nmea_latlon(char **f, struct nmea_fix *x)
{
	int rc = nmea_coord(f[0], f[1], "SN", 90.0, &x->lat);

	if (rc == 0)
		rc = nmea_coord(f[2], f[3], "WE", 180.0, &x->lon);
	x->has_pos = rc == 0;
	return rc;
}

/* FAA mode letter (RMC, GLL, GNS) to a GGA-style quality; 0 means no fix, -1 invalid. */
static int mode_quality(char c)
{
	static const char letters[] = "NADPRFEMS";
	const char *p = c ? strchr(letters, c) : NULL;

	return p ? (int)(p - letters) : -1;
}

static int nmea_alt(const char *s, struct nmea_fix *x)
{
	return nmea_opt(s, ALT_MIN, ALT_MAX, &x->alt);
}

static int parse_gga(char **f, struct nmea_fix *x)
{
	int q = f[6][0] ? digits(f[6], 1) : -2, rc;

	if (q == -2)
		return KM_POSITION_MISSING_FIELD;
	if (q < 0 || f[6][1] != '\0')
		return KM_POSITION_BAD_NUMBER;
	x->fix = q > 0;
	if (!x->fix)
		return 0;
	x->quality = q;
	x->qprio = 2;
	rc = nmea_latlon(f + 2, x);
	return rc < 0 ? rc : nmea_alt(f[9], x);
}

/* RMC/GLL: status A or V, then the optional mode letter of NMEA 2.3. */
static int status_mode(const char *status, const char *mode, struct nmea_fix *x)
{
	int q = 1;

	if (*status == '\0')
		return KM_POSITION_MISSING_FIELD;
	if ((*status != 'A' && *status != 'V') || status[1])
		return KM_POSITION_BAD_NMEA;
	if (mode && *mode) {
		q = mode_quality(*mode);
		if (q < 0 || mode[1])
			return KM_POSITION_BAD_NMEA;
	}
	x->fix = *status == 'A' && q > 0;
	x->quality = q;
	x->qprio = 1;
	return 0;
}

static int parse_rmc(char **f, int nf, struct nmea_fix *x)
{
	int rc = status_mode(f[2], nf > 12 ? f[12] : NULL, x);

	if (rc < 0 || (rc = nmea_date(f[9], &x->date_days)) < 0 || !x->fix)
		return rc;
	if ((rc = nmea_latlon(f + 3, x)) < 0 ||
	    (rc = nmea_opt(f[7], 0, SPEED_MAX / KNOT_MS, &x->speed)) < 0 ||
	    (rc = nmea_opt(f[8], 0, 360, &x->heading)) < 0)
		return rc;
	x->speed *= KNOT_MS;
	if (x->heading == 360.0)
		x->heading = 0.0;
	return 0;
}

static int parse_gll(char **f, int nf, struct nmea_fix *x)
{
	int rc = nmea_tod(f[5], &x->tod_ms);

	if (rc < 0 || (rc = status_mode(f[6], nf > 7 ? f[7] : NULL, x)) < 0 || !x->fix)
		return rc;
	return nmea_latlon(f + 1, x);
}

/* GNS mode: one letter per constellation; the first that is not N rules. */
static int parse_gns(char **f, struct nmea_fix *x)
{
	const char *m = f[6];
	int rc;

	if (*m == '\0')
		return KM_POSITION_MISSING_FIELD;
	x->quality = 0;
	for (; *m; m++) {
		int q = mode_quality(*m);

		if (q < 0)
			return KM_POSITION_BAD_NMEA;
		if (x->quality == 0)
			x->quality = q;
	}
	x->fix = x->quality > 0;
	x->qprio = 2;
	if (!x->fix)
		return 0;
	rc = nmea_latlon(f + 2, x);
	return rc < 0 ? rc : nmea_alt(f[9], x);
}

enum { T_OTHER, T_GGA, T_RMC, T_GLL, T_GNS };

/* Position sentence type from the address ("GNGGA"), any 2-letter talker. */
static int sentence_type(const char *addr)
{
	static const char *const names[] = { "GGA", "RMC", "GLL", "GNS" };

	if (strlen(addr) != 5 || addr[0] < 'A' || addr[0] > 'Z' || addr[1] < 'A' || addr[1] > 'Z')
		return T_OTHER;
	for (int i = 0; i < 4; i++)
		if (strcmp(addr + 2, names[i]) == 0)
			return T_GGA + i;
	return T_OTHER;
}

static const int min_fields[] = { 1, 15, 12, 7, 13 };

/* Split "ADDR,f1,f2" in place; returns the count or -1 if too many. */
static int split_fields(char *s, char **f)
{
	int n = 0;

	f[n++] = s;
	for (; *s; s++) {
		if (*s != ',')
			continue;
		if (n == NMEA_MAX_FIELDS)
			return -1;
		*s = '\0';
		f[n++] = s + 1;
	}
	return n;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Check "$...*hh" framing and checksum; on success body is NUL-terminated before '*'. */
static int sentence_frame(char *s, size_t n)
{
	char *star = memchr(s, '*', n);
	unsigned sum = 0;
	int hi, lo;

	if (!star)
		return KM_POSITION_NO_CHECKSUM;
	if ((size_t)(star - s) + 3 > n)
		return KM_POSITION_TRUNCATED;
	hi = hexval(star[1]), lo = hexval(star[2]);
	if ((size_t)(star - s) + 3 < n || hi < 0 || lo < 0)
		return KM_POSITION_BAD_NMEA;
	for (char *p = s + 1; p < star; p++)
		sum ^= (unsigned char)*p;
	*star = '\0';
	return sum == (unsigned)(hi << 4 | lo) ? 0 : KM_POSITION_BAD_CHECKSUM;
}

/* An address is 1..10 of [A-Z0-9]: anything else is not NMEA. */
static bool address_valid(const char *a)
{
	size_t n = strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");

	return n > 0 && n <= 10 && a[n] == '\0';
}

static int parse_fix(int type, char **f, int nf, struct nmea_fix *x)
{
	int rc = type == T_GLL ? 0 : nmea_tod(f[1], &x->tod_ms);

	if (rc < 0)
		return rc;
	switch (type) {
	case T_GGA: return parse_gga(f, x);
	case T_RMC: return parse_rmc(f, nf, x);
	case T_GLL: return parse_gll(f, nf, x);
	default: return parse_gns(f, x);
	}
}

static void acc_merge(struct nmea_acc *a, const struct nmea_fix *x)
{
	struct nmea_fix *c = &a->cur;

	if (x->date_days >= 0) {
		a->date_days = x->date_days;
		a->date_tod = x->tod_ms;
	}
	if (!a->any || x->tod_ms != c->tod_ms) {
		a->any = true;
		*c = *x;
		return;
	}
	c->fix = c->fix && x->fix;
	if (x->has_pos) {
		c->has_pos = true;
		c->lat = x->lat;
		c->lon = x->lon;
	}
	c->alt = isnan(x->alt) ? c->alt : x->alt;
	c->speed = isnan(x->speed) ? c->speed : x->speed;
	c->heading = isnan(x->heading) ? c->heading : x->heading;
	if (x->quality > 0 && x->qprio >= c->qprio) {
		c->quality = x->quality;
		c->qprio = x->qprio;
	}
}

static int nmea_sentence(char *s, size_t n, struct nmea_acc *acc)
{
	char *f[NMEA_MAX_FIELDS];
	struct nmea_fix x = { .tod_ms = -1, .alt = NAN, .speed = NAN, .heading = NAN,
			      .date_days = -1 };
	int rc, nf, type;

	if (s[0] != '$' || n > NMEA_MAX_SENTENCE)
		return KM_POSITION_BAD_NMEA;
	rc = sentence_frame(s, n);
	if (rc == KM_POSITION_NO_CHECKSUM)
		s[n] = '\0'; /* only to tell a cut sentence from an unsummed one */
	else if (rc < 0)
		return rc;
	nf = split_fields(s + 1, f);
	if (nf < 0 || !address_valid(f[0]))
		return KM_POSITION_BAD_NMEA;
	type = sentence_type(f[0]);
	if (nf < min_fields[type])
		return KM_POSITION_TRUNCATED;
	if (rc < 0 || type == T_OTHER)
		return rc;
	rc = parse_fix(type, f, nf, &x);
	if (rc == 0)
		acc_merge(acc, &x);
	return rc;
}

/* The date for the final epoch: RMC's (across midnight if need be), else now_ms's. */
static int64_t nmea_time(const struct nmea_acc *a, int64_t now_ms)
{
	int64_t tod = a->cur.tod_ms, days;

	if (tod < 0)
		return 0;
	if (a->date_days >= 0) {
		days = a->date_days;
		if (a->date_tod >= 0 && tod < a->date_tod - HALF_DAY_MS)
			days++;
		else if (a->date_tod >= 0 && tod > a->date_tod + HALF_DAY_MS)
			days--;
	} else if (now_ms > 0) {
		days = floor_div(now_ms - tod + HALF_DAY_MS, DAY_MS);
	} else {
		return 0;
	}
	return days * DAY_MS + tod;
}

/* Text only: NMEA is printable ASCII plus line ends. */
static bool nmea_text(const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];

		if ((c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c >= 0x7f)
			return false;
	}
	return true;
}

static int parse_nmea(char *buf, size_t len, int64_t now_ms, struct km_pos *p)
{
	struct nmea_acc acc = { .any = false, .date_days = -1, .date_tod = -1 };
	char *s = buf, *end = buf + len;

	if (!nmea_text(buf, len))
		return KM_POSITION_GARBAGE;
	while (s < end) {
		size_t n = strcspn(s, "\r\n");
		char *next = s + n + (s + n < end);
		int rc;

		while (n > 0 && (*s == ' ' || *s == '\t'))
			s++, n--;
		while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
			n--;
		if (n > 0 && (rc = nmea_sentence(s, n, &acc)) < 0)
			return rc;
		s = next;
	}
	if (!acc.any)
		return KM_POSITION_NO_POSITION;
	if (!acc.cur.fix)
		return KM_POSITION_NO_FIX;
	p->lat = acc.cur.lat;
	p->lon = acc.cur.lon;
	p->alt = acc.cur.alt;
	p->speed = acc.cur.speed;
	p->heading = acc.cur.heading;
	p->fix_quality = acc.cur.quality;
	p->mode = isnan(p->alt) ? 2 : 3;
	p->time_ms = nmea_time(&acc, now_ms);
	return 0;
}

/* ----------------------------------------------------------------- entry */

int km_position_parse(const char *unit_from_topic, const void *payload, size_t len,
		      int64_t now_ms, struct km_pos *out)
{
	char buf[KM_POSITION_MAX_PAYLOAD + 1];
	struct km_pos p;
	size_t lead;
	int rc;

	if ((!payload && len > 0) || !out)
		return KM_POSITION_INVALID_ARG;
	if (len > KM_POSITION_MAX_PAYLOAD)
		return KM_POSITION_OVERSIZED;
	memcpy(buf, payload, len);
	while (len > 0 && buf[len - 1] == '\0')
		len--;
	buf[len] = '\0';
	if (memchr(buf, '\0', len))
		return KM_POSITION_GARBAGE;
	lead = strspn(buf, " \t\r\n");
	if (lead == len)
		return KM_POSITION_EMPTY;
	km_posrec_init(&p);
	if (buf[lead] == '{' || buf[lead] == '[') {
		rc = parse_json(buf, len, unit_from_topic, &p);
	} else if (buf[lead] == '$') {
		if (!unit_from_topic || !unit_valid(unit_from_topic))
			return KM_POSITION_BAD_UNIT;
		strcpy(p.unit, unit_from_topic);
		rc = parse_nmea(buf, len, now_ms, &p);
	} else {
		rc = KM_POSITION_GARBAGE;
	}
	if (rc == 0)
		*out = p;
	return rc;
}

/* ---- the bridge: terminal positions from the local broker -------------------------- */

#define RATE_SLOTS 256        /* units tracked for log rate limiting; collisions share */
#define RATE_MS (60 * 1000)   /* one log line per unit and minute */

struct positions_conf {
	struct km_strv match;
	int64_t track_interval_ms;
};

static const struct km_conf_key position_keys[] = {
	{ "match", KM_CONF_LIST, "pos/+", offsetof(struct positions_conf, match),
	  "topic filters of terminal positions; the last level is the unit id", 0, 0, NULL },
	{ "track_interval", KM_CONF_DURATION, "60s", offsetof(struct positions_conf, track_interval_ms),
	  "while undelivered, keep one position per unit and interval (the track) plus the latest; 0 = only the latest",
	  0, 86400000, NULL },
	{ NULL, 0, NULL, 0, NULL, 0, 0, NULL },
};

struct km_positions {
	struct km_daemon *d;
	struct positions_conf conf;
	uint64_t bad[-KM_POSITION_ERR_LAST];
	int64_t last_log[RATE_SLOTS];
};

int km_positions_check(struct km_conf *c)
{
	struct positions_conf pc = { 0 };
	int bad = km_conf_apply(c, "positions", position_keys, &pc);
	for (size_t i = 0; i < pc.match.n; i++) {
		const char *why = km_topic_filter_invalid(pc.match.v[i]);
		if (why) {
			km_conf_error(c, "positions", "match", "'%s': %s", pc.match.v[i], why);
			bad++;
		}
	}
	km_conf_release(position_keys, &pc);
	return bad ? -EINVAL : 0;
}

int km_positions_new(struct km_positions **out, struct km_daemon *d, struct km_conf *c)
{
	struct km_positions *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->d = d;
	if (km_conf_apply(c, "positions", position_keys, &p->conf) != 0) {
		km_positions_free(p);
		return -EINVAL;
	}
	*out = p;
	return 0;
}

void km_positions_free(struct km_positions *p)
{
	if (!p)
		return;
	km_conf_release(position_keys, &p->conf);
	free(p);
}

static uint32_t unit_slot(const char *unit)
{
	uint32_t h = 2166136261u;
	while (*unit)
		h = (h ^ (uint8_t)*unit++) * 16777619u;
	return h % RATE_SLOTS;
}

/* A bad terminal can publish at 10 Hz: say so once a minute, count every time. */
static void note_bad(struct km_positions *p, const char *topic, const char *unit, int rc, size_t len)
{
	int64_t now = km_now_ms();
	uint64_t n = __atomic_add_fetch(&p->bad[-rc], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&p->d->bad_input, 1, __ATOMIC_RELAXED);
	km_status_bad_input(&p->d->status, km_position_strerror(rc));
	int64_t *last = &p->last_log[unit_slot(unit)];
	int64_t prev = __atomic_load_n(last, __ATOMIC_RELAXED);
	if (now - prev < RATE_MS || !__atomic_compare_exchange_n(last, &prev, now, false, __ATOMIC_RELAXED,
								  __ATOMIC_RELAXED))
		return;
	KM_LOG(KM_LOG_WARNING, "position", "%s: %s (%zu bytes): dropped (%llu %s so far; next report for this unit in a minute)",
	       topic, km_position_strerror(rc), len, (unsigned long long)n, km_position_strerror(rc));
}

int km_positions_take(struct km_positions *p, const char *topic, const void *payload, size_t len)
{
	bool hit = false;
	for (size_t i = 0; i < p->conf.match.n && !hit; i++)
		hit = km_topic_matches(p->conf.match.v[i], topic);
	if (!hit)
		return 0;
	const char *unit = strrchr(topic, '/');
	unit = unit ? unit + 1 : topic;

	struct km_pos pos;
	int64_t now = km_now_ms();
	int rc = km_position_parse(unit, payload, len, now, &pos);
	if (rc < 0) {
		note_bad(p, topic, unit, rc, len);
		return 1;
	}
	if (!pos.time_ms)
		pos.time_ms = now; /* the terminal gave no time: when we heard it */
	char json[512], out_topic[128];
	int n = km_posrec_to_json(&pos, json, sizeof(json));
	/* The canonical topic names the unit the record names (JSON may carry it). */
	snprintf(out_topic, sizeof(out_topic), "pos/%s", pos.unit);
	if (n < 0) {
		note_bad(p, topic, unit, KM_POSITION_INVALID_ARG, len);
		return 1;
	}
	/* The position class coalesces per topic; the bucket of the fix's time makes that
	 * "latest per unit and interval": an outage keeps a thinned track, not one point. */
	char bucket[24] = "";
	if (p->conf.track_interval_ms > 0)
		snprintf(bucket, sizeof(bucket), "%lld", (long long)(pos.time_ms / p->conf.track_interval_ms));
	rc = km_daemon_ingest_keyed(p->d, KM_DIR_UP, out_topic, json, (size_t)n, false, bucket[0] ? bucket : NULL);
	if (rc < 0 && rc != -EMSGSIZE && rc != -ENOENT)
		return rc; /* not stored (a storage fault): not acknowledged, sent again */
	km_status_position(&p->d->status, pos.unit, json, (size_t)n, now);
	if (p->d->incidents) /* the response timelines of the incidents it is assigned to */
		km_incidents_position(p->d->incidents, pos.unit, pos.lat, pos.lon, pos.time_ms);
	return 1;
}

uint64_t km_positions_bad(const struct km_positions *p)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < sizeof(p->bad) / sizeof(p->bad[0]); i++)
		sum += __atomic_load_n(&p->bad[i], __ATOMIC_RELAXED);
	return sum;
}

uint64_t km_positions_bad_by(const struct km_positions *p, int reason)
{
	int i = reason < 0 ? -reason : reason;
	return i < -KM_POSITION_ERR_LAST ? __atomic_load_n(&p->bad[i], __ATOMIC_RELAXED) : 0;
}

void km_positions_print_help(FILE *out)
{
	km_conf_print_help(out, "positions", position_keys);
}

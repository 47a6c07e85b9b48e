/* SPDX-License-Identifier: MIT */
/* Criterion suite for bridges/position: JSON and NMEA payloads, every refusal reason, real receiver captures. */
#include <criterion/criterion.h>

#include "tests/common/nmea_epochs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridges/position.h"
#include "gateway/posrec.h"

#ifndef KM_SOURCE_ROOT
#define KM_SOURCE_ROOT "."
#endif

/* 2015-02-25T12:00:00Z, a reference "now" for the dateless BeiDou capture. */
#define NOW_2015 INT64_C(1424865600000)

static int parse_str(const char *unit, const char *s, int64_t now_ms, struct km_pos *p)
{
	return km_position_parse(unit, s, strlen(s), now_ms, p);
}

/* Parse, then render as canonical JSON: one string to compare per case. */
static const char *parse_json_out(const char *unit, const char *payload, int64_t now_ms)
{
	static char buf[512];
	struct km_pos p;
	int rc = parse_str(unit, payload, now_ms, &p);

	cr_assert_eq(rc, 0, "parse failed: %s", km_position_strerror(rc));
	cr_assert_gt(km_posrec_to_json(&p, buf, sizeof(buf)), 0);
	return buf;
}

Test(position, json_full)
{
	const char *in = "{\"unit\":\"uav-07\",\"lat\":31.2479500,\"lon\":121.587438,"
			 "\"alt\":156.94,\"ts\":\"2024-05-01T03:04:05.12Z\",\"speed\":12.345,"
			 "\"heading\":359.96,\"fix\":3,\"battery\":87.5,\"kind\":\"drone\"}";

	cr_assert_str_eq(parse_json_out("uav-07", in, 0),
			 "{\"unit\":\"uav-07\",\"lat\":31.2479500,\"lon\":121.5874380,"
			 "\"alt\":156.9,\"time\":\"2024-05-01T03:04:05.120Z\",\"speed\":12.35,"
			 "\"heading\":0.0,\"mode\":3,\"kind\":\"drone\",\"battery\":87.5}");
}

Test(position, json_minimal_numeric_ts_no_unit_field)
{
	const char *in = " {\"lat\":-45.8775,\"lon\":170.5,\"ts\":1714532645.5,\"extra\":[1,2]}\n";

	cr_assert_str_eq(parse_json_out("pdt-1021", in, 0),
			 "{\"unit\":\"pdt-1021\",\"lat\":-45.8775000,\"lon\":170.5000000,"
			 "\"time\":\"2024-05-01T03:04:05.500Z\",\"mode\":0}");
}

Test(position, json_nulls_are_absent_and_unit_from_payload)
{
	const char *in = "{\"unit\":\"h-3\",\"lat\":0,\"lon\":-0.0000000001,\"alt\":null,"
			 "\"heading\":360,\"fix\":2,\"kind\":\"handheld\"}";

	cr_assert_str_eq(parse_json_out(NULL, in, 0),
			 "{\"unit\":\"h-3\",\"lat\":0.0000000,\"lon\":0.0000000,\"heading\":0.0,"
			 "\"mode\":2,\"kind\":\"handheld\"}");
}

Test(position, json_trailing_nul_tolerated)
{
	const char in[] = "{\"lat\":1,\"lon\":2}";
	struct km_pos p;

	cr_assert_eq(km_position_parse("v1", in, sizeof(in), 0, &p), 0);
	cr_assert_eq(p.lat, 1.0);
}

Test(position, nmea_gga_rmc_combined)
{
	/* From beidou-bd.log: one epoch, three sentences, CRLF-separated. */
	const char *in =
		"$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*77\r\n"
		"$GNGNS,074155.799,3114.8770,N,12135.2463,E,ANNA,05,1.3,156.9,8.3,,0000*52\r\n"
		"$GNRMC,074155.799,A,3114.8770,N,12135.2463,E,0.30,4.94,250215,,,A*76\r\n";

	cr_assert_str_eq(parse_json_out("uav-07", in, 0),
			 "{\"unit\":\"uav-07\",\"lat\":31.2479500,\"lon\":121.5874383,"
			 "\"alt\":156.9,\"time\":\"2015-02-25T07:41:55.799Z\",\"speed\":0.15,"
			 "\"heading\":4.9,\"mode\":3,\"quality\":1}");
}

Test(position, nmea_gga_alone_takes_date_from_now)
{
	const char *in =
		"$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*77";
	struct km_pos p;

	cr_assert_eq(parse_str("u", in, NOW_2015, &p), 0);
	cr_assert_eq(p.time_ms, INT64_C(1424850115799));
	/* now just after midnight: the 07:41 fix of the same day is nearer. */
	cr_assert_eq(parse_str("u", in, INT64_C(1424822400000) + 1000, &p), 0);
	cr_assert_eq(p.time_ms, INT64_C(1424850115799));
	/* now at 23:59 of the day before the fix... */
	cr_assert_eq(parse_str("u", in, INT64_C(1424822400000) - 60000, &p), 0);
	cr_assert_eq(p.time_ms, INT64_C(1424850115799));
	/* ...and 19:00 the next day: the fix 11.3 h earlier beats the one 12.7 h ahead. */
	cr_assert_eq(parse_str("u", in, INT64_C(1424822400000) + 86400000 + 68400000, &p), 0);
	cr_assert_eq(p.time_ms, INT64_C(1424850115799) + 86400000);
	cr_assert_eq(parse_str("u", in, 0, &p), 0);
	cr_assert_eq(p.time_ms, 0, "no date source: undated");
	cr_assert_eq(p.mode, 3);
	cr_assert(isnan(p.speed) && isnan(p.heading));
}

Test(position, nmea_rmc_date_rolls_over_midnight)
{
	/* RMC of 23:59:59.8 on 31 Dec 2024, then the GGA of the next epoch. */
	const char *in =
		"$GPRMC,235959.80,A,4552.65403,S,17030.00668,E,0.025,,311224,,,A*6B\n"
		"$GPGGA,000000.00,4552.65403,S,17030.00668,E,4,12,0.64,14.2,M,1.8,M,,*44\n";
	struct km_pos p;

	cr_assert_eq(parse_str("u", in, 0, &p), 0);
	cr_assert_eq(p.time_ms, INT64_C(1735689600000), "2025-01-01T00:00:00Z");
	cr_assert_eq(p.fix_quality, 4);
	cr_assert(isnan(p.speed), "speed belongs to the previous epoch");
}

Test(position, nmea_gll_and_talkers)
{
	const char *in = "$GBGLL,4739.71890,N,12219.58361,W,055234.400,A,D*53";
	struct km_pos p;

	cr_assert_eq(parse_str("r-1", in, INT64_C(1785909154000), &p), 0);
	cr_assert_float_eq(p.lat, 47.66198166666, 1e-9);
	cr_assert_float_eq(p.lon, -122.32639350, 1e-9);
	cr_assert_eq(p.mode, 2);
	cr_assert_eq(p.fix_quality, 2);
	cr_assert_eq(p.time_ms, INT64_C(1785909154400));
}

Test(position, nmea_ignores_other_sentences_but_checks_them)
{
	const char *in =
		"$PSRFEPE,074155.799,A,1.3,10.59,52.97,0.6,180.0*16\r\n"
		"$GPGSA,A,3,25,32,,,,,,,,,,,5.1,1.3,4.9,3.3*3D\r\n"
		" $GNRMC,074157.799,A,3114.8902,N,12135.2443,E,0.32,4.94,250215,,,A*7F \r\n";
	struct km_pos p;

	cr_assert_eq(parse_str("u", in, 0, &p), 0);
	cr_assert_eq(p.mode, 2);
	cr_assert_eq(p.time_ms, INT64_C(1424850117799));
}

struct bad_case {
	const char *unit;
	const char *payload;
	int expect;
};

#define LONG_FIELD "12345678901234567890"

static const struct bad_case bad_cases[] = {
	/* framing */
	{ "u", "", KM_POSITION_EMPTY },
	{ "u", " \r\n\t ", KM_POSITION_EMPTY },
	{ "u", "hello world", KM_POSITION_GARBAGE },
	{ "u", "\x01\x02\x03\xff\xfe", KM_POSITION_GARBAGE },
	{ "u", "$GPGGA\x01,1*00", KM_POSITION_GARBAGE },
	{ "u", "$GPGGA,\xc3\xa9*00", KM_POSITION_GARBAGE },
	/* JSON */
	{ "u", "{\"lat\":1,", KM_POSITION_BAD_JSON },
	{ "u", "[1,2,3]", KM_POSITION_BAD_JSON },
	{ "u", "{\"lat\":1,\"lon\":2} trailing", KM_POSITION_BAD_JSON },
	{ "u", "{\"lat\":1,\"lat\":2,\"lon\":3}", KM_POSITION_BAD_JSON },
	{ "u", "{\"lat\":NaN,\"lon\":3}", KM_POSITION_BAD_JSON },
	{ "u", "{\"lat\":\"31.2\",\"lon\":121}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lat\":31,\"lon\":true}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lat\":31,\"lon\":121,\"fix\":2.5}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":[1]}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lat\":31,\"lon\":121,\"unit\":7}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lat\":31,\"lon\":121,\"kind\":1}", KM_POSITION_BAD_TYPE },
	{ "u", "{\"lon\":121}", KM_POSITION_MISSING_FIELD },
	{ "u", "{\"lat\":null,\"lon\":121}", KM_POSITION_MISSING_FIELD },
	{ NULL, "{\"lat\":31,\"lon\":121}", KM_POSITION_MISSING_FIELD },
	{ "u", "{\"lat\":90.0001,\"lon\":121}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":-180.5}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":121,\"speed\":-1}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":121,\"heading\":361}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":121,\"battery\":101}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":121,\"alt\":1e6}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":31,\"lon\":121,\"fix\":4}", KM_POSITION_OUT_OF_RANGE },
	{ "u", "{\"lat\":1e999,\"lon\":121}", KM_POSITION_NOT_FINITE },
	{ "u", "{\"lat\":31,\"lon\":121,\"alt\":-1e999}", KM_POSITION_NOT_FINITE },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":\"2024-02-30T00:00:00Z\"}", KM_POSITION_BAD_TIME },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":\"2024-05-01 03:04:05Z\"}", KM_POSITION_BAD_TIME },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":\"2024-05-01T03:04:05+08:00\"}", KM_POSITION_BAD_TIME },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":\"2024-05-01T03:04:05.Z\"}", KM_POSITION_BAD_TIME },
	{ "u", "{\"lat\":31,\"lon\":121,\"ts\":0}", KM_POSITION_BAD_TIME },
	{ "u", "{\"lat\":31,\"lon\":121,\"kind\":\"tank\"}", KM_POSITION_BAD_KIND },
	{ "u", "{\"unit\":\"v\",\"lat\":31,\"lon\":121}", KM_POSITION_UNIT_MISMATCH },
	{ "a/b", "{\"lat\":31,\"lon\":121}", KM_POSITION_BAD_UNIT },
	{ NULL, "{\"unit\":\"\",\"lat\":31,\"lon\":121}", KM_POSITION_BAD_UNIT },
	{ "u", "{\"lat\":31,\"lon\":121,\"fix\":1}", KM_POSITION_NO_FIX },
	/* NMEA */
	{ "u", "$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9",
	  KM_POSITION_NO_CHECKSUM },
	{ "u", "$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*76",
	  KM_POSITION_BAD_CHECKSUM },
	{ "u", "$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*7",
	  KM_POSITION_TRUNCATED },
	{ "u", "$GNGGA,074155.799,3114.87", KM_POSITION_TRUNCATED },
	{ "u", "$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05*5C", KM_POSITION_TRUNCATED },
	{ "u", "$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*77x",
	  KM_POSITION_BAD_NMEA },
	{ "u", "$GN GGA,1*00", KM_POSITION_BAD_NMEA },
	{ "u", "$GNRMC,074155.799,A,3114.8770,N,12135.2463,E,0.30,4.94,250215,,,A*76\nGPGGA",
	  KM_POSITION_BAD_NMEA },
	{ "u", "$GPGLL,4739.71890,X,12219.58361,W,055234.400,A,A*4E", KM_POSITION_BAD_NMEA },
	{ "u", "$GPGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,nan,M,8.3,M,,*4D",
	  KM_POSITION_BAD_NUMBER },
	{ "u", "$GPGGA,074155.799,31e4.8770,N,12135.2463,E,1,05,1.3,1,M,8.3,M,,*3A",
	  KM_POSITION_BAD_NUMBER },
	{ "u", "$GPGGA,074155.799,9114.8770,N,12135.2463,E,1,05,1.3,1,M,8.3,M,,*33",
	  KM_POSITION_OUT_OF_RANGE },
	{ "u", "$GPGGA,074155.799,3114.8770,N,18135.2463,E,1,05,1.3,1,M,8.3,M,,*3D",
	  KM_POSITION_OUT_OF_RANGE },
	{ "u", "$GPGGA,074155.799,3174.8770,N,12135.2463,E,1,05,1.3,1,M,8.3,M,,*34",
	  KM_POSITION_OUT_OF_RANGE },
	{ "u", "$GPGGA,074155.799,,N,12135.2463,E,1,05,1.3,1,M,8.3,M,,*31",
	  KM_POSITION_MISSING_FIELD },
	{ "u", "$GPGGA,256155.799,3114.8770,N,12135.2463,E,1,05,1.3,1,M,8.3,M,,*31",
	  KM_POSITION_BAD_TIME },
	{ "u", "$GNRMC,074155.799,A,3114.8770,N,12135.2463,E,0.13,4.94,300215,,,A*70",
	  KM_POSITION_BAD_TIME },
	{ "u", "$GNGGA,074150.799,,,,,0,00,,,M,0.0,M,,0000,*64", KM_POSITION_NO_FIX },
	{ "u", "$GNGNS,074150.799,,,,,NNNN,00,,,0.0,,0000*63", KM_POSITION_NO_FIX },
	{ "u", "$GNRMC,074150.799,V,,,,,,,250215,,,N*52", KM_POSITION_NO_FIX },
	{ "u", "$GPGSA,A,1,,,,,,,,,,,,,,,,*32\r\n$GPTXT,01,01,01,ANTENNA OK*35",
	  KM_POSITION_NO_POSITION },
	{ NULL, "$GNRMC,074150.799,V,,,,,,,250215,,,N*52", KM_POSITION_BAD_UNIT },
	{ "u", "$GPGGA," LONG_FIELD LONG_FIELD LONG_FIELD LONG_FIELD LONG_FIELD LONG_FIELD "*00",
	  KM_POSITION_BAD_NMEA },
};

/* Fill in the real checksum of a one-sentence case whose *hh is a placeholder. */
static void fix_checksum(char *s)
{
	char *star = strrchr(s, '*');
	unsigned sum = 0;

	if (!star || s[0] != '$' || strlen(star) != 3 || strchr(s, '\n'))
		return;
	for (char *p = s + 1; p < star; p++)
		sum ^= (unsigned char)*p;
	snprintf(star + 1, 3, "%02X", sum);
}

Test(position, bad_inputs_table)
{
	size_t n = sizeof(bad_cases) / sizeof(bad_cases[0]);

	cr_assert_geq(n, 30);
	for (size_t i = 0; i < n; i++) {
		char buf[512];
		struct km_pos p;
		int rc;

		snprintf(buf, sizeof(buf), "%s", bad_cases[i].payload);
		/* Cases that test a field, not the checksum, get a correct one. */
		if (bad_cases[i].expect != KM_POSITION_BAD_CHECKSUM)
			fix_checksum(buf);
		rc = parse_str(bad_cases[i].unit, buf, NOW_2015, &p);
		cr_expect_eq(rc, bad_cases[i].expect, "case %zu (%s): got %s, want %s", i,
			     bad_cases[i].payload, km_position_strerror(rc),
			     km_position_strerror(bad_cases[i].expect));
	}
}

Test(position, oversized_and_args)
{
	static char big[KM_POSITION_MAX_PAYLOAD + 1];
	struct km_pos p;

	memset(big, ' ', sizeof(big));
	cr_assert_eq(km_position_parse("u", big, sizeof(big), 0, &p), KM_POSITION_OVERSIZED);
	cr_assert_eq(km_position_parse("u", big, sizeof(big) - 1, 0, &p), KM_POSITION_EMPTY);
	cr_assert_eq(km_position_parse("u", NULL, 3, 0, &p), KM_POSITION_INVALID_ARG);
	cr_assert_eq(km_position_parse("u", "{}\0{}", 5, 0, &p), KM_POSITION_GARBAGE);
}

Test(position, strerror_names)
{
	cr_assert_str_eq(km_position_strerror(KM_POSITION_OK), "ok");
	cr_assert_str_eq(km_position_strerror(KM_POSITION_BAD_CHECKSUM), "bad_checksum");
	cr_assert_str_eq(km_position_strerror(-KM_POSITION_NO_FIX), "no_fix");
	cr_assert_str_eq(km_position_strerror(KM_POSITION_INVALID_ARG), "invalid_arg");
	cr_assert_str_eq(km_position_strerror(KM_POSITION_ERR_LAST), "unknown");
	for (int c = KM_POSITION_OK; c > KM_POSITION_ERR_LAST; c--)
		cr_assert_str_neq(km_position_strerror(c), "unknown");
}

/* ------------------------------------------------ real receiver captures */

struct replay {
	size_t ok, refused;
	int last_rc;
	struct km_pos last;
};

struct replay_ctx {
	const char *file, *unit;
	int64_t now_ms;
	struct replay *r;
};

static void replay_epoch(void *ud, const char *payload, size_t len)
{
	struct replay_ctx *c = ud;
	struct km_pos p;
	int rc = km_position_parse(c->unit, payload, len, c->now_ms, &p);

	c->r->ok += rc == 0;
	c->r->refused += rc != 0;
	c->r->last_rc = rc;
	if (rc == 0)
		c->r->last = p;
	else
		cr_assert_eq(rc, KM_POSITION_NO_FIX, "%s: %s", c->file, km_position_strerror(rc));
}

/* Replays a capture one epoch (consecutive position sentences of one time) per payload. */
static void replay(const char *file, const char *unit, int64_t now_ms, struct replay *r)
{
	struct replay_ctx c = { file, unit, now_ms, r };
	memset(r, 0, sizeof(*r));
	cr_assert_eq(km_test_nmea_epochs(file, replay_epoch, &c), 0, "cannot read %s", file);
}

Test(position, capture_beidou_matches_gpsd)
{
	struct replay r;
	char js[256];

	replay("beidou-bd.log", "bd-1", 0, &r);
	cr_assert_eq(r.ok, 5);
	cr_assert_eq(r.refused, 5, "acquisition epochs are no_fix");
	km_posrec_to_json(&r.last, js, sizeof(js));
	cr_assert_str_eq(js, "{\"unit\":\"bd-1\",\"lat\":31.2482383,\"lon\":121.5874067,"
			     "\"alt\":196.4,\"time\":\"2015-02-25T07:41:59.799Z\",\"speed\":0.12,"
			     "\"heading\":4.9,\"mode\":3,\"quality\":1}");
}

Test(position, capture_ublox_matches_gpsd)
{
	struct replay r;

	replay("ublox-zed-f9p-nmea.log", "f9p", 0, &r);
	cr_assert_eq(r.ok, 29);
	cr_assert_eq(r.refused, 0);
	/* gpsd's last TPV in the .chk: */
	cr_assert_float_eq(r.last.lat, -45.8775655, 1e-9);
	cr_assert_float_eq(r.last.lon, 170.500111667, 1e-9);
	cr_assert_float_eq(r.last.alt, 14.8, 1e-9);
	cr_assert_eq(r.last.time_ms, INT64_C(1555029624000), "2019-04-12T00:40:24.000Z");
}

Test(position, capture_quectel_all_epochs)
{
	struct replay r;

	/*
	 * The capture ends with the GGA+GLL of 05:53:04.000 and no RMC: its date
	 * comes from "now" (the capture day). gpsd's .chk stops at 03.800, the
	 * last complete cycle; the position is the same.
	 */
	replay("quectel-l76k-nmea.log", "l76k", INT64_C(1785909154000), &r);
	cr_assert_gt(r.ok, 140);
	cr_assert_eq(r.refused, 0);
	cr_assert_float_eq(r.last.lat, 47.661978333, 1e-9);
	cr_assert_float_eq(r.last.lon, -122.326392167, 1e-9);
	cr_assert_eq(r.last.time_ms, INT64_C(1785909184000), "2026-08-05T05:53:04.000Z");
}

/* xorshift: a fixed sequence, so a failure reproduces. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Mutated real payloads and random bytes: always a known reason, never a crash. */
Test(position, hostile_payloads_never_crash)
{
	const char *seeds[] = {
		"$GNGGA,074155.799,3114.8770,N,12135.2463,E,1,05,1.3,156.9,M,8.3,M,,0000,4.9*77\r\n"
		"$GNRMC,074155.799,A,3114.8770,N,12135.2463,E,0.30,4.94,250215,,,A*76\r\n",
		"{\"unit\":\"u\",\"lat\":31.2,\"lon\":121.5,\"alt\":15,\"ts\":\"2024-05-01T03:04:05.12Z\","
		"\"speed\":1,\"heading\":2,\"fix\":3,\"battery\":50,\"kind\":\"radio\"}",
	};
	uint64_t seed = 0x2545f4914f6cdd1du;
	char buf[512];

	for (int iter = 0; iter < 40000; iter++) {
		const char *s = seeds[iter % 2];
		size_t len = strlen(s);
		struct km_pos p;
		int rc;

		memcpy(buf, s, len);
		if (iter % 5 == 4) {
			len = rnd(&seed) % sizeof(buf);
			for (size_t i = 0; i < len; i++)
				buf[i] = (char)rnd(&seed);
		} else {
			for (int k = 0; k < 1 + iter % 3; k++)
				buf[rnd(&seed) % len] = (char)rnd(&seed);
			len -= rnd(&seed) % 4 == 0 ? rnd(&seed) % len : 0;
		}
		rc = km_position_parse("u", buf, len, NOW_2015, &p);
		cr_assert(rc <= 0 && rc > KM_POSITION_ERR_LAST, "rc %d", rc);
		if (rc == 0)
			cr_assert(fabs(p.lat) <= 90 && fabs(p.lon) <= 180);
	}
}

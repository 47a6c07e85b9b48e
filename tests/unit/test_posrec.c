/* SPDX-License-Identifier: MIT */
/* Criterion suite for gateway/posrec: exact JSON, codec round trips over real tracks, size bounds, hostile input. */
#include <criterion/criterion.h>

#include "tests/common/nmea_epochs.h"

#include <errno.h>
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

#define MAX_TRACK 512

static struct km_pos mk(const char *unit, double lat, double lon, int64_t t)
{
	struct km_pos p;

	km_posrec_init(&p);
	snprintf(p.unit, sizeof(p.unit), "%s", unit);
	p.lat = lat;
	p.lon = lon;
	p.time_ms = t;
	p.mode = 3;
	return p;
}

/* ------------------------------------------------------------------ JSON */

Test(posrec, init_means_unknown)
{
	struct km_pos p;

	memset(&p, 0x5a, sizeof(p));
	km_posrec_init(&p);
	cr_assert(isnan(p.alt) && isnan(p.speed) && isnan(p.heading) && isnan(p.battery));
	cr_assert_eq(p.time_ms, 0);
	cr_assert_str_eq(p.unit, "");
}

Test(posrec, json_full_and_exact)
{
	struct km_pos p = mk("uav-07", 31.24795, 121.58743833333, INT64_C(1714532645120));
	char buf[256];
	const char *want = "{\"unit\":\"uav-07\",\"lat\":31.2479500,\"lon\":121.5874383,"
			   "\"alt\":156.9,\"time\":\"2024-05-01T03:04:05.120Z\",\"speed\":3.25,"
			   "\"heading\":271.3,\"mode\":3,\"quality\":4,\"kind\":\"drone\","
			   "\"battery\":87.0}";

	p.alt = 156.94;
	p.speed = 3.25;
	p.heading = 271.34;
	p.fix_quality = 4;
	p.battery = 87;
	strcpy(p.kind, "drone");
	cr_assert_eq(km_posrec_to_json(&p, buf, sizeof(buf)), (int)strlen(want));
	cr_assert_str_eq(buf, want);
	/* Exactly enough room (the NUL included) works; one byte less does not. */
	cr_assert_eq(km_posrec_to_json(&p, buf, strlen(want) + 1), (int)strlen(want));
	cr_assert_eq(km_posrec_to_json(&p, buf, strlen(want)), -ENOSPC);
	cr_assert_eq(km_posrec_to_json(&p, buf, 0), -ENOSPC);
}

Test(posrec, json_minimal_negative_zero_and_escaping)
{
	struct km_pos p = mk("a\"b\\c\x01", -0.00000001, -179.99999999, 0);
	char buf[256];

	p.mode = 0;
	cr_assert_gt(km_posrec_to_json(&p, buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "{\"unit\":\"a\\\"b\\\\c\\u0001\",\"lat\":0.0000000,"
			      "\"lon\":-180.0000000,\"mode\":0}");
}

Test(posrec, json_time_before_1970_and_refusals)
{
	struct km_pos p = mk("u", 1, 2, -1);
	char buf[256];

	cr_assert_gt(km_posrec_to_json(&p, buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000,"
			      "\"time\":\"1969-12-31T23:59:59.999Z\",\"mode\":3}");
	p.lat = 90.5;
	cr_assert_eq(km_posrec_to_json(&p, buf, sizeof(buf)), -EINVAL);
	p.lat = NAN;
	cr_assert_eq(km_posrec_to_json(&p, buf, sizeof(buf)), -EINVAL);
	p.lat = 1;
	p.speed = INFINITY;
	cr_assert_eq(km_posrec_to_json(&p, buf, sizeof(buf)), -EINVAL);
	p.speed = NAN;
	memset(p.unit, 'x', sizeof(p.unit));
	cr_assert_eq(km_posrec_to_json(&p, buf, sizeof(buf)), -EINVAL);
}

/* ---------------------------------------------------------------- codec */

static void assert_pos_eq(const struct km_pos *a, const struct km_pos *b, size_t i)
{
	/* NAN != NAN, so unknowns compare by "both unknown". */
#define SAME(f) ((isnan(a->f) && isnan(b->f)) || a->f == b->f)
	cr_assert_str_eq(a->unit, b->unit, "pos %zu unit", i);
	cr_assert_str_eq(a->kind, b->kind, "pos %zu kind", i);
	cr_assert(a->lat == b->lat && a->lon == b->lon, "pos %zu lat/lon %.9f,%.9f vs %.9f,%.9f",
		  i, a->lat, a->lon, b->lat, b->lon);
	cr_assert(SAME(alt) && SAME(speed) && SAME(heading) && SAME(battery),
		  "pos %zu optionals", i);
	cr_assert_eq(a->time_ms, b->time_ms, "pos %zu time", i);
	cr_assert_eq(a->mode, b->mode, "pos %zu mode", i);
	cr_assert_eq(a->fix_quality, b->fix_quality, "pos %zu quality", i);
#undef SAME
}

/* Encode, decode, and compare with the quantised originals. Returns the size. */
static int round_trip(const struct km_pos *in, size_t n)
{
	static uint8_t buf[65536];
	static struct km_pos out[MAX_TRACK * 4];
	size_t got = 0;
	int len = km_posrec_encode(in, n, buf, sizeof(buf));

	cr_assert_gt(len, 0, "encode: %d", len);
	cr_assert_eq(km_posrec_decode(buf, (size_t)len, out, n, &got), 0);
	cr_assert_eq(got, n);
	for (size_t i = 0; i < n; i++) {
		struct km_pos q;

		cr_assert_eq(km_posrec_quantise(&in[i], &q), 0);
		assert_pos_eq(&out[i], &q, i);
	}
	return len;
}

Test(posrec, quantise_documented_resolution)
{
	struct km_pos p = mk("u", 31.123456789, -122.987654321, INT64_C(1714532645149));
	struct km_pos q;

	p.alt = -600.4;
	p.speed = 250;
	p.heading = -0.4;
	p.battery = 49.5;
	p.fix_quality = 5;
	cr_assert_eq(km_posrec_quantise(&p, &q), 0);
	cr_assert_eq(q.lat, 3112346 / 1e5);
	cr_assert_eq(q.lon, -12298765 / 1e5);
	cr_assert_eq(q.alt, -500.0, "clamped");
	cr_assert_eq(q.speed, 204.6, "clamped");
	cr_assert_eq(q.heading, 0.0);
	cr_assert_eq(q.battery, 50.0);
	cr_assert_eq(q.time_ms, INT64_C(1714532645100));
	p.time_ms += 1;
	cr_assert_eq(km_posrec_quantise(&p, &q), 0);
	cr_assert_eq(q.time_ms, INT64_C(1714532645200), "half rounds up");
	p.mode = 4;
	cr_assert_eq(km_posrec_quantise(&p, &q), -EINVAL);
}

Test(posrec, synthetic_round_trip_extremes)
{
	struct km_pos in[6] = {
		mk("a", 90, 180, INT64_C(1714532645000)),
		mk("a", -90, -180, INT64_C(1714532645000) - INT64_C(209715100)),
		mk("b", 0, 0, 0),
		mk("a", 12.5, 33.3, INT64_C(1714532645000) + INT64_C(209715100)),
		mk("b", 1e-5, -1e-5, INT64_C(1714532645000)),
		mk("a", 12.5, 33.3, 0),
	};

	in[1].alt = 20000;
	in[1].speed = 0;
	in[1].heading = 359.6;
	in[1].battery = 0;
	in[1].fix_quality = 15;
	strcpy(in[2].kind, "vehicle");
	strcpy(in[4].kind, "vehicle");
	in[3].alt = -12.3;
	in[3].speed = 1e9;
	round_trip(in, 6);
}

Test(posrec, empty_batch_and_errors)
{
	uint8_t buf[4096];
	struct km_pos p[200], out[4];
	size_t n = 9;

	cr_assert_eq(km_posrec_encode(NULL, 0, buf, sizeof(buf)), 4);
	cr_assert_eq(km_posrec_decode(buf, 4, out, 4, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(km_posrec_encode(NULL, 0, buf, 3), -ENOSPC);

	p[0] = mk("u", 1, 2, INT64_C(1714532645000));
	cr_assert_eq(km_posrec_encode(p, 1, buf, 20), -ENOSPC);
	p[1] = mk("u", 1, 2, INT64_C(1714532645000) + INT64_C(209715200));
	cr_assert_eq(km_posrec_encode(p, 2, buf, sizeof(buf)), -ERANGE);
	p[1] = p[0];
	p[1].lat = 91;
	cr_assert_eq(km_posrec_encode(p, 2, buf, sizeof(buf)), -EINVAL);
	strcpy(p[1].kind, "tank");
	p[1].lat = 1;
	cr_assert_eq(km_posrec_encode(p, 2, buf, sizeof(buf)), -EINVAL);
	for (int i = 0; i < 128; i++)
		p[i] = mk("", 1, 2, 0), snprintf(p[i].unit, sizeof(p[i].unit), "u%d", i);
	cr_assert_eq(km_posrec_encode(p, 128, buf, sizeof(buf)), -E2BIG);
	/* version, base, count; names u0..u126 with their length bytes; 1-byte record count. */
	cr_assert_eq(km_posrec_encode(p, 127, buf, sizeof(buf)),
		     3 + (10 * 3 + 90 * 4 + 27 * 5) + 1 + 127 * 16);
	/* The decoder will not write past cap. */
	cr_assert_eq(km_posrec_decode(buf, (size_t)km_posrec_encode(p, 5, buf, sizeof(buf)),
				      out, 4, &n), -ENOSPC);
}

static void assert_marginal_sizes(const struct km_pos *p, size_t n);

/* Worst cases for a delta: every code jumps to the far end of its range. */
Test(posrec, every_record_at_most_16_bytes_adversarial)
{
	struct km_pos p[3];
	int64_t t0 = INT64_C(1714532645000);

	p[0] = mk("u", 0, 0, t0);
	p[1] = mk("u", -90, -180, t0 - INT64_C(209715000));
	p[1].alt = -500;
	p[1].speed = 0;
	p[1].heading = 0;
	p[1].battery = 0;
	p[2] = mk("u", 90, 180, t0 + INT64_C(209715000));
	p[2].alt = 15882;
	p[2].speed = 204.6;
	p[2].heading = 359;
	p[2].battery = 100;
	p[2].mode = 0;
	p[2].fix_quality = 15;
	assert_marginal_sizes(p, 3);
	round_trip(p, 3);
}

/* ------------------------------------------------------ real captures */

struct track {
	const char *unit;
	int64_t now_ms;
	struct km_pos *out;
	size_t cap, n;
};

static void track_epoch(void *ud, const char *payload, size_t len)
{
	struct track *t = ud;
	if (t->n < t->cap && km_position_parse(t->unit, payload, len, t->now_ms, &t->out[t->n]) == 0)
		t->n++;
}

/* Real track: every epoch of a capture that km_position_parse accepts. */
static size_t load_track(const char *file, const char *unit, int64_t now_ms, struct km_pos *out, size_t cap)
{
	struct track t = { unit, now_ms, out, cap, 0 };
	cr_assert_eq(km_test_nmea_epochs(file, track_epoch, &t), 0, "cannot read %s", file);
	return t.n;
}

/* Three units reporting in turn, as a base hears them; kinds and battery vary. */
static size_t load_mixed(struct km_pos *all)
{
	static struct km_pos tr[3][MAX_TRACK];
	size_t n[3], total = 0;

	n[0] = load_track("beidou-bd.log", "bd-1", 0, tr[0], MAX_TRACK);
	n[1] = load_track("quectel-l76k-nmea.log", "l76k-2", INT64_C(1785909154000), tr[1],
			  MAX_TRACK);
	n[2] = load_track("ublox-zed-f9p-nmea.log", "f9p-3", 0, tr[2], MAX_TRACK);
	cr_assert(n[0] == 5 && n[1] > 140 && n[2] == 29, "tracks %zu %zu %zu", n[0], n[1], n[2]);
	/*
	 * The captures are years apart; a batch spans at most +-58 h. Replay
	 * them as if recorded together: each track starts at the L76K's start.
	 */
	for (int u = 0; u < 3; u++) {
		int64_t shift = tr[1][0].time_ms - tr[u][0].time_ms;

		for (size_t i = 0; i < n[u]; i++)
			tr[u][i].time_ms += shift;
	}
	for (size_t i = 0; i < MAX_TRACK; i++) {
		for (int u = 0; u < 3; u++) {
			if (i >= n[u])
				continue;
			all[total] = tr[u][i];
			strcpy(all[total].kind, u == 0 ? "drone" : u == 1 ? "handheld" : "");
			all[total].battery = u == 1 ? 90.0 - (double)i / 10 : NAN;
			total++;
		}
	}
	return total;
}

/* Bytes each position adds to a batch: the size of prefix k+1 minus prefix k. */
static void assert_marginal_sizes(const struct km_pos *p, size_t n)
{
	uint8_t buf[8192];
	int prev = km_posrec_encode(p, 0, buf, sizeof(buf));

	for (size_t k = 0; k < n; k++) {
		int len = km_posrec_encode(p, k + 1, buf, sizeof(buf));
		bool first = true;

		for (size_t j = 0; j < k; j++)
			first = first && strcmp(p[j].unit, p[k].unit) != 0;
		cr_assert_gt(len, prev);
		if (!first)
			cr_assert_leq(len - prev, KM_POSREC_MAX_RECORD, "position %zu: %d bytes", k,
				      len - prev);
		prev = len;
	}
}

Test(posrec, real_tracks_round_trip_in_batches)
{
	static struct km_pos all[MAX_TRACK * 3];
	size_t total = load_mixed(all);
	const size_t sizes[] = { 1, 10, 100 };

	for (size_t s = 0; s < 3; s++) {
		size_t bytes = 0, json = 0, batches = 0;

		for (size_t off = 0; off < total; off += sizes[s], batches++) {
			size_t n = total - off < sizes[s] ? total - off : sizes[s];

			bytes += (size_t)round_trip(all + off, n);
			assert_marginal_sizes(all + off, n);
			for (size_t i = off; i < off + n; i++) {
				char js[256];

				json += (size_t)km_posrec_to_json(&all[i], js, sizeof(js));
			}
		}
		fprintf(stderr, "# posrec: %zu real positions, %3zu per batch: %6.2f bytes/position "
				"compact, %6.2f JSON\n",
			total, sizes[s], (double)bytes / (double)total, (double)json / (double)total);
	}
}

Test(posrec, encode_fit_fills_mtus)
{
	static struct km_pos all[MAX_TRACK * 3], out[MAX_TRACK * 3];
	const size_t mtus[] = { 77, 340, 1750 };
	size_t total = load_mixed(all);

	for (size_t m = 0; m < 3; m++) {
		size_t done = 0, frames = 0;

		while (done < total) {
			uint8_t frame[1750];
			size_t used = 0, got = 0;
			int len = km_posrec_encode_fit(all + done, total - done, frame, mtus[m], &used);

			cr_assert_gt(len, 0);
			cr_assert_leq((size_t)len, mtus[m]);
			cr_assert_gt(used, 0);
			cr_assert_eq(km_posrec_decode(frame, (size_t)len, out, used, &got), 0);
			cr_assert_eq(got, used);
			for (size_t i = 0; i < used; i++) {
				struct km_pos q;

				km_posrec_quantise(&all[done + i], &q);
				assert_pos_eq(&out[i], &q, done + i);
			}
			done += used;
			frames++;
		}
		fprintf(stderr, "# posrec: MTU %4zu: %zu positions in %zu frames (%.1f per frame)\n",
			mtus[m], total, frames, (double)total / (double)frames);
	}
}

/* ------------------------------------------------------ hostile input */

/* xorshift: a fixed sequence, so a failure reproduces. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

Test(posrec, decoder_survives_garbage_truncation_and_bit_flips)
{
	static struct km_pos all[MAX_TRACK * 3], out[256];
	uint8_t valid[4096], buf[4096];
	size_t total = load_mixed(all), n;
	int len = km_posrec_encode(all, total < 100 ? total : 100, valid, sizeof(valid));
	uint64_t seed = 0x9e3779b97f4a7c15u;

	cr_assert_gt(len, 0);
	/* Every strict prefix of a batch is refused: the header counts records. */
	for (int cut = 0; cut < len; cut++) {
		int rc = km_posrec_decode(valid, (size_t)cut, out, 256, &n);

		cr_assert(rc == -EBADMSG, "cut at %d: %d", cut, rc);
		cr_assert_eq(n, 0);
	}
	for (int iter = 0; iter < 20000; iter++) {
		size_t blen = rnd(&seed) % 300;
		int rc;

		for (size_t i = 0; i < blen; i++)
			buf[i] = (uint8_t)rnd(&seed);
		if (iter % 2 && blen > 0)
			buf[0] = KM_POSREC_VERSION; /* get past the version check */
		rc = km_posrec_decode(buf, blen, out, 256, &n);
		cr_assert(rc == 0 || rc == -EBADMSG || rc == -ENOTSUP || rc == -ENOSPC);
	}
	for (int iter = 0; iter < 20000; iter++) {
		int rc;

		memcpy(buf, valid, (size_t)len);
		for (int k = 0; k < 1 + iter % 4; k++)
			buf[rnd(&seed) % (size_t)len] ^= (uint8_t)(1u << rnd(&seed) % 8);
		rc = km_posrec_decode(buf, (size_t)len, out, 256, &n);
		cr_assert(rc == 0 || rc == -EBADMSG || rc == -ENOTSUP);
		for (size_t i = 0; rc == 0 && i < n; i++)
			cr_assert(fabs(out[i].lat) <= 90 && fabs(out[i].lon) <= 180);
	}
}

/* ------------------------------------------ canonical JSON <-> one batch */

#define UAV_JSON "{\"unit\":\"uav-07\",\"lat\":30.8123546,\"lon\":108.4014343,\"alt\":353.1," \
	"\"time\":\"2025-11-23T06:40:02.151Z\",\"speed\":12.37,\"heading\":86.9,\"mode\":3," \
	"\"quality\":1,\"kind\":\"drone\",\"battery\":81.0}"
/* What the center publishes for it: the record at the codec's resolution. */
#define UAV_QUANT "{\"unit\":\"uav-07\",\"lat\":30.8123500,\"lon\":108.4014300,\"alt\":353.0," \
	"\"time\":\"2025-11-23T06:40:02.200Z\",\"speed\":12.40,\"heading\":87.0,\"mode\":3," \
	"\"quality\":1,\"kind\":\"drone\",\"battery\":81.0}"

Test(posrec, from_json_takes_exactly_canonical_json)
{
	struct km_pos p, q;
	char js[512];

	cr_assert_eq(km_posrec_from_json(UAV_JSON, strlen(UAV_JSON), &p), 0);
	cr_assert_str_eq(p.unit, "uav-07");
	cr_assert_str_eq(p.kind, "drone");
	cr_assert_eq(p.time_ms, INT64_C(1763880002151));
	cr_assert_eq(p.mode, 3);
	cr_assert_eq(p.fix_quality, 1);
	cr_assert_eq(km_posrec_to_json(&p, js, sizeof(js)), (int)strlen(UAV_JSON));
	cr_assert_str_eq(js, UAV_JSON);

	/* Every canonical record round-trips: minimal, negative, before 1970. */
	q = mk("a", -33.8688197, -151.2092955, -86400000 * 400LL + 5);
	q.mode = 0;
	cr_assert_gt(km_posrec_to_json(&q, js, sizeof(js)), 0);
	cr_assert_eq(km_posrec_from_json(js, strlen(js), &p), 0, "%s", js);
	cr_assert_eq(p.time_ms, q.time_ms);
	cr_assert(isnan(p.alt) && isnan(p.speed) && isnan(p.heading) && isnan(p.battery));
	cr_assert_eq(p.lat, -33.8688197);

	static const char *const refused[] = {
		"{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000}",            /* no mode */
		"{\"unit\":\"u\", \"lat\":1.0000000,\"lon\":2.0000000,\"mode\":3}", /* a blank */
		"{\"unit\":\"u\",\"lat\":1.00000,\"lon\":2.0000000,\"mode\":3}",    /* 5 decimals */
		"{\"unit\":\"u\",\"lon\":2.0000000,\"lat\":1.0000000,\"mode\":3}",  /* order */
		"{\"unit\":\"u\",\"lat\":1e0,\"lon\":2.0000000,\"mode\":3}",
		"{\"unit\":\"u\",\"lat\":0x1p0,\"lon\":2.0000000,\"mode\":3}",
		"{\"unit\":\"u\\\"\",\"lat\":1.0000000,\"lon\":2.0000000,\"mode\":3}",
		"{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000,\"mode\":3,\"sats_used\":9}",
		"{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000,\"time\":\"2025-02-30T00:00:00.000Z\",\"mode\":3}",
		"{\"unit\":\"u\",\"lat\":-0.0000000,\"lon\":2.0000000,\"mode\":3}",
		"{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000,\"mode\":3}x",
		"{\"lat\":30.5,\"lon\":109.4,\"fix\":3}",                            /* a terminal's */
		"",
	};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		cr_assert_eq(km_posrec_from_json(refused[i], strlen(refused[i]), &p), -EINVAL, "%s", refused[i]);
	const char *ok = "{\"unit\":\"u\",\"lat\":1.0000000,\"lon\":2.0000000,\"mode\":3}";
	cr_assert_eq(km_posrec_from_json(ok, strlen(ok), &p), 0);
	cr_assert_eq(km_posrec_from_json(ok, strlen(ok) - 1, &p), -EINVAL);
}

/* A payload longer than any canonical record is refused before its length is
 * used at all: the old code formed buf + len first, past the end of a 321-byte
 * array. Caught by clang's UBSan (-fsanitize=array-bounds: the fuzz build, or a
 * clang build-asan), not by gcc's; tests/fuzz/corpus/posrec_json/oversize-322. */
Test(posrec, from_json_refuses_oversize_before_using_its_length)
{
	static char big[1024];
	struct km_pos p;

	memset(big, ' ', sizeof(big));
	memcpy(big, UAV_JSON, strlen(UAV_JSON));
	cr_assert_eq(km_posrec_from_json(big, 321, &p), -EINVAL);
	cr_assert_eq(km_posrec_from_json(big, 322, &p), -EINVAL);
	cr_assert_eq(km_posrec_from_json(big, sizeof(big), &p), -EINVAL);
	cr_assert_eq(km_posrec_from_json(big, SIZE_MAX, &p), -EINVAL);
}

Test(posrec, json_batch_exact_bytes_and_what_the_center_publishes)
{
	static const uint8_t want[] = {
		0x01, 0xac, 0xea, 0xd5, 0xb5, 0x83, 0x01,  /* version, base tick 17638800022 */
		0x01, 0x26, 'u', 'a', 'v', '-', '0', '7',  /* one unit: drone, 6 bytes */
		0x01,                                      /* one record, absolute: */
		0x80, 0x5c, 0x2c, 0x29, 0xb7, 0x02, 0x19, 0xe1,
		0xaa, 0x80, 0x00, 0x00, 0x1f, 0x0a, 0xf4, 0x71,
	};
	uint8_t b[64];
	char js[512];

	int n = km_posrec_json_batch(UAV_JSON, strlen(UAV_JSON), b, sizeof(b));
	cr_assert_eq(n, (int)sizeof(want));
	cr_assert_arr_eq(b, want, sizeof(want));
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n, js, sizeof(js)), (int)strlen(UAV_QUANT));
	cr_assert_str_eq(js, UAV_QUANT);
	/* The quantised JSON is canonical too, and a fixed point. */
	cr_assert_eq(km_posrec_json_batch(UAV_QUANT, strlen(UAV_QUANT), b, sizeof(b)), n);
	cr_assert_arr_eq(b, want, sizeof(want));
	cr_assert_eq(km_posrec_json_batch(UAV_JSON, strlen(UAV_JSON), b, 31), -ENOSPC);
}

Test(posrec, json_batch_refuses_what_the_codec_would_clamp)
{
	struct km_pos p = mk("uav-07", 30.5, 109.4, INT64_C(1763880002151));
	uint8_t b[64];
	char js[512];

	p.alt = 15882.4;   /* the codec's top: kept */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	cr_assert_gt(km_posrec_json_batch(js, strlen(js), b, sizeof(b)), 0);
	p.alt = 20000.0;   /* a balloon: clamped, so it travels as JSON */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	cr_assert_eq(km_posrec_json_batch(js, strlen(js), b, sizeof(b)), -ERANGE);
	p.alt = NAN;
	p.speed = 250.0;   /* a jet: above 204.6 m/s */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	cr_assert_eq(km_posrec_json_batch(js, strlen(js), b, sizeof(b)), -ERANGE);
	p.speed = NAN;
	p.time_ms = 20;    /* rounds to the epoch tick, which reads back unknown */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	cr_assert_eq(km_posrec_json_batch(js, strlen(js), b, sizeof(b)), -ERANGE);
	p.time_ms = 0;
	p.heading = 359.7; /* 0 degrees: the same direction, kept */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	int n = km_posrec_json_batch(js, strlen(js), b, sizeof(b));
	cr_assert_gt(n, 0);
	cr_assert_gt(km_posrec_batch_json(b, (size_t)n, js, sizeof(js)), 0);
	cr_assert_str_eq(js, "{\"unit\":\"uav-07\",\"lat\":30.5000000,\"lon\":109.4000000,\"heading\":0.0,\"mode\":3}");
	p.fix_quality = 16; /* beyond the codec's 4 bits */
	cr_assert_gt(km_posrec_to_json(&p, js, sizeof(js)), 0);
	cr_assert_eq(km_posrec_json_batch(js, strlen(js), b, sizeof(b)), -EINVAL);
}

Test(posrec, batch_json_refuses_all_but_one_good_position)
{
	struct km_pos two[2] = { mk("a", 1, 2, 1000), mk("b", 3, 4, 2000) };
	uint8_t b[64];
	char js[512];
	int n = km_posrec_encode(two, 2, b, sizeof(b));

	cr_assert_gt(n, 0);
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n, js, sizeof(js)), -E2BIG);
	n = km_posrec_encode(two, 0, b, sizeof(b));
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n, js, sizeof(js)), -EBADMSG);
	n = km_posrec_encode(two, 1, b, sizeof(b));
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n - 1, js, sizeof(js)), -EBADMSG);
	cr_assert_eq(km_posrec_batch_json((const uint8_t *)"\x01\xff", 2, js, sizeof(js)), -EBADMSG);
	b[0] = 2;
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n, js, sizeof(js)), -ENOTSUP);
	b[0] = 1;
	cr_assert_eq(km_posrec_batch_json(b, (size_t)n, js, 10), -ENOSPC);
}

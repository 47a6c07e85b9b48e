/* SPDX-License-Identifier: MIT */
/* Benchmark: position payloads parsed per second (JSON, NMEA from real captures) and bytes per position, JSON vs compact. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridges/position.h"
#include "tests/common/nmea_epochs.h"
#include "gateway/posrec.h"

#ifndef KM_SOURCE_ROOT
#define KM_SOURCE_ROOT "."
#endif

#define MAX_EPOCHS 512
#define MIN_SECONDS 1.0

/* One payload per epoch of a capture, as a terminal would publish it. */
struct payloads {
	char text[MAX_EPOCHS][1024];
	size_t len[MAX_EPOCHS];
	size_t n;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void add_payload(void *ud, const char *s, size_t len)
{
	struct payloads *pl = ud;
	if (pl->n < MAX_EPOCHS && len < sizeof(pl->text[0])) {
		pl->len[pl->n] = len;
		memcpy(pl->text[pl->n], s, len + 1);
		pl->n++;
	}
}

static int load_epochs(const char *file, struct payloads *pl)
{
	return km_test_nmea_epochs(file, add_payload, pl);
}

/* Parses every payload over and over for at least MIN_SECONDS; returns payloads/s. */
static double parse_rate(const struct payloads *pl, size_t *ok)
{
	size_t done = 0;
	double t0 = now_s(), t;

	*ok = 0;
	do {
		for (size_t i = 0; i < pl->n; i++) {
			struct km_pos p;

			if (km_position_parse("unit-1", pl->text[i], pl->len[i],
					      INT64_C(1785909154000), &p) == 0 && done < pl->n)
				(*ok)++;
			done++;
		}
		t = now_s() - t0;
	} while (t < MIN_SECONDS);
	return (double)done / t;
}

int main(void)
{
	static struct payloads nmea, json;
	static struct km_pos pos[MAX_EPOCHS];
	static uint8_t buf[65536];
	const char *files[] = { "beidou-bd.log", "quectel-l76k-nmea.log", "ublox-zed-f9p-nmea.log" };
	size_t npos = 0, ok;
	double rate;

	for (int i = 0; i < 3; i++)
		if (load_epochs(files[i], &nmea) < 0)
			return 1;
	/* The same positions as JSON payloads, as a JSON terminal would send them. */
	for (size_t i = 0; i < nmea.n; i++) {
		char js[512], alt[32] = "null";

		if (km_position_parse("unit-1", nmea.text[i], nmea.len[i], INT64_C(1785909154000),
				      &pos[npos]) != 0)
			continue;
		if (pos[npos].alt == pos[npos].alt)
			snprintf(alt, sizeof(alt), "%.1f", pos[npos].alt);
		snprintf(js, sizeof(js),
			 "{\"unit\":\"unit-1\",\"lat\":%.7f,\"lon\":%.7f,\"alt\":%s,"
			 "\"ts\":%.3f,\"speed\":%.2f,\"heading\":%.1f,\"fix\":%d,"
			 "\"battery\":80,\"kind\":\"handheld\"}",
			 pos[npos].lat, pos[npos].lon, alt, (double)pos[npos].time_ms / 1e3,
			 pos[npos].speed == pos[npos].speed ? pos[npos].speed : 0.0,
			 pos[npos].heading == pos[npos].heading ? pos[npos].heading : 0.0,
			 pos[npos].mode);
		add_payload(&json, js, strlen(js));
		npos++;
	}
	rate = parse_rate(&nmea, &ok);
	printf("NMEA: %.0f payloads/s (%zu epoch payloads from 3 real captures, %zu with a fix)\n",
	       rate, nmea.n, ok);
	rate = parse_rate(&json, &ok);
	printf("JSON: %.0f payloads/s (%zu payloads, %zu accepted)\n", rate, json.n, ok);

	/* Rebase the captures onto one clock: a batch spans at most +-58 h. */
	for (size_t i = 1; i < npos; i++)
		pos[i].time_ms = pos[0].time_ms + (int64_t)i * 1000;
	printf("bytes per position (%zu positions of one unit, rebased to 1 s apart):\n", npos);
	for (size_t per = 1; per <= 100; per *= 10) {
		size_t compact = 0, js = 0;

		for (size_t off = 0; off < npos; off += per) {
			size_t n = npos - off < per ? npos - off : per;
			int len = km_posrec_encode(pos + off, n, buf, sizeof(buf));

			compact += len > 0 ? (size_t)len : 0;
			for (size_t i = off; i < off + n; i++) {
				char out[512];

				js += (size_t)km_posrec_to_json(&pos[i], out, sizeof(out));
			}
		}
		printf("  %3zu per batch: JSON %6.1f  compact %6.2f\n", per,
		       (double)js / (double)npos, (double)compact / (double)npos);
	}
	return 0;
}

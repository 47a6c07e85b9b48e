/* SPDX-License-Identifier: MIT */
/* Benchmark: position payloads parsed per second (JSON, NMEA from real captures), bytes per position, JSON vs compact, and positions per narrow-link message. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridges/position.h"
#include "tests/common/nmea_epochs.h"
#include "gateway/frame.h"
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

/* The wire carries the node name's 32-bit FNV-1a hash (gateway/plugin.c): 5 bytes. */
#define ORIGIN 0xa4d2c6f1u
#define FIRST_ID 1795931460729039ULL /* spool ids start from the clock in microseconds */

/* One narrow-link message of at most mtu bytes: a whole version 2 frame. Returns its
 * length, or 0 when rec does not go whole. */
static int frame_whole(struct km_frame_tx *tx, struct km_frame_msg *m, size_t mtu, uint8_t *out)
{
	struct km_frame_put put;
	int n = km_frame_tx_encode(tx, m, 1, mtu, NULL, m->created_ms, out, &put);
	if (n <= 0 || put.n_full != 1) {
		km_frame_tx_reset(tx);
		return 0;
	}
	struct km_frame_ack a = { .origin = ORIGIN, .cum = put.seq };
	km_frame_tx_ack(tx, &a, NULL, NULL, NULL);
	return n;
}

/*
 * Positions per message of mtu bytes (BeiDou 77 and 1750, Iridium 340): the longest
 * compact batch of consecutive positions of one unit that goes whole in one frame
 * (version 2: header, 5-byte origin, record, CRC), over the whole capture.
 */
static double per_message_compact(const struct km_pos *pos, size_t npos, size_t mtu, bool *all)
{
	struct km_frame_tx tx;
	struct km_frame_tx_cfg c = { .origin = ORIGIN, .first_seq = 1, .mtu_max = mtu, .version = 2 };
	static uint8_t batch[4096], out[4096];
	size_t frames = 0;
	uint64_t id = FIRST_ID;

	if (km_frame_tx_init(&tx, &c))
		return 0;
	for (size_t off = 0; off < npos; frames++) {
		size_t used = 0;
		int len = 0, n = 0;
		for (size_t cap = mtu; cap > 0 && !n; cap--) {
			if ((len = km_posrec_encode_fit(pos + off, npos - off, batch, cap, &used)) <= 0)
				break;
			struct km_frame_msg m = { .id = id, .topic = "pos/unit-1", .payload = batch,
						  .len = (size_t)len, .created_ms = pos[off].time_ms,
						  .cls = 2, .qos = 1, .enc = KM_FRAME_ENC_POSBATCH };
			n = frame_whole(&tx, &m, mtu, out);
		}
		if (!n) {
			km_frame_tx_deinit(&tx);
			return 0;
		}
		off += used;
		id++;
	}
	km_frame_tx_deinit(&tx);
	*all = frames == 1;
	return (double)npos / (double)frames;
}

/* What the daemon sends today: each position as its canonical JSON, one message each,
 * packed by the frame encoder (version 2: against the unit's previous position). */
static double per_message_json(const struct km_pos *pos, size_t npos, size_t mtu)
{
	struct km_frame_tx tx;
	struct km_frame_tx_cfg c = { .origin = ORIGIN, .first_seq = 1, .mtu_max = mtu, .version = 2 };
	static char js[MAX_EPOCHS][512];
	static struct km_frame_msg m[MAX_EPOCHS];
	static uint8_t out[4096];
	size_t frames = 0, head = 0;

	if (km_frame_tx_init(&tx, &c))
		return 0;
	for (size_t i = 0; i < npos; i++) {
		int n = km_posrec_to_json(&pos[i], js[i], sizeof(js[i]));
		m[i] = (struct km_frame_msg){ .id = FIRST_ID + i, .topic = "pos/unit-1",
					      .payload = (const uint8_t *)js[i], .len = n > 0 ? (size_t)n : 0,
					      .created_ms = pos[i].time_ms, .cls = 2, .qos = 1 };
	}
	while (head < npos) {
		struct km_frame_put put;
		int n = km_frame_tx_encode(&tx, m + head, npos - head, mtu, NULL, 0, out, &put);
		if (n <= 0)
			break;
		struct km_frame_ack a = { .origin = ORIGIN, .cum = put.seq };
		km_frame_tx_ack(&tx, &a, NULL, NULL, NULL);
		head += put.n_full;
		if (head < npos)
			m[head].frag_off = put.next_off;
		frames++;
	}
	km_frame_tx_deinit(&tx);
	return frames ? (double)npos / (double)frames : 0;
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
	printf("positions per narrow-link message (frame version 2 with its 5-byte origin, whole messages):\n");
	static const size_t mtus[] = { 77, 340, 1750 };
	for (size_t k = 0; k < 3; k++) {
		bool all = false;
		double c = per_message_compact(pos, npos, mtus[k], &all);
		printf("  %4zu B: compact batches %s%6.1f%s   position JSON as sent today %5.2f\n", mtus[k],
		       all ? ">=" : "  ", c, all ? " (the whole capture)" : "", per_message_json(pos, npos, mtus[k]));
	}
	return 0;
}

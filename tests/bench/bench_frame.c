/* SPDX-License-Identifier: MIT */
/* Frame codec benchmark: goodput of 64-byte sensor readings at the real link MTUs, wire versions 1 and 2, encode/decode rates, and bytes per position as JSON and as the compact codec. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <math.h>

#include "gateway/frame.h"
#include "gateway/posrec.h"

#define NOW_MS 1763880000123LL
#define NMSG 20000

static const char *const topics[] = {
	"kuimen/north/gas/ch4", "kuimen/north/water/level", "kuimen/north/slope/tilt",
	"kuimen/north/weather/wind", "kuimen/north/status/link",
};
static const struct km_frame_dict dict = { topics, 5 };

/* What the daemon puts on the wire (gateway/plugin.c): the node name's FNV-1a hash as
 * origin (a 5-byte varint), spool ids that start from the clock in microseconds. */
#define ORIGIN 0xa4d2c6f1u
#define FIRST_ID 1795931460729039ULL
#define UNITS 8

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x2545f4914f6cdd1dULL;
static int walk(int v, int step, int lo, int hi)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	v += (int)(rng % (unsigned)(2 * step + 1)) - step;
	return v < lo ? lo : v > hi ? hi : v;
}

/* Reading i: a gas detector's compact JSON, exactly 64 bytes, values drifting from
 * one reading of a unit to the next (as tests/bench/bench_narrow.c publishes). */
static void payload(char *p, unsigned i)
{
	static int ch4[UNITS], co[UNITS], h2s[UNITS], o2[UNITS];
	static unsigned t[UNITS];
	unsigned u = i % UNITS;
	if (i < UNITS)
		ch4[u] = 20 * (int)u, co[u] = 20 + (int)u, h2s[u] = 5, o2[u] = 207, t[u] = 1763880000u + 3 * u;
	ch4[u] = walk(ch4[u], 7, 0, 299);
	co[u] = walk(co[u], 3, 10, 99);
	h2s[u] = walk(h2s[u], 2, 0, 99);
	o2[u] = walk(o2[u], 1, 195, 209);
	t[u] += 10;
	snprintf(p, 65, "{\"n\":%04u,\"ch4\":%d.%02d,\"co\":%d,\"h2s\":%d.%d,\"o2\":%d.%d,\"t\":%u}", i % 10000,
		 ch4[u] / 100, ch4[u] % 100, co[u], h2s[u] / 10, h2s[u] % 10, o2[u] / 10, o2[u] % 10, t[u]);
}

struct counter {
	unsigned long msgs;
	unsigned long bytes;
};

static int count_fn(void *ctx, const struct km_frame_msg *m)
{
	struct counter *c = ctx;
	c->msgs++;
	c->bytes += m->len;
	return 0;
}

struct run {
	unsigned long frames, frame_bytes, payload_bytes, msgs;
	double enc_s, dec_s;
};

/* Encode NMSG messages at mtu (acking each frame at once so the window never
 * stalls), keep the frames, then decode them all. */
static int run(size_t mtu, bool raw, bool literal, bool noise, unsigned version, struct run *r)
{
	/* One packed, pre-touched arena: page faults must not count as encoding. */
	static uint8_t arena[NMSG * 2 * 80 + KM_FRAME_MTU_MAX];
	static size_t foff[NMSG * 2 + 1];
	uint8_t out[KM_FRAME_MTU_MAX];
	static char pay[NMSG][65];
	static char tps[UNITS][40];
	static struct km_frame_msg m[NMSG];
	struct km_frame_tx tx;
	struct km_frame_tx_cfg c = { .origin = ORIGIN, .first_seq = 1, .mtu_max = mtu, .dict = &dict,
				     .version = version };
	struct km_frame_rx rx;
	struct km_frame_rx_cfg rc = { .dict = &dict };
	struct counter cnt = { 0 };

	memset(r, 0, sizeof(*r));
	if (km_frame_tx_init(&tx, &c) || km_frame_rx_init(&rx, &rc))
		return -ENOMEM;
	memset(arena, 0, sizeof(arena));
	for (unsigned u = 0; u < UNITS; u++)
		snprintf(tps[u], sizeof(tps[u]), "sensors/gas-%02u/air", u + 1);
	for (unsigned i = 0; i < NMSG; i++) {
		payload(pay[i], i);
		for (unsigned b = 0; noise && b < 64; b++) {
			rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
			pay[i][b] = (char)(rng >> 24);   /* incompressible: framing cost alone */
		}
		m[i] = (struct km_frame_msg){ .id = FIRST_ID + i, .topic = literal ? tps[i % UNITS] : topics[0],
			.payload = (const uint8_t *)pay[i], .len = 64,
			.created_ms = NOW_MS + i * 1250LL, .cls = 4, .qos = 1,
			.enc = raw ? KM_FRAME_ENC_RAW : KM_FRAME_ENC_AUTO };
		r->payload_bytes += 64;
	}
	size_t head = 0;
	double t0 = now_s();
	while (head < NMSG) {
		struct km_frame_put put;
		int n = km_frame_tx_encode(&tx, m + head, NMSG - head, mtu, NULL, NOW_MS,
					   out, &put);
		if (n <= 0)
			return n;
		struct km_frame_ack a = { .origin = ORIGIN, .cum = put.seq };
		km_frame_tx_ack(&tx, &a, NULL, NULL, NULL);
		if (foff[r->frames] + (size_t)n > sizeof(arena))
			return -ENOSPC;
		memcpy(arena + foff[r->frames], out, (size_t)n);
		foff[r->frames + 1] = foff[r->frames] + (size_t)n;
		r->frames++;
		r->frame_bytes += (unsigned long)n;
		head += put.n_full;
		if (head < NMSG)
			m[head].frag_off = put.next_off;
	}
	r->enc_s = now_s() - t0;
	t0 = now_s();
	for (unsigned long i = 0; i < r->frames; i++)
		km_frame_rx_input(&rx, arena + foff[i], foff[i + 1] - foff[i], NOW_MS,
				  count_fn, &cnt, NULL);
	r->dec_s = now_s() - t0;
	r->msgs = cnt.msgs;
	km_frame_tx_deinit(&tx);
	km_frame_rx_deinit(&rx);
	return cnt.msgs == NMSG && cnt.bytes == NMSG * 64UL ? 0 : -EIO;
}

/* Position i of a drone fleet, as the position bridge publishes it: canonical JSON
 * of UNITS drones flying at 8 to 15 m/s, one fix each every 2 s (time with ms, as
 * terminals stamp it), 7-decimal coordinates that move in every digit past the
 * fourth, altitude, speed, heading and battery drifting. */
static size_t position(char *p, unsigned i)
{
	static double lat[UNITS], lon[UNITS], alt[UNITS], hdg[UNITS], bat[UNITS];
	unsigned u = i % UNITS;
	struct km_pos q;
	if (i < UNITS)
		lat[u] = 30.80 + 0.013 * u, lon[u] = 108.40 + 0.011 * u, alt[u] = 300 + 20 * u,
		hdg[u] = 45.0 * u, bat[u] = 99.0 - u;
	double v = 8.0 + walk(0, 35, 0, 70) / 10.0;
	hdg[u] = fmod(hdg[u] + walk(0, 50, -50, 50) / 10.0 + 360.0, 360.0);
	lat[u] += 2 * v * cos(hdg[u] * M_PI / 180) / 111320.0;
	lon[u] += 2 * v * sin(hdg[u] * M_PI / 180) / 95700.0;
	alt[u] += walk(0, 15, -15, 15) / 10.0;
	bat[u] -= 0.02;
	km_posrec_init(&q);
	snprintf(q.unit, sizeof(q.unit), "uav-%02u", u + 1);
	strcpy(q.kind, "drone");
	q.lat = lat[u], q.lon = lon[u], q.alt = alt[u], q.speed = v, q.heading = hdg[u];
	q.battery = bat[u], q.mode = 3, q.fix_quality = 1;
	q.time_ms = NOW_MS + (int64_t)(i / UNITS) * 2000 + 250 * u + walk(0, 40, 0, 80);
	return (size_t)km_posrec_to_json(&q, p, 300);
}

#define NPOS 8000

/* Send NPOS positions at mtu over version 2 (literal topics pos/uav-NN, as the daemon
 * frames them), as JSON or with pos_batch; decode them at a pos_json receiver.
 * r->payload_bytes says how many went as a batch. */
static int run_pos(size_t mtu, bool batch, struct run *r, unsigned long *json_bytes)
{
	static uint8_t out[KM_FRAME_MTU_MAX];
	static char pay[NPOS][300];
	static char tps[UNITS][16];
	static struct km_frame_msg m[NPOS];
	struct km_frame_tx tx;
	struct km_frame_tx_cfg c = { .origin = ORIGIN, .first_seq = 1, .mtu_max = mtu, .version = 2,
				     .pos_batch = batch };
	struct km_frame_rx rx;
	struct km_frame_rx_cfg rc = { .pos_json = true };
	struct counter cnt = { 0 };

	memset(r, 0, sizeof(*r));
	rng = 0x2545f4914f6cdd1dULL;
	if (km_frame_tx_init(&tx, &c) || km_frame_rx_init(&rx, &rc))
		return -ENOMEM;
	*json_bytes = 0;
	for (unsigned u = 0; u < UNITS; u++)
		snprintf(tps[u], sizeof(tps[u]), "pos/uav-%02u", u + 1);
	for (unsigned i = 0; i < NPOS; i++) {
		size_t len = position(pay[i], i);
		m[i] = (struct km_frame_msg){ .id = FIRST_ID + i * 1000, .topic = tps[i % UNITS],
			.payload = (const uint8_t *)pay[i], .len = len, .created_ms = NOW_MS + i * 250LL,
			.cls = 2, .qos = 1 };
		*json_bytes += len;
	}
	size_t head = 0;
	double t0 = now_s();
	while (head < NPOS) {
		struct km_frame_put put;
		int n = km_frame_tx_encode(&tx, m + head, NPOS - head, mtu, NULL, NOW_MS, out, &put);
		if (n <= 0)
			return n;
		struct km_frame_ack a = { .origin = ORIGIN, .cum = put.seq };
		km_frame_tx_ack(&tx, &a, NULL, NULL, NULL);
		if (km_frame_rx_input(&rx, out, (size_t)n, NOW_MS, count_fn, &cnt, NULL))
			return -EIO;
		r->frames++;
		r->frame_bytes += (unsigned long)n;
		head += put.n_full;
		if (head < NPOS)
			m[head].frag_off = put.next_off;
	}
	r->enc_s = now_s() - t0;
	r->msgs = cnt.msgs;
	r->payload_bytes = tx.pos_batches;
	km_frame_tx_deinit(&tx);
	km_frame_rx_deinit(&rx);
	return cnt.msgs == NPOS && rx.bad_posbatch == 0 ? 0 : -EIO;
}

int main(void)
{
	static const size_t mtus[] = { 77, 340, 1750 };
	static const struct { const char *name; bool raw, literal, noise; unsigned version; } cases[] = {
		{ "v1 literal topics, raw", true, true, false, 1 },
		{ "v1 literal topics, compact+deflate", false, true, false, 1 },
		{ "v1 dictionary topic, compact+deflate", false, false, false, 1 },
		{ "v2 literal topics, slots", false, true, false, 2 },
		{ "v2 slots, 64 random bytes (no gain)", false, true, true, 2 },
	};

	printf("# %d readings of 64-byte JSON from %d units (one topic each), 5-byte origin, microsecond ids;\n"
	       "# goodput = payload bytes / frame bytes (the share of the link's raw capacity when it never idles\n"
	       "# and loses nothing; tests/bench/bench_narrow measures it on a sim link)\n", NMSG, UNITS);
	printf("%-38s %5s %8s %10s %9s %12s %12s\n", "case", "mtu", "frames", "B/frame",
	       "goodput", "enc msg/s", "dec msg/s");
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (size_t k = 0; k < 3; k++) {
			struct run r;
			int rc = run(mtus[k], cases[c].raw, cases[c].literal, cases[c].noise, cases[c].version, &r);
			if (rc) {
				printf("%-38s %5zu error %d\n", cases[c].name, mtus[k], rc);
				continue;
			}
			printf("%-38s %5zu %8lu %10.1f %8.1f%% %12.0f %12.0f\n", cases[c].name,
			       mtus[k], r.frames, (double)r.frame_bytes / (double)r.frames,
			       100.0 * (double)r.payload_bytes / (double)r.frame_bytes,
			       NMSG / r.enc_s, NMSG / r.dec_s);
		}
	}

	printf("\n# %d positions of %d drones (canonical JSON as the position bridge writes it, see\n"
	       "# position()), wire version 2, literal topics pos/uav-NN, 5-byte origin, microsecond\n"
	       "# ids, every frame acked at once; B/position = frame bytes / positions\n", NPOS, UNITS);
	printf("%-38s %5s %8s %12s %12s %9s\n", "case", "mtu", "frames", "B/position", "positions/fr",
	       "as batch");
	for (int b = 0; b < 2; b++) {
		const char *name = b ? "v2 positions, compact codec" : "v2 positions, JSON (slots)";
		for (size_t k = 0; k < 3; k++) {
			struct run r;
			unsigned long jb;
			int rc = run_pos(mtus[k], b, &r, &jb);
			if (rc) {
				printf("%-38s %5zu error %d\n", name, mtus[k], rc);
				continue;
			}
			if (k == 0 && !b)
				printf("# JSON payload: %.1f B a position\n", (double)jb / NPOS);
			printf("%-38s %5zu %8lu %12.1f %12.2f %8.0f%%\n", name, mtus[k], r.frames,
			       (double)r.frame_bytes / NPOS, (double)NPOS / (double)r.frames,
			       100.0 * (double)r.payload_bytes / NPOS);
		}
	}
	return 0;
}

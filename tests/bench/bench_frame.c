/* SPDX-License-Identifier: MIT */
/* Frame codec benchmark: goodput of 64-byte messages at the real link MTUs, and encode/decode rates. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/frame.h"

#define NOW_MS 1763880000123LL
#define NMSG 20000

static const char *const topics[] = {
	"kuimen/north/gas/ch4", "kuimen/north/water/level", "kuimen/north/slope/tilt",
	"kuimen/north/weather/wind", "kuimen/north/status/link",
};
static const struct km_frame_dict dict = { topics, 5 };

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A realistic 64-byte compact JSON reading that changes from message to
 * message (already compact, so AUTO can only win by deflate). */
static void payload(char *p, unsigned i)
{
	static const char fill[] = "ok-sensor-north-07-battery-good-0123456789";
	int n = snprintf(p, 65, "{\"ch4\":%u.%02u,\"co\":%u,\"t\":%u,\"st\":\"",
			 i % 5, i % 100, i % 40, 1763880000u + i);
	size_t pad = 64 - 2 - (size_t)n;   /* closing quote and brace */
	memcpy(p + n, fill, pad);
	memcpy(p + n + pad, "\"}", 3);
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
static int run(size_t mtu, bool raw, const char *topic, struct run *r)
{
	/* One packed, pre-touched arena: page faults must not count as encoding. */
	static uint8_t arena[NMSG * 2 * 80 + KM_FRAME_MTU_MAX];
	static size_t foff[NMSG * 2 + 1];
	uint8_t out[KM_FRAME_MTU_MAX];
	static char pay[NMSG][65];
	static struct km_frame_msg m[NMSG];
	struct km_frame_tx tx;
	struct km_frame_tx_cfg c = { .origin = 3, .first_seq = 1, .mtu_max = mtu, .dict = &dict };
	struct km_frame_rx rx;
	struct km_frame_rx_cfg rc = { .dict = &dict };
	struct counter cnt = { 0 };

	memset(r, 0, sizeof(*r));
	if (km_frame_tx_init(&tx, &c) || km_frame_rx_init(&rx, &rc))
		return -ENOMEM;
	memset(arena, 0, sizeof(arena));
	for (unsigned i = 0; i < NMSG; i++) {
		payload(pay[i], i);
		m[i] = (struct km_frame_msg){ .id = 1000000 + i, .topic = topic,
			.payload = (const uint8_t *)pay[i], .len = 64,
			.created_ms = NOW_MS + i * 1000LL, .cls = 4, .qos = 1,
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
		struct km_frame_ack a = { .origin = 3, .cum = put.seq };
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

int main(void)
{
	static const size_t mtus[] = { 77, 340, 1750 };
	static const struct { const char *name; const char *topic; bool raw; } cases[] = {
		{ "dict topic, raw", "kuimen/north/gas/ch4", true },
		{ "dict topic, auto (compact+deflate)", "kuimen/north/gas/ch4", false },
		{ "literal topic, raw", "kuimen/north/gas/ch4-sensor-02", true },
	};

	printf("# 64-byte JSON messages, %d per run; goodput = payload bytes / frame bytes\n", NMSG);
	printf("%-38s %5s %8s %10s %9s %12s %12s\n", "case", "mtu", "frames", "B/frame",
	       "goodput", "enc msg/s", "dec msg/s");
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (size_t k = 0; k < 3; k++) {
			struct run r;
			int rc = run(mtus[k], cases[c].raw, cases[c].topic, &r);
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
	return 0;
}

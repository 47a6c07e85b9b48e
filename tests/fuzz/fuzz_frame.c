/* SPDX-License-Identifier: MIT */
/* Fuzz target: the narrow-link frame receiver, fed datagrams as a link plugin hands them over (gateway/plugin.c api_received). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "gateway/dict.h"
#include "gateway/frame.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: flags:u8, then datagrams, each len:u16 (big-endian) and len bytes (the last
 * one may be short). Flag bit 0 clear: each datagram's CRC is set right before it goes
 * in (the last 2 bytes, or 4 above KM_FRAME_CRC16_MAX), so that mutations reach the
 * parser instead of the CRC check; set: the bytes go in as they are.
 *
 * The receiver is a center's (gateway/plugin.c): rx with the seeds' dictionary and
 * pos_json, behind the dictionary fallback, its own sender holding frames to "north"
 * that north's acks release; each ack owed is taken and encoded as plugin.c does.
 */

#define MAX_DATAGRAM KM_FRAME_MTU_MAX

struct ctx {
	uint64_t delivered;
	uint8_t x;
};

static int deliver(void *ctx, const struct km_frame_msg *m)
{
	struct ctx *c = ctx;

	c->delivered++;
	c->x ^= fuzz_touch(m->payload, m->len);
	if (m->topic)
		c->x ^= fuzz_touch(m->topic, strlen(m->topic) + 1);
	/* A callback error must leave the frame undelivered: try it now and then. */
	return m->len == 13 ? -ENOSPC : 0;
}

static void on_done(void *ctx, uint64_t id)
{
	(void)ctx, (void)id;
}

static void reseal(uint8_t *f, size_t len)
{
	if (len < 3)
		return;
	if (len <= KM_FRAME_CRC16_MAX) {
		uint16_t c = km_frame_crc16(f, len - 2);
		f[len - 2] = (uint8_t)(c >> 8);
		f[len - 1] = (uint8_t)c;
	} else {
		uLong c = crc32(0L, f, (uInt)(len - 4));
		for (int i = 0; i < 4; i++)
			f[len - 4 + i] = (uint8_t)(c >> (24 - 8 * i));
	}
}

FUZZ_QUIET_INIT

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct km_frame_dict dict = { fuzz_dict_topics, FUZZ_DICT_N };
	struct km_dict kd = { .path = "fuzz.dict", .topics = (char **)fuzz_dict_topics, .n = FUZZ_DICT_N,
			      .frame = dict };
	struct ctx c = { 0 };
	struct km_dict_fallback fb = { .next = deliver, .ctx = &c, .link = "fuzz", .dict = &kd };
	struct km_frame_rx rx;
	struct km_frame_tx tx;
	struct km_frame_rx_cfg rcfg = { .dict = &dict, .pos_json = true };
	struct km_frame_tx_cfg tcfg = { .origin = km_frame_node_id(FUZZ_RECEIVER), .first_seq = 100,
					.mtu_max = KM_FRAME_MTU_MAX, .dict = &dict, .version = 2,
					.ack_room = true };
	uint8_t *buf = malloc(MAX_DATAGRAM), out[KM_FRAME_ACK_MAX];

	if (!buf || size < 1 || km_frame_rx_init(&rx, &rcfg) < 0) {
		free(buf);
		return 0;
	}
	if (km_frame_tx_init(&tx, &tcfg) < 0) {
		km_frame_rx_deinit(&rx);
		free(buf);
		return 0;
	}
	/* Three frames in flight to north, for its acks to release. */
	for (uint64_t id = 1; id <= 3; id++) {
		struct km_frame_msg m = { .id = id, .topic = "cmd/siren/zone3", .payload = (const uint8_t *)"{\"on\":1}",
					  .len = 8, .created_ms = FUZZ_NOW_MS, .cls = 1, .qos = 1 };
		struct km_frame_put put;
		km_frame_tx_encode(&tx, &m, 1, 77, NULL, FUZZ_NOW_MS, buf, &put);
	}
	bool raw = data[0] & 1;
	size_t i = 1;
	while (i + 2 <= size) {
		size_t len = (size_t)data[i] << 8 | data[i + 1];
		i += 2;
		if (len > size - i)
			len = size - i;
		if (len > MAX_DATAGRAM)
			len = MAX_DATAGRAM;
		/* A datagram of exactly its length: ASan sees a read past its end. */
		uint8_t *d = malloc(len ? len : 1);
		if (!d)
			break;
		memcpy(d, data + i, len);
		i += len;
		if (!raw)
			reseal(d, len);
		struct km_frame_rx_info info = { 0 };
		int rc = km_frame_rx_input(&rx, d, len, FUZZ_NOW_MS, km_dict_fallback_deliver, &fb, &info);
		free(d);
		if (rc < 0)
			continue;
		if (info.has_ack && info.ack.origin == tcfg.origin)
			km_frame_tx_ack(&tx, &info.ack, on_done, on_done, NULL);
		if (info.ack_due) {
			struct km_frame_ack a;
			if (km_frame_rx_ack(&rx, info.origin, &a) == 0)
				km_frame_ack_encode(&a, tcfg.origin, out, sizeof(out));
		}
		/* What is due again after the ack, as the link's timer asks. */
		km_frame_tx_due(&tx, FUZZ_NOW_MS + 10000, 3000, buf, MAX_DATAGRAM);
	}
	km_frame_tx_deinit(&tx);
	km_frame_rx_deinit(&rx);
	free(buf);
	return 0;
}

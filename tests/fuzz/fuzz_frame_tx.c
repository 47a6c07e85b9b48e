/* SPDX-License-Identifier: MIT */
/* Fuzz target: a terminal's payload through a base's frame sender (JSON compaction, deflate, slots, position batches, fragments) and a center's receiver: what arrives is what was sent. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/frame.h"
#include "gateway/posrec.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: topic:u8 (which of four topics), mtu:u8 (32 + 16 * mtu bytes, at most
 * KM_FRAME_MTU_MAX), then the payload, as a sensor published it on the base's broker
 * (outside bytes the sender parses: it compacts JSON and converts position JSON).
 * Three messages with that payload go down a version 2 link with pos_batch, frame by
 * frame, each frame into the receiver and its ack back. Each message must arrive
 * once, in order, on its topic, and as the payload, its compacted JSON, or (a
 * payload whose compacted JSON is canonical position JSON) that record quantised.
 */

#define N_MSGS 3

static const char *const topics[] = {
	"kuimen/north/gas/ch4",    /* in the dictionary */
	"kuimen/north/pos/uav-07", /* in the dictionary, a position */
	"kuimen/north/logs/pump-2",/* literal */
	"pos/h-3",                 /* literal */
};

struct want {
	const uint8_t *raw, *compact, *pos;
	size_t raw_len, compact_len, pos_len;
	const char *topic;
	uint64_t next_id;
	unsigned got;
};

static int deliver(void *ctx, const struct km_frame_msg *m)
{
	struct want *w = ctx;

	REQUIRE(m->id == w->next_id && m->topic && strcmp(m->topic, w->topic) == 0);
	bool same = (m->len == w->raw_len && (!m->len || memcmp(m->payload, w->raw, m->len) == 0)) ||
		    (w->compact && m->len == w->compact_len && memcmp(m->payload, w->compact, m->len) == 0) ||
		    (w->pos && m->len == w->pos_len && memcmp(m->payload, w->pos, m->len) == 0);
	REQUIRE(same && m->enc == KM_FRAME_ENC_RAW);
	w->next_id++;
	w->got++;
	return 0;
}

FUZZ_QUIET_INIT

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct km_frame_dict dict = { fuzz_dict_topics, FUZZ_DICT_N };
	struct km_frame_tx tx;
	struct km_frame_rx rx;
	struct km_frame_tx_cfg tc = { .origin = km_frame_node_id(FUZZ_SENDER), .first_seq = 65500,
				      .mtu_max = KM_FRAME_MTU_MAX, .dict = &dict, .version = 2,
				      .ack_room = true, .pos_batch = true };
	struct km_frame_rx_cfg rc = { .dict = &dict, .pos_json = true };
	struct want w = { .next_id = 1000 };
	struct km_frame_msg m[N_MSGS];
	uint8_t *payload, *compact = NULL, *frame = NULL, batch[64];
	char posjs[512];

	if (size < 2)
		return 0;
	size_t mtu = 32 + 16 * (size_t)data[1];
	if (mtu > KM_FRAME_MTU_MAX)
		mtu = KM_FRAME_MTU_MAX;
	size_t len = size - 2;
	/* The payload exactly: ASan sees a read past it. */
	if (!(payload = malloc(len ? len : 1)) || !(compact = malloc(len ? len : 1)) ||
	    !(frame = malloc(KM_FRAME_MTU_MAX))) {
		free(payload);
		free(compact);
		return 0;
	}
	memcpy(payload, data + 2, len);
	w.topic = topics[data[0] % 4];
	w.raw = payload, w.raw_len = len;
	int cl = km_frame_json_compact(payload, len, compact);
	if (cl >= 0)
		w.compact = compact, w.compact_len = (size_t)cl;
	/* A position (the payload compacted is canonical position JSON) goes as a
	 * batch when that is smaller; the center publishes the quantised record's JSON. */
	int bl = cl >= 0 ? km_posrec_json_batch(compact, (size_t)cl, batch, sizeof(batch)) : -EINVAL;
	if (bl > 0) {
		int jl = km_posrec_batch_json(batch, (size_t)bl, posjs, sizeof(posjs));
		REQUIRE(jl > 0);
		w.pos = (const uint8_t *)posjs, w.pos_len = (size_t)jl;
	}
	for (int i = 0; i < N_MSGS; i++)
		m[i] = (struct km_frame_msg){ .id = 1000 + (uint64_t)i, .topic = w.topic, .payload = payload,
					      .len = len, .created_ms = FUZZ_NOW_MS + i * 1000, .cls = 4,
					      .qos = 1 };
	if (km_frame_tx_init(&tx, &tc) < 0)
		goto out_free;
	if (km_frame_rx_init(&rx, &rc) < 0)
		goto out_tx;
	size_t at = 0;
	for (int frames = 0; at < N_MSGS && frames < 4096; frames++) {
		struct km_frame_put put;
		int n = km_frame_tx_encode(&tx, m + at, N_MSGS - at, mtu, NULL, FUZZ_NOW_MS, frame, &put);
		if (n == -EMSGSIZE)
			break; /* the topic cannot go in so small a frame */
		REQUIRE(n > 0 && (size_t)n <= mtu);
		struct km_frame_rx_info info;
		REQUIRE(km_frame_rx_input(&rx, frame, (size_t)n, FUZZ_NOW_MS, deliver, &w, &info) == 0);
		struct km_frame_ack a;
		REQUIRE(info.ack_due && km_frame_rx_ack(&rx, info.origin, &a) == 0);
		km_frame_tx_ack(&tx, &a, NULL, NULL, NULL);
		at += put.n_full;
		if (at < N_MSGS)
			m[at].frag_off = put.next_off;
	}
	if (at == N_MSGS)
		REQUIRE(w.got == N_MSGS && rx.bad_payload == 0 && rx.bad_posbatch == 0);
	km_frame_rx_deinit(&rx);
out_tx:
	km_frame_tx_deinit(&tx);
out_free:
	free(frame);
	free(compact);
	free(payload);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz target: the topic dictionary file (km_dict_parse, what km_dict_load runs on the file's bytes), and a frame that names its topics by index. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/dict.h"
#include "gateway/frame.h"
#include "tests/fuzz/fuzz.h"

FUZZ_QUIET_INIT

static int deliver(void *ctx, const struct km_frame_msg *m)
{
	const struct km_dict *d = ctx;

	/* Both ends have the same list: the topic comes back by its index. */
	REQUIRE(m->topic && m->topic_idx < d->n && strcmp(m->topic, d->topics[m->topic_idx]) == 0);
	return 0;
}

/* The dictionary at both ends of a frame: the last topic goes by index and back. */
static void round_trip(const struct km_dict *d)
{
	struct km_frame_tx tx;
	struct km_frame_rx rx;
	struct km_frame_tx_cfg tc = { .origin = 7, .first_seq = 1, .mtu_max = 77, .dict = &d->frame, .version = 2 };
	struct km_frame_rx_cfg rc = { .dict = &d->frame };
	struct km_frame_msg m = { .id = 1, .topic = d->topics[d->n - 1], .payload = (const uint8_t *)"1",
				  .len = 1, .created_ms = FUZZ_NOW_MS, .cls = 4, .qos = 1 };
	struct km_frame_put put;
	uint8_t f[77];

	if (km_frame_tx_init(&tx, &tc) < 0)
		return;
	if (km_frame_rx_init(&rx, &rc) == 0) {
		int n = km_frame_tx_encode(&tx, &m, 1, sizeof(f), NULL, FUZZ_NOW_MS, f, &put);
		if (n > 0)
			REQUIRE(km_frame_rx_input(&rx, f, (size_t)n, FUZZ_NOW_MS, deliver, (void *)d, NULL) == 0 &&
				rx.delivered == 1);
		km_frame_rx_deinit(&rx);
	}
	km_frame_tx_deinit(&tx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The file's bytes, exactly: no NUL after them. */
	char *text = malloc(size ? size : 1), err[256];
	struct km_dict d;

	if (!text)
		return 0;
	memcpy(text, data, size);
	err[0] = '\0';
	int rc = km_dict_parse(&d, "fuzz.dict", text, size, err, sizeof(err));
	free(text);
	if (rc < 0) {
		REQUIRE(memchr(err, '\0', sizeof(err)) != NULL);
		return 0;
	}
	REQUIRE(d.n >= 1 && d.n <= KM_DICT_MAX && d.frame.n == d.n);
	REQUIRE(d.fingerprint == km_dict_fingerprint((const char *const *)d.topics, d.n));
	for (size_t i = 0; i < d.n; i++)
		REQUIRE(*d.topics[i] && !strchr(d.topics[i], '\n') && strlen(d.topics[i]) <= KM_FRAME_TOPIC_MAX);
	round_trip(&d);
	km_dict_deinit(&d);
	return 0;
}

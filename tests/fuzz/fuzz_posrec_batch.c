/* SPDX-License-Identifier: MIT */
/* Fuzz target: the compact position batch decoder (km_posrec_decode, km_posrec_batch_json), as a center meets it in a frame. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/posrec.h"
#include "tests/fuzz/fuzz.h"

/* A frame holds at most KM_FRAME_MTU_MAX bytes; a record takes 2 at least. */
#define CAP 2048

FUZZ_QUIET_INIT

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size ? size : 1), *re = NULL;
	struct km_pos *pos = calloc(CAP, sizeof(*pos)), *back = calloc(CAP, sizeof(*back));
	char js[512], js2[512];
	size_t n = 0, m = 0;

	if (!in || !pos || !back)
		goto out;
	memcpy(in, data, size);
	(void)km_posrec_batch_json(in, size, js, sizeof(js));
	if (km_posrec_decode(in, size, pos, CAP, &n) < 0)
		goto out;
	/* Decoded records are quantised already: when the encoder takes them again, they
	 * decode to themselves. */
	size_t cap = size + 16 * n + 64;
	if (!(re = malloc(cap)))
		goto out;
	int len = km_posrec_encode(pos, n, re, cap);
	if (len < 0)
		goto out;
	REQUIRE(km_posrec_decode(re, (size_t)len, back, CAP, &m) == 0 && m == n);
	for (size_t i = 0; i < n; i++) {
		int a = km_posrec_to_json(&pos[i], js, sizeof(js));
		int b = km_posrec_to_json(&back[i], js2, sizeof(js2));
		REQUIRE(a == b && (a < 0 || memcmp(js, js2, (size_t)a) == 0));
	}
out:
	free(re);
	free(back);
	free(pos);
	free(in);
	return 0;
}

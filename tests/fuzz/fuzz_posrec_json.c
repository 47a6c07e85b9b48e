/* SPDX-License-Identifier: MIT */
/* Fuzz target: canonical position JSON (km_posrec_from_json) and its narrow-link form (km_posrec_json_batch, km_posrec_batch_json). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/posrec.h"
#include "tests/fuzz/fuzz.h"

/* The contracts of gateway/posrec.h, checked on every input they apply to: a crash
 * when one breaks. */
FUZZ_QUIET_INIT

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Exactly size bytes (a payload is not NUL-terminated): ASan sees a read past it. */
	uint8_t *js = malloc(size ? size : 1), batch[64];
	char again[512], want[512], got[512];
	struct km_pos p, q;

	if (!js)
		return 0;
	memcpy(js, data, size);
	if (km_posrec_from_json(js, size, &p) == 0) {
		/* Canonical: what we would write, byte for byte. */
		int n = km_posrec_to_json(&p, again, sizeof(again));
		REQUIRE(n >= 0 && (size_t)n == size && memcmp(again, js, size) == 0);
	}
	int n = km_posrec_json_batch(js, size, batch, sizeof(batch));
	if (n > 0) {
		/* What the center publishes is the quantised record. */
		REQUIRE(km_posrec_from_json(js, size, &p) == 0 && km_posrec_quantise(&p, &q) == 0);
		int a = km_posrec_to_json(&q, want, sizeof(want));
		int b = km_posrec_batch_json(batch, (size_t)n, got, sizeof(got));
		REQUIRE(a > 0 && a == b && memcmp(want, got, (size_t)a) == 0);
	}
	free(js);
	return 0;
}

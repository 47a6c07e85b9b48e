/* SPDX-License-Identifier: MIT */
/* Fuzz target: a terminal's position payload, JSON or NMEA 0183 (km_position_parse), and what the bridge makes of a good one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bridges/position.h"
#include "gateway/posrec.h"
#include "tests/fuzz/fuzz.h"

FUZZ_QUIET_INIT

/* The bridge (km_positions_take) publishes the record's canonical JSON, and a base's
 * narrow link may send that as a batch: a record the parser accepts is one those take. */
static void take(const char *unit, const uint8_t *p, size_t len, int64_t now_ms)
{
	struct km_pos pos, back;
	char js[512];
	uint8_t batch[64];

	if (km_position_parse(unit, p, len, now_ms, &pos) != KM_POSITION_OK)
		return;
	int n = km_posrec_to_json(&pos, js, sizeof(js));
	REQUIRE(n > 0);
	REQUIRE(km_posrec_from_json(js, (size_t)n, &back) == 0);
	(void)km_posrec_json_batch(js, (size_t)n, batch, sizeof(batch));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Exactly size bytes: a payload is not NUL-terminated. */
	uint8_t *p = malloc(size ? size : 1);

	if (!p)
		return 0;
	memcpy(p, data, size);
	/* A topic without a unit, and one with; NMEA fixes without a date undated, and
	 * dated by the clock. */
	take(NULL, p, size, 0);
	take("uav-07", p, size, FUZZ_NOW_MS);
	free(p);
	return 0;
}

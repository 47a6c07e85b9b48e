/* SPDX-License-Identifier: MIT */
/* What the fuzz targets share: silence, a fixed clock, and the dictionary and nodes of the frame seeds. */
#ifndef KM_FUZZ_H
#define KM_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "gateway/log.h"

/* 2025-11-23T06:40:00.123Z: every target runs on this clock, so an input replays the
 * same; the frame seeds are stamped with it. */
#define FUZZ_NOW_MS 1763880000123LL

/* The nodes of the frame seeds: "north" sends, "center" receives (and has frames of
 * its own in flight to north, which north's acks release). */
#define FUZZ_SENDER "north"
#define FUZZ_RECEIVER "center"

/* The dictionary both ends of the frame seeds use (index = place). */
static const char *const fuzz_dict_topics[] = {
	"kuimen/north/gas/ch4",
	"kuimen/north/water/level",
	"kuimen/north/slope/tilt",
	"kuimen/north/pos/uav-07",
	"kuimen/north/status/link",
	"cmd/siren/zone3",
	"cmd/pump/2",
};
#define FUZZ_DICT_N (sizeof(fuzz_dict_topics) / sizeof(fuzz_dict_topics[0]))

/* A target prints nothing per input: log lines are off (their arguments are then not
 * evaluated either; the log calls of the decoders take counters and checked strings). */
static inline void fuzz_quiet(void)
{
	km_log_max_level = 0;
}

/* A broken promise of the code under test is a crash: the fuzzer keeps the input. */
#define REQUIRE(cond)                   \
	do {                            \
		if (!(cond))            \
			__builtin_trap(); \
	} while (0)

/* The initializer of a target with nothing else to set up. */
#define FUZZ_QUIET_INIT                                         \
	int LLVMFuzzerInitialize(int *argc, char ***argv)       \
	{                                                       \
		(void)argc, (void)argv;                         \
		fuzz_quiet();                                   \
		return 0;                                       \
	}

/* Reads every byte of p[0..n) so that ASan checks what a callback was handed. */
static inline uint8_t fuzz_touch(const void *p, size_t n)
{
	const volatile uint8_t *b = p;
	uint8_t x = 0;

	for (size_t i = 0; i < n; i++)
		x ^= b[i];
	return x;
}

#endif

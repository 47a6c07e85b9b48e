/* SPDX-License-Identifier: MIT */
/* Real receiver captures for tests and benchmarks: one payload per epoch. */
#ifndef KM_TEST_NMEA_EPOCHS_H
#define KM_TEST_NMEA_EPOCHS_H

#include <stddef.h>

/* The captures' directory: $KM_NMEA_DIR, else KM_SOURCE_ROOT/tests/data/nmea. */
const char *km_test_nmea_dir(void);

/* Calls fn(ud, payload, len) for each epoch of capture file: the consecutive position
 * sentences (GGA, RMC, GLL, GNS) of one time of day, CRLF-joined, as a terminal would
 * publish them. Returns 0, or -1 when the file cannot be opened (the path is logged). */
int km_test_nmea_epochs(const char *file, void (*fn)(void *ud, const char *payload, size_t len), void *ud);

#endif

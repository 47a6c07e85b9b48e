/* SPDX-License-Identifier: MIT */
/* Real receiver captures for tests and benchmarks: one payload per epoch. */
#include "nmea_epochs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KM_SOURCE_ROOT
#define KM_SOURCE_ROOT "."
#endif

const char *km_test_nmea_dir(void)
{
	static char path[1024];
	const char *env = getenv("KM_NMEA_DIR");

	if (env && *env)
		return env;
	snprintf(path, sizeof(path), "%s/tests/data/nmea", KM_SOURCE_ROOT);
	return path;
}

/* A position sentence's time-of-day field, which groups sentences into epochs. */
static bool sentence_time(const char *s, char t[32])
{
	bool gll = strncmp(s + 3, "GLL,", 4) == 0;
	const char *p = s;

	if (s[0] != '$' || strlen(s) < 7 ||
	    (!gll && strncmp(s + 3, "GGA,", 4) && strncmp(s + 3, "RMC,", 4) && strncmp(s + 3, "GNS,", 4)))
		return false;
	for (int i = 0; i < (gll ? 5 : 1) && p; i++)
		p = strchr(p + 1, ',');
	if (!p)
		return false;
	snprintf(t, 32, "%.*s", (int)strcspn(p + 1, ",*"), p + 1);
	return true;
}

int km_test_nmea_epochs(const char *file, void (*fn)(void *ud, const char *payload, size_t len), void *ud)
{
	char path[1200], line[512], payload[4096] = "", cur[32] = "", t[32];
	size_t plen = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", km_test_nmea_dir(), file);
	f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "cannot open %s (set KM_NMEA_DIR)\n", path);
		return -1;
	}
	for (bool more = true; more;) {
		char *s = fgets(line, sizeof(line), f) ? line + strspn(line, " ") : NULL;

		more = s != NULL;
		if (s && !sentence_time(s, t))
			continue;
		if (plen > 0 && (!s || strcmp(t, cur) != 0)) {
			fn(ud, payload, plen);
			plen = 0;
		}
		if (s) {
			snprintf(cur, sizeof(cur), "%s", t);
			s[strcspn(s, "\r\n")] = '\0';
			plen += (size_t)snprintf(payload + plen, sizeof(payload) - plen, "%s\r\n", s);
		}
	}
	fclose(f);
	return 0;
}

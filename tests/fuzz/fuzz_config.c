/* SPDX-License-Identifier: MIT */
/* Fuzz target: the config file (km_conf_load from a file, as kuimen --config reads it, and from text) and every section's key table, as kuimen --check-config validates it. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bridges/gnss.h"
#include "bridges/mqtt.h"
#include "bridges/position.h"
#include "gateway/config.h"
#include "gateway/control.h"
#include "gateway/daemon.h"
#include "gateway/link.h"
#include "gateway/metrics.h"
#include "gateway/route.h"
#include "tests/fuzz/fuzz.h"

/*
 * What gateway/main.c check_all() does, but for a link whose type names a plugin:
 * km_plugin_check() dlopen()s the plugin and reads the link's dictionary file, which
 * an input must not steer (that file's bytes are fuzz_dict's); its common keys go
 * through km_link_check_common() here.
 */
static void check_all(struct km_conf *c)
{
	struct km_node_conf n = { 0 };
	struct km_route r;

	km_node_conf_load(&n, c);
	if (km_route_load(&r, c) != -ENOMEM)
		km_route_deinit(&r);
	km_mqtt_local_check(c);
	for (size_t i = 0; i < c->nsections; i++) {
		const char *s = c->sections[i];
		if (strncmp(s, "link ", 5) == 0 && s[5]) {
			const char *type = km_conf_get(c, s, "type");
			if (!type || strcmp(type, "mqtt") == 0)
				km_mqtt_link_check(c, s);
			else
				km_link_check_common(c, s);
		}
	}
	km_gnss_check(c);
	km_positions_check(c);
	km_control_check(c);
	km_metrics_check(c);
	km_conf_check_unused(c);
	km_node_conf_release(&n);
	for (size_t i = 0; i < c->nerrors; i++)
		fuzz_touch(c->errors[i], strlen(c->errors[i]));
}

static int memfd = -1;
static char memfd_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	fuzz_quiet();
	/* The node's spool default comes from the environment: the same for every input. */
	unsetenv("STATE_DIRECTORY");
	unsetenv("RUNTIME_DIRECTORY");
	memfd = memfd_create("fuzz.conf", MFD_CLOEXEC);
	snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct km_conf c;
	char *text;

	/* From a file, as an operator's config arrives. */
	if (memfd >= 0 && ftruncate(memfd, 0) == 0 && pwrite(memfd, data, size, 0) == (ssize_t)size) {
		if (km_conf_load(&c, memfd_path, NULL) == 0 && c.nerrors == 0)
			check_all(&c);
		km_conf_deinit(&c);
	}
	/* From text, as the embedded default (a string: up to its first NUL). */
	if ((text = malloc(size + 1))) {
		memcpy(text, data, size);
		text[size] = '\0';
		if (km_conf_load(&c, "fuzz.conf", text) == 0 && c.nerrors == 0)
			check_all(&c);
		km_conf_deinit(&c);
		free(text);
	}
	return 0;
}

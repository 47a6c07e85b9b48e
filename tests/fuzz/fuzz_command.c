/* SPDX-License-Identifier: MIT */
/* Fuzz target: a command as it reaches a base (cmd/... topic and payload, by MQTT or a narrow link): the checks, route and dedupe of km_daemon_command and the narrow link's deliver_command. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/config.h"
#include "gateway/dedupe.h"
#include "gateway/dict.h"
#include "gateway/route.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: topic, NUL, payload (no NUL: all topic, no payload). The topic is what the
 * downlink hands on after the <topic_prefix>/<node>/ it subscribed to, or what a
 * center's frame named. What happens to it before the spool, in gateway/daemon.c and
 * gateway/plugin.c (both static or tied to a running daemon, so repeated here from
 * the same public functions): a narrow link's message must be cmd/...; the route gives
 * its class (TTL) and coalesce key; the dedupe pairs the copies of the two paths by a
 * hash of topic and payload. A command's payload is published byte for byte: nothing
 * else looks into it.
 */

/* Classes of a base with a coalescing command class beside the defaults. */
static const char classes[] =
	"[class siren]\n"
	"match = cmd/siren/#\n"
	"priority = 0\n"
	"ttl = 10m\n"
	"coalesce = level:3\n"
	"[class pump]\n"
	"match = cmd/pump/+, cmd/+/pump\n"
	"priority = 1\n"
	"coalesce = topic\n";

static struct km_route route;
static bool route_ok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct km_conf c;

	(void)argc, (void)argv;
	fuzz_quiet();
	if (km_conf_load(&c, "fuzz-classes.conf", classes) == 0 && c.nerrors == 0 && km_route_load(&route, &c) == 0)
		route_ok = true;
	km_conf_deinit(&c);
	if (!route_ok)
		abort(); /* the target's own config: fix it */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t tl = nul ? (size_t)(nul - data) : size;
	size_t pl = nul ? size - tl - 1 : 0;
	char *topic = malloc(tl + 1), key[KM_FRAME_TOPIC_MAX + 128];
	uint8_t *payload = malloc(pl ? pl : 1);
	struct km_dedupe dd;

	if (!topic || !payload || km_dedupe_init(&dd, 8) < 0) {
		free(topic);
		free(payload);
		return 0;
	}
	memcpy(topic, data, tl);
	topic[tl] = '\0';
	if (pl)
		memcpy(payload, nul + 1, pl);
	/* A base publishes only commands from a narrow link (plugin.c deliver_command). */
	bool command = strncmp(topic, "cmd/", 4) == 0;
	const struct km_class *k = km_route_match(&route, topic);
	if (k)
		km_route_coalesce_key(k, topic, key, sizeof(key));
	(void)km_route_by_priority(&route, (long)tl % 8);
	(void)km_topic_filter_invalid(topic);
	/* The same command by both paths is published once; sent twice, twice. */
	uint64_t h = km_dedupe_hash(topic, payload, pl);
	for (int i = 0; i < 4; i++)
		(void)km_dedupe_take(&dd, (i + command) & 1, h, FUZZ_NOW_MS + i, k ? k->ttl_ms : 1000);
	km_dedupe_deinit(&dd);
	free(topic);
	free(payload);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz target: what the local broker sends kuimen's MQTT client (bridges/mqttc.c, v5 or 3.1.1), from its CONNACK on, through the code a socket read runs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridges/mqttc.h"
#include "tests/fuzz/fuzz.h"

/*
 * Input: mode:u8, then the broker's bytes. mode bit 7: the client speaks MQTT 3.1.1
 * (protocol = 3.1.1: its CONNACK, PUBLISH, SUBACK decoders without properties) instead
 * of 5. mode & 0x7F is the split: 0, the bytes arrive in one read; else in reads of
 * split bytes each (packets cut anywhere, as TCP may).
 *
 * Each input gets a new client with a real loopback TCP connection to a listener of
 * this process (so that drops, PUBACKs and the DISCONNECT go where they would), brought
 * to "CONNECT sent, waiting for the CONNACK"; then km_mqttc_feed() hands it the bytes.
 * On CONNACK the client publishes three messages, so that PUBACKs have something to
 * acknowledge or refuse. The listener's end is closed with a reset before the client
 * is freed: no TIME_WAIT is left per input.
 */

static sd_event *ev;
static int lfd = -1;
static char uri[64];

struct ctx {
	struct km_mqttc *c;
	unsigned msgs;
	uint8_t x;
};

static void up(void *ud)
{
	struct ctx *x = ud;

	km_mqttc_publish(x->c, "sensors/fuzz/1", "{\"v\":1}", 7, false, NULL, 0, NULL, 1);
	km_mqttc_publish(x->c, "kuimen/north/pos/uav-07", "{}", 2, false, "north", 42, NULL, 2);
	km_mqttc_publish(x->c, "kuimen/north/status", "{\"state\":\"online\"}", 18, true, "north", 43, "center", 3);
}

static void lost(void *ud, const char *why)
{
	struct ctx *x = ud;
	x->x ^= fuzz_touch(why, strlen(why));
}

static int message(void *ud, const char *topic, const void *payload, size_t len, bool retain, const void *props,
		   size_t plen)
{
	struct ctx *x = ud;
	const char *v;
	size_t vl;

	(void)retain;
	x->msgs++;
	x->x ^= fuzz_touch(topic, strlen(topic)) ^ fuzz_touch(payload, len) ^ fuzz_touch(props, plen);
	/* What the center's bridge asks of a status message's properties, and of its
	 * payload (the 3.1.1 envelope). */
	if (km_mqttc_user_property(props, plen, "kuimen-relay", &v, &vl))
		x->x ^= fuzz_touch(v, vl);
	struct km_mqtt_meta_in meta;
	size_t head = km_mqtt_envelope_parse(payload, len, &meta);
	if (head)
		x->x ^= fuzz_touch(meta.origin, strlen(meta.origin)) ^ fuzz_touch(meta.relay, strlen(meta.relay)) ^
			fuzz_touch((const char *)payload + head, len - head);
	km_mqttc_user_property(props, plen, "kuimen-origin", NULL, NULL);
	/* An owner that cannot take a message: no PUBACK, the connection is dropped. */
	return len == 13 ? -ENOSPC : 0;
}

static int settle(void *ud)
{
	struct ctx *x = ud;
	/* An owner whose write fails now and then: the read is not acknowledged. */
	return x->msgs == 7 ? -EIO : 0;
}

static void acked(void *ud, uint32_t cookie)
{
	(void)ud, (void)cookie;
}

static bool refused(void *ud, uint32_t cookie, int reason, const char *why)
{
	struct ctx *x = ud;
	(void)reason;
	x->x ^= fuzz_touch(why, strlen(why));
	return cookie & 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);

	(void)argc, (void)argv;
	fuzz_quiet();
	if (sd_event_new(&ev) < 0 || (lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 16) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
		perror("fuzz_mqttc: loopback listener");
		abort();
	}
	snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%u", ntohs(sa.sin_port));
	return 0;
}

/* Runs the loop until the client's CONNECT reached our end of the connection. */
static int wait_connect(int afd)
{
	uint8_t b[512];

	for (int i = 0; i < 100; i++) {
		if (recv(afd, b, sizeof(b), MSG_DONTWAIT) > 0)
			return 0;
		if (sd_event_run(ev, 100000) < 0)
			break;
	}
	return -ETIMEDOUT;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const filters[] = { "sensors/#", "kuimen/+/pos/#" };
	struct ctx x = { 0 };
	struct km_mqttc_opts o = { .uri = uri, .client_id = "fuzz", .role = "fuzz", .clean_start = false,
				   .session_expiry_s = 3600, .keepalive_s = 30, .window = 2, .receive_max = 16,
				   .will_topic = "kuimen/north/status", .will_msg = "{\"state\":\"offline\"}",
				   .filters = filters, .nfilters = 2 };
	struct km_mqttc_cb cb = { .up = up, .lost = lost, .failed_connect = lost, .message = message,
				  .settle = settle, .acked = acked, .refused = refused, .ud = &x };
	struct linger rst = { 1, 0 };
	int afd;

	if (size < 1)
		return 0;
	o.version = data[0] & 0x80 ? KM_MQTT_V311 : KM_MQTT_V5;
	if (km_mqttc_new(&x.c, ev, &o, &cb) < 0)
		abort();
	if ((afd = accept(lfd, NULL, NULL)) < 0 || wait_connect(afd) < 0) {
		perror("fuzz_mqttc: the client did not connect");
		abort();
	}
	size_t split = data[0] & 0x7F ? data[0] & 0x7F : size;
	for (size_t i = 1; i < size; i += split) {
		size_t n = size - i < split ? size - i : split;
		/* One read's bytes, exactly: ASan sees a read past them. */
		uint8_t *r = malloc(n);
		if (!r)
			break;
		memcpy(r, data + i, n);
		int rc = km_mqttc_feed(x.c, r, n);
		free(r);
		if (rc < 0)
			break;
	}
	setsockopt(afd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
	close(afd);
	km_mqttc_free(x.c);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/* Fuzz target: the BeiDou RDSS sentence codec (plugins/beidou/rdss.c), as beidou.so runs it on every line (ASCII sets) and every frame (binary 4.0) from the serial port. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "plugins/beidou/rdss.h"
#include "tests/fuzz/fuzz.h"

/* rdss.c logs nothing: no set-up. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	return 0;
}

static struct rdss_sentence s, again;
static char line[RDSS_LINE_MAX + 16], body[RDSS_LINE_MAX + 16];
static uint8_t bytes[RDSS_LINE_MAX];

/* A sentence that passed: every parser of its id runs, and formatting its fields
 * again gives a sentence that parses to the same fields (the checksum is the XOR). */
static void take(void)
{
	struct rdss_card c;
	struct rdss_beams b;
	struct rdss_fki k;
	struct rdss_msg m;
	size_t o = 0;

	o += (size_t)snprintf(body + o, sizeof(body) - o, "%s%s", s.talker, s.id);
	for (unsigned i = 0; i < s.nf && o < sizeof(body); i++)
		o += (size_t)snprintf(body + o, sizeof(body) - o, ",%s", s.f[i]);
	REQUIRE(o < sizeof(body));
	int n = rdss_format(line, sizeof(line), "%s", body);
	REQUIRE(n > 0 && line[n - 2] == '\r' && line[n - 1] == '\n');
	REQUIRE(rdss_parse(line, (size_t)n, &again) == 0);
	REQUIRE(again.nf == s.nf && strcmp(again.id, s.id) == 0 && strcmp(again.talker, s.talker) == 0);
	for (unsigned i = 0; i < s.nf; i++)
		REQUIRE(strcmp(again.f[i], s.f[i]) == 0);

	if (rdss_parse_icp(&s, &c) == 0 && c.id)
		REQUIRE(c.level >= 1 && c.level <= 5 && rdss_bds3_bits(c.level) > 0);
	if (rdss_parse_ici(&s, &c) == 0 && c.id)
		(void)rdss_v21_bits(c.level, c.encrypted);
	if (rdss_parse_pwi(&s, 40, &b) == 0)
		REQUIRE(b.above <= b.n);
	if (rdss_parse_bsi(&s, 1, &b) == 0)
		REQUIRE(b.above <= b.n && b.n <= 10 && b.best <= 4);
	if (rdss_parse_fki(&s, &k) == 0)
		REQUIRE(k.cmd[0] && strlen(k.cmd) < sizeof(k.cmd));
	if (rdss_parse_tci(&s, &m) == 0 || rdss_parse_txr(&s, &m) == 0) {
		/* The content is hex: even length decodes, and encodes back to itself. */
		ssize_t d = rdss_hex_decode(bytes, sizeof(bytes), m.hex);
		REQUIRE((d >= 0) == (strlen(m.hex) % 2 == 0));
		if (d > 0) {
			rdss_hex_encode(line, bytes, (size_t)d);
			REQUIRE(strcasecmp(line, m.hex) == 0);
		}
	}
}

/* The 4.0 reader as beidou.so runs it: a frame at each "$", else skip a byte; a frame
 * that parses builds back to the same bytes. */
static void binary(const uint8_t *data, size_t size)
{
	static uint8_t again40[RDSS40_MAX];
	size_t off = 0;
	while (off < size) {
		struct rdss40 f;
		ssize_t r = data[off] == '$' ? rdss40_parse(data + off, size - off, &f) : RDSS_E_FORMAT;
		if (r == 0)
			break;
		if (r < 0) {
			off++;
			continue;
		}
		REQUIRE((size_t)r == RDSS40_HDR + f.blen + 1 && f.addr <= 0xFFFFFF);
		REQUIRE(rdss40_build(again40, sizeof(again40), f.id, f.addr, f.body, f.blen) == r);
		REQUIRE(memcmp(again40, data + off, (size_t)r) == 0);
		off += (size_t)r;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	binary(data, size);
	/* Lines as the driver cuts them: at "\n", from the last "$" on. */
	size_t start = 0;
	for (size_t i = 0; i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		const char *l = (const char *)data + start;
		size_t len = i - start;
		const char *d = NULL;
		for (size_t j = len; j-- > 0;)
			if (l[j] == '$') {
				d = l + j;
				break;
			}
		if (d && rdss_parse(d, len - (size_t)(d - l), &s) == 0)
			take();
		start = i + 1;
	}
	return 0;
}

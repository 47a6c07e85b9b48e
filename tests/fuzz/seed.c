/* SPDX-License-Identifier: MIT */
/* Writes the seeds that need an encoder: fuzz_frame's datagrams and fuzz_posrec_batch's batches, made as the unit tests (tests/unit/test_frame.c, test_posrec.c) make them. Usage: fuzz_seed CORPUS_DIR */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/frame.h"
#include "gateway/posrec.h"
#include "tests/fuzz/fuzz.h"

/* One seed: flags byte 0 (CRCs resealed by the target: these are right anyway), then
 * each datagram as len:u16 and its bytes. */
struct seed {
	uint8_t b[16384];
	size_t n;
};

static void put(struct seed *s, const uint8_t *f, size_t len)
{
	if (s->n + 2 + len > sizeof(s->b)) {
		fprintf(stderr, "seed too large\n");
		exit(1);
	}
	s->b[s->n++] = (uint8_t)(len >> 8);
	s->b[s->n++] = (uint8_t)len;
	memcpy(s->b + s->n, f, len);
	s->n += len;
}

static const char *root;

static void save(const char *dir, const char *name, const struct seed *s)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", root, dir, name);
	if (!(f = fopen(path, "wb")) || fwrite(s->b, 1, s->n, f) != s->n || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

static const struct km_frame_dict dict = { fuzz_dict_topics, FUZZ_DICT_N };
/* North's list is longer than the center's: its last index is unknown there. */
static const char *const long_topics[] = {
	"kuimen/north/gas/ch4", "kuimen/north/water/level", "kuimen/north/slope/tilt",
	"kuimen/north/pos/uav-07", "kuimen/north/status/link", "cmd/siren/zone3", "cmd/pump/2",
	"kuimen/north/gas/co",
};
static const struct km_frame_dict long_dict = { long_topics, 8 };

static void tx_new(struct km_frame_tx *tx, unsigned version, bool pos_batch, const struct km_frame_dict *d,
		   uint16_t first_seq)
{
	struct km_frame_tx_cfg c = { .origin = km_frame_node_id(FUZZ_SENDER), .first_seq = first_seq,
				     .mtu_max = KM_FRAME_MTU_MAX, .dict = d, .version = version,
				     .pos_batch = pos_batch, .ack_room = true };
	if (km_frame_tx_init(tx, &c) < 0)
		exit(1);
}

static struct km_frame_msg msg(uint64_t id, const char *topic, const char *payload)
{
	return (struct km_frame_msg){ .id = id, .topic = topic, .payload = (const uint8_t *)payload,
				      .len = strlen(payload), .created_ms = FUZZ_NOW_MS + (int64_t)id * 1000,
				      .cls = 4, .qos = 1 };
}

/* Frames every message of m[0..n) at mtu into s, in order; returns the frames. */
static int frame_all(struct km_frame_tx *tx, struct km_frame_msg *m, size_t n, size_t mtu,
		     const struct km_frame_ack *ack, struct seed *s)
{
	uint8_t f[KM_FRAME_MTU_MAX];
	int frames = 0;

	while (n) {
		struct km_frame_put p;
		int len = km_frame_tx_encode(tx, m, n, mtu, ack, FUZZ_NOW_MS, f, &p);
		if (len < 0) {
			fprintf(stderr, "encode: %s\n", strerror(-len));
			exit(1);
		}
		put(s, f, (size_t)len);
		frames++;
		ack = NULL;
		m += p.n_full;
		n -= p.n_full;
		if (n)
			m->frag_off = p.next_off;
	}
	return frames;
}

#define POS_JSON "{\"unit\":\"uav-07\",\"lat\":30.8123500,\"lon\":108.4014300,\"alt\":353.0," \
	"\"time\":\"2025-11-23T06:40:02.200Z\",\"speed\":12.40,\"heading\":87.0,\"mode\":3," \
	"\"quality\":1,\"kind\":\"drone\",\"battery\":81.0}"

static struct km_pos pos(const char *unit, const char *kind, double lat, double lon, int64_t t)
{
	struct km_pos p;

	km_posrec_init(&p);
	snprintf(p.unit, sizeof(p.unit), "%s", unit);
	snprintf(p.kind, sizeof(p.kind), "%s", kind);
	p.lat = lat;
	p.lon = lon;
	p.time_ms = t;
	p.mode = 3;
	return p;
}

/* Batches: one position; a track of two units in deltas; unknowns and extremes. */
static void posrec_seeds(void)
{
	struct km_pos p[8];
	struct seed s;
	int n;

	p[0] = pos("uav-07", "drone", 30.81235, 108.40143, FUZZ_NOW_MS);
	p[0].alt = 353, p[0].speed = 12.4, p[0].heading = 87, p[0].battery = 81, p[0].fix_quality = 1;
	if ((n = km_posrec_encode(p, 1, s.b, sizeof(s.b))) < 0)
		exit(1);
	s.n = (size_t)n;
	save("posrec_batch", "one", &s);
	for (int i = 1; i < 6; i++) {
		p[i] = p[i - 1];
		p[i].lat += 0.0001 * i, p[i].time_ms += 1000, p[i].heading = 87 + i, p[i].speed += 0.3;
	}
	p[3] = pos("pdt-1021", "radio", -45.8775, 170.5, FUZZ_NOW_MS + 2500);
	p[5] = pos("pdt-1021", "radio", -45.8776, 170.5001, FUZZ_NOW_MS + 7500);
	if ((n = km_posrec_encode(p, 6, s.b, sizeof(s.b))) < 0)
		exit(1);
	s.n = (size_t)n;
	save("posrec_batch", "track-two-units", &s);
	p[0] = pos("", "", -90, 180, 0);
	p[0].mode = 0;
	p[1] = pos("h-3", "handheld", 90, -180, FUZZ_NOW_MS - 50 * 3600000LL);
	p[1].alt = 15882, p[1].speed = 204.6, p[1].heading = 359, p[1].battery = 0, p[1].fix_quality = 15;
	p[2] = pos("truck 9", "vehicle", 0, 0, FUZZ_NOW_MS);
	p[2].alt = -500;
	if ((n = km_posrec_encode(p, 3, s.b, sizeof(s.b))) < 0) {
		fprintf(stderr, "posrec: %s\n", strerror(-n));
		exit(1);
	}
	s.n = (size_t)n;
	save("posrec_batch", "extremes-unknowns", &s);
	s.b[0] = KM_POSREC_VERSION, s.b[1] = 0, s.b[2] = 0, s.b[3] = 0, s.n = 4;
	save("posrec_batch", "empty", &s);
}

int main(int argc, char **argv)
{
	struct km_frame_tx tx;
	struct seed s;
	const char *dir = "frame";
	uint32_t center = km_frame_node_id(FUZZ_RECEIVER);
	char big[1200];

	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	root = argv[1];
	posrec_seeds();

	/* Version 1, one message on a dictionary topic. */
	s.n = 1, s.b[0] = 0;
	tx_new(&tx, 1, false, &dict, 0x1234);
	struct km_frame_msg m1[] = { msg(1000, "kuimen/north/slope/tilt", "{\"tilt\":0.4}") };
	frame_all(&tx, m1, 1, 77, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "v1-one-message", &s);

	/* Version 2: the same topics again name their slots and deflate against them. */
	s.n = 1;
	tx_new(&tx, 2, false, &dict, 7);
	struct km_frame_msg m2[] = {
		msg(1, "kuimen/north/gas/ch4", "{\"ppm\":12.5,\"alarm\":false,\"sensor\":\"ch4-a\"}"),
		msg(2, "kuimen/north/water/level", "{\"m\":2.31,\"trend\":\"rising\"}"),
		msg(3, "kuimen/north/gas/ch4", "{\"ppm\":12.7,\"alarm\":false,\"sensor\":\"ch4-a\"}"),
		msg(4, "kuimen/north/water/level", "{\"m\":2.35,\"trend\":\"rising\"}"),
		msg(5, "kuimen/north/gas/ch4", "{\"ppm\":13.1,\"alarm\":true,\"sensor\":\"ch4-a\"}"),
	};
	frame_all(&tx, m2, 2, 77, NULL, &s);
	frame_all(&tx, m2 + 2, 3, 77, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "v2-slots", &s);

	/* A long message in fragments, deflated; a literal topic. */
	s.n = 1;
	tx_new(&tx, 2, false, &dict, 65530);
	size_t o = (size_t)snprintf(big, sizeof(big), "{\"log\":[");
	for (int i = 0; i < 60 && o < sizeof(big) - 40; i++)
		o += (size_t)snprintf(big + o, sizeof(big) - o, "%s{\"t\":%d,\"v\":%d}", i ? "," : "", i, i * 37 % 101);
	snprintf(big + o, sizeof(big) - o, "]}");
	struct km_frame_msg m3[] = { msg(77, "kuimen/north/logs/pump-2", big), msg(78, "kuimen/north/gas/ch4", "{\"ppm\":1}") };
	m3[0].cls = 5;
	frame_all(&tx, m3, 2, 77, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "fragments-deflate-literal", &s);

	/* Positions as compact batches (pos_batch), the center hands them over as JSON. */
	s.n = 1;
	tx_new(&tx, 2, true, &dict, 300);
	struct km_frame_msg m4[] = { msg(900, "kuimen/north/pos/uav-07", POS_JSON), msg(901, "kuimen/north/pos/uav-07", POS_JSON) };
	m4[0].cls = m4[1].cls = 2;
	frame_all(&tx, m4, 1, 77, NULL, &s);
	frame_all(&tx, m4 + 1, 1, 77, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "posbatch", &s);

	/* A dictionary index beyond the center's: the fallback topic. */
	s.n = 1;
	tx_new(&tx, 2, false, &long_dict, 40);
	struct km_frame_msg m5[] = { msg(5000, "kuimen/north/gas/co", "{\"ppm\":3}") };
	frame_all(&tx, m5, 1, 77, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "unknown-index", &s);

	/* North acknowledges the center's frames (100..102 in flight): an ack frame with a
	 * restart request, then a data frame with the ack in its tail, then a probe. */
	s.n = 1;
	uint8_t af[KM_FRAME_ACK_MAX];
	struct km_frame_ack a = { .origin = center, .cum = 100, .bitmap = 0x1, .n_restart = 1, .restart = { 2 },
				  .version = 2 };
	int al = km_frame_ack_encode(&a, km_frame_node_id(FUZZ_SENDER), af, sizeof(af));
	put(&s, af, (size_t)al);
	tx_new(&tx, 2, false, &dict, 1);
	a = (struct km_frame_ack){ .origin = center, .cum = 102, .version = 2 };
	struct km_frame_msg m6[] = { msg(6, "kuimen/north/status/link", "{\"sat\":\"up\"}") };
	frame_all(&tx, m6, 1, 77, &a, &s);
	uint8_t f[KM_FRAME_MTU_MAX];
	int pl = km_frame_tx_probe(&tx, 77, FUZZ_NOW_MS, f);
	put(&s, f, (size_t)pl);
	km_frame_tx_deinit(&tx);
	a = (struct km_frame_ack){ .origin = center, .cum = 99, .slots_lost = true, .version = 2 };
	al = km_frame_ack_encode(&a, km_frame_node_id(FUZZ_SENDER), af, sizeof(af));
	put(&s, af, (size_t)al);
	save(dir, "acks-probe", &s);

	/* Frames out of order and one twice: the reorder buffer. */
	s.n = 1;
	struct seed tmp = { .n = 0 };
	tx_new(&tx, 2, false, &dict, 500);
	struct km_frame_msg m7[] = { msg(11, "kuimen/north/gas/ch4", "{\"ppm\":1}"), msg(12, "cmd/pump/2", "{\"run\":1}"),
				     msg(13, "kuimen/north/slope/tilt", "{\"tilt\":2}") };
	for (int i = 0; i < 3; i++)
		frame_all(&tx, m7 + i, 1, 77, NULL, &tmp);
	km_frame_tx_deinit(&tx);
	/* tmp holds three datagrams: put them as 2, 1, 3, 3. */
	size_t off[4], len[3];
	for (size_t i = 0, p = 0; i < 3; i++) {
		len[i] = (size_t)tmp.b[p] << 8 | tmp.b[p + 1];
		off[i] = p + 2;
		p += 2 + len[i];
	}
	put(&s, tmp.b + off[1], len[1]);
	put(&s, tmp.b + off[0], len[0]);
	put(&s, tmp.b + off[2], len[2]);
	put(&s, tmp.b + off[2], len[2]);
	save(dir, "reorder-duplicate", &s);

	/* A BeiDou-3 size frame: above 256 bytes, CRC-32. */
	s.n = 1;
	tx_new(&tx, 2, false, &dict, 9);
	struct km_frame_msg m8[] = { msg(21, "kuimen/north/logs/pump-2", big) };
	m8[0].cls = 5;
	frame_all(&tx, m8, 1, 1750, NULL, &s);
	km_frame_tx_deinit(&tx);
	save(dir, "large-crc32", &s);

	/* Raw (flag 1): a frame whose CRC is wrong stays wrong. */
	s.n = 1, s.b[0] = 1;
	tx_new(&tx, 1, false, &dict, 3);
	struct km_frame_msg m9[] = { msg(31, "kuimen/north/gas/ch4", "{\"ppm\":2}") };
	frame_all(&tx, m9, 1, 77, NULL, &s);
	s.b[s.n - 1] ^= 0x5a;
	km_frame_tx_deinit(&tx);
	save(dir, "raw-bad-crc", &s);
	return 0;
}
